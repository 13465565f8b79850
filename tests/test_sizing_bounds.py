"""The offline bound of benchmarks/experiments/exp_sizing_bounds.py: MIN with bypass on rows."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "experiments"))
exp = pytest.importorskip("exp_sizing_bounds")


def naive_min(keys, first, capacity):
    """MIN with bypass, by scanning the future at every eviction; misses from ``first`` on."""
    cache, misses = set(), 0
    n = len(keys)

    def next_use(k, i):
        for j in range(i + 1, n):
            if keys[j] == k:
                return j
        return n

    for i, k in enumerate(keys):
        if k in cache:
            continue
        misses += i >= first
        if capacity == 0:
            continue
        if len(cache) < capacity:
            cache.add(k)
            continue
        far = max(cache, key=lambda c: (next_use(c, i), c))
        if next_use(k, i) >= next_use(far, i):
            continue
        cache.discard(far)
        cache.add(k)
    return misses


def lru_misses(keys, first, capacity):
    from collections import OrderedDict

    cache, misses = OrderedDict(), 0
    for i, k in enumerate(keys):
        if k in cache:
            cache.move_to_end(k)
            continue
        misses += i >= first
        if capacity:
            cache[k] = True
            if len(cache) > capacity:
                cache.popitem(last=False)
    return misses


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("capacity", [0, 1, 3, 8, 40])
def test_belady_matches_naive_min_and_beats_lru(seed, capacity):
    rng = np.random.default_rng(seed)
    keys = (rng.zipf(1.3, 300) % 60).astype(np.int64)
    first = 100
    missed = np.zeros(keys.size, dtype=np.bool_)
    got = exp._belady(keys, np.zeros(keys.size, np.int64), first, capacity, keys, missed)
    assert got == naive_min(keys.tolist(), first, capacity)
    assert got == int(missed.sum()) and not missed[:first].any()
    assert got <= lru_misses(keys.tolist(), first, capacity)
