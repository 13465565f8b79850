"""``POST /v1/predict`` bodies: JSON and a binary ``application/x-npz`` form, parsed and
validated into one :class:`~bandstore.server.batching.TableRequest` per feature plus the dense
features; the answers encoded back. JSON goes through orjson when it is installed (the
``serve`` extra has it), else the standard library.

The binary body is an .npz archive (``np.savez``, no pickle) in TorchRec's
``KeyedJaggedTensor`` layout, one array for all features:

- ``dense``: (n, dense_features) numbers, the raw dense features of n samples;
- ``values``: 1-D integers, the ids of every bag, feature after feature, bag after bag;
- ``lengths``: integers (F, n) or (F * n,), the size of every bag, same order;
- ``keys`` (optional): 1-D strings, the feature of each row of ``lengths`` (default: the
  model's feature order); exactly the model's features, in any order.

:func:`predict_npz_body` builds one. The answer is ``{"scores": [...]}`` (non-finite scores as
null), or with ``Accept: application/x-npz`` an .npz holding ``scores`` (float32 (n,)).
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandstore.errors import (
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidShapeError,
    MalformedRequestError,
)
from bandstore.server.backend import TableSpec
from bandstore.server.batching import TableRequest, validate_table
from bandstore.server.model import DLRMConfig

try:  # the fast path; the standard library's json is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - the serve and test extras install it
    _orjson = None  # type: ignore[assignment]

NPZ = "application/x-npz"
_BINARY_FIELDS = ("dense", "values", "lengths", "keys")


# np.save's header for the plain arrays a client sends; anything else takes numpy's reader.
_NPY_HEADER = re.compile(
    r"\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}\s*\Z"
)


def _read_npy(data: bytes) -> np.ndarray:
    if data[:6] != b"\x93NUMPY" or data[6] not in (1, 2, 3):
        raise ValueError("a member is not an .npy array")
    size = 2 if data[6] == 1 else 4
    start = 8 + size
    end = start + int.from_bytes(data[8:start], "little")
    m = _NPY_HEADER.match(data[start:end].decode("latin1"))
    if m is None:  # structured dtypes and the like: numpy's own (slower) parser
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    dtype = np.dtype(m.group(1))
    if dtype.hasobject:
        raise ValueError("object arrays would need pickle, which is refused")
    shape = tuple(int(x) for x in m.group(3).split(",") if x.strip())
    count = math.prod(shape)
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(f"an array of shape {shape} and dtype {dtype} has the wrong size")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=end).copy()
    return arr.reshape(shape, order="F" if m.group(2) == "True" else "C")


def read_npz(raw: bytes) -> dict[str, np.ndarray]:
    """The arrays of an .npz body (``np.savez``), never unpickling; MalformedRequestError if
    it is not one. What ``np.load`` gives, without its per-array header parsing (a Python
    literal evaluation each: the largest cost of a small binary request)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return {
                name[:-4] if name.endswith(".npy") else name: _read_npy(zf.read(name))
                for name in zf.namelist()
            }
    except Exception as e:  # noqa: BLE001 - any failure to read untrusted bytes is the client's
        raise MalformedRequestError(f"the body is not a readable .npz archive: {e}") from None


def loads(raw: bytes) -> Any:
    """Parse a JSON body; MalformedRequestError if it is not JSON."""
    try:
        if _orjson is not None:
            return _orjson.loads(raw)
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # orjson's error subclasses both
        raise MalformedRequestError(f"the body is not valid JSON: {e}") from None


