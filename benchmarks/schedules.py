"""Learning-rate schedules on the main job's digits task (optlab.bench's data and MLP).

Two experiments, AdamW at the main job's tuned learning rate (``optlab.bench.LEARNING_RATES``),
batch 64, 3 seeds (each seed: initialization and mini-batch order), vmapped over seeds:

1. **Equal steps.** constant, cosine, WSD with a 1-sqrt cooldown (last 20%), linear decay
   to zero; all with the same 5% linear warmup and the same number of steps.
2. **WSD branching.** One WSD run at the constant rate; at several lengths L a 1-sqrt
   cooldown (20% of L) is branched off the *same* run, and compared with separate cosine
   runs of length L. The property from Hägele et al. (2024): a cooldown started from one
   long constant run matches a cosine schedule tuned to that length, so one run serves
   every budget.

Reported: final test accuracy and test loss (mean +- std over seeds) and the training loss
over the last 10% of the steps. Writes ``schedules.md`` and ``schedules.png`` to ``--out``.

    python3 benchmarks/schedules.py --out benchmarks/results

``--task lm`` runs the equal-steps comparison on the byte-level transformer of
:mod:`optlab.bench.lm` instead (AdamW at its tuned LM rate, one seed, the same batches for
every schedule; validation loss in nats per byte), writing ``schedules_lm.md``::

    python3 benchmarks/schedules.py --task lm --size small --steps 200 --out benchmarks/results

The schedules are built with :func:`make_schedule`, the mapping a ``--schedule`` flag of the
main job would use.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optlab
from optlab import bench

SCHEDULES = ("constant", "cosine", "wsd", "linear-to-zero")


def make_schedule(
    name: str, peak_value: float, total_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
    """The learning-rate schedule ``name`` (one of :data:`SCHEDULES`) with linear warmup."""
    if name == "constant":
        return (
            optax.warmup_constant_schedule(0.0, peak_value, max(warmup_steps, 1))
            if warmup_steps
            else optax.constant_schedule(peak_value)
        )
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak_value, warmup_steps, total_steps)
    if name == "wsd":
        return optlab.wsd_schedule(
            peak_value,
            total_steps,
            warmup_steps=warmup_steps,
            decay_fraction=0.2,
            decay_shape="1-sqrt",
        )
    if name == "linear-to-zero":
        return optlab.linear_decay_to_zero(peak_value, total_steps, warmup_steps=warmup_steps)
    raise ValueError(f"unknown schedule {name!r}; known: {SCHEDULES}")


class Trainer:
    """AdamW with any schedule on digits: seeds vmapped, steps scanned, resumable."""

    def __init__(self, seeds: int, batch_size: int, weight_decay: float = 1e-4):
        from flax import nnx

        self.nnx = nnx
        self.data = [jnp.asarray(a) for a in bench.load_data()]
        self.graphdef, _ = nnx.split(bench.make_mlp(0))
        per_seed = [nnx.to_pure_dict(nnx.split(bench.make_mlp(s))[1]) for s in range(seeds)]
        self.params0 = jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed)
        self.keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(1234), s))(
            jnp.arange(seeds)
        )
        self.batch_size = batch_size
        self.weight_decay = weight_decay

    def _loss(self, p, x, y):
        logits = self.nnx.merge(self.graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    def tx(self, schedule):
        return optax.adamw(schedule, weight_decay=self.weight_decay)

    def init(self, schedule):
        return self.params0, jax.vmap(self.tx(schedule).init)(self.params0)

    def run(self, schedule, params, opt_state, t0: int, steps: int):
        """``steps`` updates from step ``t0``: (params, opt_state, losses (seeds, steps))."""
        x_tr, y_tr = self.data[0], self.data[1]
        tx = self.tx(schedule)

        def one(p, s, key, t):
            idx = jax.random.randint(
                jax.random.fold_in(key, t), (self.batch_size,), 0, x_tr.shape[0]
            )
            (v, _), g = jax.value_and_grad(self._loss, has_aux=True)(p, x_tr[idx], y_tr[idx])
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, v

        @jax.jit
        def scan(p, s):
            def body(c, t):
                p, s = c
                p, s, v = jax.vmap(one, in_axes=(0, 0, 0, None))(p, s, self.keys, t)
                return (p, s), v

            (p, s), vs = jax.lax.scan(body, (p, s), t0 + jnp.arange(steps, dtype=jnp.int32))
            return p, s, vs.T

        return scan(params, opt_state)

    def evaluate(self, params):
        """(test accuracy, test loss) per seed."""
        x_te, y_te = self.data[2], self.data[3]

        def one(p):
            loss, logits = self._loss(p, x_te, y_te)
            return jnp.mean(jnp.argmax(logits, -1) == y_te), loss

        acc, loss = jax.jit(jax.vmap(one))(params)
        return np.asarray(acc), np.asarray(loss)


def _row(name, acc, test_loss, train_losses):
    tail = max(1, train_losses.shape[1] // 10)
    return (
        f"| {name} | {acc.mean():.4f} +- {acc.std():.4f} | {test_loss.mean():.4f} +-"
        f" {test_loss.std():.4f} | {train_losses[:, -tail:].mean():.4f} |"
    )


def equal_steps(trainer: Trainer, lr: float, steps: int, warmup: int):
    rows, curves = [], {}
    for name in SCHEDULES:
        sched = make_schedule(name, lr, steps, warmup)
        p, s = trainer.init(sched)
        p, s, losses = trainer.run(sched, p, s, 0, steps)
        acc, tl = trainer.evaluate(p)
        rows.append(_row(name, acc, tl, np.asarray(losses)))
        curves[name] = np.asarray(losses).mean(0)
    return rows, curves


def branching(trainer: Trainer, lr: float, lengths: list[int], warmup: int):
    """One constant run with 1-sqrt cooldowns branched off at each length vs cosine runs."""
    rows = []
    longest = max(lengths)
    main = make_schedule("constant", lr, longest, warmup)
    p, s = trainer.init(main)
    t = 0
    branch_points = sorted((L - round(0.2 * L), L) for L in lengths)
    for start, L in branch_points:
        p, s, _ = trainer.run(main, p, s, t, start - t)  # continue the constant run
        t = start
        wsd = optlab.wsd_schedule(
            lr, L, warmup_steps=warmup, decay_steps=L - start, decay_shape="1-sqrt"
        )
        pb, _sb, losses_b = trainer.run(wsd, p, s, start, L - start)  # the branch
        acc_w, tl_w = trainer.evaluate(pb)
        cos = make_schedule("cosine", lr, L, warmup)
        pc, sc = trainer.init(cos)
        pc, sc, losses_c = trainer.run(cos, pc, sc, 0, L)
        acc_c, tl_c = trainer.evaluate(pc)
        rows.append(
            (L, start, acc_w, tl_w, np.asarray(losses_b), acc_c, tl_c, np.asarray(losses_c))
        )
    return rows


def lm_equal_steps(size: str, steps: int, seed: int, out: Path) -> str:
    """Equal steps on the LM task: AdamW under each schedule, validation loss."""
    from optlab.bench import lm

    task = lm.LMTask(size)
    lr = lm.learning_rate_for("adamw")
    warmup = max(1, int(0.05 * steps))
    start = time.perf_counter()
    results = []
    for name in SCHEDULES:
        tx = lm.make_optimizer("adamw", lr, lambda peak: make_schedule(name, peak, steps, warmup))
        r = lm.train(tx, steps, size, seed, task=task, name=name, learning_rate=lr)
        results.append(r)
        print(f"{name:16s} val loss {r.final_val_loss:.4f}  [{time.perf_counter() - start:.0f} s]")
    elapsed = time.perf_counter() - start
    cfg = task.size.model
    lines = [
        "# Learning-rate schedules on the language-model task",
        "",
        (
            f"`python3 benchmarks/schedules.py --task lm --size {size} --steps {steps}`:"
            f" optlab.bench.lm's byte-level transformer (d={cfg.d}, {cfg.layers} layers,"
            f" context {cfg.context}, {task.n_params() / 1e6:.2f}M parameters), AdamW at the"
            f" LM job's tuned rate {lr:g}, batch {task.size.batch_size}, {steps} steps with a"
            f" {warmup}-step linear warmup, seed {seed} (the same batches for every schedule)."
            f" WSD: 1-sqrt cooldown over the last 20%. {task.corpus.describe()}."
            f" {elapsed:.0f} s of wall time on the shared CPU."
        ),
        "",
        "| schedule | val loss (nats/byte) | bits/byte | train loss (last 10%) |"
        " val loss at 50% of the steps |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        tail = max(1, steps // 10)
        half = float(np.interp(steps // 2, r.eval_steps, r.val_loss))
        lines.append(
            f"| {r.name} | {r.final_val_loss:.4f} | {r.final_bits_per_byte:.4f}"
            f" | {r.train_loss[-tail:].mean():.4f} | {half:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "schedules_lm.md").write_text(text)
    print(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("digits", "lm"), default="digits")
    ap.add_argument("--size", default="small", help="LM size (--task lm)")
    ap.add_argument("--seed", type=int, default=0, help="LM seed (--task lm)")
    ap.add_argument("--steps", type=int, default=None, help="default: 400 (digits), 200 (lm)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=bench.DEFAULT_BATCH_SIZE)
    ap.add_argument("--lengths", default="100,200,400", help="branch lengths (WSD branching)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    if args.task == "lm":
        lm_equal_steps(args.size, args.steps or 200, args.seed, Path(args.out))
        return 0
    args.steps = args.steps or bench.DEFAULT_STEPS
    lr = bench.learning_rate_for("adamw")
    warmup = max(1, int(0.05 * args.steps))
    start = time.perf_counter()
    trainer = Trainer(args.seeds, args.batch_size)
    rows, curves = equal_steps(trainer, lr, args.steps, warmup)
    lengths = [int(x) for x in args.lengths.split(",")]
    branches = branching(trainer, lr, lengths, warmup)
    elapsed = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = "| schedule | test accuracy | test loss | train loss (last 10%) |\n|---|---|---|---|"
    lines = [
        "# Learning-rate schedules on digits",
        "",
        (
            f"AdamW, learning rate {lr} (the main job's tuned value), weight decay 1e-4, batch"
            f" {args.batch_size}, {args.steps} steps with a {warmup}-step linear warmup,"
            f" {args.seeds} seeds (mean +- std). `python3 benchmarks/schedules.py` ({elapsed:.0f} s"
            " on the shared 2-core CPU)."
        ),
        "",
        "## Equal steps",
        "",
        header,
        *rows,
        "",
        "## WSD branching vs separate cosine runs",
        "",
        (
            "One constant-rate run; at each length L a 1-sqrt cooldown over the last 20% of L is"
            " branched off that same run (no restart), vs a separate cosine run of length L."
        ),
        "",
        (
            "| L | branch at | WSD-branch test acc | WSD-branch test loss | cosine test acc |"
            " cosine test loss |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for L, st, aw, tw, _, ac, tc, _ in branches:
        lines.append(
            f"| {L} | {st} | {aw.mean():.4f} +- {aw.std():.4f} | {tw.mean():.4f} +-"
            f" {tw.std():.4f} | {ac.mean():.4f} +- {ac.std():.4f} | {tc.mean():.4f} +-"
            f" {tc.std():.4f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "schedules.md").write_text(text)
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        steps = np.arange(args.steps)
        for name in SCHEDULES:
            axes[0].plot(
                steps,
                [float(make_schedule(name, lr, args.steps, warmup)(t)) for t in steps],
                label=name,
            )
            k = 10
            smooth = np.convolve(curves[name], np.ones(k) / k, mode="valid")
            axes[1].plot(steps[k - 1 :], smooth, label=name)
        axes[0].set(title="learning rate", xlabel="step")
        axes[1].set(title="training loss (10-step mean over seeds)", xlabel="step", yscale="log")
        axes[0].legend()
        axes[1].legend()
        fig.tight_layout()
        fig.savefig(out / "schedules.png", dpi=110)
    except ImportError:  # pragma: no cover
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
