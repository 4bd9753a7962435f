"""End-to-end training with Flax, NNX and Linen, for the main kinds of optimizer.

A small MLP regresses a smooth target. For each API (``nnx.Optimizer`` and Linen's
``flax.training.train_state.TrainState``) and each kind of optimizer the loss must fall:

* a named optimizer, :func:`optlab.adamw`;
* SAM, :func:`optlab.sam` around ``optlab.adamw``, which needs the keyword extra argument
  ``grad_fn``;
* SWA (:func:`optlab.swa` + :func:`optlab.averaged_params`) and EMA of the parameters
  (:func:`optlab.ema_params`), whose averaged weights are loaded back into a model.

The idioms, also useful as documentation:

* **NNX + grad_fn.** ``optimizer.update(model, grads, **kw)`` calls
  ``tx.update(grads, opt_state, params, **kw)`` with ``params`` the *pure*
  ``nnx.State`` of the ``wrt`` variables (plain arrays, no ``Variable`` wrappers). So
  ``grad_fn`` maps such a state to its gradient, a state of the same structure:
  :func:`optlab.nnx_grad_fn` builds it (models with BatchNorm and Dropout: see
  ``tests/test_flax_sam.py``).
* **Linen + grad_fn.** ``TrainState.apply_gradients`` does not forward keyword
  arguments to ``tx.update`` (they are dataclass fields to replace), so
  :func:`optlab.apply_gradients` does the step with them.
* **Averaged weights.** NNX: ``nnx.update(model, optlab.averaged_params(optimizer))``;
  Linen: ``state.apply_fn({"params": optlab.averaged_params(state.opt_state)}, x)``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optlab

pytest.importorskip("flax")
import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402

IN, HIDDEN, N = 4, 16, 64
STEPS = 60
LR = 1e-2
DECREASE = 0.5  # the loss must at least halve in STEPS steps (it falls to ~0.3x)


def _data():
    x = jax.random.normal(jax.random.key(1), (N, IN))
    y = jnp.sin(x @ jnp.array([1.0, -0.5, 0.25, 2.0]))[:, None]
    return x, y


# ---------------------------------------------------------------------------
# NNX
# ---------------------------------------------------------------------------


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(IN, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.tanh(self.l1(x)))


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit(static_argnames="use_grad_fn")
def nnx_train_step(model, optimizer, x, y, use_grad_fn=False):
    loss, grads = nnx.value_and_grad(mse)(model, x, y)
    extra = {"grad_fn": optlab.nnx_grad_fn(model, lambda m: mse(m, x, y))} if use_grad_fn else {}
    optimizer.update(model, grads, **extra)
    return loss


def nnx_train(tx, use_grad_fn=False, steps=STEPS, on_step=None):
    x, y = _data()
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    initial = float(mse(model, x, y))
    for _ in range(steps):
        nnx_train_step(model, optimizer, x, y, use_grad_fn=use_grad_fn)
        if on_step is not None:
            on_step(model)
    return model, optimizer, initial, float(mse(model, x, y))


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_nnx_named_optimizer_trains():
    _, _, initial, final = nnx_train(optlab.adamw(LR, weight_decay=1e-4))
    assert final < DECREASE * initial


def test_nnx_sam_with_grad_fn_trains():
    _, _, initial, final = nnx_train(optlab.sam(optlab.adamw(LR), rho=0.05), use_grad_fn=True)
    assert final < DECREASE * initial


def test_nnx_grad_fn_idiom_gets_the_param_state():
    """The idiom is right: SAM with rho=0 trains exactly like its base optimizer."""
    base, _, _, _ = nnx_train(optlab.adamw(LR), steps=5)
    sam_tx = optlab.sam(optlab.adamw(LR), rho=0.0)
    sam, _, _, _ = nnx_train(sam_tx, use_grad_fn=True, steps=5)
    chex.assert_trees_all_close(_params(sam), _params(base), rtol=1e-6, atol=1e-7)
    # and grad_fn received / returned the structure nnx.Optimizer passes as params.
    x, y = _data()
    state = nnx.as_pure(nnx.state(sam, nnx.Param))
    grads = optlab.nnx_grad_fn(sam, lambda m: mse(m, x, y))(state)
    assert jax.tree.structure(grads) == jax.tree.structure(state)


def test_nnx_swa_averaged_params_load_into_the_model():
    start = 31
    iterates = []
    model, optimizer, initial, final = nnx_train(
        optlab.swa(optlab.adamw(LR), start_step=start, every_k=1),
        on_step=lambda m: iterates.append(_params(m)),
    )
    averaged = optlab.averaged_params(optimizer)
    expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *iterates[start - 1 :])
    chex.assert_trees_all_close(nnx.to_pure_dict(averaged), expected, rtol=1e-5, atol=1e-6)

    x, y = _data()
    nnx.update(model, averaged)
    swa_loss = float(mse(model, x, y))
    assert final < DECREASE * initial and swa_loss < DECREASE * initial
    chex.assert_trees_all_close(_params(model), expected, rtol=1e-5, atol=1e-6)


def test_nnx_ema_params_load_into_the_model():
    decay = 0.9
    model0 = MLP(nnx.Rngs(0))
    ema = [_params(model0)]

    def track(m):
        ema[0] = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema[0], _params(m))

    model, optimizer, initial, final = nnx_train(
        optlab.ema_params(optlab.adamw(LR), decay=decay, debias=False), on_step=track
    )
    averaged = optlab.averaged_params(optimizer)
    chex.assert_trees_all_close(nnx.to_pure_dict(averaged), ema[0], rtol=1e-5, atol=1e-6)
    x, y = _data()
    nnx.update(model, averaged)
    assert final < DECREASE * initial and float(mse(model, x, y)) < DECREASE * initial


# ---------------------------------------------------------------------------
# Linen
# ---------------------------------------------------------------------------


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(HIDDEN)(x)))


def _linen_loss(apply_fn):
    x, y = _data()
    return lambda params: jnp.mean((apply_fn({"params": params}, x) - y) ** 2)


def linen_train(tx, mode="plain", steps=STEPS):
    x, _ = _data()
    module = LinenMLP()
    params = module.init(jax.random.key(0), x)["params"]
    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)
    loss = _linen_loss(module.apply)

    @jax.jit
    def step(state):
        grads = jax.grad(loss)(state.params)
        if mode == "grad_fn":
            return optlab.apply_gradients(state, grads, grad_fn=jax.grad(loss))
        return state.apply_gradients(grads=grads)

    initial = float(loss(state.params))
    for _ in range(steps):
        state = step(state)
    return state, loss, initial, float(loss(state.params))


def test_linen_named_optimizer_trains():
    _, _, initial, final = linen_train(optlab.adamw(LR, weight_decay=1e-4))
    assert final < DECREASE * initial


def test_linen_sam_with_grad_fn_trains():
    _, _, initial, final = linen_train(optlab.sam(optlab.adamw(LR), rho=0.05), mode="grad_fn")
    assert final < DECREASE * initial


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optlab.swa(optlab.adamw(LR), start_step=31, every_k=1),
        lambda: optlab.ema_params(optlab.adamw(LR), decay=0.9),
    ],
    ids=["swa", "ema_params"],
)
def test_linen_averaged_params(make_tx):
    state, loss, initial, final = linen_train(make_tx())
    averaged = optlab.averaged_params(state.opt_state)
    assert jax.tree.structure(averaged) == jax.tree.structure(state.params)
    assert final < DECREASE * initial and float(loss(averaged)) < DECREASE * initial
    assert not np.allclose(averaged["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
