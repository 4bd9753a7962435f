"""The main job (``python3 -m optlab.bench``) with tiny settings: table, plot, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from optlab import bench

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


def test_learning_rate_lookup():
    assert bench._parse_lrs("adamw=1e-3, sgd=0.1") == {"adamw": 1e-3, "sgd": 0.1}
    assert bench.learning_rate_for("sam-adamw", {"adamw": 0.5}) == 0.5
    assert bench.learning_rate_for("sam-adamw", {"sam-adamw": 0.25, "adamw": 0.5}) == 0.25
    assert bench.learning_rate_for("no-such-name") == bench.FALLBACK_LR


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
