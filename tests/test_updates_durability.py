"""Row updates under crashes, threads and other processes, and against a model.

Writers and readers in other processes are forked from the test (a fresh interpreter costs
seconds to import numba); a child forgets the LMDB environments the parent has open and opens
its own, so none is ever used across a fork.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, stateful
from hypothesis import strategies as st

import bandstore
from bandstore.serve.cache import cache_row_bytes
from bandstore.storage.catalog import _envs
from bandstore.storage.codecs import decode_rows, encode_rows
from bandstore.storage.versions import collect_garbage

D = 16
ROWS = 3000


def _update_of(i: int) -> tuple[np.ndarray, float]:
    """Update number ``i`` of the kill test: its ids and its value (every entry of a row)."""
    r = np.random.default_rng(i)
    return np.unique(r.integers(0, ROWS, int(r.integers(1, 400)))), float(i + 1)


def _fork(child) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            # An LMDB environment must not be used across a fork: the child forgets the ones
            # the parent has open (other tests' stores) and opens its own.
            _envs.clear()
            child()
            code = 0
        finally:
            os._exit(code)
    return pid


def _read_lines(fd: int) -> list[str]:
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b"".join(chunks).decode().splitlines()


def test_kill_9_loses_no_acknowledged_update(tmp_path):
    path = tmp_path / "s"
    with bandstore.create(path, block_size=1024) as s:
        s.add_table("t", np.zeros((ROWS, D), np.float32), progress=False)
    model = np.zeros(ROWS)
    rng = np.random.default_rng(7)
    trials, compactions, in_flight_applied = 20, 0, 0
    for trial in range(trials):
        first = 1000 * trial
        r_fd, w_fd = os.pipe()

        def writer(first=first, w_fd=w_fd, r_fd=r_fd):
            os.close(r_fd)
            s = bandstore.open(path, writable=True, cache_bytes=0)
            os.write(w_fd, b"ready\n")
            i = first
            while True:
                ids, v = _update_of(i)
                seq = s.update("t", ids, np.full((ids.size, D), v, np.float32))
                os.write(w_fd, f"ack {i} {seq}\n".encode())
                if i % 5 == 4:
                    s.compact(progress=False)  # killed mid-compaction some of the time
                    os.write(w_fd, b"compacted\n")
                i += 1

        pid = _fork(writer)
        os.close(w_fd)
        assert os.read(r_fd, 6) == b"ready\n"
        time.sleep(float(rng.uniform(0.0, 0.35)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        lines = _read_lines(r_fd)
        acked = [int(x.split()[1]) for x in lines if x.startswith("ack")]
        compactions += sum(x == "compacted" for x in lines)
        assert acked == list(range(first, first + len(acked)))
        for i in acked:
            ids, v = _update_of(i)
            model[ids] = v
        with bandstore.open(path, cache_bytes=20_000) as s:
            got = s.lookup("t", np.arange(ROWS))
            assert (got == got[:, :1]).all(), "a torn row"
            got = got[:, 0]
            # The update in flight at the kill is there entirely or not at all.
            ids, v = _update_of(first + len(acked))
            landed = got[ids] == v
            assert landed.all() or not landed.any()
            if landed.all():
                model[ids] = v
                in_flight_applied += 1
            assert np.array_equal(got, model), f"trial {trial}: rows differ from the model"
            assert s.verify() == []
        if trial % 6 == 5:
            collect_garbage(path)  # orphans of killed compactions; folded records
    assert compactions > 0  # the kills landed during compactions' lives too
    with bandstore.open(path) as s:
        assert np.array_equal(s.lookup("t", np.arange(ROWS))[:, 0], model)


def test_visible_in_another_process_within_a_second(tmp_path):
    path = tmp_path / "s"
    with bandstore.create(path, block_size=1024) as s:
        s.add_table("t", np.zeros((100, D), np.float32), progress=False)
    r_fd, w_fd = os.pipe()
    rounds = 5

    def reader():
        os.close(r_fd)
        with bandstore.open(path) as s:
            s.lookup("t", [0])
            os.write(w_fd, b"ready\n")
            seen = 0
            deadline = time.monotonic() + 20
            while seen < rounds and time.monotonic() < deadline:
                v = s.lookup("t", [7])[0, 0]
                if v > seen:
                    seen = int(v)
                    os.write(w_fd, f"{seen} {time.time()}\n".encode())
                time.sleep(0.002)

    pid = _fork(reader)
    os.close(w_fd)
    try:
        assert os.read(r_fd, 6) == b"ready\n"
        acked = {}
        with bandstore.open(path, writable=True) as w:
            for k in range(1, rounds + 1):
                w.update("t", [7], np.full((1, D), k, np.float32))
                acked[k] = time.time()
                time.sleep(0.3)
    finally:
        os.waitpid(pid, 0)
    lines = _read_lines(r_fd)
    seen = {int(a): float(b) for a, b in (x.split() for x in lines)}
    assert set(seen) == set(acked)
    lags = [seen[k] - acked[k] for k in acked]
    assert max(lags) < 1.0, lags


def test_threads_never_see_torn_rows_or_half_an_update(tmp_path):
    path = tmp_path / "s"
    rows = 800
    with bandstore.create(path, block_size=512) as s:
        for n in ("a", "b"):
            s.add_table(n, np.zeros((rows, D), np.float32), progress=False)
    plans = [
        None,
        {"workers": 2, "tables": {"a": {"strategy": "resident", "worker": 0},
                                  "b": {"strategy": "split", "inner": "cached",
                                        "workers": [0, 1], "cache_bytes": 100 * 4 * D}}},
    ]  # fmt: skip
    stop = threading.Event()
    errors: list[str] = []
    calls = [0, 0, 0]
    writer = bandstore.open(path, writable=True, cache_bytes=50 * cache_row_bytes(D))

    def read_loop(k, store):
        r = np.random.default_rng(k)
        last = np.zeros(rows)
        while not stop.is_set():
            ids = r.integers(0, rows, 200)
            off = np.arange(200, dtype=np.int64)
            got = store.lookup_many({"a": (ids, off), "b": (ids, off)}, mode="max")
            for name in ("a", "b"):
                if not (got[name] == got[name][:, :1]).all():
                    errors.append(f"torn row in {name}")
            if not np.array_equal(got["a"], got["b"]):
                errors.append("a call mixed rows from before and after an update")
            v = got["a"][:, 0]
            if (v < last[ids]).any():
                errors.append("a row went back to an older value")
            np.maximum.at(last, ids, v)
            calls[k] += 1

    readers = [bandstore.open(path, plan=p or False, cache_bytes=None if p else 4000)
               for p in plans]  # fmt: skip
    threads = [
        threading.Thread(target=read_loop, args=(k, s)) for k, s in enumerate([*readers, writer])
    ]
    for t in threads:
        t.start()
    try:
        r = np.random.default_rng(0)
        for v in range(1, 40):
            ids = r.integers(0, rows, 100)
            full = np.full((ids.size, D), v, np.float32)
            writer.update_many({"a": (ids, full), "b": (ids, full)})
        time.sleep(0.3)  # the readers' pollers catch up
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in readers:
            s.close()
        writer.close()
    assert errors == []
    assert min(calls) > 0


class UpdateModel(stateful.RuleBasedStateMachine):
    """Updates, lookups through every strategy, compaction, relayout, gc and reopening, against
    a dict of numpy arrays."""

    TABLES = {"a": (70, 6, "float32"), "c": (50, 5, "int8")}
    PLANS = {
        "cached": False,
        "mixed": {"workers": 2, "tables": {
            "a": {"strategy": "split", "inner": "cached", "workers": [0, 1],
                  "cache_bytes": 12 * cache_row_bytes(6), "replicate": [0, 1]},
            "c": {"strategy": "pinned", "worker": 1, "cache_bytes": 10 * 4 * 5}}},
        "other": {"workers": 2, "tables": {
            "a": {"strategy": "pinned", "worker": 0, "cache_bytes": 8 * 4 * 6},
            "c": {"strategy": "split", "inner": "resident", "workers": [1, 0]}}},
        "direct": {"workers": 1, "tables": {
            "a": {"strategy": "direct", "worker": 0},
            "c": {"strategy": "resident", "worker": 0}}},
    }  # fmt: skip

    def __init__(self):
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self._dir.name, "s")
        rng = np.random.default_rng(0)
        self.model = {}
        with bandstore.create(self.path, block_size=512) as s:
            for n, (rows, dim, codec) in self.TABLES.items():
                w = rng.standard_normal((rows, dim)).astype(np.float32)
                s.add_table(n, w, codec=codec, progress=False)
                self.model[n] = decode_rows(codec, encode_rows(codec, w), dim)
            s.set_tuning(
                {n: {"cache_bytes": 10 * cache_row_bytes(t[1])} for n, t in self.TABLES.items()},
                counts={n: rng.integers(0, 50, t[0]) for n, t in self.TABLES.items()},
            )
        self.writer = bandstore.open(self.path, writable=True, cache_bytes=300)
        self.readers = {k: bandstore.open(self.path, plan=p) for k, p in self.PLANS.items()}

    def teardown(self):
        for s in self.readers.values():
            s.close()
        self.writer.close()
        self._dir.cleanup()

    @stateful.rule(
        table=st.sampled_from(["a", "c"]),
        ids=st.lists(st.integers(0, 49), min_size=1, max_size=12),
        seed=st.integers(0, 2**16),
    )
    def update(self, table, ids, seed):
        rows, dim, codec = self.TABLES[table]
        vals = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
        self.writer.update(table, ids, vals)
        self.model[table][ids] = decode_rows(codec, encode_rows(codec, vals), dim)

    @stateful.rule(
        who=st.sampled_from(["writer", *PLANS]),
        table=st.sampled_from(["a", "c"]),
        ids=st.lists(st.integers(0, 49), max_size=20),
        mode=st.sampled_from(["copy", "sum", "mean", "max"]),
    )
    def lookup(self, who, table, ids, mode):
        s = self.writer if who == "writer" else self.readers[who]
        if who != "writer":
            s.refresh()
        w = self.model[table]
        ids = np.array(ids, dtype=np.int64)
        if mode == "copy":
            assert np.array_equal(s.lookup(table, ids), w[ids])
            return
        offsets = np.arange(0, len(ids), 3, dtype=np.int64)
        got = s.lookup_many({table: (ids, offsets)}, mode=mode)[table]
        bounds = np.append(offsets, len(ids))
        for b in range(len(offsets)):
            rows = w[ids[bounds[b] : bounds[b + 1]]]
            ref = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0)}[mode]
            np.testing.assert_allclose(got[b], ref, rtol=1e-5, atol=1e-5)
        st_ = s.stats()[table]
        assert st_["lookups"] == st_["hits"] + st_["misses"]

    @stateful.rule()
    def compact(self):
        self.writer.compact(progress=False)

    @stateful.rule(table=st.sampled_from(["a", "c"]), seed=st.integers(0, 100))
    def relayout(self, table, seed):
        rows = self.TABLES[table][0]
        self.writer.relayout_tables(
            {table: np.random.default_rng(seed).permutation(rows)}, progress=False
        )

    @stateful.rule(who=st.sampled_from(["writer", *PLANS]))
    def reopen(self, who):
        if who == "writer":
            self.writer.close()
            self.writer = bandstore.open(self.path, writable=True, cache_bytes=300)
        else:
            self.readers[who].close()
            self.readers[who] = bandstore.open(self.path, plan=self.PLANS[who])

    @stateful.rule()
    def gc(self):
        collect_garbage(self.path)

    @stateful.invariant()
    def writer_agrees(self):
        for n, w in self.model.items():
            assert np.array_equal(self.writer.lookup(n, np.arange(w.shape[0])), w)


TestUpdateModel = UpdateModel.TestCase
TestUpdateModel.settings = settings(
    max_examples=12,
    stateful_step_count=14,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
def test_update_model_longer():
    stateful.run_state_machine_as_test(
        UpdateModel,
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )  # fmt: skip
