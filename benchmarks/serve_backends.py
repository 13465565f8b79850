"""The contenders of ``bench_serve.py`` behind the identical server (bandstore.server.create_app):
torch ``nn.EmbeddingBag`` with every table in DRAM, and RocksDB (rocksdict, a row per key).

Run as a server process (what bench_serve.py starts):

    python benchmarks/serve_backends.py {store,torch,rocks} STORE --port P --model DIR
        [--cache-bytes B] [--rocks DIR] [--max-batch-size N] [--max-wait-ms M]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bandstore  # noqa: E402
from bandstore.server.backend import StoreBackend, TablePart, TableSpec  # noqa: E402


def pool_numpy(rows: np.ndarray, offsets: np.ndarray, mode: str, weights) -> np.ndarray:
    """EmbeddingBag pooling of ``rows`` (one per index) over bags starting at ``offsets``."""
    n, dim = rows.shape
    out = np.zeros((offsets.shape[0], dim), dtype=np.float32)
    if n == 0 or offsets.shape[0] == 0:
        return out
    if weights is not None:
        rows = rows * weights[:, None]
    lens = np.diff(np.append(offsets, n))
    full = lens > 0
    starts = offsets[full]
    if mode == "max":
        out[full] = np.maximum.reduceat(rows, starts, axis=0)
    else:
        out[full] = np.add.reduceat(rows, starts, axis=0)
        if mode == "mean":
            out[full] /= lens[full][:, None]
    return out


class TorchBackend:
    """Every table in DRAM as a frozen ``torch.nn.EmbeddingBag`` (float32), read from a store."""

    aligned_bags = False

    def __init__(self, store_path: str | Path, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self._specs: dict[str, TableSpec] = {}
        self._weights: dict[str, object] = {}
        self._bags: dict[tuple[str, str], object] = {}
        with bandstore.open(store_path, cache_bytes=0) as s:
            for name, info in s.tables.items():
                self._specs[name] = TableSpec(name, info.rows, info.dim, info.codec)
                self._weights[name] = torch.from_numpy(s.decoded_rows(name, 0, info.rows).copy())

    def tables(self) -> dict[str, TableSpec]:
        return dict(self._specs)

    def _module(self, table: str, mode: str):
        key = (table, mode)
        m = self._bags.get(key)
        if m is None:
            m = self.torch.nn.EmbeddingBag.from_pretrained(
                self._weights[table], freeze=True, mode=mode
            )
            self._bags[key] = m
        return m

    def lookup(
        self, requests: Mapping[str, TablePart], modes: Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        t = self.torch
        out = {}
        with t.inference_mode():
            for table, (idx, off, w) in requests.items():
                psw = None if w is None else t.from_numpy(w)
                res = self._module(table, modes[table])(
                    t.from_numpy(idx), t.from_numpy(off), per_sample_weights=psw
                )
                out[table] = res.numpy()
        return out

    def stats(self) -> dict[str, dict[str, float]]:
        return {}

    def close(self) -> None:
        self._weights.clear()
        self._bags.clear()


def rocks_options(cache_bytes: int):
    from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_compression_type(DBCompressionType.none())  # float rows do not compress
    table = BlockBasedOptions()
    table.set_block_cache(Cache(max(int(cache_bytes), 1 << 16)))
    opts.set_block_based_table_factory(table)
    return opts


def _key(table_no: int, row: int) -> bytes:
    return table_no.to_bytes(2, "big") + row.to_bytes(5, "big")


def build_rocks(store_path: str | Path, rocks_path: str | Path, chunk: int = 1 << 14) -> None:
    """Write every table of the store into RocksDB, one key per row (table no, row id)."""
    from rocksdict import Rdict, WriteBatch

    opts = rocks_options(8 << 20)
    db = Rdict(str(rocks_path), opts, column_families={"default": opts})
    try:
        with bandstore.open(store_path, cache_bytes=0) as s:
            for t_no, (name, info) in enumerate(sorted(s.tables.items())):
                for start in range(0, info.rows, chunk):
                    stop = min(start + chunk, info.rows)
                    rows = np.ascontiguousarray(s.decoded_rows(name, start, stop), np.float32)
                    wb = WriteBatch(raw_mode=True)
                    for i in range(stop - start):
                        wb.put(_key(t_no, start + i), rows[i].tobytes())
                    db.write(wb)
        db.flush()
        db.compact_range(None, None)
    finally:
        db.close()


class RocksBackend:
    """Rows in RocksDB (rocksdict, row per key, block cache of ``cache_bytes``), pooled in
    numpy: what a key-value-backed embedding (HugeCTR HPS, FBGEMM's SSD path) does per id."""

    aligned_bags = False

    def __init__(self, store_path: str | Path, rocks_path: str | Path, cache_bytes: int):
        from rocksdict import Rdict

        with bandstore.open(store_path, cache_bytes=0) as s:
            self._specs = {
                n: TableSpec(n, i.rows, i.dim, i.codec) for n, i in sorted(s.tables.items())
            }
        self._no = {n: k for k, n in enumerate(self._specs)}
        opts = rocks_options(cache_bytes)
        self.db = Rdict(str(rocks_path), opts, column_families={"default": opts})

    def tables(self) -> dict[str, TableSpec]:
        return dict(self._specs)

    def lookup(
        self, requests: Mapping[str, TablePart], modes: Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        out = {}
        for table, (idx, off, w) in requests.items():
            dim = self._specs[table].dim
            uniq, inverse = np.unique(idx, return_inverse=True)
            t_no = self._no[table]
            values = self.db[[_key(t_no, int(i)) for i in uniq]] if uniq.size else []
            rows = np.frombuffer(b"".join(values), dtype=np.float32).reshape(-1, dim)
            out[table] = pool_numpy(rows[inverse], off, modes[table], w)
        return out

    def stats(self) -> dict[str, dict[str, float]]:
        return {}

    def close(self) -> None:
        self.db.close()


def main(argv: list[str] | None = None) -> int:
    from bandstore.server import ServerOptions, create_app
    from bandstore.server.run import run_app

    p = argparse.ArgumentParser(description="one contender of bench_serve.py as a server")
    p.add_argument("backend", choices=["store", "torch", "rocks"])
    p.add_argument("store", type=Path)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", type=Path)
    p.add_argument("--cache-bytes", type=int, help="store / rocks DRAM (store: None = tuned)")
    p.add_argument("--rocks", type=Path)
    p.add_argument("--max-batch-size", type=int, default=1024)
    p.add_argument("--max-wait-ms", type=float, default=1.0)
    p.add_argument("--max-queue", type=int, default=1024)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    if args.backend == "store":
        backend = StoreBackend(
            bandstore.open(args.store, cache_bytes=args.cache_bytes, workers=args.workers)
        )
    elif args.backend == "torch":
        backend = TorchBackend(args.store)
    else:
        backend = RocksBackend(args.store, args.rocks, args.cache_bytes)
    options = ServerOptions(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        model=None if args.model is None else str(args.model),
    )
    return run_app(create_app(backend, options), port=args.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
