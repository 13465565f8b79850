"""Kernels of the update overlay: rows updated since the served version, in front of it.

A table's overlay keeps its updated rows decoded (float32) in an append-only arena. ``head``
(one int64 per table row, 0 = never updated) holds ``1 +`` the arena row of an id's newest
value and ``prev[row]`` the arena row of the value before it (-1: none). A state of the
overlay is the first ``used`` arena rows: it serves, for an id, the newest of its rows below
``used`` (walking ``prev`` from ``head``). The applier appends rows beyond every published
state's ``used`` and only then moves ``head`` (a later call, so its stores follow the rows'),
so one ``head`` serves every state at once and applying ``m`` rows costs ``O(m)``.

A request is served in two parts, as a split table's are: ``_overlay_probe`` finds each id's
arena row; if any is held, ``_overlay_select`` writes the other ids as a sub-request that the
table's own strategy serves (pooled with ``MODE_SUM`` for mean), and ``_overlay_merge`` pools
the held rows into that part's output bag by bag, as ``kernels.resident._combine_parts``
combines parts (skipping an empty part for max and copy, dividing a mean by the bag's total).

Same rules as every kernel: contiguous arrays, caller-allocated outputs, never raise.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bandstore.kernels.cache import (
    MODE_COPY,
    MODE_MAX,
    MODE_MEAN,
    STAT_HITS,
    STAT_LOOKUPS,
)


@njit(nogil=True, cache=True)
def _newest_below(head, prev, used, r):
    """The arena row of id ``r``'s newest value among the first ``used`` rows (-1: none)."""
    s = head[r] - 1
    while s >= used:
        s = prev[s]
    return s


@njit(nogil=True, cache=True)
def _overlay_probe(ids, padding_idx, head, prev, used, slots):
    """``slots[i]``: the arena row serving ``ids[i]`` in the state of ``used`` rows (-1: not
    updated, padding or out of range); returns how many ids are held."""
    hits = 0
    n_rows = head.shape[0]
    for i in range(ids.shape[0]):
        r = ids[i]
        s = -1
        if r != padding_idx and r >= 0 and r < n_rows:
            s = _newest_below(head, prev, used, r)
        slots[i] = s
        hits += np.int64(s >= 0)
    return hits


@njit(nogil=True, cache=True)
def _overlay_rows(start, head, prev, used, out):
    """``out[k]``: the arena row of id ``start + k`` in the state of ``used`` rows (-1: none)."""
    for k in range(out.shape[0]):
        out[k] = _newest_below(head, prev, used, start + k)


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
def _overlay_merge(offsets, weights, mode, slots, data, base_n, out, stats):
    """Pool the held rows (``data[slots[i]]``) into ``out``, which holds the other part's
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
            r = s
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
def _overlay_link(ids, head, prev, start):
    """Arena rows ``start + k`` hold new values of ``ids[k]`` (distinct): set their ``prev``
    (before ``_overlay_publish`` moves ``head``); returns how many ids had no value yet."""
    fresh = 0
    for k in range(ids.shape[0]):
        p = head[ids[k]] - 1
        prev[start + k] = p
        fresh += np.int64(p < 0)
    return fresh


@njit(nogil=True, cache=True)
def _overlay_publish(ids, head, start):
    """Point ``head`` of ``ids[k]`` at arena row ``start + k`` (after ``_overlay_link``)."""
    for k in range(ids.shape[0]):
        head[ids[k]] = start + k + 1


@njit(nogil=True, cache=True)
def _overlay_compact(head, prev, used, data, new_head, new_data):
    """Copy each id's newest row of the first ``used`` into ``new_data`` (zeroed ``new_head``
    pointing at them, no ``prev``); returns how many."""
    k = 0
    dim = data.shape[1]
    for r in range(head.shape[0]):
        s = _newest_below(head, prev, used, r)
        if s < 0:
            continue
        for d in range(dim):
            new_data[k, d] = data[s, d]
        new_head[r] = k + 1
        k += 1
    return k
