"""The update log: row updates kept as checksummed records beside the immutable version.

A version is immutable; rows written after it was committed live here until a later version
folds them in (``bandstore compact``, a relayout). Since log format 1 the records are frames
appended to files under ``<store>/updates/`` (``storage.updatelog``: its docstring is the
format), one ``fdatasync`` per group of concurrent calls: an ``append`` returns once its records
are durable. Each call gets one sequence number, whatever tables it writes: a store's updates
are totally ordered.

Stores written before it kept the records in the catalog's LMDB main database (still read,
never written; pruned as they are folded): ``update_seq`` (the last seq handed out, JSON int)
and ``updates/<table>\\x00<seq>`` (seq 8 bytes big-endian), value a 24-byte header (magic
``BSU1``, rows ``n``, dim, row_bytes, codec id, flags), ``n`` little-endian int64 ids, ``n``
encoded rows, then the XXH64 of everything before it. The file log's first segment starts
after ``update_seq``.

A version's table record holds ``folded_seq``: the records of that table up to it are in the
version's block file (0, or absent, for none). Records every committed version has folded are
dropped by ``prune_folded`` (after gc dropped the versions that still needed them).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from bandstore.errors import CorruptUpdateError
from bandstore.storage import updatelog
from bandstore.storage.catalog import Catalog

SEQ_KEY = b"update_seq"
PREFIX = b"updates/"
MAGIC = b"BSU1"
_HEADER = struct.Struct("<4sIIIHH4x")  # magic, n, dim, row_bytes, codec, flags, pad -> 24 bytes
assert _HEADER.size == 24


@dataclass(frozen=True)
class UpdateRecord:
    """One table's rows from one ``append``: ``ids`` ascending and distinct, ``rows`` encoded
    (uint8, ``(n, row_bytes)``) with codec ``codec`` (an id, ``storage.codecs``)."""

    table: str
    seq: int
    ids: np.ndarray
    rows: np.ndarray
    dim: int
    codec: int

    @property
    def nbytes(self) -> int:
        return int(_HEADER.size + self.ids.nbytes + self.rows.nbytes + 8)


def record_key(table: str, seq: int) -> bytes:
    return PREFIX + table.encode() + b"\x00" + int(seq).to_bytes(8, "big")


def _table_prefix(table: str) -> bytes:
    return PREFIX + table.encode() + b"\x00"


def encode_record(ids: np.ndarray, rows: np.ndarray, dim: int, codec: int) -> bytes:
    """The stored value of a record (see the module docstring)."""
    ids = np.ascontiguousarray(ids, dtype="<i8")
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    body = b"".join(
        (_HEADER.pack(MAGIC, ids.shape[0], dim, rows.shape[1], codec, 0), ids.data, rows.data)
    )
    return body + xxhash.xxh64_intdigest(body).to_bytes(8, "little")


def decode_record(table: str, seq: int, value: Any, *, check: bool = True) -> UpdateRecord:
    """Parse a stored value; raise CorruptUpdateError if it is malformed or (``check``) its
    checksum does not match. The arrays are copies (the value may be a transaction's buffer)."""
    value = memoryview(value)
    if len(value) < _HEADER.size + 8:
        raise CorruptUpdateError(table, seq, "record shorter than its header")
    magic, n, dim, rb, codec, _flags = _HEADER.unpack_from(value, 0)
    if magic != MAGIC:
        raise CorruptUpdateError(table, seq, f"bad magic {bytes(magic)!r}")
    size = _HEADER.size + 8 * n + n * rb + 8
    if len(value) != size:
        raise CorruptUpdateError(table, seq, f"record of {len(value)} bytes, expected {size}")
    if check:
        expected = int.from_bytes(value[size - 8 :], "little")
        actual = xxhash.xxh64_intdigest(value[: size - 8])
        if actual != expected:
            raise CorruptUpdateError(table, seq, "checksum mismatch", expected, actual)
    ids = np.frombuffer(value, dtype="<i8", count=n, offset=_HEADER.size).astype(np.int64)
    rows = np.frombuffer(value, dtype=np.uint8, count=n * rb, offset=_HEADER.size + 8 * n)
    return UpdateRecord(table, seq, ids, rows.reshape(n, rb).copy(), int(dim), int(codec))


def _env(catalog: Catalog):
    return catalog._env  # the storage layer's own environment (catalog.py opens it)


def _legacy_seq(catalog: Catalog, txn: Any = None) -> int:
    """The last seq of the LMDB records (stores written before the file log; 0: none)."""
    if txn is None:
        with _env(catalog).begin(buffers=True) as t:
            return _legacy_seq(catalog, t)
    raw = txn.get(SEQ_KEY)
    return 0 if raw is None else int(json.loads(bytes(raw)))


def log(catalog: Catalog) -> updatelog.Log:
    """The store's log files (one object per store in this process, remembered by the
    catalog: finding it by path resolves the path, a tenth of a batch's CPU)."""
    lg: updatelog.Log | None = catalog.__dict__.get("_update_log")
    if lg is None or updatelog._logs.get(lg.key) is not lg:  # (none yet, or forked since)
        lg = updatelog.log_of(catalog.root, lambda: _legacy_seq(catalog))
        catalog.__dict__["_update_log"] = lg
    return lg


def latest_seq(catalog: Catalog) -> int:
    """The last sequence number handed out (0: no update ever), frames other processes
    appended since the last look included."""
    lg = log(catalog)
    lg.refresh()
    return lg.latest_seq()


def append(catalog: Catalog, records: dict[str, tuple[np.ndarray, np.ndarray, int, int]]) -> int:
    """Write ``{table: (ids, encoded rows, dim, codec id)}`` under one new sequence number;
    return the number once it is durable (its frame written and fdatasync-ed).

    Concurrent callers in this process share frames (group commit), other processes take
    turns on the log's file lock: each call gets its own sequence number, and returns only
    after the frame holding its records was synced.
    """
    return log(catalog).append(records)


def read(
    catalog: Catalog,
    tables: dict[str, int],
    upto: int | None = None,
    *,
    check: bool = True,
) -> tuple[int, list[UpdateRecord]]:
    """The records of each table in ``tables`` (name -> the seq after which to read) up to
    ``upto`` (None: the latest); returns ``(upto, records)``, each table's in seq order (the
    LMDB records of an older store first, then the log files')."""
    lg = log(catalog)
    lg.refresh()
    last = lg.latest_seq()
    upto = last if upto is None else min(int(upto), last)
    out: list[UpdateRecord] = []
    if lg.legacy_seq and min(tables.values(), default=upto) < lg.legacy_seq:
        out.extend(_legacy_read(catalog, tables, min(upto, lg.legacy_seq), check))
    for t, sq, ids, rows, dim, codec in lg.records(tables, upto):
        out.append(UpdateRecord(t, sq, ids, rows, int(dim), int(codec)))
    return upto, out


def _legacy_read(catalog: Catalog, tables: dict[str, int], upto: int,
                 check: bool) -> list[UpdateRecord]:  # fmt: skip
    out: list[UpdateRecord] = []
    with _env(catalog).begin(buffers=True) as txn:
        cur = txn.cursor()
        for table, after in tables.items():
            if after >= upto:
                continue
            prefix = _table_prefix(table)
            end = record_key(table, upto)
            if not cur.set_range(prefix + int(after + 1).to_bytes(8, "big")):
                continue
            for key, value in cur:
                key = bytes(key)
                if key > end or not key.startswith(prefix):
                    break
                seq = int.from_bytes(key[len(prefix) :], "big")
                out.append(decode_record(table, seq, value, check=check))
    return out


def collapse(records: list[UpdateRecord], row_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """The last value of each id over ``records`` (one table's, in seq order): ``(ids
    ascending, encoded rows)``."""
    if not records:
        return np.empty(0, np.int64), np.empty((0, row_bytes), np.uint8)
    ids = np.concatenate([r.ids for r in records])
    rows = np.concatenate([r.rows for r in records])
    # np.unique keeps the first occurrence: run it on the reversed arrays for the last one.
    uniq, first = np.unique(ids[::-1], return_index=True)
    return uniq, np.ascontiguousarray(rows[::-1][first])


def summary(catalog: Catalog) -> dict[str, Any]:
    """The log's size: ``update_seq``, per table ``records``, ``rows``, ``bytes`` (the
    records'), and the files' ``segments``, ``log_bytes`` (written), ``file_bytes``
    (allocated)."""
    lg = log(catalog)
    files = lg.summary()
    tables: dict[str, dict[str, int]] = files.pop("tables")
    with _env(catalog).begin(buffers=True) as txn:
        cur = txn.cursor()
        if cur.set_range(PREFIX):
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(PREFIX):
                    break
                table = key[len(PREFIX) : -9].decode()
                n = _HEADER.unpack_from(value, 0)[1] if len(value) >= _HEADER.size else 0
                s = tables.setdefault(table, {"records": 0, "rows": 0, "bytes": 0})
                s["records"] += 1
                s["rows"] += int(n)
                s["bytes"] += len(value)
    total = {k: sum(s[k] for s in tables.values()) for k in ("records", "rows", "bytes")}
    return {"update_seq": lg.latest_seq(), "tables": tables, **total, **files}


def verify(catalog: Catalog) -> list[dict[str, Any]]:
    """Damage in the log: ``{file, offset, reason}`` for the files (a torn last write is not
    damage), ``{table, seq, reason}`` for an older store's LMDB records."""
    problems = log(catalog).verify()
    with _env(catalog).begin(buffers=True) as txn:
        cur = txn.cursor()
        if cur.set_range(PREFIX):
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(PREFIX):
                    break
                table = key[len(PREFIX) : -9].decode()
                seq = int.from_bytes(key[-8:], "big")
                try:
                    decode_record(table, seq, value)
                except CorruptUpdateError as exc:
                    problems.append({"table": table, "seq": seq, "reason": exc.reason})
    return problems


def folded_seq(table_record: dict) -> int:
    """The seq up to which a version's table record has folded this table's updates."""
    return int(table_record.get("folded_seq", 0))


def prune_folded(catalog: Catalog) -> int:
    """Drop the records every committed version has folded in; return how many.

    A table's records up to the smallest ``folded_seq`` over the committed versions holding
    the table are in all of them; a version without the table never reads its records.
    """
    env = _env(catalog)
    deleted = 0
    with env.begin(write=True) as txn:
        floor: dict[str, int] = {}
        cur = txn.cursor()
        if cur.set_range(b"version/"):
            for key, value in cur:
                if not key.startswith(b"version/"):
                    break
                for name, trec in json.loads(value)["tables"].items():
                    f = folded_seq(trec)
                    floor[name] = min(floor.get(name, f), f)
        doomed = []
        for table, f in floor.items():
            if f <= 0:
                continue
            prefix = _table_prefix(table)
            end = record_key(table, f)
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if key > end or not key.startswith(prefix):
                        break
                    doomed.append(bytes(key))
        # Records of tables no committed version has are nobody's either.
        if cur.set_range(PREFIX):
            for key in cur.iternext(values=False):
                if not key.startswith(PREFIX):
                    break
                if key[len(PREFIX) : -9].decode() not in floor:
                    doomed.append(bytes(key))
        for key in doomed:
            txn.delete(key)
            deleted += 1
    if deleted:
        env.sync(True)
    return deleted + log(catalog).prune(floor)
