"""The ``bandstore`` command as a new user meets it (issue 25, 11-18): one error style
(``bandstore: error: ...`` on stderr, no traceback), one exit code per kind (0 ok, 1 failure,
2 usage, 3 verify could not read the store), atomic ``create``, checked inputs, quiet logs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from helpers import make_store, random_tables

import bandstore
from bandstore.cli import main
from bandstore.storage import blockfile
from bandstore.traces.synth import synth


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(result: tuple[int, str, str], code: int, *words: str) -> None:
    got, _, err = result
    assert got == code, (got, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bandstore: error: "), err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def store(tmp_path):
    w = random_tables({"a": 300, "b": 200}, dim=8, seed=1)
    return make_store(tmp_path / "s", w)


@pytest.fixture
def trace_file(tmp_path):
    p = tmp_path / "t.npz"
    synth({"a": 300, "b": 200}, 200, pooling=4, seed=1).save(p)
    return p


# ---- 11: messages, not tracebacks; exit codes -------------------------------------------
def test_convert_missing_input(capsys, tmp_path):
    r = cli(capsys, "trace", "convert", "lightgcn", tmp_path / "nonexistent.txt", tmp_path / "o")
    assert_error(r, 1, "nonexistent.txt")


def test_convert_missing_output_folder(capsys, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("0 1 2\n1 2 3\n")
    r = cli(capsys, "trace", "convert", "lightgcn", src, tmp_path / "nowhere" / "out.npz")
    assert_error(r, 1, "nowhere")


def test_replay_missing_trace(capsys, store, tmp_path):
    assert_error(cli(capsys, "replay", store, tmp_path / "missing.npz"), 1, "missing.npz")


def test_create_negative_dim_is_usage(capsys, tmp_path, trace_file):
    r = cli(capsys, "create", tmp_path / "n", "--from-trace", trace_file, "--dim", "-3")
    assert_error(r, 2, "--dim")
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("ids", ["1e20", str(10**20), "-1x"])
def test_lookup_bad_id_is_usage(capsys, store, ids):
    assert_error(cli(capsys, "lookup", store, "a", ids), 2, "id")


def test_lookup_out_of_range_and_unknown_table_fail(capsys, store):
    assert_error(cli(capsys, "lookup", store, "a", "300"), 1, "out of range")
    assert_error(cli(capsys, "lookup", store, "zz", "1"), 1, "unknown table")


def test_info_on_a_non_store_fails(capsys, tmp_path):
    assert_error(cli(capsys, "info", tmp_path), 1, "not a bandstore store")


def test_verify_exit_codes(capsys, store):
    assert cli(capsys, "verify", store)[0] == 0
    with bandstore.open(store, cache_bytes=0) as s:
        vid = s.version
        trec = s.catalog.current_version()["tables"]["a"]
    vdir = blockfile.version_path(store, vid)
    data = bytearray((vdir / trec["block_file"]).read_bytes())
    data[trec["block_size"] + 3] ^= 0xFF
    (vdir / trec["block_file"]).unlink()  # (hard links: do not damage older versions)
    (vdir / trec["block_file"]).write_bytes(bytes(data))
    code, out, _ = cli(capsys, "verify", store)
    assert code == 1 and "CORRUPT" in out
    (vdir / trec["layout_file"]).unlink()  # now the store cannot even be opened
    assert_error(cli(capsys, "verify", store), 3, "layout")
    import shutil

    shutil.rmtree(vdir)
    assert_error(cli(capsys, "verify", store), 3, "missing")


def test_help_documents_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit status" in out and "2" in out and "3" in out


# ---- 12: create is atomic -------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,code",
    [
        ("x=GOOD:nocodec", 2),  # unknown codec
        ("x", 2),  # no '='
        ("=GOOD", 2),  # no name
        ("x=MISSING", 1),
        ("x=BAD_SHAPE", 1),
        ("x\n=GOOD", 1),  # bad table name
    ],
)
def test_create_with_a_bad_table_leaves_nothing(capsys, tmp_path, spec, code):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((10, 4), dtype=np.float32))
    bad_shape = tmp_path / "bad.npy"
    np.save(bad_shape, np.ones(10, dtype=np.float32))
    spec = (spec.replace("GOOD", str(good)).replace("MISSING", str(tmp_path / "no.npy"))
            .replace("BAD_SHAPE", str(bad_shape)))  # fmt: skip
    target = tmp_path / "new"
    r = cli(capsys, "create", target, "--table", f"ok={good}", "--table", spec)
    assert_error(r, code)
    assert not target.exists()
    assert cli(capsys, "create", target, "--table", f"ok={good}")[0] == 0  # the retry works


def test_create_accepts_a_colon_in_the_path(capsys, tmp_path):
    odd = tmp_path / "a:b.npy"
    np.save(odd, np.ones((10, 4), dtype=np.float32))
    assert cli(capsys, "create", tmp_path / "s1", "--table", f"x={odd}")[0] == 0
    assert cli(capsys, "create", tmp_path / "s2", "--table", f"x={odd}:float16")[0] == 0
    with bandstore.open(tmp_path / "s2") as s:
        assert s.tables["x"].codec == "float16"


# ---- 13: wrong log formats -------------------------------------------------------------
def test_convert_refuses_a_weighted_log_as_lightgcn(capsys, tmp_path):
    src = tmp_path / "user_artists.dat"
    lines = ["userID\tartistID\tweight"] + [
        f"{2 + i // 5}\t{51 + i}\t{13883 - i}" for i in range(40)
    ]
    src.write_text("\n".join(lines) + "\n")
    r = cli(capsys, "trace", "convert", "lightgcn", src, tmp_path / "o.npz")
    assert_error(r, 1, "lightgcn")
    assert not (tmp_path / "o.npz").exists()
    # The right format reads it.
    code, out, _ = cli(capsys, "trace", "convert", "lastfm", src, tmp_path / "o.npz")
    assert code == 0 and "artist" in out


def test_convert_refuses_empty_input(capsys, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_text("\n\n")
    assert_error(cli(capsys, "trace", "convert", "lightgcn", src, tmp_path / "o.npz"), 1, "empty")


def test_convert_text_output_names_tables(capsys, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("0 1 2\n1 2 3 7\n")
    code, out, _ = cli(capsys, "trace", "convert", "lightgcn", src, tmp_path / "o.npz")
    assert code == 0 and "item" in out and "8 rows" in out


# ---- 14: messages name the user's parameters -----------------------------------------
@pytest.mark.parametrize("value", ["1.5", "0", "-0.2", "1"])
def test_replay_holdout_out_of_range(capsys, store, trace_file, value):
    r = cli(capsys, "replay", store, trace_file, "--holdout", value)
    assert_error(r, 2, "--holdout")
    assert "tune_fraction" not in r[2]


# ---- 15: logs, first runs, plots ------------------------------------------------------
def test_no_progress_bars_when_stderr_is_not_a_terminal(capsys, store, trace_file):
    code, out, err = cli(capsys, "replay", store, trace_file)
    assert code == 0
    assert "\r" not in err and "\x1b[" not in err and "%|" not in err


def test_replay_text_has_no_bogus_cache_row(capsys, store, trace_file):
    code, out, _ = cli(capsys, "replay", store, trace_file)
    assert code == 0
    assert not [ln for ln in out.splitlines() if ln.split()[:1] == ["cache"]]


def test_first_run_says_kernels_compile(capsys, store, monkeypatch):
    import importlib

    climain = importlib.import_module("bandstore.cli.main")  # (the package exports main())
    monkeypatch.setattr(climain, "kernels_compiled", lambda: False)
    code, _, err = cli(capsys, "lookup", store, "a", "1")
    assert code == 0 and "compiling kernels (first run only)" in err
    monkeypatch.setattr(climain, "kernels_compiled", lambda: True)
    code, _, err = cli(capsys, "lookup", store, "a", "1")
    assert code == 0 and "compiling" not in err


def test_size_cache_plot_checks_matplotlib_first(capsys, store, trace_file, monkeypatch,
                                                 tmp_path):  # fmt: skip
    import bandstore.tune.sim as sim

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails

    def never(*a, **k):
        raise AssertionError("simulated before checking matplotlib")

    monkeypatch.setattr(sim, "size_cache", never)
    r = cli(capsys, "size-cache", store, trace_file, "--budget", "64K", "--plot",
            tmp_path / "p.png")  # fmt: skip
    assert_error(r, 1, "matplotlib")


# ---- 16: plan --apply refuses what its own measurement or the machine refutes ----------
def _slower(monkeypatch):
    import bandstore.tune.planning as planning

    real = planning.compare_plans

    def fake(*a, **k):
        out = real(*a, **k)
        out.speedup["plan_vs_uniform"] = 0.5
        return out

    monkeypatch.setattr(planning, "compare_plans", fake)


def test_plan_apply_refuses_a_slower_plan(capsys, store, trace_file, monkeypatch):
    _slower(monkeypatch)
    args = ["plan", store, trace_file, "--workers", "1", "--budget", "64K", "--repeats", "1",
            "--batch-size", "32", "--apply"]  # fmt: skip
    assert_error(cli(capsys, *args), 1, "slower", "--force")
    with bandstore.open(store) as s:
        assert s.plan is None
    code, out, _ = cli(capsys, *args, "--force")
    assert code == 0 and "applied" in out
    with bandstore.open(store) as s:
        assert s.plan is not None


def test_plan_apply_refuses_more_workers_than_cpus(capsys, store, trace_file):
    r = cli(capsys, "plan", store, trace_file, "--workers", "4096", "--apply")
    assert_error(r, 1, "CPU", "--force")
    with bandstore.open(store) as s:
        assert s.plan is None


def test_cache_info_shows_a_split_tables_real_cache(store):
    plan = {"workers": 2, "tables": {
        "a": {"strategy": "split", "inner": "cached", "workers": [0, 1], "cache_bytes": 2048},
        "b": {"strategy": "direct"}}}  # fmt: skip
    with bandstore.open(store, plan=plan) as s:
        info = s.cache_info()
        assert info["a"]["cache_bytes"] == 2 * 2048 and info["a"]["source"] == "plan"
        assert info["a"]["capacity_rows"] > 0 and info["a"]["dram_bytes"] > 0
        assert info["b"]["cache_bytes"] == 0 and info["b"]["source"] == "plan"
        s.lookup_many({"a": (np.arange(50), np.array([0]))})
        assert s.cache_info()["a"]["cached_rows"] > 0
    with bandstore.open(store, cache_bytes={"a": 4096, "b": 0}) as s:
        assert s.cache_info()["a"]["source"] == "open"


def test_size_cache_apply_then_plan_apply_says_what_it_replaces(capsys, store, trace_file):
    code, out, _ = cli(capsys, "size-cache", store, trace_file, "--budget", "64K", "--apply",
                       "--sample-rate", "1")  # fmt: skip
    assert code == 0
    with bandstore.open(store) as s:
        assert all(v["source"] == "tuning" for v in s.cache_info().values())
    code, out, _ = cli(capsys, "plan", store, trace_file, "--workers", "1", "--budget", "64K",
                       "--repeats", "1", "--batch-size", "32", "--apply", "--force")  # fmt: skip
    assert code == 0 and "replaces the cache sizes stored by size-cache" in out
    with bandstore.open(store) as s:
        assert all(v["source"] == "plan" for v in s.cache_info().values())
    code, out, _ = cli(capsys, "size-cache", store, trace_file, "--budget", "64K", "--apply",
                       "--sample-rate", "1")  # fmt: skip
    assert code == 0 and "plan" in out  # the newer decision wins, and says so
    with bandstore.open(store) as s:
        assert s.plan is None
        assert all(v["source"] == "tuning" for v in s.cache_info().values())


# ---- 17: info, and create's version -------------------------------------------------------
def test_info_is_a_readable_summary(capsys, store, trace_file):
    code, out, _ = cli(capsys, "info", store)
    assert code == 0 and "{" not in out
    for word in ("version", "tables", "plan: none", "calibration: none", "layout", "counts",
                 "on disk"):  # fmt: skip
        assert word in out, (word, out)
    code, out, _ = cli(capsys, "info", store, "--json")
    info = json.loads(out)
    assert {"plan", "calibration", "disk_bytes", "tables"} <= set(info)
    assert info["tables"]["a"]["layout"] == "identity" and info["tables"]["a"]["counts"] is None


def test_create_from_a_many_table_trace_commits_one_version(capsys, tmp_path):
    names = {f"C{i}": 50 + i for i in range(26)}
    p = tmp_path / "t.npz"
    synth(names, 50, pooling=1, seed=3).save(p)
    code, out, _ = cli(capsys, "create", tmp_path / "s", "--from-trace", p, "--dim", "4")
    assert code == 0 and "version 1" in out
    with bandstore.open(tmp_path / "s") as s:
        assert s.version == 1 and len(s.tables) == 26


# ---- 18: the demo --------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_reports_load_and_no_advice_on_a_deleted_store(capsys):
    code, out, _ = cli(capsys, "demo", "--scale", "0.05")
    assert code == 0
    assert "load average" in out
    assert "bandstore calibrate STORE" not in out
    assert "vary with the machine's load" in out


def test_demo_text_explains_a_lower_hit_ratio_after_sizing():
    from bandstore.demo import format_demo

    def stats(hit, blocks):
        return {"total": {"blocks_per_1000_lookups": blocks, "hit_ratio": hit,
                          "useful_per_byte_read": 0.1, "blocks_read": blocks},
                "lookups_per_second": 1.0}  # fmt: skip

    result = {"tables": {}, "trace": {"tables": {}}, "queries": {"tuning": 1, "heldout": 1},
              "dram_budget_bytes": 1 << 20, "before": stats(0.5, 300), "after": stats(0.7, 200),
              "sized": stats(0.03, 150), "seconds": 1.0, "workdir": None,
              "load_average": [1.0, 1.0, 1.0]}  # fmt: skip
    text = format_demo(result)
    assert "hit ratio fell from 0.700 to 0.030" in text and "Blocks per 1000 lookups" in text
    assert "load average 1.0" in text and "temporary files are removed" in text


# ---- 2 (through the CLI): plan --apply of a plan that pins a table ---------------------
def test_plan_apply_with_a_pinned_table_stores_its_counts(capsys, store, trace_file,
                                                          monkeypatch):  # fmt: skip
    from dataclasses import replace

    import bandstore.tune.planning as planning
    from bandstore.serve.plan import TablePlan

    real = planning.make_plan

    def pinning(profiles, cal, workers, budget, *a, **k):  # the planner's plan, "a" pinned
        p = real(profiles, cal, workers, budget, *a, **k)
        tables = {**p.tables, "a": TablePlan("pinned", (0,), 4096)}
        return replace(p, tables=tables, counts={"a": profiles["a"].counts})

    monkeypatch.setattr(planning, "make_plan", pinning)
    code, out, err = cli(capsys, "plan", store, trace_file, "--workers", "1", "--budget", "64K",
                         "--repeats", "1", "--batch-size", "32", "--apply", "--force")  # fmt: skip
    assert code == 0, err
    with bandstore.open(store) as s:  # the default open serves it, ranked by the trace's counts
        assert s.plan.tables["a"].strategy == "pinned" and s.has_counts("a")
        assert s.pinned_rows("a").size > 0
    assert cli(capsys, "replay", store, trace_file)[0] == 0
