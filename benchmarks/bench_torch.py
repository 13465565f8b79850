"""What do the torch modules and the importer cost over the store they wrap?

1. Per call: ``torch.nn.EmbeddingBag`` (weights in DRAM, the upper bound), bandstore's
   ``EmbeddingBag`` module and ``Store.embedding_bag`` (the module's overhead is the gap between
   those two), on one table of 400k rows x 64 float32 (100 MiB) cached whole (every lookup a
   hit: no slow tier in the figure), bags of 20 Zipf ids, 32 and 512 bags per call.
2. Eight tables: one ``EmbeddingBagCollection`` call (one ``lookup_many``) against eight
   ``EmbeddingBag`` module calls, one worker, same requests; and the collection over a store
   opened with ``workers=2`` (what one call buys: the tables served on two threads).
3. Import: a safetensors file of 1M x 64 float32 (256 MiB) into a new store, ``bandstore
   import`` (rows read in chunks) against what a user writes without it
   (``safetensors.numpy.load_file`` then ``Store.add_table``): wall time and peak RSS of a
   fresh process for each, in turns.

Contenders alternate call by call (A B C A B C...); medians. torch runs on one thread, as the
store does here (on this shared 2-core VM torch's two OpenMP threads stalled a 20 us call to
milliseconds whenever the other core was busy). The load average is reported.

    python benchmarks/bench_torch.py [--quick]

Writes benchmarks/results/torch.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from paths import RESULTS, run_facts

import bandstore
from bandstore.torch import EmbeddingBag, EmbeddingBagCollection

DIM = 64
ROWS = 400_000
POOLING = 20


def bags(rng: np.random.Generator, n_bags: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    ids = (rng.zipf(1.2, n_bags * POOLING) - 1) % rows
    return ids.astype(np.int64), np.arange(0, n_bags * POOLING, POOLING, dtype=np.int64)


def timed(fns: dict, args_list: list, repeats: int) -> dict[str, float]:
    """Median microseconds per call of each contender, calls interleaved. Consecutive calls
    serve different requests (contender j is ``n / len(fns) * j`` requests ahead), so that no
    contender finds the rows of its request in the CPU caches from the call before it."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    n = len(args_list)
    for r in range(repeats):
        for k in range(n):
            for j in range(len(names)):
                c = (k + j + r) % len(names)
                a = args_list[(k + c * n // len(names)) % n]
                t0 = time.perf_counter()
                fns[names[c]](*a)
                times[names[c]].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e6 for k, v in times.items()}


def per_call(path: Path, weight: np.ndarray, calls: int) -> list[dict]:
    rows = []
    with bandstore.open(path, cache_bytes=1 << 30) as s:
        ours = EmbeddingBag(s, "t0")
        theirs = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(weight), mode="sum")
        for n_bags in (32, 512):
            rng = np.random.default_rng(n_bags)
            reqs = [bags(rng, n_bags, ROWS) for _ in range(calls)]
            treqs = [(torch.from_numpy(i), torch.from_numpy(o)) for i, o in reqs]
            for i, o in reqs:  # warm: every row read once, kernels compiled
                s.embedding_bag("t0", i, o)
            fns = {
                "torch": lambda k, t=treqs: theirs(*t[k]),
                "module": lambda k, t=treqs: ours(*t[k]),
                "store": lambda k, r=reqs: s.embedding_bag("t0", *r[k]),
            }
            with torch.no_grad():
                med = timed(fns, [(k,) for k in range(calls)], 3)
            assert torch.allclose(ours(*treqs[0]), theirs(*treqs[0]), atol=1e-4)
            rows.append({"bags": n_bags, "median_us": med})
            print(rows[-1], flush=True)
    return rows


