"""Outer optimizers, compression and gossip on replicas simulated with ``jax.vmap``.

The multi-device modes (shard_map on 8 CPU devices, a 2-D replica x data mesh, pmap, the
HLO check and two processes) are in tests/test_replicas_multidevice.py.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab

R = 4  # replicas
TARGETS = jnp.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [-1.0, 1.0, 2.0], [0.0, 2.0, 1.0]])


def loss(params, target):
    return 0.5 * jnp.sum((params["w"] - target) ** 2) + 0.25 * jnp.sum(
        (params["b"] - target[0]) ** 2
    )


PARAMS = {"w": jnp.zeros(3), "b": jnp.ones(2)}


def make_step(tx, state, unbatched_count=True):
    """A jitted vmapped step; the replica r sees ``TARGETS[r]``."""
    axes = optlab.replica_axes(state) if unbatched_count else 0

    def step(params, state, target, extra):
        grads = jax.grad(loss)(params, target)
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    return jax.jit(jax.vmap(step, in_axes=(0, axes, 0, 0), out_axes=(0, axes), axis_name="replica"))


def init_replicas(tx, params=PARAMS, unbatched_count=True):
    state = tx.init(params)
    axes = optlab.replica_axes(state) if unbatched_count else 0
    return optlab.replicate(params, R), optlab.replicate(state, R, axes)


def run(tx, steps, extra=None, unbatched_count=True):
    params, state = init_replicas(tx, unbatched_count=unbatched_count)
    step = make_step(tx, tx.init(PARAMS), unbatched_count)
    history = []
    for t in range(steps):
        e = extra(t) if extra is not None else {}
        params, state = step(params, state, TARGETS, e)
        history.append((params, state))
    return params, state, history


def inner_only(inner, steps, params=PARAMS, with_state=False):
    """Each replica's inner optimizer alone for ``steps`` steps (no communication)."""

    def one(target):
        p, s = params, inner.init(params)
        for _ in range(steps):
            u, s = inner.update(jax.grad(loss)(p, target), s, p)
            p = optax.apply_updates(p, u)
        return p, s

    p, s = jax.vmap(one)(TARGETS)
    return (p, s) if with_state else p


def assert_replicas_identical(tree):
    for leaf in jax.tree.leaves(tree):
        for r in range(1, leaf.shape[0]):
            np.testing.assert_array_equal(np.asarray(leaf[0]), np.asarray(leaf[r]))


# ---------------------------------------------------------------------------
# Defining properties
# ---------------------------------------------------------------------------


def test_fedavg_synced_params_are_the_weighted_mean_and_anchors_bit_identical():
    weights = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    inner = optax.sgd(0.1, momentum=0.5)
    tx = optlab.fedavg(inner, sync_period=3, weights=weights)
    params, state, _ = run(tx, 3)
    local = inner_only(inner, 3)
    expected = jax.tree.map(lambda x: jnp.tensordot(weights / weights.sum(), x, axes=1), local)
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[0], params), expected, rtol=1e-6, atol=1e-6
    )
    assert_replicas_identical(state.anchor)
    chex.assert_trees_all_close(params, state.anchor, rtol=1e-6, atol=1e-6)
    assert int(state.count) == 3


def test_sync_period_one_equals_synchronous_data_parallel_sgd():
    tx = optlab.outer_optimizer(optax.sgd(0.1), optax.sgd(1.0), sync_period=1)
    _, _, history = run(tx, 4)
    p = PARAMS
    for t in range(4):
        g = jax.tree.map(
            lambda *x: jnp.mean(jnp.stack(x), 0), *[jax.grad(loss)(p, TARGETS[r]) for r in range(R)]
        )
        p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x: x[0], history[t][0]), p, rtol=1e-5, atol=1e-6
        )


