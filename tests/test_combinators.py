"""Tests for optlab/_combinators.py: ``skip_nonfinite``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from helpers import fixed_params, parabola, tree_allclose


def _grads(params, seed):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, new)


def _poison(tree, value=jnp.nan):
    """Same tree with one entry of its first leaf set to ``value``."""
    leaves, treedef = jax.tree.flatten(tree)
    leaves[0] = leaves[0].reshape(-1).at[0].set(value).reshape(leaves[0].shape)
    return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_nonfinite_gradient_leaves_params_and_state_bit_identical(bad):
    params = fixed_params()
    tx = optlab.skip_nonfinite(optax.adam(1e-2))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for i in range(2):  # a few good steps first, so the state is non-trivial
        u, state = update(_grads(params, i), state, params)
        params = optax.apply_updates(params, u)
    updates, new_state = update(_poison(_grads(params, 7), bad), state, params)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
    chex.assert_trees_all_equal(optax.apply_updates(params, updates), params)
    chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)  # bit-identical
    assert int(new_state.consecutive_skips) == 1
    assert int(new_state.total_skips) == 1
    assert not bool(new_state.last_finite)


def test_counters_count_and_reset():
    params = fixed_params()
    tx = optlab.skip_nonfinite(optax.adam(1e-2))
    state = tx.init(params)
    update = jax.jit(tx.update)
    pattern = [False, False, True, False, True, True]  # True = good step
    expected_consecutive = [1, 2, 0, 1, 0, 0]
    expected_total = [1, 2, 2, 3, 3, 3]
    for i, good in enumerate(pattern):
        g = _grads(params, i)
        _, state = update(g if good else _poison(g), state, params)
        assert int(state.consecutive_skips) == expected_consecutive[i]
        assert int(state.total_skips) == expected_total[i]
        assert bool(state.last_finite) == good
        assert state.consecutive_skips.dtype == jnp.int32 and state.total_skips.dtype == jnp.int32


def test_good_steps_equal_inner_optimizer_and_bad_steps_are_invisible():
    """Bad steps interleaved with good ones: the good steps are exactly adam's steps."""
    params0 = fixed_params()
    inner = optax.adam(1e-2)
    tx = optlab.skip_nonfinite(inner)
    p_ref, s_ref = params0, inner.init(params0)
    p, s = params0, tx.init(params0)
    update, ref_update = jax.jit(tx.update), jax.jit(inner.update)
    for i in range(5):
        g = _grads(p_ref, i)
        u_ref, s_ref = ref_update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u_ref)
        _, s = update(_poison(g), s, p)  # a bad step between every good step
        u, s = update(g, s, p)
        chex.assert_trees_all_equal(u, u_ref)
        p = optax.apply_updates(p, u)
    chex.assert_trees_all_equal(p, p_ref)
    chex.assert_trees_all_equal(s.inner_state, s_ref)
    assert int(s.total_skips) == 5


