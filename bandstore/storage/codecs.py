"""Row codecs: how one embedding row is stored in a block (numpy reference implementation).

Three codecs; ``row_bytes`` is always a multiple of 4 so that every row of a block starts
4-byte aligned (the decode kernels read float32/uint16 through views):

=========  ===============================================  =================================
codec      layout of one row (``row_bytes``)                 error of decode(encode(x)) vs x
=========  ===============================================  =================================
float32    ``dim`` float32 (``4*dim``)                        0 for float16/float32 input,
                                                             float32 rounding for float64 input
float16    ``dim`` float16, zero pad to ``round4(2*dim)``     half rounding: ``x.astype(float16)``
int8       scale f32, bias f32, ``dim`` uint8 codes, zero     ``<= (max - min) / 510`` per row,
           pad (``round4(8 + dim)``)                          plus float32 rounding (see below)
=========  ===============================================  =================================

int8 (rowwise affine quantisation): ``bias = min(row)`` and ``scale = (max(row) - min(row)) / 255``
(both float32; the bias is rounded down and the scale up, so every code stays in [0, 255]),
``code = round((x - bias) / scale)``, ``decode = code * scale + bias`` computed in float32. The
exact-arithmetic error is at most ``scale / 2 = (max - min) / 510``; the two float32 roundings of
the decode add at most a few units in the last place of the row's largest magnitude:
:func:`max_abs_error` gives the guaranteed bound per row. A constant row stores ``scale = 1`` and
codes 0, so it decodes exactly (to ``float32(x)``).

Non-finite values are rejected by every codec (:class:`InvalidArgumentError` naming the row and
column): int8 cannot represent them, and a store holding NaN or inf is almost always a bug
upstream. So are values the codec would overflow: beyond the float16 range for float16 (rather
than a silent inf), beyond the float32 range for float32, and ``|x| > 2**126`` for int8 (so that
the float32 decode cannot overflow).

The numba decoders used by the lookup kernels are in :mod:`bandstore.kernels.codec`; they match
:func:`decode_rows` bit for bit.
"""

from __future__ import annotations

import numpy as np

from bandstore.errors import InvalidArgumentError, InvalidDtypeError, InvalidShapeError
from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8

__all__ = [
    "CODECS",
    "codec_id",
    "codec_name",
    "decode_rows",
    "encode_rows",
    "max_abs_error",
    "row_bytes",
]

#: Codec names; a codec's id (stored in the catalog) is its index here.
CODECS: tuple[str, ...] = ("float32", "float16", "int8")
assert CODECS.index("float32") == FLOAT32
assert CODECS.index("float16") == FLOAT16
assert CODECS.index("int8") == INT8

_INT8_MAX_ABS = 2.0**126
_F32_MAX = float(np.finfo(np.float32).max)


def codec_id(name: str) -> int:
    """The id (0, 1, 2) of a codec name; raises InvalidArgumentError naming the known codecs."""
    if isinstance(name, str) and name in CODECS:
        return CODECS.index(name)
    raise InvalidArgumentError(
        f"unknown codec {name!r}; the known codecs are {list(CODECS)}",
        argument="codec",
        value=name,
    )


def codec_name(codec: int | str) -> str:
    """The name of a codec given by id or name (validated)."""
    return CODECS[_cid(codec)]


def _cid(codec: int | str) -> int:
    """Codec id from a name or an id, validated."""
    if isinstance(codec, (int, np.integer)) and not isinstance(codec, bool):
        if 0 <= int(codec) < len(CODECS):
            return int(codec)
        raise InvalidArgumentError(
            f"unknown codec id {codec!r}; the known codecs are "
            + ", ".join(f"{i}={n}" for i, n in enumerate(CODECS)),
            argument="codec",
            value=codec,
        )
    return codec_id(codec)  # type: ignore[arg-type]


def _check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InvalidArgumentError(
            f"dim must be a positive integer, got {dim!r}", argument="dim", value=dim
        )
    return int(dim)


def row_bytes(codec: int | str, dim: int) -> int:
    """Bytes one row occupies in a block: float32 ``4*dim``; float16 ``2*dim`` and int8
    ``8 + dim``, each rounded up to a multiple of 4."""
    cid = _cid(codec)
    dim = _check_dim(dim)
    if cid == FLOAT32:
        return 4 * dim
    if cid == FLOAT16:
        return (2 * dim + 3) // 4 * 4
    return (8 + dim + 3) // 4 * 4


def _check_rows(x: object) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise InvalidDtypeError(
            f"x must be a real (float or integer) array, not {arr.dtype}",
            argument="x",
            dtype=arr.dtype,
        )
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise InvalidShapeError(
            f"x must be a 2-D array (rows, dim) with dim >= 1, got shape {arr.shape}",
            argument="x",
            shape=arr.shape,
        )
    return arr


def _reject(mask: np.ndarray, x: np.ndarray, codec: str, what: str) -> None:
    """Raise for the first True of mask (row-major), naming row, column and value."""
    r, c = np.unravel_index(int(np.argmax(mask)), mask.shape)
    v = x[r, c]
    raise InvalidArgumentError(
        f"codec {codec}: row {int(r)}, column {int(c)} holds {v!r}, {what}",
        argument="x",
        value=v,
    )


def _check_finite(x: np.ndarray, codec: str) -> None:
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            _reject(bad, x, codec, "which is not finite (bandstore stores finite values only)")


def _cast_checked(x: np.ndarray, dtype: type, codec: str) -> np.ndarray:
    """x.astype(dtype), refusing values that overflow to inf in the cast."""
    with np.errstate(over="ignore"):
        y: np.ndarray = x.astype(dtype)
    bad = ~np.isfinite(y)
    if bad.any():
        _reject(bad, x, codec, f"which overflows {np.dtype(dtype).name}")
    return y


