"""Step-size rules and parameter-free methods (optlab/_step_sizes.py): defining properties,
numerical matches with optax / optax.contrib, hand-derived steps, and bad input."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import optlab
from helpers import fixed_params, quadratic_loss, run_optimizer


def _loss(p):
    """A non-quadratic loss > 0 on the standard test tree."""
    return quadratic_loss(p) + 0.5 * jnp.sum(jnp.sin(p["b"]) ** 2) + 0.1


def _trajectory(tx, steps=8, value=False, loss=_loss, params=None):
    params = fixed_params() if params is None else params
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p, **({"value": v} if value else {}))
        return optax.apply_updates(p, u), s, u

    out = []
    for _ in range(steps):
        params, state, updates = step(params, state)
        out.append((params, updates))
    return out, state


def _assert_same_trajectory(a, b, rtol=1e-5, atol=1e-6):
    for (pa, _), (pb, _) in zip(a, b):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), pa, pb)


# ---------------------------------------------------------------------------
# Matches with optax / optax.contrib (8 steps)
# ---------------------------------------------------------------------------

_SCHED = optax.cosine_decay_schedule(1.0, 8)
MATCHES = {
    "dog_heuristic": (lambda: optlab.dog(), lambda: contrib.dog()),
    "dog_distance_wd": (
        lambda: optlab.dog(init_step=("distance", 0.1), weight_decay=1e-2),
        lambda: contrib.dog(init_step=("distance", 0.1), weight_decay=1e-2),
    ),
    "dog_learning_rate": (
        lambda: optlab.dog(0.5, init_step=("learning_rate", 0.1)),
        lambda: contrib.dog(0.5, init_step=("learning_rate", 0.1)),
    ),
    "dowg": (lambda: optlab.dowg(), lambda: contrib.dowg()),
    "dowg_init": (
        lambda: optlab.dowg(init_estim_sq_dist=0.5),
        lambda: contrib.dowg(init_estim_sq_dist=0.5),
    ),
    "prodigy": (lambda: optlab.prodigy(), lambda: contrib.prodigy()),
    "prodigy_schedule_wd": (
        lambda: optlab.prodigy(_SCHED, b1=0.8, b2=0.99, weight_decay=0.1),
        lambda: contrib.prodigy(_SCHED, betas=(0.8, 0.99), weight_decay=0.1),
    ),
    "prodigy_safeguard": (
        lambda: optlab.prodigy(safeguard_warmup=True, beta3=0.9),
        lambda: contrib.prodigy(safeguard_warmup=True, beta3=0.9),
    ),
    "schedule_free_sgd": (
        lambda: optlab.schedule_free_sgd(0.1, weight_decay=1e-2),
        lambda: contrib.schedule_free_sgd(0.1, weight_decay=1e-2),
    ),
    "schedule_free_adamw": (
        lambda: optlab.schedule_free_adamw(1e-2, b1=0.95, weight_decay=0.1),
        lambda: contrib.schedule_free_adamw(1e-2, b1=0.95, weight_decay=0.1),
    ),
    "schedule_free_wrapper_adam": (
        lambda: optlab.schedule_free(optax.adam(1e-2, b1=0.0), 1e-2, weight_lr_power=1.0),
        lambda: contrib.schedule_free(optax.adam(1e-2, b1=0.0), 1e-2, weight_lr_power=1.0),
    ),
    "adagrad_norm_coordinate_is_adagrad": (
        lambda: optlab.adagrad_norm(0.1, 0.1, granularity="coordinate"),
        lambda: optax.adagrad(0.1, initial_accumulator_value=0.1),
    ),
}


@pytest.mark.parametrize("name", sorted(MATCHES))
def test_matches_optax(name):
    ours, ref = MATCHES[name]
    _assert_same_trajectory(_trajectory(ours())[0], _trajectory(ref())[0])


def test_sps_matches_optax_polyak_sgd():
    a, _ = _trajectory(optlab.sps(0.5, c=1.0, eps=0.0), value=True)
    b, _ = _trajectory(optax.polyak_sgd(0.5), value=True)
    _assert_same_trajectory(a, b)


def test_schedule_free_eval_params_match_optax():
    _a, state = _trajectory(optlab.schedule_free_sgd(0.1))
    b, ref_state = _trajectory(contrib.schedule_free_sgd(0.1))
    ours = optlab.averaged_params(state)
    theirs = contrib.schedule_free_eval_params(ref_state, b[-1][0])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), ours, theirs)


# ---------------------------------------------------------------------------
# Polyak-type rules
# ---------------------------------------------------------------------------


def _g_and_value(params, loss=_loss):
    value, g = jax.value_and_grad(loss)(params)
    return g, value


def test_sps_step_is_capped_zero_at_f_star_and_never_ascends():
    params = fixed_params()
    g, value = _g_and_value(params)
    gnorm2 = float(optax.tree.norm(g, squared=True))
    for cap in (1e-3, 10.0):
        tx = optlab.scale_by_sps(max_learning_rate=cap, c=0.5, eps=0.0)
        u, _ = tx.update(g, tx.init(params), params, value=value)
        step = min(float(value) / (0.5 * gnorm2), cap)
        jax.tree.map(
            lambda a, b, step=step: np.testing.assert_allclose(a, step * b, rtol=1e-5), u, g
        )
    tx = optlab.scale_by_sps(f_star=value)  # f == f*: no step
    u, _ = tx.update(g, tx.init(params), params, value=value)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
    tx = optlab.scale_by_sps(f_star=value + 1.0)  # f < f*: no step (not an ascent)
    u, _ = tx.update(g, tx.init(params), params, value=value)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))


def test_alr_smag_three_step_reference():
    """Heavy ball d = beta d + g, tau = min(lr, f / (c ||d||^2)), x <- x(1 - lam tau) - tau d."""
    lr, beta, c, lam = 0.3, 0.9, 0.7, 0.05
    out, _ = _trajectory(
        optlab.alr_smag(lr, momentum=beta, c=c, eps=0.0, weight_decay=lam), steps=3, value=True
    )
    x = {k: np.asarray(v, np.float64) for k, v in fixed_params().items()}
    d = {k: np.zeros_like(v) for k, v in x.items()}
    for t in range(3):
        value, g = jax.value_and_grad(_loss)({k: jnp.asarray(v, jnp.float32) for k, v in x.items()})
        d = {k: beta * d[k] + np.asarray(g[k], np.float64) for k in x}
        tau = min(lr, float(value) / (c * sum(np.sum(v**2) for v in d.values())))
        x = {k: x[k] * (1 - lam * tau) - tau * d[k] for k in x}
        for k in x:
            np.testing.assert_allclose(out[t][0][k], x[k], rtol=1e-5, atol=1e-6)


def test_polyak_rules_converge_with_a_loss_bounded_by_zero():
    for tx in (optlab.sps(1.0), optlab.alr_smag(1.0)):
        _, _, losses = run_optimizer(
            tx, quadratic_loss, fixed_params(), 300, lambda p: {"value": quadratic_loss(p)}
        )
        assert losses[-1] < 1e-6 * losses[0]


def test_missing_value_is_named():
    params = fixed_params()
    for name, tx in [
        ("scale_by_sps", optlab.scale_by_sps()),
        ("sps", optlab.sps()),
        ("alr_smag", optlab.alr_smag()),
        ("normalize_by_loss", optlab.normalize_by_loss()),
        ("scale_by_aegd", optlab.scale_by_aegd()),
    ]:
        with pytest.raises(
            ValueError, match=rf"optlab\.{name}` needs the keyword argument `value`"
        ):
            tx.update(params, tx.init(params), params)


def test_normalize_by_loss_divides_by_the_loss_and_separates_data():
    g = {"w": jnp.array([1.0, -2.0])}
    tx = optlab.normalize_by_loss()
    u, _ = tx.update(g, tx.init(g), value=jnp.float32(0.25))
    np.testing.assert_allclose(u["w"], [4.0, -8.0])
    # logistic regression on separable data: the loss keeps falling with a huge step
    x = jax.random.normal(jax.random.key(0), (32, 3))
    y = jnp.sign(x @ jnp.array([1.0, -1.0, 0.5]))

    def logistic(p):
        return jnp.mean(jax.nn.softplus(-y * (x @ p["w"])))

    tx = optax.chain(optlab.normalize_by_loss(), optax.scale_by_learning_rate(10.0))
    _, _, losses = run_optimizer(
        tx, logistic, {"w": jnp.zeros(3)}, 50, lambda p: {"value": logistic(p)}
    )
    assert losses[-1] < 1e-3 and np.all(np.isfinite(losses))


def test_aegd_energy_never_increases_and_converges():
    tx = optax.chain(optlab.scale_by_aegd(learning_rate=2.0), optax.scale(-1.0))
    params = fixed_params()
    state = tx.init(params)
    energies = []
    for _ in range(60):
        value, g = jax.value_and_grad(_loss)(params)
        u, state = tx.update(g, state, params, value=value)
        params = optax.apply_updates(params, u)
        energies.append(jax.tree.map(np.asarray, state[0].energy))
    for a, b in itertools.pairwise(energies):
        jax.tree.map(lambda r0, r1: np.testing.assert_array_less(r1, r0 + 1e-7), a, b)
    assert float(_loss(params)) < 0.2  # minimum 0.1 (a large step, still stable)


# ---------------------------------------------------------------------------
# AdaGrad-norm and AdaGO
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["global", "leaf"])
def test_adagrad_norm_step_sizes_never_increase(granularity):
    tx = optlab.scale_by_adagrad_norm(0.1, granularity=granularity)
    params = fixed_params()
    state = tx.init(params)
    sizes = []
    for i in range(6):
        g = jax.tree.map(lambda x, i=i: (10.0 ** (i % 3 - 1)) * jnp.ones_like(x), params)
        u, state = tx.update(g, state, params)
        sizes.append(jax.tree.map(lambda a, b: float(jnp.sum(a) / jnp.sum(b)), u, g))
    for a, b in itertools.pairwise(sizes):
        jax.tree.map(lambda s0, s1: np.testing.assert_array_less(s1, s0 * (1 + 1e-6)), a, b)
    if granularity == "global":  # one scalar step for the whole tree
        assert len({round(s, 6) for s in jax.tree.leaves(sizes[-1])}) == 1
        total = 0.1 + sum(
            float(
                optax.tree.norm(
                    jax.tree.map(lambda x, i=i: (10.0 ** (i % 3 - 1)) * jnp.ones_like(x), params),
                    squared=True,
                )
            )
            for i in range(6)
        )
        np.testing.assert_allclose(float(state.sum_of_squares), total, rtol=1e-5)


def test_clipped_adagrad_norm_shares_the_accumulator():
    g = {"w": jnp.array([30.0, 40.0])}
    tx = optlab.scale_by_clipped_adagrad(
        max_norm=5.0, initial_accumulator_value=0.0, adagrad_norm=True
    )
    ref = optax.chain(
        optlab.in_float32(optax.clip_by_global_norm(5.0)), optlab.scale_by_adagrad_norm(0.0)
    )
    u, s = tx.update(g, tx.init(g))
    v, r = ref.update(g, ref.init(g))
    np.testing.assert_allclose(u["w"], v["w"])
    assert type(s[1]) is type(r[1])


def test_adago_one_scalar_per_matrix_and_bounded_orthogonal_step():
    params = {"w1": jnp.zeros((6, 4)), "w2": jnp.zeros((4, 8))}
    tx = optlab.scale_by_adago(gamma=2.0, eps=1e-3, ns_steps=8)
    state = tx.init(params)
    assert jax.tree.map(jnp.shape, state.sum_of_squares) == {"w1": (), "w2": ()}
    key = jax.random.key(0)
    acc = {"w1": 0.0, "w2": 0.0}
    for i in range(3):
        g = jax.tree.map(
            lambda p, i=i: (3.0**i) * jax.random.normal(jax.random.fold_in(key, i), p.shape), params
        )
        u, state = tx.update(g, state, params)
        for k in params:
            n = min(float(jnp.linalg.norm(g[k])), 2.0)
            acc[k] += n * n
            alpha = max(1e-3, n / np.sqrt(acc[k]))
            assert alpha <= 1.0
            s = np.linalg.svd(np.asarray(u[k]) / alpha, compute_uv=False)
            assert s.max() < 1.3 and s.min() > 0.5, (k, s)  # orthogonalized (Newton-Schulz)
            np.testing.assert_allclose(float(state.sum_of_squares[k]), acc[k], rtol=1e-5)


def test_adago_alias_uses_adamw_on_vectors():
    params = {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}
    g = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    tx = optlab.adago(0.1, adam_learning_rate=0.01, nesterov=False)
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["b"], -0.01 * jnp.ones(4), rtol=1e-4)


# ---------------------------------------------------------------------------
# DoG, DoWG, Prodigy
# ---------------------------------------------------------------------------


def test_dog_step_is_max_distance_over_root_sum_of_squares():
    tx = optlab.scale_by_dog(("distance", 1e-3), eps=0.0)
    params = fixed_params()
    x0 = params
    state = tx.init(params)
    max_d, sum_sq = 1e-3, 0.0
    for _ in range(4):
        g = jax.grad(_loss)(params)
        u, state = tx.update(g, state, params)
        max_d = max(max_d, float(optax.tree.norm(optax.tree.sub(params, x0))))
        sum_sq += float(optax.tree.norm(g, squared=True))
        step = max_d / np.sqrt(sum_sq)
        jax.tree.map(
            lambda a, b, step=step: np.testing.assert_allclose(a, step * b, rtol=1e-5), u, g
        )
        params = optax.apply_updates(params, jax.tree.map(lambda x: -x, u))


def test_prodigy_d_never_decreases_and_zero_gradient_stays_finite():
    params = fixed_params()
    tx = optlab.scale_by_prodigy()
    state = tx.init(params)
    u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, state)))
    ds = []
    for _ in range(10):
        u, state = tx.update(jax.grad(_loss)(params), state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda x: -x, u))
        ds.append(float(state.estim_lr))
    assert np.all(np.diff(ds) >= 0) and ds[-1] > 1e-6


@pytest.mark.parametrize(
    "name", ["dog", "dowg", "prodigy", "schedule_free_sgd", "schedule_free_adamw"]
)
def test_parameter_free_defaults_converge_untuned(name):
    kwargs = {
        "schedule_free_sgd": {"learning_rate": 0.1},
        "schedule_free_adamw": {"learning_rate": 0.1},
    }.get(name, {})
    _, state, losses = run_optimizer(
        optlab.get(name, **kwargs), quadratic_loss, fixed_params(), 200
    )
    assert losses[-1] < 1e-3 * losses[0], (name, losses[0], losses[-1])
    if name.startswith("schedule_free"):
        assert float(quadratic_loss(optlab.averaged_params(state))) < 1e-2 * losses[0]


# ---------------------------------------------------------------------------
# Schedule-free: averaged parameters
# ---------------------------------------------------------------------------


def test_schedule_free_b1_zero_is_primal_averaging():
    """b1 = 0: y = z (plain SGD iterates) and x = their lr^2-weighted running mean."""
    params = {"w": jnp.array([1.0, -2.0])}
    tx = optlab.schedule_free(optax.sgd(0.1), 0.1, b1=0.0)
    state = tx.init(params)
    iterates = [params["w"]]
    for _ in range(5):
        u, state = tx.update(params, state, params)
        np.testing.assert_allclose(u["w"], -0.1 * params["w"], rtol=1e-6)  # an SGD step
        params = optax.apply_updates(params, u)
        iterates.append(params["w"])
    np.testing.assert_allclose(
        optlab.averaged_params(state)["w"], np.mean(np.stack(iterates[1:]), 0), rtol=1e-5
    )
    assert optlab.averaged_params(state, which="schedule_free")["w"].shape == (2,)


def test_schedule_free_averaged_params_through_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optlab.schedule_free_adamw(1e-2), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (8, 3))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads, some_flax_kwarg=1.0)

    for _ in range(3):
        step(model, optimizer)
    avg = optlab.averaged_params(optimizer)
    assert jax.tree.structure(avg) == jax.tree.structure(nnx.as_pure(nnx.state(model, nnx.Param)))
    assert not np.allclose(avg["kernel"], model.kernel[...])  # x differs from the train point y


# ---------------------------------------------------------------------------
# Bad input specific to this module (the registry-wide suite covers the numbers)
# ---------------------------------------------------------------------------


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"optlab\.scale_by_adagrad_norm`: `granularity`"):
        optlab.scale_by_adagrad_norm(granularity="row")
    with pytest.raises(ValueError, match=r"optlab\.adagrad_norm`: `granularity`"):
        optlab.adagrad_norm(0.1, granularity="row")
    with pytest.raises(ValueError, match=r"optlab\.scale_by_dog`: `init_step\[0\]`"):
        optlab.scale_by_dog(("far", 1.0))
    with pytest.raises(ValueError, match=r"optlab\.dog`: `init_step_value`"):
        optlab.dog(init_step=("distance", -1.0))
    with pytest.raises(TypeError, match=r"optlab\.scale_by_dog`: `init_step`"):
        optlab.scale_by_dog(1e-6)
    with pytest.raises(TypeError, match=r"optlab\.schedule_free`: `base_optimizer`"):
        optlab.schedule_free("sgd", 0.1)
    with pytest.raises(ValueError, match=r"optlab\.schedule_free_sgd`: `warmup_steps`"):
        optlab.schedule_free_sgd(0.1, warmup_steps=-2)
    with pytest.raises(ValueError, match=r"optlab\.prodigy`: `beta3`"):
        optlab.prodigy(beta3=1.0)
    with pytest.raises(ValueError, match=r"optlab\.scale_by_sps`: `max_learning_rate`"):
        optlab.scale_by_sps(max_learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"optlab\.sps`: `f_star`"):
        optlab.sps(f_star=float("nan"))
