"""Relayout: decisions on held-out queries, bit-identical rows, crash safety, recorded logs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import bandstore
from bandstore.cache import cache_row_bytes
from bandstore.demo import create_store_for_trace
from bandstore.relayout import relayout
from bandstore.replay import replay
from bandstore.synth import synth
from bandstore.trace import Trace


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
        report = relayout(s, trace, batch_size=16)
        entry = report["tables"]["item"]
        assert entry["action"] == "commit" and report["committed_version"] == s.version > v0
        chosen = entry["result"]
        assert chosen["heldout_blocks_read"] < entry["current"]["heldout_blocks_read"]
        assert entry["improvement_over_naive"] > 1.5
        assert np.array_equal(all_rows(s, "item"), before)
        assert s.verify() == []
    # The committed policy and counts are what a new store serves with, and the simulator's
    # held-out prediction is what the real store reads when replaying the same queries.
    with bandstore.open(path) as s:
        info = s.cache_info()["item"]
        assert info["threshold"] == chosen["threshold"]
        assert info["pinned_share"] == chosen["pinned_share"]
        split = report["queries"]["tuning"]
        replay(s, trace.query_slice(0, split), batch_size=16)
        held = replay(s, trace.query_slice(split, trace.n_queries), batch_size=16)
        assert held["item"]["blocks_read"] == chosen["heldout_blocks_read"]


def test_relayout_never_commits_a_worse_layout_unless_forced(tmp_path):
    # Queries read runs of consecutive ids: the identity layout is already ideal.
    starts = np.random.default_rng(0).integers(0, 3000, 800) // 16 * 16
    idx = (starts[:, None] + np.arange(16)).reshape(-1)
    trace = Trace({"t": (idx, np.arange(0, idx.size + 1, 16))}, num_rows={"t": 3100})
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    with bandstore.open(path, writable=True, cache_bytes=20 * cache_row_bytes(16)) as s:
        v0 = s.version
        report = relayout(s, trace, method="random", batch_size=32)
        assert report["tables"]["t"]["action"] == "keep"
        assert report["committed_version"] is None and s.version == v0
        report = relayout(s, trace, method="random", batch_size=32, force=True)
        assert report["committed_version"] == s.version > v0


def test_relayout_bad_input(co_access_store):
    path, trace = co_access_store
    with bandstore.open(path, writable=True) as s:
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, method="magic")
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, batch_size=0)
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, holdout=1.5)
        with pytest.raises(bandstore.UnknownTableError):
            relayout(s, trace, tables=["nope"])
    with bandstore.open(path) as s, pytest.raises(bandstore.ReadOnlyError):
        relayout(s, trace, method="frequency", force=True)


def test_relayout_from_recorded_traffic(co_access_store, tmp_path):
    from bandstore.recorder import read_recorded

    path, trace = co_access_store
    rec = tmp_path / "rec"
    with bandstore.open(path, record=rec, sample_rate=0.5) as s:
        replay(s, trace, batch_size=64)
    recorded = read_recorded(rec)
    assert 0.4 * trace.n_queries < recorded.n_queries < 0.6 * trace.n_queries
    with bandstore.open(path, writable=True) as s:
        report = relayout(s, recorded, method="frequency", batch_size=32)
        assert report["tables"]["item"]["candidates"]["frequency"]["heldout_lookups"] > 0


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
    from bandstore.store import collect_garbage

    collect_garbage(path)
    with bandstore.open(path, cache_bytes=0) as s:
        assert s.verify() == [] and np.array_equal(all_rows(s, "t"), w)
