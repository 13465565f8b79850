"""Block files, layout files and version directories: everything bandstore keeps in plain files.

A block file is one header block followed by ``n_blocks`` data blocks, all ``block_size`` bytes;
it is written once (through a writable mmap), checksummed per block, fsynced, and from then on
only read through a read-only mmap. A layout file is an ``.npy`` int64 array ``id -> slot``
(read with ``allow_pickle=False`` through mmap). Every file is written inside a version
directory that no reader can see until the catalog commits it.

Readers hold a shared ``flock`` on their version's lock file for as long as they serve from
it; garbage collection removes a version only if it can take that lock exclusively.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from bandstore.errors import (
    CorruptFileError,
    FormatVersionError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidShapeError,
    ReadOnlyError,
    StorageFullError,
)

BLOCK_MAGIC = b"BANDBLK\x00"
FORMAT_VERSION = 1
VERSIONS_DIR = "versions"
LOCK_NAME = ".readers.lock"
WRITE_LOCK_NAME = "write.lock"


@dataclass(frozen=True)
class BlockGeometry:
    """Where rows live in a table's block file."""

    rows: int
    dim: int
    codec: str
    row_bytes: int
    rows_per_block: int
    n_blocks: int
    block_size: int

    @property
    def file_size(self) -> int:
        return (self.n_blocks + 1) * self.block_size

    def header(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "rows": self.rows,
            "dim": self.dim,
            "codec": self.codec,
            "row_bytes": self.row_bytes,
            "rows_per_block": self.rows_per_block,
            "n_blocks": self.n_blocks,
            "block_size": self.block_size,
        }


def version_dir_name(version: int) -> str:
    return f"v{version:08d}"


def version_path(root: Path, version: int) -> Path:
    return root / VERSIONS_DIR / version_dir_name(version)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directories so that new entries are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_version_dir(root: Path, version: int) -> Path:
    path = version_path(root, version)
    path.mkdir(parents=True, exist_ok=False)
    (path / LOCK_NAME).touch()
    fsync_path(path.parent)
    return path


def rows_view(buf: np.ndarray, geometry: BlockGeometry) -> np.ndarray:
    """A (n_blocks, rows_per_block, row_bytes) view of the data blocks of a block file buffer."""
    g = geometry
    data = buf[g.block_size : g.file_size]
    return np.lib.stride_tricks.as_strided(
        data,
        shape=(g.n_blocks, g.rows_per_block, g.row_bytes),
        strides=(g.block_size, g.row_bytes, 1),
        writeable=buf.flags.writeable,
    )


