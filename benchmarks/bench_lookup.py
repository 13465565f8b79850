"""How fast are bandstore's pooled lookups, against torch's EmbeddingBag and numpy?

Question 1 (warm): 1 thread, D=64 float32, 2M rows, bags of 20, every row cached in DRAM:
bandstore.embedding_bag vs torch.nn.functional.embedding_bag (CPU, 1 thread) vs numpy
(np.add.reduceat(W[idx], offsets)), same ids, same run, repetitions interleaved.

Question 2 (cold-ish tier): the cache holds 10% of the table and the block files are dropped from
the page cache before the run (posix_fadvise DONTNEED); ids follow a Zipf popularity. Reports
lookups/s, blocks read per 1000 lookups and useful bytes per byte read, next to a naive mmap
store (torch embedding_bag straight over a memory-mapped row file, also dropped from the page
cache: every row read costs a 4 KB page, no DRAM cache).

    python benchmarks/bench_lookup.py            # full size (about 3 minutes)
    python benchmarks/bench_lookup.py --quick    # 200k rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import bandstore
from bandstore.serve.cache import cache_row_bytes
from bandstore.storage.blockfile import evict_from_page_cache

RESULTS = Path(__file__).resolve().parent / "results"


def major_faults() -> int:
    """Page faults that had to read from the device (the cold tier) in this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


def timed(fn, batches) -> float:
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - t0


def warm_benchmark(path: Path, W: np.ndarray, args, rng) -> dict:
    rows, dim = W.shape
    nb, bag = args.bags, args.bag_size
    batches = [rng.integers(0, rows, nb * bag) for _ in range(args.batches)]
    offsets = np.arange(0, nb * bag, bag, dtype=np.int64)
    contenders = {}
    store = bandstore.open(path, cache_bytes=rows * cache_row_bytes(dim))
    for start in range(0, rows, 1 << 16):  # fill the cache with every row
        store.lookup("t", np.arange(start, min(rows, start + (1 << 16))))
    store.reset_stats()
    contenders["bandstore (all rows cached)"] = lambda ids: store.embedding_bag("t", ids, offsets)
    try:
        import torch

        torch.set_num_threads(1)
        Wt = torch.from_numpy(W)
        off_t = torch.from_numpy(offsets)
        contenders["torch embedding_bag"] = lambda ids: torch.nn.functional.embedding_bag(
            torch.from_numpy(ids), Wt, off_t, mode="sum"
        )
    except ImportError:
        print("torch not installed: comparing with numpy only")
    contenders["numpy add.reduceat"] = lambda ids: np.add.reduceat(W[ids], offsets, axis=0)

    for fn in contenders.values():  # warm up (compilation, page faults)
        fn(batches[0])
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn, batches))
    hit_ratio = store.stats()["t"]["hit_ratio"]
    store.close()
    n = len(batches) * nb * bag
    rates = {k: n / statistics.median(v) for k, v in times.items()}
    ref = rates.get("torch embedding_bag", rates["numpy add.reduceat"])
    return {
        "rows": rows,
        "dim": dim,
        "bag_size": bag,
        "bags_per_call": nb,
        "bandstore_hit_ratio": hit_ratio,
        "rows_per_second": rates,
        "ratio_to_torch": {k: v / ref for k, v in rates.items()},
    }


def zipf_ids(rng, rows: int, n: int, a: float = 1.05) -> np.ndarray:
    """Ids with Zipf popularity over a random permutation of the rows."""
    ranks = np.arange(1, rows + 1, dtype=np.float64)
    p = ranks**-a
    p /= p.sum()
    perm = rng.permutation(rows)
    return perm[rng.choice(rows, size=n, p=p)]


