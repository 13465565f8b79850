"""Where a table's stored access counts came from.

Access counts (``counts/<table>`` in the catalog) decide admission and pinning, and three jobs
write them: relayout, cache sizing and plan apply. Each stores a :class:`CountsOrigin` with
them, in the same transaction, so that ``Store.counts_origin(table)`` and ``bandstore info``
say whose counts are in force.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class CountsOrigin:
    """The origin of one table's access counts.

    ``writer``: the job that stored them (``relayout``, ``size_cache``, ``plan``, or a
    caller's own name; ``set_tuning`` / ``relayout_tables`` / ``set_plan`` when a caller gave
    none). ``trace``: the trace's source (a ``.npz`` file or a recorded directory), if known.
    ``queries``: the queries counted; ``lookups``: the table's lookups counted. ``detail``:
    which part or weighting (e.g. ``"whole trace"``, ``"recency half-life 0.25"``).
    ``time`` (unix seconds) and ``version`` (the store version they were committed with) are
    filled in by the store when it stores them.
    """

    writer: str
    trace: str | None = None
    queries: int | None = None
    lookups: int | None = None
    detail: str | None = None
    time: float | None = None
    version: int | None = None

    def stamped(self, time: float, version: int) -> CountsOrigin:
        """This origin with the time and version of the commit that stores it."""
        return replace(self, time=float(time), version=int(version))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CountsOrigin:
        """Read a stored record (unknown keys of a newer writer are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        """One line: ``relayout from trace.npz (8000 queries, 160000 lookups; whole tuning
        part), version 3, 2026-12-07 21:30:00 UTC``."""
        what = [f"{self.queries} queries" if self.queries is not None else "",
                f"{self.lookups} lookups" if self.lookups is not None else ""]  # fmt: skip
        counted = ", ".join(w for w in what if w)
        if self.detail:
            counted = f"{counted}; {self.detail}" if counted else self.detail
        text = self.writer
        if self.trace:
            text += f" from {self.trace}"
        if counted:
            text += f" ({counted})"
        if self.version is not None:
            text += f", version {self.version}"
        if self.time is not None:
            when = datetime.datetime.fromtimestamp(self.time, datetime.timezone.utc)
            text += f", {when:%Y-%m-%d %H:%M:%S} UTC"
        return text
