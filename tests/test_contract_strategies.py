"""One contract every serving strategy keeps (cached, resident, pinned, direct, and each of
them as the parts of a split table): results equal the reference for every mode and codec,
counters add up, a corrupt block raises and is never cached, a failed call changes nothing, and
8 threads calling at once get right answers.

Each strategy is a subclass of :class:`StrategyContract` that says how table ``t`` is planned;
table ``u`` beside it is always ``direct``. Plans are built as dicts (pinned ones carry the
access counts that rank their rows) and opened with ``bandstore.open(path, plan=...)``.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from reference import embedding_bag_ref

import bandstore
from bandstore.serve.cache import cache_row_bytes
from bandstore.serve.plan import Plan
from bandstore.storage import blockfile
from bandstore.storage.codecs import decode_rows, encode_rows

DIM = 8
ROWS = {"t": 1200, "u": 300}
CODECS = ("float32", "float16", "int8")
PINNED_ROWS = 150


def _counts() -> dict[str, np.ndarray]:
    """Skewed access counts (row i counted ~ 1/(i+1)), zero for a tail never read."""
    out = {}
    for n, rows in ROWS.items():
        c = (10_000 // (np.arange(rows) + 1)).astype(np.int64)
        c[rows // 2 :] = 0
        out[n] = c
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """Per codec: a store of tables t and u, and the rows as the codec decodes them."""
    rng = np.random.default_rng(20)
    raw = {n: rng.standard_normal((r, DIM)).astype(np.float32) for n, r in ROWS.items()}
    out = {}
    for codec in CODECS:
        path = tmp_path_factory.mktemp(f"contract-{codec}") / "store"
        with bandstore.create(path, block_size=512) as s:
            for n, w in raw.items():
                s.add_table(n, w, codec=codec, progress=False)
        decoded = {n: decode_rows(codec, encode_rows(codec, w), DIM) for n, w in raw.items()}
        out[codec] = (path, decoded)
    return out


def _request(rng: np.random.Generator, n_bags: int = 16, max_bag: int = 9):
    """Bags of 0 to max_bag - 1 Zipf-skewed ids (repeats within a bag included) per table."""
    req = {}
    for n, rows in ROWS.items():
        sizes = rng.integers(0, max_bag, n_bags)
        ids = (rng.zipf(1.3, int(sizes.sum())) - 1) % rows
        req[n] = (ids.astype(np.int64), np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    return req


def _reference(weights, req, mode, per_sample=None, padding_idx=None):
    return {
        n: embedding_bag_ref(
            weights[n],
            i,
            o,
            mode,
            None if per_sample is None else per_sample[n],
            padding_idx=padding_idx,
        )
        for n, (i, o) in req.items()
    }


def _copy_with_corrupt_block(src: Path, dst: Path, table: str, block: int) -> None:
    """A copy of the store at ``dst`` with one byte of ``table``'s data block ``block`` flipped."""
    shutil.copytree(src, dst)  # hard links become separate files: the source stays intact
    with bandstore.open(dst, plan=False, cache_bytes=0) as s:
        rec = s.catalog.current_version()
        path = blockfile.version_path(dst, rec["id"]) / rec["tables"][table]["block_file"]
        block_size = s.block_size
    raw = bytearray(path.read_bytes())
    raw[block_size * (1 + block) + 3] ^= 0x5A  # block 0 of the file is its header
    path.write_bytes(bytes(raw))


