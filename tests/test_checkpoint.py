"""Every registered Case: the optimizer state survives a checkpoint, and training resumes
bit-identically.

For each Case: 2 jitted steps, save ``{"params", "opt_state"}``, restore into the state of a
freshly built optimizer (the restore target), 2 more steps; the result must equal 4 steps in
a row bit for bit (``chex.assert_trees_all_equal``), PRNG keys held in the state included.

Both formats are checked for every Case (each costs ~0.1 s):

* ``flax.serialization.to_bytes`` / ``from_bytes``: msgpack cannot hold typed PRNG key
  arrays (``jax.random.key``), so they are written as ``jax.random.key_data`` and turned
  back into keys with ``jax.random.wrap_key_data(data, impl=...)`` using the target's
  key implementation (:func:`keys_to_data` / :func:`data_to_keys`).
* ``orbax.checkpoint.StandardCheckpointer``: saves and restores typed keys as they are.

A restored leaf is a plain (strongly typed) array, so a state leaf that was weakly typed
(``jnp.asarray(0.5)``) changes type on restore: jit retraces and, next to bfloat16 values,
dtype promotion changes. The test therefore also requires no weakly typed state leaf.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import optlab
from helpers import Case, all_cases, fixed_params, make_grads, shapes_and_dtypes, step_extra_args

serialization = pytest.importorskip("flax.serialization")
ocp = pytest.importorskip("orbax.checkpoint")

CASES = all_cases()
IDS = [c.test_id for c in CASES]
N_STEPS = 4
RESUME_AT = 2


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
    """Typed PRNG key leaves -> their raw uint32 data (what msgpack can store)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def data_to_keys(tree, like):
    """Inverse of :func:`keys_to_data`, with the key implementation of ``like``."""
    return jax.tree.map(
        lambda x, ref: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x
        ),
        tree,
        like,
    )


def _comparable(tree):
    return keys_to_data(jax.tree.map(jnp.asarray, tree))


def _setup(case):
    tx = case.build()
    params = fixed_params(case.tree)
    grads = [make_grads(case, params, seed=10 + i) for i in range(N_STEPS)]

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, **step_extra_args(case, params))
        return optax.apply_updates(params, updates), state

    return tx, params, grads, step


def _train(step, params, state, grads):
    # orbax restores arrays committed to a device; commit every run's inputs the same way so
    # that the jitted step compiles once per case (an uncommitted input would recompile it).
    params, state = jax.device_put((params, state), jax.devices()[0])
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _assert_no_weak_types(case, state, label):
    weak = [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_leaves_with_path(state)
        if getattr(x, "weak_type", False)
    ]
    assert not weak, (
        f"{case.test_id}: weakly typed state leaves ({label}): {weak}. A checkpoint restores"
        " them strongly typed (jit retraces, dtype promotion changes): create them with an"
        " explicit dtype, e.g. `jnp.asarray(x, jnp.float32)`."
    )


def _assert_resumes_identically(straight, restored, step, grads, target):
    chex.assert_trees_all_equal_structs(restored, target)
    assert shapes_and_dtypes(keys_to_data(restored)) == shapes_and_dtypes(keys_to_data(target))
    resumed = _train(step, restored["params"], restored["opt_state"], grads[RESUME_AT:])
    chex.assert_trees_all_equal(_comparable(resumed), _comparable(straight))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_resume_after_checkpoint_is_bit_identical(case, tmp_path):
    _check_resume(case, tmp_path)


def test_typed_prng_key_in_state_resumes_bit_identically(tmp_path):
    """The library's states hold raw uint32 keys today; a typed ``jax.random.key`` works too."""
    case = Case(
        "skip_nonfinite",
        factory=lambda: optlab.skip_nonfinite(optax.add_noise(0.1, 0.55, key=jax.random.key(3))),
    )
    state = case.build().init(fixed_params())
    assert any(_is_key(x) for x in jax.tree.leaves(state))
    _check_resume(case, tmp_path)


def _check_resume(case, tmp_path):
    tx, params0, grads, step = _setup(case)
    state0 = tx.init(params0)
    straight = _train(step, params0, state0, grads)
    _assert_no_weak_types(case, state0, "init")
    _assert_no_weak_types(case, straight[1], "after the update")
    p, s = _train(step, params0, tx.init(params0), grads[:RESUME_AT])
    checkpoint = {"params": p, "opt_state": s}
    # The restore target: what a restarted program has before loading.
    target = {"params": params0, "opt_state": case.build().init(params0)}

    # flax.serialization (msgpack); typed keys travel as key data.
    blob = serialization.to_bytes(keys_to_data(checkpoint))
    restored = data_to_keys(serialization.from_bytes(keys_to_data(target), blob), target)
    _assert_resumes_identically(straight, restored, step, grads, target)

    # orbax-checkpoint.
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", checkpoint)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "ckpt", target)
    _assert_resumes_identically(straight, restored, step, grads, target)
