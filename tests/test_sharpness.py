"""Sharpness-aware family: defining properties, equivalences, convergence, diagnostics, NNX."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from helpers import fixed_params, tree_allclose


def loss_fn(params):
    """A non-quadratic loss on the fixed_params tree (w (4, 3), b (3,), s ())."""
    x = jnp.linspace(-1.0, 1.0, 4)
    h = jnp.tanh(x @ params["w"] + params["b"])
    return jnp.sum((h - 0.3) ** 2) + 0.5 * params["s"] ** 2 + 0.1 * jnp.sum(params["w"] ** 4)


GRAD = jax.grad(loss_fn)


def run(tx, params, steps=5, loss=loss_fn):
    """``steps`` jitted grad_fn-mode steps; returns the list of params after each step."""
    grad_fn = jax.grad(loss)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), state

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(params)
    return out


def recorded(grad_fn):
    """``grad_fn`` that records the points it is called at (use eagerly, not under jit)."""
    points = []

    def wrapped(p):
        points.append(p)
        return grad_fn(p)

    return wrapped, points


def tree_sub(a, b):
    return jax.tree.map(lambda x, y: x - y, a, b)


def tree_norm(t):
    return float(optax.tree.norm(t))


# ---------------------------------------------------------------------------
# Equivalences
# ---------------------------------------------------------------------------

EXACT_AT_RHO0 = {
    "sam": lambda base: optlab.sam(base, rho=0.0),
    "asam": lambda base: optlab.asam(base, rho=0.0),
    "fisher_sam": lambda base: optlab.fisher_sam(base, rho=0.0),
    "masked_sam": lambda base: optlab.masked_sam(
        base, rho=0.0, mask={"w": True, "b": True, "s": False}
    ),
    "unnormalized_sam": lambda base: optlab.unnormalized_sam(base, rho=0.0),
    "multistep_sam": lambda base: optlab.multistep_sam(base, rho=0.0, num_steps=2),
    "random_sam": lambda base: optlab.random_sam(base, rho=0.0),
    "looksam_k1": lambda base: optlab.looksam(base, rho=0.0, every_k=1),
    "gsam_alpha0": lambda base: optlab.gsam(base, rho=0.0, alpha=0.0),
}


@pytest.mark.parametrize("name", sorted(EXACT_AT_RHO0))
def test_rho_zero_equals_base_exactly(name, xla_optimized):
    params = fixed_params()
    got = run(EXACT_AT_RHO0[name](optax.adam(1e-2)), params)
    want = run(optax.adam(1e-2), params)
    tree_allclose(got, want, rtol=0, atol=0)


def test_gsam_rho_zero_matches_base():
    # g_p == g, so g_perp is zero up to rounding.
    params = fixed_params()
    got = run(optlab.gsam(optax.sgd(0.1), rho=0.0, alpha=0.5), params)
    want = run(optax.sgd(0.1), params)
    tree_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_sam_step_matches_hand_computation():
    params = fixed_params()
    g = GRAD(params)
    e = jax.tree.map(lambda x: 0.1 * x / optax.tree.norm(g), g)
    g_p = GRAD(optax.apply_updates(params, e))
    tx = optlab.sam(optax.identity(), rho=0.1)
    updates, _ = tx.update(g, tx.init(params), params, grad_fn=GRAD)
    tree_allclose(updates, g_p, rtol=1e-6, atol=1e-6)


def test_gsam_alpha_zero_equals_sam():
    params = fixed_params()
    tree_allclose(
        run(optlab.gsam(optax.sgd(0.1), rho=0.1, alpha=0.0), params),
        run(optlab.sam(optax.sgd(0.1), rho=0.1), params),
        rtol=1e-6,  # overflow-safe norms: one float32 ulp apart
        atol=0,
    )


def test_gsam_descent_direction():
    params = fixed_params()
    g = GRAD(params)
    g_p = GRAD(jax.tree.map(lambda p, x: p + 0.1 * x / optax.tree.norm(g), params, g))
    coef = optax.tree.vdot(g, g_p) / optax.tree.vdot(g_p, g_p)
    want = jax.tree.map(lambda gi, pi: pi - 0.3 * (gi - coef * pi), g, g_p)
    tx = optlab.gsam(optax.identity(), rho=0.1, alpha=0.3)
    got, _ = tx.update(g, tx.init(params), params, grad_fn=GRAD)
    tree_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The removed component is orthogonal to g_p: <d - g_p, g_p> = -alpha <g_perp, g_p> = 0.
    assert abs(float(optax.tree.vdot(tree_sub(got, g_p), g_p))) < 1e-5


def test_looksam_k1_equals_sam():
    params = fixed_params()
    tree_allclose(
        run(optlab.looksam(optax.sgd(0.1), rho=0.1, every_k=1, alpha=0.7), params, steps=6),
        run(optlab.sam(optax.sgd(0.1), rho=0.1), params, steps=6),
        rtol=1e-6,  # overflow-safe norms: one float32 ulp apart
        atol=0,
    )


def test_looksam_reuses_the_orthogonal_component():
    params = fixed_params()
    tx = optlab.looksam(optax.identity(), rho=0.1, every_k=3, alpha=0.7)
    state = tx.init(params)
    g0 = GRAD(params)
    d0, state = tx.update(g0, state, params, grad_fn=GRAD)  # perturbation step
    g_s = GRAD(jax.tree.map(lambda p, x: p + 0.1 * x / optax.tree.norm(g0), params, g0))
    tree_allclose(d0, g_s, rtol=1e-6, atol=1e-6)
    coef = optax.tree.vdot(g0, g_s) / optax.tree.vdot(g0, g0)
    g_v = jax.tree.map(lambda a, b: b - coef * a, g0, g_s)
    tree_allclose(state.policy_state, g_v, rtol=1e-4, atol=1e-5)
    assert abs(float(optax.tree.vdot(state.policy_state, g0))) < 1e-5  # orthogonal to g
    # Next step: no perturbation, grad_fn is not needed for the result.
    p1 = jax.tree.map(lambda p: p * 0.9, params)
    g1 = GRAD(p1)
    d1, state = tx.update(g1, state, p1, grad_fn=GRAD)
    scale = 0.7 * optax.tree.norm(g1) / optax.tree.norm(g_v)
    tree_allclose(d1, jax.tree.map(lambda a, v: a + scale * v, g1, g_v), rtol=1e-4, atol=1e-5)


def test_looksam_evaluates_grad_fn_only_on_perturbation_steps():
    calls = []

    def grad_fn(p):
        jax.debug.callback(lambda: calls.append(1))  # runs only if the branch executes
        return GRAD(p)

    params = fixed_params()
    tx = optlab.looksam(optax.sgd(0.1), rho=0.1, every_k=3)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(GRAD(p), s, p, grad_fn=grad_fn))
    for _ in range(7):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    jax.effects_barrier()
    assert len(calls) == 3  # steps 0, 3 and 6


def test_one_step_multistep_equals_sam():
    params = fixed_params()
    tree_allclose(
        run(optlab.multistep_sam(optax.sgd(0.1), rho=0.1, num_steps=1), params),
        run(optlab.sam(optax.sgd(0.1), rho=0.1), params),
        rtol=1e-6,
        atol=1e-6,
    )


def test_multistep_stays_in_rho_ball_and_ascends():
    params = fixed_params()
    grad_fn, points = recorded(GRAD)
    tx = optlab.multistep_sam(optax.sgd(0.1), rho=0.1, num_steps=4, step_size=0.05)
    with jax.disable_jit():  # the ascent loop is a lax.fori_loop: run it eagerly to record
        tx.update(GRAD(params), tx.init(params), params, grad_fn=grad_fn)
    assert len(points) == 4  # 3 more ascent gradients + the descent gradient
    norms = [tree_norm(tree_sub(p, params)) for p in points]
    assert max(norms) <= 0.1 * (1 + 1e-5)
    assert norms[0] == pytest.approx(0.05, rel=1e-5)
    losses = [float(loss_fn(p)) for p in points]
    assert losses[-1] > float(loss_fn(params))
    one_step = float(
        loss_fn(
            jax.tree.map(
                lambda p, g: p + 0.1 * g / optax.tree.norm(GRAD(params)), params, GRAD(params)
            )
        )
    )
    assert losses[-1] >= one_step - 1e-6  # more ascent finds at least SAM's perturbed loss


# ---------------------------------------------------------------------------
# ASAM, Fisher, masks, random
# ---------------------------------------------------------------------------


def _relu_net_loss(params):
    x = jnp.array([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0], [-0.7, 0.1, 0.4], [0.5, 0.5, 0.5]])
    y = jnp.array([[0.5], [-0.2], [0.1], [0.9]])
    h = jax.nn.relu(x @ params["w1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def test_asam_is_invariant_to_layer_rescaling():
    """ReLU nets satisfy f(c W1, W2 / c) = f(W1, W2). With eta = 0, ASAM at the rescaled
    weights perturbs to the rescaled perturbed point, so its gradient is the rescaled
    gradient (g / a elementwise, a = c on W1 and 1/c on W2); SAM's is not."""
    k1, k2 = jax.random.split(jax.random.key(1))
    w = {"w1": jax.random.normal(k1, (3, 5)), "w2": jax.random.normal(k2, (5, 1))}
    c = 3.0
    a = {"w1": jnp.full((3, 5), c), "w2": jnp.full((5, 1), 1.0 / c)}
    v = jax.tree.map(jnp.multiply, w, a)
    assert float(_relu_net_loss(v)) == pytest.approx(float(_relu_net_loss(w)), rel=1e-5)
    grad_fn = jax.grad(_relu_net_loss)

    def descent_grad(tx, p):
        return tx.update(grad_fn(p), tx.init(p), p, grad_fn=grad_fn)[0]

    asam = optlab.asam(optax.identity(), rho=0.5, eta=0.0)
    tree_allclose(
        descent_grad(asam, v),
        jax.tree.map(jnp.divide, descent_grad(asam, w), a),
        rtol=1e-4,
        atol=1e-6,
    )
    sam = optlab.sam(optax.identity(), rho=0.5)
    diff = tree_sub(descent_grad(sam, v), jax.tree.map(jnp.divide, descent_grad(sam, w), a))
    assert tree_norm(diff) > 1e-2


