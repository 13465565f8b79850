"""Slow, obviously right references the kernels are checked against."""

from __future__ import annotations

import numpy as np

NEVER = 2**62


def embedding_bag_ref(
    weight: np.ndarray,
    indices: np.ndarray,
    offsets: np.ndarray,
    mode: str = "sum",
    per_sample_weights: np.ndarray | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> np.ndarray:
    """torch.nn.functional.embedding_bag, one bag and one row at a time, in float64."""
    indices = np.asarray(indices, dtype=np.int64)
    offsets = [int(o) for o in offsets]
    if include_last_offset:
        bounds = list(zip(offsets[:-1], offsets[1:], strict=True))
    elif offsets:
        ends = offsets[1:] + [len(indices)]
        bounds = list(zip(offsets, ends, strict=True))
    else:
        bounds = []
    if padding_idx is not None and padding_idx < 0:
        padding_idx += weight.shape[0]
    out = np.zeros((len(bounds), weight.shape[1]), dtype=np.float64)
    for b, (lo, hi) in enumerate(bounds):
        rows = []
        for i in range(lo, hi):
            if padding_idx is not None and indices[i] == padding_idx:
                continue
            w = 1.0 if per_sample_weights is None else float(per_sample_weights[i])
            rows.append(w * weight[indices[i]].astype(np.float64))
        if not rows:
            continue
        stacked = np.stack(rows)
        if mode == "sum":
            out[b] = stacked.sum(axis=0)
        elif mode == "mean":
            out[b] = stacked.mean(axis=0)
        else:
            out[b] = stacked.max(axis=0)
    return out


class ReferenceCache:
    """The cache policy of docs/ARCHITECTURE.md, written plainly with Python containers.

    CLOCK over a list of slots after the pinned ones; two-phase batches; neighbour admission by
    access count threshold. Counters as the store reports them.
    """

    def __init__(self, layout, rows_per_block, capacity, counts, threshold=NEVER, pinned=()):
        self.layout = [int(s) for s in layout]
        self.rpb = rows_per_block
        self.id_at = {s: i for i, s in enumerate(self.layout)}
        self.counts = [int(c) for c in counts]
        self.threshold = threshold
        self.capacity = capacity
        self.pinned = list(pinned)
        self.slots: list[int | None] = list(self.pinned)  # slot -> id
        self.where = {r: s for s, r in enumerate(self.pinned)}  # id -> slot
        self.ref = [0] * len(self.slots)
        self.hand = len(self.pinned)
        self.stats = dict(lookups=0, hits=0, misses=0, blocks_read=0, useful_rows=0)

    def _admit(self, row):
        if self.capacity <= len(self.pinned):
            return
        if len(self.slots) < self.capacity:
            self.slots.append(row)
            self.ref.append(0)
            self.where[row] = len(self.slots) - 1
            return
        while self.ref[self.hand]:
            self.ref[self.hand] = 0
            self.hand = self.hand + 1 if self.hand + 1 < self.capacity else len(self.pinned)
        victim = self.hand
        del self.where[self.slots[victim]]
        self.slots[victim] = row
        self.where[row] = victim
        self.ref[victim] = 0
        self.hand = self.hand + 1 if self.hand + 1 < self.capacity else len(self.pinned)

    def batch(self, ids):
        misses = []
        for pos, row in enumerate(ids):
            self.stats["lookups"] += 1
            if row in self.where:
                self.stats["hits"] += 1
                self.ref[self.where[row]] = 1
            else:
                self.stats["misses"] += 1
                misses.append((self.layout[row] // self.rpb, pos, row))
        by_block: dict[int, list[int]] = {}
        for blk, _pos, row in sorted(misses):
            by_block.setdefault(blk, []).append(row)
        for blk in sorted(by_block):
            requested = by_block[blk]
            self.stats["blocks_read"] += 1
            self.stats["useful_rows"] += len(set(requested))
            for s in range(blk * self.rpb, (blk + 1) * self.rpb):
                nb = self.id_at.get(s)
                if nb is None or nb in requested or nb in self.where:
                    continue
                if self.counts[nb] >= self.threshold:
                    self._admit(nb)
            for row in requested:
                if row not in self.where:
                    self._admit(row)
