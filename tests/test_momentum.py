"""Tests for optlab/_momentum.py: momentum and adaptive-moment transforms.

Each method gets its defining property (METHODS.md), numerical equality with optax
where optax has the method, a hand-derived reference trajectory (float64 NumPy
transcription of the paper / official update) where it does not, validation, and
convergence on a small quadratic.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import optlab
from helpers import fixed_params, parabola, pytrees, run_optimizer, tree_allclose
from optlab import _momentum

# Few examples and no shrinking: every example compiles a new scan.
hyp = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------


def _grad_seq(steps: int, seed: int = 0, scale: float = 1.0):
    """A stacked sequence of gradients {"w": (steps, 4, 3), "b": (steps, 3)}."""
    kw, kb = jax.random.split(jax.random.key(seed))
    return {
        "w": scale * jax.random.normal(kw, (steps, 4, 3), jnp.float32),
        "b": scale * jax.random.normal(kb, (steps, 3), jnp.float32),
    }


def _trajectory(tx, grads_seq, params=None):
    """Updates (stacked over steps) and final state of ``tx`` fed ``grads_seq`` (one jit)."""
    first = jax.tree.map(lambda g: g[0], grads_seq)
    params = first if params is None else params

    @jax.jit
    def run(grads_seq):
        def body(state, g):
            u, state = tx.update(g, state, params)
            return state, u

        state, us = jax.lax.scan(body, tx.init(params), grads_seq)
        return us, state

    return run(grads_seq)


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _np_adam(gs, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's direction for each step of a (steps, ...) float64 gradient array."""
    m = np.zeros_like(gs[0])
    v = np.zeros_like(gs[0])
    out = []
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return np.stack(out)


def _state_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if x.ndim > 0)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

BAD = [
    ("scale_by_momentum", dict(b1=1.0), "b1"),
    ("scale_by_momentum", dict(b1=-0.1), "b1"),
    ("scale_by_adam_family", dict(b1=1.0), "b1"),
    ("scale_by_adam_family", dict(b2=1.5), "b2"),
    ("scale_by_adam_family", dict(eps=-1e-8), "eps"),
    ("scale_by_adam_family", dict(eps_root=-1.0), "eps_root"),
    ("scale_by_adam_family", dict(amsgrad=True, adamax=True), "amsgrad"),
    ("scale_by_adam_family", dict(amsgrad=True, nesterov=True), "nesterov"),
    ("scale_by_adam_family", dict(adamax=True, eps_root=1e-8), "eps_root"),
    ("scale_by_diffgrad", dict(b1=1.0), "b1"),
    ("scale_by_diffgrad", dict(b2=-0.5), "b2"),
    ("scale_by_diffgrad", dict(eps=-1.0), "eps"),
    ("scale_by_ademamix", dict(b1=1.0), "b1"),
    ("scale_by_ademamix", dict(b3=1.0), "b3"),
    ("scale_by_ademamix", dict(alpha=-1.0), "alpha"),
    ("scale_by_ademamix", dict(eps=-1.0), "eps"),
    ("scale_by_ademamix", dict(b3_warmup=0), "b3_warmup"),
    ("scale_by_ademamix", dict(alpha_warmup=-3), "alpha_warmup"),
    ("scale_by_ademamix", dict(b3=optax.constant_schedule(0.99), b3_warmup=10), "b3_warmup"),
    (
        "scale_by_ademamix",
        dict(alpha=optax.constant_schedule(1.0), alpha_warmup=10),
        "alpha_warmup",
    ),
    ("mars_correction", dict(gamma=-0.1), "gamma"),
    ("mars_correction", dict(b1=1.0), "b1"),
    ("mars_correction", dict(max_norm=0.0), "max_norm"),
    ("scale_by_optimistic_amsgrad", dict(b1=1.0), "b1"),
    ("scale_by_optimistic_amsgrad", dict(b2=-0.1), "b2"),
    ("scale_by_optimistic_amsgrad", dict(eps=-1.0), "eps"),
    ("scale_by_lion", dict(b1=1.0), "b1"),
    ("scale_by_lion", dict(b2=2.0), "b2"),
    ("scale_by_signum", dict(b1=1.0), "b1"),
    ("scale_by_signum", dict(b1=-0.1), "b1"),
    ("scale_by_adafactor", dict(decay_rate=0.0), "decay_rate"),
    ("scale_by_adafactor", dict(epsilon=-1.0), "epsilon"),
    ("scale_by_adafactor", dict(min_dim_size_to_factor=0), "min_dim_size_to_factor"),
    ("scale_by_adafactor", dict(step_offset=-1), "step_offset"),
    ("scale_by_sgd_sai", dict(b1=1.0), "b1"),
    ("scale_by_sgd_sai", dict(eps=-1.0), "eps"),
]


@pytest.mark.parametrize(
    "name,kwargs,param", BAD, ids=[f"{n}-{p}-{i}" for i, (n, _, p) in enumerate(BAD)]
)
def test_bad_hyperparameters_raise_value_error(name, kwargs, param):
    with pytest.raises(ValueError, match=f"{name}.*{param}"):
        getattr(optlab, name)(**kwargs)


def test_bad_values_are_named_in_message():
    with pytest.raises(ValueError, match=r"scale_by_adam.*b1.*in \[0, 1\).*b1=1\.0"):
        optlab.scale_by_adam_family(b1=1.0)
    with pytest.raises(ValueError, match=r"scale_by_sgd_sai.*eps.*>= 0.*eps=-1\.0"):
        optlab.scale_by_sgd_sai(eps=-1.0)


