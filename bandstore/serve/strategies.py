"""Lookup strategies: how one table of an open store is served.

- ``cached``: the foundation's DRAM cache over the block file (``_Table.serve`` as it is).
- ``resident``: the table copied once into DRAM, its rows encoded as the block file stores
  them (float16, int8 with its per-row scale and bias: decoded in the pooling loop); lookups
  gather from it with no cache probe.
- ``direct``: no cache: the distinct blocks of a batch are read once each, in block order
  (for tables with little reuse: a cache would cost DRAM and buy nothing).
- ``pinned``: the table's hottest rows (by its access counts), encoded, in a frozen cache;
  other rows are read as ``direct`` ones, with no admission and no eviction. For independent
  draws from a skewed popularity (Zipf), a fixed set of the most frequent rows is the best a
  cache of its size can hold, and a miss costs no admission: a CLOCK cache of the same size
  hits about as often (within a few points) and pays for every miss it admits. Only read, so
  workers share it unlocked.
- ``split``: a hot table served by several workers at once. A ``resident``, ``pinned`` or
  ``direct`` split divides the batch's bags into contiguous ranges (exact: a bag is pooled by one
  worker). A ``cached`` split divides the ids by hash: part ``j`` has its own cache, owned by one
  worker; the hottest rows (``replicate``) are pinned in every part's cache and their lookups
  are dealt to the parts by bag range, so a few very hot rows cannot load one part alone. The parts'
  pooled bags are combined in part order, so the result does not depend on thread timing.

A runner serves a request in parts (``begin``, ``run_part`` for each part, possibly on several
threads, then ``finish``); ``serve`` runs them all on the calling thread, which is what
``Store.lookup`` and ``Store.embedding_bag`` use. Runners never hold a lock inside a kernel: a
cached part's arrays are owned by one worker; the Python-level lock around each kernel call
only matters when several callers run the same part at once.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from bandstore.kernels import cache as kc
from bandstore.kernels import resident as kr
from bandstore.kernels import tier as kt
from bandstore.kernels.bits import index_bytes, pinned_index
from bandstore.serve.cache import CacheState, cache_row_bytes, capacity_rows, pinned_ids
from bandstore.storage import dram
from bandstore.storage.codecs import row_bytes

#: The strategies a plan may name.
STRATEGIES = ("resident", "cached", "pinned", "direct", "split")
#: What a split table's parts may be.
SPLIT_INNER = ("resident", "cached", "pinned", "direct")
#: Copy a table for residency this many rows at a time.
_DECODE_CHUNK = 1 << 16


class Job:
    """One table's share of one call: the validated request and where the result goes."""

    __slots__ = ("ids", "offsets", "weights", "mode", "pad", "out", "partials", "bag_n",
                 "stats")  # fmt: skip

    def __init__(self, ids, offsets, weights, mode, pad, out, partials=None, bag_n=None):
        self.ids = ids
        self.offsets = offsets
        self.weights = weights
        self.mode = mode
        self.pad = pad
        self.out = out
        self.partials = partials
        self.bag_n = bag_n
        #: The job's counters, added to the table's by ``commit_stats`` only once the whole
        #: call succeeded: a call that raises changes no counter. The last entry: the bytes
        #: the device read for it.
        self.stats = np.zeros(kc.N_STATS + 1, dtype=np.int64)


def raise_corrupt(t: Any, block: int) -> None:
    """Raise the CorruptBlockError of block ``block`` of table ``t`` (as ``_Table.serve``)."""
    raise t.corrupt_block_error(block)


def _add_stats(t: Any, job: Job, batch: np.ndarray, device_bytes: int = 0) -> None:
    """Add a part's counters (and the device bytes its reads cost) to its job's (parts of one
    job may run on several workers)."""
    with t.lock:
        job.stats[: kc.N_STATS] += batch
        job.stats[kc.N_STATS] += device_bytes


