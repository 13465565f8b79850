"""How good are the simulated cache sizes: curve accuracy, prediction vs reality, tuned vs splits.

1. Accuracy of sampled curves (SHARDS-style spatial sampling) against exact ones: one synthetic
   table (10M rows, 10M lookups; ``--quick``: 1M rows, 2M lookups) and every table of the real
   traces in ../shared/data. Per (threshold, pinned share, size) point: mean absolute error of
   the miss ratio, mean relative error of blocks read, and the speed-up of the sampled run over
   the exact one (wall time, same threads, same configurations). Sampling schemes (SHARDS hash,
   stratified) x estimators (plain, SHARDS_adj, Che ratio) at the same rate, several seeds.
2. Prediction vs reality: ``size_cache`` (default settings: R = 0.01, stratified, Che, counts
   and warm-up from the first 70%) on a trace, applied to a real store, the same trace
   replayed through ``lookup_many`` (that part to warm): blocks read on the rest,
   measured vs predicted. And on held-out queries: sized on the first 80%, caches warmed on
   them, the last 20% replayed; predicted = blocks per lookup on the tuning part x lookups.
3. Tuned allocation vs splits of the same total budget (held-out blocks read, real store,
   caches warmed on the tuning part): equal, proportional to table size, proportional to
   lookups; each split with the peers' policy (plain CLOCK: no neighbour admission, nothing
   pinned) and with the best threshold and pinned share the simulator finds at its size (so
   the split alone is compared). Workloads: criteo-8k and avazu-9k as they are, and synthetic
   traces with tables from 1k to 10M rows.

    python benchmarks/bench_sizing.py            # full (about 15-25 minutes on 2 cores)
    python benchmarks/bench_sizing.py --quick    # smaller (a few minutes)
    python benchmarks/bench_sizing.py --reuse-accuracy benchmarks/results/sizing.json
        # sections 1 and 2 carried over from an earlier run's JSON (said so in the report,
        # with the commit that wrote each); only section 3 is run. With --only, the sections
        # it does not name are carried over, e.g. --only prediction reruns 2's second half.

Writes benchmarks/results/sizing[_quick].{md,json} and sizing[_quick]_*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from paths import DATA, RESULTS

import bandstore
from bandstore.demo import create_store_for_trace
from bandstore.options import SimOptions, SizingOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.synth import synth
from bandstore.traces.trace import Trace
from bandstore.tune.measure import replay
from bandstore.tune.sim import (
    DEFAULT_EXACT_WINDOW,
    DEFAULT_PINNED_SHARES,
    DEFAULT_WARMUP,
    ESTIMATORS,
    SAMPLINGS,
    Curves,
    simulate,
    size_cache,
)

NEVER = bandstore.NEVER
DIM = 16
BATCH = 256
#: Policies simulated for the accuracy figures (a low and no admission threshold, no pinning
#: and pinning 90% of the cache: the extremes of the default grid).
ACC_THRESHOLDS = (1, NEVER)
ACC_SHARES = (0.0, 0.9)

REAL = {
    "amazon-book": ("lightgcn", "amazon-book/test.txt"),
    "lastfm-2k": ("lastfm", "lastfm-2k/user_artists.dat"),
    "ml-latest-small": ("movielens", "ml-latest-small/ratings.csv"),
    "criteo-8k": ("criteo", "criteo-8k/criteo-8k.tsv"),
    "avazu-9k": ("avazu", "avazu-9k/avazu-9k.csv"),
}


#: The sections --reuse-accuracy can carry over: --only name -> key in the results JSON.
CARRIABLE = {"accuracy": "accuracy_synthetic", "real": "accuracy_real",
             "prediction": "prediction", "allocation": "allocation"}  # fmt: skip
TITLES = {"accuracy_synthetic": "sampled vs exact curves (synthetic table)",
          "accuracy_real": "sampled vs exact curves (real traces)",
          "prediction": "prediction vs reality",
          "allocation": "tuned allocation vs splits"}  # fmt: skip


def git(*args: str, path: Path | None = None) -> str:
    """A git command's output in the repository of ``path`` (default: this file's), or "?"."""
    cwd = (path or Path(__file__)).resolve().parent
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip() or "?"  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "?"


def carry_over(path: Path, keys: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sections ``keys`` of an earlier results JSON, and where each came from.

    A section's origin is the last commit that wrote the file (the run it comes from), or, if
    that run had itself carried the section over, that run's origin for it. When the file holds
    uncommitted changes, the commit's version is not what was read: that is said too.
    """
    old = json.loads(path.read_text())
    keys = [k for k in keys if k in old]
    here = {
        "commit": git("log", "-1", "--format=%h", "--", path.name, path=path),
        "uncommitted_changes": git("status", "--porcelain", "--", path.name, path=path) != "?",
        "command": old.get("command", "?"),
        "load": old.get("load", "?"),
        "pinned_shares": old.get("pinned_shares"),  # size_cache's defaults then, if recorded
        "exact_window": old.get("exact_window"),
        "warmup": old.get("warmup", 0.5),
    }
    earlier = old.get("carried_over") or {}
    prior = earlier.get("sections", {})
    if isinstance(prior, list):  # the first format: one origin for all sections
        prior = {k: {f: earlier.get(f) for f in here} for k in prior}
    sections = {k: prior.get(k, here) for k in keys}
    plots = [p for p in old.get("plots", [])
             if ("accuracy" in Path(p).name and "accuracy_synthetic" in keys)
             or ("curves" in Path(p).name and "allocation" in keys)]  # fmt: skip
    return {k: old[k] for k in keys}, {"path": str(path), "sections": sections, "plots": plots}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_real(name: str) -> Trace | None:
    from bandstore.traces.formats import convert

    fmt, rel = REAL[name]
    path = DATA / rel
    if not path.exists():
        return None
    return convert(fmt, path)


