"""Bloop: projection of the auxiliary gradients orthogonally to the main gradient's EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


def _jac(rng, m=3):
    return {
        "w": jnp.asarray(rng.normal(size=(m, 4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(m, 3)), jnp.float32),
    }


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_aux_part_is_orthogonal_to_the_ema_and_main_kept():
    rng = np.random.default_rng(0)
    tx = optlab.bloop(decay=0.5, aux_weight=0.7)
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    ema = np.zeros(15)
    for _ in range(3):
        jac = _jac(rng)
        d, state = tx.update(jac, state)
        rows = np.stack([_flat(jax.tree.map(lambda x, i=i: x[i], jac)) for i in range(3)])
        ema = 0.5 * ema + 0.5 * rows[0]
        np.testing.assert_allclose(_flat(state.ema), ema, rtol=1e-5, atol=1e-6)
        aux = _flat(d) - rows[0]
        assert abs(aux @ ema) < 1e-4 * np.linalg.norm(aux) * np.linalg.norm(ema)
        want = rows[0] + 0.7 * sum(r - (r @ ema) / (ema @ ema) * ema for r in rows[1:])
        np.testing.assert_allclose(_flat(d), want, rtol=1e-4, atol=1e-5)


def test_aux_weight_zero_is_the_main_gradient():
    rng = np.random.default_rng(1)
    jac = _jac(rng)
    tx = optlab.bloop(aux_weight=0.0)
    d, _ = tx.update(jac, tx.init(jax.tree.map(lambda x: x[0], jac)))
    np.testing.assert_array_equal(_flat(d), _flat(jax.tree.map(lambda x: x[0], jac)))


def test_converges_to_the_main_minimum_where_the_sum_does_not():
    main = lambda w: (w[0] - 1.0) ** 2  # noqa: E731
    aux = lambda w: (w[0] + 1.0) ** 2 + (w[1] - 2.0) ** 2  # noqa: E731
    jac_fn = jax.jit(jax.jacrev(lambda w: jnp.stack([main(w), aux(w)])))

    def train(first):
        tx = optax.chain(first, optax.sgd(0.1))
        w = jnp.zeros(2)
        state = tx.init(w)
        for _ in range(150):
            u, state = tx.update(jac_fn(w), state, w)
            w = optax.apply_updates(w, u)
        return np.asarray(w)

    np.testing.assert_allclose(train(optlab.bloop(decay=0.5)), [1.0, 2.0], atol=2e-2)
    summed = optax.GradientTransformation(lambda p: (), lambda g, s, p=None: (g.sum(0), s))
    assert abs(train(summed)[0] - 1.0) > 0.5


def test_bad_input():
    with pytest.raises(ValueError, match="bloop.*decay.*1"):
        optlab.bloop(decay=1.0)
    with pytest.raises(ValueError, match="bloop.*aux_weight.*-1"):
        optlab.bloop(aux_weight=-1.0)
    tx = optlab.bloop()
    with pytest.raises(ValueError, match="bloop.*stacked"):
        tx.update(
            {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, tx.init({"w": jnp.zeros(3), "b": 0.0})
        )
