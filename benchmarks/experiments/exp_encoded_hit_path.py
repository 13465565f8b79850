"""How fast do rows held encoded in DRAM pool, per codec, against torch? (issue 23)

All rows in DRAM, one thread pinned to one core, ``--rows`` x D (2M x 64), bags of 20, Zipf(1.05)
and uniform ids, 16k bags per call, every call allocating its zeroed output. Contenders, run
interleaved (A B C D A B C D ...), median CPU time per call:

- ``resident``: ``kernels.resident._gather_pool_encoded`` over the rows as the block file stores
  them (what the ``resident`` strategy holds: uint8 rows of ``row_bytes``);
- ``warm cache``: ``kernels.cache._cache_batch`` over a cache holding every row at a random slot
  (the ``cached`` strategy's hit path: slot probe, CLOCK bits, pooling from the slots);
- ``pinned``: ``kernels.resident._direct_batch`` with a pinned set holding every row;
- ``store warm cache`` (``--store``): ``Store.embedding_bag`` through the public API (validation
  and the result's allocation included), a cache holding every row;
- torch: ``embedding_bag`` over float32 weights (float16 weights for float16) and
  ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` over the same int8 codes, scales
  and biases for int8.

bandstore's arrays are allocated as the store allocates them (``storage.dram``: huge pages),
torch's as torch does. Every contender is first checked against torch's result. Prints M rows/s
and the ratio to torch, and the load average before and after.

    python benchmarks/experiments/exp_encoded_hit_path.py                 # 2M rows, D=64
    python benchmarks/experiments/exp_encoded_hit_path.py --rows 200000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from bandstore.kernels import cache as kc
from bandstore.kernels import resident as kr
from bandstore.kernels.bits import pinned_index
from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8
from bandstore.storage import dram
from bandstore.storage.codecs import decode_rows, encode_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_lookup import interleaved, torch_contender  # noqa: E402

CODECS = {"float32": FLOAT32, "float16": FLOAT16, "int8": INT8}
NO_W = np.zeros(0, dtype=np.float32)


def zipf_ids(rng, rows: int, n: int, a: float = 1.05) -> np.ndarray:
    """Ids with Zipf popularity over a random permutation of the rows."""
    p = np.arange(1, rows + 1, dtype=np.float64) ** -a
    p /= p.sum()
    return rng.permutation(rows)[rng.choice(rows, size=n, p=p)].astype(np.int64)


def torch_fn(torch, codec: str, raw: np.ndarray, decoded: np.ndarray, dim: int):
    """The torch kernel a user would pick for this codec (bench_lookup's contender)."""
    return torch_contender(torch, codec, raw, decoded, dim)[1]


def run_codec(args, torch, rng, codec: str, base: np.ndarray, dists: dict, off) -> None:
    """Print one line per id distribution for ``codec``."""
    rows, dim = base.shape
    bag = args.bag
    n = args.bags * bag
    st = np.zeros(kc.N_STATS, dtype=np.int64)
    err = np.zeros(1, dtype=np.int64)
    none_i, none_u8, none_u64 = np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.uint64)
    cid = CODECS[codec]
    enc = encode_rows(cid, base)  # uint8 (rows, row_bytes): what DRAM holds
    rb = enc.shape[1]
    decoded = decode_rows(cid, enc, dim)
    tfn = torch_fn(torch, codec, enc, decoded, dim)  # torch's own tensors, as a user has them
    # The store's arrays, allocated as it allocates them (huge pages: storage.dram).
    raw = dram.copy(enc)
    # A cache holding every row, at a random slot each.
    slot_of_id = dram.copy(rng.permutation(rows).astype(np.int32))
    cache_data = dram.zeros(enc.shape, np.uint8)
    cache_data[slot_of_id] = enc
    id_of_slot = dram.zeros(rows, np.int64)
    id_of_slot[slot_of_id] = np.arange(rows)
    ref = dram.zeros(rows, np.uint8)
    meta = np.array([0, rows, 0, rows], dtype=np.int64)
    counts = dram.zeros(rows, np.int32)
    index = dram.copy(pinned_index(np.arange(rows), rows))
    store = None
    if args.store:
        import bandstore
        from bandstore.serve.cache import cache_row_bytes

        tmp = tempfile.mkdtemp(prefix="exp-hit-")
        with bandstore.create(Path(tmp) / "s") as s:
            s.add_table("t", decoded if codec == "float32" else base, codec=codec,
                        progress=False)  # fmt: skip
        store = bandstore.open(Path(tmp) / "s", cache_bytes=rows * cache_row_bytes(dim, codec))
        for a in range(0, rows, 1 << 16):
            store.lookup("t", np.arange(a, min(rows, a + (1 << 16))))
    for dist, ids in dists.items():
        ids_t, off_t = torch.from_numpy(ids), torch.from_numpy(off[:-1])

        def resident(ids=ids):
            out = np.zeros((args.bags, dim), dtype=np.float32)
            kr._gather_pool_encoded(ids, off, NO_W, kc.MODE_SUM, -1, out, raw, cid, st)
            return out

        def cached(ids=ids):
            out = np.zeros((args.bags, dim), dtype=np.float32)
            kc._cache_batch(ids, off, NO_W, kc.MODE_SUM, -1, out, True, slot_of_id,
                            id_of_slot, ref, meta, cache_data, counts, kc.NEVER, none_i,
                            none_i, 1, 4096, rb, cid, dim, none_u8, none_u64, 4096, False,
                            st, err)  # fmt: skip
            return out

        def pinned(ids=ids):
            out = np.zeros((args.bags, dim), dtype=np.float32)
            kr._direct_batch(ids, off, NO_W, kc.MODE_SUM, -1, out, index, raw, none_i, 1,
                             4096, rb, cid, dim, none_u8, none_u64, 4096, False, st,
                             err)  # fmt: skip
            return out

        contenders = {"resident": resident, "warm cache": cached, "pinned": pinned}
        if store is not None:
            contenders["store warm cache"] = lambda ids=ids: store.embedding_bag("t", ids, off[:-1])
        contenders["torch"] = lambda i=ids_t, o=off_t: tfn(i, o)
        want = tfn(ids_t, off_t).float().numpy()
        tol = 2e-2 if cid == FLOAT16 else 1e-3  # torch's fp16 kernel rounds its output
        for name, fn in contenders.items():
            if name != "torch":
                np.testing.assert_allclose(fn(), want, rtol=tol, atol=tol * np.sqrt(bag))
        res = interleaved(contenders, args.repeats)
        t_torch = res["torch"]
        line = "  ".join(f"{k} {n / v / 1e6:6.1f} ({t_torch / v:4.2f}x)" for k, v in res.items())
        print(f"{codec:8} {dist:8} M rows/s: {line}", flush=True)
    if store is not None:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--bag", type=int, default=20)
    ap.add_argument("--bags", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--codecs", nargs="+", default=list(CODECS))
    ap.add_argument("--store", action="store_true", help="also Store.embedding_bag (warm cache)")
    args = ap.parse_args()
    import numba
    import torch

    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}; pinned to core {core}")
    rng = np.random.default_rng(0)
    rows, dim, bag = args.rows, args.dim, args.bag
    n = args.bags * bag
    base = rng.standard_normal((rows, dim), dtype=np.float32)
    dists = {"zipf": zipf_ids(rng, rows, n), "uniform": rng.integers(0, rows, n)}
    off = np.arange(0, n + 1, bag, dtype=np.int64)
    for codec in args.codecs:
        run_codec(args, torch, rng, codec, base, dists, off)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