def test_wrapper_hyperparameters_raise():
    with pytest.raises(ValueError, match="cautious.*eps"):
        optlab.cautious(optax.adam(1e-3), eps=0.0)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("scale_by_ademamix", dict(b3_warmup=2.5)),
        ("scale_by_adafactor", dict(min_dim_size_to_factor=2.0)),
    ],
)
def test_non_integer_step_counts_raise_type_error(name, kwargs):
    with pytest.raises(TypeError, match=name):
        getattr(optlab, name)(**kwargs)


def test_adafactor_requires_params():
    tx = optlab.scale_by_adafactor()
    g = {"w": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match="params"):
        tx.update(g, tx.init(g))


# ---------------------------------------------------------------------------
# Heavy-ball momentum, Adam family, Lion: equal to optax
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_optax_trace(nesterov):
    gs = _grad_seq(20)
    ours, _ = _trajectory(optlab.scale_by_momentum(0.8, nesterov), gs)
    ref, _ = _trajectory(optax.trace(decay=0.8, nesterov=nesterov), gs)
    tree_allclose(ours, ref)


@pytest.mark.parametrize(
    "variant,ref",
    [
        (dict(), optax.scale_by_adam(b1=0.8, b2=0.95, eps=1e-6)),
        (dict(nesterov=True), optax.scale_by_adam(b1=0.8, b2=0.95, eps=1e-6, nesterov=True)),
        (dict(amsgrad=True), optax.scale_by_amsgrad(b1=0.8, b2=0.95, eps=1e-6)),
        (dict(adamax=True), optax.scale_by_adamax(b1=0.8, b2=0.95, eps=1e-6)),
    ],
    ids=["adam", "nadam", "amsgrad", "adamax"],
)
def test_adam_variants_match_optax_over_20_steps(variant, ref):
    gs = _grad_seq(20, seed=1)
    ours, _ = _trajectory(optlab.scale_by_adam_family(b1=0.8, b2=0.95, eps=1e-6, **variant), gs)
    ref_updates, _ = _trajectory(ref, gs)
    tree_allclose(ours, ref_updates, rtol=1e-6, atol=1e-6)


def test_adam_matches_numpy_reference():
    gs = _grad_seq(5, seed=2)
    ours, _ = _trajectory(optlab.scale_by_adam_family(), gs)
    for k in gs:
        # float32 vs float64: 1 - 0.999**t carries a 5e-5 relative rounding error in float32.
        np.testing.assert_allclose(ours[k], _np_adam(np.asarray(gs[k], np.float64)), rtol=1e-4)


def test_amsgrad_v_hat_is_non_decreasing():
    # Gradients shrink over time, so the EMA v decreases while v_hat must not.
    gs = jax.tree.map(
        lambda g: g * jnp.exp(-0.3 * jnp.arange(20.0)).reshape((-1,) + (1,) * (g.ndim - 1)),
        _grad_seq(20, seed=3),
    )
    tx = optlab.scale_by_adam_family(b2=0.5, amsgrad=True)
    params = jax.tree.map(lambda g: g[0], gs)
    state = tx.init(params)
    update = jax.jit(tx.update)
    prev_max = state.nu_max
    saw_nu_decrease = False
    for t in range(20):
        prev_nu = state.nu
        _, state = update(jax.tree.map(lambda g, t=t: g[t], gs), state)
        for a, b in zip(jax.tree.leaves(prev_max), jax.tree.leaves(state.nu_max)):
            assert np.all(np.asarray(b) >= np.asarray(a))
        saw_nu_decrease |= any(
            np.any(np.asarray(b) < np.asarray(a))
            for a, b in zip(jax.tree.leaves(prev_nu), jax.tree.leaves(state.nu))
        )
        prev_max = state.nu_max
    assert saw_nu_decrease  # the property was actually exercised


