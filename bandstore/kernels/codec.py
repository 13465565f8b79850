"""Row decoding for the lookup kernels (numba side of :mod:`bandstore.storage.codecs`).

``_decode_row_into(raw_u8, offset, codec, dim, out)``, meant to be called from other ``@njit``
kernels on the miss path (it also runs as plain Python under ``NUMBA_DISABLE_JIT=1``), sets
``out[:dim]`` to the row stored at byte ``offset`` of ``raw_u8``. It decodes bit-for-bit like
:func:`bandstore.storage.codecs.decode_rows` (the numpy reference), allocates nothing, and never
raises. Preconditions (the caller checks them once, not per row): ``raw_u8`` is a contiguous
1-D uint8 array (e.g. the whole block file mmap, read-only is fine), ``offset`` is a multiple
of 4 with ``offset + row_bytes(codec, dim) <= len(raw_u8)``, ``codec`` is one of
``FLOAT32``/``FLOAT16``/``INT8``, and ``out`` is a contiguous float32 array with at least
``dim`` elements. Pass ``offset``, ``codec`` and ``dim`` as int64.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.extending import intrinsic

__all__ = ["FLOAT16", "FLOAT32", "INT8"]

# Codec ids (the order of bandstore.storage.codecs.CODECS; stored in the catalog, never renumber).
FLOAT32 = 0
FLOAT16 = 1
INT8 = 2


if config.DISABLE_JIT:  # type: ignore[attr-defined]  # numba.config sets it at import

    def _u32_as_f32(bits):
        """The float32 whose bit pattern is the low 32 bits of ``bits`` (plain-Python twin)."""
        return np.uint32(int(bits) & 0xFFFFFFFF).view(np.float32)

else:

    @intrinsic
    def _u32_as_f32(typingctx, bits):
        """The float32 whose bit pattern is the low 32 bits of the integer ``bits``: a register
        bitcast, no memory."""
        if not isinstance(bits, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            v = args[0]
            i32 = ir.IntType(32)
            if bits.bitwidth > 32:  # type: ignore[attr-defined]  # numba types: runtime attr
                v = builder.trunc(v, i32)
            elif bits.bitwidth < 32:  # type: ignore[attr-defined]  # numba types: runtime attr
                v = builder.zext(v, i32)
            return builder.bitcast(v, context.get_value_type(types.float32))

        return types.float32(bits), codegen


_U15 = np.uint32(0x7FFF)
_U_SIGN = np.uint32(0x8000)
_U_MIN_NORMAL = np.uint32(0x400)
_U13 = np.uint32(13)
_U16 = np.uint32(16)
_U_INF = np.uint32(0x7C00)  # exponent field all ones: inf and NaN
_U_REBIAS = np.uint32((127 - 15) << 23)  # half exponent bias 15 -> float32 bias 127
_U_REBIAS_INF = np.uint32((255 - 31) << 23)  # half exponent 31 -> float32 exponent 255
_F_SUB_POS = np.float32(2.0**-24)  # value of the half subnormal unit
_F_SUB_NEG = np.float32(-(2.0**-24))


@njit(nogil=True, cache=True)
def _half_to_float(h):
    """float32 value of the IEEE half with bit pattern h (uint16), exact for every finite half.

    Normal halves: re-bias the exponent and widen the mantissa (integer ops, then a bitcast).
    Subnormals and zeros: mantissa * 2**-24 (exact; keeps the sign of -0.0). Both are computed
    and one selected, so the loops that call this vectorise. Infinities and NaN payloads map
    like numpy's float16 -> float32 too (the encoder never stores them).
    """
    b = np.uint32(h)
    em = b & _U15
    rebias = _U_REBIAS if em < _U_INF else _U_REBIAS_INF
    normal = _u32_as_f32(((b & _U_SIGN) << _U16) | ((em << _U13) + rebias))
    unit = _F_SUB_NEG if b & _U_SIGN else _F_SUB_POS
    sub = np.float32(np.int32(em)) * unit
    return normal if em >= _U_MIN_NORMAL else sub


@njit(nogil=True, cache=True)
def _decode_row_into(raw_u8, offset, codec, dim, out):
    """Decode the row stored at byte ``offset`` of ``raw_u8`` into ``out[:dim]`` (float32)."""
    if codec == FLOAT32:
        src = raw_u8[offset : offset + 4 * dim].view(np.float32)
        for j in range(dim):
            out[j] = src[j]
    elif codec == FLOAT16:
        halves = raw_u8[offset : offset + 2 * dim].view(np.uint16)
        for j in range(dim):
            out[j] = _half_to_float(halves[j])
    else:  # INT8: [scale f32][bias f32][dim uint8 codes]
        sb = raw_u8[offset : offset + 8].view(np.float32)
        scale = sb[0]
        bias = sb[1]
        codes = raw_u8[offset + 8 : offset + 8 + dim]
        for j in range(dim):
            out[j] = np.float32(codes[j]) * scale + bias
