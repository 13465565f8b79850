"""The slow tier as it is really read: how a store's block files reach the kernels.

Two ways, chosen per open store (``bandstore.open(path, io=...)``):

- ``mmap`` (the default; for persistent memory, CXL or DAX mappings, and for any file when the
  page cache may keep what it reads): the block file is mapped read-only and advised
  ``MADV_RANDOM``, so a missed block costs about one block of device reads. A plain mapping
  reads ahead: on the benchmark VM a random 4 KB block of a cold 1 GB file pulled 53.7 KB from
  the device, and the page cache then held far more of the table than the DRAM budget.
  Device bytes are measured per kernel call from the calling thread's own I/O accounting
  (``/proc/thread-self/io`` ``read_bytes``: the bytes its page faults made the block layer
  read); exact for that thread, but they count any file the kernel read on that thread
  during the call (only the block file, and the layout file when it is not yet cached).
- ``direct`` (for NVMe): no mapping. Before each kernel call, a probe kernel finds the distinct
  blocks the batch will read (``kernels.tier``); they are read with ``O_DIRECT`` (the page cache
  holds none of them) into a per-call staging area laid out like the file: an anonymous
  private mapping of the file's size, virtual except for the pages of the blocks read, unmapped
  after the call. Then the unchanged kernel runs on it as its ``blocks_u8``: the same code
  decodes and verifies the same bytes, so the results are the same bit for bit and a corrupt
  block raises the same error. Reads go out together: merged ranges of adjacent blocks dealt
  to a few threads (``os.preadv`` releases the GIL), so several are in flight on the device.
  Device bytes are counted per read (exact).

Filesystems that refuse ``O_DIRECT`` (tmpfs on older kernels, some FUSE and network ones) make
``io="direct"`` raise :class:`~bandstore.errors.DirectIOUnsupportedError` at open, naming the
filesystem: no silent fallback, since a fallback through the page cache is exactly what
``direct`` promises not to do.

``page_cache_bytes`` reports how much of a file the page cache holds (``mincore`` on a fresh
mapping, which faults nothing in): ``Store.memory()`` and the benchmarks use it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import CorruptFileError, DirectIOUnsupportedError, InvalidArgumentError
from bandstore.storage import blockfile

#: The ways a store may read its block files.
IO_MODES = ("mmap", "direct")
#: O_DIRECT transfers are aligned to this (file offset, length and buffer address): a page,
#: which any device's logical block size divides.
DIRECT_ALIGN = 4096
#: Adjacent blocks are read in one request up to this many bytes.
MAX_READ_BYTES = 1 << 20
#: Threads issuing a batch's reads: this many requests are in flight on the device at once.
READ_THREADS = 8

_O_DIRECT = getattr(os, "O_DIRECT", 0)
_PAGE = mmap.PAGESIZE
_NO_BLOCKS = np.empty(0, dtype=np.int64)
_NO_BYTES = np.empty(0, dtype=np.uint8)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def check_io(io: Any) -> str:
    """``io`` if it names a way to read block files, else InvalidArgumentError."""
    if io not in IO_MODES:
        raise InvalidArgumentError(
            f"io must be one of {list(IO_MODES)}, got {io!r}", argument="io", value=io
        )
    return str(io)


def filesystem_of(path: str | os.PathLike) -> str:
    """The type of the filesystem holding ``path`` (``/proc/self/mounts``), or "unknown"."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def open_direct(path: str | os.PathLike) -> int:
    """A read-only ``O_DIRECT`` descriptor of ``path``; DirectIOUnsupportedError where refused."""
    if not _O_DIRECT:
        raise DirectIOUnsupportedError(str(path), filesystem_of(path), "no O_DIRECT on this OS")
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            raise DirectIOUnsupportedError(
                str(path), filesystem_of(path), f"open: {os.strerror(exc.errno)}"
            ) from exc
        raise


def direct_io_supported(directory: str | os.PathLike) -> bool:
    """Whether files in ``directory`` can be read with O_DIRECT (tries a small file)."""
    probe = Path(directory) / f".bandstore-odirect-{os.getpid()}-{threading.get_ident()}"
    try:
        probe.write_bytes(b"\0" * DIRECT_ALIGN)
        fd = open_direct(probe)
        try:
            buf = mmap.mmap(-1, DIRECT_ALIGN)
            os.preadv(fd, [buf], 0)
            buf.close()
        finally:
            os.close(fd)
        return True
    except (DirectIOUnsupportedError, OSError):
        return False
    finally:
        probe.unlink(missing_ok=True)


