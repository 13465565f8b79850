"""Random bad arguments: every call either works or raises a BandstoreError, and the store
keeps serving correct rows afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
