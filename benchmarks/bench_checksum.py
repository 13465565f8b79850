"""What does checking a sector instead of the whole block save on a missed row?

One table (rows x 16 float32, 64 rows per 4 KB block) written to stores that differ only in the
checksum sector (``checksum_bytes`` 4096 = one checksum per block, as format 1 stores; 1024; 512,
the default; 256; 64), plus the 4096 store with ``verify_reads=False`` (no checking at all, the
floor). Batches of random single-row bags (uniform ids: nearly every lookup reads a block) are
served by the ``direct`` strategy (no cache) and by the ``cached`` strategy with a 5% cache
(misses dominate); the contenders take turns batch by batch and the median per-lookup time of
each is reported, as a ratio to the per-block checksum.

    python benchmarks/bench_checksum.py            # 4M rows (256 MiB of blocks per store)
    python benchmarks/bench_checksum.py --quick    # 500k rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bandstore

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 16
SECTORS = (4096, 1024, 512, 256, 64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4096, help="lookups per call")
    ap.add_argument("--rounds", type=int, default=30, help="calls per contender")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    rows = args.rows or (500_000 if args.quick else 4_000_000)
    rng = np.random.default_rng(args.seed)
    weights = rng.standard_normal((rows, DIM), dtype=np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="bench-checksum-", dir=args.workdir))
    given = sys.argv[1:] if argv is None else argv
    cmd = " ".join(["python benchmarks/bench_checksum.py", *given])
    out: dict = {"command": cmd, "rows": rows, "dim": DIM, "batch": args.batch, "results": {}}
    try:
        for cb in SECTORS:
            with bandstore.create(tmp / f"s{cb}", checksum_bytes=cb) as s:
                s.add_table("t", weights, progress=False)
        offsets = np.arange(args.batch, dtype=np.int64)
        load0 = os.getloadavg()[0]
        for strategy in ("direct", "cached"):
            entry = {"strategy": strategy, "worker": 0}
            if strategy == "cached":
                entry["cache_bytes"] = int(0.05 * rows) * 4 * DIM
            plan = {"workers": 1, "tables": {"t": entry}}
            stores = {f"{cb} B": bandstore.open(tmp / f"s{cb}", plan=plan) for cb in SECTORS}
            stores["no checking"] = bandstore.open(
                tmp / "s4096", plan=plan, options=bandstore.ServeOptions(verify_reads=False)
            )
            try:
                for s in stores.values():  # warm: pages mapped, caches filled
                    for _ in range(5):
                        s.embedding_bag("t", rng.integers(0, rows, args.batch), offsets)
                times: dict[str, list[float]] = {k: [] for k in stores}
                for _ in range(args.rounds):
                    ids = rng.integers(0, rows, args.batch)
                    for k, s in stores.items():
                        t0 = time.perf_counter()
                        s.embedding_bag("t", ids, offsets)
                        times[k].append(time.perf_counter() - t0)
                blocks = {k: s.stats()["t"]["blocks_read"] for k, s in stores.items()}
            finally:
                for s in stores.values():
                    s.close()
            base = statistics.median(times["4096 B"])
            out["results"][strategy] = {
                k: {
                    "ns_per_lookup": statistics.median(v) / args.batch * 1e9,
                    "vs_block_checksum": statistics.median(v) / base,
                    "blocks_read": blocks[k],
                }
                for k, v in times.items()
            }
        out["load"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    stem = "checksum_quick" if args.quick else "checksum"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    md = markdown(out)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    return 0


def markdown(out: dict) -> str:
    lines = [
        "# Checking a sector instead of the whole block",
        "",
        f"`{out['command']}`: {out['rows']:,} rows x {out['dim']} float32 (64 rows per 4 KB "
        f"block), uniform random single-row bags, {out['batch']} lookups per call, 1 worker; "
        f"median per contender, contenders interleaved call by call; load average "
        f"{out['load'][0]}-{out['load'][1]} on 2 cores.",
        "",
        "| strategy | checksum sector | ns per lookup | time vs per-block checksum |",
        "|---|---|---|---|",
    ]
    for strategy, res in out["results"].items():
        for k, r in res.items():
            lines.append(f"| {strategy} | {k} | {r['ns_per_lookup']:.0f} | "
                         f"{r['vs_block_checksum']:.2f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
