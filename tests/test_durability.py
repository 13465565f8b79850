"""The store against a plain-dict model, crash safety of writes, versions, and gc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import stateful
from hypothesis import strategies as st

import bandstore
from bandstore.storage.codecs import decode_rows, encode_rows
from bandstore.storage.versions import collect_garbage


class StoreModel(stateful.RuleBasedStateMachine):
    """Every operation on the store is mirrored on {table: decoded rows}; reads must agree."""

    def __init__(self):
        super().__init__()
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self._dir.name, "s")
        self.store = bandstore.create(self.path, block_size=512)
        self.model: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)

    def teardown(self):
        self.store.close()
        self._dir.cleanup()

    @stateful.rule(
        name=st.sampled_from(["a", "b", "c", "d"]),
        rows=st.integers(1, 90),
        dim=st.integers(1, 20),
        codec=st.sampled_from(["float32", "float16", "int8"]),
    )
    def add_table(self, name, rows, dim, codec):
        data = self.rng.standard_normal((rows, dim)).astype(np.float32)
        if name in self.model:
            with pytest.raises(bandstore.TableExistsError):
                self.store.add_table(name, data, codec=codec)
            return
        self.store.add_table(name, data, codec=codec, progress=False)
        self.model[name] = decode_rows(codec, encode_rows(codec, data), dim)

    @stateful.precondition(lambda self: self.model)
    @stateful.rule(data=st.data())
    def lookup(self, data):
        name = data.draw(st.sampled_from(sorted(self.model)))
        rows = self.model[name].shape[0]
        ids = np.array(data.draw(st.lists(st.integers(0, rows - 1), max_size=30)), dtype=np.int64)
        assert np.array_equal(self.store.lookup(name, ids), self.model[name][ids])

    @stateful.precondition(lambda self: self.model)
    @stateful.rule(data=st.data(), seed=st.integers(0, 100))
    def relayout(self, data, seed):
        name = data.draw(st.sampled_from(sorted(self.model)))
        rows = self.model[name].shape[0]
        layout = np.random.default_rng(seed).permutation(rows + 5)[:rows]  # with holes
        self.store.relayout_tables({name: layout}, progress=False)

    @stateful.rule(cache_rows=st.integers(0, 50))
    def reopen(self, cache_rows):
        self.store.close()
        self.store = bandstore.open(self.path, writable=True, cache_bytes=cache_rows * 100)

    @stateful.invariant()
    def tables_agree(self):
        assert set(self.store.tables) == set(self.model)
        for name, arr in self.model.items():
            assert self.store.tables[name].rows == arr.shape[0]
            assert self.store.tables[name].dim == arr.shape[1]


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = stateful.Settings(max_examples=15, stateful_step_count=12, deadline=None)


IMPORT_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, bandstore
    s = bandstore.open(sys.argv[1], writable=True)
    print("ready", flush=True)
    s.add_table(sys.argv[2], sys.argv[3], progress=False)
    print("done", flush=True)
    """
)


def test_killed_import_leaves_previous_tables_intact(tmp_path, rng):
    path = tmp_path / "s"
    base = rng.standard_normal((300, 16)).astype(np.float32)
    with bandstore.create(path) as s:
        s.add_table("base", base)
    big = np.lib.format.open_memmap(
        tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(400_000, 64)
    )
    big[:] = 1.0
    del big
    outcomes = []
    for delay in (0.0, 0.15, 0.4, 0.8):
        proc = subprocess.Popen(
            [sys.executable, "-c", IMPORT_SCRIPT, str(path), "big", str(tmp_path / "big.npy")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with bandstore.open(path) as s:
            assert s.verify() == []
            assert np.array_equal(s.lookup("base", np.arange(300)), base)
            outcomes.append("big" in s.tables)
            if "big" in s.tables:
                assert np.all(s.lookup("big", [0, 399_999]) == 1.0)
                break
    # Garbage of killed writers goes away and the store still serves.
    collect_garbage(path)
    with bandstore.open(path) as s:
        assert s.verify() == []
        assert np.array_equal(s.lookup("base", [7]), base[[7]])
    assert outcomes[0] is False  # the first kill interrupted the import mid-way


def test_readers_keep_their_version_and_gc_spares_it(tmp_path, rng):
    path = tmp_path / "s"
    w = rng.standard_normal((200, 8)).astype(np.float32)
    with bandstore.create(path, block_size=512) as s:
        s.add_table("t", w)
    reader = bandstore.open(path, cache_bytes=0)
    v_old = reader.version
    with bandstore.open(path, writable=True) as writer:
        writer.relayout_tables({"t": rng.permutation(200)}, progress=False)
        v_new = writer.version
    assert v_new > v_old
    result = collect_garbage(path)
    assert v_old in result["kept"]  # the reader still holds it
    assert np.array_equal(reader.lookup("t", np.arange(200)), w)
    assert reader.refresh() and reader.version == v_new
    assert np.array_equal(reader.lookup("t", np.arange(200)), w)
    reader.close()
    result = collect_garbage(path)
    assert v_old in result["removed"] and result["kept"] == [v_new]
    with bandstore.open(path) as s:
        assert s.verify() == [] and np.array_equal(s.lookup("t", np.arange(200)), w)


def test_threads_read_while_another_store_relayouts(tmp_path, rng):
    path = tmp_path / "s"
    w = rng.standard_normal((2000, 8)).astype(np.float32)
    with bandstore.create(path, block_size=512) as s:
        s.add_table("t", w)
    stop = threading.Event()
    errors: list[str] = []

    def read_loop(seed):
        r = np.random.default_rng(seed)
        with bandstore.open(path, cache_bytes=4000) as s:
            while not stop.is_set():
                ids = r.integers(0, 2000, 50)
                if not np.array_equal(s.lookup("t", ids), w[ids]):
                    errors.append("wrong rows")
                s.refresh()

    readers = [threading.Thread(target=read_loop, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    try:
        with bandstore.open(path, writable=True) as writer:
            for i in range(5):
                writer.relayout_tables(
                    {"t": np.random.default_rng(i).permutation(2000)}, progress=False
                )
                collect_garbage(path)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