@pytest.mark.parametrize("amsgrad", [False, True])
def test_low_precision_state_halves_state_bytes(amsgrad):
    params = {"w": jnp.zeros((64, 32), jnp.float32), "b": jnp.zeros((32,), jnp.float32)}
    full = optlab.scale_by_adam_family(amsgrad=amsgrad).init(params)
    half = optlab.scale_by_adam_family(
        amsgrad=amsgrad, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
    ).init(params)
    assert _state_bytes(half) * 2 == _state_bytes(full)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((half.mu, half.nu)))
    # The state stays bf16 after updates, and the updates stay float32 and close to Adam's.
    gs = jax.tree.map(
        lambda g: g[:, :64, :32] if g.ndim == 3 else g,
        {
            "w": jax.random.normal(jax.random.key(0), (5, 64, 32)),
            "b": jax.random.normal(jax.random.key(1), (5, 32)),
        },
    )
    tx = optlab.scale_by_adam_family(amsgrad=amsgrad, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    ours, state = _trajectory(tx, gs, params)
    ref, _ = _trajectory(optlab.scale_by_adam_family(amsgrad=amsgrad), gs, params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((state.mu, state.nu)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ours))
    tree_allclose(ours, ref, rtol=5e-2, atol=5e-2)


def test_lion_matches_optax():
    gs = _grad_seq(20, seed=4)
    ours, _ = _trajectory(optlab.scale_by_lion(b1=0.8, b2=0.95), gs)
    ref, _ = _trajectory(optax.scale_by_lion(b1=0.8, b2=0.95), gs)
    tree_allclose(ours, ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Signum
# ---------------------------------------------------------------------------


def test_signum_hand_derived_three_steps():
    gs = {"x": jnp.array([[0.5, -0.1, 1.0], [-0.1, -0.1, -3.0], [-0.1, 0.3, 0.5]])}
    ours, state = _trajectory(optlab.scale_by_signum(0.9), gs)
    # m1 = 0.1 g1 = [0.05, -0.01, 0.1]                  -> [ 1, -1,  1]
    # m2 = 0.9 m1 + 0.1 g2 = [0.035, -0.019, -0.21]     -> [ 1, -1, -1]
    # m3 = 0.9 m2 + 0.1 g3 = [0.0215, 0.0129, -0.139]   -> [ 1,  1, -1]
    np.testing.assert_array_equal(ours["x"], [[1, -1, 1], [1, -1, -1], [1, 1, -1]])
    np.testing.assert_allclose(state.mu["x"], [0.0215, 0.0129, -0.139], rtol=1e-5)


def test_signum_with_zero_momentum_is_sign_sgd():
    gs = _grad_seq(4, seed=5)
    ours, _ = _trajectory(optlab.scale_by_signum(0.0), gs)
    tree_allclose(ours, jax.tree.map(jnp.sign, gs), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# diffGrad
# ---------------------------------------------------------------------------


def test_diffgrad_first_step_literal():
    tx = optlab.scale_by_diffgrad()
    d, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))
    # Adam's first step is sign(g); xi = sigmoid(|g - 0|).
    np.testing.assert_allclose(d, [1 / (1 + math.exp(-1)), -1 / (1 + math.exp(-2))], rtol=1e-5)


def test_diffgrad_hand_derived_three_steps():
    g = np.array([[1.0, -2.0, 0.5], [0.5, -2.0, -1.0], [-1.0, 0.0, -1.5]])
    ours, _ = _trajectory(
        optlab.scale_by_diffgrad(b1=0.9, b2=0.999, eps=1e-8), {"x": jnp.asarray(g, jnp.float32)}
    )
    adam = _np_adam(g)
    prev = np.vstack([np.zeros((1, 3)), g[:-1]])
    xi = 1.0 / (1.0 + np.exp(-np.abs(g - prev)))
    np.testing.assert_allclose(ours["x"], xi * adam, rtol=1e-4, atol=1e-7)


@hyp
@given(params=pytrees(), seed=st.integers(0, 1000))
def test_diffgrad_friction_in_half_open_unit_interval(params, seed):
    steps = 4
    gs = jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), (steps,) + p.shape), params)
    ours, _ = _trajectory(optlab.scale_by_diffgrad(), gs, params)
    adam, _ = _trajectory(optax.scale_by_adam(), gs, params)
    for d, a, g in zip(jax.tree.leaves(ours), jax.tree.leaves(adam), jax.tree.leaves(gs)):
        d, a, g = (np.asarray(x, np.float64) for x in (d, a, g))
        prev = np.concatenate([np.zeros_like(g[:1]), g[:-1]])
        big = np.abs(a) > 1e-3
        xi = d[big] / a[big]
        assert np.all(xi >= 0.5 - 1e-6) and np.all(xi < 1.0)
        np.testing.assert_allclose(xi, 1 / (1 + np.exp(-np.abs(g - prev)[big])), rtol=1e-4)


# ---------------------------------------------------------------------------
# AdEMAMix
# ---------------------------------------------------------------------------


def _paper_alpha(step, alpha_end, warmup):
    return min(step * alpha_end / warmup, alpha_end)


def _paper_beta3(step, beta_start, beta_end, warmup):
    f = lambda b: math.log(0.5) / math.log(b + 1e-8) - 1
    f_inv = lambda t: math.pow(0.5, 1 / (t + 1))
    if step >= warmup:
        return beta_end
    a = step / warmup
    return min(f_inv((1 - a) * f(beta_start) + a * f(beta_end)), beta_end)


def test_ademamix_alpha_zero_equals_adam():
    gs = _grad_seq(20, seed=6)
    ours, _ = _trajectory(optlab.scale_by_ademamix(b1=0.8, b2=0.95, b3=0.99, alpha=0.0), gs)
    ref, _ = _trajectory(optax.scale_by_adam(b1=0.8, b2=0.95), gs)
    tree_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "b3,alpha",
    [
        (0.999, 5.0),
        (optax.linear_schedule(0.9, 0.999, 10), optax.linear_schedule(0.0, 5.0, 10)),
    ],
    ids=["constant", "schedules"],
)
def test_ademamix_matches_optax_contrib(b3, alpha):
    gs = _grad_seq(20, seed=7)
    ours, _ = _trajectory(optlab.scale_by_ademamix(b3=b3, alpha=alpha), gs)
    ref, _ = _trajectory(optax.contrib.scale_by_ademamix(b3=b3, alpha=alpha), gs)
    tree_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_ademamix_schedulers_match_the_paper():
    for step in range(1, 25):
        np.testing.assert_allclose(
            _momentum._ademamix_alpha_warmup(step, 8.0, 10), _paper_alpha(step, 8.0, 10), rtol=1e-6
        )
        np.testing.assert_allclose(
            _momentum._ademamix_beta3_warmup(step, 0.9, 0.9999, 10),
            _paper_beta3(step, 0.9, 0.9999, 10),
            atol=1e-6,
        )
    # The half-life warm-up starts at b1's decay and grows monotonically to b3.
    betas = [float(_momentum._ademamix_beta3_warmup(s, 0.9, 0.9999, 100)) for s in range(0, 101)]
    assert abs(betas[0] - 0.9) < 1e-6 and betas[-1] == pytest.approx(0.9999)
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:]))


