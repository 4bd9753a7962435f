"""Optimizer-state bytes, peak memory and step time of the memory-efficient optimizers.

For a transformer-like float32 tree of about 1e6, 4e6 (the default), 1e7 or 5e7 parameters
(d x d attention matrices, d x 4d and 4d x d MLP matrices, an embedding, norm scales and biases;
one top-level key per layer and one for the embedding) this reports, for each optimizer:

* state bytes per parameter byte, from ``jax.eval_shape(tx.init, params)`` (nothing is
  allocated), and the same ratio relative to AdamW's;
* XLA's compiled memory analysis of one jitted, donated training step
  ``params, state = step(params, state, grads)``
  (``jit(step, donate_argnums=(0, 1)).lower(...).compile().memory_analysis()``):
  arguments, outputs, temporaries, and their peak ``arguments + outputs - aliased + temp``;
* the process's peak resident memory (``ru_maxrss``) while it initializes the state,
  compiles and runs the step, minus its resident memory before the optimizer was built
  (jax, params and gradients): each optimizer runs in its own subprocess so that the
  peaks do not mix;
* the step time, best of a few repeats, timed in that subprocess *interleaved* with
  AdamW's step on the same tree (AdamW is built after the peak memory was read), as a
  ratio; for GaLore and FRUGAL also their first step (all the SVDs, an upper bound: it
  includes first-call costs) and the amortized time of a step over the refresh period
  (200 steps). ``--repeats 0`` measures memory only (no timing).

Run it with the allocator settings of ``benchmarks/run.sh``::

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592 MALLOC_ARENA_MAX=1 \\
      python3 benchmarks/memory.py --sizes 4e6 --out benchmarks/results

It writes ``memory.md`` (the table) and ``memory.json`` (raw numbers) to ``--out``.
Nothing here is a test: times and RSS depend on the machine and its load.
"""

from __future__ import annotations

import os

# jaxlib's LAPACK (jnp.linalg.svd / qr / eigh on CPU) is scipy's OpenBLAS, whose worker
# threads spin while they wait: on a machine with more busy processes than cores one SVD
# of a 2048 x 512 matrix took 35 s instead of 0.6 s single-threaded (measured here). Must
# be set before numpy / jaxlib load OpenBLAS. XLA's own matmuls do not use OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:  # a checkout that is not pip-installed: use the repository root
    import optlab
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import optlab

LAYOUTS = {  # size -> (layers, vocabulary, d_model, d_ff)
    "1e6": (1, 1024, 256, 1024),  # 1.05M: quick, 2 shared CPU cores
    "4e6": (1, 1536, 512, 2048),  # 3.94M: the committed table
    "1e7": (1, 3840, 768, 3072),  # 10.0M
    "5e7": (6, 10000, 768, 3072),  # 50.2M
}
GALORE_RANK = 128
GALORE_GAP = 200

OPTIMIZERS = {
    "adamw": lambda: optlab.adamw(1e-3),
    "adafactor": lambda: optlab.adafactor(1e-3),
    "subset_norm_adam": lambda: optlab.subset_norm_adam(1e-3),
    "galore": lambda: optlab.galore(1e-3, rank=GALORE_RANK, update_proj_gap=GALORE_GAP),
    "online_subspace_descent": lambda: optlab.online_subspace_descent(1e-3, rank=GALORE_RANK),
    "frugal": lambda: optlab.frugal(1e-3, rank=GALORE_RANK, update_every=GALORE_GAP),
    "badam": lambda: optlab.badam(1e-3),
    "adam_mini": lambda: optlab.adam_mini(1e-3),
    "adamw_8bit": lambda: optlab.quantized_moments(optlab.adamw(1e-3)),
    "adamw_bf16_moments": lambda: optlab.bf16_moments(optlab.adamw(1e-3)),
}
# The targets: state <= 0.5x AdamW's for these; step time <= 1.5x AdamW's.
STATE_TARGET = {"galore", "frugal", "adam_mini", "adamw_8bit"}
TIME_TARGET = 1.5


