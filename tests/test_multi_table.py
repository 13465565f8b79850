"""Several resident tables of one ``lookup_many`` call pooled by one kernel call
(``kernels.multi._pool_many`` through ``serve.multi.PooledGroup``): the same bags as the
per-table kernel and the slow reference, for every codec, mode, padding and weights, exact
counters, and a failing call changes no counter."""

from __future__ import annotations

import numpy as np
import pytest
from reference import embedding_bag_ref

import bandstore
from bandstore.kernels import cache as kc
from bandstore.kernels import resident as kr
from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8
from bandstore.kernels.multi import _pool_many, py_pool_many
from bandstore.storage.codecs import decode_rows, encode_rows

CODEC_NAMES = {FLOAT32: "float32", FLOAT16: "float16", INT8: "int8"}


def _encoded(codec: int, w: np.ndarray) -> np.ndarray:
    """The rows as ``kernels.pool`` reads them in ``codec`` (float16 as uint16 columns)."""
    if codec == FLOAT32:
        return np.ascontiguousarray(w, dtype=np.float32)
    raw = encode_rows(CODEC_NAMES[codec], w)
    if codec == FLOAT16:
        return np.ascontiguousarray(raw.view(np.uint16)[:, : w.shape[1]])
    return raw


def _tables(rng, specs):
    """(codec, encoded rows, decoded float32 rows) per (codec, rows, dim) spec."""
    out = []
    for codec, rows, dim in specs:
        w = rng.standard_normal((rows, dim)).astype(np.float32)
        enc = _encoded(codec, w)
        dec = decode_rows(CODEC_NAMES[codec], encode_rows(CODEC_NAMES[codec], w), dim)
        out.append((codec, enc, dec))
    return out


def _requests(rng, tables, n_bags):
    """Per table: ids (bags of 0-7 ids, empty bags included) and offsets with the end."""
    reqs = []
    for _, enc, _ in tables:
        sizes = rng.integers(0, 8, n_bags)
        ids = rng.integers(0, enc.shape[0], int(sizes.sum())).astype(np.int64)
        reqs.append((ids, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)))
    return reqs


def _run_many(tables, reqs, modes, pads, weights):
    """``_pool_many`` (and its plain-Python twin) over every table at once: each table's bags."""
    ids = np.concatenate([r[0] for r in reqs])
    offsets = np.concatenate([r[1] for r in reqs])
    id0 = np.concatenate([[0], np.cumsum([r[0].size for r in reqs])]).astype(np.int64)
    bag0 = np.concatenate([[0], np.cumsum([r[1].size - 1 for r in reqs])]).astype(np.int64)
    dims = np.array([t[2].shape[1] for t in tables], dtype=np.int64)
    out0 = np.concatenate([[0], np.cumsum(np.diff(bag0) * dims)]).astype(np.int64)
    weighted = np.array([w is not None for w in weights], dtype=np.uint8)
    wall = np.zeros(0, dtype=np.float32)
    if weighted.any():
        wall = np.concatenate([w if w is not None else np.zeros(r[0].size, np.float32)
                               for w, r in zip(weights, reqs, strict=True)])  # fmt: skip
    addr = np.array([t[1].ctypes.data for t in tables], dtype=np.int64)
    stride = np.array([t[1].strides[0] for t in tables], dtype=np.int64)
    codec = np.array([t[0] for t in tables], dtype=np.int64)
    modes_a, pads_a = np.array(modes, dtype=np.int64), np.array(pads, dtype=np.int64)
    results = []
    for fn in ("kernel", "python"):
        out = np.full(int(out0[-1]), np.nan, dtype=np.float32)  # every bag must be stored
        counts = np.full(len(tables), -1, dtype=np.int64)
        if fn == "kernel":
            _pool_many(ids, offsets, id0, wall, weighted, addr, stride, codec, bag0, dims,
                       modes_a, pads_a, out, out0, counts)  # fmt: skip
        else:
            py_pool_many(ids, offsets, id0, wall, weighted, [(t[0], t[1]) for t in tables],
                         bag0, dims, modes_a, pads_a, out, out0, counts)  # fmt: skip
        bags = [out[out0[k] : out0[k + 1]].reshape(-1, dims[k]) for k in range(len(tables))]
        results.append((bags, counts))
    return results


