"""Miss-ratio curves by miniature cache simulation (exact, or SHARDS-style spatial sampling).

One table at a time: every configuration (cache bytes x admission threshold x pinned share) is
a mini cache, and each batch of the trace goes through all of them in one pass, through the
store's own cache kernel (see :mod:`bandstore.tune.sim.kernels`), so an exact run predicts the
store's counters bit for bit.

Sampled mode follows SHARDS (Waldspurger et al., FAST 2015), spatially: whole blocks are
sampled, so a block's rows are sampled together and the block-neighbour admission stays exact
within the sample. ``sampling="hash"`` is SHARDS' fixed-rate rule (block ``b`` is in the sample
iff ``hash(b) mod 2**32 < R * 2**32``); ``"stratified"`` (the default) sorts the blocks by
lookups and takes every ``1/R``-th (the hash breaks ties), so that the sample holds its share of
the hottest blocks, which otherwise dominate the error of small samples. The sampled blocks
form a compact sub-table (blocks renumbered, layout and inverse remapped: the kernel cannot
tell), the LRU (CLOCK) part of each mini cache is scaled by ``R`` (pinned rows are not sampled:
the mini cache pins exactly the pinned rows that fall in the sample), and counts are scaled
back (see :data:`ESTIMATORS`: by default a ratio estimator whose auxiliary variable is Che's
approximation of each row's misses, which cancels most of the luck of the draw). Exact mode
compacts the same way to the blocks the trace reads, which bounds memory by the working set.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bandstore.errors import InvalidArgumentError, InvalidShapeError
from bandstore.kernels import cache as kc
from bandstore.kernels.cache import NEVER
from bandstore.options import (
    DEFAULT_PINNED_SHARES,
    DEFAULT_THRESHOLDS,
    ESTIMATORS,
    SAMPLINGS,
    SimOptions,
    threshold_to_json,
)
from bandstore.serve.cache import cache_row_bytes, capacity_rows
from bandstore.traces.trace import check_csr
from bandstore.tune.sim import kernels as sk

__all__ = [
    "Curves",
    "DEFAULT_PINNED_SHARES",
    "DEFAULT_THRESHOLDS",
    "MAX_SAMPLED_LOOKUPS",
    "MIN_SAMPLED_BLOCKS",
    "ESTIMATORS",
    "SAMPLINGS",
    "block_sample",
    "stratified_sample",
    "size_grid",
    "simulate",
]

#: Default number of cache sizes per curve (0 bytes included).
DEFAULT_N_SIZES = SimOptions.n_sizes
#: With sampling, a table is sampled at a rate that keeps at least this many of the blocks the
#: trace reads (a 1% sample of a 100-block table says nothing)...
MIN_SAMPLED_BLOCKS = SimOptions.min_sampled_blocks
#: ...unless that would simulate more than this many lookups: a small table with many lookups
#: is sampled down to it (never below the requested rate). Together they bound the cost of a
#: table (about lookups x configurations) and keep the sample's block count useful.
MAX_SAMPLED_LOOKUPS = SimOptions.max_sampled_lookups
#: Lookups mapped to blocks at a time (bounds the temporaries of a long trace).
_MAP_CHUNK = 1 << 22

#: How sampled counters are scaled back to the whole trace (:data:`ESTIMATORS`, defined with
#: the options in :mod:`bandstore.options`):
#: ``"lookups"``: plain SHARDS, the sample's miss ratio (misses / sampled lookups) times the
#: lookups; ``"adjusted"``: SHARDS_adj, misses / R (the sample's excess or shortfall of lookups
#: over the expected ``R * lookups`` counted as hits); ``"che"``: a ratio estimator whose
#: auxiliary variable is the misses Che's approximation predicts per row from the exact access
#: counts (batch-granular, pinned rows excluded): the sample's misses times (predicted misses of
#: all rows / predicted misses of the sampled rows). Heavy rows in or out of the sample then
#: move the numerator and the denominator together.

_HASH_SPACE = 1 << 32


@dataclass(frozen=True)
class Curves:
    """Miss-ratio curves of one table: predicted counters for every simulated configuration.

    ``misses`` and ``blocks_read`` have shape ``(thresholds, pinned_shares, sizes)`` and are
    estimates for the whole trace (exact when ``sample_rate == 1``).
    """

    sizes_bytes: np.ndarray
    capacity_rows: np.ndarray
    thresholds: np.ndarray
    pinned_shares: np.ndarray
    lookups: int
    misses: np.ndarray
    blocks_read: np.ndarray
    rows: int
    dim: int
    rows_per_block: int
    block_size: int
    sample_rate: float = 1.0
    sampled_lookups: int = 0
    sampled_blocks: int = 0
    touched_blocks: int = 0
    configurations: int = 0
    seconds: float = 0.0
    table: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    #: The table's codec: cache slots hold rows encoded, so it sets a cached row's DRAM cost.
    codec: str = "float32"

    @property
    def exact(self) -> bool:
        return self.sample_rate >= 1.0

    @property
    def miss_ratio(self) -> np.ndarray:
        """Misses per lookup, shape ``(thresholds, pinned_shares, sizes)``."""
        return self.misses / self.lookups if self.lookups else np.zeros_like(self.misses)

    @property
    def hit_ratio(self) -> np.ndarray:
        return 1.0 - self.miss_ratio if self.lookups else np.zeros_like(self.misses)

    @property
    def blocks_per_lookup(self) -> np.ndarray:
        """Blocks read per lookup, shape ``(thresholds, pinned_shares, sizes)``."""
        return self.blocks_read / self.lookups if self.lookups else np.zeros_like(self.blocks_read)

    @property
    def smallest_useful_bytes(self) -> int:
        """DRAM for one block's worth of rows: less cannot even keep the rows of one read."""
        return min(self.rows, self.rows_per_block) * cache_row_bytes(self.dim, self.codec)

    def merge(self, other: Curves) -> Curves:
        """These curves and ``other``'s (more sizes of the same table and policies) as one."""
        if not (np.array_equal(self.thresholds, other.thresholds)
                and np.array_equal(self.pinned_shares, other.pinned_shares)
                and self.lookups == other.lookups and self.rows == other.rows):  # fmt: skip
            raise InvalidArgumentError("curves of different tables or policies", argument="other")
        sizes = np.concatenate([self.sizes_bytes, other.sizes_bytes])
        sizes, first = np.unique(sizes, return_index=True)
        cat = lambda a, b: np.concatenate([a, b], axis=-1)[..., first]  # noqa: E731
        return replace(
            self,
            sizes_bytes=sizes,
            capacity_rows=cat(self.capacity_rows, other.capacity_rows),
            misses=cat(self.misses, other.misses),
            blocks_read=cat(self.blocks_read, other.blocks_read),
            configurations=self.configurations + other.configurations,
            seconds=self.seconds + other.seconds,
        )

    def envelope(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per size, the fewest blocks read over thresholds and pinned shares, and where.

        Returns ``(blocks_read (S,), threshold index (S,), pinned-share index (S,))``; ties go
        to the first threshold and share in the given order.
        """
        t, p, s = self.blocks_read.shape
        flat = self.blocks_read.reshape(t * p, s)
        best = np.argmin(flat, axis=0)
        return flat[best, np.arange(s)], best // p, best % p

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists; thresholds that never admit are None)."""
        return {
            "table": self.table,
            "rows": self.rows,
            "dim": self.dim,
            "codec": self.codec,
            "rows_per_block": self.rows_per_block,
            "lookups": self.lookups,
            "sample_rate": self.sample_rate,
            "sampled_lookups": self.sampled_lookups,
            "sizes_bytes": self.sizes_bytes.tolist(),
            "capacity_rows": self.capacity_rows.tolist(),
            "thresholds": [threshold_to_json(t) for t in self.thresholds],
            "pinned_shares": self.pinned_shares.tolist(),
            "miss_ratio": self.miss_ratio.tolist(),
            "blocks_per_lookup": self.blocks_per_lookup.tolist(),
            "seconds": self.seconds,
        }


def _hash(values: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of uint64 ``values`` (and ``seed``): a cheap, well-mixed 64-bit hash."""
    z = values.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (int(seed) + 1)) % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def block_sample(n_blocks: int, rate: float, seed: int = 0) -> np.ndarray:
    """Bool mask of the blocks in a spatial sample at ``rate``: ``hash(b) mod 2**32 < R * 2**32``.

    The hash is splitmix64 of the block id (and ``seed``), so the sample is a deterministic,
    well-mixed set whose size is ``rate * n_blocks`` on average.
    """
    h = _hash(np.arange(n_blocks, dtype=np.uint64), seed)
    return (h >> np.uint64(32)) < np.uint64(min(_HASH_SPACE, int(rate * _HASH_SPACE)))


def stratified_sample(lookups_per_block: np.ndarray, rate: float, seed: int = 0) -> np.ndarray:
    """Bool mask of a systematic sample of the read blocks, in order of lookups (hash on ties).

    Exactly ``round(rate * read blocks)`` (+-1) blocks, with as many hot, warm and cold blocks
    as the rate says: the variance of which heavy blocks land in the sample goes away, the
    block is still the unit of sampling.
    """
    lpb = np.asarray(lookups_per_block)
    read = np.flatnonzero(lpb)
    h = _hash(read.astype(np.uint64), seed)
    order = read[np.lexsort((h, -lpb[read]))]
    u = float(_hash(np.array([read.size], dtype=np.uint64), seed + 1)[0] >> np.uint64(11)) / 2**53
    pos = np.floor(np.arange(read.size + 1, dtype=np.float64) * rate + u)
    out = np.zeros(lpb.shape[0], dtype=bool)
    out[order[pos[1:] > pos[:-1]]] = True
    return out


def size_grid(rows: int, dim: int, rows_per_block: int, max_rows: int | None = None,
              n_sizes: int = DEFAULT_N_SIZES, codec: str = "float32") -> np.ndarray:  # fmt: skip
    """Cache sizes (bytes) for a curve: 0, then geometric from one block's rows to ``max_rows``.

    ``max_rows`` defaults to the whole table; the rows of the blocks a trace reads are all a
    cache can ever hold, which is the natural upper end.
    """
    hi = rows if max_rows is None else max(0, min(rows, int(max_rows)))
    lo = max(1, min(rows_per_block, hi))
    n = max(2, int(n_sizes)) - 1
    if hi <= 0:
        caps = np.zeros(1, dtype=np.int64)
    else:
        geo = np.geomspace(lo, hi, n) if hi > lo else np.array([float(hi)])
        caps = np.unique(np.concatenate([[0], np.round(geo).astype(np.int64)]))
    return caps * cache_row_bytes(dim, codec)


def _as_ids(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise InvalidShapeError(f"{name} must be 1-D, got shape {arr.shape}", argument=name,
                                shape=arr.shape)  # fmt: skip
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name} must hold integers, got dtype {arr.dtype}",
                                   argument=name)  # fmt: skip
    return np.ascontiguousarray(arr, dtype=np.int64)


def simulate(
    indices: Any,
    offsets: Any,
    layout: Any,
    rows_per_block: int,
    dim: int,
    counts: Any = None,
    *,
    options: SimOptions | None = None,
    sizes_bytes: Sequence[int] | np.ndarray | None = None,
    warmup_queries: int = 0,
    block_size: int = 4096,
    row_bytes: int = 0,
    inverse_layout: np.ndarray | None = None,
    table: str | None = None,
    check: bool = True,
    codec: str = "float32",
) -> Curves:
    """Simulate the store's cache over one table's trace for many configurations in one pass.

    Args:
        indices, offsets: the table's lookups, one bag per query (EmbeddingBag CSR).
        layout: id -> slot of the table (its length is the table's rows).
        rows_per_block, dim: the table's geometry (``dim`` and ``codec`` set the DRAM cost of a
            cached row, which the cache holds encoded: ``cache_row_bytes(dim, codec)``).
        counts: access counts used for admission and pinning (None: all zero).
        options: the policies simulated at every size (``thresholds`` x ``pinned_shares``),
            the batch size of the replay being predicted, the sampling (``sample_rate``: 1 for
            exact, else the SHARDS rate R; ``sampling``: ``"hash"``, block b in the sample iff
            its hash is below R, or ``"stratified"``, blocks sorted by lookups and one in every
            1/R taken systematically; ``estimator``, see :data:`ESTIMATORS`), threads and
            memory; see :class:`bandstore.options.SimOptions` (default: its defaults).
        sizes_bytes: cache sizes; default :func:`size_grid` (``options.n_sizes`` of them) up to
            the rows of the blocks read.
        warmup_queries: the first queries only warm the caches: the counters (and ``lookups``)
            are those of the queries after them, as for a replay of the warm-up queries, then
            of the rest (each part cut in batches from its own start).
        block_size, row_bytes: the table's block geometry (for the reported figures).
        inverse_layout: slot -> id (-1 for holes) if the caller has it (saves building it).
        table: the table's name (in error messages and the result).
        check: validate the arrays (the store-level API passes the store's own, valid ones).
    """
    t0 = time.perf_counter()
    o = options if options is not None else SimOptions()
    if not isinstance(o, SimOptions):
        raise InvalidArgumentError(
            f"options must be a bandstore.options.SimOptions, got {type(o).__name__}",
            argument="options",
        )
    rate = float(o.sample_rate)
    batch_size, seed, sampling, estimator = o.batch_size, o.seed, o.sampling, o.estimator
    min_sampled_blocks, max_sampled_lookups = o.min_sampled_blocks, o.max_sampled_lookups
    rpb = int(rows_per_block)
    dim = int(dim)
    if rpb < 1 or dim < 1:
        raise InvalidArgumentError(
            f"rows_per_block and dim must be >= 1, got {rows_per_block}, {dim}",
            argument="rows_per_block",
        )
    layout = _as_ids(layout, "layout")
    rows = int(layout.shape[0])
    if check:
        indices, offsets = check_csr(table or "table", indices, offsets, rows)
    else:
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    ts = np.array(o.thresholds, dtype=np.int64)
    ps = np.array(o.pinned_shares, dtype=np.float64)
    if counts is None:
        cnt = np.zeros(rows, dtype=np.int32)
    else:
        c = np.asarray(counts)
        if c.shape != (rows,) or c.dtype.kind not in "iu" or (c.size and c.min() < 0):
            raise InvalidShapeError(
                f"counts must be {rows} non-negative integers (one per row of the layout)",
                argument="counts",
                shape=c.shape,
            )
        # The store keeps counts as int32, clipped: admit and pin by the same numbers.
        cnt = np.ascontiguousarray(np.minimum(c, 2**31 - 1), dtype=np.int32)

    if inverse_layout is None:
        if rows and layout.min() < 0:
            raise InvalidArgumentError("layout has a negative slot", argument="layout")
        n_slots = (int(layout.max()) // rpb + 1) * rpb if rows else 0
        inverse = np.full(n_slots, -1, dtype=np.int64)
        inverse[layout] = np.arange(rows, dtype=np.int64)
        if check and rows and not np.array_equal(inverse[layout], np.arange(rows)):
            raise InvalidArgumentError("layout gives one slot to two ids", argument="layout")
    else:
        inverse = np.asarray(inverse_layout)
    n_blocks = inverse.shape[0] // rpb

    # Blocks the trace reads, and the sample. The trace is mapped in chunks: a whole-trace
    # int64 temporary costs 8 bytes per lookup (800 MB at 100M lookups), and several were alive
    # at once.
    n_lookups = int(indices.shape[0])
    chunks = [(s, min(s + _MAP_CHUNK, n_lookups)) for s in range(0, n_lookups, _MAP_CHUNK)]
    per_block = np.zeros(n_blocks, dtype=np.int64)
    for s, e in chunks:
        per_block += np.bincount(layout[indices[s:e]] // rpb, minlength=n_blocks)
    touched = per_block > 0
    n_touched = int(np.count_nonzero(touched))
    if sizes_bytes is None:
        sizes = size_grid(rows, dim, rpb, min(rows, n_touched * rpb), o.n_sizes, codec)
    else:
        sizes = np.asarray(sizes_bytes, dtype=np.int64)
        if sizes.ndim != 1 or sizes.size == 0 or sizes.min() < 0:
            raise InvalidArgumentError("sizes_bytes must be a non-empty list of sizes >= 0",
                                       argument="sizes_bytes")  # fmt: skip
    if rate < 1.0 and n_touched:
        cap = 1.0 if max_sampled_lookups is None else max_sampled_lookups / indices.shape[0]
        rate = min(1.0, max(rate, min(min_sampled_blocks / n_touched, cap)))
    if rate < 1.0:
        if sampling == "stratified":
            in_sample = stratified_sample(per_block, rate, seed)
        else:
            in_sample = block_sample(n_blocks, rate, seed)
        selected = touched & in_sample
    else:
        in_sample = None
        selected = touched

    # Compact sub-table: the selected blocks renumbered 0..k-1, their rows numbered in slot order.
    sel = np.flatnonzero(selected)
    new_block = np.full(n_blocks, -1, dtype=np.int64)
    new_block[sel] = np.arange(sel.size, dtype=np.int64)
    old_of_pos = inverse.reshape(n_blocks, rpb)[sel].reshape(-1) if sel.size else inverse[:0]
    valid = old_of_pos >= 0
    n_compact = int(np.count_nonzero(valid))
    c_layout = np.flatnonzero(valid).astype(np.int64)  # compact id -> compact slot
    c_inverse = np.full(old_of_pos.shape[0], -1, dtype=np.int64)
    c_inverse[c_layout] = np.arange(n_compact, dtype=np.int64)
    c_counts = np.ascontiguousarray(cnt[old_of_pos[valid]])

    def to_compact(slots: np.ndarray) -> np.ndarray:
        """Compact ids of the rows at ``slots`` (-1 where the block is not selected)."""
        nb = new_block[slots // rpb]
        ok = nb >= 0
        out = np.full(slots.shape[0], -1, dtype=np.int64)
        out[ok] = c_inverse[nb[ok] * rpb + slots[ok] % rpb]
        return out

    if in_sample is None:
        ids = np.empty(n_lookups, dtype=np.int64)
        for s, e in chunks:
            ids[s:e] = to_compact(layout[indices[s:e]])
        kept_before = offsets
    else:
        keep = np.empty(n_lookups, dtype=bool)
        for s, e in chunks:
            keep[s:e] = selected[layout[indices[s:e]] // rpb]
        cum = np.zeros(n_lookups + 1, dtype=np.int64)
        np.cumsum(keep, out=cum[1:])
        ids = np.empty(int(cum[-1]), dtype=np.int64)
        for s, e in chunks:
            ids[cum[s] : cum[e]] = to_compact(layout[indices[s:e][keep[s:e]]])
        kept_before = cum[offsets]
        del keep, cum
    n_queries = offsets.shape[0] - 1
    w = int(warmup_queries)
    if not 0 <= w <= n_queries:
        raise InvalidArgumentError(
            f"warmup_queries must be in [0, {n_queries}], got {warmup_queries}",
            argument="warmup_queries",
        )
    qb = np.concatenate([np.arange(0, w, int(batch_size)), np.arange(w, n_queries, int(batch_size)),
                         [n_queries]]).astype(np.int64)  # fmt: skip
    n_warm = int(np.count_nonzero(qb < w))  # batches of the warm-up part
    bounds = np.ascontiguousarray(kept_before[qb], dtype=np.int64)
    sampled_lookups = int(ids.shape[0] - bounds[n_warm])

    # Configurations.
    caps = np.array([capacity_rows(int(s), dim, rows, codec) for s in sizes], dtype=np.int64)
    nonzero = int(np.count_nonzero(cnt))
    order = np.argsort(-cnt.astype(np.int64), kind="stable")[:nonzero]
    if nonzero:
        o_slots = layout[order]
        o_compact = to_compact(o_slots)
        o_in_sample = np.ones(nonzero, bool) if in_sample is None else in_sample[o_slots // rpb]
        cum_sample = np.concatenate([[0], np.cumsum(o_in_sample)])
        cum_compact = np.concatenate([[0], np.cumsum(o_compact >= 0)])
        pinned_list = np.ascontiguousarray(o_compact[o_compact >= 0])
    else:
        cum_sample = cum_compact = np.zeros(1, dtype=np.int64)
        pinned_list = np.zeros(0, dtype=np.int64)
    max_count = int(c_counts.max()) if n_compact else 0
    min_count = int(c_counts.min()) if n_compact else 0

    keys: dict[tuple[int, int, int, int], int] = {}
    config_of = np.zeros((ts.size, ps.size, sizes.size), dtype=np.int64)
    cfg: list[tuple[int, int, int, int]] = []
    for i, t in enumerate(ts):
        # Thresholds no count reaches (or every count reaches) behave the same.
        t_eff = NEVER if t > max_count else (0 if t <= min_count else int(t))
        for j, share in enumerate(ps):
            for k, cap in enumerate(caps):
                pin_req = int(share * cap)  # as Store: int(pinned_share * capacity)
                n_pin = min(pin_req, nonzero)
                n_pin_s = int(cum_sample[n_pin])
                n_load = int(cum_compact[n_pin])
                lru = int(cap) - n_pin
                if in_sample is not None:
                    lru = int(round(rate * lru))
                mini = min(n_pin_s + lru, n_pin_s + n_compact)
                key = (mini, n_pin_s, n_load, t_eff if mini > n_pin_s else NEVER)
                if key not in keys:
                    keys[key] = len(cfg)
                    cfg.append(key)
                config_of[i, j, k] = keys[key]

    stats = _run_configs(
        ids, bounds, c_counts, c_layout, c_inverse, rpb, block_size, row_bytes, n_compact,
        pinned_list, cfg, o.workers, o.memory_limit, n_warm,
    )  # fmt: skip

    measured = indices[offsets[w] :]
    lookups = int(measured.shape[0])
    block_scale: Any = None  # only the che estimator scales blocks by a factor of their own
    if in_sample is None:
        scale: Any = 1.0
    elif estimator == "adjusted":
        scale = 1.0 / rate
    elif estimator == "lookups":
        scale = lookups / sampled_lookups if sampled_lookups else 0.0
    else:
        n_batches = qb.size - 1 - n_warm
        scale, block_scale = _che_scale(measured, layout, rpb, in_sample, caps, ps, order,
                                        n_batches)  # fmt: skip
        scale, block_scale = scale[None, :, :], block_scale[None, :, :]
    misses = stats[:, kc.STAT_MISSES].astype(np.float64)[config_of] * scale
    blocks = stats[:, kc.STAT_BLOCKS_READ].astype(np.float64)[config_of] * (
        scale if block_scale is None else block_scale
    )
    if in_sample is not None:
        np.minimum(misses, lookups, out=misses)
    return Curves(
        sizes_bytes=sizes,
        capacity_rows=caps,
        thresholds=ts,
        pinned_shares=ps,
        lookups=lookups,
        misses=misses,
        blocks_read=blocks,
        rows=rows,
        dim=dim,
        codec=str(codec),
        rows_per_block=rpb,
        block_size=int(block_size),
        sample_rate=rate,
        sampled_lookups=sampled_lookups,
        sampled_blocks=int(sel.size),
        touched_blocks=n_touched,
        configurations=len(cfg),
        seconds=time.perf_counter() - t0,
        table=table,
    )


def _run_configs(ids, bounds, counts, layout, inverse, rpb, block_size, row_bytes, n_rows,
                 pinned_list, cfg, workers, memory_limit, n_warm=0) -> np.ndarray:  # fmt: skip
    """Run every mini cache of ``cfg`` over the batches; return their counters (C, N_STATS).

    Configurations are split into groups that fit ``memory_limit`` and spread over threads; each
    group is one pass over the trace.
    """
    n_cfg = len(cfg)
    stats = np.zeros((n_cfg, kc.N_STATS), dtype=np.int64)
    if n_cfg == 0:
        return stats
    workers = max(1, int(workers or os.cpu_count() or 1))
    cost = [4 * n_rows + 9 * c[0] + 64 for c in cfg]
    # Low thresholds (many admissions) and small caches (many misses) cost the most: deal the
    # configurations round-robin in that order so that every group gets its share of each.
    by_size = sorted(range(n_cfg), key=lambda c: (cfg[c][3], cfg[c][0]))
    # More groups than threads, so that a thread finishing early takes the next one.
    n_groups = max(4 * workers, math.ceil(sum(cost) / max(1, memory_limit // workers)))
    n_groups = min(n_groups, n_cfg)
    groups = [by_size[g::n_groups] for g in range(n_groups)]

    def run(group: list[int]) -> None:
        g = len(group)
        mini = np.array([cfg[c][0] for c in group], dtype=np.int64)
        slot_start = np.zeros(g + 1, dtype=np.int64)
        np.cumsum(mini, out=slot_start[1:])
        slot_of_id = np.full((g, n_rows), -1, dtype=np.int32)
        id_of_slot = np.full(int(slot_start[-1]), -1, dtype=np.int64)
        ref = np.zeros(int(slot_start[-1]), dtype=np.uint8)
        meta = np.zeros((g, 4), dtype=np.int64)
        meta[:, kc.META_CAPACITY] = mini
        n_pinned = np.array([cfg[c][1] for c in group], dtype=np.int64)
        n_load = np.array([cfg[c][2] for c in group], dtype=np.int64)
        thresholds = np.array([cfg[c][3] for c in group], dtype=np.int64)
        sk._init_caches(pinned_list, n_load, n_pinned, slot_of_id, id_of_slot, slot_start, meta,
                        layout, rpb)  # fmt: skip
        out = np.zeros((g, kc.N_STATS), dtype=np.int64)
        state = (slot_of_id, id_of_slot, ref, slot_start, meta)
        fixed = (counts, thresholds, layout, inverse, rpb, block_size, row_bytes)
        if n_warm:  # the same caches, counters thrown away
            warm = np.ascontiguousarray(bounds[: n_warm + 1])
            sk._run_batches(ids, warm, *fixed, *state, np.zeros_like(out))
        sk._run_batches(ids, np.ascontiguousarray(bounds[n_warm:]), *fixed, *state, out)
        stats[group] = out

    if workers == 1 or len(groups) == 1:
        for grp in groups:
            run(grp)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(run, grp) for grp in groups]:
                f.result()
    return stats


def _che_scale(indices, layout, rpb, in_sample, caps, shares, order, n_batches
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Ratio-estimator factors (pinned shares x sizes) for the ``"che"`` estimator: one for the
    misses, one for the blocks read.

    Che's approximation in batch time: a row read in a fraction ``p = 1 - exp(-c / n_batches)``
    of the batches stays cached ``T`` batches after it was last read (see :func:`_miss_prob`
    for a ``T`` that is not whole: a cache smaller than a batch's misses keeps only part of
    them), ``T`` such that the expected rows cached is the cache's unpinned capacity; a batch
    that reads the row misses with probability ``_miss_prob(p, T)``, its first batch always.
    The factor is (predicted misses, all rows) / (predicted misses, sampled rows). Pinned rows
    (the first rows of ``order``) always hit and are left out of both. Neighbour admission is
    not modelled: the factor only has to move with the sample's luck, not to be a prediction.

    Misses count lookups, but a batch reads a missed row's block once however often it asks
    for the row: the blocks' factor weighs each row by the batches in which it misses
    (``x * k / v``), not by its missed lookups. With one factor for both, a hot row in or out of
    the sample swung the blocks of a small cache by its within-batch repeats (a skewed
    criteo-8k table, no cache, 10% sample: 0.44 blocks per lookup predicted, 0.60 exact).
    """
    rows = layout.shape[0]
    tc = np.bincount(indices, minlength=rows)
    smp = in_sample[layout // rpb]
    hist = np.bincount(tc)
    vals = np.flatnonzero(hist)
    lut = np.zeros(hist.size, dtype=np.int64)
    lut[vals] = np.arange(vals.size)
    inv = lut[tc]
    m_all = np.bincount(inv, minlength=vals.size).astype(np.float64)
    m_smp = np.bincount(inv[smp], minlength=vals.size).astype(np.float64)
    m_all[vals == 0] = 0.0
    m_smp[vals == 0] = 0.0
    v = vals.astype(np.float64)
    p = -np.expm1(-v / max(1, n_batches))
    k = np.maximum(1.0, n_batches * p)  # batches that read the row
    logq = np.log1p(-np.minimum(p, 1.0 - 1e-12))
    per_lookup = np.divide(k, v, out=np.zeros_like(v), where=v > 0)  # batches per lookup
    out = np.ones((shares.size, caps.size), dtype=np.float64)
    out_blocks = np.ones_like(out)
    by_cap = np.argsort(caps, kind="stable")
    for j, share in enumerate(shares):
        pin_all = np.zeros(vals.size, dtype=np.float64)
        pin_smp = np.zeros(vals.size, dtype=np.float64)
        done = 0
        for i in by_cap:
            cap = int(caps[i])
            n_pin = min(int(share * cap), order.shape[0])
            if n_pin > done:
                new = order[done:n_pin]
                pin_all += np.bincount(inv[new], minlength=vals.size)
                pin_smp += np.bincount(inv[new[smp[new]]], minlength=vals.size)
                done = n_pin
            a = m_all - pin_all
            b = m_smp - pin_smp
            a[vals == 0] = 0.0
            b[vals == 0] = 0.0
            free = cap - n_pin
            if free <= 0:
                x = v
            elif free >= a.sum():
                x = v / k
            else:
                lo, hi = 0.0, 1e15
                for _ in range(100):
                    mid = 0.5 * (lo + hi) if hi < 4.0 else math.sqrt(max(lo, 1e-9) * hi)
                    if float(np.dot(a, 1.0 - _miss_prob(logq, p, mid))) < free:
                        lo = mid
                    else:
                        hi = mid
                x = v / k * (1.0 + (k - 1.0) * _miss_prob(logq, p, lo))
            tx, txs = float(np.dot(a, x)), float(np.dot(b, x))
            out[j, i] = tx / txs if txs > 0 else 0.0
            xb = x * per_lookup  # batches in which the row misses
            tb, tbs = float(np.dot(a, xb)), float(np.dot(b, xb))
            out_blocks[j, i] = tb / tbs if tbs > 0 else 0.0
    return out, out_blocks


def _miss_prob(logq: np.ndarray, p: np.ndarray, t: float) -> np.ndarray:
    """P(a row read in a fraction ``p`` of the batches was not read in the last ``t`` batches).

    Whole batches count fully; of the oldest, partly kept batch only a share ``t - floor(t)``
    of its rows is still cached (a batch's misses are admitted in block order, and a cache
    smaller than a batch keeps only the last ones): ``(1 - p)**floor(t) * (1 - frac(t) * p)``.
    """
    n = math.floor(t)
    return np.exp(logq * n) * (1.0 - (t - n) * p)
