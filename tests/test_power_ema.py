"""Power-function EMA (EDM2): the sigma_rel <-> gamma map, the recursion, the s^gamma profile."""

from __future__ import annotations

import chex
import jax
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


# ---------------------------------------------------------------------------
# Post-hoc EMA reconstruction: power_ema_profiles + snapshots + posthoc_ema
# ---------------------------------------------------------------------------

_SIGMAS = (0.05, 0.15)


def _noisy_run(tx, steps=40, seed=0):
    """SGD with noise on a quadratic; returns the final state and the collected snapshots."""
    rng = np.random.default_rng(seed)
    noise = jnp.asarray(rng.normal(size=(steps, 3)), jnp.float32)
    params = {"w": jnp.zeros(3), "b": jnp.ones(())}
    state = tx.init(params)
    step = jax.jit(tx.update)
    snapshots = []
    for i in range(steps):
        grads = {"w": params["w"] - 1.0 + noise[i], "b": params["b"] + noise[i, 0]}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        if hasattr(state, "emas"):
            snapshots += optlab.power_ema_snapshots(state)
    return state, snapshots


@pytest.fixture(scope="module")
def profile_run():
    tx = optlab.power_ema_profiles(optax.sgd(0.2), _SIGMAS, snapshot_every=10)
    return _noisy_run(tx)


def test_profiles_track_power_ema_and_snapshot_every_k(profile_run):
    state, snapshots = profile_run
    assert [(s.step, s.sigma_rel) for s in snapshots] == [
        (t, s) for t in (10, 20, 30, 40) for s in _SIGMAS
    ]
    for i, sigma in enumerate(_SIGMAS):  # each profile is power_ema's average
        single, _ = _noisy_run(optlab.power_ema(optax.sgd(0.2), sigma_rel=sigma))
        chex.assert_trees_all_close(state.emas[i], single.ema, rtol=1e-6)
        chex.assert_trees_all_close(snapshots[-2 + i].params, single.ema, rtol=1e-6)
    assert optlab.power_ema_snapshots(state, force=True)[0].step == 40
    chex.assert_trees_all_equal(optlab.averaged_params(state), state.emas[0])


def test_posthoc_reconstructs_a_tracked_profile(profile_run):
    _, snapshots = profile_run
    for t in (20, 40):
        for sigma in _SIGMAS:
            want = next(s.params for s in snapshots if s.step == t and s.sigma_rel == sigma)
            got = optlab.posthoc_ema(snapshots, sigma_rel=sigma, step=t)
            chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
            c = optlab.posthoc_ema_coefficients(
                [s.step for s in snapshots], [s.sigma_rel for s in snapshots], t, sigma
            )
            hit = [s.step == t and s.sigma_rel == sigma for s in snapshots]
            np.testing.assert_allclose(c, np.asarray(hit, np.float64), atol=1e-8)


def test_posthoc_intermediate_profile_approaches_the_direct_ema(profile_run):
    # sigma_rel = 0.1 was never tracked: its reconstruction is closer to the direct
    # power EMA than either tracked profile is.
    state, snapshots = profile_run
    direct, _ = _noisy_run(optlab.power_ema(optax.sgd(0.2), sigma_rel=0.1))
    got = optlab.posthoc_ema(snapshots, sigma_rel=0.1)

    def dist(a, b):
        return float(optax.tree.norm(optax.tree.sub(a, b)))

    err = dist(got, direct.ema)
    assert err < 0.5 * min(dist(e, direct.ema) for e in state.emas), err  # measured 0.35