MODE_NAMES = {kc.MODE_SUM: "sum", kc.MODE_MEAN: "mean", kc.MODE_MAX: "max"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pool_many_equals_the_per_table_kernel_and_the_reference(seed):
    rng = np.random.default_rng(seed)
    # Every codec, dims that use each column chunk (64, 16, 1) and their mixes, tiny tables.
    specs = [(FLOAT32, 50, 32), (FLOAT16, 40, 64), (INT8, 30, 16), (FLOAT32, 7, 1),
             (INT8, 60, 100), (FLOAT16, 20, 5), (FLOAT32, 300, 130), (INT8, 1, 3)]  # fmt: skip
    tables = _tables(rng, specs)
    reqs = _requests(rng, tables, n_bags=int(rng.integers(0, 12)))
    modes = [int(m) for m in rng.choice([kc.MODE_SUM, kc.MODE_MEAN, kc.MODE_MAX], len(tables))]
    pads = [int(rng.integers(0, t[1].shape[0])) if rng.random() < 0.4 else -1 for t in tables]
    weights = [rng.standard_normal(r[0].size).astype(np.float32)
               if m == kc.MODE_SUM and rng.random() < 0.5 else None
               for m, r in zip(modes, reqs, strict=True)]  # fmt: skip
    (kbags, kcounts), (pbags, pcounts) = _run_many(tables, reqs, modes, pads, weights)
    for k, (codec, enc, dec) in enumerate(tables):
        ids, off = reqs[k]
        w = weights[k] if weights[k] is not None else np.zeros(0, dtype=np.float32)
        # The per-table kernel: bit-identical (the same loops in the same order).
        one = np.full((off.size - 1, dec.shape[1]), np.nan, dtype=np.float32)
        st = np.zeros(kc.N_STATS, dtype=np.int64)
        kr._gather_pool_encoded(ids, off, w, modes[k], pads[k], one, enc, codec, st)
        np.testing.assert_array_equal(kbags[k], one)
        np.testing.assert_array_equal(pbags[k], one)
        assert kcounts[k] == pcounts[k] == st[kc.STAT_LOOKUPS]
        assert kcounts[k] == int(np.sum(ids != pads[k]))
        # The slow reference (float64, torch's semantics).
        ref = embedding_bag_ref(dec, ids, off[:-1], MODE_NAMES[modes[k]], weights[k],
                                padding_idx=None if pads[k] < 0 else pads[k])  # fmt: skip
        np.testing.assert_allclose(kbags[k], ref, rtol=1e-5, atol=1e-4)


def test_pool_many_with_no_table_and_tables_without_bags():
    rng = np.random.default_rng(5)
    tables = _tables(rng, [(FLOAT32, 10, 8), (INT8, 10, 8)])
    reqs = [(np.zeros(0, np.int64), np.zeros(1, np.int64)),
            (np.array([3, 3], np.int64), np.array([0, 0, 2], np.int64))]  # fmt: skip
    (kb, kcnt), (pb, _) = _run_many(tables, reqs, [0, 0], [-1, -1], [None, None])
    assert kb[0].shape == (0, 8) and kcnt.tolist() == [0, 2]
    np.testing.assert_array_equal(kb[1][0], np.zeros(8, np.float32))  # an empty bag: zeros
    np.testing.assert_array_equal(kb[1], pb[1])


# ---- through the store ---------------------------------------------------------------------
ROWS = {"a": 300, "b": 50, "c": 120, "d": 80, "e": 200}
DIMS = {"a": 16, "b": 8, "c": 32, "d": 16, "e": 64}
CODECS = {"a": "float32", "b": "float16", "c": "int8", "d": "float32", "e": "float32"}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("multi") / "s"
    decoded = {}
    with bandstore.create(path, block_size=512) as s:
        for n, rows in ROWS.items():
            w = rng.standard_normal((rows, DIMS[n])).astype(np.float32)
            s.add_table(n, w, codec=CODECS[n], progress=False)
            decoded[n] = decode_rows(CODECS[n], encode_rows(CODECS[n], w), DIMS[n])
    return path, decoded


def _plan(workers: int) -> dict:
    """a, b, c, e resident (a and c on worker 0, b and e on the last), d cached."""
    last = workers - 1
    return {"workers": workers, "tables": {
        "a": {"strategy": "resident", "worker": 0}, "b": {"strategy": "resident", "worker": last},
        "c": {"strategy": "resident", "worker": 0}, "d": {"strategy": "cached",
                                                          "cache_bytes": 1 << 14},
        "e": {"strategy": "resident", "worker": last}}}  # fmt: skip


def _req(rng, n_bags=10):
    req = {}
    for n, rows in ROWS.items():
        sizes = rng.integers(0, 6, n_bags)
        ids = rng.integers(0, rows, int(sizes.sum())).astype(np.int64)
        req[n] = (ids, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
    return req


@pytest.mark.parametrize("workers", [1, 2])
def test_lookup_many_over_grouped_tables_equals_per_table_calls(store_path, workers):
    path, decoded = store_path
    rng = np.random.default_rng(workers)
    with bandstore.open(path, plan=_plan(workers)) as s:
        for call in range(4):
            req = _req(rng)
            mode = ("sum", "mean", "max", {"a": "max", "c": "mean"})[call]
            out = s.lookup_many(req, mode=mode)
            for n, (ids, off) in req.items():
                m = mode if isinstance(mode, str) else mode.get(n, "sum")
                one = s.embedding_bag(n, ids, off, mode=m)  # the per-table path
                if n != "d":  # (cached d adds its misses after its hits: not bit-identical)
                    np.testing.assert_array_equal(out[n], one)
                ref = embedding_bag_ref(decoded[n], ids, off, m)
                np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-4)
        # The resident tables were served by groups (a and c on worker 0, b and e on the last).
        groups = {frozenset(g) for g in s._executor._groups}
        if workers == 1:
            assert frozenset("abce") in groups
        else:
            assert frozenset("ac") in groups and frozenset("be") in groups
        # Requests with options (weights, padding) join the group too.
        req = _req(rng)
        full = {n: {"indices": i, "offsets": o, "padding_idx": 1,
                    "per_sample_weights": rng.standard_normal(i.size).astype(np.float32)}
                for n, (i, o) in req.items()}  # fmt: skip
        out = s.lookup_many(full)
        for n, r in full.items():
            ref = embedding_bag_ref(decoded[n], r["indices"], r["offsets"], "sum",
                                    r["per_sample_weights"], padding_idx=1)  # fmt: skip
            np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-4)


