"""Sharpness-aware family: every factory wraps an inner ``optax.sgd(0.1)`` and needs ``grad_fn``.

The factories are ``functools.partial`` objects rather than ``lambda **kw`` so that
``optax.inject_hyperparams`` can read their signature; ``mask`` callables are static
(inject would otherwise treat a callable as a schedule).
"""

import functools

import hypothesis.strategies as st
import jax
import optax

import optlab
from helpers import Case, register_not_transform

register_not_transform(
    "sam_policy",
    "asam_policy",
    "fisher_policy",
    "gsam_policy",
    "looksam_policy",
    "multistep_policy",
    "random_policy",
    "unnormalized_policy",
    "norm_layer_mask",
    "sharpness_diagnostics",
    "nnx_grad_fn",
    "apply_gradients",
    "awp_policy",
    "gradnorm_policy",
    "extragradient_policy",
    "rwp_policy",
    "o2nc_policy",
)

GRAD_FN = ("grad_fn",)
RHO = dict(rho=st.floats(0.0, 0.5))


def _wrap(name, inner=None):
    return functools.partial(getattr(optlab, name), inner or optax.sgd(0.1))


def _vectors_only(params):
    return jax.tree.map(lambda x: x.ndim <= 1, params)


CASES = [
    # The policy holds the hyperparameters (checked by `gsam_policy`, tested in test_sharpness).
    Case(
        "sharpness_aware",
        factory=functools.partial(
            optlab.sharpness_aware, optax.sgd(0.1), optlab.gsam_policy(rho=0.05, alpha=0.2)
        ),
        inject=False,
        extra_args=GRAD_FN,
    ),
    Case("sam", factory=_wrap("sam"), kwargs=dict(rho=0.05), hparams=RHO, extra_args=GRAD_FN),
    Case(
        "sam",
        id="adam",
        factory=_wrap("sam", optax.adam(1e-2)),
        kwargs=dict(rho=0.05),
        hparams=RHO,
        extra_args=GRAD_FN,
    ),
    Case(
        "asam",
        factory=_wrap("asam"),
        kwargs=dict(rho=0.5, eta=0.01),
        hparams=dict(rho=st.floats(0.0, 1.0), eta=st.floats(0.0, 0.1)),
        extra_args=GRAD_FN,
    ),
    Case(
        "gsam",
        factory=_wrap("gsam"),
        kwargs=dict(rho=0.05, alpha=0.1),
        hparams=dict(**RHO, alpha=st.floats(0.0, 1.0)),
        extra_args=GRAD_FN,
    ),
    Case(
        "fisher_sam",
        factory=_wrap("fisher_sam"),
        kwargs=dict(rho=0.1, eta=1.0),
        hparams=dict(**RHO, eta=st.floats(0.0, 2.0)),
        extra_args=GRAD_FN,
    ),
    Case(
        "masked_sam",
        factory=_wrap("masked_sam"),
        kwargs=dict(rho=0.05, mask=_vectors_only),
        hparams=RHO,
        static_args=("mask",),
        extra_args=GRAD_FN,
    ),
    Case(
        "masked_sam",
        id="sam_on",
        factory=_wrap("masked_sam"),
        kwargs=dict(rho=0.05),
        hparams=RHO,
        static_args=("mask",),
        extra_args=GRAD_FN,
    ),
    Case(
        "looksam",
        factory=_wrap("looksam"),
        kwargs=dict(rho=0.05, every_k=2, alpha=0.7),
        hparams=dict(**RHO, alpha=st.floats(0.0, 1.0)),
        static_args=("every_k",),
        extra_args=GRAD_FN,
    ),
    Case(
        "multistep_sam",
        factory=_wrap("multistep_sam"),
        kwargs=dict(rho=0.05, num_steps=2, step_size=0.03),
        hparams=dict(**RHO, step_size=st.floats(0.01, 0.1)),
        static_args=("num_steps",),
        extra_args=GRAD_FN,
    ),
    Case(
        "random_sam",
        factory=_wrap("random_sam"),
        kwargs=dict(rho=0.05, seed=0),
        hparams=RHO,
        static_args=("seed",),
        extra_args=GRAD_FN,
    ),
    Case(
        "unnormalized_sam",
        factory=_wrap("unnormalized_sam"),
        kwargs=dict(rho=0.05),
        hparams=RHO,
        extra_args=GRAD_FN,
    ),
    Case(
        "awp_sam",
        factory=_wrap("awp_sam"),
        kwargs=dict(gamma=0.05),
        hparams=dict(gamma=st.floats(0.0, 0.5)),
        extra_args=GRAD_FN,
    ),
    Case(
        "gradnorm_sam",
        factory=_wrap("gradnorm_sam"),
        kwargs=dict(gamma=0.05, eps=0.01),
        hparams=dict(gamma=st.floats(0.0, 0.5), eps=st.floats(0.001, 0.1)),
        extra_args=GRAD_FN,
    ),
    Case(
        "extragradient",
        factory=_wrap("extragradient"),
        kwargs=dict(learning_rate=0.1),
        hparams=dict(learning_rate=st.floats(0.0, 0.5)),
        extra_args=GRAD_FN,
    ),
    Case(
        "rwp",
        factory=_wrap("rwp"),
        kwargs=dict(sigma=0.05, alpha=0.5, seed=0),
        hparams=dict(sigma=st.floats(0.0, 0.2), alpha=st.floats(0.0, 1.0)),
        static_args=("seed",),
        extra_args=GRAD_FN,
    ),
    Case(
        "rwp",
        id="arwp",
        factory=_wrap("rwp"),
        kwargs=dict(sigma=0.05, alpha=0.5, seed=0, eta=1.0, beta=0.9),
        hparams=dict(eta=st.floats(0.0, 5.0), beta=st.floats(0.0, 0.99)),
        static_args=("seed",),
        extra_args=GRAD_FN,
    ),
    Case(
        "xgrad",
        factory=_wrap("xgrad", optax.sgd(0.1, momentum=0.9)),
        kwargs=dict(prediction_steps=1.0),
        hparams=dict(prediction_steps=st.floats(0.0, 2.0)),
        extra_args=GRAD_FN,
    ),
    # o2nc has no float hyperparameter: nothing for inject_hyperparams.
    Case("o2nc", factory=_wrap("o2nc"), kwargs=dict(seed=0), inject=False, extra_args=GRAD_FN),
]
