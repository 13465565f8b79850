"""PyTorch modules served by a bandstore Store (inference only; extra ``[torch]``).

``import bandstore`` never imports this module, so bandstore runs without torch.

- :class:`EmbeddingBag`: ``torch.nn.EmbeddingBag``'s forward (1-D input with offsets, 2-D fixed
  bags, int32/int64, empty bags, ``padding_idx``, ``per_sample_weights``, sum/mean/max) over
  a store's table. Returns float32 CPU tensors that share memory with the store's output.
- :class:`EmbeddingBagCollection`: many features, each with its own table and pooling mode,
  served in one ``Store.lookup_many`` call (so a plan's workers serve it); input a TorchRec
  ``KeyedJaggedTensor`` (or any object with ``keys()``, ``values()``, ``lengths()``,
  ``offsets()`` and ``weights_or_none()``) or ``{feature: (values, offsets[, weights])}``.
- :func:`swap_embedding_bags`: puts an :class:`EmbeddingBag` in place of every
  ``nn.EmbeddingBag`` of a model whose module path names a table.
- :func:`export_embeddings`: writes a model's ``nn.EmbeddingBag``/``nn.Embedding`` weights into
  a store, named by module path.

The naming rule: a module at dotted path ``p`` (``model.named_modules()``) is served by table
``p`` if the store has it, else by the table named by its last component (``arch.emb.user`` ->
``user``), as ``bandstore import`` names a state dict's ``arch.emb.user.weight`` ->
``arch.emb.user`` and a bare ``user.weight`` -> ``user``.

Pickling: the modules hold a :class:`bandstore.Store`, which pickles as its path and open
options (see ``Store.__reduce__``; never its data), so ``torch.save(model)`` (loaded with
``weights_only=False``), ``copy.deepcopy`` and worker processes reopen the store read-only.
The modules have no parameters or buffers: ``state_dict()`` holds nothing for them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("bandstore.torch needs PyTorch: pip install 'bandstore[torch]'") from exc

import bandstore
from bandstore.errors import (
    InvalidArgumentError,
    InvalidShapeError,
    UnknownTableError,
)

MODES = ("sum", "mean", "max")


def _as_store(store: Any) -> bandstore.Store:
    """An open Store, or a path opened read-only."""
    if isinstance(store, bandstore.Store):
        return store
    if isinstance(store, str | os.PathLike):
        return bandstore.open(store)
    raise InvalidArgumentError(
        f"store must be a bandstore.Store or a path, got {type(store).__name__}",
        argument="store",
    )


def _np(value: Any) -> Any:
    """A CPU tensor as the numpy array sharing its memory; other values as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise InvalidArgumentError(
            f"mode must be one of {list(MODES)}, got {mode!r}", argument="mode", value=mode
        )
    return mode


def _normal_padding_idx(padding_idx: int | None, rows: int, table: str) -> int | None:
    """torch's rule: a negative padding_idx counts from the end; out of range is an error."""
    if padding_idx is None:
        return None
    p = int(padding_idx)
    if not -rows <= p < rows:
        raise InvalidArgumentError(
            f"padding_idx {p} is out of range for table {table!r} with {rows} rows",
            argument="padding_idx",
            value=p,
        )
    return p % rows


def _table_info(store: bandstore.Store, table: str) -> bandstore.TableInfo:
    tables = store.tables
    if table not in tables:
        raise UnknownTableError(table, list(tables))
    return tables[table]


class EmbeddingBag(nn.Module):
    """``torch.nn.EmbeddingBag`` (inference) over table ``table`` of ``store`` (a Store or a
    path, opened read-only).

    ``forward(input, offsets=None, per_sample_weights=None)`` has nn.EmbeddingBag's contract
    and returns a float32 CPU tensor (bags, embedding_dim); bad input raises the bandstore
    error naming the problem (each also a ValueError/IndexError/TypeError as torch's are).
    """

    def __init__(
        self,
        store: Any,
        table: str,
        mode: str = "sum",
        padding_idx: int | None = None,
        include_last_offset: bool = False,
    ):
        super().__init__()
        self.store = _as_store(store)
        info = _table_info(self.store, table)
        self.table = table
        self.mode = _check_mode(mode)
        self.num_embeddings = info.rows
        self.embedding_dim = info.dim
        self.padding_idx = _normal_padding_idx(padding_idx, info.rows, table)
        self.include_last_offset = bool(include_last_offset)

    def forward(
        self, input: Any, offsets: Any = None, per_sample_weights: Any = None
    ) -> torch.Tensor:
        out = self.store.embedding_bag(
            self.table,
            _np(input),
            _np(offsets),
            mode=self.mode,
            per_sample_weights=_np(per_sample_weights),
            include_last_offset=self.include_last_offset,
            padding_idx=self.padding_idx,
        )
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, table={self.table!r}, mode={self.mode!r}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        return s + f", store={str(self.store.root)!r}"


