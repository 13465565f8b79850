"""Trace: validation, slicing, statistics, save/load (unit, reference and property tests)."""

from __future__ import annotations

import zipfile
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandstore.errors import (
    CorruptFileError,
    FormatVersionError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidOffsetsError,
    InvalidShapeError,
    TraceFormatError,
    UnknownTableError,
)
from bandstore.traces.trace import Trace, top_share


def bags_of(trace: Trace, name: str) -> list[list[int]]:
    """Naive reference: the bags of one table as Python lists."""
    idx, off = trace.table(name)
    return [idx[off[q] : off[q + 1]].tolist() for q in range(trace.n_queries)]


def from_bags(tables: dict[str, list[list[int]]], num_rows=None) -> Trace:
    out = {}
    for name, bags in tables.items():
        sizes = [len(b) for b in bags]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        ids = np.array([i for b in bags for i in b], dtype=np.int64)
        out[name] = (ids, offsets)
    return Trace(out, num_rows)


@pytest.fixture
def small() -> Trace:
    return from_bags(
        {
            "user": [[0, 1], [], [2, 2, 3], [1]],
            "item": [[5], [4, 0], [], [9, 9, 9, 1]],
        },
        num_rows={"item": 12},
    )


@st.composite
def traces(draw, max_tables: int = 3, max_queries: int = 12) -> Trace:
    n_tables = draw(st.integers(1, max_tables))
    n_queries = draw(st.integers(0, max_queries))
    tables = {}
    num_rows = {}
    for t in range(n_tables):
        rows = draw(st.integers(1, 40))
        bags = draw(
            st.lists(
                st.lists(st.integers(0, rows - 1), max_size=5),
                min_size=n_queries,
                max_size=n_queries,
            )
        )
        name = f"t{t}" if draw(st.booleans()) else f"table {t}/é"
        tables[name] = bags
        if draw(st.booleans()):
            num_rows[name] = rows
    return from_bags(tables, num_rows)


# --------------------------------------------------------------------------- construction
def test_basic_properties(small: Trace) -> None:
    assert small.table_names == ["user", "item"]
    assert small.n_queries == 4 and len(small) == 4
    assert small.num_rows == {"user": 4, "item": 12}  # default max + 1, declared kept
    assert small.n_lookups("user") == 6 and small.n_lookups("item") == 7
    assert small.n_lookups() == 13
    assert bags_of(small, "item") == [[5], [4, 0], [], [9, 9, 9, 1]]
    assert small.bag_sizes("user").tolist() == [2, 0, 3, 1]
    assert "user" in small and "nope" not in small
    assert "4 queries" in repr(small)


def test_arrays_are_int64_readonly_and_inputs_untouched() -> None:
    ids = np.array([3, 1, 2], dtype=np.int32)
    off = np.array([0, 2, 3], dtype=np.uint8)
    t = Trace({"a": (ids, off)})
    idx, offs = t.table("a")
    assert idx.dtype == np.int64 and offs.dtype == np.int64
    with pytest.raises(ValueError):
        idx[0] = 7
    ids64 = np.array([3, 1, 2], dtype=np.int64)
    Trace({"a": (ids64, np.array([0, 3]))})
    ids64[0] = 9  # the caller's array stays writable
    assert ids64.flags.writeable


def test_empty_tables_and_lists() -> None:
    t = Trace({"a": ([], [0, 0, 0]), "b": (np.array([], dtype=np.int64), [0, 0, 0])})
    assert t.n_queries == 2 and t.num_rows == {"a": 0, "b": 0}
    assert t.access_counts("a").shape == (0,)
    empty = Trace({})
    assert empty.n_queries == 0 and empty.table_names == []


def test_num_rows_declared_must_cover_ids() -> None:
    with pytest.raises(IdOutOfRangeError) as err:
        Trace({"a": ([0, 7, 3], [0, 3])}, num_rows={"a": 5})
    assert (err.value.table, err.value.position, err.value.value, err.value.rows) == ("a", 1, 7, 5)
    assert isinstance(err.value, IndexError)


def test_negative_id() -> None:
    with pytest.raises(IdOutOfRangeError) as err:
        Trace({"a": ([0, 2, -1], [0, 1, 3])})
    assert err.value.position == 2 and err.value.value == -1


