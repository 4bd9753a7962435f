"""DP-SGD: per-example gradients (``tree="per_example"``).

``optax.MultiSteps`` is not tested: its accumulator has the parameters' shapes while
these transforms consume per-example gradients (optax documents the same limitation for
``optax.contrib.differentially_private_aggregate``).
"""

import hypothesis.strategies as st

from helpers import Case

_DP = dict(l2_norm_clip=st.floats(0.1, 10.0), noise_multiplier=st.floats(0.0, 2.0))

CASES = [
    Case(
        "dp_aggregate",
        kwargs=dict(l2_norm_clip=1.0, noise_multiplier=0.5, seed=0),
        hparams=_DP,
        static_args=("seed",),
        tree="per_example",
        multisteps=False,
    ),
    Case(
        "dpsgd",
        kwargs=dict(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=0.5),
        hparams=_DP,
        static_args=("seed",),
        tree="per_example",
        kind="optimizer",
        multisteps=False,
    ),
    Case(
        "dpsgd",
        id="nesterov",
        kwargs=dict(
            learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=0.5, momentum=0.9, nesterov=True
        ),
        hparams=dict(**_DP, momentum=st.floats(0.0, 0.99)),
        static_args=("seed",),
        tree="per_example",
        kind="optimizer",
        multisteps=False,
    ),
]