def errors(exact: Curves, sampled: Curves) -> dict[str, float]:
    """MAE of the miss ratio, mean relative error of blocks read (points with > 0 blocks)."""
    mae = float(np.abs(sampled.miss_ratio - exact.miss_ratio).mean())
    ok = exact.blocks_read > 0
    rel = float(np.mean(np.abs(sampled.blocks_read[ok] / exact.blocks_read[ok] - 1.0)))
    return {"mae": mae, "max_abs": float(np.abs(sampled.miss_ratio - exact.miss_ratio).max()),
            "rel_blocks": rel}  # fmt: skip


# ---- 1. accuracy ----------------------------------------------------------------------------
def accuracy_synthetic(rows: int, queries: int, rate: float, seeds: int) -> dict[str, Any]:
    log(f"accuracy: synthetic table of {rows:,} rows, {queries:,} queries")
    trace = synth({"t": rows}, queries, pooling=20, zipf=1.0, community_size=64, co_access=0.8,
                  seed=11)  # fmt: skip
    idx, off = trace.table("t")
    rpb = 4096 // (4 * 32)
    args = (idx, off, np.arange(rows, dtype=np.int64), rpb, 32, trace.access_counts("t"))
    kw = {"thresholds": ACC_THRESHOLDS, "pinned_shares": ACC_SHARES, "batch_size": BATCH}
    t0 = time.perf_counter()
    exact = simulate(*args, options=SimOptions(**kw))
    t_exact = time.perf_counter() - t0
    log(f"  exact: {t_exact:.1f} s, {exact.configurations} configurations")
    variants = []
    for sampling in SAMPLINGS:
        for estimator in ESTIMATORS:
            errs, times, curves = [], [], None
            for seed in range(seeds):
                t0 = time.perf_counter()
                s = simulate(*args, options=SimOptions(
                    sample_rate=rate, min_sampled_blocks=0, max_sampled_lookups=None, seed=seed,
                    sampling=sampling, estimator=estimator, **kw))  # fmt: skip
                times.append(time.perf_counter() - t0)
                errs.append(errors(exact, s))
                curves = curves or s
            row = {
                "sampling": sampling,
                "estimator": estimator,
                "mae": float(np.mean([e["mae"] for e in errs])),
                "mae_worst_seed": float(np.max([e["mae"] for e in errs])),
                "rel_blocks": float(np.mean([e["rel_blocks"] for e in errs])),
                "seconds": float(np.median(times)),
                "speedup": t_exact / float(np.median(times)),
                "sampled_blocks": curves.sampled_blocks,
                "sampled_lookups": curves.sampled_lookups,
            }
            variants.append(row)
            log(f"  {sampling}/{estimator}: MAE {row['mae']:.4f} (worst seed "
                f"{row['mae_worst_seed']:.4f}), speed-up {row['speedup']:.0f}x")  # fmt: skip
            if sampling == "stratified" and estimator == "che":
                best_curves = curves
    return {
        "rows": rows,
        "lookups": int(idx.size),
        "rate": rate,
        "seeds": seeds,
        "exact_seconds": t_exact,
        "configurations": exact.configurations,
        "touched_blocks": exact.touched_blocks,
        "variants": variants,
        "_curves": (exact, best_curves),
    }


