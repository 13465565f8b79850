"""``bandstore.torch.EmbeddingBagCollection`` with TorchRec's own KeyedJaggedTensor in and
KeyedTensor out, where TorchRec imports (tests/test_torch.py covers the dict form and a
stand-in KJT everywhere)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_store

torch = pytest.importorskip("torch")


def _torchrec():
    # PyPI's torchrec depends on fbgemm_gpu, whose PyPI wheel is a CUDA build: on a CPU-only
    # torch it fails to load (OSError: libtorch_cuda.so), and the CPU wheels live on the
    # PyTorch package index only, which a plain `pip install` does not use.
    try:
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor
    except (ImportError, OSError) as e:
        pytest.skip(f"TorchRec does not import here ({type(e).__name__}: {e})")
    return KeyedJaggedTensor, KeyedTensor


def test_collection_takes_a_real_keyed_jagged_tensor(tmp_path):
    KeyedJaggedTensor, KeyedTensor = _torchrec()
    import bandstore
    from bandstore.torch import EmbeddingBagCollection, Feature

    rng = np.random.default_rng(4)
    tables = {"u": rng.standard_normal((30, 4)).astype(np.float32),
              "i": rng.standard_normal((20, 4)).astype(np.float32)}  # fmt: skip
    path = make_store(tmp_path / "s", tables)
    with bandstore.open(path) as s:
        ebc = EmbeddingBagCollection(s, {"user": "u", "item": Feature("i", "mean")})
        lengths = torch.tensor([2, 0, 1, 3, 1, 0])  # user: 3 bags, item: 3 bags
        values = torch.tensor([1, 29, 5, 0, 19, 7, 3])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["user", "item"], values=values, lengths=lengths
        )
        out = ebc(kjt)
    assert isinstance(out, KeyedTensor)
    got = out.to_dict()
    ref_u = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(tables["u"]), mode="sum")
    ref_i = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(tables["i"]), mode="mean")
    torch.testing.assert_close(got["user"], ref_u(values[:3], torch.tensor([0, 2, 2])))
    torch.testing.assert_close(got["item"], ref_i(values[3:], torch.tensor([0, 3, 4])))
