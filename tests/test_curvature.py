"""Issue 12 curvature methods: M-FAC (sliding-window empirical Fisher) and OASIS."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from helpers import run_optimizer


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_m_fac_equals_the_dense_inverse_damped_fisher():
    m, lam = 3, 0.05
    tx = optlab.scale_by_m_fac(num_grads=m, damping=lam)
    shapes = {"w": (2, 3), "b": (3,)}
    state = tx.init(jax.tree.map(jnp.zeros, shapes, is_leaf=lambda s: isinstance(s, tuple)))
    step = jax.jit(tx.update)
    history = []
    for k in range(7):  # past the window: the ring buffer wraps around twice
        keys = iter(jax.random.split(jax.random.key(k), 2))
        g = {n: jax.random.normal(next(keys), s) for n, s in shapes.items()}
        d, state = step(g, state)
        history.append(_flat(g))
        window = np.stack(history[-m:])  # the last m gradients, the current one included
        fisher = lam * np.eye(window.shape[1]) + window.T @ window / m
        np.testing.assert_allclose(
            _flat(d), np.linalg.solve(fisher, _flat(g)), rtol=2e-4, atol=1e-5
        )
    rows = np.concatenate(
        [np.asarray(b).reshape(m, -1) for b in jax.tree.leaves(state.grads)], axis=1
    )
    np.testing.assert_allclose(state.gram, rows @ rows.T, rtol=1e-5)  # the kept Gram matrix


def test_m_fac_converges():
    a = jax.random.normal(jax.random.key(0), (20, 5))
    y = a @ jnp.arange(1.0, 6.0)
    loss = lambda p: jnp.mean((a @ p["x"] - y) ** 2)
    tx = optlab.m_fac(0.5, num_grads=4, damping=1.0, momentum=0.5)
    _, _, losses = run_optimizer(tx, loss, {"x": jnp.zeros(5)}, 300)
    assert losses[-1] < 1e-4 * losses[0]


def test_m_fac_bad_inputs():
    with pytest.raises(TypeError, match=r"optlab.scale_by_m_fac.*num_grads"):
        optlab.scale_by_m_fac(num_grads=2.5)
    with pytest.raises(ValueError, match=r"optlab.m_fac.*damping"):
        optlab.m_fac(0.1, damping=0.0)


# ---------------------------------------------------------------------------
# OASIS
# ---------------------------------------------------------------------------

_C = np.array([1.0, 30.0, 0.2])


def _quartic(p):  # separable: its Hessian is diagonal, so Hutchinson's estimate is exact
    x = p["x"]
    return jnp.sum(_C * (0.5 * x**2 + 0.25 * x**4))


def _hvp(loss):
    return lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]


def test_oasis_follows_the_papers_adaptive_step():
    eta0, b2, alpha = 0.5, 0.9, 1e-5
    x0 = np.array([1.0, -0.5, 2.0])
    tx = optax.chain(optlab.scale_by_oasis(eta0, b2, alpha), optax.scale_by_learning_rate(eta0))
    params = {"x": jnp.asarray(x0)}
    state = tx.init(params)
    grad, hdiag = (lambda x: _C * (x + x**3)), (lambda x: _C * (1 + 3 * x**2))
    x, eta, theta, d = x0.copy(), eta0, np.inf, None
    x_prev = g_prev = None
    for k in range(12):
        u, state = tx.update(jax.grad(_quartic)(params), state, params, hvp_fn=_hvp(_quartic))
        params = optax.apply_updates(params, u)
        # The paper's Algorithm 1 (D_0 the first estimate, theta_0 = inf).
        g = grad(x)
        d = hdiag(x) if k == 0 else b2 * d + (1 - b2) * hdiag(x)
        dh = np.maximum(np.abs(d), alpha)
        if k > 0:
            dw, dg = x - x_prev, g - g_prev
            local = np.sqrt(np.sum(dh * dw**2)) / (2 * np.sqrt(np.sum(dg**2 / dh)))
            new_eta = min(np.sqrt(1 + theta) * eta, local)
            theta, eta = new_eta / eta, new_eta
        x_prev, g_prev = x, g
        x = x - eta * g / dh
        np.testing.assert_allclose(params["x"], x, rtol=2e-5, atol=1e-6)
    assert float(state[0].step_scale) != 1.0  # the step did adapt


def test_oasis_fixed_rate_is_diagonal_newton_on_a_diagonal_quadratic():
    c = jnp.array([1.0, 100.0])
    loss = lambda p: 0.5 * jnp.sum(c * p["x"] ** 2)
    tx = optlab.oasis(1.0, adaptive=False)
    params = {"x": jnp.array([1.0, -1.0])}
    u, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, hvp_fn=_hvp(loss))
    np.testing.assert_allclose(params["x"] + u["x"], 0.0, atol=1e-6)  # one Newton step


def test_oasis_converges_and_bad_inputs():
    params = {"x": jnp.array([1.0, -0.5, 2.0])}
    _, _, losses = run_optimizer(
        optlab.oasis(0.5), _quartic, params, 60, lambda p: {"hvp_fn": _hvp(_quartic)}
    )
    assert losses[-1] < 1e-8 * losses[0]
    with pytest.raises(TypeError, match=r"optlab.oasis.*schedule"):
        optlab.oasis(optax.constant_schedule(0.1))
    with pytest.raises(TypeError, match=r"optlab.scale_by_oasis.*schedule"):
        optlab.scale_by_oasis(optax.constant_schedule(0.1))
    with pytest.raises(ValueError, match=r"optlab.oasis.*alpha"):
        optlab.oasis(0.1, alpha=0.0)
    tx = optlab.oasis(0.1)
    with pytest.raises(ValueError, match=r"optlab.oasis.*hvp_fn"):
        tx.update(params, tx.init(params), params)
