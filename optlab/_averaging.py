"""Weight averaging inside the optimizer: SWA, EMA, BEMA, LAWA, Switch-EMA, Lookahead.

Every transform here wraps an inner optimizer ``inner``: it runs ``inner``, then keeps an
average of the *parameters after the update* in its own state. The state is a
``NamedTuple`` of arrays with a fixed layout (counters are ``int32`` scalars), so the
wrappers work under ``jax.jit``, ``optax.chain``, ``optax.MultiSteps``,
``optax.inject_hyperparams`` and ``flax.nnx.Optimizer``.

Conventions shared by all wrappers:

* the iterate produced by the ``t``-th call of ``update`` (``t = 1, 2, ...``) is
  ``x_t = optax.apply_updates(params, updates)``; the wrapper assumes its updates are
  applied unchanged (put it last in a chain, or at least after every stage that
  changes the update);
* "sampled from ``start_step`` every ``every_k`` steps" means that ``x_t`` is sampled
  when ``t >= start_step`` and ``(t - start_step) % every_k == 0`` (``t >= 1``);
* read the average with :func:`optlab.averaged_params`, which finds the averaging
  state anywhere in a (possibly wrapped) optimizer state.

``swa``, ``ema_params``, ``bema`` and ``lawa`` only *observe* the trajectory: the
returned updates are those of ``inner``. ``switch_ema`` and ``lookahead`` change the
trajectory: on their synchronisation steps the returned update moves the live
parameters onto the averaged (slow) weights, and the stored average is set to
``optax.apply_updates(params, update)``, exactly what the user then holds (bitwise in
float32; with bfloat16 parameters XLA may keep the jitted sum in excess precision, a
one-ulp difference at most).

The averages are kept in the parameters' dtype unless ``accumulator_dtype`` says
otherwise; each running update is computed in at least float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base, _tree
from optlab._flax_utils import unwrap_variables

__all__ = [
    "SWAState",
    "EMAParamsState",
    "BEMAState",
    "LAWAState",
    "SwitchEMAState",
    "LookaheadState",
    "swa",
    "swa_schedule",
    "ema_params",
    "bema",
    "lawa",
    "switch_ema",
    "lookahead",
    "averaged_params",
]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _copy_tree(tree: Any, dtype: Any = None) -> Any:
    """A fresh copy of ``tree`` (``None`` leaves kept), optionally cast to ``dtype``."""
    return jax.tree.map(lambda x: jnp.array(x, dtype=dtype or jnp.result_type(x)), tree)


def _lerp(m: Any, x: Any, w: jax.Array) -> Any:
    """``m + w * (x - m)`` per leaf, in at least float32, cast to ``m``'s dtype.

    ``w == 1`` gives ``x`` exactly and ``w == 0`` (or ``x == m``) gives ``m`` exactly.
    """

    def leaf(m, x):
        acc = jnp.promote_types(m.dtype, jnp.float32)
        m32, x32 = m.astype(acc), x.astype(acc)
        wa = jnp.asarray(w, acc)
        return jnp.where(wa >= 1, x32, m32 + wa * (x32 - m32)).astype(m.dtype)

    return jax.tree.map(leaf, m, x)


def _sample_now(step: jax.Array, start_step: int, every_k: int) -> jax.Array:
    """Whether the iterate ``x_step`` (1-based) is sampled."""
    return (step >= start_step) & ((step - start_step) % every_k == 0)


def _inner_update(inner, updates, inner_state, params, extra_args):
    _base.require_params(params)
    updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
    return updates, inner_state, optax.apply_updates(params, updates)


# ---------------------------------------------------------------------------
# SWA
# ---------------------------------------------------------------------------


class SWAState(NamedTuple):
    """State for :func:`optlab.swa`.

    Attributes:
      inner_state: state of the wrapped optimizer
      count: shape=(), int32: number of `update` calls so far
      n_averaged: shape=(), int32: number of sampled iterates in `mean`
      mean: running mean of the sampled iterates (the initial params before the first)
    """

    inner_state: Any  # state of the wrapped optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    n_averaged: jax.Array  # shape=(), int32: number of sampled iterates in `mean`
    mean: Any  # running mean of the sampled iterates (the initial params before the first)

    averaging_name = "swa"

    def averaged(self) -> Any:
        return self.mean


def swa(
    inner: optax.GradientTransformation,
    start_step: int = 0,
    every_k: int = 1,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Stochastic Weight Averaging: running mean of the iterates of ``inner``.

    Runs ``inner`` unchanged and keeps the arithmetic mean of the parameters after the
    update, sampled at steps ``t >= start_step`` with ``(t - start_step) % every_k == 0``
    (``t`` counts calls of ``update`` from 1)::

        n <- n + 1;   mean <- mean + (x_t - mean) / n

    so ``mean`` equals ``(x_{t_1} + ... + x_{t_n}) / n`` over the sampled iterates.
    Before the first sample ``mean`` holds the initial parameters. The paper samples
    once per epoch (``every_k`` = steps per epoch) with a constant or cyclic learning
    rate from ``start_step`` on; see :func:`optlab.swa_schedule`. Recompute the
    BatchNorm statistics of the averaged weights with :func:`optlab.update_bn`.

    State kept: the inner state, a step counter, the number of samples and one copy
    of the parameters (the mean).

    Args:
      inner: the inner optimizer.
      start_step: the sampling phase: iterates ``t >= start_step`` (1-based) with
        ``(t - start_step) % every_k == 0`` are sampled. With ``every_k=1``, ``0`` and
        ``1`` both start at the first iterate. Otherwise they differ: ``start_step=1``
        samples ``x_1, x_{1+k}, x_{1+2k}, ...`` and ``start_step=0`` samples
        ``x_k, x_{2k}, ...`` (the end of each block of ``k`` steps, e.g. each epoch).
      every_k: sample every ``every_k`` steps from ``start_step``.
      accumulator_dtype: dtype of the mean (default: the parameters' dtype); use
        ``jnp.float32`` to average bfloat16 parameters without rounding drift.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its updates are those of ``inner``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.swa(optax.sgd(0.1), start_step=2, every_k=1)
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(2 * params, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> optlab.averaged_params(state)  # mean of x_2 = 0.64 and x_3 = 0.512
      Array([0.576], dtype=float32)

    References:
      Izmailov, Podoprikhin, Garipov, Vetrov and Wilson, `Averaging Weights Leads to
      Wider Optima and Better Generalization <https://arxiv.org/abs/1803.05407>`_, 2018.
    """
    _base.check_int("swa", minimum=0, start_step=start_step)
    _base.check_int("swa", every_k=every_k)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree("swa", params)
        return SWAState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            n_averaged=jnp.zeros([], jnp.int32),
            mean=_copy_tree(params, accumulator_dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state, new_params = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        step = optax.safe_increment(state.count)
        sample = _sample_now(step, start_step, every_k)
        n = state.n_averaged + sample.astype(jnp.int32)

        def leaf(m, x):
            acc = jnp.promote_types(m.dtype, jnp.float32)
            m32, x32 = m.astype(acc), x.astype(acc)
            w = 1 / jnp.maximum(n, 1).astype(acc)  # 1 / n in the accumulation dtype
            new = jnp.where(n == 1, x32, m32 + w * (x32 - m32))
            return jnp.where(sample, new, m32).astype(m.dtype)

        mean = jax.tree.map(leaf, state.mean, new_params)
        return updates, SWAState(inner_state, step, n, mean)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def swa_schedule(
    base_schedule: optax.ScalarOrSchedule,
    swa_lr: float,
    start_step: int,
    anneal_steps: int = 0,
    anneal_strategy: str = "cos",
    cycle_length: int | None = None,
    cycle_max_lr: float | None = None,
) -> optax.Schedule:
    """Learning-rate schedule for SWA: ``base_schedule``, then anneal, then constant or cyclic.

    Three phases, joined with ``optax.join_schedules`` (``count`` = number of updates
    done, as optax schedules receive it):

    1. ``count < start_step``: ``base_schedule(count)`` (a number or an optax schedule);
    2. the next ``anneal_steps`` steps: from ``base_schedule(start_step)`` to ``swa_lr``
       with a cosine (``"cos"``) or linear (``"linear"``) ramp, like
       ``torch.optim.swa_utils.SWALR``;
    3. afterwards: the constant ``swa_lr`` or, with ``cycle_length = c``, the paper's
       cyclic schedule that decreases linearly from ``cycle_max_lr`` to ``swa_lr``
       within each cycle of ``c`` steps (the last step of a cycle uses ``swa_lr``).

    With the cyclic schedule, sample the low-learning-rate iterates, the ends of the
    cycles: ``optlab.swa(inner, start_step=start_step + anneal_steps + c, every_k=c)``.
    With a constant ``swa_lr``, sample e.g. once per epoch from
    ``start_step + anneal_steps``.

    Args:
      base_schedule: learning rate (number or schedule) before ``start_step``.
      swa_lr: the SWA learning rate (the minimum of a cycle).
      start_step: number of steps of the base phase.
      anneal_steps: length of the ramp from the base to the SWA learning rate.
      anneal_strategy: ``"cos"`` or ``"linear"``.
      cycle_length: ``None`` for a constant SWA learning rate, else the cycle length.
      cycle_max_lr: the learning rate at the start of each cycle (required with
        ``cycle_length``).

    Returns:
      An ``optax.Schedule`` (``count -> learning rate``).

    Example:
      >>> import optax, optlab
      >>> sched = optlab.swa_schedule(optax.cosine_decay_schedule(0.1, 100), swa_lr=0.05,
      ...                             start_step=75, anneal_steps=10)
      >>> tx = optlab.swa(optax.sgd(sched), start_step=85, every_k=10)

    References:
      Izmailov et al., `Averaging Weights Leads to Wider Optima and Better
      Generalization <https://arxiv.org/abs/1803.05407>`_, 2018.
    """
    name = "swa_schedule"
    _base.check_learning_rate(name, base_schedule)
    _base.check_nonnegative(name, swa_lr=swa_lr)
    _base.check_int(name, minimum=0, start_step=start_step, anneal_steps=anneal_steps)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"`optlab.{name}`: `anneal_strategy` must be 'cos' or 'linear', got"
            f" anneal_strategy={anneal_strategy!r}."
        )
    if cycle_length is not None:
        _base.check_int(name, cycle_length=cycle_length)
        if cycle_max_lr is None:
            raise ValueError(f"`optlab.{name}`: `cycle_max_lr` is required with `cycle_length`.")
        _base.check_nonnegative(name, cycle_max_lr=cycle_max_lr)

    base = base_schedule if callable(base_schedule) else optax.constant_schedule(base_schedule)
    start_lr = base(start_step)

    if anneal_strategy == "linear":
        anneal = optax.linear_schedule(start_lr, swa_lr, max(anneal_steps, 1))
    else:

        def anneal(count):
            frac = jnp.clip(count / max(anneal_steps, 1), 0.0, 1.0)
            return swa_lr + (start_lr - swa_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    if cycle_length is None:
        final = optax.constant_schedule(swa_lr)
    else:

        def final(count):
            pos = (jnp.mod(count, cycle_length) + 1) / cycle_length
            return cycle_max_lr + (swa_lr - cycle_max_lr) * pos

    return optax.join_schedules([base, anneal, final], [start_step, start_step + anneal_steps])


# ---------------------------------------------------------------------------
# EMA of the parameters
# ---------------------------------------------------------------------------


class EMAParamsState(NamedTuple):
    """State for :func:`optlab.ema_params`.

    Attributes:
      inner_state: state of the wrapped optimizer
      count: shape=(), int32: number of `update` calls so far
      ema: the (debiased, if `debias`) EMA of the iterates; initial params before step 1
      decay_product: shape=(), float32: prod_s decay_s (stays 0 when debias=False)
    """

    inner_state: Any  # state of the wrapped optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    ema: Any  # the (debiased, if `debias`) EMA of the iterates; initial params before step 1
    decay_product: jax.Array  # shape=(), float32: prod_s decay_s (stays 0 when debias=False)

    averaging_name = "ema_params"

    def averaged(self) -> Any:
        return self.ema


_EMA_WARMUPS = (None, "tf", "power")


def ema_params(
    inner: optax.GradientTransformation,
    decay: optax.ScalarOrSchedule = 0.999,
    debias: bool = True,
    warmup: str | None = None,
    *,
    inv_gamma: float = 1.0,
    power: float = 2.0 / 3.0,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Exponential moving average of the *parameters* (not of the updates).

    Runs ``inner`` unchanged and keeps ``ema_t = d_t * ema_{t-1} + (1 - d_t) * x_t`` of the
    iterates ``x_t`` (parameters after the ``t``-th update). ``optax.ema`` averages the
    *updates* (momentum); this averages the weights, for evaluation.

    The decay ``d_t`` (``t`` = number of EMA updates before this one, from 0) is:

    * ``warmup=None``: ``decay`` (a number, or an optax schedule of ``t``);
    * ``warmup="tf"``: ``min(decay, (1 + t) / (10 + t))``, the ``num_updates`` warmup of
      ``tf.train.ExponentialMovingAverage``;
    * ``warmup="power"``: ``min(decay, 1 - (1 + t / inv_gamma) ** -power)``, the
      power-function warmup of diffusers/timm ``EMAModel`` (``power=2/3`` suits long
      runs, ``3/4`` short ones); the EMA starts as the first iterate.

    With ``debias=True`` the stored average is the bias-corrected one, the usual
    zero-initialised EMA divided by ``1 - prod_s d_s`` (Adam's correction, exact
    also for a time-varying decay), i.e. a weighted average of ``x_1 ... x_t`` whose
    weights sum to one: the debiased EMA of a constant sequence is that constant. It
    is stored directly as ``ema <- ema + (1 - d_t) / (1 - prod_{s<=t} d_s) * (x_t - ema)``
    (no zero start, no division when reading). With ``debias=False`` the EMA starts
    from the initial parameters (the torch ``AveragedModel`` / timm convention).
    Before the first update :func:`optlab.averaged_params` returns the initial
    parameters in both cases.

    State kept: the inner state, a step counter, one copy of the parameters and the
    running product of the decays (a float32 scalar).

    Args:
      inner: the inner optimizer.
      decay: the EMA decay in ``[0, 1)``, or a schedule of the EMA step.
      debias: apply the bias correction (see above).
      warmup: ``None``, ``"tf"`` or ``"power"`` (see above).
      inv_gamma: ``"power"`` warmup: inverse multiplicative factor of ``t``.
      power: ``"power"`` warmup: exponent.
      accumulator_dtype: dtype of the EMA (default: the parameters' dtype).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its updates are those of ``inner``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.ema_params(optax.sgd(0.0), decay=0.9)  # params stay constant
      >>> params = jnp.array([2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([1.0]), state, params)
      >>> optlab.averaged_params(state)  # debiased EMA of a constant = the constant
      Array([2.], dtype=float32)

    References:
      Polyak and Juditsky, `Acceleration of Stochastic Approximation by Averaging
      <https://doi.org/10.1137/0330046>`_, 1992; Li and Gu, `Understanding SGD with
      Exponential Moving Average: A Case Study in Linear Regression
      <https://arxiv.org/abs/2502.14123>`_, 2025; Karras et al., `Analyzing and Improving
      the Training Dynamics of Diffusion Models <https://arxiv.org/abs/2312.02696>`_, 2024
      (power-function EMA).
    """
    name = "ema_params"
    if not callable(decay):
        _base.check_decay(name, decay=decay)
    if warmup not in _EMA_WARMUPS:
        raise ValueError(
            f"`optlab.{name}`: `warmup` must be one of {_EMA_WARMUPS}, got warmup={warmup!r}."
        )
    _base.check_positive(name, inv_gamma=inv_gamma, power=power)
    inner = optax.with_extra_args_support(inner)

    def decay_at(t):
        d = decay(t) if callable(decay) else decay
        d = jnp.asarray(d, jnp.float32)
        tf = t.astype(jnp.float32)
        if warmup == "tf":
            d = jnp.minimum(d, (1.0 + tf) / (10.0 + tf))
        elif warmup == "power":
            d = jnp.minimum(d, 1.0 - (1.0 + tf / inv_gamma) ** (-power))
        return jnp.clip(d, 0.0, 1.0)

    def init_fn(params):
        _base.check_float_tree("ema_params", params)
        return EMAParamsState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            ema=_copy_tree(params, accumulator_dtype),
            decay_product=jnp.asarray(1.0 if debias else 0.0, jnp.float32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state, new_params = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        d = decay_at(state.count)
        if debias:
            decay_product = state.decay_product * d
            # 1 - d_t is the new sample's raw weight; the raw weights sum to 1 - prod d.
            weight = _tree.safe_div(1.0 - d, 1.0 - decay_product)
        else:
            decay_product = state.decay_product
            weight = 1.0 - d
        ema = _lerp(state.ema, new_params, weight)
        return updates, EMAParamsState(
            inner_state, optax.safe_increment(state.count), ema, decay_product
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# BEMA
# ---------------------------------------------------------------------------


class BEMAState(NamedTuple):
    """State for :func:`optlab.bema`.

    Attributes:
      inner_state: state of the wrapped optimizer
      count: shape=(), int32: number of `update` calls so far
      theta0: the snapshot theta_0 (initial params, refreshed during burn-in)
      ema: the EMA with the power-law weights beta_t
      bema: the bias-corrected average ema + alpha_t (x_t - theta0), for evaluation
    """

    inner_state: Any  # state of the wrapped optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    theta0: Any  # the snapshot theta_0 (initial params, refreshed during burn-in)
    ema: Any  # the EMA with the power-law weights beta_t
    bema: Any  # the bias-corrected average ema + alpha_t (x_t - theta0), for evaluation

    averaging_name = "bema"

    def averaged(self) -> Any:
        return self.bema


def bema(
    inner: optax.GradientTransformation,
    ema_power: float = 0.5,
    bias_power: float | None = 0.2,
    lag: float = 10.0,
    multiplier: float = 1.0,
    burn_in: int = 0,
    every_k: int = 1,
    min_ema_multiplier: float = 0.0,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """BEMA: EMA of the parameters plus a bias correction that removes the lag.

    Algorithm 1 of Block and Zhang (2025). With ``s = t - burn_in`` the number of
    steps since the snapshot ``theta_0`` and ``x_t`` the iterate::

        beta_t  = max((lag + multiplier * s) ** -ema_power, min_ema_multiplier)
        alpha_t = (lag + multiplier * s) ** -bias_power
        ema_t   = (1 - beta_t) * ema_{t-1} + beta_t * x_t
        bema_t  = ema_t + alpha_t * (x_t - theta_0)

    For ``t <= burn_in`` the snapshot and both averages are reset to ``x_t``; with
    ``burn_in=0`` the snapshot is the initial parameters. Afterwards the averages are
    refreshed every ``every_k`` steps (the paper's ``phi``; 400 in its fine-tuning
    runs, where the average lives on the host: here it is a few element-wise ops, so
    the default is every step). The correction ``alpha_t (x_t - theta_0)`` is the
    estimate, exact for a noisy quadratic (Ornstein-Uhlenbeck) model, of the lag of
    the EMA behind the iterate. ``bias_power=None`` drops it (``alpha_t = 0``): a plain
    EMA with the power-law weights (the paper's baseline). ``beta_t`` is clipped to
    ``[0, 1]``.

    Caveat (inherent to the method): ``alpha_t`` decays slowly (``t ** -0.2`` by
    default), so long after the iterates have settled around a minimum ``mu`` the
    estimate is ``mu + alpha_t (mu - theta_0)``, extrapolated away from the snapshot.
    BEMA is designed for fine-tuning horizons, where it removes the EMA's lag in the
    early, fast-moving phase; for long runs, move the snapshot with ``burn_in`` or
    prefer :func:`optlab.ema_params`.

    State kept: the inner state, a step counter and three copies of the parameters
    (``theta0``, ``ema`` and the result ``bema``, read by
    :func:`optlab.averaged_params`).

    Args:
      inner: the inner optimizer.
      ema_power: ``kappa``, exponent of the EMA weight ``beta_t``.
      bias_power: ``eta``, exponent of the correction weight ``alpha_t``; ``None``
        disables the correction.
      lag: ``rho``, offset of the step in both power laws.
      multiplier: ``gamma``, scale of the step in both power laws.
      burn_in: ``tau``, number of steps during which the snapshot and averages track
        the iterate.
      every_k: ``phi``, refresh period after the burn-in.
      min_ema_multiplier: lower bound of ``beta_t``.
      accumulator_dtype: dtype of the three copies (default: the parameters' dtype).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its updates are those of ``inner``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.bema(optax.sgd(0.1))
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(2 * params, state, params)
      >>> optlab.averaged_params(state).shape
      (1,)

    References:
      Block and Zhang, `EMA Without the Lag: Bias-Corrected Iterate Averaging Schemes
      <https://arxiv.org/abs/2508.00180>`_, 2025.
    """
    name = "bema"
    _base.check_nonnegative(name, ema_power=ema_power, lag=lag)
    if bias_power is not None:
        _base.check_nonnegative(name, bias_power=bias_power)
    _base.check_positive(name, multiplier=multiplier)
    _base.check_unit_interval(name, min_ema_multiplier=min_ema_multiplier)
    _base.check_int(name, minimum=0, burn_in=burn_in)
    _base.check_int(name, every_k=every_k)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree("bema", params)
        return BEMAState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            theta0=_copy_tree(params, accumulator_dtype),
            ema=_copy_tree(params, accumulator_dtype),
            bema=_copy_tree(params, accumulator_dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state, new_params = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        step = optax.safe_increment(state.count)
        in_burn_in = step <= burn_in
        refresh = (~in_burn_in) & ((step - burn_in) % every_k == 0)
        s = (step - burn_in).astype(jnp.float32)
        base = jnp.maximum(jnp.asarray(lag, jnp.float32) + multiplier * s, 1e-12)
        beta = jnp.clip(jnp.maximum(base ** (-ema_power), min_ema_multiplier), 0.0, 1.0)
        alpha = 0.0 if bias_power is None else base ** (-bias_power)

        def ema_leaf(ema, x):
            acc = jnp.promote_types(ema.dtype, jnp.float32)
            ema32, x32, b = ema.astype(acc), x.astype(acc), jnp.asarray(beta, acc)
            return jnp.where(b >= 1, x32, ema32 + b * (x32 - ema32))  # in `acc`

        def bema_leaf(new_ema, x, theta0):
            acc = new_ema.dtype
            return new_ema + jnp.asarray(alpha, acc) * (x.astype(acc) - theta0.astype(acc))

        def choose(old, x, new):
            # burn-in: track the iterate; refresh step: the new value; else keep.
            new = jnp.where(refresh, new.astype(old.dtype), old)
            return jnp.where(in_burn_in, x.astype(old.dtype), new)

        new_ema = jax.tree.map(ema_leaf, state.ema, new_params)
        new_bema = jax.tree.map(bema_leaf, new_ema, new_params, state.theta0)
        theta0 = jax.tree.map(choose, state.theta0, new_params, state.theta0)
        ema = jax.tree.map(choose, state.ema, new_params, new_ema)
        out = jax.tree.map(choose, state.bema, new_params, new_bema)
        return updates, BEMAState(inner_state, step, theta0, ema, out)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# LAWA
# ---------------------------------------------------------------------------


class LAWAState(NamedTuple):
    """State for :func:`optlab.lawa`.

    Attributes:
      inner_state: state of the wrapped optimizer
      count: shape=(), int32: number of `update` calls so far
      next_slot: shape=(), int32: ring-buffer slot the next sample overwrites
      n_filled: shape=(), int32: number of filled slots, min(samples, k)
      buffer: each leaf has shape (k, *param.shape): the last k sampled iterates
    """

    inner_state: Any  # state of the wrapped optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    next_slot: jax.Array  # shape=(), int32: ring-buffer slot the next sample overwrites
    n_filled: jax.Array  # shape=(), int32: number of filled slots, min(samples, k)
    buffer: Any  # each leaf has shape (k, *param.shape): the last k sampled iterates

    averaging_name = "lawa"

    def averaged(self) -> Any:
        return _lawa_mean(self)


def lawa(
    inner: optax.GradientTransformation,
    k: int = 5,
    every_k: int = 1,
    start_step: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """LAWA: the average of the last ``k`` sampled checkpoints (latest weight averaging).

    Runs ``inner`` unchanged and keeps the last ``k`` iterates sampled at steps
    ``t >= start_step`` with ``(t - start_step) % every_k == 0`` in a ring buffer.
    :func:`optlab.averaged_params` returns their mean (over the samples taken so far
    while fewer than ``k``; the initial parameters before the first sample), i.e. a
    uniform average over a sliding window, unlike SWA's average since ``start_step``.
    Kaddour (2022) samples once per epoch; Sanyal et al. (2023) sample every few
    hundred steps, early in training and with high learning rates.

    Memory: the buffer holds ``k`` copies of the parameters (``k x params``), in the
    parameters' dtype; the mean is computed in float32 when read.

    State kept: the inner state, a step counter, the ring-buffer position, the number
    of filled slots and the ``(k, ...)`` buffer.

    Args:
      inner: the inner optimizer.
      k: number of checkpoints averaged.
      every_k: sample every ``every_k`` steps (e.g. the steps per epoch).
      start_step: first step that may be sampled.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its updates are those of ``inner``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.lawa(optax.sgd(0.1), k=2)
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(2 * params, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> optlab.averaged_params(state)  # mean of x_2 = 0.64 and x_3 = 0.512
      Array([0.576], dtype=float32)

    References:
      Kaddour, `Stop Wasting My Time! Saving Days of ImageNet and BERT Training with
      Latest Weight Averaging <https://arxiv.org/abs/2209.14981>`_, 2022; Sanyal et al.,
      `Early Weight Averaging meets High Learning Rates for LLM Pre-training
      <https://arxiv.org/abs/2306.03241>`_, 2023.
    """
    _base.check_int("lawa", every_k=every_k)
    _base.check_buffer_size("lawa", "a copy of the parameters", _base.MAX_COPIES, k=k)
    _base.check_int("lawa", minimum=0, start_step=start_step)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree("lawa", params)
        return LAWAState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            next_slot=jnp.zeros([], jnp.int32),
            n_filled=jnp.zeros([], jnp.int32),
            buffer=jax.tree.map(lambda p: jnp.stack([jnp.asarray(p)] * k), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state, new_params = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        step = optax.safe_increment(state.count)
        sample = _sample_now(step, start_step, every_k)
        slot = state.next_slot

        def leaf(buf, x):
            old = jax.lax.dynamic_index_in_dim(buf, slot, 0, keepdims=False)
            new = jnp.where(sample, x.astype(buf.dtype), old)
            return jax.lax.dynamic_update_index_in_dim(buf, new, slot, 0)

        buffer = jax.tree.map(leaf, state.buffer, new_params)
        inc = sample.astype(jnp.int32)
        next_slot = (slot + inc) % k
        n_filled = jnp.minimum(state.n_filled + inc, k)
        return updates, LAWAState(inner_state, step, next_slot, n_filled, buffer)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _lawa_mean(state: LAWAState) -> Any:
    n = state.n_filled

    def leaf(buf):
        k = buf.shape[0]
        acc = jnp.promote_types(buf.dtype, jnp.float32)
        mask = (jnp.arange(k) < n).astype(acc).reshape((k,) + (1,) * (buf.ndim - 1))
        mean = jnp.sum(buf.astype(acc) * mask, axis=0) / jnp.maximum(n, 1).astype(acc)
        return jnp.where(n == 0, buf[0], mean.astype(buf.dtype))

    return jax.tree.map(leaf, state.buffer)


# ---------------------------------------------------------------------------
# Switch-EMA
# ---------------------------------------------------------------------------


class SwitchEMAState(NamedTuple):
    """State for :func:`optlab.switch_ema`.

    Attributes:
      inner_state: state of the wrapped optimizer
      count: shape=(), int32: number of `update` calls so far
      ema: EMA of the iterates, started at the initial params
    """

    inner_state: Any  # state of the wrapped optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    ema: Any  # EMA of the iterates, started at the initial params

    averaging_name = "switch_ema"

    def averaged(self) -> Any:
        return self.ema


def switch_ema(
    inner: optax.GradientTransformation,
    decay: float = 0.999,
    sync_period: int = 1000,
) -> optax.GradientTransformationExtraArgs:
    """Switch-EMA: keep an EMA of the parameters, copied into them every ``sync_period`` steps.

    Each step runs ``inner`` and updates ``ema <- decay * ema + (1 - decay) * x_t`` (the
    EMA starts at the initial parameters). At steps ``t`` with ``t % sync_period == 0``
    (the paper switches once per epoch: ``sync_period`` = steps per epoch) the returned
    update is ``ema - params`` instead of the update of ``inner``, so the live parameters
    become the EMA; the stored EMA is then set to exactly the parameters the user gets
    from ``optax.apply_updates``, so after a switch ``params == ema``. The inner state
    is kept (the paper does not reset the optimizer).

    State kept: the inner state, a step counter and one copy of the parameters.

    Args:
      inner: the inner optimizer.
      decay: EMA decay in ``[0, 1)``.
      sync_period: switch every ``sync_period`` steps.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Apply its updates unchanged.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.switch_ema(optax.sgd(0.1), decay=0.5, sync_period=2)
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(2 * params, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> bool((params == optlab.averaged_params(state)).all())
      True

    References:
      Li et al., `Switch EMA: A Free Lunch for Better Flatness and Sharpness
      <https://arxiv.org/abs/2402.09240>`_, 2024.
    """
    _base.check_decay("switch_ema", decay=decay)
    _base.check_int("switch_ema", sync_period=sync_period)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree("switch_ema", params)
        return SwitchEMAState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            ema=_copy_tree(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        inner_updates, inner_state, new_params = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        step = optax.safe_increment(state.count)
        ema = _lerp(state.ema, new_params, 1.0 - decay)
        switch = step % sync_period == 0

        def to_ema(e, p):
            acc = jnp.promote_types(jnp.result_type(p), jnp.float32)
            return e.astype(acc) - p.astype(acc)

        switch_updates = _tree.tree_cast_like(jax.tree.map(to_ema, ema, params), inner_updates)
        out_updates = optax.tree.where(switch, switch_updates, inner_updates)
        # After a switch the EMA is exactly the parameters the user will hold.
        switched = optax.apply_updates(params, switch_updates)
        ema = optax.tree.where(switch, _tree.tree_cast_like(switched, ema), ema)
        return out_updates, SwitchEMAState(inner_state, step, ema)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Lookahead
# ---------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """State for :func:`optlab.lookahead` (not ``optax.LookaheadState``).

    Attributes:
      inner_state: state of the wrapped (fast) optimizer
      count: shape=(), int32: number of `update` calls so far
      slow: the slow weights
    """

    inner_state: Any  # state of the wrapped (fast) optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    slow: Any  # the slow weights

    averaging_name = "lookahead"

    def averaged(self) -> Any:
        return self.slow


def lookahead(
    inner: optax.GradientTransformation,
    sync_period: int = 5,
    slow_step_size: float = 0.5,
    *,
    reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Lookahead with the slow weights in the optimizer state (a drop-in wrapper).

    The user's parameters are the *fast* weights, updated by ``inner``. Every
    ``sync_period`` steps (``t % sync_period == 0``) the slow weights move towards
    the fast ones and the fast weights restart from them::

        slow <- slow + slow_step_size * (fast - slow);   fast <- slow

    which this wrapper does by returning, on synchronisation steps, the update
    ``u + (1 - slow_step_size) * (slow - (params + u))`` (``u`` the update of ``inner``):
    applied, it puts the parameters on the new slow weights, and the stored slow weights are
    set to exactly the parameters the user then holds. ``slow_step_size=1`` is the inner
    optimizer (the update is then ``u`` exactly).

    Reading the slow weights: ``optlab.averaged_params(state)`` (right after a
    synchronisation they equal the live parameters). Evaluate on them, as the paper
    does, between synchronisations.

    Compared with ``optax.lookahead``: optax keeps both weight sets in the
    *parameters* (``optax.LookaheadParams(fast, slow)``), so the training loop, the
    model and checkpoints must handle the pair, and gradients must be taken at
    ``params.fast``; the memory is the same (one extra copy). Here the parameters
    stay a plain tree, which is what ``flax.nnx.Optimizer`` and any other loop
    expect, and the slow weights live in the state. The arguments are optax's
    (``sync_period``, ``slow_step_size``, ``reset_state``), the inner optimizer ``inner``.

    State kept: the inner state, a step counter and one copy of the parameters.

    Args:
      inner: the inner (fast) optimizer.
      sync_period: ``k``, number of fast steps between synchronisations.
      slow_step_size: slow step size in ``[0, 1]``.
      reset_state: re-initialise the inner state after each synchronisation.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Apply its updates unchanged.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.lookahead(optax.sgd(0.1), sync_period=2, slow_step_size=0.5)
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(2 * params, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> params  # 1 + 0.5 * (0.64 - 1)
      Array([0.82], dtype=float32)

    References:
      Zhang, Lucas, Hinton and Ba, `Lookahead Optimizer: k steps forward, 1 step back
      <https://arxiv.org/abs/1907.08610>`_, 2019.
    """
    _base.check_int("lookahead", sync_period=sync_period)
    _base.check_unit_interval("lookahead", slow_step_size=slow_step_size)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree("lookahead", params)
        return LookaheadState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            slow=_copy_tree(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        inner_updates, inner_state, fast = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        step = optax.safe_increment(state.count)
        sync = step % sync_period == 0

        def sync_update(u, s, f):
            acc = jnp.promote_types(jnp.result_type(u), jnp.float32)
            a = jnp.asarray(slow_step_size, acc)
            return u.astype(acc) + (1 - a) * (s.astype(acc) - f.astype(acc))

        sync_updates = _tree.tree_cast_like(
            jax.tree.map(sync_update, inner_updates, state.slow, fast), inner_updates
        )
        out_updates = optax.tree.where(sync, sync_updates, inner_updates)
        synced = optax.apply_updates(params, sync_updates)
        slow = optax.tree.where(sync, synced, state.slow)
        if reset_state:
            fresh = inner.init(synced)
            inner_state = optax.tree.where(sync, fresh, inner_state)
        return out_updates, LookaheadState(inner_state, step, slow)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Accessor
# ---------------------------------------------------------------------------


def _is_averaging_state(x: Any) -> bool:
    """The averaging-state protocol: a NamedTuple whose class has ``averaging_name`` and
    an ``averaged()`` method (see CONTRIBUTING.md)."""
    return (
        isinstance(x, tuple)
        and isinstance(getattr(type(x), "averaging_name", None), str)
        and callable(getattr(x, "averaged", None))
    )


def _find_states(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Averaging states in ``tree`` (chains, named chains, MultiSteps, inject_hyperparams,
    masked/partition ...), outer first, with the states nested in their ``inner_state``."""
    found = []
    path_leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_averaging_state)
    for path, leaf in path_leaves:
        if _is_averaging_state(leaf):
            here = prefix + jax.tree_util.keystr(path)
            found.append((here, leaf))
            if hasattr(leaf, "inner_state"):
                found.extend(_find_states(leaf.inner_state, here + ".inner_state"))
    return found


def averaged_params(state: Any, which: str | int | None = None, params: Any = None) -> Any:
    """The averaged parameters kept by an averaging wrapper, found anywhere in ``state``.

    Searches the optimizer state tree for averaging states, through ``optax.chain``
    tuples, ``optax.named_chain`` dicts, ``optax.MultiSteps``, ``optax.inject_hyperparams``,
    ``optax.masked`` / ``optax.partition`` and the ``inner_state`` of nested wrappers, and
    returns ``state.averaged()``: the SWA mean, the (debiased) EMA, the BEMA estimate, the
    mean of the LAWA buffer, the Switch-EMA average, Lookahead's slow weights. An
    averaging state is any NamedTuple whose class has a string ``averaging_name`` and an
    ``averaged()`` method (the protocol in CONTRIBUTING.md), so averaging wrappers of
    other modules are found too. A ``flax.nnx.Optimizer`` (or
    its ``opt_state``) is accepted: Flax variables are unwrapped, and the result can be
    loaded with ``nnx.update(model, averaged_params(optimizer))``.

    Pure and jittable.

    Args:
      state: an optimizer state (or a ``flax.nnx.Optimizer``).
      which: when the state holds several averaging states, the one to read: a method
        name (the state's ``averaging_name``: ``"swa"``, ``"ema_params"``, ``"bema"``,
        ``"lawa"``, ``"switch_ema"``, ``"lookahead"`` ...) or an index in the order found
        (outer wrappers first).
      params: optional parameters used to fill the entries that the averaging
        wrapper did not see (``optax.MaskedNode`` placeholders when it runs under
        ``optax.masked`` or ``optax.partition``).

    Returns:
      A tree like the parameters the averaging wrapper saw.

    Raises:
      ValueError: if no averaging state is found, or several are and ``which`` does
        not select exactly one.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optax.clip_by_global_norm(1.0), optlab.swa(optax.sgd(0.1)))
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> optlab.averaged_params(state)
      {'w': Array([1., 1.], dtype=float32)}
    """
    state = unwrap_variables(state)
    found = _find_states(state)
    if not found:
        raise ValueError(
            "`optlab.averaged_params`: no averaging state found in `state` (expected the"
            " state of an averaging wrapper such as optlab.swa, ema_params or lookahead,"
            f" possibly inside chains or wrappers); got a state of type {type(state).__name__}."
        )
    listing = ", ".join(f"{s.averaging_name} at {p or '<root>'}" for p, s in found)
    if isinstance(which, int) and not isinstance(which, bool):
        if not -len(found) <= which < len(found):
            raise ValueError(
                f"`optlab.averaged_params`: `which` must index one of the {len(found)}"
                f" averaging states found ({listing}), got which={which}."
            )
        chosen = [found[which]]
    elif which is None:
        chosen = found
    else:
        chosen = [(p, s) for p, s in found if s.averaging_name == which]
        if not chosen:
            raise ValueError(
                f"`optlab.averaged_params`: no `{which}` state found (`which` must be the"
                f" `averaging_name` of a state found, or an index); found: {listing}."
            )
    if len(chosen) > 1:
        raise ValueError(
            f"`optlab.averaged_params`: {len(chosen)} averaging states found ({listing});"
            " select one with `which=` (a method name or an index)."
        )
    _, chosen_state = chosen[0]
    avg = chosen_state.averaged()
    if params is not None:
        params = unwrap_variables(params)
        avg = jax.tree.map(
            lambda a, p: p if isinstance(a, optax.MaskedNode) else a,
            avg,
            params,
            is_leaf=lambda x: isinstance(x, optax.MaskedNode) or x is None,
        )
    return avg


# ---------------------------------------------------------------------------
# Issue 12 (part B): power-function EMA (EDM2)
# ---------------------------------------------------------------------------

__all__ += ["PowerEMAState", "power_ema", "sigma_rel_to_gamma"]


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma`` of the power-function EMA whose relative width is ``sigma_rel``.

    ``sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))`` (EDM2), solved as the
    largest real root of ``gamma^3 + 7 gamma^2 + (16 - s) gamma + 12 - s``, ``s =
    sigma_rel^-2``. ``0 < sigma_rel < 1 / sqrt(12)`` (``gamma > 0``).

    Example:
      >>> import optlab
      >>> round(optlab.sigma_rel_to_gamma(0.05), 2)
      16.97
    """
    _base.check_positive("sigma_rel_to_gamma", sigma_rel=sigma_rel)
    return _sigma_rel_to_gamma("sigma_rel_to_gamma", sigma_rel)


def _sigma_rel_to_gamma(fn_name: str, sigma_rel: Any) -> float:
    import numpy as np

    if not _base.is_concrete_number(sigma_rel):
        raise TypeError(
            f"`optlab.{fn_name}`: `sigma_rel` must be a Python or NumPy number,"
            f" got sigma_rel={sigma_rel!r}."
        )
    if not float(sigma_rel) < 12**-0.5:
        raise ValueError(
            f"`optlab.{fn_name}`: `sigma_rel` must be < 1/sqrt(12) ~ 0.2887 (gamma > 0),"
            f" got sigma_rel={sigma_rel!r}."
        )
    s = float(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


class PowerEMAState(NamedTuple):
    """State for :func:`optlab.power_ema`.

    Attributes:
      inner_state: state of the wrapped optimizer
      count: shape=(), int32: number of `update` calls so far
      ema: the power-function EMA of the iterates; initial params before step 1
    """

    inner_state: Any  # state of the wrapped optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    ema: Any  # the power-function EMA of the iterates; initial params before step 1

    averaging_name = "power_ema"

    def averaged(self) -> Any:
        return self.ema


def power_ema(
    inner: optax.GradientTransformation,
    sigma_rel: float = 0.05,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Power-function EMA of the parameters (EDM2), parameterized by its relative width.

    Runs ``inner`` unchanged and keeps ``ema_t = beta_t ema_{t-1} + (1 - beta_t) x_t`` of
    the iterates ``x_t`` (``t = 1, 2, ...``) with ``beta_t = (1 - 1/t)^(gamma + 1)``: the
    average's weights follow the power profile ``~ s^gamma`` over ``s <= t`` whatever the
    length of training, so the average keeps a fixed *relative* width. ``gamma`` comes
    from ``sigma_rel`` (:func:`sigma_rel_to_gamma`; EDM2 uses 0.05 to 0.15). ``beta_1 = 0``:
    the average starts as the first iterate.

    Args:
      inner: the inner optimizer.
      sigma_rel: relative standard deviation of the averaging profile, in
        ``(0, 1/sqrt(12))`` (a concrete number: ``gamma`` is solved at construction).
      accumulator_dtype: dtype of the EMA (default: the parameters' dtype).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its updates are those of ``inner``.
      Read the average with :func:`optlab.averaged_params`.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.power_ema(optax.sgd(1.0), sigma_rel=0.1)
      >>> params = jnp.array([0.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([-1.0]), state, params)
      >>> optlab.averaged_params(state)  # beta_1 = 0: the first iterate
      Array([1.], dtype=float32)

    State:
      :class:`PowerEMAState` ``(inner_state, count, ema)``: one copy of the parameters.

    References:
      Karras et al., `Analyzing and Improving the Training Dynamics of Diffusion Models
      <https://arxiv.org/abs/2312.02696>`_, 2024
    """
    name = "power_ema"
    _base.check_positive(name, sigma_rel=sigma_rel)
    gamma = _sigma_rel_to_gamma(name, sigma_rel)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree(name, params)
        return PowerEMAState(
            inner.init(params), jnp.zeros([], jnp.int32), _copy_tree(params, accumulator_dtype)
        )

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state, new_params = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        t = optax.safe_increment(state.count)
        beta = (1.0 - 1.0 / t.astype(jnp.float32)) ** (gamma + 1.0)
        ema = _lerp(state.ema, new_params, 1.0 - beta)
        return updates, PowerEMAState(inner_state, t, ema)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Issue 12: post-hoc EMA reconstruction (EDM2)
# ---------------------------------------------------------------------------

__all__ += [
    "PowerEMAProfilesState",
    "PowerEMASnapshot",
    "power_ema_profiles",
    "power_ema_snapshots",
    "posthoc_ema_coefficients",
    "posthoc_ema",
]


class PowerEMAProfilesState(NamedTuple):
    """State for :func:`optlab.power_ema_profiles`.

    Attributes:
      inner_state: state of the wrapped optimizer
      count: shape=(), int32: number of `update` calls so far
      emas: one power-function EMA of the iterates per profile (a tuple of trees)
      sigma_rels: shape=(K,), float32: the profiles' relative widths (constant)
      snapshot_every: shape=(), int32: the snapshot period (constant)
    """

    inner_state: Any  # state of the wrapped optimizer
    count: jax.Array  # shape=(), int32: number of `update` calls so far
    emas: tuple  # one EMA tree per profile, in the params' (or accumulator) dtype
    sigma_rels: jax.Array  # shape=(K,), float32: the profiles' sigma_rel (constant)
    snapshot_every: jax.Array  # shape=(), int32: snapshot period (constant)

    averaging_name = "power_ema_profiles"

    def averaged(self) -> Any:
        """The first profile's EMA (all of them: :func:`optlab.power_ema_snapshots`)."""
        return self.emas[0]


class PowerEMASnapshot(NamedTuple):
    """One saved power-function EMA: the input of :func:`optlab.posthoc_ema`.

    Attributes:
      step: the number of optimizer steps ``t >= 1`` the EMA has seen (a Python int).
      sigma_rel: the profile's relative width (a Python float).
      params: the EMA of the iterates ``x_1 .. x_t`` (a parameter tree).
    """

    step: int
    sigma_rel: float
    params: Any


def _check_sigma_rel(fn_name: str, name: str, value: Any) -> float:
    """``value`` as a float in ``(0, 1/sqrt(12))``, else a ValueError/TypeError."""
    _base.check_positive(fn_name, **{name: value})
    if not _base.is_concrete_number(value):
        raise TypeError(
            f"`optlab.{fn_name}`: `{name}` must be a Python or NumPy number, got {name}={value!r}."
        )
    if not float(value) < 12**-0.5:
        raise ValueError(
            f"`optlab.{fn_name}`: `{name}` must be < 1/sqrt(12) ~ 0.2887 (gamma > 0),"
            f" got {name}={value!r}."
        )
    return float(value)


def power_ema_profiles(
    inner: optax.GradientTransformation,
    sigma_rels: Any = (0.05, 0.10),
    snapshot_every: int = 1000,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Tracks several power-function EMAs (EDM2) for post-hoc EMA reconstruction.

    Runs ``inner`` unchanged and keeps, for each ``sigma_rel`` in ``sigma_rels``, the EMA
    of :func:`optlab.power_ema`: ``ema_t = beta_t ema_{t-1} + (1 - beta_t) x_t`` with
    ``beta_t = (1 - 1/t)^(gamma + 1)`` and ``gamma`` from ``sigma_rel``
    (:func:`optlab.sigma_rel_to_gamma`). The state has a fixed size (one copy of the
    parameters per profile); the *snapshots* live outside it: every ``snapshot_every``
    steps, :func:`optlab.power_ema_snapshots` returns the current EMAs as
    :class:`PowerEMASnapshot` s for the user to keep (in memory or on disk), and
    :func:`optlab.posthoc_ema` later combines them into the EMA of any other
    ``sigma_rel``, at any snapshot step, without retraining (EDM2 tracks two profiles,
    ``sigma_rel = 0.05`` and ``0.10``, and saves snapshots every ~4% of training).

    Args:
      inner: the inner optimizer.
      sigma_rels: the profiles' relative widths: distinct concrete numbers in
        ``(0, 1/sqrt(12))`` (a list or tuple, at least one; two or more make
        reconstruction accurate).
      snapshot_every: the snapshot period in steps (a Python int >= 1), read by
        :func:`optlab.power_ema_snapshots`.
      accumulator_dtype: dtype of the EMAs (default: the parameters' dtype).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its updates are those of ``inner``.
      :func:`optlab.averaged_params` reads the first profile.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.power_ema_profiles(optax.sgd(1.0), (0.05, 0.1), snapshot_every=2)
      >>> params, snapshots = jnp.zeros(1), []
      >>> state = tx.init(params)
      >>> for _ in range(4):  # x_t = t
      ...     updates, state = tx.update(-jnp.ones(1), state, params)
      ...     params = optax.apply_updates(params, updates)
      ...     snapshots += optlab.power_ema_snapshots(state)  # [] between snapshots
      >>> [(s.step, round(s.sigma_rel, 3)) for s in snapshots]
      [(2, 0.05), (2, 0.1), (4, 0.05), (4, 0.1)]
      >>> avg = optlab.posthoc_ema(snapshots, sigma_rel=0.1)  # profile 0.1 at step 4
      >>> bool(jnp.allclose(avg, snapshots[-1].params, rtol=1e-5))
      True

    State:
      :class:`PowerEMAProfilesState` ``(inner_state, count, emas, sigma_rels,
      snapshot_every)``: one copy of the parameters per profile.

    References:
      Karras et al., `Analyzing and Improving the Training Dynamics of Diffusion Models
      <https://arxiv.org/abs/2312.02696>`_, 2024 (Section 3, Appendix C)
    """
    name = "power_ema_profiles"
    if not isinstance(sigma_rels, (list, tuple)) or not sigma_rels:
        raise TypeError(
            f"`optlab.{name}`: `sigma_rels` must be a non-empty list or tuple of numbers,"
            f" got sigma_rels={sigma_rels!r}."
        )
    sigmas = [_check_sigma_rel(name, f"sigma_rels[{i}]", s) for i, s in enumerate(sigma_rels)]
    if len(set(sigmas)) != len(sigmas):
        raise ValueError(
            f"`optlab.{name}`: `sigma_rels` must be distinct, got sigma_rels={sigma_rels!r}."
        )
    _base.check_int(name, snapshot_every=snapshot_every)
    gammas = [_sigma_rel_to_gamma(name, s) for s in sigmas]
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _base.check_float_tree(name, params)
        return PowerEMAProfilesState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            emas=tuple(_copy_tree(params, accumulator_dtype) for _ in gammas),
            sigma_rels=jnp.asarray(sigmas, jnp.float32),
            snapshot_every=jnp.asarray(snapshot_every, jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state, new_params = _inner_update(
            inner, updates, state.inner_state, params, extra_args
        )
        t = optax.safe_increment(state.count)
        tf = t.astype(jnp.float32)
        emas = tuple(
            _lerp(ema, new_params, 1.0 - (1.0 - 1.0 / tf) ** (g + 1.0))
            for ema, g in zip(state.emas, gammas)
        )
        return updates, state._replace(inner_state=inner_state, count=t, emas=emas)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _find_profiles_state(fn_name: str, state: Any) -> PowerEMAProfilesState:
    state = unwrap_variables(state)
    found = [s for _, s in _find_states(state) if isinstance(s, PowerEMAProfilesState)]
    if len(found) != 1:
        raise ValueError(
            f"`optlab.{fn_name}`: `state` must hold exactly one `optlab.power_ema_profiles`"
            f" state, found {len(found)} in a state of type {type(state).__name__}."
        )
    return found[0]


def power_ema_snapshots(state: Any, force: bool = False) -> list[PowerEMASnapshot]:
    """The snapshots to save now from a :func:`optlab.power_ema_profiles` state.

    Returns one :class:`PowerEMASnapshot` per tracked profile when the step count is a
    positive multiple of ``snapshot_every`` (or ``force=True`` after at least one step),
    else an empty list, so ``snapshots += power_ema_snapshots(state)`` after every step
    collects the snapshots. Reads the step count on the host: call it outside ``jit``.
    The state is found anywhere in a (wrapped) optimizer state, or a Flax
    ``nnx.Optimizer``.

    Args:
      state: an optimizer state holding one ``power_ema_profiles`` state.
      force: snapshot now whatever the step (after at least one step).

    Returns:
      A list of :class:`PowerEMASnapshot` ``(step, sigma_rel, params)``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.power_ema_profiles(optax.sgd(1.0), snapshot_every=10)
      >>> state = tx.init(jnp.zeros(2))
      >>> _, state = tx.update(jnp.ones(2), state, jnp.zeros(2))
      >>> optlab.power_ema_snapshots(state), len(optlab.power_ema_snapshots(state, force=True))
      ([], 2)
    """
    fn = "power_ema_snapshots"
    st = _find_profiles_state(fn, state)
    step = int(st.count)
    every = int(st.snapshot_every)
    if step < 1 or not (force or step % every == 0):
        return []
    # the float32 stored, read back as its shortest decimal: the user's 0.05, not 0.0500000007
    sigmas = [float(str(s)) for s in np.asarray(st.sigma_rels, np.float32)]
    return [
        PowerEMASnapshot(step, s, _copy_tree(ema)) for s, ema in zip(sigmas, st.emas, strict=True)
    ]


def _power_correlation(t_a, g_a, t_b, g_b):
    """``<p_a, p_b> = int p_a(s) p_b(s) ds`` of the continuous power profiles
    ``p(s) = (g + 1) s^g / t^(g + 1)`` on ``[0, t]`` (EDM2 Eq. 151), float64, broadcast."""
    t_min, t_max = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    g_long = np.where(t_a < t_b, g_b, g_a)  # the exponent of the longer profile
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (t_min / t_max) ** g_long / t_max


def posthoc_ema_coefficients(steps: Any, sigma_rels: Any, step: Any, sigma_rel: Any) -> np.ndarray:
    """Weights ``c`` with ``sum_i c_i snapshot_i`` ~ the power EMA of ``sigma_rel`` at ``step``.

    Snapshot ``i`` is a power-function EMA with exponent ``gamma_i`` at step ``t_i``; its
    weights over time are the profile ``p_i(s) = (gamma_i + 1) s^gamma_i / t_i^(gamma_i +
    1)`` on ``[0, t_i]`` (exactly: the discrete EMA gives iterate ``x_s`` the integral of
    ``p_i`` over ``[s - 1, s]``). The target profile ``p`` is matched in least squares,
    ``min_c || sum_i c_i p_i - p ||_{L2}``: the normal equations ``A c = b`` with ``A_ij =
    <p_i, p_j>`` and ``b_i = <p_i, p>`` in closed form (EDM2 Algorithm 3), then
    ``c / sum(c)`` so that the weights sum to one (a constant trajectory is kept).
    Computed in float64 with NumPy.

    Args:
      steps: the snapshots' steps ``t_i >= 1`` (a 1-D sequence).
      sigma_rels: the snapshots' relative widths (same length).
      step: the target step ``t`` (``1 <= t <= max(steps)``).
      sigma_rel: the target relative width, in ``(0, 1/sqrt(12))``.

    Returns:
      A float64 NumPy array of one coefficient per snapshot (they may be negative).

    Example:
      >>> import numpy as np, optlab
      >>> c = optlab.posthoc_ema_coefficients([100, 100], [0.05, 0.1], 100, 0.1)
      >>> np.round(c, 6) + 0.0
      array([0., 1.])

    References:
      Karras et al., `Analyzing and Improving the Training Dynamics of Diffusion Models
      <https://arxiv.org/abs/2312.02696>`_, 2024 (Appendix C.3, Algorithm 3)
    """
    return _posthoc_coefficients("posthoc_ema_coefficients", steps, sigma_rels, step, sigma_rel)


def _posthoc_coefficients(fn: str, steps: Any, sigma_rels: Any, step: Any, sigma_rel: Any):
    t_in, s_in = np.asarray(steps), np.asarray(sigma_rels)
    if t_in.ndim != 1 or s_in.shape != t_in.shape or t_in.size == 0:
        raise ValueError(
            f"`optlab.{fn}`: `steps` and `sigma_rels` must be non-empty 1-D sequences of the"
            f" same length, got shapes {t_in.shape} and {s_in.shape}."
        )
    g_in = np.array([_sigma_rel_to_gamma(fn, _check_sigma_rel(fn, "sigma_rels", s)) for s in s_in])
    t_in = np.array([_check_step(fn, "steps", t) for t in t_in], np.float64)
    t_out = _check_step(fn, "step", step)
    if t_out > t_in.max():
        raise ValueError(
            f"`optlab.{fn}`: `step` must be <= the last snapshot's step {int(t_in.max())}"
            f" (the snapshots do not see later iterates), got step={step!r}."
        )
    g_out = _sigma_rel_to_gamma(fn, _check_sigma_rel(fn, "sigma_rel", sigma_rel))
    pairs = set()
    for t, s in zip(t_in.tolist(), s_in.tolist()):
        if (t, s) in pairs:
            raise ValueError(
                f"`optlab.{fn}`: two snapshots have the same step {int(t)} and sigma_rel {s}"
                " (the least-squares system is singular); pass each once."
            )
        pairs.add((t, s))
    a = _power_correlation(t_in[:, None], g_in[:, None], t_in[None, :], g_in[None, :])
    b = _power_correlation(t_in, g_in, float(t_out), g_out)
    try:
        c = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:  # numerically singular: the minimum-norm solution
        c = np.linalg.lstsq(a, b, rcond=None)[0]
    total = c.sum()
    if not np.all(np.isfinite(c)) or total == 0:
        raise ValueError(
            f"`optlab.{fn}`: the least-squares system is too ill-conditioned to solve"
            f" (coefficients {c}); use fewer, more distinct snapshots."
        )
    return c / total


def _check_step(fn_name: str, name: str, value: Any) -> int:
    v = np.asarray(value)
    if v.ndim != 0 or v.dtype == bool or not np.issubdtype(v.dtype, np.number):
        raise TypeError(f"`optlab.{fn_name}`: `{name}` must hold integers >= 1, got {value!r}.")
    if not np.isfinite(v) or float(v) != int(v) or int(v) < 1:
        raise ValueError(f"`optlab.{fn_name}`: `{name}` must hold integers >= 1, got {value!r}.")
    return int(v)


@jax.jit
def _weighted_sum_kernel(coef, *leaves):
    acc = jnp.promote_types(leaves[0].dtype, jnp.float32)
    out = sum(coef[i].astype(acc) * x.astype(acc) for i, x in enumerate(leaves))
    return out.astype(leaves[0].dtype)


def posthoc_ema(snapshots: Any, sigma_rel: float, step: int | None = None) -> Any:
    """Post-hoc EMA: the power-function EMA of any ``sigma_rel``, rebuilt from snapshots.

    Solves for the coefficients :func:`optlab.posthoc_ema_coefficients` of the
    snapshots' EMA profiles that best match (least squares on the profiles) the
    power-function EMA of width ``sigma_rel`` at ``step``, and returns ``sum_i c_i
    snapshot_i`` (in at least float32, cast to the first snapshot's dtypes). Asking for a
    tracked profile at a snapshot step returns that snapshot (to rounding). Runs eagerly,
    on the host for the coefficients.

    Args:
      snapshots: a non-empty list of :class:`PowerEMASnapshot` (or ``(step, sigma_rel,
        params)`` tuples), e.g. collected with :func:`optlab.power_ema_snapshots` from
        :func:`optlab.power_ema_profiles`; all ``params`` with the same structure and
        shapes.
      sigma_rel: the wanted relative width, in ``(0, 1/sqrt(12))``.
      step: the wanted step (default: the last snapshot step).

    Returns:
      The reconstructed EMA parameters.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> snaps = [optlab.PowerEMASnapshot(10, 0.05, {"w": jnp.ones(2)}),
      ...          optlab.PowerEMASnapshot(10, 0.10, {"w": jnp.ones(2)})]
      >>> optlab.posthoc_ema(snaps, sigma_rel=0.07)  # the weights sum to one
      {'w': Array([1., 1.], dtype=float32)}

    References:
      Karras et al., `Analyzing and Improving the Training Dynamics of Diffusion Models
      <https://arxiv.org/abs/2312.02696>`_, 2024 (Section 3.2, Appendix C)
    """
    fn = "posthoc_ema"
    if not isinstance(snapshots, (list, tuple)) or not snapshots:
        raise ValueError(
            f"`optlab.{fn}`: `snapshots` must be a non-empty list of PowerEMASnapshot"
            f" (step, sigma_rel, params), got {snapshots!r}."
        )
    for i, s in enumerate(snapshots):
        if not isinstance(s, tuple) or len(s) != 3:
            raise TypeError(
                f"`optlab.{fn}`: `snapshots[{i}]` must be a PowerEMASnapshot (step, sigma_rel,"
                f" params), got {type(s).__name__}."
            )
    snaps = [PowerEMASnapshot(*s) for s in snapshots]
    ref = snaps[0].params
    ref_leaves = jax.tree_util.tree_leaves_with_path(ref)
    for i, s in enumerate(snaps[1:], start=1):
        _base.check_same_structure(
            fn, ref, s.params, "snapshots[0].params", f"snapshots[{i}].params"
        )
        for (path, a), b in zip(ref_leaves, jax.tree.leaves(s.params)):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(
                    f"`optlab.{fn}`: `snapshots[0].params` and `snapshots[{i}].params` have"
                    f" different shapes at {jax.tree_util.keystr(path) or '<root>'}:"
                    f" {jnp.shape(a)} and {jnp.shape(b)}."
                )
    steps = [s.step for s in snaps]
    if step is None:
        step = max(_check_step(fn, "snapshots[i].step", t) for t in steps)
    coef = _posthoc_coefficients(fn, steps, [s.sigma_rel for s in snaps], step, sigma_rel)
    coef = jnp.asarray(coef, jnp.float32)
    return _tree.tree_map(
        lambda *xs: _weighted_sum_kernel(coef, *map(jnp.asarray, xs)), *[s.params for s in snaps]
    )