def make_params(size: str) -> dict[str, Any]:
    layers, vocab, d, d_ff = LAYOUTS[size]
    key = jax.random.key(0)
    shapes: dict[str, Any] = {"embed": {"table": (vocab, d)}}
    for i in range(layers):
        shapes[f"layer_{i}"] = {
            "q": (d, d),
            "k": (d, d),
            "v": (d, d),
            "o": (d, d),
            "up": (d, d_ff),
            "down": (d_ff, d),
            "up_bias": (d_ff,),
            "down_bias": (d,),
            "norm1": (d,),
            "norm2": (d,),
        }
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    arrays = [0.02 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, arrays)


def tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def copy(tree):
    return jax.tree.map(lambda x: x.copy(), tree)


class Runner:
    def __init__(self, tx, params, grads):
        self.grads = grads
        self.params = copy(params)
        self.state = tx.init(self.params)
        start = time.perf_counter()
        self.compiled = make_step(tx).lower(self.params, self.state, grads).compile()
        self.compile_s = time.perf_counter() - start

    def run(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.params, self.state = self.compiled(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / n


def one(name: str, size: str, steps: int, repeats: int) -> dict[str, Any]:
    """Everything for one optimizer, in this (fresh) process."""
    params = make_params(size)
    grads = jax.tree.map(lambda x: 1e-3 * jnp.sign(x) + 0.01 * x, params)
    jax.block_until_ready(grads)
    base_rss = rss_mib()
    base_peak = peak_rss_mib()
    tx = OPTIMIZERS[name]()
    state_shape = jax.eval_shape(tx.init, params)
    runner = Runner(tx, params, grads)
    mem = runner.compiled.memory_analysis()
    first = runner.run(1)  # the first step: GaLore's and FRUGAL's SVDs happen here
    peak = peak_rss_mib()
    row: dict[str, Any] = {
        "optimizer": name,
        "size": size,
        "n_params": int(sum(x.size for x in jax.tree.leaves(params))),
        "state_ratio": tree_bytes(state_shape) / tree_bytes(params),
        "xla_argument_mib": mem.argument_size_in_bytes / 2**20,
        "xla_output_mib": mem.output_size_in_bytes / 2**20,
        "xla_alias_mib": mem.alias_size_in_bytes / 2**20,
        "xla_temp_mib": mem.temp_size_in_bytes / 2**20,
        "xla_peak_mib": (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
        / 2**20,
        "rss_before_mib": base_rss,
        "rss_peak_over_before_mib": max(peak, base_peak) - base_rss,
        "compile_s": runner.compile_s,
        "first_step_ms": first * 1e3,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
    }
    stats = jax.devices()[0].memory_stats() or {}  # accelerators: the allocator's peak
    if "peak_bytes_in_use" in stats:
        row["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    if repeats == 0:  # memory only
        return row
    # Timing, interleaved with AdamW (built only now: the peak above is this optimizer's).
    cands = {name: runner}
    if name != "adamw":
        cands["adamw"] = Runner(OPTIMIZERS["adamw"](), params, grads)
        cands["adamw"].run(1)
    times: dict[str, list[float]] = {k: [] for k in cands}
    for r in range(repeats):
        order = list(cands)[r % len(cands) :] + list(cands)[: r % len(cands)]
        for k in order:
            times[k].append(cands[k].run(steps))
    best = {k: min(v) for k, v in times.items()}
    row["step_ms"] = best[name] * 1e3
    row["adamw_step_ms"] = best.get("adamw", best[name]) * 1e3
    row["time_ratio"] = best[name] / best.get("adamw", best[name])
    if name in ("galore", "frugal"):
        # The timed steps have no SVD (refresh every 200 steps); the first step had them all.
        row["svd_step_ms"] = first * 1e3
        row["amortized_step_ms"] = (best[name] * (GALORE_GAP - 1) + first) / GALORE_GAP * 1e3
        row["amortized_ratio"] = row["amortized_step_ms"] / row["adamw_step_ms"]
    return row


def markdown(rows: list[dict[str, Any]], note: str) -> str:
    by = {(r["size"], r["optimizer"]): r for r in rows}
    lines = [
        "# Memory-efficient optimizers: state, peak memory and step time",
        "",
        note,
        "",
        (
            "| size | optimizer | state / params | vs AdamW state | XLA temp MiB | XLA peak MiB"
            " | peak RSS over params+grads MiB | step ms | vs AdamW | target |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (size, name), r in by.items():
        ref = by.get((size, "adamw"))
        rel = r["state_ratio"] / ref["state_ratio"] if ref else float("nan")
        verdicts = []
        if name in STATE_TARGET:
            verdicts.append(f"state <= 0.5x: {'met' if rel <= 0.5 + 5e-4 else 'MISSED'}")
        step_cell, time_cell = "not timed", "-"
        if "time_ratio" in r:
            ratio = r.get("amortized_ratio", r["time_ratio"])
            if name != "adamw":
                verdicts.append(f"time <= 1.5x: {'met' if ratio <= TIME_TARGET else 'MISSED'}")
            step_cell, time_cell = f"{r['step_ms']:.1f}", f"{r['time_ratio']:.2f}x"
            if "amortized_ratio" in r:
                time_cell += (
                    f" (first step, with the SVDs: {r['svd_step_ms']:.0f} ms; amortized"
                    f" over {GALORE_GAP} steps: {r['amortized_ratio']:.2f}x)"
                )
        lines.append(
            f"| {size} ({r['n_params'] / 1e6:.1f}M) | {name} | {r['state_ratio']:.3f} | {rel:.2f}x"
            f" | {r['xla_temp_mib']:.0f} | {r['xla_peak_mib']:.0f}"
            f" | {r['rss_peak_over_before_mib']:.0f} | {step_cell} | {time_cell}"
            f" | {'; '.join(verdicts) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4e6", help=f"comma-separated, of {list(LAYOUTS)}")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3, help="0: memory only")
    ap.add_argument("--out", default=None)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per optimizer")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # worker mode: NAME,SIZE
    args = ap.parse_args(argv)
    if args.one:
        name, size = args.one.split(",")
        print("RESULT " + json.dumps(one(name, size, args.steps, args.repeats)), flush=True)
        return 0
    rows = []
    for size in args.sizes.split(","):
        for name in args.optimizers.split(","):
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        f"{name},{size}",
                        "--steps",
                        str(args.steps),
                        "--repeats",
                        str(args.repeats),
                    ],
                    check=False,
                    capture_output=True,
                    text=True,
                    env=os.environ.copy(),
                    timeout=args.timeout,
                )
            except subprocess.TimeoutExpired as e:
                print(f"{name} @ {size}: timed out after {e.timeout:.0f} s", file=sys.stderr)
                continue
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                # A worker killed by a signal (the OOM killer, a timeout, Ctrl-C) leaves no
                # traceback: say so, with the exit status, rather than print an empty stderr.
                how = (
                    f"killed by signal {-proc.returncode}"
                    if proc.returncode < 0
                    else f"exit status {proc.returncode}"
                )
                print(
                    f"{name} @ {size}: failed ({how})\n{proc.stderr[-3000:] or '(no stderr)'}",
                    file=sys.stderr,
                )
                continue
            row = json.loads(line[7:])
            rows.append(row)
            print(
                f"{size} {name:20s} state {row['state_ratio']:.3f}  xla peak"
                f" {row['xla_peak_mib']:.0f} MiB  rss+ {row['rss_peak_over_before_mib']:.0f}"
                f" MiB  time x{row.get('time_ratio', float('nan')):.2f}"
                f"  [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
    note = (
        f"Run: `benchmarks/memory.py --sizes {args.sizes} --steps {args.steps} --repeats"
        f" {args.repeats}` on {jax.devices()[0].platform} ({jax.devices()[0].device_kind};"
        f" host: {os.cpu_count()} CPU cores), jax {jax.__version__},"
        " with the allocator variables of `benchmarks/run.sh`. On an accelerator the RSS"
        " column is host memory; `device_peak_mib` in memory.json is the device's peak."
    )
    text = markdown(rows, note)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "memory.md").write_text(text)
        (out / "memory.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
