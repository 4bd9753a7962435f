"""Every registered Case on 8 devices: shardings kept, results equal to one device.

The check runs in a subprocess (``tests/_sharding_worker.py``) because the number of
simulated CPU devices (``--xla_force_host_platform_device_count=8``) is fixed when jax
starts, and this process already has one. One subprocess checks the whole registry
(``helpers.all_cases()``, so cases added later are covered with no new code) and writes
a JSON summary; the test asserts on it and prints every failure by case, grouped by mode.

What is checked (details in the worker's docstring), on a 4 x 2 mesh:

* default (auto) sharding mode: eager ``tx.init`` gives every parameter-shaped state
  leaf the parameter's sharding, and 3 jitted updates equal the single-device run to
  1e-5 (2e-2 where the case keeps bfloat16 state);
* explicit sharding mode (``jax.sharding.AxisType.Explicit``): ``jax.jit(tx.init)``
  gives the parameters' shardings, and the update traces with no sharding error and
  keeps them in the updates and the new state.

``jax.jit(tx.init)`` is checked in explicit mode only: in the default mode jit drops
inputs that the computation does not read, so an init that uses only the parameters'
shapes (``optax.adam``'s included) runs on one device. There, eager ``tx.init``, or
``jax.jit(tx.init, out_shardings=...)``, is the way to get sharded state.

Per-example / stacked cases shard the parameter axes of their gradients and
replicate the leading batch/objective axis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import all_cases

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_sharding_worker.py")
TIMEOUT_S = 1500

pytestmark = pytest.mark.slow


def _run_worker(out_path: str, *patterns: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, WORKER, out_path, *patterns],
        cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0 and os.path.exists(out_path), (
        f"sharding worker failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-6000:]}"
    )
    with open(out_path) as f:
        return json.load(f)


def _format(failures: dict, properties) -> str:
    lines = []
    for case_id, items in sorted(failures.items()):
        for item in items:
            if any(item["property"].startswith(p) for p in properties):
                detail = item["detail"].strip().replace("\n", "\n      ")
                lines.append(f"  {case_id}: {item['property']}\n      {detail}")
    return "\n".join(lines)


DEFAULT_MODE = ["init_sharding[auto]", "numerics", "error"]
EXPLICIT_MODE = ["init_sharding[explicit]", "explicit_mode", "update_sharding[explicit]",
                 "step_sharding[explicit]"]


def test_every_registered_case_on_8_devices(tmp_path):
    """One test (one subprocess) for the registry, so that pytest-xdist runs it once."""
    report = _run_worker(str(tmp_path / "report.json"))
    assert report["n_devices"] == 8
    assert report["checked"] == [c.test_id for c in all_cases()]
    # The sharding comparison is not vacuous: Adam's two moments per parameter were checked.
    assert report["matched_state_leaves"]["skip_nonfinite"] == 6

    known = DEFAULT_MODE + EXPLICIT_MODE
    unknown = {f["property"] for items in report["failures"].values() for f in items
               if not any(f["property"].startswith(k) for k in known)}
    assert not unknown, f"unclassified failures: {unknown}: {report['failures']}"

    sections = []
    default = _format(report["failures"], DEFAULT_MODE)
    if default:
        sections.append("default (auto) sharding mode: eager init shardings, numerics vs one"
                        " device:\n" + default)
    explicit = _format(report["failures"], EXPLICIT_MODE)
    if explicit:
        sections.append(
            "explicit sharding mode (jax.sharding.AxisType.Explicit): jax.jit(tx.init) shardings,"
            " the update traces and keeps them. Fixes: give the op an `out_sharding=`, or"
            " `jax.sharding.reshard` before a reshape / contraction over a sharded axis:\n"
            + explicit
        )
    assert not sections, "cases failing on 8 devices\n" + "\n".join(sections)


def test_worker_detects_a_broken_transform(tmp_path):
    """The harness itself: a transform that ignores sharding in its state is caught."""
    out = tmp_path / "report.json"
    report = _run_worker(str(out), "_selftest")
    assert report["checked"] == ["_selftest_replicated_state", "_selftest_wrong_numerics"]
    props = {k: {f["property"] for f in v} for k, v in report["failures"].items()}
    assert "init_sharding[auto]" in props["_selftest_replicated_state"]
    assert "init_sharding[explicit]" in props["_selftest_replicated_state"]
    assert "numerics" in props["_selftest_wrong_numerics"]
