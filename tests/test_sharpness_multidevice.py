"""m-sharpness on 8 simulated CPU devices.

The device count is fixed when jax starts, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (this process has one device).
Under ``jax.shard_map`` over an 8-way ``data`` axis, m-SAM (``axis_name="data"``: each
shard perturbs by its own gradient, the perturbed gradients are averaged) must equal the
per-shard computation done by hand with ``vmap``, and differ from global SAM (gradients
averaged before the perturbation), which must equal its own hand computation.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import optlab

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("data",))
    RHO, ALPHA = 0.2, 0.3

    kx, kw, kv = jax.random.split(jax.random.key(0), 3)
    X = jax.random.normal(kx, (64, 5))
    Y = jnp.sin(X[:, :1] * 2.0) + X[:, 1:2]
    params = {"w": 0.5 * jax.random.normal(kw, (5, 4)), "v": jax.random.normal(kv, (4, 1))}

    def loss(p, x, y):
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)

    def mean_tree(t):
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), t)

    def run(step, check_vma=True):
        f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                  out_specs=P(), check_vma=check_vma))
        rep = NamedSharding(mesh, P())
        sh = NamedSharding(mesh, P("data"))
        out = f(jax.device_put(params, rep), jax.device_put(X, sh), jax.device_put(Y, sh))
        return jax.tree.map(lambda a: a.tolist(), out)

    def local_grads(p, x, y):  # the local (per-shard) gradient, also under check_vma
        return jax.grad(loss)(jax.lax.pcast(p, "data", to="varying"), x, y)

    def m_step(tx):
        def step(p, x, y):
            grad_fn = lambda q: jax.grad(loss)(q, x, y)
            updates, _ = tx.update(local_grads(p, x, y), tx.init(p), p, grad_fn=grad_fn)
            return updates
        return step

    def global_step(tx):
        def step(p, x, y):
            grad_fn = lambda q: jax.lax.pmean(local_grads(q, x, y), "data")
            updates, _ = tx.update(grad_fn(p), tx.init(p), p, grad_fn=grad_fn)
            return updates
        return step

    def m_step_no_vma(tx):  # check_vma=False: plain jax.grad is local
        def step(p, x, y):
            grad_fn = lambda q: jax.grad(loss)(q, x, y)
            updates, _ = tx.update(grad_fn(p), tx.init(p), p, grad_fn=grad_fn)
            return updates
        return step

    xs, ys = X.reshape(8, 8, 5), Y.reshape(8, 8, 1)
    shard_grad = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))

    def unit(g):
        n = optax.tree.norm(g)
        return jax.tree.map(lambda a: a / n, g)

    def hand_m():
        def one(x, y):
            g = jax.grad(loss)(params, x, y)
            e = jax.tree.map(lambda a: RHO * a, unit(g))
            return g, jax.grad(loss)(jax.tree.map(jnp.add, params, e), x, y)
        g, gp = jax.vmap(one)(xs, ys)
        return mean_tree(g), mean_tree(gp)

    def hand_global():
        g = mean_tree(shard_grad(params, xs, ys))
        e = jax.tree.map(lambda a: RHO * a, unit(g))
        gp = mean_tree(shard_grad(jax.tree.map(jnp.add, params, e), xs, ys))
        return g, gp

    def gsam_direction(g, gp):
        coef = optax.tree.vdot(g, gp) / optax.tree.vdot(gp, gp)
        return jax.tree.map(lambda a, b: b - ALPHA * (a - coef * b), g, gp)

    sam_m = optlab.sam(optax.identity(), rho=RHO, axis_name="data")
    sam_g = optlab.sam(optax.identity(), rho=RHO)
    gsam_m = optlab.gsam(optax.identity(), rho=RHO, alpha=ALPHA, axis_name="data")
    g_m, gp_m = hand_m()
    g_g, gp_g = hand_global()
    tolist = lambda t: jax.tree.map(lambda a: a.tolist(), t)
    out = {
        "m_sam": run(m_step(sam_m)),
        "m_sam_no_vma": run(m_step_no_vma(sam_m), check_vma=False),
        "global_sam": run(global_step(sam_g)),
        "m_gsam": run(m_step(gsam_m)),
        "hand_m": tolist(gp_m),
        "hand_global": tolist(gp_g),
        "hand_m_gsam": tolist(gsam_direction(g_m, gp_m)),
    }
    json.dump(out, sys.stdout)
    """
)


def _run_subprocess() -> dict:
    env = dict(os.environ)
    # First: XLA stops parsing at a malformed token that may follow in an inherited value.
    env["XLA_FLAGS"] = (
        "--xla_force_host_platform_device_count=8 " + env.get("XLA_FLAGS", "")
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _flat(tree) -> list[float]:
    import numpy as np

    leaves = [np.ravel(np.asarray(tree[k], np.float64)) for k in sorted(tree)]
    return np.concatenate(leaves).tolist()


def test_m_sharpness_under_shard_map():
    import numpy as np

    out = _run_subprocess()
    m, hand_m = np.array(_flat(out["m_sam"])), np.array(_flat(out["hand_m"]))
    glob, hand_g = np.array(_flat(out["global_sam"])), np.array(_flat(out["hand_global"]))
    # m-SAM: each shard perturbs by its own gradient, then the perturbed gradients are averaged.
    np.testing.assert_allclose(m, hand_m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.array(_flat(out["m_sam_no_vma"])), hand_m, rtol=1e-4, atol=1e-6)
    # Global SAM: one perturbation from the averaged gradient.
    np.testing.assert_allclose(glob, hand_g, rtol=1e-4, atol=1e-6)
    # The two differ (by much more than the tolerance).
    assert np.linalg.norm(m - glob) > 1e-2 * np.linalg.norm(glob)
    # GSAM uses the averaged unperturbed gradient for its orthogonal component.
    np.testing.assert_allclose(
        np.array(_flat(out["m_gsam"])), np.array(_flat(out["hand_m_gsam"])), rtol=1e-4, atol=1e-6
    )