def test_ademamix_warmup_matches_numpy_reference():
    steps, b1, b2, b3, alpha, eps = 12, 0.9, 0.999, 0.999, 5.0, 1e-8
    gs = _grad_seq(steps, seed=8)
    tx = optlab.scale_by_ademamix(b1, b2, b3, alpha, b3_warmup=8, alpha_warmup=5, eps=eps)
    ours, _ = _trajectory(tx, gs)
    for k in gs:
        g = np.asarray(gs[k], np.float64)
        m1 = np.zeros_like(g[0])
        m2 = np.zeros_like(g[0])
        nu = np.zeros_like(g[0])
        for t in range(1, steps + 1):
            a_t, b3_t = _paper_alpha(t, alpha, 5), _paper_beta3(t, b1, b3, 8)
            m1 = b1 * m1 + (1 - b1) * g[t - 1]
            m2 = b3_t * m2 + (1 - b3_t) * g[t - 1]
            nu = b2 * nu + (1 - b2) * g[t - 1] ** 2
            ref = (m1 / (1 - b1**t) + a_t * m2) / (np.sqrt(nu / (1 - b2**t)) + eps)
            np.testing.assert_allclose(ours[k][t - 1], ref, rtol=2e-4, atol=1e-5)


def test_ademamix_warmup_under_inject_hyperparams_without_static_args():
    gs = _grad_seq(6, seed=9)
    plain, _ = _trajectory(optlab.scale_by_ademamix(b3_warmup=4, alpha_warmup=3), gs)
    injected, _ = _trajectory(
        optax.inject_hyperparams(optlab.scale_by_ademamix)(b3_warmup=4, alpha_warmup=3), gs
    )
    tree_allclose(plain, injected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# MARS
# ---------------------------------------------------------------------------


def test_mars_gamma_zero_without_clip_is_identity():
    gs = _grad_seq(5, seed=10)
    ours, _ = _trajectory(optlab.mars_correction(gamma=0.0, max_norm=None), gs)
    tree_allclose(ours, gs, rtol=0, atol=0)


def test_mars_gamma_zero_is_per_leaf_clip_and_base_unchanged():
    gs = _grad_seq(5, seed=11, scale=2.0)
    ours, _ = _trajectory(optlab.mars_correction(gamma=0.0, max_norm=1.0), gs)
    ours, gs_np = _np(ours), _np(gs)
    for k in gs:
        for t in range(5):
            g = gs_np[k][t]
            n = np.linalg.norm(g)
            np.testing.assert_allclose(ours[k][t], g / n if n > 1 else g, rtol=1e-6)
    # Chained before Adam, gamma=0 (no clip) gives Adam exactly.
    chain, _ = _trajectory(
        optax.chain(optlab.mars_correction(0.0, max_norm=None), optlab.scale_by_adam_family()), gs
    )
    adam, _ = _trajectory(optax.scale_by_adam(), gs)
    tree_allclose(chain, adam, rtol=1e-6, atol=1e-7)  # equal up to XLA's fusion rounding


def test_mars_hand_derived_three_steps():
    gamma, b1, max_norm = 0.5, 0.9, 1.0
    g = {
        "big": np.array([[1.0, 2.0], [0.5, -1.0], [-1.0, 0.0]]),
        "small": np.array([[0.1, 0.0], [0.1, 0.1], [0.0, -0.1]]),
    }
    ours, _ = _trajectory(
        optlab.mars_correction(gamma, b1, max_norm),
        jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g),
    )
    coef = gamma * b1 / (1 - b1)  # 4.5
    # big, step 1: c = g + 4.5 (g - 0) = [5.5, 11], norm 12.298 > 1 -> c / norm
    np.testing.assert_allclose(
        ours["big"][0], np.array([5.5, 11.0]) / math.hypot(5.5, 11.0), rtol=1e-6
    )
    # small, step 2: c = [0.1, 0.1] + 4.5 [0, 0.1] = [0.1, 0.55], norm 0.559 < 1 -> kept
    np.testing.assert_allclose(ours["small"][1], [0.1, 0.55], rtol=1e-6)
    for k, seq in g.items():
        prev = np.zeros(2)
        for t in range(3):
            c = seq[t] + coef * (seq[t] - prev)
            n = np.linalg.norm(c)
            np.testing.assert_allclose(ours[k][t], c / n if n > max_norm else c, rtol=1e-6)
            prev = seq[t]


def test_mars_adamw_chain_matches_official_update():
    """mars_correction + scale_by_adam + lr == the official MARS-AdamW step (is_approx, wd=0)."""
    lr, gamma, b1, b2, eps, steps = 3e-3, 0.025, 0.95, 0.99, 1e-8, 6
    gs = _grad_seq(steps, seed=12, scale=0.5)
    tx = optax.chain(
        optlab.mars_correction(gamma, b1),
        optlab.scale_by_adam_family(b1, b2, eps),
        optax.scale_by_learning_rate(lr),
    )
    ours, _ = _trajectory(tx, gs)
    for k in gs:
        g = np.asarray(gs[k], np.float64)
        exp_avg = np.zeros_like(g[0])
        exp_avg_sq = np.zeros_like(g[0])
        last = np.zeros_like(g[0])
        for step in range(1, steps + 1):
            grad = g[step - 1]
            c = (grad - last) * (gamma * (b1 / (1.0 - b1))) + grad
            n = np.linalg.norm(c)
            if n > 1.0:
                c = c / n
            exp_avg = b1 * exp_avg + (1 - b1) * c
            exp_avg_sq = b2 * exp_avg_sq + (1 - b2) * c * c
            bc1, bc2 = 1 - b1**step, 1 - b2**step
            denom = (np.sqrt(exp_avg_sq) / math.sqrt(bc2) + eps) * bc1
            np.testing.assert_allclose(
                ours[k][step - 1], -lr * exp_avg / denom, rtol=1e-4, atol=1e-9
            )
            last = grad


