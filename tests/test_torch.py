"""bandstore.torch against torch.nn.EmbeddingBag with the same weights."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import bandstore  # noqa: E402
from bandstore.errors import (  # noqa: E402
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidShapeError,
    StorePickleError,
    TableExistsError,
    UnknownTableError,
)
from bandstore.options import ServeOptions  # noqa: E402
from bandstore.storage.codecs import max_abs_error  # noqa: E402
from bandstore.torch import (  # noqa: E402
    EmbeddingBag,
    EmbeddingBagCollection,
    Feature,
    export_embeddings,
    swap_embedding_bags,
)

ROWS, DIM = 300, 12
CODECS = ("float32", "float16", "int8")


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {c: rng.standard_normal((ROWS, DIM)).astype(np.float32) for c in CODECS}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("torch") / "store"
    with bandstore.create(path, block_size=512) as s:
        s.add_tables({c: w for c, w in weights.items()}, codec={c: c for c in CODECS})
    return path


@pytest.fixture
def store(store_path):
    with bandstore.open(store_path, cache_bytes=8 << 10) as s:
        yield s


def decoded(store, table: str) -> torch.Tensor:
    return torch.from_numpy(store.decoded_rows(table, 0, ROWS))


def ragged(rng, n_bags: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags of 0-6 ids (several empty), as (input, offsets) of ``dtype``."""
    sizes = rng.integers(0, 7, n_bags)
    sizes[[0, n_bags // 2]] = 0
    ids = rng.integers(0, ROWS, int(sizes.sum()))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return torch.tensor(ids, dtype=dtype), torch.tensor(starts, dtype=dtype)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_embedding_bag_matches_torch(store, weights, codec, mode, dtype):
    rng = np.random.default_rng([CODECS.index(codec), len(mode), dtype.itemsize])
    ref_w = decoded(store, codec)
    # The store's rows are the codec's: within its bound of the trained weights, exact after.
    err = np.abs(ref_w.numpy() - weights[codec]).max(axis=1)
    assert np.all(err <= max_abs_error(codec, weights[codec]))
    if codec != "float32":
        assert err.max() > 0  # (the bound is not vacuous: the codec does round)
    pad = int(rng.integers(0, ROWS))
    for padding_idx in (None, pad, pad - ROWS):
        ours = EmbeddingBag(store, codec, mode=mode, padding_idx=padding_idx)
        theirs = nn.EmbeddingBag.from_pretrained(ref_w, mode=mode, padding_idx=padding_idx)
        assert (ours.num_embeddings, ours.embedding_dim) == (ROWS, DIM)
        assert ours.padding_idx == theirs.padding_idx
        x, off = ragged(rng, 40, dtype)
        if padding_idx is not None:
            x[::3] = pad  # the padding row in many bags, some bags only padding
        out = ours(x, off)
        assert out.dtype == torch.float32 and out.shape == (40, DIM)
        torch.testing.assert_close(out, theirs(x, off), rtol=1e-5, atol=1e-5)
        # 2-D input: fixed-size bags, offsets None.
        x2 = torch.tensor(rng.integers(0, ROWS, (9, 4)), dtype=dtype)
        torch.testing.assert_close(ours(x2), theirs(x2), rtol=1e-5, atol=1e-5)
        # include_last_offset: offsets carry the end of the last bag.
        ours_l = EmbeddingBag(store, codec, mode, padding_idx, include_last_offset=True)
        theirs_l = nn.EmbeddingBag.from_pretrained(
            ref_w, mode=mode, padding_idx=padding_idx, include_last_offset=True
        )
        off_l = torch.cat([off, torch.tensor([x.numel()], dtype=dtype)])
        torch.testing.assert_close(ours_l(x, off_l), theirs_l(x, off_l), rtol=1e-5, atol=1e-5)
        if mode == "sum":
            psw = torch.tensor(rng.standard_normal(x.numel()), dtype=torch.float32)
            torch.testing.assert_close(
                ours(x, off, per_sample_weights=psw),
                theirs(x, off, per_sample_weights=psw),
                rtol=1e-5,
                atol=1e-5,
            )
            psw2 = torch.rand(x2.shape, dtype=torch.float32)
            torch.testing.assert_close(ours(x2, None, psw2), theirs(x2, None, psw2))


def test_embedding_bag_against_the_trained_weights_within_the_codec_bound(store, weights):
    """Pooled sums of k rows are off by at most the sum of the rows' bounds."""
    rng = np.random.default_rng(3)
    x, off = ragged(rng, 50, torch.int64)
    for codec in CODECS:
        out = EmbeddingBag(store, codec)(x, off).numpy()
        exact = nn.EmbeddingBag.from_pretrained(torch.from_numpy(weights[codec]), mode="sum")
        bound = max_abs_error(codec, weights[codec])
        per_bag = np.add.reduceat(
            np.append(bound[x.numpy()], 0.0), np.minimum(off.numpy(), x.numel())
        )
        per_bag[np.diff(np.append(off.numpy(), x.numel())) == 0] = 0.0
        diff = np.abs(out - exact(x, off).numpy()).max(axis=1)
        assert np.all(diff <= per_bag + 1e-5)


def test_embedding_bag_errors(store):
    with pytest.raises(UnknownTableError):
        EmbeddingBag(store, "nope")
    with pytest.raises(InvalidArgumentError):
        EmbeddingBag(store, "float32", mode="median")
    with pytest.raises(InvalidArgumentError):
        EmbeddingBag(store, "float32", padding_idx=ROWS)
    m = EmbeddingBag(store, "float32", mode="mean")
    with pytest.raises(ValueError):  # 1-D input needs offsets, as torch's
        m(torch.tensor([1, 2]))
    with pytest.raises(ValueError):  # per_sample_weights only with sum, as torch's
        m(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2))
    with pytest.raises(IndexError):
        m(torch.tensor([1, ROWS]), torch.tensor([0]))
    with pytest.raises(IdOutOfRangeError):
        m(torch.tensor([-1]), torch.tensor([0]))


class FakeKJT:
    """What the collection reads of a TorchRec KeyedJaggedTensor."""

    def __init__(self, keys, values, lengths, weights=None):
        self._keys, self._values, self._lengths, self._weights = keys, values, lengths, weights

    def keys(self):
        return self._keys

    def values(self):
        return self._values

    def lengths(self):
        return self._lengths

    def offsets(self):
        return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(self._lengths, 0)])

    def weights_or_none(self):
        return self._weights


