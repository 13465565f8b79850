"""Past one machine, on Ray (issue 24): the rebuild job on Ray workers (``--part rebuild``)
and the sharded server (``--part serve``).

    python benchmarks/bench_scale.py [--part rebuild|serve|all] [--quick] ...

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

Part ``serve``.
Question (serve): what does ``bandstore serve --engine ray`` cost and give against the
one-process server on the same requests: requests/s and p50/p99 with 1 and 2 shards on
loopback, the router's added latency per request, and, from the measured per-shard call
latencies, what a fan-out over k shards would do to the tail (a simulation ``docs/scale.md``
quotes).

Setup: a synthetic store (``--tables`` float16 tables of dim 64, Zipf-sized, ``--megabytes``
in all; the largest is split by rows over the shards), DRAM caches at 10% of the rows; a
dlrm_like trace gives the requests (``--batch`` bags of every table per request, npz in and
out: the server's efficient wire format, so the comparison is of the serving paths, not of
JSON). Three servers run side by side on 127.0.0.1 on one local Ray cluster started here
(the sharded ones join it with ``--address``): (L) ``--engine local``, (R1) ``--engine ray
--shards 1``, (R2) ``--engine ray --shards 2``; measured in turn, L R1 R2 L R1 R2 ..., each a
bounded closed loop of ``--clients`` clients for ``--seconds`` after ``--warmup``. The
per-shard call latency is measured in this process, interleaved: ``ShardedBackend.lookup``
(router -> one actor -> back) vs ``StoreBackend.lookup`` (the same lookups in process).

    python benchmarks/bench_scale.py --part serve [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import io
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
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from paths import RESULTS, run_facts  # noqa: E402

import bandstore  # noqa: E402

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


# --------------------------------------------------------------------------- serve part

SERVE_CONTENDERS = {
    "L": "one process (--engine local)",
    "R1": "router + 1 shard (--engine ray --shards 1)",
    "R2": "router + 2 shards (--engine ray --shards 2)",
}
NPZ = "application/x-npz"


# ---- serve: data ---------------------------------------------------------------------------
def serve_setup(work: Path, megabytes: float, tables: int, dim: int, batch: int,
                n_requests: int) -> dict:  # fmt: skip
    """A float16 store of ``tables`` Zipf-sized tables (``megabytes`` in all) and npz request
    bodies of ``batch`` bags of every table from a dlrm_like trace."""
    from bandstore.traces.synth import dlrm_like

    names = [f"T{j + 1}" for j in range(tables)]
    total_rows = int(megabytes * 2**20 / (2 * dim))
    share = 1.0 / np.arange(1, tables + 1) ** 1.1
    rows = {n: max(1000, int(total_rows * s / share.sum()))
            for n, s in zip(names, share, strict=True)}  # fmt: skip
    rng = np.random.default_rng(0)
    store = work / "store"
    with bandstore.create(store) as s:
        for n in names:
            s.add_table(n, rng.standard_normal((rows[n], dim)).astype(np.float32),
                        codec="float16", progress=False)  # fmt: skip
    trace = dlrm_like(batch * n_requests, seed=1, tables=rows)
    bodies = []
    for r in range(n_requests):
        arrays = {}
        for n in names:
            ids, off = trace.table(n)
            lo, hi = off[r * batch], off[(r + 1) * batch]
            arrays[f"{n}/indices"] = np.asarray(ids[lo:hi], dtype=np.int64)
            arrays[f"{n}/offsets"] = np.asarray(off[r * batch : (r + 1) * batch] - lo, np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        bodies.append(buf.getvalue())
    cache_bytes = int(0.1 * sum(rows.values()) * (dim * 4 + 16))  # 10% of the rows, decoded
    return {"store": store, "rows": rows, "bodies": bodies, "cache_bytes": cache_bytes,
            "split_rows": max(rows.values()) - 1, "dim": dim}  # fmt: skip


# ---- serve: servers and load -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``bandstore serve`` in a subprocess on 127.0.0.1 (stopped with SIGTERM)."""

    def __init__(self, args: list[str], log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bandstore.cli", "serve", *args, "--port", str(self.port),
             "--log-level", "warning"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout} s: see {self.log.name}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


