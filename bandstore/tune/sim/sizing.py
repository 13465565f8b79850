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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import BudgetError, InvalidArgumentError, UnknownTableError
from bandstore.kernels.cache import NEVER
from bandstore.options import APPLY_COUNTS, SimOptions, SizingOptions
from bandstore.progress import bar as progress_bar
from bandstore.serve.cache import cache_row_bytes
from bandstore.serve.store import Store
from bandstore.traces.trace import Trace
from bandstore.tune.parallel import engine_installed, map_tables
from bandstore.tune.provenance import trace_origin
from bandstore.tune.reports import SizingReport, TableSizing
from bandstore.tune.sim.allocate import allocate
from bandstore.tune.sim.mrc import Curves, simulate

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
#: exactly before splitting the budget a second time (``SizingOptions.exact_window``).
DEFAULT_EXACT_WINDOW = SizingOptions.exact_window
#: Share of the tuning trace that gives size_cache the access counts and warms the caches; the
#: choice is made on the rest. A serving store admits and pins by the counts of the whole
#: tuning trace and serves what follows it: the larger the warm-up share, the closer the
#: simulated counts are to those, and the fewer queries to choose on (docs/decisions/sizing.md).
DEFAULT_WARMUP = SizingOptions.warmup
#: size_cache's default SHARDS rate (tables with few blocks run at a higher rate, or exact).
DEFAULT_SAMPLE_RATE = SizingOptions().sim.sample_rate
#: Sizes simulated on either side of every table's first choice (up to the next grid points)
#: before the budget is split again: the grid is geometric, and a choice between two of its
#: points may leave budget unused (0: no second pass; an experiment's switch, see
#: benchmarks/exp_sizing_choice.py).
REFINE_POINTS = 2


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
    options: SimOptions | None = None,
    counts: str | Mapping[str, np.ndarray | None] = "trace",
    sizes_bytes: Mapping[str, Sequence[int] | np.ndarray] | None = None,
    warmup: float = 0.0,
    progress: bool | None = None,
) -> dict[str, Curves]:
    """Curves of every table of ``trace``, simulated over ``store``'s layouts and geometry.

    ``options``: the policies, sizes and sampling simulated (:class:`SimOptions`; default its
    defaults, exact). ``sizes_bytes``: cache sizes by table (default: a grid per table).
    ``warmup``: the first ``warmup`` share of the queries only warm the caches (see
    :func:`size_cache`). ``counts``: the access counts that admission and pinning use:
    ``"trace"`` (those of the warm-up part, or of the whole trace without one),
    ``"store"`` (those the store holds; without any the
    store never admits neighbours, so only ``NEVER`` is simulated) or ``{table: array}``.
    Per-batch semantics are those of ``bandstore.tune.measure.replay(store, part, batch_size=...)``
    on the warm-up part, then on the rest.
    """
    o = options if options is not None else SimOptions()
    names = check_trace(store, trace)
    cut = warmup_cut(trace, warmup)
    table_counts = _counts_for(store, trace, counts, cut)
    calls = []
    for name in names:
        info = store.tables[name]
        layout, inverse = store.table_layout(name)
        c = table_counts[name]
        # The store never admits neighbours without recorded counts.
        table_options = o if c is not None else replace(o, thresholds=(NEVER,))
        indices, offsets = trace.table(name)
        sizes = None if sizes_bytes is None else sizes_bytes.get(name)
        calls.append((name, info, indices, offsets, layout, inverse, c, table_options, sizes, cut))
    # Tables are independent: an engine (bandstore.tune.parallel) may simulate them in parallel.
    if engine_installed():
        results = map_tables(_simulate_table, calls)
    else:
        bar = progress_bar(progress, calls, desc="simulate", unit="table")
        results = [_simulate_table(*a) for a in bar]
    return dict(zip(names, results, strict=True))


def _simulate_table(name: str, info: Any, indices: np.ndarray, offsets: np.ndarray,
                    layout: np.ndarray, inverse: np.ndarray, counts: np.ndarray | None,
                    options: SimOptions, sizes: Any, cut: int) -> Curves:  # fmt: skip
    """One table's curves (:func:`simulate_store`'s per-table step)."""
    return simulate(
        indices,
        offsets,
        layout,
        info.rows_per_block,
        info.dim,
        counts,
        options=options,
        sizes_bytes=sizes,
        warmup_queries=cut,
        block_size=info.block_size,
        row_bytes=info.row_bytes,
        inverse_layout=inverse,
        table=name,
        check=False,
        codec=info.codec,
    )


