"""Online row updates on the read path: the overlay of rows updated since the served version.

Writes (``Store.update``) go to the update log (``bandstore.storage.updates``) and are durable
when the call returns. Each open store keeps an :class:`OverlayState`: for every table of its
version, the rows the log holds beyond what the version folded in, up to one sequence number
(``seq``) for all tables. A state is immutable; a newer one replaces it (copy on write), and a
call takes the reference once at its start, so it serves one state from beginning to end: it
never mixes rows from before and after an update, nor sees half of one.

Freshness: a store applies the log up to its own last update before its next call; a poller
thread (started by the store's first lookup) applies what other stores and processes write
every ``POLL_SECONDS``; ``Store.refresh()`` applies at once.

Serving: a request whose ids miss the overlay takes the table's strategy unchanged (cost: one
bitmap probe per id, ``kernels.overlay``; none when the overlay is empty). Otherwise it is
served in two parts, as a split table's: the ids not updated through the table's strategy,
the updated ones pooled from the overlay's decoded rows, combined per bag. Updated rows never
reach the strategy, so a cached, pinned or resident copy of their old value is never served
(it is dropped with the version). Overlay rows count as lookups and hits (served from DRAM).

The overlay holds decoded float32 rows in an append-only arena per table, found through one
``head`` array per table shared by every state (``kernels.overlay``: a state is the arena's
first ``used`` rows), so applying ``m`` new rows costs ``O(m)``: never a copy of the rows or
the ids already applied. When the arena is full it is rebuilt with only each id's newest row
at ``ARENA_GROWTH`` times their number (a new ``head`` too; older states keep the old arrays).
Applying runs in the poller thread by default (``APPLY_IN_POLLER``), in nogil kernels, so a
reader's call does not pay for it; the writing store still applies its own update before its
next call. Folding into a version (``compact``, a relayout) empties it on the stores that
switch to that version. The overlay's bytes are part of ``Store.memory()`` (``overlay``).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from bandstore.errors import (
    CorruptFileError,
    CorruptUpdateError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidShapeError,
    UnknownTableError,
)
from bandstore.kernels import cache as kc
from bandstore.kernels.overlay import (
    _overlay_compact,
    _overlay_link,
    _overlay_merge,
    _overlay_probe,
    _overlay_publish,
    _overlay_rows,
    _overlay_select,
)
from bandstore.storage import blockfile, dram, updates
from bandstore.storage.codecs import codec_id, decode_rows, encode_rows

#: How often a store's poller looks for updates written by other stores (seconds).
POLL_SECONDS = 0.1
#: Whether the poller applies what it finds itself (the default: the work is in nogil kernels
#: and reads, O(new rows), off the readers' calls), or only flags it for the store's next call
#: to apply on its own thread (see benchmarks/bench_updates.py --apply-in-call).
APPLY_IN_POLLER = True
#: Rows a fold copies at a time.
CHUNK_ROWS = 1 << 16
#: A table's arena, when full, is rebuilt with its live rows (and the ones applied) at this
#: multiple of their number: the rebuild copies them (amortized: one row copied per row
#: applied, at 2); with the spare kept for reuse, the overlay holds up to twice that.
ARENA_GROWTH = 2
#: Smallest arena (rows) a table's overlay starts with.
MIN_ARENA_ROWS = 1024


class TableOverlay:
    """One table's updated rows in one state (immutable as far as the state goes): the
    arena's first ``used`` rows, found through ``head`` / ``prev`` (``kernels.overlay``);
    ``n_ids`` distinct ids are updated."""

    __slots__ = ("head", "prev", "data", "used", "n_ids")

    def __init__(self, head: np.ndarray, prev: np.ndarray, data: np.ndarray, used: int,
                 n_ids: int):  # fmt: skip
        self.head = head
        self.prev = prev
        self.data = data
        self.used = used
        self.n_ids = n_ids

    @property
    def nbytes(self) -> int:
        """DRAM of this state's arrays: the id index and the arena (as allocated)."""
        return int(self.head.nbytes + self.prev.nbytes + self.data.nbytes)

    def rows_of(self, start: int, n: int) -> np.ndarray:
        """The arena rows of ids ``start .. start + n - 1`` (-1: not updated)."""
        out = np.empty(n, dtype=np.int64)
        _overlay_rows(start, self.head, self.prev, self.used, out)
        return out


