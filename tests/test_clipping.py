"""Tests for the clipping family (optlab/_clipping.py).

Each method's defining property (docs: /work/shared/METHODS.md), numerical equality
with optax where optax has the method, robustness to one outlier gradient, bad
hyperparameters, and empty / all-zero gradients.
"""

from __future__ import annotations

import functools
import re

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import optlab
from helpers import fixed_params, parabola, pytrees, run_optimizer, tree_allclose

hyp = settings(max_examples=5, deadline=None, derandomize=True)


def _tree_norm(tree) -> float:
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    return float(np.sqrt(sum(np.sum(x * x) for x in leaves)))


def _update(tx, grads, params=None, state=None):
    """One jitted update from a fresh state."""
    state = tx.init(grads if params is None else params) if state is None else state
    return jax.jit(tx.update)(grads, state, params)


def _random_tree(seed: int, shapes, scale: float = 1.0):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {f"p{i}": scale * jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}


# ---------------------------------------------------------------------------
# optax.clip_by_global_norm in float32 (optlab.in_float32)
# ---------------------------------------------------------------------------


def _global_clip(max_norm):
    return optlab.in_float32(optax.clip_by_global_norm(max_norm))


@hyp
@given(grads=pytrees(), max_norm=st.floats(0.01, 100.0))
def test_global_norm_matches_optax(grads, max_norm):
    ours, _ = _update(_global_clip(max_norm), grads)
    ref, _ = _update(optax.clip_by_global_norm(max_norm), grads)
    tree_allclose(ours, ref, rtol=1e-6, atol=1e-7)


@hyp
@given(grads=pytrees(), max_norm=st.floats(0.01, 100.0))
def test_global_norm_bounded_and_unchanged_below(grads, max_norm):
    out, _ = _update(_global_clip(max_norm), grads)
    assert _tree_norm(out) <= max_norm * (1 + 1e-5)
    if _tree_norm(grads) < max_norm:
        chex.assert_trees_all_equal(out, grads)


@pytest.mark.parametrize(
    "factory",
    [_global_clip, lambda v: optlab.clip_by_value(max_delta=v)],
    ids=["in_float32(clip_by_global_norm)", "clip_by_value"],
)
def test_bf16_dtype_kept_with_float32_injected_hyperparams(factory):
    # Bare optax.clip_by_global_norm raises and optax.clip upcasts to float32 here.
    params = {"w": jnp.full((3,), 5.0, jnp.bfloat16)}
    tx = optax.inject_hyperparams(lambda value: factory(value), hyperparam_dtype=jnp.float32)(1.0)
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["w"].dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(updates["w"].astype(jnp.float32)))) <= 1.01


# ---------------------------------------------------------------------------
# clip_by_leaf_norm
# ---------------------------------------------------------------------------


def _leaf_norms(tree):
    return {
        jax.tree_util.keystr(p): float(jnp.linalg.norm(jnp.ravel(x)))
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


@hyp
@given(grads=pytrees(), max_norm=st.floats(0.01, 10.0))
def test_leaf_norm_each_leaf_bounded_unchanged_below(grads, max_norm):
    out, _ = _update(optlab.clip_by_leaf_norm(max_norm), grads)
    before, after = _leaf_norms(grads), _leaf_norms(out)
    for (path, g), o in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(out)):
        key = jax.tree_util.keystr(path)
        assert after[key] <= max_norm * (1 + 1e-5)
        if before[key] < max_norm:
            chex.assert_trees_all_equal(o, g)
        else:  # direction kept, norm exactly max_norm
            np.testing.assert_allclose(after[key], max_norm, rtol=1e-5)


