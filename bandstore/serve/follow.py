"""Following the catalog's current version: a serving store moves to a newly committed version
by itself, between calls (``ServeOptions(follow_versions=True)``; ``bandstore serve`` does).

The loop a server runs: it records traffic, ``tools/rebuild.py`` (another process) commits a
version with new layouts, cache sizes and plan, and the server serves it without a restart or
a ``refresh()`` call. Here:

- A poller thread (``FOLLOW_SECONDS``) reads the catalog's current version id (one small LMDB
  read). When it differs from the served one it *prepares* the new version beside the old,
  while calls go on: opens its tables (maps, layouts, checksums, counts), builds their caches
  and the plan's runners and executor (a resident table's decode, a pinned set's load), and
  warms each new cached table with the rows the old table's cache held (read from the new
  version's files with the table's own kernel, no neighbour admission; their block reads are
  counted apart, as ``warm_blocks_read``, not as traffic).
- Then it *publishes* under the store's call gate (:class:`CallGate`): new calls wait, calls in
  flight finish on the old version, the tables, version, runners, executor and the update
  overlay switch together, and the gate opens. A call therefore never mixes versions: it
  validates, serves and counts on one tables dict. The wait is the longest call in flight plus
  a few pointer assignments and the overlay's catch-up for the new version (the updates the
  new version did not fold: usually the few written during the commit).
- Counters go on: a table of the new version continues its predecessor's counters (same
  name, rows, dim and codec); ``stats()["total"]`` has ``version_swaps`` (reset with the
  other counters by ``reset_stats``), ``last_swap_seconds`` (prepare + publish),
  ``last_swap_blocked_seconds`` (the gate closed), ``warm_rows`` and ``warm_blocks_read``.
  A failed preparation (a version removed under it, a corrupt file) is counted in
  ``version_swap_errors``, leaves the store serving the old version, and is retried at the
  next poll.

Why not by default on every read handle: a handle's version is the snapshot its user reasons
about (tuning jobs read ``table_layout`` and counts across many calls; a relayout's guard
replays against the version it measured; a benchmark compares before and after), and
following costs a second copy of the caches while a new version is prepared. A server that
must pick up rebuilt versions asks for it; ``refresh()`` stays the explicit form.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

#: How often a following store checks the catalog's current version (seconds).
FOLLOW_SECONDS = 0.1
#: How long a switch waits for a gap between calls before it holds new calls back (seconds).
GAP_PATIENCE = 0.25
#: The largest share of a new table's cache the warm-up fills (the rest is left to traffic).
WARM_SHARE = 1.0


class CallGate:
    """Calls in, swaps out: many calls at once, or one version switch with no call inside.

    A call holds the gate from its validation to its last counter (``enter``/``leave``);
    ``exclusive()`` waits for a gap between calls (up to its patience), else closes the gate
    to new calls and waits for the calls in flight; then it runs the switch alone.
    Re-entrant per thread (a call inside a call, e.g. through a listener, passes); a thread
    inside a call that asks for ``exclusive()`` gets it without waiting for itself (and the
    others' calls are still excluded from starting).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._closing = False
        self._waiting = 0  # switches waiting for a gap between calls
        self.closed_at = 0.0  # when the last switch closed the gate (perf_counter)
        self._local = threading.local()

    def enter(self) -> bool:
        """Let a call in (waiting while a switch runs); returns what ``leave`` takes."""
        # The fast path is two attribute reads and one uncontended lock (every call pays it).
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth:
            local.depth = depth + 1
            return False
        lock = self._lock
        lock.acquire()
        if self._closing:
            lock.release()
            with self._cond:
                while self._closing:
                    self._cond.wait()
                self._active += 1
        else:
            self._active += 1
            lock.release()
        local.depth = 1
        return True

    def leave(self, outer: bool) -> None:
        """The call ``enter`` let in is done."""
        self._local.depth -= 1
        if outer:
            lock = self._lock
            lock.acquire()
            self._active -= 1
            if self._active == 0 and (self._closing or self._waiting):
                self._cond.notify_all()
            lock.release()

    @contextmanager
    def exclusive(self, patience: float = 0.0) -> Iterator[None]:
        """Run the body with no call inside. ``patience``: first wait up to this long for a
        moment with no call in flight *without* holding new calls back (a server's batcher
        leaves such gaps between batches), then close the gate and wait for the calls in
        flight."""
        mine = 1 if getattr(self._local, "depth", 0) else 0
        cond = self._cond
        deadline = time.monotonic() + patience
        with cond:
            while self._closing:
                cond.wait()
            self._waiting += 1
            try:
                while self._active > mine:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
            finally:
                self._waiting -= 1
            while self._closing:  # (another switch got in first)
                cond.wait()
            self._closing = True
            self.closed_at = time.perf_counter()  # new calls wait from now on
            while self._active > mine:
                cond.wait()
        try:
            yield
        finally:
            with cond:
                self._closing = False
                cond.notify_all()

    @property
    def active(self) -> int:
        """Calls inside the gate now."""
        return self._active


class SwapCounters:
    """What a store's version switches cost (``stats()["total"]``)."""

    def __init__(self) -> None:
        self.swaps = 0
        self.errors = 0
        self.last_seconds = 0.0
        self.last_blocked_seconds = 0.0
        self.warm_rows = 0
        self.warm_blocks_read = 0
        self.last_error: str | None = None

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def as_dict(self) -> dict[str, float]:
        return {
            "version_swaps": self.swaps,
            "version_swap_errors": self.errors,
            "last_swap_seconds": self.last_seconds,
            "last_swap_blocked_seconds": self.last_blocked_seconds,
            "warm_rows": self.warm_rows,
            "warm_blocks_read": self.warm_blocks_read,
        }


class Follower:
    """A store's version poller (started when the store opens with ``follow_versions``)."""

    def __init__(self, store: Any):
        self._store = weakref.ref(store)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_follow_loop, args=(weakref.ref(self), self._stop),
            name="bandstore-versions", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        th = self._thread
        if th is not threading.current_thread():
            th.join(timeout=30)


def _follow_loop(ref: Any, stop: threading.Event) -> None:
    while not stop.wait(FOLLOW_SECONDS):
        f = ref()
        if f is None:
            return
        store = f._store()
        del f
        if store is None or store._closed:
            return
        try:
            if store.catalog.current_version_id() != store.version:
                follow_once(store)
        except BaseException as exc:  # noqa: BLE001 - a reader's calls must never see it
            if store._closed:
                return
            store._swap_counters.errors += 1
            store._swap_counters.last_error = f"{type(exc).__name__}: {exc}"
        del store


def follow_once(store: Any) -> bool:
    """Move ``store`` to the catalog's current version if it changed (prepared beside the old
    one, published between calls); return whether it did."""
    with store._follow_lock:  # one switch at a time (the poller, refresh, a commit)
        t0 = time.perf_counter()
        prepared = store._prepare_current()
        if prepared is None:
            return False
        rec, vdir, lock, tables = prepared
        from bandstore.serve import runtime

        built = None
        try:
            with runtime._attach_lock:  # (a re-plan may switch the plan meanwhile)
                built = runtime.build(store, tables)
            warm_rows, warm_blocks = _warm(store._tables, tables, built)
            blocked = store._publish(rec, tables, lock, built, GAP_PATIENCE)
        except BaseException:
            if built is not None and store._executor is not built.executor:
                built.executor.close()
            if store._version.get("id") != rec["id"] and lock is not None:
                lock.release()
            raise
        c = store._swap_counters
        c.swaps += 1
        c.last_seconds = time.perf_counter() - t0
        c.last_blocked_seconds = blocked
        c.warm_rows += warm_rows
        c.warm_blocks_read += warm_blocks
        return True


def _warm(old: dict, new: dict, built: Any) -> tuple[int, int]:
    """Fill each new cached table's cache with the rows its predecessor's cache held (hottest
    last: they survive CLOCK longest), read from the new version; ``(rows, blocks read)``."""
    from bandstore.serve.strategies import CachedRunner

    rows = blocks = 0
    for name, t in new.items():
        prev = old.get(name)
        runner = built.runners[name][0]
        if (
            prev is None
            or prev is t
            or prev.runner is not None
            or not isinstance(runner, CachedRunner)
            or prev.info.rows != t.info.rows
        ):
            continue
        c = prev.cache
        ids = np.unique(c.id_of_slot[c.pinned : c.filled])  # (calls may be admitting)
        ids = ids[ids >= 0]
        room = int(WARM_SHARE * (t.cache.capacity - t.cache.pinned))
        if ids.size == 0 or room <= 0:
            continue
        order = np.argsort(t.counts[ids], kind="stable")  # least counted first
        ids = np.ascontiguousarray(ids[order][-room:], dtype=np.int64)
        blocks += t.warm(ids)
        rows += int(ids.size)
    return rows, blocks
