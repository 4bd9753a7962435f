"""Momentum and adaptive-moment transforms (optlab/_momentum.py)."""

import hypothesis.strategies as st
import jax.numpy as jnp
import optax

import optlab
from helpers import Case

_b1 = st.floats(0.0, 0.99)
_b2 = st.floats(0.9, 0.9999)
_eps = st.floats(1e-8, 1e-4)

CASES = [
    Case("scale_by_momentum", kwargs=dict(b1=0.9), hparams=dict(b1=_b1)),
    Case(
        "scale_by_momentum", id="nesterov", kwargs=dict(b1=0.9, nesterov=True), hparams=dict(b1=_b1)
    ),
    Case(
        "scale_by_momentum",
        id="bf16_acc",
        kwargs=dict(b1=0.9, accumulator_dtype=jnp.bfloat16),
        static_args=("accumulator_dtype",),
    ),
    Case("scale_by_adam_family", hparams=dict(b1=_b1, b2=_b2, eps=_eps)),
    Case(
        "scale_by_adam_family",
        id="amsgrad",
        kwargs=dict(amsgrad=True),
        hparams=dict(b1=_b1, b2=_b2),
    ),
    Case(
        "scale_by_adam_family", id="adamax", kwargs=dict(adamax=True), hparams=dict(b1=_b1, b2=_b2)
    ),
    Case(
        "scale_by_adam_family",
        id="nesterov",
        kwargs=dict(nesterov=True),
        hparams=dict(b1=_b1, b2=_b2),
    ),
    Case(
        "scale_by_adam_family",
        id="bf16_state",
        kwargs=dict(amsgrad=True, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        static_args=("mu_dtype", "nu_dtype"),
    ),
    Case("scale_by_diffgrad", hparams=dict(b1=_b1, b2=_b2, eps=_eps)),
    Case(
        "scale_by_ademamix",
        kwargs=dict(b3=0.999, alpha=5.0),
        hparams=dict(b1=_b1, b2=_b2, b3=st.floats(0.9, 0.9999), alpha=st.floats(0.0, 8.0)),
    ),
    Case(
        "scale_by_ademamix",
        id="warmup",
        kwargs=dict(b3_warmup=10, alpha_warmup=5),
        hparams=dict(b3=st.floats(0.9, 0.9999), alpha=st.floats(0.0, 8.0)),
        static_args=("b3_warmup", "alpha_warmup"),
    ),
    Case(
        "scale_by_ademamix",
        id="schedules",
        kwargs=dict(alpha=optax.linear_schedule(0.0, 5.0, 10), b3=optax.constant_schedule(0.99)),
    ),
    Case(
        "mars_correction",
        hparams=dict(gamma=st.floats(0.0, 0.1), b1=_b1, max_norm=st.floats(0.1, 10.0)),
    ),
    Case(
        "mars_correction",
        id="no_clip",
        kwargs=dict(max_norm=None),
        hparams=dict(gamma=st.floats(0.0, 0.1), b1=_b1),
    ),
    # The wrapper has no float hyperparameter of its own: inject the inner one through it.
    Case(
        "with_grad_sign",
        factory=lambda b1=0.9: optlab.with_grad_sign(optlab.scale_by_adam_family(b1=b1)),
        hparams=dict(b1=_b1),
    ),
    Case(
        "with_grad_sign",
        id="optimizer",
        factory=lambda learning_rate=1e-2: optlab.with_grad_sign(
            optax.adam(learning_rate), inner_is_direction=False
        ),
    ),
    Case(
        "cautious",
        factory=lambda eps=1e-8: optlab.cautious(optax.adamw(1e-2), eps=eps),
        hparams=dict(eps=st.floats(1e-8, 1e-2)),
    ),
    Case(
        "cautious",
        id="direction",
        factory=lambda eps=1e-8: optlab.cautious(
            optlab.scale_by_adam_family(), eps=eps, inner_is_direction=True
        ),
    ),
    Case("scale_by_optimistic_amsgrad", hparams=dict(b1=_b1, b2=_b2, eps=_eps)),
    Case("scale_by_lion", hparams=dict(b1=_b1, b2=_b2)),
    Case("scale_by_signum", hparams=dict(b1=_b1)),
    Case(
        "scale_by_adafactor",
        hparams=dict(decay_rate=st.floats(0.5, 1.0)),
        static_args=("min_dim_size_to_factor",),
    ),
    Case(
        "scale_by_adafactor",
        id="factored",
        kwargs=dict(min_dim_size_to_factor=2),
        hparams=dict(decay_rate=st.floats(0.5, 1.0)),
        static_args=("min_dim_size_to_factor",),
    ),
    Case(
        "scale_by_adafactor",
        id="factored_matrix",
        kwargs=dict(min_dim_size_to_factor=2),
        tree="matrix",
        static_args=("min_dim_size_to_factor",),
    ),
    Case("scale_by_sgd_sai", hparams=dict(b1=_b1, eps=_eps)),
    # Issue 12 (part A)
    Case("scale_by_adopt", hparams=dict(b1=_b1, b2=_b2, eps=_eps)),
    Case("scale_by_adamomentum", hparams=dict(b1=_b1, b2=_b2, eps=_eps)),
    Case("scale_by_qhm", hparams=dict(b1=_b1, nu=st.floats(0.0, 1.0))),
    Case(
        "scale_by_qhadam",
        hparams=dict(b1=_b1, b2=_b2, nu1=st.floats(0.0, 1.0), nu2=st.floats(0.0, 1.0)),
    ),
    Case("scale_by_ano", hparams=dict(b1=_b1, b2=_b2, eps=_eps)),
    Case(
        "scale_by_nag_gs",
        hparams=dict(
            learning_rate=st.floats(1e-3, 0.5), mu=st.floats(0.1, 2.0), gamma=st.floats(0.5, 2.0)
        ),
    ),
    Case("scale_by_lion_kappa", hparams=dict(b1=_b1, b2=_b2)),
]
