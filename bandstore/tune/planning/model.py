"""The cost model: per-table profiles from a trace, and each strategy's time per batch and DRAM.

A profile says what one ``lookup_many`` batch asks of a table: lookups and bags per batch, and
from a miss-ratio curve (miniature cache simulation of the table's trace at the batch size,
``bandstore.tune.sim``), the misses and distinct blocks per lookup at each cache size; the curve at
size 0 is the ``direct`` strategy (distinct blocks of a batch). The model combines it with the
calibrated costs (``bandstore.tune.planning.calibrate``):

- resident: ``L * gather(table bytes)``
- cached(c): ``L * (probe(rows) + hit * gather(c)) + misses * row + blocks * (block + admit)``
- pinned(c): as cached, from the pinned curve (the ``c`` rows most counted in the first half of
  the trace, measured on the second half), with no admission and a probe of a bitmap index
  16x smaller than a cache's slot index
- direct: ``L * row + blocks(0) * block``
- a split in k parts: each part does ``1/k`` of its inner strategy's work (a cached split's
  parts keep the hit ratio of the whole cache, by the SHARDS argument: a hash-sampled share of
  the ids in a proportional share of the cache), plus the part selection for a cached split.

Everything is per batch of ``batch_size`` queries, in nanoseconds; DRAM is in bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandstore.errors import InvalidArgumentError, UnknownTableError
from bandstore.serve.cache import cache_row_bytes, capacity_rows
from bandstore.serve.strategies import cached_dram_bytes, pinned_capacity, pinned_dram_bytes
from bandstore.storage.codecs import row_bytes
from bandstore.tune.planning.calibrate import Calibration

#: Capacities of a pinned curve (log-spaced up to the rows a trace reads), beside the cache
#: curve's sizes.
PINNED_GRID = 64
#: Replicate, in a cached split, the rows that each take at least this share of its lookups.
HOT_ROW_SHARE = 1e-3
MAX_HOT_ROWS = 4096


@dataclass
class TableProfile:
    """What one batch asks of one table, and its miss-ratio curve at that batch size."""

    name: str
    rows: int
    dim: int
    codec: str
    rows_per_block: int
    block_size: int
    lookups: float  # per batch
    bags: float  # per batch
    sizes_bytes: np.ndarray  # cache sizes of the curve (0 first)
    misses_per_lookup: np.ndarray
    blocks_per_lookup: np.ndarray
    hot_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    verify: bool = True
    #: The trace's access counts (they rank a ``pinned`` table's rows), and the pinned curve:
    #: misses and blocks per lookup when the ``pinned_rows`` most counted rows are held (empty:
    #: no ``pinned`` option).
    counts: np.ndarray | None = None
    pinned_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pinned_misses_per_lookup: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pinned_blocks_per_lookup: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: Block bytes of every table the batch reads: they share the CPU caches and the TLB, so a
    #: block read costs what it costs in a file of this size, not of the table's own size.
    working_set_bytes: float = 0.0
    #: How the store reads its block files (``storage.tier``): a ``direct`` block read always
    #: goes to the device, and is priced by the calibration's O_DIRECT figure.
    io: str = "mmap"

    @property
    def file_bytes(self) -> int:
        return -(-self.rows // max(1, self.rows_per_block)) * self.block_size

    @property
    def row_bytes(self) -> int:
        """DRAM of one row held by a resident table, a cache slot or a pinned set: the row as
        its codec stores it (they decode in the pooling loop)."""
        return row_bytes(self.codec, self.dim)

    @property
    def resident_bytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def min_bytes(self) -> int:
        """The least DRAM any strategy needs: one block's rows decoded (the direct path)."""
        return min(self.rows, self.rows_per_block) * 4 * self.dim

    def at(self, cache_bytes: int) -> tuple[float, float]:
        """(misses, blocks) per lookup with a cache of ``cache_bytes`` (interpolated)."""
        x = float(cache_bytes)
        m = float(np.interp(x, self.sizes_bytes, self.misses_per_lookup))
        b = float(np.interp(x, self.sizes_bytes, self.blocks_per_lookup))
        return m, b

    def pinned_at(self, rows: int) -> tuple[float, float]:
        """(misses, blocks) per lookup of a ``pinned`` table holding ``rows`` (interpolated)."""
        x = float(rows)
        m = float(np.interp(x, self.pinned_rows, self.pinned_misses_per_lookup))
        b = float(np.interp(x, self.pinned_rows, self.pinned_blocks_per_lookup))
        return m, b

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "dim": self.dim,
            "codec": self.codec,
            "lookups_per_batch": self.lookups,
            "bags_per_batch": self.bags,
            "direct_blocks_per_lookup": float(self.blocks_per_lookup[0]),
            "hot_rows": int(self.hot_ids.size),
        }