def commit_stats(t: Any, job: Job, extra: np.ndarray | None = None) -> None:
    """Add a finished job's counters (and ``extra``, same form) to its table's (once the call
    has succeeded)."""
    s = job.stats if extra is None else job.stats + extra
    with t.lock:
        t.stats += s[: kc.N_STATS]
        t.device_bytes += int(s[kc.N_STATS])


def _bag_range(n_bags: int, parts: int, j: int) -> tuple[int, int]:
    return (j * n_bags) // parts, ((j + 1) * n_bags) // parts


def _bags(job: Job, b0: int, b1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, offsets, weights, out) of bags ``[b0, b1)`` of a job (views, offsets rebased)."""
    if b0 == 0 and b1 == job.offsets.shape[0] - 1:
        return job.ids, job.offsets, job.weights, job.out
    lo, hi = int(job.offsets[b0]), int(job.offsets[b1])
    w = job.weights[lo:hi] if job.weights.shape[0] else job.weights
    return job.ids[lo:hi], job.offsets[b0 : b1 + 1] - lo, w, job.out[b0:b1]


class Runner:
    """Base: a strategy bound to one table. Subclasses set ``parts`` and implement run_part.

    ``bag_ranges``: the runner can also serve any range of a request's bags on its own
    (``run_bags``), so the executor may cut a long one-part job into ranges for several workers.
    """

    strategy = ""
    parts = 1
    bag_ranges = False
    #: Whether the runner's kernel stores every bag of its output (so it need not be zeroed).
    stores_every_bag = False

    def __init__(self, t: Any):
        self.table = t

    @property
    def spec(self) -> tuple:
        """What the runner was built for; a plan entry with the same spec reuses it."""
        return (self.strategy,)

    @property
    def dram_bytes(self) -> int:
        return 0

    def begin(self, ids, offsets, weights, mode, pad, *, allocate: bool = True) -> Job:
        """The job of a request; ``allocate=False`` leaves its output to ``allocate`` (the
        worker that runs a one-part job allocates it, in parallel with the others)."""
        job = Job(ids, offsets, weights, mode, pad, None)
        if allocate:
            self.allocate(job)
        return job

    def allocate(self, job: Job) -> None:
        """The job's output, one row per bag: zeroed unless the kernel stores every bag."""
        alloc = np.empty if self.stores_every_bag else np.zeros
        job.out = alloc((job.offsets.shape[0] - 1, self.table.info.dim), dtype=np.float32)

    def run_part(self, job: Job, j: int) -> None:
        raise NotImplementedError

    def run_bags(self, job: Job, b0: int, b1: int) -> None:
        """Bags ``[b0, b1)`` of the job, for the strategies whose calls the executor cuts in
        ranges of bags (the others are never cut)."""
        raise NotImplementedError

    def finish(self, job: Job) -> np.ndarray:
        return job.out

    def serve(self, ids, offsets, weights, mode, pad, out, stats=None) -> None:
        """Serve a whole request on the calling thread into ``out`` (``_Table.serve``'s form);
        its counters go to ``stats`` if given, else to the table's, and only on success."""
        job = self.begin(ids, offsets, weights, mode, pad, allocate=False)
        job.out = out
        for j in range(self.parts):
            self.run_part(job, j)
        if job.partials is not None:
            self.finish(job)
        if stats is None:
            commit_stats(self.table, job)
        else:
            stats += job.stats


class CachedRunner(Runner):
    """The foundation's path: the table's own cache, under the table's lock."""

    strategy = "cached"
    # kernels.cache._cache_batch pools the hits of every bag with kernels.pool (which stores
    # every bag, zeros for none) before it adds the misses (tests/test_multi_table.py checks).
    stores_every_bag = True

    def run_part(self, job: Job, j: int) -> None:
        self.table.serve(job.ids, job.offsets, job.weights, job.mode, job.pad, job.out,
                         job.stats)  # fmt: skip


