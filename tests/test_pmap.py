"""``jax.pmap`` with an axis name on 8 simulated CPU devices: results equal one device.

The device count is fixed when jax starts, so each test runs its part of ``SCRIPT`` in
its own subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this
process has one device). A
batch of 64 examples is split into 8 shards of 8; the parameters and optimizer state are
replicated (``in_axes=None`` for params, a per-device copy of the state). Checked, each
against a single-device computation on the whole batch:

* ``optlab.adamw`` for 3 steps, gradients averaged over the axis (``jax.lax.pmean``):
  every replica's parameters and state equal the single-device full-batch run.
* ``optax.clip_by_global_norm`` (inside ``optlab.in_float32``, the float32 wrapper) after
  the cross-device mean (clipping active): the clipped updates equal the single-device
  clipping of the full-batch gradient, and every replica gets the same update (the norm
  is the global one, not a per-shard one).
* SAM's m-sharpness (``optlab.sam(..., axis_name="batch")``, local gradients and a local
  ``grad_fn``): each shard perturbs by its own gradient, the perturbed gradients are
  averaged, equal to the per-shard computation done by hand with ``vmap``; global SAM
  (gradients averaged inside ``grad_fn``, ``axis_name=None``) equals its own hand
  computation, and the two differ.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import optlab

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 8, jax.devices()
    N, AXIS, RHO, LR, MAX_NORM = 8, "batch", 0.2, 0.05, 0.1

    kx, kw, kv = jax.random.split(jax.random.key(0), 3)
    X = jax.random.normal(kx, (64, 5))
    Y = jnp.sin(X[:, :1] * 2.0) + X[:, 1:2]
    params = {"w": 0.5 * jax.random.normal(kw, (5, 4)), "v": jax.random.normal(kv, (4, 1))}
    xs, ys = X.reshape(N, 8, 5), Y.reshape(N, 8, 1)

    def loss(p, x, y):
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)

    def replicate(tree):
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (N, *a.shape)), tree)

    def tolist(tree):
        return jax.tree.map(lambda a: np.asarray(a, np.float64).tolist(), tree)

    SECTIONS, out = set(sys.argv[1:]), {}

    if "adamw" in SECTIONS:
        # 1. A named optimizer, gradients averaged over the axis; 3 steps.
        tx = optlab.adamw(learning_rate=LR, weight_decay=0.1)

        def pstep(p, s, x, y):
            g = jax.lax.pmean(jax.grad(loss)(p, x, y), AXIS)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        pstep = jax.pmap(pstep, axis_name=AXIS)
        p_rep, s_rep = replicate(params), jax.pmap(tx.init)(replicate(params))
        step = jax.jit(lambda p, s: (lambda u_s: (optax.apply_updates(p, u_s[0]), u_s[1]))(
            tx.update(jax.grad(loss)(p, X, Y), s, p)))
        p_one, s_one = params, tx.init(params)
        for _ in range(3):
            p_rep, s_rep = pstep(p_rep, s_rep, xs, ys)
            p_one, s_one = step(p_one, s_one)
        out["adamw"] = {"pmap_params": tolist(p_rep), "pmap_state": tolist(jax.tree.leaves(s_rep)),
                        "one_params": tolist(p_one), "one_state": tolist(jax.tree.leaves(s_one)),
                        "init_params": tolist(params)}

    if "clip" in SECTIONS:
        # 2. clip_by_global_norm after the cross-device mean.
        clip = optlab.in_float32(optax.clip_by_global_norm(MAX_NORM))

        def pclip(p, x, y):
            g = jax.lax.pmean(jax.grad(loss)(p, x, y), AXIS)
            u, _ = clip.update(g, clip.init(p), p)
            return u

        g_full = jax.grad(loss)(params, X, Y)
        out["clip"] = {
            "pmap": tolist(jax.pmap(pclip, axis_name=AXIS, in_axes=(None, 0, 0))(params, xs, ys)),
            "one": tolist(clip.update(g_full, clip.init(params), params)[0]),
            "full_norm": float(optax.tree.norm(g_full)),
            "shard_norms": [float(optax.tree.norm(jax.grad(loss)(params, x, y)))
                            for x, y in zip(xs, ys)],
        }

    if "sam" in SECTIONS:
        # 3. SAM: m-sharpness (local grad_fn, axis_name) and global SAM (averaged grad_fn).
        sam_m = optlab.sam(optax.identity(), rho=RHO, axis_name=AXIS)
        sam_g = optlab.sam(optax.identity(), rho=RHO)

        def m_step(p, x, y):
            grad_fn = lambda q: jax.grad(loss)(q, x, y)
            u, _ = sam_m.update(grad_fn(p), sam_m.init(p), p, grad_fn=grad_fn)
            return u

        def global_step(p, x, y):
            grad_fn = lambda q: jax.lax.pmean(jax.grad(loss)(q, x, y), AXIS)
            u, _ = sam_g.update(grad_fn(p), sam_g.init(p), p, grad_fn=grad_fn)
            return u

        def unit(g):
            n = optax.tree.norm(g)
            return jax.tree.map(lambda a: a / n, g)

        def mean_tree(t):
            return jax.tree.map(lambda a: jnp.mean(a, axis=0), t)

        def hand_m():  # each shard perturbs by its own gradient
            def one(x, y):
                e = jax.tree.map(lambda a: RHO * a, unit(jax.grad(loss)(params, x, y)))
                return jax.grad(loss)(jax.tree.map(jnp.add, params, e), x, y)
            return mean_tree(jax.vmap(one)(xs, ys))

        def hand_global():  # one perturbation from the averaged gradient
            e = jax.tree.map(lambda a: RHO * a, unit(jax.grad(loss)(params, X, Y)))
            return jax.grad(loss)(jax.tree.map(jnp.add, params, e), X, Y)

        pm = lambda f: jax.pmap(f, axis_name=AXIS, in_axes=(None, 0, 0))(params, xs, ys)
        out["sam"] = {"m": tolist(pm(m_step)), "global": tolist(pm(global_step)),
                      "hand_m": tolist(hand_m()), "hand_global": tolist(hand_global())}

    json.dump(out, sys.stdout)
    """
)