class OverlayState:
    """What one call serves: the store's tables (the dict of the version it was built for),
    and per table its overlay (absent: no update beyond the version), up to log ``seq``."""

    __slots__ = ("seq", "tables", "overlays")

    def __init__(self, seq: int, tables: Mapping[str, Any], overlays: dict[str, TableOverlay]):
        self.seq = seq
        self.tables = tables
        self.overlays = overlays


class _Arena:
    """A table's append-only rows and id index (mutated only under the apply lock, beyond
    what any published state uses)."""

    __slots__ = ("table", "head", "prev", "data", "used", "n_ids", "spare")

    def __init__(self, table: Any):
        self.table = table
        self.head = np.zeros(0, dtype=np.int64)
        self.prev = np.zeros(0, dtype=np.int64)
        self.data = np.zeros((0, table.info.dim), dtype=np.float32)
        self.used = 0
        self.n_ids = 0
        # The arrays before the last rebuild, reused by the next one once no state holds
        # them: fresh memory is zero-filled page by page as the rebuild first writes it, and
        # those faults (~20 us per 4 KB page here) were most of a rebuild's time (0.15-1 s
        # for 500k rows of 64 floats at load 16).
        self.spare: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def take_spare(self, rows: int, n_rows: int) -> tuple[np.ndarray, ...] | None:
        """The spare arrays if no state holds them and they have room for ``rows``."""
        spare, self.spare = self.spare, None
        if spare is None or spare[2].shape[0] < rows or spare[0].shape[0] != n_rows:
            return None
        for a in spare:
            if sys.getrefcount(a) > 3:  # (the tuple's, ``a``'s, the argument's: no state's)
                return None
        return spare


