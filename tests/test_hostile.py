"""Hostile input (issue 25): racing writers, damaged and crafted stores built by the tests
themselves, a full disk, and the API's raw built-in errors. Each case must end in a bandstore
error (or, where the input is legitimate, in the right result), never in a crash, a raw
built-in error, or a changed store."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import lmdb
import numpy as np
import pytest
from helpers import make_store, random_tables

import bandstore
from bandstore.errors import (
    BandstoreError,
    CorruptBlockError,
    CorruptFileError,
    PlanError,
    StorageFullError,
    StoreClosedError,
    TableExistsError,
)
from bandstore.storage import blockfile
from bandstore.storage.catalog import CATALOG_DIR


@pytest.fixture
def store_path(tmp_path):
    w = random_tables({"a": 300, "b": 200}, dim=8, seed=1)
    return make_store(tmp_path / "s", w), w


# ---- helpers that damage or craft stores ---------------------------------------------------
def _current_record(path: Path) -> dict:
    with bandstore.open(path, cache_bytes=0) as s:
        return s.catalog.current_version()


def _put_version_record(path: Path, rec: dict) -> None:
    """Rewrite the current version's record in the catalog (a crafted store)."""
    env = lmdb.open(str(path / CATALOG_DIR), subdir=True, max_dbs=0)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"version/%08d" % rec["id"], json.dumps(rec, sort_keys=True).encode())
    finally:
        env.close()


def _rewrite_header(block_path: Path, header: dict) -> None:
    """Give a block file a new (self-consistent with the crafted catalog) header."""
    raw = blockfile.BLOCK_MAGIC + json.dumps(header).encode()
    with open(block_path, "r+b") as f:
        f.write(raw + b"\x00" * 16)


def _craft_table(path: Path, table: str, **changes) -> None:
    """Change table ``table``'s record in the catalog and, for geometry fields, its block
    file's header alike, so that the two agree and only the geometry is wrong."""
    rec = _current_record(path)
    trec = rec["tables"][table]
    trec.update(changes)
    _put_version_record(path, rec)
    vdir = blockfile.version_path(path, rec["id"])
    block_path = vdir / trec["block_file"]
    if block_path.is_file() and not set(changes) & {"block_file", "layout_file"}:
        header = {k: trec[k] for k in ("rows", "dim", "codec", "row_bytes", "rows_per_block",
                                         "n_blocks", "block_size")}  # fmt: skip
        header["format_version"] = blockfile.FORMAT_VERSION
        _rewrite_header(block_path, header)


def _mount_tmpfs(directory: Path, size: str) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                           capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _umount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=10)


# ---- 1: two writers adding one table name --------------------------------------------------
def test_second_writer_adding_the_same_table_gets_table_exists(tmp_path):
    path = tmp_path / "s"
    first = np.full((50, 4), 1.0, dtype=np.float32)
    second = np.full((70, 4), 2.0, dtype=np.float32)
    a = bandstore.create(path, block_size=512)
    b = bandstore.open(path, writable=True)
    try:
        a.add_table("x", first, progress=False)
        with pytest.raises(TableExistsError):
            b.add_table("x", second, progress=False)
    finally:
        a.close()
        b.close()
    with bandstore.open(path) as s:
        assert s.tables["x"].rows == 50
        np.testing.assert_array_equal(s.lookup("x", [0, 49]), first[[0, 49]])


# ---- 2: a failed set_plan changes nothing; the CLI applies the plan with its counts -------
def test_failed_set_plan_persists_nothing(store_path):
    path, w = store_path
    pinned = {"workers": 1, "tables": {"a": {"strategy": "pinned", "cache_bytes": 4096}}}
    with bandstore.open(path, writable=True) as s:
        assert not s.has_counts("a")
        with pytest.raises(PlanError):
            s.set_plan(pinned)  # no counts anywhere: cannot rank the rows to pin
        assert s.plan is None
        np.testing.assert_array_equal(s.lookup("a", [3]), w["a"][[3]])
        assert s.catalog.meta("plan") is None
    with bandstore.open(path) as s:  # the default open still works
        assert s.plan is None
        np.testing.assert_array_equal(s.lookup("b", [7]), w["b"][[7]])


