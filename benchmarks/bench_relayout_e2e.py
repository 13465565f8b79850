"""End to end: how long does ``bandstore relayout STORE TRACE`` take, and how much memory?

Issue #3's bar: "relayout of a 10M-row table from a 100M-lookup trace on this 2-core, 24 GB
machine in under 15 minutes and 8 GB peak memory, with progress." ``bench_relayout_scale.py``
times the layout *build* alone; this script times the whole command: loading the trace, the
split, the evaluation of the current and the naive layouts, the candidate builds and their
exact-simulation evaluation on the held-out part, ``auto``'s choice, writing the new version
beside the old one, the byte-for-byte verification, fsync and the LMDB commit.

Data (made once per size, kept under ``--data-dir``): a store with one float32 table ``item``
of ``rows`` x ``--dim`` (default 16: 64-byte rows, 64 rows per 4 KB block; 10M rows = 640 MB),
random values, and a synthetic trace (``bandstore.traces.synth``: communities of 16 rows, co_access
0.8, zipf 1.0, ~20 lookups per query, as in ``bench_relayout_scale.py``) saved as ``.npz``.
Each run copies the store (off the clock) and runs in a fresh child process:

- ``api`` runs: ``bandstore.tune.relayout`` with its phases timed (wall and CPU seconds of
  the process, all threads, and the peak RSS inside each phase: VmHWM reset at each phase
  boundary, plus a 0.2 s RSS poller). numba compilation is done first on a tiny store and
  reported apart (``warm-up``); the rest is what a user waits for;
- ``cli`` runs: the ``bandstore relayout STORE TRACE --method M`` command as a user types it
  (numba compilation included, progress bars on stderr), timed by the parent: wall, user+system
  CPU and peak RSS (``wait4``).

The 1-minute load average is recorded before and after every run (other jobs share the 2
cores: CPU seconds are the figure that does not depend on them).

    python benchmarks/bench_relayout_e2e.py --rows 1000000 --lookups 10000000 --methods metis
    python benchmarks/bench_relayout_e2e.py --rows 10000000 --lookups 100000000 \
        --methods metis,auto --cli auto
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relayout_scale import (  # noqa: E402
    CO_ACCESS,
    COMMUNITY,
    POOLING,
    ZIPF,
    PeakRSS,
    _status_kib,
)

from bandstore.options import RelayoutOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BAR_SECONDS, BAR_BYTES = 15 * 60, 8 << 30


# --------------------------------------------------------------------------- data


def make_data(data: Path, rows: int, lookups: int, dim: int, seed: int = 0) -> dict[str, Any]:
    """Store (one float32 table) and trace under ``data``; reused when already there."""
    import bandstore
    from bandstore.traces.synth import synth

    meta_path = data / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta["rows"], meta["lookups_asked"], meta["dim"]) == (rows, lookups, dim):
            return meta
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trace = synth(
        {"item": rows}, max(1, lookups // POOLING), pooling=POOLING, zipf=ZIPF,
        community_size=COMMUNITY, co_access=CO_ACCESS, seed=seed,
    )  # fmt: skip
    trace.save(data / "trace.npz")
    n_lookups = int(trace.table("item")[0].size)
    n_queries = trace.n_queries
    del trace
    t_trace = time.perf_counter() - t0
    # the table through a .npy file (imported by mmap in chunks, as a user would)
    t0 = time.perf_counter()
    npy = data / "item.npy"
    arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    for s in range(0, rows, 1 << 20):
        e = min(rows, s + (1 << 20))
        arr[s:e] = rng.standard_normal((e - s, dim), dtype=np.float32)
    arr.flush()
    del arr
    with bandstore.create(data / "store", block_size=4096) as st:
        st.add_table("item", npy, codec="float32", progress=False)
    npy.unlink()
    meta = {
        "rows": rows,
        "lookups_asked": lookups,
        "lookups": n_lookups,
        "queries": n_queries,
        "dim": dim,
        "trace_seconds": t_trace,
        "store_seconds": time.perf_counter() - t0,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


# --------------------------------------------------------------------------- phases


class Phases:
    """Wall, CPU (whole process) and peak RSS per phase; nested phases get 'outer/inner'."""

    def __init__(self) -> None:
        self.mem = PeakRSS()
        self.rows: dict[str, dict[str, float]] = {}
        self.stack: list[str] = []
        self._poll_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._poll_peak = max(self._poll_peak, (_status_kib("VmRSS") or 0) * 1024)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _close_row(self, label: str, t0: float, c0: float) -> None:
        row = self.rows.setdefault(
            label, {"wall": 0.0, "cpu": 0.0, "calls": 0, "peak_rss_bytes": 0}
        )
        row["wall"] += time.perf_counter() - t0
        row["cpu"] += time.process_time() - c0
        row["calls"] += 1
        peak = max(self.mem.checkpoint() * 1024, self._poll_peak)
        row["peak_rss_bytes"] = max(row["peak_rss_bytes"], peak)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)  # a renamed function must fail here, not go untimed

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            full = "/".join([*self.stack, label])
            self.mem.checkpoint()
            self._poll_peak = 0
            self.stack.append(label)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
                self._close_row(full, t0, c0)

        setattr(owner, name, timed)


def worker(args: argparse.Namespace) -> None:
    import bandstore
    import bandstore.tune.relayout_job as rl
    from bandstore.serve.store import Store
    from bandstore.traces.synth import synth
    from bandstore.traces.trace import Trace

    out: dict[str, Any] = {"method": args.method, "loadavg_start": os.getloadavg()}
    # numba compilation off the clock: the same relayout on a tiny store
    t0, c0 = time.perf_counter(), time.process_time()
    tiny_dir = Path(args.store).parent / "tiny"
    shutil.rmtree(tiny_dir, ignore_errors=True)
    rng = np.random.default_rng(1)
    with bandstore.create(tiny_dir) as st:
        st.add_table("item", rng.standard_normal((4000, args.dim)).astype(np.float32),
                     progress=False)  # fmt: skip
        tiny = synth({"item": 4000}, 4000, pooling=POOLING, community_size=COMMUNITY, seed=1)
        rl.relayout(st, tiny, method=args.method, progress=False, options=_options(args))
    shutil.rmtree(tiny_dir)
    out["warmup_seconds"], out["warmup_cpu"] = time.perf_counter() - t0, time.process_time() - c0

    ph = Phases()
    ph.wrap(Trace, "load", "load trace")
    ph.wrap(rl, "evaluate_layout", "simulate")
    ph.wrap(rl, "_build", "build")
    ph.wrap(rl, "choose_configurations", "auto choice")
    ph.wrap(Store, "relayout_tables", "write+verify+commit")
    ph.mem.checkpoint()
    t0, c0 = time.perf_counter(), time.process_time()
    trace = Trace.load(args.trace)
    with bandstore.open(args.store, writable=True) as st:
        report = rl.relayout(
            st, trace, method=args.method, progress=not args.no_progress, options=_options(args)
        ).as_dict()
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    ph.close()
    out.update(
        wall=total,
        cpu=cpu,
        phases=ph.rows,
        peak_rss_bytes=max(
            [r["peak_rss_bytes"] for r in ph.rows.values()] + [ph.mem.peak_kib * 1024]
        ),
        loadavg_end=os.getloadavg(),
        report=_slim(report),
    )
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))


def _options(args: argparse.Namespace) -> RelayoutOptions:
    if args.max_tuning_lookups is not None:  # 0: no bound (as the CLI's option)
        return RelayoutOptions(max_tuning_lookups=args.max_tuning_lookups or None)
    return RelayoutOptions()


def _slim(report: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in report.items() if k != "tables"}
    out["tables"] = {}
    for name, e in report["tables"].items():
        keep = {k: e[k] for k in ("action", "chosen", "configuration", "cache_bytes") if k in e}
        for k in ("current", "naive", "policy_only", "result"):
            if k in e:
                keep[k] = {
                    kk: e[k].get(kk)
                    for kk in (
                        "heldout_blocks_per_1000_lookups",
                        "threshold",
                        "pinned_share",
                        "build_seconds",
                    )  # fmt: skip
                }
        keep["candidates"] = {
            m: {
                "heldout_blocks_per_1000_lookups": c["heldout_blocks_per_1000_lookups"],
                "build_seconds": c.get("build_seconds"),
            }  # fmt: skip
            for m, c in e.get("candidates", {}).items()
        }
        if "choice" in e:
            keep["choice"] = {
                "queries": e["choice"]["queries"],
                "sample": e["choice"].get("sample"),
                "n_configurations": len(e["choice"]["configurations"]),
                "configurations": [
                    {
                        k: c.get(k)
                        for k in (
                            "method",
                            "half_life",
                            "cold",
                            "threshold",
                            "pinned_share",
                            "select_blocks_per_1000_lookups",
                            "build_seconds",
                        )
                    }  # fmt: skip
                    for c in e["choice"]["configurations"]
                ],
            }
        out["tables"][name] = keep
    return out


# --------------------------------------------------------------------------- report


def _short(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def markdown(files: list[Path]) -> str:
    """Tables of every run in ``files`` (results JSON of this script) and growth exponents."""
    runs = []
    for f in files:
        res = json.loads(Path(f).read_text())
        for r in res["runs"]:
            runs.append({**r, "meta": res["meta"]})
    gib = 2**30
    lines = [
        "| rows / lookups | mode | method | max tuning lookups | wall s | CPU s | peak RSS GiB "
        "| load 1-min (start-end) | chosen | held-out blocks/1000: naive -> result | code | when |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in runs:
        m = r["meta"]
        c = r["child"]
        wall = r.get("wall", c["wall"])
        cpu = r.get("cpu", c["cpu"])
        peak = max(c["peak_rss_bytes"], r.get("peak_rss_bytes", 0))
        chosen, q = "-", "-"
        if "report" in r:
            e = next(iter(r["report"]["tables"].values()))
            chosen = _describe_cfg(e["configuration"])
            q = (
                f"{e['naive']['heldout_blocks_per_1000_lookups']:.1f} -> "
                f"{e['result']['heldout_blocks_per_1000_lookups']:.1f} ({e['action']})"
            )
        mtl = r.get("max_tuning_lookups")
        lines.append(
            f"| {_short(m['rows'])} / {_short(m['lookups'])} | {r['mode']} | {r['method']} | "
            f"{'default' if mtl is None else _short(mtl)} | {wall:.0f} | {cpu:.0f} | "
            f"{peak / gib:.2f} | {c['loadavg_start'][0]:.1f}-{c['loadavg_end'][0]:.1f} | "
            f"{chosen} | {q} | {r.get('commit', '-')} | {r.get('when', '')} |"
        )
    lines += ["", "Phases of the api runs (wall s / CPU s / peak RSS GiB inside the phase; calls):",
              ""]  # fmt: skip
    for r in runs:
        if "phases" not in r:
            continue
        m = r["meta"]
        parts = [
            f"{k} {v['wall']:.0f}/{v['cpu']:.0f}/{v['peak_rss_bytes'] / gib:.2f} (x{v['calls']})"
            for k, v in r["phases"].items()
        ]
        lines.append(
            f"- {_short(m['rows'])} / {_short(m['lookups'])} {r['method']}: numba warm-up "
            f"{r['warmup_seconds']:.0f} s (off the clock); " + "; ".join(parts)
        )
    # growth: time ~ lookups^k per (mode, method, bound) over the sizes measured
    lines += ["", "Growth (least squares in log-log over the sizes measured, lookups/rows = 10):",
              ""]  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["method"], r.get("max_tuning_lookups")), []).append(r)
    for (mode, method, mtl), rs in groups.items():
        xs = [r["meta"]["lookups"] for r in rs]
        if len(set(xs)) < 2:
            continue
        for key in ("wall", "cpu"):
            ys = [r.get(key, r["child"][key]) for r in rs]
            k = np.polyfit(np.log(xs), np.log(ys), 1)[0]
            lines.append(
                f"- {mode} {method} (bound {'default' if mtl is None else mtl}): {key} ~ "
                f"lookups^{k:.2f} over {', '.join(_short(x) for x in sorted(set(xs)))}"
            )
    return "\n".join(lines) + "\n"


def _describe_cfg(c: dict[str, Any]) -> str:
    extra = [f"hl {c['half_life']}"] if c.get("half_life") is not None else []
    if c.get("cold") is not None:
        extra.append(f"cold {c['cold']}")
    t = "never" if c.get("threshold") is None else c["threshold"]
    extra.append(f"t {t}, pin {c.get('pinned_share')}")
    return f"{c['method']} ({', '.join(extra)})"


# --------------------------------------------------------------------------- driver


def run_child(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; wall, user+sys CPU and peak RSS of the child (wait4)."""
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"child failed ({p.returncode}): {' '.join(cmd)}")
    return {
        "wall": time.perf_counter() - t0,
        "cpu": ru.ru_utime + ru.ru_stime,
        "peak_rss_bytes": ru.ru_maxrss * 1024,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }


