"""The update log's files (``storage.updatelog``): frames, torn tails, damage, segments, pruning,
stores whose updates were written in LMDB records before the file log."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import xxhash

import bandstore
from bandstore.storage import updatelog, updates
from bandstore.storage.codecs import codec_id
from bandstore.storage.versions import collect_garbage

D = 8
ROWS = 500


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "s"
    with bandstore.create(p, block_size=512) as s:
        s.add_table("t", np.zeros((ROWS, D), np.float32), progress=False)
    return p


def _fresh() -> None:
    """Forget this process's view of every log (as a new process would start)."""
    updatelog._forget()


def _seg(path, n=1):
    return path / "updates" / f"{n:08d}.log"


def _rows(v: float, n: int = 1) -> np.ndarray:
    return np.full((n, D), v, np.float32)


def test_frames_round_trip_and_one_sync_per_group(path, monkeypatch):
    syncs = []
    real = updatelog.os.fdatasync
    monkeypatch.setattr(updatelog.os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    with bandstore.open(path, writable=True) as w:
        assert w.update("t", [3, 1, 3], np.stack([_rows(1)[0], _rows(2)[0], _rows(5)[0]])) == 1
        assert w.update_many({"t": ([7], _rows(4))}) == 2
        assert len(syncs) == 2  # one per frame
        info = w.updates_info()
        assert (info["records"], info["rows"], info["segments"]) == (2, 3, 1)
        assert info["log_bytes"] > updatelog.SEG_HEADER
    _fresh()
    with bandstore.open(path) as r:
        assert r.lookup("t", [1, 3, 7, 0])[:, 0].tolist() == [2.0, 5.0, 4.0, 0.0]
    raw = _seg(path).read_bytes()
    magic, version, hb, base = struct.unpack_from("<8sIIQ", raw, 0)
    assert (magic, version, hb, base) == (b"BSUSEG\0\0", 1, 64, 0)
    assert int.from_bytes(raw[56:64], "little") == xxhash.xxh64_intdigest(raw[:56])
    fmagic, fver, _, plen, first, last, phash = struct.unpack_from("<4sHHQQQQ", raw, 64)
    assert (fmagic, fver, first, last) == (b"BSUF", 1, 1, 1)
    assert xxhash.xxh64_intdigest(raw[112 : 112 + plen]) == phash
    ids = np.frombuffer(raw, "<i8", 2, 112 + 16 + 24 + 8)  # entry, record header, name "t"
    assert ids.tolist() == [1, 3]


def test_concurrent_writers_share_frames(path):
    import threading

    with bandstore.open(path, writable=True) as w:
        seqs = []

        def go(k):
            for i in range(10):
                seqs.append(w.update("t", [k * 10 + i], _rows(k * 10 + i)))

        threads = [threading.Thread(target=go, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seqs) == list(range(1, 41))
        frames = sum(len(s.frames) for s in updates.log(w.catalog).segments)
        assert frames <= 40
    _fresh()
    with bandstore.open(path) as r:
        assert r.lookup("t", np.arange(40))[:, 0].tolist() == list(range(40))


def test_torn_tail_is_never_served_and_a_writer_zeroes_it(path):
    with bandstore.open(path, writable=True) as w:
        for i in range(3):
            w.update("t", [i], _rows(10 + i))
        last = updates.log(w.catalog).segments[-1].frames[-1]
    # The last write torn: its second half never reached the disk.
    with open(_seg(path), "r+b") as f:
        f.seek(last.offset + last.size // 2)
        f.write(bytes(last.size - last.size // 2))
    _fresh()
    with bandstore.open(path) as r:
        assert r.lookup("t", [0, 1, 2])[:, 0].tolist() == [10.0, 11.0, 0.0]
        assert r.verify() == []  # a torn write is not damage
        assert r.updates_info()["update_seq"] == 2
    _fresh()
    with bandstore.open(path, writable=True) as w:
        assert w.update("t", [4], _rows(14)) == 3  # the torn frame's seq was never handed out
        assert w.lookup("t", [2, 4])[:, 0].tolist() == [0.0, 14.0]
        new = updates.log(w.catalog).segments[-1].frames[-1]
        assert new.offset == last.offset
    _fresh()
    with bandstore.open(path) as r:
        assert r.lookup("t", [0, 1, 2, 4])[:, 0].tolist() == [10.0, 11.0, 0.0, 14.0]
        assert r.verify() == []
    # Nothing of the torn write is left past the new frame.
    assert not _seg(path).read_bytes()[new.offset + new.size :].strip(b"\0")


def test_damage_before_the_end_is_refused_with_file_and_offset(path):
    with bandstore.open(path, writable=True) as w:
        for i in range(3):
            w.update("t", [i], _rows(1 + i))
        second = updates.log(w.catalog).segments[-1].frames[1]
    with open(_seg(path), "r+b") as f:  # a header byte of the middle frame
        f.seek(second.offset + 10)
        b = f.read(1)
        f.seek(second.offset + 10)
        f.write(bytes([b[0] ^ 0xFF]))
    _fresh()
    with bandstore.open(path) as r, pytest.raises(bandstore.CorruptLogError) as e:
        r.lookup("t", [0])
    assert (e.value.path, e.value.offset) == (str(_seg(path)), second.offset)
    assert "frame header checksum mismatch" in str(e.value)
    _fresh()
    with pytest.raises(bandstore.CorruptLogError):  # a writer does not "recover" it either
        with bandstore.open(path, writable=True) as w:
            w.update("t", [9], _rows(9))
    _fresh()
    with bandstore.open(path) as r2:
        assert [p["offset"] for p in r2.verify()] == [second.offset]


def test_unknown_log_format_version_is_refused(path):
    with bandstore.open(path, writable=True) as w:
        w.update("t", [1], _rows(1))
    raw = bytearray(_seg(path).read_bytes())
    struct.pack_into("<I", raw, 8, 2)
    raw[56:64] = xxhash.xxh64_intdigest(bytes(raw[:56])).to_bytes(8, "little")
    _seg(path).write_bytes(bytes(raw))
    _fresh()
    with bandstore.open(path) as r, pytest.raises(bandstore.FormatVersionError) as e:
        r.lookup("t", [1])
    assert (e.value.found, e.value.supported) == (2, 1)


def test_segments_roll_and_folded_ones_are_pruned(path, monkeypatch):
    monkeypatch.setattr(updatelog, "SEGMENT_MIN", 4096)
    monkeypatch.setattr(updatelog, "SEGMENT_MAX", 4096)
    want = np.zeros(ROWS)
    with bandstore.open(path, writable=True) as w:
        for i in range(12):
            ids = np.arange(i * 40, i * 40 + 40)
            w.update("t", ids, _rows(i + 1, 40))  # 40 rows x 40 B: two frames per segment
            want[ids] = i + 1
        assert w.updates_info()["segments"] >= 6
    _fresh()
    with bandstore.open(path) as r:
        assert np.array_equal(r.lookup("t", np.arange(ROWS))[:, 0], want)
    with bandstore.open(path, writable=True) as w:
        w.compact(progress=False)
        w.update("t", [ROWS - 1], _rows(99))
        want[ROWS - 1] = 99
    collect_garbage(path)
    _fresh()
    with bandstore.open(path) as r:
        info = r.updates_info()
        assert (info["records"], info["segments"], info["update_seq"]) == (1, 1, 13)
        assert np.array_equal(r.lookup("t", np.arange(ROWS))[:, 0], want)
        assert r.verify() == []
    _fresh()
    with bandstore.open(path, writable=True) as w:
        assert w.update("t", [0], _rows(7)) == 14  # seqs go on past the pruned segments


def test_store_with_lmdb_records_stays_readable(path):
    """A store written before the file log: its LMDB records are served, numbered before the
    log's, folded and pruned."""
    with bandstore.open(path, writable=True) as w:
        env = w.catalog._env
        c = codec_id("float32")
        with env.begin(write=True) as txn:
            for seq, (ids, v) in enumerate([([1, 2], 5.0), ([2], 6.0)], start=1):
                rows = _rows(v, len(ids)).view(np.uint8)
                txn.put(updates.record_key("t", seq),
                        updates.encode_record(np.array(ids), rows, D, c))  # fmt: skip
            txn.put(updates.SEQ_KEY, json.dumps(2).encode())
    _fresh()
    with bandstore.open(path, writable=True) as w:
        assert w.lookup("t", [1, 2])[:, 0].tolist() == [5.0, 6.0]
        assert w.update("t", [1], _rows(8)) == 3
        assert w.lookup("t", [1, 2])[:, 0].tolist() == [8.0, 6.0]
        assert w.updates_info()["records"] == 3
        assert w.compact(progress=False)["tables"] == {"t": 2}
    collect_garbage(path)
    _fresh()
    with bandstore.open(path) as r:
        assert r.lookup("t", [1, 2])[:, 0].tolist() == [8.0, 6.0]
        assert r.updates_info()["records"] == 0


def test_overlay_memory_is_counted_and_its_rows_counted_once(path):
    with bandstore.open(path, writable=True, cache_bytes=0) as w:
        assert w.memory()["t"]["overlay"] == 0
        w.update("t", np.arange(100), _rows(3, 100))
        w.lookup("t", [0])
        mem = w.memory()
        ov = w.__dict__["_overlays"].state.overlays["t"]
        assert mem["t"]["overlay"] == ov.nbytes >= 100 * D * 4 + ROWS * 8
        assert mem["total"]["overlay"] == mem["t"]["overlay"]
        assert w.cache_info()["t"]["overlay_bytes"] == ov.nbytes
        w.reset_stats()
        ids, off = np.array([1, 2, 300, 301, 5]), np.array([0, 3])
        out = w.lookup_many({"t": (ids, off)})["t"]
        assert out[:, 0].tolist() == [6.0, 3.0]
        one = w.embedding_bag("t", ids, off, mode="sum")
        assert one[:, 0].tolist() == [6.0, 3.0]
        st = w.stats()["t"]
        # 3 updated rows per call (hits, from DRAM), 2 from the version (cache_bytes=0: misses)
        assert (st["lookups"], st["hits"], st["misses"]) == (10, 6, 4)


def test_a_dropped_store_stops_its_poller(path):
    import gc
    import threading

    s = bandstore.open(path)
    s.lookup("t", [0])
    th = s.__dict__["_overlays"]._thread
    assert th is not None and th.is_alive()
    del s
    gc.collect()
    th.join(timeout=2)
    assert not th.is_alive()
    assert all(t.name != "bandstore-updates" or t is not th for t in threading.enumerate())


def test_a_frame_read_while_being_written_is_not_damage(path, monkeypatch):
    """A reader may read a frame half written, and find the next one written by the time it
    looks past it: it reads the first again rather than call the log damaged."""
    with bandstore.open(path, writable=True) as w:
        for i in range(3):
            w.update("t", [i], _rows(1 + i))
        second = updates.log(w.catalog).segments[-1].frames[1]
    _fresh()
    real = updatelog.Log._read_frame
    torn_once = []

    def read_frame(self, seg, off, keep=False):
        if off == second.offset and not torn_once:
            torn_once.append(off)
            return "bad", "payload checksum mismatch"  # as if caught mid-write
        return real(self, seg, off, keep)

    monkeypatch.setattr(updatelog.Log, "_read_frame", read_frame)
    with bandstore.open(path) as r:
        assert r.lookup("t", [0, 1, 2])[:, 0].tolist() == [1.0, 2.0, 3.0]
        assert r.verify() == []
    assert torn_once == [second.offset]


def test_arena_rebuilds_keep_every_state_right(path, monkeypatch):
    """Small arenas, rebuilt many times (reusing the spare arrays once no state holds them):
    every state serves its own rows, an old state held across rebuilds included."""
    from bandstore.serve import overlay

    monkeypatch.setattr(overlay, "MIN_ARENA_ROWS", 8)
    rng = np.random.default_rng(3)
    model = np.zeros(ROWS, np.float32)
    held = None
    reused = 0
    with bandstore.open(path, writable=True) as w, bandstore.open(path, cache_bytes=0) as r:
        r.lookup("t", [0])
        ov = r.__dict__["_overlays"]
        for k in range(80):
            ids = np.unique(rng.integers(0, 120, int(rng.integers(1, 60))))  # (live saturates)
            spare = ov._arenas["t"].spare if "t" in ov._arenas else None
            w.update("t", ids, _rows(k + 1, ids.size))
            model[ids] = k + 1
            r.refresh()
            reused += spare is not None and ov._arenas["t"].data is spare[2]
            del spare
            assert np.array_equal(r.lookup("t", np.arange(ROWS))[:, 0], model)
            if k == 20:
                held = (ov.state, model.copy())
        st, want = held
        tov = st.overlays["t"]
        where = tov.rows_of(0, ROWS)
        got = np.where(where >= 0, tov.data[np.maximum(where, 0), 0], 0.0)
        assert np.array_equal(got, want)  # the held state's arrays were never reused
    assert reused > 0


@pytest.mark.parametrize("floor_a", [0, 1])
def test_seqs_go_on_after_the_newest_records_are_pruned(tmp_path, floor_a):
    """Pruning the newest records (all of the last segment's, or only its last frames) must
    not hand their seqs out again: a table that folded up to seq 2 would take a new seq-2
    record as folded and never serve it (acknowledged updates were lost after a gc)."""
    p = tmp_path / "s"
    with bandstore.create(p, block_size=512) as s:
        s.add_table("a", np.zeros((ROWS, D), np.float32), progress=False)
        s.add_table("b", np.zeros((ROWS, D), np.float32), progress=False)
    with bandstore.open(p, writable=True) as w:
        assert w.update("a", [1], _rows(1)) == 1
        assert w.update("b", [2], _rows(2)) == 2
        log = updatelog.log_of(p, 0)
        assert log.prune({"a": floor_a, "b": 2}) == 1 + floor_a
        assert log.latest_seq() == 2
        assert w.update("a", [3], _rows(3)) == 3
    _fresh()
    with bandstore.open(p, writable=True) as w:
        assert w.update("b", [4], _rows(4)) == 4
        got = w.lookup("a", [1, 3])[:, 0].tolist(), w.lookup("b", [2, 4])[:, 0].tolist()
    # (a's seq-1 record was pruned with floor 1 as if folded: the block file still has 0.)
    assert got == ([0.0 if floor_a else 1.0, 3.0], [0.0, 4.0])
