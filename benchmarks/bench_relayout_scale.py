"""How do the co-access layout builders scale in time and peak memory with the trace size?

Issue #3 sets the bar: "relayout of a 10M-row table from a 100M-lookup trace on this 2-core,
24 GB machine in under 15 minutes and 8 GB peak memory, with progress. Measure it in a
benchmark and write down how the time grows with rows and lookups."

For each size (rows, lookups) a synthetic trace (``bandstore.traces.synth``: communities of 16 rows,
co_access 0.8, zipf 1.0, bags of ~20 lookups; lookups / rows = 10 in the main series) is cut by
query position: layouts are built from the first 80% (``build_layout``, default parameters,
16 rows per 4 KB block) and judged on the later 20%. Each (size, method) runs in a fresh
subprocess, so peaks do not accumulate; numba kernels are compiled first on a tiny trace, then
the peak-RSS mark is reset (``/proc/self/clear_refs``) and the build is timed stage by stage
(the stage functions of ``bandstore.tune.layout`` are wrapped with timers; each stage also records
its own peak RSS). Reported per (size, method):

- wall time of ``build_layout`` and of its stages: ``counts`` (access counts, row classes),
  ``nets`` (queries as nets), ``graph`` (co-access graph), ``metis`` (grouped METIS),
  ``repair`` (exact blocks), ``refine`` / ``refine (validation)`` (hypergraph swaps on the whole
  tuning part / on its earlier share while the last share is watched), ``other``;
- peak RSS of the build (absolute, and above the RSS before it: the trace arrays are loaded);
- layout quality on the held-out queries: distinct blocks per query (no cache) per 1000
  lookups, and blocks read per 1000 lookups by exact simulation of the store's cache
  (``tune.relayout_job.evaluate_layout``) at DRAM = 10% of the table, the cache warmed by the
  tuning part, threshold in {0, 2, never} and pinned share in {0, 0.5} chosen on the tuning
  part (a smaller grid than ``relayout``'s, to keep 10M-lookup simulations short), with the
  identity layout under the same rules as the reference.

The scaling exponent k of time ~ lookups^k (and of the peak memory above the trace) is fitted
by least squares in log-log over the main series; with ``--rows-series`` a second series at
fixed rows separates the effect of lookups from that of rows (time ~ rows^a * lookups^b, fitted
over all points). The machine is a shared 2-core VM: the load average is recorded around every
run; compare ratios and exponents rather than absolute seconds.

    python benchmarks/bench_relayout_scale.py            # 10k/100k, 100k/1M, 1M/10M (~6 min)
    python benchmarks/bench_relayout_scale.py --quick    # the two smaller sizes only
    python benchmarks/bench_relayout_scale.py --full     # + 10M rows / 100M lookups (~30 min more)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DIM, RPB, BLOCK, ROW_BYTES = 64, 16, 4096, 256
POOLING, COMMUNITY, CO_ACCESS, ZIPF = 20, 16, 0.8, 1.0
BATCH, HOLDOUT, DRAM_SHARE = 256, 0.2, 0.10
METHODS = ("identity", "frequency", "metis", "hypergraph")
COLORS = {"identity": "0.5", "frequency": "C0", "metis": "C1", "hypergraph": "C2"}
MAIN_SIZES = ((10_000, 100_000), (100_000, 1_000_000), (1_000_000, 10_000_000))
FULL_SIZE = (10_000_000, 100_000_000)
# fixed rows, more lookups per row: separates the growth with lookups from that with rows
ROWS_SERIES = ((100_000, 300_000), (100_000, 3_000_000), (100_000, 10_000_000))
BAR_SECONDS, BAR_BYTES = 15 * 60, 8 << 30  # issue #3: 10M rows / 100M lookups
MEM_FIT_MIN = 16 << 20  # memory exponents are fitted over builds that take at least this
REPEATS, REPEAT_BELOW = 3, 3_000_000  # builds from fewer tuning lookups: fastest of 3
STAGES = ("counts", "nets", "graph", "metis", "repair", "refine (validation)", "refine")


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak RSS over a region, resettable (Linux ``clear_refs`` 5 resets VmHWM to the current
    RSS). Without it, falls back to ``getrusage`` ru_maxrss (a high-water mark since start)."""

    def __init__(self) -> None:
        self.peak_kib = 0
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = _status_kib("VmHWM") is not None
        except OSError:
            self.resettable = False

    def hwm(self) -> int:
        if self.resettable:
            return _status_kib("VmHWM") or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def checkpoint(self) -> int:
        """Fold the current high-water mark into peak_kib and reset it; return it."""
        h = self.hwm()
        self.peak_kib = max(self.peak_kib, h)
        if self.resettable:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return h


