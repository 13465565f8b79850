"""Synthetic traces: determinism, shape, pooling, skew, co-access, the DLRM-like preset."""

from __future__ import annotations

import numpy as np
import pytest

from bandstore.errors import InvalidArgumentError
from bandstore.traces import synth as synth_module
from bandstore.traces.synth import DLRM_TABLES, communities, dlrm_like, synth
from bandstore.traces.trace import Trace, top_share


def query_of_lookup(trace: Trace, name: str) -> np.ndarray:
    _, off = trace.table(name)
    return np.repeat(np.arange(trace.n_queries), np.diff(off))


def same_community_pair_share(trace: Trace, name: str, community: np.ndarray) -> float:
    """Share of within-query pairs of lookups (consecutive in the bag) in the same community."""
    idx, off = trace.table(name)
    q = query_of_lookup(trace, name)
    same_query = q[1:] == q[:-1]
    c = community[idx]
    return float(np.mean((c[1:] == c[:-1])[same_query]))


def test_shape_and_ranges() -> None:
    t = synth({"a": 1000, "b": 37}, 500, pooling={"a": 10, "b": 3}, seed=3)
    assert t.table_names == ["a", "b"] and t.n_queries == 500
    assert t.num_rows == {"a": 1000, "b": 37}
    for name, rows in t.num_rows.items():
        idx, off = t.table(name)
        assert idx.dtype == np.int64 and off[0] == 0 and off[-1] == idx.size
        assert idx.min() >= 0 and idx.max() < rows
        assert t.bag_sizes(name).min() >= 1  # every query reads every table
    assert t.n_lookups("a") / 500 == pytest.approx(10, rel=0.1)
    assert t.n_lookups("b") / 500 == pytest.approx(3, rel=0.15)
    assert synth({"a": 5}, 0).n_queries == 0


def test_deterministic_by_seed() -> None:
    args = ({"a": 5000, "b": 300}, 2000)
    assert synth(*args, seed=7).equals(synth(*args, seed=7))
    assert not synth(*args, seed=7).equals(synth(*args, seed=8))


def test_tables_are_independent_of_each_other() -> None:
    alone = synth({"a": 5000}, 1000, seed=1)
    with_other = synth({"z": 10, "a": 5000}, 1000, seed=1)
    assert with_other.select(["a"]).equals(alone)


def test_chunked_generation(monkeypatch) -> None:
    whole = synth({"a": 3000}, 1000, pooling=7, seed=2)
    monkeypatch.setattr(synth_module, "_CHUNK_LOOKUPS", 64)  # ~9 queries per chunk
    chunked = synth({"a": 3000}, 1000, pooling=7, seed=2)
    again = synth({"a": 3000}, 1000, pooling=7, seed=2)
    assert chunked.equals(again)
    # chunking changes the random streams, not the model: same sizes, same skew
    assert np.array_equal(chunked.bag_sizes("a"), whole.bag_sizes("a"))
    assert top_share(chunked.access_counts("a")) == pytest.approx(
        top_share(whole.access_counts("a")), abs=0.03
    )


@pytest.mark.parametrize("mode, mean", [("poisson", 12), ("geometric", 12), ("fixed", 5)])
def test_bag_sizes(mode, mean) -> None:
    t = synth({"a": 2000}, 4000, pooling=mean, bag_sizes=mode, seed=0)
    sizes = t.bag_sizes("a")
    assert sizes.min() >= 1
    assert sizes.mean() == pytest.approx(mean, rel=0.05)
    if mode == "fixed":
        assert (sizes == mean).all()
    if mode == "geometric":
        assert sizes.std() > 2 * np.sqrt(mean)  # much wider than Poisson
    if mode == "poisson":
        assert sizes.std() == pytest.approx(np.sqrt(mean - 1), rel=0.1)


def test_pooling_one_is_one_lookup() -> None:
    assert (synth({"a": 100}, 300, pooling=1).bag_sizes("a") == 1).all()


def test_zipf_skew_is_measurable() -> None:
    shares = [
        top_share(synth({"a": 50_000}, 5000, pooling=20, zipf=z, seed=0).access_counts("a"))
        for z in (0.0, 0.6, 1.0, 1.3)
    ]
    assert shares == sorted(shares)
    assert shares[0] < 0.05  # uniform: the top 1% get little more than 1%
    assert shares[2] > 0.3 and shares[3] > 0.55


def test_per_table_zipf() -> None:
    t = synth({"flat": 20_000, "hot": 20_000}, 3000, zipf={"flat": 0.0, "hot": 1.2})
    assert top_share(t.access_counts("hot")) > 3 * top_share(t.access_counts("flat"))


def test_co_access_reads_communities_together() -> None:
    rows, size = 20_000, 32
    comm = communities("a", rows, community_size=size, seed=4)
    shares = {}
    for co in (0.0, 0.9):
        t = synth({"a": rows}, 3000, pooling=16, co_access=co, community_size=size, seed=4)
        shares[co] = same_community_pair_share(t, "a", comm)
    # with co_access 0.9 two lookups share the query's community with probability >= 0.81
    assert shares[0.9] > 0.8
    # independent lookups share a community only through popularity (Zipf over communities)
    assert shares[0.0] < 0.2
    assert shares[0.9] > 4 * shares[0.0]


