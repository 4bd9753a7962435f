"""DP-SGD: per-example clipping, Gaussian noise, key handling, optax equality, convergence."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from helpers import tree_allclose

B = 6


def per_example_grads(seed=0, scale=3.0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "w": scale * jax.random.normal(k1, (B, 4, 3)),
        "b": scale * jax.random.normal(k2, (B, 3)),
        "s": scale * jax.random.normal(k3, (B,)),
    }


def params_like(per_example):
    return jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), per_example)


def example(tree, i):
    return jax.tree.map(lambda x: x[i : i + 1], tree)


def test_each_clipped_example_norm_is_at_most_c():
    grads = per_example_grads()
    tx = optlab.dp_aggregate(l2_norm_clip=1.5, noise_multiplier=0.0)
    state = tx.init(params_like(grads))
    norms = []
    for i in range(B):  # a single example, no noise: the output is that example, clipped
        clipped, _ = tx.update(example(grads, i), state)
        norms.append(float(optax.tree.norm(clipped)))
        raw = jax.tree.map(lambda x: x[0], example(grads, i))
        factor = min(1.0, 1.5 / float(optax.tree.norm(raw)))
        tree_allclose(clipped, jax.tree.map(lambda x: factor * x, raw), rtol=1e-5, atol=1e-6)
    assert max(norms) <= 1.5 * (1 + 1e-5)
    assert min(norms) == pytest.approx(1.5, rel=1e-5)  # these examples are all above C


def test_small_examples_are_not_clipped_and_batch_is_averaged():
    grads = per_example_grads(scale=0.01)
    tx = optlab.dp_aggregate(l2_norm_clip=10.0, noise_multiplier=0.0)
    out, _ = tx.update(grads, tx.init(params_like(grads)))
    tree_allclose(out, jax.tree.map(lambda x: jnp.mean(x, axis=0), grads), rtol=1e-5, atol=1e-8)


def test_matches_optax_differentially_private_aggregate_including_noise():
    grads = per_example_grads()
    params = params_like(grads)
    ref = optax.contrib.differentially_private_aggregate(1.0, 0.7, key=jax.random.key(3))
    tx = optlab.dp_aggregate(1.0, 0.7, seed=3)
    s_ref, s = ref.init(params), tx.init(params)
    for i in range(3):
        g = per_example_grads(seed=i)
        want, s_ref = ref.update(g, s_ref, params)
        got, s = tx.update(g, s, params)
        tree_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_dpsgd_matches_optax_contrib_dpsgd():
    grads = per_example_grads()
    params = params_like(grads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = optax.contrib.dpsgd(0.1, 1.0, 0.5, seed=2, momentum=0.9, nesterov=True)
        s_ref = ref.init(params)
        tx = optlab.dpsgd(0.1, 1.0, 0.5, seed=2, momentum=0.9, nesterov=True)
        s = tx.init(params)
        for i in range(3):
            g = per_example_grads(seed=10 + i)
            want, s_ref = ref.update(g, s_ref, params)
            got, s = tx.update(g, s, params)
            tree_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_noise_standard_deviation():
    c, sigma, batch = 2.0, 1.5, 4
    zeros = {"w": jnp.zeros((batch, 200, 50)), "b": jnp.zeros((batch, 1000))}
    tx = optlab.dp_aggregate(l2_norm_clip=c, noise_multiplier=sigma, seed=0)
    state = tx.init(params_like(zeros))
    step = jax.jit(tx.update)
    draws = []
    for _ in range(5):
        out, state = step(zeros, state)
        draws.append(np.concatenate([np.ravel(out["w"]), np.ravel(out["b"])]))
    draws = np.concatenate(draws)  # 55,000 draws of N(0, (C sigma / B)^2)
    want = c * sigma / batch
    assert draws.std() == pytest.approx(want, rel=0.02)
    assert abs(draws.mean()) < 4 * want / np.sqrt(draws.size)
    # Leaves get independent noise.
    assert abs(np.corrcoef(np.ravel(out["w"])[:1000], np.ravel(out["b"]))[0, 1]) < 0.15


def test_key_changes_every_step_and_noise_differs():
    grads = per_example_grads()
    tx = optlab.dp_aggregate(l2_norm_clip=1.0, noise_multiplier=1.0, seed=5)
    state = tx.init(params_like(grads))
    step = jax.jit(tx.update)
    keys, outs = [np.asarray(state.key)], []
    for _ in range(4):
        out, state = step(grads, state)
        keys.append(np.asarray(state.key))
        outs.append(np.asarray(out["w"]))
    assert keys[0].dtype == np.uint32 and keys[0].shape == (2,)
    assert len({k.tobytes() for k in keys}) == len(keys)
    assert all(np.max(np.abs(a - b)) > 1e-3 for a, b in zip(outs, outs[1:]))
    # Same seed, same stream; another seed, another stream.
    same = optlab.dp_aggregate(1.0, 1.0, seed=5)
    again, _ = same.update(grads, same.init(params_like(grads)))
    # (eager here, jitted above: equal up to rounding)
    np.testing.assert_allclose(np.asarray(again["w"]), outs[0], rtol=1e-6, atol=1e-7)
    diff = optlab.dp_aggregate(1.0, 1.0, seed=6)
    other, _ = diff.update(grads, diff.init(params_like(grads)))
    assert np.max(np.abs(np.asarray(other["w"]) - outs[0])) > 1e-3


def test_dpsgd_converges_with_small_noise():
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (64, 5))
    w_true = jnp.array([1.0, -2.0, 0.5, 0.0, 3.0])
    y = x @ w_true

    def loss(w, xb, yb):
        return (xb @ w - yb) ** 2

    def full_loss(w):
        return jnp.mean(jax.vmap(loss, in_axes=(None, 0, 0))(w, x, y))

    tx = optlab.dpsgd(learning_rate=0.05, l2_norm_clip=5.0, noise_multiplier=0.05, momentum=0.5)
    w = jnp.zeros(5)
    state = tx.init(w)

    @jax.jit
    def step(w, state):
        per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(w, x, y)
        updates, state = tx.update(per_example, state, w)
        return optax.apply_updates(w, updates), state

    for _ in range(300):
        w, state = step(w, state)
    assert float(full_loss(w)) < 1e-2 * float(full_loss(jnp.zeros(5)))
    np.testing.assert_allclose(w, w_true, atol=0.1)


def test_dtype_none_and_empty():
    grads = {"w": jnp.ones((B, 3), jnp.bfloat16), "frozen": None}
    tx = optlab.dp_aggregate(1.0, 1.0)
    out, _ = tx.update(grads, tx.init({"w": jnp.zeros(3, jnp.bfloat16), "frozen": None}))
    assert out["w"].dtype == jnp.bfloat16 and out["w"].shape == (3,) and out["frozen"] is None
    out, state = tx.update({}, tx.init({}))
    assert out == {}


def test_validation():
    with pytest.raises(ValueError, match="dp_aggregate.*l2_norm_clip.*0"):
        optlab.dp_aggregate(l2_norm_clip=0.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="dp_aggregate.*noise_multiplier.*-1"):
        optlab.dp_aggregate(l2_norm_clip=1.0, noise_multiplier=-1.0)
    with pytest.raises(ValueError, match="dp_aggregate.*seed.*-2"):
        optlab.dp_aggregate(1.0, 1.0, seed=-2)
    with pytest.raises(TypeError, match="dp_aggregate.*seed"):
        optlab.dp_aggregate(1.0, 1.0, seed=1.5)
    with pytest.raises(ValueError, match="dpsgd.*l2_norm_clip.*-1"):
        optlab.dpsgd(0.1, l2_norm_clip=-1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="dpsgd.*momentum.*1.5"):
        optlab.dpsgd(0.1, 1.0, 1.0, momentum=1.5)
    with pytest.raises(ValueError, match="dpsgd.*learning_rate.*-0.1"):
        optlab.dpsgd(-0.1, 1.0, 1.0)
    tx = optlab.dp_aggregate(1.0, 1.0)
    with pytest.raises(ValueError, match="dp_aggregate.*per-example"):
        tx.update({"a": jnp.ones((4, 2)), "b": jnp.ones((3, 2))}, tx.init({}))
    with pytest.raises(TypeError, match="dp_aggregate.*floating"):
        tx.init({"w": jnp.ones(3, jnp.int32)})


def test_registered_as_named_optimizer():
    info = {i.name: i for i in optlab.available()}["dpsgd"]
    assert info.paper == "Deep Learning with Differential Privacy (2016)"
    assert "dp_aggregate" in optlab.describe("dpsgd", l2_norm_clip=1.0, noise_multiplier=1.0)
