"""Plans: a strategy per table and the worker of each table (or of each part of a split one).

A plan is plain data with a JSON form (stored in the catalog by ``apply``), validated on the way
in, so a hand-written plan with an unknown strategy or a bad worker fails with a ``PlanError``
that names the table.

The short form ``{table: strategy_name}`` (``open(path, plan={"a": "resident"})``) names only
strategies: ``plan_from_strategies`` deals the tables to the workers round-robin and sizes
caches as the store would without a plan (``split`` splits over every worker, ``split:INNER``
names the parts' strategy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bandstore.errors import BudgetError, PlanError
from bandstore.serve.strategies import SPLIT_INNER, STRATEGIES

PLAN_FORMAT = 1
#: Catalog meta key of the applied plan.
META_KEY = "plan"
#: At most this many replicated (hot) rows per split table.
MAX_REPLICATED = 1 << 16
#: The strategies whose entries size a cache (``cache_bytes``).
CACHING = ("cached", "pinned")


@dataclass(frozen=True)
class TablePlan:
    """How one table is served.

    ``workers``: the worker of each part (one entry unless ``strategy == "split"``).
    ``cache_bytes``: the cache of a ``cached`` table, or of each part of a cached split; the
    frozen cache of a ``pinned`` table (shared by its parts).
    ``inner``: what a split table's parts are (``resident``, ``cached``, ``pinned`` or ``direct``).
    ``replicate``: hot ids pinned in every part of a cached split.
    ``predicted_ns`` / ``dram_bytes``: the cost model's figures (informative).
    """

    strategy: str
    workers: tuple[int, ...] = (0,)
    cache_bytes: int = 0
    inner: str | None = None
    replicate: tuple[int, ...] = ()
    predicted_ns: float | None = None
    dram_bytes: int | None = None

    @property
    def parts(self) -> int:
        return len(self.workers)

    @property
    def kind(self) -> str:
        """The strategy of each part: ``inner`` for a split, else the strategy."""
        return self.inner if self.strategy == "split" else self.strategy  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "split":
            d["workers"] = list(self.workers)
            d["inner"] = self.inner
            if self.replicate:
                d["replicate"] = list(self.replicate)
        else:
            d["worker"] = self.workers[0]
        if self.kind in CACHING:
            d["cache_bytes"] = int(self.cache_bytes)
        if self.predicted_ns is not None:
            d["predicted_ns"] = float(self.predicted_ns)
        if self.dram_bytes is not None:
            d["dram_bytes"] = int(self.dram_bytes)
        return d


@dataclass(frozen=True)
class Plan:
    """Strategies and worker mapping for the tables of a store."""

    workers: int
    tables: dict[str, TablePlan]
    budget_bytes: int | None = None
    predicted: dict[str, Any] = field(default_factory=dict)
    name: str = "plan"
    #: Access counts that rank a ``pinned`` table's rows, from the trace the plan was made for
    #: (not part of the JSON form: ``apply_plan`` stores them as the tables' access counts).
    #: A pinned table without them ranks by the table's stored counts.
    counts: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: Where those counts came from, by table (``bandstore.storage.origin.CountsOrigin``),
    #: stored with them by ``apply_plan``.
    counts_origin: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "name": self.name,
            "workers": self.workers,
            "budget_bytes": self.budget_bytes,
            "tables": {n: tp.as_dict() for n, tp in self.tables.items()},
            "predicted": self.predicted,
        }

    @property
    def dram_bytes(self) -> int | None:
        vals = [tp.dram_bytes for tp in self.tables.values()]
        return None if any(v is None for v in vals) else int(sum(vals))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], tables: Mapping[str, Any] | None = None) -> Plan:
        """Parse and validate a plan (``tables``: the store's TableInfo by name, to check
        names and replicated ids)."""
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {type(d).__name__}")
        workers = check_workers(d.get("workers"))
        budget = d.get("budget_bytes")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise PlanError(f"budget_bytes must be a non-negative integer, got {budget!r}")
        raw = d.get("tables")
        if not isinstance(raw, Mapping):
            raise PlanError("a plan needs a 'tables' object: {table: {strategy: ...}}")
        out = {}
        for name, rec in raw.items():
            if tables is not None and name not in tables:
                raise PlanError(
                    f"the plan names table {name!r}, which the store does not have "
                    f"(tables: {sorted(tables)})",
                    table=name,
                )
            out[name] = _table_plan(name, rec, workers, tables[name] if tables else None)
        plan = cls(
            workers,
            out,
            budget,
            dict(d.get("predicted") or {}),
            str(d.get("name", "plan")),
        )
        if budget is not None and plan.dram_bytes is not None and plan.dram_bytes > budget:
            raise BudgetError(
                f"the plan takes {plan.dram_bytes} bytes of DRAM, over its budget of {budget}",
                budget=budget,
                needed=plan.dram_bytes,
            )
        return plan


def is_strategy_mapping(arg: Any) -> bool:
    """Whether ``arg`` is a plan's short form: a non-empty mapping of table names to strategy
    names (every value a string; the full form's ``tables`` and ``workers`` are not)."""
    return (
        isinstance(arg, Mapping) and len(arg) > 0 and all(isinstance(v, str) for v in arg.values())
    )


def plan_from_strategies(
    strategies: Mapping[str, str],
    tables: Mapping[str, Any],
    workers: int,
    cache_bytes: Mapping[str, int],
) -> Plan:
    """The plan of the short form ``{table: strategy_name}`` for a store of ``tables`` (its
    TableInfo by name, in the store's order) on ``workers`` threads: table ``i`` of the store
    runs on worker ``i % workers``; a ``cached`` or ``pinned`` table gets ``cache_bytes[table]``
    (the size it has without a plan); ``split`` (a cached split) and ``split:INNER`` (INNER one
    of resident, cached, pinned, direct) run one part on every worker, a cached split's parts
    sharing that size. PlanError for an unknown table or strategy name."""
    workers = check_workers(workers)
    order = {n: i for i, n in enumerate(tables)}
    known = [*STRATEGIES, *(f"split:{s}" for s in SPLIT_INNER)]
    out: dict[str, Any] = {}
    for name, strategy in strategies.items():
        if not isinstance(name, str) or name not in order:
            raise PlanError(
                f"the plan names table {name!r}, which the store does not have "
                f"(tables: {sorted(tables)})",
                table=str(name),
            )
        if strategy not in known:
            raise PlanError(
                f"table {name!r}: unknown strategy {strategy!r}; known: {known}", table=name
            )
        worker = order[name] % workers
        size = int(cache_bytes.get(name, 0))
        if strategy.startswith("split"):
            inner = strategy.partition(":")[2] or "cached"
            rec: dict[str, Any] = {"strategy": "split", "inner": inner,
                                   "workers": list(range(workers))}  # fmt: skip
            if inner in CACHING:
                rec["cache_bytes"] = size // workers if inner == "cached" else size
        else:
            rec = {"strategy": strategy, "worker": worker}
            if strategy in CACHING:
                rec["cache_bytes"] = size
        out[name] = rec
    return Plan.from_dict({"workers": workers, "tables": out, "name": "strategies"}, tables)


def check_workers(workers: Any) -> int:
    """A worker count: an integer >= 1 (PlanError otherwise)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PlanError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


def _worker(name: str, w: Any, workers: int) -> int:
    if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < workers:
        raise PlanError(f"table {name!r}: worker {w!r} is not one of 0..{workers - 1}", table=name)
    return w


def _table_plan(name: str, rec: Any, workers: int, info: Any) -> TablePlan:
    if not isinstance(rec, Mapping):
        raise PlanError(f"table {name!r}: expected an object, got {rec!r}", table=name)
    strategy = rec.get("strategy")
    if strategy not in STRATEGIES:
        raise PlanError(
            f"table {name!r}: unknown strategy {strategy!r}; known: {list(STRATEGIES)}",
            table=name,
        )
    inner = None
    replicate: tuple[int, ...] = ()
    if strategy == "split":
        ws = rec.get("workers")
        if not isinstance(ws, list | tuple) or len(ws) < 1:
            raise PlanError(
                f"table {name!r}: a split needs 'workers', the worker of each part", table=name
            )
        ws = tuple(_worker(name, w, workers) for w in ws)
        inner = rec.get("inner", "cached")
        if inner not in SPLIT_INNER:
            raise PlanError(
                f"table {name!r}: unknown split inner strategy {inner!r}; known: "
                f"{list(SPLIT_INNER)}",
                table=name,
            )
        rep = rec.get("replicate", [])
        if not isinstance(rep, list | tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in rep
        ):
            raise PlanError(f"table {name!r}: replicate must be a list of ids", table=name)
        if len(rep) > MAX_REPLICATED:
            raise PlanError(
                f"table {name!r}: at most {MAX_REPLICATED} replicated rows, got {len(rep)}",
                table=name,
            )
        if rep and inner != "cached":
            raise PlanError(
                f"table {name!r}: only a cached split replicates rows (inner is {inner!r})",
                table=name,
            )
        if info is not None and rep and max(rep) >= info.rows:
            raise PlanError(
                f"table {name!r}: replicated id {max(rep)} is out of range ({info.rows} rows)",
                table=name,
            )
        replicate = tuple(int(i) for i in rep)
    else:
        ws = (_worker(name, rec.get("worker", 0), workers),)
    kind = inner if strategy == "split" else strategy
    cache_bytes = rec.get("cache_bytes", 0 if kind not in CACHING else None)
    if cache_bytes is None:
        raise PlanError(f"table {name!r}: a {kind} table needs 'cache_bytes'", table=name)
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise PlanError(
            f"table {name!r}: cache_bytes must be a non-negative integer, got {cache_bytes!r}",
            table=name,
        )
    pred = rec.get("predicted_ns")
    dram = rec.get("dram_bytes")
    return TablePlan(
        strategy,
        ws,
        int(cache_bytes),
        inner,
        replicate,
        float(pred) if isinstance(pred, int | float) else None,
        int(dram) if isinstance(dram, int) else None,
    )
