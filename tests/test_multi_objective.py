"""Multi-objective combination: UPGrad, PCGrad, MGDA."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import optlab

TOL = 1e-3  # relative to the largest squared gradient norm


def combine(tx, jac, state=None):
    """Combine a stacked ``(m, n)`` Jacobian (or a stacked pytree)."""
    tree = jac if isinstance(jac, dict) else {"x": jac}
    params = jax.tree.map(lambda a: a[0], tree)
    state = tx.init(params) if state is None else state
    out, state = tx.update(tree, state, params)
    return (out if isinstance(jac, dict) else out["x"]), state


@st.composite
def conflicting_jacobians(draw):
    """Random ``(m, n)`` Jacobians with at least one conflicting pair of rows."""
    m = draw(st.integers(2, 4))  # few distinct shapes: each one compiles once
    n = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1e-2, 1.0, 10.0]))
    jac = np.random.default_rng(seed).normal(size=(m, n))
    if jac[0] @ jac[1] >= 0:  # force a conflict between the first two rows
        jac[1] -= 2.0 * (jac[0] @ jac[1]) / (jac[0] @ jac[0]) * jac[0] + 0.1 * jac[0]
    return jnp.asarray(scale * jac, jnp.float32)


_UPGRAD = jax.jit(lambda j: combine(optlab.upgrad(), j)[0])
_MGDA = jax.jit(lambda j: combine(optlab.mgda(), j)[0])


@settings(max_examples=30, deadline=None)
@given(jac=conflicting_jacobians())
def test_upgrad_and_mgda_conflict_with_no_objective(jac):
    assert float(jac[0] @ jac[1]) < 0
    scale = float(jnp.max(jnp.sum(jac**2, axis=1)))
    for fn in (_UPGRAD, _MGDA):
        d = fn(jac)
        assert bool(jnp.all(jnp.isfinite(d)))
        assert float(jnp.min(jac @ d)) >= -TOL * scale
    # The plain mean does conflict in some of these cases; these do not.


def test_mean_gradient_can_conflict_but_upgrad_does_not():
    jac = jnp.array([[1.0, 0.0], [-3.0, 0.5]])
    mean = jnp.mean(jac, axis=0)
    assert float(jnp.min(jac @ mean)) < 0
    d = _UPGRAD(jac)
    assert float(jnp.min(jac @ d)) >= -1e-5


def _exact_upgrad(jac, reg_eps=1e-6):
    """UPGrad by enumerating the active sets of each QP (float64 numpy)."""
    jac = np.asarray(jac, np.float64)
    m = jac.shape[0]
    gram = jac @ jac.T
    gram = gram / np.trace(gram) + reg_eps * np.eye(m)
    vs = []
    for i in range(m):
        u = np.eye(m)[i]
        best = None
        for r in range(m + 1):
            for free in itertools.combinations(range(m), r):
                free = list(free)
                fixed = [k for k in range(m) if k not in free]
                v = u.copy()
                if free:
                    rhs = -gram[np.ix_(free, fixed)] @ u[fixed]
                    v[free] = np.linalg.solve(gram[np.ix_(free, free)], rhs)
                if np.all(v >= u - 1e-12) and np.all((gram @ v)[fixed] >= -1e-12):
                    if best is None or v @ gram @ v < best @ gram @ best:
                        best = v
        vs.append(best)
    return jac.T @ np.mean(vs, axis=0)


@pytest.mark.parametrize("seed", range(5))
def test_upgrad_matches_exact_qp_solution(seed):
    rng = np.random.default_rng(seed)
    jac = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    np.testing.assert_allclose(np.asarray(_UPGRAD(jac)), _exact_upgrad(jac), rtol=1e-3, atol=1e-4)


def test_upgrad_without_conflict_is_the_mean():
    jac = jnp.array([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.1, 2.0]])
    assert bool(jnp.all(jac @ jac.T >= 0))
    np.testing.assert_allclose(_UPGRAD(jac), jnp.mean(jac, axis=0), rtol=1e-4, atol=1e-6)


def test_mgda_is_the_min_norm_point():
    # Two objectives: closed form a = clip(<g2 - g1, g2> / ||g1 - g2||^2, 0, 1).
    g1, g2 = jnp.array([2.0, 0.0, 1.0]), jnp.array([-1.0, 1.0, 0.0])
    a = jnp.clip((g2 - g1) @ g2 / jnp.sum((g1 - g2) ** 2), 0.0, 1.0)
    want = a * g1 + (1 - a) * g2
    np.testing.assert_allclose(_MGDA(jnp.stack([g1, g2])), want, rtol=1e-5, atol=1e-6)
    # Pareto stationary (0 in the hull): the direction vanishes.
    d = _MGDA(jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
    assert float(jnp.linalg.norm(d)) < 1e-5
    # A dominated row does not matter: the result is the smaller gradient.
    np.testing.assert_allclose(_MGDA(jnp.array([[1.0, 0.0], [3.0, 0.0]])), [1.0, 0.0], atol=1e-6)


def test_mgda_inner_products_at_least_the_squared_norm():
    rng = np.random.default_rng(3)
    for _ in range(10):
        jac = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
        d = _MGDA(jac)
        assert float(jnp.min(jac @ d)) >= float(d @ d) - 1e-4


def _pcgrad_reference(jac, order_fn):
    jac = np.asarray(jac, np.float64)
    out = []
    for i, g in enumerate(jac):
        g = g.copy()
        for j in order_fn(i):
            if j != i and g @ jac[j] < 0:
                g -= (g @ jac[j]) / (jac[j] @ jac[j]) * jac[j]
        out.append(g)
    return np.sum(out, axis=0)


def test_pcgrad_two_objectives_removes_the_conflict():
    g1, g2 = jnp.array([1.0, 0.5, 0.0]), jnp.array([-1.0, 1.0, 0.5])
    assert float(g1 @ g2) < 0
    jac = jnp.stack([g1, g2])
    d, _ = combine(optlab.pcgrad(), jac)
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    np.testing.assert_allclose(d, p1 + p2, rtol=1e-5, atol=1e-6)
    assert float(p1 @ g2) == pytest.approx(0.0, abs=1e-6)  # projected: no conflict left
    assert float(d @ g1) >= -1e-6 and float(d @ g2) >= -1e-6
    # Without a conflict nothing is projected: the sum.
    ok = jnp.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0]])
    np.testing.assert_allclose(combine(optlab.pcgrad(), ok)[0], ok.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        combine(optlab.pcgrad(reduction="mean"), ok)[0], ok.mean(axis=0), rtol=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(jac=conflicting_jacobians().filter(lambda j: j.shape[0] == 2))
def test_pcgrad_two_objectives_property(jac):
    d, _ = combine(optlab.pcgrad(), jac)
    scale = float(jnp.max(jnp.sum(jac**2, axis=1)))
    assert float(jnp.min(jac @ d)) >= -1e-5 * scale


def test_pcgrad_matches_reference_fixed_order():
    rng = np.random.default_rng(0)
    jac = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    d, _ = combine(optlab.pcgrad(shuffle=False), jac)
    np.testing.assert_allclose(d, _pcgrad_reference(jac, lambda i: range(4)), rtol=1e-4, atol=1e-5)


def test_pcgrad_random_order_is_one_of_the_orders_and_key_changes():
    rng = np.random.default_rng(3)  # a Jacobian where the order matters
    jac = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    tx = optlab.pcgrad(seed=7)
    state = tx.init({"x": jac[0]})
    keys, outs = [np.asarray(state.key)], []
    step = jax.jit(lambda s: tx.update({"x": jac}, s, {"x": jac[0]}))
    for _ in range(8):
        d, state = step(state)
        keys.append(np.asarray(state.key))
        outs.append(np.asarray(d["x"]))
    assert len({k.tobytes() for k in keys}) == len(keys)
    perms = list(itertools.permutations(range(3)))
    g = np.asarray(jac, np.float64)

    def projected(i, order):  # PCGrad's surgery of objective i in the given order
        out = g[i].copy()
        for j in order:
            if j != i and out @ g[j] < 0:
                out -= (out @ g[j]) / (g[j] @ g[j]) * g[j]
        return out

    # Each objective draws its own order: every output is the sum for some orders.
    candidates = [
        sum(projected(i, o) for i, o in enumerate(orders))
        for orders in itertools.product(perms, repeat=3)
    ]
    for out in outs:
        assert min(np.max(np.abs(out - c)) for c in candidates) < 1e-4
    assert len({o.round(5).tobytes() for o in outs}) > 1  # the order is redrawn every step


def test_pytree_combination_matches_flattened():
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(3, 2, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    flat = jnp.concatenate([a.reshape(3, -1), b], axis=1)
    for tx in (optlab.upgrad(), optlab.mgda(), optlab.pcgrad(shuffle=False)):
        tree, _ = combine(tx, {"a": a, "b": b, "frozen": None})
        assert tree["frozen"] is None and tree["a"].shape == (2, 3) and tree["b"].shape == (4,)
        whole, _ = combine(tx, flat)
        np.testing.assert_allclose(
            jnp.concatenate([tree["a"].ravel(), tree["b"]]), whole, rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("name", ["upgrad", "mgda"])
def test_converges_to_the_pareto_set(name):
    a, b = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])

    def losses(p):
        return jnp.stack([jnp.sum((p["x"] - a) ** 2), jnp.sum((p["x"] - b) ** 2)])

    tx = optax.chain(getattr(optlab, name)(), optax.sgd(0.1))
    params = {"x": jnp.array([2.0, 2.0])}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.jacrev(losses)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(200):
        params, state = step(params, state)
    x = params["x"]
    # The Pareto set is the segment [a, b]: x1 + x2 = 1 with both coordinates in [0, 1].
    assert float(jnp.abs(x[0] + x[1] - 1.0)) < 1e-3
    assert bool(jnp.all((x > -1e-3) & (x < 1.0 + 1e-3)))


def test_dtypes_and_validation():
    jac = {"w": jnp.ones((3, 4), jnp.bfloat16)}
    for tx in (optlab.upgrad(), optlab.mgda(), optlab.pcgrad()):
        out, _ = combine(tx, jac)
        assert out["w"].dtype == jnp.bfloat16 and out["w"].shape == (4,)
    with pytest.raises(TypeError, match="upgrad.*max_iters"):
        optlab.upgrad(max_iters=2.5)
    with pytest.raises(ValueError, match="upgrad.*reg_eps.*0"):
        optlab.upgrad(reg_eps=0.0)
    with pytest.raises(ValueError, match="mgda.*max_iters.*0"):
        optlab.mgda(max_iters=0)
    with pytest.raises(ValueError, match="pcgrad.*reduction.*'max'"):
        optlab.pcgrad(reduction="max")
    with pytest.raises(ValueError, match="pcgrad.*seed.*-1"):
        optlab.pcgrad(seed=-1)
    with pytest.raises(ValueError, match="upgrad.*objective axis"):
        combine(optlab.upgrad(), {"a": jnp.ones((3, 2)), "b": jnp.ones((2, 2))})
    with pytest.raises(TypeError, match="mgda.*floating"):
        optlab.mgda().init({"w": jnp.ones(3, jnp.int32)})