async def _serve_load(url: str, bodies: list[bytes], clients: int, warmup: float,
                      seconds: float) -> tuple[list[float], dict[str, int]]:  # fmt: skip
    """Closed loop: ``clients`` clients each send the next body once answered; latencies of
    the answers started after ``warmup``, until ``warmup + seconds``."""
    import httpx

    lat: list[float] = []
    errors: dict[str, int] = {}
    headers = {"content-type": NPZ, "accept": NPZ}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def one(k: int) -> None:
            i = k
            while (t0 := loop.time()) < stop_at:
                try:
                    r = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
                    kind = None if r.status_code == 200 else str(r.status_code)
                except httpx.TransportError as e:
                    kind = type(e).__name__
                if kind is not None:
                    errors[kind] = errors.get(kind, 0) + 1
                elif t0 >= measure_from:
                    lat.append(loop.time() - t0)
                i += clients

        await asyncio.gather(*(one(k) for k in range(clients)))
    return lat, errors


def serve_load(url: str, bodies: list[bytes], clients: int, warmup: float, seconds: float):
    before = os.getloadavg()[0]
    lat, errors = asyncio.run(_serve_load(url + "/v1/lookup", bodies, clients, warmup, seconds))
    a = np.asarray(lat)
    return {
        "requests": int(a.size),
        "errors": errors,
        "rps": round(a.size / seconds, 1),
        "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 2) if a.size else None,
        "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 2) if a.size else None,
        "load_avg_1m": [round(before, 2), round(os.getloadavg()[0], 2)],
    }


def serve_agreement(urls: dict[str, str], bodies: list[bytes]) -> dict[str, float]:
    """The same requests through every server: the largest difference from L's answers."""
    import httpx

    got: dict[str, list[np.ndarray]] = {}
    for k, url in urls.items():
        got[k] = []
        for b in bodies:
            r = httpx.post(url + "/v1/lookup", content=b, timeout=120,
                           headers={"content-type": NPZ, "accept": NPZ})  # fmt: skip
            r.raise_for_status()
            z = np.load(io.BytesIO(r.content), allow_pickle=False)
            got[k].extend(z[n] for n in sorted(z.files))
    return {k: float(max(np.abs(a - b).max() for a, b in zip(v, got["L"], strict=True)))
            for k, v in got.items()}  # fmt: skip


# ---- serve: per-shard calls and the fan-out ----------------------------------------------------
def serve_shard_calls(store: Path, bodies: list[bytes], cache_bytes: int, rounds: int,
                      calls: int) -> dict:  # fmt: skip
    """Per-request latency of one shard call through Ray (``ShardedBackend`` with one shard)
    vs the same lookup in process (``StoreBackend``), interleaved in blocks of ``calls``;
    both warmed by one pass first. Returns the samples (seconds) and their summary."""
    from bandstore.server.backend import StoreBackend
    from bandstore.server.sharded import ShardedBackend, ShardOptions

    reqs = []
    for b in bodies:
        z = np.load(io.BytesIO(b), allow_pickle=False)
        names = sorted({k.split("/")[0] for k in z.files})
        reqs.append({n: (z[f"{n}/indices"], z[f"{n}/offsets"], None) for n in names})
    modes = dict.fromkeys(reqs[0], "sum")
    sharded = ShardedBackend(store, ShardOptions(shards=1), cache_bytes=cache_bytes)
    local = StoreBackend(bandstore.open(store, cache_bytes=cache_bytes, plan=False))
    samples: dict[str, list[float]] = {"ray_call": [], "in_process": []}
    try:
        for r in reqs:  # warm both caches and kernels on the same requests
            sharded.lookup(r, modes)
            local.lookup(r, modes)
        for _ in range(rounds):
            for key, be in (("in_process", local), ("ray_call", sharded)):
                for i in range(calls):
                    r = reqs[i % len(reqs)]
                    t0 = time.perf_counter()
                    be.lookup(r, modes)
                    samples[key].append(time.perf_counter() - t0)
        hit_ratio = local.stats()["total"]["hit_ratio"]
    finally:
        sharded.close()
        local.close()
    summary: dict[str, Any] = {k: _pcts(v) for k, v in samples.items()}
    summary["ids_per_request"] = round(
        float(np.mean([sum(p[0].size for p in r.values()) for r in reqs])), 1
    )
    summary["in_process_hit_ratio"] = round(float(hit_ratio), 4)
    return {"samples": samples, "summary": summary}


