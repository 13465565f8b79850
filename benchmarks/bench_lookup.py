"""How fast are bandstore's pooled lookups against torch's CPU kernels, per codec and dimension?

Question 1 (all rows in DRAM, one thread pinned to one core): M rows/s of the gather-and-pool
of every strategy, side by side with torch, for each codec (float32, float16, int8 rowwise) and
D in {16, 32, 64, 128, 256}, Zipf(1.05) and uniform ids, bags of 20 (and 1, 100 at D=64):

- ``resident``: ``kernels.resident._gather_pool`` over the table decoded to float32 (what the
  ``resident`` strategy holds today for every codec);
- ``resident encoded``: ``_gather_pool_encoded`` over the rows kept in their codec (float16 /
  int8 decoded inside the pooling loop; not yet used by the store);
- ``warm cache``: ``Store.embedding_bag`` through the public API, a cache holding every row
  (the ``cached`` strategy's hit path, validation and result allocation included);
- ``pinned``: ``_direct_batch`` with a pinned set holding every row (the pinned hit path);
- torch: ``embedding_bag`` over float32 weights, over float16 weights for float16, and
  ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` over the same int8 codes, scales
  and biases for int8.

Contenders run interleaved (A B C A B C ...), the median of the repeats is reported. FBGEMM's
CPU TBE (fbgemm-gpu-cpu) needs torch 2.14.1; the venv has 2.13: it is not measured here.

Question 2 (26 tables, D=32, one id per table per sample, batch 4096, Zipf ids, every row
cached): samples/s of one ``lookup_many`` call against 26 ``torch.embedding_bag`` calls.

Question 3 (``--cold``, the original question): a 10% cache over a block file dropped from
the page cache, against torch over a memory-mapped row file.

    python benchmarks/bench_lookup.py            # 2M rows (1M at D=128, 500k at D=256)
    python benchmarks/bench_lookup.py --quick    # 200k rows, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import bandstore
from bandstore.kernels import cache as kc
from bandstore.kernels import resident as kr
from bandstore.kernels.bits import pinned_index
from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8
from bandstore.serve.cache import cache_row_bytes
from bandstore.storage.blockfile import evict_from_page_cache
from bandstore.storage.codecs import decode_rows, encode_rows

RESULTS = Path(__file__).resolve().parent / "results"
CODECS = {"float32": FLOAT32, "float16": FLOAT16, "int8": INT8}
NO_W = np.zeros(0, dtype=np.float32)


def major_faults() -> int:
    """Page faults that had to read from the device (the cold tier) in this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


def timed(fn, batches) -> float:
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - t0


def zipf_ids(rng, rows: int, n: int, a: float = 1.05) -> np.ndarray:
    """Ids with Zipf popularity over a random permutation of the rows."""
    ranks = np.arange(1, rows + 1, dtype=np.float64)
    p = ranks**-a
    p /= p.sum()
    perm = rng.permutation(rows)
    return perm[rng.choice(rows, size=n, p=p)]


def pin_one_core() -> int:
    """Run on one core (the last one), torch and numba single-threaded; return the core."""
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    return core