def accuracy_real(rates: list[float]) -> dict[str, Any]:
    """Per real trace: lookup-weighted errors over its tables, exact vs sampled time."""
    out: dict[str, Any] = {}
    for name in REAL:
        trace = load_real(name)
        if trace is None:
            out[name] = {"skipped": f"no data at {DATA}"}
            continue
        log(f"accuracy: {name} ({len(trace.table_names)} tables, {trace.n_lookups():,} lookups)")
        rpb = 4096 // (4 * DIM)
        kw = {"thresholds": ACC_THRESHOLDS, "pinned_shares": ACC_SHARES, "batch_size": BATCH}
        exact, t_exact = {}, 0.0
        for tname in trace.table_names:
            idx, off = trace.table(tname)
            rows = trace.num_rows[tname]
            args = (idx, off, np.arange(rows), rpb, DIM, trace.access_counts(tname))
            t0 = time.perf_counter()
            exact[tname] = (simulate(*args, options=SimOptions(**kw)), args)
            t_exact += time.perf_counter() - t0
        res: dict[str, Any] = {"tables": len(trace.table_names), "lookups": trace.n_lookups(),
                               "blocks": int(sum(e.touched_blocks for e, _ in exact.values())),
                               "exact_seconds": t_exact, "rates": {}}  # fmt: skip
        for rate in rates:
            for label, extra in (("fixed", {"min_sampled_blocks": 0, "max_sampled_lookups": None}),
                                 ("default", {})):  # fmt: skip
                maes, rels, w, t_s, eff = [], [], [], 0.0, []
                for e, args in exact.values():
                    t0 = time.perf_counter()
                    s = simulate(*args, options=SimOptions(sample_rate=rate, **extra, **kw))
                    t_s += time.perf_counter() - t0
                    er = errors(e, s)
                    maes.append(er["mae"])
                    rels.append(er["rel_blocks"])
                    w.append(e.lookups)
                    eff.append(s.sample_rate)
                res["rates"][f"{rate:g} {label}"] = {
                    "mae": float(np.average(maes, weights=w)),
                    "rel_blocks": float(np.average(rels, weights=w)),
                    "effective_rate": [float(min(eff)), float(max(eff))],
                    "seconds": t_s,
                    "speedup": t_exact / t_s if t_s else 0.0,
                }
        out[name] = res
    return out


# ---- workloads for 2 and 3 ------------------------------------------------------------------
def synthetic_workload(max_rows: int, queries: int, seed: int) -> Trace:
    """Five tables from 1k to ``max_rows`` rows, with their own pooling and skew."""
    rows = np.geomspace(1000, max_rows, 5).round().astype(int)
    names = [f"t{r:,}".replace(",", "_") for r in rows]
    pool = dict(zip(names, [4, 30, 10, 20, 8], strict=True))
    zipf = dict(zip(names, [0.8, 1.1, 0.7, 1.05, 0.9], strict=True))
    return synth(dict(zip(names, rows.tolist(), strict=True)), queries, pooling=pool, zipf=zipf,
                 community_size=64, co_access=0.8, seed=seed)  # fmt: skip


def dlrm_workload(max_rows: int, queries: int, seed: int) -> Trace:
    """26 tables from 1k to ``max_rows`` rows, mean bags 1-100 (shuffled), Zipf 0.98."""
    rng = np.random.default_rng(seed)
    rows = np.geomspace(1000, max_rows, 26).astype(int)
    pooling = rng.permutation(np.geomspace(1, 100, 26))
    tables = {f"t{i:02d}": int(r) for i, r in enumerate(rows)}
    pool = {f"t{i:02d}": float(p) for i, p in enumerate(pooling)}
    return synth(tables, queries, pooling=pool, zipf=0.98, community_size=64, co_access=0.8,
                 bag_sizes="geometric", seed=seed)  # fmt: skip


def table_bytes(store) -> int:
    return sum(t.rows * cache_row_bytes(t.dim) for t in store.tables.values())


#: Keys of an experiment's size_cache variant that are SimOptions fields (the rest are
#: SizingOptions fields, or ``refine``: sizing.REFINE_POINTS for that run).
_SIM_KEYS = {"sample_rate", "thresholds", "pinned_shares", "n_sizes", "seed", "sampling",
             "estimator", "min_sampled_blocks", "max_sampled_lookups", "batch_size"}  # fmt: skip


