"""Named optimizers: each is a readable chain of optlab transforms and optax pieces.

Every optimizer here takes ``learning_rate`` first, uses optax's hyperparameter names
(an optimizer optax also has keeps optax's signature, so it is a drop-in) and is an
``optax.named_chain`` of named stages, so ``optlab.describe("adamw")`` prints them from
the state (a dict keyed by stage name). It joins ``optlab.get`` / ``optlab.available`` by
one entry in the table of ``optlab/_registry.py``.

Validation happens once: an optimizer checks its own hyperparameters under its own name,
then chains the *unchecked* private builders of the stages (``_scale_by_adam_family`` for
:func:`optlab.scale_by_adam_family` ...), and :func:`_chain` makes ``init`` refuse integer
params and ``update`` a missing required extra argument under its name.

Conventions shared by all:

* Decoupled weight decay (``add_decayed_weights``) sits after the preconditioner and
  before the learning rate, so the step is ``-lr * (direction + weight_decay * w)``
  (AdamW's convention, as in optax), unless the docstring says otherwise.
* Optimizers with a Hessian stage (``sophia``, ``adahessian``) need the extra
  argument ``hvp_fn(params, v) -> H @ v`` in ``update`` (see
  :func:`optlab.scale_by_sophia`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab import _base, _step_sizes
from optlab import _memory_efficient as _me
from optlab import _momentum as _mom
from optlab import _normalization as _norm
from optlab import _second_order as _curv
from optlab._combinators import _in_float32
from optlab._momentum import (
    _cautious,
    _mars_correction,
    _scale_by_adafactor,
    _scale_by_adam_family,
    _scale_by_ademamix,
    _scale_by_diffgrad,
    _scale_by_lion,
    _scale_by_momentum,
    _scale_by_sgd_sai,
    _scale_by_signum,
    _with_grad_sign,
    check_ademamix,
)
from optlab._normalization import (
    _muon_partition,
    _orthogonalize,
    _radial_projection,
    _scale_by_muon_shape,
    _scale_by_trust_ratio,
    _sinkhorn_normalize,
    _weight_decay,
    check_channel_axis,
    check_newton_schulz,
)
from optlab._privacy import _dp_aggregate
from optlab._second_order import (
    _check_spatial_average,
    _scale_by_adahessian,
    _scale_by_sophia,
    hessian_needs,
)

__all__ = [
    "sgd",
    "adam",
    "adamw",
    "amsgrad",
    "diffgrad",
    "adamp",
    "sgdp",
    "ademamix",
    "mars_adamw",
    "grams",
    "cautious_adamw",
    "cautious_lion",
    "lion",
    "signum",
    "lamb",
    "lars",
    "muon",
    "sinkgd",
    "adafactor",
    "sgd_sai",
    "sophia",
    "adahessian",
    "dpsgd",
]

MaskOrFn = optax.MaskOrFn
_FLOAT32 = jnp.dtype(jnp.float32)


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------


def _chain(
    name: str,
    *stages: tuple[str, Any] | None,
    needs: dict | None = None,
    lead_axes: int = 0,
    real: bool = False,
):
    """The named optimizer ``optlab.<name>``: ``optax.named_chain`` of the stages that are
    not None (its state is a dict keyed by stage name, which ``optlab.describe`` prints),
    whose ``init`` refuses non-float params and ``update`` missing ``needs``, naming it."""
    chain = optax.named_chain(*(s for s in stages if s is not None))
    return _base.public(name, chain, lead_axes, real=real, **(needs or {}))


def _lr(learning_rate: optax.ScalarOrSchedule, flip_sign: bool = True):
    return optax.scale_by_learning_rate(learning_rate, flip_sign=flip_sign)


def _adam(b1, b2, eps, eps_root=0.0, *, amsgrad=False, nesterov=False, mu_dtype=None):
    return _scale_by_adam_family(b1, b2, eps, eps_root, amsgrad, False, nesterov, mu_dtype, None)


def _decay(weight_decay, mask):
    return _weight_decay(weight_decay, mask, cautious=False)


def _check(
    name: str,
    learning_rate: Any,
    *,
    decays: dict | None = None,
    nonnegative: dict | None = None,
    positive: dict | None = None,
) -> None:
    """Validate the named optimizer's hyperparameters, once, under its own name."""
    _base.check_learning_rate(name, learning_rate)
    _base.check_decay(name, **(decays or {}))
    _base.check_nonnegative(
        name, **{k: v for k, v in (nonnegative or {}).items() if not callable(v)}
    )
    _base.check_positive(name, **{k: v for k, v in (positive or {}).items() if not callable(v)})


def _true_to_none(mask: Any) -> Any:
    """optax's ``mask=True`` (apply everywhere) is optlab's ``mask=None``."""
    return None if mask is True else mask


def _adamw_elsewhere(name, adam, weight_decay, adam_learning_rate, learning_rate):
    """AdamW on the leaves a matrix optimizer (Muon, AdaGO, SWAN) leaves out: ``adam``,
    decoupled weight decay, ``adam_learning_rate`` (None: ``learning_rate``)."""
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    elif not callable(adam_learning_rate):
        _base.check_nonnegative(name, adam_learning_rate=adam_learning_rate)
    return optax.named_chain(
        ("scale_by_adam", adam),
        ("add_decayed_weights", _decay(weight_decay, None)),
        ("scale_by_learning_rate", _lr(adam_learning_rate)),
    )


