"""Offline merging: soups, interpolation, SLERP, Model Stock, task arithmetic."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import optlab
from helpers import fixed_params, pytrees, tree_allclose

hyp = settings(max_examples=5, deadline=None, derandomize=True)


def _models(n, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), n)
    base = fixed_params(dtype=dtype)
    return [
        jax.tree.map(lambda x, k=k: (x + jax.random.normal(k, x.shape)).astype(dtype), base)
        for k in keys
    ]


def _np_mean(models, weights=None):
    w = np.ones(len(models)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    return jax.tree.map(
        lambda *xs: sum(wi * np.asarray(x, np.float64) for wi, x in zip(w, xs)), *models
    )


# ---------------------------------------------------------------------------
# Soups and weighted averages
# ---------------------------------------------------------------------------


@hyp
@given(params=pytrees(), n=st.integers(1, 4))
def test_uniform_soup_of_identical_models_is_the_model(params, n):
    chex.assert_trees_all_equal(optlab.uniform_soup([params] * n), params)
    chex.assert_trees_all_equal(optlab.weighted_average([params] * n, [0.3] * n), params)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_uniform_soup_is_the_mean(dtype):
    models = _models(3, dtype=dtype)
    soup = optlab.uniform_soup(models)
    chex.assert_trees_all_equal_shapes_and_dtypes(soup, models[0])
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    tree_allclose(
        jax.tree.map(lambda x: x.astype(jnp.float32), soup), _np_mean(models), rtol=tol, atol=tol
    )


def test_weighted_average():
    models = _models(3)
    w = [1.0, 2.0, 5.0]
    tree_allclose(optlab.weighted_average(models, w), _np_mean(models, w), rtol=1e-6, atol=1e-6)
    # normalize=False: the plain weighted sum.
    raw = optlab.weighted_average(models, [0.5, 0.5, 1.0], normalize=False)
    expected = jax.tree.map(lambda a, b, c: 0.5 * a + 0.5 * b + c, *models)
    tree_allclose(raw, expected, rtol=1e-6, atol=1e-6)
    # Rewarded soups: preference weights on the simplex; traced weights work.
    jitted = jax.jit(lambda w: optlab.weighted_average(models, w))(jnp.array(w))
    tree_allclose(jitted, _np_mean(models, w), rtol=1e-6, atol=1e-6)


def test_none_leaves_pass_through():
    a = {"w": jnp.ones(2), "frozen": None}
    b = {"w": jnp.zeros(2), "frozen": None}
    assert optlab.uniform_soup([a, b])["frozen"] is None
    assert optlab.slerp(a, b, 0.5)["frozen"] is None
    assert optlab.model_stock(a, [a, b])["frozen"] is None


# ---------------------------------------------------------------------------
# Greedy soup
# ---------------------------------------------------------------------------


@hyp
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6))
def test_greedy_soup_never_lowers_the_best_single_score(seed, n):
    models = _models(n, seed=seed)
    target = jax.tree.map(lambda x: x + 0.3, fixed_params())

    def score(p):  # held-out score: closeness to an unknown target
        return -float(
            sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))
        )

    soup, chosen = optlab.greedy_soup(models, score)
    singles = [score(m) for m in models]
    assert chosen[0] == int(np.argmax(singles))
    assert len(set(chosen)) == len(chosen)
    assert score(soup) >= max(singles) - 1e-6
    tree_allclose(soup, optlab.uniform_soup([models[i] for i in chosen]))


def test_greedy_soup_adds_helpful_models_and_skips_harmful_ones():
    good = [{"w": jnp.array(1.0)}, {"w": jnp.array(-1.0)}]  # average hits the target 0
    bad = {"w": jnp.array(10.0)}
    soup, chosen = optlab.greedy_soup(good + [bad], lambda p: -abs(float(p["w"])))
    assert sorted(chosen) == [0, 1]
    assert float(soup["w"]) == 0.0
    # Precomputed scores skip the individual evaluations.
    _, chosen2 = optlab.greedy_soup(
        good + [bad], lambda p: -abs(float(p["w"])), scores=[-1.0, -1.0, -10.0]
    )
    assert chosen2 == chosen


# ---------------------------------------------------------------------------
# Interpolation and SLERP
# ---------------------------------------------------------------------------


@hyp
@given(data=st.data())
def test_interpolate_endpoints(data):
    a = data.draw(pytrees(), label="a")
    b = jax.tree.map(lambda x: x * 2.0 + 1.0, a)
    chex.assert_trees_all_equal(optlab.interpolate(a, b, 0.0), a)
    chex.assert_trees_all_equal(optlab.interpolate(a, b, 1.0), b)
    mid = optlab.interpolate(a, b, 0.5)
    tree_allclose(mid, jax.tree.map(lambda x, y: (x + y) / 2, a, b), rtol=1e-6, atol=1e-5)


@hyp
@given(data=st.data())
def test_slerp_endpoints_and_norm_preservation(data):
    a = data.draw(pytrees(), label="a")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(a)))
    b_leaves = [jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(a))]
    # Rescale b to the norm of a, leaf by leaf.
    b_leaves = [
        y * jnp.linalg.norm(x) / jnp.maximum(jnp.linalg.norm(y), 1e-30)
        for x, y in zip(jax.tree.leaves(a), b_leaves)
    ]
    b = jax.tree.unflatten(jax.tree.structure(a), b_leaves)
    chex.assert_trees_all_equal(optlab.slerp(a, b, 0.0), a)
    chex.assert_trees_all_equal(optlab.slerp(a, b, 1.0), b)
    t = data.draw(st.floats(0.0, 1.0), label="t")
    out = optlab.slerp(a, b, t)
    for x, y, o in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(out)):
        nx = float(jnp.linalg.norm(x))
        cos = float(jnp.vdot(x, y)) / max(nx * float(jnp.linalg.norm(y)), 1e-30)
        if abs(cos) <= 0.9995:  # spherical branch: the norm is kept
            np.testing.assert_allclose(float(jnp.linalg.norm(o)), nx, rtol=1e-4)


def test_slerp_colinear_and_degenerate_fall_back_to_linear():
    a = {"v": jnp.array([1.0, 2.0]), "s": jnp.array(3.0), "z": jnp.zeros(2)}
    b = {"v": jnp.array([2.0, 4.0]), "s": jnp.array(-1.0), "z": jnp.array([1.0, 0.0])}
    tree_allclose(optlab.slerp(a, b, 0.3), optlab.interpolate(a, b, 0.3))
    anti = {"v": -a["v"], "s": a["s"], "z": a["z"]}
    tree_allclose(optlab.slerp(a, anti, 0.5), optlab.interpolate(a, anti, 0.5))


def test_slerp_orthogonal_unit_vectors():
    a, b = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}
    for t in (0.25, 0.5, 0.9):
        out = optlab.slerp(a, b, t)["w"]
        np.testing.assert_allclose(
            out, [np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)], rtol=1e-6, atol=1e-6
        )


# ---------------------------------------------------------------------------
# Model Stock
# ---------------------------------------------------------------------------


@hyp
@given(seed=st.integers(0, 2**16), k=st.integers(2, 4), spread=st.floats(0.0, 3.0))
def test_model_stock_ratio_in_unit_interval(seed, k, spread):
    anchor = fixed_params()
    shared = jax.tree.map(lambda x: jnp.ones_like(x), anchor)
    keys = jax.random.split(jax.random.key(seed), k)
    fts = [
        jax.tree.map(
            lambda x, s, kk=kk: x + s + spread * jax.random.normal(kk, x.shape), anchor, shared
        )
        for kk in keys
    ]
    merged, ratios = optlab.model_stock(anchor, fts, return_ratios=True)
    for r in jax.tree.leaves(ratios):
        assert 0.0 <= float(r) <= 1.0
    # The merge lies on the segment between the anchor and the fine-tuned average.
    avg = optlab.uniform_soup(fts)
    expected = jax.tree.map(lambda a, m, r: r * m + (1 - r) * a, anchor, avg, ratios)
    tree_allclose(merged, expected, rtol=1e-5, atol=1e-5)


def test_model_stock_formula_for_two_models():
    w0 = {"w": jnp.zeros(2)}
    d1, d2 = np.array([1.0, 0.0]), np.array([np.cos(1.0), np.sin(1.0)])  # angle 1 rad
    fts = [{"w": jnp.asarray(d1, jnp.float32)}, {"w": jnp.asarray(d2, jnp.float32)}]
    merged, ratios = optlab.model_stock(w0, fts, return_ratios=True)
    c = np.cos(1.0)
    t = 2 * c / (1 + c)
    np.testing.assert_allclose(float(ratios["w"]), t, rtol=1e-6)
    np.testing.assert_allclose(merged["w"], t * (d1 + d2) / 2, rtol=1e-6, atol=1e-7)
    # Parallel deltas: t = 1 (the plain average); orthogonal deltas: t = 0 (the anchor).
    par = optlab.model_stock(w0, [fts[0], {"w": 2 * fts[0]["w"]}], return_ratios=True)[1]
    assert float(par["w"]) == pytest.approx(1.0)
    ortho = optlab.model_stock(w0, [fts[0], {"w": jnp.array([0.0, 1.0])}])
    chex.assert_trees_all_equal(ortho, w0)


# ---------------------------------------------------------------------------
# Task arithmetic
# ---------------------------------------------------------------------------


def test_task_arithmetic():
    base, fts = fixed_params(), _models(3)
    got = optlab.task_arithmetic(base, fts, scaling=0.7)
    expected = jax.tree.map(lambda b, *w: b + 0.7 * sum(x - b for x in w), base, *fts)
    tree_allclose(got, expected, rtol=1e-5, atol=1e-5)
    per_task = optlab.task_arithmetic(base, fts, scaling=[1.0, 0.0, -0.5])
    expected = jax.tree.map(lambda b, w1, w2, w3: b + (w1 - b) - 0.5 * (w3 - b), base, *fts)
    tree_allclose(per_task, expected, rtol=1e-5, atol=1e-5)
    # Scaling 1/n is the uniform soup of the fine-tuned models.
    tree_allclose(
        optlab.task_arithmetic(base, fts, 1 / 3), optlab.uniform_soup(fts), rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

_A = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
_SHAPE = {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}
_STRUCT = {"w": jnp.ones((2, 3))}


@pytest.mark.parametrize(
    "other,match", [(_SHAPE, "different shapes at \\['w'\\]"), (_STRUCT, "same tree structure")]
)
@pytest.mark.parametrize(
    "call",
    [
        lambda a, o: optlab.uniform_soup([a, o]),
        lambda a, o: optlab.weighted_average([a, o], [1.0, 1.0]),
        lambda a, o: optlab.greedy_soup([a, o], lambda p: 0.0),
        lambda a, o: optlab.interpolate(a, o, 0.5),
        lambda a, o: optlab.slerp(a, o, 0.5),
        lambda a, o: optlab.model_stock(a, [a, o]),
        lambda a, o: optlab.task_arithmetic(a, [o]),
    ],
    ids=[
        "uniform_soup",
        "weighted_average",
        "greedy_soup",
        "interpolate",
        "slerp",
        "model_stock",
        "task_arithmetic",
    ],
)
def test_mismatched_trees_raise(call, other, match):
    with pytest.raises(ValueError, match=match):
        call(_A, other)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: optlab.uniform_soup([]), ValueError, "uniform_soup.*models"),
        (lambda: optlab.uniform_soup(_A), TypeError, "uniform_soup.*list or tuple"),
        (lambda: optlab.weighted_average([_A, _A], [1.0]), ValueError, "weighted_average.*weights"),
        (
            lambda: optlab.weighted_average([_A, _A], [1.0, -1.0]),
            ValueError,
            "weighted_average.*nonzero sum",
        ),
        (lambda: optlab.model_stock(_A, [_A]), ValueError, "model_stock.*at least 2"),
        (
            lambda: optlab.task_arithmetic(_A, [_A], [1.0, 2.0]),
            ValueError,
            "task_arithmetic.*scaling",
        ),
        (lambda: optlab.interpolate(_A, _A, float("nan")), ValueError, "interpolate.*t"),
        (
            lambda: optlab.slerp(_A, _A, 0.5, colinear_threshold=2.0),
            ValueError,
            "slerp.*colinear_threshold",
        ),
        (
            lambda: optlab.greedy_soup([_A, _A], lambda p: 0.0, scores=[1.0]),
            ValueError,
            "greedy_soup.*scores",
        ),
    ],
)
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
