"""The serving lifecycle as a hypothesis state machine, checked against a model.

Two handles on one store: a reader ``r`` (what a model server holds) and a writer ``w`` (what an
offline job holds). Steps: lookups through either, the writer committing a relayout (rows
unchanged, blocks reordered), the reader refreshing, plans installed on the reader (for itself)
or stored by the writer, cache policies stored by the writer, the reader closed and reopened.
The model is the rows as numpy arrays (a relayout never changes them) plus what each handle
should serve: its version, its plan's strategies, its counters.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from reference import embedding_bag_ref

import bandstore
from bandstore.serve.cache import cache_row_bytes

DIM = 4
ROWS = {"a": 400, "b": 150}
CRB = cache_row_bytes(DIM)
PLANS = [
    None,
    {"workers": 1, "tables": {"a": {"strategy": "cached", "cache_bytes": 40 * CRB},
                              "b": {"strategy": "resident"}}},
    {"workers": 2, "tables": {"a": {"strategy": "split", "inner": "direct", "workers": [0, 1]},
                              "b": {"strategy": "direct", "worker": 1}}},
    {"workers": 2, "tables": {"a": {"strategy": "split", "inner": "cached", "workers": [1, 0],
                                    "cache_bytes": 30 * CRB, "replicate": [0, 1]},
                              "b": {"strategy": "cached", "worker": 0, "cache_bytes": 20 * CRB}}},
]  # fmt: skip


def _strategies(plan) -> dict[str, str] | None:
    """A plan (dict or Plan) by its strategies per table; None for no plan."""
    if plan is None:
        return None
    if isinstance(plan, dict):
        return {n: e["strategy"] for n, e in plan["tables"].items()}
    return {n: tp.strategy for n, tp in plan.tables.items()}


class Lifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.r = self.w = None

    @initialize()
    def setup(self):
        import tempfile

        self.tmp = tempfile.TemporaryDirectory(prefix="bandstore-lifecycle-")
        self.path = f"{self.tmp.name}/store"
        rng = np.random.default_rng(5)
        self.rows = {n: rng.standard_normal((r, DIM)).astype(np.float32) for n, r in ROWS.items()}
        with bandstore.create(self.path, block_size=512) as s:
            for n, w in self.rows.items():
                s.add_table(n, w, progress=False)
        self.w = bandstore.open(self.path, writable=True, plan=False)
        self.r = bandstore.open(self.path)
        # The model.
        self.version = self.w.version  # the catalog's current version
        self.r_version = self.r.version
        self.stored_plan = None  # what the catalog holds
        self.r_plan = None  # what the reader serves
        self.r_given = False  # whether the reader serves a plan given to it (not the stored one)
        self.r_lookups = 0
        self.tuning: dict[str, int] = {}
        self.layouts = {n: np.arange(r, dtype=np.int64) for n, r in ROWS.items()}

    def teardown(self):
        for s in (self.r, self.w):
            if s is not None:
                s.close()
        if getattr(self, "tmp", None) is not None:
            self.tmp.cleanup()

    # ---- lookups -----------------------------------------------------------------------------
    @rule(seed=st.integers(0, 2**31), mode=st.sampled_from(["sum", "mean", "max"]),
          reader=st.booleans())  # fmt: skip
    def lookup_many(self, seed, mode, reader):
        rng = np.random.default_rng(seed)
        req = {}
        for n, rows in ROWS.items():
            sizes = rng.integers(0, 6, 10)
            ids = (rng.zipf(1.3, int(sizes.sum())) - 1) % rows
            req[n] = (ids.astype(np.int64), np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        s = self.r if reader else self.w
        out = s.lookup_many(req, mode=mode)
        for n, (i, o) in req.items():
            ref = embedding_bag_ref(self.rows[n], i, o, mode)
            np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-5)
        if reader:
            self.r_lookups += sum(int(i.size) for i, _ in req.values())

    @rule(table=st.sampled_from(sorted(ROWS)), seed=st.integers(0, 2**31))
    def lookup_rows(self, table, seed):
        ids = np.random.default_rng(seed).integers(0, ROWS[table], 20)
        assert np.array_equal(self.r.lookup(table, ids), self.rows[table][ids])
        self.r_lookups += ids.size

    # ---- the writer --------------------------------------------------------------------------
    @rule(table=st.sampled_from(sorted(ROWS)), seed=st.integers(0, 2**31),
          holes=st.integers(0, 9))  # fmt: skip
    def writer_relayouts(self, table, seed, holes):
        rows = ROWS[table]
        layout = np.random.default_rng(seed).permutation(rows + holes)[:rows]
        vid = self.w.relayout_tables({table: layout}, progress=False)
        assert vid > self.version and self.w.version == vid
        self.version = vid
        self.layouts[table] = layout
        assert self.r.version == self.r_version  # readers keep their version until refresh

    @rule(table=st.sampled_from(sorted(ROWS)), rows=st.integers(0, 60),
          threshold=st.sampled_from([0, 1, 3, bandstore.NEVER]),
          share=st.sampled_from([0.0, 0.5]))  # fmt: skip
    def writer_sets_tuning(self, table, rows, threshold, share):
        counts = {table: np.arange(ROWS[table], dtype=np.int64)[::-1] % 5}
        rec = {"cache_bytes": rows * CRB, "threshold": threshold, "pinned_share": share}
        self.w.set_tuning({table: rec}, counts=counts)
        self.tuning[table] = rows * CRB
        got = self.w.catalog.tuning(table)
        stored = "never" if threshold == bandstore.NEVER else threshold  # JSON's spelling
        assert got["cache_bytes"] == rows * CRB and got["threshold"] == stored
        policy = self.w.cache_policy(table)
        assert policy.cache_bytes == rows * CRB and policy.pinned_share == share
        np.testing.assert_array_equal(self.w.table_counts(table), counts[table])

    @rule(which=st.integers(0, len(PLANS) - 1))
    def writer_stores_a_plan(self, which):
        self.w.set_plan(PLANS[which], persist=True)
        self.stored_plan = PLANS[which]
        assert _strategies(self.w.plan) == _strategies(PLANS[which])

    # ---- the reader --------------------------------------------------------------------------
    @rule(which=st.integers(0, len(PLANS) - 1))
    def reader_sets_its_plan(self, which):
        self.r.set_plan(PLANS[which], persist=False)
        self.r_plan, self.r_given = PLANS[which], True

    @rule()
    def reader_refreshes(self):
        moved = self.r.refresh()
        assert moved == (self.r_version != self.version)
        if moved and not self.r_given:
            self.r_plan = self.stored_plan  # a new version brings the stored plan
        self.r_version = self.version

    @rule()
    def reader_closes_and_reopens(self):
        self.r.close()
        with pytest.raises(bandstore.StoreClosedError):
            self.r.lookup("a", [0])
        self.r = bandstore.open(self.path)
        self.r_version, self.r_plan, self.r_given, self.r_lookups = (
            self.version, self.stored_plan, False, 0,
        )  # fmt: skip

    @precondition(lambda self: self.r_version == self.version)
    @rule(table=st.sampled_from(sorted(ROWS)))
    def reader_sees_the_current_layout(self, table):
        np.testing.assert_array_equal(self.r.table_layout(table)[0], self.layouts[table])

    # ---- always ------------------------------------------------------------------------------
    @invariant()
    def reader_matches_the_model(self):
        if self.r is None:
            return
        assert self.r.version == self.r_version
        assert _strategies(self.r.plan) == _strategies(self.r_plan)
        st_ = self.r.stats()
        assert st_["total"]["lookups"] == self.r_lookups
        for n in (*ROWS, "total"):
            assert st_[n]["lookups"] == st_[n]["hits"] + st_[n]["misses"]


Lifecycle.TestCase.settings = settings(
    max_examples=30, stateful_step_count=12, deadline=None, derandomize=True
)
TestLifecycle = Lifecycle.TestCase


@pytest.mark.slow
def test_lifecycle_longer():
    """More and longer runs (``-m slow``)."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        Lifecycle,
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )
