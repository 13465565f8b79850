"""Typed reports of the tuning jobs: dataclasses with ``.as_dict()`` for JSON.

In Python a threshold is an integer (``bandstore.NEVER`` for no neighbour admission); in the
JSON form (``as_dict``) every threshold under a key naming one is ``"never"`` instead.
Fields holding objects that have no JSON form (simulated curves) are left out of ``as_dict``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandstore.options import threshold_to_json

__all__ = [
    "PlanComparison",
    "RelayoutReport",
    "ReplayReport",
    "SizingReport",
    "TableRelayout",
    "TableSizing",
    "jsonable",
]

#: Metadata of a field left out of ``as_dict`` (no JSON form).
NOT_JSON = {"json": False}


def jsonable(value: Any, key: str = "") -> Any:
    """``value`` as JSON-ready data: reports and dataclasses as dicts, numpy scalars and arrays
    as numbers and lists, thresholds (under keys naming one) ``NEVER`` as ``"never"``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "as_dict"):
            return value.as_dict()
        return {f.name: jsonable(getattr(value, f.name), f.name) for f in dataclasses.fields(value)
                if f.metadata.get("json", True)}  # fmt: skip
    if isinstance(value, dict):
        return {k: jsonable(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, key) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), key)
    if isinstance(value, np.generic):
        value = value.item()
    if "threshold" in key and isinstance(value, int) and not isinstance(value, bool):
        return threshold_to_json(value)
    return value


class _Report:
    """``as_dict`` over the dataclass fields, without those marked :data:`NOT_JSON`."""

    def as_dict(self) -> dict[str, Any]:
        return {
            f.name: jsonable(getattr(self, f.name), f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.metadata.get("json", True)
        }


# ---- replay ---------------------------------------------------------------------------------
@dataclass
class ReplayReport(_Report):
    """What a replay through a real store cost: the store's counters for the replay per table
    (``tables``) and in ``total`` (see ``Store.stats``), the queries, the seconds spent in
    ``lookup_many`` and the lookups per second."""

    tables: dict[str, dict[str, float]]
    total: dict[str, float]
    queries: int
    seconds: float
    lookups_per_second: float


# ---- sizing ---------------------------------------------------------------------------------
@dataclass
class TableSizing(_Report):
    """One table's share of a sizing: the chosen cache bytes, threshold and pinned share, and
    the predicted counters of the queries after the warm-up part.

    ``simulated_threshold``: the threshold as chosen on the warm-up counts when the stored one
    was scaled to the whole trace's counts (``size_cache(apply=True)``). ``exact_points``: how
    many sizes were simulated again exactly (sampled tables only).
    """

    cache_bytes: int
    capacity_rows: int
    threshold: int
    pinned_share: float
    lookups: int
    predicted_misses: float
    predicted_hit_ratio: float
    predicted_blocks_read: float
    predicted_blocks_per_1000_lookups: float
    effective_sample_rate: float
    configurations: int
    seconds: float
    simulated_threshold: int | None = None
    exact_points: int | None = None


@dataclass
class SizingReport(_Report):
    """A DRAM budget split by ``bandstore.tune.size_cache``: per table (``tables``) and in
    ``total`` (cache bytes and predicted counters), with what it was made from.

    ``applied``: stored in the catalog; ``applied_counts``: which access counts were stored
    with it (``"trace"``, ``"warmup"`` or ``"given"``). ``curves`` (and ``exact_curves``, the
    exact pass near sampled choices) are the simulated ``Curves`` by table (not in
    ``as_dict``).
    """

    budget_bytes: int
    allocated_bytes: int
    sample_rate: float
    batch_size: int
    queries: int
    warmup_queries: int
    tables: dict[str, TableSizing]
    total: dict[str, float]
    applied: bool = False
    applied_counts: str | None = None
    plot: str | None = None
    seconds: float = 0.0
    curves: dict[str, Any] = field(default_factory=dict, metadata=NOT_JSON, repr=False)
    exact_curves: dict[str, Any] = field(default_factory=dict, metadata=NOT_JSON, repr=False)


# ---- relayout -------------------------------------------------------------------------------
@dataclass
class TableRelayout(_Report):
    """One table's relayout: held-out figures (dicts of ``heldout_*`` and ``tuning_*`` counters
    with the ``threshold`` and ``pinned_share`` chosen for them) of the store as it is
    (``current``), of the naive store (identity layout, no admission, nothing pinned), of the
    identity layout with a tuned policy (``policy_only``), of each candidate method
    (``candidates``) and of the chosen configuration (``result``; ``configuration``: method,
    half_life, cold, threshold, pinned_share; ``chosen``: its method); ``action``
    (``"commit"`` or ``"keep"`` with a ``reason``).

    ``choice``: for ``auto``, the inner split and every configuration's score.
    ``policy_window``: the most recent tuning queries the policies were chosen on, for a long
    trace. ``skipped_candidates``: methods not built at full size on such a trace.
    """

    cache_bytes: int
    naive: dict[str, Any]
    current: dict[str, Any]
    policy_only: dict[str, Any]
    candidates: dict[str, dict[str, Any]]
    chosen: str
    configuration: dict[str, Any]
    result: dict[str, Any]
    improvement_over_current: float
    improvement_over_naive: float
    action: str
    reason: str | None = None
    choice: dict[str, Any] | None = None
    policy_window: dict[str, int] | None = None
    skipped_candidates: list[str] | None = None


@dataclass
class RelayoutReport(_Report):
    """A relayout: the queries it tuned on and judged on (``queries``: ``tuning`` and
    ``heldout``), the method, the bound on tuning lookups, per table a
    :class:`TableRelayout`, and the committed version (None: nothing committed)."""

    queries: dict[str, int]
    method: str
    max_tuning_lookups: int | None
    tables: dict[str, TableRelayout]
    committed_version: int | None = None


# ---- plans ----------------------------------------------------------------------------------
@dataclass
class PlanComparison(_Report):
    """A plan measured against the uniform plan (and the same planner at one worker) by
    ``bandstore.tune.compare_plans``: the plans (JSON form), per contender the predicted and
    measured batch times, p50/p99, lookups/s, hit ratio and DRAM (``results``), and the ratios
    (``speedup``: ``plan_vs_uniform``, ``workers_vs_one``)."""

    store: str
    workers: int
    budget_bytes: int
    batch_size: int
    queries: dict[str, int]
    heldout_lookups: int
    calibrated: bool
    plans: dict[str, dict[str, Any]]
    results: dict[str, dict[str, Any]]
    speedup: dict[str, float]
    #: The Plan objects (not JSON): they carry the access counts that rank pinned tables' rows,
    #: which ``apply_plan`` stores with the plan; the ``plans`` dicts do not have them.
    plan_objects: dict[str, Any] = field(default_factory=dict, metadata=NOT_JSON)


def ratio(num: float, den: float) -> float:
    """``num / den``, infinite for a zero denominator (a layout that reads no block)."""
    return num / den if den else math.inf
