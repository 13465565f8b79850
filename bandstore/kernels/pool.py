"""Vectorised gather-and-pool of one bag, per codec: the inner loop of every lookup kernel.

``_pool_bag(data, codec, idx, weights, start, end, n, pad, kind, out, b)`` reduces the rows
``data[idx[i]]`` for ``i`` in ``[start, end)`` into ``out[b]`` and returns how many it reduced.
An entry is skipped when ``idx[i] < 0`` (a cache miss, reduced later from its block) or
``idx[i] == pad``. ``kind``: ``KIND_SUM`` (``out[b] = 0 + r0 + r1 + ...``), ``KIND_WSUM``
(``0 + w0 * r0 + ...``, ``weights[i]``) or ``KIND_MAX`` (the first row, then the elementwise
maximum: also a bit-exact copy for bags of one row). ``out[b]`` is *stored*, never read: a bag
with no row gets zeros. ``data`` holds the rows encoded, one row per line of a C-contiguous
2-D array: ``FLOAT32``: float32 (rows, dim); ``FLOAT16``: the half bit patterns as uint16
(rows, dim) (numba has no float16 arrays), or uint8 (rows, 2 * dim + padding); ``INT8``:
uint8 (rows, row_bytes) as written by ``storage.codecs.encode_rows`` (scale f32, bias f32,
dim codes). ``out``: float32 (bags, dim).

Why not a plain numba loop: the dimension is only known at run time, so numba's loop over it
kept ``out[b]`` in memory (loaded, added, stored, behind a run-time alias check, per row) and
could not hold the accumulator in registers; a fixed-width loop over scalars was not
vectorised at all. Here each bag is walked once per column chunk of 64, 16 or 1 floats by a
small loop written in LLVM IR: the chunk's accumulator is one ``<W x float>`` value (8 AVX2
or 4 AVX-512 registers for 64), rows are decoded in registers (``fpext`` half -> float,
``uitofp`` then ``code * scale + bias`` for int8) and every line of the row ``PREFETCH_ROWS``
entries ahead is prefetched. No fast-math: the adds run in the same order as the scalar
reference, so results are bit-identical to decode-then-pool in float32.

Under ``NUMBA_DISABLE_JIT=1`` the same contract runs as plain Python (numpy float32).
"""

from __future__ import annotations

import numpy as np
from numba import config, njit

from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8

__all__ = ["KIND_MAX", "KIND_SUM", "KIND_WSUM", "PREFETCH_ROWS"]

KIND_SUM = 0
KIND_WSUM = 1
KIND_MAX = 2
#: How many entries ahead a bag's loop prefetches rows (every 64-byte line of the row).
PREFETCH_ROWS = 16
#: Column chunk widths in floats, widest first (a bag is walked once per chunk).
WIDTHS = (64, 16, 1)


def _py_decode(data, codec, r, col, width):
    """One row's float32 values ``[col, col + width)`` (the plain-Python twin)."""
    row = data[r]
    if codec == FLOAT32:
        return row.view(np.float32)[col : col + width].copy()
    if codec == FLOAT16:
        return row.view(np.uint16)[col : col + width].view(np.float16).astype(np.float32)
    sb = row[:8].view(np.float32)
    codes = row[8 + col : 8 + col + width].astype(np.float32)
    return codes * sb[0] + sb[1]


def _py_chunk(data, codec, width, kind, idx, weights, start, end, n, pad, out, b, col):
    """``_pool_chunk`` in plain Python: same order of operations, numpy float32."""
    acc = np.zeros(width, dtype=np.float32)
    cnt = 0
    for i in range(start, end):
        r = int(idx[i])
        if r < 0 or r == pad:
            continue
        v = _py_decode(data, codec, r, col, width)
        if kind == KIND_MAX:
            acc = v.copy() if cnt == 0 else np.where(v > acc, v, acc)
        elif kind == KIND_WSUM:
            acc = acc + np.float32(weights[i]) * v
        else:
            acc = acc + v
        cnt += 1
    out[b, col : col + width] = acc
    return cnt


