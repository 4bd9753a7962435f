"""Registry of named optimizers: ``optlab.get``, ``optlab.available``, ``optlab.describe``.

A named optimizer joins the registry with the :func:`register_optimizer` decorator and
builds its chain with :func:`named_chain`, which records the stage names so that
:func:`describe` can print them::

    @register_optimizer(paper="Decoupled Weight Decay Regularization (2019)")
    def adamw(learning_rate, b1=0.9, ...):
        \"\"\"AdamW: Adam with decoupled weight decay.\"\"\"
        return named_chain(
            scale_by_adam(b1=b1, ...),
            add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(learning_rate),
        )
"""

from __future__ import annotations

import dataclasses
import difflib
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["get", "available", "describe", "OptimizerInfo"]


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """What :func:`optlab.available` reports for one named optimizer."""

    name: str
    description: str
    paper: str
    factory: Callable[..., optax.GradientTransformation]

    def __str__(self) -> str:
        return f"{self.name:<16} {self.description}  [{self.paper}]"


_OPTIMIZERS: dict[str, OptimizerInfo] = {}
# init function of a chain built by `named_chain` -> the names of its stages.
_CHAIN_STAGES: "weakref.WeakKeyDictionary[Callable, tuple[str, ...]]" = weakref.WeakKeyDictionary()


def register_optimizer(name: str | None = None, *, paper: str, description: str | None = None):
    """Decorator adding a named-optimizer factory to the registry.

    ``description`` defaults to the first line of the factory's docstring.
    """

    def decorator(fn):
        key = name or fn.__name__
        if key in _OPTIMIZERS:
            raise ValueError(f"optlab: optimizer {key!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        desc = description or (doc[0].strip() if doc else "")
        _OPTIMIZERS[key] = OptimizerInfo(key, desc, paper, fn)
        return fn

    return decorator


def _stage_name(tx: Any) -> str:
    stages = _CHAIN_STAGES.get(tx.init)
    if stages is not None:
        return "chain(" + ", ".join(stages) + ")"
    qualname = getattr(tx.init, "__qualname__", repr(tx.init))
    return qualname.split(".<locals>")[0]


def named_chain(*transforms: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` that remembers its stage names for :func:`optlab.describe`."""
    tx = optax.chain(*transforms)
    _CHAIN_STAGES[tx.init] = tuple(_stage_name(t) for t in transforms)
    return tx


def available() -> list[OptimizerInfo]:
    """Every registered named optimizer, sorted by name.

    Example:
      >>> import optlab
      >>> for info in optlab.available():  # doctest: +SKIP
      ...     print(info)
    """
    return [_OPTIMIZERS[k] for k in sorted(_OPTIMIZERS)]


def get(name: str, /, **kwargs: Any) -> optax.GradientTransformation:
    """Build the named optimizer ``name`` with keyword hyperparameters.

    Example:
      >>> import optlab
      >>> tx = optlab.get("adamw", learning_rate=1e-3)  # doctest: +SKIP

    Raises:
      KeyError: for an unknown name, listing the closest registered names.
    """
    if name not in _OPTIMIZERS:
        close = difflib.get_close_matches(name, list(_OPTIMIZERS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"`optlab.get`: unknown optimizer {name!r}.{hint} `optlab.available()` lists all"
            f" {len(_OPTIMIZERS)} names."
        )
    return _OPTIMIZERS[name].factory(**kwargs)


def _tree_bytes(tree: Any) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def describe(tx_or_name: str | optax.GradientTransformation, params: Any = None, **kwargs: Any) -> str:
    """Describe an optimizer: its stages and its state bytes per parameter byte.

    Args:
      tx_or_name: a registered name (built with ``kwargs``, ``learning_rate``
        defaulting to ``1e-3``) or a transformation.
      params: the parameters to size the state for; defaults to one ``(256, 256)``
        float32 matrix and a ``(256,)`` vector. Nothing is allocated
        (``jax.eval_shape``).

    Returns:
      The description, also printed.
    """
    lines = []
    if isinstance(tx_or_name, str):
        info = _OPTIMIZERS.get(tx_or_name)
        tx = get(tx_or_name, **{"learning_rate": 1e-3, **kwargs})
        lines.append(str(info))
    else:
        tx = tx_or_name
    if params is None:
        params = {"w": jax.ShapeDtypeStruct((256, 256), jnp.float32),
                  "b": jax.ShapeDtypeStruct((256,), jnp.float32)}
    stages = _CHAIN_STAGES.get(tx.init)
    if stages is not None:
        lines.append("chain:")
        lines.extend(f"  {i}. {s}" for i, s in enumerate(stages, 1))
    else:
        lines.append(f"transform: {_stage_name(tx)}")
    state = jax.eval_shape(tx.init, params)
    ratio = _tree_bytes(state) / max(_tree_bytes(params), 1)
    lines.append(f"state bytes per parameter byte: {ratio:.2f}")
    text = "\n".join(lines)
    print(text)
    return text
