"""The ``pinned`` strategy: a frozen cache of the most counted rows over direct reads."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from helpers import check_against_reference, make_store, random_request, random_tables
from hypothesis import given
from hypothesis import strategies as st
from reference import embedding_bag_ref

import bandstore
from bandstore.kernels.bits import _pinned_slot
from bandstore.serve.cache import cache_row_bytes
from bandstore.traces.synth import synth
from bandstore.traces.trace import Trace
from bandstore.tune.planning import Plan, apply_plan, make_plan, profile_trace, replan
from bandstore.tune.planning.calibrate import default_calibration
from bandstore.tune.planning.model import cost, options, pinned_curve

DIM = 4
SIZES = {"a": 300, "b": 1000, "c": 40}
PINNED_ROWS = {"a": 30, "b": 100, "c": 40}


@pytest.fixture(scope="module")
def weights():
    return random_tables(SIZES, DIM, seed=11)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, weights):
    return make_store(tmp_path_factory.mktemp("pinned") / "store", weights)


@pytest.fixture(scope="module")
def counts():
    """Skewed counts with ties and unread rows (count 0 is never held)."""
    rng = np.random.default_rng(5)
    out = {}
    for n, r in SIZES.items():
        c = rng.zipf(1.5, r) % 20
        c[rng.random(r) < 0.3] = 0
        out[n] = c.astype(np.int64)
    return out


def pinned_plan(counts, workers=2):
    crb = 4 * DIM  # a pinned row costs its encoded row, float32 here (the index is per table)
    tables = {
        "a": {"strategy": "pinned", "worker": 1, "cache_bytes": PINNED_ROWS["a"] * crb},
        "b": {"strategy": "split", "inner": "pinned", "workers": [0, 1],
              "cache_bytes": PINNED_ROWS["b"] * crb},
        "c": {"strategy": "pinned", "worker": 0, "cache_bytes": PINNED_ROWS["c"] * crb},
    }  # fmt: skip
    return replace(Plan.from_dict({"workers": workers, "tables": tables}), counts=counts)


def top_rows(c, k):
    """The k most counted rows read at least once, ties to the lower id (the obvious way)."""
    ranked = sorted((i for i in range(c.size) if c[i] > 0), key=lambda i: (-c[i], i))
    return set(ranked[:k])


@given(seed=st.integers(0, 2**31), mode=st.sampled_from(["sum", "mean", "max"]),
       weighted=st.booleans(), pad=st.one_of(st.none(), st.integers(0, 39)))  # fmt: skip
def test_pinned_matches_the_reference_and_never_admits(store_path, weights, counts, seed, mode,
                                                    weighted, pad):  # fmt: skip
    rng = np.random.default_rng(seed)
    weighted = weighted and mode == "sum"
    with bandstore.open(store_path, plan=pinned_plan(counts)) as s:
        runners = {n: s._tables[n].runner for n in SIZES}
        held = {n: r.ids.copy() for n, r in runners.items()}
        info = s.cache_info()
        for n, r in runners.items():
            assert type(r).__name__ == "PinnedRunner"
            assert set(held[n].tolist()) == top_rows(counts[n], PINNED_ROWS[n])
            # In id order, encoded as the block file stores them (float32 here: the raw bytes).
            np.testing.assert_array_equal(r.data.view(np.float32), weights[n][held[n]])
            for i in range(SIZES[n]):  # the index finds exactly the held rows, at their slots
                j = np.searchsorted(held[n], i)
                want = j if j < held[n].size and held[n][j] == i else -1
                assert _pinned_slot(r.index, i) == want
            assert info[n]["pinned_rows"] == info[n]["capacity_rows"] == len(held[n])
            assert info[n]["pinned_share"] == 1.0 and info[n]["threshold"] == bandstore.NEVER
            assert info[n]["dram_bytes"] == r.data.nbytes + 16 * -(-SIZES[n] // 64)
        for _ in range(3):
            req = random_request(rng, weights, n_bags=15, max_bag=8)
            if weighted:
                req = {n: (i, o, rng.random(i.size)) for n, (i, o) in req.items()}
            check_against_reference(s, weights, req, mode, pad)
        s.reset_stats()
        ids = rng.integers(0, SIZES["a"], 200)
        assert np.array_equal(s.lookup("a", ids), weights["a"][ids])  # bit for bit
        st_ = s.stats()["a"]
        in_pinned = np.isin(ids, held["a"])
        assert st_["hits"] == int(in_pinned.sum()) and st_["misses"] == int((~in_pinned).sum())
        for n, r in runners.items():  # frozen: nothing admitted, nothing changed
            assert np.array_equal(r.ids, held[n])
            np.testing.assert_array_equal(r.data.view(np.float32), weights[n][held[n]])


def test_pinned_needs_counts_and_cache_bytes(store_path, counts):
    entry = {"strategy": "pinned", "worker": 0, "cache_bytes": 10 * 4 * DIM}
    plan = {"workers": 1, "tables": {"a": entry}}
    with pytest.raises(bandstore.PlanError, match="access counts") as exc:
        bandstore.open(store_path, plan=plan)  # the store has no counts, the plan none
    assert exc.value.table == "a"
    with pytest.raises(bandstore.PlanError, match="cache_bytes"):
        bandstore.open(store_path, plan={"workers": 1, "tables": {"a": {"strategy": "pinned"}}})
    bad = replace(Plan.from_dict(plan), counts={"a": np.ones(7, dtype=np.int64)})
    with pytest.raises(bandstore.PlanError, match="300 integers"):
        bandstore.open(store_path, plan=bad)


def test_applied_pinned_plan_keeps_its_rows_across_opens(store_path, counts, tmp_path):
    """apply stores the plan's counts as the pinned tables' access counts, with the plan, so a
    store opened later holds the same rows; new counts (set_tuning) re-rank a pinned table that
    ranks by the table's counts."""
    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    plan = pinned_plan(counts)
    with bandstore.open(path, writable=True) as s:
        apply_plan(s, plan)
        first = {n: set(s._tables[n].runner.ids.tolist()) for n in SIZES}
        assert np.array_equal(s.table_counts("a"), counts["a"])
    with bandstore.open(path, writable=True) as s:
        assert s.plan.tables == plan.tables and not s.plan.counts
        again = {n: set(s._tables[n].runner.ids.tolist()) for n in SIZES}
        assert again == first
        new = counts["a"][::-1].copy()
        s.set_tuning({}, counts={"a": new})
        assert set(s._tables["a"].runner.ids.tolist()) == top_rows(new, 30)


