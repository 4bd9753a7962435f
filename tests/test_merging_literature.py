"""Weight matching (Git Re-Basin) and RegMean: the defining properties and bad input."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optlab
from optlab._merging import _linear_sum_assignment

LAYERS = ["Dense_0", "Dense_1", "Dense_2"]
SHAPES = [(6, 10), (10, 7), (7, 3)]
SPEC = optlab.mlp_permutation_spec(LAYERS)


def _mlp(seed):
    rng = np.random.default_rng(seed)
    return {
        name: {
            "kernel": jnp.asarray(rng.normal(size=shape), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=shape[1]), jnp.float32),
        }
        for name, shape in zip(LAYERS, SHAPES)
    }


def _forward(params, x):
    for i, name in enumerate(LAYERS):
        x = x @ params[name]["kernel"] + params[name]["bias"][None, :]
        if i < len(LAYERS) - 1:
            x = jax.nn.relu(x)
    return x


def _random_perms(seed):
    rng = np.random.default_rng(seed)
    return {"P_Dense_0": rng.permutation(10), "P_Dense_1": rng.permutation(7)}


# ---------------------------------------------------------------------------
# Linear assignment
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_linear_sum_assignment_matches_brute_force(n):
    rng = np.random.default_rng(n)
    for cost in (rng.normal(size=(n, n)), rng.integers(0, 3, size=(n, n)).astype(float)):
        col = _linear_sum_assignment(cost)
        assert sorted(col.tolist()) == list(range(n))
        best = min(cost[np.arange(n), list(p)].sum() for p in itertools.permutations(range(n)))
        np.testing.assert_allclose(cost[np.arange(n), col].sum(), best, atol=1e-12)


def test_linear_sum_assignment_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    cost = rng.normal(size=(60, 60))
    rows, cols = optimize.linear_sum_assignment(cost)
    col = _linear_sum_assignment(cost)
    np.testing.assert_allclose(cost[np.arange(60), col].sum(), cost[rows, cols].sum(), rtol=1e-12)


# ---------------------------------------------------------------------------
# Weight matching
# ---------------------------------------------------------------------------


def test_permuted_mlp_computes_the_same_function():
    a = _mlp(0)
    b = optlab.apply_permutation(a, SPEC, _random_perms(1))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 6)), jnp.float32)
    np.testing.assert_allclose(_forward(b, x), _forward(a, x), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(b["Dense_1"]["kernel"], a["Dense_1"]["kernel"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_weight_matching_recovers_a_permuted_copy_exactly(seed):
    a = _mlp(0)
    pi = _random_perms(seed)
    b = optlab.apply_permutation(a, SPEC, pi)
    perms = optlab.weight_matching(a, b, SPEC, seed=seed)
    for name, q in perms.items():  # b[q] = a[pi[q]]: pi[q] is the identity
        np.testing.assert_array_equal(pi[name][q], np.arange(len(q)))
    chex.assert_trees_all_equal(optlab.apply_permutation(b, SPEC, perms), a)


def test_weight_matching_never_lowers_the_alignment_of_different_models():
    a, b = _mlp(0), _mlp(5)

    def score(tree):
        return sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(tree)))

    perms = optlab.weight_matching(a, b, SPEC)
    aligned = optlab.apply_permutation(b, SPEC, perms)
    assert score(aligned) > score(b)
    # a fixed point: starting from the result, nothing changes
    again = optlab.weight_matching(a, b, SPEC, init_perms=perms)
    for name in perms:
        np.testing.assert_array_equal(again[name], perms[name])


def test_align_and_interpolate():
    a, c = _mlp(0), _mlp(7)
    b = optlab.apply_permutation(a, SPEC, _random_perms(4))
    chex.assert_trees_all_close(optlab.align_and_interpolate(a, b, SPEC, 0.5), a, rtol=1e-6)
    perms = optlab.weight_matching(a, c, SPEC)
    want = optlab.interpolate(a, optlab.apply_permutation(c, SPEC, perms), 0.25)
    chex.assert_trees_all_close(optlab.align_and_interpolate(a, c, SPEC, 0.25), want)


def test_aligned_merge_of_a_noisy_permuted_copy_keeps_the_function():
    # b: a permuted copy of a plus noise. The aligned midpoint computes nearly a's
    # function; the naive midpoint mixes unrelated units and does not.
    a = _mlp(0)
    rng = np.random.default_rng(9)
    b = optlab.apply_permutation(a, SPEC, _random_perms(6))
    b = jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.normal(size=x.shape), x.dtype), b)
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    ref = _forward(a, x)

    def err(p):
        return float(jnp.linalg.norm(_forward(p, x) - ref) / jnp.linalg.norm(ref))

    aligned, naive = optlab.align_and_interpolate(a, b, SPEC), optlab.interpolate(a, b, 0.5)
    assert err(aligned) < 0.1 < err(naive), (err(aligned), err(naive))


def test_weight_matching_bad_input():
    a = _mlp(0)
    with pytest.raises(ValueError, match="weight_matching.*spec.*structure"):
        optlab.weight_matching(a, a, {"Dense_0": SPEC["Dense_0"]})
    bad = optlab.mlp_permutation_spec(LAYERS)
    bad["Dense_0"]["bias"] = ("P_Dense_0", None)
    with pytest.raises(
        ValueError, match=r"weight_matching.*\['Dense_0'\]\['bias'\].*1 permutation"
    ):
        optlab.weight_matching(a, a, bad)
    bad = optlab.mlp_permutation_spec(LAYERS)
    bad["Dense_2"]["bias"] = ("P_Dense_0",)
    with pytest.raises(ValueError, match="weight_matching.*'P_Dense_0'.*different sizes"):
        optlab.weight_matching(a, a, bad)
    with pytest.raises(ValueError, match="weight_matching.*names no permutation"):
        optlab.weight_matching(a, a, jax.tree.map(lambda _: None, a))
    with pytest.raises(ValueError, match="weight_matching.*params_a.*params_b"):
        optlab.weight_matching(a, _mlp(0)["Dense_0"], SPEC)
    nan = jax.tree.map(lambda x: x.at[0].set(jnp.nan), a)
    with pytest.raises(ValueError, match="weight_matching.*params_b.*non-finite"):
        optlab.weight_matching(a, nan, SPEC)
    with pytest.raises(ValueError, match="weight_matching.*max_iter.*0"):
        optlab.weight_matching(a, a, SPEC, max_iter=0)
    with pytest.raises(ValueError, match=r"apply_permutation.*perms\['P_Dense_1'\].*range\(7\)"):
        optlab.apply_permutation(a, SPEC, {"P_Dense_0": np.arange(10), "P_Dense_1": np.zeros(7)})
    with pytest.raises(ValueError, match="apply_permutation.*one permutation per name"):
        optlab.apply_permutation(a, SPEC, {"P_Dense_0": np.arange(10)})
    with pytest.raises(ValueError, match="mlp_permutation_spec.*at least two"):
        optlab.mlp_permutation_spec(["Dense_0"])
    with pytest.raises(ValueError, match="align_and_interpolate.*t"):
        optlab.align_and_interpolate(a, a, SPEC, float("nan"))


# ---------------------------------------------------------------------------
# RegMean
# ---------------------------------------------------------------------------


def _regression(seed, n=30, d=4, k=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)
    w = rng.normal(size=(d, k))
    return x, {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.asarray(rng.normal(size=k))}


def test_regmean_solves_the_least_squares_merge():
    data = [_regression(s) for s in range(3)]
    models = [m for _, m in data]
    grams = [{"kernel": jnp.asarray(x.T @ x, jnp.float32), "bias": None} for x, _ in data]
    merged = optlab.regmean(models, grams)
    # min_W sum_i ||X_i W - X_i W_i||^2, by a direct least-squares solve on the stacked data
    xs = np.concatenate([x for x, _ in data])
    ys = np.concatenate([x @ np.asarray(m["kernel"], np.float64) for x, m in data])
    want = np.linalg.lstsq(xs, ys, rcond=None)[0]
    np.testing.assert_allclose(merged["kernel"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(merged["bias"], np.mean([m["bias"] for m in models], 0), rtol=1e-6)
    # (out, in) weights with input_axis=1 give the transpose
    t_models = [{"kernel": m["kernel"].T, "bias": m["bias"]} for m in models]
    t_merged = optlab.regmean(t_models, grams, input_axis=1)
    np.testing.assert_allclose(t_merged["kernel"], merged["kernel"].T, rtol=1e-5, atol=1e-6)


def test_regmean_with_identical_grams_is_the_average():
    data = [_regression(s) for s in range(3)]
    models = [m for _, m in data]
    x = data[0][0]
    for alpha in (1.0, 0.5):
        grams = [{"kernel": jnp.asarray(x.T @ x, jnp.float32), "bias": None}] * 3
        merged = optlab.regmean(models, grams, alpha=alpha)
        chex.assert_trees_all_close(merged, optlab.uniform_soup(models), rtol=1e-5, atol=1e-6)


def test_regmean_alpha_scales_the_off_diagonal():
    data = [_regression(s) for s in range(2)]
    models = [m for _, m in data]
    gs = [x.T @ x for x, _ in data]
    alpha = 0.3
    merged = optlab.regmean(
        models, [{"kernel": jnp.asarray(g, jnp.float32), "bias": None} for g in gs], alpha=alpha
    )
    red = [alpha * g + (1 - alpha) * np.diag(np.diag(g)) for g in gs]
    want = np.linalg.solve(sum(red), sum(r @ np.asarray(m["kernel"]) for r, m in zip(red, models)))
    np.testing.assert_allclose(merged["kernel"], want, rtol=1e-4, atol=1e-5)
    # alpha = 0: per input feature, the Gram-diagonal-weighted mean
    merged0 = optlab.regmean(
        models, [{"kernel": jnp.asarray(g, jnp.float32), "bias": None} for g in gs], alpha=0.0
    )
    d = np.stack([np.diag(g) for g in gs])[:, :, None]
    want0 = (d * np.stack([np.asarray(m["kernel"]) for m in models])).sum(0) / d.sum(0)
    np.testing.assert_allclose(merged0["kernel"], want0, rtol=1e-5, atol=1e-6)


def test_regmean_bad_input():
    (x, m1), (_, m2) = _regression(0), _regression(1)
    g = {"kernel": jnp.asarray(x.T @ x, jnp.float32), "bias": None}
    none = {"kernel": None, "bias": None}
    with pytest.raises(ValueError, match="regmean.*alpha.*1.5"):
        optlab.regmean([m1, m2], [g, g], alpha=1.5)
    with pytest.raises(ValueError, match="regmean.*grams.*one tree per model"):
        optlab.regmean([m1, m2], [g])
    with pytest.raises(ValueError, match=r"regmean.*grams\[1\].*\['kernel'\].*shape \(4, 4\)"):
        optlab.regmean([m1, m2], [g, {"kernel": jnp.eye(3), "bias": None}])
    with pytest.raises(ValueError, match=r"regmean.*\['kernel'\].*some models only"):
        optlab.regmean([m1, m2], [g, none])
    with pytest.raises(ValueError, match=r"regmean.*\['kernel'\].*singular"):
        zero = {"kernel": jnp.zeros((4, 4)), "bias": None}
        optlab.regmean([m1, m2], [zero, zero])
    with pytest.raises(ValueError, match=r"regmean.*grams\[0\].*structure"):
        optlab.regmean([m1, m2], [{"kernel": g["kernel"]}, g])
    with pytest.raises(ValueError, match=r"regmean.*\['bias'\].*at least two axes"):
        optlab.regmean([m1, m2], [{"kernel": None, "bias": jnp.eye(2)}] * 2)
    with pytest.raises(ValueError, match="regmean.*models"):
        optlab.regmean([], [])
    with pytest.raises(ValueError, match="regmean.*different shapes"):
        optlab.regmean([m1, {"kernel": jnp.ones((3, 2)), "bias": m2["bias"]}], [g, g])