def test_diloco_matches_hand_written_rounds_and_no_communication_between_syncs():
    inner = optax.adamw(0.05)
    H = 3
    tx = optlab.diloco(inner, outer_learning_rate=0.7, outer_momentum=0.9, sync_period=H)
    _, state, history = run(tx, 2 * H)
    # Between syncs, replicas are exactly their own inner runs (no mixing).
    chex.assert_trees_all_close(history[1][0], inner_only(inner, 2), rtol=1e-6, atol=1e-6)
    # By hand: two rounds of inner AdamW (state kept across rounds) + Nesterov on the mean Δ.
    outer = optax.sgd(0.7, momentum=0.9, nesterov=True)
    anchor, ostate = PARAMS, outer.init(PARAMS)
    istates = [inner.init(PARAMS) for _ in range(R)]
    for _ in range(2):
        locals_ = []
        for r in range(R):
            p = anchor
            for _ in range(H):
                u, istates[r] = inner.update(jax.grad(loss)(p, TARGETS[r]), istates[r], p)
                p = optax.apply_updates(p, u)
            locals_.append(p)
        delta = jax.tree.map(lambda a, *x: a - jnp.mean(jnp.stack(x), 0), anchor, *locals_)
        u, ostate = outer.update(delta, ostate, anchor)
        anchor = optax.apply_updates(anchor, u)
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[0], state.anchor), anchor, rtol=1e-5, atol=1e-6
    )
    assert_replicas_identical(state.anchor)
    assert_replicas_identical(state.outer_state)


def test_vmap_with_unbatched_counter_keeps_the_sync_in_a_cond():
    tx = optlab.diloco(optax.sgd(0.1), sync_period=4)
    params, state = init_replicas(tx)
    axes = optlab.replica_axes(tx.init(PARAMS))

    def f(params, state, target):
        updates, state = tx.update(jax.grad(loss)(params, target), state, params)
        return updates, state

    def top_level_collectives(in_axes_state):
        jaxpr = jax.make_jaxpr(jax.vmap(f, in_axes=(0, in_axes_state, 0), axis_name="replica"))(
            params,
            state if in_axes_state is axes else optlab.replicate(tx.init(PARAMS), R),
            TARGETS,
        )
        prims = [e.primitive.name for e in jaxpr.jaxpr.eqns]
        return prims

    unbatched = top_level_collectives(axes)
    assert "cond" in unbatched and not {"psum", "all_gather", "ppermute"} & set(unbatched)
    # A batched counter: the switch becomes a select, so the sums run every step (documented).
    batched = top_level_collectives(0)
    assert "cond" not in batched and "select_n" in batched


def test_batched_counter_gives_the_same_results():
    tx = optlab.diloco(optax.sgd(0.1), sync_period=2)
    a, _, _ = run(tx, 4, unbatched_count=True)
    b, _, _ = run(tx, 4, unbatched_count=False)
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_schedules_the_outer_learning_rate():
    sched = optax.linear_schedule(0.7, 0.1, 4)
    tx = optax.inject_hyperparams(optlab.diloco, static_args=("sync_period", "axis_name"))(
        optax.sgd(0.1), outer_learning_rate=sched, sync_period=2
    )
    params, state, _ = run(tx, 4)
    assert np.allclose(np.asarray(state.hyperparams["outer_learning_rate"]), sched(3))
    const = optax.inject_hyperparams(optlab.diloco, static_args=("sync_period", "axis_name"))(
        optax.sgd(0.1), outer_learning_rate=0.7, sync_period=2
    )
    p_const, _, _ = run(const, 4)
    p_plain, _, _ = run(optlab.diloco(optax.sgd(0.1), 0.7, sync_period=2), 4)
    chex.assert_trees_all_close(p_const, p_plain, rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(params["w"]), np.asarray(p_const["w"]))


def test_checkpoint_round_trip_under_vmap():
    serialization = pytest.importorskip("flax.serialization")
    tx = optlab.diloco(optax.adam(0.05), sync_period=2, compressor=optlab.top_k(0.5))
    params, state = init_replicas(tx)
    step = make_step(tx, tx.init(PARAMS))
    for _ in range(3):
        params, state = step(params, state, TARGETS, {})
    restored = serialization.from_bytes(state, serialization.to_bytes(state))
    a = step(params, state, TARGETS, {})
    b = step(params, restored, TARGETS, {})
    chex.assert_trees_all_equal(a[0], b[0])


