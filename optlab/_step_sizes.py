"""Step-size rules: Polyak-type, AdaGrad-norm, energy-adaptive and parameter-free.

Each transform here chooses *how far* to step along the incoming direction:

* Polyak-type rules read the loss (the ``value`` extra argument of ``update``):
  :func:`scale_by_sps` (SPS_max, and ALR-SMAG's step when placed after a momentum
  trace), :func:`normalize_by_loss` (loss-normalized GD), :func:`scale_by_aegd`
  (energy-adaptive).
* AdaGrad-norm: :func:`scale_by_adagrad_norm` (one accumulator for the whole tree, per
  leaf or per coordinate) and :func:`scale_by_adago` (Muon's orthogonalized momentum
  times an AdaGrad-norm scalar per matrix).
* Parameter-free: :func:`scale_by_dog`, :func:`scale_by_dowg`, :func:`scale_by_prodigy`,
  and the :func:`schedule_free` wrapper around any base optimizer (its evaluation
  parameters are read with :func:`optlab.averaged_params`).

Conventions: every transform returns a *descent direction* scaled by its step size,
positive like a gradient, so a chain ends with a sign flip
(``optax.scale_by_learning_rate(lr)`` or ``optax.scale(-1.0)``) except
:func:`schedule_free`, which wraps a full optimizer and returns its updates. Scalars
(step sizes, norms, accumulators) are float32; buffers like the params keep the
params' dtype; updates keep the gradients' dtype.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _base, _tree
from optlab._momentum import _scale_by_momentum
from optlab._normalization import _orthogonalize, check_newton_schulz

__all__ = [
    "AEGDState",
    "AdaGOState",
    "DoGState",
    "DoWGState",
    "ProdigyState",
    "ScaleBySPSState",
    "ScheduleFreeState",
    "normalize_by_loss",
    "scale_by_adago",
    "scale_by_adagrad_norm",
    "scale_by_aegd",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_prodigy",
    "scale_by_sps",
    "schedule_free",
]


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _sq_norm(tree: Any) -> jax.Array:
    """Squared global L2 norm in float32 (0 for an empty tree)."""
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree.leaves(tree):
        x = _tree.to_acc(leaf)
        total = total + jnp.sum(jnp.real(x * jnp.conj(x)))
    return total


def _scale(tree: Any, factor: Any) -> Any:
    """Every leaf times ``factor`` (a scalar), in the leaf's dtype."""
    return jax.tree.map(lambda x: (_tree.to_acc(x) * factor).astype(x.dtype), tree)


def _require_value(fn_name: str, value: Any) -> jax.Array:
    if value is None:
        raise ValueError(
            f"`optlab.{fn_name}` needs the keyword argument `value` (the loss at `params`) in"
            " `update`: `value, grads = jax.value_and_grad(loss)(params)`, then"
            " `tx.update(grads, state, params, value=value)`; with Flax NNX,"
            " `optimizer.update(model, grads, value=value)`."
        )
    return jnp.asarray(value, jnp.float32)


def _is_zero(x: Any) -> bool:
    return _base.is_concrete_number(x) and float(x) == 0.0


_VALUE_HOW = (
    "`value, grads = jax.value_and_grad(loss)(params)`, then"
    " `tx.update(grads, state, params, value=value)`; with Flax NNX,"
    " `optimizer.update(model, grads, value=value)`."
)


# ---------------------------------------------------------------------------
# Polyak-type rules (need the loss `value`)
# ---------------------------------------------------------------------------


class ScaleBySPSState(NamedTuple):
    """State for :func:`optlab.scale_by_sps`.

    Only the step ``count`` (int32 scalar), read when ``max_learning_rate`` is a
    schedule.
    """

    count: jax.Array  # int32 scalar (for a ``max_learning_rate`` schedule)


