"""Sampling recorder: the serving path's access log, read back as a :class:`Trace`.

:class:`TraceRecorder` keeps whole queries of the requests it is given (each with probability
``sample_rate``, decided by a hash of the query's sequence number and the seed: no random state,
reproducible) and appends them to segment files in a directory. :func:`read_recorded` reads all
segments back in order.

Segment file ``segment-NNNNNNNN.bslog`` (little-endian throughout)::

    header   8 bytes magic b"BSTRLOG\\0", u32 format version, u32 reserved (0)
    frames   [u32 payload length][u64 XXH64 (seed 0) of the payload][payload] ...

Every payload starts with a 4-byte marker saying what it holds:

* ``b"BSM\\0"`` + JSON object: metadata (sample rate, seed, creation time); first in a segment.
* ``b"BST\\0"`` + JSON list: table names added to the segment's dictionary (codes 0, 1, ...).
* ``b"BSQ\\0"`` + queries: ``u16 n_tables, u16 reserved, u32 n_queries, i64 time_ns`` then
  ``u32 code[n_tables]``, ``u8 id_width[n_tables]`` (4 or 8) padded to a multiple of 4,
  ``u32 bag_size[n_tables][n_queries]``, then each table's ids as ``u32`` or ``u64``.

A recorder never appends to an existing segment: it starts a new one, so a crash leaves at worst
a torn tail (a partial or garbled last frame) in the segment that was open. The reader drops
such a tail (reported by :func:`read_recorded_with_report` and a ``RuntimeWarning``), but a bad
frame followed by valid data is corruption and raises :class:`CorruptFileError`. The marker at
the start of each payload lets the reader tell the two apart cheaply.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from bandstore.errors import (
    CorruptFileError,
    FormatVersionError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidShapeError,
    StoreClosedError,
)
from bandstore.traces.trace import Trace, check_csr, take_bags

__all__ = [
    "TraceRecorder",
    "RecordingReport",
    "read_recorded",
    "read_recorded_with_report",
    "LOG_FORMAT_VERSION",
]

LOG_FORMAT_VERSION = 1
_MAGIC = b"BSTRLOG\x00"
_HEADER = struct.Struct("<8sII")
_FRAME = struct.Struct("<IQ")
_QHEAD = struct.Struct("<4sHHIq")
_META, _TABLES, _QUERIES = b"BSM\x00", b"BST\x00", b"BSQ\x00"
_MARKERS = (_META, _TABLES, _QUERIES)
_SEGMENT_RE = re.compile(r"^segment-(\d{8})\.bslog$")
_U32_MAX = (1 << 32) - 1
_INT64_LIMIT = (1 << 63) - 1
_SPLIT_BYTES = 1 << 20


def _segment_name(number: int) -> str:
    return f"segment-{number:08d}.bslog"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir(directory):
        m = _SEGMENT_RE.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer over a uint64 array (wrapping arithmetic, in place on a copy)."""
    z = x + _GOLDEN
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), xxhash.xxh64_intdigest(payload)) + payload


