"""The logs a rebuild reads: recorded directories and ``.npz`` trace files, in time order.

:func:`load_logs` reads them one after the other; the Ray engine
(:mod:`bandstore.tune.distributed`) reads each log in its own task (:func:`read_log`) and merges
them with the same :func:`merge_logs`, so both engines see the same trace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bandstore.errors import InvalidArgumentError, TraceFormatError
from bandstore.traces.trace import Trace


def read_log(path: str | os.PathLike[str]) -> tuple[float, Trace]:
    """A log's trace and when its recording began (a recorded directory: its first segment's
    creation time; a trace file: its modification time). Raises TraceFormatError for anything
    else, and what the readers raise for a damaged log."""
    from bandstore.traces.recorder import read_recorded_with_report

    path = Path(path)
    if path.is_dir():
        trace, report = read_recorded_with_report(path)
        times = [float(m["created_unix"]) for m in report.metadata if "created_unix" in m]
        return (min(times) if times else path.stat().st_mtime), trace
    if path.suffix != ".npz":
        raise TraceFormatError(
            str(path), "a log is a directory written by the recorder or a .npz trace file"
        )
    return path.stat().st_mtime, Trace.load(path)


def merge_logs(loaded: Sequence[tuple[float, Trace]], num_rows: Mapping[str, int]) -> Trace:
    """One trace of the logs ``loaded`` (``(start, trace)`` in the order given), sorted by when
    their recording began (ties: in the order given), their queries one after the other.
    Tables a log does not read get empty bags; ``num_rows`` (the store's tables) sizes every
    table."""
    if not loaded:
        raise InvalidArgumentError("rebuild needs at least one log", argument="logs")
    order = sorted(((start, i, t) for i, (start, t) in enumerate(loaded)), key=lambda x: x[:2])
    names: list[str] = []
    for _, _, t in order:
        names += [n for n in t.table_names if n not in names]
    parts = []
    for _, _, t in order:
        tables = {}
        for n in names:
            if n in t.table_names:
                tables[n] = t.table(n)
            else:
                tables[n] = (np.zeros(0, np.int64), np.zeros(t.n_queries + 1, np.int64))
        rows = {n: int(num_rows[n]) for n in names if n in num_rows}
        parts.append(Trace(tables, num_rows=rows))
    return parts[0] if len(parts) == 1 else Trace.concat(parts)


def load_logs(paths: Sequence[str | os.PathLike[str]], num_rows: Mapping[str, int]) -> Trace:
    """One trace of the queries of ``paths`` (recorded directories, ``.npz`` trace files), in
    time order (:func:`merge_logs` of :func:`read_log` of each). ``num_rows`` (the store's
    tables) sizes every table."""
    if not paths:
        raise InvalidArgumentError("rebuild needs at least one log", argument="logs")
    return merge_logs([read_log(p) for p in paths], num_rows)
