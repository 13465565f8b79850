"""The offline rebuild (bandstore.tune.rebuild, tools/rebuild.py): one version holding layout,
sizes and plan, equal to the three single steps run in turn, nothing changed on failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bandstore
import bandstore.tune
from bandstore.demo import create_store_for_trace
from bandstore.options import RelayoutOptions, SizingOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.synth import synth
from bandstore.tune.measure import replay
from bandstore.tune.relayout_job import split_point

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "rebuild.py"
BATCH = 64


def _budget(trace, dim: int, share: float = 0.1) -> int:
    return int(share * sum(trace.num_rows[n] * cache_row_bytes(dim) for n in trace.table_names))


@pytest.fixture
def small(tmp_path):
    """Two tables with co-access communities, a store of their rows (dim 16)."""
    trace = synth(
        {"item": 6000, "user": 2000}, 4000, pooling=8, zipf=0.9, community_size=32, co_access=0.9
    )
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16, progress=False).close()
    return path, trace


def _state(path: Path) -> dict:
    """What a served store holds: layouts, counts, tuning per table and the stored plan."""
    with bandstore.open(path, plan=False) as s:
        return {
            "version": s.version,
            "layouts": {n: np.array(s.table_layout(n)[0]) for n in s.tables},
            "counts": {n: np.array(s.table_counts(n)) for n in s.tables},
            "tuning": {n: s.catalog.tuning(n) for n in s.tables},
            "plan": s.catalog.meta("plan"),
        }


@pytest.mark.slow
def test_rebuild_equals_the_three_steps_in_one_version(small, tmp_path):
    path, trace = small
    other = tmp_path / "sequential"
    shutil.copytree(path, other)
    budget, holdout = _budget(trace, 16), 0.2
    tune = trace.query_slice(0, split_point(trace, holdout, BATCH))

    with bandstore.open(other, writable=True, plan=False) as s:
        v0 = s.version
        rel = bandstore.tune.relayout(
            s, trace, method="frequency", holdout=holdout, cache_bytes=budget,
            options=RelayoutOptions(batch_size=BATCH),
        )  # fmt: skip
        sizing = SizingOptions().with_sim(batch_size=BATCH)
        bandstore.tune.size_cache(s, tune, budget, apply=True, options=sizing)
        p = bandstore.tune.plan(s, tune, 2, budget, batch_size=BATCH)
        bandstore.tune.apply_plan(s, p)
    assert rel.committed_version is not None  # the layout changed: the test means something

    with bandstore.open(path, writable=True, plan=False) as s:
        assert s.version == v0
        ids = s.catalog.version_ids()
        report = bandstore.tune.rebuild(
            s, trace, budget=budget, workers=2, holdout=holdout, method="frequency",
            batch_size=BATCH,
        )  # fmt: skip
        assert s.plan is not None and s.plan.workers == 2  # served from now on
    assert report.base_version == v0 and report.version == v0 + 1

    seq, one = _state(other), _state(path)
    with bandstore.open(path) as s:
        assert s.catalog.version_ids() == [*ids, report.version]  # exactly one new version
    for n in ("item", "user"):
        np.testing.assert_array_equal(one["layouts"][n], seq["layouts"][n])
        np.testing.assert_array_equal(one["counts"][n], seq["counts"][n])
        assert one["tuning"][n] == seq["tuning"][n]
    assert one["plan"] == seq["plan"]
    d = report.as_dict()
    json.dumps(d)  # JSON-ready
    assert set(d["tables"]) == {"item", "user"}
    assert d["plan"] == one["plan"]
    assert sum(t.cache_bytes for t in report.tables.values()) <= budget
    assert "committed version" in report.format()


@pytest.fixture
def tiny(tmp_path):
    """Two small tables and a short trace: a rebuild in seconds."""
    trace = synth({"item": 1500, "user": 400}, 800, pooling=5, community_size=16, co_access=0.9)
    path = tmp_path / "tiny"
    create_store_for_trace(path, trace, dim=8, progress=False).close()
    return path, trace


def test_a_failing_step_changes_nothing(tiny, monkeypatch):
    path, trace = tiny
    before = _state(path)

    def broken(*args, **kwargs):
        raise bandstore.BudgetError("no plan fits", budget=1, needed=2)

    monkeypatch.setattr("bandstore.tune.pipeline.plan_store", broken)
    with bandstore.open(path, writable=True, plan=False) as s:
        with pytest.raises(bandstore.BudgetError):
            bandstore.tune.rebuild(s, trace, method="frequency", batch_size=BATCH)
        assert s.version == before["version"]
    after = _state(path)
    assert after["version"] == before["version"] and after["plan"] == before["plan"]
    for n in before["layouts"]:
        np.testing.assert_array_equal(after["layouts"][n], before["layouts"][n])
        np.testing.assert_array_equal(after["counts"][n], before["counts"][n])
        assert after["tuning"][n] == before["tuning"][n]


def test_rebuild_bad_input(small):
    path, trace = small
    with bandstore.open(path, plan=False) as s:
        with pytest.raises(bandstore.ReadOnlyError):
            bandstore.tune.rebuild(s, trace)
    with bandstore.open(path, writable=True, plan=False) as s:
        with pytest.raises(bandstore.InvalidArgumentError, match="engine"):
            bandstore.tune.rebuild(s, trace, engine="spark")
        with pytest.raises(bandstore.InvalidArgumentError, match="budget"):
            bandstore.tune.rebuild(s, trace, budget=0)
        with pytest.raises(bandstore.InvalidArgumentError, match="method"):
            bandstore.tune.rebuild(s, trace, method="best")
        v = s.version
    with bandstore.open(path) as s:
        assert s.version == v


def test_relayout_tables_commits_a_plan_in_the_same_version(small):
    path, trace = small
    with bandstore.open(path, writable=True, plan=False) as s, bandstore.open(path) as reader:
        rows = s.tables["user"].rows
        v = s.version
        bad = {"workers": 2, "tables": {"user": {"strategy": "levitate", "worker": 0}}}
        with pytest.raises(bandstore.PlanError):
            s.relayout_tables({"user": np.arange(rows)[::-1].copy()}, plan=bad)
        assert s.version == v and s.catalog.current_version()["id"] == v
        pinned = {"workers": 1, "tables": {"user": {"strategy": "pinned", "cache_bytes": 640}}}
        with pytest.raises(bandstore.PlanError, match="access counts"):  # none to rank rows by
            s.relayout_tables({}, plan=pinned)
        assert s.version == v and s.catalog.meta("plan") is None
        plan = {
            "workers": 2,
            "tables": {
                "user": {"strategy": "resident", "worker": 1},
                "item": {"strategy": "cached", "worker": 0, "cache_bytes": 1 << 16},
            },
        }
        counts = {"item": np.arange(s.tables["item"].rows, dtype=np.int64) % 7}
        vid = s.relayout_tables({}, counts=counts, plan=plan)  # no new layout: a new version
        assert vid == v + 1 and s.plan is not None and s.plan.tables["user"].strategy == "resident"
        np.testing.assert_array_equal(s.table_counts("item"), counts["item"])
        # Another handle sees version and plan together.
        assert reader.plan is None or reader.plan.tables.get("user") is None
        assert reader.refresh()
        assert reader.plan is not None and reader.plan.tables["user"].strategy == "resident"
        np.testing.assert_array_equal(reader.table_counts("item"), counts["item"])


def _heldout_blocks(path: Path, trace, budget: int) -> float:
    """Blocks per 1000 held-out lookups, caches of ``budget`` bytes warmed by the tuning part."""
    split = split_point(trace, 0.2, BATCH)
    with bandstore.open(path, cache_bytes=budget, plan=False) as s:
        replay(s, trace.query_slice(0, split), batch_size=BATCH)
        stats = replay(s, trace.query_slice(split, trace.n_queries), batch_size=BATCH)
    return float(stats.total["blocks_per_1000_lookups"])


@pytest.mark.slow
def test_the_tool_rebuilds_from_recorded_traffic(small, tmp_path):
    path, trace = small
    budget = _budget(trace, 16)
    logs = tmp_path / "logs"
    with bandstore.open(path, record=logs, sample_rate=1.0) as s:
        v0 = s.version
        replay(s, trace, batch_size=BATCH)  # the serving store records every query
    recorded = bandstore.traces.recorder.read_recorded(logs)
    assert recorded.n_queries == trace.n_queries
    before = _heldout_blocks(path, recorded, budget)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(TOOL), str(path), str(logs), "--budget", str(budget)]
    cmd += ["--workers", "2", "--method", "frequency", "--batch-size", str(BATCH), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["base_version"] == v0 and report["version"] == v0 + 1

    state = _state(path)
    assert state["version"] == v0 + 1
    assert state["plan"] is not None and state["plan"]["workers"] == 2
    assert set(state["plan"]["tables"]) == {"item", "user"}
    for n in ("item", "user"):
        assert state["tuning"][n]["sized_by"] == "bandstore.sim"
    assert any(t["layout"] == "commit" for t in report["tables"].values())
    after = _heldout_blocks(path, recorded, budget)
    assert after <= before, (before, after)

    bad = subprocess.run(
        [sys.executable, str(TOOL), str(path), str(tmp_path / "missing.txt")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "missing.txt" in bad.stderr
    assert _state(path)["version"] == v0 + 1


def test_help_runs():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(TOOL), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0 and "--budget" in done.stdout and "--engine" in done.stdout
