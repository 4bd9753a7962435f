"""The main job (``python3 -m optlab.bench``) with tiny settings: table, plot, CLI, LM task."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab import bench
from optlab.bench import common, data, lm, model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(table: str, name: str) -> list[str]:
    rows = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, table
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


@pytest.mark.slow
def test_run_writes_table_and_png(tmp_path):
    out = tmp_path / "plots" / "digits.png"
    results, table = bench.run(
        ["adamw", "sam-sgd"], seeds=2, steps=20, batch_size=16, out=out, progress=False
    )
    assert [r.name for r in results] == ["adamw", "sam-sgd"]
    for r in results:
        assert r.accuracy.shape == (2,)
        assert np.all((r.accuracy >= 0) & (r.accuracy <= 1))
        assert r.losses.shape == (2, 20)
        assert np.isfinite(r.losses).all()
        assert r.steps_per_s > 0 and r.compile_s > 0
        # 20 steps from a random init already lower the training loss.
        assert r.losses[:, -5:].mean() < r.losses[:, :5].mean()
    # AdamW keeps two moments: 2 state bytes per parameter byte (+ a step counter).
    assert results[0].state_ratio == pytest.approx(2.0, abs=0.01)
    # Plain SGD keeps no param-sized state; SAM adds none either.
    assert results[1].state_ratio < 0.01

    for r in results:
        cells = _row(table, r.name)
        assert cells[1] == f"{r.learning_rate:g}"
        mean, std = (float(x) for x in cells[2].split("+-"))
        assert mean == pytest.approx(r.accuracy_mean, abs=1e-4)
        assert std == pytest.approx(r.accuracy_std, abs=1e-4)
        assert float(cells[-1]) == pytest.approx(r.state_ratio, abs=0.01)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.with_suffix(".md").read_text() == table


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli.png"
    argv = ["--optimizers", "sgd", "--seeds", "1", "--steps", "10", "--batch-size", "8"]
    argv += ["--lr", "sgd=0.05", "--out", str(out), "--no-progress"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert _row(printed, "sgd")[1] == "0.05"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_unknown_optimizer_is_rejected(capsys):
    with pytest.raises(ValueError, match="nope"):
        bench.check_names(["adamw", "nope"])
    with pytest.raises(SystemExit):
        bench.main(["--optimizers", "nope", "--no-progress"])
    assert "nope" in capsys.readouterr().err


def test_defaults_are_registered_and_have_learning_rates():
    bench.check_names(bench.DEFAULT_OPTIMIZERS)
    for name in bench.DEFAULT_OPTIMIZERS:
        base = name.removeprefix("sam-")
        assert base in bench.LEARNING_RATES or name in bench.LEARNING_RATES, name


def test_every_registered_optimizer_has_a_learning_rate():
    # issue 15: no registered optimizer silently runs the main job at FALLBACK_LR
    names = common.registered_names() - set(common.UNSUPPORTED)
    missing = sorted(n for n in names if n not in bench.LEARNING_RATES)
    assert not missing, missing
    for name in ("dog", "dowg", "prodigy"):  # parameter-free: the rate is a multiplier
        assert bench.LEARNING_RATES[name] == 1.0 and lm.LEARNING_RATES[name] == 1.0


def test_schedule_free_is_evaluated_at_its_average():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    tx = optlab.schedule_free_adamw(0.1)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(params, state, params)  # gradient of |w|^2 / 2
        params = optax.apply_updates(params, updates)
    evaluated, averaged = common.evaluation_params(params, state)
    assert averaged
    np.testing.assert_array_equal(evaluated["w"], optlab.averaged_params(state)["w"])
    assert not np.allclose(evaluated["w"], params["w"])  # x, not the training point y
    plain = optlab.adamw(0.1)
    assert common.evaluation_params(params, plain.init(params)) == (params, False)
    # ... and the LM job reports the averaged parameters' loss for schedule-free.
    task = lm.LMTask("tiny")
    r = lm.train("schedule_free_adamw", steps=10, size="tiny", eval_every=10, task=task, name="sf")
    assert r.evaluated_at == "averaged"
    assert r.val_loss[-1] < r.val_loss[0]
    assert "| sf (averaged) |" in lm.format_table([r], task)


def test_learning_rate_lookup():
    assert bench.parse_learning_rates("adamw=1e-3, SGD=0.1") == {"adamw": 1e-3, "sgd": 0.1}
    assert bench.learning_rate_for("sam-adamw", {"adamw": 0.5}) == 0.5
    assert bench.learning_rate_for("sam-adamw", {"sam-adamw": 0.25, "adamw": 0.5}) == 0.25
    assert bench.learning_rate_for("no-such-name") == bench.FALLBACK_LR


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
        (["--seeds", "-1"], "--seeds: expected an integer >= 1, got -1"),
        (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        (["--batch-size", "100000"], "must be <= 1347"),
        (["--lr", "adamw=abc"], "'abc' is not a number (in 'adamw=abc')"),
        (["--lr", "foo=0.1"], "--lr names foo, not among the optimizers"),
        (["--out", "x.txt"], "the plot must be one of .png, .pdf, .svg"),
        (["--size", "tiny"], "--size applies to --task lm only"),
        (["--task", "lm", "--seeds", "2"], "--seeds applies to --task digits only"),
        (["--optimizers", "nope"], "unknown optimizer(s) ['nope']"),
        (["--schedule", "wsd", "--optimizers", "adamw"], "--schedule wsd"),
    ],
)
def test_cli_usage_errors_exit_2_before_training(argv, message, capsys):
    if argv[:2] == ["--schedule", "wsd"] and any(
        hasattr(optlab, n) for n in common._OPTLAB_SCHEDULES["wsd"]
    ):
        pytest.skip("optlab has a wsd schedule now: the flag works")
    with pytest.raises(SystemExit) as e:
        bench.main([*argv, "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and "_parse" not in err


def test_cli_names_are_case_insensitive():
    names = bench.cli.build_parser().parse_args(["--optimizers", "ADAMW,Sam-AdamW"]).optimizers
    assert names == ["adamw", "sam-adamw"]
    bench.check_names(names)


def test_schedules():
    assert common.make_schedule("constant", 0.1, 100) == 0.1
    warm = common.make_schedule("constant", 0.1, 100, warmup=10)
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(0.1)
    cos = common.make_schedule("cosine", 0.1, 100, warmup=10)
    assert float(cos(10)) == pytest.approx(0.1) and float(cos(100)) == pytest.approx(0.0)


def test_progress_rate_excludes_compilation():
    p = common.Progress(10, "x", enabled=False)
    p.start("adamw")
    p.update(5, 0.5)
    p.update(5, 0.5)
    assert p.steps / p.train_s == pytest.approx(10.0)


def test_plot_is_small_multiples_with_unsmoothed_start():
    y = np.array([5.0, 1.0, 1.0, 1.0])
    s = common.debiased_ema(y, 0.9)
    assert s[0] == 5.0 and s[-1] < s[0]


# ---------------------------------------------------------------------------
# The language-model task (--task lm)
# ---------------------------------------------------------------------------


def test_corpus_loader_on_a_temporary_directory(tmp_path):
    files = [f"m{i}.py" for i in range(7)] + ["pkg/sub.py"]
    (tmp_path / "pkg").mkdir()
    for i, f in enumerate(files):
        (tmp_path / f).write_bytes(f"# file {i}\n".encode() * (i + 1))
    c = data.load_corpus(tmp_path, files, valid_every=3, valid_offset=1)
    order = sorted(files)
    assert c.valid_files == tuple(order[1::3]) and c.train_files == tuple(
        f for f in order if f not in order[1::3]
    )
    assert bytes(c.valid) == b"\n".join((tmp_path / f).read_bytes() for f in c.valid_files)
    assert bytes(c.train) == b"\n".join((tmp_path / f).read_bytes() for f in c.train_files)
    assert c.train.dtype == np.uint8 and c.root == str(tmp_path)
    same = data.load_corpus(tmp_path, list(reversed(files)), valid_every=3, valid_offset=1)
    assert same.sha256 == c.sha256 and len(c.sha256) == 64  # order of `files` is irrelevant
    (tmp_path / "m3.py").write_bytes(b"changed")
    assert data.load_corpus(tmp_path, files, valid_every=3, valid_offset=1).sha256 != c.sha256
    with pytest.raises(FileNotFoundError, match=r"2 of 10 files are missing.*gone\.py, m9\.py"):
        data.load_corpus(tmp_path, [*files, "m9.py", "gone.py"])
    with pytest.raises(ValueError, match="at least two files"):
        data.load_corpus(tmp_path, ["m0.py"])


def test_stdlib_corpus_is_present_and_split_by_file():
    c = data.load_corpus()
    assert len(data.STDLIB_MODULES) == len(set(data.STDLIB_MODULES)) == 110
    assert list(data.STDLIB_MODULES) == sorted(data.STDLIB_MODULES)
    assert 2e6 < c.train.size < 5e6 and 1e5 < c.valid.size
    assert not set(c.train_files) & set(c.valid_files)
    assert c.python in c.describe() and c.sha256[:12] in c.describe()


def test_model_parameter_names_and_muon_leaf_selection():
    task = lm.LMTask("tiny")
    params = task.init_params(0)
    cfg = task.size.model
    blk = params["blocks"][0]
    assert params["embed"]["embedding"].shape == (256, cfg.d)
    assert blk["attn"]["query"].shape == (cfg.d, cfg.heads, cfg.head_dim)
    assert blk["attn"]["out"].shape == (cfg.heads, cfg.head_dim, cfg.d)
    assert blk["mlp"]["up"].shape == (cfg.d, cfg.mlp_hidden)
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.n_params()
    kinds = jax.tree.leaves(jax.tree.map_with_path(lambda p, _: model.param_kind(p), params))
    assert set(kinds) == {"embedding", "attention", "mlp", "norm"}

    tx = lm.transformer_muon(0.1, 1e-3)
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape), params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)  # one compile, not per op
    # Hidden matrices (attention kernels seen as (d, heads * head_dim)) are orthogonalized:
    # their singular values are close to each other (Newton-Schulz maps them near 1).
    for u in (updates["blocks"][0]["attn"]["query"], updates["blocks"][0]["mlp"]["up"]):
        sv = jnp.linalg.svd(u.reshape(u.shape[0], -1), compute_uv=False)
        assert float(sv.min() / sv.max()) > 0.3
    # The tied embedding gets Muon's AdamW part (Nesterov, like Muon's momentum), not Muon.
    adamw = optlab.adamw(1e-3, weight_decay=0.0, nesterov=True)
    emb = {"e": params["embed"]["embedding"]}
    ref, _ = adamw.update({"e": grads["embed"]["embedding"]}, adamw.init(emb), emb)
    np.testing.assert_allclose(updates["embed"]["embedding"], ref["e"], rtol=1e-5)


def test_lm_tiny_run_writes_table_and_plot_and_learns(tmp_path):
    out = tmp_path / "lm.png"
    results, table = lm.run(["adamw", "muon"], size="tiny", steps=20, out=out, progress=False)
    c = data.load_corpus()
    assert [r.name for r in results] == ["adamw", "muon"]
    for r in results:
        assert r.eval_steps.tolist() == [0, 5, 10, 15, 20]
        assert np.isfinite(r.val_loss).all() and np.isfinite(r.train_loss).all()
        assert r.val_loss[-1] < r.val_loss[0] - 0.3  # 20 steps already learn byte statistics
        assert r.final_bits_per_byte == pytest.approx(r.final_val_loss / math.log(2))
        assert r.steps_per_s > 0 and r.compile_s > 0 and r.train_s[-1] > 0
        assert r.python == c.python and r.corpus_sha256 == c.sha256
        cells = _row(table, r.name)
        assert float(cells[2]) == pytest.approx(r.final_val_loss, abs=1e-4)
        assert float(cells[3]) == pytest.approx(r.final_bits_per_byte, abs=1e-4)
    assert results[0].state_ratio == pytest.approx(2.0, abs=0.01)  # AdamW: two moments
    assert 1.0 < results[1].state_ratio < 2.0  # Muon: one momentum on the matrices
    assert c.sha256[:12] in table and f"Python {c.python}" in table
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.with_suffix(".md").read_text() == table


# ---------------------------------------------------------------------------
# benchmarks/step_time.py: a smoke run (no timing assertions) and its helpers
# ---------------------------------------------------------------------------


def _step_time_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "step_time.py"
    spec = importlib.util.spec_from_file_location("step_time", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_step_time_smoke(tmp_path):
    st = _step_time_module()
    argv = ["--sizes", "2e4", "--leaves", "6", "--optimizers", "adamw,sgd,sam-adamw"]
    argv += ["--repeats", "1", "--target-ms", "1", "--compile-leaves", "4", "--flatten"]
    argv += ["--out", str(tmp_path)]
    assert st.main(argv) == 0
    for name in ("step_time.md", "compile_time.md", "flatten.md", "step_time.json"):
        assert (tmp_path / name).read_text()
    assert (tmp_path / "step_time.png").read_bytes()[:8] == PNG_MAGIC
    import json

    rows = json.loads((tmp_path / "step_time.json").read_text())["step_time"]
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"adamw", "sgd", "sam-adamw"}
    assert all("error" not in r for r in rows), rows
    assert by_name["adamw"]["k"] == 2 and by_name["sgd"]["k"] == 0
    assert by_name["adamw"]["vs_optax"] > 0 and by_name["sam-adamw"]["vs_optax"] is None
    flat = {r["name"]: r for r in json.loads((tmp_path / "step_time.json").read_text())["flatten"]}
    assert flat["adamw"]["same_result"] is True  # elementwise: flattening changes nothing
    assert "error" in flat["sam-adamw"]  # grad_fn is tree-shaped: optax.flatten cannot pass it


def test_step_time_trees_and_floor():
    import jax
    import jax.numpy as jnp

    st = _step_time_module()
    params = st.make_params(1e5, 50)
    assert len(jax.tree.leaves(params)) == 50
    assert abs(st.n_elements(params) - 1e5) / 1e5 < 0.1
    # The floor kernel reads params, grads and K buffers and writes params and K buffers.
    grads = jax.tree.map(jnp.ones_like, params)
    bufs = (jax.tree.map(jnp.zeros_like, params),) * 2
    step = st.make_floor_step(2)
    new_params, new_bufs = step(st.copy_tree(params), tuple(map(st.copy_tree, bufs)), grads)
    assert len(new_bufs) == 2
    leaf = jax.tree.leaves(new_params)[0]
    np.testing.assert_allclose(leaf, jax.tree.leaves(params)[0] - 1e-3 * 1.2, rtol=1e-6)
    assert st.flatten_preserves_result("lamb") is False  # per-leaf trust ratio


# ---------------------------------------------------------------------------
# benchmarks/memory.py: one worker subprocess, memory only (no timing assertions)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_benchmark_smoke(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("memory_bench", path)
    mem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mem)
    argv = ["--sizes", "1e6", "--optimizers", "adam_mini", "--repeats", "0"]
    assert mem.main([*argv, "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "memory.json").read_text())
    assert row["optimizer"] == "adam_mini" and row["n_params"] == 1_050_368
    # Adam-mini: a full first moment plus one second-moment value per leaf (+ a counter)
    assert row["state_ratio"] == pytest.approx(1.0, abs=1e-3)
    params_and_grads = 2 * 4 * row["n_params"] / 2**20
    assert row["xla_argument_mib"] == pytest.approx(params_and_grads * 1.5, rel=1e-3)
    assert "| 1e6 (1.1M) | adam_mini | 1.000 |" in (tmp_path / "memory.md").read_text()
