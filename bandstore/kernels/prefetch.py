"""A software prefetch hint for the lookup kernels.

Random row reads from a large cache are bound by memory latency; the pooling loop is too long
per row for the CPU to keep many misses in flight on its own, so the kernel asks for the row it
will need a few positions ahead. Under ``NUMBA_DISABLE_JIT=1`` it is a no-op.
"""

from __future__ import annotations

from numba import config

if config.DISABLE_JIT:  # type: ignore[attr-defined]  # numba.config sets it at import

    def _prefetch_row(arr2d, row):
        """No-op in plain Python."""

    def _prefetch_at(arr1d, index):
        """No-op in plain Python."""

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def _emit_prefetch(builder, ptr):
        """llvm.prefetch for reading, locality 3 (keep in all levels), data cache."""
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        rw, locality, data_cache = (ir.Constant(i32, v) for v in (0, 3, 1))
        builder.call(fn, [builder.bitcast(ptr, i8p), rw, locality, data_cache])

    @intrinsic
    def _prefetch_row(typingctx, arr2d, row):
        """Hint the CPU to bring all of ``arr2d[row]`` (a C-contiguous 2-D array) into cache,
        for reading: one llvm.prefetch per 64-byte line the row touches (its first and last
        byte included, so a row not aligned to a line is covered too). Prefetching only the
        first line left a D=64 float32 row (four lines) three demand misses per lookup."""
        if not (isinstance(arr2d, types.Array) and arr2d.ndim == 2 and arr2d.layout == "C"):
            return None
        if not isinstance(row, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            ncols = builder.extract_value(ary.shape, 1)
            index = builder.mul(
                context.cast(builder, args[1], signature.args[1], types.intp), ncols
            )
            i8p = ir.IntType(8).as_pointer()
            start = builder.bitcast(builder.gep(ary.data, [index]), i8p)
            itemsize = context.get_constant(types.intp, signature.args[0].dtype.bitwidth // 8)
            nbytes = builder.mul(ncols, itemsize)
            line = context.get_constant(types.intp, 64)
            with cgutils.for_range_slice(
                builder, context.get_constant(types.intp, 0), nbytes, line, intp=nbytes.type
            ) as (off, _):
                _emit_prefetch(builder, builder.gep(start, [off]))
            last = builder.sub(nbytes, context.get_constant(types.intp, 1))
            _emit_prefetch(builder, builder.gep(start, [last]))
            return context.get_dummy_value()

        return types.void(arr2d, row), codegen

    @intrinsic
    def _prefetch_at(typingctx, arr1d, index):
        """Hint the CPU to bring ``arr1d[index]`` (a contiguous 1-D array) into cache: a block
        read's first touch of its sector, issued a few blocks ahead, overlaps the TLB and DRAM
        misses of several blocks instead of paying them one after another."""
        if not (isinstance(arr1d, types.Array) and arr1d.ndim == 1 and arr1d.layout in "CF"):
            return None
        if not isinstance(index, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], signature.args[1], types.intp)
            _emit_prefetch(builder, builder.gep(ary.data, [i]))
            return context.get_dummy_value()

        return types.void(arr1d, index), codegen
