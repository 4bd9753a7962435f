"""The language-model task: a byte-level transformer on the Python standard library's source.

``python3 -m optlab.bench --task lm`` trains the transformer of :mod:`optlab.bench.model`
on the corpus of :mod:`optlab.bench.data` with each optimizer of :data:`LM_OPTIMIZERS`
(names this optlab does not have yet are skipped with a message), then prints a table
(validation loss and bits per byte at equal steps and at equal training time, steps/s,
compile time, state bytes per parameter byte) and writes it as markdown next to a plot
of the validation loss against steps and against training time.

Other benchmarks call :func:`train` (one optimizer, name or transform -> :class:`LMResult`)
or build on :class:`LMTask` (parameters, loss, batches, validation loss) directly.

Every optimizer gets the extra arguments ``value``, ``grad_fn`` (the mini-batch gradient
function: SAM) and ``hvp_fn`` (Hessian-vector products: Sophia, AdaHessian); those that
do not need them ignore them. Muon gets the transformer leaf selection of
:func:`make_optimizer` (hidden matrices orthogonalized, embeddings with AdamW).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optlab
from optlab.bench import common
from optlab.bench.data import Corpus, load_corpus
from optlab.bench.model import Config, Transformer


@dataclasses.dataclass(frozen=True)
class Size:
    """A model and its training settings."""

    model: Config
    batch_size: int
    steps: int  # default number of steps
    eval_every: int  # steps between validation evaluations
    eval_windows: int  # validation windows of `context` bytes (fixed, evenly spaced)
    warmup: int  # linear learning-rate warm-up steps


SIZES: dict[str, Size] = {
    # the test suite's: seconds on a CPU
    "tiny": Size(Config(d=32, layers=1, heads=2, context=32, hidden=64), 4, 20, 5, 8, 2),
    # the default: ~0.93M parameters, minutes on 2 CPU cores
    "small": Size(Config(d=192, layers=2, heads=6, context=128), 8, 100, 20, 64, 20),
    # for a GPU: ~19M parameters
    "base": Size(Config(d=512, layers=6, heads=8, context=256), 32, 3000, 250, 512, 300),
}
DEFAULT_SIZE = "small"
DEFAULT_OUT = "bench_out/lm_loss.png"

# The optimizers of `--task lm`, in table order. Names that this optlab's registry lacks
# are skipped with a message, so optimizers join by name as they land.
LM_OPTIMIZERS: tuple[str, ...] = (
    "adamw",
    "lion",
    "muon",
    "sophia",
    "sam-adamw",
    "adopt",
    "adam_mini",
    "galore",
    "schedule_free_adamw",
)

# Peak learning rates for size "small" (100 steps, constant after a linear warm-up of 20
# steps): the lowest final validation loss of the sweep in benchmarks/lm_lr_sweep.py (the
# job's settings with seed 1; the job reports seed 0), all results in
# benchmarks/results/lm_lr_sweep.md. SAM-AdamW uses AdamW's rate (not swept). Names not
# listed (optimizers that landed after the sweep) use FALLBACK_LR until swept.
LEARNING_RATES: dict[str, float] = {
    "adamw": 3e-3,  # swept 1e-3, 3e-3, 1e-2: 2.553, 2.537, 2.688
    "lion": 1e-3,  # swept 1e-4, 3e-4, 1e-3, 3e-3: 3.216, 2.831, 2.701, 2.803
    "muon": 0.03,  # swept 0.01, 0.03, 0.1: 2.372, 2.272, 2.392
    "sophia": 1e-3,  # swept 3e-4, 1e-3, 3e-3: 2.883, 2.872, 3.060
    "sam-adamw": 3e-3,  # AdamW's (not swept)
    # parameter-free: the learning rate is a multiplier of the estimated step, 1 by design
    "dog": 1.0,
    "dowg": 1.0,
    "prodigy": 1.0,
}
FALLBACK_LR = 1e-3
# Sweep grids (benchmarks/lm_lr_sweep.py); others use DEFAULT_GRID.
SWEEP_GRIDS: dict[str, tuple[float, ...]] = {
    "lion": (1e-4, 3e-4, 1e-3, 3e-3),
    "muon": (0.01, 0.03, 0.1),
    "sophia": (3e-4, 1e-3, 3e-3),
}
DEFAULT_GRID = (1e-3, 3e-3, 1e-2)


def learning_rate_for(name: str, overrides: dict[str, float] | None = None) -> float:
    """The learning rate for ``name`` (``sam-x`` falls back to x's)."""
    return common.learning_rate_for(name, LEARNING_RATES, FALLBACK_LR, overrides)


# ---------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------


def attention_dimension_numbers(params: Any) -> Any:
    """Muon's axes per leaf: the ``(d, heads, head_dim)`` query/key/value kernels reduce
    the model dimension and output ``heads * head_dim``; every other leaf (``out``:
    ``(heads, head_dim, d)``, MLP matrices) takes Muon's default, all axes but the last
    reduced."""
    qkv = optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=(1, 2))

    def dims(path, x):
        last = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
        return qkv if x.ndim == 3 and last in ("query", "key", "value") else None

    return jax.tree.map_with_path(dims, params)


