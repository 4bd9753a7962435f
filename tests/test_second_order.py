"""Second-order transforms: Hutchinson's estimator, Sophia, AdaHessian."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib
from optax.contrib import _sophia as optax_sophia  # scale_by_sophia is not re-exported

import optlab
from helpers import fixed_params, run_optimizer, tree_allclose


def _hvp_fn(loss):
    return lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]


def _diag_loss(curv, target=0.0):
    """0.5 * sum(curv * (x - target)^2) per leaf: Hessian exactly diag(curv)."""

    def loss(params):
        return sum(
            0.5 * jnp.sum(c * (p - target) ** 2)
            for c, p in zip(jax.tree.leaves(curv), jax.tree.leaves(params))
        )

    return loss


def _dense_loss(a):
    """0.5 x^T A x on params["x"]: Hessian exactly A (symmetric)."""
    return lambda params: 0.5 * params["x"] @ a @ params["x"]


_A = jnp.array(
    [[3.0, 1.0, -0.5, 0.2], [1.0, 2.0, 0.3, 0.0], [-0.5, 0.3, 4.0, 1.0], [0.2, 0.0, 1.0, 1.5]]
)


# ---------------------------------------------------------------------------
# Hutchinson
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_hutchinson_exact_for_diagonal_hessian(seed):
    params = fixed_params()
    curv = jax.tree.map(lambda p: jnp.arange(1.0, p.size + 1).reshape(p.shape), params)
    loss = _diag_loss(curv, target=0.3)
    tx = optlab.hutchinson_diag_hessian(seed=seed)
    state = tx.init(params)
    for _ in range(3):  # fresh probes every call, always exact: z_i^2 = 1
        diag, state = tx.update(params, state, params, hvp_fn=_hvp_fn(loss))
        tree_allclose(diag, curv)


def test_hutchinson_key_split_every_call_and_unbiased():
    params = {"x": jnp.array([1.0, -1.0, 0.5, 2.0])}
    loss = _dense_loss(_A)
    tx = optlab.hutchinson_diag_hessian(seed=3)
    s0 = tx.init(params)
    d1, s1 = tx.update(params, s0, params, hvp_fn=_hvp_fn(loss))
    d2, s2 = tx.update(params, s1, params, hvp_fn=_hvp_fn(loss))
    assert not np.array_equal(s0.key, s1.key) and not np.array_equal(s1.key, s2.key)
    assert not np.allclose(d1["x"], d2["x"])  # off-diagonal terms differ between probes

    # The mean over many probes converges to diag(A): std of one entry's mean <= 0.03.
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    est = jax.vmap(
        lambda k: tx.update(params, optlab.HutchinsonState(key=k), params, hvp_fn=_hvp_fn(loss))[0][
            "x"
        ]
    )(keys)
    np.testing.assert_allclose(est.mean(0), jnp.diag(_A), atol=0.15)


def test_hutchinson_matches_optax_estimator():
    params = {"x": jnp.array([1.0, -1.0, 0.5, 2.0])}
    loss = _dense_loss(_A)
    ours = optlab.hutchinson_diag_hessian(seed=5)
    ref = contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(5))
    s, rs = ours.init(params), ref.init(params)
    for _ in range(3):
        d, s = ours.update(params, s, params, hvp_fn=_hvp_fn(loss))
        rd, rs = ref.update(params, rs, params, obj_fn=loss)
        tree_allclose(d, rd)


# ---------------------------------------------------------------------------
# Sophia
# ---------------------------------------------------------------------------


def test_sophia_hand_derived_three_steps():
    # loss = x^2 (curvature 2), x0 = 1; b1 = b2 = 0.5, gamma = 1, clip 10, refresh
    # every 2 steps (at steps 0 and 2), lr 0.01 applied by hand.
    #  t=0: g=2, m=1, m_hat=2, h=0 -> ratio 2/eps -> clipped to 10; refresh h=0.5*2=1
    #  x1 = 1 - 0.01*10 = 0.9
    #  t=1: g=1.8, m=1.4, m_hat=1.4/0.75=1.8666667, u=1.8666667/1; no refresh
    #  x2 = 0.8813333
    #  t=2: g=1.7626667, m=1.5813333, m_hat=1.5813333/0.875=1.8072381, u=1.8072381;
    #  refresh h = 0.5*1 + 0.5*2 = 1.5
    loss = lambda p: jnp.sum(p["x"] ** 2)
    tx = optlab.scale_by_sophia(
        b1=0.5, b2=0.5, eps=1e-8, gamma=1.0, clip_threshold=10.0, update_interval=2
    )
    params = {"x": jnp.array(1.0)}
    state = tx.init(params)
    got_u, got_h = [], []
    for _ in range(3):
        u, state = tx.update(jax.grad(loss)(params), state, params, hvp_fn=_hvp_fn(loss))
        got_u.append(float(u["x"]))
        got_h.append(float(state.nu["x"]))
        params = {"x": params["x"] - 0.01 * u["x"]}
    np.testing.assert_allclose(got_u, [10.0, 1.8666667, 1.8072381], rtol=1e-6)
    np.testing.assert_allclose(got_h, [1.0, 1.0, 1.5], rtol=1e-6)
    assert int(state.count) == 3


def test_sophia_matches_optax_contrib():
    loss = _dense_loss(_A)
    params = {"x": jnp.array([1.0, -1.0, 0.5, 2.0])}
    kw = dict(b1=0.9, b2=0.95, eps=1e-8, gamma=0.05, clip_threshold=1.0, update_interval=3)
    ours = optax.chain(optlab.scale_by_sophia(**kw, seed=4), optax.scale_by_learning_rate(0.05))
    ref = optax.chain(
        optax_sophia.scale_by_sophia(
            **kw,
            hessian_diagonal_fn=contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(4)),
        ),
        optax.scale_by_learning_rate(0.05),
    )
    p1, _, l1 = run_optimizer(ours, loss, params, 20, lambda p: {"hvp_fn": _hvp_fn(loss)})
    p2, _, l2 = run_optimizer(ref, loss, params, 20, lambda p: {"obj_fn": loss})
    np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-6)
    tree_allclose(p1, p2)


def test_sophia_refreshes_only_every_update_interval():
    loss = _dense_loss(_A)
    params = {"x": jnp.array([1.0, -1.0, 0.5, 2.0])}
    tx = optlab.scale_by_sophia(update_interval=3)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, hvp_fn=_hvp_fn(loss)))
    state = tx.init(params)
    for t in range(7):
        new_u, new_state = step(jax.grad(loss)(params), state, params)
        refreshed = t % 3 == 0
        assert np.array_equal(new_state.hessian_state.key, state.hessian_state.key) != refreshed
        assert np.array_equal(new_state.nu["x"], state.nu["x"]) != refreshed
        state = new_state
        params = optax.apply_updates(params, jax.tree.map(lambda u: -1e-2 * u, new_u))


def test_sophia_update_is_clipped():
    params = fixed_params()
    loss = _diag_loss(jax.tree.map(jnp.ones_like, params))
    tx = optlab.scale_by_sophia(clip_threshold=0.5, update_interval=1)
    state = tx.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda p: 100.0 * p, params)
        u, state = tx.update(grads, state, params, hvp_fn=_hvp_fn(loss))
        assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(u)) <= 0.5


def test_sophia_converges_on_ill_conditioned_quadratic():
    curv = {"x": jnp.array([1.0, 10.0, 100.0])}
    loss = _diag_loss(curv, target=1.0)
    tx = optax.chain(optlab.scale_by_sophia(b1=0.9), optax.scale_by_learning_rate(0.02))
    params = {"x": jnp.zeros(3)}
    _, _, losses = run_optimizer(tx, loss, params, 300, lambda p: {"hvp_fn": _hvp_fn(loss)})
    assert losses[-1] < 1e-4 * losses[0]


# ---------------------------------------------------------------------------
# AdaHessian
# ---------------------------------------------------------------------------


def _adahessian_reference(g_fn, d_fn, x0, steps, b1, b2, eps, k, lr):
    """The paper's update written out in NumPy (float64)."""
    x, m, v, out = np.asarray(x0, np.float64), 0.0, 0.0, []
    for t in range(1, steps + 1):
        g, d = g_fn(x), d_fn(x)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d**2
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) ** k + eps)
        out.append(u)
        x = x - lr * u
    return out


