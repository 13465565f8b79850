"""Asymmetric planning: a lookup strategy per table, tables mapped to worker cores.

After Ruggeri et al. (2025; a strategy per table, an uneven table-to-core mapping) and Erdogan
et al. (2024; access frequencies decide what to replicate), on a CPU:

- strategies (``strategies``): ``resident``, ``cached``, ``pinned``, ``direct``, ``split``;
- calibration (``calibrate``): this machine's costs, stored in the store's catalog;
- cost model (``model``): per-table profiles of a trace (with miss-ratio curves from
  ``bandstore.tune.sim``) -> time per batch and DRAM of each strategy;
- planner (``planner``): strategies within a DRAM budget, tables (or parts) onto W workers;
- executor (``executor``): ``Store.lookup_many`` on W threads, one owner per cache.

Typical use::

    cal = bandstore.tune.calibrate("store")  # once per machine
    with bandstore.open("store", writable=True) as s:
        plan = bandstore.tune.plan(s, trace, workers=2, budget=1 << 30)
        bandstore.tune.apply_plan(s, plan)  # stored; later opens serve it
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import InvalidArgumentError, ReadOnlyError
from bandstore.serve.plan import Plan, TablePlan, check_workers
from bandstore.serve.strategies import STRATEGIES
from bandstore.traces.recorder import read_recorded
from bandstore.tune.planning.calibrate import META_KEY as CALIBRATION_KEY
from bandstore.tune.planning.calibrate import Calibration, calibrate, default_calibration
from bandstore.tune.planning.model import (
    CurveSource,
    TableProfile,
    held_curve,
    profile_trace,
    simulated_curve,
)
from bandstore.tune.planning.planner import (
    default_budget,
    make_plan,
    measured_scale,
    predict,
    uniform_plan,
)
from bandstore.tune.reports import PlanComparison

__all__ = [
    "STRATEGIES",
    "Calibration",
    "CurveSource",
    "Plan",
    "TablePlan",
    "TableProfile",
    "apply_plan",
    "calibrate",
    "calibrate_store",
    "compare_plans",
    "default_budget",
    "load_calibration",
    "make_plan",
    "plan_store",
    "predict",
    "profile_trace",
    "refine_plan",
    "replan",
    "simulated_curve",
    "uniform_plan",
]


def calibrate_store(store: Any, *, quick: bool = False) -> Calibration:
    """Measure this machine's costs and store them in ``store`` (an open writable Store or a
    path). Returns the calibration."""
    import bandstore

    own = not hasattr(store, "catalog")
    s = bandstore.open(store, writable=True, cache_bytes=0, plan=False) if own else store
    try:
        if not s.writable:
            raise ReadOnlyError("calibrate_store needs a store opened with writable=True")
        cal = calibrate(quick=quick, block_size=s.block_size, checksum_bytes=s.checksum_bytes)
        s.set_calibration(cal.as_dict())  # stored, and the break-even used at once
    finally:
        if own:
            s.close()
    return cal


def load_calibration(store: Any) -> tuple[Calibration, bool]:
    """The store's stored calibration, or typical default figures; and whether it was stored."""
    d = store.catalog.meta(CALIBRATION_KEY)
    if isinstance(d, dict):
        return Calibration.from_dict(d), True
    return default_calibration(), False


def plan_store(
    store: Any,
    trace: Any,
    workers: int,
    budget: int | None = None,
    *,
    batch_size: int = 256,
    curves: CurveSource | Mapping[str, tuple[Any, Any, Any]] | None = None,
    calibration: Calibration | None = None,
    cold: bool = False,
) -> Plan:
    """The asymmetric plan for serving ``trace``-like traffic from ``store`` on ``workers``
    threads within ``budget`` bytes of DRAM (default: a quarter of the decoded tables)."""
    workers = check_workers(workers)
    cal = calibration or load_calibration(store)[0]
    profiles = profile_trace(store, trace, batch_size=batch_size, curves=curves)
    if budget is None:
        budget = default_budget(profiles)
    planned = make_plan(profiles, cal, workers, strategy_budget(store, budget), cold=cold)
    return with_counts_origin(replace(planned, budget_bytes=budget), trace)


