"""tune.sim: the simulator against the real store, sampling accuracy, sizing end to end."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bandstore
from bandstore.errors import (
    BudgetError,
    InvalidArgumentError,
    ReadOnlyError,
    UnknownTableError,
)
from bandstore.options import SimOptions, SizingOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.synth import synth
from bandstore.traces.trace import Trace
from bandstore.tune.measure import replay
from bandstore.tune.sim import (
    DEFAULT_WARMUP,
    block_sample,
    simulate,
    simulate_store,
    size_cache,
    stratified_sample,
)

NEVER = bandstore.NEVER
JIT = not numba.config.DISABLE_JIT
#: Plain Python kernels (NUMBA_DISABLE_JIT=1) are ~100x slower: smaller traces then.
Q = 1 if JIT else 4


def _sim(**kw) -> SimOptions:
    """Simulation options: one policy (no admission, nothing pinned) unless given."""
    return SimOptions(**{"thresholds": (NEVER,), "pinned_shares": (0.0,), **kw})


def _sizing(sim: dict | None = None, **kw) -> SizingOptions:
    """Sizing options with ``sim`` fields changed from size_cache's defaults."""
    return SizingOptions(**kw).with_sim(**(sim or {}))


def _store(path: Path, trace: Trace, dim: int = 8, block_size: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = bandstore.create(path, block_size=block_size)
    for name in trace.table_names:
        s.add_table(name, rng.standard_normal((trace.num_rows[name], dim)).astype(np.float32))
    return s


def _replay_counters(store, trace, name, counts, size, threshold, share, batch_size):
    store.set_tuning(
        {name: {"cache_bytes": int(size), "threshold": threshold, "pinned_share": float(share)}},
        counts={name: counts},
    )  # fmt: skip
    s = replay(store, trace.select([name]), batch_size=batch_size, progress=False).tables[name]
    return s["lookups"], s["misses"], s["blocks_read"]


# ---- exact simulation == the store, bit for bit ---------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_exact_simulation_matches_store_counters(tmp_path, batch_size):
    trace = synth({"a": 3000}, 600 // Q, pooling=8, zipf=1.0, community_size=16, seed=4)
    tune, held = trace.split(0.5)
    counts = tune.access_counts("a")
    crb = cache_row_bytes(8)
    sizes = [0, 5 * crb, 16 * crb, 100 * crb + 7, 700 * crb, 3000 * crb]
    thresholds = [0, 1, 3, NEVER]
    shares = [0.0, 0.4, 1.0]
    with _store(tmp_path / "s", trace) as store:
        layout, _ = store.table_layout("a")
        info = store.tables["a"]
        idx, off = held.table("a")
        cv = simulate(idx, off, layout, info.rows_per_block, info.dim, counts, sizes_bytes=sizes,
                      options=_sim(thresholds=thresholds, pinned_shares=shares,
                                   batch_size=batch_size))  # fmt: skip
        assert cv.exact and cv.lookups == idx.size
        for i, t in enumerate(thresholds):
            for j, p in enumerate(shares):
                for k, size in enumerate(sizes):
                    lookups, misses, blocks = _replay_counters(
                        store, held, "a", counts, size, t, p, batch_size
                    )
                    assert lookups == cv.lookups
                    assert (misses, blocks) == (cv.misses[i, j, k], cv.blocks_read[i, j, k]), (
                        t, p, size,
                    )  # fmt: skip


@st.composite
def _cases(draw):
    rows = draw(st.integers(1, 120))
    extra = draw(st.integers(0, 40))  # holes in the layout
    slots = np.random.default_rng(draw(st.integers(0, 2**31))).permutation(rows + extra)[:rows]
    n_queries = draw(st.integers(1, 40))
    bags = draw(st.lists(st.lists(st.integers(0, rows - 1), max_size=12),
                         min_size=n_queries, max_size=n_queries))  # fmt: skip
    counts = draw(st.lists(st.integers(0, 6), min_size=rows, max_size=rows))
    sizes = draw(st.lists(st.integers(0, rows + 5), min_size=1, max_size=3))
    thresholds = draw(st.lists(st.sampled_from([0, 1, 2, 5, NEVER]), min_size=1, max_size=2))
    shares = draw(st.lists(st.sampled_from([0.0, 0.3, 0.75, 1.0]), min_size=1, max_size=2))
    batch = draw(st.integers(1, 12))
    return rows, slots, bags, np.array(counts), sizes, thresholds, shares, batch


@given(_cases())
def test_exact_simulation_matches_store_on_random_layouts(case):
    rows, slots, bags, counts, size_rows, thresholds, shares, batch = case
    idx = np.array([i for b in bags for i in b], dtype=np.int64)
    off = np.zeros(len(bags) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in bags], out=off[1:])
    trace = Trace({"t": (idx, off)}, {"t": rows})
    crb = cache_row_bytes(8)
    sizes = [r * crb for r in size_rows]
    with tempfile.TemporaryDirectory() as d, _store(Path(d) / "s", trace) as store:
        store.relayout_tables({"t": slots}, progress=False)
        layout, _ = store.table_layout("t")
        assert np.array_equal(layout, slots)
        cv = simulate(idx, off, layout, store.tables["t"].rows_per_block, 8, counts,
                      sizes_bytes=sizes,
                      options=_sim(thresholds=thresholds, pinned_shares=shares,
                                   batch_size=batch))  # fmt: skip
        for i, t in enumerate(thresholds):
            for j, p in enumerate(shares):
                for k, size in enumerate(sizes):
                    got = _replay_counters(store, trace, "t", counts, size, t, p, batch)
                    assert got[1:] == (cv.misses[i, j, k], cv.blocks_read[i, j, k])


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_size_cache_exact_prediction_is_what_the_store_reads(tmp_path, warmup):
    trace = synth({"big": 20000, "mid": 3000, "small": 100}, 1500 // Q,
                  pooling={"big": 12, "mid": 5, "small": 2}, seed=2)  # fmt: skip
    with _store(tmp_path / "s", trace, dim=16, block_size=1024) as store:
        budget = 3000 * cache_row_bytes(16)
        # apply_counts="warmup": the store admits and pins by the counts the simulation used.
        options = _sizing(dict(sample_rate=1.0, n_sizes=33, pinned_shares=(0.0, 0.5)),
                          warmup=warmup, apply_counts="warmup")  # fmt: skip
        result = size_cache(store, trace, budget, apply=True, progress=False, options=options)
    assert result.allocated_bytes <= budget
    assert sum(t.cache_bytes for t in result.tables.values()) == result.allocated_bytes
    first, rest = trace.split(warmup) if warmup else (None, trace)
    assert result.warmup_queries == (first.n_queries if first else 0)
    with bandstore.open(tmp_path / "s") as store:  # the stored sizes are the default now
        info = store.cache_info()
        for name, t in result.tables.items():
            assert info[name]["cache_bytes"] == t.cache_bytes
            assert info[name]["threshold"] == t.threshold
            assert info[name]["pinned_share"] == t.pinned_share
        if first is not None:
            replay(store, first, batch_size=256, progress=False)  # warm, as predicted
        measured = replay(store, rest, batch_size=256, progress=False)
    for name, t in result.tables.items():
        assert measured.tables[name]["lookups"] == t.lookups
        assert measured.tables[name]["blocks_read"] == t.predicted_blocks_read
        assert measured.tables[name]["hit_ratio"] == pytest.approx(t.predicted_hit_ratio)
    assert measured.total["blocks_read"] == result.total["predicted_blocks_read"]
    if warmup:  # the counts stored are those of the warm-up part
        with bandstore.open(tmp_path / "s") as store:
            assert np.array_equal(store.catalog.counts("big"), first.access_counts("big"))
    assert result.applied_counts == "warmup"


def _full_counts(trace: Trace, name: str, rows: int) -> np.ndarray:
    c = np.zeros(rows, dtype=np.int64)
    tc = trace.access_counts(name)
    c[: tc.size] = tc
    return c


@pytest.mark.parametrize("mode", [None, "trace", "warmup"])
def test_apply_stores_the_whole_trace_counts_by_default(tmp_path, mode):
    trace = synth({"a": 4000, "b": 500}, 400 // Q, pooling={"a": 6, "b": 2}, seed=4)
    first, _ = trace.split(0.5)
    kw = {} if mode is None else {"apply_counts": mode}
    with _store(tmp_path / "s", trace) as store:
        options = _sizing({"n_sizes": 8}, warmup=0.5, **kw)
        r = size_cache(store, trace, 10**5, apply=True, progress=False, options=options)
        rows = {n: store.tables[n].rows for n in ("a", "b")}
        origins = {n: store.counts_origin(n) for n in ("a", "b")}
        version = store.version
    assert r.applied_counts == (mode or "trace")
    part = first if mode == "warmup" else trace
    for name in ("a", "b"):  # where the stored counts came from: the part they counted
        o = origins[name]
        assert o is not None and o.writer == "size_cache" and o.version == version
        assert o.queries == part.n_queries and o.lookups == part.n_lookups(name)
        assert o.detail == ("warm-up part" if mode == "warmup" else "whole trace")
    with bandstore.open(tmp_path / "s") as store:
        for name in ("a", "b"):
            stored = store.catalog.counts(name)
            expected = _full_counts(part, name, rows[name])
            other = _full_counts(trace if mode == "warmup" else first, name, rows[name])
            assert not np.array_equal(expected, other)  # the two modes are told apart
            assert np.array_equal(stored, expected)
            assert int(stored.sum()) == part.n_lookups(name)


def test_apply_counts_must_be_trace_or_warmup(small):
    store, trace = small
    for bad in ("all", "", None, 1, "Trace"):
        with pytest.raises(InvalidArgumentError, match="apply_counts") as exc:
            size_cache(store, trace, 10**6, apply=True, progress=False,
                       options=SizingOptions(apply_counts=bad))  # fmt: skip
        assert exc.value.argument == "apply_counts"
    assert store.catalog.tuning("a") is None  # nothing was stored


def test_curves_have_32_sizes_and_are_consistent():
    trace = synth({"t": 50000}, 400, pooling=10, seed=1)
    idx, off = trace.table("t")
    cv = simulate(idx, off, np.arange(50000), 32, 32, trace.access_counts("t"),
                  options=_sim(thresholds=[0, NEVER], pinned_shares=[0.0, 0.5]))  # fmt: skip
    assert cv.sizes_bytes.size >= 32 and cv.sizes_bytes[0] == 0
    assert np.all(np.diff(cv.sizes_bytes) > 0)
    assert cv.miss_ratio.shape == (2, 2, cv.sizes_bytes.size)
    assert np.all(cv.miss_ratio[:, :, 0] == 1.0)  # no cache: every lookup misses
    assert np.all((cv.miss_ratio >= 0) & (cv.miss_ratio <= 1))
    assert np.all(cv.blocks_read <= cv.misses)
    env, ti, pi = cv.envelope()
    assert np.all(env == cv.blocks_read.reshape(4, -1).min(axis=0))
    assert json.dumps(cv.as_dict())


# ---- sampling ---------------------------------------------------------------------------------
def test_block_sample_rate_and_determinism():
    m = block_sample(200_000, 0.05, seed=3)
    assert abs(m.mean() - 0.05) < 0.003
    assert np.array_equal(m, block_sample(200_000, 0.05, seed=3))
    assert not np.array_equal(m, block_sample(200_000, 0.05, seed=4))
    assert block_sample(1000, 1.0).all()


def test_stratified_sample_takes_its_share_of_every_stratum():
    lookups = np.random.default_rng(0).zipf(1.5, 10_000)
    lookups[::7] = 0  # blocks never read are never sampled
    m = stratified_sample(lookups, 0.1, seed=1)
    read = np.flatnonzero(lookups)
    assert abs(int(m.sum()) - 0.1 * read.size) <= 1
    assert not m[lookups == 0].any()
    hot = read[np.argsort(-lookups[read], kind="stable")][:100]
    assert 9 <= m[hot].sum() <= 11


def test_sampled_rate_one_is_exact():
    trace = synth({"t": 20000}, 300, pooling=10, seed=5)
    idx, off = trace.table("t")
    args = (idx, off, np.arange(20000), 16, 16, trace.access_counts("t"))
    kw = {"thresholds": [0, NEVER], "pinned_shares": [0.0, 0.5], "n_sizes": 10}
    a = simulate(*args, options=_sim(**kw))
    b = simulate(*args, options=_sim(sample_rate=1.0, sampling="stratified", **kw))
    assert np.array_equal(a.misses, b.misses) and np.array_equal(a.blocks_read, b.blocks_read)
    # A table whose sample would be too small runs at a higher rate (here: exact).
    c = simulate(*args, options=_sim(sample_rate=0.01, min_sampled_blocks=2000, **kw))
    assert c.exact and np.array_equal(a.misses, c.misses)


@pytest.mark.skipif(not JIT, reason="accuracy needs a trace too large for NUMBA_DISABLE_JIT")
def test_sampled_curves_are_close_to_exact():
    rows = 400_000
    trace = synth({"t": rows}, 20_000, pooling=20, zipf=0.9, seed=7)
    idx, off = trace.table("t")
    args = (idx, off, np.arange(rows), 32, 32, trace.access_counts("t"))
    kw = {"thresholds": [0, 4, NEVER], "pinned_shares": [0.0, 0.5], "n_sizes": 12}
    exact = simulate(*args, options=_sim(**kw))
    for sampling in ("hash", "stratified"):
        errs = []
        for seed in range(2):
            s = simulate(*args, options=_sim(sample_rate=0.2, min_sampled_blocks=0, seed=seed,
                                             sampling=sampling, **kw))  # fmt: skip
            assert not s.exact and s.sampled_lookups < 0.35 * idx.size
            errs.append(np.abs(s.miss_ratio - exact.miss_ratio).mean())
        assert np.mean(errs) < 0.015, (sampling, errs)


@pytest.mark.skipif(not JIT, reason="accuracy needs a trace too large for NUMBA_DISABLE_JIT")
def test_sampled_blocks_of_a_skewed_table_with_small_caches():
    """Blocks read count the batches a row misses in, not its lookups: on a skewed table whose
    hottest rows repeat within a batch, the sampled blocks at no or little cache stay close to
    the exact ones (one factor for misses and blocks was off by 40% on such a criteo table)."""
    rows = 400_000
    trace = synth({"t": rows}, 40_000, pooling=1, zipf=1.1, seed=11)
    idx, off = trace.table("t")
    args = (idx, off, np.arange(rows), 16, 16)
    sizes = [0, 64 * 16, 64 * 1024]
    exact = simulate(*args, sizes_bytes=sizes, options=_sim(batch_size=1024))
    for seed in range(3):
        sampled = _sim(batch_size=1024, sample_rate=0.1, min_sampled_blocks=0, seed=seed)
        s = simulate(*args, sizes_bytes=sizes, options=sampled)
        assert not s.exact
        rel = np.abs(s.blocks_read[0, 0] / exact.blocks_read[0, 0] - 1.0)
        assert rel.max() < 0.05, (seed, rel)


# ---- store-level API and errors ---------------------------------------------------------------
@pytest.fixture
def small(tmp_path):
    trace = synth({"a": 4000, "b": 500}, 300, pooling={"a": 6, "b": 2}, seed=3)
    store = _store(tmp_path / "s", trace)
    yield store, trace
    store.close()


def test_simulate_store_uses_the_trace_counts_or_the_stored_ones(small):
    store, trace = small
    curves = simulate_store(store, trace, progress=False,
                            options=_sim(thresholds=[0, NEVER], n_sizes=8))  # fmt: skip
    assert set(curves) == {"a", "b"}
    assert curves["a"].thresholds.tolist() == [0, NEVER]
    # The store has no counts yet: it never admits neighbours, so only NEVER is simulated.
    stored = simulate_store(store, trace, counts="store", options=_sim(n_sizes=8), progress=False)
    assert stored["a"].thresholds.tolist() == [NEVER]


def test_budget_errors(small):
    store, trace = small
    needed = min(min(t.rows, t.rows_per_block) * cache_row_bytes(t.dim)
                 for t in store.tables.values())  # fmt: skip
    with pytest.raises(BudgetError) as exc:
        size_cache(store, trace, needed - 1, progress=False)
    assert exc.value.needed == needed and exc.value.budget == needed - 1
    assert "smallest useful cache" in str(exc.value)
    with pytest.raises(BudgetError):
        size_cache(store, trace, -5, progress=False)
    with pytest.raises(InvalidArgumentError):
        size_cache(store, trace, 1.5e6, progress=False)  # type: ignore[arg-type]
    # Exactly the smallest useful cache is accepted: one table gets it, the other none.
    r = size_cache(store, trace, needed, options=_sizing({"n_sizes": 8}), progress=False)
    assert r.allocated_bytes <= needed


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01, float("nan"), "x"])
def test_bad_sample_rate(small, rate):
    store, trace = small
    with pytest.raises(InvalidArgumentError) as exc:
        size_cache(store, trace, 10**6, options=_sizing({"sample_rate": rate}), progress=False)
    assert exc.value.argument == "sample_rate"
    idx, off = trace.table("a")
    with pytest.raises(InvalidArgumentError):
        simulate(idx, off, np.arange(4000), 64, 8, options=_sim(sample_rate=rate))


