"""Schedules and scaling rules (optlab/_schedules.py): values at the joins and ends,
monotonicity, jit with a traced step, use as hyperparameters, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab


def _values(schedule, steps):
    """Eager values at ``steps`` and the same under jit with a traced step."""
    eager = np.array([float(schedule(t)) for t in steps])
    jitted = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7)
    return eager


# ---------------------------------------------------------------------------
# WSD and linear decay to zero
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["linear", "1-sqrt", "cosine"])
def test_wsd_values_at_joins_and_ends(shape):
    T, W, D = 100, 10, 30
    lr = optlab.wsd_schedule(
        2.0, T, warmup_steps=W, decay_steps=D, decay_shape=shape, init_value=0.1, end_value=0.02
    )
    v = _values(lr, np.arange(0, T + 5))
    assert v[0] == pytest.approx(0.1)
    assert v[W] == pytest.approx(2.0) and v[T - D] == pytest.approx(2.0)
    assert v[T] == pytest.approx(0.02) and v[T + 4] == pytest.approx(0.02)
    np.testing.assert_allclose(v[W : T - D + 1], 2.0)
    assert np.all(np.diff(v[: W + 1]) > 0), "warmup increases"
    assert np.all(np.diff(v[W:]) <= 1e-7), "non-increasing after warmup"
    # continuous at the joins: each phase's formula meets the next one's value there
    assert abs(v[W] - v[W - 1]) == pytest.approx((2.0 - 0.1) / W, rel=1e-5)
    s = np.arange(D + 1) / D
    frac = {"linear": 1 - s, "1-sqrt": 1 - np.sqrt(s), "cosine": 0.5 * (1 + np.cos(np.pi * s))}
    np.testing.assert_allclose(
        v[T - D : T + 1], 0.02 + (2.0 - 0.02) * frac[shape], rtol=1e-5, atol=1e-6
    )


def test_wsd_decay_fraction_default_and_no_warmup():
    lr = optlab.wsd_schedule(1.0, 50)  # decay_fraction 0.2 -> 10 steps, no warmup
    v = _values(lr, np.arange(51))
    assert v[0] == 1.0 and v[40] == 1.0 and v[39] == 1.0 and v[50] == 0.0
    assert 0.0 < v[45] < 1.0
    assert float(optlab.wsd_schedule(1.0, 50, decay_fraction=0.0)(49)) == 1.0


def test_linear_decay_to_zero():
    lr = optlab.linear_decay_to_zero(0.1, total_steps=100, warmup_steps=20)
    v = _values(lr, np.arange(0, 110))
    assert v[0] == 0.0 and v[20] == pytest.approx(0.1)
    assert v[60] == pytest.approx(0.05) and v[100] == 0.0 and v[109] == 0.0
    assert np.all(np.diff(v[20:]) <= 0)
    # the same as wsd_schedule with no constant phase
    w = optlab.wsd_schedule(0.1, 100, warmup_steps=20, decay_steps=80, decay_shape="linear")
    np.testing.assert_allclose(v, _values(w, np.arange(0, 110)), atol=1e-7)


# ---------------------------------------------------------------------------
# Inverse square root, cyclic, 1cycle
# ---------------------------------------------------------------------------


def test_inverse_sqrt_schedule():
    lr = optlab.inverse_sqrt_schedule(1.0, warmup_steps=100)
    v = _values(lr, [0, 50, 100, 400, 10_000])
    np.testing.assert_allclose(v, [0.0, 0.5, 1.0, 0.5, 0.1], rtol=1e-6)
    lr = optlab.inverse_sqrt_schedule(
        1.0, warmup_steps=10, timescale=5.0, cooldown_steps=20, total_steps=100
    )
    v = _values(lr, np.arange(0, 105))
    start = 1.0 / np.sqrt(1.0 + (80 - 10) / 5.0)
    assert v[80] == pytest.approx(start, rel=1e-6)
    assert abs(v[79] - v[80]) < 0.01 and v[100] == 0.0 and v[104] == 0.0
    assert np.all(np.diff(v[10:]) <= 1e-7)


@pytest.mark.parametrize("mode", ["triangular", "cosine", "swa"])
def test_cyclic_schedule_is_periodic_and_bounded(mode):
    lr = optlab.cyclic_schedule(0.01, 0.1, cycle_steps=8, mode=mode)
    v = _values(lr, np.arange(32))
    np.testing.assert_allclose(v[:8], v[8:16], rtol=1e-6)
    assert v.min() >= 0.01 - 1e-7 and v.max() <= 0.1 + 1e-7
    if mode == "triangular":
        assert v[0] == pytest.approx(0.01) and v[4] == pytest.approx(0.1)
    elif mode == "cosine":
        assert v[0] == pytest.approx(0.1) and np.all(np.diff(v[:8]) < 0)
    else:  # SWA: linear decrease, min at the last step of each cycle
        assert v[7] == pytest.approx(0.01) and v[15] == pytest.approx(0.01)
        np.testing.assert_allclose(np.diff(v[:8]), -(0.1 - 0.01) / 8, rtol=1e-5)


def test_onecycle_momentum_is_low_when_learning_rate_is_high():
    lr, mom = optlab.onecycle(0.1, total_steps=100, pct_start=0.3)
    steps = np.arange(101)
    a, m = _values(lr, steps), _values(mom, steps)
    peak = int(np.argmax(a))
    assert peak == 30 and a[peak] == pytest.approx(0.1)
    assert m[peak] == pytest.approx(0.85) and int(np.argmin(m)) == peak
    assert m[0] == pytest.approx(0.95) and m[100] == pytest.approx(0.95)
    assert a[0] == pytest.approx(0.1 / 25) and a[100] == pytest.approx(0.1 / 25 / 1e4, rel=1e-3)
    assert np.corrcoef(a, m)[0, 1] < -0.95
    assert np.all(np.diff(m[:31]) <= 1e-7) and np.all(np.diff(m[30:]) >= -1e-7)


def test_schedules_drive_hyperparameters_under_jit():
    lr, mom = optlab.onecycle(0.1, total_steps=10)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=mom)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(p, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(3):
        params, state = step(params, state)
    # the hyperparameters of the last (third) update: the schedules at count 2
    assert float(state.hyperparams["momentum"]) == pytest.approx(float(mom(2)), rel=1e-6)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(lr(2)), rel=1e-6)
    tx = optax.sgd(optlab.wsd_schedule(0.1, 10, warmup_steps=2))
    s = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(4):
        u, s = update(params, s, params)
        np.testing.assert_allclose(
            u["w"], -float(optlab.wsd_schedule(0.1, 10, 2)(t)) * params["w"], rtol=1e-6
        )


# ---------------------------------------------------------------------------
# Refinement
# ---------------------------------------------------------------------------


def test_refine_schedule_formula():
    rng = np.random.default_rng(0)
    g = rng.uniform(0.5, 2.0, size=20)
    lr = optlab.refine_schedule(g, peak_value=0.3)
    v = _values(lr, np.arange(22))
    w = np.array([np.sum(g[t + 1 :] ** 2) / g[t] ** 2 for t in range(20)])
    np.testing.assert_allclose(v[:20], 0.3 * w / w.max(), rtol=1e-5, atol=1e-7)
    assert v[19] == 0.0 and v[20] == 0.0 and v[21] == 0.0
    assert v.max() == pytest.approx(0.3)


def test_refine_schedule_flat_norms_give_linear_decay_and_resampling():
    v = _values(optlab.refine_schedule(np.ones(11)), np.arange(11))
    np.testing.assert_allclose(v, np.linspace(1.0, 0.0, 11), atol=1e-6)
    v = _values(optlab.refine_schedule(np.ones(11), total_steps=21), np.arange(21))
    np.testing.assert_allclose(v, np.linspace(1.0, 0.0, 21), atol=1e-6)


# ---------------------------------------------------------------------------
# Scaling rules
# ---------------------------------------------------------------------------


def test_batch_size_scaling():
    assert optlab.batch_size_scaled_learning_rate(0.1, 128, 512) == pytest.approx(0.4)
    assert optlab.batch_size_scaled_learning_rate(1e-3, 128, 512, "sqrt") == pytest.approx(2e-3)
    assert optlab.batch_size_scaled_learning_rate(1e-3, 512, 128, "sqrt") == pytest.approx(5e-4)


def test_adamw_timescale_round_trip():
    tau = optlab.adamw_timescale(3e-4, 0.1, batch_size=512, dataset_size=1_000_000)
    assert tau == pytest.approx(512 / (3e-4 * 0.1 * 1_000_000))
    wd = optlab.weight_decay_for_timescale(tau, 3e-4, 512, 1_000_000)
    assert wd == pytest.approx(0.1)
    # twice the data at the same timescale: half the weight decay
    assert optlab.weight_decay_for_timescale(tau, 3e-4, 512, 2_000_000) == pytest.approx(0.05)


def test_mup_labels_and_learning_rates_in_partition():
    params = {
        "embed": jnp.ones((64, 32)),
        "h1": jnp.ones((32, 32)),
        "h2": jnp.ones((32, 32)),
        "head": jnp.ones((32, 10)),
        "bias": jnp.ones(32),
        "conv": jnp.ones((3, 3, 32, 32)),
    }
    labels = optlab.mup_param_labels(32)(params)
    assert labels == {
        "embed": "input",
        "h1": "hidden",
        "h2": "hidden",
        "head": "output",
        "bias": "vector",
        "conv": "hidden",
    }
    lrs = optlab.mup_adam_learning_rates(1e-2, width=32, base_width=8)
    assert lrs == {"input": 1e-2, "vector": 1e-2, "hidden": 2.5e-3, "output": 2.5e-3}
    tx = optax.partition({k: optax.adam(v) for k, v in lrs.items()}, optlab.mup_param_labels(32))
    u, _ = tx.update(params, tx.init(params), params)
    # Adam's first step has magnitude lr per coordinate
    assert float(jnp.abs(u["h1"]).max()) == pytest.approx(2.5e-3, rel=1e-4)
    assert float(jnp.abs(u["embed"]).max()) == pytest.approx(1e-2, rel=1e-4)
    assert optlab.mup_param_labels([32, 128])({"w": jnp.ones((32, 128))}) == {"w": "hidden"}


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

_BAD = [
    (lambda: optlab.wsd_schedule(1.0, 10, warmup_steps=11), "wsd_schedule", "warmup_steps"),
    (
        lambda: optlab.wsd_schedule(1.0, 10, warmup_steps=5, decay_steps=6),
        "wsd_schedule",
        "decay_steps",
    ),
    (lambda: optlab.wsd_schedule(-1.0, 10), "wsd_schedule", "peak_value"),
    (lambda: optlab.wsd_schedule(float("nan"), 10), "wsd_schedule", "peak_value"),
    (lambda: optlab.wsd_schedule(1.0, 0), "wsd_schedule", "total_steps"),
    (lambda: optlab.wsd_schedule(1.0, 10.0), "wsd_schedule", "total_steps"),
    (lambda: optlab.wsd_schedule(1.0, 10, end_value=-0.1), "wsd_schedule", "end_value"),
    (
        lambda: optlab.wsd_schedule(1.0, 10, decay_steps=2, decay_fraction=0.1),
        "wsd_schedule",
        "decay_fraction",
    ),
    (lambda: optlab.wsd_schedule(1.0, 10, decay_fraction=1.5), "wsd_schedule", "decay_fraction"),
    (lambda: optlab.wsd_schedule(1.0, 10, decay_shape="exp"), "wsd_schedule", "decay_shape"),
    (lambda: optlab.wsd_schedule(None, 10), "wsd_schedule", "peak_value"),
    (lambda: optlab.wsd_schedule("1", 10), "wsd_schedule", "peak_value"),
    (lambda: optlab.wsd_schedule(True, 10), "wsd_schedule", "peak_value"),
    (
        lambda: optlab.linear_decay_to_zero(1.0, 10, warmup_steps=20),
        "linear_decay_to_zero",
        "warmup_steps",
    ),
    (lambda: optlab.linear_decay_to_zero(1.0, -3), "linear_decay_to_zero", "total_steps"),
    (
        lambda: optlab.inverse_sqrt_schedule(1.0, cooldown_steps=5),
        "inverse_sqrt_schedule",
        "total_steps",
    ),
    (
        lambda: optlab.inverse_sqrt_schedule(1.0, timescale=0.0),
        "inverse_sqrt_schedule",
        "timescale",
    ),
    (
        lambda: optlab.inverse_sqrt_schedule(1.0, 8, cooldown_steps=5, total_steps=10),
        "inverse_sqrt_schedule",
        "cooldown_steps",
    ),
    (lambda: optlab.cyclic_schedule(0.1, 0.01, 4), "cyclic_schedule", "max_value"),
    (lambda: optlab.cyclic_schedule(0.0, 0.1, 0), "cyclic_schedule", "cycle_steps"),
    (lambda: optlab.cyclic_schedule(0.0, 0.1, 4, mode="saw"), "cyclic_schedule", "mode"),
    (lambda: optlab.onecycle(0.1, 100, pct_start=1.0), "onecycle", "pct_start"),
    (
        lambda: optlab.onecycle(0.1, 100, min_momentum=0.99, max_momentum=0.9),
        "onecycle",
        "max_momentum",
    ),
    (lambda: optlab.onecycle(0.1, 100, max_momentum=1.0), "onecycle", "max_momentum"),
    (lambda: optlab.refine_schedule([1.0, 0.0, 2.0]), "refine_schedule", "grad_norms"),
    (lambda: optlab.refine_schedule([1.0, float("nan")]), "refine_schedule", "grad_norms"),
    (lambda: optlab.refine_schedule(np.ones((2, 2))), "refine_schedule", "grad_norms"),
    (lambda: optlab.refine_schedule([]), "refine_schedule", "grad_norms"),
    (
        lambda: optlab.batch_size_scaled_learning_rate(0.1, 0, 4),
        "batch_size_scaled_learning_rate",
        "base_batch_size",
    ),
    (
        lambda: optlab.batch_size_scaled_learning_rate(0.1, 2, 4, "cubic"),
        "batch_size_scaled_learning_rate",
        "rule",
    ),
    (lambda: optlab.adamw_timescale(1e-3, 0.0, 32, 100), "adamw_timescale", "weight_decay"),
    (
        lambda: optlab.weight_decay_for_timescale(-1.0, 1e-3, 32, 100),
        "weight_decay_for_timescale",
        "timescale",
    ),
    (lambda: optlab.mup_param_labels(0), "mup_param_labels", "width"),
    (lambda: optlab.mup_adam_learning_rates(1e-3, 64, 0), "mup_adam_learning_rates", "base_width"),
]


@pytest.mark.parametrize(
    "make,fn,param", _BAD, ids=[f"{i}-{f}-{p}" for i, (_, f, p) in enumerate(_BAD)]
)
def test_bad_input_names_function_and_parameter(make, fn, param):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    msg = str(info.value)
    assert f"optlab.{fn}`" in msg and f"`{param}`" in msg, msg