def test_counters_are_exact_and_a_failing_call_changes_none(store_path):
    path, _ = store_path
    rng = np.random.default_rng(9)
    with bandstore.open(path, plan=_plan(2)) as s:
        s.lookup_many(_req(rng))
        s.reset_stats()
        want = dict.fromkeys(ROWS, 0)
        for _ in range(5):
            req = _req(rng)
            s.lookup_many(req)
            for n, (ids, _) in req.items():
                want[n] += ids.size
        st = s.stats()
        for n in ROWS:
            assert st[n]["lookups"] == want[n]
            assert st[n]["lookups"] == st[n]["hits"] + st[n]["misses"]
            if n != "d":
                assert st[n]["hits"] == want[n]  # resident: every lookup a hit
        before = s.stats()
        bad = _req(rng)
        bad["e"] = (np.array([0, ROWS["e"]], dtype=np.int64), np.array([0], dtype=np.int64))
        with pytest.raises(bandstore.IdOutOfRangeError):
            s.lookup_many(bad)
        bad = _req(rng)
        bad["b"] = (bad["b"][0], np.array([0, 5, 2], dtype=np.int64))
        with pytest.raises(bandstore.InvalidOffsetsError):
            s.lookup_many(bad)
        assert s.stats() == before


def test_the_kernels_of_unzeroed_outputs_store_every_bag(tmp_path):
    """Resident and cached outputs are allocated without zeroing (``stores_every_bag``): their
    kernels must store every bag (hits, misses, empty bags, padding-only bags, every mode)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((500, 24)).astype(np.float32)
    with bandstore.create(tmp_path / "s", block_size=512) as s:
        s.add_table("t", w, progress=False)
    plans = {"cached": False, "resident": {"workers": 1, "tables": {"t": {"strategy": "resident"}}}}
    for name, plan in plans.items():
        with bandstore.open(tmp_path / "s", cache_bytes=200 * 120, plan=plan) as s:
            t = s._tables["t"]
            runner = t.runner
            assert (runner is None and name == "cached") or runner.stores_every_bag
            for mode, mode_id in (("sum", 0), ("mean", 1), ("max", 2)):
                for _ in range(4):
                    sizes = rng.integers(0, 6, 30)
                    ids = rng.integers(0, 500, int(sizes.sum())).astype(np.int64)
                    ids[: sizes[0]] = 7  # a bag of padding only
                    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
                    out = np.full((30, 24), np.nan, dtype=np.float32)
                    t.serve(ids, off, np.zeros(0, np.float32), mode_id, 7, out)
                    ref = embedding_bag_ref(w, ids, off[:-1], mode, padding_idx=7)
                    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
            if name == "cached":
                assert s.stats()["t"]["misses"] > 0 and s.stats()["t"]["hits"] > 0