def test_collection_per_feature_modes_in_one_call(store, monkeypatch):
    rng = np.random.default_rng(11)
    feats = {
        "f_sum": "float32",
        "f_max": Feature("float16", "max"),
        "f_mean": Feature("int8", "mean", padding_idx=-1),
    }
    ebc = EmbeddingBagCollection(store, feats)
    refs = {
        "f_sum": nn.EmbeddingBag.from_pretrained(decoded(store, "float32"), mode="sum"),
        "f_max": nn.EmbeddingBag.from_pretrained(decoded(store, "float16"), mode="max"),
        "f_mean": nn.EmbeddingBag.from_pretrained(
            decoded(store, "int8"), mode="mean", padding_idx=ROWS - 1
        ),
    }
    calls = []
    real = store.lookup_many
    monkeypatch.setattr(store, "lookup_many", lambda *a, **k: calls.append(a) or real(*a, **k))
    batch = 16
    inputs = {n: ragged(rng, batch, torch.int64) for n in feats}
    inputs["f_mean"][0][::2] = ROWS - 1
    inputs["unused"] = ragged(rng, batch, torch.int64)  # features it does not pool: ignored
    out = ebc(inputs)
    assert list(out) == list(feats) and len(calls) == 1
    for n, (x, off) in ((n, inputs[n]) for n in feats):
        torch.testing.assert_close(out[n], refs[n](x, off), rtol=1e-5, atol=1e-5)

    # The same bags as a KeyedJaggedTensor (values of every key concatenated, lengths per bag).
    keys = list(feats)
    lengths = torch.cat([torch.diff(torch.cat([o, torch.tensor([x.numel()])])) for x, o in
                         (inputs[k] for k in keys)])  # fmt: skip
    values = torch.cat([inputs[k][0] for k in keys])
    out_kjt = ebc(FakeKJT(keys, values, lengths))
    assert len(calls) == 2
    for n in feats:
        torch.testing.assert_close(out_kjt[n], out[n])

    with pytest.raises(InvalidArgumentError, match="f_max"):
        ebc({"f_sum": inputs["f_sum"], "f_mean": inputs["f_mean"]})