def test_empty_trace_and_unknown_tables(small):
    store, trace = small
    empty = Trace({"a": (np.zeros(0, np.int64), np.zeros(1, np.int64))}, {"a": 4000})
    with pytest.raises(InvalidArgumentError, match="empty"):
        size_cache(store, empty, 10**6, progress=False)
    no_lookups = Trace({"a": (np.zeros(0, np.int64), np.zeros(5, np.int64))})
    with pytest.raises(InvalidArgumentError, match="empty"):
        size_cache(store, no_lookups, 10**6, progress=False)
    other = Trace({"a": trace.table("a"), "zzz": trace.table("b")})
    with pytest.raises(UnknownTableError) as exc:
        size_cache(store, other, 10**6, progress=False)
    assert exc.value.table == "zzz"
    too_big = Trace({"b": trace.table("b")}, {"b": 10_000})
    with pytest.raises(InvalidArgumentError, match="rows"):
        size_cache(store, too_big, 10**6, progress=False)
    with pytest.raises(UnknownTableError):
        size_cache(store, trace, 10**6, counts={"nope": np.zeros(3, np.int64)}, progress=False)


def test_bad_policies(small):
    store, trace = small
    for kw in ({"thresholds": [-1]}, {"thresholds": []}, {"pinned_shares": [1.5]},
               {"pinned_shares": []}, {"batch_size": 0}, {"sampling": "x"},
               {"estimator": "x"}, {"thresholds": [None]}, {"thresholds": [1.5]}):  # fmt: skip
        with pytest.raises(InvalidArgumentError) as exc:
            size_cache(store, trace, 10**6, progress=False, options=_sizing(kw))
        assert exc.value.argument == next(iter(kw))
    for warmup in (1.0, -0.1):
        with pytest.raises(InvalidArgumentError):
            size_cache(store, trace, 10**6, progress=False, options=_sizing(warmup=warmup))
    with pytest.raises(InvalidArgumentError, match="NEVER"):
        SimOptions(thresholds=(0, None))  # one spelling of never: bandstore.NEVER
    with pytest.raises(InvalidArgumentError, match="NEVER"):
        SimOptions(thresholds=(-1,))


