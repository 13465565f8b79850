"""The planner: strategies against references, the executor, plans, budgets, replanning."""

from __future__ import annotations

import json
import threading
import time

import numba
import numpy as np
import pytest
from helpers import check_against_reference, make_store, random_request, random_tables
from hypothesis import given
from hypothesis import strategies as st
from reference import embedding_bag_ref

import bandstore
import bandstore.tune
from bandstore.kernels import cache as kc
from bandstore.serve.cache import cache_row_bytes
from bandstore.serve.strategies import Job, _owner_of
from bandstore.traces.synth import synth
from bandstore.tune.planning import (
    Plan,
    apply_plan,
    compare_plans,
    make_plan,
    profile_trace,
    replan,
    uniform_plan,
)
from bandstore.tune.planning.calibrate import Calibration, default_calibration

DIM = 4
SIZES = {"a": 300, "b": 1000, "c": 40, "d": 700}

# Every strategy, and split variants, on a 2-worker store.
ALL_STRATEGIES = {
    "workers": 2,
    "tables": {
        "a": {"strategy": "resident", "worker": 1},
        "b": {
            "strategy": "split",
            "inner": "cached",
            "workers": [0, 1],
            "cache_bytes": 60 * cache_row_bytes(DIM),
            "replicate": [1, 2, 3, 500],
        },
        "c": {"strategy": "direct", "worker": 1},
        "d": {"strategy": "split", "inner": "resident", "workers": [1, 0]},
    },
}
OTHER_SPLITS = {
    "workers": 3,
    "tables": {
        "a": {"strategy": "split", "inner": "direct", "workers": [2, 0, 1]},
        "b": {
            "strategy": "split",
            "inner": "cached",
            "workers": [0, 1, 2],
            "cache_bytes": 10 * cache_row_bytes(DIM),
        },
        "c": {"strategy": "cached", "worker": 2, "cache_bytes": 5 * cache_row_bytes(DIM)},
        "d": {"strategy": "resident", "worker": 0},
    },
}


def _lru_free_curve(store, name, indices, offsets, batch_size):
    """A stand-in curve (misses fall linearly to the distinct rows), so that a
    NUMBA_DISABLE_JIT run does not simulate every table in plain Python (it can: the
    `plan` command test below uses the real simulator either way)."""
    t = store.tables[name]
    n, distinct = indices.size, np.unique(indices).size
    full = distinct * cache_row_bytes(t.dim)
    return [0, full], [1.0, distinct / n], [1.0, distinct / n / t.rows_per_block]


CURVES = _lru_free_curve if numba.config.DISABLE_JIT else None


@pytest.fixture(scope="module")
def weights():
    return random_tables(SIZES, DIM, seed=7)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, weights):
    return make_store(tmp_path_factory.mktemp("plan") / "store", weights)


# ---- strategies against the reference ---------------------------------------------------------
@pytest.mark.parametrize("verify", [True, False], ids=["verified", "unverified"])
@pytest.mark.parametrize("plan", [ALL_STRATEGIES, OTHER_SPLITS], ids=["all", "splits"])
@given(seed=st.integers(0, 2**31), mode=st.sampled_from(["sum", "mean", "max"]),
       weighted=st.booleans(), pad=st.one_of(st.none(), st.integers(0, 39)))  # fmt: skip
def test_every_strategy_matches_the_reference(store_path, weights, plan, verify, seed, mode,
                                              weighted, pad):  # fmt: skip
    """Unverified reads take the decode passes' own prefetching path (no checksum pass)."""
    rng = np.random.default_rng(seed)
    weighted = weighted and mode == "sum"
    with bandstore.open(
        store_path, plan=plan, options=bandstore.ServeOptions(verify_reads=verify)
    ) as s:
        for _ in range(3):  # the caches warm up between calls
            req = random_request(rng, weights)
            if weighted:
                req = {n: (i, o, rng.random(i.size)) for n, (i, o) in req.items()}
            check_against_reference(s, weights, req, mode, pad)
        for n, w in weights.items():
            ids = rng.integers(0, w.shape[0], 40)
            assert np.array_equal(s.lookup(n, ids), w[ids])  # bit for bit
        st_ = s.stats()
        for n in weights:
            assert st_[n]["lookups"] == st_[n]["hits"] + st_[n]["misses"] > 0
        assert st_["a" if plan is ALL_STRATEGIES else "d"]["misses"] == 0  # resident
        assert st_["c" if plan is ALL_STRATEGIES else "a"]["hits"] == 0  # direct


def test_direct_is_a_zero_byte_cache_bit_for_bit(store_path, weights, rng):
    direct = {"workers": 1, "tables": {n: {"strategy": "direct"} for n in SIZES}}
    with (
        bandstore.open(store_path, plan=direct) as d,
        bandstore.open(store_path, cache_bytes=0, plan=False) as c,
    ):
        for mode in ("sum", "mean", "max"):
            req = random_request(rng, weights, n_bags=30)
            a, b = d.lookup_many(req, mode=mode), c.lookup_many(req, mode=mode)
            for n in req:
                assert np.array_equal(a[n], b[n])
        sd, sc = d.stats(), c.stats()
        for n in SIZES:
            for k in ("lookups", "misses", "blocks_read", "bytes_read", "useful_bytes"):
                assert sd[n][k] == sc[n][k], (n, k)


def test_split_parts_own_their_ids_and_replicas_spread():
    ids = np.arange(100_000, dtype=np.int64)
    owner = _owner_of(ids, 3)
    counts = np.bincount(owner, minlength=3)
    assert counts.min() > 30_000  # the hash spreads ids evenly
    from bandstore.kernels.resident import _split_select

    hot = np.packbits(np.isin(np.arange(64), [5]), bitorder="little")
    req_ids = np.array([5] * 8 + [6, 7], dtype=np.int64)
    off = np.array([0, 2, 4, 6, 8, 10], dtype=np.int64)  # 5 bags; id 5 in bags 0..3: parts
    # by bag range (b * 2 // 5): bags 0-2 -> part 0, bags 3-4 -> part 1
    got = []
    for part in range(2):
        sub, so, bn = np.empty(11, np.int64), np.empty(6, np.int64), np.empty(5, np.int64)
        m = _split_select(req_ids, off, np.empty(0, np.float32), -1, 2, part, hot, sub,
                          so, np.empty(0, np.float32), bn)  # fmt: skip
        got.append(sub[:m].tolist())
    assert got[0].count(5) == 6 and got[1].count(5) == 2  # replicated: by bag range
    assert sorted(got[0] + got[1]) == sorted(req_ids.tolist())