if config.DISABLE_JIT:  # type: ignore[attr-defined]  # numba.config sets it at import

    def _make_chunk(codec, width):
        def chunk(data, idx, weights, start, end, n, pad, out, b, col, kind):
            return _py_chunk(data, codec, width, kind, idx, weights, start, end, n, pad, out,
                             b, col)  # fmt: skip

        return chunk

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from bandstore.kernels.prefetch import _emit_prefetch

    def _make_chunk(codec, width):
        """An intrinsic pooling column chunk ``[col, col + width)`` of one bag (see module):
        one loop per kind behind a switch on ``kind`` (three call sites to type instead of
        nine keeps numba's compile time down)."""

        @intrinsic
        def chunk(typingctx, data, idx, weights, start, end, n, pad, out, b, col, kind):
            if not (isinstance(data, types.Array) and data.ndim == 2 and data.layout == "C"):
                return None
            if not (isinstance(idx, types.Array) and isinstance(idx.dtype, types.Integer)):
                return None
            if not (isinstance(out, types.Array) and out.ndim == 2 and out.layout == "C"):
                return None
            sig = types.int64(data, idx, weights, start, end, n, pad, out, b, col, kind)

            def codegen(context, builder, signature, args):
                i64 = ir.IntType(64)
                k = context.cast(builder, args[10], signature.args[10], types.int64)
                res = cgutils.alloca_once(builder, i64)
                is_max = builder.icmp_signed("==", k, ir.Constant(i64, KIND_MAX))
                is_w = builder.icmp_signed("==", k, ir.Constant(i64, KIND_WSUM))
                emit = _emit_chunk
                with builder.if_else(is_max) as (then, other):
                    with then:
                        builder.store(emit(context, builder, signature, args, codec, width,
                                           KIND_MAX), res)  # fmt: skip
                    with other:
                        with builder.if_else(is_w) as (then_w, other_w):
                            with then_w:
                                builder.store(emit(context, builder, signature, args, codec,
                                                   width, KIND_WSUM), res)  # fmt: skip
                            with other_w:
                                builder.store(emit(context, builder, signature, args, codec,
                                                   width, KIND_SUM), res)  # fmt: skip
                return builder.load(res)

            return sig, codegen

        return chunk

    def _emit_chunk(context, builder, signature, args, codec, width, kind):
        a_data, a_idx, a_w, a_start, a_end, a_n, a_pad, a_out, a_b, a_col = args[:10]
        t_data, t_idx, t_w = signature.args[:3]
        i64 = ir.IntType(64)
        f32 = ir.FloatType()
        i8p = ir.IntType(8).as_pointer()

        def as_i64(value, ty):
            return context.cast(builder, value, ty, types.int64)

        data = context.make_array(t_data)(context, builder, a_data)
        idx = context.make_array(t_idx)(context, builder, a_idx)
        out = context.make_array(signature.args[7])(context, builder, a_out)
        b = as_i64(a_b, signature.args[8])
        col = as_i64(a_col, signature.args[9])
        base = builder.bitcast(data.data, i8p)
        stride = builder.mul(
            builder.extract_value(data.shape, 1), ir.Constant(i64, t_data.dtype.bitwidth // 8)
        )
        wptr = None
        if kind == KIND_WSUM:
            wptr = context.make_array(t_w)(context, builder, a_w).data
        ocols = builder.extract_value(out.shape, 1)
        optr = builder.gep(out.data, [builder.add(builder.mul(b, ocols), col)])
        return _emit_loop(
            builder, base, stride, idx.data, t_idx.dtype.bitwidth, wptr,
            as_i64(a_start, signature.args[3]), as_i64(a_end, signature.args[4]),
            as_i64(a_n, signature.args[5]), as_i64(a_pad, signature.args[6]), col,
            builder.bitcast(optr, f32.as_pointer()), codec, width, kind,
        )  # fmt: skip

    def _emit_loop(builder, base, stride, idx_ptr, idx_bits, wptr, start, end, n, pad, col, optr,
                   codec, width, kind):  # fmt: skip
        """The pooling loop of one column chunk (see the module docstring) from raw values:
        ``base`` the i8* of row 0, ``stride`` the bytes per row, ``idx_ptr`` the index entries
        (``idx_bits`` wide), ``wptr`` the float weights (KIND_WSUM), ``optr`` the float* the
        chunk's result is stored at; returns the rows reduced (i64)."""
        i64 = ir.IntType(64)
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, width)
        line = ir.Constant(i64, 64)
        zero = ir.Constant(i64, 0)
        one = ir.Constant(i64, 1)

        def load_idx(i):
            v = builder.load(builder.gep(idx_ptr, [i]))
            return builder.sext(v, i64) if idx_bits < 64 else v

        def decode(rowp):
            """The chunk of the row at byte pointer ``rowp`` as a float vector."""
            if codec == FLOAT32:
                p = builder.gep(rowp, [builder.mul(col, ir.Constant(i64, 4))])
                return builder.load(builder.bitcast(p, vec.as_pointer()), align=4)
            if codec == FLOAT16:
                hvec = ir.VectorType(ir.HalfType(), width)
                p = builder.gep(rowp, [builder.mul(col, ir.Constant(i64, 2))])
                h = builder.load(builder.bitcast(p, hvec.as_pointer()), align=2)
                return builder.fpext(h, vec)
            fp = builder.bitcast(rowp, f32.as_pointer())
            scale = builder.load(fp, align=4)
            bias = builder.load(builder.gep(fp, [one]), align=4)
            p = builder.gep(rowp, [builder.add(col, ir.Constant(i64, 8))])
            codes = builder.load(builder.bitcast(p, ir.VectorType(ir.IntType(8), width)
                                                 .as_pointer()), align=1)  # fmt: skip
            v = builder.uitofp(codes, vec)
            return builder.fadd(builder.fmul(v, splat(scale)), splat(bias))

        def splat(x):
            undef = ir.Constant(vec, ir.Undefined)
            v = builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
            mask = ir.Constant(ir.VectorType(ir.IntType(32), width), None)
            return builder.shuffle_vector(v, undef, mask)

        fn = builder.function
        bb_head = fn.append_basic_block("pool.head")
        bb_body = fn.append_basic_block("pool.body")
        bb_pf = fn.append_basic_block("pool.prefetch")
        bb_row = fn.append_basic_block("pool.row")
        bb_use = fn.append_basic_block("pool.use")
        bb_latch = fn.append_basic_block("pool.latch")
        bb_exit = fn.append_basic_block("pool.exit")
        bb_entry = builder.block
        zero_vec = ir.Constant(vec, None)
        builder.branch(bb_head)

        builder.position_at_end(bb_head)
        i = builder.phi(i64)
        acc = builder.phi(vec)
        cnt = builder.phi(i64)
        i.add_incoming(start, bb_entry)
        acc.add_incoming(zero_vec, bb_entry)
        cnt.add_incoming(zero, bb_entry)
        builder.cbranch(builder.icmp_signed("<", i, end), bb_body, bb_exit)

        builder.position_at_end(bb_body)
        ahead = builder.add(i, ir.Constant(i64, PREFETCH_ROWS))
        # Only the widest (first) chunk of a bag prefetches: the others find the rows cached.
        do_pf = builder.icmp_signed("<", ahead, n)
        if width != WIDTHS[0]:
            do_pf = builder.and_(do_pf, builder.icmp_signed("==", col, zero))
        builder.cbranch(do_pf, bb_pf, bb_row)

        builder.position_at_end(bb_pf)
        r_ahead = load_idx(ahead)
        with builder.if_then(builder.icmp_signed(">=", r_ahead, zero)):
            p0 = builder.gep(base, [builder.mul(r_ahead, stride)])
            with cgutils.for_range_slice(builder, zero, stride, line, intp=i64) as (off, _):
                _emit_prefetch(builder, builder.gep(p0, [off]))
            _emit_prefetch(builder, builder.gep(p0, [builder.sub(stride, one)]))
        builder.branch(bb_row)

        builder.position_at_end(bb_row)
        r = load_idx(i)
        skip = builder.or_(builder.icmp_signed("<", r, zero), builder.icmp_signed("==", r, pad))
        builder.cbranch(skip, bb_latch, bb_use)

        builder.position_at_end(bb_use)
        v = decode(builder.gep(base, [builder.mul(r, stride)]))
        if kind == KIND_SUM:
            new = builder.fadd(acc, v)
        elif kind == KIND_WSUM:
            w = builder.load(builder.gep(wptr, [i]))
            new = builder.fadd(acc, builder.fmul(splat(w), v))
        else:
            first = builder.icmp_signed("==", cnt, zero)
            bigger = builder.select(builder.fcmp_ordered(">", v, acc), v, acc)
            new = builder.select(first, v, bigger)
        cnt_used = builder.add(cnt, one)
        builder.branch(bb_latch)

        builder.position_at_end(bb_latch)
        acc_next = builder.phi(vec)
        acc_next.add_incoming(acc, bb_row)
        acc_next.add_incoming(new, bb_use)
        cnt_next = builder.phi(i64)
        cnt_next.add_incoming(cnt, bb_row)
        cnt_next.add_incoming(cnt_used, bb_use)
        i_next = builder.add(i, one)
        i.add_incoming(i_next, bb_latch)
        acc.add_incoming(acc_next, bb_latch)
        cnt.add_incoming(cnt_next, bb_latch)
        builder.branch(bb_head)

        builder.position_at_end(bb_exit)
        builder.store(acc, builder.bitcast(optr, vec.as_pointer()), align=4)
        return cnt