# ---------------------------------------------------------------------------
# Options: weights, participation, clipping, streaming, overlap, fedprox
# ---------------------------------------------------------------------------


def test_partial_participation_absent_replica_contributes_nothing_and_keeps_its_state():
    inner = optax.sgd(0.1, momentum=0.5)
    tx = optlab.fedavg(inner, sync_period=2)
    present = jnp.array([True, False, True, True])
    params, state, _ = run(tx, 2, extra=lambda t: {"participating": present})
    local, inner_states = inner_only(inner, 2, with_state=True)
    expected = jax.tree.map(lambda x: jnp.mean(x[np.asarray(present)], 0), local)
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[1], params), expected, rtol=1e-6, atol=1e-6
    )
    # The absent replica's inner state is its own (it was not reset or mixed).
    chex.assert_trees_all_close(state.inner_state, inner_states, rtol=1e-6, atol=1e-7)
    # Nobody present: the round is skipped, anchors and outer state unchanged.
    _, s2, _ = run(tx, 2, extra=lambda t: {"participating": jnp.zeros(R, bool)})
    chex.assert_trees_all_equal(s2.anchor, optlab.replicate(PARAMS, R))


def test_fedau_weights_follow_the_inverse_participation_rate():
    tx = optlab.fedavg(optax.sgd(0.0), sync_period=1, participation="fedau")
    # replica 0 takes part every round, replica 1 every other round, 2 and 3 every 4th.
    pattern = lambda t: {"participating": jnp.array([True, t % 2 == 1, t % 4 == 3, t % 4 == 3])}
    _, state, _ = run(tx, 8, extra=pattern)
    np.testing.assert_allclose(np.asarray(state.participation.mean_interval), [1.0, 2.0, 4.0, 4.0])


def test_weights_given_per_step_and_negative_traced_weight_is_visible():
    tx = optlab.fedavg(optax.sgd(0.1), sync_period=1)
    w = jnp.array([1.0, 0.0, 0.0, 3.0])
    params, _, _ = run(tx, 1, extra=lambda t: {"weight": w})
    local = inner_only(optax.sgd(0.1), 1)
    expected = jax.tree.map(lambda x: (x[0] + 3 * x[3]) / 4, local)
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[2], params), expected, rtol=1e-6, atol=1e-6
    )
    bad, _, _ = run(tx, 1, extra=lambda t: {"weight": jnp.array([1.0, -1.0, 1.0, 1.0])})
    assert not np.all(np.isfinite(np.asarray(bad["w"])))


def test_pseudo_gradient_clipping_bounds_the_norm():
    c = 0.05
    tx = optlab.outer_optimizer(
        optax.sgd(0.5), optax.sgd(1.0), sync_period=2, max_pseudo_gradient_norm=c
    )
    _, state, _ = run(tx, 2)
    deltas = jax.tree.map(lambda p, x: p[None] - x, PARAMS, inner_only(optax.sgd(0.5), 2))
    norms = jnp.sqrt(sum(jnp.sum(d**2, axis=1) for d in jax.tree.leaves(deltas)))
    assert float(norms.min()) > c  # every replica was clipped
    clipped = jax.tree.map(lambda d: jnp.mean(d * (c / norms)[:, None], 0), deltas)
    moved = jax.tree.map(lambda a, p: p - a[0], state.anchor, PARAMS)
    chex.assert_trees_all_close(moved, clipped, rtol=1e-5, atol=1e-7)
    assert float(optax.global_norm(moved)) <= c * (1 + 1e-6)


