"""One kernel call over the bags of several tables held whole in DRAM (``lookup_many``).

``_pool_many(ids, offsets, id0, weights, weighted, addr, stride, codec, bag0, dims, modes, pads,
out, out0, counts)`` pools, for every table ``k``, its bags ``b`` in ``[bag0[k], bag0[k + 1])``
from the rows at address ``addr[k]`` (row ``r`` at ``addr[k] + r * stride[k]`` bytes, encoded
in ``codec[k]``: ``kernels.codec``'s FLOAT32, FLOAT16 or INT8 rows as ``kernels.pool`` reads
them) into ``out[out0[k] + (b - bag0[k]) * dims[k]:...]``, every bag stored (a bag of no row
gets zeros), with mode ``modes[k]`` (``kernels.cache.MODE_*``: sum, mean, max) and padding id
``pads[k]`` (-1: none). ``ids``: the tables' ids concatenated, table ``k``'s from ``id0[k]``;
``offsets``: their offsets arrays (each one longer than its bags, ending at its ids' count)
concatenated, so bag ``b`` of table ``k`` is
``ids[id0[k] + offsets[b + k]:id0[k] + offsets[b + k + 1]]``. ``weights`` (float32, one per id
of all tables, or empty) weight the ids of the tables with ``weighted[k]`` (mode sum).
``counts[k]`` gets the rows table ``k`` reduced (its lookups, all hits).

The same loops as ``kernels.pool`` (the same order of operations, so each table's bags are
bit-identical to ``kernels.resident._gather_pool_encoded`` on that table alone): only the rows'
base comes from an address instead of an array, which is what lets one call span tables held in
separate arrays. A call of many small tables paid tens of microseconds of Python and dispatch
per table; this kernel pays them once.

Addresses are trusted: the caller keeps every table's array alive across the call, and has
checked every id against its table's rows. Never raises.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit

from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8
from bandstore.kernels.pool import KIND_MAX, KIND_SUM, KIND_WSUM

__all__ = ["AVAILABLE", "KERNELS", "_pool_many", "py_pool_many"]

#: Column chunk widths in floats, widest first.
WIDTHS = (64, 32, 16, 1)
#: ``kernels.cache``'s pooling modes (repeated: this module must not import the cache kernels).
_MODE_MEAN = 1
_MODE_MAX = 2


def py_pool_many(ids, offsets, id0, weights, weighted, tables, bag0, dims, modes, pads, out,
                 out0, counts):  # fmt: skip
    """The contract of ``_pool_many`` in plain Python, with ``tables`` the (codec, rows) pairs
    instead of addresses (the reference of the tests, and the kernel under
    ``NUMBA_DISABLE_JIT``)."""
    from bandstore.kernels.pool import _py_decode

    for k, (codec, data) in enumerate(tables):
        total = 0
        dim = int(dims[k])
        for b in range(bag0[k], bag0[k + 1]):
            o = out0[k] + (b - bag0[k]) * dim
            acc = np.zeros(dim, dtype=np.float32)
            cnt = 0
            for i in range(id0[k] + offsets[b + k], id0[k] + offsets[b + k + 1]):
                r = int(ids[i])
                if r == pads[k]:
                    continue
                v = _py_decode(data, codec, r, 0, dim)
                if modes[k] == _MODE_MAX:
                    acc = v.copy() if cnt == 0 else np.where(v > acc, v, acc)
                elif weighted[k]:
                    acc = acc + np.float32(weights[i]) * v
                else:
                    acc = acc + v
                cnt += 1
            if modes[k] == _MODE_MEAN and cnt > 1:
                acc = acc * (np.float32(1.0) / np.float32(cnt))
            out[o : o + dim] = acc
            total += cnt
        counts[k] = total


#: Whether the kernels exist (not under ``NUMBA_DISABLE_JIT``: rows found by address need
#: compiled code); ``KERNELS``: the ``_pool_many`` of each codec's tables.
AVAILABLE = not config.DISABLE_JIT  # type: ignore[attr-defined]
KERNELS: dict = {}

if not AVAILABLE:

    def _pool_many(ids, offsets, id0, weights, weighted, addr, stride, codec, bag0, dims, modes,
                   pads, out, out0, counts):  # fmt: skip
        raise NotImplementedError("_pool_many needs numba (addresses); use py_pool_many")

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from bandstore.kernels.pool import _emit_loop

    def _make_chunk_at(codec, width):
        """An intrinsic pooling column chunk ``[col, col + width)`` of one bag of the rows at
        address ``addr`` (``kernels.pool._make_chunk`` with the rows and the output given as
        an address and a position instead of 2-D arrays)."""

        @intrinsic
        def chunk(typingctx, addr, stride, idx, weights, start, end, n, pad, out, pos, col,
                  kind):  # fmt: skip
            if not (isinstance(idx, types.Array) and idx.dtype == types.int64):
                return None
            if not (isinstance(out, types.Array) and out.dtype == types.float32):
                return None
            sig = types.int64(addr, stride, idx, weights, start, end, n, pad, out, pos, col,
                              kind)  # fmt: skip

            def codegen(context, builder, signature, args):
                i64 = ir.IntType(64)
                f32p = ir.FloatType().as_pointer()
                a = [context.cast(builder, args[j], signature.args[j], types.int64)
                     for j in (0, 1, 4, 5, 6, 7, 9, 10, 11)]  # fmt: skip
                addr_v, stride_v, start, end, n_v, pad_v, pos, col, k = a
                base = builder.inttoptr(addr_v, ir.IntType(8).as_pointer())
                idx_ptr = context.make_array(signature.args[2])(context, builder, args[2]).data
                wptr = context.make_array(signature.args[3])(context, builder, args[3]).data
                out_a = context.make_array(signature.args[8])(context, builder, args[8])
                optr = builder.bitcast(builder.gep(out_a.data, [builder.add(pos, col)]), f32p)
                res = cgutils.alloca_once(builder, i64)

                def emit(kind_c):
                    return _emit_loop(builder, base, stride_v, idx_ptr, 64, wptr, start, end,
                                      n_v, pad_v, col, optr, codec, width, kind_c)  # fmt: skip

                is_max = builder.icmp_signed("==", k, ir.Constant(i64, KIND_MAX))
                is_w = builder.icmp_signed("==", k, ir.Constant(i64, KIND_WSUM))
                with builder.if_else(is_max) as (then, other):
                    with then:
                        builder.store(emit(KIND_MAX), res)
                    with other:
                        with builder.if_else(is_w) as (then_w, other_w):
                            with then_w:
                                builder.store(emit(KIND_WSUM), res)
                            with other_w:
                                builder.store(emit(KIND_SUM), res)
                return builder.load(res)

            return sig, codegen

        return chunk

    # kernels.pool's widths and 32: D=32 tables (DLRM's small ones) in one pass per bag instead
    # of two 16-wide ones (12-14% more rows/s on 26 tables; the same per-value arithmetic).
    _A_F32_64, _A_F32_32, _A_F32_16, _A_F32_1 = (_make_chunk_at(FLOAT32, w) for w in WIDTHS)
    _A_F16_64, _A_F16_32, _A_F16_16, _A_F16_1 = (_make_chunk_at(FLOAT16, w) for w in WIDTHS)
    _A_I8_64, _A_I8_32, _A_I8_16, _A_I8_1 = (_make_chunk_at(INT8, w) for w in WIDTHS)

    @njit(nogil=True, cache=True, inline="always")
    def _kind(mode, weighted):
        if mode == _MODE_MAX:
            return KIND_MAX
        return KIND_WSUM if weighted else KIND_SUM

    @njit(nogil=True, cache=True, inline="always")
    def _scale(out, pos, dim, cnt):
        """Mean: divide a bag by its ``cnt`` rows (as ``kernels.pool._scale_row``)."""
        inv = np.float32(1.0) / np.float32(cnt)
        for d in range(dim):
            out[pos + d] *= inv

    @njit(nogil=True, cache=True)
    def _pool_many_f32(ids, offsets, id0, weights, weighted, addr, stride, codec, bag0, dims,
                      modes, pads, out, out0, counts):  # fmt: skip
        """``_pool_many`` over the tables of codec FLOAT32 (the others are left as they are): one
        function per codec, so that a process compiles the loops of the codecs it serves only."""
        for k in range(addr.shape[0]):
            if codec[k] != FLOAT32:
                continue
            base = addr[k]
            st = stride[k]
            dim = dims[k]
            pad = pads[k]
            mode = modes[k]
            kind = _kind(mode, weighted[k])
            b0 = bag0[k]
            i0 = id0[k]
            n = id0[k + 1]  # prefetch no further than this table's ids
            total = 0
            for b in range(b0, bag0[k + 1]):
                s = i0 + offsets[b + k]
                e = i0 + offsets[b + k + 1]
                pos = out0[k] + (b - b0) * dim
                c = 0
                cnt = 0
                while c + 64 <= dim:
                    cnt = _A_F32_64(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 64
                if c + 32 <= dim:
                    cnt = _A_F32_32(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 32
                while c + 16 <= dim:
                    cnt = _A_F32_16(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 16
                while c < dim:
                    cnt = _A_F32_1(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 1
                if mode == _MODE_MEAN and cnt > 1:
                    _scale(out, pos, dim, cnt)
                total += cnt
            counts[k] = total

    @njit(nogil=True, cache=True)
    def _pool_many_f16(ids, offsets, id0, weights, weighted, addr, stride, codec, bag0, dims,
                      modes, pads, out, out0, counts):  # fmt: skip
        """``_pool_many`` over the tables of codec FLOAT16 (the others are left as they are): one
        function per codec, so that a process compiles the loops of the codecs it serves only."""
        for k in range(addr.shape[0]):
            if codec[k] != FLOAT16:
                continue
            base = addr[k]
            st = stride[k]
            dim = dims[k]
            pad = pads[k]
            mode = modes[k]
            kind = _kind(mode, weighted[k])
            b0 = bag0[k]
            i0 = id0[k]
            n = id0[k + 1]  # prefetch no further than this table's ids
            total = 0
            for b in range(b0, bag0[k + 1]):
                s = i0 + offsets[b + k]
                e = i0 + offsets[b + k + 1]
                pos = out0[k] + (b - b0) * dim
                c = 0
                cnt = 0
                while c + 64 <= dim:
                    cnt = _A_F16_64(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 64
                if c + 32 <= dim:
                    cnt = _A_F16_32(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 32
                while c + 16 <= dim:
                    cnt = _A_F16_16(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 16
                while c < dim:
                    cnt = _A_F16_1(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 1
                if mode == _MODE_MEAN and cnt > 1:
                    _scale(out, pos, dim, cnt)
                total += cnt
            counts[k] = total

    @njit(nogil=True, cache=True)
    def _pool_many_i8(ids, offsets, id0, weights, weighted, addr, stride, codec, bag0, dims,
                      modes, pads, out, out0, counts):  # fmt: skip
        """``_pool_many`` over the tables of codec INT8 (the others are left as they are): one
        function per codec, so that a process compiles the loops of the codecs it serves only."""
        for k in range(addr.shape[0]):
            if codec[k] != INT8:
                continue
            base = addr[k]
            st = stride[k]
            dim = dims[k]
            pad = pads[k]
            mode = modes[k]
            kind = _kind(mode, weighted[k])
            b0 = bag0[k]
            i0 = id0[k]
            n = id0[k + 1]  # prefetch no further than this table's ids
            total = 0
            for b in range(b0, bag0[k + 1]):
                s = i0 + offsets[b + k]
                e = i0 + offsets[b + k + 1]
                pos = out0[k] + (b - b0) * dim
                c = 0
                cnt = 0
                while c + 64 <= dim:
                    cnt = _A_I8_64(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 64
                if c + 32 <= dim:
                    cnt = _A_I8_32(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 32
                while c + 16 <= dim:
                    cnt = _A_I8_16(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 16
                while c < dim:
                    cnt = _A_I8_1(base, st, ids, weights, s, e, n, pad, out, pos, c, kind)
                    c += 1
                if mode == _MODE_MEAN and cnt > 1:
                    _scale(out, pos, dim, cnt)
                total += cnt
            counts[k] = total

    def _pool_many(ids, offsets, id0, weights, weighted, addr, stride, codec, bag0, dims, modes,
                   pads, out, out0, counts):  # fmt: skip
        """See the module docstring: one kernel call per codec present among the tables."""
        args = (ids, offsets, id0, weights, weighted, addr, stride, codec, bag0, dims, modes,
                pads, out, out0, counts)  # fmt: skip
        present = set(codec.tolist())
        if FLOAT32 in present:
            _pool_many_f32(*args)
        if FLOAT16 in present:
            _pool_many_f16(*args)
        if INT8 in present:
            _pool_many_i8(*args)

    KERNELS.update({FLOAT32: _pool_many_f32, FLOAT16: _pool_many_f16, INT8: _pool_many_i8})
