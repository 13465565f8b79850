"""How much do two cores slow each other down on the gather kernel?

Each thread pools random rows (bags of 32, dim 16) from its own decoded table, alone and then
with the other thread doing the same at once; sizes from L2-resident to far beyond L3. The ratio
(two threads' aggregate rate / one thread's rate) is the most a 1 -> 2 worker plan can gain on a
memory-bound batch on this machine. Alone and together alternate, repeated; medians reported.

    python benchmarks/experiments/exp_core_contention.py
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import _bench  # noqa: F401 - benchmarks/ on the import path
import numpy as np
from paths import RESULTS, run_facts

from bandstore.kernels import cache as kc
from bandstore.kernels import resident as kr

DIM = 16
NO_W = np.empty(0, dtype=np.float32)


def _job(rows: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    data = rng.random((rows, DIM), dtype=np.float32)
    ids = rng.integers(0, rows, n)
    off = np.arange(0, n + 1, 32, dtype=np.int64)
    out = np.zeros((off.size - 1, DIM), dtype=np.float32)
    stats = np.zeros(kc.N_STATS, dtype=np.int64)
    return lambda: kr._gather_pool(ids, off, NO_W, kc.MODE_SUM, -1, out, data, stats)


def _together(jobs) -> float:
    """Wall seconds for every job run at once, one thread each."""
    barrier = threading.Barrier(len(jobs) + 1)

    def run(j):
        barrier.wait()
        j()

    ts = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lookups", type=int, default=2_000_000, help="per thread per run")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    sizes_mib = [0.25, 4, 32, 256, 1024]
    rows_out = []
    for mib in sizes_mib:
        rows = int(mib * 2**20) // (DIM * 4)
        a, b = _job(rows, args.lookups, 1), _job(rows, args.lookups, 2)
        a(), b()  # compile, fault in
        alone, both = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            a()
            alone.append(time.perf_counter() - t0)
            both.append(_together([a, b]))
        one = float(np.median(alone))
        two = float(np.median(both))
        rows_out.append({"table_mib": mib, "one_thread_ns_per_lookup": one / args.lookups * 1e9,
                         "two_threads_ns_per_lookup_each": two / args.lookups * 1e9,
                         "scaling": 2 * one / two})  # fmt: skip
        print(rows_out[-1], flush=True)
        del a, b
    cmd, commit, load = run_facts("experiments/exp_core_contention.py", argv)
    lines = [
        "# Two cores on the gather kernel: aggregate rate of 2 threads / 1 thread",
        "",
        f"`{cmd}` at {commit} ({os.cpu_count()} CPUs, load {load}; each thread its own table, "
        f"dim {DIM}, bags of 32, "
        f"{args.lookups:,} random lookups per thread per run; alone and together alternate, "
        f"medians of {args.repeats}).",
        "",
        "| table per thread | 1 thread ns/lookup | 2 threads ns/lookup (each) | 2-thread scaling |",
        "|---|---|---|---|",
    ]
    for r in rows_out:
        lines.append(f"| {r['table_mib']:g} MiB | {r['one_thread_ns_per_lookup']:.1f} | "
                     f"{r['two_threads_ns_per_lookup_each']:.1f} | "
                     f"{r['scaling']:.2f}x |")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core_contention.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "core_contention.json").write_text(json.dumps({"command": cmd, "rows": rows_out},
                                                             indent=1))  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
