"""Second-order transforms (Hessian diagonal): they need the ``hvp_fn`` extra argument."""

import hypothesis.strategies as st
import jax

from helpers import Case

CASES = [
    # No float hyperparameter (only the seed): nothing for inject_hyperparams to inject.
    Case(
        "hutchinson_diag_hessian",
        kwargs=dict(seed=0),
        hparams=dict(seed=st.integers(0, 100)),
        extra_args=("hvp_fn",),
        inject=False,
    ),
    Case(
        "scale_by_sophia",
        kwargs=dict(update_interval=2),
        hparams=dict(
            b1=st.floats(0.0, 0.99),
            b2=st.floats(0.0, 0.999),
            gamma=st.floats(1e-3, 1.0),
            clip_threshold=st.floats(0.1, 10.0),
        ),
        extra_args=("hvp_fn",),
    ),
    Case(
        "scale_by_sophia",
        kwargs=dict(update_interval=1, clip_threshold=None),
        extra_args=("hvp_fn",),
        id="noclip",
    ),
    Case(
        "scale_by_adahessian",
        hparams=dict(
            b1=st.floats(0.0, 0.99),
            b2=st.floats(0.0, 0.999),
            eps=st.floats(1e-8, 1e-2),
            hessian_power=st.floats(0.0, 1.0),
        ),
        extra_args=("hvp_fn",),
    ),
    Case(
        "scale_by_adahessian",
        kwargs=dict(
            spatial_average=lambda p: jax.tree.map(lambda x: x.ndim >= 3, p), hessian_power=0.5
        ),
        extra_args=("hvp_fn",),
        id="spatial_mask",
    ),
    # Issue 12 (part A)
    Case(
        "scale_by_m_fac",
        kwargs=dict(num_grads=3),
        hparams=dict(damping=st.floats(1e-3, 1.0)),
        static_args=("num_grads",),
    ),
    Case(
        "scale_by_oasis",
        hparams=dict(
            b2=st.floats(0.0, 0.999),
            alpha=st.floats(1e-6, 1e-2),
            learning_rate=st.floats(1e-3, 1.0),
        ),
        extra_args=("hvp_fn",),
    ),
]
