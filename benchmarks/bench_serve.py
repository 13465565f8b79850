"""Serving a DLRM over HTTP: bandstore vs all-in-DRAM torch vs RocksDB, batching on and off.

Question: behind the identical server (bandstore.server.create_app, /v1/predict, dynamic
batching), how many requests/s at what p50/p99 does the DLRM get when its embeddings come from
(a) bandstore at DRAM = 10% of the tables, tuned by ``bandstore relayout`` + ``size-cache`` on
earlier traffic; (b) torch ``nn.EmbeddingBag`` with every table in DRAM; (c) RocksDB (rocksdict,
a row per key, block cache = the same DRAM as (a)); (d) = (a) with batching off.

Load: closed loop on 127.0.0.1, ``--clients`` concurrent clients (one async httpx client) for
``--seconds`` after ``--warmup`` seconds, each sending the next request of a fixed list (the
same list, in the same order, for every contender) as soon as its previous one is answered.
The four servers run side by side (idle when not measured) and are measured in turn, A B C D
A B C D. Also measured on (a): /v1/lookup of one large batch as JSON vs ``application/x-npz``.

Two variants: ``criteo`` (the model of tools/train_dlrm.py on criteo-8k, held-out lines as
requests: small tables, 31.6k rows x 16) and ``synthetic`` (26 tables, D=64, sized so the
tables total ``--synthetic-mb``, random dense weights, a dlrm_like trace with Zipf skew and
co-access; the 10% DRAM budget binds there: the headline).

    python benchmarks/bench_serve.py [--quick] [--variants criteo synthetic]
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

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE), str(ROOT / "tools")):
    if p not in sys.path:
        sys.path.insert(0, p)

from paths import DATA, RESULTS, run_facts  # noqa: E402

import bandstore  # noqa: E402

CONTENDERS = {
    "a": "bandstore, DRAM 10%, tuned",
    "b": "torch nn.EmbeddingBag, all in DRAM",
    "c": "RocksDB (rocksdict), block cache 10%",
    "d": "(a) with batching off",
}


# ---- data and models -------------------------------------------------------------------------
def criteo_setup(work: Path, data: Path, batch: int, quick: bool) -> dict:
    """Train the example model (tools/train_dlrm.py); requests from the held-out lines,
    tuning trace from the training lines."""
    import train_dlrm

    model = work / "model"
    t0 = time.perf_counter()
    report = train_dlrm.train(data, model, epochs=1 if quick else 4, quiet=True)
    train_s = time.perf_counter() - t0
    labels, dense, cats = train_dlrm.read_criteo(data)
    z = np.load(model / "mapping.npz", allow_pickle=False)
    names = [f"C{j + 1}" for j in range(26)]
    ids = train_dlrm.to_ids(cats, [z[n] for n in names])
    n_train = report["train_lines"]
    tune = bandstore.Trace(
        {
            n: (ids[:n_train, j].copy(), np.arange(n_train + 1, dtype=np.int64))
            for j, n in enumerate(names)
        },
        num_rows=report["rows"],
    )
    requests = []
    held_dense, held_ids = dense[n_train:], ids[n_train:]
    for s in range(0, held_dense.shape[0] - batch + 1, batch):
        sparse = {
            n: {"indices": held_ids[s : s + batch, j].tolist(), "offsets": list(range(batch))}
            for j, n in enumerate(names)
        }
        requests.append({"dense": held_dense[s : s + batch].tolist(), "sparse": sparse})
    return {
        "store": model / "store",
        "model": model,
        "tune": tune,
        "requests": requests,
        "facts": {
            "tables": 26,
            "rows": report["total_rows"],
            "dim": report["embedding_dim"],
            "heldout_auc": round(report["heldout_auc"], 4),
            "train_seconds": round(train_s, 1),
        },
    }


def synthetic_setup(work: Path, megabytes: float, batch: int, n_requests: int, dim: int = 64):
    """26 tables of skewed sizes totalling ``megabytes`` at float32 x ``dim``; a random DLRM;
    a dlrm_like trace (Zipf 0.98, communities of 64 rows, 4 ids per bag on average)."""
    from safetensors.numpy import save_file

    from bandstore.server.model import DLRMConfig, Feature
    from bandstore.traces.synth import dlrm_like

    names = [f"T{j + 1}" for j in range(26)]
    total_rows = int(megabytes * 2**20 / (4 * dim))
    share = 1.0 / np.arange(1, 27) ** 1.1
    rows = {
        n: max(100, int(total_rows * s / share.sum())) for n, s in zip(names, share, strict=True)
    }
    rng = np.random.default_rng(0)
    store = work / "store"
    with bandstore.create(store) as s:
        for n in names:
            s.add_table(n, (rng.standard_normal((rows[n], dim)) * 0.1).astype(np.float32),
                        progress=False)  # fmt: skip
    config = DLRMConfig(
        dense_features=13,
        embedding_dim=dim,
        bottom_mlp=(64, dim),
        top_mlp=(64, 1),
        features=tuple(Feature(n, n, "sum") for n in names),
    )
    weights = {}
    for k, shape in config.layer_shapes().items():
        fan_in = shape[-1] if len(shape) == 2 else shape[0]
        weights[k] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    model = work / "model"
    model.mkdir()
    save_file(weights, str(model / config.weights))
    (model / "config.json").write_text(json.dumps(config.as_dict(), indent=2))
    n_tune = max(4 * n_requests * batch, 20_000)
    trace = dlrm_like(n_tune + n_requests * batch, tables=rows, pooling=4, seed=1)
    tune = trace.query_slice(0, n_tune)
    serve = trace.query_slice(n_tune, trace.n_queries)
    requests = []
    for r in range(n_requests):
        sparse = {}
        for n in names:
            idx, off = serve.table(n)
            a, b = off[r * batch], off[(r + 1) * batch]
            sparse[n] = {
                "indices": idx[a:b].tolist(),
                "offsets": (off[r * batch : (r + 1) * batch] - a).tolist(),
            }
        dense = rng.integers(0, 1000, (batch, 13)).astype(float).tolist()
        requests.append({"dense": dense, "sparse": sparse})
    return {
        "store": store,
        "model": model,
        "tune": tune,
        "requests": requests,
        "facts": {"tables": 26, "rows": int(sum(rows.values())), "dim": dim,
                  "table_mb": round(sum(rows.values()) * dim * 4 / 2**20, 1),
                  "ids_per_req": sum(len(q["indices"]) for q in requests[0]["sparse"].values())},
    }  # fmt: skip


def table_bytes(store: Path) -> int:
    with bandstore.open(store, cache_bytes=0) as s:
        return sum(i.rows * i.dim * 4 for i in s.tables.values())


def tune_store(store: Path, trace: bandstore.Trace, budget: int, work: Path, method: str) -> dict:
    """``bandstore relayout`` then ``bandstore size-cache --apply`` on the tuning trace, at the
    benchmark's DRAM budget (the commands, in process)."""
    from bandstore import cli

    path = work / "tune.npz"
    trace.save(path)
    out: dict = {}
    for name, argv in (
        (
            "relayout",
            ["relayout", str(store), str(path), "--cache-bytes", str(budget), "--method", method],
        ),
        # A bounded grid: the default (5 thresholds x 6 pinned shares) takes many minutes for
        # 26 tables on 2 busy cores.
        (
            "size-cache",
            [
                "size-cache",
                str(store),
                str(path),
                "--budget",
                str(budget),
                "--apply",
                "--thresholds",
                "0",
                "never",
                "--pinned-shares",
                "0",
                "0.5",
            ],
        ),
    ):
        t0 = time.perf_counter()
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                code = cli.main([*argv, "--json"])
            finally:
                sys.stdout = stdout
        out[name] = {"exit": code, "seconds": round(time.perf_counter() - t0, 1)}
    return out