# ---------------------------------------------------------------------------
# Grams (with_grad_sign)
# ---------------------------------------------------------------------------


@hyp
@given(params=pytrees(), seed=st.integers(0, 1000))
def test_grams_sign_of_update_is_sign_of_gradient(params, seed):
    gs = jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), (3,) + p.shape), params)
    ours, _ = _trajectory(optlab.with_grad_sign(optlab.scale_by_adam_family()), gs, params)
    adam, _ = _trajectory(optax.scale_by_adam(), gs, params)
    chex.assert_trees_all_equal(jax.tree.map(jnp.sign, ours), jax.tree.map(jnp.sign, gs))
    # Adam's magnitudes, up to float32 rounding (optlab's Adam and optax's order the bias
    # corrections differently: 1-2 ulp on some trees).
    tree_allclose(jax.tree.map(jnp.abs, ours), jax.tree.map(jnp.abs, adam), rtol=1e-6, atol=0)
    # As a full optimizer (updates added to params) the update descends: opposite sign.
    full, _ = _trajectory(
        optlab.with_grad_sign(optax.adam(1e-2), inner_is_direction=False), gs, params
    )
    chex.assert_trees_all_equal(
        jax.tree.map(jnp.sign, full), jax.tree.map(lambda g: -jnp.sign(g), gs)
    )


def test_grams_hand_derived_three_steps():
    g = np.array([[1.0, -2.0, 0.0], [-0.5, -2.0, 1.0], [-1.0, 0.5, 1.0]])
    ours, _ = _trajectory(
        optlab.with_grad_sign(optlab.scale_by_adam_family()), {"x": jnp.asarray(g, jnp.float32)}
    )
    ref = np.sign(g) * np.abs(_np_adam(g))
    np.testing.assert_allclose(ours["x"], ref, rtol=1e-4, atol=1e-7)
    # Step 2, first coordinate: Adam's momentum still points up (0.09 - 0.05 > 0) but the
    # gradient points down, so Grams steps along the gradient.
    assert _np_adam(g)[1, 0] > 0 and ours["x"][1, 0] < 0


# ---------------------------------------------------------------------------
# Cautious
# ---------------------------------------------------------------------------


def test_cautious_hand_derived_three_steps_with_sgd_momentum():
    lr, beta = 0.1, 0.9
    g = np.array([[1.0, 1.0, -1.0, 2.0], [1.0, -0.05, 1.0, 2.0], [-2.0, -0.05, 1.0, 0.0]])
    ours, _ = _trajectory(
        optlab.cautious(optax.sgd(lr, momentum=beta)), {"x": jnp.asarray(g, jnp.float32)}
    )
    # step 1: buf = g1, u = -0.1 g1 agrees everywhere -> unchanged.
    np.testing.assert_allclose(ours["x"][0], -lr * g[0], rtol=1e-6)
    # step 2: buf = [1.9, 0.85, 0.1, 3.8]; u = -0.1 buf; u*g < 0 except coordinate 1 -> kept 3/4.
    np.testing.assert_allclose(
        ours["x"][1], [-0.19 * 4 / 3, 0.0, -0.01 * 4 / 3, -0.38 * 4 / 3], rtol=1e-5
    )
    # step 3: buf = 0.9 [1.9, 0.85, 0.1, 3.8] + g3 = [-0.29, 0.715, 1.09, 3.42];
    # u = -0.1 buf; agrees at coordinates 0 and 2 only (g3 = 0 at coordinate 3) -> kept 1/2.
    np.testing.assert_allclose(ours["x"][2], [0.029 * 2, 0.0, -0.109 * 2, 0.0], rtol=1e-5)


@hyp
@given(params=pytrees(), seed=st.integers(0, 1000))
def test_cautious_masks_exactly_where_signs_disagree_and_rescales(params, seed):
    gs = jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), (4,) + p.shape), params)
    for inner, is_direction in [
        (optax.sgd(0.1, momentum=0.9), False),
        (optlab.scale_by_adam_family(), True),
    ]:
        ours, _ = _trajectory(optlab.cautious(inner, inner_is_direction=is_direction), gs, params)
        raw, _ = _trajectory(inner, gs, params)
        for c, u, g in zip(jax.tree.leaves(ours), jax.tree.leaves(raw), jax.tree.leaves(gs)):
            c, u, g = (np.asarray(x, np.float64) for x in (c, u, g))
            for t in range(4):
                agree = (u[t] * g[t] > 0) if is_direction else (u[t] * g[t] < 0)
                assert np.all(c[t][~agree] == 0)
                frac = agree.mean()
                if frac > 0:
                    np.testing.assert_allclose(
                        c[t][agree], u[t][agree] / frac, rtol=1e-4, atol=1e-6 * np.abs(u[t]).max()
                    )


def test_cautious_direction_in_chain_equals_cautious_full_optimizer():
    gs = _grad_seq(8, seed=13)
    lr = 1e-2
    inside = optax.chain(
        optlab.cautious(optlab.scale_by_adam_family(), inner_is_direction=True),
        optax.scale_by_learning_rate(lr),
    )
    outside = optlab.cautious(
        optax.chain(optlab.scale_by_adam_family(), optax.scale_by_learning_rate(lr))
    )
    a, _ = _trajectory(inside, gs)
    b, _ = _trajectory(outside, gs)
    tree_allclose(a, b, rtol=1e-6, atol=0)


