"""Training across replicas: outer optimizers (DiLoCo, FedAvg, FedOpt, NoLoCo), gossip.

Every replica (a pod, an island, a federated client) calls ``tx.update(grads, state,
params)`` with its own gradients, inside a function mapped over ``axis_name``:
``jax.vmap(step, axis_name="replica")`` (simulation on one device), ``jax.shard_map``
over a mesh axis (one or several hosts), or ``jax.pmap(step, axis_name="replica")``.
Between syncs only the ``inner`` optimizer runs and nothing crosses the replica axis.
Every ``sync_period``-th step the replicas average their pseudo-gradients
``Δ_r = anchor - θ_r`` over ``axis_name``, the ``outer`` optimizer steps the shared anchor
on that mean, and the update returned moves each replica to the new anchor.

The sync is a ``lax.switch``/``lax.cond`` branch taken on the step counter kept in the
state, so its collectives sit inside the branch (checked on the lowered HLO in
``tests/test_replicas_multidevice.py``). Under ``shard_map``/``pmap`` the counter is a
per-device scalar and the branch is a real conditional. Under ``vmap`` a *batched*
counter turns the conditional into a ``select`` that computes both branches every step
(the results are the same; the simulation just does the sums every step); keep the
counter unbatched with :func:`replica_axes` and :func:`replicate` to simulate exactly what
runs on devices.

``axis_name=None`` is one replica with no communication (the outer step then acts on the
replica's own pseudo-gradient, like Lookahead); it is also what the shared test suite runs.

On ``drjax``: drjax (``drjax.program``, ``map_fn``, ``reduce_mean``) writes a federated
round as a *global* program over a placement axis, and its ``map_fn`` forbids collectives
on that axis inside the mapped function. A transform that communicates inside ``update``
(which is what makes it a drop-in optax transform under ``vmap``, ``shard_map``, ``pmap``
and multi-host meshes) cannot run there; using drjax would mean splitting every method
into a per-replica part and a global part and asking the user to write the round loop,
more code on both sides for the placement that ``vmap(axis_name=...)`` and ``shard_map``
already give (drjax itself lowers ``map_fn`` to ``vmap`` plus sharding constraints). So
optlab does not depend on drjax, optionally or otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base
from optlab import _communication as comm

__all__ = [
    "FedAUState",
    "GossipState",
    "OuterOptimizerState",
    "check_replica_trees",
    "diloco",
    "fedavg",
    "fedopt",
    "fedprox",
    "gossip",
    "noloco",
    "outer_optimizer",
    "replica_axes",
    "replicate",
    "stack_replicas",
    "streaming_diloco",
]

PARTICIPATION = ("uniform", "fedau")
AVERAGING = ("all_reduce", "one_peer")


class FedAUState(NamedTuple):
    """Per-replica participation statistics of FedAU (see :func:`optlab.fedavg`).

    Attributes:
      rounds_since: int32, syncs since this replica last took part (or since the cutoff).
      mean_interval: float32, running mean of the recorded intervals: the estimate of
        ``1 / p_r`` used as this replica's weight.
      intervals: int32, number of recorded intervals.
    """

    rounds_since: jax.Array
    mean_interval: jax.Array
    intervals: jax.Array


class OuterOptimizerState(NamedTuple):
    """State for :func:`optlab.outer_optimizer` and the methods built on it.

    Attributes:
      count: int32, inner steps taken; identical on every replica (keep it unbatched under
        ``vmap``, see :func:`optlab.replica_axes`).
      inner_state: the inner optimizer's state, this replica's own.
      anchor: the parameters at the last sync, like the params; identical on every replica
        (per replica with ``averaging="one_peer"``).
      outer_state: tuple, the outer optimizer's state for each fragment of the parameters.
      pending: like the params with ``overlap_steps > 0`` (new anchors that are not merged
        yet), else ``()``.
      communication: tuple of :class:`optlab.CompressionState`, one per fragment (error
        feedback memory and byte counters).
      participation: :class:`FedAUState` with ``participation="fedau"``, else ``()``.
    """

    count: jax.Array
    inner_state: Any
    anchor: Any
    outer_state: Any
    pending: Any
    communication: Any
    participation: Any


class GossipState(NamedTuple):
    """State for :func:`optlab.gossip`.

    Attributes:
      count: int32, steps taken (keep it unbatched under ``vmap``).
      inner_state: the inner optimizer's state.
      communication: :class:`optlab.CompressionState` holding the message counters.
    """

    count: jax.Array
    inner_state: Any
    communication: Any


# ---------------------------------------------------------------------------
# Validation helpers (run once, in the public factory)
# ---------------------------------------------------------------------------


def _check_transform(fn_name: str, name: str, tx: Any) -> None:
    if not isinstance(tx, optax.GradientTransformation) and not (
        hasattr(tx, "init") and hasattr(tx, "update")
    ):
        raise TypeError(
            f"`optlab.{fn_name}`: `{name}` must be an optax GradientTransformation, got"
            f" {name}={tx!r}."
        )


def _check_weights(fn_name: str, weights: Any) -> np.ndarray | None:
    if weights is None:
        return None
    if callable(weights) or isinstance(weights, (str, bool)):
        raise TypeError(
            f"`optlab.{fn_name}`: `weights` must be None or a sequence of per-replica"
            f" numbers, got weights={weights!r}; pass a per-step weight as the extra argument"
            " `weight=` of `update` instead."
        )
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"`optlab.{fn_name}`: `weights` must be a sequence of real numbers, got"
            f" weights={weights!r}."
        ) from None
    if w.ndim != 1 or w.size == 0:
        raise ValueError(
            f"`optlab.{fn_name}`: `weights` must be a non-empty 1-D sequence (one weight per"
            f" replica), got weights={weights!r}."
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(
            f"`optlab.{fn_name}`: `weights` must be finite and >= 0, got weights={weights!r}."
        )
    if not w.sum() > 0:
        raise ValueError(
            f"`optlab.{fn_name}`: `weights` must sum to a positive number, got weights={weights!r}."
        )
    return w.astype(np.float32)


def _check_choice(fn_name: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(
            f"`optlab.{fn_name}`: `{name}` must be one of {tuple(choices)}, got {name}={value!r}."
        )


def _check_runtime_weight(fn_name: str, weight: Any) -> None:
    """A concrete per-step ``weight`` is checked here; a traced negative one gives NaN."""
    if weight is None or isinstance(weight, jax.core.Tracer):
        return
    if isinstance(weight, (bool, str)):
        raise TypeError(
            f"`optlab.{fn_name}`: the extra argument `weight` must be a number,"
            f" got weight={weight!r}."
        )
    w = np.asarray(weight)
    if w.ndim != 0 or w.dtype.kind not in "iuf":
        raise TypeError(
            f"`optlab.{fn_name}`: the extra argument `weight` must be a real scalar (this"
            f" replica's weight), got weight={weight!r}."
        )
    if not (np.isfinite(w) and w >= 0):
        raise ValueError(
            f"`optlab.{fn_name}`: the extra argument `weight` must be finite and >= 0,"
            f" got weight={weight!r}."
        )


# ---------------------------------------------------------------------------
# Fragments (streaming DiLoCo)
# ---------------------------------------------------------------------------


def _fragments(leaves: list, num_fragments: int) -> list[list[int]]:
    """Contiguous groups of leaf indices with balanced sizes (some may be empty)."""
    sizes = [int(np.prod(jnp.shape(x))) for x in leaves]
    total = max(sum(sizes), 1)
    groups: list[list[int]] = [[] for _ in range(num_fragments)]
    acc = 0
    for i, s in enumerate(sizes):
        f = min(num_fragments - 1, (acc + s / 2) * num_fragments // total) if sum(sizes) else 0
        groups[int(f)].append(i)
        acc += s
    return groups


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _global_norm(leaves):
    return jnp.sqrt(
        sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves), jnp.zeros([]))
    )


def _replica_count(axis_name):
    return comm.axis_size(axis_name)


# ---------------------------------------------------------------------------
# The combinator
# ---------------------------------------------------------------------------


class _Options(NamedTuple):
    """The keyword options of :func:`optlab.outer_optimizer`, with its defaults.

    The named methods (``diloco``, ``fedavg``, ...) take a subset of them under the same
    names and pass them on with :func:`_options_in`.
    """

    weights: Any = None
    participation: str = "uniform"
    fedau_cutoff: int = 50
    compressor: comm.Compressor | None = None
    error_feedback: str | None = "ef"
    max_pseudo_gradient_norm: Any = None
    num_fragments: int = 1
    overlap_steps: int = 0
    overlap_mixing: Any = 0.0
    averaging: str = "all_reduce"
    peer_pull: Any = 0.0
    seed: int = 0


def _options_in(scope: dict[str, Any], **fixed: Any) -> _Options:
    """The :class:`_Options` among a public factory's arguments (its ``locals()``), plus
    ``fixed`` ones the method sets itself."""
    return _Options(**{k: scope[k] for k in _Options._fields if k in scope}, **fixed)


def _build_outer(
    name: str,
    inner: optax.GradientTransformation,
    outer: optax.GradientTransformation,
    sync_period: int,
    axis_name: Any,
    options: _Options,
) -> optax.GradientTransformationExtraArgs:
    """The implementation behind every public outer-optimizer factory (``options``
    validated, ``weights`` an array or None)."""
    (
        weights,
        participation,
        fedau_cutoff,
        compressor,
        error_feedback,
        max_pseudo_gradient_norm,
        num_fragments,
        overlap_steps,
        overlap_mixing,
        averaging,
        peer_pull,
        seed,
    ) = options
    inner = optax.with_extra_args_support(inner)
    if compressor is None:
        error_feedback = None
    period = sync_period
    offsets = [p * period // num_fragments for p in range(num_fragments)]

    def sync_index(c):
        """Fragment whose sync falls on inner step ``c`` (1-based), or ``num_fragments``."""
        idx = jnp.full([], num_fragments, jnp.int32)
        for p, o in enumerate(offsets):
            idx = jnp.where((c >= 1) & ((c + o) % period == 0), p, idx)
        return idx

    def init_fn(params):
        inner_state = inner.init(params)  # first: a wrapped fedprox names itself on int leaves
        _base.check_float_tree(name, params)
        leaves = jax.tree.leaves(params)
        groups = _fragments(leaves, num_fragments)
        frag = lambda g: [leaves[i] for i in g]
        return OuterOptimizerState(
            count=jnp.zeros([], jnp.int32),
            inner_state=inner_state,
            anchor=jax.tree.map(jnp.asarray, params),
            outer_state=tuple(outer.init(frag(g)) for g in groups),
            pending=jax.tree.map(jnp.asarray, params) if overlap_steps > 0 else (),
            communication=tuple(
                comm.init_compression(frag(g), compressor, error_feedback, seed + p)
                for p, g in enumerate(groups)
            ),
            participation=FedAUState(
                rounds_since=jnp.zeros([], jnp.int32),
                mean_interval=jnp.ones([], jnp.float32),
                intervals=jnp.zeros([], jnp.int32),
            )
            if participation == "fedau"
            else (),
        )

    def aggregate(deltas, anchors, cstate, fstate, weight, participating, count):
        """Mean pseudo-gradient of this fragment and whether the round happened."""
        n = _replica_count(axis_name)
        part = participating.astype(jnp.float32)
        if averaging == "one_peer":
            return one_peer(deltas, anchors, cstate, count)
        if participation == "fedau":  # weight = running mean interval ~ 1 / p_r, total = N
            since = fstate.rounds_since + 1
            record = participating | (since >= fedau_cutoff)
            k = fstate.intervals.astype(jnp.float32)
            mean = jnp.where(
                record, (k * fstate.mean_interval + since) / (k + 1), fstate.mean_interval
            )
            fstate = FedAUState(
                rounds_since=jnp.where(record, 0, since),
                mean_interval=mean,
                intervals=fstate.intervals + record.astype(jnp.int32),
            )
            w = weight * mean * part
            total = jnp.asarray(n, jnp.float32)
            if axis_name is not None:  # nobody took part: skip the round
                total = jnp.where(jax.lax.psum(part, axis_name) > 0, total, 0.0)
            else:
                total = total * part
        else:
            w = weight * part
            total = w if axis_name is None else jax.lax.psum(w, axis_name)
        w = jnp.where(w < 0, jnp.nan, w)  # a negative traced weight: visible NaN, not ascent
        mean_delta, cstate = comm.communicate(
            deltas,
            cstate,
            compressor=compressor,
            error_feedback=error_feedback,
            axis_name=axis_name,
            weight=w,
            total_weight=total,
        )
        return mean_delta, cstate, fstate, total > 0

    def one_peer(deltas, anchors, cstate, count):
        """NoLoCo: average with one peer (changing every round) through ``ppermute``."""
        n = _replica_count(axis_name)
        if axis_name is None or n == 1:
            peer_d, peer_a = deltas, anchors
        else:
            rnd = (count // period - 1) % (n - 1)

            def from_shift(s):
                perm = [(i, (i + s) % n) for i in range(n)]  # receive from r - s
                return lambda xs: jax.lax.ppermute(xs, axis_name, perm)

            peer_d, peer_a = jax.lax.switch(
                rnd, [from_shift(s) for s in range(1, n)], (deltas, anchors)
            )
        g = [
            ((d.astype(jnp.float32) + pd) / 2 + peer_pull * (a - (a + pa) / 2)).astype(d.dtype)
            for d, pd, a, pa in zip(deltas, peer_d, anchors, peer_a)
        ]
        nbytes = 2.0 * comm.message_bytes(None, deltas) if n > 1 else 0.0
        cstate = cstate._replace(sends=cstate.sends + 1, bytes_sent=cstate.bytes_sent + nbytes)
        return g, cstate, (), jnp.array(True)

    def update_fn(updates, state, params=None, *, weight=None, participating=None, **extra_args):
        _base.require_params(params)
        comm.check_axis_bound(name, axis_name)
        _base.check_same_structure(name, updates, params, "updates", "params")
        _check_runtime_weight(name, weight)
        inner_updates, inner_state = inner.update(
            updates, state.inner_state, params, anchor=state.anchor, **extra_args
        )
        p_leaves, treedef = jax.tree.flatten(params)
        u_leaves = jax.tree.leaves(inner_updates)
        groups = _fragments(p_leaves, num_fragments)
        local = [(p + u).astype(p.dtype) for p, u in zip(p_leaves, u_leaves)]
        count = state.count + 1

        if weights is not None:
            n = _replica_count(axis_name)
            if len(weights) != n:
                raise ValueError(
                    f"`optlab.{name}`: `weights` has {len(weights)} entries but the axis"
                    f" {axis_name!r} has {n} replicas."
                )
            base_w = jnp.asarray(weights)[0 if axis_name is None else jax.lax.axis_index(axis_name)]
        else:
            base_w = jnp.ones([], jnp.float32)
        if weight is not None:
            base_w = base_w * jnp.asarray(weight, jnp.float32)
        part = (
            jnp.ones([], bool) if participating is None else jnp.asarray(participating).astype(bool)
        )

        may_skip = averaging == "all_reduce" and not (
            participating is None and weight is None and weights is None
        )
        carry = {
            "anchor": jax.tree.leaves(state.anchor),
            "outer": state.outer_state,
            "pending": jax.tree.leaves(state.pending) if overlap_steps > 0 else [],
            "comm": state.communication,
            "fedau": state.participation,
            "local": local,
            "out": list(u_leaves),
        }

        def merge(c, p, new_anchor_frag):
            """Fragment ``p``: anchor <- new anchor, params <- α θ + (1 - α) new anchor."""
            c = dict(c, anchor=list(c["anchor"]), local=list(c["local"]), out=list(c["out"]))
            for i, a in zip(groups[p], new_anchor_frag):
                mixed = (
                    overlap_mixing * c["local"][i].astype(jnp.float32)
                    + (1 - overlap_mixing) * a.astype(jnp.float32)
                ).astype(a.dtype)
                c["anchor"][i] = a
                c["local"][i] = mixed
                c["out"][i] = (mixed - p_leaves[i]).astype(p_leaves[i].dtype)
            return c

        def sync_branch(p):
            def branch(c):
                idx = groups[p]
                anchors = [c["anchor"][i] for i in idx]
                deltas = [(a - c["local"][i]).astype(a.dtype) for a, i in zip(anchors, idx)]
                if max_pseudo_gradient_norm is not None:  # per replica, before averaging
                    norm = _global_norm(deltas)
                    scale = jnp.minimum(1.0, max_pseudo_gradient_norm / jnp.maximum(norm, 1e-30))
                    deltas = [(d * scale).astype(d.dtype) for d in deltas]
                mean_delta, cstate, fstate, happened = aggregate(
                    deltas, anchors, c["comm"][p], c["fedau"], base_w, part, count
                )
                outer_updates, ostate = outer.update(mean_delta, c["outer"][p], anchors)
                new_anchor = [
                    (a + u).astype(a.dtype) for a, u in zip(anchors, jax.tree.leaves(outer_updates))
                ]
                if may_skip:  # a round nobody took part in keeps anchor and outer state
                    new_anchor = _select(happened, new_anchor, anchors)
                    ostate = _select(happened, ostate, c["outer"][p])
                comm_states = tuple(cstate if q == p else s for q, s in enumerate(c["comm"]))
                outer_states = tuple(ostate if q == p else s for q, s in enumerate(c["outer"]))
                c = dict(c, comm=comm_states, outer=outer_states, fedau=fstate)
                if overlap_steps == 0:
                    return merge(c, p, new_anchor)
                pending = list(c["pending"])
                for i, a in zip(idx, new_anchor):
                    pending[i] = a
                return dict(c, pending=pending)

            return branch

        branches = [sync_branch(p) for p in range(num_fragments)] + [lambda c: c]
        carry = jax.lax.switch(sync_index(count), branches, carry)
        if overlap_steps > 0:  # merge the new anchor synced `overlap_steps` steps ago
            late = count - overlap_steps
            merges = [
                (lambda c, p=p: merge(c, p, [c["pending"][i] for i in groups[p]]))
                for p in range(num_fragments)
            ] + [lambda c: c]
            carry = jax.lax.switch(sync_index(late), merges, carry)

        new_state = OuterOptimizerState(
            count=count,
            inner_state=inner_state,
            anchor=jax.tree.unflatten(treedef, carry["anchor"]),
            outer_state=carry["outer"],
            pending=jax.tree.unflatten(treedef, carry["pending"]) if overlap_steps > 0 else (),
            communication=carry["comm"],
            participation=carry["fedau"],
        )
        return jax.tree.unflatten(treedef, carry["out"]), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _validate_common(fn_name, inner, sync_period, axis_name):
    _check_transform(fn_name, "inner", inner)
    _base.check_int(fn_name, minimum=1, sync_period=sync_period)
    comm.check_axis_name(fn_name, axis_name)


def outer_optimizer(
    inner: optax.GradientTransformation,
    outer: optax.GradientTransformation,
    sync_period: int,
    axis_name: Any = "replica",
    *,
    weights: Sequence[float] | None = None,
    participation: str = "uniform",
    fedau_cutoff: int = 50,
    compressor: comm.Compressor | None = None,
    error_feedback: str | None = "ef",
    max_pseudo_gradient_norm: float | None = None,
    num_fragments: int = 1,
    overlap_steps: int = 0,
    overlap_mixing: float = 0.0,
    averaging: str = "all_reduce",
    peer_pull: float = 0.0,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Local steps with ``inner``; every ``sync_period`` steps an ``outer`` step on the mean.

    With ``c`` the inner step count, replica ``r`` runs ``θ_r <- θ_r + inner(g_r)``; when
    ``c`` is a multiple of ``sync_period`` it sends ``Δ_r = anchor - θ_r``, the replicas
    compute ``Δ = Σ_r w_r Δ_r / Σ_r w_r`` over ``axis_name``, and
    ``anchor <- anchor + outer(Δ)``; every replica restarts from the new anchor (the update
    returned is ``anchor - θ_r``). FedAvg is ``outer = sgd(1)``, DiLoCo
    ``outer = sgd(0.7, momentum=0.9, nesterov=True)``.

    Options:

    * **weights** ``w_r``: a fixed per-replica sequence (e.g. examples per client), times
      the extra argument ``weight=`` of ``update`` if given (this step's weight).
    * **partial participation**: the extra argument ``participating=`` (bool) of ``update``;
      an absent replica contributes nothing to the round, its inner state and
      error-feedback memory stay as they were, and it restarts from the new anchor like
      everyone. If nobody takes part the round is skipped (anchor and outer state kept).
      ``participation="fedau"`` weights the present replicas by a running estimate of
      ``1 / p_r`` (the mean interval between participations, intervals cut at
      ``fedau_cutoff``) and divides by the number of replicas, not the number present.
    * **compression**: ``compressor`` (:func:`optlab.top_k`, ...) with ``error_feedback``
      (``"ef"``, ``"ef21"`` or ``None``) applies to the pseudo-gradients;
      :func:`optlab.bytes_on_the_wire` reads the bytes sent.
    * **clipping**: ``max_pseudo_gradient_norm`` clips each replica's ``Δ_r`` by global
      norm before averaging (an anomalous replica cannot dominate the round).
    * **streaming**: ``num_fragments`` splits the parameter leaves into contiguous
      fragments of balanced size; fragment ``p`` syncs when ``(c + p * H // P) % H == 0``,
      once per period at its own offset. ``overlap_steps = τ`` applies a sync ``τ`` inner
      steps late (communication overlapping computation), mixing
      ``θ <- α θ + (1 - α) anchor`` with ``α = overlap_mixing``.
    * **averaging** ``"one_peer"`` (NoLoCo): no all-reduce; each replica averages
      ``Δ`` with one peer (a different one every round, through ``ppermute``) and adds
      ``peer_pull * (anchor_r - mean of the two anchors)``; anchors then differ per replica.

    Under ``vmap``, :func:`optlab.replica_axes` keeps the step counter unbatched, so the
    sync is a real conditional there too (see the module docstring).

    Args:
      inner: the optimizer each replica runs between syncs. It also receives the extra
        argument ``anchor`` (used by :func:`optlab.fedprox`).
      outer: the optimizer of the anchor; it is fed the mean pseudo-gradient ``Δ`` (a
        descent direction, like a gradient) and the anchor as ``params``.
      sync_period: inner steps between syncs (``H``), an int >= 1.
      axis_name: the mapped axis over replicas (a string or tuple of strings), or ``None``
        for one replica (no communication).
      weights: per-replica weights (non-negative, positive sum), or ``None`` (equal).
      participation: ``"uniform"`` or ``"fedau"``.
      fedau_cutoff: FedAU's interval cutoff ``K`` (int >= 1).
      compressor: message compressor for the pseudo-gradients, or ``None``.
      error_feedback: ``"ef"``, ``"ef21"`` or ``None``; ignored without a compressor.
      max_pseudo_gradient_norm: clip threshold for each ``Δ_r``, or ``None``.
      num_fragments: number of fragments (int, ``1 <= P <= sync_period``).
      overlap_steps: delay ``τ`` of the merge (int, ``0 <= τ < sync_period``).
      overlap_mixing: ``α`` in ``[0, 1]``: the share of the local parameters kept at a merge.
      averaging: ``"all_reduce"`` or ``"one_peer"``.
      peer_pull: NoLoCo's pull toward the peer's anchor (>= 0), with ``"one_peer"``.
      seed: seed of random compressors.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.outer_optimizer(optax.sgd(0.1), optax.sgd(1.0), sync_period=2)
      >>> params = optlab.replicate({"w": jnp.zeros(2)}, 4)
      >>> state = jax.vmap(tx.init)(params)
      >>> grads = {"w": jnp.arange(8.0).reshape(4, 2)}  # each replica its own gradient
      >>> def step(p, s, g):
      ...     u, s = tx.update(g, s, p)
      ...     return optax.apply_updates(p, u), s
      >>> step = jax.jit(jax.vmap(step, axis_name="replica"))
      >>> for _ in range(2):
      ...     params, state = step(params, state, grads)
      >>> [round(float(v), 4) for v in params["w"][0]]  # FedAvg after a round: -0.2 * mean grad
      [-0.6, -0.8]
      >>> bool((params["w"] == params["w"][:1]).all())  # every replica restarts from the anchor
      True

    State:
      :class:`OuterOptimizerState`: the inner state, the anchor (like the params), the
      outer state per fragment, the pending anchors with overlap, the error-feedback
      memory per fragment, FedAU statistics.

    References:
      Douillard et al., `DiLoCo: Distributed Low-Communication Training of Language Models
      <https://arxiv.org/abs/2311.08105>`_, 2023; Reddi et al., `Adaptive Federated
      Optimization <https://arxiv.org/abs/2003.00295>`_, 2021; Douillard et al., `Streaming
      DiLoCo with overlapping communication <https://arxiv.org/abs/2501.18512>`_, 2025;
      Wang and Ji, `A Lightweight Method for Tackling Unknown Participation Statistics in
      Federated Averaging <https://arxiv.org/abs/2306.03401>`_, 2024; Cheng et al., `EDiT:
      A Local-SGD-Based Efficient Distributed Training Method for Large Language Models
      <https://arxiv.org/abs/2412.07210>`_, 2024
    """
    name = "outer_optimizer"
    _validate_common(name, inner, sync_period, axis_name)
    _check_transform(name, "outer", outer)
    return _outer_checked(name, inner, outer, sync_period, axis_name, _options_in(locals()))


