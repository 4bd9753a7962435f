"""Compressed communication across replicas, with error feedback and bytes accounting.

A :class:`Compressor` turns one array into a small *payload* (what goes on the wire) and
back. Four are provided: :func:`top_k`, :func:`random_k`, :func:`scaled_sign` and
:func:`stochastic_quantization`. They are used in two places:

* :func:`compressed_all_reduce`, a transform that replaces the per-step gradient
  all-reduce of data-parallel training by a compressed one (each replica sends its
  payload; everyone decodes and averages);
* ``optlab.outer_optimizer(..., compressor=...)``, which compresses the pseudo-gradients
  sent at a sync.

Both wrap the compressor with optional **error feedback**: ``"ef"`` keeps the part that
was not sent in a residual added to the next message (EF-SGD), ``"ef21"`` sends the
compressed *change* of a running per-replica estimate (EF21). What travels through the
collective is the payload itself: a ``psum`` of the values for dense and random-k
messages (random-k indices come from a key shared by every replica), an ``all_gather``
of the payloads (values + indices, packed sign bits + scale, bit-packed codes + scale) for the
others, followed by a local decode and sum. :func:`bytes_on_the_wire` reads the running
byte count from the state.

Byte counts are *per replica and per message*: the size of the payload one replica
contributes (``n * itemsize`` for a dense message; ``k * (itemsize + 4)`` for top-k
values and int32 indices; ``k * itemsize`` for random-k; ``ceil(n / 8) + 4`` for scaled
sign; ``ceil(n * bits / 8) + 4`` for quantization, whose codes travel bit-packed). How
many times a collective algorithm forwards that payload (ring all-reduce: about twice)
is a property of the network, not of the method, and is left out.

Compressors act on whole leaves: ``top_k`` picks the largest entries of the entire
leaf, as on one device. In jax's explicit sharding mode a sharded leaf is first
gathered (within the replica, over the axes that shard it) and what is decoded goes
back to the leaf's sharding, so the error-feedback memory keeps the parameters'
sharding; in the default mode XLA places the same computation. Under a fully manual
``shard_map`` that also splits the parameters (FSDP-style), the transform only sees
this device's shard, and the selection is then per shard.
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
    "CompressionState",
    "Compressor",
    "bytes_on_the_wire",
    "compressed_all_reduce",
    "random_k",
    "scaled_sign",
    "stochastic_quantization",
    "top_k",
]

ERROR_FEEDBACK = (None, "ef", "ef21")


class Compressor(NamedTuple):
    """A lossy message format for one array (see :func:`top_k` and siblings).

    Attributes:
      name: short name, e.g. ``"top_k(0.1)"``.
      encode: ``(x, key) -> payload``, a tuple of arrays (``x`` is flattened first).
      decode: ``(payload, size, dtype) -> flat array`` of ``size`` entries.
      payload_bytes: ``(size, itemsize) -> int``, bytes of one payload.
      summable: whether payloads of different replicas can be summed directly
        (then one ``psum`` of the payload replaces the all-gather).
      random: whether ``encode`` uses its key.
    """

    name: str
    encode: Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]
    decode: Callable[[tuple[jax.Array, ...], int, Any], jax.Array]
    payload_bytes: Callable[[int, int], int]
    summable: bool
    random: bool


def _k_of(fraction: float, size: int) -> int:
    return min(size, max(1, math.ceil(fraction * size)))


def _check_fraction(fn_name: str, fraction: Any) -> None:
    _base.check_positive(fn_name, fraction=fraction)
    if _base.is_concrete_number(fraction) and fraction > 1:
        _base._fail(fn_name, "fraction", "in (0, 1]", fraction)
    if not _base.is_concrete_number(fraction):
        raise TypeError(
            f"`optlab.{fn_name}`: `fraction` must be a Python float (it fixes the message"
            f" size), got fraction={fraction!r}."
        )


def top_k(fraction: float = 0.01) -> Compressor:
    """Top-k sparsification: send the ``k = ceil(fraction * n)`` largest-magnitude entries.

    ``C(x)_i = x_i`` for the ``k`` entries of largest ``|x_i|`` of each leaf, ``0`` elsewhere.
    The payload is the ``k`` values and their int32 indices. Contractive
    (``||C(x) - x||^2 <= (1 - k/n) ||x||^2``) and biased: pair it with error feedback.

    Args:
      fraction: share of each leaf's entries sent, in ``(0, 1]``; at least one entry.

    Returns:
      A :class:`Compressor`.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> c = optlab.top_k(0.5)
      >>> payload = c.encode(jnp.array([0.1, -3.0, 2.0, 0.5]), None)
      >>> c.decode(payload, 4, jnp.float32).tolist()
      [0.0, -3.0, 2.0, 0.0]

    References:
      Stich, Cordonnier and Jaggi, `Sparsified SGD with Memory
      <https://arxiv.org/abs/1809.07599>`_, 2018
    """
    _check_fraction("top_k", fraction)

    def encode(x, key):
        del key
        k = _k_of(fraction, x.size)
        _, idx = jax.lax.top_k(jnp.abs(x), k)
        return x[idx], idx.astype(jnp.int32)

    def decode(payload, size, dtype):
        values, idx = payload
        return jnp.zeros(size, dtype).at[idx].add(values.astype(dtype))

    def nbytes(size, itemsize):
        return _k_of(fraction, size) * (itemsize + 4)

    return Compressor(f"top_k({fraction})", encode, decode, nbytes, False, False)


def random_k(fraction: float = 0.01) -> Compressor:
    """Random-k sparsification: send ``k = ceil(fraction * n)`` entries chosen at random.

    The indices come from a key that every replica shares, so only the ``k`` values travel
    and the payloads of all replicas can be summed directly. Not rescaled by ``n / k``:
    contractive like :func:`top_k`, meant for use with error feedback.

    Args:
      fraction: share of each leaf's entries sent, in ``(0, 1]``; at least one entry.

    Returns:
      A :class:`Compressor`.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> c = optlab.random_k(0.5)
      >>> payload = c.encode(jnp.arange(4.0), jax.random.key(0))
      >>> int((c.decode(payload, 4, jnp.float32) != 0).sum()) <= 2
      True

    References:
      Stich, Cordonnier and Jaggi, `Sparsified SGD with Memory
      <https://arxiv.org/abs/1809.07599>`_, 2018
    """
    _check_fraction("random_k", fraction)

    def indices(key, size):
        k = _k_of(fraction, size)
        return jax.random.permutation(key, size)[:k]

    def encode(x, key):
        idx = indices(key, x.size)
        return x[idx], key

    def decode(payload, size, dtype):
        values, key = payload
        return jnp.zeros(size, dtype).at[indices(key, size)].add(values.astype(dtype))

    def nbytes(size, itemsize):
        return _k_of(fraction, size) * itemsize

    return Compressor(f"random_k({fraction})", encode, decode, nbytes, True, True)


def scaled_sign() -> Compressor:
    """Scaled sign (1 bit per entry): ``C(x) = (||x||_1 / n) * sign(x)``.

    The payload is the packed sign bits and one float32 scale per leaf (zeros are sent as
    ``+``). Biased; with error feedback it is EF-signSGD.

    Returns:
      A :class:`Compressor`.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> c = optlab.scaled_sign()
      >>> c.decode(c.encode(jnp.array([1.0, -3.0]), None), 2, jnp.float32).tolist()
      [2.0, -2.0]

    References:
      Karimireddy, Rebjock, Stich and Jaggi, `Error Feedback Fixes SignSGD and other
      Gradient Compression Schemes <https://arxiv.org/abs/1901.09847>`_, 2019
    """

    def encode(x, key):
        del key
        scale = jnp.mean(jnp.abs(x.astype(jnp.float32))).reshape(1)
        return jnp.packbits(x >= 0), scale

    def decode(payload, size, dtype):
        bits, scale = payload
        signs = jnp.unpackbits(bits, count=size).astype(jnp.float32) * 2.0 - 1.0
        return (signs * scale[0]).astype(dtype)

    def nbytes(size, itemsize):
        del itemsize
        return math.ceil(size / 8) + 4

    return Compressor("scaled_sign", encode, decode, nbytes, False, False)


def stochastic_quantization(bits: int = 8) -> Compressor:
    """Unbiased stochastic quantization to ``bits`` bits per entry (QSGD-style).

    With ``s = 2**(bits-1) - 1`` levels and ``m = max|x|`` per leaf, each entry is sent as
    ``sign(x) * q`` where ``q = floor(s |x| / m + u)``, ``u ~ U[0, 1)``, and decoded as
    ``sign(x) q m / s``: ``E[C(x)] = x``. Each replica draws its own noise. The payload
    is the codes, ``bits`` bits each packed into ``ceil(n * bits / 8)`` bytes (one int8
    per entry for ``bits=8``), and ``m`` as one float32.

    Args:
      bits: bits per entry, an int in ``[2, 8]``.

    Returns:
      A :class:`Compressor`.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> c = optlab.stochastic_quantization(8)
      >>> x = jnp.array([0.5, -1.0, 0.25])
      >>> y = c.decode(c.encode(x, jax.random.key(0)), 3, jnp.float32)
      >>> bool(jnp.max(jnp.abs(y - x)) <= 1.0 / 127)
      True

    References:
      Alistarh, Grubic, Li, Tomioka and Vojnovic, `QSGD: Communication-Efficient SGD via
      Gradient Quantization and Encoding <https://arxiv.org/abs/1610.02132>`_, 2017
    """
    _base.check_int("stochastic_quantization", minimum=2, bits=bits)
    if bits > 8:
        _base._fail("stochastic_quantization", "bits", "<= 8", bits)
    levels = 2 ** (bits - 1) - 1
    shifts = jnp.arange(bits - 1, -1, -1, dtype=jnp.uint8)  # most significant bit first

    def encode(x, key):
        x32 = x.astype(jnp.float32)
        m = jnp.max(jnp.abs(x32))
        ratio = jnp.where(m > 0, jnp.abs(x32) / jnp.where(m > 0, m, 1.0), 0.0)
        u = jax.random.uniform(key, x.shape, jnp.float32)
        q = jnp.minimum(jnp.floor(ratio * levels + u), levels)
        q = jnp.where(jnp.isfinite(x32), q, levels)  # NaN/inf stay visible through m
        codes = jnp.sign(x32) * q
        if bits == 8:
            return codes.astype(jnp.int8), m.reshape(1)
        # codes + levels in [0, 2**bits - 2]: `bits` bits each, packed into bytes
        offset = (codes + levels).astype(jnp.uint8)
        code_bits = (offset[:, None] >> shifts[None, :]) & 1
        return jnp.packbits(code_bits.reshape(-1)), m.reshape(1)

    def decode(payload, size, dtype):
        packed, m = payload
        if bits == 8:
            codes = packed.astype(jnp.float32)
        else:
            code_bits = jnp.unpackbits(packed, count=size * bits).reshape(size, bits)
            offset = jnp.sum(
                code_bits.astype(jnp.int32) << shifts[None, :].astype(jnp.int32), axis=1
            )
            codes = (offset - levels).astype(jnp.float32)
        return (codes * (m[0] / levels)).astype(dtype)

    def nbytes(size, itemsize):
        del itemsize
        return math.ceil(size * bits / 8) + 4

    return Compressor(f"stochastic_quantization({bits})", encode, decode, nbytes, False, True)


# ---------------------------------------------------------------------------
# Error feedback and the collective
# ---------------------------------------------------------------------------


class CompressionState(NamedTuple):
    """Per-replica state of a compressed message stream.

    Attributes:
      memory: like the params: the EF residual (``"ef"``), the replica's running
        estimate ``g_i`` (``"ef21"``), or ``()`` without error feedback.
      estimate: like the params: EF21's aggregated estimate ``g = mean_i g_i``
        (identical on every replica), else ``()``.
      key: uint32 PRNG key (``jax.random.PRNGKey``) for random compressors, shared by
        all replicas (each replica folds in its index where the noise must be independent).
      sends: int32, messages this replica sent.
      bytes_sent: float32, payload bytes this replica sent (see the module docstring).
    """

    memory: Any
    estimate: Any
    key: jax.Array
    sends: jax.Array
    bytes_sent: jax.Array


def _check_error_feedback(fn_name: str, error_feedback: Any, compressor: Any) -> None:
    if error_feedback not in ERROR_FEEDBACK:
        raise ValueError(
            f"`optlab.{fn_name}`: `error_feedback` must be one of {ERROR_FEEDBACK}, got"
            f" error_feedback={error_feedback!r}."
        )
    if compressor is not None and not isinstance(compressor, Compressor):
        raise TypeError(
            f"`optlab.{fn_name}`: `compressor` must be None or an optlab.Compressor (e.g."
            f" optlab.top_k(0.01)), got compressor={compressor!r}."
        )


def message_bytes(compressor: Compressor | None, tree: Any) -> int:
    """Payload bytes of one message of ``tree`` (a Python int, from shapes only)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        size, itemsize = int(np.prod(jnp.shape(leaf))), jnp.dtype(jnp.result_type(leaf)).itemsize
        if size == 0:
            continue
        total += size * itemsize if compressor is None else compressor.payload_bytes(size, itemsize)
    return total