def test_set_plan_with_counts_persists_them(store_path):
    path, w = store_path
    counts = np.arange(300, dtype=np.int64)
    from bandstore.serve.plan import Plan

    plan = Plan.from_dict(
        {"workers": 1, "tables": {"a": {"strategy": "pinned", "cache_bytes": 4096}}}
    )
    from dataclasses import replace

    plan = replace(plan, counts={"a": counts})
    with bandstore.open(path, writable=True) as s:
        s.set_plan(plan)
    with bandstore.open(path) as s:
        assert s.plan is not None and s.plan.tables["a"].strategy == "pinned"
        pinned = s.pinned_rows("a")
        assert pinned is not None and pinned.size and pinned.min() >= 300 - pinned.size
        np.testing.assert_array_equal(s.lookup("a", [299, 0]), w["a"][[299, 0]])


# ---- 3: a raising lookup_many changes no counter ------------------------------------------
def _corrupt_block(path: Path, table: str, block: int) -> None:
    rec = _current_record(path)
    trec = rec["tables"][table]
    p = blockfile.version_path(path, rec["id"]) / trec["block_file"]
    off = (block + 1) * trec["block_size"] + 5
    with open(p, "r+b") as f:
        f.seek(off)
        byte = f.read(1)
        f.seek(off)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("workers", [1, 2])
def test_raising_lookup_many_changes_no_counter(store_path, workers):
    path, w = store_path
    _corrupt_block(path, "b", 0)  # rows 0.. of b
    with bandstore.open(path, cache_bytes=1 << 16, workers=workers) as s:
        req = {"a": (np.arange(40, dtype=np.int64), np.array([0, 20])),
               "b": (np.array([0, 1], dtype=np.int64), np.array([0]))}  # fmt: skip
        before = s.stats()
        for _ in range(3):
            with pytest.raises(CorruptBlockError):
                s.lookup_many(req)
        after = s.stats()
        for name in ("a", "b", "total"):
            for k in ("lookups", "hits", "misses", "blocks_read", "bytes_read"):
                assert after[name][k] == before[name][k], (name, k)
        assert after["total"]["lookup_many_calls"] == before["total"]["lookup_many_calls"]
        # The cache may hold verified rows of "a" now: results are still exact.
        out = s.lookup_many({"a": req["a"]})
        np.testing.assert_allclose(out["a"][0], w["a"][:20].sum(0), rtol=1e-5)
        assert s.stats()["a"]["lookups"] == 40


# ---- 4: a full disk ------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        _umount(mnt)


def test_full_disk_add_table_raises_and_keeps_previous_content(tiny_fs):
    path = tiny_fs / "s"
    small = np.ones((100, 8), dtype=np.float32)
    with bandstore.create(path, block_size=512) as s:
        s.add_table("small", small, progress=False)
        version = s.version
        big = np.ones((100_000, 8), dtype=np.float32)  # 3.2 MB: over the 1 MiB filesystem
        with pytest.raises(StorageFullError) as info:
            s.add_table("big", big, progress=False)
        assert isinstance(info.value, OSError)
        assert "no space" in str(info.value).lower()
        assert s.version == version
    # No orphan: only the committed version's directory is left.
    assert sorted(blockfile.list_version_dirs(path)) == [version]
    with bandstore.open(path) as s:
        assert list(s.tables) == ["small"]
        np.testing.assert_array_equal(s.lookup("small", [5]), small[[5]])
        assert s.verify() == []


