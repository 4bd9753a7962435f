"""Shared types and hyperparameter validators.

Every check here runs only on *concrete* Python/NumPy numbers. Traced values
(under ``jax.jit``, ``optax.inject_hyperparams`` or a schedule) pass through
unchecked, so the same factory works eagerly and inside compiled code.

Messages always name the function, the parameter and the offending value::

    ValueError: `optlab.sam`: `rho` must be >= 0, got rho=-0.1.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = optax.Params
Updates = optax.Updates
ScalarOrSchedule = optax.ScalarOrSchedule

NO_PARAMS_MSG = (
    "You are using a transformation that requires the current value of "
    "parameters, but you are not passing `params` when calling `update`."
)

__all__: list[str] = []


def is_concrete_number(value: Any) -> bool:
    """True for plain Python / NumPy real numbers (not bools, arrays or tracers)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"


def _concrete_items(hparams: dict[str, Any]):
    for name, value in hparams.items():
        if is_concrete_number(value):
            yield name, float(value)


def _fail(fn_name: str, name: str, constraint: str, value: Any) -> None:
    raise ValueError(f"`optlab.{fn_name}`: `{name}` must be {constraint}, got {name}={value!r}.")


def check_finite(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter is finite (no NaN/inf)."""
    for name, value in _concrete_items(hparams):
        if not np.isfinite(value):
            _fail(fn_name, name, "finite", value)


def check_positive(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter is > 0 and finite."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(hparams):
        if not value > 0:
            _fail(fn_name, name, "> 0", hparams[name])


def check_nonnegative(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter is >= 0 and finite."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(hparams):
        if not value >= 0:
            _fail(fn_name, name, ">= 0", hparams[name])


def check_decay(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter lies in [0, 1) (EMA decays, b1, b2)."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(hparams):
        if not 0.0 <= value < 1.0:
            _fail(fn_name, name, "in [0, 1)", hparams[name])


def check_unit_interval(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter lies in [0, 1]."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(hparams):
        if not 0.0 <= value <= 1.0:
            _fail(fn_name, name, "in [0, 1]", hparams[name])


def check_learning_rate(fn_name: str, learning_rate: Any) -> None:
    """A learning rate is a schedule (callable) or a finite number >= 0."""
    if callable(learning_rate):
        return
    check_nonnegative(fn_name, learning_rate=learning_rate)


def check_int(fn_name: str, minimum: int = 1, **hparams: Any) -> None:
    """Raise unless each hyperparameter is a Python int >= ``minimum``.

    Integer hyperparameters (steps, periods, buffer sizes) fix array shapes or
    Python loop counts, so they must be concrete.
    """
    for name, value in hparams.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                f"`optlab.{fn_name}`: `{name}` must be a Python int, got {name}={value!r}"
                f" of type {type(value).__name__}."
            )
        if value < minimum:
            _fail(fn_name, name, f">= {minimum}", value)


def check_int_unless_traced(fn_name: str, minimum: int = 1, **hparams: Any) -> None:
    """:func:`check_int` for the concrete values: ``None``, jax arrays and tracers (what
    ``optax.inject_hyperparams`` makes of Python ints) and integer NumPy arrays pass."""
    for name, value in hparams.items():
        if value is None or isinstance(value, jax.Array) or (
            isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer)
        ):
            continue
        check_int(fn_name, minimum, **{name: value})


def check_float_tree(fn_name: str, tree: Any, name: str = "params") -> None:
    """Raise a TypeError if a leaf of ``tree`` is not floating point.

    Runs on shapes/dtypes only, so it is free under ``jit``.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"`optlab.{fn_name}`: every leaf of `{name}` must be floating point, got"
                f" dtype {dtype} at {jax.tree_util.keystr(path) or '<root>'}. Cast it"
                " (e.g. `x.astype(jnp.float32)`) or exclude it with a mask."
            )


def check_same_structure(fn_name: str, a: Any, b: Any, a_name: str, b_name: str) -> None:
    """Raise a ValueError naming both trees if their structures differ."""
    sa = jax.tree_util.tree_structure(a)
    sb = jax.tree_util.tree_structure(b)
    if sa != sb:
        raise ValueError(
            f"`optlab.{fn_name}`: `{a_name}` and `{b_name}` must have the same tree"
            f" structure, got {sa} and {sb}."
        )


def require_params(params: Any) -> None:
    """Raise optax's standard message when ``params`` was not passed to ``update``."""
    if params is None:
        raise ValueError(NO_PARAMS_MSG)


def require_extra_arg(fn_name: str, name: str, value: Any, how: str) -> Callable:
    """Raise a ValueError explaining how to pass a required keyword extra argument."""
    if value is None:
        raise ValueError(f"`optlab.{fn_name}` needs the keyword argument `{name}` in `update`: {how}")
    return value


def public(fn_name: str, tx: Any, **needs: str) -> optax.GradientTransformationExtraArgs:
    """``tx``, built by a private builder, as the public factory ``optlab.<fn_name>`` returns it.

    ``init`` refuses non-float ``params`` leaves and ``update`` refuses a missing required
    extra argument (``needs``: argument name -> how to pass it), both errors naming
    ``optlab.<fn_name>``. This is the validation-once pattern: a public factory checks its
    hyperparameters and returns ``public(name, _builder(...))``; named optimizers chain
    the unchecked ``_builder`` stages and wrap the chain in ``public`` under their own name.
    """
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        check_float_tree(fn_name, params)
        return tx.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        for name, how in needs.items():
            require_extra_arg(fn_name, name, extra_args.get(name), how)
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn if needs else tx.update)
