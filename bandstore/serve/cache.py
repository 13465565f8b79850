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
from bandstore.options import check_threshold
from bandstore.storage import dram
from bandstore.storage.codecs import row_bytes

#: DRAM bytes charged per cached row beyond its encoded row: the slot's id (8); its CLOCK bit
#: lives in the slot_of_id entry (4 per table row, charged separately).
SLOT_OVERHEAD_BYTES = 8


def cache_row_bytes(dim: int, codec: str | int = "float32") -> int:
    """DRAM bytes one cached row costs: the row as its codec stores it (``row_bytes``: float32
    ``4 * dim``, float16 ``2 * dim``, int8 ``8 + dim``, rounded up to 4) plus slot bookkeeping.
    Cache slots hold rows encoded and decode them in the pooling loop."""
    return row_bytes(codec, dim) + SLOT_OVERHEAD_BYTES


def capacity_rows(cache_bytes: int, dim: int, rows: int, codec: str | int = "float32") -> int:
    """How many rows of ``codec`` a cache of ``cache_bytes`` holds (never more than the table
    has)."""
    return int(min(rows, max(0, cache_bytes) // cache_row_bytes(dim, codec)))


@dataclass(frozen=True)
class CachePolicy:
    """The cache parameters of one table (``threshold``: an integer >= 0, ``NEVER`` for no
    neighbour admission; larger values are clamped to ``NEVER``)."""

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
        object.__setattr__(self, "threshold", check_threshold(self.threshold))


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
    """The arrays of one table's cache (see ``bandstore.kernels.cache``); ``data`` holds the
    slots' rows encoded in ``codec`` (uint8 (capacity, row_bytes)), as the block file does."""

    def __init__(self, rows: int, dim: int, capacity: int, *, with_data: bool = True,
                 codec: str | int = "float32"):  # fmt: skip
        self.rows = rows
        self.capacity = capacity
        # Read at random on every lookup: large ones on huge pages (bandstore.storage.dram).
        self.slot_of_id = dram.full(rows, -1, np.int32)
        self.id_of_slot = dram.full(capacity, -1, np.int64)
        # The CLOCK bits live in slot_of_id (kernels.cache.REF_FLAG): no array per slot.
        self.ref = np.zeros(0, dtype=np.uint8)
        self.meta = np.zeros(4, dtype=np.int64)
        self.meta[META_CAPACITY] = capacity
        width = row_bytes(codec, dim) if with_data else 0
        self.data = dram.zeros((capacity, width), np.uint8)

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
