"""The Store: opens a version of a store directory and serves lookups from it.

A Store serves the version that was current when it was opened (or last refreshed); a writer
that commits a new version never disturbs it. Each table has its own DRAM cache and its own
lock: calls on different tables run in parallel (the kernels release the GIL), calls on one
table are serialized because its cache is mutable state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import re
import shutil
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from bandstore.errors import (
    BandstoreError,
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
    StorageFullError,
    StoreClosedError,
    StoreExistsError,
    StorePickleError,
    TableExistsError,
    UnknownTableError,
)
from bandstore.kernels import cache as kc
from bandstore.kernels.resident import _all_in_range, _checked_bags, _non_decreasing
from bandstore.options import (
    CacheOptions,
    ServeOptions,
    check_threshold,
    threshold_from_json,
    threshold_to_json,
)
from bandstore.progress import bar as progress_bar
from bandstore.serve import follow, overlay, runtime
from bandstore.serve.cache import (
    CachePolicy,
    CacheState,
    cache_row_bytes,
    capacity_rows,
    pinned_ids,
)
from bandstore.serve.executor import CallCounts, LatencyLog
from bandstore.serve.plan import META_KEY as PLAN_KEY
from bandstore.serve.plan import Plan
from bandstore.serve.strategies import CachedRunner
from bandstore.storage import blockfile, dram, tier, updates
from bandstore.storage.blockfile import BlockGeometry
from bandstore.storage.catalog import Catalog
from bandstore.storage.codecs import CODECS, codec_id, decode_rows, encode_rows, row_bytes
from bandstore.storage.origin import CountsOrigin

DEFAULT_BLOCK_SIZE = 4096
#: The largest block size a store may have (a block is the unit of every slow-tier read).
MAX_BLOCK_SIZE = 1 << 20
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
_INT64 = np.dtype(np.int64)
_NO_POSITIONS = np.empty(0, dtype=np.int64)
_NO_SLOTS = np.empty(0, dtype=np.int32)
_NO_BYTES = np.empty(0, dtype=np.uint8)


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

    def __init__(self, name: str, rec: dict, vdir: Path, catalog: Catalog, verify_reads: bool,
                 io: str = "mmap"):  # fmt: skip
        self.name = name
        self.checksum_bytes = int(catalog.format["checksum_bytes"])
        self.record = rec
        try:
            self.file_id = str(rec["file_id"])
            self.geometry = BlockGeometry(
                rows=rec["rows"],
                dim=rec["dim"],
                codec=rec["codec"],
                row_bytes=rec["row_bytes"],
                rows_per_block=rec["rows_per_block"],
                n_blocks=rec["n_blocks"],
                block_size=rec["block_size"],
            )
            rec["block_file"], rec["layout_file"], int(rec["layout_checksum"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(
                str(catalog.root), f"the catalog's record of table {name!r} is malformed ({exc!r})"
            ) from exc
        g = self.geometry
        where = f"{catalog.root} table {name!r}"
        # The catalog is trusted no further than this: a geometry the kernels would read or
        # write out of bounds with, or files outside the version, are a corrupt store.
        blockfile.check_geometry(g, int(catalog.format["block_size"]), where)
        self.info = TableInfo(
            name, g.rows, g.dim, g.codec, g.rows_per_block, g.n_blocks, g.row_bytes, g.block_size
        )
        self.codec = codec_id(g.codec)
        self.block_path = vdir / blockfile.check_file_name(rec["block_file"], where)
        # How the block file is read (storage.tier): ``blocks_u8`` is its mapping with mmap,
        # None with direct (each kernel call gets a staging area from ``source.batch``).
        self.io = io
        self.source = tier.open_source(self.block_path, g, io)
        self.blocks_u8 = getattr(self.source, "buf", None)
        self.device_bytes = 0  # what the device read for lookups (stats' device_bytes)
        layout_path = vdir / blockfile.check_file_name(rec["layout_file"], where)
        self.layout = blockfile.read_layout_file(layout_path, g.rows, rec["layout_checksum"])
        # Read at random by lookups (neighbour admission, misses): large ones on huge pages.
        inverse = dram.full(g.n_blocks * g.rows_per_block, -1, np.int64)
        self.inverse_layout = blockfile.invert_layout(self.layout, inverse, str(layout_path))
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
        self.cache = CacheState(g.rows, g.dim, 0, codec=g.codec)
        self.runner: Any = None  # a planned strategy other than cached (serve.strategies)

    def configure_cache(self, policy: CachePolicy) -> None:
        """(Re)build the cache empty under ``policy``, loading its pinned rows."""
        g = self.geometry
        capacity = capacity_rows(policy.cache_bytes, g.dim, g.rows, g.codec)
        cache = CacheState(g.rows, g.dim, capacity, codec=g.codec)
        pinned = self.verified_rows(pinned_ids(self.counts, int(policy.pinned_share * capacity)))
        if pinned.size and self.blocks_u8 is None:  # io="direct": read as a lookup reads
            kc._load_pinned(pinned, False, cache.slot_of_id, cache.id_of_slot, cache.meta,
                            cache.data, self.layout, g.rows_per_block, g.block_size,
                            g.row_bytes, self.codec, g.dim, _NO_BYTES)  # fmt: skip
            cache.data[: pinned.size] = self.encoded_ids(pinned)
        elif pinned.size:
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

    def mismatched_blocks(self, b0: int, b1: int, staged: np.ndarray | None = None) -> np.ndarray:
        """The blocks in ``[b0, b1)`` with a sector that does not match its checksum (read from
        ``staged``, a buffer laid out like the file holding them, else through the source)."""
        g = self.geometry
        spb = g.block_size // self.checksum_bytes
        if staged is None:
            buf = self.source.data(b0, b1)
        else:
            buf = np.asarray(staged[(b0 + 1) * g.block_size : (b1 + 1) * g.block_size])
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
        bad_parts = []
        step = max(1, (32 << 20) // cb)  # gather at most 32 MiB of sectors at a time
        for i in range(0, sectors.size, step):
            sec = sectors[i : i + step]
            starts = (sec // spb + 1) * g.block_size + (sec % spb) * cb
            with self.source.batch(functools.partial(_unique_blocks, sec, spb)) as buf:
                data = buf[starts[:, None] + np.arange(cb)].reshape(-1)
            bad_parts.append(sec[block_checksums(data, cb) != self.checksums[sec]])
        bad = np.concatenate(bad_parts)
        if bad.size == 0:
            return ids
        ok = ~(np.isin(first, bad) | np.isin(last, bad))
        return np.ascontiguousarray(ids[ok])

    def maps(self) -> tuple[Any, np.ndarray]:
        """``(source, layout)``, or StoreClosedError once ``close()`` dropped them (a call
        that passed the store's open check as another thread closed it)."""
        source, layout = self.source, self.layout
        if source is None or layout is None:
            raise StoreClosedError()
        return source, layout

    def blocks_of(self, ids: np.ndarray, padding_idx: int = -1,
                  slot_of_id: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """The distinct blocks (ascending) a kernel reads for ``ids``: those of the ids without
        a cache slot in ``slot_of_id`` (None: of every id), padding left out."""
        from bandstore.kernels.tier import _missed_blocks

        out = np.empty(ids.shape[0], dtype=np.int64)
        index = _NO_SLOTS if slot_of_id is None else slot_of_id
        g = self.geometry
        k = _missed_blocks(ids, padding_idx, index, self.layout, g.rows_per_block, out)
        return out[:k]

    def encoded_ids(self, ids: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """Rows ``ids`` as their codec stores them (uint8 (n, row_bytes), on huge pages when
        large: what resident tables, cache slots and pinned sets hold), read through the source
        ``chunk`` at a time and unverified (callers verify first: ``verified_rows``)."""
        g = self.geometry
        out = dram.zeros((ids.shape[0], g.row_bytes), np.uint8)
        layout = np.asarray(self.layout)
        for a in range(0, ids.shape[0], chunk):
            out[a : a + chunk] = self.raw_rows(layout[ids[a : a + chunk]])
        return out

    def raw_rows(self, slots: np.ndarray) -> np.ndarray:
        """The encoded rows at ``slots`` (n, row_bytes), a copy read through the source."""
        g = self.geometry
        slots = np.asarray(slots)
        if slots.size == 0:
            return np.empty((0, g.row_bytes), dtype=np.uint8)
        blk = slots // g.rows_per_block
        with self.source.batch(lambda: np.unique(blk)) as buf:
            return blockfile.rows_view(buf, g)[blk, slots % g.rows_per_block]

    def warm(self, ids: np.ndarray) -> int:
        """Admit rows ``ids`` (distinct) into the cache as a lookup of them would, without
        neighbours and without counting them in the table's counters (a version switch warms
        a new table this way); return the blocks read."""
        g = self.geometry
        source, layout = self.maps()
        batch = np.zeros(kc.N_STATS, dtype=np.int64)
        error = np.zeros(1, dtype=np.int64)
        out = np.empty((ids.shape[0], g.dim), dtype=np.float32)
        offsets = np.arange(ids.shape[0] + 1, dtype=np.int64)
        with self.lock:
            c = self.cache
            rb = source.batch(lambda: self.blocks_of(ids, -1, c.slot_of_id))
            with rb as blocks_u8:
                status = kc._cache_batch(ids, offsets, _NO_WEIGHTS, kc.MODE_COPY, -1, out, True,
                                         c.slot_of_id, c.id_of_slot, c.ref, c.meta, c.data,
                                         self.counts, kc.NEVER, layout, self.inverse_layout,
                                         g.rows_per_block, g.block_size, g.row_bytes, self.codec,
                                         g.dim, blocks_u8, self.checksums, self.checksum_bytes,
                                         self.verify_reads, batch, error)  # fmt: skip
        if status != kc.STATUS_OK:
            raise self.corrupt_block_error(int(error[0]))
        return int(batch[kc.STAT_BLOCKS_READ])

    def serve(self, ids, offsets, weights, mode, padding_idx, out, stats=None) -> None:
        """Run one batch through the cache kernel; raise on a corrupt block.

        The batch's counters go to ``stats`` if given (a ``lookup_many`` job's, added to the
        table's once the whole call succeeded), else to the table's; none on an error."""
        runner = self.runner
        if runner is not None:  # the table's planned strategy (serve.strategies)
            runner.serve(ids, offsets, weights, mode, padding_idx, out, stats)
            return
        g = self.geometry
        source, layout = self.maps()
        batch = np.zeros(kc.N_STATS, dtype=np.int64)
        error = np.zeros(1, dtype=np.int64)
        with self.lock:
            c = self.cache
            rb = source.batch(lambda: self.blocks_of(ids, padding_idx, c.slot_of_id))
            with rb as blocks_u8:
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
                    layout,
                    self.inverse_layout,
                    g.rows_per_block,
                    g.block_size,
                    g.row_bytes,
                    self.codec,
                    g.dim,
                    blocks_u8,
                    self.checksums,
                    self.checksum_bytes,
                    self.verify_reads,
                    batch,
                    error,
                )
            if status == kc.STATUS_OK:
                if stats is None:
                    self.stats += batch
                    self.device_bytes += rb.device_bytes
                else:  # a job's: [counters..., device bytes], committed on success
                    stats[: kc.N_STATS] += batch
                    stats[kc.N_STATS] += rb.device_bytes
                return
        raise self.corrupt_block_error(int(error[0]))

    def corrupt_block_error(self, block: int) -> CorruptBlockError:
        """The error naming ``block`` of this table, with the stored and actual checksums of
        its first mismatched sector."""
        g, cb = self.geometry, self.checksum_bytes
        spb = g.block_size // cb
        expected = actual = 0
        raw = self.source.data(block, block + 1)
        for s in range(spb):
            actual = xxhash.xxh64_intdigest(bytes(raw[s * cb : (s + 1) * cb]))
            expected = int(self.checksums[block * spb + s])
            if actual != expected:
                break
        return CorruptBlockError(self.name, block, str(self.block_path), expected, actual)

    def close(self) -> None:
        # Drop the maps; in-flight calls hold their own references until they return. (No
        # call reaches a closed table: the store checks it is open first.)
        self.blocks_u8 = None
        if self.source is not None:
            self.source.close()
        self.source = None  # type: ignore[assignment]
        self.layout = None  # type: ignore[assignment]


def _unique_blocks(sectors: np.ndarray, sectors_per_block: int) -> np.ndarray:
    """The distinct blocks (ascending) of checksum ``sectors``."""
    return np.unique(sectors // sectors_per_block)


def _check_open_arguments(cache_bytes: Any, threshold: Any, pinned_share: Any) -> None:
    """InvalidArgumentError unless each is None, a valid value, or a mapping of table names to
    valid values: cache_bytes an integer >= 0, threshold an integer >= 0 (``NEVER``: never
    admit neighbours), pinned_share a real number in [0, 1]."""

    def values(arg: Any, name: str) -> list:
        if isinstance(arg, Mapping):
            bad = [k for k in arg if not isinstance(k, str)]
            if bad:
                raise InvalidArgumentError(
                    f"{name} maps table names to values; {bad[0]!r} is not a table name",
                    argument=name,
                    value=bad[0],
                )
            return list(arg.values())
        return [] if arg is None else [arg]

    for v in values(cache_bytes, "cache_bytes"):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise InvalidArgumentError(
                f"cache_bytes must be an integer number of bytes >= 0 (or a mapping of table "
                f"names to them), got {v!r}",
                argument="cache_bytes",
                value=v,
            )
    for v in values(threshold, "threshold"):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise InvalidArgumentError(
                f"threshold must be an integer >= 0 (bandstore.NEVER: no neighbours), got {v!r}",
                argument="threshold",
                value=v,
            )
    for v in values(pinned_share, "pinned_share"):
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float | np.integer | np.floating)
            or not 0.0 <= float(v) <= 1.0
        ):
            raise InvalidArgumentError(
                f"pinned_share must be a number in [0, 1], got {v!r}",
                argument="pinned_share",
                value=v,
            )


def _validate_table_name(name: str) -> None:
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
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


_REQUEST_KEYS = (
    "indices",
    "offsets",
    "mode",
    "per_sample_weights",
    "include_last_offset",
    "padding_idx",
)


def _bag_request(table: str, req: Any, mode: Any) -> tuple:
    """One ``lookup_many`` request as ``_prepare_bag``'s arguments after the table name."""
    if isinstance(req, Mapping):
        unknown = sorted(set(req) - set(_REQUEST_KEYS))
        if unknown or "indices" not in req:
            problem = f"has unknown keys {unknown}" if unknown else "has no 'indices'"
            raise InvalidArgumentError(
                f"request for table {table!r} {problem}; the keys are {list(_REQUEST_KEYS)}",
                argument="requests",
            )
        return (
            req["indices"],
            req.get("offsets"),
            req.get("mode", mode),
            req.get("per_sample_weights"),
            bool(req.get("include_last_offset", False)),
            req.get("padding_idx"),
        )
    if not isinstance(req, tuple | list) or len(req) not in (2, 3):
        raise InvalidArgumentError(
            f"request for table {table!r} must be (indices, offsets), "
            "(indices, offsets, weights) or a mapping with 'indices', 'offsets', 'mode'...",
            argument="requests",
        )
    return req[0], req[1], mode, req[2] if len(req) == 3 else None, False, None


def _in_bags(
    ids: np.ndarray, off: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Only the ids inside a bag reach the kernels, with offsets from 0: with no bag at all
    (empty offsets) or a last offset short of the end (``include_last_offset``) the others
    are never read, and the kernels assume every id belongs to a bag."""
    lo, hi = int(off[0]), int(off[-1])
    if lo == 0 and hi == ids.shape[0]:
        return ids, off, weights
    w = weights[lo:hi] if weights.shape[0] else weights
    return ids[lo:hi], off - lo, w


def check_offsets(offsets: Any, n: int, include_last_offset: bool, table: str) -> np.ndarray:
    """``offsets`` of a bag request over ``n`` indices, checked (integers, 1-D, starting at 0,
    never decreasing, within the indices; an InvalidOffsetsError names the rule and position)
    and with ``n`` appended unless ``include_last_offset``. The one offsets check: the server
    validates with it too."""
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


class _Resources:
    """What an open Store holds outside Python objects; ``release`` gives it all back once
    (called by ``Store.close``, or by the finalizer of a store dropped without it)."""

    def __init__(self, catalog: Catalog, recorder: Any):
        self.catalog: Catalog | None = catalog
        self.recorder = recorder
        self.executor: Any = None
        self.reader_lock: Any = None

    def stop_serving(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        if self.executor is not None:
            self.executor.close()

    def release(self) -> None:
        self.stop_serving()
        if self.reader_lock is not None:
            self.reader_lock.release()
            self.reader_lock = None
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None


class Store:
    """An open bandstore store. Use :func:`bandstore.open` or :func:`bandstore.create`."""

    def __init__(
        self,
        root: Path,
        catalog: Catalog,
        *,
        writable: bool,
        cache: CacheOptions | None = None,
        verify_reads: bool = True,
        recorder: Any = None,
        workers: int | None = None,
        plan: Any = None,
        io: str = "mmap",
    ):
        cache = cache if cache is not None else CacheOptions()
        _check_open_arguments(cache.cache_bytes, cache.threshold, cache.pinned_share)
        self.root = root
        self._io = tier.check_io(io)
        self._catalog = catalog
        self._writable = writable
        self._verify_reads = verify_reads
        self._cache_arg = cache.cache_bytes
        self._threshold_arg = cache.threshold
        self._pinned_arg = cache.pinned_share
        self._recorder = recorder
        # What open() was given, for pickling (see __reduce__); None for create()'s handles.
        self._open_options: dict[str, Any] | None = None
        self._closed = False
        self._switch_lock = threading.RLock()
        self._tables: dict[str, _Table] = {}
        # What a store dropped without close() must still give back (its version's reader
        # lock, the catalog, the worker threads): released by a finalizer, or by close().
        self._res = _Resources(catalog, recorder)
        self._finalizer = weakref.finalize(self, self._res.release)
        self._version: dict = {}

        self._workers_arg = workers
        self._plan_arg = plan
        self._plan: Any = None
        self._latency = LatencyLog()
        self._call_counts = CallCounts()  # parallel / inline calls, whatever the executor
        self._listeners: list[Any] = []  # told of recorded queries (e.g. a background re-planner)
        # Version switches (refresh, commits, the follower) happen between calls: each call
        # holds the gate from validation to its counters (bandstore.serve.follow).
        self._gate = follow.CallGate()
        self._follow_lock = threading.RLock()
        self._swap_counters = follow.SwapCounters()
        self._follower: follow.Follower | None = None
        self._load_current()

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple:
        """Pickle as a reference: the store's absolute path and open() options, never its data.

        Unpickling (``pickle``, ``copy.deepcopy``, ``torch.save``/``load``, a worker process)
        calls ``bandstore.open`` again: a new read-only handle with its own, empty caches, serving
        the version that is current *then*. ``record`` is not carried over
        (two processes must not append to one log). Only read-only handles from ``open()``
        pickle: a writable one (or a closed one) raises :class:`StorePickleError`, since its
        copy could not hold the write role it stands for.
        """
        if self._closed or self._writable or self._open_options is None:
            why = (
                "it is closed"
                if self._closed
                else "it is writable: open it with bandstore.open(path) (read-only) to pickle"
            )
            raise StorePickleError(str(self.root), why)
        return (_reopen, (self._open_options["path"], self._open_options["options"]))

    def close(self) -> None:
        """Release the version, the catalog and the caches. Idempotent."""
        if self._follower is not None:
            self._follower.close()  # (waits for a switch being prepared)
        for listener in list(self._listeners):
            listener.close()  # before the lock: a running re-plan may be switching plans
        with self._switch_lock:
            if self._closed:
                return
            self._closed = True
            self._res.stop_serving()  # the recorder, then the workers (after calls in flight)
            overlay.close(self)
            for t in self._tables.values():
                t.close()
            self._tables = {}
            self._finalizer()  # the reader lock and the catalog

    # The executor and the version's reader lock live in ``_res`` (released by the finalizer).
    @property
    def _executor(self) -> Any:
        return self._res.executor

    @_executor.setter
    def _executor(self, value: Any) -> None:
        self._res.executor = value

    @property
    def _reader_lock(self) -> Any:
        return self._res.reader_lock

    @_reader_lock.setter
    def _reader_lock(self, value: Any) -> None:
        self._res.reader_lock = value

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
    def io(self) -> str:
        """How the block files are read: ``mmap`` or ``direct`` (:mod:`bandstore.storage.tier`)."""
        return self._io

    @property
    def block_size(self) -> int:
        self._check_open()
        return int(self._catalog.format["block_size"])

    @property
    def checksum_bytes(self) -> int:
        """The sector each stored checksum covers (``block_size`` for a format 1 store)."""
        self._check_open()
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
    @property
    def follows_versions(self) -> bool:
        """Whether this store moves to newly committed versions by itself
        (``ServeOptions(follow_versions=True)``; see :mod:`bandstore.serve.follow`)."""
        return self._follower is not None

    def _locked_current(self) -> tuple[dict, Path, Any]:
        """The catalog's current version, its directory and a reader lock on it."""
        while True:
            rec = self._catalog.current_version()
            vdir = blockfile.version_path(self.root, rec["id"])
            try:
                lock = blockfile.ReaderLock(vdir) if rec["tables"] else None
            except FileNotFoundError as exc:
                # A writer committed and a garbage collector removed this version between
                # the two steps: retry on the new current version. If it is still current,
                # its directory is really missing.
                if self._catalog.current_version()["id"] == rec["id"]:
                    raise CorruptFileError(
                        str(vdir), "the current version's directory is missing"
                    ) from exc
                continue
            # A garbage collector may have removed the version between the two steps.
            if self._catalog.version(rec["id"]) is not None:
                return rec, vdir, lock
            if lock is not None:
                lock.release()

    def _load_current(self) -> None:
        """Open the catalog's current version: lock it, map its files, build caches."""
        with self._follow_lock:
            self._install_version(*self._locked_current())

    def _prepare_current(self) -> tuple[dict, Path, Any, dict[str, _Table]] | None:
        """The catalog's current version opened beside the served one (tables, caches), or
        None if it is the served one (``bandstore.serve.follow``)."""
        rec, vdir, lock = self._locked_current()
        if self._version and rec["id"] == self.version:
            if lock is not None:
                lock.release()
            return None
        # (caches are left to runtime.build, which knows each table's strategy: a pinned or
        # resident table's cache would be built only to be dropped)
        return rec, vdir, lock, self._prepare_tables(rec, vdir, lock, caches=False)

    def _prepare_tables(self, rec: dict, vdir: Path, lock: Any, caches: bool = True
                        ) -> dict[str, _Table]:  # fmt: skip
        """The tables of version ``rec``: the served ones whose file and counts are unchanged,
        new ones (``caches``: with their caches built) for the others. Releases ``lock`` if it
        raises."""
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
                tables[name] = _Table(name, trec, vdir, self._catalog, self._verify_reads,
                                      self._io)  # fmt: skip
            for name, t in tables.items():
                if caches and old.get(name) is not t:
                    t.configure_cache(self._policy_for(name, t, tables))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return tables

    def _install_version(self, rec: dict, vdir: Path, lock: Any) -> None:
        with self._follow_lock:
            self._publish(rec, self._prepare_tables(rec, vdir, lock), lock, None)

    def _publish(self, rec: dict, tables: dict[str, _Table], lock: Any, built: Any,
                 patience: float = 0.0) -> float:  # fmt: skip
        """Serve ``tables`` of version ``rec`` from the next call on: under the call gate (no
        call in flight), switch tables, version, plan runners and executor (``built``, else
        built here) and, for a prepared switch, the update overlay. Returns the seconds the
        gate was closed (waiting for the calls in flight included; with ``patience``, the
        switch first waits that long for a gap between calls, not holding new calls back)."""
        old = self._tables
        old_exec = None
        t0 = time.perf_counter()
        with self._gate.exclusive(patience):
            t0 = max(t0, self._gate.closed_at)
            for name, t in tables.items():
                prev = old.get(name)
                if prev is not None and prev is not t and _same_rows(prev.info, t.info):
                    t.stats = prev.stats  # the same table rewritten: its counters go on
                    t.device_bytes = prev.device_bytes
            with self._switch_lock:
                previous_lock = self._reader_lock
                self._tables = tables
                self._version = rec
                self._reader_lock = lock
            try:
                if built is None:
                    runtime.attach(self)  # the served plan's strategies and workers
                else:
                    with runtime._attach_lock:
                        old_exec = runtime.install(self, built)
                    overlay.catch_up(self)  # the updates this version did not fold
            except BaseException:
                if self._executor is None:  # a store being opened with a bad plan: release it
                    self.close()
                raise
            finally:
                if previous_lock is not None:
                    previous_lock.release()
            blocked = time.perf_counter() - t0
        if old_exec is not None:
            old_exec.close()  # (nothing can start on it any more)
        return blocked

    def refresh(self) -> bool:
        """Serve the catalog's current version if it changed; return whether it did. Either
        way, every row update committed so far is served from the next call on.

        In-flight calls finish on the version they started with. Caches of tables whose rows
        did not change (a relayout) are rebuilt empty; use ``stats()`` counters to see it warm.
        """
        self._check_open()
        with self._follow_lock:
            current = self._catalog.current_version()
            changed = current["id"] != self.version
            if changed:
                self._load_current()
        overlay.catch_up(self)
        return changed

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

        Every runner is built (the plan checked against this store) before anything is
        stored: a plan that cannot be served raises and leaves the catalog, the counts and the
        served plan as they were.
        """
        self._check_open()
        if runtime.is_strategy_mapping(plan):  # the short form {table: strategy_name}
            plan = runtime.strategies_plan(self, plan)
        elif plan is not None and not isinstance(plan, Plan):
            plan = Plan.from_dict(plan, self.tables)
        counts: dict[str, np.ndarray] = {}
        if persist:
            self._check_writable()
            counts = self._checked_counts(plan.counts) if plan is not None else {}
        with self._switch_lock:
            old_arg = self._plan_arg
            old_counts = {n: (self._tables[n].counts, self._tables[n].has_counts) for n in counts}
            try:
                self._install_counts(counts)
                self._plan_arg = plan if plan is not None else False
                runtime.attach(self)  # builds every runner first: raises before any switch
                if persist:
                    origins = _origin_records(
                        counts,
                        plan.counts_origin if plan is not None else None,
                        "set_plan",
                        self.version,
                    )
                    value = plan.as_dict() if plan is not None else None
                    self._catalog.put_meta(PLAN_KEY, value, counts, origins)
            except BaseException:
                for n, (c, has) in old_counts.items():
                    self._tables[n].counts, self._tables[n].has_counts = c, has
                self._plan_arg = old_arg
                runtime.attach(self)  # back to what was served (rebuilt from the same state)
                raise

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

    @contextlib.contextmanager
    def recording_paused(self) -> Iterator[None]:
        """A block whose lookups are not recorded (a server's warm-up is not traffic); the
        recorder is back when it ends, even on an error. It pauses recording for every thread:
        use it while nothing else serves. A no-op without a recorder."""
        self._check_open()
        recorder, self._recorder = self._recorder, None
        try:
            yield
        finally:
            self._recorder = recorder

    @property
    def verify_reads(self) -> bool:
        """Whether lookups check the sectors they decode against their checksums."""
        return self._verify_reads

    def cache_policy(self, table: str) -> CachePolicy:
        """The cache policy ``table`` has when it is served ``cached``: the open arguments,
        else the stored tuning, else the defaults."""
        t = self._table(table)
        return self._policy_for(table, t, self._tables)

    def counts_origin(self, table: str) -> CountsOrigin | None:
        """Where ``table``'s stored access counts came from (the job that wrote them, its
        trace, when, with which version), or None: no counts, or counts stored before origins
        were recorded. Read from the catalog: another process's newer counts show here before
        this store serves them (after :meth:`refresh` for a relayout)."""
        self._table(table)  # an unknown table raises
        rec = self._catalog.counts_origin(table)
        return CountsOrigin.from_dict(rec) if isinstance(rec, dict) else None

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
            crb = cache_row_bytes(t.info.dim, t.info.codec)
            cache_bytes = int(DEFAULT_CACHE_FRACTION * t.info.rows) * crb
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
        sized = {n: float(v) for n, v in tuned.items() if v is not None}
        if len(sized) == len(tuned) and sum(sized.values()) > 0:
            weights = sized
        else:
            weights = {
                n: float(t.info.rows * cache_row_bytes(t.info.dim, t.info.codec))
                for n, t in all_tables.items()
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
        is its frozen set of rows; a cached split's, its parts' caches together; ``resident``
        and ``direct`` tables have none).

        This is the one source of truth for the cache a table is served with; ``source`` says
        where its size came from: ``plan`` (the served plan sizes every table it names),
        ``open`` (``open(cache_bytes=...)``), ``tuning`` (stored by ``size_cache(apply=True)``
        or ``set_tuning``) or ``default`` (a share of the table's rows). ``overlay_bytes``: the
        DRAM of the table's rows updated since the served version (beside the cache's)."""
        self._check_open()
        out = {}
        ov_bytes = overlay.memory(self)
        plan = self._plan
        for name, t in self._tables.items():
            if plan is not None and name in plan.tables:
                source = "plan"
            elif self._cache_arg is not None and (
                not isinstance(self._cache_arg, Mapping) or name in self._cache_arg
            ):
                source = "open"
            elif "cache_bytes" in (self._catalog.tuning(name) or {}):
                source = "tuning"
            else:
                source = "default"
            if hasattr(t.runner, "cache_info"):  # a planned strategy with rows of its own
                out[name] = {**t.runner.cache_info(), "source": source,
                             "overlay_bytes": ov_bytes.get(name, 0)}  # fmt: skip
                continue
            c = t.cache
            out[name] = {
                "source": source,
                "cache_bytes": t.policy.cache_bytes,
                "capacity_rows": c.capacity,
                "cached_rows": c.filled,
                "pinned_rows": c.pinned,
                "threshold": t.policy.threshold,
                "pinned_share": t.policy.pinned_share,
                "dram_bytes": c.nbytes,
                "overlay_bytes": ov_bytes.get(name, 0),
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
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"a table name must be a string, got {type(name).__name__} {name!r}",
                argument="table",
                value=name,
            )
        t = self._tables.get(name)
        if t is None:
            raise UnknownTableError(name, list(self._tables))
        return t

    def lookup(self, table: str, ids: Any) -> np.ndarray:
        """Rows ``ids`` of ``table`` as a float32 array of shape (len(ids), dim)."""
        outer = self._gate.enter()  # (a version switch waits for the call; see serve.follow)
        try:
            return self._lookup(table, ids)
        finally:
            self._gate.leave(outer)

    def _lookup(self, table: str, ids: Any) -> np.ndarray:
        t = self._table(table)
        ids = _check_ids(_as_int_array(ids, "ids", table), t.info)
        n = ids.shape[0]
        out = np.zeros((n, t.info.dim), dtype=np.float32)
        offsets = np.arange(n + 1, dtype=np.int64)
        overlay.serve_one(self, t, ids, offsets, _NO_WEIGHTS, kc.MODE_COPY, -1, out)
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
        if not isinstance(mode, str) or mode not in MODES:
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
                ids, off, w = _in_bags(indices, off, _NO_WEIGHTS)
                return t, ids, off, w, MODES[mode], -1
        idx = _as_int_array(indices, "indices", table)
        bags: np.ndarray | None = None  # the offsets of the 2-D form
        if idx.ndim == 2:
            # torch's 2-D form: each row is a bag of the same length, offsets must be None.
            if offsets is not None:
                raise InvalidOffsetsError(
                    f"offsets must be None when indices for table {table!r} are 2-D", table=table
                )
            n_bags, length = idx.shape
            idx = idx.reshape(-1)
            bags = np.arange(0, n_bags * length + 1, max(length, 1), dtype=np.int64)
            if length == 0:
                bags = np.zeros(n_bags + 1, dtype=np.int64)
            if per_sample_weights is not None:
                per_sample_weights = np.asarray(per_sample_weights).reshape(-1)
        else:
            if offsets is None:
                raise InvalidOffsetsError(
                    f"offsets are required when indices for table {table!r} are 1-D", table=table
                )
        ids = _check_ids(idx, t.info, "indices")
        if bags is None:
            off = check_offsets(offsets, ids.shape[0], include_last_offset, table)
        else:
            off = bags
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
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, int | np.integer):
                raise InvalidArgumentError(
                    f"padding_idx must be an integer or None, got {padding_idx!r}",
                    argument="padding_idx",
                    value=padding_idx,
                )
            p = int(padding_idx)
            if not -t.info.rows <= p < t.info.rows:
                raise InvalidArgumentError(
                    f"padding_idx {p} is out of range for table {table!r} with {t.info.rows} rows",
                    argument="padding_idx",
                    value=p,
                )
            pad = p % t.info.rows
        ids, off, weights = _in_bags(ids, off, weights)
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
        outer = self._gate.enter()
        try:
            t, ids, off, weights, mode_id, pad = self._prepare_bag(
                table, indices, offsets, mode, per_sample_weights, include_last_offset,
                padding_idx,
            )  # fmt: skip
            # Not zeroed when the table's kernel stores every bag (resident, its cache): at one
            # row per bag, zeroing the output cost about a third of the call.
            runner = t.runner
            every = CachedRunner.stores_every_bag if runner is None else runner.stores_every_bag
            alloc = np.empty if every else np.zeros
            out = alloc((off.shape[0] - 1, t.info.dim), dtype=np.float32)
            overlay.serve_one(self, t, ids, off, weights, mode_id, pad, out)
            self._record({table: (ids, off)})
            return out
        finally:
            self._gate.leave(outer)

    def lookup_many(
        self, requests: Mapping[str, Any], *, mode: str | Mapping[str, str] = "sum"
    ) -> dict[str, np.ndarray]:
        """Serve several tables in one call: ``{table: (indices, offsets[, weights])}``.

        A request may also be a mapping with the keys of :meth:`embedding_bag`: ``indices``
        (required), ``offsets`` (None for 2-D indices), ``per_sample_weights``, ``mode``,
        ``padding_idx``, ``include_last_offset``. ``mode`` is one pooling mode for every table or
        ``{table: mode}`` (tables it leaves out use ``"sum"``); a request's own ``mode`` wins.
        Every request is validated before any is served, so a bad one changes nothing. A call
        that raises while serving (``CorruptBlockError``) returns nothing and changes no
        counter: each table's counters are added only once the whole call succeeded. Cache
        contents are not results and are not rolled back: tables served before the failure
        may keep rows admitted on the way (all of them verified), so no later result differs.
        A call is served by one version from validation to counters (a switch waits for it).
        """
        outer = self._gate.enter()
        try:
            return self._lookup_many(requests, mode)
        finally:
            self._gate.leave(outer)

    def _lookup_many(
        self, requests: Mapping[str, Any], mode: str | Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        self._check_open()
        if not isinstance(requests, Mapping):
            raise InvalidArgumentError(
                "requests must map table names to (indices, offsets[, weights])",
                argument="requests",
            )
        if isinstance(mode, Mapping):
            for table in mode:
                self._table(table)  # a misspelt table raises rather than silently summing
        prepared = self._prepare_plain(requests, mode)
        if prepared is None:  # not all plain (or not all valid): each checked with its options
            prepared = {}
            for table, req in requests.items():
                table_mode = mode.get(table, "sum") if isinstance(mode, Mapping) else mode
                prepared[table] = self._prepare_bag(table, *_bag_request(table, req, table_mode))
        if self._recorder is not None and len({p[2].shape[0] for p in prepared.values()}) > 1:
            # A recorded query is one bag of every table: refuse before serving, not after.
            raise InvalidShapeError(
                "while recording, every table of a lookup_many request must have the same "
                "number of bags (one per query)",
                argument="requests",
                shape=tuple(p[2].shape[0] - 1 for p in prepared.values()),
            )
        t0 = time.perf_counter()
        # The plan's workers (bandstore.serve.executor), updated rows in front (serve.overlay).
        results = overlay.serve_many(self, prepared)
        self._latency.add(time.perf_counter() - t0)
        self._record({table: (p[1], p[2]) for table, p in prepared.items()})
        return results

    def _prepare_plain(self, requests: Mapping[str, Any], mode: Any) -> dict[str, tuple] | None:
        """``_prepare_bag`` of every request at once when all are plain ``(indices, offsets)``
        pairs of C-contiguous 1-D int64 arrays and pass the checks; None otherwise (the caller
        then checks each request on the general path, which names the problem). A call of many
        small tables paid a dozen attribute checks and calls per table on the general path."""
        tables = self._tables
        by_table = isinstance(mode, Mapping)
        mode_id = None if by_table else MODES.get(mode) if isinstance(mode, str) else None
        if mode_id is None and not by_table:
            return None
        out = {}
        for table, req in requests.items():
            if req.__class__ is not tuple or len(req) != 2:
                return None
            ids, offsets = req
            t = tables.get(table) if table.__class__ is str else None
            if (
                t is None
                or ids.__class__ is not np.ndarray
                or offsets.__class__ is not np.ndarray
                or ids.dtype != _INT64
                or offsets.dtype != _INT64
                or ids.ndim != 1
                or offsets.ndim != 1
                or not ids.flags.c_contiguous
                or not offsets.flags.c_contiguous
            ):
                return None
            m = mode_id
            if by_table:
                name = mode.get(table, "sum")
                m = MODES.get(name) if isinstance(name, str) else None
                if m is None:
                    return None
            off = np.empty(offsets.shape[0] + 1, dtype=np.int64)
            if not _checked_bags(ids, offsets, t.info.rows, off):
                return None
            if off[0] != 0 or off[-1] != ids.shape[0]:
                ids, off, _ = _in_bags(ids, off, _NO_WEIGHTS)
            out[table] = (t, ids, off, _NO_WEIGHTS, m, -1)
        return out

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
        total_device = 0
        for name, t in self._tables.items():
            with t.lock:
                s = t.stats.copy()
                dev = t.device_bytes
            total += s
            total_device += dev
            out[name] = _stats_dict(s, dev)
        out["total"] = _stats_dict(total, total_device)
        lat = self._latency.summary()  # lookup_many calls: count, p50/p99 in microseconds
        out["total"].update({f"lookup_many_{k}": v for k, v in lat.items()})
        calls = self._call_counts  # served on the workers / inline as too small for them
        out["total"]["lookup_many_parallel_calls"] = calls.parallel
        out["total"]["lookup_many_inline_calls"] = calls.inline
        # Version switches (bandstore.serve.follow): how many, what they cost, which version.
        out["total"].update(self._swap_counters.as_dict())
        return out

    def memory(self) -> dict[str, dict[str, int]]:
        """The DRAM this store holds, in bytes, per table and in ``total``.

        Per table: ``cache`` (its cache's rows, slot index, CLOCK state), ``strategy`` (what a
        planned strategy holds: a resident copy, a pinned set, a split's caches), ``index``
        (the inverse layout), ``checksums``, ``counts`` (access counts), ``layout`` (the pages
        of the mapped layout file in memory) and ``page_cache`` (the pages of the block file
        the OS page cache holds: ``mincore``, like ``fincore``; with ``io="mmap"`` the lookups
        put them there, with ``io="direct"`` nothing does), ``overlay`` (the rows updated since
        the served version and their index: ``serve.overlay``). ``total`` of each is the sum;
        ``bytes`` sums a table's entries.
        """
        self._check_open()
        out: dict[str, dict[str, int]] = {}
        ov_bytes = overlay.memory(self)
        for name, t in self._tables.items():
            runner = t.runner
            m = {
                "cache": int(t.cache.nbytes),
                "strategy": int(runner.dram_bytes) if runner is not None else 0,
                "index": int(t.inverse_layout.nbytes),
                "checksums": int(t.checksums.nbytes),
                "counts": int(t.counts.nbytes),
                "layout": tier.resident_bytes(np.asarray(t.layout)),
                "page_cache": t.source.page_cache_bytes(),
                "overlay": ov_bytes.get(name, 0),
            }
            m["bytes"] = sum(m.values())
            out[name] = m
        keys = ("cache", "strategy", "index", "checksums", "counts", "layout", "page_cache",
                "overlay")  # fmt: skip
        out["total"] = {k: sum(m[k] for m in out.values()) for k in (*keys, "bytes")}
        return out

    def reset_stats(self) -> None:
        self._check_open()
        for t in self._tables.values():
            with t.lock:
                t.stats[:] = 0
                t.device_bytes = 0
        self._latency.reset()
        self._call_counts.reset()
        self._swap_counters.reset()

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
        return self.add_tables({name: data}, codec=codec, progress=progress)[name]

    def add_tables(
        self,
        tables: Mapping[str, Any],
        *,
        codec: str | Mapping[str, str] = "float32",
        progress: bool | None = None,
        note: str | None = None,
    ) -> dict[str, TableInfo]:
        """Add several tables in ONE new version: all of them become visible together, or (on
        any error, a crash included) none does and the store is as it was.

        Each value is an (n, dim) float array, a path to a ``.npy`` file, a lazy array (an
        object with a numpy ``dtype``, ``shape`` and row slicing, ``data[a:b]`` giving a numpy
        array, as :mod:`bandstore.importers` gives), or ``(rows, dim, read)`` where
        ``read(start, stop)`` returns rows ``[start, stop)`` as a float array, called once per
        chunk in order (tables generated as they are written). ``codec``: one for all tables,
        or one per table name. Everything is checked before anything is written.
        """
        self._check_writable()
        if not isinstance(tables, Mapping) or not tables:
            raise InvalidArgumentError(
                "tables must map at least one table name to its data", argument="tables"
            )
        new = {}
        for name, data in tables.items():
            _validate_table_name(name)
            if name in self._tables:
                raise TableExistsError(name)
            c = codec.get(name, "float32") if isinstance(codec, Mapping) else codec
            if not isinstance(c, str) or c not in CODECS:
                raise InvalidArgumentError(
                    f"unknown codec {c!r}; known codecs: {list(CODECS)}", argument="codec"
                )
            new[name] = self._table_writer(name, data, c)
        names = ", ".join(new)
        self._commit_tables(new, note=note or f"add_table {names}", progress=progress, adding=True)
        return {name: self._tables[name].info for name in new}

    def _table_writer(self, name: str, data: Any, codec: str) -> tuple:
        """(geometry, identity layout, fill) of a new table from ``data`` (``add_tables``)."""
        if isinstance(data, tuple) and len(data) == 3 and callable(data[2]):
            rows, dim = (
                blockfile.check_count(v, n, 1)
                for v, n in zip(data[:2], ("rows", "dim"), strict=True)
            )
            read = data[2]
        else:
            array = _open_table_data(data)
            rows, dim = array.shape

            def read(start: int, stop: int, array: np.ndarray = array) -> np.ndarray:
                return np.asarray(array[start:stop])

        rb = row_bytes(codec, dim)
        bs = self.block_size
        rpb = bs // rb
        if rpb < 1:
            raise InvalidArgumentError(
                f"table {name!r}: a {codec} row of dim {dim} takes {rb} bytes and does not fit "
                f"in a {bs}-byte block",
                argument="data",
            )
        geometry = BlockGeometry(rows, dim, codec, rb, rpb, -(-rows // rpb), bs)
        layout = np.arange(rows, dtype=np.int64)

        def fill(writer: blockfile.BlockFileWriter, pbar: Any) -> None:
            for start in range(0, rows, IMPORT_CHUNK_ROWS):
                stop = min(rows, start + IMPORT_CHUNK_ROWS)
                chunk = read(start, stop)
                if np.shape(chunk) != (stop - start, dim):
                    raise InvalidShapeError(
                        f"table {name!r}: rows [{start}, {stop}) came back with shape "
                        f"{np.shape(chunk)}, not {(stop - start, dim)}",
                        argument="data",
                        shape=np.shape(chunk),
                    )
                writer.write_rows(layout[start:stop], encode_rows(codec, chunk))
                pbar.update(stop - start)

        return geometry, layout, fill

    def _commit_tables(
        self,
        new_tables: Mapping[str, tuple[BlockGeometry, np.ndarray, Any]],
        *,
        note: str,
        progress: bool | None,
        counts: Mapping[str, np.ndarray] | None = None,
        tuning: Mapping[str, dict] | None = None,
        extra: Mapping[str, dict] | None = None,
        origins: Mapping[str, CountsOrigin] | None = None,
        adding: bool = False,
        plan: Plan | None = None,
    ) -> int:
        """Write ``new_tables`` into a new version beside the current one and commit it.

        ``new_tables`` maps a name to (geometry, layout, fill) where ``fill(writer, pbar)``
        writes every row. Other tables are shared with the base version by hard links.
        ``adding``: the tables are new; one the base version already has (another writer
        added it since this store's check) raises TableExistsError, under the write lock.
        ``counts``, ``tuning`` and ``plan`` (served from now on) go into the same transaction.
        """
        with blockfile.write_lock(self.root):
            base = self._catalog.current_version()
            if base["id"] != self.version:
                # Another writer committed: serve its version first so our base is current.
                self._load_current()
                base = self._version
            if adding:
                for name in new_tables:
                    if name in base["tables"]:
                        raise TableExistsError(name)
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
                    with progress_bar(
                        progress, total=g.rows, desc=f"write {name}", unit="row"
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
                    trec["written_by"] = note  # e.g. "add_table x", "relayout metis"
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
                    origins=_origin_records(counts, origins, "relayout_tables", vid),
                    meta={PLAN_KEY: plan.as_dict()} if plan is not None else None,
                )
            except BaseException as exc:
                blockfile.remove_version_dir(vdir, None)
                if isinstance(exc, OSError) and not isinstance(exc, BandstoreError):
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise StorageFullError(str(vdir)) from exc
                raise
            committed = self._catalog.version(vid)
            if committed is None:  # only a concurrent gc of a version it did not see could
                raise CorruptFileError(str(self.root), f"version {vid} vanished after its commit")
            if plan is not None:
                self._plan_arg = plan
            lock = blockfile.ReaderLock(vdir)
            self._install_version(committed, vdir, lock)
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
        counts_origin: CountsOrigin | Mapping[str, CountsOrigin] | None = None,
    ) -> int:
        """Commit a new version where each table in ``layouts`` has the given layout.

        Rows are copied byte for byte from the served version, then every row of the new file
        is compared with the old one before anything is committed; ``counts`` (access counts by
        id, of any table), ``tuning`` (cache policy per table) and ``plan`` (stored and served
        from now on, as :meth:`set_plan` does; its ``Plan.counts`` override ``counts``) are
        committed in the same transaction, with ``counts_origin`` (where the counts came from:
        one for all tables or per table; see :meth:`counts_origin`). ``layouts`` may be empty: a
        version with the same files and new counts, tuning or plan. Returns the new version id.
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
        # Rows updated since the served version (up to the log's latest) are folded in.
        upto, delta = overlay.pending(self, list(layouts))
        new_tables = {}
        for name, layout in layouts.items():
            t = self._table(name)
            g = t.geometry
            blockfile.validate_layout(layout, g.rows, g.rows_per_block)  # (before any cast)
            layout = np.ascontiguousarray(layout, dtype=np.int64)
            top = int(layout.max())
            if top >= g.rows * g.rows_per_block:  # a block file of mostly holes, or overflow
                raise InvalidArgumentError(
                    f"layout of table {name!r}: slot {top} is beyond the "
                    f"{g.rows * g.rows_per_block} slots a table of {g.rows} rows may use in a "
                    "store (one row per block at most)",
                    argument="layouts",
                    value=top,
                )
            n_blocks = int(layout.max()) // g.rows_per_block + 1
            geometry = BlockGeometry(
                g.rows, g.dim, g.codec, g.row_bytes, g.rows_per_block, n_blocks, g.block_size
            )
            fill = overlay.folding_filler(t, layout, geometry, *delta[name])
            new_tables[name] = (geometry, layout, fill)
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
            counts=self._checked_counts(counts or {}),
            tuning=tuning,
            origins=_per_table(counts_origin, counts),
            extra={n: {"folded_seq": upto} for n in layouts},
            plan=plan,
        )
        return vid

    def set_tuning(
        self,
        tuning: Mapping[str, Mapping[str, Any]],
        *,
        counts: Mapping[str, np.ndarray] | None = None,
        counts_origin: CountsOrigin | Mapping[str, CountsOrigin] | None = None,
    ) -> None:
        """Store cache policies ``{table: {cache_bytes, threshold, pinned_share}}`` (and the
        access counts admission and pinning use) in the catalog, and apply them now.

        ``threshold``: an integer >= 0, or ``bandstore.NEVER`` (the default) to never admit
        neighbours. Stores opened later use these policies by default. ``counts_origin``: where
        the counts came from (see :meth:`counts_origin`).
        """
        self._check_writable()
        records = {}
        for name, rec in tuning.items():
            self._table(name)  # an unknown table raises
            if not isinstance(rec, Mapping) or "cache_bytes" not in rec:
                raise InvalidArgumentError(
                    f"tuning of table {name!r} must be a mapping with at least 'cache_bytes', "
                    f"got {rec!r}",
                    argument="tuning",
                    value=rec,
                )
            _check_open_arguments(rec["cache_bytes"], None, rec.get("pinned_share"))
            policy = CachePolicy(
                int(rec["cache_bytes"]),
                check_threshold(rec.get("threshold", kc.NEVER)),
                float(rec.get("pinned_share", 0.0)),
            )
            records[name] = {
                **{k: v for k, v in rec.items() if k not in ("cache_bytes", "threshold")},
                "cache_bytes": policy.cache_bytes,
                "threshold": threshold_to_json(policy.threshold),
                "pinned_share": policy.pinned_share,
            }
        arrays = self._checked_counts(counts or {})
        origins = _origin_records(arrays, _per_table(counts_origin, arrays), "set_tuning",
                                  self.version)  # fmt: skip
        self._catalog.put_tuning(records, counts=arrays, origins=origins)
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

    # ---- row updates (bandstore.serve.overlay) ----------------------------------------------
    def update(self, table: str, ids: Any, rows: Any, *, allow_nan: bool = False) -> int:
        """Replace rows ``ids`` of ``table`` with ``rows`` (float, ``(len(ids), dim)``, encoded
        with the table's codec); return the update's sequence number once it is durable.

        A repeated id takes its last row. This store serves the update from its next call,
        other stores (in any process) within about ``serve.overlay.POLL_SECONDS``. Bad input
        (unknown table, ids out of range, wrong shape or dtype, NaN or inf unless
        ``allow_nan``) raises and writes nothing.
        """
        return overlay.write(self, {table: (ids, rows)}, allow_nan=allow_nan)

    def update_many(self, batch: Mapping[str, tuple[Any, Any]], *, allow_nan: bool = False
                    ) -> int:  # fmt: skip
        """``update`` of several tables ``{table: (ids, rows)}`` as one: one sequence number,
        one durable write, served together or not at all."""
        return overlay.write(self, batch, allow_nan=allow_nan)

    def compact(self, *, progress: bool | None = None) -> dict[str, Any]:
        """Fold the row updates into a new version (``bandstore compact``); see
        ``serve.overlay.compact``. Returns ``{version, folded_seq, tables, pruned_records}``."""
        return overlay.compact(self, progress=progress)

    def updates_info(self) -> dict[str, Any]:
        """The update log's size (records, rows, bytes, per table) and this store's overlay."""
        self._check_open()
        return overlay.summary(self)

    # ---- maintenance -----------------------------------------------------------------------
    def verify(self, *, progress: bool | None = None) -> list[dict[str, Any]]:
        """Check every block of every table against its checksums; return the mismatches."""
        self._check_open()
        problems = []
        for name, t in self._tables.items():
            g = t.geometry
            bad_blocks: list[int] = []
            chunk = max(1, (64 << 20) // g.block_size)
            with progress_bar(
                progress, total=g.n_blocks, desc=f"verify {name}", unit="block"
            ) as pbar:
                for b0 in range(0, g.n_blocks, chunk):
                    b1 = min(g.n_blocks, b0 + chunk)
                    bad_blocks.extend(t.mismatched_blocks(b0, b1).tolist())
                    pbar.update(b1 - b0)
            for b in bad_blocks:
                problems.append({"table": name, "block": int(b), "path": str(t.block_path)})
        # The update log's records too: {table, seq, reason} for each one that is corrupt.
        problems.extend(updates.verify(self._catalog))
        return problems

    def drop_page_cache(self) -> None:
        """Evict this version's block files from the OS page cache (a cold slow tier)."""
        self._check_open()
        for t in self._tables.values():
            t.source.drop_page_cache()

    def decoded_rows(self, table: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of ``table`` decoded straight from its block file, bypassing
        the cache (float32, shape ``(stop - start, dim)``), with the row updates this store
        serves on top."""
        outer = self._gate.enter()
        try:
            return self._decoded_rows(table, start, stop)
        finally:
            self._gate.leave(outer)

    def _decoded_rows(self, table: str, start: int, stop: int) -> np.ndarray:
        t = self._table(table)
        g = t.geometry
        if (
            any(isinstance(x, bool) or not isinstance(x, int | np.integer) for x in (start, stop))
            or not 0 <= start <= stop <= g.rows
        ):
            raise InvalidArgumentError(
                f"decoded_rows needs integers 0 <= start <= stop <= {g.rows} for table "
                f"{table!r}, got start={start!r}, stop={stop!r}",
                argument="start",
                value=(start, stop),
            )
        raw = t.raw_rows(np.asarray(t.layout[start:stop]))
        return overlay.patch_rows(self, table, start, decode_rows(g.codec, raw, g.dim))


def _same_rows(a: TableInfo, b: TableInfo) -> bool:
    """Whether two versions' tables are one table rewritten (a relayout, a compaction)."""
    return a.rows == b.rows and a.dim == b.dim and a.codec == b.codec


def _per_table(
    origin: CountsOrigin | Mapping[str, CountsOrigin] | None, counts: Mapping[str, Any] | None
) -> dict[str, CountsOrigin] | None:
    """One origin for every table of ``counts``, or the per-table mapping as given."""
    if origin is None:
        return None
    if isinstance(origin, CountsOrigin):
        return {name: origin for name in counts or {}}
    return dict(origin)


def _origin_records(
    counts: Mapping[str, Any] | None,
    origins: Mapping[str, CountsOrigin] | None,
    writer: str,
    version: int,
) -> dict[str, dict]:
    """The catalog records of the origins of ``counts``, stamped with now and ``version``
    (a table without a given origin is attributed to ``writer``)."""
    now = time.time()
    out = {}
    for name in counts or {}:
        o = (origins or {}).get(name) or CountsOrigin(writer)
        out[name] = o.stamped(now, version).as_dict()
    return out


def _stats_dict(s: np.ndarray, device_bytes: int = 0) -> dict[str, float]:
    d: dict[str, float] = {k: int(v) for k, v in zip(STAT_NAMES, s, strict=True)}
    lookups = d["lookups"]
    d["hit_ratio"] = d["hits"] / lookups if lookups else 0.0
    d["blocks_per_1000_lookups"] = 1000.0 * d["blocks_read"] / lookups if lookups else 0.0
    d["useful_per_byte_read"] = d["useful_bytes"] / d["bytes_read"] if d["bytes_read"] else 0.0
    # What the device read (bandstore.storage.tier: counted per read with io="direct"; the serving
    # threads' own block-layer reads during kernel calls with io="mmap").
    d["device_bytes"] = int(device_bytes)
    d["effective_bandwidth"] = d["useful_bytes"] / device_bytes if device_bytes else 0.0
    return d


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
    elif isinstance(getattr(data, "dtype", None), np.dtype) and not isinstance(data, np.ndarray):
        array = data  # a lazy array (bandstore.importers): its rows are read chunk by chunk
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
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or not 512 <= block_size <= MAX_BLOCK_SIZE
        or block_size & (block_size - 1)
    ):
        raise InvalidArgumentError(
            f"block_size must be a power of two from 512 to {MAX_BLOCK_SIZE}, got {block_size!r}",
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
    if root.exists() and not root.is_dir():
        raise StoreExistsError(str(root))
    if root.exists() and any(root.iterdir()):
        if exist_ok and (root / "catalog").is_dir():
            options = ServeOptions(
                verify_reads=verify_reads, block_size=block_size, checksum_bytes=checksum_bytes
            )
            return open(root, writable=True, options=options)
        raise StoreExistsError(str(root))
    made = not root.exists()
    if checksum_bytes is None:
        checksum_bytes = min(DEFAULT_CHECKSUM_BYTES, block_size)
    catalog = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        catalog = Catalog.create(root, block_size=block_size, checksum_bytes=checksum_bytes)
        (root / blockfile.VERSIONS_DIR).mkdir(exist_ok=True)
        return Store(root, catalog, writable=True, verify_reads=verify_reads)
    except BaseException as exc:
        # A store that could not be made whole (a full disk...) is not left half-made.
        if catalog is not None:
            catalog.close()
        for child in (root / "catalog", root / blockfile.VERSIONS_DIR):
            shutil.rmtree(child, ignore_errors=True)
        if made:
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, BandstoreError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFullError(str(root)) from exc
        raise


def open(  # noqa: A001 - the package's public verb, like zarr.open
    path: str | os.PathLike,
    *,
    cache_bytes: int | Mapping[str, int] | None = None,
    writable: bool = False,
    record: str | os.PathLike | None = None,
    sample_rate: float = 0.01,
    workers: int | None = None,
    plan: Any = None,
    options: ServeOptions | None = None,
    io: str = "mmap",
) -> Store:
    """Open a store for serving.

    cache_bytes: DRAM for row caches, a total (split by the tuned sizes, or by table size) or
    ``{table: bytes}``; None uses the sizes stored by tuning, else 10% of each table's rows
    (shorthand for ``options.cache.cache_bytes``: give one or the other).
    writable: allow changes (tables, relayouts, tuning, plans).
    record: a directory to append sampled queries to (``sample_rate`` of them), for relayout.
    workers / plan: lookup_many runs on ``workers`` threads (default: the plan's, else 1);
    ``plan`` None serves the applied plan unless ``cache_bytes`` is given, False none, or a
    Plan / plan dict, or ``{table: strategy_name}`` (tables dealt to the workers round-robin,
    caches sized as without a plan, the other tables cached; ``serve.plan.plan_from_strategies``).
    options: :class:`bandstore.options.ServeOptions`: overrides of the stored admission
    threshold and pinned share (``options.cache``), read verification, the expected format.
    io: how block files are read (:mod:`bandstore.storage.tier`): ``mmap`` (default: mapped,
    advised random access) or ``direct`` (``O_DIRECT`` reads of each call's blocks, several in
    flight; the page cache holds none of them; DirectIOUnsupportedError where the filesystem
    refuses).
    """
    tier.check_io(io)
    options = options if options is not None else ServeOptions()
    if not isinstance(options, ServeOptions):
        raise InvalidArgumentError(
            f"options must be a bandstore.options.ServeOptions, got {type(options).__name__}",
            argument="options",
        )
    cache = options.cache
    if cache_bytes is not None:
        if cache.cache_bytes is not None:
            raise InvalidArgumentError(
                "cache_bytes is given twice: as open(cache_bytes=...) and in options.cache",
                argument="cache_bytes",
            )
        cache = CacheOptions(cache_bytes, cache.threshold, cache.pinned_share)
    root = Path(path)
    catalog = Catalog.open(root)
    recorder: Any = None
    try:
        stored = catalog.format["block_size"]
        if options.block_size is not None and options.block_size != stored:
            raise FormatMismatchError("block_size", stored, options.block_size)
        stored_cb = catalog.format["checksum_bytes"]
        if options.checksum_bytes is not None and options.checksum_bytes != stored_cb:
            raise FormatMismatchError("checksum_bytes", stored_cb, options.checksum_bytes)
        if record is not None:
            from bandstore.traces.recorder import TraceRecorder

            recorder = TraceRecorder(record, sample_rate=sample_rate)
        store = Store(
            root,
            catalog,
            writable=writable,
            cache=cache,
            verify_reads=options.verify_reads,
            recorder=recorder,
            workers=workers,
            plan=plan,
            io=io,
        )
        if options.follow_versions:
            store._follower = follow.Follower(store)
        store._open_options = {
            "path": str(root.absolute()),
            "options": {
                "workers": workers,
                "plan": plan,
                "options": dataclasses.replace(options, cache=cache),
                "io": io,
            },
        }
        return store
    except BaseException:
        if recorder is not None:
            recorder.close()
        catalog.close()
        raise


__all__ = ["Store", "TableInfo", "create", "open"]


def _reopen(path: str, options: dict[str, Any]) -> Store:
    """Unpickle a :class:`Store` (see ``Store.__reduce__``): open it again, read-only."""
    return open(path, **options)
