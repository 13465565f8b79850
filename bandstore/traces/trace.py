"""Access traces: queries that read sets of rows from one or more tables.

A :class:`Trace` is the offline loop's input (layout, cache simulation, planning) and the output of
the log readers (:mod:`bandstore.traces.formats`), the generator
(:mod:`bandstore.traces.synth`) and the sampling recorder (:mod:`bandstore.traces.recorder`).
Queries are aligned across tables: query ``q`` reads
``indices[offsets[q]:offsets[q + 1]]`` of every table (possibly nothing of some). Everything is
numpy, with no Python loop per lookup, so multi-million-lookup traces stay cheap to slice and save.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import (
    CorruptFileError,
    FormatVersionError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidOffsetsError,
    InvalidShapeError,
    TraceFormatError,
    UnknownTableError,
)

__all__ = ["Trace", "TRACE_FORMAT_VERSION"]

#: Version of the ``.npz`` trace layout written by :meth:`Trace.save`.
TRACE_FORMAT_VERSION = 1
_MAGIC = "bandstore-trace"
#: What reading a damaged .npz may raise: zipfile says "encrypted" (RuntimeError) or "method
#: not supported" (NotImplementedError) for a damaged flag, zlib fails on damaged data.
_ZIP_ERRORS = (
    ValueError, OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError,
    zlib.error,
)  # fmt: skip
_INT64_MAX = np.iinfo(np.int64).max


def _as_int64(values: Any, *, argument: str) -> np.ndarray:
    """``values`` as a 1-D contiguous int64 array (no copy when it already is one).

    Integer dtypes are accepted; an empty array of any numeric dtype too (``np.asarray([])`` is
    float64). Floats, bools and objects are refused rather than silently truncated.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InvalidShapeError(
            f"{argument} must be 1-D, got shape {arr.shape}", argument=argument, shape=arr.shape
        )
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind in "iuf":
            return np.zeros(0, dtype=np.int64)
        raise InvalidDtypeError(
            f"{argument} must have an integer dtype, got {arr.dtype}",
            argument=argument,
            dtype=arr.dtype,
        )
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT64_MAX:
        raise InvalidDtypeError(
            f"{argument} holds values that do not fit in int64", argument=argument, dtype=arr.dtype
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only view, so that a trace's arrays cannot be changed behind its back."""
    view = arr.view()
    view.flags.writeable = False
    return view


def check_csr(
    table: str, indices: Any, offsets: Any, num_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one table's (indices, offsets) pair and return it as contiguous int64 arrays.

    ``offsets`` has one more entry than there are queries, starts at 0, never decreases and ends
    at ``len(indices)``. Ids must be ``>= 0`` and, when ``num_rows`` is given, ``< num_rows``.
    Shared by :class:`Trace` and the recorder, which must refuse a bad request before logging it.
    """
    idx = _as_int64(indices, argument=f"indices[{table!r}]")
    off = _as_int64(offsets, argument=f"offsets[{table!r}]")
    if off.size == 0:
        raise InvalidOffsetsError(
            f"offsets of table {table!r} is empty; it needs n_queries + 1 entries starting at 0",
            table=table,
            position=0,
        )
    if off[0] != 0:
        raise InvalidOffsetsError(
            f"offsets of table {table!r} must start at 0, got {int(off[0])}",
            table=table,
            position=0,
        )
    if off.size > 1:
        steps = np.diff(off)
        if steps.min() < 0:
            pos = int(np.argmax(steps < 0)) + 1
            raise InvalidOffsetsError(
                f"offsets of table {table!r} decrease at position {pos} "
                f"({int(off[pos - 1])} -> {int(off[pos])})",
                table=table,
                position=pos,
            )
    if off[-1] != idx.size:
        raise InvalidOffsetsError(
            f"offsets of table {table!r} end at {int(off[-1])} but there are {idx.size} indices",
            table=table,
            position=off.size - 1,
        )
    if idx.size:
        lo = int(idx.min())
        if lo < 0:
            pos = int(np.argmax(idx < 0))
            rows = num_rows if num_rows is not None else int(idx.max()) + 1
            raise IdOutOfRangeError(table, pos, int(idx[pos]), max(rows, 0))
        if num_rows is not None:
            hi = int(idx.max())
            if hi >= num_rows:
                pos = int(np.argmax(idx >= num_rows))
                raise IdOutOfRangeError(table, pos, int(idx[pos]), num_rows)
    return idx, off


def take_bags(
    indices: np.ndarray, offsets: np.ndarray, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The bags of ``queries`` (int positions, any order, repeats allowed) as a new CSR pair."""
    lengths = offsets[1:][queries] - offsets[:-1][queries]
    new_off = np.zeros(queries.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    total = int(new_off[-1])
    if total == 0:
        return np.zeros(0, dtype=np.int64), new_off
    # position of lookup j of the output = start of its source bag + (j - start of its output bag)
    shift = np.repeat(offsets[:-1][queries] - new_off[:-1], lengths)
    src = shift + np.arange(total, dtype=np.int64)
    return indices[src], new_off


class Trace:
    """Queries aligned across tables, one CSR pair (``indices``, ``offsets``) per table.

    Args:
        tables: table name -> ``(indices, offsets)``. ``indices`` are the ids read (int64 after
            conversion), ``offsets`` has ``n_queries + 1`` entries, ``offsets[0] == 0``, never
            decreases and ``offsets[-1] == len(indices)``. Every table must have the same
            ``n_queries``; a query may read no row of a table. An empty mapping is an empty trace.
        num_rows: declared table sizes (a subset of the tables is fine); ids must be below them.
            A table without a declared size gets ``max id + 1`` (0 when it has no lookup).

    The arrays are held as read-only views (no copy when they already are contiguous int64).
    Raises InvalidShapeError, InvalidDtypeError, InvalidOffsetsError, IdOutOfRangeError, or
    UnknownTableError for a ``num_rows`` entry naming no table.
    """

    __slots__ = ("_tables", "_num_rows", "_n_queries", "_source")

    def __init__(
        self,
        tables: Mapping[str, tuple[Any, Any]],
        num_rows: Mapping[str, int] | None = None,
    ) -> None:
        declared = dict(num_rows or {})
        for name in declared:
            if name not in tables:
                raise UnknownTableError(name, list(tables))
        checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        sizes: dict[str, int] = {}
        n_queries: int | None = None
        first = None
        for name, pair in tables.items():
            if not isinstance(name, str) or not name:
                raise InvalidArgumentError(
                    f"table names must be non-empty strings, got {name!r}",
                    argument="tables",
                    value=name,
                )
            try:
                indices, offsets = pair
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"table {name!r} must map to an (indices, offsets) pair",
                    argument="tables",
                    value=name,
                ) from None
            rows = declared.get(name)
            if rows is not None:
                integral = isinstance(rows, (int, np.integer)) or (
                    isinstance(rows, (float, np.floating)) and float(rows).is_integer()
                )
                if isinstance(rows, bool) or not integral or rows < 0:
                    raise InvalidArgumentError(
                        f"num_rows[{name!r}] must be a non-negative integer, got {rows!r}",
                        argument="num_rows",
                        value=rows,
                    )
                rows = int(rows)
            idx, off = check_csr(name, indices, offsets, rows)
            n = off.size - 1
            if n_queries is None:
                n_queries, first = n, name
            elif n != n_queries:
                raise InvalidShapeError(
                    f"table {name!r} has {n} queries but table {first!r} has {n_queries}; "
                    "the tables of a trace must be aligned query by query",
                    argument=f"offsets[{name!r}]",
                    shape=off.shape,
                )
            if rows is None:
                rows = int(idx.max()) + 1 if idx.size else 0
            checked[name] = (_readonly(idx), _readonly(off))
            sizes[name] = rows
        self._tables = checked
        self._num_rows = sizes
        self._n_queries = n_queries or 0
        self._source: str | None = None

    @classmethod
    def _trusted(
        cls,
        tables: dict[str, tuple[np.ndarray, np.ndarray]],
        num_rows: dict[str, int],
        n_queries: int,
        source: str | None = None,
    ) -> Trace:
        """Build from arrays already known to be valid (slices, concatenations): no O(n) checks."""
        self = cls.__new__(cls)
        self._tables = {k: (_readonly(i), _readonly(o)) for k, (i, o) in tables.items()}
        self._num_rows = dict(num_rows)
        self._n_queries = int(n_queries)
        self._source = source
        return self

    # ----------------------------------------------------------------- basic facts
    @property
    def table_names(self) -> list[str]:
        """Table names in insertion order (a fresh list)."""
        return list(self._tables)

    @property
    def n_queries(self) -> int:
        """Number of queries (the same for every table)."""
        return self._n_queries

    @property
    def num_rows(self) -> dict[str, int]:
        """Declared size of each table (a fresh dict)."""
        return dict(self._num_rows)

    @property
    def source(self) -> str | None:
        """Where the queries were read from (the ``.npz`` file of :meth:`load`, the directory
        of ``read_recorded``), kept by slices and selections; None for a trace built in
        memory. Tuning jobs record it with the access counts they store."""
        return self._source

    def with_source(self, source: str | None) -> Trace:
        """The same queries (shared arrays) with ``source`` as their origin."""
        return Trace._trusted(self._tables, self._num_rows, self._n_queries, source)

    def __len__(self) -> int:
        return self._n_queries

    def __contains__(self, name: object) -> bool:
        return name in self._tables

    def __repr__(self) -> str:
        tables = ", ".join(
            f"{k}: {self._num_rows[k]} rows, {v[0].size} lookups" for k, v in self._tables.items()
        )
        return f"Trace({self._n_queries} queries; {tables})"

    def _get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._tables[name]
        except (KeyError, TypeError):
            raise UnknownTableError(name, list(self._tables)) from None

    def table(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, offsets)`` of one table, as read-only int64 arrays."""
        return self._get(name)

    def n_lookups(self, name: str | None = None) -> int:
        """Lookups of one table, or of all tables when ``name`` is None."""
        if name is None:
            return sum(int(i.size) for i, _ in self._tables.values())
        return int(self._get(name)[0].size)

    def bag_sizes(self, name: str) -> np.ndarray:
        """Number of ids each query reads from table ``name`` (int64, length ``n_queries``)."""
        off = self._get(name)[1]
        return np.diff(off)

    # ----------------------------------------------------------------- slicing
    def query_slice(self, start: int, stop: int) -> Trace:
        """Queries ``start <= q < stop`` as a new trace sharing the indices (views).

        Offsets are rebased to start at 0; ``num_rows`` is kept, so access counts of a slice
        line up with those of the whole trace. Raises InvalidArgumentError unless
        ``0 <= start <= stop <= n_queries``.
        """
        n = self._n_queries
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
            raise InvalidArgumentError(
                f"query_slice needs integer bounds, got {start!r}, {stop!r}",
                argument="start",
                value=(start, stop),
            )
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= n:
            raise InvalidArgumentError(
                f"query_slice({start}, {stop}) is not within 0 <= start <= stop <= {n}",
                argument="start",
                value=(start, stop),
            )
        out = {}
        for name, (idx, off) in self._tables.items():
            sub = off[start : stop + 1]
            base = sub[0]
            out[name] = (idx[base : sub[-1]], sub - base)
        return Trace._trusted(out, self._num_rows, stop - start, self._source)

    def take(self, queries: Any) -> Trace:
        """The given queries (int positions in any order, repeats allowed, or a bool mask)."""
        q = np.asarray(queries)
        if q.dtype == np.bool_:
            if q.shape != (self._n_queries,):
                raise InvalidShapeError(
                    f"a query mask needs shape ({self._n_queries},), got {q.shape}",
                    argument="queries",
                    shape=q.shape,
                )
            q = np.flatnonzero(q)
        q = _as_int64(q, argument="queries")
        if q.size and (q.min() < 0 or q.max() >= self._n_queries):
            bad = int(q[(q < 0) | (q >= self._n_queries)][0])
            raise InvalidArgumentError(
                f"query {bad} is out of range for a trace of {self._n_queries} queries",
                argument="queries",
                value=bad,
            )
        out = {name: take_bags(idx, off, q) for name, (idx, off) in self._tables.items()}
        return Trace._trusted(out, self._num_rows, q.size, self._source)

    def split(self, tune_fraction: float = 0.8) -> tuple[Trace, Trace]:
        """Split by query position: the first ``round(f * n)`` queries tune, the rest are held out.

        Held-out queries are the later ones, so on a log in time order this is a split by time:
        layouts and caches are tuned on the past and measured on the future.
        """
        f = float(tune_fraction)
        if not 0.0 < f < 1.0:
            raise InvalidArgumentError(
                f"tune_fraction must be strictly between 0 and 1, got {tune_fraction!r}",
                argument="tune_fraction",
                value=tune_fraction,
            )
        cut = int(round(f * self._n_queries))
        return self.query_slice(0, cut), self.query_slice(cut, self._n_queries)

    def batches(self, batch_size: int) -> Iterator[Trace]:
        """Consecutive slices of ``batch_size`` queries (the last one may be shorter)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise InvalidArgumentError(
                f"batch_size must be an integer, got {batch_size!r}",
                argument="batch_size",
                value=batch_size,
            )
        if batch_size < 1:
            raise InvalidArgumentError(
                f"batch_size must be >= 1, got {batch_size}",
                argument="batch_size",
                value=batch_size,
            )
        return self._batches(int(batch_size))

    def _batches(self, batch_size: int) -> Iterator[Trace]:
        for start in range(0, self._n_queries, batch_size):
            yield self.query_slice(start, min(start + batch_size, self._n_queries))

    def select(self, tables: Iterable[str] | str) -> Trace:
        """A trace with only the given tables, in the given order (a single name is accepted)."""
        names = [tables] if isinstance(tables, str) else list(tables)
        if not names:
            raise InvalidArgumentError(
                "select needs at least one table", argument="tables", value=names
            )
        if len(set(names)) != len(names):
            raise InvalidArgumentError(
                f"select got a table twice: {names}", argument="tables", value=names
            )
        out = {name: self._get(name) for name in names}
        return Trace._trusted(
            out, {n: self._num_rows[n] for n in names}, self._n_queries, self._source
        )

    # ----------------------------------------------------------------- statistics
    def access_counts(self, name: str) -> np.ndarray:
        """Times each row of table ``name`` is read (int64, length ``num_rows[name]``)."""
        idx, _ = self._get(name)
        return np.bincount(idx, minlength=self._num_rows[name]).astype(np.int64, copy=False)

    def summary(self) -> dict[str, Any]:
        """Figures for reports and sanity checks.

        Returns ``{"n_queries", "n_lookups", "top1pct_share", "tables": {name: {...}}}`` (the
        trace-wide share pools the rows of all tables) where each table has:
        ``rows`` (declared size), ``lookups``, ``distinct_rows`` (rows read at least once),
        ``queries`` (queries reading the table at least once), ``mean_pooling`` (lookups per
        query that reads the table), ``max_pooling``, and ``top1pct_share``: the share of lookups
        that go to the most-read 1% of the rows that are read at all (at least one row). The
        last one is how the skew figures of ``shared/data/README.md`` and Meta's DLRM locality
        statistics are stated.
        """
        tables: dict[str, dict[str, Any]] = {}
        pooled = []
        for name, (idx, off) in self._tables.items():
            sizes = np.diff(off)
            touching = int(np.count_nonzero(sizes))
            counts = self.access_counts(name)
            pooled.append(counts)
            tables[name] = {
                "rows": self._num_rows[name],
                "lookups": int(idx.size),
                "distinct_rows": int(np.count_nonzero(counts)),
                "queries": touching,
                "mean_pooling": float(idx.size / touching) if touching else 0.0,
                "max_pooling": int(sizes.max()) if sizes.size else 0,
                "top1pct_share": top_share(counts, 0.01),
            }
        return {
            "n_queries": self._n_queries,
            "n_lookups": self.n_lookups(),
            "top1pct_share": top_share(np.concatenate(pooled)) if pooled else 0.0,
            "tables": tables,
        }

    # ----------------------------------------------------------------- comparison / combining
    def equals(self, other: object) -> bool:
        """True when ``other`` is a Trace with the same tables (same order), sizes and bags."""
        if not isinstance(other, Trace):
            return False
        if self.table_names != other.table_names or self._num_rows != other._num_rows:
            return False
        if self._n_queries != other._n_queries:
            return False
        for name, (idx, off) in self._tables.items():
            oidx, ooff = other._tables[name]
            if not (np.array_equal(off, ooff) and np.array_equal(idx, oidx)):
                return False
        return True

    @classmethod
    def concat(cls, traces: Sequence[Trace]) -> Trace:
        """Queries of ``traces`` one after the other.

        Every trace must hold the same set of tables (the order of the first is kept);
        ``num_rows`` of a table is the largest of the inputs.
        """
        traces = list(traces)
        if not traces:
            raise InvalidArgumentError(
                "concat needs at least one trace", argument="traces", value=traces
            )
        for t in traces:
            if not isinstance(t, Trace):
                raise InvalidArgumentError(
                    f"concat takes Trace objects, got {type(t).__name__}",
                    argument="traces",
                    value=t,
                )
        names = traces[0].table_names
        for i, t in enumerate(traces[1:], start=1):
            if set(t.table_names) != set(names):
                raise InvalidArgumentError(
                    f"trace {i} has tables {t.table_names}, trace 0 has {names}; "
                    "concat needs the same tables in every trace",
                    argument="traces",
                    value=i,
                )
        out = {}
        num_rows = {}
        for name in names:
            parts_idx = [t._tables[name][0] for t in traces]
            parts_off = [traces[0]._tables[name][1][:1]]
            base = 0
            for t in traces:
                off = t._tables[name][1]
                parts_off.append(off[1:] + base)
                base += int(off[-1])
            out[name] = (np.concatenate(parts_idx), np.concatenate(parts_off))
            num_rows[name] = max(t._num_rows[name] for t in traces)
        n = sum(t.n_queries for t in traces)
        return cls._trusted(out, num_rows, n)

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike[str], *, compress: bool = False) -> None:
        """Write the trace to ``path`` as an ``.npz`` (no pickles), atomically.

        The file is written beside ``path`` and renamed over it, so a reader never sees half a
        file. The name is used as given (numpy would otherwise append ``.npz``).
        """
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "header": _json_bytes(
                {
                    "magic": _MAGIC,
                    "version": TRACE_FORMAT_VERSION,
                    "n_queries": self._n_queries,
                }
            ),
            "table_names": _json_bytes(self.table_names),
            "num_rows": np.array([self._num_rows[n] for n in self._tables], dtype=np.int64),
        }
        for i, (idx, off) in enumerate(self._tables.values()):
            arrays[f"indices_{i}"] = idx
            arrays[f"offsets_{i}"] = off
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                save = np.savez_compressed if compress else np.savez
                # numpy's stubs type **kwds like savez's bool keyword: the arrays are arrays.
                save(f, **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a trace written by :meth:`save`, checking everything.

        Raises FileNotFoundError for a missing file, CorruptFileError for bytes that are not a
        readable ``.npz`` (truncated, bad zip checksum, pickled objects), FormatVersionError for
        a newer format, TraceFormatError for an ``.npz`` that is not a valid trace.
        """
        spath = os.fspath(path)
        try:
            npz = np.load(spath, allow_pickle=False)
        except FileNotFoundError:
            raise
        except _ZIP_ERRORS as exc:
            raise CorruptFileError(spath, f"not a readable .npz trace ({exc})") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise TraceFormatError(spath, "a single .npy array, not an .npz trace")
        try:
            with npz:
                try:
                    arrays = {key: npz[key] for key in npz.files}
                except (*_ZIP_ERRORS, KeyError) as exc:
                    raise CorruptFileError(spath, f"unreadable array in the .npz ({exc})") from exc
        except _ZIP_ERRORS as exc:  # pragma: no cover - close errors
            raise CorruptFileError(spath, f"unreadable .npz ({exc})") from exc
        return cls._from_arrays(spath, arrays).with_source(spath)

    @classmethod
    def _from_arrays(cls, path: str, arrays: dict[str, np.ndarray]) -> Trace:
        for key in ("header", "table_names", "num_rows"):
            if key not in arrays:
                raise TraceFormatError(path, f"missing {key!r}; not a bandstore trace")
        header = _json_load(path, arrays["header"], "header")
        if not isinstance(header, dict) or header.get("magic") != _MAGIC:
            raise TraceFormatError(path, "bad header; not a bandstore trace")
        version = header.get("version")
        if not isinstance(version, int):
            raise TraceFormatError(path, f"bad format version {version!r}")
        if version > TRACE_FORMAT_VERSION or version < 1:
            raise FormatVersionError(path, version, TRACE_FORMAT_VERSION)
        names = _json_load(path, arrays["table_names"], "table_names")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise TraceFormatError(path, "table_names is not a list of non-empty strings")
        if len(set(names)) != len(names):
            raise TraceFormatError(path, "table_names holds a name twice")
        num_rows = arrays["num_rows"]
        if num_rows.dtype != np.int64 or num_rows.shape != (len(names),):
            raise TraceFormatError(
                path, f"num_rows must be int64 of shape ({len(names)},), got {num_rows.dtype}"
            )
        expected = {"header", "table_names", "num_rows"}
        tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for i, name in enumerate(names):
            pair = []
            for kind in ("indices", "offsets"):
                key = f"{kind}_{i}"
                expected.add(key)
                if key not in arrays:
                    raise TraceFormatError(path, f"missing array {key!r} of table {name!r}")
                arr = arrays[key]
                if arr.dtype != np.int64 or arr.ndim != 1:
                    raise TraceFormatError(
                        path, f"{key} of table {name!r} must be 1-D int64, got {arr.dtype}"
                    )
                pair.append(arr)
            tables[name] = (pair[0], pair[1])
        extra = set(arrays) - expected
        if extra:
            raise TraceFormatError(path, f"unexpected arrays {sorted(extra)}")
        try:
            trace = cls(tables, {n: int(r) for n, r in zip(names, num_rows, strict=True)})
        except (InvalidOffsetsError, IdOutOfRangeError, InvalidShapeError) as exc:
            raise TraceFormatError(path, f"invalid trace data: {exc}") from exc
        except InvalidArgumentError as exc:
            raise TraceFormatError(path, f"invalid trace metadata: {exc}") from exc
        if header.get("n_queries") != trace.n_queries:
            raise TraceFormatError(
                path,
                f"header says {header.get('n_queries')} queries, the arrays hold {trace.n_queries}",
            )
        return trace


def top_share(counts: np.ndarray, fraction: float = 0.01) -> float:
    """Share of all accesses that go to the most-accessed ``fraction`` of the rows read at all.

    ``k = max(1, ceil(fraction * rows read))`` rows are taken; 0.0 when nothing was read.
    """
    counts = np.asarray(counts)
    read = counts[counts > 0]
    total = int(read.sum()) if read.size else 0
    if total == 0:
        return 0.0
    k = max(1, math.ceil(fraction * read.size))
    top = np.partition(read, read.size - k)[read.size - k :]
    return float(top.sum() / total)


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8).copy()


def _json_load(path: str, arr: np.ndarray, what: str) -> Any:
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise TraceFormatError(path, f"{what} must be a 1-D uint8 array of JSON")
    try:
        return json.loads(arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceFormatError(path, f"{what} is not valid JSON ({exc})") from exc
