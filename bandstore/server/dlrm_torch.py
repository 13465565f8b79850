"""The DLRM of :mod:`bandstore.server.model` in torch: for training the example model and as
the reference the numpy forward is tested against. Needs torch (extra ``[torch]``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bandstore.server.model import CONFIG_FILE, DLRMConfig


class TorchDLRM(nn.Module):
    """Bottom MLP, one ``nn.EmbeddingBag`` per feature (``rows[feature]`` rows), dot
    interaction, top MLP, sigmoid. Parameter names match the safetensors keys of the numpy
    model (``bottom.0.weight`` ...); the tables are ``emb.<feature>.weight``."""

    def __init__(self, config: DLRMConfig, rows: Mapping[str, int]):
        super().__init__()
        self.config = config
        sizes = [config.dense_features, *config.bottom_mlp]
        self.bottom = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        sizes = [config.interaction_dim, *config.top_mlp]
        self.top = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.emb = nn.ModuleDict(
            {
                f.name: nn.EmbeddingBag(rows[f.name], config.embedding_dim, mode=f.mode)
                for f in config.features
            }
        )
        n = len(config.features) + 1
        li, lj = np.tril_indices(n, -1)
        self.register_buffer("li", torch.from_numpy(li), persistent=False)
        self.register_buffer("lj", torch.from_numpy(lj), persistent=False)

    def dense_forward(self, dense: torch.Tensor, pooled: Mapping[str, torch.Tensor]):
        x = dense
        if self.config.dense_transform == "log1p":
            x = torch.log1p(torch.clamp(x, min=0))
        for layer in self.bottom:
            x = torch.relu(layer(x))
        t = torch.stack([x] + [pooled[f.name] for f in self.config.features], dim=1)
        z = torch.bmm(t, t.transpose(1, 2))
        h = torch.cat([x, z[:, self.li, self.lj]], dim=1)  # type: ignore[index]
        for i, layer in enumerate(self.top):
            h = layer(h)
            if i < len(self.top) - 1:
                h = torch.relu(h)
        return h[:, 0]  # logits

    def forward(self, dense: torch.Tensor, sparse: Mapping[str, tuple]) -> torch.Tensor:
        """Logits (n,) for raw dense features and ``{feature: (indices, offsets)}``."""
        pooled = {f: self.emb[f](idx, off) for f, (idx, off) in sparse.items()}
        return self.dense_forward(dense, pooled)


def save_dense(model: TorchDLRM, outdir: str | Path) -> None:
    """Write ``config.json`` and the dense weights (safetensors) of ``model`` into ``outdir``."""
    from safetensors.torch import save_file

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    dense = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(("bottom.", "top."))
    }
    save_file(dense, str(out / model.config.weights))
    (out / CONFIG_FILE).write_text(json.dumps(model.config.as_dict(), indent=2) + "\n")


def embedding_tables(model: TorchDLRM) -> dict[str, np.ndarray]:
    """Every feature's table as float32 numpy, by the table name the config gives it."""
    return {
        f.table: model.emb[f.name].weight.detach().cpu().numpy().astype(np.float32)  # type: ignore[operator]
        for f in model.config.features
    }
