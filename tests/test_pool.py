"""The vectorised gather-and-pool (bandstore.kernels.pool) against slow references.

- ``_gather_pool_encoded`` over float16 / int8 rows kept encoded must equal, bit for bit,
  ``_gather_pool`` over the same rows decoded to float32 first (decode, then pool); that in turn
  must equal a plain float32 loop adding the rows in order (the kernels use no fast-math), and
  torch's EmbeddingBag within float32 rounding.
- Every column chunk width is exercised (dims that are not multiples of 16 or 64), every mode,
  weights, padding, empty bags, and slots < 0 skipped (the cache's misses).

Also run with NUMBA_DISABLE_JIT=1, where the chunk loops execute as plain Python.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from bandstore.kernels import cache as kc
from bandstore.kernels import pool as kp
from bandstore.kernels import resident as kr
from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8
from bandstore.storage.codecs import decode_rows, encode_rows
from tests.reference import embedding_bag_ref

JIT = not numba.config.DISABLE_JIT
MODES = {"sum": kc.MODE_SUM, "mean": kc.MODE_MEAN, "max": kc.MODE_MAX}
NO_W = np.zeros(0, dtype=np.float32)


def _request(rng, rows, n_bags, max_bag, pad=None):
    sizes = rng.integers(0, max_bag + 1, n_bags)
    offsets = np.zeros(n_bags + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes)
    ids = rng.integers(0, rows, int(offsets[-1])).astype(np.int64)
    if pad is not None and ids.size:
        ids[rng.random(ids.size) < 0.2] = pad
    return ids, offsets


def _loop_ref(data, ids, offsets, weights, mode, pad):
    """float32, one row at a time, in position order: the order every kernel adds in."""
    out = np.zeros((offsets.size - 1, data.shape[1]), dtype=np.float32)
    for b in range(offsets.size - 1):
        cnt = 0
        for i in range(offsets[b], offsets[b + 1]):
            if ids[i] == pad:
                continue
            row = data[ids[i]]
            if mode == kc.MODE_MAX:
                out[b] = row if cnt == 0 else np.where(row > out[b], row, out[b])
            elif weights.size:
                out[b] = out[b] + np.float32(weights[i]) * row
            else:
                out[b] = out[b] + row
            cnt += 1
        if mode == kc.MODE_MEAN and cnt > 1:
            out[b] *= np.float32(1.0) / np.float32(cnt)
    return out


def _run(kernel, *args):
    ids, offsets, weights, mode, pad = args[:5]
    data = args[5]
    out = np.full((offsets.size - 1, data.shape[1] if data.dtype == np.float32 else args[6]),
                  np.nan, dtype=np.float32)  # fmt: skip
    stats = np.zeros(kc.N_STATS, dtype=np.int64)
    if kernel is kr._gather_pool:
        kernel(ids, offsets, weights, mode, pad, out, data, stats)
    else:
        kernel(ids, offsets, weights, mode, pad, out, data, args[7], stats)
    return out, stats


DIMS = [1, 3, 16, 20, 64, 100, 130] if JIT else [3, 20, 70]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("weighted", [False, True])
def test_gather_pool_matches_float32_loop(dim, mode, weighted):
    rng = np.random.default_rng(dim * 7 + len(mode) + weighted)
    rows = 300
    data = rng.standard_normal((rows, dim), dtype=np.float32)
    for pad in (-1, 5):
        ids, offsets = _request(rng, rows, 40, 30, pad=pad if pad >= 0 else None)
        w = rng.standard_normal(ids.size).astype(np.float32) if weighted else NO_W
        out, stats = _run(kr._gather_pool, ids, offsets, w, MODES[mode], pad, data)
        ref = _loop_ref(data, ids, offsets, w, MODES[mode], pad)
        np.testing.assert_array_equal(out, ref)
        n_real = int(np.sum(ids != pad))
        assert stats[kc.STAT_LOOKUPS] == n_real == stats[kc.STAT_HITS]
        # and torch's semantics, in float64
        ref64 = embedding_bag_ref(data, ids, offsets[:-1], mode=mode,
                                  per_sample_weights=w if weighted and mode != "max" else None,
                                  padding_idx=pad if pad >= 0 else None)  # fmt: skip
        np.testing.assert_allclose(out, ref64, rtol=1e-5, atol=1e-5 * np.sqrt(30))


def _encoded(codec, data):
    raw = encode_rows(codec, data)
    decoded = decode_rows(codec, raw, data.shape[1])
    if codec == FLOAT16:
        # the half bit patterns as uint16 (the row bytes may be padded to 4: drop that)
        enc = raw.view(np.uint16)[:, : data.shape[1]].copy()
    elif codec == FLOAT32:
        enc = raw.view(np.float32).copy()
    else:
        enc = raw
    return enc, decoded


@pytest.mark.parametrize("codec", [FLOAT32, FLOAT16, INT8])
@pytest.mark.parametrize("dim", DIMS)
def test_encoded_rows_pool_like_decode_then_pool(codec, dim):
    rng = np.random.default_rng(100 + 10 * codec + dim)
    rows = 257
    data = (rng.standard_normal((rows, dim)) * 3).astype(np.float32)
    data[3] = 1.5  # a constant row (int8: scale 1)
    enc, decoded = _encoded(codec, data)
    for mode in (kc.MODE_SUM, kc.MODE_MEAN, kc.MODE_MAX, kc.MODE_COPY):
        for weighted in (False, True):
            if mode == kc.MODE_COPY:
                ids = rng.integers(0, rows, 50).astype(np.int64)
                offsets = np.arange(51, dtype=np.int64)
                pad = -1
            else:
                pad = 3
                ids, offsets = _request(rng, rows, 30, 25, pad=pad)
            w = rng.random(ids.size).astype(np.float32) if weighted else NO_W
            want, st_want = _run(kr._gather_pool, ids, offsets, w, mode, pad, decoded)
            got, st_got = _run(kr._gather_pool_encoded, ids, offsets, w, mode, pad, enc, dim,
                               codec)  # fmt: skip
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(st_got, st_want)
            if mode == kc.MODE_COPY:
                np.testing.assert_array_equal(got, decoded[ids])


def test_float16_rows_as_uint16_or_bytes_agree():
    """float16 rows may come as uint16 (rows, dim) or as their bytes (rows, 2 * dim)."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((64, 32), dtype=np.float32)
    h = data.astype(np.float16)
    ids, offsets = _request(rng, 64, 20, 10)
    b, _ = _run(kr._gather_pool_encoded, ids, offsets, NO_W, kc.MODE_SUM, -1, h.view(np.uint16),
                32, FLOAT16)  # fmt: skip
    c, _ = _run(kr._gather_pool_encoded, ids, offsets, NO_W, kc.MODE_SUM, -1, h.view(np.uint8),
                32, FLOAT16)  # fmt: skip
    np.testing.assert_array_equal(b, c)
    np.testing.assert_array_equal(b, _loop_ref(h.astype(np.float32), ids, offsets, NO_W,
                                               kc.MODE_SUM, -1))  # fmt: skip


