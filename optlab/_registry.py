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
import functools
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _base

__all__ = ["get", "available", "describe", "OptimizerInfo"]


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """What :func:`optlab.available` reports for one named optimizer.

    Attributes:
      name: the registered name (``optlab.get(name, ...)``).
      description: one line, by default the first line of the factory's docstring.
      paper: the source paper, "Title (year)".
      factory: the function building the optimizer (``optlab.<name>``).
    """

    name: str
    description: str
    paper: str
    factory: Callable[..., optax.GradientTransformation]

    def __str__(self) -> str:
        return f"{self.name:<16} {self.description}  [{self.paper}]"


_OPTIMIZERS: dict[str, OptimizerInfo] = {}
# init function of a chain built by `named_chain` -> the names of its stages.
_CHAIN_STAGES: "weakref.WeakKeyDictionary[Callable, tuple[str, ...]]" = weakref.WeakKeyDictionary()
# update function of a stage given an explicit name with `label` -> that name.
_LABELS: "weakref.WeakKeyDictionary[Callable, str]" = weakref.WeakKeyDictionary()


def register_optimizer(name: str | None = None, *, paper: str, description: str | None = None):
    """Decorator adding a named-optimizer factory to the registry.

    ``description`` defaults to the first line of the factory's docstring. The
    registered factory is the decorated one, wrapped so that the ``init`` of the
    optimizer it builds first checks that every parameter leaf is floating point,
    raising a ``TypeError`` that names ``optlab.<name>`` (the stages would otherwise
    raise it under their own names). Signature and docstring are kept
    (``functools.wraps``), so ``optax.inject_hyperparams`` sees the same arguments.
    """

    def decorator(fn):
        key = name or fn.__name__
        if key in _OPTIMIZERS:
            raise ValueError(f"optlab: optimizer {key!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        desc = description or (doc[0].strip() if doc else "")

        @functools.wraps(fn)
        def factory(*args, **kwargs):
            return _check_float_params(key, fn(*args, **kwargs))

        _OPTIMIZERS[key] = OptimizerInfo(key, desc, paper, factory)
        return factory

    return decorator


def _check_float_params(fn_name: str, tx: optax.GradientTransformation):
    """``tx`` whose ``init`` first runs ``_base.check_float_tree(fn_name, params)``."""
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        _base.check_float_tree(fn_name, params)
        return tx.init(params)

    stages = _CHAIN_STAGES.get(tx.init)
    if stages is not None:  # keep the recorded stages for `describe`
        _CHAIN_STAGES[init_fn] = stages
    return optax.GradientTransformationExtraArgs(init_fn, tx.update)


# Outer function names that say nothing about what a stage does.
_GENERIC_NAMES = frozenset({"init_empty_state", "with_extra_args_support", "init_fn", "update_fn",
                            "init", "update"})


def _outer_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", "").split(".<locals>")[0]


def _inner_transforms(fn: Any) -> list[str]:
    """Names of the transformations a closure captured (wrapped stages), in order."""
    out = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # empty cell
            continue
        if isinstance(value, optax.GradientTransformation):
            out.append(_stage_name(value))
        elif isinstance(value, dict) and value and all(
            isinstance(v, optax.GradientTransformation) for v in value.values()
        ):
            out.extend(f"{k}: {_stage_name(v)}" for k, v in value.items())
    return out


def _public_name_in_closure(fn: Any) -> str | None:
    """A captured string naming a public optlab function (the ``fn_name`` of private
    factory helpers, used for their error messages)."""
    import optlab  # lazily: the package is fully imported by the time stages are named

    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, str) and value in optlab.__all__:
            return value
    return None


def _stage_name(tx: Any) -> str:
    """A readable name for one stage: recorded chains and labels first, then inferred.

    The inference reads the factory name off the closures (``scale_by_adam.<locals>.
    update_fn`` -> ``scale_by_adam``) and recurses into wrapped transformations
    (``masked(scale_by_trust_ratio)``); private helpers (named by the public function
    they serve, when they captured its name) and optax's shared stateless
    ``init_empty_state`` are looked through.
    """
    stages = _CHAIN_STAGES.get(tx.init)
    if stages is not None:
        return "chain(" + ", ".join(stages) + ")"
    label = _LABELS.get(tx.update)
    if label is not None:
        return label
    for fn in (tx.update, tx.init):
        name = _outer_name(fn)
        inner = _inner_transforms(fn)
        if name and not name.startswith("_") and name not in _GENERIC_NAMES:
            return f"{name}({', '.join(inner)})" if inner else name
        if inner:
            return inner[0] if len(inner) == 1 else "(" + ", ".join(inner) + ")"
        public = _public_name_in_closure(fn)
        if public is not None:
            return public
    return _outer_name(tx.update) or repr(tx)


