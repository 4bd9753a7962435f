"""Memory-efficient optimizer state: reduced, projected, block-coordinate and quantized.

Adam keeps two parameter-sized buffers. The transforms here keep less:

* :func:`scale_by_subset_norm` (one second moment per subset of a leaf, O(sqrt(d)) per
  leaf; optional subspace momentum) and :func:`scale_by_adam_mini` (one second moment
  per block: per leaf, or per head / per row with ``reduce_axes``);
* :func:`scale_by_projected_adam` (GaLore and its SVD-free and online-PCA variants:
  Adam moments of rank ``r``) and :func:`scale_by_frugal` (Adam in a subspace,
  state-free signSGD / SGD on the residual);
* :func:`scale_by_badam` (block-coordinate Adam: state for the active block only);
* :func:`quantized_moments` (8-bit block-wise quantized state of any transform) and
  :func:`bf16_moments` (bfloat16 state written with stochastic rounding), with the
  helpers :func:`stochastic_round` and :func:`stochastic_apply_updates`.

The state of every transform has a structure, shapes and dtypes fixed at ``init``;
``optlab.describe`` measures its bytes with ``jax.eval_shape(tx.init, params)``.

Sharding (explicit mode, ``jax.sharding.AxisType.Explicit``): a projected matrix
(GaLore, online PCA, DCT, FRUGAL, subspace momentum) is gathered to a replicated copy
for the projection, its projector and rank-``r`` moments are replicated, and its update
is resharded to the matrix's sharding; full-Adam fallback leaves, Subset-Norm /
Adam-mini reduced moments and quantized codes keep or follow the leaf's sharding where
the shapes allow it. BAdam's flat buffer for the active block is replicated. In jax's
default (auto) mode XLA chooses the layout of all of these.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base, _tree

__all__ = [
    "bf16_moments",
    "dynamic_quantization_map",
    "quantized_moments",
    "scale_by_adam_mini",
    "scale_by_badam",
    "scale_by_frugal",
    "scale_by_projected_adam",
    "scale_by_subset_norm",
    "stochastic_apply_updates",
    "stochastic_round",
]

PROJECTORS = ("svd", "dct", "online_pca", "identity")
_is_none = lambda x: x is None


def _none_map(fn, tree, *rest):
    return _tree.tree_map(fn, tree, *rest)


def _resolve_mask(mask: Any, tree: Any) -> Any:
    """A bool per leaf of ``tree`` (``None`` leaves kept): ``mask`` or ``mask(tree)``."""
    if mask is None:
        return _none_map(lambda x: True, tree)
    m = mask(tree) if callable(mask) else mask
    return m


def _check_structure(fn_name: str, updates: Any, like: Any) -> None:
    _base.check_same_structure(
        fn_name,
        jax.tree.map(lambda x: 0, updates, is_leaf=_is_none),
        jax.tree.map(lambda x: 0, like, is_leaf=_is_none),
        "updates",
        "params (as seen at init)",
    )


# ---------------------------------------------------------------------------
# Reduced second moments: Subset-Norm and Adam-mini
# ---------------------------------------------------------------------------


class ScaleByReducedAdamState(NamedTuple):
    """State for :func:`optlab.scale_by_subset_norm` and :func:`optlab.scale_by_adam_mini`."""

    count: jax.Array  # int32 scalar
    mu: Any  # first moment: like params, or the subspace-momentum state, or () without
    nu: Any  # reduced second moment per leaf (see the factory's "State:" section)


def _largest_axis(shape: tuple[int, ...]) -> tuple[int, ...]:
    if not shape:
        return ()
    big = max(range(len(shape)), key=lambda i: (shape[i], i))  # ties: the last axis
    return (big,)


class _Reducer(NamedTuple):
    """How a leaf's squared gradient is reduced to its second moment, and expanded back."""

    axes: tuple[int, ...] | None  # mean over these axes (keepdims), or None: subsets
    subset_size: int = 0

    def shape(self, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.axes is not None:
            return tuple(1 if i in self.axes else n for i, n in enumerate(leaf_shape))
        return (-(-math.prod(leaf_shape) // self.subset_size),)

    def reduce(self, sq: jax.Array) -> jax.Array:
        if self.axes is not None:
            if not self.axes:
                return sq
            # The mean of an empty leaf is 0 (jnp.mean would give NaN, 0 / 0).
            reduce = jnp.mean if sq.size else jnp.sum
            return reduce(sq, axis=self.axes, keepdims=True)
        n = self.shape(sq.shape)[0]
        flat = jnp.pad(sq.reshape(-1), (0, n * self.subset_size - sq.size))
        # The padding zeros are not counted: divide by each subset's true size.
        sizes = np.full((n,), self.subset_size, np.float32)
        sizes[-1] = sq.size - (n - 1) * self.subset_size
        return jnp.sum(flat.reshape(n, self.subset_size), axis=1) / jnp.asarray(sizes, sq.dtype)

    def expand(self, v: jax.Array, leaf_shape: tuple[int, ...]) -> jax.Array:
        if self.axes is not None:
            return v  # broadcasts
        d = math.prod(leaf_shape)
        return jnp.repeat(v, self.subset_size, total_repeat_length=v.shape[0] * self.subset_size)[
            :d
        ].reshape(leaf_shape)


def _reduced_adam(
    fn_name: str,
    reducer_for: Callable[[jax.Array, Any], _Reducer],
    b1,
    b2,
    eps,
    eps_root,
    *,
    reduce_spec: Any = None,
    momentum: optax.GradientTransformation | None,
) -> optax.GradientTransformationExtraArgs:
    """Adam whose second moment of each leaf is ``reducer.reduce(g**2)`` (shared core)."""

    def reducers(tree):
        spec = reduce_spec(tree) if callable(reduce_spec) else reduce_spec
        if spec is None:
            return _none_map(lambda x: reducer_for(x, None), tree)
        return jax.tree.map(
            lambda s, x: None if x is None else reducer_for(x, s),
            spec,
            tree,
            is_leaf=lambda s: s is None or isinstance(s, (tuple, int)),
        )

    def init_fn(params):
        _base.check_float_tree(fn_name, params)
        red = reducers(params)
        nu = jax.tree.map(
            lambda x, r: None if x is None else jnp.zeros(r.shape(x.shape), x.dtype),
            params,
            red,
            is_leaf=_is_none,
        )
        mu = momentum.init(params) if momentum is not None else ()
        return ScaleByReducedAdamState(jnp.zeros([], jnp.int32), mu, nu)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _check_structure(fn_name, updates, state.nu)
        red = reducers(updates)
        count = optax.safe_increment(state.count)

        def new_nu(g, v, r):
            sq = _tree.to_acc(g) ** 2
            return (b2 * _tree.to_acc(v) + (1 - b2) * r.reduce(sq)).astype(v.dtype)

        nu = jax.tree.map(
            lambda g, v, r: None if g is None else new_nu(g, v, r),
            updates,
            state.nu,
            red,
            is_leaf=_is_none,
        )
        if momentum is not None:
            num, mu = momentum.update(updates, state.mu, params)
        else:
            num, mu = updates, state.mu
        c2 = 1 - jnp.asarray(b2, jnp.float32) ** count.astype(jnp.float32)

        def step(m, v, r, g):
            v_hat = r.expand(_tree.to_acc(v), g.shape) / c2
            return (_tree.to_acc(m) / (jnp.sqrt(v_hat + eps_root) + eps)).astype(g.dtype)

        out = jax.tree.map(
            lambda m, v, r, g: None if g is None else step(m, v, r, g),
            num,
            nu,
            red,
            updates,
            is_leaf=_is_none,
        )
        return out, ScaleByReducedAdamState(count, mu, nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _debiased_ema(b1) -> optax.GradientTransformation:
    """Adam's bias-corrected first moment (``optax.ema``, ``debias=True``), leaf dtype."""
    return optax.with_extra_args_support(optax.ema(b1, debias=True))


def scale_by_subset_norm(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    subset_size: int | None = None,
    momentum_rank: int | None = None,
    projector: str = "svd",
    update_every: int = 200,
    min_dim_size: int = 2,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with a Subset-Norm second moment: one value per subset of each leaf.

    The coordinates of a leaf are split into subsets :math:`S`; each subset keeps one
    second moment :math:`v_S \leftarrow \beta_2 v_S + (1-\beta_2)\,\mathrm{mean}_{i\in S}
    g_i^2` (the paper's :math:`\|g_S\|^2` divided by :math:`|S|`, so that the step size
    is Adam's and ``subset_size=1`` is exactly Adam), and the step is
    :math:`\hat m / (\sqrt{\hat v_S + \epsilon_{root}} + \epsilon)`.

    Subsets: by default the slices along the largest axis of the leaf (a ``(m, n)``
    matrix with ``n >= m`` keeps ``m`` values, at most :math:`\sqrt{mn}`; a vector keeps
    one; a scalar keeps itself). With ``subset_size=k`` the flattened leaf is cut into
    consecutive groups of ``k`` (the last may be shorter): :math:`\lceil d/k \rceil`
    values.

    Momentum: ``b1 > 0`` keeps a full EMA of the gradient (Adam's). With
    ``momentum_rank=r`` it is Subspace-Momentum instead: the EMA lives in a rank-``r``
    subspace of each matrix (the projector of :func:`optlab.scale_by_projected_adam`)
    and the orthogonal residual passes through without momentum,
    :math:`P\hat m + (I - PP^\top) g`; non-matrix leaves keep a full EMA.

    Args:
      b1: first-moment decay in [0, 1) (0: no momentum, no state for it).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      eps_root: added inside the square root (>= 0).
      subset_size: Python int >= 1, or None for the largest-axis rule.
      momentum_rank: Python int >= 1 for Subspace-Momentum, or None.
      projector: the subspace of Subspace-Momentum (see
        :func:`optlab.scale_by_projected_adam`).
      update_every: refresh period of that subspace (Python int >= 1).
      min_dim_size: matrices with a side smaller than this keep a full momentum.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_subset_norm()
      >>> params = {"w": jnp.ones((4, 16)), "b": jnp.ones((16,))}
      >>> state = tx.init(params)
      >>> print(state.nu["w"].shape, state.nu["b"].shape)  # one value per row; one per vector
      (4, 1) (1,)

    State:
      ``ScaleByReducedAdamState(count, mu, nu)``: ``nu`` has the reduced shape above;
      ``mu`` is like the params (``b1 > 0``), the Subspace-Momentum state
      (``momentum_rank``) or empty (``b1 = 0``).

    References:
      Nguyen, Nguyen and Ene, `Efficient Adaptive Optimization via Subset-Norm and
      Subspace-Momentum: Fast, Memory-Reduced Training with Convergence Guarantees
      <https://arxiv.org/abs/2411.07120>`_, 2024.
    """
    fn = "scale_by_subset_norm"
    _base.check_decay(fn, b1=b1, b2=b2)
    _base.check_nonnegative(fn, eps=eps, eps_root=eps_root)
    if subset_size is not None:
        _base.check_int(fn, subset_size=subset_size)
    if momentum_rank is not None:
        check_projection(
            fn, momentum_rank, projector, update_every, min_dim_size, rank_name="momentum_rank"
        )

    return _subset_norm(
        fn, b1, b2, eps, eps_root, subset_size, momentum_rank, projector, update_every, min_dim_size
    )


def _subset_norm(
    fn, b1, b2, eps, eps_root, subset_size, momentum_rank, projector, update_every, min_dim_size
):
    """:func:`scale_by_subset_norm` without validation (errors name ``fn``)."""

    def reducer_for(x, spec):
        del spec
        if subset_size is not None:
            return _Reducer(None, subset_size)
        return _Reducer(_largest_axis(jnp.shape(x)))

    if momentum_rank is not None:
        momentum = _projected(
            fn,
            _debiased_ema(b1),
            momentum_rank,
            projector,
            update_every,
            min_dim_size=min_dim_size,
            residual="sgd",
        )
    elif _base.is_concrete_number(b1) and float(b1) == 0.0:
        momentum = None
    else:
        momentum = _debiased_ema(b1)
    return _reduced_adam(fn, reducer_for, b1, b2, eps, eps_root, momentum=momentum)


def scale_by_adam_mini(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    reduce_axes: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam-mini: Adam with one second moment per block of parameters.

    :math:`v_B \leftarrow \beta_2 v_B + (1-\beta_2)\,\mathrm{mean}_{i\in B} g_i^2`, step
    :math:`\hat m / (\sqrt{\hat v_B + \epsilon_{root}} + \epsilon)` with Adam's full first
    moment. Blocks: by default one per leaf. ``reduce_axes`` chooses finer blocks: a
    tuple of axes to average over for every leaf, a tree of such tuples (``None`` for a
    leaf's default) or a function ``params -> tree``. For a Flax attention kernel stored
    ``(embed, heads, head_dim)``, ``(0, 2)`` gives one value per head (the paper's
    partition for queries and keys); ``(0,)`` on a ``(in, out)`` kernel gives one value
    per output neuron; ``()`` keeps Adam's per-coordinate value.

    Args:
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: added outside the square root (>= 0).
      eps_root: added inside the square root (>= 0).
      reduce_axes: the partition, as above (None: one block per leaf).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_adam_mini(reduce_axes={"q": (0, 2), "b": None})
      >>> params = {"q": jnp.ones((8, 2, 4)), "b": jnp.ones((3,))}
      >>> print(tx.init(params).nu["q"].shape)  # one value per head
      (1, 2, 1)

    State:
      ``ScaleByReducedAdamState(count, mu, nu)``: ``mu`` like the params, ``nu`` one
      value per block (shaped like the leaf with the reduced axes of size 1).

    References:
      Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
      <https://arxiv.org/abs/2406.16793>`_, 2024.
    """
    fn = "scale_by_adam_mini"
    _base.check_decay(fn, b1=b1, b2=b2)
    _base.check_nonnegative(fn, eps=eps, eps_root=eps_root)

    return _adam_mini(fn, b1, b2, eps, eps_root, reduce_axes)


def _adam_mini(fn, b1, b2, eps, eps_root, reduce_axes):
    """:func:`scale_by_adam_mini` without validation (errors name ``fn``)."""

    def reducer_for(x, spec):
        ndim = jnp.ndim(x)
        if spec is None:
            return _Reducer(tuple(range(ndim)))
        axes = (spec,) if isinstance(spec, int) else tuple(spec)
        if any(not isinstance(a, (int, np.integer)) or not -ndim <= a < max(ndim, 1) for a in axes):
            raise ValueError(
                f"`optlab.{fn}`: `reduce_axes` must hold axes of each leaf, got {axes!r} for"
                f" a leaf of shape {jnp.shape(x)}."
            )
        return _Reducer(tuple(sorted(a % ndim for a in axes)))

    if isinstance(reduce_axes, (tuple, int)):
        spec = reduce_axes
        reduce_axes = lambda tree: _none_map(lambda x: spec, tree)
    return _reduced_adam(
        fn, reducer_for, b1, b2, eps, eps_root, reduce_spec=reduce_axes, momentum=_debiased_ema(b1)
    )


# ---------------------------------------------------------------------------
# Low-rank projection: GaLore, SVD-free DCT, online PCA; FRUGAL
# ---------------------------------------------------------------------------


class ProjectedState(NamedTuple):
    """State for :func:`optlab.scale_by_projected_adam` and :func:`optlab.scale_by_frugal`."""

    count: jax.Array  # int32 scalar
    inner: Any  # the inner transform's state on the rank-r (or full, fallback) tree
    projector: Any  # per leaf: (k, r) basis, (r,) int32 DCT indices, or a (1,) placeholder


class _Plan(NamedTuple):
    """Static plan of one projected leaf: ``x_c = x.T if transpose else x``, shape (k, o)."""

    transpose: bool
    k: int  # projected side
    other: int
    rank: int


def check_projection(
    fn, rank, projector, update_every, min_dim_size, *, rank_name="rank", every_name="update_every"
):
    """Validate the structural arguments of a projection, under the names the user spelled."""
    _base.check_int(fn, **{rank_name: rank, every_name: update_every}, min_dim_size=min_dim_size)
    if projector not in PROJECTORS:
        raise ValueError(
            f"`optlab.{fn}`: `projector` must be one of {PROJECTORS}, got projector={projector!r}."
        )


def _plan(x, project: bool, rank: int, min_dim_size: int, side: str) -> _Plan | None:
    shape = jnp.shape(x)
    if not project or len(shape) != 2 or min(shape) < min_dim_size:
        return None
    m, n = shape
    small_first = m <= n
    # side="small": project the smaller side (the paper); "large": optax.contrib's choice.
    transpose = (not small_first) if side == "small" else small_first and m != n
    k, other = (n, m) if transpose else (m, n)
    return _Plan(transpose, k, other, min(rank, m, n))


def _dct_columns(k: int, idx: jax.Array) -> jax.Array:
    """Columns ``idx`` of the orthonormal DCT-II basis of size ``k`` (float32, (k, len(idx)))."""
    i = jnp.arange(k, dtype=jnp.float32)[:, None]
    j = idx.astype(jnp.float32)[None, :]
    scale = jnp.where(j == 0, jnp.sqrt(1.0 / k), jnp.sqrt(2.0 / k))
    return scale * jnp.cos(jnp.pi * (i + 0.5) * j / k)


def _top_left_singular(x_c: jax.Array, r: int, transposed: bool) -> jax.Array:
    """Top-``r`` left singular vectors of ``x_c``; computed on the original orientation of the
    leaf (``x_c.T`` when ``transposed``), so that the signs are optax.contrib.galore's."""
    if transposed:
        _, _, vh = jnp.linalg.svd(x_c.T, full_matrices=False)
        return vh[:r, :].T
    u, _, _ = jnp.linalg.svd(x_c, full_matrices=False)
    return u[:, :r]


def _orthonormalize(p: jax.Array) -> jax.Array:
    q, rr = jnp.linalg.qr(p)
    sign = jnp.where(jnp.diagonal(rr) < 0, -1.0, 1.0).astype(q.dtype)
    return q * sign[None, :]  # continuous with p (no arbitrary sign flips)


def _projected(
    fn_name: str,
    inner: optax.GradientTransformation,
    rank: int,
    projector: str,
    update_every: int,
    *,
    mask: Any = None,
    min_dim_size: int = 2,
    side: str = "large",
    residual: str | None = None,
    scale: Any = 1.0,
    residual_scale: Any = 1.0,
    projector_lr: Any = 0.1,
) -> optax.GradientTransformationExtraArgs:
    """``inner`` on ``P^T x`` for matrices (``x`` otherwise), mapped back by ``P``.

    ``residual``: None (dropped, GaLore), ``"sgd"`` (added unchanged) or ``"sign"``
    (its sign, signSGD), scaled by ``residual_scale``.
    """
    inner = optax.with_extra_args_support(inner)

    def plans(tree):
        m = _resolve_mask(mask, tree)
        return jax.tree.map(
            lambda x, p: None if x is None else _plan(x, bool(p), rank, min_dim_size, side),
            tree,
            m,
            is_leaf=_is_none,
        )

    def proj_init(x, pl):
        if pl is None:
            return jnp.zeros((1,), x.dtype)  # a placeholder: orbax refuses zero-size arrays
        if projector == "dct":
            return jnp.arange(pl.rank, dtype=jnp.int32)
        if projector == "identity":
            return jnp.zeros((1,), jnp.int32)
        return jnp.zeros((pl.k, pl.rank), x.dtype)

    def low_like(x, pl):
        return x if pl is None else jnp.zeros((pl.rank, pl.other), x.dtype)

    def init_fn(params):
        _base.check_float_tree(fn_name, params)
        pls = _leafwise(plans(params), params)
        low = jax.tree.map(
            lambda x, pl: None if x is None else low_like(x, pl[0]), params, pls, is_leaf=_is_none
        )
        proj = jax.tree.map(
            lambda x, pl: None if x is None else proj_init(x, pl[0]), params, pls, is_leaf=_is_none
        )
        return ProjectedState(jnp.zeros([], jnp.int32), inner.init(low), proj)

    def basis(x_c, old, pl, count):
        """The new projector state and the float32 basis P (k, r) for this step."""
        refresh = count % update_every == 0
        if projector == "identity":
            return old, jnp.eye(pl.k, pl.rank, dtype=jnp.float32)
        if projector == "dct":

            def select():
                d_all = _dct_columns(pl.k, jnp.arange(pl.k))
                scores = jnp.sum((d_all.T @ x_c) ** 2, axis=1)
                return jax.lax.top_k(scores, pl.rank)[1].astype(jnp.int32)

            idx = jax.lax.cond(refresh, select, lambda: old)
            return idx, _dct_columns(pl.k, idx)
        old32 = old.astype(jnp.float32)
        if projector == "svd":
            p = jax.lax.cond(
                refresh, lambda: _top_left_singular(x_c, pl.rank, pl.transpose), lambda: old32
            )
        else:  # online PCA: one gradient step on ||X - P P^T X||^2 / ||X||^2, re-orthonormalized

            def pca_step():
                b = x_c @ (x_c.T @ old32)
                grad = -2.0 * (b - old32 @ (old32.T @ b)) / (jnp.sum(x_c * x_c) + 1e-30)
                return _orthonormalize(old32 - projector_lr * grad)

            def first():
                return _top_left_singular(x_c, pl.rank, pl.transpose)

            p = jax.lax.cond(
                count == 0, first, lambda: jax.lax.cond(refresh, pca_step, lambda: old32)
            )
        return p.astype(old.dtype), p

    def update_fn(updates, state, params=None, **extra_args):
        _check_structure(fn_name, updates, state.projector)
        pls = _leafwise(plans(updates), updates)
        count = state.count

        def down(g, old, pl):
            pl = pl[0]
            if pl is None:
                return _Down(g, old)
            x = _tree.to_acc(_tree.gathered(g))
            x_c = x.T if pl.transpose else x
            new_old, p = basis(x_c, old, pl, count)
            return _Down((p.T @ x_c).astype(g.dtype), new_old, x_c, p, pl)

        downs = jax.tree.map(
            lambda g, o, pl: None if g is None else down(g, o, pl),
            updates,
            state.projector,
            pls,
            is_leaf=_is_none,
        )
        low = jax.tree.map(lambda d: None if d is None else d.low, downs, is_leaf=_is_none)
        new_proj = jax.tree.map(lambda d: None if d is None else d.proj, downs, is_leaf=_is_none)
        inner_updates, inner_state = inner.update(low, state.inner, params, **extra_args)

        def up(u, d, g):
            if d.plan is None:
                return u
            back = scale * (d.p @ _tree.to_acc(u))
            if residual is not None:
                res = d.x_c - d.p @ (d.p.T @ d.x_c)
                if residual == "sign":  # rounding noise of a residual that is zero: no step
                    noise = d.plan.k * jnp.finfo(jnp.float32).eps * jnp.max(jnp.abs(d.x_c))
                    res = jnp.where(jnp.abs(res) <= noise, 0.0, jnp.sign(res))
                back = back + residual_scale * res
            back = back.T if d.plan.transpose else back
            return _tree.reshard_like(back.astype(g.dtype), g)

        out = jax.tree.map(
            lambda u, d, g: None if g is None else up(u, d, g),
            inner_updates,
            downs,
            updates,
            is_leaf=_is_none,
        )
        return out, ProjectedState(optax.safe_increment(count), inner_state, new_proj)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _Down:
    """One leaf on its way down (not a pytree node: tree maps treat it as a leaf)."""

    def __init__(self, low, proj, x_c=None, p=None, plan=None):
        self.low, self.proj, self.x_c, self.p, self.plan = low, proj, x_c, p, plan


def _leafwise(plan_tree, like):
    """Wrap each leaf's plan in a 1-tuple so ``None`` (no projection) survives tree maps."""
    return jax.tree.map(
        lambda x, pl: None if x is None else (pl,), like, plan_tree, is_leaf=_is_none
    )


def scale_by_projected_adam(
    rank: int = 128,
    projector: str = "svd",
    update_every: int = 200,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    scale: jax.typing.ArrayLike = 1.0,
    *,
    mask: optax.MaskOrFn = None,
    min_dim_size: int = 2,
    side: str = "large",
    projector_lr: jax.typing.ArrayLike = 0.1,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with rank-``r`` moments: project the gradient, adapt, project back.

    For a matrix gradient :math:`G` (shape :math:`k \times o` after an optional
    transpose) with a projector :math:`P \in \mathbb{R}^{k\times r}`,
    :math:`R = P^\top G`, the rank-``r`` moments follow Adam on :math:`R`
    (``optax.scale_by_adam``), and the update is :math:`\alpha\, P\,
    \mathrm{Adam}(R)` (:math:`\alpha` = ``scale``). Moments are not rotated when the
    projector changes (as in GaLore).

    Projectors (``projector``):

    * ``"svd"`` (GaLore): the top-``r`` left singular vectors of :math:`G`, recomputed
      every ``update_every`` steps.
    * ``"dct"`` (SVD-free): the ``r`` columns of the orthonormal DCT-II basis with the
      largest :math:`\|D_j^\top G\|`, reselected every ``update_every`` steps; the state
      stores only the ``r`` int32 column indices (the columns are recomputed).
    * ``"online_pca"`` (Online Subspace Descent): an SVD at the first step, then every
      ``update_every`` steps one gradient step of size ``projector_lr`` on the PCA loss
      :math:`\|G - PP^\top G\|^2/\|G\|^2`, re-orthonormalized by QR (sign-fixed).
    * ``"identity"``: the first ``r`` columns of the identity (for tests: with full
      rank on square matrices it is Adam).

    Which leaves: a leaf is projected when it is a 2-D matrix whose sides are both
    ``>= min_dim_size`` and ``mask`` (a bool tree or ``params -> bool tree``) is True
    for it; every other leaf (vectors, scalars, higher-rank kernels, small or masked
    matrices) takes a full Adam step. The rank is clamped per leaf to
    :math:`\min(r, m, n)` (documented clamp: a rank at or above a side gives the full
    rank of that leaf). ``side="large"`` (default, optax.contrib's choice) projects the
    larger side: a :math:`\max(m,n) \times r` projector and :math:`r \times \min(m,n)`
    moments, :math:`r(\max + 2\min)` numbers; ``"small"`` projects the smaller side as
    the paper writes it: :math:`r(\min + 2\max)`. With ``"small"`` and full rank the
    projector is square and orthogonal, so the method is exactly Adam in a rotated basis.

    Args:
      rank: Python int >= 1.
      projector: ``"svd"``, ``"dct"``, ``"online_pca"`` or ``"identity"``.
      update_every: projector refresh period ``T`` (Python int >= 1).
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: Adam's epsilon (>= 0).
      scale: :math:`\alpha` (> 0), GaLore's scale of the projected-back update.
      mask: which matrices to project (None: all that qualify).
      min_dim_size: smaller matrices take the full Adam path (Python int >= 1).
      side: ``"small"`` or ``"large"``.
      projector_lr: step size of the online PCA update (> 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_projected_adam(rank=2, update_every=10)
      >>> params = {"w": jnp.ones((4, 6)), "b": jnp.ones((6,))}
      >>> state = tx.init(params)
      >>> print(state.inner.mu["w"].shape, state.projector["w"].shape, state.inner.mu["b"].shape)
      (2, 4) (6, 2) (6,)

    State:
      ``ProjectedState(count, inner, projector)``: ``inner`` is ``optax.scale_by_adam``'s
      state on the tree of rank-``r`` gradients (``(r, min(m, n))`` per projected matrix
      with ``side="large"``, full shape elsewhere); ``projector`` holds a
      ``(max(m, n), r)`` basis in the
      parameter dtype (``"svd"``, ``"online_pca"``), ``r`` int32 indices (``"dct"``) or
      a one-element placeholder (``"identity"``, unprojected leaves; orbax cannot save
      zero-size arrays).

    References:
      Zhao et al., `GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection
      <https://arxiv.org/abs/2403.03507>`_, 2024.
      Modoranu et al., `SVD-Free Low-Rank Adaptive Gradient Optimization for Large
      Language Models <https://arxiv.org/abs/2505.17967>`_, 2025.
      Liang et al., `Memory-Efficient LLM Training with Online Subspace Descent
      <https://arxiv.org/abs/2408.12857>`_, 2024.
    """
    fn = "scale_by_projected_adam"
    _base.check_positive(fn, scale=scale)
    check_side(fn, side)
    return _projected_adam(
        fn,
        rank,
        projector,
        update_every,
        b1,
        b2,
        eps,
        mask,
        min_dim_size,
        projector_lr,
        side=side,
        scale=scale,
    )


def _projected_adam(
    fn, rank, projector, update_every, b1, b2, eps, mask, min_dim_size, projector_lr, **kwargs
):
    """The checks and the build shared by the public projected-Adam factories."""
    check_projection(fn, rank, projector, update_every, min_dim_size)
    _base.check_decay(fn, b1=b1, b2=b2)
    _base.check_nonnegative(fn, eps=eps)
    _base.check_positive(fn, projector_lr=projector_lr)
    inner = optax.scale_by_adam(b1, b2, eps)
    return _projected(
        fn,
        inner,
        rank,
        projector,
        update_every,
        mask=mask,
        min_dim_size=min_dim_size,
        projector_lr=projector_lr,
        **kwargs,
    )


def check_side(fn, side):
    if side not in ("small", "large"):
        raise ValueError(f"`optlab.{fn}`: `side` must be 'small' or 'large', got side={side!r}.")


def check_residual(fn, residual):
    if residual not in ("sign", "sgd"):
        raise ValueError(
            f"`optlab.{fn}`: `residual` must be 'sign' or 'sgd', got residual={residual!r}."
        )


def scale_by_frugal(
    rank: int = 128,
    projector: str = "svd",
    update_every: int = 200,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    residual_scale: jax.typing.ArrayLike = 1.0,
    *,
    residual: str = "sign",
    mask: optax.MaskOrFn = None,
    min_dim_size: int = 2,
    projector_lr: jax.typing.ArrayLike = 0.1,
) -> optax.GradientTransformationExtraArgs:
    r"""FRUGAL: Adam in a rank-``r`` subspace, a state-free step on the residual.

    :math:`G = PP^\top G + (I - PP^\top)G`: the projected part takes Adam's step with
    rank-``r`` moments (exactly :func:`optlab.scale_by_projected_adam`), the residual
    takes a state-free step, :math:`\mathrm{sign}((I-PP^\top)G)` (signSGD,
    ``residual="sign"``; entries below :math:`k\,\epsilon_{32} \max|G|`, the rounding
    noise of a residual that is zero, give no step) or :math:`(I-PP^\top)G` (``"sgd"``),
    times ``residual_scale``.
    The update is the sum; leaves that are not projected take a full Adam step.

    Args:
      rank: Python int >= 1 (clamped per leaf to its smaller side).
      projector: ``"svd"``, ``"dct"``, ``"online_pca"`` or ``"identity"``.
      update_every: projector refresh period (Python int >= 1).
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: Adam's epsilon (>= 0).
      residual_scale: scale of the residual step (>= 0; the paper's ratio of the
        state-free learning rate to the state-full one).
      residual: ``"sign"`` or ``"sgd"``.
      mask: which matrices to project (None: all that qualify).
      min_dim_size: smaller matrices take the full Adam path.
      projector_lr: step size of the online PCA update (> 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_frugal(rank=1)
      >>> params = {"w": jnp.arange(6.0).reshape(2, 3)}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> print(updates["w"].shape)
      (2, 3)

    State:
      ``ProjectedState(count, inner, projector)`` as for
      :func:`optlab.scale_by_projected_adam`; the residual path keeps nothing.

    References:
      Zmushko et al., `FRUGAL: Memory-Efficient Optimization by Reducing State Overhead
      for Scalable Training <https://arxiv.org/abs/2411.07837>`_, 2024.
    """
    fn = "scale_by_frugal"
    _base.check_nonnegative(fn, residual_scale=residual_scale)
    check_residual(fn, residual)
    return _projected_adam(
        fn,
        rank,
        projector,
        update_every,
        b1,
        b2,
        eps,
        mask,
        min_dim_size,
        projector_lr,
        residual=residual,
        residual_scale=residual_scale,
    )


# ---------------------------------------------------------------------------
# BAdam: block-coordinate Adam
# ---------------------------------------------------------------------------


class ScaleByBAdamState(NamedTuple):
    """State for :func:`optlab.scale_by_badam`."""

    count: jax.Array  # int32 scalar: steps taken
    key: jax.Array  # uint32[2] PRNG key of the random block order
    mu: jax.Array  # (largest block size,) first moment of the active block, flat
    nu: jax.Array  # (largest block size,) second moment of the active block, flat


def _top_level_labels(params):
    """Default blocks: one per top-level key / index of the params tree."""
    if isinstance(params, dict):
        return {k: jax.tree.map(lambda _, k=k: str(k), v) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(jax.tree.map(lambda _, i=i: str(i), v) for i, v in enumerate(params))
    return jax.tree.map(lambda _: "0", params)


def scale_by_badam(
    switch_every: int = 50,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    blocks: Any = None,
    order: str = "ascending",
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""BAdam: Adam on one block of parameters at a time; the other blocks do not move.

    The leaves are grouped into blocks by ``blocks`` (a tree of hashable labels like the
    params, or ``params -> labels``; default one block per top-level key). Block
    :math:`\pi(\lfloor t/K \rfloor \bmod B)` is active for ``K = switch_every`` steps;
    its Adam moments start from zero at each switch (bias correction restarts), every
    other block gets a zero update. ``order``: ``"ascending"`` / ``"descending"`` (label
    order) or ``"random"`` (a fresh random permutation of the blocks every epoch of
    ``B * K`` steps, from ``seed``).

    Static shapes: the moments of the active block are two flat buffers of the size of
    the *largest* block (its leaves raveled and concatenated, the rest padding), so the
    state never changes shape and holds only one block's moments: ``2 * max_b |b|``
    elements instead of Adam's ``2 * sum_b |b|``. One ``lax.switch`` branch per block
    gathers and scatters that block's leaves. Under explicit sharding the buffers are
    replicated and the active block's gradients are gathered.

    Args:
      switch_every: ``K``, steps per active block (Python int >= 1).
      b1: first-moment decay in [0, 1).
      b2: second-moment decay in [0, 1).
      eps: Adam's epsilon (>= 0).
      blocks: block labels (see above).
      order: ``"ascending"``, ``"descending"`` or ``"random"``.
      seed: seed of the random order (Python int).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.scale_by_badam(switch_every=2)
      >>> params = {"a": jnp.ones((3,)), "b": jnp.ones((2, 2))}
      >>> state = tx.init(params)
      >>> print(state.mu.shape)  # the larger block: 4 elements
      (4,)
      >>> updates, state = tx.update(params, state, params)
      >>> print(updates["b"])  # block "a" is active first
      [[0. 0.]
       [0. 0.]]

    State:
      ``ScaleByBAdamState(count, key, mu, nu)``: ``mu``/``nu`` flat, the size of the
      largest block, in the float dtype the block leaves promote to.

    References:
      Luo, Yu and Li, `BAdam: A Memory Efficient Full Parameter Optimization Method for
      Large Language Models <https://arxiv.org/abs/2404.02827>`_, 2024.
    """
    fn = "scale_by_badam"
    _base.check_int(fn, switch_every=switch_every)
    _base.check_int(fn, minimum=0, seed=seed)
    _base.check_decay(fn, b1=b1, b2=b2)
    _base.check_nonnegative(fn, eps=eps)
    check_badam_order(fn, order)
    return _base.public(fn, _badam(fn, switch_every, b1, b2, eps, blocks, order, seed))


def check_badam_order(fn, order):
    if order not in ("ascending", "descending", "random"):
        raise ValueError(
            f"`optlab.{fn}`: `order` must be 'ascending', 'descending' or 'random',"
            f" got order={order!r}."
        )


def _badam(fn, switch_every, b1, b2, eps, blocks, order, seed):
    """:func:`scale_by_badam` without validation (errors name ``fn``)."""

    def layout(tree):
        """(sorted labels, leaf indices per block, flat leaves with None kept)."""
        leaves, _ = jax.tree.flatten(tree, is_leaf=_is_none)
        labels = blocks(tree) if callable(blocks) else blocks
        if labels is None:
            labels = _top_level_labels(tree)
        try:
            label_leaves = jax.tree.structure(tree, is_leaf=_is_none).flatten_up_to(labels)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"`optlab.{fn}`: `blocks` must give one label per parameter leaf (a tree like"
                f" the params), got {labels!r}: {e}"
            ) from None
        per_block: dict[Any, list[int]] = {}
        for i, (x, lab) in enumerate(zip(leaves, label_leaves)):
            if x is None:
                continue
            if lab is None:
                raise ValueError(
                    f"`optlab.{fn}`: `blocks` must label every parameter leaf; leaf {i}"
                    f" (shape {jnp.shape(x)}) has label None."
                )
            per_block.setdefault(lab, []).append(i)
        names = sorted(per_block, key=str)
        if order == "descending":
            names = names[::-1]
        return names, [per_block[n] for n in names], leaves

    def buffer_dtype(leaves):
        dts = [jnp.result_type(x) for x in leaves if x is not None]
        return jnp.result_type(*dts) if dts else jnp.float32

    def init_fn(params):
        _base.check_float_tree(fn, params)
        _names, members, leaves = layout(params)
        size = max((sum(math.prod(jnp.shape(leaves[i])) for i in m) for m in members), default=0)
        dt = buffer_dtype(leaves)
        key = jax.random.PRNGKey(seed)  # raw uint32[2]: counted in bytes like any array
        return ScaleByBAdamState(
            jnp.zeros([], jnp.int32), key, jnp.zeros((size,), dt), jnp.zeros((size,), dt)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        names, members, leaves = layout(updates)
        treedef = jax.tree.structure(updates, is_leaf=_is_none)
        n_blocks = len(names)
        size = state.mu.shape[0]
        if n_blocks == 0:
            return updates, state._replace(count=optax.safe_increment(state.count))
        count = state.count
        period = count // switch_every
        epoch, pos = period // n_blocks, period % n_blocks
        if order == "random":
            perm = jax.random.permutation(jax.random.fold_in(state.key, epoch), n_blocks)
            active = perm[pos]
        else:
            active = pos
        local = (count % switch_every).astype(jnp.float32)  # steps since the switch
        fresh = count % switch_every == 0  # reset the moments on a switch
        mu0 = jnp.where(fresh, jnp.zeros_like(state.mu), state.mu)
        nu0 = jnp.where(fresh, jnp.zeros_like(state.nu), state.nu)
        dt = state.mu.dtype

        def branch(b):
            idx = members[b]

            def run(mu, nu):
                flat = [_tree.gathered(leaves[i]).reshape(-1).astype(dt) for i in idx]
                n = sum(f.shape[0] for f in flat)
                g = jnp.concatenate(flat + [jnp.zeros((size - n,), dt)])
                mu = (b1 * mu + (1 - b1) * g).astype(dt)
                nu = (b2 * nu + (1 - b2) * g * g).astype(dt)
                c1 = 1 - jnp.asarray(b1, jnp.float32) ** (local + 1)
                c2 = 1 - jnp.asarray(b2, jnp.float32) ** (local + 1)
                step = (_tree.to_acc(mu) / c1) / (jnp.sqrt(_tree.to_acc(nu) / c2) + eps)
                out = [None if x is None else jnp.zeros_like(x) for x in leaves]
                offset = 0
                for i in idx:
                    x = leaves[i]
                    d = math.prod(jnp.shape(x))
                    piece = step[offset : offset + d].reshape(jnp.shape(x)).astype(x.dtype)
                    out[i] = _tree.reshard_like(piece, x)
                    offset += d
                return out, mu, nu

            return run

        out, mu, nu = jax.lax.switch(active, [branch(b) for b in range(n_blocks)], mu0, nu0)
        new_updates = jax.tree.unflatten(treedef, out)
        return new_updates, ScaleByBAdamState(optax.safe_increment(count), state.key, mu, nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Low-precision state: 8-bit block-wise quantization, bf16 with stochastic rounding
# ---------------------------------------------------------------------------


def dynamic_quantization_map(signed: bool = True) -> np.ndarray:
    """The 256 values of the 8-bit dynamic tree quantization map, sorted, in [-1, 1].

    Dettmers' dynamic data type as bitsandbytes builds it (``create_dynamic_map`` with
    7 exponent bits): for decade ``i = 0..6`` the midpoints of ``2**i`` (signed) or
    ``2**(i+1)`` (unsigned) equal steps of ``[0.1, 1]``, times ``10**(i - 6)``, their
    negatives when signed, plus 0 and 1.

    Args:
      signed: the signed map (first moments) or the unsigned one (second moments).

    Returns:
      A float32 NumPy array of 256 increasing values.

    Example:
      >>> import optlab
      >>> m = optlab.dynamic_quantization_map(signed=False)
      >>> print(m.shape, m[0], m[-1])
      (256,) 0.0 1.0
    """
    data: list[float] = []
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        bounds = np.linspace(0.1, 1.0, items)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += (10.0 ** (i - 6) * means).tolist()
        if signed:
            data += (-(10.0 ** (i - 6)) * means).tolist()
    data += [0.0, 1.0]
    return np.sort(np.asarray(data, np.float32))


class QuantizedLeaf(NamedTuple):
    """One quantized state leaf: 8-bit codes and a float32 absmax per block."""

    codes: jax.Array  # (n_blocks, block_size) uint8
    absmax: jax.Array  # (n_blocks,) float32


class QuantizedMomentsState(NamedTuple):
    """State for :func:`optlab.quantized_moments` (and :func:`optlab.bf16_moments`)."""

    inner: Any  # the inner state; compressed leaves replaced by their encoding
    key: jax.Array  # uint32[2] PRNG key (stochastic rounding of bf16_moments; unused by int8)


def _compressible(path, x, min_size: int) -> bool:
    return (
        hasattr(x, "dtype")
        and jnp.issubdtype(x.dtype, jnp.floating)
        and math.prod(x.shape) >= min_size
    )


def _is_second_moment(path) -> bool:
    names = [getattr(p, "name", getattr(p, "key", None)) for p in path]
    return any(n in ("nu", "nu_max", "v") for n in names)


def _compressed_state(
    fn_name: str,
    inner: optax.GradientTransformation,
    min_size: int,
    encode: Callable,
    decode: Callable,
    seed: int,
):
    """Wrap ``inner`` so that its large float state leaves are stored encoded."""
    inner = optax.with_extra_args_support(inner)

    def template(tree):
        return jax.eval_shape(inner.init, tree)

    def encode_tree(state, key):
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
        keys = jax.random.split(key, max(len(paths_leaves), 1))
        out = [
            encode(path, x, k) if _compressible(path, x, min_size) else x
            for (path, x), k in zip(paths_leaves, keys)
        ]
        return jax.tree.unflatten(treedef, out)

    def decode_tree(enc, tmpl):
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tmpl)
        enc_leaves = treedef.flatten_up_to(enc)
        out = [
            decode(path, e, t) if _compressible(path, t, min_size) else e
            for (path, t), e in zip(paths_leaves, enc_leaves)
        ]
        return jax.tree.unflatten(treedef, out)

    def init_fn(params):
        _base.check_float_tree(fn_name, params)
        key = jax.random.PRNGKey(seed)  # raw uint32[2]: counted in bytes like any array
        return QuantizedMomentsState(encode_tree(inner.init(params), key), key)

    def update_fn(updates, state, params=None, **extra_args):
        tmpl = template(updates)
        inner_state = decode_tree(state.inner, tmpl)
        new_updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
        key, sub = jax.random.split(state.key)
        return new_updates, QuantizedMomentsState(encode_tree(inner_state, sub), key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
    flat = _tree.gathered(x).reshape(-1)
    n = -(-flat.shape[0] // block_size)
    return jnp.pad(flat, (0, n * block_size - flat.shape[0])).reshape(n, block_size)


def _quantize(x: jax.Array, block_size: int, code: np.ndarray | None, positive_floor: bool = False):
    """Block-wise absmax quantization: (codes uint8, absmax float32).

    ``positive_floor``: a positive element never gets the code of zero (it gets the
    smallest positive code instead), for second moments: a flushed second moment under a
    surviving first moment makes Adam divide by ``eps`` alone (a huge step).
    """
    xb = _tree.to_acc(_blocks(x, block_size)).astype(jnp.float32)
    absmax = jnp.max(jnp.abs(xb), axis=1)
    # NaN/inf keep their value visible: absmax becomes non-finite, so does every decode.
    normed = xb / jnp.where(absmax == 0, 1.0, absmax)[:, None]
    if code is None:  # linear: 255 levels, -127 .. 127
        q = jnp.clip(jnp.round(normed * 127.0), -127, 127) + 127
        if positive_floor:
            q = jnp.where((normed > 0) & (q == 127), 128, q)
        return QuantizedLeaf(q.astype(jnp.uint8), absmax)
    table = jnp.asarray(code)
    hi = jnp.clip(jnp.searchsorted(table, normed), 1, table.shape[0] - 1)
    lo = hi - 1
    pick_hi = jnp.abs(table[hi] - normed) < jnp.abs(normed - table[lo])
    q = jnp.where(pick_hi, hi, lo)
    if positive_floor:
        zero = int(np.argmin(np.abs(code)))  # the code of 0 (the unsigned map's first)
        q = jnp.where((normed > 0) & (q == zero), zero + 1, q)
    return QuantizedLeaf(q.astype(jnp.uint8), absmax)


def _dequantize(leaf: QuantizedLeaf, like, code: np.ndarray | None) -> jax.Array:
    q = leaf.codes.astype(jnp.int32)
    vals = (q - 127).astype(jnp.float32) / 127.0 if code is None else jnp.asarray(code)[q]
    xb = vals * leaf.absmax[:, None]
    d = math.prod(like.shape)
    return xb.reshape(-1)[:d].reshape(like.shape).astype(like.dtype)


def quantized_moments(
    inner: optax.GradientTransformation,
    *,
    quantization: str = "dynamic",
    block_size: int = 256,
    min_size: int = 4096,
) -> optax.GradientTransformationExtraArgs:
    r"""Stores the float state of ``inner`` in 8 bits, quantized block-wise.

    Every floating state leaf of ``inner`` with at least ``min_size`` elements (Adam's
    ``mu`` and ``nu``; not counts, not small leaves) is stored as uint8 codes plus one
    float32 absmax per block of ``block_size`` consecutive elements (the leaf raveled,
    the last block zero-padded): :math:`q_i = \mathrm{nearest}(x_i / \max_{j\in B}
    |x_j|)` in the code book. ``update`` decodes, runs ``inner``, and re-encodes.

    Code books (``quantization``): ``"dynamic"`` is the 8-bit dynamic tree map of
    :func:`optlab.dynamic_quantization_map` (signed for first moments, unsigned for
    leaves under a state field named ``nu``/``nu_max``/``v``). Rounding is to the nearest
    code, so an element's error is at most half the gap between the two codes around
    ``x / absmax``, times ``absmax``: at most ``0.0070 * absmax`` (the top decade, signed
    map), and ``0.45 * 10**(i - 6) / 2**i * absmax`` in decade ``i`` (coarse relative
    precision far below the block's absmax, as in bitsandbytes). ``"linear"``: 255 equal
    steps of ``[-absmax, absmax]``, error at most ``absmax / 254``. Second moments are
    never flushed to zero: a positive one too small for the smallest positive code is
    stored *as* that code (an overestimate, so a smaller step). Without this floor Adam
    diverged on the digits MLP (inputs that are rarely non-zero: their second moment fell
    below the block's resolution while their first moment did not, and the update became
    ``m / eps``; ``benchmarks/memory_digits.py``).

    Args:
      inner: the transformation whose state is quantized (e.g. ``optlab.adamw(1e-3)``).
      quantization: ``"dynamic"`` or ``"linear"``.
      block_size: elements per absmax block (Python int >= 1; 256 as in the paper).
      min_size: smallest leaf that is quantized (Python int >= 1).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.quantized_moments(optax.adam(1e-3), min_size=1)
      >>> params = {"w": jnp.ones((300,))}
      >>> state = tx.init(params)
      >>> print(state.inner[0].mu["w"].codes.shape, state.inner[0].mu["w"].codes.dtype)
      (2, 256) uint8

    State:
      ``QuantizedMomentsState(inner, key)``: ``inner``'s state with every quantized leaf
      replaced by ``QuantizedLeaf(codes, absmax)`` (``1 + 4 / block_size`` bytes per
      element), and an unused PRNG key.

    References:
      Dettmers et al., `8-bit Optimizers via Block-wise Quantization
      <https://arxiv.org/abs/2110.02861>`_, 2022.
    """
    fn = "quantized_moments"
    _base.check_int(fn, block_size=block_size, min_size=min_size)
    if quantization not in ("dynamic", "linear"):
        raise ValueError(
            f"`optlab.{fn}`: `quantization` must be 'dynamic' or 'linear', got"
            f" quantization={quantization!r}."
        )
    signed = unsigned = None
    if quantization == "dynamic":
        signed, unsigned = dynamic_quantization_map(True), dynamic_quantization_map(False)

    def code_for(path):
        if quantization == "linear":
            return None
        return unsigned if _is_second_moment(path) else signed

    def encode(path, x, key):
        del key
        return _quantize(x, block_size, code_for(path), positive_floor=_is_second_moment(path))

    def decode(path, enc, like):
        return _tree.reshard_like(_dequantize(enc, like, code_for(path)), like)

    return _base.public(fn, _compressed_state(fn, inner, min_size, encode, decode, seed=0))


def stochastic_round(x: jax.Array, key: jax.Array, dtype: Any = jnp.bfloat16) -> jax.Array:
    r"""Rounds float32 ``x`` to bfloat16 stochastically: up or down, unbiased.

    ``x`` lies between two neighbouring bfloat16 values :math:`a \le x < b`; the result
    is :math:`b` with probability :math:`(x - a)/(b - a)`, else :math:`a`, so
    :math:`E[\mathrm{round}(x)] = x` and the error is below one bfloat16 ulp. Done on the
    bits: a uniform random 16-bit integer is added to the low half of the float32 bit
    pattern, which is then truncated. Deterministic for a fixed ``key``. Non-finite
    values are kept; a value within one ulp of the largest bfloat16 may round to inf.

    Args:
      x: a float32 array (bfloat16 / float16 inputs are converted exactly first).
      key: a PRNG key.
      dtype: the target dtype; only ``jnp.bfloat16``.

    Returns:
      ``x`` in bfloat16.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> x = jnp.full((10000,), 1.0 + 2.0**-9)  # a quarter of the way to the next bf16
      >>> y = optlab.stochastic_round(x, jax.random.key(0)).astype(jnp.float32)
      >>> print(set(y.tolist()) == {1.0, 1.0078125}, abs(float(y.mean()) - float(x[0])) < 1e-4)
      True True
    """
    if jnp.dtype(dtype) != jnp.dtype(jnp.bfloat16):
        raise TypeError(
            f"`optlab.stochastic_round`: `dtype` must be bfloat16, got dtype={dtype!r}."
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits > 32:
        raise TypeError(
            "`optlab.stochastic_round`: `x` must be a float32 (or narrower) array, got"
            f" dtype {x.dtype}."
        )
    x32 = x.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x32, jnp.uint32)
    noise = jax.random.bits(key, x32.shape, jnp.uint32) >> 16
    rounded = (bits + noise) & jnp.uint32(0xFFFF0000)
    y = jax.lax.bitcast_convert_type(rounded, jnp.float32)
    y = jnp.where(jnp.isfinite(x32), y, x32)
    return y.astype(jnp.bfloat16)


def stochastic_apply_updates(params: Any, updates: Any, key: jax.Array) -> Any:
    """``optax.apply_updates`` that rounds bfloat16 parameters stochastically.

    Each bfloat16 leaf becomes ``stochastic_round(float32(p) + float32(u))``, so small
    updates are not lost to round-to-nearest (a step below half a bfloat16 ulp would
    otherwise never move the parameter); other leaves are ``p + u`` as in optax.

    Args:
      params: the parameters.
      updates: the updates (same structure).
      key: a PRNG key (split per leaf; pass a fresh one every step).

    Returns:
      The new parameters, in the parameters' dtypes.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> p = {"w": jnp.ones((4096,), jnp.bfloat16)}
      >>> u = {"w": jnp.full((4096,), 1e-3, jnp.float32)}  # below half an ulp (3.9e-3)
      >>> new = optlab.stochastic_apply_updates(p, u, jax.random.key(0))
      >>> print(abs(float(new["w"].astype(jnp.float32).mean()) - 1.001) < 5e-4)
      True
    """
    leaves, treedef = jax.tree.flatten(params, is_leaf=_is_none)
    u_leaves = treedef.flatten_up_to(updates)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for p, u, k in zip(leaves, u_leaves, keys):
        if p is None or u is None:
            out.append(p)
        elif jnp.result_type(p) == jnp.bfloat16:
            out.append(stochastic_round(p.astype(jnp.float32) + jnp.asarray(u, jnp.float32), k))
        else:
            out.append(jnp.asarray(p + u).astype(jnp.result_type(p)))
    return jax.tree.unflatten(treedef, out)


def bf16_moments(
    inner: optax.GradientTransformation,
    *,
    seed: int = 0,
    stochastic: bool = True,
    min_size: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Stores the float state of ``inner`` in bfloat16, written with stochastic rounding.

    ``update`` upcasts the stored bfloat16 state to the dtype ``inner`` keeps it in
    (e.g. float32 moments for float32 params), runs ``inner``, and stores the new state
    with :func:`optlab.stochastic_round` (``stochastic=False``: round to nearest). Half
    the bytes of float32 moments; with stochastic rounding an EMA with ``b2 = 0.999``
    still moves (round-to-nearest would freeze updates below half an ulp).

    Args:
      inner: the transformation whose state is stored in bfloat16.
      seed: seed of the rounding key (kept and split in the state; Python int).
      stochastic: stochastic rounding (True) or round to nearest.
      min_size: smallest floating leaf that is stored in bfloat16 (Python int >= 1).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.bf16_moments(optax.adam(1e-3))
      >>> state = tx.init({"w": jnp.ones((3,))})
      >>> print(state.inner[0].nu["w"].dtype)
      bfloat16

    State:
      ``QuantizedMomentsState(inner, key)``: ``inner``'s state with its floating leaves
      (of at least ``min_size`` elements) in bfloat16, and the PRNG key.

    References:
      Zamirai et al., `Revisiting BFloat16 Training <https://arxiv.org/abs/2010.06192>`_,
      2020.
    """
    fn = "bf16_moments"
    _base.check_int(fn, minimum=0, seed=seed)
    _base.check_int(fn, min_size=min_size)

    def encode(path, x, key):
        del path
        if stochastic:
            return _tree.reshard_like(stochastic_round(x.astype(jnp.float32), key), x)
        return x.astype(jnp.bfloat16)

    def decode(path, enc, like):
        del path
        return enc.astype(like.dtype)

    return _compressed_state(fn, inner, min_size, encode, decode, seed=seed)
