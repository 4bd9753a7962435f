"""Memory-efficient state (``optlab/_memory_efficient.py``) and its named optimizers.

Projected cases use ranks that hit every regime on the drawn trees (2-D leaves of 2-5 x
2-5, so rank 3 is below, at or above the smaller side; rectangular both ways; 1-D,
scalar and 3-D leaves take the full-Adam path) and ``update_every`` small enough that
the projector is refreshed within the suite's few steps. The three projectors are
covered by three cases (SVD: ``scale_by_projected_adam``; online PCA at full rank on
matrices; DCT: ``scale_by_frugal``), so that the sharding suite traces each of them.
Cases are few because every one costs ~20 s of CPU across the registry-wide suites.
"""

import hypothesis.strategies as st
import optax

import optlab
from helpers import Case, register_not_transform

register_not_transform("stochastic_round", "stochastic_apply_updates", "dynamic_quantization_map")

B1 = st.floats(0.0, 0.99)
B2 = st.floats(0.5, 0.999)
EPS = st.floats(1e-8, 1e-4)
LR = st.floats(1e-4, 0.1)
WD = st.floats(0.0, 0.1)


# Integer hyperparameters fix shapes and periods: static for optax.inject_hyperparams.
_INTS = (
    "rank",
    "update_every",
    "update_proj_gap",
    "min_dim_size",
    "subset_size",
    "momentum_rank",
    "switch_every",
    "seed",
    "block_size",
    "min_size",
)


def _static(name, factory=None):
    import inspect

    fn = factory or getattr(optlab, name)
    return tuple(n for n in inspect.signature(fn).parameters if n in _INTS)


def _case(name, **kw):
    return Case(name, static_args=_static(name, kw.get("factory")), **kw)


def _opt(name, kwargs=None, hparams=None, **rest):
    return _case(
        name,
        kwargs={"learning_rate": 1e-2, **(kwargs or {})},
        hparams={"learning_rate": LR, **(hparams or {})},
        kind="optimizer",
        **rest,
    )


CASES = [
    _case("scale_by_subset_norm", hparams={"b1": B1, "b2": B2, "eps": EPS}),
    _case("scale_by_adam_mini", hparams={"b1": B1, "b2": B2, "eps": EPS}),
    _case(
        "scale_by_projected_adam",
        kwargs={"rank": 3, "update_every": 2},
        hparams={"b1": B1, "b2": B2, "scale": st.floats(0.1, 2.0)},
    ),
    _case(
        "scale_by_projected_adam",
        id="online_pca_full_rank",
        tree="matrix",
        # rank 8: full rank of every matrix of both trees; the default side ("large") keeps
        # the rank-space moments (8 x 8) from taking a parameter's shape in the sharding
        # suite, which would expect that parameter's sharding of them
        kwargs={"rank": 8, "projector": "online_pca", "update_every": 1},
        hparams={"projector_lr": st.floats(0.01, 1.0)},
    ),
    # residual_scale 2: Adam's first step (+-1 in the subspace, which optax computes 6e-6
    # apart with traced and with Python-float b2) plus the sign step stays >= 1 in size, so
    # that difference passes inject_hyperparams' rtol of 1e-5
    _case(
        "scale_by_frugal",
        kwargs={"rank": 2, "update_every": 2, "projector": "dct", "residual_scale": 2.0},
        hparams={"b1": B1, "residual_scale": st.floats(0.0, 1.0)},
    ),
    _case(
        "scale_by_badam",
        kwargs={"switch_every": 2, "order": "random"},
        hparams={"b1": B1, "b2": B2},
    ),
    Case(
        "quantized_moments",
        factory=lambda learning_rate=1e-2: optlab.quantized_moments(
            optax.adam(learning_rate), min_size=1
        ),
    ),
    Case(
        "bf16_moments",
        factory=lambda learning_rate=1e-2: optlab.bf16_moments(optax.adam(learning_rate)),
    ),
    _opt("subset_norm_adam", hparams={"b1": B1, "b2": B2, "weight_decay": WD}),
    _opt("galore", {"rank": 2, "update_proj_gap": 2}, {"b1": B1, "b2": B2, "weight_decay": WD}),
    _opt("online_subspace_descent", {"rank": 2}, {"b1": B1, "weight_decay": WD}),
    _opt("frugal", {"rank": 2, "update_every": 2}, {"b1": B1, "b2": B2, "weight_decay": WD}),
    _opt("badam", {"switch_every": 2}, {"b1": B1, "b2": B2}),
    _opt("adam_mini", hparams={"b1": B1, "b2": B2, "weight_decay": WD}),
]