def label(name: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Give ``tx`` the stage name ``name`` in :func:`optlab.describe` (returns ``tx``).

    For stages whose factory name cannot be read off the closure, e.g.
    ``optax.scale_by_learning_rate`` (which returns a plain ``optax.scale``).
    """
    _LABELS[tx.update] = name
    return tx


def named_chain(*transforms: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` that remembers its stage names for :func:`optlab.describe`.

    Each stage's name is read off its factory (see :func:`_stage_name`); wrap a stage in
    :func:`label` to name it explicitly.
    """
    tx = optax.chain(*transforms)
    _CHAIN_STAGES[tx.init] = tuple(_stage_name(t) for t in transforms)
    return tx


def available() -> list[OptimizerInfo]:
    """Every registered named optimizer, sorted by name.

    Returns:
      A list of :class:`OptimizerInfo` (name, one-line description, paper, factory);
      ``print(info)`` gives one line per optimizer.

    Example:
      >>> import optlab
      >>> names = [info.name for info in optlab.available()]
      >>> "adamw" in names and "sophia" in names
      True
      >>> print(next(i for i in optlab.available() if i.name == "lion"))
      ... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
      lion Lion: ... [Symbolic Discovery of Optimization Algorithms (2023)]
    """
    _load_table()
    return [_OPTIMIZERS[k] for k in sorted(_OPTIMIZERS)]


def get(name: str, /, **kwargs: Any) -> optax.GradientTransformation:
    """Build the named optimizer ``name`` with keyword hyperparameters.

    Args:
      name: a name listed by :func:`optlab.available` (positional only).
      **kwargs: the optimizer's hyperparameters, ``learning_rate`` included.

    Returns:
      The optimizer, as ``optlab.<name>(**kwargs)`` builds it.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.get("adamw", learning_rate=1e-3, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))
      [-0.001  0.001]

    Raises:
      KeyError: for an unknown name, listing the closest registered names.
    """
    _load_table()
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


def describe(
    tx_or_name: str | optax.GradientTransformation, params: Any = None, **kwargs: Any
) -> str:
    """Describe an optimizer: its stages and its state bytes per parameter byte.

    Args:
      tx_or_name: a registered name (built with ``kwargs``, ``learning_rate``
        defaulting to ``1e-3``) or a transformation.
      params: the parameters to size the state for; defaults to one ``(256, 256)``
        float32 matrix and a ``(256,)`` vector. Nothing is allocated
        (``jax.eval_shape``).

    Returns:
      The description, also printed.

    Example:
      >>> import optlab
      >>> _ = optlab.describe("sgd", momentum=0.9)
      ... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
      sgd ... [A Stochastic Approximation Method (1951); momentum: Polyak (1964)]
      chain:
        1. trace
        2. scale_by_learning_rate
      state bytes per parameter byte: 1.00
    """
    _load_table()
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
    state = jax.eval_shape(tx.init, params)
    stages = _CHAIN_STAGES.get(tx.init) or _named_chain_stages(state)
    if stages is not None:
        lines.append("chain:")
        lines.extend(f"  {i}. {s}" for i, s in enumerate(stages, 1))
    else:
        lines.append(f"transform: {_stage_name(tx)}")
    ratio = _tree_bytes(state) / max(_tree_bytes(params), 1)
    lines.append(f"state bytes per parameter byte: {ratio:.2f}")
    text = "\n".join(lines)
    print(text)
    return text


# ===========================================================================
# The registry table: plain named optimizers of ``optlab/_aliases.py`` (no decorator),
# one entry each, name -> paper ("Title (year)"). Loaded on first use of the registry,
# since the registry sits above the aliases (nothing below imports it).
# ===========================================================================

_TABLE: dict[str, str] = {
    "adopt": "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate (2024)",
    "yogi": "Adaptive Methods for Nonconvex Optimization (2018)",
    "adamomentum": "Rethinking Adam: A Twofold Exponential Moving Average Approach (2021)",
    "qhm": "Quasi-hyperbolic momentum and Adam for deep learning (2019)",
    "qhadam": "Quasi-hyperbolic momentum and Adam for deep learning (2019)",
    "ano": "Ano: Faster is Better in Noisy Landscapes (2025)",
    "nag_gs": "NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic Optimizer (2022)",
    "lion_kappa": "Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts (2023)",
    "scion": "Training Deep Learning Models with Norm-Constrained LMOs (2025)",
    "swan": "SWAN: SGD with Normalization and Whitening Enables Stateless LLM Training (2024)",
    "m_fac": "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information (2021)",
    "oasis": "Doubly Adaptive Scaled Algorithm for Machine Learning Using Second-Order"
    " Information (2021)",
}


def _load_table() -> None:
    """Add the entries of ``_TABLE`` to the registry (once)."""
    if all(k in _OPTIMIZERS for k in _TABLE):
        return
    from optlab import _aliases  # lazily: the registry sits above the aliases

    for key, paper in _TABLE.items():
        if key in _OPTIMIZERS:
            continue
        fn = getattr(_aliases, key)
        doc = (fn.__doc__ or "").strip().splitlines()
        _OPTIMIZERS[key] = OptimizerInfo(key, doc[0].strip() if doc else "", paper, fn)


def _named_chain_stages(state: Any) -> tuple[str, ...] | None:
    """The stage names of an ``optax.named_chain`` state (a dict keyed by name)."""
    if isinstance(state, dict) and state and all(isinstance(k, str) for k in state):
        return tuple(state)
    return None