@pytest.mark.parametrize("hessian_power", [1.0, 0.5])
def test_adahessian_hand_derived_three_steps(hessian_power):
    curv = np.array([2.0, 0.5, 8.0])
    loss = _diag_loss({"x": jnp.asarray(curv, jnp.float32)})
    b1, b2, eps, lr = 0.5, 0.8, 1e-4, 0.1
    tx = optlab.scale_by_adahessian(b1=b1, b2=b2, eps=eps, hessian_power=hessian_power)
    params = {"x": jnp.array([1.0, -2.0, 0.5])}
    state = tx.init(params)
    got = []
    for _ in range(3):
        u, state = tx.update(jax.grad(loss)(params), state, params, hvp_fn=_hvp_fn(loss))
        got.append(np.asarray(u["x"]))
        params = {"x": params["x"] - lr * u["x"]}
    want = _adahessian_reference(
        lambda x: curv * x, lambda x: curv, [1.0, -2.0, 0.5], 3, b1, b2, eps, hessian_power, lr
    )
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5)
    # First step by hand: m_hat = g, sqrt(v_hat) = |D| = curv.
    np.testing.assert_allclose(
        got[0], curv * [1.0, -2.0, 0.5] / (curv**hessian_power + eps), rtol=1e-6
    )


def test_adahessian_spatial_average_only_on_marked_conv_kernels():
    # A (3, 2, 2) "conv kernel" "k" and an attention-shaped (embed, heads, head_dim) kernel
    # "attn": only the leaf marked as a conv kernel is averaged over its leading (spatial)
    # axis; the attention kernel keeps its per-entry estimate (the default averages none).
    curv = {
        "k": jnp.arange(1.0, 13.0).reshape(3, 2, 2),
        "attn": jnp.arange(1.0, 25.0).reshape(4, 2, 3),
    }
    loss = _diag_loss(curv)
    params = jax.tree.map(jnp.ones_like, curv)
    grads = jax.grad(loss)(params)
    k_avg = jnp.broadcast_to(curv["k"].mean(0, keepdims=True), curv["k"].shape)
    for spatial, dbar in [
        ({"k": True, "attn": False}, {"k": k_avg, "attn": curv["attn"]}),
        (lambda p: {"k": True, "attn": False}, {"k": k_avg, "attn": curv["attn"]}),
        (False, curv),
    ]:
        tx = optlab.scale_by_adahessian(eps=1e-4, spatial_average=spatial)
        u, _ = tx.update(grads, tx.init(params), params, hvp_fn=_hvp_fn(loss))
        for k in curv:  # f32 debias
            np.testing.assert_allclose(u[k], grads[k] / (dbar[k] + 1e-4), rtol=2e-5)
    # The default is off, and `True` (which used to average every rank >= 3 leaf) is refused.
    tx = optlab.scale_by_adahessian(eps=1e-4)
    u, _ = tx.update(grads, tx.init(params), params, hvp_fn=_hvp_fn(loss))
    np.testing.assert_allclose(u["attn"], grads["attn"] / (curv["attn"] + 1e-4), rtol=2e-5)
    with pytest.raises(ValueError, match=r"optlab.scale_by_adahessian.*spatial_average=True"):
        optlab.scale_by_adahessian(spatial_average=True)
    with pytest.raises(ValueError, match=r"optlab.adahessian.*spatial_average=True"):
        optlab.adahessian(0.1, spatial_average=True)


