"""Row codecs: numpy reference (storage.codecs) and numba decoders (kernels.codec).

Also run with NUMBA_DISABLE_JIT=1, where the numba helpers execute as plain Python.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numba import njit

from bandstore.errors import InvalidArgumentError, InvalidDtypeError, InvalidShapeError
from bandstore.kernels.codec import (
    FLOAT16,
    FLOAT32,
    INT8,
    _decode_row_into,
)
from bandstore.storage import codecs
from bandstore.storage.codecs import (
    CODECS,
    codec_id,
    codec_name,
    decode_rows,
    encode_rows,
    max_abs_error,
    row_bytes,
)


@njit(nogil=True)
def _decode_all(raw, rb, codec, dim, out):
    """How a lookup kernel calls the helper: one flat buffer, a byte offset per row."""
    for i in range(out.shape[0]):
        _decode_row_into(raw, i * rb, codec, dim, out[i])


def numba_decode(codec: str, raw: np.ndarray, dim: int) -> np.ndarray:
    """Decode through the numba helper from a read-only flat buffer (like an mmap)."""
    n, rb = raw.shape
    flat = np.frombuffer(raw.tobytes(), dtype=np.uint8)
    out = np.full((n, dim), np.nan, dtype=np.float32)
    _decode_all(flat, np.int64(rb), np.int64(codec_id(codec)), np.int64(dim), out)
    return out


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def rows32(max_rows: int = 12, max_dim: int = 40) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(
        np.float32,
        st.tuples(st.integers(0, max_rows), st.integers(1, max_dim)),
        elements=st.floats(-1e6, 1e6, width=32),
    )


# ---------------------------------------------------------------------------- names and sizes


def test_codec_ids_and_names() -> None:
    assert CODECS == ("float32", "float16", "int8")
    assert [codec_id(c) for c in CODECS] == [FLOAT32, FLOAT16, INT8] == [0, 1, 2]
    assert [codec_name(i) for i in range(3)] == list(CODECS)
    assert codec_name("int8") == "int8"
    with pytest.raises(InvalidArgumentError, match=r"'bf16'.*float32.*float16.*int8"):
        codec_id("bf16")
    with pytest.raises(InvalidArgumentError):
        codec_name(3)
    with pytest.raises(InvalidArgumentError):
        row_bytes(True, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dim", "f32", "f16", "i8"),
    [(1, 4, 4, 12), (2, 8, 4, 12), (3, 12, 8, 12), (4, 16, 8, 12), (5, 20, 12, 16),
     (64, 256, 128, 72), (127, 508, 256, 136), (128, 512, 256, 136)],
)  # fmt: skip
def test_row_bytes(dim: int, f32: int, f16: int, i8: int) -> None:
    assert (row_bytes("float32", dim), row_bytes("float16", dim), row_bytes("int8", dim)) == (
        f32,
        f16,
        i8,
    )
    assert row_bytes(INT8, dim) == i8


@pytest.mark.parametrize("dim", [0, -1, 2.0, True])
def test_row_bytes_rejects_bad_dim(dim: object) -> None:
    with pytest.raises(InvalidArgumentError):
        row_bytes("float32", dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", CODECS)
def test_encode_shape_and_zero_padding(codec: str, rng: np.random.Generator) -> None:
    for dim in (1, 3, 5, 7):
        x = rng.standard_normal((6, dim)).astype(np.float32)
        raw = encode_rows(codec, x)
        rb = row_bytes(codec, dim)
        assert raw.dtype == np.uint8 and raw.shape == (6, rb)
        used = {"float32": 4 * dim, "float16": 2 * dim, "int8": 8 + dim}[codec]
        assert (raw[:, used:] == 0).all()
    assert encode_rows(codec, np.zeros((0, 5), np.float32)).shape == (0, row_bytes(codec, 5))
    assert decode_rows(codec, np.zeros((0, row_bytes(codec, 5)), np.uint8), 5).shape == (0, 5)


# ---------------------------------------------------------------------------- round trips


@given(x=rows32())
def test_float32_round_trip_exact(x: np.ndarray) -> None:
    raw = encode_rows("float32", x)
    assert (bits(decode_rows("float32", raw, x.shape[1])) == bits(x)).all()
    assert (bits(numba_decode("float32", raw, x.shape[1])) == bits(x)).all()
    assert (max_abs_error("float32", x) == 0).all()


@given(
    x=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.integers(1, 33)),
        elements=st.floats(-65504.0, 65504.0) | st.floats(-1e-6, 1e-6),
    )
)
def test_float16_round_trip_is_numpy_astype(x: np.ndarray) -> None:
    dim = x.shape[1]
    raw = encode_rows("float16", x)
    want = x.astype(np.float16).astype(np.float32)
    assert (bits(decode_rows("float16", raw, dim)) == bits(want)).all()
    assert (bits(numba_decode("float16", raw, dim)) == bits(want)).all()
    err = np.abs(want.astype(np.float64) - x).max(axis=1)
    assert (err <= max_abs_error("float16", x)).all()


def test_float32_from_float64_rounds_to_nearest(rng: np.random.Generator) -> None:
    x = rng.standard_normal((20, 9)) * 10.0 ** rng.integers(-40, 38, (20, 1))
    got = decode_rows("float32", encode_rows("float32", x), 9)
    assert (bits(got) == bits(x.astype(np.float32))).all()
    assert (np.abs(got - x).max(axis=1) <= max_abs_error("float32", x)).all()


@given(
    x=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.integers(1, 40)),
        elements=st.floats(-1e30, 1e30) | st.floats(-1.0, 1.0) | st.floats(-1e-40, 1e-40),
    ),
    shift=st.sampled_from([0.0, 1.0, -1e6, 1e20]),
)
def test_int8_error_bound(x: np.ndarray, shift: float) -> None:
    x = x + shift
    dim = x.shape[1]
    raw = encode_rows("int8", x)
    got = decode_rows("int8", raw, dim)
    assert np.isfinite(got).all()
    err = np.abs(got.astype(np.float64) - x).max(axis=1)
    bound = max_abs_error("int8", x)
    assert (err <= bound).all()
    # the bound is the documented (max - min) / 510 plus float32 rounding of the row's values
    span = x.max(axis=1) - x.min(axis=1)
    amax = np.abs(x).max(axis=1)
    assert (bound <= span / 510 * (1 + 2**-20) + 2**-20 * (span + amax) + 2**-140).all()
    assert (bits(numba_decode("int8", raw, dim)) == bits(got)).all()


def test_int8_stored_parameters(rng: np.random.Generator) -> None:
    x = rng.uniform(-3, 5, (50, 16)).astype(np.float32)
    raw = encode_rows("int8", x)
    sb = raw[:, :8].copy().view(np.float32)
    assert (sb[:, 1] == x.min(axis=1)).all()  # bias = row min (exact for float32 input)
    assert np.allclose(sb[:, 0], (x.max(axis=1) - x.min(axis=1)) / 255, rtol=1e-6)
    codes = raw[:, 8:24]
    assert (codes.min(axis=1) == 0).all() and (codes.max(axis=1) == 255).all()
    err = np.abs(decode_rows("int8", raw, 16) - x)
    assert (err.max(axis=1) <= (x.max(axis=1) - x.min(axis=1)) / 510 * 1.001 + 1e-6).all()


def test_int8_constant_rows_exact() -> None:
    x = np.array(
        [[0.0] * 5, [-0.0] * 5, [3.25] * 5, [-1e-30] * 5, [2.0**126] * 5, [1e-45] * 5],
        dtype=np.float32,
    )
    raw = encode_rows("int8", x)
    for got in (decode_rows("int8", raw, 5), numba_decode("int8", raw, 5)):
        assert (got == x).all()
    assert (max_abs_error("int8", x) == 0).all()
    x64 = np.array([[0.1] * 3, [-43839146.14587654] * 3])  # float32 spacing there is 4
    got = decode_rows("int8", encode_rows("int8", x64), 3)
    assert (got == x64.astype(np.float32)).all()  # the nearest float32, not bias + code * 1.0
    assert (np.abs(got - x64).max(axis=1) <= max_abs_error("int8", x64)).all()


def test_int8_extremes_do_not_overflow() -> None:
    x = np.array(
        [[-(2.0**126), 2.0**126, 0.0], [1e-45, 2e-45, 3e-45], [1.0, 1.0 + 2**-23, 1.0]],
        dtype=np.float64,
    )
    raw = encode_rows("int8", x)
    got = decode_rows("int8", raw, 3)
    assert np.isfinite(got).all()
    assert (np.abs(got - x).max(axis=1) <= max_abs_error("int8", x)).all()
    assert (bits(numba_decode("int8", raw, 3)) == bits(got)).all()


# ---------------------------------------------------------------------------- rejected values


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite(codec: str, bad: float) -> None:
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = bad
    with pytest.raises(InvalidArgumentError, match=r"row 2, column 1"):
        encode_rows(codec, x)
    with pytest.raises(InvalidArgumentError):
        max_abs_error(codec, x)


def test_rejects_overflow() -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    x[1, 0] = 65520.0  # rounds to inf in float16
    with pytest.raises(InvalidArgumentError, match=r"row 1, column 0.*overflows float16"):
        encode_rows("float16", x)
    x[1, 0] = 65504.0  # the largest half is fine
    assert decode_rows("float16", encode_rows("float16", x), 2)[1, 0] == 65504.0
    with pytest.raises(InvalidArgumentError, match="overflows float32"):
        encode_rows("float32", np.array([[1e39]]))
    with pytest.raises(InvalidArgumentError, match="int8"):
        encode_rows("int8", np.array([[0.0, 2.0**127]]))


def test_rejects_bad_arrays() -> None:
    with pytest.raises(InvalidShapeError):
        encode_rows("float32", np.zeros(4))
    with pytest.raises(InvalidShapeError):
        encode_rows("float32", np.zeros((2, 0)))
    with pytest.raises(InvalidDtypeError):
        encode_rows("float32", np.zeros((2, 2), dtype=complex))
    with pytest.raises(InvalidArgumentError):
        encode_rows("bfloat16", np.zeros((2, 2)))
    with pytest.raises(InvalidDtypeError):
        decode_rows("float32", np.zeros((2, 8), dtype=np.int8), 2)
    with pytest.raises(InvalidShapeError):
        decode_rows("int8", np.zeros((2, 16), dtype=np.uint8), 2)  # row_bytes is 12
    flat = encode_rows("int8", np.eye(3)).reshape(-1)
    assert (decode_rows("int8", flat, 3) == np.eye(3, dtype=np.float32)).all()


def test_integer_input() -> None:
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    for codec in CODECS:
        got = decode_rows(codec, encode_rows(codec, x), 4)
        assert (np.abs(got - x).max(axis=1) <= max_abs_error(codec, x)).all()


# ---------------------------------------------------------------------------- numba helpers


def test_every_finite_half_decodes_exactly() -> None:
    h = np.arange(65536, dtype=np.uint16)
    want = h.view(np.float16).astype(np.float32)
    out = np.empty(65536, dtype=np.float32)
    _decode_row_into(h.view(np.uint8), 0, FLOAT16, 65536, out)
    finite = np.isfinite(want)
    assert finite.sum() == 63488
    assert (bits(out)[finite] == bits(want)[finite]).all()
    # inf and NaN are never stored (the encoder rejects them) but decode to inf and NaN too
    nan = np.isnan(want)
    assert (bits(out)[~nan] == bits(want)[~nan]).all()
    assert np.isnan(out[nan]).all()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dim", [1, 2, 3, 8, 33, 128])
def test_numba_decode_bit_exact(codec: str, dim: int, rng: np.random.Generator) -> None:
    x = (rng.standard_normal((40, dim)) * 10.0 ** rng.integers(-6, 4, (40, 1))).astype(np.float32)
    x[0] = 0.0
    x[1] = -1.5
    x[2, :] = rng.standard_normal(dim).astype(np.float32) * np.float32(1e-6)
    raw = encode_rows(codec, x)
    assert (bits(numba_decode(codec, raw, dim)) == bits(decode_rows(codec, raw, dim))).all()


def test_decode_at_offset_in_block_file(rng: np.random.Generator) -> None:
    """Rows at (s // rpb + 1) * block_size + (s % rpb) * row_bytes of a whole file buffer."""
    dim, bs = 20, 512
    for codec in CODECS:
        rb = row_bytes(codec, dim)
        rpb = bs // rb
        x = rng.standard_normal((3 * rpb, dim)).astype(np.float32)
        file = np.zeros(4 * bs, dtype=np.uint8)
        enc = encode_rows(codec, x)
        for s in range(x.shape[0]):
            off = (s // rpb + 1) * bs + (s % rpb) * rb
            file[off : off + rb] = enc[s]
        ref = decode_rows(codec, enc, dim)
        out = np.empty(dim + 3, dtype=np.float32)
        out[dim:] = 7.0
        for s in range(x.shape[0]):
            off = (s // rpb + 1) * bs + (s % rpb) * rb
            _decode_row_into(file, off, codec_id(codec), dim, out)
            assert (bits(out[:dim]) == bits(ref[s])).all()
        assert (out[dim:] == 7.0).all()  # writes only out[:dim]


def test_module_constants() -> None:
    assert codecs.codec_id("float16") == FLOAT16
