"""Averaging wrappers (SWA, EMA, BEMA, LAWA, Switch-EMA, Lookahead).

Each factory takes the inner learning rate as a float hyperparameter so that
``optax.inject_hyperparams`` really injects something (and the wrapper is rebuilt
from traced values); integer periods are ``static_args``. Periods are small so the
sampling / switching / synchronisation branches run within the suite's 3 steps.
"""

import hypothesis.strategies as st
import optax

import optlab
from helpers import Case, register_not_transform

register_not_transform("averaged_params", "swa_schedule", "update_bn", "sigma_rel_to_gamma")
register_not_transform(
    "PowerEMASnapshot", "power_ema_snapshots", "posthoc_ema", "posthoc_ema_coefficients"
)


def _swa(learning_rate=0.1, start_step=2, every_k=1):
    return optlab.swa(optax.sgd(learning_rate), start_step=start_step, every_k=every_k)


def _swa_adam(learning_rate=1e-2, start_step=0, every_k=2):
    return optlab.swa(optax.adam(learning_rate), start_step=start_step, every_k=every_k)


def _ema(learning_rate=0.1, decay=0.9, debias=True, warmup=None):
    return optlab.ema_params(optax.sgd(learning_rate), decay=decay, debias=debias, warmup=warmup)


def _ema_adam_power(learning_rate=1e-2, decay=0.99, power=0.75):
    return optlab.ema_params(optax.adam(learning_rate), decay=decay, warmup="power", power=power)


def _bema(
    learning_rate=0.1, ema_power=0.5, bias_power=0.2, lag=10.0, multiplier=1.0, burn_in=1, every_k=1
):
    return optlab.bema(
        optax.sgd(learning_rate),
        ema_power=ema_power,
        bias_power=bias_power,
        lag=lag,
        multiplier=multiplier,
        burn_in=burn_in,
        every_k=every_k,
    )


def _lawa(learning_rate=0.1, k=2, every_k=1, start_step=1):
    return optlab.lawa(optax.sgd(learning_rate), k=k, every_k=every_k, start_step=start_step)


def _switch_ema(learning_rate=1e-2, decay=0.9, sync_period=2):
    return optlab.switch_ema(optax.adam(learning_rate), decay=decay, sync_period=sync_period)


def _lookahead(learning_rate=0.1, slow_step_size=0.5, sync_period=2, reset_state=False):
    return optlab.lookahead(
        optax.sgd(learning_rate),
        sync_period=sync_period,
        slow_step_size=slow_step_size,
        reset_state=reset_state,
    )


def _lookahead_adam(learning_rate=1e-2, slow_step_size=0.5, sync_period=2):
    return optlab.lookahead(
        optax.adam(learning_rate),
        sync_period=sync_period,
        slow_step_size=slow_step_size,
        reset_state=True,
    )


def _power_ema(learning_rate=0.1, sigma_rel=0.1):
    return optlab.power_ema(optax.sgd(learning_rate), sigma_rel=sigma_rel)


def _power_ema_profiles(learning_rate=0.1, sigma_rels=(0.05, 0.1), snapshot_every=2):
    return optlab.power_ema_profiles(optax.sgd(learning_rate), sigma_rels, snapshot_every)


CASES = [
    Case(
        "swa",
        factory=_swa,
        static_args=("start_step", "every_k"),
        hparams=dict(every_k=st.integers(1, 2), learning_rate=st.floats(0.01, 0.5)),
    ),
    Case("swa", factory=_swa_adam, static_args=("start_step", "every_k"), id="adam"),
    Case(
        "ema_params",
        factory=_ema,
        static_args=("debias", "warmup"),
        hparams=dict(
            decay=st.floats(0.0, 0.99),
            debias=st.booleans(),
            warmup=st.sampled_from([None, "tf", "power"]),
        ),
    ),
    Case("ema_params", factory=_ema_adam_power, id="adam-power"),
    Case(
        "bema",
        factory=_bema,
        static_args=("burn_in", "every_k"),
        hparams=dict(
            ema_power=st.floats(0.0, 1.0),
            bias_power=st.floats(0.0, 1.0),
            burn_in=st.integers(0, 2),
            every_k=st.integers(1, 2),
        ),
    ),
    Case(
        "lawa",
        factory=_lawa,
        static_args=("k", "every_k", "start_step"),
        hparams=dict(k=st.integers(1, 3), every_k=st.integers(1, 2)),
    ),
    Case(
        "switch_ema",
        factory=_switch_ema,
        static_args=("sync_period",),
        hparams=dict(decay=st.floats(0.0, 0.999), sync_period=st.integers(1, 3)),
    ),
    Case(
        "lookahead",
        factory=_lookahead,
        static_args=("sync_period", "reset_state"),
        hparams=dict(
            slow_step_size=st.floats(0.0, 1.0),
            sync_period=st.integers(1, 3),
            reset_state=st.booleans(),
        ),
    ),
    Case("lookahead", factory=_lookahead_adam, static_args=("sync_period",), id="adam-reset"),
    Case(
        "power_ema",
        factory=_power_ema,
        static_args=("sigma_rel",),
        hparams=dict(sigma_rel=st.floats(0.02, 0.25), learning_rate=st.floats(0.01, 0.5)),
    ),
    Case(
        "power_ema_profiles",
        factory=_power_ema_profiles,
        static_args=("sigma_rels", "snapshot_every"),
        hparams=dict(learning_rate=st.floats(0.01, 0.5)),
    ),
]
