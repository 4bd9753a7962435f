"""Momentum and adaptive-moment transforms (Adam family, Lion, diffGrad, MARS ...).

Every transform here returns the *pre-learning-rate direction*, like
:func:`optax.scale_by_adam`: chain it with :func:`optax.scale_by_learning_rate`
(which also flips the sign) to get an optimizer. The two wrappers
:func:`cautious` and :func:`with_grad_sign` take an inner transformation.

Where optax already has the method (Adam, AMSGrad, AdaMax, heavy-ball momentum,
Lion, Adafactor's factored second moment) the transform reuses optax's code and
adds what optlab needs: extra-argument support, validation, a fixed state layout
with optional low-precision state dtypes, and updates returned in the dtype of
the incoming gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _base, _tree

__all__ = [
    "scale_by_momentum",
    "scale_by_adam_family",
    "scale_by_diffgrad",
    "scale_by_ademamix",
    "mars_correction",
    "with_grad_sign",
    "cautious",
    "scale_by_optimistic_amsgrad",
    "scale_by_lion",
    "scale_by_signum",
    "scale_by_adafactor",
    "scale_by_sgd_sai",
    "ScaleByDiffGradState",
    "ScaleByAdEMAMixState",
    "MarsCorrectionState",
    "WithGradSignState",
    "CautiousState",
    "ScaleByOptimisticAMSGradState",
    "ScaleBySignumState",
    "ScaleBySGDSaIState",
]


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _canonical_dtype(dtype: Any) -> Any:
    return None if dtype is None else jnp.dtype(dtype)


def _upcast_fields(state: Any, updates: Any, fields: tuple[str, ...]) -> Any:
    """Promote the per-parameter fields of ``state`` to at least the updates' dtypes.

    Low-precision moments (``mu_dtype=jnp.bfloat16``) are then updated in the
    gradients' precision and only rounded when stored, so the arithmetic does
    not depend on whether hyperparameters are Python floats or float32 arrays
    (``optax.inject_hyperparams``).
    """

    def up(x, g):
        return x.astype(jnp.promote_types(x.dtype, jnp.result_type(g)))

    return state._replace(**{f: _tree.tree_map(up, getattr(state, f), updates) for f in fields})


def _wrap_optax(
    inner: optax.GradientTransformation,
    init_cast: Callable[[Any], Any] | None = None,
    moment_fields: tuple[str, ...] = (),
    post: Callable[[Any, Any], Any] | None = None,
    pre: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Re-export an optax transform: extra args ignored, dtypes of state and updates kept.

    ``pre``, when given, maps each incoming gradient leaf before ``inner`` sees it.

    ``init_cast`` may change the dtypes of the initial state (``mu_dtype`` /
    ``nu_dtype``); every later state is cast back to the dtypes of the state it
    replaces, so the layout never changes, and updates keep the dtype of the
    incoming gradients. ``moment_fields`` are upcast before the update (see
    :func:`_upcast_fields`). ``post(updates, new_state)``, when given, rewrites the
    inner updates before they are cast.
    """

    def init_fn(params):
        state = inner.init(params)
        return init_cast(state) if init_cast is not None else state

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        work_state = _upcast_fields(state, updates, moment_fields) if moment_fields else state
        inputs = updates if pre is None else _tree.tree_map(pre, updates)
        new_updates, new_state = inner.update(inputs, work_state, params)
        if post is not None:
            new_updates = post(new_updates, new_state)
        return _tree.tree_cast_like(new_updates, updates), _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _visible_nonfinite(direction: Any, momentum: Any) -> Any:
    """Where ``momentum`` is NaN/inf, return it instead of the (finite) ``direction``.

    A sign of an infinite momentum is a finite +-1 step forever; returning the
    momentum itself keeps the corruption visible in the updates.
    """

    def leaf(d, m):
        return jnp.where(jnp.isfinite(m), d, m.astype(d.dtype))

    return _tree.tree_map(leaf, direction, momentum)


# ---------------------------------------------------------------------------
# Heavy-ball / Nesterov momentum
# ---------------------------------------------------------------------------