def test_cautious_all_masked_gives_zero_update():
    tx = optlab.cautious(optax.sgd(0.1, momentum=0.9))
    state = tx.init(jnp.zeros(3))
    _, state = tx.update(jnp.ones(3), state)
    u, _ = tx.update(jnp.full(3, -0.01), state)  # momentum still points the other way everywhere
    np.testing.assert_array_equal(u, np.zeros(3))


# ---------------------------------------------------------------------------
# Optimistic AMSGrad
# ---------------------------------------------------------------------------


def test_optimistic_amsgrad_first_step_literal():
    tx = optlab.scale_by_optimistic_amsgrad(b1=0.9, b2=0.999, eps=0.0)
    d, _ = tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))
    # theta_1 = 0.1 g, v_hat = 0.001 g^2, h_2 = 0.9 * 0 + 0.1 g, h_1 = 0:
    # d_1 = (0.1 + 0.1) / sqrt(0.001) sign(g) = 6.32456 sign(g).
    np.testing.assert_allclose(d, [0.2 / math.sqrt(0.001), -0.2 / math.sqrt(0.001)], rtol=1e-5)


def test_optimistic_amsgrad_matches_the_papers_two_sequence_algorithm():
    """Run Algorithm 2 literally (w_{t+1/2} and w_{t+1}) with the hint m_{t+1} = g_t."""
    lr, b1, b2, eps, steps = 0.05, 0.9, 0.99, 1e-8, 6
    c = np.array([1.0, 3.0, 0.5])
    grad_fn = lambda w: c * (w - 0.3) ** 1

    w = np.array([1.0, -2.0, 0.7])
    w_half, theta_prev, v, v_hat = w.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
    paper = []
    for _ in range(steps):
        g = grad_fn(w)
        theta = b1 * theta_prev + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_hat = np.maximum(v_hat, v)
        w_half = w_half - lr * theta / (np.sqrt(v_hat) + eps)
        h_next = b1 * theta_prev + (1 - b1) * g  # m_{t+1} = g_t
        w = w_half - lr * h_next / (np.sqrt(v_hat) + eps)
        theta_prev = theta
        paper.append(w)

    tx = optax.chain(
        optlab.scale_by_optimistic_amsgrad(b1, b2, eps), optax.scale_by_learning_rate(lr)
    )
    params = jnp.array([1.0, -2.0, 0.7])
    state = tx.init(params)
    update = jax.jit(tx.update)
    cj = jnp.asarray(c, jnp.float32)
    for t in range(steps):
        u, state = update(cj * (params - 0.3), state, params)
        params = optax.apply_updates(params, u)
        np.testing.assert_allclose(params, paper[t], rtol=1e-5, atol=1e-6)


def test_optimistic_amsgrad_v_hat_non_decreasing():
    gs = jax.tree.map(
        lambda g: g * jnp.exp(-0.3 * jnp.arange(10.0)).reshape((-1,) + (1,) * (g.ndim - 1)),
        _grad_seq(10, seed=14),
    )
    tx = optlab.scale_by_optimistic_amsgrad(b2=0.5)
    state = tx.init(jax.tree.map(lambda g: g[0], gs))
    update = jax.jit(tx.update)
    for t in range(10):
        prev = state.nu_max
        _, state = update(jax.tree.map(lambda g, t=t: g[t], gs), state)
        for a, b in zip(jax.tree.leaves(prev), jax.tree.leaves(state.nu_max)):
            assert np.all(np.asarray(b) >= np.asarray(a))


# ---------------------------------------------------------------------------
# Adafactor
# ---------------------------------------------------------------------------


def test_adafactor_state_is_linear_in_the_sides_of_a_matrix():
    n, m = 64, 48
    params = {"w": jnp.zeros((n, m)), "b": jnp.zeros((m,))}
    state = optlab.scale_by_adafactor(min_dim_size_to_factor=2).init(params)
    w_state = state.v_row["w"].size + state.v_col["w"].size + state.v["w"].size
    assert w_state == n + m + 1  # O(n + m), not n * m
    assert state.v["b"].size == m  # vectors are not factored
    unfactored = optlab.scale_by_adafactor(factored=False).init(params)
    assert unfactored.v["w"].size == n * m


