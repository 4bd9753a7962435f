"""Issue 12 normalization: Scion's LMOs and steps, SWAN, weight-norm projections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from helpers import run_optimizer

_CUBIC = (1.5, -0.5, 0.0)  # classical Newton-Schulz: singular values never exceed 1


def _one(tx, g, params=None):
    d, _ = tx.update(g, tx.init(g if params is None else params), params)
    return d


# ---------------------------------------------------------------------------
# LMO directions
# ---------------------------------------------------------------------------


def test_lmo_norms_have_their_unit_balls():
    g = jax.random.normal(jax.random.key(0), (6, 4))  # Flax (in, out): fan_in 6, fan_out 4
    sign = _one(optlab.scale_by_lmo("sign"), g)
    np.testing.assert_allclose(sign, np.sign(g) / 6)
    col = _one(optlab.scale_by_lmo("col"), g)
    np.testing.assert_allclose(np.linalg.norm(col, axis=0), 1 / np.sqrt(6), rtol=1e-5)
    row = _one(optlab.scale_by_lmo("row"), g)
    np.testing.assert_allclose(np.sqrt(np.mean(row**2, axis=1)), 1.0, rtol=1e-5)
    rms = _one(optlab.scale_by_lmo("rms"), jnp.array([3.0, -4.0, 0.0]))
    np.testing.assert_allclose(np.sqrt(np.mean(rms**2)), 1.0, rtol=1e-5)
    spec = _one(optlab.scale_by_lmo("spectral", ns_coeffs=_CUBIC, ns_steps=40), g)
    s = np.linalg.svd(spec / np.sqrt(4 / 6), compute_uv=False)
    np.testing.assert_allclose(s, 1.0, atol=1e-4)
    # Every LMO direction is a descent direction: <g, s> > 0.
    for d in (sign, col, row, spec):
        assert float(jnp.vdot(g, d)) > 0
    # "auto": spectral for matrices, RMS for vectors; a tree or a function picks per leaf.
    tree = {"w": g, "b": jnp.array([1.0, 2.0])}
    auto = _one(optlab.scale_by_lmo(ns_coeffs=_CUBIC, ns_steps=40), tree)
    np.testing.assert_allclose(auto["w"], spec, atol=1e-5)
    per = _one(optlab.scale_by_lmo(lambda u: {"w": "sign", "b": "rms"}), tree)
    np.testing.assert_allclose(per["w"], sign)


def test_lmo_bad_norm_names():
    with pytest.raises(ValueError, match=r"optlab.scale_by_lmo.*norm"):
        optlab.scale_by_lmo("frobenius")
    with pytest.raises(ValueError, match=r"optlab.scale_by_lmo.*'sign'.*rank >= 2"):
        _one(optlab.scale_by_lmo("sign"), jnp.ones(3))
    with pytest.raises(ValueError, match=r"optlab.scion.*norm"):
        optlab.scion(0.1, norm="nuclear")
    with pytest.raises(ValueError, match=r"optlab.scion.*learning_rate.*\[0, 1\]"):
        optlab.scion(1.5)


# ---------------------------------------------------------------------------
# Scion: the constrained iterates stay in the norm ball
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["sign", "spectral"])
def test_scion_constrained_iterates_stay_in_the_ball(norm):
    rho, shape = 3.0, (5, 3)
    if norm == "sign":  # ||x||_inf <= rho / fan_in
        radius = lambda x: float(jnp.max(jnp.abs(x))) * shape[0] / rho
    else:  # spectral norm <= rho * sqrt(fan_out / fan_in)
        radius = lambda x: float(jnp.linalg.norm(x, 2)) / (rho * np.sqrt(3 / 5))
    tx = optlab.scion(0.3, momentum=0.5, scale=rho, norm=norm, ns_steps=30, ns_coeffs=_CUBIC)
    x = {"w": jnp.zeros(shape)}
    state = tx.init(x)
    step = jax.jit(tx.update)
    for k in range(40):  # adversarial-ish random gradients keep pushing outwards
        g = {"w": 10.0 * jax.random.normal(jax.random.key(k), shape)}
        u, state = step(g, state, x)
        x = optax.apply_updates(x, u)
        assert radius(x["w"]) <= 1.0 + 1e-4, (k, radius(x["w"]))
    assert radius(x["w"]) > 0.5  # it does move out towards the boundary


def test_scion_unconstrained_and_constrained_differ_by_the_decay_term():
    x = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]])}
    g = {"w": jnp.array([[0.3, 0.2], [-1.0, 0.1]])}
    kw = {"momentum": 0.0, "scale": 2.0, "norm": "sign"}
    uc = _one(optlab.scion(0.1, constrained=False, **kw), g, x)
    c = _one(optlab.scion(0.1, constrained=True, **kw), g, x)
    np.testing.assert_allclose(uc["w"], -0.1 * 2.0 * np.sign(g["w"]) / 2)
    np.testing.assert_allclose(c["w"], uc["w"] - 0.1 * x["w"], rtol=1e-6)


def test_scion_converges_inside_the_ball():
    target = {"w": jnp.full((4, 4), 0.1), "b": jnp.full((4,), -0.2)}
    loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
    params = {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}
    lr = optax.linear_schedule(0.2, 0.0, 300)
    tx = optlab.scion(lr, momentum=0.5, scale=1.0, ns_coeffs=_CUBIC, ns_steps=20)
    _, _, losses = run_optimizer(tx, loss, params, 300)
    assert losses[-1] < 1e-3 * losses[0]


# ---------------------------------------------------------------------------
# SWAN
# ---------------------------------------------------------------------------


def test_swan_standardizes_then_whitens():
    g = jax.random.normal(jax.random.key(1), (8, 3)) * jnp.array([[1.0, 10.0, 0.1]]) + 5.0
    d = _one(optlab.scale_by_swan(rescale=False, ns_steps=40), g)
    np.testing.assert_allclose(np.linalg.svd(d, compute_uv=False), 1.0, atol=1e-4)
    # It equals the polar factor of the column-standardized gradient.
    gs = (g - g.mean(0, keepdims=True)) / g.std(0, keepdims=True)
    u, _, vt = np.linalg.svd(np.asarray(gs), full_matrices=False)
    np.testing.assert_allclose(d, u @ vt, atol=1e-4)
    # Shifting or rescaling a column of the gradient changes nothing (standardization).
    d2 = _one(optlab.scale_by_swan(rescale=False, ns_steps=40), g * jnp.array([[3.0, 1, 1]]) - 7)
    np.testing.assert_allclose(d2, d, atol=1e-4)
    # rescale=True restores the Frobenius norm of the standardized gradient; vectors pass.
    out = _one(optlab.scale_by_swan(ns_steps=40), {"w": g, "b": jnp.array([1.0, 2.0])})
    assert float(jnp.linalg.norm(out["w"])) == pytest.approx(float(jnp.linalg.norm(gs)), 1e-4)
    np.testing.assert_array_equal(out["b"], [1.0, 2.0])


def test_swan_converges():
    a = jax.random.normal(jax.random.key(2), (16, 6))
    w_true = jax.random.normal(jax.random.key(3), (6, 4))
    # GradNorm removes each unit's mean over its inputs, so SWAN never changes the sum of
    # a unit's incoming weights: take a target whose column sums are those of w_0 = 0.
    w_true = w_true - w_true.mean(0, keepdims=True)
    loss = lambda p: jnp.mean((a @ p["w"] + p["b"][None, :] - a @ w_true) ** 2)
    params = {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}
    tx = optlab.swan(optax.cosine_decay_schedule(0.05, 300))
    _, _, losses = run_optimizer(tx, loss, params, 300)
    assert losses[-1] < 1e-2 * losses[0]


# ---------------------------------------------------------------------------
# Weight-norm projections
# ---------------------------------------------------------------------------


def test_fixed_norm_projection_keeps_the_recorded_norm():
    params = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "b": jnp.array([0.5, -0.5])}
    norms = jax.tree.map(jnp.linalg.norm, params)
    tx = optax.chain(optax.sgd(0.3), optlab.project_to_fixed_norm(start_step=2))
    state = tx.init(params)
    for k in range(6):
        key = jax.random.key(k)
        g = jax.tree.map(lambda x, key=key: jax.random.normal(key, x.shape), params)
        if k == 2:
            norms = jax.tree.map(jnp.linalg.norm, params)  # recorded at the third update
        u, state = tx.update(g, state, params)
        if k < 2:  # free warm-up: the plain SGD step
            tree = jax.tree.map(lambda x: -0.3 * x, g)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), u, tree)
        params = optax.apply_updates(params, u)
        if k >= 2:  # projected leaf norm == target
            jax.tree.map(
                lambda p, n: np.testing.assert_allclose(jnp.linalg.norm(p), n, rtol=1e-5),
                params,
                norms,
            )
    tx = optlab.project_to_fixed_norm(target_norm=2.0)
    u = _one(tx, params, params)
    jax.tree.map(
        lambda p, v: np.testing.assert_allclose(jnp.linalg.norm(p + v), 2.0, rtol=1e-5), params, u
    )


def test_max_norm_projection_clips_units_only_above_the_radius():
    w = jnp.array([[3.0, 0.1, 0.0], [4.0, 0.1, 2.0]])  # column norms 5, 0.14, 2
    u = _one(optlab.project_to_max_norm(1.5), jnp.zeros_like(w), w)
    np.testing.assert_allclose(np.linalg.norm(w + u, axis=0), [1.5, np.sqrt(0.02), 1.5], rtol=1e-5)
    np.testing.assert_allclose((w + u)[:, 1], w[:, 1])  # below the radius: unchanged
    u = _one(optlab.project_to_max_norm(1.5, per_unit=False), jnp.zeros_like(w), w)
    assert float(jnp.linalg.norm(w + u)) == pytest.approx(1.5, rel=1e-5)


def test_norm_penalty_is_zero_at_the_target_and_pulls_the_norm_to_it():
    w = jnp.array([0.6, 0.8])  # norm 1
    np.testing.assert_allclose(
        _one(optlab.add_norm_penalty(0.5, 1.0), jnp.zeros(2), w), 0.0, atol=1e-7
    )
    tx = optax.chain(optlab.add_norm_penalty(1.0, target_norm=2.0), optax.sgd(0.2))
    for start in (jnp.array([0.03, -0.04]), jnp.array([6.0, 8.0])):
        p, _, _ = run_optimizer(tx, lambda x: 0.0 * jnp.sum(x), start, 60)
        assert float(jnp.linalg.norm(p)) == pytest.approx(2.0, rel=1e-4)
        np.testing.assert_allclose(
            p / jnp.linalg.norm(p), start / jnp.linalg.norm(start), rtol=1e-5
        )  # radial only
