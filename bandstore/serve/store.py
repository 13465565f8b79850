"""The Store: opens a version of a store directory and serves lookups from it.

A Store serves the version that was current when it was opened (or last refreshed); a writer
that commits a new version never disturbs it. Each table has its own DRAM cache and its own
lock: calls on different tables run in parallel (the kernels release the GIL), calls on one
table are serialized because its cache is mutable state.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from bandstore.errors import (
    CorruptBlockError,
    CorruptFileError,
    FormatMismatchError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidOffsetsError,
    InvalidShapeError,
    PlanError,
    ReadOnlyError,
    StoreClosedError,
    StoreExistsError,
    TableExistsError,
    UnknownTableError,
)
from bandstore.kernels import cache as kc
from bandstore.kernels.resident import _all_in_range, _checked_bags, _non_decreasing
from bandstore.serve import runtime
from bandstore.serve.cache import (
    CachePolicy,
    CacheState,
    cache_row_bytes,
    capacity_rows,
    pinned_ids,
    threshold_from_json,
    threshold_to_json,
)
from bandstore.serve.executor import CallCounts, LatencyLog
from bandstore.serve.plan import META_KEY as PLAN_KEY
from bandstore.serve.plan import Plan
from bandstore.storage import blockfile, dram
from bandstore.storage.blockfile import BlockGeometry
from bandstore.storage.catalog import Catalog
from bandstore.storage.codecs import CODECS, codec_id, encode_rows, row_bytes

DEFAULT_BLOCK_SIZE = 4096
#: Checksum sector of new stores: a lookup hashes the 512-byte sectors holding the rows it
#: decodes, not its whole 4 KB block (4-8x less memory traffic per missed row; 1.6% of the
#: table's bytes in DRAM for the checksums). Persistent memory reads in 256-byte units.
DEFAULT_CHECKSUM_BYTES = 512
#: With no tuning stored and no cache_bytes given, each table caches this share of its rows.
DEFAULT_CACHE_FRACTION = 0.10
IMPORT_CHUNK_ROWS = 1 << 16
STAT_NAMES = ("lookups", "hits", "misses", "blocks_read", "bytes_read", "useful_bytes")
MODES = {"sum": kc.MODE_SUM, "mean": kc.MODE_MEAN, "max": kc.MODE_MAX}
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_NO_WEIGHTS = np.empty(0, dtype=np.float32)
_NO_POSITIONS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class TableInfo:
    """What a table is: its shape, codec and block geometry."""

    name: str
    rows: int
    dim: int
    codec: str
    rows_per_block: int
    blocks: int
    row_bytes: int
    block_size: int

    @property
    def nbytes(self) -> int:
        """Bytes of its block file's data blocks (what the slow tier holds)."""
        return self.blocks * self.block_size

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "dim": self.dim,
            "codec": self.codec,
            "rows_per_block": self.rows_per_block,
            "blocks": self.blocks,
            "row_bytes": self.row_bytes,
            "block_size": self.block_size,
        }