def transformer_muon(learning_rate, adam_learning_rate) -> optax.GradientTransformation:
    """Muon on the transformer's hidden matrices only: ``optlab.muon`` with
    ``muon_mask=optlab.muon_hidden_mask`` (the tied embedding and the norm scales go to
    Muon's AdamW part, at ``adam_learning_rate``) and the per-head attention kernels seen
    as ``(d, heads * head_dim)`` / ``(heads * head_dim, d)`` matrices
    (:func:`attention_dimension_numbers`)."""
    return optlab.muon(
        learning_rate,
        adam_learning_rate=adam_learning_rate,
        muon_mask=optlab.muon_hidden_mask,
        muon_weight_dimension_numbers=attention_dimension_numbers,
    )


def make_optimizer(
    name: str,
    learning_rate: float,
    schedule: Callable[[float], Any] = lambda lr: lr,
    overrides: dict[str, float] | None = None,
) -> optax.GradientTransformation:
    """The optimizer ``name`` for the transformer, its peak rate shaped by ``schedule``.

    ``sam-<name>`` wraps ``<name>`` in ``optlab.sam``. ``muon`` (and ``sam-muon``) is
    :func:`transformer_muon`, its AdamW parts at AdamW's learning rate for this task.
    """

    def make(base: str, lr):
        if base == "muon":
            return transformer_muon(lr, schedule(learning_rate_for("adamw", overrides)))
        return optlab.get(base, learning_rate=lr)

    return common.build_optimizer(name, schedule(learning_rate), make)


# ---------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------


class LMTask:
    """The model, its loss, training batches and the validation loss, as pure functions.

    Attributes:
      size: the :class:`Size`.
      corpus: the :class:`optlab.bench.data.Corpus`.
      graphdef: the NNX graph definition (``nnx.merge(graphdef, params)`` is the model).
      valid_windows: the fixed validation windows, ``(eval_windows, context + 1)`` int32.
    """

    def __init__(self, size: str | Size = DEFAULT_SIZE, corpus: Corpus | None = None):
        from flax import nnx

        self.size = SIZES[size] if isinstance(size, str) else size
        self.corpus = corpus if corpus is not None else load_corpus()
        cfg = self.size.model
        self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
        self._train = jnp.asarray(self.corpus.train)
        valid = self.corpus.valid
        n, t = self.size.eval_windows, cfg.context + 1
        if valid.size < t + 1 or self._train.size < t + 1:
            raise ValueError(f"corpus too small for context {cfg.context}")
        starts = np.linspace(0, valid.size - t, n).astype(np.int64)
        self.valid_windows = jnp.asarray(np.stack([valid[s : s + t] for s in starts]), jnp.int32)

    def init_params(self, seed: int) -> dict:
        """The model's parameters (a nested dict of arrays) initialized from ``seed``."""
        from flax import nnx

        model = Transformer(self.size.model, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def n_params(self) -> int:
        return self.size.model.n_params()

    def loss(self, params: dict, tokens: jax.Array) -> jax.Array:
        """Mean next-byte cross-entropy (nats) of ``tokens`` (batch, context + 1)."""
        from flax import nnx

        logits = nnx.merge(self.graphdef, params)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), tokens[:, 1:]
        ).mean()

    @property
    def train_bytes(self) -> jax.Array:
        """The training split as a device array (pass it to :meth:`batch` under ``jit``)."""
        return self._train

    def batch(
        self, key: jax.Array, batch_size: int | None = None, data: jax.Array | None = None
    ) -> jax.Array:
        """``batch_size`` random training windows of ``context + 1`` bytes (int32).

        Under ``jit``, pass ``data=task.train_bytes`` as an argument of the jitted
        function rather than letting the corpus become a compile-time constant.
        """
        data = self._train if data is None else data
        b = batch_size or self.size.batch_size
        t = self.size.model.context + 1
        starts = jax.random.randint(key, (b,), 0, data.size - t)
        rows = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (t,)))(starts)
        return rows.astype(jnp.int32)

    def step_key(self, seed: int, step) -> jax.Array:
        """The batch key of ``step`` for ``seed`` (the same batches for every optimizer)."""
        return jax.random.fold_in(jax.random.key(seed + 10_000), step)

    def valid_loss(self, params: dict) -> jax.Array:
        """Mean cross-entropy (nats per byte) over the fixed validation windows."""
        return self.loss(params, self.valid_windows)