def code_version() -> str:
    """Commit of the code measured (``+dirty`` with uncommitted changes to the package)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        # Only the package counts: the results files this script writes are tracked too.
        dirty = git(
            "status", "--porcelain", "--untracked-files=no", "--", str(here.parent / "bandstore")
        )
    except (OSError, subprocess.CalledProcessError):
        return "-"
    return rev + ("+dirty" if dirty else "")


def fresh_store(data: Path, run: Path) -> Path:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copytree(data / "store", run / "store")
    return run / "store"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--methods", default="metis,auto", help="api runs, comma separated")
    ap.add_argument("--cli", default="", help="methods run through the CLI, comma separated")
    ap.add_argument("--max-tuning-lookups", type=int, default=None,
                    help="passed to relayout (default: relayout's own; 0: no bound)")  # fmt: skip
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="results JSON (appended runs)")
    ap.add_argument("--no-progress", action="store_true")
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--trace", help=argparse.SUPPRESS)
    ap.add_argument("--report", nargs="+", type=Path, metavar="JSON",
                    help="print the markdown tables of these results files")  # fmt: skip
    args = ap.parse_args()
    if args.report:
        print(markdown(args.report), end="")
        return
    if args.worker:
        worker(args)
        return

    data = args.data_dir or Path(f"/tmp/bandstore_e2e_{args.rows}_{args.lookups}_{args.dim}")
    t0 = time.perf_counter()
    meta = make_data(data, args.rows, args.lookups, args.dim)
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {meta}", flush=True)
    out_path = args.out or RESULTS / f"relayout_e2e_{args.rows}_{args.lookups}.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {"runs": []}
    results["meta"] = {**meta, "python": platform.python_version(), "numpy": np.__version__,
                       "cpus": os.cpu_count()}  # fmt: skip
    env = dict(os.environ)
    for m in [m for m in args.methods.split(",") if m]:
        store = fresh_store(data, data / f"run_{m}")
        res_file = data / f"run_{m}.json"
        cmd = [sys.executable, __file__, "--worker", "--method", m, "--store", str(store),
               "--trace", str(data / "trace.npz"), "--out", str(res_file),
               "--dim", str(args.dim)]  # fmt: skip
        if args.max_tuning_lookups is not None:
            cmd += ["--max-tuning-lookups", str(args.max_tuning_lookups)]
        if args.no_progress:
            cmd.append("--no-progress")
        print(f"api {m}: {' '.join(cmd)}", flush=True)
        outer = run_child(cmd, env)
        inner = json.loads(res_file.read_text())
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        run = {"mode": "api", "method": m, "max_tuning_lookups": args.max_tuning_lookups,
               "child": outer, **inner, "commit": code_version(), "when": when}  # fmt: skip
        results["runs"].append(run)
        out_path.write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps({k: v for k, v in run.items() if k != "report"}, indent=1, default=str))
        print(json.dumps(run["report"], indent=1, default=str), flush=True)
        shutil.rmtree(data / f"run_{m}", ignore_errors=True)
    for m in [m for m in args.cli.split(",") if m]:
        store = fresh_store(data, data / f"cli_{m}")
        cmd = [sys.executable, "-m", "bandstore.cli", "relayout", str(store),
               str(data / "trace.npz"), "--method", m]  # fmt: skip
        if args.max_tuning_lookups is not None:
            cmd += ["--max-tuning-lookups", str(args.max_tuning_lookups)]
        print(f"cli {m}: {' '.join(cmd)}", flush=True)
        outer = run_child(cmd, env)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        run = {"mode": "cli", "method": m, "max_tuning_lookups": args.max_tuning_lookups,
               "child": outer, "commit": code_version(), "when": when}  # fmt: skip
        results["runs"].append(run)
        out_path.write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps(run, indent=1, default=str), flush=True)
        shutil.rmtree(data / f"cli_{m}", ignore_errors=True)


if __name__ == "__main__":
    main()
