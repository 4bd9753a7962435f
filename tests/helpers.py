"""Shared test kit: the registry of every transform/optimizer under test, targets, tools.

Registering a transform
-----------------------
Add a :class:`Case` to the ``CASES`` list of the module ``tests/cases/<concern>.py``
(create it if the concern is new; every module in ``tests/cases`` is collected
automatically). ``tests/test_properties.py`` then runs the whole shared property
suite on it, with no new test code. ``test_every_public_factory_is_registered``
fails until each public transform factory has at least one case.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax

# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

TREE_KINDS = ("any", "matrix", "per_example", "stacked")
EXTRA_ARGS = ("grad_fn", "hvp_fn", "value")
BATCH = 4  # leading axis of per-example gradients (tree="per_example")
N_OBJECTIVES = 3  # leading axis of stacked per-objective gradients (tree="stacked")


@dataclasses.dataclass(frozen=True)
class Case:
    """One registered transform or named optimizer.

    Attributes:
      name: the public name in ``optlab`` (``optlab.<name>`` must exist).
      factory: callable returning an ``optax.GradientTransformation``; defaults to
        ``getattr(optlab, name)``. Wrappers pass a lambda that supplies the inner
        transform, e.g. ``lambda **kw: optlab.sam(optax.sgd(0.1), **kw)``.
      kwargs: valid fixed keyword arguments.
      hparams: hypothesis strategies for keyword arguments drawn at random (merged
        over ``kwargs``); keep them inside the valid range.
      static_args: names ``optax.inject_hyperparams`` must keep static. Python
        ints given in ``kwargs`` are added automatically (optax would trace them,
        and integer hyperparameters such as periods fix shapes or loop counts);
        bools, strings and callables are static in optax already.
      inject: whether ``optax.inject_hyperparams(factory)`` is tested (``False``
        only where the factory takes no numeric hyperparameter, e.g. a wrapper
        whose first argument is an inner transform).
      extra_args: required ``update`` keywords, built by :func:`make_extra_args`
        from the standard test loss: any of ``grad_fn`` (params -> grads),
        ``hvp_fn`` ((params, v) -> H v), ``value`` (loss at params).
      tree: ``any`` (random pytrees of rank 0-3 leaves), ``matrix`` (2-D leaves,
        both sides >= 2), ``per_example`` (gradients with a leading batch axis of
        size ``BATCH``), ``stacked`` (gradients with a leading objective axis of
        size ``N_OBJECTIVES``).
      kind: ``transform`` or ``optimizer`` (a named optimizer from ``_aliases``).
      multisteps: whether ``optax.MultiSteps`` is tested.
      id: pytest id suffix when one name is registered several times.
    """

    name: str
    factory: Callable[..., optax.GradientTransformation] | None = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    hparams: Mapping[str, st.SearchStrategy] = dataclasses.field(default_factory=dict)
    static_args: tuple[str, ...] = ()
    inject: bool = True
    extra_args: tuple[str, ...] = ()
    tree: str = "any"
    kind: str = "transform"
    multisteps: bool = True
    id: str | None = None

    def __post_init__(self):
        if self.tree not in TREE_KINDS:
            raise ValueError(f"Case {self.name}: tree must be one of {TREE_KINDS}")
        for e in self.extra_args:
            if e not in EXTRA_ARGS:
                raise ValueError(f"Case {self.name}: unknown extra arg {e}")

    @property
    def test_id(self) -> str:
        return self.name if self.id is None else f"{self.name}[{self.id}]"

    def get_factory(self) -> Callable[..., optax.GradientTransformation]:
        if self.factory is not None:
            return self.factory
        import optlab

        return getattr(optlab, self.name)

    def build(self, **overrides) -> optax.GradientTransformation:
        return self.get_factory()(**{**self.kwargs, **overrides})

    def build_injected(self, **overrides) -> optax.GradientTransformation:
        kwargs = {**self.kwargs, **overrides}
        ints = {k for k, v in kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}
        static = tuple(sorted(set(self.static_args) | ints))
        return optax.inject_hyperparams(self.get_factory(), static_args=static)(**kwargs)


@functools.cache
def all_cases() -> tuple[Case, ...]:
    """Every ``CASES`` entry of every module under ``tests/cases``."""
    import cases as cases_pkg  # tests/ is on sys.path under pytest's rootdir conftest

    out: list[Case] = []
    for info in sorted(pkgutil.iter_modules(cases_pkg.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"cases.{info.name}")
        out.extend(getattr(module, "CASES", ()))
    ids = [c.test_id for c in out]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"duplicate case ids {sorted(dupes)}: give them distinct `id`s")
    return tuple(out)


# Public callables that are not transform factories (accessors, merging functions,
# Flax helpers, registry functions). The completeness test skips them.
NOT_TRANSFORMS: set[str] = set()


def register_not_transform(*names: str) -> None:
    NOT_TRANSFORMS.update(names)


# ---------------------------------------------------------------------------
# Test problems
# ---------------------------------------------------------------------------


def quadratic_loss(params) -> jax.Array:
    """Standard test loss: sum_i 0.5 * c_i * (x - 0.3)^2 with a different c per leaf."""
    total = jnp.zeros((), jnp.float32)
    for i, leaf in enumerate(jax.tree.leaves(params)):
        x = leaf.astype(jnp.float32)
        total = total + 0.5 * (1.0 + 0.5 * i) * jnp.sum((x - 0.3) ** 2)
    return total


def make_extra_args(names, loss=quadratic_loss) -> dict[str, Any]:
    """Build the required extra arguments of a case from ``loss``."""
    builders = {
        "grad_fn": lambda: jax.grad(loss),
        "hvp_fn": lambda: lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1],
        "value": None,  # filled per step by step_extra_args
    }
    return {n: builders[n]() for n in names if builders[n] is not None}


def step_extra_args(case: Case, params, loss=quadratic_loss) -> dict[str, Any]:
    out = make_extra_args(case.extra_args, loss)
    if "value" in case.extra_args:
        out["value"] = loss(params)
    return out


def parabola(params) -> jax.Array:
    """f(x) = sum (x - 1)^2 over all leaves: minimum 0 at x = 1."""
    return sum(jnp.sum((p.astype(jnp.float32) - 1.0) ** 2) for p in jax.tree.leaves(params))


def rosenbrock(params) -> jax.Array:
    """Rosenbrock on params["x"] (shape (2,)): minimum 0 at (1, 1)."""
    x = params["x"].astype(jnp.float32)
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def run_optimizer(tx, loss, params, steps: int, extra_args: Callable | None = None):
    """Run ``steps`` jitted steps of ``tx`` on ``loss``; returns (params, state, losses)."""
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        kw = extra_args(params) if extra_args is not None else {}
        updates, state = tx.update(grads, state, params, **kw)
        return optax.apply_updates(params, updates), state, value

    losses = []
    for _ in range(steps):
        params, state, value = step(params, state)
        losses.append(value)
    return params, state, np.asarray(jnp.stack(losses))


# ---------------------------------------------------------------------------
# Random pytrees (hypothesis)
# ---------------------------------------------------------------------------

_SHAPES_ANY = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 5)),
    st.tuples(st.integers(2, 5), st.integers(2, 5)),
    st.tuples(st.integers(1, 3), st.integers(2, 4), st.integers(2, 4)),
)
_SHAPES_MATRIX = st.tuples(st.integers(2, 6), st.integers(2, 6))


# The first (simplest) example hypothesis draws from :func:`pytrees`: a fixed tree with
# leaves of rank 0-3 (one nested dict) for "any", three matrices for "matrix". With the
# default profile's one example per test, this is the tree every case is checked on; more
# examples (``HYPOTHESIS_PROFILE=thorough``) add random trees, values and scales.
RICH_SHAPES = {
    "any": {"layer": {"w": (5, 3), "b": (3,)}, "p0": (), "p1": (2, 3, 4)},
    "matrix": {"p0": (4, 6), "p1": (6, 2), "p2": (2, 2)},
}


def rich_tree(tree: str = "any", dtype=jnp.float32, seed: int = 0):
    """The deterministic tree of :data:`RICH_SHAPES` (standard normal values, via NumPy so
    that building it compiles nothing)."""
    rng = np.random.default_rng(seed)
    shapes = RICH_SHAPES["matrix" if tree == "matrix" else "any"]
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s, np.float32).astype(dtype)),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


@st.composite
def pytrees(draw, tree: str = "any", dtype=jnp.float32):
    """A dict pytree (possibly nested) of 1-4 float leaves with random values.

    The simplest example (the first one hypothesis tries) is :func:`rich_tree`.
    """
    if not draw(st.booleans()):
        return rich_tree(tree, dtype)
    shapes_st = _SHAPES_MATRIX if tree == "matrix" else _SHAPES_ANY
    n = draw(st.integers(1, 4))
    shapes = [draw(shapes_st) for _ in range(n)]
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0]))
    keys = jax.random.split(jax.random.key(seed), n)
    leaves = [
        (scale * jax.random.normal(k, s, jnp.float32)).astype(dtype) for k, s in zip(keys, shapes)
    ]
    if n >= 3 and draw(st.booleans()):
        return {
            "layer": {"w": leaves[0], "b": leaves[1]},
            **{f"p{i}": x for i, x in enumerate(leaves[2:])},
        }
    return {f"p{i}": x for i, x in enumerate(leaves)}


def make_grads(case: Case, params, seed: int):
    """Gradients for ``params`` in the layout the case expects."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    lead = {"per_example": (BATCH,), "stacked": (N_OBJECTIVES,)}.get(case.tree, ())
    grads = [
        jax.random.normal(k, lead + x.shape, jnp.float32).astype(x.dtype)
        for k, x in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, grads)


def fixed_params(tree: str = "any", dtype=jnp.float32):
    """A deterministic small pytree for non-hypothesis tests."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    if tree == "matrix":
        return {
            "w1": jax.random.normal(k1, (4, 3)).astype(dtype),
            "w2": jax.random.normal(k2, (3, 5)).astype(dtype),
        }
    return {
        "w": jax.random.normal(k1, (4, 3)).astype(dtype),
        "b": jax.random.normal(k2, (3,)).astype(dtype),
        "s": jax.random.normal(k3, ()).astype(dtype),
    }


def update_shape_target(case: Case, params):
    """What ``updates`` must look like (shape/dtype): always the params'."""
    return params


# ---------------------------------------------------------------------------
# Assertions
# ---------------------------------------------------------------------------


def tree_allclose(a, b, rtol=1e-6, atol=1e-6) -> None:
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def shapes_and_dtypes(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def assert_same_state_layout(before, after) -> None:
    """Same tree structure, shapes and dtypes (what Flax and jit need)."""
    assert jax.tree.structure(before) == jax.tree.structure(after), (
        f"state structure changed:\n{jax.tree.structure(before)}\n->\n{jax.tree.structure(after)}"
    )
    assert shapes_and_dtypes(before) == shapes_and_dtypes(after)