def naive_pinned_curve(indices, offsets, layout, rpb, batch_size, caps):
    """Rank by the first half's counts, serve the second half batch by batch, count."""
    nq = offsets.size - 1
    cut = nq // 2
    start = offsets[cut]
    counts = np.bincount(indices[:start], minlength=layout.size)
    ranked = sorted((i for i in range(layout.size) if counts[i] > 0), key=lambda i: (-counts[i], i))
    n = indices.size - start
    misses, blocks = [], []
    for c in caps:
        held = set(ranked[:c])
        m = b = 0
        for q0 in range(cut, nq, batch_size):
            q1 = min(nq, q0 + batch_size)
            batch = indices[offsets[q0] : offsets[q1]]
            missed = [i for i in batch if i not in held]
            m += len(missed)
            b += len({layout[i] // rpb for i in missed})
        misses.append(m / n)
        blocks.append(b / n)
    return np.array(misses), np.array(blocks)


@given(seed=st.integers(0, 2**31), rows=st.integers(1, 200), queries=st.integers(2, 60),
       batch=st.integers(1, 9), rpb=st.integers(1, 8))  # fmt: skip
def test_pinned_curve_is_the_held_out_replay(seed, rows, queries, batch, rpb):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 6, queries)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    indices = (rng.zipf(1.4, int(offsets[-1])) % rows).astype(np.int64)
    layout = rng.permutation(rows + rng.integers(0, 5)).astype(np.int64)[:rows]
    caps = np.array(sorted(set(rng.integers(0, rows + 2, 5).tolist()) | {0}))
    if indices[offsets[queries // 2] :].size == 0:
        got = pinned_curve(indices, offsets, layout, rpb, batch, caps)
        assert np.all(got[0] == 1.0) and np.all(got[1] == 1.0)
        return
    got = pinned_curve(indices, offsets, layout, rpb, batch, caps)
    want = naive_pinned_curve(indices, offsets, layout, rpb, batch, caps)
    np.testing.assert_allclose(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1])


def test_planner_offers_pinned_and_makes_plans_that_carry_their_counts(tmp_path):
    """On a skewed trace the profile has a pinned curve, options price pinned below cached at the
    same curve (no admission), and a plan choosing pinned carries the trace's counts."""
    tables = {"big": 20_000, "small": 500}
    trace = synth(tables, 3000, pooling={"big": 6, "small": 2}, zipf=1.0, community_size=1,
                  co_access=0.0, seed=3)  # fmt: skip
    data = random_tables(tables, 16, seed=0)
    path = make_store(tmp_path / "store", data, block_size=4096)

    def same_curve(store, name, indices, offsets, batch_size):
        # The cached curve set equal to the pinned one: only the admission cost tells them apart.
        t = store._tables[name]
        sizes = np.linspace(0, t.info.rows * cache_row_bytes(16), 9)
        caps = (sizes // cache_row_bytes(16)).astype(np.int64)
        m, b = pinned_curve(indices, offsets, np.asarray(t.layout), t.info.rows_per_block,
                         batch_size, caps)  # fmt: skip
        return sizes, m, b

    cal = default_calibration()
    with bandstore.open(path) as s:
        profiles = profile_trace(s, trace, batch_size=256, curves=same_curve)
    p = profiles["big"]
    assert p.pinned_misses_per_lookup.size == p.pinned_rows.size > 1
    assert np.array_equal(p.counts, trace.access_counts("big"))
    kinds = {o.strategy for o in options(p, cal)}
    assert "pinned" in kinds and "cached" not in kinds  # same curve, no admission: pinned wins
    rows = int(p.pinned_rows[4])
    assert cost(p, "pinned", cal, rows * 4 * 16) < cost(
        p, "cached", cal, rows * cache_row_bytes(16)
    )
    plan = make_plan(profiles, cal, 2, 400_000)
    chosen = [n for n, tp in plan.tables.items() if tp.kind == "pinned"]
    assert chosen and set(plan.counts) == set(chosen)
    with bandstore.open(path, plan=plan) as s:
        req = {n: (trace.table(n)[0], trace.table(n)[1][:-1]) for n in tables}
        out = s.lookup_many(req)
        for n, (i, o) in req.items():
            np.testing.assert_allclose(out[n], embedding_bag_ref(data[n], i, o), atol=1e-4)


def test_replan_replaces_pinned_rows_gone_stale(tmp_path):
    """A plan's pinned rows are frozen: when the popular rows change, the model must price the
    served plan by the rows it holds (not by the new traffic's top rows), see it slower and
    switch to a plan pinning the new ones; on the same traffic it keeps the plan."""
    rows = 20_000
    trace = synth({"t": rows}, 4000, pooling={"t": 8}, zipf=1.1, community_size=1,
                  co_access=0.0, seed=4)  # fmt: skip
    perm = np.random.default_rng(9).permutation(rows)
    idx, off = trace.table("t")
    shifted = Trace({"t": (perm[idx], off)}, {"t": rows})  # the same skew on other rows
    path = make_store(tmp_path / "store", random_tables({"t": rows}, 16, seed=0), block_size=4096)
    cal = default_calibration()
    budget = 4 * rows + 2000 * cache_row_bytes(16)  # room for a tenth of the rows
    with bandstore.open(path, workers=1) as s:
        plan = make_plan(profile_trace(s, trace, batch_size=256), cal, 1, budget)
        assert plan.tables["t"].kind == "pinned"
        apply_plan(s, plan, persist=False)
        old = set(s._tables["t"].runner.ids.tolist())
        same = replan(s, trace, budget=budget)
        assert not same["replanned"] and same["old_batch_ns"] <= 1.05 * same["new_batch_ns"]
        moved = replan(s, shifted, budget=budget)
        assert moved["replanned"] and moved["old_batch_ns"] > 1.15 * moved["new_batch_ns"]
        new = set(s._tables["t"].runner.ids.tolist())
        top = np.argsort(-shifted.access_counts("t"), kind="stable")[: len(new)]
        assert len(new & set(top.tolist())) > 0.9 * len(new) and len(new & old) < 0.2 * len(new)
