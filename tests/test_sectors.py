"""Checksums per sector: lookups verify only what they decode; format 1 stores still serve."""

from __future__ import annotations

import json
import shutil

import lmdb
import numpy as np
import pytest

import bandstore
from bandstore.kernels.checksum import xxh64
from bandstore.serve.store import DEFAULT_BLOCK_SIZE, DEFAULT_CHECKSUM_BYTES
from bandstore.storage.catalog import FORMAT_VERSION, READABLE_FORMAT_VERSIONS

BLOCK = 4096
SECTOR = 256
DIM = 16  # float32: 64 bytes a row, 64 rows a block, 4 rows a sector
ROWS = 1000


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((ROWS, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("sectors") / "store"
    with bandstore.create(path, block_size=BLOCK, checksum_bytes=SECTOR) as s:
        s.add_table("t", weights, progress=False)
    return path


@pytest.fixture
def store(pristine, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(pristine, copy)
    return copy


def _table(path):
    with bandstore.open(path) as s:
        t = s._tables["t"]
        return t.block_path, t.info.rows_per_block, np.asarray(t.layout).copy(), t.checksums.copy()


def test_checksums_cover_sectors_in_block_order(pristine):
    block_path, rpb, layout, sums = _table(pristine)
    n_blocks = -(-ROWS // rpb)
    spb = BLOCK // SECTOR
    assert rpb == BLOCK // (4 * DIM) and sums.shape == (n_blocks * spb,)
    raw = block_path.read_bytes()
    for b in (0, n_blocks - 1):
        for s in (0, spb - 1):
            start = BLOCK * (1 + b) + s * SECTOR
            assert int(sums[b * spb + s]) == xxh64(raw[start : start + SECTOR])
    with bandstore.open(pristine) as s:
        assert s.checksum_bytes == SECTOR and s.catalog.format["format_version"] == FORMAT_VERSION


def _corrupt(path, block, sector, rpb, layout):
    """Flip a byte of one sector; return an id in that sector and one elsewhere in the block."""
    block_path = _table(path)[0]
    raw = bytearray(block_path.read_bytes())
    raw[BLOCK * (1 + block) + sector * SECTOR + 9] ^= 0x40
    block_path.write_bytes(bytes(raw))
    rows_per_sector = SECTOR // (4 * DIM)
    local = layout - block * rpb
    in_bad = np.flatnonzero((local >= 0) & (local < rpb) & (local // rows_per_sector == sector))
    elsewhere = np.flatnonzero((local >= 0) & (local < rpb) & (local // rows_per_sector != sector))
    return int(in_bad[0]), elsewhere.astype(np.int64)


@pytest.mark.parametrize("strategy", ["cached", "direct"])
def test_a_lookup_verifies_the_sectors_it_decodes(store, weights, strategy):
    _, rpb, layout, _ = _table(store)
    bad_id, good = _corrupt(store, 2, 3, rpb, layout)
    plan = {"workers": 1, "tables": {"t": {"strategy": strategy, "worker": 0}}}
    if strategy == "cached":
        plan["tables"]["t"]["cache_bytes"] = 1 << 16
    with bandstore.open(store, plan=plan) as s:
        # Rows of the same block in clean sectors serve, bit for bit.
        assert np.array_equal(s.lookup("t", good), weights[good])
        with pytest.raises(bandstore.CorruptBlockError) as exc:
            s.lookup("t", [0, bad_id])
        assert (exc.value.table, exc.value.block) == ("t", 2)
        assert exc.value.expected != exc.value.actual  # the mismatched sector's checksums
        # verify() scans everything and finds the block.
        assert [p["block"] for p in s.verify()] == [2]


def test_admission_verifies_the_neighbours_it_would_decode(store, weights):
    """With neighbour admission, a clean row of a block whose admissible neighbour sits in a
    corrupt sector fails: nothing unverified may enter the cache."""
    _, rpb, layout, _ = _table(store)
    bad_id, good = _corrupt(store, 1, 0, rpb, layout)
    counts = np.zeros(ROWS, dtype=np.int64)
    with bandstore.open(store, writable=True) as s:
        s.set_tuning({"t": {"cache_bytes": 1 << 16, "pinned_share": 0.0}},
                     counts={"t": counts})  # fmt: skip
    with bandstore.open(store) as s:
        assert np.array_equal(s.lookup("t", good[:3]), weights[good[:3]])  # no admission
    counts[bad_id] = 5
    with bandstore.open(store, writable=True) as s:
        s.set_tuning({"t": {"cache_bytes": 1 << 16, "threshold": 3, "pinned_share": 0.0}},
                     counts={"t": counts})  # fmt: skip
    with bandstore.open(store) as s:
        with pytest.raises(bandstore.CorruptBlockError) as exc:
            s.lookup("t", good[:3])  # bad_id (count 5 >= 3) would be admitted beside them
        assert exc.value.block == 1
        assert s.stats()["t"]["lookups"] == 0
        far = np.flatnonzero(layout // rpb == 4)[:5]
        assert np.array_equal(s.lookup("t", far), weights[far])  # other blocks still serve


def test_checksum_bytes_arguments(tmp_path, pristine):
    assert DEFAULT_CHECKSUM_BYTES <= DEFAULT_BLOCK_SIZE
    for bad in (32, 100, 8192, True, 512.0):
        with pytest.raises(bandstore.InvalidArgumentError, match="checksum_bytes"):
            bandstore.create(tmp_path / f"x{bad}", block_size=BLOCK, checksum_bytes=bad)
    with bandstore.create(tmp_path / "small", block_size=512) as s:
        assert s.checksum_bytes == min(DEFAULT_CHECKSUM_BYTES, 512)
    with bandstore.create(tmp_path / "default") as s:
        assert s.checksum_bytes == DEFAULT_CHECKSUM_BYTES
    with pytest.raises(bandstore.FormatMismatchError) as exc:
        bandstore.open(pristine, options=bandstore.ServeOptions(checksum_bytes=512))
    assert (exc.value.stored, exc.value.requested) == (SECTOR, 512)
    with pytest.raises(bandstore.FormatMismatchError):
        bandstore.create(pristine, exist_ok=True, block_size=BLOCK, checksum_bytes=1024)
    bandstore.open(pristine, options=bandstore.ServeOptions(checksum_bytes=SECTOR)).close()


def test_a_format_1_store_serves_with_block_checksums(tmp_path, weights):
    """Format 1 had no checksum_bytes: one checksum per block, which a block-sized sector is."""
    assert 1 in READABLE_FORMAT_VERSIONS
    path = tmp_path / "old"
    with bandstore.create(path, block_size=BLOCK, checksum_bytes=BLOCK) as s:
        s.add_table("t", weights, progress=False)
    env = lmdb.open(str(path / "catalog"), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"format", json.dumps({"format_version": 1, "block_size": BLOCK}).encode())
    env.close()
    with bandstore.open(path) as s:
        assert s.checksum_bytes == BLOCK
        ids = np.arange(0, ROWS, 7)
        assert np.array_equal(s.lookup("t", ids), weights[ids])
        assert s.verify() == []


def test_rows_loaded_ahead_skip_corrupt_sectors(store, weights):
    """Pinned (and replicated) rows are read before any lookup: one in a corrupt sector is not
    loaded, so its lookup reads the block and raises instead of serving unchecked bytes."""
    _, rpb, layout, _ = _table(store)
    bad_id, good = _corrupt(store, 0, 1, rpb, layout)
    counts = np.zeros(ROWS, dtype=np.int64)
    hot = np.array([bad_id, *good[:5].tolist()])
    counts[hot] = 100
    with bandstore.open(store, writable=True) as s:
        s.set_tuning({"t": {"cache_bytes": 64 * 4 * DIM, "pinned_share": 1.0}},
                     counts={"t": counts})  # fmt: skip
    for plan in (None, {"workers": 2, "tables": {"t": {
            "strategy": "split", "inner": "cached", "workers": [0, 1], "cache_bytes": 1 << 14,
            "replicate": hot.tolist()}}}):  # fmt: skip
        with bandstore.open(store, plan=plan) as s:
            assert np.array_equal(s.lookup("t", good[:5]), weights[good[:5]])
            assert s.stats()["t"]["hits"] == 5  # the clean hot rows were loaded ahead
            with pytest.raises(bandstore.CorruptBlockError):
                s.lookup("t", [bad_id])
