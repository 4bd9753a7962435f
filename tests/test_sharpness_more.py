"""Issue 12 transformed-point methods on the SAM driver: AWP, finite-difference gradient-norm
regularization, extragradient (defining properties, base equality, convergence, bad input)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_sharpness import GRAD, loss_fn, recorded, run

import optlab
from helpers import fixed_params, tree_allclose


def _one_step(tx, params):
    """One eager step with a recording grad_fn; returns (updates, points)."""
    grad_fn, points = recorded(GRAD)
    updates, _ = tx.update(GRAD(params), tx.init(params), params, grad_fn=grad_fn)
    return updates, points


@pytest.mark.parametrize(
    "make",
    [
        lambda base: optlab.awp_sam(base, gamma=0.0),
        lambda base: optlab.gradnorm_sam(base, gamma=0.0, eps=0.01),
        lambda base: optlab.extragradient(base, learning_rate=0.0),
    ],
    ids=["awp_sam", "gradnorm_sam", "extragradient"],
)
def test_zero_strength_equals_base_exactly(make, xla_optimized):
    params = fixed_params()
    got = run(make(optax.adam(1e-2)), params, steps=3)
    want = run(optax.adam(1e-2), params, steps=3)
    tree_allclose(got, want, rtol=0, atol=0)


def test_awp_radius_is_layerwise_relative_to_weight_norm():
    params = fixed_params()
    gamma = 0.1
    _, points = _one_step(optlab.awp_sam(optax.identity(), gamma=gamma), params)
    g = GRAD(params)
    for k in params:
        e = np.asarray(points[0][k] - params[k])
        w_norm = np.linalg.norm(np.asarray(params[k]))
        np.testing.assert_allclose(np.linalg.norm(e), gamma * w_norm, rtol=1e-5)
        # along the layer's own gradient
        cos = np.vdot(e, np.asarray(g[k])) / (np.linalg.norm(e) * np.linalg.norm(g[k]))
        np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def test_awp_is_invariant_to_scaling_a_layer():
    # The relative radius makes the perturbation of a layer scale with its weights.
    params = fixed_params()
    scaled = dict(params, w=3.0 * params["w"])
    _, p1 = _one_step(optlab.awp_sam(optax.identity(), gamma=0.1), params)
    _, p2 = _one_step(optlab.awp_sam(optax.identity(), gamma=0.1), scaled)
    r1 = np.linalg.norm(p1[0]["w"] - params["w"]) / np.linalg.norm(params["w"])
    r2 = np.linalg.norm(p2[0]["w"] - scaled["w"]) / np.linalg.norm(scaled["w"])
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def test_gradnorm_is_the_finite_difference_formula_and_approaches_g_plus_gamma_hg():
    params = fixed_params()
    gamma, eps = 0.3, 1e-3
    updates, points = _one_step(optlab.gradnorm_sam(optax.identity(), gamma=gamma, eps=eps), params)
    g = GRAD(params)
    want_point = jax.tree.map(lambda w, gi: w + eps * gi, params, g)
    tree_allclose(points[0], want_point, rtol=1e-6, atol=1e-7)
    gp = GRAD(want_point)
    want = jax.tree.map(lambda a, b: a + gamma / eps * (b - a), g, gp)
    tree_allclose(updates, want, rtol=1e-4, atol=2e-5)  # float32 cancellation at gamma/eps=300
    # gradient of L + gamma/2 ||grad L||^2 (exact H g), to O(eps)
    exact = jax.grad(lambda p: loss_fn(p) + 0.5 * gamma * optax.tree.norm(GRAD(p), squared=True))
    tree_allclose(updates, exact(params), rtol=2e-2, atol=2e-3)


def test_gradnorm_gamma_equal_eps_is_unnormalized_sam():
    params = fixed_params()
    got = run(optlab.gradnorm_sam(optax.sgd(0.1), gamma=0.05, eps=0.05), params, steps=3)
    want = run(optlab.unnormalized_sam(optax.sgd(0.1), rho=0.05), params, steps=3)
    tree_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_extragradient_looks_ahead_and_solves_a_bilinear_game():
    params = fixed_params()
    _, points = _one_step(optlab.extragradient(optax.identity(), learning_rate=0.2), params)
    want_point = jax.tree.map(lambda w, gi: w - 0.2 * gi, params, GRAD(params))
    tree_allclose(points[0], want_point, rtol=1e-6, atol=1e-7)

    # min_x max_y x*y: simultaneous gradient descent-ascent spirals out, extragradient in.
    def field(p):  # the game's vector field (descent for x, ascent for y)
        return {"x": p["y"], "y": -p["x"]}

    def play(tx, steps=200):
        p = {"x": jnp.array(1.0), "y": jnp.array(1.0)}
        state = tx.init(p)
        for _ in range(steps):
            u, state = tx.update(field(p), state, p, grad_fn=field)
            p = optax.apply_updates(p, u)
        return float(jnp.hypot(p["x"], p["y"]))

    assert play(optlab.extragradient(optax.sgd(0.2), learning_rate=0.2)) < 0.1
    assert play(optlab.extragradient(optax.sgd(0.2), learning_rate=0.0)) > 2.0


@pytest.mark.parametrize("make", ["awp_sam", "gradnorm_sam", "extragradient"], ids=lambda n: n)
def test_converges_on_a_small_problem(make):
    kw = {"awp_sam": dict(gamma=0.05), "gradnorm_sam": dict(gamma=0.05)}.get(make, {})
    tx = getattr(optlab, make)(optax.sgd(0.1), **kw)
    params = fixed_params()
    start = float(loss_fn(params))
    final = run(tx, params, steps=60)[-1]
    assert float(loss_fn(final)) < 0.5 * start


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="awp_sam.*gamma.*-0.1"):
        optlab.awp_sam(optax.sgd(0.1), gamma=-0.1)
    with pytest.raises(ValueError, match="awp_policy.*gamma.*nan"):
        optlab.awp_policy(gamma=float("nan"))
    with pytest.raises(ValueError, match="gradnorm_sam.*eps.*0"):
        optlab.gradnorm_sam(optax.sgd(0.1), eps=0.0)
    with pytest.raises(ValueError, match="gradnorm_policy.*gamma.*-1"):
        optlab.gradnorm_policy(gamma=-1.0)
    with pytest.raises(ValueError, match="extragradient.*learning_rate.*-0.1"):
        optlab.extragradient(optax.sgd(0.1), learning_rate=-0.1)
    with pytest.raises(ValueError, match="extragradient_policy.*learning_rate.*inf"):
        optlab.extragradient_policy(learning_rate=float("inf"))
    with pytest.raises(ValueError, match="extragradient.*grad_fn"):
        tx = optlab.extragradient(optax.sgd(0.1))
        p = fixed_params()
        tx.update(GRAD(p), tx.init(p), p)
