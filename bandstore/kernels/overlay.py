"""Kernels of the update overlay: rows updated since the served version, in front of it.

The overlay of a table is a set of ids with their current rows, decoded (float32) in an
append-only arena; ``index`` is a bitmap over the table's rows with running counts
(``kernels.bits``: the rank of a held id is its slot) and ``pos[slot]`` the arena row.

A request is served in two parts, as a split table's are: ``_overlay_probe`` finds each id's
slot (one bitmap line per id); if any is held, ``_overlay_select`` writes the other ids as a
sub-request that the table's own strategy serves (pooled with ``MODE_SUM`` for mean), and
``_overlay_merge`` pools the held rows into that part's output bag by bag, as
``kernels.resident._combine_parts`` combines parts (skipping an empty part for max and copy,
dividing a mean by the bag's total rows).

Same rules as every kernel: contiguous arrays, caller-allocated outputs, never raise.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bandstore.kernels.bits import _pinned_slot, _popcount
from bandstore.kernels.cache import (
    MODE_COPY,
    MODE_MAX,
    MODE_MEAN,
    STAT_HITS,
    STAT_LOOKUPS,
)


@njit(nogil=True, cache=True)
def _overlay_probe(ids, padding_idx, index, slots):
    """``slots[i]``: the overlay slot of ``ids[i]`` (-1: not held, or padding); returns how
    many ids are held."""
    hits = 0
    for i in range(ids.shape[0]):
        r = ids[i]
        s = _pinned_slot(index, r)
        if r == padding_idx:
            s = -1
        slots[i] = s
        hits += np.int64(s >= 0)
    return hits


@njit(nogil=True, cache=True)
def _overlay_select(ids, offsets, weights, padding_idx, slots, sub_ids, sub_off, sub_w, base_n):
    """Write the ids not held (``slots[i] < 0``) and not padding as a sub-request; return
    their number. ``sub_off`` (n_bags + 1) are its bag offsets, ``base_n[b]`` its rows in bag
    ``b``; ``sub_w`` is filled when weights are given (else it may be empty)."""
    n_bags = offsets.shape[0] - 1
    has_weights = weights.shape[0] > 0
    m = 0
    sub_off[0] = 0
    for b in range(n_bags):
        for i in range(offsets[b], offsets[b + 1]):
            r = ids[i]
            if slots[i] >= 0 or r == padding_idx:
                continue
            sub_ids[m] = r
            if has_weights:
                sub_w[m] = weights[i]
            m += 1
        sub_off[b + 1] = m
        base_n[b] = m - sub_off[b]
    return m


@njit(nogil=True, cache=True)
def _overlay_merge(offsets, weights, mode, slots, pos, data, base_n, out, stats):
    """Pool the held rows (``data[pos[slots[i]]]``) into ``out``, which holds the other part's
    bags (summed for mean; a bag with ``base_n[b] == 0`` rows there is ignored for max and
    copy); then divide mean bags by their total rows. Every held row is a lookup and a hit."""
    n_bags = offsets.shape[0] - 1
    has_weights = weights.shape[0] > 0
    dim = data.shape[1]
    held = 0
    for b in range(n_bags):
        cnt = base_n[b]
        for i in range(offsets[b], offsets[b + 1]):
            s = slots[i]
            if s < 0:
                continue
            r = pos[s]
            if mode == MODE_COPY or mode == MODE_MAX:
                if cnt == 0 or mode == MODE_COPY:
                    for d in range(dim):
                        out[b, d] = data[r, d]
                else:
                    for d in range(dim):
                        v = data[r, d]
                        if v > out[b, d]:
                            out[b, d] = v
            else:
                w = weights[i] if has_weights else np.float32(1.0)
                for d in range(dim):
                    out[b, d] += w * data[r, d]
            cnt += 1
            held += 1
        if mode == MODE_MEAN and cnt > 1:
            inv = np.float32(1.0) / np.float32(cnt)
            for d in range(dim):
                out[b, d] *= inv
    stats[STAT_LOOKUPS] += held
    stats[STAT_HITS] += held


@njit(nogil=True, cache=True)
def _overlay_index(old, new_ids, out):
    """``out``: the index ``old`` (``kernels.bits`` form) with ``new_ids`` added."""
    words = out.shape[0]
    for w in range(words):
        out[w, 0] = old[w, 0]
    for k in range(new_ids.shape[0]):
        r = new_ids[k]
        out[r >> 6, 0] |= np.int64(1) << (r & 63)
    before = 0
    for w in range(words):
        out[w, 1] = before
        before += _popcount(out[w, 0])


@njit(nogil=True, cache=True)
def _merge_ids(old_ids, old_pos, new_ids, start, out_ids, out_pos):
    """Merge ascending distinct ``new_ids`` (arena rows ``start``, ``start + 1``, ...) into
    ascending distinct ``old_ids`` (rows ``old_pos``): ``out_ids`` / ``out_pos`` (room for
    both) get the union in order, a new id's row replacing an old one's; returns its size."""
    i = 0
    j = 0
    k = 0
    n_old = old_ids.shape[0]
    n_new = new_ids.shape[0]
    while i < n_old or j < n_new:
        if j >= n_new or (i < n_old and old_ids[i] < new_ids[j]):
            out_ids[k] = old_ids[i]
            out_pos[k] = old_pos[i]
            i += 1
        else:
            if i < n_old and old_ids[i] == new_ids[j]:
                i += 1
            out_ids[k] = new_ids[j]
            out_pos[k] = start + j
            j += 1
        k += 1
    return k
