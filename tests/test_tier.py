"""The slow tier as it is read (bandstore.tier): io='mmap' and io='direct' against each other,
the page cache, corrupt blocks, device bytes and memory()."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import make_store, random_request, random_tables

import bandstore
from bandstore.errors import (
    CorruptBlockError,
    DirectIOUnsupportedError,
    InvalidArgumentError,
)
from bandstore.serve.cache import cache_row_bytes
from bandstore.storage import tier
from bandstore.tune.planning import Plan

DIM = 4
SIZES = {"a": 300, "b": 1000, "c": 40, "d": 700}
CRB = cache_row_bytes(DIM)

PLANS = {
    "cached": None,  # every table cached (the store's counts: pinned share and admission)
    "all": {
        "workers": 2,
        "tables": {
            "a": {"strategy": "resident", "worker": 1},
            "b": {"strategy": "split", "inner": "cached", "workers": [0, 1],
                  "cache_bytes": 60 * CRB, "replicate": [1, 2, 3, 500]},
            "c": {"strategy": "direct", "worker": 1},
            "d": {"strategy": "split", "inner": "resident", "workers": [1, 0]},
        },
    },
    "pinned": {
        "workers": 2,
        "tables": {
            "a": {"strategy": "pinned", "worker": 1, "cache_bytes": 50 * 4 * DIM},
            "b": {"strategy": "split", "inner": "pinned", "workers": [0, 1],
                  "cache_bytes": 200 * 4 * DIM},
            "c": {"strategy": "split", "inner": "direct", "workers": [1, 0]},
            "d": {"strategy": "cached", "worker": 0, "cache_bytes": 30 * CRB},
        },
    },
}  # fmt: skip


def _direct_dir(base: Path) -> Path | None:
    """A directory under ``base``, or under /var/tmp, where O_DIRECT reads work."""
    if tier.direct_io_supported(base):
        return base
    if tier.direct_io_supported("/var/tmp"):
        return Path(tempfile.mkdtemp(prefix="bandstore-tier-", dir="/var/tmp"))
    return None


@pytest.fixture(scope="module")
def weights():
    return random_tables(SIZES, DIM, seed=21)


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(3)
    return {n: (rng.zipf(1.4, r) % 30).astype(np.int32) for n, r in SIZES.items()}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, weights, counts):
    base = _direct_dir(tmp_path_factory.mktemp("tier"))
    if base is None:
        pytest.skip("no directory here (the test tmp dir, /var/tmp) supports O_DIRECT reads")
    path = make_store(base / "store", weights)
    tuning = {n: {"cache_bytes": 80 * CRB, "threshold": 3, "pinned_share": 0.25} for n in SIZES}
    with bandstore.open(path, writable=True) as s:
        s.set_tuning(tuning, counts=counts)
    yield path
    if not str(path).startswith(str(tmp_path_factory.getbasetemp())):
        shutil.rmtree(path.parent, ignore_errors=True)


def _block_files(path: Path) -> dict[str, Path]:
    with bandstore.open(path, plan=False) as s:
        return {n: t.block_path for n, t in s._tables.items()}


def _evict(path: Path) -> None:
    gc.collect()  # pages still mapped by a dropped store survive an eviction
    for f in _block_files(path).values():
        bandstore.storage.blockfile.evict_from_page_cache(f)


def _plan(name, counts):
    p = PLANS[name]
    if p is None:
        return None
    return replace(Plan.from_dict(p), counts=counts) if name == "pinned" else p


def test_bad_io_is_refused(store_path):
    with pytest.raises(InvalidArgumentError, match="io must be one of"):
        bandstore.open(store_path, io="uring")


@pytest.mark.parametrize("plan", list(PLANS))
def test_mmap_and_direct_give_identical_answers(store_path, weights, counts, plan):
    """Every strategy, bit for bit, with the same counters (cache state evolves alike)."""
    rng = np.random.default_rng(99)
    requests = [random_request(rng, weights, n_bags=40, max_bag=12) for _ in range(4)]
    singles = {n: rng.integers(0, w.shape[0], 50) for n, w in weights.items()}
    got, stats = {}, {}
    for io in ("mmap", "direct"):
        with bandstore.open(store_path, plan=_plan(plan, counts), io=io) as s:
            assert s.io == io
            outs = []
            for i, req in enumerate(requests):
                outs.append(s.lookup_many(req, mode=("sum", "mean", "max", "sum")[i]))
                for n, (ids, off) in req.items():
                    outs.append({n: s.embedding_bag(n, ids, off, padding_idx=int(ids[0]))})
            for n, w in weights.items():
                assert np.array_equal(s.lookup(n, singles[n]), w[singles[n]])
            got[io], stats[io] = outs, s.stats()
    for a, b in zip(got["mmap"], got["direct"], strict=True):
        for n in a:
            assert np.array_equal(a[n], b[n]), n
    keys = ("lookups", "hits", "misses", "blocks_read", "bytes_read", "useful_bytes")
    if plan != "cached":
        # The executor cuts bag-range tables by measured times: their blocks per call vary.
        keys = keys[:3]
    for n in SIZES:
        assert {k: stats["mmap"][n][k] for k in keys} == {k: stats["direct"][n][k] for k in keys}, n


def test_direct_leaves_the_page_cache_without_the_block_files(store_path, weights, counts):
    files = _block_files(store_path)
    _evict(store_path)
    assert all(tier.page_cache_bytes(f) == 0 for f in files.values())
    rng = np.random.default_rng(1)
    for plan in PLANS:  # resident decode, pinned loads, caches, direct reads, verify()
        with bandstore.open(store_path, plan=_plan(plan, counts), io="direct") as s:
            for _ in range(3):
                s.lookup_many(random_request(rng, weights, n_bags=50))
            assert s.verify(progress=False) == []
            mem = s.memory()
            assert all(mem[n]["page_cache"] == 0 for n in SIZES)
            assert s.stats()["total"]["device_bytes"] > 0
    assert {n: tier.page_cache_bytes(f) for n, f in files.items()} == dict.fromkeys(SIZES, 0)
    # The same with io="mmap" puts them there (and memory() says so).
    gc.collect()
    with bandstore.open(store_path, plan=False, io="mmap") as s:
        s.lookup_many(random_request(rng, weights, n_bags=50))
        mem = s.memory()
        assert mem["total"]["page_cache"] > 0
        for n, f in files.items():
            assert mem[n]["page_cache"] == tier.page_cache_bytes(f)


def test_page_cache_bytes_agrees_with_fincore(store_path, weights):
    if shutil.which("fincore") is None:
        pytest.skip("util-linux fincore is not installed")
    rng = np.random.default_rng(2)
    _evict(store_path)
    with bandstore.open(store_path, plan=False, io="mmap") as s:
        s.lookup_many(random_request(rng, weights, n_bags=80))
        for f in _block_files(store_path).values():
            out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                                  str(f)], capture_output=True, text=True, check=True)  # fmt: skip
            assert int(out.stdout.split()[0]) == tier.page_cache_bytes(f)


def _expected_direct_bytes(path: Path, blocks: np.ndarray, block_size: int) -> int:
    """What O_DIRECT must read for ``blocks``: their distinct 4 KB pages, the last one cut at
    the end of the file (the obvious computation)."""
    size = os.path.getsize(path)
    a = DIRECT = tier.DIRECT_ALIGN
    pages = set()
    for b in blocks.tolist():
        lo, hi = (b + 1) * block_size, (b + 2) * block_size
        pages.update(range(lo // a, -(-hi // a)))
    return sum(min((p + 1) * DIRECT, size) - p * DIRECT for p in pages)


def test_device_bytes_are_exact_for_direct(store_path, weights):
    rng = np.random.default_rng(4)
    with bandstore.open(store_path, plan=False, cache_bytes=0, io="direct") as s:
        t = s._tables["b"]
        ids = rng.integers(0, SIZES["b"], 300)
        s.embedding_bag("b", ids, np.arange(0, 300, 10))
        blocks = np.unique(np.asarray(t.layout)[ids] // t.geometry.rows_per_block)
        st = s.stats()["b"]
        assert st["blocks_read"] == blocks.size
        want = _expected_direct_bytes(t.block_path, blocks, t.geometry.block_size)
        assert st["device_bytes"] == want
        assert st["effective_bandwidth"] == pytest.approx(st["useful_bytes"] / want)
        assert s.stats()["total"]["device_bytes"] == want
        s.reset_stats()
        assert s.stats()["b"]["device_bytes"] == 0


def test_device_bytes_for_mmap_count_the_faults(store_path, weights):
    if tier.thread_read_bytes() < 0:
        pytest.skip("this kernel does not account per-thread I/O (/proc/thread-self/io)")
    rng = np.random.default_rng(5)
    _evict(store_path)
    with bandstore.open(store_path, plan=False, cache_bytes=0, io="mmap") as s:
        t = s._tables["b"]
        np.asarray(t.layout).sum()  # the layout file's pages: not the block file's
        ids = rng.integers(0, SIZES["b"], 300)
        s.embedding_bag("b", ids, np.arange(0, 300, 10))
        blocks = np.unique(np.asarray(t.layout)[ids] // t.geometry.rows_per_block)
        want = _expected_direct_bytes(t.block_path, blocks, t.geometry.block_size)
        # Random advice: each faulted page alone (the header page was read at open).
        assert want - tier.DIRECT_ALIGN <= s.stats()["b"]["device_bytes"] <= want
        s.reset_stats()
        s.embedding_bag("b", ids, np.arange(0, 300, 10))  # now in the page cache
        assert s.stats()["b"]["device_bytes"] == 0


@pytest.mark.parametrize("io", ["mmap", "direct"])
def test_memory_adds_up(store_path, counts, io):
    with bandstore.open(store_path, plan=_plan("all", counts), io=io) as s:
        mem = s.memory()
        info = s.cache_info()
        for n in SIZES:
            t = s._tables[n]
            m = mem[n]
            assert m["checksums"] == t.checksums.nbytes and m["index"] == t.inverse_layout.nbytes
            assert m["bytes"] == sum(v for k, v in m.items() if k != "bytes")
            assert 0 <= m["layout"] <= (-(-np.asarray(t.layout).nbytes // 4096) + 1) * 4096
            assert m["strategy"] == (t.runner.dram_bytes if t.runner is not None else 0)
        assert mem["a"]["strategy"] == SIZES["a"] * DIM * 4  # resident: the decoded table
        assert mem["b"]["strategy"] > 60 * CRB  # the split's caches
        for n in SIZES:  # a runner with a cache of its own (a split's parts) reports that one
            own = hasattr(s._tables[n].runner, "cache_info")
            assert info[n]["dram_bytes"] == mem[n]["strategy" if own else "cache"]
        for k in mem["total"]:
            assert mem["total"][k] == sum(mem[n][k] for n in SIZES)


@pytest.fixture
def corrupt_path(store_path, tmp_path):
    """A copy of the store with one byte of block 3 of table ``b`` flipped."""
    base = _direct_dir(tmp_path)
    copy = base / "corrupt"
    shutil.copytree(store_path, copy)
    f = _block_files(copy)["b"]
    with bandstore.open(copy, plan=False) as s:
        bs = s._tables["b"].geometry.block_size
    with open(f, "r+b") as fh:
        fh.seek(4 * bs + 7)  # data block 3 (after the header block)
        byte = fh.read(1)
        fh.seek(4 * bs + 7)
        fh.write(bytes([byte[0] ^ 0xFF]))
    yield copy
    if base != tmp_path:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("io", ["mmap", "direct"])
@pytest.mark.parametrize("strategy", ["cached", "direct", "pinned", "split"])
def test_a_corrupt_block_raises_on_both_paths(corrupt_path, counts, io, strategy):
    if strategy == "cached":
        plan = None
    elif strategy == "split":
        plan = {"workers": 2, "tables": {"b": {"strategy": "split", "inner": "cached",
                "workers": [0, 1], "cache_bytes": 20 * CRB}}}  # fmt: skip
    else:
        entry = {"strategy": strategy, "worker": 0}
        if strategy == "pinned":
            entry["cache_bytes"] = 100 * 4 * DIM
        plan = replace(Plan.from_dict({"workers": 1, "tables": {"b": entry}}), counts=counts)
    with bandstore.open(corrupt_path, plan=plan, io=io) as s:
        rpb = s._tables["b"].geometry.rows_per_block
        row = 3 * rpb  # a row of block 3 (identity layout)
        with pytest.raises(CorruptBlockError) as exc:
            s.lookup_many({"b": (np.array([row, 1], dtype=np.int64), np.array([0]))})
        assert exc.value.block == 3 and exc.value.table == "b"
        assert exc.value.expected != exc.value.actual
        assert [p["block"] for p in s.verify(progress=False) if p["table"] == "b"] == [3]
        ok = np.array([5 * rpb, 6 * rpb], dtype=np.int64)
        s.lookup("b", ok)  # other blocks still serve


@pytest.mark.parametrize("io", ["mmap", "direct"])
def test_resident_decode_of_a_corrupt_table_raises(corrupt_path, io):
    plan = {"workers": 1, "tables": {"b": {"strategy": "resident", "worker": 0}}}
    with pytest.raises(CorruptBlockError) as exc:
        bandstore.open(corrupt_path, plan=plan, io=io)
    assert exc.value.block == 3


def test_o_direct_refused_names_the_filesystem(store_path, monkeypatch):
    real = os.open

    def refuse(path, flags, *a, **k):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(DirectIOUnsupportedError) as exc:
        bandstore.open(store_path, io="direct")
    assert exc.value.filesystem == tier.filesystem_of(store_path) != "unknown"
    assert exc.value.filesystem in str(exc.value) and "O_DIRECT" in str(exc.value)
    monkeypatch.setattr(os, "open", real)
    with bandstore.open(store_path, io="direct") as s:  # nothing left half-open
        assert s.io == "direct"


def test_tmpfs_refusal_if_this_kernel_refuses(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or tier.filesystem_of(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    if tier.direct_io_supported(shm):
        pytest.skip("this kernel's tmpfs accepts O_DIRECT (Linux >= 6.6)")
    d = Path(tempfile.mkdtemp(dir=shm))
    try:
        make_store(d / "s", {"t": np.ones((10, 4), dtype=np.float32)})
        with pytest.raises(DirectIOUnsupportedError, match="tmpfs"):
            bandstore.open(d / "s", io="direct")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_replay_cli_takes_io(store_path, tmp_path, capsys):
    import json

    from bandstore.cli import main
    from bandstore.traces.synth import synth

    trace = synth(SIZES, n_queries=200, seed=1)
    tpath = tmp_path / "trace.npz"
    trace.save(tpath)
    for io in ("mmap", "direct"):
        assert main(["replay", str(store_path), str(tpath), "--io", io, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["total"]["device_bytes"] >= 0 and out["total"]["lookups"] > 0


def test_the_cost_model_prices_a_direct_block_read(store_path, weights):
    from bandstore.traces.synth import synth
    from bandstore.tune.planning import profile_trace
    from bandstore.tune.planning.calibrate import Calibration, _measure_direct, default_calibration
    from bandstore.tune.planning.model import cost

    cal = default_calibration()
    assert cal.block(io="direct") == cal.block_cold_ns  # not measured: the cold figure
    cal.block_direct_ns = 3 * cal.block_cold_ns
    assert cal.block(io="direct") == cal.block(cold=True, io="direct") == 3 * cal.block_cold_ns
    assert cal.block() == cal.block_ns  # mmap, warm: unchanged
    assert Calibration.from_dict({"block_ns": 5.0}).block_direct_ns == 0.0  # an older one
    trace = synth(SIZES, n_queries=300, seed=3)
    for io in ("mmap", "direct"):
        with bandstore.open(store_path, plan=False, io=io) as s:
            profiles = profile_trace(s, trace, batch_size=64)
        assert all(p.io == io for p in profiles.values())
        ns = cost(profiles["b"], "direct", cal)
        if io == "mmap":
            mmap_ns = ns
    assert ns > mmap_ns  # the same table, read with O_DIRECT, costs more per block
    # The measurement itself, on this machine (the calibration's own temporary file format).
    with bandstore.open(store_path, plan=False) as s:
        t = s._tables["b"]
        g = t.geometry
        ids = np.arange(0, SIZES["b"], g.rows_per_block, dtype=np.int64)
        got = _measure_direct(t.block_path, g.file_size, ids, np.asarray(t.layout),
                              g.rows_per_block, g.block_size, g.row_bytes, t.codec, g.dim,
                              t.checksums, 0.0)  # fmt: skip
    assert got > 0


def test_relayout_and_decoded_rows_read_through_direct(store_path, weights, tmp_path):
    """Writers read the served version through the store's io too (rows copied by relayout,
    ``decoded_rows``), and the page cache gets none of the old file from those reads."""
    base = _direct_dir(tmp_path)
    copy = base / "relayout"
    shutil.copytree(store_path, copy)
    try:
        old = _block_files(copy)["b"]
        os.sync()  # the copy's pages are dirty until written back, and eviction skips those
        _evict(copy)
        assert tier.page_cache_bytes(old) == 0
        rng = np.random.default_rng(8)
        with bandstore.open(copy, writable=True, io="direct", plan=False) as s:
            assert np.array_equal(s.decoded_rows("b", 100, 400), weights["b"][100:400])
            s.relayout_tables({"b": rng.permutation(SIZES["b"])})
            assert tier.page_cache_bytes(old) == 0
            ids = rng.integers(0, SIZES["b"], 200)
            assert np.array_equal(s.lookup("b", ids), weights["b"][ids])
            assert np.array_equal(s.decoded_rows("b", 0, SIZES["b"]), weights["b"])
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)
