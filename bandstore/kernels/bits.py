"""The index of a pinned row set: a bitmap over the table's rows with a running count.

A ``pinned`` table holds a fixed set of rows in DRAM, in id order. A slot index of 4 bytes per
table row (the row cache's ``slot_of_id``) would cost more DRAM than the rows themselves when
few are held; this index costs 16 bytes per 64 rows (a quarter byte per row), so it stays in
the L2 cache of tables up to millions of rows. Word ``w`` is ``(bits, before)``: bit ``j`` of
``bits`` says whether row ``64 w + j`` is held, ``before`` how many rows below ``64 w`` are.
The slot of a held row is ``before`` plus the held rows below it in its word (a popcount):
one cache line per probe, as with a slot index.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit

if config.DISABLE_JIT:  # type: ignore[attr-defined]  # numba.config sets it at import

    def _popcount(x):
        """Set bits of a 64-bit integer (two's complement for negative values)."""
        return bin(int(x) & 0xFFFFFFFFFFFFFFFF).count("1")

else:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _popcount(typingctx, x):
        """Set bits of a 64-bit integer: llvm.ctpop, one instruction where the CPU has it."""
        if not isinstance(x, types.Integer) or x.bitwidth != 64:  # type: ignore[attr-defined]  # numba types: runtime attr
            return None

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            fn = builder.module.declare_intrinsic("llvm.ctpop", [i64])
            return builder.call(fn, [args[0]])

        return types.int64(x), codegen


@njit(nogil=True, cache=True)
def _pinned_slot(index, row_id):
    """The slot of ``row_id`` in a pinned set's data, or -1 if it is not held."""
    bits = index[row_id >> 6, 0]
    j = row_id & 63
    if ((bits >> j) & 1) == 0:
        return -1
    return index[row_id >> 6, 1] + _popcount(bits & ((np.int64(1) << j) - 1))


def index_bytes(rows: int) -> int:
    """DRAM bytes of the index of a table of ``rows`` rows."""
    return 16 * -(-rows // 64)


def pinned_index(ids: np.ndarray, rows: int) -> np.ndarray:
    """The index (int64, ``(ceil(rows / 64), 2)``) of the distinct row ids ``ids``; their slots
    are their positions in ascending id order."""
    words = -(-rows // 64)
    held = np.zeros(words * 64, dtype=bool)
    held[ids] = True
    index = np.empty((words, 2), dtype=np.int64)
    index[:, 0] = np.packbits(held, bitorder="little").view("<u8").view(np.int64)
    per_word = np.count_nonzero(held.reshape(words, 64), axis=1)
    index[:, 1] = np.cumsum(per_word) - per_word
    return index