class StrategyContract:
    """The contract. Subclasses set ``entry`` (table t's plan entry) and ``workers``."""

    entry: dict = {}
    workers = 2
    #: Whether table t's strategy reads every row when the plan is installed (resident).
    reads_all_at_open = False
    #: Whether table t counts hits (a strategy with rows in DRAM)
    has_hits = True

    def plan(self):
        d = {
            "workers": self.workers,
            "tables": {"t": dict(self.entry), "u": {"strategy": "direct", "worker": 0}},
        }
        if "pinned" in (self.entry.get("strategy"), self.entry.get("inner")):
            return replace(Plan.from_dict(d), counts={"t": _counts()["t"]})
        return d

    def held(self, s: bandstore.Store) -> set[int]:
        """Rows of t the strategy holds in DRAM before any lookup (pinned ones)."""
        rows = s.pinned_rows("t")
        return set() if rows is None else set(rows.tolist())

    # ---- results -----------------------------------------------------------------------------
    @pytest.mark.parametrize("codec", CODECS)
    def test_results_equal_the_reference(self, stores, codec):
        path, weights = stores[codec]
        rng = np.random.default_rng(1)
        with bandstore.open(path, plan=self.plan()) as s:
            for mode in ("sum", "mean", "max"):
                for _ in range(2):  # the second call meets whatever the first cached
                    req = _request(rng)
                    out = s.lookup_many(req, mode=mode)
                    for n, ref in _reference(weights, req, mode).items():
                        np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-5)
            req = _request(rng)
            psw = {n: rng.random(i.size).astype(np.float32) for n, (i, _) in req.items()}
            out = s.lookup_many({n: (i, o, psw[n]) for n, (i, o) in req.items()})
            for n, ref in _reference(weights, req, "sum", psw).items():
                np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-5)
            i, o = req["t"]
            pad = int(i[0]) if i.size else 0
            bag = s.embedding_bag("t", i, o, mode="mean", padding_idx=pad)
            ref = embedding_bag_ref(weights["t"], i, o, "mean", padding_idx=pad)
            np.testing.assert_allclose(bag, ref, rtol=1e-5, atol=1e-5)
            ids = rng.integers(0, ROWS["t"], 50)
            assert np.array_equal(s.lookup("t", ids), weights["t"][ids])  # bit for bit

    @pytest.mark.parametrize("codec", CODECS)
    def test_rows_held_encoded_pool_bit_for_bit(self, stores, codec):
        """Rows held in DRAM stay in their codec and are decoded in the pooling loop: max bags
        (order-free) equal numpy's max of the decoded rows bit for bit for every strategy; on
        a single-part strategy, a bag of held rows (hits, after a warm-up call) sums bit for
        bit as a float32 loop over the decoded rows in bag order (what decoding to float32
        first and pooling that gave)."""
        path, weights = stores[codec]
        w = weights["t"]
        rng = np.random.default_rng(4)
        with bandstore.open(path, plan=self.plan()) as s:
            req = _request(rng, n_bags=24)
            i, o = req["t"]
            got = s.embedding_bag("t", i, o, mode="max")
            ends = np.r_[o[1:], i.size]
            for b in range(o.size):
                want = w[i[o[b] : ends[b]]].max(axis=0) if ends[b] > o[b] else np.zeros(DIM)
                assert np.array_equal(got[b], want.astype(np.float32))
            held = sorted(self.held(s))
            if not held and self.has_hits and self.entry.get("strategy") != "split":
                held = list(range(0, ROWS["t"], 37))  # a cached table: held after one call
            if not held or self.entry.get("strategy") == "split":
                return  # parts' sums are combined in part order: covered by the reference
            ids = rng.choice(np.asarray(held), size=40).astype(np.int64)
            off = np.arange(0, 40, 8, dtype=np.int64)
            s.embedding_bag("t", ids, off)  # a cache admits them here
            before = s.stats()["t"]["hits"]
            got = s.embedding_bag("t", ids, off)
            assert s.stats()["t"]["hits"] - before == ids.size  # every row a hit
            for b in range(off.size):
                acc = np.zeros(DIM, dtype=np.float32)
                for r in ids[off[b] : off[b] + 8]:
                    acc = acc + w[r]  # float32 adds in bag order
                assert np.array_equal(got[b], acc)

    # ---- counters ----------------------------------------------------------------------------
    def test_counters_add_up(self, stores):
        path, _ = stores["float32"]
        rng = np.random.default_rng(2)
        asked = 0
        with bandstore.open(path, plan=self.plan()) as s:
            held = self.held(s)
            for _ in range(4):
                req = _request(rng)
                asked += int(req["t"][0].size)
                s.lookup_many(req)
            st = s.stats()
            for n in ("t", "u", "total"):
                assert st[n]["lookups"] == st[n]["hits"] + st[n]["misses"]
            assert st["t"]["lookups"] == asked > 0
            assert st["u"]["hits"] == 0  # direct: nothing in DRAM
            if not self.has_hits:
                assert st["t"]["hits"] == 0 and st["t"]["misses"] == asked
            if held:  # every lookup of a held row is a hit, and only those (no admission)
                s.reset_stats()
                ids = np.arange(ROWS["t"], dtype=np.int64)
                s.lookup_many({"t": (ids, np.arange(ids.size))})
                st = s.stats()["t"]
                assert st["hits"] == len(held) and st["misses"] == ROWS["t"] - len(held)

    # ---- corruption --------------------------------------------------------------------------
    def test_a_corrupt_block_raises_and_caches_nothing(self, stores, tmp_path):
        path, weights = stores["float32"]
        with bandstore.open(path, plan=self.plan()) as s:
            layout = np.asarray(s.table_layout("t")[0])
            rpb = s.tables["t"].rows_per_block
            held = self.held(s)
        # A block none of whose rows is held, so that only a lookup reads it.
        in_dram = set() if self.reads_all_at_open else {int(layout[i]) // rpb for i in held}
        blocks = sorted(set((layout // rpb).tolist()) - in_dram)
        bad_block = blocks[len(blocks) // 2]
        bad_ids = np.flatnonzero(layout // rpb == bad_block)
        copy = tmp_path / "corrupt"
        _copy_with_corrupt_block(path, copy, "t", bad_block)
        if self.reads_all_at_open:
            with pytest.raises(bandstore.CorruptBlockError) as exc:
                bandstore.open(copy, plan=self.plan())
            assert (exc.value.table, exc.value.block) == ("t", bad_block)
            return
        good = np.flatnonzero(layout // rpb != bad_block)[:60].astype(np.int64)
        with bandstore.open(copy, plan=self.plan()) as s:
            for _ in range(2):  # nothing from the block was cached: the second read fails too
                before = (s.stats()["t"], s.cache_info()["t"])
                with pytest.raises(bandstore.CorruptBlockError) as exc:
                    s.lookup_many({"t": (np.array([good[0], bad_ids[0]]), np.array([0, 1]))})
                assert (exc.value.table, exc.value.block) == ("t", bad_block)
                assert (s.stats()["t"], s.cache_info()["t"]) == before
            got = s.lookup_many({"t": (good, np.arange(good.size))})["t"]
            assert np.array_equal(got, weights["t"][good])  # the rest of the table serves

    # ---- a failed call changes nothing -------------------------------------------------------
    def test_a_refused_call_changes_nothing(self, stores):
        path, _ = stores["float32"]
        rng = np.random.default_rng(3)
        with bandstore.open(path, plan=self.plan()) as s:
            s.lookup_many(_request(rng))
            before = (s.stats(), s.cache_info())
            req = _request(rng)
            bad = {"t": req["t"], "u": (np.array([0, ROWS["u"]]), np.array([0, 1]))}
            with pytest.raises(bandstore.IdOutOfRangeError):
                s.lookup_many(bad)
            with pytest.raises(bandstore.InvalidOffsetsError):
                s.lookup_many({"t": req["t"], "u": (np.array([1, 2]), np.array([1, 0]))})
            with pytest.raises(bandstore.UnknownTableError):
                s.lookup_many({"t": req["t"], "nope": req["u"]})
            assert (s.stats(), s.cache_info()) == before

    def test_a_call_failing_on_a_corrupt_table_changes_nothing(self, stores, tmp_path):
        """The table planned here and a corrupt direct table in one call."""
        path, _ = stores["float32"]
        copy = tmp_path / "corrupt-u"
        _copy_with_corrupt_block(path, copy, "u", 1)
        with bandstore.open(copy, plan=self.plan()) as s:
            rpb = s.tables["u"].rows_per_block
            bad_u = np.flatnonzero(np.asarray(s.table_layout("u")[0]) // rpb == 1)[:1]
            ids = np.arange(0, ROWS["t"], 7, dtype=np.int64)
            before = (s.stats(), _policies(s.cache_info()))
            with pytest.raises(bandstore.CorruptBlockError):
                s.lookup_many({"t": (ids, np.arange(ids.size)), "u": (bad_u, np.array([0]))})
            # No counter moved and no policy changed. Cache contents are not results and are not
            # rolled back (documented): rows admitted on the way are verified ones.
            assert (s.stats(), _policies(s.cache_info())) == before

    # ---- threads -----------------------------------------------------------------------------
    def test_eight_threads_get_right_answers(self, stores):
        path, weights = stores["float32"]
        errors: list[BaseException] = []
        asked = [0] * 8
        with bandstore.open(path, plan=self.plan()) as s:
            s.lookup_many(_request(np.random.default_rng(0)))  # numba compiled, caches warm
            s.reset_stats()

            def run(k: int) -> None:
                rng = np.random.default_rng(100 + k)
                try:
                    for _ in range(15):
                        req = _request(rng)
                        out = s.lookup_many(req, mode="sum")
                        for n, ref in _reference(weights, req, "sum").items():
                            np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-5)
                        asked[k] += sum(int(i.size) for i, _ in req.values())
                except BaseException as exc:  # re-raised on the main thread below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads)
            if errors:
                raise errors[0]
            st = s.stats()["total"]
            assert st["lookups"] == sum(asked) == st["hits"] + st["misses"]


CACHE = 200 * cache_row_bytes(DIM)  # (float32 rows: more of the float16 and int8 rows fit)
PINNED_BYTES = PINNED_ROWS * 4 * DIM  # a pinned row costs its encoded row (float32: 4 * DIM)


def _policies(info: dict) -> dict:
    """``cache_info()`` without what a call may change: how many rows a cache holds."""
    return {n: {k: v for k, v in c.items() if k != "cached_rows"} for n, c in info.items()}


class TestCached(StrategyContract):
    entry = {"strategy": "cached", "worker": 1, "cache_bytes": CACHE}


class TestResident(StrategyContract):
    entry = {"strategy": "resident", "worker": 1}
    reads_all_at_open = True

    def held(self, s):
        return set(range(ROWS["t"]))


class TestPinned(StrategyContract):
    entry = {"strategy": "pinned", "worker": 1, "cache_bytes": PINNED_BYTES}


class TestDirect(StrategyContract):
    entry = {"strategy": "direct", "worker": 1}
    has_hits = False


class TestSplitCached(StrategyContract):
    entry = {"strategy": "split", "inner": "cached", "workers": [1, 0], "cache_bytes": CACHE,
             "replicate": [0, 1, 2]}  # fmt: skip


class TestSplitResident(StrategyContract):
    entry = {"strategy": "split", "inner": "resident", "workers": [1, 0]}
    reads_all_at_open = True

    def held(self, s):
        return set(range(ROWS["t"]))


class TestSplitPinned(StrategyContract):
    entry = {"strategy": "split", "inner": "pinned", "workers": [1, 0],
             "cache_bytes": PINNED_BYTES}  # fmt: skip


class TestSplitDirect(StrategyContract):
    entry = {"strategy": "split", "inner": "direct", "workers": [1, 0]}
    has_hits = False
