"""DiLoCo vs synchronous data-parallel AdamW on digits, with replicas simulated by vmap.

For R = 4 and 8 replicas, each run does the same number of inner steps T with the same
global batch (each replica draws ``global_batch / R`` training examples per step):

* ``DP AdamW``: synchronous data parallelism, the gradients are averaged over the
  replicas at every step (``optlab.compressed_all_reduce`` without a compressor), then
  AdamW: T all-reduces of the full gradient;
* ``DP AdamW + top-k EF``: the same with a top-k (1 %) gradient message and error feedback;
* ``DiLoCo H``: inner AdamW on each replica, outer Nesterov (lr 0.7, momentum 0.9) every
  H steps: T / H all-reduces of the pseudo-gradient;
* ``DiLoCo H + top-k EF``: the pseudo-gradient sent as top-k (10 %) with error feedback.

Reported: test accuracy of the (synced) model, the number of all-reduces on the replica
axis, and the payload bytes one replica sends (``optlab.bytes_on_the_wire`` / R). Mean
over seeds. Usage::

    python3 benchmarks/replicas.py --steps 500 --seeds 2 --out benchmarks/results

``--task lm``: the byte-level transformer of :mod:`optlab.bench.lm` instead (4 vmapped
replicas, each drawing its own windows; DP AdamW vs DiLoCo H = 1 and 10, inner AdamW at
the LM job's tuned rate; validation loss of the averaged model), writing ``replicas_lm.md``
and ``replicas_lm.json``::

    python3 benchmarks/replicas.py --task lm --size small --steps 200 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optlab

HIDDEN = 128
INNER_LR = 2e-3


def load_digits_split(test_size: float = 0.25, split_seed: int = 0):
    """The digits split of the main job (``optlab.bench``): features in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=split_seed, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def init_mlp(seed: int):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    glorot = jax.nn.initializers.glorot_uniform()
    return {
        "l1": {"w": glorot(k1, (64, HIDDEN)), "b": jnp.zeros(HIDDEN)},
        "l2": {"w": glorot(k2, (HIDDEN, HIDDEN)), "b": jnp.zeros(HIDDEN)},
        "l3": {"w": glorot(k3, (HIDDEN, 10)), "b": jnp.zeros(10)},
    }


def logits_fn(params, x):
    h = jax.nn.relu(x @ params["l1"]["w"] + params["l1"]["b"])
    h = jax.nn.relu(h @ params["l2"]["w"] + params["l2"]["b"])
    return h @ params["l3"]["w"] + params["l3"]["b"]


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


def methods(steps: int):
    adamw = optax.adamw(INNER_LR, weight_decay=1e-4)
    out = {
        "DP AdamW": optax.chain(optlab.compressed_all_reduce("replica"), adamw),
        "DP AdamW + top-k EF": optax.chain(
            optlab.compressed_all_reduce("replica", optlab.top_k(0.01), "ef"), adamw
        ),
    }
    for h in (1, 10, 50):
        out[f"DiLoCo H={h}"] = optlab.diloco(adamw, 0.7, 0.9, sync_period=h)
    for h in (10, 50):
        out[f"DiLoCo H={h} + top-k EF"] = optlab.diloco(
            adamw, 0.7, 0.9, sync_period=h, compressor=optlab.top_k(0.1), error_feedback="ef"
        )
    return out


def train(tx, replicas: int, steps: int, global_batch: int, seed: int, data):
    x_tr, y_tr, x_te, y_te = data
    params = init_mlp(seed)
    state = tx.init(params)
    axes = optlab.replica_axes(state)
    p, s = optlab.replicate(params, replicas), optlab.replicate(state, replicas, axes)
    per = global_batch // replicas
    idx = jax.random.randint(jax.random.key(1000 + seed), (steps, replicas, per), 0, len(x_tr))
    xs, ys = jnp.asarray(x_tr)[idx], jnp.asarray(y_tr)[idx]

    def step(p, s, x, y):
        updates, s = tx.update(jax.grad(loss_fn)(p, x, y), s, p)
        return optax.apply_updates(p, updates), s

    vstep = jax.vmap(step, in_axes=(0, axes, 0, 0), out_axes=(0, axes), axis_name="replica")

    @jax.jit
    def run(p, s, xs, ys):
        def body(carry, batch):
            return vstep(*carry, *batch), None

        (p, s), _ = jax.lax.scan(body, (p, s), (xs, ys))
        return p, s

    p, s = run(p, s, xs, ys)
    mean_params = jax.tree.map(lambda a: jnp.mean(a, 0), p)
    acc = float(
        jnp.mean(jnp.argmax(logits_fn(mean_params, jnp.asarray(x_te)), -1) == jnp.asarray(y_te))
    )
    spread = float(max(jnp.max(jnp.abs(a - a[0:1])) for a in jax.tree.leaves(p)))
    return acc, float(optlab.bytes_on_the_wire(s)) / replicas, spread


