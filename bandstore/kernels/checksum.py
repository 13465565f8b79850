"""XXH64 block checksums in numba.

The store verifies every block it reads from the slow tier, so the hash runs inside the nogil
miss path; ``xxhash`` (C) cannot be called from a numba kernel, hence this implementation. It
is tested bit-for-bit against ``xxhash.xxh64_intdigest``.

Kernels (private, ``@njit(nogil=True, cache=True)``, never raise):

- ``_xxh64(data_u8, seed) -> uint64``: XXH64 of a contiguous uint8 array.
- ``_block_checksums(blocks_u8, block_size, out_u64)``: ``out[b]`` = XXH64 (seed 0) of block
  ``b`` of a buffer of whole blocks.
- ``_verify_blocks(blocks_u8, block_size, block_ids, expected, base) -> int64``: index (into
  ``block_ids``) of the first block whose checksum differs from ``expected[block_id]``, or -1.

Wrap-around arithmetic: XXH64 needs uint64 arithmetic mod 2**64. Compiled, numba's uint64
``*``/``+`` wrap natively. Under ``NUMBA_DISABLE_JIT=1`` the same kernels run as Python, where
numpy uint64 scalars also wrap but emit an overflow RuntimeWarning; so the three wrapping
primitives (``_mul``, ``_add``, ``_sub``) have a plain-Python twin that computes with Python
ints and masks. Every other operation (xor, shifts, rotations) is typed uint64 throughout.
Lanes are read little-endian through a uint64 view, so the module requires a little-endian host.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import config, njit

from bandstore.errors import InvalidArgumentError, InvalidDtypeError, InvalidShapeError

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("bandstore.kernels.checksum reads XXH64 lanes natively: little-endian only")

__all__ = ["block_checksums", "verify_blocks", "xxh64"]

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1

# Shift amounts as uint64 so numba never mixes int64 and uint64 (which would give float64).
_S1 = np.uint64(1)
_S7 = np.uint64(7)
_S8 = np.uint64(8)
_S11 = np.uint64(11)
_S12 = np.uint64(12)
_S16 = np.uint64(16)
_S18 = np.uint64(18)
_S23 = np.uint64(23)
_S24 = np.uint64(24)
_S27 = np.uint64(27)
_S29 = np.uint64(29)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S33 = np.uint64(33)
_S64 = np.uint64(64)

if config.DISABLE_JIT:  # type: ignore[attr-defined]  # numba.config sets it at import
    # Plain Python: exact integer arithmetic, masked back to 64 bits (no overflow warnings).

    def _mul(a, b):
        return np.uint64((int(a) * int(b)) & _MASK64)

    def _add(a, b):
        return np.uint64((int(a) + int(b)) & _MASK64)

    def _sub(a, b):
        return np.uint64((int(a) - int(b)) & _MASK64)

else:

    @njit(nogil=True, cache=True)
    def _mul(a, b):
        return a * b

    @njit(nogil=True, cache=True)
    def _add(a, b):
        return a + b

    @njit(nogil=True, cache=True)
    def _sub(a, b):
        return a - b


@njit(nogil=True, cache=True)
def _rotl(x, r):
    return (x << r) | (x >> (_S64 - r))


@njit(nogil=True, cache=True)
def _round(acc, lane):
    return _mul(_rotl(_add(acc, _mul(lane, _P2)), _S31), _P1)


@njit(nogil=True, cache=True)
def _merge(h, acc):
    return _add(_mul(h ^ _round(np.uint64(0), acc), _P1), _P4)


@njit(nogil=True, cache=True)
def _xxh64(data_u8, seed):
    """XXH64 of a contiguous uint8 array (any length) with a uint64 seed."""
    n = data_u8.shape[0]
    seed = np.uint64(seed)
    lanes = data_u8[: n - n % 8].view(np.uint64)  # little-endian 8-byte lanes, any alignment
    i = 0  # byte position
    if n >= 32:
        n_stripes = n // 32
        v1 = _add(_add(seed, _P1), _P2)
        v2 = _add(seed, _P2)
        v3 = seed
        v4 = _sub(seed, _P1)
        for s in range(n_stripes):
            k = 4 * s
            v1 = _round(v1, lanes[k])
            v2 = _round(v2, lanes[k + 1])
            v3 = _round(v3, lanes[k + 2])
            v4 = _round(v4, lanes[k + 3])
        h = _add(_add(_rotl(v1, _S1), _rotl(v2, _S7)), _add(_rotl(v3, _S12), _rotl(v4, _S18)))
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
        i = n_stripes * 32
    else:
        h = _add(seed, _P5)
    h = _add(h, np.uint64(n))
    while i + 8 <= n:  # remaining 8-byte lanes (at most 3)
        h = _add(_mul(_rotl(h ^ _round(np.uint64(0), lanes[i // 8]), _S27), _P1), _P4)
        i += 8
    if i + 4 <= n:
        k = (
            np.uint64(data_u8[i])
            | (np.uint64(data_u8[i + 1]) << _S8)
            | (np.uint64(data_u8[i + 2]) << _S16)
            | (np.uint64(data_u8[i + 3]) << _S24)
        )
        h = _add(_mul(_rotl(h ^ _mul(k, _P1), _S23), _P2), _P3)
        i += 4
    while i < n:
        h = _mul(_rotl(h ^ _mul(np.uint64(data_u8[i]), _P5), _S11), _P1)
        i += 1
    h ^= h >> _S33
    h = _mul(h, _P2)
    h ^= h >> _S29
    h = _mul(h, _P3)
    h ^= h >> _S32
    return h


@njit(nogil=True, cache=True)
def _block_checksums(blocks_u8, block_size, out_u64):
    """out_u64[b] = XXH64 (seed 0) of bytes [b*block_size, (b+1)*block_size) of blocks_u8.

    Computes ``min(len(out_u64), len(blocks_u8) // block_size)`` checksums.
    """
    n_blocks = min(out_u64.shape[0], blocks_u8.shape[0] // block_size)
    for b in range(n_blocks):
        start = b * block_size
        out_u64[b] = _xxh64(blocks_u8[start : start + block_size], np.uint64(0))


@njit(nogil=True, cache=True)
def _verify_blocks(blocks_u8, block_size, block_ids, expected, base):
    """Index into block_ids of the first block whose XXH64 != expected[block_id], else -1.

    Block ``b`` occupies bytes ``[base + b*block_size, base + (b+1)*block_size)`` of blocks_u8
    (``base = block_size`` for a whole block file, whose first block is the header). A block id
    that is negative, not covered by ``expected`` or past the end of the buffer counts as a
    mismatch, so the kernel never reads out of bounds.
    """
    n_buf = blocks_u8.shape[0]
    for i in range(block_ids.shape[0]):
        b = block_ids[i]
        start = base + b * block_size
        if b < 0 or b >= expected.shape[0] or start < 0 or start + block_size > n_buf:
            return i
        if _xxh64(blocks_u8[start : start + block_size], np.uint64(0)) != expected[b]:
            return i
    return -1


# --------------------------------------------------------------------------- public wrappers


def _as_u8(buf: object, argument: str) -> np.ndarray:
    """A contiguous 1-D uint8 view of bytes-like or array input (copying only if needed)."""
    if isinstance(buf, np.ndarray):
        if buf.dtype.hasobject:
            raise InvalidDtypeError(
                f"{argument} must hold raw data, not Python objects ({buf.dtype})",
                argument=argument,
                dtype=buf.dtype,
            )
        return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(buf, dtype=np.uint8)  # type: ignore[call-overload]
    except (TypeError, ValueError, BufferError):
        raise InvalidDtypeError(
            f"{argument} must be a numpy array or a contiguous bytes-like object, "
            f"not {type(buf).__name__}",
            argument=argument,
            dtype=type(buf),
        ) from None


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise InvalidArgumentError(
            f"block_size must be an integer, not {type(block_size).__name__}",
            argument="block_size",
            value=block_size,
        )
    if block_size <= 0:
        raise InvalidArgumentError(
            f"block_size must be positive, got {block_size}",
            argument="block_size",
            value=block_size,
        )
    return int(block_size)


def xxh64(buf: object, seed: int = 0) -> int:
    """XXH64 of ``buf`` (bytes-like or numpy array, hashed as its raw bytes) as a Python int.

    Same value as ``xxhash.xxh64_intdigest(bytes(buf), seed)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidArgumentError(
            f"seed must be an integer, not {type(seed).__name__}", argument="seed", value=seed
        )
    if not 0 <= int(seed) <= _MASK64:
        raise InvalidArgumentError(
            f"seed must be in [0, 2**64), got {seed}", argument="seed", value=seed
        )
    return int(_xxh64(_as_u8(buf, "buf"), np.uint64(int(seed))))


def block_checksums(buf: object, block_size: int) -> np.ndarray:
    """XXH64 (seed 0) of each ``block_size``-byte block of ``buf``: uint64 array of n_blocks.

    ``len(buf)`` (in bytes) must be a multiple of ``block_size``.
    """
    block_size = _check_block_size(block_size)
    data = _as_u8(buf, "buf")
    if data.shape[0] % block_size:
        raise InvalidShapeError(
            f"buf has {data.shape[0]} bytes, not a multiple of block_size={block_size}",
            argument="buf",
            shape=(data.shape[0],),
        )
    out = np.empty(data.shape[0] // block_size, dtype=np.uint64)
    _block_checksums(data, np.int64(block_size), out)
    return out


def verify_blocks(
    buf: object, block_size: int, block_ids: np.ndarray, expected: np.ndarray, base: int = 0
) -> int:
    """Index into ``block_ids`` of the first block whose checksum != ``expected[block_id]``.

    Returns -1 when every listed block matches. Block ``b`` starts at byte
    ``base + b * block_size`` of ``buf`` (``base=block_size`` for a block file with its header).
    Raises if a block id is out of range for ``expected`` or for the buffer.
    """
    block_size = _check_block_size(block_size)
    data = _as_u8(buf, "buf")
    ids = np.asarray(block_ids)
    if ids.dtype.kind not in "iu":
        raise InvalidDtypeError(
            f"block_ids must be an integer array, not {ids.dtype}",
            argument="block_ids",
            dtype=ids.dtype,
        )
    if ids.ndim != 1:
        raise InvalidShapeError("block_ids must be 1-D", argument="block_ids", shape=ids.shape)
    exp = np.asarray(expected)
    if exp.dtype != np.uint64:
        raise InvalidDtypeError(
            f"expected must be a uint64 array, not {exp.dtype}",
            argument="expected",
            dtype=exp.dtype,
        )
    if exp.ndim != 1:
        raise InvalidShapeError("expected must be 1-D", argument="expected", shape=exp.shape)
    if isinstance(base, bool) or not isinstance(base, (int, np.integer)) or base < 0:
        raise InvalidArgumentError(
            f"base must be a non-negative integer, got {base!r}", argument="base", value=base
        )
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n_blocks = min(exp.shape[0], max(0, (data.shape[0] - int(base)) // block_size))
    if ids.size:
        bad = np.flatnonzero((ids < 0) | (ids >= n_blocks))
        if bad.size:
            raise InvalidArgumentError(
                f"block id {int(ids[bad[0]])} at position {int(bad[0])} is out of range "
                f"(the buffer and expected cover blocks 0..{n_blocks - 1})",
                argument="block_ids",
                value=int(ids[bad[0]]),
            )
    return int(
        _verify_blocks(data, np.int64(block_size), ids, np.ascontiguousarray(exp), np.int64(base))
    )
