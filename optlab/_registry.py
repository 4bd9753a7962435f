"""Registry of named optimizers: ``optlab.get``, ``optlab.available``, ``optlab.describe``.

The top floor of the house: a plain table from name to (factory, paper), imported only by
``optlab/__init__.py``; nothing below imports it. A named optimizer joins by one entry
in ``_TABLE``. :func:`describe` reads stage names off the optimizer's state: a named
optimizer is an ``optax.named_chain``, whose state is a dict keyed by stage name.

Wrapped optimizers have one spelling everywhere (``optlab.get``, ``optlab.describe``, the
main job's ``--optimizers``): ``"<wrapper>-<base>"``, e.g. ``"sam-adamw"`` is
``optlab.sam(optlab.adamw(...), ...)``. The wrappers are the functions of ``_WRAPPERS``
(their first argument is the wrapped optimizer); keyword arguments that the wrapper's
signature names go to the wrapper, the others (and positional ones) to the base.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab import _aliases as A
from optlab import _averaging, _sharpness

__all__ = ["OptimizerInfo", "available", "describe", "get"]


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """What :func:`optlab.available` reports for one named optimizer.

    Attributes:
      name: the registered name (``optlab.get(name, ...)``).
      description: one line, the first line of the factory's docstring.
      paper: the source paper, "Title (year)".
      factory: the function building the optimizer (``optlab.<name>``).
    """

    name: str
    description: str
    paper: str
    factory: Callable[..., optax.GradientTransformation]

    def __str__(self) -> str:
        return f"{self.name:<16} {self.description}  [{self.paper}]"


# name -> (factory, paper). A named optimizer joins the registry by one entry here.
_TABLE: dict[str, tuple[Callable[..., optax.GradientTransformation], str]] = {
    "sgd": (A.sgd, "A Stochastic Approximation Method (1951); momentum: Polyak (1964)"),
    "lars": (A.lars, "Large Batch Training of Convolutional Networks (2017)"),
    "sgd_sai": (
        A.sgd_sai,
        ("No More Adam: Learning Rate Scaling at Initialization is All You Need (2024)"),
    ),
    "sgdp": (
        A.sgdp,
        (
            "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant"
            " Weights (2021)"
        ),
    ),
    "signum": (A.signum, "signSGD: Compressed Optimisation for Non-Convex Problems (2018)"),
    "sinkgd": (
        A.sinkgd,
        ("Gradient Multi-Normalization for Stateless and Scalable LLM Training (2025)"),
    ),
    "adam": (A.adam, "Adam: A Method for Stochastic Optimization (2015)"),
    "adamw": (A.adamw, "Decoupled Weight Decay Regularization (2019)"),
    "amsgrad": (A.amsgrad, "On the Convergence of Adam and Beyond (2018)"),
    "diffgrad": (
        A.diffgrad,
        ("diffGrad: An Optimization Method for Convolutional Neural Networks (2019)"),
    ),
    "adamp": (
        A.adamp,
        (
            "AdamP: Slowing Down the Slowdown for Momentum Optimizers on"
            " Scale-invariant Weights (2021)"
        ),
    ),
    "ademamix": (A.ademamix, "The AdEMAMix Optimizer: Better, Faster, Older (2024)"),
    "mars_adamw": (
        A.mars_adamw,
        ("MARS: Unleashing the Power of Variance Reduction for Training Large Models (2024)"),
    ),
    "grams": (A.grams, "Grams: Gradient Descent with Adaptive Momentum Scaling (2024)"),
    "cautious_adamw": (
        A.cautious_adamw,
        ("Cautious Optimizers: Improving Training with One Line of Code (2024)"),
    ),
    "lion": (A.lion, "Symbolic Discovery of Optimization Algorithms (2023)"),
    "cautious_lion": (
        A.cautious_lion,
        ("Cautious Optimizers: Improving Training with One Line of Code (2024)"),
    ),
    "lamb": (
        A.lamb,
        ("Large Batch Optimization for Deep Learning: Training BERT in 76 minutes (2020)"),
    ),
    "muon": (A.muon, "Muon: An optimizer for hidden layers in neural networks (2024)"),
    "adafactor": (
        A.adafactor,
        ("Adafactor: Adaptive Learning Rates with Sublinear Memory Cost (2018)"),
    ),
    "sophia": (
        A.sophia,
        (
            "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model"
            " Pre-training (2023)"
        ),
    ),
    "adahessian": (
        A.adahessian,
        ("ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning (2020)"),
    ),
    "dpsgd": (A.dpsgd, "Deep Learning with Differential Privacy (2016)"),
    # step-size rules and parameter-free methods (optlab/_step_sizes.py)
    "adagrad_norm": (
        A.adagrad_norm,
        ("SGD with AdaGrad Stepsizes (2023); AdaGrad-Norm: Ward, Wu and Bottou (2019)"),
    ),
    "adago": (A.adago, "AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates (2025)"),
    "sps": (
        A.sps,
        (
            "Stochastic Polyak Step-size for SGD: An Adaptive Learning Rate for Fast"
            " Convergence (2021)"
        ),
    ),
    "alr_smag": (
        A.alr_smag,
        ("Generalized Polyak Step Size for First Order Optimization with Momentum (2023)"),
    ),
    "dog": (A.dog, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size Schedule (2023)"),
    "dowg": (
        A.dowg,
        ("DoWG Unleashed: An Efficient Universal Parameter-Free Gradient Descent Method (2023)"),
    ),
    "prodigy": (A.prodigy, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner (2023)"),
    "schedule_free_sgd": (A.schedule_free_sgd, "The Road Less Scheduled (2024)"),
    "schedule_free_adamw": (A.schedule_free_adamw, "The Road Less Scheduled (2024)"),
    # memory-efficient state (optlab/_memory_efficient.py)
    "subset_norm_adam": (
        A.subset_norm_adam,
        "Efficient Adaptive Optimization via Subset-Norm and Subspace-Momentum (2024)",
    ),
    "galore": (
        A.galore,
        "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection (2024)",
    ),
    "online_subspace_descent": (
        A.online_subspace_descent,
        "Memory-Efficient LLM Training with Online Subspace Descent (2024)",
    ),
    "frugal": (
        A.frugal,
        "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for"
        " Scalable Training (2024)",
    ),
    "badam": (
        A.badam,
        "BAdam: A Memory Efficient Full Parameter Optimization Method for Large"
        " Language Models (2024)",
    ),
    "adam_mini": (A.adam_mini, "Adam-mini: Use Fewer Learning Rates To Gain More (2024)"),
    # Issue 12 (part A)
    "adopt": (
        A.adopt,
        "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate (2024)",
    ),
    "yogi": (A.yogi, "Adaptive Methods for Nonconvex Optimization (2018)"),
    "adamomentum": (
        A.adamomentum,
        ("Rethinking Adam: A Twofold Exponential Moving Average Approach (2021)"),
    ),
    "qhm": (A.qhm, "Quasi-hyperbolic momentum and Adam for deep learning (2019)"),
    "qhadam": (A.qhadam, "Quasi-hyperbolic momentum and Adam for deep learning (2019)"),
    "ano": (A.ano, "Ano: Faster is Better in Noisy Landscapes (2025)"),
    "nag_gs": (
        A.nag_gs,
        ("NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic Optimizer (2022)"),
    ),
    "lion_kappa": (
        A.lion_kappa,
        ("Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts (2023)"),
    ),
    "scion": (A.scion, "Training Deep Learning Models with Norm-Constrained LMOs (2025)"),
    "swan": (
        A.swan,
        ("SWAN: SGD with Normalization and Whitening Enables Stateless LLM Training (2024)"),
    ),
    "m_fac": (
        A.m_fac,
        ("M-FAC: Efficient Matrix-Free Approximations of Second-Order Information (2021)"),
    ),
    "oasis": (
        A.oasis,
        (
            "Doubly Adaptive Scaled Algorithm for Machine Learning Using Second-Order"
            " Information (2021)"
        ),
    ),
}

# Wrappers usable as "<wrapper>-<base>" (e.g. "sam-adamw"): name -> the wrapper, whose
# first argument is the wrapped optimizer.
_WRAPPERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sam": _sharpness.sam,
    "asam": _sharpness.asam,
    "gsam": _sharpness.gsam,
    "looksam": _sharpness.looksam,
    "rwp": _sharpness.rwp,
    "xgrad": _sharpness.xgrad,
    "lookahead": _averaging.lookahead,
    "swa": _averaging.swa,
    "ema_params": _averaging.ema_params,
}


class Catalogue(list):
    """The list :func:`optlab.available` returns: a ``list`` of :class:`OptimizerInfo`
    whose ``repr`` is one readable line per optimizer."""

    def __repr__(self) -> str:
        return "\n".join(str(info) for info in self)


class Description(str):
    """The text :func:`optlab.describe` returns: a ``str`` whose ``repr`` is the text
    itself, so a REPL shows it once, laid out."""

    def __repr__(self) -> str:
        return str(self)


def _split_name(fn: str, name: Any, param: str = "name") -> tuple[str | None, str]:
    """``"sam-adamw"`` -> ``("sam", "adamw")``; ``"adamw"`` -> ``(None, "adamw")``.

    Raises a TypeError naming ``fn`` for a non-string and a KeyError listing close
    matches for an unknown name.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"`optlab.{fn}`: `{param}` must be a string such as 'adamw' or 'sam-adamw', got"
            f" {name!r} of type {type(name).__name__}."
        )
    key = name.lower()
    wrapper, sep, base = key.partition("-")
    if sep and wrapper in _WRAPPERS and base in _TABLE:
        return wrapper, base
    if key in _TABLE:
        return None, key
    if key in _WRAPPERS:
        raise KeyError(
            f"`optlab.{fn}`: {name!r} is a wrapper, not an optimizer: name the optimizer it"
            f" wraps, e.g. '{key}-adamw' (any name of `optlab.available()` after '{key}-')."
        )
    known = list(_TABLE) + [f"{w}-adamw" for w in _WRAPPERS]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(
        f"`optlab.{fn}`: unknown optimizer {name!r}.{hint} `optlab.available()` lists all"
        f" {len(_TABLE)} names; wrap one as '<wrapper>-<name>' with a wrapper in"
        f" {sorted(_WRAPPERS)}."
    )