#: A curve source: (store, table name, indices, offsets, batch_size) -> (sizes, misses per
#: lookup, blocks per lookup), sizes in bytes (0 first), in steady state (a warm cache).
CurveSource = Callable[[Any, str, np.ndarray, np.ndarray, int], tuple[Any, Any, Any]]


def simulated_curve(sample_rate: float = 0.1, n_sizes: int = 24, warmup: float = 0.25
                    ) -> CurveSource:  # fmt: skip
    """The default curve source: ``bandstore.tune.sim.mrc.simulate`` with the store's own layout,
    access counts, threshold and pinned share (SHARDS-sampled for large tables).

    The first ``warmup`` of the queries only warm the caches: the curve is the difference
    between a run over the whole trace and a run over that prefix (the simulation is
    deterministic, so both pass through the same cache states), i.e. what a warm server sees.
    """

    def source(store: Any, name: str, indices, offsets, batch_size: int):
        from bandstore.options import SimOptions
        from bandstore.tune.sim.mrc import simulate

        g = store.tables[name]
        policy = store.cache_policy(name)
        layout, inverse = store.table_layout(name)
        counts = store.table_counts(name) if store.has_counts(name) else None
        nq = offsets.shape[0] - 1
        cut = (int(warmup * nq) // batch_size) * batch_size  # whole batches, as replayed

        def run(idx, off, sizes=None):
            options = SimOptions(
                thresholds=(policy.threshold,), pinned_shares=(policy.pinned_share,),
                batch_size=batch_size, sample_rate=sample_rate, n_sizes=n_sizes,
            )  # fmt: skip
            return simulate(
                idx, off, layout, g.rows_per_block, g.dim, counts, options=options,
                sizes_bytes=sizes, block_size=g.block_size, row_bytes=g.row_bytes,
                inverse_layout=inverse, table=name, check=False, codec=g.codec,
            )  # fmt: skip

        full = run(indices, offsets)
        misses, blocks, n = full.misses[0, 0], full.blocks_read[0, 0], indices.shape[0]
        if 0 < cut < nq:
            end = int(offsets[cut])
            pre = run(indices[:end], offsets[: cut + 1], full.sizes_bytes)
            if n - end > 0:
                misses = np.maximum(misses - pre.misses[0, 0], 0.0)
                blocks = np.maximum(blocks - pre.blocks_read[0, 0], 0.0)
                n -= end
        return full.sizes_bytes, misses / max(n, 1), blocks / max(n, 1)

    return source


def profile_trace(
    store: Any,
    trace: Any,
    *,
    batch_size: int = 256,
    curves: CurveSource | Mapping[str, tuple[Any, Any, Any]] | None = None,
) -> dict[str, TableProfile]:
    """Per-table profiles of ``trace`` on ``store``'s tables (tables the trace does not read
    get an empty profile). ``curves``: a curve source, or precomputed curves by table."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(
            f"batch_size must be an integer >= 1, got {batch_size!r}", argument="batch_size"
        )
    for name in trace.table_names:
        if name not in store.tables:
            raise UnknownTableError(name, list(store.tables))
        if trace.num_rows[name] > store.tables[name].rows:
            raise InvalidArgumentError(
                f"trace reads ids up to {trace.num_rows[name] - 1} of table {name!r}, which "
                f"has {store.tables[name].rows} rows",
                argument="trace",
            )
    source = curves if curves is not None else simulated_curve()
    nq = max(1, trace.n_queries)
    batches = nq / batch_size
    out = {}
    for name, info in store.tables.items():
        if name not in trace.table_names or trace.n_lookups(name) == 0:
            zero = np.zeros(1)
            out[name] = TableProfile(
                name, info.rows, info.dim, info.codec, info.rows_per_block, info.block_size,
                0.0, 0.0, zero, zero, zero,
            )  # fmt: skip
            continue
        indices, offsets = trace.table(name)
        n = int(indices.shape[0])
        if isinstance(source, Mapping):
            sizes, miss_rate, block_rate = source[name]
        else:
            sizes, miss_rate, block_rate = source(store, name, indices, offsets, batch_size)
        sizes = np.asarray(sizes, dtype=np.float64)
        order = np.argsort(sizes, kind="stable")
        counts = np.bincount(indices, minlength=info.rows)
        hot = np.flatnonzero(counts >= max(2.0, HOT_ROW_SHARE * n))
        if hot.size > MAX_HOT_ROWS:
            hot = hot[np.argsort(-counts[hot], kind="stable")[:MAX_HOT_ROWS]]
        sizes = sizes[order]
        layout = store.table_layout(name)[0]
        # The pinned curve is exact and cheap at any capacity: a fine grid up to every row read
        # (on top of the cache curve's sizes) lets the budget be spent in small steps.
        read = int(np.count_nonzero(counts))
        fine = np.geomspace(1, max(read, 1), PINNED_GRID).astype(np.int64)
        cached = [capacity_rows(int(x), info.dim, info.rows, info.codec) for x in sizes]
        caps = np.unique(np.concatenate([cached, fine, [0]]))
        pin_m, pin_b = pinned_curve(indices, offsets, layout, info.rows_per_block, batch_size, caps)
        out[name] = TableProfile(
            name=name,
            rows=info.rows,
            dim=info.dim,
            codec=info.codec,
            rows_per_block=info.rows_per_block,
            block_size=info.block_size,
            lookups=n / batches,
            bags=min(batch_size, nq),
            sizes_bytes=sizes,
            misses_per_lookup=np.asarray(miss_rate, dtype=np.float64)[order],
            blocks_per_lookup=np.asarray(block_rate, dtype=np.float64)[order],
            hot_ids=np.sort(hot).astype(np.int64),
            verify=bool(store.verify_reads),
            io=store.io,
            counts=np.minimum(counts, 2**31 - 1).astype(np.int32),
            pinned_rows=caps,
            pinned_misses_per_lookup=pin_m,
            pinned_blocks_per_lookup=pin_b,
        )
    working_set = float(sum(p.file_bytes for p in out.values() if p.lookups > 0))
    for p in out.values():
        p.working_set_bytes = working_set
    return out


def pinned_curve(indices: np.ndarray, offsets: np.ndarray, layout: np.ndarray,
                 rows_per_block: int, batch_size: int, capacities: Any
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(misses, blocks read) per lookup of a ``pinned`` table that holds its ``c`` most counted
    rows, for each ``c`` in ``capacities``.

    The rows are ranked by the counts of the first half of the queries and the curve is measured
    on the second half, in batches of ``batch_size`` cut from its start: what a pinned set chosen
    on past traffic sees on new traffic, not the hindsight of ranking the queries it serves.
    A block is read once per batch if any of its missed rows is requested.
    """
    caps = np.asarray(capacities, dtype=np.int64)
    nq = int(offsets.shape[0]) - 1
    cut = nq // 2
    start = int(offsets[cut])
    if cut == 0 or start == indices.shape[0]:  # nothing to rank by, or nothing to measure
        return np.ones(caps.shape), np.ones(caps.shape)
    counts = np.bincount(indices[:start], minlength=layout.shape[0])
    rank = np.empty(layout.shape[0], dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(layout.shape[0])
    rank[counts == 0] = _NEVER_HELD  # (``pinned_ids`` skips count 0)
    return _ranked_curve(indices[start:], offsets[cut:] - start, rank, layout, rows_per_block,
                         batch_size, caps)  # fmt: skip


def held_curve(indices: np.ndarray, offsets: np.ndarray, held: np.ndarray, layout: np.ndarray,
               rows_per_block: int, batch_size: int) -> tuple[float, float]:  # fmt: skip
    """(misses, blocks read) per lookup of the whole trace against a pinned table that holds
    exactly the rows ``held``: what an applied plan's frozen rows give on new traffic."""
    if indices.shape[0] == 0:
        return 1.0, 1.0
    rank = np.full(layout.shape[0], _NEVER_HELD, dtype=np.int64)
    rank[held] = 0
    m, b = _ranked_curve(indices, offsets, rank, layout, rows_per_block, batch_size, [1])
    return float(m[0]), float(b[0])


_NEVER_HELD = np.iinfo(np.int64).max


def _ranked_curve(indices, offsets, rank, layout, rows_per_block, batch_size, capacities):
    """(misses, blocks) per lookup of a trace when a table holds its rows of ``rank`` below
    each capacity; batches of ``batch_size`` queries from the trace's start."""
    caps = np.asarray(capacities, dtype=np.int64)
    n = int(indices.shape[0])
    r = rank[indices]
    # A lookup misses at capacity c iff its rank is >= c.
    misses = n - np.searchsorted(np.sort(r), caps, side="left")
    # A (batch, block) group costs a read at capacity c iff its highest rank is >= c.
    query = np.repeat(np.arange(offsets.shape[0] - 1, dtype=np.int64), np.diff(offsets))
    blk = np.asarray(layout)[indices] // rows_per_block
    key = (query // batch_size) * (int(blk.max()) + 1) + blk
    order = np.argsort(key, kind="stable")
    k, rk = key[order], r[order]
    first = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
    top = np.sort(np.maximum.reduceat(rk, first))
    blocks = top.size - np.searchsorted(top, caps, side="left")
    return misses / n, blocks / n


#: The strategies a table may be given whole (``split`` is decided by the mapping).
STRATEGY_OPTIONS = ("resident", "cached", "pinned", "direct")


@dataclass(frozen=True)
class Option:
    """One way to serve a table: its strategy, cache size, time per batch and DRAM."""

    strategy: str
    cache_bytes: int
    ns: float
    dram: int


def cost(p: TableProfile, kind: str, cal: Calibration, cache_bytes: int = 0, *,
         parts: int = 1, cold: bool = False) -> float:  # fmt: skip
    """Predicted ns per batch of table ``p`` served as ``kind`` (per part when ``parts > 1``:
    the parts run at once on different workers)."""
    L = p.lookups
    if L <= 0:
        return 0.0
    file_bytes = max(p.file_bytes, p.working_set_bytes)
    block = cal.block(cold=cold, verify=p.verify, file_bytes=file_bytes, io=p.io)
    row = cal.row(p.codec, p.dim)
    if kind == "resident":
        ns = L * cal.gather(p.resident_bytes, p.dim)
    elif kind == "direct":
        _, b = p.at(0)
        ns = L * row + L * b * block
    elif kind == "cached":
        cap = capacity_rows(cache_bytes, p.dim, p.rows, p.codec)
        m, b = p.at(cap * cache_row_bytes(p.dim, p.codec))
        hit = max(0.0, 1.0 - m)
        ns = L * (cal.probe(p.rows) + hit * cal.gather(cap * p.row_bytes, p.dim)) + L * m * row
        ns += L * b * (block + cal.cache_block(p.rows_per_block))  # with admission
    elif kind == "pinned":
        cap = pinned_capacity(cache_bytes, p.dim, p.rows, p.codec)
        m, b = p.pinned_at(cap)
        hit = max(0.0, 1.0 - m)
        # The probe reads a bitmap index of a quarter byte per row, as a slot index of 4 bytes
        # per row would be for a table 16x smaller.
        probe = cal.probe(max(1, p.rows // 16))
        ns = L * (probe + hit * cal.gather(cap * p.row_bytes, p.dim)) + L * m * row + L * b * block
    else:
        raise InvalidArgumentError(f"no cost for strategy {kind!r}", argument="strategy")
    if parts > 1:
        ns = ns / parts
        if kind == "cached":
            ns += L * cal.select_ns + p.bags * p.dim * cal.combine_ns
    return ns + cal.table_ns * 0.25  # the runner's own Python work (most of it is validation)


def options(p: TableProfile, cal: Calibration, *, allowed=STRATEGY_OPTIONS,
            cold: bool = False) -> list[Option]:  # fmt: skip
    """The Pareto-optimal ways to serve ``p`` (less DRAM, or less time), by increasing DRAM."""
    opts = []
    if "direct" in allowed:
        opts.append(Option("direct", 0, cost(p, "direct", cal, cold=cold), p.min_bytes))
    if "cached" in allowed:
        seen = set()
        for s in p.sizes_bytes[1:] if p.sizes_bytes.size > 1 else []:
            cap = capacity_rows(int(s), p.dim, p.rows, p.codec)
            if cap <= 0 or cap in seen:
                continue
            seen.add(cap)
            cb = cap * cache_row_bytes(p.dim, p.codec)
            opts.append(Option("cached", cb, cost(p, "cached", cal, cb, cold=cold),
                               cached_dram_bytes(p.rows, p.dim, cb, codec=p.codec)))  # fmt: skip
    if "pinned" in allowed:  # the direct path's block of decoded rows, plus the pinned set
        for cap in p.pinned_rows[p.pinned_rows > 0]:
            cb = int(cap) * p.row_bytes
            dram = p.min_bytes + pinned_dram_bytes(p.rows, p.dim, cb, p.codec)
            opts.append(Option("pinned", cb, cost(p, "pinned", cal, cb, cold=cold), dram))
    if "resident" in allowed:
        opts.append(Option("resident", 0, cost(p, "resident", cal, cold=cold), p.resident_bytes))
    opts.sort(key=lambda o: (o.dram, o.ns))
    front: list[Option] = []
    for o in opts:
        if not front or o.ns < front[-1].ns - 1e-9:
            front.append(o)
    return front
