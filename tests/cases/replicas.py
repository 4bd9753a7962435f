"""Cases for optlab/_replicas.py and optlab/_communication.py.

The shared suites call ``tx.update`` with no mapped axis, so every case runs with
``axis_name=None``: one replica, no communication (a valid configuration: the outer step
acts on the replica's own pseudo-gradient). Syncs happen within the suites' 3-4 steps
(``sync_period=2``). Inner optimizers are plain SGD and compressors deterministic to keep
compile times low (each case is compiled by several suites). The multi-replica behaviour
(vmap, shard_map, pmap, two processes) is tested in tests/test_replicas.py and
tests/test_replicas_multidevice.py.
"""

import optax

import optlab
from helpers import Case, register_not_transform

register_not_transform(
    "top_k",
    "random_k",
    "scaled_sign",
    "stochastic_quantization",
    "bytes_on_the_wire",
    "replica_axes",
    "replicate",
    "stack_replicas",
    "check_replica_trees",
)


def _nesterov():
    return optax.sgd(0.7, momentum=0.9, nesterov=True)


def _outer(max_pseudo_gradient_norm=1.0):
    return optlab.outer_optimizer(
        optax.adam(1e-2),
        _nesterov(),
        sync_period=2,
        axis_name=None,
        max_pseudo_gradient_norm=max_pseudo_gradient_norm,
    )


def _diloco(outer_learning_rate=0.7, outer_momentum=0.9):
    return optlab.diloco(
        optax.sgd(0.1), outer_learning_rate, outer_momentum, sync_period=2, axis_name=None
    )


def _streaming(outer_learning_rate=0.7, outer_momentum=0.9, overlap_mixing=0.5):
    return optlab.streaming_diloco(
        optax.sgd(0.1),
        outer_learning_rate,
        outer_momentum,
        sync_period=2,
        axis_name=None,
        num_fragments=2,
        overlap_steps=1,
        overlap_mixing=overlap_mixing,
        compressor=optlab.top_k(0.5),
        error_feedback="ef",
    )


def _noloco(outer_learning_rate=0.7, outer_momentum=0.9, peer_pull=0.5):
    return optlab.noloco(
        optax.sgd(0.1),
        outer_learning_rate,
        outer_momentum,
        sync_period=2,
        axis_name=None,
        peer_pull=peer_pull,
    )


def _fedprox(mu=0.01):
    inner = optax.chain(optlab.fedprox(mu), optax.sgd(0.1))
    return optlab.outer_optimizer(inner, optax.sgd(1.0), sync_period=2, axis_name=None)


CASES = [
    Case("outer_optimizer", factory=_outer),
    Case("diloco", factory=_diloco),
    Case("streaming_diloco", factory=_streaming),
    Case(
        "fedavg",
        factory=lambda: optlab.fedavg(
            optax.sgd(0.1),
            sync_period=2,
            axis_name=None,
            participation="fedau",
            compressor=optlab.top_k(0.5),
            error_feedback="ef21",
        ),
        inject=False,
    ),
    Case(
        "fedopt",
        factory=lambda: optlab.fedopt(
            optax.sgd(0.1), optax.yogi(1e-2, eps=1e-3), sync_period=2, axis_name=None
        ),
        inject=False,
    ),
    Case("noloco", factory=_noloco),
    Case("fedprox", factory=_fedprox),
    Case(
        "gossip",
        factory=lambda: optlab.gossip(optax.sgd(0.1), sync_period=2, axis_name=None),
        inject=False,
    ),
    Case(
        "compressed_all_reduce",
        factory=lambda: optlab.compressed_all_reduce(None, optlab.scaled_sign(), "ef"),
        inject=False,
    ),
]