@dataclasses.dataclass
class LMResult:
    """One optimizer's LM run.

    ``eval_steps``, ``val_loss``, ``train_s`` and ``cpu_s`` are aligned: the validation
    loss after ``eval_steps[i]`` steps (``0``: at initialization), after ``train_s[i]``
    seconds of training (wall clock, compilation and evaluation excluded) and ``cpu_s[i]``
    seconds of this process's CPU time (all threads).
    """

    name: str
    learning_rate: float
    eval_steps: np.ndarray
    val_loss: np.ndarray
    train_s: np.ndarray
    cpu_s: np.ndarray
    train_loss: np.ndarray  # (steps,) mini-batch loss per step
    steps_per_s: float  # compilation excluded
    compile_s: float
    state_ratio: float  # optimizer state bytes / parameter bytes
    n_params: int
    size: str
    seed: int
    schedule: str
    python: str
    corpus_sha256: str
    # "params" or "averaged": the validation loss of the optimizer's averaged parameters
    # (schedule-free's x: optlab.averaged_params), not of its training point
    evaluated_at: str = "params"

    @property
    def final_val_loss(self) -> float:
        return float(self.val_loss[-1])

    @property
    def final_bits_per_byte(self) -> float:
        return self.final_val_loss / math.log(2)

    def val_loss_at_time(self, seconds: float) -> float:
        """Validation loss after ``seconds`` of training, interpolated between evaluations."""
        if seconds > self.train_s[-1] * (1 + 1e-9):
            return float("nan")
        return float(np.interp(seconds, self.train_s, self.val_loss))

    def as_dict(self) -> dict:
        """Plain Python values (JSON-ready)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, np.ndarray):
                out[k] = v.tolist()
        out["final_val_loss"] = self.final_val_loss
        out["final_bits_per_byte"] = self.final_bits_per_byte
        return out


def _divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def train(
    optimizer: str | optax.GradientTransformation,
    steps: int | None = None,
    size: str | Size = DEFAULT_SIZE,
    seed: int = 0,
    *,
    learning_rate: float | None = None,
    schedule: str = "constant",
    warmup: int | None = None,
    eval_every: int | None = None,
    task: LMTask | None = None,
    name: str | None = None,
    progress: common.Progress | None = None,
) -> LMResult:
    """Train the transformer of ``size`` with ``optimizer`` for ``steps`` steps.

    Args:
      optimizer: a name (:func:`optlab.available` or ``sam-<name>``; built by
        :func:`make_optimizer` at ``learning_rate``, default :func:`learning_rate_for`,
        shaped by ``schedule``), or a ready ``optax.GradientTransformation`` (then
        ``learning_rate``, ``schedule`` and ``warmup`` are only recorded/unused).
      steps: training steps (default: the size's).
      size: ``"tiny"``, ``"small"`` (default) or ``"base"``, or a :class:`Size`.
      seed: initialization and batch order (the same batches for every optimizer).
      learning_rate: peak learning rate for a named optimizer.
      schedule: one of :data:`optlab.bench.common.SCHEDULES`.
      warmup: linear warm-up steps (default: the size's).
      eval_every: steps between validation evaluations (rounded down to a divisor
        of ``steps``; default: the size's).
      task: a prepared :class:`LMTask` (saves reading the corpus again).
      name: the label in tables (default: the optimizer's name, or ``"custom"``).
      progress: a :class:`optlab.bench.common.Progress` to update.

    Returns:
      An :class:`LMResult`.
    """
    task = task or LMTask(size)
    sz = task.size
    size_name = size if isinstance(size, str) else "custom"
    steps = sz.steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    warmup = min(sz.warmup if warmup is None else warmup, steps - 1)
    chunk = _divisor_at_most(steps, eval_every or sz.eval_every)
    if isinstance(optimizer, str):
        label = name or optimizer
        lr = learning_rate if learning_rate is not None else learning_rate_for(optimizer)
        tx = make_optimizer(
            optimizer, lr, lambda peak: common.make_schedule(schedule, peak, steps, warmup)
        )
    else:
        label, lr, tx = name or "custom", learning_rate or float("nan"), optimizer

    params = task.init_params(seed)
    param_bytes = common.tree_bytes(params)
    opt_state = tx.init(params)
    state_ratio = common.tree_bytes(opt_state) / param_bytes

    def one_step(carry, t, data):
        p, s = carry
        tokens = task.batch(task.step_key(seed, t), data=data)

        def batch_loss(q):
            return task.loss(q, tokens)

        value, grads = jax.value_and_grad(batch_loss)(p)
        updates, s = tx.update(
            grads,
            s,
            p,
            value=value,
            grad_fn=jax.grad(batch_loss),
            hvp_fn=lambda q, v: jax.jvp(jax.grad(batch_loss), (q,), (v,))[1],
        )
        return (optax.apply_updates(p, updates), s), value

    def run_chunk(p, s, t0, data):
        (p, s), values = jax.lax.scan(
            lambda c, t: one_step(c, t, data), (p, s), t0 + jnp.arange(chunk, dtype=jnp.int32)
        )
        return p, s, values

    t0 = jnp.zeros((), jnp.int32)
    data = task.train_bytes
    start = time.perf_counter()
    compiled = (
        jax.jit(run_chunk, donate_argnums=(0, 1)).lower(params, opt_state, t0, data).compile()
    )
    _, averaged = common.evaluation_params(params, opt_state)
    evaluate = (
        jax.jit(lambda p, s: task.valid_loss(common.evaluation_params(p, s)[0]))
        .lower(params, opt_state)
        .compile()
    )
    compile_s = time.perf_counter() - start
    if progress is not None:
        progress.resume()

    eval_steps, val_loss = [0], [float(evaluate(params, opt_state))]
    train_s, cpu_s = [0.0], [0.0]
    losses = []
    wall = cpu = 0.0
    for i in range(steps // chunk):
        w0, c0 = time.perf_counter(), time.process_time()
        params, opt_state, values = compiled(params, opt_state, t0 + i * chunk, data)
        jax.block_until_ready(values)
        dw, dc = time.perf_counter() - w0, time.process_time() - c0
        wall, cpu = wall + dw, cpu + dc
        losses.append(np.asarray(values))
        eval_steps.append((i + 1) * chunk)
        val_loss.append(float(evaluate(params, opt_state)))
        train_s.append(wall)
        cpu_s.append(cpu)
        if progress is not None:
            progress.update(chunk, dw)

    return LMResult(
        name=label,
        learning_rate=lr,
        eval_steps=np.asarray(eval_steps),
        val_loss=np.asarray(val_loss),
        train_s=np.asarray(train_s),
        cpu_s=np.asarray(cpu_s),
        train_loss=np.concatenate(losses),
        steps_per_s=steps / wall,
        compile_s=compile_s,
        state_ratio=state_ratio,
        n_params=task.n_params(),
        size=size_name,
        seed=seed,
        schedule=schedule,
        python=task.corpus.python,
        corpus_sha256=task.corpus.sha256,
        evaluated_at="averaged" if averaged else "params",
    )


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def equal_time(results: Sequence[LMResult]) -> float:
    """The training time every run reached: the shortest run's."""
    return float(min(r.train_s[-1] for r in results))


def format_table(results: Sequence[LMResult], task: LMTask) -> str:
    """The results as markdown: a caption and one row per optimizer."""
    r0 = results[0]
    steps = int(r0.eval_steps[-1])
    t_eq = equal_time(results)
    cfg, sz = task.size.model, task.size
    lines = [
        (
            f"Byte-level transformer (size {r0.size}: d={cfg.d}, {cfg.layers} layers,"
            f" {cfg.heads} heads, context {cfg.context}, {r0.n_params / 1e6:.2f}M parameters),"
            f" batch {sz.batch_size},"
            f" {steps} steps, schedule {r0.schedule} (warm-up {min(sz.warmup, steps - 1)}), seed"
            f" {r0.seed}. {task.corpus.describe()}. Validation loss in nats per byte (bpb: bits per"
            f" byte) on {sz.eval_windows} fixed validation windows, at {steps} steps and after"
            f" {t_eq:.1f} s of training (the shortest run; wall clock, compilation and evaluation"
            " excluded, interpolated between evaluations). steps/s excludes compilation."
        ),
        "",
        (
            f"| optimizer | learning rate | val loss @{steps} steps | bpb @{steps} steps"
            f" | val loss @{t_eq:.1f} s | bpb @{t_eq:.1f} s | steps/s | compile s"
            " | state bytes / param byte |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        at_t = r.val_loss_at_time(t_eq)
        label = f"{r.name} (averaged)" if r.evaluated_at == "averaged" else r.name
        lines.append(
            f"| {label} | {r.learning_rate:g} | {r.final_val_loss:.4f}"
            f" | {r.final_bits_per_byte:.4f} | {at_t:.4f} | {at_t / math.log(2):.4f}"
            f" | {r.steps_per_s:.2f} | {r.compile_s:.1f} | {r.state_ratio:.2f} |"
        )
    if any(r.evaluated_at == "averaged" for r in results):
        lines += [
            "",
            "(averaged): evaluated at the optimizer's averaged parameters"
            " (`optlab.averaged_params(state)`, e.g. schedule-free's x), not at its training"
            " point.",
        ]
    return "\n".join(lines) + "\n"


def plot(results: Sequence[LMResult], path: str | os.PathLike) -> None:
    """Validation loss against steps (left) and against training time (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110, sharey=True)
    for r in results:
        kw = {
            "marker": "o",
            "ms": 2.5,
            "lw": 1.5,
            "label": f"{r.name} ({r.final_bits_per_byte:.3f} bpb)",
        }
        ax1.plot(r.eval_steps, r.val_loss, **kw)
        ax2.plot(r.train_s, r.val_loss, **kw)
    ax1.set_xlabel("step")
    ax2.set_xlabel("training time, s (compilation and evaluation excluded)")
    ax1.set_ylabel("validation loss (nats / byte)")
    lo = min(float(np.min(r.val_loss)) for r in results)
    hi = max(float(np.median(r.val_loss)) for r in results)
    if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
        ax1.set_ylim(lo - 0.05 * (hi - lo), hi + 0.6 * (hi - lo))
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    r0 = results[0]
    fig.suptitle(
        f"optlab: byte-level transformer on the Python {r0.python} standard library"
        f" ({r0.n_params / 1e6:.2f}M params, size {r0.size}, seed {r0.seed})",
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(
    optimizers: Sequence[str] | None = None,
    size: str = DEFAULT_SIZE,
    steps: int | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    learning_rates: dict[str, float] | None = None,
    schedule: str = "constant",
    seed: int = 0,
    progress: bool = True,
    corpus_dir: str | os.PathLike | None = None,
) -> tuple[list[LMResult], str]:
    """Train every optimizer, write the plot to ``out`` and the table next to it (``.md``).

    ``optimizers`` defaults to :data:`LM_OPTIMIZERS`; names this optlab does not have
    are skipped with a message (unknown names given explicitly are an error).

    Returns:
      The results and the markdown table.
    """
    explicit = optimizers is not None
    names = list(LM_OPTIMIZERS if optimizers is None else optimizers)
    if explicit:
        common.check_names(names)
    present, missing = common.split_available(names)
    if missing:
        print(f"lm: skipping {', '.join(missing)} (not in this optlab's registry yet)")
    if not present:
        raise ValueError("no optimizer to run")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    steps = SIZES[size].steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    out = common.check_out_path(out)
    common.make_schedule(schedule, 1.0, steps, 1)  # an unknown or missing schedule fails now
    task = LMTask(size, load_corpus(corpus_dir) if corpus_dir is not None else None)
    bar = common.Progress(len(present) * steps, f"lm/{size}", enabled=progress)
    bar.write(task.corpus.describe())
    results = []
    try:
        for name in present:
            bar.start(name)
            lr = learning_rate_for(name, learning_rates)
            results.append(
                train(
                    name, steps, size, seed, learning_rate=lr, schedule=schedule, task=task,
                    progress=bar,
                )
            )  # fmt: skip
    finally:
        bar.close()
    table = format_table(results, task)
    plot(results, out)
    out.with_suffix(".md").write_text(table)
    return results, table


def sweep(
    names: Sequence[str],
    grids: dict[str, Sequence[float]] | None = None,
    size: str = DEFAULT_SIZE,
    steps: int | None = None,
    seed: int = 1,
    task: LMTask | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[float, float]]:
    """Final validation loss for each name and learning rate of its grid (nan: diverged)."""
    task = task or LMTask(size)
    grids = grids or {}
    out: dict[str, dict[float, float]] = {}
    for name in names:
        grid = grids.get(name) or SWEEP_GRIDS.get(common.base_name(name)) or DEFAULT_GRID
        out[name] = {}
        for lr in grid:
            r = train(name, steps, size, seed, learning_rate=lr, task=task)
            loss = r.final_val_loss if np.isfinite(r.val_loss).all() else float("nan")
            out[name][lr] = loss
            log(f"{name:<20} lr={lr:<8g} val loss {loss:.4f}  ({r.steps_per_s:.2f} steps/s)")
    return out