def _outer_checked(name, inner, outer, sync_period, axis_name, options: _Options):
    """Validate the options (once, under the public name) and build."""
    o = options
    w = _check_weights(name, o.weights)
    _check_choice(name, "participation", o.participation, PARTICIPATION)
    _check_choice(name, "averaging", o.averaging, AVERAGING)
    _base.check_int(name, minimum=1, fedau_cutoff=o.fedau_cutoff, num_fragments=o.num_fragments)
    _base.check_int(name, minimum=0, overlap_steps=o.overlap_steps, seed=o.seed)
    if o.num_fragments > sync_period:
        _base._fail(name, "num_fragments", f"<= sync_period={sync_period}", o.num_fragments)
    if o.overlap_steps >= sync_period:
        _base._fail(name, "overlap_steps", f"< sync_period={sync_period}", o.overlap_steps)
    comm._check_error_feedback(name, o.error_feedback, o.compressor)
    if o.max_pseudo_gradient_norm is not None:
        _base.check_positive(name, max_pseudo_gradient_norm=o.max_pseudo_gradient_norm)
    _base.check_unit_interval(name, overlap_mixing=o.overlap_mixing)
    _base.check_nonnegative(name, peer_pull=o.peer_pull)
    if o.averaging == "one_peer" and (
        o.compressor is not None
        or w is not None
        or o.participation != "uniform"
        or o.num_fragments != 1
        or o.overlap_steps != 0
    ):
        raise ValueError(
            f"`optlab.{name}`: averaging='one_peer' (NoLoCo) supports no compressor, weights,"
            " FedAU, fragments or overlap."
        )
    return _build_outer(name, inner, outer, sync_period, axis_name, o._replace(weights=w))


