"""Budget allocation: the dynamic programme against brute force, and allocate() on curves."""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bandstore
from bandstore.errors import BudgetError, InvalidArgumentError
from bandstore.serve.cache import cache_row_bytes
from bandstore.tune.sim import Curves, allocate, knapsack

allocate_module = importlib.import_module("bandstore.tune.sim.allocate")


def _brute(options, budget):
    best, arg = np.inf, None
    for pick in itertools.product(*[range(len(w)) for w, _ in options]):
        w = sum(options[g][0][o] for g, o in enumerate(pick))
        c = sum(options[g][1][o] for g, o in enumerate(pick))
        if w <= budget and c < best:
            best, arg = c, pick
    return best, arg


@st.composite
def _problems(draw, unit=1, max_weight=60):
    groups = draw(st.integers(1, 4))
    options = []
    for _ in range(groups):
        n = draw(st.integers(1, 5))
        w = [0] + [unit * draw(st.integers(0, max_weight)) for _ in range(n - 1)]
        c = [draw(st.integers(0, 1000)) for _ in range(n)]
        options.append((np.array(w), np.array(c, dtype=float)))
    budget = unit * draw(st.integers(0, max_weight * groups))
    return options, budget


@given(_problems())
def test_knapsack_is_optimal(problem):
    options, budget = problem
    picks = knapsack(options, budget)
    best, _ = _brute(options, budget)
    assert sum(options[g][0][o] for g, o in enumerate(picks)) <= budget
    assert sum(options[g][1][o] for g, o in enumerate(picks)) == best


@given(_problems(unit=137))
def test_knapsack_is_exact_with_a_common_unit(problem):
    options, budget = problem
    picks = knapsack(options, budget)
    assert sum(options[g][1][o] for g, o in enumerate(picks)) == _brute(options, budget)[0]


@given(_problems(unit=1, max_weight=10**7))
def test_knapsack_with_rounded_cells_stays_within_budget(problem):
    options, budget = problem
    picks = knapsack(options, budget)
    cost = sum(options[g][1][o] for g, o in enumerate(picks))
    assert sum(options[g][0][o] for g, o in enumerate(picks)) <= budget
    assert cost >= _brute(options, budget)[0]


def test_knapsack_rounding_loses_at_most_a_cell_per_group(monkeypatch):
    monkeypatch.setattr(allocate_module, "MAX_CELLS", 100)
    rng = np.random.default_rng(0)
    for _ in range(50):
        options = [
            (np.concatenate([[0], rng.integers(1, 10**6, 4)]), rng.random(5)) for _ in range(3)
        ]
        budget = int(rng.integers(10**5, 3 * 10**6))
        picks = knapsack(options, budget)
        cost = sum(options[g][1][o] for g, o in enumerate(picks))
        assert sum(options[g][0][o] for g, o in enumerate(picks)) <= budget
        cell = -(-budget // 100)
        assert cost <= _brute(options, budget - 3 * cell)[0] + 1e-12


def _curves(blocks, sizes_rows, dim=8, rows=1000, rpb=16, thresholds=(bandstore.NEVER,),
            shares=(0.0,)):  # fmt: skip
    blocks = np.asarray(blocks, dtype=float).reshape(len(thresholds), len(shares), -1)
    crb = cache_row_bytes(dim)
    return Curves(
        sizes_bytes=np.asarray(sizes_rows) * crb,
        capacity_rows=np.asarray(sizes_rows),
        thresholds=np.asarray(thresholds, dtype=np.int64),
        pinned_shares=np.asarray(shares, dtype=float),
        lookups=int(blocks.max()) + 1,
        misses=blocks * 1.5,
        blocks_read=blocks,
        rows=rows,
        dim=dim,
        rows_per_block=rpb,
        block_size=4096,
    )


def test_allocate_picks_the_best_policy_and_the_best_split():
    crb = cache_row_bytes(8)
    a = _curves([[100, 80, 10, 5], [100, 50, 40, 30]], [0, 16, 64, 256], thresholds=(0, 4))
    b = _curves([50, 45, 44, 43], [0, 16, 64, 256])
    out = allocate({"a": a, "b": b}, 64 * crb)
    assert out["a"]["cache_bytes"] == 64 * crb and out["a"]["threshold"] == 0
    assert out["b"]["cache_bytes"] == 0 and out["b"]["threshold"] == bandstore.NEVER
    assert out["a"]["predicted_blocks_read"] == 10 and out["a"]["predicted_misses"] == 15
    out = allocate({"a": a, "b": b}, 32 * crb)  # 64 rows do not fit: 16 rows for a
    assert out["a"]["cache_bytes"] == 16 * crb and out["a"]["threshold"] == 4


def test_allocate_errors():
    a = _curves([10, 5], [0, 16])
    with pytest.raises(BudgetError) as exc:
        allocate({"a": a}, 16 * cache_row_bytes(8) - 1)
    assert exc.value.needed == 16 * cache_row_bytes(8)
    with pytest.raises(BudgetError):
        allocate({"a": a}, -1)
    with pytest.raises(InvalidArgumentError):
        allocate({}, 10**6)
    with pytest.raises(InvalidArgumentError):
        allocate({"a": a}, 1e6)  # type: ignore[arg-type]
