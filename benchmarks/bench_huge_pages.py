"""How much faster are random reads of the store's DRAM arrays on huge pages?

The same kernels on the same data, once on arrays numpy allocates (4 KB pages) and once on
``bandstore.storage.dram`` arrays (2 MB transparent huge pages, what the store now allocates for its
caches, decoded tables, slot indexes, inverse layouts, counts and checksums):

- ``resident``: ``_gather_pool`` over a decoded float32 table (dim 16, bags of 32);
- ``cache hit``: ``_cache_batch`` on an all-hit cache of the table (slot index probe, CLOCK
  bit, row read): the path of a table's hot rows.

Tables from 8 MiB to 1 GiB, 2M random lookups per run; the two allocations in turns, medians of
the runs. Ratios: 4 KB pages' time / huge pages' time.

    python benchmarks/bench_huge_pages.py [--quick]

Writes benchmarks/results/huge_pages.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from paths import RESULTS, run_facts

from bandstore.kernels import cache as kc
from bandstore.kernels import resident as kr
from bandstore.storage import dram

DIM = 16
NO_W = np.empty(0, dtype=np.float32)


def _anon_huge_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return -1


def arrays(rows: int, huge: bool) -> dict[str, np.ndarray]:
    """A decoded table and an all-hit cache over it (slot i holds row i)."""
    zeros = dram.zeros if huge else (lambda shape, dtype: np.zeros(shape, dtype=dtype))
    data = zeros((rows, DIM), np.float32)
    data[:] = 0.5
    slot_of_id = zeros(rows, np.int32)
    slot_of_id[:] = np.arange(rows, dtype=np.int32)
    id_of_slot = zeros(rows, np.int64)
    id_of_slot[:] = np.arange(rows)
    return {"data": data, "slot_of_id": slot_of_id, "id_of_slot": id_of_slot,
            "ref": zeros(rows, np.uint8), "counts": zeros(rows, np.int32)}  # fmt: skip


def kernels(a: dict[str, np.ndarray], ids: np.ndarray):
    off = np.arange(0, ids.size + 1, 32, dtype=np.int64)
    out = np.zeros((off.size - 1, DIM), dtype=np.float32)
    stats = np.zeros(kc.N_STATS, dtype=np.int64)
    err = np.zeros(1, dtype=np.int64)
    rows = a["data"].shape[0]
    meta = np.zeros(4, dtype=np.int64)
    meta[kc.META_FILLED] = meta[kc.META_CAPACITY] = rows  # full, nothing pinned
    layout = np.empty(0, dtype=np.int64)
    u8, sums = np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.uint64)

    def resident():
        kr._gather_pool(ids, off, NO_W, kc.MODE_SUM, -1, out, a["data"], stats)

    def hit():
        kc._cache_batch(ids, off, NO_W, kc.MODE_SUM, -1, out, True, a["slot_of_id"],
                        a["id_of_slot"], a["ref"], meta, a["data"], a["counts"], kc.NEVER,
                        layout, layout, 1, 4096, 4 * DIM, 0, DIM, u8, sums, 4096, False, stats,
                        err)  # fmt: skip

    return {"resident": resident, "cache hit": hit}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and runs")
    ap.add_argument("--lookups", type=int, default=2_000_000)
    args = ap.parse_args(argv)
    sizes_mib = [8, 64, 256] if args.quick else [8, 32, 128, 256, 1024]
    runs = 3 if args.quick else 7
    rng = np.random.default_rng(0)
    rows_out = []
    for mib in sizes_mib:
        rows = mib * 2**20 // (4 * DIM)
        ids = rng.integers(0, rows, args.lookups)
        before = _anon_huge_kib()
        contenders = {"4 KB pages": arrays(rows, False), "huge pages": arrays(rows, True)}
        huge_kib = _anon_huge_kib() - before
        fns = {c: kernels(a, ids) for c, a in contenders.items()}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(runs + 1):  # the first: compile and fault in, not timed
            for c, ks in fns.items():
                for k, fn in ks.items():
                    t0 = time.perf_counter()
                    fn()
                    times.setdefault((c, k), []).append(time.perf_counter() - t0)
        for k in ("resident", "cache hit"):
            small = float(np.median(times[("4 KB pages", k)][1:])) / args.lookups * 1e9
            huge = float(np.median(times[("huge pages", k)][1:])) / args.lookups * 1e9
            rows_out.append({"table_mib": mib, "kernel": k, "ns_4k": small, "ns_huge": huge,
                             "speedup": small / huge, "anon_huge_kib": huge_kib})  # fmt: skip
            print(rows_out[-1], flush=True)
        del contenders, fns
    cmd, commit, load = run_facts("bench_huge_pages.py", argv)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().strip() if thp.exists() else "unknown"
    lines = [
        "# Random reads of DRAM arrays: 4 KB pages vs transparent huge pages",
        "",
        f"`{cmd}` at {commit} ({os.cpu_count()} CPUs, load {load}; transparent huge pages: "
        f"`{mode}`; dim {DIM}, bags of 32, {args.lookups:,} random lookups per run, the two "
        f"allocations in turns, medians of {runs} runs). `huge KiB`: anonymous huge pages the "
        "huge-page arrays got (the advice took effect).",
        "",
        "| table | kernel | 4 KB pages ns/lookup | huge pages ns/lookup | speedup | huge KiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows_out:
        lines.append(
            f"| {r['table_mib']} MiB | {r['kernel']} | {r['ns_4k']:.1f} | {r['ns_huge']:.1f} | "
            f"{r['speedup']:.2f}x | {r['anon_huge_kib']:,} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "huge_pages.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "huge_pages.json").write_text(json.dumps({"command": cmd, "commit": commit,
                                                         "thp": mode, "rows": rows_out},
                                                        indent=1))  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
