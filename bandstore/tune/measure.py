"""Replay a trace through a real store: real lookups, real counters, real time."""

from __future__ import annotations

import time

import numpy as np

from bandstore.errors import InvalidArgumentError, UnknownTableError
from bandstore.progress import bar as progress_bar
from bandstore.serve.store import Store
from bandstore.traces.trace import Trace
from bandstore.tune.reports import ReplayReport


def trace_requests(trace: Trace, start: int, stop: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The lookup_many request for queries ``[start, stop)``: one bag per query and table
    (torch-style offsets: the start of each bag)."""
    req = {}
    for name in trace.table_names:
        indices, offsets = trace.table(name)
        lo, hi = offsets[start], offsets[stop]
        req[name] = (indices[lo:hi], offsets[start:stop] - lo)
    return req


def replay(
    store: Store,
    trace: Trace,
    *,
    batch_size: int = 256,
    mode: str = "sum",
    reset: bool = True,
    progress: bool | None = None,
) -> ReplayReport:
    """Replay ``trace`` in batches of ``batch_size`` queries through ``store.lookup_many``.

    Returns the store's counters for the replay (per table and ``total``; without ``reset``,
    the counters since the last reset) with the queries, the seconds spent in ``lookup_many``
    and the lookups per second.
    """
    if batch_size < 1:
        raise InvalidArgumentError(
            f"batch_size must be >= 1, got {batch_size}", argument="batch_size"
        )
    unknown = [t for t in trace.table_names if t not in store.tables]
    if unknown:
        raise UnknownTableError(unknown[0], list(store.tables))
    for name in trace.table_names:
        rows = store.tables[name].rows
        if trace.num_rows[name] > rows:
            raise InvalidArgumentError(
                f"trace reads ids up to {trace.num_rows[name] - 1} of table {name!r}, "
                f"which has {rows} rows",
                argument="trace",
            )
    if reset:
        store.reset_stats()
    elapsed = 0.0
    n = trace.n_queries
    with progress_bar(progress, total=n, desc="replay", unit="query") as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            req = trace_requests(trace, start, stop)
            t0 = time.perf_counter()
            store.lookup_many(req, mode=mode)
            elapsed += time.perf_counter() - t0
            bar.update(stop - start)
    stats = store.stats()
    total = stats.pop("total")
    lookups = total["lookups"]
    return ReplayReport(
        tables=stats,
        total=total,
        queries=n,
        seconds=elapsed,
        lookups_per_second=lookups / elapsed if elapsed > 0 else 0.0,
    )