def test_asam_per_element_reparametrization():
    """For any loss L and a > 0: ASAM (eta = 0) on L'(v) = L(v / a) at v = a w perturbs to
    a (w + e_w)."""
    params = fixed_params()
    a = jax.tree.map(
        lambda x: jnp.exp(jnp.sin(jnp.arange(x.size, dtype=jnp.float32))).reshape(x.shape), params
    )
    v = jax.tree.map(jnp.multiply, params, a)
    loss_v = lambda q: loss_fn(jax.tree.map(jnp.divide, q, a))
    gw, pw = recorded(GRAD)
    gv, pv = recorded(jax.grad(loss_v))
    tx = optlab.asam(optax.identity(), rho=0.3, eta=0.0)
    tx.update(GRAD(params), tx.init(params), params, grad_fn=gw)
    tx.update(jax.grad(loss_v)(v), tx.init(v), v, grad_fn=gv)
    tree_allclose(pv[0], jax.tree.map(jnp.multiply, pw[0], a), rtol=1e-5, atol=1e-6)


def test_fisher_perturbation_is_on_the_fisher_ellipsoid():
    params = fixed_params()
    grad_fn, points = recorded(GRAD)
    rho, eta = 0.2, 2.0
    tx = optlab.fisher_sam(optax.identity(), rho=rho, eta=eta)
    g = GRAD(params)
    tx.update(g, tx.init(params), params, grad_fn=grad_fn)
    e = tree_sub(points[0], params)
    f = jax.tree.map(lambda x: 1.0 + eta * x**2, g)
    # e is along f^{-1} g ...
    want_dir = jax.tree.map(lambda x, fi: x / fi, g, f)
    cos = optax.tree.vdot(e, want_dir) / (optax.tree.norm(e) * optax.tree.norm(want_dir))
    assert float(cos) == pytest.approx(1.0, abs=1e-5)
    # ... with e^T diag(f) e = rho^2.
    f_norm_sq = optax.tree.vdot(e, jax.tree.map(jnp.multiply, f, e))
    assert float(f_norm_sq) == pytest.approx(rho**2, rel=1e-4)


