"""How many fewer blocks does a co-access layout read, on held-out queries?

For each trace with multi-row queries (amazon-book, lastfm-2k, ml-latest-small sessions from
../shared/data, synthetic traces of strong and weak co-access with about 10 lookups per row
read, and a long log of the strong one with 4x the queries): split by query position
(80% tuning, the later 20% held out; amazon-book and lastfm have no time order, so their
queries are shuffled with a fixed seed first), build each layout from the tuning part only,
choose the admission threshold and pinned share on the tuning part, and count blocks read per
1000 held-out lookups by exact simulation of the store's cache (warmed by the tuning part), for
a 64-dim float32 table (16 rows per 4 KB block):
- naive: identity layout, plain CLOCK, no neighbour admission, nothing pinned (what a store
  without co-access layout or admission does);
- policy only: identity layout with the tuned policy (what the policy alone is worth);
- each layout method with its tuned policy; ``oracle`` (synthetic only): the generator's
  communities packed into blocks, an upper bound for the layout; ``oracle (seen)``: the same
  for the rows read in the tuning part only (the rows never read there after them, in id
  order), the bound for a layout learned from the tuning part;
- ``auto``: what ``bandstore relayout`` would commit, chosen from the tuning part alone (an
  inner split: layouts of every configuration, method x cold-row placement x recency
  half-life, built on its first 75% and scored on its last 25%; the chosen configuration
  rebuilt on the whole tuning part), at each DRAM size. ``best`` (the method with the fewest
  held-out blocks) is chosen in hindsight on the held-out part: a bound, not a decision.
At DRAM = 10% of the table, and over DRAM from 1% to 50% (plot). metis and hypergraph leave
out of the partition the rows the cache holds (``hot_fraction`` = the DRAM share), as
``relayout`` builds them.

    python benchmarks/bench_layout.py            # all traces (a few minutes)
    python benchmarks/bench_layout.py --quick    # smaller synthetic traces, fewer DRAM points
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from paths import DATA, RESULTS

from bandstore.kernels.cache import NEVER
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.synth import communities, synth
from bandstore.traces.trace import Trace
from bandstore.tune.layout import build_layout
from bandstore.tune.relayout_job import (
    LayoutTarget,
    Scoring,
    cache_share,
    choose_configurations,
    evaluate_choice,
    evaluate_layout,
    split_point,
    transfer_configuration,
)
from bandstore.tune.reports import jsonable

DIM, RPB, BLOCK, ROW_BYTES = 64, 16, 4096, 256
METHODS = ("frequency", "metis", "hypergraph")
ORACLES = ("oracle (seen)", "oracle")
BATCH = 64
LONG = 4  # the long synthetic log has LONG x the queries of the sparse ones


def real_traces() -> dict[str, tuple[Trace, str]]:
    from bandstore.traces.formats import convert

    out = {}
    sources = {
        "amazon-book": ("lightgcn", DATA / "amazon-book" / "test.txt", True),
        "lastfm-2k": ("lastfm", DATA / "lastfm-2k" / "user_artists.dat", True),
        "ml-latest-small": ("movielens", DATA / "ml-latest-small" / "ratings.csv", False),
    }
    for name, (fmt, path, shuffle) in sources.items():
        if not path.is_file():
            print(f"skipping {name}: {path} not found")
            continue
        trace = convert(fmt, path)
        if shuffle:  # no time order in the file: a random split by query
            trace = trace.take(np.random.default_rng(0).permutation(trace.n_queries))
        out[name] = (trace, trace.table_names[0])
    return out


def synth_traces(quick: bool) -> dict[str, tuple[Trace, str, np.ndarray]]:
    """The sparse logs (about 10 lookups per row read in the tuning part) and a long log of the
    strong one (LONG x the queries: about 30 lookups per row read, still far fewer than a
    production log), same generator and parameters otherwise. Values: (trace, table,
    communities of the rows)."""
    rows, queries = (50_000, 20_000) if quick else (200_000, 80_000)
    out = {}
    for label, co, n in (
        ("synth strong co-access", 0.9, queries),
        ("synth weak co-access", 0.3, queries),
        (f"synth strong co-access, long log ({LONG}x)", 0.9, LONG * queries),
    ):
        t = synth({"item": rows}, n, pooling=20, zipf=1.0, community_size=RPB, co_access=co)
        out[label] = (t, "item", communities("item", rows, community_size=RPB, seed=0))
    return out


def oracles(comm: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """``oracle``: the generator's communities packed into blocks (an upper bound for any
    layout). ``oracle (seen)``: the same for the rows read in the tuning part, the others after
    them in id order: the best a layout learned from the tuning part could do, since it knows
    nothing of the rows it never saw (the rest of the gap to ``oracle`` is out of reach)."""
    rows = len(comm)
    out = {}
    for name, keys in (
        ("oracle", (np.arange(rows), comm)),
        ("oracle (seen)", (np.arange(rows), np.where(counts > 0, comm, comm.max() + 1))),
    ):
        layout = np.empty(rows, dtype=np.int64)
        layout[np.lexsort(keys)] = np.arange(rows)
        out[name] = layout
    return out


def target(rows: int, dram: int) -> LayoutTarget:
    """The benchmark's table geometry (DIM-dim float32 rows, RPB per BLOCK) with ``dram``."""
    return LayoutTarget(
        rows=rows, rows_per_block=RPB, dim=DIM, block_size=BLOCK, row_bytes=ROW_BYTES,
        cache_bytes=dram,
    )  # fmt: skip


