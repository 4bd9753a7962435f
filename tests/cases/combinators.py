"""Cases for the generic wrappers in optlab/_combinators.py."""

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
]