class Overlays:
    """A store's overlay: the current state, the apply lock, the poller."""

    def __init__(self, store: Any):
        self._store = weakref.ref(store)
        self.catalog = store.catalog
        self.state: OverlayState | None = None
        self.own_seq = 0  # the last update this store wrote: applied before its next call
        self.seq_lock = threading.Lock()
        self.error: BaseException | None = None  # the poller's, raised to the next call
        self.pending = False  # the poller saw records beyond the state: the next call applies
        self.applied = 0  # states built (for tests and the benchmark)
        self._arenas: dict[str, _Arena] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- applying the log ------------------------------------------------------------------
    def catch_up(self, *, wait: bool = True) -> OverlayState:
        """Apply the log up to its latest record (for the store's current tables); publish and
        return the new state. ``wait=False``: if another thread is applying, return the
        current state at once (it will publish the new one)."""
        store = self._store()
        if store is None:
            raise RuntimeError("the store is gone")
        if not self._lock.acquire(blocking=wait):
            return self.state  # type: ignore[return-value]
        try:
            self.pending = False  # (before reading the log: a later record sets it again)
            return self._catch_up(store)
        finally:
            self._lock.release()

    def _catch_up(self, store: Any) -> OverlayState:
        """``catch_up`` under the lock."""
        tables = store._tables
        old = self.state
        latest = updates.latest_seq(self.catalog)
        if old is not None and old.tables is tables and old.seq >= latest:
            return old
        after = {}
        for name, t in tables.items():
            folded = updates.folded_seq(t.record)
            prev = old.tables.get(name) if old is not None else None
            after[name] = max(folded, old.seq) if prev is t and old is not None else folded
        upto, records = updates.read(self.catalog, after, latest)
        by_table: dict[str, list[updates.UpdateRecord]] = {}
        for r in records:
            by_table.setdefault(r.table, []).append(r)
        overlays = {}
        for name, t in tables.items():
            prev_ov = None
            if old is not None and old.tables.get(name) is t:
                prev_ov = old.overlays.get(name)
            recs = by_table.get(name)
            if recs:
                overlays[name] = self._apply(name, t, prev_ov, recs)
            elif prev_ov is not None:
                overlays[name] = prev_ov
        for name in list(self._arenas):
            if tables.get(name) is not self._arenas[name].table:
                del self._arenas[name]  # a new version's table: its arena starts afresh
        state = OverlayState(upto, tables, overlays)
        self.state = state
        self.applied += 1
        return state

    def _apply(self, name: str, t: Any, old: TableOverlay | None,
               records: list[updates.UpdateRecord]) -> TableOverlay:  # fmt: skip
        """``old`` with ``records`` (seq order) applied: a new TableOverlay."""
        g = t.geometry
        for r in records:
            if (
                r.dim != g.dim
                or r.codec != t.codec
                or r.rows.shape[1] != g.row_bytes
                or (r.ids.size and (r.ids.min() < 0 or r.ids.max() >= g.rows))
            ):
                raise CorruptUpdateError(name, r.seq, "does not match the table's geometry")
        arena = self._arenas.get(name)
        if arena is None or arena.table is not t or old is None:
            arena = self._arenas[name] = _Arena(t)
        m = sum(int(r.ids.size) for r in records)
        if len(records) > 1:
            # One apply of each id's last value: a few steps whatever the records (an applier
            # thread waits for the GIL at each step, up to the switch interval, while readers
            # run), and a store catching up on a long log does not size its arena by every
            # row ever written.
            ids, enc = updates.collapse(records, g.row_bytes)
            last = records[-1]
            records = [updates.UpdateRecord(name, last.seq, ids, enc, last.dim, last.codec)]
            m = int(ids.size)
        if arena.used + m > arena.data.shape[0]:
            # Full: new arrays holding each id's newest row, ARENA_GROWTH x room (older states
            # keep the old ones alive until no call uses them). On huge pages, zero-filled
            # lazily (4 KB page faults cost ~20 us each on this VM).
            live = arena.n_ids
            rows = max(MIN_ARENA_ROWS, int(ARENA_GROWTH * (live + m)))
            spare = arena.take_spare(live + m, g.rows)
            if spare is not None:
                head, prev, data = spare
                head.fill(0)
            else:
                head = dram.zeros(g.rows, np.int64)
                prev = dram.zeros(rows, np.int64)
                data = dram.zeros((rows, g.dim), np.float32)
            if arena.used:
                live = int(_overlay_compact(arena.head, arena.prev, arena.used, arena.data,
                                            head, data))  # fmt: skip
                arena.spare = (arena.head, arena.prev, arena.data)
            prev[:live] = -1
            arena.head, arena.prev, arena.data, arena.used = head, prev, data, live
        for r in records:
            start, n = arena.used, int(r.ids.size)
            arena.data[start : start + n] = decode_rows(g.codec, r.rows, g.dim)
            arena.n_ids += int(_overlay_link(r.ids, arena.head, arena.prev, start))
            _overlay_publish(r.ids, arena.head, start)
            arena.used = start + n
        return TableOverlay(arena.head, arena.prev, arena.data, arena.used, arena.n_ids)

    # ---- the poller --------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=_poll_loop, args=(weakref.ref(self), self._stop),
                name="bandstore-updates", daemon=True,
            )  # fmt: skip
            self._thread.start()
            # A store dropped without close() stops its poller too.
            store = self._store()
            if store is not None:
                weakref.finalize(store, self._stop.set)

    def close(self) -> None:
        self._stop.set()
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout=5)