def test_streaming_fragments_sync_once_per_period_at_their_offsets():
    H, P = 4, 2
    params = {"a": jnp.zeros(3), "b": jnp.zeros(3)}  # fragment 0 = "a", fragment 1 = "b"
    tx = optlab.streaming_diloco(
        optax.sgd(0.1),
        sync_period=H,
        num_fragments=P,
        overlap_steps=0,
        overlap_mixing=0.0,
        axis_name=None,
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    changed = {"a": [], "b": []}
    for t in range(1, 9):
        u, new = update({"a": jnp.ones(3), "b": jnp.ones(3)}, state, params)
        for k in ("a", "b"):
            if not np.array_equal(np.asarray(new.anchor[k]), np.asarray(state.anchor[k])):
                changed[k].append(t)
        params, state = optax.apply_updates(params, u), new
    assert changed == {"a": [4, 8], "b": [2, 6]}


def test_overlap_merges_tau_steps_late_with_mixing():
    tau, alpha = 1, 0.25
    tx = optlab.outer_optimizer(
        optax.sgd(0.1), optax.sgd(1.0), sync_period=2, overlap_steps=tau, overlap_mixing=alpha
    )
    params, state, hist = run(tx, 3)
    p2, s2 = hist[1]  # sync at step 2: the new anchor is pending, params untouched
    chex.assert_trees_all_close(p2, inner_only(optax.sgd(0.1), 2), rtol=1e-6, atol=1e-6)
    new_anchor = jax.tree.map(lambda x: jnp.mean(x, 0), inner_only(optax.sgd(0.1), 2))
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], s2.pending), new_anchor, rtol=1e-6)
    # step 3: inner step, then θ <- α θ + (1 - α) anchor
    local3 = jax.vmap(lambda p, t: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p, t)))(
        p2, TARGETS
    )
    expected = jax.tree.map(lambda x, a: alpha * x + (1 - alpha) * a[None], local3, new_anchor)
    chex.assert_trees_all_close(params, expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], state.anchor), new_anchor, rtol=1e-6)


def test_fedprox_mu_zero_is_the_inner_optimizer_and_pulls_to_the_anchor():
    base = optlab.fedavg(optax.sgd(0.1), sync_period=3)
    prox0 = optlab.fedavg(optax.chain(optlab.fedprox(0.0), optax.sgd(0.1)), sync_period=3)
    a, _, _ = run(base, 3)
    b, _, _ = run(prox0, 3)
    chex.assert_trees_all_equal(a, b)
    mu = 0.5
    tx = optax.chain(optlab.fedprox(mu), optax.identity())
    p, anchor, g = (
        {"w": jnp.array([1.0, 2.0])},
        {"w": jnp.array([0.0, 4.0])},
        {"w": jnp.array([0.1, 0.1])},
    )
    u, _ = tx.update(g, tx.init(p), p, anchor=anchor)
    np.testing.assert_allclose(np.asarray(u["w"]), [0.1 + 0.5, 0.1 - 1.0])
    with pytest.raises(ValueError, match=r"optlab\.fedprox`.*`anchor`"):
        tx.update(g, tx.init(p), p)


def test_fedopt_outer_step_is_optax_adaptive_on_the_mean_pseudo_gradient():
    outer = optax.yogi(0.05, eps=1e-3)
    tx = optlab.fedopt(optax.sgd(0.1), outer, sync_period=2)
    _, state, _ = run(tx, 2)
    local = inner_only(optax.sgd(0.1), 2)
    delta = jax.tree.map(lambda a, x: a - jnp.mean(x, 0), PARAMS, local)
    u, _ = outer.update(delta, outer.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[0], state.anchor),
        optax.apply_updates(PARAMS, u),
        rtol=1e-5,
        atol=1e-6,
    )


def test_diloco_converges_on_heterogeneous_replicas():
    # inner SGD: the fixed point is the mean of the targets (inner Adam would stop near a
    # coordinate-wise median, where the replicas' sign-like steps cancel)
    tx = optlab.diloco(optax.sgd(0.1, momentum=0.5), outer_learning_rate=0.7, sync_period=5)
    params, _, _ = run(tx, 100)
    optimum = {"w": jnp.mean(TARGETS, 0), "b": jnp.full(2, jnp.mean(TARGETS[:, 0]))}
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], params), optimum, atol=0.05)


