"""Merged predictions (one lookup and one dense forward per batch) equal to serving each request
alone, bit for bit; the binary predict body; the store's public recorder pause."""

from __future__ import annotations

import io
import json
import threading
import warnings

import numpy as np
import pytest
from helpers import make_store, random_tables

pytest.importorskip("starlette")
pytest.importorskip("safetensors")
torch = pytest.importorskip("torch")

with warnings.catch_warnings():  # starlette's note that httpx will be replaced by httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

import bandstore  # noqa: E402
from bandstore.server import ServerOptions, create_app  # noqa: E402
from bandstore.server.backend import StoreBackend  # noqa: E402
from bandstore.server.batching import serve_batch  # noqa: E402
from bandstore.server.model import DLRM  # noqa: E402
from bandstore.server.predict import NPZ, parse_json_predict, predict_npz_body  # noqa: E402

ROWS = (50, 7, 120)


@pytest.fixture(scope="module")
def dlrm(tmp_path_factory):
    from bandstore.server.dlrm_torch import TorchDLRM, embedding_tables, save_dense
    from bandstore.server.model import DLRMConfig, Feature

    tmp = tmp_path_factory.mktemp("dlrm")
    torch.manual_seed(3)
    feats = tuple(Feature(f"f{i}", f"t{i}", "mean" if i == 1 else "sum") for i in range(3))
    config = DLRMConfig(dense_features=13, embedding_dim=8, bottom_mlp=(16, 8),
                        top_mlp=(12, 6, 1), features=feats)  # fmt: skip
    model = TorchDLRM(config, {f.name: r for f, r in zip(feats, ROWS, strict=True)}).eval()
    save_dense(model, tmp / "model")
    make_store(tmp / "store", embedding_tables(model))
    return tmp, model


def _body(rng, model, n) -> dict:
    sparse = {}
    for f in model.config.features:
        sizes = rng.integers(0, 4, n)
        sparse[f.name] = {
            "indices": rng.integers(0, model.emb[f.name].num_embeddings, int(sizes.sum())).tolist(),
            "offsets": (np.cumsum(sizes) - sizes).astype(int).tolist(),
        }
    return {"dense": rng.integers(-2, 500, (n, 13)).astype(float).tolist(), "sparse": sparse}


def _npz(body: dict, keys=None) -> bytes:
    sparse = {k: (v["indices"], v["offsets"]) for k, v in body["sparse"].items()}
    return predict_npz_body(body["dense"], sparse, keys)


def _torch_scores(model, body) -> np.ndarray:
    i64 = torch.int64
    sparse = {
        f: (torch.tensor(p["indices"], dtype=i64), torch.tensor(p["offsets"], dtype=i64))
        for f, p in body["sparse"].items()
    }
    with torch.no_grad():
        dense = torch.tensor(body["dense"], dtype=torch.float32).reshape(-1, 13)
        return torch.sigmoid(model(dense, sparse)).numpy()


def test_forward_is_the_same_for_a_sample_whatever_shares_its_call(dlrm, rng):
    tmp, model = dlrm
    m = DLRM.load(tmp / "model")
    n = 203
    dense = rng.integers(-5, 1000, (n, 13)).astype(np.float32)
    pooled = {f.name: rng.standard_normal((n, 8)).astype(np.float32) for f in m.config.features}
    full = m.forward(dense, pooled)
    for lo, hi in ((0, 1), (5, 6), (7, 40), (40, 203)):
        part = m.forward(dense[lo:hi], {k: v[lo:hi] for k, v in pooled.items()})
        assert np.array_equal(part, full[lo:hi])
    assert full.dtype == np.float32 and full.shape == (n,)
    assert m.forward(dense[:0], {k: v[:0] for k, v in pooled.items()}).shape == (0,)


