"""Issue 12 transformed-point methods on the SAM driver: RWP (random weight perturbation),
XGrad (weight prediction) and O2NC (a random point on the last step): defining properties,
equality with the base optimizer, convergence, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_sharpness import GRAD, loss_fn, recorded, run

import optlab
from helpers import fixed_params, tree_allclose
from optlab import _sharpness


def _eager(tx, params, steps, grad_fn=GRAD):
    """``steps`` eager steps with a recording grad_fn: (params after each, points, states)."""
    rec, points = recorded(grad_fn)
    state = tx.init(params)
    out, states = [params], [state]
    for _ in range(steps):
        updates, state = tx.update(grad_fn(params), state, params, grad_fn=rec)
        params = optax.apply_updates(params, updates)
        out.append(params)
        states.append(state)
    return out, points, states


# ---------------------------------------------------------------------------
# Equal to the base optimizer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda base: optlab.rwp(base, sigma=0.0, alpha=0.3),
        lambda base: optlab.rwp(base, sigma=0.0, alpha=0.7, eta=1.0),
        lambda base: optlab.rwp(base, sigma=0.05, alpha=0.0),
        lambda base: optlab.xgrad(base, prediction_steps=0.0),
    ],
    ids=["rwp_sigma0", "arwp_sigma0", "rwp_alpha0", "xgrad_steps0"],
)
def test_zero_strength_equals_base(make):
    # Bitwise equal when compiled with XLA's optimizations (OPTLAB_TEST_OPTIMIZE=1); the
    # suite compiles without them, where the two programs may round one float32 ulp apart.
    params = fixed_params()
    got = run(make(optax.adam(1e-2)), params, steps=3)
    want = run(optax.adam(1e-2), params, steps=3)
    tree_allclose(got, want, rtol=3e-7, atol=1e-9)


@pytest.mark.parametrize(
    "make",
    [lambda b: optlab.xgrad(b, prediction_steps=2.0), lambda b: optlab.o2nc(b, seed=1)],
    ids=["xgrad", "o2nc"],
)
def test_first_step_equals_base(make):
    # XGrad's last update and O2NC's segment are zero before the first step (to one ulp:
    # see test_zero_strength_equals_base).
    params = fixed_params()
    got = run(make(optax.adam(1e-2)), params, steps=1)
    want = run(optax.adam(1e-2), params, steps=1)
    tree_allclose(got, want, rtol=3e-7, atol=1e-9)


# ---------------------------------------------------------------------------
# RWP
# ---------------------------------------------------------------------------


def test_rwp_direction_is_the_mixture_and_the_key_evolves():
    params = fixed_params()
    alpha = 0.3
    tx = optlab.rwp(optax.identity(), sigma=0.1, alpha=alpha, seed=5)
    rec, points = recorded(GRAD)
    state = tx.init(params)
    keys = [np.asarray(state.policy_state)]
    for _ in range(3):
        d, state = tx.update(GRAD(params), state, params, grad_fn=rec)
        keys.append(np.asarray(state.policy_state))
        g, gp = GRAD(params), GRAD(points[-1])
        tree_allclose(d, jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, g, gp))
    assert len({tuple(k.tolist()) for k in keys}) == 4  # a new key at every step
    e0, e1 = (jax.tree.map(jnp.subtract, p, params) for p in points[:2])
    assert float(optax.tree.norm(jax.tree.map(jnp.subtract, e0, e1))) > 1e-3  # fresh noise


def test_rwp_noise_is_filterwise_with_std_proportional_to_the_filter_norm():
    k1, k2 = jax.random.split(jax.random.key(1))
    scales = jnp.array([0.1, 1.0, 10.0])
    params = {
        "kernel": jax.random.normal(k1, (2000, 3)) * scales[None, :],  # (in, out): 3 filters
        "bias": 5.0 * jax.random.normal(k2, (2000,)),
        "zero": jnp.zeros((4, 2)),
    }
    grad_fn = jax.grad(lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)))
    sigma = 0.2
    _, points, _ = _eager(optlab.rwp(optax.identity(), sigma=sigma), params, 1, grad_fn)
    e = jax.tree.map(jnp.subtract, points[0], params)
    w_norms = np.linalg.norm(np.asarray(params["kernel"]), axis=0)
    std = np.std(np.asarray(e["kernel"]), axis=0)
    np.testing.assert_allclose(std, sigma * w_norms, rtol=0.1)  # 2000 samples: ~2% error
    assert abs(float(np.mean(np.asarray(e["kernel"]) / (sigma * w_norms)))) < 0.1
    b_std = float(np.std(np.asarray(e["bias"])))
    np.testing.assert_allclose(b_std, sigma * float(jnp.linalg.norm(params["bias"])), rtol=0.1)
    assert float(jnp.max(jnp.abs(e["zero"]))) == 0.0  # a zero filter is not perturbed


def test_arwp_divides_the_noise_by_the_accumulated_filter_curvature():
    # A constant gradient c: after one step F = c^2, so the second step's noise of filter f
    # has std sigma ||w_f|| / sqrt(1 + eta sum_f c^2) (per element for the bias).
    k1, k2 = jax.random.split(jax.random.key(2))
    params = {"kernel": jax.random.normal(k1, (2000, 3)), "bias": jax.random.normal(k2, (2000,))}
    c = {
        "kernel": jnp.broadcast_to(jnp.array([0.0, 0.01, 0.03]), (2000, 3)),
        "bias": jnp.ones(2000),
    }
    sigma, eta, beta = 0.2, 5.0, 0.9
    tx = optlab.rwp(optax.identity(), sigma=sigma, eta=eta, beta=beta)
    out, points, states = _eager(tx, params, 2, lambda p: c)
    tree_allclose(states[1].policy_state[1], jax.tree.map(jnp.square, c))
    e = jax.tree.map(jnp.subtract, points[1], out[1])
    fisher = eta * jnp.sum(c["kernel"] ** 2, axis=0)  # (3,): 0, 0.1, 0.9
    want = sigma * jnp.linalg.norm(out[1]["kernel"], axis=0) / jnp.sqrt(1.0 + fisher)
    np.testing.assert_allclose(np.std(np.asarray(e["kernel"]), axis=0), want, rtol=0.1)
    b_scale = sigma * float(jnp.linalg.norm(out[1]["bias"])) / np.sqrt(1.0 + eta)
    np.testing.assert_allclose(float(np.std(np.asarray(e["bias"]))), b_scale, rtol=0.1)
    _, _, states = _eager(tx, params, 3, lambda p: c)
    tree_allclose(states[3].policy_state[1], jax.tree.map(lambda x: (1 + beta + beta**2) * x**2, c))


def test_rwp_mask_leaves_unselected_leaves_unperturbed():
    params = fixed_params()
    mask = {"w": True, "b": False, "s": False}
    _, points, _ = _eager(optlab.rwp(optax.identity(), sigma=0.5, mask=mask), params, 1)
    assert float(jnp.max(jnp.abs(points[0]["w"] - params["w"]))) > 1e-3
    assert bool(jnp.all(points[0]["b"] == params["b"])) and bool(points[0]["s"] == params["s"])


# ---------------------------------------------------------------------------
# XGrad
# ---------------------------------------------------------------------------


def test_xgrad_gradient_is_taken_at_the_predicted_weights_sgdm():
    params = fixed_params()
    lr, s = 0.1, 2.0
    out, points, states = _eager(
        optlab.xgrad(optax.sgd(lr, momentum=0.9), prediction_steps=s), params, 3
    )
    tree_allclose(points[0], params, rtol=0, atol=0)  # no update yet: w itself
    for t in (1, 2):
        last = jax.tree.map(jnp.subtract, out[t], out[t - 1])
        tree_allclose(points[t], jax.tree.map(lambda w, u: w + s * u, out[t], last))
        # XGrad's SGDM rule from the optimizer's state: w_hat = w - s lr m
        momentum = states[t].inner_state[0].trace
        tree_allclose(points[t], jax.tree.map(lambda w, m: w - s * lr * m, out[t], momentum))


def test_xgrad_prediction_is_adams_rule_on_its_state():
    params = fixed_params()
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    out, points, states = _eager(optlab.xgrad(optax.adam(lr, b1, b2, eps)), params, 2)
    adam = states[1].inner_state[0]  # ScaleByAdamState after the first step
    t = int(adam.count)
    want = jax.tree.map(
        lambda w, m, v: w - lr * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps),
        out[1],
        adam.mu,
        adam.nu,
    )
    tree_allclose(points[1], want, rtol=1e-5, atol=1e-6)


def test_xgrad_mask_predicts_only_selected_leaves():
    params = fixed_params()
    mask = {"w": True, "b": False, "s": False}
    out, points, _ = _eager(optlab.xgrad(optax.sgd(0.1, momentum=0.9), mask=mask), params, 2)
    assert bool(jnp.all(points[1]["b"] == out[1]["b"])) and bool(points[1]["s"] == out[1]["s"])
    assert float(jnp.max(jnp.abs(points[1]["w"] - out[1]["w"]))) > 1e-4


# ---------------------------------------------------------------------------
# O2NC
# ---------------------------------------------------------------------------


def test_o2nc_point_is_uniform_on_the_last_segment_and_the_key_evolves():
    params = fixed_params()
    out, points, states = _eager(optlab.o2nc(optax.sgd(0.1, momentum=0.5), seed=2), params, 4)
    tree_allclose(points[0], params, rtol=0, atol=0)  # degenerate first segment
    fractions = []
    for t in range(1, 4):
        prev, cur, pt = (
            np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)])
            for p in (out[t - 1], out[t], points[t])
        )
        s = (pt - prev) / (cur - prev)
        assert np.ptp(s) < 1e-3  # one s for every coordinate: the point is on the segment
        assert -1e-6 <= s.mean() <= 1 + 1e-6
        fractions.append(float(s.mean()))
    assert len(set(np.round(fractions, 4))) == 3  # a new s at every step
    keys = {tuple(np.asarray(st.policy_state[0]).tolist()) for st in states}
    assert len(keys) == len(states)
    tree_allclose(states[-1].policy_state[1], out[-2], rtol=0, atol=0)  # the x_t of that step


def test_o2nc_mask_keeps_unselected_leaves_at_the_current_point():
    params = fixed_params()
    mask = {"w": True, "b": False, "s": False}
    out, points, states = _eager(optlab.o2nc(optax.sgd(0.1), seed=4, mask=mask), params, 3)
    for t in (1, 2):
        assert bool(jnp.all(points[t]["b"] == out[t]["b"])) and bool(points[t]["s"] == out[t]["s"])
        assert float(jnp.max(jnp.abs(points[t]["w"] - out[t]["w"]))) > 1e-6
    previous = states[-1].policy_state[1]
    tree_allclose(previous["w"], out[-2]["w"], rtol=0, atol=0)
    tree_allclose(previous["b"], params["b"], rtol=0, atol=0)  # never rewritten


def _fixed(value):
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


def test_o2nc_with_the_random_weight_fixed():
    params = fixed_params()
    base = optax.sgd(0.1, momentum=0.5)
    at_end = optlab.sharpness_aware(base, _sharpness._o2nc(0, uniform=_fixed(1.0)))
    tree_allclose(run(at_end, params, steps=4), run(base, params, steps=4), rtol=1e-6, atol=1e-7)
    # s = 0: the gradient at the previous iterate
    at_start = optlab.sharpness_aware(base, _sharpness._o2nc(0, uniform=_fixed(0.0)))
    out, points, _ = _eager(at_start, params, 3)
    for t in (1, 2):
        tree_allclose(points[t], out[t - 1], rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------
# Convergence and bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: optlab.rwp(optax.sgd(0.1), sigma=0.05),
        lambda: optlab.rwp(optax.sgd(0.1), sigma=0.05, eta=1.0),
        lambda: optlab.xgrad(optax.sgd(0.05, momentum=0.9)),
        lambda: optlab.xgrad(optax.adam(0.05)),
        lambda: optlab.o2nc(optax.sgd(0.1, momentum=0.5)),
    ],
    ids=["rwp", "arwp", "xgrad_sgdm", "xgrad_adam", "o2nc"],
)
def test_converges_on_a_small_problem(make):
    params = fixed_params()
    start = float(loss_fn(params))
    final = run(make(), params, steps=60)[-1]
    assert float(loss_fn(final)) < 0.5 * start


def test_o2nc_converges_on_a_nonsmooth_loss():
    def loss(p):
        return jnp.sum(jnp.abs(p["x"] - 1.0))

    sched = optax.linear_schedule(0.1, 0.0, 150)
    final = run(optlab.o2nc(optax.sgd(sched, momentum=0.9)), {"x": jnp.zeros(3)}, 150, loss)[-1]
    assert float(loss(final)) < 0.2


def test_bad_hyperparameters_raise():
    sgd = optax.sgd(0.1)
    with pytest.raises(ValueError, match="rwp.*sigma.*-0.1"):
        optlab.rwp(sgd, sigma=-0.1)
    with pytest.raises(ValueError, match="rwp.*alpha.*1.5"):
        optlab.rwp(sgd, alpha=1.5)
    with pytest.raises(TypeError, match="rwp.*seed"):
        optlab.rwp(sgd, seed=1.5)
    with pytest.raises(ValueError, match="rwp_policy.*alpha.*nan"):
        optlab.rwp_policy(alpha=float("nan"))
    with pytest.raises(TypeError, match="rwp_policy.*sigma"):
        optlab.rwp_policy(sigma="0.1")
    with pytest.raises(ValueError, match="rwp.*eta.*-1"):
        optlab.rwp(sgd, eta=-1.0)
    with pytest.raises(ValueError, match="rwp.*beta.*1"):
        optlab.rwp(sgd, eta=1.0, beta=1.0)
    with pytest.raises(ValueError, match="xgrad.*prediction_steps.*-1"):
        optlab.xgrad(sgd, prediction_steps=-1)
    with pytest.raises(ValueError, match="xgrad.*prediction_steps.*inf"):
        optlab.xgrad(sgd, prediction_steps=float("inf"))
    with pytest.raises(ValueError, match="o2nc.*seed.*-1"):
        optlab.o2nc(sgd, seed=-1)
    with pytest.raises(TypeError, match="o2nc_policy.*seed"):
        optlab.o2nc_policy(seed=None)
    with pytest.raises(TypeError, match="xgrad.*inner"):
        optlab.xgrad("sgd")
    p = fixed_params()
    for name in ("rwp", "xgrad", "o2nc"):
        tx = getattr(optlab, name)(sgd)
        with pytest.raises(ValueError, match=f"{name}.*grad_fn"):
            tx.update(GRAD(p), tx.init(p), p)


def test_registry_wraps_any_named_optimizer():
    params = fixed_params()
    for name, wrapper, kwargs in (
        ("rwp-sgd", optlab.rwp, dict(sigma=0.02, seed=1)),
        ("xgrad-adamw", optlab.xgrad, dict(prediction_steps=2.0)),
    ):
        base = optlab.get(name.split("-")[1], 1e-2)
        got = run(optlab.get(name, 1e-2, **kwargs), params, steps=2)
        tree_allclose(got, run(wrapper(base, **kwargs), params, steps=2), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: optlab.rwp(optax.sgd(0.1), sigma=0.1, seed=3, **kw),
        lambda **kw: optlab.xgrad(optax.sgd(0.1, momentum=0.9), **kw),
        lambda **kw: optlab.o2nc(optax.sgd(0.1, momentum=0.9), seed=3, **kw),
    ],
    ids=["rwp", "xgrad", "o2nc"],
)
def test_data_parallel_axis_draws_one_point_for_every_replica(make):
    # Four replicas (vmap with an axis name) with local batches and `axis_name`: every
    # replica takes the same random/predicted point, so the step equals the one with the
    # global (averaged) gradient function.
    x = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)

    def loss(p, xs):
        return jnp.mean((jnp.tanh(xs * p["w"]) - 0.5) ** 2) + 0.1 * jnp.sum(p["w"] ** 2)

    params = {"w": jnp.array(0.7)}
    local_tx, global_tx = make(axis_name="data"), make()

    def local_steps(xs):
        p, s = params, local_tx.init(params)
        grad_fn = jax.grad(lambda q: loss(q, xs))
        for _ in range(3):
            u, s = local_tx.update(grad_fn(p), s, p, grad_fn=grad_fn)
            p = optax.apply_updates(p, u)
        return p

    got = jax.vmap(local_steps, axis_name="data")(x)
    want = run(global_tx, params, steps=3, loss=lambda p: loss(p, x))[-1]
    np.testing.assert_allclose(got["w"], jnp.full(4, want["w"]), rtol=1e-5)