def scale_by_momentum(
    b1: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Heavy-ball (or Nesterov) momentum: a trace of past gradients.

    .. math::
        t_k = g_k + b_1 t_{k-1}, \qquad
        d_k = t_k \;\text{(heavy ball)} \quad\text{or}\quad d_k = g_k + b_1 t_k
        \;\text{(Nesterov)}.

    This is :func:`optax.trace` with optlab's conventions (``b1`` name, extra
    arguments ignored, updates in the gradients' dtype). Chained with a learning
    rate it is SGD with momentum (:func:`optax.sgd` with ``momentum=b1``).

    Args:
      b1: momentum decay in ``[0, 1)``.
      nesterov: use Nesterov's look-ahead form.
      accumulator_dtype: optional dtype of the trace (e.g. ``jnp.bfloat16``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is
      ``optax.TraceState(trace)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.scale_by_momentum(0.9), optax.scale_by_learning_rate(0.1))
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> print(updates)
      [-0.1  0.2]

    References:
      Polyak, `Some methods of speeding up the convergence of iteration methods
      <https://doi.org/10.1016/0041-5553(64)90137-5>`_, 1964.
      Sutskever et al, `On the importance of initialization and momentum in deep
      learning <https://proceedings.mlr.press/v28/sutskever13.html>`_, 2013.
    """
    _base.check_decay("scale_by_momentum", b1=b1)
    return _base.public("scale_by_momentum", _scale_by_momentum(b1, nesterov, accumulator_dtype))


def _scale_by_momentum(b1, nesterov, accumulator_dtype):
    return _wrap_optax(
        optax.trace(decay=b1, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
        moment_fields=("trace",),
    )


# ---------------------------------------------------------------------------
# Adam / AMSGrad / AdaMax / NAdam
# ---------------------------------------------------------------------------


def scale_by_adam_family(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    amsgrad: bool = False,
    adamax: bool = False,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam's direction and its family (AMSGrad, AdaMax, NAdam) in one, with state dtypes.

    .. math::
        m_t = b_1 m_{t-1} + (1-b_1) g_t, \quad v_t = b_2 v_{t-1} + (1-b_2) g_t^2,
        \quad d_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon},

    with bias corrections :math:`\hat m_t = m_t / (1-b_1^t)`,
    :math:`\hat v_t = v_t / (1-b_2^t)`.

    * ``amsgrad=True`` (Reddi et al, 2018) divides by :math:`\hat v^{max}_t =
      \max(\hat v^{max}_{t-1}, \hat v_t)`, a non-decreasing second moment
      (kept in the state as ``nu_max``): :func:`optax.scale_by_amsgrad`.
    * ``adamax=True`` (Kingma & Ba, 2015, section 7) replaces :math:`v` by the
      infinity-norm moment :math:`u_t = \max(b_2 u_{t-1}, |g_t| + \epsilon)`
      and returns :math:`\hat m_t / u_t`: :func:`optax.scale_by_adamax`
      (``eps_root`` must then be 0).
    * ``nesterov=True`` is NAdam's look-ahead first moment (Dozat, 2016).

    The variants are optax's own code (``optax.scale_by_adam``, ``scale_by_amsgrad``,
    ``scale_by_adamax``); the name differs from optax's because this adds: one switch
    for the family, ``nu_dtype`` (optax only has ``mu_dtype``), validated
    hyperparameters, state dtypes fixed after ``init``, updates in the gradients'
    dtype, extra arguments ignored. ``mu_dtype=nu_dtype=jnp.bfloat16`` halves the state
    memory of float32 params. Without those needs, ``optax.scale_by_adam`` is the same.

    Args:
      b1: decay of the first moment, in ``[0, 1)``.
      b2: decay of the second (or infinity) moment, in ``[0, 1)``.
      eps: added to the denominator outside the square root, ``>= 0``.
      eps_root: added inside the square root, ``>= 0``.
      amsgrad: use the running maximum of the second moment.
      adamax: use the infinity-norm moment (AdaMax).
      nesterov: use Nesterov momentum (NAdam). Not combinable with ``amsgrad``
        or ``adamax``.
      mu_dtype: optional dtype of the first moment.
      nu_dtype: optional dtype of the second moment (and ``nu_max``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its state is optax's:
      ``optax.ScaleByAdamState(count, mu, nu)`` (Adam, AdaMax) or
      ``optax.ScaleByAmsgradState(count, mu, nu, nu_max)`` (AMSGrad).

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.scale_by_adam_family(amsgrad=True),
      ...                  optax.scale_by_learning_rate(1e-3))
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.full((2, 3), 0.5)}, state, params)
      >>> print(jnp.round(updates["w"][0], 6))
      [-0.001 -0.001 -0.001]

    References:
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2015.
      Reddi et al, `On the Convergence of Adam and Beyond
      <https://openreview.net/forum?id=ryQu7f-RZ>`_, 2018.
      Dozat, `Incorporating Nesterov Momentum into Adam
      <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, 2016.
    """
    name = "scale_by_adam_family"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_nonnegative(name, eps=eps, eps_root=eps_root)
    if amsgrad and adamax:
        raise ValueError(f"`optlab.{name}`: `amsgrad` and `adamax` cannot both be True.")
    if nesterov and (amsgrad or adamax):
        raise ValueError(
            f"`optlab.{name}`: `nesterov=True` is only available for plain Adam, got"
            f" amsgrad={amsgrad!r}, adamax={adamax!r}."
        )
    if adamax and _base.is_concrete_number(eps_root) and eps_root != 0:
        raise ValueError(f"`optlab.{name}`: AdaMax has no `eps_root`, got eps_root={eps_root!r}.")
    tx = _scale_by_adam_family(b1, b2, eps, eps_root, amsgrad, adamax, nesterov, mu_dtype, nu_dtype)
    return _base.public(name, tx)


def _scale_by_adam_family(b1, b2, eps, eps_root, amsgrad, adamax, nesterov, mu_dtype, nu_dtype):
    mu_dtype = _canonical_dtype(mu_dtype)
    nu_dtype = _canonical_dtype(nu_dtype)

    if adamax:
        inner = optax.scale_by_adamax(b1=b1, b2=b2, eps=eps)
    elif amsgrad:
        inner = optax.scale_by_amsgrad(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)
    else:
        inner = optax.scale_by_adam(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
        )

    def init_cast(state):
        fields = {
            "mu": optax.tree.cast(state.mu, mu_dtype),
            "nu": optax.tree.cast(state.nu, nu_dtype),
        }
        if hasattr(state, "nu_max"):
            fields["nu_max"] = optax.tree.cast(state.nu_max, nu_dtype)
        return state._replace(**fields)

    return _wrap_optax(inner, init_cast, ("mu", "nu", "nu_max") if amsgrad else ("mu", "nu"))


# ---------------------------------------------------------------------------
# diffGrad
# ---------------------------------------------------------------------------


class ScaleByDiffGradState(NamedTuple):
    """State for :func:`optlab.scale_by_diffgrad`.

    Attributes:
      count: number of steps taken (int32 scalar).
      mu: Adam's first moment (EMA of gradients).
      nu: Adam's second moment (EMA of squared gradients).
      prev_grad: the previous gradient (zeros before the first step).
    """

    count: jax.Array  # shape=(), dtype=int32
    mu: optax.Updates  # first moment
    nu: optax.Updates  # second moment
    prev_grad: optax.Updates  # g_{t-1} (zeros before the first step)


def scale_by_diffgrad(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""diffGrad: Adam whose first moment is damped by a gradient-change friction.

    .. math::
        \xi_t = \operatorname{sigmoid}(|g_t - g_{t-1}|) \in [0.5, 1), \qquad
        d_t = \frac{\xi_t \hat m_t}{\sqrt{\hat v_t} + \epsilon},

    where :math:`\hat m_t, \hat v_t` are Adam's bias-corrected moments and
    :math:`g_0 = 0` (as in the official code). Where the gradient barely changes
    (flat region or near an optimum) the step is halved; where it changes fast
    the step is Adam's. The moments themselves are not damped.

    ``eps`` is placed as in optax's Adam (outside the square root of the
    bias-corrected second moment); the reference PyTorch code adds it to the
    uncorrected :math:`\sqrt{v_t}`, which differs only in how ``eps`` is scaled.

    Args:
      b1: first-moment decay in ``[0, 1)``.
      b2: second-moment decay in ``[0, 1)``.
      eps: denominator constant, ``>= 0``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`ScaleByDiffGradState` ``(count, mu, nu, prev_grad)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_diffgrad()
      >>> g = jnp.array([1.0])
      >>> d, state = tx.update(g, tx.init(g))
      >>> print(f"{float(d[0]):.4f}")  # Adam's first step is 1; xi = sigmoid(|1 - 0|)
      0.7311

    References:
      Dubey et al, `diffGrad: An Optimization Method for Convolutional Neural
      Networks <https://arxiv.org/abs/1909.11015>`_, 2019.
    """
    name = "scale_by_diffgrad"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_nonnegative(name, eps=eps)
    return _base.public("scale_by_diffgrad", _scale_by_diffgrad(b1, b2, eps))


def _scale_by_diffgrad(b1, b2, eps):
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

    def init_fn(params):
        return ScaleByDiffGradState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
            prev_grad=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        adam_state = optax.ScaleByAdamState(count=state.count, mu=state.mu, nu=state.nu)
        direction, adam_state = adam.update(updates, adam_state)

        def friction(d, g, g_prev):
            diff = g.astype(jnp.float32) - g_prev.astype(jnp.float32)
            xi = jax.nn.sigmoid(jnp.abs(diff))
            return (xi * d).astype(g.dtype)

        new_updates = _tree.tree_map(friction, direction, updates, state.prev_grad)
        new_state = ScaleByDiffGradState(
            count=adam_state.count, mu=adam_state.mu, nu=adam_state.nu, prev_grad=updates
        )
        return new_updates, _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# AdEMAMix
# ---------------------------------------------------------------------------


class ScaleByAdEMAMixState(NamedTuple):
    """State for :func:`optlab.scale_by_ademamix`.

    Attributes:
      count: number of steps taken (int32 scalar).
      m1: fast EMA of gradients (decay ``b1``, bias-corrected when used).
      m2: slow EMA of gradients (decay ``b3``, not bias-corrected).
      nu: EMA of squared gradients (decay ``b2``).
    """

    count: jax.Array  # shape=(), dtype=int32
    m1: optax.Updates  # fast EMA of gradients (decay b1)
    m2: optax.Updates  # slow EMA of gradients (decay b3)
    nu: optax.Updates  # second moment (decay b2)


def _ademamix_alpha_warmup(step: jax.Array, alpha_end: Any, warmup: Any) -> jax.Array:
    """The paper's ``alpha_scheduler``: linear from 0 to ``alpha_end`` over ``warmup`` steps."""
    step = jnp.asarray(step, jnp.float32)
    a = step / jnp.asarray(warmup, jnp.float32)
    return jnp.where(step < warmup, a * alpha_end, alpha_end)


def _ademamix_beta3_warmup(
    step: jax.Array, beta_start: Any, beta_end: Any, warmup: Any
) -> jax.Array:
    """The paper's ``beta3_scheduler``: linear in half-life from ``beta_start`` to ``beta_end``.

    With ``f(b) = log(0.5) / log(b + 1e-8) - 1`` the half-life (in steps) of an
    EMA with decay ``b`` and ``f_inv(t) = 0.5 ** (1 / (t + 1))`` its inverse,
    ``beta3(step) = f_inv((1 - a) f(beta_start) + a f(beta_end))`` with
    ``a = step / warmup``, and ``beta_end`` from ``step >= warmup`` on.
    """
    step = jnp.asarray(step, jnp.float32)
    beta_start = jnp.asarray(beta_start, jnp.float32)
    beta_end = jnp.asarray(beta_end, jnp.float32)

    def half_life(b):
        return jnp.log(0.5) / jnp.log(b + 1e-8) - 1.0

    def inv_half_life(t):
        return jnp.power(0.5, 1.0 / (t + 1.0))

    a = step / jnp.asarray(warmup, jnp.float32)
    mixed = inv_half_life((1.0 - a) * half_life(beta_start) + a * half_life(beta_end))
    return jnp.where(step < warmup, mixed, beta_end)


def check_ademamix(name, b1, b2, b3, alpha, b3_warmup, alpha_warmup, eps, eps_root) -> None:
    """Validate the hyperparameters of :func:`scale_by_ademamix` (and ``optlab.ademamix``)."""
    _base.check_decay(name, b1=b1, b2=b2)
    if not callable(b3):
        _base.check_decay(name, b3=b3)
    if not callable(alpha):
        _base.check_nonnegative(name, alpha=alpha)
    _base.check_nonnegative(name, eps=eps, eps_root=eps_root)
    _base.check_int_unless_traced(name, 1, b3_warmup=b3_warmup, alpha_warmup=alpha_warmup)
    if callable(b3) and b3_warmup is not None:
        raise ValueError(f"`optlab.{name}`: give either a schedule `b3` or `b3_warmup`, not both.")
    if callable(alpha) and alpha_warmup is not None:
        raise ValueError(
            f"`optlab.{name}`: give either a schedule `alpha` or `alpha_warmup`, not both."
        )


def scale_by_ademamix(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    *,
    b3_warmup: int | None = None,
    alpha_warmup: int | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdEMAMix: Adam with a mixture of a fast and a slow EMA of gradients.

    .. math::
        m^{(1)}_t = b_1 m^{(1)}_{t-1} + (1-b_1) g_t, \quad
        m^{(2)}_t = \beta_{3,t} m^{(2)}_{t-1} + (1-\beta_{3,t}) g_t, \quad
        v_t = b_2 v_{t-1} + (1-b_2) g_t^2,

    .. math::
        d_t = \frac{\hat m^{(1)}_t + \alpha_t m^{(2)}_t}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon},

    with Adam's bias corrections on :math:`m^{(1)}` and :math:`v` only (the slow
    EMA is left to fill slowly, as in the paper). With ``alpha=0`` this is
    exactly Adam.

    Warm-ups (the paper's schedulers, Algorithm 1, with ``t`` the 1-based step):

    * ``alpha_warmup=T``: :math:`\alpha_t = \min(t/T, 1)\,\alpha` (linear from 0);
    * ``b3_warmup=T``: :math:`\beta_{3,t} = f^{-1}((1-t/T) f(b_1) + (t/T) f(b_3))`
      for :math:`t < T` and :math:`b_3` after, where
      :math:`f(\beta) = \ln 0.5 / \ln \beta - 1` is the half-life of an EMA with
      decay :math:`\beta` and :math:`f^{-1}(h) = 0.5^{1/(h+1)}`: the half-life
      grows linearly from that of ``b1`` to that of ``b3``.

    ``b3`` and ``alpha`` may instead be optax schedules (callables of the
    0-based step count, the convention of :func:`optax.contrib.scale_by_ademamix`);
    a schedule cannot be combined with the matching warm-up.

    Args:
      b1: fast EMA decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)``.
      b3: slow EMA decay in ``[0, 1)``, or a schedule.
      alpha: weight of the slow EMA, ``>= 0``, or a schedule.
      b3_warmup: number of steps of the half-life warm-up of ``b3`` (None: off).
      alpha_warmup: number of steps of the linear warm-up of ``alpha`` (None: off).
      eps: denominator constant outside the square root, ``>= 0``.
      eps_root: denominator constant inside the square root, ``>= 0``.
      mu_dtype: optional dtype of the two EMAs.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`ScaleByAdEMAMixState` ``(count, m1, m2, nu)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(
      ...     optlab.scale_by_ademamix(b3=0.999, alpha=5.0, b3_warmup=100, alpha_warmup=100),
      ...     optax.scale_by_learning_rate(1e-3))
      >>> params = jnp.zeros(3)
      >>> updates, state = tx.update(jnp.ones(3), tx.init(params), params)
      >>> print(updates.shape)
      (3,)

    References:
      Pagliardini et al, `The AdEMAMix Optimizer: Better, Faster, Older
      <https://arxiv.org/abs/2409.03137>`_, 2024.
    """
    check_ademamix("scale_by_ademamix", b1, b2, b3, alpha, b3_warmup, alpha_warmup, eps, eps_root)
    tx = _scale_by_ademamix(b1, b2, b3, alpha, b3_warmup, alpha_warmup, eps, eps_root, mu_dtype)
    return _base.public("scale_by_ademamix", tx)


def _scale_by_ademamix(b1, b2, b3, alpha, b3_warmup, alpha_warmup, eps, eps_root, mu_dtype):
    mu_dtype = _canonical_dtype(mu_dtype)

    def init_fn(params):
        return ScaleByAdEMAMixState(
            count=jnp.zeros([], jnp.int32),
            m1=optax.tree.zeros_like(params, dtype=mu_dtype),
            m2=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        step = state.count + 1  # the paper's 1-based t
        if callable(b3):
            b3_t = b3(state.count)
        elif b3_warmup is not None:
            b3_t = _ademamix_beta3_warmup(step, b1, b3, b3_warmup)
        else:
            b3_t = b3
        if callable(alpha):
            alpha_t = alpha(state.count)
        elif alpha_warmup is not None:
            alpha_t = _ademamix_alpha_warmup(step, alpha, alpha_warmup)
        else:
            alpha_t = alpha

        work = _upcast_fields(state, updates, ("m1", "m2"))
        m1 = optax.tree.update_moment(updates, work.m1, b1, 1)
        m2 = optax.tree.update_moment(updates, work.m2, b3_t, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count_inc = optax.safe_increment(state.count)
        m1_hat = optax.tree.bias_correction(m1, b1, count_inc)
        nu_hat = optax.tree.bias_correction(nu, b2, count_inc)

        def direction(g, a, b, v):
            out = (a + alpha_t * b) / (jnp.sqrt(v + eps_root) + eps)
            return out.astype(g.dtype)

        new_updates = _tree.tree_map(direction, updates, m1_hat, m2, nu_hat)
        new_state = ScaleByAdEMAMixState(count=count_inc, m1=m1, m2=m2, nu=nu)
        return new_updates, _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# MARS
# ---------------------------------------------------------------------------


class MarsCorrectionState(NamedTuple):
    """State for :func:`optlab.mars_correction`.

    Attributes:
      prev_grad: the previous gradient (zeros before the first step, as the
        official ``last_grad``).
    """

    prev_grad: optax.Updates  # g_{t-1} (zeros before the first step)


def mars_correction(
    gamma: jax.typing.ArrayLike = 0.025,
    b1: jax.typing.ArrayLike = 0.95,
    max_norm: jax.typing.ArrayLike | None = 1.0,
) -> optax.GradientTransformationExtraArgs:
    r"""MARS variance-reduced gradient (approximate form), to chain before a base optimizer.

    .. math::
        c_t = g_t + \gamma \frac{b_1}{1-b_1} (g_t - g_{t-1}), \qquad
        \tilde c_t = c_t \min\!\left(1, \frac{\text{max\_norm}}{\|c_t\|}\right),

    where the norm is taken **per leaf** (per parameter tensor), as in the
    official code (``c_t_norm = torch.norm(c_t)`` for each parameter, then
    ``c_t / c_t_norm`` when it exceeds 1), and :math:`g_0 = 0` (the official
    ``last_grad`` starts at zero). This is the approximate MARS (``is_approx``
    in the official code): :math:`g_{t-1}` is the previous step's gradient, not
    a second gradient evaluation at the current batch.

    Chain it before :func:`optlab.scale_by_adam_family` with the *same* ``b1`` to get
    MARS-AdamW (both moments are then taken of :math:`\tilde c_t`), or before
    :func:`optlab.scale_by_lion` for MARS-Lion. The official code applies MARS
    to 2-D weights only and plain AdamW to the other leaves; use
    ``optax.partition`` / ``optax.masked`` for that split.

    With ``gamma=0`` the output is the gradient, clipped per leaf to
    ``max_norm`` (``max_norm=None``: no clipping, the gradient itself).

    Args:
      gamma: scale of the gradient correction, ``>= 0``.
      b1: the base optimizer's first-moment decay, in ``[0, 1)``.
      max_norm: per-leaf norm threshold ``> 0``, or None for no clipping.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`MarsCorrectionState` ``(prev_grad,)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> mars_adamw = optax.chain(
      ...     optlab.mars_correction(gamma=0.025, b1=0.95),
      ...     optlab.scale_by_adam_family(b1=0.95, b2=0.99),
      ...     optax.add_decayed_weights(0.0),
      ...     optax.scale_by_learning_rate(3e-3))
      >>> params = {"w": jnp.ones((2, 2))}
      >>> updates, state = mars_adamw.update(params, mars_adamw.init(params), params)

    References:
      Yuan et al, `MARS: Unleashing the Power of Variance Reduction for Training
      Large Models <https://arxiv.org/abs/2411.10438>`_, 2024.
    """
    name = "mars_correction"
    _base.check_nonnegative(name, gamma=gamma)
    _base.check_decay(name, b1=b1)
    if max_norm is not None:
        _base.check_positive(name, max_norm=max_norm)
    return _base.public("mars_correction", _mars_correction(gamma, b1, max_norm))


def _mars_correction(gamma, b1, max_norm):
    def init_fn(params):
        return MarsCorrectionState(prev_grad=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        coef = gamma * b1 / (1.0 - b1)

        def correct(g, g_prev):
            g32 = g.astype(jnp.float32)
            c = g32 + coef * (g32 - g_prev.astype(jnp.float32))
            if max_norm is not None:
                norm = _tree.leaf_norm(c)
                factor = jnp.where(norm > max_norm, _tree.safe_div(max_norm, norm, 1.0), 1.0)
                c = c * factor
            return c.astype(g.dtype)

        new_updates = _tree.tree_map(correct, updates, state.prev_grad)
        new_state = MarsCorrectionState(prev_grad=updates)
        return new_updates, _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Wrappers: Grams (gradient sign) and Cautious (mask)
# ---------------------------------------------------------------------------


class WithGradSignState(NamedTuple):
    """State for :func:`optlab.with_grad_sign`.

    Attributes:
      inner_state: the state of the wrapped transformation.
    """

    inner_state: Any  # the state of the wrapped transformation


class CautiousState(NamedTuple):
    """State for :func:`optlab.cautious`.

    Attributes:
      inner_state: the state of the wrapped optimizer or direction.
    """

    inner_state: Any  # the state of the wrapped transformation


def with_grad_sign(
    inner: optax.GradientTransformation, *, inner_is_direction: bool = True
) -> optax.GradientTransformationExtraArgs:
    r"""Grams: the magnitude of ``inner``'s update with the sign of the gradient.

    .. math::
        d_t = \operatorname{sign}(g_t) \odot |u_t|,

    where :math:`u_t` is the update of ``inner`` (Grams uses Adam's direction,
    :func:`optlab.scale_by_adam_family`). Momentum then only sets the step size per
    coordinate; the direction is always the current gradient's, so
    :math:`\operatorname{sign}(d_t) = \operatorname{sign}(g_t)` (zero where the
    gradient is zero).

    By default ``inner`` is a pre-learning-rate direction transform (optlab's
    convention, chained before :func:`optax.scale_by_learning_rate`). With
    ``inner_is_direction=False`` ``inner`` is a full optax optimizer whose
    updates are *added* to the params, and the output is
    :math:`-\operatorname{sign}(g_t) \odot |u_t|`.

    Args:
      inner: the wrapped transformation; extra arguments are forwarded to it.
      inner_is_direction: whether ``inner`` returns a descent direction (True) or
        an update to add to the params (False).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`WithGradSignState` ``(inner_state,)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> grams = optax.chain(optlab.with_grad_sign(optlab.scale_by_adam_family()),
      ...                     optax.scale_by_learning_rate(1e-3))
      >>> params = jnp.array([1.0, -1.0])
      >>> updates, state = grams.update(jnp.array([2.0, -3.0]), grams.init(params), params)
      >>> print(jnp.sign(updates))
      [-1.  1.]

    References:
      Cao et al, `Grams: Gradient Descent with Adaptive Momentum Scaling
      <https://arxiv.org/abs/2412.17107>`_, 2024.
    """
    return _base.public("with_grad_sign", _with_grad_sign(inner, inner_is_direction))


def _with_grad_sign(inner, inner_is_direction):
    inner = optax.with_extra_args_support(inner)
    sign_factor = 1.0 if inner_is_direction else -1.0

    def init_fn(params):
        return WithGradSignState(inner_state=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        u, inner_state = inner.update(updates, state.inner_state, params, **extra_args)

        def grams(u_leaf, g):
            return (sign_factor * jnp.sign(g) * jnp.abs(u_leaf).astype(g.dtype)).astype(g.dtype)

        return _tree.tree_map(grams, u, updates), WithGradSignState(inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def cautious(
    inner: optax.GradientTransformation,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    inner_is_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Cautious optimizer: drop the coordinates of an update that disagree with the gradient.

    .. math::
        \phi_t = \mathbb{1}[\text{$u_t$ agrees with $g_t$}], \qquad
        \tilde u_t = u_t \odot \frac{\phi_t}{\max(\operatorname{mean}(\phi_t), \epsilon)},

    per leaf: the kept coordinates are rescaled by the inverse of the kept
    fraction, so the update's average scale is preserved. "Agrees" means the
    update moves against the gradient: for a full optax optimizer (default,
    ``optlab.cautious(optax.adamw(1e-3))``, whose updates are added to the
    params) :math:`u_t g_t < 0`; with ``inner_is_direction=True`` (a
    pre-learning-rate direction such as :func:`optlab.scale_by_adam_family`, inside a
    chain) :math:`u_t g_t > 0`. Coordinates where either is zero are masked.

    The mask uses the official code's strict inequality and the
    ``mask / max(mean(mask), eps)`` normalisation; the paper's
    ``d / (nnz + 1)`` variant differs by at most one coordinate in the count.

    Args:
      inner: the wrapped optimizer or direction; extra arguments are forwarded.
      eps: floor of the kept fraction, ``> 0`` (only matters when nothing is kept).
      inner_is_direction: whether ``inner`` returns a descent direction (True)
        or an update to add to the params (False, optax's convention).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`CautiousState` ``(inner_state,)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.cautious(optax.sgd(0.1, momentum=0.9))
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> _, state = tx.update(jnp.array([1.0, 1.0]), state, params)
      >>> updates, state = tx.update(jnp.array([1.0, -0.05]), state, params)
      >>> print(updates)  # the second coordinate's momentum disagrees: masked, the first doubled
      [-0.38  0.  ]

    References:
      Liang et al, `Cautious Optimizers: Improving Training with One Line of Code
      <https://arxiv.org/abs/2411.16085>`_, 2024.
    """
    _base.check_positive("cautious", eps=eps)
    return _base.public("cautious", _cautious(inner, eps, inner_is_direction))


