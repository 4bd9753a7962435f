"""Normalization and projection family: defining properties, optax matches, references."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import _muon

import optlab
from helpers import fixed_params, parabola, run_optimizer, tree_allclose
from optlab._normalization import _weight_decay

MUON_COEFFS = (3.4445, -4.7750, 2.0315)


def _normal(seed, shape, dtype=jnp.float32, scale=1.0):
    return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def _apply(tx, updates, params=None, state=None):
    """One jitted update (eager dispatch of many small ops is slower on CPU)."""
    state = tx.init(params if params is not None else updates) if state is None else state
    return jax.jit(tx.update)(updates, state, params)


def _tree_norm(tree):
    squares = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return float(jnp.sqrt(sum(squares)))


# ---------------------------------------------------------------------------
# normalize_by_global_norm / normalize_by_leaf_norm / scale_by_sign
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_normalize_by_global_norm_unit_norm_and_matches_optax(scale):
    g = jax.tree.map(lambda x: scale * x, fixed_params())
    out, _ = _apply(optlab.normalize_by_global_norm(), g)
    np.testing.assert_allclose(_tree_norm(out), 1.0, rtol=1e-5)
    ref, _ = _apply(optax.normalize_by_update_norm(scale_factor=1.0, eps=1e-8), g)
    tree_allclose(out, ref)
    # direction kept
    tree_allclose(out, jax.tree.map(lambda x: x / _tree_norm(g), g), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize("name", ["normalize_by_global_norm", "normalize_by_leaf_norm"])
def test_normalize_zero_stays_zero(name, eps):
    g = jax.tree.map(jnp.zeros_like, fixed_params())
    out, _ = _apply(getattr(optlab, name)(eps=eps), g)
    chex.assert_trees_all_equal(out, g)


def test_normalize_by_leaf_norm_unit_norm_per_leaf():
    g = {"w": _normal(0, (5, 3), scale=30.0), "b": _normal(1, (3,), scale=1e-3), "z": jnp.zeros(4)}
    out, _ = _apply(optlab.normalize_by_leaf_norm(), g)
    np.testing.assert_allclose(jnp.linalg.norm(out["w"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(out["b"]), 1.0, rtol=1e-4)
    chex.assert_trees_all_equal(out["z"], g["z"])
    np.testing.assert_allclose(out["w"], g["w"] / jnp.linalg.norm(g["w"]), rtol=1e-5, atol=1e-7)


def test_normalize_bf16_keeps_dtype_and_norm():
    g = {"w": _normal(0, (64, 32), jnp.bfloat16, scale=100.0)}
    for tx in (optlab.normalize_by_global_norm(), optlab.normalize_by_leaf_norm()):
        out, _ = _apply(tx, g)
        assert out["w"].dtype == jnp.bfloat16
        np.testing.assert_allclose(_tree_norm(out), 1.0, rtol=1e-2)


def test_scale_by_sign_values():
    g = {"w": jnp.array([[-2.0, 0.0], [1e-30, 3.0]]), "b": _normal(0, (7,))}
    out, _ = _apply(optlab.scale_by_sign(), g)
    for leaf in jax.tree.leaves(out):
        assert set(np.unique(np.asarray(leaf)).tolist()) <= {-1.0, 0.0, 1.0}
    chex.assert_trees_all_equal(out, jax.tree.map(jnp.sign, g))


# ---------------------------------------------------------------------------
# orthogonalize (Newton-Schulz)
# ---------------------------------------------------------------------------


def _quintic(s, coeffs=MUON_COEFFS, steps=5):
    a, b, c = coeffs
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", [(8, 32), (32, 8), (20, 30), (64, 16)])
def test_orthogonalize_singular_values_near_one(shape):
    # Muon's coefficients map every normalized singular value >= 2e-3 into [0.68, 1.21]
    # after 5 steps (scalar map computed in _quintic); random rectangular matrices keep
    # their smallest singular value far above that, so all of them land in the band.
    band = _quintic(np.linspace(2e-3, 1.0, 200_001))
    assert 0.68 < band.min() and band.max() < 1.21
    for seed in range(3):
        g = _normal(seed, shape, scale=10.0 ** (seed - 1))
        out, _ = _apply(optlab.orthogonalize(), g)
        s = np.linalg.svd(np.asarray(out, np.float64), compute_uv=False)
        assert 0.68 - 1e-3 <= s.min() and s.max() <= 1.21 + 1e-3, (shape, s.min(), s.max())


def test_orthogonalize_is_the_scalar_quintic_on_singular_values():
    # X -> aX + (bA + cA^2)X acts on the SVD G = U S V^T as S -> p(S): singular vectors kept.
    g = np.asarray(_normal(3, (12, 7)), np.float64)
    out, _ = _apply(optlab.orthogonalize(eps=0.0), jnp.asarray(g, jnp.float32))
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    expected = (u * _quintic(s / np.linalg.norm(g))) @ vt
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)


@pytest.mark.parametrize("shape", [(8, 32), (32, 8), (16, 16)])
def test_orthogonalize_matches_optax_contrib(shape):
    g = _normal(5, shape)
    out, _ = _apply(optlab.orthogonalize(eps=1e-7), g)
    ref = _muon.orthogonalize_via_newton_schulz(g, jnp.asarray(MUON_COEFFS), ns_steps=5, eps=1e-7)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_orthogonalize_cubic_coefficients_converge_to_polar_factor():
    g = np.asarray(_normal(7, (10, 6)), np.float64)
    tx = optlab.orthogonalize(ns_steps=40, ns_coeffs=(1.5, -0.5, 0.0))
    out, _ = _apply(tx, jnp.asarray(g, jnp.float32))
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(np.asarray(out), u @ vt, atol=1e-4)


def test_orthogonalize_other_ranks():
    g = {
        "w": _normal(0, (6, 4)),
        "b": _normal(1, (4,)),
        "s": jnp.array(2.0),
        "k": _normal(2, (3, 3, 2, 5)),
    }
    out, _ = _apply(optlab.orthogonalize(), g)  # passthrough
    for name in ("b", "s", "k"):
        chex.assert_trees_all_equal(out[name], g[name])
    out_r, _ = _apply(optlab.orthogonalize(other_ranks="reshape"), g)
    for name in ("b", "s"):
        chex.assert_trees_all_equal(out_r[name], g[name])
    as_matrix, _ = _apply(optlab.orthogonalize(), g["k"].reshape(18, 5))
    np.testing.assert_allclose(out_r["k"], as_matrix.reshape(3, 3, 2, 5), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_r["w"], out["w"])


def test_orthogonalize_zero_and_bf16():
    z = jnp.zeros((4, 6))
    out, _ = _apply(optlab.orthogonalize(), z)
    chex.assert_trees_all_equal(out, z)
    g = _normal(0, (16, 48), jnp.bfloat16)
    out, _ = _apply(optlab.orthogonalize(), g)
    assert out.dtype == jnp.bfloat16
    s = np.linalg.svd(np.asarray(out, np.float32), compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.4, (s.min(), s.max())


# ---------------------------------------------------------------------------
# sinkhorn_normalize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 9), (16, 8), (6, 6)])
def test_sinkhorn_rows_and_columns_normalized(shape):
    m, n = shape
    g = _normal(1, shape, scale=7.0)
    errors = []
    for num_iters in (1, 5, 30):
        out, _ = _apply(optlab.sinkhorn_normalize(num_iters=num_iters), g)
        cols = jnp.linalg.norm(out, axis=0)
        rows = jnp.linalg.norm(out, axis=1)
        np.testing.assert_allclose(cols, math.sqrt(m), rtol=1e-5)  # last step: columns exact
        errors.append(float(jnp.max(jnp.abs(rows / math.sqrt(n) - 1.0))))
    assert errors[0] > errors[1] > errors[2]  # rows converge with the iterations
    assert errors[1] < 5e-2 and errors[2] < 1e-4, errors
    # Sinkhorn only rescales rows and columns: signs and the zero pattern are kept.
    np.testing.assert_array_equal(jnp.sign(out), jnp.sign(g))


def test_sinkhorn_other_ranks_and_zero_rows():
    g = {"b": _normal(0, (5,), scale=3.0), "s": jnp.array(-0.2), "k": _normal(1, (2, 3, 4))}
    out, _ = _apply(optlab.sinkhorn_normalize(), g)
    # rank != 2: root-mean-square 1 (a scalar becomes its sign)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(out["b"] ** 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["s"], -1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(out["k"] ** 2)), 1.0, rtol=1e-5)
    out_r, _ = _apply(optlab.sinkhorn_normalize(other_ranks="reshape"), g)
    as_matrix, _ = _apply(optlab.sinkhorn_normalize(), g["k"].reshape(6, 4))
    np.testing.assert_allclose(out_r["k"], as_matrix.reshape(2, 3, 4), rtol=1e-6)
    w = _normal(2, (4, 5)).at[1].set(0.0)
    out_w, _ = _apply(optlab.sinkhorn_normalize(), w)
    chex.assert_tree_all_finite(out_w)
    np.testing.assert_array_equal(out_w[1], 0.0)


# ---------------------------------------------------------------------------
# scale_by_trust_ratio
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{}, dict(trust_coefficient=0.02), dict(min_norm=0.5, eps=1e-3), dict(eps=1e-6)]
)
def test_trust_ratio_matches_optax(kwargs):
    params = {**fixed_params(), "zero": jnp.zeros((2, 2))}
    g = {**jax.tree.map(lambda p: 0.1 * jnp.cos(p), fixed_params()), "zero": jnp.ones((2, 2))}
    g["b"] = jnp.zeros_like(g["b"])  # zero update norm
    out, _ = _apply(optlab.scale_by_trust_ratio(**kwargs), g, params)
    ref, _ = _apply(optax.scale_by_trust_ratio(**kwargs), g, params)
    # optlab's norms are overflow-safe (scaled before squaring): equal to optax's up to float32
    # rounding, and finite where optax's overflow.
    tree_allclose(out, ref, rtol=1e-6, atol=0)


def test_trust_ratio_update_norm_is_ratio_times_param_norm():
    params = {"w": _normal(0, (4, 3), scale=5.0), "b": _normal(1, (3,), scale=0.1)}
    g = {"w": _normal(2, (4, 3)), "b": _normal(3, (3,), scale=100.0)}
    tc = 0.3
    out, _ = _apply(optlab.scale_by_trust_ratio(trust_coefficient=tc), g, params)
    for name in params:
        np.testing.assert_allclose(
            jnp.linalg.norm(out[name]), tc * jnp.linalg.norm(params[name]), rtol=1e-5
        )
        cos = jnp.sum(out[name] * g[name]) / (jnp.linalg.norm(out[name]) * jnp.linalg.norm(g[name]))
        np.testing.assert_allclose(cos, 1.0, rtol=1e-5)  # direction kept


def test_trust_ratio_needs_params():
    tx = optlab.scale_by_trust_ratio()
    with pytest.raises(ValueError, match="params"):
        tx.update(fixed_params(), tx.init(fixed_params()), None)


# ---------------------------------------------------------------------------
# radial_projection (AdamP / SGDP)
# ---------------------------------------------------------------------------


def _reference_projection(p, grad, perturb, delta, wd_ratio, eps):
    """The official AdamP `_projection`, in NumPy, PyTorch layout (out, in, ...)."""
    expand = [-1] + [1] * (p.ndim - 1)
    views = [lambda x: x.reshape(x.shape[0], -1), lambda x: x.reshape(1, -1)]
    for view in views:
        gv, pv = view(grad), view(p)
        gn = np.maximum(np.linalg.norm(gv, axis=1), eps)
        pn = np.maximum(np.linalg.norm(pv, axis=1), eps)
        cosine = np.abs(np.sum(gv * pv, axis=1)) / (gn * pn)
        if cosine.max() < delta / math.sqrt(pv.shape[1]):
            if pv.shape[0] == 1:
                p_n = p / (np.linalg.norm(pv, axis=1).reshape([1] * p.ndim) + eps)
                return perturb - p_n * np.sum(p_n * perturb), wd_ratio
            p_n = p / (np.linalg.norm(pv, axis=1).reshape(expand) + eps)
            return perturb - p_n * view(p_n * perturb).sum(axis=1).reshape(expand), wd_ratio
    return perturb, 1.0


def _reference_adamp(params, grads_fn, steps, lr, b1, b2, eps, wd, delta, wd_ratio):
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    for t in range(1, steps + 1):
        grads = {k: np.asarray(x, np.float64) for k, x in grads_fn(params).items()}
        for k, p in params.items():
            g = grads[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            denom = np.sqrt(v[k]) / math.sqrt(1 - b2**t) + eps
            perturb = m[k] / denom
            ratio = 1.0
            if p.ndim > 1:
                perturb, ratio = _reference_projection(p, g, perturb, delta, wd_ratio, eps)
            p = p * (1 - lr * wd * ratio)
            params[k] = p - lr / (1 - b1**t) * perturb
    return params


def _reference_sgdp(params, grads_fn, steps, lr, momentum, wd, delta, wd_ratio, eps):
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in params.items()}
    for _ in range(steps):
        grads = {k: np.asarray(x, np.float64) for k, x in grads_fn(params).items()}
        for k, p in params.items():
            g = grads[k]
            buf[k] = momentum * buf[k] + g
            d_p, ratio = buf[k], 1.0
            if p.ndim > 1:
                d_p, ratio = _reference_projection(p, g, d_p, delta, wd_ratio, eps)
            p = p * (1 - lr * wd * ratio / (1 - momentum))
            params[k] = p - lr * d_p
    return params


def _scale_invariant_loss(params):
    """Row "w" (out=3, in=4) is scale-invariant per output row: its gradient is
    orthogonal to each row; "v" is a plain quadratic; "u" is invariant only as a whole."""
    x = jnp.linspace(-1.0, 1.0, 4)
    w = params["w"] / jnp.linalg.norm(params["w"], axis=1, keepdims=True)
    u = params["u"] / jnp.linalg.norm(params["u"])
    target = jnp.array([0.5, -0.2, 0.1])
    return (
        jnp.sum((w @ x - target) ** 2)
        + jnp.sum((params["v"] - 0.3) ** 2)
        + jnp.sum((u @ x[:3]) ** 2)
        + jnp.sum((params["b"] - 1.0) ** 2)
    )


def _radial_params():
    return {
        "w": _normal(0, (3, 4)) + 1.0,
        "v": _normal(1, (2, 5)),
        "u": _normal(2, (2, 3)),
        "b": _normal(3, (3,)),
    }


def _run_radial(tx, params, steps):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(_scale_invariant_loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


def test_radial_projection_adamp_matches_official_reference(x64):
    lr, wd, delta, wd_ratio = 0.05, 0.1, 0.1, 0.1
    tx = optax.chain(
        optlab.radial_projection(
            optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
            delta=delta,
            wd_ratio=wd_ratio,
            weight_decay=wd,
            channel_axis=0,
        ),
        optax.scale_by_learning_rate(lr),
    )
    params = _radial_params()
    got = _run_radial(tx, params, steps=6)
    grad_fn = jax.jit(jax.grad(_scale_invariant_loss))
    ref = _reference_adamp(
        params,
        lambda p: grad_fn(jax.tree.map(jnp.asarray, p)),
        6,
        lr,
        0.9,
        0.999,
        1e-8,
        wd,
        delta,
        wd_ratio,
    )
    tree_allclose(got, ref, rtol=1e-9, atol=1e-10)


def test_radial_projection_sgdp_matches_official_reference(x64):
    lr, wd, momentum, delta, wd_ratio = 0.05, 0.1, 0.9, 0.1, 0.1
    tx = optax.chain(
        optlab.radial_projection(
            optax.trace(momentum),
            delta=delta,
            wd_ratio=wd_ratio,
            weight_decay=wd / (1 - momentum),
            channel_axis=0,
        ),
        optax.scale_by_learning_rate(lr),
    )
    params = _radial_params()
    got = _run_radial(tx, params, steps=6)
    grad_fn = jax.jit(jax.grad(_scale_invariant_loss))
    ref = _reference_sgdp(
        params,
        lambda p: grad_fn(jax.tree.map(jnp.asarray, p)),
        6,
        lr,
        momentum,
        wd,
        delta,
        wd_ratio,
        1e-8,
    )
    tree_allclose(got, ref, rtol=1e-9, atol=1e-10)


def test_radial_projection_orthogonal_when_cosine_small_unchanged_when_large():
    wd = 0.05
    inner = optax.scale_by_adam()
    tx = optlab.radial_projection(inner, weight_decay=wd)  # Flax layout: channels last
    w = _normal(0, (5, 3)) + 2.0
    noise = _normal(1, (5, 3))
    # gradient orthogonal to each output column of w: channel view projects
    g_small = noise - w * (
        jnp.sum(noise * w, axis=0, keepdims=True) / jnp.sum(w * w, axis=0, keepdims=True)
    )
    out, _ = _apply(tx, {"w": g_small}, {"w": w})
    d, _ = _apply(inner, {"w": g_small}, {"w": w})
    radial = out["w"] - wd * 0.1 * w  # wd scaled by wd_ratio=0.1
    np.testing.assert_allclose(jnp.sum(radial * w, axis=0), 0.0, atol=1e-5)  # per channel
    assert not np.allclose(d["w"], radial, atol=1e-3)  # it did change
    # gradient aligned with w: nothing removed, full weight decay
    g_large = w + 0.1 * noise
    out, _ = _apply(tx, {"w": g_large}, {"w": w})
    d, _ = _apply(inner, {"w": g_large}, {"w": w})
    np.testing.assert_allclose(out["w"], d["w"] + wd * w, rtol=1e-6, atol=1e-6)


def test_radial_projection_layer_view():
    # Column 0 aligned with w, column 1 anti-aligned: the channel view sees |cos| = 1 but
    # the layer view sees cos = 0, so the projection is layer-wise.
    w = jnp.array([[1.0, 2.0], [2.0, -1.0], [0.0, 0.0]])
    g = w * jnp.array([[1.0, -1.0]])
    tx = optlab.radial_projection(optax.identity(), weight_decay=0.0)
    out, _ = _apply(tx, {"w": g}, {"w": w})
    np.testing.assert_allclose(jnp.sum(out["w"] * w), 0.0, atol=1e-6)  # layer-orthogonal
    w_hat = w / jnp.linalg.norm(w)
    np.testing.assert_allclose(out["w"], g - w_hat * jnp.sum(w_hat * g), atol=1e-6)


def test_radial_projection_flax_layout_is_transposed_pytorch_layout():
    params = {"w": _normal(0, (4, 6)) + 1.0, "b": _normal(1, (6,))}
    g = {"w": _normal(2, (4, 6)), "b": _normal(3, (6,))}
    # make every output column look scale-invariant: project each column's gradient
    w = params["w"]
    g["w"] = g["w"] - w * jnp.sum(g["w"] * w, 0, keepdims=True) / jnp.sum(w**2, 0, keepdims=True)
    flax_tx = optlab.radial_projection(optax.scale_by_adam(), weight_decay=0.1)
    torch_tx = optlab.radial_projection(optax.scale_by_adam(), weight_decay=0.1, channel_axis=0)
    t = lambda tree: {"w": tree["w"].T, "b": tree["b"]}  # noqa: E731
    out, _ = _apply(flax_tx, g, params)
    out_t, _ = _apply(torch_tx, t(g), t(params))
    tree_allclose(out, t(out_t), rtol=1e-6, atol=1e-6)


def test_radial_projection_needs_params_and_transform():
    tx = optlab.radial_projection(optax.scale_by_adam())
    with pytest.raises(ValueError, match="params"):
        tx.update(fixed_params(), tx.init(fixed_params()), None)
    with pytest.raises(TypeError, match="radial_projection.*inner"):
        optlab.radial_projection(0.1)


def test_radial_projection_keeps_inner_state():
    inner = optax.scale_by_adam()
    tx = optlab.radial_projection(inner)
    params = fixed_params()
    state = tx.init(params)
    assert isinstance(state, optlab.RadialProjectionState)
    _, state = tx.update(fixed_params(), state, params)
    _, inner_state = inner.update(fixed_params(), inner.init(params), params)
    tree_allclose(state.inner_state, inner_state)


# ---------------------------------------------------------------------------
# centralize
# ---------------------------------------------------------------------------


def test_centralize_matches_optax_with_channel_axis_0():
    g = {
        "w": _normal(0, (4, 3)),
        "k": _normal(1, (5, 2, 3, 3)),
        "b": _normal(2, (3,)),
        "s": jnp.array(1.5),
    }
    out, _ = _apply(optlab.centralize(channel_axis=0), g)
    ref, _ = _apply(optax.centralize(), g)
    tree_allclose(out, ref, rtol=0, atol=0)
    # default (Flax, channels last) equals optax on the transposed layout
    out_flax, _ = _apply(optlab.centralize(), {"w": g["w"].T})
    np.testing.assert_array_equal(out_flax["w"], ref["w"].T)


def test_centralize_per_output_channel_mean_zero():
    g = {"k": _normal(0, (3, 3, 4, 8), scale=5.0) + 3.0, "b": _normal(1, (8,)) + 1.0}
    out, _ = _apply(optlab.centralize(), g)
    np.testing.assert_allclose(jnp.mean(out["k"], axis=(0, 1, 2)), 0.0, atol=1e-5)
    chex.assert_trees_all_equal(out["b"], g["b"])  # rank 1 untouched
    # only a per-channel constant was removed
    diff = g["k"] - out["k"]
    np.testing.assert_allclose(diff, jnp.broadcast_to(diff[:1, :1, :1], diff.shape), atol=1e-5)


# ---------------------------------------------------------------------------
# decoupled weight decay (optax's, in float32) / cautious_weight_decay
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(weight_decay=0.1),
        dict(weight_decay=0.0),
        dict(weight_decay=optax.linear_schedule(0.1, 0.0, 3)),
        dict(weight_decay=0.1, mask={"w": True, "b": False, "s": True}),
        dict(weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    ],
)
def test_named_optimizers_weight_decay_stage_matches_optax(kwargs):
    """The decay stage of the named optimizers (the unchecked builder) is optax's."""
    params = fixed_params()
    tx = _weight_decay(kwargs["weight_decay"], kwargs.get("mask"), cautious=False)
    ref_tx = optax.add_decayed_weights(**kwargs)
    state, ref_state = tx.init(params), ref_tx.init(params)
    for i in range(3):
        g = jax.tree.map(lambda p: jnp.sin(p + i), params)
        out, state = tx.update(g, state, params, some_flax_kwarg=1)
        ref, ref_state = ref_tx.update(g, ref_state, params)
        tree_allclose(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("in_float32", [False, True], ids=["builder", "in_float32"])
def test_weight_decay_bf16_schedule_keeps_dtype(in_float32):
    params = fixed_params(dtype=jnp.bfloat16)
    schedule = optax.linear_schedule(0.1, 0.0, 3)
    tx = (
        optlab.in_float32(optax.add_decayed_weights(schedule))
        if in_float32
        else _weight_decay(schedule, None, cautious=False)
    )
    out, _ = tx.update(params, tx.init(params), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, params)


def test_cautious_weight_decay_only_where_signs_agree():
    params = {"w": _normal(0, (6, 5)), "b": _normal(1, (5,))}
    u = {"w": _normal(2, (6, 5)), "b": _normal(3, (5,))}
    wd = 0.3
    out, _ = _apply(optlab.cautious_weight_decay(wd), u, params)
    for k in params:
        agree = jnp.sign(u[k]) == jnp.sign(params[k])
        assert 0 < int(agree.sum()) < agree.size  # both cases occur
        np.testing.assert_allclose(out[k], jnp.where(agree, u[k] + wd * params[k], u[k]), rtol=1e-6)
    # all signs agree: plain decoupled decay; all disagree: no decay
    same = jax.tree.map(lambda p: jnp.abs(p) * jnp.sign(p) * 2.0, params)
    out, _ = _apply(optlab.cautious_weight_decay(wd), same, params)
    ref, _ = _apply(optax.add_decayed_weights(wd), same, params)
    tree_allclose(out, ref)
    opposite = jax.tree.map(lambda x: -x, same)
    out, _ = _apply(optlab.cautious_weight_decay(wd), opposite, params)
    tree_allclose(out, opposite, rtol=0, atol=0)


def test_cautious_weight_decay_schedule_and_mask():
    params = fixed_params()
    sched = optax.linear_schedule(0.2, 0.0, 2)
    tx = optlab.cautious_weight_decay(sched, mask={"w": True, "b": False, "s": True})
    state = tx.init(params)
    u = params  # signs agree everywhere
    out, state = tx.update(u, state, params)
    tree_allclose(out, {"w": 1.2 * params["w"], "b": params["b"], "s": 1.2 * params["s"]})
    out, state = tx.update(u, state, params)
    tree_allclose(out, {"w": 1.1 * params["w"], "b": params["b"], "s": 1.1 * params["s"]})


def test_weight_decay_needs_params():
    tx = optlab.cautious_weight_decay(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(fixed_params(), tx.init(fixed_params()), None)


# ---------------------------------------------------------------------------
# Convergence on small problems
# ---------------------------------------------------------------------------


def _matrix_params():
    return {"w": _normal(0, (6, 4)), "v": _normal(1, (3, 5)), "b": jnp.zeros((4,))}


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optax.chain(
            optlab.normalize_by_global_norm(),
            optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.3, 200)),
        ),
        lambda: optax.chain(
            optlab.normalize_by_leaf_norm(),
            optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.3, 200)),
        ),
        lambda: optax.chain(
            optax.trace(0.9),
            optlab.scale_by_sign(),
            optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.05, 200)),
        ),
        lambda: optax.chain(
            optax.trace(0.9, nesterov=True),
            optlab.orthogonalize(other_ranks="reshape"),
            optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.1, 200)),
        ),
        lambda: optax.chain(
            optlab.sinkhorn_normalize(),
            optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.05, 200)),
        ),
        lambda: optax.chain(
            optax.scale_by_adam(), optlab.scale_by_trust_ratio(), optax.scale_by_learning_rate(0.02)
        ),
        lambda: optax.chain(
            optlab.radial_projection(optax.scale_by_adam(), weight_decay=1e-4),
            optax.scale_by_learning_rate(0.05),
        ),
        lambda: optax.chain(
            optlab.radial_projection(optax.trace(0.9), weight_decay=1e-4),
            optax.scale_by_learning_rate(0.02),
        ),
        lambda: optax.chain(
            optax.scale_by_adam(),
            optax.add_decayed_weights(1e-4),
            optax.scale_by_learning_rate(0.05),
        ),
        lambda: optax.chain(
            optax.scale_by_adam(),
            optlab.cautious_weight_decay(1e-2),
            optax.scale_by_learning_rate(0.05),
        ),
    ],
    ids=[
        "global_norm",
        "leaf_norm",
        "signum",
        "muon",
        "sinkgd",
        "lamb",
        "adamp",
        "sgdp",
        "adamw",
        "adam_cwd",
    ],
)
def test_converges_on_parabola(make_tx):
    params = _matrix_params()
    _, _, losses = run_optimizer(make_tx(), parabola, params, steps=200)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.02 * losses[0], (losses[0], losses[-1])


