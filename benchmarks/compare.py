"""Re-time the step-time table and list the rows slower than the committed results.

A tool for authors and reviewers, not a test: it runs ``step_time.py``'s measurement for
the rows of a committed ``step_time.json`` (default ``benchmarks/results/step_time.json``;
``--optimizers`` / ``--sizes`` narrow it) and prints every row whose ratio to the
bandwidth floor (``vs_floor``, timed interleaved in the same run, so it is robust to a
machine that is slower or busier overall) or to optax's equivalent (``vs_optax``) grew by
more than the noise band. Absolute milliseconds are shown but not compared (they depend
on the machine and on its load).

The default band, 25%, is the spread measured on the shared 2-core development VM
(load 4-14): identical algorithms (optlab's sgd and adamw vs optax's) moved by up to
+-25% between two 9-repeat passes at 1e6, and single passes at 1e7 by up to +-30%
(benchmarks/README.md, "Noise"). On a quiet machine use ``--band 0.1``.

    python3 benchmarks/compare.py --optimizers lamb,lars --sizes 1e6
    python3 benchmarks/compare.py --band 0.1 --repeats 15          # the whole table
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _step_time():
    spec = importlib.util.spec_from_file_location("step_time", HERE / "step_time.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compare(old_rows, new_rows, band):
    """(name, size, metric, old, new, change) for each ratio that grew by more than band."""
    old = {(r["name"], r["size"]): r for r in old_rows if "error" not in r}
    worse = []
    for r in new_rows:
        o = old.get((r["name"], r["size"]))
        if o is None or "error" in r:
            continue
        for key in ("vs_floor", "vs_optax"):
            a, b = o.get(key), r.get(key)
            if a and b and b > a * (1 + band):
                worse.append((r["name"], r["size"], key, a, b, b / a - 1))
    return worse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=str(HERE / "results" / "step_time.json"))
    ap.add_argument("--optimizers", default="", help="comma list (default: the baseline's)")
    ap.add_argument("--sizes", default="", help="comma list (default: the baseline's)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--target-ms", type=float, default=40.0)
    ap.add_argument("--band", type=float, default=0.25, help="relative noise band (0.25 = 25%%)")
    ap.add_argument("--out", default="", help="also write the new run's JSON here")
    args = ap.parse_args(argv)

    st = _step_time()
    base = json.loads(Path(args.baseline).read_text())
    rows = [r for r in base["step_time"] if "error" not in r]
    names = [n for n in args.optimizers.split(",") if n] or list(
        dict.fromkeys(r["name"] for r in rows)
    )
    known = sorted({r["size"] for r in rows})  # exact element counts of the baseline
    asked = [float(s) for s in args.sizes.split(",") if s]
    sizes = sorted({min(known, key=lambda k: abs(k - a)) for a in asked}) if asked else known
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(
        f"baseline: {args.baseline} ({base['environment'].get('date')},"
        f" {base['environment'].get('device_kind', base['environment'].get('device'))})"
    )
    new_rows = []
    for size in sizes:
        # the baseline records the actual element count; step_time builds trees by target size
        target = min((10**k for k in range(3, 10)), key=lambda t: abs(t - size))
        todo = [n for n in names if any(r["name"] == n and r["size"] == size for r in rows)]
        log(f"timing {len(todo)} rows at {target:g} parameters")
        new_rows += st.bench_step_time(
            todo, target, 50, args.repeats, args.target_ms / 1e3, 0.5, log
        )
    st.pool_floors(new_rows)
    worse = compare(rows, new_rows, args.band)
    old = {(r["name"], r["size"]): r for r in rows}
    print("\n| optimizer | size | vs floor before | after | vs optax before | after |")
    print("|---|---:|---:|---:|---:|---:|")
    fmt = lambda x: "" if x is None else f"{x:.2f}x"  # noqa: E731
    for r in new_rows:
        o = old.get((r["name"], r["size"]), {})
        print(
            f"| {r['name']} | {r['size']:.0e} | {fmt(o.get('vs_floor'))} |"
            f" {fmt(r.get('vs_floor'))} | {fmt(o.get('vs_optax'))} | {fmt(r.get('vs_optax'))} |"
        )
    if args.out:
        env = st.environment()
        Path(args.out).write_text(
            json.dumps(dict(environment=env, step_time=new_rows), indent=1, default=float)
        )
    if not worse:
        print(f"\nno row slower than the baseline by more than {args.band:.0%}")
        return 0
    print(f"\nslower than the baseline by more than the {args.band:.0%} noise band:")
    for name, size, key, a, b, ch in worse:
        print(f"  {name:<20} {size:.0e}  {key}: {a:.2f}x -> {b:.2f}x (+{ch:.0%})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
