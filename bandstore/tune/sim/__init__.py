"""Miniature cache simulation: miss-ratio curves and the DRAM budget per table.

- :func:`simulate`: curves of one table from arrays (exact, or SHARDS-sampled), through the
  store's own cache kernel, for many sizes, thresholds and pinned shares in one pass.
- :func:`simulate_store`: the same for every table of a trace, over an open store's layouts.
- :func:`allocate`: the budget split (cache bytes, threshold, pinned share per table) that
  minimizes the predicted blocks read.
- :func:`size_cache`: all of it for ``bandstore size-cache`` and the demo; ``apply=True``
  stores the choice in the catalog so ``bandstore.open(path)`` uses it (with the access counts
  of the whole tuning trace, or of its warm-up part: ``SizingOptions.apply_counts``).

Options (:class:`bandstore.options.SimOptions`, :class:`bandstore.options.SizingOptions`) and
their defaults live in :mod:`bandstore.options`.
"""

from bandstore.tune.sim.allocate import allocate, knapsack
from bandstore.tune.sim.mrc import (
    DEFAULT_PINNED_SHARES,
    DEFAULT_THRESHOLDS,
    ESTIMATORS,
    MAX_SAMPLED_LOOKUPS,
    MIN_SAMPLED_BLOCKS,
    SAMPLINGS,
    Curves,
    block_sample,
    simulate,
    size_grid,
    stratified_sample,
)
from bandstore.tune.sim.sizing import (
    APPLY_COUNTS,
    DEFAULT_EXACT_WINDOW,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_WARMUP,
    apply_sizing,
    format_sizing,
    plot_curves,
    simulate_store,
    size_cache,
    trace_counts,
)

__all__ = [
    "APPLY_COUNTS",
    "Curves",
    "DEFAULT_PINNED_SHARES",
    "DEFAULT_EXACT_WINDOW",
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_WARMUP",
    "DEFAULT_THRESHOLDS",
    "ESTIMATORS",
    "MAX_SAMPLED_LOOKUPS",
    "MIN_SAMPLED_BLOCKS",
    "SAMPLINGS",
    "allocate",
    "apply_sizing",
    "block_sample",
    "format_sizing",
    "knapsack",
    "plot_curves",
    "simulate",
    "simulate_store",
    "size_cache",
    "size_grid",
    "stratified_sample",
    "trace_counts",
]