def test_masked_leaves_see_no_perturbation():
    params = fixed_params()
    grad_fn, points = recorded(GRAD)
    mask = {"w": False, "b": True, "s": True}
    tx = optlab.masked_sam(optax.sgd(0.1), rho=0.1, mask=mask)
    tx.update(GRAD(params), tx.init(params), params, grad_fn=grad_fn)
    (point,) = points
    chex.assert_trees_all_equal(point["w"], params["w"])  # exactly unchanged
    e = {k: point[k] - params[k] for k in ("b", "s")}
    assert tree_norm(e) == pytest.approx(0.1, rel=1e-5)  # the norm is over the masked leaves
    g = GRAD(params)
    g_sel = {k: g[k] for k in ("b", "s")}
    tree_allclose(
        e, jax.tree.map(lambda x: 0.1 * x / optax.tree.norm(g_sel), g_sel), rtol=1e-5, atol=1e-7
    )


def test_mask_applies_to_any_policy():
    params = fixed_params()
    mask = lambda p: {"w": True, "b": False, "s": False}  # noqa: E731
    grad_fn, points = recorded(GRAD)
    tx = optlab.random_sam(optax.sgd(0.1), rho=0.1, mask=mask)
    tx.update(GRAD(params), tx.init(params), params, grad_fn=grad_fn)
    chex.assert_trees_all_equal(points[0]["b"], params["b"])
    assert tree_norm(tree_sub(points[0]["w"], params["w"])) == pytest.approx(0.1, rel=1e-5)
    # A stateful policy with a mask: LookSAM's g_v still covers every leaf.
    tx = optlab.looksam(optax.identity(), rho=0.1, every_k=2, mask=mask)
    _, state = tx.update(GRAD(params), tx.init(params), params, grad_fn=GRAD)
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
    assert float(jnp.abs(state.policy_state["b"]).max()) > 0.0


