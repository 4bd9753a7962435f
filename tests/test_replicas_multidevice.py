"""Outer optimizers on several devices and on two processes.

* ``tests/_replicas_worker.py`` on 8 simulated CPU devices (a subprocess: the device
  count is fixed when jax starts): ``shard_map`` over a "replica" axis, a 2-D
  ("replica", "data") mesh with each replica's parameters sharded over "data", ``pmap``,
  NoLoCo and gossip, each compared with the ``vmap`` run, plus the lowered-HLO check
  that every collective on the replica axis sits inside a branch of the sync
  conditional.
* ``tests/_replicas_multihost_worker.py`` twice: two processes joined by
  ``jax.distributed.initialize`` on 127.0.0.1 (gloo CPU collectives), one replica each,
  a few DiLoCo rounds; anchors bit-identical across processes after every sync and equal
  to the single-process ``vmap`` run.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytestmark = pytest.mark.slow

import optlab

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 600


def _env(devices: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("replicas") / "checks.json"
    proc = subprocess.run(
        [sys.executable, str(HERE / "_replicas_worker.py"), str(out)],
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0 and out.exists(), (
        f"worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    )
    return json.loads(out.read_text())


def test_shard_map_equals_vmap_with_identical_anchors(eight_devices):
    assert eight_devices["shard_map_equals_vmap"]
    assert eight_devices["shard_map_anchors_identical_after_syncs"]
    assert eight_devices["shard_map_bytes"] == eight_devices["vmap_bytes"] > 0


def test_hlo_has_no_replica_collective_outside_the_sync_branch(eight_devices):
    found = eight_devices["shard_map_collectives"]
    assert any(k == "all-reduce" for k, _, _ in found) and any(
        k == "all-gather" for k, _, _ in found
    )
    assert eight_devices["shard_map_no_collective_outside_sync"], found


def test_2d_mesh_params_sharded_over_data_inner_step_over_data_sync_over_replica(eight_devices):
    assert eight_devices["mesh2d_equals_vmap"] and eight_devices["mesh2d_moved"]
    assert eight_devices["mesh2d_params_and_anchor_sharded_over_data"], eight_devices[
        "mesh2d_shards"
    ]
    found = eight_devices["mesh2d_collectives"]
    assert eight_devices["mesh2d_inner_step_over_data_only"], found
    assert eight_devices["mesh2d_sync_over_replica_only"], found


def test_explicit_sharding_vmap_over_replica_axis_with_top_k_keeps_shardings(eight_devices):
    assert eight_devices["explicit_vmap_equals_vmap"]
    specs = eight_devices["explicit_vmap_shardings"]
    assert len(specs) == 6 and all(s.startswith("P('replica', 'data'") for s in specs), specs


def test_pmap_equals_vmap(eight_devices):
    assert eight_devices["pmap_equals_vmap"] and eight_devices["pmap_anchors_identical"]


def test_noloco_only_permutes_and_gossip_keeps_the_mean(eight_devices):
    assert eight_devices["noloco_collectives"] == ["collective-permute"]
    assert eight_devices["noloco_equals_vmap"]
    assert eight_devices["gossip_keeps_mean"] and eight_devices["gossip_mixes"]


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference_anchors():
    targets = jnp.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    params = {"w": jnp.zeros(3), "b": jnp.ones(2)}

    def loss(p, t):
        return 0.5 * jnp.sum((p["w"] - t) ** 2) + 0.25 * jnp.sum((p["b"] - t[0]) ** 2)

    tx = optlab.diloco(optax.adam(0.05), outer_learning_rate=0.7, outer_momentum=0.9, sync_period=3)
    state = tx.init(params)
    axes = optlab.replica_axes(state)
    p, s = optlab.replicate(params, 2), optlab.replicate(state, 2, axes)

    def step(p, s, t):
        u, s = tx.update(jax.grad(loss)(p, t), s, p)
        return optax.apply_updates(p, u), s

    f = jax.jit(jax.vmap(step, in_axes=(0, axes, 0), out_axes=(0, axes), axis_name="replica"))
    anchors = []
    for _ in range(9):
        p, s = f(p, s, targets)
        anchors.append(jax.tree.map(lambda x: np.asarray(x), s.anchor))
    return anchors


def test_two_processes_diloco_identical_anchors_and_equal_to_vmap(tmp_path):
    port = _free_port()
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_replicas_multihost_worker.py"),
                str(port),
                str(i),
                str(outs[i]),
            ],
            cwd=ROOT,
            env=_env(None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            logs.append(out[-2000:] + err[-4000:])
    finally:
        for p in procs:  # never leave a process behind (a hung peer waits on the other)
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(logs)
    results = [json.loads(o.read_text()) for o in outs]
    for r in results:
        assert r["devices"] == 2
        assert all(r["identical"]), r["identical"]  # both processes hold the same anchor
    ref = _reference_anchors()
    for t in range(9):
        for r in results:
            for key in ("w", "b"):
                np.testing.assert_allclose(
                    np.asarray(r["anchors"][t][key]), ref[t][key][0], rtol=1e-6, atol=1e-7
                )
    # the anchors moved at the syncs (steps 3, 6, 9) and only there
    moved = [
        not np.array_equal(results[0]["anchors"][t]["w"], results[0]["anchors"][t - 1]["w"])
        for t in range(1, 9)
    ]
    assert moved == [False, True, False, False, True, False, False, True]