def init_compression(
    tree: Any, compressor: Compressor | None, error_feedback: str | None, seed: int = 0
) -> CompressionState:
    """The initial :class:`CompressionState` for messages shaped like ``tree``."""
    zeros = optax.tree.zeros_like(tree)
    use_memory = compressor is not None and error_feedback is not None
    return CompressionState(
        memory=zeros if use_memory else (),
        estimate=zeros if use_memory and error_feedback == "ef21" else (),
        key=jax.random.PRNGKey(seed),
        sends=jnp.zeros([], jnp.int32),
        bytes_sent=jnp.zeros([], jnp.float32),
    )


def _replica_index(axis_name):
    return jnp.zeros([], jnp.int32) if axis_name is None else jax.lax.axis_index(axis_name)


def _as_leaf(flat, like):
    """A decoded flat message back in the shape (and explicit sharding) of ``like``."""
    return _tree.reshard_like(flat.reshape(like.shape), like)


def _weighted_sum(leaf_payload, compressor, like, weight, axis_name):
    """Sum over replicas of ``weight_r * decode(payload_r)``, shaped and typed like ``like``."""
    size, dtype = like.size, like.dtype
    if compressor is None:  # the dense leaf itself, in its own shape and sharding
        (x,) = leaf_payload
        out = (weight * x.astype(jnp.float32)).astype(dtype)
        return out if axis_name is None else jax.lax.psum(out, axis_name)
    if axis_name is None:
        flat = (weight * compressor.decode(leaf_payload, size, jnp.float32)).astype(dtype)
    elif compressor.summable:  # random-k: shared indices, sum the values only
        values, key = leaf_payload
        summed = jax.lax.psum((weight * values.astype(jnp.float32)).astype(dtype), axis_name)
        flat = compressor.decode((summed, key), size, dtype)
    else:
        gathered = jax.lax.all_gather(leaf_payload, axis_name)  # each replica's payload
        weights = jax.lax.all_gather(weight, axis_name)
        decoded = jax.vmap(lambda p: compressor.decode(p, size, jnp.float32))(gathered)
        flat = jnp.tensordot(weights, decoded, axes=1).astype(dtype)
    return _as_leaf(flat, like)