def evaluate(trace, table, split, layout, counts, dram, policy=None):
    """evaluate_layout at ``dram``, the policy chosen among the defaults or ``policy``
    (thresholds, pinned shares)."""
    scoring = Scoring(BATCH) if policy is None else Scoring(BATCH, *policy)
    return evaluate_layout(
        trace, table, split, layout, counts, target(trace.num_rows[table], dram), scoring
    )


def evaluate_auto(trace, table, split, dram, inner_layouts, layouts):
    """relayout's auto at this DRAM size: chosen on the tuning part, reported on held-out."""
    tgt, scoring = target(trace.num_rows[table], dram), Scoring(BATCH)
    t0 = time.perf_counter()
    choice = choose_configurations(
        trace.query_slice(0, split), table, tgt, scoring, layouts=inner_layouts
    )
    cfg = transfer_configuration(choice, split)
    r, _, _ = evaluate_choice(trace, table, split, cfg, tgt, scoring, layouts=layouts)
    r["choose_seconds"] = time.perf_counter() - t0
    r["inner"] = choice["configurations"]
    return r


def run_trace(name, trace, table, comm, fractions):
    split = split_point(trace, 0.2, BATCH)
    tune = trace.query_slice(0, split)
    rows = trace.num_rows[table]
    counts = np.minimum(tune.access_counts(table), 2**31 - 1).astype(np.int32)
    idx, off = tune.table(table)
    layouts = {"identity": np.arange(rows, dtype=np.int64)}
    seconds = {}
    for m in METHODS:
        t0 = time.perf_counter()
        layouts[m] = build_layout(m, idx, off, rows, RPB)
        seconds[m] = time.perf_counter() - t0
    # the co-access methods leave out the rows the cache holds, as relayout builds them
    by_share: dict[tuple[str, float], np.ndarray] = {}

    def layout_at(m: str, dram: int) -> np.ndarray:
        share = cache_share(dram, DIM, rows)
        if m not in ("metis", "hypergraph") or abs(share - 0.1) < 0.5 / rows:
            return layouts[m]
        if (m, share) not in by_share:
            by_share[m, share] = build_layout(m, idx, off, rows, RPB, hot_fraction=share)
        return by_share[m, share]

    # auto's builds, kept across DRAM sizes (keyed by the hot fraction, the cache's share)
    inner_layouts: dict = {}
    auto_layouts: dict = {}
    auto_at: dict[float, dict] = {}
    if comm is not None:
        layouts.update(oracles(comm, counts))
    curves: dict[str, dict[float, float]] = {}
    at10: dict[str, dict] = {}
    for frac in fractions:
        dram = int(frac * rows) * cache_row_bytes(DIM)
        contenders = {
            "naive": evaluate(
                trace, table, split, layouts["identity"], counts, dram, ([NEVER], [0.0])
            ),  # fmt: skip
            "policy only": evaluate(trace, table, split, layouts["identity"], counts, dram),
        }
        for m in (*METHODS, *(ORACLES if comm is not None else ())):
            lay = layout_at(m, dram) if m in METHODS else layouts[m]
            contenders[m] = evaluate(trace, table, split, lay, counts, dram)
        contenders["auto"] = evaluate_auto(trace, table, split, dram, inner_layouts, auto_layouts)
        auto_at[frac] = contenders["auto"]
        for k, r in contenders.items():
            curves.setdefault(k, {})[frac] = r["heldout_blocks_per_1000_lookups"]
        if abs(frac - 0.10) < 1e-9:
            at10 = contenders
    naive = at10["naive"]["heldout_blocks_per_1000_lookups"]
    best = min(METHODS, key=lambda m: at10[m]["heldout_blocks_per_1000_lookups"])
    return {
        "trace": name,
        "rows": rows,
        "tuning_queries": split,
        "heldout_queries": trace.n_queries - split,
        "lookups_per_row_in_tuning": float(idx.size / max(1, np.count_nonzero(counts))),
        "at_10pct": {
            k: {
                "blocks_per_1000": r["heldout_blocks_per_1000_lookups"],
                "hit_ratio": r["heldout_hit_ratio"],
                "threshold": r["threshold"],
                "pinned_share": r["pinned_share"],
                "vs_naive": naive / r["heldout_blocks_per_1000_lookups"],
            }
            for k, r in at10.items()
        },
        "best_method": best,
        "auto": {
            str(frac): {
                "configuration": r["configuration"],
                "blocks_per_1000": r["heldout_blocks_per_1000_lookups"],
                "choose_seconds": r["choose_seconds"],
                "inner": r["inner"],
            }
            for frac, r in auto_at.items()
        },
        "auto_vs_naive": naive / at10["auto"]["heldout_blocks_per_1000_lookups"],
        "layout_over_policy": at10["policy only"]["heldout_blocks_per_1000_lookups"]
        / at10[best]["heldout_blocks_per_1000_lookups"],
        "auto_over_policy": at10["policy only"]["heldout_blocks_per_1000_lookups"]
        / at10["auto"]["heldout_blocks_per_1000_lookups"],
        "build_seconds": seconds,
        "curves": curves,
    }


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install bandstore[plot]): no plot")
        return
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for k, pts in res["curves"].items():
            xs = sorted(pts)
            ax.plot([100 * x for x in xs], [pts[x] for x in xs], marker="o", ms=3, label=k)
        ax.set_title(res["trace"], fontsize=9)
        ax.set_xlabel("DRAM, % of table")
        ax.set_xscale("log")
        ax.set_ylabel("blocks / 1000 held-out lookups")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="run the traces whose name contains this (no files written)")
    args = ap.parse_args()
    fractions = (0.01, 0.1, 0.5) if args.quick else (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    jobs = [(n, t, tb, None) for n, (t, tb) in real_traces().items()]
    jobs += [(n, t, tb, o) for n, (t, tb, o) in synth_traces(args.quick).items()]
    if args.only:
        jobs = [j for j in jobs if args.only in j[0]]
    results = []
    for name, trace, table, comm in jobs:
        t0 = time.perf_counter()
        # JSON's spelling of thresholds ("never") from here on, for the files and the table.
        results.append(jsonable(run_trace(name, trace, table, comm, fractions)))
        a = results[-1]["at_10pct"]
        ratios = ", ".join(f"{k} {v['vs_naive']:.2f}x" for k, v in a.items())
        print(f"{name}: {time.perf_counter() - t0:.1f} s; at 10%: {ratios}", flush=True)
    suffix = "_quick" if args.quick else ""
    if not args.only:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"layout{suffix}.json").write_text(json.dumps(results, indent=2, default=str))
        plot(results, RESULTS / f"layout{suffix}.png")
    cmd = "python benchmarks/bench_layout.py" + (" --quick" if args.quick else "")
    lines = [
        "# Blocks read per 1000 held-out lookups, DRAM = 10% of the table",
        "",
        f"Reproduce: `{cmd}`. 64-dim float32 rows, 16 per 4 KB block; exact simulation of the "
        "store's cache, warmed by the tuning queries; policy (threshold t, pinned share p) "
        "chosen on the tuning queries. Ratios are naive / contender.",
        "",
        "| trace | rows | lookups/row (tuning) | naive | policy only | frequency | metis "
        "| hypergraph | oracle (seen) | oracle | auto | auto's choice "
        "| best vs naive (hindsight) | layout over policy (best) | layout over policy (auto) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        a = r["at_10pct"]

        def cell(k, a=a):
            if k not in a:
                return "-"
            return f"{a[k]['blocks_per_1000']:.1f} ({a[k]['vs_naive']:.2f}x)"

        best = r["best_method"]
        c = r["auto"][str(0.1)]["configuration"]
        how = ", ".join(
            [f"half-life {c['half_life']:.3g}" if c["half_life"] is not None else "no recency"]
            + ([f"cold {c['cold']}"] if c["cold"] is not None else [])
            + [f"t {c['threshold']}"]
            + [f"p {c['pinned_share']}"]
        )
        lines.append(
            f"| {r['trace']} | {r['rows']:,} | {r['lookups_per_row_in_tuning']:.1f} | "
            f"{cell('naive')} | {cell('policy only')} | {cell('frequency')} | {cell('metis')} | "
            f"{cell('hypergraph')} | {cell('oracle (seen)')} | {cell('oracle')} | {cell('auto')} "
            f"| {c['method']} ({how}) | {a[best]['vs_naive']:.2f}x ({best}) "
            f"| {r['layout_over_policy']:.2f}x | {r['auto_over_policy']:.2f}x |"
        )
    lines += [
        "",
        "auto: what `bandstore relayout` commits, chosen on the tuning queries alone (layouts "
        "of every configuration built on their first 75%, scored on their last 25%; the choice "
        "rebuilt on all of them), reported on the held-out ones. best: the method with the "
        "fewest held-out blocks, chosen in hindsight. t: admission threshold, p: pinned share. "
        "layout over policy: policy only / best (or auto), i.e. what the layout adds over the "
        "best policy on the identity layout. oracle: the generator's communities packed into "
        "blocks; oracle (seen): the same for the rows read in the tuning part only, the rows "
        "never read there after them in id order (what a layout learned from the tuning part "
        "could at best do). The long synthetic log is the strong one with "
        f"{LONG}x the queries (more lookups per row, closer to a production log).",
        "",
        f"Curves over DRAM: `layout{suffix}.png`.",
    ]
    text = "\n".join(lines) + "\n"
    if not args.only:
        (RESULTS / f"layout{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