def _figures(lookups: int, misses: float, blocks: float) -> dict[str, Any]:
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
    apply: bool = False,
    plot: str | os.PathLike | None = None,
    counts: str | Mapping[str, np.ndarray] = "trace",
    progress: bool | None = None,
    options: SizingOptions | None = None,
) -> SizingReport:
    """Size the DRAM cache of every table of ``trace`` within ``budget`` bytes in total.

    Simulates the store's cache policy over ``trace`` (normally the tuning part of a log) for
    ``n_sizes`` sizes x ``thresholds`` x ``pinned_shares`` per table (``options.sim``,
    SHARDS-sampled at ``sample_rate``; 1.0 = exact), chooses per table the cache bytes,
    threshold and pinned share that minimize the total predicted blocks read under the budget,
    and returns a :class:`bandstore.tune.reports.SizingReport` (per table a
    :class:`~bandstore.tune.reports.TableSizing`; the simulated curves in ``curves`` and, for
    the exact pass, ``exact_curves``).

    The first ``options.warmup`` share of the queries (``Trace.split``'s cut) give the access
    counts (admission, pinning) and warm the caches; the predictions are for the queries after
    them, in batches of ``batch_size`` queries per ``lookup_many`` call: choices are made, and
    judged, on queries the counts did not see. ``warmup=0`` predicts the whole trace from cold
    caches with its own counts (optimistic: the pinned rows are then known in advance).
    ``counts``: the counts admission and pinning use in the simulations: ``"trace"`` (those of
    the warm-up part), ``"store"`` (those the store holds) or ``{table: array}``.

    ``apply=True`` stores the choice in the catalog (the store must be writable), with access
    counts for admission and pinning per ``options.apply_counts`` (when ``counts="trace"``;
    explicit counts or ``"store"`` are stored as given), and their origin
    (``Store.counts_origin``): ``"trace"`` (default) the counts of the whole trace, as a
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
    points (needs matplotlib: ``pip install bandstore[plot]``).

    After a first choice on the grid, :data:`REFINE_POINTS` more sizes on each side of every
    table's choice (up to the next grid points) are simulated and the choice is made again.
    ``options.exact_window``: when curves were sampled, the sizes within this many grid steps
    of every sampled table's choice (and 0 bytes) are simulated again exactly, and the budget
    is split again with those tables restricted to their exact points (0: keep the sampled
    choice). Sampled curves are good enough to find the neighbourhood of each table's best
    size, not to trade the last percents of budget between tables whose errors differ; this
    pass costs a few exact sizes per table instead of a whole exact curve. Tables refined so
    have ``exact_points`` (how many) in the report.

    Raises BudgetError (budget below the smallest useful cache), InvalidArgumentError (bad
    options, empty trace, trace larger than a table), UnknownTableError (trace names a table
    the store does not have), ReadOnlyError (``apply`` on a read-only store).
    """
    t0 = time.perf_counter()
    o = options if options is not None else SizingOptions()
    if not isinstance(o, SizingOptions):
        raise InvalidArgumentError(
            f"options must be a bandstore.options.SizingOptions, got {type(o).__name__}",
            argument="options",
        )
    check_trace(store, trace)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise InvalidArgumentError(f"budget must be an integer number of bytes, got {budget!r}",
                                   argument="budget", value=budget)  # fmt: skip
    infos = [store.tables[n] for n in trace.table_names]
    smallest = min(min(i.rows, i.rows_per_block) * cache_row_bytes(i.dim, i.codec) for i in infos)
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
    warmup, sim = o.warmup, o.sim
    cut = warmup_cut(trace, warmup)
    table_counts = _counts_for(store, trace, counts, cut)
    curves = simulate_store(
        store, trace, options=sim, counts=table_counts, warmup=warmup, progress=progress
    )
    choice = allocate(curves, int(budget))
    grids = {n: cv.sizes_bytes for n, cv in curves.items()}
    if REFINE_POINTS:
        # Sizes between the grid points around each choice, then choose again: the grid is
        # geometric, and a choice between two of its points may leave budget unused.
        extra = {}
        for name, ch in choice.items():
            grid = curves[name].sizes_bytes
            k = ch["size_index"]
            lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
            pts = np.unique(np.linspace(lo, hi, 2 * REFINE_POINTS + 3).astype(np.int64))
            crb = cache_row_bytes(curves[name].dim, curves[name].codec)
            pts = np.setdiff1d(np.unique(pts // crb * crb), grid)
            if pts.size:
                extra[name] = pts
        if extra:
            more = simulate_store(
                store, trace.select(list(extra)), options=sim,
                counts={n: table_counts[n] for n in extra}, sizes_bytes=extra, warmup=warmup,
                progress=False,
            )  # fmt: skip
            curves = {n: cv.merge(more[n]) if n in more else cv for n, cv in curves.items()}
            choice = allocate(curves, int(budget))
    sampled_curves = curves
    if o.exact_window and any(not cv.exact for cv in curves.values()):
        curves, choice = _exact_pass(
            store, trace, curves, choice, int(budget), int(o.exact_window), grids, table_counts,
            options=replace(sim, sample_rate=1.0), warmup=warmup,
        )  # fmt: skip
    tables: dict[str, TableSizing] = {}
    tot_bytes = tot_lookups = 0
    tot_misses = tot_blocks = 0.0
    for name, ch in choice.items():
        cv = curves[name]
        t = TableSizing(
            cache_bytes=int(ch["cache_bytes"]),
            capacity_rows=int(ch["capacity_rows"]),
            threshold=int(ch["threshold"]),
            pinned_share=float(ch["pinned_share"]),
            **_figures(cv.lookups, ch["predicted_misses"], ch["predicted_blocks_read"]),
            effective_sample_rate=sampled_curves[name].sample_rate,
            configurations=cv.configurations,
            seconds=cv.seconds,
        )
        if cv is not sampled_curves[name]:
            t.configurations += sampled_curves[name].configurations
            t.seconds += sampled_curves[name].seconds
            t.exact_points = int(cv.sizes_bytes.size)
        tables[name] = t
        tot_bytes += ch["cache_bytes"]
        tot_lookups += cv.lookups
        tot_misses += ch["predicted_misses"]
        tot_blocks += ch["predicted_blocks_read"]
    report = SizingReport(
        budget_bytes=int(budget),
        allocated_bytes=int(tot_bytes),
        sample_rate=float(sim.sample_rate),
        batch_size=int(sim.batch_size),
        queries=trace.n_queries,
        warmup_queries=cut,
        tables=tables,
        total={"cache_bytes": int(tot_bytes), **_figures(tot_lookups, tot_misses, tot_blocks)},
        curves=dict(sampled_curves),
        exact_curves={n: cv for n, cv in curves.items() if cv is not sampled_curves[n]},
    )
    if plot is not None:
        plot_curves(sampled_curves, plot, chosen={
            n: {**ch, "size_index": int(np.argmin(np.abs(
                sampled_curves[n].sizes_bytes - ch["cache_bytes"])))}
            for n, ch in choice.items()})  # fmt: skip
        report.plot = str(plot)
    if apply:
        stored, part = table_counts, "warm-up part" if cut else "whole trace"
        counted = trace.query_slice(0, cut) if cut else trace
        if counts == "trace" and o.apply_counts == "trace" and cut:
            stored, part, counted = dict(trace_counts(store, trace)), "whole trace", trace
            if SCALE_THRESHOLDS:
                _rescale_thresholds(report, table_counts, stored)
        if counts == "trace":
            origin = {n: trace_origin("size_cache", counted, n, part) for n in trace.table_names}
        else:
            given = "store's counts" if counts == "store" else "counts given"
            origin = {n: trace_origin("size_cache", trace, n, given) for n in trace.table_names}
        apply_sizing(store, report, stored, origin)
        report.applied = True
        report.applied_counts = o.apply_counts if counts == "trace" else "given"
    report.seconds = time.perf_counter() - t0
    return report


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
        sizes_bytes=sizes, progress=False, **kw,
    )  # fmt: skip
    out = {n: exact.get(n, cv) for n, cv in curves.items()}
    return out, allocate(out, budget)


#: Scale the chosen admission thresholds to the counts applied (see _rescale_thresholds).
SCALE_THRESHOLDS = True


def _rescale_thresholds(report: SizingReport, simulated: Mapping[str, np.ndarray | None],
                        applied: Mapping[str, np.ndarray | None]) -> None:  # fmt: skip
    """A threshold was chosen on the warm-up part's counts; the store admits by the whole
    trace's, larger by the ratio of their lookups: the same threshold would admit more
    neighbours than the simulation did. Scale it by that ratio (rounded up)."""
    for name, t in report.tables.items():
        sim, app = simulated.get(name), applied.get(name)
        if t.threshold in (NEVER, 0) or sim is None or app is None:
            continue
        ratio = float(np.sum(app)) / max(1.0, float(np.sum(sim)))
        if ratio > 1.0:
            t.simulated_threshold = t.threshold
            t.threshold = int(min(NEVER - 1, math.ceil(t.threshold * ratio - 1e-9)))


def apply_sizing(
    store: Store,
    report: SizingReport,
    counts: Mapping[str, np.ndarray | None],
    origin: Mapping[str, Any] | None = None,
) -> None:
    """Store a :func:`size_cache` report (and the counts it used, with their ``origin`` by
    table) as the store's tuning."""
    tuning: dict[str, dict[str, Any]] = {}
    for name, t in report.tables.items():
        tuning[name] = {
            "cache_bytes": t.cache_bytes,
            "threshold": t.threshold,
            "pinned_share": t.pinned_share,
            "sized_by": "bandstore.sim",
            "budget_bytes": report.budget_bytes,
            "predicted_hit_ratio": t.predicted_hit_ratio,
            "predicted_blocks_per_1000_lookups": t.predicted_blocks_per_1000_lookups,
        }
    for name in store.tables:
        if name not in tuning:  # not read by the trace: the budget went elsewhere
            tuning[name] = {"cache_bytes": 0, "threshold": NEVER, "pinned_share": 0.0,
                            "sized_by": "bandstore.sim", "budget_bytes": report.budget_bytes,
                            "note": "not read by the sizing trace"}  # fmt: skip
    arrays = {n: np.asarray(c) for n, c in counts.items() if c is not None}
    store.set_tuning(tuning, counts=arrays, counts_origin=dict(origin or {}))


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


def format_sizing(report: SizingReport) -> str:
    """A :func:`size_cache` report as a text table (what ``bandstore size-cache`` prints)."""
    result = report.as_dict()
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
        thr = str(t["threshold"])
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