def _run(section: str) -> dict:
    """Run one section of SCRIPT in its own 8-device process (one per test, so that
    pytest-xdist can spread them and no worker runs a section twice)."""
    env = dict(os.environ)
    # First: XLA stops parsing at a malformed token that may follow in an inherited value.
    env["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=8 " + env.get("XLA_FLAGS", "")
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, section],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)[section]


def _flat(tree) -> np.ndarray:
    """Leaves of a dict tree (sorted keys) or a list of leaves, flattened, as float64."""
    leaves = [tree[k] for k in sorted(tree)] if isinstance(tree, dict) else tree
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


def _replicas(tree) -> list[np.ndarray]:
    """Per-device copies of a pmapped output (leading axis 8), each flattened."""
    leaves = [tree[k] for k in sorted(tree)] if isinstance(tree, dict) else tree
    arrays = [np.asarray(x, np.float64) for x in leaves]
    assert all(a.shape[0] == 8 for a in arrays)
    return [np.concatenate([np.ravel(a[i]) for a in arrays]) for i in range(8)]


def _assert_replicas_equal(tree, want: np.ndarray) -> None:
    replicas = _replicas(tree)
    for r in replicas[1:]:  # every device holds the same values
        np.testing.assert_array_equal(r, replicas[0])
    np.testing.assert_allclose(replicas[0], want, rtol=1e-5, atol=1e-6)


def test_named_optimizer_under_pmap_matches_one_device():
    r = _run("adamw")
    _assert_replicas_equal(r["pmap_params"], _flat(r["one_params"]))
    _assert_replicas_equal(r["pmap_state"], _flat(r["one_state"]))
    # The parameters moved (3 Adam steps of size ~LR per coordinate).
    assert np.max(np.abs(_flat(r["one_params"]) - _flat(r["init_params"]))) > 0.05


def test_clip_by_global_norm_after_cross_device_mean():
    r = _run("clip")
    assert r["full_norm"] > 0.1 * 1.5  # MAX_NORM = 0.1: clipping is active
    # The per-shard norms differ from the global one: a per-shard clip would give other updates.
    assert max(abs(n - r["full_norm"]) for n in r["shard_norms"]) > 1e-2 * r["full_norm"]
    _assert_replicas_equal(r["pmap"], _flat(r["one"]))
    np.testing.assert_allclose(np.linalg.norm(_flat(r["one"])), 0.1, rtol=1e-5)


def test_sam_m_sharpness_under_pmap():
    r = _run("sam")
    _assert_replicas_equal(r["m"], _flat(r["hand_m"]))  # m-SAM: per-shard perturbations
    _assert_replicas_equal(r["global"], _flat(r["hand_global"]))  # one global perturbation
    m, glob = _flat(r["hand_m"]), _flat(r["hand_global"])
    assert np.linalg.norm(m - glob) > 1e-2 * np.linalg.norm(glob)
