"""Multi-objective combination: stacked per-objective gradients (``tree="stacked"``).

``optax.MultiSteps`` is not tested: its accumulator has the parameters' shapes while
these transforms consume stacked ``(objectives, ...)`` gradients.
"""

import hypothesis.strategies as st

from helpers import Case

_STACKED = dict(tree="stacked", multisteps=False)

CASES = [
    Case(
        "upgrad",
        kwargs=dict(max_iters=20, reg_eps=1e-4),
        hparams=dict(reg_eps=st.floats(1e-6, 1e-2)),
        static_args=("max_iters",),
        **_STACKED,
    ),
    # pcgrad and mgda have no float hyperparameter: nothing for inject_hyperparams.
    Case("pcgrad", kwargs=dict(seed=0), inject=False, **_STACKED),
    Case(
        "pcgrad",
        id="fixed_mean",
        kwargs=dict(shuffle=False, reduction="mean"),
        inject=False,
        **_STACKED,
    ),
    Case("mgda", kwargs=dict(max_iters=100), inject=False, **_STACKED),
    Case(
        "bloop",
        kwargs=dict(decay=0.9, aux_weight=0.5),
        hparams=dict(decay=st.floats(0.0, 0.99), aux_weight=st.floats(0.0, 2.0)),
        **_STACKED,
    ),
    # aligned_mtl has no float hyperparameter: nothing for inject_hyperparams.
    Case("aligned_mtl", kwargs=dict(scale_mode="min"), inject=False, **_STACKED),
]
