"""Multi-device check of every registered Case, run in its own process.

``tests/test_sharding.py`` starts this script with 8 simulated CPU devices
(``--xla_force_host_platform_device_count=8`` must be set before jax starts, hence
the separate process). For each Case the parameters are sharded over a 4 x 2 mesh
(every parameter shape is distinct, so a state leaf's shape names its parameter;
scalars are replicated and not checked) and compared with a single-device run.

Checked in jax's default sharding mode (``AxisType.Auto``):

* ``init_sharding[auto]``: eager ``tx.init(params)`` puts every state leaf shaped like
  a parameter on that parameter's sharding (and a leaf shaped like a stack of it,
  ``(n, *shape)``, on that sharding with the stacking axis replicated).
  (``jax.jit(tx.init)`` cannot do this in auto mode, not even for ``optax.adam``: an
  init that reads only shapes leaves the parameters unused, jit drops them and runs on
  one device.)
* ``numerics``: 3 jitted updates give updates, params and state equal to the
  single-device run (rtol = atol = 1e-5; 2e-2 for cases keeping bfloat16 state).

Checked with explicit sharding (``AxisType.Explicit``, sharding in types, under
``jax.sharding.set_mesh``):

* ``init_sharding[explicit]``: ``jax.jit(tx.init)(params)`` gives param-shaped state
  leaves the parameters' shardings. In this mode shardings are part of the array types,
  so ``jax.eval_shape`` of the jitted init gives exactly the shardings of the compiled
  call, without compiling it.
* ``explicit_mode``: the update traces (``jax.eval_shape``) without a sharding error.
* ``update_sharding[explicit]`` / ``step_sharding[explicit]``: the updates and the new
  state keep the parameters' shardings.

Auto-mode sharding changes of updates or state after a step are XLA's choice and
are reported under ``notes`` only.

Usage:

* ``python3 tests/_sharding_worker.py --serve`` (what the tests run: one long-lived process
  per pytest process, so that jax starts once there and pytest-xdist spreads the cases):
  reads case ids on stdin, one per line, and answers each with one JSON line on stdout,
  ``RESULT_PREFIX`` + ``{"case", "n_devices", "failures", "notes",
  "matched_state_leaves", "seconds"}``; ``failures`` is ``[{"property", "detail"}]``.
* ``python3 tests/_sharding_worker.py OUT.json [case-id-substring ...]`` (by hand): checks
  the matching cases (all by default) and writes ``{"n_devices", "checked",
  "matched_state_leaves", "failures", "notes", "seconds"}`` to OUT.json, with
  ``failures`` mapping a case id to ``[{"property", "detail"}]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

N_DEVICES = 8
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    # First: XLA stops reading at a token it does not parse (conftest.py's default has one).
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N_DEVICES} {_flags}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]  # `helpers`/`cases`, and `optlab` uninstalled

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")  # as tests/conftest.py

from helpers import Case, all_cases, make_grads, step_extra_args  # noqa: E402

N_STEPS = 3
TOL = 1e-5
TOL_LOW_PRECISION = 2e-2  # bfloat16 state: reduction order changes the last bit (~4e-3)

LAYOUTS = {
    "any": {
        "w": ((16, 8), P("x", "y")),
        "b": ((24,), P(("x", "y"))),
        "k": ((2, 4, 8), P(None, "y", "x")),
        "s": ((), P()),
    },
    "matrix": {
        "w1": ((16, 8), P("x", "y")),
        "w2": ((8, 24), P("y", "x")),
    },
}


def _layout(case: Case):
    return LAYOUTS["matrix" if case.tree == "matrix" else "any"]


def make_params(case: Case):
    layout = _layout(case)
    keys = jax.random.split(jax.random.key(0), len(layout))
    return {
        name: jax.random.normal(k, shape, jnp.float32)
        for k, (name, (shape, _)) in zip(keys, layout.items())
    }


def shardings(case: Case, mesh, lead: bool = False):
    """Parameter shardings; ``lead``: gradients with a replicated leading axis."""
    return {
        name: NamedSharding(mesh, P(None, *spec) if lead else spec)
        for name, (_, spec) in _layout(case).items()
    }


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _low_precision(tree) -> bool:
    return any(
        hasattr(x, "dtype")
        and not _is_key(x)
        and jnp.issubdtype(x.dtype, jnp.floating)
        and jnp.finfo(x.dtype).bits < 32
        for x in jax.tree.leaves(tree)
    )


def _comparable(tree):
    """Numpy float64 copies of every array leaf (PRNG keys as their raw data)."""
    return [
        np.asarray(jax.random.key_data(x) if _is_key(x) else x, dtype=np.float64)
        if hasattr(x, "dtype")
        else x
        for x in jax.tree.leaves(tree)
    ]


def _close(a, b, tol: float) -> str | None:
    la, lb = _comparable(a), _comparable(b)
    if len(la) != len(lb):
        return f"{len(la)} vs {len(lb)} leaves"
    for i, (x, y) in enumerate(zip(la, lb)):
        if not isinstance(x, np.ndarray):
            if x != y:
                return f"leaf {i}: {x!r} != {y!r}"
            continue
        if x.shape != y.shape:
            return f"leaf {i}: shape {x.shape} != {y.shape}"
        if not np.allclose(x, y, rtol=tol, atol=tol, equal_nan=True):
            err = np.max(np.abs(x - y))
            return f"leaf {i} (shape {x.shape}): max abs difference {err:.3g}"
    return None


def _spec(sharding, ndim: int) -> tuple:
    """A sharding's partition spec, normalised to one entry per axis."""
    spec = list(getattr(sharding, "spec", ()))
    spec += [None] * (ndim - len(spec))
    return tuple(e[0] if isinstance(e, tuple) and len(e) == 1 else e for e in spec)