def test_co_access_keeps_the_popularity_distribution() -> None:
    counts = {}
    for co in (0.0, 1.0):
        t = synth({"a": 20_000}, 4000, pooling=20, co_access=co, seed=5)
        counts[co] = t.access_counts("a")
    assert top_share(counts[1.0]) == pytest.approx(top_share(counts[0.0]), abs=0.03)
    hot0 = set(np.argsort(counts[0.0])[-50:].tolist())
    hot1 = set(np.argsort(counts[1.0])[-50:].tolist())
    assert len(hot0 & hot1) > 35  # the same rows are hot


def test_communities_are_not_contiguous_ids() -> None:
    rows, size = 20_000, 64
    comm = communities("a", rows, community_size=size, seed=0)
    assert np.bincount(comm).tolist() == [size] * (rows // size) + [rows % size]
    # neighbouring ids almost never share a community: the identity layout gets nothing free
    assert np.mean(comm[1:] == comm[:-1]) < 0.01
    t = synth({"a": rows}, 2000, pooling=16, co_access=1.0, community_size=size, seed=0)
    idx, _ = t.table("a")
    assert same_community_pair_share(t, "a", comm) == 1.0
    blocks = idx // 16  # 16 rows per 4 KB block of 256-byte rows
    q = query_of_lookup(t, "a")
    same = (q[1:] == q[:-1]) & (idx[1:] != idx[:-1])
    assert np.mean(blocks[1:][same] == blocks[:-1][same]) < 0.05


def test_members_are_not_equally_hot() -> None:
    # frequency order must not recover communities: a community's members differ in heat
    rows, size = 10_000, 64
    t = synth({"a": rows}, 5000, pooling=20, community_size=size, seed=0)
    counts = t.access_counts("a")
    comm = communities("a", rows, community_size=size, seed=0)
    top = counts[comm == 0]
    assert top.max() > 10 * max(1, np.median(top))


def test_short_last_community() -> None:
    rows, size = 1000, 64  # last community has 1000 - 15 * 64 = 40 rows
    comm = communities("a", rows, community_size=size)
    t = synth({"a": rows}, 20_000, pooling=5, community_size=size, co_access=1.0, zipf=0.0)
    idx, _ = t.table("a")
    counts = t.access_counts("a")
    last = comm == comm.max()
    assert last.sum() == 40
    assert (counts[last] > 0).all()  # every member of the short community is drawn
    assert idx.max() < rows
    tiny = synth({"a": 3}, 50, pooling=4, community_size=64)
    assert set(tiny.table("a")[0].tolist()) <= {0, 1, 2}


def test_communities_per_query() -> None:
    rows, size = 20_000, 32
    comm = communities("a", rows, community_size=size, seed=0)
    t = synth(
        {"a": rows}, 1000, pooling=30, co_access=1.0, communities_per_query=3, community_size=size
    )
    idx, _ = t.table("a")
    q = query_of_lookup(t, "a")
    per_query = np.unique(np.stack([q, comm[idx]]), axis=1)
    distinct = np.bincount(per_query[0], minlength=1000)
    assert distinct.max() <= 3 and distinct.mean() > 2.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tables": {}},
        {"tables": {"a": 0}},
        {"tables": {"a": 1.5}},
        {"tables": {"": 5}},
        {"n_queries": -1},
        {"pooling": 0.5},
        {"pooling": {"b": 3}},
        {"zipf": -1},
        {"co_access": 1.5},
        {"community_size": 0},
        {"communities_per_query": 0},
        {"bag_sizes": "uniform"},
        {"bag_sizes": "fixed", "pooling": 2.5},
        {"seed": -1},
    ],
)
def test_invalid_arguments(kwargs) -> None:
    args = {"tables": {"a": 100}, "n_queries": 10, **kwargs}
    with pytest.raises(InvalidArgumentError):
        synth(args.pop("tables"), args.pop("n_queries"), **args)


def test_ten_million_lookups_is_quick() -> None:
    import time

    t0 = time.perf_counter()
    t = synth({"a": 1_000_000}, 250_000, pooling=20)
    elapsed = time.perf_counter() - t0
    assert t.n_lookups() == pytest.approx(5_000_000, rel=0.01)
    assert elapsed < 10  # ~0.5 s here; 10M lookups take ~1 s, 100M ~13 s


def test_dlrm_like_matches_meta_skew() -> None:
    """Figures of dlrm_like's docstring, against Meta's per-batch statistics (65,536 samples)."""
    t = dlrm_like()
    assert t.n_queries == 65_536
    assert t.table_names == list(DLRM_TABLES)
    assert t.n_lookups() / t.n_queries == pytest.approx(87, rel=0.02)
    counts = np.concatenate([t.access_counts(n) for n in t.table_names])
    read = counts[counts > 0]
    assert top_share(counts) == pytest.approx(0.46, abs=0.02)  # Meta: ~46%
    assert read.mean() == pytest.approx(6.9, abs=0.5)  # Meta 2021: 6.9-7.6 reads per row
    assert np.mean(read == 1) == pytest.approx(0.47, abs=0.03)  # Meta 2021: 42-47% once
    small = dlrm_like(1000, tables={"x": 5000}, co_access=0.5)
    assert small.table_names == ["x"] and small.bag_sizes("x").mean() == pytest.approx(16, rel=0.2)