def communicate(
    tree: Any,
    state: CompressionState,
    *,
    compressor: Compressor | None,
    error_feedback: str | None,
    axis_name: Any,
    weight: jax.Array,
    total_weight: jax.Array,
) -> tuple[Any, CompressionState]:
    """Weighted mean over ``axis_name`` of ``tree``, sent compressed; one collective per leaf.

    ``weight`` is this replica's (non-negative) weight, ``total_weight`` the sum over
    replicas (computed by the caller). A replica with weight 0 sends nothing: its memory
    and byte count do not change. Returns the mean (zeros where ``total_weight`` is 0) and
    the new state.
    """
    leaves, treedef = jax.tree.flatten(tree)
    takes_part = weight > 0
    weight32 = weight.astype(jnp.float32)
    inv_total = jnp.where(
        total_weight > 0, 1.0 / jnp.where(total_weight > 0, total_weight, 1.0), 0.0
    )
    use_memory = compressor is not None and error_feedback is not None
    memory = jax.tree.leaves(state.memory) if use_memory else [None] * len(leaves)
    estimate = jax.tree.leaves(state.estimate) if error_feedback == "ef21" and use_memory else None
    if compressor is not None and compressor.random:
        key, shared_key = jax.random.split(state.key)
        if not compressor.summable:  # independent noise on each replica
            shared_key = jax.random.fold_in(shared_key, _replica_index(axis_name))
        keys = jax.random.split(shared_key, max(len(leaves), 1))
    else:  # nothing random: the key stays as it is
        key, keys = state.key, [None] * len(leaves)
    out, new_memory, new_estimate = [], [], []
    for i, x in enumerate(leaves):
        if compressor is None:
            payload = (x,)
        else:
            if error_feedback == "ef":
                message = x + memory[i]  # add back what was not sent
            elif error_feedback == "ef21":
                message = x - memory[i]  # change of the running estimate
            else:
                message = x
            # The compressor sees the whole leaf (top-k over every entry), so an explicitly
            # sharded leaf is gathered first; what it decodes goes back to x's sharding.
            payload = compressor.encode(_tree.gathered(message).reshape(-1), keys[i])
            sent = _as_leaf(compressor.decode(payload, x.size, x.dtype), x)
            if error_feedback == "ef":
                new_memory.append(jnp.where(takes_part, message - sent, memory[i]))
            elif error_feedback == "ef21":
                new_memory.append(jnp.where(takes_part, memory[i] + sent, memory[i]))
        if x.size == 0:
            mean = x
        else:
            mean = _weighted_sum(payload, compressor, x, weight32, axis_name)
            mean = (mean.astype(jnp.float32) * inv_total).astype(x.dtype)
        if estimate is not None:  # EF21: g <- g + mean_i c_i; the step uses g
            mean = estimate[i] + jnp.where(total_weight > 0, mean, 0)
            new_estimate.append(mean)
        out.append(mean)
    nbytes = float(message_bytes(compressor, tree))
    new_state = CompressionState(
        memory=jax.tree.unflatten(treedef, new_memory) if use_memory else (),
        estimate=jax.tree.unflatten(treedef, new_estimate) if estimate is not None else (),
        key=key,
        sends=state.sends + takes_part.astype(jnp.int32),
        bytes_sent=state.bytes_sent + jnp.where(takes_part, nbytes, 0.0).astype(jnp.float32),
    )
    return jax.tree.unflatten(treedef, out), new_state


