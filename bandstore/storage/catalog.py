"""The LMDB catalog of a store: the only place that decides what a store contains.

Keys (values are JSON unless said otherwise; nothing is ever pickled):
- ``format``: format version and the store's format parameters (block size, checksum sector).
- ``next_version``: the next version id to hand out (ids are never reused, so an orphan
  directory of a crashed writer can never be mistaken for a committed version).
- ``current``: the current version id.
- ``version/<id>``: a version: its tables, each with geometry, files and checksum keys.
- ``checksums/<file id>``: raw little-endian uint64 checksums of one block file, one per sector
  of ``checksum_bytes`` (``block_size // checksum_bytes`` per block, in block order).
- ``counts/<table>``: raw little-endian int32 access counts by id (admission, pinning).
- ``tuning/<table>``: cache bytes, admission threshold and pinned share chosen by tuning.
- ``meta/<name>``: other tuning results (plan, calibration).

A version becomes visible only through ``commit_version``: one write transaction that stores the
version record, its checksums and the new current pointer, after the files were fsynced.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from bandstore.errors import (
    ConcurrentWriteError,
    CorruptFileError,
    FormatVersionError,
    NotAStoreError,
)
from bandstore.storage import dram

#: Version 2 adds ``checksum_bytes`` (checksums per sector, not per block); a version 1 catalog
#: reads as one checksum per block.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
CATALOG_DIR = "catalog"
MAP_SIZE = 1 << 36  # address space only: LMDB grows the file as pages are used

_envs: dict[str, tuple[lmdb.Environment, int]] = {}
_envs_lock = threading.Lock()


def _acquire_env(path: Path, create: bool) -> lmdb.Environment:
    # LMDB must not open one environment twice in a process: share it, counting users.
    key = os.path.realpath(path)
    with _envs_lock:
        if key in _envs:
            env, n = _envs[key]
            _envs[key] = (env, n + 1)
            return env
        if not create and not (path / "data.mdb").is_file():
            raise NotAStoreError(str(path.parent))
        env = lmdb.open(str(path), map_size=MAP_SIZE, subdir=True, create=create, max_dbs=0)
        _envs[key] = (env, 1)
        return env


def _release_env(path: Path) -> None:
    key = os.path.realpath(path)
    with _envs_lock:
        env, n = _envs[key]
        if n > 1:
            _envs[key] = (env, n - 1)
        else:
            del _envs[key]
            env.close()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


class Catalog:
    """Typed access to a store's LMDB catalog."""

    def __init__(self, root: Path, env: lmdb.Environment):
        self.root = root
        self._env = env
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, *, block_size: int, checksum_bytes: int) -> Catalog:
        root = Path(root)
        path = root / CATALOG_DIR
        path.mkdir(parents=True, exist_ok=False)
        env = _acquire_env(path, create=True)
        cat = cls(root, env)
        with env.begin(write=True) as txn:
            txn.put(
                b"format",
                _dumps(
                    {
                        "format_version": FORMAT_VERSION,
                        "block_size": block_size,
                        "checksum_bytes": checksum_bytes,
                    }
                ),
            )
            txn.put(b"next_version", _dumps(1))
            txn.put(b"current", _dumps(0))
            txn.put(b"version/00000000", _dumps({"id": 0, "parent": None, "tables": {}}))
        env.sync(True)
        return cat

    @classmethod
    def open(cls, root: Path) -> Catalog:
        root = Path(root)
        if not root.is_dir():
            raise NotAStoreError(str(root), "no such directory")
        path = root / CATALOG_DIR
        if not path.is_dir():
            raise NotAStoreError(str(root))
        env = _acquire_env(path, create=False)
        cat = cls(root, env)
        try:
            fmt = cat._get_json(b"format")
            if fmt is None:
                raise NotAStoreError(str(root), "catalog has no format record")
            if fmt.get("format_version") not in READABLE_FORMAT_VERSIONS:
                raise FormatVersionError(str(root), fmt.get("format_version"), FORMAT_VERSION)
        except BaseException:
            cat.close()
            raise
        return cat

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_env(self.root / CATALOG_DIR)

    # ---- raw access ------------------------------------------------------------------------
    def _get_json(self, key: bytes, txn: lmdb.Transaction | None = None) -> Any:
        if txn is None:
            with self._env.begin() as t:
                return self._get_json(key, t)
        raw = txn.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise CorruptFileError(str(self.root / CATALOG_DIR), f"bad record {key!r}") from exc

    def _get_array(self, key: bytes, dtype: str) -> np.ndarray | None:
        with self._env.begin() as txn:
            raw = txn.get(key)
            if raw is None:
                return None
            # One copy, out of the transaction's buffer into the array lookups read (large ones
            # on huge pages: checksums and access counts are read at random).
            return dram.copy(np.frombuffer(raw, dtype=dtype))

    # ---- format, versions ------------------------------------------------------------------
    @property
    def format(self) -> dict:
        """The format record; ``checksum_bytes`` is filled in (= block_size) for version 1."""
        fmt = self._get_json(b"format")
        fmt.setdefault("checksum_bytes", fmt["block_size"])
        return fmt

    def current_version(self) -> dict:
        with self._env.begin() as txn:
            vid = self._get_json(b"current", txn)
            rec = self._get_json(b"version/%08d" % vid, txn)
        if rec is None:
            raise CorruptFileError(str(self.root / CATALOG_DIR), f"current version {vid} missing")
        return rec

    def version(self, vid: int) -> dict | None:
        return self._get_json(b"version/%08d" % vid)

    def version_ids(self) -> list[int]:
        out = []
        with self._env.begin() as txn:
            cur = txn.cursor()
            if cur.set_range(b"version/"):
                for key in cur.iternext(values=False):
                    if not key.startswith(b"version/"):
                        break
                    out.append(int(key[len(b"version/") :]))
        return out

    def reserve_version_id(self) -> int:
        with self._env.begin(write=True) as txn:
            vid = self._get_json(b"next_version", txn)
            txn.put(b"next_version", _dumps(vid + 1))
        return vid

    def commit_version(
        self,
        record: dict,
        *,
        base: int,
        checksums: dict[str, np.ndarray] | None = None,
        counts: dict[str, np.ndarray] | None = None,
        tuning: dict[str, dict] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Make ``record`` the current version in one transaction, if ``base`` still is, with
        ``checksums``, ``counts``, ``tuning`` and ``meta`` records (e.g. the plan) in the same
        transaction."""
        self._env.sync(True)
        with self._env.begin(write=True) as txn:
            current = self._get_json(b"current", txn)
            if current != base:
                raise ConcurrentWriteError(base, current)
            record = dict(record, parent=base, committed=time.time())
            for file_id, arr in (checksums or {}).items():
                txn.put(
                    b"checksums/" + file_id.encode(), np.ascontiguousarray(arr, "<u8").tobytes()
                )
            for table, arr in (counts or {}).items():
                txn.put(b"counts/" + table.encode(), np.ascontiguousarray(arr, "<i4").tobytes())
            for table, rec in (tuning or {}).items():
                txn.put(b"tuning/" + table.encode(), _dumps(rec))
            for name, value in (meta or {}).items():
                txn.put(b"meta/" + name.encode(), _dumps(value))
            txn.put(b"version/%08d" % record["id"], _dumps(record))
            txn.put(b"current", _dumps(record["id"]))
        self._env.sync(True)

    def drop_versions(self, vids: list[int], file_ids: list[str]) -> None:
        with self._env.begin(write=True) as txn:
            for vid in vids:
                txn.delete(b"version/%08d" % vid)
            for fid in file_ids:
                txn.delete(b"checksums/" + fid.encode())
        self._env.sync(True)

    # ---- per-table data --------------------------------------------------------------------
    def checksums(self, file_id: str) -> np.ndarray | None:
        return self._get_array(b"checksums/" + file_id.encode(), "<u8")

    def counts(self, table: str) -> np.ndarray | None:
        return self._get_array(b"counts/" + table.encode(), "<i4")

    def tuning(self, table: str) -> dict | None:
        return self._get_json(b"tuning/" + table.encode())

    def put_tuning(self, tuning: dict[str, dict], counts: dict[str, np.ndarray] | None = None):
        """Store tuning results (and the access counts they were made with) in one txn."""
        with self._env.begin(write=True) as txn:
            for table, rec in tuning.items():
                txn.put(b"tuning/" + table.encode(), _dumps(rec))
            for table, arr in (counts or {}).items():
                txn.put(b"counts/" + table.encode(), np.ascontiguousarray(arr, "<i4").tobytes())
        self._env.sync(True)

    def meta(self, name: str) -> Any:
        return self._get_json(b"meta/" + name.encode())

    def put_meta(self, name: str, value: Any, counts: dict[str, np.ndarray] | None = None) -> None:
        """Store ``value`` (and access counts by table, made with it) in one txn."""
        with self._env.begin(write=True) as txn:
            txn.put(b"meta/" + name.encode(), _dumps(value))
            for table, arr in (counts or {}).items():
                txn.put(b"counts/" + table.encode(), np.ascontiguousarray(arr, "<i4").tobytes())
        self._env.sync(True)
