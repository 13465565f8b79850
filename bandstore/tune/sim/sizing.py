"""Cache sizing for a store: curves for its tables, a budget split, and the tuning it stores.

``size_cache(store, trace, budget)`` is what ``bandstore size-cache`` and ``bandstore demo``
call: it simulates every table of the (tuning) trace over the store's layouts, with the access
counts of that trace's warm-up part for admission and pinning, splits the budget with
:func:`bandstore.tune.sim.allocate.allocate`, and optionally stores the choice in the catalog, with
the access counts of the whole trace (or, ``apply_counts="warmup"``, of its warm-up part), so
that ``bandstore.open(path)`` serves with it by default.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import BudgetError, InvalidArgumentError, UnknownTableError
from bandstore.kernels.cache import NEVER
from bandstore.serve.cache import cache_row_bytes
from bandstore.serve.store import Store
from bandstore.traces.trace import Trace
from bandstore.tune.sim.allocate import allocate
from bandstore.tune.sim.mrc import (
    DEFAULT_N_SIZES,
    DEFAULT_PINNED_SHARES,
    DEFAULT_THRESHOLDS,
    MAX_SAMPLED_LOOKUPS,
    MIN_SAMPLED_BLOCKS,
    Curves,
    _check_rate,
    simulate,
)

__all__ = [
    "APPLY_COUNTS",
    "DEFAULT_EXACT_WINDOW",
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_WARMUP",
    "apply_sizing",
    "check_trace",
    "warmup_cut",
    "format_sizing",
    "plot_curves",
    "simulate_store",
    "size_cache",
    "trace_counts",
]

#: Grid steps on either side of a sampled table's choice that size_cache simulates again
#: exactly before splitting the budget a second time (see ``size_cache(exact_window=...)``).
DEFAULT_EXACT_WINDOW = 2
#: Share of the tuning trace that gives size_cache the access counts and warms the caches; the
#: choice is made on the rest. A serving store admits and pins by the counts of the whole
#: tuning trace and serves what follows it: the larger the warm-up share, the closer the
#: simulated counts are to those, and the fewer queries to choose on (docs/decisions/sizing.md).
DEFAULT_WARMUP = 0.7
#: size_cache's default SHARDS rate (tables with few blocks run at a higher rate, or exact).
DEFAULT_SAMPLE_RATE = 0.01
#: What ``size_cache(..., apply=True)`` stores as the access counts (with ``counts="trace"``):
#: those of the whole tuning trace (the default: a serving store admits and pins by everything
#: it has seen) or those of its warm-up part (the counts the predictions were simulated with).
APPLY_COUNTS = ("trace", "warmup")


def check_trace(store: Store, trace: Trace) -> list[str]:
    """The trace's tables, after checking the store holds them and they fit; raise otherwise."""
    if not isinstance(trace, Trace):
        raise InvalidArgumentError(f"trace must be a Trace, got {type(trace).__name__}",
                                   argument="trace")  # fmt: skip
    tables = store.tables
    for name in trace.table_names:
        if name not in tables:
            raise UnknownTableError(name, list(tables))
        if trace.num_rows[name] > tables[name].rows:
            raise InvalidArgumentError(
                f"trace reads ids up to {trace.num_rows[name] - 1} of table {name!r}, "
                f"which has {tables[name].rows} rows",
                argument="trace",
            )
    if trace.n_queries == 0 or trace.n_lookups() == 0:
        raise InvalidArgumentError(
            "the trace is empty: it has no lookups to simulate a cache with", argument="trace"
        )
    return trace.table_names


def trace_counts(store: Store, trace: Trace) -> dict[str, np.ndarray]:
    """Access counts of the trace's tables, one entry per row of the store's table (int64)."""
    out = {}
    for name in trace.table_names:
        rows = store.tables[name].rows
        c = np.zeros(rows, dtype=np.int64)
        tc = trace.access_counts(name)
        c[: tc.shape[0]] = tc
        out[name] = c
    return out


