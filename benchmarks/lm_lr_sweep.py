"""Learning-rate sweep behind ``optlab.bench.lm.LEARNING_RATES`` (``--task lm``).

Trains the language-model task of :mod:`optlab.bench.lm` (size ``small`` by default)
with each optimizer at each learning rate of its grid (``optlab.bench.lm.SWEEP_GRIDS``,
else ``DEFAULT_GRID``) and scores it by the validation loss at the end. The sweep uses
seed 1 (initialization and batch order); the main job reports seed 0. Writes
``lm_lr_sweep.md`` into ``--out``.

    python3 benchmarks/lm_lr_sweep.py --steps 100 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

try:  # a checkout that is not pip-installed: use the repository root
    import optlab
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import optlab  # noqa: F401
from optlab.bench import common, lm


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # SAM-AdamW is not swept: it uses AdamW's rate.
    swept = [n for n in lm.LEARNING_RATES if not n.startswith("sam-")]
    parser.add_argument("--optimizers", default=",".join(swept))
    parser.add_argument("--size", default=lm.DEFAULT_SIZE, choices=tuple(lm.SIZES))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grid", default="", help="learning rates for every optimizer listed")
    parser.add_argument("--out", default="")
    parser.add_argument("--name", default="lm_lr_sweep.md", help="file name under --out")
    args = parser.parse_args(argv)
    names, missing = common.split_available([n for n in args.optimizers.split(",") if n])
    if missing:
        print(f"skipping {missing} (not in this optlab)")
    steps = args.steps or lm.SIZES[args.size].steps
    task = lm.LMTask(args.size)
    start, cpu0 = time.perf_counter(), time.process_time()
    grid = [float(g) for g in args.grid.split(",") if g]
    grids = {n: grid for n in names} if grid else None
    results = lm.sweep(names, grids, size=args.size, steps=steps, seed=args.seed, task=task)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    lines = [
        "# Language-model learning-rate sweep",
        "",
        f"`python3 benchmarks/lm_lr_sweep.py --steps {steps} --out benchmarks/results`",
        "",
        (
            f"Size {args.size} ({task.n_params() / 1e6:.2f}M parameters), {steps} steps, schedule"
            f" constant after a {min(task.size.warmup, steps - 1)}-step linear warm-up, seed"
            f" {args.seed}. {task.corpus.describe()}. Cells: validation loss (nats per byte) at"
            " the end; bold: the lowest, the peak learning rate in"
            " `optlab.bench.lm.LEARNING_RATES`. `nan`: diverged."
        ),
        "",
    ]
    best = {}
    for name, row in results.items():
        lines += [
            f"**{name}**",
            "",
            "| learning rate | " + " | ".join(f"{g:g}" for g in row) + " |",
        ]
        lines.append("|---|" + "---:|" * len(row))
        finite = {g: v for g, v in row.items() if math.isfinite(v)}
        b = min(finite, key=finite.get) if finite else None
        best[name] = b
        cells = [f"**{v:.4f}**" if g == b else f"{v:.4f}" for g, v in row.items()]
        lines += ["| val loss | " + " | ".join(cells) + " |", ""]
    lines += [
        f"Best: {best}",
        "",
        f"Sweep time: {wall:.0f} s wall, {cpu:.0f} s CPU (this process, all threads).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / args.name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