# --------------------------------------------------------------------------- stage timers


class StageTimer:
    """Wraps the stage functions of bandstore.tune.layout with timers (outermost call only),
    accumulating wall and CPU seconds, calls and the peak RSS seen inside each stage."""

    def __init__(self, mem: PeakRSS) -> None:
        self.mem = mem
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.peak_kib: dict[str, int] = {}
        self._depth = 0
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, module: Any, name: str, stage: Any) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            label = stage(kwargs) if callable(stage) else stage
            self.mem.checkpoint()
            self._depth += 1
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                self._depth -= 1
                self.seconds[label] = self.seconds.get(label, 0.0) + dt
                self.cpu[label] = self.cpu.get(label, 0.0) + dc
                self.calls[label] = self.calls.get(label, 0) + 1
                self.peak_kib[label] = max(self.peak_kib.get(label, 0), self.mem.checkpoint())

        setattr(module, name, timed)
        self._undo.append((module, name, fn))

    def __enter__(self) -> StageTimer:
        import bandstore.tune.layout as lay
        import bandstore.tune.layout.partition as part

        refine = lambda kw: "refine (validation)" if kw.get("val_nets") is not None else "refine"  # noqa: E731
        for module, name, stage in (
            (lay, "access_counts", "counts"),
            (lay, "classify_rows", "counts"),
            (lay, "frequency_layout", "counts"),
            (lay, "build_nets", "nets"),
            (part, "build_nets", "nets"),
            (part, "coaccess_graph", "graph"),
            (part, "grouped_metis_part", "metis"),
            (part, "repair", "repair"),
            (lay, "add_block_nets", "refine"),
            (lay, "refine_blocks", refine),
        ):
            self._wrap(module, name, stage)
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, name, fn in reversed(self._undo):
            setattr(module, name, fn)


# --------------------------------------------------------------------------- worker


