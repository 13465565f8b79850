"""Random bad arguments: every call either works or raises a BandstoreError, and the store
keeps serving correct rows afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import embedding_bag_ref

import bandstore

ROWS, DIM = 64, 4

scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)
arrays = st.one_of(
    st.lists(scalars, max_size=6),
    st.lists(st.integers(-5, ROWS + 5), max_size=8).map(np.array),
    st.lists(st.integers(-5, ROWS + 5), max_size=8).map(lambda x: np.array(x, dtype=np.int32)),
    st.lists(st.floats(-5, 70), max_size=8).map(np.array),
    st.lists(st.lists(st.integers(0, ROWS - 1), min_size=2, max_size=2), max_size=3).map(np.array),
    st.lists(st.integers(0, 2), max_size=3).map(lambda x: np.array(x, dtype=np.uint8)),
    scalars,
)
tables = st.sampled_from(["t", "nope", "", "T"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "s"
    w = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    with bandstore.create(path, block_size=512) as s:
        s.add_table("t", w)
    store = bandstore.open(path, cache_bytes=2000)
    yield store, w
    store.close()


def check_still_serves(store, w):
    ids = np.array([0, 5, ROWS - 1, 5])
    assert np.array_equal(store.lookup("t", ids), w[ids])
    st_ = store.stats()["t"]
    assert st_["lookups"] == st_["hits"] + st_["misses"]


@given(table=tables, ids=arrays)
def test_lookup_garbage(served, table, ids):
    store, w = served
    try:
        out = store.lookup(table, ids)
    except bandstore.BandstoreError:
        pass
    else:
        assert np.array_equal(out, w[np.asarray(ids, dtype=np.int64)])
    check_still_serves(store, w)


@given(
    table=tables,
    indices=arrays,
    offsets=st.one_of(arrays, st.none()),
    mode=st.sampled_from(["sum", "mean", "max", "avg", ""]),
    weights=st.one_of(st.none(), arrays),
    include_last=st.booleans(),
    padding=st.one_of(st.none(), st.integers(-2 * ROWS, 2 * ROWS)),
)
def test_embedding_bag_garbage(
    served, table, indices, offsets, mode, weights, include_last, padding
):
    store, w = served
    try:
        store.embedding_bag(
            table,
            indices,
            offsets,
            mode=mode,
            per_sample_weights=weights,
            include_last_offset=include_last,
            padding_idx=padding,
        )
    except bandstore.BandstoreError:
        pass
    check_still_serves(store, w)


@given(
    requests=st.one_of(
        st.dictionaries(tables, st.tuples(arrays, arrays), max_size=2),
        st.dictionaries(tables, st.tuples(arrays, arrays, arrays), max_size=2),
        st.dictionaries(tables, arrays, max_size=2),
        scalars,
    )
)
def test_lookup_many_garbage(served, requests):
    store, w = served
    try:
        store.lookup_many(requests)
    except bandstore.BandstoreError:
        pass
    check_still_serves(store, w)


def request_is_valid(ids: np.ndarray, offsets: np.ndarray) -> bool:
    """The validation rules, spelled out: ids in range; offsets start at 0, never decrease and
    stay within the ids."""
    if ids.size and (ids.min() < 0 or ids.max() >= ROWS):
        return False
    if offsets.size == 0:
        return True
    return bool(offsets[0] == 0 and np.all(np.diff(offsets) >= 0) and offsets[-1] <= ids.size)


@given(
    ids=st.lists(st.integers(-3, ROWS + 2), max_size=10).map(lambda x: np.array(x, np.int64)),
    offsets=st.lists(st.integers(-2, 12), max_size=5).map(lambda x: np.array(x, np.int64)),
    mode=st.sampled_from(["sum", "mean", "max"]),
)
def test_int64_requests(served, ids, offsets, mode):
    """Contiguous int64 requests take the one-pass check: it accepts exactly the valid ones,
    which then pool as the reference does, and refuses the others with an offsets or id error."""
    store, w = served
    if request_is_valid(ids, offsets):
        out = store.lookup_many({"t": (ids, offsets)}, mode=mode)["t"]
        np.testing.assert_allclose(out, embedding_bag_ref(w, ids, offsets, mode), rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
    else:
        with pytest.raises((bandstore.InvalidOffsetsError, bandstore.IdOutOfRangeError)):
            store.lookup_many({"t": (ids, offsets)}, mode=mode)
    check_still_serves(store, w)