def size_cache_variant(store, trace: Trace, budget: int, variant: dict[str, Any], **kw: Any):
    """``size_cache`` with an experiment's variant: ``{option: value}`` over SizingOptions and
    its SimOptions, and ``refine`` (the module's REFINE_POINTS, an experiment's switch)."""
    from bandstore.tune.sim import sizing

    sim = {k: v for k, v in variant.items() if k in _SIM_KEYS}
    rest = {k: v for k, v in variant.items() if k not in _SIM_KEYS and k != "refine"}
    options = SizingOptions(**rest).with_sim(**sim)
    saved = sizing.REFINE_POINTS
    sizing.REFINE_POINTS = variant.get("refine", saved)
    try:
        return size_cache(store, trace, budget, options=options, **kw)
    finally:
        sizing.REFINE_POINTS = saved


def measure(store, tune: Trace, held: Trace) -> dict[str, Any]:
    """Warm the caches on the tuning part, then the held-out counters (by table and in
    ``total``, one dict as the experiments read them)."""
    replay(store, tune, batch_size=BATCH, progress=False)
    r = replay(store, held, batch_size=BATCH, progress=False)
    return {**r.tables, "total": r.total, "seconds": r.seconds}


def prediction_check(path: Path, trace: Trace, fraction: float) -> dict[str, Any]:
    """size_cache on the trace (defaults: counts and warm-up from its DEFAULT_WARMUP share),
    applied with that part's counts (``apply_counts="warmup"``: those the prediction used; the
    default, the whole trace's counts, would let the store know the measured part in advance);
    that part replayed to warm the caches, the rest measured against the prediction."""
    with bandstore.open(path, writable=True) as store:
        budget = int(fraction * table_bytes(store))
        t0 = time.perf_counter()
        r = size_cache(store, trace, budget, apply=True, progress=False,
                       options=SizingOptions(apply_counts="warmup"))  # fmt: skip
        secs = time.perf_counter() - t0
    first, rest = trace.split(r.warmup_queries / trace.n_queries)
    assert first.n_queries == r.warmup_queries
    with bandstore.open(path) as store:
        m = measure(store, first, rest)
    pred, meas = r.total["predicted_blocks_read"], m["total"]["blocks_read"]
    abs_err = sum(abs(m[n]["blocks_read"] - t.predicted_blocks_read)
                  for n, t in r.tables.items())  # fmt: skip
    return {"budget": budget, "predicted_blocks": pred, "measured_blocks": meas,
            "error": meas / pred - 1.0 if pred else 0.0,
            "table_errors": abs_err / meas if meas else 0.0,
            "predicted_hit_ratio": r.total["predicted_hit_ratio"],
            "measured_hit_ratio": m["total"]["hit_ratio"], "size_cache_seconds": secs,
            "rates": sorted({round(t.effective_sample_rate, 4)
                             for t in r.tables.values()})}  # fmt: skip


def splits(store, tune: Trace, budget: int) -> dict[str, dict[str, int]]:
    info = store.tables
    names = tune.table_names
    weights = {
        "equal": {n: 1.0 for n in names},
        "by size": {n: float(info[n].rows * cache_row_bytes(info[n].dim)) for n in names},
        "by lookups": {n: float(tune.n_lookups(n)) for n in names},
    }
    out = {}
    for label, w in weights.items():
        total = sum(w.values())
        out[label] = {n: int(budget * w[n] / total) for n in names}
    return out


def best_policy_at(cv: Curves, nbytes: int) -> tuple[int, float]:
    """The threshold and pinned share the curves find best at the largest grid size <= nbytes."""
    k = int(np.searchsorted(cv.sizes_bytes, nbytes, side="right")) - 1
    _, ti, pi = cv.envelope()
    return int(cv.thresholds[ti[max(k, 0)]]), float(cv.pinned_shares[pi[max(k, 0)]])