# ---- page cache residency (mincore) -----------------------------------------------------
_libc: Any = None


def _mincore() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc.mincore.restype = ctypes.c_int
    return _libc.mincore


def resident_bytes(array: np.ndarray) -> int:
    """Bytes of the pages under ``array`` (a page-aligned mapping) that are in memory."""
    size = int(array.nbytes)
    if size == 0:
        return 0
    addr = int(array.ctypes.data)
    base = addr - addr % _PAGE
    length = size + (addr - base)
    vec = np.zeros(-(-length // _PAGE), dtype=np.uint8)
    if _mincore()(base, length, vec.ctypes.data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mincore: {os.strerror(e)}")
    return int(np.count_nonzero(vec & 1)) * _PAGE


def page_cache_bytes(path: str | os.PathLike) -> int:
    """Bytes of ``path`` the OS page cache holds (``mincore`` on a fresh read-only mapping,
    which faults nothing in), like util-linux ``fincore``."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        arr = np.frombuffer(mm, dtype=np.uint8)
        n = resident_bytes(arr)
        del arr
    finally:
        mm.close()
    return n  # whole pages, as fincore counts them: a file's last page takes a whole one


# ---- per-thread device reads ------------------------------------------------------------
_tls = threading.local()


class _ThreadIoFile:
    """This thread's ``/proc/thread-self/io`` (resolved at open), closed with the thread's
    locals."""

    def __init__(self) -> None:
        try:
            self.fd = os.open("/proc/thread-self/io", os.O_RDONLY)
        except OSError:
            self.fd = -1

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def thread_read_bytes() -> int:
    """Bytes the calling thread has made the block layer read (``/proc/thread-self/io``
    ``read_bytes``); -1 where the kernel does not account them."""
    f = getattr(_tls, "io_file", None)
    if f is None:
        f = _tls.io_file = _ThreadIoFile()
    fd = f.fd
    if fd < 0:
        return -1
    text = os.pread(fd, 512, 0)
    i = text.find(b"\nread_bytes: ")
    if i < 0:
        return -1
    j = text.index(b"\n", i + 1)
    return int(text[i + 13 : j])


# ---- O_DIRECT reads ---------------------------------------------------------------------
def _read_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(READ_THREADS - 1, thread_name_prefix="bandstore-io")
        return _pool


def _read_some(fd: int, view: memoryview, base: int, starts: list, ends: list, path: str,
               file_bytes: int, take: Callable[[], int]) -> int:  # fmt: skip
    """Read ranges ``take()`` hands out until they run out; return the bytes read."""
    n, r = 0, len(starts)
    while True:
        i = take()
        if i >= r:
            return n
        a, b = starts[i], ends[i]
        want = min(b, file_bytes) - a
        got = os.preadv(fd, [view[a - base : b - base]], a)
        if got < want:
            raise CorruptFileError(path, f"short read at byte {a}: {got} of {want} bytes")
        n += got


def read_ranges(fd: int, view: memoryview, base: int, starts: np.ndarray, ends: np.ndarray,
                path: str, file_bytes: int) -> int:  # fmt: skip
    """Read file ranges ``[starts[i], ends[i])`` into ``view`` (which holds file byte ``base``
    at 0) with several requests in flight; return the bytes the device delivered.

    The threads take the next range from a shared counter as each read completes (not fixed
    shares: a slow read would otherwise leave its thread's share behind the others')."""
    s, e = starts.tolist(), ends.tolist()
    r = len(s)
    if r == 0:
        return 0
    take = itertools.count().__next__  # atomic under the GIL
    w = min(READ_THREADS, r)
    if w == 1:
        return _read_some(fd, view, base, s, e, path, file_bytes, take)
    pool = _read_pool()
    futures = [
        pool.submit(_read_some, fd, view, base, s, e, path, file_bytes, take) for _ in range(1, w)
    ]
    try:
        n = _read_some(fd, view, base, s, e, path, file_bytes, take)  # this thread too
    finally:
        done = [f.exception() for f in futures]  # every read is over before the buffer goes
    for exc in done:
        if exc is not None:
            raise exc
    return n + sum(f.result() for f in futures)


class Staging:
    """An anonymous private mapping laid out like a block file: only the pages written are
    ever backed by memory, and ``close`` returns them."""

    def __init__(self, size: int):
        self.size = -(-max(size, 1) // DIRECT_ALIGN) * DIRECT_ALIGN
        self.mm = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.array = np.frombuffer(self.mm, dtype=np.uint8)

    def close(self) -> None:
        self.array = None  # type: ignore[assignment]
        try:
            self.mm.madvise(mmap.MADV_DONTNEED)  # the pages go now, even if a view lingers
        except (ValueError, OSError):
            pass
        try:
            self.mm.close()
        except BufferError:
            pass  # a caller still holds a view: the mapping goes with it


class _Batch:
    """The context of one kernel call's reads (``BlockSource.batch``)."""

    __slots__ = ("source", "probe", "staging", "before", "device_bytes", "blocks")

    def __init__(self, source: BlockSource, probe: Callable[[], np.ndarray] | None):
        self.source = source
        self.probe = probe
        self.staging: Staging | None = None
        self.before = -1
        self.device_bytes = 0
        self.blocks = 0

    def __enter__(self) -> np.ndarray:
        return self.source._enter(self)

    def __exit__(self, *exc: object) -> None:
        self.source._exit(self)


class BlockSource:
    """How one table's block file is read (``io`` ``mmap`` or ``direct``); see the module."""

    io = ""

    def __init__(self, path: Path, file_bytes: int, block_size: int):
        self.path = Path(path)
        self.file_bytes = int(file_bytes)
        self.block_size = int(block_size)

    def batch(self, probe: Callable[[], np.ndarray] | None = None) -> _Batch:
        """``with source.batch(probe) as blocks_u8:`` run a kernel on ``blocks_u8``, a buffer
        laid out like the file holding at least the blocks ``probe()`` returns (ascending
        distinct data block numbers; called only by ``direct``); afterwards the context's
        ``device_bytes`` is what the device read for it."""
        return _Batch(self, probe)

    def data(self, b0: int, b1: int) -> np.ndarray:
        """The bytes of data blocks ``[b0, b1)``, contiguous."""
        raise NotImplementedError

    def page_cache_bytes(self) -> int:
        """Bytes of the block file the OS page cache holds."""
        return page_cache_bytes(self.path)

    def drop_page_cache(self) -> None:
        """Evict the block file from the OS page cache (``POSIX_FADV_DONTNEED``)."""
        from bandstore.storage.blockfile import evict_from_page_cache

        evict_from_page_cache(self.path)

    def close(self) -> None:
        pass

    def _enter(self, b: _Batch) -> np.ndarray:
        raise NotImplementedError

    def _exit(self, b: _Batch) -> None:
        raise NotImplementedError


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The mmap object under an array made by ``np.frombuffer`` (None for any other)."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


class MmapSource(BlockSource):
    """The block file mapped read-only, advised random access."""

    io = "mmap"

    def __init__(self, path: Path, buf: np.ndarray, block_size: int):
        super().__init__(path, buf.shape[0], block_size)
        self.buf = buf

    def data(self, b0: int, b1: int) -> np.ndarray:
        a, b = (b0 + 1) * self.block_size, (b1 + 1) * self.block_size
        mm = _mapping_of(self.buf)
        if mm is not None and b > a:
            # A scan (verify, residency): ask for the range now, as readahead would have.
            lo = a // _PAGE * _PAGE
            mm.madvise(mmap.MADV_WILLNEED, lo, b - lo)
        return np.asarray(self.buf[a:b])

    def close(self) -> None:
        self.buf = None  # type: ignore[assignment]  # in-flight calls hold their own reference

    def drop_page_cache(self) -> None:
        # Pages mapped into this process survive POSIX_FADV_DONTNEED: unmap them first.
        mm = _mapping_of(self.buf) if self.buf is not None else None
        if mm is not None:
            mm.madvise(mmap.MADV_DONTNEED)
        super().drop_page_cache()

    def _enter(self, b: _Batch) -> np.ndarray:
        b.before = thread_read_bytes()
        return self.buf

    def _exit(self, b: _Batch) -> None:
        if b.before >= 0:
            b.device_bytes = max(0, thread_read_bytes() - b.before)


class DirectSource(BlockSource):
    """The block file read with O_DIRECT into per-call staging areas."""

    io = "direct"

    def __init__(self, path: Path, file_bytes: int, block_size: int):
        super().__init__(path, file_bytes, block_size)
        self.fd = open_direct(path)
        self.lock = threading.Lock()
        self.total_device_bytes = 0  # every read, setup included
        self.read_seconds = 0.0  # wall time spent in block reads (for the benchmarks' breakdown)

    def header(self) -> bytes:
        """The header block's bytes (read with O_DIRECT, so it is not cached either)."""
        n = -(-self.block_size // DIRECT_ALIGN) * DIRECT_ALIGN
        st = Staging(n)
        try:
            got = os.preadv(self.fd, [memoryview(st.mm)[:n]], 0)
            head = bytes(st.mm[: min(got, self.block_size)])
        finally:
            st.close()
        return head

    def read_blocks(self, blocks: np.ndarray, staging: Staging) -> int:
        """Read data blocks ``blocks`` (ascending, distinct) into ``staging`` at their file
        offsets; return the device bytes."""
        from bandstore.kernels.tier import _read_ranges

        k = int(blocks.shape[0])
        if k == 0:
            return 0
        starts = np.empty(k, dtype=np.int64)
        ends = np.empty(k, dtype=np.int64)
        r = _read_ranges(blocks, k, self.block_size, DIRECT_ALIGN, self.file_bytes,
                         MAX_READ_BYTES, starts, ends)  # fmt: skip
        t0 = time.perf_counter()
        n = read_ranges(self.fd, memoryview(staging.mm), 0, starts[:r], ends[:r], str(self.path),
                        self.file_bytes)  # fmt: skip
        with self.lock:
            self.total_device_bytes += n
            self.read_seconds += time.perf_counter() - t0
        return n

    def data(self, b0: int, b1: int) -> np.ndarray:
        bs = self.block_size
        a, b = (b0 + 1) * bs, (b1 + 1) * bs
        lo = a // DIRECT_ALIGN * DIRECT_ALIGN
        hi = -(-b // DIRECT_ALIGN) * DIRECT_ALIGN
        st = Staging(hi - lo)
        step = MAX_READ_BYTES
        starts = np.arange(lo, hi, step, dtype=np.int64)
        ends = np.minimum(starts + step, hi)
        n = read_ranges(self.fd, memoryview(st.mm), lo, starts, ends, str(self.path),
                        self.file_bytes)  # fmt: skip
        with self.lock:
            self.total_device_bytes += n
        return st.array[a - lo : b - lo]  # the array keeps the mapping alive

    def __del__(self) -> None:
        # Not in close(): calls in flight on a closed store still read through this fd.
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1

    def _enter(self, b: _Batch) -> np.ndarray:
        blocks = b.probe() if b.probe is not None else _NO_BLOCKS
        if blocks.shape[0] == 0:
            return _NO_BYTES  # every row served from DRAM: the kernel reads no block
        b.staging = Staging(self.file_bytes)
        try:
            b.device_bytes = self.read_blocks(blocks, b.staging)
        except BaseException:
            b.staging.close()
            raise
        b.blocks = int(blocks.shape[0])
        return b.staging.array

    def _exit(self, b: _Batch) -> None:
        if b.staging is not None:
            b.staging.close()
            b.staging = None


def open_source(path: Path, geometry: Any, io: str) -> BlockSource:
    """The source of a block file of ``geometry`` (``blockfile.BlockGeometry``) read as ``io``;
    its size and header are checked against the geometry either way."""
    check_io(io)
    if io == "direct":
        blockfile.check_block_file_size(path, geometry)
        src = DirectSource(path, geometry.file_size, geometry.block_size)
        blockfile.check_block_header(path, geometry, src.header())
        return src
    return MmapSource(path, blockfile.read_block_file(path, geometry), geometry.block_size)