def strategy_budget(store: Any, budget: int) -> int:
    """What of ``budget`` the strategies may hold: less the DRAM of the store's update
    overlay (rows updated since the served version, held beside every strategy's)."""
    overlay = sum(int(c.get("overlay_bytes", 0)) for c in store.cache_info().values())
    return max(0, int(budget) - overlay)


def with_counts_origin(plan: Plan, trace: Any) -> Plan:
    """``plan`` with the origin of its access counts (``trace``'s), stored with them when the
    plan is applied (``Store.counts_origin``)."""
    from bandstore.tune.provenance import trace_origin

    origins = {n: trace_origin("plan", trace, n) for n in plan.counts}
    return replace(plan, counts_origin=origins)


def apply_plan(store: Any, plan: Plan | Mapping[str, Any] | None, *, persist: bool = True) -> None:
    """Serve ``plan`` from the next call on (None: back to no plan); ``persist`` stores it in
    the catalog (the store must be writable) so that stores opened later serve it too, with
    the access counts that rank its pinned tables' rows (``Plan.counts``) as those tables'
    access counts, in the same transaction."""
    store.set_plan(plan, persist=persist)


def _recorded_trace(store: Any, max_queries: int) -> Any:
    rec = store.recorder
    if rec is None:
        raise InvalidArgumentError(
            "replan() needs a trace, or a store opened with record=DIR to learn from its traffic",
            argument="trace",
        )
    rec.flush(fsync=False)
    return read_recorded(
        rec.directory,
        num_rows={n: t.rows for n, t in store.tables.items()},
        last_queries=max_queries,
    )


def replan(
    store: Any,
    trace: Any = None,
    *,
    workers: int | None = None,
    budget: int | None = None,
    batch_size: int = 256,
    min_gain: float = 0.1,
    persist: bool = False,
    max_queries: int = 65536,
    curves: CurveSource | Mapping[str, tuple[Any, Any, Any]] | None = None,
) -> dict[str, Any]:
    """Re-plan from recent traffic (``trace``, default the recorder's latest ``max_queries``
    queries) and switch to the new plan if the model predicts it is at least ``min_gain``
    faster than the one being served on that traffic. The switch happens between calls:
    runners are built beside the old ones, readers never wait.

    Returns ``{"replanned": bool, "old_batch_ns", "new_batch_ns", "plan": Plan}``.
    """
    if trace is None:
        trace = _recorded_trace(store, max_queries)
    cal = load_calibration(store)[0]
    profiles = profile_trace(store, trace, batch_size=batch_size, curves=curves)
    current: Plan | None = store.plan
    w = workers or (current.workers if current is not None else store.workers)
    if budget is None:
        budget = (
            current.budget_bytes
            if current is not None and current.budget_bytes is not None
            else default_budget(profiles)
        )
    if current is None:
        current = uniform_plan(profiles, cal, w, budget)
        old = predict(current, profiles, cal)["batch_ns"]
    else:
        old = predict(current, _as_served(store, profiles, trace, batch_size), cal)["batch_ns"]
    new_plan = make_plan(profiles, cal, w, strategy_budget(store, budget))
    new_plan = with_counts_origin(replace(new_plan, budget_bytes=budget), trace)
    new = new_plan.predicted["batch_ns"]
    switch = new < old * (1.0 - min_gain)
    if switch:
        apply_plan(store, new_plan, persist=persist)
    return {"replanned": switch, "old_batch_ns": old, "new_batch_ns": new, "plan": new_plan}


def _as_served(store: Any, profiles: Mapping[str, TableProfile], trace: Any, batch_size: int
               ) -> dict[str, TableProfile]:  # fmt: skip
    """``profiles`` for predicting the plan being served on the traffic of ``trace``: a pinned
    table holds the rows it was given (ranked on older traffic), not this trace's most counted
    ones, so its misses are those of its held rows; without this a plan whose pinned rows went
    stale would look as good as a new one and never be replaced."""
    out = dict(profiles)
    for name, p in profiles.items():
        held = store.pinned_rows(name)
        if held is None or name not in trace.table_names:
            continue
        indices, offsets = trace.table(name)
        layout = store.table_layout(name)[0]
        m, b = held_curve(indices, offsets, held, layout, p.rows_per_block, batch_size)
        flat = np.ones(p.pinned_rows.shape)
        out[name] = replace(p, pinned_misses_per_lookup=m * flat, pinned_blocks_per_lookup=b * flat)
    return out


