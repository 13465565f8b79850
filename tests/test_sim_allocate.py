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
from bandstore.sim import Curves, allocate, knapsack

allocate_module = importlib.import_module("bandstore.sim.allocate")


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
    crb = 4 * dim + 9
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
    crb = 4 * 8 + 9
    a = _curves([[100, 80, 10, 5], [100, 50, 40, 30]], [0, 16, 64, 256], thresholds=(0, 4))
    b = _curves([50, 45, 44, 43], [0, 16, 64, 256])
    out = allocate({"a": a, "b": b}, 64 * crb)
    assert out["a"]["cache_bytes"] == 64 * crb and out["a"]["threshold"] == 0
    assert out["b"]["cache_bytes"] == 0 and out["b"]["threshold"] is None
    assert out["a"]["predicted_blocks_read"] == 10 and out["a"]["predicted_misses"] == 15
    out = allocate({"a": a, "b": b}, 32 * crb)  # 64 rows do not fit: 16 rows for a
    assert out["a"]["cache_bytes"] == 16 * crb and out["a"]["threshold"] == 4


def test_allocate_errors():
    a = _curves([10, 5], [0, 16])
    with pytest.raises(BudgetError) as exc:
        allocate({"a": a}, 16 * 41 - 1)
    assert exc.value.needed == 16 * 41
    with pytest.raises(BudgetError):
        allocate({"a": a}, -1)
    with pytest.raises(InvalidArgumentError):
        allocate({}, 10**6)
    with pytest.raises(InvalidArgumentError):
        allocate({"a": a}, 1e6)  # type: ignore[arg-type]


def test_sizing_tie_tolerance_picks_the_conservative_policy_on_a_near_tie():
    never = bandstore.NEVER
    # Policies (threshold, share) at 64 rows: (1, 0) reads fewest, (4, 0.5) 0.4% more,
    # (never, 0.5) 3% more; every other policy 20% more.
    blocks = np.full((4, 2, 2), 120.0)
    blocks[:, :, 0] = 200.0
    blocks[1, 0, 1], blocks[2, 1, 1], blocks[3, 1, 1] = 100.0, 100.4, 103.0
    a = _curves(blocks, [0, 64], thresholds=(0, 1, 4, never), shares=(0.0, 0.5))
    crb = 4 * 8 + 9
    pick = lambda tol: allocate({"a": a}, 64 * crb, tie_tolerance=tol)["a"]  # noqa: E731
    assert (pick(0.0)["threshold"], pick(0.0)["pinned_share"]) == (1, 0.0)
    assert (pick(0.003)["threshold"], pick(0.003)["pinned_share"]) == (1, 0.0)  # 0.4% > 0.3%
    chosen = pick(0.005)
    assert (chosen["threshold"], chosen["pinned_share"]) == (4, 0.5)
    assert chosen["predicted_blocks_read"] == pytest.approx(100.4)  # its own prediction
    assert (pick(0.05)["threshold"], pick(0.05)["pinned_share"]) == (None, 0.5)
    # The knapsack weighs the chosen policies' own blocks: a's cache saves 2 blocks with the
    # best policy, 0.5 with the conservative one (1.5% more), b's saves 1.2.
    a = _curves([[102.0, 100.0], [102.0, 101.5]], [0, 64], thresholds=(1, never))
    b = _curves([50.0, 48.8], [0, 64])
    two = allocate({"a": a, "b": b}, 64 * crb)
    assert two["a"]["cache_bytes"] == 64 * crb and two["a"]["threshold"] == 1
    two = allocate({"a": a, "b": b}, 64 * crb, tie_tolerance=0.02)
    assert two["a"]["cache_bytes"] == 0 and two["b"]["cache_bytes"] == 64 * crb
    for bad in (-0.01, float("nan"), float("inf"), "x", True):
        with pytest.raises(InvalidArgumentError):
            allocate({"a": a}, 64 * crb, tie_tolerance=bad)