class BlockFileWriter:
    """Creates a block file of known geometry; rows are scattered into it by slot.

    The file is sized and mapped up front so that a table larger than RAM streams through the
    page cache. Its space is reserved first (``posix_fallocate``): filling a sparse map on a
    full filesystem would kill the process with SIGBUS; a reservation that does not fit raises
    StorageFullError and removes the file. ``finish()`` computes the per-block checksums and
    fsyncs the file.
    """

    def __init__(self, path: Path, geometry: BlockGeometry):
        self.path = Path(path)
        self.geometry = geometry
        with open(self.path, "xb") as f:
            reserve_space(f.fileno(), geometry.file_size, self.path)
        self._buf = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(geometry.file_size,))
        header = BLOCK_MAGIC + json.dumps(geometry.header()).encode()
        if len(header) > geometry.block_size:
            raise ValueError("block file header does not fit in one block")
        self._buf[: len(header)] = np.frombuffer(header, dtype=np.uint8)
        self._rows = rows_view(self._buf, geometry)

    def write_rows(self, slots: np.ndarray, encoded: np.ndarray) -> None:
        """Write encoded rows (n, row_bytes) at the given slots."""
        rpb = self.geometry.rows_per_block
        self._rows[slots // rpb, slots % rpb] = encoded

    @property
    def buffer(self) -> np.ndarray:
        """The file as a writable uint8 map (until finish())."""
        return self._buf

    def finish(self, checksum_bytes: int) -> np.ndarray:
        """Checksum every sector of ``checksum_bytes`` of the data blocks, flush and fsync;
        return the checksums (uint64, ``block_size // checksum_bytes`` per block, in order)."""
        from bandstore.kernels.checksum import block_checksums

        g = self.geometry
        self._buf.flush()
        checksums = block_checksums(np.asarray(self._buf[g.block_size :]), checksum_bytes)
        del self._rows
        del self._buf
        fsync_path(self.path)
        return checksums


def reserve_space(fd: int, size: int, path: Path) -> None:
    """Allocate ``size`` bytes of the file ``fd`` on the device (so that writing them through a
    map cannot fail); on a full device remove ``path`` and raise StorageFullError."""
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # pragma: no cover - (no fallocate: sparse, as before)
            os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            os.ftruncate(fd, size)  # a filesystem without fallocate: sparse, as before
            return
        with contextlib.suppress(OSError):
            os.unlink(path)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(str(path), size) from exc
        raise


def read_block_file(path: Path, geometry: BlockGeometry) -> np.ndarray:
    """Map a block file read-only, advised random access (``map_random``: a
    missed block costs one block of device reads, not a readahead window), and check its
    header against the catalog's geometry."""

    path = Path(path)
    size = check_block_file_size(path, geometry)
    buf = map_random(path, size)
    check_block_header(path, geometry, bytes(buf[: geometry.block_size]))
    return buf


def check_block_file_size(path: Path, geometry: BlockGeometry) -> int:
    """The block file's size, which must be the catalog's (CorruptFileError otherwise)."""
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError as exc:
        raise CorruptFileError(str(path), "block file is missing") from exc
    if size != geometry.file_size:
        raise CorruptFileError(
            str(path), f"block file is {size} bytes, the catalog says {geometry.file_size}"
        )
    return size


def check_block_header(path: Path, geometry: BlockGeometry, head: bytes) -> None:
    """Check a block file's header block ``head`` against the catalog's geometry."""
    if not head.startswith(BLOCK_MAGIC):
        raise CorruptFileError(str(path), "not a bandstore block file (bad magic)")
    try:
        header = json.loads(head[len(BLOCK_MAGIC) :].rstrip(b"\x00"))
    except ValueError as exc:
        raise CorruptFileError(str(path), "unreadable block file header") from exc
    found = header.get("format_version")
    if found != FORMAT_VERSION:
        raise FormatVersionError(str(path), found, FORMAT_VERSION)
    if header != geometry.header():
        raise CorruptFileError(str(path), f"block file header {header} does not match the catalog")


def mismatched_blocks(
    data_u8: np.ndarray, block_size: int, checksum_bytes: int, expected: np.ndarray
) -> np.ndarray:
    """Indices of the whole blocks of ``data_u8`` with a sector whose checksum differs from
    ``expected`` (the checksums of those blocks' sectors, in order)."""
    from bandstore.kernels.checksum import block_checksums

    spb = block_size // checksum_bytes
    actual = block_checksums(data_u8, checksum_bytes)
    bad = np.flatnonzero(actual != expected[: actual.size])
    return np.unique(bad // spb)


def verify_block_file(
    path: Path, geometry: BlockGeometry, checksums: np.ndarray, checksum_bytes: int
) -> None:
    """Re-read a finished block file and check every sector against ``checksums``."""
    # A sequential scan: through a plain mapping, which reads ahead (read_block_file's does not).
    check_block_file_size(path, geometry)
    buf = np.memmap(path, dtype=np.uint8, mode="r", shape=(geometry.file_size,))
    check_block_header(path, geometry, bytes(buf[: geometry.block_size]))
    bad = mismatched_blocks(
        np.asarray(buf[geometry.block_size :]), geometry.block_size, checksum_bytes, checksums
    )
    del buf
    if bad.size:
        raise CorruptFileError(str(path), f"block {int(bad[0])} does not match its checksum")


def write_layout_file(path: Path, slot_of_id: np.ndarray) -> int:
    """Write a layout (int64 id -> slot) as .npy, fsync it, and return its checksum.

    Written with plain writes (not through a map), so a full device is an OSError (ENOSPC),
    not a SIGBUS."""
    arr = np.ascontiguousarray(slot_of_id, dtype=np.int64)
    with open(path, "xb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return xxhash.xxh64_intdigest(arr.view(np.uint8).data)


def read_layout_file(path: Path, rows: int, checksum: int) -> np.ndarray:
    """Map a layout file read-only, checking length and checksum."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise CorruptFileError(str(path), "layout file is missing") from exc
    except ValueError as exc:
        raise CorruptFileError(str(path), f"unreadable layout file ({exc})") from exc
    if arr.dtype != np.int64 or arr.shape != (rows,):
        raise CorruptFileError(
            str(path), f"layout is {arr.dtype}{arr.shape}, expected int64 of {rows} rows"
        )
    actual = xxhash.xxh64_intdigest(np.ascontiguousarray(arr).view(np.uint8).data)
    if actual != checksum:
        raise CorruptFileError(str(path), "layout file does not match its checksum")
    return arr


def link_or_copy(src: Path, dst: Path) -> None:
    """Share an immutable file with a new version: a hard link, or a copy where links fail."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(src, dst)
        fsync_path(dst)


class ReaderLock:
    """A shared flock on a version directory, held while a store serves from it."""

    def __init__(self, version_dir: Path):
        self._fd: int | None = os.open(version_dir / LOCK_NAME, os.O_RDONLY)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def try_lock_exclusive(version_dir: Path) -> int | None:
    """Return an fd holding an exclusive lock on the version, or None while readers hold it."""
    try:
        fd = os.open(version_dir / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return -1  # a directory that never finished being created: nobody can read it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_version_dir(version_dir: Path, lock_fd: int | None) -> None:
    shutil.rmtree(version_dir, ignore_errors=True)
    if lock_fd is not None and lock_fd >= 0:
        os.close(lock_fd)
    fsync_path(version_dir.parent)


def list_version_dirs(root: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    base = root / VERSIONS_DIR
    if not base.is_dir():
        return out
    for p in base.iterdir():
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit():
            out[int(p.name[1:])] = p
    return out


@contextlib.contextmanager
def write_lock(root: Path) -> Iterator[None]:
    """Serialize writers of one store (across processes). A store that cannot be written
    (a read-only mount, no permission) raises ReadOnlyError here, before any write."""
    try:
        fd = os.open(root / WRITE_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ReadOnlyError(f"{root} cannot be written ({exc.strerror})") from exc
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def evict_from_page_cache(path: Path) -> None:
    """Drop a file's pages from the OS page cache (emulates a cold NVM tier)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def check_count(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int, or an InvalidArgumentError naming ``name`` unless it is an integer
    >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidArgumentError(
            f"{name} must be an integer >= {minimum}, got {value!r}", argument=name, value=value
        )
    return int(value)


def validate_layout(slot_of_id: Any, rows: int, rows_per_block: int) -> None:
    """Raise a bandstore error naming the problem unless slot_of_id is a layout for a table of
    `rows` rows: int64-compatible, length rows, non-negative, injective. (Holes are allowed.)"""
    rows = check_count(rows, "rows", 0)
    check_count(rows_per_block, "rows_per_block", 1)
    arr = np.asarray(slot_of_id)
    if arr.ndim != 1 or len(arr) != rows:
        raise InvalidShapeError(
            f"slot_of_id must be 1-D of length rows={rows}, got shape {arr.shape}",
            argument="slot_of_id",
            shape=arr.shape,
        )
    if arr.dtype.kind not in "iu":
        raise InvalidDtypeError(
            f"slot_of_id must hold integers, got dtype {arr.dtype}",
            argument="slot_of_id",
            dtype=arr.dtype,
        )
    if rows == 0:
        return
    neg = np.flatnonzero(arr < 0)
    if len(neg):
        raise InvalidArgumentError(
            f"slot_of_id[{neg[0]}] = {arr[neg[0]]} is negative",
            argument="slot_of_id",
            value=int(arr[neg[0]]),
        )
    s = np.sort(arr.astype(np.int64))
    dup = np.flatnonzero(s[1:] == s[:-1])
    if len(dup):
        slot = int(s[dup[0]])
        ids = np.flatnonzero(arr == slot)[:2].tolist()
        raise InvalidArgumentError(
            f"slot {slot} is given to more than one id (ids {ids}): a layout must be injective",
            argument="slot_of_id",
            value=slot,
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def check_geometry(g: BlockGeometry, block_size: int, where: str) -> None:
    """Raise CorruptFileError unless ``g`` (from the catalog, matched by the block file's
    header) is a geometry this code can serve without reading or writing out of bounds: a
    known codec, ``row_bytes`` of that codec and ``dim``, the store's block size,
    ``rows_per_block = block_size // row_bytes >= 1``, and blocks enough for every row."""
    from bandstore.storage.codecs import CODECS, row_bytes

    fields = (g.rows, g.dim, g.row_bytes, g.rows_per_block, g.n_blocks, g.block_size)
    if not all(_is_int(v) for v in fields) or min(fields) < 0 or g.rows < 1 or g.dim < 1:
        raise CorruptFileError(where, f"bad table geometry {g}")
    if g.codec not in CODECS:
        raise CorruptFileError(where, f"unknown codec {g.codec!r} (known: {list(CODECS)})")
    if g.block_size != block_size:
        raise CorruptFileError(
            where, f"block size {g.block_size} is not the store's block size {block_size}"
        )
    expected = row_bytes(g.codec, g.dim)
    if g.row_bytes != expected:
        raise CorruptFileError(
            where, f"row_bytes {g.row_bytes} is not {expected} (a {g.codec} row of dim {g.dim})"
        )
    if g.rows_per_block != g.block_size // g.row_bytes or g.rows_per_block < 1:
        raise CorruptFileError(
            where,
            f"rows_per_block {g.rows_per_block} is not {g.block_size // g.row_bytes} "
            f"({g.row_bytes}-byte rows in {g.block_size}-byte blocks)",
        )
    if g.n_blocks * g.rows_per_block < g.rows:
        raise CorruptFileError(
            where, f"{g.n_blocks} blocks of {g.rows_per_block} rows cannot hold {g.rows} rows"
        )


def check_file_name(name: Any, where: str) -> str:
    """``name`` if it is a plain file name (no directory part, not ``.``/``..``): files named
    by the catalog are read from the version directory and nowhere else."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or os.sep in name
        or "\x00" in name
        or os.path.basename(name) != name
    ):
        raise CorruptFileError(
            where, f"file name {name!r} is not a plain name inside the version directory"
        )
    return name


def invert_layout(slot_of_id: np.ndarray, out: np.ndarray, where: str) -> np.ndarray:
    """Fill ``out`` (``id_of_slot``, one entry per slot, caller-allocated) from a layout read
    from disk, checking it once: every slot in range and given to one id only. Raise
    CorruptFileError naming the first problem (a layout with -1, an out-of-range or a shared
    slot would serve wrong rows silently)."""
    n_slots = out.shape[0]
    rows = slot_of_id.shape[0]
    out[:] = -1
    if rows == 0:
        return out
    lo, hi = int(slot_of_id.min()), int(slot_of_id.max())
    if lo < 0 or hi >= n_slots:
        bad = int(np.flatnonzero((slot_of_id < 0) | (slot_of_id >= n_slots))[0])
        raise CorruptFileError(
            where,
            f"layout gives id {bad} slot {int(slot_of_id[bad])}, outside 0..{n_slots - 1}",
        )
    out[slot_of_id] = np.arange(rows, dtype=out.dtype)
    if int(np.count_nonzero(out >= 0)) != rows:  # fewer filled slots than ids: a shared slot
        owner = out[slot_of_id]
        bad = int(np.flatnonzero(owner != np.arange(rows))[0])
        raise CorruptFileError(
            where, f"layout gives slot {int(slot_of_id[bad])} to more than one id (id {bad})"
        )
    return out


def map_random(path: str | os.PathLike, size: int) -> np.ndarray:
    """``path`` mapped read-only as uint8, advised ``MADV_RANDOM`` (no readahead)."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    advice = getattr(mmap, "MADV_RANDOM", None)
    if advice is not None:
        mm.madvise(advice)
    return np.frombuffer(mm, dtype=np.uint8)  # the array keeps the mapping alive