def test_collection_weights_and_shared_tables(store):
    """Weighted KJT features, and two features of one table: two lookup_many rounds."""
    rng = np.random.default_rng(5)
    ebc = EmbeddingBagCollection(store, {"a": "float32", "b": Feature("float32", "max")})
    assert len(ebc._rounds) == 2
    ref_sum = nn.EmbeddingBag.from_pretrained(decoded(store, "float32"), mode="sum")
    ref_max = nn.EmbeddingBag.from_pretrained(decoded(store, "float32"), mode="max")
    lengths = torch.tensor(rng.integers(0, 5, 20))
    values = torch.tensor(rng.integers(0, ROWS, int(lengths.sum())))
    w = torch.rand(values.numel())
    out = ebc(FakeKJT(["b", "a"], values, lengths, None))
    nb = int(lengths[:10].sum())
    off_b = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths[:10], 0)[:-1]])
    off_a = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths[10:], 0)[:-1]])
    torch.testing.assert_close(out["b"], ref_max(values[:nb], off_b))
    torch.testing.assert_close(out["a"], ref_sum(values[nb:], off_a))
    ebc_w = EmbeddingBagCollection(store, {"a": "float32"})
    out_w = ebc_w(FakeKJT(["a", "z"], values, lengths, w))  # "z" is not pooled
    torch.testing.assert_close(
        out_w["a"], ref_sum(values[:nb], off_b, per_sample_weights=w[:nb]), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(InvalidShapeError):
        ebc(FakeKJT(["a", "b"], values, lengths[:-1]))  # 19 lengths over 2 keys


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.ModuleDict(
            {
                "user": nn.EmbeddingBag(50, 8, mode="mean"),
                "item": nn.EmbeddingBag(80, 8, mode="max", padding_idx=0),
            }
        )
        self.tag = nn.EmbeddingBag(30, 8, mode="sum", include_last_offset=True)
        self.top = nn.Linear(24, 1)

    def forward(self, u, uo, i, io, t, to):
        z = torch.cat([self.emb["user"](u, uo), self.emb["item"](i, io), self.tag(t, to)], 1)
        return self.top(z)


def model_inputs(seed: int):
    rng = np.random.default_rng(seed)
    u = torch.tensor(rng.integers(0, 50, 30))
    i = torch.tensor(rng.integers(0, 80, 30))
    i[::4] = 0
    t = torch.tensor(rng.integers(0, 30, 30))
    off = torch.tensor([0, 3, 3, 10, 21, 29])
    return u, off, i, off, t, torch.cat([off, torch.tensor([30])])


def test_export_then_swap_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = TwoTower().eval()
    path = tmp_path / "store"
    infos = export_embeddings(model, path)
    assert set(infos) == {"emb.user", "emb.item", "tag"}
    assert infos["emb.item"].rows == 80 and infos["tag"].dim == 8
    with torch.no_grad():
        expected = model(*model_inputs(1))
    swapped = swap_embedding_bags(model, path)  # a path: opened read-only
    assert swapped is model
    assert isinstance(model.emb["user"], EmbeddingBag) and model.emb["user"].mode == "mean"
    assert model.emb["item"].padding_idx == 0 and model.tag.include_last_offset
    assert model.emb["item"].store is model.tag.store  # one store opened for all
    with torch.no_grad():
        torch.testing.assert_close(model(*model_inputs(1)), expected)
    # Exporting the same modules again: a name clash, the store unchanged.
    before = bandstore.open(path).version
    with pytest.raises(TableExistsError):
        export_embeddings(TwoTower(), path)
    assert bandstore.open(path).version == before


def test_swap_by_last_component_and_checks(tmp_path):
    torch.manual_seed(1)
    model = TwoTower().eval()
    path = tmp_path / "s"
    with bandstore.create(path, block_size=512) as s:  # tables named by last component only
        s.add_tables({"user": model.emb["user"].weight.detach().numpy(),
                      "item": model.emb["item"].weight.detach().numpy()})  # fmt: skip
    with torch.no_grad():
        expected = model(*model_inputs(2))
    with bandstore.open(path) as s:
        swap_embedding_bags(model, s)
        assert isinstance(model.emb["user"], EmbeddingBag)
        assert isinstance(model.tag, nn.EmbeddingBag)  # no table "tag": kept
        with torch.no_grad():
            torch.testing.assert_close(model(*model_inputs(2)), expected)

    other = TwoTower()
    other.emb["item"] = nn.EmbeddingBag(81, 8)  # rows differ from the table
    with bandstore.open(path) as s, pytest.raises(InvalidShapeError, match="emb.item"):
        swap_embedding_bags(other, s)
    assert isinstance(other.emb["user"], nn.EmbeddingBag)  # nothing replaced
    other = TwoTower()
    other.emb["user"] = nn.EmbeddingBag(50, 8, max_norm=1.0)
    with bandstore.open(path) as s, pytest.raises(InvalidArgumentError, match="max_norm"):
        swap_embedding_bags(other, s)


def test_export_match_and_embedding_modules(tmp_path):
    model = nn.Sequential(nn.Embedding(20, 4), nn.EmbeddingBag(10, 4), nn.Linear(4, 4))
    infos = export_embeddings(model, tmp_path / "s", codec="int8", match=r"^0$")
    assert list(infos) == ["0"] and infos["0"].codec == "int8"
    with bandstore.open(tmp_path / "s") as s:
        got = s.lookup("0", np.arange(20))
    w = model[0].weight.detach().numpy()
    assert np.all(np.abs(got - w).max(axis=1) <= max_abs_error("int8", w))
    with pytest.raises(InvalidArgumentError):
        export_embeddings(nn.Linear(3, 3), tmp_path / "t")
    assert not (tmp_path / "t").exists()


class Holder(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, off):
        return self.a(x, off)


def test_pickle_deepcopy_and_torch_save(store_path):
    torch.manual_seed(2)
    rng = np.random.default_rng(9)
    x, off = ragged(rng, 20, torch.int64)
    with bandstore.open(
        store_path, cache_bytes=4096, options=ServeOptions(verify_reads=False)
    ) as s:
        model = Holder(EmbeddingBag(s, "float16", mode="max"))
        expected = model(x, off)

        copied = copy.deepcopy(model)
        assert copied.a.store is not s and copied.a.store.root == s.root.absolute()
        torch.testing.assert_close(copied(x, off), expected)
        assert (
            copied.a.store.cache_info()["float16"]["cache_bytes"]
            == (s.cache_info()["float16"]["cache_bytes"])
        )
        assert copied.a.store._verify_reads is False  # open options carried over

        buf = io.BytesIO()
        torch.save(model, buf)
        assert len(buf.getvalue()) < 20_000  # a reference, not the table's rows
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        torch.testing.assert_close(loaded(x, off), expected)

        m2 = pickle.loads(pickle.dumps(model.a))
        torch.testing.assert_close(m2(x, off), expected)
        for store in (copied.a.store, loaded.a.store, m2.store):
            store.close()


def test_writable_store_modules_refuse_to_pickle(tmp_path):
    with bandstore.create(tmp_path / "w", block_size=512) as s:
        s.add_table("t", np.ones((10, 4), np.float32))
        m = EmbeddingBag(s, "t")
        with pytest.raises(StorePickleError, match="writable"):
            pickle.dumps(m)


class VariableStrideKJT(FakeKJT):
    """A KeyedJaggedTensor with a batch size per key (TorchRec's variable stride)."""

    def __init__(self, keys, values, lengths, strides):
        super().__init__(keys, values, lengths)
        self._strides = strides

    def stride_per_key(self):
        return self._strides


def test_collection_variable_stride(store):
    ebc = EmbeddingBagCollection(store, {"a": "float32", "b": Feature("int8", "mean")})
    lengths = torch.tensor([2, 0, 3, 1, 4])  # a: 2 bags, b: 3 bags
    values = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    out = ebc(VariableStrideKJT(["a", "b"], values, lengths, [2, 3]))
    ref_a = nn.EmbeddingBag.from_pretrained(decoded(store, "float32"), mode="sum")
    ref_b = nn.EmbeddingBag.from_pretrained(decoded(store, "int8"), mode="mean")
    torch.testing.assert_close(out["a"], ref_a(values[:2], torch.tensor([0, 2])))
    torch.testing.assert_close(out["b"], ref_b(values[2:], torch.tensor([0, 3, 4])))
    with pytest.raises(InvalidShapeError):
        ebc(VariableStrideKJT(["a", "b"], values, lengths, [2, 2]))