def train_lm(tx, task, replicas: int, steps: int, global_batch: int, seed: int):
    """Replicas of the LM task under vmap: (validation loss of the mean model, bytes/replica,
    largest parameter difference between replicas at the end)."""
    params = task.init_params(seed)
    state = tx.init(params)
    axes = optlab.replica_axes(state)
    p, s = optlab.replicate(params, replicas), optlab.replicate(state, replicas, axes)
    per = global_batch // replicas
    data = task.train_bytes

    def step(p, s, r, t, data):
        key = jax.random.fold_in(task.step_key(seed, t), r)  # each replica its own windows
        tokens = task.batch(key, per, data=data)
        updates, s = tx.update(jax.grad(task.loss)(p, tokens), s, p)
        return optax.apply_updates(p, updates), s

    vstep = jax.vmap(
        step, in_axes=(0, axes, 0, None, None), out_axes=(0, axes), axis_name="replica"
    )

    @jax.jit
    def run(p, s, data):
        def body(carry, t):
            return vstep(*carry, jnp.arange(replicas), t, data), None

        (p, s), _ = jax.lax.scan(body, (p, s), jnp.arange(steps, dtype=jnp.int32))
        return p, s

    p, s = run(p, s, data)
    mean_params = jax.tree.map(lambda a: jnp.mean(a, 0), p)
    loss = float(jax.jit(task.valid_loss)(mean_params))
    spread = float(max(jnp.max(jnp.abs(a - a[0:1])) for a in jax.tree.leaves(p)))
    return loss, float(optlab.bytes_on_the_wire(s)) / replicas, spread