def _build(
    wrapper: str | None, base: str, args: tuple, kwargs: dict
) -> optax.GradientTransformation:
    if wrapper is None:
        return _TABLE[base][0](*args, **kwargs)
    wrap = _WRAPPERS[wrapper]
    wrapper_params = set(list(inspect.signature(wrap).parameters)[1:])
    wrap_kwargs = {k: v for k, v in kwargs.items() if k in wrapper_params}
    base_kwargs = {k: v for k, v in kwargs.items() if k not in wrapper_params}
    return wrap(_TABLE[base][0](*args, **base_kwargs), **wrap_kwargs)


def _info(name: str) -> OptimizerInfo:
    factory, paper = _TABLE[name]
    doc = (factory.__doc__ or "").strip().splitlines()
    return OptimizerInfo(name, doc[0].strip() if doc else "", paper, factory)


def available() -> Catalogue:
    """Every registered named optimizer, sorted by name.

    Returns:
      A list of :class:`OptimizerInfo` (name, one-line description, paper, factory)
      whose ``repr`` (what a REPL shows) is one line per optimizer; ``print(info)``
      gives one optimizer's line. Any of them can also be wrapped by name as
      ``"<wrapper>-<name>"`` (see :func:`optlab.get`).

    Example:
      >>> import optlab
      >>> names = [info.name for info in optlab.available()]
      >>> "adamw" in names and "sophia" in names
      True
      >>> print(next(i for i in optlab.available() if i.name == "lion"))
      ... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
      lion Lion: ... [Symbolic Discovery of Optimization Algorithms (2023)]
    """
    return Catalogue(_info(k) for k in sorted(_TABLE))