def warmup_cut(trace: Trace, warmup: float) -> int:
    """Queries of the warm-up part: ``round(warmup * n_queries)``, as ``Trace.split`` cuts."""
    try:
        f = float(warmup)
    except (TypeError, ValueError):
        f = float("nan")
    if not 0.0 <= f < 1.0:
        raise InvalidArgumentError(f"warmup must be in [0, 1), got {warmup!r}", argument="warmup",
                                   value=warmup)  # fmt: skip
    cut = int(round(f * trace.n_queries))
    if sum(int(trace.table(n)[1][-1] - trace.table(n)[1][cut]) for n in trace.table_names) == 0:
        raise InvalidArgumentError(
            f"the trace has no lookups after its warm-up part ({cut} of {trace.n_queries} "
            "queries): nothing to predict",
            argument="warmup",
            value=warmup,
        )
    return cut


def _counts_for(
    store: Store, trace: Trace, counts: Any, warmup_queries: int = 0
) -> dict[str, np.ndarray | None]:
    if isinstance(counts, str):
        if counts == "trace":
            part = trace.query_slice(0, warmup_queries) if warmup_queries else trace
            return dict(trace_counts(store, part))
        if counts == "store":
            return {n: store.catalog.counts(n) for n in trace.table_names}
        raise InvalidArgumentError(
            f"counts must be 'trace', 'store' or a mapping of arrays, got {counts!r}",
            argument="counts",
            value=counts,
        )
    if not isinstance(counts, Mapping):
        raise InvalidArgumentError("counts must be 'trace', 'store' or {table: array}",
                                   argument="counts")  # fmt: skip
    unknown = sorted(set(counts) - set(trace.table_names))
    if unknown:
        raise UnknownTableError(unknown[0], trace.table_names)
    missing = [n for n in trace.table_names if n not in counts]
    if missing:
        raise InvalidArgumentError(f"counts are missing for tables {missing}", argument="counts")
    return {n: None if counts[n] is None else np.asarray(counts[n]) for n in trace.table_names}


def simulate_store(
    store: Store,
    trace: Trace,
    *,
    counts: str | Mapping[str, np.ndarray | None] = "trace",
    thresholds: Sequence[int | None] = DEFAULT_THRESHOLDS,
    pinned_shares: Sequence[float] = DEFAULT_PINNED_SHARES,
    sizes_bytes: Mapping[str, Sequence[int]] | None = None,
    n_sizes: int = DEFAULT_N_SIZES,
    batch_size: int = 256,
    warmup: float = 0.0,
    sample_rate: float = 1.0,
    seed: int = 0,
    min_sampled_blocks: int = MIN_SAMPLED_BLOCKS,
    max_sampled_lookups: int | None = MAX_SAMPLED_LOOKUPS,
    sampling: str = "stratified",
    estimator: str = "che",
    workers: int | None = None,
    progress: bool | None = None,
) -> dict[str, Curves]:
    """Curves of every table of ``trace``, simulated over ``store``'s layouts and geometry.

    ``warmup``: the first ``warmup`` share of the queries only warm the caches (see
    :func:`size_cache`). ``counts``: the access counts that admission and pinning use:
    ``"trace"`` (those of the warm-up part, or of the whole trace without one),
    ``"store"`` (those the store holds; without any the
    store never admits neighbours, so only ``NEVER`` is simulated) or ``{table: array}``.
    Per-batch semantics are those of ``bandstore.tune.measure.replay(store, part, batch_size=...)``
    on the warm-up part, then on the rest.
    """
    from tqdm.auto import tqdm

    names = check_trace(store, trace)
    cut = warmup_cut(trace, warmup)
    table_counts = _counts_for(store, trace, counts, cut)
    out: dict[str, Curves] = {}
    for name in tqdm(names, desc="simulate", unit="table",
                     disable=None if progress is None else not progress):  # fmt: skip
        info = store.tables[name]
        layout, inverse = store.table_layout(name)
        c = table_counts[name]
        ts = thresholds
        if c is None:
            ts = [NEVER]  # the store never admits neighbours without recorded counts
        indices, offsets = trace.table(name)
        out[name] = simulate(
            indices,
            offsets,
            layout,
            info.rows_per_block,
            info.dim,
            c,
            sizes_bytes=None if sizes_bytes is None else sizes_bytes.get(name),
            thresholds=ts,
            pinned_shares=pinned_shares,
            batch_size=batch_size,
            warmup_queries=cut,
            sample_rate=sample_rate,
            seed=seed,
            min_sampled_blocks=min_sampled_blocks,
            max_sampled_lookups=max_sampled_lookups,
            sampling=sampling,
            estimator=estimator,
            n_sizes=n_sizes,
            block_size=info.block_size,
            row_bytes=info.row_bytes,
            inverse_layout=inverse,
            workers=workers,
            table=name,
            check=False,
        )
    return out


