"""Experiment: size_cache variants at the 5% (and 20%) budget, held-out blocks read.

Same protocol as bench_sizing.py's allocation section (sized on the first 80% of the queries,
applied, caches warmed on them, blocks read on the last 20% through the real store), for a
few variants of ``size_cache``'s settings that need no change to the store's cache policy:

- ``default``: what bench_sizing.py runs (warm-up 0.5 of the tuning part, thresholds
  0/1/4/16/never, pinned shares 0/0.25/0.5/0.75/0.9/1);
- ``warmup 0.75``: the choice simulated with the counts of the first 75% of the tuning part
  (closer to the whole-part counts the store is given), predicted on its last 25%;
- ``warmup 0.25``: the other way;
- ``thresholds+``: thresholds 0/1/2/3/4/8/16/never;
- ``shares 0/.5/.9``, ``warm-up counts applied``, ``both old``: this branch's two changes to
  the defaults undone one at a time and together (pinned shares 0/0.5/0.9; the store given the
  counts of the tuning part's first half, as size_cache stored before).

The ratio is against the best of the equal / by-size / by-lookups splits with plain CLOCK
(independent of the variant). Every variant tried is reported: picking the best one after
seeing these held-out figures would be a choice made on the held-out queries.

    python benchmarks/experiments/exp_sizing_variants.py \
        [--workloads criteo-8k avazu-9k synthetic-5q]

Writes benchmarks/results/sizing_variants.{md,json} (``--name`` for another name).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench  # noqa: F401 - benchmarks/ on the import path
import bench_sizing as bs

import bandstore
from bandstore.demo import create_store_for_trace

NEVER = bandstore.NEVER
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "warmup 0.75": {"warmup": 0.75},
    "warmup 0.25": {"warmup": 0.25},
    "thresholds+": {"thresholds": (0, 1, 2, 3, 4, 8, 16, NEVER)},
    # this branch's two changes, one at a time
    "shares 0/.5/.9": {"pinned_shares": (0.0, 0.5, 0.9)},
    "warm-up counts applied": {"apply_counts": "warmup"},
    "both old": {"pinned_shares": (0.0, 0.5, 0.9), "apply_counts": "warmup"},
}
WORKLOADS = {
    "criteo-8k": lambda seed: bs.load_real("criteo-8k"),
    "avazu-9k": lambda seed: bs.load_real("avazu-9k"),
    # bench_sizing.py --quick's synthetic workload (1k-1M rows, 20k queries)
    "synthetic-5q": lambda seed: bs.synthetic_workload(1_000_000, 20_000, seed),
    "synthetic-5": lambda seed: bs.synthetic_workload(10_000_000, 100_000, seed),
}


def run(path: Path, trace, fraction: float, variants: list[str]) -> dict[str, Any]:
    tune, held = trace.split(0.8)
    with bandstore.open(path, writable=True) as store:
        budget = int(fraction * bs.table_bytes(store))
        split_bytes = bs.splits(store, tune, budget)
    clock = {}
    with bandstore.open(path) as store:
        for label, alloc in split_bytes.items():
            for n, b in alloc.items():
                store.configure_cache(n, cache_bytes=b, threshold=NEVER, pinned_share=0.0)
            clock[label] = bs.measure(store, tune, held)["total"]["blocks_read"]
    best_clock = min(clock.values())
    out: dict[str, Any] = {"budget": budget, "clock_splits": clock, "variants": {}}
    for name in variants:
        kw = VARIANTS[name]
        t0 = time.perf_counter()
        with bandstore.open(path, writable=True) as store:
            r = bs.size_cache_variant(store, tune, budget, kw, apply=True, progress=False)
        with bandstore.open(path) as store:
            m = bs.measure(store, tune, held)
        blocks = m["total"]["blocks_read"]
        out["variants"][name] = {
            "blocks": blocks,
            "per_1000": 1000.0 * blocks / m["total"]["lookups"],
            "ratio_vs_best_clock_split": best_clock / blocks if blocks else float("inf"),
            "seconds": time.perf_counter() - t0,
            "chosen": {
                n: [t.cache_bytes, t.threshold, t.pinned_share] for n, t in r.tables.items()
            },  # fmt: skip
        }
        ratio = out["variants"][name]["ratio_vs_best_clock_split"]
        bs.log(f"  {fraction:.0%} {name}: {ratio:.3f}x")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", choices=list(WORKLOADS),
                    default=["criteo-8k", "avazu-9k", "synthetic-5q"])  # fmt: skip
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.2])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--name", default="sizing_variants", help="results file name (no suffix)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cmd = " ".join(["python benchmarks/experiments/exp_sizing_variants.py",
                    *(sys.argv[1:] if argv is None else argv)])  # fmt: skip
    res: dict[str, Any] = {"command": cmd, "code_commit": bs.git("rev-parse", "--short", "HEAD"),
                           "workloads": {}}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="exp-sizing-"))
    try:
        for wl in args.workloads:
            trace = WORKLOADS[wl](args.seed)
            bs.log(f"{wl}: {len(trace.table_names)} tables, {trace.n_lookups():,} lookups")
            path = tmp / wl
            create_store_for_trace(path, trace, dim=bs.DIM, seed=args.seed, progress=False).close()
            res["workloads"][wl] = {
                f"{f:g}": run(path, trace, f, args.variants) for f in args.fractions
            }
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    L = [f"# size_cache variants, held-out blocks read\n\n`{cmd}` at {res['code_commit']}. "
         "Protocol of bench_sizing.py's allocation section; ratio = blocks of the best "
         "plain-CLOCK split / blocks of the variant's tuned allocation (higher is better). "
         "Every variant tried is listed.\n"]  # fmt: skip
    names = args.variants
    L.append("| workload | budget | " + " | ".join(names) + " |")
    L.append("|---|---|" + "---|" * len(names))
    for wl, by_f in res["workloads"].items():
        for f, r in by_f.items():
            cells = " | ".join(
                f"{r['variants'][n]['ratio_vs_best_clock_split']:.3f}x "
                f"({r['variants'][n]['per_1000']:.1f})"
                for n in names
            )
            L.append(f"| {wl} | {float(f):.0%} | {cells} |")
    L.append("\n(in parentheses: blocks read per 1000 held-out lookups)\n")
    md = "\n".join(L)
    (bs.RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=1, default=float))
    (bs.RESULTS / f"{args.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