def get(name: str, /, *args: Any, **kwargs: Any) -> optax.GradientTransformation:
    """Build the named optimizer ``name``, optionally wrapped (``"sam-adamw"``).

    Args:
      name: a name listed by :func:`optlab.available` (case-insensitive), or
        ``"<wrapper>-<name>"`` with a wrapper among ``sam``, ``asam``, ``gsam``,
        ``looksam``, ``rwp``, ``xgrad``, ``lookahead``, ``swa``, ``ema_params``:
        ``"sam-adamw"`` is
        ``optlab.sam(optlab.adamw(...), ...)``.
      *args: positional hyperparameters of the optimizer (``learning_rate`` first).
      **kwargs: keyword hyperparameters. With a wrapper, the keywords its signature
        names (``rho`` for ``sam``, ``sync_period`` for ``lookahead`` ...) go to the
        wrapper, the others to the wrapped optimizer.

    Returns:
      The optimizer, as ``optlab.<name>(*args, **kwargs)`` builds it.

    Example:
      >>> import jax.numpy as jnp, optlab
      >>> tx = optlab.get("adamw", 1e-3, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> print(jnp.round(updates["w"], 6))
      [-0.001  0.001]
      >>> sam_adamw = optlab.get("sam-adamw", learning_rate=1e-3, rho=0.05)

    Raises:
      KeyError: for an unknown name, listing the closest registered names.
      TypeError: if ``name`` is not a string.
    """
    return _build(*_split_name("get", name), args, kwargs)