def test_norm_layer_mask_sam_on():
    params = {
        "Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
        "LayerNorm_0": {"scale": jnp.ones(3), "bias": jnp.zeros(3)},
        "block": {
            "bn1": {"scale": jnp.ones(3), "bias": jnp.zeros(3), "mean": jnp.zeros(3)},
            "conv": {"kernel": jnp.ones((3, 3))},
        },
        "final_norm": {"scale": jnp.ones(3)},
        "frozen": None,
    }
    mask = optlab.norm_layer_mask(params)
    assert mask == {
        "Dense_0": {"kernel": False, "bias": False},
        "LayerNorm_0": {"scale": True, "bias": True},
        "block": {"bn1": {"scale": True, "bias": True, "mean": False}, "conv": {"kernel": False}},
        "final_norm": {"scale": True},
        "frozen": None,
    }

    def loss(p):
        return sum(jnp.sum(jnp.sin(x) * (i + 1)) for i, x in enumerate(jax.tree.leaves(p)))

    grad_fn, points = recorded(jax.grad(loss))
    tx = optlab.masked_sam(optax.sgd(0.1), rho=0.1)  # default mask: SAM-ON
    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, grad_fn=grad_fn)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), points[0], params)
    assert moved == mask
    assert updates["frozen"] is None


def test_random_sam_key_changes_and_radius():
    params = fixed_params()
    grad_fn, points = recorded(GRAD)
    tx = optlab.random_sam(optax.identity(), rho=0.2, seed=3)
    state = tx.init(params)
    keys = [state.policy_state]
    for _ in range(3):
        _, state = tx.update(GRAD(params), state, params, grad_fn=grad_fn)
        keys.append(state.policy_state)
    assert len({tuple(np.asarray(k).tolist()) for k in keys}) == 4
    es = [tree_sub(p, params) for p in points]
    for e in es:
        assert tree_norm(e) == pytest.approx(0.2, rel=1e-5)
    assert tree_norm(tree_sub(es[0], es[1])) > 1e-3


def test_unnormalized_perturbation():
    params = fixed_params()
    grad_fn, points = recorded(GRAD)
    tx = optlab.unnormalized_sam(optax.identity(), rho=0.3)
    g = GRAD(params)
    tx.update(g, tx.init(params), params, grad_fn=grad_fn)
    want = jax.tree.map(lambda x: 0.3 * x, g)
    tree_allclose(tree_sub(points[0], params), want, rtol=1e-5, atol=1e-7)


