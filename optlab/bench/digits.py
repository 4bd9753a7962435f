"""The main job's default task: optlab's named optimizers on scikit-learn's bundled digits data.

Run it with::

    python3 -m pip install -e ".[bench]" && python3 -m optlab.bench

It trains a small Flax NNX MLP classifier (64 -> 128 -> 128 -> 10, ReLU) on
:func:`sklearn.datasets.load_digits` (1,797 8x8 images shipped inside scikit-learn, no
download; a fixed stratified 75/25 train/test split) with each chosen optimizer over
several seeds, then

* prints a table: optimizer, learning rate, final test accuracy (mean +- std over
  seeds), final training loss, steps per second, compile time, and the optimizer's
  state bytes per parameter byte;
* writes the table as markdown and a plot of the training-loss curves (one small panel
  per optimizer, the others in grey for reference; PNG).

Each seed changes the initialization and the mini-batch order; the split is fixed.
All seeds of one optimizer train at once: the train step is ``jax.vmap``-ed over the
seeds, ``lax.scan``-ed over a chunk of steps and compiled once per optimizer. One
"step" in the steps/s column therefore updates every seed's model once; compile time
is measured separately (ahead-of-time ``lower().compile()``) and excluded.

Names accepted by ``--optimizers`` are those of :func:`optlab.available` plus
``sam-<name>``: ``optlab.sam(optlab.get(<name>, ...), rho=0.05)``, sharpness-aware
minimization around any named optimizer (it receives the mini-batch gradient
function as the ``grad_fn`` extra argument of ``update``). Every optimizer is also
given ``value`` and ``hvp_fn``, so optimizers that need a Hessian-vector product
(Sophia, AdaHessian) run too; optimizers that do not use them ignore them.

The command line is in :mod:`optlab.bench.cli` (``python3 -m optlab.bench --help``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab.bench import common
from optlab.bench.common import SAM_RHO, UNSUPPORTED, check_names, tree_bytes  # noqa: F401

DEFAULT_OPTIMIZERS = ("sgd", "adamw", "lion", "adamp", "ademamix", "muon", "lamb", "sam-adamw")
DEFAULT_SEEDS = 3
DEFAULT_STEPS = 400
DEFAULT_BATCH_SIZE = 64
DEFAULT_OUT = "bench_out/digits_loss.png"
N_TRAIN = 1347  # the 75% training split of the 1,797 images
HIDDEN = (128, 128)

# Per-optimizer learning rates for this task: the best of a sweep over 1e-4 .. 1 with the
# defaults above, scored on a validation split of the training data (never the test
# split); benchmarks/digits_lr_sweep.py reproduces it, benchmarks/results/ has the tables.
# Names not listed use FALLBACK_LR.
LEARNING_RATES: dict[str, float] = {
    # the default set
    "sgd": 0.3,
    "adamw": 0.01,
    "lion": 3e-4,
    "adamp": 0.01,
    "ademamix": 0.01,
    "muon": 0.01,
    "lamb": 0.01,
    "sam-adamw": 0.01,
    # the other named optimizers (coarser grid: 1e-4, 1e-3, 3e-3 ... 1)
    "adafactor": 0.1,
    "adahessian": 0.3,
    "amsgrad": 0.03,
    "cautious_adamw": 3e-3,
    "cautious_lion": 1e-3,
    "diffgrad": 0.01,
    "grams": 0.03,
    "lars": 1.0,
    "mars_adamw": 0.01,
    "sgd_sai": 0.03,
    "sgdp": 0.1,
    "signum": 1e-3,
    "sinkgd": 1e-3,
    "sophia": 1e-3,
    # parameter-free: the learning rate multiplies the estimated step; 1 by design
    "dog": 1.0,
    "dowg": 1.0,
    "prodigy": 1.0,
    # the optimizers registered since (grid 1e-3, 1e-2, 0.1, 1; `*`: best at the grid's
    # edge, see benchmarks/results/digits_lr_sweep.md)
    "adam": 0.01,
    "adopt": 1e-3,  # *
    "yogi": 0.01,
    "adamomentum": 1e-3,  # *
    "qhadam": 1e-3,  # *
    "qhm": 1.0,  # *
    "ano": 0.01,
    "nag_gs": 1.0,  # *
    "lion_kappa": 3e-4,  # extra grid 1e-4, 3e-4
    "adago": 0.1,
    "adagrad_norm": 1.0,  # *
    "sps": 1.0,  # * (the step is Polyak's; the rate caps it)
    "alr_smag": 0.1,
    "schedule_free_adamw": 0.01,  # evaluated at its average x
    "schedule_free_sgd": 1.0,  # *
    "subset_norm_adam": 0.01,
    "galore": 0.01,
    "online_subspace_descent": 0.01,
    "frugal": 1e-3,  # *
    "badam": 0.01,
    "adam_mini": 1e-3,  # tie with 0.01 (0.9753 both)
    "scion": 1e-3,  # extra grid 1e-4, 3e-4: 1e-3 stays best
    "swan": 1e-3,  # extra grid 1e-4, 3e-4: 1e-3 stays best
    "m_fac": 0.01,
    "oasis": 1.0,  # * (0.54 at best: it does not train this MLP well at any rate)
}
FALLBACK_LR = 1e-3


# ---------------------------------------------------------------------------
# Data and model
# ---------------------------------------------------------------------------


def load_data(test_size: float = 0.25, split_seed: int = 0):
    """Digits as float32 features in [0, 1] and int32 labels: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=split_seed, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def make_mlp(seed: int, n_in: int = 64, n_out: int = 10, hidden: tuple[int, int] = HIDDEN):
    """A Flax NNX MLP (two hidden ReLU layers) initialized from ``seed``."""
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            h1, h2 = hidden
            self.linear1 = nnx.Linear(n_in, h1, rngs=rngs)
            self.linear2 = nnx.Linear(h1, h2, rngs=rngs)
            self.head = nnx.Linear(h2, n_out, rngs=rngs)

        def __call__(self, x):
            x = jax.nn.relu(self.linear1(x))
            x = jax.nn.relu(self.linear2(x))
            return self.head(x)

    return MLP(nnx.Rngs(seed))


