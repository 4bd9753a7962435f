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

from optlab import _base
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
    _orthogonalize,
    _radial_projection,
    _muon_partition,
    _scale_by_muon_shape,
    _scale_by_trust_ratio,
    _sinkhorn_normalize,
    _weight_decay,
    check_channel_axis,
    check_newton_schulz,
)
from optlab._privacy import _dp_aggregate
from optlab._second_order import (
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


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------


def _chain(name: str, *stages: tuple[str, Any] | None, needs: dict | None = None):
    """The named optimizer ``optlab.<name>``: ``optax.named_chain`` of the stages that are
    not None (its state is a dict keyed by stage name, which ``optlab.describe`` prints),
    whose ``init`` refuses non-float params and ``update`` missing ``needs``, naming it."""
    return _base.public(name, optax.named_chain(*(s for s in stages if s is not None)),
                        **(needs or {}))


def _lr(learning_rate: optax.ScalarOrSchedule, flip_sign: bool = True):
    return optax.scale_by_learning_rate(learning_rate, flip_sign=flip_sign)


def _adam(b1, b2, eps, eps_root=0.0, *, amsgrad=False, nesterov=False, mu_dtype=None):
    return _scale_by_adam_family(b1, b2, eps, eps_root, amsgrad, False, nesterov, mu_dtype, None)


def _decay(weight_decay, mask):
    return _weight_decay(weight_decay, mask, cautious=False)


def _check(name: str, learning_rate: Any, *, decays: dict | None = None,
           nonnegative: dict | None = None, positive: dict | None = None) -> None:
    """Validate the named optimizer's hyperparameters, once, under its own name."""
    _base.check_learning_rate(name, learning_rate)
    _base.check_decay(name, **(decays or {}))
    _base.check_nonnegative(name, **{k: v for k, v in (nonnegative or {}).items()
                                     if not callable(v)})
    _base.check_positive(name, **{k: v for k, v in (positive or {}).items() if not callable(v)})


def _true_to_none(mask: Any) -> Any:
    """optax's ``mask=True`` (apply everywhere) is optlab's ``mask=None``."""
    return None if mask is True else mask


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
        None if momentum is None
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
    _check("lars", learning_rate, decays={"momentum": momentum},
           nonnegative={"weight_decay": weight_decay, "trust_coefficient": trust_coefficient,
                        "eps": eps})
    trust = _scale_by_trust_ratio(0.0, trust_coefficient, eps)
    trust_ratio_mask = _true_to_none(trust_ratio_mask)
    return _chain(
        "lars",
        # Coupled decay: before the trust ratio.
        ("add_decayed_weights", _decay(weight_decay, _true_to_none(weight_decay_mask))),
        ("scale_by_trust_ratio", trust) if trust_ratio_mask is None
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
    _check("sgd_sai", learning_rate, decays={"b1": b1},
           nonnegative={"eps": eps, "weight_decay": weight_decay})
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
    _check("sgdp", learning_rate, decays={"momentum": momentum},
           nonnegative={"weight_decay": weight_decay, "delta": delta, "wd_ratio": wd_ratio,
                        "eps": eps})
    check_channel_axis("sgdp", channel_axis)
    # The projection wraps the momentum (it needs the raw gradient for the cosine) and
    # adds the (wd_ratio-scaled) decoupled decay itself.
    momentum_tx = _scale_by_momentum(momentum, nesterov, None)
    project = _radial_projection(momentum_tx, delta, wd_ratio, weight_decay / (1.0 - momentum),
                                 eps, channel_axis)
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
    _check("adam", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "eps_root": eps_root})
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
    \lambda w)`. Same signature and numbers as :func:`optax.adamw`.

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
    _check("adamw", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay})
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
    _check("amsgrad", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay})
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
    _check("diffgrad", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "weight_decay": weight_decay})
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
    _check("adamp", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "weight_decay": weight_decay, "delta": delta,
                        "wd_ratio": wd_ratio})
    check_channel_axis("adamp", channel_axis)
    # The projection wraps Adam (it needs the raw gradient for the cosine) and adds the
    # (wd_ratio-scaled) decoupled decay itself.
    adam = _adam(b1, b2, eps, nesterov=nesterov)
    return _chain(
        "adamp",
        ("radial_projection(scale_by_adam)",
         _radial_projection(adam, delta, wd_ratio, weight_decay, eps, channel_axis)),
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
        ("scale_by_ademamix", _scale_by_ademamix(b1, b2, b3, alpha, b3_warmup, alpha_warmup,
                                                 eps, eps_root, mu_dtype)),
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
    _check("mars_adamw", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "gamma": gamma, "weight_decay": weight_decay},
           positive={} if max_norm is None else {"max_norm": max_norm})
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
    _check("grams", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "weight_decay": weight_decay})
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
    _check("cautious_adamw", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "weight_decay": weight_decay})
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
    _check("lion", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"weight_decay": weight_decay})
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
    _check("cautious_lion", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"weight_decay": weight_decay})
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
    _check("lamb", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"eps": eps, "eps_root": eps_root, "weight_decay": weight_decay})
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
    _check("muon", learning_rate, decays={"beta": beta, "adam_b1": adam_b1, "adam_b2": adam_b2},
           nonnegative={"weight_decay": weight_decay, "adam_eps_root": adam_eps_root,
                        "adam_weight_decay": adam_weight_decay})
    check_newton_schulz("muon", ns_steps, ns_coeffs, eps)
    if adam_learning_rate is not None and not callable(adam_learning_rate):
        _base.check_nonnegative("muon", adam_learning_rate=adam_learning_rate)
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    matrices = optax.named_chain(
        ("trace", _scale_by_momentum(beta, nesterov, mu_dtype)),
        ("orthogonalize", _orthogonalize(ns_steps, ns_coeffs, eps, "passthrough")),
        ("scale_by_muon_shape", _scale_by_muon_shape()),
        ("add_decayed_weights", _decay(weight_decay, weight_decay_mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
    )
    others = optax.named_chain(
        ("scale_by_adam", _adam(adam_b1, adam_b2, eps, adam_eps_root, mu_dtype=mu_dtype,
                                nesterov=nesterov)),
        ("add_decayed_weights", _decay(adam_weight_decay, None)),
        ("scale_by_learning_rate", _lr(adam_learning_rate)),
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
    dtype_momentum: Any = jnp.dtype(jnp.float32),
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
      decay_offset: step offset of that schedule (for fine-tuning).
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
    _check("adafactor", learning_rate, decays={} if momentum is None else {"momentum": momentum},
           nonnegative={"eps": eps} if weight_decay_rate is None
           else {"eps": eps, "weight_decay_rate": weight_decay_rate})
    _base.check_positive("adafactor", decay_rate=decay_rate)
    if clipping_threshold is not None:
        _base.check_positive("adafactor", clipping_threshold=clipping_threshold)
    _base.check_int_unless_traced("adafactor", 0, decay_offset=decay_offset)
    _base.check_int_unless_traced("adafactor", 1, min_dim_size_to_factor=min_dim_size_to_factor)
    return _chain(
        "adafactor",
        ("scale_by_adafactor", _scale_by_adafactor(factored, decay_rate, decay_offset,
                                                   min_dim_size_to_factor, eps, None)),
        None if clipping_threshold is None
        else ("clip_by_block_rms", optax.clip_by_block_rms(clipping_threshold)),
        # The learning rate comes before the parameter scale and the momentum, and the
        # sign flip last (optax.adafactor's order: decay is not scaled by the rate).
        ("scale_by_learning_rate", _lr(learning_rate, flip_sign=False)),
        ("scale_by_param_block_rms", optax.scale_by_param_block_rms())
        if multiply_by_parameter_scale else None,
        None if momentum is None
        else ("ema", _in_float32(
            optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))),
        None if weight_decay_rate is None
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
    _check("sophia", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"weight_decay": weight_decay},
           positive={"eps": eps, "gamma": gamma,
                     **({} if clip_threshold is None else {"clip_threshold": clip_threshold})})
    _base.check_int_unless_traced("sophia", 1, update_interval=update_interval)
    if hessian_diagonal_fn is None:
        _base.check_int_unless_traced("sophia", 0, seed=seed)
    sophia_tx = _scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, seed,
                                 hessian_diagonal_fn, mu_dtype)
    return _chain(
        "sophia",
        ("scale_by_sophia(hutchinson_diag_hessian)" if hessian_diagonal_fn is None
         else "scale_by_sophia", sophia_tx),
        ("add_decayed_weights", _decay(weight_decay, weight_decay_mask)),
        ("scale_by_learning_rate", _lr(learning_rate)),
        needs=hessian_needs(hessian_diagonal_fn),
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
    spatial_average: bool = True,
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
      spatial_average: average the estimate over the spatial axes of rank >= 3 leaves.
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
    _check("adahessian", learning_rate, decays={"b1": b1, "b2": b2},
           nonnegative={"weight_decay": weight_decay}, positive={"eps": eps})
    _base.check_unit_interval("adahessian", hessian_power=hessian_power)
    _base.check_int_unless_traced("adahessian", 0, seed=seed)
    return _chain(
        "adahessian",
        ("scale_by_adahessian(hutchinson_diag_hessian)",
         _scale_by_adahessian(b1, b2, eps, hessian_power, spatial_average, seed, None)),
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
    )
