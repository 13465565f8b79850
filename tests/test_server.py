"""``bandstore serve``: endpoints, 4xx answers, batching identical to one-by-one, the npz
content type, metrics, the DLRM's predictions against torch, and a real process on loopback."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import make_store, random_tables
from reference import embedding_bag_ref

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

with warnings.catch_warnings():  # starlette's note that httpx will be replaced by httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

import bandstore  # noqa: E402
from bandstore.server import ServerOptions, create_app  # noqa: E402
from bandstore.server.backend import StoreBackend  # noqa: E402
from bandstore.server.batching import serve_merged, validate_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"a": 300, "b": 90, "c": 41}
DIM = 8


@pytest.fixture(scope="module")
def tables() -> dict[str, np.ndarray]:
    return random_tables(SIZES, DIM, seed=7)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, tables) -> Path:
    return make_store(tmp_path_factory.mktemp("serve") / "s", tables)


def client(path: Path, cache_bytes: int | None = None, **options) -> TestClient:
    store = bandstore.open(path, cache_bytes=cache_bytes)
    return TestClient(create_app(store, ServerOptions(**options)))


def ref(tables, name, part) -> np.ndarray:
    return embedding_bag_ref(
        tables[name],
        np.asarray(part["indices"], dtype=np.int64),
        np.asarray(part["offsets"], dtype=np.int64),
        part.get("mode", "sum"),
        None if part.get("per_sample_weights") is None else np.asarray(part["per_sample_weights"]),
    )


def random_body(rng: np.random.Generator, names=("a", "b", "c"), bags: int = 5) -> dict:
    body = {}
    for n in names:
        sizes = rng.integers(0, 5, bags)
        part = {
            "indices": (rng.zipf(1.3, int(sizes.sum())) % SIZES[n]).tolist(),
            "offsets": np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist(),
            "mode": str(rng.choice(["sum", "mean", "max"])),
        }
        if part["mode"] == "sum" and rng.random() < 0.5:
            part["per_sample_weights"] = rng.standard_normal(int(sizes.sum())).tolist()
        body[n] = part
    return {"tables": body}


# ---- endpoints -----------------------------------------------------------------------------
def test_health_ready_tables(store_path):
    with client(store_path) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        got = {t["name"]: t for t in c.get("/v1/tables").json()["tables"]}
        assert got == {
            n: {"name": n, "rows": rows, "dim": DIM, "codec": "float32"}
            for n, rows in SIZES.items()
        }


def test_lookup_json_matches_embedding_bag(store_path, tables, rng):
    with client(store_path) as c:
        for _ in range(5):
            body = random_body(rng)
            r = c.post("/v1/lookup", json=body)
            assert r.status_code == 200, r.text
            out = r.json()["tables"]
            assert set(out) == set(body["tables"])
            for n, part in body["tables"].items():
                np.testing.assert_allclose(
                    np.asarray(out[n], dtype=np.float32), ref(tables, n, part), rtol=1e-5, atol=1e-5
                )
        # a query parameter sets the default mode
        part = {"indices": [1, 2, 3], "offsets": [0, 1]}
        r = c.post("/v1/lookup?mode=max", json={"tables": {"a": part}})
        np.testing.assert_allclose(
            r.json()["tables"]["a"], ref(tables, "a", {**part, "mode": "max"}), rtol=1e-6
        )


def test_lookup_npz_both_ways(store_path, tables):
    buf = io.BytesIO()
    np.savez(
        buf,
        **{
            "a/indices": np.array([5, 6, 7, 299], dtype=np.int32),
            "a/offsets": np.array([0, 3], dtype=np.int64),
            "a/per_sample_weights": np.array([0.5, 1, 2, -1], dtype=np.float32),
            "b/indices": np.array([1, 2, 89]),
            "b/offsets": np.array([0, 0, 2]),
            "b/mode": np.array("max"),
        },
    )
    with client(store_path) as c:
        headers = {"content-type": "application/x-npz", "accept": "application/x-npz"}
        r = c.post("/v1/lookup", content=buf.getvalue(), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-npz"
        z = np.load(io.BytesIO(r.content), allow_pickle=False)
        assert sorted(z.files) == ["a", "b"] and z["a"].dtype == np.float32
        wa = np.array([0.5, 1, 2, -1], dtype=np.float32)
        np.testing.assert_allclose(
            z["a"], embedding_bag_ref(tables["a"], [5, 6, 7, 299], [0, 3], "sum", wa), rtol=1e-6
        )
        np.testing.assert_allclose(
            z["b"], embedding_bag_ref(tables["b"], [1, 2, 89], [0, 0, 2], "max"), rtol=1e-6
        )
        # an npz request answered in JSON without the Accept header
        r = c.post(
            "/v1/lookup", content=buf.getvalue(), headers={"content-type": "application/x-npz"}
        )
        np.testing.assert_allclose(r.json()["tables"]["b"], z["b"], rtol=1e-6)


# ---- client mistakes -----------------------------------------------------------------------
def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"a/indices": np.array([{"x": 1}], dtype=object), "a/offsets": np.array([0])})
    return buf.getvalue()


BAD = [
    # (body, content type, status, error type)
    (b"{not json", "application/json", 400, "MalformedRequestError"),
    (b'{"tables": [1, 2]}', "application/json", 400, "MalformedRequestError"),
    (b'{"tables": {"a": {"indices": [1]}}}', "application/json", 400, "MalformedRequestError"),
    (b'{"tables": {"a": {"indices": [1.5], "offsets": [0]}}}', "application/json", 400,
     "InvalidDtypeError"),
    (b'{"tables": {"a": {"indices": ["x"], "offsets": [0]}}}', "application/json", 400,
     "InvalidDtypeError"),
    (b'{"tables": {"a": {"indices": [1, [2]], "offsets": [0]}}}', "application/json", 400,
     "MalformedRequestError"),
    (b'{"tables": {"a": {"indices": [1], "offsets": [0], "x": 1}}}', "application/json", 400,
     "MalformedRequestError"),
    (b'{"tables": {}}', "application/json", 400, "MalformedRequestError"),
    (b"indices=1", "text/plain", 400, "MalformedRequestError"),
    (b"PK\x03\x04 not a zip", "application/x-npz", 400, "MalformedRequestError"),
    (_pickled_npz(), "application/x-npz", 400, "MalformedRequestError"),
    (b'{"tables": {"zz": {"indices": [1], "offsets": [0]}}}', "application/json", 404,
     "UnknownTableError"),
    (b'{"tables": {"a": {"indices": [300], "offsets": [0]}}}', "application/json", 422,
     "IdOutOfRangeError"),
    (b'{"tables": {"a": {"indices": [-1], "offsets": [0]}}}', "application/json", 422,
     "IdOutOfRangeError"),
    (b'{"tables": {"a": {"indices": [1, 2], "offsets": [1]}}}', "application/json", 422,
     "InvalidOffsetsError"),
    (b'{"tables": {"a": {"indices": [1, 2], "offsets": [0, 2, 1]}}}', "application/json", 422,
     "InvalidOffsetsError"),
    (b'{"tables": {"a": {"indices": [1, 2], "offsets": [0, 3]}}}', "application/json", 422,
     "InvalidOffsetsError"),
    (b'{"tables": {"a": {"indices": [1], "offsets": [0], "mode": "median"}}}',
     "application/json", 422, "InvalidArgumentError"),
    (b'{"tables": {"a": {"indices": [1], "offsets": [0], "mode": "max", '
     b'"per_sample_weights": [1.0]}}}', "application/json", 422, "InvalidArgumentError"),
    (b'{"tables": {"a": {"indices": [1], "offsets": [0], "per_sample_weights": [1, 2]}}}',
     "application/json", 422, "InvalidShapeError"),
]  # fmt: skip


def test_client_mistakes_are_4xx_and_the_server_stays_healthy(store_path, tables):
    good = {"tables": {"a": {"indices": [3, 4], "offsets": [0]}}}
    with client(store_path, max_body_bytes=4096) as c:
        for body, ctype, status, kind in BAD:
            r = c.post("/v1/lookup", content=body, headers={"content-type": ctype})
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert err["type"] == kind, (body, err)
            assert err["message"]
            ok = c.post("/v1/lookup", json=good)
            assert ok.status_code == 200
        np.testing.assert_allclose(
            ok.json()["tables"]["a"], ref(tables, "a", good["tables"]["a"]), rtol=1e-6
        )
        # 413: declared too large, and streamed (chunked, no Content-Length) too large
        big = json.dumps({"tables": {"a": {"indices": [1] * 5000, "offsets": [0]}}}).encode()
        r = c.post("/v1/lookup", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLargeError"

        def chunks():
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        r = c.post("/v1/lookup", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        # unknown route and method: JSON errors too
        r = c.get("/v2/nothing")
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
        assert c.get("/v1/lookup").status_code == 405
        assert c.get("/readyz").status_code == 200
        metrics = c.get("/metrics").text
        assert 'bandstore_rejected_requests_total{reason="IdOutOfRangeError"} 2.0' in metrics
        assert 'bandstore_rejected_requests_total{reason="RequestTooLargeError"} 2.0' in metrics
        assert c.post("/v1/lookup", json=good).status_code == 200


def test_full_queue_is_429_with_retry_after(store_path):
    good = {"tables": {"b": {"indices": [1], "offsets": [0]}}}
    with client(store_path, max_queue=1, max_wait_ms=600, max_batch_size=10_000) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=c.post("/v1/lookup", json=good)))
        t.start()
        time.sleep(0.2)  # the first request waits 600 ms in the queue for company
        r = c.post("/v1/lookup", json=good)
        t.join()
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "QueueFullError"
        assert first["r"].status_code == 200
        assert c.post("/v1/lookup", json=good).status_code == 200
        assert (
            'bandstore_rejected_requests_total{reason="QueueFullError"} 1.0'
            in c.get("/metrics").text
        )


# ---- batching --------------------------------------------------------------------------------
def test_concurrent_requests_are_merged_and_identical_to_one_by_one(store_path, rng):
    bodies = [random_body(rng, names=("a", "b") if i % 3 else ("a", "c")) for i in range(24)]
    bodies.append({"tables": {"a": {"indices": [7, 8], "offsets": []}}})  # no bags, some ids
    bodies.append({"tables": {"a": {"indices": [], "offsets": [0, 0]}}})  # empty bags
    # Bit for bit needs the same cache state: a bag's hits are pooled before its misses, so
    # with a cache the float sums' order (last bit) depends on what earlier calls cached.
    with bandstore.open(store_path, cache_bytes=0) as alone:  # the one-by-one reference
        expected = []
        for b in bodies:
            out = {}
            for n, p in b["tables"].items():
                w = p.get("per_sample_weights")
                out[n] = alone.embedding_bag(
                    n, np.asarray(p["indices"], dtype=np.int64),
                    np.asarray(p["offsets"], dtype=np.int64), mode=p.get("mode", "sum"),
                    per_sample_weights=None if w is None else np.asarray(w, np.float32),
                )  # fmt: skip
            expected.append(out)
    results: list = [None] * len(bodies)
    with client(store_path, cache_bytes=0, max_wait_ms=200, max_batch_size=10_000) as c:
        barrier = threading.Barrier(len(bodies))

        def send(i):
            barrier.wait()
            results[i] = c.post("/v1/lookup", json=bodies[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = c.get("/metrics").text
    for r, exp in zip(results, expected, strict=True):
        assert r.status_code == 200, r.text
        got = r.json()["tables"]
        assert set(got) == set(exp)
        for n in exp:
            assert np.array_equal(
                np.asarray(got[n], dtype=np.float32).reshape(exp[n].shape), exp[n]
            )
    batches = float(metrics.split("bandstore_batch_bags_count ")[1].split()[0])
    assert batches < len(bodies) / 2, metrics  # they were merged


def test_serve_merged_equals_separate_calls(store_path, tables, rng):
    """Merging rebases offsets, keeps zero-bag requests' ids out of their neighbours' bags,
    fills weights of 1 for unweighted parts, and splits by mode (no cache: see above)."""
    with bandstore.open(store_path, cache_bytes=0) as s:
        backend = StoreBackend(s)
        specs = backend.tables()
        reqs = []
        for i in range(12):
            body = random_body(
                rng, names=("a", "b", "c")[: 1 + i % 3], bags=int(rng.integers(0, 4))
            )
            reqs.append({
                n: validate_table(n, specs[n], p["indices"], p["offsets"],
                                  p.get("per_sample_weights"), p["mode"])
                for n, p in body["tables"].items()
            })  # fmt: skip
        reqs.append({"a": validate_table("a", specs["a"], [9, 9, 9], [], None, "sum")})
        merged = serve_merged(backend, reqs)
        for req, got in zip(reqs, merged, strict=True):
            (alone,) = serve_merged(backend, [req])
            assert set(got) == set(req)
            for n, p in req.items():
                assert got[n].shape == (p.bags, DIM)
                assert np.array_equal(got[n], alone[n])
                w = p.weights
                np.testing.assert_allclose(
                    got[n], embedding_bag_ref(tables[n], p.indices, p.offsets, p.mode, w),
                    rtol=1e-5, atol=1e-5,
                )  # fmt: skip


def test_unbatched_serving_and_metrics(store_path, tables):
    part = {"indices": [0, 1, 2, 3, 4], "offsets": [0, 2]}
    with client(store_path, max_batch_size=0) as c:
        for _ in range(3):
            r = c.post("/v1/lookup", json={"tables": {"a": part, "c": part}})
            assert r.status_code == 200
        np.testing.assert_allclose(r.json()["tables"]["c"], ref(tables, "c", part), rtol=1e-6)
        m = c.get("/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        text = m.text
    # warm-up lookups are not counted: exactly the 3 x 5 ids asked for per table
    assert 'bandstore_lookups_total{table="a"} 15.0' in text
    assert 'bandstore_lookups_total{table="c"} 15.0' in text
    assert 'bandstore_lookups_total{table="b"} 0.0' in text
    for name in ("hits", "misses", "blocks_read", "bytes_read", "useful_bytes"):
        assert f'bandstore_{name}_total{{table="a"}}' in text
    assert 'bandstore_request_seconds_count{endpoint="lookup"} 3.0' in text
    assert "bandstore_batch_bags_count 3.0" in text
    assert "bandstore_queue_depth 0.0" in text
    assert 'bandstore_requests_total{endpoint="lookup",status="200"} 3.0' in text


def test_record_passes_traffic_to_the_recorder(tmp_path, tables):
    path = make_store(tmp_path / "s", tables)
    rec = tmp_path / "rec"
    store = bandstore.open(path, record=rec, sample_rate=1.0)
    body = {"tables": {"a": {"indices": [1, 2, 3], "offsets": [0, 1]},
                       "b": {"indices": [4, 5], "offsets": [0, 1]}}}  # fmt: skip
    with TestClient(create_app(store, ServerOptions())) as c:
        assert c.post("/v1/lookup", json=body).status_code == 200
        # recording needs one bag per query in every table
        bad = {
            "tables": {
                "a": {"indices": [1], "offsets": [0]},
                "b": {"indices": [1], "offsets": [0, 1]},
            }
        }
        r = c.post("/v1/lookup", json=bad)
        assert r.status_code == 422 and r.json()["error"]["type"] == "InvalidShapeError"
    from bandstore.traces.recorder import read_recorded

    trace = read_recorded(rec)
    assert trace.n_queries == 2  # the warm-up lookups are not traffic
    assert trace.table("a")[0].tolist() == [1, 2, 3] and trace.table("b")[0].tolist() == [4, 5]


# ---- the DLRM --------------------------------------------------------------------------------
def _tiny_dlrm(tmp_path: Path, rows=(50, 7, 120), dim=4, seed=0):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from bandstore.server.dlrm_torch import TorchDLRM, embedding_tables, save_dense
    from bandstore.server.model import DLRMConfig, Feature

    torch.manual_seed(seed)
    feats = tuple(Feature(f"f{i}", f"t{i}", "mean" if i == 1 else "sum") for i in range(len(rows)))
    config = DLRMConfig(dense_features=13, embedding_dim=dim, bottom_mlp=(8, dim),
                        top_mlp=(6, 1), features=feats)  # fmt: skip
    model = TorchDLRM(config, {f.name: r for f, r in zip(feats, rows, strict=True)}).eval()
    save_dense(model, tmp_path / "model")
    make_store(tmp_path / "store", embedding_tables(model))
    return torch, model


def _predict_body(rng, model, n):
    sparse = {}
    for f in model.config.features:
        rows = model.emb[f.name].num_embeddings
        sizes = rng.integers(0, 4, n)
        sparse[f.name] = {
            "indices": rng.integers(0, rows, int(sizes.sum())).tolist(),
            "offsets": np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist(),
        }
    dense = rng.integers(-2, 500, (n, 13)).astype(float).tolist()
    return {"dense": dense, "sparse": sparse}


def _torch_scores(torch, model, body):
    i64 = torch.int64
    sparse = {
        f: (torch.tensor(p["indices"], dtype=i64), torch.tensor(p["offsets"], dtype=i64))
        for f, p in body["sparse"].items()
    }
    with torch.no_grad():
        return torch.sigmoid(
            model(torch.tensor(body["dense"], dtype=torch.float32), sparse)
        ).numpy()


def test_numpy_dlrm_equals_torch(tmp_path, rng):
    torch, model = _tiny_dlrm(tmp_path)
    from bandstore.server.model import DLRM

    np_model = DLRM.load(tmp_path / "model")
    body = _predict_body(rng, model, 40)
    pooled = {}
    for f in model.config.features:
        p = body["sparse"][f.name]
        pooled[f.name] = embedding_bag_ref(
            model.emb[f.name].weight.detach().numpy(), p["indices"], p["offsets"], f.mode
        )
    got = np_model.forward(np.asarray(body["dense"], np.float32), pooled)
    np.testing.assert_allclose(got, _torch_scores(torch, model, body), atol=1e-5, rtol=0)


def test_predict_equals_torch_and_rejects_mistakes(tmp_path, rng):
    torch, model = _tiny_dlrm(tmp_path)
    app = create_app(
        bandstore.open(tmp_path / "store"), ServerOptions(model=str(tmp_path / "model"))
    )
    with TestClient(app) as c:
        for n in (1, 5, 100):
            body = _predict_body(rng, model, n)
            r = c.post("/v1/predict", json=body)
            assert r.status_code == 200, r.text
            scores = np.asarray(r.json()["scores"], dtype=np.float32)
            np.testing.assert_allclose(scores, _torch_scores(torch, model, body), atol=1e-5, rtol=0)
        body = _predict_body(rng, model, 3)
        cases = []
        b = json.loads(json.dumps(body))
        b["sparse"]["f2"]["indices"][0:0] = [120]
        b["sparse"]["f2"]["offsets"] = [0] + [o + 1 for o in b["sparse"]["f2"]["offsets"][1:]]
        cases.append((b, 422, "IdOutOfRangeError"))
        b = json.loads(json.dumps(body))
        del b["sparse"]["f0"]
        cases.append((b, 422, "InvalidArgumentError"))
        b = json.loads(json.dumps(body))
        b["dense"] = [row[:12] for row in b["dense"]]
        cases.append((b, 422, "InvalidShapeError"))
        b = json.loads(json.dumps(body))
        b["sparse"]["f1"]["offsets"] = [0]
        cases.append((b, 422, "InvalidShapeError"))
        b = json.loads(json.dumps(body))
        b["dense"][0][0] = "x"
        cases.append((b, 400, "InvalidDtypeError"))
        cases.append(({"dense": [[0] * 13]}, 400, "MalformedRequestError"))
        for b, status, kind in cases:
            r = c.post("/v1/predict", json=b)
            assert (r.status_code, r.json()["error"]["type"]) == (status, kind), r.text
        assert c.post("/v1/predict", json=body).status_code == 200


def test_no_predict_route_without_a_model(store_path):
    with client(store_path) as c:
        assert c.post("/v1/predict", json={}).status_code == 404


@pytest.mark.slow
def test_train_dlrm_end_to_end(tmp_path, rng):
    """tools/train_dlrm.py on a small Criteo-format file: the served predictions of the
    held-out lines equal the torch model's (saved by the script) to 1e-5."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import train_dlrm
    finally:
        sys.path.remove(str(ROOT / "tools"))
    lines = []
    for _ in range(300):
        dense = ["" if rng.random() < 0.1 else str(int(rng.integers(0, 100))) for _ in range(13)]
        cats = [
            "" if rng.random() < 0.1 else f"{int(rng.integers(0, 40)) * 7919:08x}"
            for _ in range(26)
        ]
        lines.append("\t".join([str(int(rng.random() < 0.3)), *dense, *cats]))
    data = tmp_path / "mini.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "model"
    report = train_dlrm.train(data, out, epochs=1, dim=4, quiet=True)
    assert 0.0 <= report["heldout_auc"] <= 1.0 and report["heldout_lines"] == 60
    held = np.load(out / "heldout.npz", allow_pickle=False)
    n = held["dense"].shape[0]
    sparse = {
        f"C{j + 1}": {"indices": held["sparse"][:, j].tolist(), "offsets": list(range(n))}
        for j in range(26)
    }
    app = create_app(bandstore.open(out / "store"), ServerOptions(model=str(out)))
    with TestClient(app) as c:
        r = c.post("/v1/predict", json={"dense": held["dense"].tolist(), "sparse": sparse})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["scores"], held["score"], atol=1e-5, rtol=0)