def test_adahessian_power_zero_is_momentum():
    loss = _dense_loss(_A)
    params = {"x": jnp.array([1.0, -1.0, 0.5, 2.0])}
    ada = optax.chain(
        optlab.scale_by_adahessian(b1=0.9, eps=1e-4, hessian_power=0.0),
        optax.scale_by_learning_rate(0.01 * (1 + 1e-4)),
    )  # denominator 1 + eps
    ema = optax.chain(optax.ema(0.9, debias=True), optax.scale_by_learning_rate(0.01))
    p1, _, _ = run_optimizer(ada, loss, params, 20, lambda p: {"hvp_fn": _hvp_fn(loss)})
    p2, _, _ = run_optimizer(ema, loss, params, 20)
    tree_allclose(p1, p2, rtol=1e-5, atol=1e-6)


def test_adahessian_converges():
    loss = _dense_loss(_A)
    params = {"x": jnp.array([1.0, -1.0, 0.5, 2.0])}
    tx = optax.chain(optlab.scale_by_adahessian(), optax.scale_by_learning_rate(0.1))
    _, _, losses = run_optimizer(tx, loss, params, 300, lambda p: {"hvp_fn": _hvp_fn(loss)})
    assert losses[-1] < 1e-4 * losses[0]


# ---------------------------------------------------------------------------
# Errors and validation
# ---------------------------------------------------------------------------