def _nan_when_norm_is_zero():
    """An (unguarded) normalizing transform: 0/0 = NaN for a zero gradient."""

    def init_fn(params):
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        norm = optax.tree.norm(updates)
        return jax.tree.map(lambda g: g / norm, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def test_checks_the_produced_updates_not_only_the_gradients():
    """Finite gradients, NaN updates: optax.apply_if_finite applies them, skip_nonfinite skips."""
    params = {"w": jnp.ones(3)}
    zero = {"w": jnp.zeros(3)}
    inner = _nan_when_norm_is_zero()
    guarded = optax.apply_if_finite(inner, 3)
    optax_u, _ = guarded.update(zero, guarded.init(params))
    assert np.isnan(np.asarray(optax_u["w"])).all()  # what optax does
    tx = optlab.skip_nonfinite(inner)
    updates, state = tx.update(zero, tx.init(params))
    chex.assert_trees_all_equal(updates, zero)
    assert int(state.total_skips) == 1


def test_checks_new_nonfinite_state_but_allows_inf_initialised_state():
    """State entries that *become* non-finite are caught; an inf-initialised entry is fine."""

    def inner():
        def init_fn(params):
            return {"best": jnp.array(jnp.inf), "acc": jax.tree.map(jnp.zeros_like, params)}

        def update_fn(updates, state, params=None):
            acc = jax.tree.map(lambda a, g: a + g * 1e30, state["acc"], updates)  # overflows
            best = jnp.minimum(state["best"], optax.tree.norm(updates))
            return updates, {"best": best, "acc": acc}

        return optax.GradientTransformation(init_fn, update_fn)

    params = {"w": jnp.ones(2)}
    tx = optlab.skip_nonfinite(inner())
    state = tx.init(params)
    u, state = tx.update({"w": jnp.array([1.0, 2.0])}, state)  # inf "best" in the state: fine
    assert int(state.total_skips) == 0
    chex.assert_trees_all_equal(u, {"w": jnp.array([1.0, 2.0])})
    old_inner = state.inner_state
    u, state = tx.update({"w": jnp.array([1e10, 1.0])}, state)  # acc overflows to inf
    assert int(state.total_skips) == 1
    chex.assert_trees_all_equal(u, {"w": jnp.zeros(2)})
    chex.assert_trees_all_equal(state.inner_state, old_inner)


def test_max_consecutive_gives_up_visibly():
    params = {"w": jnp.ones(2)}
    tx = optlab.skip_nonfinite(optax.sgd(0.1), max_consecutive=2)
    state = tx.init(params)
    bad = {"w": jnp.array([jnp.nan, 1.0])}
    outs = []
    for _ in range(4):
        u, state = tx.update(bad, state, params)
        outs.append(bool(np.isnan(np.asarray(u["w"])).any()))
    assert outs == [False, False, True, True]  # the 3rd consecutive bad step is applied
    assert int(state.total_skips) == 4


def test_prng_key_in_inner_state_is_not_advanced_on_a_skipped_step():
    params = {"w": jnp.ones(3)}
    tx = optlab.skip_nonfinite(optax.add_noise(0.1, 0.5, key=jax.random.key(0)))
    state = tx.init(params)
    _, skipped = tx.update({"w": jnp.array([jnp.nan, 0.0, 0.0])}, state, params)
    chex.assert_trees_all_equal(skipped.inner_state, state.inner_state)
    u1, _ = tx.update({"w": jnp.zeros(3)}, skipped, params)
    u2, _ = tx.update({"w": jnp.zeros(3)}, state, params)
    chex.assert_trees_all_equal(u1, u2)


def test_none_leaves_and_empty_tree():
    tx = optlab.skip_nonfinite(optax.adam(1e-2))
    params = {"w": jnp.ones(2), "frozen": None}
    state = tx.init(params)
    u, _ = tx.update({"w": jnp.array([jnp.nan, 1.0]), "frozen": None}, state, params)
    assert u["frozen"] is None
    chex.assert_trees_all_equal(u["w"], jnp.zeros(2))
    u, s = tx.update({}, tx.init({}), {})
    assert u == {} and int(s.total_skips) == 0


def test_bfloat16_updates_keep_dtype():
    params = fixed_params(dtype=jnp.bfloat16)
    tx = optlab.skip_nonfinite(optax.adam(1e-2))
    state = tx.init(params)
    u, _ = tx.update(_poison(_grads(params, 0)), state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, params)


def test_converges_with_occasional_nan_gradients():
    tx = optlab.skip_nonfinite(optax.adam(0.1))

    def loss(p):
        return parabola(p)

    params = {"x": jnp.zeros(3)}
    state = tx.init(params)

    @jax.jit
    def step(p, s, i):
        g = jax.grad(loss)(p)
        g = jax.tree.map(lambda x: jnp.where(i % 3 == 0, jnp.nan, x), g)  # every 3rd step NaN
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for i in range(150):
        params, state = step(params, state, i)
    chex.assert_tree_all_finite(params)
    tree_allclose(params, {"x": jnp.ones(3)}, atol=2e-2, rtol=0)
    assert int(state.total_skips) == 50


def test_no_retrace_under_jit():
    params = fixed_params()
    tx = optlab.skip_nonfinite(optax.adam(1e-2))
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(g, s, p):
        return tx.update(g, s, p)

    for i in range(3):
        g = _grads(params, i)
        _, state = step(g if i % 2 else _poison(g), state, params)


def test_bad_arguments():
    with pytest.raises(TypeError, match="skip_nonfinite.*inner"):
        optlab.skip_nonfinite(0.1)
    with pytest.raises(ValueError, match="skip_nonfinite.*max_consecutive"):
        optlab.skip_nonfinite(optax.sgd(0.1), max_consecutive=-1)
    with pytest.raises(TypeError, match="skip_nonfinite.*max_consecutive"):
        optlab.skip_nonfinite(optax.sgd(0.1), max_consecutive=1.5)


def test_integer_params_raise_type_error():
    tx = optlab.skip_nonfinite(optax.adam(1e-2))
    with pytest.raises(TypeError, match="skip_nonfinite.*floating point"):
        tx.init({"w": jnp.ones(2), "i": jnp.arange(2)})
