"""Power-function EMA (EDM2): the sigma_rel <-> gamma map, the recursion, the s^gamma profile."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_sigma_rel_round_trip(sigma_rel):
    g = optlab.sigma_rel_to_gamma(sigma_rel)
    assert g > 0
    np.testing.assert_allclose(np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))), sigma_rel, rtol=1e-9)


def _trajectory(tx, steps=40):
    """Params follow x_t = t (sgd(1) on grad -1); returns iterates and the averages."""
    params = jnp.zeros(2)
    state = tx.init(params)
    xs, avgs = [], []
    for _ in range(steps):
        updates, state = tx.update(-jnp.ones(2), state, params)
        params = optax.apply_updates(params, updates)
        xs.append(float(params[0]))
        avgs.append(float(optlab.averaged_params(state)[0]))
    return np.array(xs), np.array(avgs)


def test_recursion_and_power_profile():
    sigma_rel = 0.15
    gamma = optlab.sigma_rel_to_gamma(sigma_rel)
    xs, avgs = _trajectory(optlab.power_ema(optax.sgd(1.0), sigma_rel=sigma_rel))
    # the recursion, in float64
    m = 0.0
    for t, x in enumerate(xs, start=1):
        beta = (1 - 1 / t) ** (gamma + 1)
        m = beta * m + (1 - beta) * x
        np.testing.assert_allclose(avgs[t - 1], m, rtol=1e-5)
    # the weights approach the s^gamma profile (x_s = s: the average is its mean)
    t = len(xs)
    s = np.arange(1, t + 1)
    profile_mean = np.sum(s**gamma * s) / np.sum(s**gamma)
    np.testing.assert_allclose(avgs[-1], profile_mean, rtol=2e-2)
    assert avgs[0] == xs[0]  # beta_1 = 0


def test_relative_width_is_fixed_as_training_grows():
    # average / t -> (gamma + 1) / (gamma + 2) for x_s = s, whatever t.
    gamma = optlab.sigma_rel_to_gamma(0.1)
    _, avgs = _trajectory(optlab.power_ema(optax.sgd(1.0), sigma_rel=0.1), steps=200)
    want = (gamma + 1) / (gamma + 2)
    np.testing.assert_allclose(avgs[99] / 100, want, rtol=2e-2)
    np.testing.assert_allclose(avgs[199] / 200, want, rtol=1e-2)


def test_converges_and_averages_noise_on_a_quadratic():
    rng = np.random.default_rng(0)
    tx = optlab.power_ema(optax.sgd(0.1), sigma_rel=0.1)
    params = jnp.zeros(3)
    state = tx.init(params)
    for _ in range(200):
        grads = params - 1.0 + jnp.asarray(rng.normal(size=3), jnp.float32)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    avg = optlab.averaged_params(state)
    assert float(jnp.linalg.norm(avg - 1.0)) < float(jnp.linalg.norm(params - 1.0))
    assert float(jnp.linalg.norm(avg - 1.0)) < 0.3


def test_bad_input():
    with pytest.raises(ValueError, match="power_ema.*sigma_rel.*-0.1"):
        optlab.power_ema(optax.sgd(0.1), sigma_rel=-0.1)
    with pytest.raises(ValueError, match="power_ema.*sigma_rel.*0.3"):
        optlab.power_ema(optax.sgd(0.1), sigma_rel=0.3)
    with pytest.raises(ValueError, match="power_ema.*sigma_rel.*nan"):
        optlab.power_ema(optax.sgd(0.1), sigma_rel=float("nan"))
    with pytest.raises(TypeError, match="power_ema.*sigma_rel"):
        optlab.power_ema(optax.sgd(0.1), sigma_rel="0.1")
    with pytest.raises(ValueError, match="sigma_rel_to_gamma.*sigma_rel.*0"):
        optlab.sigma_rel_to_gamma(0.0)