class TraceRecorder:
    """Appends a sample of the queries it sees to segment files in ``directory``.

    Args:
        directory: where segments go (created if missing). Existing segments are kept; new ones
            are numbered after them.
        sample_rate: probability in [0, 1] that a query is kept. The decision for the ``n``-th
            query seen by this recorder is ``hash(n, seed) < sample_rate * 2**64``: cheap,
            independent of the query's content, and the same on every run.
        seed: non-negative integer mixed into the sampling hash.
        segment_bytes: a new segment is started when the current one would grow past this.
        frame_bytes: kept queries are buffered and written as one frame once they take this
            many bytes (or on :meth:`flush` / :meth:`close`); bounds what a crash can lose
            beyond the OS buffers. ``1`` writes a frame per :meth:`record` call. Frames are
            split at ``max(frame_bytes, 1 MiB)``.

    Thread-safe: concurrent :meth:`record` calls are serialized only around the counter and
    the write; sampling and gathering run outside the lock.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        sample_rate: float = 0.01,
        seed: int = 0,
        segment_bytes: int = 64 << 20,
        frame_bytes: int = 64 << 10,
    ) -> None:
        rate_ok = isinstance(sample_rate, (int, float, np.integer, np.floating)) and not isinstance(
            sample_rate, bool
        )
        if not rate_ok or not 0.0 <= sample_rate <= 1.0:
            raise InvalidArgumentError(
                f"sample_rate must be in [0, 1], got {sample_rate!r}",
                argument="sample_rate",
                value=sample_rate,
            )
        for arg, value, lo in (
            ("seed", seed, 0),
            ("segment_bytes", segment_bytes, 4096),
            ("frame_bytes", frame_bytes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise InvalidArgumentError(
                    f"{arg} must be an integer >= {lo}, got {value!r}", argument=arg, value=value
                )
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.segment_bytes = int(segment_bytes)
        self.frame_bytes = int(frame_bytes)
        # keep iff mix(counter ^ seed_key) < threshold; rate 1 keeps everything
        self._threshold = np.uint64(min(int(self.sample_rate * 2.0**64), (1 << 64) - 1))
        self._keep_all = self.sample_rate >= 1.0
        self._seed_key = _mix64(np.array([self.seed], dtype=np.uint64))[0]
        self._lock = threading.Lock()
        self._counter = 0
        self._kept = 0
        self._closed = False
        self._file: Any = None
        self._path: Path | None = None
        self._size = 0
        self._frames_in_segment = 0
        self._codes: dict[str, int] = {}
        self._pending: list[tuple[list[str], np.ndarray, list[np.ndarray]]] = []
        self._pending_bytes = 0
        self._segments_written: list[Path] = []

    # ------------------------------------------------------------------ public
    def record(self, request: Mapping[str, tuple[Any, Any]], *, validate: bool = True) -> int:
        """Offer one request (table -> ``(indices, offsets)``); return how many queries were kept.

        The request is validated like a :class:`Trace` (aligned tables, valid offsets,
        non-negative integer ids) so that nothing unreadable reaches the log. A caller that has
        already validated it (the store) may pass ``validate=False``: then the arrays must be
        contiguous int64 with valid offsets, and only the kept queries' ids are checked.
        Raises StoreClosedError after :meth:`close`.
        """
        names: list[str] = []
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        n_queries: int | None = None
        for name, pair in request.items():
            if not isinstance(name, str) or not name:
                raise InvalidArgumentError(
                    f"table names must be non-empty strings, got {name!r}",
                    argument="request",
                    value=name,
                )
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidArgumentError(
                    f"request for table {name!r} must be an (indices, offsets) pair",
                    argument="request",
                    value=name,
                )
            if validate:
                idx, off = check_csr(name, *pair)
            else:
                idx, off = (np.asarray(a, dtype=np.int64) for a in pair)
            if n_queries is None:
                n_queries = off.size - 1
            elif off.size - 1 != n_queries:
                raise InvalidShapeError(
                    f"table {name!r} has {off.size - 1} queries, {names[0]!r} has {n_queries}",
                    argument=f"offsets[{name!r}]",
                    shape=off.shape,
                )
            names.append(name)
            pairs.append((idx, off))
        with self._lock:
            if self._closed:
                raise StoreClosedError()
            start = self._counter
            self._counter += n_queries or 0
        if not n_queries:
            return 0
        kept = self._sample(start, n_queries)
        if kept.size == 0:
            return 0
        sizes = np.empty((len(names), kept.size), dtype=np.int64)
        ids = []
        for t, (idx, off) in enumerate(pairs):
            sub_idx, sub_off = take_bags(idx, off, kept)
            if not validate and sub_idx.size and sub_idx.min() < 0:
                pos = int(np.argmax(sub_idx < 0))
                raise IdOutOfRangeError(name, pos, int(sub_idx[pos]), _INT64_LIMIT)
            sizes[t] = np.diff(sub_off)
            ids.append(sub_idx)
        nbytes = 16 + sizes.size * 4 + sum(8 * a.size for a in ids)
        with self._lock:
            if self._closed:
                raise StoreClosedError()
            self._pending.append((names, sizes, ids))
            self._pending_bytes += nbytes
            self._kept += kept.size
            if self._pending_bytes >= self.frame_bytes:
                self._emit_locked()
        return int(kept.size)

    def flush(self, *, fsync: bool = True) -> None:
        """Write buffered queries to the segment and (by default) fsync it."""
        with self._lock:
            if self._closed:
                return
            self._emit_locked()
            if self._file is not None:
                self._file.flush()
                if fsync:
                    os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush, fsync and close the current segment. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                self._emit_locked()
                self._close_segment_locked()
            finally:
                self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> dict[str, int]:
        """``queries_seen``, ``queries_kept`` and ``segments`` written by this recorder."""
        with self._lock:
            return {
                "queries_seen": self._counter,
                "queries_kept": self._kept,
                "segments": len(self._segments_written),
            }

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _sample(self, start: int, n: int) -> np.ndarray:
        if self._keep_all:
            return np.arange(n, dtype=np.int64)
        if self._threshold == 0:
            return np.zeros(0, dtype=np.int64)
        seq = np.arange(start, start + n, dtype=np.uint64)
        h = _mix64(seq ^ self._seed_key)
        return np.flatnonzero(h < self._threshold)

    def _emit_locked(self) -> None:
        """Turn the pending queries into frames (split to about ``frame_bytes`` each)."""
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        names: list[str] = []
        for item_names, _, _ in pending:
            names.extend(n for n in item_names if n not in names)
        total = sum(item[1].shape[1] for item in pending)
        sizes = np.zeros((len(names), total), dtype=np.int64)
        ids: list[list[np.ndarray]] = [[] for _ in names]
        col = 0
        for item_names, item_sizes, item_ids in pending:
            q = item_sizes.shape[1]
            for t_item, name in enumerate(item_names):
                t = names.index(name)
                sizes[t, col : col + q] = item_sizes[t_item]
                ids[t].append(item_ids[t_item])
            col += q
        flat = [np.concatenate(parts) if parts else np.zeros(0, np.int64) for parts in ids]
        offsets = np.zeros((len(names), total + 1), dtype=np.int64)
        np.cumsum(sizes, axis=1, out=offsets[:, 1:])
        # split a large batch into frames of at most about max(frame_bytes, 1 MiB) (at least
        # one query each): bounds what one torn write can take with it
        cap = max(self.frame_bytes, _SPLIT_BYTES)
        per_query = 4 * len(names) + 8 * sizes.sum(axis=0)
        cum = np.cumsum(per_query)
        a = 0
        while a < total:
            base = cum[a - 1] if a else 0
            b = int(np.searchsorted(cum, base + cap, side="right"))
            b = min(max(b, a + 1), total)
            self._write_queries_locked(names, sizes[:, a:b], flat, offsets[:, a], offsets[:, b])
            a = b
        # To the OS now, not at 1 MiB of file buffer: a rebuild reading the log of a serving
        # store (the closed loop) sees every emitted frame, and a crash of this process loses
        # at most the pending ones (no fsync here: flush() and close() sync).
        self._file.flush()

    def _write_queries_locked(
        self,
        names: list[str],
        sizes: np.ndarray,
        flat: list[np.ndarray],
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        # sizes may exceed u32 only for absurd bags; refuse rather than wrap
        if sizes.size and sizes.max() > _U32_MAX:
            raise InvalidArgumentError(
                "a bag of more than 2**32 - 1 ids cannot be recorded", argument="request"
            )
        widths = bytearray()
        chunks = []
        for t in range(len(names)):
            seg = flat[t][lo[t] : hi[t]]
            wide = bool(seg.size) and int(seg.max()) > _U32_MAX
            widths.append(8 if wide else 4)
            chunks.append(seg.astype("<u8" if wide else "<u4").tobytes())
        widths.extend(b"\x00" * (-len(widths) % 4))
        body = bytes(widths) + np.ascontiguousarray(sizes, dtype="<u4").tobytes() + b"".join(chunks)
        n_q = sizes.shape[1]
        estimate = _QHEAD.size + 4 * len(names) + len(body) + _FRAME.size
        self._ensure_segment_locked(estimate)
        new = [n for n in names if n not in self._codes]
        if new:
            for n in new:
                self._codes[n] = len(self._codes)
            self._write_frame_locked(_TABLES + json.dumps(new).encode("utf-8"))
        codes = np.array([self._codes[n] for n in names], dtype="<u4").tobytes()
        head = _QHEAD.pack(_QUERIES, len(names), 0, n_q, time.time_ns())
        self._write_frame_locked(head + codes + body)

    def _ensure_segment_locked(self, next_frame: int) -> None:
        if self._file is not None and (
            self._frames_in_segment > 0 and self._size + next_frame > self.segment_bytes
        ):
            self._close_segment_locked()
        if self._file is None:
            self._open_segment_locked()

    def _open_segment_locked(self) -> None:
        existing = _segments(self.directory)
        number = existing[-1][0] + 1 if existing else 1
        while True:
            path = self.directory / _segment_name(number)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:  # another recorder took this number
                number += 1
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._path = path
        self._codes = {}
        self._frames_in_segment = 0
        header = _HEADER.pack(_MAGIC, LOG_FORMAT_VERSION, 0)
        self._file.write(header)
        self._size = len(header)
        meta = {
            "sample_rate": self.sample_rate,
            "seed": self.seed,
            "created_unix": time.time(),
            "format_version": LOG_FORMAT_VERSION,
        }
        self._write_frame_locked(_META + json.dumps(meta).encode("utf-8"))
        self._frames_in_segment = 0  # metadata does not count as content
        self._segments_written.append(path)
        _fsync_dir(self.directory)

    def _write_frame_locked(self, payload: bytes) -> None:
        data = _frame(payload)
        self._file.write(data)
        self._size += len(data)
        self._frames_in_segment += 1

    def _close_segment_locked(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
            self._file = None
            self._path = None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- reading
@dataclass
class RecordingReport:
    """What :func:`read_recorded_with_report` found.

    ``torn`` lists ``(segment path, byte offset, bytes dropped)`` for each segment whose tail
    was dropped (an interrupted write: nothing valid follows it).
    """

    segments: int = 0
    frames: int = 0
    queries: int = 0
    torn: list[tuple[str, int, int]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dropped_bytes(self) -> int:
        return sum(t[2] for t in self.torn)


def read_recorded(
    directory: str | os.PathLike[str],
    *,
    strict: bool = False,
    num_rows: Mapping[str, int] | None = None,
    last_queries: int | None = None,
) -> Trace:
    """All queries recorded in ``directory``, segment after segment, as one Trace.

    Tables are ordered by first appearance; a query that did not read a table has an empty bag
    there. A torn tail is dropped with a ``RuntimeWarning`` (``strict=True``: CorruptFileError
    instead). ``last_queries``: only the most recent that many queries (only the newest
    segments that hold them are read). See :func:`read_recorded_with_report` for the details.
    """
    trace, report = read_recorded_with_report(
        directory, strict=strict, num_rows=num_rows, last_queries=last_queries
    )
    if report.torn:
        where = ", ".join(f"{p} at byte {o} ({n} bytes)" for p, o, n in report.torn)
        warnings.warn(
            f"dropped torn tail(s) of recorded trace segments: {where}",
            RuntimeWarning,
            stacklevel=2,
        )
    return trace


def read_recorded_with_report(
    directory: str | os.PathLike[str],
    *,
    strict: bool = False,
    num_rows: Mapping[str, int] | None = None,
    last_queries: int | None = None,
) -> tuple[Trace, RecordingReport]:
    """Like :func:`read_recorded`, also returning a :class:`RecordingReport` (no warning).

    With ``last_queries``, segments are read newest first until they hold that many queries
    (a serving store's log grows without end; a re-plan wants its recent traffic only); the
    report then covers the segments read.

    Raises FileNotFoundError if ``directory`` does not exist, CorruptFileError for a bad
    segment header or a bad frame followed by valid data, FormatVersionError for a newer format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no recorded trace directory at {directory}")
    if last_queries is not None and (
        isinstance(last_queries, bool) or not isinstance(last_queries, (int, np.integer))
        or last_queries < 1
    ):  # fmt: skip
        raise InvalidArgumentError(
            f"last_queries must be an integer >= 1 or None, got {last_queries!r}",
            argument="last_queries",
            value=last_queries,
        )
    report = RecordingReport()
    segments = _segments(directory)
    # Each segment carries its own table dictionary, so the newest ones read alone.
    parts: list[tuple[list[str], list[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]]]] = []
    held = 0
    for _, path in segments if last_queries is None else segments[::-1]:
        seg_names: list[str] = []
        seg_frames: list[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]] = []
        report.segments += 1
        _read_segment(path, strict, report, seg_names, seg_frames)
        parts.append((seg_names, seg_frames))
        held += sum(q for q, _ in seg_frames)
        if last_queries is not None and held >= last_queries:
            break
    if last_queries is not None:
        parts.reverse()
    names: list[str] = []
    frames: list[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]] = []
    for seg_names, seg_frames in parts:
        names += [n for n in seg_names if n not in names]
        frames += seg_frames
    if last_queries is not None and held > last_queries:
        frames = _drop_first_queries(frames, held - int(last_queries))
    tables = {}
    total = sum(q for q, _ in frames)
    for name in names:
        size_parts, id_parts = [], []
        for q, content in frames:
            if name in content:
                ids, sizes = content[name]
                size_parts.append(sizes)
                id_parts.append(ids)
            else:
                size_parts.append(np.zeros(q, dtype=np.int64))
        offsets = np.zeros(total + 1, dtype=np.int64)
        if size_parts:
            np.cumsum(np.concatenate(size_parts), out=offsets[1:])
        ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)
        tables[name] = (ids, offsets)
    report.queries = total
    return Trace(tables, num_rows).with_source(os.fspath(directory)), report