# ---- the command -----------------------------------------------------------------------------
def test_serve_without_the_extra_is_a_clear_error(monkeypatch, capsys, store_path):
    from bandstore import cli

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "bandstore.server.run", raising=False)
    code = cli.main(["serve", str(store_path)])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("bandstore: error:") and "[serve]" in err and "uvicorn" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_process_ready_lookup_sigterm(store_path, tables):
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bandstore.cli", "serve", str(store_path), "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        part = {"indices": [3, 2, 1], "offsets": [0, 2]}
        r = httpx.post(url + "/v1/lookup", json={"tables": {"b": part}}, timeout=10)
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["tables"]["b"], ref(tables, "b", part), rtol=1e-6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_updates_over_http_are_off_unless_allowed(tmp_path, tables):
    path = make_store(tmp_path / "s", tables)
    a = tables["a"]
    body = {"tables": {"a": {"ids": [3, 5], "rows": [[7.0] * a.shape[1], [8.0] * a.shape[1]]}}}
    with client(path) as c:  # read-only store, updates off
        r = c.post("/v1/update", json=body)
        assert r.status_code == 403 and "--allow-updates" in r.json()["error"]["message"]
    store = bandstore.open(path, writable=True, cache_bytes=4096)
    with TestClient(create_app(store, ServerOptions(allow_updates=True))) as c:
        r = c.post("/v1/update", json=body)
        assert r.status_code == 200 and r.json()["rows"] == {"a": 2}
        got = c.post("/v1/lookup", json={"tables": {"a": {"indices": [3, 5, 4], "offsets": [0]}}})
        want = 7.0 + 8.0 + a[4]
        np.testing.assert_allclose(got.json()["tables"]["a"][0], want, rtol=1e-5)
        # Mistakes are 4xx and change nothing.
        bad = {"tables": {"a": {"ids": [10**9], "rows": [[1.0] * a.shape[1]]}}}
        assert c.post("/v1/update", json=bad).status_code == 422
        unknown = {"tables": {"zz": {"ids": [1], "rows": [[1]]}}}
        assert c.post("/v1/update", json=unknown).status_code == 404
        assert c.post("/v1/update", content=b"{not json").status_code == 400
        assert c.get("/healthz").status_code == 200
    with bandstore.open(path) as s:  # durable: another handle sees it
        np.testing.assert_array_equal(s.lookup("a", [3])[0], np.full(a.shape[1], 7.0, np.float32))