def test_num_rows_for_unknown_table_or_bad_value() -> None:
    with pytest.raises(UnknownTableError):
        Trace({"a": ([0], [0, 1])}, num_rows={"b": 3})
    with pytest.raises(InvalidArgumentError):
        Trace({"a": ([0], [0, 1])}, num_rows={"a": -1})
    with pytest.raises(InvalidArgumentError):
        Trace({"a": ([0], [0, 1])}, num_rows={"a": 2.5})
    with pytest.raises(InvalidArgumentError):
        Trace({"a": ([0], [0, 1])}, num_rows={"a": "many"})
    assert Trace({"a": ([0], [0, 1])}, num_rows={"a": np.int32(4)}).num_rows == {"a": 4}


@pytest.mark.parametrize(
    "offsets, position",
    [([1, 2, 3], 0), ([0, 2, 1, 3], 2), ([0, 1, 2], 2), ([], 0)],
)
def test_bad_offsets(offsets, position) -> None:
    with pytest.raises(InvalidOffsetsError) as err:
        Trace({"a": ([0, 1, 2], offsets)})
    assert err.value.table == "a" and err.value.position == position


def test_bad_shapes_and_dtypes() -> None:
    with pytest.raises(InvalidShapeError):
        Trace({"a": (np.zeros((2, 2), dtype=np.int64), [0, 4])})
    with pytest.raises(InvalidDtypeError):
        Trace({"a": (np.array([0.0, 1.0]), [0, 2])})
    with pytest.raises(InvalidDtypeError):
        Trace({"a": (np.array([True]), [0, 1])})
    with pytest.raises(InvalidDtypeError):
        Trace({"a": ([0], np.array([0.0, 1.0]))})
    with pytest.raises(InvalidDtypeError):
        Trace({"a": (np.array([2**63], dtype=np.uint64), [0, 1])})
    with pytest.raises(InvalidArgumentError):
        Trace({"a": ([0],)})
    with pytest.raises(InvalidArgumentError):
        Trace({"": ([0], [0, 1])})


def test_tables_must_be_aligned() -> None:
    with pytest.raises(InvalidShapeError) as err:
        Trace({"a": ([0, 1], [0, 1, 2]), "b": ([0], [0, 1])})
    assert "aligned" in str(err.value)


def test_unknown_table(small: Trace) -> None:
    with pytest.raises(UnknownTableError) as err:
        small.table("nope")
    assert isinstance(err.value, KeyError) and "nope" in str(err.value)
    for call in (small.n_lookups, small.access_counts, small.bag_sizes):
        with pytest.raises(UnknownTableError):
            call("nope")


# --------------------------------------------------------------------------- slicing
def test_query_slice(small: Trace) -> None:
    s = small.query_slice(1, 3)
    assert s.n_queries == 2
    assert bags_of(s, "user") == [[], [2, 2, 3]]
    assert bags_of(s, "item") == [[4, 0], []]
    assert s.table("item")[1][0] == 0
    assert s.num_rows == small.num_rows
    assert small.query_slice(2, 2).n_queries == 0
    assert np.shares_memory(s.table("user")[0], small.table("user")[0])  # cheap: a view
    for bad in [(-1, 2), (3, 2), (0, 5), (0.5, 2)]:
        with pytest.raises(InvalidArgumentError):
            small.query_slice(*bad)


def test_split(small: Trace) -> None:
    tune, held = small.split(0.75)
    assert (tune.n_queries, held.n_queries) == (3, 1)
    assert bags_of(held, "item") == [[9, 9, 9, 1]]  # the held-out part is the later queries
    assert Trace.concat([tune, held]).equals(small)
    for bad in (0, 1, -0.5, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError):
            small.split(bad)


def test_batches(small: Trace) -> None:
    parts = list(small.batches(3))
    assert [p.n_queries for p in parts] == [3, 1]
    assert Trace.concat(parts).equals(small)
    assert [p.n_queries for p in small.batches(10)] == [4]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError):
            small.batches(bad)


def test_select(small: Trace) -> None:
    s = small.select(["item", "user"])
    assert s.table_names == ["item", "user"]
    assert bags_of(s, "item") == bags_of(small, "item")
    assert small.select("user").table_names == ["user"]
    with pytest.raises(UnknownTableError):
        small.select(["user", "nope"])
    with pytest.raises(InvalidArgumentError):
        small.select([])
    with pytest.raises(InvalidArgumentError):
        small.select(["user", "user"])


def test_take(small: Trace) -> None:
    t = small.take([3, 0, 3])
    assert bags_of(t, "user") == [[1], [0, 1], [1]]
    assert bags_of(t, "item") == [[9, 9, 9, 1], [5], [9, 9, 9, 1]]
    m = small.take(np.array([True, False, False, True]))
    assert bags_of(m, "user") == [[0, 1], [1]]
    assert small.take([]).n_queries == 0
    with pytest.raises(InvalidArgumentError):
        small.take([4])
    with pytest.raises(InvalidShapeError):
        small.take(np.array([True, False]))