def _poll_loop(ref: Any, stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        ov = ref()
        if ov is None:
            return
        store = ov._store()
        if store is None or store._closed:
            return
        try:
            st = ov.state
            if (
                st is None
                or st.tables is not store._tables
                or (updates.latest_seq(ov.catalog) > st.seq)
            ):
                if APPLY_IN_POLLER:
                    ov.catch_up()
                else:
                    ov.pending = True
            ov.error = None
        except BaseException as exc:  # noqa: BLE001 - raised to the next call instead
            if store._closed:
                return
            ov.error = exc
        del ov, store


_overlays_lock = threading.Lock()


def overlays(store: Any) -> Overlays:
    """The store's Overlays (made on first use)."""
    ov = store.__dict__.get("_overlays")
    if ov is None:
        with _overlays_lock:
            ov = store.__dict__.get("_overlays")
            if ov is None:
                ov = store.__dict__["_overlays"] = Overlays(store)
    return ov


def current(store: Any) -> OverlayState:
    """The state a call serves: up to this store's own last update, for its current tables."""
    ov = overlays(store)
    if ov.error is not None:
        raise ov.error
    st = ov.state
    if st is None or st.tables is not store._tables or st.seq < ov.own_seq:
        st = ov.catch_up()
    elif ov.pending:
        st = ov.catch_up(wait=False)
    if ov._thread is None:
        ov.start()
    return st


def catch_up(store: Any) -> None:
    """Apply every update committed so far (``Store.refresh``)."""
    overlays(store).catch_up()


def memory(store: Any) -> dict[str, int]:
    """Per table, the DRAM of the overlay the store serves (its current state's arrays)."""
    ov = store.__dict__.get("_overlays")
    st = ov.state if ov is not None else None
    if st is None:
        return {}
    out = {n: o.nbytes for n, o in st.overlays.items()}
    for n, arena in list(ov._arenas.items()):
        spare = arena.spare
        if spare is not None and n in out:  # (kept for the next rebuild: held DRAM too)
            out[n] += sum(int(a.nbytes) for a in spare)
    return out


def close(store: Any) -> None:
    """Stop the store's poller (``Store.close``)."""
    ov = store.__dict__.get("_overlays")
    if ov is not None:
        ov.close()


# ---- serving -------------------------------------------------------------------------------
def _split(t: Any, tov: TableOverlay, ids, offsets, weights, mode, pad):
    """``None`` if no id of the request is updated, else ``(base request, merge args,
    counters)``: the counters of the updated rows (lookups and hits, served from DRAM)."""
    n = ids.shape[0]
    slots = np.empty(n, dtype=np.int64)
    hits = _overlay_probe(ids, pad, tov.head, tov.prev, tov.used, slots)
    if hits == 0:
        return None
    n_bags = offsets.shape[0] - 1
    sub_ids = np.empty(n - hits, dtype=np.int64)
    sub_off = np.empty(n_bags + 1, dtype=np.int64)
    sub_w = np.empty(n - hits if weights.shape[0] else 0, dtype=np.float32)
    base_n = np.empty(n_bags, dtype=np.int64)
    m = _overlay_select(ids, offsets, weights, pad, slots, sub_ids, sub_off, sub_w, base_n)
    base_mode = kc.MODE_SUM if mode == kc.MODE_MEAN else mode
    base = (sub_ids[:m], sub_off, sub_w[: m if weights.shape[0] else 0], base_mode, -1)
    counters = np.zeros(kc.N_STATS + 1, dtype=np.int64)  # (+ device bytes: none)
    counters[kc.STAT_LOOKUPS] = counters[kc.STAT_HITS] = hits
    return base, (offsets, weights, mode, slots, tov.data, base_n), counters


def _merge(merge: tuple, out: np.ndarray) -> None:
    """Pool the updated rows into ``out`` (their counters were committed with the call's)."""
    _overlay_merge(*merge, out, np.zeros(kc.N_STATS, dtype=np.int64))  # type: ignore[call-arg]


def serve_one(store: Any, t: Any, ids, offsets, weights, mode, pad, out) -> None:
    """``t.serve`` with the store's updates in front (``Store.lookup`` / ``embedding_bag``)."""
    st = current(store)
    t = _same_table(st, t)
    tov = st.overlays.get(t.name)
    split = None if tov is None else _split(t, tov, ids, offsets, weights, mode, pad)
    if split is None:
        t.serve(ids, offsets, weights, mode, pad, out)
        return
    (sub_ids, sub_off, sub_w, base_mode, base_pad), merge, counters = split
    t.serve(sub_ids, sub_off, sub_w, base_mode, base_pad, out, counters)
    _merge(merge, out)
    with t.lock:  # one commit of the call's counters, both parts (none if it raised)
        t.stats += counters[: kc.N_STATS]
        t.device_bytes += int(counters[kc.N_STATS])


def serve_many(store: Any, prepared: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """``store._executor.run(prepared)`` with the store's updates in front (``lookup_many``)."""
    st = current(store)
    if not st.overlays:
        return store._executor.run(prepared)
    run = dict(prepared)
    merges = []
    extra = {}
    for name, (t, ids, off, weights, mode, pad) in prepared.items():
        t = _same_table(st, t)
        tov = st.overlays.get(name)
        split = None if tov is None else _split(t, tov, ids, off, weights, mode, pad)
        if split is None:
            continue
        run[name] = (t, *split[0])
        merges.append((name, split[1]))
        extra[name] = split[2]
    # The updated rows' counters are committed with the call's (by the executor, on success).
    results = store._executor.run(run, extra_stats=extra)
    for name, merge in merges:
        _merge(merge, results[name])
    return results


def _same_table(st: OverlayState, t: Any) -> Any:
    """The state's object for table ``t`` (a refresh between validation and this call may
    have replaced it; the state and its tables are one consistent pair)."""
    mine = st.tables.get(t.name)
    if mine is None or mine is t or mine.info != t.info:
        return t
    return mine


def patch_rows(store: Any, table: str, start: int, rows: np.ndarray) -> np.ndarray:
    """``rows`` (decoded rows ``start``, ``start + 1``, ... of ``table`` from its block file)
    with the updated ones replaced by the rows the store serves (``Store.decoded_rows``)."""
    tov = current(store).overlays.get(table)
    if tov is not None and rows.shape[0]:
        where = tov.rows_of(start, rows.shape[0])
        held = np.flatnonzero(where >= 0)
        rows[held] = tov.data[where[held]]
    return rows


# ---- writing -------------------------------------------------------------------------------
def _checked_ids(ids: Any, table: str, rows: int) -> np.ndarray:
    """``ids`` as a 1-D int64 array of ids in ``[0, rows)``, or the error saying why not."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise InvalidDtypeError(
            f"ids for table {table!r} must be an integer array, got dtype {arr.dtype}",
            argument="ids",
            dtype=arr.dtype,
        )
    if arr.ndim != 1:
        raise InvalidShapeError(
            f"ids for table {table!r} must be 1-D, got shape {arr.shape}",
            argument="ids",
            shape=arr.shape,
        )
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        bad = int(np.argmax(arr > np.iinfo(np.int64).max))
        raise IdOutOfRangeError(table, bad, int(arr[bad]), rows)
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    out_of_range = np.flatnonzero((arr < 0) | (arr >= rows))
    if out_of_range.size:
        pos = int(out_of_range[0])
        raise IdOutOfRangeError(table, pos, int(arr[pos]), rows)
    return arr


def _checked(store: Any, table: str, ids: Any, rows: Any, allow_nan: bool):
    """Validated ``(ids distinct ascending, encoded rows)`` of one table's update; the last
    value of a repeated id wins."""
    t = store._table(table)
    info = t.info
    ids = _checked_ids(ids, table, info.rows)
    arr = np.asarray(rows)
    if arr.dtype.kind != "f":
        raise InvalidDtypeError(
            f"rows for table {table!r} must be floating point (float32), got dtype {arr.dtype}",
            argument="rows",
            dtype=arr.dtype,
        )
    if arr.shape != (ids.shape[0], info.dim):
        raise InvalidShapeError(
            f"rows for table {table!r} must have shape (len(ids), dim) = "
            f"({ids.shape[0]}, {info.dim}), got {arr.shape}",
            argument="rows",
            shape=arr.shape,
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32) if arr.dtype != np.float32 else arr
    uniq, first = np.unique(ids[::-1], return_index=True)
    arr = arr[::-1][first]
    if allow_nan and not np.isfinite(arr).all():
        if info.codec == "int8":
            raise InvalidArgumentError(
                f"table {table!r} stores int8 rows, which cannot hold NaN or inf",
                argument="rows",
            )
        # float32 / float16 keep them as they are (the codec's finiteness rule is waived).
        safe = encode_rows(info.codec, np.where(np.isfinite(arr), arr, 0))
        view = np.float32 if info.codec == "float32" else np.float16
        safe.view(view)[:, : info.dim] = arr.astype(view)
        return uniq, safe
    try:
        return uniq, encode_rows(info.codec, arr)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(
            f"rows for table {table!r}: {exc} (pass allow_nan=True to store NaN or inf)",
            argument="rows",
            value=exc.value,
        ) from None


def write(store: Any, batch: Mapping[str, tuple[Any, Any]], *, allow_nan: bool = False) -> int:
    """Validate every table's ``(ids, rows)``, then write them all under one sequence number
    (one durable transaction); return it. Nothing is written if any is bad."""
    store._check_writable()
    if not isinstance(batch, Mapping) or not batch:
        raise InvalidArgumentError(
            "updates must map table names to (ids, rows)", argument="updates"
        )
    records = {}
    for table, pair in batch.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidArgumentError(
                f"update of table {table!r} must be (ids, rows)", argument="updates"
            )
        ids, enc = _checked(store, table, pair[0], pair[1], allow_nan)
        t = store._tables[table]
        if ids.size:
            records[table] = (ids, enc, t.info.dim, codec_id(t.info.codec))
    ov = overlays(store)
    if not records:
        return updates.latest_seq(store.catalog)
    seq = updates.append(store.catalog, records)
    with ov.seq_lock:  # (writer threads of one store: own_seq never goes back)
        ov.own_seq = max(ov.own_seq, seq)
    return seq


def parse_request(store: Any, payload: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The batch of a JSON update request ``{"tables": {NAME: {"ids": [...], "rows":
    [[...], ...]}}}`` (for ``POST /v1/update``), as ``write`` takes it (validated there)."""
    tables = payload.get("tables") if isinstance(payload, Mapping) else None
    if not isinstance(tables, Mapping) or not tables:
        raise InvalidArgumentError(
            'an update request is {"tables": {NAME: {"ids": [...], "rows": [[...]]}}}',
            argument="tables",
        )
    batch = {}
    for name, body in tables.items():
        if name not in store.tables:
            raise UnknownTableError(name, list(store.tables))
        if not isinstance(body, Mapping) or "ids" not in body or "rows" not in body:
            raise InvalidArgumentError(
                f"update of table {name!r} needs 'ids' and 'rows'", argument="tables"
            )
        ids = np.asarray(body["ids"])
        if ids.size == 0:
            ids = ids.astype(np.int64)
        try:
            rows = np.asarray(body["rows"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidDtypeError(
                f"rows for table {name!r} must be lists of numbers", argument="rows",
                dtype=type(body["rows"]).__name__,
            ) from exc  # fmt: skip
        if rows.size == 0:
            rows = rows.reshape(0, store.tables[name].dim)
        batch[name] = (ids, rows)
    return batch


def read_npz(path: Any, *, table: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An update batch from a ``.npz``: arrays ``TABLE/ids`` and ``TABLE/rows`` per table, or
    ``ids`` and ``rows`` for the one ``table`` given (never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            f"{path}: not a readable .npz of update arrays ({exc})", argument="file"
        ) from exc
    if table is not None:
        if set(arrays) != {"ids", "rows"}:
            raise InvalidArgumentError(
                f"{path}: with a table given, the file must hold exactly the arrays 'ids' and "
                f"'rows', not {sorted(arrays)}",
                argument="file",
            )
        return {table: (arrays["ids"], arrays["rows"])}
    batch: dict[str, list] = {}
    for key, arr in arrays.items():
        name, _, what = key.rpartition("/")
        if not name or what not in ("ids", "rows"):
            raise InvalidArgumentError(
                f"{path}: array {key!r} is not TABLE/ids or TABLE/rows (or give the table)",
                argument="file",
            )
        batch.setdefault(name, [None, None])[what == "rows"] = arr
    for name, pair in batch.items():
        if pair[0] is None or pair[1] is None:
            raise InvalidArgumentError(
                f"{path}: table {name!r} needs both {name}/ids and {name}/rows", argument="file"
            )
    if not batch:
        raise InvalidArgumentError(f"{path}: no update arrays", argument="file")
    return {n: (p[0], p[1]) for n, p in batch.items()}


def apply_request(store: Any, payload: Any, *, allow_nan: bool = False) -> dict[str, Any]:
    """Serve a ``POST /v1/update`` body: validate, write durably, return ``{"seq", "rows"}``
    (the server refuses it on a read-only store: ``ReadOnlyError``)."""
    batch = parse_request(store, payload)
    seq = write(store, batch, allow_nan=allow_nan)
    return {"seq": seq, "rows": {n: int(np.asarray(b[0]).size) for n, b in batch.items()}}


# ---- folding into a version ----------------------------------------------------------------
def pending(store: Any, names: Any) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``(upto, {table: (ids, encoded rows)})``: the log's latest seq and, for each table of
    ``names``, its rows updated after the served version up to that seq (last value per id)."""
    tables = {n: store._table(n) for n in names}
    upto, records = updates.read(
        store.catalog, {n: updates.folded_seq(t.record) for n, t in tables.items()}
    )
    by_table: dict[str, list] = {}
    for r in records:
        by_table.setdefault(r.table, []).append(r)
    return upto, {
        n: updates.collapse(by_table.get(n, []), t.geometry.row_bytes) for n, t in tables.items()
    }


def folding_filler(t: Any, layout: np.ndarray, geometry: Any, ids: np.ndarray,
                   rows: np.ndarray):  # fmt: skip
    """A fill function writing every row of ``t`` at its slot of ``layout``, the updated rows
    ``ids`` (encoded ``rows``) replacing theirs, then reading the new file back: every row
    must be the served version's, or the update's."""
    old_layout = t.layout
    rpb = geometry.rows_per_block

    def fill(writer: blockfile.BlockFileWriter, pbar: Any) -> None:
        n = geometry.rows
        for start in range(0, n, CHUNK_ROWS):
            stop = min(n, start + CHUNK_ROWS)
            old = np.asarray(old_layout[start:stop])
            writer.write_rows(layout[start:stop], t.raw_rows(old))  # through the store's io
            pbar.update(stop - start)
        if ids.size:
            writer.write_rows(layout[ids], rows)
        new_rows = blockfile.rows_view(writer.buffer, geometry)
        updated = np.zeros(n, dtype=bool)
        updated[ids] = True
        for start in range(0, n, CHUNK_ROWS):
            stop = min(n, start + CHUNK_ROWS)
            keep = np.flatnonzero(~updated[start:stop]) + start
            old, new = np.asarray(old_layout)[keep], layout[keep]
            before = t.raw_rows(old)
            if not np.array_equal(before, new_rows[new // rpb, new % rpb]):
                raise CorruptFileError(str(writer.path), "rows differ from the old version")
        if ids.size:
            s = layout[ids]
            if not np.array_equal(new_rows[s // rpb, s % rpb], rows):
                raise CorruptFileError(str(writer.path), "updated rows differ from the log")

    return fill


def compact(store: Any, *, progress: bool | None = None) -> dict[str, Any]:
    """Fold the update log into a new version (``bandstore compact``): each table with updates
    beyond the served version gets a new block file (same layout) with them; the version
    records the folded seq; records no committed version needs any more are deleted. Readers
    keep their version (and its overlay) until they refresh. Returns a report."""
    store._check_writable()
    upto, delta = pending(store, list(store._tables))
    changed = {n: d for n, d in delta.items() if d[0].size}
    report: dict[str, Any] = {
        "folded_seq": upto,
        "tables": {n: int(d[0].size) for n, d in changed.items()},
    }
    if changed:
        new_tables = {}
        for name, (ids, rows) in changed.items():
            t = store._tables[name]
            layout = np.array(t.layout, dtype=np.int64)
            new_tables[name] = (
                t.geometry,
                layout,
                folding_filler(t, layout, t.geometry, ids, rows),
            )
        report["version"] = store._commit_tables(
            new_tables, note=f"compact to update {upto}", progress=progress,
            extra={n: {"folded_seq": upto} for n in changed},
        )  # fmt: skip
    else:
        report["version"] = store.version
    report["pruned_records"] = updates.prune_folded(store.catalog)
    return report


def summary(store: Any) -> dict[str, Any]:
    """The update log's size (``info``) and what this store's overlay holds."""
    out = updates.summary(store.catalog)
    st = overlays(store).catch_up()
    out["served_seq"] = st.seq
    out["overlay_rows"] = {n: int(o.n_ids) for n, o in st.overlays.items()}
    out["overlay_bytes"] = sum(o.nbytes for o in st.overlays.values())
    out["folded_seq"] = {n: updates.folded_seq(t.record) for n, t in store._tables.items()}
    return out
