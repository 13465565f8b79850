"""What does merging concurrent predictions save, per request, inside the server?

In process (no HTTP, no client), CPU time (``time.process_time``, so a loaded machine inflates
it less than wall time) of the server's per-request and per-batch work for ``--requests``
requests of ``--batch`` samples each on a DLRM of 26 tables: parsing a request (the binary
body and JSON), then serving them merged (``serve_batch``: one ``lookup_many``, one dense
forward) vs one by one (what ``--max-batch-size 0`` does). Interleaved A B A B, medians.
The answers are checked identical first.

    python benchmarks/bench_serve_batch.py [--rows 20000] [--dim 16] [--requests 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from paths import RESULTS, run_facts  # noqa: E402

import bandstore  # noqa: E402


def setup(work: Path, rows: int, dim: int, seed: int = 0):
    from safetensors.numpy import save_file

    from bandstore.server.model import DLRMConfig, Feature

    rng = np.random.default_rng(seed)
    names = [f"T{j + 1}" for j in range(26)]
    with bandstore.create(work / "store") as s:
        for n in names:
            s.add_table(n, (rng.standard_normal((rows, dim)) * 0.1).astype(np.float32),
                        progress=False)  # fmt: skip
    config = DLRMConfig(dense_features=13, embedding_dim=dim, bottom_mlp=(64, dim),
                        top_mlp=(64, 1), features=tuple(Feature(n, n) for n in names))  # fmt: skip
    weights = {
        k: (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
        for k, shape in config.layer_shapes().items()
    }
    (work / "model").mkdir()
    save_file(weights, str(work / "model" / config.weights))
    (work / "model" / "config.json").write_text(json.dumps(config.as_dict()))
    return names


def cpu_ms(fn, reps: int) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t0) * 1e3 / reps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows per table")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--requests", type=int, default=16, help="requests merged into one batch")
    p.add_argument("--batch", type=int, default=32, help="samples per request")
    p.add_argument("--pooling", type=int, default=4, help="ids per bag, on average")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from bandstore.server.backend import StoreBackend
    from bandstore.server.batching import serve_batch
    from bandstore.server.model import DLRM
    from bandstore.server.predict import (
        loads,
        parse_json_predict,
        parse_npz_predict,
        predict_npz_body,
    )

    cmd, commit, load_before = run_facts("bench_serve_batch.py", argv)
    work = Path(tempfile.mkdtemp(prefix="bench_serve_batch_"))
    try:
        names = setup(work, args.rows, args.dim)
        model = DLRM.load(work / "model")
        budget = int(0.10 * 26 * args.rows * args.dim * 4)
        rng = np.random.default_rng(1)
        with bandstore.open(work / "store", cache_bytes=budget) as store:
            backend = StoreBackend(store)
            backend.warm_up()
            specs = backend.tables()
            bodies = []
            for _ in range(args.requests):
                sparse = {}
                for n in names:
                    sizes = rng.poisson(args.pooling - 1, args.batch) + 1
                    ids = (rng.zipf(1.2, int(sizes.sum())) - 1) % args.rows
                    sparse[n] = {"indices": ids.tolist(),
                                 "offsets": (np.cumsum(sizes) - sizes).tolist()}  # fmt: skip
                dense = rng.integers(0, 1000, (args.batch, 13)).astype(float).tolist()
                bodies.append({"dense": dense, "sparse": sparse})
            raw_json = [json.dumps(b).encode() for b in bodies]
            raw_npz = [
                predict_npz_body(b["dense"], {k: (v["indices"], v["offsets"])
                                              for k, v in b["sparse"].items()})
                for b in bodies
            ]  # fmt: skip
            items = [parse_npz_predict(model.config, specs, r) for r in raw_npz]
            # Bit for bit needs equal cache states (a cached bag pools its hits before its
            # misses): the identity check runs without a cache.
            with bandstore.open(work / "store", cache_bytes=0) as bare:
                ref = StoreBackend(bare)
                merged = serve_batch(ref, model, items)
                alone = [serve_batch(ref, model, [it])[0] for it in items]
            same = all(np.array_equal(m, a) for m, a in zip(merged, alone, strict=True))  # type: ignore[arg-type]
            k = args.requests
            runs: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, fn in (
                    ("parse_npz", lambda: [parse_npz_predict(model.config, specs, r)
                                           for r in raw_npz]),
                    ("parse_json", lambda: [parse_json_predict(model.config, specs, loads(r))
                                            for r in raw_json]),
                    ("merged", lambda: serve_batch(backend, model, items)),
                    ("one_by_one", lambda: [serve_batch(backend, model, [it]) for it in items]),
                ):  # fmt: skip
                    runs.setdefault(name, []).append(cpu_ms(fn, args.reps) / k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: round(float(np.median(v)), 3) for name, v in runs.items()}
    out = {
        "command": cmd, "commit": commit, "load_before": load_before,
        "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "args": vars(args), "identical": same, "cpu_ms_per_request": med, "runs": runs,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_batch.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Merging predictions inside the server (bench_serve_batch.py)",
        "",
        f"`{cmd}` at {commit}; load average before: {load_before}, after: {out['load_after']}"
        " (2 shared cores). CPU ms per request (process time), medians of "
        f"{args.rounds} interleaved rounds; {k} requests of {args.batch} samples, 26 tables of "
        f"{args.rows} x {args.dim}, DRAM 10%. Merged answers identical to one by one (checked "
        f"without a cache): {same}.",
        "",
        "| work per request | CPU ms |",
        "|---|---:|",
        f"| parse + validate, binary (.npz KJT) body | {med['parse_npz']} |",
        f"| parse + validate, JSON body | {med['parse_json']} |",
        f"| lookup + forward, merged ({k} requests per batch) | {med['merged']} |",
        f"| lookup + forward, one by one | {med['one_by_one']} |",
        "",
        f"- merging cuts the batch work {med['one_by_one'] / med['merged']:.1f}x; with the "
        f"binary body, parse + batch work per request is {med['parse_npz'] + med['merged']:.2f}"
        f" ms merged vs {med['parse_npz'] + med['one_by_one']:.2f} ms one by one "
        f"({(med['parse_npz'] + med['one_by_one']) / (med['parse_npz'] + med['merged']):.1f}x),"
        " before HTTP.",
    ]
    (RESULTS / "serve_batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