class _Table:
    """A table of the open version: mapped files, cache, counters, and the lock over them."""

    def __init__(self, name: str, rec: dict, vdir: Path, catalog: Catalog, verify_reads: bool):
        self.name = name
        self.checksum_bytes = int(catalog.format["checksum_bytes"])
        self.record = rec
        self.file_id = rec["file_id"]
        self.geometry = BlockGeometry(
            rows=rec["rows"],
            dim=rec["dim"],
            codec=rec["codec"],
            row_bytes=rec["row_bytes"],
            rows_per_block=rec["rows_per_block"],
            n_blocks=rec["n_blocks"],
            block_size=rec["block_size"],
        )
        g = self.geometry
        self.info = TableInfo(
            name, g.rows, g.dim, g.codec, g.rows_per_block, g.n_blocks, g.row_bytes, g.block_size
        )
        self.codec = codec_id(g.codec)
        self.block_path = vdir / rec["block_file"]
        self.blocks_u8 = blockfile.read_block_file(self.block_path, g)
        self.layout = blockfile.read_layout_file(
            vdir / rec["layout_file"], g.rows, rec["layout_checksum"]
        )
        # Read at random by lookups (neighbour admission, misses): large ones on huge pages.
        inverse = dram.full(g.n_blocks * g.rows_per_block, -1, np.int64)
        inverse[self.layout] = np.arange(g.rows, dtype=np.int64)
        self.inverse_layout = inverse
        checksums = catalog.checksums(self.file_id)
        spb = g.block_size // self.checksum_bytes
        if checksums is None or checksums.shape != (g.n_blocks * spb,):
            raise CorruptFileError(str(self.block_path), "the catalog has no checksums for it")
        self.checksums = checksums  # (the catalog's copy is already on huge pages)
        counts = catalog.counts(name)
        if counts is not None and counts.shape != (g.rows,):
            raise CorruptFileError(str(catalog.root), f"access counts of {name!r} have bad length")
        self.counts = counts if counts is not None else dram.zeros(g.rows, np.int32)
        self.has_counts = counts is not None
        self.verify_reads = verify_reads
        self.lock = threading.Lock()
        self.stats = np.zeros(kc.N_STATS, dtype=np.int64)
        self.policy = CachePolicy(0)
        self.cache = CacheState(g.rows, g.dim, 0)
        self.runner: Any = None  # a planned strategy other than cached (serve.strategies)

    def configure_cache(self, policy: CachePolicy) -> None:
        """(Re)build the cache empty under ``policy``, loading its pinned rows."""
        g = self.geometry
        capacity = capacity_rows(policy.cache_bytes, g.dim, g.rows)
        cache = CacheState(g.rows, g.dim, capacity)
        pinned = self.verified_rows(pinned_ids(self.counts, int(policy.pinned_share * capacity)))
        if pinned.size:
            kc._load_pinned(
                pinned,
                True,
                cache.slot_of_id,
                cache.id_of_slot,
                cache.meta,
                cache.data,
                self.layout,
                g.rows_per_block,
                g.block_size,
                g.row_bytes,
                self.codec,
                g.dim,
                self.blocks_u8,
            )
        with self.lock:
            self.policy = policy
            self.cache = cache

    def mismatched_blocks(self, b0: int, b1: int) -> np.ndarray:
        """The blocks in ``[b0, b1)`` with a sector that does not match its checksum."""
        g = self.geometry
        spb = g.block_size // self.checksum_bytes
        buf = np.asarray(self.blocks_u8[(b0 + 1) * g.block_size : (b1 + 1) * g.block_size])
        sums = self.checksums[b0 * spb : b1 * spb]
        return b0 + blockfile.mismatched_blocks(buf, g.block_size, self.checksum_bytes, sums)

    def verified_rows(self, ids: np.ndarray) -> np.ndarray:
        """The ``ids`` whose sectors match their checksums (all of them when reads are not
        verified), for rows loaded into DRAM ahead of any lookup (pinned, replicated): a row
        in a corrupt sector is left to the lookup path, which raises on it."""
        if not self.verify_reads or ids.size == 0:
            return ids
        g, cb = self.geometry, self.checksum_bytes
        spb = g.block_size // cb
        slots = np.asarray(self.layout)[ids]
        blk, local = slots // g.rows_per_block, slots % g.rows_per_block
        first = blk * spb + local * g.row_bytes // cb
        last = blk * spb + ((local + 1) * g.row_bytes - 1) // cb
        from bandstore.kernels.checksum import block_checksums

        sectors = np.unique(np.concatenate([first, last]))
        buf = np.asarray(self.blocks_u8)
        bad_parts = []
        step = max(1, (32 << 20) // cb)  # gather at most 32 MiB of sectors at a time
        for i in range(0, sectors.size, step):
            sec = sectors[i : i + step]
            starts = (sec // spb + 1) * g.block_size + (sec % spb) * cb
            data = buf[starts[:, None] + np.arange(cb)].reshape(-1)
            bad_parts.append(sec[block_checksums(data, cb) != self.checksums[sec]])
        bad = np.concatenate(bad_parts)
        if bad.size == 0:
            return ids
        ok = ~(np.isin(first, bad) | np.isin(last, bad))
        return np.ascontiguousarray(ids[ok])

    def serve(self, ids, offsets, weights, mode, padding_idx, out) -> None:
        """Run one batch through the cache kernel; raise on a corrupt block."""
        runner = self.runner
        if runner is not None:  # the table's planned strategy (serve.strategies)
            runner.serve(ids, offsets, weights, mode, padding_idx, out)
            return
        g = self.geometry
        batch = np.zeros(kc.N_STATS, dtype=np.int64)
        error = np.zeros(1, dtype=np.int64)
        with self.lock:
            c = self.cache
            status = kc._cache_batch(
                ids,
                offsets,
                weights,
                mode,
                padding_idx,
                out,
                True,
                c.slot_of_id,
                c.id_of_slot,
                c.ref,
                c.meta,
                c.data,
                self.counts,
                self.policy.threshold,
                self.layout,
                self.inverse_layout,
                g.rows_per_block,
                g.block_size,
                g.row_bytes,
                self.codec,
                g.dim,
                self.blocks_u8,
                self.checksums,
                self.checksum_bytes,
                self.verify_reads,
                batch,
                error,
            )
            if status == kc.STATUS_OK:
                self.stats += batch
                return
        raise self.corrupt_block_error(int(error[0]))

    def corrupt_block_error(self, block: int) -> CorruptBlockError:
        """The error naming ``block`` of this table, with the stored and actual checksums of
        its first mismatched sector."""
        g, cb = self.geometry, self.checksum_bytes
        spb = g.block_size // cb
        expected = actual = 0
        for s in range(spb):
            start = (block + 1) * g.block_size + s * cb
            actual = xxhash.xxh64_intdigest(bytes(self.blocks_u8[start : start + cb]))
            expected = int(self.checksums[block * spb + s])
            if actual != expected:
                break
        return CorruptBlockError(self.name, block, str(self.block_path), expected, actual)

    def close(self) -> None:
        # Drop the maps; in-flight calls hold their own references until they return.
        self.blocks_u8 = None
        self.layout = None


def _validate_table_name(name: str) -> None:
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise InvalidArgumentError(
            f"invalid table name {name!r}: use 1-128 characters from [A-Za-z0-9_.-], "
            "not starting with '.' or '-'",
            argument="name",
            value=name,
        )


def _as_int_array(value: Any, argument: str, table: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            return np.empty(arr.shape, dtype=np.int64)  # [] parses as float64
        raise InvalidDtypeError(
            f"{argument} for table {table!r} must be an integer array, got dtype {arr.dtype}",
            argument=argument,
            dtype=arr.dtype,
        )
    return arr


def _check_ids(ids: np.ndarray, info: TableInfo, argument: str = "ids") -> np.ndarray:
    if ids.ndim != 1:
        raise InvalidShapeError(
            f"{argument} for table {info.name!r} must be 1-D, got shape {ids.shape}",
            argument=argument,
            shape=ids.shape,
        )
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.size and not _all_in_range(ids, 0, info.rows):  # numba fast path, then the details
        bad = np.flatnonzero((ids < 0) | (ids >= info.rows))
        if bad.size:
            pos = int(bad[0])
            raise IdOutOfRangeError(info.name, pos, int(ids[pos]), info.rows)
    return ids


def _check_offsets(offsets: Any, n: int, include_last_offset: bool, table: str) -> np.ndarray:
    offsets = _as_int_array(offsets, "offsets", table)
    if offsets.ndim != 1:
        raise InvalidShapeError(
            f"offsets for table {table!r} must be 1-D, got shape {offsets.shape}",
            argument="offsets",
            shape=offsets.shape,
        )
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if include_last_offset and offsets.size == 0:
        raise InvalidOffsetsError(
            f"offsets for table {table!r} are empty but include_last_offset=True needs at "
            "least the final offset",
            table=table,
        )
    if offsets.size:
        if offsets[0] != 0:
            raise InvalidOffsetsError(
                f"offsets for table {table!r} must start at 0, got {int(offsets[0])}",
                table=table,
                position=0,
            )
        dec = _NO_POSITIONS if _non_decreasing(offsets) else np.flatnonzero(np.diff(offsets) < 0)
        if dec.size:
            p = int(dec[0]) + 1
            raise InvalidOffsetsError(
                f"offsets for table {table!r} decrease at position {p} "
                f"({int(offsets[p - 1])} -> {int(offsets[p])})",
                table=table,
                position=p,
            )
        if offsets[-1] > n:
            raise InvalidOffsetsError(
                f"offsets for table {table!r} point past the end of indices "
                f"(offset {int(offsets[-1])} > {n} indices)",
                table=table,
                position=int(offsets.size - 1),
            )
    if include_last_offset:
        return offsets
    return np.concatenate([offsets, np.array([n], dtype=np.int64)])


class Store:
    """An open bandstore store. Use :func:`bandstore.open` or :func:`bandstore.create`."""

    def __init__(
        self,
        root: Path,
        catalog: Catalog,
        *,
        writable: bool,
        cache_bytes: int | Mapping[str, int] | None = None,
        threshold: int | Mapping[str, int] | None = None,
        pinned_share: float | Mapping[str, float] | None = None,
        verify_reads: bool = True,
        recorder: Any = None,
        workers: int | None = None,
        plan: Any = None,
    ):
        self.root = root
        self._catalog = catalog
        self._writable = writable
        self._verify_reads = verify_reads
        self._cache_arg = cache_bytes
        self._threshold_arg = threshold
        self._pinned_arg = pinned_share
        self._recorder = recorder
        self._closed = False
        self._switch_lock = threading.RLock()
        self._tables: dict[str, _Table] = {}
        self._reader_lock: blockfile.ReaderLock | None = None
        self._version: dict = {}

        self._workers_arg = workers
        self._plan_arg = plan
        self._plan: Any = None
        self._executor: Any = None
        self._latency = LatencyLog()
        self._call_counts = CallCounts()  # parallel / inline calls, whatever the executor
        self._listeners: list[Any] = []  # told of recorded queries (e.g. a background re-planner)
        self._load_current()

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the version, the catalog and the caches. Idempotent."""
        for listener in list(self._listeners):
            listener.close()  # before the lock: a running re-plan may be switching plans
        with self._switch_lock:
            if self._closed:
                return
            self._closed = True
            if self._recorder is not None:
                self._recorder.close()
            if self._executor is not None:
                self._executor.close()
            for t in self._tables.values():
                t.close()
            self._tables = {}
            if self._reader_lock is not None:
                self._reader_lock.release()
            self._catalog.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError()

    @property
    def version(self) -> int:
        """The id of the version this store serves."""
        return int(self._version["id"])

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def block_size(self) -> int:
        return int(self._catalog.format["block_size"])

    @property
    def checksum_bytes(self) -> int:
        """The sector each stored checksum covers (``block_size`` for a format 1 store)."""
        return int(self._catalog.format["checksum_bytes"])

    @property
    def tables(self) -> dict[str, TableInfo]:
        """name -> TableInfo of every table in the served version."""
        self._check_open()
        return {name: t.info for name, t in self._tables.items()}

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    # ---- versions --------------------------------------------------------------------------
    def _load_current(self) -> None:
        """Open the catalog's current version: lock it, map its files, build caches."""
        while True:
            rec = self._catalog.current_version()
            vdir = blockfile.version_path(self.root, rec["id"])
            lock = blockfile.ReaderLock(vdir) if rec["tables"] else None
            # A garbage collector may have removed the version between the two steps.
            if self._catalog.version(rec["id"]) is not None:
                break
            if lock is not None:
                lock.release()
        self._install_version(rec, vdir, lock)

    def _install_version(self, rec: dict, vdir: Path, lock: Any) -> None:
        old = self._tables
        tables: dict[str, _Table] = {}
        try:
            for name, trec in rec["tables"].items():
                prev = old.get(name)
                if prev is not None and prev.file_id == trec["file_id"]:
                    counts = self._catalog.counts(name)
                    if counts is None or np.array_equal(counts, prev.counts):
                        tables[name] = prev  # the same immutable file: keep cache and counters
                        continue
                    # The same file with new access counts (committed with the version): a
                    # fresh table, so that admission and pinning use them.
                t = _Table(name, trec, vdir, self._catalog, self._verify_reads)
                if prev is not None and prev.info == t.info:
                    t.stats = prev.stats  # a relayout of the same rows: the counters go on
                tables[name] = t
            for name, t in tables.items():
                if old.get(name) is not t:
                    t.configure_cache(self._policy_for(name, t, tables))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        with self._switch_lock:
            previous_lock = self._reader_lock
            self._tables = tables
            self._version = rec
            self._reader_lock = lock
        if previous_lock is not None:
            previous_lock.release()
        try:
            runtime.attach(self)  # the served plan's strategies and workers for these tables
        except BaseException:
            if self._executor is None:  # a store being opened with a bad plan: release it all
                self.close()
            raise

    def refresh(self) -> bool:
        """Serve the catalog's current version if it changed; return whether it did.

        In-flight calls finish on the version they started with. Caches of tables whose rows
        did not change (a relayout) are rebuilt empty; use ``stats()`` counters to see it warm.
        """
        self._check_open()
        current = self._catalog.current_version()
        if current["id"] == self.version:
            return False
        self._load_current()
        return True

    def add_listener(self, listener: Any) -> None:
        """Tell ``listener`` of recorded traffic: ``listener.note(n)`` after each call that
        recorded ``n`` queries (on the calling thread), ``listener.close()`` when the store
        closes (before anything is released). For a background re-planner
        (``bandstore.tune.AutoReplanner``)."""
        self._check_open()
        if self._recorder is None:
            raise InvalidArgumentError(
                "listeners learn from recorded traffic: open the store with record=DIR",
                argument="listener",
            )
        self._listeners.append(listener)

    @property
    def plan(self) -> Plan | None:
        """The :class:`Plan` being served (None: no plan, every table cached)."""
        return self._plan

    def set_plan(self, plan: Plan | Mapping[str, Any] | None, *, persist: bool = True) -> None:
        """Serve ``plan`` from the next call on (None: back to no plan; every table cached).

        ``persist`` stores it in the catalog (the store must be writable) so that stores
        opened later serve it too, with the access counts that rank its pinned tables' rows
        (``Plan.counts``) as those tables' access counts, in the same transaction. Runners are
        built beside the old ones: calls in flight finish on what they started with.
        """
        self._check_open()
        if plan is not None and not isinstance(plan, Plan):
            plan = Plan.from_dict(plan, self.tables)
        if persist:
            self._check_writable()
            counts = self._checked_counts(plan.counts) if plan is not None else {}
            self._catalog.put_meta(PLAN_KEY, plan.as_dict() if plan is not None else None, counts)
            self._install_counts(counts)
        self._plan_arg = plan if plan is not None else False
        runtime.attach(self)

    def set_calibration(self, record: Mapping[str, Any]) -> None:
        """Store this machine's measured costs (``bandstore.tune.planning.calibrate``'s record) in
        the catalog and use its inline break-even from the next call on."""
        self._check_writable()
        self._catalog.put_meta(runtime.CALIBRATION_KEY, dict(record))
        self._executor.inline_below = runtime.stored_inline_below(self._catalog)

    @property
    def workers(self) -> int:
        """Worker threads ``lookup_many`` runs on."""
        return int(self._executor.workers)

    @property
    def busy(self) -> Any:
        """The executor's per-table busy times (:class:`bandstore.serve.executor.BusyLog`)."""
        return self._executor.busy

    @property
    def recorder(self) -> Any:
        """The traffic recorder (``open(record=DIR)``), or None."""
        return self._recorder

    @property
    def verify_reads(self) -> bool:
        """Whether lookups check the sectors they decode against their checksums."""
        return self._verify_reads

    def cache_policy(self, table: str) -> CachePolicy:
        """The cache policy ``table`` has when it is served ``cached``: the open arguments,
        else the stored tuning, else the defaults."""
        t = self._table(table)
        return self._policy_for(table, t, self._tables)

    def has_counts(self, table: str) -> bool:
        """Whether ``table`` has recorded access counts (else they are all zero)."""
        return bool(self._table(table).has_counts)

    def pinned_rows(self, table: str) -> np.ndarray | None:
        """The ids a ``pinned`` table holds in DRAM (sorted), or None for other strategies."""
        runner = self._table(table).runner
        if runner is None or runner.strategy != "pinned":
            return None
        return runner.ids.view()

    # ---- cache configuration -----------------------------------------------------------------
    def _policy_for(self, name: str, t: _Table, all_tables: Mapping[str, _Table]) -> CachePolicy:
        tuned = self._catalog.tuning(name) or {}
        arg = self._cache_arg
        if isinstance(arg, Mapping):
            unknown = set(arg) - set(all_tables)
            if unknown:
                raise UnknownTableError(sorted(unknown)[0], list(all_tables))
        if isinstance(arg, Mapping) and name in arg:
            cache_bytes = int(arg[name])
        elif arg is not None and not isinstance(arg, Mapping):
            cache_bytes = self._share_of_total(int(arg), name, all_tables)
        elif "cache_bytes" in tuned:
            cache_bytes = int(tuned["cache_bytes"])
        else:
            cache_bytes = int(DEFAULT_CACHE_FRACTION * t.info.rows) * cache_row_bytes(t.info.dim)
        threshold = self._per_table(self._threshold_arg, name, all_tables, None)
        if threshold is None:
            threshold = threshold_from_json(tuned.get("threshold")) if t.has_counts else kc.NEVER
        share = self._per_table(self._pinned_arg, name, all_tables, None)
        if share is None:
            share = float(tuned.get("pinned_share", 0.0))
        return CachePolicy(cache_bytes, min(int(threshold), kc.NEVER), float(share))

    @staticmethod
    def _per_table(arg: Any, name: str, all_tables: Mapping[str, _Table], default: Any) -> Any:
        if isinstance(arg, Mapping):
            unknown = set(arg) - set(all_tables)
            if unknown:
                raise UnknownTableError(sorted(unknown)[0], list(all_tables))
            return arg.get(name, default)
        return arg

    def _share_of_total(self, total: int, name: str, all_tables: Mapping[str, _Table]) -> int:
        """Split a total budget: by tuned sizes where every table has one, else by table size."""
        if total < 0:
            raise InvalidArgumentError(
                f"cache_bytes must be >= 0, got {total}", argument="cache_bytes"
            )
        tuned = {n: (self._catalog.tuning(n) or {}).get("cache_bytes") for n in all_tables}
        if all(v is not None for v in tuned.values()) and sum(tuned.values()) > 0:
            weights = {n: float(v) for n, v in tuned.items()}
        else:
            weights = {
                n: float(t.info.rows * cache_row_bytes(t.info.dim)) for n, t in all_tables.items()
            }
        s = sum(weights.values())
        return int(total * weights[name] / s) if s > 0 else 0

    def configure_cache(
        self,
        table: str,
        *,
        cache_bytes: int | None = None,
        threshold: int | None = None,
        pinned_share: float | None = None,
    ) -> None:
        """Rebuild one table's cache (empty) with new parameters; unspecified ones are kept."""
        t = self._table(table)
        p = t.policy
        t.configure_cache(
            CachePolicy(
                p.cache_bytes if cache_bytes is None else int(cache_bytes),
                p.threshold if threshold is None else int(threshold),
                p.pinned_share if pinned_share is None else float(pinned_share),
            )
        )

    def table_counts(self, table: str) -> np.ndarray:
        """The access counts ``table``'s admission and pinning use (zeros if none recorded)."""
        return self._table(table).counts

    def cache_info(self) -> dict[str, dict[str, Any]]:
        """Per table: the cache policy in force and how full the cache is (a ``pinned`` table's
        is its frozen set of rows; ``resident`` and ``direct`` tables have none)."""
        self._check_open()
        out = {}
        for name, t in self._tables.items():
            if hasattr(t.runner, "cache_info"):  # a planned strategy with rows of its own
                out[name] = t.runner.cache_info()
                continue
            c = t.cache
            out[name] = {
                "cache_bytes": t.policy.cache_bytes,
                "capacity_rows": c.capacity,
                "cached_rows": c.filled,
                "pinned_rows": c.pinned,
                "threshold": threshold_to_json(t.policy.threshold),
                "pinned_share": t.policy.pinned_share,
                "dram_bytes": c.nbytes,
            }
        return out

    def table_layout(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """``(slot_of_id, id_of_slot)`` of ``table`` in the served version, as read-only views
        (``id_of_slot`` is -1 for holes); for offline tools such as the cache simulator."""
        t = self._table(table)
        layout, inverse = t.layout.view(), t.inverse_layout.view()
        layout.flags.writeable = False
        inverse.flags.writeable = False
        return layout, inverse

    # ---- lookups ---------------------------------------------------------------------------
    def _table(self, name: str) -> _Table:
        self._check_open()
        t = self._tables.get(name)
        if t is None:
            raise UnknownTableError(name, list(self._tables))
        return t

    def lookup(self, table: str, ids: Any) -> np.ndarray:
        """Rows ``ids`` of ``table`` as a float32 array of shape (len(ids), dim)."""
        t = self._table(table)
        ids = _check_ids(_as_int_array(ids, "ids", table), t.info)
        n = ids.shape[0]
        out = np.zeros((n, t.info.dim), dtype=np.float32)
        offsets = np.arange(n + 1, dtype=np.int64)
        t.serve(ids, offsets, _NO_WEIGHTS, kc.MODE_COPY, -1, out)
        self._record({table: (ids, offsets)})
        return out

    def _prepare_bag(
        self,
        table: str,
        indices: Any,
        offsets: Any,
        mode: str,
        per_sample_weights: Any,
        include_last_offset: bool,
        padding_idx: int | None,
    ) -> tuple[_Table, np.ndarray, np.ndarray, np.ndarray, int, int]:
        t = self._table(table)
        if mode not in MODES:
            raise InvalidArgumentError(
                f"mode must be one of {sorted(MODES)}, got {mode!r}", argument="mode", value=mode
            )
        if (
            per_sample_weights is None
            and padding_idx is None
            and not include_last_offset
            and type(indices) is np.ndarray
            and type(offsets) is np.ndarray
            and indices.dtype == np.int64
            and offsets.dtype == np.int64
            and indices.ndim == 1
            and offsets.ndim == 1
            and indices.flags.c_contiguous
            and offsets.flags.c_contiguous
        ):
            # The common request (int64 arrays, no options): checked in one kernel pass. If a
            # rule fails, the general path below says which.
            off = np.empty(offsets.shape[0] + 1, dtype=np.int64)
            if _checked_bags(indices, offsets, t.info.rows, off):
                return t, indices, off, _NO_WEIGHTS, MODES[mode], -1
        idx = _as_int_array(indices, "indices", table)
        if idx.ndim == 2:
            # torch's 2-D form: each row is a bag of the same length, offsets must be None.
            if offsets is not None:
                raise InvalidOffsetsError(
                    f"offsets must be None when indices for table {table!r} are 2-D", table=table
                )
            n_bags, length = idx.shape
            idx = idx.reshape(-1)
            off = np.arange(0, n_bags * length + 1, max(length, 1), dtype=np.int64)
            if length == 0:
                off = np.zeros(n_bags + 1, dtype=np.int64)
            if per_sample_weights is not None:
                per_sample_weights = np.asarray(per_sample_weights).reshape(-1)
        else:
            if offsets is None:
                raise InvalidOffsetsError(
                    f"offsets are required when indices for table {table!r} are 1-D", table=table
                )
            off = None
        ids = _check_ids(idx, t.info, "indices")
        if off is None:
            off = _check_offsets(offsets, ids.shape[0], include_last_offset, table)
        weights = _NO_WEIGHTS
        if per_sample_weights is not None:
            if mode != "sum":
                raise InvalidArgumentError(
                    f"per_sample_weights are only supported with mode='sum', not {mode!r}",
                    argument="per_sample_weights",
                )
            w = np.asarray(per_sample_weights)
            if w.dtype.kind != "f":
                raise InvalidDtypeError(
                    f"per_sample_weights for table {table!r} must be floating point, "
                    f"got dtype {w.dtype}",
                    argument="per_sample_weights",
                    dtype=w.dtype,
                )
            if w.shape != ids.shape:
                raise InvalidShapeError(
                    f"per_sample_weights for table {table!r} must have the shape of indices "
                    f"{ids.shape}, got {w.shape}",
                    argument="per_sample_weights",
                    shape=w.shape,
                )
            weights = np.ascontiguousarray(w, dtype=np.float32)
        pad = -1
        if padding_idx is not None:
            p = int(padding_idx)
            if not -t.info.rows <= p < t.info.rows:
                raise InvalidArgumentError(
                    f"padding_idx {p} is out of range for table {table!r} with {t.info.rows} rows",
                    argument="padding_idx",
                    value=p,
                )
            pad = p % t.info.rows
        return t, ids, off, weights, MODES[mode], pad

    def embedding_bag(
        self,
        table: str,
        indices: Any,
        offsets: Any = None,
        *,
        mode: str = "sum",
        per_sample_weights: Any = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
    ) -> np.ndarray:
        """Pooled lookups with the semantics of ``torch.nn.functional.embedding_bag``.

        Returns float32 (bags, dim). Empty bags give zeros; rows equal to ``padding_idx`` are
        left out of the reduction (and of the counters).
        """
        t, ids, off, weights, mode_id, pad = self._prepare_bag(
            table, indices, offsets, mode, per_sample_weights, include_last_offset, padding_idx
        )
        out = np.zeros((off.shape[0] - 1, t.info.dim), dtype=np.float32)
        t.serve(ids, off, weights, mode_id, pad, out)
        self._record({table: (ids, off)})
        return out

    def lookup_many(
        self, requests: Mapping[str, tuple], *, mode: str = "sum"
    ) -> dict[str, np.ndarray]:
        """Serve several tables in one call: ``{table: (indices, offsets[, weights])}``.

        Every request is validated before any is served, so a bad one changes nothing.
        """
        self._check_open()
        if not isinstance(requests, Mapping):
            raise InvalidArgumentError(
                "requests must map table names to (indices, offsets[, weights])",
                argument="requests",
            )
        prepared = {}
        for table, req in requests.items():
            if not isinstance(req, tuple | list) or len(req) not in (2, 3):
                raise InvalidArgumentError(
                    f"request for table {table!r} must be (indices, offsets) or "
                    "(indices, offsets, weights)",
                    argument="requests",
                )
            weights = req[2] if len(req) == 3 else None
            prepared[table] = self._prepare_bag(table, req[0], req[1], mode, weights, False, None)
        if self._recorder is not None and len({p[2].shape[0] for p in prepared.values()}) > 1:
            # A recorded query is one bag of every table: refuse before serving, not after.
            raise InvalidShapeError(
                "while recording, every table of a lookup_many request must have the same "
                "number of bags (one per query)",
                argument="requests",
                shape=tuple(p[2].shape[0] - 1 for p in prepared.values()),
            )
        t0 = time.perf_counter()
        results = self._executor.run(prepared)  # the plan's workers (bandstore.serve.executor)
        self._latency.add(time.perf_counter() - t0)
        self._record({table: (p[1], p[2]) for table, p in prepared.items()})
        return results

    def _record(self, request: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        if self._recorder is not None:
            kept = self._recorder.record(request, validate=False)  # validated before serving
            for listener in self._listeners:
                listener.note(kept)

    # ---- counters --------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, float]]:
        """Exact counters per table and in ``total``; lookups == hits + misses always."""
        self._check_open()
        out: dict[str, dict[str, float]] = {}
        total = np.zeros(kc.N_STATS, dtype=np.int64)
        for name, t in self._tables.items():
            with t.lock:
                s = t.stats.copy()
            total += s
            out[name] = _stats_dict(s)
        out["total"] = _stats_dict(total)
        lat = self._latency.summary()  # lookup_many calls: count, p50/p99 in microseconds
        out["total"].update({f"lookup_many_{k}": v for k, v in lat.items()})
        calls = self._call_counts  # served on the workers / inline as too small for them
        out["total"]["lookup_many_parallel_calls"] = calls.parallel
        out["total"]["lookup_many_inline_calls"] = calls.inline
        return out

    def reset_stats(self) -> None:
        self._check_open()
        for t in self._tables.values():
            with t.lock:
                t.stats[:] = 0
        self._latency.reset()
        self._call_counts.reset()

    # ---- writing ---------------------------------------------------------------------------
    def _check_writable(self) -> None:
        self._check_open()
        if not self._writable:
            raise ReadOnlyError(
                "this store was opened for serving; use bandstore.create() "
                "or open(..., writable=True) to change it"
            )

    def add_table(
        self,
        name: str,
        data: Any,
        *,
        codec: str = "float32",
        progress: bool | None = None,
    ) -> TableInfo:
        """Add a table from an (n, dim) float array or a path to a ``.npy`` file.

        A ``.npy`` file is read through mmap in chunks, so a table larger than RAM imports. The
        table becomes visible in a new version committed in one catalog transaction; a crash
        at any point leaves the previous version intact.
        """
        self._check_writable()
        _validate_table_name(name)
        if name in self._tables:
            raise TableExistsError(name)
        if codec not in CODECS:
            raise InvalidArgumentError(
                f"unknown codec {codec!r}; known codecs: {list(CODECS)}", argument="codec"
            )
        array = _open_table_data(data)
        rows, dim = array.shape
        rb = row_bytes(codec, dim)
        bs = self.block_size
        rpb = bs // rb
        if rpb < 1:
            raise InvalidArgumentError(
                f"a {codec} row of dim {dim} takes {rb} bytes and does not fit in a "
                f"{bs}-byte block",
                argument="data",
            )
        geometry = BlockGeometry(rows, dim, codec, rb, rpb, -(-rows // rpb), bs)
        layout = np.arange(rows, dtype=np.int64)

        def fill(writer: blockfile.BlockFileWriter, pbar: Any) -> None:
            for start in range(0, rows, IMPORT_CHUNK_ROWS):
                stop = min(rows, start + IMPORT_CHUNK_ROWS)
                enc = encode_rows(codec, np.asarray(array[start:stop]))
                writer.write_rows(layout[start:stop], enc)
                pbar.update(stop - start)

        self._commit_tables(
            {name: (geometry, layout, fill)}, note=f"add_table {name}", progress=progress
        )
        return self._tables[name].info

    def _commit_tables(
        self,
        new_tables: Mapping[str, tuple[BlockGeometry, np.ndarray, Any]],
        *,
        note: str,
        progress: bool | None,
        counts: Mapping[str, np.ndarray] | None = None,
        tuning: Mapping[str, dict] | None = None,
        extra: Mapping[str, dict] | None = None,
        plan: Plan | None = None,
    ) -> int:
        """Write ``new_tables`` into a new version beside the current one and commit it.

        ``new_tables`` maps a name to (geometry, layout, fill) where ``fill(writer, pbar)``
        writes every row. Other tables are shared with the base version by hard links.
        ``counts``, ``tuning`` and ``plan`` (served from now on) go into the same transaction.
        """
        from tqdm.auto import tqdm

        with blockfile.write_lock(self.root):
            base = self._catalog.current_version()
            if base["id"] != self.version:
                # Another writer committed: serve its version first so our base is current.
                self._load_current()
                base = self._version
            vid = self._catalog.reserve_version_id()
            vdir = blockfile.make_version_dir(self.root, vid)
            try:
                base_dir = blockfile.version_path(self.root, base["id"])
                tables = {}
                for name, trec in base["tables"].items():
                    if name in new_tables:
                        continue
                    for key in ("block_file", "layout_file"):
                        blockfile.link_or_copy(base_dir / trec[key], vdir / trec[key])
                    tables[name] = trec
                checksums = {}
                for name, (g, layout, fill) in new_tables.items():
                    file_id = f"{blockfile.version_dir_name(vid)}/{name}"
                    writer = blockfile.BlockFileWriter(vdir / f"{name}.blocks", g)
                    with tqdm(
                        total=g.rows, desc=f"write {name}", unit="row", disable=_no_bar(progress)
                    ) as pbar:
                        fill(writer, pbar)
                    checksums[file_id] = writer.finish(self.checksum_bytes)
                    blockfile.verify_block_file(
                        writer.path, g, checksums[file_id], self.checksum_bytes
                    )
                    layout_checksum = blockfile.write_layout_file(
                        vdir / f"{name}.layout.npy", layout
                    )
                    trec = {
                        **g.header(),
                        "file_id": file_id,
                        "block_file": f"{name}.blocks",
                        "layout_file": f"{name}.layout.npy",
                        "layout_checksum": layout_checksum,
                    }
                    trec.pop("format_version")
                    trec.update((extra or {}).get(name, {}))
                    tables[name] = trec
                blockfile.fsync_path(vdir)
                record = {"id": vid, "tables": tables, "note": note, "created": time.time()}
                self._catalog.commit_version(
                    record,
                    base=base["id"],
                    checksums=checksums,
                    counts=dict(counts or {}),
                    tuning=dict(tuning or {}),
                    meta={PLAN_KEY: plan.as_dict()} if plan is not None else None,
                )
            except BaseException:
                blockfile.remove_version_dir(vdir, None)
                raise
            if plan is not None:
                self._plan_arg = plan
            lock = blockfile.ReaderLock(vdir)
            self._install_version(self._catalog.version(vid), vdir, lock)
        return vid

    def relayout_tables(
        self,
        layouts: Mapping[str, np.ndarray],
        *,
        counts: Mapping[str, np.ndarray] | None = None,
        tuning: Mapping[str, dict] | None = None,
        plan: Plan | Mapping[str, Any] | None = None,
        note: str = "relayout",
        progress: bool | None = None,
    ) -> int:
        """Commit a new version where each table in ``layouts`` has the given layout.

        Rows are copied byte for byte from the served version, then every row of the new file
        is compared with the old one before anything is committed; ``counts`` (access counts by
        id, of any table), ``tuning`` (cache policy per table) and ``plan`` (stored and served
        from now on, as :meth:`set_plan` does; its ``Plan.counts`` override ``counts``) are
        committed in the same transaction. ``layouts`` may be empty: a version with the same
        files and new counts, tuning or plan. Returns the new version id.
        """
        self._check_writable()
        if plan is not None:
            if not isinstance(plan, Plan):
                plan = Plan.from_dict(plan, self.tables)
            else:  # validated against these tables before anything is written
                Plan.from_dict(plan.as_dict(), self.tables)
            counts = {**(counts or {}), **self._checked_counts(plan.counts)}
            for name, tp in plan.tables.items():
                if tp.kind == "pinned" and name not in counts and not self.has_counts(name):
                    raise PlanError(
                        f"table {name!r}: a pinned table holds its most counted rows, and "
                        "neither the plan nor the store has access counts for it",
                        table=name,
                    )
        new_tables = {}
        for name, layout in layouts.items():
            t = self._table(name)
            g = t.geometry
            layout = np.ascontiguousarray(layout, dtype=np.int64)
            blockfile.validate_layout(layout, g.rows, g.rows_per_block)
            n_blocks = int(layout.max()) // g.rows_per_block + 1
            geometry = BlockGeometry(
                g.rows, g.dim, g.codec, g.row_bytes, g.rows_per_block, n_blocks, g.block_size
            )
            new_tables[name] = (geometry, layout, _copy_rows_filler(t, layout, geometry))
        for name, c in (counts or {}).items():
            rows = self._table(name).info.rows
            if np.shape(c) != (rows,):
                raise InvalidShapeError(
                    f"access counts for table {name!r} must have {rows} entries",
                    argument="counts",
                    shape=np.shape(c),
                )
        vid = self._commit_tables(
            new_tables,
            note=note,
            progress=progress,
            counts={
                n: np.minimum(np.asarray(c), 2**31 - 1).astype(np.int32)
                for n, c in (counts or {}).items()
            },
            tuning=tuning,
            plan=plan,
        )
        return vid

    def set_tuning(
        self,
        tuning: Mapping[str, Mapping[str, Any]],
        *,
        counts: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Store cache policies ``{table: {cache_bytes, threshold, pinned_share}}`` (and the
        access counts admission and pinning use) in the catalog, and apply them now.

        ``threshold`` None means never admit neighbours. Stores opened later use these
        policies by default.
        """
        self._check_writable()
        records = {}
        for name, rec in tuning.items():
            self._table(name)  # an unknown table raises
            policy = CachePolicy(
                int(rec["cache_bytes"]),
                threshold_from_json(rec.get("threshold")),
                float(rec.get("pinned_share", 0.0)),
            )
            records[name] = {
                **{k: v for k, v in rec.items() if k not in ("cache_bytes", "threshold")},
                "cache_bytes": policy.cache_bytes,
                "threshold": threshold_to_json(policy.threshold),
                "pinned_share": policy.pinned_share,
            }
        arrays = self._checked_counts(counts or {})
        self._catalog.put_tuning(records, counts=arrays)
        self._install_counts(arrays)
        runtime.retune(self, sorted(set(records) | set(arrays)))

    def _checked_counts(self, counts: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Access counts by table, validated, as the catalog stores them (int32)."""
        arrays = {}
        for name, c in counts.items():
            rows = self._table(name).info.rows
            c = np.asarray(c)
            if c.shape != (rows,) or c.dtype.kind not in "iu" or (c.size and c.min() < 0):
                raise InvalidShapeError(
                    f"access counts for table {name!r} must be {rows} non-negative integers",
                    argument="counts",
                    shape=c.shape,
                )
            arrays[name] = np.minimum(c, 2**31 - 1).astype(np.int32)
        return arrays

    def _install_counts(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Use ``arrays`` (stored in the catalog) as the tables' access counts from now on."""
        for name, c in arrays.items():
            t = self._tables[name]
            t.counts, t.has_counts = dram.copy(c), True

    # ---- maintenance -----------------------------------------------------------------------
    def verify(self, *, progress: bool | None = None) -> list[dict[str, Any]]:
        """Check every block of every table against its checksums; return the mismatches."""
        from tqdm.auto import tqdm

        self._check_open()
        problems = []
        for name, t in self._tables.items():
            g = t.geometry
            bad_blocks: list[int] = []
            chunk = max(1, (64 << 20) // g.block_size)
            with tqdm(
                total=g.n_blocks, desc=f"verify {name}", unit="block", disable=_no_bar(progress)
            ) as pbar:
                for b0 in range(0, g.n_blocks, chunk):
                    b1 = min(g.n_blocks, b0 + chunk)
                    bad_blocks.extend(t.mismatched_blocks(b0, b1).tolist())
                    pbar.update(b1 - b0)
            for b in bad_blocks:
                problems.append({"table": name, "block": int(b), "path": str(t.block_path)})
        return problems

    def drop_page_cache(self) -> None:
        """Evict this version's block files from the OS page cache (a cold slow tier)."""
        self._check_open()
        for t in self._tables.values():
            blockfile.evict_from_page_cache(t.block_path)

    def decoded_rows(self, table: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` decoded straight from the block file, bypassing the cache."""
        from bandstore.storage.codecs import decode_rows

        t = self._table(table)
        g = t.geometry
        slots = np.asarray(t.layout[start:stop])
        raw = blockfile.rows_view(t.blocks_u8, g)[
            slots // g.rows_per_block, slots % g.rows_per_block
        ]
        return decode_rows(g.codec, raw, g.dim)


def _copy_rows_filler(t: _Table, layout: np.ndarray, geometry: BlockGeometry):
    """A fill function copying every row of ``t`` to its new slot, then checking the copy."""
    old_rows = blockfile.rows_view(t.blocks_u8, t.geometry)
    old_layout = t.layout
    rpb = geometry.rows_per_block

    def fill(writer: blockfile.BlockFileWriter, pbar: Any) -> None:
        n = geometry.rows
        for start in range(0, n, IMPORT_CHUNK_ROWS):
            stop = min(n, start + IMPORT_CHUNK_ROWS)
            old = np.asarray(old_layout[start:stop])
            writer.write_rows(layout[start:stop], old_rows[old // rpb, old % rpb])
            pbar.update(stop - start)
        # Read every row back from the new file and compare it with the served version.
        new_rows = blockfile.rows_view(writer.buffer, geometry)
        for start in range(0, n, IMPORT_CHUNK_ROWS):
            stop = min(n, start + IMPORT_CHUNK_ROWS)
            old, new = np.asarray(old_layout[start:stop]), layout[start:stop]
            if not np.array_equal(old_rows[old // rpb, old % rpb], new_rows[new // rpb, new % rpb]):
                raise CorruptFileError(str(writer.path), "rows differ from the old version")

    return fill


def _stats_dict(s: np.ndarray) -> dict[str, float]:
    d: dict[str, float] = {k: int(v) for k, v in zip(STAT_NAMES, s, strict=True)}
    lookups = d["lookups"]
    d["hit_ratio"] = d["hits"] / lookups if lookups else 0.0
    d["blocks_per_1000_lookups"] = 1000.0 * d["blocks_read"] / lookups if lookups else 0.0
    d["useful_per_byte_read"] = d["useful_bytes"] / d["bytes_read"] if d["bytes_read"] else 0.0
    return d


def _no_bar(progress: bool | None) -> bool:
    """tqdm's disable flag: bars by default only on a terminal."""
    if progress is None:
        return None  # type: ignore[return-value]  # tqdm: None disables on non-TTY
    return not progress


def _open_table_data(data: Any) -> np.ndarray:
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise InvalidArgumentError(f"no such file: {path}", argument="data", value=str(path))
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InvalidArgumentError(
                f"{path} is not a readable .npy array ({exc})", argument="data", value=str(path)
            ) from exc
        if not isinstance(array, np.ndarray):
            raise InvalidArgumentError(f"{path} is not a single .npy array", argument="data")
    else:
        array = np.asarray(data)
    if array.dtype.kind != "f":
        raise InvalidDtypeError(
            f"table data must be floating point (float16/32/64), got dtype {array.dtype}",
            argument="data",
            dtype=array.dtype,
        )
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InvalidShapeError(
            f"table data must be a non-empty 2-D array (rows, dim), got shape {array.shape}",
            argument="data",
            shape=array.shape,
        )
    return array


def create(
    path: str | os.PathLike,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    checksum_bytes: int | None = None,
    exist_ok: bool = False,
    verify_reads: bool = True,
) -> Store:
    """Create a new, empty store at ``path`` and open it for writing.

    ``checksum_bytes``: the sector each block checksum covers, a power of two from 64 to
    ``block_size`` (default ``min(DEFAULT_CHECKSUM_BYTES, block_size)``): lookups verify only the
    sectors holding the rows they decode. With ``exist_ok=True`` an existing store is opened for
    writing instead, provided its stored block size (and checksum sector, if given) match.
    """
    root = Path(path)
    if not isinstance(block_size, int) or block_size < 512 or block_size & (block_size - 1):
        raise InvalidArgumentError(
            f"block_size must be a power of two >= 512, got {block_size!r}",
            argument="block_size",
            value=block_size,
        )
    if checksum_bytes is not None and (
        isinstance(checksum_bytes, bool)
        or not isinstance(checksum_bytes, int)
        or not 64 <= checksum_bytes <= block_size
        or checksum_bytes & (checksum_bytes - 1)
    ):
        raise InvalidArgumentError(
            f"checksum_bytes must be a power of two from 64 to block_size ({block_size}), "
            f"got {checksum_bytes!r}",
            argument="checksum_bytes",
            value=checksum_bytes,
        )
    if root.exists() and any(root.iterdir()):
        if exist_ok and (root / "catalog").is_dir():
            return open(root, writable=True, block_size=block_size, verify_reads=verify_reads,
                        checksum_bytes=checksum_bytes)  # fmt: skip
        raise StoreExistsError(str(root))
    root.mkdir(parents=True, exist_ok=True)
    if checksum_bytes is None:
        checksum_bytes = min(DEFAULT_CHECKSUM_BYTES, block_size)
    catalog = Catalog.create(root, block_size=block_size, checksum_bytes=checksum_bytes)
    (root / blockfile.VERSIONS_DIR).mkdir(exist_ok=True)
    return Store(root, catalog, writable=True, verify_reads=verify_reads)


def open(  # noqa: A001 - the package's public verb, like zarr.open
    path: str | os.PathLike,
    *,
    cache_bytes: int | Mapping[str, int] | None = None,
    threshold: int | Mapping[str, int] | None = None,
    pinned_share: float | Mapping[str, float] | None = None,
    writable: bool = False,
    block_size: int | None = None,
    checksum_bytes: int | None = None,
    verify_reads: bool = True,
    record: str | os.PathLike | None = None,
    sample_rate: float = 0.01,
    workers: int | None = None,
    plan: Any = None,
) -> Store:
    """Open a store for serving.

    cache_bytes: DRAM for row caches, a total (split by the tuned sizes, or by table size) or
    ``{table: bytes}``; None uses the sizes stored by tuning, else 10% of each table's rows.
    threshold / pinned_share: override the stored admission threshold (0 admits every neighbour
    of a missed row, ``NEVER`` none) and pinned share, for all tables or per table; None keeps
    the stored ones (a store with no recorded access counts never admits neighbours).
    record: a directory to append sampled queries to (``sample_rate`` of them), for relayout.
    workers / plan: lookup_many runs on ``workers`` threads (default: the plan's, else 1);
    ``plan`` None serves the applied plan unless ``cache_bytes`` is given, False none, or a
    Plan / plan dict.
    """
    root = Path(path)
    catalog = Catalog.open(root)
    recorder: Any = None
    try:
        stored = catalog.format["block_size"]
        if block_size is not None and block_size != stored:
            raise FormatMismatchError("block_size", stored, block_size)
        stored_cb = catalog.format["checksum_bytes"]
        if checksum_bytes is not None and checksum_bytes != stored_cb:
            raise FormatMismatchError("checksum_bytes", stored_cb, checksum_bytes)
        if record is not None:
            from bandstore.traces.recorder import TraceRecorder

            recorder = TraceRecorder(record, sample_rate=sample_rate)
        return Store(
            root,
            catalog,
            writable=writable,
            cache_bytes=cache_bytes,
            threshold=threshold,
            pinned_share=pinned_share,
            verify_reads=verify_reads,
            recorder=recorder,
            workers=workers,
            plan=plan,
        )
    except BaseException:
        if recorder is not None:
            recorder.close()
        catalog.close()
        raise


__all__ = ["Store", "TableInfo", "create", "open"]
