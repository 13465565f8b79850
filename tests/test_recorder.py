"""TraceRecorder and read_recorded: round trips, sampling, torn tails, corruption, threads."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from bandstore.errors import (
    CorruptFileError,
    FormatVersionError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidOffsetsError,
    InvalidShapeError,
    StoreClosedError,
)
from bandstore.traces.recorder import TraceRecorder, read_recorded, read_recorded_with_report
from bandstore.traces.synth import synth
from bandstore.traces.trace import Trace


def requests_of(trace: Trace, batch: int):
    for part in trace.batches(batch):
        yield {name: part.table(name) for name in part.table_names}


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.bslog"))


def frames(path: Path) -> list[tuple[int, int, bytes]]:
    """(start, end, payload marker) of each frame, walking the documented format."""
    data = path.read_bytes()
    assert data[:8] == b"BSTRLOG\x00"
    out, p = [], 16
    while p < len(data):
        length, digest = struct.unpack_from("<IQ", data, p)
        payload = data[p + 12 : p + 12 + length]
        assert xxhash.xxh64_intdigest(payload) == digest
        out.append((p, p + 12 + length, payload[:4]))
        p += 12 + length
    return out


def record_all(directory: Path, trace: Trace, batch: int = 50, **kwargs) -> TraceRecorder:
    rec = TraceRecorder(directory, sample_rate=1.0, **kwargs)
    for req in requests_of(trace, batch):
        rec.record(req)
    rec.close()
    return rec


@pytest.fixture
def trace() -> Trace:
    return synth({"item": 5000, "user": 300}, 600, pooling={"item": 6, "user": 2}, seed=1)


# --------------------------------------------------------------------------- round trips
def test_round_trip(tmp_path, trace: Trace) -> None:
    rec = record_all(tmp_path / "log", trace)
    assert rec.stats == {"queries_seen": 600, "queries_kept": 600, "segments": 1}
    back = read_recorded(tmp_path / "log", num_rows=trace.num_rows)
    assert back.equals(trace)


def test_round_trip_across_segments(tmp_path, trace: Trace) -> None:
    rec = record_all(tmp_path, trace, batch=7, segment_bytes=4096, frame_bytes=600)
    files = segments(tmp_path)
    assert len(files) > 3 and rec.stats["segments"] == len(files)
    assert all(f.stat().st_size <= 4096 + 1024 for f in files)
    for f in files:
        markers = [m for _, _, m in frames(f)]
        assert markers[0] == b"BSM\x00" and markers[1] == b"BST\x00"  # self-contained segments
    back, report = read_recorded_with_report(tmp_path, num_rows=trace.num_rows)
    assert back.equals(trace)
    assert report.segments == len(files) and report.queries == 600 and report.torn == []
    assert report.metadata[0]["sample_rate"] == 1.0


@pytest.mark.parametrize("last", [1, 7, 100, 333, 599, 600, 5000])
def test_last_queries_reads_the_newest_segments_only(tmp_path, trace: Trace, last: int) -> None:
    record_all(tmp_path, trace, batch=7, segment_bytes=4096, frame_bytes=600)
    n_files = len(segments(tmp_path))
    back, report = read_recorded_with_report(tmp_path, num_rows=trace.num_rows, last_queries=last)
    keep = min(last, trace.n_queries)
    assert back.equals(trace.query_slice(trace.n_queries - keep, trace.n_queries))
    # Only the fewest newest segments that hold those queries were read.
    per_segment = []
    for i, f in enumerate(segments(tmp_path)):
        (tmp_path / f"one{i}").mkdir()
        (tmp_path / f"one{i}" / f.name).write_bytes(f.read_bytes())
        per_segment.append(read_recorded(tmp_path / f"one{i}").n_queries)
    newest = np.cumsum(per_segment[::-1])
    assert report.segments == min(n_files, int(np.searchsorted(newest, keep)) + 1)
    assert report.queries == keep
    with pytest.raises(InvalidArgumentError, match="last_queries"):
        read_recorded(tmp_path, last_queries=0)


def test_varying_tables_wide_ids_and_empty_bags(tmp_path) -> None:
    big = 2**40 + 5
    with TraceRecorder(tmp_path, sample_rate=1.0) as rec:
        rec.record({"a": ([1, 2], [0, 2, 2])})  # 2 queries, the second reads nothing
        rec.record({"b": ([big], [0, 1]), "a": ([3], [0, 1])})
        rec.record({"c": (np.array([], dtype=np.int64), [0, 0])})
        rec.record({})
    back = read_recorded(tmp_path)
    assert back.table_names == ["a", "b", "c"] and back.n_queries == 4
    a_idx, a_off = back.table("a")
    assert a_idx.tolist() == [1, 2, 3] and a_off.tolist() == [0, 2, 2, 3, 3]
    b_idx, b_off = back.table("b")
    assert b_idx.tolist() == [big] and b_off.tolist() == [0, 0, 0, 1, 1]
    assert back.n_lookups("c") == 0


def test_empty_directory_and_missing_directory(tmp_path) -> None:
    assert read_recorded(tmp_path).n_queries == 0
    with TraceRecorder(tmp_path / "idle"):
        pass
    assert segments(tmp_path / "idle") == []  # nothing recorded, no file
    with pytest.raises(FileNotFoundError):
        read_recorded(tmp_path / "absent")


def test_flush_makes_queries_readable(tmp_path, trace: Trace) -> None:
    rec = TraceRecorder(tmp_path, sample_rate=1.0)
    rec.record(next(requests_of(trace, 10)))
    rec.flush()
    assert read_recorded(tmp_path).n_queries == 10
    rec.close()
    rec.close()  # idempotent
    assert rec.closed
    with pytest.raises(StoreClosedError):
        rec.record(next(requests_of(trace, 10)))


def test_new_recorder_never_appends(tmp_path, trace: Trace) -> None:
    first, second = trace.split(0.5)
    record_all(tmp_path, first)
    record_all(tmp_path, second)
    assert [f.name for f in segments(tmp_path)] == [
        "segment-00000001.bslog",
        "segment-00000002.bslog",
    ]
    assert read_recorded(tmp_path, num_rows=trace.num_rows).equals(trace)


# --------------------------------------------------------------------------- sampling
def test_sampling_rate_and_whole_queries(tmp_path) -> None:
    n = 40_000
    # query q reads row q of table "q" and rows 3q, 3q+1 of table "r": recognisable when kept
    ids_q = np.arange(n)
    ids_r = np.stack([3 * ids_q, 3 * ids_q + 1], axis=1).ravel()
    kept = 0
    with TraceRecorder(tmp_path, sample_rate=0.05, seed=11) as rec:
        for s in range(0, n, 100):
            kept += rec.record(
                {
                    "q": (ids_q[s : s + 100], np.arange(101)),
                    "r": (ids_r[2 * s : 2 * s + 200], 2 * np.arange(101)),
                }
            )
    back = read_recorded(tmp_path)
    assert back.n_queries == kept
    assert abs(kept - 0.05 * n) < 5 * np.sqrt(n * 0.05 * 0.95)  # within 5 sigma of 2,000
    q_idx, q_off = back.table("q")
    r_idx, r_off = back.table("r")
    assert np.array_equal(np.diff(q_off), np.ones(kept))
    assert np.all(np.diff(q_idx) > 0)  # kept in order, each at most once
    assert np.array_equal(r_idx, np.stack([3 * q_idx, 3 * q_idx + 1], axis=1).ravel())


def test_sampling_is_deterministic_and_seeded(tmp_path) -> None:
    def kept_ids(directory: Path, seed: int, batch: int) -> list[int]:
        with TraceRecorder(directory, sample_rate=0.1, seed=seed) as rec:
            for s in range(0, 5000, batch):
                stop = min(s + batch, 5000)
                rec.record({"q": (np.arange(s, stop), np.arange(stop - s + 1))})
        return read_recorded(directory).table("q")[0].tolist()

    a = kept_ids(tmp_path / "a", 1, 100)
    assert a == kept_ids(tmp_path / "b", 1, 100)
    assert a == kept_ids(tmp_path / "c", 1, 37)  # decided per query sequence number
    assert a != kept_ids(tmp_path / "d", 2, 100)


def test_sample_rate_extremes(tmp_path, trace: Trace) -> None:
    with TraceRecorder(tmp_path / "none", sample_rate=0.0) as rec:
        assert sum(rec.record(r) for r in requests_of(trace, 50)) == 0
    assert read_recorded(tmp_path / "none").n_queries == 0
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(InvalidArgumentError):
            TraceRecorder(tmp_path, sample_rate=bad)
    for kwargs in ({"seed": -1}, {"segment_bytes": 10}, {"frame_bytes": 0}):
        with pytest.raises(InvalidArgumentError):
            TraceRecorder(tmp_path, **kwargs)


# --------------------------------------------------------------------------- validation
def test_invalid_requests_are_refused(tmp_path) -> None:
    with TraceRecorder(tmp_path, sample_rate=1.0) as rec:
        with pytest.raises(InvalidShapeError):
            rec.record({"a": ([1], [0, 1]), "b": ([1, 2], [0, 1, 2])})
        with pytest.raises(InvalidOffsetsError):
            rec.record({"a": ([1, 2], [0, 3])})
        with pytest.raises(IdOutOfRangeError):
            rec.record({"a": ([1, -2], [0, 2])})
        with pytest.raises(IdOutOfRangeError):
            rec.record({"a": ([1, -2], [0, 2])}, validate=False)
        with pytest.raises(InvalidArgumentError):
            rec.record({"": ([1], [0, 1])})
        with pytest.raises(InvalidArgumentError):
            rec.record({"a": ([1], [0, 1], [0.5])})
        assert rec.stats["queries_kept"] == 0
    assert read_recorded(tmp_path).n_queries == 0


# --------------------------------------------------------------------------- crashes
def test_torn_tail_at_every_byte_of_the_last_frame(tmp_path, trace: Trace) -> None:
    src = tmp_path / "src"
    rec = TraceRecorder(src, sample_rate=1.0, frame_bytes=1)  # one frame per request
    reqs = list(requests_of(trace.query_slice(0, 40), 4))
    for req in reqs:
        rec.record(req)
    rec.close()
    [path] = segments(src)
    start, end, marker = frames(path)[-1]
    assert marker == b"BSQ\x00" and end == path.stat().st_size
    expected = trace.query_slice(0, 36)
    data = path.read_bytes()
    for cut in range(start, end):
        path.write_bytes(data[:cut])
        back, report = read_recorded_with_report(src, num_rows=trace.num_rows)
        assert back.equals(expected), cut
        dropped = [] if cut == start else [(str(path), start, cut - start)]
        assert report.torn == dropped
    path.write_bytes(data[: start + 5])
    with pytest.warns(RuntimeWarning, match="torn"):
        read_recorded(src)
    with pytest.raises(CorruptFileError):
        read_recorded(src, strict=True)


def test_garbled_or_zeroed_tail_is_dropped(tmp_path, trace: Trace) -> None:
    record_all(tmp_path, trace, frame_bytes=1)
    [path] = segments(tmp_path)
    data = path.read_bytes()
    start, end, _ = frames(path)[-1]
    flipped = bytearray(data)
    flipped[end - 3] ^= 0x55  # bad checksum on the last frame
    cases = [
        (bytes(flipped), 550),
        (data[:start] + bytes(range(256)) * 3, 550),  # garbage instead of the last frame
        (data + b"\x00" * 5000, 600),  # file extended with zeros, as some crashes leave it
        (data + b"\x07" * 11, 600),  # less than a frame header
    ]
    for content, kept in cases:
        path.write_bytes(content)
        with pytest.warns(RuntimeWarning):
            back = read_recorded(tmp_path, num_rows=trace.num_rows)
        assert back.equals(trace.query_slice(0, kept))


def test_corruption_in_the_middle_raises(tmp_path, trace: Trace) -> None:
    record_all(tmp_path, trace, frame_bytes=1)
    [path] = segments(tmp_path)
    data = path.read_bytes()
    fr = frames(path)
    start, end, _ = fr[len(fr) // 2]
    flipped = bytearray(data)
    flipped[(start + end) // 2] ^= 0x01  # a payload bit
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError) as err:
        read_recorded(tmp_path)
    assert err.value.path == str(path) and f"byte {start}" in str(err.value)
    huge = bytearray(data)
    huge[start : start + 4] = struct.pack("<I", 1 << 31)  # a length running past the end
    path.write_bytes(bytes(huge))
    with pytest.raises(CorruptFileError):
        read_recorded(tmp_path)
    cut = data[: start + 7] + data[end:]  # a frame torn in the middle, valid ones after
    path.write_bytes(cut)
    with pytest.raises(CorruptFileError):
        read_recorded(tmp_path)


def test_torn_tail_in_an_earlier_segment_after_restart(tmp_path, trace: Trace) -> None:
    first, second = trace.split(0.5)
    record_all(tmp_path, first, frame_bytes=1)
    [seg1] = segments(tmp_path)
    start, _, _ = frames(seg1)[-1]
    seg1.write_bytes(seg1.read_bytes()[: start + 20])  # crash while writing its last frame
    record_all(tmp_path, second)  # a new recorder starts segment 2
    back, report = read_recorded_with_report(tmp_path, num_rows=trace.num_rows)
    lost = first.bag_sizes("item").size - back.n_queries + second.n_queries
    assert 0 < lost <= 50 and len(report.torn) == 1
    assert back.query_slice(back.n_queries - 300, back.n_queries).equals(second)


def test_bad_headers(tmp_path, trace: Trace) -> None:
    record_all(tmp_path, trace)
    [path] = segments(tmp_path)
    data = path.read_bytes()
    path.write_bytes(b"NOTALOG\x00" + data[8:])
    with pytest.raises(CorruptFileError):
        read_recorded(tmp_path)
    path.write_bytes(data[:8] + struct.pack("<I", 9) + data[12:])
    with pytest.raises(FormatVersionError):
        read_recorded(tmp_path)
    path.write_bytes(data[:7])  # crash right after creating the segment
    back, report = read_recorded_with_report(tmp_path)
    assert back.n_queries == 0 and report.torn == [(str(path), 0, 7)]


# --------------------------------------------------------------------------- threads
def test_thread_safety(tmp_path) -> None:
    n_threads, per_thread, batch = 8, 150, 4
    rec = TraceRecorder(tmp_path, sample_rate=1.0, frame_bytes=2048, segment_bytes=8192)
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                # query id = (t * per_thread + i) * batch + j, in both tables
                base = (t * per_thread + i) * batch
                qid = np.arange(base, base + batch)
                rec.record(
                    {
                        "a": (qid, np.arange(batch + 1)),
                        "b": (np.repeat(qid, 2), 2 * np.arange(batch + 1)),
                    }
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rec.close()
    assert not errors
    back = read_recorded(tmp_path)
    total = n_threads * per_thread * batch
    assert back.n_queries == total == rec.stats["queries_kept"]
    a_idx, a_off = back.table("a")
    b_idx, _ = back.table("b")
    assert np.array_equal(np.diff(a_off), np.ones(total))
    assert np.array_equal(np.sort(a_idx), np.arange(total))  # every query exactly once
    assert np.array_equal(b_idx, np.repeat(a_idx, 2))  # and whole: tables stay aligned
    assert len(segments(tmp_path)) > 1


@given(
    st.lists(
        st.tuples(
            st.lists(st.lists(st.integers(0, 2**33), max_size=4), min_size=0, max_size=5),
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=6,
    ),
    st.integers(1, 3000),
)
def test_property_round_trip(tmp_path_factory, requests, frame_bytes) -> None:
    directory = tmp_path_factory.mktemp("log")
    expected: list[Trace] = []
    with TraceRecorder(directory, sample_rate=1.0, frame_bytes=frame_bytes) as rec:
        for bags, name in requests:
            sizes = [len(b) for b in bags]
            req = {
                name: (
                    np.array([i for b in bags for i in b], dtype=np.int64),
                    np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                )
            }
            assert rec.record(req) == len(bags)
            if bags:
                expected.append(Trace(req))
    back = read_recorded(directory)
    assert back.n_queries == sum(t.n_queries for t in expected)
    names = back.table_names
    for name in names:
        want = []
        for t in expected:
            if name in t:
                want.extend(t.table(name)[0].tolist())
        assert back.table(name)[0].tolist() == want
    # queries of a request that lacks a table read nothing of it
    pos = 0
    for t in expected:
        for name in names:
            sizes = back.bag_sizes(name)[pos : pos + t.n_queries]
            if name in t:
                assert np.array_equal(sizes, t.bag_sizes(name))
            else:
                assert not sizes.any()
        pos += t.n_queries