def main_lm(args) -> int:
    from optlab.bench import lm

    task = lm.LMTask(args.size)
    lr = lm.learning_rate_for("adamw")
    replicas = int(args.replicas.split(",")[0])
    batch = args.global_batch or task.size.batch_size
    if batch % replicas:
        raise SystemExit(f"--global-batch {batch} is not a multiple of {replicas} replicas")
    adamw = optax.adamw(lr, weight_decay=1e-4)
    txs = {"DP AdamW": optax.chain(optlab.compressed_all_reduce("replica"), adamw)}
    for h in (1, 10):
        txs[f"DiLoCo H={h}"] = optlab.diloco(adamw, 0.7, 0.9, sync_period=h)
    rows, t0 = [], time.time()
    for name, tx in txs.items():
        loss, nbytes, spread = train_lm(tx, task, replicas, args.steps, batch, args.seed)
        h = int(name.split("H=")[1]) if "H=" in name else 1
        rows.append(
            {
                "replicas": replicas,
                "method": name,
                "val_loss": loss,
                "all_reduces": args.steps // h,
                "bytes_per_replica": nbytes,
                "final_replica_spread": spread,
            }
        )
        print(f"{name:14s} val loss {loss:.4f}  [{time.time() - t0:.0f} s]", flush=True)
    cfg = task.size.model
    dp = rows[0]["bytes_per_replica"]
    lines = [
        (
            f"`python3 benchmarks/replicas.py --task lm --size {args.size} --steps"
            f" {args.steps}`: optlab.bench.lm's byte-level transformer (d={cfg.d}, {cfg.layers}"
            f" layers, context {cfg.context}, {task.n_params() / 1e6:.2f}M parameters),"
            f" {replicas} replicas vmapped, global batch {batch} ({batch // replicas} windows per"
            f" replica per step), {args.steps} inner steps, seed {args.seed}, inner AdamW lr"
            f" {lr:g} (the LM job's tuned rate, constant, no warmup), weight decay 1e-4; DiLoCo's"
            " outer Nesterov lr 0.7, momentum 0.9. Validation loss (nats per byte) of the"
            f" replicas' mean parameters. {task.corpus.describe()}."
            f" {time.time() - t0:.0f} s of wall time on the shared CPU."
        ),
        "",
        "| replicas | method | val loss (nats/byte) | bits/byte | communication rounds"
        " | MB sent per replica | bytes vs DP AdamW |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['replicas']} | {row['method']} | {row['val_loss']:.4f} |"
            f" {row['val_loss'] / np.log(2):.4f} | {row['all_reduces']} |"
            f" {row['bytes_per_replica'] / 1e6:.3f} | {row['bytes_per_replica'] / dp:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "replicas_lm.md"), "w") as fh:
            fh.write(table + "\n")
        with open(os.path.join(args.out, "replicas_lm.json"), "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("digits", "lm"), default="digits")
    ap.add_argument("--size", default="small", help="LM size (--task lm)")
    ap.add_argument("--seed", type=int, default=0, help="LM seed (--task lm)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--global-batch", type=int, default=None, help="digits: 64; lm: the size's")
    ap.add_argument("--replicas", default="4,8")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for replicas.md/.json/.png")
    args = ap.parse_args(argv)
    if args.task == "lm":
        return main_lm(args)
    args.global_batch = args.global_batch or 64
    data = load_digits_split()
    rows = []
    t0 = time.time()
    for r in [int(v) for v in args.replicas.split(",")]:
        for name, tx in methods(args.steps).items():
            accs, sent = [], []
            for seed in range(args.seeds):
                acc, nbytes, spread = train(tx, r, args.steps, args.global_batch, seed, data)
                accs.append(acc)
                sent.append(nbytes)
            h = int(name.split("H=")[1].split()[0]) if "H=" in name else 1
            rows.append(
                {
                    "replicas": r,
                    "method": name,
                    "accuracy": float(np.mean(accs)),
                    "accuracy_std": float(np.std(accs)),
                    "all_reduces": args.steps // h,
                    "bytes_per_replica": float(np.mean(sent)),
                    "final_replica_spread": spread,
                }
            )
            print(
                f"R={r} {name:24s} acc={np.mean(accs):.4f} all-reduces={args.steps // h:4d}"
                f" bytes/replica={np.mean(sent) / 1e6:8.3f} MB",
                flush=True,
            )
    n_params = sum(x.size for x in jax.tree.leaves(init_mlp(0)))
    lines = [
        (
            f"Digits MLP ({n_params} float32 parameters), {args.steps} inner steps, global batch"
            f" {args.global_batch}, mean of {args.seeds} seeds; inner AdamW lr {INNER_LR}."
            " Communication rounds: collectives on the replica axis (an all-reduce, or an"
            " all-gather of the payloads for top-k). MB sent per replica: the payload one"
            " replica sends over the run (`optlab.bytes_on_the_wire` / replicas)."
        ),
        "",
        "| replicas | method | test accuracy | communication rounds | MB sent per replica"
        " | bytes vs DP AdamW |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        dp = next(x for x in rows if x["replicas"] == row["replicas"] and x["method"] == "DP AdamW")
        ratio = row["bytes_per_replica"] / dp["bytes_per_replica"]
        lines.append(
            f"| {row['replicas']} | {row['method']} |"
            f" {row['accuracy']:.4f} ± {row['accuracy_std']:.4f} |"
            f" {row['all_reduces']} | {row['bytes_per_replica'] / 1e6:.3f} | {ratio:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    print(f"total {time.time() - t0:.0f} s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "replicas.md"), "w") as fh:
            fh.write(table + "\n")
        with open(os.path.join(args.out, "replicas.json"), "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
        plot(rows, os.path.join(args.out, "replicas.png"))
    return 0


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, r in zip(axes, sorted({x["replicas"] for x in rows})):
        for row in (x for x in rows if x["replicas"] == r):
            marker = "s" if row["method"].startswith("DP") else "o"
            ax.scatter(row["bytes_per_replica"] / 1e6, row["accuracy"], marker=marker)
            ax.annotate(
                row["method"],
                (row["bytes_per_replica"] / 1e6, row["accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_title(f"{r} replicas")
        ax.set_xlabel("MB sent per replica (log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