def serve_shard_memory(store: Path, rows: dict[str, int], cache_bytes: int) -> dict:
    """What one shard of two holds in DRAM (``Store.memory``, after serving a few lookups)
    when it owns the first half of the largest table only: its cache, and the per-row
    structures it keeps for the whole table (the inverse layout, access counts, the cache's
    slot index), in bytes and per row of that table."""
    from bandstore.server.sharded import StoreShard

    big = max(rows, key=rows.get)  # type: ignore[arg-type]
    n = rows[big]
    shard = StoreShard(str(store), [(big, 0, n // 2)], cache_bytes=cache_bytes)
    try:
        ids = np.arange(0, n // 2, 97, dtype=np.int64)
        shard.lookup({big: (ids, np.zeros(1, np.int64), None)}, {big: "sum"})
        m = shard.store.memory()[big]
        info = shard.store.cache_info()[big]
    finally:
        shard.store.close()
    fixed = m["index"] + m["counts"] + (m["cache"] - info["capacity_rows"] * (4 * 64 + 9))
    return {"table": big, "rows": n, "owned_rows": n // 2, "memory": m,
            "cache_capacity_rows": info["capacity_rows"],
            "whole_table_bytes_per_row": round(fixed / n, 2)}  # fmt: skip


def _pcts(v: list[float]) -> dict[str, float]:
    a = np.asarray(v) * 1e3
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}  # fmt: skip


def serve_fanout(samples: list[float], ks=(1, 2, 4, 8, 16, 32, 64), trials: int = 20000,
                 seed: int = 0) -> dict[int, dict[str, float]]:  # fmt: skip
    """A request fanned out to ``k`` shards waits for the slowest: p50/p99 of the max of
    ``k`` shard-call latencies drawn (independently, with replacement) from ``samples``."""
    rng = np.random.default_rng(seed)
    a = np.asarray(samples) * 1e3
    out = {}
    for k in ks:
        m = a[rng.integers(0, a.size, (trials, k))].max(axis=1)
        out[k] = {"p50_ms": round(float(np.percentile(m, 50)), 3),
                  "p99_ms": round(float(np.percentile(m, 99)), 3)}  # fmt: skip
    return out


# ---- serve: the run --------------------------------------------------------------------------
def serve_run(args: argparse.Namespace) -> dict:
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench_scale_serve_"))
    servers: dict[str, ServeProcess] = {}
    try:
        setup = serve_setup(work, args.megabytes, args.tables, 64, args.batch, args.requests)
        store, cb = setup["store"], setup["cache_bytes"]
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
        address = ray.get_runtime_context().gcs_address
        common = [str(store), "--cache-bytes", str(cb)]
        servers["L"] = ServeProcess(common, work / "L.log")
        servers["R1"] = ServeProcess([*common, "--engine", "ray", "--shards", "1",
                                      "--address", address], work / "R1.log")  # fmt: skip
        servers["R2"] = ServeProcess([*common, "--engine", "ray", "--shards", "2", "--split-rows",
                                      str(setup["split_rows"]), "--address", address],
                                     work / "R2.log")  # fmt: skip
        for s in servers.values():
            s.wait_ready()
        agreement = serve_agreement({k: s.url for k, s in servers.items()}, setup["bodies"][:20])
        runs: dict[str, list[dict]] = {k: [] for k in servers}
        single: dict[str, list[dict]] = {k: [] for k in servers}
        for _ in range(args.rounds):
            for k, s in servers.items():
                runs[k].append(serve_load(s.url, setup["bodies"], args.clients, args.warmup,
                                          args.seconds))  # fmt: skip
            for k, s in servers.items():  # one client: latency without queueing
                single[k].append(serve_load(s.url, setup["bodies"], 1, args.warmup,
                                            args.seconds / 2))  # fmt: skip
        for s in servers.values():
            s.stop()
        servers.clear()
        calls = serve_shard_calls(store, setup["bodies"], cb, args.rounds, args.calls)
        fanout = serve_fanout(calls["samples"]["ray_call"])
        memory = serve_shard_memory(store, setup["rows"], cb)
        return {
            "facts": {
                "tables": args.tables,
                "rows": sum(setup["rows"].values()),
                "largest_table_rows": max(setup["rows"].values()),
                "dim": 64,
                "codec": "float16",
                "megabytes": args.megabytes,
                "batch": args.batch,
                "cache_bytes": cb,
                "requests": len(setup["bodies"]),
            },  # fmt: skip
            "agreement_max_abs_diff_vs_L": agreement,
            "runs": runs,
            "one_client": single,
            "shard_calls": calls["summary"],
            "fanout": fanout,
            "shard_memory": memory,
        }
    finally:
        for s in servers.values():
            s.stop()
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def serve_summary(runs: list[dict]) -> dict:
    def med(key):
        vals = [r[key] for r in runs if r[key] is not None]
        return round(float(np.median(vals)), 2) if vals else None

    return {"rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "errors": sum(sum(r["errors"].values()) for r in runs)}  # fmt: skip


def serve_write(out: dict, stem: str = "scale_serve") -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    s = {k: serve_summary(v) for k, v in out["runs"].items()}
    f = out["facts"]
    lines = [
        "# Sharded serving on Ray (bench_scale.py --part serve)",
        "",
        f"`{out['command']}` at {out['commit']}; load average before: {out['load_before']}, "
        f"after: {out['load_after']} (2 cores shared with other jobs; client, router, shards "
        "and the Ray cluster on the same machine).",
        f"Store: {f['tables']} float16 tables of dim {f['dim']}, {f['rows']} rows "
        f"({f['megabytes']} MB; the largest, {f['largest_table_rows']} rows, split by rows "
        f"over R2's shards), caches {f['cache_bytes']} B (10% of the rows). Requests: "
        f"{f['batch']} bags of every table (npz in and out), {out['clients']} closed-loop "
        f"clients, {out['seconds']} s measured after {out['warmup']} s, {out['rounds']} rounds "
        "interleaved (L R1 R2 ...); medians over rounds.",
        "",
        "| server | requests/s | p50 ms | p99 ms | errors | per round (rps) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for k, r in out["runs"].items():
        rounds = ", ".join(str(x["rps"]) for x in r)
        lines.append(f"| ({k}) {SERVE_CONTENDERS[k]} | {s[k]['rps']} | {s[k]['p50_ms']} | "
                     f"{s[k]['p99_ms']} | {s[k]['errors']} | {rounds} |")  # fmt: skip
    one = {k: serve_summary(v) for k, v in out["one_client"].items()}
    lines += [
        "",
        "One client (no queueing), same rounds:",
        "",
        "| server | requests/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| ({k}) | {v['rps']} | {v['p50_ms']} | {v['p99_ms']} | {v['errors']} |"
              for k, v in one.items()]  # fmt: skip
    c = out["shard_calls"]
    added = round(c["ray_call"]["p50_ms"] - c["in_process"]["p50_ms"], 3)
    lines += [
        "",
        "- answers agree: max |x - L's| = "
        + ", ".join(f"{k} {v:.1e}" for k, v in out["agreement_max_abs_diff_vs_L"].items()),
        f"- router's added latency per request over HTTP, one client (p50 R1 - p50 L): "
        f"{round(one['R1']['p50_ms'] - one['L']['p50_ms'], 2)} ms (p99: "
        f"{round(one['R1']['p99_ms'] - one['L']['p99_ms'], 2)} ms); with "
        f"{out['clients']} clients: {round(s['R1']['p50_ms'] - s['L']['p50_ms'], 2)} ms; R1/L "
        "throughput "
        f"{s['R1']['rps'] / s['L']['rps']:.2f}, R2/L {s['R2']['rps'] / s['L']['rps']:.2f}",
        f"- one shard call through Ray vs in process (same lookups, interleaved, "
        f"{c['ray_call']['n']} each): p50 {c['ray_call']['p50_ms']} vs "
        f"{c['in_process']['p50_ms']} ms (added {added} ms), p99 {c['ray_call']['p99_ms']} vs "
        f"{c['in_process']['p99_ms']} ms; {c.get('ids_per_request')} ids per request, "
        f"hit ratio {c.get('in_process_hit_ratio')}",
        "",
        "Fan-out (simulated from the measured Ray shard-call latencies: a request waits for the "
        "slowest of k shards, each drawn independently from the samples):",
        "",
        "| k shards | p50 ms | p99 ms |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['p50_ms']} | {v['p99_ms']} |" for k, v in out["fanout"].items()]
    m = out["shard_memory"]
    lines += [
        "",
        f"Shard memory: a shard owning rows [0, {m['owned_rows']}) of {m['table']} "
        f"({m['rows']} rows) holds {json.dumps(m['memory'])} B; its cache has "
        f"{m['cache_capacity_rows']} rows (its share); the per-row structures it keeps for the "
        f"whole table cost {m['whole_table_bytes_per_row']} B per row of the table.",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def serve_main(args: argparse.Namespace, argv: list[str] | None) -> None:
    cmd, commit, load_before = run_facts("bench_scale.py", argv)
    out = serve_run(args)
    out.update(command=cmd, commit=commit, load_before=load_before,
               load_after=", ".join(f"{x:.2f}" for x in os.getloadavg()), clients=args.clients,
               seconds=args.seconds, warmup=args.warmup, rounds=args.rounds)  # fmt: skip
    serve_write(out)
    print((RESULTS / "scale_serve.md").read_text())


# --------------------------------------------------------------------------- entry


def serve_part(args: argparse.Namespace, argv: list[str] | None) -> None:
    if args.quick:
        args.megabytes, args.requests, args.seconds, args.warmup = 32.0, 50, 4.0, 1.0
        args.rounds, args.calls = 2, 200
    serve_main(args, argv)


#: part -> entry point (each part's code lives in functions named ``<part>_*``).
PARTS = {"rebuild": lambda args, argv: rebuild_main(args), "serve": serve_part}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--quick", action="store_true", help="a sanity run (smaller, shorter)")
    p.add_argument("--lookups", type=int, default=None, help="rebuild: lookups in the log")
    p.add_argument("--files", type=int, default=8, help="rebuild: log files")
    p.add_argument("--method", default="metis", help="rebuild: the relayout method")
    p.add_argument("--repeats", type=int, default=1, help="rebuild: interleaved rounds")
    p.add_argument("--work", default=None, help="scratch directory (default: the system's)")
    p.add_argument("--megabytes", type=float, default=256.0, help="serve: store size")
    p.add_argument("--tables", type=int, default=8, help="serve: tables")
    p.add_argument("--batch", type=int, default=32, help="serve: bags of every table per request")
    p.add_argument("--requests", type=int, default=200, help="serve: distinct request bodies")
    p.add_argument("--clients", type=int, default=8, help="serve: concurrent clients")
    p.add_argument("--seconds", type=float, default=10.0, help="serve: seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="serve: warm-up seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="serve: interleaved rounds")
    p.add_argument("--calls", type=int, default=500, help="serve: shard calls per round and side")
    args = p.parse_args(argv)
    for name, fn in PARTS.items():
        if args.part in (name, "all"):
            fn(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