def _drop_first_queries(
    frames: list[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]], drop: int
) -> list[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """``frames`` without their first ``drop`` queries (a frame may be cut)."""
    out = []
    for q, content in frames:
        if drop >= q:
            drop -= q
            continue
        if drop:
            content = {
                name: (ids[int(sizes[:drop].sum()) :], sizes[drop:])
                for name, (ids, sizes) in content.items()
            }
            q, drop = q - drop, 0
        out.append((q, content))
    return out


def _read_segment(
    path: Path,
    strict: bool,
    report: RecordingReport,
    names: list[str],
    frames: list[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]],
) -> None:
    spath = str(path)
    data = path.read_bytes()
    size = len(data)
    if size < _HEADER.size:
        if strict:
            raise CorruptFileError(spath, f"segment header is truncated ({size} bytes)")
        report.torn.append((spath, 0, size))
        return
    magic, version, _ = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC:
        raise CorruptFileError(spath, "not a bandstore trace segment (bad magic)")
    if version != LOG_FORMAT_VERSION:
        raise FormatVersionError(spath, version, LOG_FORMAT_VERSION)
    view = memoryview(data)
    codes: list[str] = []
    p = _HEADER.size
    while p < size:
        length = _frame_length_if_valid(data, view, p)
        if length is None:
            if strict:
                raise CorruptFileError(spath, f"bad or incomplete frame at byte {p}")
            q = _find_valid_frame(data, view, p + 1)
            if q is not None:
                raise CorruptFileError(
                    spath, f"corrupt frame at byte {p}, followed by a valid frame at byte {q}"
                )
            report.torn.append((spath, p, size - p))
            return
        payload = view[p + _FRAME.size : p + _FRAME.size + length]
        _decode_payload(spath, p, payload, codes, names, frames, report)
        report.frames += 1
        p += _FRAME.size + length