def interleaved(contenders: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds per call of each contender, run A B C A B C ... after one warm-up.

    CPU time of this process (every contender runs on this thread or, for ``lookup_many``,
    on its one worker), not wall time: on the shared 2-core machine the other helpers' jobs
    took most of the pinned core's time slices, and wall time counted their slices too."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def torch_contender(torch, codec: str, raw: np.ndarray, decoded: np.ndarray, dim: int):
    """(name, fn(ids_t, off_t)) of the torch kernel a user would pick for this codec."""
    F = torch.nn.functional
    if codec == "float32":
        w = torch.from_numpy(decoded)
        return "torch embedding_bag fp32", lambda i, o: F.embedding_bag(i, w, o, mode="sum")
    if codec == "float16":
        w = torch.from_numpy(decoded.astype(np.float16))
        return "torch embedding_bag fp16", lambda i, o: F.embedding_bag(i, w, o, mode="sum")
    # torch's rowwise layout: the codes, then scale and bias (float32): the same values.
    packed = torch.from_numpy(np.ascontiguousarray(
        np.concatenate([raw[:, 8 : 8 + dim], raw[:, 0:8]], axis=1)))  # fmt: skip
    op = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
    return "torch quantized byte rowwise", lambda i, o: op(packed, i, o, False, 0, False, None,
                                                            None, False)  # fmt: skip


def measure(torch, tables, ids: np.ndarray, bag: int, repeats: int) -> dict[str, float]:
    """Seconds per call of every contender over the bags of ``bag`` ids ``ids``, after
    checking that they all compute the same bags as torch."""
    cid, decoded, enc, index, store, tfn = tables
    dim = decoded.shape[1]
    n = ids.size
    off = np.arange(0, n + 1, bag, dtype=np.int64)
    st = np.zeros(kc.N_STATS, dtype=np.int64)
    err = np.zeros(1, dtype=np.int64)
    ids_t, off_t = torch.from_numpy(ids), torch.from_numpy(off[:-1])
    no_layout, no_blocks, no_sums = (
        np.zeros(0, np.int64),
        np.zeros(0, np.uint8),
        np.zeros(0, np.uint64),
    )

    # Every call allocates its zeroed output, as the store's runners (and torch) do.
    def resident():
        out = np.zeros((n // bag, dim), dtype=np.float32)
        kr._gather_pool(ids, off, NO_W, kc.MODE_SUM, -1, out, decoded, st)
        return out

    def resident_enc():
        out = np.zeros((n // bag, dim), dtype=np.float32)
        kr._gather_pool_encoded(ids, off, NO_W, kc.MODE_SUM, -1, out, enc, cid, st)
        return out

    def pinned():
        out = np.zeros((n // bag, dim), dtype=np.float32)
        kr._direct_batch(ids, off, NO_W, kc.MODE_SUM, -1, out, index, decoded, no_layout, 1,
                         4096, 4 * dim, cid, dim, no_blocks, no_sums, 4096, False, st,
                         err)  # fmt: skip
        return out

    contenders = {
        "resident": resident,
        "resident encoded": resident_enc,
        "warm cache": lambda: store.embedding_bag("t", ids, off[:-1]),
        "pinned": pinned,
        "torch": lambda: tfn(ids_t, off_t),
    }
    if cid == FLOAT32 or not hasattr(kr, "_gather_pool_encoded"):
        # the same kernel as resident (or a tree from before it existed)
        del contenders["resident encoded"]
    want = tfn(ids_t, off_t).float().numpy()
    tol = 2e-2 if cid == FLOAT16 else 1e-3  # torch's float16 kernel rounds its output to fp16
    for name in ("resident", "resident encoded", "pinned"):
        if name in contenders:
            out = contenders[name]()
            np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.sqrt(bag))
    np.testing.assert_allclose(contenders["warm cache"](), want, rtol=tol, atol=tol * np.sqrt(bag))
    return interleaved(contenders, repeats)


def kernel_table(args, rng, torch, tmp: Path) -> list[dict]:
    """Question 1: one row of results per (codec, dim, ids, bag size)."""
    rows_out = []
    for dim in args.dims:
        rows = min(args.rows, args.bytes_per_table // (4 * dim))
        base = rng.standard_normal((rows, dim), dtype=np.float32)
        for codec, cid in CODECS.items():
            raw = encode_rows(cid, base)
            decoded = decode_rows(cid, raw, dim)  # float32, the values every contender pools
            enc = {"float32": decoded, "float16": raw.view(np.uint16)[:, :dim].copy(),
                   "int8": raw}[codec]  # fmt: skip
            path = tmp / f"s-{codec}-{dim}"
            with bandstore.create(path) as s:
                s.add_table("t", decoded if codec == "float32" else base, codec=codec,
                            progress=False)  # fmt: skip
            store = bandstore.open(path, cache_bytes=rows * cache_row_bytes(dim), workers=1)
            for start in range(0, rows, 1 << 16):  # fill the cache with every row
                store.lookup("t", np.arange(start, min(rows, start + (1 << 16))))
            index = pinned_index(np.arange(rows), rows)
            tname, tfn = torch_contender(torch, codec, raw, decoded, dim)
            bag_sizes = args.bags if dim == 64 else [20]
            for dist in ("zipf", "uniform"):
                for bag in bag_sizes:
                    n_bags = max(1, min(args.bags_per_call, args.ids_per_call // bag))
                    n = n_bags * bag
                    ids = zipf_ids(rng, rows, n) if dist == "zipf" else rng.integers(0, rows, n)
                    tables = (cid, decoded, enc, index, store, tfn)
                    sec = measure(torch, tables, ids.astype(np.int64), bag, args.repeats)
                    rate = {(tname if k == "torch" else k): n / v / 1e6 for k, v in sec.items()}
                    row = {"codec": codec, "dim": dim, "rows": rows, "ids": dist, "bag": bag,
                           "bags_per_call": n_bags, "torch": tname,
                           "m_rows_per_s": rate,
                           "ratio_to_torch": {k: v / rate[tname] for k, v in rate.items()},
                           "load_avg": os.getloadavg()[0]}  # fmt: skip
                    rows_out.append(row)
                    print(f"{codec:8s} D={dim:3d} {dist:7s} bag={bag:3d} "
                          + " ".join(f"{k}={v:.1f}" for k, v in rate.items())
                          + f" load={row['load_avg']:.2f}", flush=True)  # fmt: skip
            hits = store.stats()["t"]
            assert hits["lookups"] == hits["hits"] + hits["misses"]
            store.close()
            shutil.rmtree(path)  # (the temporary directory may be in RAM)
    return rows_out


def many_tables(args, rng, torch, tmp: Path) -> dict:
    """Question 2: 26 tables of D=32, one id per table per sample."""
    n_tables, dim, batch = 26, 32, 4096
    tables = {f"t{j}": rng.standard_normal((args.many_rows, dim), dtype=np.float32)
              for j in range(n_tables)}  # fmt: skip
    path = tmp / "many"
    with bandstore.create(path) as s:
        for name, w in tables.items():
            s.add_table(name, w, progress=False)
    store = bandstore.open(path, cache_bytes=n_tables * args.many_rows * cache_row_bytes(dim),
                           workers=1)  # fmt: skip
    for name in tables:
        for start in range(0, args.many_rows, 1 << 16):
            store.lookup(name, np.arange(start, min(args.many_rows, start + (1 << 16))))
    off = np.arange(batch, dtype=np.int64)
    off_t = torch.from_numpy(off)
    reqs = {name: (zipf_ids(rng, args.many_rows, batch).astype(np.int64), off) for name in tables}
    treqs = [(torch.from_numpy(w), torch.from_numpy(reqs[n][0])) for n, w in tables.items()]
    F = torch.nn.functional
    got = store.lookup_many(reqs)
    for (w, i), name in zip(treqs, tables, strict=True):
        np.testing.assert_allclose(got[name], F.embedding_bag(i, w, off_t).numpy(), rtol=1e-6)
    sec = interleaved({
        "bandstore lookup_many (warm cache)": lambda: store.lookup_many(reqs),
        "26 torch embedding_bag calls": lambda: [F.embedding_bag(i, w, off_t) for w, i in treqs],
    }, args.repeats * 4)  # fmt: skip
    store.close()
    rate = {k: batch / v / 1e6 for k, v in sec.items()}
    return {"tables": n_tables, "rows_per_table": args.many_rows, "dim": dim, "batch": batch,
            "m_samples_per_s": rate, "load_avg": os.getloadavg()[0]}  # fmt: skip


def cold_benchmark(path: Path, W: np.ndarray, tmp: Path, args, rng) -> dict:
    rows, dim = W.shape
    nb, bag = 512, 20
    ids_all = zipf_ids(rng, rows, 80 * nb * bag)
    batches = np.split(ids_all, 80)
    offsets = np.arange(0, nb * bag, bag, dtype=np.int64)
    out = {}
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
        lambda ids: torch.nn.functional.embedding_bag(torch.from_numpy(ids), Wt, off_t), batches
    )
    faults = major_faults() - faults
    n = sum(len(b) for b in batches)
    out["naive mmap store (torch over a row file, page cache only)"] = {
        "lookups_per_second": n / t,
        "device_reads_per_1000_lookups": 1000.0 * faults / n,
    }
    return out


def render(result: dict, quick: bool) -> str:
    lines = [
        "# Pooled lookups side by side with torch, one thread pinned to one core",
        "",
        "Reproduce: `python benchmarks/bench_lookup.py" + (" --quick" if quick else "") + "`",
        "",
        f"CPU: {result['cpu']}; core {result['core']}; load average before / after: "
        f"{result['load_before']} / {result['load_after']} (2 cores, shared).",
        "M rows/s of CPU time (process_time: the machine is shared, wall time counted other "
        "jobs' time slices), median of interleaved repeats; ratio to the torch kernel of the "
        "same codec in brackets. `resident`: the kernel over decoded float32 rows (what the "
        "store holds today); `resident encoded`: over the rows in their codec; `warm cache`: "
        "`Store.embedding_bag`, every row cached; `pinned`: the pinned hit path. FBGEMM's CPU "
        "TBE needs torch 2.14.1 (the venv has 2.13): not measured.",
        "",
        "| codec | D | rows | ids | bag | resident | resident encoded | warm cache | pinned "
        "| torch | torch kernel | load |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["kernels"]:
        rate, ratio = r["m_rows_per_s"], r["ratio_to_torch"]

        def cell(k, rate=rate, ratio=ratio):
            return f"{rate[k]:.1f} ({ratio[k]:.2f})" if k in rate else "-"

        lines.append(
            f"| {r['codec']} | {r['dim']} | {r['rows']:,} | {r['ids']} | {r['bag']} | "
            f"{cell('resident')} | {cell('resident encoded')} | {cell('warm cache')} | "
            f"{cell('pinned')} | {rate[r['torch']]:.1f} | {r['torch']} | {r['load_avg']:.2f} |"
        )
    m = result["many_tables"]
    lines += [
        "",
        f"26 tables x {m['rows_per_table']:,} rows, D={m['dim']}, one Zipf id per table per "
        f"sample, batch {m['batch']} (load {m['load_avg']:.2f}):",
        "",
        "| contender | M samples/s |",
        "|---|---:|",
    ]
    for k, v in m["m_samples_per_s"].items():
        lines.append(f"| {k} | {v:.3f} |")
    if "cold" in result:
        lines += ["", "| cold tier, Zipf ids | lookups/s | device reads / 1000 lookups |",
                  "|---|---:|---:|"]  # fmt: skip
        for k, v in result["cold"].items():
            lines.append(f"| {k} | {v['lookups_per_second'] / 1e6:.2f} M | "
                         f"{v['device_reads_per_1000_lookups']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--bytes-per-table", type=int, default=512 << 20,
                    help="cap on rows * 4 * dim (fewer rows at large D)")  # fmt: skip
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--bags", type=int, nargs="+", default=[1, 20, 100],
                    help="bag sizes at D=64 (other dims: 20)")  # fmt: skip
    ap.add_argument("--bags-per-call", type=int, default=65536)
    ap.add_argument("--ids-per-call", type=int, default=65536 * 20)
    ap.add_argument("--many-rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also the cold-tier question")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="results name (default lookup[_quick])")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.repeats, args.many_rows = 200_000, 3, 20_000
        args.ids_per_call = 1 << 18
    import torch

    core = pin_one_core()
    rng = np.random.default_rng(0)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as tmp:
        tmp = Path(tmp)
        result = {"cpu": _cpu_name(), "core": core, "load_before": load_before,
                  "args": vars(args)}  # fmt: skip
        result["kernels"] = kernel_table(args, rng, torch, tmp)
        result["many_tables"] = many_tables(args, rng, torch, tmp)
        if args.cold:
            W = rng.standard_normal((args.rows, 64), dtype=np.float32)
            with bandstore.create(tmp / "cold") as s:
                s.add_table("t", W, progress=False)
            result["cold"] = cold_benchmark(tmp / "cold", W, tmp, args, rng)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["command"] = "python benchmarks/bench_lookup.py" + (" --quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    name = args.out or ("lookup_quick" if args.quick else "lookup")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    text = render(result, args.quick)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


def _cpu_name() -> str:
    try:
        import llvmlite.binding as ll

        return ll.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - only a label
        return "unknown"


if __name__ == "__main__":
    main()
