"""The planner: a strategy per table within a DRAM budget, and tables mapped to W workers.

1. Budget: every table starts at its cheapest option (``direct``); DRAM is then handed out by
   steepest descent on each table's lower convex hull of (DRAM, time) options: the step that
   saves the most time per byte first (cache sizes from the miss-ratio curves, up to
   ``resident``), as long as it fits.
2. Mapping: longest-processing-time-first onto W workers; a table whose time exceeds a
   worker's fair share is split into parts on different workers when that shortens the
   critical path (resident, hot and direct by bag ranges; cached by id hash with the hottest rows
   replicated in every part, Erdogan et al.'s frequency-driven replication).

The uniform baseline (``uniform_plan``) is what a store without a plan would do at the same
budget: every table cached with an equal share of the DRAM, tables dealt round-robin.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

from bandstore.errors import BudgetError, InvalidArgumentError
from bandstore.serve.cache import cache_row_bytes
from bandstore.serve.plan import Plan, TablePlan, check_workers
from bandstore.serve.strategies import cached_dram_bytes
from bandstore.tune.planning.calibrate import Calibration
from bandstore.tune.planning.model import STRATEGY_OPTIONS, Option, TableProfile, cost, options

#: A split must shorten the predicted critical path by at least this share to be kept.
SPLIT_GAIN = 0.03


def _check_budget(budget: int, profiles: Mapping[str, TableProfile]) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise InvalidArgumentError(
            f"budget must be a non-negative number of bytes, got {budget!r}", argument="budget"
        )
    need = sum(p.min_bytes for p in profiles.values())
    if budget < need:
        raise BudgetError(
            f"a DRAM budget of {budget} bytes cannot serve these tables: even with no cache "
            f"at all (every table direct) they need {need} bytes (one block of rows each)",
            budget=budget,
            needed=need,
        )
    return budget


def _hull(opts: list[Option]) -> list[Option]:
    """Lower convex hull of a Pareto front (by increasing DRAM)."""
    hull: list[Option] = []
    for o in opts:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the segment a-o: drop it.
            if (b.ns - a.ns) * (o.dram - a.dram) >= (o.ns - a.ns) * (b.dram - a.dram):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def allocate(
    profiles: Mapping[str, TableProfile],
    cal: Calibration,
    budget: int,
    *,
    cold: bool = False,
    allowed: tuple[str, ...] = STRATEGY_OPTIONS,
) -> dict[str, Option]:
    """Each table's option within ``budget``: greedy steepest descent on the convex hulls."""
    budget = _check_budget(budget, profiles)
    hulls = {n: _hull(options(p, cal, allowed=allowed, cold=cold)) for n, p in profiles.items()}
    pick = {n: 0 for n in hulls}
    used = sum(h[0].dram for h in hulls.values())
    heap: list[tuple[float, str]] = []

    def push(n: str) -> None:
        h, i = hulls[n], pick[n]
        if i + 1 < len(h):
            d_bytes = h[i + 1].dram - h[i].dram
            gain = h[i].ns - h[i + 1].ns
            heapq.heappush(heap, (-gain / max(d_bytes, 1), n))

    for n in hulls:
        push(n)
    while heap:
        _, n = heapq.heappop(heap)
        h, i = hulls[n], pick[n]
        step = h[i + 1].dram - h[i].dram
        if used + step <= budget:
            used += step
            pick[n] = i + 1
            push(n)
        else:
            # The next hull step does not fit: try the largest option of the front that does.
            front = options(profiles[n], cal, allowed=allowed, cold=cold)
            cur = h[i]
            fits = [o for o in front if o.dram > cur.dram and used + o.dram - cur.dram <= budget
                    and o.ns < cur.ns]  # fmt: skip
            if fits:
                best = min(fits, key=lambda o: o.ns)
                used += best.dram - cur.dram
                hulls[n] = [*h[:i], best]
                pick[n] = i
    return {n: hulls[n][pick[n]] for n in hulls}


def _lpt(tasks: list[tuple[float, str, int]], workers: int) -> tuple[list[float], dict]:
    """Longest first onto the least loaded worker; parts of a table on distinct workers."""
    loads = [0.0] * workers
    where: dict[str, dict[int, int]] = {}
    for ns, name, part in sorted(tasks, key=lambda t: (-t[0], t[1], t[2])):
        taken = set(where.get(name, {}).values())
        free = [w for w in range(workers) if w not in taken] or list(range(workers))
        w = min(free, key=lambda k: (loads[k], k))
        loads[w] += ns
        where.setdefault(name, {})[part] = w
    return loads, where