def allocation_check(path: Path, trace: Trace, fraction: float, plot: Path | None):
    """size_cache on the first 80% (chosen with the counts of its warm-up share, predicted on the
    rest), applied with the counts of the whole 80% (the default ``apply_counts``);
    blocks read on the last 20%, against splits of the same budget. The held-out prediction
    (blocks per lookup predicted on the tuning part's second half x held-out lookups) is for
    half the counts the store has, and for other queries: a rough check, not an exact one."""
    tune, held = trace.split(0.8)
    with bandstore.open(path, writable=True) as store:
        budget = int(fraction * table_bytes(store))
        t0 = time.perf_counter()
        r = size_cache(store, tune, budget, apply=True, plot=plot, progress=False)
        secs = time.perf_counter() - t0
        curves: dict[str, Curves] = r.curves
        split_bytes = splits(store, tune, budget)
    rows: dict[str, Any] = {}
    with bandstore.open(path) as store:  # the tuned sizes are the stored defaults
        m = measure(store, tune, held)
        lookups = m["total"]["lookups"]
        pred = r.total["predicted_blocks_per_1000_lookups"] * lookups / 1000.0
        rows["tuned"] = {"blocks": m["total"]["blocks_read"], "hit_ratio": m["total"]["hit_ratio"],
                         "predicted_blocks": pred}  # fmt: skip
        for label, alloc in split_bytes.items():
            for policy in ("clock", "best"):
                for n, b in alloc.items():
                    t, p = (NEVER, 0.0) if policy == "clock" else best_policy_at(curves[n], b)
                    store.configure_cache(n, cache_bytes=b, threshold=t, pinned_share=p)
                mm = measure(store, tune, held)
                rows[f"{label}, {policy}"] = {"blocks": mm["total"]["blocks_read"],
                                              "hit_ratio": mm["total"]["hit_ratio"]}  # fmt: skip
    tuned = rows["tuned"]["blocks"]
    best_clock = min(v["blocks"] for k, v in rows.items() if k.endswith("clock"))
    best_any = min(v["blocks"] for k, v in rows.items() if k != "tuned")
    return {
        "budget": budget,
        "fraction": fraction,
        "heldout_lookups": lookups,
        "contenders": rows,
        "ratio_vs_best_clock_split": best_clock / tuned if tuned else float("inf"),
        "ratio_vs_best_split_any_policy": best_any / tuned if tuned else float("inf"),
        "heldout_prediction_error": rows["tuned"]["blocks"] / pred - 1.0 if pred else 0.0,
        "size_cache_seconds": secs,
        "chosen": {
            n: {
                k: v
                for k, v in t.as_dict().items()
                if k in ("cache_bytes", "threshold", "pinned_share", "effective_sample_rate")
            }
            for n, t in r.tables.items()
        },  # fmt: skip
    }


