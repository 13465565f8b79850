"""The bandstore command, end to end on small data."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bandstore
from bandstore.cli import main
from bandstore.traces.synth import synth


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "trace.npz"
    synth({"a": 3000, "b": 500}, 400, pooling=8, seed=1).save(path)
    return path


def test_synth_create_info_replay_gc(tmp_path, capsys, trace_file):
    out = run_json(
        capsys, "trace", "synth", str(tmp_path / "t2.npz"), "--tables", "x=1000,y=200",
        "--queries", "100", "--pooling", "5",
    )  # fmt: skip
    assert out["n_queries"] == 100 and set(out["tables"]) == {"x", "y"}

    store = tmp_path / "s"
    info = run_json(capsys, "create", str(store), "--from-trace", str(trace_file), "--dim", "16")
    assert set(info["tables"]) == {"a", "b"} and info["tables"]["a"]["dim"] == 16

    info = run_json(capsys, "info", str(store))
    assert info["block_size"] == 4096 and info["tables"]["b"]["rows_per_block"] == 64

    stats = run_json(capsys, "replay", str(store), str(trace_file), "--cache-bytes", "64K")
    trace = bandstore.Trace.load(trace_file)
    assert stats["total"]["lookups"] == trace.n_lookups()
    assert stats["total"]["lookups"] == stats["total"]["hits"] + stats["total"]["misses"]
    assert stats["total"]["blocks_read"] > 0 and stats["lookups_per_second"] > 0

    held = run_json(capsys, "replay", str(store), str(trace_file), "--holdout", "0.25")
    assert held["queries"] == trace.n_queries - int(round(0.75 * trace.n_queries))

    out = run_json(capsys, "gc", str(store))
    assert out["kept"] == [info["version"]]


def test_create_from_npy_lookup_and_verify(tmp_path, capsys, rng):
    w = rng.standard_normal((100, 8)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    store = tmp_path / "s"
    run_json(capsys, "create", str(store), "--table", f"w={tmp_path / 'w.npy'}:float16")
    out = run_json(capsys, "lookup", str(store), "w", "3", "99")
    np.testing.assert_allclose(out["rows"], w[[3, 99]].astype(np.float16), rtol=0)
    assert run_json(capsys, "verify", str(store))["ok"] is True

    blocks = store / "versions"
    path = next(blocks.glob("*/w.blocks"))
    raw = bytearray(path.read_bytes())
    raw[4096 + 10] ^= 1
    path.write_bytes(bytes(raw))
    assert main(["verify", str(store)]) == 1
    text = capsys.readouterr().out
    assert "table 'w' block 0" in text and "FAILED" in text


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 1  # a failure; 2 is a usage error
    assert "not a bandstore store" in capsys.readouterr().err
    assert main(["lookup", str(tmp_path / "nope"), "t", "1"]) == 1


def test_trace_convert_csv(tmp_path, capsys):
    src = tmp_path / "log.csv"
    src.write_text("query,table,id\n0,a,1\n0,b,2\n1,a,3\n")
    out = run_json(capsys, "trace", "convert", "csv", str(src), str(tmp_path / "o.npz"))
    assert out["n_queries"] == 2
    t = bandstore.Trace.load(tmp_path / "o.npz")
    assert t.n_lookups("a") == 2 and t.n_lookups("b") == 1


def test_demo_runs_small(capsys):
    # 800 queries: too few for batches of 256 (the demo once failed below --scale 0.05).
    out = run_json(capsys, "demo", "--scale", "0.02")
    assert out["queries"]["batch"] < 256
    before = out["before"]["total"]
    assert before["lookups"] > 0 and before["lookups"] == before["hits"] + before["misses"]


def test_relayout_auto_reports_its_configuration(tmp_path, capsys, trace_file):
    store = tmp_path / "s"
    run_json(capsys, "create", str(store), "--from-trace", str(trace_file), "--dim", "16")
    out = run_json(
        capsys, "relayout", str(store), str(trace_file), "--batch-size", "16",
        "--cache-bytes", "64K", "--dry-run",
    )  # fmt: skip
    assert out["method"] == "auto" and out["committed_version"] is None
    for e in out["tables"].values():
        c = e["configuration"]
        assert c["method"] == e["chosen"] in ("identity", "frequency", "metis", "hypergraph")
        assert set(c) == {"method", "half_life", "cold", "threshold", "pinned_share"}
        assert e["choice"]["queries"] == {"fit": 240, "select": 80}
        assert len(e["choice"]["configurations"]) == 24
    assert main(["relayout", str(store), str(trace_file), "--batch-size", "16", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "auto chose" in text and "out of 24 configurations" in text