def test_adafactor_matches_optax_factored_rms():
    gs = {
        "w": jax.random.normal(jax.random.key(0), (6, 8, 5)),
        "b": jax.random.normal(jax.random.key(1), (6, 5)),
    }
    params = {"w": jnp.ones((8, 5)), "b": jnp.ones((5,))}
    ours, _ = _trajectory(optlab.scale_by_adafactor(min_dim_size_to_factor=2), gs, params)
    ref, _ = _trajectory(optax.scale_by_factored_rms(min_dim_size_to_factor=2), gs, params)
    tree_allclose(ours, ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# SGD-SaI
# ---------------------------------------------------------------------------


def test_sgd_sai_gsnr_definition():
    g = {"w": jnp.array([[3.0, 4.0], [0.0, 1.0]]), "s": jnp.array(-2.0), "c": jnp.full((3,), 0.5)}
    tx = optlab.scale_by_sgd_sai(eps=1e-8)
    _, state = tx.update(g, tx.init(g))
    w = np.array([3.0, 4.0, 0.0, 1.0])
    np.testing.assert_allclose(
        state.scale["w"], np.linalg.norm(w) / (np.std(w, ddof=1) + 1e-8), rtol=1e-6
    )
    np.testing.assert_allclose(state.scale["s"], 2.0)  # one element: std is 0 -> ||g||
    np.testing.assert_allclose(
        state.scale["c"], np.linalg.norm([0.5] * 3), rtol=1e-6
    )  # constant leaf


def test_sgd_sai_scale_is_frozen_after_the_first_step_and_no_second_moment():
    gs = _grad_seq(6, seed=15)
    params = jax.tree.map(lambda g: g[0], gs)
    tx = optlab.scale_by_sgd_sai()
    state0 = tx.init(params)
    assert set(state0._fields) == {"count", "mu", "scale"}  # no second moment
    assert all(s.shape == () and s.dtype == jnp.float32 for s in jax.tree.leaves(state0.scale))
    assert _state_bytes(state0.mu) == _state_bytes(params)  # one buffer: half of Adam's
    update = jax.jit(tx.update)
    _, state = update(jax.tree.map(lambda g: g[0], gs), state0)
    first_scale = state.scale
    for t in range(1, 6):
        _, state = update(jax.tree.map(lambda g, t=t: 10.0 * g[t], gs), state)
        chex.assert_trees_all_equal(state.scale, first_scale)


def test_sgd_sai_hand_derived_three_steps():
    b1, eps = 0.9, 1e-8
    g = np.array([[1.0, -2.0, 0.5, 0.0], [0.5, 1.0, -1.0, 2.0], [-1.0, 0.0, 1.0, 1.0]])
    ours, _ = _trajectory(optlab.scale_by_sgd_sai(b1, eps), {"x": jnp.asarray(g, jnp.float32)})
    s = np.linalg.norm(g[0]) / (np.std(g[0], ddof=1) + eps)
    m = g[0]  # the momentum buffer starts at the first gradient (reference code)
    np.testing.assert_allclose(ours["x"][0], s * m, rtol=1e-6)
    for t in (1, 2):
        m = b1 * m + (1 - b1) * g[t]
        np.testing.assert_allclose(ours["x"][t], s * m, rtol=1e-5)


# ---------------------------------------------------------------------------
# Convergence on a small quadratic
# ---------------------------------------------------------------------------

STEPS = 300
CONVERGENCE = {  # name: (direction factory, peak learning rate of a linear decay to 0)
    "momentum": (lambda: optlab.scale_by_momentum(0.9), 0.02),
    "nesterov": (lambda: optlab.scale_by_momentum(0.9, nesterov=True), 0.02),
    "adam": (lambda: optlab.scale_by_adam_family(), 0.1),
    "amsgrad": (lambda: optlab.scale_by_adam_family(amsgrad=True), 0.1),
    "adamax": (lambda: optlab.scale_by_adam_family(adamax=True), 0.1),
    "diffgrad": (lambda: optlab.scale_by_diffgrad(), 0.1),
    "ademamix": (
        lambda: optlab.scale_by_ademamix(b3=0.99, alpha=2.0, b3_warmup=50, alpha_warmup=50),
        0.1,
    ),
    "mars_adamw": (
        lambda: optax.chain(
            optlab.mars_correction(0.025, 0.95), optlab.scale_by_adam_family(0.95, 0.99)
        ),
        0.1,
    ),
    "grams": (lambda: optlab.with_grad_sign(optlab.scale_by_adam_family()), 0.1),
    "cautious_adam": (
        lambda: optlab.cautious(optlab.scale_by_adam_family(), inner_is_direction=True),
        0.1,
    ),
    "optimistic_amsgrad": (lambda: optlab.scale_by_optimistic_amsgrad(), 0.02),
    "lion": (lambda: optlab.scale_by_lion(), 0.1),
    "signum": (lambda: optlab.scale_by_signum(), 0.05),
    "adafactor": (lambda: optlab.scale_by_adafactor(min_dim_size_to_factor=2), 0.1),
    "sgd_sai": (lambda: optlab.scale_by_sgd_sai(), 0.02),
}


@pytest.mark.parametrize("name", sorted(CONVERGENCE))
def test_converges_on_a_quadratic(name):
    make, lr = CONVERGENCE[name]
    tx = optax.chain(make(), optax.scale_by_learning_rate(optax.linear_schedule(lr, 0.0, STEPS)))
    params = fixed_params()
    _, _, losses = run_optimizer(tx, parabola, params, STEPS)
    assert np.isfinite(losses).all()
    assert losses[-1] < 1e-3 * losses[0], f"{name}: loss {losses[0]:.3g} -> {losses[-1]:.3g}"


def test_cautious_full_optimizer_converges():
    tx = optlab.cautious(optax.adamw(optax.linear_schedule(0.1, 0.0, STEPS), weight_decay=0.0))
    _, _, losses = run_optimizer(tx, parabola, fixed_params(), STEPS)
    assert losses[-1] < 1e-3 * losses[0]


# ---------------------------------------------------------------------------
# Tree structures other than dicts
# ---------------------------------------------------------------------------

ALL_TRANSFORMS = {
    "momentum": lambda: optlab.scale_by_momentum(),
    "adam": lambda: optlab.scale_by_adam_family(),
    "amsgrad_bf16_state": lambda: optlab.scale_by_adam_family(
        amsgrad=True, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
    ),
    "diffgrad": lambda: optlab.scale_by_diffgrad(),
    "ademamix": lambda: optlab.scale_by_ademamix(b3_warmup=3, alpha_warmup=3),
    "mars": lambda: optlab.mars_correction(),
    "grams": lambda: optlab.with_grad_sign(optlab.scale_by_adam_family()),
    "cautious": lambda: optlab.cautious(optax.adamw(1e-2)),
    "optimistic_amsgrad": lambda: optlab.scale_by_optimistic_amsgrad(),
    "lion": lambda: optlab.scale_by_lion(),
    "signum": lambda: optlab.scale_by_signum(),
    "adafactor": lambda: optlab.scale_by_adafactor(min_dim_size_to_factor=2),
    "sgd_sai": lambda: optlab.scale_by_sgd_sai(),
}


@pytest.mark.parametrize("name", sorted(ALL_TRANSFORMS))
def test_tuple_trees_give_the_same_updates_as_dicts(name):
    gs = _grad_seq(3, seed=16)
    params = jax.tree.map(lambda g: g[0], gs)
    as_tuple = lambda d: (d["w"], [d["b"]])
    from_dict, _ = _trajectory(ALL_TRANSFORMS[name](), gs, params)
    from_tuple, _ = _trajectory(ALL_TRANSFORMS[name](), as_tuple(gs), as_tuple(params))
    tree_allclose(as_tuple(from_dict), from_tuple, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Bad input: non-finite gradients stay visible, integer params, tree mismatch
# ---------------------------------------------------------------------------


def _two_steps_with_bad_first(tx, bad, good=None):
    """Step 1: gradient with ``bad`` in entry 0; step 2: a finite gradient. Both updates."""
    g_bad = jnp.array([bad, 1.0, -2.0], jnp.float32)
    g_good = jnp.array([0.5, 1.0, -2.0], jnp.float32) if good is None else good
    params = jnp.zeros(3, jnp.float32)
    state = tx.init(params)
    u1, state = tx.update(g_bad, state, params)
    u2, state = tx.update(g_good, state, params)
    return u1, u2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: optlab.scale_by_lion(),
        lambda: optlab.scale_by_signum(0.9),
        lambda: optlab.cautious(optax.sgd(0.1, momentum=0.9)),
        lambda: optlab.cautious(optlab.scale_by_signum(0.9), inner_is_direction=True),
    ],
    ids=["lion", "signum", "cautious", "cautious_direction"],
)
def test_nonfinite_gradient_stays_visible_in_this_and_next_update(make, bad):
    u1, u2 = _two_steps_with_bad_first(make(), bad)
    # The poisoned entry is non-finite in both updates (the momentum stays non-finite),
    # not a finite sign / masked zero; the finite entries of step 1 are left alone.
    assert not np.isfinite(np.asarray(u1)[0]) and not np.isfinite(np.asarray(u2)[0])
    assert np.all(np.isfinite(np.asarray(u1)[1:]))


