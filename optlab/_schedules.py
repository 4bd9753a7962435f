"""Learning-rate schedules optax lacks, and scaling rules for hyperparameters.

Every schedule here is a plain :data:`optax.Schedule` (a function of the step count
returning a scalar), built from optax's pieces (``optax.join_schedules``,
``optax.linear_schedule``, ``optax.constant_schedule``, ``optax.cosine_onecycle_schedule``)
where they fit. They accept a traced step (``jit``-safe, no Python control flow on the
step), so they can drive any hyperparameter: pass one as ``learning_rate`` or, for
``b1`` / ``momentum``, through ``optax.inject_hyperparams``.

Conventions: the step count is the number of updates already applied (optax's
``count``, 0 for the first update); ``total_steps`` is the number of updates, so the
last update uses step ``total_steps - 1`` and the value at ``total_steps`` (and after)
is the final value.

The scaling-rule helpers at the end are plain functions of Python numbers (batch-size
learning-rate scaling, AdamW's weight-decay timescale, muP per-layer Adam learning
rates as an ``optax.partition`` label function).

Not here: the UBA budget-aware schedule ("Stepsize anything", 2025): its closed form
could not be read from the paper with the tools available to us, and we do not guess
a formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base

__all__ = [
    "adamw_timescale",
    "batch_size_scaled_learning_rate",
    "cyclic_schedule",
    "inverse_sqrt_schedule",
    "linear_decay_to_zero",
    "mup_adam_learning_rates",
    "mup_param_labels",
    "onecycle",
    "refine_schedule",
    "weight_decay_for_timescale",
    "wsd_schedule",
]

DECAY_SHAPES = ("linear", "1-sqrt", "cosine")


# ---------------------------------------------------------------------------
# Validation (schedules are built eagerly, so every argument is concrete here)
# ---------------------------------------------------------------------------


def _check_steps(fn: str, minimum: int = 0, **steps: Any) -> None:
    _base.check_int(fn, minimum=minimum, **steps)


def _check_value(fn: str, **values: Any) -> None:
    """A schedule value: a real number (not None, str, bool, complex), finite, >= 0."""
    for name, value in values.items():
        if value is None or isinstance(value, (str, bool, complex)) or callable(value):
            raise TypeError(f"`optlab.{fn}`: `{name}` must be a real number, got {name}={value!r}.")
        if not isinstance(value, jax.core.Tracer) and jnp.ndim(value) != 0:
            raise TypeError(f"`optlab.{fn}`: `{name}` must be a scalar, got {name}={value!r}.")
    _base.check_nonnegative(fn, **values)


def _check_shape(fn: str, name: str, shape: str) -> None:
    if shape not in DECAY_SHAPES:
        raise ValueError(
            f"`optlab.{fn}`: `{name}` must be one of {DECAY_SHAPES}, got {name}={shape!r}."
        )


def _decay(shape: str, start: Any, end: Any, steps: int) -> optax.Schedule:
    """A schedule going from ``start`` (step 0) to ``end`` (step ``steps``) with ``shape``."""
    if shape == "linear":
        return optax.linear_schedule(start, end, max(steps, 1))

    def schedule(count):
        s = jnp.clip(jnp.asarray(count, jnp.float32) / max(steps, 1), 0.0, 1.0)
        if shape == "1-sqrt":
            frac = 1.0 - jnp.sqrt(s)
        else:  # cosine
            frac = 0.5 * (1.0 + jnp.cos(jnp.pi * s))
        return end + (start - end) * frac

    return schedule


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------


def wsd_schedule(
    peak_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    decay_fraction: float | None = None,
    decay_shape: str = "1-sqrt",
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> optax.Schedule:
    r"""Warmup-stable-decay (trapezoidal) schedule: warmup, constant, cooldown.

    With :math:`W` = ``warmup_steps``, :math:`D` = ``decay_steps`` and :math:`T` =
    ``total_steps``::

      t <  W          init_value -> peak_value, linearly
      W <= t < T - D  peak_value
      T - D <= t <= T peak_value -> end_value with s = (t - (T - D)) / D in [0, 1]:
                        "linear":  1 - s
                        "1-sqrt":  1 - sqrt(s)       (the reference's best cooldown)
                        "cosine":  (1 + cos(pi s)) / 2
      t >= T          end_value

    The schedule is continuous at both joins and equals ``end_value`` at ``T``. A long
    run with the constant phase can be *branched*: a cooldown started at any step
    gives a model comparable to a cosine run of that length, so one run serves many
    budgets (see ``benchmarks/schedules.py``).

    Args:
      peak_value: the constant value (>= 0).
      total_steps: the number of updates ``T`` (int >= 1).
      warmup_steps: linear warmup length (int, 0 <= W <= T).
      decay_steps: cooldown length (int, W + D <= T). Give this or ``decay_fraction``.
      decay_fraction: cooldown length as a fraction of ``total_steps`` (in [0, 1],
        rounded to an int); default 0.2 when neither is given.
      decay_shape: ``"linear"``, ``"1-sqrt"`` or ``"cosine"``.
      init_value: value at step 0 (>= 0).
      end_value: value at ``total_steps`` (>= 0).

    Returns:
      An ``optax.Schedule`` (``jit``-safe).

    Example:
      >>> import optlab
      >>> lr = optlab.wsd_schedule(1.0, total_steps=100, warmup_steps=10, decay_steps=20)
      >>> [round(float(lr(t)), 3) for t in (0, 5, 10, 50, 80, 85, 100)]
      [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]

    References:
      Hägele, Bakouch, Kosson, Ben Allal, Von Werra and Jaggi, `Scaling Laws and
      Compute-Optimal Training Beyond Fixed Training Durations
      <https://arxiv.org/abs/2405.18392>`_, 2024.
    """
    fn = "wsd_schedule"
    _check_value(fn, peak_value=peak_value, init_value=init_value, end_value=end_value)
    _check_steps(fn, minimum=1, total_steps=total_steps)
    _check_steps(fn, warmup_steps=warmup_steps)
    _check_shape(fn, "decay_shape", decay_shape)
    if decay_steps is not None and decay_fraction is not None:
        raise ValueError(
            f"`optlab.{fn}`: give `decay_steps` or `decay_fraction`, not both; got"
            f" decay_steps={decay_steps!r}, decay_fraction={decay_fraction!r}."
        )
    if decay_steps is None:
        if decay_fraction is None:
            decay_fraction = 0.2
        _check_value(fn, decay_fraction=decay_fraction)
        _base.check_unit_interval(fn, decay_fraction=decay_fraction)
        decay_steps = round(float(decay_fraction) * total_steps)
    _check_steps(fn, decay_steps=decay_steps)
    if warmup_steps > total_steps:
        raise ValueError(
            f"`optlab.{fn}`: `warmup_steps` must be <= total_steps={total_steps}, got"
            f" warmup_steps={warmup_steps}."
        )
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"`optlab.{fn}`: `decay_steps` must be <= total_steps - warmup_steps ="
            f" {total_steps - warmup_steps}, got decay_steps={decay_steps}"
            f" (warmup_steps={warmup_steps})."
        )
    decay_start = total_steps - decay_steps
    schedules = [
        optax.linear_schedule(init_value, peak_value, max(warmup_steps, 1)),
        optax.constant_schedule(peak_value),
        _decay(decay_shape, peak_value, end_value, decay_steps),
        optax.constant_schedule(end_value),
    ]
    return optax.join_schedules(schedules, [warmup_steps, decay_start, total_steps])


def linear_decay_to_zero(
    peak_value: float, total_steps: int, warmup_steps: int = 0, init_value: float = 0.0
) -> optax.Schedule:
    """Linear warmup to ``peak_value``, then linear decay to exactly zero at ``total_steps``.

    ``wsd_schedule`` with no constant phase (``decay_steps = total_steps - warmup_steps``,
    ``decay_shape="linear"``, ``end_value=0``). The reference finds it matches or beats
    cosine decay at equal steps, and it is the schedule its refinement recovers.

    Args:
      peak_value: the value after warmup (>= 0).
      total_steps: number of updates (int >= 1); the value is 0 from there on.
      warmup_steps: linear warmup length (int, <= total_steps).
      init_value: value at step 0 (>= 0).

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> import optlab
      >>> lr = optlab.linear_decay_to_zero(0.1, total_steps=100, warmup_steps=10)
      >>> [round(float(lr(t)), 3) for t in (0, 10, 55, 100, 200)]
      [0.0, 0.1, 0.05, 0.0, 0.0]

    References:
      Defazio, Cutkosky, Mehta and Mishchenko, `When, Why and How Much? Adaptive
      Learning Rate Scheduling by Refinement <https://arxiv.org/abs/2310.07831>`_, 2023.
    """
    fn = "linear_decay_to_zero"
    _check_value(fn, peak_value=peak_value, init_value=init_value)
    _check_steps(fn, minimum=1, total_steps=total_steps)
    _check_steps(fn, warmup_steps=warmup_steps)
    if warmup_steps > total_steps:
        raise ValueError(
            f"`optlab.{fn}`: `warmup_steps` must be <= total_steps={total_steps}, got"
            f" warmup_steps={warmup_steps}."
        )
    return optax.join_schedules(
        [
            optax.linear_schedule(init_value, peak_value, max(warmup_steps, 1)),
            optax.linear_schedule(peak_value, 0.0, max(total_steps - warmup_steps, 1)),
        ],
        [warmup_steps],
    )


def inverse_sqrt_schedule(
    peak_value: float,
    warmup_steps: int = 0,
    timescale: float | None = None,
    cooldown_steps: int = 0,
    total_steps: int | None = None,
    decay_shape: str = "linear",
    init_value: float = 0.0,
) -> optax.Schedule:
    r"""Linear warmup, then :math:`1/\sqrt{t}` decay, with an optional final cooldown.

    ::

      t <  W               init_value -> peak_value, linearly
      t >= W               v(t) = peak_value / sqrt(1 + (t - W) / timescale)
      last cooldown_steps  v(T - C) -> 0 with ``decay_shape`` (as in wsd_schedule)

    ``timescale`` defaults to ``max(W, 1)``, which gives the Transformer ("Noam")
    rule :math:`\eta \sqrt{W / t}` for ``t >= W``. Without a cooldown the schedule
    never ends, so training can be extended; the cooldown (needs ``total_steps``)
    brings it to zero at ``total_steps`` like WSD's.

    Args:
      peak_value: value at the end of warmup (>= 0).
      warmup_steps: linear warmup length (int >= 0).
      timescale: steps over which the value falls by sqrt(2) after warmup (> 0).
      cooldown_steps: length of the final cooldown (int >= 0; needs ``total_steps``).
      total_steps: number of updates (int, >= warmup_steps + cooldown_steps).
      decay_shape: cooldown shape, ``"linear"``, ``"1-sqrt"`` or ``"cosine"``.
      init_value: value at step 0 (>= 0).

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> import optlab
      >>> lr = optlab.inverse_sqrt_schedule(1.0, warmup_steps=100)
      >>> [round(float(lr(t)), 3) for t in (0, 50, 100, 400)]
      [0.0, 0.5, 1.0, 0.5]

    References:
      Vaswani et al., `Attention Is All You Need <https://arxiv.org/abs/1706.03762>`_,
      2017. Zhai, Kolesnikov, Houlsby and Beyer, `Scaling Vision Transformers
      <https://arxiv.org/abs/2106.04560>`_, 2022 (the cooldown).
    """
    fn = "inverse_sqrt_schedule"
    _check_value(fn, peak_value=peak_value, init_value=init_value)
    _check_steps(fn, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
    _check_shape(fn, "decay_shape", decay_shape)
    if timescale is None:
        timescale = float(max(warmup_steps, 1))
    _base.check_positive(fn, timescale=timescale)
    if cooldown_steps and total_steps is None:
        raise ValueError(
            f"`optlab.{fn}`: a cooldown needs `total_steps`; got cooldown_steps={cooldown_steps}"
            " and total_steps=None."
        )
    if total_steps is not None:
        _check_steps(fn, minimum=1, total_steps=total_steps)
        if warmup_steps + cooldown_steps > total_steps:
            raise ValueError(
                f"`optlab.{fn}`: `cooldown_steps` must be <= total_steps - warmup_steps ="
                f" {total_steps - warmup_steps}, got cooldown_steps={cooldown_steps}"
                f" (warmup_steps={warmup_steps})."
            )

    def decay(count):
        t = jnp.maximum(jnp.asarray(count, jnp.float32), 0.0)
        return peak_value * jax.lax.rsqrt(1.0 + t / timescale)

    schedules = [optax.linear_schedule(init_value, peak_value, max(warmup_steps, 1)), decay]
    boundaries = [warmup_steps]
    if cooldown_steps:
        start = total_steps - cooldown_steps
        v_start = float(peak_value) / math.sqrt(1.0 + (start - warmup_steps) / float(timescale))
        schedules += [
            _decay(decay_shape, v_start, 0.0, cooldown_steps),
            optax.constant_schedule(0.0),
        ]
        boundaries += [start, total_steps]
    return optax.join_schedules(schedules, boundaries)


def cyclic_schedule(
    min_value: float, max_value: float, cycle_steps: int, mode: str = "triangular"
) -> optax.Schedule:
    r"""A periodic schedule between ``min_value`` and ``max_value`` (period ``cycle_steps``).

    With :math:`f = (t \bmod c) / c` the position in the cycle:

    * ``"triangular"`` (cyclical learning rates): up from min to max over the first
      half, down again over the second: ``min + (max - min) (1 - |2 f - 1|)``.
    * ``"cosine"`` (warm restarts): ``min + (max - min) (1 + cos(pi f)) / 2``, from max
      to min, then a restart.
    * ``"swa"`` (the SWA cyclic rule): linear from max down to min, reaching min at the
      last step of each cycle (:math:`f' = (t \bmod c + 1) / c`,
      ``max + (min - max) f'``); SWA averages the weights at those steps
      (``optlab.swa(..., every=cycle_steps)``).

    Args:
      min_value: lowest value (>= 0).
      max_value: highest value (>= min_value).
      cycle_steps: period in steps (int >= 1).
      mode: ``"triangular"``, ``"cosine"`` or ``"swa"``.

    Returns:
      An ``optax.Schedule``.

    Example:
      >>> import optlab
      >>> lr = optlab.cyclic_schedule(0.0, 1.0, cycle_steps=4)
      >>> [float(lr(t)) for t in range(6)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.5]

    References:
      Smith, `Cyclical Learning Rates for Training Neural Networks
      <https://arxiv.org/abs/1506.01186>`_, 2017. Loshchilov and Hutter, `SGDR
      <https://arxiv.org/abs/1608.03983>`_, 2017. Izmailov et al., `Averaging Weights
      Leads to Wider Optima and Better Generalization <https://arxiv.org/abs/1803.05407>`_,
      2018.
    """
    fn = "cyclic_schedule"
    _check_value(fn, min_value=min_value, max_value=max_value)
    _check_steps(fn, minimum=1, cycle_steps=cycle_steps)
    if float(max_value) < float(min_value):
        raise ValueError(
            f"`optlab.{fn}`: `max_value` must be >= min_value={min_value}, got"
            f" max_value={max_value}."
        )
    modes = ("triangular", "cosine", "swa")
    if mode not in modes:
        raise ValueError(f"`optlab.{fn}`: `mode` must be one of {modes}, got mode={mode!r}.")

    def schedule(count):
        t = jnp.maximum(jnp.asarray(count, jnp.int32), 0) % cycle_steps
        f = t.astype(jnp.float32) / cycle_steps
        if mode == "triangular":
            frac = 1.0 - jnp.abs(2.0 * f - 1.0)
        elif mode == "cosine":
            frac = 0.5 * (1.0 + jnp.cos(jnp.pi * f))
        else:
            frac = 1.0 - (t + 1).astype(jnp.float32) / cycle_steps
        return min_value + (max_value - min_value) * frac

    return schedule


def onecycle(
    peak_value: float,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    min_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> tuple[optax.Schedule, optax.Schedule]:
    r"""The 1cycle policy: a learning-rate schedule and the inverse momentum schedule.

    The learning rate rises (cosine) from ``peak_value / div_factor`` to ``peak_value``
    over the first ``pct_start`` of the steps, then falls to ``peak_value /
    (div_factor * final_div_factor)`` (``optax.cosine_onecycle_schedule``). The
    momentum does the opposite: from ``max_momentum`` down to ``min_momentum`` while
    the learning rate rises, then back up, so momentum is lowest when the learning
    rate is highest.

    Args:
      peak_value: the highest learning rate (>= 0).
      total_steps: number of updates (int >= 1).
      pct_start: fraction of the steps spent rising (in (0, 1)).
      div_factor: initial learning rate is ``peak_value / div_factor`` (> 0).
      final_div_factor: final learning rate is the initial one / this (> 0).
      min_momentum: momentum at the learning-rate peak (in [0, 1)).
      max_momentum: momentum at the ends (in [min_momentum, 1)).

    Returns:
      ``(learning_rate_schedule, momentum_schedule)``; give the second to ``b1`` or
      ``momentum`` through ``optax.inject_hyperparams``.

    Example:
      >>> import optax, optlab
      >>> lr, mom = optlab.onecycle(0.1, total_steps=100)
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=mom)
      >>> round(float(lr(30)), 3), round(float(mom(30)), 3)
      (0.1, 0.85)

    References:
      Smith, `A disciplined approach to neural network hyper-parameters: Part 1
      <https://arxiv.org/abs/1803.09820>`_, 2018.
    """
    fn = "onecycle"
    _check_value(fn, peak_value=peak_value)
    _check_steps(fn, minimum=1, total_steps=total_steps)
    _base.check_positive(fn, div_factor=div_factor, final_div_factor=final_div_factor)
    _base.check_decay(fn, min_momentum=min_momentum, max_momentum=max_momentum)
    _base.check_unit_interval(fn, pct_start=pct_start)
    if not 0.0 < float(pct_start) < 1.0:
        raise ValueError(
            f"`optlab.{fn}`: `pct_start` must be in (0, 1), got pct_start={pct_start}."
        )
    if float(max_momentum) < float(min_momentum):
        raise ValueError(
            f"`optlab.{fn}`: `max_momentum` must be >= min_momentum={min_momentum}, got"
            f" max_momentum={max_momentum}."
        )
    lr = optax.cosine_onecycle_schedule(
        total_steps, peak_value, pct_start, div_factor, final_div_factor
    )
    up = int(pct_start * total_steps)  # optax's boundary for the peak
    momentum = optax.join_schedules(
        [
            _decay("cosine", max_momentum, min_momentum, up),
            _decay("cosine", min_momentum, max_momentum, total_steps - up),
        ],
        [up],
    )
    return lr, momentum


def refine_schedule(
    grad_norms: Any, peak_value: float = 1.0, total_steps: int | None = None
) -> optax.Schedule:
    r"""A schedule refined from the gradient norms logged during a previous run.

    Given the norms :math:`\|g_1\|, \dots, \|g_T\|` of a run of length :math:`T`,
    the refined schedule (for SGD-like methods) is

    .. math::  w_t \propto \|g_t\|^{-2} \sum_{s > t} \|g_s\|^2,

    scaled so that its largest value is ``peak_value``. It always ends at zero and
    decays where the gradient norms stay level (a flat norm sequence gives exactly
    linear decay to zero); it is meant to be used with a new run of the same length
    (or ``total_steps``, resampled linearly), with warmup added if wanted
    (``optax.join_schedules``). The reference smooths the norms first (e.g. a median
    filter): pass smoothed norms.

    Args:
      grad_norms: 1-D sequence of positive, finite gradient norms (concrete).
      peak_value: the largest value of the schedule (>= 0).
      total_steps: length of the new run (int >= 1); default ``len(grad_norms)``.

    Returns:
      An ``optax.Schedule``: step ``t`` reads the refined value (0 after the end).

    Example:
      >>> import numpy as np, optlab
      >>> lr = optlab.refine_schedule(np.ones(4), peak_value=1.0)
      >>> [float(lr(t)) for t in range(5)]
      [1.0, 0.6666666865348816, 0.3333333432674408, 0.0, 0.0]

    References:
      Defazio, Cutkosky, Mehta and Mishchenko, `When, Why and How Much? Adaptive
      Learning Rate Scheduling by Refinement <https://arxiv.org/abs/2310.07831>`_, 2023.
    """
    fn = "refine_schedule"
    _check_value(fn, peak_value=peak_value)
    if isinstance(grad_norms, jax.core.Tracer):
        raise TypeError(f"`optlab.{fn}`: `grad_norms` must be concrete (logged), not traced.")
    g = np.asarray(grad_norms, dtype=np.float64)
    if g.ndim != 1 or g.size < 1:
        raise ValueError(
            f"`optlab.{fn}`: `grad_norms` must be a non-empty 1-D sequence, got shape {g.shape}."
        )
    if not (np.all(np.isfinite(g)) and np.all(g > 0)):
        raise ValueError(
            f"`optlab.{fn}`: every entry of `grad_norms` must be finite and > 0, got"
            f" min={g.min()!r}, max={g.max()!r}."
        )
    sq = g**2
    tail = np.concatenate([np.cumsum(sq[::-1])[::-1][1:], [0.0]])  # sum_{s > t} g_s^2
    w = tail / sq
    w = w / w.max() if w.max() > 0 else w
    n = g.size
    if total_steps is not None:
        _check_steps(fn, minimum=1, total_steps=total_steps)
        if total_steps != n:
            w = np.interp(np.linspace(0.0, n - 1, total_steps), np.arange(n), w)
            n = total_steps
    table = jnp.asarray(np.append(w * float(peak_value), 0.0), jnp.float32)

    def schedule(count):
        return table[jnp.clip(jnp.asarray(count, jnp.int32), 0, n)]

    return schedule


# ---------------------------------------------------------------------------
# Scaling rules
# ---------------------------------------------------------------------------


def batch_size_scaled_learning_rate(
    learning_rate: float, base_batch_size: int, batch_size: int, rule: str = "linear"
) -> float:
    r"""The learning rate for a new batch size, from one tuned at ``base_batch_size``.

    ``"linear"`` (SGD): :math:`\eta \, B / B_0`. ``"sqrt"`` (Adam and other adaptive
    methods): :math:`\eta \sqrt{B / B_0}`. Both hold below the critical batch size;
    beyond it the best learning rate stops growing.

    Args:
      learning_rate: the tuned learning rate (>= 0).
      base_batch_size: the batch size it was tuned at (int >= 1).
      batch_size: the new batch size (int >= 1).
      rule: ``"linear"`` or ``"sqrt"``.

    Returns:
      The scaled learning rate (a float).

    Example:
      >>> import optlab
      >>> optlab.batch_size_scaled_learning_rate(0.1, 256, 1024)
      0.4
      >>> optlab.batch_size_scaled_learning_rate(1e-3, 256, 1024, rule="sqrt")
      0.002

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017 (linear). Malladi, Lyu, Panigrahi and
      Arora, `On the SDEs and Scaling Rules for Adaptive Gradient Algorithms
      <https://arxiv.org/abs/2205.10287>`_, 2022 (square root).
    """
    fn = "batch_size_scaled_learning_rate"
    _check_value(fn, learning_rate=learning_rate)
    _check_steps(fn, minimum=1, base_batch_size=base_batch_size, batch_size=batch_size)
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return float(learning_rate) * ratio
    if rule == "sqrt":
        return float(learning_rate) * math.sqrt(ratio)
    raise ValueError(f"`optlab.{fn}`: `rule` must be 'linear' or 'sqrt', got rule={rule!r}.")


def adamw_timescale(
    learning_rate: float, weight_decay: float, batch_size: int, dataset_size: int
) -> float:
    r"""AdamW's averaging timescale in epochs, :math:`\tau = B / (\eta \lambda D)`.

    AdamW's weights are an exponential moving average of recent updates with
    timescale :math:`1 / (\eta \lambda)` iterations (``weight_decay`` is decoupled, as
    in ``optax.adamw``), i.e. :math:`\tau` epochs. The reference finds the best
    :math:`\tau` roughly constant as model and dataset grow: keep it fixed and derive
    ``weight_decay`` with :func:`optlab.weight_decay_for_timescale`.

    Args:
      learning_rate: AdamW's learning rate (> 0).
      weight_decay: AdamW's decoupled weight decay (> 0).
      batch_size: examples per step (int >= 1).
      dataset_size: examples per epoch (int >= 1).

    Returns:
      The timescale in epochs (a float).

    Example:
      >>> import optlab
      >>> optlab.adamw_timescale(1e-3, 0.1, batch_size=256, dataset_size=50_000)
      51.2

    References:
      Wang and Aitchison, `How to set AdamW's weight decay as you scale model and
      dataset size <https://arxiv.org/abs/2405.13698>`_, 2024.
    """
    fn = "adamw_timescale"
    _check_value(fn, learning_rate=learning_rate, weight_decay=weight_decay)
    _base.check_positive(fn, learning_rate=learning_rate, weight_decay=weight_decay)
    _check_steps(fn, minimum=1, batch_size=batch_size, dataset_size=dataset_size)
    return batch_size / (float(learning_rate) * float(weight_decay) * dataset_size)


def weight_decay_for_timescale(
    timescale: float, learning_rate: float, batch_size: int, dataset_size: int
) -> float:
    r"""AdamW's weight decay giving the timescale ``timescale`` (epochs):
    :math:`\lambda = B / (\eta \tau D)`, the inverse of :func:`optlab.adamw_timescale`.

    Args:
      timescale: the wanted timescale in epochs (> 0).
      learning_rate: AdamW's learning rate (> 0).
      batch_size: examples per step (int >= 1).
      dataset_size: examples per epoch (int >= 1).

    Returns:
      The decoupled weight decay (a float).

    Example:
      >>> import optlab
      >>> wd = optlab.weight_decay_for_timescale(51.2, 1e-3, 256, 50_000)
      >>> round(wd, 6)
      0.1

    References:
      Wang and Aitchison, `How to set AdamW's weight decay as you scale model and
      dataset size <https://arxiv.org/abs/2405.13698>`_, 2024.
    """
    fn = "weight_decay_for_timescale"
    _check_value(fn, timescale=timescale, learning_rate=learning_rate)
    _base.check_positive(fn, timescale=timescale, learning_rate=learning_rate)
    _check_steps(fn, minimum=1, batch_size=batch_size, dataset_size=dataset_size)
    return batch_size / (float(learning_rate) * float(timescale) * dataset_size)


MUP_LABELS = ("input", "hidden", "output", "vector")


def _widths(fn: str, width: int | Collection[int]) -> frozenset[int]:
    widths = (width,) if isinstance(width, (int, np.integer)) else tuple(width)
    if not widths:
        raise ValueError(f"`optlab.{fn}`: `width` must name at least one width, got {width!r}.")
    for w in widths:
        _check_steps(fn, minimum=1, width=w)
    return frozenset(int(w) for w in widths)


def mup_param_labels(width: int | Collection[int]) -> Callable[[Any], Any]:
    r"""A muP label function for ``optax.partition``: ``"input"``, ``"hidden"``, ``"output"``
    or ``"vector"`` per parameter leaf.

    ``width`` is the hidden width (or the set of widths) that grows with the model.
    A leaf with ``ndim >= 2`` in Flax's ``(..., fan_in, fan_out)`` layout is
    ``"input"`` when its ``fan_in`` (``shape[-2]``) is not a width (the data
    dimension), ``"output"`` when its ``fan_in`` is a width but its ``fan_out`` is not
    (the readout), and ``"hidden"`` when both are widths. Scalars and vectors
    (biases, norm scales) are ``"vector"``. Pair it with
    :func:`optlab.mup_adam_learning_rates`.

    Args:
      width: the width (int >= 1) or a collection of widths.

    Returns:
      A function ``params -> tree of labels``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> params = {"w_in": jnp.zeros((64, 256)), "w_h": jnp.zeros((256, 256)),
      ...           "w_out": jnp.zeros((256, 10)), "b": jnp.zeros(256)}
      >>> optlab.mup_param_labels(256)(params)
      {'b': 'vector', 'w_h': 'hidden', 'w_in': 'input', 'w_out': 'output'}
    """
    widths = _widths("mup_param_labels", width)

    def label(p):
        shape = jnp.shape(p)
        if len(shape) < 2:
            return "vector"
        fan_in, fan_out = shape[-2], shape[-1]
        if fan_in not in widths:
            return "input"
        return "hidden" if fan_out in widths else "output"

    def label_fn(params):
        return jax.tree.map(label, params)

    return label_fn


def mup_adam_learning_rates(learning_rate: float, width: int, base_width: int) -> dict[str, float]:
    r"""muP per-layer Adam learning rates, keyed by the labels of :func:`optlab.mup_param_labels`.

    For Adam, muP keeps the learning rate of input weights and of vector-like
    parameters, and scales the learning rate of hidden and output weights by
    :math:`1 / \text{fan\_in}`, here relative to the ``base_width`` it was tuned at:
    :math:`\eta \cdot \text{base\_width} / \text{width}`. A learning rate tuned on a
    small model then transfers to a wide one.

    Args:
      learning_rate: the learning rate tuned at ``base_width`` (>= 0).
      width: the hidden width of the model trained now (int >= 1).
      base_width: the hidden width the learning rate was tuned at (int >= 1).

    Returns:
      ``{"input": lr, "vector": lr, "hidden": lr * base/width, "output": lr * base/width}``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> lrs = optlab.mup_adam_learning_rates(1e-2, width=1024, base_width=256)
      >>> lrs["hidden"], lrs["input"]
      (0.0025, 0.01)
      >>> tx = optax.partition({k: optax.adam(v) for k, v in lrs.items()},
      ...                      optlab.mup_param_labels(1024))
      >>> state = tx.init({"w_in": jnp.zeros((64, 1024)), "w_h": jnp.zeros((1024, 1024))})

    References:
      Yang et al., `Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
      Hyperparameter Transfer <https://arxiv.org/abs/2203.03466>`_, 2022 (Table 3).
    """
    fn = "mup_adam_learning_rates"
    _check_value(fn, learning_rate=learning_rate)
    _check_steps(fn, minimum=1, width=width, base_width=base_width)
    scaled = float(learning_rate) * base_width / width
    return {
        "input": float(learning_rate),
        "vector": float(learning_rate),
        "hidden": scaled,
        "output": scaled,
    }
