"""Issue 12 momentum rules: ADOPT, AdaMomentum, QHM/QHAdam, Ano, NAG-GS, Lion-K, and the
bias-corrected optimistic AMSGrad. Defining properties, matches with optax, references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import optlab
from helpers import fixed_params, quadratic_loss, run_optimizer, tree_allclose


def _grads(n, shape=(3, 2), seed=0, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), n)
    return [scale * jax.random.normal(k, shape) for k in keys]


def _directions(tx, grads, params=None):
    state = tx.init(grads[0] if params is None else params)
    out = []
    for g in grads:
        d, state = tx.update(g, state, params)
        out.append(np.asarray(d))
    return out, state


# ---------------------------------------------------------------------------
# ADOPT
# ---------------------------------------------------------------------------


def test_adopt_matches_optax_contrib_and_initializes_v_from_first_gradient():
    grads = _grads(6)
    ours, _state = _directions(optlab.scale_by_adopt(b1=0.8, b2=0.9), grads)
    ref, _ = _directions(contrib.scale_by_adopt(b1=0.8, b2=0.9), grads)
    np.testing.assert_allclose(np.stack(ours), np.stack(ref), rtol=1e-6, atol=1e-7)
    # First call: zero direction, v_0 = g_0^2.
    _, s1 = _directions(optlab.scale_by_adopt(), grads[:1])
    np.testing.assert_array_equal(ours[0], 0.0)
    np.testing.assert_allclose(s1.nu, grads[0] ** 2, rtol=1e-6)
    # Second call: m_1 = (1 - b1) clip(g_1 / |g_0|, 1^0.25 = 1).
    want = 0.2 * np.clip(grads[1] / np.abs(grads[0]), -1.0, 1.0)
    np.testing.assert_allclose(ours[1], want, rtol=1e-5)


def test_adopt_clips_at_step_to_the_quarter():
    g0, g = jnp.array([1e-3]), jnp.array([1.0])
    tx = optlab.scale_by_adopt(b1=0.0, b2=0.9999)  # b1 = 0: the direction is the clipped value
    state = tx.init(g0)
    _, state = tx.update(g0, state)  # v_0 = 1e-6: g / sqrt(v) stays far above the clip
    for t in range(1, 17):
        d, state = tx.update(g, state)  # the clip at the call after t earlier ones: t^0.25
        assert float(d[0]) == pytest.approx(t**0.25, rel=1e-5), t


def test_adopt_named_matches_optax_and_converges():
    params = fixed_params()
    p1, _, _ = run_optimizer(optlab.adopt(1e-2), quadratic_loss, params, 10)
    p2, _, _ = run_optimizer(contrib.adopt(1e-2), quadratic_loss, params, 10)
    tree_allclose(p1, p2, rtol=1e-6, atol=1e-6)


def test_adopt_infinite_gradient_stays_visible():
    tx = optlab.scale_by_adopt()
    g = jnp.array([1.0, 2.0])
    d, _state = tx.update(jnp.array([jnp.inf, 2.0]), tx.init(g))
    assert not np.isfinite(np.asarray(d)[0]) and np.isfinite(np.asarray(d)[1])


# ---------------------------------------------------------------------------
# Yogi (optax's, registered) and AdaMomentum
# ---------------------------------------------------------------------------


def test_yogi_is_optax_yogi():
    params = fixed_params()
    p1, _, _ = run_optimizer(optlab.yogi(1e-2), quadratic_loss, params, 10)
    p2, _, _ = run_optimizer(optax.yogi(1e-2), quadratic_loss, params, 10)
    tree_allclose(p1, p2, rtol=0, atol=0)


def test_adamomentum_second_moment_is_ema_of_squared_momentum():
    b1, b2, eps = 0.8, 0.95, 1e-8
    grads = _grads(5, (4,))
    got, _ = _directions(optlab.scale_by_adamomentum(b1, b2, eps), grads)
    m = v = np.zeros(4)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * np.asarray(g)
        v = b2 * v + (1 - b2) * m**2
        want = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(got[t - 1], want, rtol=1e-5)


# ---------------------------------------------------------------------------
# QHM / QHAdam
# ---------------------------------------------------------------------------


def test_qhm_nu_one_is_momentum_sgd_and_nu_zero_is_sgd():
    params, b1, lr = fixed_params(), 0.9, 0.1
    p1, _, _ = run_optimizer(optlab.qhm(lr, b1=b1, nu=1.0), quadratic_loss, params, 15)
    p2, _, _ = run_optimizer(optax.sgd(lr * (1 - b1), momentum=b1), quadratic_loss, params, 15)
    tree_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    p1, _, _ = run_optimizer(optlab.qhm(lr, b1=b1, nu=0.0), quadratic_loss, params, 15)
    p2, _, _ = run_optimizer(optax.sgd(lr), quadratic_loss, params, 15)
    tree_allclose(p1, p2, rtol=1e-6, atol=1e-6)


def test_qhadam_nu_one_is_adamw_and_mixes_gradient_otherwise():
    params = fixed_params()
    kw = {"b1": 0.9, "b2": 0.99, "eps": 1e-8, "weight_decay": 1e-2}
    p1, _, _ = run_optimizer(
        optlab.qhadam(1e-2, nu1=1.0, nu2=1.0, **kw), quadratic_loss, params, 15
    )
    p2, _, _ = run_optimizer(optax.adamw(1e-2, **kw), quadratic_loss, params, 15)
    tree_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    # Hand reference of two steps with nu1 = 0.7, nu2 = 0.5.
    b1, b2, nu1, nu2 = 0.9, 0.99, 0.7, 0.5
    grads = _grads(2, (3,))
    got, _ = _directions(optlab.scale_by_qhadam(b1, b2, nu1, nu2, eps=0.0), grads)
    m = v = np.zeros(3)
    for t, g in enumerate(map(np.asarray, grads), 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        mh, vh = m / (1 - b1**t), v / (1 - b2**t)
        want = ((1 - nu1) * g + nu1 * mh) / np.sqrt((1 - nu2) * g**2 + nu2 * vh)
        np.testing.assert_allclose(got[t - 1], want, rtol=1e-5)


# ---------------------------------------------------------------------------
# Ano
# ---------------------------------------------------------------------------


def test_ano_direction_is_sign_of_momentum_times_gradient_magnitude():
    b1, b2, eps = 0.9, 0.99, 1e-8
    grads = _grads(6, (5,), seed=3)
    got, _ = _directions(optlab.scale_by_ano(b1, b2, eps), grads)
    m = v = np.zeros(5)
    for t, g in enumerate(map(np.asarray, grads), 1):
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * np.sign(v - g**2) * g**2
        want = np.sign(m) * np.abs(g) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(got[t - 1], want, rtol=1e-5)
        np.testing.assert_array_equal(np.sign(got[t - 1]), np.sign(m))


# ---------------------------------------------------------------------------
# NAG-GS
# ---------------------------------------------------------------------------


def test_nag_gs_follows_the_papers_iteration():
    a_diag = np.array([1.0, 4.0, 0.25])
    loss = lambda x: 0.5 * jnp.sum(a_diag * x**2)
    alpha, mu, gamma = 0.2, 1.0, 1.5
    x0 = np.array([1.0, -1.0, 2.0])
    tx = optlab.scale_by_nag_gs(alpha, mu, gamma)
    params, _, _ = run_optimizer(tx, loss, jnp.asarray(x0), 8)
    # The paper's Algorithm (v_0 = x_0): x-step, gamma-step, v-step at the new point.
    x, v, g = x0.copy(), x0.copy(), gamma
    a = alpha / (1 + alpha)
    for _ in range(8):  # 8 calls = 8 iterations; the first x-step is trivial (v_0 = x_0)
        x = (1 - a) * x + a * v
        g = (1 - a) * g + a * mu
        v = (g * v + alpha * mu * x - alpha * a_diag * x) / (alpha * mu + g)
    np.testing.assert_allclose(params, x, rtol=1e-5, atol=1e-6)


def test_nag_gs_first_step_does_not_move_and_converges():
    loss = lambda x: jnp.sum((x["w"] - 0.3) ** 2)
    tx = optlab.nag_gs(0.3)
    x = {"w": jnp.array([1.0, -2.0])}
    u, _state = tx.update(jax.grad(loss)(x), tx.init(x), x)
    np.testing.assert_array_equal(u["w"], 0.0)
    _, _, losses = run_optimizer(tx, loss, x, 150)
    assert losses[-1] < 1e-6 * losses[0]


# ---------------------------------------------------------------------------
# Lion-K
# ---------------------------------------------------------------------------


def test_lion_kappa_l1_is_lion():
    params = fixed_params()
    p1, _, _ = run_optimizer(optlab.lion_kappa(1e-2, weight_decay=1e-2), quadratic_loss, params, 10)
    p2, _, _ = run_optimizer(optax.lion(1e-2, weight_decay=1e-2), quadratic_loss, params, 10)
    tree_allclose(p1, p2, rtol=1e-6, atol=1e-7)


def test_lion_kappa_pluggable_gradient():
    g = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[1.0, 0.0], [0.0, 0.0]])}
    tx = optlab.scale_by_lion_kappa(b1=0.0, kappa_grad="l2")  # b1 = 0: kappa'(g)
    d, _ = tx.update(g, tx.init(g))
    assert float(jnp.linalg.norm(d["a"])) == pytest.approx(1.0)
    assert float(jnp.linalg.norm(d["b"])) == pytest.approx(1.0)
    tx = optlab.scale_by_lion_kappa(b1=0.5, kappa_grad=lambda x: x)  # K = |x|^2 / 2
    d, _ = tx.update(g, tx.init(g))
    tree_allclose(d, jax.tree.map(lambda x: 0.5 * x, g))
    with pytest.raises(ValueError, match=r"optlab.scale_by_lion_kappa.*kappa_grad"):
        optlab.scale_by_lion_kappa(kappa_grad="l3")
    with pytest.raises(TypeError, match=r"optlab.scale_by_lion_kappa.*kappa_grad"):
        optlab.scale_by_lion_kappa(kappa_grad=3)


# ---------------------------------------------------------------------------
# Optimistic AMSGrad: bias correction
# ---------------------------------------------------------------------------


def test_optimistic_amsgrad_bias_correction_first_steps():
    g = jnp.array([2.0, -0.5])
    raw = optlab.scale_by_optimistic_amsgrad()
    d_raw, _ = raw.update(g, raw.init(g))
    # Uncorrected: (1 - b1) / sqrt(1 - b2) per unit sign, twice (AMSGrad + optimistic step).
    np.testing.assert_allclose(d_raw, 2 * 0.1 / np.sqrt(0.001) * np.sign(g), rtol=1e-4)
    tx = optlab.scale_by_optimistic_amsgrad(bias_correction=True)
    d, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(d, 2.0 * np.sign(g), rtol=1e-5)
    # Constant gradient: the corrected direction tends to 1 * sign(g) (the hint cancels).
    for _ in range(200):
        d, state = tx.update(g, state)
    np.testing.assert_allclose(d, np.sign(g), rtol=1e-3)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_optimistic_amsgrad_converges(bias_correction):
    tx = optax.chain(
        optlab.scale_by_optimistic_amsgrad(bias_correction=bias_correction),
        optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.05, 400)),
    )
    _, _, losses = run_optimizer(tx, quadratic_loss, fixed_params(), 400)
    assert losses[-1] < 1e-3 * losses[0]