def dumps(obj: Any) -> bytes:
    """JSON bytes of ``obj``, which may hold numpy arrays (written exactly, as float64/int
    values; NaN and infinities as null)."""
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)

    def plain(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serializable: {type(o)}")

    # the standard library writes NaN as NaN (not JSON): null instead, as orjson does
    text = json.dumps(obj, default=plain, allow_nan=True)
    return text.replace("NaN", "null").replace("-Infinity", "null").replace("Infinity", "null")


def scores_json(scores: np.ndarray) -> bytes:
    """``{"scores": [...]}`` with every float32 score exactly (float64 text), non-finite as
    null."""
    return dumps({"scores": scores.astype(np.float64)})


def scores_npz(scores: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, scores=np.ascontiguousarray(scores, dtype=np.float32))
    return buf.getvalue()


def _dense(config: DLRMConfig, value: Any) -> np.ndarray:
    try:
        dense = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise MalformedRequestError(f"dense is not a 2-D array of numbers: {e}") from None
    if dense.ndim == 1 and dense.size == 0:  # [] is zero samples
        dense = dense.reshape(0, config.dense_features)
    if dense.dtype.kind not in "fiu" and dense.size:
        raise InvalidDtypeError(
            f"dense must hold numbers, got dtype {dense.dtype}", argument="dense", dtype=dense.dtype
        )
    if dense.ndim != 2 or dense.shape[1] != config.dense_features:
        raise InvalidShapeError(
            f"dense must have shape (n, {config.dense_features}), got {dense.shape}",
            argument="dense",
            shape=dense.shape,
        )
    dense = np.ascontiguousarray(dense, dtype=np.float32)
    if not np.isfinite(dense).all():
        raise InvalidArgumentError("dense features must be finite", argument="dense")
    return dense


def _check_features(config: DLRMConfig, given: Sequence[str]) -> None:
    names = {f.name for f in config.features}
    unknown = sorted(set(given) - names)
    missing = sorted(names - set(given))
    if unknown or missing or len(set(given)) != len(given):
        raise InvalidArgumentError(
            f"sparse features must be exactly the model's {sorted(names)}; unknown {unknown}, "
            f"missing {missing}",
            argument="sparse",
        )


def parse_json_predict(
    config: DLRMConfig, specs: Mapping[str, TableSpec], body: Any
) -> tuple[dict[str, TableRequest], np.ndarray]:
    """``{"dense": [[...]], "sparse": {FEATURE: {"indices", "offsets"}}}`` -> the validated
    request by table, and the dense features float32 (n, dense_features)."""
    if (
        not isinstance(body, dict)
        or "dense" not in body
        or not isinstance(body.get("sparse"), dict)
    ):
        raise MalformedRequestError(
            'the body must be {"dense": [[...], ...], "sparse": {FEATURE: {"indices": [...], '
            '"offsets": [...]}}}',
            field="dense",
        )
    dense = _dense(config, body["dense"])
    n = dense.shape[0]
    sparse = body["sparse"]
    _check_features(config, list(sparse))
    req: dict[str, TableRequest] = {}
    for f in config.features:
        part = sparse[f.name]
        if not isinstance(part, dict) or "indices" not in part or "offsets" not in part:
            raise MalformedRequestError(
                f"sparse[{f.name!r}] must be an object with indices and offsets", field=f.name
            )
        for key in ("indices", "offsets"):
            if not isinstance(part[key], list):
                raise MalformedRequestError(
                    f"sparse[{f.name!r}][{key!r}] must be a list of integers", field=key
                )
        r = validate_table(f.table, specs[f.table], part["indices"], part["offsets"], None, f.mode)
        if r.bags != n:
            raise InvalidShapeError(
                f"sparse[{f.name!r}] has {r.bags} bags, dense has {n} rows",
                argument="offsets",
                shape=r.offsets.shape,
            )
        req[f.table] = r
    return req, dense


def _ints(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.size == 0 and arr.dtype.kind == "f":
        return np.zeros(arr.shape, dtype=np.int64)
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "u" and arr.dtype.itemsize == 8):
        raise InvalidDtypeError(
            f"{name} must be integers, got dtype {arr.dtype}", argument=name, dtype=arr.dtype
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def parse_npz_predict(
    config: DLRMConfig, specs: Mapping[str, TableSpec], raw: bytes
) -> tuple[dict[str, TableRequest], np.ndarray]:
    """The binary body (module docstring) -> the validated request by table, and the dense
    features; every check is a vectorized pass over the whole body."""
    arrays = read_npz(raw)
    unknown = sorted(set(arrays) - set(_BINARY_FIELDS))
    if unknown:
        raise MalformedRequestError(
            f"the archive has unknown arrays {unknown} (known: {list(_BINARY_FIELDS)})",
            field=unknown[0],
        )
    for key in ("dense", "values", "lengths"):
        if key not in arrays:
            raise MalformedRequestError(f"the archive lacks {key!r}", field=key)
    dense = _dense(config, arrays["dense"])
    n = dense.shape[0]
    if "keys" in arrays:
        keys = arrays["keys"]
        if keys.ndim != 1 or keys.dtype.kind not in "US":
            raise MalformedRequestError("keys must be a 1-D array of strings", field="keys")
        names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys.tolist()]
    else:
        names = [f.name for f in config.features]
    _check_features(config, names)
    n_feat = len(names)
    values = _ints(arrays["values"], "values")
    lengths = _ints(arrays["lengths"], "lengths")
    if values.ndim != 1 or lengths.size != n_feat * n or lengths.ndim not in (1, 2):
        raise InvalidShapeError(
            f"values must be 1-D and lengths (features, samples) = ({n_feat}, {n}); got "
            f"values {values.shape}, lengths {lengths.shape}",
            argument="lengths",
            shape=lengths.shape,
        )
    lengths = lengths.reshape(n_feat, n)
    if n and lengths.min() < 0:
        raise InvalidShapeError("lengths must not be negative", argument="lengths", shape=(n,))
    per_feature = lengths.sum(axis=1)
    if int(per_feature.sum()) != values.shape[0]:
        raise InvalidShapeError(
            f"lengths sum to {int(per_feature.sum())}, values has {values.shape[0]} ids",
            argument="values",
            shape=values.shape,
        )
    by_name = {f.name: f for f in config.features}
    tables = [by_name[name].table for name in names]
    rows = np.array([specs[t].rows for t in tables], dtype=np.int64)
    bound = np.repeat(rows, per_feature)
    bad = np.flatnonzero((values < 0) | (values >= bound))
    ends = np.cumsum(per_feature)
    starts = ends - per_feature
    if bad.size:
        pos = int(bad[0])
        k = int(np.searchsorted(ends, pos, side="right"))
        raise IdOutOfRangeError(tables[k], pos - int(starts[k]), int(values[pos]), int(rows[k]))
    # Bag starts per feature: the exclusive running sum of its lengths.
    offsets = np.cumsum(lengths, axis=1) - lengths
    req: dict[str, TableRequest] = {}
    for k, name in enumerate(names):
        idx = values[starts[k] : ends[k]] if n else values[:0]
        req[tables[k]] = TableRequest(idx, offsets[k], None, by_name[name].mode)
    return req, dense


def predict_npz_body(
    dense: Any, sparse: Mapping[str, tuple[Any, Any]], keys: Sequence[str] | None = None
) -> bytes:
    """The binary predict body of ``dense`` (n, dense_features) and ``sparse``: feature ->
    ``(indices, offsets)`` in EmbeddingBag's form (bag starts, n bags each); ``keys`` orders
    the features (default: ``sparse``'s order)."""
    names = list(sparse) if keys is None else list(keys)
    dense = np.asarray(dense, dtype=np.float32)
    n = dense.shape[0]
    values, lengths = [], []
    for name in names:
        idx, off = (np.asarray(a, dtype=np.int64) for a in sparse[name])
        values.append(idx)
        lengths.append(np.diff(np.append(off, idx.shape[0])) if n else off[:0])
    buf = io.BytesIO()
    np.savez(
        buf,
        dense=dense,
        values=np.concatenate(values) if values else np.zeros(0, np.int64),
        lengths=np.stack(lengths) if lengths else np.zeros((0, n), np.int64),
        keys=np.array(names),
    )
    return buf.getvalue()
