"""Command line of the main job: ``python3 -m optlab.bench [--task digits|lm] ...``.

Every setting is checked before any training starts; a bad one is a usage error (exit
status 2) naming the flag and the value. Optimizer names are case-insensitive.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import optlab
from optlab.bench import common

TASKS = ("digits", "lm")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def parse_learning_rates(text: str) -> dict[str, float]:
    """``"adamw=1e-3, sgd=0.1"`` -> ``{"adamw": 0.001, "sgd": 0.1}`` (names lower-cased)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected name=value pairs, got {item!r}")
        try:
            lr = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value.strip()!r} is not a number (in {item!r})"
            ) from None
        if not lr > 0 or lr == float("inf"):
            raise argparse.ArgumentTypeError(
                f"a learning rate must be > 0 and finite, got {item!r}"
            )
        out[common.normalize_name(name)] = lr
    return out


def _names(text: str) -> list[str]:
    return [common.normalize_name(n) for n in text.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    from optlab.bench import digits, lm

    p = argparse.ArgumentParser(
        prog="python3 -m optlab.bench",
        description="Benchmark optlab's named optimizers: a small classifier on scikit-learn's"
        " digits (--task digits, the default, ~30 s on 2 CPU cores) or a byte-level"
        " transformer on the Python standard library's source (--task lm, a few minutes).",
    )
    p.add_argument("--task", choices=TASKS, default="digits", help="default: %(default)s")
    p.add_argument(
        "--optimizers",
        type=_names,
        default=None,
        help="comma list of names from optlab.available() or sam-<name>, case-insensitive"
        f" (digits default: {','.join(digits.DEFAULT_OPTIMIZERS)}; lm default:"
        f" {','.join(lm.LM_OPTIMIZERS)}, skipping those this optlab lacks)",
    )
    p.add_argument(
        "--steps", type=_positive_int, default=None,
        help=f"training steps (digits: {digits.DEFAULT_STEPS}; lm: the size's, small"
        f" {lm.SIZES['small'].steps})",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=_positive_int, default=None,
        help=f"digits: seeds trained at once (default {digits.DEFAULT_SEEDS})",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=_positive_int, default=None,
        help=f"digits: mini-batch size, <= {digits.N_TRAIN} (default {digits.DEFAULT_BATCH_SIZE})",
    )  # fmt: skip
    p.add_argument(
        "--size", choices=tuple(lm.SIZES), default=None,
        help="lm: model size (tiny: seconds, a test; small: the default, ~0.93M parameters;"
        " base: ~19M parameters, for a GPU)",
    )  # fmt: skip
    p.add_argument("--seed", type=_nonnegative_int, default=None, help="lm: seed (default 0)")
    p.add_argument("--corpus", default=None, help="lm: read the corpus files from this folder")
    p.add_argument(
        "--lr",
        type=parse_learning_rates,
        default={},
        help="learning-rate overrides for optimizers of the run, e.g. adamw=1e-3,sgd=0.05",
    )
    p.add_argument(
        "--schedule",
        choices=common.SCHEDULES,
        default="constant",
        help="learning-rate schedule (lm: after a linear warm-up; wsd and linear-to-zero need"
        " optlab.wsd_schedule / optlab.linear_decay_to_zero; default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"plot path ({', '.join(common.PLOT_SUFFIXES)}); the markdown table goes next to it"
        f" as .md (default: {digits.DEFAULT_OUT} or {lm.DEFAULT_OUT})",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--list", action="store_true", help="list the available optimizer names and exit"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from optlab.bench import digits, lm

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for info in optlab.available():
            print(info)
        return 0

    wrong_task = {
        "digits": (("--size", args.size), ("--seed", args.seed), ("--corpus", args.corpus)),
        "lm": (("--seeds", args.seeds), ("--batch-size", args.batch_size)),
    }[args.task]
    for flag, value in wrong_task:
        if value is not None:
            other = "lm" if args.task == "digits" else "digits"
            parser.error(f"{flag} applies to --task {other} only")

    names = args.optimizers
    try:
        if names is not None:
            if not names:
                raise ValueError("--optimizers: no name given")
            common.check_names(names)
        run_names = (
            names
            if names is not None
            else list(digits.DEFAULT_OPTIMIZERS if args.task == "digits" else lm.LM_OPTIMIZERS)
        )
        stray = [
            k
            for k in args.lr
            if k not in run_names and not any(common.base_name(n) == k for n in run_names)
        ]
        if stray:
            raise ValueError(
                f"--lr names {', '.join(stray)}, not among the optimizers of this run"
                f" ({', '.join(run_names)})"
            )
        out = common.check_out_path(
            args.out or (digits.DEFAULT_OUT if args.task == "digits" else lm.DEFAULT_OUT)
        )
        steps = args.steps
        if args.task == "digits":
            digits.check_settings(
                args.seeds or digits.DEFAULT_SEEDS,
                steps or digits.DEFAULT_STEPS,
                args.batch_size or digits.DEFAULT_BATCH_SIZE,
            )
        common.make_schedule(args.schedule, 1.0, steps or 100, 1)
    except ValueError as e:
        parser.error(str(e))

    start = time.perf_counter()
    cpu0 = time.process_time()
    if args.task == "digits":
        _, table = digits.run(
            names or digits.DEFAULT_OPTIMIZERS,
            seeds=args.seeds or digits.DEFAULT_SEEDS,
            steps=steps or digits.DEFAULT_STEPS,
            batch_size=args.batch_size or digits.DEFAULT_BATCH_SIZE,
            out=out,
            learning_rates=args.lr,
            progress=not args.no_progress,
            schedule=args.schedule,
        )
    else:
        try:
            _, table = lm.run(
                names,
                size=args.size or lm.DEFAULT_SIZE,
                steps=steps,
                out=out,
                learning_rates=args.lr,
                schedule=args.schedule,
                seed=args.seed or 0,
                progress=not args.no_progress,
                corpus_dir=args.corpus,
            )
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print()
    print(table)
    print(f"plot: {out}\ntable: {Path(out).with_suffix('.md')}")
    print(
        f"total time: {time.perf_counter() - start:.1f} s"
        f" (CPU time of this process: {time.process_time() - cpu0:.1f} s)"
    )
    return 0
