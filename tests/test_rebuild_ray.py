"""The rebuild on Ray (tools/rebuild.py --engine ray, bandstore.tune.distributed): the same
store as the local engine, bit for bit; --address to a running cluster; clear errors; every
cluster a test starts is stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest

import bandstore
import bandstore.tune
from bandstore.demo import create_store_for_trace
from bandstore.traces.synth import synth

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "rebuild.py"
sys.path.insert(0, str(ROOT / "tools"))
import rebuild as rebuild_tool  # noqa: E402

BATCH = 64
#: Fields that hold wall-clock times (of a commit, of a version): the only bytes two runs of
#: the same rebuild may differ in.
_CLOCK = ("committed", "created", "time")


def _without_clock(obj):
    if isinstance(obj, dict):
        return {k: _without_clock(v) for k, v in obj.items() if k not in _CLOCK}
    if isinstance(obj, list):
        return [_without_clock(v) for v in obj]
    return obj


def snapshot(path: Path) -> dict:
    """Every artefact of a store: each catalog record (JSON records without their commit
    times, binary ones byte for byte) and the bytes of every file of every version."""
    out: dict = {}
    env = lmdb.open(str(path / "catalog"), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                try:
                    rec = json.loads(bytes(value))
                except (UnicodeDecodeError, ValueError):
                    out[bytes(key)] = bytes(value)
                else:
                    out[bytes(key)] = _without_clock(rec)
    finally:
        env.close()
    for f in sorted((path / "versions").rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            out[str(f.relative_to(path))] = f.read_bytes()
    return out


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sorted(sa, key=str) == sorted(sb, key=str)
    differ = [k for k in sa if sa[k] != sb[k]]
    assert not differ, f"artefacts differ: {differ}"


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs) for the module, stopped at its end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Three tables with co-access communities, a store of their rows (dim 8), and the trace
    as two .npz logs (the later one written last)."""
    base = tmp_path_factory.mktemp("rebuild_ray")
    trace = synth(
        {"item": 3000, "user": 1200, "page": 300},
        2048,
        pooling=6,
        community_size=16,
        co_access=0.9,
        seed=3,
    )
    path = base / "store"
    create_store_for_trace(path, trace, dim=8, progress=False).close()
    logs = [base / "early.npz", base / "late.npz"]
    trace.query_slice(0, 1024).save(logs[0])
    trace.query_slice(1024, 2048).save(logs[1])
    t = logs[0].stat().st_mtime
    os.utime(logs[1], (t + 10, t + 10))
    return path, trace, logs


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _run(path: Path, logs, *extra: str) -> int:
    return rebuild_tool.main(
        [str(path), *map(str, logs), "--batch-size", str(BATCH), "--workers", "2", *extra]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_address_of_a_running_cluster(stores, tmp_path):
    """--address: the job connects to a cluster started outside it and leaves it running."""
    path, _, logs = stores
    local, on_ray = _copy(path, tmp_path / "local"), _copy(path, tmp_path / "ray")
    port = _free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    env_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    start = [ray_bin, "start", "--head", "--port", str(port), "--num-cpus", "2",
             "--include-dashboard=false",
             "--temp-dir", str(env_tmp), "--disable-usage-stats"]  # fmt: skip
    try:
        for _ in range(3):  # a loaded machine may miss the raylet's fixed 30 s start deadline
            started = subprocess.run(start, capture_output=True, text=True, timeout=300)
            if started.returncode == 0:
                break
            _stop_head(env_tmp)
        assert started.returncode == 0, started.stderr[-2000:]
        assert _run(local, logs, "--method", "frequency") == 0
        address = f"127.0.0.1:{port}"
        out = subprocess.run(
            [sys.executable, str(TOOL), str(on_ray), *map(str, logs), "--batch-size",
             str(BATCH), "--workers", "2", "--method", "frequency", "--engine", "ray",
             "--address", address, "--json"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["engine"] == "ray"
        assert_same_store(local, on_ray)
        # the cluster is still up after the job
        status = subprocess.run(
            [ray_bin, "status", "--address", address],
            capture_output=True,
            timeout=60,
            env={**os.environ, "RAY_AUTH_MODE": "token"},  # the head requires the host's token
        )
        assert status.returncode == 0
    finally:
        _stop_head(env_tmp)
        shutil.rmtree(env_tmp, ignore_errors=True)


def _stop_head(root: Path) -> None:
    """Stop the cluster whose session lives under ``root`` (its processes, by pid: `ray stop`
    would stop every cluster of the machine, other jobs' too)."""
    for pid in _processes_naming(root):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while _processes_naming(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _processes_naming(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_unreachable_address_is_one_clear_error(stores, tmp_path, capsys):
    path, _, logs = stores
    on_ray = _copy(path, tmp_path / "ray")
    before = snapshot(on_ray)
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    assert _run(on_ray, logs, "--engine", "ray", "--address", address) == 2
    err = capsys.readouterr().err
    assert err.startswith("rebuild: error: cannot reach the Ray cluster at")
    assert address in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(on_ray) == before  # nothing committed
    assert not ray.is_initialized()
    with bandstore.open(on_ray, writable=True, plan=False) as s:
        with pytest.raises(bandstore.ClusterUnavailableError) as e:
            bandstore.tune.rebuild(s, bandstore.Trace.load(logs[0]), engine="ray",
                                   address="nowhere")  # fmt: skip
        assert e.value.address == "nowhere"
        with pytest.raises(bandstore.InvalidArgumentError, match="address"):
            bandstore.tune.rebuild(s, bandstore.Trace.load(logs[0]), address=address)
    assert _run(on_ray, logs, "--address", address) == 2  # --address without --engine ray
    assert "--address needs --engine ray" in capsys.readouterr().err


def test_without_ray_installed_is_one_clear_error(stores, tmp_path, capsys, monkeypatch):
    path, _, logs = stores
    on_ray = _copy(path, tmp_path / "ray")
    before = snapshot(on_ray)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert _run(on_ray, logs, "--engine", "ray") == 2
    err = capsys.readouterr().err
    assert "[ray] extra" in err and "Traceback" not in err
    assert snapshot(on_ray) == before


@pytest.mark.slow
def test_a_local_cluster_started_for_the_job_is_stopped(stores, tmp_path):
    """Without --address and without a connection, the job starts a local cluster and stops
    it when done: no process of its session is left."""
    path, _, logs = stores
    on_ray = _copy(path, tmp_path / "ray")
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    try:
        out = subprocess.run(
            [sys.executable, str(TOOL), str(on_ray), *map(str, logs), "--batch-size",
             str(BATCH), "--workers", "2", "--method", "frequency", "--engine", "ray"],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "RAY_TMPDIR": str(root)},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "rebuild (ray)" in out.stdout
        sessions = list(root.rglob("session_2*"))
        assert sessions, "the job's cluster left no session directory under RAY_TMPDIR"
        alive = _processes_naming(root)
        assert not alive, f"processes of the job's cluster still running: {alive}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_job_stops_its_cluster_and_commits_nothing(stores, tmp_path, sig):
    """Ctrl-C (SIGINT) or SIGTERM while the tasks run: the job exits with 128 + the signal,
    the local cluster it started is stopped, the store is as it was."""
    path, _, logs = stores
    on_ray = _copy(path, tmp_path / "ray")
    before = snapshot(on_ray)
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        proc = subprocess.Popen(
            [sys.executable, str(TOOL), str(on_ray), *map(str, logs), "--batch-size",
             str(BATCH), "--workers", "2", "--method", "auto", "--engine", "ray"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "RAY_TMPDIR": str(root)},
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not _workers_of(root) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before its tasks ran: {proc.communicate()[1]}")
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        # What must hold whatever the exit: the cluster stopped, nothing committed.
        deadline = time.monotonic() + 30
        while _processes_naming(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_naming(root), "the job's cluster is still running"
        assert snapshot(on_ray) == before
        # SIGTERM: the tool's handler (143) or, once connected, the one ray.init installs
        # (exit status 15); both unwind, so the cluster is stopped
        assert "Traceback" not in err
        if proc.returncode not in ((130,) if sig == signal.SIGINT else (143, 15)):
            # Known bug, seen with a fresh `pip install ray` (not with ray[default]): after the
            # tool unwinds, Ray's exit segfaults (-11) on SIGINT, or its C++ handler takes
            # SIGTERM and aborts (-6). The invariants above held; the exit status did not.
            pytest.xfail(f"exit status {proc.returncode} (Ray's own signal handling)")
    finally:
        for pid in _processes_naming(root):  # only if the test failed: this job's processes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def _workers_of(root: Path) -> list[int]:
    """Pids of the ``ray::`` task workers of the cluster whose session lives under ``root``
    (children of its raylet; their command lines no longer name the session)."""
    raylets = [p for p in _processes_naming(root) if "raylet" in _cmdline(p).split(" ", 1)[0]]
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in raylets and _cmdline(int(proc.name)).startswith("ray::"):
            out.append(int(proc.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _processes_naming(root: Path) -> list[int]:
    """Pids of the processes whose command line names ``root`` (a cluster's raylet, GCS and
    workers name their session directory)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmd:
            out.append(int(proc.name))
    return out


def test_the_core_does_not_import_ray():
    code = (
        "import sys, bandstore, bandstore.tune, bandstore.tune.distributed;"
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr


# ---- on the module's cluster (started by the first test that needs it, stopped at the end)


@pytest.mark.parametrize("method", ["metis", pytest.param("frequency", marks=pytest.mark.slow)])
def test_ray_rebuild_is_the_local_rebuild_bit_for_bit(cluster, stores, tmp_path, method, capsys):
    path, _, logs = stores
    local, on_ray = _copy(path, tmp_path / "local"), _copy(path, tmp_path / "ray")
    assert _run(local, logs, "--method", method, "--json") == 0
    rep_local = json.loads(capsys.readouterr().out)
    assert _run(on_ray, logs, "--method", method, "--json", "--engine", "ray") == 0
    rep_ray = json.loads(capsys.readouterr().out)
    assert ray.is_initialized()  # the test's cluster was used, and left running
    assert rep_ray["engine"] == "ray" and rep_local["engine"] == "local"
    # the layouts changed (else the comparison would prove little) ...
    assert any(t["layout"] == "commit" for t in rep_local["tables"].values())
    assert snapshot(local) != snapshot(path)
    # ... and every artefact of the two stores is the same
    assert_same_store(local, on_ray)
    for name, t in rep_local["tables"].items():
        r = rep_ray["tables"][name]
        assert (
            r["heldout_chosen_blocks_per_1000_lookups"]
            == t["heldout_chosen_blocks_per_1000_lookups"]
        )
        assert r["cache_bytes"] == t["cache_bytes"] and r["threshold"] == t["threshold"]
    assert rep_ray["plan"] == rep_local["plan"]


@pytest.mark.slow
def test_ray_rebuild_auto_is_the_local_rebuild(cluster, stores, tmp_path):
    path, trace, _ = stores
    local, on_ray = _copy(path, tmp_path / "local"), _copy(path, tmp_path / "ray")
    reports = {}
    for engine, p in (("local", local), ("ray", on_ray)):
        with bandstore.open(p, writable=True, plan=False) as s:
            reports[engine] = bandstore.tune.rebuild(
                s, trace, method="auto", workers=2, batch_size=BATCH, engine=engine
            )
    assert_same_store(local, on_ray)
    a, b = reports["local"].as_dict(), reports["ray"].as_dict()
    assert a["sizing"]["tables"].keys() == b["sizing"]["tables"].keys()
    for name in a["relayout"]["tables"]:
        ra, rb = a["relayout"]["tables"][name], b["relayout"]["tables"][name]
        assert ra["configuration"] == rb["configuration"] and ra["result"] == {
            **rb["result"],
            "build_seconds": ra["result"]["build_seconds"],
        }


def test_a_failing_task_is_raised_as_itself_and_commits_nothing(cluster, stores, tmp_path):
    """An error inside a task reaches the caller as the bandstore error the local engine
    raises (not wrapped in Ray's), and the store keeps its version."""
    path, trace, _ = stores
    on_ray = _copy(path, tmp_path / "ray")
    before = snapshot(on_ray)
    # the trace declares more rows of "item" than the store has: the relayout refuses it,
    # inside the table's task
    wide = bandstore.Trace(
        {n: trace.table(n) for n in trace.table_names}, num_rows={**trace.num_rows, "item": 5000}
    )
    messages = {}
    with bandstore.open(on_ray, writable=True, plan=False) as s:
        for engine in ("local", "ray"):
            with pytest.raises(bandstore.InvalidArgumentError, match="item") as e:
                bandstore.tune.rebuild(s, wide, batch_size=BATCH, method="frequency", engine=engine)
            assert type(e.value) is bandstore.InvalidArgumentError
            messages[engine] = str(e.value)
    assert messages["ray"] == messages["local"]
    bad = bandstore.Trace({"nope": (np.arange(4), np.arange(5))})
    with bandstore.open(on_ray, writable=True, plan=False) as s:
        with pytest.raises(bandstore.UnknownTableError):
            bandstore.tune.rebuild(s, bad, batch_size=1, holdout=0.5, engine="ray")
    assert snapshot(on_ray) == before