@dataclass(frozen=True)
class Feature:
    """How :class:`EmbeddingBagCollection` pools one feature: its table, pooling mode and
    padding row (rows equal to it are left out of the bag, as nn.EmbeddingBag's)."""

    table: str
    mode: str = "sum"
    padding_idx: int | None = None


class EmbeddingBagCollection(nn.Module):
    """Pooled embeddings of many features, served by one ``Store.lookup_many`` call.

    ``features`` maps a feature name to a table name (pooled by sum) or a :class:`Feature`.
    Several features may share a table; each call then serves them in as many
    ``lookup_many`` calls as the most-shared table has features (a request holds one entry per
    table), all other tables in the first.

    ``forward(input)``: ``input`` is a TorchRec ``KeyedJaggedTensor`` (or an object with its
    ``keys()``, ``values()``, ``offsets()`` / ``lengths()``, ``weights_or_none()``: features
    in key order, each ``stride`` bags, TorchRec's ``stride_per_key()`` honoured where the
    object has it), or ``{feature: (values, offsets[, per_sample_weights])}`` with offsets the
    bag starts (nn.EmbeddingBag's; ``(values_2d, None)`` for fixed bags). Features the input
    has and the collection does not are ignored; a missing one is an error. Returns
    ``{feature: float32 tensor (bags, dim)}`` in the collection's feature order, or a
    TorchRec ``KeyedTensor`` when the input is a ``KeyedJaggedTensor``.
    """

    def __init__(self, store: Any, features: Mapping[str, str | Feature]):
        super().__init__()
        self.store = _as_store(store)
        if not isinstance(features, Mapping) or not features:
            raise InvalidArgumentError(
                "features must be a non-empty mapping {feature: table or Feature}",
                argument="features",
            )
        self.features: dict[str, Feature] = {}
        for name, spec in features.items():
            f = Feature(spec) if isinstance(spec, str) else spec
            if not isinstance(f, Feature):
                raise InvalidArgumentError(
                    f"feature {name!r}: want a table name or a bandstore.torch.Feature, "
                    f"got {type(spec).__name__}",
                    argument="features",
                )
            info = _table_info(self.store, f.table)
            _check_mode(f.mode)
            pad = _normal_padding_idx(f.padding_idx, info.rows, f.table)
            self.features[name] = Feature(f.table, f.mode, pad)
        self.embedding_dims = {n: self.store.tables[f.table].dim for n, f in self.features.items()}
        # Round r serves the r-th feature of every table: one lookup_many call per round.
        self._rounds: list[dict[str, str]] = []
        for name, f in self.features.items():
            for rnd in self._rounds:
                if f.table not in rnd:
                    rnd[f.table] = name
                    break
            else:
                self._rounds.append({f.table: name})

    def forward(self, input: Any) -> Any:
        keyed = _is_keyed_jagged(input)
        bags = _jagged_features(input) if keyed else self._dict_features(input)
        missing = [n for n in self.features if n not in bags]
        if missing:
            raise InvalidArgumentError(
                f"input has no feature {missing[0]!r}; the collection pools "
                f"{list(self.features)}, the input has {list(bags)}",
                argument="input",
                value=missing[0],
            )
        out: dict[str, np.ndarray] = {}
        for rnd in self._rounds:
            requests = {}
            for table, name in rnd.items():
                f = self.features[name]
                values, offsets, weights = bags[name]
                requests[table] = {
                    "indices": values,
                    "offsets": offsets,
                    "per_sample_weights": weights,
                    "mode": f.mode,
                    "padding_idx": f.padding_idx,
                }
            served = self.store.lookup_many(requests)
            for table, name in rnd.items():
                out[name] = served[table]
        tensors = {n: torch.from_numpy(out[n]) for n in self.features}
        if keyed:
            keyed_tensor = _keyed_tensor(input, tensors)
            if keyed_tensor is not None:
                return keyed_tensor
        return tensors

    def _dict_features(self, input: Any) -> dict[str, tuple]:
        if not isinstance(input, Mapping):
            raise InvalidArgumentError(
                "input must be a KeyedJaggedTensor or {feature: (values, offsets[, weights])}, "
                f"got {type(input).__name__}",
                argument="input",
            )
        bags = {}
        for name in self.features:
            if name not in input:
                continue
            req = input[name]
            if not isinstance(req, tuple | list) or len(req) not in (2, 3):
                raise InvalidArgumentError(
                    f"input for feature {name!r} must be (values, offsets) or "
                    "(values, offsets, per_sample_weights)",
                    argument="input",
                )
            bags[name] = (_np(req[0]), _np(req[1]), _np(req[2]) if len(req) == 3 else None)
        return bags

    def extra_repr(self) -> str:
        feats = ", ".join(f"{n}: {f.table}/{f.mode}" for n, f in self.features.items())
        return f"{{{feats}}}, store={str(self.store.root)!r}"


