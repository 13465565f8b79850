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
- ``counts_origin/<table>``: where those counts came from (writer, trace, queries, time,
  version), written in the same transaction as the counts; counts written without one drop
  the old one, so an origin never describes counts it did not come with.
- ``tuning/<table>``: cache bytes, admission threshold and pinned share chosen by tuning.
- ``meta/<name>``: other tuning results (plan, calibration).

A version becomes visible only through ``commit_version``: one write transaction that stores the
version record, its checksums and the new current pointer, after the files were fsynced.
"""

from __future__ import annotations

import contextlib
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
    StorageFullError,
)
from bandstore.storage import blockfile, dram

#: Version 2 adds ``checksum_bytes`` (checksums per sector, not per block); a version 1 catalog
#: reads as one checksum per block.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
CATALOG_DIR = "catalog"
MAP_SIZE = 1 << 36  # address space only: LMDB grows the file as pages are used
#: Reserved for LMDB's lock file at create (its reader table: 126 slots of 64 bytes + header).
_LOCK_FILE_BYTES = 64 << 10

_envs: dict[str, tuple[lmdb.Environment, int]] = {}
_envs_lock = threading.Lock()


#: LMDB's meta pages (pages 0 and 1): after the 16-byte page header, the magic and version
#: (uint32 each), the map address and size (8 bytes each), then two 48-byte database records
#: (the free pages' and the main database's; the first's leading uint32 holds the page size,
#: each ends with its root page), the last used page and the txn id.
_LMDB_MAGIC = 0xBEEFC0DE
_META_OFFSET = 16
_PSIZE_OFFSET = _META_OFFSET + 24
_ROOT_OFFSETS = (_META_OFFSET + 24 + 40, _META_OFFSET + 24 + 48 + 40)
_LAST_PAGE_OFFSET = _META_OFFSET + 24 + 96
_NO_PAGE = (1 << 64) - 1  # an empty database's root


def check_lmdb_file(data_path: Path) -> None:
    """Raise CorruptFileError unless ``data_path`` (an LMDB ``data.mdb``) holds the root pages
    its newest meta page names. LMDB maps the file and would read the missing pages of a
    truncated file: the process would die of SIGBUS instead of raising.

    Not the meta page's last used page: LMDB may count pages a transaction allocated and freed
    again without writing them, so a sound file can end before it (a writer killed at random
    left one page short, and the store was refused). The roots are the newest pages written
    (copy on write), so a file cut short loses them first."""
    where = str(data_path)
    try:
        with data_path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_LAST_PAGE_OFFSET + 16)
            if len(head) < _LAST_PAGE_OFFSET + 16:
                raise CorruptFileError(where, f"catalog file is truncated ({size} bytes)")
            psize = int(np.frombuffer(head, "<u4", 1, _PSIZE_OFFSET)[0])
            if psize < 512 or psize & (psize - 1) or size < 2 * psize:
                raise CorruptFileError(
                    where, f"catalog file is truncated or not LMDB ({size} bytes, page {psize})"
                )
            f.seek(psize)
            metas = [head, f.read(_LAST_PAGE_OFFSET + 16)]
    except OSError as exc:
        if isinstance(exc, CorruptFileError):
            raise
        raise CorruptFileError(where, f"catalog file cannot be read ({exc})") from exc
    best = None
    for meta in metas:
        magic = int(np.frombuffer(meta, "<u4", 1, _META_OFFSET)[0])
        if magic != _LMDB_MAGIC:
            continue
        last_page, txnid = (int(x) for x in np.frombuffer(meta, "<u8", 2, _LAST_PAGE_OFFSET))
        roots = [int(np.frombuffer(meta, "<u8", 1, o)[0]) for o in _ROOT_OFFSETS]
        top = max([r for r in roots if r != _NO_PAGE], default=1)
        if best is None or txnid > best[1]:
            best = (min(top, last_page), txnid)
    if best is None:
        raise CorruptFileError(where, "catalog file is not an LMDB database (bad magic)")
    needed = (best[0] + 1) * psize
    if size < needed:
        raise CorruptFileError(
            where, f"catalog file is truncated: {size} bytes, its root page ends at {needed}"
        )


def _open_lmdb(path: Path, create: bool) -> lmdb.Environment:
    """Open the environment read-write, or read-only where the directory cannot be written
    (a read-only mount, another user's store): readers then need no write access."""
    try:
        return lmdb.open(str(path), map_size=MAP_SIZE, subdir=True, create=create, max_dbs=0)
    except lmdb.Error as exc:
        if create and _device_full(path):
            raise StorageFullError(str(path)) from exc
        if create or os.access(path, os.W_OK) and not _read_only_mount(path):
            raise CorruptFileError(str(path / "data.mdb"), f"LMDB cannot open it ({exc})") from exc
    try:
        return lmdb.open(str(path), subdir=True, readonly=True, max_dbs=0)
    except lmdb.Error:
        pass
    try:  # no lock file we may use either: only on a read-only mount, where nobody writes
        if not _read_only_mount(path):
            raise lmdb.Error("the lock file cannot be opened")
        return lmdb.open(str(path), subdir=True, readonly=True, lock=False, max_dbs=0)
    except lmdb.Error as exc:
        raise CorruptFileError(str(path / "data.mdb"), f"LMDB cannot open it ({exc})") from exc


@contextlib.contextmanager
def _lmdb_errors(path: Path, write: bool):
    """LMDB's own errors as bandstore errors: a write on a full device is StorageFullError,
    anything else (a damaged page, a failed read or write) CorruptFileError."""
    try:
        yield
    except lmdb.Error as exc:
        if write and _device_full(path):
            raise StorageFullError(str(path)) from exc
        raise CorruptFileError(str(path / "data.mdb"), f"LMDB: {exc}") from exc


def _device_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _acquire_env(path: Path, create: bool) -> lmdb.Environment:
    # LMDB must not open one environment twice in a process: share it, counting users.
    key = os.path.realpath(path)
    with _envs_lock:
        if key in _envs:
            env, n = _envs[key]
            _envs[key] = (env, n + 1)
            return env
        if not create:
            if not (path / "data.mdb").is_file():
                raise NotAStoreError(str(path.parent))
            check_lmdb_file(path / "data.mdb")
        env = _open_lmdb(path, create)
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


def _pow2(x: Any, lo: int, hi: int) -> bool:
    return type(x) is int and lo <= x <= hi and not x & (x - 1)


def _check_format(fmt: Any, where: str) -> None:
    """CorruptFileError unless the format record's block size is a power of two from 512 to
    1 MiB and its checksum sector (if any) a power of two from 64 to the block size."""
    if not isinstance(fmt, dict) or not _pow2(fmt.get("block_size"), 512, 1 << 20):
        raise CorruptFileError(where, f"bad format record {fmt!r}: block_size")
    cb = fmt.get("checksum_bytes", fmt["block_size"])
    if not _pow2(cb, 64, fmt["block_size"]):
        raise CorruptFileError(where, f"bad format record {fmt!r}: checksum_bytes")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _put_counts(
    txn: lmdb.Transaction,
    counts: dict[str, np.ndarray] | None,
    origins: dict[str, dict] | None,
) -> None:
    """Write access counts by table and, for each, its origin record (or drop a stale one)."""
    for table, arr in (counts or {}).items():
        key = table.encode()
        txn.put(b"counts/" + key, np.ascontiguousarray(arr, "<i4").tobytes())
        origin = (origins or {}).get(table)
        if origin is None:
            txn.delete(b"counts_origin/" + key)
        else:
            txn.put(b"counts_origin/" + key, _dumps(origin))


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
        # LMDB sizes its lock file and writes it through a map: on a full device the process
        # would die of SIGBUS. Reserve its space first (StorageFullError if there is none).
        with open(path / "lock.mdb", "xb") as f:
            blockfile.reserve_space(f.fileno(), _LOCK_FILE_BYTES, path / "lock.mdb")
        env = _acquire_env(path, create=True)
        cat = cls(root, env)
        with _lmdb_errors(path, True), env.begin(write=True) as txn:
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
        cat._sync()
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
            _check_format(fmt, str(path / "data.mdb"))
        except BaseException:
            cat.close()
            raise
        return cat

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_env(self.root / CATALOG_DIR)

    # ---- raw access ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _txn(self, write: bool = False):
        """A transaction whose LMDB errors surface as bandstore errors (``_lmdb_errors``)."""
        with _lmdb_errors(self.root / CATALOG_DIR, write), self._env.begin(write=write) as txn:
            yield txn

    def _sync(self) -> None:
        with _lmdb_errors(self.root / CATALOG_DIR, True):
            self._env.sync(True)

    def _get_json(self, key: bytes, txn: lmdb.Transaction | None = None) -> Any:
        if txn is None:
            with self._txn() as t:
                return self._get_json(key, t)
        raw = txn.get(key)
        if raw is None:
            return None
        try:
            return json.loads(bytes(raw))
        except ValueError as exc:
            raise CorruptFileError(str(self.root / CATALOG_DIR), f"bad record {key!r}") from exc

    def _get_array(self, key: bytes, dtype: str) -> np.ndarray | None:
        with self._txn() as txn:
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
        with self._txn() as txn:
            vid = self._get_json(b"current", txn)
            rec = self._get_json(b"version/%08d" % vid, txn)
        if rec is None:
            raise CorruptFileError(str(self.root / CATALOG_DIR), f"current version {vid} missing")
        return rec

    def current_version_id(self) -> int:
        """The current version's id alone (one small read: what a following store polls)."""
        return int(self._get_json(b"current"))

    def version(self, vid: int) -> dict | None:
        return self._get_json(b"version/%08d" % vid)

    def version_ids(self) -> list[int]:
        out = []
        with self._txn() as txn:
            cur = txn.cursor()
            if cur.set_range(b"version/"):
                for key in cur.iternext(values=False):
                    if not key.startswith(b"version/"):
                        break
                    out.append(int(key[len(b"version/") :]))
        return out

    def reserve_version_id(self) -> int:
        with self._txn(write=True) as txn:
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
        origins: dict[str, dict] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Make ``record`` the current version in one transaction, if ``base`` still is
        (with checksums, access counts by table and their ``origins``, tuning records and
        ``meta`` records, e.g. the plan, in the same transaction)."""
        self._sync()
        with self._txn(write=True) as txn:
            current = self._get_json(b"current", txn)
            if current != base:
                raise ConcurrentWriteError(base, current)
            record = dict(record, parent=base, committed=time.time())
            for file_id, arr in (checksums or {}).items():
                txn.put(
                    b"checksums/" + file_id.encode(), np.ascontiguousarray(arr, "<u8").tobytes()
                )
            _put_counts(txn, counts, origins)
            for table, rec in (tuning or {}).items():
                txn.put(b"tuning/" + table.encode(), _dumps(rec))
            for name, value in (meta or {}).items():
                txn.put(b"meta/" + name.encode(), _dumps(value))
            txn.put(b"version/%08d" % record["id"], _dumps(record))
            txn.put(b"current", _dumps(record["id"]))
        self._sync()

    def drop_versions(self, vids: list[int], file_ids: list[str]) -> None:
        with self._txn(write=True) as txn:
            for vid in vids:
                txn.delete(b"version/%08d" % vid)
            for fid in file_ids:
                txn.delete(b"checksums/" + fid.encode())
        self._sync()

    # ---- per-table data --------------------------------------------------------------------
    def checksums(self, file_id: str) -> np.ndarray | None:
        return self._get_array(b"checksums/" + file_id.encode(), "<u8")

    def counts(self, table: str) -> np.ndarray | None:
        return self._get_array(b"counts/" + table.encode(), "<i4")

    def counts_origin(self, table: str) -> dict | None:
        """Where ``table``'s access counts came from (a JSON record), or None if unknown."""
        return self._get_json(b"counts_origin/" + table.encode())

    def tuning(self, table: str) -> dict | None:
        return self._get_json(b"tuning/" + table.encode())

    def put_tuning(
        self,
        tuning: dict[str, dict],
        counts: dict[str, np.ndarray] | None = None,
        origins: dict[str, dict] | None = None,
    ) -> None:
        """Store tuning results (and the access counts they were made with, and where those
        came from) in one txn."""
        with self._txn(write=True) as txn:
            for table, rec in tuning.items():
                txn.put(b"tuning/" + table.encode(), _dumps(rec))
            _put_counts(txn, counts, origins)
        self._sync()

    def meta(self, name: str) -> Any:
        return self._get_json(b"meta/" + name.encode())

    def put_meta(
        self,
        name: str,
        value: Any,
        counts: dict[str, np.ndarray] | None = None,
        origins: dict[str, dict] | None = None,
    ) -> None:
        """Store ``value`` (and access counts by table, made with it, and their origins) in
        one txn."""
        with self._txn(write=True) as txn:
            txn.put(b"meta/" + name.encode(), _dumps(value))
            _put_counts(txn, counts, origins)
        self._sync()