def _nesterov(fn_name, outer_learning_rate, outer_momentum):
    if not callable(outer_learning_rate):  # a schedule is checked nowhere else
        _base.check_nonnegative(fn_name, outer_learning_rate=outer_learning_rate)
    _base.check_decay(fn_name, outer_momentum=outer_momentum)
    return optax.sgd(outer_learning_rate, momentum=outer_momentum, nesterov=True)


def diloco(
    inner: optax.GradientTransformation,
    outer_learning_rate: optax.ScalarOrSchedule = 0.7,
    outer_momentum: jax.typing.ArrayLike = 0.9,
    sync_period: int = 500,
    axis_name: Any = "replica",
    *,
    compressor: comm.Compressor | None = None,
    error_feedback: str | None = "ef",
    max_pseudo_gradient_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """DiLoCo: ``sync_period`` local steps of ``inner``, then an outer Nesterov step.

    :func:`optlab.outer_optimizer` with ``outer = optax.sgd(outer_learning_rate,
    momentum=outer_momentum, nesterov=True)`` on the mean pseudo-gradient. The paper's
    recipe is inner AdamW, ``outer_learning_rate=0.7``, ``outer_momentum=0.9``,
    ``sync_period`` about 500. ``outer_learning_rate`` may be a schedule (indexed by the
    number of syncs) and works with ``optax.inject_hyperparams``.

    Args:
      inner: each replica's optimizer (e.g. ``optax.adamw(...)``).
      outer_learning_rate: outer Nesterov learning rate (>= 0) or schedule.
      outer_momentum: outer Nesterov momentum, in ``[0, 1)``.
      sync_period: inner steps between syncs (int >= 1).
      axis_name: the replica axis, or ``None`` for one replica.
      compressor: optional pseudo-gradient compressor (see :func:`optlab.outer_optimizer`).
      error_feedback: ``"ef"``, ``"ef21"`` or ``None``, with a compressor.
      max_pseudo_gradient_norm: optional per-replica clip of the pseudo-gradient.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.diloco(optax.adamw(1e-2), sync_period=10)
      >>> params = optlab.replicate({"w": jnp.ones(3)}, 2)
      >>> state = jax.vmap(tx.init)(params)
      >>> step = jax.vmap(lambda g, s, p: tx.update(g, s, p), axis_name="replica")
      >>> updates, state = step(params, state, params)
      >>> updates["w"].shape
      (2, 3)

    State:
      :class:`OuterOptimizerState` (inner state, anchor, Nesterov momentum).

    References:
      Douillard et al., `DiLoCo: Distributed Low-Communication Training of Language Models
      <https://arxiv.org/abs/2311.08105>`_, 2023
    """
    name = "diloco"
    _validate_common(name, inner, sync_period, axis_name)
    outer = _nesterov(name, outer_learning_rate, outer_momentum)
    return _outer_checked(name, inner, outer, sync_period, axis_name, _options_in(locals()))


def streaming_diloco(
    inner: optax.GradientTransformation,
    outer_learning_rate: optax.ScalarOrSchedule = 0.7,
    outer_momentum: jax.typing.ArrayLike = 0.9,
    sync_period: int = 100,
    axis_name: Any = "replica",
    *,
    num_fragments: int = 4,
    overlap_steps: int = 1,
    overlap_mixing: float = 0.5,
    compressor: comm.Compressor | None = None,
    error_feedback: str | None = "ef",
) -> optax.GradientTransformationExtraArgs:
    """Streaming DiLoCo: DiLoCo synced in fragments on staggered schedules, overlapped.

    The parameter leaves are split into ``num_fragments`` contiguous fragments of balanced
    size; fragment ``p`` syncs when ``(c + p * H // P) % H == 0`` (``c`` the inner step,
    ``H = sync_period``), so each fragment is synced once per period and only ``1/P`` of
    the parameters crosses the network at a time. Each sync's result is merged
    ``overlap_steps`` inner steps later as ``θ <- α θ + (1 - α) anchor`` with
    ``α = overlap_mixing``, so the communication can overlap the next inner steps.
    Each fragment has its own outer Nesterov state.

    Args:
      inner: each replica's optimizer.
      outer_learning_rate: outer Nesterov learning rate (>= 0) or schedule.
      outer_momentum: outer Nesterov momentum, in ``[0, 1)``.
      sync_period: inner steps between two syncs of the same fragment (int >= P).
      axis_name: the replica axis, or ``None``.
      num_fragments: number of fragments ``P``.
      overlap_steps: merge delay ``τ`` (int, ``0 <= τ < H``).
      overlap_mixing: ``α`` in ``[0, 1]``.
      compressor: optional pseudo-gradient compressor.
      error_feedback: ``"ef"``, ``"ef21"`` or ``None``, with a compressor.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.streaming_diloco(optax.adamw(1e-2), sync_period=8, num_fragments=2,
      ...                              axis_name=None)
      >>> state = tx.init({"a": jnp.ones(3), "b": jnp.ones(3)})
      >>> len(state.outer_state)  # one outer state per fragment
      2

    State:
      :class:`OuterOptimizerState` with one outer state and one message stream per
      fragment, and the pending anchors.

    References:
      Douillard et al., `Streaming DiLoCo with overlapping communication: Towards a
      Distributed Free Lunch <https://arxiv.org/abs/2501.18512>`_, 2025
    """
    name = "streaming_diloco"
    _validate_common(name, inner, sync_period, axis_name)
    outer = _nesterov(name, outer_learning_rate, outer_momentum)
    return _outer_checked(name, inner, outer, sync_period, axis_name, _options_in(locals()))


def fedavg(
    inner: optax.GradientTransformation,
    sync_period: int = 1,
    axis_name: Any = "replica",
    *,
    weights: Sequence[float] | None = None,
    participation: str = "uniform",
    fedau_cutoff: int = 50,
    compressor: comm.Compressor | None = None,
    error_feedback: str | None = "ef",
) -> optax.GradientTransformationExtraArgs:
    """FedAvg: local steps, then every replica restarts from the (weighted) mean.

    :func:`optlab.outer_optimizer` with outer SGD at learning rate 1, so the synced
    parameters are ``Σ_r w_r θ_r / Σ_r w_r``. Weight clients by their number of examples
    with ``weights=`` (fixed) or the extra argument ``weight=``; partial participation
    with the extra argument ``participating=``, and ``participation="fedau"`` for FedAU's
    participation-aware weights.

    Args:
      inner: each replica's (client's) optimizer.
      sync_period: local steps per round (int >= 1).
      axis_name: the replica axis, or ``None``.
      weights: per-replica weights or ``None``.
      participation: ``"uniform"`` or ``"fedau"``.
      fedau_cutoff: FedAU's interval cutoff.
      compressor: optional compressor of the client updates.
      error_feedback: ``"ef"``, ``"ef21"`` or ``None``, with a compressor.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.fedavg(optax.sgd(1.0), sync_period=1, weights=[3.0, 1.0])
      >>> params = optlab.replicate({"w": jnp.array(0.0)}, 2)  # same start on every client
      >>> state = jax.vmap(tx.init)(params)
      >>> grads = optlab.stack_replicas([{"w": jnp.array(-1.0)}, {"w": jnp.array(-5.0)}])
      >>> step = jax.vmap(lambda g, s, p: tx.update(g, s, p), axis_name="replica")
      >>> updates, state = step(grads, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()  # (3 * 1 + 1 * 5) / 4
      [2.0, 2.0]

    State:
      :class:`OuterOptimizerState`.

    References:
      McMahan et al., `Communication-Efficient Learning of Deep Networks from
      Decentralized Data <https://arxiv.org/abs/1602.05629>`_, 2017; Wang and Ji, `A
      Lightweight Method for Tackling Unknown Participation Statistics in Federated
      Averaging <https://arxiv.org/abs/2306.03401>`_, 2024
    """
    name = "fedavg"
    _validate_common(name, inner, sync_period, axis_name)
    outer = optax.sgd(1.0)
    return _outer_checked(name, inner, outer, sync_period, axis_name, _options_in(locals()))


def fedopt(
    inner: optax.GradientTransformation,
    outer: optax.GradientTransformation | None = None,
    sync_period: int = 1,
    axis_name: Any = "replica",
    *,
    weights: Sequence[float] | None = None,
    participation: str = "uniform",
    max_pseudo_gradient_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """FedOpt: an adaptive outer step (FedAdam, FedYogi, FedAdagrad) on the mean update.

    :func:`optlab.outer_optimizer` with the given ``outer``: ``optax.adam(lr, eps=τ)``
    gives FedAdam, ``optax.yogi(lr, eps=τ)`` FedYogi, ``optax.adagrad(lr, eps=τ)``
    FedAdagrad (``τ`` the adaptivity constant, ``1e-3`` in the paper). The default is
    FedAdam with ``lr=1e-2, b1=0.9, b2=0.99, eps=1e-3``. optax's Adam corrects the
    moment bias, the paper's does not.

    Args:
      inner: each client's optimizer.
      outer: the server optimizer, or ``None`` for the FedAdam default.
      sync_period: local steps per round (int >= 1).
      axis_name: the replica axis, or ``None``.
      weights: per-replica weights or ``None``.
      participation: ``"uniform"`` or ``"fedau"``.
      max_pseudo_gradient_norm: optional per-client clip of the update.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.fedopt(optax.sgd(0.1), optax.yogi(1e-2, eps=1e-3), sync_period=5,
      ...                    axis_name=None)
      >>> state = tx.init({"w": jnp.zeros(2)})

    State:
      :class:`OuterOptimizerState` (the outer optimizer's moments in ``outer_state``).

    References:
      Reddi et al., `Adaptive Federated Optimization <https://arxiv.org/abs/2003.00295>`_,
      2021
    """
    name = "fedopt"
    _validate_common(name, inner, sync_period, axis_name)
    if outer is None:
        outer = optax.adam(1e-2, b1=0.9, b2=0.99, eps=1e-3)
    _check_transform(name, "outer", outer)
    return _outer_checked(name, inner, outer, sync_period, axis_name, _options_in(locals()))


def noloco(
    inner: optax.GradientTransformation,
    outer_learning_rate: optax.ScalarOrSchedule = 0.7,
    outer_momentum: jax.typing.ArrayLike = 0.9,
    sync_period: int = 50,
    axis_name: Any = "replica",
    *,
    peer_pull: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
    """NoLoCo: DiLoCo without all-reduce; each round averages with one peer.

    At a sync replica ``r`` receives ``Δ_q`` and ``anchor_q`` from one peer
    ``q = r - s mod R`` (``s`` cycles through ``1 .. R-1`` from round to round, so the
    collective is one ``ppermute``) and steps its own anchor with Nesterov SGD on
    ``(Δ_r + Δ_q) / 2 + peer_pull * (anchor_r - (anchor_r + anchor_q) / 2)``. Anchors
    and outer momenta are per replica and drift together through the pairwise mixing;
    the paper's ``γ`` is ``outer_learning_rate * peer_pull``.

    Args:
      inner: each replica's optimizer.
      outer_learning_rate: outer Nesterov learning rate (>= 0) or schedule.
      outer_momentum: outer Nesterov momentum, in ``[0, 1)``.
      sync_period: inner steps between syncs (int >= 1).
      axis_name: the replica axis, or ``None``.
      peer_pull: weight of the pull toward the peer's anchor (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> tx = optlab.noloco(optax.adamw(1e-3), sync_period=20, axis_name=None)
      >>> state = tx.init({"w": jnp.zeros(2)})

    State:
      :class:`OuterOptimizerState` with per-replica anchor and outer momentum.

    References:
      Kolehmainen et al., `NoLoCo: No-all-reduce Low Communication Training Method for
      Large Models <https://arxiv.org/abs/2506.10911>`_, 2025
    """
    name = "noloco"
    _validate_common(name, inner, sync_period, axis_name)
    outer = _nesterov(name, outer_learning_rate, outer_momentum)
    options = _options_in(locals(), averaging="one_peer")
    return _outer_checked(name, inner, outer, sync_period, axis_name, options)


# ---------------------------------------------------------------------------
# FedProx and gossip
# ---------------------------------------------------------------------------


def fedprox(mu: jax.typing.ArrayLike = 0.01) -> optax.GradientTransformationExtraArgs:
    """FedProx's proximal term: adds ``mu * (θ - anchor)`` to the gradient.

    Put it first in the ``inner`` chain of an outer optimizer, which passes the extra
    argument ``anchor`` (the parameters of the last sync) to its inner optimizer. With
    ``mu = 0`` it is the identity.

    Args:
      mu: proximal strength (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` and the extra
      argument ``anchor``.

    Example:
      >>> import jax.numpy as jnp, optax, optlab
      >>> inner = optax.chain(optlab.fedprox(0.1), optax.sgd(0.05))
      >>> tx = optlab.fedavg(inner, sync_period=10, axis_name=None)
      >>> params = {"w": jnp.ones(2)}
      >>> updates, state = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)

    State:
      ``optax.EmptyState``.

    References:
      Li et al., `Federated Optimization in Heterogeneous Networks
      <https://arxiv.org/abs/1812.06127>`_, 2020
    """
    _base.check_nonnegative("fedprox", mu=mu)

    def init_fn(params):
        _base.check_float_tree("fedprox", params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, anchor=None, **extra_args):
        del extra_args
        _base.require_params(params)
        _base.require_extra_arg(
            "fedprox",
            "anchor",
            anchor,
            "the parameters of the last sync; use fedprox inside the `inner` optimizer of"
            " optlab.outer_optimizer / fedavg / diloco, which passes it.",
        )
        new = jax.tree.map(
            lambda g, p, a: (g + mu * (p.astype(jnp.float32) - a.astype(jnp.float32))).astype(
                g.dtype
            ),
            updates,
            params,
            anchor,
        )
        return new, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _ring_neighbours(x, axis_name, n):
    left = jax.lax.ppermute(x, axis_name, [(i, (i + 1) % n) for i in range(n)])
    right = jax.lax.ppermute(x, axis_name, [(i, (i - 1) % n) for i in range(n)])
    return left, right


def gossip(
    inner: optax.GradientTransformation,
    sync_period: int = 1,
    axis_name: Any = "replica",
    *,
    topology: str = "ring",
) -> optax.GradientTransformationExtraArgs:
    """Decentralized averaging: every ``sync_period`` steps, average with the neighbours.

    Each replica runs ``inner``; on a gossip step it replaces its parameters by the mean
    of its own and its neighbours' (``ring``: ``(θ_{r-1} + θ_r + θ_{r+1}) / 3`` over
    ``axis_name``; ``torus`` with ``axis_name=(a, b)``: the mean with the 4 neighbours on
    the 2-D grid), exchanged with ``jax.lax.ppermute``. The mixing matrix is doubly
    stochastic, so a gossip step keeps the replica mean.

    Args:
      inner: each replica's optimizer.
      sync_period: steps between gossip steps (int >= 1).
      axis_name: the replica axis (``ring``), a pair of axes (``torus``), or ``None``.
      topology: ``"ring"`` or ``"torus"``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.gossip(optax.sgd(0.0))
      >>> params = {"w": jnp.array([0.0, 3.0, 6.0, 9.0])}  # 4 replicas on a ring
      >>> state = jax.vmap(tx.init)(params)
      >>> step = jax.vmap(lambda g, s, p: tx.update(g, s, p), axis_name="replica")
      >>> updates, _ = step(params, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [4.0, 3.0, 6.0, 5.0]

    State:
      :class:`GossipState` (step count, inner state, message counters).

    References:
      Farhadkhani et al., `Robust Collaborative Learning with Linear Gradient Overhead
      <https://arxiv.org/abs/2209.10931>`_ (MoNNA), 2023
    """
    name = "gossip"
    _validate_common(name, inner, sync_period, axis_name)
    _check_choice(name, "topology", topology, ("ring", "torus"))
    if topology == "torus" and not (isinstance(axis_name, tuple) and len(axis_name) == 2):
        raise ValueError(
            f"`optlab.{name}`: topology='torus' needs axis_name=(row_axis, column_axis), got"
            f" axis_name={axis_name!r}."
        )
    inner = optax.with_extra_args_support(inner)
    axes = () if axis_name is None else (axis_name,) if topology == "ring" else axis_name

    def mix(leaves):
        out = []
        for x in leaves:
            total, k = x.astype(jnp.float32), 1
            for a in axes:
                n = jax.lax.axis_size(a)
                left, right = _ring_neighbours(x, a, n)
                total, k = total + left + right, k + 2
            out.append((total / k).astype(x.dtype))
        return out

    def init_fn(params):
        _base.check_float_tree(name, params)
        return GossipState(
            count=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
            communication=comm.init_compression(params, None, None),
        )

    def update_fn(updates, state, params=None, **extra_args):
        _base.require_params(params)
        for a in axes:
            comm.check_axis_bound(name, a)
        _base.check_same_structure(name, updates, params, "updates", "params")
        u, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        p_leaves, treedef = jax.tree.flatten(params)
        u_leaves = jax.tree.leaves(u)
        count = state.count + 1

        def do_gossip(u_leaves):
            local = [(p + d).astype(p.dtype) for p, d in zip(p_leaves, u_leaves)]
            return [(m - p).astype(p.dtype) for m, p in zip(mix(local), p_leaves)]

        out = jax.lax.cond(count % sync_period == 0, do_gossip, lambda v: list(v), u_leaves)
        sent = comm.message_bytes(None, params) * 2 * len(axes)
        is_gossip = (count % sync_period == 0) & (len(axes) > 0)
        c = state.communication
        c = c._replace(
            sends=c.sends + is_gossip.astype(jnp.int32),
            bytes_sent=c.bytes_sent + jnp.where(is_gossip, float(sent), 0.0),
        )
        return jax.tree.unflatten(treedef, out), GossipState(count, inner_state, c)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Helpers for running replicas
# ---------------------------------------------------------------------------


_COUNTED = (OuterOptimizerState, GossipState)


def replica_axes(state: Any) -> Any:
    """``vmap`` axes for an optimizer state: ``0`` everywhere but the sync step counters.

    Pass it as ``in_axes``/``out_axes`` for the state so that the counters that choose the
    sync branch stay unbatched: the sync is then a real conditional under ``vmap`` too,
    as on devices (a batched predicate turns ``lax.cond`` into ``select``).

    Args:
      state: one replica's optimizer state (from ``tx.init(params)``).

    Returns:
      A tree prefix of ``state`` with ``None`` at every ``count`` of an outer optimizer or
      gossip state and ``0`` elsewhere.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> tx = optlab.diloco(optax.sgd(0.1), sync_period=2)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> axes = optlab.replica_axes(state)
      >>> axes.count is None, axes.anchor
      (True, 0)
    """

    def axes(node):
        if isinstance(node, _COUNTED):
            return type(node)(None, *([0] * (len(node) - 1)))
        return 0

    return jax.tree.map(axes, state, is_leaf=lambda x: isinstance(x, _COUNTED))


def replicate(tree: Any, num_replicas: int, axes: Any = 0) -> Any:
    """Stacks ``num_replicas`` copies of ``tree`` along a new leading axis.

    Leaves whose entry in ``axes`` (a prefix of ``tree``, e.g. :func:`replica_axes`) is
    ``None`` are left as they are.

    Args:
      tree: a pytree of arrays (params or an optimizer state).
      num_replicas: number of copies (int >= 1).
      axes: ``0`` or a tree prefix of ``0``/``None``.

    Returns:
      The stacked tree.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> optlab.replicate({"w": jnp.ones(2)}, 3)["w"].shape
      (3, 2)
    """
    _base.check_int("replicate", minimum=1, num_replicas=num_replicas)

    def bcast(ax, sub):
        if ax is None:
            return sub
        return jax.tree.map(
            lambda x: jnp.broadcast_to(jnp.asarray(x), (num_replicas, *jnp.shape(x))), sub
        )

    return jax.tree.map(bcast, axes, tree, is_leaf=lambda x: x is None)


def stack_replicas(trees: Sequence[Any]) -> Any:
    """Stacks the replicas' own trees along a new leading axis (for ``vmap``).

    Args:
      trees: one pytree per replica; all must have the same structure, shapes and dtypes.

    Returns:
      The stacked tree.

    Raises:
      ValueError: naming the first replica whose tree differs from replica 0's.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> optlab.stack_replicas([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].tolist()
      [[0.0, 0.0], [1.0, 1.0]]
    """
    trees = list(trees)
    if not trees:
        raise ValueError("`optlab.stack_replicas`: `trees` is empty; pass one tree per replica.")
    ref = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), trees[0])
    ref_def = jax.tree.structure(trees[0])
    for i, t in enumerate(trees[1:], start=1):
        if (
            jax.tree.structure(t) != ref_def
            or jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), t) != ref
        ):
            raise ValueError(
                f"`optlab.stack_replicas`: replica {i}'s tree differs from replica 0's (every"
                f" replica must hold the same tree structure, shapes and dtypes): got"
                f" {jax.tree.map(lambda x: (jnp.shape(x), str(jnp.result_type(x))), t)} vs"
                f" {jax.tree.map(lambda x: (jnp.shape(x), str(jnp.result_type(x))), trees[0])}."
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _fingerprint(tree: Any) -> np.ndarray:
    import hashlib

    spec = str(jax.tree.structure(tree)) + str(
        [(tuple(jnp.shape(x)), str(jnp.result_type(x))) for x in jax.tree.leaves(tree)]
    )
    digest = hashlib.sha256(spec.encode()).digest()[:8]
    return np.frombuffer(digest, dtype=np.uint32).copy()


def check_replica_trees(tree: Any) -> None:
    """Checks that every process holds the same tree structure, shapes and dtypes.

    Call it once before training in a multi-process (multi-host) job: processes whose
    parameter trees differ would otherwise issue mismatched collectives at the first sync
    (a hang or an opaque runtime error). Compares a hash of the structure across
    processes (``jax.experimental.multihost_utils``); a no-op in a single process.

    Args:
      tree: this process's params (or any pytree of arrays / shape-dtype structs).

    Raises:
      ValueError: if the processes disagree.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> optlab.check_replica_trees({"w": jnp.zeros(3)})  # one process: nothing to compare
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = _fingerprint(tree)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i in range(everyone.shape[0]) if not np.array_equal(everyone[i], everyone[0])]
    if differ:
        raise ValueError(
            f"`optlab.check_replica_trees`: the parameter trees differ across processes"
            f" (process(es) {differ} differ from process 0; this is process"
            f" {jax.process_index()} with tree"
            f" {jax.tree.map(lambda x: (jnp.shape(x), str(jnp.result_type(x))), tree)})."
        )