# ---------------------------------------------------------------------------
# SGD family
# ---------------------------------------------------------------------------


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic gradient descent, with optional heavy-ball or Nesterov momentum.

    :math:`t_k = g_k + \mu t_{k-1}`, step :math:`-\eta t_k` (Nesterov:
    :math:`-\eta (g_k + \mu t_k)`); without momentum, :math:`-\eta g_k`. Same signature
    and numbers as :func:`optax.sgd`.

    Args:
      learning_rate: step size :math:`\eta` (>= 0) or a schedule.
      momentum: momentum :math:`\mu` in [0, 1), or None for plain SGD.
      nesterov: Nesterov's look-ahead momentum.
      accumulator_dtype: optional dtype of the momentum trace.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the trace (one copy of the
      parameters) with momentum, nothing without.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.sgd(0.1, momentum=0.9, nesterov=True)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params)  # gradient of |w|^2 / 2
      >>> print(updates["w"])
      [-0.19  0.38]

    References:
      Robbins and Monro, `A Stochastic Approximation Method`, 1951.
      Polyak, `Some methods of speeding up the convergence of iteration methods`, 1964.
      Sutskever et al., `On the importance of initialization and momentum in deep
      learning`, 2013.
    """
    _check("sgd", learning_rate, decays={} if momentum is None else {"momentum": momentum})
    return _chain(
        "sgd",
        None
        if momentum is None
        else ("trace", _scale_by_momentum(momentum, nesterov, accumulator_dtype)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def lars(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = True,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 0.0,
    trust_ratio_mask: MaskOrFn = True,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""LARS: momentum SGD with a per-layer trust ratio.

    For each leaf, :math:`u = g + \lambda w`, scaled by
    :math:`\text{tc}\,\|w\| / (\|u\| + \epsilon)`, times :math:`\eta`, then
    accumulated by momentum (the learning rate is inside the momentum, as in the
    paper and :func:`optax.lars`). Same signature and numbers as :func:`optax.lars`.

    Args:
      learning_rate: global step size (>= 0) or a schedule.
      weight_decay: coupled weight decay :math:`\lambda` (>= 0).
      weight_decay_mask: where to decay (``True``: everywhere).
      trust_coefficient: trust coefficient ``tc`` (>= 0).
      eps: added to the update norm (>= 0).
      trust_ratio_mask: where to apply the trust ratio (``True``: everywhere;
        biases and norm scales are usually excluded).
      momentum: momentum in [0, 1).
      nesterov: Nesterov momentum.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the momentum trace (one
      copy of the parameters).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.lars(1.0)
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> updates, _ = tx.update({"w": jnp.array([1.0, 0.0])}, tx.init(params), params)
      >>> print(updates["w"])  # norm 0.001 * ||w|| = 0.005
      [-0.005  0.   ]

    References:
      You, Gitman and Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017.
    """
    _check(
        "lars",
        learning_rate,
        decays={"momentum": momentum},
        nonnegative={
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
        },
    )
    trust = _scale_by_trust_ratio(0.0, trust_coefficient, eps)
    trust_ratio_mask = _true_to_none(trust_ratio_mask)
    return _chain(
        "lars",
        # Coupled decay: before the trust ratio.
        ("add_decayed_weights", _decay(weight_decay, _true_to_none(weight_decay_mask))),
        ("scale_by_trust_ratio", trust)
        if trust_ratio_mask is None
        else ("masked(scale_by_trust_ratio)", optax.masked(trust, trust_ratio_mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
        # Momentum last: it accumulates the lr-scaled steps (paper, optax.lars).
        ("trace", _scale_by_momentum(momentum, nesterov, None)),
    )


def sgd_sai(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""SGD-SaI: momentum SGD with per-leaf step scales set once, from the first gradient.

    Direction :math:`s\,m_t` with :math:`s = \|g_1\| / (\operatorname{std}(g_1) +
    \epsilon)` per leaf, frozen after step 1 (:func:`optlab.scale_by_sgd_sai`), plus
    decoupled weight decay. Since :math:`s` grows like the square root of the leaf
    size, learning rates are small (the paper uses about 1e-3 for transformers).

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: momentum decay in [0, 1).
      eps: added to the standard deviation (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the momentum (one copy of
      the parameters) and one float32 scale per leaf, no second moment.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.sgd_sai(1e-2)
      >>> params = {"w": jnp.zeros(3)}
      >>> updates, _ = tx.update({"w": jnp.array([3.0, 4.0, 0.0])}, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 4))  # -lr * (5 / std) * g
      [-0.0721 -0.0961 -0.    ]

    References:
      Xu et al., `No More Adam: Learning Rate Scaling at Initialization is All You Need
      <https://arxiv.org/abs/2412.11768>`_, 2024.
    """
    _check(
        "sgd_sai",
        learning_rate,
        decays={"b1": b1},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    return _chain(
        "sgd_sai",
        ("scale_by_sgd_sai", _scale_by_sgd_sai(b1, eps)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def sgdp(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,
    weight_decay: jax.typing.ArrayLike = 0.0,
    delta: jax.typing.ArrayLike = 0.1,
    wd_ratio: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    nesterov: bool = False,
    channel_axis: int = -1,
) -> optax.GradientTransformationExtraArgs:
    r"""SGDP: momentum SGD whose step on scale-invariant weights is made tangential.

    The momentum direction :math:`d` (:func:`optlab.scale_by_momentum`) loses its
    component along :math:`w` on leaves that look scale-invariant
    (:func:`optlab.radial_projection`), whose weight decay is then scaled by
    ``wd_ratio``. As in the official code the decay is divided by
    :math:`1 - \text{momentum}`: :math:`w \leftarrow w - \eta (d +
    \frac{\lambda\,r}{1-\text{momentum}} w)`.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      momentum: momentum in [0, 1).
      weight_decay: weight decay :math:`\lambda` (>= 0).
      delta: cosine threshold of the projection (>= 0).
      wd_ratio: weight-decay multiplier :math:`r` on projected leaves (>= 0).
      eps: added to norms (>= 0).
      nesterov: Nesterov momentum.
      channel_axis: output-channel axis of kernels (Flax: -1; PyTorch: 0); a Python
        int (list it in ``static_args`` of ``optax.inject_hyperparams``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the momentum trace (one
      copy of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.sgdp(0.1)
      >>> params = {"w": jnp.ones((3, 2))}
      >>> grads = {"w": jnp.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> print(jnp.round(jnp.sum(updates["w"] * params["w"], axis=0), 6))  # tangential
      [0. 0.]

    References:
      Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights <https://arxiv.org/abs/2006.08217>`_, 2021.
    """
    _check(
        "sgdp",
        learning_rate,
        decays={"momentum": momentum},
        nonnegative={
            "weight_decay": weight_decay,
            "delta": delta,
            "wd_ratio": wd_ratio,
            "eps": eps,
        },
    )
    check_channel_axis("sgdp", channel_axis)
    # The projection wraps the momentum (it needs the raw gradient for the cosine) and
    # adds the (wd_ratio-scaled) decoupled decay itself.
    momentum_tx = _scale_by_momentum(momentum, nesterov, None)
    project = _radial_projection(
        momentum_tx, delta, wd_ratio, weight_decay / (1.0 - momentum), eps, channel_axis
    )
    return _chain(
        "sgdp",
        ("radial_projection(trace)", project),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def signum(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Signum: the sign of the momentum (``b1=0``: signSGD), with decoupled weight decay.

    :math:`m_t = b_1 m_{t-1} + (1 - b_1) g_t`, step
    :math:`-\eta(\operatorname{sign}(m_t) + \lambda w)`.

    Args:
      learning_rate: step size (>= 0) or a schedule; every coordinate moves by it.
      b1: momentum decay in [0, 1).
      weight_decay: decoupled weight decay :math:`\lambda` (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the momentum (one copy of
      the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.signum(0.01)
      >>> params = {"w": jnp.zeros(3)}
      >>> updates, _ = tx.update({"w": jnp.array([2.0, -1e-3, 0.5])}, tx.init(params), params)
      >>> print(updates["w"])
      [-0.01  0.01 -0.01]

    References:
      Bernstein et al., `signSGD: Compressed Optimisation for Non-Convex Problems
      <https://arxiv.org/abs/1802.04434>`_, 2018.
    """
    _check("signum", learning_rate, decays={"b1": b1}, nonnegative={"weight_decay": weight_decay})
    return _chain(
        "signum",
        ("scale_by_signum", _scale_by_signum(b1)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def sinkgd(
    learning_rate: optax.ScalarOrSchedule,
    num_iters: int = 5,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""SinkGD: stateless steps along the row-and-column normalized gradient.

    Each 2-D gradient is alternately row- and column-normalized ``num_iters`` times
    (:func:`optlab.sinkhorn_normalize`; other leaves are scaled to RMS 1), then
    decoupled weight decay and the learning rate are applied. Every entry of the
    direction has RMS about 1, so learning rates are Adam-like.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      num_iters: row-then-column passes (Python int >= 1).
      eps: added to every norm (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: none (stateless).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> tx = optlab.sinkgd(1e-2)
      >>> params = {"w": jnp.zeros((4, 9))}
      >>> g = {"w": jax.random.normal(jax.random.key(0), (4, 9))}
      >>> updates, _ = tx.update(g, tx.init(params), params)
      >>> print(jnp.round(jnp.linalg.norm(updates["w"], axis=0), 4))  # columns: lr * 2
      [0.02 0.02 0.02 0.02 0.02 0.02 0.02 0.02 0.02]

    References:
      Scetbon et al., `Gradient Multi-Normalization for Stateless and Scalable LLM
      Training <https://arxiv.org/abs/2502.06742>`_, 2025.
    """
    _check("sinkgd", learning_rate, nonnegative={"eps": eps, "weight_decay": weight_decay})
    _base.check_int("sinkgd", num_iters=num_iters)
    return _chain(
        "sinkgd",
        ("sinkhorn_normalize", _sinkhorn_normalize(num_iters, eps, "normalize")),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


# ---------------------------------------------------------------------------
# Adam family
# ---------------------------------------------------------------------------


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam: adaptive moment estimation, without weight decay.

    Step :math:`-\eta\,\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`. Same
    signature and numbers as :func:`optax.adam`; :func:`optlab.adamw` adds decoupled
    weight decay.

    Overflow: a finite gradient entry beyond about 1.8e19 in float32 (256 in float16)
    overflows :math:`g^2`, so that entry of :math:`v` becomes ``inf`` and its step is 0
    from then on (:math:`\hat m / \sqrt{\infty}`): the coordinate is frozen without a
    NaN. The whole Adam family (``adamw``, ``nadam``, ``amsgrad`` ...) behaves so, as
    optax's does. Wrap the optimizer in :func:`optlab.skip_nonfinite` to skip such a
    step instead: it refuses any step whose new state turns non-finite and keeps the
    previous state (tested for every registered transform on gradients of 1e30).

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      eps_root: added inside the square root (>= 0).
      mu_dtype: optional dtype of the first moment.
      nesterov: NAdam's look-ahead first moment.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count, first and
      second moments (two copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adam(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))  # first Adam step: -lr * sign(g)
      [-0.001  0.001]

    References:
      Kingma and Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2015.
    """
    _check(
        "adam",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "eps_root": eps_root},
    )
    return _chain(
        "adam",
        ("scale_by_adam", _adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nesterov=nesterov)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW: Adam with decoupled weight decay.

    Step :math:`-\eta\,(\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon) +
    \lambda w)`. Same signature and numbers as :func:`optax.adamw`. A gradient entry
    whose square overflows freezes that coordinate (see :func:`optlab.adam`; wrap in
    :func:`optlab.skip_nonfinite` to skip such steps).

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      eps_root: added inside the square root (>= 0).
      mu_dtype: optional dtype of the first moment.
      weight_decay: decoupled weight decay :math:`\lambda` (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      nesterov: NAdam's look-ahead first moment.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count, first and
      second moments (two copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adamw(1e-3, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))  # first Adam step: -lr * sign(g)
      [-0.001  0.001]

    References:
      Kingma and Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2015.
      Loshchilov and Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019.
    """
    _check(
        "adamw",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay},
    )
    return _chain(
        "adamw",
        ("scale_by_adam", _adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nesterov=nesterov)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AMSGrad: Adam dividing by the running maximum of the second moment.

    :math:`\hat v^{max}_t = \max(\hat v^{max}_{t-1}, \hat v_t)` is non-decreasing, so
    the per-coordinate step size never grows. With ``weight_decay=0`` (default) it is
    :func:`optax.amsgrad` (same first six arguments); ``weight_decay > 0`` adds
    decoupled decay as in AdamW.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      eps_root: added inside the square root (>= 0).
      mu_dtype: optional dtype of the first moment.
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count, first moment,
      second moment and its running maximum (three copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.amsgrad(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))
      [-0.001  0.001]

    References:
      Reddi, Kale and Kumar, `On the Convergence of Adam and Beyond
      <https://openreview.net/forum?id=ryQu7f-RZ>`_, 2018.
    """
    _check(
        "amsgrad",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay},
    )
    return _chain(
        "amsgrad",
        ("scale_by_amsgrad", _adam(b1, b2, eps, eps_root, amsgrad=True, mu_dtype=mu_dtype)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def diffgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""diffGrad: Adam whose step is damped where the gradient barely changes.

    Adam's direction times the friction
    :math:`\xi_t = \operatorname{sigmoid}(|g_{t-1} - g_t|) \in [0.5, 1)`
    (:func:`optlab.scale_by_diffgrad`), plus decoupled weight decay.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count, both moments
      and the previous gradient (three copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.diffgrad(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"].shape)
      (2,)

    References:
      Dubey et al., `diffGrad: An Optimization Method for Convolutional Neural Networks
      <https://arxiv.org/abs/1909.11015>`_, 2019.
    """
    _check(
        "diffgrad",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    return _chain(
        "diffgrad",
        ("scale_by_diffgrad", _scale_by_diffgrad(b1, b2, eps)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def adamp(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    delta: jax.typing.ArrayLike = 0.1,
    wd_ratio: jax.typing.ArrayLike = 0.1,
    *,
    nesterov: bool = False,
    channel_axis: int = -1,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamP: Adam whose step on scale-invariant weights is made tangential.

    Adam's direction (:func:`optlab.scale_by_adam_family`) loses its component along
    :math:`w` on leaves whose gradient is nearly orthogonal to :math:`w` (scale
    invariance, e.g. before a normalization layer); their decoupled weight decay is
    scaled by ``wd_ratio`` (:func:`optlab.radial_projection`). Defaults of the official
    code. ``nesterov=True`` uses optax's NAdam moment, which bias-corrects the
    look-ahead terms slightly differently from the official code.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added to the denominator and to norms (>= 0).
      weight_decay: decoupled weight decay (>= 0).
      delta: cosine threshold of the projection (>= 0).
      wd_ratio: weight-decay multiplier on projected leaves (>= 0).
      nesterov: Nesterov (NAdam) first moment.
      channel_axis: output-channel axis of kernels (Flax: -1; PyTorch: 0); a Python
        int (list it in ``static_args`` of ``optax.inject_hyperparams``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: Adam's (step count, two
      copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adamp(1e-3)
      >>> params = {"w": jnp.ones((3, 2))}
      >>> grads = {"w": jnp.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> print(jnp.round(jnp.sum(updates["w"] * params["w"], axis=0), 6))  # tangential
      [0. 0.]

    References:
      Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights <https://arxiv.org/abs/2006.08217>`_, 2021.
    """
    _check(
        "adamp",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={
            "eps": eps,
            "weight_decay": weight_decay,
            "delta": delta,
            "wd_ratio": wd_ratio,
        },
    )
    check_channel_axis("adamp", channel_axis)
    # The projection wraps Adam (it needs the raw gradient for the cosine) and adds the
    # (wd_ratio-scaled) decoupled decay itself.
    adam = _adam(b1, b2, eps, nesterov=nesterov)
    return _chain(
        "adamp",
        (
            "radial_projection(scale_by_adam)",
            _radial_projection(adam, delta, wd_ratio, weight_decay, eps, channel_axis),
        ),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def ademamix(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: optax.ScalarOrSchedule = 0.9999,
    alpha: optax.ScalarOrSchedule = 5.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    b3_warmup: int | None = None,
    alpha_warmup: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdEMAMix: AdamW with a mixture of a fast and a slow EMA of gradients.

    Direction :math:`(\hat m^{(1)}_t + \alpha m^{(2)}_t) / (\sqrt{\hat v_t} + \epsilon)`
    with a fast EMA (``b1``) and a slow, not bias-corrected, EMA (``b3``)
    (:func:`optlab.scale_by_ademamix`), plus decoupled weight decay. Same signature and
    numbers as :func:`optax.contrib.ademamix`, plus the paper's warm-ups of ``alpha``
    and ``b3`` (``alpha_warmup``, ``b3_warmup``; recommended for long runs).

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: fast EMA decay in [0, 1).
      b2: second-moment decay in [0, 1).
      b3: slow EMA decay in [0, 1), or a schedule.
      alpha: weight of the slow EMA (>= 0), or a schedule.
      eps: added outside the square root (>= 0).
      eps_root: added inside the square root (>= 0).
      mu_dtype: optional dtype of the two EMAs.
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      b3_warmup: steps of the paper's half-life warm-up of ``b3`` (None: off).
      alpha_warmup: steps of the linear warm-up of ``alpha`` (None: off).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count, two EMAs and
      the second moment (three copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.ademamix(1e-3, alpha=0.0)  # alpha=0: exactly AdamW
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))
      [-0.001  0.001]

    References:
      Pagliardini, Ablin and Grangier, `The AdEMAMix Optimizer: Better, Faster, Older
      <https://arxiv.org/abs/2409.03137>`_, 2024.
    """
    _check("ademamix", learning_rate, nonnegative={"weight_decay": weight_decay})
    check_ademamix("ademamix", b1, b2, b3, alpha, b3_warmup, alpha_warmup, eps, eps_root)
    return _chain(
        "ademamix",
        (
            "scale_by_ademamix",
            _scale_by_ademamix(b1, b2, b3, alpha, b3_warmup, alpha_warmup, eps, eps_root, mu_dtype),
        ),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def mars_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    gamma: jax.typing.ArrayLike = 0.025,
    max_norm: jax.typing.ArrayLike | None = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""MARS-AdamW: AdamW on a variance-reduced gradient (approximate MARS).

    The gradient is replaced by
    :math:`c_t = g_t + \gamma \frac{b_1}{1 - b_1}(g_t - g_{t-1})`, clipped per leaf
    to norm ``max_norm`` (:func:`optlab.mars_correction`), and AdamW runs on
    :math:`c_t` with the same ``b1``. Defaults of the official code (lr 3e-3 there).
    MARS is applied to every leaf (the official ``optimize_1d=True``); to give
    vectors plain AdamW, as the official default does, split the tree with
    ``optax.partition``.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1), also used by the correction.
      b2: second-moment decay in [0, 1).
      eps: added to the denominator (>= 0).
      gamma: scale of the gradient correction (>= 0).
      max_norm: per-leaf norm threshold of the corrected gradient (> 0), or None.
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the previous gradient and
      Adam's moments (three copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.mars_adamw(3e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"])
      [-0.003  0.003]

    References:
      Yuan et al., `MARS: Unleashing the Power of Variance Reduction for Training Large
      Models <https://arxiv.org/abs/2411.10438>`_, 2024.
    """
    _check(
        "mars_adamw",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "gamma": gamma, "weight_decay": weight_decay},
        positive={} if max_norm is None else {"max_norm": max_norm},
    )
    return _chain(
        "mars_adamw",
        ("mars_correction", _mars_correction(gamma, b1, max_norm)),  # first: replaces the gradient
        ("scale_by_adam", _adam(b1, b2, eps)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def grams(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Grams: Adam's step size per coordinate, the current gradient's sign.

    Direction :math:`\operatorname{sign}(g_t) \odot |u_t|` with :math:`u_t` Adam's
    direction (:func:`optlab.with_grad_sign`), plus decoupled weight decay.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: Adam's (step count, two
      copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.grams(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))
      [-0.001  0.001]

    References:
      Cao et al., `Grams: Gradient Descent with Adaptive Momentum Scaling
      <https://arxiv.org/abs/2412.17107>`_, 2024.
    """
    _check(
        "grams",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    return _chain(
        "grams",
        ("with_grad_sign(scale_by_adam)", _with_grad_sign(_adam(b1, b2, eps), True)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def cautious_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""C-AdamW: AdamW whose step keeps only the coordinates that agree with the gradient.

    Adam's direction is zeroed where its sign differs from the gradient's and the
    rest is rescaled by the inverse kept fraction (:func:`optlab.cautious`); the
    decoupled weight decay is added after the mask, unmasked, as in the official code.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: Adam's (step count, two
      copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.cautious_adamw(1e-3, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))
      [-0.001  0.001]

    References:
      Liang et al., `Cautious Optimizers: Improving Training with One Line of Code
      <https://arxiv.org/abs/2411.16085>`_, 2024.
    """
    _check(
        "cautious_adamw",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    return _chain(
        "cautious_adamw",
        ("cautious(scale_by_adam)", _cautious(_adam(b1, b2, eps), 1e-8, True)),
        ("add_decayed_weights", _decay(weight_decay, mask)),  # after the mask: never masked
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


# ---------------------------------------------------------------------------
# Lion
# ---------------------------------------------------------------------------


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: Any = None,
    weight_decay: optax.ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Lion: the sign of an interpolation of momentum and gradient.

    Direction :math:`\operatorname{sign}(b_1 m_{t-1} + (1-b_1) g_t)`, then
    :math:`m_t = b_2 m_{t-1} + (1 - b_2) g_t`, plus decoupled weight decay. Same
    signature and numbers as :func:`optax.lion`; use a 3-10x smaller learning rate
    than AdamW's.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: interpolation weight in [0, 1).
      b2: momentum decay in [0, 1).
      mu_dtype: optional dtype of the momentum.
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count and the
      momentum (one copy of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.lion(1e-4, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"])
      [-0.0001  0.0001]

    References:
      Chen et al., `Symbolic Discovery of Optimization Algorithms
      <https://arxiv.org/abs/2302.06675>`_, 2023.
    """
    _check(
        "lion",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"weight_decay": weight_decay},
    )
    return _chain(
        "lion",
        ("scale_by_lion", _scale_by_lion(b1, b2, mu_dtype)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def cautious_lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    weight_decay: optax.ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""C-Lion: Lion whose step keeps only the coordinates that agree with the gradient.

    Lion's sign direction is zeroed where it differs in sign from the gradient and
    the rest rescaled by the inverse kept fraction (:func:`optlab.cautious`), plus
    unmasked decoupled weight decay.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: interpolation weight in [0, 1).
      b2: momentum decay in [0, 1).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: Lion's (step count, one
      copy of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.cautious_lion(1e-4, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"])
      [-0.0001  0.0001]

    References:
      Liang et al., `Cautious Optimizers: Improving Training with One Line of Code
      <https://arxiv.org/abs/2411.16085>`_, 2024.
    """
    _check(
        "cautious_lion",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"weight_decay": weight_decay},
    )
    return _chain(
        "cautious_lion",
        ("cautious(scale_by_lion)", _cautious(_scale_by_lion(b1, b2, None), 1e-8, True)),
        ("add_decayed_weights", _decay(weight_decay, mask)),  # after the mask: never masked
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


# ---------------------------------------------------------------------------
# Layer-wise and matrix optimizers
# ---------------------------------------------------------------------------


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LAMB: AdamW's direction rescaled per layer to the norm of the weights.

    :math:`u = \hat m / (\sqrt{\hat v} + \epsilon) + \lambda w`, then per leaf
    :math:`u \leftarrow \frac{\|w\|}{\|u\|} u` (:func:`optlab.scale_by_trust_ratio`),
    times :math:`-\eta`. Same signature and numbers as :func:`optax.lamb`.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      eps_root: added inside the square root (>= 0).
      weight_decay: weight decay :math:`\lambda` (>= 0) or a schedule, inside the
        trust ratio.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: Adam's (step count, two
      copies of the parameters).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.lamb(0.01)
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> updates, _ = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 5))  # norm lr * ||w|| = 0.05
      [-0.03536  0.03536]

    References:
      You et al., `Large Batch Optimization for Deep Learning: Training BERT in 76
      minutes <https://arxiv.org/abs/1904.00962>`_, 2020.
    """
    _check(
        "lamb",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay},
    )
    return _chain(
        "lamb",
        ("scale_by_adam", _adam(b1, b2, eps, eps_root)),
        ("add_decayed_weights", _decay(weight_decay, mask)),  # before the trust ratio (paper)
        ("scale_by_trust_ratio", _scale_by_trust_ratio(0.0, 1.0, 0.0)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def muon(
    learning_rate: optax.ScalarOrSchedule,
    ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    ns_steps: int = 5,
    beta: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.999,
    adam_eps_root: jax.typing.ArrayLike = 0.0,
    adam_weight_decay: optax.ScalarOrSchedule = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    muon_mask: MaskOrFn = None,
    muon_weight_dimension_numbers: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Muon: orthogonalized Nesterov momentum on 2-D leaves, AdamW on the others.

    2-D leaves (``(fan_in, fan_out)`` matrices): momentum (:func:`optlab.scale_by_momentum`,
    Nesterov by default), Newton-Schulz orthogonalization (:func:`optlab.orthogonalize`,
    singular values mapped near 1), times :math:`\sqrt{\max(1, \text{fan\_out} /
    \text{fan\_in})}`, plus decoupled weight decay. Other leaves (biases, scales,
    scalars, conv kernels): :func:`optlab.adamw` with the ``adam_*`` arguments. The
    split is ``optax.partition``; by default by ``ndim``, which also sends embedding
    tables and the classifier head (2-D) to Muon. For transformers the recommended split
    is :func:`optlab.muon_hidden_mask`: Muon on the hidden matrices only, AdamW on
    embeddings, the output head, norms and biases (Jordan et al.; Moonlight), e.g.
    ``optlab.muon(0.02, muon_mask=optlab.muon_hidden_mask)``. Leaves of rank > 2 selected by
    ``muon_mask`` (conv kernels ``(kh, kw, in, out)``, attention kernels ``(embed, heads,
    head_dim)``) are orthogonalized as 2-D matrices ``(prod(reduction axes), prod(output
    axes))``: by default every axis but the last is reduced (the Flax layout of conv and
    dense kernels); ``muon_weight_dimension_numbers`` sets the axes per leaf, as in
    ``optax.contrib.muon``.

    Same signature as :func:`optax.contrib.muon` (its first eleven arguments and the
    ``adam_*`` ones). With ``nesterov=False`` the numbers are the same. With
    ``nesterov=True`` this follows Keller Jordan's reference code: the orthogonalized
    matrix is that of :math:`(1-\beta) g_t + \beta m_t` (:math:`m` the EMA of
    gradients, equivalently ``optax.trace`` up to a scale that the normalization
    removes), while optax bias-corrects the two terms separately
    (:math:`\beta \hat m_t/(1-\beta^{t+1}) + (1-\beta) g_t/(1-\beta^t)`), which
    changes the direction during the first ~:math:`1/(1-\beta)` steps only.

    Args:
      learning_rate: step size (>= 0) or a schedule (Muon's is typically ~0.02).
      ns_coeffs: the quintic Newton-Schulz coefficients ``(a, b, c)``.
      ns_steps: Newton-Schulz iterations (Python int >= 1).
      beta: momentum decay in [0, 1).
      eps: added to the Frobenius norm before the iteration, and Adam's ``eps``.
      weight_decay: decoupled weight decay of the 2-D leaves (>= 0) or a schedule.
      weight_decay_mask: where to decay among the 2-D leaves (None: everywhere).
      mu_dtype: optional dtype of the momenta.
      nesterov: Nesterov momentum (for both parts).
      adam_b1: AdamW's first-moment decay for the other leaves.
      adam_b2: AdamW's second-moment decay for the other leaves.
      adam_eps_root: AdamW's ``eps_root``.
      adam_weight_decay: AdamW's decoupled weight decay.
      adam_learning_rate: AdamW's learning rate (None: ``learning_rate``).
      muon_mask: the leaves Muon updates: a tree of bools or a function of the params
        returning one (True: Muon, False: AdamW); None: the 2-D leaves.
        :func:`optlab.muon_hidden_mask` is the recommended one for transformers.
      muon_weight_dimension_numbers: for the Muon leaves, their reduction and output axes
        (``optax.contrib.MuonDimensionNumbers(reduction_axis, output_axis)``), one for all,
        a tree of them (None entries: default) or a function of the params; every axis
        must be one or the other (no batch axes). Default: all axes but the last reduced.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the momentum of the Muon
      leaves (one copy, as 2-D views), AdamW's moments of the others (two copies).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> tx = optlab.muon(0.02)
      >>> params = {"w": jnp.zeros((8, 16)), "b": jnp.zeros(16)}
      >>> g = {"w": jax.random.normal(jax.random.key(0), (8, 16)), "b": jnp.ones(16)}
      >>> updates, _ = tx.update(g, tx.init(params), params)
      >>> s = jnp.linalg.svd(updates["w"] / (-0.02 * 2 ** 0.5), compute_uv=False)
      >>> bool(s.min() > 0.6 and s.max() < 1.3)  # orthogonalized, times sqrt(16 / 8)
      True

    References:
      Jordan et al., `Muon: An optimizer for hidden layers in neural networks
      <https://kellerjordan.github.io/posts/muon/>`_, 2024.
      Bernstein and Newhouse, `Old Optimizer, New Norm: An Anthology
      <https://arxiv.org/abs/2409.20325>`_, 2024.
    """
    _check(
        "muon",
        learning_rate,
        decays={"beta": beta, "adam_b1": adam_b1, "adam_b2": adam_b2},
        nonnegative={
            "weight_decay": weight_decay,
            "adam_eps_root": adam_eps_root,
            "adam_weight_decay": adam_weight_decay,
        },
    )
    check_newton_schulz("muon", ns_steps, ns_coeffs, eps)
    adam = _adam(adam_b1, adam_b2, eps, adam_eps_root, mu_dtype=mu_dtype, nesterov=nesterov)
    others = _adamw_elsewhere("muon", adam, adam_weight_decay, adam_learning_rate, learning_rate)
    matrices = optax.named_chain(
        ("trace", _scale_by_momentum(beta, nesterov, mu_dtype)),
        ("orthogonalize", _orthogonalize(ns_steps, ns_coeffs, eps, "passthrough")),
        ("scale_by_muon_shape", _scale_by_muon_shape()),
        ("add_decayed_weights", _decay(weight_decay, weight_decay_mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )
    partition = _muon_partition(matrices, others, muon_mask, muon_weight_dimension_numbers)
    return _chain("muon", ("partition", partition))


def adafactor(
    learning_rate: optax.ScalarOrSchedule,
    min_dim_size_to_factor: int = 128,
    decay_rate: jax.typing.ArrayLike = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: jax.typing.ArrayLike | None = 1.0,
    momentum: jax.typing.ArrayLike | None = None,
    dtype_momentum: Any = _FLOAT32,
    weight_decay_rate: optax.ScalarOrSchedule | None = None,
    eps: jax.typing.ArrayLike = 1e-30,
    factored: bool = True,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adafactor: factored second moments, update clipping, relative step sizes.

    :math:`g / \sqrt{\hat V}` with :math:`\hat V` factored into row and column
    statistics for large matrices (:func:`optlab.scale_by_adafactor`), clipped to
    block RMS ``clipping_threshold``, times the learning rate and, with
    ``multiply_by_parameter_scale``, by the RMS of the parameter; optional momentum and
    weight decay. Same signature (``learning_rate`` required here) and numbers as
    :func:`optax.adafactor`, including its conventions: the decay
    ``weight_decay_rate * w`` is added after the learning rate (not multiplied by it).

    Args:
      learning_rate: step size (>= 0) or a schedule (relative to the parameter RMS
        with ``multiply_by_parameter_scale``; the paper uses 1e-2).
      min_dim_size_to_factor: factor only leaves whose two largest axes are at least
        this large (Python int).
      decay_rate: exponent of the second-moment decay schedule (> 0).
      decay_offset: step offset of that schedule (for fine-tuning, >= 0); during the
        first ``decay_offset`` steps the decay is 0 (optax's formula gives NaN there).
      multiply_by_parameter_scale: scale the step by the parameter's RMS.
      clipping_threshold: block-RMS clipping threshold (> 0), or None.
      momentum: EMA decay of the updates in [0, 1), or None for none.
      dtype_momentum: dtype of the momentum (the updates keep the gradients' dtype).
        A dtype object rather than optax's ``jnp.float32`` type, which
        ``optax.inject_hyperparams`` would take for a schedule (it is callable).
      weight_decay_rate: decay rate (>= 0) or a schedule, or None.
      eps: added to the squared gradient (>= 0).
      factored: factor the second moment of matrices.
      weight_decay_mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: row and column statistics
      of factored leaves (:math:`O(n + m)` for ``n x m``), full second moments of the
      others, and the momentum if any.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adafactor(1e-2, min_dim_size_to_factor=2)
      >>> params = {"w": jnp.ones((300, 200))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params)
      >>> print(updates["w"].shape)
      (300, 200)

    References:
      Shazeer and Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory Cost
      <https://arxiv.org/abs/1804.04235>`_, 2018.
    """
    _check(
        "adafactor",
        learning_rate,
        decays={} if momentum is None else {"momentum": momentum},
        nonnegative={"eps": eps}
        if weight_decay_rate is None
        else {"eps": eps, "weight_decay_rate": weight_decay_rate},
    )
    _base.check_positive("adafactor", decay_rate=decay_rate)
    if clipping_threshold is not None:
        _base.check_positive("adafactor", clipping_threshold=clipping_threshold)
    _base.check_int_unless_traced("adafactor", 0, decay_offset=decay_offset)
    _base.check_int_unless_traced("adafactor", 1, min_dim_size_to_factor=min_dim_size_to_factor)
    return _chain(
        "adafactor",
        (
            "scale_by_adafactor",
            _scale_by_adafactor(
                factored, decay_rate, decay_offset, min_dim_size_to_factor, eps, None
            ),
        ),
        None
        if clipping_threshold is None
        else ("clip_by_block_rms", optax.clip_by_block_rms(clipping_threshold)),
        # The learning rate comes before the parameter scale and the momentum, and the
        # sign flip last (optax.adafactor's order: decay is not scaled by the rate).
        ("scale_by_learning_rate", _lr(learning_rate, flip_sign=False)),
        ("scale_by_param_block_rms", _mom._scale_by_param_block_rms())
        if multiply_by_parameter_scale
        else None,
        None
        if momentum is None
        else (
            "ema",
            _in_float32(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum)),
        ),
        None
        if weight_decay_rate is None
        else ("add_decayed_weights", _decay(weight_decay_rate, weight_decay_mask)),
        ("flip_sign", optax.scale(-1.0)),
    )


# ---------------------------------------------------------------------------
# Second order
# ---------------------------------------------------------------------------


def sophia(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.965,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: MaskOrFn = None,
    gamma: jax.typing.ArrayLike = 0.01,
    clip_threshold: jax.typing.ArrayLike | None = 1.0,
    update_interval: int = 10,
    *,
    seed: int = 0,
    hessian_diagonal_fn: optax.GradientTransformation | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Sophia-H: momentum divided by a clipped, lazily refreshed Hessian diagonal.

    Direction :math:`\operatorname{clip}(\hat m_t / \max(\gamma h, \epsilon), c)` with
    :math:`h` an EMA of Hutchinson estimates of the Hessian diagonal refreshed every
    ``update_interval`` steps (:func:`optlab.scale_by_sophia`), plus decoupled weight
    decay. Same parametrization and numbers as :func:`optax.contrib.sophia` (which takes
    ``obj_fn``; here the estimator takes a Hessian-vector product).

    ``update`` needs ``params`` and the extra argument ``hvp_fn(params, v) -> H @ v``,
    e.g. ``hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]``; with Flax
    NNX, ``optimizer.update(model, grads, hvp_fn=hvp_fn)``.

    Args:
      learning_rate: step size (>= 0) or a schedule; since most coordinates are
        clipped early on, it is about the per-coordinate step (paper: ~1e-4 to 6e-4
        for GPT-2 with ``gamma`` 0.01-0.05).
      b1: gradient EMA decay in [0, 1).
      b2: Hessian EMA decay per refresh in [0, 1).
      eps: floor of the denominator (> 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      weight_decay_mask: where to decay (None: everywhere).
      gamma: Hessian scale in the denominator (> 0).
      clip_threshold: per-coordinate clip (> 0), or None.
      update_interval: Hessian refresh period (Python int >= 1).
      seed: seed of the Hutchinson probes.
      hessian_diagonal_fn: optional custom Hessian-diagonal estimator.
      mu_dtype: optional dtype of the gradient EMA.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count, gradient EMA,
      Hessian EMA (two copies of the parameters) and a PRNG key.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
      >>> tx = optlab.sophia(1e-3, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params,
      ...                        hvp_fn=hvp_fn)
      >>> print(updates["w"])  # the first step is clipped: -lr * sign(m)
      [-0.001  0.001]

    References:
      Liu et al., `Sophia: A Scalable Stochastic Second-order Optimizer for Language
      Model Pre-training <https://arxiv.org/abs/2305.14342>`_, 2023.
    """
    _check(
        "sophia",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"weight_decay": weight_decay},
        positive={
            "eps": eps,
            "gamma": gamma,
            **({} if clip_threshold is None else {"clip_threshold": clip_threshold}),
        },
    )
    _base.check_int_unless_traced("sophia", 1, update_interval=update_interval)
    if hessian_diagonal_fn is None:
        _base.check_int_unless_traced("sophia", 0, seed=seed)
    sophia_tx = _scale_by_sophia(
        b1, b2, eps, gamma, clip_threshold, update_interval, seed, hessian_diagonal_fn, mu_dtype
    )
    return _chain(
        "sophia",
        (
            "scale_by_sophia(hutchinson_diag_hessian)"
            if hessian_diagonal_fn is None
            else "scale_by_sophia",
            sophia_tx,
        ),
        ("add_decayed_weights", _decay(weight_decay, weight_decay_mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
        needs=hessian_needs(hessian_diagonal_fn),
        real=True,  # clipping needs an ordering
    )


def adahessian(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-4,
    hessian_power: jax.typing.ArrayLike = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    spatial_average: bool | MaskOrFn = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaHessian: Adam with the squared Hutchinson Hessian diagonal as second moment.

    Direction :math:`\hat m_t / (\sqrt{\hat v_t}^{k} + \epsilon)` with :math:`v` the
    EMA of the squared (spatially averaged for conv kernels) Hessian-diagonal estimate
    (:func:`optlab.scale_by_adahessian`), plus decoupled weight decay, as in the
    official code (lr 0.15 there for ResNets).

    ``update`` needs ``params`` and the extra argument ``hvp_fn(params, v) -> H @ v``
    (one Hessian-vector product per step), e.g.
    ``hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]``.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: gradient EMA decay in [0, 1).
      b2: decay of the EMA of the squared Hessian diagonal in [0, 1).
      eps: added to the denominator (> 0).
      hessian_power: exponent :math:`k` in [0, 1].
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      spatial_average: which leaves are conv kernels whose estimate is averaged over
        the spatial axes (a tree of booleans or a function of the params; default
        ``False``: none), see :func:`optlab.scale_by_adahessian`.
      seed: seed of the Hutchinson probes.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: step count, two moments
      (two copies of the parameters) and a PRNG key.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
      >>> tx = optlab.adahessian(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params,
      ...                        hvp_fn=hvp_fn)
      >>> print(jnp.round(updates["w"], 3))  # -lr * g / (|diag H| + eps): a damped Newton step
      [-0.1  0.2]

    References:
      Yao et al., `ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning
      <https://arxiv.org/abs/2006.00719>`_, 2020.
    """
    _check(
        "adahessian",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"weight_decay": weight_decay},
        positive={"eps": eps},
    )
    _base.check_unit_interval("adahessian", hessian_power=hessian_power)
    _base.check_int_unless_traced("adahessian", 0, seed=seed)
    _check_spatial_average("adahessian", spatial_average)
    return _chain(
        "adahessian",
        (
            "scale_by_adahessian(hutchinson_diag_hessian)",
            _scale_by_adahessian(b1, b2, eps, hessian_power, spatial_average, seed, None),
        ),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
        needs=hessian_needs(None),
    )


# ---------------------------------------------------------------------------
# Differential privacy
# ---------------------------------------------------------------------------


def dpsgd(
    learning_rate: optax.ScalarOrSchedule,
    l2_norm_clip: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    seed: int = 0,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """DP-SGD: SGD (with optional momentum) on per-example clipped, noised gradients.

    ``dp_aggregate(l2_norm_clip, noise_multiplier, seed)``, then
    ``optax.trace(momentum, nesterov)`` if ``momentum`` is given, then
    ``-learning_rate``. ``update`` takes per-example gradients (a leading batch axis on
    every leaf), as ``optax.contrib.dpsgd``.

    Args:
      learning_rate: the learning rate or a schedule.
      l2_norm_clip: the per-example clipping norm (> 0).
      noise_multiplier: noise standard deviation relative to the clipping norm (>= 0).
      seed: seed of the noise key (int >= 0).
      momentum: heavy-ball momentum in [0, 1), or ``None`` for plain SGD.
      nesterov: use Nesterov momentum.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; the state of the chain holds
      :class:`DPAggregateState`, the momentum trace (if any) and the schedule count.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda w, x, y: (x @ w - y) ** 2
      >>> x, y = jnp.ones((8, 2)), jnp.ones(8)
      >>> tx = optlab.dpsgd(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=0.1)
      >>> w = jnp.zeros(2)
      >>> state = tx.init(w)
      >>> per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(w, x, y)
      >>> updates, state = tx.update(per_example, state, w)
      >>> updates.shape
      (2,)

    References:
      Abadi et al., `Deep Learning with Differential Privacy
      <https://arxiv.org/abs/1607.00133>`_, 2016
    """
    _base.check_learning_rate("dpsgd", learning_rate)
    _base.check_positive("dpsgd", l2_norm_clip=l2_norm_clip)
    _base.check_nonnegative("dpsgd", noise_multiplier=noise_multiplier)
    _base.check_int("dpsgd", minimum=0, seed=seed)
    if momentum is not None:
        _base.check_decay("dpsgd", momentum=momentum)
    return _chain(
        "dpsgd",
        ("dp_aggregate", _dp_aggregate(l2_norm_clip, noise_multiplier, seed)),
        None if momentum is None else ("trace", optax.trace(decay=momentum, nesterov=nesterov)),
        ("scale_by_learning_rate", _lr(learning_rate)),
        lead_axes=1,  # per-example gradients
    )


# ---------------------------------------------------------------------------
# Step-size rules and parameter-free optimizers (optlab/_step_sizes.py)
# ---------------------------------------------------------------------------


__all__ += [
    "adagrad_norm",
    "adago",
    "sps",
    "alr_smag",
    "dog",
    "dowg",
    "prodigy",
    "schedule_free_sgd",
    "schedule_free_adamw",
]


def _descend() -> optax.GradientTransformation:
    """The final sign flip of optimizers whose stages choose the step size themselves."""
    return optax.scale(-1.0)


_VALUE_HOW = (
    "`tx.update(grads, state, params, value=loss)` with the loss at `params`"
    " (`jax.value_and_grad`); with Flax NNX, `optimizer.update(model, grads,"
    " value=loss)`."
)


def adagrad_norm(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-7,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    granularity: str = "global",
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGrad-Norm: SGD with the step :math:`\eta / b_t`, :math:`b_t^2 = b_0^2 + \sum \|g\|^2`.

    :func:`optlab.scale_by_adagrad_norm` (one scalar for the whole tree by default;
    ``granularity="leaf"`` or ``"coordinate"`` for one per leaf or per coordinate,
    the latter being AdaGrad), decoupled weight decay, then the learning rate. Its
    step sizes never increase, and it converges for any :math:`\eta` on smooth
    problems, adapting to the noise level.

    Args:
      learning_rate: :math:`\eta` (>= 0) or a schedule.
      initial_accumulator_value: :math:`b_0^2` (>= 0).
      eps: added inside the square root (>= 0).
      weight_decay: decoupled weight decay (>= 0).
      granularity: ``"global"``, ``"leaf"`` or ``"coordinate"``.
      mask: where to apply weight decay.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: one float32 scalar (global).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adagrad_norm(1.0, eps=0.0)
      >>> g = {"w": jnp.array([3.0, 4.0])}
      >>> updates, _ = tx.update(g, tx.init(g), g)
      >>> updates["w"]  # -g / ||g||
      Array([-0.6, -0.8], dtype=float32)

    References:
      Attia and Koren, `SGD with AdaGrad Stepsizes: Full Adaptivity with High
      Probability to Unknown Parameters, Unbounded Gradients and Affine Variance
      <https://arxiv.org/abs/2302.08783>`_, 2023. Ward, Wu and Bottou, `AdaGrad
      Stepsizes: Sharp Convergence Over Nonconvex Landscapes
      <https://arxiv.org/abs/1806.01811>`_, 2019.
    """
    _check(
        "adagrad_norm",
        learning_rate,
        nonnegative={
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
            "weight_decay": weight_decay,
        },
    )
    if granularity not in _step_sizes.GRANULARITIES:
        raise ValueError(
            f"`optlab.adagrad_norm`: `granularity` must be one of"
            f" {_step_sizes.GRANULARITIES}, got granularity={granularity!r}."
        )
    return _chain(
        "adagrad_norm",
        (
            "scale_by_adagrad_norm",
            _step_sizes._adagrad_norm(initial_accumulator_value, eps, granularity),
        ),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def adago(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.95,
    gamma: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-3,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    *,
    nesterov: bool = True,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.999,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: optax.ScalarOrSchedule = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGO: Muon's direction with an AdaGrad-norm step per matrix; AdamW elsewhere.

    2-D leaves: :func:`optlab.scale_by_adago` (momentum, Newton-Schulz
    orthogonalization, times :math:`\max(\epsilon, \min(\|G\|, \gamma) / v_t)` with
    :math:`v_t^2 = v_{t-1}^2 + \min(\|G\|^2, \gamma^2)`), Muon's
    :math:`\sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}` scale, decoupled weight
    decay, the learning rate. Other leaves: :func:`optlab.adamw` with the ``adam_*``
    arguments. The split is :func:`optlab.muon`'s (``optax.partition`` by ``ndim``).
    The floor is applied before the learning rate (:math:`\eta \max(\epsilon, \cdot)`),
    the reference's :math:`\max(\epsilon, \eta\,\cdot)` with :math:`\epsilon` rescaled.

    Args:
      learning_rate: :math:`\eta` (>= 0) or a schedule.
      b1: momentum decay of the matrices (in [0, 1)).
      gamma: clipping level of the gradient norms (> 0).
      eps: the smallest scalar step before the learning rate (>= 0).
      initial_accumulator_value: :math:`v_0^2` (>= 0).
      ns_steps: Newton-Schulz iterations (int >= 1).
      ns_coeffs: Newton-Schulz coefficients.
      weight_decay: decoupled weight decay of the matrices (>= 0).
      weight_decay_mask: where to decay among the matrices.
      nesterov: Nesterov momentum (both parts).
      adam_b1: AdamW's first-moment decay for the other leaves.
      adam_b2: AdamW's second-moment decay.
      adam_eps: AdamW's epsilon.
      adam_weight_decay: AdamW's decoupled weight decay.
      adam_learning_rate: AdamW's learning rate (None: ``learning_rate``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: one momentum buffer and one
      float32 scalar per matrix; AdamW's two moments for the other leaves.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> tx = optlab.adago(0.02)
      >>> params = {"w": jnp.zeros((8, 16)), "b": jnp.zeros(16)}
      >>> g = {"w": jax.random.normal(jax.random.key(0), (8, 16)), "b": jnp.ones(16)}
      >>> updates, state = tx.update(g, tx.init(params), params)
      >>> updates["w"].shape
      (8, 16)

    References:
      Zhang, Liu and Schaeffer, `AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal
      Updates <https://arxiv.org/abs/2509.02981>`_, 2025.
    """
    _check(
        "adago",
        learning_rate,
        decays={"b1": b1, "adam_b1": adam_b1, "adam_b2": adam_b2},
        nonnegative={
            "eps": eps,
            "initial_accumulator_value": initial_accumulator_value,
            "weight_decay": weight_decay,
            "adam_eps": adam_eps,
            "adam_weight_decay": adam_weight_decay,
        },
        positive={"gamma": gamma},
    )
    check_newton_schulz("adago", ns_steps, ns_coeffs, 1e-7)
    adam = _adam(adam_b1, adam_b2, adam_eps, nesterov=nesterov)
    others = _adamw_elsewhere("adago", adam, adam_weight_decay, adam_learning_rate, learning_rate)
    matrices = optax.named_chain(
        (
            "scale_by_adago",
            _step_sizes._scale_by_adago(
                b1, gamma, eps, initial_accumulator_value, ns_steps, ns_coeffs, nesterov
            ),
        ),
        ("scale_by_muon_shape", _scale_by_muon_shape()),
        ("add_decayed_weights", _decay(weight_decay, weight_decay_mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )
    return _chain("adago", ("partition", _muon_partition(matrices, others)))


def sps(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    f_star: jax.typing.ArrayLike = 0.0,
    c: jax.typing.ArrayLike = 0.5,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""SPS_max: SGD with the stochastic Polyak step, capped at ``learning_rate``.

    Step :math:`\gamma_t = \min\big((f_i(x_t) - f^*) / (c \|g_t\|^2 + \epsilon),
    \gamma_b\big)` (and >= 0) with :math:`\gamma_b` = ``learning_rate``:
    :func:`optlab.scale_by_sps` then a sign flip. Needs ``value`` (the mini-batch
    loss) in ``update``. Best where the model can interpolate the data
    (:math:`f^* = 0`).

    Args:
      learning_rate: the cap :math:`\gamma_b` (>= 0) or a schedule.
      f_star: a lower bound of the loss.
      c: the Polyak constant (> 0).
      eps: added to the denominator (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> loss = lambda p: jnp.sum(p ** 2)
      >>> tx = optlab.sps(learning_rate=10.0, c=1.0)
      >>> params = jnp.array([1.0, 2.0])
      >>> value, g = jax.value_and_grad(loss)(params)
      >>> updates, _ = tx.update(g, tx.init(params), params, value=value)
      >>> updates  # step 5 / 20
      Array([-0.5, -1. ], dtype=float32)

    References:
      Loizou, Vaswani, Laradji and Lacoste-Julien, `Stochastic Polyak Step-size for SGD:
      An Adaptive Learning Rate for Fast Convergence <https://arxiv.org/abs/2002.10542>`_,
      2021.
    """
    _check("sps", learning_rate, nonnegative={"eps": eps}, positive={"c": c})
    _base.check_finite("sps", f_star=f_star)
    return _chain(
        "sps",
        ("scale_by_sps", _step_sizes._sps("sps", learning_rate, f_star, c, eps, 0.0)),
        ("flip_sign", _descend()),
        needs={"value": _VALUE_HOW},
    )


def alr_smag(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    momentum: jax.typing.ArrayLike = 0.9,
    f_star: jax.typing.ArrayLike = 0.0,
    c: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""ALR-SMAG: heavy-ball momentum with a Polyak step on the momentum.

    :math:`d_t = \beta d_{t-1} + g_t`, :math:`\tau_t = \min\big(\gamma_b, (f_i(x_t) -
    f^*) / (c \|d_t\|^2)\big)` (and >= 0), :math:`x_{t+1} = x_t - \tau_t (d_t +
    \lambda x_t)` with :math:`\gamma_b` = ``learning_rate`` and decoupled weight decay
    :math:`\lambda` scaled by the same step: ``optax.trace`` (through
    :func:`optlab.scale_by_momentum`), :func:`optlab.scale_by_sps`, a sign flip.
    Needs ``value``. Follows the MoMo authors' reference code of the method.

    Args:
      learning_rate: the cap :math:`\gamma_b` (>= 0) or a schedule.
      momentum: :math:`\beta` (in [0, 1)).
      f_star: a lower bound of the loss.
      c: the Polyak constant (> 0).
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay (>= 0), scaled by the step.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: the momentum (one buffer).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> loss = lambda p: jnp.sum(p ** 2)
      >>> tx = optlab.alr_smag(learning_rate=10.0)
      >>> params = jnp.array([1.0, 2.0])
      >>> value, g = jax.value_and_grad(loss)(params)
      >>> updates, _ = tx.update(g, tx.init(params), params, value=value)
      >>> updates  # first step: d = g, tau = 5 / 20
      Array([-0.5, -1. ], dtype=float32)

    References:
      Wang, Johansson and Zhang, `Generalized Polyak Step Size for First Order
      Optimization with Momentum <https://arxiv.org/abs/2305.12939>`_, ICML 2023.
    """
    _check(
        "alr_smag",
        learning_rate,
        decays={"momentum": momentum},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
        positive={"c": c},
    )
    _base.check_finite("alr_smag", f_star=f_star)
    return _chain(
        "alr_smag",
        ("trace", _scale_by_momentum(momentum, False, None)),
        ("scale_by_sps", _step_sizes._sps("alr_smag", learning_rate, f_star, c, eps, weight_decay)),
        ("flip_sign", _descend()),
        needs={"value": _VALUE_HOW},
    )


def dog(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    init_step: tuple[str, float] = ("heuristic", 1e-6),
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""DoG: SGD with step = max distance from x_0 / sqrt(sum of squared gradient norms).

    ``learning_rate`` is a multiplier (1 by default: no tuning). Weight decay (added to
    the gradient, as ``optax.contrib.dog``), then :func:`optlab.scale_by_dog`, then the
    learning rate. Numerically the same as ``optax.contrib.dog``. The reference recommends
    evaluating an average of the
    iterates (e.g. wrap it in :func:`optlab.ema_params`).

    Args:
      learning_rate: multiplier of the DoG step (>= 0) or a schedule.
      init_step: ``(kind, value)``, see :func:`optlab.scale_by_dog`.
      eps: added to the sum of squared norms (>= 0).
      weight_decay: L2 weight decay added to the gradient (>= 0).
      mask: where to apply weight decay.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: a copy of the initial params
      and three scalars.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = optlab.dog()
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for _ in range(200):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(loss(params) < 1e-2)
      True

    References:
      Ivgi, Hinder and Carmon, `DoG is SGD's Best Friend: A Parameter-Free Dynamic Step
      Size Schedule <https://arxiv.org/abs/2302.12022>`_, 2023.
    """
    _check("dog", learning_rate, nonnegative={"eps": eps, "weight_decay": weight_decay})
    _step_sizes._check_init_step("dog", init_step)
    return _chain(
        "dog",
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_dog", _step_sizes._scale_by_dog(init_step, eps)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def dowg(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    init_estim_sq_dist: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-4,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""DoWG: DoG with distance-weighted gradient sums; ``learning_rate`` is a multiplier.

    Weight decay (added to the gradient), :func:`optlab.scale_by_dowg`, the learning
    rate. Numerically the same as ``optax.contrib.dowg``.

    Args:
      learning_rate: multiplier of the DoWG step (>= 0) or a schedule.
      init_estim_sq_dist: initial squared-distance estimate (> 0; default ``eps``).
      eps: added to the denominator (>= 0).
      weight_decay: L2 weight decay added to the gradient (>= 0).
      mask: where to apply weight decay.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = optlab.dowg()
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(loss(params) < 1e-2)
      True

    References:
      Khaled, Mishchenko and Jin, `DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method <https://arxiv.org/abs/2305.16284>`_, 2023.
    """
    _check("dowg", learning_rate, nonnegative={"eps": eps, "weight_decay": weight_decay})
    if init_estim_sq_dist is not None:
        _base.check_positive("dowg", init_estim_sq_dist=init_estim_sq_dist)
    return _chain(
        "dowg",
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_dowg", _step_sizes._scale_by_dowg(init_estim_sq_dist, eps)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def prodigy(
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
    r"""Prodigy: Adam whose learning rate is estimated online (parameter-free).

    ``learning_rate`` is a multiplier (1 by default, or a schedule such as cosine decay
    from 1). :func:`optlab.scale_by_prodigy` then a sign flip. The same numbers as
    ``optax.contrib.prodigy`` (whose ``betas`` are ``b1``, ``b2`` here).

    Args:
      learning_rate: multiplier of the estimated step (>= 0) or a schedule.
      b1: Adam's first-moment decay (in [0, 1)).
      b2: Adam's second-moment decay (in [0, 1)).
      beta3: decay of the D estimate's sums (default ``sqrt(b2)``).
      eps: Adam's epsilon (>= 0).
      estim_lr0: initial under-estimate of the step (> 0).
      estim_lr_coef: multiplier of the estimate (> 0).
      weight_decay: decoupled weight decay (>= 0).
      safeguard_warmup: leave the schedule out of the estimate's denominator.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: four buffers like the params.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.prodigy()
      >>> params = {"w": jnp.ones(3)}
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> bool(jnp.all(updates["w"] < 0))
      True

    References:
      Mishchenko and Defazio, `Prodigy: An Expeditiously Adaptive Parameter-Free
      Learner <https://arxiv.org/abs/2306.06101>`_, 2023.
    """
    _check(
        "prodigy",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
        positive={"estim_lr0": estim_lr0, "estim_lr_coef": estim_lr_coef},
    )
    if beta3 is not None:
        _base.check_decay("prodigy", beta3=beta3)
    return _chain(
        "prodigy",
        (
            "scale_by_prodigy",
            _step_sizes._prodigy(
                "prodigy",
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
        ),
        ("flip_sign", _descend()),
    )


def _sf_learning_rate(name: str, learning_rate: Any, warmup_steps: int | None):
    _base.check_learning_rate(name, learning_rate)
    if warmup_steps is None or warmup_steps == 0:
        return learning_rate
    _base.check_int(name, minimum=0, warmup_steps=warmup_steps)
    return optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps)


def schedule_free_sgd(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Schedule-free SGD: no decay schedule; evaluate at ``optlab.averaged_params(state)``.

    :func:`optlab.schedule_free` around ``add_decayed_weights`` + ``optax.sgd`` (no
    momentum: ``b1`` interpolates between the average and the SGD iterate instead).
    ``warmup_steps`` adds a linear warmup from 0. Same numbers as
    ``optax.contrib.schedule_free_sgd`` with a constant learning rate.

    Args:
      learning_rate: SGD's learning rate (>= 0).
      warmup_steps: linear warmup length (int >= 0) or None.
      b1: interpolation (in [0, 1)).
      weight_decay: L2 weight decay added to the gradient (>= 0).
      weight_lr_power: exponent of the learning rate in the averaging weights (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: two buffers like the params.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = optlab.schedule_free_sgd(0.1)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for _ in range(100):
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(loss(optlab.averaged_params(state)) < 1e-2)
      True

    References:
      Defazio et al., `The Road Less Scheduled <https://arxiv.org/abs/2405.15682>`_,
      2024.
    """
    _check(
        "schedule_free_sgd",
        learning_rate,
        decays={"b1": b1},
        nonnegative={"weight_decay": weight_decay, "weight_lr_power": weight_lr_power},
    )
    lr = _sf_learning_rate("schedule_free_sgd", learning_rate, warmup_steps)
    base = optax.named_chain(
        ("add_decayed_weights", _decay(weight_decay, None)),
        ("scale_by_learning_rate", _lr(lr)),
    )
    return _chain(
        "schedule_free_sgd",
        (
            "schedule_free",
            _step_sizes._schedule_free("schedule_free_sgd", base, lr, b1, weight_lr_power),
        ),
    )


def schedule_free_adamw(
    learning_rate: optax.ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Schedule-free AdamW: no decay schedule; evaluate at ``optlab.averaged_params(state)``.

    :func:`optlab.schedule_free` around Adam without momentum (``optax.scale_by_rms``
    with bias correction and ``eps`` outside the root), decoupled weight decay and the
    learning rate. Same numbers as ``optax.contrib.schedule_free_adamw`` with a
    constant learning rate.

    Args:
      learning_rate: the learning rate (>= 0).
      warmup_steps: linear warmup length (int >= 0) or None.
      b1: interpolation (in [0, 1)).
      b2: second-moment decay (in [0, 1)).
      eps: Adam's epsilon (>= 0).
      weight_decay: decoupled weight decay (>= 0).
      weight_lr_power: exponent of the learning rate in the averaging weights (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: three buffers like the params.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> loss = lambda p: jnp.sum((p - 3.0) ** 2)
      >>> tx = optlab.schedule_free_adamw(0.5)
      >>> params = jnp.zeros(2)
      >>> updates, state = tx.update(jax.grad(loss)(params), tx.init(params), params)
      >>> print([f"{x:.3f}" for x in optlab.averaged_params(state)])  # Adam's first step: lr
      ['0.500', '0.500']

    References:
      Defazio et al., `The Road Less Scheduled <https://arxiv.org/abs/2405.15682>`_,
      2024.
    """
    _check(
        "schedule_free_adamw",
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay, "weight_lr_power": weight_lr_power},
    )
    lr = _sf_learning_rate("schedule_free_adamw", learning_rate, warmup_steps)
    base = optax.named_chain(
        (
            "scale_by_rms",
            _in_float32(
                optax.scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True)
            ),
        ),
        ("add_decayed_weights", _decay(weight_decay, None)),
        ("scale_by_learning_rate", _lr(lr)),
    )
    return _chain(
        "schedule_free_adamw",
        (
            "schedule_free",
            _step_sizes._schedule_free("schedule_free_adamw", base, lr, b1, weight_lr_power),
        ),
    )


# ---------------------------------------------------------------------------
# Memory-efficient state (optlab/_memory_efficient.py)
# ---------------------------------------------------------------------------

__all__ += ["adam_mini", "badam", "frugal", "galore", "online_subspace_descent", "subset_norm_adam"]


def _projected_adamw(
    name, stage, learning_rate, b1, b2, eps, weight_decay, decay_mask, rank, projector, every, **kw
):
    """GaLore's chain: Adam on rank-``r`` projections of the matrices (``_me._projected``
    with ``kw``), decoupled weight decay in the full space, the learning rate."""
    return _chain(
        name,
        (stage, _me._projected(name, _adam(b1, b2, eps), rank, projector, every, **kw)),
        ("add_decayed_weights", _decay(weight_decay, decay_mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def subset_norm_adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    subset_size: int | None = None,
    momentum_rank: int | None = None,
    update_every: int = 200,
) -> optax.GradientTransformationExtraArgs:
    r"""Subset-Norm Adam: one second moment per subset of each leaf, optional subspace momentum.

    :func:`optlab.scale_by_subset_norm` (second moment reduced over the largest axis of
    each leaf, or over groups of ``subset_size``; with ``momentum_rank`` the momentum
    lives in a rank-``r`` SVD subspace of each matrix), then decoupled weight decay and
    the learning rate.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      subset_size: Python int >= 1, or None (largest-axis subsets).
      momentum_rank: Python int >= 1 for Subspace-Momentum, or None (full momentum).
      update_every: refresh period of the momentum subspace.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: a full first moment (or a
      rank-``r`` one plus the projector) and :math:`O(\sqrt d)` second moments per leaf.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.subset_norm_adam(1e-3)
      >>> params = {"w": jnp.ones((4, 16))}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"].shape, jnp.round(updates["w"][0, :2], 6))  # first step: -lr sign(g)
      (4, 16) [-0.001 -0.001]

    References:
      Nguyen, Nguyen and Ene, `Efficient Adaptive Optimization via Subset-Norm and
      Subspace-Momentum <https://arxiv.org/abs/2411.07120>`_, 2024.
    """
    name = "subset_norm_adam"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    if subset_size is not None:
        _base.check_int(name, subset_size=subset_size)
    if momentum_rank is not None:
        _me.check_projection(name, momentum_rank, "svd", update_every, 2, rank_name="momentum_rank")
    return _chain(
        name,
        (
            "scale_by_subset_norm",
            _me._subset_norm(
                name, b1, b2, eps, 0.0, subset_size, momentum_rank, "svd", update_every, 2
            ),
        ),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def galore(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: jax.typing.ArrayLike = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    projector: str = "svd",
    projection_mask: MaskOrFn = None,
    min_dim_size: int = 2,
) -> optax.GradientTransformationExtraArgs:
    r"""GaLore: Adam with rank-``r`` moments in the top singular subspace of each gradient.

    :func:`optlab.scale_by_projected_adam` with the SVD projector refreshed every
    ``update_proj_gap`` steps (``projector="dct"`` for the SVD-free variant), then
    decoupled weight decay in the full space and the learning rate. Same numbers as
    :func:`optax.contrib.galore` (which projects the larger side too) for its default
    ``base_optimizer`` and 2-D leaves; matrices not selected by ``projection_mask`` or
    with a side below ``min_dim_size``, and non-matrix leaves, take full Adam steps.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      rank: Python int >= 1, clamped per matrix to its smaller side.
      update_proj_gap: steps between SVDs (Python int >= 1).
      scale: GaLore's :math:`\alpha` (> 0; the paper uses 0.25 with a larger rate).
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: Adam's epsilon (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      projector: ``"svd"`` or ``"dct"`` (see :func:`optlab.scale_by_projected_adam`).
      projection_mask: which matrices to project (None: all).
      min_dim_size: smaller matrices take full Adam steps.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: per projected ``m x n``
      matrix a ``max(m, n) x r`` projector and two ``r x min(m, n)`` moments.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.galore(1e-3, rank=2)
      >>> params = {"w": jnp.ones((8, 4)), "b": jnp.ones((4,))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params)
      >>> print(updates["w"].shape)
      (8, 4)

    References:
      Zhao et al., `GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection
      <https://arxiv.org/abs/2403.03507>`_, 2024.
    """
    name = "galore"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
        positive={"scale": scale},
    )
    _me.check_projection(
        name, rank, projector, update_proj_gap, min_dim_size, every_name="update_proj_gap"
    )
    return _projected_adamw(
        name, "scale_by_projected_adam", learning_rate, b1, b2, eps, weight_decay, mask,
        rank, projector, update_proj_gap,
        mask=projection_mask, min_dim_size=min_dim_size, scale=scale,
    )  # fmt: skip


def online_subspace_descent(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    update_every: int = 1,
    projector_lr: jax.typing.ArrayLike = 0.1,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    projection_mask: MaskOrFn = None,
    min_dim_size: int = 2,
) -> optax.GradientTransformationExtraArgs:
    r"""Online Subspace Descent: GaLore whose projector follows an online PCA, no SVD after step 0.

    :func:`optlab.scale_by_projected_adam` with ``projector="online_pca"``: the
    projector starts from the first gradient's SVD and then takes one gradient step of
    size ``projector_lr`` on :math:`\|G - PP^\top G\|^2 / \|G\|^2` every
    ``update_every`` steps (re-orthonormalized by QR); then decoupled weight decay and
    the learning rate.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      rank: Python int >= 1, clamped per matrix to its smaller side.
      update_every: steps between projector updates (Python int >= 1).
      projector_lr: step size of the projector update (> 0).
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: Adam's epsilon (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      projection_mask: which matrices to project (None: all).
      min_dim_size: smaller matrices take full Adam steps.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: as :func:`optlab.galore`.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.online_subspace_descent(1e-3, rank=2)
      >>> params = {"w": jnp.ones((8, 4))}
      >>> print(tx.init(params)["scale_by_projected_adam"].projector["w"].shape)
      (8, 2)

    References:
      Liang et al., `Memory-Efficient LLM Training with Online Subspace Descent
      <https://arxiv.org/abs/2408.12857>`_, 2024.
    """
    name = "online_subspace_descent"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
        positive={"projector_lr": projector_lr},
    )
    _me.check_projection(name, rank, "online_pca", update_every, min_dim_size)
    return _projected_adamw(
        name, "scale_by_projected_adam", learning_rate, b1, b2, eps, weight_decay, mask,
        rank, "online_pca", update_every,
        mask=projection_mask, min_dim_size=min_dim_size, projector_lr=projector_lr,
    )  # fmt: skip


def frugal(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    update_every: int = 200,
    residual_scale: jax.typing.ArrayLike = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    projector: str = "svd",
    residual: str = "sign",
    projection_mask: MaskOrFn = None,
    min_dim_size: int = 2,
) -> optax.GradientTransformationExtraArgs:
    r"""FRUGAL: Adam in a rank-``r`` subspace plus state-free signSGD on the residual.

    :func:`optlab.scale_by_frugal`, then decoupled weight decay and the learning rate:
    the step is :math:`-\eta\,(P\,\mathrm{Adam}(P^\top G) + \rho\,
    \mathrm{sign}((I-PP^\top)G) + \lambda w)` for projected matrices (:math:`\rho` =
    ``residual_scale``), a full AdamW step elsewhere.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      rank: Python int >= 1, clamped per matrix to its smaller side.
      update_every: projector refresh period (Python int >= 1).
      residual_scale: scale of the state-free residual step (>= 0).
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: Adam's epsilon (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      projector: ``"svd"``, ``"dct"`` or ``"online_pca"``.
      residual: ``"sign"`` (signSGD) or ``"sgd"``.
      projection_mask: which matrices to project (None: all).
      min_dim_size: smaller matrices take full Adam steps.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: as :func:`optlab.galore`;
      the residual path keeps none.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.frugal(1e-3, rank=1)
      >>> params = {"w": jnp.arange(8.0).reshape(4, 2)}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"].shape)
      (4, 2)

    References:
      Zmushko et al., `FRUGAL: Memory-Efficient Optimization by Reducing State Overhead
      for Scalable Training <https://arxiv.org/abs/2411.07837>`_, 2024.
    """
    name = "frugal"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay, "residual_scale": residual_scale},
    )
    _me.check_projection(name, rank, projector, update_every, min_dim_size)
    _me.check_residual(name, residual)
    return _projected_adamw(
        name, "scale_by_frugal", learning_rate, b1, b2, eps, weight_decay, mask,
        rank, projector, update_every,
        mask=projection_mask, min_dim_size=min_dim_size, residual=residual,
        residual_scale=residual_scale,
    )  # fmt: skip


def badam(
    learning_rate: optax.ScalarOrSchedule,
    switch_every: int = 50,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    blocks: Any = None,
    order: str = "ascending",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""BAdam: Adam on one block of parameters at a time (block-coordinate descent).

    :func:`optlab.scale_by_badam` then the learning rate: the active block (one per
    top-level key by default) takes ``switch_every`` Adam steps from fresh moments, every
    other block stays exactly where it is. No weight decay stage: it would move the
    inactive blocks.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      switch_every: steps per active block (Python int >= 1).
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: Adam's epsilon (>= 0).
      blocks: block labels: a tree like the params, or ``params -> labels``.
      order: ``"ascending"``, ``"descending"`` or ``"random"``.
      seed: seed of the random order (Python int).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: two flat buffers the size of
      the largest block, a step count and a PRNG key.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.badam(1e-3, switch_every=10)
      >>> params = {"a": jnp.ones((2,)), "b": jnp.ones((3,))}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["a"], 6), bool((updates["b"] == 0).all()))
      [-0.001 -0.001] True

    References:
      Luo, Yu and Li, `BAdam: A Memory Efficient Full Parameter Optimization Method for
      Large Language Models <https://arxiv.org/abs/2404.02827>`_, 2024.
    """
    name = "badam"
    _check(name, learning_rate, decays={"b1": b1, "b2": b2}, nonnegative={"eps": eps})
    _base.check_int(name, switch_every=switch_every)
    _base.check_int(name, minimum=0, seed=seed)
    _me.check_badam_order(name, order)
    return _chain(
        name,
        ("scale_by_badam", _me._badam(name, switch_every, b1, b2, eps, blocks, order, seed)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def adam_mini(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    reduce_axes: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam-mini: Adam with one second moment per parameter block, plus decoupled decay.

    :func:`optlab.scale_by_adam_mini` (one value per leaf by default; ``reduce_axes``
    for one per head or per output neuron), then decoupled weight decay and the
    learning rate. State: about half of AdamW's.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      reduce_axes: the block partition (see :func:`optlab.scale_by_adam_mini`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: a full first moment and one
      second moment per block.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adam_mini(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"].shape)
      (2,)

    References:
      Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
      <https://arxiv.org/abs/2406.16793>`_, 2024.
    """
    name = "adam_mini"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    return _chain(
        name,
        ("scale_by_adam_mini", _me._adam_mini(name, b1, b2, eps, 0.0, reduce_axes)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


# ===========================================================================
# Issue 12 (part A): plain named optimizers (no decorator); each joins the registry
# by one entry in the table of ``optlab/_registry.py``.
# ===========================================================================

__all__ += [
    "adamomentum",
    "adopt",
    "ano",
    "lion_kappa",
    "m_fac",
    "nag_gs",
    "oasis",
    "qhadam",
    "qhm",
    "scion",
    "swan",
    "yogi",
]


def adopt(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9999,
    eps: jax.typing.ArrayLike = 1e-6,
    mu_dtype: Any = None,
    *,
    use_clipping: bool = True,
    clip_exponent: jax.typing.ArrayLike = 0.25,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ADOPT: momentum of the gradient normalized by the previous second moment.

    :func:`optlab.scale_by_adopt` (clip at :math:`t^{1/4}`, the first step only sets
    :math:`v_0 = g_0^2`), then optional decoupled weight decay, times :math:`-\eta`.
    With ``weight_decay=0`` the numbers are :func:`optax.contrib.adopt`'s (tested).
    The authors' ``ADOPT(decouple=True)`` decays by :math:`1 - \eta\lambda` before each
    step *except the first* (their first call returns before the decay); here the decay
    is a stage of the chain and also applies on the first step.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: momentum decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: floor of the square root of the second moment (>= 0).
      mu_dtype: optional dtype of the momentum.
      use_clipping: clip the normalized gradient at ``step ** clip_exponent``.
      clip_exponent: exponent (>= 0) of the clipping threshold.
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: optax's
      ``ScaleByAdamState`` (two copies of the params) under the stage names.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adopt(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> u, state = tx.update(params, tx.init(params), params)
      >>> print(u["w"] == 0)  # the first step only initializes the second moment
      [ True  True]

    References:
      Taniguchi et al., `ADOPT: Modified Adam Can Converge with Any β2 with the Optimal
      Rate <https://arxiv.org/abs/2411.02853>`_, 2024.
    """
    name = "adopt"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay, "clip_exponent": clip_exponent},
    )
    return _chain(
        name,
        (
            "scale_by_adopt",
            _mom._scale_by_adopt(b1, b2, eps, use_clipping, clip_exponent, mu_dtype),
        ),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def yogi(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-3,
) -> optax.GradientTransformationExtraArgs:
    r"""Yogi: Adam with an additive, sign-controlled second-moment update.

    :math:`v_t = v_{t-1} - (1-b_2)\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2` instead of
    Adam's EMA, so :math:`v` grows or shrinks by at most :math:`(1-b_2) g_t^2`. This is
    optax's own :func:`optax.scale_by_yogi` (not rewritten) chained with the learning
    rate: same signature and numbers as :func:`optax.yogi`, plus validation, extra
    arguments and updates in the gradients' dtype.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added to the denominator (>= 0); Yogi's default is large (1e-3).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: optax's
      ``ScaleByAdamState`` (two copies of the params, started at 1e-6).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.yogi(1e-2)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> print([f"{x:.4f}" for x in u["w"]])
      ['-0.0100', '0.0100']

    References:
      Zaheer, Reddi, Sachan, Kale and Kumar, `Adaptive Methods for Nonconvex
      Optimization <https://papers.nips.cc/paper/8186-adaptive-methods-for-nonconvex-optimization>`_,
      2018.
    """
    name = "yogi"
    _check(name, learning_rate, decays={"b1": b1, "b2": b2}, nonnegative={"eps": eps})
    return _chain(
        name,
        ("scale_by_yogi", _in_float32(optax.scale_by_yogi(b1=b1, b2=b2, eps=eps))),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def adamomentum(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaMomentum: Adam whose second moment is the EMA of the squared momentum.

    :func:`optlab.scale_by_adamomentum`, decoupled weight decay, times :math:`-\eta`.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: decay of the EMA of the squared momentum in [0, 1).
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: two copies of the params.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.adamomentum(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> print([f"{x:.3f}" for x in u["w"]])  # first step: 1 / (1 - b1) = 10 per unit
      ['-0.010', '0.010']

    References:
      Wang et al., `Rethinking Adam: A Twofold Exponential Moving Average Approach
      <https://arxiv.org/abs/2106.11514>`_, 2021.
    """
    name = "adamomentum"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    return _chain(
        name,
        ("scale_by_adamomentum", _mom._scale_by_adamomentum(b1, b2, eps)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def qhm(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.999,
    nu: jax.typing.ArrayLike = 0.7,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""QHM: the step is :math:`-\eta((1-\nu) g_t + \nu m_t)`, :math:`m` the EMA of gradients.

    :func:`optlab.scale_by_qhm`, decoupled weight decay, learning rate. ``nu=1`` is
    momentum SGD (:func:`optax.sgd` with ``momentum=b1`` and learning rate
    :math:`(1-b_1)\eta`, tested); ``nu=0`` is SGD. optax has no QHM (neither in
    ``optax`` nor ``optax.contrib``).

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: momentum decay :math:`\beta` in [0, 1).
      nu: immediate discount :math:`\nu` in [0, 1].
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: one copy of the params.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.qhm(1.0, b1=0.9, nu=0.7)
      >>> params = {"w": jnp.array([1.0])}
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(u["w"], 4))
      [-0.37]

    References:
      Ma and Yarats, `Quasi-hyperbolic momentum and Adam for deep learning
      <https://arxiv.org/abs/1810.06801>`_, 2019.
    """
    name = "qhm"
    _check(name, learning_rate, decays={"b1": b1}, nonnegative={"weight_decay": weight_decay})
    _base.check_unit_interval(name, nu=nu)
    return _chain(
        name,
        ("scale_by_qhm", _mom._scale_by_qhm(b1, nu)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def qhadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.995,
    b2: jax.typing.ArrayLike = 0.999,
    nu1: jax.typing.ArrayLike = 0.7,
    nu2: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""QHAdam: quasi-hyperbolic averaging in both of Adam's moments.

    :func:`optlab.scale_by_qhadam`, decoupled weight decay, learning rate.
    ``nu1=nu2=1`` is AdamW (tested against :func:`optax.adamw`).

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      nu1: immediate discount of the first moment in [0, 1].
      nu2: immediate discount of the second moment in [0, 1].
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: Adam's (two copies of the
      params).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.qhadam(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> print([f"{x:.4f}" for x in u["w"]])
      ['-0.0010', '0.0010']

    References:
      Ma and Yarats, `Quasi-hyperbolic momentum and Adam for deep learning
      <https://arxiv.org/abs/1810.06801>`_, 2019.
    """
    name = "qhadam"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    _base.check_unit_interval(name, nu1=nu1, nu2=nu2)
    return _chain(
        name,
        ("scale_by_qhadam", _mom._scale_by_qhadam(b1, b2, nu1, nu2, eps)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def ano(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.92,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Ano: the sign of the momentum times the magnitude of the current gradient.

    :func:`optlab.scale_by_ano` (Yogi-style second moment), decoupled weight decay,
    learning rate.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: momentum decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added to the denominator (>= 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: two copies of the params.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.ano(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> print(u["w"])
      [-0.001  0.001]

    References:
      Kegreisz, `Ano: Faster is Better in Noisy Landscapes
      <https://arxiv.org/abs/2508.18258>`_, 2025.
    """
    name = "ano"
    _check(
        name,
        learning_rate,
        decays={"b1": b1, "b2": b2},
        nonnegative={"eps": eps, "weight_decay": weight_decay},
    )
    return _chain(
        name,
        ("scale_by_ano", _mom._scale_by_ano(b1, b2, eps)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def nag_gs(
    learning_rate: optax.ScalarOrSchedule,
    mu: jax.typing.ArrayLike = 1.0,
    gamma: jax.typing.ArrayLike = 1.5,
) -> optax.GradientTransformationExtraArgs:
    r"""NAG-GS: semi-implicit Gauss-Seidel integration of the accelerated gradient flow.

    The single stage :func:`optlab.scale_by_nag_gs` (its step size enters
    nonlinearly, so it takes the learning rate itself and returns the update to add);
    the authors' defaults ``mu=1, gamma=1.5``. The first call does not move (it only
    records :math:`v_0 = x_0`).

    Args:
      learning_rate: the step :math:`\alpha > 0`, or a schedule.
      mu: :math:`\mu > 0`.
      gamma: initial :math:`\gamma_0 > 0`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.
      State: the velocity (one copy of the params), :math:`\gamma` and a count.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.nag_gs(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> state = tx.init(params)
      >>> u, state = tx.update(params, state, params)  # v_0 = x_0: no move
      >>> u, state = tx.update(params, state, params)
      >>> print([f"{x:.4f}" for x in u["w"]])
      ['-0.0058', '0.0117']

    References:
      Leplat et al., `NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic
      Optimizer <https://arxiv.org/abs/2209.14937>`_, 2022.
    """
    name = "nag_gs"
    _base.check_learning_rate(name, learning_rate)
    if not callable(learning_rate):
        _base.check_positive(name, learning_rate=learning_rate)
    _base.check_positive(name, mu=mu, gamma=gamma)
    return _chain(
        name,
        ("scale_by_nag_gs", _mom._scale_by_nag_gs(learning_rate, mu, gamma)),
    )


def lion_kappa(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    kappa_grad: Any = "l1",
    weight_decay: optax.ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Lion-K: Lion with a pluggable :math:`\nabla\mathcal{K}` in place of sign.

    :func:`optlab.scale_by_lion_kappa`, decoupled weight decay :math:`\lambda`,
    learning rate: the iterates solve :math:`\min f(x) + \mathcal{K}^*(x)/\lambda`.
    ``kappa_grad="l1"`` is Lion (same numbers as :func:`optax.lion`, tested).

    Args:
      learning_rate: step size (>= 0) or a schedule.
      b1: interpolation weight in [0, 1).
      b2: momentum decay in [0, 1).
      kappa_grad: ``"l1"``, ``"l2"`` or a callable ``x -> grad K(x)``.
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: one copy of the params.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.lion_kappa(1e-2, kappa_grad="l2", weight_decay=0.0)
      >>> params = {"w": jnp.array([3.0, -4.0])}
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> print(u["w"])
      [-0.006  0.008]

    References:
      Chen, Liang, Liu and Liu, `Lion Secretly Solves Constrained Optimization: As
      Lyapunov Predicts <https://arxiv.org/abs/2310.05898>`_, 2023.
    """
    name = "lion_kappa"
    _check(
        name, learning_rate, decays={"b1": b1, "b2": b2}, nonnegative={"weight_decay": weight_decay}
    )
    _mom._check_kappa_grad(name, kappa_grad)
    return _chain(
        name,
        ("scale_by_lion_kappa", _mom._scale_by_lion_kappa(b1, b2, kappa_grad)),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def scion(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,
    scale: jax.typing.ArrayLike = 1.0,
    norm: Any = "auto",
    *,
    constrained: bool = True,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""Scion: (un)constrained stochastic conditional gradient with per-layer norm LMOs.

    With :math:`d_k = \beta d_{k-1} + (1-\beta) g_k` (``momentum`` :math:`\beta`), the
    LMO direction :math:`s_k` of :func:`optlab.scale_by_lmo` (per-layer ``norm``) and
    radius :math:`\rho` (``scale``), the step with rate :math:`\gamma` is

    .. math::
        x_{k+1} = (1 - \gamma)\, x_k - \gamma\rho\, s_k \quad \text{(constrained, SCG)},
        \qquad x_{k+1} = x_k - \gamma\rho\, s_k \quad \text{(unconstrained, uSCG)}.

    The constrained step is a convex combination of :math:`x_k` and the point
    :math:`-\rho s_k` of the norm ball of radius :math:`\rho`: for :math:`\gamma \le 1`
    an iterate inside the ball stays inside (tested). As a chain: EMA momentum,
    ``scale_by_lmo``, ``optax.scale(rho)``, decoupled weight decay of rate exactly 1
    (the :math:`-\gamma x_k` term; constrained only), learning rate.

    The authors' ``momentum`` argument is one minus this one (their ``momentum=0.1`` is
    ``momentum=0.9`` here; their default ``1.0``, no averaging, is ``momentum=0``);
    their per-group ``scale`` is ``scale`` here, one value for all leaves (give
    different radii with ``optax.partition``).

    Args:
      learning_rate: :math:`\gamma` (>= 0) or a schedule; in [0, 1] for the constrained
        variant.
      momentum: EMA decay :math:`\beta` of the gradients, in [0, 1).
      scale: the radius :math:`\rho > 0`.
      norm: the per-leaf norm of :func:`optlab.scale_by_lmo` (``"auto"``: spectral for
        matrices, RMS for vectors).
      constrained: the constrained (SCG, default, as the authors' code) or
        unconstrained (uSCG) step.
      ns_steps: Newton-Schulz iterations for spectral norms.
      ns_coeffs: Newton-Schulz coefficients.
      eps: added to norms before dividing (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; the constrained variant needs
      ``params``. State: the momentum (one copy of the params).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scion(0.1, momentum=0.0, scale=2.0, norm="sign")
      >>> params = {"w": jnp.array([[1.0, -1.0], [0.0, 0.5]])}
      >>> u, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
      >>> print(params["w"] + u["w"])  # 0.9 * w - 0.1 * 2 * sign(g) / 2
      [[ 0.8  -1.  ]
       [-0.1   0.35]]

    References:
      Pethick et al., `Training Deep Learning Models with Norm-Constrained LMOs
      <https://arxiv.org/abs/2502.07529>`_, 2025.
    """
    name = "scion"
    _check(
        name,
        learning_rate,
        decays={"momentum": momentum},
        nonnegative={"eps": eps},
        positive={"scale": scale},
    )
    if constrained and _base.is_concrete_number(learning_rate) and learning_rate > 1:
        raise ValueError(
            f"`optlab.{name}`: the constrained step (1 - lr) x - lr * scale * s needs"
            f" `learning_rate` in [0, 1], got learning_rate={learning_rate!r}."
        )
    _base.check_int(name, ns_steps=ns_steps)
    _norm._check_norm_spec(name, norm)
    return _chain(
        name,
        ("ema", _in_float32(optax.ema(momentum, debias=False))),
        ("scale_by_lmo", _norm._scale_by_lmo(name, norm, ns_steps, ns_coeffs, eps)),
        ("scale", _in_float32(optax.scale(scale))),
        ("add_decayed_weights", _decay(1.0, None) if constrained else optax.identity()),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def swan(
    learning_rate: optax.ScalarOrSchedule,
    ns_steps: int = 10,
    ns_coeffs: tuple[float, float, float] = (1.5, -0.5, 0.0),
    rescale: bool = True,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.999,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: optax.ScalarOrSchedule = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""SWAN: stateless SGD on standardized and whitened gradients (matrices), AdamW else.

    2-D leaves: :func:`optlab.scale_by_swan` (GradNorm then GradWhitening, no state),
    decoupled weight decay, learning rate. Other leaves (biases, gains, scalars, conv
    kernels): AdamW with the ``adam_*`` arguments (the paper keeps Adam for them; it
    also uses Adam for the embedding and output matrices: route those with your own
    ``optax.partition`` if needed). The split is by ``ndim``, as :func:`optlab.muon`.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      ns_steps: Newton-Schulz iterations of the whitening.
      ns_coeffs: Newton-Schulz coefficients (default: the exact cubic iteration).
      rescale: restore the norm of the standardized gradient after whitening.
      weight_decay: decoupled weight decay of the matrices (>= 0) or a schedule.
      adam_b1: AdamW's first-moment decay for the other leaves.
      adam_b2: AdamW's second-moment decay.
      adam_eps: AdamW's ``eps``.
      adam_weight_decay: AdamW's decoupled weight decay.
      adam_learning_rate: AdamW's learning rate (None: ``learning_rate``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: none for the matrices;
      AdamW's two copies of the other leaves.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> tx = optlab.swan(1e-3)
      >>> params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
      >>> g = {"w": jax.random.normal(jax.random.key(0), (8, 4)), "b": jnp.ones(4)}
      >>> u, _ = tx.update(g, tx.init(params), params)
      >>> print(u["w"].shape, [f"{x:.4f}" for x in u["b"]])
      (8, 4) ['-0.0010', '-0.0010', '-0.0010', '-0.0010']

    References:
      Ma, Gong, Scetbon and Meeds, `SWAN: SGD with Normalization and Whitening Enables
      Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.
    """
    name = "swan"
    _check(
        name,
        learning_rate,
        decays={"adam_b1": adam_b1, "adam_b2": adam_b2},
        nonnegative={
            "weight_decay": weight_decay,
            "adam_eps": adam_eps,
            "adam_weight_decay": adam_weight_decay,
        },
    )
    _base.check_int(name, ns_steps=ns_steps)
    adam = _in_float32(optax.scale_by_adam(adam_b1, adam_b2, adam_eps))
    others = _adamw_elsewhere(name, adam, adam_weight_decay, adam_learning_rate, learning_rate)
    matrices = optax.named_chain(
        ("scale_by_swan", _norm._scale_by_swan(ns_steps, ns_coeffs, rescale, 1e-8)),
        ("add_decayed_weights", _decay(weight_decay, None)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )
    return _chain(
        name,
        (
            "partition",
            optax.partition(
                {"swan": matrices, "adam": others},
                lambda p: jax.tree.map(lambda x: "swan" if jnp.ndim(x) == 2 else "adam", p),
            ),
        ),
    )


def m_fac(
    learning_rate: optax.ScalarOrSchedule,
    num_grads: int = 16,
    damping: jax.typing.ArrayLike = 1e-3,
    momentum: jax.typing.ArrayLike = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""M-FAC: SGD on the inverse sliding-window empirical Fisher times the gradient.

    :func:`optlab.scale_by_m_fac` (Woodbury over the last ``num_grads`` gradients),
    heavy-ball momentum (``optax.trace``), decoupled weight decay, learning rate, the
    paper's optimizer.

    Args:
      learning_rate: step size (>= 0) or a schedule.
      num_grads: window size :math:`m` (Python int >= 1).
      damping: :math:`\lambda > 0` of :math:`F = \lambda I + G^\top G / m`.
      momentum: heavy-ball momentum in [0, 1) (0: none).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: ``num_grads`` copies of the
      params, an ``(m, m)`` Gram matrix and the momentum trace.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.m_fac(0.1, num_grads=1, damping=1.0)
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(u["w"], 4))  # -0.1 * g / (1 + |g|^2)
      [-0.0115 -0.0154]

    References:
      Frantar, Kurtic and Alistarh, `M-FAC: Efficient Matrix-Free Approximations of
      Second-Order Information <https://arxiv.org/abs/2107.03356>`_, 2021.
    """
    name = "m_fac"
    _check(
        name,
        learning_rate,
        decays={"momentum": momentum},
        nonnegative={"weight_decay": weight_decay},
        positive={"damping": damping},
    )
    _base.check_buffer_size(name, "a copy of the gradients", _base.MAX_COPIES, num_grads=num_grads)
    return _chain(
        name,
        ("scale_by_m_fac", _curv._scale_by_m_fac(num_grads, damping)),
        ("trace", _in_float32(optax.trace(decay=momentum))),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )


def oasis(
    learning_rate: jax.typing.ArrayLike = 1.0,
    b2: jax.typing.ArrayLike = 0.99,
    alpha: jax.typing.ArrayLike = 1e-5,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    adaptive: bool = True,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""OASIS: Hutchinson-diagonal preconditioning with an adaptive step size.

    :func:`optlab.scale_by_oasis`, decoupled weight decay, then the learning rate,
    which is the *initial* rate :math:`\eta_0` of the adaptive rule (a number) or, with
    ``adaptive=False``, the fixed rate (a number or a schedule). ``update`` needs
    ``params`` and ``hvp_fn(params, v) -> H v``.

    Args:
      learning_rate: :math:`\eta_0 > 0` (adaptive) or the rate / schedule (fixed).
      b2: decay of the Hessian-diagonal EMA in [0, 1).
      alpha: truncation of :math:`|D|` (> 0).
      weight_decay: decoupled weight decay (>= 0) or a schedule.
      mask: where to decay (None: everywhere).
      adaptive: the adaptive rate (default) or a fixed one.
      seed: seed of the Hutchinson probes.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. State: three copies of the params,
      two scalars and a PRNG key.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> loss = lambda p: jnp.sum(jnp.array([1.0, 50.0]) * p["w"] ** 2)
      >>> hvp_fn = lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]
      >>> tx = optlab.oasis(0.5)
      >>> params = {"w": jnp.array([1.0, 1.0])}
      >>> u, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, hvp_fn=hvp_fn)
      >>> print(u["w"])  # -0.5 * D^-1 g: half a Newton step
      [-0.5 -0.5]

    References:
      Jahani et al., `Doubly Adaptive Scaled Algorithm for Machine Learning Using
      Second-Order Information <https://arxiv.org/abs/2109.05198>`_, 2021.
    """
    name = "oasis"
    _base.check_int(name, minimum=0, seed=seed)
    if adaptive and callable(learning_rate):
        raise TypeError(
            f"`optlab.{name}`: with `adaptive=True`, `learning_rate` is the initial rate"
            f" (a number), got the schedule learning_rate={learning_rate!r}."
        )
    _check(
        name,
        learning_rate,
        decays={"b2": b2},
        nonnegative={"weight_decay": weight_decay},
        positive={"alpha": alpha}
        if not adaptive
        else {"alpha": alpha, "learning_rate": learning_rate},
    )
    _base.check_int_unless_traced(name, 0, seed=seed)
    return _chain(
        name,
        (
            "scale_by_oasis(hutchinson_diag_hessian)",
            _curv._scale_by_oasis(
                learning_rate if adaptive else 1.0, b2, alpha, adaptive, seed, None
            ),
        ),
        ("add_decayed_weights", _decay(weight_decay, mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
        needs=hessian_needs(None),
    )
