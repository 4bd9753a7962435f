"""End-to-end weight averaging with Flax: SWA in an NNX loop, and ``update_bn``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab

pytest.importorskip("flax")
import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

N_CLASSES, DIM, BATCH = 3, 8, 50


def _blobs(n, seed):
    """Three well-separated Gaussian blobs in 8-D, with an offset and scale BN must fix."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(N_CLASSES, DIM)) * 3.0
    y = rng.integers(0, N_CLASSES, n)
    x = centers[y] + rng.normal(size=(n, DIM))
    return jnp.asarray(5.0 + 4.0 * x, jnp.float32), jnp.asarray(y, jnp.int32)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(DIM, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.l2 = nnx.Linear(32, N_CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


def _batches(x, y):
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def test_swa_in_an_nnx_training_loop_with_update_bn():
    x, y = _blobs(600, seed=1)
    x_test, y_test = _blobs(300, seed=2)
    batches = _batches(x, y)
    steps_per_epoch, epochs = len(batches), 5
    start = 2 * steps_per_epoch

    model = MLP(nnx.Rngs(0))
    tx = optlab.swa(optax.sgd(0.05, momentum=0.9), start_step=start, every_k=steps_per_epoch)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, xb, yb):
        def loss_fn(model):
            logits = model(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    sampled = []  # the SWA samples, recorded by hand
    t = 0
    for _ in range(epochs):
        for xb, yb in batches:
            train_step(model, optimizer, xb, yb)
            t += 1
            if t >= start and (t - start) % steps_per_epoch == 0:
                sampled.append(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
    assert len(sampled) == 4

    # The average kept in the optimizer state is the mean of the sampled weights.
    avg = optlab.averaged_params(optimizer)
    manual = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *sampled)
    np.testing.assert_allclose(avg["l1"]["kernel"], manual["l1"]["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(avg["l2"]["bias"], manual["l2"]["bias"], rtol=1e-5, atol=1e-6)

    # Load the average, recompute the BatchNorm statistics for it.
    nnx.update(model, avg)
    mean_before = np.asarray(model.bn.mean[...])
    optlab.update_bn(model, batches)  # batches are (x, y): the input is batch[0]

    kernel, bias = avg["l1"]["kernel"], avg["l1"]["bias"]
    hidden = [xb @ kernel + bias[None] for xb, _ in batches]
    manual_mean = np.mean([h.mean(0) for h in hidden], axis=0)
    manual_var = np.mean([h.var(0) for h in hidden], axis=0)
    np.testing.assert_allclose(model.bn.mean[...], manual_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.bn.var[...], manual_var, rtol=1e-4, atol=1e-4)
    assert not np.allclose(model.bn.mean[...], mean_before, rtol=1e-3, atol=1e-3)
    assert model.bn.momentum == 0.9 and model.bn.use_running_average is False

    model.eval()
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
    assert accuracy > 0.95


def test_update_bn_nnx_restores_modes_and_handles_input_fn():
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(4, momentum=0.5, use_running_average=True, rngs=nnx.Rngs(0)),
    )
    data = [{"image": jax.random.normal(jax.random.key(i), (16, 3)) + i} for i in range(3)]
    with pytest.raises(TypeError, match="update_bn.*input_fn"):
        optlab.update_bn(model, data)
    optlab.update_bn(model, data, input_fn=lambda b: b["image"], jit=False)
    bn, lin = model.layers[1], model.layers[0]
    assert bn.momentum == 0.5 and bn.use_running_average is True
    hidden = [lin(b["image"]) for b in data]
    np.testing.assert_allclose(
        bn.mean[...], np.mean([h.mean(0) for h in hidden], 0), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="update_bn.*no batch"):
        optlab.update_bn(model, [])
    assert bn.momentum == 0.5 and bn.use_running_average is True
    # A model without BatchNorm is returned unchanged.
    plain = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    assert optlab.update_bn(plain, data, input_fn=lambda b: b["image"]) is plain


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(6)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(2)(nn.relu(x))


@pytest.mark.parametrize("use_apply", [False, True])
def test_update_bn_linen_matches_manual_average(use_apply):
    module = _LinenNet()
    xs = [jax.random.normal(jax.random.key(i), (10, 4)) * (1 + i) + i for i in range(4)]
    variables = module.init(jax.random.key(0), xs[0], train=False)
    first = module.apply if use_apply else module
    new = optlab.update_bn(first, variables, [(x, None) for x in xs], train=True)
    dense = variables["params"]["Dense_0"]
    hidden = [x @ dense["kernel"] + dense["bias"][None] for x in xs]
    stats = new["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(
        stats["mean"], np.mean([h.mean(0) for h in hidden], 0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        stats["var"], np.mean([h.var(0) for h in hidden], 0), rtol=1e-5, atol=1e-5
    )
    # Parameters untouched, the input variables not modified, the module's momentum kept.
    assert new["params"] is variables["params"]
    np.testing.assert_array_equal(variables["batch_stats"]["BatchNorm_0"]["mean"], np.zeros(6))
    again = optlab.update_bn(first, variables, [(x, None) for x in xs], train=True)
    np.testing.assert_allclose(
        again["batch_stats"]["BatchNorm_0"]["mean"], stats["mean"], rtol=1e-6
    )


def test_update_bn_linen_wrong_call_raises():
    module = _LinenNet()
    module.init(jax.random.key(0), jnp.ones((2, 4)), train=False)  # a valid module
    with pytest.raises(TypeError, match="update_bn.*variables, data"):
        optlab.update_bn(module.apply, [jnp.ones((2, 4))])


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optlab.swa(optax.adam(1e-2), every_k=2),
        lambda: optlab.ema_params(optax.adam(1e-2), decay=0.9, warmup="tf"),
        lambda: optlab.bema(optax.adam(1e-2)),
        lambda: optlab.lawa(optax.adam(1e-2), k=2),
        lambda: optlab.switch_ema(optax.adam(1e-2), decay=0.5, sync_period=2),
        lambda: optlab.lookahead(optax.adam(1e-2), sync_period=2),
    ],
    ids=["swa", "ema_params", "bema", "lawa", "switch_ema", "lookahead"],
)
def test_every_wrapper_runs_in_nnx_optimizer(make_tx):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (8, 3))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads, some_flax_kwarg=1.0)

    for _ in range(4):
        step(model, optimizer)
    avg = optlab.averaged_params(optimizer)
    assert jax.tree.structure(avg) == jax.tree.structure(nnx.as_pure(nnx.state(model, nnx.Param)))
    nnx.update(model, avg)
    np.testing.assert_array_equal(model.kernel[...], avg["kernel"])


def test_posthoc_ema_snapshots_from_an_nnx_optimizer():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    tx = optlab.power_ema_profiles(optax.sgd(0.1), (0.05, 0.1), snapshot_every=2)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.ones((1, 3))
    snapshots = []
    for _ in range(4):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)
        snapshots += optlab.power_ema_snapshots(optimizer)
    assert [(s.step, s.sigma_rel) for s in snapshots] == [(2, 0.05), (2, 0.1), (4, 0.05), (4, 0.1)]
    avg = optlab.posthoc_ema(snapshots, sigma_rel=0.1)
    np.testing.assert_allclose(avg["kernel"], snapshots[-1].params["kernel"], rtol=1e-5)
    nnx.update(model, avg)  # loads into the model
    np.testing.assert_allclose(model.kernel[...], avg["kernel"])