def _sps(fn_name, max_learning_rate, f_star, c, eps, weight_decay):
    """SPS_max step on the incoming direction (no validation: callers validate)."""

    def init_fn(params):
        return ScaleBySPSState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        value = _require_value(fn_name, value)
        decay = not _is_zero(weight_decay)
        if decay and params is None:
            raise ValueError(_base.NO_PARAMS_MSG)
        gap = value - jnp.asarray(f_star, jnp.float32)
        denom = jnp.asarray(c, jnp.float32) * _sq_norm(updates) + jnp.asarray(eps, jnp.float32)
        step = _tree.safe_div(gap, denom, 0.0)
        # clip at 0: a loss below f_star gives no step, never an ascent
        cap = max_learning_rate(state.count) if callable(max_learning_rate) else max_learning_rate
        step = jnp.clip(step, 0.0, jnp.asarray(cap, jnp.float32))
        if decay:
            wd = jnp.asarray(weight_decay, jnp.float32)
            updates = jax.tree.map(
                lambda u, p: (step * (_tree.to_acc(u) + wd * _tree.to_acc(p))).astype(u.dtype),
                updates,
                params,
            )
        else:
            updates = _scale(updates, step)
        return updates, ScaleBySPSState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_sps(
    max_learning_rate: optax.ScalarOrSchedule = 1.0,
    f_star: jax.typing.ArrayLike = 0.0,
    c: jax.typing.ArrayLike = 0.5,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic Polyak step size, capped (SPS_max): scales the direction by the Polyak step.

    With ``value`` the (mini-batch) loss :math:`f` at ``params`` and :math:`u` the
    incoming direction (the gradient, or a momentum trace for ALR-SMAG)::

      step = clip((f - f_star) / (c ||u||^2 + eps), 0, max_learning_rate)
      out  = step * (u + weight_decay * params)

    The step is zero when :math:`f = f^*` and never negative (a loss below ``f_star``
    gives no step rather than an ascent); the decoupled weight decay is multiplied by
    the same step (ALR-SMAG's rule). Needs the extra argument ``value`` in ``update``.
    Chain a sign flip after it (``optax.scale_by_learning_rate(1.0)``); named
    optimizers: :func:`optlab.sps`, :func:`optlab.alr_smag`. With ``c=1`` and
    ``eps=0`` this is ``optax.scale_by_polyak`` for losses above ``f_star``.

    Args:
      max_learning_rate: the cap :math:`\gamma_b` of the step (>= 0), or a schedule.
      f_star: a lower bound on the loss, e.g. 0 for interpolating models.
      c: the Polyak constant (> 0); 0.5 in the reference's theory, 0.2 in practice.
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay, scaled by the step (>= 0; needs ``params``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> tx = optax.chain(optlab.scale_by_sps(max_learning_rate=1.0, c=1.0),
      ...                  optax.scale_by_learning_rate(1.0))
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> value, g = jax.value_and_grad(loss)(params)
      >>> updates, _ = tx.update(g, tx.init(params), params, value=value)
      >>> updates["w"]  # step = 5 / 20 = 0.25
      Array([-0.5, -1. ], dtype=float32)

    State:
      ``ScaleBySPSState(count)``.

    References:
      Loizou, Vaswani, Laradji and Lacoste-Julien, `Stochastic Polyak Step-size for SGD:
      An Adaptive Learning Rate for Fast Convergence <https://arxiv.org/abs/2002.10542>`_,
      2021. Wang, Johansson and Zhang, `Generalized Polyak Step Size for First Order
      Optimization with Momentum <https://arxiv.org/abs/2305.12939>`_, 2023.
    """
    fn = "scale_by_sps"
    if not callable(max_learning_rate):  # a number >= 0 or a schedule
        _base.check_nonnegative(fn, max_learning_rate=max_learning_rate)
    _base.check_nonnegative(fn, eps=eps, weight_decay=weight_decay)
    _base.check_finite(fn, f_star=f_star)
    _base.check_positive(fn, c=c)
    return _base.public(
        fn, _sps(fn, max_learning_rate, f_star, c, eps, weight_decay), value=_VALUE_HOW
    )


def normalize_by_loss(eps: jax.typing.ArrayLike = 1e-8) -> optax.GradientTransformationExtraArgs:
    r"""Divides the direction by the loss: loss-normalized gradient descent.

    ``out = u / max(value, eps)`` with ``value`` the loss at ``params`` (an extra
    argument of ``update``). For a nonnegative loss such as logistic or cross-entropy
    loss, gradient descent with step :math:`\gamma / f(x_t)` behaves like the
    perceptron on separable data and converges with arbitrarily large :math:`\gamma`.
    The loss must be >= 0; ``eps`` bounds the factor where it nears 0.

    Args:
      eps: the smallest loss divided by (> 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.normalize_by_loss(), optax.scale_by_learning_rate(1.0))
      >>> g = {"w": jnp.array([2.0])}
      >>> updates, _ = tx.update(g, tx.init(g), value=4.0)
      >>> updates["w"]
      Array([-0.5], dtype=float32)

    State:
      ``optax.EmptyState()``.

    References:
      Tyurin, From Logistic Regression to the Perceptron Algorithm: Exploring Gradient
      Descent with Large Step Sizes, 2023 (AAAI 2025).
    """
    fn = "normalize_by_loss"
    _base.check_positive(fn, eps=eps)

    def init_fn(params):
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        value = _require_value(fn, value)
        factor = 1.0 / jnp.maximum(value, jnp.asarray(eps, jnp.float32))
        factor = jnp.where(jnp.isnan(value), value, factor)  # a NaN loss stays visible
        return _scale(updates, factor), state

    return _base.public(
        fn, optax.GradientTransformationExtraArgs(init_fn, update_fn), value=_VALUE_HOW
    )


class AEGDState(NamedTuple):
    """State for :func:`optlab.scale_by_aegd`.

    ``count`` (int32 scalar) and the energy ``r`` (like the params, their dtype);
    ``r`` starts at ``sqrt(f_0 + c)`` on the first update and never increases.
    """

    count: jax.Array  # int32 scalar
    energy: optax.Updates  # r, like params (params' dtype)


def scale_by_aegd(
    learning_rate: jax.typing.ArrayLike = 0.1, c: jax.typing.ArrayLike = 1.0
) -> optax.GradientTransformationExtraArgs:
    r"""AEGD: gradient descent with an energy variable (unconditionally energy-stable).

    With :math:`f` = ``value`` (the loss at ``params``) and :math:`\eta` =
    ``learning_rate``, coordinate-wise::

      v   = g / (2 sqrt(f + c))                  (the gradient of sqrt(f + c))
      r  <- r / (1 + 2 eta v^2)                  (r_0 = sqrt(f_0 + c))
      out = 2 eta r v

    The energy :math:`r` never increases, whatever :math:`\eta`, which is what makes
    the method stable with large steps. ``out`` already contains :math:`\eta`: chain
    ``optax.scale(-1.0)`` after it. Needs ``value``; :math:`f + c` must stay > 0.

    Args:
      learning_rate: :math:`\eta` (>= 0).
      c: the shift making :math:`f + c > 0` (> 0; 1 for nonnegative losses).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum(p ** 2)
      >>> tx = optax.chain(optlab.scale_by_aegd(0.1), optax.scale(-1.0))
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     value, g = jax.value_and_grad(loss)(params)
      ...     updates, state = tx.update(g, state, params, value=value)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(loss(params) < 1e-3)
      True

    State:
      ``AEGDState(count, energy)``: one buffer like the params.

    References:
      Liu and Tian, `AEGD: Adaptive Gradient Descent with Energy
      <https://arxiv.org/abs/2010.05109>`_, 2020. Liu, Nurbekyan, Tian and Yang,
      Adaptive Preconditioned Gradient Descent with Energy, 2024.
    """
    fn = "scale_by_aegd"
    _base.check_nonnegative(fn, learning_rate=learning_rate)
    _base.check_positive(fn, c=c)

    def init_fn(params):
        return AEGDState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        value = _require_value(fn, value)
        lr = jnp.asarray(learning_rate, jnp.float32)
        root = jnp.sqrt(jnp.maximum(value + jnp.asarray(c, jnp.float32), 1e-30))
        first = state.count == 0

        v = jax.tree.map(lambda g: _tree.to_acc(g) / (2.0 * root), updates)
        r_new = jax.tree.map(
            lambda r, v: jnp.where(first, root, _tree.to_acc(r)) / (1.0 + 2.0 * lr * v * v),
            state.energy,
            v,
        )
        out = jax.tree.map(lambda g, r, v: (2.0 * lr * r * v).astype(g.dtype), updates, r_new, v)
        energy = jax.tree.map(lambda r, old: r.astype(old.dtype), r_new, state.energy)
        return out, AEGDState(optax.safe_increment(state.count), energy)

    return _base.public(
        fn, optax.GradientTransformationExtraArgs(init_fn, update_fn), value=_VALUE_HOW
    )


# ---------------------------------------------------------------------------
# AdaGrad-norm
# ---------------------------------------------------------------------------

GRANULARITIES = ("global", "leaf", "coordinate")


class _ScaleByRssNormState(NamedTuple):
    sum_of_squares: Any  # float32 scalar ("global") or a tree of float32 scalars ("leaf")


def _adagrad_norm(
    initial_accumulator_value: Any, eps: Any, granularity: str = "global"
) -> optax.GradientTransformationExtraArgs:
    """AdaGrad(-Norm) accumulator and scaling, with no validation (callers validate).

    ``v <- v + ||g||^2`` over the whole tree, per leaf, or per coordinate
    (``optax.scale_by_rss``); ``u = g / sqrt(v + eps)`` (0 where ``v == 0``). Shared by
    :func:`scale_by_adagrad_norm` and :func:`optlab.scale_by_clipped_adagrad`.
    """
    if granularity == "coordinate":
        return optax.with_extra_args_support(optax.scale_by_rss(initial_accumulator_value, eps))

    def inv_sqrt(total):
        return jnp.where(total > 0, jax.lax.rsqrt(total + jnp.asarray(eps, jnp.float32)), 0.0)

    def init_fn(params):
        if granularity == "global":
            return _ScaleByRssNormState(jnp.full([], initial_accumulator_value, jnp.float32))
        return _ScaleByRssNormState(
            jax.tree.map(lambda _: jnp.full([], initial_accumulator_value, jnp.float32), params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        if granularity == "global":
            total = state.sum_of_squares + _sq_norm(updates)
            return _scale(updates, inv_sqrt(total)), _ScaleByRssNormState(total)
        totals = jax.tree.map(lambda g, s: s + _sq_norm(g), updates, state.sum_of_squares)
        out = jax.tree.map(
            lambda g, t: (_tree.to_acc(g) * inv_sqrt(t)).astype(g.dtype), updates, totals
        )
        return out, _ScaleByRssNormState(totals)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_adagrad_norm(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    granularity: Literal["global", "leaf", "coordinate"] = "global",
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGrad-Norm: divides by the root of the running sum of squared gradient norms.

    ::

      b^2 <- b^2 + ||g||^2          (b_0^2 = initial_accumulator_value)
      u    = g / sqrt(b^2 + eps)

    with one accumulator for the whole tree (``granularity="global"``, AdaGrad-Norm:
    a single scalar step size), one per leaf (``"leaf"``), or one per coordinate
    (``"coordinate"``, AdaGrad, i.e. ``optax.scale_by_rss``). The step sizes
    :math:`1 / b_t` never increase, and with ``"global"`` AdaGrad-Norm adapts to the
    noise level and smoothness with no tuning of the learning rate's scale beyond
    its order of magnitude. Chain a learning rate after it; named optimizer
    :func:`optlab.adagrad_norm`. :func:`optlab.scale_by_clipped_adagrad` is the same
    accumulator fed clipped gradients.

    Args:
      initial_accumulator_value: :math:`b_0^2` (>= 0).
      eps: added inside the square root (>= 0).
      granularity: ``"global"``, ``"leaf"`` or ``"coordinate"``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_adagrad_norm(eps=0.0)
      >>> g = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
      >>> updates, state = tx.update(g, tx.init(g))
      >>> updates["a"], updates["b"]  # divided by ||g|| = 5
      (Array([0.6], dtype=float32), Array([0.8], dtype=float32))

    State:
      one float32 scalar (``"global"``), one per leaf (``"leaf"``), or a buffer like
      the params (``"coordinate"``, ``optax.ScaleByRssState``).

    References:
      Ward, Wu and Bottou, `AdaGrad Stepsizes: Sharp Convergence Over Nonconvex
      Landscapes <https://arxiv.org/abs/1806.01811>`_, 2019 (JMLR 2020).
      Duchi, Hazan and Singer, `Adaptive Subgradient Methods
      <https://jmlr.org/papers/v12/duchi11a.html>`_, 2011.
    """
    fn = "scale_by_adagrad_norm"
    _base.check_nonnegative(fn, initial_accumulator_value=initial_accumulator_value, eps=eps)
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"`optlab.{fn}`: `granularity` must be one of {GRANULARITIES}, got"
            f" granularity={granularity!r}."
        )
    return _base.public(fn, _adagrad_norm(initial_accumulator_value, eps, granularity))


class AdaGOState(NamedTuple):
    """State for :func:`optlab.scale_by_adago`.

    ``sum_of_squares``: one float32 scalar per leaf, the accumulated clipped squared
    gradient norms ``v^2``; ``inner_state``: the momentum of Muon's direction.
    """

    sum_of_squares: Any  # a float32 scalar per leaf: v^2
    inner_state: Any  # the momentum of the Muon direction


def scale_by_adago(
    b1: jax.typing.ArrayLike = 0.95,
    gamma: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-3,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    *,
    nesterov: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGO: Muon's orthogonalized momentum times an AdaGrad-norm step per matrix.

    For each leaf with gradient :math:`G` (one scalar of state per leaf)::

      n    = min(||G||_F, gamma)
      v^2 <- v^2 + n^2                          (v_0^2 = initial_accumulator_value)
      O    = orthogonalize(momentum(G))          (Muon's direction, Newton-Schulz)
      out  = max(eps, n / v) * O

    The scalar step is AdaGrad-norm's, with the norms clipped at ``gamma`` so one
    heavy-tailed gradient cannot freeze it, and bounded below by ``eps``; it is at
    most 1, so the learning rate chained after it caps the step. Meant for 2-D
    leaves (``tree`` of matrices); other leaves get the same scalar on their
    (unorthogonalized) momentum. Named optimizer :func:`optlab.adago` (AdamW on the
    non-matrix leaves, like :func:`optlab.muon`).

    Args:
      b1: momentum decay (in [0, 1)).
      gamma: the clipping level of the gradient norm (> 0).
      eps: the smallest scalar step (>= 0).
      initial_accumulator_value: :math:`v_0^2` (>= 0).
      ns_steps: Newton-Schulz iterations (int >= 1).
      ns_coeffs: Newton-Schulz coefficients.
      nesterov: Nesterov momentum (as Muon).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.scale_by_adago(), optax.scale_by_learning_rate(0.02))
      >>> params = {"w": jnp.zeros((4, 8))}
      >>> g = {"w": jax.random.normal(jax.random.key(0), (4, 8))}
      >>> updates, state = tx.update(g, tx.init(params))
      >>> jax.tree.map(jnp.shape, state[0].sum_of_squares)  # one scalar per matrix
      {'w': ()}

    State:
      ``AdaGOState(sum_of_squares, inner_state)``: a float32 scalar per leaf and the
      momentum (one buffer like the params).

    References:
      Zhang, Liu and Schaeffer, `AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal
      Updates <https://arxiv.org/abs/2509.02981>`_, 2025.
    """
    fn = "scale_by_adago"
    _base.check_decay(fn, b1=b1)
    _base.check_positive(fn, gamma=gamma)
    _base.check_nonnegative(fn, eps=eps, initial_accumulator_value=initial_accumulator_value)
    check_newton_schulz(fn, ns_steps, ns_coeffs, 1e-7)
    return _base.public(
        fn,
        _scale_by_adago(b1, gamma, eps, initial_accumulator_value, ns_steps, ns_coeffs, nesterov),
    )


def _scale_by_adago(b1, gamma, eps, initial_accumulator_value, ns_steps, ns_coeffs, nesterov):
    direction = optax.chain(
        _scale_by_momentum(b1, nesterov, None),
        _orthogonalize(ns_steps, ns_coeffs, 1e-7, "passthrough"),
    )

    def init_fn(params):
        acc = jax.tree.map(lambda _: jnp.full([], initial_accumulator_value, jnp.float32), params)
        return AdaGOState(acc, direction.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        g_clip = jnp.asarray(gamma, jnp.float32)
        norms = jax.tree.map(lambda g: jnp.minimum(jnp.sqrt(_sq_norm(g)), g_clip), updates)
        totals = jax.tree.map(lambda n, s: s + n * n, norms, state.sum_of_squares)
        steps = jax.tree.map(
            lambda n, t: jnp.maximum(
                jnp.asarray(eps, jnp.float32), _tree.safe_div(n, jnp.sqrt(t), 0.0)
            ),
            norms,
            totals,
        )
        steps = jax.tree.map(lambda n, s: jnp.where(jnp.isnan(n), n, s), norms, steps)
        o, inner = direction.update(updates, state.inner_state, params, **extra_args)
        out = jax.tree.map(lambda u, s: (_tree.to_acc(u) * s).astype(u.dtype), o, steps)
        return out, AdaGOState(totals, inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Parameter-free: DoG, DoWG, Prodigy
# ---------------------------------------------------------------------------


class DoGState(NamedTuple):
    """State for :func:`optlab.scale_by_dog`.

    A copy of the initial params, the largest distance from them so far (float32),
    the sum of squared gradient norms (float32) and a first-step flag.
    """

    is_init_step: jax.Array  # bool scalar
    init_params: optax.Params  # x_0, params' dtype
    max_dist: jax.Array  # float32 scalar: max_t ||x_t - x_0|| (r_eps at start)
    sum_sq_norm_grads: jax.Array  # float32 scalar


INIT_STEP_KINDS = ("distance", "learning_rate", "heuristic")


def scale_by_dog(
    init_step: tuple[str, float] = ("heuristic", 1e-6),
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""DoG (distance over gradients): SGD's step size from the distance travelled.

    ::

      r_t   = max(r_{t-1}, ||x_t - x_0||)          (r_0 = r_eps)
      G_t   = G_{t-1} + ||g_t||^2
      out   = r_t / sqrt(G_t + eps) * g_t

    so the step is the largest distance from the initial point over the root of the
    summed squared gradient norms: no learning rate to tune. ``init_step`` fixes
    :math:`r_\epsilon`: ``("distance", r)``, ``("heuristic", a)`` with
    :math:`r_\epsilon = a (1 + \|x_0\|)`, or ``("learning_rate", lr)`` (first step
    ``lr``, then :math:`r_\epsilon = 0`). Numerically the same as
    ``optax.contrib.scale_by_dog``; the scalars are float32. The reference
    recommends averaging the iterates (e.g. :func:`optlab.ema_params`). Needs
    ``params``; chain a sign flip (named optimizer :func:`optlab.dog`).

    Args:
      init_step: ``(kind, value)`` with kind ``"distance"``, ``"heuristic"`` or
        ``"learning_rate"`` and value > 0.
      eps: added to the sum of squared norms (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. ``init`` must see the actual
      initial parameters (it stores them).

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.scale_by_dog(("distance", 1.0)),
      ...                  optax.scale_by_learning_rate(1.0))
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> updates["w"]  # step 1 / ||g|| = 0.2
      Array([-0.6, -0.8], dtype=float32)

    State:
      ``DoGState(is_init_step, init_params, max_dist, sum_sq_norm_grads)``: a copy of
      the initial params and three scalars.

    References:
      Ivgi, Hinder and Carmon, `DoG is SGD's Best Friend: A Parameter-Free Dynamic Step
      Size Schedule <https://arxiv.org/abs/2302.12022>`_, 2023.
    """
    fn = "scale_by_dog"
    _check_init_step(fn, init_step)
    _base.check_nonnegative(fn, eps=eps)
    return _base.public(fn, _scale_by_dog(init_step, eps))


def _scale_by_dog(init_step, eps):
    kind, init_value = init_step

    def init_fn(params):
        if kind == "distance":
            r_eps = jnp.asarray(init_value, jnp.float32)
        elif kind == "heuristic":
            r_eps = init_value * (1.0 + _tree.global_norm(params))  # overflow-safe
        else:
            r_eps = jnp.zeros([], jnp.float32)
        return DoGState(
            is_init_step=jnp.asarray(True),
            init_params=jax.tree.map(jnp.copy, params),
            max_dist=jnp.asarray(r_eps, jnp.float32),
            sum_sq_norm_grads=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        dist = _tree.global_norm(  # overflow-safe: params of 1e30 give a finite distance
            jax.tree.map(
                lambda p, p0: _tree.to_acc(p) - _tree.to_acc(p0), params, state.init_params
            )
        )
        max_dist = jnp.maximum(state.max_dist, dist)
        sum_sq = state.sum_sq_norm_grads + _sq_norm(updates)
        step = max_dist / jnp.sqrt(sum_sq + jnp.asarray(eps, jnp.float32))
        if kind == "learning_rate":
            step = jnp.where(state.is_init_step, jnp.asarray(init_value, jnp.float32), step)
        new_state = DoGState(jnp.asarray(False), state.init_params, max_dist, sum_sq)
        return _scale(updates, step), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_init_step(fn: str, init_step: Any) -> tuple[str, Any]:
    if not (isinstance(init_step, tuple) and len(init_step) == 2):
        raise TypeError(
            f"`optlab.{fn}`: `init_step` must be a tuple (kind, value), got"
            f" init_step={init_step!r}."
        )
    kind, value = init_step
    if kind not in INIT_STEP_KINDS:
        raise ValueError(
            f"`optlab.{fn}`: `init_step[0]` must be one of {INIT_STEP_KINDS}, got {kind!r}."
        )
    _base.check_positive(fn, init_step_value=value)
    return kind, value


class DoWGState(NamedTuple):
    """State for :func:`optlab.scale_by_dowg`.

    A copy of the initial params, the distance-weighted sum of squared gradient norms
    and the squared-distance estimate (float32 scalars).
    """

    init_params: optax.Params  # x_0, params' dtype
    weighted_sq_norm_grads: jax.Array  # float32 scalar
    estim_sq_dist: jax.Array  # float32 scalar


def scale_by_dowg(
    init_estim_sq_dist: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    r"""DoWG (distance over weighted gradients): DoG with distance-weighted gradient sums.

    ::

      r_t^2 = max(r_{t-1}^2, ||x_t - x_0||^2)        (r_0^2 = init_estim_sq_dist, or eps)
      v_t   = v_{t-1} + r_t^2 ||g_t||^2
      out   = r_t^2 / (sqrt(v_t) + eps) * g_t

    Numerically the same as ``optax.contrib.scale_by_dowg`` (float32 scalars). Needs
    ``params``; chain a sign flip (named optimizer :func:`optlab.dowg`).

    Args:
      init_estim_sq_dist: initial squared-distance estimate (> 0); default ``eps``.
      eps: added to the denominator (> 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.scale_by_dowg(init_estim_sq_dist=1.0, eps=0.0),
      ...                  optax.scale_by_learning_rate(1.0))
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> updates["w"]  # step 1 / (1 * 5)
      Array([-0.6, -0.8], dtype=float32)

    State:
      ``DoWGState(init_params, weighted_sq_norm_grads, estim_sq_dist)``.

    References:
      Khaled, Mishchenko and Jin, `DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method <https://arxiv.org/abs/2305.16284>`_, 2023.
    """
    fn = "scale_by_dowg"
    _base.check_nonnegative(fn, eps=eps)
    if init_estim_sq_dist is not None:
        _base.check_positive(fn, init_estim_sq_dist=init_estim_sq_dist)
    return _base.public(fn, _scale_by_dowg(init_estim_sq_dist, eps))


def _scale_by_dowg(init_estim_sq_dist, eps):
    r0 = eps if init_estim_sq_dist is None else init_estim_sq_dist

    def init_fn(params):
        return DoWGState(
            init_params=jax.tree.map(jnp.copy, params),
            weighted_sq_norm_grads=jnp.zeros([], jnp.float32),
            estim_sq_dist=jnp.asarray(r0, jnp.float32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        sq_dist = _sq_norm(
            jax.tree.map(
                lambda p, p0: _tree.to_acc(p) - _tree.to_acc(p0), params, state.init_params
            )
        )
        estim = jnp.maximum(state.estim_sq_dist, sq_dist)
        weighted = state.weighted_sq_norm_grads + estim * _sq_norm(updates)
        step = estim / (jnp.sqrt(weighted) + jnp.asarray(eps, jnp.float32))
        return _scale(updates, step), DoWGState(state.init_params, weighted, estim)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ProdigyState(NamedTuple):
    """State for :func:`optlab.scale_by_prodigy`.

    Adam's two moments of ``d * g``, the weighted gradient sum ``s`` and the initial
    params (four buffers like the params), the estimate ``d`` and the numerator sum.
    """

    count: jax.Array  # int32 scalar
    exp_avg: optax.Updates  # EMA of d * g (params' dtype)
    exp_avg_sq: optax.Updates  # EMA of (d * g)^2 (params' dtype)
    grad_sum: optax.Updates  # weighted sum of d * g (params' dtype)
    params0: optax.Params  # x_0
    estim_lr: jax.Array  # float32 scalar: d
    numerator_weighted: jax.Array  # float32 scalar


def scale_by_prodigy(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    beta3: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    estim_lr0: jax.typing.ArrayLike = 1e-6,
    estim_lr_coef: jax.typing.ArrayLike = 1.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Prodigy: Adam whose learning rate :math:`d` is estimated online (D-Adaptation).

    With :math:`\lambda_t` = ``learning_rate`` (a multiplier, 1 by default, or a
    schedule), :math:`d` the estimate of the distance to the solution, and
    :math:`d\lambda` including Adam's bias correction::

      m <- b1 m + (1 - b1) d g            v <- b2 v + (1 - b2) d^2 g^2
      s <- beta3 s + (d lambda / d_0) d g
      r <- beta3 r + (d / d_0) d lambda <g, x_0 - x>
      d <- max(d, estim_lr_coef * r / ||s||_1)
      out = d lambda (m / (sqrt(v) + d eps) + weight_decay x)

    The same numbers as ``optax.contrib.prodigy`` (``b1``, ``b2`` are its ``betas``),
    except that a zero :math:`\|s\|_1` leaves :math:`d` unchanged instead of giving
    NaN. Returns the descent direction (positive): chain a sign flip, or use the named
    optimizer :func:`optlab.prodigy`. Needs ``params``.

    Args:
      learning_rate: multiplier of the estimated step (>= 0) or a schedule (e.g.
        cosine decay from 1).
      b1: Adam's first-moment decay (in [0, 1)).
      b2: Adam's second-moment decay (in [0, 1)).
      beta3: decay of the D estimate's sums (in [0, 1)); default ``sqrt(b2)``.
      eps: Adam's epsilon (>= 0), scaled by ``d``.
      estim_lr0: initial (under-)estimate :math:`d_0` (> 0).
      estim_lr_coef: multiplier of the estimate (> 0).
      weight_decay: decoupled weight decay (>= 0), scaled by :math:`d\lambda`.
      safeguard_warmup: leave :math:`\lambda` out of the sum ``s`` (for warmup).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = optlab.prodigy()
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for _ in range(200):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(loss(params) < 1e-2)
      True

    State:
      ``ProdigyState(count, exp_avg, exp_avg_sq, grad_sum, params0, estim_lr,
      numerator_weighted)``: four buffers like the params.

    References:
      Mishchenko and Defazio, `Prodigy: An Expeditiously Adaptive Parameter-Free
      Learner <https://arxiv.org/abs/2306.06101>`_, 2023.
    """
    fn = "scale_by_prodigy"
    _base.check_learning_rate(fn, learning_rate)
    _base.check_decay(fn, b1=b1, b2=b2)
    if beta3 is not None:
        _base.check_decay(fn, beta3=beta3)
    _base.check_nonnegative(fn, eps=eps, weight_decay=weight_decay)
    _base.check_positive(fn, estim_lr0=estim_lr0, estim_lr_coef=estim_lr_coef)
    return _base.public(
        fn,
        _prodigy(
            fn,
            learning_rate,
            b1,
            b2,
            beta3,
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
        ),
    )


def _prodigy(
    fn, learning_rate, b1, b2, beta3, eps, estim_lr0, estim_lr_coef, weight_decay, safeguard_warmup
):
    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return ProdigyState(
            count=jnp.zeros([], jnp.int32),
            exp_avg=zeros,
            exp_avg_sq=optax.tree.zeros_like(params),
            grad_sum=optax.tree.zeros_like(params),
            params0=jax.tree.map(jnp.copy, params),
            estim_lr=jnp.asarray(estim_lr0, jnp.float32),
            numerator_weighted=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        f32 = jnp.float32
        beta1, beta2 = jnp.asarray(b1, f32), jnp.asarray(b2, f32)
        beta_3 = jnp.sqrt(beta2) if beta3 is None else jnp.asarray(beta3, f32)
        d0 = jnp.asarray(estim_lr0, f32)
        count_inc = optax.safe_increment(state.count)
        sched = learning_rate(state.count) if callable(learning_rate) else learning_rate
        sched = jnp.asarray(sched, f32)
        t = count_inc.astype(f32)
        bc = jnp.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        d = state.estim_lr
        dlr = d * sched * bc
        acc = _tree.to_acc
        numerator_acum = sum(
            (
                jnp.sum(acc(g) * (acc(p0) - acc(p)))
                for g, p0, p in zip(
                    jax.tree.leaves(updates),
                    jax.tree.leaves(state.params0),
                    jax.tree.leaves(params),
                )
            ),
            jnp.zeros([], f32),
        )
        exp_avg = jax.tree.map(
            lambda m, g: (beta1 * acc(m) + (1 - beta1) * d * acc(g)).astype(m.dtype),
            state.exp_avg,
            updates,
        )
        exp_avg_sq = jax.tree.map(
            lambda v, g: (beta2 * acc(v) + (1 - beta2) * (d * acc(g)) ** 2).astype(v.dtype),
            state.exp_avg_sq,
            updates,
        )
        weight = d if safeguard_warmup else dlr
        grad_sum = jax.tree.map(
            lambda s, g: (beta_3 * acc(s) + weight * d * acc(g) / d0).astype(s.dtype),
            state.grad_sum,
            updates,
        )
        numerator = beta_3 * state.numerator_weighted + (d / d0) * dlr * numerator_acum
        denominator = sum(
            (jnp.sum(jnp.abs(acc(s))) for s in jax.tree.leaves(grad_sum)), jnp.zeros([], f32)
        )
        estimate = jnp.asarray(estim_lr_coef, f32) * _tree.safe_div(numerator, denominator, 0.0)
        new_d = jnp.maximum(d, estimate)
        wd = jnp.asarray(weight_decay, f32)
        out = jax.tree.map(
            lambda m, v, p, g: (dlr * (acc(m) / (jnp.sqrt(acc(v)) + d * eps) + wd * acc(p))).astype(
                g.dtype
            ),
            exp_avg,
            exp_avg_sq,
            params,
            updates,
        )
        new_state = ProdigyState(
            count_inc, exp_avg, exp_avg_sq, grad_sum, state.params0, new_d, numerator
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Schedule-free
# ---------------------------------------------------------------------------


class ScheduleFreeState(NamedTuple):
    """State for :func:`optlab.schedule_free`.

    ``optlab.averaged_params(state)`` returns ``x`` (the evaluation parameters).
    """

    count: jax.Array  # int32 scalar
    weight_sum: jax.Array  # float32 scalar: sum of lr_max^weight_lr_power
    max_lr: jax.Array  # float32 scalar
    z: optax.Params  # the base optimizer's iterate (params' dtype)
    x: optax.Params  # the average: the parameters to evaluate (params' dtype)
    inner_state: optax.OptState  # the base optimizer's state

    averaging_name = "schedule_free"  # read by optlab.averaged_params

    def averaged(self) -> optax.Params:
        """The evaluation parameters ``x``."""
        return self.x


def schedule_free(
    base_optimizer: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Schedule-free wrapper: interpolation and averaging instead of a decaying schedule.

    The gradient is taken at the params :math:`y_t`; the base optimizer moves its own
    iterate :math:`z`, and :math:`x` is a weighted average of the :math:`z`'s::

      z_{t+1} = z_t + base_update(g(y_t))
      x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},  c = w_t / sum_{s<=t} w_s,
                                                        w_t = max_{s<=t} lr_s^weight_lr_power
      y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1}

    Train at :math:`y` (the params); evaluate at :math:`x`, read with
    ``optlab.averaged_params(state)`` (also through a ``flax.nnx.Optimizer``). The
    base optimizer must have *no momentum* (``b1`` replaces it) and use the same
    ``learning_rate``; named optimizers :func:`optlab.schedule_free_sgd` and
    :func:`optlab.schedule_free_adamw`. Same numbers as
    ``optax.contrib.schedule_free`` with a constant learning rate; with a schedule
    (warmup), the weight :math:`w_t` here uses the learning rate of the same step
    as the base optimizer (optax's is one step ahead). ``b1 = 0`` is allowed
    (primal averaging), since :math:`x` is stored rather than recovered from
    :math:`y` and :math:`z` (one more buffer like the params than optax).

    Args:
      base_optimizer: the optimizer moving :math:`z` (without momentum).
      learning_rate: its learning rate (>= 0) or schedule, for the averaging weights.
      b1: interpolation between :math:`x` and :math:`z` (in [0, 1)).
      weight_lr_power: exponent of the learning rate in the weights (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Needs ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.schedule_free(optax.sgd(0.1), learning_rate=0.1)
      >>> params = {"w": jnp.array([1.0, -1.0])}
      >>> state = tx.init(params)
      >>> for _ in range(50):
      ...     updates, state = tx.update(params, state, params)  # loss |w|^2 / 2
      ...     params = optax.apply_updates(params, updates)
      >>> x = optlab.averaged_params(state)
      >>> bool(jnp.all(jnp.abs(x["w"]) < 0.1))
      True

    State:
      ``ScheduleFreeState(count, weight_sum, max_lr, z, x, inner_state)``: two
      buffers like the params plus the base optimizer's state.

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, `The Road Less Scheduled
      <https://arxiv.org/abs/2405.15682>`_, 2024.
    """
    fn = "schedule_free"
    if not isinstance(base_optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`optlab.{fn}`: `base_optimizer` must be an optax.GradientTransformation, got"
            f" {type(base_optimizer).__name__}."
        )
    _base.check_learning_rate(fn, learning_rate)
    _base.check_decay(fn, b1=b1)
    _base.check_nonnegative(fn, weight_lr_power=weight_lr_power)
    return _base.public(fn, _schedule_free(fn, base_optimizer, learning_rate, b1, weight_lr_power))


def _schedule_free(fn, base_optimizer, learning_rate, b1, weight_lr_power):
    base = optax.with_extra_args_support(base_optimizer)

    def init_fn(params):
        return ScheduleFreeState(
            count=jnp.zeros([], jnp.int32),
            weight_sum=jnp.zeros([], jnp.float32),
            max_lr=jnp.zeros([], jnp.float32),
            z=jax.tree.map(jnp.copy, params),
            x=jax.tree.map(jnp.copy, params),
            inner_state=base.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        _base.require_params(params)
        f32 = jnp.float32
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        max_lr = jnp.maximum(state.max_lr, jnp.asarray(lr, f32))
        weight = max_lr ** jnp.asarray(weight_lr_power, f32)
        weight_sum = state.weight_sum + weight
        ck = _tree.safe_div(weight, weight_sum, 0.0)
        base_updates, inner = base.update(updates, state.inner_state, params, **extra_args)
        beta = jnp.asarray(b1, f32)
        acc = _tree.to_acc
        z = jax.tree.map(lambda z, u: (acc(z) + acc(u)).astype(z.dtype), state.z, base_updates)
        x = jax.tree.map(lambda x, z: ((1 - ck) * acc(x) + ck * acc(z)).astype(x.dtype), state.x, z)
        new_updates = jax.tree.map(
            lambda x, z, y, g: (beta * acc(x) + (1 - beta) * acc(z) - acc(y)).astype(g.dtype),
            x,
            z,
            params,
            updates,
        )
        new_state = ScheduleFreeState(
            optax.safe_increment(state.count), weight_sum, max_lr, z, x, inner
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
