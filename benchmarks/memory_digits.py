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

``--task lm``: AdamW, Adam-mini, GaLore and AdamW with 8-bit moments on the byte-level
transformer of :mod:`optlab.bench.lm` at equal steps (the LM job's AdamW rate for all,
its warm-up, one seed, the same batches), writing ``memory_lm.md``::

    python3 benchmarks/memory_digits.py --task lm --size small --steps 100 --out benchmarks/results
"""

from __future__ import annotations

import os

# Single-threaded OpenBLAS for jaxlib's LAPACK (GaLore's SVDs, the QR of online PCA): its
# spinning worker threads make an SVD 10-50x slower on a busy machine (see memory.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from pathlib import Path

import jax
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


LM_RANK = 48  # d / 4 for the small model (d = 192)


def adam_mini_partition(params):
    """Adam-mini's partition from the paper for optlab.bench.lm's transformer: one value
    per head for queries and keys, per output neuron for values, the attention output and
    the MLP, per token for the (tied) embedding, one per leaf for norm scales."""

    def axes(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "embedding":
            return (1,)
        if name in ("query", "key"):
            return (0, 2)
        if name == "value" or (x.ndim == 2 and name != "embedding"):
            return (0,)
        if name == "out":
            return (0, 1)
        return None

    return jax.tree.map_with_path(axes, params)


LM_OPTIMIZERS = {
    "adamw": lambda lr: optlab.adamw(lr),
    "adam_mini": lambda lr: optlab.adam_mini(lr),
    "adam_mini (paper partition)": lambda lr: optlab.adam_mini(lr, reduce_axes=adam_mini_partition),
    f"galore (r={LM_RANK} T=200)": lambda lr: optlab.galore(lr, rank=LM_RANK, update_proj_gap=200),
    "adamw 8-bit moments": lambda lr: optlab.quantized_moments(optlab.adamw(lr)),
}


def main_lm(args) -> int:
    from optlab.bench import common, lm

    task = lm.LMTask(args.size)
    steps = args.steps or task.size.steps
    lr = lm.learning_rate_for("adamw")
    warmup = min(task.size.warmup, steps - 1)
    start = time.perf_counter()
    results = []
    names = list(LM_OPTIMIZERS) if args.optimizers is None else args.optimizers.split(";")
    for name in names:
        make = LM_OPTIMIZERS[name]
        tx = make(common.make_schedule("constant", lr, steps, warmup))
        r = lm.train(tx, steps, args.size, args.seed, task=task, name=name, learning_rate=lr)
        results.append(r)
        print(
            f"{name:28s} val loss {r.final_val_loss:.4f}  state {r.state_ratio:.3f}"
            f"  [{time.perf_counter() - start:.0f} s]",
            flush=True,
        )
    cfg = task.size.model
    ref = results[0]
    lines = [
        "# Language model: memory-efficient optimizers vs AdamW at equal steps",
        "",
        (
            f"`python3 benchmarks/memory_digits.py --task lm --size {args.size} --steps {steps}`:"
            f" optlab.bench.lm's byte-level transformer (d={cfg.d}, {cfg.layers} layers,"
            f" context {cfg.context}, {task.n_params() / 1e6:.2f}M parameters), batch"
            f" {task.size.batch_size}, {steps} steps, learning rate {lr:g} (AdamW's tuned LM"
            f" rate, not re-tuned) with a {warmup}-step warm-up, seed {args.seed}. GaLore"
            " projects the 2-D leaves (the MLP matrices and the tied embedding); the per-head"
            " attention kernels are 3-D and take its full-Adam path. State bytes measured"
            " from the optimizer state. {task.corpus.describe()}."
            f" {time.perf_counter() - start:.0f} s of wall time on the shared CPU."
        ).replace("{task.corpus.describe()}", task.corpus.describe()),
        "",
        "| optimizer | val loss (nats/byte) | bits/byte | vs AdamW | state bytes / param byte"
        " | state vs AdamW |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.final_val_loss:.4f} | {r.final_bits_per_byte:.4f}"
            f" | {r.final_val_loss - ref.final_val_loss:+.4f} | {r.state_ratio:.3f}"
            f" | {r.state_ratio / ref.state_ratio:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "memory_lm.md").write_text(text)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("digits", "lm"), default="digits")
    ap.add_argument("--size", default="small", help="LM size (--task lm)")
    ap.add_argument("--seed", type=int, default=0, help="LM seed (--task lm)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="digits: 400; lm: the size's")
    ap.add_argument("--optimizers", default=None, help="keys separated by ';' (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.task == "lm":
        return main_lm(args)
    args.steps = args.steps or 400
    names = list(OPTIMIZERS) if args.optimizers is None else args.optimizers.split(";")
    data = bench.load_data()
    results = {}
    build = bench_digits.build_optimizer
    try:
        for name in names:
            t0 = time.perf_counter()
            # train_one builds its optimizer with digits.build_optimizer(name, lr); these
            # variants are not registry names, so point it at our table for this call.
            bench_digits.build_optimizer = lambda n, lr: OPTIMIZERS[n](lr)
            r = bench.train_one(name, data, args.seeds, args.steps, bench.DEFAULT_BATCH_SIZE, LR)
            results[name] = r
            print(
                f"{name:45s} acc {100 * r.accuracy_mean:.2f} +- {100 * r.accuracy_std:.2f}"
                f"  state {r.state_ratio:.3f}  [{time.perf_counter() - t0:.0f} s]",
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
