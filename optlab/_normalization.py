"""Normalization and projection of updates, and (cautious) decoupled weight decay.

Every transform here is stateless except :func:`radial_projection` (which keeps the
state of the transform it wraps) and the weight-decay transforms given a schedule
(a step counter). Reductions (norms, means, Newton-Schulz products) run in at least
float32 -- in bfloat16 for the Newton-Schulz iteration on bfloat16 leaves, as Muon
does -- and every output is cast back to the dtype of the incoming update.

Layout convention: where a transform needs an *output channel* axis (gradient
centralization, the channel view of AdamP, the ``"reshape"`` rule of the 2-D
transforms), it is the **last** axis, as in Flax kernels ``(..., in, out)``.
PyTorch's ``(out, in, ...)`` layout is available through ``channel_axis=0``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base, _tree

__all__ = [
    "muon_hidden_mask",
    "normalize_by_global_norm",
    "normalize_by_leaf_norm",
    "scale_by_sign",
    "orthogonalize",
    "sinkhorn_normalize",
    "scale_by_trust_ratio",
    "radial_projection",
    "RadialProjectionState",
    "centralize",
    "cautious_weight_decay",
    "WeightDecayScheduleState",
]

_OTHER_RANKS_ORTHO = ("passthrough", "reshape")
_OTHER_RANKS_SINKHORN = ("normalize", "reshape")


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _check_choice(fn_name: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(
            f"`optlab.{fn_name}`: `{name}` must be one of {', '.join(map(repr, choices))},"
            f" got {name}={value!r}."
        )


def check_channel_axis(fn_name: str, channel_axis: Any) -> None:
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
        raise TypeError(
            f"`optlab.{fn_name}`: `channel_axis` must be a Python int, got"
            f" channel_axis={channel_axis!r} of type {type(channel_axis).__name__}."
        )
    if not -64 <= channel_axis < 64:  # no array has more than 64 axes (XLA's limit)
        raise ValueError(
            f"`optlab.{fn_name}`: `channel_axis` must be an axis index in [-64, 64), got"
            f" channel_axis={channel_axis}."
        )


def _reduction_axes(fn_name: str, ndim: int, channel_axis: int) -> tuple[int, ...]:
    """Every axis but the channel axis (``channel_axis`` may be negative)."""
    if not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"`optlab.{fn_name}`: `channel_axis` must index an axis of every leaf of rank > 1,"
            f" got channel_axis={channel_axis} for a leaf of rank {ndim}."
        )
    keep = channel_axis % ndim
    return tuple(i for i in range(ndim) if i != keep)


def _per_leaf_replicated(f, x: jax.Array) -> jax.Array:
    """``f(x)`` on a replicated copy of an explicitly sharded ``x``, resharded back.

    Newton-Schulz contracts sharded axes and the kernel view reshapes them, which explicit
    sharding rejects; a single matrix is small, so it is gathered (as Muon implementations
    do), transformed, and returned with the sharding of ``x``. In the default sharding mode
    this is just ``f(x)`` (XLA picks the layout).
    """
    sharding = _tree.explicit_sharding(x)
    if sharding is None:
        return f(x)
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    y = f(jax.sharding.reshard(x, replicated))
    return jax.sharding.reshard(y, sharding)


def _as_matrix(x: jax.Array) -> jax.Array:
    """View a rank > 2 kernel ``(..., in, out)`` as ``(prod(...) * in, out)``."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


# ---------------------------------------------------------------------------
# Normalized gradient and sign
# ---------------------------------------------------------------------------


