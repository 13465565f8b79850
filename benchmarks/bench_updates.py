"""Online row updates: how fast can a trainer write, what does it cost a reader, how soon is
an update visible in another process?

One table (500k rows x 64 float32; --quick: 100k), served ``cached`` at 10% of its rows by a
reader process that sends pooled requests in a closed loop (``lookup_many``, 128 bags of 20
Zipf(1.1) ids each) and, after each, looks up one marker row. A writer process updates
batches of 1000 uniformly drawn rows as fast as ``Store.update`` returns, each durable on
return, from 1 thread or from 4 (concurrent calls share commits: group commit); thread 0's
batches also write the marker row with the batch's number. Phases alternate ``quiet`` (no
writer), ``updates x1`` / ``updates x4`` (writer running on the served store) and ``other store
x4`` (the same writer on a store the reader does not serve: the machine's contention alone),
interleaved twice, same duration each.

Figures: writer rows/s; reader call latency p50/p99 per phase (the pooled call only, not the
marker lookup); visibility lag across processes: for every acknowledged batch k, the time from
its ``update`` returning in the writer to the reader first seeing marker value >= k.

    python benchmarks/bench_updates.py [--quick] [--phase-seconds S]

Writes benchmarks/results/updates{,_quick}.{md,json}. Processes are forked from a parent that
holds no open store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from paths import RESULTS, run_facts

import bandstore
from bandstore.serve.cache import cache_row_bytes

DIM = 64
BATCH_ROWS = 1000
BAGS, POOLING = 128, 20
MARKER = 0


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()  # (os._exit below would swallow it)
        finally:
            os._exit(code)
    return pid


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b"".join(chunks)


def reader(path: Path, rows: int, until: float, w_fd: int, in_poller: bool) -> None:
    """Closed-loop pooled calls until ``until`` (wall clock); writes JSON to ``w_fd``."""
    from bandstore.serve import overlay

    overlay.APPLY_IN_POLLER = in_poller
    rng = np.random.default_rng(1)
    reqs = []
    for _ in range(64):
        ids = (rng.zipf(1.1, BAGS * POOLING) - 1) % rows
        reqs.append((ids.astype(np.int64), np.arange(0, BAGS * POOLING, POOLING, dtype=np.int64)))
    marker = np.array([MARKER], dtype=np.int64)
    starts, lat, seen_t, seen_v = [], [], [], []
    cache = int(0.10 * rows) * cache_row_bytes(DIM)
    with bandstore.open(path, cache_bytes=cache, plan=False) as s:
        for k in range(200):  # warm the cache and the kernels
            s.lookup_many({"t": reqs[k % 64]})
        last = -1.0
        k = 0
        while True:
            t0 = time.time()
            if t0 >= until:
                break
            p0 = time.perf_counter()
            s.lookup_many({"t": reqs[k % 64]})
            lat.append(time.perf_counter() - p0)
            starts.append(t0)
            v = float(s.lookup("t", marker)[0, 0])
            if v != last:
                seen_t.append(time.time())
                seen_v.append(v)
                last = v
            k += 1
        stats = s.stats()["t"]
    counters = {k: stats[k] for k in ("lookups", "hits", "misses", "blocks_read")}
    out = {"start": starts, "latency": lat, "seen_t": seen_t, "seen_v": seen_v, "stats": counters}
    os.write(w_fd, json.dumps(out).encode())
    os.close(w_fd)


def writer(path: Path, rows: int, seconds: float, first: int, threads: int, w_fd: int) -> None:
    """``threads`` threads writing batches of BATCH_ROWS random rows for ``seconds``, each
    call waiting for its own durable commit (concurrent calls share commits); thread 0's
    batches also write the marker row with the batch's number. Writes JSON (acknowledgement
    times, rows written) to ``w_fd``."""
    import threading

    acks, n_rows = [], [0] * threads
    with bandstore.open(path, writable=True, cache_bytes=0, plan=False) as s:
        t_end = time.time() + seconds

        def loop(j: int) -> None:
            rng = np.random.default_rng([first, j])
            k = first
            while time.time() < t_end:
                ids = rng.integers(1, rows, BATCH_ROWS)
                vals = rng.standard_normal((BATCH_ROWS, DIM)).astype(np.float32)
                if j == 0:
                    ids[0], vals[0] = MARKER, k
                s.update("t", ids, vals)
                if j == 0:
                    acks.append((k, time.time()))
                    k += 1
                n_rows[j] += BATCH_ROWS

        t0 = time.perf_counter()
        pool = [threading.Thread(target=loop, args=(j,)) for j in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        elapsed = time.perf_counter() - t0
    out = {"acks": acks, "rows": sum(n_rows), "seconds": elapsed, "threads": threads}
    os.write(w_fd, json.dumps(out).encode())
    os.close(w_fd)


def _fsync_baseline(tmp: Path, n: int = 20) -> dict[str, float]:
    """What this disk charges for durability now: append 256 KB and fdatasync, n times."""
    buf = os.urandom(256 * 1024)
    fd = os.open(tmp / "fsync.probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        os.close(fd)
    p50, p99 = np.percentile(times, [50, 99])
    return {"p50": float(p50), "p99": float(p99)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--phase-seconds", type=float, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument(
        "--apply-in-call",
        action="store_true",
        help="the reader's next call applies updates (default: its poller thread)",
    )
    args = ap.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 500_000)
    phase = args.phase_seconds or (2.0 if args.quick else 5.0)
    phases = ["quiet", "updates x1", "quiet", "updates x4", "quiet", "other store x4"] * 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "s"
        rng = np.random.default_rng(0)
        with bandstore.create(path) as s:
            s.add_table("t", rng.standard_normal((rows, DIM)).astype(np.float32), progress=False)
            s.update("t", [MARKER], np.zeros((1, DIM), np.float32))
        # The control: the same writer on a store the reader does not serve (what the
        # machine's CPU and disk contention alone cost the reader).
        other = Path(tmp) / "other"
        with bandstore.create(other) as s:
            s.add_table("t", np.zeros((rows, DIM), np.float32), progress=False)
        fsync_ms = _fsync_baseline(Path(tmp))
        t_start = time.time() + 3.0  # the reader warms up first
        r_rd, r_wr = os.pipe()
        until = t_start + phase * len(phases)
        rpid = _fork(lambda: reader(path, rows, until, r_wr, not args.apply_in_call))
        os.close(r_wr)
        writes = []
        first = 1
        for i, name in enumerate(phases):
            t_phase = t_start + i * phase
            time.sleep(max(0.0, t_phase - time.time()))
            if name != "quiet":
                threads = int(name.rpartition("x")[2])
                target = other if name.startswith("other") else path
                w_rd, w_wr = os.pipe()
                wpid = _fork(lambda f=first, w=w_wr, n=threads, p=target:
                             writer(p, rows, phase - 0.05, f, n, w))  # fmt: skip
                os.close(w_wr)
                res = json.loads(_read_all(w_rd))
                os.waitpid(wpid, 0)
                res["phase"] = name
                writes.append(res)
                first += len(res["acks"]) + 1
        res_r = json.loads(_read_all(r_rd))
        os.waitpid(rpid, 0)
        with bandstore.open(path) as s:
            log = s.updates_info()
    load_after = os.getloadavg()

    starts = np.array(res_r["start"])
    lat = np.array(res_r["latency"]) * 1e6
    per_phase = []
    for i, name in enumerate(phases):
        lo, hi = t_start + i * phase, t_start + (i + 1) * phase
        m = (starts >= lo) & (starts < hi)
        p50, p99 = np.percentile(lat[m], [50, 99]) if m.any() else (0.0, 0.0)
        per_phase.append({"phase": name, "calls": int(m.sum()), "p50_us": float(p50),
                          "p99_us": float(p99)})  # fmt: skip
    seen_t, seen_v = np.array(res_r["seen_t"]), np.array(res_r["seen_v"])
    lags = []
    for w in writes:
        if w["phase"].startswith("other"):
            continue
        for k, t_ack in w["acks"]:
            j = np.flatnonzero(seen_v >= k)
            if j.size:
                lags.append(max(0.0, float(seen_t[j[0]] - t_ack)))
    acked = sum(len(w["acks"]) for w in writes if not w["phase"].startswith("other"))
    kinds = ("updates x1", "updates x4", "other store x4")
    rows_s = {k: [w["rows"] / w["seconds"] for w in writes if w["phase"] == k] for k in kinds}
    quiet = [p for p in per_phase if p["phase"] == "quiet"]
    q99 = float(np.mean([p["p99_us"] for p in quiet]))
    ratio = {}
    for k in kinds:
        busy = [p["p99_us"] for p in per_phase if p["phase"] == k]
        ratio[k] = float(np.mean(busy)) / q99 if q99 else None
    # The same writer on the other store is the control: what the machine's contention alone
    # costs the reader. Updates x4 over it is the overlay's own cost (same writer, same load).
    ctl = [p["p99_us"] for p in per_phase if p["phase"] == "other store x4"]
    busy4 = [p["p99_us"] for p in per_phase if p["phase"] == "updates x4"]
    over_control = float(np.mean(busy4) / np.mean(ctl)) if ctl and np.mean(ctl) else None
    result = {
        "rows": rows,
        "dim": DIM,
        "batch_rows": BATCH_ROWS,
        "phase_seconds": phase,
        "writer_rows_per_s": rows_s,
        "fsync_256k_ms": fsync_ms,
        "phases": per_phase,
        "reader_p99_ratio_updates_over_quiet": ratio,
        "reader_p99_ratio_updates_x4_over_other_store_x4": over_control,
        "lag_s": {
            "batches": acked,
            "seen": len(lags),
            "p50": float(np.percentile(lags, 50)) if lags else None,
            "p99": float(np.percentile(lags, 99)) if lags else None,
            "max": float(max(lags)) if lags else None,
        },
        "reader_stats": res_r["stats"],
        "log": {k: log[k] for k in ("records", "rows", "bytes")},
        "overlay_rows_at_end": log["overlay_rows"],
        "overlay_bytes_at_end": log["overlay_bytes"],
        "log_files": {k: log[k] for k in ("segments", "log_bytes", "file_bytes")},
        "load_before": load_before,
        "load_after": load_after,
    }
    cmd, commit, _ = run_facts("bench_updates.py", argv)
    result.update(command=cmd, commit=commit)
    stem = "updates_quick" if args.quick else "updates"
    if args.apply_in_call:
        stem += "_in_call"
    result["apply_in_poller"] = not args.apply_in_call
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Online row updates: writer throughput, reader latency, visibility lag",
        "",
        f"`{cmd}` at {commit}; load average {', '.join(f'{x:.2f}' for x in load_before)} "
        f"before, {', '.join(f'{x:.2f}' for x in load_after)} after (2 cores, shared).",
        "",
        f"One table of {rows} x {DIM} float32, reader `cached` at 10% of its rows, "
        f"{BAGS} bags x {POOLING} Zipf ids per call; writer batches of {BATCH_ROWS} rows, each "
        "durable when `update` returns (one log frame, one fdatasync per group of concurrent "
        "calls); separate processes; the reader applies updates "
        f"{'in its poller thread' if not args.apply_in_call else 'in its next call'}.",
        "",
        "| phase | reader calls | p50 (us) | p99 (us) |",
        "|---|---:|---:|---:|",
        *[
            f"| {p['phase']} | {p['calls']} | {p['p50_us']:.0f} | {p['p99_us']:.0f} |"
            for p in per_phase
        ],  # fmt: skip
        "",
        *[
            f"- {k}: writer {', '.join(f'{x:,.0f}' for x in rows_s[k])} rows/s (target >= "
            f"100,000); reader p99 in these phases / quiet: {ratio[k]:.2f} (target <= 1.20)"
            for k in kinds
        ],  # fmt: skip
        f"- reader p99, updates x4 / other store x4 (the same writer on a store it does not "
        f"serve: the machine's contention alone): {over_control:.2f}",
        f"- this disk, meanwhile: append 256 KB + fdatasync {fsync_ms['p50']:.1f} ms p50, "
        f"{fsync_ms['p99']:.1f} ms p99 (about one batch of 1000 rows): one synchronous writer "
        f"cannot beyond {BATCH_ROWS / fsync_ms['p50'] * 1e3:,.0f} rows/s here; updates x1 "
        f"took {np.mean([1e3 * BATCH_ROWS / x for x in rows_s['updates x1']]):.1f} ms per "
        "batch",
        f"- visibility lag across processes over {len(lags)} batches: p50 "
        f"{result['lag_s']['p50']:.3f} s, p99 {result['lag_s']['p99']:.3f} s, max "
        f"{result['lag_s']['max']:.3f} s (target p99 <= 1 s)",
        f"- log at the end: {log['records']} records, {log['rows']} rows, {log['bytes']:,} bytes "
        f"in {log['segments']} segment files ({log['file_bytes']:,} bytes allocated); the "
        f"overlay of a store caught up with it: {result['overlay_bytes_at_end']:,} bytes",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