def test_serve_batch_merges_predictions_and_lookups_identically(dlrm, rng):
    """One lookup call and one forward for the whole batch; each item's answer equals
    serving it alone (no cache: a cache's hits are pooled before misses, see test_server)."""
    tmp, model = dlrm
    m = DLRM.load(tmp / "model")
    with bandstore.open(tmp / "store", cache_bytes=0) as s:
        backend = StoreBackend(s)
        specs = backend.tables()
        items = []
        for i in range(9):
            req, dense = parse_json_predict(m.config, specs, _body(rng, model, int(i % 4) * 3))
            items.append((req, dense))
        # a plain lookup in the same batch, pooling t1 by max where predictions use mean
        lookup = {
            "t1": items[1][0]["t1"].__class__(
                np.array([1, 2, 3], np.int64), np.array([0, 2], np.int64), None, "max"
            )
        }
        items.insert(4, (lookup, None))
        calls = []
        real = backend.lookup
        backend.lookup = lambda r, modes: calls.append(dict(modes)) or real(r, modes)
        forwards = []
        real_forward = m.forward
        m.forward = lambda d, p: forwards.append(d.shape[0]) or real_forward(d, p)
        merged = serve_batch(backend, m, items)
        assert len(forwards) == 1 and forwards[0] == sum(
            d.shape[0] for _, d in items if d is not None
        )
        assert len(calls) == 2  # t1 is pooled two ways: two calls, not one per request
        for (req, dense), got in zip(items, merged, strict=True):
            (alone,) = serve_batch(backend, m, [(req, dense)])
            if dense is None:
                assert np.array_equal(got["t1"], alone["t1"])
                w = model.emb["f1"].weight.detach().numpy()
                np.testing.assert_array_equal(got["t1"], np.stack([w[[1, 2]].max(0), w[3]]))
                continue
            assert isinstance(got, np.ndarray) and got.dtype == np.float32
            assert np.array_equal(got, alone)
        # a failing forward fails the predictions of the batch and not the lookup
        m.forward = lambda d, p: (_ for _ in ()).throw(RuntimeError("boom"))
        out = serve_batch(backend, m, items)
        assert isinstance(out[0], RuntimeError) and isinstance(out[4], dict)


