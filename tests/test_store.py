"""The store: format, lookups against references, counters against the policy model, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import ReferenceCache, embedding_bag_ref

import bandstore
from bandstore.options import CacheOptions, ServeOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.storage.codecs import decode_rows, encode_rows

DIM = 8
ROWS = 500


@pytest.fixture
def weights(rng):
    return rng.standard_normal((ROWS, DIM)).astype(np.float32)


@pytest.fixture
def store_path(tmp_path, weights):
    path = tmp_path / "store"
    with bandstore.create(path, block_size=512) as s:
        s.add_table("t", weights)
    return path


def cache_bytes_for(rows: int, dim: int = DIM) -> int:
    return rows * cache_row_bytes(dim)


# ---- format and lifecycle -------------------------------------------------------------------
def test_tables_info_and_geometry(store_path):
    with bandstore.open(store_path) as s:
        info = s.tables["t"]
        assert (info.rows, info.dim, info.codec) == (ROWS, DIM, "float32")
        assert info.rows_per_block == 512 // (4 * DIM)
        assert info.blocks == -(-ROWS // info.rows_per_block)
        assert s.block_size == 512


def test_block_file_is_aligned_and_rows_never_straddle(store_path):
    with bandstore.open(store_path) as s:
        t = s._tables["t"]
        size = t.block_path.stat().st_size
        assert size % 512 == 0
        assert size == (t.info.blocks + 1) * 512
        assert t.info.rows_per_block * t.info.row_bytes <= 512


def test_lookup_is_bit_exact_for_float32(store_path, weights, rng):
    ids = rng.integers(0, ROWS, 300)
    with bandstore.open(store_path, cache_bytes=cache_bytes_for(50)) as s:
        for _ in range(3):  # cold, then partly cached
            assert np.array_equal(s.lookup("t", ids), weights[ids])


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_codecs_round_trip_through_the_store(tmp_path, weights, codec, rng):
    with bandstore.create(tmp_path / "s") as s:
        s.add_table("t", weights, codec=codec)
        ids = rng.integers(0, ROWS, 100)
        expected = decode_rows(codec, encode_rows(codec, weights[ids]), DIM)
        assert np.array_equal(s.lookup("t", ids), expected)


def test_import_from_npy_path_in_chunks(tmp_path, rng, monkeypatch):
    import bandstore.serve.store as store_mod

    monkeypatch.setattr(store_mod, "IMPORT_CHUNK_ROWS", 7)  # many chunks
    data = rng.standard_normal((100, 4)).astype(np.float64)
    np.save(tmp_path / "w.npy", data)
    with bandstore.create(tmp_path / "s") as s:
        s.add_table("w", tmp_path / "w.npy")
        assert np.array_equal(s.lookup("w", np.arange(100)), data.astype(np.float32))


def test_reopen_sees_tables_and_persists(store_path, weights):
    with bandstore.create(store_path, exist_ok=True, block_size=512) as s:
        s.add_table("u", weights[:10] * 2)
    with bandstore.open(store_path) as s:
        assert set(s.tables) == {"t", "u"}
        assert np.array_equal(s.lookup("u", [3]), weights[[3]] * 2)
        assert np.array_equal(s.lookup("t", [3]), weights[[3]])


def test_conflicting_format_argument_is_an_error(store_path):
    with pytest.raises(bandstore.FormatMismatchError) as exc:
        bandstore.open(store_path, options=bandstore.ServeOptions(block_size=4096))
    assert exc.value.stored == 512 and exc.value.requested == 4096
    with pytest.raises(bandstore.FormatMismatchError):
        bandstore.create(store_path, exist_ok=True, block_size=4096)
    with pytest.raises(bandstore.StoreExistsError):
        bandstore.create(store_path, block_size=512)


def test_not_a_store(tmp_path):
    with pytest.raises(bandstore.NotAStoreError):
        bandstore.open(tmp_path)
    with pytest.raises(FileNotFoundError):
        bandstore.open(tmp_path / "missing")


def test_other_format_version_is_refused(store_path):
    import json

    import lmdb

    env = lmdb.open(str(store_path / "catalog"), subdir=True)
    with env.begin(write=True) as txn:
        fmt = json.loads(txn.get(b"format"))
        fmt["format_version"] = 999
        txn.put(b"format", json.dumps(fmt).encode())
    env.close()
    with pytest.raises(bandstore.FormatVersionError) as exc:
        bandstore.open(store_path)
    assert exc.value.found == 999


def test_bad_block_size():
    with pytest.raises(bandstore.InvalidArgumentError):
        bandstore.create("/nonexistent/x", block_size=1000)


# ---- embedding_bag against the reference and torch --------------------------------------------
bags = st.lists(st.lists(st.integers(0, ROWS - 1), max_size=6), min_size=0, max_size=12)


@given(
    bags=bags,
    mode=st.sampled_from(["sum", "mean", "max"]),
    weighted=st.booleans(),
    include_last=st.booleans(),
    pad=st.one_of(st.none(), st.integers(-ROWS, ROWS - 1)),
    cache_rows=st.sampled_from([0, 3, 40, ROWS]),
    idx32=st.booleans(),
)
def test_embedding_bag_matches_reference(
    store_path, weights, bags, mode, weighted, include_last, pad, cache_rows, idx32
):
    indices = np.array([i for b in bags for i in b], dtype=np.int32 if idx32 else np.int64)
    offsets = np.cumsum([0] + [len(b) for b in bags])
    if not include_last:
        offsets = offsets[:-1]
    w = None
    if weighted and mode == "sum":
        w = np.linspace(-1.0, 2.0, len(indices)).astype(np.float32)
    with bandstore.open(store_path, cache_bytes=cache_bytes_for(cache_rows)) as s:
        for _ in range(2):
            got = s.embedding_bag(
                "t",
                indices,
                offsets,
                mode=mode,
                per_sample_weights=w,
                include_last_offset=include_last,
                padding_idx=pad,
            )
            ref = embedding_bag_ref(weights, indices, offsets, mode, w, include_last, pad)
            assert got.dtype == np.float32 and got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_embedding_bag_2d_input(store_path, weights, rng):
    idx = rng.integers(0, ROWS, (5, 3))
    with bandstore.open(store_path) as s:
        got = s.embedding_bag("t", idx, mode="mean")
    np.testing.assert_allclose(got, weights[idx].mean(axis=1), rtol=1e-6)


def test_embedding_bag_matches_torch(store_path, weights, rng):
    torch = pytest.importorskip("torch")
    n_bags = 40
    sizes = rng.integers(0, 8, n_bags)
    indices = rng.integers(0, ROWS, sizes.sum())
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    psw = rng.random(len(indices)).astype(np.float32)
    W = torch.from_numpy(weights)
    with bandstore.open(store_path, cache_bytes=cache_bytes_for(30)) as s:
        for mode in ("sum", "mean", "max"):
            for padding_idx in (None, int(indices[0]) if len(indices) else None):
                for w in (None, psw) if mode == "sum" else (None,):
                    expected = torch.nn.functional.embedding_bag(
                        torch.from_numpy(indices),
                        W,
                        torch.from_numpy(offsets),
                        mode=mode,
                        per_sample_weights=None if w is None else torch.from_numpy(w),
                        padding_idx=padding_idx,
                    ).numpy()
                    got = s.embedding_bag(
                        "t",
                        indices,
                        offsets,
                        mode=mode,
                        per_sample_weights=w,
                        padding_idx=padding_idx,
                    )
                    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_lookup_many_equals_single_calls(store_path, weights, rng):
    with bandstore.create(store_path, exist_ok=True, block_size=512) as s:
        s.add_table("u", weights[:50] + 1)
    with bandstore.open(store_path) as s:
        ia, ib = rng.integers(0, ROWS, 30), rng.integers(0, 50, 12)
        oa, ob = np.array([0, 10, 10, 25]), np.array([0, 4])
        wb = rng.random(12).astype(np.float32)
        got = s.lookup_many({"t": (ia, oa), "u": (ib, ob, wb)}, mode="sum")
        np.testing.assert_allclose(
            got["t"], embedding_bag_ref(weights, ia, oa), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            got["u"], embedding_bag_ref(weights[:50] + 1, ib, ob, "sum", wb), rtol=1e-5, atol=1e-6
        )


# ---- counters against the independent policy model ---------------------------------------------
@given(
    batches=st.lists(st.lists(st.integers(0, ROWS - 1), max_size=20), min_size=1, max_size=15),
    capacity=st.integers(0, 60),
    threshold=st.sampled_from([0, 1, 3, bandstore.NEVER]),
    pinned_share=st.sampled_from([0.0, 0.25, 1.0]),
    seed=st.integers(0, 3),
)
def test_counters_match_reference_policy(
    store_path, batches, capacity, threshold, pinned_share, seed
):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, ROWS)
    with bandstore.open(store_path, writable=True) as s:
        s.set_tuning(
            {
                "t": {
                    "cache_bytes": cache_bytes_for(capacity),
                    "threshold": threshold,
                    "pinned_share": pinned_share,
                }
            },
            counts={"t": counts},
        )
        info = s.tables["t"]
        layout = np.asarray(s._tables["t"].layout)
        cap = s.cache_info()["t"]["capacity_rows"]
        assert cap == capacity
        pinned = np.argsort(-counts, kind="stable")[
            : min(int(pinned_share * cap), np.count_nonzero(counts))
        ]
        ref = ReferenceCache(layout, info.rows_per_block, cap, counts, threshold, pinned)
        for b in batches:
            s.lookup("t", np.array(b, dtype=np.int64))
            ref.batch(b)
        st_ = s.stats()["t"]
        assert st_["lookups"] == ref.stats["lookups"] == st_["hits"] + st_["misses"]
        assert st_["hits"] == ref.stats["hits"]
        assert st_["blocks_read"] == ref.stats["blocks_read"]
        assert st_["bytes_read"] == 512 * ref.stats["blocks_read"]
        assert st_["useful_bytes"] == ref.stats["useful_rows"] * info.row_bytes
        assert s.cache_info()["t"]["cached_rows"] == len(ref.slots)


def test_stats_total_and_reset(store_path):
    with bandstore.create(store_path, exist_ok=True, block_size=512) as s:
        s.add_table("u", np.ones((20, DIM), np.float32))
    with bandstore.open(store_path) as s:
        s.lookup("t", [1, 2, 3])
        s.embedding_bag("u", [1, 1], [0])
        st_ = s.stats()
        assert st_["total"]["lookups"] == 5 == st_["t"]["lookups"] + st_["u"]["lookups"]
        assert st_["total"]["blocks_read"] == st_["t"]["blocks_read"] + st_["u"]["blocks_read"]
        s.reset_stats()
        assert all(v == 0 for k, v in s.stats()["total"].items())


def test_neighbour_admission_saves_block_reads(store_path):
    counts = np.ones(ROWS, dtype=np.int64)
    rpb = 512 // (4 * DIM)
    with bandstore.open(store_path, writable=True, cache_bytes=cache_bytes_for(ROWS)) as s:
        s.lookup("t", np.arange(0, ROWS, rpb))  # one row per block, no admission
        s.lookup("t", np.arange(ROWS))
        without = s.stats()["t"]["blocks_read"]
        s.set_tuning(
            {"t": {"cache_bytes": cache_bytes_for(ROWS), "threshold": 1}}, counts={"t": counts}
        )
        s.reset_stats()
        s.lookup("t", np.arange(0, ROWS, rpb))
        s.lookup("t", np.arange(ROWS))
        with_admission = s.stats()["t"]["blocks_read"]
    assert with_admission == -(-ROWS // rpb)
    assert without == 2 * with_admission


# ---- threads ----------------------------------------------------------------------------------
def test_threads_always_get_correct_rows(store_path, weights):
    errors = []
    with bandstore.open(store_path, cache_bytes=cache_bytes_for(40)) as s:

        def worker(seed):
            r = np.random.default_rng(seed)
            try:
                for _ in range(200):
                    ids = r.integers(0, ROWS, r.integers(1, 30))
                    if not np.array_equal(s.lookup("t", ids), weights[ids]):
                        errors.append("wrong rows")
                    off = np.array([0, len(ids) // 2])
                    got = s.embedding_bag("t", ids, off, mode="sum")
                    if not np.allclose(got, embedding_bag_ref(weights, ids, off), atol=1e-5):
                        errors.append("wrong bag")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st_ = s.stats()["t"]
        assert st_["lookups"] == st_["hits"] + st_["misses"]
    assert errors == []


# ---- bad input --------------------------------------------------------------------------------
def test_bad_ids_and_offsets_raise_and_store_keeps_serving(store_path, weights):
    with bandstore.open(store_path) as s:
        with pytest.raises(bandstore.IdOutOfRangeError) as exc:
            s.lookup("t", [1, ROWS])
        assert (exc.value.position, exc.value.value, exc.value.rows) == (1, ROWS, ROWS)
        assert isinstance(exc.value, IndexError)
        with pytest.raises(bandstore.IdOutOfRangeError):
            s.lookup("t", [-1])
        with pytest.raises(bandstore.InvalidDtypeError):
            s.lookup("t", [1.0, 2.0])
        with pytest.raises(TypeError):
            s.lookup("t", np.array([1.5]))
        with pytest.raises(bandstore.InvalidShapeError):
            s.lookup("t", np.zeros((2, 2), dtype=np.int64))
        with pytest.raises(bandstore.InvalidOffsetsError, match="start at 0"):
            s.embedding_bag("t", [1, 2], [1])
        with pytest.raises(bandstore.InvalidOffsetsError, match="decrease"):
            s.embedding_bag("t", [1, 2, 3], [0, 2, 1])
        with pytest.raises(bandstore.InvalidOffsetsError, match="past the end"):
            s.embedding_bag("t", [1, 2], [0, 5])
        with pytest.raises(bandstore.InvalidShapeError):
            s.embedding_bag("t", [1, 2], [0], per_sample_weights=np.ones(3, np.float32))
        with pytest.raises(bandstore.InvalidArgumentError, match="only supported"):
            s.embedding_bag("t", [1, 2], [0], mode="max", per_sample_weights=np.ones(2))
        with pytest.raises(bandstore.InvalidArgumentError):
            s.embedding_bag("t", [1, 2], [0], mode="median")
        with pytest.raises(bandstore.UnknownTableError) as exc:
            s.lookup("nope", [1])
        assert isinstance(exc.value, KeyError) and exc.value.known == ["t"]
        with pytest.raises(bandstore.UnknownTableError):
            s.lookup_many({"t": ([1], [0]), "nope": ([1], [0])})
        assert s.stats()["t"]["lookups"] == 0  # nothing was served by the failed calls
        assert np.array_equal(s.lookup("t", [4, 5]), weights[[4, 5]])


def test_bad_imports(tmp_path, weights):
    with bandstore.create(tmp_path / "s") as s:
        with pytest.raises(bandstore.InvalidDtypeError):
            s.add_table("a", np.ones((3, 3), dtype=np.int64))
        with pytest.raises(bandstore.InvalidShapeError):
            s.add_table("a", np.ones(3, dtype=np.float32))
        with pytest.raises(bandstore.InvalidArgumentError):
            s.add_table("a", weights, codec="bfloat7")
        with pytest.raises(bandstore.InvalidArgumentError):
            s.add_table("../escape", weights)
        with pytest.raises(bandstore.InvalidArgumentError):
            s.add_table("wide", np.ones((2, 2000), np.float32))  # a row larger than a block
        with pytest.raises(bandstore.InvalidArgumentError):
            s.add_table("nan", np.full((2, 2), np.nan, np.float32))
        (tmp_path / "bad.npy").write_bytes(b"not an npy file")
        with pytest.raises(bandstore.InvalidArgumentError):
            s.add_table("b", tmp_path / "bad.npy")
        s.add_table("ok", weights)
        with pytest.raises(bandstore.TableExistsError):
            s.add_table("ok", weights)
        assert set(s.tables) == {"ok"}
    with bandstore.open(tmp_path / "s") as s:
        assert set(s.tables) == {"ok"}
        with pytest.raises(bandstore.ReadOnlyError):
            s.add_table("x", weights)


def test_corrupt_block_is_detected_named_and_not_cached(store_path, weights):
    with bandstore.open(store_path) as s:
        t = s._tables["t"]
        path, rpb = t.block_path, t.info.rows_per_block
    raw = bytearray(path.read_bytes())
    raw[512 * 3 + 5] ^= 0xFF  # data block 2 (block 0 of the file is the header)
    path.write_bytes(bytes(raw))
    with bandstore.open(store_path) as s:
        assert s.verify() == [{"table": "t", "block": 2, "path": str(path)}]
        bad_id = 2 * rpb
        with pytest.raises(bandstore.CorruptBlockError) as exc:
            s.lookup("t", [0, bad_id])
        assert (exc.value.table, exc.value.block) == ("t", 2)
        assert isinstance(exc.value, OSError)
        assert s.stats()["t"]["lookups"] == 0
        assert np.array_equal(s.lookup("t", [0, 1, 5 * rpb]), weights[[0, 1, 5 * rpb]])


def test_closed_store(store_path):
    s = bandstore.open(store_path)
    s.close()
    s.close()
    with pytest.raises(bandstore.StoreClosedError):
        s.lookup("t", [1])


def test_recording_sampled_queries(store_path, tmp_path, rng):
    from bandstore.traces.recorder import read_recorded

    with bandstore.create(store_path, exist_ok=True, block_size=512) as s:
        s.add_table("u", np.ones((10, DIM), np.float32))
    rec = tmp_path / "rec"
    with bandstore.open(store_path, record=rec, sample_rate=1.0) as s:
        bags = [rng.integers(0, ROWS, k) for k in (3, 0, 5)]
        idx = np.concatenate(bags)
        s.embedding_bag("t", idx, [0, 3, 3])
        s.lookup("t", [7, 8])
        s.lookup_many({"t": ([1, 2], [0, 1]), "u": ([4], [0, 1])})
        with pytest.raises(bandstore.InvalidShapeError):  # one bag per query and table
            s.lookup_many({"t": ([1, 2], [0, 1]), "u": ([4], [0])})
        assert s.stats()["t"]["lookups"] == 12  # the refused request served nothing
    trace = read_recorded(rec)
    indices, offsets = trace.table("t")
    assert trace.n_queries == 7  # three bags, two single-row lookups, two aligned bags
    assert np.array_equal(indices, np.concatenate([idx, [7, 8, 1, 2]]))
    assert np.array_equal(offsets, [0, 3, 3, 8, 9, 10, 11, 12])
    u_idx, u_off = trace.table("u")
    assert np.array_equal(u_idx, [4]) and np.array_equal(u_off, [0, 0, 0, 0, 0, 0, 1, 1])


@given(
    keys=st.lists(st.integers(0, 2**40), unique=True, max_size=3000),
)
def test_miss_key_sort_is_a_sort(keys):
    """The kernels' radix sort of miss keys (distinct, non-negative) against numpy's."""
    from bandstore.kernels.cache import _sort_keys

    a = np.array(keys, dtype=np.int64)
    assert np.array_equal(_sort_keys(a), np.sort(a))
    many = np.random.default_rng(len(keys)).permutation(5000).astype(np.int64) * 7919
    assert np.array_equal(_sort_keys(many), np.sort(many))


# ---- per-table modes in lookup_many ---------------------------------------------------------
def test_lookup_many_mode_per_table_and_request_mappings(tmp_path, rng):
    from helpers import make_store, random_tables

    tables = random_tables({"a": 300, "b": 200, "c": 100}, DIM, seed=4)
    with bandstore.open(make_store(tmp_path / "s", tables)) as s:
        ids = {n: rng.integers(0, w.shape[0], 40) for n, w in tables.items()}
        off = np.array([0, 5, 5, 17, 30])
        psw = rng.random(40).astype(np.float32)
        out = s.lookup_many(
            {
                "a": (ids["a"], off),  # mode from the mapping
                "b": {"indices": ids["b"], "offsets": off, "padding_idx": int(ids["b"][0])},
                "c": {"indices": ids["c"], "offsets": off, "per_sample_weights": psw,
                      "mode": "sum"},  # its own mode wins over the mapping's
            },
            mode={"a": "max", "c": "mean"},
        )  # fmt: skip
        np.testing.assert_allclose(out["a"], embedding_bag_ref(tables["a"], ids["a"], off, "max"))
        ref_b = embedding_bag_ref(tables["b"], ids["b"], off, "sum", padding_idx=int(ids["b"][0]))
        np.testing.assert_allclose(out["b"], ref_b, rtol=1e-5, atol=1e-5)
        ref_c = embedding_bag_ref(tables["c"], ids["c"], off, "sum", psw)
        np.testing.assert_allclose(out["c"], ref_c, rtol=1e-5, atol=1e-5)
        # The old form still pools every table with one mode.
        same = s.lookup_many({n: (ids[n], off) for n in tables}, mode="mean")
        for n in tables:
            ref = embedding_bag_ref(tables[n], ids[n], off, "mean")
            np.testing.assert_allclose(same[n], ref, rtol=1e-5, atol=1e-5)
        before = s.stats()["total"]["lookups"]
        with pytest.raises(bandstore.UnknownTableError):
            s.lookup_many({"a": (ids["a"], off)}, mode={"z": "max"})
        with pytest.raises(bandstore.InvalidArgumentError, match="unknown keys"):
            s.lookup_many({"a": {"indices": ids["a"], "offset": off}})
        with pytest.raises(bandstore.InvalidArgumentError, match="mode"):
            s.lookup_many({"a": (ids["a"], off), "b": {"indices": ids["b"], "offsets": off,
                                                       "mode": "median"}})  # fmt: skip
        assert s.stats()["total"]["lookups"] == before  # a bad call served nothing


# ---- pickling: a store travels as its path and open options ---------------------------------
def test_store_pickles_by_path_and_options(store_path, weights):
    import copy
    import pickle

    opts = ServeOptions(cache=CacheOptions(cache_bytes_for(40), threshold=3))
    with bandstore.open(store_path, options=opts) as s:
        data = pickle.dumps(s)
        assert len(data) < 2000 and weights.tobytes()[:64] not in data  # never the rows
        for other in (pickle.loads(data), copy.deepcopy(s), copy.copy(s)):
            with other:
                assert other is not s and not other.writable
                np.testing.assert_array_equal(other.lookup("t", [3, 499, 3]), weights[[3, 499, 3]])
                assert other.cache_info()["t"]["cache_bytes"] == cache_bytes_for(40)
                assert other.cache_info()["t"]["threshold"] == s.cache_info()["t"]["threshold"]
    with pytest.raises(bandstore.StorePickleError, match="closed"):
        pickle.dumps(s)
    with bandstore.open(store_path, writable=True) as w:
        with pytest.raises(bandstore.StorePickleError, match="writable"):
            pickle.dumps(w)
        with pytest.raises(TypeError):  # as pickle's own refusals are
            copy.deepcopy(w)


def test_store_in_a_spawned_worker(store_path, weights):
    import multiprocessing

    from helpers import lookup_in_worker

    ids = np.array([0, 17, 499, 17])
    with bandstore.open(store_path) as s:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            got = pool.apply(lookup_in_worker, (s, "t", ids))
            pool.close()
            pool.join()
    np.testing.assert_array_equal(got, weights[ids])


@pytest.mark.parametrize("cache_rows", [0, 40])
def test_ids_outside_every_bag_are_never_read(store_path, weights, cache_rows):
    """No bag (empty offsets) or a last offset short of the end (include_last_offset): the ids
    past it belong to no bag. They were once handed to the kernels, which wrote out of bounds."""
    with bandstore.open(store_path, cache_bytes=cache_bytes_for(cache_rows)) as s:
        out = s.embedding_bag("t", np.array([7, 8]), np.array([], dtype=np.int64))
        assert out.shape == (0, weights.shape[1]) and s.stats()["t"]["lookups"] == 0
        got = s.embedding_bag(
            "t", np.array([1, 2, 3, 4]), np.array([0, 2]), include_last_offset=True
        )
        np.testing.assert_allclose(got, weights[[1, 2]].sum(0, keepdims=True), rtol=1e-6)
        many = s.lookup_many({"t": (np.array([5, 6]), np.array([], dtype=np.int64))})
        assert many["t"].shape == (0, weights.shape[1])
