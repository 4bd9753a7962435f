"""Learning-rate sweep behind ``optlab.bench.LEARNING_RATES`` (the main job's defaults).

For each optimizer of the main job, trains the digits MLP of :mod:`optlab.bench` with
the main job's defaults (steps, batch size, seeds) at a grid of learning rates and
scores each by accuracy on a *validation* split carved out of the training set (20% of
it, stratified), so the main job's test split is never used for tuning. Writes
``digits_lr_sweep.md`` (all results, best per optimizer marked) into ``--out``.

    python3 benchmarks/digits_lr_sweep.py --out benchmarks/results
"""

from __future__ import annotations

import os

# single-threaded OpenBLAS for jaxlib's LAPACK (SVD/QR-based optimizers): see memory.py
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

try:  # a checkout that is not pip-installed: use the repository root
    import optlab  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import optlab  # noqa: F401
from optlab import bench

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default=",".join(bench.DEFAULT_OPTIMIZERS))
    parser.add_argument("--grid", default=",".join(f"{g:g}" for g in GRID))
    parser.add_argument("--seeds", type=int, default=bench.DEFAULT_SEEDS)
    parser.add_argument("--steps", type=int, default=bench.DEFAULT_STEPS)
    parser.add_argument("--batch-size", type=int, default=bench.DEFAULT_BATCH_SIZE)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    names = [n for n in args.optimizers.split(",") if n]
    grid = [float(g) for g in args.grid.split(",") if g]
    bench.check_names(names)

    x_tr, y_tr, _, _ = bench.load_data()
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_tr, y_tr, test_size=0.2, random_state=1, stratify=y_tr
    )
    data = (x_fit, y_fit, x_val, y_val)
    lines = [
        "# Digits learning-rate sweep",
        "",
        f"Main-job model and defaults ({args.steps} steps, batch {args.batch_size},"
        f" {args.seeds} seeds); accuracy on a validation split (20% of the training"
        " split), mean over seeds. Bold: the best learning rate (used in"
        " `optlab.bench.LEARNING_RATES`). `nan`: diverged.",
        "",
        "| optimizer | " + " | ".join(f"{g:g}" for g in grid) + " |",
        "|---|" + "---:|" * len(grid),
    ]
    best = {}
    start = time.perf_counter()
    for name in names:
        accs = []
        for lr in grid:
            r = bench.train_one(name, data, args.seeds, args.steps, args.batch_size, lr)
            acc = r.accuracy_mean if np.isfinite(r.losses).all() else float("nan")
            accs.append(acc)
            print(f"{name:<12} lr={lr:<8g} val acc {acc:.4f}", flush=True)
        i = int(np.nanargmax(accs))
        best[name] = grid[i]
        cells = [f"**{a:.4f}**" if j == i else f"{a:.4f}" for j, a in enumerate(accs)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Best: {best}", f"Sweep time: {time.perf_counter() - start:.0f} s", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "digits_lr_sweep.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
