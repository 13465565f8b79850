"""Installing a plan on an open store: runners per table, and an executor over W workers.

``attach`` is called by the store whenever it (re)installs a version, and by ``apply_plan`` /
``Store.replan``. It builds the new runners beside the old ones (a resident table is decoded
before anyone is switched to it; a runner whose strategy did not change is kept, warm), then
switches each table and finally the executor: calls in flight finish on what they started
with, later calls see the new plan. Nothing blocks readers.

A store with no plan serves every table ``cached`` with the cache sizes it was opened with
(``cache_bytes``, tuned sizes, or the default share), tables dealt round-robin to the workers.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np

from bandstore.errors import PlanError
from bandstore.serve.cache import CachePolicy
from bandstore.serve.executor import Executor
from bandstore.serve.plan import (
    META_KEY,
    Plan,
    TablePlan,
    check_workers,
    is_strategy_mapping,
    plan_from_strategies,
)
from bandstore.serve.strategies import (
    CachedRunner,
    DirectRunner,
    PinnedRunner,
    ResidentRunner,
    Runner,
    SplitCachedRunner,
)

_attach_lock = threading.Lock()
#: The catalog key of the calibration (measured by ``bandstore.tune.planning.calibrate``).
CALIBRATION_KEY = "calibration"


def stored_inline_below(catalog: Any) -> tuple[float, float] | None:
    """The executor's inline break-even (base ns, ns per task) from the stored calibration.

    The break-even is this machine's: without a measured one (no calibration stored, or one
    from before format 4 measured it), calls always use the workers."""
    rec = catalog.meta(CALIBRATION_KEY)
    if not isinstance(rec, dict) or int(rec.get("format", 0)) < 4:
        return None
    try:
        return float(rec["inline_base_ns"]), float(rec["inline_task_ns"])
    except (KeyError, TypeError, ValueError):
        return None


def resolve_plan(store: Any, tables: Any = None) -> Plan | None:
    """The plan a store serves: the one given to ``open(plan=...)``, else the stored one (unless
    ``plan=False``, or an explicit ``cache_bytes`` was given to ``open`` without a plan).
    ``tables``: the table objects it is for (default: the served ones)."""
    arg = getattr(store, "_plan_arg", None)
    tables = {n: t.info for n, t in (store._tables if tables is None else tables).items()}
    if arg is False:
        return None
    if isinstance(arg, Plan):
        return replace(Plan.from_dict(arg.as_dict(), tables), counts=arg.counts)
    if is_strategy_mapping(arg):
        return strategies_plan(store, arg)
    if isinstance(arg, dict):
        return Plan.from_dict(arg, tables)
    if arg is None and store._cache_arg is not None:
        return None
    stored = store.catalog.meta(META_KEY)
    if not stored:
        return None
    stored_tables = stored.get("tables", {}) if isinstance(stored, dict) else {}
    if isinstance(stored_tables, dict) and not set(stored_tables) <= set(tables):
        return None  # made for tables this version no longer has: serve without it
    return Plan.from_dict(stored, tables)


def strategies_plan(store: Any, strategies: Any) -> Plan:
    """The plan of the short form ``{table: strategy_name}`` on ``store``
    (``plan.plan_from_strategies``): its workers (``open(workers=...)``, else 1), and the cache
    sizes its tables have without a plan."""
    tables = store._tables
    workers = store._workers_arg if store._workers_arg is not None else 1
    sizes = {
        n: store._policy_for(n, tables[n], tables).cache_bytes for n in strategies if n in tables
    }
    return plan_from_strategies(strategies, {n: t.info for n, t in tables.items()}, workers, sizes)


def _cached_policy(base: CachePolicy, tp: TablePlan | None) -> CachePolicy:
    """A cached table's policy: the store's (tuned or default), at the plan's size if any."""
    if tp is None:
        return base
    return CachePolicy(tp.cache_bytes, base.threshold, base.pinned_share)


def _pinned_counts(name: str, t: Any, plan: Plan) -> np.ndarray:
    """The access counts that rank pinned table ``name``'s rows: the plan's, else the table's."""
    counts = plan.counts.get(name)
    if counts is None:
        if not t.has_counts:
            raise PlanError(
                f"table {name!r}: a pinned table holds its most counted rows, and neither the plan "
                "nor the store has access counts for it (make the plan from a trace, or store "
                "counts with set_tuning)",
                table=name,
            )
        return t.counts
    counts = np.asarray(counts)
    if counts.shape != (t.info.rows,) or counts.dtype.kind not in "iu":
        raise PlanError(
            f"table {name!r}: the plan's access counts must be {t.info.rows} integers, got "
            f"shape {counts.shape} of {counts.dtype}",
            table=name,
        )
    return counts


