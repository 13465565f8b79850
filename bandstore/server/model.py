"""The dense part of a DLRM in numpy, for ``bandstore serve --model DIR`` (no torch needed).

A model directory holds ``config.json`` and the dense weights as safetensors (no pickle):

- ``config.json``: ``{"format": "bandstore-dlrm", "dense_features": 13, "dense_transform":
  "log1p" | "none", "embedding_dim": D, "bottom_mlp": [h1, ..., D], "top_mlp": [h1, ..., 1],
  "features": [{"name": "C1", "table": "C1", "mode": "sum"}, ...], "weights":
  "dense.safetensors"}``
- the weights: ``bottom.{i}.weight`` (out, in) and ``bottom.{i}.bias``, ``top.{i}.*`` alike.

The forward pass (Naumov et al., 2019): ``log(1 + max(x, 0))`` of the dense features (with
``dense_transform: log1p``), a bottom MLP with ReLU after every layer to D, one pooled
embedding of dimension D per feature from the store, the dot products of every pair of these
F + 1 vectors (strictly lower triangle), concatenated to the bottom output, a top MLP with ReLU
between layers, and a sigmoid. :mod:`bandstore.server.dlrm_torch` is the same model in torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import CorruptFileError, InvalidArgumentError, InvalidShapeError
from bandstore.kernels.dense import _dlrm_forward

CONFIG_FILE = "config.json"
FORMAT = "bandstore-dlrm"


@dataclass(frozen=True)
class Feature:
    """A sparse feature: the store table it reads and how its bag is pooled."""

    name: str
    table: str
    mode: str = "sum"


@dataclass(frozen=True)
class DLRMConfig:
    dense_features: int
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    features: tuple[Feature, ...]
    dense_transform: str = "log1p"
    weights: str = "dense.safetensors"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.dense_transform not in ("log1p", "none"):
            raise InvalidArgumentError(
                f"dense_transform must be 'log1p' or 'none', got {self.dense_transform!r}",
                argument="dense_transform",
                value=self.dense_transform,
            )
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim:
            raise InvalidArgumentError(
                f"bottom_mlp must end at embedding_dim {self.embedding_dim}, got "
                f"{list(self.bottom_mlp)}",
                argument="bottom_mlp",
            )
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise InvalidArgumentError(
                f"top_mlp must end with 1 output, got {list(self.top_mlp)}", argument="top_mlp"
            )
        names = [f.name for f in self.features]
        if not names or len(set(names)) != len(names):
            raise InvalidArgumentError(
                f"features must be distinct and at least one, got {names}", argument="features"
            )

    @property
    def interaction_dim(self) -> int:
        n = len(self.features) + 1
        return self.embedding_dim + n * (n - 1) // 2

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight's expected shape, by safetensors key."""
        shapes: dict[str, tuple[int, ...]] = {}
        for prefix, sizes, n_in in (
            ("bottom", self.bottom_mlp, self.dense_features),
            ("top", self.top_mlp, self.interaction_dim),
        ):
            for i, n_out in enumerate(sizes):
                shapes[f"{prefix}.{i}.weight"] = (n_out, n_in)
                shapes[f"{prefix}.{i}.bias"] = (n_out,)
                n_in = n_out
        return shapes

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dense_features": self.dense_features,
            "dense_transform": self.dense_transform,
            "embedding_dim": self.embedding_dim,
            "bottom_mlp": list(self.bottom_mlp),
            "top_mlp": list(self.top_mlp),
            "features": [{"name": f.name, "table": f.table, "mode": f.mode} for f in self.features],
            "weights": self.weights,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DLRMConfig:
        known = {
            "format", "dense_features", "dense_transform", "embedding_dim", "bottom_mlp",
            "top_mlp", "features", "weights",
        }  # fmt: skip
        if d.get("format") != FORMAT:
            raise InvalidArgumentError(
                f"not a {FORMAT} config (format {d.get('format')!r})", argument="format"
            )
        return cls(
            dense_features=int(d["dense_features"]),
            embedding_dim=int(d["embedding_dim"]),
            bottom_mlp=tuple(int(x) for x in d["bottom_mlp"]),
            top_mlp=tuple(int(x) for x in d["top_mlp"]),
            features=tuple(
                Feature(str(f["name"]), str(f.get("table", f["name"])), str(f.get("mode", "sum")))
                for f in d["features"]
            ),
            dense_transform=str(d.get("dense_transform", "log1p")),
            weights=str(d.get("weights", "dense.safetensors")),
            extra={k: v for k, v in d.items() if k not in known},
        )