def test_apply_needs_a_writable_store(tmp_path, small):
    store, trace = small
    store.close()
    with bandstore.open(tmp_path / "s") as ro, pytest.raises(ReadOnlyError):
        size_cache(ro, trace, 10**6, apply=True, progress=False)


def test_table_layout_is_read_only(small):
    store, _ = small
    layout, inverse = store.table_layout("a")
    assert layout.shape == (4000,) and not layout.flags.writeable
    assert np.array_equal(inverse[layout], np.arange(4000))
    with pytest.raises(ValueError):
        layout[0] = 1


def test_apply_gives_unread_tables_no_cache(small):
    store, trace = small
    r = size_cache(store, trace.select(["a"]), 10**5, apply=True, progress=False,
                   options=_sizing({"n_sizes": 8}))  # fmt: skip
    assert set(r.tables) == {"a"}
    info = store.cache_info()
    assert info["b"]["cache_bytes"] == 0
    assert store.catalog.tuning("b")["note"] == "not read by the sizing trace"


def test_plot_is_written(small, tmp_path):
    pytest.importorskip("matplotlib")
    store, trace = small
    out = tmp_path / "curves.png"
    r = size_cache(store, trace, 10**5, plot=out, progress=False, options=_sizing({"n_sizes": 8}))
    assert r.plot == str(out) and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the command ------------------------------------------------------------------------------
