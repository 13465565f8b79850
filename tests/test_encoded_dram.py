"""Rows stay encoded in DRAM: what a float16 or int8 table's cache, pinned set and resident copy
cost per row (capacity per byte, ``Store.memory()``, ``cache_row_bytes``, the sizing
simulation's and the planner's accounting), and the short plan form ``{table: strategy}``.

Results of every strategy per codec are checked in ``test_contract_strategies.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_against_reference, random_request
from reference import embedding_bag_ref

import bandstore
from bandstore.serve.cache import SLOT_OVERHEAD_BYTES, cache_row_bytes, capacity_rows
from bandstore.serve.strategies import cached_dram_bytes, pinned_capacity, pinned_dram_bytes
from bandstore.storage.codecs import decode_rows, encode_rows, row_bytes
from bandstore.tune.sim.mrc import simulate

DIM = 64
ROWS = 4096
CODECS = ("float32", "float16", "int8")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One table per codec (same values), and each table's rows as its codec decodes them."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    path = tmp_path_factory.mktemp("encoded") / "store"
    with bandstore.create(path) as s:
        for c in CODECS:
            s.add_table(c, w, codec=c, progress=False)
    return path, {c: decode_rows(c, encode_rows(c, w), DIM) for c in CODECS}


def test_cache_row_bytes_is_the_encoded_row_plus_its_slot():
    assert cache_row_bytes(DIM) == 4 * DIM + SLOT_OVERHEAD_BYTES  # the float32 default
    for c in CODECS:
        assert cache_row_bytes(DIM, c) == row_bytes(c, DIM) + SLOT_OVERHEAD_BYTES
    assert cache_row_bytes(DIM, "float16") == 2 * DIM + SLOT_OVERHEAD_BYTES
    assert cache_row_bytes(DIM, "int8") == 8 + DIM + SLOT_OVERHEAD_BYTES
    budget = 1 << 20
    caps = {c: capacity_rows(budget, DIM, 1 << 30, c) for c in CODECS}
    assert caps["float16"] / caps["float32"] >= 1.9
    assert caps["int8"] / caps["float32"] >= 3.2
    assert pinned_capacity(budget, DIM, 1 << 30, "int8") == budget // (8 + DIM)
    assert pinned_dram_bytes(1000, DIM, 72 * 100, "int8") == 72 * 100 + 16 * -(-1000 // 64)
    crb = cache_row_bytes(DIM, "int8")
    assert cached_dram_bytes(1000, DIM, crb * 10, codec="int8") == 10 * crb + 4 * 1000


def test_a_cache_budget_holds_more_encoded_rows(store):
    path, weights = store
    budget = 500 * cache_row_bytes(DIM)  # 500 float32 rows
    with bandstore.open(path, cache_bytes={c: budget for c in CODECS}) as s:
        info = s.cache_info()
        mem = s.memory()
        for c in CODECS:
            cap = info[c]["capacity_rows"]
            assert cap == budget // cache_row_bytes(DIM, c)
            # The cache's arrays: slot rows as the codec stores them, slot bookkeeping, index.
            assert mem[c]["cache"] == cap * cache_row_bytes(DIM, c) + 4 * ROWS + 32
        assert info["float16"]["capacity_rows"] >= 1.9 * info["float32"]["capacity_rows"]
        assert info["int8"]["capacity_rows"] >= 3.2 * info["float32"]["capacity_rows"]
        # Fill every cache to the brim, then serve all hits from it: right rows, bit for bit.
        rng = np.random.default_rng(0)
        for c in CODECS:
            cap = info[c]["capacity_rows"]
            ids = np.sort(rng.choice(ROWS, cap, replace=False)).astype(np.int64)
            s.lookup(c, ids)
            s.reset_stats()
            assert np.array_equal(s.lookup(c, ids), weights[c][ids])
            st = s.stats()[c]
            assert st["hits"] == st["lookups"] == cap and st["misses"] == 0


def _per_row(m: dict) -> float:
    """DRAM a table holds per row: everything but mapped file pages (layout, page cache)."""
    return (m["bytes"] - m["layout"] - m["page_cache"]) / ROWS


def test_memory_reports_encoded_bytes_per_codec(store):
    path, weights = store
    plan = {c: "resident" for c in CODECS}
    with bandstore.open(path, plan=plan) as s:
        mem = s.memory()
        for c in CODECS:
            assert mem[c]["strategy"] == ROWS * row_bytes(c, DIM)
            assert mem[c]["cache"] <= 4 * ROWS + 32  # no cache beside a resident table
            ids = np.arange(0, ROWS, 5, dtype=np.int64)
            assert np.array_equal(s.lookup(c, ids), weights[c][ids])
        f32 = _per_row(mem["float32"])
        # The bar at D=64, counting the slot index, inverse layout, counts, checksums.
        assert _per_row(mem["int8"]) <= 0.35 * f32
        assert _per_row(mem["float16"]) <= 0.55 * f32
    # Cached, all of the table held: the same bar with the slots' bookkeeping counted.
    with bandstore.open(path, cache_bytes={c: ROWS * cache_row_bytes(DIM, c) for c in CODECS}) as s:
        for c in CODECS:
            s.lookup(c, np.arange(ROWS, dtype=np.int64))
            assert s.cache_info()[c]["cached_rows"] == ROWS
        mem = s.memory()
        f32 = _per_row(mem["float32"])
        assert _per_row(mem["int8"]) <= 0.35 * f32
        assert _per_row(mem["float16"]) <= 0.55 * f32


def test_pinned_set_holds_encoded_rows(store):
    path, weights = store
    counts = {c: (ROWS - np.arange(ROWS)).astype(np.int64) for c in CODECS}  # row 0 hottest
    budget = 300 * 4 * DIM  # 300 float32 rows
    from dataclasses import replace

    from bandstore.serve.plan import Plan

    d = {"workers": 1, "tables": {c: {"strategy": "pinned", "cache_bytes": budget} for c in CODECS}}
    with bandstore.open(path, plan=replace(Plan.from_dict(d), counts=counts)) as s:
        info = s.cache_info()
        mem = s.memory()
        for c in CODECS:
            k = budget // row_bytes(c, DIM)
            assert info[c]["pinned_rows"] == k
            assert mem[c]["strategy"] == k * row_bytes(c, DIM) + 16 * -(-ROWS // 64)
            ids = np.arange(k, dtype=np.int64)
            s.reset_stats()
            got = s.embedding_bag(c, ids, np.arange(0, k, 10, dtype=np.int64), mode="max")
            want = embedding_bag_ref(weights[c], ids, np.arange(0, k, 10), "max")
            assert np.array_equal(got, want.astype(np.float32))
            assert s.stats()[c]["hits"] == k  # all from the pinned set


def test_sizing_simulation_counts_encoded_rows():
    rng = np.random.default_rng(3)
    rows, rpb = 5000, 16
    ids = rng.integers(0, rows, 20000)
    off = np.arange(0, ids.size + 1, 10)
    layout = np.arange(rows, dtype=np.int64)
    sizes = [0, 100 * cache_row_bytes(DIM), 1000 * cache_row_bytes(DIM)]
    cv = {
        c: simulate(
            ids, off, layout, rpb, DIM, sizes_bytes=sizes, codec=c, row_bytes=row_bytes(c, DIM)
        )
        for c in CODECS
    }
    for c in CODECS:
        assert cv[c].codec == c
        want = [min(rows, s // cache_row_bytes(DIM, c)) for s in sizes]
        assert cv[c].capacity_rows.tolist() == want
        assert cv[c].smallest_useful_bytes == rpb * cache_row_bytes(DIM, c)
    # More rows per byte: fewer misses at the same DRAM (uniform ids: about the hit share).
    mr = {c: cv[c].miss_ratio[0, 0] for c in CODECS}
    assert mr["int8"][2] < mr["float16"][2] < mr["float32"][2]


def test_planner_counts_encoded_rows(store):
    from bandstore.tune.planning.model import TableProfile

    zero = np.zeros(1)
    p = {c: TableProfile("t", ROWS, DIM, c, 16, 4096, 1.0, 1.0, zero, zero, zero) for c in CODECS}
    assert p["float32"].resident_bytes == ROWS * 4 * DIM
    assert p["int8"].resident_bytes == ROWS * (8 + DIM)
    assert p["float16"].resident_bytes == ROWS * 2 * DIM


# ---- the short plan form --------------------------------------------------------------------
def test_plan_as_a_mapping_of_strategy_names(store):
    path, weights = store
    plan = {"float32": "resident", "float16": "direct", "int8": "cached"}
    with bandstore.open(path) as s:
        default = s.cache_info()  # the sizes without a plan
    with bandstore.open(path, plan=plan, workers=2) as s:
        p = s.plan
        assert {n: tp.strategy for n, tp in p.tables.items()} == plan
        assert p.workers == s.workers == 2
        order = list(s.tables)
        for n, tp in p.tables.items():
            assert tp.workers == (order.index(n) % 2,)  # dealt round-robin
        info = s.cache_info()
        assert info["int8"]["capacity_rows"] == default["int8"]["capacity_rows"] > 0
        assert info["int8"]["source"] == "plan"
        assert type(s._tables["float32"].runner).__name__ == "ResidentRunner"
        assert type(s._tables["float16"].runner).__name__ == "DirectRunner"
        rng = np.random.default_rng(1)
        for mode in ("sum", "mean", "max"):
            check_against_reference(s, weights, random_request(rng, weights), mode, None)
    # Only some tables named: the others are served cached, as without a plan.
    with bandstore.open(path, plan={"int8": "split:resident"}, workers=2) as s:
        assert set(s.plan.tables) == {"int8"}
        assert s.plan.tables["int8"].workers == (0, 1)
        assert s._tables["float32"].runner is None
        check_against_reference(s, weights, random_request(rng, weights), "sum", None)


def test_set_plan_takes_the_mapping_form(store):
    path, weights = store
    with bandstore.open(path) as s:
        s.set_plan({"float16": "resident", "int8": "split"}, persist=False)
        assert s.plan.tables["float16"].strategy == "resident"
        assert s.plan.tables["int8"].strategy == "split"
        assert s.plan.tables["int8"].inner == "cached"
        rng = np.random.default_rng(2)
        check_against_reference(s, weights, random_request(rng, weights), "sum", 3)


def test_mapping_plan_errors_name_the_problem(store):
    path, _ = store
    with pytest.raises(bandstore.PlanError, match="'nope'") as exc:
        bandstore.open(path, plan={"nope": "resident"})
    assert exc.value.table == "nope"
    with pytest.raises(bandstore.PlanError, match="unknown strategy 'fast'") as exc:
        bandstore.open(path, plan={"int8": "fast"})
    assert exc.value.table == "int8"
    with pytest.raises(bandstore.PlanError, match="unknown strategy 'split:split'"):
        bandstore.open(path, plan={"int8": "split:split"})
    # A pinned table ranks its rows by access counts: this store has none.
    with pytest.raises(bandstore.PlanError, match="access counts"):
        bandstore.open(path, plan={"int8": "pinned"})
    with bandstore.open(path) as s:
        with pytest.raises(bandstore.PlanError, match="unknown strategy"):
            s.set_plan({"int8": "fast"}, persist=False)
        assert s.plan is None  # unchanged