def make_trace(rows: int, lookups: int, seed: int = 0):
    from bandstore.traces.synth import synth

    return synth(
        {"item": rows},
        max(1, lookups // POOLING),
        pooling=POOLING,
        zipf=ZIPF,
        community_size=COMMUNITY,
        co_access=CO_ACCESS,
        seed=seed,
    )


def evaluate(trace, split: int, layout: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    from bandstore.kernels.cache import NEVER
    from bandstore.options import threshold_to_json
    from bandstore.serve.cache import cache_row_bytes
    from bandstore.tune.layout import fanout
    from bandstore.tune.relayout_job import LayoutTarget, Scoring, evaluate_layout

    rows = trace.num_rows["item"]
    idx, off = trace.table("item")
    h_idx, h_off = idx[off[split] :], off[split:] - off[split]
    out = {
        "heldout_fanout_per_1000": 1000.0 * fanout(h_idx, h_off, layout, RPB) / max(1, h_idx.size)
    }
    dram = int(DRAM_SHARE * rows) * cache_row_bytes(DIM)
    target = LayoutTarget(
        rows=rows, rows_per_block=RPB, dim=DIM, block_size=BLOCK, row_bytes=ROW_BYTES,
        cache_bytes=dram,
    )  # fmt: skip
    scoring = Scoring(BATCH, thresholds=[0, 2, NEVER], pinned_shares=[0.0, 0.5])
    r = evaluate_layout(trace, "item", split, layout, counts, target, scoring)
    out.update(
        heldout_blocks_per_1000=r["heldout_blocks_per_1000_lookups"],
        heldout_hit_ratio=r["heldout_hit_ratio"],
        threshold=threshold_to_json(r["threshold"]),
        pinned_share=r["pinned_share"],
    )
    return out


def worker(data_dir: Path, method: str, out_path: Path) -> None:
    """One (size, method): compile on a tiny trace, then build, time and measure; write JSON."""
    from bandstore.traces.trace import Trace
    from bandstore.tune.layout import build_layout
    from bandstore.tune.relayout_job import split_point

    load_start = os.getloadavg()
    meta = json.loads((data_dir / "meta.json").read_text())
    rows, split = meta["rows"], meta["split"]

    # numba compilation (cached on disk, but loading the cache costs too) off the clock
    tiny = make_trace(2_000, 40_000, seed=1)
    t_split = split_point(tiny, HOLDOUT, BATCH)
    t_idx, t_off = tiny.query_slice(0, t_split).table("item")
    warm = build_layout(method, t_idx, t_off, 2_000, RPB)
    evaluate(tiny, t_split, warm, np.bincount(t_idx, minlength=2_000).astype(np.int32))
    del tiny, warm

    idx = np.load(data_dir / "indices.npy")
    off = np.load(data_dir / "offsets.npy")
    trace = Trace({"item": (idx, off)}, {"item": rows})
    tune_idx, tune_off = idx[: off[split]], off[: split + 1]

    mem = PeakRSS()
    mem.checkpoint()
    rss_before = (_status_kib("VmRSS") or 0) * 1024
    # small builds take well under a second: the fastest of a few runs (noise of a shared box)
    repeats = REPEATS if tune_idx.size < REPEAT_BELOW else 1
    runs = []
    layout = None
    for _ in range(repeats):
        layout = None  # free the previous run's layout (deterministic: the same each time)
        with StageTimer(mem) as timer:
            t0, c0 = time.perf_counter(), time.process_time()
            layout = build_layout(method, tune_idx, tune_off, rows, RPB)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
        mem.checkpoint()
        stages, stages_cpu = dict(timer.seconds), dict(timer.cpu)
        stages["other"] = max(0.0, total - sum(stages.values()))
        stages_cpu["other"] = max(0.0, cpu - sum(stages_cpu.values()))
        runs.append((total, cpu, stages, stages_cpu, dict(timer.calls), dict(timer.peak_kib)))
    load_end = os.getloadavg()
    total, cpu, stages, stages_cpu, calls, stage_peak = min(runs, key=lambda r: r[0])

    t1 = time.perf_counter()
    counts = np.minimum(np.bincount(tune_idx, minlength=rows), 2**31 - 1).astype(np.int32)
    quality = evaluate(trace, split, layout, counts)
    quality["eval_seconds"] = time.perf_counter() - t1

    result = {
        "method": method,
        "rows": rows,
        "lookups": int(idx.size),
        "tuning_lookups": int(tune_idx.size),
        "tuning_queries": split,
        "build_seconds": total,
        "build_runs": repeats,
        "build_seconds_all": [r[0] for r in runs],
        "build_cpu_seconds": cpu,
        "stage_seconds": stages,
        "stage_cpu_seconds": stages_cpu,
        "stage_calls": calls,
        "stage_peak_rss_bytes": {k: v * 1024 for k, v in stage_peak.items()},
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": mem.peak_kib * 1024,
        "peak_above_before_bytes": max(0, mem.peak_kib * 1024 - rss_before),
        "peak_resettable": mem.resettable,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        **quality,
    }
    out_path.write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- driver


def fit_loglog(x: list[float], y: list[float]) -> tuple[float, float] | None:
    """Least-squares (k, c) of log y = k log x + c, or None with fewer than 2 distinct x."""
    x, y = np.log(np.asarray(x, float)), np.log(np.maximum(np.asarray(y, float), 1e-9))
    if len(set(x.tolist())) < 2:
        return None
    k, c = np.polyfit(x, y, 1)
    return float(k), float(c)


def fit_rows_lookups(pts: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """Least-squares exponents (a, b) of time ~ rows^a * lookups^b over all points; None
    unless the points have at least two lookups / rows ratios (else rows and lookups are
    confounded)."""
    if len({round(p["lookups"] / p["rows"], 3) for p in pts}) < 2 or len(pts) < 3:
        return None
    a = np.array([[math.log(p["rows"]), math.log(p["tuning_lookups"]), 1.0] for p in pts])
    y = np.array([math.log(max(p[key], 1e-9)) for p in pts])
    sol = np.linalg.lstsq(a, y, rcond=None)[0]
    return float(sol[0]), float(sol[1])


def run_size(rows: int, lookups: int, methods: list[str], tmp: Path, series: str) -> list[dict]:
    from bandstore.tune.relayout_job import split_point

    t0 = time.perf_counter()
    trace = make_trace(rows, lookups)
    split = split_point(trace, HOLDOUT, BATCH)
    idx, off = trace.table("item")
    data = tmp / f"{rows}_{lookups}"
    data.mkdir(exist_ok=True)
    np.save(data / "indices.npy", idx)
    np.save(data / "offsets.npy", off)
    (data / "meta.json").write_text(json.dumps({"rows": rows, "split": split}))
    del trace, idx, off
    print(f"[{rows:,} rows, {lookups:,} lookups] trace in {time.perf_counter() - t0:.1f} s")
    out = []
    for m in methods:
        res_path = data / f"{m}.json"
        t1 = time.perf_counter()
        cmd = [sys.executable, __file__, "--worker", str(data), m, str(res_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"  {m}: FAILED (rc {proc.returncode})\n{proc.stderr[-2000:]}")
            out.append({"method": m, "rows": rows, "lookups": lookups, "series": series,
                        "nominal_lookups": lookups, "error": proc.stderr[-2000:]})  # fmt: skip
            continue
        r = json.loads(res_path.read_text())
        r["series"] = series
        r["nominal_lookups"] = lookups
        out.append(r)
        print(
            f"  {m:10s} build {r['build_seconds']:8.2f} s  peak {r['peak_rss_bytes'] / 2**30:.2f}"
            f" GiB (+{r['peak_above_before_bytes'] / 2**30:.2f})  fanout/1000 "
            f"{r['heldout_fanout_per_1000']:.0f}  blocks/1000 {r['heldout_blocks_per_1000']:.1f}"
            f"  load {r['loadavg_start'][0]:.1f}-{r['loadavg_end'][0]:.1f}"
            f"  (process {time.perf_counter() - t1:.0f} s)",
            flush=True,
        )
    return out


def summarize(points: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    ok = [p for p in points if "error" not in p]
    ident = {(p["rows"], p["lookups"]): p for p in ok if p["method"] == "identity"}
    for p in ok:
        ref = ident.get((p["rows"], p["lookups"]))
        if ref is not None:
            p["fanout_vs_identity"] = ref["heldout_fanout_per_1000"] / p["heldout_fanout_per_1000"]
            p["blocks_vs_identity"] = ref["heldout_blocks_per_1000"] / p["heldout_blocks_per_1000"]
    fits: dict[str, Any] = {}
    for m in methods:
        main = sorted(
            (p for p in ok if p["method"] == m and p["series"] == "main"),
            key=lambda p: p["lookups"],
        )
        f: dict[str, Any] = {}
        tune_bar = FULL_SIZE[1] * (1 - HOLDOUT)
        x = [p["tuning_lookups"] for p in main]
        # extrapolations start from the sizes below the bar (a measured bar point checks them)
        below = [p for p in main if p["nominal_lookups"] < FULL_SIZE[1]]
        xb = [p["tuning_lookups"] for p in below]
        if m != "identity":
            for tag, key in (("", "build_seconds"), ("cpu_", "build_cpu_seconds")):
                y = [p[key] for p in main]
                t = fit_loglog(x, y)
                if t is None:
                    continue
                f[f"{tag}time_exponent"] = t[0]
                # the slope between the two largest sizes: what the next size up will see
                f[f"{tag}time_exponent_last_two"] = fit_loglog(x[-2:], y[-2:])[0]
                # extrapolation to the bar's size (lookups / rows = 10) from the largest size
                # below it, along the slope between the two largest sizes below it
                yb = [p[key] for p in below]
                last = fit_loglog(xb[-2:], yb[-2:])
                if last is not None:
                    f[f"{tag}time_at_bar_extrapolated_s"] = yb[-1] * (tune_bar / xb[-1]) ** last[0]
                    f["extrapolated_from_lookups"] = below[-1]["nominal_lookups"]
            stage_fit = {}
            for s in STAGES:
                xs = [p["tuning_lookups"] for p in main if p["stage_cpu_seconds"].get(s, 0) > 0]
                ys = [
                    p["stage_cpu_seconds"][s] for p in main if p["stage_cpu_seconds"].get(s, 0) > 0
                ]
                fs = fit_loglog(xs, ys) if len(xs) == len(main) else None
                if fs is not None:
                    stage_fit[s] = fs[0]
            f["stage_cpu_time_exponents"] = stage_fit
            for tag, key in (("", "build_seconds"), ("cpu_", "build_cpu_seconds")):
                both = fit_rows_lookups([p for p in ok if p["method"] == m], key)
                if both is not None:
                    f[f"{tag}time_rows_exponent"], f[f"{tag}time_lookups_exponent"] = both
        # below ~16 MiB the build's memory is lost in the allocator's and numba's noise
        big = [p for p in main if p["peak_above_before_bytes"] >= MEM_FIT_MIN]
        big_below = [p for p in big if p["nominal_lookups"] < FULL_SIZE[1]]
        mm = fit_loglog(
            [p["tuning_lookups"] for p in big], [p["peak_above_before_bytes"] for p in big]
        )
        if mm is not None:
            f["memory_exponent"] = mm[0]
        mb = fit_loglog(
            [p["tuning_lookups"] for p in big_below],
            [p["peak_above_before_bytes"] for p in big_below],
        )
        if mb is not None:
            last = big_below[-1]
            f["memory_at_bar_extrapolated_bytes"] = last["peak_above_before_bytes"] * (
                tune_bar / last["tuning_lookups"]
            ) ** max(mb[0], 1.0)  # at least linear: the arrays of the build grow with the trace
        fits[m] = f
    return fits


def plot(points: list[dict[str, Any]], methods: list[str], fits: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install bandstore[plot]): no plot")
        return
    ok = [p for p in points if "error" not in p and p["series"] == "main"]
    fixed = [p for p in points if "error" not in p and p["series"] != "main"]
    fig, axes = plt.subplots(1, 3 if fixed else 2, figsize=(15 if fixed else 10, 4.2))
    for m in methods:
        pts = sorted((p for p in ok if p["method"] == m), key=lambda p: p["lookups"])
        if not pts:
            continue
        x = [p["tuning_lookups"] for p in pts]
        k = fits.get(m, {}).get("time_exponent")
        if m != "identity":
            kc = fits.get(m, {}).get("cpu_time_exponent")
            lab = m if kc is None else f"{m} CPU (~lookups^{kc:.2f})"
            line = axes[0].plot(
                x, [p["build_cpu_seconds"] for p in pts], marker="o", color=COLORS.get(m), label=lab
            )
            lab = m if k is None else f"{m} wall (~lookups^{k:.2f})"
            axes[0].plot(x, [p["build_seconds"] for p in pts], marker="o", ls="--", mfc="none",
                         color=line[0].get_color(), label=lab)  # fmt: skip
        km = fits.get(m, {}).get("memory_exponent")
        lab = m if km is None else f"{m} (part above the trace ~lookups^{km:.2f})"
        axes[1].plot(
            x,
            [p["peak_rss_bytes"] / 2**30 for p in pts],
            marker="o",
            color=COLORS.get(m),
            label=lab,
        )
    bar_x = FULL_SIZE[1] * (1 - HOLDOUT)
    axes[0].plot([bar_x], [BAR_SECONDS], marker="*", ms=12, color="k", ls="none",
                 label="issue #3 bar (15 min @ 100M)")  # fmt: skip
    axes[1].plot([bar_x], [BAR_BYTES / 2**30], marker="*", ms=12, color="k", ls="none",
                 label="issue #3 bar (8 GB @ 100M)")  # fmt: skip
    if fixed:
        for m in methods:
            pts = sorted((p for p in fixed if p["method"] == m), key=lambda p: p["lookups"])
            if not pts or m == "identity":
                continue
            f = fits.get(m, {})
            lab = m
            if "cpu_time_rows_exponent" in f:
                lab += (
                    f" (all points: ~rows^{f['cpu_time_rows_exponent']:.2f}"
                    f" lookups^{f['cpu_time_lookups_exponent']:.2f})"
                )
            axes[2].plot([p["tuning_lookups"] for p in pts], [p["build_cpu_seconds"] for p in pts],
                         marker="s", color=COLORS.get(m), label=lab)  # fmt: skip
        axes[2].set_title(f"fixed {fixed[0]['rows']:,} rows", fontsize=9)
        axes[2].set_ylabel("build_layout CPU time, s")
    axes[0].set_title("rows = lookups / 10", fontsize=9)
    axes[1].set_title("rows = lookups / 10", fontsize=9)
    axes[0].set_ylabel("build_layout time, s (CPU solid, wall dashed)")
    axes[1].set_ylabel("peak RSS of the build process, GiB")
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("tuning lookups (80% of the trace)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Layout build scaling (synthetic community trace, 16 rows per block)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _size(p: dict[str, Any]) -> str:
    def short(n: int) -> str:
        for unit, div in (("M", 10**6), ("k", 10**3)):
            if n >= div and n % div == 0:
                return f"{n // div}{unit}"
        return str(n)

    return f"{short(p['rows'])} / {short(p['nominal_lookups'])}"


def peak_stage(p: dict[str, Any]) -> str:
    """', stage' of the stage whose own peak is the build's peak (within 1%), if any."""
    sp = p.get("stage_peak_rss_bytes", {})
    if not sp or p["peak_above_before_bytes"] < MEM_FIT_MIN:
        return ""
    stage = max(sp, key=sp.get)
    return f", {stage}" if sp[stage] >= 0.99 * p["peak_rss_bytes"] else ""


def markdown(res: dict[str, Any], cmd: str) -> str:
    pts = [p for p in res["points"] if "error" not in p]
    methods = res["methods"]
    loads = [v for p in pts for v in (p["loadavg_start"][0], p["loadavg_end"][0])]
    lines = [
        "# Layout build scaling: time and peak memory vs trace size",
        "",
        f"Reproduce: `{cmd}`. Synthetic trace (communities of {COMMUNITY} rows, co_access "
        f"{CO_ACCESS}, zipf {ZIPF}, ~{POOLING} lookups per query), layouts built from the first "
        f"{100 - int(100 * HOLDOUT)}% of the queries with default parameters, {RPB} rows per "
        "4 KB block, each (size, method) in a fresh process (numba compiled first, off the "
        "clock). Peak = peak RSS of that process during the build (the trace arrays are "
        "loaded before it; '+' is the part above the RSS before the build). Quality on the "
        "held-out later 20%: distinct blocks per query (no cache) and blocks read with a "
        f"{int(100 * DRAM_SHARE)}% DRAM cache (exact simulation, policy chosen on the tuning "
        "part), per 1000 lookups; 'x' = identity / method (higher is better).",
        "",
        f"Machine: {os.cpu_count()} cores shared with other jobs; 1-minute load average during "
        f"the runs {min(loads):.1f}-{max(loads):.1f} (absolute times drift with it; exponents "
        "and ratios are the figures to compare). "
        f"Run at {res['date']}, numpy {res['numpy']}, python {res['python']}.",
        "",
        "Build wall and CPU seconds (the builders are single-threaded: CPU time is what an "
        "idle core would take, wall time also holds the waits for a core); stages in CPU "
        "seconds (summed over calls: hypergraph's default `init=auto` builds METIS and "
        "refines three starts on the earlier 80% of the tuning part, then once on all of it):",
        "",
        "| rows / lookups | method | build s wall (CPU) | counts | nets | graph | metis "
        "| repair | refine (valid.) | refine | other | peak GiB (+, in stage) "
        "| no-cache blocks/1000 (x) | 10% DRAM blocks/1000 (x) | eval s | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(pts, key=lambda p: (p["series"] != "main", p["lookups"], p["rows"])):
        st = p["stage_cpu_seconds"]

        def s(name: str, st=st) -> str:
            return f"{st[name]:.2f}" if name in st else "-"

        lines.append(
            f"| {_size(p)}{'' if p['series'] == 'main' else ' (fixed rows)'} | {p['method']} "
            f"| {p['build_seconds']:.2f} ({p['build_cpu_seconds']:.2f}) "
            f"| {s('counts')} | {s('nets')} | {s('graph')} "
            f"| {s('metis')} | {s('repair')} | {s('refine (validation)')} | {s('refine')} "
            f"| {s('other')} "
            f"| {p['peak_rss_bytes'] / 2**30:.2f} (+{p['peak_above_before_bytes'] / 2**30:.2f}"
            f"{peak_stage(p)}) "
            f"| {p['heldout_fanout_per_1000']:.0f} ({p.get('fanout_vs_identity', 1):.2f}x) "
            f"| {p['heldout_blocks_per_1000']:.1f} ({p.get('blocks_vs_identity', 1):.2f}x) "
            f"| {p['eval_seconds']:.0f} "
            f"| {p['loadavg_start'][0]:.1f}-{p['loadavg_end'][0]:.1f} |"
        )
    lines += [
        "",
        "Scaling along the main series (lookups / rows = 10): exponent k of time ~ lookups^k by "
        "least squares in log-log over all its sizes, and between its two largest sizes (the "
        "local slope); stage exponents on CPU time over all sizes; a, b of CPU time ~ rows^a "
        "lookups^b over all points (needs the fixed-rows series); extrapolations to the bar's "
        "10M rows / 100M lookups from the largest size below it, along the slope between the "
        "two largest sizes below it (memory: at least linearly):",
        "",
        "| method | k wall (all / last two) | k CPU (all / last two) | stage CPU exponents "
        "| CPU ~ rows^a lookups^b | @ 100M wall (CPU), extrapolated | peak (+) ~ lookups^k "
        "| peak (+) @ 100M, extrapolated |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]

    def num(f: dict, key: str, fmt: str = ".2f") -> str:
        return "-" if f.get(key) is None else format(f[key], fmt)

    for m in methods:
        f = res["fits"].get(m, {})
        if not f or m == "identity":
            continue
        st = ", ".join(f"{s} {v:.2f}" for s, v in f.get("stage_cpu_time_exponents", {}).items())
        ab = (
            f"a {f['cpu_time_rows_exponent']:.2f}, b {f['cpu_time_lookups_exponent']:.2f}"
            if "cpu_time_rows_exponent" in f
            else "-"
        )
        mx = f.get("memory_at_bar_extrapolated_bytes")
        lines.append(
            f"| {m} | {num(f, 'time_exponent')} / {num(f, 'time_exponent_last_two')} "
            f"| {num(f, 'cpu_time_exponent')} / {num(f, 'cpu_time_exponent_last_two')} "
            f"| {st or '-'} | {ab} "
            f"| {num(f, 'time_at_bar_extrapolated_s', '.3g')} s "
            f"({num(f, 'cpu_time_at_bar_extrapolated_s', '.3g')} s) "
            f"| {num(f, 'memory_exponent')} "
            f"| {'-' if mx is None else f'{mx / 2**30:.2f} GiB'} |"
        )
    at_bar = [p for p in pts if p["rows"] == FULL_SIZE[0] and p["nominal_lookups"] == FULL_SIZE[1]]
    lines += [
        "",
        f"Bar (issue #3): 10M rows / 100M lookups in under {BAR_SECONDS // 60} minutes and "
        f"{BAR_BYTES >> 30} GB peak (this table's build only: relayout also evaluates the "
        "candidates and writes the version).",
    ]
    for p in at_bar:
        ok_t = p["build_seconds"] < BAR_SECONDS
        ok_m = p["peak_rss_bytes"] < BAR_BYTES
        f = res["fits"].get(p["method"], {})
        ext = ""
        if "time_at_bar_extrapolated_s" in f:
            ext = (
                f" (extrapolated from {f['extrapolated_from_lookups'] / 1e6:g}M lookups: "
                f"{f['time_at_bar_extrapolated_s']:.0f} s wall, "
                f"{f['cpu_time_at_bar_extrapolated_s']:.0f} s CPU)"
            )
        lines.append(
            f"- measured, {p['method']}: {p['build_seconds']:.0f} s wall "
            f"({p['build_cpu_seconds']:.0f} s CPU){ext}, peak "
            f"{p['peak_rss_bytes'] / 2**30:.2f} GiB: {'within' if ok_t and ok_m else 'OVER'} "
            f"the bar; evaluating its layout (exact simulation, 6 policies) took "
            f"{p['eval_seconds']:.0f} s more"
        )
    if not at_bar:
        lines.append("- not measured in this run (`--full` measures it); see the extrapolations.")
    lines += ["", f"Plot: `{res['plot']}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="only the two smaller sizes")
    g.add_argument("--full", action="store_true", help="add 10M rows / 100M lookups")
    ap.add_argument("--rows-series", action="store_true",
                    help="add a series at 100k rows with 0.3M-10M lookups")  # fmt: skip
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--replot", metavar="JSON", help="rewrite md and png from a results json")
    args = ap.parse_args()
    if args.replot:
        res = json.loads(Path(args.replot).read_text())
        suffix = "_quick" if args.replot.endswith("_quick.json") else ""
        text = write_results(res["points"], res["methods"], res["command"], suffix,
                             res["seconds"], date=res["date"])  # fmt: skip
        print(text)
        return
    methods = [m for m in args.methods.split(",") if m]
    if "identity" not in methods:
        methods.insert(0, "identity")  # the reference of the quality ratios
    sizes = [(r, n, "main") for r, n in (MAIN_SIZES[:2] if args.quick else MAIN_SIZES)]
    if args.rows_series:
        sizes += [(r, n, "fixed rows") for r, n in ROWS_SERIES]
    if args.full:  # last: the longest by far
        sizes.append((*FULL_SIZE, "main"))
    cmd = "python benchmarks/bench_relayout_scale.py" + "".join(
        f" {flag}"
        for flag, on in (("--quick", args.quick), ("--full", args.full),
                         ("--rows-series", args.rows_series))
        if on
    )  # fmt: skip
    if args.methods != ",".join(METHODS):
        cmd += f" --methods {args.methods}"
    suffix = "_quick" if args.quick else ""
    points: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bandstore-scale-") as tmp:
        for rows, lookups, series in sizes:
            points += run_size(rows, lookups, methods, Path(tmp), series)
            # written after every size: a long run that dies keeps what it measured
            text = write_results(points, methods, cmd, suffix, time.perf_counter() - t0)
    print(text)


def write_results(
    points: list[dict[str, Any]],
    methods: list[str],
    cmd: str,
    suffix: str,
    seconds: float,
    date: str | None = None,
) -> str:
    fits = summarize(points, methods)
    res = {
        "command": cmd,
        "date": date or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "methods": methods,
        "params": dict(
            rows_per_block=RPB,
            pooling=POOLING,
            community_size=COMMUNITY,
            co_access=CO_ACCESS,
            zipf=ZIPF,
            holdout=HOLDOUT,
            dram_share=DRAM_SHARE,
            batch_size=BATCH,
        ),  # fmt: skip
        "bar": dict(rows=FULL_SIZE[0], lookups=FULL_SIZE[1], seconds=BAR_SECONDS, bytes=BAR_BYTES),
        "plot": f"relayout_scale{suffix}.png",
        "fits": fits,
        "points": points,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"relayout_scale{suffix}.json").write_text(json.dumps(res, indent=2))
    plot(points, methods, fits, RESULTS / f"relayout_scale{suffix}.png")
    text = markdown(res, cmd)
    (RESULTS / f"relayout_scale{suffix}.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