def _cautious(inner, eps, inner_is_direction):
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return CautiousState(inner_state=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        u, inner_state = inner.update(updates, state.inner_state, params, **extra_args)

        def mask_leaf(u_leaf, g):
            u32, g32 = u_leaf.astype(jnp.float32), g.astype(jnp.float32)
            prod = u32 * g32
            agree = (prod > 0) if inner_is_direction else (prod < 0)
            kept = jnp.sum(agree.astype(jnp.float32)) / max(agree.size, 1)
            scaled = u32 / jnp.maximum(kept, eps)
            # NaN/inf must stay visible: the mask is False for NaN, which would hide it.
            # Keep the inner update there (NaN too where only the gradient is non-finite).
            bad = ~(jnp.isfinite(u32) & jnp.isfinite(g32))
            return jnp.where(bad, u32 + 0.0 * g32, jnp.where(agree, scaled, 0.0)).astype(
                u_leaf.dtype
            )

        return _tree.tree_map(mask_leaf, u, updates), CautiousState(inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Optimistic AMSGrad
# ---------------------------------------------------------------------------


class ScaleByOptimisticAMSGradState(NamedTuple):
    """State for :func:`optlab.scale_by_optimistic_amsgrad`.

    Attributes:
      count: number of steps taken (int32 scalar).
      mu: the first moment :math:`\\theta_t`.
      nu: the second moment :math:`v_t`.
      nu_max: :math:`\\hat v_t = \\max(\\hat v_{t-1}, v_t)`, non-decreasing.
      hint: the optimistic step taken last, :math:`h_{t+1} / (\\sqrt{\\hat v_t} + \\epsilon)`.
    """

    count: jax.Array  # shape=(), dtype=int32
    mu: optax.Updates  # theta_t, the first moment
    nu: optax.Updates  # v_t
    nu_max: optax.Updates  # v_hat_t = max(v_hat_{t-1}, v_t), non-decreasing
    hint: optax.Updates  # h_{t+1} / (sqrt(v_hat_t) + eps), the optimistic step taken last


def scale_by_optimistic_amsgrad(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Optimistic AMSGrad with the last gradient as the hint of the next one.

    The paper's Algorithm 2 keeps a secondary sequence :math:`w_{t+1/2}` and
    evaluates gradients at :math:`w_t`:

    .. math::
        \theta_t &= b_1 \theta_{t-1} + (1-b_1) g_t, \quad
        v_t = b_2 v_{t-1} + (1-b_2) g_t^2, \quad \hat v_t = \max(\hat v_{t-1}, v_t), \\
        w_{t+1/2} &= w_{t-1/2} - \eta\, \theta_t / \sqrt{\hat v_t}, \qquad
        w_{t+1} = w_{t+1/2} - \eta\, h_{t+1} / \sqrt{\hat v_t}, \\
        h_{t+1} &= b_1 \theta_{t-1} + (1-b_1) m_{t+1},

    where :math:`m_{t+1}` is a guess of :math:`g_{t+1}`. Here the guess is the
    last gradient, :math:`m_{t+1} = g_t` (the paper's extrapolation with one
    past gradient), and :math:`h_{t+1}` uses :math:`\theta_{t-1}` exactly as
    written in the paper. Since the live parameters are :math:`w_t`, the
    increment :math:`w_{t+1} - w_t = -\eta\, d_t` gives the direction

    .. math::
        d_t = \frac{\theta_t + h_{t+1}}{\sqrt{\hat v_t} + \epsilon}
              - \frac{h_t}{\sqrt{\hat v_{t-1}} + \epsilon},

    (undo the last optimistic step, take the AMSGrad step and a new optimistic
    step) with :math:`h_1 = 0` (:math:`w_{1/2} = w_1`). This is exact for a
    constant learning rate; with a schedule the undone optimistic step is
    rescaled by the current rate instead of the previous one. ``eps`` is added
    outside the square root (the paper instead initialises :math:`v_0 = \epsilon`).

    Bias correction. The paper's Algorithm 2, like AMSGrad's, has none (the default,
    ``bias_correction=False``). Then the first steps are large: at :math:`t = 1`,
    :math:`\theta_1 / \sqrt{v_1} = (1-b_1)/\sqrt{1-b_2} \approx 3.2` per unit of
    :math:`\operatorname{sign}(g)`, and the optimistic step adds as much again, about
    6x the learning rate with the default decays. The authors' released code
    bias-corrects (Adam-style), which ``bias_correction=True`` does: :math:`\theta_t`
    and the hint :math:`h_{t+1}` (both EMAs of total weight :math:`1 - b_1^t`) are
    divided by :math:`1 - b_1^t`, and :math:`\hat v_t = \max(\hat v_{t-1},
    v_t / (1 - b_2^t))` (the maximum of the corrected second moments, as
    :func:`optax.scale_by_amsgrad`). The first direction is then :math:`2\,
    \operatorname{sign}(g_1)` (AMSGrad's step plus an equal optimistic step). (We could
    not retrieve the authors' code to check where exactly they place the corrections;
    this placement is the one that makes every corrected EMA an average.)

    Args:
      b1: first-moment decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)``.
      eps: denominator constant, ``>= 0``.
      bias_correction: divide the EMAs by their total weights (the authors' code)
        instead of the paper's uncorrected moments.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`ScaleByOptimisticAMSGradState` ``(count, mu, nu, nu_max, hint)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optlab.scale_by_optimistic_amsgrad(), optax.scale_by_learning_rate(1e-2))
      >>> params = jnp.ones(2)
      >>> updates, state = tx.update(jnp.ones(2), tx.init(params), params)
      >>> print(updates.shape)
      (2,)

    References:
      Wang et al, `An Optimistic Acceleration of AMSGrad for Nonconvex
      Optimization <https://arxiv.org/abs/1903.01435>`_, 2019.
    """
    name = "scale_by_optimistic_amsgrad"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_nonnegative(name, eps=eps)

    def init_fn(params):
        _base.check_float_tree(name, params)
        zeros = lambda: optax.tree.zeros_like(params)
        return ScaleByOptimisticAMSGradState(
            count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros(), nu_max=zeros(), hint=zeros()
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        if bias_correction:
            c1 = 1.0 - jnp.asarray(b1, jnp.float32) ** count.astype(jnp.float32)
            nu_max = jax.tree.map(
                jnp.maximum, state.nu_max, optax.tree.bias_correction(nu, b2, count)
            )
        else:
            c1 = 1.0
            nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)

        def step(g, theta_prev, theta, v_max, hint_prev):
            denom = (jnp.sqrt(v_max) + eps) * c1
            h_next = b1 * theta_prev + (1.0 - b1) * g  # hint: m_{t+1} = g_t
            hint = h_next / denom
            d = theta / denom + hint - hint_prev
            return d.astype(g.dtype), hint

        out = _tree.tree_map(step, updates, state.mu, mu, nu_max, state.hint)
        # Split the (direction, hint) pairs along the structure of `updates` (which may
        # itself contain tuples).
        new_updates = _tree.tree_map(lambda g, o: o[0], updates, out)
        hint = _tree.tree_map(lambda g, o: o[1], updates, out)
        new_state = ScaleByOptimisticAMSGradState(
            count=count, mu=mu, nu=nu, nu_max=nu_max, hint=hint
        )
        return new_updates, _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Lion and Signum
# ---------------------------------------------------------------------------


def scale_by_lion(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    *,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Lion's direction: the sign of an interpolation of momentum and gradient.

    .. math::
        d_t = \operatorname{sign}(b_1 m_{t-1} + (1-b_1) g_t), \qquad
        m_t = b_2 m_{t-1} + (1-b_2) g_t.

    This is :func:`optax.scale_by_lion` with extra-argument support, validation
    and fixed state dtypes. Lion needs a smaller learning rate than Adam
    (typically 3-10x) since every coordinate moves by the full rate.

    Args:
      b1: interpolation weight of the momentum in the update, in ``[0, 1)``.
      b2: momentum decay, in ``[0, 1)``.
      mu_dtype: optional dtype of the momentum.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``optax.ScaleByLionState(count, mu)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_lion()
      >>> g = jnp.array([0.3, -2.0, 0.0])
      >>> d, state = tx.update(g, tx.init(g))
      >>> print(d)
      [ 1. -1.  0.]

    References:
      Chen et al, `Symbolic Discovery of Optimization Algorithms
      <https://arxiv.org/abs/2302.06675>`_, 2023.
    """
    _base.check_decay("scale_by_lion", b1=b1, b2=b2)
    return _base.public("scale_by_lion", _scale_by_lion(b1, b2, mu_dtype))


def _scale_by_lion(b1, b2, mu_dtype):
    return _wrap_optax(
        optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=_canonical_dtype(mu_dtype)),
        moment_fields=("mu",),
        post=lambda u, new_state: _visible_nonfinite(u, new_state.mu),
    )


class ScaleBySignumState(NamedTuple):
    """State for :func:`optlab.scale_by_signum`.

    Attributes:
      mu: EMA of gradients (decay ``b1``).
    """

    mu: optax.Updates  # EMA of gradients


def scale_by_signum(b1: jax.typing.ArrayLike = 0.9) -> optax.GradientTransformationExtraArgs:
    r"""Signum: the sign of the momentum (signSGD with momentum).

    .. math::
        m_t = b_1 m_{t-1} + (1-b_1) g_t, \qquad d_t = \operatorname{sign}(m_t).

    ``b1=0`` is signSGD, :math:`d_t = \operatorname{sign}(g_t)`.

    Args:
      b1: momentum decay, in ``[0, 1)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`ScaleBySignumState` ``(mu,)``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_signum(0.9)
      >>> g = jnp.array([0.5, -0.1])
      >>> d, state = tx.update(g, tx.init(g))
      >>> d, state = tx.update(jnp.array([-0.1, -0.1]), state)
      >>> print(d)  # 0.9 * 0.05 - 0.01 > 0: the momentum still points up
      [ 1. -1.]

    References:
      Bernstein et al, `signSGD: Compressed Optimisation for Non-Convex Problems
      <https://arxiv.org/abs/1802.04434>`_, 2018.
      Chen et al, `Symbolic Discovery of Optimization Algorithms
      <https://arxiv.org/abs/2302.06675>`_, 2023.
    """
    _base.check_decay("scale_by_signum", b1=b1)
    return _base.public("scale_by_signum", _scale_by_signum(b1))


def _scale_by_signum(b1):
    def init_fn(params):
        return ScaleBySignumState(mu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        # Where the momentum is NaN/inf its sign would be a finite step forever: return it.
        new_updates = _tree.tree_map(
            lambda g, m: jnp.where(jnp.isfinite(m), jnp.sign(m), m).astype(g.dtype), updates, mu
        )
        return new_updates, _tree.tree_cast_like(ScaleBySignumState(mu=mu), state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Adafactor
# ---------------------------------------------------------------------------


def scale_by_adafactor(
    factored: bool = True,
    decay_rate: jax.typing.ArrayLike = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: jax.typing.ArrayLike = 1e-30,
    decay_rate_fn: Callable[[Any, Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adafactor's factored second-moment scaling (:func:`optax.scale_by_factored_rms`).

    For a leaf of shape ``(..., n, m)`` (its two largest axes, both at least
    ``min_dim_size_to_factor``) the second moment is kept as a row vector
    :math:`R` and a column vector :math:`C` of EMAs of the mean squared
    gradient, and :math:`\hat V = R C^\top / \operatorname{mean}(R)`, so the
    state is :math:`O(n + m)` instead of :math:`O(nm)`. Other leaves keep a full
    EMA of :math:`g^2 + \epsilon`. The EMA decay at step :math:`t` is
    :math:`1 - (t+1)^{-\text{decay\_rate}}` (``decay_rate_fn``). The output is
    :math:`g / \sqrt{\hat V}`.

    Same code as optax, plus extra-argument support, validation, updates in
    the gradients' dtype, and finite output on finite input: finite gradient entries
    beyond ``sqrt(dtype max) / 16`` (about 1e18 in float32) are clipped to it before
    squaring, so the second moment does not overflow. ``params`` must be passed to ``update``. Under
    ``optax.inject_hyperparams`` keep ``min_dim_size_to_factor`` static
    (``static_args``): it decides shapes.

    Args:
      factored: whether to factor the second moment of 2-D (and larger) leaves.
      decay_rate: exponent of the decay schedule, ``> 0``.
      step_offset: steps to subtract from the count (for fine-tuning), ``>= 0``. During
        the first ``step_offset`` steps the decay is 0 (optax's formula would give NaN).
      min_dim_size_to_factor: factor only leaves whose two largest axes are at
        least this large, ``>= 1``.
      epsilon: added to the squared gradient, ``>= 0``.
      decay_rate_fn: optional ``(step, decay_rate) -> decay``; optax's power
        schedule when None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``optax.FactoredState(count, v_row, v_col, v)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_adafactor(min_dim_size_to_factor=2)
      >>> params = jnp.ones((300, 200))
      >>> state = tx.init(params)
      >>> print(state.v_row.shape, state.v_col.shape, state.v.shape)
      (200,) (300,) (1,)

    References:
      Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory
      Cost <https://arxiv.org/abs/1804.04235>`_, 2018.
    """
    name = "scale_by_adafactor"
    _base.check_positive(name, decay_rate=decay_rate)
    _base.check_nonnegative(name, epsilon=epsilon)
    _base.check_int_unless_traced(name, 0, step_offset=step_offset)
    _base.check_int_unless_traced(name, 1, min_dim_size_to_factor=min_dim_size_to_factor)
    tx = _scale_by_adafactor(
        factored, decay_rate, step_offset, min_dim_size_to_factor, epsilon, decay_rate_fn
    )
    return _base.public(name, tx)


def _scale_by_adafactor(
    factored, decay_rate, step_offset, min_dim_size_to_factor, epsilon, decay_rate_fn
):
    kwargs = {
        "decay_rate_fn": _decay_rate_pow_from_offset if decay_rate_fn is None else decay_rate_fn
    }
    inner = optax.scale_by_factored_rms(
        factored=factored,
        decay_rate=decay_rate,
        step_offset=step_offset,
        min_dim_size_to_factor=min_dim_size_to_factor,
        epsilon=epsilon,
        **kwargs,
    )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        # Finite entries beyond sqrt(dtype max) / 16 are clipped to it before entering the
        # second moment, whose g**2 would overflow to inf (and inf / inf = NaN in the
        # factored statistics); smaller entries pass unchanged, non-finite ones stay visible.
        safe = _tree.tree_map(_clip_to_square_range, updates)
        new_updates, new_state = inner.update(safe, state, params)
        return _tree.tree_cast_like(new_updates, updates), _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def _decay_rate_pow_from_offset(i: jax.Array, exponent: Any) -> jax.Array:
    """optax's Adafactor decay ``1 - (i + 1)^(-exponent)`` with ``i = count - step_offset``
    clamped at 0: during the first ``step_offset`` steps the decay is 0 (the second moment
    is the current squared gradient), where optax's formula takes a negative base to a
    fractional power and gives NaN updates."""
    t = jnp.maximum(jnp.asarray(i, jnp.float32), 0.0) + 1.0
    return 1.0 - t ** (-exponent)


def _clip_to_square_range(g: jax.Array) -> jax.Array:
    bound = float(jnp.finfo(g.dtype).max) ** 0.5 / 16
    return jnp.where(jnp.isfinite(g), jnp.clip(g, -bound, bound), g)


def _scale_by_param_block_rms(min_scale: float = 1e-3) -> optax.GradientTransformationExtraArgs:
    """:func:`optax.scale_by_param_block_rms` with an overflow-safe RMS of the parameter
    (``leaf_norm / sqrt(size)``: params of 1e30 give a finite scale). Stateless."""

    def scale(u, p):
        rms = _tree.leaf_norm(p) / max(p.size, 1) ** 0.5
        return (_tree.to_acc(u) * jnp.maximum(rms, min_scale)).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        return _tree.tree_map(scale, updates, params), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# SGD-SaI
# ---------------------------------------------------------------------------


class ScaleBySGDSaIState(NamedTuple):
    """State for :func:`optlab.scale_by_sgd_sai`.

    Attributes:
      count: number of steps taken (int32 scalar).
      mu: momentum buffer (EMA of gradients, equal to the gradient after step 1).
      scale: per-leaf g-SNR, a float32 scalar per leaf set at step 1 and frozen.
    """

    count: jax.Array  # shape=(), dtype=int32
    mu: optax.Updates  # momentum (EMA of gradients, starts at g_1)
    scale: optax.Updates  # per-leaf g-SNR, float32 scalars, frozen after step 1


def _gsnr(g: jax.Array, eps: Any) -> jax.Array:
    """g-SNR of one leaf: ``||g|| / (std(g) + eps)``, or ``||g||`` when ``std(g) == 0``."""
    # Full reductions only (no reshape): traces with explicitly sharded leaves.
    g32 = g.astype(jnp.float32)
    n = g32.size
    norm = _tree.leaf_norm(g32)  # overflow-safe: gradients of 1e30 give a finite ratio
    if n <= 1:  # torch's unbiased std of one element is NaN, replaced by 0
        return norm
    centred = g32 - jnp.mean(g32)
    std = _tree.leaf_norm(centred) / (n - 1) ** 0.5
    return jnp.where(std > 0, norm / (std + jnp.asarray(eps, jnp.float32)), norm)


def scale_by_sgd_sai(
    b1: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""SGD-SaI: momentum SGD with a per-leaf step scale fixed at the first step.

    At the first step each leaf (parameter block) gets the gradient
    signal-to-noise ratio

    .. math::
        s = \text{g-SNR}(g_1) = \frac{\|g_1\|_2}{\sigma(g_1) + \epsilon},

    with :math:`\sigma` the standard deviation of the leaf's entries (unbiased,
    as ``torch.Tensor.std``); when :math:`\sigma = 0` (one-element leaves,
    constant gradients) this uses :math:`s = \|g_1\|_2`. That rule is optlab's, not
    the reference code's: there the zero-std branch (``grad_norm if sigma == 0``) is
    commented out and the code computes ``grad_norm / (sigma + eps)`` with
    ``sigma = std().nan_to_num()``, so a zero standard deviation (a constant gradient,
    or a one-element leaf whose NaN std becomes 0) gives :math:`\|g_1\|_2 / \epsilon`,
    about :math:`10^8` times the gradient norm. The finite :math:`\|g_1\|_2` is the
    safer choice. Then :math:`s` is frozen and

    .. math::
        m_1 = g_1, \quad m_t = b_1 m_{t-1} + (1-b_1) g_t, \qquad d_t = s\, m_t.

    There is no second-moment state: the state is one momentum buffer and one
    float32 scalar per leaf. This follows the paper and the reference
    implementation v1.0.3 (no normalisation by the largest g-SNR; v1.1.0 of
    the reference code replaces the g-SNR by :math:`\sqrt{\text{size}}`). The
    g-SNR grows like the square root of the leaf size, so learning rates are
    much smaller than plain SGD's. A leaf whose first gradient is exactly zero
    gets :math:`s = 0` and never moves. Decoupled weight decay
    (``optax.add_decayed_weights``) is chained after, as in the paper.

    Args:
      b1: momentum decay, in ``[0, 1)``.
      eps: added to the standard deviation, ``>= 0``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`ScaleBySGDSaIState` ``(count, mu, scale)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_sgd_sai()
      >>> g = {"w": jnp.array([3.0, 4.0, 0.0])}
      >>> d, state = tx.update(g, tx.init(g))
      >>> print(round(float(state.scale["w"]), 4))  # ||g|| / std(g) = 5 / 2.0817
      2.4019

    References:
      Xu et al, `No More Adam: Learning Rate Scaling at Initialization is All
      You Need <https://arxiv.org/abs/2412.11768>`_, 2024.
    """
    name = "scale_by_sgd_sai"
    _base.check_decay(name, b1=b1)
    _base.check_nonnegative(name, eps=eps)
    return _base.public("scale_by_sgd_sai", _scale_by_sgd_sai(b1, eps))


def _scale_by_sgd_sai(b1, eps):
    def init_fn(params):
        return ScaleBySGDSaIState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            scale=_tree.tree_map(lambda p: jnp.zeros([], jnp.float32), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        # A clear error instead of lax.cond's "branch outputs" structure mismatch.
        _base.check_same_structure("scale_by_sgd_sai", updates, state.mu, "updates", "params")
        first = state.count == 0
        # Computed only on the first step (a real branch on accelerators).
        scale = jax.lax.cond(
            first,
            lambda: _tree.tree_map(lambda g: _gsnr(g, eps), updates),
            lambda: state.scale,
        )
        mu = _tree.tree_map(
            lambda g, m: jnp.where(first, g, b1 * m + (1.0 - b1) * g), updates, state.mu
        )
        new_updates = _tree.tree_map(lambda g, m, s: (s * m).astype(g.dtype), updates, mu, scale)
        new_state = ScaleBySGDSaIState(count=optax.safe_increment(state.count), mu=mu, scale=scale)
        return new_updates, _tree.tree_cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ===========================================================================
# Issue 12 (part A): ADOPT, AdaMomentum, QHM / QHAdam, Ano, NAG-GS, Lion-kappa
# ===========================================================================

_map = _tree.tree_map  # None-safe tree map (frozen params stay None)
_cast_like = _tree.tree_cast_like

__all__ += [
    "ScaleByNAGGSState",
    "ScaleByQHMState",
    "scale_by_adamomentum",
    "scale_by_adopt",
    "scale_by_ano",
    "scale_by_lion_kappa",
    "scale_by_nag_gs",
    "scale_by_qhadam",
    "scale_by_qhm",
]


def scale_by_adopt(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9999,
    eps: jax.typing.ArrayLike = 1e-6,
    *,
    use_clipping: bool = True,
    clip_exponent: jax.typing.ArrayLike = 0.25,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ADOPT: normalize the gradient by the *previous* second moment, then momentum.

    .. math::
        v_0 = g_0^2, \quad d_0 = 0; \qquad
        m_t = b_1 m_{t-1} + (1-b_1)\,
        \operatorname{clip}\!\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, c_t\Big),
        \quad d_t = m_t, \quad v_t = b_2 v_{t-1} + (1-b_2) g_t^2,

    for :math:`t \ge 1`, with :math:`c_t = t^{1/4}` (:math:`t^{p}`, ``p = clip_exponent``,
    of the 0-based step count; ``use_clipping=False`` is the unclipped algorithm of the
    paper's first version). Because :math:`v_{t-1}` does not contain :math:`g_t`, the normalized
    gradient is an unbiased direction for any ``b2``: this is what makes ADOPT converge
    where Adam may not. The first call only initializes :math:`v_0 = g_0^2` and returns a
    zero direction. There is no bias correction (:math:`m_0 = 0`).

    This is :func:`optax.contrib.scale_by_adopt` (same numbers, tested) with optlab's
    conventions: extra arguments ignored, validation, state and updates in fixed dtypes,
    and the clipping threshold given by its exponent (optax's ``clip_value_fn`` is a
    callable, which ``optax.inject_hyperparams`` would mistake for a schedule); where the
    gradient is infinite the non-finite second moment is returned instead of the update,
    which would otherwise silently freeze that coordinate. Finite gradient entries beyond
    ``sqrt(dtype max) / 16`` (about 1e18 in float32) are clipped to it before squaring, so
    a finite gradient keeps :math:`v` finite.
    It follows the authors' current code (clipped version, ``clip_lambda = step**0.25``
    with the 0-based step, ``exp_avg.lerp_``). An earlier version of that code set
    :math:`m_1` to the normalized gradient itself (no :math:`1 - b_1` factor) and had no
    clipping; the current one and optax agree on the form above.

    Args:
      b1: momentum decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)`` (ADOPT converges for any ``b2``).
      eps: floor of :math:`\sqrt{v}`, ``>= 0``.
      use_clipping: clip the normalized gradient at ``step ** clip_exponent``.
      clip_exponent: exponent :math:`p \ge 0` of the clipping threshold :math:`t^p`.
      mu_dtype: optional dtype of the momentum.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      ``optax.ScaleByAdamState(count, mu, nu)`` (optax's): the momentum and the second
      moment, one copy of the params each.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_adopt()
      >>> g = jnp.array([2.0, -1.0])
      >>> d, state = tx.update(g, tx.init(g))  # the first call only sets v_0 = g^2
      >>> print(d == 0, state.nu)
      [ True  True] [4. 1.]
      >>> d, state = tx.update(g, state)  # m_1 = (1 - b1) * g / |g|
      >>> print([f"{x:.4f}" for x in d])
      ['0.1000', '-0.1000']

    References:
      Taniguchi et al., `ADOPT: Modified Adam Can Converge with Any β2 with the Optimal
      Rate <https://arxiv.org/abs/2411.02853>`_, 2024.
    """
    name = "scale_by_adopt"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_nonnegative(name, eps=eps, clip_exponent=clip_exponent)
    tx = _scale_by_adopt(b1, b2, eps, use_clipping, clip_exponent, mu_dtype)
    return _base.public(name, tx)


def _scale_by_adopt(b1, b2, eps, use_clipping, clip_exponent, mu_dtype):
    mu_dtype = _canonical_dtype(mu_dtype)
    inner = optax.contrib.scale_by_adopt(
        b1=b1,
        b2=b2,
        eps=eps,
        mu_dtype=mu_dtype,
        use_clipping=use_clipping,
        clip_value_fn=lambda t: jnp.asarray(t, jnp.float32) ** clip_exponent,
    )
    # An infinite gradient would leave v = inf and the coordinate silently frozen (its
    # normalized gradient is 0 from then on): return the non-finite v there instead.
    return _wrap_optax(
        inner,
        moment_fields=("mu", "nu"),
        post=lambda u, new_state: _visible_nonfinite(u, new_state.nu),
        # Finite entries beyond sqrt(dtype max) / 16 are clipped before g**2 (which
        # would overflow v to inf and freeze the coordinate): finite in, finite out.
        pre=_clip_to_square_range,
    )


def scale_by_adamomentum(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaMomentum: Adam whose second moment is the EMA of the *squared momentum*.

    .. math::
        m_t = b_1 m_{t-1} + (1-b_1) g_t, \quad v_t = b_2 v_{t-1} + (1-b_2) m_t^2, \quad
        d_t = \frac{m_t / (1-b_1^t)}{\sqrt{v_t / (1-b_2^t)} + \epsilon}.

    Taking the second moment of :math:`m` instead of :math:`g` smooths the denominator
    (the paper's "twofold EMA"), which the authors argue gives SGD-like generalization.
    As in the paper, the :math:`m_t` inside :math:`v_t` is not bias-corrected, so the
    first step is :math:`1/(1-b_1)` (10 with the defaults) per unit of
    :math:`\operatorname{sign}(g)`, decaying towards Adam-like sizes over about
    :math:`1/(1-b_2)` steps: use a warm-up.
    ``eps`` sits outside the square root, as in optax's Adam; the paper adds
    :math:`\epsilon` to :math:`v_t` at every step instead (which amounts to about
    :math:`\epsilon / (1-b_2)` inside the square root), a difference that only matters
    where :math:`m` is tiny.

    Args:
      b1: first-moment decay, in ``[0, 1)``.
      b2: decay of the EMA of :math:`m^2`, in ``[0, 1)``.
      eps: denominator constant, ``>= 0``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      ``optax.ScaleByAdamState(count, mu, nu)``: :math:`m` and :math:`v`, one copy of the
      params each.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_adamomentum()
      >>> g = jnp.array([3.0, -0.5])
      >>> d, state = tx.update(g, tx.init(g))
      >>> print([f"{x:.2f}" for x in d])  # first step: m_hat = g, sqrt(v_hat) = 0.1 |g|
      ['10.00', '-10.00']

    References:
      Wang et al., `Rethinking Adam: A Twofold Exponential Moving Average Approach
      <https://arxiv.org/abs/2106.11514>`_, 2021.
    """
    name = "scale_by_adamomentum"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_nonnegative(name, eps=eps)
    return _base.public(name, _scale_by_adamomentum(b1, b2, eps))


def _adam_moments_init(params: Any) -> optax.ScaleByAdamState:
    """Adam's zero state ``(count, mu, nu)``, kept by the variants that change its update."""
    return optax.scale_by_adam().init(params)


def _scale_by_adamomentum(b1, b2, eps):
    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(mu, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        new_updates = _map(
            lambda g, m, v: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), updates, mu_hat, nu_hat
        )
        new_state = optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
        return new_updates, _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(_adam_moments_init, update_fn)


class ScaleByQHMState(NamedTuple):
    """State for :func:`optlab.scale_by_qhm`.

    Attributes:
      mu: the EMA of gradients :math:`g_{buf}` (zeros before the first step).
    """

    mu: optax.Updates  # EMA of gradients


def scale_by_qhm(
    b1: jax.typing.ArrayLike = 0.999,
    nu: jax.typing.ArrayLike = 0.7,
) -> optax.GradientTransformationExtraArgs:
    r"""Quasi-hyperbolic momentum (QHM): a weighted average of the gradient and its EMA.

    .. math::
        m_t = b_1 m_{t-1} + (1-b_1) g_t, \qquad d_t = (1-\nu) g_t + \nu m_t.

    ``nu=1`` is momentum SGD in its EMA form (:math:`d_t = (1-b_1) \sum_k b_1^{t-k} g_k`,
    i.e. :func:`optax.sgd` with ``momentum=b1`` and a learning rate :math:`(1-b_1)` times
    smaller); ``nu=0`` is plain SGD; ``nu=b1`` is Nesterov momentum (up to the same
    scale). The paper recommends ``nu=0.7, b1=0.999``. No bias correction, as in the
    paper.

    Args:
      b1: momentum decay :math:`\beta`, in ``[0, 1)``.
      nu: immediate discount :math:`\nu`, in ``[0, 1]``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      :class:`ScaleByQHMState` ``(mu,)``: one copy of the params.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_qhm(b1=0.9, nu=0.7)
      >>> g = jnp.array([1.0])
      >>> d, state = tx.update(g, tx.init(g))
      >>> print(jnp.round(d, 4))  # 0.3 * 1 + 0.7 * 0.1
      [0.37]

    References:
      Ma and Yarats, `Quasi-hyperbolic momentum and Adam for deep learning
      <https://arxiv.org/abs/1810.06801>`_, 2019.
    """
    name = "scale_by_qhm"
    _base.check_decay(name, b1=b1)
    _base.check_unit_interval(name, nu=nu)
    return _base.public(name, _scale_by_qhm(b1, nu))


def _scale_by_qhm(b1, nu):
    def init_fn(params):
        return ScaleByQHMState(mu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        new_updates = _map(lambda g, m: ((1.0 - nu) * g + nu * m).astype(g.dtype), updates, mu)
        return new_updates, _cast_like(ScaleByQHMState(mu=mu), state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_qhadam(
    b1: jax.typing.ArrayLike = 0.995,
    b2: jax.typing.ArrayLike = 0.999,
    nu1: jax.typing.ArrayLike = 0.7,
    nu2: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""QHAdam: quasi-hyperbolic averaging in both of Adam's moments.

    .. math::
        d_t = \frac{(1-\nu_1) g_t + \nu_1 \hat m_t}
                   {\sqrt{(1-\nu_2) g_t^2 + \nu_2 \hat v_t} + \epsilon},

    with Adam's bias-corrected moments :math:`\hat m_t, \hat v_t` (decays ``b1``,
    ``b2``). ``nu1=nu2=1`` is Adam (:func:`optax.scale_by_adam`, tested); the paper's
    recommended setting is ``nu1=0.7, nu2=1, b1=0.995, b2=0.999`` (the defaults).

    Args:
      b1: first-moment decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)``.
      nu1: immediate discount of the first moment, in ``[0, 1]``.
      nu2: immediate discount of the second moment, in ``[0, 1]``.
      eps: denominator constant, ``>= 0``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      ``optax.ScaleByAdamState(count, mu, nu)`` (Adam's moments, two copies of the
      params).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_qhadam()
      >>> g = jnp.array([2.0, -3.0])
      >>> d, state = tx.update(g, tx.init(g))
      >>> print(jnp.round(d, 4))  # first step: m_hat = g, v_hat = g^2
      [ 1. -1.]

    References:
      Ma and Yarats, `Quasi-hyperbolic momentum and Adam for deep learning
      <https://arxiv.org/abs/1810.06801>`_, 2019.
    """
    name = "scale_by_qhadam"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_unit_interval(name, nu1=nu1, nu2=nu2)
    _base.check_nonnegative(name, eps=eps)
    return _base.public(name, _scale_by_qhadam(b1, b2, nu1, nu2, eps))


def _scale_by_qhadam(b1, b2, nu1, nu2, eps):
    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)

        def direction(g, m, v):
            g32 = _tree.to_acc(g)
            num = (1.0 - nu1) * g32 + nu1 * m
            den = jnp.sqrt((1.0 - nu2) * g32 * g32 + nu2 * v) + eps
            return (num / den).astype(g.dtype)

        new_updates = _map(direction, updates, mu_hat, nu_hat)
        new_state = optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
        return new_updates, _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(_adam_moments_init, update_fn)


def scale_by_ano(
    b1: jax.typing.ArrayLike = 0.92,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""Ano: the direction of the momentum with the magnitude of the current gradient.

    .. math::
        m_t = b_1 m_{t-1} + (1-b_1) g_t, \qquad
        v_t = v_{t-1} - (1-b_2) \operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2, \\
        d_t = \operatorname{sign}(m_t) \odot \frac{|g_t|}{\sqrt{v_t / (1-b_2^t)} + \epsilon}.

    The sign of the momentum smooths the *direction*; the step *size* reacts to the
    instantaneous gradient, so a noisy spike that cancels in :math:`m` does not shrink
    the step. The second moment is Yogi's additive update (it moves :math:`v` towards
    :math:`g^2` by at most :math:`(1-b_2) g^2`), started at :math:`v_0 = 0` and
    bias-corrected like Adam's. The paper's theory uses a decaying rate
    :math:`\eta_t = \eta/(t+2)^{3/4}`: give it as a schedule to the learning rate.
    Where the momentum is non-finite it is returned instead (a sign would hide it).

    Args:
      b1: momentum decay, in ``[0, 1)`` (the paper's default 0.92).
      b2: second-moment decay, in ``[0, 1)`` (the paper's default 0.99).
      eps: denominator constant, ``>= 0``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      ``optax.ScaleByAdamState(count, mu, nu)``: :math:`m` and :math:`v`, one copy of the
      params each.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_ano()
      >>> d, state = tx.update(jnp.array([1.0, -4.0]), tx.init(jnp.zeros(2)))
      >>> d, state = tx.update(jnp.array([-0.5, -4.0]), state)
      >>> print(jnp.sign(d))  # the first coordinate follows the momentum, not g
      [ 1. -1.]

    References:
      Kegreisz, `Ano: Faster is Better in Noisy Landscapes
      <https://arxiv.org/abs/2508.18258>`_, 2025.
    """
    name = "scale_by_ano"
    _base.check_decay(name, b1=b1, b2=b2)
    _base.check_nonnegative(name, eps=eps)
    return _base.public(name, _scale_by_ano(b1, b2, eps))


def _scale_by_ano(b1, b2, eps):
    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)

        def yogi(g, v):
            g2 = jnp.square(_tree.to_acc(g))
            return v - (1.0 - b2) * jnp.sign(v - g2) * g2

        nu = _map(yogi, updates, state.nu)
        count = optax.safe_increment(state.count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)

        def direction(g, m, v):
            d = jnp.sign(m) * jnp.abs(_tree.to_acc(g)) / (jnp.sqrt(v) + eps)
            return d.astype(g.dtype)

        new_updates = _map(direction, updates, mu, nu_hat)
        new_updates = _visible_nonfinite(new_updates, mu)
        new_state = optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
        return new_updates, _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(_adam_moments_init, update_fn)


class ScaleByNAGGSState(NamedTuple):
    """State for :func:`optlab.scale_by_nag_gs`.

    Attributes:
      count: number of steps taken (int32 scalar).
      gamma: the current damping :math:`\\gamma_k` (float32 scalar).
      v: the auxiliary (velocity) sequence :math:`v_k`, initialized to the params.
    """

    count: jax.Array  # shape=(), dtype=int32
    gamma: jax.Array  # shape=(), dtype=float32
    v: optax.Updates  # v_k, like params (starts as a copy of them)


def scale_by_nag_gs(
    learning_rate: optax.ScalarOrSchedule = 0.05,
    mu: jax.typing.ArrayLike = 1.0,
    gamma: jax.typing.ArrayLike = 1.5,
) -> optax.GradientTransformationExtraArgs:
    r"""NAG-GS: the semi-implicit Gauss-Seidel discretization of Nesterov's flow.

    With step :math:`\alpha` (``learning_rate``), :math:`a = \alpha / (1 + \alpha)`:

    .. math::
        x_{k+1} &= (1-a)\, x_k + a\, v_k, \qquad
        \gamma_{k+1} = (1-a)\, \gamma_k + a\, \mu, \\
        v_{k+1} &= \frac{\gamma_{k+1} v_k + \alpha\mu\, x_{k+1}
                   - \alpha \nabla f(x_{k+1})}{\alpha\mu + \gamma_{k+1}},

    with :math:`v_0 = x_0`. The :math:`v`-step needs the gradient at the *new* point
    :math:`x_{k+1}`, which the optimizer receives at the next call: each call finishes
    the previous :math:`v`-step with the incoming gradient, then takes the
    :math:`x`-step. So the first call (where :math:`v_0 = x_0`) does not move: its update
    is :math:`0 \cdot g_0` (zero for a finite gradient, NaN stays visible). This is the
    authors' JAX/PyTorch code (``nag_gs``), with its Python ``if count > 0`` replaced by
    a traced select.

    Unlike most optlab transforms this returns the *update to add to the params*
    (:math:`x_{k+1} - x_k = a (v_k - x_k)`): the step size enters nonlinearly, so it is
    a hyperparameter of the transform, and no :func:`optax.scale_by_learning_rate` is
    chained after it (:func:`optlab.nag_gs` is this transform alone).

    Args:
      learning_rate: the step :math:`\alpha > 0`, or a schedule of the step count.
      mu: :math:`\mu > 0`, the strong-convexity (damping) parameter.
      gamma: :math:`\gamma_0 > 0`, the initial damping.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    State:
      :class:`ScaleByNAGGSState` ``(count, gamma, v)``: one copy of the params.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda x: jnp.sum(x ** 2)
      >>> tx = optlab.scale_by_nag_gs(learning_rate=0.3)
      >>> x = jnp.ones(3)
      >>> state = tx.init(x)
      >>> for _ in range(100):
      ...     u, state = tx.update(jax.grad(loss)(x), state, x)
      ...     x = optax.apply_updates(x, u)
      >>> bool(loss(x) < 1e-4)
      True

    References:
      Leplat, Merkulov, Katrutsa, Bershatsky, Tsymboi and Oseledets, `NAG-GS:
      Semi-Implicit, Accelerated and Robust Stochastic Optimizer
      <https://arxiv.org/abs/2209.14937>`_, 2022.
    """
    name = "scale_by_nag_gs"
    _base.check_learning_rate(name, learning_rate)
    _base.check_positive(name, mu=mu, gamma=gamma)
    if not callable(learning_rate):
        _base.check_positive(name, learning_rate=learning_rate)
    return _base.public(name, _scale_by_nag_gs(learning_rate, mu, gamma))


def _scale_by_nag_gs(learning_rate, mu, gamma):
    def init_fn(params):
        return ScaleByNAGGSState(
            count=jnp.zeros([], jnp.int32),
            gamma=jnp.asarray(gamma, jnp.float32),
            v=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
        alpha = jnp.asarray(alpha, jnp.float32)
        first = state.count == 0

        def finish_v(g, v, x):  # the v-step of the previous iteration, at x_k = params
            g32, v32, x32 = _tree.to_acc(g), _tree.to_acc(v), _tree.to_acc(x)
            new = (state.gamma * v32 + alpha * mu * x32 - alpha * g32) / (alpha * mu + state.gamma)
            return jnp.where(first, v32, new).astype(v.dtype)

        v = _map(finish_v, updates, state.v, params)
        a = alpha / (1.0 + alpha)

        def x_step(g, v_, x):
            step = a * (_tree.to_acc(v_) - _tree.to_acc(x))
            # The first gradient is not used (v_0 = x_0): keep a NaN/inf in it visible.
            step = step + jnp.where(first, 0.0 * _tree.to_acc(g), 0.0)
            return step.astype(g.dtype)

        new_updates = _map(x_step, updates, v, params)
        new_gamma = ((1.0 - a) * state.gamma + a * mu).astype(jnp.float32)
        new_state = ScaleByNAGGSState(count=optax.safe_increment(state.count), gamma=new_gamma, v=v)
        return new_updates, _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _kappa_l2(x: jax.Array) -> jax.Array:
    """Gradient of the (per-leaf) Euclidean norm: ``x / ||x||`` (0 at 0)."""
    x32 = _tree.to_acc(x)
    return x32 * _tree.safe_div(1.0, _tree.leaf_norm(x32))


_KAPPAS = {"l1": jnp.sign, "l2": _kappa_l2}


def scale_by_lion_kappa(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    kappa_grad: str | Callable[[jax.Array], jax.Array] = "l1",
) -> optax.GradientTransformationExtraArgs:
    r"""Lion-:math:`\mathcal{K}`: Lion with a pluggable :math:`\nabla\mathcal{K}` in place of sign.

    .. math::
        d_t = \nabla\mathcal{K}\big(b_1 m_{t-1} + (1-b_1) g_t\big), \qquad
        m_t = b_2 m_{t-1} + (1-b_2) g_t.

    With decoupled weight decay :math:`\lambda` (:func:`optlab.lion_kappa`), Lion-K
    minimizes :math:`f(x) + \mathcal{K}^*(x)/\lambda`; for
    :math:`\mathcal{K} = \|\cdot\|_1` (``kappa_grad="l1"``, :math:`\nabla\mathcal{K} =
    \operatorname{sign}`) this is exactly Lion (tested against :func:`optax.scale_by_lion`)
    and the constraint :math:`\|x\|_\infty \le 1/\lambda`. ``"l2"`` is the per-leaf
    Euclidean norm, :math:`\nabla\mathcal{K}(x) = x / \|x\|_2` (a normalized-momentum
    method, constraint :math:`\|x\|_2 \le 1/\lambda` per leaf). Any other convex
    :math:`\mathcal{K}` is given by its gradient, a function of one array returning an
    array of the same shape (applied leaf by leaf), e.g. ``jnp.tanh`` for a smoothed
    sign or ``lambda x: x`` for :math:`\mathcal{K} = \|x\|^2/2` (momentum SGD).

    Args:
      b1: interpolation weight of the momentum in the update, in ``[0, 1)``.
      b2: momentum decay, in ``[0, 1)``.
      kappa_grad: ``"l1"`` (sign, Lion), ``"l2"``, or a callable ``x -> grad K(x)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      ``optax.ScaleByLionState(count, mu)``: one copy of the params.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_lion_kappa(kappa_grad="l2")
      >>> g = jnp.array([3.0, -4.0])
      >>> d, state = tx.update(g, tx.init(g))
      >>> print(d)
      [ 0.6 -0.8]

    References:
      Chen, Liang, Liu and Liu, `Lion Secretly Solves Constrained Optimization: As
      Lyapunov Predicts <https://arxiv.org/abs/2310.05898>`_, 2023.
    """
    name = "scale_by_lion_kappa"
    _base.check_decay(name, b1=b1, b2=b2)
    _check_kappa_grad(name, kappa_grad)
    return _base.public(name, _scale_by_lion_kappa(b1, b2, kappa_grad))


def _check_kappa_grad(name: str, kappa_grad: Any) -> None:
    if not (callable(kappa_grad) or isinstance(kappa_grad, str)):
        raise TypeError(
            f"`optlab.{name}`: `kappa_grad` must be 'l1', 'l2' or a callable, got"
            f" kappa_grad={kappa_grad!r} of type {type(kappa_grad).__name__}."
        )
    if isinstance(kappa_grad, str) and kappa_grad not in _KAPPAS:
        raise ValueError(
            f"`optlab.{name}`: `kappa_grad` must be 'l1', 'l2' or a callable, got"
            f" kappa_grad={kappa_grad!r}."
        )


def _scale_by_lion_kappa(b1, b2, kappa_grad):
    kappa = _KAPPAS[kappa_grad] if isinstance(kappa_grad, str) else kappa_grad

    def init_fn(params):
        return optax.ScaleByLionState(
            count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def direction(g, m):
            c = b1 * _tree.to_acc(m) + (1.0 - b1) * _tree.to_acc(g)
            return jnp.asarray(kappa(c)).astype(g.dtype)

        new_updates = _map(direction, updates, state.mu)
        mu = optax.tree.update_moment(updates, state.mu, b2, 1)
        new_updates = _visible_nonfinite(new_updates, mu)
        new_state = optax.ScaleByLionState(count=optax.safe_increment(state.count), mu=mu)
        return new_updates, _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
