"""Large DRAM arrays on transparent huge pages.

Lookups read decoded rows, slot indexes, layouts and checksums at random. With 4 KB pages
every such read of an array beyond the TLB's reach (a few MB) also walks the page tables,
which on a virtual machine (nested paging) costs more than the read itself: pooling random
rows of a 32 MiB-1 GiB float32 table was 1.4-1.6x faster on 2 MB pages than on 4 KB ones on
the benchmark VM (``benchmarks/bench_huge_pages.py``). Arrays of at least
``HUGE_PAGE_MIN_BYTES`` are therefore allocated from an anonymous mapping advised
``MADV_HUGEPAGE`` (Linux's transparent huge pages in their default ``madvise`` mode); where
the advice is not available they are still correct, on ordinary pages.

The arrays are ordinary numpy arrays (the mapping stays alive as their buffer), zero-filled
by the kernel as their pages are first touched.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

#: Arrays smaller than one huge page gain nothing from the advice.
HUGE_PAGE_MIN_BYTES = 2 << 20
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def _mapped(shape: Any, dtype: np.dtype) -> np.ndarray | None:
    """A zero-filled array on huge pages, or None when it is small (or the platform has no
    anonymous mappings, as on Windows): then numpy's own allocation serves."""
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if nbytes < HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MAP_ANONYMOUS"):
        return None
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if _MADV_HUGEPAGE is not None:
        try:
            buf.madvise(_MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: ordinary pages
            pass
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def zeros(shape: Any, dtype: Any) -> np.ndarray:
    """``np.zeros(shape, dtype)``, on huge pages when it is large."""
    out = _mapped(shape, np.dtype(dtype))
    return np.zeros(shape, dtype=dtype) if out is None else out


def full(shape: Any, value: Any, dtype: Any) -> np.ndarray:
    """``np.full(shape, value, dtype)``, on huge pages when it is large."""
    out = _mapped(shape, np.dtype(dtype))
    if out is None:
        return np.full(shape, value, dtype=dtype)
    if value != 0:  # (the mapping's pages are zero already)
        out.fill(value)
    return out


def copy(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``array``, on huge pages when it is large."""
    out = _mapped(array.shape, array.dtype)
    if out is None:
        return np.array(array, order="C", copy=True)
    out[...] = array
    return out
