"""Outer optimizers on 8 simulated CPU devices (run by tests/test_replicas_multidevice.py).

Needs ``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Writes a JSON dict of
named checks (``true``/``false`` or numbers) to ``argv[1]``; the test asserts on it.

* ``shard_map`` over an 8-way "replica" axis: DiLoCo + top-k/EF equals the ``vmap`` run,
  anchors bit-identical on every device after each sync; in the lowered HLO every
  collective sits in a branch of the sync conditional.
* 2-D mesh ("replica" 4 x "data" 2), each replica data-parallel with its parameters,
  anchor and optimizer state sharded over "data" (FSDP-style): outside the sync branch
  the HLO has only "data" collectives (parameter all-gather, gradient reduce-scatter),
  inside it only "replica" ones (checked by replica-group size); equals the ``vmap`` run
  over 4 unsharded replicas on the same global batch.
* explicit sharding mode, ``jax.jit(jax.vmap(..., spmd_axis_name="replica"))`` with the
  parameters also sharded over "data": DiLoCo + top-k/EF equals the one-device ``vmap``
  run and params, anchor and EF memory keep their shardings.
* ``pmap`` over 8 devices equals the ``vmap`` run.
* NoLoCo under ``shard_map``: the HLO has collective-permutes and no all-reduce.
* gossip under ``shard_map``: one ring step keeps the replica mean.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optlab

assert jax.device_count() == 8, jax.devices()
R = 8
H = 2
STEPS = 4
rng = np.random.default_rng(0)
TARGETS = jnp.asarray(rng.normal(size=(R, 3)).astype(np.float32))
PARAMS = {"w": jnp.zeros(3), "b": jnp.ones(2)}
checks: dict = {}


def loss(params, target):
    return 0.5 * jnp.sum((params["w"] - target) ** 2) + 0.25 * jnp.sum(
        (params["b"] - target[0]) ** 2
    )


def local_step(tx, params, state, target):
    updates, state = tx.update(jax.grad(loss)(params, target), state, params)
    return optax.apply_updates(params, updates), state


def squeezed(fn):
    """Per-device body for shard_map with a leading replica axis of size 1."""

    def body(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return body


def vmap_run(tx, targets, steps=STEPS, grad_fn=None):
    state = tx.init(PARAMS)
    axes = optlab.replica_axes(state)
    n = targets.shape[0]
    params, state = optlab.replicate(PARAMS, n), optlab.replicate(state, n, axes)
    f = jax.jit(
        jax.vmap(
            lambda p, s, t: local_step(tx, p, s, t),
            in_axes=(0, axes, 0),
            out_axes=(0, axes),
            axis_name="replica",
        )
    )
    for _ in range(steps):
        params, state = f(params, state, targets)
    return params, state


def close(a, b, tol=1e-5):
    return all(
        bool(np.allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def all_replicas_equal(tree):
    return all(bool(np.all(np.asarray(x) == np.asarray(x)[0:1])) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- HLO parsing

CALL_ATTRS = ("to_apply", "calls", "body", "condition")
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def parse_hlo(text):
    """Computations -> (instructions, called computations, branch computations)."""
    comps, entry, cur = {}, None, None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?[^=]*\{\s*$", line)
        if head and not line.startswith(" "):
            cur = head.group(2)
            comps[cur] = {"lines": [], "calls": set(), "branches": set()}
            if head.group(1):
                entry = cur
            continue
        if cur is None or line.strip() == "}":
            continue
        comps[cur]["lines"].append(line)
        m = re.search(r"called_computations=\{([^}]*)\}", line)
        if m:
            comps[cur]["calls"] |= {b.strip().lstrip("%") for b in m.group(1).split(",")}
        for attr in CALL_ATTRS:
            for m in re.finditer(rf"{attr}=%?([\w.\-]+)", line):
                comps[cur]["calls"].add(m.group(1))
        m = re.search(r"branch_computations=\{([^}]*)\}", line)
        if m:
            comps[cur]["branches"] |= {b.strip().lstrip("%") for b in m.group(1).split(",")}
        for attr in ("true_computation", "false_computation"):
            m = re.search(rf"{attr}=%?([\w.\-]+)", line)
            if m:
                comps[cur]["branches"].add(m.group(1))
    return comps, entry


def group_size(line):
    m = re.search(r"replica_groups=\{\{([^}]*)\}", line)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if m:
        return int(m.group(2))
    return None


def collectives(text):
    """[(kind, group size, inside a conditional branch)] for every collective instruction."""
    comps, entry = parse_hlo(text)
    outside, stack = set(), [entry]
    while stack:  # computations reachable from ENTRY without entering a branch
        c = stack.pop()
        if c in outside or c not in comps:
            continue
        outside.add(c)
        stack.extend(comps[c]["calls"])
    out = []
    for name, comp in comps.items():
        for line in comp["lines"]:
            for kind in COLLECTIVES:
                if re.search(rf"\s{kind}(-start)?\(", line):
                    out.append((kind, group_size(line), name not in outside))
    return out


# --------------------------------------------------------------------------- shard_map

mesh = jax.make_mesh((R,), ("replica",))
tx = optlab.diloco(optax.adam(0.05), sync_period=H, compressor=optlab.top_k(0.5))
state0 = tx.init(PARAMS)
sh = NamedSharding(mesh, P("replica"))
put = lambda t: jax.device_put(t, sh)
sm = jax.jit(
    jax.shard_map(
        squeezed(lambda p, s, t: local_step(tx, p, s, t)),
        mesh=mesh,
        in_specs=P("replica"),
        out_specs=P("replica"),
    )
)
params, state = put(optlab.replicate(PARAMS, R)), put(optlab.replicate(state0, R))
targets = put(TARGETS)
anchors_identical = []
for _ in range(1, STEPS + 1):
    params, state = sm(params, state, targets)
    anchors_identical.append(
        all_replicas_equal(state.anchor) and all_replicas_equal(state.outer_state)
    )
ref_params, ref_state = vmap_run(tx, TARGETS)
checks["shard_map_equals_vmap"] = close(params, ref_params) and close(
    state.anchor, ref_state.anchor
)
checks["shard_map_anchors_identical_after_syncs"] = all(anchors_identical[H - 1 :: H])
checks["shard_map_bytes"] = float(optlab.bytes_on_the_wire(state))
checks["vmap_bytes"] = float(optlab.bytes_on_the_wire(ref_state))
hlo = sm.lower(params, state, targets).as_text(dialect="hlo")
found = collectives(hlo)
checks["shard_map_collectives"] = [list(map(str, c)) for c in found]
checks["shard_map_no_collective_outside_sync"] = bool(found) and all(c[2] for c in found)

# --------------------------------------------------------------------------- 2-D mesh

# Each replica is itself data-parallel over "data" with its parameters (and so the anchor
# and every optimizer state leaf shaped like them) sharded over "data" along their first
# axis, FSDP-style: a device holds 1/D of its replica's parameters and its slice of the
# replica's batch. The inner step gathers the parameters and reduce-scatters the gradient
# over "data" (the all-reduce of a sharded gradient); the transform only ever sees this
# device's shard, and its sync reduces that shard over "replica".
RR, D, B = 4, 2, 3
mesh2 = jax.make_mesh((RR, D), ("replica", "data"))
PARAMS2 = {"w": jnp.asarray(0.5 * rng.normal(size=(4, 2)).astype(np.float32)), "b": jnp.zeros(2)}
X = jnp.asarray(rng.normal(size=(RR, D, B, 6)).astype(np.float32))  # 4 inputs, 2 targets


def mlp_loss(params, batch):
    pred = jnp.tanh(batch[:, :4] @ params["w"]) + params["b"]
    return 0.5 * jnp.mean(jnp.sum((pred - batch[:, 4:]) ** 2, axis=1))


tx2 = optlab.diloco(optax.sgd(0.1, momentum=0.5), sync_period=H)


def step2(params, state, x):  # per device: a "data" shard of one replica's params and batch
    p, s = jax.tree.map(lambda a: a[0], (params, state))
    full = jax.tree.map(lambda a: jax.lax.all_gather(a, "data", axis=0, tiled=True), p)
    g = jax.tree.map(
        lambda a: jax.lax.psum_scatter(a, "data", scatter_dimension=0, tiled=True) / D,
        jax.grad(mlp_loss)(full, x[0, 0]),
    )
    updates, s = tx2.update(g, s, p)
    return jax.tree.map(lambda a: a[None], (optax.apply_updates(p, updates), s))


def specs2(tree):
    """P("replica", "data") for stacked parameter-shaped float leaves, P("replica") else."""
    return jax.tree.map(
        lambda a: (
            P("replica", "data")
            if jnp.issubdtype(a.dtype, jnp.floating) and a.ndim >= 2
            else P("replica")
        ),
        tree,
    )


s2 = tx2.init(PARAMS2)
p2, st2 = optlab.replicate(PARAMS2, RR), optlab.replicate(s2, RR)
sp2, ss2 = specs2(p2), specs2(st2)
f2 = jax.jit(
    jax.shard_map(
        step2,
        mesh=mesh2,
        in_specs=(sp2, ss2, P("replica", "data")),
        out_specs=(sp2, ss2),
    )
)
put2 = lambda t, spec: jax.device_put(t, jax.tree.map(lambda q: NamedSharding(mesh2, q), spec))
p2, st2, x2 = put2(p2, sp2), put2(st2, ss2), put2(X, P("replica", "data"))
for _ in range(STEPS):
    p2, st2 = f2(p2, st2, x2)

axes = optlab.replica_axes(s2)


def ref_step(p, s, x):  # one replica, its whole batch, unsharded
    updates, s = tx2.update(jax.grad(mlp_loss)(p, x.reshape(-1, 6)), s, p)
    return optax.apply_updates(p, updates), s


ref = jax.jit(jax.vmap(ref_step, in_axes=(0, axes, 0), out_axes=(0, axes), axis_name="replica"))
rp, rs = optlab.replicate(PARAMS2, RR), optlab.replicate(s2, RR, axes)
for _ in range(STEPS):
    rp, rs = ref(rp, rs, X)
checks["mesh2d_equals_vmap"] = close(p2, rp) and close(st2.anchor, rs.anchor)
checks["mesh2d_moved"] = not close(rp, optlab.replicate(PARAMS2, RR))
checks["mesh2d_shards"] = [
    [str(x.sharding.spec), list(x.addressable_shards[0].data.shape)]
    for x in jax.tree.leaves((p2, st2.anchor))
]
checks["mesh2d_params_and_anchor_sharded_over_data"] = all(
    tuple(x.sharding.spec)[:2] == ("replica", "data")
    and x.addressable_shards[0].data.shape == (1, x.shape[1] // D, *x.shape[2:])
    for x in jax.tree.leaves((p2, st2.anchor))
)
found2 = collectives(f2.lower(p2, st2, x2).as_text(dialect="hlo"))
checks["mesh2d_collectives"] = [list(map(str, c)) for c in found2]
outside = [(k, g) for k, g, b in found2 if not b]
inside = [(k, g) for k, g, b in found2 if b]
checks["mesh2d_inner_step_over_data_only"] = {k for k, _ in outside} == {
    "all-gather",
    "reduce-scatter",
} and all(g == D for _, g in outside)
checks["mesh2d_sync_over_replica_only"] = any(k == "all-reduce" for k, _ in inside) and all(
    g == RR for _, g in inside
)

# ------------------------------------------- the same placement with jit + NamedSharding

# Explicit sharding mode, jax.jit(jax.vmap(..., spmd_axis_name="replica")): replicas along
# "replica", every parameter-shaped leaf also sharded over "data"; DiLoCo with top-k + EF
# (a whole-leaf selection, gathered over "data") equals the single-device vmap run and
# keeps the shardings in params, anchor and error-feedback memory.
mesh3 = jax.make_mesh((RR, D), ("replica", "data"), axis_types=(AxisType.Explicit,) * 2)
tx3 = optlab.diloco(optax.sgd(0.1), sync_period=H, compressor=optlab.top_k(0.5))
s3 = tx3.init(PARAMS2)
axes3 = optlab.replica_axes(s3)
G3 = {
    k: jnp.asarray(rng.normal(size=(RR, *v.shape)).astype(np.float32)) for k, v in PARAMS2.items()
}


def step3(p, s, g):
    updates, s = tx3.update(g, s, p)
    return optax.apply_updates(p, updates), s


vstep3 = jax.vmap(step3, in_axes=(0, axes3, 0), out_axes=(0, axes3), axis_name="replica")
rp3, rs3 = optlab.replicate(PARAMS2, RR), optlab.replicate(s3, RR, axes3)
p3, st3 = rp3, rs3
f3 = jax.jit(vstep3)
for _ in range(STEPS):
    rp3, rs3 = f3(rp3, rs3, G3)


_is_none = lambda x: x is None


def put3(tree, mapped=True):
    def one(x):
        if not mapped:
            return P()
        return P("replica", "data") if x.ndim >= 2 and x.dtype == jnp.float32 else P("replica")

    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh3, one(x))), tree)


with jax.sharding.set_mesh(mesh3):
    p3, g3 = put3(p3), put3(G3)
    st3 = jax.tree.map(lambda a, t: put3(t, a is not None), axes3, st3, is_leaf=_is_none)
    f3s = jax.jit(
        jax.vmap(
            step3,
            in_axes=(0, axes3, 0),
            out_axes=(0, axes3),
            axis_name="replica",
            spmd_axis_name="replica",
        )
    )
    for _ in range(STEPS):
        p3, st3 = f3s(p3, st3, g3)
checks["explicit_vmap_equals_vmap"] = close(p3, rp3) and close(st3.anchor, rs3.anchor)
checks["explicit_vmap_shardings"] = [
    str(jax.typeof(x).sharding.spec)
    for x in jax.tree.leaves((p3, st3.anchor, st3.communication[0].memory))
]

# --------------------------------------------------------------------------- pmap

txp = optlab.fedavg(optax.sgd(0.1, momentum=0.5), sync_period=H, weights=list(range(1, R + 1)))
sp = txp.init(PARAMS)
pm = jax.pmap(lambda p, s, t: local_step(txp, p, s, t), axis_name="replica")
pp, ps = optlab.replicate(PARAMS, R), optlab.replicate(sp, R)
for _ in range(STEPS):
    pp, ps = pm(pp, ps, TARGETS)
vp, vs = vmap_run(txp, TARGETS)
checks["pmap_equals_vmap"] = close(pp, vp) and close(ps.anchor, vs.anchor)
checks["pmap_anchors_identical"] = all_replicas_equal(ps.anchor)

# --------------------------------------------------------------------------- NoLoCo, gossip

txn = optlab.noloco(optax.sgd(0.1), sync_period=H)
sn = txn.init(PARAMS)
fn = jax.jit(
    jax.shard_map(
        squeezed(lambda p, s, t: local_step(txn, p, s, t)),
        mesh=mesh,
        in_specs=P("replica"),
        out_specs=P("replica"),
    )
)
pn, stn = put(optlab.replicate(PARAMS, R)), put(optlab.replicate(sn, R))
found_n = collectives(fn.lower(pn, stn, targets).as_text(dialect="hlo"))
checks["noloco_collectives"] = sorted({k for k, _, _ in found_n})
for _ in range(STEPS):
    pn, stn = fn(pn, stn, targets)
vn, _ = vmap_run(txn, TARGETS)
checks["noloco_equals_vmap"] = close(pn, vn)

txg = optlab.gossip(optax.sgd(0.0))
sg = txg.init(PARAMS)
fg = jax.jit(
    jax.shard_map(
        squeezed(lambda p, s, t: local_step(txg, p, s, t)),
        mesh=mesh,
        in_specs=P("replica"),
        out_specs=P("replica"),
    )
)
pg0 = put({"w": TARGETS, "b": jnp.ones((R, 2))})
pg, _ = fg(pg0, put(optlab.replicate(sg, R)), targets)
checks["gossip_keeps_mean"] = close(jnp.mean(pg["w"], 0), jnp.mean(TARGETS, 0), 1e-6)
checks["gossip_mixes"] = not close(pg["w"], TARGETS)

with open(sys.argv[1], "w") as fh:
    json.dump(checks, fh)
