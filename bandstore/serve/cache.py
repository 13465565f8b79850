"""DRAM cache state and admission policy of one table.

The policy is Bandana's: on a miss the whole block is read; the requested rows are admitted;
each other row of the block is admitted only if its recorded access count reaches the table's
threshold ``t`` (``t = 0``: always, ``t = NEVER``: never); a ``pinned_share`` of the cache holds
the rows with the highest access counts and is never evicted; the rest is evicted by CLOCK.
The arrays live here; the logic is in ``bandstore.kernels.cache`` and is shared with the
simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bandstore.errors import InvalidArgumentError
from bandstore.kernels.cache import META_CAPACITY, NEVER
from bandstore.storage import dram

#: DRAM bytes charged per cached row beyond its decoded float32 values: the slot's id (8), its
#: CLOCK bit (1) and the slot_of_id entry (4 per table row, charged separately).
SLOT_OVERHEAD_BYTES = 9


def cache_row_bytes(dim: int) -> int:
    """DRAM bytes one cached row costs: decoded float32 values plus slot bookkeeping."""
    return 4 * dim + SLOT_OVERHEAD_BYTES


def capacity_rows(cache_bytes: int, dim: int, rows: int) -> int:
    """How many rows a cache of ``cache_bytes`` holds (never more than the table has)."""
    return int(min(rows, max(0, cache_bytes) // cache_row_bytes(dim)))


def threshold_from_json(value) -> int:
    """Thresholds are stored as JSON numbers, or null for 'never admit neighbours'."""
    if value is None:
        return NEVER
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgumentError(
            f"admission threshold must be an integer >= 0 or None (never), got {value!r}",
            argument="threshold",
            value=value,
        )
    t = int(value)
    if t < 0:
        raise InvalidArgumentError(
            f"admission threshold must be >= 0, got {t}", argument="threshold"
        )
    return min(t, NEVER)


def threshold_to_json(value: int) -> int | None:
    return None if value >= NEVER else int(value)


@dataclass(frozen=True)
class CachePolicy:
    """The cache parameters of one table."""

    cache_bytes: int
    threshold: int = NEVER
    pinned_share: float = 0.0

    def __post_init__(self) -> None:
        if self.cache_bytes < 0:
            raise InvalidArgumentError(
                f"cache_bytes must be >= 0, got {self.cache_bytes}", argument="cache_bytes"
            )
        if not (0.0 <= self.pinned_share <= 1.0) or math.isnan(self.pinned_share):
            raise InvalidArgumentError(
                f"pinned_share must be in [0, 1], got {self.pinned_share}",
                argument="pinned_share",
            )
        if self.threshold < 0:
            raise InvalidArgumentError(
                f"admission threshold must be >= 0, got {self.threshold}", argument="threshold"
            )


def pinned_ids(counts: np.ndarray | None, n_pinned: int) -> np.ndarray:
    """The ``n_pinned`` rows with the highest access counts (ties: lower id), counts > 0 only."""
    if counts is None or n_pinned <= 0:
        return np.empty(0, dtype=np.int64)
    n_pinned = min(n_pinned, int(np.count_nonzero(counts)))
    if n_pinned == 0:
        return np.empty(0, dtype=np.int64)
    # Stable sort on -count keeps lower ids first among equal counts.
    order = np.argsort(-counts.astype(np.int64), kind="stable")
    return np.ascontiguousarray(order[:n_pinned], dtype=np.int64)


class CacheState:
    """The arrays of one table's cache (see ``bandstore.kernels.cache``)."""

    def __init__(self, rows: int, dim: int, capacity: int, *, with_data: bool = True):
        self.rows = rows
        self.capacity = capacity
        # Read at random on every lookup: large ones on huge pages (bandstore.storage.dram).
        self.slot_of_id = dram.full(rows, -1, np.int32)
        self.id_of_slot = dram.full(capacity, -1, np.int64)
        self.ref = dram.zeros(capacity, np.uint8)
        self.meta = np.zeros(4, dtype=np.int64)
        self.meta[META_CAPACITY] = capacity
        self.data = dram.zeros((capacity, dim if with_data else 0), np.float32)

    @property
    def filled(self) -> int:
        from bandstore.kernels.cache import META_FILLED

        return int(self.meta[META_FILLED])

    @property
    def pinned(self) -> int:
        from bandstore.kernels.cache import META_PINNED

        return int(self.meta[META_PINNED])

    @property
    def nbytes(self) -> int:
        return (
            self.slot_of_id.nbytes
            + self.id_of_slot.nbytes
            + self.ref.nbytes
            + self.data.nbytes
            + self.meta.nbytes
        )
