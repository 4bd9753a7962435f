"""Gradient clipping family.

Fixed thresholds (:func:`clip_by_leaf_norm`, :func:`clip_by_value`; for the global norm
``optax.clip_by_global_norm``, in float32 with :func:`optlab.in_float32`), thresholds
relative to the parameters (:func:`adaptive_grad_clip`), thresholds learned from the
history of gradient norms (:func:`clip_by_quantile`, :func:`clip_by_zscore`), the online
median estimator
:func:`centered_clip`, and clipped AdaGrad for heavy-tailed noise
(:func:`scale_by_clipped_adagrad`).

Conventions shared by every transform here:

* norms are accumulated in (at least) float32, whatever the leaf dtype, and the
  clipping factor is cast back, so updates keep exactly their incoming dtype;
* a norm of an empty tree (``{}``) or of an all-zero gradient is ``0`` and never
  divides anything: no NaN;
* ``None`` leaves (frozen parameters) pass through untouched;
* every ``update`` accepts and ignores unknown keyword extra arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _base, _step_sizes, _tree

__all__ = [
    "clip_by_leaf_norm",
    "clip_by_value",
    "adaptive_grad_clip",
    "clip_by_quantile",
    "centered_clip",
    "clip_by_zscore",
    "scale_by_clipped_adagrad",
    "ClipByQuantileState",
    "CenteredClipState",
    "ClipByZScoreState",
]

# Smallest denominator used when dividing by a norm (the division only happens on
# the branch where the norm exceeds a positive threshold, so this never changes a
# result; it keeps the unselected branch of `jnp.where` finite).
_TINY = 1e-30


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _is_none(x: Any) -> bool:
    return x is None


def _clip_factor(norm: jax.Array, threshold: jax.Array) -> jax.Array:
    """``min(1, threshold / norm)`` with no division by zero; 1 where ``norm <= threshold``."""
    norm = jnp.asarray(norm, jnp.float32)
    threshold = jnp.asarray(threshold, jnp.float32)
    return jnp.where(norm > threshold, threshold / jnp.maximum(norm, _TINY), 1.0)


def _scale(tree: Any, factor: jax.Array) -> Any:
    """Multiply every leaf by ``factor`` cast to the leaf's dtype (``None`` leaves kept)."""
    return jax.tree.map(lambda x: x * factor.astype(jnp.result_type(x)), tree)


def _clip_global(tree: Any, max_norm: Any) -> Any:
    return _scale(tree, _clip_factor(_tree.global_norm(tree), max_norm))


# ---------------------------------------------------------------------------
# Fixed thresholds
# ---------------------------------------------------------------------------


def _check_leaf_thresholds(max_norm: Any) -> None:
    """Validate a float or a pytree of floats (``None`` leaves mean "no clipping")."""
    for path, value in jax.tree_util.tree_leaves_with_path(max_norm, is_leaf=_is_none):
        if value is None:
            continue
        name = "max_norm" + jax.tree_util.keystr(path)
        _base.check_positive("clip_by_leaf_norm", **{name: value})


