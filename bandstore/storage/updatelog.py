"""The update log's files: row updates appended as checksummed frames, one fdatasync per group.

Stored format (log format version 1), in ``<store>/updates/``:

- ``LOCK``: ``flock``-ed exclusively by a writer (any process) while it appends, recovers a
  torn tail or prunes. Readers never take it.
- Segments ``<n:08d>.log``, n = 1, 2, ...: preallocated (``fallocate``; zeros where nothing is
  written), grown in place by doubling up to ``SEGMENT_MAX`` bytes, then the next segment is
  started. A segment is made under a temporary name, synced, renamed, and the directory synced:
  it exists whole with its header, or not at all. The segment after ``n`` is ``n + 1``.
- Segment header, 64 bytes at offset 0: magic ``BSUSEG\\0\\0``, format version (u32), header
  bytes (u32, 64), ``base_seq`` (u64: the last sequence number before this segment's records),
  32 reserved bytes (zero), XXH64 (seed 0) of the 56 bytes before it.
- Frames from offset 64, each at an 8-byte multiple, one per group commit (one ``pwritev`` and
  one ``fdatasync``): a 48-byte header (magic ``BSUF``, version u16, flags u16, payload bytes
  u64, first seq u64, last seq u64, XXH64 of the payload u64, XXH64 of the 40 bytes before it
  u64), then the payload: entries in ascending seq, each 16 bytes (seq u64, records u32, pad)
  then its records, each 24 bytes (name bytes u16, codec id u16, dim u32, row bytes u32, pad,
  rows ``n`` u64), the table name (UTF-8, padded to 8), ``n`` little-endian int64 ids
  (distinct, ascending), ``n`` encoded rows (padded to 8). All integers little-endian.

Durability: ``append`` returns once its frame is written and ``fdatasync``-ed. Frames are
written one after another under the lock, each synced before the next is written, so after a
crash only the last frame can be incomplete. Recovery (a writer, under the lock) scans each
segment: a frame failing its checks with no valid frame anywhere after it is a torn write,
never acknowledged: it is zeroed and never served (a read-only reader stops before it). A
failing frame with a valid frame after it is damage: :class:`CorruptLogError` naming the file
and the offset. (A damaged last frame cannot be told from a torn write: it is dropped.)

If ``fdatasync`` fails the log refuses further writes in this process (the kernel may have
dropped the unsynced pages: retrying could acknowledge data that is gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from bandstore.errors import CorruptLogError, FormatVersionError
from bandstore.storage.blockfile import fsync_path, reserve_space

LOG_DIR = "updates"
LOG_FORMAT_VERSION = 1
SEG_MAGIC = b"BSUSEG\x00\x00"
FRAME_MAGIC = b"BSUF"
_SEG = struct.Struct("<8sIIQ32x")  # + xxh64 -> 64
_FRAME = struct.Struct("<4sHHQQQQ")  # + xxh64 -> 48
_ENTRY = struct.Struct("<QI4x")
_REC = struct.Struct("<HHII4xQ")
SEG_HEADER = _SEG.size + 8
FRAME_HEADER = _FRAME.size + 8
assert SEG_HEADER == 64 and FRAME_HEADER == 48 and _ENTRY.size == 16 and _REC.size == 24
#: First size of a segment, and the size past which the next segment is started.
SEGMENT_MIN = 1 << 20
SEGMENT_MAX = 64 << 20
_ZERO = bytes(FRAME_HEADER)
#: Bytes of frames parsed by an index refresh kept for the read that usually follows it.
RECENT_BYTES = 16 << 20


def _pad8(n: int) -> int:
    return -n % 8


def _h(b: Any) -> int:
    return xxhash.xxh64_intdigest(b)


class Frame:
    """A valid frame of a segment, as indexed: ``records`` = ``(table, seq, rows, bytes)``."""

    __slots__ = ("offset", "size", "first", "last", "records")

    def __init__(self, offset: int, size: int, first: int, last: int, records: list):
        self.offset, self.size, self.first, self.last, self.records = (
            offset, size, first, last, records)  # fmt: skip


class Segment:
    """One segment file as this process knows it: its frames up to ``end``."""

    def __init__(self, n: int, path: Path, fd: int, base_seq: int):
        self.n = n
        self.path = path
        self.fd = fd  # read-only
        self.ino = os.fstat(fd).st_ino
        self.base_seq = base_seq
        self.end = SEG_HEADER
        self.frames: list[Frame] = []
        self.wfd: int | None = None  # the writer's, opened on first append

    def close(self) -> None:
        for fd in (self.fd, self.wfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wfd = None


def parse_payload(payload: Any, first: int, last: int) -> list[tuple] | str:
    """``[(table, seq, ids, rows, dim, codec)]`` of a checksummed payload, or the reason it
    is malformed (a string). ``ids`` and ``rows`` are views of ``payload``."""
    out: list[tuple] = []
    mv = memoryview(payload)
    pos, size, prev = 0, len(mv), first - 1
    while pos < size:
        if pos + _ENTRY.size > size:
            return "entry header past the payload's end"
        seq, nrec = _ENTRY.unpack_from(mv, pos)
        pos += _ENTRY.size
        if seq <= prev or seq > last:
            return f"entry seq {seq} out of order (after {prev}, frame up to {last})"
        prev = seq
        for _ in range(nrec):
            if pos + _REC.size > size:
                return "record header past the payload's end"
            nlen, codec, dim, rb, n = _REC.unpack_from(mv, pos)
            pos += _REC.size
            end = pos + nlen + _pad8(nlen) + 8 * n + n * rb
            end += _pad8(end - pos)
            if end > size:
                return "record past the payload's end"
            name = bytes(mv[pos : pos + nlen]).decode("utf-8", "replace")
            pos += nlen + _pad8(nlen)
            ids = np.frombuffer(mv, dtype="<i8", count=n, offset=pos)
            rows = np.frombuffer(mv, dtype=np.uint8, count=n * rb, offset=pos + 8 * n)
            out.append((name, seq, ids, rows.reshape(n, rb), dim, codec))
            pos = end
    if prev != last:
        return f"last entry seq {prev}, header says {last}"
    return out


def encode_entries(entries: list[tuple[int, dict[str, tuple]]]) -> list[Any]:
    """The payload of ``[(seq, {table: (ids int64, rows uint8 (n, rb), dim, codec)})]`` as a
    list of buffers (written with one ``pwritev``, hashed part by part)."""
    parts: list[Any] = []
    for seq, recs in entries:
        parts.append(_ENTRY.pack(seq, len(recs)))
        for table, (ids, rows, dim, codec) in recs.items():
            name = table.encode()
            ids = np.ascontiguousarray(ids, dtype="<i8")
            rows = np.ascontiguousarray(rows, dtype=np.uint8)
            n, rb = rows.shape
            parts.append(_REC.pack(len(name), codec, dim, rb, n))
            parts.append(name + bytes(_pad8(len(name))))
            parts.append(ids.view(np.uint8))
            parts.append(rows.reshape(-1))
            if _pad8(n * rb):
                parts.append(bytes(_pad8(n * rb)))
    return parts


class Log:
    """One store's log files in this process (shared by its handles): the index of valid
    frames, the writers' group commit."""

    def __init__(self, root: Path, legacy_seq: int):
        self.dir = Path(root) / LOG_DIR
        self.key = ""  # its key in _logs
        self.legacy_seq = legacy_seq  # the last seq of the LMDB records (stores before this log)
        self.segments: list[Segment] = []
        self.listed = False
        self.lock = threading.RLock()  # the index
        self.commit = threading.Lock()  # one group commit at a time
        self.queue_lock = threading.Lock()
        self.queue: list[list[Any]] = []
        self.broken: BaseException | None = None
        self._bad_seen: tuple[int, int, int] | None = None
        # Frames refresh() parsed, until records() takes them (bounded: oldest dropped).
        self._recent: dict[tuple[int, int], tuple[int, list]] = {}
        self._recent_bytes = 0
        self.writing: tuple[int, int] | None = None  # (segment, offset) of a frame being synced
        self._lock_fd: int | None = None

    # ---- the index -------------------------------------------------------------------------
    def _open_segment(self, n: int) -> Segment | None:
        path = self.dir / f"{n:08d}.log"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        head = os.pread(fd, SEG_HEADER, 0)
        if len(head) < SEG_HEADER or head[:8] != SEG_MAGIC:
            os.close(fd)
            raise CorruptLogError(str(path), 0, "not an update log segment (bad header)")
        magic, version, hbytes, base = _SEG.unpack_from(head, 0)
        if version != LOG_FORMAT_VERSION:
            os.close(fd)
            raise FormatVersionError(str(path), version, LOG_FORMAT_VERSION)
        want = int.from_bytes(head[56:64], "little")
        got = _h(head[:56])
        if want != got or hbytes != SEG_HEADER:
            os.close(fd)
            raise CorruptLogError(str(path), 0, "segment header checksum mismatch", want, got)
        return Segment(n, path, fd, base)

    def _list(self) -> None:
        for s in self.segments:
            s.close()
        self.segments = []
        if self.dir.is_dir():
            ns = sorted(int(p.name[:-4]) for p in self.dir.glob("*.log") if p.name[:-4].isdigit())
            for n in ns:
                seg = self._open_segment(n)
                if seg is not None:
                    self.segments.append(seg)
        self.listed = True

    def _read_frame(self, seg: Segment, off: int, keep: bool = False) -> tuple[str, Any]:
        """``("ok", (Frame, parsed))``, ``("end", None)`` (zeros or the file's end) or
        ``("bad", reason)`` for the frame at ``off``; ``keep``: a valid frame's records are
        kept for the ``records`` call that usually follows (a reader's index refresh)."""
        head = os.pread(seg.fd, FRAME_HEADER, off)
        if len(head) < FRAME_HEADER:
            return ("end", None) if not head.strip(b"\0") else ("bad", "header past the end")
        if head == _ZERO:
            return "end", None
        magic, version, _flags, plen, first, last, phash = _FRAME.unpack_from(head, 0)
        if magic != FRAME_MAGIC:
            return "bad", "bad frame magic"
        if int.from_bytes(head[40:48], "little") != _h(head[:40]):
            return "bad", "frame header checksum mismatch"
        if version != LOG_FORMAT_VERSION:
            raise FormatVersionError(f"{seg.path}@{off}", version, LOG_FORMAT_VERSION)
        if plen % 8 or first > last or first <= seg.base_seq:
            return "bad", "frame header fields out of range"
        payload = os.pread(seg.fd, plen, off + FRAME_HEADER)
        if len(payload) < plen:
            return "bad", "payload past the end of the file"
        if _h(payload) != phash:
            return "bad", "payload checksum mismatch"
        parsed = parse_payload(payload, first, last)
        if isinstance(parsed, str):
            return "bad", parsed
        if keep and (seg.n, off) not in self._recent:  # (for records(): no second read)
            self._recent[(seg.n, off)] = (seg.ino, parsed)
            self._recent_bytes += FRAME_HEADER + plen
        recs = [(t, s, int(ids.size), int(ids.nbytes + rows.nbytes)) for t, s, ids, rows, _, _
                in parsed]  # fmt: skip
        return "ok", (Frame(off, FRAME_HEADER + plen, first, last, recs), parsed)

    def _valid_after(self, seg: Segment, off: int) -> bool:
        """Whether a valid frame header lies anywhere after ``off`` in ``seg`` or a later
        segment has a frame (then a bad frame at ``off`` is damage, not a torn write)."""
        size = os.fstat(seg.fd).st_size
        pos = off + 8
        chunk = 8 << 20
        while pos < size:
            buf = os.pread(seg.fd, min(chunk, size - pos) + FRAME_HEADER, pos)
            words = np.frombuffer(buf[: len(buf) // 8 * 8], dtype="<u4")[::2]
            for i in np.flatnonzero(words == int.from_bytes(FRAME_MAGIC, "little")):
                h = buf[8 * i : 8 * i + FRAME_HEADER]
                if len(h) == FRAME_HEADER and int.from_bytes(h[40:48], "little") == _h(h[:40]):
                    return True
            pos += chunk
        for later in self.segments:
            if later.n > seg.n and self._read_frame(later, SEG_HEADER)[0] != "end":
                return True
        return False

    def _zero_tail(self, seg: Segment, off: int) -> None:
        """Zero a torn write from ``off`` (the writer, under the lock) and sync."""
        fd = os.open(seg.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            pos = off
            while pos < size:
                n = min(8 << 20, size - pos)
                if os.pread(fd, n, pos).strip(b"\0"):
                    os.pwrite(fd, bytes(n), pos)
                pos += n
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def refresh(self, *, writer: bool = False) -> None:
        """Index the frames written since the last call (any process). ``writer`` (under the
        file lock): a torn last write is zeroed; else a reader stops before it."""
        with self.lock:
            if not self.listed or not self.segments:
                self._list()
            elif self.segments:
                last = self.segments[-1]
                try:
                    replaced = os.stat(last.path).st_ino != last.ino
                except FileNotFoundError:
                    replaced = True
                if replaced:  # a prune rewrote it: index everything again
                    self._list()
            if not self.segments:
                return
            i = 0
            while i < len(self.segments):
                seg = self.segments[i]
                while self.writing != (seg.n, seg.end):
                    kind, got = self._read_frame(seg, seg.end, keep=not writer)
                    if kind == "ok":
                        frame = got[0]
                        seg.frames.append(frame)
                        seg.end += frame.size
                        continue
                    # A bad frame: damage if a valid one follows; else a torn write (zeroed by a
                    # writer), or one in progress (a reader of the last segment waits for it).
                    if kind == "bad":
                        seen = (seg.n, seg.end, os.fstat(seg.fd).st_size)
                        if writer or seen != self._bad_seen:
                            if self._valid_after(seg, seg.end):
                                # (It may have been a frame being written, complete now that
                                # a later one is: frames are written one after another.)
                                if self._read_frame(seg, seg.end)[0] == "ok":
                                    continue
                                raise CorruptLogError(str(seg.path), seg.end, got)
                            self._bad_seen = seen  # (not scanned again until it changes)
                        if writer:
                            self._zero_tail(seg, seg.end)
                    break
                if self._recent_bytes > RECENT_BYTES:  # (nobody read them: read again)
                    self._recent.clear()
                    self._recent_bytes = 0
                if i == len(self.segments) - 1:
                    nxt = self._open_segment(seg.n + 1)
                    if nxt is not None:
                        self.segments.append(nxt)
                i += 1

    def latest_seq(self) -> int:
        """The last seq of the indexed frames (the legacy records' without any)."""
        with self.lock:
            for seg in reversed(self.segments):
                if seg.frames:
                    return seg.frames[-1].last
                return max(seg.base_seq, self.legacy_seq)
            return self.legacy_seq

    def records(self, after: dict[str, int], upto: int) -> list[tuple]:
        """``[(table, seq, ids, rows, dim, codec)]`` of each table in ``after`` with
        ``after[table] < seq <= upto``, by seq (re-read and re-checked: damage since it was
        indexed raises CorruptLogError)."""
        if not after:
            return []
        low = min(after.values())
        with self.lock:
            todo = [
                (seg, f)
                for seg in self.segments
                for f in seg.frames
                if f.last > low
                and f.first <= upto
                and any(t in after and after[t] < s <= upto for t, s, _, _ in f.records)
            ]
        out: list[tuple] = []
        for seg, f in todo:
            out.extend(r for r in self._frame_records(seg, f)
                       if r[0] in after and after[r[0]] < r[1] <= upto)  # fmt: skip
        return out

    def _frame_records(self, seg: Segment, f: Frame) -> list[tuple]:
        """The parsed records of an indexed frame: as ``refresh`` just read and checked them,
        else read again and checked."""
        kept = self._recent.pop((seg.n, f.offset), None)
        if kept is not None and kept[0] == seg.ino:
            self._recent_bytes -= f.size
            return kept[1]
        head = os.pread(seg.fd, FRAME_HEADER, f.offset)
        payload = os.pread(seg.fd, f.size - FRAME_HEADER, f.offset + FRAME_HEADER)
        want = int.from_bytes(head[32:40], "little") if len(head) == FRAME_HEADER else -1
        got = _h(payload)
        if want != got:
            raise CorruptLogError(str(seg.path), f.offset, "payload checksum mismatch", want, got)
        parsed = parse_payload(payload, f.first, f.last)
        if isinstance(parsed, str):
            raise CorruptLogError(str(seg.path), f.offset, parsed)
        return parsed

    # ---- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self):
        with self.lock:
            if self._lock_fd is None:
                new = not self.dir.is_dir()
                self.dir.mkdir(exist_ok=True)
                if new:
                    fsync_path(self.dir.parent)
                self._lock_fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
            fd = self._lock_fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _new_segment(self, base_seq: int, size: int, n: int | None = None,
                     body: bytes = b"") -> None:  # fmt: skip
        """Write segment ``n`` (default: the next) with its header and ``body`` (frames)
        under a temporary name, sync it, rename it into place (replacing one of that number)
        and sync the directory: it appears whole or not at all."""
        if n is None:
            n = self.segments[-1].n + 1 if self.segments else 1
        path = self.dir / f"{n:08d}.log"
        tmp = self.dir / f"{n:08d}.log.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            reserve_space(fd, max(size, SEG_HEADER + len(body)), tmp)
            head = _SEG.pack(SEG_MAGIC, LOG_FORMAT_VERSION, SEG_HEADER, base_seq)
            os.pwrite(fd, head + _h(head).to_bytes(8, "little") + body, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_path(self.dir)

    def _write_frame(self, entries: list[tuple[int, dict]]) -> None:
        """Append one frame of ``entries`` (consecutive seqs past the latest) and sync it
        (under the file lock; the index lock only while the index changes, so readers in this
        process never wait for the sync)."""
        parts = encode_entries(entries)
        plen = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        hasher = xxhash.xxh64()
        for p in parts:
            hasher.update(p)
        head = _FRAME.pack(FRAME_MAGIC, LOG_FORMAT_VERSION, 0, plen, entries[0][0],
                           entries[-1][0], hasher.intdigest())  # fmt: skip
        parts.insert(0, head + _h(head).to_bytes(8, "little"))
        size = FRAME_HEADER + plen
        with self.lock:
            seg = self.segments[-1] if self.segments else None
            if seg is None or (seg.end + size > SEGMENT_MAX and seg.frames):
                self._new_segment(entries[0][0] - 1, max(SEGMENT_MIN, SEG_HEADER + size))
                self.refresh(writer=True)
                seg = self.segments[-1]
            if seg.wfd is None:
                seg.wfd = os.open(seg.path, os.O_RDWR)
            off = seg.end
            self.writing = (seg.n, off)  # this process's readers stop there until it is synced
        wfd = seg.wfd
        try:
            fsize = os.fstat(wfd).st_size
            if off + size > fsize:  # grow in place, doubling: the size changes once per growth
                reserve_space(wfd, max(2 * fsize, off + size), seg.path)
            if len(parts) > 512:
                parts = [b"".join(parts)]
            done = 0
            while done < size:  # (a regular file's pwritev writes it all, short of ENOSPC)
                if done:
                    parts = [b"".join(bytes(p) for p in parts)[done:]]
                done += os.pwritev(wfd, parts, off + done)
            try:
                os.fdatasync(wfd)
            except OSError as exc:
                self.broken = exc
                raise
        finally:
            with self.lock:
                self.writing = None
        with self.lock:
            kind, got = self._read_frame(seg, off)
            if kind != "ok":
                raise CorruptLogError(str(seg.path), off, f"unreadable right after writing: {got}")
            if seg.end == off:
                seg.frames.append(got[0])
                seg.end = off + size

    def append(self, records: dict[str, tuple]) -> int:
        """Write ``{table: (ids, encoded rows, dim, codec)}`` under one new seq; return it once
        it is durable. Concurrent callers share frames (group commit)."""
        item: list[Any] = [records, None, None]
        with self.queue_lock:
            self.queue.append(item)
        with self.commit:
            if item[1] is None and item[2] is None:
                with self.queue_lock:
                    batch, self.queue = self.queue, []
                try:
                    if self.broken is not None:
                        raise OSError(f"{self.dir}: an earlier fdatasync failed; reopen the "
                                      f"store ({self.broken})")  # fmt: skip
                    with self._file_lock():
                        self.refresh(writer=True)
                        seq = self.latest_seq()
                        entries = [(seq + 1 + k, it[0]) for k, it in enumerate(batch)]
                        self._write_frame(entries)
                except BaseException as exc:
                    for it in batch:
                        it[2] = exc
                else:
                    for it, (sq, _) in zip(batch, entries, strict=True):
                        it[1] = sq
        if item[2] is not None:
            raise item[2]
        return int(item[1])

    # ---- pruning, checking, size -------------------------------------------------------------
    def prune(self, floor: dict[str, int]) -> int:
        """Drop the records of tables not in ``floor`` and those with ``seq <= floor[table]``:
        a segment without live records is deleted (the last is rewritten empty: its base keeps
        the seqs going), one with some is rewritten with only them (a new file renamed over
        it: a crash leaves the old or the new, both valid). Returns how many were dropped."""
        if not self.dir.is_dir():
            return 0

        def dead(r: tuple) -> bool:
            return r[0] not in floor or r[1] <= floor[r[0]]

        dropped = 0
        with self._file_lock(), self.lock:
            self.refresh(writer=True)
            changed = False
            for k, seg in enumerate(list(self.segments)):
                n_dead = sum(dead(r) for f in seg.frames for r in f.records)
                if not n_dead:
                    continue
                dropped += n_dead
                changed = True
                body = []
                live_last = seg.base_seq
                for f in seg.frames:
                    if all(dead(r) for r in f.records):
                        continue
                    recs = [r for r in self._frame_records(seg, f) if not dead(r)]
                    body.append(_frame_bytes(recs))
                    live_last = max(live_last, max(r[1] for r in recs))
                is_last = k == len(self.segments) - 1
                if not body and not is_last:
                    os.unlink(seg.path)
                    continue
                # The newest segment carries the seqs on: the next seq must follow the last
                # one handed out, not the last one kept (else new records would get seqs a
                # table has already folded, and be taken as folded: lost).
                last = seg.frames[-1].last if seg.frames else seg.base_seq
                if is_last and body and live_last < last:
                    # An empty segment after it, made first: a crash leaves a valid log.
                    self._new_segment(last, SEGMENT_MIN, n=seg.n + 1)
                base = last if is_last and not body else seg.base_seq
                self._new_segment(base, SEGMENT_MIN, n=seg.n, body=b"".join(body))
            if changed:
                fsync_path(self.dir)
                self._list()
                self.refresh(writer=True)
        return dropped

    def verify(self) -> list[dict[str, Any]]:
        """Damage in the log files (a torn last write is not damage): ``{file, offset,
        reason}``."""
        problems = []
        check = Log(self.dir.parent, self.legacy_seq)
        try:
            check._list()
            for seg in check.segments:
                while True:
                    kind, got = check._read_frame(seg, seg.end)
                    if kind == "ok":
                        seg.end += got[0].size
                        continue
                    if kind == "bad" and check._valid_after(seg, seg.end):
                        if check._read_frame(seg, seg.end)[0] == "ok":
                            continue  # (it was being written)
                        problems.append({"file": str(seg.path), "offset": seg.end,
                                         "reason": got})  # fmt: skip
                    break
        except (CorruptLogError, FormatVersionError) as exc:
            where = {"file": str(getattr(exc, "path", self.dir)),
                     "offset": int(getattr(exc, "offset", 0))}  # fmt: skip
            problems.append({**where, "reason": str(exc)})
        finally:
            for seg in check.segments:
                seg.close()
        return problems

    def summary(self) -> dict[str, Any]:
        """Per table ``records``, ``rows``, ``bytes``; the files' ``segments``, ``log_bytes``
        (written) and ``file_bytes`` (allocated)."""
        self.refresh()
        tables: dict[str, dict[str, int]] = {}
        with self.lock:
            for seg in self.segments:
                for f in seg.frames:
                    for t, _s, n, nb in f.records:
                        d = tables.setdefault(t, {"records": 0, "rows": 0, "bytes": 0})
                        d["records"] += 1
                        d["rows"] += n
                        d["bytes"] += nb
            files = {
                "segments": len(self.segments),
                "log_bytes": sum(s.end for s in self.segments),
                "file_bytes": sum(os.fstat(s.fd).st_size for s in self.segments),
            }
        return {"tables": tables, **files}


def _frame_bytes(recs: list[tuple]) -> bytes:
    """One frame (header and payload) of parsed records ``(table, seq, ids, rows, dim,
    codec)``."""
    by_seq: dict[int, dict] = {}
    for t, sq, ids, rows, dim, codec in recs:
        by_seq.setdefault(sq, {})[t] = (ids, rows, dim, codec)
    entries = sorted(by_seq.items())
    payload = b"".join(bytes(p) for p in encode_entries(entries))
    head = _FRAME.pack(FRAME_MAGIC, LOG_FORMAT_VERSION, 0, len(payload), entries[0][0],
                       entries[-1][0], _h(payload))  # fmt: skip
    return head + _h(head).to_bytes(8, "little") + payload


_logs: dict[str, Log] = {}
_logs_lock = threading.Lock()


def log_of(root: Path, legacy_seq: Any) -> Log:
    """The process's Log of the store at ``root`` (``legacy_seq()`` is called on first use)."""
    key = str(Path(root).resolve())
    with _logs_lock:
        log = _logs.get(key)
        if log is None:
            log = _logs[key] = Log(Path(root), int(legacy_seq()))
            log.key = key
        return log


def _forget() -> None:  # a forked child opens its own (the parent's locks may be held)
    global _logs_lock
    _logs.clear()
    _logs_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget)