def test_leaf_norm_prefix_tree_none_and_callable():
    grads = {
        "enc": {"w": jnp.full((2, 2), 3.0), "b": jnp.full((4,), 3.0)},
        "dec": jnp.full((3,), 4.0),
    }
    keys = ["['enc']['w']", "['enc']['b']", "['dec']"]
    # A prefix tree: one threshold for all of "enc", another for "dec".
    out, _ = _update(optlab.clip_by_leaf_norm({"enc": 1.0, "dec": 2.0}), grads)
    n = _leaf_norms(out)
    np.testing.assert_allclose([n[k] for k in keys], [1.0, 1.0, 2.0], rtol=1e-6)
    # None leaves the subtree unclipped.
    out, _ = _update(optlab.clip_by_leaf_norm({"enc": None, "dec": 2.0}), grads)
    chex.assert_trees_all_equal(out["enc"], grads["enc"])
    np.testing.assert_allclose(_leaf_norms(out)["['dec']"], 2.0, rtol=1e-6)
    # A callable of (path, update).
    seen = []

    def threshold(path, g):
        seen.append(jax.tree_util.keystr(path))
        return 0.5 if "b" in jax.tree_util.keystr(path) else 0.1 * g.size

    out, _ = _update(optlab.clip_by_leaf_norm(threshold), grads)
    n = _leaf_norms(out)
    np.testing.assert_allclose([n[k] for k in keys], [0.4, 0.5, 0.3], rtol=1e-6)
    assert sorted(seen) == ["['dec']", "['enc']['b']", "['enc']['w']"]


def test_leaf_norm_single_leaf_equals_global_norm():
    grads = {"w": jnp.arange(6.0).reshape(2, 3)}
    a, _ = _update(optlab.clip_by_leaf_norm(2.0), grads)
    b, _ = _update(optax.clip_by_global_norm(2.0), grads)
    tree_allclose(a, b)


def test_leaf_norm_bad_threshold_tree_and_callable():
    grads = {"w": jnp.ones(3), "b": jnp.ones(2)}
    tx = optlab.clip_by_leaf_norm({"w": 1.0, "x": 1.0})
    with pytest.raises(ValueError, match="clip_by_leaf_norm.*max_norm.*prefix"):
        tx.update(grads, tx.init(grads))
    tx = optlab.clip_by_leaf_norm(lambda path, g: -1.0)
    with pytest.raises(ValueError, match="clip_by_leaf_norm.*max_norm"):
        tx.update(grads, tx.init(grads))


# ---------------------------------------------------------------------------
# clip_by_value
# ---------------------------------------------------------------------------


@hyp
@given(grads=pytrees(), max_delta=st.floats(1e-3, 10.0))
def test_value_matches_optax_clip(grads, max_delta):
    ours, _ = _update(optlab.clip_by_value(max_delta), grads)
    ref, _ = _update(optax.clip(max_delta), grads)
    chex.assert_trees_all_equal(ours, ref)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ours)) <= max_delta * (1 + 1e-6)


# ---------------------------------------------------------------------------
# adaptive_grad_clip
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("clipping,eps", [(0.01, 1e-3), (0.1, 1e-3), (0.5, 0.5)])
def test_agc_matches_optax_on_matrices_and_conv_kernels(clipping, eps):
    shapes = [(4, 3), (5, 2), (3, 3, 2, 4), (2, 2, 2, 3, 4)]  # Dense, Dense, Conv2D, Conv3D
    params = _random_tree(0, shapes)
    grads = _random_tree(1, shapes)
    ours, _ = _update(optlab.adaptive_grad_clip(clipping, eps), grads, params)
    ref, _ = _update(optax.adaptive_grad_clip(clipping, eps), grads, params)
    tree_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(o, g) for o, g in zip(jax.tree.leaves(ours), jax.tree.leaves(grads)))


def test_agc_explicit_axis_matches_optax_on_vectors_and_rank3():
    # optax's default treats a vector as one unit and reduces only axis 0 of a
    # rank-3 leaf; optlab's default differs there, and `axis` reproduces optax.
    vec_params = _random_tree(2, [(5,), (4,)])
    vec_grads = _random_tree(3, [(5,), (4,)], scale=0.5)
    ours, _ = _update(optlab.adaptive_grad_clip(0.1, axis=0), vec_grads, vec_params)
    ref, _ = _update(optax.adaptive_grad_clip(0.1), vec_grads, vec_params)
    tree_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    r3_params = _random_tree(4, [(4, 2, 3)])
    r3_grads = _random_tree(5, [(4, 2, 3)], scale=0.5)
    ours, _ = _update(optlab.adaptive_grad_clip(0.1, axis=0), r3_grads, r3_params)
    ref, _ = _update(optax.adaptive_grad_clip(0.1), r3_grads, r3_params)
    tree_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def _unit_norm(x):
    """Reference unit norm (optlab convention): a scalar or vector is one unit, else per last
    axis."""
    x = np.asarray(x, np.float64)
    if x.ndim <= 1:
        return np.sqrt(np.sum(x * x, keepdims=True))
    return np.sqrt(np.sum(x * x, axis=tuple(range(x.ndim - 1)), keepdims=True))


