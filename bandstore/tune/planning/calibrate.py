"""Calibration: this machine's costs of the operations the strategies are made of.

Measured on synthetic arrays and a temporary block file (never the store's own files), with
the very kernels the store serves with, and stored in the store's catalog (``calibration``)
for the cost model. Each figure is the minimum over a few repetitions (the least disturbed).

- ``gather_ns``: one pooled row from a decoded float32 array, by array size and dim (DRAM
  latency for large arrays, cache latency for small ones): the resident path and a cache hit's
  row read.
- ``probe_ns``: a cache hit's extra work (slot index probe and CLOCK bit), by table rows.
- ``row_ns``: decoding and pooling one row from a block read, per codec (at dim 32).
- ``block_ns`` / ``block_cold_ns`` / ``verify_ns``: one distinct 4 KB block read from a warm
  (page-cached) and a cold block file of ``block_file_bytes[0]``, and the checksum share of it;
  ``block_large_ns``: the same warm read from a file of ``block_file_bytes[1]``, far beyond the
  CPU caches and the TLB's reach. A table's block cost is interpolated (log scale) at its block
  file's size (why: docs/decisions/plan.md).
- ``cache_block_ns``: what a block read costs a cache beyond ``direct`` (scanning the block's
  other rows for neighbour admission, admitting the requested rows, CLOCK eviction), at 32
  rows per block.
- ``select_ns`` / ``combine_ns``: a split table's per-lookup part selection and per-bag-value
  combination.
- ``call_ns`` / ``table_ns`` / ``dispatch_ns``: the Python cost of a ``lookup_many`` call,
  per table in it, and per helper worker woken (best case: tiny calls whose tasks the calling
  thread takes back before the helper is awake).
- ``inline_base_ns`` / ``inline_task_ns``: the break-even of two workers against one, as work
  per call (ns of CPU) = base + per task x the call's tasks. Below it a call is faster
  on the calling thread alone: handing tasks to a helper costs a wake-up and GIL transfers per
  task, and the executor serves such calls inline (docs/decisions/plan.md). Measured as the
  median per-call times of 2 and 26 resident tables, on one and on two workers, over growing
  lookups per table; the work is the executor's own estimate (its tables' sampled CPU time per
  lookup x the call's lookups).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.kernels import cache as kc
from bandstore.kernels import resident as kr
from bandstore.serve.runtime import CALIBRATION_KEY
from bandstore.storage import dram

CALIBRATION_FORMAT = 4  # 3: block reads per checksum sector; 4: the inline break-even
META_KEY = CALIBRATION_KEY
_GATHER_SIZES = (1 << 17, 1 << 21, 24 << 20, 256 << 20)
_GATHER_DIMS = (16, 64)
_PROBE_ROWS = (1 << 13, 1 << 17, 1 << 21, 1 << 24)
_PY_CALLS = 50
#: Tables per call, and lookups per table (doubling), of the inline break-even measurement.
_INLINE_TABLES = (2, 26)
_INLINE_LOOKUPS = tuple(64 << i for i in range(12))
#: Block file sizes of the block-read measurement (small, large; the large one: quick / full).
_BLOCK_FILE_BYTES = (16 << 20, 256 << 20)
_BLOCK_FILE_BYTES_QUICK = (16 << 20, 64 << 20)


@dataclass
class Calibration:
    """Measured costs in nanoseconds (see the module docstring)."""

    gather_sizes: list[int]
    gather_ns: dict[str, list[float]]  # str(dim) -> ns per row at each size
    probe_rows: list[int]
    probe_ns: list[float]
    row_ns: dict[str, float]  # codec -> ns per row at dim 32
    block_ns: float
    block_cold_ns: float
    verify_ns: float
    cache_block_ns: float
    select_ns: float
    combine_ns: float
    call_ns: float
    table_ns: float
    dispatch_ns: float
    block_size: int = 4096
    checksum_bytes: int = 4096  # the checksum sector the block reads were measured with
    block_file_bytes: list[int] = field(default_factory=lambda: list(_BLOCK_FILE_BYTES))
    block_large_ns: float = 0.0  # 0: not measured (an older calibration): block_ns throughout
    #: One distinct block read with io="direct" (O_DIRECT into a staging area, then decoded
    #: and verified); 0: not measured (an older calibration, or O_DIRECT refused where the
    #: calibration ran): the cold figure stands in.
    block_direct_ns: float = 0.0
    # Typical of a 2-vCPU VM; an older calibration lacks them (the executor uses only measured
    # ones: see bandstore.serve.runtime.attach).
    inline_base_ns: float = 100_000.0
    inline_task_ns: float = 18_000.0
    cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    measured_at: float = field(default_factory=time.time)
    seconds: float = 0.0
    format: int = CALIBRATION_FORMAT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Parse a stored calibration; figures it lacks (an older format) take the defaults."""
        names = set(cls.__dataclass_fields__)
        base = default_calibration().as_dict()
        base.update({k: v for k, v in d.items() if k in names})
        if "block_large_ns" not in d:  # format 1 measured one file size: use it for every size
            base["block_large_ns"] = 0.0
        return cls(**base)

    # ---- the cost functions the model uses ---------------------------------------------------
    def gather(self, array_bytes: float, dim: int) -> float:
        """ns to pool one row of ``dim`` floats from a float32 array of ``array_bytes``."""
        x = np.log(max(float(array_bytes), 1.0))
        xs = np.log(np.asarray(self.gather_sizes, dtype=np.float64))
        lo_d, hi_d = _GATHER_DIMS
        g_lo = float(np.interp(x, xs, self.gather_ns[str(lo_d)]))
        g_hi = float(np.interp(x, xs, self.gather_ns[str(hi_d)]))
        slope = (g_hi - g_lo) / (hi_d - lo_d)
        return max(0.1, g_lo + slope * (dim - lo_d))

    def probe(self, rows: int) -> float:
        """ns of a cache hit's probe of a table of ``rows`` rows (beyond the row gather)."""
        x = np.log(max(float(rows), 1.0))
        xs = np.log(np.asarray(self.probe_rows, dtype=np.float64))
        return max(0.0, float(np.interp(x, xs, self.probe_ns)))

    def row(self, codec: str, dim: int) -> float:
        """ns to decode and pool one row read from a block."""
        return self.row_ns.get(codec, self.row_ns["float32"]) * max(dim, 1) / 32.0

    def inline_below(self) -> tuple[float, float]:
        """The executor's rule: (base ns, ns per task) of work below which a call runs inline."""
        return self.inline_base_ns, self.inline_task_ns

    def cache_block(self, rows_per_block: int) -> float:
        """ns a cache adds to a block read (neighbour scan and admission)."""
        return self.cache_block_ns * rows_per_block / 32.0

    def block(self, cold: bool = False, verify: bool = True, file_bytes: float = 0.0,
              io: str = "mmap") -> float:  # fmt: skip
        """ns per distinct block read (warm page cache unless ``cold``) from a block file of
        ``file_bytes`` (0: the small calibration file); with ``io="direct"`` every read goes to
        the device: the O_DIRECT figure, cold or not."""
        b = self.block_ns
        if self.block_large_ns > 0 and file_bytes > 0:
            xs = np.log(np.asarray(self.block_file_bytes[:2], dtype=np.float64))
            b = float(
                np.interp(np.log(float(file_bytes)), xs, [self.block_ns, self.block_large_ns])
            )
        if cold:
            b = max(b, self.block_cold_ns)
        if io == "direct":
            b = max(b, self.block_direct_ns or self.block_cold_ns)
        return b if verify else max(0.0, b - self.verify_ns)


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _bags(n: int, bag: int) -> np.ndarray:
    return np.arange(0, n + 1, bag, dtype=np.int64)


