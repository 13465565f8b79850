"""Past one machine, on Ray: how the rebuild job scales with Ray workers.

    python benchmarks/bench_scale.py [--part rebuild|all] [--quick] [--lookups N] [--repeats R]

Part ``rebuild``: a synthetic log (``bandstore.traces.synth``: Zipf popularity with co-access
communities, four tables) of ``--lookups`` lookups (default 100M; ``--quick``: 3M) is written as
``--files`` ``.npz`` log files; a store of its tables (dim 16) is created once and copied for
every run. ``tools/rebuild.py STORE LOGS... --json`` then runs, as the user runs it, with
``--engine local`` (the baseline) and with ``--engine ray --address`` on a Ray cluster of 1 and
of 2 worker CPUs started beforehand (``ray start --head --num-cpus N``: the cluster's start is
timed apart, as a user's cluster runs already), interleaved (local, ray 1, ray 2, local, ...).
Reported per run: the job's wall time and its stage times, the driver's peak RSS, every Ray
worker's peak RSS (``VmHWM`` of the raylet's ``ray::`` children), and whether the committed
store is identical, record for record and byte for byte, to the local engine's. Results:
``benchmarks/results/scale_rebuild.{md,json}`` (``--quick``: ``scale_rebuild_quick``), with the
load average.

Each part lives in functions named ``<part>_*``; ``PARTS`` maps a part to its entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from paths import RESULTS, run_facts  # noqa: E402

TOOL = ROOT / "tools" / "rebuild.py"
#: Table sizes (rows) at 100M lookups; --quick scales them with the lookups.
REBUILD_TABLES = {"t0": 2_000_000, "t1": 1_000_000, "t2": 500_000, "t3": 200_000}
REBUILD_POOLING = 20  # lookups per query per table


# --------------------------------------------------------------------------- rebuild part


def rebuild_generate(
    work: Path, lookups: int, files: int, seed: int = 0
) -> tuple[Path, list[Path]]:
    """The store (dim 16) and ``files`` .npz logs (later files have later mtimes) of a
    synthetic trace of about ``lookups`` lookups."""
    from bandstore.demo import create_store_for_trace
    from bandstore.traces.synth import synth

    scale = lookups / 100_000_000
    tables = {n: max(1000, int(r * scale)) for n, r in REBUILD_TABLES.items()}
    n_queries = lookups // (REBUILD_POOLING * len(tables))
    t0 = time.perf_counter()
    trace = synth(tables, n_queries, pooling=REBUILD_POOLING, zipf=0.9, community_size=32,
                  co_access=0.9, seed=seed)  # fmt: skip
    print(f"generated {trace.n_lookups():,} lookups in {time.perf_counter() - t0:.0f} s",
          flush=True)  # fmt: skip
    store = work / "store"
    create_store_for_trace(store, trace, dim=16, progress=False).close()
    logs = []
    bounds = np.linspace(0, trace.n_queries, files + 1).astype(int)
    base = time.time() - 3600
    for i in range(files):
        p = work / f"log{i:03d}.npz"
        trace.query_slice(int(bounds[i]), int(bounds[i + 1])).save(p)
        os.utime(p, (base + i, base + i))
        logs.append(p)
    return store, logs


def rebuild_snapshot(path: Path) -> dict[Any, Any]:
    """Every catalog record (JSON ones without their wall-clock fields) and every version
    file's bytes (by digest)."""
    import hashlib

    import lmdb

    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if k not in ("committed", "created", "time")}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    out: dict[Any, Any] = {}
    env = lmdb.open(str(path / "catalog"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            for k, v in txn.cursor():
                try:
                    out[bytes(k)] = clean(json.loads(bytes(v)))
                except (UnicodeDecodeError, ValueError):
                    out[bytes(k)] = hashlib.blake2b(bytes(v)).hexdigest()
    finally:
        env.close()
    for f in sorted((path / "versions").rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            h = hashlib.blake2b()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            out[str(f.relative_to(path))] = h.hexdigest()
    return out


def _pids_naming(text: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(proc.name))
            except OSError:
                pass
    return out


def _children(ppid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                out.append(int(proc.name))
    return out


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RebuildCluster:
    """A Ray head of ``cpus`` worker CPUs on 127.0.0.1 under its own temp dir, stopped by the
    pids of its processes (never ``ray stop``: other jobs' clusters live on this machine)."""

    def __init__(self, cpus: int):
        self.cpus = cpus
        self.root = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: socket paths
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        ray_bin = str(Path(sys.executable).parent / "ray")
        t0 = time.perf_counter()
        for attempt in range(3):  # a loaded machine may miss the raylet's 30 s start deadline
            done = subprocess.run(
                [ray_bin, "start", "--head", "--port", str(self.port), "--num-cpus", str(cpus),
                 "--include-dashboard=false",
                 "--temp-dir", str(self.root), "--disable-usage-stats"],
                capture_output=True, text=True, timeout=300,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            if done.returncode == 0:
                break
            self.stop(remove=False)
            if attempt == 2:
                raise SystemExit(f"ray start failed: {done.stderr[-2000:]}")
        self.start_seconds = time.perf_counter() - t0

    def workers(self) -> list[int]:
        """Pids of the cluster's worker processes (``ray::`` children of its raylet)."""
        out = []
        for raylet in [p for p in _pids_naming(str(self.root)) if _is_raylet(p)]:
            for c in _children(raylet):
                try:
                    cmd = Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if cmd.startswith("ray::") or "default_worker.py" in cmd:
                    out.append(c)
        return out

    def stop(self, remove: bool = True) -> None:
        pids = set(_pids_naming(str(self.root)))
        for p in list(pids):
            pids.update(_children(p))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 20
            while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
                time.sleep(0.2)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def _is_raylet(pid: int) -> bool:
    try:
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return exe.endswith(b"raylet")


def rebuild_run(store: Path, logs: list[Path], work: Path, name: str,
                cluster: RebuildCluster | None, method: str) -> dict[str, Any]:  # fmt: skip
    """One run of tools/rebuild.py on a fresh copy of ``store``; wall time, peak RSS of the
    driver and of every Ray worker, its report."""
    target = work / f"run_{name}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(store, target)
    cmd = [sys.executable, str(TOOL), str(target), *map(str, logs), "--method", method,
           "--workers", "2", "--json"]  # fmt: skip
    if cluster is not None:
        cmd += ["--engine", "ray", "--address", cluster.address]
    load = os.getloadavg()[0]
    peaks: dict[int, float] = {}
    driver = 0.0
    out_path = work / f"{name}.out"
    t0 = time.perf_counter()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        while proc.poll() is None:
            driver = max(driver, _peak_rss_mib(proc.pid) or 0.0)
            if cluster is not None:
                for w in cluster.workers():
                    rss = _peak_rss_mib(w)
                    if rss is not None:
                        peaks[w] = max(peaks.get(w, 0.0), rss)
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{name}: rebuild failed ({proc.returncode}): {err[-2000:]}")
    report = json.loads(out_path.read_text())
    if cluster is not None:  # idle workers stay: their peak is final
        for w in cluster.workers():
            rss = _peak_rss_mib(w)
            if rss is not None:
                peaks[w] = max(peaks.get(w, 0.0), rss)
    return {
        "contender": name,
        "wall_seconds": wall,
        "load_at_start": load,
        "stage_seconds": report["seconds"],
        "driver_peak_rss_mib": driver,
        "worker_peak_rss_mib": sorted(peaks.values(), reverse=True),
        "store": target,
        "tables": {
            n: {
                k: t[k]
                for k in (
                    "layout",
                    "heldout_chosen_blocks_per_1000_lookups",
                    "cache_bytes",
                    "threshold",
                    "strategy",
                )
            }
            for n, t in report["tables"].items()
        },  # fmt: skip
    }


def rebuild_main(args: argparse.Namespace) -> None:
    """The rebuild part: local vs Ray with 1 and 2 worker CPUs, interleaved."""
    lookups = args.lookups or (3_000_000 if args.quick else 100_000_000)
    work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.work))
    load_start = os.getloadavg()
    try:
        store, logs = rebuild_generate(work, lookups, args.files)
        runs: list[dict[str, Any]] = []
        clusters: dict[int, RebuildCluster] = {}
        starts: dict[int, float] = {}
        for rep in range(args.repeats):
            for name, cpus in (("local", 0), ("ray-1", 1), ("ray-2", 2)):
                cluster = None
                if cpus:
                    cluster = RebuildCluster(cpus)
                    starts[cpus] = cluster.start_seconds
                    clusters[cpus] = cluster
                try:
                    r = rebuild_run(store, logs, work, f"{name}.{rep}", cluster, args.method)
                finally:
                    if cluster is not None:
                        cluster.stop()
                r["contender"], r["repeat"] = name, rep
                print(f"{name} rep {rep}: {r['wall_seconds']:.1f} s, workers' peak RSS "
                      f"{[round(x) for x in r['worker_peak_rss_mib']]} MiB, "
                      f"load {r['load_at_start']:.2f}", flush=True)  # fmt: skip
                runs.append(r)
        reference = rebuild_snapshot(runs[0]["store"])
        for r in runs:
            r["identical_to_local"] = rebuild_snapshot(r["store"]) == reference
            r["store"] = str(r["store"])
        rebuild_write(args, lookups, runs, starts, load_start, logs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rebuild_write(args: argparse.Namespace, lookups: int, runs: list[dict[str, Any]],
                  starts: dict[int, float], load_start: tuple[float, ...],
                  logs: list[Path]) -> None:  # fmt: skip
    cmd, commit, load_end = run_facts("bench_scale.py", None)
    stem = "scale_rebuild_quick" if args.quick else "scale_rebuild"
    facts = {
        "command": cmd, "commit": commit, "lookups": lookups, "files": len(logs),
        "method": args.method, "tables": REBUILD_TABLES, "scale": lookups / 1e8,
        "load_start": [round(x, 2) for x in load_start], "load_end": load_end,
        "cluster_start_seconds": starts, "runs": runs,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(facts, indent=1, default=str) + "\n")
    local = [r["wall_seconds"] for r in runs if r["contender"] == "local"]
    lines = [
        "# The rebuild job on Ray: 1 vs 2 workers, and the local engine",
        "",
        f"`{cmd}` at {commit}; load average {', '.join(f'{x:.2f}' for x in load_start)} at "
        f"the start, {load_end} at the end. {lookups:,} lookups (4 tables, "
        f"{REBUILD_POOLING} per query per table, Zipf 0.9, communities of 32) in {len(logs)} "
        f".npz logs; `--method {args.method}`, DRAM budget 10% of the decoded tables, "
        "plan for 2 workers. `ray-N`: `tools/rebuild.py --engine ray --address` on a cluster "
        "of N worker CPUs started before the run (its start, not in the wall time: "
        + ", ".join(f"{k} CPU {v:.1f} s" for k, v in starts.items())
        + ").",
        "",
        "| contender | repeat | load | wall s | vs local | read+relayout s | sizing s | plan s "
        "| commit s | driver peak RSS MiB | worker peak RSS MiB | identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in runs:
        s = r["stage_seconds"]
        base = local[min(r["repeat"], len(local) - 1)]
        lines.append(
            f"| {r['contender']} | {r['repeat']} | {r['load_at_start']:.2f} | "
            f"{r['wall_seconds']:.1f} | {base / r['wall_seconds']:.2f}x | "
            f"{s['relayout']:.1f} | {s['sizing']:.1f} | {s['plan']:.1f} | {s['commit']:.1f} | "
            f"{r['driver_peak_rss_mib']:.0f} | "
            f"{', '.join(f'{x:.0f}' for x in r['worker_peak_rss_mib']) or '-'} | "
            f"{'yes' if r['identical_to_local'] else 'NO'} |"
        )
    lines += [
        "",
        "`vs local`: the local run of the same repeat over this run (higher is faster). "
        "`read+relayout` is the report's relayout stage; the logs are read before it (in the "
        "wall time only). Driver peak RSS: `VmHWM` of the tool's process, read every 0.5 s. "
        "Worker peak RSS: `VmHWM` of each `ray::` worker process of the "
        "cluster. `identical`: every catalog record (JSON records without their wall-clock "
        "fields) and every version file's bytes equal the first local run's.",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# --------------------------------------------------------------------------- entry

#: part -> entry point (each part's code lives in functions named ``<part>_*``).
PARTS = {"rebuild": rebuild_main}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--quick", action="store_true", help="a sanity run: 3M lookups")
    p.add_argument("--lookups", type=int, default=None, help="rebuild: lookups in the log")
    p.add_argument("--files", type=int, default=8, help="rebuild: log files")
    p.add_argument("--method", default="metis", help="rebuild: the relayout method")
    p.add_argument("--repeats", type=int, default=1, help="rebuild: interleaved rounds")
    p.add_argument("--work", default=None, help="scratch directory (default: the system's)")
    args = p.parse_args(argv)
    for name, fn in PARTS.items():
        if args.part in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
