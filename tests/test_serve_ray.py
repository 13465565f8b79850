"""``bandstore serve --engine ray``: shards on a local Ray cluster answer exactly as the
one-process server (every mode, a table split by rows, weights), the router keeps the 4xx
rules, updates reach the owning shard and every shard serving the rows, a killed shard
recovers, replicas fail over without a failed request, and SIGTERM stops everything."""

from __future__ import annotations

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

import bandstore

pytest.importorskip("starlette", reason="the server tests need the [serve] extra")
pytest.importorskip("uvicorn", reason="the server tests need the [serve] extra")

from bandstore.server.backend import StoreBackend, TableSpec  # noqa: E402
from bandstore.server.sharded import Part, ShardOptions, _combine, partition  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"a": 400, "b": 90, "c": 41, "u": 300}
DIM = 8
SPLIT = 200  # "a" and "u" are split by rows over the two shards


def test_partition_covers_every_row_once_and_balances():
    specs = {n: TableSpec(n, r, 4, "float32") for n, r in
             {"big": 1000, "x": 300, "y": 290, "z": 10, "empty": 0}.items()}  # fmt: skip
    parts = partition(specs, 3, split_rows=500)
    assert [(p.lo, p.hi, p.shard) for p in parts["big"]] == [(0, 334, 0), (334, 668, 1),
                                                               (668, 1000, 2)]  # fmt: skip
    for name, s in specs.items():
        covered = np.zeros(s.rows, dtype=int)
        for p in parts[name]:
            covered[p.lo : p.hi] += 1
        assert (covered == 1).all(), name
    # Whole tables, largest first, to the least loaded shard: the split left shard 2 with 332
    # rows (the others 334), so x -> 2; then y -> 0 (tie with 1: the lowest), z -> 1.
    assert parts["x"] == [Part("x", 0, 300, 2)]
    assert parts["y"] == [Part("y", 0, 290, 0)]
    assert parts["z"] == [Part("z", 0, 10, 1)]
    assert len(partition(specs, 1, split_rows=1)["big"]) == 1  # one shard: nothing is split


def test_combine_matches_whole_bags():
    # Per mode, pooling two parts and combining equals pooling the bag whole (max with a part
    # that has no id of a bag: that part's zero row must not win over negative values).
    rng = np.random.default_rng(3)
    w = -np.abs(rng.standard_normal((20, 3)).astype(np.float32))
    ids = np.array([1, 15, 2, 3, 16, 17], dtype=np.int64)
    off = np.array([0, 2, 4, 6], dtype=np.int64)  # bags {1,15} {2,3} {16,17} {}
    bag_of = np.repeat(np.arange(4), np.diff(np.append(off, ids.size)))
    for mode in ("sum", "mean", "max"):
        partials = []
        for lo, hi in ((0, 10), (10, 20)):
            sel = (ids >= lo) & (ids < hi)
            cnt = np.bincount(bag_of[sel], minlength=4)
            sub_off = np.concatenate([[0], np.cumsum(cnt)[:-1]])
            part_mode = "max" if mode == "max" else "sum"
            partials.append((embedding_bag_ref(w, ids[sel], sub_off, part_mode), cnt))
        got = _combine(partials, mode, 4, 3)
        np.testing.assert_allclose(got, embedding_bag_ref(w, ids, off, mode), rtol=1e-6)


def test_shard_flags_need_the_ray_engine(capsys, tmp_path):
    from bandstore.cli.main import main

    assert main(["serve", str(tmp_path), "--shards", "2"]) != 0
    assert "--shards needs --engine ray" in capsys.readouterr().err


# ---- on a local Ray cluster ----------------------------------------------------------------
try:
    import ray
except ModuleNotFoundError:  # the [ray] extra is not installed: the tests below skip
    ray = None
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
except ModuleNotFoundError:
    TestClient = None

from bandstore.server import ServerOptions, create_app  # noqa: E402
from bandstore.server.sharded import ShardedBackend  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    if ray is None or TestClient is None:
        pytest.skip("needs the [ray] and [serve] extras (ray, starlette)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tables() -> dict[str, np.ndarray]:
    return random_tables(SIZES, DIM, seed=11)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, tables) -> Path:
    return make_store(tmp_path_factory.mktemp("ray") / "s", tables)