@hyp
@given(
    params=pytrees(),
    seed=st.integers(0, 1000),
    clipping=st.floats(0.01, 1.0),
    eps=st.floats(1e-4, 1e-1),
    gscale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_agc_unitwise_ratio_bounded(params, seed, clipping, eps, gscale):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    grads = treedef.unflatten(
        [gscale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    )
    out, _ = _update(optlab.adaptive_grad_clip(clipping, eps), grads, params)
    for g, o, w in zip(jax.tree.leaves(grads), jax.tree.leaves(out), jax.tree.leaves(params)):
        w_norm = np.maximum(_unit_norm(w), eps)
        ratio = _unit_norm(o) / w_norm
        assert np.all(ratio <= clipping * (1 + 1e-5)), ratio.max()
        below = np.broadcast_to(_unit_norm(g) / w_norm < clipping, g.shape)
        np.testing.assert_array_equal(np.asarray(o)[below], np.asarray(g)[below])


def test_agc_needs_params_and_float_params():
    tx = optlab.adaptive_grad_clip(0.1)
    grads = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, tx.init(grads), None)
    with pytest.raises(TypeError, match="adaptive_grad_clip.*floating"):
        tx.init({"w": jnp.ones((2, 2), jnp.int32)})


def test_agc_zero_params_use_eps():
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    grads = jax.tree.map(lambda x: jnp.full_like(x, 10.0), params)
    out, _ = _update(optlab.adaptive_grad_clip(0.1, eps=1e-3), grads, params)
    for o in jax.tree.leaves(out):
        assert np.all(np.abs(np.asarray(o)) <= 1e-4 * (1 + 1e-5))
        assert np.all(np.isfinite(np.asarray(o)))


# ---------------------------------------------------------------------------
# clip_by_quantile
# ---------------------------------------------------------------------------


def _feed(tx, norms, dim=3):
    """Feed gradients with the given global norms (along a fixed direction)."""
    direction = jnp.ones(dim) / np.sqrt(dim)
    state = tx.init({"w": direction})
    step = jax.jit(tx.update)
    outs, states = [], []
    for n in norms:
        updates, state = step({"w": n * direction}, state)
        outs.append(float(jnp.linalg.norm(updates["w"])))
        states.append(state)
    return np.array(outs), states


@pytest.mark.parametrize(
    "quantile,window,warmup", [(0.9, 100, 5), (0.5, 7, 3), (0.0, 4, 1), (1.0, 16, 16)]
)
def test_quantile_threshold_is_quantile_of_recent_norms(quantile, window, warmup):
    norms = np.abs(np.random.default_rng(0).standard_normal(40)) * 3 + 0.5
    outs, _ = _feed(optlab.clip_by_quantile(quantile, window, warmup), norms)
    for t, (n, o) in enumerate(zip(norms, outs)):
        if t < warmup:
            np.testing.assert_allclose(o, n, rtol=1e-6)
        else:
            past = norms[max(0, t - window) : t]
            np.testing.assert_allclose(o, min(n, np.quantile(past, quantile)), rtol=1e-5)


def test_quantile_single_outlier_clipped_and_forgotten():
    norms = np.full(30, 2.0) + np.linspace(0.0, 1.0, 30)
    norms[20] = 1e6
    outs, states = _feed(optlab.clip_by_quantile(0.9, window=10, warmup_steps=5), norms)
    assert outs[20] <= norms[:20].max()
    np.testing.assert_allclose(outs[21:], norms[21:], rtol=1e-6)  # later gradients untouched
    # Non-finite norms are not recorded.
    _, states = _feed(optlab.clip_by_quantile(0.9, 10, 5), [1.0, np.inf, 2.0])
    assert int(states[-1].count) == 2
    assert np.all(np.isfinite(np.asarray(states[-1].norms)))


# ---------------------------------------------------------------------------
# centered_clip
# ---------------------------------------------------------------------------


def test_centered_clip_recurrence_and_step_bound():
    tau = 0.7
    rng = np.random.default_rng(1)
    gs = rng.standard_normal((25, 4)) * np.array([0.1, 1.0, 3.0, 10.0])
    gs[12] *= 1e6  # an outlier moves the estimate by tau only
    tx = optlab.centered_clip(tau)
    state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    m = np.zeros(4)
    for g in gs:
        updates, state = tx.update({"a": jnp.asarray(g[:2]), "b": jnp.asarray(g[2:])}, state)
        d = g - m
        m_new = m + d * min(1.0, tau / np.linalg.norm(d))
        assert np.linalg.norm(m_new - m) <= tau * (1 + 1e-6)
        m = m_new
        got = np.concatenate([np.asarray(updates["a"]), np.asarray(updates["b"])])
        np.testing.assert_allclose(got, m, rtol=1e-5, atol=1e-6)
        tree_allclose(updates, state.center)


def test_centered_clip_estimates_the_median_not_the_mean():
    # 1-D samples: 80% near 1, 20% outliers at +1000. Mean ~ 200, median ~ 1.
    key_a, key_b = jax.random.split(jax.random.key(0))
    n = 4000
    samples = 1.0 + 0.1 * jax.random.normal(key_a, (n,))
    samples = jnp.where(jax.random.uniform(key_b, (n,)) < 0.2, 1000.0, samples)
    tx = optlab.centered_clip(tau=0.02)

    def step(state, g):
        out, state = tx.update({"g": g[None]}, state)
        return state, out["g"][0]

    _, ms = jax.lax.scan(step, tx.init({"g": jnp.zeros(1)}), samples)
    tail = np.asarray(ms[-500:])
    assert float(jnp.mean(samples)) > 100.0
    assert np.all(np.abs(tail - 1.0) < 0.5), (tail.min(), tail.max())


# ---------------------------------------------------------------------------
# clip_by_zscore
# ---------------------------------------------------------------------------


def _zscore_reference(norms, z, decay, warmup):
    """Numpy reference: (clipped output norms, means, vars)."""
    mean = var = 0.0
    outs, means, variances = [], [], []
    for t, n in enumerate(norms):
        if t < warmup:
            k = t + 1
            new_mean = mean + (n - mean) / k
            var = var + ((n - mean) * (n - new_mean) - var) / k
            mean = new_mean
            outs.append(n)
        else:
            threshold = mean + z * np.sqrt(var)
            c = min(n, threshold)
            outs.append(c)
            mean = decay * mean + (1 - decay) * c
            var = decay * var + (1 - decay) * (c - mean) ** 2
        means.append(mean)
        variances.append(var)
    return np.array(outs), np.array(means), np.array(variances)


def test_zscore_warmup_stats_are_exact_mean_and_variance():
    norms = np.array([1.0, 4.0, 2.0, 7.0, 3.0])
    _, states = _feed(optlab.clip_by_zscore(2.0, 0.9, warmup_steps=5), norms)
    np.testing.assert_allclose(float(states[-1].mean), norms.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(states[-1].var), norms.var(), rtol=1e-5)


def test_zscore_threshold_tracks_ema_of_norms():
    rng = np.random.default_rng(3)
    # Slowly growing norms with noise, and two spikes.
    norms = np.exp(np.linspace(0.0, 2.0, 80)) * (1.0 + 0.05 * rng.standard_normal(80))
    norms[50] *= 1e6
    norms[65] *= 20.0
    z, decay, warmup = 2.5, 0.9, 10
    outs, states = _feed(optlab.clip_by_zscore(z, decay, warmup), norms)
    ref_out, ref_mean, ref_var = _zscore_reference(norms, z, decay, warmup)
    np.testing.assert_allclose(outs, ref_out, rtol=1e-4)
    np.testing.assert_allclose([float(s.mean) for s in states], ref_mean, rtol=1e-4)
    np.testing.assert_allclose([float(s.var) for s in states], ref_var, rtol=1e-3, atol=1e-6)
    # The threshold follows the growing norms: the last norm (7x the first) is not
    # clipped, while the spikes are clipped to mean + z * std of the step before.
    assert outs[-1] == pytest.approx(norms[-1], rel=1e-5)
    assert ref_mean[-1] > 4.0 * ref_mean[warmup]
    for t in (50, 65):
        threshold = ref_mean[t - 1] + z * np.sqrt(ref_var[t - 1])
        assert outs[t] == pytest.approx(threshold, rel=1e-4)
        assert outs[t] < 2 * norms[t - 1]


# ---------------------------------------------------------------------------
# scale_by_clipped_adagrad
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_norm,iav,eps", [(1.0, 0.1, 1e-7), (0.3, 0.0, 1e-8), (50.0, 1.0, 0.0)])
def test_clipped_adagrad_equals_optax_composition(max_norm, iav, eps):
    params = fixed_params()
    ours = optlab.scale_by_clipped_adagrad(max_norm, iav, eps)
    ref = optax.chain(optax.clip_by_global_norm(max_norm), optax.scale_by_rss(iav, eps))
    s1, s2 = ours.init(params), ref.init(params)
    step1, step2 = jax.jit(ours.update), jax.jit(ref.update)
    for i in range(5):
        grads = jax.tree.map(lambda x: (i + 1.0) * jnp.sin(x + i), params)
        u1, s1 = step1(grads, s1, params)
        u2, s2 = step2(grads, s2, params)
        tree_allclose(u1, u2, rtol=1e-6, atol=1e-7)


def test_clipped_adagrad_norm_variant():
    max_norm, iav, eps = 1.0, 0.1, 1e-7
    tx = optlab.scale_by_clipped_adagrad(max_norm, iav, eps, adagrad_norm=True)
    params = fixed_params()
    state, acc = tx.init(params), iav
    for i in range(5):
        grads = jax.tree.map(lambda x: (i + 1.0) * jnp.cos(x * i), params)
        clipped = jax.tree.map(lambda g: g * min(1.0, max_norm / _tree_norm(grads)), grads)
        acc += _tree_norm(clipped) ** 2
        updates, state = tx.update(grads, state, params)
        tree_allclose(updates, jax.tree.map(lambda c: c / np.sqrt(acc + eps), clipped), rtol=1e-5)


def _noisy_quadratic_runs(tx, seeds=(0, 1, 2), steps=500, dim=10):
    """Minimise 0.5 ||x - 1||^2 from Cauchy-noised gradients, one run per seed.

    Returns (final distances to the optimum, step norms), one row per seed.
    """
    noise = jnp.stack([jax.random.cauchy(jax.random.key(s), (steps, dim)) for s in seeds])

    def run(noise):
        def step(carry, n):
            x, s = carry
            u, s = tx.update((x - 1.0) + n, s, x)
            return (x + u, s), jnp.linalg.norm(u)

        x0 = jnp.zeros(dim)
        (x, _), step_norms = jax.lax.scan(step, (x0, tx.init(x0)), noise)
        return jnp.linalg.norm(x - 1.0), step_norms

    dist, step_norms = jax.jit(jax.vmap(run))(noise)
    return np.asarray(dist), np.asarray(step_norms)


@pytest.mark.parametrize("adagrad_norm", [False, True])
def test_clipped_adagrad_bounded_steps_under_cauchy_noise(adagrad_norm):
    lr, max_norm, iav = 0.5, 1.0, 0.1
    tx = optax.chain(
        optlab.scale_by_clipped_adagrad(max_norm, iav, adagrad_norm=adagrad_norm),
        optax.scale_by_learning_rate(lr),
    )
    dist, step_norms = _noisy_quadratic_runs(tx)
    assert np.all(np.isfinite(step_norms))
    assert step_norms.max() <= lr * max_norm / np.sqrt(iav) * (1 + 1e-5)
    # Plain AdaGrad's accumulator is wrecked by the heavy tail: clipping ends closer.
    plain_dist, _ = _noisy_quadratic_runs(optax.adagrad(lr))
    assert np.all(dist < 0.75 * plain_dist), (dist, plain_dist)


# ---------------------------------------------------------------------------
# Shared: outliers, bad hyperparameters, empty trees and zero gradients
# ---------------------------------------------------------------------------

# name -> a factory building the transform with test hyperparameters.
TRANSFORMS = {
    "in_float32": lambda: _global_clip(1.0),
    "clip_by_leaf_norm": lambda: optlab.clip_by_leaf_norm(1.0),
    "clip_by_leaf_norm_callable": lambda: optlab.clip_by_leaf_norm(
        lambda path, g: 0.5 * jnp.sqrt(g.size)
    ),
    "clip_by_value": lambda: optlab.clip_by_value(1.0),
    "adaptive_grad_clip": lambda: optlab.adaptive_grad_clip(0.1),
    "clip_by_quantile": lambda: optlab.clip_by_quantile(0.9, window=16, warmup_steps=5),
    "centered_clip": lambda: optlab.centered_clip(1.0),
    "clip_by_zscore": lambda: optlab.clip_by_zscore(2.5, 0.9, warmup_steps=5),
    "scale_by_clipped_adagrad": lambda: optlab.scale_by_clipped_adagrad(1.0),
    "scale_by_clipped_adagrad_norm": lambda: optlab.scale_by_clipped_adagrad(
        1.0, adagrad_norm=True
    ),
}
OUTLIER_STEP, N_STEPS, LR = 12, 30, 0.1


@functools.cache
def _run_with_outlier(name: str):
    """SGD (lr 0.1) through the transform on the parabola; grads x1e6 at OUTLIER_STEP."""
    inner = optax.identity() if name == "none" else TRANSFORMS[name]()
    tx = optax.chain(inner, optax.sgd(LR))
    params = fixed_params()
    scales = jnp.ones(N_STEPS).at[OUTLIER_STEP].set(1e6)

    def step(carry, scale):
        p, s = carry
        g = jax.tree.map(lambda x: scale * x, jax.grad(parabola)(p))
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (p, parabola(p))

    run = jax.jit(lambda: jax.lax.scan(step, (params, tx.init(params)), scales))
    (p, _), (traj, losses) = run()
    max_dev = max(float(jnp.max(jnp.abs(x - 1.0))) for x in jax.tree.leaves(traj))
    return p, max_dev, np.asarray(losses), float(parabola(params))


def test_outlier_blows_up_without_clipping():  # the control: the test below is meaningful
    _, max_dev, _, _ = _run_with_outlier("none")
    assert max_dev > 1e4


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_single_outlier_gradient_does_not_blow_up(name):
    params, max_dev, losses, loss0 = _run_with_outlier(name)
    chex.assert_tree_all_finite(params)
    initial_dev = max(float(jnp.max(jnp.abs(x - 1.0))) for x in jax.tree.leaves(fixed_params()))
    assert max_dev < initial_dev + 5.0, max_dev
    assert np.all(np.isfinite(losses))
    assert losses[-1] < loss0  # still optimising after the outlier


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_converges_on_parabola(name):
    params = fixed_params()
    if name == "adaptive_grad_clip":
        # AGC steps are relative to |w| per element for vectors and scalars: a
        # weight cannot cross zero quickly, so start on the minimum's side.
        params = jax.tree.map(lambda x: jnp.abs(x) + 0.1, params)
    lr = 1.0 if name == "scale_by_clipped_adagrad_norm" else 0.3
    tx = optax.chain(TRANSFORMS[name](), optax.sgd(lr))
    _, _, losses = run_optimizer(tx, parabola, params, steps=150)
    assert losses[-1] < 1e-4 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_empty_tree_and_zero_gradients_no_nan(name):
    tx = TRANSFORMS[name]()
    # Empty tree.
    state = tx.init({})
    updates, state = tx.update({}, state, {})
    assert updates == {}
    chex.assert_tree_all_finite(state)
    # All-zero gradients, several steps (past every warm-up).
    params = fixed_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(8):
        updates, state = step(zeros, state, params)
        chex.assert_tree_all_finite(updates)
        chex.assert_tree_all_finite(state)
        chex.assert_trees_all_equal(updates, zeros)
    # A normal gradient right after zeros is still finite.
    updates, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    chex.assert_tree_all_finite((updates, state))


# (factory, bad keyword arguments, the parameter the message must name, exception).
BAD_HPARAMS = [
    (optlab.clip_by_leaf_norm, dict(max_norm=-1.0), "max_norm", ValueError),
    (optlab.clip_by_leaf_norm, dict(max_norm={"w": 1.0, "b": 0.0}), "max_norm['b']", ValueError),
    (optlab.clip_by_value, dict(max_delta=0.0), "max_delta", ValueError),
    (optlab.clip_by_value, dict(max_delta=float("inf")), "max_delta", ValueError),
    (optlab.adaptive_grad_clip, dict(clipping=0.0), "clipping", ValueError),
    (optlab.adaptive_grad_clip, dict(clipping=0.1, eps=-1e-3), "eps", ValueError),
    (optlab.clip_by_quantile, dict(quantile=1.5), "quantile", ValueError),
    (optlab.clip_by_quantile, dict(quantile=-0.1), "quantile", ValueError),
    (optlab.clip_by_quantile, dict(window=0), "window", ValueError),
    (optlab.clip_by_quantile, dict(window=10.0), "window", TypeError),
    (optlab.clip_by_quantile, dict(warmup_steps=0), "warmup_steps", ValueError),
    (optlab.centered_clip, dict(tau=0.0), "tau", ValueError),
    (optlab.centered_clip, dict(tau=-2.0), "tau", ValueError),
    (optlab.clip_by_zscore, dict(z_thresh=-1.0), "z_thresh", ValueError),
    (optlab.clip_by_zscore, dict(decay=1.0), "decay", ValueError),
    (optlab.clip_by_zscore, dict(warmup_steps=0), "warmup_steps", ValueError),
    (optlab.clip_by_zscore, dict(warmup_steps=2.5), "warmup_steps", TypeError),
    (optlab.scale_by_clipped_adagrad, dict(max_norm=0.0), "max_norm", ValueError),
    (
        optlab.scale_by_clipped_adagrad,
        dict(initial_accumulator_value=-0.1),
        "initial_accumulator_value",
        ValueError,
    ),
    (optlab.scale_by_clipped_adagrad, dict(eps=-1.0), "eps", ValueError),
]


@pytest.mark.parametrize(
    "factory,kwargs,param,exc",
    BAD_HPARAMS,
    ids=[f"{f.__name__}-{p}-{i}" for i, (f, _, p, _) in enumerate(BAD_HPARAMS)],
)
def test_bad_hyperparameters_raise(factory, kwargs, param, exc):
    # The message names the function, the parameter and the value.
    value = f".*{re.escape(repr(kwargs[param]))}" if param in kwargs else ""
    with pytest.raises(exc, match=rf"{factory.__name__}.*{re.escape(param)}{value}"):
        factory(**kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "centered_clip",
        "scale_by_clipped_adagrad",
        "in_float32",
        "clip_by_leaf_norm",
        "clip_by_value",
        "clip_by_quantile",
        "clip_by_zscore",
    ],
)
def test_param_shaped_state_needs_float_params(name):
    with pytest.raises(TypeError, match=f"{name}.*floating"):
        TRANSFORMS[name]().init({"w": jnp.ones(3, jnp.int32)})


def test_traced_hyperparameters_skip_validation_under_jit():
    # inject_hyperparams passes arrays (and schedules): the factories must accept them.
    params = fixed_params()
    for factory, kw, static in [
        (optlab.clip_by_zscore, dict(z_thresh=2.0, decay=0.9), ("warmup_steps",)),
        (optlab.clip_by_quantile, dict(quantile=0.5), ("window", "warmup_steps")),
        (optlab.adaptive_grad_clip, dict(clipping=optax.linear_schedule(0.01, 0.1, 10)), ()),
        (optlab.scale_by_clipped_adagrad, dict(max_norm=optax.constant_schedule(2.0)), ()),
    ]:
        tx = optax.inject_hyperparams(factory, static_args=static)(**kw)
        updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
        chex.assert_tree_all_finite(updates)