# ---- 5: a truncated catalog --------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.1, 0.0])
def test_truncated_catalog_is_a_corrupt_file_not_a_crash(store_path, keep):
    path, _ = store_path
    mdb = path / CATALOG_DIR / "data.mdb"
    size = mdb.stat().st_size
    # In a child: a SIGBUS would kill the test run, not fail the test.
    code = (
        "import sys, bandstore\n"
        "from bandstore.errors import CorruptFileError\n"
        f"open({str(mdb)!r}, 'r+b').truncate({int(size * keep)})\n"
        "try:\n"
        f"    bandstore.open({str(path)!r})\n"
        "except CorruptFileError as e:\n"
        "    print('CORRUPT', e); sys.exit(0)\n"
        "print('OPENED'); sys.exit(1)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(bandstore.__file__).parents[1]))
    r = subprocess.run(["python", "-c", code], capture_output=True, text=True, timeout=120,
                       env=env)  # fmt: skip
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "CORRUPT" in r.stdout and "data.mdb" in r.stdout


def test_catalog_ending_before_lmdbs_last_used_page_opens(store_path):
    """LMDB may count pages it allocated and freed without writing them: a sound file can end
    before its meta page's last used page (a writer killed at random left one such store,
    which was refused). Only the root pages must be in the file."""
    from bandstore.storage.catalog import _LAST_PAGE_OFFSET

    path, w = store_path
    mdb = path / CATALOG_DIR / "data.mdb"
    pages = mdb.stat().st_size // 4096
    with open(mdb, "r+b") as f:
        for meta in (0, 4096):  # both meta pages: the newest names pages past the end
            f.seek(meta + _LAST_PAGE_OFFSET)
            f.write((pages + 1).to_bytes(8, "little"))
    with bandstore.open(path) as s:
        assert np.allclose(s.lookup("a", [0, 5]), w["a"][[0, 5]], atol=1e-2)


# ---- 6: crafted geometry, layouts and file names -----------------------------------------
def _open_in_child(path: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys, numpy as np, bandstore\n"
        "from bandstore.errors import BandstoreError\n"
        "try:\n"
        "    opts = bandstore.ServeOptions(verify_reads=False)\n"
        f"    s = bandstore.open({str(path)!r}, options=opts)\n"
        "    for n, t in s.tables.items():\n"
        "        s.lookup(n, np.arange(t.rows))\n"
        "except BandstoreError as e:\n"
        "    print('ERROR', type(e).__name__, e); sys.exit(0)\n"
        "print('SERVED'); sys.exit(1)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(bandstore.__file__).parents[1]))
    return subprocess.run(["python", "-c", code], capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [
        {"rows_per_block": 100},  # 100 rows of 32 bytes in a 512-byte block
        {"row_bytes": 4096, "rows_per_block": 1},  # a row over the block
        {"dim": 1 << 20},  # a huge dim (row_bytes kept)
        {"rows": 10_000},  # more rows than the blocks hold
        {"block_size": 256},  # not the store's block size
        {"codec": "float64"},
    ],
    ids=["rows_per_block", "row_bytes", "dim", "rows", "block_size", "codec"],
)
def test_crafted_geometry_is_refused_at_open(store_path, changes):
    path, _ = store_path
    _craft_table(path, "a", **changes)
    r = _open_in_child(path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "CorruptFileError" in r.stdout


def _craft_layout(path: Path, table: str, layout: np.ndarray) -> None:
    rec = _current_record(path)
    trec = rec["tables"][table]
    vdir = blockfile.version_path(path, rec["id"])
    p = vdir / trec["layout_file"]
    p.unlink()  # (a hard link shared with older versions: write a new file)
    trec["layout_checksum"] = blockfile.write_layout_file(p, layout)
    _put_version_record(path, rec)


@pytest.mark.parametrize("kind", ["negative", "too_large", "duplicate"])
def test_crafted_layout_is_refused_at_open(store_path, kind):
    path, _ = store_path
    layout = np.arange(300, dtype=np.int64)
    if kind == "negative":
        layout[7] = -1
    elif kind == "too_large":
        layout[7] = 10**9
    else:
        layout[7] = layout[8]
    _craft_layout(path, "a", layout)
    with pytest.raises(CorruptFileError, match="layout"):
        bandstore.open(path)


@pytest.mark.parametrize("key", ["block_file", "layout_file"])
def test_file_names_outside_the_version_are_refused(store_path, tmp_path, key):
    path, _ = store_path
    rec = _current_record(path)
    name = rec["tables"]["a"][key]
    vdir = blockfile.version_path(path, rec["id"])
    outside = tmp_path / name
    shutil.copyfile(vdir / name, outside)  # a valid file, but not the store's
    rel = os.path.relpath(outside, vdir)
    assert rel.startswith("..")
    _craft_table(path, "a", **{key: rel})
    with pytest.raises(CorruptFileError, match="version directory"):
        bandstore.open(path)


# ---- 7: races: open against commit + gc; close against lookups ---------------------------
def test_open_retries_when_gc_removes_the_version_it_picked(store_path, monkeypatch):
    path, w = store_path
    stale = _current_record(path)
    with bandstore.open(path, writable=True) as s:
        s.add_table("c", np.ones((10, 8), dtype=np.float32), progress=False)
    from bandstore.storage.versions import collect_garbage

    assert stale["id"] in collect_garbage(path)["removed"]
    from bandstore.storage.catalog import Catalog

    real = Catalog.current_version
    calls = []

    def racing(self):  # the first look sees the version a gc removed since
        calls.append(1)
        return stale if len(calls) == 1 else real(self)

    monkeypatch.setattr(Catalog, "current_version", racing)
    with bandstore.open(path) as s:
        assert s.version > stale["id"] and "c" in s.tables
        np.testing.assert_array_equal(s.lookup("a", [1]), w["a"][[1]])


def test_missing_current_version_directory_is_corrupt(store_path):
    path, _ = store_path
    rec = _current_record(path)
    shutil.rmtree(blockfile.version_path(path, rec["id"]))
    with pytest.raises(CorruptFileError, match="missing"):
        bandstore.open(path)


@pytest.mark.parametrize("plan", [None, "direct"])
def test_table_used_after_close_raises_store_closed(store_path, plan):
    path, _ = store_path
    p = None if plan is None else {"workers": 1, "tables": {"a": {"strategy": plan}}}
    s = bandstore.open(path, plan=p)
    t = s._tables["a"]  # a call that passed the open check as another thread closes
    s.close()
    out = np.zeros((1, 8), dtype=np.float32)
    with pytest.raises(StoreClosedError):
        t.serve(np.array([1]), np.array([0, 1]), np.zeros(0, np.float32), 0, -1, out)


def test_close_while_threads_look_up(store_path):
    path, _ = store_path
    s = bandstore.open(path, workers=2)
    errors: list[BaseException] = []
    started = threading.Barrier(4)

    def reader(k: int) -> None:
        rng = np.random.default_rng(k)
        started.wait()
        for _ in range(20_000):
            try:
                if k % 2:
                    s.lookup("a", rng.integers(0, 300, 16))
                else:
                    s.lookup_many({"a": (rng.integers(0, 300, 16), np.array([0, 8])),
                                   "b": (rng.integers(0, 200, 4), np.array([0, 2]))})  # fmt: skip
            except StoreClosedError:
                return
            except BaseException as exc:  # noqa: BLE001 - any other error fails the test
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    started.wait()
    s.close()
    for th in threads:
        th.join(60)
    assert not errors, errors


# ---- 8: a store on a read-only mount ----------------------------------------------------
def test_store_on_a_read_only_mount_opens_for_reading(tmp_path):
    mnt = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(mnt, "16m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        w = random_tables({"a": 100}, dim=8, seed=3)
        make_store(mnt / "s", w)
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only: {r.stderr!r}")
        with bandstore.open(mnt / "s") as s:
            np.testing.assert_array_equal(s.lookup("a", [4, 99]), w["a"][[4, 99]])
            assert s.verify() == []
        with bandstore.open(mnt / "s", writable=True) as s, pytest.raises(BandstoreError):
            s.add_table("b", w["a"], progress=False)
    finally:
        _umount(mnt)


# ---- 9: raw built-in errors from the API, and what was silently accepted -----------------
def _bad_calls(path: Path, tmp_path: Path):
    s = bandstore.open(path, writable=True)
    ids, off = np.array([1, 2]), np.array([0])
    yield "table name list", lambda: s.lookup(["a"], [1])
    yield "mode list", lambda: s.embedding_bag("a", ids, off, mode=["sum"])
    yield "padding_idx str", lambda: s.embedding_bag("a", ids, off, padding_idx="x")
    yield "padding_idx float", lambda: s.embedding_bag("a", ids, off, padding_idx=1.5)
    yield "cache_bytes str", lambda: bandstore.open(path, cache_bytes="1M")
    yield "cache_bytes nan", lambda: bandstore.open(path, cache_bytes=float("nan"))
    yield "cache_bytes map nan", lambda: bandstore.open(path, cache_bytes={"a": float("nan")})
    yield "threshold str", lambda: bandstore.CacheOptions(threshold="x")
    yield "pinned_share 2", lambda: bandstore.CacheOptions(pinned_share=2.0)
    yield "set_tuning no cache_bytes", lambda: s.set_tuning({"a": {"threshold": 1}})
    yield (
        "set_tuning bad threshold",
        lambda: s.set_tuning({"a": {"cache_bytes": 9, "threshold": "x"}}),
    )
    yield "create on a file", lambda: bandstore.create(path / "catalog" / "data.mdb")
    yield "create block_size 2**40", lambda: bandstore.create(tmp_path / "new", block_size=2**40)
    yield "table name newline", lambda: s.add_table("x\n", np.ones((3, 2), np.float32))
    layout = np.arange(300, dtype=np.int64)
    for big in (2**40, 2**62):
        lay = layout.copy()
        lay[0] = big
        yield f"layout slot {big}", lambda lay=lay: s.relayout_tables({"a": lay})
    yield "float layout", lambda: s.relayout_tables({"a": layout.astype(np.float64) + 0.5})
    yield "negative counts", lambda: s.relayout_tables({"a": layout}, counts={"a": -layout})
    yield "nan counts", lambda: s.relayout_tables({"a": layout}, counts={"a": np.full(300, np.nan)})
    yield "decoded_rows out of range", lambda: s.decoded_rows("a", -5, 10**6)
    yield "decoded_rows reversed", lambda: s.decoded_rows("a", 10, 5)
    s.close()


def test_bad_api_arguments_raise_bandstore_errors(store_path, tmp_path):
    path, _ = store_path
    failures = []
    for label, call in _bad_calls(path, tmp_path):
        try:
            result = call()
        except BandstoreError:
            continue
        except BaseException as exc:  # noqa: BLE001 - the point: which ones are not ours
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        if hasattr(result, "close"):
            result.close()
        failures.append(f"{label}: accepted")
    assert not failures, "\n".join(failures)
    with bandstore.open(path) as s:  # and nothing changed
        assert sorted(s.tables) == ["a", "b"] and not s.has_counts("a")


def test_damaged_catalog_page_is_corrupt_file(store_path):
    path, _ = store_path
    mdb = path / CATALOG_DIR / "data.mdb"
    raw = bytearray(mdb.read_bytes())
    raw[16:20] = b"\x00\x00\x00\x00"  # both meta pages' magic
    psize = 4096
    raw[psize + 16 : psize + 20] = b"\x00\x00\x00\x00"
    mdb.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        bandstore.open(path)


@pytest.mark.parametrize("damage", ["bytes", "encrypted_flag", "method"])
def test_damaged_trace_zip_is_corrupt_file(tmp_path, damage):
    trace = (
        bandstore.Trace.from_queries({"a": 10}, [{"a": [1, 2]}, {"a": [3]}] * 50)
        if hasattr(bandstore.Trace, "from_queries")
        else None
    )
    if trace is None:
        from bandstore.traces.synth import synth

        trace = synth({"a": 100}, 200, pooling=3, seed=1)
    p = tmp_path / "t.npz"
    trace.save(p)
    raw = bytearray(p.read_bytes())
    if damage == "bytes":
        for off in range(60, len(raw) - 200, 97):  # damage compressed data, keep the directory
            raw[off] ^= 0x5A
    else:  # flag every member encrypted / give it an unknown compression method
        for sig, flag_off, method_off in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
            i = raw.find(sig)
            while i >= 0:
                if damage == "encrypted_flag":
                    raw[i + flag_off] |= 1
                else:
                    raw[i + method_off : i + method_off + 2] = (99).to_bytes(2, "little")
                i = raw.find(sig, i + 4)
    p.write_bytes(bytes(raw))
    with pytest.raises(BandstoreError):
        bandstore.Trace.load(p)


# ---- 10: a store dropped without close() -------------------------------------------------
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_dropped_store_releases_its_fds_and_version(store_path):
    path, _ = store_path
    with contextlib.suppress(Exception):
        bandstore.open(path).close()  # warm: numba, the shared catalog
    gc.collect()
    before = _open_fds()
    s = bandstore.open(path, workers=2)
    v = s.version
    s.lookup("a", [1, 2])
    del s
    gc.collect()
    assert _open_fds() == before
    with bandstore.open(path, writable=True) as w:
        w.add_table("c", np.ones((5, 8), dtype=np.float32), progress=False)
    from bandstore.storage.versions import collect_garbage

    assert v in collect_garbage(path)["removed"]


def test_full_disk_at_catalog_commit_is_storage_full(tiny_fs):
    path = tiny_fs / "s"
    rows = 60_000
    with bandstore.create(path, block_size=512) as s:
        s.add_table("t", np.ones((rows, 1), dtype=np.float16), progress=False)
        filler = tiny_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # take every byte left
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        counts = np.arange(rows, dtype=np.int64)  # 240 KB of new catalog pages
        with pytest.raises(StorageFullError):
            s.set_tuning({"t": {"cache_bytes": 4096, "threshold": 1}}, counts={"t": counts})
        assert not s.has_counts("t")
    filler.unlink()
    with bandstore.open(path) as s:
        assert not s.has_counts("t") and s.catalog.tuning("t") is None


def test_create_on_a_full_disk_leaves_nothing(tiny_fs):
    fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # take every byte
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(BandstoreError):  # StorageFullError, or a catalog LMDB could not make
        bandstore.create(tiny_fs / "s")
    assert not (tiny_fs / "s").exists()


@pytest.mark.parametrize("change", [{"checksum_bytes": 0}, {"checksum_bytes": 3},
                                    {"block_size": 0}, {"block_size": 2**40}])  # fmt: skip
def test_crafted_format_record_is_refused(store_path, change):
    path, _ = store_path
    env = lmdb.open(str(path / CATALOG_DIR), subdir=True, max_dbs=0)
    try:
        with env.begin(write=True) as txn:
            fmt = json.loads(txn.get(b"format"))
            fmt.update(change)
            txn.put(b"format", json.dumps(fmt).encode())
    finally:
        env.close()
    with pytest.raises(CorruptFileError, match="format record"):
        bandstore.open(path)


def test_format_properties_after_close_raise_store_closed(store_path):
    path, _ = store_path
    s = bandstore.open(path)
    assert s.block_size > 0 and s.checksum_bytes > 0
    s.close()
    for attr in ("block_size", "checksum_bytes", "tables"):
        with pytest.raises(StoreClosedError):
            getattr(s, attr)
