"""Options as frozen dataclasses, one spelling of "never", and where access counts came from."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

import bandstore
from bandstore import NEVER, CacheOptions, CountsOrigin, ServeOptions
from bandstore.errors import InvalidArgumentError
from bandstore.options import (
    DEFAULT_THRESHOLDS,
    RELAYOUT_THRESHOLDS,
    RelayoutOptions,
    SimOptions,
    SizingOptions,
    check_threshold,
    threshold_from_json,
    threshold_to_json,
)
from bandstore.serve.plan import Plan, TablePlan
from bandstore.traces.synth import synth
from bandstore.traces.trace import Trace

ROWS, DIM = 2000, 8


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s"
    rng = np.random.default_rng(0)
    with bandstore.create(path) as s:
        s.add_table("t", rng.standard_normal((ROWS, DIM)).astype(np.float32), progress=False)
        s.add_table("u", rng.standard_normal((ROWS // 2, DIM)).astype(np.float32), progress=False)
    return path


# ---- options -------------------------------------------------------------------------------
def test_options_are_frozen_and_validate_themselves():
    o = SizingOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.warmup = 0.5  # type: ignore[misc]
    assert o.sim.sample_rate == 0.01 and o.sim.thresholds == DEFAULT_THRESHOLDS
    assert o.with_sim(sample_rate=1.0).sim.sample_rate == 1.0 and o.sim.sample_rate == 0.01
    assert SimOptions().thresholds == DEFAULT_THRESHOLDS == (0, 1, 4, 16, NEVER)
    assert NEVER in RELAYOUT_THRESHOLDS  # the relayout grid is finer, a distinct name
    assert SimOptions(thresholds=[NEVER + 5, 3]).thresholds == (NEVER, 3)  # clamped, a tuple
    bad = [
        (lambda: SimOptions(sample_rate=0.0), "sample_rate"),
        (lambda: SimOptions(pinned_shares=(1.5,)), "pinned_shares"),
        (lambda: SimOptions(sampling="x"), "sampling"),
        (lambda: SimOptions(batch_size=0), "batch_size"),
        (lambda: SizingOptions(warmup=1.0), "warmup"),
        (lambda: SizingOptions(apply_counts="all"), "apply_counts"),
        (lambda: RelayoutOptions(inner_share=1.0), "inner_share"),
        (lambda: RelayoutOptions(max_tuning_lookups=0), "max_tuning_lookups"),
        (lambda: RelayoutOptions(half_lives=()), "half_lives"),
        (lambda: CacheOptions(cache_bytes=-1), "cache_bytes"),
        (lambda: CacheOptions(pinned_share={"t": 2.0}), "pinned_share['t']"),
        (lambda: ServeOptions(cache=5), "cache"),  # type: ignore[arg-type]
    ]
    for make, argument in bad:
        with pytest.raises(InvalidArgumentError) as exc:
            make()
        assert exc.value.argument == argument


# ---- one spelling of never -------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, -1, -5, 1.5, True, "never", "3"])
def test_python_thresholds_are_integers_or_never(value):
    with pytest.raises(InvalidArgumentError, match="NEVER"):
        check_threshold(value)
    with pytest.raises(InvalidArgumentError, match="NEVER"):
        SimOptions(thresholds=(0, value))


def test_json_and_command_line_spelling():
    assert threshold_to_json(NEVER) == "never" and threshold_to_json(4) == 4
    assert threshold_from_json("never") == threshold_from_json("Never ") == NEVER
    assert threshold_from_json(None) == NEVER  # catalogs written before "never"
    assert threshold_from_json(7) == threshold_from_json("7") == 7
    for bad in ("-1", -1, "none", "x"):
        with pytest.raises(InvalidArgumentError):
            threshold_from_json(bad)


def test_store_refuses_other_spellings_and_stores_never(store_path):
    with bandstore.open(store_path, writable=True) as s:
        with pytest.raises(InvalidArgumentError, match="NEVER"):
            s.configure_cache("t", threshold=-1)
        with pytest.raises(InvalidArgumentError, match="NEVER"):
            s.set_tuning({"t": {"cache_bytes": 4096, "threshold": None}})
        assert s.catalog.tuning("t") is None  # nothing stored
        s.set_tuning({"t": {"cache_bytes": 4096, "threshold": NEVER, "pinned_share": 0.5}})
        assert s.catalog.tuning("t")["threshold"] == "never"  # JSON's spelling
        assert s.cache_info()["t"]["threshold"] == NEVER  # Python's
        with pytest.raises(InvalidArgumentError, match="NEVER"):
            ServeOptions(cache=CacheOptions(threshold={"t": -1}))
    with pytest.raises(InvalidArgumentError, match="given twice"):
        bandstore.open(store_path, cache_bytes=1, options=ServeOptions(CacheOptions(cache_bytes=2)))
    opts = ServeOptions(cache=CacheOptions(cache_bytes=8192, threshold={"t": 3}, pinned_share=0.25))
    with bandstore.open(store_path, options=opts) as s:
        info = s.cache_info()
        assert info["t"]["threshold"] == 3 and info["u"]["threshold"] == NEVER  # no counts: never
        assert info["t"]["pinned_share"] == info["u"]["pinned_share"] == 0.25


def test_a_stored_null_threshold_still_reads_as_never(store_path):
    """Catalogs written before "never" stored null: they read as NEVER."""
    with bandstore.open(store_path, writable=True) as s:
        counts = np.arange(ROWS, dtype=np.int32)
        s.catalog.put_tuning({"t": {"cache_bytes": 8192, "threshold": None, "pinned_share": 0.0},
                              "u": {"cache_bytes": 8192, "threshold": 2, "pinned_share": 0.0}},
                             counts={"t": counts, "u": counts[: ROWS // 2]})  # fmt: skip
    with bandstore.open(store_path) as s:
        assert s.cache_info()["t"]["threshold"] == NEVER
        assert s.cache_info()["u"]["threshold"] == 2


def test_cli_threshold_spelling(store_path, tmp_path, capsys):
    from bandstore.cli import main

    trace = synth({"t": ROWS}, 64, pooling=4, seed=1)
    trace.save(tmp_path / "t.npz")
    base = ["replay", str(store_path), str(tmp_path / "t.npz"), "--json", "--threshold"]
    assert main([*base, "never"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cache"]["t"]["threshold"] == "never" and out["total"]["lookups"] > 0
    assert main([*base, "2"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"]["t"]["threshold"] == 2
    for bad in ("-1", "none"):
        assert main([*base, bad]) == 2  # a usage error
        assert "never" in capsys.readouterr().err


# ---- where the counts came from ----------------------------------------------------------------
def test_counts_origin_follows_the_last_writer(store_path):
    c = np.ones(ROWS, dtype=np.int64)
    with bandstore.open(store_path, writable=True) as s:
        assert s.counts_origin("t") is None  # no counts yet
        t0 = time.time()
        origin = CountsOrigin("my-job", trace="logs/", queries=10, lookups=40, detail="test")
        s.set_tuning({"t": {"cache_bytes": 4096}}, counts={"t": c}, counts_origin=origin)
        o = s.counts_origin("t")
        assert (o.writer, o.trace, o.queries, o.lookups, o.detail) == (
            "my-job", "logs/", 10, 40, "test")  # fmt: skip
        assert o.version == s.version and t0 <= o.time <= time.time()
        assert s.counts_origin("u") is None  # only the tables whose counts were written
        # Tuning without counts leaves the counts, and their origin, as they are.
        s.set_tuning({"t": {"cache_bytes": 8192}})
        assert s.counts_origin("t").writer == "my-job"
        # Counts written without an origin never keep the old one.
        s.set_tuning({"t": {"cache_bytes": 8192}}, counts={"t": 2 * c})
        assert s.counts_origin("t").writer == "set_tuning"
        # A relayout commits its counts with their origin, stamped with the new version.
        vid = s.relayout_tables({"t": np.arange(ROWS)[::-1].copy()}, counts={"t": c},
                                counts_origin=CountsOrigin("relayout"), progress=False)  # fmt: skip
        assert s.counts_origin("t").writer == "relayout" and s.counts_origin("t").version == vid
        # A plan's pinned counts, with the origin the planner gave them.
        tables = {"t": TablePlan("pinned", cache_bytes=64 * 4 * DIM),
                  "u": TablePlan("cached", cache_bytes=4096)}  # fmt: skip
        from_planner = {"t": CountsOrigin("plan", "x.npz", 5, 9)}
        plan = Plan(1, tables, counts={"t": 3 * c}, counts_origin=from_planner)
        bandstore.tune.apply_plan(s, plan)
        o = s.counts_origin("t")
        assert (o.writer, o.trace, o.queries, o.version) == ("plan", "x.npz", 5, s.version)
        assert np.array_equal(s.table_counts("t"), 3 * c)
    with bandstore.open(store_path) as s:  # stored: another opener sees it
        assert s.counts_origin("t").writer == "plan"
        with pytest.raises(bandstore.UnknownTableError):
            s.counts_origin("nope")


def test_size_cache_and_info_show_the_origin(store_path, tmp_path, capsys):
    from bandstore.cli import main

    trace = synth({"t": ROWS, "u": ROWS // 2}, 200, pooling=4, seed=2)
    trace.save(tmp_path / "trace.npz")
    loaded = Trace.load(tmp_path / "trace.npz")
    assert loaded.source == str(tmp_path / "trace.npz")
    assert loaded.query_slice(0, 10).source == loaded.select(["t"]).source == loaded.source
    assert trace.source is None  # built in memory
    with bandstore.open(store_path, writable=True) as s:
        bandstore.tune.size_cache(s, loaded, 1 << 16, apply=True, progress=False,
                                  options=SizingOptions().with_sim(n_sizes=8))  # fmt: skip
        o = s.counts_origin("u")
    assert o.writer == "size_cache" and o.trace == str(tmp_path / "trace.npz")
    assert o.queries == 200 and o.lookups == loaded.n_lookups("u") and o.detail == "whole trace"
    assert main(["info", str(store_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["tables"]["u"]["counts"]["recorded"]
        and info["tables"]["u"]["counts"]["origin"]["writer"] == "size_cache"
    )
    assert info["tables"]["u"]["counts"]["origin"]["trace"] == str(tmp_path / "trace.npz")
    assert main(["info", str(store_path)]) == 0
    text = capsys.readouterr().out
    assert f"access counts: size_cache from {tmp_path / 'trace.npz'} (200 queries" in text