# Module-level names (numba resolves globals at compile time): codec x width.
_F32_64, _F32_16, _F32_1 = (_make_chunk(FLOAT32, w) for w in WIDTHS)
_F16_64, _F16_16, _F16_1 = (_make_chunk(FLOAT16, w) for w in WIDTHS)
_I8_64, _I8_16, _I8_1 = (_make_chunk(INT8, w) for w in WIDTHS)


@njit(nogil=True, cache=True)
def _kind_of(mode, weights):
    """The chunk kind of a pooling mode (``kernels.cache.MODE_*``: sum 0, mean 1, max 2,
    copy 3); max ignores weights, as torch's EmbeddingBag does."""
    if mode == 2 or mode == 3:
        return KIND_MAX
    return KIND_WSUM if weights.shape[0] > 0 else KIND_SUM


@njit(nogil=True, cache=True, inline="always")
def _scale_row(out, b, cnt):
    """Mean: divide bag ``b`` by its ``cnt`` rows (as ``kernels.cache._divide_means``)."""
    if cnt > 1:
        inv = np.float32(1.0) / np.float32(cnt)
        for d in range(out.shape[1]):
            out[b, d] *= inv


@njit(nogil=True, cache=True)
def _pool_bags_f32(data, idx, weights, offsets, pad, mode, out, bag_n, divide):
    """Pool every bag ``offsets[b]:offsets[b + 1]`` of float32 rows ``data[idx]`` into
    ``out[b]`` (see the module docstring; ``mode``: ``kernels.cache.MODE_*``); ``bag_n[b]``
    gets the rows reduced into bag ``b``; mean bags are divided when ``divide``. Returns the
    rows reduced. Every caller passes int64 ``idx``, so this compiles once per process."""
    kind = _kind_of(mode, weights)
    n = idx.shape[0]
    dim = out.shape[1]
    total = 0
    for b in range(offsets.shape[0] - 1):
        s = offsets[b]
        e = offsets[b + 1]
        c = 0
        cnt = 0
        while c + 64 <= dim:
            cnt = _F32_64(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 64
        while c + 16 <= dim:
            cnt = _F32_16(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 16
        while c < dim:
            cnt = _F32_1(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 1
        bag_n[b] = cnt
        if divide and mode == 1:
            _scale_row(out, b, cnt)
        total += cnt
    return total


@njit(nogil=True, cache=True)
def _pool_bags_f16(data, idx, weights, offsets, pad, mode, out, bag_n, divide):
    """Pool every bag ``offsets[b]:offsets[b + 1]`` of float16 rows ``data[idx]`` into
    ``out[b]`` (see the module docstring; ``mode``: ``kernels.cache.MODE_*``); ``bag_n[b]``
    gets the rows reduced into bag ``b``; mean bags are divided when ``divide``. Returns the
    rows reduced. Every caller passes int64 ``idx``, so this compiles once per process."""
    kind = _kind_of(mode, weights)
    n = idx.shape[0]
    dim = out.shape[1]
    total = 0
    for b in range(offsets.shape[0] - 1):
        s = offsets[b]
        e = offsets[b + 1]
        c = 0
        cnt = 0
        while c + 64 <= dim:
            cnt = _F16_64(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 64
        while c + 16 <= dim:
            cnt = _F16_16(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 16
        while c < dim:
            cnt = _F16_1(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 1
        bag_n[b] = cnt
        if divide and mode == 1:
            _scale_row(out, b, cnt)
        total += cnt
    return total


@njit(nogil=True, cache=True)
def _pool_bags_i8(data, idx, weights, offsets, pad, mode, out, bag_n, divide):
    """Pool every bag ``offsets[b]:offsets[b + 1]`` of int8 rowwise rows ``data[idx]`` into
    ``out[b]`` (see the module docstring; ``mode``: ``kernels.cache.MODE_*``); ``bag_n[b]``
    gets the rows reduced into bag ``b``; mean bags are divided when ``divide``. Returns the
    rows reduced. Every caller passes int64 ``idx``, so this compiles once per process."""
    kind = _kind_of(mode, weights)
    n = idx.shape[0]
    dim = out.shape[1]
    total = 0
    for b in range(offsets.shape[0] - 1):
        s = offsets[b]
        e = offsets[b + 1]
        c = 0
        cnt = 0
        while c + 64 <= dim:
            cnt = _I8_64(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 64
        while c + 16 <= dim:
            cnt = _I8_16(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 16
        while c < dim:
            cnt = _I8_1(data, idx, weights, s, e, n, pad, out, b, c, kind)
            c += 1
        bag_n[b] = cnt
        if divide and mode == 1:
            _scale_row(out, b, cnt)
        total += cnt
    return total


@njit(nogil=True, cache=True)
def _pool_bags_codec(data, codec, idx, weights, offsets, pad, mode, out, bag_n, divide):
    """``_pool_bags_f32`` / ``_f16`` / ``_i8`` by ``codec`` (``kernels.codec``): the loop of
    every strategy that pools rows kept encoded in DRAM (``data``: uint8 (rows, row_bytes), the
    rows as the block file stores them; float32 (rows, dim) also works for ``FLOAT32``)."""
    if codec == FLOAT16:
        return _pool_bags_f16(data, idx, weights, offsets, pad, mode, out, bag_n, divide)
    if codec == INT8:
        return _pool_bags_i8(data, idx, weights, offsets, pad, mode, out, bag_n, divide)
    return _pool_bags_f32(data, idx, weights, offsets, pad, mode, out, bag_n, divide)


@njit(nogil=True, cache=True)
def _copy_encoded(src_u8, offset, row_bytes, dst):
    """Copy the encoded row at byte ``offset`` of ``src_u8`` (``row_bytes`` long) into the
    C-contiguous row ``dst`` (uint8 of ``row_bytes``, or float32 of ``row_bytes // 4``): how a
    row enters a cache slot, a pinned set or a resident copy (no decoding)."""
    d = dst.view(np.uint8)
    for j in range(row_bytes):
        d[j] = src_u8[offset + j]
