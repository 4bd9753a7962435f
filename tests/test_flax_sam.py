"""SAM with Flax models that have BatchNorm and Dropout (issue 14, items 1 and 2).

* NNX: :func:`optlab.nnx_grad_fn` builds ``grad_fn`` inside ``nnx.jit``. The running
  BatchNorm statistics must be updated once per step, by the unperturbed pass, and the
  perturbed pass must draw fresh dropout masks at every step (not frozen, not the
  unperturbed pass's).
* Linen: :func:`optlab.apply_gradients` forwards ``grad_fn`` to ``tx.update`` from a
  ``TrainState`` subclass with ``batch_stats``; the statistics of the perturbed pass are
  dropped.

Both recipes are the README's.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab

pytest.importorskip("flax")
import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402

IN, HIDDEN, N = 4, 8, 32
X = jax.random.normal(jax.random.key(1), (N, IN))
Y = jnp.sin(X @ jnp.array([1.0, -0.5, 0.25, 2.0]))[:, None]


def _stats_of(h, old_mean, old_var, momentum):
    """BatchNorm's running-statistics update for a batch of pre-activations ``h``."""
    mean, var = h.mean(0), h.var(0)
    return momentum * old_mean + (1 - momentum) * mean, momentum * old_var + (1 - momentum) * var


# ---------------------------------------------------------------------------
# NNX
# ---------------------------------------------------------------------------