def clip_by_leaf_norm(
    max_norm: jax.typing.ArrayLike | Any | Callable[[Any, jax.Array], jax.typing.ArrayLike],
) -> optax.GradientTransformationExtraArgs:
    """Clips each leaf separately so that its L2 norm is at most its threshold.

    For every leaf ``g`` with threshold ``c`` (per-layer clipping)::

      g <- g * min(1, c / ||g||_2)

    A leaf whose norm is below its threshold is returned unchanged.

    Args:
      max_norm: the thresholds, each ``> 0``. One of

        * a float: the same threshold for every leaf;
        * a pytree of floats with the structure of the updates, or a prefix of it
          (``{"encoder": 1.0, "decoder": 5.0}`` applies 1.0 to every leaf under
          ``"encoder"``); a ``None`` in it leaves that subtree unclipped;
        * a callable ``max_norm(path, update) -> threshold`` called once per leaf
          at trace time with the leaf's key path (a tuple of
          ``jax.tree_util`` keys, ``jax.tree_util.keystr(path)`` gives
          ``"['layer']['w']"``) and the update array of that leaf, e.g.
          ``lambda path, g: 0.1 * jnp.sqrt(g.size)``. It is *not* a schedule:
          with ``optax.inject_hyperparams`` list it in ``static_args``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`. It keeps no state
      (:class:`optax.EmptyState`).

    Example:
      >>> import jax.numpy as jnp
      >>> import optlab
      >>> tx = optlab.clip_by_leaf_norm({"w": 1.0, "b": 10.0})
      >>> g = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([3.0, 4.0])}
      >>> updates, _ = tx.update(g, tx.init(g))
      >>> updates["w"], updates["b"]
      (Array([0.6, 0.8], dtype=float32), Array([3., 4.], dtype=float32))

    References:
      Pascanu, Mikolov and Bengio, `On the difficulty of training Recurrent Neural
      Networks <https://arxiv.org/abs/1211.5063>`_, ICML 2013 (norm clipping; here
      applied per layer).
    """
    if max_norm is None:  # None means "no clipping" only as a leaf of a tree of thresholds
        raise TypeError(
            "`optlab.clip_by_leaf_norm`: `max_norm` must be a number, a tree of numbers (with"
            " None leaves for no clipping) or a callable (path, leaf) -> number, got"
            " max_norm=None."
        )
    is_fn = callable(max_norm)
    if not is_fn:
        _check_leaf_thresholds(max_norm)
        thresholds_def = jax.tree_util.tree_structure(max_norm, is_leaf=_is_none)

    def clip_leaf(g, c):
        return g * _clip_factor(_tree.leaf_norm(g), c).astype(jnp.result_type(g))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        if is_fn:

            def from_fn(path, g):
                if g is None:
                    return None
                c = max_norm(path, g)
                _base.check_positive("clip_by_leaf_norm", max_norm=c)
                return clip_leaf(g, c)

            return jax.tree_util.tree_map_with_path(from_fn, updates, is_leaf=_is_none), state

        try:
            thresholds_def.flatten_up_to(updates)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "`optlab.clip_by_leaf_norm`: the tree `max_norm` must be a prefix of the"
                f" updates' structure, got {thresholds_def} for updates"
                f" {jax.tree_util.tree_structure(updates)}."
            ) from e

        def clip_subtree(c, sub):
            if c is None:
                return sub
            return jax.tree.map(lambda g: clip_leaf(g, c), sub)

        return jax.tree.map(clip_subtree, max_norm, updates, is_leaf=_is_none), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("clip_by_leaf_norm", tx)