def test_concat_checks_tables(small: Trace) -> None:
    other = from_bags({"user": [[0]]})
    with pytest.raises(InvalidArgumentError):
        Trace.concat([small, other])
    with pytest.raises(InvalidArgumentError):
        Trace.concat([])
    reordered = small.select(["item", "user"])
    both = Trace.concat([small, reordered])
    assert both.table_names == ["user", "item"] and both.n_queries == 8
    bigger = from_bags({"user": [[0]], "item": [[30]]})
    assert Trace.concat([small, bigger]).num_rows == {"user": 4, "item": 31}


# --------------------------------------------------------------------------- statistics
def test_access_counts_match_naive(small: Trace) -> None:
    counts = small.access_counts("item")
    assert counts.dtype == np.int64 and counts.shape == (12,)
    naive = Counter(i for bag in bags_of(small, "item") for i in bag)
    assert counts.tolist() == [naive.get(i, 0) for i in range(12)]


def test_summary(small: Trace) -> None:
    s = small.summary()
    assert s["n_queries"] == 4 and s["n_lookups"] == 13
    item = s["tables"]["item"]
    assert item["rows"] == 12 and item["lookups"] == 7 and item["distinct_rows"] == 5
    assert item["queries"] == 3 and item["max_pooling"] == 4
    assert item["mean_pooling"] == pytest.approx(7 / 3)
    assert item["top1pct_share"] == pytest.approx(3 / 7)  # row 9: 3 of 7 lookups
    user = s["tables"]["user"]
    assert user["top1pct_share"] == pytest.approx(2 / 6)  # row 1 or 2, read twice each
    assert 0 < s["top1pct_share"] <= 1


def test_top_share() -> None:
    counts = np.array([0] * 50 + [1] * 199 + [101])
    assert top_share(counts) == pytest.approx(102 / 300)  # 1% of 200 read rows: 101 and 1
    assert top_share(np.zeros(5, dtype=np.int64)) == 0.0
    assert top_share(np.array([4, 4, 4, 4])) == pytest.approx(0.25)


def test_equals(small: Trace) -> None:
    same = from_bags(
        {"user": [[0, 1], [], [2, 2, 3], [1]], "item": [[5], [4, 0], [], [9, 9, 9, 1]]},
        num_rows={"item": 12},
    )
    assert small.equals(same) and same.equals(small)
    assert not small.equals("trace")
    assert not small.equals(small.select(["item", "user"]))
    assert not small.equals(
        from_bags({"user": bags_of(small, "user"), "item": bags_of(small, "item")})
    )
    changed = from_bags(
        {"user": [[0, 1], [], [2, 3, 2], [1]], "item": [[5], [4, 0], [], [9, 9, 9, 1]]},
        num_rows={"item": 12},
    )
    assert not small.equals(changed)


# --------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path, small: Trace) -> None:
    path = tmp_path / "t.trace"  # no .npz suffix: the name is used as given
    small.save(path)
    assert path.exists() and not (tmp_path / "t.trace.npz").exists()
    back = Trace.load(path)
    assert back.equals(small)
    assert back.num_rows == {"user": 4, "item": 12}
    small.save(tmp_path / "c.npz", compress=True)
    assert Trace.load(tmp_path / "c.npz").equals(small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "t.trace"]  # no temp left


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        Trace.load(tmp_path / "absent.npz")


def test_load_garbage_and_truncated(tmp_path, small: Trace) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(CorruptFileError) as err:
        Trace.load(junk)
    assert err.value.path == str(junk)
    good = tmp_path / "good.npz"
    small.save(good)
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises((CorruptFileError, TraceFormatError)) as err:
            Trace.load(bad)
        assert str(bad) in str(err.value)


def test_load_flipped_byte_in_array(tmp_path) -> None:
    t = from_bags({"a": [[1, 2, 3]] * 50})
    path = tmp_path / "t.npz"
    t.save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("indices_0.npy")
    start = info.header_offset + 30 + len(info.filename) + 200  # inside the array's data
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):  # the zip CRC catches it
        Trace.load(path)