def test_concurrent_predictions_merge_and_equal_one_by_one(dlrm, rng):
    tmp, model = dlrm
    bodies = [_body(rng, model, int(rng.integers(1, 9))) for _ in range(16)]
    opts = {"model": str(tmp / "model")}
    with TestClient(create_app(bandstore.open(tmp / "store", cache_bytes=0),
                               ServerOptions(**opts, max_batch_size=0))) as c:  # fmt: skip
        alone = [np.asarray(c.post("/v1/predict", json=b).json()["scores"]) for b in bodies]
    results: list = [None] * len(bodies)
    app = create_app(
        bandstore.open(tmp / "store", cache_bytes=0),
        ServerOptions(**opts, max_wait_ms=200, max_batch_size=10_000),
    )
    with TestClient(app) as c:
        barrier = threading.Barrier(len(bodies))

        def send(i):
            barrier.wait()
            if i % 2:
                results[i] = c.post("/v1/predict", content=_npz(bodies[i]),
                                    headers={"content-type": NPZ})  # fmt: skip
            else:
                results[i] = c.post("/v1/predict", json=bodies[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = c.get("/metrics").text
    for r, exp, b in zip(results, alone, bodies, strict=True):
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["scores"])
        assert np.array_equal(got, exp)  # bit for bit, as float64 text of float32 scores
        np.testing.assert_allclose(got, _torch_scores(model, b), atol=1e-5, rtol=0)
    batches = float(metrics.split("bandstore_batch_bags_count ")[1].split()[0])
    assert batches < len(bodies) / 2, metrics  # they were merged


def test_binary_predict_body_equals_json_and_rejects_mistakes(dlrm, rng):
    tmp, model = dlrm
    app = create_app(bandstore.open(tmp / "store"), ServerOptions(model=str(tmp / "model")))
    npz = {"content-type": NPZ}
    with TestClient(app) as c:
        for n in (1, 6, 0):
            body = _body(rng, model, n)
            want = c.post("/v1/predict", json=body)
            assert want.status_code == 200, want.text
            r = c.post("/v1/predict", content=_npz(body), headers=npz)
            assert r.status_code == 200, r.text
            assert r.json() == want.json()
            # features in another order, scores back as npz
            r = c.post("/v1/predict", content=_npz(body, keys=["f2", "f0", "f1"]),
                       headers={**npz, "accept": NPZ})  # fmt: skip
            assert r.headers["content-type"] == NPZ
            got = np.load(io.BytesIO(r.content), allow_pickle=False)["scores"]
            assert got.dtype == np.float32
            assert np.array_equal(got.astype(np.float64), np.asarray(want.json()["scores"]))

        body = _body(rng, model, 4)
        good = dict(np.load(io.BytesIO(_npz(body)), allow_pickle=False))

        def send(**change):
            arrays = {**good, **change}
            arrays = {k: v for k, v in arrays.items() if v is not None}
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            r = c.post("/v1/predict", content=buf.getvalue(), headers=npz)
            return r.status_code, r.json()["error"]["type"], r.json()["error"]["message"]

        values = good["values"].copy()
        f2_start = int(good["lengths"][:2].sum())
        assert good["lengths"][2].sum() > 0
        values[f2_start] = ROWS[2]  # one past the end of t2
        status, kind, msg = send(values=values)
        assert (status, kind) == (422, "IdOutOfRangeError") and "'t2'" in msg
        assert send(values=good["values"][:-1] if good["values"].size else np.ones(1, int))[:2] == (
            422,
            "InvalidShapeError",
        )
        neg = good["lengths"].copy()
        neg[0, 0], neg[0, 1] = -1, neg[0, 1] + 1
        assert send(lengths=neg)[:2] == (422, "InvalidShapeError")
        assert send(lengths=good["lengths"][:, :3])[:2] == (422, "InvalidShapeError")
        assert send(keys=np.array(["f0", "f1", "zz"]))[:2] == (422, "InvalidArgumentError")
        assert send(keys=np.array(["f0", "f0", "f1"]))[:2] == (422, "InvalidArgumentError")
        assert send(values=good["values"].astype(np.float32) + 0.5)[:2] == (
            400,
            "InvalidDtypeError",
        )
        assert send(dense=good["dense"][:, :12])[:2] == (422, "InvalidShapeError")
        assert send(lengths=None)[:2] == (400, "MalformedRequestError")
        assert send(extra=np.zeros(1))[:2] == (400, "MalformedRequestError")
        r = c.post("/v1/predict", content=b"not a zip", headers=npz)
        assert r.status_code == 400 and r.json()["error"]["type"] == "MalformedRequestError"
        r = c.post("/v1/predict", content=json.dumps(body).encode(),
                   headers={"content-type": "text/csv"})  # fmt: skip
        assert r.status_code == 400
        assert c.post("/v1/predict", content=_npz(body), headers=npz).status_code == 200


def test_recording_paused_records_nothing_and_restores(tmp_path):
    tables = random_tables({"a": 40, "b": 30}, 4, seed=2)
    path = make_store(tmp_path / "s", tables)
    rec = tmp_path / "rec"
    one = {"a": ([1, 2], [0]), "b": ([3], [0])}
    req = {k: (np.asarray(i), np.asarray(o)) for k, (i, o) in one.items()}
    with bandstore.open(path, record=rec, sample_rate=1.0) as s:
        recorder = s.recorder
        with s.recording_paused():
            assert s.recorder is None
            s.lookup_many(req)
            s.lookup_many({"a": (np.asarray([5]), np.asarray([0])),
                           "b": (np.asarray([6]), np.asarray([0]))})  # fmt: skip
        assert s.recorder is recorder
        with pytest.raises(ZeroDivisionError), s.recording_paused():
            1 / 0  # noqa: B018
        assert s.recorder is recorder  # back after an error too
        s.lookup_many(req)
    with bandstore.open(path) as s, s.recording_paused():  # no recorder: a no-op
        assert s.recorder is None
    from bandstore.traces.recorder import read_recorded

    trace = read_recorded(rec)
    assert trace.n_queries == 1
    assert trace.table("a")[0].tolist() == [1, 2] and trace.table("b")[0].tolist() == [3]


def test_store_backend_serves_mixed_modes_in_one_call(tmp_path):
    tables = random_tables({"a": 40, "b": 30}, 4, seed=5)
    with bandstore.open(make_store(tmp_path / "s", tables), cache_bytes=0) as s:
        backend = StoreBackend(s)
        idx, off = np.array([1, 2, 3], np.int64), np.array([0, 1], np.int64)
        out = backend.lookup({"a": (idx, off, None), "b": (idx, off, None)},
                             {"a": "max", "b": "mean"})  # fmt: skip
    np.testing.assert_allclose(out["a"], [tables["a"][1], tables["a"][[2, 3]].max(0)], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [tables["b"][1], tables["b"][[2, 3]].mean(0)], rtol=1e-6)
