"""The simulator's numba driver: one pass over a trace, every batch through every mini cache.

It owns no policy: each batch goes through ``bandstore.kernels.cache._cache_batch`` with
``with_data=False``, the very function the store serves lookups with, so a mini cache behaves
exactly as the store's cache of the same capacity, threshold and pinned rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bandstore.kernels.cache import (
    META_FILLED,
    META_HAND,
    META_PINNED,
    MODE_SUM,
    _cache_batch,
    _load_pinned,
)


@njit(nogil=True, cache=True)
def _init_caches(pinned, n_load, n_pinned, slot_of_id, id_of_slot, slot_start, meta, layout,
                 rows_per_block):  # fmt: skip
    """Load mini cache ``c`` with the pinned rows ``pinned[:n_load[c]]``; it pins ``n_pinned[c]``.

    ``n_pinned[c]`` may exceed ``n_load[c]``: pinned rows outside the simulated id space (in
    blocks the trace never reads) still take their pinned slots, never probed, as in the store.
    """
    empty_f = np.empty((0, 0), dtype=np.float32)
    empty_u8 = np.empty(0, dtype=np.uint8)
    for c in range(meta.shape[0]):
        s0 = slot_start[c]
        s1 = slot_start[c + 1]
        _load_pinned(
            pinned[: n_load[c]], False, slot_of_id[c], id_of_slot[s0:s1], meta[c], empty_f,
            layout, rows_per_block, 0, 0, 0, 0, empty_u8,
        )  # fmt: skip
        total = n_pinned[c]
        meta[c, META_PINNED] = total
        meta[c, META_FILLED] = total
        meta[c, META_HAND] = total


@njit(nogil=True, cache=True)
def _run_batches(ids, batch_bounds, counts, thresholds, layout, inverse_layout, rows_per_block,
                 block_size, row_bytes, slot_of_id, id_of_slot, ref, slot_start, meta,
                 stats):  # fmt: skip
    """Feed batch ``b`` (lookups ``batch_bounds[b]:batch_bounds[b + 1]``) to every mini cache.

    Mini cache ``c``: ``slot_of_id[c]``, ``id_of_slot`` and ``ref`` in
    ``[slot_start[c], slot_start[c + 1])``, ``meta[c]``, threshold ``thresholds[c]``; its
    counters are added to ``stats[c]``. A batch is passed as one bag: without data the bags
    only matter for pooling, and the probe order (bag by bag, position by position) is the
    order of the ids either way.
    """
    empty_w = np.empty(0, dtype=np.float32)
    no_data = np.empty((0, 0), dtype=np.float32)
    out = np.empty((1, 0), dtype=np.float32)  # one bag, no columns: never written
    empty_u8 = np.empty(0, dtype=np.uint8)
    empty_sums = np.empty(0, dtype=np.uint64)
    error = np.zeros(1, dtype=np.int64)
    one_bag = np.zeros(2, dtype=np.int64)
    for b in range(batch_bounds.shape[0] - 1):
        lo = batch_bounds[b]
        hi = batch_bounds[b + 1]
        if hi == lo:
            continue
        batch = ids[lo:hi]
        one_bag[1] = hi - lo
        for c in range(meta.shape[0]):
            s0 = slot_start[c]
            s1 = slot_start[c + 1]
            _cache_batch(
                batch, one_bag, empty_w, MODE_SUM, -1, out, False,
                slot_of_id[c], id_of_slot[s0:s1], ref[s0:s1], meta[c], no_data,
                counts, thresholds[c], layout, inverse_layout, rows_per_block, block_size,
                row_bytes, 0, 0,
                empty_u8, empty_sums, block_size, False, stats[c], error,
            )  # fmt: skip
