"""The shared property suite: every registered transform and optimizer.

Cases live in ``tests/cases/*.py`` (see ``tests/helpers.py``). Each case is checked
for finite updates, kept shapes and dtypes (float32 and bfloat16), a state layout
that never changes, ``jax.jit`` with no retrace, ``optax.inject_hyperparams``,
``optax.MultiSteps``, unknown extra arguments, and empty / ``None``-leaf trees.
Trees and hyperparameters are drawn by hypothesis: one example per test by default (a
fixed tree with leaves of rank 0-3 and each hyperparameter strategy's simplest value),
20 random ones with ``HYPOTHESIS_PROFILE=thorough`` (see ``tests/conftest.py``).

Cost: every case compiles its update about 8 times here (f32, bf16, the reference run
shared by the inject / extra-args tests, the injected run, the run with unknown extra
arguments, MultiSteps, None leaves, and eager op-by-op dispatch).
"""

from __future__ import annotations

import functools
import inspect

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import optax
import pytest
from hypothesis import HealthCheck, given, settings

import optlab
from helpers import (
    NOT_TRANSFORMS,
    Case,
    all_cases,
    assert_same_state_layout,
    make_grads,
    pytrees,
    rich_tree,
    step_extra_args,
    tree_allclose,
)

CASES = all_cases()
IDS = [c.test_id for c in CASES]
N_STEPS = 3

# The number of examples and the seed come from the hypothesis profile (tests/conftest.py).
hyp_settings = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _draw_hparams(case: Case, data) -> dict:
    return {name: data.draw(strategy, label=name) for name, strategy in case.hparams.items()}


def _run(
    tx,
    case: Case,
    params,
    *,
    jit: bool,
    steps: int = N_STEPS,
    max_traces: int | None = 1,
    extra: dict | None = None,
):
    """Run ``steps`` updates; return (updates per step, states per step)."""
    state0 = tx.init(params)

    traces = []

    def step(grads, state, params):
        traces.append(1)  # runs once per trace under jit
        kw = step_extra_args(case, params)
        kw.update(extra or {})
        return tx.update(grads, state, params, **kw)

    if jit:
        step = jax.jit(step)
    states, all_updates = [state0], []
    state = state0
    for i in range(steps):
        grads = make_grads(case, params, seed=100 + i)
        updates, state = step(grads, state, params)
        all_updates.append(updates)
        states.append(state)
        params = optax.apply_updates(params, updates)
    if jit and max_traces is not None:
        assert len(traces) <= max_traces, f"update retraced: {len(traces)} traces in {steps} steps"
    return all_updates, states, params


def _check_core(case: Case, params, tx, jit: bool):
    all_updates, states, new_params = _run(tx, case, params, jit=jit)
    for updates in all_updates:
        chex.assert_tree_all_finite(updates)
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    for s in states[1:]:
        assert_same_state_layout(states[0], s)
    chex.assert_tree_all_finite(new_params)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(
    "dtype,jit",
    [(jnp.float32, True), (jnp.bfloat16, True), (jnp.float32, False)],
    ids=["f32-jit", "bf16-jit", "f32-eager"],
)
@hyp_settings
@given(data=st.data())
def test_finite_shapes_dtypes_state_no_retrace(case: Case, dtype, jit, data):
    params = data.draw(pytrees(case.tree, dtype), label="params")
    tx = case.build(**_draw_hparams(case, data))
    _check_core(case, params, tx, jit)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_init_matches_eager_init(case: Case):
    params = rich_tree(case.tree)
    tx = case.build()
    eager = tx.init(params)
    jitted = jax.jit(tx.init)(params)
    assert_same_state_layout(eager, jitted)
    tree_allclose(eager, jitted)


@functools.cache
def _reference_updates(case_id: str):
    """The updates of ``N_STEPS`` jitted steps of the case as registered, on
    ``rich_tree`` (the tree of the default profile's example, so the main jitted run of
    ``test_finite_shapes_dtypes_state_no_retrace`` builds the same program and the session's
    compilation cache answers): shared by the tests that compare another run with it (one compile
    per case and pytest process). The no-retrace property is checked by
    ``test_finite_shapes_dtypes_state_no_retrace``."""
    case = _BY_ID[case_id]
    updates, _, _ = _run(case.build(), case, rich_tree(case.tree), jit=True, max_traces=None)
    return updates


_BY_ID = {c.test_id: c for c in CASES}


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.inject], ids=[c.test_id for c in CASES if c.inject]
)
def test_inject_hyperparams_matches(case: Case):
    params = rich_tree(case.tree)
    plain = _reference_updates(case.test_id)
    injected, states, _ = _run(case.build_injected(), case, params, jit=True)
    assert states[0].hyperparams, (
        f"{case.test_id}: inject_hyperparams found no numeric hyperparameter to inject; the"
        " factory needs explicit keyword parameters (not `lambda **kw`), or set inject=False"
        " when it has no float hyperparameter"
    )
    for s in states[1:]:
        assert_same_state_layout(states[0], s)
    tree_allclose(plain, injected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.multisteps], ids=[c.test_id for c in CASES if c.multisteps]
)
def test_multisteps(case: Case):
    params = rich_tree(case.tree)
    tx = optax.MultiSteps(case.build(), every_k_schedule=2)
    all_updates, states, new_params = _run(tx, case, params, jit=True, steps=4)
    for s in states[1:]:
        assert_same_state_layout(states[0], s)
    for i, updates in enumerate(all_updates):
        chex.assert_tree_all_finite(updates)
        if i % 2 == 0:  # accumulating step: no update
            chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
    chex.assert_tree_all_finite(new_params)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ignores_unknown_extra_args(case: Case):
    params = rich_tree(case.tree)
    ref = _reference_updates(case.test_id)
    got, _, _ = _run(
        case.build(), case, params, jit=True, extra={"some_flax_kwarg": 3.0, "rngs": None}
    )
    tree_allclose(ref, got, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_empty_tree(case: Case):
    tx = case.build()
    state = tx.init({})
    updates, new_state = tx.update({}, state, {}, **step_extra_args(case, {}))
    assert updates == {}
    assert_same_state_layout(state, new_state)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_none_leaves(case: Case):
    params = {**rich_tree(case.tree), "frozen": None}
    tx = case.build()
    grads = {**make_grads(case, rich_tree(case.tree), seed=1), "frozen": None}
    state = tx.init(params)
    kw = step_extra_args(case, {k: v for k, v in params.items() if v is not None})
    updates, new_state = jax.jit(lambda g, s, p: tx.update(g, s, p, **kw))(grads, state, params)
    assert updates["frozen"] is None
    chex.assert_tree_all_finite({k: v for k, v in updates.items() if v is not None})
    assert_same_state_layout(state, new_state)


def _is_transform_factory(name: str) -> bool:
    obj = getattr(optlab, name)
    return callable(obj) and not inspect.isclass(obj) and name not in NOT_TRANSFORMS


def test_every_public_factory_is_registered():
    registered = {c.name for c in CASES}
    # Cases modules may declare public non-transform callables.
    missing = sorted(n for n in optlab.__all__ if _is_transform_factory(n) and n not in registered)
    assert not missing, (
        "public callables with no Case in tests/cases (register them, or declare them with"
        f" helpers.register_not_transform if they are not transforms): {missing}"
    )
    unknown = sorted(registered - set(optlab.__all__))
    assert not unknown, f"cases registered for names optlab does not export: {unknown}"
