"""Shared types and hyperparameter validators.

Every check here runs only on *concrete* Python/NumPy numbers. Traced values
(under ``jax.jit``, ``optax.inject_hyperparams`` or a schedule) pass through
unchecked, so the same factory works eagerly and inside compiled code.

Messages always name the function, the parameter and the offending value::

    ValueError: `optlab.sam`: `rho` must be >= 0, got rho=-0.1.
"""

from __future__ import annotations

import inspect
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


def _is_tracer(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def is_concrete_number(value: Any) -> bool:
    """True for concrete real scalars: Python/NumPy numbers and 0-d NumPy or (non-traced)
    jax arrays of integer or floating dtype. Not bools, complex, tracers or callables."""
    if isinstance(value, (bool, np.bool_)) or _is_tracer(value):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return value.ndim == 0 and (
            jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
        )
    return False


def as_concrete_scalar(fn_name: str, name: str, value: Any) -> float | None:
    """The float value of a concrete hyperparameter; ``None`` for a tracer or a callable
    (schedule), which are checked where they are evaluated. Everything else that is not a
    real scalar raises: ``None``, strings, bools and complex numbers (``TypeError``),
    arrays that are not 0-d (``ValueError``). Concrete ``jax.Array`` values are checked
    like Python numbers; only tracers are skipped."""
    if _is_tracer(value) or callable(value):
        return None
    where = f"`optlab.{fn_name}`: `{name}`"
    if is_concrete_number(value):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        dtype = value.dtype
        if jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{where} must be a real number, got {name}={value!r} of dtype {dtype}."
            )
        if value.ndim != 0:
            raise ValueError(
                f"{where} must be a scalar, got an array of shape {value.shape} ({name}={value!r})."
            )
    kind = "a complex number" if isinstance(value, complex) else f"type {type(value).__name__}"
    raise TypeError(f"{where} must be a real number, got {name}={value!r} ({kind}).")


def _concrete_items(fn_name: str, hparams: dict[str, Any]):
    for name, value in hparams.items():
        number = as_concrete_scalar(fn_name, name, value)
        if number is not None:
            yield name, number


def _fail(fn_name: str, name: str, constraint: str, value: Any) -> None:
    raise ValueError(f"`optlab.{fn_name}`: `{name}` must be {constraint}, got {name}={value!r}.")