def test_custom_policy_and_rho_schedule():
    """The protocol: perturb and combine on trees, the step count for schedules."""
    schedule = optax.linear_schedule(0.0, 0.2, transition_steps=2)

    def perturb(grads, params, state, step, **unused):
        e = jax.tree.map(lambda g: schedule(step) * jnp.sign(g), grads)
        return optax.tree.add(params, e), state + 1

    def combine(grads, perturbed_grads, state, step):  # FD gradient-norm-penalty style mix
        del step
        return optax.tree.add_scale(optax.tree.scale(0.5, grads), 0.5, perturbed_grads), state

    policy = optlab.PerturbationPolicy(
        init=lambda p: jnp.zeros([], jnp.int32), perturb=perturb, combine=combine
    )
    params = fixed_params()
    grad_fn, points = recorded(GRAD)
    tx = optlab.sharpness_aware(optax.identity(), policy)
    state = tx.init(params)
    for _ in range(3):
        d, state = tx.update(GRAD(params), state, params, grad_fn=grad_fn)
    sizes = [float(jnp.max(jnp.abs(p["w"] - params["w"]))) for p in points]
    np.testing.assert_allclose(sizes, [0.0, 0.1, 0.2], atol=1e-6)
    assert int(state.policy_state) == 3
    tree_allclose(
        d,
        jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, GRAD(params), GRAD(points[-1])),
        rtol=1e-6,
        atol=1e-7,
    )


def test_policy_state_keeps_its_dtype_and_grads_arrive_in_float32():
    seen = {}

    def perturb(grads, params, state, step, **unused):
        seen["dtypes"] = {x.dtype for x in jax.tree.leaves((grads, params, state))}
        return params, jax.tree.map(lambda x: x + 1.0, state)  # float32 arithmetic

    policy = optlab.PerturbationPolicy(init=optax.tree.zeros_like, perturb=perturb)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), fixed_params())
    grad_fn = lambda p: jax.tree.map(jnp.ones_like, p)  # noqa: E731
    tx = optlab.sharpness_aware(optax.sgd(0.1), policy)
    updates, state = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
    assert seen["dtypes"] == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves((updates, state.policy_state))} == {
        jnp.dtype(jnp.bfloat16)
    }


# ---------------------------------------------------------------------------
# Two update calls per step: optax.contrib.sam (optlab has no two-call mode)
# ---------------------------------------------------------------------------


def test_optax_contrib_sam_is_the_documented_two_call_style():
    """optlab dropped its ``mode="two_call"``; the module notes point loops that cannot pass
    ``grad_fn`` to ``optax.contrib.sam``. Alternating calls of it, each with the gradient at
    the current parameters, give the same parameters as optlab.sam's one-call steps."""
    params = fixed_params()
    want = run(optlab.sam(optax.adam(1e-2), rho=0.1), params, steps=4)
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(0.1))
    tx = optax.contrib.sam(optax.adam(1e-2), adv, sync_period=2)

    @jax.jit
    def call(params, state):
        updates, state = tx.update(GRAD(params), state, params)
        return optax.apply_updates(params, updates), state

    state, got = tx.init(params), []
    for _ in range(4):
        perturbed, state = call(params, state)  # ascent call: moves to w + e
        params, state = call(perturbed, state)  # descent call: back to w, base step on g_p
        got.append(params)
    tree_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Convergence: SAM finds the flat minimum, SGD the sharp one
# ---------------------------------------------------------------------------


def two_minima(params):
    """A valley along x whose walls (curvature 2 h(x) in y) are steep near x = 0 and gentle
    near x = 2. Along the floor (y = 0) a small dip makes a sharp local minimum near x = 0
    (top Hessian eigenvalue ~100, slightly *lower* loss); the flat minimum is at x = 2
    (eigenvalue ~3.7)."""
    x, y = params["w"][0], params["w"][1]
    floor = 0.05 * (x - 2.0) ** 2 - 0.2 * jnp.exp(-(x**2) / (2 * 0.2**2))
    h = 1.0 + 49.0 * jnp.exp(-(x**2) / (2 * 0.7**2))
    return floor + h * y**2