# ---------------------------------------------------------------------------
# NoLoCo and gossip
# ---------------------------------------------------------------------------


def _primitives(jaxpr):
    out = set()
    for e in jaxpr.eqns:
        out.add(e.primitive.name)
        for sub in (
            jax.core.jaxprs_in_params(e.params) if hasattr(jax.core, "jaxprs_in_params") else []
        ):
            out |= _primitives(sub)
        for v in e.params.values():
            for j in v if isinstance(v, (tuple, list)) else [v]:
                if hasattr(j, "jaxpr"):
                    out |= _primitives(j.jaxpr)
                elif hasattr(j, "eqns"):
                    out |= _primitives(j)
    return out


def test_noloco_uses_no_all_reduce_and_mixes_anchors():
    # Under vmap, ppermute is batched into a gather; the HLO of the shard_map run shows the
    # collective-permute (tests/test_replicas_multidevice.py).
    tx = optlab.noloco(optax.sgd(0.1), sync_period=2, peer_pull=0.5)
    state = tx.init(PARAMS)
    jaxpr = jax.make_jaxpr(
        jax.vmap(
            lambda p, s, t: tx.update(jax.grad(loss)(p, t), s, p),
            in_axes=(0, optlab.replica_axes(state), 0),
            axis_name="replica",
        )
    )(optlab.replicate(PARAMS, R), optlab.replicate(state, R, optlab.replica_axes(state)), TARGETS)
    prims = _primitives(jaxpr.jaxpr)
    assert not {"psum", "all_gather", "all_to_all"} & prims, prims
    params, state, _ = run(tx, 8)
    assert np.all(np.isfinite(np.asarray(params["w"])))
    spread = float(jnp.std(state.anchor["w"], axis=0).max())
    assert 0 < spread < float(jnp.std(TARGETS, axis=0).max())


def test_gossip_ring_preserves_the_mean_and_torus_needs_two_axes():
    tx = optlab.gossip(optax.sgd(0.1), sync_period=2)
    params, state, _ = run(tx, 2)
    local = inner_only(optax.sgd(0.1), 2)
    chex.assert_trees_all_close(
        jnp.mean(params["w"], 0), jnp.mean(local["w"], 0), rtol=1e-6, atol=1e-6
    )
    expected = (jnp.roll(local["w"], 1, 0) + local["w"] + jnp.roll(local["w"], -1, 0)) / 3
    chex.assert_trees_all_close(params["w"], expected, rtol=1e-6, atol=1e-6)
    assert float(optlab.bytes_on_the_wire(state)) == R * 2 * (5 * 4)
    # torus over a 2 x 2 grid of replicas (nested vmap)
    torus = optlab.gossip(optax.sgd(0.0), axis_name=("row", "col"), topology="torus")
    x = jnp.arange(4.0).reshape(2, 2)
    st = jax.vmap(jax.vmap(torus.init))({"w": x})
    f = jax.vmap(jax.vmap(lambda g, s, p: torus.update(g, s, p), axis_name="col"), axis_name="row")
    u, _ = f({"w": x}, st, {"w": x})
    mixed = x + u["w"]
    assert float(jnp.mean(mixed)) == pytest.approx(float(jnp.mean(x)))
    with pytest.raises(ValueError, match=r"optlab\.gossip`.*axis_name"):
        optlab.gossip(optax.sgd(0.1), topology="torus")


# ---------------------------------------------------------------------------
# Compression and error feedback
# ---------------------------------------------------------------------------