def cold_benchmark(path: Path, W: np.ndarray, tmp: Path, args, rng) -> dict:
    rows, dim = W.shape
    nb, bag = args.bags, args.bag_size
    ids_all = zipf_ids(rng, rows, args.batches * nb * bag * 2)
    batches = np.split(ids_all, args.batches * 2)
    offsets = np.arange(0, nb * bag, bag, dtype=np.int64)
    out = {}
    # bandstore with a 10% cache
    store = bandstore.open(path, cache_bytes=int(0.10 * rows) * cache_row_bytes(dim))
    store.drop_page_cache()
    faults = major_faults()
    t = timed(lambda ids: store.embedding_bag("t", ids, offsets), batches)
    faults = major_faults() - faults
    s = store.stats()["t"]
    store.close()
    out["bandstore, 10% cache, cold block file"] = {
        "lookups_per_second": s["lookups"] / t,
        "device_reads_per_1000_lookups": 1000.0 * faults / s["lookups"],
        "hit_ratio": s["hit_ratio"],
        "blocks_per_1000_lookups": s["blocks_per_1000_lookups"],
        "useful_per_byte_read": s["useful_per_byte_read"],
    }
    # naive: torch over a memory-mapped row file, no DRAM cache
    try:
        import torch

        rowfile = tmp / "rows.npy"
        mm = np.lib.format.open_memmap(rowfile, mode="w+", dtype=np.float32, shape=W.shape)
        mm[:] = W
        mm.flush()
        del mm
        os.sync()
        evict_from_page_cache(rowfile)
        mm = np.load(rowfile, mmap_mode="r")
        with warnings.catch_warnings():  # read-only on purpose: a view that faults pages in
            warnings.simplefilter("ignore")
            Wt = torch.from_numpy(np.asarray(mm))
        off_t = torch.from_numpy(offsets)
        faults = major_faults()
        t = timed(
            lambda ids: torch.nn.functional.embedding_bag(torch.from_numpy(ids), Wt, off_t),
            batches,
        )
        faults = major_faults() - faults
        n = sum(len(b) for b in batches)
        # Its only "cache" is the OS page cache, which here may grow to the whole file.
        out["naive mmap store (torch over a row file, page cache only)"] = {
            "lookups_per_second": n / t,
            "device_reads_per_1000_lookups": 1000.0 * faults / n,
        }
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--bag-size", type=int, default=20)
    ap.add_argument("--bags", type=int, default=512, help="bags per call")
    ap.add_argument("--batches", type=int, default=40, help="calls per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.batches, args.repeats = 200_000, 10, 3
    rng = np.random.default_rng(0)
    W = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as tmp:
        tmp = Path(tmp)
        with bandstore.create(tmp / "store") as s:
            s.add_table("t", W, progress=False)
        warm = warm_benchmark(tmp / "store", W, args, rng)
        cold = cold_benchmark(tmp / "store", W, tmp, args, rng)
    result = {"warm": warm, "cold": cold, "command": "python benchmarks/bench_lookup.py"}
    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"lookup{suffix}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Pooled lookups: {warm['rows']:,} rows x {warm['dim']} float32, bags of "
        f"{warm['bag_size']}, 1 thread",
        "",
        "Reproduce: `python benchmarks/bench_lookup.py" + (" --quick" if args.quick else "") + "`",
        "",
        "| all rows in DRAM | rows/s (median) | ratio to torch |",
        "|---|---:|---:|",
    ]
    for k, v in warm["rows_per_second"].items():
        lines.append(f"| {k} | {v / 1e6:.1f} M | {warm['ratio_to_torch'][k]:.2f} |")
    lines += [
        "",
        "| cold tier, Zipf ids | lookups/s | device reads / 1000 lookups | hit ratio "
        "| blocks / 1000 lookups | useful / byte read |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, v in cold.items():
        extra = "| - | - | - |"
        if "hit_ratio" in v:
            extra = (
                f"| {v['hit_ratio']:.3f} | {v['blocks_per_1000_lookups']:.0f} | "
                f"{v['useful_per_byte_read']:.3f} |"
            )
        lines.append(
            f"| {k} | {v['lookups_per_second'] / 1e6:.2f} M | "
            f"{v['device_reads_per_1000_lookups']:.1f} {extra}"
        )
    lines += [
        "",
        "Device reads are major page faults (getrusage), i.e. reads the OS could not serve from "
        "its page cache. The naive store leans on the page cache, which on this machine can "
        "hold the whole file; bandstore's blocks_read counts every block its cache missed.",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"lookup{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