def _int8_params(xf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row float32 (scale, bias) for float64 rows xf (finite, |x| <= 2**126)."""
    lo = xf.min(axis=1)
    hi = xf.max(axis=1)
    const = hi == lo
    bias = lo.astype(np.float32)
    down = (bias.astype(np.float64) > lo) & ~const
    bias[down] = np.nextafter(bias[down], np.float32(-np.inf))
    step = (hi - bias.astype(np.float64)) / 255.0
    scale = step.astype(np.float32)
    up = scale.astype(np.float64) < step
    scale[up] = np.nextafter(scale[up], np.float32(np.inf))
    scale[const] = np.float32(1.0)
    return scale, bias


def encode_rows(codec: int | str, x: object) -> np.ndarray:
    """Encode rows ``x`` (n, dim), any real dtype, into a uint8 array (n, row_bytes(codec, dim)).

    Rejects non-finite values and values the codec would overflow (see the module docstring).
    Padding bytes are zero.
    """
    cid = _cid(codec)
    name = CODECS[cid]
    arr = _check_rows(x)
    n, dim = arr.shape
    rb = row_bytes(cid, dim)
    _check_finite(arr, name)
    out = np.zeros((n, rb), dtype=np.uint8)
    if cid == FLOAT32:
        out.view(np.float32)[:, :] = _cast_checked(arr, np.float32, name)
    elif cid == FLOAT16:
        out.view(np.float16)[:, :dim] = _cast_checked(arr, np.float16, name)
    else:
        xf = arr.astype(np.float64)
        big = np.abs(xf) > _INT8_MAX_ABS
        if big.any():
            _reject(big, arr, name, "beyond the int8 codec's range |x| <= 2**126")
        if n == 0:
            return out
        scale, bias = _int8_params(xf)
        sb = out[:, :8].view(np.float32)  # (n, 2): writable view into out
        sb[:, 0] = scale
        sb[:, 1] = bias
        q = np.rint((xf - bias.astype(np.float64)[:, None]) / scale.astype(np.float64)[:, None])
        q[xf.min(axis=1) == xf.max(axis=1)] = 0.0  # constant row: decodes to its bias exactly
        out[:, 8 : 8 + dim] = np.clip(q, 0.0, 255.0).astype(np.uint8)
    return out


def decode_rows(codec: int | str, raw: object, dim: int) -> np.ndarray:
    """Decode encoded rows (uint8, shape (n, row_bytes) or flat n*row_bytes) to float32 (n, dim).

    The reference the numba decoders in :mod:`bandstore.kernels.codec` match bit for bit.
    """
    cid = _cid(codec)
    dim = _check_dim(dim)
    rb = row_bytes(cid, dim)
    buf = np.asarray(raw)
    if buf.dtype != np.uint8:
        raise InvalidDtypeError(
            f"raw must be a uint8 array, not {buf.dtype}", argument="raw", dtype=buf.dtype
        )
    if buf.ndim == 1 and buf.shape[0] % rb == 0:
        buf = buf.reshape(-1, rb)
    if buf.ndim != 2 or buf.shape[1] != rb:
        raise InvalidShapeError(
            f"raw must have shape (n, {rb}) (row_bytes of codec {CODECS[cid]} with dim={dim}), "
            f"got {buf.shape}",
            argument="raw",
            shape=buf.shape,
        )
    buf = np.ascontiguousarray(buf)
    if cid == FLOAT32:
        return buf.view(np.float32).copy()
    if cid == FLOAT16:
        return buf.view(np.float16)[:, :dim].astype(np.float32)
    sb = buf[:, :8].copy().view(np.float32)  # (n, 2)
    codes = buf[:, 8 : 8 + dim].astype(np.float32)
    return codes * sb[:, 0:1] + sb[:, 1:2]


def max_abs_error(codec: int | str, x: object) -> np.ndarray:
    """Guaranteed bound, per row, on ``|decode_rows(encode_rows(codec, x)) - x|`` (float64, (n,)).

    float32: 0 for float16/float32 input, else float32 rounding (``2**-24 * max|x|`` plus the
    subnormal spacing). float16: 0 for float16 input, else half rounding (``2**-11 * max|x| +
    2**-25``). int8: ``scale / 2`` (``~(max - min) / 510``) plus the float32 rounding of the
    decode; for a constant row, the float32 rounding of its value (0 for float32 input).
    Validates ``x`` like :func:`encode_rows`.
    """
    cid = _cid(codec)
    arr = _check_rows(x)
    _check_finite(arr, CODECS[cid])
    xf = arr.astype(np.float64)
    n = xf.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    amax = np.abs(xf).max(axis=1)
    exact32 = arr.dtype in (np.float16, np.float32)
    if cid != INT8:
        _cast_checked(arr, np.float32 if cid == FLOAT32 else np.float16, CODECS[cid])
    if cid == FLOAT32:
        if exact32:
            return np.zeros(n, dtype=np.float64)
        return 2.0**-24 * amax + 2.0**-150
    if cid == FLOAT16:
        if arr.dtype == np.float16:
            return np.zeros(n, dtype=np.float64)
        return 2.0**-11 * amax + 2.0**-25
    if (amax > _INT8_MAX_ABS).any():
        _reject(np.abs(xf) > _INT8_MAX_ABS, arr, CODECS[cid], "beyond |x| <= 2**126")
    scale, bias = _int8_params(xf)
    s = scale.astype(np.float64)
    bound = s / 2 + 2.0**-23 * (256.0 * s + amax) + 2.0**-148
    const = xf.min(axis=1) == xf.max(axis=1)
    bound[const] = np.abs(xf[const, 0] - bias[const].astype(np.float64))
    return bound
