"""The DRAM cache policy and the pooled-lookup kernel built on it.

One implementation serves both the store (``with_data=True``: rows are pooled and their
encoded bytes copied into the cache) and the miniature cache simulations of ``bandstore.tune.sim``
(``with_data=False``: the same probes, admissions and evictions, no bytes moved). That is what
makes the simulator exact: it cannot drift from the store because it is the store's code.

Policy (see docs/ARCHITECTURE.md): a vector cache of ``capacity`` rows, kept encoded as the
block file stores them (``cache_data``: uint8 (capacity, row_bytes); float16 and int8 rows are
decoded inside the pooling loop, ``kernels.pool``, so a byte of cache holds 2x / ~3.5x the
float32 rows); slots
``[0, pinned)`` hold pinned rows and are never evicted; the rest is managed by CLOCK. A batch
probes every id first; the distinct blocks of the misses are then read once each in ascending
block order, serving the requested rows, admitting the block's other rows whose access count
reaches the threshold, then admitting the requested rows.

Kernels never raise: they return a status code and the Python layer raises.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bandstore.kernels.checksum import _xxh64
from bandstore.kernels.codec import _decode_row_into
from bandstore.kernels.pool import _copy_encoded, _pool_bags_codec
from bandstore.kernels.prefetch import _prefetch_at

# Pooling modes.
MODE_SUM = 0
MODE_MEAN = 1
MODE_MAX = 2
MODE_COPY = 3  # plain lookup: bag i is position i, the row is copied bit for bit

# Kernel status codes.
STATUS_OK = 0
STATUS_CORRUPT_BLOCK = 1

# Meta array of a cache state: [clock hand, filled slots, pinned slots, capacity].
META_HAND = 0
META_FILLED = 1
META_PINNED = 2
META_CAPACITY = 3

# Batch counters, in this order everywhere (stats, simulations).
STAT_LOOKUPS = 0
STAT_HITS = 1
STAT_MISSES = 2
STAT_BLOCKS_READ = 3
STAT_BYTES_READ = 4
STAT_USEFUL_BYTES = 5
N_STATS = 6

# A threshold no access count reaches: neighbour admission off.
NEVER = 2**62

# How many missed keys ahead the block pass prefetches a sector (the layout entry it needs
# twice as far ahead). Measured on a 900k-row table at 4096 lookups per batch: the checksum
# pass took 2-3x less time with 8 or 16 than with none, 16 slightly ahead.
BLOCK_PREFETCH_DISTANCE = 16
# How much of a checksum sector the block pass prefetches (in 64-byte lines).
SECTOR_PREFETCH_BYTES = 512


#: The CLOCK reference bit of a cached row lives in its ``slot_of_id`` entry (the slot is the
#: entry's low 30 bits): a hit sets it in the cache line its probe has just read, where a
#: separate bit per slot cost one more random cache line per hit (the hit path reads few lines:
#: the slot entry and the row; at 2M rows a third, written, line cost ~1/6 of a hit). Caches
#: hold fewer than 2**30 rows.
REF_FLAG = np.int32(1 << 30)
SLOT_MASK = np.int32((1 << 30) - 1)


@njit(nogil=True, cache=True)
def _admit(row_id, slot_of_id, id_of_slot, ref, meta):
    """Give ``row_id`` a cache slot (evicting by CLOCK when full) and return it, or -1.

    The new row gets a clear reference bit at the position just behind the hand, which makes it
    the most recently used: it survives one full sweep, as it would in LRU. The bits are in
    ``slot_of_id`` (``REF_FLAG``); ``ref`` is not used (kept in the kernels' signatures).
    """
    capacity = meta[META_CAPACITY]
    pinned = meta[META_PINNED]
    if capacity <= pinned:
        return -1
    filled = meta[META_FILLED]
    if filled < capacity:
        slot = filled
        meta[META_FILLED] = filled + 1
    else:
        hand = meta[META_HAND]
        while True:
            held = id_of_slot[hand]
            v = slot_of_id[held]
            if (v & REF_FLAG) == 0:
                break
            slot_of_id[held] = v & SLOT_MASK
            hand += 1
            if hand >= capacity:
                hand = pinned
        slot = hand
        slot_of_id[id_of_slot[slot]] = -1
        hand += 1
        if hand >= capacity:
            hand = pinned
        meta[META_HAND] = hand
    id_of_slot[slot] = row_id
    slot_of_id[row_id] = slot  # reference bit clear
    return slot


@njit(nogil=True, cache=True)
def _verify_row_sectors(blocks_u8, blk, local, row_bytes, block_size, checksum_bytes, checksums,
                        done):  # fmt: skip
    """Check the not yet checked sectors of block ``blk`` that hold row ``local`` of it (a row
    may straddle two); return False on a mismatch. ``done[s]`` marks checked sectors."""
    spb = block_size // checksum_bytes
    s0 = local * row_bytes // checksum_bytes
    s1 = ((local + 1) * row_bytes - 1) // checksum_bytes
    for s in range(s0, s1 + 1):
        if done[s]:
            continue
        done[s] = True
        start = (blk + 1) * block_size + s * checksum_bytes
        if (
            _xxh64(blocks_u8[start : start + checksum_bytes], np.uint64(0))
            != checksums[blk * spb + s]
        ):
            return False
    return True


@njit(nogil=True, cache=True)
def _verify_sorted_blocks(
    keys, n, ids, layout, inverse_layout, counts, threshold, rows_per_block, row_bytes, blocks_u8,
    block_size, checksum_bytes, checksums, error,
):  # fmt: skip
    """Check what a batch will decode against the checksums, before anything is admitted; on a
    mismatch set ``error[0]`` to the block and return True.

    ``keys``: sorted ``block * n + position`` of the missed ids. Checksums cover sectors of
    ``checksum_bytes`` (the whole block when it equals ``block_size``): only the sectors holding
    a requested row, or a neighbour that admission may decode (access count >= ``threshold``),
    are read, so a lookup pulls a few cache lines of a block through the hash, not all of it.
    """
    spb = block_size // checksum_bytes
    done = np.zeros(spb, dtype=np.bool_)
    prev = -1
    nk = keys.shape[0]
    far = 2 * BLOCK_PREFETCH_DISTANCE
    for k in range(nk):
        # A software pipeline over the sorted keys: the layout entry of the key 2D ahead, then
        # the sector and checksum of the key D ahead (its layout entry has arrived by now).
        if k + far < nk:
            _prefetch_at(layout, ids[keys[k + far] % n])
        if k + BLOCK_PREFETCH_DISTANCE < nk:
            ka = keys[k + BLOCK_PREFETCH_DISTANCE]
            ba = ka // n
            sa = (layout[ids[ka % n]] - ba * rows_per_block) * row_bytes // checksum_bytes
            start = (ba + 1) * block_size + sa * checksum_bytes
            # Every cache line of the sector the hash will read (the first few of a large one).
            for line in range(0, min(checksum_bytes, SECTOR_PREFETCH_BYTES), 64):
                _prefetch_at(blocks_u8, start + line)
            _prefetch_at(checksums, ba * spb + sa)
            if threshold < NEVER:  # the neighbour scan reads the block's inverse layout
                _prefetch_at(inverse_layout, ba * rows_per_block)
        blk = keys[k] // n
        base_slot = blk * rows_per_block
        if blk != prev:
            prev = blk
            done[:] = False
            if threshold < NEVER:
                for local in range(rows_per_block):
                    nb = inverse_layout[base_slot + local]
                    if nb >= 0 and counts[nb] >= threshold:
                        if not _verify_row_sectors(blocks_u8, blk, local, row_bytes, block_size,
                                                   checksum_bytes, checksums, done):  # fmt: skip
                            error[0] = blk
                            return True
        local = layout[ids[keys[k] % n]] - base_slot
        if not _verify_row_sectors(blocks_u8, blk, local, row_bytes, block_size, checksum_bytes,
                                   checksums, done):  # fmt: skip
            error[0] = blk
            return True
    return False


#: How many ids ahead the probe prefetches the slot index (measured at 2M rows, bags of 20:
#: 32 ahead ~20% less time per id than none, 16 in between).
PROBE_PREFETCH = 32

#: Digit width of the miss keys' radix sort (2048 buckets: the counts stay in L1).
_RADIX_BITS = 11


@njit(nogil=True, cache=True)
def _sort_keys(keys):
    """``keys`` (distinct non-negative int64) sorted ascending (a new array): an LSD radix
    sort over the key's significant bits, a few linear passes where a comparison sort of a
    batch's few thousand ``block * n + position`` keys took ~30 ns per key."""
    n = keys.shape[0]
    if n < 32:
        # Insertion sort: as fast as np.sort at this size, and numba's np.sort took ~2.5 s of
        # the kernels' first compile.
        out = keys.copy()
        for i in range(1, n):
            v = out[i]
            j = i - 1
            while j >= 0 and out[j] > v:
                out[j + 1] = out[j]
                j -= 1
            out[j + 1] = v
        return out
    hi = 0
    for i in range(n):
        hi = max(hi, keys[i])
    bits = 0
    while hi >> bits:
        bits += 1
    src = keys.copy()
    dst = np.empty(n, dtype=np.int64)
    count = np.empty(1 << _RADIX_BITS, dtype=np.int64)
    mask = (1 << _RADIX_BITS) - 1
    for shift in range(0, bits, _RADIX_BITS):
        count[:] = 0
        for i in range(n):
            count[(src[i] >> shift) & mask] += 1
        total = 0
        for d in range(1 << _RADIX_BITS):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = (src[i] >> shift) & mask
            dst[count[d]] = src[i]
            count[d] += 1
        src, dst = dst, src
    return src


@njit(nogil=True, cache=True)
def _prefetch_block_row(keys, j, nk, n, ids, layout, rows_per_block, block_size, row_bytes,
                        blocks_u8):  # fmt: skip
    """The decode pass's software pipeline over the sorted miss keys (when no checksum pass
    went before it): at key ``j``, prefetch the layout entry of the key 2D ahead and the row
    (in its block) of the key D ahead, D = ``BLOCK_PREFETCH_DISTANCE``."""
    far = j + 2 * BLOCK_PREFETCH_DISTANCE
    if far < nk:
        _prefetch_at(layout, ids[keys[far] % n])
    near = j + BLOCK_PREFETCH_DISTANCE
    if near < nk:
        ka = keys[near]
        ba = ka // n
        local = layout[ids[ka % n]] - ba * rows_per_block
        _prefetch_at(blocks_u8, (ba + 1) * block_size + local * row_bytes)


@njit(nogil=True, cache=True)
def _pool_into(out, bag, src, weight, mode, bag_n):
    """Reduce row ``src`` into ``out[bag]`` (``bag_n[bag]`` rows were reduced into it before)."""
    dim = src.shape[0]
    if mode == MODE_MAX:
        if bag_n[bag] == 0:
            for d in range(dim):
                out[bag, d] = src[d]
        else:
            for d in range(dim):
                if src[d] > out[bag, d]:
                    out[bag, d] = src[d]
    elif mode == MODE_COPY:
        for d in range(dim):
            out[bag, d] = src[d]
    else:
        for d in range(dim):
            out[bag, d] += weight * src[d]
    bag_n[bag] += 1


@njit(nogil=True, cache=True)
def _cache_batch(
    ids,
    offsets,
    weights,
    mode,
    padding_idx,
    out,
    with_data,
    slot_of_id,
    id_of_slot,
    ref,
    meta,
    cache_data,
    counts,
    threshold,
    layout,
    inverse_layout,
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
    """Serve one batch of bags through the cache; return a status code.

    ids: int64 ids (validated by the caller); offsets: int64 bag starts, ``len = n_bags + 1``;
    weights: float32 per id or empty; out: float32 (n_bags, dim), zeroed by the caller (ignored
    when ``with_data`` is False); cache_data: the slots' encoded rows (uint8 (capacity,
    row_bytes); float32 (capacity, dim) for float32 works too; (capacity, 0) without data);
    ``stats`` gets this batch's counters added; on a corrupt block
    ``error[0]`` is the block and no admission has happened.
    """
    n_bags = offsets.shape[0] - 1
    n = ids.shape[0]
    has_weights = weights.shape[0] > 0
    if meta[META_CAPACITY] <= meta[META_PINNED]:
        # No unpinned slot to admit a neighbour into (pinned share 1): skip the neighbour scan
        # and its sector checks, whose random reads of counts and slot index cost ~10x the
        # rest of a miss when the block file is in the page cache.
        threshold = NEVER
    bag_n = np.zeros(n_bags, dtype=np.int64)
    miss_keys = np.empty(n, dtype=np.int64)
    n_miss = 0

    # Phase 1: probe. One tight loop resolves every slot (-1: a miss, -2: padding) and sets the
    # reference bits of the hits (in their slot_of_id entries; pinned slots need none: they
    # are never swept, and a split's parts share the entries of their replicated rows, which
    # are pinned in every part, so no two cores write one entry), prefetching the slot index
    # PROBE_PREFETCH ids ahead: each is a random access into a large array, and a short loop
    # keeps many of them in flight at once, where the long pooling loop below would serialize
    # them. (Three passes, slots then reference bits then misses, took 11-18 ns per id at 2M
    # rows; one 9-15.) The misses are listed by a second pass only when there are some.
    slots = np.empty(n, dtype=np.int64)  # int64 as every caller of kernels.pool passes
    n_pad = 0
    n_miss_seen = 0
    pinned = meta[META_PINNED]
    for i in range(n):
        if i + PROBE_PREFETCH < n:
            _prefetch_at(slot_of_id, ids[i + PROBE_PREFETCH])
        r = ids[i]
        v = slot_of_id[r]
        s = np.int64(v & SLOT_MASK) if v >= 0 else np.int64(v)
        if r == padding_idx:  # (validated ids are >= 0: a negative padding_idx never matches)
            s = -2
            n_pad += 1
        slots[i] = s
        if s >= pinned:
            slot_of_id[r] = v | REF_FLAG
        n_miss_seen += np.int64(s == -1)
    if n_miss_seen:
        for i in range(n):
            if slots[i] == -1:
                miss_keys[n_miss] = (layout[ids[i]] // rows_per_block) * n + i
                n_miss += 1
    lookups = n - n_pad
    if with_data:
        # The hits, bag by bag, in position order (``kernels.pool``: skips the negative slots).
        _pool_bags_codec(cache_data, codec, slots, weights, offsets, -1, mode, out, bag_n,
                         False)  # fmt: skip

    stats[STAT_LOOKUPS] += lookups
    stats[STAT_HITS] += lookups - n_miss
    stats[STAT_MISSES] += n_miss
    if n_miss == 0:
        if with_data and mode == MODE_MEAN:
            _divide_means(out, bag_n)
        return STATUS_OK

    keys = _sort_keys(miss_keys[:n_miss])

    # Verify every distinct block before anything is admitted, so a corrupt block leaves the
    # cache holding only good rows.
    if verify and _verify_sorted_blocks(
        keys, n, ids, layout, inverse_layout, counts, threshold, rows_per_block, row_bytes,
        blocks_u8, block_size, checksum_bytes, checksums, error,
    ):  # fmt: skip
        return STATUS_CORRUPT_BLOCK

    # Bag of each position, for the misses (positions are sorted within a bag's range).
    pos_bag = np.empty(n_miss, dtype=np.int64)
    miss_pos = np.empty(n_miss, dtype=np.int64)
    for k in range(n_miss):
        miss_pos[k] = keys[k] % n
    # offsets are non-decreasing, so a binary search gives each position's bag: the last b
    # with offsets[b] <= position (by hand: numba's np.searchsorted costs ~1 s to compile).
    for k in range(n_miss):
        lo = 0
        hi = offsets.shape[0]
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if offsets[mid] <= miss_pos[k]:
                lo = mid
            else:
                hi = mid
        pos_bag[k] = lo

    decoded = np.empty((rows_per_block, dim if with_data else 0), dtype=np.float32)
    is_decoded = np.zeros(rows_per_block, dtype=np.bool_)
    requested = np.zeros(rows_per_block, dtype=np.bool_)
    blocks_read = 0
    useful_rows = 0
    k = 0
    while k < n_miss:
        blk = keys[k] // n
        end = k
        while end < n_miss and keys[end] // n == blk:
            end += 1
        blocks_read += 1
        base_slot = blk * rows_per_block
        is_decoded[:] = False
        requested[:] = False
        # Serve the requested rows of this block.
        for j in range(k, end):
            if with_data:  # also after the checksum pass (see _direct_batch)
                _prefetch_block_row(keys, j, n_miss, n, ids, layout, rows_per_block, block_size,
                                    row_bytes, blocks_u8)  # fmt: skip
            i = miss_pos[j]
            local = layout[ids[i]] - base_slot
            if not requested[local]:
                requested[local] = True
                useful_rows += 1
            if with_data:
                if not is_decoded[local]:
                    offset = (blk + 1) * block_size + local * row_bytes
                    _decode_row_into(blocks_u8, offset, codec, dim, decoded[local])
                    is_decoded[local] = True
                w = weights[i] if has_weights else np.float32(1.0)
                _pool_into(out, pos_bag[j], decoded[local], w, mode, bag_n)
        # Admit the neighbours whose access count reaches the threshold (none when neighbour
        # admission is off: then the scan, a few random cache lines of the inverse layout,
        # slot index and counts per block read, is skipped)...
        if threshold < NEVER:
            for local in range(rows_per_block):
                nb = inverse_layout[base_slot + local]
                if nb < 0 or requested[local] or counts[nb] < threshold or slot_of_id[nb] >= 0:
                    continue
                s = _admit(nb, slot_of_id, id_of_slot, ref, meta)
                if s >= 0 and with_data:
                    offset = (blk + 1) * block_size + local * row_bytes
                    _copy_encoded(blocks_u8, offset, row_bytes, cache_data[s])
        # ...then the requested rows, so they are the most recent.
        for j in range(k, end):
            row_id = ids[miss_pos[j]]
            if slot_of_id[row_id] >= 0:
                continue
            s = _admit(row_id, slot_of_id, id_of_slot, ref, meta)
            if s >= 0 and with_data:
                offset = (blk + 1) * block_size + (layout[row_id] - base_slot) * row_bytes
                _copy_encoded(blocks_u8, offset, row_bytes, cache_data[s])
        k = end

    stats[STAT_BLOCKS_READ] += blocks_read
    stats[STAT_BYTES_READ] += blocks_read * block_size
    stats[STAT_USEFUL_BYTES] += useful_rows * row_bytes
    if with_data and mode == MODE_MEAN:
        _divide_means(out, bag_n)
    return STATUS_OK


@njit(nogil=True, cache=True)
def _divide_means(out, bag_n):
    for b in range(out.shape[0]):
        if bag_n[b] > 1:
            inv = np.float32(1.0) / np.float32(bag_n[b])
            for d in range(out.shape[1]):
                out[b, d] *= inv


@njit(nogil=True, cache=True)
def _load_pinned(
    pinned_ids,
    with_data,
    slot_of_id,
    id_of_slot,
    meta,
    cache_data,
    layout,
    rows_per_block,
    block_size,
    row_bytes,
    codec,
    dim,
    blocks_u8,
):
    """Put ``pinned_ids`` in slots ``[0, len)`` of an empty cache and mark them pinned (their
    encoded rows copied from ``blocks_u8`` when ``with_data``)."""
    for s in range(pinned_ids.shape[0]):
        row_id = pinned_ids[s]
        slot_of_id[row_id] = s
        id_of_slot[s] = row_id
        if with_data:
            slot = layout[row_id]
            blk = slot // rows_per_block
            offset = (blk + 1) * block_size + (slot - blk * rows_per_block) * row_bytes
            _copy_encoded(blocks_u8, offset, row_bytes, cache_data[s])
    meta[META_PINNED] = pinned_ids.shape[0]
    meta[META_FILLED] = pinned_ids.shape[0]
    meta[META_HAND] = pinned_ids.shape[0]