def refine_plan(store: Any, plan: Plan, profiles: Mapping[str, TableProfile], cal: Calibration,
                requests: Any) -> Plan:  # fmt: skip
    """``plan`` re-mapped with measured costs: ``store`` (open, serving ``plan``, caches warm)
    serves ``requests`` (``lookup_many`` requests from the traffic the plan is for), timing
    each table; the tables keep their strategies and cache sizes, but splits and workers are
    chosen again from the model's times scaled per table by measured / predicted. The model
    times each table alone; in a batch the tables evict each other's rows, layout and page
    table entries from the CPU caches, which costs the largest tables most (2-3x the model on
    10M-row tables), and a mapping balanced on the model's times leaves one worker waiting.
    """
    busy = store.busy
    busy.reset()
    for req in requests:
        store.lookup_many(req)
    scale = measured_scale(plan, busy.seconds, busy.calls)
    budget = plan.budget_bytes if plan.budget_bytes is not None else default_budget(profiles)
    return make_plan(profiles, cal, plan.workers, budget, scale=scale, name=plan.name)


def _batches(trace: Any, batch_size: int) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    from bandstore.tune.measure import trace_requests

    n = trace.n_queries
    return [trace_requests(trace, s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def compare_plans(
    store_path: str | os.PathLike,
    trace: Any,
    *,
    workers: int,
    budget: int | None = None,
    batch_size: int = 256,
    holdout: float = 0.5,
    repeats: int = 3,
    warm_queries: int | None = None,
    calibration: Calibration | None = None,
    curves: CurveSource | Mapping[str, tuple[Any, Any, Any]] | None = None,
    refine: bool = False,
) -> PlanComparison:
    """Plan ``store_path`` for ``trace`` and measure it against the uniform baseline (and the
    same planner at one worker), same budget, same run, repetitions interleaved.

    ``refine``: re-map the multi-worker plan (``refine_plan``) from its per-table times
    on the second half of the warm-up queries (tuning queries, never the held-out ones).

    The plan is made from the first ``1 - holdout`` of the queries; each contender's caches
    are warmed on them; lookups/s and per-batch latency are measured on the held-out queries.
    Contenders take turns batch by batch. Every held-out batch is served once: replaying the
    same queries again would find them in the caches, which no server sees and which flatters
    cached tables over direct ones. ``repeats`` cuts the held-out batches into that many
    consecutive chunks; lookups/s is the median over the chunks of each chunk's rate. Returns
    a :class:`bandstore.tune.reports.PlanComparison`: the plans, the predicted and measured
    batch times, lookups/s, p50/p99 per batch, and the ratios (``speedup``).
    """
    import bandstore

    if not 0.0 < holdout < 1.0:
        raise InvalidArgumentError(f"holdout must be in (0, 1), got {holdout}", argument="holdout")
    workers = check_workers(workers)
    tune, held = trace.split(1.0 - holdout)
    with bandstore.open(store_path, cache_bytes=0, plan=False) as s:
        cal = calibration or load_calibration(s)[0]
        calibrated = calibration is not None or load_calibration(s)[1]
        profiles = profile_trace(s, tune, batch_size=batch_size, curves=curves)
    if budget is None:
        budget = default_budget(profiles)
    plans = {
        "plan": make_plan(profiles, cal, workers, budget),
        "uniform": uniform_plan(profiles, cal, workers, budget),
    }
    if workers > 1:
        plans["plan, 1 worker"] = make_plan(profiles, cal, 1, budget)
    warm = tune
    if warm_queries is not None and tune.n_queries > warm_queries:
        warm = tune.query_slice(tune.n_queries - warm_queries, tune.n_queries)
    warm_batches = _batches(warm, batch_size)
    held_batches = _batches(held, batch_size)
    if not held_batches:
        raise InvalidArgumentError("no held-out queries to measure on", argument="holdout")
    sizes = np.array([sum(int(ids.shape[0]) for ids, _ in b.values()) for b in held_batches])
    lookups = int(sizes.sum())
    stores = {}
    setup_seconds: dict[str, float] = {}
    try:
        for name, plan in plans.items():
            t0 = time.perf_counter()
            stores[name] = bandstore.open(store_path, plan=plan, workers=plan.workers)
            setup = time.perf_counter() - t0
            half = len(warm_batches) // 2
            for req in warm_batches[:half]:
                stores[name].lookup_many(req)
            if refine and name == "plan" and plan.workers > 1:
                # The second half of the warm-up, timed per table, re-maps the plan.
                better = refine_plan(stores[name], plan, profiles, cal, warm_batches[half:])
                if _mapping(better) != _mapping(plan):
                    stores[name].close()
                    plans[name] = plan = better
                    t0 = time.perf_counter()
                    stores[name] = bandstore.open(store_path, plan=plan, workers=plan.workers)
                    setup = time.perf_counter() - t0
                    for req in warm_batches:
                        stores[name].lookup_many(req)
            else:
                for req in warm_batches[half:]:
                    stores[name].lookup_many(req)
            stores[name].reset_stats()
            setup_seconds[name] = setup
        per_batch: dict[str, list[float]] = {n: [] for n in stores}
        # Interleaved batch by batch (the first contender rotating), so that a burst of other
        # work on the machine hits every contender alike.
        order = list(stores)
        first: dict[str, dict[str, np.ndarray]] = {}
        for k, req in enumerate(held_batches):
            for j in range(len(order)):
                n = order[(k + j) % len(order)]
                t0 = time.perf_counter()
                out = stores[n].lookup_many(req)
                per_batch[n].append(time.perf_counter() - t0)
                if k == 0:
                    first[n] = out
        ref = first["uniform"]
        match = {
            n: all(np.allclose(out[t], ref[t], rtol=1e-4, atol=1e-4) for t in ref)
            for n, out in first.items()
        }
        chunks = np.array_split(np.arange(len(held_batches)), max(1, min(repeats, len(sizes))))
        results = {}
        for n, s in stores.items():
            st = s.stats()["total"]
            times = np.asarray(per_batch[n])
            results[n] = {
                "workers": plans[n].workers,
                "predicted_batch_us": plans[n].predicted.get("batch_ns", 0.0) / 1e3,
                "measured_batch_us": float(np.median(times)) * 1e6,
                "p50_batch_us": float(np.percentile(times, 50)) * 1e6,
                "p99_batch_us": float(np.percentile(times, 99)) * 1e6,
                "lookups_per_second": float(
                    np.median([sizes[c].sum() / max(times[c].sum(), 1e-12) for c in chunks])
                ),  # fmt: skip
                "hit_ratio": st["hit_ratio"],
                "blocks_per_1000_lookups": st["blocks_per_1000_lookups"],
                "dram_bytes": plans[n].dram_bytes,
                "setup_seconds": setup_seconds[n],
                "outputs_match_uniform": match[n],
                "strategies": _strategy_counts(plans[n]),
            }
    finally:
        for s in stores.values():
            s.close()
    lps = {n: r["lookups_per_second"] for n, r in results.items()}
    speedup = {"plan_vs_uniform": lps["plan"] / lps["uniform"]}
    if "plan, 1 worker" in lps:
        speedup["workers_vs_one"] = lps["plan"] / lps["plan, 1 worker"]
    return PlanComparison(
        store=str(Path(store_path)),
        workers=workers,
        budget_bytes=budget,
        batch_size=batch_size,
        queries={"tuning": tune.n_queries, "heldout": held.n_queries},
        heldout_lookups=lookups,
        calibrated=calibrated,
        plans={n: p.as_dict() for n, p in plans.items()},
        results=results,
        speedup=speedup,
        plan_objects=dict(plans),
    )


def _mapping(plan: Plan) -> dict[str, tuple]:
    return {n: (tp.strategy, tp.inner, tp.workers) for n, tp in plan.tables.items()}


def _strategy_counts(plan: Plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for tp in plan.tables.values():
        key = tp.strategy if tp.strategy != "split" else f"split/{tp.inner}"
        out[key] = out.get(key, 0) + 1
    return out