def _figures(lookups: int, misses: float, blocks: float) -> dict[str, float]:
    return {
        "lookups": int(lookups),
        "predicted_misses": float(misses),
        "predicted_hit_ratio": 1.0 - misses / lookups if lookups else 0.0,
        "predicted_blocks_read": float(blocks),
        "predicted_blocks_per_1000_lookups": 1000.0 * blocks / lookups if lookups else 0.0,
    }


def size_cache(
    store: Store,
    trace: Trace,
    budget: int,
    *,
    sample_rate: float = DEFAULT_SAMPLE_RATE,
    thresholds: Sequence[int | None] = DEFAULT_THRESHOLDS,
    pinned_shares: Sequence[float] = DEFAULT_PINNED_SHARES,
    n_sizes: int = DEFAULT_N_SIZES,
    batch_size: int = 256,
    warmup: float = DEFAULT_WARMUP,
    counts: str | Mapping[str, np.ndarray] = "trace",
    apply: bool = False,
    apply_counts: str = "trace",
    plot: str | os.PathLike | None = None,
    refine: int = 2,
    exact_window: int = DEFAULT_EXACT_WINDOW,
    seed: int = 0,
    min_sampled_blocks: int = MIN_SAMPLED_BLOCKS,
    max_sampled_lookups: int | None = MAX_SAMPLED_LOOKUPS,
    sampling: str = "stratified",
    estimator: str = "che",
    workers: int | None = None,
    progress: bool | None = None,
    return_curves: bool = False,
) -> dict[str, Any]:
    """Size the DRAM cache of every table of ``trace`` within ``budget`` bytes in total.

    Simulates the store's cache policy over ``trace`` (normally the tuning part of a log) for
    ``n_sizes`` sizes x ``thresholds`` x ``pinned_shares`` per table (SHARDS-sampled at
    ``sample_rate``; 1.0 = exact), chooses per table the cache bytes, threshold and pinned share
    that minimize the total predicted blocks read under the budget, and returns::

        {"budget_bytes", "allocated_bytes", "sample_rate", "batch_size", "queries",
         "warmup_queries",
         "tables": {name: {"cache_bytes", "capacity_rows", "threshold", "pinned_share",
                           "lookups", "predicted_hit_ratio", "predicted_blocks_read",
                           "predicted_misses", "predicted_blocks_per_1000_lookups",
                           "effective_sample_rate", "configurations", "seconds"}},
         "total": {"cache_bytes", "lookups", "predicted_hit_ratio", "predicted_blocks_read",
                   "predicted_misses", "predicted_blocks_per_1000_lookups"},
         "applied", "applied_counts" (with apply), "plot", "seconds"}

    The first ``warmup`` share of the queries (``Trace.split``'s cut) give the access counts
    (admission, pinning) and warm the caches; the predictions are for the queries after them, in
    batches of ``batch_size`` queries per ``lookup_many`` call: choices are made, and judged, on
    queries the counts did not see. ``warmup=0`` predicts the whole trace from cold caches with
    its own counts (optimistic: the pinned rows are then known in advance). ``apply=True``
    stores the choice in the catalog (the store must be writable), with access counts for
    admission and pinning per ``apply_counts`` (when ``counts="trace"``; explicit counts or
    ``"store"`` are stored as given): ``"trace"`` (default) the counts of the whole trace, as a
    serving store counts everything it has seen, so the store serves the queries after the trace
    with more evidence than the simulation had (the predictions are then for the warm-up-part
    counts, not exactly what a replay of the trace's own second part reads, since the stored
    counts have seen it), and each admission threshold above 0 is stored scaled by the ratio of
    the whole trace's lookups to the warm-up part's, rounded up (the chosen one is then under
    ``simulated_threshold``): a count reaches a threshold sooner in the larger counts, and
    unscaled it admitted more neighbours than the simulation had (docs/decisions/sizing.md);
    ``"warmup"`` the counts of the warm-up part,
    those the predictions were made with, so replaying the warm-up part then the rest through
    ``bandstore.open(path)`` reads what was predicted. Tables of the store that the trace does
    not read get 0 bytes, since the budget is a total. ``plot`` draws the curves with the chosen
    points (needs matplotlib: ``pip install bandstore[plot]``). ``refine``: after a first choice
    on the grid, this many more sizes on each side of every table's choice (up to the next grid
    points) are simulated and the choice is made again (0: no second pass). ``exact_window``:
    when curves were sampled, the sizes within this many grid steps of every sampled table's
    choice (and 0 bytes) are simulated again exactly, and the budget is split again with those
    tables restricted to their exact points (0: keep the sampled choice). Sampled curves are
    good enough to find the neighbourhood of each table's best size, not to trade the last
    percents of budget between tables whose errors differ; this pass costs a few exact sizes per
    table instead of a whole exact curve. Tables refined so are marked ``"exact_points"`` (how
    many) in the result. ``return_curves`` adds the :class:`Curves` objects under ``"curves"``
    (not JSON; whole curves, sampled where they were) and those of the exact pass under
    ``"exact_curves"``.

    Raises BudgetError (budget below the smallest useful cache), InvalidArgumentError (bad rate,
    empty trace, trace larger than a table, ``apply_counts`` not in :data:`APPLY_COUNTS`),
    UnknownTableError (trace names a table the store does not have), ReadOnlyError (``apply``
    on a read-only store).
    """
    t0 = time.perf_counter()
    check_trace(store, trace)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise InvalidArgumentError(f"budget must be an integer number of bytes, got {budget!r}",
                                   argument="budget", value=budget)  # fmt: skip
    _check_rate(sample_rate)
    if not isinstance(apply_counts, str) or apply_counts not in APPLY_COUNTS:
        raise InvalidArgumentError(
            f"apply_counts must be one of {', '.join(repr(a) for a in APPLY_COUNTS)}, "
            f"got {apply_counts!r}",
            argument="apply_counts",
            value=apply_counts,
        )
    infos = [store.tables[n] for n in trace.table_names]
    smallest = min(min(i.rows, i.rows_per_block) * cache_row_bytes(i.dim) for i in infos)
    if budget < smallest:  # refuse before minutes of simulation (allocate checks it again)
        raise BudgetError(
            f"a DRAM budget of {int(budget)} bytes is below the smallest useful cache "
            f"({smallest} bytes: one block's worth of rows of the table with the smallest blocks)",
            budget=int(budget),
            needed=smallest,
        )
    if apply and not store.writable:
        from bandstore.errors import ReadOnlyError

        raise ReadOnlyError("size_cache(apply=True) needs a store opened for writing")
    cut = warmup_cut(trace, warmup)
    table_counts = _counts_for(store, trace, counts, cut)
    curves = simulate_store(
        store,
        trace,
        counts=table_counts,  # type: ignore[arg-type]
        thresholds=thresholds,
        pinned_shares=pinned_shares,
        n_sizes=n_sizes,
        batch_size=batch_size,
        warmup=warmup,
        sample_rate=sample_rate,
        seed=seed,
        min_sampled_blocks=min_sampled_blocks,
        max_sampled_lookups=max_sampled_lookups,
        sampling=sampling,
        estimator=estimator,
        workers=workers,
        progress=progress,
    )
    choice = allocate(curves, int(budget))
    grids = {n: cv.sizes_bytes for n, cv in curves.items()}
    if refine:
        # Sizes between the grid points around each choice, then choose again: the grid is
        # geometric, and a choice between two of its points may leave budget unused.
        extra = {}
        for name, ch in choice.items():
            grid = curves[name].sizes_bytes
            k = ch["size_index"]
            lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
            pts = np.unique(np.linspace(lo, hi, 2 * refine + 3).astype(np.int64))
            crb = cache_row_bytes(curves[name].dim)
            pts = np.setdiff1d(np.unique(pts // crb * crb), grid)
            if pts.size:
                extra[name] = pts
        if extra:
            more = simulate_store(
                store, trace.select(list(extra)), counts={n: table_counts[n] for n in extra},
                thresholds=thresholds, pinned_shares=pinned_shares, sizes_bytes=extra,
                batch_size=batch_size, warmup=warmup, sample_rate=sample_rate, seed=seed,
                min_sampled_blocks=min_sampled_blocks, max_sampled_lookups=max_sampled_lookups,
                sampling=sampling, estimator=estimator, workers=workers, progress=False,
            )  # fmt: skip
            curves = {n: cv.merge(more[n]) if n in more else cv for n, cv in curves.items()}
            choice = allocate(curves, int(budget))
    sampled_curves = curves
    if exact_window and any(not cv.exact for cv in curves.values()):
        curves, choice = _exact_pass(
            store, trace, curves, choice, int(budget), int(exact_window), grids, table_counts,
            thresholds=thresholds, pinned_shares=pinned_shares, batch_size=batch_size,
            warmup=warmup, workers=workers,
        )  # fmt: skip
    tables: dict[str, dict[str, Any]] = {}
    tot_bytes = tot_lookups = 0
    tot_misses = tot_blocks = 0.0
    for name, ch in choice.items():
        cv = curves[name]
        tables[name] = {
            "cache_bytes": ch["cache_bytes"],
            "capacity_rows": ch["capacity_rows"],
            "threshold": ch["threshold"],
            "pinned_share": ch["pinned_share"],
            **_figures(cv.lookups, ch["predicted_misses"], ch["predicted_blocks_read"]),
            "effective_sample_rate": sampled_curves[name].sample_rate,
            "configurations": cv.configurations,
            "seconds": cv.seconds,
        }
        if cv is not sampled_curves[name]:
            tables[name]["configurations"] += sampled_curves[name].configurations
            tables[name]["seconds"] += sampled_curves[name].seconds
            tables[name]["exact_points"] = int(cv.sizes_bytes.size)
        tot_bytes += ch["cache_bytes"]
        tot_lookups += cv.lookups
        tot_misses += ch["predicted_misses"]
        tot_blocks += ch["predicted_blocks_read"]
    result: dict[str, Any] = {
        "budget_bytes": int(budget),
        "allocated_bytes": int(tot_bytes),
        "sample_rate": float(sample_rate),
        "batch_size": int(batch_size),
        "queries": trace.n_queries,
        "warmup_queries": cut,
        "tables": tables,
        "total": {"cache_bytes": int(tot_bytes), **_figures(tot_lookups, tot_misses, tot_blocks)},
        "applied": False,
        "plot": None,
    }
    if plot is not None:
        plot_curves(sampled_curves, plot, chosen={
            n: {**ch, "size_index": int(np.argmin(np.abs(
                sampled_curves[n].sizes_bytes - ch["cache_bytes"])))}
            for n, ch in choice.items()})  # fmt: skip
        result["plot"] = str(plot)
    if apply:
        stored = table_counts
        if counts == "trace" and apply_counts == "trace" and cut:
            stored = dict(trace_counts(store, trace))
            if SCALE_THRESHOLDS:
                _rescale_thresholds(result, table_counts, stored)
        apply_sizing(store, result, stored)
        result["applied"] = True
        result["applied_counts"] = apply_counts if counts == "trace" else "given"
    result["seconds"] = time.perf_counter() - t0
    if return_curves:
        result["curves"] = sampled_curves
        result["exact_curves"] = {n: cv for n, cv in curves.items() if cv is not sampled_curves[n]}
    return result


def _exact_pass(
    store: Store,
    trace: Trace,
    curves: dict[str, Curves],
    choice: dict[str, dict[str, Any]],
    budget: int,
    window: int,
    grids: Mapping[str, np.ndarray],
    table_counts: Mapping[str, np.ndarray | None],
    **kw: Any,
) -> tuple[dict[str, Curves], dict[str, dict[str, Any]]]:
    """Exact curves at the sizes near each sampled table's choice, and the split made again.

    For a table whose curves were sampled: 0 bytes and the sizes of its curves within
    ``window`` steps of its first-pass grid ``grids[table]`` (refinement points between them
    count as well) on either side of its chosen size; the knapsack then
    picks among these exact points only (a sampled point left beside exact ones would be
    chosen for its luck). Tables simulated exactly in the first pass keep their curves.
    """
    sizes: dict[str, np.ndarray] = {}
    for name, cv in curves.items():
        if cv.exact:
            continue
        grid = cv.sizes_bytes
        chosen = choice[name]["cache_bytes"]
        main = grids[name]
        k = int(np.searchsorted(main, chosen, side="right")) - 1
        lo = main[max(k - window, 0)]
        hi = main[min(k + window + (0 if main[max(k, 0)] == chosen else 1), main.size - 1)]
        pts = grid[(grid >= lo) & (grid <= hi)]
        sizes[name] = np.unique(np.concatenate([[0, chosen], pts])).astype(np.int64)
    if not sizes:
        return curves, choice
    names = list(sizes)
    exact = simulate_store(
        store, trace.select(names), counts={n: table_counts[n] for n in names},
        sizes_bytes=sizes, sample_rate=1.0, progress=False, **kw,
    )  # fmt: skip
    out = {n: exact.get(n, cv) for n, cv in curves.items()}
    return out, allocate(out, budget)


#: Scale the chosen admission thresholds to the counts applied (see _rescale_thresholds).
SCALE_THRESHOLDS = True


def _rescale_thresholds(result: dict[str, Any], simulated: Mapping[str, np.ndarray | None],
                        applied: Mapping[str, np.ndarray | None]) -> None:  # fmt: skip
    """A threshold was chosen on the warm-up part's counts; the store admits by the whole
    trace's, larger by the ratio of their lookups: the same threshold would admit more
    neighbours than the simulation did. Scale it by that ratio (rounded up)."""
    for name, t in result["tables"].items():
        sim, app = simulated.get(name), applied.get(name)
        if t["threshold"] in (None, 0) or sim is None or app is None:
            continue
        ratio = float(np.sum(app)) / max(1.0, float(np.sum(sim)))
        if ratio > 1.0:
            t["simulated_threshold"] = t["threshold"]
            t["threshold"] = int(min(NEVER - 1, math.ceil(t["threshold"] * ratio - 1e-9)))


def apply_sizing(
    store: Store, result: Mapping[str, Any], counts: Mapping[str, np.ndarray | None]
) -> None:
    """Store a :func:`size_cache` result (and the counts it used) as the store's tuning."""
    tuning: dict[str, dict[str, Any]] = {}
    for name, t in result["tables"].items():
        tuning[name] = {
            "cache_bytes": t["cache_bytes"],
            "threshold": t["threshold"],
            "pinned_share": t["pinned_share"],
            "sized_by": "bandstore.sim",
            "budget_bytes": result["budget_bytes"],
            "predicted_hit_ratio": t["predicted_hit_ratio"],
            "predicted_blocks_per_1000_lookups": t["predicted_blocks_per_1000_lookups"],
        }
    for name in store.tables:
        if name not in tuning:  # not read by the trace: the budget went elsewhere
            tuning[name] = {"cache_bytes": 0, "threshold": None, "pinned_share": 0.0,
                            "sized_by": "bandstore.sim", "budget_bytes": result["budget_bytes"],
                            "note": "not read by the sizing trace"}  # fmt: skip
    arrays = {n: np.asarray(c) for n, c in counts.items() if c is not None}
    store.set_tuning(tuning, counts=arrays)


def plot_curves(
    curves: Mapping[str, Curves],
    path: str | os.PathLike,
    *,
    chosen: Mapping[str, Mapping[str, Any]] | None = None,
    title: str | None = None,
) -> Path:
    """Draw blocks read per 1000 lookups against cache bytes, per table and threshold.

    One panel per table; one line per threshold (best pinned share at each size), the lower
    envelope in black, the chosen point (``chosen[table]["size_index"]``) marked. Needs
    matplotlib (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError as exc:
        raise InvalidArgumentError(
            "plotting needs matplotlib: pip install 'bandstore[plot]'", argument="plot"
        ) from exc
    names = list(curves)
    n = max(1, len(names))
    cols = min(n, 4 if n > 6 else 3 if n > 2 else n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        cv = curves[name]
        x = cv.sizes_bytes.astype(np.float64)
        xpos = np.where(x > 0, x, max(1.0, x[x > 0].min() / 2) if np.any(x > 0) else 1.0)
        per = 1000.0 / cv.lookups if cv.lookups else 0.0
        for i, t in enumerate(cv.thresholds):
            y = cv.blocks_read[i].min(axis=0) * per
            label = "t=never" if t >= NEVER else f"t={int(t)}"
            ax.plot(xpos, y, lw=1, label=label)
        env, _, _ = cv.envelope()
        ax.plot(xpos, env * per, color="black", lw=1.8, label="best")
        if chosen is not None and name in chosen:
            k = chosen[name]["size_index"]
            ax.plot([xpos[k]], [env[k] * per], "o", ms=9, mfc="none", mec="red", mew=2,
                    label="chosen")  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        rate = "exact" if cv.exact else f"R={cv.sample_rate:.3g}"
        ax.set_title(f"{name} ({cv.rows:,} rows, {rate})", fontsize=9)
        ax.set_xlabel("cache bytes", fontsize=8)
        ax.set_ylabel("blocks / 1000 lookups", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    axes.ravel()[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_sizing(result: Mapping[str, Any]) -> str:
    """A :func:`size_cache` result as a text table (what ``bandstore size-cache`` prints)."""
    head = (f"{'table':<16}{'cache MiB':>11}{'rows':>12}{'threshold':>11}{'pinned':>8}"
            f"{'hit ratio':>11}{'blocks/1000':>13}{'blocks read':>14}{'rate':>8}")  # fmt: skip
    lines = [
        f"DRAM budget {result['budget_bytes'] / 2**20:.2f} MiB; predicted for the last "
        f"{result['queries'] - result['warmup_queries']:,} of {result['queries']:,} queries "
        f"(the first warm the caches and give the access counts), batches of "
        f"{result['batch_size']}",
        head,
    ]
    for name, t in result["tables"].items():
        thr = "never" if t["threshold"] is None else str(t["threshold"])
        lines.append(
            f"{name[:15]:<16}{t['cache_bytes'] / 2**20:>11.2f}{t['capacity_rows']:>12,}{thr:>11}"
            f"{t['pinned_share']:>8.2f}{t['predicted_hit_ratio']:>11.3f}"
            f"{t['predicted_blocks_per_1000_lookups']:>13.1f}{t['predicted_blocks_read']:>14,.0f}"
            f"{t['effective_sample_rate']:>8.3g}"
        )
    tot = result["total"]
    lines.append(
        f"{'total':<16}{tot['cache_bytes'] / 2**20:>11.2f}{'':>12}{'':>11}{'':>8}"
        f"{tot['predicted_hit_ratio']:>11.3f}{tot['predicted_blocks_per_1000_lookups']:>13.1f}"
        f"{tot['predicted_blocks_read']:>14,.0f}"
    )
    if result.get("applied"):
        lines.append("applied: stored in the catalog; bandstore.open() now uses these sizes")
    if result.get("plot"):
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)