def _frame_length_if_valid(data: bytes, view: memoryview, p: int) -> int | None:
    size = len(data)
    if size - p < _FRAME.size + 4:
        return None
    length, digest = _FRAME.unpack_from(data, p)
    start = p + _FRAME.size
    if length < 4 or start + length > size or data[start : start + 4] not in _MARKERS:
        return None
    if xxhash.xxh64_intdigest(view[start : start + length]) != digest:
        return None
    return length


def _find_valid_frame(data: bytes, view: memoryview, start: int) -> int | None:
    """First position >= ``start`` where a complete, checksummed frame begins, if any.

    Candidates are found vectorized (the payload marker ``BS?\\0`` at +12 and a length that fits
    in the file), then checked one by one; random or zeroed bytes almost never pass the filter.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    size = buf.size
    last = size - _FRAME.size - 4  # last position where a frame with a marker fits
    window = 1 << 22
    for w0 in range(start, last + 1, window):
        w1 = min(w0 + window, last + 1)
        m = _FRAME.size
        cand = (
            (buf[w0 + m : w1 + m] == ord("B"))
            & (buf[w0 + m + 1 : w1 + m + 1] == ord("S"))
            & (buf[w0 + m + 3 : w1 + m + 3] == 0)
        )
        for q in (np.flatnonzero(cand) + w0).tolist():
            if _frame_length_if_valid(data, view, q) is not None:
                return q
    return None


def _decode_payload(
    path: str,
    pos: int,
    payload: memoryview,
    codes: list[str],
    names: list[str],
    frames: list[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]],
    report: RecordingReport,
) -> None:
    """Apply one checksummed payload; a payload that does not parse is corruption."""
    marker = bytes(payload[:4])

    def bad(reason: str) -> CorruptFileError:
        return CorruptFileError(path, f"frame at byte {pos}: {reason}")

    if marker in (_META, _TABLES):
        try:
            obj = json.loads(bytes(payload[4:]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"bad JSON ({exc})") from None
        if marker == _META:
            if not isinstance(obj, dict):
                raise bad("metadata is not a JSON object")
            report.metadata.append(obj)
            return
        if not isinstance(obj, list) or not all(isinstance(n, str) and n for n in obj):
            raise bad("table dictionary is not a list of names")
        for n in obj:
            if n in codes:
                raise bad(f"table {n!r} defined twice in one segment")
            codes.append(n)
            if n not in names:
                names.append(n)
        return
    if len(payload) < _QHEAD.size:
        raise bad("query frame shorter than its header")
    _, n_tables, _, n_queries, _ = _QHEAD.unpack_from(payload, 0)
    p = _QHEAD.size
    width_pad = n_tables + (-n_tables % 4)
    need = p + 4 * n_tables + width_pad + 4 * n_tables * n_queries
    if len(payload) < need:
        raise bad("query frame shorter than its tables and bag sizes")
    table_codes = np.frombuffer(payload, dtype="<u4", count=n_tables, offset=p)
    p += 4 * n_tables
    widths = np.frombuffer(payload, dtype=np.uint8, count=n_tables, offset=p)
    p += width_pad
    sizes = np.frombuffer(payload, dtype="<u4", count=n_tables * n_queries, offset=p)
    sizes = sizes.reshape(n_tables, n_queries).astype(np.int64)
    p += 4 * n_tables * n_queries
    content: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in range(n_tables):
        code = int(table_codes[t])
        if code >= len(codes):
            raise bad(f"table code {code} not in the segment's dictionary")
        width = int(widths[t])
        if width not in (4, 8):
            raise bad(f"id width {width}")
        count = int(sizes[t].sum())
        if p + width * count > len(payload):
            raise bad("query frame shorter than its ids")
        ids = np.frombuffer(payload, dtype="<u4" if width == 4 else "<u8", count=count, offset=p)
        p += width * count
        if width == 8 and count and int(ids.max()) >= 1 << 63:
            raise bad("id does not fit in int64")
        name = codes[code]
        if name in content:
            raise bad(f"table {name!r} twice in one frame")
        content[name] = (ids.astype(np.int64), sizes[t])
    if p != len(payload):
        raise bad(f"{len(payload) - p} unexpected bytes after the ids")
    frames.append((n_queries, content))
