"""One process of the two-process DiLoCo run (started by tests/test_replicas_multidevice.py).

Usage: python _replicas_multihost_worker.py <port> <process_id> <out.json>

Each process owns one CPU device and one replica; the mesh's "replica" axis spans both
processes, and the sync's all-reduce goes through gloo over 127.0.0.1. After every step
the process gathers both processes' anchors (``multihost_utils.process_allgather``),
checks that they are bit-identical after each sync, and writes its own trajectory of
anchors to ``out.json`` for the parent to compare with a single-process ``vmap`` run.
"""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_platforms", "cpu")

PORT, PID, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{PORT}",
    num_processes=2,
    process_id=PID,
    initialization_timeout=60,
)

import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optlab

H, STEPS = 3, 9
TARGETS = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], np.float32)
PARAMS = {"w": jnp.zeros(3), "b": jnp.ones(2)}


def loss(params, target):
    return 0.5 * jnp.sum((params["w"] - target) ** 2) + 0.25 * jnp.sum(
        (params["b"] - target[0]) ** 2
    )


def main():
    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    mesh = jax.make_mesh((2,), ("replica",), devices=jax.devices())
    tx = optlab.diloco(optax.adam(0.05), outer_learning_rate=0.7, outer_momentum=0.9, sync_period=H)
    optlab.check_replica_trees(PARAMS)
    state0 = tx.init(PARAMS)
    sharding = NamedSharding(mesh, P("replica"))

    def global_array(local):  # this process's replica -> a (2, ...) array over the mesh
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)[None]), local
        )

    def step(params, state, target):
        squeeze = lambda t: jax.tree.map(lambda x: x[0], t)
        p, s, y = squeeze(params), squeeze(state), target[0]
        updates, s = tx.update(jax.grad(loss)(p, y), s, p)
        p = optax.apply_updates(p, updates)
        return jax.tree.map(lambda x: x[None], (p, s))

    f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=P("replica"), out_specs=P("replica")))
    params, state = global_array(PARAMS), global_array(state0)
    target = global_array(TARGETS[PID])
    anchors, identical = [], []
    for _ in range(1, STEPS + 1):
        params, state = f(params, state, target)
        local = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], state.anchor)
        both = multihost_utils.process_allgather(local)  # (2, ...) per leaf
        identical.append(all(bool(np.array_equal(x[0], x[1])) for x in jax.tree.leaves(both)))
        anchors.append(jax.tree.map(lambda x: x.tolist(), local))
    with open(OUT, "w") as fh:
        json.dump({"anchors": anchors, "identical": identical, "devices": jax.device_count()}, fh)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