def _train(tx, steps=3000):
    grad_fn = jax.grad(two_minima)

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
        return (optax.apply_updates(params, updates), state), None

    params = {"w": jnp.array([0.1, 0.5])}
    (params, _), _ = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(
        params, tx.init(params)
    )
    return params


def test_sam_finds_the_flat_minimum_sgd_the_sharp_one():
    sgd = _train(optax.sgd(0.005))
    sam = _train(optlab.sam(optax.sgd(0.005), rho=0.3))
    assert abs(float(sgd["w"][0])) < 0.1 and abs(float(sgd["w"][1])) < 1e-3
    assert abs(float(sam["w"][0]) - 2.0) < 0.15 and abs(float(sam["w"][1])) < 1e-2
    sharp = optlab.sharpness_diagnostics(two_minima, sgd, rho=0.05)
    flat = optlab.sharpness_diagnostics(two_minima, sam, rho=0.05)
    assert float(sharp["top_eigenvalue"]) > 90.0
    assert float(flat["top_eigenvalue"]) < 5.0
    assert float(two_minima(sgd)) < float(two_minima(sam))  # SAM trades loss for flatness


# ---------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------


def test_diagnostics_on_a_known_quadratic():
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (6, 6)))
    eigs = jnp.array([5.0, 2.0, 1.0, 0.5, 0.1, 0.01])
    hess = (q * eigs[None, :]) @ q.T
    loss = lambda p: 0.5 * p["x"] @ hess @ p["x"] + 0.0 * jnp.sum(p["y"])  # noqa: E731
    params = {"x": jnp.arange(1.0, 7.0), "y": jnp.ones((2, 2))}
    diagnostics = functools.partial(
        optlab.sharpness_diagnostics, loss, rho=0.1, key=jax.random.PRNGKey(1), num_power_iters=100
    )
    diag = jax.jit(diagnostics)(params)  # traceable: no host sync inside
    assert set(diag) == {"loss", "perturbed_loss", "sharpness", "grad_norm", "top_eigenvalue"}
    assert float(diag["top_eigenvalue"]) == pytest.approx(5.0, rel=1e-4)
    x = params["x"]
    g = hess @ x
    e = 0.1 * g / jnp.linalg.norm(g)
    want = e @ hess @ x + 0.5 * e @ hess @ e  # L(x + e) - L(x) for a quadratic
    assert float(diag["sharpness"]) == pytest.approx(float(want), rel=1e-3)
    assert float(diag["grad_norm"]) == pytest.approx(float(jnp.linalg.norm(g)), rel=1e-5)
    for v in diag.values():
        assert v.shape == () and v.dtype == jnp.float32


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "sam",
        "asam",
        "gsam",
        "fisher_sam",
        "masked_sam",
        "looksam",
        "multistep_sam",
        "random_sam",
        "unnormalized_sam",
    ],
)
def test_negative_rho_raises(name):
    with pytest.raises(ValueError, match=rf"{name}.*rho.*-0.1"):
        getattr(optlab, name)(optax.sgd(0.1), rho=-0.1)


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="sam_policy.*rho.*-1"):
        optlab.sam_policy(rho=-1.0)
    with pytest.raises(ValueError, match="asam.*eta.*-0.5"):
        optlab.asam(optax.sgd(0.1), eta=-0.5)
    with pytest.raises(ValueError, match="gsam.*alpha.*-1"):
        optlab.gsam(optax.sgd(0.1), alpha=-1.0)
    with pytest.raises(ValueError, match="gsam_policy.*alpha.*-1"):
        optlab.gsam_policy(alpha=-1.0)
    with pytest.raises(ValueError, match="looksam.*every_k.*0"):
        optlab.looksam(optax.sgd(0.1), every_k=0)
    with pytest.raises(TypeError, match="looksam.*every_k"):
        optlab.looksam(optax.sgd(0.1), every_k=2.5)
    with pytest.raises(ValueError, match="multistep_sam.*step_size.*0"):
        optlab.multistep_sam(optax.sgd(0.1), step_size=0.0)
    with pytest.raises(ValueError, match="multistep_policy.*num_steps.*0"):
        optlab.multistep_policy(num_steps=0)
    with pytest.raises(ValueError, match="random_policy.*seed.*-1"):
        optlab.random_policy(seed=-1)
    with pytest.raises(TypeError, match="sharpness_aware.*policy"):
        optlab.sharpness_aware(optax.sgd(0.1), "sam")
    with pytest.raises(ValueError, match="sharpness_aware.*every_k.*0"):
        optlab.sharpness_aware(optax.sgd(0.1), optlab.sam_policy()._replace(every_k=0))
    with pytest.raises(TypeError, match="sam.*inner"):
        optlab.sam("sgd")
    with pytest.raises(ValueError, match="sharpness_diagnostics.*num_power_iters"):
        optlab.sharpness_diagnostics(loss_fn, fixed_params(), num_power_iters=0)


