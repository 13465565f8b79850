"""The closed loop: a serving store follows the versions a rebuild commits by itself (no
refresh, no restart), between calls, never mixing two versions in one call; updates racing
the rebuild are folded up to what its commit read and served on top of it after."""

from __future__ import annotations

import importlib.util
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from reference import embedding_bag_ref

import bandstore
import bandstore.tune
from bandstore.demo import create_store_for_trace
from bandstore.options import ServeOptions
from bandstore.serve.follow import CallGate
from bandstore.storage.codecs import decode_rows
from bandstore.traces.synth import synth

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
FOLLOW = ServeOptions(follow_versions=True)


@pytest.fixture
def tiny(tmp_path):
    """Two small tables (dim 8) and a trace with co-access communities: a rebuild in seconds."""
    trace = synth({"item": 1500, "user": 400}, 800, pooling=5, community_size=16, co_access=0.9)
    path = tmp_path / "tiny"
    create_store_for_trace(path, trace, dim=8, block_size=512, progress=False).close()
    with bandstore.open(path) as s:
        weights = {n: s.decoded_rows(n, 0, i.rows) for n, i in s.tables.items()}
    return path, trace, weights


def _request(rng, weights, bags=16, avoid=None):
    req = {}
    for n, w in weights.items():
        sizes = rng.integers(0, 6, bags)
        ids = rng.integers(0, w.shape[0], int(sizes.sum()))
        if avoid is not None:  # leave out the rows being updated
            keep = ~np.isin(ids, avoid[n])
            ids = ids[keep]
            sizes = np.bincount(np.repeat(np.arange(bags), sizes)[keep], minlength=bags)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        req[n] = (ids.astype(np.int64), offsets)
    return req


def _check(store, weights, req, mode="sum"):
    out = store.lookup_many(req, mode=mode)
    for n, (ids, off) in req.items():
        ref = embedding_bag_ref(weights[n], ids, off, mode, None)
        np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-5)
    return sum(int(ids.size) for ids, _ in req.values())


def _wait(pred, timeout=20.0):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.01)
    return True


def test_the_option_is_off_by_default_and_checked():
    assert ServeOptions().follow_versions is False
    with pytest.raises(bandstore.InvalidArgumentError, match="follow_versions"):
        ServeOptions(follow_versions="yes")  # type: ignore[arg-type]


def test_a_following_store_serves_a_new_version_without_refresh(tiny, rng):
    path, _, weights = tiny
    weights = {n: w.copy() for n, w in weights.items()}
    with bandstore.open(path, options=FOLLOW) as r, bandstore.open(path) as plain:
        assert r.follows_versions and not plain.follows_versions
        v0 = r.version
        looked = 0
        for _ in range(5):
            looked += _check(r, weights, _request(rng, weights))
        cached_before = r.cache_info()["item"]["cached_rows"]
        assert cached_before > 0
        new_row = np.full((1, 8), 0.5, dtype=np.float32)
        with bandstore.open(path, writable=True) as w:
            w.update("item", [3], new_row)
            v1 = w.relayout_tables({"item": np.random.default_rng(1).permutation(1500)})
        weights["item"][3] = new_row[0]
        assert _wait(lambda: r.version == v1), "the follower never switched"
        assert plain.version == v0  # a handle that does not follow keeps its snapshot
        for _ in range(5):
            looked += _check(r, weights, _request(rng, weights))
        np.testing.assert_array_equal(r.lookup("item", [3]), new_row)
        total = r.stats()["total"]
        # Counters go on across the switch: every id looked up is counted once.
        assert total["lookups"] == looked + 1
        assert total["lookups"] == total["hits"] + total["misses"]
        assert total["version_swaps"] == 1 and r.version == v1
        assert total["version_swap_errors"] == 0
        assert total["last_swap_blocked_seconds"] <= total["last_swap_seconds"]
        # The new table's cache was warmed with the rows the old one held (read from the new
        # version's file, not counted as lookups).
        assert 0 < total["warm_rows"] <= cached_before
        assert total["warm_blocks_read"] > 0


