"""DRAM arrays on huge pages (bandstore.storage.dram): numpy semantics, whatever the pages."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import bandstore
from bandstore.storage import dram


def _mapped(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is an anonymous mapping of dram's (not numpy's allocator)."""
    obj = a
    while obj is not None and not isinstance(obj, mmap.mmap):
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
    return obj is not None


LARGE = dram.HUGE_PAGE_MIN_BYTES // 4 + 3  # int32 / float32 elements past one huge page


@pytest.mark.parametrize("n", [10, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.int64, np.uint8])
def test_arrays_are_numpy_arrays_with_numpy_values(n, dtype):
    z = dram.zeros((n, 3), dtype)
    assert z.shape == (n, 3) and z.dtype == dtype and z.flags.c_contiguous and z.flags.writeable
    assert not z.any()
    f = dram.full(n, -1 if np.dtype(dtype).kind in "if" else 7, dtype)
    assert np.array_equal(f, np.full(n, f[0], dtype=dtype)) and f[0] in (-1, 7)
    src = np.arange(n, dtype=dtype)
    c = dram.copy(src)
    assert np.array_equal(c, src) and not np.shares_memory(c, src)
    c[0] = 1
    assert src[0] == 0  # a copy, not a view
    # Large ones come from dram's own mapping; small ones from numpy.
    large = z.nbytes >= dram.HUGE_PAGE_MIN_BYTES
    assert _mapped(z) == large and _mapped(f) == (f.nbytes >= dram.HUGE_PAGE_MIN_BYTES)


def test_the_store_keeps_its_large_random_read_arrays_on_them(tmp_path):
    rows = dram.HUGE_PAGE_MIN_BYTES // 4 + 1  # its slot index (int32 per row) is large
    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, 2)).astype(np.float32)
    with bandstore.create(tmp_path / "s") as s:
        s.add_table("t", w, progress=False)
    with bandstore.open(tmp_path / "s", cache_bytes=1 << 20) as s:
        t = s._tables["t"]
        assert _mapped(t.cache.slot_of_id) and _mapped(t.inverse_layout)
        ids = rng.integers(0, rows, 1000)
        np.testing.assert_array_equal(s.lookup("t", ids), w[ids])
        np.testing.assert_array_equal(s.lookup("t", ids), w[ids])  # now from the cache


def test_without_the_advice_or_anonymous_mappings_arrays_are_still_right(monkeypatch):
    monkeypatch.setattr(dram, "_MADV_HUGEPAGE", None)  # a kernel or Python without THP advice
    a = dram.full(LARGE, 3, np.int32)
    assert _mapped(a) and (a == 3).all()
    monkeypatch.delattr(mmap, "MAP_ANONYMOUS")  # a platform without anonymous mappings
    b = dram.full(LARGE, 3, np.int32)
    assert not _mapped(b) and (b == 3).all()