# ---- servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, argv: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve_backends.py"), *argv, "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: see {self.log.name}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# ---- load ------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Conn:
    """One keep-alive HTTP/1.1 connection writing prepared requests and reading answers by
    Content-Length: a load generator that costs little CPU per request (httpx's client cost
    2-3x the server's CPU per request here, so on a loaded machine it, not the server, set
    the pace and batching had nothing to merge)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(request)
            await self.writer.drain()
            status = int((await self.reader.readline()).split()[1])
            length = None
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise ConnectionError("an answer without Content-Length")
            await self.reader.readexactly(length)
            return status
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            self.close()
            raise ConnectionError("the connection broke") from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _requests(url: str, bodies: list[bytes], headers: dict) -> tuple[str, int, list[bytes]]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    out = [
        f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {len(b)}\r\n{head}\r\n"
        .encode() + b
        for b in bodies
    ]  # fmt: skip
    return host, int(port), out


async def _load(url: str, bodies: list[bytes], headers: dict, clients: int, warmup: float,
                seconds: float, pid: int | None = None) -> dict:  # fmt: skip
    host, port, prepared = _requests(url, bodies, headers)
    latencies: list[float] = []
    done = 0  # answers received inside the measured window
    answered = 0  # and in the whole run
    cpu: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def server_cpu() -> None:
        # the server's CPU over the measured window: a cost per request that CPU
        # starvation (other jobs on the machine) does not change much
        if pid is None:
            return
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        cpu.append(cpu_seconds(pid))
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        cpu.append(cpu_seconds(pid))

    async def one(k: int) -> None:
        nonlocal errors, done, answered
        conn = _Conn(host, port)
        i = k
        try:
            while True:
                t0 = loop.time()
                if t0 >= stop_at:
                    return
                try:
                    status = await asyncio.wait_for(conn.post(prepared[i % len(prepared)]), 30)
                except (ConnectionError, OSError, asyncio.TimeoutError) as e:
                    conn.close()  # counted, and the run goes on
                    errors += 1
                    kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
                    i += clients
                    continue
                t1 = loop.time()
                done += measure_from <= t1 < stop_at
                answered += 1
                if status != 200:
                    errors += 1
                    kinds[str(status)] = kinds.get(str(status), 0) + 1
                elif t0 >= measure_from:
                    latencies.append(t1 - t0)
                i += clients
        finally:
            conn.close()

    client_cpu0 = time.process_time()
    await asyncio.gather(server_cpu(), *(one(k) for k in range(clients)))
    client_cpu = time.process_time() - client_cpu0
    lat = np.asarray(latencies)
    cpu_ms = round((cpu[1] - cpu[0]) * 1e3 / done, 2) if len(cpu) == 2 and done else None
    return {
        "requests": int(lat.size),
        "errors": errors,
        "error_kinds": kinds,
        "rps": round(lat.size / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2) if lat.size else None,
        "server_cpu_ms_per_request": cpu_ms,
        # the whole run's client CPU (warm-up included) over the answers of the whole run
        "client_cpu_ms_per_request": round(client_cpu * 1e3 / max(1, answered), 2),
    }


def batch_totals(base_url: str) -> tuple[float, float]:
    """(bags, batches) the server has batched so far, from its /metrics."""
    import httpx

    text = httpx.get(base_url + "/metrics", timeout=30).text
    got = {}
    for line in text.splitlines():
        for key in ("bandstore_batch_bags_sum", "bandstore_batch_bags_count"):
            if line.startswith(key + " "):
                got[key] = float(line.split()[1])
    return got.get("bandstore_batch_bags_sum", 0.0), got.get("bandstore_batch_bags_count", 0.0)


def load(url, bodies, headers, clients, warmup, seconds, pid=None) -> dict:
    before = os.getloadavg()[0]
    base = url.rsplit("/v1/", 1)[0]
    bags0, n0 = batch_totals(base)
    res = asyncio.run(_load(url, bodies, headers, clients, warmup, seconds, pid))
    bags1, n1 = batch_totals(base)
    # warm-up included: how many bags one backend call served, on average
    res["bags_per_batch"] = round((bags1 - bags0) / (n1 - n0), 1) if n1 > n0 else None
    res["load_avg_1m"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    return res


def check_agreement(servers: dict, bodies: list[bytes], headers: dict) -> dict:
    """The same requests through every contender: the largest score difference from (a)'s
    (all serve the same model and rows, so it must be float noise)."""
    import httpx

    scores = {}
    for k, s in servers.items():
        got = []
        for b in bodies:
            r = httpx.post(s.url + "/v1/predict", content=b, headers=headers, timeout=60)
            r.raise_for_status()
            got.extend(r.json()["scores"])
        scores[k] = np.asarray(got, dtype=np.float64)
    return {k: float(np.abs(v - scores["a"]).max()) for k, v in scores.items()}


def npz_body(req: dict) -> bytes:
    buf = io.BytesIO()
    arrays = {}
    for n, p in req["tables"].items():
        arrays[f"{n}/indices"] = np.asarray(p["indices"], dtype=np.int64)
        arrays[f"{n}/offsets"] = np.asarray(p["offsets"], dtype=np.int64)
    np.savez(buf, **arrays)
    return buf.getvalue()


# ---- the run ---------------------------------------------------------------------------------
def run_variant(name: str, setup: dict, work: Path, args) -> dict:
    store, model = setup["store"], setup["model"]
    budget = int(0.10 * table_bytes(store))
    rocks = work / "rocks"
    t0 = time.perf_counter()
    from serve_backends import build_rocks

    build_rocks(store, rocks)
    rocks_s = time.perf_counter() - t0
    tuning = (
        tune_store(store, setup["tune"], budget, work, args.relayout_method)
        if not args.no_tune
        else {}
    )
    tuned = all(v["exit"] == 0 for v in tuning.values()) and bool(tuning)
    common = ["--model", str(model), "--max-batch-size", str(args.max_batch_size),
              "--max-wait-ms", str(args.max_wait_ms)]  # fmt: skip
    store_cache = [] if tuned else ["--cache-bytes", str(budget)]
    argvs = {
        "a": ["store", str(store), *common, *store_cache],
        "b": ["torch", str(store), *common],
        "c": ["rocks", str(store), *common, "--rocks", str(rocks), "--cache-bytes", str(budget)],
        "d": ["store", str(store), *common, *store_cache],
    }
    argvs["d"][argvs["d"].index("--max-batch-size") + 1] = "0"
    servers = {k: Server(v, work / f"server_{k}.log") for k, v in argvs.items()}
    try:
        for s in servers.values():
            s.wait_ready()
        if args.predict_body == "npz":
            from bandstore.server.predict import predict_npz_body

            bodies = [
                predict_npz_body(
                    r["dense"], {k: (p["indices"], p["offsets"]) for k, p in r["sparse"].items()}
                )
                for r in setup["requests"]
            ]
            headers = {"content-type": "application/x-npz"}
        else:
            bodies = [json.dumps(r).encode() for r in setup["requests"]]
            headers = {"content-type": "application/json"}
        agreement = check_agreement(servers, bodies[:4], headers)
        print(f"[{name}] max |score - (a)'s| per contender: {agreement}", flush=True)
        runs: dict[str, list[dict]] = {k: [] for k in servers}
        for rnd in range(args.rounds):
            for k, s in servers.items():
                res = load(s.url + "/v1/predict", bodies, headers, args.clients, args.warmup,
                           args.seconds, s.proc.pid)  # fmt: skip
                res["round"] = rnd
                runs[k].append(res)
                print(f"[{name}] round {rnd} ({k}) {CONTENDERS[k]}: {res}", flush=True)
        # JSON vs npz on /v1/lookup, one large batch, on (a)
        big = {"tables": {}}
        n_big = min(args.big_batch, len(setup["requests"]) * args.batch)
        per = args.big_batch // args.batch
        for n in setup["requests"][0]["sparse"]:
            idx, off, base = [], [], 0
            for r in setup["requests"][:per]:
                p = r["sparse"][n]
                off.extend(o + base for o in p["offsets"])
                idx.extend(p["indices"])
                base += len(p["indices"])
            big["tables"][n] = {"indices": idx, "offsets": off}
        wire = {}
        for _ in range(args.rounds):
            for fmt in ("json", "npz"):
                if fmt == "json":
                    body, hdr = json.dumps(big).encode(), {"content-type": "application/json"}
                else:
                    body = npz_body(big)
                    hdr = {"content-type": "application/x-npz", "accept": "application/x-npz"}
                res = load(servers["a"].url + "/v1/lookup", [body], hdr, 2, args.warmup / 2,
                           args.seconds / 2)  # fmt: skip
                res["request_bytes"] = len(body)
                wire.setdefault(fmt, []).append(res)
                print(f"[{name}] lookup {fmt} ({n_big} samples): {res}", flush=True)
    finally:
        codes = {k: s.stop() for k, s in servers.items()}
    return {
        "facts": {**setup["facts"], "dram_budget_bytes": budget, "rocks_build_seconds":
                  round(rocks_s, 1), "tuning": tuning, "tuned": tuned,
                  "relayout_method": args.relayout_method},
        "score_max_abs_diff_vs_a": agreement,
        "runs": runs,
        "lookup_wire": wire,
        "server_exit_codes": codes,
    }  # fmt: skip


def summarize(runs: list[dict]) -> dict:
    def med(key, digits=1):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return round(float(np.median(vals)), digits) if vals else None

    return {"rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "cpu_ms": med("server_cpu_ms_per_request", 2), "bags": med("bags_per_batch"),
            "errors": sum(r["errors"] for r in runs)}  # fmt: skip


def write_results(out: dict, stem: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Serving a DLRM over HTTP (bench_serve.py)",
        "",
        f"`{out['command']}` at {out['commit']}; load average before: {out['load_before']},"
        f" after: {out['load_after']} (2 shared cores; server and client on the same machine).",
        f"{out['clients']} closed-loop clients, {out['batch']} samples per /v1/predict request "
        f"({out.get('predict_body', 'json')} body), "
        f"{out['seconds']} s measured after {out['warmup']} s, {out['rounds']} rounds "
        "interleaved (a b c d a b c d); figures are medians over rounds. Batching: "
        f"max {out['max_batch_size']} bags, max wait {out['max_wait_ms']} ms. Page cache warm "
        "for bandstore's block file and RocksDB's files alike (not a cold-tier test).",
        "",
    ]
    for name, v in out["variants"].items():
        f = v["facts"]
        lines += [f"## {name}{' (headline)' if name == 'synthetic' else ''}", ""]
        lines.append(
            "Facts: "
            + ", ".join(f"{k}={val}" for k, val in f.items() if k != "tuning")
            + f"; tuning: {json.dumps(f['tuning'])}"
        )
        lines += ["", "| contender | requests/s | p50 ms | p99 ms | server CPU ms/request | "
                  "bags/batch | errors | per round (rps) |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        s = {k: summarize(r) for k, r in v["runs"].items()}
        for k, r in v["runs"].items():
            rounds = ", ".join(str(x["rps"]) for x in r)
            lines.append(f"| ({k}) {CONTENDERS[k]} | {s[k]['rps']} | {s[k]['p50_ms']} | "
                         f"{s[k]['p99_ms']} | {s[k]['cpu_ms']} | {s[k]['bags']} | "
                         f"{s[k]['errors']} | {rounds} |")  # fmt: skip
        a, b, c, d = (s[k]["rps"] or float("nan") for k in "abcd")
        p99a = s["a"]["p99_ms"]
        lines += [
            "",
            f"- scores agree across contenders: max |score - (a)'s| = "
            f"{max(v['score_max_abs_diff_vs_a'].values()):.2e}",
            f"- (a)/(b) = {a / b:.2f} (target >= 0.8 at p99 <= 10 ms; (a) p99 = {p99a} ms)",
            f"- (a)/(c) = {a / c:.2f} (target >= 2)",
            f"- (a)/(d) = {a / d:.2f} (batching vs unbatched at the same concurrency; target >= 3"
            f" at equal p99: (d) p99 = {s['d']['p99_ms']} ms); server CPU per request (d)/(a) ="
            f" {(s['d']['cpu_ms'] or float('nan')) / (s['a']['cpu_ms'] or float('nan')):.2f}",
        ]
        w = {k: summarize(r) for k, r in v["lookup_wire"].items()}
        rb = {k: r[0]["request_bytes"] for k, r in v["lookup_wire"].items()}
        lines.append(
            f"- /v1/lookup of one large batch on (a): JSON {w['json']['rps']} req/s "
            f"(p50 {w['json']['p50_ms']} ms, {rb['json']} B) vs npz {w['npz']['rps']} req/s "
            f"(p50 {w['npz']['p50_ms']} ms, {rb['npz']} B)"
        )
        lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--render", type=Path, metavar="RESULTS.json",
                   help="only rewrite the .md of a results .json")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a smoke run: small, short, one round")
    p.add_argument("--variants", nargs="+", default=["criteo", "synthetic"],
                   choices=["criteo", "synthetic"])  # fmt: skip
    p.add_argument("--data", type=Path, default=DATA / "criteo-8k" / "criteo-8k.tsv")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--batch", type=int, default=32, help="samples per predict request")
    p.add_argument("--big-batch", type=int, default=1024, help="samples of the wire test")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--synthetic-mb", type=float, default=256.0)
    p.add_argument("--predict-body", choices=["npz", "json"], default="npz",
                   help="/v1/predict body: binary (KeyedJaggedTensor layout) or JSON")  # fmt: skip
    p.add_argument("--max-batch-size", type=int, default=1024)
    p.add_argument("--max-wait-ms", type=float, default=1.0)
    p.add_argument("--no-tune", action="store_true")
    p.add_argument("--relayout-method", default="frequency",
                   help="bandstore relayout --method (auto is thorough but minutes per table "
                        "set on 2 busy cores)")  # fmt: skip
    p.add_argument("--workdir", type=Path, help="keep the files here (default: temporary)")
    args = p.parse_args(argv)
    if args.render is not None:
        write_results(json.loads(args.render.read_text()), args.render.stem)
        return 0
    if args.quick:
        args.seconds, args.warmup, args.rounds = 2.0, 1.0, 1
        args.synthetic_mb = min(args.synthetic_mb, 16.0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_serve_"))
    cmd, commit, load_before = run_facts("bench_serve.py", argv)
    out = {"command": cmd, "commit": commit, "load_before": load_before,
           "clients": args.clients, "batch": args.batch, "seconds": args.seconds,
           "warmup": args.warmup, "rounds": args.rounds, "max_batch_size": args.max_batch_size,
           "max_wait_ms": args.max_wait_ms, "predict_body": args.predict_body,
           "variants": {}}  # fmt: skip
    try:
        for v in args.variants:
            vdir = work / v
            vdir.mkdir(parents=True, exist_ok=True)
            if v == "criteo":
                if not args.data.exists():
                    print(f"skipping criteo: {args.data} is absent", flush=True)
                    continue
                setup = criteo_setup(vdir, args.data, args.batch, args.quick)
            else:
                setup = synthetic_setup(vdir, args.synthetic_mb, args.batch,
                                        n_requests=64 if args.quick else 256)  # fmt: skip
            out["variants"][v] = run_variant(v, setup, vdir, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    write_results(out, "serve_quick" if args.quick else "serve")
    print((RESULTS / ("serve_quick.md" if args.quick else "serve.md")).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
