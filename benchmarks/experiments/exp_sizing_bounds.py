"""Experiment: how far could any cache go on the held-out queries? Bounds for issue 4's bar.

Protocol of bench_sizing.py's allocation section (first 80% of the queries tune and warm the
caches, the last 20% are held out; batches of 256 queries; dim 16 float32, 4 KB blocks,
identity layout as ``create_store_for_trace`` writes it). Per workload, on the held-out part:

- ``compulsory rows``: held-out lookups of rows never read in the tuning part, and the distinct
  such rows;
- ``unbounded, row admission``: blocks an unbounded cache reads when it admits only the rows
  asked for (warmed on the tuning part): the blocks of rows read for the first time, per batch;
- ``unbounded, block admission``: blocks an unbounded cache reads when it admits whole blocks:
  the distinct held-out blocks never read in the tuning part. No cache warmed on the tuning
  part reads fewer (the floor of every policy at every budget);
- at each budget (5% and 20% of the tables' bytes):
  ``clairvoyant store policy``: the store's own policy family (CLOCK + neighbour threshold +
  pinned share) given the *held-out* access counts (pinning and admission by the future) and a
  budget split chosen by the knapsack on exact *held-out* curves: what the allocator could
  reach with perfect counts and perfect curves;
  ``oracle split, tuning counts``: the same knapsack on exact held-out curves, with the tuning
  part's counts (what the store has): the loss of choosing on the tuning part alone;
  ``Belady rows``: MIN with bypass on rows, one cache of the whole budget shared by every table
  (capacity = budget / row cost), knowing the whole future; it minimizes row misses of any
  demand-only row cache (no neighbour admission); the blocks those misses read per batch are
  reported (a reference, not a bound on policies that admit neighbours).

Ratios are the best plain-CLOCK split (measured on the real store by bench_sizing.py, taken
from ``benchmarks/results/sizing.json``) divided by the bound's blocks: the largest ratio that
policy could show. A ratio below 1.3x at a budget means the bar is out of reach there for
that policy class.

    python benchmarks/experiments/exp_sizing_bounds.py [--workloads criteo-8k avazu-9k synthetic-5q]

Writes benchmarks/results/sizing_bounds.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import _bench  # noqa: F401 - benchmarks/ on the import path
import bench_sizing as bs
import numpy as np
from numba import njit

from bandstore.options import SimOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.trace import Trace
from bandstore.tune.sim import allocate, simulate

NEVER = bs.NEVER
RPB = 4096 // (4 * bs.DIM)
WORKLOADS = {
    "criteo-8k": lambda seed: bs.load_real("criteo-8k"),
    "avazu-9k": lambda seed: bs.load_real("avazu-9k"),
    "synthetic-5q": lambda seed: bs.synthetic_workload(1_000_000, 20_000, seed),
    "synthetic-5": lambda seed: bs.synthetic_workload(10_000_000, 100_000, seed),
    "dlrm-26": lambda seed: bs.dlrm_workload(10_000_000, 10_000, seed),
}
THRESHOLDS = (0, 1, 2, 4, NEVER)
SHARES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


@njit(nogil=True, cache=True)
def _belady(keys, batch_of, first_measured, capacity, block_key, missed_block):
    """MIN with bypass over ``keys`` (global row keys in trace order); return measured misses.

    ``missed_block[i]`` is set to True where lookup ``i`` (from ``first_measured`` on) misses;
    the caller counts distinct blocks per batch.
    """
    n = keys.shape[0]
    nk = 0
    for i in range(n):
        if keys[i] + 1 > nk:
            nk = keys[i] + 1
    nxt = np.empty(n, dtype=np.int64)
    last = np.full(nk, n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        nxt[i] = last[keys[i]]
        last[keys[i]] = i
    in_cache = np.zeros(nk, dtype=np.bool_)
    cur_next = np.zeros(nk, dtype=np.int64)
    # max-heap of (next use, key), lazy deletion
    heap_t = np.empty(n + 1, dtype=np.int64)
    heap_k = np.empty(n + 1, dtype=np.int64)
    hn = 0
    size = 0
    misses = 0
    for i in range(n):
        k = keys[i]
        t = nxt[i]
        if in_cache[k]:
            cur_next[k] = t
        else:
            if i >= first_measured:
                misses += 1
                missed_block[i] = True
            if capacity == 0:
                continue
            if size >= capacity:
                # pop stale entries
                while True:
                    tk = heap_k[0]
                    tt = heap_t[0]
                    if in_cache[tk] and cur_next[tk] == tt:
                        break
                    hn -= 1
                    heap_t[0] = heap_t[hn]
                    heap_k[0] = heap_k[hn]
                    j = 0
                    while True:
                        a = 2 * j + 1
                        if a >= hn:
                            break
                        if a + 1 < hn and heap_t[a + 1] > heap_t[a]:
                            a += 1
                        if heap_t[a] > heap_t[j]:
                            heap_t[a], heap_t[j] = heap_t[j], heap_t[a]
                            heap_k[a], heap_k[j] = heap_k[j], heap_k[a]
                            j = a
                        else:
                            break
                if t >= heap_t[0]:
                    continue  # bypass: used no sooner than the farthest cached row
                in_cache[heap_k[0]] = False
                size -= 1
            in_cache[k] = True
            cur_next[k] = t
            size += 1
        # push (t, k)
        if hn >= heap_t.shape[0]:
            # rebuild from live entries (never needed: at most one push per lookup)
            continue
        j = hn
        heap_t[j] = t
        heap_k[j] = k
        hn += 1
        while j > 0:
            p = (j - 1) // 2
            if heap_t[p] < heap_t[j]:
                heap_t[p], heap_t[j] = heap_t[j], heap_t[p]
                heap_k[p], heap_k[j] = heap_k[j], heap_k[p]
                j = p
            else:
                break
    return misses


def belady_blocks(trace: Trace, n_tune: int, capacity: int) -> tuple[int, int]:
    """Row misses and blocks read on the held-out part by MIN with bypass, one shared cache."""
    names = trace.table_names
    q_of, keys, blocks = [], [], []
    base = 0
    for t_i, name in enumerate(names):
        idx, off = trace.table(name)
        q = np.repeat(np.arange(off.size - 1), np.diff(off))
        q_of.append(q)
        keys.append(idx + base)
        blocks.append(idx // RPB + (t_i << 40))
        base += trace.num_rows[name]
    q = np.concatenate(q_of)
    order = np.argsort(q, kind="stable")  # query order; within a query, table by table
    q, keys, blocks = q[order], np.concatenate(keys)[order], np.concatenate(blocks)[order]
    batch = np.where(q < n_tune, q // bs.BATCH, (n_tune + bs.BATCH - 1) // bs.BATCH
                     + (q - n_tune) // bs.BATCH)  # fmt: skip
    first = int(np.searchsorted(q, n_tune))
    missed = np.zeros(keys.size, dtype=np.bool_)
    misses = _belady(keys, batch, first, int(capacity), blocks, missed)
    m = np.flatnonzero(missed)
    blk = np.unique(np.stack([batch[m], blocks[m]]), axis=1).shape[1] if m.size else 0
    return int(misses), int(blk)


def heldout_curves(trace: Trace, n_tune: int, counts: str, sample_rate: float):
    """Exact (or sampled) curves of every table on the held-out part, warmed on the tuning part."""
    held_from = n_tune
    out = {}
    for name in trace.table_names:
        idx, off = trace.table(name)
        rows = trace.num_rows[name]
        if counts == "heldout":
            c = np.bincount(idx[off[held_from] :], minlength=rows)
        else:
            c = np.bincount(idx[: off[held_from]], minlength=rows)
        grid = SimOptions(
            thresholds=THRESHOLDS,
            pinned_shares=SHARES,
            batch_size=bs.BATCH,
            sample_rate=sample_rate,
        )
        out[name] = simulate(idx, off, np.arange(rows, dtype=np.int64), RPB, bs.DIM, c,
                             options=grid, warmup_queries=n_tune, table=name,
                             check=False)  # fmt: skip
    return out


def run(wl: str, trace: Trace, fractions: list[float], sample_rate: float,
        ref: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    n_tune = int(round(0.8 * trace.n_queries))
    res: dict[str, Any] = {"queries": trace.n_queries, "tune_queries": n_tune}
    held_lookups = comp_lookups = comp_rows = ub_block = 0
    for name in trace.table_names:
        idx, off = trace.table(name)
        rows = trace.num_rows[name]
        tune_ids, held_ids = idx[: off[n_tune]], idx[off[n_tune] :]
        seen = np.zeros(rows, dtype=bool)
        seen[tune_ids] = True
        held_lookups += held_ids.size
        comp_lookups += int(np.count_nonzero(~seen[held_ids]))
        comp_rows += np.unique(held_ids[~seen[held_ids]]).size
        seen_b = np.zeros(rows // RPB + 1, dtype=bool)
        seen_b[tune_ids // RPB] = True
        hb = np.unique(held_ids // RPB)
        ub_block += int(np.count_nonzero(~seen_b[hb]))
    res.update(held_lookups=held_lookups, compulsory_lookups=comp_lookups,
               compulsory_rows=comp_rows, unbounded_block_admission=ub_block)  # fmt: skip
    per = 1000.0 / held_lookups
    bs.log(f"  {wl}: held-out lookups {held_lookups:,}; compulsory lookups {comp_lookups:,}; "
           f"unbounded, block admission {ub_block * per:.1f} / 1000")  # fmt: skip
    # unbounded, row admission: MIN with infinite capacity == demand caching of everything
    _, ub_row = belady_blocks(trace, n_tune, 1 << 62)
    res["unbounded_row_admission"] = ub_row
    t0 = time.perf_counter()
    cv_future = heldout_curves(trace, n_tune, "heldout", sample_rate)
    cv_tune = heldout_curves(trace, n_tune, "tune", sample_rate)
    res["simulate_seconds"] = time.perf_counter() - t0
    total_bytes = sum(trace.num_rows[n] * cache_row_bytes(bs.DIM) for n in trace.table_names)
    res["budgets"] = {}
    for f in fractions:
        budget = int(f * total_bytes)
        r: dict[str, Any] = {"budget": budget}
        for label, cv in (("clairvoyant", cv_future), ("oracle_split_tune_counts", cv_tune)):
            ch = allocate(cv, budget)
            r[label] = float(sum(c["predicted_blocks_read"] for c in ch.values()))
        cap = budget // cache_row_bytes(bs.DIM)
        r["belady_row_misses"], r["belady_blocks"] = belady_blocks(trace, n_tune, cap)
        best = ref.get(f"{f:g}")
        if best:
            r["best_clock_split"] = best["best_clock"]
            r["tuned"] = best["tuned"]
        res["budgets"][f"{f:g}"] = r
        bs.log(f"  {f:.0%}: clairvoyant {r['clairvoyant'] * per:.1f}, oracle split "
               f"{r['oracle_split_tune_counts'] * per:.1f}, Belady rows "
               f"{r['belady_blocks'] * per:.1f} / 1000")  # fmt: skip
    return res


def reference(wl: str) -> dict[str, Any]:
    """Best plain-CLOCK split and tuned blocks from the committed bench_sizing results."""
    path = bs.RESULTS / "sizing.json"
    if not path.exists():
        return {}
    alloc = json.loads(path.read_text()).get("allocation", {}).get(wl.rstrip("q"), {})
    if wl.endswith("q") or "runs" not in alloc:
        return {}
    out = {}
    for a in alloc["runs"]:
        c = a["contenders"]
        out[f"{a['fraction']:g}"] = {
            "best_clock": min(v["blocks"] for k, v in c.items() if k.endswith("clock")),
            "tuned": c["tuned"]["blocks"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", choices=list(WORKLOADS),
                    default=["criteo-8k", "avazu-9k"])  # fmt: skip
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.2])
    ap.add_argument(
        "--sample-rate",
        type=float,
        default=1.0,
        help="1 = exact curves (default); lower: SHARDS-sampled, an estimate",
    )
    ap.add_argument("--name", default="sizing_bounds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cmd = " ".join(["python benchmarks/experiments/exp_sizing_bounds.py",
                    *(sys.argv[1:] if argv is None else argv)])  # fmt: skip
    out: dict[str, Any] = {"command": cmd, "code_commit": bs.git("rev-parse", "--short", "HEAD"),
                           "sample_rate": args.sample_rate, "workloads": {}}  # fmt: skip
    path = bs.RESULTS / f"{args.name}.json"
    if path.exists():  # keep workloads of earlier runs not rerun now
        old = json.loads(path.read_text())
        out["workloads"] = old.get("workloads", {})
    for wl in args.workloads:
        trace = WORKLOADS[wl](args.seed)
        bs.log(f"{wl}: {len(trace.table_names)} tables, {trace.n_lookups():,} lookups")
        r = run(wl, trace, args.fractions, args.sample_rate, reference(wl))
        r["command"], r["code_commit"] = cmd, out["code_commit"]
        out["workloads"][wl] = r
        path.write_text(json.dumps(out, indent=1, default=float))
    (bs.RESULTS / f"{args.name}.md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(out: dict[str, Any]) -> str:
    L = ["# Bounds on held-out blocks read (cache sizing, issue 4)\n",
         "Protocol of bench_sizing.py's allocation section: first 80% of the queries tune and "
         "warm, last 20% held out, batches of 256, dim 16 float32, 4 KB blocks, identity "
         "layout. Blocks read per 1000 held-out lookups. `best split` and `tuned`: measured "
         "on the real store by bench_sizing.py (sizing.json). `unbounded, blocks`: an "
         "unbounded cache admitting whole blocks (held-out blocks never read in the tuning "
         "part): no cache that holds only rows of blocks read before reads fewer, at any "
         "budget (every store policy, since pinning and admission go by the tuning part's "
         "counts). "
         "`unbounded, rows`: an unbounded cache admitting only the rows asked for. "
         "`clairvoyant`: the store's policy family (CLOCK, neighbour threshold, pinned share) "
         "with the held-out part's own access counts and the budget split by the knapsack on "
         "exact held-out curves. `oracle split`: the same with the tuning part's counts (what "
         "the store has). `Belady rows`: MIN with bypass on rows in one cache of the whole "
         "budget, the blocks its misses read (demand rows only, no neighbour admission: a "
         "reference, not a bound on neighbour-admitting policies). Ratios: best split / the "
         "figure: the largest ratio that policy could show (`oracle`: the store's policies "
         "with the counts it has, sizes and policies chosen on the held-out queries "
         "themselves; `clairvoyant`: knowing the held-out counts).\n"]  # fmt: skip
    L.append("| workload | held-out lookups | compulsory lookups (rows) | unbounded, rows "
             "| unbounded, blocks | budget | best split | tuned | oracle split | clairvoyant "
             "| Belady rows | ratio oracle | ratio Belady | ratio clairvoyant | runs |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for wl, r in out["workloads"].items():
        per = 1000.0 / r["held_lookups"]
        for f, b in r["budgets"].items():
            best = b.get("best_clock_split")
            ratio = " | ".join(
                f"{best / b[k]:.2f}x" if best and b[k] else "-"
                for k in ("oracle_split_tune_counts", "belady_blocks", "clairvoyant")
            )
            L.append(
                f"| {wl} | {r['held_lookups']:,} | {r['compulsory_lookups']:,} "
                f"({r['compulsory_rows']:,}) | {r['unbounded_row_admission'] * per:.1f} | "
                f"{r['unbounded_block_admission'] * per:.1f} | {float(f):.0%} | "
                f"{best * per:.1f} | {b['tuned'] * per:.1f} | " if best else
                f"| {wl} | {r['held_lookups']:,} | {r['compulsory_lookups']:,} "
                f"({r['compulsory_rows']:,}) | {r['unbounded_row_admission'] * per:.1f} | "
                f"{r['unbounded_block_admission'] * per:.1f} | {float(f):.0%} | - | - | "
            )  # fmt: skip
            L[-1] += (f"{b['oracle_split_tune_counts'] * per:.1f} | {b['clairvoyant'] * per:.1f} "
                      f"| {b['belady_blocks'] * per:.1f} | {ratio} | `{r['command']}` at "
                      f"{r['code_commit']} |")  # fmt: skip
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
