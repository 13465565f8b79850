"""The offline rebuild: layout, cache sizes and plan from one trace, committed as one version.

:func:`rebuild` runs the three single steps in order (:func:`bandstore.tune.relayout`,
:func:`bandstore.tune.size_cache`, :func:`bandstore.tune.plan`), each on the artefacts of the
previous ones (sizing simulates the new layouts with the new access counts, planning profiles
the new layouts with the new cache policies), and commits nothing until all three are done: then
layouts, access counts, cache policies and plan go into one new version in one catalog
transaction (:meth:`bandstore.Store.relayout_tables`). The stored result is the one the three
steps committed in turn would leave: the sizing's counts and policies replace the relayout's,
the plan's counts those of its pinned tables. A failure in any step leaves the store as it was.
``tools/rebuild.py`` is its command line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bandstore.errors import InvalidArgumentError, ReadOnlyError
from bandstore.options import RelayoutOptions, SizingOptions, threshold_from_json
from bandstore.serve.cache import CachePolicy, cache_row_bytes
from bandstore.serve.plan import META_KEY as PLAN_META_KEY
from bandstore.serve.plan import Plan
from bandstore.traces.trace import Trace
from bandstore.tune.logs import load_logs  # noqa: F401 - tools/rebuild.py's import
from bandstore.tune.planning import plan_store
from bandstore.tune.relayout_job import RELAYOUT_METHODS as METHODS
from bandstore.tune.relayout_job import relayout, split_point
from bandstore.tune.sim.sizing import size_cache

if TYPE_CHECKING:
    from bandstore.serve.store import Store

#: The engines :func:`rebuild` runs on: here, or on a Ray cluster
#: (:mod:`bandstore.tune.distributed`; the same result, bit for bit).
ENGINES = ("local", "ray")
#: The budget when none is given: this share of the tables' decoded bytes, the DRAM an untuned
#: store's default caches take.
DEFAULT_BUDGET_SHARE = 0.10


class _Staged:
    """A store seen through the artefacts of the steps run so far, committing nothing.

    Reads the tune layer makes (``table_layout``, ``table_counts``, ``has_counts``,
    ``cache_policy``) answer with the staged layouts, counts and policies; the writes the single
    steps make (``relayout_tables``, ``set_tuning``) are recorded instead of committed. Every
    other attribute is the store's.
    """

    def __init__(self, store: Any):
        self._store = store
        self.layouts: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.tuning: dict[str, dict[str, Any]] = {}
        self.origins: dict[str, Any] = {}  # where each table's staged counts came from
        self._inverse: dict[str, np.ndarray] = {}

    def _stage_counts(self, counts: Any, origin: Any) -> None:
        for n, c in (counts or {}).items():
            self.counts[n] = np.asarray(c)
            o = origin.get(n) if isinstance(origin, Mapping) else origin
            if o is None:
                self.origins.pop(n, None)
            else:
                self.origins[n] = o

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    # ---- the writes of the single steps, recorded ---------------------------------------
    def relayout_tables(self, layouts: Mapping[str, np.ndarray], *, counts: Any = None,
                        tuning: Any = None, counts_origin: Any = None,
                        **_: Any) -> None:  # fmt: skip
        for name, layout in layouts.items():
            layout = np.ascontiguousarray(layout, dtype=np.int64)
            rpb = self._store.tables[name].rows_per_block
            inverse = np.full((int(layout.max()) // rpb + 1) * rpb, -1, dtype=np.int64)
            inverse[layout] = np.arange(layout.shape[0], dtype=np.int64)
            self.layouts[name], self._inverse[name] = layout, inverse
        self._stage_counts(counts, counts_origin)
        self.tuning.update({n: dict(r) for n, r in (tuning or {}).items()})
        return None  # no version yet: the caller commits

    def set_tuning(self, tuning: Mapping[str, Mapping[str, Any]], *, counts: Any = None,
                   counts_origin: Any = None) -> None:  # fmt: skip
        for name, rec in tuning.items():
            self._store.tables[name]  # noqa: B018 - an unknown table raises, as set_tuning does
            self.tuning[name] = dict(rec)
        self._stage_counts(counts, counts_origin)

    # ---- the reads of the tune layer, answered from the staged artefacts ------------------
    def table_layout(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        if table in self.layouts:
            return self.layouts[table], self._inverse[table]
        return self._store.table_layout(table)

    def table_counts(self, table: str) -> np.ndarray:
        if table in self.counts:
            return self.counts[table]
        return self._store.table_counts(table)

    def has_counts(self, table: str) -> bool:
        return table in self.counts or bool(self._store.has_counts(table))

    def cache_policy(self, table: str) -> CachePolicy:
        rec = self.tuning.get(table)
        if rec is None:
            return self._store.cache_policy(table)
        return CachePolicy(
            int(rec["cache_bytes"]),
            threshold_from_json(rec.get("threshold")),
            float(rec.get("pinned_share", 0.0)),
        )


@dataclass(frozen=True)
class TableRebuild:
    """What :func:`rebuild` chose for one table.

    ``layout``: ``commit`` (a new layout) or ``keep``; ``heldout_*``: blocks read per 1000
    held-out lookups at the relayout's cache size, by the current layout and policy and by the
    chosen ones (the relayout's exact simulation); ``predicted_blocks_per_1000_lookups``: the
    sizing's prediction for its cache; ``strategy`` / ``workers``: the plan's.
    """

    name: str
    layout: str
    configuration: str
    heldout_current: float
    heldout_chosen: float
    cache_bytes: int
    threshold: int | None
    pinned_share: float
    predicted_blocks_per_1000_lookups: float | None
    strategy: str
    workers: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "configuration": self.configuration,
            "heldout_current_blocks_per_1000_lookups": self.heldout_current,
            "heldout_chosen_blocks_per_1000_lookups": self.heldout_chosen,
            "cache_bytes": self.cache_bytes,
            "threshold": self.threshold,
            "pinned_share": self.pinned_share,
            "predicted_blocks_per_1000_lookups": self.predicted_blocks_per_1000_lookups,
            "strategy": self.strategy,
            "workers": list(self.workers),
        }


@dataclass(frozen=True)
class RebuildReport:
    """The result of :func:`rebuild`: the version committed and what went into it.

    ``relayout``, ``sizing`` and ``plan`` are the single steps' own reports (JSON-ready);
    ``seconds`` the time of each stage and the total.
    """

    base_version: int
    version: int | None
    engine: str
    queries: dict[str, int]
    budget_bytes: int
    workers: int
    tables: dict[str, TableRebuild]
    seconds: dict[str, float]
    relayout: dict[str, Any] = field(repr=False)
    sizing: dict[str, Any] = field(repr=False)
    plan: dict[str, Any] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_version": self.base_version,
            "version": self.version,
            "engine": self.engine,
            "queries": dict(self.queries),
            "budget_bytes": self.budget_bytes,
            "workers": self.workers,
            "tables": {n: t.as_dict() for n, t in self.tables.items()},
            "seconds": dict(self.seconds),
            "relayout": self.relayout,
            "sizing": self.sizing,
            "plan": self.plan,
        }

    def format(self) -> str:
        """A table for people: one line per table, then the version and the times."""
        q = self.queries
        lines = [
            f"rebuild ({self.engine}): {q['tuning']:,} tuning + {q['heldout']:,} held-out "
            f"queries, DRAM budget {self.budget_bytes / 2**20:.1f} MiB, {self.workers} worker(s)",
            "",
            f"  {'table':<14}{'layout':<34}{'held-out blocks/1000':>22}{'cache MiB':>11}"
            f"{'t':>7}{'pin':>6}  plan",
        ]
        for name, t in self.tables.items():
            thr = "never" if t.threshold is None else str(t.threshold)
            heldout = f"{t.heldout_current:.1f} -> {t.heldout_chosen:.1f}"
            where = ",".join(str(w) for w in t.workers)
            lines.append(
                f"  {name:<14}{(t.layout + ' ' + t.configuration)[:33]:<34}{heldout:>22}"
                f"{t.cache_bytes / 2**20:>11.2f}{thr:>7}{t.pinned_share:>6.2f}  "
                f"{t.strategy} on {where}"
            )
        s = self.seconds
        lines += [
            "",
            f"committed version {self.version} (from {self.base_version}) in one transaction",
            "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items()),
        ]
        return "\n".join(lines)


@contextmanager
def _engine(engine: str, address: str | None) -> Iterator[Any]:
    """None for the local engine; for ``ray``, the Ray engine installed for the tune layer's
    per-table work (the one already installed, else on :func:`ray_cluster`'s cluster)."""
    if engine == "local":
        yield None
        return
    from bandstore.tune.distributed import engine_for

    with engine_for(address) as e:
        yield e


def default_budget(store: Any, share: float = DEFAULT_BUDGET_SHARE) -> int:
    """``share`` of the store's tables' rows at their cached DRAM cost (encoded rows plus slot)."""
    return int(share * sum(t.rows * cache_row_bytes(t.dim, t.codec) for t in store.tables.values()))


def rebuild(
    store: Any,
    trace: Trace,
    *,
    budget: int | None = None,
    workers: int | None = None,
    holdout: float = 0.2,
    method: str = "auto",
    batch_size: int = 256,
    seed: int = 0,
    engine: str = "local",
    address: str | None = None,
    progress: bool | None = None,
) -> RebuildReport:
    """Rebuild ``store``'s layouts, cache sizes and plan from ``trace``; commit one version.

    ``store``: open and writable. ``trace``: queries in time order; the last ``holdout`` share
    only measures (the relayout's guard: a table keeps its layout unless the new one reads fewer
    held-out blocks), the rest decides. ``budget``: DRAM bytes for the caches and the plan
    (default :func:`default_budget`). ``workers``: the plan's worker threads (default: the
    served or stored plan's, else 1). ``method``: the relayout's (``auto`` by default).
    ``engine``: ``local`` (this process) or ``ray``: the per-table relayouts and the sizing's
    simulations as Ray tasks (:mod:`bandstore.tune.distributed`) on the cluster at
    ``address`` (``host:port``), on the one this process is connected to, or on a local
    cluster started and stopped here; the committed version is the same as ``local``'s.

    A new version is committed even when every table keeps its layout (its cache policies,
    counts and plan are new). Raises what the single steps raise (InvalidArgumentError,
    BudgetError, UnknownTableError, ...) before anything is written; ReadOnlyError on a
    read-only store; ConcurrentWriteError if another writer committed meanwhile;
    MissingDependencyError (no Ray) or ClusterUnavailableError for ``engine="ray"``.
    """
    t_start = time.perf_counter()
    if engine not in ENGINES:
        raise InvalidArgumentError(
            f"unknown engine {engine!r}; available: {list(ENGINES)}",
            argument="engine",
            value=engine,
        )
    if address is not None and engine != "ray":
        raise InvalidArgumentError(
            "address is the Ray cluster's: it needs engine='ray'", argument="address"
        )
    if method not in METHODS:
        raise InvalidArgumentError(
            f"unknown method {method!r}; known: {list(METHODS)}", argument="method", value=method
        )
    if not store.writable:
        raise ReadOnlyError("rebuild commits a version: open the store with writable=True")
    if budget is None:
        budget = default_budget(store)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise InvalidArgumentError(
            f"budget must be a positive number of bytes, got {budget!r}", argument="budget"
        )
    budget = int(budget)
    if workers is None:
        stored = store.catalog.meta(PLAN_META_KEY)
        if store.plan is not None:
            workers = store.plan.workers
        elif isinstance(stored, dict) and isinstance(stored.get("workers"), int):
            workers = stored["workers"]
        else:
            workers = 1
    base_version = int(store.version)
    split = split_point(trace, holdout, batch_size)
    tune = trace.query_slice(0, split)
    staged = _Staged(store)
    seconds: dict[str, float] = {}

    with _engine(engine, address) as ray_engine:
        t0 = time.perf_counter()
        view = cast("Store", staged)  # a Store in every respect the single steps use
        relayout_options = RelayoutOptions(batch_size=batch_size, seed=seed)
        if ray_engine is None:
            relayout_report = relayout(
                view, trace, method=method, holdout=holdout, cache_bytes=budget,
                progress=progress, options=relayout_options,
            )  # fmt: skip
        else:
            from bandstore.tune.distributed import relayout_on_ray

            relayout_report = relayout_on_ray(
                ray_engine, staged, trace, method=method, holdout=holdout, cache_bytes=budget,
                options=relayout_options,
            )  # fmt: skip
        seconds["relayout"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        sizing = size_cache(
            view, tune, budget, apply=True, progress=progress,
            options=SizingOptions().with_sim(batch_size=batch_size, seed=seed),
        )  # fmt: skip
        seconds["sizing"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        plan: Plan = plan_store(staged, tune, workers, budget, batch_size=batch_size)
        seconds["plan"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        version = store.relayout_tables(
            staged.layouts,
            counts=staged.counts,
            tuning=staged.tuning,
            plan=plan,
            counts_origin=staged.origins or None,
            note=f"rebuild {method}",
            progress=progress,
        )
        seconds["commit"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    relayout_report.committed_version = version if staged.layouts else None

    tables = {}
    for name, e in relayout_report.tables.items():
        rec = staged.tuning.get(name) or {}
        tp = plan.tables.get(name)
        sized = sizing.tables.get(name)
        cfg = e.configuration
        desc = cfg["method"]
        if cfg.get("half_life") is not None:
            desc += f" hl {cfg['half_life']:.3g}"
        if cfg.get("cold") is not None:
            desc += f" cold {cfg['cold']}"
        tables[name] = TableRebuild(
            name=name,
            layout=e.action,
            configuration=desc,
            heldout_current=float(e.current["heldout_blocks_per_1000_lookups"]),
            heldout_chosen=float(e.result["heldout_blocks_per_1000_lookups"]),
            cache_bytes=int(rec.get("cache_bytes", 0)),
            threshold=rec.get("threshold"),
            pinned_share=float(rec.get("pinned_share", 0.0)),
            predicted_blocks_per_1000_lookups=(
                None if sized is None else sized.predicted_blocks_per_1000_lookups
            ),
            strategy=tp.strategy if tp is not None else "cached",
            workers=tuple(tp.workers) if tp is not None else (0,),
        )
    return RebuildReport(
        base_version=base_version,
        version=int(version),
        engine=engine,
        queries={"tuning": split, "heldout": trace.n_queries - split},
        budget_bytes=budget,
        workers=int(plan.workers),
        tables=tables,
        seconds=seconds,
        relayout=relayout_report.as_dict(),
        sizing=sizing.as_dict(),
        plan=plan.as_dict(),
    )