def transform_dense(config: DLRMConfig, dense: np.ndarray) -> np.ndarray:
    x = np.asarray(dense, dtype=np.float32)
    if config.dense_transform == "log1p":
        x = np.log1p(np.maximum(x, np.float32(0)))
    return x


class DLRM:
    """The dense part of a DLRM: ``forward(dense, pooled)`` -> click probabilities."""

    def __init__(self, config: DLRMConfig, weights: Mapping[str, np.ndarray]):
        expected = config.layer_shapes()
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise InvalidArgumentError(f"model weights lack {missing}", argument="weights")
        for k, shape in expected.items():
            if tuple(weights[k].shape) != shape:
                raise InvalidShapeError(
                    f"weight {k!r} has shape {tuple(weights[k].shape)}, expected {shape}",
                    argument=k,
                    shape=tuple(weights[k].shape),
                )
        self.config = config
        self._layers: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for prefix, sizes in (("bottom", config.bottom_mlp), ("top", config.top_mlp)):
            self._layers[prefix] = [
                (
                    np.ascontiguousarray(np.asarray(weights[f"{prefix}.{i}.weight"]).T, np.float32),
                    np.asarray(weights[f"{prefix}.{i}.bias"], np.float32),
                )
                for i in range(len(sizes))
            ]
        # The kernel's packed form: per layer the (in, out) matrix then the biases.
        layers = self._layers["bottom"] + self._layers["top"]
        self._packed = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in layers])
        self._shapes = np.array([w.shape for w, _ in layers], dtype=np.int64)
        self._width = int(self._shapes.max())

    @classmethod
    def load(cls, directory: str | Path) -> DLRM:
        """Read ``config.json`` and the safetensors weights of a model directory."""
        from safetensors.numpy import load_file

        d = Path(directory)
        path = d / CONFIG_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CorruptFileError(str(path), "no model config (config.json) here") from None
        except json.JSONDecodeError as e:
            raise CorruptFileError(str(path), f"not JSON: {e}") from None
        try:
            config = DLRMConfig.from_dict(raw)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(str(path), f"not a valid model config: {e}") from None
        return cls(config, load_file(str(d / config.weights)))

    def forward(self, dense: np.ndarray, pooled: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores (n,) float32 for raw dense features (n, dense_features) and the pooled
        embedding (n, D) of every feature, by feature name.

        Each score is computed on its own in a fixed order (:mod:`bandstore.kernels.dense`), so
        a sample's score is the same whatever other samples share its call."""
        c = self.config
        x = np.ascontiguousarray(dense, dtype=np.float32)
        n = x.shape[0]
        t = np.empty((n, len(c.features), c.embedding_dim), dtype=np.float32)
        for i, f in enumerate(c.features):
            t[:, i] = pooled[f.name]
        scores = np.empty(n, dtype=np.float32)
        status = _dlrm_forward(
            x, c.dense_transform == "log1p", t, self._packed, self._shapes,
            len(c.bottom_mlp), self._width, scores,
        )  # fmt: skip
        if status:
            raise InvalidShapeError(
                f"dense {x.shape} and pooled features {t.shape} do not fit the model",
                argument="dense",
                shape=x.shape,
            )
        return scores