class Net(nnx.Module):
    def __init__(self, rate: float, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(IN, HIDDEN, rngs=rngs)
        self.bn = nnx.BatchNorm(HIDDEN, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def mse(model):
    return jnp.mean((model(X) - Y) ** 2)


@nnx.jit(static_argnames="sam")
def nnx_step(model, optimizer, sam=True):
    grad_fn = optlab.nnx_grad_fn(model, mse) if sam else None
    loss, grads = nnx.value_and_grad(mse)(model)
    optimizer.update(model, grads, **({"grad_fn": grad_fn} if sam else {}))
    return loss


def _eval_loss(model):
    model.eval()
    loss = float(mse(model))
    model.train()
    return loss


def test_nnx_sam_with_batchnorm_and_dropout_under_jit():
    model = Net(0.3, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optlab.sam(optax.adam(3e-2), rho=0.05), wrt=nnx.Param)
    initial = _eval_loss(model)
    for _ in range(3):  # running statistics: one update per step, at the unperturbed point
        h = model.l1(X)  # pre-activations at the current (unperturbed) parameters
        want = _stats_of(h, model.bn.mean[...], model.bn.var[...], 0.9)
        nnx_step(model, optimizer)
        np.testing.assert_allclose(model.bn.mean[...], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.bn.var[...], want[1], rtol=1e-5, atol=1e-6)
    for _ in range(40):
        nnx_step(model, optimizer)
    assert _eval_loss(model) < 0.5 * initial


def test_nnx_sam_rho0_equals_the_base_optimizer_statistics_included():
    """Without dropout and with rho = 0 the perturbed pass is the unperturbed one: SAM must
    then give the base optimizer's parameters *and* running statistics."""
    sam_model, base_model = Net(0.0, nnx.Rngs(0)), Net(0.0, nnx.Rngs(0))
    sam_opt = nnx.Optimizer(sam_model, optlab.sam(optax.adam(3e-2), rho=0.0), wrt=nnx.Param)
    base_opt = nnx.Optimizer(base_model, optax.adam(3e-2), wrt=nnx.Param)
    for _ in range(4):
        nnx_step(sam_model, sam_opt)
        nnx_step(base_model, base_opt, sam=False)
    chex.assert_trees_all_close(
        nnx.to_pure_dict(nnx.state(sam_model, nnx.Param)),
        nnx.to_pure_dict(nnx.state(base_model, nnx.Param)),
        rtol=1e-6,
        atol=1e-7,
    )
    chex.assert_trees_all_close(
        nnx.to_pure_dict(nnx.state(sam_model, nnx.BatchStat)),
        nnx.to_pure_dict(nnx.state(base_model, nnx.BatchStat)),
        rtol=1e-6,
        atol=1e-7,
    )


@nnx.jit
def _probe(model):
    """Inside one jitted step: two grad_fns and the unperturbed gradient, at the same point."""
    params = nnx.state(model, nnx.Param)
    first = optlab.nnx_grad_fn(model, mse)
    second = optlab.nnx_grad_fn(model, mse)
    return first(params), first(params), second(params), nnx.grad(mse)(model)


def _differ(a, b):
    return not np.allclose(np.asarray(a["l1"]["kernel"]), np.asarray(b["l1"]["kernel"]))


def test_nnx_grad_fn_dropout_masks_are_fresh_and_deterministic_within_a_step():
    model = Net(0.5, nnx.Rngs(0))
    a, a_again, b, unperturbed = (nnx.to_pure_dict(t) for t in _probe(model))
    chex.assert_trees_all_equal(a, a_again)  # one grad_fn: the same masks at every call
    assert _differ(a, b)  # each grad_fn (each step) draws new masks ...
    assert _differ(a, unperturbed)  # ... independent of the unperturbed pass's
    a_next = nnx.to_pure_dict(_probe(model)[0])
    assert _differ(a, a_next)  # not frozen across jitted steps
    # In eval mode (no dropout, running statistics) it is the plain gradient.
    model.eval()
    a, _, b, unperturbed = (nnx.to_pure_dict(t) for t in _probe(model))
    chex.assert_trees_all_close(a, unperturbed, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(b, unperturbed, rtol=1e-6, atol=1e-7)


def test_nnx_grad_fn_rejects_a_non_module():
    with pytest.raises(TypeError, match="nnx_grad_fn.*model"):
        optlab.nnx_grad_fn({"w": jnp.ones(2)}, mse)


# ---------------------------------------------------------------------------
# Linen
# ---------------------------------------------------------------------------


class LinenNet(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(HIDDEN)(x))
        h = nn.Dropout(self.rate, deterministic=not train)(nn.relu(h))
        return nn.Dense(1)(h)


class TrainState(train_state.TrainState):
    batch_stats: Any


def linen_state(tx, rate):
    module = LinenNet(rate)
    variables = module.init(jax.random.key(0), X, train=False)
    return TrainState.create(
        apply_fn=module.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables["batch_stats"],
    )


@jax.jit
def linen_sam_step(state, key):
    def loss_fn(params, key):
        variables = {"params": params, "batch_stats": state.batch_stats}
        out, updates = state.apply_fn(
            variables, X, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        return jnp.mean((out - Y) ** 2), updates["batch_stats"]

    key, perturbed_key = jax.random.split(jax.random.fold_in(key, state.step))
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key)
    grad_fn = lambda p: jax.grad(loss_fn, has_aux=True)(p, perturbed_key)[0]  # noqa: E731
    state = optlab.apply_gradients(state, grads, grad_fn=grad_fn)
    return state.replace(batch_stats=batch_stats), loss


@jax.jit
def linen_plain_step(state, key):  # flax's own apply_gradients, no dropout (rate 0)
    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        out, updates = state.apply_fn(variables, X, train=True, mutable=["batch_stats"])
        return jnp.mean((out - Y) ** 2), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), loss


def _linen_eval_loss(state):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return float(jnp.mean((state.apply_fn(variables, X, train=False) - Y) ** 2))


def test_linen_sam_with_batchnorm_and_dropout():
    state = linen_state(optlab.sam(optax.adam(3e-2), rho=0.05), rate=0.3)
    key = jax.random.key(7)
    initial = _linen_eval_loss(state)
    for _ in range(3):  # running statistics: one update per step, at the unperturbed point
        h = nn.Dense(HIDDEN).apply({"params": state.params["Dense_0"]}, X)
        stats = state.batch_stats["BatchNorm_0"]
        want = _stats_of(h, stats["mean"], stats["var"], 0.9)
        state, _ = linen_sam_step(state, key)
        np.testing.assert_allclose(
            state.batch_stats["BatchNorm_0"]["mean"], want[0], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            state.batch_stats["BatchNorm_0"]["var"], want[1], rtol=1e-5, atol=1e-6
        )
    for _ in range(40):
        state, _ = linen_sam_step(state, key)
    assert int(state.step) == 43
    assert _linen_eval_loss(state) < 0.7 * initial  # 0.51 -> 0.31 (dropout 0.3)


def test_linen_sam_rho0_equals_flax_apply_gradients():
    sam = linen_state(optlab.sam(optax.adam(3e-2), rho=0.0), rate=0.0)
    base = linen_state(optax.adam(3e-2), rate=0.0)
    key = jax.random.key(0)
    for _ in range(4):
        sam, _ = linen_sam_step(sam, key)
        base, _ = linen_plain_step(base, key)
    chex.assert_trees_all_close(sam.params, base.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(sam.batch_stats, base.batch_stats, rtol=1e-6, atol=1e-7)
    assert int(sam.step) == int(base.step) == 4


def test_apply_gradients_needs_grad_fn_for_sam():
    state = linen_state(optlab.sam(optax.sgd(0.1)), rate=0.0)
    grads = jax.tree.map(jnp.ones_like, state.params)
    with pytest.raises(ValueError, match="sam.*grad_fn"):
        optlab.apply_gradients(state, grads)
    plain = optlab.apply_gradients(linen_state(optax.sgd(0.1), rate=0.0), grads)
    assert int(plain.step) == 1