def _tree_bytes(tree: Any) -> int:
    return int(
        sum(
            np.prod(x.shape, dtype=np.int64) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype")
        )
    )


def _outline(state: Any, indent: str = "  ") -> list[str]:
    """Stage lines of a state: the ordered dict of ``optax.named_chain`` and the
    ``inner_states`` of ``optax.partition`` are numbered levels; tuples (``optax.chain``,
    wrapper states) are looked through; anything else (moments like params) is a leaf."""
    if isinstance(state, optax.transforms.PartitionState):
        state = collections.OrderedDict(state.inner_states)
    if isinstance(state, collections.OrderedDict):
        lines = []
        for i, (key, sub) in enumerate(state.items(), 1):
            lines.append(f"{indent}{i}. {key}")
            lines.extend(_outline(sub, indent + "   "))
        return lines
    if isinstance(state, (tuple, list)):
        return [line for sub in state for line in _outline(sub, indent)]
    return []


def describe(
    tx_or_name: str | optax.GradientTransformation, params: Any = None, **kwargs: Any
) -> Description:
    """Describe an optimizer: its stages and its state bytes per parameter byte.

    Stages are read off the state: the keys of ``optax.named_chain`` (every named
    optimizer) and ``optax.partition`` states, nested levels indented.

    Args:
      tx_or_name: a registered name, possibly wrapped (``"sam-adamw"``; built with
        ``kwargs``, ``learning_rate`` defaulting to ``1e-3``), or a transformation.
      params: the parameters to size the state for; defaults to one ``(256, 256)``
        float32 matrix and a ``(256,)`` vector. Nothing is allocated
        (``jax.eval_shape``).

    Returns:
      The description: a ``str`` whose ``repr`` is the text, so a REPL shows it once,
      laid out (nothing is printed).

    Example:
      >>> import optlab
      >>> optlab.describe("sgd", momentum=0.9)
      ... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
      sgd ... [A Stochastic Approximation Method (1951); momentum: Polyak (1964)]
      chain:
        1. trace
        2. scale_by_learning_rate
      state bytes per parameter byte: 1.00
    """
    lines = []
    if isinstance(tx_or_name, optax.GradientTransformation):
        tx = tx_or_name
    else:
        wrapper, base = _split_name("describe", tx_or_name, "tx_or_name")
        tx = _build(wrapper, base, (), {"learning_rate": 1e-3, **kwargs})
        info = str(_info(base))
        lines.append(info if wrapper is None else f"{wrapper}-{info}  (optlab.{wrapper} around it)")
    if params is None:
        params = {
            "w": jax.ShapeDtypeStruct((256, 256), jnp.float32),
            "b": jax.ShapeDtypeStruct((256,), jnp.float32),
        }
    outline: list[str] = []

    def init(p):  # the state's own containers, before jax flattens them
        state = tx.init(p)
        outline.extend(_outline(state))
        return state

    state = jax.eval_shape(init, params)
    if outline:
        lines.append("chain:")
        lines.extend(outline)
    else:
        kind = "chain" if type(state) is tuple else type(state).__name__  # optax.chain: tuple
        lines.append(f"transform: {kind}")
    ratio = _tree_bytes(state) / max(_tree_bytes(params), 1)
    lines.append(f"state bytes per parameter byte: {ratio:.2f}")
    return Description("\n".join(lines))
