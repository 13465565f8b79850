"""Probe kernels of the ``direct`` io (``bandstore.storage.tier``): which blocks a batch will read.

A kernel reads only the blocks of the rows it cannot serve from DRAM. With ``io="direct"`` those
blocks are read with ``O_DIRECT`` before the kernel runs, so these probes find them first, with
the same rule the serving kernel applies: a cached id with a slot (``slot_of_id >= 0``) or a
pinned id (in the bitmap index) is served from DRAM; every other non-padding id reads its block.

Same rules as every kernel: contiguous arrays, caller-allocated outputs, never raise.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bandstore.kernels.bits import _pinned_slot
from bandstore.kernels.cache import _sort_keys


@njit(nogil=True, cache=True)
def _distinct(blocks, m, out):
    """Write the distinct values of ``blocks[:m]`` ascending into ``out``; return how many."""
    if m == 0:
        return 0
    s = _sort_keys(blocks[:m])
    k = 0
    prev = -1
    for i in range(m):
        if s[i] != prev:
            out[k] = s[i]
            k += 1
            prev = s[i]
    return k


@njit(nogil=True, cache=True)
def _missed_blocks(ids, padding_idx, slot_of_id, layout, rows_per_block, out):
    """The distinct blocks (ascending, into ``out``, len >= len(ids)) of the non-padding ``ids``
    without a cache slot (``slot_of_id`` empty: every id); return how many."""
    n = ids.shape[0]
    blocks = np.empty(n, dtype=np.int64)
    probe = slot_of_id.shape[0] > 0
    m = 0
    for i in range(n):
        r = ids[i]
        if r == padding_idx:
            continue
        if probe and slot_of_id[r] >= 0:
            continue
        blocks[m] = layout[r] // rows_per_block
        m += 1
    return _distinct(blocks, m, out)


@njit(nogil=True, cache=True)
def _unpinned_blocks(ids, padding_idx, pinned_index, layout, rows_per_block, out):
    """As ``_missed_blocks`` for a frozen pinned set (``kernels.bits`` index; empty: none)."""
    n = ids.shape[0]
    blocks = np.empty(n, dtype=np.int64)
    probe = pinned_index.shape[0] > 0
    m = 0
    for i in range(n):
        r = ids[i]
        if r == padding_idx:
            continue
        if probe and _pinned_slot(pinned_index, r) >= 0:
            continue
        blocks[m] = layout[r] // rows_per_block
        m += 1
    return _distinct(blocks, m, out)


@njit(nogil=True, cache=True)
def _read_ranges(blocks, k, block_size, align, file_bytes, max_bytes, starts, ends):
    """The file byte ranges, ``align``-aligned and merged when they touch (up to ``max_bytes``
    a range), holding data blocks ``blocks[:k]`` (ascending); return how many (``starts`` and
    ``ends`` need ``k`` entries)."""
    r = 0
    for i in range(k):
        a = (blocks[i] + 1) * block_size
        b = a + block_size
        a = (a // align) * align
        b = min(((b + align - 1) // align) * align, ((file_bytes + align - 1) // align) * align)
        if r > 0 and a <= ends[r - 1]:
            if b <= ends[r - 1]:
                continue  # within the previous range (blocks smaller than ``align``)
            if b - starts[r - 1] <= max_bytes:
                ends[r - 1] = b
                continue
            a = ends[r - 1]  # a new range from where the previous one ends
        starts[r] = a
        ends[r] = b
        r += 1
    return r