def collection(path: Path, calls: int) -> dict:
    with (
        bandstore.open(path, cache_bytes=1 << 30) as s,
        bandstore.open(path, cache_bytes=1 << 30, workers=2) as s2,
    ):
        names = [f"t{i}" for i in range(8)]
        ebc = EmbeddingBagCollection(s, {n: n for n in names})
        ebc2 = EmbeddingBagCollection(s2, {n: n for n in names})  # tables dealt to 2 workers
        mods = {n: EmbeddingBag(s, n) for n in names}
        rng = np.random.default_rng(1)
        reqs = []
        for _ in range(calls):
            reqs.append({n: tuple(map(torch.from_numpy, bags(rng, 128, ROWS // 8))) for n in names})
        for r in reqs:
            ebc(r)
            ebc2(r)

        def loop(k: int) -> dict:
            return {n: mods[n](*reqs[k][n]) for n in names}

        fns = {
            "collection": lambda k: ebc(reqs[k]),
            "8 modules": loop,
            "collection, 2 workers": lambda k: ebc2(reqs[k]),
        }
        med = timed(fns, [(k,) for k in range(calls)], 3)
        out = ebc(reqs[0])
        assert all(torch.equal(out[n], loop(0)[n]) for n in names)
    print(med, flush=True)
    return {"median_us": med}


IMPORT_SCRIPT = """
import sys, time
import bandstore
t0 = time.perf_counter()
if sys.argv[1] == "import":
    from bandstore.importers import import_weights
    import_weights(sys.argv[3], [sys.argv[2]], progress=False)
else:
    from safetensors.numpy import load_file
    with bandstore.create(sys.argv[3]) as s:
        for k, v in load_file(sys.argv[2]).items():
            s.add_table(k.removesuffix(".weight"), v, progress=False)
print(time.perf_counter() - t0, peak_kib())
"""
# Peak anonymous memory (RssAnon, sampled every millisecond by a thread): the bytes a process
# copied into RAM. Peak RSS (VmHWM) would also count the pages of the mapped source and block
# files it touched, which are page cache the kernel can drop.
PEAK = """
import threading, time as _t
_peak = [0]
def _anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
def _sample():
    while True:
        _peak[0] = max(_peak[0], _anon())
        _t.sleep(0.001)
threading.Thread(target=_sample, daemon=True).start()
def peak_kib():
    return max(_peak[0], _anon())
"""


def importing(tmp: Path, rows: int, repeats: int) -> list[dict]:
    from safetensors.numpy import save_file

    src = tmp / "big.safetensors"
    rng = np.random.default_rng(2)
    save_file({"big.weight": rng.standard_normal((rows, DIM)).astype(np.float32)}, str(src))
    env = {**os.environ, "PYTHONPATH": str(Path(bandstore.__file__).parents[1])}
    # The baseline: the same import of a 1,000-row file (interpreter, numba kernels, store).
    tiny = tmp / "tiny.safetensors"
    save_file({"big.weight": rng.standard_normal((1000, DIM)).astype(np.float32)}, str(tiny))
    base = subprocess.run(
        [sys.executable, "-c", PEAK + IMPORT_SCRIPT, "import", str(tiny), str(tmp / "tiny")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    base_kib = int(base.stdout.split()[1])
    out = []
    for r in range(repeats):
        for how in ("import", "load_file + add_table") if r % 2 == 0 else (
            "load_file + add_table", "import"):  # fmt: skip
            dest = tmp / f"s{r}-{how[:4]}"
            done = subprocess.run(
                [sys.executable, "-c", PEAK + IMPORT_SCRIPT, how.split()[0], str(src), str(dest)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            secs, kib = done.stdout.split()
            out.append({"how": how, "seconds": float(secs), "peak_anon_mib": int(kib) / 1024,
                        "over_baseline_mib": (int(kib) - base_kib) / 1024})  # fmt: skip
            print(out[-1], flush=True)
            with bandstore.open(dest, cache_bytes=0) as s:
                assert s.tables["big"].rows == rows
            subprocess.run(["rm", "-rf", str(dest)], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls, a smaller import")
    ap.add_argument("--name", default="torch", help="results file stem")
    args = ap.parse_args(argv)
    calls = 100 if args.quick else 400
    import_rows = 1 << 18 if args.quick else 1 << 20
    load_before = os.getloadavg()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bandstore-torch-") as d:
        tmp = Path(d)
        rng = np.random.default_rng(0)
        weight = rng.standard_normal((ROWS, DIM)).astype(np.float32)
        with bandstore.create(tmp / "store") as s:
            small = {f"t{i}": rng.standard_normal((ROWS // 8, DIM)).astype(np.float32)
                     for i in range(8)}  # fmt: skip
            small["t0"] = weight
            s.add_tables(small, progress=False)
        single = per_call(tmp / "store", weight, calls)
        # t0 is the big table: the collection reads t1..t7 and t0 by ids below ROWS // 8.
        coll = collection(tmp / "store", calls)
        imports = importing(tmp, import_rows, 4 if args.quick else 6)
    cmd, commit, load = run_facts("bench_torch.py", argv)
    lines = [
        "# The torch modules and the importer",
        "",
        f"`{cmd}` at {commit} ({os.cpu_count()} CPUs, load {load} after, "
        f"{', '.join(f'{x:.2f}' for x in load_before)} before; contenders in turns, medians).",
        "",
        f"One table of {ROWS:,} x {DIM} float32 cached whole, bags of {POOLING} Zipf ids, "
        f"{calls} calls x 3 rounds:",
        "",
        "| bags per call | torch nn.EmbeddingBag us | bandstore EmbeddingBag us | "
        "Store.embedding_bag us | module overhead us | module / torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in single:
        m = r["median_us"]
        lines.append(
            f"| {r['bags']} | {m['torch']:.1f} | {m['module']:.1f} | {m['store']:.1f} | "
            f"{m['module'] - m['store']:.1f} | {m['torch'] / m['module']:.2f}x |"
        )
    m = coll["median_us"]
    lines += [
        "",
        f"Eight tables, 128 bags each per call: one EmbeddingBagCollection call "
        f"{m['collection']:.0f} us, eight EmbeddingBag calls {m['8 modules']:.0f} us "
        f"({m['8 modules'] / m['collection']:.2f}x); the collection over a store opened with "
        f"workers=2 {m['collection, 2 workers']:.0f} us "
        f"({m['8 modules'] / m['collection, 2 workers']:.2f}x the eight calls).",
        "",
        f"Import of a {import_rows:,} x {DIM} float32 safetensors file "
        f"({import_rows * DIM * 4 >> 20} MiB) into a new store, each run a fresh process:",
        "",
        "| how | seconds | peak anonymous memory MiB | over a 1,000-row import's MiB |",
        "|---|---|---|---|",
    ]
    for r in imports:
        lines.append(
            f"| {r['how']} | {r['seconds']:.2f} | {r['peak_anon_mib']:.0f} | "
            f"{r['over_baseline_mib']:.0f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    out = {"command": cmd, "commit": commit, "load_before": load_before, "load_after": load,
           "per_call": single, "collection": coll, "import": imports}  # fmt: skip
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
