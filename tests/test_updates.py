"""Online row updates: the update log, the overlay in front of every strategy, compaction."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

import bandstore
from bandstore.cli.main import main as cli
from bandstore.serve import overlay
from bandstore.serve.cache import cache_row_bytes
from bandstore.storage import updatelog
from bandstore.storage.codecs import decode_rows, encode_rows
from bandstore.storage.versions import collect_garbage

DIM = 8
ROWS = {"a": 400, "b": 900, "c": 120, "d": 650}
CODECS = {"a": "float32", "b": "float16", "c": "int8", "d": "float32"}

#: Every strategy (and split variants) on a 2-worker store.
PLANS = {
    "cached": None,
    "mixed": {
        "workers": 2,
        "tables": {
            "a": {"strategy": "resident", "worker": 1},
            "b": {
                "strategy": "split",
                "inner": "cached",
                "workers": [0, 1],
                "cache_bytes": 60 * cache_row_bytes(DIM),
                "replicate": [1, 2, 3, 500],
            },
            "c": {"strategy": "direct", "worker": 1},
            "d": {"strategy": "split", "inner": "resident", "workers": [1, 0]},
        },
    },
    "pinned": {
        "workers": 2,
        "tables": {
            "a": {"strategy": "pinned", "worker": 0, "cache_bytes": 50 * 4 * DIM},
            "b": {"strategy": "split", "inner": "direct", "workers": [1, 0]},
            "c": {"strategy": "resident", "worker": 1},
            "d": {
                "strategy": "split",
                "inner": "pinned",
                "workers": [0, 1],
                "cache_bytes": 80 * 4 * DIM,
            },
        },
    },  # fmt: skip
}


def _model(data):
    return {n: decode_rows(CODECS[n], encode_rows(CODECS[n], w), DIM) for n, w in data.items()}


@pytest.fixture
def store_path(tmp_path, rng):
    path = tmp_path / "s"
    data = {n: rng.standard_normal((r, DIM)).astype(np.float32) for n, r in ROWS.items()}
    counts = {n: rng.zipf(1.3, r).astype(np.int64) for n, r in ROWS.items()}
    with bandstore.create(path, block_size=512) as s:
        for n, w in data.items():
            s.add_table(n, w, codec=CODECS[n], progress=False)
        s.set_tuning({n: {"cache_bytes": 40 * cache_row_bytes(DIM)} for n in ROWS}, counts=counts)
    return path, _model(data)


def _bag_reference(w, ids, offsets, mode, weights=None, pad=None):
    out = torch.nn.functional.embedding_bag(
        torch.from_numpy(ids),
        torch.from_numpy(w),
        torch.from_numpy(offsets),
        mode=mode,
        per_sample_weights=None if weights is None else torch.from_numpy(weights),
        padding_idx=pad,
    )
    return out.numpy()


def _update(writer, model, name, ids, rows):
    seq = writer.update(name, ids, rows)
    # The model applies them in order: a repeated id keeps its last row.
    model[name][ids] = decode_rows(CODECS[name], encode_rows(CODECS[name], rows), DIM)
    return seq


def _check_all(s, model, rng, n_bags=40):
    """Every call form against the model (torch as the pooling reference)."""
    for name, w in model.items():
        ids = rng.integers(0, w.shape[0], 300)
        assert np.array_equal(s.lookup(name, ids), w[ids])
        offsets = np.sort(rng.integers(0, 300, n_bags - 1))
        offsets = np.concatenate([[0], offsets]).astype(np.int64)
        for mode in ("sum", "mean", "max"):
            got = s.embedding_bag(name, ids, offsets, mode=mode)
            ref = _bag_reference(w, ids, offsets, mode)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        weights = rng.random(300).astype(np.float32)
        pad = int(ids[3])
        got = s.embedding_bag(name, ids, offsets, per_sample_weights=weights, padding_idx=pad)
        ref = _bag_reference(w, ids, offsets, "sum", weights, pad)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    reqs = {}
    for name, w in model.items():
        ids = rng.integers(0, w.shape[0], 200)
        reqs[name] = (ids, np.arange(0, 200, 5, dtype=np.int64))
    for mode in ("sum", "mean", "max"):
        got = s.lookup_many(reqs, mode=mode)
        for name, (ids, off) in reqs.items():
            ref = _bag_reference(model[name], ids, off, mode)
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5)
    stats = s.stats()
    for name in model:
        assert stats[name]["lookups"] == stats[name]["hits"] + stats[name]["misses"]


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_updates_are_served_by_every_strategy(store_path, rng, plan):
    path, model = store_path
    with (
        bandstore.open(path, writable=True, plan=PLANS[plan] or False) as s,
        bandstore.open(path, plan=PLANS[plan] or False) as reader,
    ):
        _check_all(s, model, rng)  # caches warm with the old rows
        hot = {n: np.arange(0, 40) for n in model}  # pinned / replicated / cached rows
        for name in model:
            rows = rng.standard_normal((60, DIM)).astype(np.float32)
            ids = np.concatenate([hot[name], rng.integers(0, ROWS[name], 20)])
            _update(s, model, name, ids, rows)
        _check_all(s, model, rng)  # the writer sees its own updates at once
        for name, w in model.items():
            assert np.array_equal(s.decoded_rows(name, 10, min(300, len(w))), w[10:300])
        assert reader.refresh() is False  # same version; the updates are applied
        _check_all(reader, model, rng)
        # More rounds on top (overlay ids updated again, new ids added).
        for _ in range(3):
            for name in model:
                ids = rng.integers(0, ROWS[name], 50)
                _update(s, model, name, ids, rng.standard_normal((50, DIM)).astype(np.float32))
        _check_all(s, model, rng)
        reader.refresh()
        _check_all(reader, model, rng)
        # Overlay rows count as lookups and hits, and nothing else.
        reader.reset_stats()
        ids = np.arange(40)
        reader.lookup("a", ids)
        st = reader.stats()["a"]
        assert st["lookups"] == 40 and st["hits"] == 40 and st["blocks_read"] == 0


def test_update_semantics_and_sequence(store_path, rng):
    path, model = store_path
    with bandstore.open(path, writable=True, cache_bytes=10_000) as s:
        s.lookup("a", np.arange(400))  # cache the old rows
        rows = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
        seq1 = s.update("a", [5, 9, 5], rows)
        # Duplicate ids in one call: the last wins.
        assert np.array_equal(s.lookup("a", [5, 9]), rows[[2, 1]])
        seq2 = s.update("a", np.array([9], dtype=np.uint32), np.ones((1, DIM), np.float64))
        assert seq2 == seq1 + 1
        assert np.array_equal(s.lookup("a", [9, 5]), np.stack([np.ones(DIM), rows[2]]))
        # An empty update writes nothing and returns the last sequence number.
        assert s.update("a", [], np.empty((0, DIM), np.float32)) == seq2
        # Several tables as one: one sequence number.
        seq3 = s.update_many({"a": ([1], rows[:1]), "c": ([2], rows[1:2])})
        assert seq3 == seq2 + 1
        info = s.updates_info()
        assert info["update_seq"] == seq3
        assert info["tables"]["a"]["records"] == 3 and info["tables"]["a"]["rows"] == 4
        assert info["tables"]["c"]["rows"] == 1 and info["rows"] == 5
        # NaN / inf only when allowed, and never for int8.
        nan_rows = np.full((1, DIM), np.nan, np.float32)
        nan_rows[0, 1] = np.inf
        s.update("a", [7], nan_rows, allow_nan=True)
        got = s.lookup("a", [7])
        assert np.isnan(got[0, 0]) and got[0, 1] == np.inf
        with pytest.raises(bandstore.InvalidArgumentError, match="int8"):
            s.update("c", [7], nan_rows, allow_nan=True)


@pytest.mark.parametrize(
    "args, error",
    [
        (("zz", [1], np.zeros((1, DIM))), bandstore.UnknownTableError),
        (("a", [400], np.zeros((1, DIM))), bandstore.IdOutOfRangeError),
        (("a", [-1], np.zeros((1, DIM))), bandstore.IdOutOfRangeError),
        (("a", [1.0], np.zeros((1, DIM))), bandstore.InvalidDtypeError),
        (("a", [[1]], np.zeros((1, DIM))), bandstore.InvalidShapeError),
        (("a", [1, 2], np.zeros((1, DIM))), bandstore.InvalidShapeError),
        (("a", [1], np.zeros((1, DIM + 1))), bandstore.InvalidShapeError),
        (("a", [1], np.zeros(DIM)), bandstore.InvalidShapeError),
        (("a", [1], np.zeros((1, DIM), np.int32)), bandstore.InvalidDtypeError),
        (("a", [1], np.full((1, DIM), np.nan)), bandstore.InvalidArgumentError),
        (("b", [1], np.full((1, DIM), np.inf)), bandstore.InvalidArgumentError),
        (("b", [1], np.full((1, DIM), 1e6)), bandstore.InvalidArgumentError),  # f16 overflow
    ],
)
def test_bad_updates_change_nothing(store_path, args, error):
    path, model = store_path
    with bandstore.open(path, writable=True) as s:
        s.update("a", [3], np.ones((1, DIM), np.float32))
        before = s.updates_info()
        with pytest.raises(error):
            s.update(*args)
        # A batch with one bad table writes none of it.
        with pytest.raises(error):
            s.update_many({"d": ([0], np.ones((1, DIM))), args[0]: (args[1], args[2])})
        assert s.updates_info() == before
        assert np.array_equal(s.lookup("d", [0]), model["d"][[0]])
    with bandstore.open(path) as s, pytest.raises(bandstore.ReadOnlyError):
        s.update("a", [1], np.zeros((1, DIM), np.float32))


@pytest.mark.parametrize("in_poller", [False, True])
def test_other_handles_see_updates_without_refresh(store_path, monkeypatch, in_poller):
    path, model = store_path
    monkeypatch.setattr(overlay, "APPLY_IN_POLLER", in_poller)
    with bandstore.open(path, writable=True) as w, bandstore.open(path) as r:
        r.lookup("a", [0])  # starts its poller
        t0 = time.perf_counter()
        w.update("a", [0], np.full((1, DIM), 5.0, np.float32))
        while r.lookup("a", [0])[0, 0] != 5.0:
            assert time.perf_counter() - t0 < 1.0, "not visible within 1 s"
            time.sleep(0.01)
        # A handle opened after the update serves it on its first call.
        with bandstore.open(path) as r2:
            assert r2.lookup("a", [0])[0, 0] == 5.0


def test_concurrent_writers_share_commits_and_lose_nothing(store_path):
    path, model = store_path
    with bandstore.open(path, writable=True) as w:
        seqs: list[int] = []
        stale: list[int] = []

        def write(k):
            for j in range(5):
                i = 10 * k + j
                seqs.append(w.update("a", [i], np.full((1, DIM), i, np.float32)))
                if w.lookup("a", [i])[0, 0] != i:  # its own update, on the next call
                    stale.append(i)

        threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stale == []
        assert sorted(seqs) == list(range(1, 31))  # one seq per call, none lost or repeated
        ids = np.array([10 * k + j for k in range(6) for j in range(5)])
        assert np.array_equal(w.lookup("a", ids)[:, 0], ids.astype(np.float32))


def test_compaction_folds_and_readers_keep_their_version(store_path, rng):
    path, model = store_path
    with bandstore.open(path, writable=True) as w:
        for _ in range(4):
            for name in ("a", "c"):
                ids = rng.integers(0, ROWS[name], 30)
                _update(w, model, name, ids, rng.standard_normal((30, DIM)).astype(np.float32))
        reader = bandstore.open(path, cache_bytes=4000)
        reader.refresh()
        v_old = reader.version
        report = w.compact(progress=False)
        assert report["folded_seq"] == 8 and set(report["tables"]) == {"a", "c"}
        assert report["version"] == w.version > v_old
        assert w.updates_info()["overlay_rows"] == {}  # folded: the overlay is empty
        _check_all(w, model, rng)
        _check_all(reader, model, rng)  # the old version plus its overlay: same rows
        # Updates after the compaction go on top of the new version.
        _update(w, model, "a", [1, 2], np.full((2, DIM), 3.0, np.float32))
        _check_all(w, model, rng)
        reader.refresh()
        assert reader.version == w.version
        assert reader.updates_info()["overlay_rows"] == {"a": 2}
        _check_all(reader, model, rng)
        # The old version still needs the folded records while the reader could... it has
        # switched, so gc drops the version and the records it alone needed.
        assert w.updates_info()["records"] == 9
        reader.close()
        gc = collect_garbage(path)
        assert v_old in gc["removed"] and gc["pruned_update_records"] == 8
        assert w.updates_info()["records"] == 1
        assert w.compact(progress=False)["tables"] == {"a": 2}
        assert w.verify() == []
        gc = collect_garbage(path)
        assert gc["pruned_update_records"] == 1
    with bandstore.open(path) as s:
        _check_all(s, model, rng)
        assert s.updates_info()["records"] == 0


def test_relayout_folds_updates(store_path, rng):
    path, model = store_path
    with bandstore.open(path, writable=True) as w:
        _update(w, model, "b", [0, 5, 899], rng.standard_normal((3, DIM)).astype(np.float32))
        _update(w, model, "d", [3], rng.standard_normal((1, DIM)).astype(np.float32))
        w.relayout_tables({"b": rng.permutation(ROWS["b"])}, progress=False)
        info = w.updates_info()
        assert info["folded_seq"]["b"] == 2 and info["folded_seq"]["d"] == 0
        assert info["overlay_rows"] == {"d": 1}
        _check_all(w, model, rng)
    with bandstore.open(path) as s:
        _check_all(s, model, rng)


def test_verify_checks_the_log(store_path):
    path, _ = store_path
    with bandstore.open(path, writable=True) as w:
        w.update("a", [1, 2], np.ones((2, DIM), np.float32))
        w.update("c", [1], np.ones((1, DIM), np.float32))
        assert w.verify() == []
        seg = path / "updates" / "00000001.log"
        first = updatelog.SEG_HEADER  # the first frame (a's rows), a valid frame after it
        with open(seg, "r+b") as f:
            f.seek(first + updatelog.FRAME_HEADER + 40)
            b = f.read(1)
            f.seek(first + updatelog.FRAME_HEADER + 40)
            f.write(bytes([b[0] ^ 1]))
        problems = w.verify()
        assert problems == [
            {"file": str(seg), "offset": first, "reason": "payload checksum mismatch"}
        ]
        # A reader refuses to serve a corrupt update rather than serve an old row.
        with bandstore.open(path) as r, pytest.raises(bandstore.CorruptLogError) as e:
            r.lookup("a", [1])
        assert (e.value.path, e.value.offset) == (str(seg), first)
    assert cli(["verify", str(path), "--json"]) == 1


def test_cli_update_compact_info(store_path, tmp_path, capsys):
    path, model = store_path
    f = tmp_path / "u.npz"
    np.savez(f, **{"a/ids": np.array([4, 8]), "a/rows": np.full((2, DIM), 2.0, np.float32),
                   "c/ids": np.array([0]), "c/rows": np.full((1, DIM), -1.0)})  # fmt: skip
    assert cli(["update", str(path), str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"seq": 1, "rows": {"a": 2, "c": 1}}
    g = tmp_path / "v.npz"
    np.savez(g, ids=np.array([4]), rows=np.full((1, DIM), 9.0, np.float32))
    assert cli(["update", str(path), str(g), "--table", "a"]) == 0
    assert (
        cli(["update", str(path), str(g)]) == 1
    )  # no table given for ids/rows: a failure (exit 1)
    capsys.readouterr()
    assert cli(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["updates"]
    assert (info["records"], info["rows"]) == (3, 4)
    assert cli(["compact", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tables"] == {"a": 2, "c": 1}
    with bandstore.open(path) as s:
        assert s.lookup("a", [4, 8])[:, 0].tolist() == [9.0, 2.0]
        assert s.lookup("c", [0])[0, 0] == -1.0
        assert s.updates_info()["overlay_rows"] == {}


def test_server_request_helper(store_path):
    path, _ = store_path
    with bandstore.open(path, writable=True) as s:
        body = {"tables": {"a": {"ids": [1, 2], "rows": [[1.0] * DIM, [2.0] * DIM]}}}
        assert overlay.apply_request(s, body) == {"seq": 1, "rows": {"a": 2}}
        assert s.lookup("a", [2])[0, 0] == 2.0
        for bad, error in [
            ({}, bandstore.InvalidArgumentError),
            ({"tables": {"zz": {"ids": [1], "rows": [[0.0] * DIM]}}}, bandstore.UnknownTableError),
            ({"tables": {"a": {"ids": [1]}}}, bandstore.InvalidArgumentError),
            ({"tables": {"a": {"ids": [1], "rows": [["x"] * DIM]}}}, bandstore.InvalidDtypeError),
            ({"tables": {"a": {"ids": [1], "rows": [[0.0] * 3]}}}, bandstore.InvalidShapeError),
        ]:
            with pytest.raises(error):
                overlay.apply_request(s, bad)
        assert s.updates_info()["update_seq"] == 1
    with bandstore.open(path) as s, pytest.raises(bandstore.ReadOnlyError):
        overlay.apply_request(s, body)
