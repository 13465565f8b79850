"""Past one machine, on Ray (issue 24): the sharded server (``--part serve``).

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["serve"], default="serve")
    ap.add_argument("--quick", action="store_true", help="a small store, short runs")
    ap.add_argument("--megabytes", type=float, default=256.0)
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32, help="bags of every table per request")
    ap.add_argument("--requests", type=int, default=200, help="distinct request bodies")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=500, help="shard calls per round and side")
    args = ap.parse_args(argv)
    if args.quick:
        args.megabytes, args.requests, args.seconds, args.warmup = 32.0, 50, 4.0, 1.0
        args.rounds, args.calls = 2, 200
    if args.part in ("serve", "all"):
        serve_main(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