# ---- report ---------------------------------------------------------------------------------
def plot_accuracy(exact: Curves, sampled: Curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.maximum(exact.sizes_bytes, exact.sizes_bytes[1] / 2)
    for i, t in enumerate(exact.thresholds):
        for j, p in enumerate(exact.pinned_shares):
            label = f"t={'never' if t >= NEVER else int(t)}, pinned {p:g}"
            (line,) = ax.plot(x, exact.miss_ratio[i, j], lw=1.5, label=f"exact {label}")
            ax.plot(x, sampled.miss_ratio[i, j], "--", color=line.get_color(), lw=1.2,
                    label=f"R={sampled.sample_rate:g} {label}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("cache bytes")
    ax.set_ylabel("miss ratio")
    ax.set_title(f"{exact.rows:,} rows, {exact.lookups:,} lookups: exact vs sampled")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(out: dict[str, Any]) -> str:
    """The figures the issue sets targets for, in one place."""
    L = ["## Summary\n"]
    src = out.get("carried_over") or {"sections": {}}

    def carried(key: str) -> str:
        o = src["sections"].get(key)
        return f" (carried over from {o['commit']})" if o else ""

    acc = out.get("accuracy_synthetic")
    if acc:
        v = next(v for v in acc["variants"]
                 if (v["sampling"], v["estimator"]) == ("stratified", "che"))  # fmt: skip
        h = next(v for v in acc["variants"] if (v["sampling"], v["estimator"]) == ("hash", "che"))
        L.append(f"- Sampled vs exact, {acc['lookups'] / 1e6:.1f}M lookups, R = {acc['rate']:g} "
                 f"(defaults: stratified, Che): MAE of the miss ratio {v['mae']:.4f} (worst seed "
                 f"{v['mae_worst_seed']:.4f}; target <= 0.01), {v['speedup']:.0f}x faster than "
                 f"exact (target >= 20x). SHARDS hash sampling, same estimator: MAE "
                 f"{h['mae']:.4f}{carried('accuracy_synthetic')}.")  # fmt: skip
    pred = {k: v for k, v in out.get("prediction", {}).items() if "error" in v}
    if pred:
        worst = max(abs(p["error"]) for p in pred.values())
        L.append(f"- Prediction vs the real store, same trace: total blocks read within "
                 f"{worst:.1%} (target 5%): "
                 + ", ".join(f"{k} {p['error']:+.1%}" for k, p in pred.items())
                 + carried("prediction") + ".")  # fmt: skip
    alloc = {k: v for k, v in out.get("allocation", {}).items() if "runs" in v}
    if alloc:
        parts = []
        for k, v in alloc.items():
            r = "/".join(f"{a['ratio_vs_best_clock_split']:.2f}" for a in v["runs"])
            r2 = "/".join(f"{a['ratio_vs_best_split_any_policy']:.2f}" for a in v["runs"])
            parts.append(f"{k} {r}x ({r2}x)")
        L.append("- Tuned allocation vs the best split of the same budget, held-out blocks read, "
                 "budgets 5%/20% (target >= 1.3x): " + "; ".join(parts) + " against splits "
                 "with the peers' plain CLOCK (in parentheses: against splits that also get "
                 "the simulator's best threshold and pinned share at their size)"
                 + carried("allocation") + ".")  # fmt: skip
    return "\n".join(L) + "\n"


def markdown(out: dict[str, Any]) -> str:
    L = [
        f"# Cache sizing by miniature simulation\n\n`{out['command']}` (dim {DIM} float32 "
        f"unless noted, 4 KB blocks, batches of {BATCH} queries; load average "
        f"{out['load']}).\n"
    ]
    src = out.get("carried_over") or {"sections": {}}

    def carried(key: str) -> str:
        o = src["sections"].get(key)
        return f" (carried over from {o['commit']})" if o else ""

    if src["sections"]:
        by_origin: dict[str, list[str]] = {}
        for key, o in src["sections"].items():
            by_origin.setdefault(json.dumps(o, sort_keys=True), []).append(TITLES[key])
        parts = []
        for o_json, titles in by_origin.items():
            o = json.loads(o_json)
            dirty = (
                "; the file had uncommitted changes when read" if o["uncommitted_changes"] else ""
            )
            parts.append(f"{', '.join(titles)} from the run committed at {o['commit']} "
                         f"(`{o['command']}`, load average {o['load']}{dirty})")  # fmt: skip
        L.append(
            f"**Not all of this run.** Carried over unchanged from `{Path(src['path']).name}`: "
            + "; ".join(parts)
            + ". Those sections were computed with their run's code, not this run's (the "
            "accuracy sections simulate fixed policies; the prediction and allocation sections "
            "use `size_cache`'s defaults of their time). The rest was run now, on commit "
            f"{out['code_commit']} (based on main {out['base_commit']}).\n"
        )  # fmt: skip
    L.append(summary(out))
    acc = out.get("accuracy_synthetic")
    if acc:
        L.append(
            f"## Sampled vs exact curves: synthetic table{carried('accuracy_synthetic')}\n\n"
            f"{acc['rows']:,} rows x 32 "
            f"float32 (32 rows per block, {acc['touched_blocks']:,} blocks read), "
            f"{acc['lookups']:,} lookups, Zipf 1.0; {acc['configurations']} configurations "
            f"(thresholds 1/never x pinned 0/0.9 x 33 sizes); R = {acc['rate']:g} exactly "
            f"(no floor), mean of {acc['seeds']} seeds. Exact run: "
            f"{acc['exact_seconds']:.0f} s.\n"
        )
        L.append(
            "| sampling | estimator | MAE miss ratio | worst seed | rel. error blocks "
            "| sampled blocks | seconds | speed-up |\n|---|---|---|---|---|---|---|---|"
        )
        for v in acc["variants"]:
            L.append(
                f"| {v['sampling']} | {v['estimator']} | {v['mae']:.4f} | "
                f"{v['mae_worst_seed']:.4f} | {v['rel_blocks']:.1%} | {v['sampled_blocks']:,}"
                f" | {v['seconds']:.1f} | {v['speedup']:.0f}x |"
            )
        L.append("")
    real = out.get("accuracy_real")
    if real:
        L.append(
            f"## Sampled vs exact curves: real traces{carried('accuracy_real')}\n\n"
            "Every table of the trace, identity "
            "layout, thresholds 1/never x pinned 0/0.9 x 33 sizes; errors weighted by "
            "lookups. `fixed`: exactly R; `default`: size_cache's rate floors (at least "
            "1024 blocks, at most 200k lookups per table unless R asks for more).\n"
        )
        L.append(
            "| trace | tables | lookups | blocks | rate | effective rate | MAE miss ratio "
            "| rel. error blocks | speed-up |\n|---|---|---|---|---|---|---|---|---|"
        )
        for name, r in real.items():
            if "skipped" in r:
                L.append(f"| {name} | skipped: {r['skipped']} |||||||")
                continue
            for label, v in r["rates"].items():
                e = v["effective_rate"]
                L.append(
                    f"| {name} | {r['tables']} | {r['lookups']:,} | {r['blocks']:,} | "
                    f"{label} | {e[0]:.3g}-{e[1]:.3g} | {v['mae']:.4f} | "
                    f"{v['rel_blocks']:.1%} | {v['speedup']:.1f}x |"
                )
        L.append("")
    pred = out.get("prediction")
    if pred:
        o = src["sections"].get("prediction")
        wu = f"first {(o or out).get('warmup') or 0.5:.0%}"
        ew = (o or out).get("exact_window")
        ew = f"; sizes near each choice simulated again exactly, exact_window {ew}" if ew else ""
        L.append(
            f"## Prediction vs reality (same trace, real store){carried('prediction')}\n\n"
            "`size_cache` with its defaults (R = 0.01 with floors, stratified, Che estimator"
            f"{ew}; the {wu} of the queries give the counts and warm the caches, the rest "
            f"is predicted), applied with the {wu}'s counts (`apply_counts="
            '"warmup"`: those the prediction used); the trace replayed through the store: '
            f"the {wu} to warm the caches, blocks read on the rest.\n"
        )
        L.append(
            "| workload | budget | predicted blocks | measured blocks | error | table errors "
            "| predicted hit | measured hit | size_cache s |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        for name, p in pred.items():
            if "skipped" in p:
                L.append(f"| {name} | skipped: {p['skipped']} ||||||||")
                continue
            L.append(
                f"| {name} | {p['budget'] / 2**20:.1f} MiB | {p['predicted_blocks']:,.0f} | "
                f"{p['measured_blocks']:,} | {p['error']:+.1%} | "
                f"{p['table_errors']:.1%} | {p['predicted_hit_ratio']:.3f} | "
                f"{p['measured_hit_ratio']:.3f} | {p['size_cache_seconds']:.0f} |"
            )
        L.append("")
    alloc = out.get("allocation")
    if alloc:
        o = src["sections"].get("allocation")
        shares = "/".join(f"{p:g}" for p in ((o or out).get("pinned_shares") or [])) or "?"
        ew = (o or out).get("exact_window")
        if ew:
            shares += (f"; sizes within {ew} grid steps of each sampled table's choice "
                       "simulated again exactly and the budget split again on them")  # fmt: skip
        L.append(
            "## Tuned allocation vs splits of the same budget (held-out queries)"
            f"{carried('allocation')}\n\nSized on the first 80% of the queries (pinned "
            f"shares tried: {shares}; chosen "
            f"with the access counts of its first {(o or out).get('warmup', 0.5):.0%}, "
            "predicted on the rest), applied "
            "with the access counts of the whole 80% for admission and pinning; caches warmed "
            "on the 80%; blocks read on the last 20%. The held-out prediction error compares "
            "the blocks per lookup predicted on the rest of the tuning part (with fewer of the "
            "counts than the store has) x held-out lookups to the blocks measured: a rough check, "
            "the exact one is the prediction section's. `clock`: "
            "the peers' policy (no neighbour admission, nothing pinned); `best`: the "
            "threshold and pinned share the simulator finds best at the split's size. "
            "Ratio = blocks of the best split / blocks of the tuned allocation.\n"
        )
        L.append(
            "| workload | budget | tuned | equal, clock | by size, clock | by lookups, clock "
            "| equal, best | by size, best | by lookups, best | ratio (clock splits) "
            "| ratio (any split) | held-out pred. error |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for name, runs in alloc.items():
            if "skipped" in runs:
                L.append(f"| {name} | skipped: {runs['skipped']} ||||||||||")
                continue
            for a in runs["runs"]:
                c = a["contenders"]
                per = 1000.0 / a["heldout_lookups"]

                def cell(k: str, c: dict = c, per: float = per) -> str:
                    return f"{c[k]['blocks'] * per:.1f}"

                L.append(
                    f"| {name} | {a['fraction']:.0%} = {a['budget'] / 2**20:.1f} MiB | "
                    f"{cell('tuned')} | {cell('equal, clock')} | {cell('by size, clock')} | "
                    f"{cell('by lookups, clock')} | {cell('equal, best')} | "
                    f"{cell('by size, best')} | {cell('by lookups, best')} | "
                    f"{a['ratio_vs_best_clock_split']:.2f}x | "
                    f"{a['ratio_vs_best_split_any_policy']:.2f}x | "
                    f"{a['heldout_prediction_error']:+.1%} |"
                )
        L.append("\n(blocks read per 1000 held-out lookups)\n")
    L.append("Plots: " + ", ".join(f"`{p}`" for p in out.get("plots", [])))
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller traces and tables")
    ap.add_argument("--only", nargs="*", choices=["accuracy", "real", "prediction", "allocation"],
                    help="parts to run (default: all)")  # fmt: skip
    ap.add_argument("--workdir", type=Path, help="keep stores here (default: temporary)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-accuracy", type=Path, metavar="PATH.json",
                    help="carry the accuracy, real and prediction sections over from this "
                         "earlier results JSON (those --only does not name; without --only, "
                         "only the allocation section runs); the report says so")  # fmt: skip
    args = ap.parse_args(argv)
    q = args.quick
    default = ["allocation"] if args.reuse_accuracy else list(CARRIABLE) + ["allocation"]
    only = set(args.only or default)
    cmd = " ".join(["python benchmarks/bench_sizing.py", *(sys.argv[1:] if argv is None else argv)])
    suffix = "_quick" if q else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"command": cmd, "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                           "code_commit": git("rev-parse", "--short", "HEAD"),
                           "base_commit": git("merge-base", "HEAD", "main")[:7],
                           "pinned_shares": list(DEFAULT_PINNED_SHARES),
                           "exact_window": DEFAULT_EXACT_WINDOW,
                           "warmup": DEFAULT_WARMUP,
                           "apply_counts": "trace (allocation), warmup (prediction)",
                           "plots": []}  # fmt: skip
    if git("status", "--porcelain", "--", ":/bandstore") != "?":
        out["code_commit"] += " with uncommitted changes"
    if args.reuse_accuracy:
        keys = [CARRIABLE[k] for k in CARRIABLE if k not in only]
        carried, source = carry_over(args.reuse_accuracy, keys)
        out.update(carried)
        out["plots"] += source.pop("plots")
        out["carried_over"] = source
        log(
            f"carried over from {source['path']}: "
            + ", ".join(f"{k} ({o['commit']})" for k, o in source["sections"].items())
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench-sizing-", dir=args.workdir))
    t_start = time.perf_counter()
    try:
        if "accuracy" in only:
            acc = accuracy_synthetic(1_000_000 if q else 10_000_000,
                                     100_000 if q else 500_000, 0.01, 2 if q else 3)  # fmt: skip
            exact, sampled = acc.pop("_curves")
            png = RESULTS / f"sizing{suffix}_accuracy.png"
            plot_accuracy(exact, sampled, png)
            out["plots"].append(str(png.relative_to(RESULTS.parent.parent)))
            out["accuracy_synthetic"] = acc
        if "real" in only:
            out["accuracy_real"] = accuracy_real([0.01, 0.1])
        workloads: dict[str, Any] = {}
        if only & {"prediction", "allocation"}:
            workloads["criteo-8k"] = lambda: load_real("criteo-8k")
            workloads["avazu-9k"] = lambda: load_real("avazu-9k")
            workloads["synthetic-5"] = lambda: synthetic_workload(
                1_000_000 if q else 10_000_000, 20_000 if q else 100_000, args.seed
            )
            if not q:
                workloads["dlrm-26"] = lambda: dlrm_workload(10_000_000, 10_000, args.seed)
        for name, make in workloads.items():
            trace = make()
            if trace is None:
                out.setdefault("prediction", {})[name] = {"skipped": f"no data at {DATA}"}
                out.setdefault("allocation", {})[name] = {"skipped": f"no data at {DATA}"}
                continue
            log(f"{name}: {len(trace.table_names)} tables, {trace.n_lookups():,} lookups")
            path = tmp / name
            create_store_for_trace(path, trace, dim=DIM, seed=args.seed, progress=False).close()
            if "prediction" in only:
                p = prediction_check(path, trace, 0.1)
                out.setdefault("prediction", {})[name] = p
                log(
                    f"  prediction: {p['error']:+.2%} (sum of table errors {p['table_errors']:.2%})"
                )
            if "allocation" in only:
                runs = []
                for fraction in (0.05, 0.2):
                    png = RESULTS / f"sizing{suffix}_curves_{name}.png"
                    a = allocation_check(path, trace, fraction, png if fraction == 0.05 else None)
                    if fraction == 0.05:
                        out["plots"].append(str(png.relative_to(RESULTS.parent.parent)))
                    runs.append(a)
                    log(f"  budget {fraction:.0%}: tuned vs best split "
                        f"{a['ratio_vs_best_clock_split']:.2f}x (clock), "
                        f"{a['ratio_vs_best_split_any_policy']:.2f}x (any); held-out "
                        f"prediction {a['heldout_prediction_error']:+.1%}")  # fmt: skip
                out.setdefault("allocation", {})[name] = {"runs": runs}
            shutil.rmtree(path, ignore_errors=True)
        out["seconds"] = time.perf_counter() - t_start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (RESULTS / f"sizing{suffix}.json").write_text(json.dumps(out, indent=1, default=float))
    (RESULTS / f"sizing{suffix}.md").write_text(markdown(out))
    print(markdown(out))
    print(f"reproduce: {cmd}   ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
