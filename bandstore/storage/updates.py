"""The update log: row updates kept as checksummed records in the catalog's LMDB environment.

A version is immutable; rows written after it was committed live here until a later version
folds them in (``bandstore compact``, a relayout). Keys, in the catalog's main database:

- ``update_seq``: the last sequence number handed out (JSON int; absent = 0). One number per
  ``append`` call, whatever tables it writes: a store's updates are totally ordered.
- ``updates/<table>\\x00<seq>`` (seq 8 bytes big-endian, so a table's records sort by seq and
  no table's range overlaps another's: names never hold ``\\x00``): one record per table and
  call. Value: a 24-byte header (magic ``BSU1``, rows ``n``, dim, row_bytes, codec id, flags),
  ``n`` little-endian int64 ids (distinct, ascending), ``n`` encoded rows, then the XXH64
  (seed 0) of everything before it.

A version's table record holds ``folded_seq``: the records of that table up to it are in the
version's block file (0, or absent, for none). Records every committed version has folded are
deleted by ``prune_folded`` (after gc dropped the versions that still needed them).

An ``append`` is one write transaction, committed with the environment's sync on: when it
returns, the records and the new ``update_seq`` are on disk together (or, after a crash before
the commit, neither is).
"""

from __future__ import annotations

import json
import struct
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from bandstore.errors import CorruptUpdateError
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


def latest_seq(catalog: Catalog, txn: Any = None) -> int:
    """The last sequence number handed out (0: no update ever)."""
    if txn is None:
        with _env(catalog).begin(buffers=True) as t:
            return latest_seq(catalog, t)
    raw = txn.get(SEQ_KEY)
    return 0 if raw is None else int(json.loads(bytes(raw)))


class _Group:
    """Group commit of one environment in this process: callers queue their records, and the
    one that takes the commit lock writes every queued record in one transaction (one sync for
    all); the others find theirs written when they get the lock."""

    def __init__(self) -> None:
        self.commit = threading.Lock()
        self.queue_lock = threading.Lock()
        self.queue: list[list[Any]] = []


_groups: dict[int, _Group] = {}
_groups_lock = threading.Lock()


def _group(env: Any) -> _Group:
    with _groups_lock:
        g = _groups.get(id(env))
        if g is None:
            g = _groups[id(env)] = _Group()
        return g


def append(catalog: Catalog, records: dict[str, tuple[np.ndarray, np.ndarray, int, int]]) -> int:
    """Write ``{table: (ids, encoded rows, dim, codec id)}`` under one new sequence number in
    one write transaction; return the number once it is durable.

    Concurrent callers in this process share transactions (group commit): each gets its own
    sequence number, and every one returns only after the transaction holding its records
    was committed and synced.
    """
    values = {t: encode_record(ids, rows, dim, codec) for t, (ids, rows, dim, codec) in
              records.items()}  # fmt: skip
    env = _env(catalog)
    g = _group(env)
    item: list[Any] = [values, None, None]  # records, seq, error
    with g.queue_lock:
        g.queue.append(item)
    with g.commit:
        if item[1] is None and item[2] is None:
            with g.queue_lock:
                batch, g.queue = g.queue, []
            try:
                seqs = []
                with env.begin(write=True) as txn:
                    seq = latest_seq(catalog, txn)
                    for it in batch:
                        seq += 1
                        for table, value in it[0].items():
                            txn.put(record_key(table, seq), value)
                        seqs.append(seq)
                    txn.put(SEQ_KEY, json.dumps(seq).encode())
                # The catalog's environment commits with sync on (lmdb's default): the data
                # pages and then the meta page are fdatasync'ed before the commit returns.
            except BaseException as exc:
                for it in batch:
                    it[2] = exc
            else:
                for it, sq in zip(batch, seqs, strict=True):
                    it[1] = sq
    if item[2] is not None:
        raise item[2]
    return int(item[1])


def read(
    catalog: Catalog,
    tables: dict[str, int],
    upto: int | None = None,
    *,
    check: bool = True,
) -> tuple[int, list[UpdateRecord]]:
    """The records of each table in ``tables`` (name -> the seq after which to read) up to
    ``upto`` (None: the latest), from one read transaction; returns ``(upto, records)``, the
    records by table, each table's in seq order."""
    out: list[UpdateRecord] = []
    with _env(catalog).begin(buffers=True) as txn:
        last = latest_seq(catalog, txn)
        upto = last if upto is None else min(int(upto), last)
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
    return upto, out


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
    """The log's size: ``update_seq`` and per table ``records``, ``rows``, ``bytes``."""
    tables: dict[str, dict[str, int]] = {}
    with _env(catalog).begin(buffers=True) as txn:
        seq = latest_seq(catalog, txn)
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
    return {"update_seq": seq, "tables": tables, **total}


def verify(catalog: Catalog) -> list[dict[str, Any]]:
    """Every record whose checksum or structure is wrong: ``{table, seq, reason}``."""
    problems = []
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
    """Delete the records every committed version has folded in; return how many.

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
    return deleted
