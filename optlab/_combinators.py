"""Generic wrappers around any gradient transformation."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _base, _tree

__all__ = ["skip_nonfinite", "SkipNonFiniteState", "in_float32"]


class SkipNonFiniteState(NamedTuple):
    """State for :func:`optlab.skip_nonfinite`.

    Attributes:
      consecutive_skips: int32 scalar, bad steps in a row (reset to 0 by a good step).
      total_skips: int32 scalar, bad steps since ``init`` (saturating, never reset).
      last_finite: bool scalar, whether the last step was finite.
      inner_state: the wrapped transformation's state, unchanged by a skipped step.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> state = optlab.skip_nonfinite(optax.sgd(0.1)).init({"w": jnp.ones(2)})
      >>> int(state.total_skips)
      0
    """

    consecutive_skips: jax.Array  # shape=(), int32: bad steps in a row, reset by a good step
    total_skips: jax.Array  # shape=(), int32: bad steps since init (saturates, never resets)
    last_finite: jax.Array  # shape=(), bool: whether the last step was applied as finite
    inner_state: Any


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _all_finite(tree: Any) -> jax.Array:
    """True iff every floating-point entry of ``tree`` is finite (``True`` for no leaves)."""
    ok = jnp.array(True)
    for leaf in jax.tree.leaves(tree):
        if _is_float(leaf):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def _no_new_nonfinite(old: Any, new: Any) -> jax.Array:
    """True iff no entry that is finite in ``old`` became non-finite in ``new``.

    States may legitimately hold ``inf`` (e.g. a "best loss so far" initialised to
    ``inf``), so only entries that *turn* non-finite count as a failure.
    """
    ok = jnp.array(True)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
        if _is_float(a) and _is_float(b) and jnp.shape(a) == jnp.shape(b):
            ok = ok & ~jnp.any(jnp.isfinite(a) & ~jnp.isfinite(b))
    return ok


def skip_nonfinite(
    inner: optax.GradientTransformation,
    max_consecutive: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Skips steps whose gradients, updates or new state are not finite.

    Each step runs ``inner`` and checks three things: the incoming gradients, the
    updates ``inner`` produced, and the new inner state (an entry that was finite and
    became NaN/inf). If all are finite the step is ``inner``'s step, bit for bit.
    Otherwise the step is skipped: the updates are zeros (params stay put) and the
    inner state is kept unchanged, so moments, step counts and PRNG keys do not
    advance and the next good step continues as if the bad one never happened. The
    decision is a ``jnp.where`` over trees: no host sync, no retrace, and the
    state layout is fixed.

    Compared with :func:`optax.apply_if_finite`, which checks only the incoming
    gradients and decides with ``lax.cond`` before calling ``inner``, this wrapper
    also catches non-finite values that ``inner`` itself creates from finite
    gradients: a normalizing or orthogonalizing transform dividing by a zero norm,
    an overflowing second moment in bfloat16, a trust ratio of ``0/0``. It also
    never writes such a value into the inner state. It always evaluates ``inner``
    (the check needs its output), so a skipped step costs as much as a good one.
    ``max_consecutive`` is optional here (optax requires it): with ``None`` every bad
    step is skipped. The counters ``consecutive_skips`` and ``total_skips`` (int32)
    and the flag ``last_finite`` can be logged from the state.

    Args:
      inner: the transformation to protect.
      max_consecutive: if an int ``k``, after ``k`` consecutive skipped steps the
        next bad step is applied anyway (as :func:`optax.apply_if_finite` does), so
        a run that keeps producing NaN fails visibly instead of silently stalling.
        ``None`` (default) skips every bad step.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; its state is a
      :class:`SkipNonFiniteState` holding the counters and ``inner_state``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.skip_nonfinite(optax.adam(1e-2))
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> bad = {"w": jnp.array([1.0, jnp.nan, 0.0])}
      >>> updates, state = tx.update(bad, state, params)
      >>> print(updates["w"], int(state.total_skips))
      [0. 0. 0.] 1

    References:
      Micikevicius et al., `Mixed Precision Training
      <https://arxiv.org/abs/1710.03740>`_, 2018 (skipping steps whose gradients
      overflow).
    """
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise TypeError(
            "`optlab.skip_nonfinite`: `inner` must be an optax GradientTransformation, got"
            f" inner={inner!r}."
        )
    if max_consecutive is not None:
        _base.check_int("skip_nonfinite", minimum=0, max_consecutive=max_consecutive)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree("skip_nonfinite", params)
        return SkipNonFiniteState(
            consecutive_skips=jnp.zeros([], jnp.int32),
            total_skips=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        finite = (
            _all_finite(updates)
            & _all_finite(new_updates)
            & _no_new_nonfinite(state.inner_state, new_inner)
        )
        consecutive = jnp.where(
            finite, jnp.zeros([], jnp.int32), optax.safe_increment(state.consecutive_skips)
        )
        apply = finite
        if max_consecutive is not None:
            apply = finite | (consecutive > max_consecutive)
        zeros = optax.tree.zeros_like(new_updates)
        out_updates = optax.tree.where(apply, new_updates, zeros)
        out_inner = optax.tree.where(apply, new_inner, state.inner_state)
        total = jnp.where(finite, state.total_skips, optax.safe_increment(state.total_skips))
        return out_updates, SkipNonFiniteState(
            consecutive_skips=consecutive,
            total_skips=total,
            last_finite=finite,
            inner_state=out_inner,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on float32 copies of low-precision inputs; outputs keep their dtypes.

    The updates and params are upcast to at least float32 (float64 and complex are kept),
    ``inner`` runs on them, and its updates are cast back to the incoming updates' dtypes
    and its new state to the dtypes of the state it replaces (fixed after ``init``). This
    is the one dtype wrapper for optax pieces whose arithmetic should not run in bfloat16
    (a global norm, a decay term) or whose output dtype would follow a float32
    hyperparameter (a schedule, ``optax.inject_hyperparams``), e.g.
    ``in_float32(optax.clip_by_global_norm(1.0))`` (the norm accumulated in float32) or
    ``in_float32(optax.add_decayed_weights(1e-4))``. optlab's own transforms already
    accumulate in float32 and need no wrapper.

    Args:
      inner: the transformation to run in float32.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    State:
      ``inner``'s state, in the dtypes of ``inner.init(params)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.in_float32(optax.clip_by_global_norm(1.0))
      >>> g = {"w": jnp.array([3.0, 4.0], jnp.bfloat16)}
      >>> updates, _ = tx.update(g, tx.init(g))
      >>> updates["w"]  # 0.6 and 0.8 rounded to bfloat16
      Array([0.601562, 0.800781], dtype=bfloat16)

    References:
      Micikevicius et al., `Mixed Precision Training <https://arxiv.org/abs/1710.03740>`_,
      2018 (low-precision values, float32 accumulation).
    """
    return _base.public("in_float32", _in_float32(inner))


def _in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    inner = optax.with_extra_args_support(inner)

    def update_fn(updates, state, params=None, **extra_args):
        def up(tree):
            return _tree.tree_map(_tree.to_acc, tree)

        new_updates, new_state = inner.update(
            up(updates), state, None if params is None else up(params), **extra_args
        )
        return _tree.tree_cast_like(new_updates, updates), _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
