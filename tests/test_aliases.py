"""Named optimizers: equality with optax, hand-derived trajectories, convergence, validation."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import optlab
from helpers import fixed_params, parabola, quadratic_loss, rosenbrock, run_optimizer, tree_allclose


def _hvp_fn(loss):
    return lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]


def _hvp_extra(loss):
    return lambda p: {"hvp_fn": _hvp_fn(loss)}


# ---------------------------------------------------------------------------
# Numerical equality with optax (20 steps, 1e-6)
# ---------------------------------------------------------------------------

_is_matrix = lambda p: jax.tree.map(lambda x: x.ndim == 2, p)  # noqa: E731

OPTAX_EQUIVALENT = {
    "sgd": (lambda: optlab.sgd(0.1), lambda: optax.sgd(0.1)),
    "sgd_momentum": (lambda: optlab.sgd(0.1, momentum=0.9), lambda: optax.sgd(0.1, momentum=0.9)),
    "sgd_nesterov": (
        lambda: optlab.sgd(0.1, momentum=0.9, nesterov=True),
        lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    ),
    "adam": (lambda: optlab.adam(1e-2, b1=0.8), lambda: optax.adam(1e-2, b1=0.8)),
    "adamw": (
        lambda: optlab.adamw(1e-2, weight_decay=1e-2, mask=_is_matrix),
        lambda: optax.adamw(1e-2, weight_decay=1e-2, mask=_is_matrix),
    ),
    "adamw_nesterov_schedule": (
        lambda: optlab.adamw(optax.cosine_decay_schedule(1e-2, 20), nesterov=True),
        lambda: optax.adamw(optax.cosine_decay_schedule(1e-2, 20), nesterov=True),
    ),
    "amsgrad": (lambda: optlab.amsgrad(1e-2), lambda: optax.amsgrad(1e-2)),
    "lion": (
        lambda: optlab.lion(1e-3, weight_decay=1e-2),
        lambda: optax.lion(1e-3, weight_decay=1e-2),
    ),
    "lamb": (
        lambda: optlab.lamb(1e-2, weight_decay=1e-2),
        lambda: optax.lamb(1e-2, weight_decay=1e-2),
    ),
    "lars": (
        lambda: optlab.lars(0.1, weight_decay=1e-3),
        lambda: optax.lars(0.1, weight_decay=1e-3),
    ),
    "lars_masked_nesterov": (
        lambda: optlab.lars(0.1, weight_decay=1e-3, trust_ratio_mask=_is_matrix, nesterov=True),
        lambda: optax.lars(0.1, weight_decay=1e-3, trust_ratio_mask=_is_matrix, nesterov=True),
    ),
    "adafactor": (
        lambda: optlab.adafactor(1e-2, min_dim_size_to_factor=2),
        lambda: optax.adafactor(1e-2, min_dim_size_to_factor=2),
    ),
    "adafactor_momentum_decay": (
        lambda: optlab.adafactor(
            1e-2,
            min_dim_size_to_factor=2,
            momentum=0.9,
            weight_decay_rate=1e-3,
            clipping_threshold=None,
        ),
        lambda: optax.adafactor(
            1e-2,
            min_dim_size_to_factor=2,
            momentum=0.9,
            weight_decay_rate=1e-3,
            clipping_threshold=None,
        ),
    ),
    "ademamix": (
        lambda: optlab.ademamix(1e-2, weight_decay=1e-2),
        lambda: contrib.ademamix(1e-2, weight_decay=1e-2),
    ),
    "muon": (
        lambda: optlab.muon(1e-2, nesterov=False, weight_decay=1e-2),
        lambda: contrib.muon(1e-2, nesterov=False, weight_decay=1e-2),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTAX_EQUIVALENT))
def test_matches_optax(name):
    ours, ref = OPTAX_EQUIVALENT[name]
    params = fixed_params()
    p1, _, l1 = run_optimizer(ours(), quadratic_loss, params, 20)
    p2, _, l2 = run_optimizer(ref(), quadratic_loss, params, 20)
    np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-6)
    tree_allclose(p1, p2)


def test_sophia_matches_optax_contrib():
    params = fixed_params()
    kw = dict(b1=0.9, b2=0.95, weight_decay=1e-2, gamma=0.05, update_interval=3)
    ours = optlab.sophia(1e-2, **kw, seed=3)
    ref = contrib.sophia(
        1e-2,
        **kw,
        hessian_diagonal_fn=(
            optax.contrib._sophia.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(3))
        ),
    )
    p1, _, l1 = run_optimizer(ours, quadratic_loss, params, 20, _hvp_extra(quadratic_loss))
    p2, _, l2 = run_optimizer(ref, quadratic_loss, params, 20, lambda p: {"obj_fn": quadratic_loss})
    np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-6)
    tree_allclose(p1, p2)


def _newton_schulz_np(x, steps=5, coeffs=(3.4445, -4.7750, 2.0315), eps=1e-8):
    transposed = x.shape[0] > x.shape[1]
    x = x.T if transposed else x
    x = x / (np.linalg.norm(x) + eps)
    a, b, c = coeffs
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def test_muon_nesterov_follows_reference_code():
    """Nesterov Muon: Keller Jordan's reference on matrices, optax's AdamW on the rest.

    The reference orthogonalizes ``grad.lerp(buf, beta)`` with ``buf`` the EMA of
    gradients (no bias correction); optax.contrib.muon bias-corrects the two terms
    separately, so on matrices only the reference is matched, while the other leaves
    (plain AdamW with Nesterov) match optax.contrib.muon exactly.
    """
    params = fixed_params()
    lr, beta, wd = 1e-2, 0.95, 1e-2
    ours = optlab.muon(lr, beta=beta, weight_decay=wd)
    ref = contrib.muon(lr, beta=beta, weight_decay=wd)
    p1, _, _ = run_optimizer(ours, quadratic_loss, params, 5)
    p2, _, _ = run_optimizer(ref, quadratic_loss, params, 5)
    tree_allclose({k: p1[k] for k in ("b", "s")}, {k: p2[k] for k in ("b", "s")})

    w = np.asarray(params["w"], np.float64)  # quadratic_loss: leaf order b, s, w -> c = 2.0
    buf = np.zeros_like(w)
    for _ in range(5):
        g = 2.0 * (w - 0.3)
        buf = beta * buf + (1 - beta) * g
        x = _newton_schulz_np((1 - beta) * g + beta * buf)
        x = x * max(1.0, w.shape[1] / w.shape[0]) ** 0.5
        w = w - lr * (x + wd * w)
    np.testing.assert_allclose(p1["w"], w, rtol=1e-5, atol=1e-5)


def test_drop_in_signatures():
    """Optimizers that optax also has take optax's arguments, in optax's order."""
    pairs = [
        (optlab.sgd, optax.sgd),
        (optlab.adamw, optax.adamw),
        (optlab.lion, optax.lion),
        (optlab.lamb, optax.lamb),
        (optlab.lars, optax.lars),
        (optlab.adafactor, optax.adafactor),
        (optlab.ademamix, contrib.ademamix),
    ]
    for ours, theirs in pairs:
        ref = list(inspect.signature(theirs).parameters)
        assert list(inspect.signature(ours).parameters)[: len(ref)] == ref, ours.__name__
    ours = list(inspect.signature(optlab.amsgrad).parameters)
    assert ours[:6] == list(inspect.signature(optax.amsgrad).parameters)[:6]
    ours = set(inspect.signature(optlab.muon).parameters) - {"muon_mask"}  # optlab's addition
    assert ours <= set(inspect.signature(contrib.muon).parameters)
    ours = list(inspect.signature(optlab.sophia).parameters)
    assert ours[:9] == list(inspect.signature(contrib.sophia).parameters)[:9]
    assert list(inspect.signature(optlab.yogi).parameters) == list(
        inspect.signature(optax.yogi).parameters
    )
    ours = list(inspect.signature(optlab.adopt).parameters)
    assert ours[:5] == list(inspect.signature(contrib.adopt).parameters)[:5]


# ---------------------------------------------------------------------------
# Hand-derived 3-step references (NumPy, float64, written from the papers / code)
# ---------------------------------------------------------------------------

# Leaf "c" starts just beside its minimum at several distances, so that steps overshoot
# and the gradient changes sign: momentum (b1, b2) then shows even in sign-based steps.
P0 = {
    "w": np.array([[0.8, -1.2], [0.4, 0.9], [-0.7, 0.3]]),
    "b": np.array([0.5, -1.5]),
    "c": np.array([0.004, 0.011, 0.019, 0.027, 0.035, 0.043, 0.047, 0.06]) * np.array([1, -1] * 4),
}
CURV = {
    "w": np.array([[1.0, 2.0], [0.5, 3.0], [1.5, 1.0]]),
    "b": np.array([2.0, 0.7]),
    "c": np.full(8, 2.0),
}
TARGET = {"w": np.full((3, 2), 0.2), "b": np.array([-0.3, 0.4]), "c": np.zeros(8)}
LEAVES = ("w", "b", "c")
A_INV = np.array([[1.0, -2.0], [0.5, 0.3], [-1.0, 0.8]])  # direction of the scale-invariant loss


def _quad_loss(params):
    return sum(
        0.5
        * jnp.sum(
            jnp.asarray(CURV[k], jnp.float32)
            * (params[k] - jnp.asarray(TARGET[k], jnp.float32)) ** 2
        )
        for k in LEAVES
    )


def _quad_grad(p):
    return {k: CURV[k] * (p[k] - TARGET[k]) for k in p}


def _inv_loss(params):
    """Scale-invariant in w (gradient orthogonal to w); quadratic in b and c."""
    w = params["w"]
    inv = jnp.sum(jnp.asarray(A_INV, jnp.float32) * w) / jnp.sqrt(jnp.sum(w * w))
    return inv + _quad_loss({**params, "w": jnp.asarray(TARGET["w"], jnp.float32)})


def _inv_grad(p):
    w = p["w"]
    n = np.linalg.norm(w)
    return {**_quad_grad(p), "w": A_INV / n - np.sum(A_INV * w) * w / n**3}


def _adam_dir(g, st, key, t, b1, b2, eps):
    m = st.setdefault(("m", key), 0.0) * b1 + (1 - b1) * g
    v = st.setdefault(("v", key), 0.0) * b2 + (1 - b2) * g * g
    st[("m", key)], st[("v", key)] = m, v
    return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def _project(d, g, w, delta, wd_ratio, eps):
    """AdamP's projection (official code, channel view on Flax's last axis, then layer)."""
    if w.ndim <= 1:
        return d, 1.0
    for axes in [tuple(range(w.ndim - 1)), tuple(range(w.ndim))]:
        dim = int(np.prod([w.shape[i] for i in axes]))
        dot = np.sum(g * w, axis=axes, keepdims=True)
        gn = np.sqrt(np.sum(g * g, axis=axes, keepdims=True))
        wn = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
        cos = np.abs(dot) / (np.maximum(gn, eps) * np.maximum(wn, eps))
        if cos.max() < delta / np.sqrt(dim):
            w_hat = w / (wn + eps)
            return d - w_hat * np.sum(w_hat * d, axis=axes, keepdims=True), wd_ratio
    return d, 1.0


def _sinkhorn_np(x, iters, eps):
    if x.ndim != 2:
        return np.sqrt(x.size) * x / (np.linalg.norm(x) + eps)
    m, n = x.shape
    for _ in range(iters):
        x = np.sqrt(n) * x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        x = np.sqrt(m) * x / (np.linalg.norm(x, axis=0, keepdims=True) + eps)
    return x


def _cautious_np(d, g, eps=1e-8):
    mask = (d * g > 0).astype(np.float64)
    return d * mask / max(mask.mean(), eps)


LR, WD = 0.05, 0.01


def ref_diffgrad(g, p, st, t, k):
    b1, b2, eps = 0.9, 0.999, 1e-8
    d = _adam_dir(g, st, k, t, b1, b2, eps)
    xi = 1 / (1 + np.exp(-np.abs(g - st.get(("prev", k), 0.0))))
    st[("prev", k)] = g
    return -LR * (xi * d + WD * p)


def ref_adamp(g, p, st, t, k):
    d = _adam_dir(g, st, k, t, 0.9, 0.999, 1e-8)
    d, wdf = _project(d, g, p, 0.1, 0.1, 1e-8)
    return -LR * (d + WD * wdf * p)


def ref_sgdp(g, p, st, t, k):
    mom = 0.9
    buf = st.get(("buf", k), 0.0) * mom + g
    st[("buf", k)] = buf
    d, wdf = _project(buf, g, p, 0.1, 0.1, 1e-8)
    return -LR * (d + WD * wdf / (1 - mom) * p)


def ref_mars_adamw(g, p, st, t, k):
    b1, b2, gamma = 0.95, 0.99, 0.025
    c = g + gamma * b1 / (1 - b1) * (g - st.get(("prev", k), 0.0))
    st[("prev", k)] = g
    norm = np.linalg.norm(c)
    if norm > 1.0:  # official code: c_t / ||c_t|| when it exceeds 1
        c = c / norm
    return -LR * (_adam_dir(c, st, k, t, b1, b2, 1e-8) + WD * p)


def ref_grams(g, p, st, t, k):
    d = _adam_dir(g, st, k, t, 0.9, 0.999, 1e-8)
    return -LR * (np.sign(g) * np.abs(d) + WD * p)


def ref_cautious_adamw(g, p, st, t, k):
    d = _adam_dir(g, st, k, t, 0.9, 0.999, 1e-8)
    return -LR * (_cautious_np(d, g) + WD * p)


def _lion_dir(g, st, k, b1, b2):
    m = st.get(("m", k), 0.0)
    c = np.sign(b1 * m + (1 - b1) * g)
    st[("m", k)] = b2 * m + (1 - b2) * g
    return c


def ref_cautious_lion(g, p, st, t, k):
    return -LR * (_cautious_np(_lion_dir(g, st, k, 0.9, 0.99), g) + WD * p)


def ref_signum(g, p, st, t, k):
    m = st.get(("m", k), 0.0) * 0.9 + 0.1 * g
    st[("m", k)] = m
    return -LR * (np.sign(m) + WD * p)


def ref_sinkgd(g, p, st, t, k):
    return -LR * (_sinkhorn_np(g, 5, 1e-8) + WD * p)


def ref_sgd_sai(g, p, st, t, k):
    b1, eps = 0.9, 1e-8
    if t == 1:
        st[("s", k)] = np.linalg.norm(g) / (np.std(g, ddof=1) + eps)
        m = g
    else:
        m = b1 * st[("m", k)] + (1 - b1) * g
    st[("m", k)] = m
    return -LR * (st[("s", k)] * m + WD * p)


def ref_sophia(g, p, st, t, k):
    b1, b2, eps, gamma, clip, interval = 0.9, 0.9, 1e-8, 0.5, 1.0, 2
    m = st.get(("m", k), 0.0) * b1 + (1 - b1) * g
    st[("m", k)] = m
    h = st.get(("h", k), 0.0)
    r = np.clip((m / (1 - b1**t)) / np.maximum(gamma * h, eps), -clip, clip)
    if (t - 1) % interval == 0:  # refreshed after the step, at steps 0, 2, ... (0-based)
        st[("h", k)] = b2 * h + (1 - b2) * CURV[k]  # exact Hessian diagonal
    return -LR * (r + WD * p)


def ref_adahessian(g, p, st, t, k):
    b1, b2, eps, power = 0.9, 0.999, 1e-4, 1.0
    m = st.get(("m", k), 0.0) * b1 + (1 - b1) * g
    v = st.get(("v", k), 0.0) * b2 + (1 - b2) * CURV[k] ** 2
    st[("m", k)], st[("v", k)] = m, v
    d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) ** power + eps)
    return -LR * (d + WD * p)


REFERENCES = {
    "diffgrad": (dict(weight_decay=WD), ref_diffgrad, "quad"),
    "adamp": (dict(weight_decay=WD), ref_adamp, "inv"),
    "sgdp": (dict(weight_decay=WD), ref_sgdp, "inv"),
    "mars_adamw": (dict(weight_decay=WD), ref_mars_adamw, "quad"),
    "grams": (dict(weight_decay=WD), ref_grams, "quad"),
    "cautious_adamw": (dict(weight_decay=WD), ref_cautious_adamw, "quad"),
    "cautious_lion": (dict(weight_decay=WD), ref_cautious_lion, "quad"),
    "signum": (dict(weight_decay=WD), ref_signum, "quad"),
    "sinkgd": (dict(weight_decay=WD), ref_sinkgd, "quad"),
    "sgd_sai": (dict(weight_decay=WD), ref_sgd_sai, "quad"),
    "sophia": (
        dict(weight_decay=WD, b1=0.9, b2=0.9, gamma=0.5, update_interval=2),
        ref_sophia,
        "quad",
    ),
    "adahessian": (dict(weight_decay=WD), ref_adahessian, "quad"),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_three_step_reference(name):
    kwargs, ref_step, problem = REFERENCES[name]
    loss, grad = (_quad_loss, _quad_grad) if problem == "quad" else (_inv_loss, _inv_grad)
    tx = optlab.get(name, learning_rate=LR, **kwargs)
    extra = {"hvp_fn": _hvp_fn(loss)} if name in ("sophia", "adahessian") else {}

    params = {k: jnp.asarray(v, jnp.float32) for k, v in P0.items()}
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, **extra))
    p_ref, st = {k: v.copy() for k, v in P0.items()}, {}
    for t in range(1, 4):
        updates, state = step(params, state)
        g = grad(p_ref)
        want = {k: ref_step(g[k], p_ref[k], st, t, k) for k in LEAVES}
        for k in LEAVES:
            np.testing.assert_allclose(
                updates[k], want[k], rtol=2e-5, atol=1e-6, err_msg=f"{name} step {t} leaf {k}"
            )
        params = optax.apply_updates(params, updates)
        p_ref = {k: p_ref[k] + want[k] for k in p_ref}


def test_adamp_reference_exercises_the_projection():
    """On the scale-invariant problem the projection is active: updates are tangential."""
    params = {k: jnp.asarray(v, jnp.float32) for k, v in P0.items()}
    for name in ("adamp", "sgdp"):
        tx = optlab.get(name, learning_rate=LR, weight_decay=0.0)
        u, _ = tx.update(jax.grad(_inv_loss)(params), tx.init(params), params)
        assert abs(float(jnp.sum(u["w"] * params["w"]))) < 1e-7


# ---------------------------------------------------------------------------
# Convergence (documented learning rates; parabola 300 steps, Rosenbrock 1000 steps)
# ---------------------------------------------------------------------------


def _cos(lr, steps):
    return optax.cosine_decay_schedule(lr, steps)


# name: (parabola kwargs, parabola tolerance, Rosenbrock kwargs, Rosenbrock tolerance).
# Start: parabola 55.8 (helpers.fixed_params), Rosenbrock 24.2 at (-1.2, 1). Sign-based and
# orthogonalized steps have a fixed size, so they get a cosine-decayed rate; the tolerances
# are ~10x the final losses measured with these settings.
CONVERGENCE = {
    "sgd": (dict(learning_rate=0.1), 1e-6, dict(learning_rate=1e-3, momentum=0.9), 1e-3),
    "adam": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=0.05), 1.0),
    "adamw": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=0.05, weight_decay=0.0), 1.0),
    "amsgrad": (dict(learning_rate=0.05), 5e-3, dict(learning_rate=0.5), 0.25),
    "diffgrad": (dict(learning_rate=0.1), 1e-6, dict(learning_rate=0.05), 0.5),
    "adamp": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=0.05), 1.0),
    "sgdp": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=1e-3), 2e-2),
    "ademamix": (
        dict(learning_rate=_cos(0.05, 300)),
        0.1,
        dict(learning_rate=_cos(0.05, 1000)),
        0.6,
    ),
    "mars_adamw": (dict(learning_rate=0.05), 1e-5, dict(learning_rate=0.05), 1e-3),
    "grams": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=0.05), 0.6),
    "cautious_adamw": (
        dict(learning_rate=0.05),
        1e-6,
        dict(learning_rate=0.05, weight_decay=0.0),
        0.5,
    ),
    "cautious_lion": (
        dict(learning_rate=_cos(0.05, 300), weight_decay=0.0),
        2e-2,
        dict(learning_rate=_cos(0.05, 1000), weight_decay=0.0),
        1e-3,
    ),
    "lion": (
        dict(learning_rate=_cos(0.1, 300), weight_decay=0.0),
        1e-5,
        dict(learning_rate=_cos(0.1, 1000), weight_decay=0.0),
        4e-3,
    ),
    "signum": (
        dict(learning_rate=_cos(0.05, 300)),
        1e-4,
        dict(learning_rate=_cos(0.05, 1000)),
        2e-2,
    ),
    "lamb": (dict(learning_rate=_cos(0.05, 300)), 1e-5, dict(learning_rate=_cos(0.05, 1000)), 1e-3),
    "lars": (
        dict(learning_rate=_cos(0.1, 300), trust_coefficient=0.1),
        1e-5,
        dict(learning_rate=_cos(0.1, 1000), trust_coefficient=0.1),
        3e-5,  # 2.0e-5 with the overflow-safe norms (1e-5 before; float32 rounding of the norms)
    ),
    "muon": (dict(learning_rate=_cos(0.05, 300)), 2e-2, dict(learning_rate=0.05), 3e-3),
    "sinkgd": (
        dict(learning_rate=_cos(0.05, 300)),
        1e-6,
        dict(learning_rate=_cos(0.05, 1000)),
        0.2,
    ),
    "adafactor": (
        dict(learning_rate=_cos(0.1, 300)),
        1e-6,
        dict(learning_rate=_cos(0.05, 1000), multiply_by_parameter_scale=False),
        0.3,
    ),
    "sgd_sai": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=1e-3), 0.6),
    "sophia": (
        dict(learning_rate=0.02, b1=0.9, weight_decay=0.0),
        1e-5,
        dict(learning_rate=0.02, b1=0.9, weight_decay=0.0),
        1e-5,
    ),
    "adahessian": (dict(learning_rate=0.1), 1e-6, dict(learning_rate=0.1, hessian_power=0.5), 2e-3),
    # Noise-free, never-clipping DP-SGD is SGD (on a batch of one example, see _per_example).
    "dpsgd": (dict(learning_rate=0.1), 1e-6, dict(learning_rate=1e-3, momentum=0.9), 1e-3),
    # Memory-efficient state: rank 2 < 3 on the (4, 3) matrix, so the projected ones really
    # project; Rosenbrock's (2,) vector takes their full-Adam path. FRUGAL's sign residual
    # has a fixed step size: a cosine-decayed rate. BAdam moves one block at a time.
    "subset_norm_adam": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=0.05), 0.05),
    "galore": (
        dict(learning_rate=0.05, rank=2, update_proj_gap=10),
        2e-6,
        dict(learning_rate=0.05),
        0.03,
    ),
    "online_subspace_descent": (
        dict(learning_rate=0.05, rank=2),
        3e-7,
        dict(learning_rate=0.05),
        0.03,
    ),
    "frugal": (
        dict(learning_rate=_cos(0.05, 300), rank=2, update_every=10, residual_scale=0.3),
        0.6,
        dict(learning_rate=0.05),
        0.03,
    ),
    "badam": (dict(learning_rate=0.05, switch_every=20), 0.02, dict(learning_rate=0.05), 0.3),
    "adam_mini": (dict(learning_rate=0.05), 1e-6, dict(learning_rate=0.05), 0.05),
    # Issue 12 (part A). SWAN's GradNorm removes each unit's mean gradient over its inputs,
    # so it cannot move the column sums of the (4, 3) matrix towards the parabola's target.
    "adopt": (dict(learning_rate=0.1), 1e-6, dict(learning_rate=0.2), 2.5),
    "yogi": (dict(learning_rate=0.1), 1e-6, dict(learning_rate=0.05), 0.1),
    "adamomentum": (dict(learning_rate=0.1), 1e-6, dict(learning_rate=0.05), 1e-3),
    "qhm": (dict(learning_rate=0.5, b1=0.9), 1e-6, dict(learning_rate=5e-3, b1=0.9), 3e-2),
    "qhadam": (dict(learning_rate=0.1, b1=0.9), 1e-6, dict(learning_rate=0.05, b1=0.9), 6e-2),
    "ano": (dict(learning_rate=_cos(0.1, 300)), 2e-6, dict(learning_rate=0.05, b1=0.95), 0.6),
    "nag_gs": (dict(learning_rate=0.3), 1e-6, dict(learning_rate=0.01), 1e-2),
    "lion_kappa": (
        dict(learning_rate=_cos(0.1, 300), weight_decay=0.0),
        1e-6,
        dict(learning_rate=_cos(0.01, 1000), weight_decay=0.0),
        2e-2,
    ),
    "scion": (
        dict(learning_rate=_cos(0.2, 300), scale=5.0),
        2.0,
        dict(learning_rate=_cos(0.05, 1000), scale=5.0, constrained=False),
        0.15,
    ),
    "swan": (dict(learning_rate=_cos(0.1, 300)), 30.0, dict(learning_rate=_cos(0.05, 1000)), 1.2),
    "m_fac": (
        dict(learning_rate=0.5, damping=1.0),
        1e-6,
        dict(learning_rate=0.05, damping=1.0, momentum=0.9),
        3e-2,
    ),
    "oasis": (dict(learning_rate=0.5), 1e-6, dict(learning_rate=0.5), 3e-2),
}
# Hyperparameters without defaults, merged into every `optlab.get` of this file.
REQUIRED = {"dpsgd": dict(l2_norm_clip=1e3, noise_multiplier=0.0)}


def _get(name, **kwargs):
    """``optlab.get`` with the required hyperparameters; DP-SGD fed a batch of one example."""
    return _per_example(name, optlab.get(name, **{**REQUIRED.get(name, {}), **kwargs}))


def _per_example(name, tx):
    if name != "dpsgd":
        return tx

    def update_fn(grads, state, params=None, **extra_args):
        return tx.update(jax.tree.map(lambda g: g[None], grads), state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


# Step-size rules and parameter-free methods (optlab/_step_sizes.py): a learning rate of 1
# is a multiplier (DoG, DoWG, Prodigy) or the cap of the Polyak step (SPS, ALR-SMAG).
CONVERGENCE.update(
    {
        "adagrad_norm": (dict(learning_rate=1.0), 1e-6, dict(learning_rate=0.5), 1.5),
        # the matrix leaf takes AdaGO's decaying scalar step; Rosenbrock's vector goes to AdamW
        "adago": (
            dict(learning_rate=0.5, adam_learning_rate=_cos(0.05, 300)),
            5e-3,
            dict(learning_rate=0.05),
            3e-3,
        ),
        "sps": (dict(learning_rate=1.0), 1e-6, dict(learning_rate=1e-2), 0.3),
        "alr_smag": (dict(learning_rate=1.0), 1e-6, dict(learning_rate=1e-3), 4e-4),
        # untuned defaults; DoG's step stays small in Rosenbrock's curved valley (3.7 at 1000)
        "dog": (dict(), 1e-6, dict(), 6.0),
        "dowg": (dict(), 1e-6, dict(), 3.0),
        "prodigy": (dict(), 1e-6, dict(), 1e-6),
        # the train point y is scored here, not the average x
        "schedule_free_sgd": (
            dict(learning_rate=0.1),
            1e-3,
            dict(learning_rate=3e-3, b1=0.95),
            0.2,
        ),
        "schedule_free_adamw": (dict(learning_rate=0.1), 0.1, dict(learning_rate=0.05), 0.06),
    }
)
NEEDS_VALUE = {"sps", "alr_smag"}  # Polyak-type steps read the loss


def _extra(name, loss):
    if name in ("sophia", "adahessian", "oasis"):
        return _hvp_extra(loss)
    if name in NEEDS_VALUE:
        return lambda p: {"value": loss(p)}
    return None


def test_convergence_table_covers_every_optimizer():
    """Every optimizer of ``_aliases``, each registered."""
    from optlab import _aliases

    assert set(CONVERGENCE) == set(_aliases.__all__)
    assert set(CONVERGENCE) <= {info.name for info in optlab.available()}


@pytest.mark.parametrize("name", sorted(CONVERGENCE))
def test_converges_on_parabola_and_rosenbrock(name):
    kw_p, tol_p, kw_r, tol_r = CONVERGENCE[name]
    params = fixed_params()
    _, _, losses = run_optimizer(_get(name, **kw_p), parabola, params, 300, _extra(name, parabola))
    assert losses[-1] < tol_p, f"{name}: parabola {losses[0]:.3g} -> {losses[-1]:.3g}"
    start = {"x": jnp.array([-1.2, 1.0])}
    p_end, _, losses = run_optimizer(
        _get(name, **kw_r), rosenbrock, start, 1000, _extra(name, rosenbrock)
    )
    final = float(rosenbrock(p_end))
    assert final < tol_r, f"{name}: rosenbrock {losses[0]:.3g} -> {final:.3g}"


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

_BAD = (
    [(name, dict(learning_rate=-1.0), "learning_rate") for name in sorted(CONVERGENCE)]
    + [
        (name, dict(learning_rate=1e-3, b1=1.0), "b1")
        for name in (
            "adam",
            "adamw",
            "amsgrad",
            "diffgrad",
            "adamp",
            "ademamix",
            "mars_adamw",
            "grams",
            "cautious_adamw",
            "cautious_lion",
            "lion",
            "signum",
            "lamb",
            "sgd_sai",
            "sophia",
            "adahessian",
        )
    ]
    + [
        (name, dict(learning_rate=1e-3, eps=-1.0), "eps")
        for name in (
            "adamw",
            "amsgrad",
            "diffgrad",
            "adamp",
            "ademamix",
            "mars_adamw",
            "grams",
            "cautious_adamw",
            "lamb",
            "lars",
            "muon",
            "sinkgd",
            "adafactor",
            "sgd_sai",
            "sophia",
            "adahessian",
        )
    ]
    + [
        ("sgd", dict(learning_rate=0.1, momentum=1.0), "momentum"),
        ("sgdp", dict(learning_rate=0.1, momentum=1.5), "momentum"),
        ("lars", dict(learning_rate=0.1, momentum=-0.1), "momentum"),
        ("muon", dict(learning_rate=0.1, beta=1.0), "beta"),
        ("adamw", dict(learning_rate=0.1, weight_decay=-1e-4), "weight_decay"),
        ("sophia", dict(learning_rate=0.1, gamma=0.0), "gamma"),
        ("sophia", dict(learning_rate=0.1, update_interval=0), "update_interval"),
        ("adahessian", dict(learning_rate=0.1, hessian_power=2.0), "hessian_power"),
        ("adafactor", dict(learning_rate=0.1, clipping_threshold=0.0), "clipping_threshold"),
        ("sinkgd", dict(learning_rate=0.1, num_iters=0), "num_iters"),
    ]
)


@pytest.mark.parametrize("name,kwargs,param", _BAD, ids=[f"{n}-{p}" for n, _, p in _BAD])
def test_bad_hyperparameters_raise(name, kwargs, param):
    with pytest.raises(ValueError, match=rf"{param}"):
        _get(name, **kwargs)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lion", "sophia", "muon", "lars"])
def test_error_names_the_optimizer(name):
    with pytest.raises(ValueError, match=rf"optlab\.{name}`: `learning_rate` must be >= 0"):
        optlab.get(name, learning_rate=-0.1)


def test_schedules_and_traced_hyperparameters_accepted():
    """Every named optimizer runs with its hyperparameters traced (a learning-rate schedule
    under ``optax.inject_hyperparams``): ``test_inject_hyperparams_matches`` of the shared
    property suite checks it for each registered optimizer case, and equality with the
    plain run. This test makes sure no optimizer slips out of that check (it replaces a
    loop that recompiled every optimizer here a second time)."""
    from helpers import all_cases

    injected = {c.name for c in all_cases() if c.kind == "optimizer" and c.inject}
    missing = sorted(set(CONVERGENCE) - injected)
    assert not missing, f"named optimizers not run under inject_hyperparams: {missing}"


# ---------------------------------------------------------------------------
# Muon's leaf selection: mask, conv/attention kernels as matrices
# ---------------------------------------------------------------------------


def _muon_step(tx, params, grads):
    updates, state = tx.update(grads, tx.init(params), params)
    return updates, state


def test_muon_hidden_mask_keeps_embeddings_head_and_vectors_on_adamw():
    k = jax.random.split(jax.random.key(0), 4)
    params = {
        "embed": {"embedding": jax.random.normal(k[0], (20, 8))},
        "blocks": [{"mlp": {"up": jax.random.normal(k[1], (8, 16)), "bias": jnp.zeros(16)}}],
        "lm_head": {"kernel": jax.random.normal(k[2], (8, 20))},
    }
    mask = optlab.muon_hidden_mask(params)
    assert jax.tree.leaves(mask) == [False, True, False, False]  # bias, up, embedding, head
    assert mask["blocks"][0]["mlp"]["up"] and not mask["embed"]["embedding"]
    grads = jax.tree.map(lambda x: jnp.cos(3.0 * x) + 0.1, params)
    upd, _ = _muon_step(optlab.muon(0.02, muon_mask=optlab.muon_hidden_mask), params, grads)
    ref_adam, _ = _muon_step(optlab.adamw(0.02, weight_decay=0.0, nesterov=True), params, grads)
    for path in (("embed", "embedding"), ("lm_head", "kernel")):
        a, b = upd[path[0]][path[1]], ref_adam[path[0]][path[1]]
        tree_allclose(a, b, rtol=1e-6, atol=1e-7)  # AdamW's first step, not orthogonalized
    s = jnp.linalg.svd(upd["blocks"][0]["mlp"]["up"] / (-0.02 * 2**0.5), compute_uv=False)
    assert 0.6 < float(s.min()) and float(s.max()) < 1.3  # orthogonalized, times sqrt(16/8)
    default, _ = _muon_step(optlab.muon(0.02), params, grads)  # by shape: embedding is Muon's
    assert not jnp.allclose(default["embed"]["embedding"], upd["embed"]["embedding"])


def test_muon_conv_kernel_is_orthogonalized_as_a_flax_layout_matrix():
    """A (kh, kw, in, out) kernel selected by the mask is the (kh*kw*in, out) matrix."""
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
    grad = jnp.sin(2.0 * kernel) + 0.05
    tx = optlab.muon(0.02, muon_mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
    params, grads = {"conv": kernel}, {"conv": grad}
    tx_state = tx.init(params)
    u1, s1 = tx.update(grads, tx_state, params)
    u2, s2 = tx.update(grads, s1, params)
    ref = optlab.muon(0.02)
    flat_p, flat_g = {"conv": kernel.reshape(36, 6)}, {"conv": grad.reshape(36, 6)}
    r1, rs = ref.update(flat_g, ref.init(flat_p), flat_p)
    r2, _ = ref.update(flat_g, rs, flat_p)
    tree_allclose(u2["conv"], r2["conv"].reshape(3, 3, 4, 6), rtol=1e-5, atol=1e-6)
    assert u1["conv"].shape == kernel.shape
    assert jax.tree.structure(s1) == jax.tree.structure(tx_state)
    default, _ = optlab.muon(0.02).update(grads, optlab.muon(0.02).init(params), params)
    adamw = optlab.adamw(0.02, weight_decay=0.0, nesterov=True)  # muon: nesterov on both parts
    adam, _ = adamw.update(grads, adamw.init(params), params)
    tree_allclose(default, adam, rtol=1e-6, atol=1e-7)  # by default a 4-D kernel is AdamW's


def test_muon_attention_kernel_with_dimension_numbers():
    """(embed, heads, head_dim) query kernel: reduce the embedding, output heads x head_dim."""
    q = jax.random.normal(jax.random.key(2), (8, 2, 4))
    o = jax.random.normal(jax.random.key(3), (2, 4, 8))
    params = {"query": q, "out": o}
    grads = jax.tree.map(lambda x: jnp.tanh(x) + 0.1, params)
    dims = {"query": optax.contrib.MuonDimensionNumbers(0, (1, 2)), "out": None}
    tx = optlab.muon(
        0.02,
        muon_mask=lambda p: jax.tree.map(lambda x: True, p),
        muon_weight_dimension_numbers=dims,
    )
    upd, _ = _muon_step(tx, params, grads)
    ref = optlab.muon(0.02)
    flat_p = {"query": q.reshape(8, 8), "out": o.reshape(8, 8)}
    flat_g = {"query": grads["query"].reshape(8, 8), "out": grads["out"].reshape(8, 8)}
    r, _ = _muon_step(ref, flat_p, flat_g)
    tree_allclose(upd["query"], r["query"].reshape(8, 2, 4), rtol=1e-5, atol=1e-6)
    tree_allclose(upd["out"], r["out"].reshape(2, 4, 8), rtol=1e-5, atol=1e-6)


def test_muon_refuses_batch_axes_clearly():
    params = {"w": jnp.ones((2, 3, 4))}
    dims = optax.contrib.MuonDimensionNumbers(1, 2)  # axis 0 would be a batch axis
    tx = optlab.muon(
        0.02,
        muon_mask=lambda p: jax.tree.map(lambda x: True, p),
        muon_weight_dimension_numbers=dims,
    )
    with pytest.raises(ValueError, match=r"`optlab\.muon`.*\(2, 3, 4\).*cover every axis"):
        tx.init(params)