def _sharding_mismatches(tree, case: Case, want: dict) -> tuple[list[str], int]:
    """Leaves shaped like a parameter, or like a stack of it (``(n, *shape)``, e.g. LAWA's
    buffer of iterates), whose sharding is not the parameter's (with the stacking axis
    replicated); and the number of leaves checked."""
    by_shape = {shape: name for name, (shape, _) in _layout(case).items() if shape}
    out, matched = [], 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = tuple(getattr(leaf, "shape", ()) or ())
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            continue
        if shape in by_shape:
            name, stacked = by_shape[shape], ()
        elif shape[1:] in by_shape:
            name, stacked = by_shape[shape[1:]], (None,)
        else:
            continue
        matched += 1
        got = _spec(sharding, len(shape))
        expected = stacked + _spec(want[name], len(shape) - len(stacked))
        if got != expected or not hasattr(sharding, "spec"):
            shown = P(*got) if hasattr(sharding, "spec") else sharding
            like = f"params[{name!r}]" + (" stacked" if stacked else "")
            out.append(
                f"{jax.tree_util.keystr(path) or '<root>'} (like {like}): {shown},"
                f" expected {P(*expected)}"
            )
    return out, matched


def _run(tx, params, grads_list, step, init):
    state0 = init(params)
    state, updates_list = state0, []
    for grads in grads_list:
        updates, state = step(grads, state, params)
        updates_list.append(updates)
        params = optax.apply_updates(params, updates)
    return state0, state, updates_list, params


def _error(e: BaseException) -> str:
    """The error and the innermost optlab frame that raised it (where to fix it)."""
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}optlab{os.sep}" in f.filename
    ]
    where = ""
    if frames:
        f = frames[-1]
        where = f"\n  at {f.filename}:{f.lineno} ({f.name}): {f.line}"
    msg = str(e).split("\n--------------------")[0]
    return f"{type(e).__name__}: {msg[:1000]}{where}"


def check_case(case: Case, meshes: dict) -> tuple[list[dict], list[dict], int]:
    failures, notes = [], []

    def fail(prop, detail):
        failures.append({"property": prop, "detail": detail})

    tx = case.build()

    def step_fn(grads, state, params):
        return tx.update(grads, state, params, **step_extra_args(case, params))

    lead = case.tree in ("per_example", "stacked")
    params = make_params(case)
    grads_list = [make_grads(case, params, seed=100 + i) for i in range(N_STEPS)]

    # Single-device reference.
    one = jax.devices()[0]
    ref = _run(
        tx, jax.device_put(params, one), jax.device_put(grads_list, one), jax.jit(step_fn), tx.init
    )
    tol = TOL_LOW_PRECISION if _low_precision(ref[0]) or _low_precision(ref[2]) else TOL

    # Auto mode: eager init keeps the shardings; jitted steps match the reference.
    mesh = meshes["auto"]
    p_sh = shardings(case, mesh)
    sh_params = jax.device_put(params, p_sh)
    sh_grads = [jax.device_put(g, shardings(case, mesh, lead)) for g in grads_list]
    state0, state, updates_list, new_params = _run(
        tx, sh_params, sh_grads, jax.jit(step_fn), tx.init
    )
    bad, matched = _sharding_mismatches(state0, case, p_sh)
    if bad:
        fail("init_sharding[auto]", "eager tx.init: " + "; ".join(bad))
    for label, got, want in [
        ("init state", state0, ref[0]),
        ("updates", updates_list, ref[2]),
        ("final params", new_params, ref[3]),
        ("final state", state, ref[1]),
    ]:
        msg = _close(got, want, tol)
        if msg:
            fail("numerics", f"{label} differ from the single-device run: {msg}")
    for label, tree in [("updates", updates_list), ("state after 3 steps", state)]:
        bad, _ = _sharding_mismatches(tree, case, p_sh)
        if bad:
            notes.append(
                {"property": "auto_mode_resharding", "detail": f"{label}: " + "; ".join(bad)}
            )

    # Explicit mode: jax.jit(tx.init) keeps the shardings; the update traces and keeps them.
    mesh = meshes["explicit"]
    p_sh = shardings(case, mesh)
    with jax.sharding.set_mesh(mesh):
        sh_params = jax.device_put(params, p_sh)
        sh_grads = jax.device_put(grads_list[0], shardings(case, mesh, lead))
        try:
            # Shardings are part of the types here, so abstract evaluation gives exactly the
            # shardings the compiled jax.jit(tx.init) returns, without compiling it.
            state0 = jax.eval_shape(jax.jit(tx.init), sh_params)
        except Exception as e:  # noqa: BLE001 - reported per case
            fail("explicit_mode", "jax.jit(tx.init): " + _error(e))
            return failures, notes, matched
        bad, _ = _sharding_mismatches(state0, case, p_sh)
        if bad:
            fail("init_sharding[explicit]", "jax.jit(tx.init): " + "; ".join(bad))
        try:
            updates, state = jax.eval_shape(step_fn, sh_grads, state0, sh_params)
        except Exception as e:  # noqa: BLE001
            fail("explicit_mode", "update: " + _error(e))
            return failures, notes, matched
    bad, _ = _sharding_mismatches(updates, case, p_sh)
    if bad:
        fail("update_sharding[explicit]", "; ".join(bad))
    bad, _ = _sharding_mismatches(state, case, p_sh)
    if bad:
        fail("step_sharding[explicit]", "; ".join(bad))
    return failures, notes, matched


