"""Kernels of the planner's strategies other than ``cached`` (which is ``kernels.cache``).

- ``_gather_pool_encoded``: pool rows of a DRAM-resident table kept in its codec (no cache
  probe, no slot indirection): the ``resident`` strategy, and the one that pools a bag range of
  a split resident table (``_gather_pool``: the same over float32 rows).
- ``_direct_batch``: no cache at all: the distinct blocks of the requested rows are read once
  each, in ascending block order, verified, decoded and pooled. It computes exactly what
  ``_cache_batch`` computes with a zero-capacity cache (same order, same counters), without
  the per-row slot index a cache needs: the ``direct`` strategy; with a frozen set of decoded
  rows in front (``kernels.bits``), the ``pinned`` one.
- ``_split_select``: the positions of one part of a table split by id hash (replicated hot
  rows go to the part that owns their bag range), as a sub-request.
- ``_combine_parts``: the parts' pooled bags combined in part order (deterministic, so a
  split table gives the same result whatever the thread timing).

Same rules as every kernel: contiguous arrays, caller-allocated outputs, never raise.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bandstore.kernels.bits import _pinned_slot
from bandstore.kernels.cache import (
    MODE_MAX,
    MODE_MEAN,
    NEVER,
    STAT_BLOCKS_READ,
    STAT_BYTES_READ,
    STAT_HITS,
    STAT_LOOKUPS,
    STAT_MISSES,
    STAT_USEFUL_BYTES,
    STATUS_CORRUPT_BLOCK,
    STATUS_OK,
    _divide_means,
    _pool_into,
    _prefetch_block_row,
    _sort_keys,
    _verify_sorted_blocks,
)
from bandstore.kernels.codec import _decode_row_into
from bandstore.kernels.pool import _pool_bags_codec, _pool_bags_f32
from bandstore.kernels.prefetch import _prefetch_at

#: Multiplier of the id hash that splits a table into parts (Knuth's multiplicative hash).
HASH_MULTIPLIER = 2654435761
#: How many ids ahead ``_split_select`` prefetches the replica bitmap.
SELECT_PREFETCH = 32


@njit(nogil=True, cache=True)
def _gather_pool(ids, offsets, weights, mode, padding_idx, out, data, stats):
    """Pool ``data[ids]`` into ``out`` bag by bag (bags ``offsets[b]:offsets[b + 1]``).

    ``data``: float32 (rows, dim), C-contiguous; ``out``: float32 (len(offsets) - 1, dim),
    C-contiguous (every bag is written: a bag of no row gets zeros). Every non-padding id
    counts as a lookup and a hit. Rows are added in the order the cache kernel adds them, by
    ``kernels.pool`` (vectorised per column chunk, rows prefetched ahead).
    """
    bag_n = np.empty(offsets.shape[0] - 1, dtype=np.int64)
    lookups = _pool_bags_f32(data, ids, weights, offsets, padding_idx, mode, out, bag_n, True)
    stats[STAT_LOOKUPS] += lookups
    stats[STAT_HITS] += lookups


@njit(nogil=True, cache=True)
def _gather_pool_encoded(ids, offsets, weights, mode, padding_idx, out, data, codec, stats):
    """``_gather_pool`` over rows kept in their codec: ``data`` as ``kernels.pool`` reads it
    (float32 (rows, dim); float16 as uint16 (rows, dim) or its bytes; int8 rowwise: the uint8
    rows of ``codecs.encode_rows``), decoded inside the pooling loop. Bit-identical to decoding the
    rows to float32 first and pooling those."""
    bag_n = np.empty(offsets.shape[0] - 1, dtype=np.int64)
    lookups = _pool_bags_codec(data, codec, ids, weights, offsets, padding_idx, mode, out, bag_n,
                               True)  # fmt: skip
    stats[STAT_LOOKUPS] += lookups
    stats[STAT_HITS] += lookups


@njit(nogil=True, cache=True)
def _direct_batch(
    ids,
    offsets,
    weights,
    mode,
    padding_idx,
    out,
    pinned_index,
    pinned_data,
    layout,
    rows_per_block,
    block_size,
    row_bytes,
    codec,
    dim,
    blocks_u8,
    checksums,
    checksum_bytes,
    verify,
    stats,
    error,
):
    """Serve a batch straight from the block file; return a status code.

    Equivalent to ``_cache_batch`` with an empty, zero-capacity cache: the distinct blocks of the
    requested rows are read once each in ascending order, every row is pooled from its block.
    ``pinned_index`` / ``pinned_data``: a frozen set of rows kept encoded (uint8 (k, row_bytes),
    decoded in the pooling loop; float32 (k, dim) for float32 too) (``kernels.bits``; an empty
    index for none, the ``direct`` strategy): their lookups are hits pooled from the data first,
    as ``_cache_batch`` pools its hits, and only the others read blocks (``pinned``).
    On a corrupt block ``error[0]`` is the block and nothing is written to ``stats``.
    """
    n_bags = offsets.shape[0] - 1
    n = ids.shape[0]
    has_weights = weights.shape[0] > 0
    bag_n = np.zeros(n_bags, dtype=np.int64)
    bag_of = np.empty(n, dtype=np.int64)  # the bag of each position, in one pass
    for b in range(n_bags):
        for i in range(offsets[b], offsets[b + 1]):
            bag_of[i] = b
    keys = np.empty(n, dtype=np.int64)
    m = 0
    n_pad = 0
    if pinned_index.shape[0] > 0:
        # Probe every id first (a tight loop keeps many index lines in flight: -1 a miss, -2
        # padding), then pool the hits bag by bag (``kernels.pool``, rows prefetched ahead).
        slots = np.empty(n, dtype=np.int64)
        for i in range(n):
            slots[i] = _pinned_slot(pinned_index, ids[i])
            if ids[i] == padding_idx:
                slots[i] = -2
                n_pad += 1
        for i in range(n):
            if slots[i] == -1:
                keys[m] = (layout[ids[i]] // rows_per_block) * n + i
                m += 1
        _pool_bags_codec(pinned_data, codec, slots, weights, offsets, -1, mode, out, bag_n,
                         False)  # fmt: skip
    else:
        for i in range(n):
            row_id = ids[i]
            if row_id == padding_idx:
                n_pad += 1
                continue
            keys[m] = (layout[row_id] // rows_per_block) * n + i
            m += 1
    lookups = n - n_pad
    if m == 0:
        stats[STAT_LOOKUPS] += lookups
        stats[STAT_HITS] += lookups
        if mode == MODE_MEAN:
            _divide_means(out, bag_n)
        return STATUS_OK
    keys = _sort_keys(keys[:m])
    # No admission here: only the requested rows' sectors are checked (the layout stands in
    # for the unused neighbour arrays).
    if verify and _verify_sorted_blocks(
        keys, n, ids, layout, layout, layout, NEVER, rows_per_block, row_bytes, blocks_u8,
        block_size, checksum_bytes, checksums, error,
    ):  # fmt: skip
        return STATUS_CORRUPT_BLOCK
    decoded = np.empty((rows_per_block, dim), dtype=np.float32)
    is_decoded = np.zeros(rows_per_block, dtype=np.bool_)
    blocks_read = 0
    useful_rows = 0
    k = 0
    while k < m:
        blk = keys[k] // n
        end = k
        while end < m and keys[end] // n == blk:
            end += 1
        blocks_read += 1
        base_slot = blk * rows_per_block
        is_decoded[:] = False
        for j in range(k, end):
            # Also after the checksum pass: a batch's sectors (thousands of 512 B) outgrow L2
            # before this pass comes back to them (without it, verifying cost 2x as much).
            _prefetch_block_row(keys, j, m, n, ids, layout, rows_per_block, block_size,
                                row_bytes, blocks_u8)  # fmt: skip
            i = keys[j] % n
            local = layout[ids[i]] - base_slot
            if not is_decoded[local]:
                offset = (blk + 1) * block_size + local * row_bytes
                _decode_row_into(blocks_u8, offset, codec, dim, decoded[local])
                is_decoded[local] = True
                useful_rows += 1
            w = weights[i] if has_weights else np.float32(1.0)
            _pool_into(out, bag_of[i], decoded[local], w, mode, bag_n)
        k = end
    stats[STAT_LOOKUPS] += lookups
    stats[STAT_HITS] += lookups - m
    stats[STAT_MISSES] += m
    stats[STAT_BLOCKS_READ] += blocks_read
    stats[STAT_BYTES_READ] += blocks_read * block_size
    stats[STAT_USEFUL_BYTES] += useful_rows * row_bytes
    if mode == MODE_MEAN:
        _divide_means(out, bag_n)
    return STATUS_OK


#: A split table's ids are owned in runs of this many (log2): 16 consecutive ids share one
#: 64-byte line of the parts' common slot index (int32), so two parts never write one line
#: (a line written by both cores would bounce between them on every admission).
OWNER_RUN_BITS = 4


@njit(nogil=True, cache=True)
def _part_of_id(row_id, parts):
    """The part of a split table that owns ``row_id``: a 16-bit multiplicative hash of its run
    of ``2**OWNER_RUN_BITS`` ids, scaled to ``[0, parts)`` by a multiply and a shift."""
    g = row_id >> OWNER_RUN_BITS
    x = (g ^ (g >> 31)) & 0x7FFFFFFF
    return ((((x * HASH_MULTIPLIER) & 0xFFFFFFFF) >> 16) * parts) >> 16


@njit(nogil=True, cache=True)
def _split_select(
    ids, offsets, weights, padding_idx, parts, part, hot_bits, sub_ids, sub_off, sub_w, bag_n
):
    """Write part ``part``'s positions of a request as a sub-request; return their number.

    A row is owned by part ``_part_of_id``, unless it is replicated (bit set in ``hot_bits``, a
    bitmap over the table's rows, empty for none): then bag ``b`` goes to part
    ``b * parts // n_bags``, so the hottest rows are spread over the parts by bag ranges.
    Padding ids are dropped. ``sub_off`` (n_bags + 1) are the sub-request's bag offsets,
    ``bag_n[b]`` the number of its rows in bag ``b``; ``sub_w`` is filled when weights are given.
    ``sub_ids`` (and ``sub_w``) need one spare entry beyond the request's ids: the loop writes
    every id and advances past the ones this part keeps (no branch to mispredict).
    """
    n_bags = offsets.shape[0] - 1
    n = ids.shape[0]
    has_weights = weights.shape[0] > 0
    has_hot = hot_bits.shape[0] > 0
    m = 0
    sub_off[0] = 0
    for b in range(n_bags):
        hot_part = (b * parts) // n_bags
        for i in range(offsets[b], offsets[b + 1]):
            if has_hot and i + SELECT_PREFETCH < n:
                # The bitmap spans the table (4M rows: 512 KB): once other tables have evicted
                # it from the CPU caches, its random reads took 2/3 of the pass.
                _prefetch_at(hot_bits, ids[i + SELECT_PREFETCH] >> 3)
            r = ids[i]
            p = _part_of_id(r, parts)
            if has_hot and (hot_bits[r >> 3] >> (r & 7)) & 1:
                p = hot_part
            keep = (p == part) & (r != padding_idx)
            sub_ids[m] = r
            if has_weights:
                sub_w[m] = weights[i]
            m += np.int64(keep)
        sub_off[b + 1] = m
        bag_n[b] = m - sub_off[b]
    return m


@njit(nogil=True, cache=True)
def _combine_parts(partials, bag_n, mode, out):
    """Combine the parts' pooled bags into ``out``, in part order.

    ``partials``: float32 (parts, n_bags, dim), each pooled with ``MODE_SUM`` for sum and mean,
    ``MODE_MAX`` for max, ``MODE_COPY`` for copy; ``bag_n``: int64 (parts, n_bags) rows per
    part and bag. Parts with no row in a bag are skipped (so max and copy are exact); mean
    divides the summed bag by its total rows as the single-part kernels do.
    """
    parts = partials.shape[0]
    dim = out.shape[1]
    for b in range(out.shape[0]):
        total = 0
        o = out[b]
        for j in range(parts):
            c = bag_n[j, b]
            if c == 0:
                continue
            p = partials[j, b]
            if total == 0:
                for d in range(dim):
                    o[d] = p[d]
            elif mode == MODE_MAX:
                for d in range(dim):
                    if p[d] > o[d]:
                        o[d] = p[d]
            else:
                for d in range(dim):
                    o[d] += p[d]
            total += c
        if mode == MODE_MEAN and total > 1:
            inv = np.float32(1.0) / np.float32(total)
            for d in range(dim):
                o[d] *= inv


@njit(nogil=True, cache=True)
def _all_in_range(a, lo, hi):
    """Whether every value of the int64 array ``a`` is in ``[lo, hi)`` (a validation fast path)."""
    ok = True
    for i in range(a.shape[0]):
        v = a[i]
        ok &= (v >= lo) & (v < hi)
    return ok


@njit(nogil=True, cache=True)
def _checked_bags(ids, offsets, rows, out_offsets):
    """The common case of a bag request's validation in one pass: whether every id is in
    ``[0, rows)`` and ``offsets`` start at 0, never decrease and stay within ``ids``; if so,
    ``out_offsets`` (one longer) holds them with ``len(ids)`` appended. On False the caller
    finds which rule failed (this path only has to be fast: a call of many small tables paid
    several numpy operations per table here)."""
    n = ids.shape[0]
    ok = _all_in_range(ids, 0, rows)
    k = offsets.shape[0]
    prev = 0
    if k:
        ok &= offsets[0] == 0
    for i in range(k):
        v = offsets[i]
        ok &= (v >= prev) & (v <= n)
        prev = v
        out_offsets[i] = v
    out_offsets[k] = n
    return ok


@njit(nogil=True, cache=True)
def _non_decreasing(a):
    """Whether the int64 array ``a`` never decreases (a validation fast path)."""
    ok = True
    for i in range(1, a.shape[0]):
        ok &= a[i] >= a[i - 1]
    return ok