def test_calls_never_mix_versions(tiny):
    """Readers check that one call sees both tables' marker rows from one update, while a
    writer updates both together and folds them into a new version (changing the block
    count: the tables are new objects) again and again."""
    path, _, weights = tiny
    stop = threading.Event()
    bad: list[str] = []
    calls = [0]
    ids = {"item": np.array([7], dtype=np.int64), "user": np.array([7], dtype=np.int64)}
    req = {n: (ids[n], np.zeros(1, dtype=np.int64)) for n in ids}

    def read(store):
        while not stop.is_set():
            out = store.lookup_many(req)
            a, b = float(out["item"][0, 0]), float(out["user"][0, 0])
            if a >= 1000 and a != b:  # before the first update both are the random values
                bad.append(f"item {a} user {b} in one call")
            calls[0] += 1

    with bandstore.open(path, options=FOLLOW) as r:
        threads = [threading.Thread(target=read, args=(r,)) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            with bandstore.open(path, writable=True) as w:
                rng = np.random.default_rng(3)
                for k in range(4):
                    for j in range(3):
                        v = np.full((1, 8), 1000 + 10 * k + j, dtype=np.float32)
                        w.update_many({"item": ([7], v), "user": ([7], v)})
                    rows = {"item": 1500, "user": 400}
                    # spread over more blocks each time (holes): every table is new
                    layouts = {n: rng.permutation(m) * (k + 2) for n, m in rows.items()}
                    vid = w.relayout_tables(layouts)
                    assert _wait(lambda vid=vid: r.version == vid)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not bad, bad[:3]
        assert r.stats()["total"]["version_swaps"] == 4
        out = r.lookup_many(req)
        assert out["item"][0, 0] == out["user"][0, 0] == 1032
    assert calls[0] > 0


def test_the_gate_waits_for_calls_in_flight_and_holds_new_ones():
    gate = CallGate()
    events: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def call():
        outer = gate.enter()
        inside.set()
        release.wait()
        events.append("call done")
        gate.leave(outer)

    def late_call():
        outer = gate.enter()
        events.append("late call")
        gate.leave(outer)

    t = threading.Thread(target=call)
    t.start()
    inside.wait()

    def switch():
        with gate.exclusive():
            events.append("switch")
            time.sleep(0.05)

    s = threading.Thread(target=switch)
    s.start()
    time.sleep(0.05)
    assert events == []  # the switch waits for the call in flight
    late = threading.Thread(target=late_call)
    assert _wait(lambda: gate._closing, 5)
    late.start()
    time.sleep(0.02)
    release.set()
    for th in (t, s, late):
        th.join(5)
    assert events == ["call done", "switch", "late call"]
    # Re-entrant: a call inside a call passes, and may switch without waiting for itself.
    outer = gate.enter()
    inner = gate.enter()
    with gate.exclusive():
        pass
    gate.leave(inner)
    gate.leave(outer)
    assert gate.active == 0


def _updater(path, tables, stop, log, rng_seed):
    """Update random rows of both tables until ``stop`` (a row's values = its update's seq)."""
    rng = np.random.default_rng(rng_seed)
    with bandstore.open(path, writable=True) as w:
        while not stop.is_set() or len(log) < 5:
            tag = float(len(log) + 1)  # the rows say which update wrote them
            batch = {}
            for n, rows in tables.items():
                ids = rng.choice(rows, 4, replace=False)
                batch[n] = (ids, np.full((4, 8), tag, np.float32))
            seq = w.update_many(batch)
            log.append((seq, {n: ids for n, (ids, _) in batch.items()}, tag))
            time.sleep(0.002)


def test_updates_racing_a_rebuild_are_folded_or_served_on_top(tiny):
    path, trace, weights = tiny
    rows = {n: w.shape[0] for n, w in weights.items()}
    stop = threading.Event()
    log: list = []
    with bandstore.open(path, options=FOLLOW) as r:
        v0 = r.version
        th = threading.Thread(target=_updater, args=(path, rows, stop, log, 5))
        th.start()
        try:
            assert _wait(lambda: len(log) >= 3)
            with bandstore.open(path, writable=True, plan=False) as w:
                report = bandstore.tune.rebuild(w, trace, method="frequency", batch_size=BATCH)
            n_during = len(log)
            time.sleep(0.1)
        finally:
            stop.set()
            th.join()
        assert report.version == v0 + 1 and len(log) > n_during
        expected = {n: w.copy() for n, w in weights.items()}
        for _, batch, tag in log:
            for n, ids in batch.items():
                expected[n][ids] = tag
        # The serving store moved by itself and serves every update.
        assert _wait(lambda: r.version == report.version)
        assert _wait(lambda: r.updates_info()["served_seq"] >= log[-1][0])
        for n in rows:
            np.testing.assert_array_equal(r.lookup(n, np.arange(rows[n])), expected[n])
        rec = r.catalog.current_version()
        info = r.updates_info()
        commits = 0
        for n in rows:
            folded = int(rec["tables"][n].get("folded_seq", 0))
            t = r._tables[n]
            # The block file holds exactly the updates up to its folded seq ...
            in_file = {m: w.copy() for m, w in weights.items()}
            later: set[int] = set()
            for seq, batch, tag in log:
                if seq <= folded:
                    in_file[n][batch[n]] = tag
                else:
                    later.update(batch[n].tolist())
            raw = t.raw_rows(np.asarray(t.layout))
            np.testing.assert_array_equal(decode_rows("float32", raw, 8), in_file[n])
            # ... and the later ones are still in the log, served on top of it.
            assert info["overlay_rows"].get(n, 0) == len(later)
            if report.tables[n].layout == "commit":
                assert 0 < folded < log[-1][0]  # the rebuild folded the ones it read
                commits += 1
        assert commits  # (the test is about folding: at least one table was relayouted)
    with bandstore.open(path) as fresh:
        for n in rows:
            np.testing.assert_array_equal(fresh.lookup(n, np.arange(rows[n])), expected[n])


def _load_tool():
    spec = importlib.util.spec_from_file_location("rebuild_tool", ROOT / "tools" / "rebuild.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_a_server_swaps_to_the_rebuilt_version_while_serving(tiny, tmp_path):
    pytest.importorskip("starlette")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from bandstore.server import ServerOptions, create_app

    path, trace, weights = tiny
    expected = {n: w.copy() for n, w in weights.items()}
    logs = tmp_path / "logs"
    store = bandstore.open(path, writable=True, record=logs, sample_rate=1.0, options=FOLLOW)
    v0 = store.version
    updated = {"item": np.arange(0, 1500, 50), "user": np.arange(1, 400, 40)}
    rng = np.random.default_rng(9)

    def lookup(c, bags=8):
        req = _request(rng, weights, bags=bags, avoid=updated)
        body = {"tables": {n: {"indices": i.tolist(), "offsets": o.tolist()}
                           for n, (i, o) in req.items()}}  # fmt: skip
        resp = c.post("/v1/lookup", json=body)
        assert resp.status_code == 200, resp.text
        for n, (i, o) in req.items():
            ref = embedding_bag_ref(weights[n], i, o, "sum", None)
            np.testing.assert_allclose(resp.json()["tables"][n], ref, rtol=1e-5, atol=1e-5)

    def metric(c, name):
        for line in c.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    with TestClient(create_app(store, ServerOptions(allow_updates=True))) as c:
        # Traffic to record: the trace's own queries (one bag of each table per query).
        for q0 in range(0, trace.n_queries, 100):
            part = trace.query_slice(q0, min(trace.n_queries, q0 + 100))
            body = {"tables": {}}
            for n in part.table_names:
                i, o = part.table(n)
                body["tables"][n] = {"indices": i.tolist(), "offsets": o[:-1].tolist()}
            assert c.post("/v1/lookup", json=body).status_code == 200
        store.recorder.flush()
        assert metric(c, "bandstore_version") == v0
        tool = _load_tool()
        result: dict = {}

        def run_tool():
            args = [str(path), str(logs), "--method", "frequency", "--batch-size", str(BATCH)]
            result["code"] = tool.main(args)

        th = threading.Thread(target=run_tool)
        th.start()
        k = 0
        while th.is_alive() or store.version == v0:
            lookup(c)
            if k % 3 == 0:  # updates race the rebuild through the server
                n = "item" if k % 2 else "user"
                ids = rng.choice(updated[n], 3, replace=False)
                rows = rng.standard_normal((3, 8)).astype(np.float32)
                up = {"tables": {n: {"ids": ids.tolist(), "rows": rows.tolist()}}}
                resp = c.post("/v1/update", json=up)
                assert resp.status_code == 200, resp.text
                expected[n][ids] = rows
            k += 1
            assert k < 20000, "the server never switched"
            assert th.is_alive() or result.get("code") == 0, result
        th.join()
        assert result["code"] == 0
        for _ in range(5):
            lookup(c)
        assert metric(c, "bandstore_version") == v0 + 1
        assert metric(c, "bandstore_version_swaps_total") == 1
        for n, ids in updated.items():
            body = {"tables": {n: {"indices": ids.tolist(), "offsets": list(range(ids.size))}}}
            got = np.asarray(c.post("/v1/lookup", json=body).json()["tables"][n])
            np.testing.assert_allclose(got, expected[n][ids], rtol=1e-6)
    assert store._closed


def test_a_recording_is_readable_while_the_recorder_runs(tmp_path):
    """The rebuild reads the log of a store that is still serving: every frame emitted (at
    ``frame_bytes``) is in the file, not in the recorder's file buffer."""
    from bandstore.traces.recorder import TraceRecorder, read_recorded

    rec = TraceRecorder(tmp_path / "rec", sample_rate=1.0, frame_bytes=4096)
    try:
        ids = np.arange(40, dtype=np.int64)
        off = np.arange(0, 41, 4, dtype=np.int64)  # 10 queries of 4 ids
        for _ in range(30):
            rec.record({"t": (ids, off)})
        assert rec.stats["queries_kept"] == 300
        got = read_recorded(tmp_path / "rec")
        # all but the pending (not yet framed) ones: < 4096 bytes of 376-byte calls
        assert 300 - 120 <= got.n_queries < 300
        np.testing.assert_array_equal(got.table("t")[0][:40], ids)
    finally:
        rec.close()
    assert read_recorded(tmp_path / "rec").n_queries == 300


def test_bandstore_serve_follows_unless_told_not_to():
    pytest.importorskip("uvicorn")
    from bandstore.cli.main import build_parser
    from bandstore.server.run import server_kwargs

    parser = build_parser()
    assert server_kwargs(parser.parse_args(["serve", "s"]))["follow_versions"] is True
    args = parser.parse_args(["serve", "s", "--no-follow-versions"])
    assert server_kwargs(args)["follow_versions"] is False


def test_a_patient_switch_lets_calls_in_while_it_waits_for_a_gap():
    gate = CallGate()
    release = threading.Event()
    inside = threading.Event()
    events: list[str] = []

    def long_call():
        outer = gate.enter()
        inside.set()
        release.wait()
        gate.leave(outer)

    def switch():
        with gate.exclusive(patience=5.0):
            events.append("switch")

    t = threading.Thread(target=long_call)
    t.start()
    inside.wait()
    s = threading.Thread(target=switch)
    s.start()
    assert _wait(lambda: gate._waiting == 1, 5)
    t0 = time.monotonic()
    outer = gate.enter()  # a new call is not held back while the switch waits for a gap
    gate.leave(outer)
    assert time.monotonic() - t0 < 1.0 and events == []
    release.set()  # the gap: the switch runs at once
    s.join(5)
    t.join(5)
    assert events == ["switch"] and not gate._closing