def check_finite(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter is finite (no NaN/inf)."""
    for name, value in _concrete_items(fn_name, hparams):
        if not np.isfinite(value):
            _fail(fn_name, name, "finite", value)


def check_positive(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter is > 0 and finite."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(fn_name, hparams):
        if not value > 0:
            _fail(fn_name, name, "> 0", hparams[name])


def check_nonnegative(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter is >= 0 and finite."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(fn_name, hparams):
        if not value >= 0:
            _fail(fn_name, name, ">= 0", hparams[name])


def check_decay(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter lies in [0, 1) (EMA decays, b1, b2)."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(fn_name, hparams):
        if not 0.0 <= value < 1.0:
            _fail(fn_name, name, "in [0, 1)", hparams[name])


def check_unit_interval(fn_name: str, **hparams: Any) -> None:
    """Raise unless every concrete hyperparameter lies in [0, 1]."""
    check_finite(fn_name, **hparams)
    for name, value in _concrete_items(fn_name, hparams):
        if not 0.0 <= value <= 1.0:
            _fail(fn_name, name, "in [0, 1]", hparams[name])


def check_learning_rate(fn_name: str, learning_rate: Any) -> None:
    """A learning rate is a schedule (callable) or a finite number >= 0."""
    if callable(learning_rate):
        return
    if learning_rate is None:  # optax reads None as "no scaling": the sign flip is lost
        raise TypeError(
            f"`optlab.{fn_name}`: `learning_rate` must be a number or a schedule, got"
            " learning_rate=None (optax would not scale nor flip the sign: the optimizer would"
            " climb the loss)."
        )
    check_nonnegative(fn_name, learning_rate=learning_rate)


MAX_INT = 2**31 - 1  # step counters and sizes are int32 in optax states


def check_int(fn_name: str, minimum: int = 1, maximum: int = MAX_INT, **hparams: Any) -> None:
    """Raise unless each hyperparameter is a Python int in ``[minimum, maximum]``.

    Integer hyperparameters (steps, periods, buffer sizes) fix array shapes or
    Python loop counts, so they must be concrete; they are bounded (by default by the
    int32 step counters, smaller for buffer sizes) so that an absurd value fails here
    with a clear message, not as an ``OverflowError`` or ``MemoryError`` later.
    """
    for name, value in hparams.items():
        if isinstance(value, (np.ndarray, jax.Array)) and not _is_tracer(value):
            if value.ndim == 0 and jnp.issubdtype(value.dtype, jnp.integer):
                value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                f"`optlab.{fn_name}`: `{name}` must be a Python int, got {name}={value!r}"
                f" of type {type(value).__name__}."
            )
        if value < minimum:
            _fail(fn_name, name, f">= {minimum}", value)
        if value > maximum:
            _fail(fn_name, name, f"<= {maximum}", value)


MAX_COPIES = 2**12  # buffers holding one copy of the params (or gradients) per entry
MAX_HISTORY = 2**24  # buffers of scalars (64 MiB of float32)


def check_buffer_size(fn_name: str, holds: str, maximum: int, **sizes: Any) -> None:
    """Raise unless each size is a Python int in ``[1, maximum]``: a buffer length whose
    entries each hold ``holds`` (e.g. "a copy of the parameters"). The bound is about
    memory: an absurd size (``10**12``) fails here with a clear message instead of an
    ``OverflowError``, a ``MemoryError`` or XLA's ``RESOURCE_EXHAUSTED`` at ``init``."""
    check_int(fn_name, **sizes)
    for name, value in sizes.items():
        if int(value) > maximum:
            raise ValueError(
                f"`optlab.{fn_name}`: `{name}` must be <= {maximum} (each entry of this buffer"
                f" holds {holds}; a larger one would not fit in memory), got {name}={value!r}."
            )


def check_int_unless_traced(
    fn_name: str, minimum: int = 1, maximum: int = MAX_INT, **hparams: Any
) -> None:
    """:func:`check_int` for the concrete values: ``None`` and tracers (what
    ``optax.inject_hyperparams`` makes of Python ints) pass; concrete arrays are checked."""
    for name, value in hparams.items():
        if value is None or _is_tracer(value):
            continue
        check_int(fn_name, minimum, maximum, **{name: value})


def check_shapes(fn_name: str, tree: Any, params: Any, what: str, lead_axes: int = 0) -> None:
    """Raise a ValueError naming the leaf path if a leaf of ``tree`` is not shaped like the
    matching leaf of ``params`` (with ``lead_axes`` extra leading axes, e.g. per-example
    gradients). Shapes are static, so this runs once per trace and costs nothing at run
    time. Trees of another structure are left to the structure checks."""
    if params is None or tree is None:
        return
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    p_leaves, p_treedef = jax.tree_util.tree_flatten(params)
    if treedef != p_treedef:
        return
    for (path, x), p in zip(leaves, p_leaves):
        shape, p_shape = jnp.shape(x), jnp.shape(p)
        ok = len(shape) == len(p_shape) + lead_axes and tuple(shape[lead_axes:]) == p_shape
        if not ok:
            extra = f" plus {lead_axes} leading axis" if lead_axes else ""
            raise ValueError(
                f"`optlab.{fn_name}`: {what} must be shaped like `params`{extra}, got shape"
                f" {tuple(shape)} for params shape {p_shape} at"
                f" {jax.tree_util.keystr(path) or '<root>'}."
            )


_SIGNATURES = {"grad_fn": "grad_fn(params) -> grads", "hvp_fn": "hvp_fn(params, v) -> H v"}


def check_value_arg(fn_name: str, value: Any) -> None:
    """The extra argument ``value`` (the loss at ``params``) must be a real scalar: a
    number or a 0-d float array (a tracer under ``jit``); checked on dtype and shape only."""
    if isinstance(value, (bool, np.bool_)) or not (
        isinstance(value, numbers.Real) or hasattr(value, "dtype")
    ):
        raise TypeError(
            f"`optlab.{fn_name}`: the extra argument `value` must be the loss at `params` (a"
            f" real scalar), got value={value!r} of type {type(value).__name__}."
        )
    if hasattr(value, "dtype"):
        dtype = jnp.result_type(value)
        if not jnp.issubdtype(dtype, jnp.floating) and not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(
                f"`optlab.{fn_name}`: the extra argument `value` must be a real scalar, got"
                f" dtype {dtype}."
            )
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"`optlab.{fn_name}`: the extra argument `value` must be a scalar (the mean"
                f" loss), got shape {jnp.shape(value)}."
            )