def test_centralized_sgd_converges_to_the_constrained_minimum():
    # GC with plain SGD keeps each output column's mean fixed (a hyperplane constraint), so
    # on the parabola (minimum at 1) it converges to the projection of 1 on that hyperplane:
    # every column equal to its initial mean. Rank-1 leaves are unconstrained.
    params = _matrix_params()
    tx = optax.chain(optlab.centralize(), optax.scale_by_learning_rate(0.1))
    final, _, losses = run_optimizer(tx, parabola, params, steps=100)
    for k in ("w", "v"):
        col_mean = jnp.mean(params[k], axis=0, keepdims=True)
        np.testing.assert_allclose(jnp.mean(final[k], axis=0, keepdims=True), col_mean, atol=1e-5)
        np.testing.assert_allclose(final[k], jnp.broadcast_to(col_mean, params[k].shape), atol=1e-4)
    np.testing.assert_allclose(final["b"], 1.0, atol=1e-4)
    assert np.all(np.diff(losses) <= 1e-5)  # monotone up to float32 rounding near 23


# ---------------------------------------------------------------------------
# Bad hyperparameters
# ---------------------------------------------------------------------------


_ADAM = optax.scale_by_adam()

BAD_HYPERPARAMETERS = [
    # (name, positional args, keyword args, error, message pattern)
    ("normalize_by_global_norm", (), dict(eps=-1.0), ValueError, "eps.*-1.0"),
    ("normalize_by_leaf_norm", (), dict(eps=float("nan")), ValueError, "eps.*nan"),
    ("orthogonalize", (), dict(ns_steps=0), ValueError, "ns_steps.*0"),
    ("orthogonalize", (), dict(ns_steps=2.0), TypeError, "ns_steps.*2.0"),
    ("orthogonalize", (), dict(ns_coeffs=(1.0, 2.0)), ValueError, "ns_coeffs"),
    ("orthogonalize", (), dict(ns_coeffs=(1.0, 2.0, float("inf"))), ValueError, r"ns_coeffs\[2\]"),
    ("orthogonalize", (), dict(eps=-1e-7), ValueError, "eps"),
    ("orthogonalize", (), dict(other_ranks="flatten"), ValueError, "other_ranks.*flatten"),
    ("sinkhorn_normalize", (), dict(num_iters=-1), ValueError, "num_iters.*-1"),
    ("sinkhorn_normalize", (), dict(eps=-1.0), ValueError, "eps"),
    ("sinkhorn_normalize", (), dict(other_ranks="none"), ValueError, "other_ranks.*none"),
    ("scale_by_trust_ratio", (), dict(min_norm=-1.0), ValueError, "min_norm"),
    ("scale_by_trust_ratio", (), dict(trust_coefficient=-0.1), ValueError, "coefficient.*-0.1"),
    ("scale_by_trust_ratio", (), dict(eps=-1.0), ValueError, "eps"),
    ("radial_projection", (_ADAM,), dict(delta=-0.1), ValueError, "delta.*-0.1"),
    ("radial_projection", (_ADAM,), dict(wd_ratio=-1.0), ValueError, "wd_ratio"),
    ("radial_projection", (_ADAM,), dict(weight_decay=-1e-2), ValueError, "weight_decay"),
    ("radial_projection", (_ADAM,), dict(eps=-1.0), ValueError, "eps"),
    ("radial_projection", (_ADAM,), dict(channel_axis=1.0), TypeError, "channel_axis"),
    ("radial_projection", (0.1,), {}, TypeError, "inner"),
    ("centralize", (), dict(channel_axis="last"), TypeError, "channel_axis.*last"),
    ("cautious_weight_decay", (float("inf"),), {}, ValueError, "weight_decay.*inf"),
]


