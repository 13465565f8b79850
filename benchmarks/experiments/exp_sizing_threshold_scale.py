"""Experiment: should the stored admission thresholds follow the counts the store admits by?

``size_cache`` chooses each table's threshold on the access counts of the tuning trace's
warm-up share; ``apply_counts="trace"`` (the default) stores the whole trace's counts, larger by
the ratio of their lookups, so an unscaled threshold admits more neighbours than the simulation
did. ``bandstore.tune.sim.sizing.SCALE_THRESHOLDS`` scales it by that ratio (rounded up). This runs
bench_sizing.py's allocation check (first 80% tune, last 20% held out, the tuned allocation
against the best plain-CLOCK split of the same budget) with and without the scaling, same store.

    python benchmarks/experiments/exp_sizing_threshold_scale.py \
        criteo-8k avazu-9k synthetic-5 dlrm-26

Writes benchmarks/results/sizing_threshold_scale.{md,json} (synthetic-5 and dlrm-26 take about
10 minutes each on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _bench  # noqa: F401 - benchmarks/ on the import path
import bench_sizing as B

import bandstore.tune.sim.sizing as sizing
from bandstore.demo import create_store_for_trace

WORKLOADS = {
    "criteo-8k": lambda: B.load_real("criteo-8k"),
    "avazu-9k": lambda: B.load_real("avazu-9k"),
    "synthetic-5": lambda: B.synthetic_workload(10_000_000, 100_000, 0),
    "dlrm-26": lambda: B.dlrm_workload(10_000_000, 10_000, 0),
}


def main(names: list[str]) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    rows = []
    for name in names:
        trace = WORKLOADS[name]()
        if trace is None:
            print(f"skipping {name}: no data")
            continue
        path = Path(tempfile.mkdtemp()) / name
        create_store_for_trace(path, trace, dim=B.DIM, seed=0, progress=False).close()
        for fraction in (0.05, 0.2):
            for scale in (False, True):
                sizing.SCALE_THRESHOLDS = scale
                t0 = time.perf_counter()
                a = B.allocation_check(path, trace, fraction, None)
                tuned = a["contenders"]["tuned"]["blocks"]
                rows.append({
                    "workload": name, "budget": fraction, "scaled": scale,
                    "tuned_per_1000": 1000.0 * tuned / a["heldout_lookups"],
                    "ratio_vs_best_clock_split": a["ratio_vs_best_clock_split"],
                    "thresholds": {n: c["threshold"] for n, c in a["chosen"].items()},
                    "seconds": time.perf_counter() - t0,
                })  # fmt: skip
                print(rows[-1], flush=True)
    B.RESULTS.mkdir(exist_ok=True)
    (B.RESULTS / "sizing_threshold_scale.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "# Stored thresholds scaled to the applied counts, or not (held-out blocks)",
        "",
        "`python benchmarks/experiments/exp_sizing_threshold_scale.py "
        f"{' '.join(names)}` at {commit}: "
        "bench_sizing.py's allocation check with `tune.sim.sizing.SCALE_THRESHOLDS` off and "
        "on. Blocks read per 1000 held-out lookups by the tuned allocation; ratio = best "
        "plain-CLOCK split / tuned.",
        "",
        "| workload | budget | thresholds as chosen | scaled to the applied counts |",
        "|---|---|---|---|",
    ]
    for name in names:
        for fraction in (0.05, 0.2):
            r = {x["scaled"]: x for x in rows
                 if x["workload"] == name and x["budget"] == fraction}  # fmt: skip
            if len(r) == 2:
                cells = [f"{r[k]['tuned_per_1000']:.2f} ({r[k]['ratio_vs_best_clock_split']:.3f}x)"
                         for k in (False, True)]  # fmt: skip
                lines.append(f"| {name} | {fraction:.0%} | {cells[0]} | {cells[1]} |")
    (B.RESULTS / "sizing_threshold_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or list(WORKLOADS))
