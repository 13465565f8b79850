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
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from bandstore.errors import CorruptFileError, FormatVersionError

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
    page cache. ``finish()`` computes the per-block checksums and fsyncs the file.
    """

    def __init__(self, path: Path, geometry: BlockGeometry):
        self.path = Path(path)
        self.geometry = geometry
        with open(self.path, "xb") as f:
            f.truncate(geometry.file_size)
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


def read_block_file(path: Path, geometry: BlockGeometry) -> np.ndarray:
    """Map a block file read-only, advised random access (``bandstore.tier.map_random``: a
    missed block costs one block of device reads, not a readahead window), and check its
    header against the catalog's geometry."""
    from bandstore.tier import map_random

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
    """Write a layout (int64 id -> slot) as .npy, fsync it, and return its checksum."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=slot_of_id.shape)
    arr[:] = slot_of_id
    arr.flush()
    checksum = xxhash.xxh64_intdigest(memoryview(np.ascontiguousarray(arr)).cast("B"))
    del arr
    fsync_path(path)
    return checksum


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
    actual = xxhash.xxh64_intdigest(memoryview(np.ascontiguousarray(arr)).cast("B"))
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
    out = {}
    base = root / VERSIONS_DIR
    if not base.is_dir():
        return out
    for p in base.iterdir():
        if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit():
            out[int(p.name[1:])] = p
    return out


@contextlib.contextmanager
def write_lock(root: Path) -> Iterator[None]:
    """Serialize writers of one store (across processes)."""
    fd = os.open(root / WRITE_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
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