def _measure_gather(rng: np.random.Generator, repeats: int, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    no_w = np.empty(0, dtype=np.float32)
    stats = np.zeros(kc.N_STATS, dtype=np.int64)
    for dim in _GATHER_DIMS:
        vals = []
        for size in _GATHER_SIZES:
            rows = max(64, size // (4 * dim))
            # Allocated as the store does, and held as it holds rows: their encoded bytes.
            data = dram.full((rows, dim), 0.5, np.float32).view(np.uint8)
            ids = rng.integers(0, rows, n)
            off = _bags(n, 32)
            out_arr = np.zeros((off.size - 1, dim), dtype=np.float32)

            def run(ids=ids, off=off, out_arr=out_arr, data=data, dim=dim):
                kr._gather_pool_encoded(ids, off, no_w, kc.MODE_SUM, -1, out_arr, data, 0, stats)

            vals.append(_best(run, repeats) / n * 1e9)
            del data
        out[str(dim)] = vals
    return out


def _hit_setup(rows: int, dim: int):
    """An all-hit cache of ``rows`` rows, its arrays allocated as the store's are."""
    slot_of_id = dram.copy(np.arange(rows, dtype=np.int32))
    id_of_slot = dram.copy(np.arange(rows, dtype=np.int64))
    ref = dram.zeros(rows, np.uint8)
    meta = np.array([0, rows, 0, rows], dtype=np.int64)
    data = dram.full((rows, dim), 0.5, np.float32).view(np.uint8)  # encoded float32 rows
    return slot_of_id, id_of_slot, ref, meta, data


def _measure_probe(rng, repeats: int, n: int) -> list[float]:
    """ns per hit beyond the gather of its row: the cache kernel on an all-hit cache, against
    the gather kernel on the same rows and ids, timed in turns (a difference of two timings
    taken minutes apart moved with the machine's load, and the planner's choices with it)."""
    dim = 16
    vals = []
    no_w = np.empty(0, dtype=np.float32)
    empty_u8 = np.empty(0, dtype=np.uint8)
    empty_sums = np.empty(0, dtype=np.uint64)
    for rows in _PROBE_ROWS:
        slot_of_id, id_of_slot, ref, meta, data = _hit_setup(rows, dim)
        counts = dram.zeros(rows, np.int32)
        layout = np.arange(rows, dtype=np.int64)
        ids = rng.integers(0, rows, n)
        off = _bags(n, 32)
        out = np.zeros((off.size - 1, dim), dtype=np.float32)
        stats = np.zeros(kc.N_STATS, dtype=np.int64)
        err = np.zeros(1, dtype=np.int64)

        def hit(ids=ids, off=off, out=out, a=(slot_of_id, id_of_slot, ref, meta, data),
                counts=counts, layout=layout, stats=stats, err=err):  # fmt: skip
            kc._cache_batch(ids, off, no_w, kc.MODE_SUM, -1, out, True, a[0], a[1], a[2], a[3],
                            a[4], counts, kc.NEVER, layout, layout, 1, 4096, 64, 0, dim,
                            empty_u8, empty_sums, 4096, False, stats, err)  # fmt: skip

        def gather(ids=ids, off=off, out=out, data=data, stats=stats):
            kr._gather_pool_encoded(ids, off, no_w, kc.MODE_SUM, -1, out, data, 0, stats)

        t_hit, t_gather = _best_pair(hit, gather, repeats)
        vals.append(max(0.0, t_hit - t_gather) / n * 1e9)
    return vals


def _best_pair(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best times of ``a`` and ``b`` run in turns, for a difference of the two."""
    best_a = best_b = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        best_a, best_b = min(best_a, t1 - t0), min(best_b, t2 - t1)
    return best_a, best_b


def _write_block_file(path: Path, codec: str, dim: int, n_blocks: int, block_size: int, rng,
                      checksum_bytes: int):  # fmt: skip
    """A block file of random rows (header block + ``n_blocks``) and its sector checksums."""
    from bandstore.kernels.checksum import block_checksums
    from bandstore.storage.codecs import encode_rows, row_bytes

    rb = row_bytes(codec, dim)
    rpb = block_size // rb
    buf = np.zeros((n_blocks + 1) * block_size, dtype=np.uint8)
    rows = rng.standard_normal((n_blocks * rpb, dim)).astype(np.float32)
    enc = encode_rows(codec, rows)
    body = buf[block_size:].reshape(n_blocks, block_size)
    body[:, : rpb * rb] = enc.reshape(n_blocks, rpb * rb)
    sums = block_checksums(buf[block_size:], checksum_bytes)
    with open(path, "wb") as f:
        f.write(buf.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return rpb, rb, sums


def _sector_bytes(mm, sums, block_size: int) -> int:
    """The checksum sector of a calibration block file (header block + data blocks)."""
    return block_size * (mm.size // block_size - 1) // sums.size


def _direct_cost(mm, ids, layout, rpb, block_size, rb, codec_id, dim, sums, verify):
    no_w = np.empty(0, dtype=np.float32)
    off = _bags(ids.size, 32) if ids.size % 32 == 0 else np.array([0, ids.size])
    out = np.zeros((off.size - 1, dim), dtype=np.float32)
    stats = np.zeros(kc.N_STATS, dtype=np.int64)
    err = np.zeros(1, dtype=np.int64)
    t0 = time.perf_counter()
    cb = _sector_bytes(mm, sums, block_size)
    no_index, no_data = np.zeros((0, 2), dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    kr._direct_batch(ids, off, no_w, kc.MODE_SUM, -1, out, no_index, no_data, layout, rpb,
                     block_size, rb, codec_id, dim, mm, sums, cb, verify, stats, err)  # fmt: skip
    return time.perf_counter() - t0


def _sample_lookups(quick: bool) -> int:
    """Lookups per timed kernel call."""
    return 1 << 16 if quick else 1 << 18


def _calibration_blocks(quick: bool, block_size: int = 4096) -> tuple[int, int]:
    """Blocks of the small and the large temporary block file."""
    small, large = _BLOCK_FILE_BYTES_QUICK if quick else _BLOCK_FILE_BYTES
    return max(1, small // block_size), max(2, large // block_size)


def _block_ids(rng, n_blocks: int, rpb: int) -> np.ndarray:
    """One row of half the blocks, each block once, in random order."""
    return rng.permutation(np.sort(rng.choice(n_blocks, n_blocks // 2, replace=False)) * rpb)


def _touch_all(mm, n_blocks, layout, rpb, block_size, rb, cid, dim, sums) -> None:
    """Read every block once, so that timings see a serving store's steady state (pages mapped)
    rather than first-touch page faults."""
    ids = np.arange(n_blocks, dtype=np.int64) * rpb
    _direct_cost(mm, ids, layout, rpb, block_size, rb, cid, dim, sums, False)


def _measure_blocks(rng, repeats: int, tmp: Path, block_size: int, quick: bool,
                    checksum_bytes: int):  # fmt: skip
    """Block read costs (warm small and large file, cold, verify share) and row costs per
    codec, via _direct_batch."""
    from bandstore.storage.blockfile import evict_from_page_cache, map_random
    from bandstore.storage.codecs import codec_id

    n_blocks, n_large = _calibration_blocks(quick, block_size)
    row_ns: dict[str, float] = {}
    block_ns = verify_ns = cold_ns = large_ns = cache_block_ns = direct_ns = 0.0
    dim = 32

    def per_lookup(mm, ids, layout, rpb, rb, cid, sums, verify):
        return min(
            _direct_cost(mm, ids, layout, rpb, block_size, rb, cid, dim, sums, verify)
            for _ in range(repeats)
        ) / max(1, ids.size)

    for codec in ("float32", "float16", "int8"):
        path = tmp / f"{codec}.blocks"
        rpb, rb, sums = _write_block_file(path, codec, dim, n_blocks, block_size, rng,
                                          checksum_bytes)  # fmt: skip
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        layout = np.arange(n_blocks * rpb, dtype=np.int64)
        cid = codec_id(codec)
        one = _block_ids(rng, n_blocks, rpb)
        every = (np.sort(rng.choice(n_blocks, n_blocks // 2 // rpb + 1, replace=False))[:, None]
                 * rpb + np.arange(rpb)).reshape(-1)  # fmt: skip
        every = rng.permutation(every)[: one.size]
        _touch_all(mm, n_blocks, layout, rpb, block_size, rb, cid, dim, sums)
        t_one = per_lookup(mm, one, layout, rpb, rb, cid, sums, True)
        t_every = per_lookup(mm, every, layout, rpb, rb, cid, sums, True)
        row = max(1e-9, (rpb * t_every - t_one) / max(1, rpb - 1))
        row_ns[codec] = row * 1e9
        if codec == "float32":
            block_ns = max(1.0, (t_one - row) * 1e9)  # a block read is never free
            t_nv = per_lookup(mm, one, layout, rpb, rb, cid, sums, False)
            verify_ns = max(0.0, t_one - t_nv) * 1e9
            evict_from_page_cache(path)
            cold_mm = map_random(path, mm.size)  # as the store maps it: no readahead
            t_cold = _direct_cost(cold_mm, one, layout, rpb, block_size, rb, cid, dim, sums, True)
            del cold_mm
            cold_ns = max(block_ns, (t_cold / one.size - row) * 1e9)
            cache_block_ns = _measure_insert(mm, one, layout, rpb, block_size, rb, cid, dim, sums,
                                             repeats)  # fmt: skip
            direct_ns = _measure_direct(path, mm.size, one, layout, rpb, block_size, rb, cid,
                                        dim, sums, row)  # fmt: skip
        del mm
        path.unlink()
    # The large file: float32 only (the row costs do not depend on the file's size).
    path = tmp / "large.blocks"
    rpb, rb, sums = _write_block_file(path, "float32", dim, n_large, block_size, rng,
                                      checksum_bytes)  # fmt: skip
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    layout = np.arange(n_large * rpb, dtype=np.int64)
    _touch_all(mm, n_large, layout, rpb, block_size, rb, 0, dim, sums)
    t_large = per_lookup(mm, _block_ids(rng, n_large, rpb), layout, rpb, rb, 0, sums, True)
    large_ns = max(block_ns, (t_large - row_ns["float32"] * 1e-9) * 1e9)
    del mm
    path.unlink()
    return row_ns, block_ns, cold_ns, verify_ns, cache_block_ns, large_ns, direct_ns


def _measure_direct(path, file_bytes, ids, layout, rpb, block_size, rb, cid, dim, sums,
                    row) -> float:  # fmt: skip
    """ns of one distinct block read as ``io="direct"`` reads it (probe, O_DIRECT reads with
    several in flight, then the kernel on the staging area), beyond the row's own cost; 0 where
    the file's filesystem refuses O_DIRECT."""
    from bandstore.kernels.tier import _missed_blocks
    from bandstore.storage import tier

    if not tier.direct_io_supported(Path(path).parent):
        return 0.0
    src = tier.DirectSource(Path(path), int(file_bytes), block_size)
    no_slots = np.empty(0, dtype=np.int32)

    def probe():
        out = np.empty(ids.size, dtype=np.int64)
        return out[: _missed_blocks(ids, -1, no_slots, layout, rpb, out)]

    with src.batch(lambda: probe()[:8]) as buf:  # compiled for staging areas before timing
        _direct_cost(buf[: int(file_bytes)], ids[:0], layout, rpb, block_size, rb, cid, dim,
                     sums, True)  # fmt: skip
    t0 = time.perf_counter()
    with src.batch(probe) as buf:
        _direct_cost(buf[: int(file_bytes)], ids, layout, rpb, block_size, rb, cid, dim, sums,
                     True)  # fmt: skip
    seconds = time.perf_counter() - t0
    return max(0.0, (seconds / max(1, ids.size) - row) * 1e9)


def _measure_insert(mm, ids, layout, rpb, block_size, rb, cid, dim, sums, repeats):
    """Extra ns per block read through a full cache over direct (one requested row each), the
    two timed in turns."""
    rows = layout.size
    cap = 1024
    no_w = np.empty(0, dtype=np.float32)
    inverse = dram.copy(layout)  # the store's arrays are allocated so (bandstore.storage.dram)
    counts = dram.zeros(rows, np.int32)
    best = best_direct = float("inf")
    for _ in range(repeats):
        from bandstore.serve.cache import CacheState

        c = CacheState(rows, dim, cap)
        # Fill the cache with rows the measured ids never read (they are all block starts).
        warm = np.arange(1, cap + 1, dtype=np.int64) * rpb + 1
        warm = warm[warm < rows]
        err = np.zeros(1, dtype=np.int64)
        stats = np.zeros(kc.N_STATS, dtype=np.int64)
        out = np.zeros((1, dim), dtype=np.float32)
        cb = _sector_bytes(mm, sums, block_size)
        args = (c.slot_of_id, c.id_of_slot, c.ref, c.meta, c.data, counts, kc.NEVER, layout,
                inverse, rpb, block_size, rb, cid, dim, mm, sums, cb, True, stats, err)  # fmt: skip
        kc._cache_batch(warm, np.array([0, warm.size]), no_w, kc.MODE_SUM, -1, out, True, *args)
        off = np.array([0, ids.size], dtype=np.int64)
        t_direct = _direct_cost(mm, ids, layout, rpb, block_size, rb, cid, dim, sums, True)
        t0 = time.perf_counter()
        kc._cache_batch(ids, off, no_w, kc.MODE_SUM, -1, out, True, *args)
        best = min(best, (time.perf_counter() - t0) / ids.size)
        best_direct = min(best_direct, t_direct / ids.size)
    return max(0.0, best - best_direct) * 1e9


def _measure_split(rng, repeats: int, n: int):
    ids = rng.integers(0, 1 << 20, n)
    off = _bags(n, 32)
    no_w = np.empty(0, dtype=np.float32)
    sub_ids = np.empty(n + 1, dtype=np.int64)
    sub_off = np.empty(off.size, dtype=np.int64)
    bag_n = np.empty(off.size - 1, dtype=np.int64)
    hot = np.zeros(0, dtype=np.uint8)
    sel = _best(lambda: kr._split_select(ids, off, no_w, -1, 2, 0, hot, sub_ids, sub_off, no_w,
                                         bag_n), repeats) / n * 1e9  # fmt: skip
    nb, dim, parts = 4096, 32, 2
    partials = np.ones((parts, nb, dim), dtype=np.float32)
    bn = np.ones((parts, nb), dtype=np.int64)
    out = np.zeros((nb, dim), dtype=np.float32)
    comb = _best(lambda: kr._combine_parts(partials, bn, kc.MODE_SUM, out), repeats)
    return sel, comb / (nb * dim * parts) * 1e9


def _measure_python(tmp: Path, repeats: int) -> tuple[float, float, float]:
    """Per-call, per-table and per-helper-worker Python costs of lookup_many, on a tiny store."""
    import bandstore

    path = tmp / "tiny"
    n_tables = 8
    with bandstore.create(path, block_size=512) as s:
        for i in range(n_tables):
            s.add_table(f"t{i}", np.ones((64, 4), dtype=np.float32), progress=False)
    one_id = (np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    resident = {
        "workers": 2,
        "tables": {f"t{i}": {"strategy": "resident", "worker": 0} for i in range(n_tables)},
    }
    spread = {
        "workers": 2,
        "tables": {f"t{i}": {"strategy": "resident", "worker": i % 2} for i in range(n_tables)},
    }
    times = {}
    for key, plan, workers, k in (
        ("one", resident, 1, 1),
        ("all", resident, 1, n_tables),
        ("spread", spread, 2, n_tables),
    ):
        with bandstore.open(path, plan=plan, workers=workers) as s:
            req = {f"t{i}": one_id for i in range(k)}
            for _ in range(_PY_CALLS // 2):
                s.lookup_many(req)

            def run(s=s, req=req):
                for _ in range(_PY_CALLS):
                    s.lookup_many(req)

            times[key] = _best(run, repeats) / _PY_CALLS * 1e9
    table_ns = max(0.0, (times["all"] - times["one"]) / (n_tables - 1))
    call_ns = max(0.0, times["one"] - table_ns)
    dispatch_ns = max(0.0, times["spread"] - times["all"])
    return call_ns, table_ns, dispatch_ns


def _measure_inline(tmp: Path, quick: bool) -> tuple[float, float]:
    """(base, per task) ns of the work per call at which two workers start to beat one, in
    the executor's own estimate of a call's work (its tables' sampled CPU ns per lookup x the
    call's lookups), which is what the rule compares with it."""
    import bandstore

    path = tmp / "inline"
    rows, dim, bag = 1 << 14, 16, 8
    rng = np.random.default_rng(1)
    with bandstore.create(path) as s:
        for i in range(max(_INLINE_TABLES)):
            s.add_table(f"t{i}", rng.standard_normal((rows, dim)).astype(np.float32),
                        progress=False)  # fmt: skip
        # A break-even of zero: never inline, but the executor estimates as the rule does.
        s.set_calibration({"format": CALIBRATION_FORMAT, "inline_base_ns": 0.0,
                           "inline_task_ns": 0.0})  # fmt: skip
    calls = 41 if quick else 61
    even = []
    for k in _INLINE_TABLES:
        names = [f"t{i}" for i in range(k)]
        stores = []
        for w in (1, 2):
            plan = {"workers": w,
                    "tables": {n: {"strategy": "resident", "worker": i % w}
                               for i, n in enumerate(names)}}  # fmt: skip
            stores.append(bandstore.open(path, plan=plan, workers=w))
        two = stores[1]
        work, speedup = [], []
        try:
            for lookups in _INLINE_LOOKUPS:
                req = {n: (rng.integers(0, rows, lookups), _bags(lookups, bag)[:-1])
                       for n in names}  # fmt: skip
                times: list[list[float]] = [[], []]
                for c in range(calls + 3):  # one and two workers in turns; 3 to warm up
                    for st, ts in zip(stores, times, strict=True):
                        t0 = time.perf_counter()
                        st.lookup_many(req)
                        if c >= 3:
                            ts.append(time.perf_counter() - t0)
                work.append(sum(lookups * two.busy.per_lookup[n] for n in names))
                speedup.append(float(np.median(times[0]) / np.median(times[1])))
                if len(speedup) > 1 and min(speedup[-2:]) >= 1.0:
                    break  # two sizes in a row won: past the break-even
        finally:
            for st in stores:
                st.close()
        even.append(_crossing(work, speedup))
    k0, k1 = _INLINE_TABLES
    per_task = max(0.0, (even[1] - even[0]) / (k1 - k0))
    return max(0.0, even[0] - per_task * k0), per_task


def _crossing(one_ns: list[float], speedup: list[float]) -> float:
    """The work per call (``one_ns``) where the speedup of two workers reaches 1: log-log
    interpolation between the size before the first of two winning sizes in a row and that
    size (a single win amid losses is noise); twice the largest size's work when two workers
    never won so, 0 when they won from the smallest size on."""
    wins = [i for i in range(len(speedup))
            if speedup[i] >= 1.0 and (i + 1 == len(speedup) or speedup[i + 1] >= 1.0)]  # fmt: skip
    if not wins or speedup[-1] < 1.0:
        return 2.0 * one_ns[-1]
    i = wins[0]
    if i == 0:
        return 0.0
    (a, b), (ra, rb) = one_ns[i - 1 : i + 1], speedup[i - 1 : i + 1]
    frac = -np.log(ra) / max(np.log(rb) - np.log(ra), 1e-12)
    return float(np.exp(np.log(a) + frac * (np.log(b) - np.log(a))))


def calibrate(*, quick: bool = False, block_size: int = 4096, checksum_bytes: int | None = None,
              seed: int = 0) -> Calibration:  # fmt: skip
    """Measure this machine's costs (a few seconds; ``quick``: smaller, noisier) for a store of
    ``block_size`` whose checksums cover ``checksum_bytes`` (default: the whole block)."""
    checksum_bytes = block_size if checksum_bytes is None else checksum_bytes
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    repeats = 5 if quick else 11  # best of: this VM's timings vary by tens of percent
    n = _sample_lookups(quick)
    gather_ns = _measure_gather(rng, repeats, n)
    probe_ns = _measure_probe(rng, repeats, n)
    with tempfile.TemporaryDirectory(prefix="bandstore-calibrate-") as d:
        tmp = Path(d)
        row_ns, block_ns, cold_ns, verify_ns, cache_block_ns, large_ns, direct_ns = _measure_blocks(
            rng, repeats, tmp, block_size, quick, checksum_bytes
        )
        call_ns, table_ns, dispatch_ns = _measure_python(tmp, repeats)
        inline_base_ns, inline_task_ns = _measure_inline(tmp, quick)
    select_ns, combine_ns = _measure_split(rng, repeats, n)
    return Calibration(
        gather_sizes=list(_GATHER_SIZES),
        gather_ns=gather_ns,
        probe_rows=list(_PROBE_ROWS),
        probe_ns=probe_ns,
        row_ns=row_ns,
        block_ns=block_ns,
        block_cold_ns=cold_ns,
        verify_ns=verify_ns,
        cache_block_ns=cache_block_ns,
        select_ns=select_ns,
        combine_ns=combine_ns,
        call_ns=call_ns,
        table_ns=table_ns,
        dispatch_ns=dispatch_ns,
        block_size=block_size,
        checksum_bytes=checksum_bytes,
        block_file_bytes=[b * block_size for b in _calibration_blocks(quick, block_size)],
        block_large_ns=large_ns,
        block_direct_ns=direct_ns,
        inline_base_ns=inline_base_ns,
        inline_task_ns=inline_task_ns,
        seconds=time.perf_counter() - t0,
    )


def default_calibration() -> Calibration:
    """Typical figures of a 2-core x86 server (used when a store has none stored)."""
    return Calibration(
        gather_sizes=list(_GATHER_SIZES),
        gather_ns={"16": [1.5, 2.5, 6.0, 12.0], "64": [3.0, 5.0, 10.0, 20.0]},
        probe_rows=list(_PROBE_ROWS),
        probe_ns=[1.0, 2.0, 5.0, 10.0],
        row_ns={"float32": 8.0, "float16": 12.0, "int8": 10.0},
        block_ns=1000.0,
        block_large_ns=2500.0,
        block_cold_ns=20000.0,
        verify_ns=500.0,
        cache_block_ns=300.0,
        select_ns=3.0,
        combine_ns=0.3,
        call_ns=15000.0,
        table_ns=12000.0,
        dispatch_ns=30000.0,
    )


def format_calibration(cal: Calibration) -> str:
    """The calibration as text."""
    lines = [f"calibration ({cal.cpus} CPUs, {cal.seconds:.1f} s):"]
    for dim in _GATHER_DIMS:
        cells = ", ".join(
            f"{s / 2**20:g} MiB: {v:.1f}"
            for s, v in zip(cal.gather_sizes, cal.gather_ns[str(dim)], strict=True)
        )
        lines.append(f"  row gather, dim {dim} (ns/row by array size): {cells}")
    cells = ", ".join(f"{r:,} rows: {v:.1f}" for r, v in zip(cal.probe_rows, cal.probe_ns,
                                                             strict=True))  # fmt: skip
    lines.append(f"  cache probe (ns/hit by table rows): {cells}")
    lines.append(
        "  decode+pool a row from a block (ns, dim 32): "
        + ", ".join(f"{c} {v:.1f}" for c, v in cal.row_ns.items())
    )
    lines.append(
        f"  block read (ns): warm {cal.block_ns:.0f} ({cal.block_file_bytes[0] >> 20} MiB file), "
        f"{cal.block_large_ns:.0f} ({cal.block_file_bytes[1] >> 20} MiB), "
        f"cold {cal.block_cold_ns:.0f}, O_DIRECT {cal.block_direct_ns:.0f}, "
        f"of which checksum {cal.verify_ns:.0f}; cache admission per block {cal.cache_block_ns:.0f}"
    )
    lines.append(
        f"  split: select {cal.select_ns:.1f} ns/lookup/part, combine {cal.combine_ns:.2f} ns/value"
    )
    lines.append(
        f"  lookup_many Python cost: {cal.call_ns / 1e3:.1f} us/call + {cal.table_ns / 1e3:.1f} "
        f"us/table, {cal.dispatch_ns / 1e3:.1f} us per helper worker woken"
    )
    lines.append(
        f"  two workers beat one above {cal.inline_base_ns / 1e3:.0f} us + "
        f"{cal.inline_task_ns / 1e3:.1f} us per task of estimated CPU work per call (below: inline)"
    )
    return "\n".join(lines)
