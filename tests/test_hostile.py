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
    InvalidArgumentError,
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


# ---- 6: crafted geometry, layouts and file names -----------------------------------------
def _open_in_child(path: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys, numpy as np, bandstore\n"
        "from bandstore.errors import BandstoreError\n"
        "try:\n"
        f"    s = bandstore.open({str(path)!r}, verify_reads=False)\n"
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