def test_cli_size_cache(tmp_path, capsys):
    from bandstore.cli import main

    trace = synth({"a": 4000, "b": 500}, 300 // Q, pooling={"a": 6, "b": 2}, seed=3)
    trace.save(tmp_path / "t.npz")
    _store(tmp_path / "s", trace).close()
    args = ["size-cache", str(tmp_path / "s"), str(tmp_path / "t.npz"), "--budget", "100K",
            "--thresholds", "0", "4", "never", "--pinned-shares", "0", "0.5", "--json"]  # fmt: skip
    assert main(args + ["--apply"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("predicted_hit_ratio", "predicted_blocks_read", "cache_bytes"):
        assert key in out["total"]
        for name in ("a", "b"):
            assert key in out["tables"][name]
    assert out["applied"] and out["total"]["cache_bytes"] <= 100 * 1024
    with bandstore.open(tmp_path / "s") as s:
        assert s.cache_info()["a"]["cache_bytes"] == out["tables"]["a"]["cache_bytes"]
    with bandstore.open(tmp_path / "s") as s:  # the whole trace's counts by default
        assert np.array_equal(s.catalog.counts("a")[:4000], _full_counts(trace, "a", 4000))
    assert main(args + ["--apply", "--apply-counts", "warmup"]) == 0
    assert json.loads(capsys.readouterr().out)["applied_counts"] == "warmup"
    with bandstore.open(tmp_path / "s") as s:
        first, _ = trace.split(DEFAULT_WARMUP)  # size_cache's default warm-up share
        assert np.array_equal(s.catalog.counts("a"), _full_counts(first, "a", 4000))
    assert main(args + ["--apply", "--apply-counts", "all"]) == 2  # usage: main returns it
    assert "--apply-counts" in capsys.readouterr().err
    assert main(args[:-1]) == 0  # text
    text = capsys.readouterr().out
    assert "total" in text and "hit ratio" in text
    assert main(args[:4] + ["10", "--json"]) == 1  # budget too small: a clear error
    assert "smallest useful cache" in capsys.readouterr().err
    assert main(args[:4] + ["1M", "--sample-rate", "0"]) == 2
    assert "--sample-rate: must be in (0, 1]" in capsys.readouterr().err


def test_a_table_the_measured_queries_do_not_read_gets_no_cache(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    a_idx = rng.integers(0, 3000, n * 5)
    a_off = np.arange(0, n * 5 + 1, 5)
    b_off = np.concatenate([np.arange(0, n // 2 * 3 + 1, 3), np.full(n // 2, n // 2 * 3)])
    b_idx = rng.integers(0, 800, n // 2 * 3)  # b is read in the first half only
    trace = Trace({"a": (a_idx, a_off), "b": (b_idx, b_off)}, {"a": 3000, "b": 800})
    with _store(tmp_path / "s", trace) as store:
        r = size_cache(store, trace, 10**5, progress=False,
                       options=_sizing({"n_sizes": 8}, warmup=0.5))  # fmt: skip
        assert r.tables["b"].lookups == 0 and r.tables["b"].cache_bytes == 0
        assert r.tables["a"].cache_bytes > 0
        with pytest.raises(InvalidArgumentError, match="nothing to predict"):
            size_cache(store, trace.select(["b"]), 10**5, progress=False,
                       options=_sizing(warmup=0.5))  # fmt: skip
    idx, off = trace.table("a")
    with pytest.raises(InvalidArgumentError):
        simulate(idx, off, np.arange(3000), 64, 8, warmup_queries=n + 1)


def test_exact_pass_makes_sampled_sizing_predict_what_the_store_reads(tmp_path):
    """With sampled curves, the sizes near each choice are simulated again exactly and the
    split made on those: the chosen points' predictions are then exact (what the store reads),
    and the choice stays within the budget; exact_window=0 keeps the sampled choice."""
    trace = synth({"big": 20000, "mid": 3000, "small": 100}, 1500 // Q,
                  pooling={"big": 12, "mid": 5, "small": 2}, seed=2)  # fmt: skip
    budget = 3000 * cache_row_bytes(16)
    sim = dict(sample_rate=0.1, min_sampled_blocks=0, max_sampled_lookups=None, n_sizes=17,
               pinned_shares=(0.0, 0.5))  # fmt: skip
    with _store(tmp_path / "s", trace, dim=16, block_size=1024) as store:
        plain = size_cache(store, trace, budget, progress=False,
                           options=_sizing(sim, warmup=0.5, exact_window=0))  # fmt: skip
        result = size_cache(store, trace, budget, apply=True, progress=False,
                            options=_sizing(sim, warmup=0.5, apply_counts="warmup"))  # fmt: skip
    assert all(t.exact_points is None for t in plain.tables.values())
    assert not plain.exact_curves
    assert result.allocated_bytes <= budget
    for name, t in result.tables.items():
        assert t.effective_sample_rate < 1.0
        exact = result.exact_curves[name]
        assert t.exact_points == exact.sizes_bytes.size >= 2
        assert exact.exact and 0 in exact.sizes_bytes and t.cache_bytes in exact.sizes_bytes
        assert not result.curves[name].exact  # the whole sampled curves, as before
    assert "curves" not in result.as_dict() and json.dumps(result.as_dict())
    first, rest = trace.split(0.5)
    with bandstore.open(tmp_path / "s") as store:
        replay(store, first, batch_size=256, progress=False)
        measured = replay(store, rest, batch_size=256, progress=False)
    for name, t in result.tables.items():
        assert measured.tables[name]["blocks_read"] == t.predicted_blocks_read
    assert measured.total["blocks_read"] == result.total["predicted_blocks_read"]


def test_default_warmup_share(small):
    """size_cache chooses on the queries after its default warm-up share (0.7)."""
    store, trace = small
    r = size_cache(store, trace, 10**5, options=_sizing({"n_sizes": 8}), progress=False)
    assert DEFAULT_WARMUP == 0.7
    assert r.warmup_queries == int(round(DEFAULT_WARMUP * trace.n_queries))


@pytest.mark.parametrize("mode", ["trace", "warmup"])
def test_applied_thresholds_follow_the_applied_counts(tmp_path, mode):
    """A threshold chosen on the warm-up part's counts is stored scaled (rounded up) by the
    ratio of the applied counts to those, so the store admits the neighbours the simulation
    admitted; with the warm-up counts applied it is stored as chosen."""
    trace = synth({"a": 4000, "b": 500}, 400 // Q, pooling={"a": 6, "b": 2}, seed=4)
    first, _ = trace.split(0.5)
    with _store(tmp_path / "s", trace) as store:
        options = _sizing({"n_sizes": 8, "thresholds": [4]}, warmup=0.5, apply_counts=mode)
        r = size_cache(store, trace, 10**5, apply=True, progress=False, options=options)
        info = store.cache_info()
    for name in ("a", "b"):
        t = r.tables[name]
        if mode == "warmup":
            assert t.threshold == 4 and t.simulated_threshold is None
        else:
            ratio = trace.n_lookups(name) / first.n_lookups(name)
            assert t.simulated_threshold == 4
            assert t.threshold == math.ceil(4 * ratio - 1e-9) > 4
        assert info[name]["threshold"] == t.threshold  # what the store serves with
