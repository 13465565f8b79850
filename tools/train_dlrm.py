"""Train the example DLRM on a Criteo-format TSV and write a servable model directory.

    python tools/train_dlrm.py DATA.tsv OUTDIR [--epochs 4] [--dim 16] [--seed 0]

DATA: tab separated ``label I1..I13 C1..C26`` (C* hashed categorical values, may be empty), in
log order, e.g. ``../shared/data/criteo-8k/criteo-8k.tsv``. The first ``--train-share`` (80%)
of the lines train, the later ones are held out (a time-ordered split) for the AUC.

OUTDIR gets:
- ``config.json`` + ``dense.safetensors``: the dense part (no pickle), for ``--model OUTDIR``;
- ``store/``: a bandstore store with one float32 table per categorical column (``C1``...);
- ``mapping.npz``: per column the hashed values (uint32) in id order: value ``mapping[C][i]``
  is dense id ``i + 1``; id 0 is "missing or not seen in training". ``/v1/predict`` takes ids;
- ``heldout.npz``: the held-out lines as the server takes them (``dense`` raw float32
  (n, 13), ``sparse`` int64 (n, 26) dense ids, ``label``), for benchmarks;
- ``report.json``: rows per table, training time, train and held-out AUC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bandstore  # noqa: E402
from bandstore.server.model import DLRMConfig, Feature  # noqa: E402

N_DENSE = 13
N_SPARSE = 26


def read_criteo(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels (n,), dense float32 (n, 13), hashed int64 (n, 26))``; a missing dense value
    is 0, a missing categorical value -1."""
    labels, dense, cats = [], [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 1 + N_DENSE + N_SPARSE:
                raise ValueError(f"{path}:{lineno}: {len(parts)} fields, expected 40")
            labels.append(int(parts[0]))
            dense.append([float(x) if x else 0.0 for x in parts[1 : 1 + N_DENSE]])
            cats.append([int(x, 16) if x else -1 for x in parts[1 + N_DENSE :]])
    return (
        np.asarray(labels, dtype=np.int64),
        np.asarray(dense, dtype=np.float32),
        np.asarray(cats, dtype=np.int64),
    )


def build_mapping(train_cats: np.ndarray) -> list[np.ndarray]:
    """Per column, the hashed values seen in training, in order of first appearance."""
    out = []
    for j in range(train_cats.shape[1]):
        col = train_cats[:, j]
        col = col[col >= 0]
        _, first = np.unique(col, return_index=True)
        out.append(col[np.sort(first)].astype(np.uint32))
    return out


def to_ids(cats: np.ndarray, mapping: list[np.ndarray]) -> np.ndarray:
    """Dense ids: ``i + 1`` for the i-th value of the mapping, 0 for missing or unseen."""
    ids = np.zeros(cats.shape, dtype=np.int64)
    for j, values in enumerate(mapping):
        index = {int(v): i + 1 for i, v in enumerate(values)}
        ids[:, j] = [index.get(int(c), 0) for c in cats[:, j]]
    return ids


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = np.asarray(scores)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def train(
    data: str | Path,
    outdir: str | Path,
    *,
    epochs: int = 4,
    dim: int = 16,
    batch_size: int = 128,
    lr: float = 1e-3,
    train_share: float = 0.8,
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """Train, evaluate on the held-out (later) lines and write OUTDIR; returns the report."""
    import torch

    from bandstore.server.dlrm_torch import TorchDLRM, embedding_tables, save_dense

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    labels, dense, cats = read_criteo(data)
    n_train = int(len(labels) * train_share)
    mapping = build_mapping(cats[:n_train])
    ids = to_ids(cats, mapping)
    names = [f"C{j + 1}" for j in range(N_SPARSE)]
    config = DLRMConfig(
        dense_features=N_DENSE,
        embedding_dim=dim,
        bottom_mlp=(64, dim),
        top_mlp=(64, 1),
        features=tuple(Feature(n, n, "sum") for n in names),
        extra={"source": Path(data).name, "ids": "mapping.npz: id i+1 = i-th value, 0 = unseen"},
    )
    rows = {n: len(mapping[j]) + 1 for j, n in enumerate(names)}
    model = TorchDLRM(config, rows)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x_dense = torch.from_numpy(dense)
    x_ids = torch.from_numpy(ids)
    y = torch.from_numpy(labels.astype(np.float32))

    def forward(sel: torch.Tensor) -> torch.Tensor:
        n = sel.shape[0]
        off = torch.arange(n, dtype=torch.int64)
        sparse = {name: (x_ids[sel, j], off) for j, name in enumerate(names)}
        return model(x_dense[sel], sparse)

    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        total = 0.0
        for b in range(0, n_train, batch_size):
            sel = perm[b : b + batch_size]
            opt.zero_grad()
            loss = loss_fn(forward(sel), y[sel])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(sel)
        if not quiet:
            print(f"epoch {epoch + 1}/{epochs}: train loss {total / n_train:.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(forward(torch.arange(len(labels)))).numpy()
    train_seconds = time.perf_counter() - t0

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    save_dense(model, out)
    with bandstore.create(out / "store") as store:
        for name, table in embedding_tables(model).items():
            store.add_table(name, table, codec="float32", progress=False)
    np.savez(out / "mapping.npz", **{n: mapping[j] for j, n in enumerate(names)})
    np.savez(
        out / "heldout.npz",
        dense=dense[n_train:],
        sparse=ids[n_train:],
        label=labels[n_train:],
        score=scores[n_train:].astype(np.float32),
    )
    report = {
        "data": str(data),
        "lines": int(len(labels)),
        "train_lines": n_train,
        "heldout_lines": int(len(labels) - n_train),
        "positive_share_heldout": float(labels[n_train:].mean()),
        "epochs": epochs,
        "embedding_dim": dim,
        "rows": rows,
        "total_rows": int(sum(rows.values())),
        "train_auc": auc(labels[:n_train], scores[:n_train]),
        "heldout_auc": auc(labels[n_train:], scores[n_train:]),
        "train_seconds": round(train_seconds, 2),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("outdir", type=Path)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.outdir.exists() and any(args.outdir.iterdir()):
        print(f"train_dlrm: error: {args.outdir} exists and is not empty", file=sys.stderr)
        return 1
    report = train(
        args.data,
        args.outdir,
        epochs=args.epochs,
        dim=args.dim,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