def _write_npz(path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _meta(obj) -> np.ndarray:
    import json

    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def test_load_invalid_contents(tmp_path) -> None:
    header = {"magic": "bandstore-trace", "version": 1, "n_queries": 1}
    base = {
        "header": _meta(header),
        "table_names": _meta(["a"]),
        "num_rows": np.array([3], dtype=np.int64),
        "indices_0": np.array([0, 2], dtype=np.int64),
        "offsets_0": np.array([0, 2], dtype=np.int64),
    }
    _write_npz(tmp_path / "ok.npz", **base)
    assert Trace.load(tmp_path / "ok.npz").n_queries == 1
    cases = {
        "missing": {k: v for k, v in base.items() if k != "offsets_0"},
        "no_header": {k: v for k, v in base.items() if k != "header"},
        "bad_json": {**base, "table_names": np.frombuffer(b"[oops", dtype=np.uint8)},
        "magic": {**base, "header": _meta({**header, "magic": "x"})},
        "float_ids": {**base, "indices_0": np.array([0.0, 2.0])},
        "offsets": {**base, "offsets_0": np.array([0, 3], dtype=np.int64)},
        "range": {**base, "num_rows": np.array([2], dtype=np.int64)},
        "count": {**base, "header": _meta({**header, "n_queries": 5})},
        "extra": {**base, "indices_1": np.array([0], dtype=np.int64)},
        "names": {**base, "table_names": _meta([1])},
    }
    for label, arrays in cases.items():
        path = tmp_path / f"{label}.npz"
        _write_npz(path, **arrays)
        with pytest.raises(TraceFormatError) as err:
            Trace.load(path)
        assert err.value.path == str(path), label
    _write_npz(tmp_path / "v.npz", **{**base, "header": _meta({**header, "version": 99})})
    with pytest.raises(FormatVersionError) as err:
        Trace.load(tmp_path / "v.npz")
    assert err.value.found == 99


def test_load_refuses_pickles(tmp_path) -> None:
    path = tmp_path / "p.npz"
    with open(path, "wb") as f:
        np.savez(f, header=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(CorruptFileError):
        Trace.load(path)
    single = tmp_path / "single.npy"
    np.save(single, np.arange(3))
    with pytest.raises(TraceFormatError):
        Trace.load(single)


# --------------------------------------------------------------------------- properties
@given(traces())
def test_property_save_load(tmp_path_factory, trace: Trace) -> None:
    path = tmp_path_factory.mktemp("rt") / "t.npz"
    trace.save(path)
    back = Trace.load(path)
    assert back.equals(trace)
    assert back.table_names == trace.table_names


@given(traces(), st.floats(0.01, 0.99))
def test_property_split_concat(trace: Trace, fraction: float) -> None:
    tune, held = trace.split(fraction)
    assert tune.n_queries + held.n_queries == trace.n_queries
    assert Trace.concat([tune, held]).equals(trace)
    for name in trace.table_names:
        assert tune.n_lookups(name) + held.n_lookups(name) == trace.n_lookups(name)
        assert np.array_equal(
            tune.access_counts(name) + held.access_counts(name), trace.access_counts(name)
        )


@given(traces(), st.integers(1, 5))
def test_property_batches_and_take(trace: Trace, size: int) -> None:
    parts = list(trace.batches(size))
    assert all(p.n_queries == size for p in parts[:-1])
    if trace.n_queries:
        assert Trace.concat(parts).equals(trace)
    else:
        assert parts == []
    everything = trace.take(np.arange(trace.n_queries))
    assert everything.equals(trace)
    reversed_ = trace.take(np.arange(trace.n_queries)[::-1])
    for name in trace.table_names:
        assert bags_of(reversed_, name) == bags_of(trace, name)[::-1]


@given(traces(), st.data())
def test_property_query_slice_matches_naive(trace: Trace, data) -> None:
    start = data.draw(st.integers(0, trace.n_queries))
    stop = data.draw(st.integers(start, trace.n_queries))
    s = trace.query_slice(start, stop)
    for name in trace.table_names:
        assert bags_of(s, name) == bags_of(trace, name)[start:stop]
        _, off = s.table(name)
        assert off[0] == 0 and off.size == stop - start + 1


def test_large_trace_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    n = 1_000_000
    sizes = rng.integers(0, 20, size=n)
    off = np.concatenate([[0], np.cumsum(sizes)])
    ids = rng.integers(0, 1 << 20, size=int(off[-1]))
    t0 = time.perf_counter()
    trace = Trace({"a": (ids, off)})
    tune, held = trace.split(0.8)
    assert Trace.concat([tune, held]).n_lookups() == ids.size
    trace.summary()
    assert time.perf_counter() - t0 < 10  # ~0.5 s: numpy throughout, nothing per lookup