@given(
    st.lists(st.integers(0, 1999), max_size=300),
    st.lists(st.integers(0, 1999), min_size=1, max_size=400),
    st.integers(2, 4),
)
def test_split_routing_matches_its_definition(replicate, ids, parts):
    """Every id goes to exactly one part: its owner by hash, or for a replicated id the part of
    its bag range (with the bitmap prefetched ahead, so ids near the end too)."""
    from bandstore.kernels.resident import _split_select

    rows = 2000
    rep = np.unique(np.asarray(replicate, dtype=np.int64))
    bits = np.zeros(rows, bool)
    bits[rep] = True
    hot = np.packbits(bits, bitorder="little") if rep.size else np.zeros(0, np.uint8)
    ids = np.asarray(ids, dtype=np.int64)
    n_bags = max(1, ids.size // 3)
    off = np.linspace(0, ids.size, n_bags + 1).astype(np.int64)
    bag = np.repeat(np.arange(n_bags), np.diff(off))
    want = np.where(bits[ids], bag * parts // n_bags, _owner_of(ids, parts))
    for part in range(parts):
        sub, so, bn = np.empty(ids.size + 1, np.int64), np.empty(n_bags + 1, np.int64), \
            np.empty(n_bags, np.int64)  # fmt: skip
        m = _split_select(ids, off, np.empty(0, np.float32), -1, parts, part, hot, sub, so,
                          np.empty(0, np.float32), bn)  # fmt: skip
        assert sub[:m].tolist() == ids[want == part].tolist()
        assert bn.tolist() == np.bincount(bag[want == part], minlength=n_bags).tolist()


def test_split_parts_share_one_slot_index_consistently(store_path, weights):
    rng = np.random.default_rng(5)
    with bandstore.open(store_path, plan=ALL_STRATEGIES) as s:
        runner = s._tables["b"].runner
        threads = [
            threading.Thread(
                target=lambda: [s.lookup_many(random_request(rng, weights)) for _ in range(20)]
            )
            for _ in range(3)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        shared = runner.caches[0].slot_of_id
        owner = _owner_of(np.arange(SIZES["b"], dtype=np.int64), 2)
        hot = set(runner.replicate.tolist())
        seen = set()
        for j, c in enumerate(runner.caches):
            assert c.slot_of_id is shared
            assert c.pinned == len(hot) and c.filled > c.pinned  # warmed beyond the replicas
            for slot in range(c.filled):
                row = int(c.id_of_slot[slot])
                assert shared[row] & kc.SLOT_MASK == slot  # (bit 30: the CLOCK reference bit)
                assert row in hot or (owner[row] == j and row not in seen)
                if row not in hot:
                    seen.add(row)
        cached = np.flatnonzero(shared >= 0)
        assert set(cached.tolist()) == seen | hot


# ---- the executor -----------------------------------------------------------------------------
def test_parallel_results_equal_sequential_under_concurrent_callers(store_path, weights):
    rng = np.random.default_rng(3)
    requests = [random_request(rng, weights, n_bags=20) for _ in range(24)]
    stateless = {  # no cache: results cannot depend on call order, so they must be identical
        "workers": 2,
        "tables": {
            "a": {"strategy": "resident", "worker": 1},
            "b": {"strategy": "split", "inner": "resident", "workers": [0, 1]},
            "c": {"strategy": "direct", "worker": 0},
            "d": {"strategy": "split", "inner": "direct", "workers": [1, 0]},
        },
    }
    with bandstore.open(store_path, plan=stateless, workers=1) as s:
        expected = [s.lookup_many(r) for r in requests]
    for plan in (stateless, ALL_STRATEGIES):
        with bandstore.open(store_path, plan=plan) as s:
            assert s.workers == 2
            results: dict[tuple[int, int], dict] = {}

            def caller(k: int, s=s, results=results) -> None:
                for i, r in enumerate(requests):
                    results[(k, i)] = s.lookup_many(r)

            threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            for (_, i), out in results.items():
                for n in weights:
                    if plan is stateless:
                        assert np.array_equal(out[n], expected[i][n])
                    else:
                        np.testing.assert_allclose(out[n], expected[i][n], rtol=1e-5, atol=1e-5)
            st_ = s.stats()
            total = sum(int(r[n][0].size) for r in requests for n in r) * 4
            assert st_["total"]["lookups"] == total
            assert st_["total"]["lookups"] == st_["total"]["hits"] + st_["total"]["misses"]
            assert st_["total"]["lookup_many_calls"] == 4 * len(requests)
            assert 0 < st_["total"]["lookup_many_p50_us"] <= st_["total"]["lookup_many_p99_us"]
            # No measured break-even stored: every call used the workers.
            assert st_["total"]["lookup_many_parallel_calls"] == 4 * len(requests)
            assert st_["total"]["lookup_many_inline_calls"] == 0


def test_calls_below_the_break_even_run_inline(store_path, weights, tmp_path):
    """A call whose estimated work is below the calibrated break-even of two workers runs on
    the calling thread alone (same results); a table not timed yet counts as no work, so it is
    served inline, and timed."""
    import shutil

    from bandstore.tune.planning.calibrate import Calibration

    rng = np.random.default_rng(5)
    requests = [random_request(rng, weights) for _ in range(6)]
    with bandstore.open(store_path, plan=ALL_STRATEGIES, workers=1) as s:
        expected = [s.lookup_many(r) for r in requests]
    with bandstore.open(store_path, plan=ALL_STRATEGIES) as s:
        ex = s._executor
        assert ex.workers == 2 and ex.inline_below is None  # none stored yet
        ex.inline_below = (1e12, 0.0)  # every call is "small"
        handed = _CountingQueue(ex._queues[0])  # what is handed to the helper
        ex._queues[0] = handed
        outs = [s.lookup_many(requests[0])]
        assert set(ex.busy.per_lookup) == set(requests[0])  # timed (CPU ns per lookup)
        assert all(v > 0 for v in ex.busy.per_lookup.values())
        outs += [s.lookup_many(r) for r in requests[1:]]
        st_ = s.stats()["total"]
        assert st_["lookup_many_inline_calls"] == len(requests)
        assert st_["lookup_many_parallel_calls"] == 0 and handed.puts == 0
        ex.inline_below = (0.0, 0.0)  # nothing is small
        outs.append(s.lookup_many(requests[0]))
        assert s.stats()["total"]["lookup_many_parallel_calls"] == 1 and handed.puts == 1
        from bandstore.serve.runtime import attach

        attach(s)  # a new executor (as a new plan installs): the counts carry on
        assert s._executor is not ex
        s.lookup_many(requests[0])
        st_ = s.stats()["total"]
        assert st_["lookup_many_parallel_calls"] == 2
        assert st_["lookup_many_inline_calls"] == len(requests)
        s.reset_stats()
        assert s.stats()["total"]["lookup_many_inline_calls"] == 0
    for got, want in zip(outs, [*expected, expected[0]], strict=True):
        for n in want:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-5)
    # A stored calibration's break-even is what a newly opened store's executor uses (on a
    # copy: the module's store keeps no calibration).
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    cal = Calibration.from_dict({"inline_base_ns": 123.0, "inline_task_ns": 4.5})
    with bandstore.open(copy, writable=True) as s:
        s.catalog.put_meta("calibration", cal.as_dict())
    with bandstore.open(copy, plan=ALL_STRATEGIES) as s:
        assert s._executor.inline_below == (123.0, 4.5)
    # One stored before the break-even was measured (format 3): calls always use the workers.
    with bandstore.open(copy, writable=True) as s:
        s.catalog.put_meta("calibration", {**cal.as_dict(), "format": 3})
    with bandstore.open(copy, plan=ALL_STRATEGIES) as s:
        assert s._executor.inline_below is None


class _CountingQueue:
    """A helper's queue that counts what is put on it."""

    def __init__(self, q):
        self.q, self.puts = q, 0

    def put(self, item):
        self.puts += item is not None
        self.q.put(item)


def test_one_caller_is_deterministic_whatever_the_workers(store_path, weights):
    rng = np.random.default_rng(11)
    requests = [random_request(rng, weights) for _ in range(10)]
    outs = []
    for workers in (1, 2):
        with bandstore.open(store_path, plan=ALL_STRATEGIES, workers=workers) as s:
            outs.append([s.lookup_many(r) for r in requests])
            s.reset_stats()
            assert s.stats()["total"]["lookup_many_calls"] == 0
    for a, b in zip(*outs, strict=True):
        for n in a:
            assert np.array_equal(a[n], b[n])


def test_no_plan_is_todays_store_round_robin(store_path, weights):
    with bandstore.open(store_path, cache_bytes=10_000, workers=2) as s:
        assert s.plan is None and s.workers == 2
        assert all(t.runner is None for t in s._tables.values())  # every table cached
        routes = [s._executor.routes[n][1] for n in s.tables]
        assert routes == [(i % 2,) for i in range(len(routes))]
        req = random_request(np.random.default_rng(0), weights)
        out = s.lookup_many(req)
        for n, (i, o) in req.items():
            np.testing.assert_allclose(out[n], embedding_bag_ref(weights[n], i, o), atol=1e-5)


class _Table:
    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()  # (the executor adds a successful call's counters)
        self.stats = np.zeros(6, dtype=np.int64)
        self.device_bytes = 0


class _Recorder:
    """A runner that notes the order its tables are run in and sleeps ``seconds[name]``."""

    parts = 1

    def __init__(self, name: str, log: list, seconds: dict):
        self.table, self.log, self.seconds = _Table(name), log, seconds

    def begin(self, ids, offsets, weights, mode, pad, *, allocate=True):
        return Job(ids, offsets, weights, mode, pad, None)

    def allocate(self, job):
        job.out = self.table.name

    def run_part(self, job, j):
        self.log.append(self.table.name)
        time.sleep(self.seconds.get(self.table.name, 0.0))

    def finish(self, job):
        return job.out


def test_executor_starts_the_longest_tasks_first():
    from bandstore.serve.executor import REORDER_EVERY, Executor

    log: list[str] = []
    seconds: dict[str, float] = {}
    names = ["a", "b", "c", "d"]
    routes = {n: (_Recorder(n, log, seconds), (0,)) for n in names}
    ex = Executor(1, routes, costs={"a": 1.0, "b": 30.0, "c": 2.0})  # d: no prediction

    def call():
        log.clear()
        one_bag = (np.zeros(1, dtype=np.int64), np.array([0, 1], dtype=np.int64))
        prepared = {n: (routes[n][0].table, *one_bag, None, 0, -1) for n in names}
        out = ex.run(prepared)
        assert out == {n: n for n in names}  # results keep the request's keys
        return list(log)

    assert call() == ["b", "c", "a", "d"]  # the plan's predictions, then the unpredicted
    # Measured times take over at the next re-ordering: d is now the longest, b the shortest.
    seconds.update({"a": 0.002, "b": 0.0, "c": 0.001, "d": 0.004})
    orders = [call() for _ in range(2 * REORDER_EVERY)]
    assert orders[-1] == ["d", "a", "c", "b"]
    ex.close()


# ---- bad input --------------------------------------------------------------------------------
def test_bad_plans_are_clear_errors(store_path):
    bad = [
        ({"workers": 0, "tables": {}}, "workers"),
        ({"workers": 1, "tables": {"a": {"strategy": "teleport"}}}, "teleport"),
        ({"workers": 2, "tables": {"a": {"strategy": "resident", "worker": 2}}}, "worker 2"),
        ({"workers": 1, "tables": {"zz": {"strategy": "resident"}}}, "zz"),
        ({"workers": 1, "tables": {"a": {"strategy": "cached"}}}, "cache_bytes"),
        ({"workers": 2, "tables": {"a": {"strategy": "split", "inner": "x", "workers": [0]}}},
         "inner"),
        ({"workers": 1, "tables": {"a": {"strategy": "split", "workers": [0],
                                         "replicate": [10**6]}}}, "out of range"),
    ]  # fmt: skip
    for plan, words in bad:
        with pytest.raises(bandstore.PlanError, match=words):
            bandstore.open(store_path, plan=plan)
    with pytest.raises(bandstore.PlanError) as exc:
        bandstore.open(store_path, plan={"workers": 1, "tables": {"b": {"strategy": "nope"}}})
    assert exc.value.table == "b" and isinstance(exc.value, ValueError)
    with pytest.raises(bandstore.PlanError):
        bandstore.open(store_path, workers=0)
    over = {"workers": 1, "budget_bytes": 10,
            "tables": {"a": {"strategy": "resident", "dram_bytes": 4800}}}  # fmt: skip
    with pytest.raises(bandstore.BudgetError):
        bandstore.open(store_path, plan=over)


@pytest.mark.parametrize(
    "entry",
    [
        {"strategy": "direct", "worker": 1},
        {"strategy": "cached", "worker": 0, "cache_bytes": 50 * cache_row_bytes(DIM)},
        {"strategy": "split", "inner": "direct", "workers": [0, 1]},
        {"strategy": "split", "inner": "cached", "workers": [1, 0],
         "cache_bytes": 50 * cache_row_bytes(DIM), "replicate": [0]},
    ],
    ids=["direct", "cached", "split-direct", "split-cached"],
)  # fmt: skip
def test_corrupt_block_is_named_on_every_block_reading_path(store_path, weights, tmp_path, entry):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    with bandstore.open(copy) as s:
        t = s._tables["b"]
        path, rpb, bs = t.block_path, t.info.rows_per_block, t.info.block_size
        layout = np.asarray(t.layout)
    bad_block = 3
    raw = bytearray(path.read_bytes())
    raw[bs * (1 + bad_block) + 7] ^= 0x5A  # block 0 of the file is the header
    path.write_bytes(bytes(raw))
    bad_id = int(np.flatnonzero(layout // rpb == bad_block)[0])
    good = np.flatnonzero(layout // rpb != bad_block)[:40].astype(np.int64)
    plan = {"workers": 2, "tables": {"b": entry}}
    with bandstore.open(copy, plan=plan) as s:
        for _ in range(2):  # a corrupt block is never cached: the second read fails again
            with pytest.raises(bandstore.CorruptBlockError) as exc:
                s.lookup_many({"b": (np.array([good[0], bad_id, 0]), np.array([0, 2]))})
            assert (exc.value.table, exc.value.block) == ("b", bad_block)
        got = s.lookup_many({"b": (good, np.arange(good.size))})["b"]
        assert np.array_equal(got, weights["b"][good])  # the rest of the table still serves


def test_budget_too_small_for_any_plan(store_path):
    trace = synth({n: r for n, r in SIZES.items()}, 50, pooling=3, seed=0)
    cal = default_calibration()
    with bandstore.open(store_path) as s:
        profiles = profile_trace(s, trace, batch_size=16, curves=CURVES)
    need = sum(p.min_bytes for p in profiles.values())
    with pytest.raises(bandstore.BudgetError) as exc:
        make_plan(profiles, cal, 2, need - 1)
    assert exc.value.needed == need and exc.value.budget == need - 1
    with pytest.raises(bandstore.BudgetError):
        uniform_plan(profiles, cal, 2, 0)
    with pytest.raises(bandstore.InvalidArgumentError):
        make_plan(profiles, cal, 2, -5)
    with pytest.raises(bandstore.PlanError):
        make_plan(profiles, cal, 0, need)
    plan = make_plan(profiles, cal, 2, need)  # the minimum: nothing but direct
    assert {tp.strategy for tp in plan.tables.values()} <= {"direct", "split"}


# ---- the planner ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """A store where table 'hot' takes most lookups, and a trace for it."""
    tables = {"hot": 2000, "s1": 50, "s2": 80, "big": 5000}
    trace = synth(tables, 600, pooling={"hot": 40, "s1": 1, "s2": 2, "big": 3}, zipf=1.1,
                  seed=2)  # fmt: skip
    from bandstore.demo import create_store_for_trace

    path = tmp_path_factory.mktemp("skew") / "store"
    with create_store_for_trace(path, trace, dim=8, progress=False):
        pass
    return path, trace


def test_plan_respects_budget_and_prefers_resident_for_small_tables(skewed):
    path, trace = skewed
    cal = default_calibration()
    with bandstore.open(path) as s:
        profiles = profile_trace(
            s, trace, batch_size=600, curves=CURVES
        )  # large batches: lookups dominate
    assert profiles["hot"].lookups > 10 * profiles["s1"].lookups
    small_budget = sum(p.min_bytes for p in profiles.values()) + 8 * 80 * 4 + 8 * 50 * 4
    for budget in (small_budget, 1 << 22):
        plan = make_plan(profiles, cal, 2, budget)
        assert plan.dram_bytes <= budget
        assert plan.tables["s1"].kind == "resident"  # tiny and read: decoded in DRAM
        json.loads(json.dumps(plan.as_dict()))  # JSON-clean
        assert Plan.from_dict(plan.as_dict()).tables == plan.tables
    plan = make_plan(profiles, cal, 2, 1 << 22)
    assert all(tp.kind == "resident" for tp in plan.tables.values())  # everything fits
    assert plan.tables["hot"].strategy == "split" and plan.tables["hot"].parts == 2
    loads = plan.predicted["worker_ns"]
    assert max(loads) < 0.75 * sum(loads)  # the hot table no longer pins one worker
    one = make_plan(profiles, cal, 1, 1 << 22)
    assert all(tp.workers == (0,) and tp.strategy != "split" for tp in one.tables.values())
    uni = uniform_plan(profiles, cal, 2, 1 << 20)
    assert {tp.strategy for tp in uni.tables.values()} == {"cached"}
    assert [tp.workers[0] for tp in uni.tables.values()] == [0, 1, 0, 1]
    assert uni.dram_bytes <= 1 << 20
    # Water-filling: a table whose whole cache is below the equal share gets it, the others
    # share the rest equally, and no more than a row per table is left unspent.
    crb = cache_row_bytes(8)
    index = sum(4 * p.rows for p in profiles.values())
    for budget in (index + 200 * crb, index + 1000 * crb, index + 3000 * crb):
        uni = uniform_plan(profiles, cal, 2, budget)
        caps = {n: tp.cache_bytes // crb for n, tp in uni.tables.items()}
        whole = {n for n, c in caps.items() if c >= profiles[n].rows}
        rest = [caps[n] for n in caps if n not in whole]
        assert rest and max(rest) - min(rest) <= 1  # equal shares (to a row)
        assert all(profiles[n].rows <= min(rest) + 1 for n in whole)
        assert budget - len(caps) * crb <= uni.dram_bytes <= budget
    uni = uniform_plan(profiles, cal, 2, index + 20_000 * crb)  # room for every row
    assert all(tp.cache_bytes // crb == profiles[n].rows for n, tp in uni.tables.items())


def test_measured_times_remap_the_plan(skewed):
    """A table the model underestimates (measured / predicted = scale) is mapped by its
    measured time: split, or given a worker of its own; strategies and caches stay the
    model's."""
    from bandstore.tune.planning import refine_plan
    from bandstore.tune.planning.planner import SCALE_BOUNDS, measured_scale

    path, trace = skewed
    cal = default_calibration()
    with bandstore.open(path) as s:
        profiles = profile_trace(s, trace, batch_size=600, curves=CURVES)
    budget = sum(p.min_bytes for p in profiles.values()) + 8 * 80 * 4 + 8 * 50 * 4
    plan = make_plan(profiles, cal, 2, budget)
    same = make_plan(profiles, cal, 2, budget, scale={n: 1.0 for n in profiles})
    assert same.as_dict() == plan.as_dict()
    big = max((n for n in plan.tables if plan.tables[n].strategy != "split"),
              key=lambda n: plan.tables[n].predicted_ns)  # fmt: skip
    heavy = make_plan(profiles, cal, 2, budget, scale={big: 50.0})
    assert {n: tp.kind for n, tp in heavy.tables.items()} == {
        n: tp.kind for n, tp in plan.tables.items()
    }
    tp = heavy.tables[big]
    assert tp.predicted_ns == pytest.approx(
        plan.tables[big].predicted_ns * 50.0 / (tp.parts if tp.strategy == "split" else 1),
        rel=0.5,
    )
    others = [w for n, t in heavy.tables.items() if n != big for w in t.workers]
    assert tp.strategy == "split" or tp.workers[0] not in others  # nothing waits behind it
    # measured / predicted per table from per-table seconds, bounded
    secs = {n: 2.0 * (t.predicted_ns or 0) * t.parts * 1e-9 * 10 for n, t in plan.tables.items()}
    secs[big] *= 1000.0
    scale = measured_scale(plan, secs, 10)
    assert scale[big] == SCALE_BOUNDS[1]
    assert all(v == pytest.approx(2.0) for n, v in scale.items() if n != big)
    # refine_plan: the executor times every table, the plan is re-mapped from it
    with bandstore.open(path, plan=plan) as s:
        from bandstore.tune.planning import _batches

        reqs = _batches(trace, 100)
        refined = refine_plan(s, plan, profiles, cal, reqs)
        busy = s.busy
        assert busy.calls == len(reqs)
        assert set(busy.seconds) == set(trace.table_names)
        assert all(v > 0 for v in busy.seconds.values())
    assert {n: tp.kind for n, tp in refined.tables.items()} == {
        n: tp.kind for n, tp in plan.tables.items()
    }
    assert refined.dram_bytes <= budget


def test_curve_source_is_a_parameter(skewed):
    path, trace = skewed
    calls = []

    def flat(store, name, indices, offsets, batch_size):
        calls.append(name)
        return [0, 10**9], [1.0, 1.0], [1.0, 1.0]  # a cache never helps

    with bandstore.open(path) as s:
        profiles = profile_trace(s, trace, batch_size=64, curves=flat)
    assert sorted(calls) == sorted(trace.table_names)
    plan = make_plan(profiles, default_calibration(), 1, 1 << 30)
    assert not any(tp.kind == "cached" for tp in plan.tables.values())


def test_apply_persists_and_open_arguments_choose(skewed):
    path, trace = skewed
    with bandstore.open(path) as s:
        profiles = profile_trace(s, trace, batch_size=64, curves=CURVES)
        with pytest.raises(bandstore.ReadOnlyError):
            apply_plan(s, make_plan(profiles, default_calibration(), 2, 1 << 22))
    plan = make_plan(profiles, default_calibration(), 2, 1 << 22)
    with bandstore.open(path, writable=True) as s:
        apply_plan(s, plan)
        assert s.plan is not None and s.workers == 2
    with bandstore.open(path) as s:
        assert s.plan.tables == plan.tables
        assert type(s._tables["s1"].runner).__name__ == "ResidentRunner"
    with bandstore.open(path, cache_bytes=1000) as s:
        assert s.plan is None  # explicit cache sizes: the stored plan is not used
    with bandstore.open(path, plan=False, workers=1) as s:
        assert s.plan is None and s.workers == 1
    with bandstore.open(path, workers=1) as s:
        assert s.plan is not None and s.workers == 1  # the plan on one worker
    with bandstore.open(path, writable=True) as s:
        apply_plan(s, None)
    with bandstore.open(path) as s:
        assert s.plan is None


def test_replan_switches_between_calls_without_blocking_readers(skewed):
    path, trace = skewed
    ids = np.arange(2000)
    expected = None
    with bandstore.open(path, plan=False, workers=2) as s:
        expected = s.lookup("hot", ids)
        stop = threading.Event()
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set():
                    assert np.array_equal(s.lookup_many({"hot": (ids, np.arange(2000))})["hot"],
                                          expected)  # fmt: skip
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        th = threading.Thread(target=reader)
        th.start()
        try:
            report = replan(s, trace, budget=1 << 22, min_gain=0.0, curves=CURVES)
            assert report["replanned"] and s.plan.tables == report["plan"].tables
            again = replan(
                s, trace, min_gain=0.5, curves=CURVES
            )  # the same traffic: nothing to gain
            assert not again["replanned"] and s.plan.tables == report["plan"].tables
        finally:
            stop.set()
            th.join()
        assert not errors
        assert s.stats()["hot"]["lookups"] > 0


def test_replan_from_recorded_traffic(skewed, tmp_path):
    path, trace = skewed
    with bandstore.open(path, record=tmp_path / "rec", sample_rate=1.0, cache_bytes=0) as s:
        with pytest.raises(bandstore.InvalidArgumentError):
            bandstore.tune.replan(bandstore.open(path))
        from bandstore.tune.measure import trace_requests

        for start in range(0, 300, 50):
            s.lookup_many(trace_requests(trace, start, start + 50))
        report = bandstore.tune.replan(s, budget=1 << 22, min_gain=0.0, curves=CURVES)
        assert report["replanned"] and s.plan is not None


def test_automatic_replan_from_recorded_traffic(skewed, tmp_path):
    path, trace = skewed
    from bandstore.tune.measure import trace_requests

    with bandstore.open(path, plan=False) as ref:
        want = [ref.lookup_many(trace_requests(trace, a, a + 50)) for a in range(0, 600, 50)]
    opts = {"budget": 1 << 22, "min_gain": 0.0, "curves": CURVES}
    with bandstore.open(path, record=tmp_path / "rec", sample_rate=1.0, plan=False) as s:
        auto = bandstore.tune.AutoReplanner(s, 200, **opts)
        assert s.plan is None and auto.status()["checks"] == 0
        for i, a in enumerate(range(0, 600, 50)):
            got = s.lookup_many(trace_requests(trace, a, a + 50))  # served while it re-plans
            for n in got:  # pooling order may differ between strategies: allclose
                np.testing.assert_allclose(got[n], want[i][n], rtol=1e-5, atol=1e-5)
            assert auto.wait(60)  # (a check runs beside later calls; wait to count)
            if a == 150:  # 200 queries recorded: one check ran
                st1 = auto.status()
                assert st1["checks"] == 1 and st1["replans"] == 1 and st1["errors"] == 0
                assert s.plan is not None and st1["last"]["new_batch_ns"] > 0
        assert auto.wait(60)
        st2 = auto.status()
        assert st2["recorded_queries"] == 600 and st2["checks"] == 3
    with bandstore.open(path) as s:
        assert s.plan is None  # persist=False: the switch lived with the open store


def test_automatic_replan_bad_arguments_and_failures(skewed, tmp_path):
    path, trace = skewed
    from bandstore.tune.measure import trace_requests

    with (
        bandstore.open(path) as s,
        pytest.raises(bandstore.InvalidArgumentError, match="record=DIR"),
    ):
        bandstore.tune.AutoReplanner(s, 10)
    with bandstore.open(path, record=tmp_path / "r0") as s:
        for every in (0, -3, 2.5, True):
            with pytest.raises(bandstore.InvalidArgumentError, match="every"):
                bandstore.tune.AutoReplanner(s, every)
        with pytest.raises(bandstore.InvalidArgumentError, match="nope"):
            bandstore.tune.AutoReplanner(s, 5, nope=1)
    # A check that fails (a budget no plan fits) is counted; the reader's calls go on.
    with bandstore.open(path, record=tmp_path / "r1", sample_rate=1.0, plan=False) as s:
        auto = bandstore.tune.AutoReplanner(s, 20, budget=1, curves=CURVES)
        for a in range(0, 100, 20):
            s.lookup_many(trace_requests(trace, a, a + 20))
            assert auto.wait(60)
        st = auto.status()
        assert st["checks"] == 5 and st["errors"] == 5 and st["replans"] == 0
        assert "BudgetError" in st["last_error"] and s.plan is None


# ---- figures ----------------------------------------------------------------------------------
def test_compare_plans(skewed):
    path, trace = skewed
    result = compare_plans(path, trace, workers=2, budget=1 << 20, batch_size=64, repeats=1,
                           curves=CURVES)  # fmt: skip
    assert set(result.results) == {"plan", "uniform", "plan, 1 worker"}
    for r in result.results.values():
        assert r["lookups_per_second"] > 0 and r["p99_batch_us"] >= r["p50_batch_us"] > 0
        assert r["outputs_match_uniform"]
        assert r["dram_bytes"] <= 1 << 20
    assert result.speedup["plan_vs_uniform"] > 0
    assert json.loads(json.dumps(result.as_dict()))["workers"] == 2


def test_plan_command(skewed, capsys, tmp_path):
    from bandstore.cli import main

    path, trace = skewed

    trace_file = tmp_path / "t.npz"
    trace.save(trace_file)
    args = ["plan", str(path), str(trace_file), "--workers", "2", "--budget", "1M",
            "--batch-size", "64", "--repeats", "1"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plans"]["plan"]["workers"] == 2 and "uniform" in out["results"]
    assert main([*args, "--apply", "--force"]) == 0  # (--force: timings on a shared machine)
    text = capsys.readouterr().out
    assert "predicted" in text and "uniform" in text and "applied" in text
    with bandstore.open(path) as s:
        assert s.plan is not None
    assert main(["plan", str(path), str(trace_file), "--workers", "0"]) == 2
    assert "--workers: must be >= 1" in capsys.readouterr().err
    assert main(["plan", str(path), str(trace_file), "--workers", "1", "--budget", "10"]) == 1
    assert "budget" in capsys.readouterr().err


def test_calibration_round_trip_and_cost_shapes(monkeypatch, tmp_path):
    import importlib

    calmod = importlib.import_module(
        "bandstore.tune.planning.calibrate"
    )  # (the function shadows it)

    monkeypatch.setattr(calmod, "_GATHER_SIZES", (1 << 14, 1 << 16, 1 << 18, 1 << 20))
    monkeypatch.setattr(calmod, "_PROBE_ROWS", (1 << 8, 1 << 10, 1 << 12, 1 << 14))
    monkeypatch.setattr(calmod, "_calibration_blocks", lambda quick, block_size=4096: (64, 256))
    monkeypatch.setattr(calmod, "_sample_lookups", lambda quick: 1024)
    monkeypatch.setattr(calmod, "_PY_CALLS", 4)
    monkeypatch.setattr(calmod, "_INLINE_LOOKUPS", (64, 4096))
    path = tmp_path / "s"
    bandstore.create(path).close()
    from bandstore.cli import main

    assert main(["calibrate", str(path), "--quick", "--json"]) == 0
    with bandstore.open(path) as s:
        from bandstore.tune.planning import load_calibration

        cal, stored = load_calibration(s)
        assert s._executor.inline_below == (cal.inline_base_ns, cal.inline_task_ns)
    assert stored and cal.block_ns > 0 and set(cal.row_ns) == {"float32", "float16", "int8"}
    assert cal.inline_base_ns >= 0 and cal.inline_task_ns >= 0
    assert Calibration.from_dict(json.loads(json.dumps(cal.as_dict()))) == cal
    d = default_calibration()
    assert d.gather(1 << 30, 16) >= d.gather(1 << 10, 16)
    assert d.gather(1 << 20, 64) > d.gather(1 << 20, 16)
    assert d.block(cold=True) > d.block() > d.block(verify=False)
    # A block of a large file costs more than one of a small file (TLB and DRAM), in between
    # for a size in between, and the ends are clamped.
    small, large = d.block_file_bytes
    assert d.block(file_bytes=large) == d.block_large_ns > d.block(file_bytes=small)
    assert d.block(file_bytes=small) < d.block(file_bytes=(small * large) ** 0.5) < d.block_large_ns
    assert d.block(file_bytes=64 * large) == d.block_large_ns
    assert cal.block_large_ns >= cal.block_ns and cal.block_file_bytes == [64 * 4096, 256 * 4096]


def test_inline_break_even_is_where_two_workers_start_to_win():
    from bandstore.tune.planning.calibrate import _crossing

    # Between the last size two workers lost (speedup 0.8) and the first they won (1.25):
    # halfway in log scale.
    assert _crossing([100.0, 200.0, 400.0, 800.0], [0.5, 0.8, 1.25, 1.5]) == pytest.approx(
        200 * 2**0.5
    )
    # A single win amid losses is noise: the crossing is at the first of two wins in a row.
    assert _crossing([50.0, 100.0, 200.0, 400.0, 800.0], [1.1, 0.5, 0.8, 1.25, 1.5]) == (
        pytest.approx(200 * 2**0.5)
    )
    assert _crossing([100.0, 200.0], [0.5, 0.6]) == 400.0  # never won: beyond the sweep
    assert _crossing([100.0, 200.0], [1.2, 1.3]) == 0.0  # won at once: always the workers


def test_split_cached_parts_pin_their_own_hottest_rows(store_path, weights, tmp_path):
    """A cached split keeps the policy's pinned share, as the table's own cache would: each
    part pins the hottest rows it owns (the planner's curves assume that policy)."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 50, SIZES["b"]).astype(np.int64)
    with bandstore.open(copy, writable=True) as s:
        s.set_tuning({"b": {"cache_bytes": 60 * cache_row_bytes(DIM), "threshold": bandstore.NEVER,
                            "pinned_share": 1.0}}, counts={"b": counts})  # fmt: skip
    plan = {
        "workers": 2,
        "tables": {
            "b": {
                "strategy": "split",
                "inner": "cached",
                "workers": [0, 1],
                "cache_bytes": 30 * cache_row_bytes(DIM),
                "replicate": [7],
            }
        },
    }
    hottest = np.argsort(-counts, kind="stable")
    with bandstore.open(copy, plan=plan) as s:
        runner = s._tables["b"].runner
        pinned = [set(c.id_of_slot[: int(c.meta[kc.META_PINNED])].tolist()) for c in runner.caches]
        for j, ids in enumerate(pinned):
            assert 7 in ids and len(ids) == 31  # the replica and 30 rows of its own
            own = {i for i in ids if i != 7}
            assert all(int(_owner_of(np.array([i]), 2)[0]) == j for i in own)
            mine = [i for i in hottest.tolist() if i != 7 and _owner_of(np.array([i]), 2)[0] == j]
            assert own == set(mine[:30])  # the hottest it owns
        ids = np.array(sorted(pinned[0] | pinned[1]), dtype=np.int64)
        got = s.lookup_many({"b": (ids, np.arange(ids.size))})["b"]
        assert np.array_equal(got, weights["b"][ids])
        assert s.stats()["b"]["hits"] == ids.size  # served from the pinned slots


def test_set_tuning_under_a_plan_rebuilds_only_what_serves(store_path, weights, tmp_path):
    """New policies or counts reach the runners that use them: a cached table's cache (at the
    plan's size), a cached split's parts (their pinned rows follow the new counts); resident
    and direct tables get no cache."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    plan = {
        "workers": 2,
        "tables": {
            "a": {"strategy": "resident", "worker": 1},
            "b": {
                "strategy": "split",
                "inner": "cached",
                "workers": [0, 1],
                "cache_bytes": 20 * cache_row_bytes(DIM),
            },  # fmt: skip
            "c": {"strategy": "direct", "worker": 0},
            "d": {"strategy": "cached", "worker": 1, "cache_bytes": 50 * cache_row_bytes(DIM)},
        },
    }
    big = 400 * cache_row_bytes(DIM)
    rng = np.random.default_rng(3)
    counts = {n: rng.integers(0, 50, SIZES[n]).astype(np.int64) for n in ("b", "d")}
    policy = {"cache_bytes": big, "threshold": bandstore.NEVER, "pinned_share": 1.0}
    with bandstore.open(copy, writable=True, plan=plan) as s:
        old_split = s._tables["b"].runner
        s.set_tuning({n: policy for n in SIZES}, counts=counts)
        info = s.cache_info()
        assert info["a"]["capacity_rows"] == 0 and info["c"]["capacity_rows"] == 0
        assert info["d"]["capacity_rows"] == 50  # the plan's size, the tuned policy
        pinned_d = s._tables["d"].cache.id_of_slot[:50]
        assert set(pinned_d.tolist()) == set(np.argsort(-counts["d"], kind="stable")[:50].tolist())
        runner = s._tables["b"].runner
        assert runner is not old_split and s._executor.routes["b"][0] is runner
        hottest = np.argsort(-counts["b"], kind="stable").tolist()
        for j, c in enumerate(runner.caches):
            own = [i for i in hottest if _owner_of(np.array([i]), 2)[0] == j][:20]
            assert set(c.id_of_slot[: int(c.meta[kc.META_PINNED])].tolist()) == set(own)
        req = random_request(np.random.default_rng(1), weights)
        out = s.lookup_many(req)
        for n, (i, o) in req.items():
            np.testing.assert_allclose(out[n], embedding_bag_ref(weights[n], i, o), atol=1e-5)
    with bandstore.open(copy, plan=False) as s:  # the tuning was stored for plan-less opens
        info = s.cache_info()
        assert all(info[n]["capacity_rows"] == min(400, r) for n, r in SIZES.items())


def test_executor_cuts_a_dominant_table_into_ranges_of_bags(store_path, weights):
    """A one-part resident or direct table measured longer than a worker's fair share is served
    in ranges of bags on every worker (no order balances it), whole again once it is short; a
    long one is cut into chunks, as is a long resident split (on its parts' workers in turn)."""
    from bandstore.serve.executor import CHUNK_SECONDS, MAX_CHUNKS, REORDER_EVERY

    plan = {
        "workers": 2,
        "tables": {
            "a": {"strategy": "resident", "worker": 0},
            "b": {"strategy": "cached", "worker": 1, "cache_bytes": 50 * cache_row_bytes(DIM)},
            "c": {"strategy": "direct", "worker": 1},
            "d": {"strategy": "split", "inner": "resident", "workers": [1, 0]},
        },
    }
    rng = np.random.default_rng(9)
    with bandstore.open(store_path, plan=plan) as s:
        ex = s._executor
        ranges: dict[str, list] = {"c": [], "d": []}
        for n in ranges:
            runner = ex.routes[n][0]

            def spy(job, b0, b1, n=n, orig=runner.run_bags):
                ranges[n].append((b0, b1))
                orig(job, b0, b1)

            runner.run_bags = spy

        def measured(c_seconds, d_seconds, other=0.001):  # per task
            ex.busy.recent.update({"a": other, "b": other, "c": c_seconds, "d": d_seconds})
            ex.busy.calls = REORDER_EVERY  # the next call re-orders

        # c: 10 ms of 14 in all (fair share 7 ms): cut on both workers, into the most chunks.
        measured(0.010, 0.0001)
        req = random_request(rng, weights, n_bags=40)
        before = s.stats()["c"]["lookups"]
        out = s.lookup_many(req)
        assert ex._cuts == {"c": 2 * MAX_CHUNKS}  # d is short, split by the plan already
        assert sorted(ranges["c"]) == [(b, b + 5) for b in range(0, 40, 5)]
        for n, (i, o) in req.items():
            np.testing.assert_allclose(out[n], embedding_bag_ref(weights[n], i, o), atol=1e-5)
        assert s.stats()["c"]["lookups"] - before == req["c"][0].size
        # Still over the lower share of the fair share: stays cut (no flapping), in as many
        # chunks of CHUNK_SECONDS as fit (c: 1.7 chunks' time per worker, one chunk); the split
        # d, long now (2.5 chunks' time per part), in two chunks per part.
        measured(0.425 * CHUNK_SECONDS, 2.5 * CHUNK_SECONDS, 0.25 * CHUNK_SECONDS)
        ranges["d"].clear()
        out = s.lookup_many(req)
        assert ex._cuts == {"c": 2, "d": 4}
        assert sorted(ranges["d"]) == [(0, 10), (10, 20), (20, 30), (30, 40)]
        for n, (i, o) in req.items():
            np.testing.assert_allclose(out[n], embedding_bag_ref(weights[n], i, o), atol=1e-5)
        # ... and served whole once short.
        measured(0.0001, 0.0001)
        ranges["c"].clear()
        out = s.lookup_many(req)
        assert ex._cuts == {} and ranges["c"] == [(0, 40)]
        for n, (i, o) in req.items():
            np.testing.assert_allclose(out[n], embedding_bag_ref(weights[n], i, o), atol=1e-5)


def test_plan_leaves_the_update_overlay_its_dram(skewed, tmp_path):
    """Rows updated since the served version live in DRAM beside every strategy: a plan
    for a store with an update overlay fits its strategies in the budget less its bytes."""
    import shutil

    from bandstore.tune.planning import plan_store

    src, trace = skewed
    path = tmp_path / "s"
    shutil.copytree(src, path)
    with bandstore.open(path, writable=True) as s:
        roomy = plan_store(s, trace, 1, 1 << 22, batch_size=600, curves=CURVES)
        budget = roomy.dram_bytes  # what the strategies take with room to spare
        s.update("big", np.arange(1000), np.ones((1000, 8), np.float32))
        s.lookup("big", [0])
        overlay = s.cache_info()["big"]["overlay_bytes"]
        assert overlay == s.memory()["total"]["overlay"] > 0
        tight = plan_store(s, trace, 1, budget, batch_size=600, curves=CURVES)
        assert tight.budget_bytes == budget  # the caller's budget, recorded as given
        assert tight.dram_bytes <= budget - overlay