def _selftest_cases() -> list[Case]:
    """Deliberately broken transforms that the checks must catch (see test_sharding.py)."""

    def replicated_state():
        def init_fn(params):
            return {"m": jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params)}

        def update_fn(updates, state, params=None, **extra):
            return updates, state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def wrong_numerics():
        def init_fn(params):  # counts devices eagerly, 1 under jit: differs when sharded
            w = params["w"]
            n = 1 if isinstance(w, jax.core.Tracer) else len(w.sharding.device_set)
            return {"n": jnp.asarray(n, jnp.float32)}

        def update_fn(updates, state, params=None, **extra):
            return jax.tree.map(lambda g: g * state["n"], updates), state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    return [
        Case("_selftest_replicated_state", factory=replicated_state),
        Case("_selftest_wrong_numerics", factory=wrong_numerics),
    ]


def _meshes() -> dict:
    devices = jax.devices()
    return {
        mode: jax.make_mesh(
            (4, 2), ("x", "y"), axis_types=(axis_type,) * 2, devices=devices[:N_DEVICES]
        )
        for mode, axis_type in [("auto", AxisType.Auto), ("explicit", AxisType.Explicit)]
    }


def run_case(case: Case, meshes: dict) -> dict:
    """One case's report: ``{"case", "failures", "notes", "matched_state_leaves", "seconds"}``."""
    t0 = time.perf_counter()
    try:
        failures, notes, matched = check_case(case, meshes)
    except Exception as e:  # noqa: BLE001 - reported per case
        failures, notes, matched = [{"property": "error", "detail": _error(e)}], [], 0
    return {
        "case": case.test_id,
        "failures": failures,
        "notes": notes,
        "matched_state_leaves": matched,
        "seconds": round(time.perf_counter() - t0, 2),
    }


RESULT_PREFIX = "@@sharding-result@@ "


def serve() -> int:
    """Answer case ids read from stdin, one per line, with one ``RESULT_PREFIX`` JSON line
    each on stdout (the case's :func:`run_case` report plus ``n_devices``). The ids of
    :func:`_selftest_cases` are known too. Ends at end of input."""
    n_devices = len(jax.devices())
    meshes = _meshes() if n_devices >= N_DEVICES else None
    by_id = {c.test_id: c for c in [*all_cases(), *_selftest_cases()]}
    print(RESULT_PREFIX + json.dumps({"ready": True, "n_devices": n_devices}), flush=True)
    for line in sys.stdin:
        case_id = line.strip()
        if not case_id:
            continue
        if meshes is None:
            report = {"case": case_id, "error": f"only {n_devices} devices"}
        elif case_id not in by_id:
            report = {"case": case_id, "error": "unknown case id in the worker's registry"}
        else:
            report = run_case(by_id[case_id], meshes)
        report["n_devices"] = n_devices
        print(RESULT_PREFIX + json.dumps(report), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        return serve()
    out_path, patterns = argv[0], argv[1:]
    devices = jax.devices()
    result = {
        "n_devices": len(devices),
        "checked": [],
        "matched_state_leaves": {},
        "failures": {},
        "notes": {},
        "seconds": {},
    }
    if len(devices) >= N_DEVICES:
        meshes = _meshes()
        cases = _selftest_cases() if patterns == ["_selftest"] else all_cases()
        for case in cases:
            if patterns and not any(p in case.test_id for p in patterns):
                continue
            report = run_case(case, meshes)
            result["checked"].append(case.test_id)
            result["matched_state_leaves"][case.test_id] = report["matched_state_leaves"]
            result["seconds"][case.test_id] = report["seconds"]
            if report["failures"]:
                result["failures"][case.test_id] = report["failures"]
            if report["notes"]:
                result["notes"][case.test_id] = report["notes"]
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
