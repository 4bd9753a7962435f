"""Differential privacy: DP-SGD's per-example clipping and Gaussian noise.

The transforms here take *per-example* gradients: every leaf of ``updates`` has a
leading batch axis (``jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)``),
and they return one aggregated gradient with the parameters' shapes. Use them first in
a chain. ``optax.MultiSteps`` and ``optax.apply_every`` cannot wrap them (their
accumulators have the parameters' shapes, not the per-example ones); accumulate the
per-example gradients of a larger logical batch instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optlab import _base, _tree

__all__ = ["DPAggregateState", "dp_aggregate"]


class DPAggregateState(NamedTuple):
    """State of :func:`dp_aggregate`.

    Attributes:
      key: the PRNG key of the noise (``uint32[2]``), split at every step.
    """

    key: jax.Array


def _per_example_norms(leaves: list[jax.Array]) -> jax.Array:
    total = None
    for g in leaves:
        g32 = g.astype(jnp.promote_types(g.dtype, jnp.float32))
        sq = jnp.sum(g32 * g32, axis=tuple(range(1, g.ndim)))  # no reshape: sharding-safe
        total = sq if total is None else total + sq
    return jnp.sqrt(total)


def dp_aggregate(
    l2_norm_clip: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Clips per-example gradients, sums them, adds Gaussian noise and averages (DP-SGD).

    For per-example gradients ``g_b`` (``b = 1..B``, the leading axis of every leaf)::

        c_b = g_b * min(1, C / ||g_b||)          # ||g_b||: global norm over all leaves
        out = (sum_b c_b + N(0, (C * sigma)^2 I)) / B

    with ``C = l2_norm_clip`` and ``sigma = noise_multiplier``. The result has the
    parameters' shapes and the gradients' dtype (norms, sums and noise are computed in
    float32). The same semantics, and for float32 the same noise draws, as
    ``optax.contrib.differentially_private_aggregate`` with ``key=jax.random.key(seed)``.
    The privacy accounting (epsilon, delta) is not done here.

    Args:
      l2_norm_clip: the per-example clipping norm ``C`` (> 0).
      noise_multiplier: the noise standard deviation relative to ``C`` (>= 0).
      seed: seed of the noise key (int >= 0).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; state :class:`DPAggregateState`
      (the key, split at every update).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> tx = optlab.dp_aggregate(l2_norm_clip=1.0, noise_multiplier=0.0)
      >>> per_example = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}  # batch of 2
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> out, state = tx.update(per_example, state)
      >>> [round(float(x), 4) for x in out["w"]]  # ((0.6, 0.8) + (0.3, 0.4)) / 2
      [0.45, 0.6]

    References:
      Abadi et al., `Deep Learning with Differential Privacy
      <https://arxiv.org/abs/1607.00133>`_, 2016
    """
    _base.check_positive("dp_aggregate", l2_norm_clip=l2_norm_clip)
    _base.check_nonnegative("dp_aggregate", noise_multiplier=noise_multiplier)
    _base.check_int("dp_aggregate", minimum=0, seed=seed)
    return _base.public(
        "dp_aggregate", _dp_aggregate(l2_norm_clip, noise_multiplier, seed), lead_axes=1
    )


def _dp_aggregate(l2_norm_clip, noise_multiplier, seed):
    def init_fn(params):
        return DPAggregateState(key=jax.random.PRNGKey(seed))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef = jax.tree.flatten(updates)
        if not leaves:
            return updates, state
        batch = {jnp.shape(g)[0] if jnp.ndim(g) else None for g in leaves}
        if len(batch) != 1 or None in batch:
            raise ValueError(
                "`optlab.dp_aggregate` expects per-example gradients: every leaf needs the"
                f" same leading batch axis, got leading sizes {sorted(map(str, batch))}."
            )
        (bsize,) = batch
        if bsize == 0:  # the mean over no example is 0 / 0
            raise ValueError(
                "`optlab.dp_aggregate`: the per-example `updates` have an empty batch (leading"
                " axis of size 0); pass at least one example."
            )
        norms = _per_example_norms(leaves)
        clip = jnp.asarray(l2_norm_clip, jnp.float32)
        factors = jnp.minimum(1.0, _tree.safe_div(clip, norms, fallback=1.0))
        noise_std = clip * noise_multiplier
        new_key, *keys = jax.random.split(state.key, len(leaves) + 1)
        out = []
        for g, k in zip(leaves, keys):
            g32 = g.astype(jnp.promote_types(g.dtype, jnp.float32))
            summed = jnp.tensordot(factors, g32, axes=1)
            noise = noise_std * jax.random.normal(k, summed.shape, summed.dtype)
            out.append(((summed + noise) / bsize).astype(g.dtype))
        return jax.tree.unflatten(treedef, out), DPAggregateState(key=new_key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