def test_negative_slots_are_skipped_and_counted_out():
    """The cache's hit pass hands the chunk loops slot numbers with -1 for misses (pooled
    later from their block): those are skipped, and every bag is stored (zeros if empty)."""
    rng = np.random.default_rng(4)
    data = rng.standard_normal((50, 24), dtype=np.float32)
    slots = rng.integers(-1, 50, 200).astype(np.int32)
    offsets = np.array([0, 0, 7, 80, 80, 200], dtype=np.int64)
    slots = slots.astype(np.int64)
    out = np.full((5, 24), np.nan, dtype=np.float32)
    counts = np.zeros(5, dtype=np.int64)
    total = kp._pool_bags_f32(data, slots, NO_W, offsets, -1, kc.MODE_SUM, out, counts, True)
    assert total == counts.sum() == np.sum(slots >= 0)
    counts = counts.tolist()
    assert counts == [int(np.sum(slots[offsets[b] : offsets[b + 1]] >= 0)) for b in range(5)]
    keep = np.where(slots >= 0, slots, 0).astype(np.int64)
    np.testing.assert_array_equal(out[[0, 3]], 0.0)
    live = slots >= 0
    for b in (1, 2, 4):
        sel = np.arange(offsets[b], offsets[b + 1])[live[offsets[b] : offsets[b + 1]]]
        np.testing.assert_array_equal(
            out[b], _loop_ref(data, keep[sel], np.array([0, sel.size]), NO_W, kc.MODE_SUM, -7)[0]
        )


@pytest.mark.skipif(not JIT, reason="torch comparison at scale needs the compiled kernels")
def test_gather_pool_within_float32_rounding_of_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for dim in (16, 32, 64, 128, 256):
        data = rng.standard_normal((5000, dim), dtype=np.float32)
        ids, offsets = _request(rng, 5000, 500, 100)
        out, _ = _run(kr._gather_pool, ids, offsets, NO_W, kc.MODE_SUM, -1, data)
        ref = torch.nn.functional.embedding_bag(
            torch.from_numpy(ids), torch.from_numpy(data), torch.from_numpy(offsets[:-1]),
            mode="sum",
        ).numpy()  # fmt: skip
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5 * np.sqrt(100))
