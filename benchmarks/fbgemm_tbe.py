"""FBGEMM's CPU table-batched embedding (IntNBit TBE) as ``bench_lookup.py``'s optional contender.

Run by ``bench_lookup.py`` as a subprocess of another venv (fbgemm-gpu-cpu 1.9.0 needs torch
2.14.1, the project's venv has 2.13), with ``LD_PRELOAD=<torch>/lib/libtorch.so`` (without it
FBGEMM silently falls back to its reference kernels, at 3-5 M rows/s). Not imported by anything.

Input: a JSON spec (argv[1]): ``configs`` (codec, dim, rows, bag, ids file (.npy)), ``many``
(tables, rows, dim, batch, one ids file per table), ``repeats``. Each config times the TBE over
the same ids as the main process, interleaved with torch's ``embedding_bag`` of this venv (fp32
weights, the reference every ratio is taken to: the main process measures bandstore against
torch 2.13 the same way), after checking that the TBE computes the same bags. Output (stdout):
JSON with M rows/s (M samples/s for ``many``) of both.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)

TYPES = {"float32": SparseType.FP32, "float16": SparseType.FP16, "int8": SparseType.INT8}


def tbe(codec: str, tables: list[np.ndarray]):
    """A TBE over float32 ``tables`` stored in ``codec``; returns (module, the float32 values
    it holds: the tables after its quantisation)."""
    specs = [("", w.shape[0], w.shape[1], TYPES[codec], EmbeddingLocation.HOST) for w in tables]
    m = IntNBitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=specs, pooling_mode=PoolingMode.SUM, device="cpu",
        output_dtype=SparseType.FP32,
    )  # fmt: skip
    m.initialize_weights()
    held = []
    for (dest, dest_sb), w in zip(m.split_embedding_weights(), tables, strict=True):
        if codec == "float32":
            dest.copy_(torch.from_numpy(w).view(torch.uint8).reshape(dest.shape))
            held.append(w)
        elif codec == "float16":
            h = w.astype(np.float16)
            dest.copy_(torch.from_numpy(h).view(torch.uint8).reshape(dest.shape))
            held.append(h.astype(np.float32))
        else:  # rowwise: codes, then fp16 scale and bias at the start of the row
            lo, hi = w.min(axis=1), w.max(axis=1)
            scale = np.maximum((hi - lo) / 255.0, 1e-8).astype(np.float16)
            bias = lo.astype(np.float16)
            s32, b32 = scale.astype(np.float32)[:, None], bias.astype(np.float32)[:, None]
            codes = np.clip(np.rint((w - b32) / s32), 0, 255).astype(np.uint8)
            dest.copy_(torch.from_numpy(codes).reshape(dest.shape))
            sb = np.stack([scale, bias], axis=1).view(np.uint8)
            dest_sb.copy_(torch.from_numpy(np.ascontiguousarray(sb)).reshape(dest_sb.shape))
            held.append(codes.astype(np.float32) * s32 + b32)
    return m, held


def interleaved(contenders: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds per call, run A B A B ... after one warm-up (as bench_lookup)."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def one_table(cfg: dict, repeats: int, rng) -> dict:
    w = rng.standard_normal((cfg["rows"], cfg["dim"]), dtype=np.float32)
    m, (held,) = tbe(cfg["codec"], [w])
    ids = np.load(cfg["ids"])
    bag = cfg["bag"]
    n = ids.size
    idx = torch.from_numpy(ids.astype(np.int32))
    off = torch.from_numpy(np.arange(0, n + 1, bag, dtype=np.int32))
    wt, it64 = torch.from_numpy(held), torch.from_numpy(ids)
    ot64 = off[:-1].long()
    F = torch.nn.functional
    got = m(idx, off).numpy()
    want = F.embedding_bag(it64, wt, ot64, mode="sum").numpy()
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.sqrt(bag))
    sec = interleaved({"fbgemm": lambda: m(idx, off),
                       "torch": lambda: F.embedding_bag(it64, wt, ot64, mode="sum")},
                      repeats)  # fmt: skip
    return {k: n / v / 1e6 for k, v in sec.items()}


def many_tables(spec: dict, repeats: int, rng) -> dict:
    t, rows, dim, batch = spec["tables"], spec["rows"], spec["dim"], spec["batch"]
    tables = [rng.standard_normal((rows, dim), dtype=np.float32) for _ in range(t)]
    m, held = tbe("float32", tables)
    ids = [np.load(f) for f in spec["ids"]]
    idx = torch.from_numpy(np.concatenate(ids).astype(np.int32))
    off = torch.from_numpy(np.arange(0, t * batch + 1, dtype=np.int32))  # one id per bag
    F = torch.nn.functional
    treqs = [(torch.from_numpy(h), torch.from_numpy(i)) for h, i in zip(held, ids, strict=True)]
    off_t = torch.arange(batch)
    got = m(idx, off).numpy()  # (batch, tables * dim)
    for k, (w, i) in enumerate(treqs):
        want = F.embedding_bag(i, w, off_t).numpy()
        np.testing.assert_allclose(got[:, k * dim : (k + 1) * dim], want, rtol=1e-5, atol=1e-5)
    sec = interleaved({
        "fbgemm TBE, all tables in one op": lambda: m(idx, off),
        "torch": lambda: [F.embedding_bag(i, w, off_t) for w, i in treqs],
    }, repeats)  # fmt: skip
    return {k: batch / v / 1e6 for k, v in sec.items()}


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    out: dict = {"torch": torch.__version__, "load_before": os.getloadavg()[0], "configs": []}
    for cfg in spec["configs"]:
        try:
            rate = one_table(cfg, spec["repeats"], rng)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            rate = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out["configs"].append({**cfg, "m_rows_per_s": rate})
        print(cfg["codec"], cfg["dim"], cfg["bag"], cfg.get("dist"), rate, file=sys.stderr,
              flush=True)  # fmt: skip
    if spec.get("many"):
        out["many"] = many_tables(spec["many"], spec["repeats"] * 4, rng)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
