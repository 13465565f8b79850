"""Is a 2-worker store ever slower than a 1-worker one? Per-call latency over the call's size.

A model server sends calls of every size. Handing a call's tasks to a helper thread and back
costs a wake-up and GIL transfers (tens of microseconds each on a VM), which a small call cannot
earn back. The executor therefore serves a call inline (on the calling thread alone) when its
measured work is below the break-even that ``bandstore calibrate`` measured on this machine.

26 tables (1k to 256k rows, dim 16; resident up to 64k rows, cached at 20% of their rows above),
calls of 1 to 1024 queries with 8 ids per table per query (Zipf-skewed ids). Contenders, each a
store over the same files: 1 worker; 2 workers always handing tasks to the helper (the
executor before the rule); 2 workers with the calibrated rule. Calls alternate between the
contenders; medians per call. Ratios: 1 worker's time / the contender's (above 1: faster).

    python benchmarks/bench_small_calls.py [--quick]

Writes benchmarks/results/small_calls.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from paths import RESULTS, run_facts

import bandstore
from bandstore.serve.cache import cache_row_bytes
from bandstore.tune.planning import calibrate_store

DIM = 16
TABLES = 26
POOLING = 8
CONTENDERS = ("1 worker", "2 workers, always", "2 workers, rule")


def build(path: Path) -> dict:
    """The store and its plan (tables alternate between the two workers)."""
    rng = np.random.default_rng(0)
    rows = [1000 << (i % 9) for i in range(TABLES)]  # 1k .. 256k
    tables = {}
    with bandstore.create(path) as s:
        for i, n in enumerate(rows):
            name = f"t{i:02d}"
            s.add_table(name, rng.standard_normal((n, DIM)).astype(np.float32), progress=False)
            if n <= 64_000:
                tables[name] = {"strategy": "resident", "worker": i % 2}
            else:
                tables[name] = {"strategy": "cached", "worker": i % 2,
                                "cache_bytes": (n // 5) * cache_row_bytes(DIM)}  # fmt: skip
    return {"workers": 2, "tables": tables}


def requests(path: Path, queries: int, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    with bandstore.open(path, plan=False) as s:
        rows = {n: t.rows for n, t in s.tables.items()}
    out = []
    for _ in range(count):
        req = {}
        for n, r in rows.items():
            ids = (rng.zipf(1.2, queries * POOLING) - 1) % r
            req[n] = (ids.astype(np.int64), np.arange(0, queries * POOLING, POOLING))
        out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls per size")
    ap.add_argument("--name", default="small_calls", help="results file stem")
    args = ap.parse_args(argv)
    sizes = [1, 4, 16, 64, 256, 1024]
    calls = 60 if args.quick else 400
    with tempfile.TemporaryDirectory(prefix="bandstore-small-calls-") as d:
        path = Path(d) / "store"
        plan = build(path)
        cal = calibrate_store(path)  # (a quick one moves the break-even too much)
        stores = {
            "1 worker": bandstore.open(path, plan=plan, workers=1),
            "2 workers, always": bandstore.open(path, plan=plan),
            "2 workers, rule": bandstore.open(path, plan=plan),
        }
        stores["2 workers, always"]._executor.inline_below = None  # white-box: force the workers
        rows = []
        try:
            for q in sizes:
                reqs = requests(path, q, calls, seed=q)
                for s in stores.values():  # warm: caches, and the rule's per-table timings
                    for r in reqs[: max(20, calls // 4)]:
                        s.lookup_many(r)
                    s.reset_stats()
                times: dict[str, list[float]] = {c: [] for c in CONTENDERS}
                for k, r in enumerate(reqs):
                    for j in range(len(CONTENDERS)):
                        c = CONTENDERS[(k + j) % len(CONTENDERS)]
                        t0 = time.perf_counter()
                        stores[c].lookup_many(r)
                        times[c].append(time.perf_counter() - t0)
                med = {c: float(np.median(v)) * 1e6 for c, v in times.items()}
                st = stores["2 workers, rule"].stats()["total"]
                inline = st["lookup_many_inline_calls"] / max(1, st["lookup_many_calls"])
                rows.append({"queries": q, "lookups": q * POOLING * TABLES, "median_us": med,
                             "speedup": {c: med["1 worker"] / med[c] for c in CONTENDERS},
                             "rule_inline_share": inline})  # fmt: skip
                print(rows[-1], flush=True)
        finally:
            for s in stores.values():
                s.close()
    cmd, commit, load = run_facts("bench_small_calls.py", argv)
    lines = [
        "# Small calls: 2 workers vs 1, with and without the inline rule",
        "",
        f"`{cmd}` at {commit} ({os.cpu_count()} CPUs, load {load}; {TABLES} tables, dim {DIM}, "
        f"{POOLING} ids per table per query, {calls} calls per size, contenders in turns, "
        f"medians). Calibrated break-even: {cal.inline_base_ns / 1e3:.0f} us + "
        f"{cal.inline_task_ns / 1e3:.1f} us per task of estimated CPU work per call.",
        "",
        "| queries per call | lookups per call | 1 worker us | 2 workers, always: us "
        "(speedup) | 2 workers, rule: us (speedup) | rule: calls inline |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, sp = r["median_us"], r["speedup"]
        lines.append(
            f"| {r['queries']} | {r['lookups']:,} | {m['1 worker']:.0f} | "
            f"{m['2 workers, always']:.0f} ({sp['2 workers, always']:.2f}x) | "
            f"{m['2 workers, rule']:.0f} ({sp['2 workers, rule']:.2f}x) | "
            f"{r['rule_inline_share']:.0%} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    out = {"command": cmd, "commit": commit, "calibration": cal.as_dict(), "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