def _split_option(p: TableProfile, o: Option, k: int, cal: Calibration, cold: bool, avail: int):
    """(ns per part, DRAM, cache bytes per part, replicated ids) of ``o`` split in ``k`` within
    ``avail`` bytes (every part pins the replicated rows, so the caches shrink to fit); None if
    it cannot fit."""
    if o.strategy != "cached":  # bag ranges; a pinned table's parts share its frozen cache
        ns = cost(p, o.strategy, cal, o.cache_bytes, parts=k, cold=cold)
        return ns, o.dram, o.cache_bytes, None
    crb = cache_row_bytes(p.dim, p.codec)
    rep = p.hot_ids
    fixed = 4 * p.rows + k * rep.size * crb
    per_part = min(o.cache_bytes // k, (avail - fixed) // k if avail > fixed else -1)
    if per_part < 0:
        return None
    per_part = (per_part // crb) * crb
    dram = cached_dram_bytes(p.rows, p.dim, per_part, k, rep.size, p.codec)
    ns = cost(p, "cached", cal, per_part * k + rep.size * crb, parts=k, cold=cold)
    return ns, dram, per_part, rep


def make_plan(
    profiles: Mapping[str, TableProfile],
    cal: Calibration,
    workers: int,
    budget: int,
    *,
    cold: bool = False,
    allow_split: bool = True,
    name: str = "asymmetric",
    scale: Mapping[str, float] | None = None,
) -> Plan:
    """The asymmetric plan: strategies within ``budget`` bytes, tables mapped to ``workers``.

    ``scale``: per table, measured / predicted time of its chosen strategy (``refine_plan``):
    the mapping (splits, workers) uses the model's times multiplied by it; the strategies and
    cache sizes are the model's.
    """
    workers = check_workers(workers)
    chosen = allocate(profiles, cal, budget, cold=cold)
    used = sum(o.dram for o in chosen.values())
    factor = {n: float((scale or {}).get(n, 1.0)) for n in chosen}
    ns = {n: o.ns * factor[n] for n, o in chosen.items()}
    splits: dict[str, tuple] = {}

    def tasks() -> list[tuple[float, str, int]]:
        out = []
        for n in chosen:
            if n in splits:
                out += [(splits[n][0], n, j) for j in range(splits[n][4])]
            else:
                out.append((ns[n], n, 0))
        return out

    loads, _ = _lpt(tasks(), workers)
    if allow_split and workers > 1:
        for n in sorted(chosen, key=lambda k: -ns[k]):
            p, o = profiles[n], chosen[n]
            if p.lookups <= 0 or ns[n] <= sum(ns.values()) / workers / 2:
                break
            best = None
            for k in range(2, workers + 1):
                opt = _split_option(p, o, k, cal, cold, budget - (used - o.dram))
                if opt is None:
                    continue
                part_ns, dram, per_part, rep = opt
                part_ns *= factor[n]
                splits[n] = (part_ns, dram, per_part, rep, k)
                trial, _ = _lpt(tasks(), workers)
                del splits[n]
                if max(trial) < max(loads) * (1 - SPLIT_GAIN) and (
                    best is None or max(trial) < best[0]
                ):
                    best = (max(trial), (part_ns, dram, per_part, rep, k))
            if best is not None:
                splits[n] = best[1]
                used += best[1][1] - o.dram
                loads, _ = _lpt(tasks(), workers)
    loads, where = _lpt(tasks(), workers)
    tables = {}
    for n, o in chosen.items():
        ws = tuple(where[n][j] for j in sorted(where[n]))
        if n in splits:
            part_ns, dram, per_part, rep, k = splits[n]
            tables[n] = TablePlan(
                "split", ws, per_part, o.strategy,
                tuple(int(i) for i in rep) if rep is not None else (), part_ns, dram,
            )  # fmt: skip
        else:
            tables[n] = TablePlan(o.strategy, ws, o.cache_bytes, None, (), ns[n], o.dram)
    counts = {n: profiles[n].counts for n, tp in tables.items() if tp.kind == "pinned"}
    return Plan(workers, tables, budget, _predicted(loads, len(tables), cal, workers), name,
                counts)  # fmt: skip


#: A measured / predicted factor of ``refine_plan`` is kept within these bounds.
SCALE_BOUNDS = (0.25, 8.0)


def measured_scale(plan: Plan, seconds: Mapping[str, float], calls: int) -> dict[str, float]:
    """Per table, measured / predicted time per call of ``plan``: ``seconds`` is each table's
    serving time (all parts) over ``calls`` calls (``Executor.busy``)."""
    out = {}
    for n, tp in plan.tables.items():
        pred = (tp.predicted_ns or 0.0) * tp.parts
        got = seconds.get(n, 0.0) / max(calls, 1) * 1e9
        if pred > 0 and got > 0:
            out[n] = float(min(max(got / pred, SCALE_BOUNDS[0]), SCALE_BOUNDS[1]))
    return out


def _predicted(loads: list[float], n_tables: int, cal: Calibration, workers: int) -> dict:
    serial = cal.call_ns + 0.75 * cal.table_ns * n_tables
    busy = sum(1 for x in loads[1:] if x > 0)
    batch = serial + max(loads) + (cal.dispatch_ns if busy else 0.0)
    return {
        "batch_ns": batch,
        "worker_ns": loads,
        "serial_ns": serial,
        "critical_path_ns": max(loads),
    }


def uniform_plan(profiles: Mapping[str, TableProfile], cal: Calibration | None, workers: int,
                 budget: int) -> Plan:  # fmt: skip
    """The uniform baseline: every table cached with an equal share of ``budget`` (after each
    table's 4-byte-per-row slot index), tables dealt round-robin to the workers. A table whose
    whole cache is smaller than the share gets that, and what it leaves is shared equally by
    the others (water-filling): an equal share it cannot use would be DRAM the baseline does
    not spend, which no one sizing caches by hand would leave idle."""
    workers = check_workers(workers)
    budget = _check_budget(budget, profiles)
    index = sum(4 * p.rows for p in profiles.values())
    left = max(0, budget - index)
    full = {n: p.rows * cache_row_bytes(p.dim, p.codec) for n, p in profiles.items()}
    share: dict[str, int] = {}
    for n in sorted(profiles, key=lambda k: full[k]):  # smallest first: each takes what it can
        share[n] = min(full[n], left // (len(profiles) - len(share)))
        left -= share[n]
    tables = {}
    loads = [0.0] * workers
    for i, (n, p) in enumerate(profiles.items()):
        crb = cache_row_bytes(p.dim, p.codec)
        cb = (share[n] // crb) * crb
        ns = cost(p, "cached", cal, cb) if cal is not None else None
        if ns is not None:
            loads[i % workers] += ns
        tables[n] = TablePlan(
            "cached", (i % workers,), cb, None, (), ns,
            cached_dram_bytes(p.rows, p.dim, cb, codec=p.codec),
        )  # fmt: skip
    pred = _predicted(loads, len(tables), cal, workers) if cal is not None else {}
    return Plan(workers, tables, budget, pred, "uniform")


def default_budget(profiles: Mapping[str, TableProfile], fraction: float = 0.25) -> int:
    """A budget of ``fraction`` of the tables' decoded bytes (at least the minimum)."""
    total = sum(p.resident_bytes for p in profiles.values())
    need = sum(p.min_bytes for p in profiles.values())
    return max(need, int(math.ceil(fraction * total)))


def predict(plan: Plan, profiles: Mapping[str, TableProfile], cal: Calibration, *,
            cold: bool = False) -> dict:  # fmt: skip
    """The cost model's figures for ``plan`` on ``profiles`` (e.g. an old plan on new traffic)."""
    loads = [0.0] * plan.workers
    for n, tp in plan.tables.items():
        p = profiles.get(n)
        if p is None:
            continue
        if tp.strategy == "split":
            cb = tp.cache_bytes * (tp.parts if tp.kind == "cached" else 1)  # per part / shared
            ns = cost(p, tp.kind, cal, cb, parts=tp.parts, cold=cold)
        else:
            ns = cost(p, tp.kind, cal, tp.cache_bytes, cold=cold)
        for w in tp.workers:
            loads[w % plan.workers] += ns
    return _predicted(loads, len(plan.tables), cal, plan.workers)
