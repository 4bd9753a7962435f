"""Step-size rules and parameter-free methods (optlab/_step_sizes.py), their named
optimizers (the block at the end of optlab/_aliases.py), and the schedules / scaling
rules of optlab/_schedules.py (plain functions, not transforms)."""

import hypothesis.strategies as st
import optax

import optlab
from helpers import Case, register_not_transform

register_not_transform(
    "wsd_schedule",
    "linear_decay_to_zero",
    "inverse_sqrt_schedule",
    "cyclic_schedule",
    "onecycle",
    "refine_schedule",
    "batch_size_scaled_learning_rate",
    "adamw_timescale",
    "weight_decay_for_timescale",
    "mup_param_labels",
    "mup_adam_learning_rates",
)

LR = st.floats(1e-3, 0.1)
B1 = st.floats(0.0, 0.99)


def _schedule_free(learning_rate=0.1, b1=0.9, weight_lr_power=2.0):
    return optlab.schedule_free(
        optax.sgd(learning_rate), learning_rate, b1=b1, weight_lr_power=weight_lr_power
    )


def _opt(name, kwargs=None, hparams=None, **rest):
    return Case(
        name,
        kwargs={"learning_rate": 1e-2, **(kwargs or {})},
        hparams={"learning_rate": LR, **(hparams or {})},
        kind="optimizer",
        **rest,
    )


CASES = [
    # transforms
    Case(
        "scale_by_sps",
        kwargs={"max_learning_rate": 0.5},
        hparams={"max_learning_rate": st.floats(0.01, 1.0), "c": st.floats(0.1, 2.0)},
        extra_args=("value",),
    ),
    Case("normalize_by_loss", hparams={"eps": st.floats(1e-8, 1e-2)}, extra_args=("value",)),
    Case(
        "scale_by_aegd",
        kwargs={"learning_rate": 0.1},
        hparams={"learning_rate": LR, "c": st.floats(0.5, 2.0)},
        extra_args=("value",),
    ),
    Case(
        "scale_by_adagrad_norm",
        kwargs={"initial_accumulator_value": 0.1},
        hparams={"initial_accumulator_value": st.floats(0.0, 1.0)},
    ),
    Case("scale_by_adagrad_norm", id="leaf", kwargs={"granularity": "leaf", "eps": 1e-7}),
    Case(
        "scale_by_adago",
        hparams={"b1": B1, "gamma": st.floats(0.1, 10.0)},
        static_args=("ns_steps",),
        tree="matrix",
    ),
    Case("scale_by_dog", hparams={"eps": st.floats(1e-8, 1e-4)}),
    Case("scale_by_dowg", hparams={"eps": st.floats(1e-6, 1e-3)}),
    Case("scale_by_prodigy", hparams={"b1": B1, "b2": st.floats(0.5, 0.999)}),
    Case(
        "schedule_free",
        factory=_schedule_free,
        hparams={"learning_rate": LR, "b1": B1, "weight_lr_power": st.floats(0.0, 2.0)},
    ),
    # named optimizers
    _opt("adagrad_norm", hparams={"weight_decay": st.floats(0.0, 0.1)}),
    _opt("adago", hparams={"b1": B1, "gamma": st.floats(0.1, 10.0)}, static_args=("ns_steps",)),
    _opt(
        "sps",
        kwargs={"learning_rate": 0.5},
        hparams={"c": st.floats(0.1, 2.0)},
        extra_args=("value",),
    ),
    _opt(
        "alr_smag",
        kwargs={"learning_rate": 0.5, "weight_decay": 1e-3},
        hparams={"momentum": B1},
        extra_args=("value",),
    ),
    _opt("dog", kwargs={"learning_rate": 1.0}),
    _opt("dowg", kwargs={"learning_rate": 1.0}),
    _opt(
        "prodigy",
        kwargs={"learning_rate": 1.0, "weight_decay": 1e-3},
        hparams={"b1": B1, "b2": st.floats(0.5, 0.999)},
    ),
    _opt("schedule_free_sgd", kwargs={"learning_rate": 0.1}, hparams={"b1": B1}),
    _opt(
        "schedule_free_adamw",
        kwargs={"warmup_steps": 2, "weight_decay": 1e-3},
        hparams={"b1": B1},
        static_args=("warmup_steps",),
    ),
]
