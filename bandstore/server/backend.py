"""What the server serves lookups from: a small protocol, and the bandstore Store behind it.

The server (``app.py``) and its batcher (``batching.py``) talk to a :class:`Backend` only, so a
benchmark can put another embedding source (torch ``nn.EmbeddingBag`` in DRAM, RocksDB) behind
the identical HTTP stack and batching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: One table's part of a lookup: ``(indices, offsets, weights)``; int64 ``indices``, int64
#: ``offsets`` of bag starts (EmbeddingBag's, without the last offset), float32 ``weights`` of
#: the shape of ``indices`` or None. Already validated (see ``batching.validate_tables``).
TablePart = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]

MODES = ("sum", "mean", "max")


@dataclass(frozen=True)
class TableSpec:
    """What the server says about a table (``GET /v1/tables``)."""

    name: str
    rows: int
    dim: int
    codec: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "dim": self.dim, "codec": self.codec}


@runtime_checkable
class Backend(Protocol):
    """Pooled lookups over named tables, callable from a worker thread.

    ``lookup`` must be thread-safe and give, for each table, the float32 ``(bags, dim)`` result
    of ``torch.nn.functional.embedding_bag(indices, weight, offsets, mode=modes[table],
    per_sample_weights=weights)``. ``aligned_bags``: whether one ``lookup`` call needs the same
    number of bags in every table (a recording store: one query is one bag of each table).
    """

    aligned_bags: bool

    def tables(self) -> dict[str, TableSpec]: ...

    def lookup(
        self, requests: Mapping[str, TablePart], modes: Mapping[str, str]
    ) -> dict[str, np.ndarray]: ...

    def stats(self) -> dict[str, dict[str, float]]: ...

    def close(self) -> None: ...


class StoreBackend:
    """A :class:`bandstore.Store` as a :class:`Backend` (the server owns and closes it)."""

    def __init__(self, store: Any):
        self.store = store
        self.aligned_bags = store.recorder is not None

    def tables(self) -> dict[str, TableSpec]:
        return {
            name: TableSpec(name, info.rows, info.dim, info.codec)
            for name, info in self.store.tables.items()
        }

    def lookup(
        self, requests: Mapping[str, TablePart], modes: Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        parts = {t: (i, o) if w is None else (i, o, w) for t, (i, o, w) in requests.items()}
        return self.store.lookup_many(parts, mode=dict(modes))

    def stats(self) -> dict[str, dict[str, float]]:
        return self.store.stats()

    def warm_up(self) -> None:
        """Compile the kernels: a weighted sum and every mode on one row of each table, not
        recorded, then the counters are reset (the served traffic starts from zero)."""
        # The recorder logs traffic for relayout; the warm-up is not traffic, and nothing else
        # is served before the server is ready.
        with self.store.recording_paused():
            one = np.zeros(1, dtype=np.int64)
            start = np.zeros(1, dtype=np.int64)
            tables = [t for t, info in self.store.tables.items() if info.rows > 0]
            for mode in MODES:
                self.store.lookup_many({t: (one, start) for t in tables}, mode=mode)
            w = np.ones(1, dtype=np.float32)
            self.store.lookup_many({t: (one, start, w) for t in tables}, mode="sum")
        self.store.reset_stats()

    def close(self) -> None:
        self.store.close()
