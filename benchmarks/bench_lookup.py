"""How fast are bandstore's pooled lookups against torch's (and FBGEMM's) CPU kernels?

Question 1 (all rows in DRAM, one thread pinned to one core): M rows/s of ``Store.embedding_bag``
per strategy, side by side with torch, for each codec (float32, float16, int8 rowwise), D in
{16, 32, 64, 128, 256}, bags of {1, 20, 100} ids, Zipf(1.05) and uniform ids:

- ``resident``: the table planned ``resident`` (``bandstore.open(path, plan=...)``);
- ``warm cache``: no plan, a cache holding every row (the ``cached`` strategy's hit path);
- ``pinned``: planned ``pinned`` with every row in its set (the pinned hit path);
- torch: ``embedding_bag`` over float32 weights, over float16 weights for float16, and
  ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` over the same int8 codes, scales
  and biases for int8;
- FBGEMM (optional, ``--fbgemm-python``): ``IntNBitTableBatchedEmbeddingBagsCodegen`` in its own
  venv (torch 2.14.1), run as a subprocess (``fbgemm_tbe.py``) over the same ids, interleaved
  with that venv's torch ``embedding_bag``: reported as its ratio to torch, measured there.

Every call goes through the public API (validation and the output's allocation included), after
checking it computes torch's bags. Contenders run interleaved (A B C A B C ...), the median of
the repeats is reported. Also the DRAM bytes each strategy holds per row (``Store.memory()``).

Question 2 (26 tables, D=32, one id per table per sample, batch 4096, Zipf ids): samples/s of
one ``lookup_many`` call (every table resident; every row cached) against 26 torch
``embedding_bag`` calls, and FBGEMM's TBE with all 26 tables in one op (ratio to torch in its
process).

Question 3 (``--cold``, the original question): a 10% cache over a block file dropped from
the page cache, against torch over a memory-mapped row file.

    python benchmarks/bench_lookup.py            # 2M rows (1M at D=128, 500k at D=256)
    python benchmarks/bench_lookup.py --quick    # 100k rows, D 16/64/256, fewer repeats
    python benchmarks/bench_lookup.py --fbgemm-python /work/venv-fbgemm/bin/python
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


def resident_plan(names, workers: int = 1) -> dict:
    """A plan serving every table of ``names`` resident (on worker 0)."""
    return {"workers": workers, "tables": {n: {"strategy": "resident"} for n in names}}


def pinned_plan(name: str, rows: int, dim: int):
    """A plan pinning every row of table ``name`` (counts: every row read once)."""
    from dataclasses import replace

    from bandstore.serve.plan import Plan

    d = {"workers": 1, "tables": {name: {"strategy": "pinned", "cache_bytes": rows * 4 * dim}}}
    return replace(Plan.from_dict(d), counts={name: np.ones(rows, dtype=np.int64)})


def open_contenders(path: Path, rows: int, dim: int) -> dict:
    """The three stores of question 1 over one store path: resident, warm cache, pinned."""
    cache = bandstore.open(path, cache_bytes=rows * cache_row_bytes(dim), plan=False)
    for start in range(0, rows, 1 << 16):  # fill the cache with every row
        cache.lookup("t", np.arange(start, min(rows, start + (1 << 16))))
    return {
        "resident": bandstore.open(path, plan=resident_plan(["t"])),
        "warm cache": cache,
        "pinned": bandstore.open(path, plan=pinned_plan("t", rows, dim)),
    }


def measure(stores: dict, tfn, torch, ids: np.ndarray, bag: int, cid: int,
            repeats: int) -> dict[str, float]:  # fmt: skip
    """Seconds per call of every contender over the bags of ``bag`` ids ``ids``, after
    checking that they all compute the same bags as torch."""
    n = ids.size
    off = np.arange(0, n, bag, dtype=np.int64)
    ids_t, off_t = torch.from_numpy(ids), torch.from_numpy(off)
    contenders = {k: (lambda s=s: s.embedding_bag("t", ids, off)) for k, s in stores.items()}
    contenders["torch"] = lambda: tfn(ids_t, off_t)
    want = tfn(ids_t, off_t).float().numpy()
    tol = 2e-2 if cid == FLOAT16 else 1e-3  # torch's float16 kernel rounds its output to fp16
    for name, fn in contenders.items():
        if name != "torch":
            np.testing.assert_allclose(fn(), want, rtol=tol, atol=tol * np.sqrt(bag))
    return interleaved(contenders, repeats)


def kernel_table(args, rng, torch, tmp: Path) -> tuple[list[dict], dict, list[dict]]:
    """Question 1: one row of results per (codec, dim, ids, bag size); the DRAM bytes per row
    of each strategy per codec (at the first dim); the FBGEMM configurations to run."""
    rows_out, memory, fb_configs = [], {}, []
    for dim in args.dims:
        rows = min(args.rows, args.bytes_per_table // (4 * dim))
        base = rng.standard_normal((rows, dim), dtype=np.float32)
        for codec, cid in CODECS.items():
            raw = encode_rows(cid, base)
            decoded = decode_rows(cid, raw, dim)  # float32, the values every contender pools
            path = tmp / f"s-{codec}-{dim}"
            with bandstore.create(path) as s:
                s.add_table("t", decoded if codec == "float32" else base, codec=codec,
                            progress=False)  # fmt: skip
            stores = open_contenders(path, rows, dim)
            mem = {k: st.memory()["t"] for k, st in stores.items()}
            memory.setdefault(codec, {})[dim] = {
                "resident": mem["resident"]["strategy"] / rows,
                "warm cache": mem["warm cache"]["cache"] / rows,
                "pinned": mem["pinned"]["strategy"] / rows,
                "encoded row bytes": int(raw.shape[1]),
            }
            tname, tfn = torch_contender(torch, codec, raw, decoded, dim)
            for dist in ("zipf", "uniform"):
                for bag in args.bags:
                    n_bags = max(1, min(args.bags_per_call, args.ids_per_call // bag))
                    n = n_bags * bag
                    ids = zipf_ids(rng, rows, n) if dist == "zipf" else rng.integers(0, rows, n)
                    ids = ids.astype(np.int64)
                    sec = measure(stores, tfn, torch, ids, bag, cid, args.repeats)
                    rate = {(tname if k == "torch" else k): n / v / 1e6 for k, v in sec.items()}
                    row = {"codec": codec, "dim": dim, "rows": rows, "ids": dist, "bag": bag,
                           "bags_per_call": n_bags, "torch": tname,
                           "m_rows_per_s": rate,
                           "ratio_to_torch": {k: v / rate[tname] for k, v in rate.items()},
                           "load_avg": os.getloadavg()[0]}  # fmt: skip
                    rows_out.append(row)
                    if args.fbgemm_python:
                        f = tmp / f"ids-{len(fb_configs)}.npy"
                        np.save(f, ids)
                        fb_configs.append({"codec": codec, "dim": dim, "rows": rows, "bag": bag,
                                           "dist": dist, "ids": str(f)})  # fmt: skip
                    print(f"{codec:8s} D={dim:3d} {dist:7s} bag={bag:3d} "
                          + " ".join(f"{k}={v:.1f}" for k, v in rate.items())
                          + f" load={row['load_avg']:.2f}", flush=True)  # fmt: skip
            for st in stores.values():
                hits = st.stats()["t"]
                assert hits["lookups"] == hits["hits"] + hits["misses"]
                st.close()
            shutil.rmtree(path)  # (the temporary directory may be in RAM)
    return rows_out, memory, fb_configs


def many_tables(args, rng, torch, tmp: Path) -> tuple[dict, dict]:
    """Question 2: 26 tables of D=32, one id per table per sample; and its FBGEMM spec."""
    n_tables, dim, batch = 26, 32, 4096
    tables = {f"t{j}": rng.standard_normal((args.many_rows, dim), dtype=np.float32)
              for j in range(n_tables)}  # fmt: skip
    path = tmp / "many"
    with bandstore.create(path) as s:
        for name, w in tables.items():
            s.add_table(name, w, progress=False)
    cached = bandstore.open(path, cache_bytes=n_tables * args.many_rows * cache_row_bytes(dim),
                            workers=1, plan=False)  # fmt: skip
    for name in tables:
        for start in range(0, args.many_rows, 1 << 16):
            cached.lookup(name, np.arange(start, min(args.many_rows, start + (1 << 16))))
    resident = bandstore.open(path, plan=resident_plan(tables))
    off = np.arange(batch, dtype=np.int64)
    off_t = torch.from_numpy(off)
    reqs = {name: (zipf_ids(rng, args.many_rows, batch).astype(np.int64), off) for name in tables}
    treqs = [(torch.from_numpy(w), torch.from_numpy(reqs[n][0])) for n, w in tables.items()]
    F = torch.nn.functional
    for st in (cached, resident):
        got = st.lookup_many(reqs)
        for (w, i), name in zip(treqs, tables, strict=True):
            np.testing.assert_allclose(got[name], F.embedding_bag(i, w, off_t).numpy(), rtol=1e-6)
    resident.reset_stats()
    sec = interleaved({
        "bandstore lookup_many (resident)": lambda: resident.lookup_many(reqs),
        "bandstore lookup_many (warm cache)": lambda: cached.lookup_many(reqs),
        "26 torch embedding_bag calls": lambda: [F.embedding_bag(i, w, off_t) for w, i in treqs],
    }, args.repeats * 4)  # fmt: skip
    st = resident.stats()
    calls = args.repeats * 4 + 1
    assert all(st[n]["lookups"] == st[n]["hits"] == calls * batch for n in tables)
    cached.close()
    resident.close()
    fb = {"tables": n_tables, "rows": args.many_rows, "dim": dim, "batch": batch, "ids": []}
    for name in tables:
        f = tmp / f"many-{name}.npy"
        np.save(f, reqs[name][0])
        fb["ids"].append(str(f))
    rate = {k: batch / v / 1e6 for k, v in sec.items()}
    return {"tables": n_tables, "rows_per_table": args.many_rows, "dim": dim, "batch": batch,
            "m_samples_per_s": rate, "load_avg": os.getloadavg()[0]}, fb  # fmt: skip


def run_fbgemm(python: str, configs: list[dict], many: dict, repeats: int, tmp: Path) -> dict:
    """FBGEMM's TBE over the same ids, in its own venv (``fbgemm_tbe.py``); its figures or why
    there are none."""
    import subprocess
    import sys

    spec = tmp / "fbgemm.json"
    spec.write_text(json.dumps({"configs": configs, "many": many, "repeats": repeats}))
    where = "import torch, os; print(os.path.dirname(torch.__file__))"
    probe = subprocess.run([python, "-c", where], capture_output=True, text=True)
    if probe.returncode != 0:
        return {"error": f"no torch in {python}: {probe.stderr.strip()[-300:]}"}
    env = dict(os.environ, LD_PRELOAD=str(Path(probe.stdout.strip()) / "lib" / "libtorch.so"))
    script = Path(__file__).resolve().parent / "fbgemm_tbe.py"
    run = subprocess.run([python, str(script), str(spec)], capture_output=True, text=True,
                         env=env)  # fmt: skip
    sys.stderr.write("\n".join(x for x in run.stderr.splitlines() if "WARNING" not in x)[-3000:])
    if run.returncode != 0:
        return {"error": f"fbgemm_tbe.py failed: {run.stderr.strip()[-500:]}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


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


def _fb_index(result: dict) -> dict:
    fb = result.get("fbgemm") or {}
    return {(c["codec"], c["dim"], c["dist"], c["bag"]): c["m_rows_per_s"]
            for c in fb.get("configs", [])}  # fmt: skip


def render(result: dict, quick: bool) -> str:
    fb = result.get("fbgemm")
    fb_rows = _fb_index(result)
    if fb is None:
        fb_note = "FBGEMM: not run (`--fbgemm-python` not given)."
    elif "error" in fb:
        fb_note = f"FBGEMM: no figures ({fb['error']})."
    else:
        fb_note = (f"FBGEMM: IntNBit TBE under torch {fb['torch']} in its own process "
                   "(`fbgemm_tbe.py`, LD_PRELOAD of libtorch), ratio to that process's torch "
                   "`embedding_bag` over the same ids (fp32 weights holding the same values), "
                   f"load {fb['load_before']:.2f} / {fb['load_after']:.2f}.")  # fmt: skip
    lines = [
        "# Pooled lookups side by side with torch and FBGEMM, one thread pinned to one core",
        "",
        "Reproduce: `" + result["command"] + "`",
        "",
        f"CPU: {result['cpu']}; core {result['core']}; load average before / after: "
        f"{result['load_before']} / {result['load_after']} (2 cores, shared).",
        "M rows/s of CPU time (process_time: the machine is shared, wall time counted other "
        "jobs' time slices), median of interleaved repeats; ratio to the torch kernel of the "
        "same codec in brackets. Every bandstore figure is `Store.embedding_bag` (validation "
        "and output included): `resident` planned resident, `warm cache` every row cached, "
        "`pinned` planned pinned with every row in the set. " + fb_note,
        "",
        "| codec | D | rows | ids | bag | resident | warm cache | pinned | torch | FBGEMM "
        "(x torch) | torch kernel | load |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["kernels"]:
        rate, ratio = r["m_rows_per_s"], r["ratio_to_torch"]

        def cell(k, rate=rate, ratio=ratio):
            return f"{rate[k]:.1f} ({ratio[k]:.2f})" if k in rate else "-"

        f = fb_rows.get((r["codec"], r["dim"], r["ids"], r["bag"]))
        fcell = "-"
        if f is not None:
            fcell = (f"{f['fbgemm'] / f['torch']:.2f}" if "fbgemm" in f
                     else f"failed: {f.get('error', '')[:60]}")  # fmt: skip
        lines.append(
            f"| {r['codec']} | {r['dim']} | {r['rows']:,} | {r['ids']} | {r['bag']} | "
            f"{cell('resident')} | {cell('warm cache')} | {cell('pinned')} | "
            f"{rate[r['torch']]:.1f} | {fcell} | {r['torch']} | {r['load_avg']:.2f} |"
        )
    lines += ["", "DRAM bytes per row each strategy holds (`Store.memory()`: the resident copy, "
              "the cache with its slot index and CLOCK state, the pinned set with its index), "
              "and the ratio to float32's:", "",
              "| codec | D | encoded row bytes | resident | warm cache | pinned |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for codec, per_dim in result["memory"].items():
        for dim, m in per_dim.items():
            f32 = result["memory"]["float32"][dim]
            cells = " | ".join(f"{m[k]:.1f} ({m[k] / f32[k]:.2f})"
                               for k in ("resident", "warm cache", "pinned"))  # fmt: skip
            lines.append(f"| {codec} | {dim} | {m['encoded row bytes']} | {cells} |")
    m = result["many_tables"]
    lines += [
        "",
        f"26 tables x {m['rows_per_table']:,} rows, D={m['dim']}, one Zipf id per table per "
        f"sample, batch {m['batch']} (load {m['load_avg']:.2f}):",
        "",
        "| contender | M samples/s | x 26 torch calls |",
        "|---|---:|---:|",
    ]
    torch_rate = m["m_samples_per_s"]["26 torch embedding_bag calls"]
    for k, v in m["m_samples_per_s"].items():
        lines.append(f"| {k} | {v:.3f} | {v / torch_rate:.2f} |")
    if fb is not None and "many" in fb:
        fm = fb["many"]
        r = fm["fbgemm TBE, all tables in one op"] / fm["torch"]
        lines.append(f"| FBGEMM TBE, all tables in one op (own process: {fm['torch']:.3f} "
                     f"for its torch) | {fm['fbgemm TBE, all tables in one op']:.3f} | "
                     f"{r:.2f} |")  # fmt: skip
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
    ap.add_argument("--bags", type=int, nargs="+", default=[1, 20, 100])
    ap.add_argument("--bags-per-call", type=int, default=65536)
    ap.add_argument("--ids-per-call", type=int, default=65536 * 20)
    ap.add_argument("--many-rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also the cold-tier question")
    ap.add_argument("--fbgemm-python", default=None,
                    help="python of a venv with torch 2.14.1 and fbgemm-gpu-cpu 1.9.0")  # fmt: skip
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="results name (default lookup[_quick])")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.repeats, args.many_rows = 100_000, 3, 20_000
        args.ids_per_call, args.bags_per_call = 1 << 17, 1 << 15
        if args.dims == ap.get_default("dims"):
            args.dims = [16, 64, 256]
    import torch

    core = pin_one_core()
    rng = np.random.default_rng(0)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as tmp:
        tmp = Path(tmp)
        result = {"cpu": _cpu_name(), "core": core, "load_before": load_before,
                  "args": vars(args)}  # fmt: skip
        result["kernels"], result["memory"], fb_configs = kernel_table(args, rng, torch, tmp)
        result["many_tables"], fb_many = many_tables(args, rng, torch, tmp)
        if args.fbgemm_python:
            result["fbgemm"] = run_fbgemm(args.fbgemm_python, fb_configs, fb_many,
                                          args.repeats, tmp)  # fmt: skip
        if args.cold:
            W = rng.standard_normal((args.rows, 64), dtype=np.float32)
            with bandstore.create(tmp / "cold") as s:
                s.add_table("t", W, progress=False)
            result["cold"] = cold_benchmark(tmp / "cold", W, tmp, args, rng)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    flags = [
        " --quick" if args.quick else "",
        " --cold" if args.cold else "",
        " --fbgemm-python /work/venv-fbgemm/bin/python" if args.fbgemm_python else "",
    ]
    result["command"] = "python benchmarks/bench_lookup.py" + "".join(flags)
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
