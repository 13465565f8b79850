"""Relayout of long traces: policies and auto's configuration chosen on a bounded recent window
(``max_tuning_lookups``), held-out figures still replayed in full."""

from __future__ import annotations

import numpy as np
import pytest

import bandstore
from bandstore.demo import create_store_for_trace
from bandstore.kernels.cache import NEVER
from bandstore.options import RelayoutOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.synth import synth
from bandstore.tune.measure import replay
from bandstore.tune.relayout_job import (
    LayoutTarget,
    Scoring,
    choose_configurations,
    evaluate_layout,
    inner_split,
    relayout,
    split_point,
    tuning_window,
)

CACHE = 800 * cache_row_bytes(16)
TARGET = LayoutTarget(
    rows=8000, rows_per_block=64, dim=16, block_size=4096, row_bytes=64, cache_bytes=CACHE
)


@pytest.fixture(scope="module")
def trace():
    return synth({"item": 8000}, 3000, pooling=12, zipf=0.9, community_size=64, co_access=0.95)


@pytest.mark.parametrize("max_lookups", [1, 100, 5000, 17_000, 10**9])
def test_tuning_window_is_the_longest_recent_run_of_batches_within_the_bound(trace, max_lookups):
    split = split_point(trace, 0.2, 16)
    off = trace.table("item")[1]
    w = tuning_window(trace, "item", split, max_lookups, 16)
    assert w % 16 == 0 and 0 <= w < split
    if off[split] <= max_lookups:
        assert w == 0
    elif w == split - 16:  # at least one batch, even above the bound
        assert off[split] - off[split - 32] > max_lookups
    else:
        assert off[split] - off[w] <= max_lookups < off[split] - off[w - 16]
    assert tuning_window(trace, "item", split, None, 16) == 0


def test_tuning_window_bad_bound(trace):
    for bad in (0, -5, 2.5, True, "10"):
        with pytest.raises(bandstore.InvalidArgumentError):
            tuning_window(trace, "item", 2400, bad, 16)


def test_windowed_evaluation_replays_the_whole_held_out_part(trace):
    """With one policy, the window changes nothing held out: one pass with the tuning part as
    warm-up gives exactly the (whole - tuning) difference of the exact path."""
    split = split_point(trace, 0.2, 16)
    rng = np.random.default_rng(3)
    layout = rng.permutation(8000).astype(np.int64)
    counts = np.bincount(trace.query_slice(0, split).table("item")[0], minlength=8000)
    counts = counts.astype(np.int32)
    w = tuning_window(trace, "item", split, 5000, 16)
    assert w > 0
    for t, p in ((2, 0.5), (NEVER, 0.0), (0, 1.0)):
        scoring = Scoring(batch_size=16, thresholds=[t], pinned_shares=[p])
        exact = evaluate_layout(trace, "item", split, layout, counts, TARGET, scoring)
        windowed = evaluate_layout(
            trace, "item", split, layout, counts, TARGET, scoring, policy_from=w
        )
        for k in ("heldout_lookups", "heldout_blocks_read", "heldout_hit_ratio"):
            assert windowed[k] == exact[k], (t, p, k)
        assert windowed["tuning_blocks_per_1000_lookups"] != exact["tuning_blocks_per_1000_lookups"]
    # With a grid, the window chooses the policy: the one that reads fewest blocks on it.
    grid = Scoring(batch_size=16, thresholds=[0, 4, NEVER], pinned_shares=[0.0, 1.0])
    res = evaluate_layout(trace, "item", split, layout, counts, TARGET, grid, policy_from=w)
    best = min(
        (
            evaluate_layout(
                trace.query_slice(w, split + 0),
                "item",
                (split - w) // 4 // 16 * 16,
                layout,
                counts,
                TARGET,
                Scoring(batch_size=16, thresholds=[t], pinned_shares=[p]),
            )["heldout_blocks_read"],
            i,
        )  # fmt: skip
        for i, (t, p) in enumerate((t, p) for t in (0, 4, NEVER) for p in (0.0, 1.0))
    )
    t_best, p_best = [(t, p) for t in (0, 4, NEVER) for p in (0.0, 1.0)][best[1]]
    assert (res["threshold"], res["pinned_share"]) == (
        None if t_best == NEVER else t_best,
        p_best,
    )
    with pytest.raises(bandstore.InvalidArgumentError):
        evaluate_layout(trace, "item", split, layout, counts, TARGET, grid, policy_from=w + 1)