_FACTORIES = {
    "hutchinson_diag_hessian": optlab.hutchinson_diag_hessian,
    "scale_by_sophia": optlab.scale_by_sophia,
    "scale_by_adahessian": optlab.scale_by_adahessian,
}


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_missing_hvp_fn_raises(name):
    params = fixed_params()
    tx = _FACTORIES[name]()
    state = tx.init(params)
    with pytest.raises(ValueError, match=rf"{name}.*hvp_fn.*jax\.jvp"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match=rf"{name}.*hvp_fn"):
        jax.jit(lambda g, s, p: tx.update(g, s, p, some_flax_kwarg=1.0))(params, state, params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, None, hvp_fn=lambda p, v: v)


@pytest.mark.parametrize(
    "name,kwargs,match,err",
    [
        ("scale_by_sophia", dict(b1=1.0), "b1", ValueError),
        ("scale_by_sophia", dict(b2=-0.1), "b2", ValueError),
        ("scale_by_sophia", dict(eps=0.0), "eps", ValueError),
        ("scale_by_sophia", dict(gamma=-1.0), "gamma", ValueError),
        ("scale_by_sophia", dict(clip_threshold=0.0), "clip_threshold", ValueError),
        ("scale_by_sophia", dict(update_interval=0), "update_interval", ValueError),
        ("scale_by_sophia", dict(update_interval=2.5), "update_interval", TypeError),
        ("scale_by_sophia", dict(seed=-1), "seed", ValueError),
        ("scale_by_adahessian", dict(b1=1.5), "b1", ValueError),
        ("scale_by_adahessian", dict(eps=-1e-4), "eps", ValueError),
        ("scale_by_adahessian", dict(hessian_power=1.5), "hessian_power", ValueError),
        ("hutchinson_diag_hessian", dict(seed=0.5), "seed", TypeError),
    ],
)
def test_bad_hyperparameters_raise(name, kwargs, match, err):
    with pytest.raises(err, match=rf"{name}.*{match}"):
        _FACTORIES[name](**kwargs)


def test_integer_params_rejected():
    tx = optlab.scale_by_sophia()
    with pytest.raises(TypeError, match="scale_by_sophia.*floating"):
        tx.init({"x": jnp.arange(3)})


def test_flax_nnx_forwards_hvp_fn():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.ones((5, 3))
    y = jnp.zeros((5, 2))
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    def loss_on_state(param_state):
        m = nnx.merge(graphdef, param_state, rest)
        return jnp.mean((m(x) - y) ** 2)

    tx = optax.chain(
        optlab.scale_by_sophia(b1=0.9, update_interval=1), optax.scale_by_learning_rate(0.05)
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    l0 = float(loss_on_state(nnx.state(model, nnx.Param)))
    for _ in range(20):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads, hvp_fn=_hvp_fn(loss_on_state))
    assert float(loss_on_state(nnx.state(model, nnx.Param))) < 0.5 * l0


def test_rademacher_probes_match_optax_random_like():
    # One batched Threefry call (for compile time) draws exactly optax's per-leaf probes.
    from optlab._second_order import _rademacher_like

    tree = {
        "a": jnp.ones((4, 3)),
        "b": [jnp.ones(()), jnp.ones((0,)), jnp.ones((7,), jnp.bfloat16)],
        "c": None,
        "d": jnp.ones((2, 3, 5)),
    }
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        ours = jax.jit(_rademacher_like)(key, tree)
        ref = optax.tree.random_like(key, tree, jax.random.rademacher, dtype=jnp.float32)
        assert jax.tree.structure(ours) == jax.tree.structure(ref)
        for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            assert x.dtype == y.dtype == jnp.float32 and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
