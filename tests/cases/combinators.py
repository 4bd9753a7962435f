"""Cases for the generic wrappers in optlab/_combinators.py."""

import hypothesis.strategies as st
import optax

import optlab
from helpers import Case, register_not_transform

register_not_transform("SkipNonFiniteState")

CASES = [
    Case(
        "skip_nonfinite",
        factory=lambda **kw: optlab.skip_nonfinite(optax.adam(1e-2), **kw),
        inject=False,
    ),
    Case(
        "skip_nonfinite",
        factory=lambda **kw: optlab.skip_nonfinite(optax.adam(1e-2), **kw),
        kwargs=dict(max_consecutive=2),
        inject=False,
        id="max_consecutive",
    ),
    # optax pieces in float32 (no float in kwargs: optax validates nothing, so the
    # bad-input suite has no hyperparameter of `in_float32` to try).
    Case(
        "in_float32",
        factory=lambda max_norm=1.0: optlab.in_float32(optax.clip_by_global_norm(max_norm)),
        hparams=dict(max_norm=st.floats(0.1, 10.0)),
        id="clip_by_global_norm",
    ),
    Case(
        "in_float32",
        factory=lambda weight_decay=optax.linear_schedule(1e-2, 0.0, 10): optlab.in_float32(  # noqa: B008
            optax.add_decayed_weights(weight_decay)
        ),
        inject=False,
        id="add_decayed_weights_schedule",
    ),
]