def test_signum_and_lion_keep_sign_of_finite_momentum_after_fix():
    g = jnp.array([0.3, -2.0, 0.0])
    for tx in (optlab.scale_by_lion(), optlab.scale_by_signum(0.9)):
        d, _ = tx.update(g, tx.init(g))
        np.testing.assert_array_equal(np.asarray(d), [1.0, -1.0, 0.0])


def test_cautious_finite_inner_update_with_nan_gradient_is_nan():
    # The inner update ignores the gradient's value (constant direction): the NaN gradient
    # must still show up instead of a mask that is False for NaN.
    const = optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda u, s, p=None: (jax.tree.map(jnp.ones_like, u), s)
    )
    tx = optlab.cautious(const, inner_is_direction=True)
    u, _ = tx.update(jnp.array([np.nan, 1.0]), tx.init(jnp.zeros(2)), jnp.zeros(2))
    # Entry 1 agrees and is rescaled by 1 / kept fraction (1 of 2 entries agree).
    assert np.isnan(np.asarray(u)[0]) and np.asarray(u)[1] == 2.0


_ALL_FACTORIES = {
    "scale_by_momentum": lambda: optlab.scale_by_momentum(),
    "scale_by_adam_family": lambda: optlab.scale_by_adam_family(),
    "scale_by_diffgrad": lambda: optlab.scale_by_diffgrad(),
    "scale_by_ademamix": lambda: optlab.scale_by_ademamix(),
    "mars_correction": lambda: optlab.mars_correction(),
    "with_grad_sign": lambda: optlab.with_grad_sign(optlab.scale_by_adam_family()),
    "cautious": lambda: optlab.cautious(optax.adam(1e-3)),
    "scale_by_optimistic_amsgrad": lambda: optlab.scale_by_optimistic_amsgrad(),
    "scale_by_lion": lambda: optlab.scale_by_lion(),
    "scale_by_signum": lambda: optlab.scale_by_signum(),
    "scale_by_adafactor": lambda: optlab.scale_by_adafactor(),
    "scale_by_sgd_sai": lambda: optlab.scale_by_sgd_sai(),
}


@pytest.mark.parametrize("name", sorted(_ALL_FACTORIES))
def test_integer_params_raise_type_error_at_init(name):
    params = {"w": jnp.ones(3, jnp.float32), "steps": jnp.arange(3, dtype=jnp.int32)}
    with pytest.raises(TypeError, match=rf"optlab\.{name}`.*params.*int32"):
        _ALL_FACTORIES[name]().init(params)


def test_sgd_sai_mismatched_gradient_tree_names_both_trees():
    tx = optlab.scale_by_sgd_sai()
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"optlab\.scale_by_sgd_sai.*`updates`.*`params`.*tree"):
        tx.update({"a": jnp.ones(3)}, state, params)


def test_sgd_sai_gsnr_of_a_matrix_equals_flattened():
    g = jnp.arange(12.0).reshape(3, 4) ** 1.5
    flat = g.ravel()
    std = np.std(np.asarray(flat), ddof=1)
    expected = np.linalg.norm(np.asarray(flat)) / (std + 1e-8)
    np.testing.assert_allclose(float(_momentum._gsnr(g, 1e-8)), expected, rtol=1e-6)
