"""Multi-objective gradient combination: UPGrad, PCGrad, MGDA, Bloop, Aligned-MTL.

Each transform takes *stacked* per-objective gradients, the rows of the Jacobian
``J`` (``m`` objectives): every leaf of ``updates`` has a leading objective axis of size
``m`` (e.g. ``jax.jacrev(lambda p: jnp.stack([l1(p), l2(p)]))(params)``). It returns one
combined gradient ``d = J^T w`` with the parameters' shapes. The weights ``w`` are
computed from the ``m x m`` Gramian ``G = J J^T`` (accumulated in float32 over all
leaves) with fixed-iteration solvers in ``jnp``: no host sync, one trace.

Use them first in a chain, before the optimizer that consumes a single gradient::

    tx = optax.chain(optlab.upgrad(), optax.adam(1e-3))
    updates, state = tx.update(jacobian, state, params)

``optax.MultiSteps`` cannot wrap them (its accumulator has the parameters' shapes).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _base, _tree

__all__ = ["PCGradState", "upgrad", "pcgrad", "mgda"]


def _stacked_leaves(fn_name: str, updates) -> tuple[list[jax.Array], object, int]:
    leaves, treedef = jax.tree.flatten(updates)
    sizes = {jnp.shape(g)[0] if jnp.ndim(g) else None for g in leaves}
    if leaves and (len(sizes) != 1 or None in sizes):
        raise ValueError(
            f"`optlab.{fn_name}` expects stacked per-objective gradients: every leaf needs"
            f" the same leading objective axis, got leading sizes {sorted(map(str, sizes))}."
        )
    m = next(iter(sizes)) if leaves else 0
    return leaves, treedef, m


def _gramian(leaves: list[jax.Array], m: int) -> jax.Array:
    """``G_ij = <g_i, g_j>`` summed over leaves, in float32.

    A broadcast multiply-reduce per leaf (a fusion XLA normally does without building
    the ``m x m x n`` product) rather than a reshape and a matmul, so that leaves sharded
    along any axis, in explicit sharding mode too, need no resharding.
    """
    gram = jnp.zeros((m, m), jnp.float32)
    for g in leaves:
        x = _tree.to_acc(g)
        axes = tuple(range(2, x.ndim + 1))
        gram = gram + jnp.sum(x[:, None] * x[None, :], axis=axes)
    return gram


def _combine(leaves: list[jax.Array], treedef, weights: jax.Array):
    """``J^T w``, each leaf back in its dtype."""
    out = []
    for g in leaves:
        w = weights[(slice(None),) + (None,) * (g.ndim - 1)]
        out.append(jnp.sum(w * _tree.to_acc(g), axis=0).astype(g.dtype))
    return jax.tree.unflatten(treedef, out)


def _normalized(gram: jax.Array) -> jax.Array:
    return gram * _tree.safe_div(1.0, jnp.trace(gram))


def _nnls_gram(gram: jax.Array, q: jax.Array, iters: int) -> jax.Array:
    """``argmin_{s >= 0} 1/2 s^T G s + q^T s`` by Lawson-Hanson's active set (Gram form).

    One masked ``m x m`` solve per iteration, ``iters`` iterations (the method terminates
    exactly after finitely many, typically fewer than ``2 m``; then it stays put).
    ``G`` must be positive definite (a ridge is added by the callers).
    """
    m = gram.shape[0]
    idx = jnp.arange(m)
    tol = 1e-6 * jnp.maximum(jnp.max(jnp.abs(q)), 1e-30)

    def solve_on(passive):
        both = passive[:, None] & passive[None, :]
        mat = jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(passive, 0.0, 1.0))
        z = jnp.linalg.solve(mat, jnp.where(passive, -q, 0.0))
        return jnp.where(passive & jnp.isfinite(z), z, 0.0)

    def body(_, carry):
        s, passive = carry
        z = solve_on(passive)
        feasible = jnp.all(jnp.where(passive, z > 0, True))
        # Feasible: accept z and free the variable with the most negative gradient.
        w = -(gram @ z + q)
        cand = jnp.where(passive, -jnp.inf, w)
        j = jnp.argmax(cand)
        grown = passive | ((cand[j] > tol) & (idx == j))
        # Infeasible: move from s towards z until a variable reaches 0, and fix it there.
        blocking = passive & (z <= 0)
        ratio = jnp.where(blocking, s / jnp.where(blocking, s - z, 1.0), jnp.inf)
        alpha = jnp.clip(jnp.min(ratio), 0.0, 1.0)
        moved = jnp.maximum(s + alpha * (z - s), 0.0)
        shrunk = passive & (moved > 0)
        s = jnp.where(feasible, z, jnp.where(shrunk, moved, 0.0))
        return s, jnp.where(feasible, grown, shrunk)

    s, _ = jax.lax.fori_loop(0, iters, body, (jnp.zeros(m, jnp.float32), jnp.zeros(m, bool)))
    return s


def upgrad(
    max_iters: int | None = None, reg_eps: jax.typing.ArrayLike = 1e-6
) -> optax.GradientTransformationExtraArgs:
    """UPGrad: average of the gradients projected onto the dual cone of the Jacobian.

    Each objective gradient ``g_i = J^T e_i`` is projected onto the dual cone
    ``{x : J x >= 0}``; the projection is ``J^T v_i`` with
    ``v_i = argmin_{v >= e_i} v^T G v`` (a small QP in the Gramian ``G = J J^T``). The
    result is ``d = J^T mean_i(v_i)``, so ``J d = G mean(v_i) >= 0``: ``d`` conflicts
    with no objective, and it is the mean gradient when no two gradients conflict. The
    QPs are solved on ``G / trace(G) + reg_eps I`` (the ridge keeps them strictly
    convex; the guarantee then holds up to ``reg_eps``-sized terms) by a fixed number of
    Lawson-Hanson active-set iterations, each one masked ``m x m`` linear solve, in
    ``jnp`` (exact once the active set is found, unlike a first-order method).

    Args:
      max_iters: active-set iterations (int >= 1); ``None`` means ``4 m + 4`` for ``m``
        objectives.
      reg_eps: ridge added to the trace-normalized Gramian (> 0).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` taking stacked gradients and
      returning the combined one. Stateless (``optax.EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> jac = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # two conflicting rows
      >>> tx = optlab.upgrad()
      >>> d, _ = tx.update(jac, tx.init({"w": jnp.zeros(2)}))
      >>> bool(jnp.all(jac["w"] @ d["w"] >= -1e-5))
      True

    References:
      Quinton and Rey, `Jacobian Descent for Multi-Objective Optimization
      <https://arxiv.org/abs/2406.16232>`_, 2024
    """
    if max_iters is not None:
        _base.check_int("upgrad", max_iters=max_iters)
    _base.check_positive("upgrad", reg_eps=reg_eps)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef, m = _stacked_leaves("upgrad", updates)
        if not leaves:
            return updates, state
        iters = 4 * m + 4 if max_iters is None else max_iters
        eye = jnp.eye(m, dtype=jnp.float32)
        gram = _normalized(_gramian(leaves, m)) + reg_eps * eye
        # v_i = e_i + s_i with s_i = argmin_{s >= 0} 1/2 s^T G s + (G e_i)^T s.
        v = eye + jax.vmap(lambda u: _nnls_gram(gram, gram @ u, iters))(eye)
        return _combine(leaves, treedef, jnp.mean(v, axis=0)), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("upgrad", tx, lead_axes=1, real=True)  # a real QP


def mgda(max_iters: int = 500) -> optax.GradientTransformationExtraArgs:
    """MGDA: the minimum-norm point of the convex hull of the objective gradients.

    ``d = J^T a`` with ``a = argmin_{a in simplex} ||J^T a||^2``, found by
    ``max_iters`` away-step Frank-Wolfe iterations with exact line search on the
    trace-normalized Gramian, from the uniform ``a`` (away steps give linear convergence
    on the simplex). At the optimum ``<d, g_i> >= ||d||^2 >= 0`` for every objective,
    and ``d = 0`` at a Pareto-stationary point.

    Args:
      max_iters: Frank-Wolfe iterations (int >= 1).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` taking stacked gradients and
      returning the combined one. Stateless (``optax.EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> jac = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> tx = optlab.mgda()
      >>> d, _ = tx.update(jac, tx.init({"w": jnp.zeros(2)}))
      >>> d["w"]
      Array([0.5, 0.5], dtype=float32)

    References:
      Sener and Koltun, `Multi-Task Learning as Multi-Objective Optimization
      <https://arxiv.org/abs/1810.04650>`_, 2018
    """
    _base.check_int("mgda", max_iters=max_iters)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef, m = _stacked_leaves("mgda", updates)
        if not leaves:
            return updates, state
        gram = _normalized(_gramian(leaves, m))

        def step(_, a):
            ga = gram @ a
            value = a @ ga
            t = jnp.argmin(ga)  # Frank-Wolfe vertex
            s = jnp.argmax(jnp.where(a > 0, ga, -jnp.inf))  # away vertex
            toward = value - ga[t] >= ga[s] - value
            direction = jnp.where(
                toward,
                jax.nn.one_hot(t, m, dtype=jnp.float32) - a,
                a - jax.nn.one_hot(s, m, dtype=jnp.float32),
            )
            max_step = jnp.where(toward, 1.0, _tree.safe_div(a[s], 1.0 - a[s]))
            curvature = direction @ gram @ direction
            gamma = jnp.where(curvature > 0, _tree.safe_div(-(direction @ ga), curvature), max_step)
            return jnp.maximum(a + jnp.clip(gamma, 0.0, max_step) * direction, 0.0)

        a = jax.lax.fori_loop(0, max_iters, step, jnp.full((m,), 1.0 / m, jnp.float32))
        return _combine(leaves, treedef, a), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("mgda", tx, lead_axes=1, real=True)  # a real QP


class PCGradState(NamedTuple):
    """State of :func:`pcgrad`.

    Attributes:
      key: the PRNG key of the projection order (``uint32[2]``), split at every step.
    """

    key: jax.Array


def pcgrad(
    seed: int = 0, *, shuffle: bool = True, reduction: str = "sum"
) -> optax.GradientTransformationExtraArgs:
    """PCGrad (gradient surgery): project away the conflicting components, then sum.

    For each objective ``i``, ``g_i' = g_i``; for every other ``j`` in a random order:
    if ``<g_i', g_j> < 0`` then ``g_i' <- g_i' - (<g_i', g_j> / ||g_j||^2) g_j``. The
    result is ``sum_i g_i'`` (``reduction="mean"`` divides by ``m``). With two objectives
    the projected gradients no longer conflict and the sum has a non-negative inner
    product with both. The surgery runs on coefficients in the Gramian, so its cost
    does not grow with the number of parameters beyond one Gramian.

    Args:
      seed: seed of the order key (int >= 0).
      shuffle: random order per objective and step (the paper); ``False`` uses the
        fixed order ``0, 1, ..., m - 1``.
      reduction: ``"sum"`` (the paper) or ``"mean"``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` taking stacked gradients and
      returning the combined one; state :class:`PCGradState` (the key).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> jac = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> tx = optlab.pcgrad(shuffle=False)
      >>> d, _ = tx.update(jac, tx.init({"w": jnp.zeros(2)}))
      >>> d["w"]
      Array([0.5, 1.5], dtype=float32)

    References:
      Yu et al., `Gradient Surgery for Multi-Task Learning
      <https://arxiv.org/abs/2001.06782>`_, 2020
    """
    _base.check_int("pcgrad", minimum=0, seed=seed)
    if reduction not in ("sum", "mean"):
        raise ValueError(
            f"`optlab.pcgrad`: `reduction` must be 'sum' or 'mean', got reduction={reduction!r}."
        )

    def init_fn(params):
        _base.check_float_tree("pcgrad", params)
        return PCGradState(key=jax.random.PRNGKey(seed))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef, m = _stacked_leaves("pcgrad", updates)
        key, sub = jax.random.split(state.key)
        if not leaves:
            return updates, PCGradState(key=key)
        gram = _gramian(leaves, m)
        if shuffle:
            orders = jax.vmap(lambda k: jax.random.permutation(k, m))(jax.random.split(sub, m))
        else:
            orders = jnp.tile(jnp.arange(m), (m, 1))

        def surgery(i, order):
            def body(k, c):
                j = order[k]
                dot = gram[j] @ c
                conflict = jnp.logical_and(dot < 0, j != i)
                step = jnp.where(conflict, _tree.safe_div(dot, gram[j, j]), 0.0)
                return c - step * jax.nn.one_hot(j, m, dtype=jnp.float32)

            return jax.lax.fori_loop(0, m, body, jax.nn.one_hot(i, m, dtype=jnp.float32))

        coefs = jax.vmap(surgery)(jnp.arange(m), orders)
        w = jnp.sum(coefs, axis=0) if reduction == "sum" else jnp.mean(coefs, axis=0)
        return _combine(leaves, treedef, w), PCGradState(key=key)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _base.public("pcgrad", tx, lead_axes=1, real=True)  # projections on real dots


# ---------------------------------------------------------------------------
# Issue 12 (part B): Bloop
# ---------------------------------------------------------------------------

__all__ += ["BloopState", "bloop"]


class BloopState(NamedTuple):
    """State of :func:`bloop`.

    Attributes:
      ema: EMA of the main gradient (row 0), the parameters' shapes and dtypes.
    """

    ema: optax.Updates


def bloop(decay: float = 0.9, aux_weight: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """Bloop: auxiliary gradients projected orthogonally to an EMA of the main gradient.

    Row 0 of the stacked gradients is the main objective ``g_0``, rows ``1..m-1`` the
    auxiliary ones. With ``m_t = decay m_{t-1} + (1 - decay) g_0`` (zero start), each
    auxiliary gradient loses its component along ``m_t``::

        d = g_0 + aux_weight * sum_{i >= 1} (g_i - (<g_i, m_t> / ||m_t||^2) m_t)

    so, to first order, the auxiliary terms do not change the main loss along its
    (averaged) descent direction; ``decay = 0`` projects against the current ``g_0``.
    ``aux_weight = 0`` gives ``g_0``.

    Args:
      decay: EMA decay of the main gradient, in ``[0, 1)``.
      aux_weight: weight of the projected auxiliary gradients (>= 0).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` taking stacked gradients and
      returning the combined one.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> jac = {"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])}  # main, auxiliary
      >>> tx = optlab.bloop(decay=0.0)
      >>> d, _ = tx.update(jac, tx.init({"w": jnp.zeros(2)}))
      >>> d["w"]
      Array([1., 1.], dtype=float32)

    State:
      :class:`BloopState` ``(ema,)``: one copy of the parameters.

    References:
      Hsieh et al., `Careful with that Scalpel: Improving Gradient Surgery with an EMA
      <https://arxiv.org/abs/2402.02998>`_, 2024
    """
    _base.check_decay("bloop", decay=decay)
    _base.check_nonnegative("bloop", aux_weight=aux_weight)

    def init_fn(params):
        _base.check_float_tree("bloop", params)
        return BloopState(ema=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef, m = _stacked_leaves("bloop", updates)
        if not leaves:
            return updates, state
        main = jax.tree.unflatten(treedef, [_tree.to_acc(g[0]) for g in leaves])
        ema = jax.tree.map(
            lambda e, g: decay * _tree.to_acc(e) + (1.0 - decay) * g, state.ema, main
        )
        e_leaves = jax.tree.leaves(ema)
        # <g_i, m> for every row i, and ||m||^2, in float32
        dots = sum(
            jnp.sum(_tree.to_acc(g) * e[None], axis=tuple(range(1, g.ndim)))
            for g, e in zip(leaves, e_leaves)
        )
        norm2 = sum(jnp.sum(e * e) for e in e_leaves)
        coef = _tree.safe_div(dots, norm2)  # (m,)
        aux = (jnp.arange(m) >= 1).astype(jnp.float32)
        w = jnp.where(aux > 0, aux_weight, 1.0)
        s = aux_weight * jnp.sum(aux * coef)
        out = [
            (
                jnp.sum(w[(slice(None),) + (None,) * (g.ndim - 1)] * _tree.to_acc(g), axis=0)
                - s * e
            ).astype(g.dtype)
            for g, e in zip(leaves, e_leaves)
        ]
        new_ema = _tree.tree_cast_like(ema, state.ema)
        return jax.tree.unflatten(treedef, out), BloopState(ema=new_ema)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Issue 12: Aligned-MTL
# ---------------------------------------------------------------------------

__all__ += ["aligned_mtl"]

_ALIGNED_SCALES = ("min", "median", "rmse")


def _aligned_weights(gram: jax.Array, scale_mode: str) -> jax.Array:
    """The balance matrix ``B = V diag(sqrt(lambda_R / lambda)) V^T`` of the Gramian, on its
    numerical range (eigenvalues above ``max(lambda) m eps``, as the reference code)."""
    m = gram.shape[0]
    lam, vecs = jnp.linalg.eigh(gram)
    keep = lam > jnp.max(lam) * m * jnp.finfo(jnp.float32).eps
    rank = jnp.sum(keep)
    if scale_mode == "min":
        scale = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == "median":  # the lower median of the kept eigenvalues (torch.median)
        ascending = jnp.sort(jnp.where(keep, lam, jnp.inf))
        scale = ascending[jnp.maximum(rank - 1, 0) // 2]
    else:  # "rmse"
        scale = _tree.safe_div(jnp.sum(jnp.where(keep, lam, 0.0)), rank.astype(jnp.float32))
    ratio = jnp.where(keep, jnp.sqrt(_tree.safe_div(scale, jnp.where(keep, lam, 1.0))), 0.0)
    return (vecs * ratio[None, :]) @ vecs.T


def aligned_mtl(
    scale_mode: str = "min", *, reduction: str = "sum"
) -> optax.GradientTransformationExtraArgs:
    """Aligned-MTL: the task gradients made orthogonal and of equal norm, then summed.

    With the stacked gradients ``J`` (rows ``g_i``) and the eigendecomposition of the
    Gramian ``G = J J^T = V diag(lambda) V^T``, the aligned gradients are the rows of
    ``B J`` with ``B = V diag(sqrt(lambda_R / lambda)) V^T``, so that::

        (B J)(B J)^T = B G B = lambda_R I        (condition number 1)

    and the result is ``d = (B J)^T 1 = J^T B 1`` (``reduction="mean"``: divided by
    ``m``). ``lambda_R`` is the smallest eigenvalue (``scale_mode="min"``, the paper),
    the median or the mean (``"median"``, ``"rmse"``) of the ones above the numerical
    rank tolerance ``max(lambda) m eps``; a rank-deficient ``J`` is aligned on its range
    (the null directions get weight 0). Orthogonal gradients are rescaled to equal norms,
    so no task dominates, and a small task that the plain sum would overrule is
    respected; but ``d`` is not always free of conflict: with strongly opposed gradients
    of very different norms (``J = [[1, 0], [-3, 0.5]]``), ``<d, g_1> < 0``
    (:func:`upgrad` and :func:`mgda` guarantee it). On two opposed tasks it stops where
    their gradients have equal norms. Like the reference code, ``G`` is in float32 and ``B`` is
    recomputed at every step (one ``m x m`` ``eigh``).

    Args:
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"``: the common squared norm
        ``lambda_R`` of the aligned gradients.
      reduction: ``"sum"`` (the reference code) or ``"mean"``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` taking stacked gradients and
      returning the combined one. Stateless (``optax.EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> jac = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]])}  # orthogonal, norms 3 and 1
      >>> tx = optlab.aligned_mtl()
      >>> d, _ = tx.update(jac, tx.init({"w": jnp.zeros(2)}))
      >>> [round(float(x), 4) for x in d["w"]]
      [1.0, 1.0]

    State:
      ``optax.EmptyState()``.

    References:
      Senushkin, Patakin, Kuznetsov and Konushin, `Independent Component Alignment for
      Multi-Task Learning <https://arxiv.org/abs/2305.19000>`_, 2023
    """
    if scale_mode not in _ALIGNED_SCALES:
        raise ValueError(
            "`optlab.aligned_mtl`: `scale_mode` must be 'min', 'median' or 'rmse', got"
            f" scale_mode={scale_mode!r}."
        )
    if reduction not in ("sum", "mean"):
        raise ValueError(
            "`optlab.aligned_mtl`: `reduction` must be 'sum' or 'mean', got"
            f" reduction={reduction!r}."
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef, m = _stacked_leaves("aligned_mtl", updates)
        if not leaves:
            return updates, state
        # B depends on G only up to scale: take G of J / max|J| (no overflow at 1e30,
        # no underflow at 1e-30).
        big = jnp.max(jnp.stack([jnp.max(jnp.abs(_tree.to_acc(g)), initial=0.0) for g in leaves]))
        big = jnp.where(jnp.isfinite(big) & (big > 0), big, 1.0)
        gram = _gramian([_tree.to_acc(g) / big for g in leaves], m)
        balance = _aligned_weights(_normalized(gram), scale_mode)
        pref = jnp.full((m,), 1.0 if reduction == "sum" else 1.0 / m, jnp.float32)
        return _combine(leaves, treedef, balance @ pref), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("aligned_mtl", tx, lead_axes=1)