def test_bounded_auto_chooses_on_the_window_and_builds_the_choice_once(tmp_path, trace):
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    grid = dict(auto_methods=("identity", "frequency", "metis"), half_lives=(None, 0.25))
    with bandstore.open(path, writable=True, cache_bytes=CACHE) as s:
        before = s.lookup("item", np.arange(8000))
        unbounded = relayout(
            s,
            trace,
            dry_run=True,
            options=RelayoutOptions(batch_size=16, max_tuning_lookups=None, **grid),
        ).tables["item"]
        assert unbounded.policy_window is None and unbounded.skipped_candidates is None
        assert set(unbounded.candidates) == {"identity", "frequency", "metis"}
        report = relayout(
            s, trace, options=RelayoutOptions(batch_size=16, max_tuning_lookups=12_000, **grid)
        )
        e = report.tables["item"]
        split = report.queries["tuning"]
        w = tuning_window(trace, "item", split, 12_000, 16)
        assert e.policy_window["first_query"] == w > 0
        assert e.policy_window["lookups"] <= 12_000
        # Only identity and the chosen configuration were built at full size.
        assert set(e.candidates) == {"identity"}
        assert e.skipped_candidates == ["frequency", "metis"]
        # The choice is that of choose_configurations on the window alone.
        window = trace.query_slice(w, split)
        defaults = [
            {"method": "identity", "half_life": None, "cold": None},
            {"method": "frequency", "half_life": None, "cold": None},
            {"method": "metis", "half_life": None, "cold": "after"},
        ]
        direct = choose_configurations(
            window, "item", TARGET, Scoring(batch_size=16), grid=defaults
        )
        # One configuration per method (the defaults), not the half-life x cold grid.
        assert [
            {k: c[k] for k in ("method", "half_life", "cold")} for c in e.choice["configurations"]
        ] == defaults
        assert e.choice["chosen"] == direct["chosen"]
        assert e.choice["queries"]["fit"] == inner_split(window, 16)
        assert [c["select_blocks_read"] for c in e.choice["configurations"]] == [
            c["select_blocks_read"] for c in direct["configurations"]
        ]
        # Held-out figures are whole: the naive store's match the unbounded run's exactly.
        assert e.naive["heldout_blocks_read"] == unbounded.naive["heldout_blocks_read"]
        assert e.naive["heldout_lookups"] == unbounded.naive["heldout_lookups"]
        assert e.action == "commit" and s.verify() == []
        assert np.array_equal(s.lookup("item", np.arange(8000)), before)
        chosen = e.result
    # What the real store reads on the held-out queries is the reported figure.
    with bandstore.open(path) as s:
        replay(s, trace.query_slice(0, split), batch_size=16)
        held = replay(s, trace.query_slice(split, trace.n_queries), batch_size=16)
        assert held.tables["item"]["blocks_read"] == chosen["heldout_blocks_read"]


def test_bounded_relayout_refuses_a_window_too_short_to_choose_on(tmp_path, trace):
    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    with bandstore.open(path, writable=True) as s:
        v = s.version
        # 20 lookups: a window of one batch, which the inner split cannot cut.
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, options=RelayoutOptions(batch_size=16, max_tuning_lookups=20))
        with pytest.raises(bandstore.InvalidArgumentError):
            relayout(s, trace, options=RelayoutOptions(batch_size=16, max_tuning_lookups=0))
        # A single method needs no inner split: a one-batch window is allowed.
        r = relayout(
            s,
            trace,
            method="frequency",
            dry_run=True,
            options=RelayoutOptions(batch_size=16, max_tuning_lookups=20),
        )
        assert r.tables["item"].policy_window["queries"] == 16
        assert s.version == v


def test_cli_max_tuning_lookups(tmp_path, trace, capsys):
    from bandstore.cli import main

    path = tmp_path / "s"
    create_store_for_trace(path, trace, dim=16).close()
    tf = tmp_path / "t.npz"
    trace.save(tf)
    args = ["relayout", str(path), str(tf), "--batch-size", "16", "--dry-run", "--method"]
    assert main([*args, "metis", "--max-tuning-lookups", "12000"]) == 0
    assert "policies chosen on the last" in capsys.readouterr().out
    assert main([*args, "metis", "--max-tuning-lookups", "0"]) == 0
    assert "chosen on the last" not in capsys.readouterr().out
