"""Memory-efficient state (optlab/_memory_efficient.py): the defining property of each method.

* Subset-Norm / Adam-mini: the second moment has the stated reduced shape, and with
  subsets / blocks of one coordinate the method is Adam.
* Projected Adam: moments have rank-r shapes; with the identity projector and full rank it
  is Adam; with full rank it is Adam in the rotated basis (for every refresh period); the
  SVD projector matches ``optax.contrib.galore``; DCT stores indices and finds a gradient's
  DCT support; the online PCA projector converges to a new gradient subspace; leaves that
  are not projected take Adam's step.
* FRUGAL: the residual path keeps no state and adds sign((I - PP^T) G).
* BAdam: inactive blocks are untouched, the state holds one block, moments reset on a switch.
* Quantized moments: round-trip error within the stated bound; bf16 stochastic rounding
  unbiased and deterministic for a fixed key.
* Convergence of every named optimizer on a small problem; bad input.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab

KEY = jax.random.key(0)


def _normal(shape, seed=0):
    return jax.random.normal(jax.random.fold_in(KEY, seed), shape, jnp.float32)


def _grads(params, steps, seed=0):
    return [
        jax.tree.map(lambda x, i=i: _normal(x.shape, 100 * seed + i + hash(x.shape) % 97), params)
        for i in range(steps)
    ]


def _run(tx, params, grads):
    state = tx.init(params)
    update = jax.jit(tx.update)
    out, states = [], []
    for g in grads:
        u, state = update(g, state, params)
        out.append(u)
        states.append(state)
    return out, states


# ---------------------------------------------------------------------------
# Subset-Norm and Adam-mini
# ---------------------------------------------------------------------------


def test_subset_norm_state_shapes():
    params = {
        "w": jnp.ones((4, 16)),
        "t": jnp.ones((16, 4)),
        "k": jnp.ones((2, 3, 5)),
        "b": jnp.ones((7,)),
        "s": jnp.ones(()),
    }
    nu = optlab.scale_by_subset_norm().init(params).nu
    assert nu["w"].shape == (4, 1) and nu["t"].shape == (1, 4) and nu["k"].shape == (2, 3, 1)
    assert nu["b"].shape == (1,) and nu["s"].shape == ()
    for name in ("w", "t"):  # a matrix keeps at most sqrt(d) values
        assert nu[name].size <= math.isqrt(params[name].size)
    nu = optlab.scale_by_subset_norm(subset_size=5).init(params).nu
    assert nu["w"].shape == (13,) and nu["b"].shape == (2,) and nu["s"].shape == (1,)


def test_subset_norm_value_is_the_subset_mean_square():
    g = {"w": _normal((3, 8)), "v": _normal((7,), 1)}
    b2 = 0.9
    state = optlab.scale_by_subset_norm(b2=b2).init(g)
    _, state = optlab.scale_by_subset_norm(b2=b2).update(g, state)
    chex.assert_trees_all_close(
        state.nu["w"], (1 - b2) * jnp.mean(g["w"] ** 2, 1, keepdims=True), rtol=1e-6
    )
    _, state = optlab.scale_by_subset_norm(b2=b2, subset_size=3).update(
        g, optlab.scale_by_subset_norm(subset_size=3).init(g)
    )
    v = g["v"]
    want = (1 - b2) * jnp.stack([jnp.mean(v[:3] ** 2), jnp.mean(v[3:6] ** 2), v[6] ** 2])
    chex.assert_trees_all_close(state.nu["v"], want, rtol=1e-6)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: optlab.scale_by_subset_norm(subset_size=1),
        lambda: optlab.scale_by_adam_mini(reduce_axes=()),
    ],
    ids=["subset_norm_size_1", "adam_mini_no_reduction"],
)
def test_one_coordinate_blocks_are_adam(factory):
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
    grads = _grads(params, 3)
    got, _ = _run(factory(), params, grads)
    want, _ = _run(optax.scale_by_adam(), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_adam_mini_one_value_per_block():
    params = {"q": jnp.ones((8, 2, 4)), "w": jnp.ones((5, 3)), "b": jnp.ones((3,))}
    nu = optlab.scale_by_adam_mini().init(params).nu
    assert all(v.size == 1 for v in jax.tree.leaves(nu))
    tx = optlab.scale_by_adam_mini(reduce_axes=lambda p: {"q": (0, 2), "w": (0,), "b": None})
    nu = tx.init(params).nu
    assert nu["q"].shape == (1, 2, 1) and nu["w"].shape == (1, 3) and nu["b"].shape == (1,)
    g = {k: _normal(v.shape, i) for i, (k, v) in enumerate(params.items())}
    _, state = tx.update(g, tx.init(params))
    chex.assert_trees_all_close(
        state.nu["q"][0, :, 0], 0.001 * jnp.mean(g["q"] ** 2, axis=(0, 2)), rtol=1e-6
    )


def test_subspace_momentum_decomposition():
    """numerator = P m_low + (I - P P^T) g, with m_low Adam's debiased EMA of P^T g."""
    params = {"w": jnp.ones((6, 4))}
    b1, b2, eps = 0.8, 0.9, 1e-8
    tx = optlab.scale_by_subset_norm(b1, b2, eps, momentum_rank=2, update_every=1000)
    grads = _grads(params, 3)
    ups, states = _run(tx, params, grads)
    p = states[0].mu.projector["w"]  # (6, 2): the larger side, fixed after step 0
    m = jnp.zeros((2, 4))
    v = jnp.zeros((1, 4))  # the largest axis (rows, 6) is reduced
    for t, (g, u) in enumerate(zip(grads, ups), 1):
        gw = g["w"]
        m = b1 * m + (1 - b1) * (p.T @ gw)
        v = b2 * v + (1 - b2) * jnp.mean(gw**2, axis=0, keepdims=True)
        num = p @ (m / (1 - b1**t)) + (gw - p @ (p.T @ gw))
        want = num / (jnp.sqrt(v / (1 - b2**t)) + eps)
        chex.assert_trees_all_close(u["w"], want, rtol=2e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Projected Adam (GaLore, DCT, online PCA), FRUGAL
# ---------------------------------------------------------------------------


def test_projected_moments_have_rank_r_shapes_and_rank_is_clamped():
    params = {
        "tall": jnp.ones((9, 4)),
        "wide": jnp.ones((3, 7)),
        "b": jnp.ones((5,)),
        "k": jnp.ones((2, 3, 4)),
        "tiny": jnp.ones((1, 6)),
    }
    state = optlab.scale_by_projected_adam(rank=2).init(params)
    mu, proj = state.inner.mu, state.projector
    assert mu["tall"].shape == (2, 4) and proj["tall"].shape == (9, 2)
    assert mu["wide"].shape == (2, 3) and proj["wide"].shape == (7, 2)
    assert mu["b"].shape == (5,) and mu["k"].shape == (2, 3, 4) and mu["tiny"].shape == (1, 6)
    state = optlab.scale_by_projected_adam(rank=2, side="small").init(params)
    assert state.inner.mu["tall"].shape == (2, 9) and state.projector["tall"].shape == (4, 2)
    # rank above a side: clamped to it (documented), same numbers as that rank
    big = optlab.scale_by_projected_adam(rank=100).init(params)
    assert big.inner.mu["wide"].shape == (3, 3) and big.projector["tall"].shape == (9, 4)
    grads = _grads(params, 2)
    a, _ = _run(optlab.scale_by_projected_adam(rank=100), params, grads)
    b, _ = _run(optlab.scale_by_projected_adam(rank=4), params, grads)
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
    dct = optlab.scale_by_projected_adam(rank=2, projector="dct").init(params).projector
    assert dct["tall"].shape == (2,) and dct["tall"].dtype == jnp.int32


def test_identity_projector_full_rank_is_adam():
    params = {"w": jnp.ones((4, 4)), "v": jnp.ones((3, 3)), "b": jnp.ones((4,))}
    grads = _grads(params, 3)
    got, _ = _run(optlab.scale_by_projected_adam(rank=4, projector="identity"), params, grads)
    want, _ = _run(optax.scale_by_adam(), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("update_every", [1, 1000])
def test_full_rank_galore_is_adam_in_the_rotated_basis(update_every):
    """update_t = P_t Adam_t(P_t^T G_t), Adam's moments running over the rotated gradients;
    with side="small" and full rank, P_t is square orthogonal (so nothing is dropped)."""
    params = {"tall": jnp.ones((6, 4)), "wide": jnp.ones((3, 5))}
    grads = _grads(params, 4)
    tx = optlab.scale_by_projected_adam(rank=8, update_every=update_every, side="small")
    ups, states = _run(tx, params, grads)
    adam = optax.scale_by_adam()
    a_state = None
    for g, u, s in zip(grads, ups, states):
        p = s.projector
        for name in p:
            assert p[name].shape[0] == p[name].shape[1]  # square
            chex.assert_trees_all_close(p[name].T @ p[name], jnp.eye(p[name].shape[0]), atol=1e-5)
        rot = {"tall": p["tall"].T @ g["tall"].T, "wide": p["wide"].T @ g["wide"]}
        a_state = adam.init(rot) if a_state is None else a_state
        a_upd, a_state = adam.update(rot, a_state)
        want = {"tall": (p["tall"] @ a_upd["tall"]).T, "wide": p["wide"] @ a_upd["wide"]}
        chex.assert_trees_all_close(u, want, rtol=1e-4, atol=1e-5)


def test_galore_matches_optax_contrib_galore():
    params = {"tall": _normal((8, 5)), "wide": _normal((4, 9), 1), "b": _normal((5,), 2)}
    grads = _grads(params, 5)
    got, _ = _run(optlab.galore(0.1, rank=2, update_proj_gap=2, weight_decay=0.01), params, grads)
    want, _ = _run(
        optax.contrib.galore(0.1, rank=2, update_proj_gap=2, weight_decay=0.01), params, grads
    )
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)


def test_unprojected_leaves_take_adam_steps():
    params = {
        "w": jnp.ones((5, 4)),
        "small": jnp.ones((1, 5)),
        "b": jnp.ones((4,)),
        "k": jnp.ones((2, 2, 3)),
    }
    grads = _grads(params, 3)
    tx = optlab.scale_by_projected_adam(
        rank=2, mask=lambda p: {k: k != "w" for k in p}, min_dim_size=2
    )
    got, states = _run(tx, params, grads)
    want, _ = _run(optax.scale_by_adam(), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)  # "w" masked out: Adam too
    assert states[0].projector["w"].shape == (1,)  # a placeholder (orbax saves no empty arrays)


def test_dct_projector_finds_the_support_and_stores_indices():
    k, cols = 8, jnp.array([2, 5])
    d = optlab._memory_efficient._dct_columns(k, jnp.arange(k))
    chex.assert_trees_all_close(d.T @ d, jnp.eye(k), atol=1e-5)  # orthonormal basis
    g = {"w": d[:, cols] @ _normal((2, 3))}  # (8, 3): the larger side is projected
    tx = optlab.scale_by_projected_adam(rank=2, projector="dct")
    ups, states = _run(tx, {"w": jnp.ones((8, 3))}, [g])
    assert set(np.asarray(states[0].projector["w"]).tolist()) == {2, 5}
    # the gradient lies in the subspace: the step is Adam in the DCT coordinates
    p = d[:, np.sort(np.asarray(states[0].projector["w"]))]
    low = p.T @ g["w"]
    chex.assert_trees_all_close(ups[0]["w"], p @ (low / (jnp.abs(low) + 1e-8)), atol=1e-4)


def test_online_pca_projector_tracks_a_new_subspace():
    basis_a = jnp.linalg.qr(_normal((10, 2), 1))[0]
    basis_b = jnp.linalg.qr(_normal((10, 2), 2))[0]
    tx = optlab.scale_by_projected_adam(
        rank=2, projector="online_pca", update_every=1, projector_lr=0.5
    )
    params = {"w": jnp.ones((10, 4))}
    state = tx.init(params)
    update = jax.jit(tx.update)
    _, state = update({"w": basis_a @ _normal((2, 4), 3)}, state)  # SVD at step 0: exact
    p = state.projector["w"]
    assert float(jnp.linalg.norm(basis_a - p @ (p.T @ basis_a))) < 1e-4
    residuals = []
    for i in range(40):  # then gradients from another subspace: one PCA step each
        g = basis_b @ _normal((2, 4), 10 + i)
        _, state = update({"w": g}, state)
        p = state.projector["w"]
        residuals.append(float(jnp.linalg.norm(basis_b - p @ (p.T @ basis_b))))
        chex.assert_trees_all_close(p.T @ p, jnp.eye(2), atol=1e-4)
    assert residuals[-1] < 1e-2 < residuals[0]
    assert residuals[-1] < 0.1 * residuals[0]


def test_frugal_residual_is_state_free_sign_sgd():
    params = {"w": jnp.ones((6, 4)), "b": jnp.ones((3,))}
    grads = _grads(params, 3)
    kw = {"rank": 2, "update_every": 2}
    frugal, f_states = _run(optlab.scale_by_frugal(residual_scale=0.5, **kw), params, grads)
    galore, g_states = _run(optlab.scale_by_projected_adam(**kw), params, grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(f_states[-1], g_states[-1])  # no more state
    for g, f_u, g_u, s in zip(grads, frugal, galore, f_states):
        p = s.projector["w"]
        res = g["w"] - p @ (p.T @ g["w"])
        chex.assert_trees_all_close(f_u["w"] - g_u["w"], 0.5 * jnp.sign(res), atol=1e-4)
        chex.assert_trees_all_close(f_u["b"], g_u["b"])  # unprojected: plain Adam


# ---------------------------------------------------------------------------
# BAdam
# ---------------------------------------------------------------------------


def test_badam_updates_one_block_and_keeps_state_for_one_block():
    params = {
        "a": jnp.ones((2, 3)),
        "b": jnp.ones((4,)),
        "c": {"x": jnp.ones((2,)), "y": jnp.ones((3,))},
    }
    tx = optlab.scale_by_badam(switch_every=2)
    state = tx.init(params)
    assert state.mu.shape == (6,) and state.nu.shape == (6,)  # the largest block, "a"
    grads = _grads(params, 8)
    ups, states = _run(tx, params, grads)
    active = ["a", "a", "b", "b", "c", "c", "a", "a"]
    adam = optax.scale_by_adam()
    for t, (g, u) in enumerate(zip(grads, ups)):
        for name in params:
            if name != active[t]:
                chex.assert_trees_all_equal(u[name], jax.tree.map(jnp.zeros_like, u[name]))
        if t % 2 == 0:  # a switch: fresh Adam on the active block
            ref_state = adam.init(params[active[t]])
        ref, ref_state = adam.update(g[active[t]], ref_state)
        chex.assert_trees_all_close(u[active[t]], ref, rtol=1e-5, atol=1e-6)
    for s in states:
        assert s.mu.shape == (6,)


def test_badam_random_order_visits_each_block_once_per_epoch_and_is_reproducible():
    params = {str(i): jnp.ones((2,)) for i in range(4)}
    grads = [jax.tree.map(jnp.ones_like, params)] * 8

    def order(seed):
        ups, _ = _run(
            optlab.scale_by_badam(switch_every=1, order="random", seed=seed), params, grads
        )
        return [next(k for k in params if float(jnp.abs(u[k]).sum()) > 0) for u in ups]

    first = order(3)
    assert sorted(first[:4]) == sorted(params) and sorted(first[4:]) == sorted(params)
    assert first == order(3)
    desc, _ = _run(optlab.scale_by_badam(switch_every=1, order="descending"), params, grads[:2])
    assert float(jnp.abs(desc[0]["3"]).sum()) > 0 and float(jnp.abs(desc[1]["2"]).sum()) > 0


def test_badam_label_function_and_uncovered_labels():
    params = {"w1": jnp.ones((2, 2)), "b1": jnp.ones((2,)), "w2": jnp.ones((2, 2))}
    tx = optlab.scale_by_badam(blocks=lambda p: {k: k[0] for k in p})  # "w" and "b" blocks
    assert tx.init(params).mu.shape == (8,)
    with pytest.raises(ValueError, match=r"optlab\.scale_by_badam`.*label every"):
        optlab.scale_by_badam(blocks={"w1": "a", "b1": None, "w2": "a"}).init(params)
    with pytest.raises(ValueError, match=r"optlab\.scale_by_badam`.*one label per"):
        optlab.scale_by_badam(blocks={"w1": "a", "b1": "b"}).init(params)
    with pytest.raises(ValueError, match=r"optlab\.badam`.*label every"):
        optlab.badam(0.1, blocks={"w1": "a", "b1": None, "w2": "a"}).init(params)


# ---------------------------------------------------------------------------
# Quantized and bf16 state, stochastic rounding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["dynamic", "linear"])
@pytest.mark.parametrize("signed", [True, False])
def test_quantization_round_trip_error_bound(quantization, signed):
    me = optlab._memory_efficient
    x = _normal((1000,)) * jnp.logspace(-4, 1, 1000)
    x = x if signed else x**2
    code = None
    if quantization == "dynamic":
        code = optlab.dynamic_quantization_map(signed)
        assert code.shape == (256,) and np.all(np.diff(code) > 0)
        assert code[0] == (-0.99296875 if signed else 0.0) and code[-1] == 1.0
    q = me._quantize(x, 256, code)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == (4, 256)
    back = me._dequantize(q, x, code)
    absmax = jnp.repeat(q.absmax, 256)[:1000]
    err = jnp.abs(back - x)
    if code is None:
        bound = absmax / 254.0
    else:  # nearest code: half the gap between the two codes around x / absmax
        table = jnp.asarray(code)
        normed = x / absmax
        hi = jnp.clip(jnp.searchsorted(table, normed), 1, 255)
        bound = absmax * (table[hi] - table[hi - 1]) / 2 + 1e-12
        bound = jnp.where(normed < table[0], absmax * (table[0] - normed), bound)  # below -0.993
        # the widest gap (top decade) bounds every element: 0.0070 * absmax
        assert float(jnp.max(bound / absmax)) <= np.max(np.diff(code)) / 2 + 1e-6
    assert bool(jnp.all(err <= bound * (1 + 1e-5)))


def test_quantized_adam_tracks_adam_and_stores_one_byte_per_element():
    params = {"w": _normal((64, 32)), "b": _normal((32,), 1)}
    grads = _grads(params, 6)
    tx = optlab.quantized_moments(optax.adam(1e-2), min_size=1)
    got, states = _run(tx, params, grads)
    want, _ = _run(optax.adam(1e-2), params, grads)
    for g_u, w_u in zip(got, want):
        for k in params:  # per-element relative error of the steps, a few percent at most
            rel = jnp.abs(g_u[k] - w_u[k]) / (jnp.abs(w_u[k]) + 1e-4)
            # a few elements far below their block's absmax lose their second moment to the
            # 8-bit map (flushed to the smallest code) and take a larger step next time
            # and the dynamic map's relative precision is coarse far below the absmax (half a
            # gap is 4.5 / 2**i of the value at the bottom of decade i): a few % typically
            assert float(jnp.median(rel)) < 0.02 and float(jnp.percentile(rel, 95)) < 0.25
    mu = states[-1].inner[0].mu["w"]
    assert mu.codes.dtype == jnp.uint8 and mu.absmax.shape == (8,)
    n_q = sum(x.size for x in jax.tree.leaves(states[-1]) if x.dtype == jnp.uint8)
    assert n_q == 2 * (2048 + 256)  # mu and nu of both leaves, padded to blocks of 256


def test_stochastic_round_is_unbiased_bounded_and_deterministic():
    x = jnp.asarray(_normal((64,)) * 3.0)
    n = 4000
    keys = jax.random.split(KEY, n)
    draws = jax.vmap(lambda k: optlab.stochastic_round(x, k).astype(jnp.float32))(keys)
    lo = x.astype(jnp.bfloat16).astype(jnp.float32)
    ulp = jnp.abs(
        jnp.nextafter(jnp.abs(lo).astype(jnp.bfloat16), jnp.asarray(jnp.inf, jnp.bfloat16)).astype(
            jnp.float32
        )
        - jnp.abs(lo)
    )
    assert bool(jnp.all(jnp.abs(draws - x[None]) < 1.01 * ulp[None]))  # one of the two neighbours
    # mean over draws: within 5 standard errors (a Bernoulli over one ulp: sd <= ulp / 2)
    assert bool(jnp.all(jnp.abs(draws.mean(0) - x) <= 5 * 0.5 * ulp / math.sqrt(n)))
    nearest_bias = jnp.abs(lo - x).mean()
    assert float(jnp.abs(draws.mean(0) - x).mean()) < 0.2 * float(nearest_bias)
    a = optlab.stochastic_round(x, jax.random.key(7))
    b = optlab.stochastic_round(x, jax.random.key(7))
    chex.assert_trees_all_equal(a, b)
    special = jnp.array([0.0, jnp.inf, -jnp.inf, 1.0], jnp.float32)
    chex.assert_trees_all_equal(optlab.stochastic_round(special, KEY), special.astype(jnp.bfloat16))
    assert bool(jnp.isnan(optlab.stochastic_round(jnp.array([jnp.nan]), KEY))[0])


def test_stochastic_apply_updates_moves_bf16_params_on_average():
    p = {"w": jnp.ones((20000,), jnp.bfloat16), "f": jnp.ones((3,))}
    u = {"w": jnp.full((20000,), 1e-3), "f": jnp.full((3,), 0.5)}
    new = optlab.stochastic_apply_updates(p, u, KEY)
    assert new["w"].dtype == jnp.bfloat16 and new["f"].dtype == jnp.float32
    assert abs(float(new["w"].astype(jnp.float32).mean()) - 1.001) < 2e-4
    plain = optax.apply_updates(p, u)
    assert float(plain["w"].astype(jnp.float32).mean()) == 1.0  # round to nearest loses it
    chex.assert_trees_all_close(new["f"], jnp.full((3,), 1.5))


def test_bf16_moments_keep_bf16_state_and_track_adam():
    params = {"w": _normal((16, 8))}
    grads = _grads(params, 5)
    got, states = _run(optlab.bf16_moments(optax.adam(1e-2)), params, grads)
    want, _ = _run(optax.adam(1e-2), params, grads)
    assert states[-1].inner[0].mu["w"].dtype == jnp.bfloat16
    assert states[-1].inner[0].count.dtype == jnp.int32
    chex.assert_trees_all_close(got, want, rtol=5e-2, atol=2e-4)


# ---------------------------------------------------------------------------
# Named optimizers: convergence, describe
# ---------------------------------------------------------------------------

# Convergence of the six named optimizers: tests/test_aliases.py (CONVERGENCE table).


def _bytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_describe_reports_eval_shape_state_bytes_for_galore():
    params = {
        "w": jax.ShapeDtypeStruct((512, 128), jnp.float32),
        "b": jax.ShapeDtypeStruct((128,), jnp.float32),
    }
    state = jax.eval_shape(optlab.galore(1e-3, rank=16).init, params)
    ratio = _bytes(state) / _bytes(params)
    # per matrix: a 512 x 16 projector and two 16 x 128 moments; the bias: Adam and a
    # one-element projector placeholder; two int32 counts (the projection's and Adam's)
    want = (512 * 16 + 2 * 16 * 128 + 2 * 128 + 1 + 2) * 4 / ((512 * 128 + 128) * 4)
    assert abs(ratio - want) < 1e-9
    text = optlab.describe("galore", params, rank=16)
    assert f"state bytes per parameter byte: {ratio:.2f}" in text


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory,kwargs,match",
    [
        (optlab.scale_by_projected_adam, {"rank": 0}, "`rank` must be >= 1"),
        (optlab.scale_by_projected_adam, {"rank": 2.0}, "`rank` must be a Python int"),
        (optlab.scale_by_projected_adam, {"update_every": 0}, "`update_every` must be >= 1"),
        (optlab.scale_by_projected_adam, {"projector": "qr"}, "`projector` must be one of"),
        (optlab.scale_by_projected_adam, {"side": "left"}, "`side` must be"),
        (optlab.scale_by_frugal, {"residual": "adam"}, "`residual` must be"),
        (optlab.scale_by_frugal, {"rank": -1}, "`rank` must be >= 1"),
        (optlab.scale_by_subset_norm, {"subset_size": 0}, "`subset_size` must be >= 1"),
        (optlab.scale_by_subset_norm, {"momentum_rank": 0}, "`momentum_rank` must be >= 1"),
        (optlab.scale_by_badam, {"switch_every": 0}, "`switch_every` must be >= 1"),
        (optlab.scale_by_badam, {"order": "shuffled"}, "`order` must be"),
        (lambda **kw: optlab.galore(1e-3, **kw), {"rank": 0}, r"optlab\.galore`: `rank`"),
        (
            lambda **kw: optlab.galore(1e-3, **kw),
            {"update_proj_gap": 0},
            r"optlab\.galore`: `update_proj_gap`",
        ),
        (
            lambda **kw: optlab.frugal(1e-3, **kw),
            {"update_every": 0},
            r"optlab\.frugal`: `update_every`",
        ),
        (
            lambda **kw: optlab.quantized_moments(optax.adam(1e-3), **kw),
            {"quantization": "fp8"},
            "`quantization` must be",
        ),
        (
            lambda **kw: optlab.quantized_moments(optax.adam(1e-3), **kw),
            {"block_size": 0},
            "`block_size` must be >= 1",
        ),
    ],
)
def test_bad_structural_arguments(factory, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory(**kwargs)


def test_bad_reduce_axes_and_stochastic_round_dtype():
    with pytest.raises(ValueError, match=r"optlab\.scale_by_adam_mini`: `reduce_axes`"):
        optlab.scale_by_adam_mini(reduce_axes=(3,)).init({"w": jnp.ones((2, 2))})
    with pytest.raises(TypeError, match="`dtype` must be bfloat16"):
        optlab.stochastic_round(jnp.ones(3), KEY, jnp.float16)
    with pytest.raises(TypeError, match="float32"):
        optlab.stochastic_round(jnp.ones(3, jnp.int32), KEY)
