"""Automatic re-planning from a serving store's recorded traffic.

``AutoReplanner(store, every=N)`` on a store opened with ``record=DIR`` re-plans in the
background after every ``N`` recorded queries: one daemon thread at a time runs
:func:`bandstore.tune.replan` on the recorder's latest traffic, which switches to the new plan
between calls only if the model predicts it is at least ``min_gain`` faster than the plan being
served. Readers never wait: the check runs beside them and the switch is the same non-blocking
one as :func:`bandstore.tune.replan`. A failed check (say, a recorded trace too short to
profile) never reaches a reader's call; it is counted and kept in :meth:`AutoReplanner.status`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bandstore.errors import InvalidArgumentError

#: Options of :func:`bandstore.tune.planning.replan` an AutoReplanner may be given.
REPLAN_OPTIONS = ("workers", "budget", "batch_size", "min_gain", "persist", "max_queries", "curves")


class AutoReplanner:
    """Counts recorded queries and runs a background re-plan every ``every`` of them.

    It subscribes to ``store`` (``Store.add_listener``) and is closed with it; ``options`` are
    :func:`bandstore.tune.planning.replan`'s."""

    def __init__(self, store: Any, every: int, **options: Any):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidArgumentError(
                f"every must be an integer >= 1 (recorded queries), got {every!r}",
                argument="every",
                value=every,
            )
        options = dict(options or {})
        unknown = sorted(set(options) - set(REPLAN_OPTIONS))
        if unknown:
            raise InvalidArgumentError(
                f"unknown replan options {unknown}; allowed: {list(REPLAN_OPTIONS)}",
                argument="options",
                value=unknown,
            )
        self._store = store
        self.every = every
        self._options = options
        self._lock = threading.Lock()
        self._since = 0  # recorded queries since the last check started
        self._thread: threading.Thread | None = None
        self._closed = False
        self._status: dict[str, Any] = {
            "recorded_queries": 0,
            "checks": 0,
            "replans": 0,
            "errors": 0,
            "last_error": None,
            "last": None,
        }
        store.add_listener(self)

    def note(self, recorded: int) -> None:
        """Count ``recorded`` newly recorded queries; start a check when ``every`` have come in
        and none is running. Called by the store after each recorded call (any thread)."""
        if recorded <= 0:
            return
        with self._lock:
            self._status["recorded_queries"] += recorded
            self._since += recorded
            busy = self._thread is not None and self._thread.is_alive()
            if self._closed or busy or self._since < self.every:
                return
            self._since = 0
            self._thread = threading.Thread(
                target=self._check, name="bandstore-replan", daemon=True
            )
            self._thread.start()

    def _check(self) -> None:
        from bandstore.tune.planning import replan

        t0 = time.perf_counter()
        try:
            report = replan(self._store, None, **self._options)
        except Exception as exc:  # noqa: BLE001 - a failed check must never reach a reader
            with self._lock:
                self._status["checks"] += 1
                self._status["errors"] += 1
                self._status["last_error"] = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._status["checks"] += 1
            self._status["replans"] += int(report["replanned"])
            self._status["last"] = {
                "replanned": bool(report["replanned"]),
                "old_batch_ns": float(report["old_batch_ns"]),
                "new_batch_ns": float(report["new_batch_ns"]),
                "seconds": time.perf_counter() - t0,
            }

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running check to finish; return False if it is still running."""
        with self._lock:
            th = self._thread
        if th is None:
            return True
        th.join(timeout)
        return not th.is_alive()

    def status(self) -> dict[str, Any]:
        """Counters (recorded queries, checks, replans, errors), the last check's figures, the
        last error, and whether a check is running now."""
        with self._lock:
            out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._status.items()}
            out["running"] = self._thread is not None and self._thread.is_alive()
            out["every"] = self.every
        return out

    def close(self) -> None:
        """No new checks; wait for the running one (it may be switching plans)."""
        with self._lock:
            self._closed = True
        self.wait()