def test_top_k_sends_exactly_k_values_and_ef_residual_plus_sent_is_the_input():
    x = {
        "w": jax.random.normal(jax.random.key(0), (50,)),
        "m": jax.random.normal(jax.random.key(1), (4, 5)),
    }
    c = optlab.top_k(0.1)
    for leaf in jax.tree.leaves(x):
        values, idx = c.encode(leaf.reshape(-1), None)
        k = int(np.ceil(0.1 * leaf.size))
        assert (
            values.shape == (k,) and idx.shape == (k,) and len(set(np.asarray(idx).tolist())) == k
        )
        sent = c.decode((values, idx), leaf.size, leaf.dtype)
        assert int(jnp.sum(sent != 0)) == k
    tx = optlab.compressed_all_reduce(None, c, "ef")
    update = jax.jit(tx.update)
    state = tx.init(x)
    sent, state = update(x, state)
    chex.assert_trees_all_close(jax.tree.map(jnp.add, sent, state.memory), x, rtol=0, atol=0)
    assert float(optlab.bytes_on_the_wire(state)) == (5 + 2) * (4 + 4)
    # the next message carries the residual
    sent2, state2 = update(jax.tree.map(jnp.zeros_like, x), state)
    chex.assert_trees_all_close(jax.tree.map(jnp.add, sent2, state2.memory), state.memory, atol=0)


def test_compressed_all_reduce_across_replicas_and_ef21_tracks_the_mean():
    g = jax.random.normal(jax.random.key(2), (R, 8))
    for compressor in (
        optlab.top_k(0.25),
        optlab.random_k(0.25),
        optlab.scaled_sign(),
        optlab.stochastic_quantization(4),
    ):
        tx = optlab.compressed_all_reduce("replica", compressor, "ef")
        state = jax.vmap(tx.init)({"w": g})
        out, state = jax.jit(jax.vmap(tx.update, axis_name="replica"))({"w": g}, state)
        # every replica gets the same mean of what was sent; sent + residual == input
        assert_replicas_identical(out)
        sent = g - state.memory["w"]
        np.testing.assert_allclose(
            np.asarray(out["w"][0]), np.asarray(jnp.mean(sent, 0)), rtol=1e-5, atol=1e-6
        )
    # EF21 with an exact compressor equals the plain mean; with top-k it converges to it
    for frac, steps in ((1.0, 1), (0.25, 40)):
        tx = optlab.compressed_all_reduce("replica", optlab.top_k(frac), "ef21")
        state = jax.vmap(tx.init)({"w": g})
        f = jax.jit(jax.vmap(tx.update, axis_name="replica"))
        for _ in range(steps):
            out, state = f({"w": g}, state)
        np.testing.assert_allclose(
            np.asarray(out["w"][0]), np.asarray(jnp.mean(g, 0)), rtol=1e-4, atol=1e-5
        )


def test_stochastic_quantization_is_unbiased():
    c = optlab.stochastic_quantization(2)
    x = jnp.array([0.3, -0.7, 1.0, 0.05])
    keys = jax.random.split(jax.random.key(3), 4000)
    mean = jnp.mean(jax.vmap(lambda k: c.decode(c.encode(x, k), 4, jnp.float32))(keys), 0)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(x), atol=0.03)