def test_missing_grad_fn_and_params_raise():
    params = fixed_params()
    tx = optlab.sam(optax.sgd(0.1))
    with pytest.raises(ValueError, match="sam.*grad_fn"):
        tx.update(GRAD(params), tx.init(params), params)
    with pytest.raises(ValueError, match="params"):
        tx.update(GRAD(params), tx.init(params), None, grad_fn=GRAD)


def test_bad_mask_raises():
    params = fixed_params()
    tx = optlab.masked_sam(optax.sgd(0.1), mask={"w": True})
    with pytest.raises(ValueError, match="masked_sam.*mask"):
        tx.update(GRAD(params), tx.init(params), params, grad_fn=GRAD)
    tx = optlab.masked_sam(optax.sgd(0.1), mask={"w": jnp.array(True), "b": True, "s": True})
    with pytest.raises(TypeError, match="masked_sam.*mask"):
        tx.update(GRAD(params), tx.init(params), params, grad_fn=GRAD)


def test_integer_params_raise():
    with pytest.raises(TypeError, match="sam.*floating"):
        optlab.sam(optax.sgd(0.1)).init({"w": jnp.ones(3, jnp.int32)})


# ---------------------------------------------------------------------------
# Flax NNX
# ---------------------------------------------------------------------------


def test_flax_nnx_optimizer_with_grad_fn():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 8, rngs=rngs)
            self.norm = nnx.LayerNorm(8, rngs=rngs)
            self.out = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.relu(self.norm(self.linear(x))))

    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = jnp.sin(x[:, :1])

    def loss(model):
        return jnp.mean((model(x) - y) ** 2)

    def make_grad_fn(model):
        # `nnx.Optimizer.update` passes the parameters as an `nnx.State` of plain arrays.
        return optlab.nnx_grad_fn(model, loss)

    model = Model(nnx.Rngs(0))
    reference_params = nnx.as_pure(nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, optlab.sam(optax.sgd(0.1), rho=0.05), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads, grad_fn=make_grad_fn(model))
        return value

    losses = [float(train_step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]

    # The same steps on the pure pytree of parameters give the same parameters.
    graphdef, _, rest = nnx.split(Model(nnx.Rngs(0)), nnx.Param, ...)

    def pure_loss(p):
        return loss(nnx.merge(graphdef, p, rest))

    tx = optlab.sam(optax.sgd(0.1), rho=0.05)
    params, state = reference_params, tx.init(reference_params)
    for _ in range(30):
        g = jax.grad(pure_loss)(params)
        updates, state = tx.update(g, state, params, grad_fn=jax.grad(pure_loss))
        params = optax.apply_updates(params, updates)
    tree_allclose(nnx.as_pure(nnx.state(model, nnx.Param)), params, rtol=1e-4, atol=1e-5)

    # SAM-ON on an NNX state: only the LayerNorm's scale and bias are selected.
    mask = optlab.norm_layer_mask(nnx.as_pure(nnx.state(model, nnx.Param)))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert {k for k, v in flat.items() if v} == {"['norm']['bias']", "['norm']['scale']"}
    sam_on = nnx.Optimizer(model, optlab.masked_sam(optax.sgd(0.1)), wrt=nnx.Param)
    grads = nnx.grad(loss)(model)
    sam_on.update(model, grads, grad_fn=make_grad_fn(model))
