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


def leaf_norm(x: jax.Array) -> jax.Array:
    """L2 norm of one array, accumulated in at least float32."""
    return jnp.sqrt(sq_norm(x))


def global_norm(tree: Any) -> jax.Array:
    """L2 norm of all leaves of ``tree`` together, accumulated in at least float32; 0 for
    an empty tree. (``optax.tree.norm`` accumulates in the leaves' dtype.)"""
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree.leaves(tree):
        total = total + sq_norm(leaf)
    return jnp.sqrt(total)


def unitwise_norm(x: jax.Array) -> jax.Array:
    """Norm per output unit, broadcastable to ``x`` (NFNets convention, Flax layouts).

    Scalars and vectors (biases, norm scales) are one unit, as in the NFNets code
    and :func:`optax.adaptive_grad_clip`; matrices and higher-rank kernels have one
    unit per output channel: the norm reduces every axis but the last (the output
    axis in Flax's ``(..., in, out)`` layout, e.g. ``(h, w, in, out)`` convolutions).
    """
    x32 = to_acc(x)
    if x.ndim <= 1:
        return jnp.broadcast_to(jnp.sqrt(jnp.sum(x32 * x32)), x.shape)
    axes = tuple(range(x.ndim - 1))
    return jnp.sqrt(jnp.sum(x32 * x32, axis=axes, keepdims=True))


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
    return jax.tree.map(lambda x, *r: None if x is None else fn(x, *r), tree, *rest,
                        is_leaf=lambda x: x is None)
