"""Small builders shared by test modules (fixtures stay in the modules that size them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from reference import embedding_bag_ref

import bandstore


def random_tables(sizes: dict[str, int], dim: int, seed: int) -> dict[str, np.ndarray]:
    """A float32 table of standard normal values per name, ``sizes[name]`` rows each."""
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((r, dim)).astype(np.float32) for n, r in sizes.items()}


def make_store(path: Path, tables: dict[str, np.ndarray], block_size: int = 512) -> Path:
    """A new store at ``path`` holding ``tables``."""
    with bandstore.create(path, block_size=block_size) as s:
        for n, w in tables.items():
            s.add_table(n, w, progress=False)
    return path


def random_request(rng: np.random.Generator, weights: dict[str, np.ndarray], n_bags: int = 12,
                   max_bag: int = 9) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """A ``lookup_many`` request over every table: bags of 0 to ``max_bag - 1`` Zipf ids."""
    req = {}
    for n, w in weights.items():
        sizes = rng.integers(0, max_bag, n_bags)
        ids = rng.zipf(1.3, int(sizes.sum())) % w.shape[0]
        req[n] = (ids.astype(np.int64), np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    return req


def check_against_reference(s, weights: dict[str, np.ndarray], req: dict, mode: str,
                            pad: int | None) -> None:  # fmt: skip
    """Serve ``req`` (``(ids, offsets[, per-sample weights])`` per table) through
    ``lookup_many`` and ``embedding_bag`` (with ``pad`` as padding_idx) and compare both with
    the numpy reference."""
    out = s.lookup_many(req, mode=mode)
    for n, r in req.items():
        psw = r[2] if len(r) == 3 else None
        ref = embedding_bag_ref(weights[n], r[0], r[1], mode, psw)
        np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-5)
        bag = s.embedding_bag(n, r[0], r[1], mode=mode, per_sample_weights=psw, padding_idx=pad)
        ref = embedding_bag_ref(weights[n], r[0], r[1], mode, psw, padding_idx=pad)
        np.testing.assert_allclose(bag, ref, rtol=1e-5, atol=1e-5)


def lookup_in_worker(store: bandstore.Store, table: str, ids: np.ndarray) -> np.ndarray:
    """Rows of ``table`` through a store handed over by pickle (a process pool's task)."""
    with store:
        assert not store.writable
        return store.lookup(table, ids)