# ---------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------


def learning_rate_for(name: str, overrides: dict[str, float] | None = None) -> float:
    """The learning rate used for ``name`` (``sam-x`` uses x's)."""
    return common.learning_rate_for(name, LEARNING_RATES, FALLBACK_LR, overrides)


def build_optimizer(name: str, learning_rate) -> optax.GradientTransformation:
    """``optlab.get(name, learning_rate=...)``, or SAM around it for ``sam-<name>``."""
    return common.build_optimizer(name, learning_rate)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One optimizer's outcome over all seeds."""

    name: str
    learning_rate: float
    accuracy: np.ndarray  # (seeds,) final test accuracy
    losses: np.ndarray  # (seeds, steps) training mini-batch loss per step
    steps_per_s: float  # vmapped steps (all seeds at once) per second, compile excluded
    compile_s: float
    state_ratio: float  # optimizer state bytes / parameter bytes (one model)

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.accuracy))

    @property
    def final_loss(self) -> float:
        """Mean over seeds of the mean training loss over the last 10% of the steps."""
        tail = max(1, self.losses.shape[1] // 10)
        return float(np.mean(self.losses[:, -tail:]))


def _chunk_length(steps: int, max_chunk: int = 50) -> int:
    """Largest divisor of ``steps`` that is <= max_chunk (one compiled chunk length)."""
    return max(d for d in range(1, min(steps, max_chunk) + 1) if steps % d == 0)


def train_one(
    name: str,
    data,
    seeds: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    progress: common.Progress | None = None,
    schedule: str = "constant",
) -> Result:
    """Train ``seeds`` models with optimizer ``name``; the steps of all seeds run vmapped."""
    from flax import nnx

    x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in data)
    n_train = x_tr.shape[0]
    tx = build_optimizer(name, common.make_schedule(schedule, learning_rate, steps))

    graphdef, _ = nnx.split(make_mlp(0))
    per_seed = [nnx.to_pure_dict(nnx.split(make_mlp(s))[1]) for s in range(seeds)]
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed)
    state_ratio = tree_bytes(jax.eval_shape(tx.init, per_seed[0])) / tree_bytes(per_seed[0])
    opt_state = jax.vmap(tx.init)(params)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(1234), s))(jnp.arange(seeds))

    def loss_fn(p, xb, yb):
        logits = nnx.merge(graphdef, p)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def one_step(p, s, key, t):
        idx = jax.random.randint(jax.random.fold_in(key, t), (batch_size,), 0, n_train)
        xb, yb = x_tr[idx], y_tr[idx]

        def batch_loss(q):
            return loss_fn(q, xb, yb)

        value, grads = jax.value_and_grad(batch_loss)(p)
        updates, s = tx.update(
            grads,
            s,
            p,
            value=value,
            grad_fn=jax.grad(batch_loss),
            hvp_fn=lambda q, v: jax.jvp(jax.grad(batch_loss), (q,), (v,))[1],
        )
        return optax.apply_updates(p, updates), s, value

    chunk = _chunk_length(steps)

    def run_chunk(p, s, keys, t0):
        def body(carry, t):
            p, s = carry
            p, s, v = jax.vmap(one_step, in_axes=(0, 0, 0, None))(p, s, keys, t)
            return (p, s), v

        (p, s), values = jax.lax.scan(body, (p, s), t0 + jnp.arange(chunk, dtype=jnp.int32))
        return p, s, values  # values: (chunk, seeds)

    t0 = jnp.zeros((), jnp.int32)
    start = time.perf_counter()
    lowered = jax.jit(run_chunk, donate_argnums=(0, 1)).lower(params, opt_state, keys, t0)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    losses = []
    run_s = 0.0
    for i in range(steps // chunk):
        start = time.perf_counter()
        params, opt_state, values = compiled(params, opt_state, keys, t0 + i * chunk)
        jax.block_until_ready(values)
        chunk_s = time.perf_counter() - start
        run_s += chunk_s
        losses.append(values)
        if progress is not None:
            progress.update(chunk, chunk_s)

    def test_accuracy(p, s):
        # schedule-free (and averaging wrappers): the averaged parameters are the model
        q, _ = common.evaluation_params(p, s)
        return jnp.mean(jnp.argmax(nnx.merge(graphdef, q)(x_te), -1) == y_te)

    accuracy = jax.jit(jax.vmap(test_accuracy))(params, opt_state)
    return Result(
        name=name,
        learning_rate=learning_rate,
        accuracy=np.asarray(accuracy),
        losses=np.asarray(jnp.concatenate(losses)).T,
        steps_per_s=steps / run_s,
        compile_s=compile_s,
        state_ratio=state_ratio,
    )


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def format_table(results: Sequence[Result], seeds: int, steps: int, batch_size: int) -> str:
    """The results as a markdown table with a one-line caption."""
    lines = [
        (
            f"Digits MLP, {steps} steps, batch {batch_size}, {seeds} seed(s); accuracy is on the"
            " held-out 25% (mean +- std over seeds); one step updates all seeds (vmapped),"
            " compile time excluded from steps/s."
        ),
        "",
        (
            "| optimizer | learning rate | test accuracy | final train loss | steps/s | compile s"
            " | state bytes / param byte |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.learning_rate:g} | {r.accuracy_mean:.4f} +- {r.accuracy_std:.4f}"
            f" | {r.final_loss:.4f} | {r.steps_per_s:.0f} | {r.compile_s:.2f}"
            f" | {r.state_ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot_losses(results: Sequence[Result], path: str | os.PathLike) -> None:
    """Training-loss curves as small multiples: one panel per optimizer.

    Each panel shows its optimizer's mean over seeds (debiased-EMA smoothing, so the
    first steps are not hidden), the raw mean faintly, the min-max band over seeds, and
    the other optimizers' smoothed means in grey; log scale, shared axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.0 * cols, 2.4 * rows + 0.5),
        dpi=110,
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    # tab10 without its grey (index 7), which marks the other optimizers here.
    colors = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    weight = 0.9
    smoothed = [common.debiased_ema(r.losses.mean(0), weight) for r in results]
    for k, (ax, r) in enumerate(zip(axes.flat, results)):
        x = np.arange(1, r.losses.shape[1] + 1)
        for j, other in enumerate(smoothed):
            if j != k:
                ax.plot(x[: other.size], other, color="0.75", lw=0.8)
        color = colors[k % len(colors)]
        if r.losses.shape[0] > 1:
            lo = common.debiased_ema(r.losses.min(0), weight)
            hi = common.debiased_ema(r.losses.max(0), weight)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        ax.plot(x, r.losses.mean(0), color=color, lw=0.5, alpha=0.35)
        ax.plot(x, smoothed[k], color=color, lw=1.6)
        ax.set_title(f"{r.name}  (acc {r.accuracy_mean:.3f})", fontsize=9)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("train loss")
    fig.suptitle(
        "optlab on digits: training loss (mean over seeds, band: min-max; grey: the others)",
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def check_settings(seeds: int, steps: int, batch_size: int) -> None:
    """Raise a ValueError for settings the job cannot run (checked before any training)."""
    for label, value in (("seeds", seeds), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{label}` must be an integer >= 1, got {value!r}")
    if batch_size > N_TRAIN:
        raise ValueError(
            f"`batch_size` must be <= {N_TRAIN} (the digits training split), got {batch_size}"
        )


def run(
    optimizers: Sequence[str] = DEFAULT_OPTIMIZERS,
    seeds: int = DEFAULT_SEEDS,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    out: str | os.PathLike = DEFAULT_OUT,
    learning_rates: dict[str, float] | None = None,
    progress: bool = True,
    schedule: str = "constant",
) -> tuple[list[Result], str]:
    """Run the benchmark, write the plot to ``out`` and the table to ``out`` with ``.md``.

    Returns:
      The per-optimizer results and the markdown table.
    """
    check_names(optimizers)
    check_settings(seeds, steps, batch_size)
    out = common.check_out_path(out)
    common.make_schedule(schedule, 1.0, steps)  # an unknown or missing schedule fails now
    data = load_data()
    bar = common.Progress(len(optimizers) * steps, "digits", enabled=progress)
    results = []
    try:
        for name in optimizers:
            bar.start(name)
            lr = learning_rate_for(name, learning_rates)
            results.append(
                train_one(name, data, seeds, steps, batch_size, lr, progress=bar, schedule=schedule)
            )
    finally:
        bar.close()
    table = format_table(results, seeds, steps, batch_size)
    plot_losses(results, out)
    out.with_suffix(".md").write_text(table)
    return results, table
