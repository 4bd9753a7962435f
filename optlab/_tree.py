"""Tree math that optax.tree does not already provide.

Use ``optax.tree`` (``norm``, ``add``, ``scale``, ``zeros_like``, ``where``, ``cast``,
``update_moment``, ``bias_correction`` ...) first; add here only what it lacks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__: list[str] = []


def to_acc(x: Any) -> jax.Array:
    """``x`` in its accumulation dtype: at least float32 (float64 and complex kept).

    Reductions (norms, means, dot products) run in this dtype; results are cast back
    to the leaf dtype so that bfloat16 updates stay bfloat16.
    """
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def sq_norm(x: jax.Array) -> jax.Array:
    """Squared L2 norm of one array as a real scalar, accumulated in at least float32."""
    x = to_acc(x)
    return jnp.sum(jnp.real(x * jnp.conj(x)))


def _scale_of(x: jax.Array, axis=None) -> jax.Array:
    """max |x| (over ``axis``, kept as size-1 axes) where finite and > 0, else 1."""
    if x.size == 0:
        return jnp.ones((1,) * x.ndim if axis is not None else (), jnp.real(x).dtype)
    m = jnp.max(jnp.abs(x), axis=axis, keepdims=axis is not None)
    return jnp.where(jnp.isfinite(m) & (m > 0), m, jnp.ones_like(m))


def leaf_norm(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
    """L2 norm of one array (over ``axis``; all axes by default), accumulated in at least
    float32 and overflow-safe: scaled by max |x| before squaring, as a robust norm does,
    so finite input (even 1e30 in float32) gives a finite norm; 0 for an empty array."""
    x = to_acc(x)
    scale = _scale_of(x, axis)
    y = x / scale
    total = jnp.sum(jnp.real(y * jnp.conj(y)), axis=axis, keepdims=axis is not None)
    norm = scale * jnp.sqrt(total)
    if axis is not None and not keepdims:
        norm = jnp.squeeze(norm, axis=axis)
    return norm


def safe_norm(x: jax.Array, min_norm: float = 0.0) -> jax.Array:
    """Overflow-safe :func:`optax.safe_norm` (all axes): ``max(leaf_norm(x), min_norm)``
    with a zero gradient where the norm is below ``min_norm``."""
    norm = leaf_norm(x)
    small = norm <= min_norm
    return jnp.where(small, min_norm, leaf_norm(jnp.where(small, jnp.ones_like(x), x)))


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all leaves of ``tree`` together, accumulated in at least float32 and
    overflow-safe (scaled by the largest |entry| before squaring); 0 for an empty tree.
    (``optax.tree.norm`` accumulates in the leaves' dtype and overflows at 1e20 in float32.)"""
    leaves = [to_acc(x) for x in jax.tree.leaves(tree)]
    leaves = [x for x in leaves if x.size]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in leaves]))
    scale = jnp.where(jnp.isfinite(m) & (m > 0), m, jnp.ones_like(m))
    total = jnp.zeros((), jnp.float32)
    for x in leaves:
        y = x / scale.astype(jnp.real(x).dtype)
        total = total + jnp.sum(jnp.real(y * jnp.conj(y)))
    return scale * jnp.sqrt(total)


def unitwise_norm(x: jax.Array) -> jax.Array:
    """Norm per output unit, broadcastable to ``x`` (NFNets convention, Flax layouts).

    Scalars and vectors (biases, norm scales) are one unit, as in the NFNets code
    and :func:`optax.adaptive_grad_clip`; matrices and higher-rank kernels have one
    unit per output channel: the norm reduces every axis but the last (the output
    axis in Flax's ``(..., in, out)`` layout, e.g. ``(h, w, in, out)`` convolutions).
    Overflow-safe like :func:`leaf_norm`.
    """
    if x.ndim <= 1:
        return jnp.broadcast_to(leaf_norm(x), x.shape)
    return leaf_norm(x, axis=tuple(range(x.ndim - 1)), keepdims=True)


def safe_div(num: jax.Array, den: jax.Array, fallback: float = 0.0) -> jax.Array:
    """``num / den`` where ``den != 0`` and ``fallback`` elsewhere, with safe gradients."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), fallback)


def tree_cast_like(tree: Any, like: Any) -> Any:
    """Cast every leaf of ``tree`` to the dtype of the matching leaf of ``like``.

    Unlike ``optax.tree.cast_like`` it also casts where the ``like`` leaf is a Python
    scalar (``jnp.result_type``) and accepts scalar leaves in ``tree``.
    """
    return jax.tree.map(lambda x, y: jnp.asarray(x).astype(jnp.result_type(y)), tree, like)


def tree_map(fn, tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` that leaves ``None`` leaves of ``tree`` as ``None``."""
    return jax.tree.map(
        lambda x, *r: None if x is None else fn(x, *r), tree, *rest, is_leaf=lambda x: x is None
    )


def explicit_sharding(x: jax.Array) -> Any:
    """The sharding of ``x`` if its type shards an axis over an explicit mesh axis, else None.

    Only arrays in jax's explicit sharding mode (``AxisType.Explicit``, sharding in the
    type) qualify; in the default mode, and on manual axes inside ``shard_map``, this is
    None and the helpers below do nothing (XLA, or the user, picks the layout).
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    explicit = set(getattr(getattr(sharding, "mesh", None), "explicit_axes", ()) or ())
    if not spec or not explicit:
        return None
    used = set()
    for entry in spec:
        if entry is not None:
            used.update(entry if isinstance(entry, tuple) else (entry,))
    return sharding if used & explicit else None


def gathered(x: jax.Array) -> jax.Array:
    """``x`` resharded to a replicated copy if it is explicitly sharded (else ``x``).

    For whole-leaf operations (a flattening reshape, ``top_k`` over every entry) that
    explicit sharding refuses on a sharded axis.
    """
    sharding = explicit_sharding(x)
    if sharding is None:
        return x
    replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.sharding.reshard(x, replicated)


def reshard_like(y: jax.Array, like: jax.Array) -> jax.Array:
    """``y`` (shaped like ``like``) given the sharding of ``like`` if that is explicit."""
    sharding = explicit_sharding(like)
    return y if sharding is None else jax.sharding.reshard(y, sharding)
