"""The origin a tuning job records with the access counts it stores (``Store.counts_origin``)."""

from __future__ import annotations

from typing import Any

from bandstore.storage.origin import CountsOrigin


def trace_origin(writer: str, trace: Any, table: str, detail: str | None = None) -> CountsOrigin:
    """Counts of ``table`` taken from ``trace`` by ``writer`` (``detail``: which part of the
    trace, or how they were weighted)."""
    lookups = trace.n_lookups(table) if table in trace.table_names else 0
    return CountsOrigin(
        writer=writer,
        trace=getattr(trace, "source", None),
        queries=int(trace.n_queries),
        lookups=int(lookups),
        detail=detail,
    )