def _is_keyed_jagged(value: Any) -> bool:
    return not isinstance(value, Mapping) and all(
        callable(getattr(value, a, None)) for a in ("keys", "values", "lengths")
    )


def _jagged_features(kjt: Any) -> dict[str, tuple]:
    """``{key: (values, bag starts, weights or None)}`` of a KeyedJaggedTensor-like object."""
    keys = list(kjt.keys())
    values = _np(kjt.values())
    lengths = np.asarray(_np(kjt.lengths()))
    weights = kjt.weights_or_none() if callable(getattr(kjt, "weights_or_none", None)) else None
    weights = _np(weights)
    if callable(getattr(kjt, "offsets", None)):
        offsets = np.asarray(_np(kjt.offsets()), dtype=np.int64)
    else:
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    if callable(getattr(kjt, "stride_per_key", None)):
        strides = [int(s) for s in kjt.stride_per_key()]
    else:
        if keys and lengths.shape[0] % len(keys):
            raise InvalidShapeError(
                f"{lengths.shape[0]} lengths do not split evenly over the {len(keys)} keys",
                argument="lengths",
                shape=lengths.shape,
            )
        strides = [lengths.shape[0] // len(keys) if keys else 0] * len(keys)
    if sum(strides) != lengths.shape[0] or offsets.shape != (lengths.shape[0] + 1,):
        raise InvalidShapeError(
            f"KeyedJaggedTensor: {lengths.shape[0]} lengths and {offsets.shape[0]} offsets do "
            f"not describe bags of {len(keys)} keys with strides {strides}",
            argument="lengths",
            shape=lengths.shape,
        )
    bags = {}
    start = 0
    for key, stride in zip(keys, strides, strict=True):
        off = offsets[start : start + stride + 1]
        lo, hi = int(off[0]), int(off[-1])
        w = None if weights is None else weights[lo:hi]
        bags[key] = (values[lo:hi], off[:-1] - lo, w)
        start += stride
    return bags


@functools.cache
def _torchrec_types() -> tuple[Any, Any] | None:
    """TorchRec's (KeyedJaggedTensor, KeyedTensor), or None without torchrec (looked up once)."""
    try:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor
    except (ImportError, OSError):  # OSError: PyPI's fbgemm_gpu is a CUDA build, no libcuda
        return None
    return KeyedJaggedTensor, KeyedTensor


def _keyed_tensor(kjt: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A TorchRec KeyedTensor of ``tensors`` if ``kjt`` is TorchRec's KeyedJaggedTensor."""
    types = _torchrec_types()
    if types is None or not isinstance(kjt, types[0]):
        return None
    return types[1].from_tensor_list(list(tensors), list(tensors.values()))


def _served_table(path: str, tables: Mapping[str, Any]) -> str | None:
    """The naming rule: the full dotted path, else its last component, if the store has it."""
    if path in tables:
        return path
    last = path.rsplit(".", 1)[-1]
    return last if last in tables else None


def swap_embedding_bags(model: nn.Module, store: Any) -> nn.Module:
    """Replace, in place, every ``torch.nn.EmbeddingBag`` of ``model`` whose module path names
    a table of ``store`` (an open Store, or a path opened read-only) by an
    :class:`EmbeddingBag` over that table, with the same mode, padding_idx and
    include_last_offset; return ``model``.

    The table is found by the module's full dotted path (``model.named_modules()``), else by its
    last component (see the module docstring). The table must have the module's
    ``num_embeddings`` and ``embedding_dim`` (else :class:`InvalidShapeError`), and
    ``max_norm`` must be None (it renormalises weights, which a store does not hold as
    parameters). Everything is checked before any module is replaced. The model's own weights
    are not compared with the store's.
    """
    store = _as_store(store)
    tables = store.tables
    swaps = []
    for path, module in model.named_modules(remove_duplicate=False):
        if not path or not isinstance(module, nn.EmbeddingBag):
            continue
        table = _served_table(path, tables)
        if table is None:
            continue
        info = tables[table]
        if (module.num_embeddings, module.embedding_dim) != (info.rows, info.dim):
            raise InvalidShapeError(
                f"module {path!r} is an EmbeddingBag of {module.num_embeddings} x "
                f"{module.embedding_dim}, but table {table!r} is {info.rows} x {info.dim}",
                argument=path,
                shape=(module.num_embeddings, module.embedding_dim),
            )
        if module.max_norm is not None:
            raise InvalidArgumentError(
                f"module {path!r} has max_norm={module.max_norm}, which renormalises weights in "
                "forward; a store-backed EmbeddingBag cannot",
                argument=path,
                value=module.max_norm,
            )
        swaps.append((path, module, table))
    made: dict[tuple[int, str], EmbeddingBag] = {}
    for path, module, table in swaps:
        key = (id(module), table)
        if key not in made:
            made[key] = EmbeddingBag(
                store,
                table,
                mode=module.mode,
                padding_idx=module.padding_idx,
                include_last_offset=module.include_last_offset,
            )
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, made[key])
    return model


def export_embeddings(
    model: nn.Module,
    path: str | os.PathLike,
    codec: str | Mapping[str, str] = "float32",
    match: str | None = None,
    *,
    block_size: int = 4096,
    progress: bool | None = None,
) -> dict[str, bandstore.TableInfo]:
    """Write the weight of every ``nn.EmbeddingBag`` and ``nn.Embedding`` of ``model`` (whose
    module path contains a match of the regular expression ``match``, if given) as a table
    named by its module path into the store at ``path`` (created if missing), all in one new
    version; return the new tables' infos. A name the store already has raises
    :class:`TableExistsError` and, as any failure, leaves the store as it was (and no store
    where there was none). :func:`swap_embedding_bags` finds the tables by the same paths.
    """
    from bandstore.importers import add_to_store

    pattern = re.compile(match) if match is not None else None
    tables: dict[str, np.ndarray] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.EmbeddingBag | nn.Embedding):
            continue
        if pattern is not None and not pattern.search(name):
            continue
        w = module.weight.detach().cpu()
        if w.dtype not in (torch.float16, torch.float32, torch.float64):
            w = w.float()  # bfloat16 and others numpy lacks
        tables[name] = w.numpy()
    if not tables:
        raise InvalidArgumentError(
            "the model has no nn.EmbeddingBag or nn.Embedding"
            + (f" with a module path matching {match!r}" if match else ""),
            argument="model",
        )
    add_to_store(
        path,
        tables,
        codec=codec,
        block_size=block_size,
        progress=progress,
        note="export_embeddings " + " ".join(tables),
    )
    with bandstore.open(path, cache_bytes=0, plan=False) as s:
        infos = s.tables
    return {n: infos[n] for n in tables}


__all__ = [
    "EmbeddingBag",
    "EmbeddingBagCollection",
    "Feature",
    "export_embeddings",
    "swap_embedding_bags",
]
