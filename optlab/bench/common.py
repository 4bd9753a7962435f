"""What the digits and language-model jobs share: optimizer names, schedules, progress, output."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optlab

SAM_RHO = 0.05
# Named optimizers the jobs cannot run, and why.
UNSUPPORTED = {
    "dpsgd": "it needs per-example gradients and the l2_norm_clip / noise_multiplier"
    " hyperparameters (see optlab.dpsgd)",
}
# Formats matplotlib writes without extra libraries.
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def registered_names() -> set[str]:
    """The names of :func:`optlab.available`."""
    return {getattr(info, "name", info) for info in optlab.available()}


def normalize_name(name: str) -> str:
    """Names are case-insensitive (the registry's are lower case); ``-``/``_`` as registered."""
    return name.strip().lower()


def base_name(name: str) -> str:
    """``x`` for ``sam-x``, else ``name``."""
    return name.removeprefix("sam-")


def is_known(name: str, known: set[str] | None = None) -> bool:
    known = registered_names() if known is None else known
    return name in known or (name.startswith("sam-") and name[4:] in known)


def check_names(names: Sequence[str]) -> None:
    """Raise a ValueError naming unknown or unsupported optimizers, listing the known ones."""
    known = registered_names() - set(UNSUPPORTED)
    for n in names:
        if base_name(n) in UNSUPPORTED:
            raise ValueError(f"optimizer {n!r} is not supported here: {UNSUPPORTED[base_name(n)]}")
    bad = [n for n in names if not is_known(n, known)]
    if bad:
        raise ValueError(
            f"unknown optimizer(s) {bad}; known: {sorted(known)} (and sam-<name> for any of"
            " them; names are case-insensitive)"
        )


def split_available(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(present, missing)``: the names this optlab's registry has, and those it lacks."""
    known = registered_names()
    present = [n for n in names if is_known(n, known)]
    return present, [n for n in names if n not in present]


def build_optimizer(
    name: str, learning_rate: optax.ScalarOrSchedule, make: Callable[..., Any] | None = None
) -> optax.GradientTransformation:
    """``optlab.get(name, learning_rate=...)``, or SAM around it for ``sam-<name>``.

    ``make(base_name, learning_rate)`` replaces ``optlab.get`` for the inner optimizer
    (the LM job uses it to give Muon its transformer leaf selection).
    """
    make = make or (lambda n, lr: optlab.get(n, learning_rate=lr))
    if name.startswith("sam-") and name not in registered_names():
        if not hasattr(optlab, "sam"):
            raise ValueError(f"optimizer {name!r}: this optlab has no `optlab.sam` wrapper.")
        return optlab.sam(make(name[4:], learning_rate), rho=SAM_RHO)
    return make(name, learning_rate)


def learning_rate_for(
    name: str, table: dict[str, float], fallback: float, overrides: dict[str, float] | None = None
) -> float:
    """The learning rate for ``name``: overrides, then ``table``; ``sam-x`` falls back to x's."""
    overrides = overrides or {}
    for source in (overrides, table):
        for key in (name, base_name(name)):
            if key in source:
                return source[key]
    return fallback


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------

SCHEDULES = ("constant", "cosine", "wsd", "linear-to-zero")
# Schedules another part of optlab provides: `--schedule` name -> candidate optlab names.
# They are looked up with getattr at run time, so the flag works as soon as they land.
_OPTLAB_SCHEDULES = {
    "wsd": ("wsd_schedule", "warmup_stable_decay_schedule"),
    "linear-to-zero": ("linear_decay_to_zero", "linear_to_zero_schedule"),
}
# Keyword spellings accepted for the three numbers every schedule needs.
_PEAK = ("peak_value", "learning_rate", "init_value", "value")
_TOTAL = ("total_steps", "decay_steps", "num_steps", "steps")
_WARMUP = ("warmup_steps", "warmup")


def make_schedule(kind: str, learning_rate: float, steps: int, warmup: int = 0):
    """A learning-rate schedule of ``kind`` (one of :data:`SCHEDULES`) peaking at ``learning_rate``.

    ``constant``: linear warm-up from 0 over ``warmup`` steps, then constant (a plain
    float when ``warmup == 0``). ``cosine``: ``optax.warmup_cosine_decay_schedule`` to 0
    at ``steps``. ``wsd`` and ``linear-to-zero`` come from optlab
    (``optlab.wsd_schedule`` / ``optlab.linear_decay_to_zero``) when this optlab has them.
    """
    if kind == "constant":
        if warmup <= 0:
            return learning_rate
        return optax.linear_schedule(0.0, learning_rate, warmup)
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, max(warmup, 0), max(steps, warmup + 1), end_value=0.0
        )
    if kind in _OPTLAB_SCHEDULES:
        import inspect

        fn = next((getattr(optlab, n) for n in _OPTLAB_SCHEDULES[kind] if hasattr(optlab, n)), None)
        if fn is None:
            raise ValueError(
                f"--schedule {kind}: this optlab has no"
                f" {' / '.join('optlab.' + n for n in _OPTLAB_SCHEDULES[kind])} yet"
            )
        params = inspect.signature(fn).parameters
        kwargs = {}
        for names, value in ((_PEAK, learning_rate), (_TOTAL, steps), (_WARMUP, warmup)):
            key = next((n for n in names if n in params), None)
            if key is not None:
                kwargs[key] = value
        return fn(**kwargs)
    raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")


def evaluation_params(params: Any, opt_state: Any) -> tuple[Any, bool]:
    """The parameters to evaluate, and whether they are the optimizer's average.

    Schedule-free optimizers train at an interpolation ``y`` and are evaluated at their
    average ``x``; averaging wrappers (SWA, EMA, Lookahead, ...) likewise keep the weights
    meant for evaluation. When ``opt_state`` holds exactly one averaging state (or one
    schedule-free state among several) this returns ``optlab.averaged_params(opt_state)``
    and ``True``; otherwise ``params`` and ``False``. Decided by the state's structure
    only, so it can be called under ``jit``.
    """
    for which in (None, "schedule_free"):
        try:
            return optlab.averaged_params(opt_state, which=which, params=params), True
        except ValueError:
            continue
    return params, False


# ---------------------------------------------------------------------------
# Sizes, output, progress
# ---------------------------------------------------------------------------


def tree_bytes(tree: Any) -> int:
    return int(
        sum(
            math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype")
        )
    )


def check_out_path(out: str | os.PathLike) -> Path:
    """Check, before any training, that ``out`` is a plot path we can write; make its folder.

    Raises:
      ValueError: for a suffix matplotlib cannot write here, or a folder we cannot write.
    """
    out = Path(out)
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(
            f"--out {str(out)!r}: the plot must be one of {', '.join(PLOT_SUFFIXES)}"
            " (the markdown table is written next to it with the suffix .md)"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {str(out)!r}: cannot create its folder ({e})") from None
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {str(out)!r}: the folder {str(out.parent)!r} is not writable")
    return out


class Progress:
    """A tqdm bar whose rate excludes compilation (the same steps/s as the table).

    ``start(name)`` before compiling an optimizer, ``resume()`` after, ``update(n)``
    after each chunk of ``n`` steps: the postfix shows the current optimizer's steps/s
    over its training time only.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                unit="step",
                desc=desc,
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
            )
        self.name = ""
        self.train_s = 0.0
        self.steps = 0
        self._t = None

    def start(self, name: str) -> None:
        self.name, self.train_s, self.steps, self._t = name, 0.0, 0, None
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: compiling")

    def resume(self) -> None:
        self._t = time.perf_counter()

    def update(self, n: int, train_s: float | None = None) -> None:
        """``n`` more steps, taking ``train_s`` seconds (default: since the last call)."""
        now = time.perf_counter()
        self.train_s += train_s if train_s is not None else now - (self._t or now)
        self._t = now
        self.steps += n
        if self.bar is not None:
            rate = self.steps / self.train_s if self.train_s > 0 else float("nan")
            self.bar.set_postfix_str(f"{self.name}: {rate:.1f} steps/s", refresh=False)
            self.bar.update(n)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def debiased_ema(y, weight: float):
    """TensorBoard-style smoothing: EMA divided by ``1 - weight**t``, so it starts at ``y[0]``."""
    import numpy as np

    y = np.asarray(y, dtype=np.float64)
    out = np.empty_like(y)
    s = 0.0
    for t, v in enumerate(y, start=1):
        s = weight * s + (1 - weight) * v
        out[t - 1] = s / (1 - weight**t)
    return out