@pytest.fixture(scope="module")
def sharded(cluster, store_path):
    """A writable two-shard backend behind the app (the app owns and closes it)."""
    backend = ShardedBackend(
        store_path, ShardOptions(shards=2, split_rows=SPLIT), cache_bytes=4096, writable=True
    )
    with TestClient(create_app(backend, ServerOptions(allow_updates=True))) as c:
        yield backend, c


def _request(rng, names, bags, mode):
    req = {}
    for n in names:
        sizes = rng.integers(0, 6, bags)
        ids = rng.integers(0, SIZES[n], int(sizes.sum())).astype(np.int64)
        off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        w = rng.standard_normal(ids.size).astype(np.float32) if mode == "sum" else None
        req[n] = (ids, off, w)
    return req


def test_the_split_is_as_configured(sharded):
    backend, _ = sharded
    parts = backend.describe()["parts"]
    assert [(p["lo"], p["hi"], p["shard"]) for p in parts["a"]] == [(0, 200, 0), (200, 400, 1)]
    assert len(parts["b"]) == len(parts["c"]) == 1
    pids = backend.shard_pids()
    assert len(pids) == 2 and len({p for rs in pids for p in rs}) == 2
    for rs in pids:  # each shard is its own process, named after the class
        for pid in rs:
            assert "StoreShard" in Path(f"/proc/{pid}/cmdline").read_text()


def test_sharded_lookups_equal_one_process(sharded, store_path, tables, rng):
    backend, _ = sharded
    one = StoreBackend(bandstore.open(store_path, cache_bytes=4096))
    try:
        for mode in ("sum", "mean", "max", "sum"):
            req = _request(rng, ("a", "b", "c"), 9, mode)
            modes = dict.fromkeys(req, mode)
            got, want = backend.lookup(req, modes), one.lookup(req, modes)
            for n, (ids, off, w) in req.items():
                ref = embedding_bag_ref(tables[n], ids, off, mode, w)
                if n == "a" and mode != "max":  # partial sums added: float32 rounding only
                    np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6)
                else:
                    np.testing.assert_array_equal(got[n], want[n])
                np.testing.assert_allclose(got[n], ref, rtol=1e-5, atol=1e-5)
        # Bags entirely in one part, empty bags, no bag at all.
        ids = np.array([1, 2, 399, 398, 5], dtype=np.int64)
        off = np.array([0, 2, 4, 4, 5], dtype=np.int64)
        for mode in ("sum", "mean", "max"):
            got = backend.lookup({"a": (ids, off, None)}, {"a": mode})["a"]
            np.testing.assert_allclose(got, embedding_bag_ref(tables["a"], ids, off, mode),
                                       rtol=1e-6)  # fmt: skip
        empty = np.empty(0, dtype=np.int64)
        assert backend.lookup({"a": (empty, empty, None)}, {"a": "sum"})["a"].shape == (0, DIM)
    finally:
        one.close()


def test_http_json_and_npz_through_the_router(sharded, tables):
    import io

    _, c = sharded
    part = {"indices": [3, 250, 7, 399], "offsets": [0, 2], "per_sample_weights": [1, 2, 3, 4]}
    r = c.post("/v1/lookup", json={"tables": {"a": part, "b": {"indices": [1], "offsets": [0],
                                                              "mode": "max"}}})  # fmt: skip
    assert r.status_code == 200
    want = embedding_bag_ref(tables["a"], np.array(part["indices"]), np.array(part["offsets"]),
                             "sum", np.array(part["per_sample_weights"], np.float32))  # fmt: skip
    np.testing.assert_allclose(r.json()["tables"]["a"], want, rtol=1e-5)
    np.testing.assert_array_equal(r.json()["tables"]["b"], tables["b"][[1]])
    buf = io.BytesIO()
    np.savez(buf, **{"a/indices": np.array([0, 399]), "a/offsets": np.array([0]),
                     "a/mode": np.array("mean")})  # fmt: skip
    npz = "application/x-npz"
    r = c.post("/v1/lookup", content=buf.getvalue(), headers={"content-type": npz, "accept": npz})
    assert r.status_code == 200
    got = np.load(io.BytesIO(r.content), allow_pickle=False)["a"]
    np.testing.assert_allclose(got, (tables["a"][[0]] + tables["a"][[399]]) / 2, rtol=1e-6)
    tabs = {t["name"]: t["rows"] for t in c.get("/v1/tables").json()["tables"]}
    assert tabs == SIZES
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    metrics = c.get("/metrics").text
    assert 'bandstore_lookups_total{table="a"}' in metrics