def check_axis_bound(fn_name: str, axis_name: Any) -> None:
    """Raise a ValueError naming ``axis_name`` if it is not bound where ``update`` runs."""
    if axis_name is None:
        return
    try:
        jax.lax.axis_size(axis_name)
    except NameError:
        raise ValueError(
            f"`optlab.{fn_name}`: the axis axis_name={axis_name!r} is not bound here. Call the"
            " step under `jax.vmap(step, axis_name=...)`, `jax.shard_map` over a mesh with that"
            " axis, or `jax.pmap(step, axis_name=...)`; use axis_name=None for one replica"
            " (no communication)."
        ) from None


def axis_size(axis_name: Any) -> int:
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def check_axis_name(fn_name: str, axis_name: Any) -> None:
    """``axis_name`` is None, a string or a tuple of strings."""
    ok = (
        axis_name is None
        or isinstance(axis_name, str)
        or (
            isinstance(axis_name, tuple)
            and axis_name
            and all(isinstance(a, str) for a in axis_name)
        )
    )
    if not ok:
        raise TypeError(
            f"`optlab.{fn_name}`: `axis_name` must be None, a string or a tuple of strings,"
            f" got axis_name={axis_name!r}."
        )


def compressed_all_reduce(
    axis_name: Any = "replica",
    compressor: Compressor | None = None,
    error_feedback: str | None = "ef",
    *,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Averages the gradients over ``axis_name`` with a compressed message per replica.

    Each replica sends ``C(g_r + e_r)`` and keeps ``e_r <- g_r + e_r - C(g_r + e_r)`` (EF),
    or sends ``c_r = C(g_r - h_r)``, keeps ``h_r <- h_r + c_r`` and every replica updates
    ``h <- h + mean_r c_r`` (EF21); the output is the mean of what was sent (EF) or ``h``
    (EF21). With ``compressor=None`` it is a plain ``pmean``. Use it first in a chain
    in place of averaging the gradients yourself, e.g. ``optax.chain(
    optlab.compressed_all_reduce("data", optlab.top_k(0.01)), optax.adamw(1e-3))``.

    Args:
      axis_name: the mapped axis (``vmap``/``shard_map``/``pmap``) to average over, or
        ``None`` for one replica (the compression still applies).
      compressor: a :class:`Compressor` or ``None`` (dense).
      error_feedback: ``"ef"``, ``"ef21"`` or ``None``; ignored without a compressor.
      seed: seed of the key used by random compressors.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.compressed_all_reduce("replica", optlab.top_k(0.5))
      >>> grads = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}  # two replicas
      >>> state = jax.vmap(tx.init)(grads)
      >>> step = jax.vmap(tx.update, in_axes=(0, 0), axis_name="replica")
      >>> updates, state = step(grads, state)
      >>> updates["w"].tolist()  # mean of [0, -2] and [3, 0]
      [[1.5, -1.0], [1.5, -1.0]]
      >>> float(optlab.bytes_on_the_wire(state))  # 2 replicas x 1 value x (4 + 4) bytes
      16.0

    State:
      :class:`CompressionState`: the error-feedback memory like the params (two buffers
      for EF21), a key, and the message/byte counters.

    References:
      Seide, Fu, Droppo, Li and Yu, `1-Bit Stochastic Gradient Descent and its Application
      to Data-Parallel Distributed Training of Speech DNNs
      <https://www.isca-archive.org/interspeech_2014/seide14_interspeech.html>`_, 2014;
      Richtárik, Sokolov and Fatkhullin, `EF21: A New, Simpler, Theoretically Better, and
      Practically Faster Error Feedback <https://arxiv.org/abs/2106.05203>`_, 2021
    """
    name = "compressed_all_reduce"
    check_axis_name(name, axis_name)
    _check_error_feedback(name, error_feedback, compressor)
    _base.check_int(name, minimum=0, seed=seed)
    if compressor is None:
        error_feedback = None

    def init_fn(params):
        _base.check_float_tree(name, params)
        return init_compression(params, compressor, error_feedback, seed)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_axis_bound(name, axis_name)
        if error_feedback is not None:
            _base.check_same_structure(name, updates, state.memory, "updates", "params")
        n = axis_size(axis_name)
        one = jnp.ones([], jnp.float32)
        return communicate(
            updates,
            state,
            compressor=compressor,
            error_feedback=error_feedback,
            axis_name=axis_name,
            weight=one,
            total_weight=n * one,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def bytes_on_the_wire(state: Any) -> jax.Array:
    """Total payload bytes sent so far, summed over every message stream in ``state``.

    ``state`` is any optimizer state (nested in chains, ``inject_hyperparams``...). Under
    ``vmap`` the state carries a leading replica axis and the sum covers every replica.

    Args:
      state: an optimizer state containing :class:`CompressionState` nodes.

    Returns:
      A float32 scalar (0 when the state holds no message stream).

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.fedavg(optax.sgd(0.1), sync_period=2, axis_name=None)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     _, state = tx.update({"w": jnp.ones(3)}, state, params)
      >>> float(optlab.bytes_on_the_wire(state))  # one sync of 3 float32
      12.0
    """
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, CompressionState))
    total = jnp.zeros([], jnp.float32)
    for node in nodes:
        if isinstance(node, CompressionState):
            total = total + jnp.sum(node.bytes_sent)
    return total