def encoded_table(t: Any) -> np.ndarray:
    """Every row of table ``t`` as its codec stores it (uint8 (rows, row_bytes)), in id order
    (verified block by block): a resident table's DRAM copy."""
    from bandstore.storage.blockfile import rows_view

    g = t.geometry
    out = dram.zeros((g.rows, g.row_bytes), np.uint8)  # gathered at random: on huge pages
    for start in range(0, g.rows, _DECODE_CHUNK):
        stop = min(g.rows, start + _DECODE_CHUNK)
        slots = np.asarray(t.layout[start:stop])
        blocks = np.unique(slots // g.rows_per_block)
        with t.source.batch(lambda blocks=blocks: blocks) as buf:  # (bandstore.storage.tier)
            if t.verify_reads:
                for b0, b1 in _runs(blocks):
                    bad = t.mismatched_blocks(b0, b1, buf)
                    if bad.size:
                        raise_corrupt(t, int(bad[0]))
            out[start:stop] = rows_view(buf, g)[slots // g.rows_per_block,
                                                slots % g.rows_per_block]  # fmt: skip
    return out


def _runs(sorted_blocks: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [b0, b1) of consecutive block numbers."""
    if sorted_blocks.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_blocks) != 1) + 1
    starts = np.r_[sorted_blocks[0], sorted_blocks[breaks]]
    ends = np.r_[sorted_blocks[breaks - 1], sorted_blocks[-1]] + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


class ResidentRunner(Runner):
    """The table in DRAM, rows encoded (``encoded_table``; ``data``: uint8 (rows,
    row_bytes)); ``parts > 1`` splits the bags into contiguous ranges."""

    strategy = "resident"
    bag_ranges = True
    stores_every_bag = True  # (kernels.pool stores every bag: zeroing cost a bag-of-one call 1/3)

    def __init__(self, t: Any, parts: int = 1, data: np.ndarray | None = None):
        super().__init__(t)
        self.parts = parts
        self.data = encoded_table(t) if data is None else data

    @property
    def spec(self) -> tuple:
        return ("resident", self.parts)

    @property
    def dram_bytes(self) -> int:
        return int(self.data.nbytes)

    def run_part(self, job: Job, j: int) -> None:
        self.run_bags(job, *_bag_range(job.out.shape[0], self.parts, j))

    def run_bags(self, job: Job, b0: int, b1: int) -> None:
        if b1 == b0:
            return
        ids, off, w, out = _bags(job, b0, b1)
        stats = np.zeros(kc.N_STATS, dtype=np.int64)
        kr._gather_pool_encoded(ids, off, w, job.mode, job.pad, out, self.data, self.table.codec,
                                stats)  # fmt: skip
        _add_stats(self.table, job, stats)


#: The pinned set of a ``direct`` table: none.
_NO_INDEX = np.zeros((0, 2), dtype=np.int64)
_NO_DATA = np.zeros((0, 0), dtype=np.uint8)
_NO_WEIGHTS = np.zeros(0, dtype=np.float32)
_NO_BYTES = np.zeros(0, dtype=np.uint8)


class DirectRunner(Runner):
    """No cache: distinct blocks read once per batch; ``parts > 1`` splits by bag ranges."""

    strategy = "direct"
    bag_ranges = True
    index = _NO_INDEX
    data = _NO_DATA

    def __init__(self, t: Any, parts: int = 1):
        super().__init__(t)
        self.parts = parts

    @property
    def spec(self) -> tuple:
        return ("direct", self.parts)

    def run_part(self, job: Job, j: int) -> None:
        self.run_bags(job, *_bag_range(job.out.shape[0], self.parts, j))

    def run_bags(self, job: Job, b0: int, b1: int) -> None:
        if b1 == b0:
            return
        ids, off, w, out = _bags(job, b0, b1)
        stats = np.zeros(kc.N_STATS, dtype=np.int64)
        device = self._read(ids, off, w, job.mode, job.pad, out, stats)
        _add_stats(self.table, job, stats, device)

    def _read(self, ids, off, w, mode, pad, out, stats) -> int:
        """Run the direct kernel; return the device bytes its reads cost (storage.tier)."""
        t = self.table
        g = t.geometry
        source, layout = t.maps()
        error = np.zeros(1, dtype=np.int64)
        index = self.index

        def probe() -> np.ndarray:  # with io="direct": the blocks of the unpinned ids
            out_b = np.empty(ids.shape[0], dtype=np.int64)
            k = kt._unpinned_blocks(ids, pad, index, layout, g.rows_per_block, out_b)
            return out_b[:k]

        rb = source.batch(probe)
        with rb as blocks_u8:
            status = kr._direct_batch(
                ids, off, w, mode, pad, out, index, self.data, layout, g.rows_per_block,
                g.block_size, g.row_bytes, t.codec, g.dim, blocks_u8, t.checksums,
                t.checksum_bytes, t.verify_reads, stats, error,
            )  # fmt: skip
        if status != kc.STATUS_OK:
            raise_corrupt(t, int(error[0]))
        return rb.device_bytes


class PinnedRunner(DirectRunner):
    """A frozen set of the table's most counted rows, encoded in DRAM, over direct reads;
    ``parts > 1`` splits the bags into contiguous ranges (the set is only read, so the parts
    share it unlocked).

    ``counts``: the access counts that rank the rows (the plan's, else the table's); the set
    holds the ``pinned_capacity(cache_bytes)`` most counted rows that were read at least once,
    in id order, found through a bitmap index (``kernels.bits``) instead of a slot per row.
    """

    strategy = "pinned"

    def __init__(self, t: Any, cache_bytes: int, counts: np.ndarray, parts: int = 1):
        super().__init__(t, parts)
        g = t.geometry
        self.cache_bytes = int(cache_bytes)
        self.counts = counts
        top = pinned_ids(counts, pinned_capacity(self.cache_bytes, g.dim, g.rows, g.codec))
        self.ids = np.sort(t.verified_rows(top))
        # The rows as the block file stores them (decoded in the pooling loop), read through
        # the source a chunk at a time (with io="direct" each chunk's blocks are staged, then
        # released); on huge pages when large: read at random on every lookup.
        self.data = t.encoded_ids(self.ids, _DECODE_CHUNK)
        self.index = dram.copy(pinned_index(self.ids, g.rows))

    @property
    def spec(self) -> tuple:
        return ("pinned", self.parts, self.cache_bytes, id(self.counts))

    @property
    def dram_bytes(self) -> int:
        return int(self.index.nbytes + self.data.nbytes)

    def cache_info(self) -> dict[str, Any]:
        """``Store.cache_info``'s entry: a full cache, all of it pinned, no admission."""
        k = int(self.ids.size)
        return {"cache_bytes": self.cache_bytes, "capacity_rows": k, "cached_rows": k,
                "pinned_rows": k, "threshold": kc.NEVER, "pinned_share": 1.0,
                "dram_bytes": self.dram_bytes}  # fmt: skip


class SplitCachedRunner(Runner):
    """A cached table split by id hash into parts, each with its own cache and lock.

    ``cache_bytes`` is each part's share for its own rows; the ``replicate`` ids are pinned in
    every part's cache on top of it.
    """

    strategy = "split"

    def __init__(self, t: Any, parts: int, cache_bytes: int, replicate: np.ndarray, policy: Any):
        super().__init__(t)
        g = t.geometry
        self.parts = parts
        self.cache_bytes = int(cache_bytes)
        self.replicate = t.verified_rows(np.ascontiguousarray(np.unique(replicate), dtype=np.int64))
        self.threshold = int(policy.threshold)
        self.pinned_share = float(policy.pinned_share)
        self.hot_bits = np.zeros(0, dtype=np.uint8)
        if self.replicate.size:
            bits = np.zeros(g.rows, dtype=bool)
            bits[self.replicate] = True
            self.hot_bits = np.packbits(bits, bitorder="little")
        # Neighbour admission must not pull another part's rows into a part's cache: each part
        # sees the counts of its own rows only (-1, below every threshold, for the others).
        self.source_counts = t.counts
        self.counts = [t.counts] * parts
        if t.has_counts and self.threshold < kc.NEVER and parts > 1:
            ids = np.arange(g.rows, dtype=np.int64)
            owner = _owner_of(ids, parts)
            self.counts = [
                dram.copy(np.where(owner == j, t.counts, -1).astype(np.int32)) for j in range(parts)
            ]
        # One slot index for all parts: a part only ever writes the entries of the ids it owns
        # (its misses, its evictions, its own neighbours), and the replicated ids sit at the
        # same pinned slot in every part, so the parts never write one entry differently.
        slot_of_id = dram.full(g.rows, -1, np.int32)
        self.caches = []
        own_cap = capacity_rows(self.cache_bytes, g.dim, g.rows, g.codec)
        n_pin = int(self.pinned_share * own_cap)
        hottest = np.empty(0, dtype=np.int64)
        if n_pin > 0 and t.has_counts:
            # The policy's pinned share holds, per part, the hottest rows that part owns (as the
            # whole table's cache would, which is what the planner's curves assume).
            hottest = pinned_ids(t.counts, g.rows)  # every read row, hottest first
            hottest = hottest[~np.isin(hottest, self.replicate)]
            owners = _owner_of(hottest, parts)
        for j in range(parts):
            n_hot = self.replicate.size
            cap = min(g.rows, n_hot + own_cap)
            cache = CacheState(1, g.dim, cap, codec=g.codec)
            cache.slot_of_id = slot_of_id
            cache.rows = g.rows
            # Replicated rows first: the same slots in every part.
            pinned = self.replicate
            if hottest.size:
                own = t.verified_rows(np.ascontiguousarray(hottest[owners == j][:n_pin]))
                pinned = np.concatenate([self.replicate, own])[:cap]
            if pinned.size:
                pinned = np.ascontiguousarray(pinned)
                direct = t.blocks_u8 is None  # io="direct": decode through staged reads
                kc._load_pinned(
                    pinned, not direct, cache.slot_of_id, cache.id_of_slot,
                    cache.meta, cache.data, t.layout, g.rows_per_block, g.block_size,
                    g.row_bytes, t.codec, g.dim, _NO_BYTES if direct else t.blocks_u8,
                )  # fmt: skip
                if direct:
                    cache.data[: pinned.size] = t.encoded_ids(pinned)
            self.caches.append(cache)
        self.locks = [threading.Lock() for _ in range(parts)]

    @property
    def spec(self) -> tuple:
        return ("split", "cached", self.parts, self.cache_bytes, self.replicate.tobytes())

    @property
    def dram_bytes(self) -> int:
        shared = self.caches[0].slot_of_id.nbytes if self.caches else 0
        n = sum(c.nbytes for c in self.caches) - (len(self.caches) - 1) * shared
        n += int(self.hot_bits.nbytes)
        if self.counts and self.counts[0] is not self.table.counts:
            n += sum(int(c.nbytes) for c in self.counts)
        return n

    def cache_info(self) -> dict[str, Any]:
        """``Store.cache_info``'s entry: the parts' caches together (``cache_bytes`` is every
        part's share for its own rows; each part also pins the replicated rows)."""
        return {
            "cache_bytes": self.cache_bytes * self.parts,
            "capacity_rows": sum(c.capacity for c in self.caches),
            "cached_rows": sum(c.filled for c in self.caches),
            "pinned_rows": sum(c.pinned for c in self.caches),
            "threshold": None if self.threshold >= kc.NEVER else self.threshold,
            "pinned_share": self.pinned_share,
            "dram_bytes": self.dram_bytes,
            "parts": self.parts,
            "replicated_rows": int(self.replicate.size),
        }

    def begin(self, ids, offsets, weights, mode, pad, *, allocate: bool = True) -> Job:
        # Its parts run on several workers and share the partial sums: allocated at once.
        n_bags = offsets.shape[0] - 1
        dim = self.table.info.dim
        out = np.zeros((n_bags, dim), dtype=np.float32)
        partials = np.zeros((self.parts, n_bags, dim), dtype=np.float32)
        bag_n = np.zeros((self.parts, n_bags), dtype=np.int64)
        return Job(ids, offsets, weights, mode, pad, out, partials, bag_n)

    def run_part(self, job: Job, j: int) -> None:
        t = self.table
        g = t.geometry
        n = job.ids.shape[0]
        n_bags = job.offsets.shape[0] - 1
        sub_ids = np.empty(n + 1, dtype=np.int64)  # one spare: see _split_select
        sub_off = np.empty(n_bags + 1, dtype=np.int64)
        has_w = job.weights.shape[0] > 0
        sub_w = np.empty(n + 1 if has_w else 0, dtype=np.float32)
        m = kr._split_select(
            job.ids, job.offsets, job.weights, job.pad, self.parts, j, self.hot_bits,
            sub_ids, sub_off, sub_w, job.bag_n[j],
        )  # fmt: skip
        if m == 0:
            return
        mode = kc.MODE_SUM if job.mode == kc.MODE_MEAN else job.mode
        stats = np.zeros(kc.N_STATS, dtype=np.int64)
        error = np.zeros(1, dtype=np.int64)
        c = self.caches[j]
        source, layout = t.maps()
        with self.locks[j]:
            rb = source.batch(lambda: t.blocks_of(sub_ids[:m], -1, c.slot_of_id))
            with rb as blocks_u8:
                status = kc._cache_batch(
                    sub_ids[:m], sub_off, sub_w[:m], mode, -1, job.partials[j], True,
                    c.slot_of_id, c.id_of_slot, c.ref, c.meta, c.data, self.counts[j],
                    self.threshold, layout, t.inverse_layout, g.rows_per_block, g.block_size,
                    g.row_bytes, t.codec, g.dim, blocks_u8, t.checksums, t.checksum_bytes,
                    t.verify_reads, stats, error,
                )  # fmt: skip
        if status != kc.STATUS_OK:
            raise_corrupt(t, int(error[0]))
        _add_stats(t, job, stats, rb.device_bytes)

    def finish(self, job: Job) -> np.ndarray:
        kr._combine_parts(job.partials, job.bag_n, job.mode, job.out)
        return job.out


def _owner_of(ids: np.ndarray, parts: int) -> np.ndarray:
    """The part that owns each id (numpy twin of ``kernels.resident._part_of_id``)."""
    g = ids >> kr.OWNER_RUN_BITS
    x = (g ^ (g >> 31)) & 0x7FFFFFFF
    return ((((x * kr.HASH_MULTIPLIER) & 0xFFFFFFFF) >> 16) * parts) >> 16


def pinned_capacity(cache_bytes: int, dim: int, rows: int, codec: str | int = "float32") -> int:
    """How many rows a ``pinned`` set of ``cache_bytes`` holds: rows encoded in ``codec``
    (``row_bytes``), nothing per slot (never more than the table has)."""
    return int(min(rows, max(0, cache_bytes) // row_bytes(codec, dim)))


def pinned_dram_bytes(rows: int, dim: int, cache_bytes: int, codec: str | int = "float32") -> int:
    """DRAM a ``pinned`` table takes: its rows plus the bitmap index (a quarter byte per row)."""
    cap = pinned_capacity(cache_bytes, dim, rows, codec)
    return cap * row_bytes(codec, dim) + index_bytes(rows)


def cached_dram_bytes(rows: int, dim: int, cache_bytes: int, parts: int = 1,
                      replicated: int = 0, codec: str | int = "float32") -> int:  # fmt: skip
    """DRAM a ``cached`` table takes: its cache's rows (encoded in ``codec``) plus the 4-byte
    slot index per row; for a cached split, ``parts`` caches of ``cache_bytes`` plus
    ``replicated`` rows each, over one shared slot index."""
    per_part = min(rows, replicated + capacity_rows(cache_bytes, dim, rows, codec))
    return parts * per_part * cache_row_bytes(dim, codec) + 4 * rows