def test_client_mistakes_are_4xx_through_the_router(sharded):
    _, c = sharded
    bad = [
        ({"tables": {"a": {"indices": [400], "offsets": [0]}}}, 422, "IdOutOfRangeError"),
        ({"tables": {"zz": {"indices": [1], "offsets": [0]}}}, 404, "UnknownTableError"),
        ({"tables": {"a": {"indices": [1, 2], "offsets": [1]}}}, 422, "InvalidOffsetsError"),
        ({"tables": {"a": {"indices": [1], "offsets": [0], "mode": "median"}}}, 422,
         "InvalidArgumentError"),
        ({"tables": {"a": {"indices": [1], "offsets": [0], "mode": "mean",
                           "per_sample_weights": [2.0]}}}, 422, "InvalidArgumentError"),
        ({"tables": {"a": {"indices": [1.5], "offsets": [0]}}}, 400, "InvalidDtypeError"),
        ({"tables": []}, 400, "MalformedRequestError"),
    ]  # fmt: skip
    for body, status, kind in bad:
        r = c.post("/v1/lookup", json=body)
        assert (r.status_code, r.json()["error"]["type"]) == (status, kind), body
    r = c.post("/v1/lookup", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    bad_update = {"tables": {"u": {"ids": [300], "rows": [[1.0] * DIM]}}}
    assert c.post("/v1/update", json=bad_update).status_code == 422
    # Checked by the writing shard (the row shape): its error comes back as the same 4xx.
    short_rows = {"tables": {"u": {"ids": [3], "rows": [[1.0] * (DIM - 1)]}}}
    r = c.post("/v1/update", json=short_rows)
    assert (r.status_code, r.json()["error"]["type"]) == (422, "InvalidShapeError")
    assert (
        c.post("/v1/update", json={"tables": {"zz": {"ids": [1], "rows": [[1]]}}}).status_code
        == 404
    )
    assert c.post("/v1/lookup", json={"tables": {"b": {"indices": [1], "offsets": [0]}}}).is_success


def test_updates_reach_the_owning_shard_and_every_reader(sharded, store_path, tables):
    backend, c = sharded
    # Rows of the second part of "u" only: written by shard 1.
    rows = [[5.0] * DIM, [6.0] * DIM]
    r = c.post("/v1/update", json={"tables": {"u": {"ids": [250, 299], "rows": rows}}})
    assert r.status_code == 200 and r.json()["shard"] == 1 and r.json()["rows"] == {"u": 2}
    # Both parts, most rows in the first: one transaction by shard 0, served at once by both.
    r = c.post("/v1/update", json={"tables": {"u": {"ids": [1, 2, 201],
                                                    "rows": [[7.0] * DIM] * 3}}})  # fmt: skip
    assert r.status_code == 200 and r.json()["shard"] == 0
    seq = r.json()["seq"]
    q = {"indices": [1, 201, 250, 5], "offsets": [0, 1, 2, 3]}
    got = np.array(c.post("/v1/lookup", json={"tables": {"u": q}}).json()["tables"]["u"])
    np.testing.assert_array_equal(got[:3], [[7.0] * DIM, [7.0] * DIM, [5.0] * DIM])
    np.testing.assert_array_equal(got[3], tables["u"][5])
    # Another process's reader of the directory sees them within a second.
    with bandstore.open(store_path) as other:
        deadline = time.monotonic() + 1.0
        while other.lookup("u", [299])[0, 0] != 6.0:
            assert time.monotonic() < deadline, "the update was not visible within 1 s"
            time.sleep(0.02)
        assert other.updates_info()["update_seq"] >= seq


# ---- failures (slow: shards restart, a cluster of its own) --------------------------------
def _load(backend, tables, stop, errors, answered):
    """Bounded closed loop of checked lookups (stops at ``stop`` or after 120 s)."""
    rng = np.random.default_rng(1)
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        req = _request(rng, ("a", "b", "c"), 4, "max")
        try:
            got = backend.lookup(req, dict.fromkeys(req, "max"))
            for n, (ids, off, _) in req.items():
                np.testing.assert_array_equal(got[n], embedding_bag_ref(tables[n], ids, off, "max"))
            answered.append(time.monotonic())
        except Exception as e:  # noqa: BLE001 - counted and asserted on
            errors.append((time.monotonic(), repr(e)))


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
def test_a_killed_shard_recovers(cluster, store_path, tables, replicas):
    backend = ShardedBackend(
        store_path, ShardOptions(shards=2, replicas=replicas, split_rows=SPLIT, retry_s=60)
    )
    try:
        stop, errors, answered = threading.Event(), [], []
        th = threading.Thread(target=_load, args=(backend, tables, stop, errors, answered))
        th.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        ray.kill(backend.replicas[0][0].actor, no_restart=False)  # Ray restarts it
        while time.monotonic() < killed_at + 60 and not any(t > killed_at + 1 for t in answered):
            time.sleep(0.1)
        stop.set()
        th.join()
        after = [t for t in answered if t > killed_at]
        assert after and after[0] - killed_at < 30, "no answer within 30 s of the kill"
        assert errors == []  # requests waited for the restart (or failed over), none failed
        if replicas == 2:
            assert after[0] - killed_at < 10  # the other replica answered at once
        # The killed replica serves again once Ray restarted it (a call to it meanwhile is
        # refused at once: ActorUnavailableError, which the router fails over or retries).
        deadline = time.monotonic() + 60
        while True:
            try:
                pids = backend.shard_pids()
                break
            except ray.exceptions.RayActorError:
                assert time.monotonic() < deadline, "the killed replica did not come back"
                time.sleep(0.5)
        assert all(len(rs) == replicas for rs in pids)
    finally:
        backend.close()


@pytest.mark.slow
def test_kill_9_of_a_shard_process_recovers(cluster, store_path, tables):
    backend = ShardedBackend(store_path, ShardOptions(shards=2, split_rows=SPLIT))
    try:
        pid = backend.shard_pids()[1][0]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        ids, off = np.array([3, 399], dtype=np.int64), np.array([0], dtype=np.int64)
        got = backend.lookup({"a": (ids, off, None)}, {"a": "sum"})["a"]
        assert time.monotonic() - t0 < 30
        np.testing.assert_allclose(got, embedding_bag_ref(tables["a"], ids, off, "sum"), rtol=1e-6)
        assert backend.shard_pids()[1][0] != pid
    finally:
        backend.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Every living process under ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_stops_the_router_the_shards_and_the_cluster(store_path, tables):
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bandstore.cli", "serve", str(store_path), "--engine", "ray",
         "--shards", "2", "--split-rows", str(SPLIT), "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    family: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.5)
        part = {"indices": [3, 250, 1], "offsets": [0, 2]}
        r = httpx.post(url + "/v1/lookup", json={"tables": {"a": part}}, timeout=30)
        assert r.status_code == 200
        want = embedding_bag_ref(tables["a"], np.array(part["indices"]), np.array([0, 2]), "sum")
        np.testing.assert_allclose(r.json()["tables"]["a"], want, rtol=1e-5)
        family = _descendants(proc.pid)
        assert len(family) >= 4  # the cluster's processes and the two shards at least
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in family if _alive(p)]
        assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in family:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.slow
def test_predict_through_the_router_equals_torch(cluster, tmp_path):
    from test_server import _predict_body, _tiny_dlrm, _torch_scores

    torch, model = _tiny_dlrm(tmp_path)  # tables of 50, 7 and 120 rows: 50 and 120 split
    backend = ShardedBackend(tmp_path / "store", ShardOptions(shards=2, split_rows=40))
    rng = np.random.default_rng(5)
    with TestClient(create_app(backend, ServerOptions(model=str(tmp_path / "model")))) as c:
        for n in (1, 7, 60):
            body = _predict_body(rng, model, n)
            r = c.post("/v1/predict", json=body)
            assert r.status_code == 200, r.text
            scores = np.asarray(r.json()["scores"], dtype=np.float32)
            np.testing.assert_allclose(scores, _torch_scores(torch, model, body), atol=1e-5)
