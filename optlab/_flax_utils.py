"""Flax helpers: BatchNorm statistics of averaged weights, Flax variables unwrapped, SAM's
``grad_fn`` in NNX and extra ``update`` arguments through Linen's ``TrainState``.

Flax is an optional dependency: it is imported inside the functions, never when
``optlab`` is imported. This module imports only optax and ``_tree``; ``_averaging`` imports
:func:`unwrap_variables` from it (so it sits below the averaging module).
"""

from __future__ import annotations

import collections
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optlab import _tree

__all__ = ["apply_gradients", "nnx_grad_fn", "update_bn"]


def unwrap_variables(tree: Any) -> Any:
    """``tree`` with Flax NNX ``Variable`` leaves replaced by their values; an
    ``nnx.Optimizer`` becomes its ``opt_state``. Anything else is returned as is (and
    Flax is not imported unless the caller already did)."""
    if "flax" not in sys.modules:
        return tree
    from flax import nnx

    if isinstance(tree, nnx.Optimizer):
        tree = tree.opt_state
    return jax.tree.map(
        lambda x: x.get_value() if isinstance(x, nnx.Variable) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def _register_named_chain_state(serialization: Any) -> None:
    """Teach ``flax.serialization`` the state of ``optax.named_chain`` (every named
    optimizer's): an ``OrderedDict`` keyed by stage name, which its msgpack writer refuses
    (it registers plain ``dict`` only). Stored as a dict, restored in the target's order."""
    if collections.OrderedDict in serialization._STATE_DICT_REGISTRY:  # noqa: SLF001
        return

    def to_state(d):
        return {str(k): serialization.to_state_dict(v) for k, v in d.items()}

    def from_state(target, state):
        return collections.OrderedDict(
            (k, serialization.from_state_dict(v, state[str(k)])) for k, v in target.items()
        )

    serialization.register_serialization_state(collections.OrderedDict, to_state, from_state)


class _OnFlaxSerializationImport(importlib.abc.MetaPathFinder):
    """Registers :func:`_register_named_chain_state` when ``flax.serialization`` is first
    imported, so that ``import optlab`` never imports Flax itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "flax.serialization":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _register_named_chain_state(module)

        spec.loader.exec_module = exec_and_register
        return spec


if "flax.serialization" in sys.modules:
    _register_named_chain_state(sys.modules["flax.serialization"])
else:
    sys.meta_path.insert(0, _OnFlaxSerializationImport())


def _default_inputs(batch: Any) -> tuple:
    if isinstance(batch, (tuple, list)):
        return (batch[0],)
    if isinstance(batch, dict):
        raise TypeError(
            "`optlab.update_bn`: the batches are dicts; pass `input_fn=lambda batch:"
            " batch['image']` (or whichever entry is the model input)."
        )
    return (batch,)


def _inputs(batch: Any, input_fn: Callable | None, index: int = 0) -> tuple:
    if input_fn is None:
        out = _default_inputs(batch)
    else:
        out = input_fn(batch)
        out = out if isinstance(out, tuple) else (out,)
    for leaf in jax.tree.leaves(out):
        if jnp.ndim(leaf) and jnp.shape(leaf)[0] == 0:  # batch statistics of nothing: NaN
            raise ValueError(
                f"`optlab.update_bn`: batch {index} of `data` is empty (an input of shape"
                f" {jnp.shape(leaf)}); BatchNorm statistics of an empty batch are undefined."
            )
    return out


def _check_data(data: Any) -> None:
    if data is None or isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            "`optlab.update_bn`: `data` must be an iterable of batches (a list, a data"
            f" loader), got data={data!r} of type {type(data).__name__}."
        )


def update_bn(
    model_or_apply: Any,
    variables_or_data: Any,
    data: Iterable[Any] | None = None,
    *,
    input_fn: Callable[[Any], Any] | None = None,
    jit: bool = True,
    **apply_kwargs: Any,
) -> Any:
    """Recompute BatchNorm running statistics for (averaged) weights over a dataset.

    Averaged weights (SWA, EMA, soups ...) were never run through the network, so the
    BatchNorm running means and variances collected during training do not match
    them. Like ``torch.optim.swa_utils.update_bn``, this resets the statistics, runs
    every batch of ``data`` through the model in training mode and stores the
    cumulative average over the batches (each batch weighs the same) of the batch
    means and variances, i.e. what BatchNorm's running update gives with the
    momentum ``1 - 1/n`` at batch ``n``.

    Two forms:

    * **Flax NNX**: ``update_bn(model, data)``. Every ``nnx.BatchNorm`` of ``model``
      has its ``mean``/``var`` reset to 0/1 and is switched to batch statistics
      (``use_running_average=False``) with ``momentum=0`` so that each (jitted)
      forward pass leaves that batch's statistics in the layer; they are averaged in
      float32 and written back, and each layer's ``momentum`` and
      ``use_running_average`` are restored. Other layers keep their mode (e.g.
      Dropout): set it before the call if it matters. The model is updated in place
      and returned.
    * **Flax Linen**: ``update_bn(apply_fn_or_module, variables, data, **apply_kwargs)``
      calls ``apply_fn(variables, x, mutable=["batch_stats"], **apply_kwargs)`` (pass
      the flag that puts the model in training mode, e.g. ``train=True``, and any
      ``rngs``). Each ``nn.BatchNorm`` is run with ``momentum=0`` through a method
      interceptor (its statistics reset to 0/1 first), so each call returns that
      batch's statistics; their average replaces ``variables["batch_stats"]`` in the
      returned copy. Entries of ``batch_stats`` written by other modules follow
      their own update rule and are averaged the same way.

    Args:
      model_or_apply: an ``nnx.Module``, or a Linen ``nn.Module`` / its ``apply``.
      variables_or_data: NNX: the data; Linen: the variables (``{"params": ...,
        "batch_stats": ...}``).
      data: Linen only: an iterable of batches (a fresh pass over it is made once).
      input_fn: ``batch -> model input`` (or a tuple of positional inputs). Default:
        ``batch[0]`` for tuples/lists (``(x, y)`` batches), the batch itself for
        arrays.
      jit: jit the forward pass (one trace for batches of one shape).
      **apply_kwargs: Linen only: keyword arguments of ``apply`` (``train=True``,
        ``rngs=...``).

    Returns:
      NNX: the model (updated in place). Linen: the variables with new
      ``batch_stats``.

    Raises:
      ValueError: if ``data`` yields no batch or an empty batch (leading size 0).
      TypeError: if ``data`` is not an iterable of batches (e.g. ``None``).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> from flax import nnx
      >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
      ...                        nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
      >>> data = [jax.random.normal(jax.random.key(i), (8, 3)) for i in range(4)]
      >>> model = optlab.update_bn(model, data)
      >>> model.layers[1].mean.shape
      (4,)

    References:
      Izmailov et al., `Averaging Weights Leads to Wider Optima and Better
      Generalization <https://arxiv.org/abs/1803.05407>`_, 2018 (Section 3.2);
      ``torch.optim.swa_utils.update_bn``.
    """
    try:
        from flax import nnx
    except ImportError as e:  # pragma: no cover
        raise ImportError("`optlab.update_bn` needs Flax: `pip install flax`.") from e

    if isinstance(model_or_apply, nnx.Module):
        if data is not None:
            raise TypeError(
                "`optlab.update_bn`: for a Flax NNX module call `update_bn(model, data)`"
                " (the parameters live in the module)."
            )
        if apply_kwargs:
            raise TypeError(
                "`optlab.update_bn`: keyword arguments "
                f"{sorted(apply_kwargs)} are for Linen `apply`; with NNX use `input_fn`."
            )
        _check_data(variables_or_data)
        return _update_bn_nnx(model_or_apply, variables_or_data, input_fn, jit)
    if data is None:
        raise TypeError(
            "`optlab.update_bn`: for Linen call `update_bn(module_or_apply, variables, data,"
            " train=True)`; for NNX pass an `nnx.Module`."
        )
    _check_data(data)
    return _update_bn_linen(model_or_apply, variables_or_data, data, input_fn, jit, apply_kwargs)


def _update_bn_nnx(model, data, input_fn, jit):
    from flax import nnx

    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    if not bns:
        return model
    saved = [(bn.momentum, bn.use_running_average) for bn in bns]
    for bn in bns:
        bn.mean[...] = jnp.zeros_like(bn.mean[...])
        bn.var[...] = jnp.ones_like(bn.var[...])
        bn.momentum = 0.0  # the layer then holds the statistics of the last batch
        bn.use_running_average = False

    def forward(m, *args):
        m(*args)

    if jit:
        forward = nnx.jit(forward)
    sums = [
        (jnp.zeros(bn.mean.shape, jnp.float32), jnp.zeros(bn.var.shape, jnp.float32)) for bn in bns
    ]
    n = 0
    try:
        for i, batch in enumerate(data):
            forward(model, *_inputs(batch, input_fn, i))
            sums = [
                (s_m + _tree.to_acc(bn.mean[...]), s_v + _tree.to_acc(bn.var[...]))
                for (s_m, s_v), bn in zip(sums, bns)
            ]
            n += 1
    finally:
        for bn, (momentum, use_ra) in zip(bns, saved):
            bn.momentum = momentum
            bn.use_running_average = use_ra
    if n == 0:
        raise ValueError("`optlab.update_bn`: `data` yielded no batch.")
    for bn, (s_m, s_v) in zip(bns, sums):
        bn.mean[...] = (s_m / n).astype(bn.mean.dtype)
        bn.var[...] = (s_v / n).astype(bn.var.dtype)
    return model


def _update_bn_linen(apply_or_module, variables, data, input_fn, jit, apply_kwargs):
    import flax
    import flax.linen as nn

    apply_fn = apply_or_module.apply if isinstance(apply_or_module, nn.Module) else apply_or_module
    if not callable(apply_fn):
        raise TypeError(
            "`optlab.update_bn`: the first argument must be an `nnx.Module`, a Linen"
            f" `nn.Module` or its `apply`, got {type(apply_or_module).__name__}."
        )
    if "batch_stats" not in variables:
        return variables

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        for name, fill in (("mean", jnp.zeros_like), ("var", jnp.ones_like)):
            if module.has_variable("batch_stats", name):
                module.put_variable(
                    "batch_stats", name, fill(module.get_variable("batch_stats", name))
                )
        old = module.momentum
        object.__setattr__(module, "momentum", 0.0)  # frozen dataclass field
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(module, "momentum", old)

    def forward(variables, *args):
        _, mutated = apply_fn(variables, *args, mutable=["batch_stats"], **apply_kwargs)
        return mutated["batch_stats"]

    if jit:
        forward = jax.jit(forward)
    total, n = None, 0
    with nn.intercept_methods(interceptor):
        for i, batch in enumerate(data):
            stats = forward(variables, *_inputs(batch, input_fn, i))
            stats = jax.tree.map(_tree.to_acc, stats)
            total = stats if total is None else jax.tree.map(jnp.add, total, stats)
            n += 1
    if n == 0:
        raise ValueError("`optlab.update_bn`: `data` yielded no batch.")
    old_stats = variables["batch_stats"]
    old_leaves, treedef = jax.tree.flatten(old_stats)
    new_leaves = [
        (s / n).astype(jnp.result_type(o)) for s, o in zip(jax.tree.leaves(total), old_leaves)
    ]
    new_stats = jax.tree.unflatten(treedef, new_leaves)
    if isinstance(variables, flax.core.FrozenDict):
        return variables.copy({"batch_stats": new_stats})
    return {**variables, "batch_stats": new_stats}


def nnx_grad_fn(
    model: Any,
    loss_fn: Callable[[Any], Any],
    *,
    wrt: Any = None,
    has_aux: bool = False,
) -> Callable[[Any], Any]:
    """``grad_fn`` for SAM in Flax NNX: the gradient of ``loss_fn`` at any parameters.

    For ``nnx.Optimizer(model, tx, wrt=...)``: ``optimizer.update(model, grads,
    grad_fn=...)`` hands ``tx.update`` the parameters as a pure ``nnx.State`` of the
    ``wrt`` variables, and SAM calls ``grad_fn`` at a perturbed such state. The returned
    function differentiates ``params -> loss_fn(copy of model with these params)``:

    * the copy's other variables (BatchNorm ``mean``/``var``, RNG state) are those of
      ``model`` when ``nnx_grad_fn`` is called; what the perturbed pass writes to them is
      dropped, so the running statistics are updated only by the unperturbed pass of the
      step, once;
    * each RNG stream of ``model`` (e.g. Dropout's) is advanced once and the perturbed
      pass draws from a key split off it, so its dropout masks are fresh at every step and
      independent of the unperturbed pass's.

    Call it inside the jitted train step (``nnx.jit``), once per step: built outside
    ``jit``, its keys would be constants and every step would reuse the same dropout
    masks. (Splitting the model yourself and merging it back in ``grad_fn`` without
    copying fails with ``TraceContextError: Cannot mutate BatchStat from a different
    trace level``.)

    Args:
      model: the ``nnx.Module`` being trained.
      loss_fn: ``model -> loss`` (close over the batch), or ``model -> (loss, aux)`` with
        ``has_aux=True`` (``aux`` is dropped).
      wrt: the filter given to ``nnx.Optimizer`` (default ``nnx.Param``).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``grad_fn(params) -> grads``, both with the structure of
      ``nnx.state(model, wrt)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> from flax import nnx
      >>> rngs = nnx.Rngs(0)
      >>> model = nnx.Sequential(nnx.Linear(3, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs),
      ...                        nnx.Dropout(0.1, rngs=rngs), nnx.Linear(8, 1, rngs=rngs))
      >>> optimizer = nnx.Optimizer(model, optlab.sam(optax.adam(1e-2)), wrt=nnx.Param)
      >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 1))
      >>> @nnx.jit
      ... def train_step(model, optimizer, x, y):
      ...     loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)
      ...     grad_fn = optlab.nnx_grad_fn(model, loss_fn)  # before or after the first pass
      ...     loss, grads = nnx.value_and_grad(loss_fn)(model)
      ...     optimizer.update(model, grads, grad_fn=grad_fn)
      ...     return loss
      >>> loss = train_step(model, optimizer, x, y)
    """
    try:
        from flax import nnx
    except ImportError as e:  # pragma: no cover
        raise ImportError("`optlab.nnx_grad_fn` needs Flax: `pip install flax`.") from e
    if not isinstance(model, nnx.Module):
        raise TypeError(f"`optlab.nnx_grad_fn`: `model` must be an `nnx.Module`, got {model!r}.")

    def streams(node):
        return [s for _, s in nnx.iter_graph(node) if isinstance(s, nnx.RngStream)]

    keys = [stream() for stream in streams(model)]  # advances the model's streams once
    graphdef, _, rest = nnx.split(model, nnx.Param if wrt is None else wrt, ...)

    def loss_at(params):
        copy = nnx.merge(graphdef, params, rest, copy=True)  # new variables, in this trace
        for stream, key in zip(streams(copy), keys):
            stream.key.set_value(key)
            stream.count.set_value(jnp.zeros_like(stream.count.get_value()))
        out = loss_fn(copy)
        return out[0] if has_aux else out

    return jax.grad(loss_at)


def apply_gradients(state: Any, grads: Any, /, **extra_args: Any) -> Any:
    """``state.apply_gradients(grads=grads)`` that forwards extra arguments to ``tx.update``.

    Flax Linen's ``TrainState.apply_gradients(grads=..., **kwargs)`` treats keyword
    arguments as fields to replace, so it cannot pass SAM's ``grad_fn`` (or ``value``,
    ``hvp_fn``) to the optimizer. This does the same step, ``tx.update(grads, opt_state,
    params, **extra_args)``, ``optax.apply_updates`` and ``step + 1``, and returns
    ``state.replace(...)``, so any ``TrainState`` subclass works and keeps its other
    fields: replace ``batch_stats`` yourself with the statistics of the unperturbed pass
    (those of the perturbed pass, computed inside ``grad_fn``, are simply not returned).

    Args:
      state: a ``flax.training.train_state.TrainState`` (or any dataclass with ``step``,
        ``params``, ``opt_state``, ``tx`` and ``replace``).
      grads: the gradients at ``state.params``.
      **extra_args: keyword arguments of ``tx.update`` (``grad_fn=...``).

    Returns:
      The new state.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optlab
      >>> import flax.linen as nn
      >>> from flax.training import train_state
      >>> module = nn.Dense(1)
      >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 1))
      >>> params = module.init(jax.random.key(0), x)["params"]
      >>> state = train_state.TrainState.create(
      ...     apply_fn=module.apply, params=params, tx=optlab.sam(optax.sgd(0.1)))
      >>> loss = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)
      >>> state = optlab.apply_gradients(state, jax.grad(loss)(params), grad_fn=jax.grad(loss))
      >>> int(state.step)
      1
    """
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra_args)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