def test_stochastic_quantization_payload_is_bit_packed_as_counted():
    x = jax.random.normal(jax.random.key(4), (37,))
    m = float(jnp.max(jnp.abs(x)))
    for bits in (3, 8):  # packed bits, and one int8 per entry
        c = optlab.stochastic_quantization(bits)
        payload = jax.jit(c.encode)(x, jax.random.key(5))
        # what would travel is exactly what is counted: ceil(37 * bits / 8) + 4 bytes
        assert sum(a.size * a.dtype.itemsize for a in payload) == c.payload_bytes(37, 4)
        assert c.payload_bytes(37, 4) == -(-37 * bits // 8) + 4
        # unpacking gives codes on the grid, within one level of x
        levels = 2 ** (bits - 1) - 1
        codes = np.asarray(jax.jit(c.decode, static_argnums=(1, 2))(payload, 37, jnp.float32))
        codes = codes * levels / m
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
        assert np.all(np.abs(codes) <= levels + 1e-4)
        assert np.all(np.abs(codes - np.asarray(x) * levels / m) < 1 + 1e-4)


def test_diloco_with_top_k_counts_bytes_and_still_converges():
    # EF21 here: plain EF under the outer Nesterov momentum 0.9 oscillates on this problem
    tx = optlab.diloco(
        optax.sgd(0.1, momentum=0.5),
        sync_period=5,
        compressor=optlab.top_k(0.3),
        error_feedback="ef21",
    )
    params, state, _ = run(tx, 100)
    syncs = 100 // 5
    per_message = 1 * (4 + 4) + 1 * (4 + 4)  # k = 1 of 3 ("w") and 1 of 2 ("b")
    assert float(optlab.bytes_on_the_wire(state)) == syncs * R * per_message
    optimum = jnp.mean(TARGETS, 0)
    assert float(jnp.max(jnp.abs(params["w"][0] - optimum))) < 0.15


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_bad_input_is_named():
    sgd = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"optlab\.diloco`.*`sync_period`.*0"):
        optlab.diloco(sgd, sync_period=0)
    with pytest.raises(TypeError, match=r"optlab\.fedavg`.*`sync_period`"):
        optlab.fedavg(sgd, sync_period=2.5)
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match=r"optlab\.fedavg`.*`weights`"):
            optlab.fedavg(sgd, weights=bad)
    with pytest.raises(TypeError, match=r"optlab\.outer_optimizer`.*`outer`"):
        optlab.outer_optimizer(sgd, "sgd", sync_period=2)
    with pytest.raises(ValueError, match=r"optlab\.outer_optimizer`.*one_peer"):
        optlab.outer_optimizer(sgd, sgd, 2, averaging="one_peer", compressor=optlab.top_k(0.1))
    with pytest.raises(ValueError, match=r"optlab\.top_k`.*`fraction`"):
        optlab.top_k(1.5)
    with pytest.raises(ValueError, match=r"optlab\.streaming_diloco`.*`num_fragments`"):
        optlab.streaming_diloco(sgd, sync_period=2, num_fragments=4)
    with pytest.raises(ValueError, match=r"optlab\.outer_optimizer`.*`error_feedback`"):
        optlab.outer_optimizer(sgd, sgd, 2, compressor=optlab.top_k(0.1), error_feedback="ef3")


def test_unbound_axis_name_is_named():
    tx = optlab.diloco(optax.sgd(0.1), sync_period=2, axis_name="pods")
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"optlab\.diloco`.*'pods'.*not bound"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(ValueError, match=r"optlab\.diloco`.*'pods'.*not bound"):
        jax.jit(tx.update)(PARAMS, state, PARAMS)
    with pytest.raises(ValueError, match=r"'pods'.*not bound"):  # bound under another name
        jax.vmap(tx.update, in_axes=(0, None, 0), axis_name="replica")(
            optlab.replicate(PARAMS, 2), state, optlab.replicate(PARAMS, 2)
        )


def test_replicas_whose_trees_differ_and_wrong_weights_are_named():
    with pytest.raises(ValueError, match=r"optlab\.stack_replicas`.*replica 1"):
        optlab.stack_replicas([{"w": jnp.zeros(3)}, {"w": jnp.zeros(4)}])
    with pytest.raises(ValueError, match=r"optlab\.stack_replicas`.*replica 2"):
        optlab.stack_replicas([{"w": jnp.zeros(3)}, {"w": jnp.zeros(3)}, {"v": jnp.zeros(3)}])
    optlab.check_replica_trees(PARAMS)  # one process: nothing to compare, no error
    tx = optlab.fedavg(optax.sgd(0.1), weights=[1.0, 2.0, 3.0])  # 3 weights, 4 replicas
    with pytest.raises(ValueError, match=r"optlab\.fedavg`.*3 entries.*4 replicas"):
        run(tx, 1)
    tx = optlab.fedavg(optax.sgd(0.1), axis_name=None)
    with pytest.raises(ValueError, match=r"optlab\.fedavg`.*`weight`.*-1"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS, weight=-1.0)