def _build_runner(store: Any, name: str, t: Any, tp: TablePlan | None, plan: Plan | None,
                  tables: dict) -> Runner:  # fmt: skip
    """The runner of table ``t`` under ``tp`` (None: cached with the store's default policy),
    reusing the table's current runner when it is the same."""
    base = store._policy_for(name, t, tables)
    kind = "cached" if tp is None else tp.kind
    parts = 1 if tp is None else tp.parts
    current = t.runner
    if kind == "cached" and (tp is None or tp.strategy == "cached"):
        policy = _cached_policy(base, tp)
        if current is not None or t.policy != policy:
            t.configure_cache(policy)
        return CachedRunner(t)
    if kind == "resident":
        want = ("resident", parts)
        if current is not None and current.spec == want:
            return current
        data = current.data if isinstance(current, ResidentRunner) else None
        return ResidentRunner(t, parts, data)
    if kind == "direct":
        if current is not None and current.spec == ("direct", parts):
            return current
        return DirectRunner(t, parts)
    assert tp is not None and plan is not None
    if kind == "pinned":
        counts = _pinned_counts(name, t, plan)
        if current is not None and current.spec == ("pinned", parts, tp.cache_bytes, id(counts)):
            return current
        return PinnedRunner(t, tp.cache_bytes, counts, parts)
    rep = np.asarray(tp.replicate, dtype=np.int64)
    if (
        current is not None
        and current.spec == ("split", "cached", parts, tp.cache_bytes, np.unique(rep).tobytes())
        and current.threshold == base.threshold
        and current.pinned_share == base.pinned_share
        and current.source_counts is t.counts  # new counts: new pinned rows and admission
    ):
        return current
    return SplitCachedRunner(t, parts, tp.cache_bytes, rep, base)


def retune(store: Any, names: Any) -> None:
    """Apply new cache policies or access counts of tables ``names`` (``Store.set_tuning``):
    a cached table's cache is rebuilt with them, a cached split or a pinned table ranking by the
    table's counts is rebuilt (they pin and admit by them); resident and direct tables have no
    cache to rebuild."""
    split = False
    plan = store._plan
    for name in names:
        t = store._tables[name]
        if t.runner is None:
            tp = plan.tables.get(name) if plan is not None else None
            t.configure_cache(_cached_policy(store._policy_for(name, t, store._tables), tp))
        split |= isinstance(t.runner, SplitCachedRunner | PinnedRunner)
    if split:
        attach(store)


class Built:
    """A plan's runners and executor for one tables dict, built but not yet serving."""

    __slots__ = ("tables", "plan", "runners", "executor")

    def __init__(self, tables: dict, plan: Plan | None, runners: dict, executor: Executor):
        self.tables = tables
        self.plan = plan
        self.runners = runners
        self.executor = executor


def build(store: Any, tables: dict | None = None) -> Built:
    """The runners and executor of the plan ``store`` serves, for ``tables`` (default: its
    served tables; a version being prepared beside them). Heavy work (a resident table's
    decode, a pinned set's load) happens here, before anyone is switched."""
    tables = store._tables if tables is None else tables
    plan = resolve_plan(store, tables)
    workers = store._workers_arg
    if workers is None:
        workers = plan.workers if plan is not None else 1
    workers = check_workers(workers)
    built: dict[str, tuple[Runner, tuple[int, ...]]] = {}
    for i, (name, t) in enumerate(tables.items()):
        tp = plan.tables.get(name) if plan is not None else None
        runner = _build_runner(store, name, t, tp, plan, tables)
        where = (i % workers,) if tp is None else tuple(w % workers for w in tp.workers)
        built[name] = (runner, where)
    costs = {}
    if plan is not None:
        costs = {n: tp.predicted_ns for n, tp in plan.tables.items() if tp.predicted_ns}
    inline_below = stored_inline_below(store.catalog)
    executor = Executor(
        workers, built, costs=costs, inline_below=inline_below, calls=store._call_counts
    )
    return Built(tables, plan, built, executor)


def install(store: Any, built: Built) -> Any:
    """Switch ``built``'s tables to their runners, then the store to its executor and plan;
    return the executor replaced (the caller closes it once nothing can start on it)."""
    # Switch: tables first (each call reads its table's runner once), then the executor.
    for name, (runner, _) in built.runners.items():
        t = built.tables[name]
        t.runner = None if isinstance(runner, CachedRunner) else runner
        if t.runner is not None and t.policy.cache_bytes:
            t.configure_cache(CachePolicy(0, t.policy.threshold, t.policy.pinned_share))
        # A replaced runner is not released: calls in flight may still use it.
    old_exec = store._executor
    store._executor = built.executor
    store._plan = built.plan
    return old_exec


def attach(store: Any) -> None:
    """Build and install the runners and executor of the plan ``store`` serves."""
    with _attach_lock:
        old_exec = install(store, build(store))
    if old_exec is not None:
        old_exec.close()
