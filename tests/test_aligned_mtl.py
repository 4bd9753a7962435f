"""Aligned-MTL: the reference formula, the alignment (Gram of the aligned gradients is a
scaled identity), a non-conflicting case, convergence on two tasks, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


def _combine(jac, **kwargs):
    tx = optlab.aligned_mtl(**kwargs)
    tree = {"x": jnp.asarray(jac, jnp.float32)}
    d, _ = tx.update(tree, tx.init({"x": tree["x"][0]}))
    return np.asarray(d["x"], np.float64)


def _reference(jac, scale_mode="min"):
    """The reference code's Procrustes step in float64 numpy: returns (d, aligned rows)."""
    jac = np.asarray(jac, np.float64)
    grads = jac.T  # (n, m): one column per task, as in the reference
    lam, basis = np.linalg.eigh(grads.T @ grads)
    tol = lam.max() * len(lam) * np.finfo(np.float32).eps
    order = np.argsort(lam)[::-1]
    rank = int(np.sum(lam > tol))
    lam, basis = lam[order][:rank], basis[:, order][:, :rank]
    scale = {"min": lam[-1], "median": np.sort(lam)[(rank - 1) // 2], "rmse": lam.mean()}
    weights = basis * np.sqrt(scale[scale_mode]) / np.sqrt(lam)[None, :]
    aligned = grads @ (weights @ basis.T)  # (n, m)
    return aligned.sum(-1), aligned.T


_RNG = np.random.default_rng(0)
_FULL = _RNG.normal(size=(3, 6))
_DEFICIENT = np.concatenate([_FULL[:2], _FULL[:1] + 2.0 * _FULL[1:2]])  # rank 2


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("jac", [_FULL, _DEFICIENT], ids=["full_rank", "rank_deficient"])
def test_matches_the_reference_formula(jac, scale_mode):
    want, _ = _reference(jac, scale_mode)
    np.testing.assert_allclose(_combine(jac, scale_mode=scale_mode), want, rtol=2e-4, atol=2e-5)
    mean = _combine(jac, scale_mode=scale_mode, reduction="mean")
    np.testing.assert_allclose(mean, want / len(jac), rtol=2e-4, atol=2e-5)


def test_aligned_gradients_have_a_scaled_identity_gram():
    # The reference's aligned rows are orthogonal with squared norm lambda_min (condition
    # number 1), and the transform's output is their sum: so J d = sqrt(lambda_min) G^(1/2) 1
    # and ||d||^2 = m lambda_min, checked on the transform itself.
    jac = _FULL
    gram = jac @ jac.T
    lam, vecs = np.linalg.eigh(gram)
    _, aligned = _reference(jac)
    np.testing.assert_allclose(aligned @ aligned.T, lam[0] * np.eye(3), atol=1e-9)
    assert np.linalg.cond(aligned @ aligned.T) == pytest.approx(1.0)
    d = _combine(jac)
    sqrt_gram = (vecs * np.sqrt(lam)) @ vecs.T
    np.testing.assert_allclose(jac @ d, np.sqrt(lam[0]) * sqrt_gram @ np.ones(3), rtol=1e-3)
    np.testing.assert_allclose(d @ d, 3 * lam[0], rtol=1e-3)


def test_orthogonal_gradients_are_equalized_and_a_dominated_task_no_longer_conflicts():
    np.testing.assert_allclose(_combine([[3.0, 0.0], [0.0, 0.5]]), [0.5, 0.5], rtol=1e-5)
    # The plain sum follows the large task and conflicts with the small one; Aligned-MTL
    # does not (it is not guaranteed in general: see the docstring).
    jac = np.array([[10.0, 0.0], [-1.0, 1.0]])
    assert np.min(jac @ jac.sum(0)) < 0
    assert np.min(jac @ _combine(jac)) > 0.1


def test_converges_to_the_pareto_point_with_equal_task_gradient_norms():
    # L1 = |x - a|^2, L2 = 0.3 |x - b|^2: the Pareto set is the segment [a, b]; Aligned-MTL
    # stops where the two (opposite) gradients have equal norms: |x - a| / |x - b| = 0.3.
    a, b = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])

    def losses(p):
        return jnp.stack([jnp.sum((p["x"] - a) ** 2), 0.3 * jnp.sum((p["x"] - b) ** 2)])

    opt = optax.chain(optlab.aligned_mtl(), optax.sgd(0.05))

    @jax.jit
    def train(p):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.jacrev(losses)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (p, opt.init(p)), None, length=300)[0][0]

    p0 = {"x": jnp.array([2.0, 2.0])}
    final = train(p0)
    assert bool(jnp.all(losses(final) < losses(p0)))
    np.testing.assert_allclose(final["x"], a + (0.3 / 1.3) * (b - a), atol=5e-3)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="aligned_mtl.*scale_mode.*'max'"):
        optlab.aligned_mtl(scale_mode="max")
    with pytest.raises(ValueError, match="aligned_mtl.*reduction.*'avg'"):
        optlab.aligned_mtl(reduction="avg")
    tx = optlab.aligned_mtl()
    params = {"w": jnp.zeros(2), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match="aligned_mtl.*stacked"):
        tx.update({"w": jnp.zeros((2, 2)), "b": jnp.zeros((3, 3))}, tx.init(params), params)
    with pytest.raises(TypeError, match="aligned_mtl"):
        tx.init({"w": jnp.zeros(2, jnp.int32)})