@pytest.mark.parametrize("name,args,kwargs,error,match", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise(name, args, kwargs, error, match):
    with pytest.raises(error, match=f"optlab.{name}`.*{match}"):
        getattr(optlab, name)(*args, **kwargs)


@pytest.mark.parametrize(
    "tx",
    [optlab.centralize(channel_axis=2), optlab.radial_projection(optax.sgd(0.1), channel_axis=-3)],
)
def test_channel_axis_out_of_range_raises(tx):
    params = {"w": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match="channel_axis.*rank 2"):
        tx.update(params, tx.init(params), params)


@pytest.mark.parametrize(
    "tx",
    [
        optlab.normalize_by_leaf_norm(),
        optlab.orthogonalize(),
        optlab.scale_by_trust_ratio(),
        optlab.cautious_weight_decay(0.1),
        optlab.scale_by_sign(),
    ],
    ids=["leaf_norm", "orthogonalize", "trust_ratio", "cautious_weight_decay", "sign"],
)
def test_integer_params_raise(tx):
    with pytest.raises(TypeError, match="floating point"):
        tx.init({"w": jnp.ones((2, 2), jnp.int32)})


@pytest.mark.parametrize(
    "tx",
    [
        optlab.orthogonalize(),
        optlab.orthogonalize(other_ranks="reshape"),
        optlab.sinkhorn_normalize(other_ranks="reshape"),
    ],
    ids=["orthogonalize", "orthogonalize-reshape", "sinkhorn-reshape"],
)
def test_explicit_sharding_traces_and_keeps_shardings(tx):
    # Sharding in types (AxisType.Explicit) rejects matmuls contracting a sharded axis and
    # reshapes merging sharded axes; the matrices are gathered per leaf and resharded back.
    # A 1 x 1 mesh is enough to exercise the type rules (tests/test_sharding.py uses 8 devices).
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh(
        (1, 1), ("x", "y"), axis_types=(AxisType.Explicit,) * 2, devices=jax.devices()[:1]
    )
    specs = {"w": P("x", "y"), "k": P(None, "y", "x")}
    g = {
        "w": jax.random.normal(jax.random.key(0), (4, 3)),
        "k": jax.random.normal(jax.random.key(1), (2, 4, 3)),
    }
    want, _ = jax.jit(tx.update)(g, tx.init(g))
    with jax.sharding.set_mesh(mesh):
        sharded = {n: jax.device_put(x, NamedSharding(mesh, specs[n])) for n, x in g.items()}
        got, _ = jax.jit(tx.update)(sharded, tx.init(sharded))
        for name, spec in specs.items():
            assert jax.typeof(got[name]).sharding.spec == spec
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