def test_coefficients_match_numerical_integration():
    # Gram matrix of the profiles p_i(s) = (g_i + 1) s^g_i / t_i^(g_i + 1) on [0, t_i] by
    # midpoint quadrature, the normal equations solved directly, normalized.
    steps = np.array([20.0, 40.0, 20.0, 40.0])
    sigmas = np.array([0.1, 0.1, 0.2, 0.2])
    target_t, target_sigma = 30, 0.15
    n = 400_000
    s = (np.arange(n) + 0.5) * (40.0 / n)

    def profile(t, sigma):
        g = optlab.sigma_rel_to_gamma(sigma)
        return np.where(s <= t, (g + 1) * (s / t) ** g / t, 0.0)

    ps = np.stack([profile(t, g) for t, g in zip(steps, sigmas)])
    a = ps @ ps.T * (40.0 / n)
    b = ps @ profile(target_t, target_sigma) * (40.0 / n)
    want = np.linalg.solve(a, b)
    want /= want.sum()
    got = optlab.posthoc_ema_coefficients(steps.astype(int), sigmas, target_t, target_sigma)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-12)


def test_posthoc_bad_input():
    snap = optlab.PowerEMASnapshot(10, 0.05, {"w": jnp.ones(2)})
    snap2 = optlab.PowerEMASnapshot(10, 0.1, {"w": jnp.zeros(2)})
    for bad in (0.3, -0.1, float("nan")):
        with pytest.raises(ValueError, match="posthoc_ema.*sigma_rel"):
            optlab.posthoc_ema([snap, snap2], sigma_rel=bad)
    with pytest.raises(TypeError, match="posthoc_ema.*sigma_rel"):
        optlab.posthoc_ema([snap, snap2], sigma_rel="0.1")
    with pytest.raises(ValueError, match="posthoc_ema.*snapshots.*non-empty"):
        optlab.posthoc_ema([], sigma_rel=0.1)
    with pytest.raises(ValueError, match="posthoc_ema.*same tree structure"):
        optlab.posthoc_ema([snap, snap2._replace(params={"v": jnp.ones(2)})], sigma_rel=0.1)
    with pytest.raises(ValueError, match=r"posthoc_ema.*different shapes at \['w'\]"):
        optlab.posthoc_ema([snap, snap2._replace(params={"w": jnp.ones(3)})], sigma_rel=0.1)
    with pytest.raises(ValueError, match="posthoc_ema.*step.*<= the last snapshot's step 10"):
        optlab.posthoc_ema([snap, snap2], sigma_rel=0.1, step=11)
    with pytest.raises(ValueError, match="posthoc_ema.*step.*integers >= 1"):
        optlab.posthoc_ema([snap, snap2], sigma_rel=0.1, step=0)
    with pytest.raises(ValueError, match=r"posthoc_ema.*snapshots\[i\]\.step.*integers >= 1"):
        optlab.posthoc_ema([snap._replace(step=0), snap2], sigma_rel=0.1)
    with pytest.raises(ValueError, match="posthoc_ema.*same step 10 and sigma_rel 0.05"):
        optlab.posthoc_ema([snap, snap], sigma_rel=0.1)
    with pytest.raises(TypeError, match=r"posthoc_ema.*snapshots\[1\]"):
        optlab.posthoc_ema([snap, {"w": jnp.ones(2)}], sigma_rel=0.1)
    with pytest.raises(ValueError, match="posthoc_ema_coefficients.*same length"):
        optlab.posthoc_ema_coefficients([10, 20], [0.05], 10, 0.1)

    sgd = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"power_ema_profiles.*sigma_rels\[1\].*0.3"):
        optlab.power_ema_profiles(sgd, (0.05, 0.3))
    with pytest.raises(ValueError, match="power_ema_profiles.*distinct"):
        optlab.power_ema_profiles(sgd, (0.05, 0.05))
    with pytest.raises(TypeError, match="power_ema_profiles.*sigma_rels"):
        optlab.power_ema_profiles(sgd, ())
    with pytest.raises(TypeError, match="power_ema_profiles.*sigma_rels"):
        optlab.power_ema_profiles(sgd, 0.05)
    with pytest.raises(ValueError, match="power_ema_profiles.*snapshot_every.*0"):
        optlab.power_ema_profiles(sgd, snapshot_every=0)
    with pytest.raises(ValueError, match="power_ema_snapshots.*exactly one"):
        optlab.power_ema_snapshots(optax.sgd(0.1).init(jnp.ones(2)))