def _checked_fn(fn_name: str, name: str, fn: Any, params: Any, lead_axes: int) -> Callable:
    """``fn`` (``grad_fn``/``hvp_fn``) with its output shapes checked against ``params``."""
    if not callable(fn):
        raise TypeError(
            f"`optlab.{fn_name}`: the extra argument `{name}` must be callable, got"
            f" {name}={fn!r} of type {type(fn).__name__}."
        )

    def wrapped(*args, **kwargs):
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as e:  # wrong arity: say which argument and how it is called
            raise TypeError(
                f"`optlab.{fn_name}`: the extra argument `{name}` cannot be called with"
                f" {len(args)} positional argument(s) ({_SIGNATURES.get(name, name)}): {e}."
            ) from None
        except ValueError:  # no signature (a builtin or C function): just call it
            pass
        out = fn(*args, **kwargs)
        if params is not None:
            got, want = jax.tree.structure(out), jax.tree.structure(params)
            if got != want:
                raise ValueError(
                    f"`optlab.{fn_name}`: the output of the extra argument `{name}` must have"
                    f" the tree structure of `params`, got {got} for {want}."
                )
        check_shapes(fn_name, out, params, f"the output of `{name}`")
        return out

    return wrapped


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


def check_real_tree(fn_name: str, tree: Any, name: str) -> None:
    """Raise a TypeError naming the leaf path if a leaf of ``tree`` is complex (for
    transforms whose math needs an ordering: clipping, sorting, solvers). Dtypes only:
    free under ``jit``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"`optlab.{fn_name}` does not support complex numbers: `{name}` has dtype"
                f" {dtype} at {jax.tree_util.keystr(path) or '<root>'}. Split real and"
                " imaginary parts into separate real leaves."
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
        raise ValueError(
            f"`optlab.{fn_name}` needs the keyword argument `{name}` in `update`: {how}"
        )
    if name.endswith("_fn") and not callable(value):
        raise TypeError(
            f"`optlab.{fn_name}`: the extra argument `{name}` must be callable, got"
            f" {name}={value!r} of type {type(value).__name__}: {how}"
        )
    if name.endswith("_fn"):  # a clear error when it is called with the wrong arity
        return _checked_fn(fn_name, name, value, None, 0)
    return value


def public(
    fn_name: str, tx: Any, lead_axes: int = 0, *, real: bool = False, **needs: str
) -> optax.GradientTransformationExtraArgs:
    """``tx``, built by a private builder, as the public factory ``optlab.<fn_name>`` returns it.

    ``init`` refuses non-float ``params`` leaves; ``update`` refuses a missing or
    non-callable required extra argument (``needs``: argument name -> how to pass it),
    updates not shaped like ``params`` (``lead_axes`` extra leading axes allowed, e.g.
    per-example or per-objective gradients) and ``grad_fn``/``hvp_fn`` outputs not shaped
    like ``params`` (or called with the wrong arity), and, with ``real=True``, complex
    ``params`` or ``updates``, all errors naming ``optlab.<fn_name>`` and the leaf path. The shape
    checks run at trace time: free under ``jit``. This is the validation-once pattern: a
    public factory checks its hyperparameters and returns ``public(name, _builder(...))``;
    named optimizers chain the unchecked ``_builder`` stages and wrap the chain in
    ``public`` under their own name.
    """
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        check_float_tree(fn_name, params)
        if real:
            check_real_tree(fn_name, params, "params")
        return tx.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        for name, how in needs.items():
            require_extra_arg(fn_name, name, extra_args.get(name), how)
        if "value" in needs:
            check_value_arg(fn_name, extra_args["value"])
        check_shapes(fn_name, updates, params, "`updates`", lead_axes)
        if real:
            check_real_tree(fn_name, updates, "updates")
        for name in ("grad_fn", "hvp_fn"):
            if extra_args.get(name) is not None:
                extra_args[name] = _checked_fn(fn_name, name, extra_args[name], params, 0)
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