def normalize_by_global_norm(
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """Divides the updates by their global L2 norm.

    ``u <- u / (||u||_2 + eps)`` where the norm is taken over every leaf together, so the
    output has global norm ``||u|| / (||u|| + eps)``, i.e. 1 up to ``eps``. A zero update
    stays zero (no NaN, also with ``eps=0``). Same as
    ``optax.normalize_by_update_norm(scale_factor=1.0, eps=eps)``, with the norm
    accumulated in float32 for low-precision leaves and extra arguments accepted.

    Args:
      eps: added to the norm before dividing; >= 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. It keeps no state (``EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.normalize_by_global_norm()
      >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
      >>> print(u["a"], u["b"])
      [0.6] [0.8]

    References:
      Bernstein and Newhouse, `Old Optimizer, New Norm: An Anthology
      <https://arxiv.org/abs/2409.20325>`_, 2024
    """
    _base.check_nonnegative("normalize_by_global_norm", eps=eps)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        inv = _tree.safe_div(1.0, _tree.global_norm(updates) + eps)
        updates = _tree.tree_map(lambda u: (_tree.to_acc(u) * inv).astype(u.dtype), updates)
        return updates, state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("normalize_by_global_norm", tx)


def normalize_by_leaf_norm(
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """Divides each leaf of the updates by its own L2 norm.

    ``u_l <- u_l / (||u_l||_2 + eps)`` for every leaf ``l`` (the norm of a matrix is its
    Frobenius norm), so every leaf has norm 1 up to ``eps``. A zero leaf stays zero.

    Args:
      eps: added to each norm before dividing; >= 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. It keeps no state (``EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.normalize_by_leaf_norm()
      >>> u, _ = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([-2.0])}, tx.init(None))
      >>> print(u["a"], u["b"])
      [0.6 0.8] [-1.]

    References:
      Bernstein and Newhouse, `Old Optimizer, New Norm: An Anthology
      <https://arxiv.org/abs/2409.20325>`_, 2024
    """
    _base.check_nonnegative("normalize_by_leaf_norm", eps=eps)

    def _normalize(u):
        u32 = _tree.to_acc(u)
        return (u32 * _tree.safe_div(1.0, _tree.leaf_norm(u32) + eps)).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(_normalize, updates), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("normalize_by_leaf_norm", tx)


def scale_by_sign() -> optax.GradientTransformationExtraArgs:
    """Replaces each element of the updates by its sign.

    ``u <- sign(u)`` in {-1, 0, 1} (signSGD; with momentum before it, Signum). This is
    ``optax.scale_by_sign`` accepting extra arguments.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. It keeps no state (``EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_sign()
      >>> u, _ = tx.update(jnp.array([-0.3, 0.0, 2.0]), tx.init(None))
      >>> print(u)
      [-1.  0.  1.]

    References:
      Bernstein et al., `signSGD: Compressed Optimisation for Non-Convex Problems
      <https://arxiv.org/abs/1802.04434>`_, 2018;
      Bernstein and Newhouse, `Old Optimizer, New Norm: An Anthology
      <https://arxiv.org/abs/2409.20325>`_, 2024
    """
    return _base.public("scale_by_sign", optax.scale_by_sign())


# ---------------------------------------------------------------------------
# Newton-Schulz orthogonalization (Muon)
# ---------------------------------------------------------------------------


def check_newton_schulz(fn: str, ns_steps: Any, ns_coeffs: Any, eps: Any) -> None:
    """Validate the Newton-Schulz hyperparameters of :func:`orthogonalize` (and Muon)."""
    _base.check_int(fn, ns_steps=ns_steps)
    if (
        isinstance(ns_coeffs, (str, bytes))
        or not hasattr(ns_coeffs, "__len__")
        or len(ns_coeffs) != 3
    ):
        raise ValueError(
            f"`optlab.{fn}`: `ns_coeffs` must be a sequence of 3 numbers (a, b, c), got"
            f" ns_coeffs={ns_coeffs!r}."
        )
    _base.check_finite(fn, **{f"ns_coeffs[{i}]": k for i, k in enumerate(ns_coeffs)})
    _base.check_nonnegative(fn, eps=eps)


def _newton_schulz(x: jax.Array, coeffs, steps: int, eps) -> jax.Array:
    """Quintic Newton-Schulz iteration on one matrix, in the dtype of ``x``."""
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the smaller Gram matrix; f(X^T) = f(X)^T
        x = x.T
    a, b, c = (jnp.asarray(k, x.dtype) for k in coeffs)
    x32 = _tree.to_acc(x)  # the Frobenius norm is accumulated in float32 even for bfloat16
    x = (x32 * _tree.safe_div(1.0, _tree.leaf_norm(x32) + eps)).astype(x.dtype)

    def body(_, x):
        gram = x @ x.T
        return a * x + (b * gram + c * (gram @ gram)) @ x

    x = jax.lax.fori_loop(0, steps, body, x)
    return x.T if transposed else x


def orthogonalize(
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    other_ranks: str = "passthrough",
) -> optax.GradientTransformationExtraArgs:
    r"""Orthogonalizes each 2-D leaf of the updates by a Newton-Schulz iteration (Muon).

    For a matrix update ``G`` (m x n) it computes, as Muon does::

        X <- G / (||G||_F + eps)          (transposed first when m > n)
        repeat ns_steps times:  A = X X^T;  X <- a X + (b A + c A^2) X

    which maps each singular value ``s`` of ``X`` through ``p(s) = a s + b s^3 + c s^5``
    and leaves the singular vectors alone: the result approximates ``U V^T`` of the SVD
    ``G = U S V^T``. Muon's coefficients ``(3.4445, -4.7750, 2.0315)`` trade exactness for
    speed: after 5 steps every singular value with ``s / ||G||_F >= 2e-3`` lands in
    ``[0.68, 1.21]`` (for random rectangular matrices in ``[0.68, 1.14]``); smaller ones
    are amplified by at most ``a**ns_steps`` (about 486) and may stay below that band.
    ``ns_coeffs=(1.5, -0.5, 0.0)`` is the classical cubic iteration, which converges to
    exactly 1 but slowly.

    The iteration runs in float32 (bfloat16 for bfloat16 leaves, as in Muon) and the
    result is cast back to the leaf's dtype. A zero leaf stays zero.

    Leaves whose rank is not 2 (biases, scales, scalars, conv kernels) follow
    ``other_ranks``:

    * ``"passthrough"`` (default): returned unchanged. Muon is meant for the hidden
      weight matrices; give the other leaves their own optimizer, e.g. with
      ``optax.partition``.
    * ``"reshape"``: a rank > 2 kernel in Flax's ``(..., in, out)`` layout is viewed as
      the matrix ``(prod(shape[:-1]), shape[-1])``, orthogonalized, and reshaped back;
      rank < 2 leaves pass through unchanged.

    This transform only orthogonalizes: Muon is
    ``chain(optax.trace(0.95, nesterov=True), orthogonalize(), scale_by_learning_rate(lr))``
    plus, optionally, a shape-dependent scale (see ``optax.contrib.muon``).

    Args:
      ns_steps: number of Newton-Schulz iterations; a Python int >= 1 (static under
        ``optax.inject_hyperparams``: pass ``static_args=("ns_steps",)``).
      ns_coeffs: the coefficients ``(a, b, c)`` of the quintic iteration.
      eps: added to the Frobenius norm before the first division; >= 0.
      other_ranks: ``"passthrough"`` or ``"reshape"``, the rule for leaves of rank != 2.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. It keeps no state (``EmptyState``).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> g = jax.random.normal(jax.random.key(0), (8, 16))
      >>> tx = optlab.orthogonalize()
      >>> u, _ = tx.update(g, tx.init(g))
      >>> s = jnp.linalg.svd(u, compute_uv=False)
      >>> bool(s.min() > 0.6 and s.max() < 1.3)
      True

    References:
      Jordan et al., `Muon: An optimizer for hidden layers in neural networks
      <https://kellerjordan.github.io/posts/muon/>`_, 2024;
      Kovalev, `Understanding Gradient Orthogonalization for Deep Learning via
      Non-Euclidean Trust-Region Optimization <https://arxiv.org/abs/2503.12645>`_, 2025
    """
    check_newton_schulz("orthogonalize", ns_steps, ns_coeffs, eps)
    _check_choice("orthogonalize", "other_ranks", other_ranks, _OTHER_RANKS_ORTHO)
    return _base.public("orthogonalize", _orthogonalize(ns_steps, ns_coeffs, eps, other_ranks))


def _orthogonalize(ns_steps, ns_coeffs, eps, other_ranks):
    coeffs = tuple(ns_coeffs)

    def _orthogonalize(u):
        if u.ndim < 2 or (u.ndim > 2 and other_ranks == "passthrough"):
            return u
        # float32 (at least); bfloat16 leaves iterate in bfloat16, as Muon does.
        x = u if u.dtype == jnp.bfloat16 else _tree.to_acc(u)

        def ns(x):
            return _newton_schulz(_as_matrix(x), coeffs, ns_steps, eps).reshape(x.shape)

        return _per_leaf_replicated(ns, x).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(_orthogonalize, updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def _scale_by_muon_shape() -> optax.GradientTransformationExtraArgs:
    """Muon's width scale: each 2-D ``(fan_in, fan_out)`` update times
    ``sqrt(max(1, fan_out / fan_in))`` (Keller Jordan's reference code and
    ``optax.contrib.muon``'s default); other leaves unchanged. Stateless."""

    def scale(u):
        if u.ndim != 2 or u.size == 0:  # an empty leaf has nothing to scale
            return u
        return (u * max(1.0, u.shape[1] / u.shape[0]) ** 0.5).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(scale, updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def _matrix_axes(shape: tuple[int, ...], dims: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reduction and output axes of a leaf: ``dims`` (an object with ``reduction_axis`` and
    ``output_axis``, e.g. ``optax.contrib.MuonDimensionNumbers``) or, for ``None``, the
    Flax layout: every axis but the last is reduced (``(in, out)``; conv ``(kh, kw, in,
    out)``), the last is the output."""
    nd = len(shape)
    if dims is None:
        return tuple(range(nd - 1)), (nd - 1,)

    def norm(axes):
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        return tuple(sorted(a % nd for a in axes))

    return norm(dims.reduction_axis), norm(dims.output_axis)


_NOT_HIDDEN = r"^(\w*embed\w*|wte|wpe|\w*_head|lm_head|head|classifier|unembed\w*|logits|readout)$"


def muon_hidden_mask(params: Any, exclude: str = _NOT_HIDDEN) -> Any:
    """Muon's recommended split for transformers: True on the hidden weight matrices only.

    A leaf is selected when it has rank >= 2 and no component of its path (dict key,
    attribute name, e.g. ``blocks/0/attn/query``) matches ``exclude`` (a regular
    expression, searched in each lowercased component; by default embedding tables
    (``embed*``, ``*embedding*``, ``wte``, ``wpe``), output heads (``head``, ``lm_head``,
    ``*_head``, ``classifier``, ``unembed*``, ``logits``, ``readout``)). Vectors (biases,
    norm scales) and scalars are never selected. Muon's authors keep embeddings, the
    output layer and the vector parameters on AdamW.

    Args:
      params: the parameter tree (or its ``jax.ShapeDtypeStruct``s).
      exclude: the regular expression of path components to leave out.

    Returns:
      A tree of bools like ``params``; pass the function itself as
      ``optlab.muon(..., muon_mask=optlab.muon_hidden_mask)``.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> params = {"embed": {"embedding": jnp.zeros((50, 8))},
      ...           "block": {"mlp": {"kernel": jnp.zeros((8, 32)), "bias": jnp.zeros(32)}},
      ...           "head": {"kernel": jnp.zeros((8, 50))}}
      >>> optlab.muon_hidden_mask(params)
      ... # doctest: +NORMALIZE_WHITESPACE
      {'block': {'mlp': {'bias': False, 'kernel': True}}, 'embed': {'embedding': False},
       'head': {'kernel': False}}
    """
    pattern = re.compile(exclude)

    def name(key: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr)).lower()
        return str(key).lower()

    def selected(path: Any, x: Any) -> bool:
        return len(getattr(x, "shape", ())) >= 2 and not any(pattern.search(name(k)) for k in path)

    return jax.tree_util.tree_map_with_path(selected, params)


def _muon_partition(
    matrices: optax.GradientTransformation,
    others: optax.GradientTransformation,
    mask: Any = None,
    dimension_numbers: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """``optax.partition`` of Muon: ``matrices`` on the leaves ``mask`` selects, each seen
    as a 2-D ``(prod(reduction axes), prod(output axes))`` matrix, ``others`` on the rest.

    ``mask``: None (the 2-D leaves), a tree of bools or a function of the params
    returning one (True: Muon). ``dimension_numbers``: None, one object with
    ``reduction_axis``/``output_axis`` (``optax.contrib.MuonDimensionNumbers``), a tree of
    them or a function of the params returning one; ``None`` for a leaf means the Flax
    layout of :func:`_matrix_axes` (conv kernels ``(kh, kw, in, out)`` ->
    ``(kh*kw*in, out)``). Labels and layouts depend only on paths and shapes, so they are
    recomputed (at trace time) from the full tree at each call; ``matrices``' state holds
    the 2-D views.
    """
    matrices = optax.with_extra_args_support(matrices)
    others = optax.with_extra_args_support(others)

    def plan(tree):
        leaves, treedef = jax.tree.flatten(tree)
        sel = mask(tree) if callable(mask) else mask
        sel = [x.ndim == 2 for x in leaves] if sel is None else treedef.flatten_up_to(sel)
        dims = dimension_numbers(tree) if callable(dimension_numbers) else dimension_numbers
        if dims is None or hasattr(dims, "reduction_axis"):
            dims = [dims] * len(leaves)
        else:
            dims = treedef.flatten_up_to(dims)
        layout = []
        for x, use, d in zip(leaves, sel, dims):
            if not use:
                layout.append(None)
                continue
            red, out = _matrix_axes(x.shape, d)
            if sorted(red + out) != list(range(x.ndim)) or not red or not out:
                raise ValueError(
                    f"`optlab.muon`: a leaf of shape {x.shape} selected for Muon needs reduction"
                    f" and output axes that together cover every axis, got reduction={red},"
                    f" output={out}; give it `muon_weight_dimension_numbers` or leave it out"
                    " with `muon_mask`."
                )
            perm = red + out
            size = (math.prod(x.shape[a] for a in red), math.prod(x.shape[a] for a in out))
            layout.append((perm, size))
        labels = treedef.unflatten(["adam" if lay is None else "muon" for lay in layout])
        partition = optax.partition({"muon": matrices, "adam": others}, labels)
        return treedef, layout, partition

    def to_2d(tree, treedef, layout):
        return treedef.unflatten(
            [
                x if lay is None else jnp.transpose(x, lay[0]).reshape(lay[1])
                for x, lay in zip(treedef.flatten_up_to(tree), layout)
            ]
        )

    def from_2d(tree, like, treedef, layout):
        out = []
        for x, ref, lay in zip(treedef.flatten_up_to(tree), treedef.flatten_up_to(like), layout):
            if lay is not None:
                x = x.reshape(tuple(ref.shape[a] for a in lay[0]))
                x = jnp.transpose(x, tuple(int(i) for i in np.argsort(lay[0])))
            out.append(x)
        return treedef.unflatten(out)

    def init_fn(params):
        treedef, layout, partition = plan(params)
        return partition.init(to_2d(params, treedef, layout))

    def update_fn(updates, state, params=None, **extra_args):
        treedef, layout, partition = plan(updates)
        views = None if params is None else to_2d(params, treedef, layout)
        new, state = partition.update(to_2d(updates, treedef, layout), state, views, **extra_args)
        return from_2d(new, updates, treedef, layout), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Sinkhorn multi-normalization (SinkGD)
# ---------------------------------------------------------------------------


def sinkhorn_normalize(
    num_iters: int = 5,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    other_ranks: str = "normalize",
) -> optax.GradientTransformationExtraArgs:
    r"""Alternately normalizes the rows and the columns of each 2-D leaf (SinkGD).

    The SR-Sinkhorn procedure of SinkGD: for an ``m x n`` update ``X``, repeat
    ``num_iters`` times::

        X <- sqrt(n) * Q(X)^-1 X      rows scaled to L2 norm sqrt(n)
        X <- sqrt(m) * X R(X)^-1      columns scaled to L2 norm sqrt(m)

    where ``Q(X)`` / ``R(X)`` are the diagonal matrices of row / column L2 norms (each
    with ``eps`` added). Both targets mean "root-mean-square 1 per entry", so the result
    has Frobenius norm ``sqrt(m n)`` like an Adam or sign update. The last step is the
    column step, so columns are normalized exactly (up to ``eps``) and rows
    approximately; the row error shrinks with ``num_iters`` (alternating projections
    converge linearly). A zero row or column stays zero.

    Leaves whose rank is not 2 follow ``other_ranks``:

    * ``"normalize"`` (default): scaled to root-mean-square 1,
      ``x <- sqrt(x.size) * x / (||x|| + eps)``, the same per-entry scale the 2-D leaves
      get (a scalar becomes its sign).
    * ``"reshape"``: a rank > 2 kernel in Flax's ``(..., in, out)`` layout is treated as
      the matrix ``(prod(shape[:-1]), shape[-1])``; rank < 2 leaves are normalized as
      above.

    Computed in float32 (at least) and cast back to the leaf dtype. SinkGD is
    ``chain(sinkhorn_normalize(), optax.scale_by_learning_rate(lr))``; it keeps no state.

    Args:
      num_iters: number of row-then-column passes ``L``; a Python int >= 1 (static under
        ``optax.inject_hyperparams``: pass ``static_args=("num_iters",)``).
      eps: added to every norm before dividing; >= 0.
      other_ranks: ``"normalize"`` or ``"reshape"``, the rule for leaves of rank != 2.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. It keeps no state (``EmptyState``).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> g = jax.random.normal(jax.random.key(0), (4, 9))
      >>> tx = optlab.sinkhorn_normalize()
      >>> u, _ = tx.update(g, tx.init(g))
      >>> print(jnp.round(jnp.linalg.norm(u, axis=0), 3))  # columns: sqrt(4)
      [2. 2. 2. 2. 2. 2. 2. 2. 2.]

    References:
      Scetbon et al., `Gradient Multi-Normalization for Stateless and Scalable LLM
      Training <https://arxiv.org/abs/2502.06742>`_, 2025
    """
    fn = "sinkhorn_normalize"
    _base.check_int(fn, num_iters=num_iters)
    _base.check_nonnegative(fn, eps=eps)
    _check_choice(fn, "other_ranks", other_ranks, _OTHER_RANKS_SINKHORN)
    return _base.public("sinkhorn_normalize", _sinkhorn_normalize(num_iters, eps, other_ranks))


def _sinkhorn_normalize(num_iters, eps, other_ranks):
    def _rms_normalize(x):
        return x * (math.sqrt(max(x.size, 1)) * _tree.safe_div(1.0, _tree.leaf_norm(x) + eps))

    def _sinkhorn(x):
        m, n = x.shape
        sqrt_m, sqrt_n = math.sqrt(m), math.sqrt(n)

        # Every iterate is diag(r) X diag(c): iterate on the two scaling vectors only
        # (each half-step is one read-only pass over X, a weighted sum of squares) and
        # apply them once at the end, instead of rewriting X 2 * num_iters times.
        sq = jnp.square(x)

        def body(_, rc):
            r, c = rc
            rows = r * jnp.sqrt(jnp.sum(sq * jnp.square(c)[None, :], axis=1))
            # a zero row / column stays zero whatever its factor: keep the factor finite
            r = jnp.where(rows > 0, r * (sqrt_n * _tree.safe_div(1.0, rows + eps)), r)
            cols = c * jnp.sqrt(jnp.sum(sq * jnp.square(r)[:, None], axis=0))
            return r, jnp.where(cols > 0, c * (sqrt_m * _tree.safe_div(1.0, cols + eps)), c)

        # ones shaped (and, under explicit sharding, sharded) like a column and a row: the
        # type of a reduction carries the kept axis' sharding (a slice x[:, 0] of a sharded
        # axis is refused), and ones_like reads no data, so the sums are dead code
        r, c = jnp.ones_like(jnp.sum(x, axis=1)), jnp.ones_like(jnp.sum(x, axis=0))
        r, c = jax.lax.fori_loop(0, num_iters, body, (r, c))
        return x * r[:, None] * c[None, :]

    def _normalize(u):
        x = _tree.to_acc(u)
        if u.ndim == 2:
            x = _sinkhorn(x)
        elif u.ndim > 2 and other_ranks == "reshape":
            x = _per_leaf_replicated(lambda x: _sinkhorn(_as_matrix(x)).reshape(x.shape), x)
        else:
            x = _rms_normalize(x)
        return x.astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(_normalize, updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# Trust ratio (LARS / LAMB)
# ---------------------------------------------------------------------------


def scale_by_trust_ratio(
    min_norm: jax.typing.ArrayLike = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Scales each leaf of the updates by its trust ratio (LARS / LAMB).

    For each leaf with parameter ``w`` and update ``u``::

        ratio = trust_coefficient * max(||w||, min_norm) / (max(||u||, min_norm) + eps)
        u <- ratio * u        (ratio = 1 where either norm is 0)

    so the update norm becomes ``trust_coefficient * ||w||`` (exactly, with ``eps=0`` and
    ``min_norm`` below both norms). Numerically the same as
    ``optax.scale_by_trust_ratio``, with norms accumulated in float32 for low-precision
    leaves and extra arguments accepted. Needs ``params``.

    Args:
      min_norm: lower bound applied to both norms; >= 0.
      trust_coefficient: multiplier of the ratio; >= 0.
      eps: added to the update norm in the denominator; >= 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. It keeps no state (``EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_trust_ratio()
      >>> p = {"w": jnp.array([6.0, 8.0])}
      >>> u, _ = tx.update({"w": jnp.array([0.3, 0.4])}, tx.init(p), p)
      >>> print(u["w"])  # norm 10 = ||w||
      [6. 8.]

    References:
      You et al., `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017;
      You et al., `Large Batch Optimization for Deep Learning: Training BERT in 76
      minutes <https://arxiv.org/abs/1904.00962>`_, 2020
    """
    fn = "scale_by_trust_ratio"
    _base.check_nonnegative(fn, min_norm=min_norm, trust_coefficient=trust_coefficient, eps=eps)
    return _base.public(
        "scale_by_trust_ratio", _scale_by_trust_ratio(min_norm, trust_coefficient, eps)
    )


def _scale_by_trust_ratio(min_norm, trust_coefficient, eps):
    def _scale(u, p):
        u32, p32 = _tree.to_acc(u), _tree.to_acc(p)
        # One reduction per norm (overflow-safe fallback only when needed); no gradient
        # is taken through the ratio, so safe_norm's second evaluation is not needed.
        param_norm = jnp.maximum(_tree.fast_leaf_norm(p32), min_norm)
        update_norm = jnp.maximum(_tree.fast_leaf_norm(u32), min_norm)
        ratio = _tree.safe_div(trust_coefficient * param_norm, update_norm + eps)
        zero_norm = jnp.logical_or(param_norm == 0.0, update_norm == 0.0)
        ratio = jnp.where(zero_norm, 1.0, ratio)
        return (u32 * ratio).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        return _tree.tree_map(_scale, updates, params), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# Radial projection (AdamP / SGDP)
# ---------------------------------------------------------------------------


class RadialProjectionState(NamedTuple):
    """State for :func:`optlab.radial_projection`.

    Attributes:
      inner_state: the state of the wrapped ``inner`` transformation (e.g. Adam's
        ``ScaleByAdamState``); the projection itself keeps nothing.
    """

    inner_state: optax.OptState  # the wrapped transform's state


def radial_projection(
    inner: optax.GradientTransformation,
    delta: jax.typing.ArrayLike = 0.1,
    wd_ratio: jax.typing.ArrayLike = 0.1,
    weight_decay: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    channel_axis: int = -1,
) -> optax.GradientTransformationExtraArgs:
    r"""Removes the radial component of ``inner``'s update on scale-invariant weights (AdamP/SGDP).

    ``inner`` (e.g. ``optax.scale_by_adam()`` or ``optax.trace(0.9)``) turns the raw
    gradient ``g`` into the pre-learning-rate direction ``d``. For every leaf ``w`` of
    rank > 1 the cosine similarity between ``g`` and ``w`` is measured in two views, as
    in the official AdamP code:

    1. *channel view*: one vector per output channel, the channel axis being
       ``channel_axis`` (default the **last** axis, Flax's ``(..., in, out)``; use
       ``channel_axis=0`` for PyTorch's ``(out, in, ...)``), of dimension
       ``k = w.size / w.shape[channel_axis]``;
    2. *layer view*: the whole leaf as one vector, ``k = w.size``.

    In the first view where ``max |cos(g, w)| < delta / sqrt(k)`` (the weight looks
    scale-invariant), the radial part is removed, view by view::

        w_hat = w / (||w|| + eps)          (per channel or per layer)
        d <- d - w_hat <w_hat, d>          (d becomes orthogonal to w)

    and the weight decay of that leaf is scaled by ``wd_ratio``. Leaves of rank <= 1
    are never projected. Finally decoupled weight decay is added::

        out = d + weight_decay * wd_factor * w       (wd_factor = wd_ratio or 1)

    so ``chain(radial_projection(optax.scale_by_adam(), weight_decay=wd),
    optax.scale_by_learning_rate(lr))`` is AdamP (``w <- w (1 - lr wd wd_factor) - lr d``)
    and ``radial_projection(optax.trace(momentum), weight_decay=wd / (1 - momentum))`` is
    SGDP (whose official code divides the decay by ``1 - momentum``). Nesterov variants
    are a property of ``inner`` (``optax.scale_by_adam(nesterov=True)``,
    ``optax.trace(m, nesterov=True)``). The cosine is ``|<g, w>| / (max(||g||, eps)
    max(||w||, eps))`` (PyTorch's ``cosine_similarity``); the branch is a ``jnp.where``,
    so the transform is jit-friendly. Needs ``params``.

    Args:
      inner: the transformation producing the direction to project; it receives the
        same ``updates``, ``params`` and extra arguments.
      delta: cosine threshold scale ``delta``; >= 0 (0 never projects).
      wd_ratio: weight-decay multiplier on projected leaves; >= 0.
      weight_decay: decoupled weight-decay coefficient; >= 0.
      eps: added to norms (and the lower bound of norms in the cosine); >= 0.
      channel_axis: the output-channel axis of rank > 1 leaves (keyword-only).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      ``RadialProjectionState(inner_state)``: only the state of ``inner``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> adamp = optax.chain(  # AdamP
      ...     optlab.radial_projection(optax.scale_by_adam(), weight_decay=1e-2),
      ...     optax.scale_by_learning_rate(1e-3),
      ... )
      >>> tx = optlab.radial_projection(optax.scale_by_adam())
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> grads = {"w": jnp.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]), "b": jnp.ones(2)}
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> print(jnp.round(jnp.sum(updates["w"] * params["w"], axis=0), 6))  # no radial part
      [0. 0.]

    References:
      Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights <https://arxiv.org/abs/2006.08217>`_, 2021
    """
    fn = "radial_projection"
    _base.check_nonnegative(fn, delta=delta, wd_ratio=wd_ratio, weight_decay=weight_decay, eps=eps)
    check_channel_axis(fn, channel_axis)
    if not hasattr(inner, "init") or not hasattr(inner, "update"):
        raise TypeError(
            f"`optlab.{fn}`: `inner` must be an optax.GradientTransformation, got inner={inner!r}."
        )
    tx = _radial_projection(inner, delta, wd_ratio, weight_decay, eps, channel_axis)
    return _base.public("radial_projection", tx)


def _radial_projection(inner, delta, wd_ratio, weight_decay, eps, channel_axis):
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return RadialProjectionState(inner_state=inner.init(params))

    def _leaf(d, g, w):
        d32, g32, w32 = _tree.to_acc(d), _tree.to_acc(g), _tree.to_acc(w)
        if w.ndim > 1 and w.size:  # an empty leaf has nothing to project
            # One pass of per-channel sums; the whole-leaf view's sums are sums of them
            # (issue 13: four reductions instead of eight, and one output pass).
            axes = _reduction_axes("radial_projection", w.ndim, channel_axis)
            sums = lambda x: jnp.sum(x, axis=axes, keepdims=True)  # noqa: E731
            gw, gg, ww, wd = sums(g32 * w32), sums(g32 * g32), sums(w32 * w32), sums(w32 * d32)
            layer = [jnp.sum(x) for x in (gw, gg, ww, wd)]

            def view(gw, gg, ww, wd, dim):
                g_norm, w_norm = jnp.sqrt(gg), jnp.sqrt(ww)
                den = jnp.maximum(g_norm, eps) * jnp.maximum(w_norm, eps)
                invariant = jnp.max(_tree.safe_div(jnp.abs(gw), den)) < delta / math.sqrt(dim)
                inv_norm = _tree.safe_div(1.0, w_norm + eps)
                # d - w_hat <w_hat, d> = d - w * coef, w_hat = w / (||w|| + eps)
                return invariant, inv_norm * wd * inv_norm

            channel_dim = max(math.prod(w.shape[i] for i in axes), 1)
            channel_invariant, channel_coef = view(gw, gg, ww, wd, channel_dim)
            layer_invariant, layer_coef = view(*layer, max(w.size, 1))
            coef = jnp.where(
                channel_invariant, channel_coef, jnp.where(layer_invariant, layer_coef, 0.0)
            )
            wd_factor = jnp.where(channel_invariant | layer_invariant, wd_ratio, 1.0)
            out = d32 - w32 * coef
        else:
            out, wd_factor = d32, 1.0
        out = out + (weight_decay * wd_factor) * w32
        return out.astype(g.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        _base.require_params(params)
        direction, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        out = _tree.tree_map(_leaf, direction, updates, params)
        return out, RadialProjectionState(inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Gradient centralization
# ---------------------------------------------------------------------------


def centralize(*, channel_axis: int = -1) -> optax.GradientTransformationExtraArgs:
    """Subtracts from each rank > 1 leaf its mean over every axis but the channel axis.

    Gradient centralization: for a kernel ``W`` with output channels on ``channel_axis``
    (default the last axis, Flax's ``(..., in, out)`` layout), each output channel's
    gradient gets mean zero::

        u <- u - mean(u, axis=all axes but channel_axis)

    Leaves of rank <= 1 (biases, scales) are unchanged. ``optax.centralize`` keeps the
    **first** axis instead (PyTorch's ``(out, in, ...)`` layout); ``channel_axis=0``
    reproduces it exactly.

    Args:
      channel_axis: the output-channel axis (keyword-only); ``-1`` for Flax, ``0`` for
        PyTorch layouts / ``optax.centralize``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. It keeps no state (``EmptyState``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> g = jnp.array([[1.0, 2.0], [3.0, 6.0]])  # (in=2, out=2)
      >>> tx = optlab.centralize()
      >>> u, _ = tx.update(g, tx.init(g))
      >>> print(u)
      [[-1. -2.]
       [ 1.  2.]]

    References:
      Yong et al., `Gradient Centralization: A New Optimization Technique for Deep Neural
      Networks <https://arxiv.org/abs/2004.01461>`_, 2020
    """
    check_channel_axis("centralize", channel_axis)

    def _centralize(u):
        if u.ndim <= 1:
            return u
        u32 = _tree.to_acc(u)
        axes = _reduction_axes("centralize", u.ndim, channel_axis)
        mean = jnp.mean(u32, axis=axes, keepdims=True)
        return (u32 - mean).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(_centralize, updates), state

    tx = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
    return _base.public("centralize", tx)


# ---------------------------------------------------------------------------
# Decoupled and cautious weight decay
# ---------------------------------------------------------------------------


class WeightDecayScheduleState(NamedTuple):
    """State of :func:`optlab.cautious_weight_decay` (and the named optimizers' decay stage).

    Used only when ``weight_decay`` is a schedule (a scalar rate keeps ``EmptyState()``).

    Attributes:
      count: the number of updates so far, the schedule's argument (int32 scalar).
    """

    count: jax.Array  # shape=(), dtype=int32


def _weight_decay(weight_decay, mask, cautious: bool) -> optax.GradientTransformationExtraArgs:
    """Unchecked builder of :func:`cautious_weight_decay` and, with ``cautious=False``, of
    the named optimizers' decoupled weight decay: ``u + rate * w`` computed in float32 and
    cast back to the update's dtype (``optax.add_decayed_weights`` under
    :func:`optlab.in_float32`)."""

    def init_fn(params):
        if callable(weight_decay):
            return WeightDecayScheduleState(count=jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        if callable(weight_decay):
            rate = weight_decay(state.count)
            state = WeightDecayScheduleState(count=optax.safe_increment(state.count))
        else:
            rate = weight_decay
            if _base.is_concrete_number(weight_decay) and weight_decay == 0:
                return updates, state

        def _decay(u, p):
            u32, p32 = _tree.to_acc(u), _tree.to_acc(p)
            if cautious:  # the paper's indicator 1(u * w >= 0), via signs (no underflow)
                p32 = jnp.where(jnp.sign(u32) * jnp.sign(p32) >= 0, p32, 0.0)
            return (u32 + rate * p32).astype(u.dtype)

        return _tree.tree_map(_decay, updates, params), state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    if mask is not None:
        tx = optax.masked(tx, mask)
    return tx


def cautious_weight_decay(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: optax.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    """Adds weight decay only where the update and the parameter agree in sign (CWD).

    Cautious Weight Decay, coordinate-wise::

        u <- u + weight_decay * 1(u * w >= 0) * w

    where ``u`` is the base optimizer's direction *before* the learning rate (the step is
    ``-lr * u``): decay is applied only where it pulls ``w`` toward zero in the same
    direction the optimizer already moves it, never against the optimizer. Where signs
    differ the update is unchanged. (The indicator is the paper's ``u * w >= 0``; it
    differs from ``sign(u) == sign(w)`` only where ``u`` or ``w`` is exactly 0, where the
    added term is ``weight_decay * w``, i.e. zero when ``w == 0``.)

    Place it between the base direction and the learning rate, e.g. AdamW with CWD::

        chain(optax.scale_by_adam(), cautious_weight_decay(0.1),
              optax.scale_by_learning_rate(lr))

    Needs ``params``.

    Args:
      weight_decay: a scalar >= 0 or a schedule ``step -> rate``.
      mask: a tree of booleans like ``params`` (or a prefix of it), or a function
        ``params -> mask``; ``True`` where decay applies. ``None`` decays everything.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      ``EmptyState()`` for a scalar ``weight_decay``;
      ``WeightDecayScheduleState(count)`` for a schedule.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.cautious_weight_decay(0.1)
      >>> p = jnp.array([1.0, -2.0])
      >>> u, _ = tx.update(jnp.array([0.5, 0.5]), tx.init(p), p)
      >>> print(u)  # only the first coordinate (same sign) is decayed
      [0.6 0.5]

    References:
      Chen et al., `Cautious Weight Decay <https://arxiv.org/abs/2510.12402>`_, 2025
    """
    if not callable(weight_decay):
        _base.check_nonnegative("cautious_weight_decay", weight_decay=weight_decay)
    return _base.public("cautious_weight_decay", _weight_decay(weight_decay, mask, cautious=True))


# ===========================================================================
# Issue 12 (part A): LMO steps (Scion), SWAN, weight-norm projections
# ===========================================================================

_acc = _tree.to_acc

__all__ += [
    "FixedNormState",
    "add_norm_penalty",
    "project_to_fixed_norm",
    "project_to_max_norm",
    "scale_by_lmo",
    "scale_by_swan",
]

_LMO_NORMS = ("auto", "spectral", "sign", "col", "row", "rms")


def _lmo_leaf(d: jax.Array, norm: str, coeffs, ns_steps: int, eps: float, fn: str) -> jax.Array:
    """The (positive) LMO direction of one leaf; an explicitly sharded leaf is gathered
    first (its matrix view reshapes sharded axes), then resharded like ``d``."""
    if d.ndim >= 2 and norm != "rms":
        return _per_leaf_replicated(
            lambda y: _lmo_leaf_local(y, norm, coeffs, ns_steps, eps, fn), d
        )
    return _lmo_leaf_local(d, norm, coeffs, ns_steps, eps, fn)


def _lmo_leaf_local(
    d: jax.Array, norm: str, coeffs, ns_steps: int, eps: float, fn: str
) -> jax.Array:
    """The (positive) LMO direction of one leaf under the norm ``norm`` (Flax layout)."""
    if d.size == 0:  # an empty leaf has no direction (and no fan-in to divide by)
        return d
    if norm == "auto":
        norm = "spectral" if d.ndim >= 2 else "rms"
    x = _acc(d)
    if norm == "rms":  # Scion's BiasRMS: unit RMS
        rms = jnp.sqrt(jnp.mean(x * x))
        return (x / (rms + eps)).astype(d.dtype)
    if d.ndim < 2:
        raise ValueError(
            f"`optlab.{fn}`: norm {norm!r} needs a leaf of rank >= 2, got a leaf of shape"
            f" {d.shape}; use 'rms' (or 'auto') for vectors and scalars."
        )
    m = _as_matrix(x)  # (fan_in, fan_out), Flax's (..., in, out) kernels flattened
    fan_in, fan_out = m.shape
    if norm == "spectral":
        xin = m if d.dtype != jnp.bfloat16 else m.astype(jnp.bfloat16)
        o = _newton_schulz(xin, coeffs, ns_steps, eps)
        out = _acc(o) * math.sqrt(fan_out / fan_in)
    elif norm == "sign":
        out = jnp.sign(m) / fan_in
    elif norm == "col":  # each output unit (column) to l2 norm 1 / sqrt(fan_in)
        n = jnp.sqrt(jnp.sum(m * m, axis=0, keepdims=True))
        out = m / (n * math.sqrt(fan_in) + eps)
    else:  # "row": each input unit (row, e.g. an embedding row) to RMS 1
        n = jnp.sqrt(jnp.sum(m * m, axis=1, keepdims=True))
        out = m * math.sqrt(fan_out) / (n + eps)
    return out.reshape(d.shape).astype(d.dtype)


def scale_by_lmo(
    norm: str | Any = "auto",
    *,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""The linear minimization oracle of a per-layer norm ball (Scion), as a direction.

    For each leaf :math:`d` (typically a momentum) it returns
    :math:`s = -\operatorname{lmo}(d) = \arg\max_{\|s\| \le 1} \langle d, s \rangle`, the
    unit-norm direction most aligned with :math:`d`, so that
    ``optax.scale_by_learning_rate`` after it moves against it. The norm is chosen per
    leaf (Flax ``(in, out)`` layout, :math:`d_{in} \times d_{out}`; rank > 2 kernels
    viewed as the matrix ``(prod(shape[:-1]), shape[-1])``), with the scalings of the
    authors' code:

    * ``"spectral"`` (hidden matrices): :math:`\sqrt{d_{out}/d_{in}}\; U V^\top`, the
      polar factor by Newton-Schulz (:func:`optlab.orthogonalize`'s iteration), the LMO
      of the RMS-to-RMS operator norm;
    * ``"sign"`` (:math:`\ell_\infty`-type, for input and output layers):
      :math:`\operatorname{sign}(d) / d_{in}`;
    * ``"col"``: each column (output unit) scaled to Euclidean norm
      :math:`1/\sqrt{d_{in}}` (the code's ``RowNorm``, stored transposed in PyTorch);
    * ``"row"``: each row (input unit, e.g. a token's embedding row) scaled to RMS 1 (the
      code's ``ColNorm`` on an embedding);
    * ``"rms"`` (biases, gains, any rank): :math:`d / \operatorname{rms}(d)`;
    * ``"auto"`` (default): ``"spectral"`` for rank >= 2, ``"rms"`` otherwise.

    ``norm`` is one of these names for every leaf, a tree of names like the params (or a
    prefix of it), or a function ``updates -> tree of names`` (the way
    :func:`optax.masked` takes its mask). The Newton-Schulz iterate is only
    approximately orthogonal with Muon's quintic ``ns_coeffs`` (singular values in about
    ``[0.7, 1.2]``); the cubic ``(1.5, -0.5, 0.0)`` never exceeds 1, so the iterates of
    the constrained Scion step then stay in the ball exactly.

    Args:
      norm: the per-leaf norm (see above).
      ns_steps: Newton-Schulz iterations for ``"spectral"``, a Python int >= 1.
      ns_coeffs: the Newton-Schulz coefficients ``(a, b, c)``.
      eps: added to the norms before dividing, ``>= 0``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      None (``optax.EmptyState()``).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.scale_by_lmo({"emb": "sign", "b": "rms"})
      >>> g = {"emb": jnp.array([[0.5, -2.0], [1.0, 0.0]]), "b": jnp.array([3.0, -4.0])}
      >>> d, _ = tx.update(g, tx.init(g))
      >>> print(d["emb"])  # sign / d_in
      [[ 0.5 -0.5]
       [ 0.5  0. ]]
      >>> print([f"{x:.3f}" for x in d["b"]])  # unit RMS
      ['0.849', '-1.131']

    References:
      Pethick, Xie, Erdogan, Antonakopoulos, Silveti-Falls and Cevher, `Training Deep
      Learning Models with Norm-Constrained LMOs <https://arxiv.org/abs/2502.07529>`_,
      2025.
    """
    fn = "scale_by_lmo"
    _base.check_int(fn, ns_steps=ns_steps)
    _base.check_nonnegative(fn, eps=eps)
    _check_norm_spec(fn, norm)
    return _base.public(fn, _scale_by_lmo(fn, norm, ns_steps, ns_coeffs, eps))


def _scale_by_lmo(fn, norm, ns_steps, ns_coeffs, eps):
    """``fn``: the public name that errors of the per-leaf norms (known at ``update``) give."""
    coeffs = tuple(ns_coeffs)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        spec = norm(updates) if callable(norm) else norm
        if isinstance(spec, str):
            out = _tree.tree_map(lambda d: _lmo_leaf(d, spec, coeffs, ns_steps, eps, fn), updates)
            return out, state

        def per_subtree(name, sub):
            _check_norm_spec(fn, name)
            return _tree.tree_map(lambda d: _lmo_leaf(d, name, coeffs, ns_steps, eps, fn), sub)

        return jax.tree.map(per_subtree, spec, updates, is_leaf=lambda x: x is None), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def _check_norm_spec(fn: str, norm: Any) -> None:
    if isinstance(norm, str) and norm not in _LMO_NORMS:
        _check_choice(fn, "norm", norm, _LMO_NORMS)
    if not isinstance(norm, (str, dict, list, tuple)) and not callable(norm):
        raise TypeError(
            f"`optlab.{fn}`: `norm` must be a norm name, a tree of names or a function"
            f" updates -> tree of names, got norm={norm!r}."
        )


def scale_by_swan(
    *,
    ns_steps: int = 10,
    ns_coeffs: tuple[float, float, float] = (1.5, -0.5, 0.0),
    rescale: bool = True,
    eps: jax.typing.ArrayLike = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""SWAN's stateless preprocessing of matrix gradients: standardize, then whiten.

    For a matrix gradient :math:`G` (Flax ``(in, out)`` layout; rank > 2 kernels viewed
    as ``(prod(shape[:-1]), shape[-1])``):

    .. math::
        \tilde G = \frac{G - \mathbf 1 \mu^\top}{\mathbf 1 \sigma^\top}, \qquad
        \Delta = (\tilde G \tilde G^\top)^{-1/2} \tilde G \;\;(= U V^\top \text{ of }
        \tilde G), \qquad \Delta \leftarrow \frac{\|\tilde G\|_F}{\|\Delta\|_F} \Delta,

    where :math:`\mu, \sigma` are the mean and (biased) standard deviation of each output
    unit's gradient over its inputs (GradNorm: the paper standardizes each row of the
    PyTorch ``(out, in)`` matrix, i.e. each column here) and the whitening (GradWhitening)
    is computed by a Newton-Schulz iteration (:func:`optlab.orthogonalize`'s; the default
    classical cubic coefficients converge to the exact inverse square root, Muon's
    quintic ones are faster and approximate). ``rescale`` (the paper's optional last
    line) restores the Frobenius norm of :math:`\tilde G`, so entries have RMS about 1
    like Adam's update and Adam-like learning rates apply. There is no state: memory is
    that of SGD. Since the standardization removes each unit's mean gradient over its
    inputs, the update never changes the sum of a unit's incoming weights (harmless
    behind a normalization layer, as in the transformers the paper trains).

    Leaves of rank < 2 pass through unchanged: give them their own optimizer (the paper
    uses Adam for them, and for the embedding and output layers), as
    :func:`optlab.swan` does. A constant column (zero standard deviation) gives zeros.

    Args:
      ns_steps: Newton-Schulz iterations, a Python int >= 1.
      ns_coeffs: Newton-Schulz coefficients ``(a, b, c)``.
      rescale: rescale the whitened matrix to the Frobenius norm of the standardized one.
      eps: added to the norms in the iteration, ``>= 0``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    State:
      None (``optax.EmptyState()``).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> g = jax.random.normal(jax.random.key(0), (6, 4))
      >>> tx = optlab.scale_by_swan(rescale=False, ns_steps=30)
      >>> d, _ = tx.update(g, tx.init(g))
      >>> s = jnp.linalg.svd(d, compute_uv=False)  # whitened: all singular values 1
      >>> bool(jnp.allclose(s, 1.0, atol=1e-3))
      True

    References:
      Ma, Gong, Scetbon and Meeds, `SWAN: SGD with Normalization and Whitening Enables
      Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.
    """
    fn = "scale_by_swan"
    _base.check_int(fn, ns_steps=ns_steps)
    _base.check_nonnegative(fn, eps=eps)
    return _base.public(fn, _scale_by_swan(ns_steps, ns_coeffs, rescale, eps))


def _scale_by_swan(ns_steps, ns_coeffs, rescale, eps):
    coeffs = tuple(ns_coeffs)

    def leaf(g):
        if g.ndim < 2:
            return g
        return _per_leaf_replicated(leaf_local, g)

    def leaf_local(g):
        m = _as_matrix(_acc(g))
        centred = m - jnp.mean(m, axis=0, keepdims=True)
        std = jnp.sqrt(jnp.mean(centred * centred, axis=0, keepdims=True))
        standardized = _tree.safe_div(centred, std)
        white = _newton_schulz(standardized, coeffs, ns_steps, eps)
        if rescale:
            white = white * _tree.safe_div(_tree.leaf_norm(standardized), _tree.leaf_norm(white))
        return white.reshape(g.shape).astype(g.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(leaf, updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# Weight-norm projections (they need params)
# ---------------------------------------------------------------------------


class FixedNormState(NamedTuple):
    """State for :func:`optlab.project_to_fixed_norm`.

    Attributes:
      count: number of updates so far (int32 scalar).
      target: per-leaf float32 scalars: the norm each leaf is held at (recorded at
        ``start_step``; zeros before).
    """

    count: jax.Array  # shape=(), dtype=int32
    target: optax.Updates  # per-leaf float32 scalars


def _project_leaf(u: jax.Array, p: jax.Array, factor_fn) -> jax.Array:
    """``(p + u) * factor - p``, the update that lands on the rescaled new point."""
    new = _acc(p) + _acc(u)
    return (new * factor_fn(new) - _acc(p)).astype(u.dtype)


def project_to_fixed_norm(
    start_step: int = 0,
    *,
    target_norm: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Keeps the norm of every leaf fixed after a warm-up (LAWN), by projection.

    From update number ``start_step`` (0-based) on, each leaf's update :math:`u` is
    replaced so that the new parameter has the target norm:

    .. math::
        u' = \frac{r}{\|w + u\|}\,(w + u) - w, \qquad \|w + u'\| = r,

    where :math:`r` is ``target_norm`` if given, otherwise the norm the leaf had at
    step ``start_step`` (recorded then, before its update: LAWN's "free" warm-up phase,
    then training on the sphere of that radius). Before ``start_step`` the update passes
    through. Chain it *last*, after the learning rate (it works on the final update), and
    restrict it with ``optax.masked`` to the layers to constrain (LAWN constrains the
    final homogeneous sub-network). A leaf whose new value is zero stays zero.

    Args:
      start_step: the update from which the norm is fixed (a Python int >= 0).
      target_norm: a fixed radius ``> 0`` for every leaf, or None to use each leaf's norm
        at ``start_step``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    State:
      :class:`FixedNormState` ``(count, target)``: one float32 scalar per leaf.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optax.sgd(0.1), optlab.project_to_fixed_norm(target_norm=1.0))
      >>> w = jnp.array([3.0, 4.0])
      >>> u, _ = tx.update(jnp.array([1.0, -1.0]), tx.init(w), w)
      >>> print(jnp.round(jnp.linalg.norm(w + u), 6))
      1.0

    References:
      Gupta et al., `Logit Attenuating Weight Normalization
      <https://arxiv.org/abs/2108.05839>`_, 2021.
    """
    fn = "project_to_fixed_norm"
    _base.check_int(fn, minimum=0, start_step=start_step)
    if target_norm is not None:
        _base.check_positive(fn, target_norm=target_norm)

    def init_fn(params):
        _base.check_float_tree(fn, params)
        return FixedNormState(
            count=jnp.zeros([], jnp.int32),
            target=_tree.tree_map(lambda p: jnp.zeros([], jnp.float32), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        record = state.count == start_step
        if target_norm is None:
            target = _tree.tree_map(
                lambda t, p: jnp.where(record, _tree.leaf_norm(p), t).astype(jnp.float32),
                state.target,
                params,
            )
        else:
            target = _tree.tree_map(
                lambda t: jnp.asarray(target_norm, jnp.float32) + 0 * t, state.target
            )
        active = state.count >= start_step

        def leaf(u, p, r):
            def factor(new):
                return jnp.where(active, _tree.safe_div(r, _tree.leaf_norm(new), 1.0), 1.0)

            return _project_leaf(u, p, factor)

        new_updates = _tree.tree_map(leaf, updates, params, target)
        return new_updates, FixedNormState(count=optax.safe_increment(state.count), target=target)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def project_to_max_norm(
    max_norm: jax.typing.ArrayLike,
    *,
    per_unit: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Max-norm constraint: rescale weights whose norm exceeds ``max_norm`` after the step.

    .. math::
        u' = \min\!\Big(1, \frac{c}{\|w + u\|}\Big)(w + u) - w,

    so that :math:`\|w + u'\| = \min(\|w + u\|, c)`. With ``per_unit=True`` (default, as
    in Srivastava et al.) the norm is that of each unit's incoming weights: per output
    unit (every axis but the last of a Flax ``(..., in, out)`` kernel,
    :func:`optax.adaptive_grad_clip`'s convention), the whole leaf for vectors and
    scalars; with ``per_unit=False`` it is the norm of the whole leaf. Chain it last,
    after the learning rate, and mask it with ``optax.masked`` to the weights to
    constrain (usually not biases).

    Args:
      max_norm: the radius :math:`c > 0`.
      per_unit: constrain each output unit (True) or the whole leaf (False).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    State:
      None (``optax.EmptyState()``).

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optax.chain(optax.sgd(1.0), optlab.project_to_max_norm(1.0))
      >>> w = jnp.array([[3.0, 0.1], [4.0, 0.1]])  # columns: units of norm 5 and 0.14
      >>> u, _ = tx.update(jnp.zeros((2, 2)), tx.init(w), w)
      >>> print(jnp.round(jnp.linalg.norm(w + u, axis=0), 4))
      [1.     0.1414]

    References:
      Srivastava, Hinton, Krizhevsky, Sutskever and Salakhutdinov, `Dropout: A Simple
      Way to Prevent Neural Networks from Overfitting
      <https://jmlr.org/papers/v15/srivastava14a.html>`_, 2014.
    """
    fn = "project_to_max_norm"
    _base.check_positive(fn, max_norm=max_norm)

    def init_fn(params):
        _base.check_float_tree(fn, params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)

        def factor(new):
            n = _tree.unitwise_norm(new) if per_unit else _tree.leaf_norm(new)
            return jnp.minimum(1.0, _tree.safe_div(max_norm, n, 1.0))

        out = _tree.tree_map(lambda u, p: _project_leaf(u, p, factor), updates, params)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def add_norm_penalty(
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    target_norm: jax.typing.ArrayLike = 1.0,
    mask: optax.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Decoupled soft weight-norm penalty: pull each leaf's norm towards ``target_norm``.

    .. math::
        u \leftarrow u + \lambda\, (\|w\| - r) \frac{w}{\|w\|},

    the gradient of :math:`\frac{\lambda}{2} (\|w\| - r)^2` per leaf, added *decoupled*
    from the loss like AdamW's weight decay (after the preconditioner, before the learning
    rate). Unlike weight decay (:math:`r = 0`) it leaves weights at norm :math:`r`
    alone and pushes smaller ones outwards; unlike :func:`optlab.project_to_fixed_norm`
    it is soft: with :math:`\eta\lambda < 1` and no other force the norm contracts
    towards :math:`r` by a factor :math:`1 - \eta\lambda` per step. A zero leaf stays
    zero.

    Args:
      weight_decay: the strength :math:`\lambda \ge 0`, or a schedule.
      target_norm: the radius :math:`r \ge 0`.
      mask: where to apply (a tree of booleans like the params, or a function of them);
        None applies everywhere.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    State:
      ``optax.ScaleByScheduleState(count)`` when ``weight_decay`` is a schedule, else
      ``optax.EmptyState()`` (wrapped in ``optax.MaskedState`` with a mask).

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.add_norm_penalty(0.5, target_norm=1.0)
      >>> w = jnp.array([3.0, 4.0])  # norm 5: pulled in by 0.5 * (5 - 1) along w / 5
      >>> u, _ = tx.update(jnp.zeros(2), tx.init(w), w)
      >>> print(u)
      [1.2 1.6]

    References:
      Gupta et al., `Logit Attenuating Weight Normalization
      <https://arxiv.org/abs/2108.05839>`_, 2021 (the hard constraint this relaxes);
      Loshchilov and Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019 (decoupling).
    """
    fn = "add_norm_penalty"
    if not callable(weight_decay):
        _base.check_nonnegative(fn, weight_decay=weight_decay)
    _base.check_nonnegative(fn, target_norm=target_norm)

    def init_fn(params):
        _base.check_float_tree(fn, params)
        if callable(weight_decay):
            return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params)
        if callable(weight_decay):
            rate = weight_decay(state.count)
            state = optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
        else:
            rate = weight_decay

        def leaf(u, p):
            p32 = _acc(p)
            n = _tree.leaf_norm(p32)
            pull = rate * (n - target_norm) * _tree.safe_div(p32, n)
            return (_acc(u) + pull).astype(u.dtype)

        return _tree.tree_map(leaf, updates, params), state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    if mask is not None:
        tx = optax.masked(tx, mask)
    return tx
