"""Property-suite cases for the clipping family (optlab/_clipping.py)."""

import hypothesis.strategies as st
import jax.numpy as jnp

from helpers import Case


def _size_scaled_threshold(path, g):
    """A callable per-leaf threshold: 0.5 * sqrt(number of elements)."""
    del path
    return 0.5 * jnp.sqrt(jnp.asarray(max(g.size, 1), jnp.float32))


CASES = [
    Case(
        "clip_by_leaf_norm",
        kwargs=dict(max_norm=1.0),
        hparams=dict(max_norm=st.floats(0.1, 10.0)),
    ),
    Case(
        "clip_by_leaf_norm",
        id="callable",
        kwargs=dict(max_norm=_size_scaled_threshold),
        static_args=("max_norm",),
        inject=False,  # the only hyperparameter is a callable: nothing numeric to inject
    ),
    Case(
        "clip_by_value",
        kwargs=dict(max_delta=1.0),
        hparams=dict(max_delta=st.floats(0.01, 10.0)),
    ),
    Case(
        "adaptive_grad_clip",
        kwargs=dict(clipping=0.05),
        hparams=dict(clipping=st.floats(0.01, 1.0), eps=st.floats(1e-4, 1e-1)),
    ),
    Case(
        "clip_by_quantile",
        # warmup 2 < N_STEPS = 3, so the suite also runs a clipping step.
        kwargs=dict(quantile=0.9, window=8, warmup_steps=2),
        hparams=dict(quantile=st.floats(0.0, 1.0)),
        static_args=("window", "warmup_steps"),
    ),
    Case("centered_clip", kwargs=dict(tau=1.0), hparams=dict(tau=st.floats(0.01, 10.0))),
    Case(
        "clip_by_zscore",
        kwargs=dict(z_thresh=2.5, decay=0.97, warmup_steps=2),
        hparams=dict(z_thresh=st.floats(0.1, 5.0), decay=st.floats(0.0, 0.999)),
        static_args=("warmup_steps",),
    ),
    Case(
        "scale_by_clipped_adagrad",
        kwargs=dict(max_norm=1.0),
        hparams=dict(
            max_norm=st.floats(0.1, 10.0),
            initial_accumulator_value=st.floats(0.0, 1.0),
            eps=st.floats(1e-8, 1e-4),
        ),
    ),
    Case(
        "scale_by_clipped_adagrad",
        id="norm",
        kwargs=dict(max_norm=1.0, adagrad_norm=True),
        hparams=dict(max_norm=st.floats(0.1, 10.0), initial_accumulator_value=st.floats(0.0, 1.0)),
    ),
]
