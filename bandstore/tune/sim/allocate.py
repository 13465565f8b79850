"""Split a DRAM budget between tables so that the predicted blocks read are fewest.

Each table offers the points of its curves: for every simulated size, the best threshold and
pinned share there (the curves' lower envelope). Picking one point per table under
``sum(bytes) <= budget`` is a multiple-choice knapsack; with up to ~100 tables and ~40 points
each an exact dynamic programme over the budget is cheap, and unlike a greedy on convex hulls it
is also optimal where a curve is not convex (a threshold's knee, CLOCK plateaus).

The budget is counted in cache bytes as the store understands them (``capacity_rows`` of a
table is ``cache_bytes // cache_row_bytes(dim)``). A table may get 0 bytes (no cache: every
lookup reads its block); a budget below the smallest useful cache of every table (one block's
worth of rows) is refused with :class:`~bandstore.errors.BudgetError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import reduce
from typing import Any

import numpy as np

from bandstore.errors import BudgetError, InvalidArgumentError
from bandstore.kernels.cache import NEVER
from bandstore.tune.sim.mrc import Curves

__all__ = ["allocate", "knapsack", "MAX_CELLS"]

#: Budget cells of the dynamic programme. When the greatest common divisor of the point sizes
#: divides the budget into no more cells than this the result is exact; otherwise sizes are
#: rounded up to cells of ``budget / MAX_CELLS`` bytes (never over the budget, and within one
#: cell per table of the optimum).
MAX_CELLS = 1 << 18


def _pareto(weights: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (less or equal bytes and strictly less cost)."""
    order = np.lexsort((costs, weights))
    keep = []
    best = math.inf
    for i in order:
        if costs[i] < best:
            keep.append(int(i))
            best = costs[i]
    return np.array(keep, dtype=np.int64)


def knapsack(options: list[tuple[np.ndarray, np.ndarray]], budget: int) -> list[int]:
    """One option per group minimizing total cost with total weight <= ``budget``.

    ``options[g] = (weights, costs)``, integer weights >= 0; every group needs an option of
    weight 0 or the problem may be infeasible (then BudgetError). Returns the chosen index per
    group. Exact when the weights' gcd gives at most :data:`MAX_CELLS` cells, else weights are
    rounded up to a cell.
    """
    budget = int(budget)
    pruned = []
    for w, c in options:
        w = np.asarray(w, dtype=np.int64)
        c = np.asarray(c, dtype=np.float64)
        keep = _pareto(w, c)
        pruned.append((keep, w[keep], c[keep]))
    nonzero = [int(x) for _, w, _ in pruned for x in w if x > 0]
    unit = reduce(math.gcd, nonzero, 0) or 1
    if budget // unit > MAX_CELLS:
        unit = -(-budget // MAX_CELLS)
    cells = budget // unit
    best = np.zeros(cells + 1, dtype=np.float64)
    choices = []
    for _, w, c in pruned:
        wc = -(-w // unit)  # cells, rounded up: never over budget
        new = np.full(cells + 1, np.inf)
        pick = np.zeros(cells + 1, dtype=np.int32)
        for o in range(wc.size):
            k = int(wc[o])
            if k > cells:
                continue
            cand = best[: cells + 1 - k] + c[o]
            better = cand < new[k:]
            new[k:][better] = cand[better]
            pick[k:][better] = o
        choices.append((pick, wc))
        best = new
    if not np.isfinite(best[cells]):
        raise BudgetError(
            f"a budget of {budget} bytes cannot give every table one of its options",
            budget=budget,
        )
    picked = [0] * len(pruned)
    left = cells
    for g in range(len(pruned) - 1, -1, -1):
        pick, wc = choices[g]
        o = int(pick[left])
        picked[g] = int(pruned[g][0][o])
        left -= int(wc[o])
    return picked


def allocate(curves: Mapping[str, Curves], budget: int) -> dict[str, dict[str, Any]]:
    """Choose cache bytes, threshold and pinned share per table to minimize blocks read.

    Returns ``{table: {"size_index", "cache_bytes", "capacity_rows", "threshold",
    "pinned_share", "predicted_misses", "predicted_blocks_read"}}`` (threshold ``NEVER``: no
    neighbour admission).
    Raises BudgetError when the budget is negative or below the smallest useful cache of every
    table, InvalidArgumentError when there is no table.
    """
    if not curves:
        raise InvalidArgumentError("no table to allocate a budget to", argument="curves")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise InvalidArgumentError(f"budget must be an integer number of bytes, got {budget!r}",
                                   argument="budget", value=budget)  # fmt: skip
    budget = int(budget)
    smallest = min(c.smallest_useful_bytes for c in curves.values())
    if budget < smallest:
        raise BudgetError(
            f"a DRAM budget of {budget} bytes is below the smallest useful cache ({smallest} "
            "bytes: one block's worth of rows of the table with the smallest blocks)",
            budget=budget,
            needed=smallest,
        )
    names = list(curves)
    options = []
    envelopes = {}
    for name in names:
        cv = curves[name]
        blocks, ti, pi = cv.envelope()
        envelopes[name] = (ti, pi)
        w = cv.sizes_bytes.astype(np.int64)
        c = blocks.astype(np.float64)
        if not np.any(w == 0):  # a table can always go without a cache: all lookups miss
            w = np.append(w, 0)
            c = np.append(c, math.inf)
        options.append((w, c))
    picks = knapsack(options, budget)
    out: dict[str, dict[str, Any]] = {}
    for name, k in zip(names, picks, strict=True):
        cv = curves[name]
        ti, pi = envelopes[name]
        t, p = int(ti[k]), int(pi[k])
        thr = int(cv.thresholds[t])
        out[name] = {
            "size_index": int(k),
            "cache_bytes": int(cv.sizes_bytes[k]),
            "capacity_rows": int(cv.capacity_rows[k]),
            "threshold": min(thr, NEVER),
            "pinned_share": float(cv.pinned_shares[p]),
            "predicted_misses": float(cv.misses[t, p, k]),
            "predicted_blocks_read": float(cv.blocks_read[t, p, k]),
        }
    return out
