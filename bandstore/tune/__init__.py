"""Offline tuning: work that turns recorded traffic into artefacts (layouts, cache sizes, plans,
calibration) and commits them through the store.

- :func:`relayout`: co-access block layouts, checked on held-out queries, committed as a version.
- :func:`size_cache`: DRAM per table from miniature cache simulations.
- :func:`plan`: a strategy per table and tables mapped to worker cores; :func:`apply_plan`,
  :func:`replan`, :class:`AutoReplanner`; :func:`calibrate` measures this machine's costs.
- :func:`rebuild`: layout, cache sizes and plan from one trace, committed as one version
  (``tools/rebuild.py``), reported as a :class:`RebuildReport`.
- :func:`replay`: serve a trace through a store and report what it cost.

Their options are frozen dataclasses with their defaults in :mod:`bandstore.options`
(:class:`RelayoutOptions`, :class:`SizingOptions`, :class:`SimOptions`); they return typed
reports (:mod:`bandstore.tune.reports`) with ``.as_dict()`` for JSON.
"""

from bandstore.options import RelayoutOptions, SimOptions, SizingOptions
from bandstore.tune.measure import replay
from bandstore.tune.pipeline import RebuildReport, rebuild
from bandstore.tune.planning import apply_plan, compare_plans, replan
from bandstore.tune.planning import calibrate_store as calibrate
from bandstore.tune.planning import plan_store as plan
from bandstore.tune.planning.elastic import AutoReplanner
from bandstore.tune.relayout_job import relayout
from bandstore.tune.reports import (
    PlanComparison,
    RelayoutReport,
    ReplayReport,
    SizingReport,
    TableRelayout,
    TableSizing,
)
from bandstore.tune.sim import size_cache

__all__ = [
    "AutoReplanner",
    "PlanComparison",
    "RelayoutOptions",
    "RelayoutReport",
    "ReplayReport",
    "SimOptions",
    "SizingOptions",
    "SizingReport",
    "TableRelayout",
    "TableSizing",
    "RebuildReport",
    "apply_plan",
    "calibrate",
    "compare_plans",
    "plan",
    "rebuild",
    "relayout",
    "replan",
    "replay",
    "size_cache",
]
