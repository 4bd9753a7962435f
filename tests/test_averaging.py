"""Defining properties of the averaging wrappers (METHODS.md, "Averaging")."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from helpers import fixed_params, parabola, run_optimizer, tree_allclose

N_STEPS = 7


def _loss(params):
    # Non-trivial, leaf-dependent gradients; rank-0 leaves included.
    leaves = jax.tree.leaves(params)
    return sum(jnp.sum(jnp.sin(3.0 * p) + (i + 1) * p**2) for i, p in enumerate(leaves))


def _trajectory(tx, params, steps=N_STEPS, loss=_loss):
    """Run ``tx`` eagerly-jitted; return the iterates x_1..x_steps and the states."""
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    iterates, states = [], []
    for _ in range(steps):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        iterates.append(params)
        states.append(state)
    return iterates, states


def _mean(trees):
    return jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), axis=0), *trees)


def _sampled(t, start_step, every_k):
    return t >= start_step and (t - start_step) % every_k == 0


# ---------------------------------------------------------------------------
# SWA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("start_step,every_k", [(0, 1), (3, 2), (5, 4)])
def test_swa_equals_mean_of_sampled_iterates(x64, start_step, every_k):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), fixed_params())
    tx = optlab.swa(optax.adam(0.05), start_step=start_step, every_k=every_k)
    iterates, states = _trajectory(tx, params)
    for t in range(1, N_STEPS + 1):
        chosen = [iterates[s - 1] for s in range(1, t + 1) if _sampled(s, start_step, every_k)]
        expected = _mean(chosen) if chosen else params
        got = optlab.averaged_params(states[t - 1])
        tree_allclose(got, expected, rtol=1e-12, atol=1e-12)
        assert int(states[t - 1].n_averaged) == len(chosen)


def test_swa_updates_are_the_inner_optimizer():
    params = fixed_params()
    ref, _ = _trajectory(optax.adam(0.05), params)
    got, _ = _trajectory(optlab.swa(optax.adam(0.05), every_k=2), params)
    chex.assert_trees_all_equal(ref, got)


def test_swa_float32_accumulator_for_bfloat16_params():
    params = fixed_params(dtype=jnp.bfloat16)
    tx = optlab.swa(optax.sgd(0.1), accumulator_dtype=jnp.float32)
    iterates, states = _trajectory(tx, params, steps=4)
    mean = optlab.averaged_params(states[-1])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(mean))
    expected = _mean([jax.tree.map(lambda x: x.astype(jnp.float32), it) for it in iterates])
    # Under jit XLA may keep the new bf16 iterate in excess precision: bf16 tolerance.
    tree_allclose(mean, expected, rtol=1e-2, atol=1e-2)


def test_swa_reduces_noise_on_a_noisy_quadratic():
    # SGD with a constant learning rate on a noisy quadratic bounces around the optimum;
    # the SWA average of the late iterates is much closer to it (the SWA paper's point).
    params = {"x": jnp.zeros(20)}
    tx = optlab.swa(optax.sgd(0.2), start_step=50, every_k=1)

    def step(carry, key):
        params, state = carry
        grads = jax.grad(parabola)(params)
        grads = {"x": grads["x"] + jax.random.normal(key, (20,))}
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    keys = jax.random.split(jax.random.key(0), 400)
    (params, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, keys))((params, tx.init(params)))
    last_err = float(jnp.linalg.norm(params["x"] - 1.0))
    swa_err = float(jnp.linalg.norm(optlab.averaged_params(state)["x"] - 1.0))
    assert swa_err < 0.3 * last_err


def test_swa_schedule_phases():
    sched = optlab.swa_schedule(
        0.1, swa_lr=0.02, start_step=10, anneal_steps=4, anneal_strategy="linear"
    )
    np.testing.assert_allclose([sched(i) for i in (0, 9)], [0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(
        [sched(10), sched(12), sched(14), sched(100)], [0.1, 0.06, 0.02, 0.02], rtol=1e-6
    )
    cos = optlab.swa_schedule(
        optax.linear_schedule(0.2, 0.1, 10), swa_lr=0.0, start_step=10, anneal_steps=4
    )
    np.testing.assert_allclose([cos(10), cos(12), cos(14)], [0.1, 0.05, 0.0], atol=1e-7)
    cyc = optlab.swa_schedule(0.1, swa_lr=0.01, start_step=2, cycle_length=3, cycle_max_lr=0.04)
    np.testing.assert_allclose(
        [cyc(i) for i in range(2, 8)], [0.03, 0.02, 0.01, 0.03, 0.02, 0.01], rtol=1e-6
    )


def test_swa_schedule_cycle_ends_are_the_sampled_iterates():
    # With the cyclic schedule, swa(start_step=start + c, every_k=c) samples the
    # iterates produced by the minimum-learning-rate steps.
    start, c = 3, 4
    sched = optlab.swa_schedule(
        0.1, swa_lr=0.01, start_step=start, cycle_length=c, cycle_max_lr=0.05
    )
    for t in range(1, 30):  # iterate x_t is produced with the learning rate sched(t - 1)
        if _sampled(t, start + c, c):
            assert abs(float(sched(t - 1)) - 0.01) < 1e-7


# ---------------------------------------------------------------------------
# EMA of the parameters
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", [None, "tf", "power"])
@pytest.mark.parametrize("decay", [0.0, 0.9, 0.999])
def test_debiased_ema_of_a_constant_is_the_constant(decay, warmup):
    params = fixed_params()
    tx = optlab.ema_params(optax.sgd(0.0), decay=decay, debias=True, warmup=warmup)
    _, states = _trajectory(tx, params, steps=5)
    for state in states:
        chex.assert_trees_all_equal(optlab.averaged_params(state), params)


def _ema_reference(params, iterates, decays, debias):
    if debias:
        ema = jax.tree.map(np.zeros_like, params)
        prod = 1.0
        out = []
        for x, d in zip(iterates, decays):
            ema = jax.tree.map(lambda e, x: d * e + (1 - d) * np.asarray(x), ema, x)
            prod *= d
            out.append(jax.tree.map(lambda e: e / (1 - prod), ema))
        return out
    ema, out = jax.tree.map(np.asarray, params), []
    for x, d in zip(iterates, decays):
        ema = jax.tree.map(lambda e, x: d * e + (1 - d) * np.asarray(x), ema, x)
        out.append(ema)
    return out


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("warmup", [None, "tf", "power"])
def test_ema_params_matches_reference(x64, debias, warmup):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), fixed_params())
    decay, inv_gamma, power = 0.8, 2.0, 0.75
    tx = optlab.ema_params(
        optax.sgd(0.05), decay=decay, debias=debias, warmup=warmup, inv_gamma=inv_gamma, power=power
    )
    iterates, states = _trajectory(tx, params)
    decays = []
    for t in range(N_STEPS):
        d = decay
        if warmup == "tf":
            d = min(d, (1 + t) / (10 + t))
        elif warmup == "power":
            d = min(d, 1 - (1 + t / inv_gamma) ** -power)
        decays.append(d)
    expected = _ema_reference(params, iterates, decays, debias)
    # Decays are float32 scalars (the state's decay product is float32).
    for state, exp in zip(states, expected):
        tree_allclose(optlab.averaged_params(state), exp, rtol=1e-6, atol=1e-7)


def test_ema_params_decay_schedule(x64):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), fixed_params())
    sched = optax.linear_schedule(0.5, 0.9, 4)
    iterates, states = _trajectory(optlab.ema_params(optax.sgd(0.05), decay=sched), params)
    decays = [float(sched(t)) for t in range(N_STEPS)]
    expected = _ema_reference(params, iterates, decays, debias=True)
    tree_allclose(optlab.averaged_params(states[-1]), expected[-1], rtol=1e-6, atol=1e-7)


def test_ema_params_is_not_optax_ema_of_updates():
    # optax.ema averages the *updates*; ema_params averages the weights.
    params = fixed_params()
    ref, _ = _trajectory(optax.sgd(0.1), params)
    got, states = _trajectory(optlab.ema_params(optax.sgd(0.1), decay=0.5), params)
    chex.assert_trees_all_equal(ref, got)
    assert not np.allclose(optlab.averaged_params(states[-1])["w"], got[-1]["w"])


# ---------------------------------------------------------------------------
# BEMA
# ---------------------------------------------------------------------------


def _bema_reference(
    params, iterates, ema_power, bias_power, lag, multiplier, burn_in, every_k, min_ema
):
    """Algorithm 1 of Block and Zhang (2025), written as a plain loop."""
    theta0 = ema = out = jax.tree.map(np.asarray, params)
    outs = []
    for t, x in enumerate(iterates, start=1):
        x = jax.tree.map(np.asarray, x)
        if t <= burn_in:
            theta0 = ema = out = x
        elif (t - burn_in) % every_k == 0:
            s = t - burn_in
            beta = max((lag + multiplier * s) ** -ema_power, min_ema)
            alpha = 0.0 if bias_power is None else (lag + multiplier * s) ** -bias_power
            ema = jax.tree.map(lambda e, x: (1 - beta) * e + beta * x, ema, x)
            out = jax.tree.map(lambda e, x, t0: e + alpha * (x - t0), ema, x, theta0)
        outs.append(out)
    return outs


@pytest.mark.parametrize(
    "ema_power,bias_power,lag,multiplier,burn_in,every_k,min_ema",
    [
        (0.5, 0.2, 10.0, 1.0, 0, 1, 0.0),
        (0.6, 0.4, 3.0, 2.0, 2, 2, 0.0),
        (0.5, None, 10.0, 1.0, 1, 1, 0.0),
        (1.0, 0.2, 10.0, 1.0, 0, 1, 0.2),
    ],
)
def test_bema_matches_algorithm_1(
    x64, ema_power, bias_power, lag, multiplier, burn_in, every_k, min_ema
):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), fixed_params())
    tx = optlab.bema(
        optax.sgd(0.05),
        ema_power=ema_power,
        bias_power=bias_power,
        lag=lag,
        multiplier=multiplier,
        burn_in=burn_in,
        every_k=every_k,
        min_ema_multiplier=min_ema,
    )
    iterates, states = _trajectory(tx, params)
    expected = _bema_reference(
        params, iterates, ema_power, bias_power, lag, multiplier, burn_in, every_k, min_ema
    )
    for state, exp in zip(states, expected):  # alpha_t, beta_t are float32 scalars
        tree_allclose(optlab.averaged_params(state), exp, rtol=1e-6, atol=1e-7)


def test_bema_beats_ema_early_on_a_noisy_quadratic():
    # Early in training (the paper's fine-tuning regime) the EMA lags towards the start,
    # the iterate is noisy; BEMA's correction removes the lag and keeps the smoothing.
    def final_error(tx):
        params = {"x": jnp.full((50,), 5.0)}

        def step(carry, key):
            params, state = carry
            grads = {"x": params["x"] - 1.0 + jax.random.normal(key, (50,))}
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        keys = jax.random.split(jax.random.key(0), 50)
        (params, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, keys))(
            (params, tx.init(params))
        )
        avg = optlab.averaged_params(state)["x"]
        return float(jnp.linalg.norm(avg - 1.0)), float(jnp.linalg.norm(params["x"] - 1.0))

    bema_err, last_err = final_error(optlab.bema(optax.sgd(0.03)))
    ema_err, _ = final_error(optlab.bema(optax.sgd(0.03), bias_power=None))
    assert bema_err < 0.5 * ema_err
    assert bema_err < 0.5 * last_err


# ---------------------------------------------------------------------------
# LAWA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k,every_k,start_step", [(1, 1, 0), (3, 2, 1)])
def test_lawa_equals_mean_of_last_k_sampled_iterates(x64, k, every_k, start_step):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), fixed_params())
    tx = optlab.lawa(optax.adam(0.05), k=k, every_k=every_k, start_step=start_step)
    iterates, states = _trajectory(tx, params, steps=9)
    for t in range(1, 10):
        chosen = [iterates[s - 1] for s in range(1, t + 1) if _sampled(s, start_step, every_k)]
        expected = _mean(chosen[-k:]) if chosen else params
        tree_allclose(optlab.averaged_params(states[t - 1]), expected, rtol=1e-12, atol=1e-12)


def test_lawa_memory_is_k_copies():
    params = fixed_params()
    state = optlab.lawa(optax.sgd(0.1), k=4).init(params)
    for buf, p in zip(jax.tree.leaves(state.buffer), jax.tree.leaves(params)):
        assert buf.shape == (4,) + p.shape and buf.dtype == p.dtype


# ---------------------------------------------------------------------------
# Switch-EMA
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_switch_ema_params_equal_ema_after_a_switch(dtype):
    params = fixed_params(dtype=dtype)
    period = 3
    tx = optlab.switch_ema(optax.adam(0.05), decay=0.7, sync_period=period)
    iterates, states = _trajectory(tx, params, steps=9)
    for t, (x, state) in enumerate(zip(iterates, states), start=1):
        if t % period == 0:
            chex.assert_trees_all_equal(x, optlab.averaged_params(state))
    # Between switches the live params differ from the EMA.
    assert not np.allclose(
        iterates[3]["w"].astype(jnp.float32),
        optlab.averaged_params(states[3])["w"].astype(jnp.float32),
    )


def test_switch_ema_matches_reference(x64):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), fixed_params())
    decay, period = 0.6, 2
    tx = optlab.switch_ema(optax.sgd(0.05), decay=decay, sync_period=period)
    iterates, states = _trajectory(tx, params, steps=6)
    p, ema = params, params
    grad = jax.jit(jax.grad(_loss))
    for t in range(1, 7):
        x = jax.tree.map(lambda a, g: a - 0.05 * g, p, grad(p))
        ema = jax.tree.map(lambda e, x: decay * e + (1 - decay) * x, ema, x)
        p = ema if t % period == 0 else x
        tree_allclose(iterates[t - 1], p, rtol=1e-12, atol=1e-12)
        tree_allclose(optlab.averaged_params(states[t - 1]), ema, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Lookahead
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sync_period", [1, 2, 3])
def test_lookahead_slow_step_size_one_equals_inner(sync_period):
    params = fixed_params()
    ref, _ = _trajectory(optax.adam(0.05), params)
    got, _ = _trajectory(
        optlab.lookahead(optax.adam(0.05), sync_period=sync_period, slow_step_size=1.0), params
    )
    chex.assert_trees_all_equal(ref, got)


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_matches_optax_lookahead(reset_state):
    params = fixed_params()
    fast = optax.adam(0.05)
    ref_tx = optax.lookahead(fast, sync_period=3, slow_step_size=0.4, reset_state=reset_state)
    lp = optax.LookaheadParams.init_synced(params)
    ref_state = ref_tx.init(lp)
    tx = optlab.lookahead(fast, sync_period=3, slow_step_size=0.4, reset_state=reset_state)

    @jax.jit
    def step(lp, ref_state, p, state):
        u, ref_state = ref_tx.update(jax.grad(_loss)(lp.fast), ref_state, lp)
        lp = optax.apply_updates(lp, u)
        u, state = tx.update(jax.grad(_loss)(p), state, p)
        return lp, ref_state, optax.apply_updates(p, u), state

    state, p = tx.init(params), params
    for _ in range(7):
        lp, ref_state, p, state = step(lp, ref_state, p, state)
        tree_allclose(p, lp.fast, rtol=1e-5, atol=1e-6)
        tree_allclose(optlab.averaged_params(state), lp.slow, rtol=1e-5, atol=1e-6)


def test_lookahead_synced_params_equal_slow_weights():
    params = fixed_params()
    iterates, states = _trajectory(optlab.lookahead(optax.sgd(0.1), sync_period=2), params)
    for t, (x, s) in enumerate(zip(iterates, states), start=1):
        if t % 2 == 0:
            chex.assert_trees_all_equal(x, optlab.averaged_params(s))


def test_lookahead_converges():
    params = {"x": jnp.zeros(3)}
    tx = optlab.lookahead(optax.sgd(0.1), sync_period=5, slow_step_size=0.5)
    final, _, losses = run_optimizer(tx, parabola, params, 100)
    assert losses[-1] < 1e-3 * losses[0]


# ---------------------------------------------------------------------------
# averaged_params through wrappers
# ---------------------------------------------------------------------------


def _swa_tx():
    return optlab.swa(optax.sgd(0.1), every_k=1)


def _run(tx, params, steps=4):
    _, states = _trajectory(tx, params, steps=steps)
    return states[-1]


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: optax.chain(optax.identity(), t),
        lambda t: optax.named_chain(("id", optax.identity()), ("avg", t)),
        lambda t: optax.MultiSteps(t, every_k_schedule=1),
        lambda t: optax.chain(optax.identity(), optax.MultiSteps(t, every_k_schedule=1)),
    ],
    ids=["chain", "named_chain", "multisteps", "chain-multisteps"],
)
def test_averaged_params_through_wrappers(wrap):
    params = fixed_params()
    ref = optlab.averaged_params(_run(_swa_tx(), params))
    got = optlab.averaged_params(_run(wrap(_swa_tx()), params))
    tree_allclose(got, ref)


def test_averaged_params_through_inject_hyperparams_and_multisteps_accumulation():
    params = fixed_params()
    injected = optax.inject_hyperparams(
        lambda learning_rate: optlab.ema_params(optax.sgd(learning_rate), decay=0.5)
    )(learning_rate=0.1)
    plain = optlab.ema_params(optax.sgd(0.1), decay=0.5)
    tree_allclose(
        optlab.averaged_params(_run(injected, params)), optlab.averaged_params(_run(plain, params))
    )
    # MultiSteps(k=2): the wrapper only sees every second (accumulated) step.
    multi = optax.MultiSteps(optlab.swa(optax.sgd(0.1)), every_k_schedule=2)
    state = _run(multi, params, steps=4)
    assert int(state.inner_opt_state.n_averaged) == 2


def test_averaged_params_masked_and_partition():
    params = {"a": jnp.ones(3), "b": jnp.full((2,), 2.0)}
    tx = optax.partition(
        {"avg": optlab.swa(optax.sgd(0.1)), "plain": optax.sgd(0.1)},
        {"a": "avg", "b": "plain"},
    )
    state = _run(tx, params)
    partial = optlab.averaged_params(state)
    assert isinstance(partial["b"], optax.MaskedNode)
    full = optlab.averaged_params(state, params=params)
    chex.assert_trees_all_equal(full["b"], params["b"])
    assert full["a"].shape == (3,)
    masked = optax.masked(optlab.ema_params(optax.sgd(0.1)), {"a": True, "b": False})
    full = optlab.averaged_params(_run(masked, params), params=params)
    chex.assert_trees_all_equal(full["b"], params["b"])


def test_averaged_params_nested_and_ambiguous():
    params = fixed_params()
    tx = optlab.ema_params(optlab.lookahead(optax.sgd(0.1), sync_period=2), decay=0.5)
    state = _run(tx, params)
    with pytest.raises(ValueError, match="averaged_params.*2 averaging states.*which="):
        optlab.averaged_params(state)
    chex.assert_trees_all_equal(
        optlab.averaged_params(state, which="lookahead"), state.inner_state.slow
    )
    chex.assert_trees_all_equal(optlab.averaged_params(state, which=0), state.ema)
    chex.assert_trees_all_equal(optlab.averaged_params(state, which="ema_params"), state.ema)
    with pytest.raises(ValueError, match="no `swa` state"):
        optlab.averaged_params(state, which="swa")
    with pytest.raises(ValueError, match="which"):
        optlab.averaged_params(state, which="polyak")
    with pytest.raises(ValueError, match="which"):
        optlab.averaged_params(state, which=5)


class _PolyakState(NamedTuple):
    """An averaging state defined outside optlab/_averaging.py (the protocol)."""

    inner_state: object
    total: dict

    averaging_name = "polyak_test"

    def averaged(self):
        return self.total


def _polyak(inner):  # keeps the sum of the iterates; enough to find and read it back
    def init_fn(params):
        return _PolyakState(inner.init(params), params)

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state = inner.update(updates, state.inner_state, params)
        total = jax.tree.map(lambda t, p, u: t + p + u, state.total, params, updates)
        return updates, _PolyakState(inner_state, total)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def test_averaged_params_finds_any_state_with_the_protocol():
    params = fixed_params()
    tx = optax.named_chain(
        ("clip", optax.clip(1.0)), ("avg", optlab.ema_params(_polyak(optax.sgd(0.1)), decay=0.5))
    )
    state = _run(optax.MultiSteps(tx, every_k_schedule=1), params)
    inner = state.inner_opt_state["avg"].inner_state
    chex.assert_trees_all_equal(optlab.averaged_params(state, which="polyak_test"), inner.total)
    chex.assert_trees_all_equal(optlab.averaged_params(state, which=1), inner.total)
    with pytest.raises(ValueError, match="ema_params at .*polyak_test at"):
        optlab.averaged_params(state)


def test_averaged_params_without_averaging_state_raises():
    state = optax.adam(1e-3).init(fixed_params())
    with pytest.raises(ValueError, match="averaged_params.*no averaging state"):
        optlab.averaged_params(state)


def test_averaged_params_is_jittable():
    state = _run(optlab.lawa(optax.sgd(0.1), k=3), fixed_params())
    tree_allclose(jax.jit(optlab.averaged_params)(state), optlab.averaged_params(state))


# ---------------------------------------------------------------------------
# Hyperparameter validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,exc,match",
    [
        (lambda: optlab.swa(optax.sgd(0.1), every_k=0), ValueError, "swa.*every_k"),
        (lambda: optlab.swa(optax.sgd(0.1), start_step=-1), ValueError, "swa.*start_step"),
        (lambda: optlab.swa(optax.sgd(0.1), every_k=1.5), TypeError, "swa.*every_k"),
        (lambda: optlab.ema_params(optax.sgd(0.1), decay=1.0), ValueError, "ema_params.*decay"),
        (
            lambda: optlab.ema_params(optax.sgd(0.1), warmup="linear"),
            ValueError,
            "ema_params.*warmup",
        ),
        (lambda: optlab.ema_params(optax.sgd(0.1), power=0.0), ValueError, "ema_params.*power"),
        (lambda: optlab.bema(optax.sgd(0.1), ema_power=-1.0), ValueError, "bema.*ema_power"),
        (lambda: optlab.bema(optax.sgd(0.1), multiplier=0.0), ValueError, "bema.*multiplier"),
        (lambda: optlab.bema(optax.sgd(0.1), every_k=0), ValueError, "bema.*every_k"),
        (
            lambda: optlab.bema(optax.sgd(0.1), min_ema_multiplier=2.0),
            ValueError,
            "bema.*min_ema_multiplier",
        ),
        (lambda: optlab.lawa(optax.sgd(0.1), k=0), ValueError, "lawa.*k"),
        (lambda: optlab.lawa(optax.sgd(0.1), k=2.0), TypeError, "lawa.*k"),
        (lambda: optlab.switch_ema(optax.sgd(0.1), decay=-0.1), ValueError, "switch_ema.*decay"),
        (
            lambda: optlab.switch_ema(optax.sgd(0.1), sync_period=0),
            ValueError,
            "switch_ema.*sync_period",
        ),
        (
            lambda: optlab.lookahead(optax.sgd(0.1), slow_step_size=1.5),
            ValueError,
            "lookahead.*slow_step_size",
        ),
        (
            lambda: optlab.lookahead(optax.sgd(0.1), sync_period=0),
            ValueError,
            "lookahead.*sync_period",
        ),
        (
            lambda: optlab.swa_schedule(0.1, swa_lr=-1.0, start_step=5),
            ValueError,
            "swa_schedule.*swa_lr",
        ),
        (
            lambda: optlab.swa_schedule(0.1, 0.01, 5, anneal_strategy="exp"),
            ValueError,
            "swa_schedule.*anneal_strategy",
        ),
        (
            lambda: optlab.swa_schedule(0.1, 0.01, 5, cycle_length=3),
            ValueError,
            "swa_schedule.*cycle_max_lr",
        ),
    ],
)
def test_bad_hyperparameters_raise(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_missing_params_raises():
    tx = optlab.swa(optax.sgd(0.1))
    params = fixed_params()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("name", ["swa", "ema_params", "bema", "lawa", "switch_ema", "lookahead"])
def test_integer_params_raise(name):
    # Integer averages would silently truncate: the wrapper rejects them before the inner init.
    tx = getattr(optlab, name)(optax.sgd(0.1))
    with pytest.raises(TypeError, match=f"optlab.{name}`.*floating point"):
        tx.init({"w": jnp.ones(3), "i": jnp.arange(3, dtype=jnp.int32)})
