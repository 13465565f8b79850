"""XXH64 kernels against the reference C implementation (the `xxhash` package).

Also run with NUMBA_DISABLE_JIT=1, where the same kernels execute as plain Python.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from bandstore.errors import InvalidArgumentError, InvalidDtypeError, InvalidShapeError
from bandstore.kernels.checksum import (
    _block_checksums,
    _verify_blocks,
    _xxh64,
    block_checksums,
    verify_blocks,
    xxh64,
)

SEEDS = st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))


def ref(data: bytes | np.ndarray, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(bytes(memoryview(data)), seed)


@given(data=st.binary(min_size=0, max_size=10_000), seed=SEEDS)
def test_matches_xxhash_random_lengths_and_seeds(data: bytes, seed: int) -> None:
    assert xxh64(data, seed) == ref(data, seed)


@pytest.mark.parametrize("seed", [0, 7, 2**64 - 1])
def test_every_short_length(seed: int, rng: np.random.Generator) -> None:
    """Lengths 0..100 walk every tail path (bytes, 4-byte word, 8-byte lanes, stripes)."""
    data = rng.integers(0, 256, 100, dtype=np.uint8)
    for n in range(101):
        assert xxh64(data[:n], seed) == ref(data[:n], seed), n


def test_known_value() -> None:
    assert xxh64(b"") == 0xEF46DB3751D8E999  # the XXH64 test vector for the empty input
    assert xxh64(b"abc") == ref(b"abc")


def test_unaligned_and_readonly_input(rng: np.random.Generator) -> None:
    buf = rng.integers(0, 256, 4096 + 16, dtype=np.uint8)
    for start in range(9):
        view = buf[start : start + 4096]
        assert xxh64(view) == ref(view)
    ro = np.frombuffer(buf.tobytes(), dtype=np.uint8)
    assert not ro.flags.writeable
    assert xxh64(ro) == ref(ro)


def test_no_overflow_warnings(rng: np.random.Generator) -> None:
    """Wrap-around arithmetic must be silent, compiled or not."""
    data = rng.integers(0, 256, 1000, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xxh64(data, 2**64 - 1) == ref(data, 2**64 - 1)


def test_non_uint8_arrays_hash_their_bytes(rng: np.random.Generator) -> None:
    x = rng.standard_normal((7, 5)).astype(np.float32)
    assert xxh64(x) == ref(x.tobytes())
    assert xxh64(x.T) == ref(np.ascontiguousarray(x.T).tobytes())
    assert xxh64(bytearray(b"hello")) == ref(b"hello")


@pytest.mark.parametrize("block_size", [512, 4096])
def test_block_checksums_4k(block_size: int, rng: np.random.Generator) -> None:
    n = 24
    buf = rng.integers(0, 256, n * block_size, dtype=np.uint8)
    buf[: 2 * block_size] = 0  # an all-zero block, as in a sparse block file
    got = block_checksums(buf, block_size)
    assert got.dtype == np.uint64 and got.shape == (n,)
    for b in range(n):
        assert int(got[b]) == ref(buf[b * block_size : (b + 1) * block_size]), b
    assert block_checksums(buf[:0], block_size).shape == (0,)


def test_block_checksums_kernel_fills_only_whole_blocks(rng: np.random.Generator) -> None:
    buf = rng.integers(0, 256, 3 * 4096 + 100, dtype=np.uint8)
    out = np.full(5, 7, dtype=np.uint64)
    _block_checksums(buf, 4096, out)
    assert [int(v) for v in out[:3]] == [ref(buf[i * 4096 : (i + 1) * 4096]) for i in range(3)]
    assert (out[3:] == 7).all()


def test_kernel_xxh64_direct(rng: np.random.Generator) -> None:
    data = rng.integers(0, 256, 4096, dtype=np.uint8)
    assert int(_xxh64(data, np.uint64(5))) == ref(data, 5)


def test_verify_blocks(rng: np.random.Generator) -> None:
    bs, n = 512, 10
    file = rng.integers(0, 256, (n + 1) * bs, dtype=np.uint8)  # header block + n blocks
    sums = block_checksums(file[bs:], bs)
    ids = np.array([3, 0, 9, 3], dtype=np.int64)
    assert verify_blocks(file, bs, ids, sums, base=bs) == -1
    assert verify_blocks(file[bs:], bs, ids, sums) == -1
    assert verify_blocks(file, bs, ids[:0], sums, base=bs) == -1
    file[bs + 9 * bs + 17] ^= 1  # corrupt block 9
    assert verify_blocks(file, bs, ids, sums, base=bs) == 2
    assert verify_blocks(file, bs, np.array([1, 2]), sums, base=bs) == -1
    bad = sums.copy()
    bad[0] += np.uint64(1)
    assert verify_blocks(file, bs, ids, bad, base=bs) == 1


def test_verify_kernel_never_reads_out_of_bounds(rng: np.random.Generator) -> None:
    bs = 512
    buf = rng.integers(0, 256, 4 * bs, dtype=np.uint8)
    sums = block_checksums(buf, bs)
    for bad_id in (-1, 4, 10**12):
        ids = np.array([0, bad_id], dtype=np.int64)
        assert _verify_blocks(buf, bs, ids, sums, 0) == 1
    # block 3 exists in expected but not in the buffer once base shifts it out
    assert _verify_blocks(buf, bs, np.array([2, 3], dtype=np.int64), sums, bs) == 0


def test_validation_errors() -> None:
    buf = np.zeros(4096, dtype=np.uint8)
    with pytest.raises(InvalidShapeError):
        block_checksums(buf[:1000], 512)
    with pytest.raises(InvalidArgumentError):
        block_checksums(buf, 0)
    with pytest.raises(InvalidArgumentError):
        block_checksums(buf, 512.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidDtypeError):
        xxh64(np.array([object()]))
    with pytest.raises(InvalidDtypeError):
        xxh64("text")
    with pytest.raises(InvalidArgumentError):
        xxh64(buf, -1)
    with pytest.raises(InvalidArgumentError):
        xxh64(buf, 2**64)
    sums = block_checksums(buf, 512)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        verify_blocks(buf, 512, np.array([8]), sums)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        verify_blocks(buf, 512, np.array([7]), sums, base=512)
    with pytest.raises(InvalidDtypeError):
        verify_blocks(buf, 512, np.array([0.0]), sums)
    with pytest.raises(InvalidDtypeError):
        verify_blocks(buf, 512, np.array([0]), sums.astype(np.int64))