def clip_by_value(max_delta: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Clips every element of the updates to ``[-max_delta, max_delta]``.

    ``g <- clip(g, -max_delta, max_delta)`` element-wise. This is :func:`optax.clip`
    with extra-argument support, validation, and each leaf's dtype kept when
    ``max_delta`` is an array (``optax.inject_hyperparams``). Value clipping changes
    the direction of the update; prefer a norm clip unless you want exactly this.

    Args:
      max_delta: the largest allowed absolute value of an element, ``> 0``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`. It keeps no state
      (:class:`optax.EmptyState`).

    Example:
      >>> import jax.numpy as jnp
      >>> import optlab
      >>> tx = optlab.clip_by_value(1.0)
      >>> g = {"w": jnp.array([-3.0, 0.5, 2.0])}
      >>> updates, _ = tx.update(g, tx.init(g))
      >>> updates["w"]
      Array([-1. ,  0.5,  1. ], dtype=float32)

    References:
      Pascanu, Mikolov and Bengio, `On the difficulty of training Recurrent Neural
      Networks <https://arxiv.org/abs/1211.5063>`_, ICML 2013 (discusses value
      clipping as the older alternative to norm clipping).
    """
    _base.check_positive("clip_by_value", max_delta=max_delta)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def clip_leaf(g):
            m = jnp.asarray(max_delta).astype(jnp.result_type(g))
            return jnp.clip(g, -m, m)

        return jax.tree.map(clip_leaf, updates), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("clip_by_value", tx, real=True)  # complex values have no order


# ---------------------------------------------------------------------------
# Relative to the parameters
# ---------------------------------------------------------------------------


def _unit_norm(x: jax.Array, axis: int | Sequence[int] | None) -> jax.Array:
    """Unit-wise L2 norm (float32), broadcastable to ``x``."""
    if axis is None:
        return _tree.unitwise_norm(x)
    return _tree.leaf_norm(x, axis=axis, keepdims=True)  # overflow-safe


def _check_axes(fn: str, axis: int | Sequence[int], params: Any) -> None:
    """Each axis of ``axis`` must index every leaf (a clear error instead of numpy's)."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        ndim = jnp.ndim(w)
        if any(not -ndim <= a < ndim for a in axes):
            raise ValueError(
                f"`optlab.{fn}`: `axis` must index an axis of every leaf, got axis={axis!r} for"
                f" a leaf of shape {jnp.shape(w)} at {jax.tree_util.keystr(path) or '<root>'}."
            )


def adaptive_grad_clip(
    clipping: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike = 1e-3,
    axis: int | Sequence[int] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adaptive gradient clipping (AGC): clips each unit relative to its weight norm.

    For every unit ``i`` of every leaf (a unit is a slice of the array, see
    below), with ``g_i`` and ``w_i`` the gradient and the parameter restricted to
    it::

      g_i <- g_i * min(1, clipping * max(||w_i||, eps) / ||g_i||)

    so that ``||g_i|| / max(||w_i||, eps) <= clipping`` afterwards. ``eps`` keeps
    zero-initialised weights from freezing.

    Units (``axis=None``, :func:`optlab._tree.unitwise_norm`, Flax's
    ``(..., in, out)`` kernel layout): a vector or a scalar (bias, norm scale) is
    one unit, as in the NFNets code; a matrix or higher-rank kernel has one unit per
    output channel (the norm reduces every axis but the last). This equals
    :func:`optax.adaptive_grad_clip` for scalars, vectors, matrices and 4-D / 5-D
    conv kernels. It differs for rank-3 leaves: optax reduces only axis 0 (the
    multi-head ``(in, heads, head_dim)`` convention), optlab reduces axes 0 and 1
    (the 1-D conv ``(width, in, out)`` convention). Pass ``axis`` to choose the
    reduction axes for every leaf yourself (as in optax).

    Args:
      clipping: the largest allowed ratio of unit gradient norm to unit
        parameter norm, ``> 0`` (NFNets use 0.01 to 0.16 depending on batch size).
      eps: the smallest parameter norm used, ``>= 0``.
      axis: the axes each unit's norm reduces, for every leaf; ``None`` for the
        rank-based default above. Static: with ``optax.inject_hyperparams`` list it
        in ``static_args``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` that needs ``params`` in
      ``update``. It keeps no state (:class:`optax.EmptyState`).

    Example:
      >>> import jax.numpy as jnp
      >>> import optlab
      >>> tx = optlab.adaptive_grad_clip(0.1)
      >>> params = {"w": jnp.array([[1.0, 0.6], [0.0, 0.8]])}  # unit-norm columns
      >>> g = {"w": jnp.array([[3.0, 0.0], [4.0, 0.01]])}
      >>> updates, _ = tx.update(g, tx.init(params), params)
      >>> updates["w"].round(4)  # column 0 clipped to norm 0.1; column 1 kept
      Array([[0.06, 0.  ],
             [0.08, 0.01]], dtype=float32)

    References:
      Brock, De, Smith and Simonyan, `High-Performance Large-Scale Image
      Recognition Without Normalization <https://arxiv.org/abs/2102.06171>`_, ICML
      2021.
    """
    _base.check_positive("adaptive_grad_clip", clipping=clipping)
    _base.check_nonnegative("adaptive_grad_clip", eps=eps)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        if axis is not None:
            _check_axes("adaptive_grad_clip", axis, params)

        def clip_leaf(g, w):
            if w is None:  # a gradient for a frozen (None) parameter: nothing to compare to
                return g
            max_norm = jnp.asarray(clipping, jnp.float32) * jnp.maximum(
                _unit_norm(w, axis), jnp.asarray(eps, jnp.float32)
            )
            factor = _clip_factor(_unit_norm(g, axis), max_norm)
            return g * factor.astype(jnp.result_type(g))

        return _tree.tree_map(clip_leaf, updates, params), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("adaptive_grad_clip", tx)


# ---------------------------------------------------------------------------
# Thresholds from the history of norms
# ---------------------------------------------------------------------------


class ClipByQuantileState(NamedTuple):
    """State for :func:`optlab.clip_by_quantile`.

    Attributes:
      count: how many finite global norms have been recorded (int32 scalar).
      norms: ring buffer of the last ``window`` global norms (float32, shape
        ``(window,)``); slot ``count % window`` is written next.
    """

    count: jax.Array  # shape=(), dtype=int32: finite norms recorded so far
    norms: jax.Array  # shape=(window,), dtype=float32: ring buffer of recent global norms


def _masked_quantile(values: jax.Array, n: jax.Array, q: jax.Array) -> jax.Array:
    """``jnp.quantile(values[:n], q)`` (linear interpolation) for a traced ``n``; inf if n = 0."""
    window = values.shape[0]
    valid = jnp.arange(window) < n
    ordered = jnp.sort(jnp.where(valid, values, jnp.inf))  # the n valid values come first
    ordered = jnp.where(valid, ordered, 0.0)  # keep the unused tail finite
    last = jnp.maximum(n, 1) - 1
    pos = jnp.asarray(q, jnp.float32) * last.astype(jnp.float32)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, last)
    hi = jnp.minimum(lo + 1, last)
    frac = pos - lo.astype(jnp.float32)
    value = ordered[lo] + frac * (ordered[hi] - ordered[lo])
    return jnp.where(n > 0, value, jnp.inf)


def clip_by_quantile(
    quantile: jax.typing.ArrayLike = 0.9,
    window: int = 100,
    warmup_steps: int = 10,
) -> optax.GradientTransformationExtraArgs:
    """Clips the global norm to a quantile of the recent gradient norms.

    Keeps the global norms of the last ``window`` gradients in a ring buffer. At
    each step, with ``n = ||g||_2``::

      threshold = quantile_q(norms of the previous min(t, window) steps)
      g <- g * min(1, threshold / n)        (once t >= warmup_steps)

    then records the raw norm ``n``. The threshold uses only *past* norms, and a
    quantile barely moves when one huge norm enters the buffer, so a single
    outlier (a gradient ``1e6`` times too large) is clipped to the scale of the
    ordinary gradients and does not inflate later thresholds. ``quantile=0.5``
    clips to the median norm; AutoClip (Seetharaman et al., 2020) is the same rule
    with the whole history instead of a window. The quantile interpolates
    linearly, like ``jnp.quantile``. Non-finite norms are not recorded.

    During the first ``warmup_steps`` steps nothing is clipped (there is no
    history yet); chain ``optax.clip_by_global_norm`` before it if early outliers
    are a concern.

    Args:
      quantile: which quantile of the recent norms is the threshold, in
        ``[0, 1]``.
      window: how many recent norms are kept (a Python int ``>= 1``; it fixes the
        state's shape).
      warmup_steps: steps recorded before clipping starts (a Python int
        ``>= 1``). With ``optax.inject_hyperparams`` list ``window`` and
        ``warmup_steps`` in ``static_args``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a
      :class:`ClipByQuantileState` (``count`` and the ``window`` recent norms in
      float32; not parameter-shaped).

    Example:
      >>> import jax.numpy as jnp
      >>> import optlab
      >>> tx = optlab.clip_by_quantile(quantile=0.5, window=4, warmup_steps=2)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> for g in (3.0, 5.0, 1000.0):  # norms 3, 5, then an outlier
      ...     updates, state = tx.update({"w": jnp.array([g, 0.0])}, state)
      >>> updates["w"]  # clipped to the median of (3, 5)
      Array([4., 0.], dtype=float32)

    References:
      Schaipp, Garrigos, Simsekli and Gower, `SGD with Clipping is Secretly
      Estimating the Median Gradient <https://arxiv.org/abs/2402.12828>`_, 2024.

      Seetharaman, Wichern, Pardo and Le Roux, `AutoClip: Adaptive Gradient
      Clipping for Source Separation Networks <https://arxiv.org/abs/2007.14469>`_,
      2020.
    """
    _base.check_unit_interval("clip_by_quantile", quantile=quantile)
    _base.check_int("clip_by_quantile", warmup_steps=warmup_steps)
    _base.check_buffer_size("clip_by_quantile", "one norm", _base.MAX_HISTORY, window=window)

    def init_fn(params):
        _base.check_float_tree("clip_by_quantile", params)
        del params
        return ClipByQuantileState(
            count=jnp.zeros([], jnp.int32), norms=jnp.zeros([window], jnp.float32)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g_norm = _tree.global_norm(updates)
        n = jnp.minimum(state.count, window)
        threshold = _masked_quantile(state.norms, n, quantile)
        active = state.count >= warmup_steps
        factor = jnp.where(active, _clip_factor(g_norm, threshold), 1.0)
        updates = _scale(updates, factor)

        finite = jnp.isfinite(g_norm)
        slot = state.count % window
        norms = jnp.where(finite, state.norms.at[slot].set(g_norm), state.norms)
        count = jnp.where(finite, optax.safe_increment(state.count), state.count)
        return updates, ClipByQuantileState(count=count, norms=norms)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _base.public("clip_by_quantile", tx)  # shapes of updates checked against params


class CenteredClipState(NamedTuple):
    """State for :func:`optlab.centered_clip`.

    Attributes:
      center: the running median estimate ``m``, a pytree like the parameters
        (same dtypes), initialised at zero.
    """

    center: optax.Updates  # like params: the running median estimate m


def centered_clip(tau: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Tracks the median of the gradients with centred clipping; outputs the estimate.

    Keeps an estimate ``m`` (initialised at zero) and, for each gradient ``g``::

      m <- m + clip_tau(g - m),    clip_tau(d) = d * min(1, tau / ||d||_2)
      output m

    where ``||.||_2`` is the global norm over all leaves. This is one stochastic
    proximal point step on ``E ||m - g||``, whose minimiser is the geometric
    median of the gradient distribution: ``m`` follows ordinary gradients and
    moves by at most ``tau`` per step, so one outlier (even of size ``1e6``) can
    shift it by ``tau`` only. It is to the median what momentum is to the mean.
    Chain a learning rate (or another optimizer) after it.

    Several centred-clipping iterations on the *same* gradient, as in Byzantine
    robust aggregation, move ``m`` by ``min(k * tau, ||g - m||)``: the same as
    one iteration with ``k * tau``, so there is no iterations argument. Starting
    from ``m = 0`` the first outputs are at most ``tau, 2 tau, ...`` in norm, an
    implicit warm-up.

    Args:
      tau: the clipping radius, ``> 0``, on the scale of a typical
        ``||g - m||``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a
      :class:`CenteredClipState` (the estimate, like params, in their dtype).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import optlab
      >>> tx = optax.chain(optlab.centered_clip(tau=1.0), optax.sgd(0.1))
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([1e6, 0.0])}, state, params)
      >>> updates["w"]  # the outlier moved the estimate by tau = 1 only
      Array([-0.1, -0. ], dtype=float32)

    References:
      Schaipp, Garrigos, Simsekli and Gower, `SGD with Clipping is Secretly
      Estimating the Median Gradient <https://arxiv.org/abs/2402.12828>`_, 2024.

      Karimireddy, He and Jaggi, `Learning from History for Byzantine Robust
      Optimization <https://arxiv.org/abs/2012.10333>`_, ICML 2021 (centred clipping).
    """
    _base.check_positive("centered_clip", tau=tau)

    def init_fn(params):
        _base.check_float_tree("centered_clip", params)
        return CenteredClipState(center=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        diff = jax.tree.map(lambda g, m: _tree.to_acc(g) - _tree.to_acc(m), updates, state.center)
        factor = _clip_factor(_tree.global_norm(diff), tau)
        center = _tree.tree_cast_like(
            jax.tree.map(lambda m, d: _tree.to_acc(m) + factor * d, state.center, diff),
            state.center,
        )
        new_updates = jax.tree.map(lambda m, g: m.astype(jnp.result_type(g)), center, updates)
        return new_updates, CenteredClipState(center=center)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ClipByZScoreState(NamedTuple):
    """State for :func:`optlab.clip_by_zscore`.

    Attributes:
      count: how many finite global norms have been seen (int32 scalar).
      mean: running mean of the clipped global norm (float32 scalar): exact
        during warm-up, then an EMA.
      var: running variance of the clipped global norm (float32 scalar).
    """

    count: jax.Array  # shape=(), dtype=int32: finite norms seen so far
    mean: jax.Array  # shape=(), dtype=float32: EMA of the (clipped) global norm
    var: jax.Array  # shape=(), dtype=float32: EMA of its squared deviation


def clip_by_zscore(
    z_thresh: jax.typing.ArrayLike = 2.5,
    decay: jax.typing.ArrayLike = 0.97,
    warmup_steps: int = 25,
) -> optax.GradientTransformationExtraArgs:
    """Clips norm spikes whose z-score against running statistics is too high (ZClip).

    Tracks an exponential moving average ``mu`` of the global gradient norm and
    of its variance ``s2``. With ``n = ||g||_2`` and
    ``threshold = mu + z_thresh * sqrt(s2)``::

      if n > threshold  (z = (n - mu) / sqrt(s2) > z_thresh):
          g <- g * threshold / n,   n <- threshold
      mu <- decay * mu + (1 - decay) * n
      s2 <- decay * s2 + (1 - decay) * (n - mu)^2

    The statistics are updated with the *clipped* norm, so a spike does not
    inflate them. During the first ``warmup_steps`` steps nothing is clipped and
    ``mu``, ``s2`` are the exact mean and (population) variance of the norms seen.
    Non-finite norms do not update the statistics. The threshold is the EMA of
    the norms plus ``z_thresh`` EMA standard deviations, so it follows slow
    drifts of the norm.

    If every norm is exactly the same, ``s2`` is 0 and any larger norm is clipped
    to ``mu``; real gradients are never that regular.

    Args:
      z_thresh: the z-score above which a norm is clipped, ``> 0``.
      decay: the EMA decay of the statistics, in ``[0, 1)``.
      warmup_steps: steps that only gather statistics (a Python int ``>= 1``;
        with ``optax.inject_hyperparams`` list it in ``static_args``).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a
      :class:`ClipByZScoreState` (float32 scalars, not parameter-shaped).

    Example:
      >>> import jax.numpy as jnp
      >>> import optlab
      >>> tx = optlab.clip_by_zscore(z_thresh=2.0, decay=0.9, warmup_steps=2)
      >>> state = tx.init({"w": jnp.zeros(1)})
      >>> for g in (1.0, 3.0, 100.0):  # warm-up norms 1 and 3: mean 2, std 1
      ...     updates, state = tx.update({"w": jnp.array([g])}, state)
      >>> updates["w"]  # the spike is clipped to 2 + 2 * 1
      Array([4.], dtype=float32)

    References:
      Kumar, Owen, Chowdhury and Güra, `ZClip: Adaptive Spike Mitigation for LLM
      Pre-Training <https://arxiv.org/abs/2504.02507>`_, 2025.

      Seetharaman, Wichern, Pardo and Le Roux, `AutoClip: Adaptive Gradient
      Clipping for Source Separation Networks <https://arxiv.org/abs/2007.14469>`_,
      2020.
    """
    _base.check_positive("clip_by_zscore", z_thresh=z_thresh)
    _base.check_decay("clip_by_zscore", decay=decay)
    _base.check_int("clip_by_zscore", warmup_steps=warmup_steps)

    def init_fn(params):
        _base.check_float_tree("clip_by_zscore", params)
        del params
        zero = jnp.zeros([], jnp.float32)
        return ClipByZScoreState(count=jnp.zeros([], jnp.int32), mean=zero, var=zero)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g_norm = _tree.global_norm(updates)
        in_warmup = state.count < warmup_steps
        z = jnp.asarray(z_thresh, jnp.float32)
        b = jnp.asarray(decay, jnp.float32)

        threshold = state.mean + z * jnp.sqrt(jnp.maximum(state.var, 0.0))
        factor = jnp.where(in_warmup, 1.0, _clip_factor(g_norm, threshold))
        updates = _scale(updates, factor)
        clipped = jnp.where(in_warmup, g_norm, jnp.minimum(g_norm, threshold))

        # Warm-up: exact running mean / population variance (Welford).
        k = state.count.astype(jnp.float32) + 1.0
        w_mean = state.mean + (clipped - state.mean) / k
        w_var = state.var + ((clipped - state.mean) * (clipped - w_mean) - state.var) / k
        # Afterwards: EMAs of the clipped norm.
        e_mean = b * state.mean + (1.0 - b) * clipped
        e_var = b * state.var + (1.0 - b) * (clipped - e_mean) ** 2
        mean = jnp.where(in_warmup, w_mean, e_mean)
        var = jnp.where(in_warmup, w_var, e_var)

        finite = jnp.isfinite(g_norm)
        new_state = ClipByZScoreState(
            count=jnp.where(finite, optax.safe_increment(state.count), state.count),
            mean=jnp.where(finite, mean, state.mean),
            var=jnp.where(finite, var, state.var),
        )
        return updates, new_state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _base.public("clip_by_zscore", tx)  # shapes of updates checked against params


# ---------------------------------------------------------------------------
# Clipped adaptive methods
# ---------------------------------------------------------------------------


def scale_by_clipped_adagrad(
    max_norm: jax.typing.ArrayLike = 1.0,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    adagrad_norm: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """AdaGrad on clipped gradients (Clip-AdaGrad), robust to heavy-tailed noise.

    Each gradient is first clipped to global norm ``max_norm``, and AdaGrad's
    accumulator sees only clipped gradients::

      c = g * min(1, max_norm / ||g||_2)
      v <- v + c^2                    (v_0 = initial_accumulator_value)
      u = c / sqrt(v + eps)

    With ``adagrad_norm=True`` the accumulator is one scalar
    ``v <- v + ||c||^2`` (Clip-AdaGrad-Norm, the variant the convergence bounds
    of the reference are proved for). Every step is bounded:
    ``||u|| <= max_norm / sqrt(initial_accumulator_value)``, and one huge noise
    sample adds at most ``max_norm^2`` to ``v`` instead of freezing the step size
    for the rest of training, which is why plain AdaGrad has poor high-probability
    convergence under heavy-tailed (e.g. Cauchy) noise. Chain a learning rate after
    it (``optax.scale_by_learning_rate``). This is
    ``optax.chain(optlab.in_float32(optax.clip_by_global_norm(max_norm)),
    optax.scale_by_rss(...))``.

    Args:
      max_norm: the global-norm clipping threshold, ``> 0``.
      initial_accumulator_value: the initial accumulator, ``>= 0``.
      eps: added inside the square root, ``>= 0``.
      adagrad_norm: one scalar accumulator (AdaGrad-Norm) instead of one per
        coordinate.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a chain
      state ``(EmptyState(), ScaleByRssState(sum_of_squares))`` with the
      accumulator like params (in their dtype), or a float32 scalar with
      ``adagrad_norm=True``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import optlab
      >>> tx = optax.chain(optlab.scale_by_clipped_adagrad(max_norm=1.0),
      ...                  optax.scale_by_learning_rate(0.1))
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, state = tx.update({"w": jnp.array([1e6, 0.0])}, tx.init(params))
      >>> bool(optax.tree.norm(updates) <= 0.1)
      True

    References:
      Chezhegov, Klyukin, Semenov, Beznosikov, Gasnikov, Horváth, Takáč and
      Gorbunov, `Gradient Clipping Improves AdaGrad when the Noise Is Heavy-Tailed
      <https://arxiv.org/abs/2406.04443>`_, 2024.
    """
    name = "scale_by_clipped_adagrad"
    _base.check_positive(name, max_norm=max_norm)
    _base.check_nonnegative(name, initial_accumulator_value=initial_accumulator_value, eps=eps)
    # the accumulator of optlab.scale_by_adagrad_norm, fed clipped gradients
    precondition = _step_sizes._adagrad_norm(
        initial_accumulator_value, eps, "global" if adagrad_norm else "coordinate"
    )

    def clip(updates, state, params=None, **extra_args):
        return _clip_global(updates, max_norm), state

    tx = optax.chain(
        optax.GradientTransformationExtraArgs(optax.init_empty_state, clip), precondition
    )
    return _base.public(name, tx)
