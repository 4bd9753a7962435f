"""Digits accuracy of the memory-efficient optimizers vs AdamW (the main job's loop).

Reuses :mod:`optlab.bench` (data, MLP 64 -> 128 -> 128 -> 10, vmapped seeds, 400 steps,
batch 64) and trains each optimizer below over 3 seeds; ranks are scaled to the small
layers (r = 16 for 64 x 128 and 128 x 128 matrices). Learning rates: AdamW's tuned 0.01
(``optlab.bench.LEARNING_RATES``) for every Adam-like method, not re-tuned; FRUGAL's
signSGD residual is scaled by 0.03 (a sign step of the full rate is Lion at 0.01, far
above Lion's tuned 3e-4).

    python3 benchmarks/memory_digits.py --out benchmarks/results

Writes ``memory_digits.md``: test accuracy (mean +- std over seeds), the gap to AdamW in
points and whether it is within 1 point, and the state bytes per parameter byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import optlab
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import optlab
from optlab import bench
from optlab.bench import digits as bench_digits

RANK = 16
LR = 0.01
OPTIMIZERS = {
    "adamw": lambda lr: optlab.adamw(lr),
    "adafactor": lambda lr: optlab.adafactor(0.1),  # its own tuned rate (relative steps)
    "subset_norm_adam": lambda lr: optlab.subset_norm_adam(lr),
    "subset_norm_adam (subspace momentum r=16)": lambda lr: optlab.subset_norm_adam(
        lr, momentum_rank=RANK
    ),
    "galore (r=16 T=200)": lambda lr: optlab.galore(lr, rank=RANK, update_proj_gap=200),
    "galore dct (r=16 T=200)": lambda lr: optlab.galore(
        lr, rank=RANK, update_proj_gap=200, projector="dct"
    ),
    "online_subspace_descent (r=16)": lambda lr: optlab.online_subspace_descent(lr, rank=RANK),
    "frugal (r=16 T=200)": lambda lr: optlab.frugal(
        lr, rank=RANK, update_every=200, residual_scale=0.03
    ),
    "badam (K=20)": lambda lr: optlab.badam(lr, switch_every=20),
    "adam_mini": lambda lr: optlab.adam_mini(lr),
    "adamw 8-bit moments": lambda lr: optlab.quantized_moments(optlab.adamw(lr)),
    "adamw bf16 moments (stochastic rounding)": lambda lr: optlab.bf16_moments(optlab.adamw(lr)),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--optimizers", default=None, help="keys separated by ';' (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    names = list(OPTIMIZERS) if args.optimizers is None else args.optimizers.split(";")
    data = bench.load_data()
    results = {}
    build = bench_digits.build_optimizer
    try:
        for name in names:
            # train_one builds its optimizer with digits.build_optimizer(name, lr); these
            # variants are not registry names, so point it at our table for this call.
            bench_digits.build_optimizer = lambda n, lr: OPTIMIZERS[n](lr)
            r = bench.train_one(name, data, args.seeds, args.steps, bench.DEFAULT_BATCH_SIZE, LR)
            results[name] = r
            print(
                f"{name:45s} acc {100 * r.accuracy_mean:.2f} +- {100 * r.accuracy_std:.2f}"
                f"  state {r.state_ratio:.3f}",
                flush=True,
            )
    finally:
        bench_digits.build_optimizer = build
    ref = results["adamw"].accuracy_mean if "adamw" in results else np.nan
    lines = [
        "# Digits: memory-efficient optimizers vs AdamW",
        "",
        (
            f"`benchmarks/memory_digits.py`: optlab.bench's MLP on digits, {args.steps} steps,"
            f" batch {bench.DEFAULT_BATCH_SIZE}, {args.seeds} seeds, learning rate {LR}"
            " (AdamW's tuned rate) for all, ranks 16. Target: within 1 point of AdamW."
        ),
        "",
        "| optimizer | test accuracy % | vs AdamW (points) | within 1 point | state / params |",
        "|---|---:|---:|---|---:|",
    ]
    for name, r in results.items():
        gap = 100 * (r.accuracy_mean - ref)
        ok = "-" if name == "adamw" else ("yes" if gap >= -1.0 else "no")
        lines.append(
            f"| {name} | {100 * r.accuracy_mean:.2f} +- {100 * r.accuracy_std:.2f}"
            f" | {gap:+.2f} | {ok} | {r.state_ratio:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "memory_digits.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
