"""Cases for the normalization and projection family (optlab/_normalization.py)."""

import functools

import hypothesis.strategies as st
import optax

import optlab
from helpers import Case, register_not_transform

register_not_transform("muon_hidden_mask")

_EPS = st.floats(0.0, 1e-4)
_POS_EPS = st.floats(1e-10, 1e-4)
_WD = st.floats(0.0, 0.5)


# functools.partial keeps radial_projection's signature, which optax.inject_hyperparams
# binds (a `lambda **kw` would be bound as one argument named `kw`).
_adamp = functools.partial(optlab.radial_projection, optax.scale_by_adam())
_sgdp = functools.partial(optlab.radial_projection, optax.trace(0.9))
_adamp_axis0 = functools.partial(optlab.radial_projection, optax.scale_by_adam(), channel_axis=0)


_RADIAL_KW = dict(delta=0.1, wd_ratio=0.1, weight_decay=1e-2)
_RADIAL_HP = dict(
    delta=st.floats(0.0, 1.0), wd_ratio=st.floats(0.0, 1.0), weight_decay=_WD, eps=_POS_EPS
)

CASES = [
    Case("normalize_by_global_norm", hparams=dict(eps=_EPS)),
    Case("normalize_by_leaf_norm", hparams=dict(eps=_EPS)),
    Case("scale_by_sign", inject=False),  # no hyperparameter
    # Newton-Schulz: 2-D leaves, and any ranks under both rules for the others.
    Case(
        "orthogonalize",
        tree="matrix",
        hparams=dict(eps=_POS_EPS),
        static_args=("ns_steps",),
        id="matrix",
    ),
    Case("orthogonalize", hparams=dict(eps=_POS_EPS), static_args=("ns_steps",), id="any"),
    Case(
        "orthogonalize",
        kwargs=dict(other_ranks="reshape", ns_steps=3),
        hparams=dict(eps=_POS_EPS),
        static_args=("ns_steps",),
        id="any-reshape",
    ),
    Case(
        "sinkhorn_normalize",
        tree="matrix",
        hparams=dict(eps=_EPS),
        static_args=("num_iters",),
        id="matrix",
    ),
    Case("sinkhorn_normalize", hparams=dict(eps=_EPS), static_args=("num_iters",), id="any"),
    Case(
        "sinkhorn_normalize",
        kwargs=dict(other_ranks="reshape", num_iters=2),
        hparams=dict(eps=_EPS),
        static_args=("num_iters",),
        id="any-reshape",
    ),
    Case(
        "scale_by_trust_ratio",
        hparams=dict(
            min_norm=st.floats(0.0, 0.1), trust_coefficient=st.floats(1e-3, 1.0), eps=_EPS
        ),
    ),
    Case(
        "radial_projection",
        factory=_adamp,
        kwargs=_RADIAL_KW,
        hparams=_RADIAL_HP,
        static_args=("channel_axis",),
        id="adam",
    ),
    Case(
        "radial_projection",
        factory=_sgdp,
        kwargs=_RADIAL_KW,
        hparams=_RADIAL_HP,
        static_args=("channel_axis",),
        id="trace",
    ),
    Case(
        "radial_projection",
        factory=_adamp_axis0,
        kwargs=_RADIAL_KW,
        hparams=_RADIAL_HP,
        static_args=("channel_axis",),
        tree="matrix",
        id="adam-matrix-axis0",
    ),
    # no float hyperparameter to inject (channel_axis is static)
    Case("centralize", inject=False),
    Case("centralize", kwargs=dict(channel_axis=0), inject=False, id="axis0"),
    Case("cautious_weight_decay", kwargs=dict(weight_decay=1e-2), hparams=dict(weight_decay=_WD)),
    Case(
        "cautious_weight_decay",
        kwargs=dict(weight_decay=optax.linear_schedule(1e-2, 0.0, 10)),
        id="schedule",
    ),
    # Issue 12 (part A)
    Case("scale_by_lmo", hparams=dict(eps=_POS_EPS), static_args=("ns_steps",)),
    Case("scale_by_swan", hparams=dict(eps=_POS_EPS), static_args=("ns_steps",)),
    Case(
        "project_to_fixed_norm",
        kwargs=dict(target_norm=2.0, start_step=1),
        hparams=dict(target_norm=st.floats(0.1, 10.0)),
    ),
    Case(
        "project_to_max_norm",
        kwargs=dict(max_norm=1.0),
        hparams=dict(max_norm=st.floats(0.1, 10.0)),
    ),
    Case("add_norm_penalty", hparams=dict(weight_decay=_WD, target_norm=st.floats(0.0, 5.0))),
]
