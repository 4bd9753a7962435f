"""Step time, compile time and state size of every optlab named optimizer.

For each named optimizer (``optlab.available()``) and each parameter count (1e6, 1e7,
5e7 float32 parameters spread over ~50 leaves: half 2-D weight matrices, half bias
vectors) this measures the wall time of one jitted optimizer step
``params, state = step(params, state, grads)`` (update + ``optax.apply_updates``,
``donate_argnums`` on params and state) and reports it as a ratio to

(a) optax's equivalent (``OPTAX_EQUIVALENTS``) where one exists, and
(b) a memory-bandwidth floor: a jitted kernel that reads params, grads and K
    param-sized state buffers and writes params and the K buffers (donated), where
    K = round(state bytes / param bytes) of the optimizer. An elementwise optimizer
    cannot beat this floor; a compute-bound one (Muon's Newton-Schulz matmuls) is not
    limited by it, so its floor ratio says how far from bandwidth-bound it is.

The three candidates (optlab, optax, floor) are timed interleaved in the same process,
with warm-up, each repeat timing a calibrated number of steps followed by
``jax.block_until_ready``, and the minimum over repeats is reported (every repeat is
kept in the JSON; the machine may be shared, and other processes only add time).

It also measures compile time (``jit(...).lower(...).compile()``) at 50 and 500
leaves, and, with ``--flatten``, the effect of ``optax.flatten`` (ravel all leaves
into one buffer before the update) on step time and compile time. Flattening is only
reported where it leaves the result unchanged (checked numerically): per-leaf
methods (trust ratios, Muon, Adafactor, AdamP ...) change meaning when flattened.

Run everything with ``benchmarks/run.sh`` (sets the CPU allocator variables), or e.g.::

    python3 benchmarks/step_time.py                      # quick: 1e6 params
    python3 benchmarks/step_time.py --sizes 1e6,1e7,5e7 --flatten --out benchmarks/results

Results are markdown tables (``step_time.md``, ``compile_time.md``, ``flatten.md``),
the raw numbers (``step_time.json``) and a plot (``step_time.png``) in ``--out``.
Nothing here is a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:  # a checkout that is not pip-installed: use the repository root
    import optlab  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import optlab  # noqa: F401

LEARNING_RATE = 1e-3

# optlab name -> factory(learning_rate) of optax's equivalent (same algorithm, optax's
# default hyperparameters). Names absent here have no optax equivalent.
OPTAX_EQUIVALENTS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adam": optax.adam,
    "adamw": optax.adamw,
    "nadamw": optax.nadamw,
    "amsgrad": optax.amsgrad,
    "adabelief": optax.adabelief,
    "lion": optax.lion,
    "signum": optax.signum,
    "sign_sgd": optax.sign_sgd,
    "lamb": optax.lamb,
    "lars": optax.lars,
    "adafactor": optax.adafactor,
    "radam": optax.radam,
    "novograd": optax.novograd,
    "ademamix": optax.contrib.ademamix,
    "simplified_ademamix": optax.contrib.simplified_ademamix,
    "muon": optax.contrib.muon,
    "adopt": optax.contrib.adopt,
    "lookahead_adam": lambda lr: optax.lookahead(optax.adam(lr), 6, 0.5),
}

# Named optimizers that are not timed here, and why.
EXCLUDED = {
    "dpsgd": "needs per-example gradients (a batch axis on every leaf) and its clip/noise"
    " hyperparameters; its cost is dominated by the per-example clipping, not the update",
}
# Wrapped optimizers timed in addition to the named ones: label -> factory(learning_rate).
EXTRA = {
    "sam-adamw": lambda lr: optlab.sam(optlab.get("adamw", learning_rate=lr), rho=0.05),
}

ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "XLA_FLAGS")


# ---------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------


def make_params(n_params: float, n_leaves: int, seed: int = 0) -> dict[str, jax.Array]:
    """About ``n_params`` float32 parameters in ``n_leaves`` leaves: weights and biases."""
    n_layers = max(1, n_leaves // 2)
    per_layer = n_params / n_layers
    cols = max(8, int(round(math.sqrt(per_layer) / 8)) * 8)
    rows = max(2, int(round(per_layer / cols)) - 1)
    rng = np.random.default_rng(seed)
    tree = {}
    for i in range(n_layers):
        tree[f"layer{i:03d}"] = {
            "w": jnp.asarray(rng.standard_normal((rows, cols), np.float32) * 0.02),
            "b": jnp.asarray(rng.standard_normal((cols,), np.float32) * 0.02),
        }
    if n_leaves % 2:
        tree["extra"] = jnp.asarray(rng.standard_normal((cols,), np.float32))
    return tree


def tree_bytes(tree: Any) -> int:
    return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def n_elements(tree: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def copy_tree(tree):
    return jax.tree.map(lambda x: x.copy(), tree)


# ---------------------------------------------------------------------------
# Candidates: a donated step function and its live buffers
# ---------------------------------------------------------------------------


def extra_args_for(grads):
    """Extra arguments every optimizer receives (ignored by those that do not need them).

    ``grad_fn`` is the gradient of a quadratic, g + 1e-3 * (q - 0) evaluated at the
    perturbed point (so SAM-style perturbations are computed, not optimized away);
    ``hvp_fn`` is its Hessian-vector product 1e-3 * v; ``value`` a scalar loss.
    """
    return dict(
        grad_fn=lambda q: jax.tree.map(lambda x, g: g + 1e-3 * x, q, grads),
        hvp_fn=lambda q, v: jax.tree.map(lambda x: 1e-3 * x, v),
        value=jnp.zeros((), jnp.float32),
    )


def make_optimizer_step(tx: optax.GradientTransformation, pass_extra: bool):
    def step(params, state, grads):
        kw = extra_args_for(grads) if pass_extra else {}
        updates, state = tx.update(grads, state, params, **kw)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def make_floor_step(k: int):
    """Reads params, grads and k state buffers; writes params and the k buffers."""

    def step(params, bufs, grads):
        new_bufs = tuple(jax.tree.map(lambda s, g: 0.9 * s + 0.1 * g, b, grads) for b in bufs)

        def leaf(p, g, *ss):
            acc = g
            for s in ss:
                acc = acc + s
            return p - LEARNING_RATE * acc

        return jax.tree.map(leaf, params, grads, *new_bufs), new_bufs

    return jax.jit(step, donate_argnums=(0, 1))


class Candidate:
    """A step function plus its own params/state (threaded through donated calls)."""

    def __init__(self, label: str, step, params, state, grads):
        self.label = label
        self.step = step
        self.params = copy_tree(params)
        self.state = state
        self.grads = grads
        self.times: list[float] = []

    def run(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return time.perf_counter() - start

    def compile(self) -> float:
        start = time.perf_counter()
        self.step = self.step.lower(self.params, self.state, self.grads).compile()
        return time.perf_counter() - start

    def delete(self):
        for x in jax.tree.leaves((self.params, self.state)):
            x.delete()


def time_candidates(cands: list[Candidate], repeats: int, target_s: float) -> dict[str, float]:
    """Best-of-repeats seconds per step of each candidate, timed interleaved (order rotates).

    The minimum, not the median, because the machine may be shared: other processes
    only ever add time, so the minimum over interleaved repeats is the estimate least
    biased by them (as ``timeit`` recommends). Every repeat is kept in ``c.times``.
    """
    for c in cands:
        c.run(1)  # warm-up (first call after compile allocates)
    inner = {}
    for c in cands:
        t = c.run(1)
        inner[c.label] = max(1, min(50, int(target_s / max(t, 1e-6))))
    for r in range(repeats):
        order = cands[r % len(cands) :] + cands[: r % len(cands)]
        for c in order:
            n = inner[c.label]
            c.times.append(c.run(n) / n)
    return {c.label: min(c.times) for c in cands}


# ---------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------


def build_optlab(name: str) -> optax.GradientTransformation:
    if name in EXTRA:
        return EXTRA[name](LEARNING_RATE)
    return optlab.get(name, learning_rate=LEARNING_RATE)


def state_ratio(tx, params) -> float:
    return tree_bytes(jax.eval_shape(tx.init, params)) / tree_bytes(params)


def bench_step_time(names, size, n_leaves, repeats, target_s, slow_s, log) -> list[dict]:
    params = make_params(size, n_leaves)
    grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
    n = n_elements(params)
    rows = []
    for name in names:
        row: dict[str, Any] = dict(name=name, size=n, leaves=len(jax.tree.leaves(params)))
        cands: list[Candidate] = []
        try:
            tx = build_optlab(name)
            ratio = state_ratio(tx, params)
            k = int(round(ratio))
            row.update(state_ratio=ratio, k=k)
            step = make_optimizer_step(tx, True)
            cands.append(Candidate("optlab", step, params, tx.init(params), grads))
            if name in OPTAX_EQUIVALENTS:
                otx = OPTAX_EQUIVALENTS[name](LEARNING_RATE)
                row["optax_state_ratio"] = state_ratio(otx, params)
                ostep = make_optimizer_step(otx, False)
                cands.append(Candidate("optax", ostep, params, otx.init(params), grads))
            bufs = tuple(copy_tree(grads) for _ in range(k))
            cands.append(Candidate("floor", make_floor_step(k), params, bufs, grads))
            row["compile_s"] = cands[0].compile()
            for c in cands[1:]:
                c.compile()
            # Slow (compute-bound) steps: fewer repeats so the run stays bounded.
            probe = cands[0].run(1)
            reps = repeats if probe < slow_s else max(3, repeats // 3)
            times = time_candidates(cands, reps, target_s)
            row.update({f"{lbl}_s": t for lbl, t in times.items()})
            row.update({f"{c.label}_median_s": statistics.median(c.times) for c in cands})
            row["vs_optax"] = times["optlab"] / times["optax"] if "optax" in times else None
            row["vs_floor"] = times["optlab"] / times["floor"]
            row["floor_gbps"] = (2 * k + 3) * tree_bytes(params) / times["floor"] / 1e9
            msg = f"  {name:<20} optlab {times['optlab'] * 1e3:9.2f} ms"
            if "optax" in times:
                msg += f"  optax {times['optax'] * 1e3:9.2f} ms ({row['vs_optax']:.2f}x)"
            msg += f"  floor(K={k}) {times['floor'] * 1e3:8.2f} ms ({row['vs_floor']:.2f}x)"
            log(msg)
        except Exception as e:  # noqa: BLE001 - report and go on with the next optimizer
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            log(f"  {name:<20} ERROR {row['error']}")
        finally:
            for c in cands:
                c.delete()
            del cands
            gc.collect()
        rows.append(row)
    return rows


def _compile_seconds(step, params, state, grads) -> float:
    start = time.perf_counter()
    step.lower(params, state, grads).compile()
    return time.perf_counter() - start


def bench_compile(names, leaf_counts, size, log) -> list[dict]:
    rows = []
    for name in names:
        row: dict[str, Any] = dict(name=name)
        try:
            for nl in leaf_counts:
                params = make_params(size, nl)
                grads = params
                tx = build_optlab(name)
                state = jax.eval_shape(tx.init, params)
                step = make_optimizer_step(tx, True)
                row[f"optlab_{nl}"] = _compile_seconds(step, params, state, grads)
                if name in OPTAX_EQUIVALENTS:
                    otx = OPTAX_EQUIVALENTS[name](LEARNING_RATE)
                    ostate = jax.eval_shape(otx.init, params)
                    ostep = make_optimizer_step(otx, False)
                    row[f"optax_{nl}"] = _compile_seconds(ostep, params, ostate, grads)
            cells = (f"{k}={v:.2f}s" for k, v in row.items() if k != "name")
            log(f"  {name:<20} " + "  ".join(cells))
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            log(f"  {name:<20} ERROR {row['error']}")
        rows.append(row)
    return rows


def flatten_preserves_result(name: str) -> bool:
    """Whether ``optax.flatten`` leaves three updates of ``name`` unchanged (small tree).

    Two gradient sequences: independent random gradients (sign disagreements for the
    cautious masks, per-leaf statistics), and random gradients made orthogonal to each
    weight column (what triggers AdamP/SGDP's projection on scale-invariant weights).
    """
    params = make_params(2e4, 6, seed=1)
    rng = np.random.default_rng(2)

    def random_grads():
        return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32)), params)

    def orthogonal(g, w):
        if w.ndim < 2:
            return g
        return g - w * jnp.sum(g * w, axis=0, keepdims=True) / jnp.sum(w * w, axis=0, keepdims=True)

    for make_grads in (random_grads, lambda: jax.tree.map(orthogonal, random_grads(), params)):
        grads = [make_grads() for _ in range(3)]
        out = []
        for tx in (build_optlab(name), optax.flatten(build_optlab(name))):
            state, p = tx.init(params), copy_tree(params)
            step = make_optimizer_step(tx, False)
            for g in grads:
                p, state = step(p, state, g)
            out.append(jax.tree.map(jnp.subtract, p, params))  # the total update
        scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(out[0]))
        same = all(
            bool(jnp.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))
            for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1]))
        )
        if not same:
            return False
    return True


def _tree_and_flat(name):
    return (("tree", build_optlab(name)), ("flat", optax.flatten(build_optlab(name))))


def bench_flatten(names, sizes, leaf_counts, compile_size, repeats, target_s, log) -> list[dict]:
    rows = []
    for name in names:
        row: dict[str, Any] = dict(name=name)
        try:
            row["same_result"] = flatten_preserves_result(name)
        except Exception as e:  # noqa: BLE001 - needs extra args flatten cannot pass on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            log(f"  {name:<20} flatten not applicable: {row['error']}")
            continue
        if not row["same_result"]:
            rows.append(row)
            log(f"  {name:<20} flatten changes the result (per-leaf method): skipped")
            continue
        for nl in leaf_counts:
            params = make_params(compile_size, nl)
            for label, tx in _tree_and_flat(name):
                state = jax.eval_shape(tx.init, params)
                row[f"compile_{label}_{nl}"] = _compile_seconds(
                    make_optimizer_step(tx, False), params, state, params
                )
        for size in sizes:
            params = make_params(size, 50)
            grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
            cands = []
            for label, tx in _tree_and_flat(name):
                step = make_optimizer_step(tx, False)
                cands.append(Candidate(label, step, params, tx.init(params), grads))
            for c in cands:
                c.compile()
            times = time_candidates(cands, repeats, target_s)
            row[f"tree_s_{size:g}"] = times["tree"]
            row[f"flat_s_{size:g}"] = times["flat"]
            for c in cands:
                c.delete()
            gc.collect()
        cells = (f"{k}={v:.4g}" for k, v in row.items() if k not in ("name", "same_result"))
        log(f"  {name:<20} " + "  ".join(cells))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        jax=jax.__version__,
        optax=optax.__version__,
        optlab=optlab.__version__,
        python=platform.python_version(),
        device=str(jax.devices()[0]),
        # the tag of the results: "cpu", or the accelerator's kind ("NVIDIA H200", ...)
        platform=jax.devices()[0].platform,
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        cpu=cpu,
        cores=os.cpu_count(),
        env={k: os.environ.get(k, "(unset)") for k in ENV_VARS},
    )


def _ms(x):
    return "" if x is None else f"{x * 1e3:.2f}"


def _x(x):
    return "" if x is None else f"{x:.2f}x"


def env_lines(env) -> list[str]:
    return [
        f"- {env['date']}; jax {env['jax']}, optax {env['optax']}, optlab {env['optlab']},"
        f" Python {env['python']}; device {env['device']}"
        f" (kind {env.get('device_kind', '?')}; host {env['cpu']}, {env['cores']} cores)",
        "- " + ", ".join(f"`{k}={v}`" for k, v in env["env"].items()),
    ] + ([f"- {env['note']}"] if env.get("note") else [])


def pool_floors(step_rows) -> None:
    """Add, for every row, the best floor time measured for its (size, K) in the run.

    The floor kernel depends only on the size and K, and every optimizer's row measures
    it again, interleaved with the optimizer. ``vs_floor`` uses the row's own floor
    (same load conditions as the optimizer: the ratio is robust to load that drifts
    during the run); ``vs_best_floor`` uses the minimum over the run's rows, the least
    disturbed estimate of the floor itself (a conservative ratio).
    """
    best: dict[tuple[int, int], float] = {}
    for r in step_rows:
        if "floor_s" in r:
            key = (r["size"], r["k"])
            best[key] = min(best.get(key, math.inf), r["floor_s"])
    for r in step_rows:
        if "floor_s" in r:
            r["floor_pooled_s"] = best[r["size"], r["k"]]
            r["vs_floor"] = r["optlab_s"] / r["floor_s"]
            r["vs_best_floor"] = r["optlab_s"] / r["floor_pooled_s"]
            r["floor_gbps"] = (2 * r["k"] + 3) * 4 * r["size"] / r["floor_s"] / 1e9


def step_time_markdown(step_rows, env, target=(1.1, 1.5)) -> str:
    lines = (
        ["# Optimizer step time", ""]
        + env_lines(env)
        + [
            "",
            "One jitted step = update + `optax.apply_updates`, params and state donated,"
            " ~50 float32 leaves (half 2-D). Best of interleaved repeats. `vs optax`:"
            " optlab / optax's equivalent; `vs floor`: optlab / a bandwidth floor kernel that"
            " reads params, grads and K state buffers and writes params and K buffers"
            " (K = round(state bytes / param bytes)), timed interleaved with the optimizer"
            " (`floor GB/s`: the bandwidth it implies); `vs best floor` divides by the best"
            " floor time measured for that size and K anywhere in the run instead."
            f" Target: <= {target[0]}x optax and <= {target[1]}x floor at 1e7 parameters.",
            "",
        ]
    )
    lines += [f"Not timed: {name} ({why})." for name, why in EXCLUDED.items()] + [""]
    sizes = sorted({r["size"] for r in step_rows})
    for size in sizes:
        lines += [
            f"## {size:,} parameters",
            "",
            "| optimizer | state B / param B | optlab ms | optax ms | vs optax | floor ms (K) |"
            " vs floor | vs best floor | floor GB/s | target |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|:--:|",
        ]
        for r in (r for r in step_rows if r["size"] == size):
            if "error" in r:
                lines.append(f"| {r['name']} | | | | | | | | | error: {r['error']} |")
                continue
            ok_optax = r["vs_optax"] is None or r["vs_optax"] <= target[0]
            ok = ok_optax and r["vs_floor"] <= target[1]
            lines.append(
                f"| {r['name']} | {r['state_ratio']:.2f} | {_ms(r['optlab_s'])} |"
                f" {_ms(r.get('optax_s'))} | {_x(r['vs_optax'])} |"
                f" {_ms(r['floor_s'])} ({r['k']}) | {_x(r['vs_floor'])} |"
                f" {_x(r['vs_best_floor'])} |"
                f" {r['floor_gbps']:.1f} | {'yes' if ok else 'NO'} |"
            )
        lines.append("")
    return "\n".join(lines)


def compile_markdown(rows, leaf_counts, size, env) -> str:
    head = " | ".join(f"optlab {n} leaves s | optax {n} leaves s" for n in leaf_counts)
    lines = (
        ["# Compile time", ""]
        + env_lines(env)
        + [
            "",
            f"`jax.jit(step).lower(...).compile()` of one optimizer step, {int(size):,} float32"
            " parameters split into the given number of leaves.",
            "",
            f"| optimizer | {head} |",
            "|---|" + "---:|" * (2 * len(leaf_counts)),
        ]
    )
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} |")
            continue
        cells = []
        for n in leaf_counts:
            cells.append(f"{r[f'optlab_{n}']:.2f}")
            cells.append(f"{r[f'optax_{n}']:.2f}" if f"optax_{n}" in r else "")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def flatten_markdown(rows, sizes, leaf_counts, env) -> str:
    lines = (
        ["# Flattening the parameter tree (`optax.flatten`)", ""]
        + env_lines(env)
        + [
            "",
            "`optax.flatten(tx)` ravels all leaves into one vector before the update and"
            " splits the result back. Only optimizers whose result it leaves unchanged are"
            " timed (per-leaf methods change meaning). Step times at 50 leaves; compile"
            " times at each leaf count.",
            "",
        ]
    )
    cols = [f"compile tree/flat {n} leaves s" for n in leaf_counts] + [
        f"step tree/flat {s:g} ms" for s in sizes
    ]
    lines += ["| optimizer | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    skipped = []
    for r in rows:
        if "error" in r or not r.get("same_result"):
            skipped.append(r["name"])
            continue
        cells = [
            f"{r[f'compile_tree_{n}']:.2f} / {r[f'compile_flat_{n}']:.2f}" for n in leaf_counts
        ]
        cells += [f"{r[f'tree_s_{s:g}'] * 1e3:.2f} / {r[f'flat_s_{s:g}'] * 1e3:.2f}" for s in sizes]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    if skipped:
        lines += [
            "",
            "Not flattenable without changing the result (or needing tree-shaped"
            " extra arguments): " + ", ".join(skipped) + ".",
        ]
    return "\n".join(lines) + "\n"


def plot(step_rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in step_rows})
    names = [r["name"] for r in step_rows if r["size"] == sizes[0]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.32 * len(names) + 1.8), dpi=100, sharey=True)
    height = 0.8 / len(sizes)
    y = np.arange(len(names))
    for ax, key, title, target in (
        (axes[0], "vs_optax", "step time / optax's equivalent", 1.1),
        (axes[1], "vs_floor", "step time / bandwidth floor", 1.5),
    ):
        for i, size in enumerate(sizes):
            by_name = {r["name"]: r for r in step_rows if r["size"] == size}
            vals = [by_name.get(n, {}).get(key) or np.nan for n in names]
            ax.barh(y + i * height, vals, height, label=f"{size:.0e} params")
        ax.axvline(target, color="k", ls="--", lw=1, label=f"target {target}x")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(y + 0.4 - height / 2, names)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6", help="comma list of parameter counts")
    parser.add_argument("--leaves", type=int, default=50, help="leaves per tree (default: 50)")
    parser.add_argument("--optimizers", default="", help="comma list (default: all named)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (best of)")
    parser.add_argument("--target-ms", type=float, default=60.0, help="time per repeat")
    parser.add_argument(
        "--slow-s", type=float, default=0.5, help="steps slower than this get repeats // 3 repeats"
    )
    parser.add_argument(
        "--compile-leaves", default="50", help="leaf counts for the compile-time table ('' to skip)"
    )
    parser.add_argument("--compile-size", type=float, default=1e6)
    parser.add_argument(
        "--compile-optimizers",
        default="",
        help="optimizers for the compile-time and flatten tables (default: all)",
    )
    parser.add_argument("--flatten", action="store_true", help="also measure optax.flatten")
    parser.add_argument(
        "--flatten-sizes",
        default="",
        help="sizes for the flatten step times (default: the --sizes up to 1e7)",
    )
    parser.add_argument(
        "--skip-at",
        default="muon:5e7",
        help="name:size pairs to skip (compute-bound and very slow on CPU)",
    )
    parser.add_argument("--out", default="", help="directory for the .md/.json/.png results")
    parser.add_argument(
        "--report", default="", help="rewrite the tables and plot from this step_time.json and exit"
    )
    args = parser.parse_args(argv)

    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.report:
        raw = json.loads(Path(args.report).read_text())
        write_reports(Path(args.out or Path(args.report).parent), raw, log)
        return 0
    names = [n for n in args.optimizers.split(",") if n] or [
        i.name for i in optlab.available() if i.name not in EXCLUDED
    ] + list(EXTRA)
    compile_names = [n for n in args.compile_optimizers.split(",") if n] or names
    sizes = [float(s) for s in args.sizes.split(",") if s]
    leaf_counts = [int(s) for s in args.compile_leaves.split(",") if s]
    skip = {}
    for item in filter(None, args.skip_at.split(",")):
        n, _, s = item.partition(":")
        skip.setdefault(n, set()).add(float(s))
    env = environment()
    log(f"optimizers: {', '.join(names)}")
    log(f"environment: {env}")

    step_rows = []
    for size in sizes:
        log(f"step time at {size:g} parameters, {args.leaves} leaves")
        todo = [n for n in names if size not in skip.get(n, set())]
        step_rows += bench_step_time(
            todo, size, args.leaves, args.repeats, args.target_ms / 1e3, args.slow_s, log
        )
    compile_rows = []
    if leaf_counts:
        log(f"compile time at {leaf_counts} leaves")
        compile_rows = bench_compile(compile_names, leaf_counts, args.compile_size, log)
    flatten_rows = []
    flatten_sizes = [float(s) for s in args.flatten_sizes.split(",") if s]
    flatten_sizes = flatten_sizes or [s for s in sizes if s <= 1e7]
    if args.flatten:
        log("optax.flatten")
        flatten_rows = bench_flatten(
            compile_names,
            flatten_sizes,
            leaf_counts or [50],
            args.compile_size,
            args.repeats,
            args.target_ms / 1e3,
            log,
        )

    pool_floors(step_rows)
    raw = dict(
        environment=env,
        step_time=step_rows,
        compile_time=compile_rows,
        flatten=flatten_rows,
        leaf_counts=leaf_counts,
        compile_size=args.compile_size,
        flatten_sizes=flatten_sizes,
    )
    print("\n" + step_time_markdown(step_rows, env))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "step_time.json").write_text(json.dumps(raw, indent=1, default=float))
        write_reports(out, raw, log)
    return 0


def write_reports(out: Path, raw: dict, log) -> None:
    """The markdown tables and the plot from the raw results."""
    env, step_rows = raw["environment"], raw["step_time"]
    pool_floors(step_rows)
    (out / "step_time.md").write_text(step_time_markdown(step_rows, env))
    leaf_counts = raw.get("leaf_counts") or [50, 500]
    if raw.get("compile_time"):
        text = compile_markdown(raw["compile_time"], leaf_counts, raw.get("compile_size", 1e6), env)
        (out / "compile_time.md").write_text(text)
    if raw.get("flatten"):
        keys = [k for r in raw["flatten"] for k in r if k.startswith("tree_s_")]
        sizes = raw.get("flatten_sizes") or sorted({float(k[len("tree_s_") :]) for k in keys})
        text = flatten_markdown(raw["flatten"], sizes, leaf_counts, env)
        (out / "flatten.md").write_text(text)
    if step_rows:
        plot(step_rows, out / "step_time.png")
    log(f"wrote {out}: step_time.md, compile_time.md, flatten.md, step_time.json, step_time.png")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
