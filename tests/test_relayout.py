"""Relayout: decisions on held-out queries, bit-identical rows, crash safety, recorded logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import bandstore
from bandstore.demo import create_store_for_trace
from bandstore.options import RelayoutOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.synth import synth
from bandstore.traces.trace import Trace
from bandstore.tune.measure import replay
from bandstore.tune.relayout_job import (
    AUTO_COLDS,
    AUTO_HALF_LIVES,
    AUTO_METHODS,
    LayoutTarget,
    Scoring,
    choose_configurations,
    configuration_grid,
    evaluate_choice,
    inner_split,
    recency_counts,
    relayout,
    transfer_configuration,
)


@pytest.fixture
def co_access_store(tmp_path):
    # Communities of one block (64 rows of dim 16), each row read ~5 times in the tuning part.
    trace = synth({"item": 50_000}, 20_000, pooling=12, zipf=0.9, community_size=64, co_access=0.95)
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    return path, trace


def all_rows(store: bandstore.Store, table: str) -> np.ndarray:
    return store.lookup(table, np.arange(store.tables[table].rows))


def test_relayout_commits_a_better_layout_with_identical_rows(co_access_store):
    path, trace = co_access_store
    cache = 5000 * cache_row_bytes(16)  # 10% of the rows
    with bandstore.open(path, writable=True, cache_bytes=cache) as s:
        before = all_rows(s, "item")
        v0 = s.version
        # A small auto grid (this table is big for a test; the full grid is tested below).
        report = relayout(
            s,
            trace,
            options=RelayoutOptions(batch_size=16, half_lives=(None, 0.25), colds=("inline",)),
        )
        entry = report.tables["item"]
        assert entry.action == "commit" and report.committed_version == s.version > v0
        chosen = entry.result
        assert chosen["heldout_blocks_read"] < entry.current["heldout_blocks_read"]
        assert entry.improvement_over_naive > 1.5
        assert np.array_equal(all_rows(s, "item"), before)
        assert s.verify() == []
        # The committed counts say where they came from: this relayout's tuning part.
        origin = s.counts_origin("item")
        assert origin is not None and origin.writer == "relayout"
        assert origin.version == report.committed_version
        assert origin.queries == report.queries["tuning"] and origin.trace is None
        assert origin.lookups == trace.query_slice(0, origin.queries).n_lookups("item")
        assert "tuning part" in origin.detail and origin.time is not None
    # The committed policy and counts are what a new store serves with, and the simulator's
    # held-out prediction is what the real store reads when replaying the same queries.
    with bandstore.open(path) as s:
        info = s.cache_info()["item"]
        assert info["threshold"] == chosen["threshold"]
        assert info["pinned_share"] == chosen["pinned_share"]
        split = report.queries["tuning"]
        replay(s, trace.query_slice(0, split), batch_size=16)
        held = replay(s, trace.query_slice(split, trace.n_queries), batch_size=16)
        assert held.tables["item"]["blocks_read"] == chosen["heldout_blocks_read"]


def test_relayout_never_commits_a_worse_layout_unless_forced(tmp_path):
    # Queries read runs of consecutive ids: the identity layout is already ideal.
    starts = np.random.default_rng(0).integers(0, 3000, 800) // 16 * 16
    idx = (starts[:, None] + np.arange(16)).reshape(-1)
    trace = Trace({"t": (idx, np.arange(0, idx.size + 1, 16))}, num_rows={"t": 3100})
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    with bandstore.open(path, writable=True, cache_bytes=20 * cache_row_bytes(16)) as s:
        v0 = s.version
        report = relayout(s, trace, method="random", options=RelayoutOptions(batch_size=32))
        assert report.tables["t"].action == "keep"
        assert report.committed_version is None and s.version == v0
        report = relayout(
            s, trace, method="random", force=True, options=RelayoutOptions(batch_size=32)
        )
        assert report.committed_version == s.version > v0


def runs_trace(n_queries: int = 800, rows: int = 3100, seed: int = 0) -> Trace:
    """Queries read runs of 16 consecutive ids, aligned: the identity layout is ideal."""
    starts = np.random.default_rng(seed).integers(0, rows - 100, n_queries) // 16 * 16
    idx = (starts[:, None] + np.arange(16)).reshape(-1)
    return Trace({"t": (idx, np.arange(0, idx.size + 1, 16))}, num_rows={"t": rows})


def slow_recency_counts(trace: Trace, table: str, rows: int, half_life) -> np.ndarray:
    """recency_counts, one query and one lookup at a time."""
    idx, off = trace.table(table)
    nq = len(off) - 1
    acc = np.zeros(rows, dtype=np.float64)
    total = 0.0
    for q in range(nq):
        w = 1.0 if half_life is None else 2.0 ** (-((nq - 1 - q) / nq) / half_life)
        for i in idx[off[q] : off[q + 1]]:
            acc[i] += w
            total += w
    if half_life is not None and total > 0:
        acc *= len(idx) / total
    return acc


@pytest.mark.parametrize("half_life", [None, 0.05, 0.1, 0.25, 0.5, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_recency_counts_match_a_slow_reference(half_life, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 9, 300)  # empty queries too
    idx = (rng.zipf(1.3, int(lengths.sum())) - 1) % 500  # repeats within a query too
    off = np.concatenate([[0], np.cumsum(lengths)])
    trace = Trace({"t": (idx, off)}, num_rows={"t": 520})
    got = recency_counts(trace, "t", 530, half_life)
    ref = slow_recency_counts(trace, "t", 530, half_life)
    assert got.dtype == np.int32 and got.shape == (530,)
    # Equal to the rounded reference, except where the sum sits on a rounding boundary.
    on_edge = np.abs(ref - np.floor(ref) - 0.5) < 1e-9
    assert np.array_equal(got[~on_edge], np.rint(ref[~on_edge]).astype(np.int32))
    assert np.all(np.abs(got[on_edge] - ref[on_edge]) <= 0.5 + 1e-9)
    if half_life is None:
        assert np.array_equal(got[:520], trace.access_counts("t"))
    else:  # same unit as plain counts: the sums add up to the lookups (before rounding)
        assert abs(ref.sum() - idx.size) < 1e-6 * idx.size
    # A recent read counts more than an old one.
    if half_life is not None:
        late = Trace({"t": (np.array([0, 1]), np.array([0, 1, 2]))}, num_rows={"t": 2})
        c = recency_counts(late, "t", 2, half_life)
        assert c[1] >= c[0]


def test_recency_counts_bad_input():
    trace = runs_trace(10)
    for bad in (0, -0.1, "0.5", True):
        with pytest.raises(bandstore.InvalidArgumentError):
            recency_counts(trace, "t", 3100, bad)
    with pytest.raises(bandstore.InvalidArgumentError):
        recency_counts(trace, "t", 10, None)  # ids beyond rows


@pytest.mark.parametrize("n_queries", [8, 9, 100, 257, 1000, 4097])
@pytest.mark.parametrize("batch_size", [1, 4, 16, 64])
def test_inner_split_is_on_a_batch_boundary(n_queries, batch_size):
    trace = runs_trace(n_queries)
    if round(0.75 * n_queries / batch_size) * batch_size in (0,) or (
        round(0.75 * n_queries / batch_size) * batch_size >= n_queries
    ):
        with pytest.raises(bandstore.InvalidArgumentError, match="too short"):
            inner_split(trace, batch_size)
        return
    s = inner_split(trace, batch_size)
    assert s % batch_size == 0 and 0 < s < n_queries
    assert abs(s - 0.75 * n_queries) <= batch_size / 2
    assert inner_split(trace, batch_size, 0.5) % batch_size == 0


def test_inner_split_refuses_short_traces_and_bad_shares():
    with pytest.raises(bandstore.InvalidArgumentError, match="too short"):
        inner_split(runs_trace(16), 16)  # one batch: nothing left to choose on
    with pytest.raises(bandstore.InvalidArgumentError, match="too short"):
        inner_split(runs_trace(20), 32)  # 15 queries to build from: not one whole batch
    assert inner_split(runs_trace(20), 16) == 16  # the choosing part may end mid-batch
    with pytest.raises(bandstore.InvalidArgumentError):
        inner_split(runs_trace(100), 0)
    for share in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(bandstore.InvalidArgumentError):
            inner_split(runs_trace(100), 4, share)
    # choose_configurations refuses a tuning part too short for the inner split.
    trace = runs_trace(40)
    with pytest.raises(bandstore.InvalidArgumentError, match="too short"):
        target = LayoutTarget(
            rows=3100, rows_per_block=64, dim=16, block_size=4096, row_bytes=64,
            cache_bytes=1 << 16,
        )  # fmt: skip
        choose_configurations(trace, "t", target, Scoring(batch_size=64))


def test_configuration_grid():
    grid = configuration_grid()
    n_cold = sum(m in ("metis", "hypergraph") for m in AUTO_METHODS)
    expected = len(AUTO_HALF_LIVES) * (len(AUTO_METHODS) - n_cold + n_cold * len(AUTO_COLDS))
    assert len(grid) == expected == 24
    assert grid[0] == {"method": "identity", "half_life": None, "cold": None}
    assert len({tuple(sorted(g.items(), key=str)) for g in grid}) == len(grid)
    assert {g["method"] for g in grid} == set(AUTO_METHODS)
    with pytest.raises(bandstore.InvalidArgumentError):
        configuration_grid(("magic",))
    with pytest.raises(bandstore.InvalidArgumentError):
        configuration_grid(colds=("somewhere",))
    with pytest.raises(bandstore.InvalidArgumentError):
        configuration_grid(half_lives=())


def test_choose_configurations_scores_on_the_last_tuning_queries():
    trace = synth({"item": 8000}, 3000, pooling=12, zipf=0.9, community_size=64, co_access=0.95)
    target = LayoutTarget(
        rows=8000, rows_per_block=64, dim=16, block_size=4096, row_bytes=64,
        cache_bytes=800 * cache_row_bytes(16),
    )  # fmt: skip
    scoring = Scoring(batch_size=16)
    choice = choose_configurations(trace, "item", target, scoring)
    scores = choice["configurations"]
    assert len(scores) == len(configuration_grid())
    inner = choice["queries"]["fit"]
    assert inner == inner_split(trace, 16) and choice["queries"]["select"] == 3000 - inner
    best = min(scores, key=lambda c: c["select_blocks_read"])
    first_best = next(c for c in scores if c["select_blocks_read"] == best["select_blocks_read"])
    assert choice["chosen"] == {k: first_best[k] for k in ("method", "half_life", "cold")}
    # Each score is evaluate_choice of that configuration on the inner split.
    c = scores[5]
    res, layout, counts = evaluate_choice(trace, "item", inner, c, target, scoring)
    assert res["heldout_blocks_read"] == c["select_blocks_read"]
    assert res["configuration"] == {k: c[k] for k in res["configuration"]}
    assert np.array_equal(counts, recency_counts(trace.query_slice(0, inner), "item", 8000,
                                                 c["half_life"]))  # fmt: skip
    assert np.array_equal(np.sort(layout), np.arange(8000))
    # Co-access this strong: a co-access layout wins over identity and frequency.
    assert choice["chosen"]["method"] in ("metis", "hypergraph")


def test_auto_chooses_without_the_held_out_queries(tmp_path):
    """Replacing the held-out queries changes the held-out figures, never the choice."""
    trace = synth({"item": 8000}, 3000, pooling=12, zipf=0.9, community_size=64, co_access=0.95)
    other = synth(
        {"item": 8000}, 3000, pooling=5, zipf=0.5, community_size=64, co_access=0.1, seed=9
    )
    split = 2400
    swapped = Trace.concat([trace.query_slice(0, split), other.query_slice(split, 3000)])
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    grid = dict(auto_methods=("identity", "frequency", "metis"), half_lives=(None, 0.25))
    reports = []
    for t in (trace, swapped):
        with bandstore.open(path, writable=True, cache_bytes=800 * cache_row_bytes(16)) as s:
            reports.append(
                relayout(s, t, dry_run=True, options=RelayoutOptions(batch_size=16, **grid)).tables[
                    "item"
                ]
            )
    a, b = reports
    assert a.configuration == b.configuration

    def scores(e):  # every figure of the choice but the build time
        return [
            {k: v for k, v in c.items() if k != "build_seconds"} for c in e.choice["configurations"]
        ]

    assert scores(a) == scores(b) and a.choice["queries"] == b.choice["queries"]
    assert a.result["heldout_blocks_read"] != b.result["heldout_blocks_read"]


def test_auto_reports_its_choice_and_never_commits_worse(tmp_path):
    trace = synth({"item": 8000}, 3000, pooling=12, zipf=0.9, community_size=64, co_access=0.95)
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    cache = 800 * cache_row_bytes(16)
    with bandstore.open(path, writable=True, cache_bytes=cache) as s:
        report = relayout(s, trace, options=RelayoutOptions(batch_size=16))
        e = report.tables["item"]
        json.loads(json.dumps(report.as_dict()))  # JSON-ready
        c = e.configuration
        assert set(c) == {"method", "half_life", "cold", "threshold", "pinned_share"}
        assert c["method"] == e.chosen == e.choice["chosen"]["method"]
        split = report.queries["tuning"]
        assert {k: c[k] for k in ("method", "half_life", "cold")} == transfer_configuration(
            e.choice, split
        )
        assert c["threshold"] == e.result["threshold"]
        assert len(e.choice["configurations"]) == 24
        assert set(e.candidates) == set(AUTO_METHODS)
        assert e.policy_only is e.candidates["identity"]
        assert e.action == "commit" and report.committed_version == s.version
        assert e.result["heldout_blocks_read"] < e.current["heldout_blocks_read"]
        assert e.improvement_over_naive > 1.3
        committed_counts = s.table_counts("item")
        split = report.queries["tuning"]
        expected = recency_counts(trace.query_slice(0, split), "item", 8000, c["half_life"])
        assert np.array_equal(committed_counts, expected)
        assert s.cache_info()["item"]["pinned_share"] == c["pinned_share"]
    # A new store serves with the committed (recency-weighted) counts and policy, and reads
    # on the held-out queries exactly the blocks the simulator predicted.
    with bandstore.open(path, cache_bytes=cache) as s:
        replay(s, trace.query_slice(0, split), batch_size=16)
        held = replay(s, trace.query_slice(split, trace.n_queries), batch_size=16)
        assert held.tables["item"]["blocks_read"] == e.result["heldout_blocks_read"]
    with bandstore.open(path, writable=True, cache_bytes=cache) as s:
        # Again on the same trace: the same choice is what the store now has; equal is not
        # fewer, so nothing is committed.
        v = s.version
        again = relayout(s, trace, options=RelayoutOptions(batch_size=16))
        e2 = again.tables["item"]
        assert e2.configuration == c
        assert e2.result["heldout_blocks_read"] == e2.current["heldout_blocks_read"]
        assert e2.action == "keep" and again.committed_version is None and s.version == v
        assert "not fewer" in e2.reason
        # A recency-weighted choice (the only half-life offered) is committed with its counts.
        forced = relayout(
            s,
            trace,
            force=True,
            options=RelayoutOptions(batch_size=16, auto_methods=("metis",), half_lives=(0.25,)),
        )
        e3 = forced.tables["item"]
        # chosen on the inner split's first part, kept as a length in queries
        hl = 0.25 * e3.choice["queries"]["fit"] / split
        assert e3.choice["chosen"]["half_life"] == 0.25
        assert e3.configuration["half_life"] == pytest.approx(hl) and hl < 0.25
        assert forced.committed_version > v
        recent = recency_counts(trace.query_slice(0, split), "item", 8000, hl)
        assert np.array_equal(s.table_counts("item"), recent)
        assert not np.array_equal(recent, recency_counts(trace.query_slice(0, split), "item",
                                                         8000, None))  # fmt: skip
    with bandstore.open(path, cache_bytes=cache) as s:
        replay(s, trace.query_slice(0, split), batch_size=16)
        held = replay(s, trace.query_slice(split, trace.n_queries), batch_size=16)
        assert held.tables["item"]["blocks_read"] == e3.result["heldout_blocks_read"]


def test_auto_can_choose_identity(tmp_path):
    # Queries read windows of 16 consecutive ids starting anywhere: the ids are the best
    # layout (a window spans at most 2 blocks of 64); moving rows only scatters windows.
    rows = 3100
    starts = np.random.default_rng(0).integers(0, rows - 16, 1600)
    idx = (starts[:, None] + np.arange(16)).reshape(-1)
    trace = Trace({"t": (idx, np.arange(0, idx.size + 1, 16))}, num_rows={"t": rows})
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    with bandstore.open(path, writable=True, cache_bytes=20 * cache_row_bytes(16)) as s:
        report = relayout(s, trace, dry_run=True, options=RelayoutOptions(batch_size=32))
    e = report.tables["t"]
    assert e.chosen == "identity" and e.configuration["method"] == "identity"
    assert e.choice["chosen"]["method"] == "identity"
    # Chosen on its merit: every layout that moves rows reads more blocks on the last tuning
    # queries, and on the held-out ones.
    scores = e.choice["configurations"]
    ident = max(c["select_blocks_read"] for c in scores if c["method"] == "identity")
    assert all(c["select_blocks_read"] > ident for c in scores if c["method"] != "identity")
    held = {m: c["heldout_blocks_read"] for m, c in e.candidates.items()}
    assert held["identity"] < min(held["frequency"], held["metis"], held["hypergraph"])


def test_auto_keeps_the_current_layout_when_every_candidate_is_worse(tmp_path):
    trace = runs_trace()
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    with bandstore.open(path, writable=True, cache_bytes=20 * cache_row_bytes(16)) as s:
        v0 = s.version
        report = relayout(
            s,
            trace,
            options=RelayoutOptions(batch_size=32, auto_methods=("random",), half_lives=(None,)),
        )
        e = report.tables["t"]
        assert e.chosen == "random"
        assert e.result["heldout_blocks_read"] >= e.current["heldout_blocks_read"]
        assert e.action == "keep" and report.committed_version is None and s.version == v0
        forced = relayout(
            s,
            trace,
            force=True,
            options=RelayoutOptions(batch_size=32, auto_methods=("random",), half_lives=(None,)),
        )
        assert forced.committed_version == s.version > v0


def test_relayout_bad_input(co_access_store):
    path, trace = co_access_store
    with bandstore.open(path, writable=True) as s:
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, method="magic")
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, options=RelayoutOptions(batch_size=0))
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, holdout=1.5)
        with pytest.raises(bandstore.UnknownTableError):
            relayout(s, trace, tables=["nope"])
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, options=RelayoutOptions(auto_methods=("magic",)))
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, options=RelayoutOptions(colds=("nowhere",)))
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, options=RelayoutOptions(inner_share=1.0))
    with bandstore.open(path) as s, pytest.raises(bandstore.ReadOnlyError):
        relayout(s, trace, method="frequency", force=True)


def test_relayout_from_recorded_traffic(co_access_store, tmp_path):
    from bandstore.traces.recorder import read_recorded

    path, trace = co_access_store
    rec = tmp_path / "rec"
    with bandstore.open(path, record=rec, sample_rate=0.5) as s:
        replay(s, trace, batch_size=64)
    recorded = read_recorded(rec)
    assert 0.4 * trace.n_queries < recorded.n_queries < 0.6 * trace.n_queries
    with bandstore.open(path, writable=True) as s:
        report = relayout(s, recorded, method="frequency", options=RelayoutOptions(batch_size=32))
        assert report.tables["item"].candidates["frequency"]["heldout_lookups"] > 0


LOOP = textwrap.dedent(
    """
    import sys, numpy as np, bandstore
    s = bandstore.open(sys.argv[1], writable=True, cache_bytes=0)
    rows = s.tables["t"].rows
    s.relayout_tables({"t": np.arange(rows)}, progress=False)  # imports and compiles done
    print("ready", flush=True)
    for i in range(10**6):
        layout = np.random.default_rng(i).permutation(rows + 7)[:rows]
        s.relayout_tables({"t": layout}, counts={"t": np.full(rows, i % 5)}, progress=False)
    """
)


def test_killed_relayouts_lose_nothing(tmp_path):
    """kill -9 a process that relayouts in a loop, 20 times at random points."""
    path = tmp_path / "s"
    rng = np.random.default_rng(7)
    w = rng.standard_normal((60_000, 16)).astype(np.float32)
    with bandstore.create(path) as s:
        s.add_table("t", w)
    versions = set()
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.6)))
        assert proc.poll() is None  # still relayouting: it did not die on its own
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with bandstore.open(path, cache_bytes=0) as s:
            versions.add(s.version)
            assert s.verify() == []
            assert np.array_equal(all_rows(s, "t"), w)
    assert len(versions) > 1  # some relayouts did commit between kills
    from bandstore.storage.versions import collect_garbage

    collect_garbage(path)
    with bandstore.open(path, cache_bytes=0) as s:
        assert s.verify() == [] and np.array_equal(all_rows(s, "t"), w)


def test_co_access_layouts_leave_out_the_rows_the_cache_holds():
    """relayout builds metis / hypergraph with hot_fraction = the cache's share of the rows
    (not a fixed 10%): the hot section, hottest first, is as long as the cache, in whole
    blocks; an explicit hot_fraction in layout_params wins."""
    from bandstore.tune.layout import build_layout
    from bandstore.tune.relayout_job import cache_share

    rows, rpb, dim = 4000, 16, 16
    trace = synth({"item": rows}, 1200, pooling=10, zipf=1.0, community_size=16, co_access=0.8)

    def target(cache_bytes: int) -> LayoutTarget:
        return LayoutTarget(
            rows=rows, rows_per_block=rpb, dim=dim, block_size=1024, row_bytes=64,
            cache_bytes=cache_bytes,
        )  # fmt: skip

    scoring = Scoring(batch_size=16, thresholds=[0], pinned_shares=[1.0])
    idx, off = trace.query_slice(0, 960).table("item")
    for share in (0.02, 0.3):
        cb = int(share * rows) * cache_row_bytes(dim)
        assert cache_share(cb, dim, rows) == pytest.approx(share)
        cfg = {"method": "metis", "half_life": None, "cold": "after"}
        _, layout, _ = evaluate_choice(trace, "item", 960, cfg, target(cb), scoring)
        n_hot = -(-int(share * rows) // rpb) * rpb
        tune_counts = np.bincount(idx, minlength=rows)
        hot = np.argsort(layout)[:n_hot]
        # the first n_hot slots hold the n_hot most read rows of the tuning part
        assert np.all(np.diff(tune_counts[hot]) <= 0)
        assert tune_counts[hot].min() >= np.sort(tune_counts)[::-1][n_hot - 1]
        assert np.array_equal(
            layout, build_layout("metis", idx, off, rows, rpb, hot_fraction=share, cold="after")
        )
    # layout_params override the cache's share
    cb = int(0.3 * rows) * cache_row_bytes(dim)
    cfg = {"method": "metis", "half_life": None, "cold": "after"}
    _, layout, _ = evaluate_choice(
        trace, "item", 960, cfg, target(cb), scoring,
        layout_params={"metis": {"hot_fraction": 0.0}},
    )  # fmt: skip
    assert np.array_equal(
        layout, build_layout("metis", idx, off, rows, rpb, hot_fraction=0.0, cold="after")
    )


def test_a_chosen_half_life_keeps_its_length_in_queries():
    choice = {"queries": {"fit": 750, "select": 250},
              "chosen": {"method": "hypergraph", "half_life": 0.4, "cold": "inline"}}  # fmt: skip
    assert transfer_configuration(choice, 1000) == {
        "method": "hypergraph",
        "half_life": pytest.approx(0.3),
        "cold": "inline",
    }
    # the same weights on the queries: 0.4 of 750 queries = 0.3 of 1000
    from bandstore.tune.layout import query_weights

    w_fit = query_weights(np.arange(751), 0.4)
    w_all = query_weights(np.arange(1001), transfer_configuration(choice, 1000)["half_life"])
    assert np.allclose(w_fit, w_all[250:])
    plain = {**choice, "chosen": {**choice["chosen"], "half_life": None}}
    assert transfer_configuration(plain, 1000)["half_life"] is None
    assert choice["chosen"]["half_life"] == 0.4  # not modified
