"""Rebuild block layouts from an access log, prove them on held-out queries, commit atomically.

For each table of the trace:

1. the trace is split by query position: the tuning part (earlier queries) and the held-out part
   (later queries). The held-out part decides nothing: it only measures, for the report and for
   the guard of step 6;
2. candidate layouts are built from the whole tuning part (``bandstore.tune.layout.build_layout``,
   default parameters, one per method; the co-access methods leave out of the partition the
   rows the table's cache holds: ``hot_fraction`` = the cache's share of the rows,
   :func:`cache_share`), next to the layout the store has now, and each one's
   admission threshold and pinned share are chosen on the tuning part by exact simulation of the
   store's cache policy (``bandstore.tune.sim``) at the table's cache size; each candidate, with its
   policy, is replayed over the held-out part by the same simulator, the cache warmed by the
   tuning part as a serving store's would be. These figures are reported, never used to choose;
3. ``auto`` chooses a configuration on an *inner* split of the tuning part
   (:func:`inner_split`): the first 75% of the tuning queries build a layout for every
   configuration of the grid (:func:`configuration_grid`: method, including ``identity``, x
   cold-row placement x recency half-life of the access counts, :func:`recency_counts`) and
   choose its admission threshold and pinned share; the last 25% of the tuning queries,
   replayed after them, choose the configuration that reads the fewest blocks
   (:func:`choose_configurations`). A single ``method`` skips this step (default parameters);
4. the chosen configuration is rebuilt on the whole tuning part (a recency half-life keeps the
   length in queries it was chosen with, :func:`transfer_configuration`), its policy chosen
   again on the whole tuning part, and it is replayed over the held-out part
   (:func:`evaluate_choice`);
5. the report gives, per table, the held-out figures of the store as it is (``current``), of the
   naive store, of every candidate method and of the chosen configuration (``result``, with
   ``configuration`` and, for ``auto``, the inner-split score of every configuration);
6. the chosen layout is committed only if it reads fewer held-out blocks than the current layout
   with its current policy (``force`` overrides): a new version, rows copied byte for byte and
   checked, committed in one catalog transaction together with the access counts (recency
   weighted as chosen) and the policy it used.

Long traces (``max_tuning_lookups``, default :data:`DEFAULT_MAX_TUNING_LOOKUPS`): above the
bound, a table's policies and ``auto``'s configuration are chosen on the most recent tuning
queries holding at most that many lookups (:func:`tuning_window`), ``auto`` compares the
methods' default configurations only, and the chosen configuration is built once from the whole
tuning part; the held-out part is still replayed in full, warmed by the whole tuning part, so
the reported figures and the guard of step 6 stay exact. Below the bound nothing changes.
The costs of ``auto`` and of long traces, and why the grid is what it is:
``docs/decisions/relayout.md``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bandstore.errors import InvalidArgumentError, UnknownTableError
from bandstore.kernels.cache import NEVER
from bandstore.options import (
    AUTO_COLDS,
    AUTO_HALF_LIVES,
    AUTO_METHODS,
    RELAYOUT_METHODS,
    RELAYOUT_PINNED_SHARES,
    RELAYOUT_THRESHOLDS,
    RelayoutOptions,
    SimOptions,
)
from bandstore.serve.cache import SLOT_OVERHEAD_BYTES, capacity_rows
from bandstore.serve.store import Store, TableInfo
from bandstore.traces.trace import Trace
from bandstore.tune.provenance import trace_origin
from bandstore.tune.reports import RelayoutReport, TableRelayout

#: Share of the tuning queries (the last ones) that chooses among configurations.
INNER_SHARE = RelayoutOptions.inner_share
#: Above this many tuning lookups (per table), policies and ``auto``'s configuration are chosen
#: on the most recent ``max_tuning_lookups`` lookups of the tuning part (see :func:`relayout`).
DEFAULT_MAX_TUNING_LOOKUPS = RelayoutOptions.max_tuning_lookups
#: Methods whose ``cold`` placement is a parameter.
_COLD_METHODS = ("metis", "hypergraph")


@dataclass(frozen=True)
class LayoutTarget:
    """What is being laid out and for which cache: a table's block geometry (``rows``,
    ``rows_per_block``, ``dim``, ``block_size``, ``row_bytes``, as in its ``TableInfo``) and
    ``cache_bytes``, the DRAM of the table's cache that layouts and policies are chosen for
    (co-access layouts leave out of the partition the rows it holds, :func:`cache_share`)."""

    rows: int
    rows_per_block: int
    dim: int
    block_size: int
    row_bytes: int
    cache_bytes: int

    @classmethod
    def of(cls, info: TableInfo, cache_bytes: int) -> LayoutTarget:
        """The target of a store's table ``info`` with a cache of ``cache_bytes``."""
        return cls(
            rows=info.rows,
            rows_per_block=info.rows_per_block,
            dim=info.dim,
            block_size=info.block_size,
            row_bytes=info.row_bytes,
            cache_bytes=cache_bytes,
        )


@dataclass(frozen=True)
class Scoring:
    """How a layout is scored: exact replays of the store's cache policy (``bandstore.tune.sim``) in
    batches of ``batch_size`` queries, its admission threshold and pinned share chosen among
    ``thresholds`` x ``pinned_shares`` on the tuning queries."""

    batch_size: int
    thresholds: Sequence[int] = RELAYOUT_THRESHOLDS
    pinned_shares: Sequence[float] = RELAYOUT_PINNED_SHARES


def _batch_split(n_queries: int, share: float, batch_size: int) -> int:
    return int(round((1.0 - share) * n_queries / batch_size)) * batch_size


def split_point(trace: Trace, holdout: float, batch_size: int) -> int:
    """The first held-out query, on a batch boundary so that batches match in every replay."""
    if not 0.0 < holdout < 1.0:
        raise InvalidArgumentError(
            f"holdout must be in (0, 1), got {holdout}", argument="holdout", value=holdout
        )
    split = _batch_split(trace.n_queries, holdout, batch_size)
    if split <= 0 or split >= trace.n_queries:
        raise InvalidArgumentError(
            f"a trace of {trace.n_queries} queries cannot be split into tuning and held-out "
            f"parts of whole batches of {batch_size} queries at holdout={holdout}",
            argument="holdout",
            value=holdout,
        )
    return split


def inner_split(tune: Trace, batch_size: int, share: float = INNER_SHARE) -> int:
    """The first query of the part of the tuning trace ``tune`` that chooses the configuration
    (the last ``share`` of its queries), on a batch boundary like :func:`split_point`.

    Raises InvalidArgumentError when either part would hold no whole batch.
    """
    if not 0.0 < share < 1.0:
        raise InvalidArgumentError(
            f"the inner share must be in (0, 1), got {share}", argument="inner_share", value=share
        )
    if batch_size < 1:
        raise InvalidArgumentError(
            f"batch_size must be >= 1, got {batch_size}", argument="batch_size"
        )
    split = _batch_split(tune.n_queries, share, batch_size)
    if split <= 0 or split >= tune.n_queries:
        raise InvalidArgumentError(
            f"a tuning part of {tune.n_queries} queries is too short to choose a configuration "
            f"on its last {share:.0%} in whole batches of {batch_size} queries; use a longer "
            "trace, a smaller batch size or a single method",
            argument="trace",
            value=tune.n_queries,
        )
    return split


def tuning_window(trace: Trace, table: str, split: int, max_lookups: int | None,
                  batch_size: int) -> int:  # fmt: skip
    """The first query of the most recent whole batches of queries ``[0, split)`` of ``table``
    that hold at most ``max_lookups`` lookups (at least one batch); 0 when all of them fit or
    ``max_lookups`` is None. ``split`` must be on a batch boundary; so is the result.

    The window is contiguous in time, not a random subset of queries: a cache replay of a
    contiguous window sees the same reuse distances as the whole stream (up to the window's
    length), while a random share r of the queries would shrink them by r (a fixed cache would
    look 1/r times larger); the most recent queries are also the closest to the held-out ones.
    """
    if max_lookups is None:
        return 0
    _check_max_tuning_lookups(max_lookups)
    off = trace.table(table)[1]
    if int(off[split] - off[0]) <= max_lookups:
        return 0
    # first q with off[split] - off[q] <= max_lookups, rounded up to a batch boundary
    q = int(np.searchsorted(off[: split + 1], off[split] - max_lookups, side="left"))
    q = -(-q // batch_size) * batch_size
    return min(q, split - batch_size)


def _check_max_tuning_lookups(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidArgumentError(
            f"max_tuning_lookups must be None or an integer >= 1, got {value!r}",
            argument="max_tuning_lookups",
            value=value,
        )


def recency_counts(trace: Trace, table: str, rows: int, half_life: float | None) -> np.ndarray:
    """Access counts of ``table`` (int32, length ``rows``), recency weighted.

    half_life None: plain counts (clipped to int32, the store's type). Otherwise each query
    weighs ``2 ** (-age / (half_life * n_queries))``, age = queries after it in ``trace`` (the
    last weighs 1; half_life is a share of the trace's queries), each row gets the sum of the
    weights of the queries that read it (once per read), and the sums are scaled so that they
    add up to the number of lookups (counts keep their unit, so admission thresholds keep
    theirs), then rounded to the nearest integer: rows read only long ago fall to 0.
    """
    if half_life is not None and (
        isinstance(half_life, bool) or not isinstance(half_life, int | float) or half_life <= 0
    ):
        raise InvalidArgumentError(
            f"half_life must be None or > 0, got {half_life!r}",
            argument="half_life",
            value=half_life,
        )
    idx, off = trace.table(table)
    if idx.size and int(idx.max()) >= rows:
        raise InvalidArgumentError(
            f"trace reads id {int(idx.max())} of table {table!r}, which has {rows} rows",
            argument="rows",
            value=rows,
        )
    c: np.ndarray
    if half_life is None:
        c = np.bincount(idx, minlength=rows)
    else:
        from bandstore.tune.layout import query_weights

        weights = query_weights(off, float(half_life))
        assert weights is not None  # (None only for half_life None)
        per_lookup = np.repeat(weights, np.diff(off))
        w = np.bincount(idx, weights=per_lookup, minlength=rows)
        total = float(per_lookup.sum())
        c = np.rint(w * (idx.size / total)) if total > 0 else np.zeros(rows)
    return np.minimum(c, 2**31 - 1).astype(np.int32)


def _counts(trace: Trace, table: str, rows: int) -> np.ndarray:
    return recency_counts(trace, table, rows, None)


def _table_cache_bytes(store: Store, table: str, cache_bytes: Any) -> int:
    if cache_bytes is None:
        return int(store.cache_info()[table]["cache_bytes"])
    if isinstance(cache_bytes, Mapping):
        return int(cache_bytes[table])
    sizes = {n: t.rows * t.dim for n, t in store.tables.items()}
    return int(cache_bytes * sizes[table] / sum(sizes.values()))


def evaluate_layout(
    trace: Trace,
    table: str,
    split: int,
    layout: np.ndarray,
    counts: np.ndarray,
    target: LayoutTarget,
    scoring: Scoring,
    *,
    policy_from: int = 0,
) -> dict[str, Any]:
    """Choose (threshold, pinned share) among ``scoring``'s on queries ``[0, split)``; report
    queries after it.

    ``layout`` and ``counts`` (the access counts admission reads) are those of the table
    ``target`` describes; every replay has its cache size and ``scoring``'s batch size.

    The held-out counters are (whole trace) - (tuning part) of two exact simulations: the
    simulator is deterministic and batches align at ``split``, so the difference is exactly
    the held-out part replayed through a cache warmed by the tuning part.

    policy_from > 0 (a batch boundary, see :func:`tuning_window`): the policy is chosen on
    queries ``[policy_from, split)`` alone (their first quarter only warms the mini caches),
    and the held-out part is replayed once with the chosen policy through a cache warmed by
    the whole tuning part (``simulate(..., warmup_queries=split)``: the same held-out figures
    as the difference above, in one pass); ``tuning_blocks_per_1000_lookups`` is then that of
    the window.
    """
    from bandstore.tune.sim.mrc import simulate

    idx, off = trace.table(table)
    batch_size, rows_per_block, dim = scoring.batch_size, target.rows_per_block, target.dim
    common: dict[str, Any] = dict(
        sizes_bytes=[target.cache_bytes], block_size=target.block_size,
        row_bytes=target.row_bytes, check=False, table=table,
    )  # fmt: skip
    grid = SimOptions(tuple(scoring.thresholds), tuple(scoring.pinned_shares), batch_size)

    def one(threshold: int, share: float) -> SimOptions:
        return SimOptions((threshold,), (share,), batch_size)

    if policy_from:
        if not 0 < policy_from < split or policy_from % batch_size:
            raise InvalidArgumentError(
                f"policy_from must be a batch boundary in (0, {split}), got {policy_from}",
                argument="policy_from",
                value=policy_from,
            )
        w_off = off[policy_from : split + 1] - off[policy_from]
        w_idx = idx[off[policy_from] : off[split]]
        warm = (split - policy_from) // batch_size // 4 * batch_size
        window = simulate(
            w_idx, w_off, layout, rows_per_block, dim, counts, options=grid,
            warmup_queries=warm, **common,
        )  # fmt: skip
        blocks, ti, pi = window.envelope()
        threshold = int(window.thresholds[ti[0]])
        share = float(window.pinned_shares[pi[0]])
        held = simulate(
            idx, off, layout, rows_per_block, dim, counts, options=one(threshold, share),
            warmup_queries=split, **common,
        )  # fmt: skip
        return _figures(
            threshold, share, 1000.0 * float(blocks[0]) / max(1, window.lookups), held.lookups,
            int(held.misses[0, 0, 0]), int(held.blocks_read[0, 0, 0]), target,
        )  # fmt: skip
    tune_idx, tune_off = idx[: off[split]], off[: split + 1]
    tune = simulate(tune_idx, tune_off, layout, rows_per_block, dim, counts, options=grid, **common)
    blocks, ti, pi = tune.envelope()
    threshold, share = int(tune.thresholds[ti[0]]), float(tune.pinned_shares[pi[0]])
    whole = simulate(
        idx, off, layout, rows_per_block, dim, counts, options=one(threshold, share), **common
    )
    t_i, p_i = list(tune.thresholds).index(threshold), list(tune.pinned_shares).index(share)
    held_lookups = whole.lookups - tune.lookups
    held_misses = int(whole.misses[0, 0, 0] - tune.misses[t_i, p_i, 0])
    held_blocks = int(whole.blocks_read[0, 0, 0] - tune.blocks_read[t_i, p_i, 0])
    return _figures(
        threshold, share, 1000.0 * float(blocks[0]) / max(1, tune.lookups), held_lookups,
        held_misses, held_blocks, target,
    )  # fmt: skip


def _figures(threshold: int, share: float, tuning_per_1000: float, held_lookups: int,
             held_misses: int, held_blocks: int,
             target: LayoutTarget) -> dict[str, Any]:  # fmt: skip
    row_bytes, block_size = target.row_bytes, target.block_size
    return {
        "threshold": int(threshold),
        "pinned_share": share,
        "tuning_blocks_per_1000_lookups": tuning_per_1000,
        "heldout_lookups": int(held_lookups),
        "heldout_blocks_read": int(held_blocks),
        "heldout_blocks_per_1000_lookups": 1000.0 * held_blocks / max(1, held_lookups),
        "heldout_hit_ratio": 1.0 - held_misses / held_lookups if held_lookups else 0.0,
        # Each miss is one requested row served from a block read (rows read twice in one
        # batch count twice here; the store's counter counts them once).
        "heldout_useful_per_byte_read": (
            held_misses * row_bytes / (held_blocks * block_size) if held_blocks else 0.0
        ),
    }


def configuration_grid(
    methods: Sequence[str] = AUTO_METHODS,
    half_lives: Sequence[float | None] = AUTO_HALF_LIVES,
    colds: Sequence[str] = AUTO_COLDS,
) -> list[dict[str, Any]]:
    """The layout configurations ``auto`` compares: method x recency half-life (of the counts
    and of the layout build) x cold-row placement (for the methods that have one; None for the
    others). The simplest come first (identity, no recency), and win ties."""
    from bandstore.tune.layout import METHODS as LAYOUT_METHODS

    if not methods or not half_lives or not colds:
        raise InvalidArgumentError(
            "auto needs at least one method, half-life and cold placement", argument="methods"
        )
    for m in methods:
        if m not in LAYOUT_METHODS:
            raise InvalidArgumentError(
                f"unknown layout method {m!r}; known: {list(LAYOUT_METHODS)}",
                argument="methods",
                value=m,
            )
    for c in colds:
        if c not in ("after", "inline"):
            raise InvalidArgumentError(
                f"cold must be 'after' or 'inline', got {c!r}", argument="colds", value=c
            )
    grid = []
    for m in methods:
        for hl in half_lives:
            for cold in colds if m in _COLD_METHODS else (None,):
                grid.append({"method": m, "half_life": hl, "cold": cold})
    return grid


def transfer_configuration(choice: Mapping[str, Any], n_queries: int) -> dict[str, Any]:
    """The configuration ``choice`` (of :func:`choose_configurations`) chose, for a build on
    ``n_queries`` queries: a recency half-life keeps its length in queries, not its share.

    A half-life is a share of the queries it weighs; the inner split chose it on its first
    ``choice["queries"]["fit"]`` queries, and the drift it measured is per query, not per share
    of a log: carried to a longer log as a share, it would weigh older queries more than was
    chosen (4/3 the length from the inner split of a whole tuning part; on a bounded tuning
    window, the whole tuning part over the window's first part).
    """
    cfg = dict(choice["chosen"])
    fit = int(choice["queries"]["fit"])
    if cfg.get("half_life") is not None and n_queries > 0 and fit != n_queries:
        cfg["half_life"] = float(cfg["half_life"]) * fit / n_queries
    return cfg


def _default_configuration(
    method: str, layout_params: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    """The configuration a single method is built with (its DEFAULTS and layout_params)."""
    from bandstore.tune.layout import DEFAULTS

    p = {**DEFAULTS[method], **dict((layout_params or {}).get(method, {}))}
    return {"method": method, "half_life": p.get("half_life"), "cold": p.get("cold")}


def _config_key(n_queries: int, cfg: Mapping[str, Any], hot_fraction: float | None = None) -> tuple:
    return (n_queries, cfg["method"], cfg["half_life"], cfg["cold"], hot_fraction)


def cache_share(cache_bytes: int, dim: int, rows: int, row_bytes: int | None = None) -> float:
    """The share of a table's rows its DRAM cache holds (``hot_fraction`` of the co-access
    layouts built for that cache: the rows the cache holds are left out of the partition).
    ``row_bytes``: the table's encoded row (cache slots hold rows encoded); None: float32."""
    if rows <= 0:
        return 0.0
    if row_bytes is None:
        return capacity_rows(cache_bytes, dim, rows) / rows
    return min(rows, max(0, cache_bytes) // (row_bytes + SLOT_OVERHEAD_BYTES)) / rows


def _build(
    cfg: Mapping[str, Any],
    tune: Trace,
    table: str,
    target: LayoutTarget,
    *,
    seed: int,
    progress: bool,
    layout_params: Mapping[str, Mapping[str, Any]] | None,
    layouts: MutableMapping[tuple, tuple[np.ndarray, float]] | None,
) -> tuple[np.ndarray, float]:
    """(layout, build seconds) of one configuration from the queries of ``tune``. The
    co-access methods get ``hot_fraction`` = the share of the rows ``target``'s cache holds
    (:func:`cache_share`), unless ``layout_params`` sets it."""
    from bandstore.tune.layout import DEFAULTS, build_layout

    m = cfg["method"]
    rows = target.rows
    params = dict((layout_params or {}).get(m, {}))
    if "hot_fraction" in DEFAULTS[m]:
        share = cache_share(target.cache_bytes, target.dim, rows, target.row_bytes)
        params.setdefault("hot_fraction", float(share))
    hf = params.get("hot_fraction") if "hot_fraction" in DEFAULTS[m] else None
    key = _config_key(tune.n_queries, cfg, hf)
    if layouts is not None and key in layouts:
        return layouts[key]
    if "half_life" in DEFAULTS[m]:
        params["half_life"] = cfg["half_life"]
    if cfg["cold"] is not None and m in _COLD_METHODS:
        params["cold"] = cfg["cold"]
    t0 = time.perf_counter()
    if m == "identity":
        layout = np.arange(rows, dtype=np.int64)
    else:
        idx, off = tune.table(table)
        layout = build_layout(
            m, idx, off, rows, target.rows_per_block, seed=seed, progress=progress, **params
        )
    out = (layout, time.perf_counter() - t0)
    if layouts is not None:
        layouts[key] = out
    return out


def evaluate_choice(
    trace: Trace,
    table: str,
    split: int,
    configuration: Mapping[str, Any],
    target: LayoutTarget,
    scoring: Scoring,
    *,
    seed: int = 0,
    layout_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
    layouts: MutableMapping[tuple, tuple[np.ndarray, float]] | None = None,
    evaluations: MutableMapping[tuple, dict[str, Any]] | None = None,
    policy_from: int = 0,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Build ``configuration`` (method, half_life, cold) of the table ``target`` describes
    from queries ``[0, split)`` of ``trace``, with access counts :func:`recency_counts` of the
    same queries; choose its threshold and pinned share on them and replay the queries after
    ``split`` (:func:`evaluate_layout` with ``scoring``). Returns (figures, layout, counts); the
    figures carry ``configuration`` (with the policy) and ``build_seconds``.

    ``layouts``: a memo of built layouts for one trace and table (keyed by the number of
    queries built from and the configuration), shared between calls to save builds.
    ``evaluations``: a memo of figures by content (layout, counts, split, cache bytes) for one
    trace, table and ``scoring``: configurations that build the same layout with the same
    counts (e.g. a refinement that stops at its start) are simulated once.
    policy_from: see :func:`evaluate_layout`.
    """
    tune = trace.query_slice(0, split)
    cfg = {k: configuration[k] for k in ("method", "half_life", "cold")}
    layout, seconds = _build(
        cfg, tune, table, target, seed=seed, progress=progress, layout_params=layout_params,
        layouts=layouts,
    )  # fmt: skip
    counts = recency_counts(tune, table, target.rows, cfg["half_life"])
    digest = None
    if evaluations is not None:
        h = hashlib.blake2b(digest_size=16)
        for a in (np.ascontiguousarray(layout), np.ascontiguousarray(counts)):
            h.update(a.view(np.uint8).data)
        digest = (h.hexdigest(), split, target.cache_bytes, policy_from)
    if evaluations is not None and digest is not None and digest in evaluations:
        res = dict(evaluations[digest])
    else:
        res = evaluate_layout(
            trace, table, split, layout, counts, target, scoring, policy_from=policy_from
        )
        if evaluations is not None and digest is not None:
            evaluations[digest] = dict(res)
    res["build_seconds"] = seconds
    res["configuration"] = {
        **cfg,
        "threshold": res["threshold"],
        "pinned_share": res["pinned_share"],
    }
    return res, layout, counts


def choose_configurations(
    tune: Trace,
    table: str,
    target: LayoutTarget,
    scoring: Scoring,
    *,
    methods: Sequence[str] = AUTO_METHODS,
    half_lives: Sequence[float | None] = AUTO_HALF_LIVES,
    colds: Sequence[str] = AUTO_COLDS,
    inner_share: float = INNER_SHARE,
    seed: int = 0,
    layout_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
    layouts: MutableMapping[tuple, tuple[np.ndarray, float]] | None = None,
    grid: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Choose a layout configuration of ``table`` from the tuning trace ``tune`` alone.

    The tuning queries are split by :func:`inner_split`: for every configuration of
    :func:`configuration_grid`, the first part builds the layout, gives the access counts and
    chooses the threshold and pinned share (among those of ``scoring``); the last part
    (``inner_share`` of the queries), replayed after the first through the exact simulator,
    scores it. Returns ``chosen`` (the configuration that reads the fewest blocks on the last
    part; the earlier in grid order on ties), ``configurations`` (every configuration with its
    policy and score: ``select_*`` figures) and the inner split. progress: one bar over the
    configurations.
    grid: the configurations to compare (dicts with method, half_life, cold) instead of
    :func:`configuration_grid` of methods x half_lives x colds.
    """
    inner = inner_split(tune, scoring.batch_size, inner_share)
    if grid is None:
        grid = configuration_grid(methods, half_lives, colds)
    else:
        grid = [{k: dict(c)[k] for k in ("method", "half_life", "cold")} for c in grid]
        if not grid:
            raise InvalidArgumentError("grid must hold a configuration", argument="grid")
    evaluations: dict[tuple, dict[str, Any]] = {}
    scores = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), desc=f"auto {table}: configurations", leave=False)
    for cfg in grid:
        res, _, _ = evaluate_choice(
            tune, table, inner, cfg, target, scoring, seed=seed, layout_params=layout_params,
            progress=False, layouts=layouts, evaluations=evaluations,
        )  # fmt: skip
        if bar is not None:
            bar.update(1)
        scores.append(
            {
                **res["configuration"],
                "select_blocks_read": res["heldout_blocks_read"],
                "select_blocks_per_1000_lookups": res["heldout_blocks_per_1000_lookups"],
                "select_hit_ratio": res["heldout_hit_ratio"],
                "fit_blocks_per_1000_lookups": res["tuning_blocks_per_1000_lookups"],
                "build_seconds": res["build_seconds"],
            }
        )
    if bar is not None:
        bar.close()
    best = min(range(len(scores)), key=lambda i: (scores[i]["select_blocks_read"], i))
    return {
        "queries": {"fit": inner, "select": tune.n_queries - inner},
        "chosen": dict(grid[best]),
        "configurations": scores,
    }


def relayout(
    store: Store,
    trace: Trace,
    *,
    method: str = "auto",
    holdout: float = 0.2,
    cache_bytes: int | Mapping[str, int] | None = None,
    tables: Sequence[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool | None = None,
    options: RelayoutOptions | None = None,
) -> RelayoutReport:
    """Relayout ``store``'s tables from ``trace``; return the per-table report.

    method: ``auto`` (the configuration chosen on an inner split of the tuning part, see
    :func:`choose_configurations`, over ``options.auto_methods`` x ``half_lives`` x
    ``colds``) or one method with default parameters (and ``options.layout_params``).
    holdout: the share of later queries held out (they only measure).
    cache_bytes: the DRAM the decision is made for: a total (split by table size), per table,
    or None for each table's current cache size. tables: the tables to relayout (default:
    the trace's). force: commit even if not better; dry_run: commit nothing.
    options: batch size, seed, ``auto``'s grid, the bound on tuning lookups, layout
    parameters (:class:`bandstore.options.RelayoutOptions`).

    Per table (:class:`bandstore.tune.reports.TableRelayout`), the report has ``current``,
    ``naive``, ``policy_only`` and ``candidates`` (per method) held-out figures, ``chosen``
    (the method of the chosen configuration), ``configuration`` (method, half_life, cold,
    threshold, pinned_share), ``result`` (its held-out figures), for ``auto`` ``choice`` (the
    inner split and every configuration's score), and ``action`` (``commit`` or ``keep`` with
    a ``reason``). The committed access counts are stored with their origin (this trace's
    tuning part, :meth:`Store.counts_origin`).

    options.max_tuning_lookups: a bound for long traces (None: no bound). When a table's tuning part
    holds more lookups, its most recent whole batches holding at most this many
    (:func:`tuning_window`, reported as ``policy_window``) choose every admission threshold and
    pinned share (:func:`evaluate_layout`'s ``policy_from``) and, for ``auto``, are the tuning
    part the configuration is chosen on (inner split and all); the chosen configuration is
    then built once from the whole tuning part and every held-out figure, and so the guard,
    still replays the whole held-out part through a cache warmed by the whole tuning part.
    ``auto`` then compares one configuration per method (its defaults, with ``layout_params``:
    not the half-life x cold grid, as every build costs a time proportional to the table's rows
    however short the window), builds and replays at full size only ``identity`` (the
    policy-only figure) and the chosen configuration; the other methods are listed in
    ``skipped_candidates`` (their inner-split scores are in ``choice``).
    """
    if method not in RELAYOUT_METHODS:
        raise InvalidArgumentError(
            f"unknown method {method!r}; known: {list(RELAYOUT_METHODS)}",
            argument="method",
            value=method,
        )
    o = options if options is not None else RelayoutOptions()
    if not isinstance(o, RelayoutOptions):
        raise InvalidArgumentError(
            f"options must be a bandstore.options.RelayoutOptions, got {type(o).__name__}",
            argument="options",
        )
    batch_size, max_tuning_lookups = o.batch_size, o.max_tuning_lookups
    auto_methods, half_lives, colds = o.auto_methods, o.half_lives, o.colds
    inner_share, layout_params = o.inner_share, o.layout_params
    names = list(tables) if tables is not None else list(trace.table_names)
    for name in names:
        if name not in store.tables:
            raise UnknownTableError(name, list(store.tables))
        if name not in trace.table_names:
            raise UnknownTableError(name, trace.table_names)
        if trace.num_rows[name] > store.tables[name].rows:
            raise InvalidArgumentError(
                f"trace reads ids up to {trace.num_rows[name] - 1} of table {name!r}, which "
                f"has {store.tables[name].rows} rows",
                argument="trace",
            )
    split = split_point(trace, holdout, batch_size)
    tune = trace.query_slice(0, split)
    scoring = inner_scoring = Scoring(batch_size)
    build: dict[str, Any] = dict(seed=o.seed, layout_params=layout_params, progress=bool(progress))
    _check_max_tuning_lookups(max_tuning_lookups)
    windows = {n: tuning_window(trace, n, split, max_tuning_lookups, batch_size) for n in names}
    if method == "auto":
        configuration_grid(auto_methods, half_lives, colds)  # refuse a bad grid up front
        inner_split(tune, batch_size, inner_share)
        for w in set(windows.values()) - {0}:
            inner_split(tune.query_slice(w, split), batch_size, inner_share)
    candidates = tuple(auto_methods) if method == "auto" else (method,)
    report = RelayoutReport(
        queries={"tuning": split, "heldout": trace.n_queries - split},
        method=method,
        max_tuning_lookups=max_tuning_lookups,
        tables={},
    )
    layouts, counts_by_table, tuning, origins = {}, {}, {}, {}
    for name in names:
        target = LayoutTarget.of(store.tables[name], _table_cache_bytes(store, name, cache_bytes))
        rows = target.rows
        counts = _counts(tune, name, rows)
        # A long tuning part: policies (and auto's configuration) are chosen on its most
        # recent window, the held-out part is still replayed in full after all of it.
        w = windows[name]
        if method == "auto" and w:
            # Only the identity layout (cheap: it gives the policy-only figure) and the chosen
            # configuration are built and replayed at full size.
            run = tuple(m for m in candidates if m == "identity")
        else:
            run = candidates
        steps = ["naive", "current", *run, *(["choice"] if method == "auto" else []), "chosen"]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(steps), desc=f"relayout {name}", leave=False)

        def step(label: str, bar: Any = bar, first: str = steps[0]) -> None:
            """Progress: one step per replay / build of the table (the label shows which)."""
            if bar is not None:
                if label != first:
                    bar.update(1)
                bar.set_postfix_str(label)

        built: dict[tuple, tuple[np.ndarray, float]] = {}
        current_layout = np.asarray(store.table_layout(name)[0])
        current_policy = store.cache_info()[name]
        entry: dict[str, Any] = {"cache_bytes": target.cache_bytes, "candidates": {}}
        if w:
            entry["policy_window"] = {
                "first_query": w,
                "queries": split - w,
                "lookups": int(tune.table(name)[1][split] - tune.table(name)[1][w]),
            }
        identity = np.arange(rows, dtype=np.int64)
        # The naive store: identity layout, plain CLOCK, no admission, nothing pinned.
        step("naive")
        naive_scoring = replace(scoring, thresholds=[NEVER], pinned_shares=[0.0])
        entry["naive"] = evaluate_layout(
            trace, name, split, identity, counts, target, naive_scoring, policy_from=w
        )
        # The store as it is: its layout and its policy (its own counts, if it has any).
        step("current")
        cur_t = min(int(current_policy["threshold"]), NEVER)
        if (
            cur_t >= NEVER
            and float(current_policy["pinned_share"]) == 0.0
            and np.array_equal(current_layout, identity)
        ):
            # The naive store exactly (counts unused: nothing admitted, nothing pinned).
            cur = dict(entry["naive"])
        else:
            cur_scoring = replace(
                scoring, thresholds=[cur_t], pinned_shares=[current_policy["pinned_share"]]
            )
            cur = evaluate_layout(
                trace, name, split, current_layout, store.table_counts(name), target,
                cur_scoring, policy_from=w,
            )  # fmt: skip
        entry["current"] = cur
        # Each candidate method, default parameters, built on the whole tuning part: reported.
        outcomes: dict[tuple, tuple[dict[str, Any], np.ndarray, np.ndarray]] = {}
        for m in run:
            step(m)
            cfg = _default_configuration(m, layout_params)
            out = evaluate_choice(
                trace, name, split, cfg, target, scoring, layouts=built, policy_from=w, **build
            )
            outcomes[_config_key(split, cfg)] = out
            entry["candidates"][m] = out[0]
        if len(run) < len(candidates):
            entry["skipped_candidates"] = [m for m in candidates if m not in run]
        # The identity layout with a tuned policy: what the policy alone is worth.
        if "identity" in entry["candidates"]:
            entry["policy_only"] = entry["candidates"]["identity"]
        else:
            entry["policy_only"] = evaluate_layout(
                trace, name, split, identity, counts, target, scoring, policy_from=w
            )
        if method == "auto":
            # Chosen on the tuning part (or its window) alone, then rebuilt on all of it.
            # (The inner-part layouts are not kept: at most one layout per candidate is held.)
            step("choice")
            # On a window, one configuration per method (its defaults): a build costs a
            # time proportional to the table's rows however short the window is.
            choice = choose_configurations(
                tune.query_slice(w, split) if w else tune, name, target, inner_scoring,
                methods=auto_methods, half_lives=half_lives, colds=colds,
                inner_share=inner_share,
                grid=[_default_configuration(m, layout_params) for m in auto_methods]
                if w else None,
                **build,
            )  # fmt: skip
            if w:
                choice["first_query"] = w
            entry["choice"] = choice
            cfg = transfer_configuration(choice, split)
        else:
            cfg = _default_configuration(method, layout_params)
        step("chosen")
        key = _config_key(split, cfg)
        if key not in outcomes:
            outcomes[key] = evaluate_choice(
                trace, name, split, cfg, target, scoring, layouts=built, policy_from=w, **build
            )
        if bar is not None:
            bar.update(1)
            bar.close()
        chosen, chosen_layout, chosen_counts = outcomes[key]
        del outcomes, built
        entry["chosen"] = cfg["method"]
        entry["configuration"] = chosen["configuration"]
        entry["result"] = chosen
        better = chosen["heldout_blocks_read"] < cur["heldout_blocks_read"]
        entry["improvement_over_current"] = (
            cur["heldout_blocks_read"] / chosen["heldout_blocks_read"]
            if chosen["heldout_blocks_read"]
            else math.inf
        )
        entry["improvement_over_naive"] = (
            entry["naive"]["heldout_blocks_read"] / chosen["heldout_blocks_read"]
            if chosen["heldout_blocks_read"]
            else math.inf
        )
        label = _describe(entry["configuration"])
        if better or force:
            entry["action"] = "commit"
            layouts[name] = chosen_layout
            counts_by_table[name] = chosen_counts
            half_life = entry["configuration"].get("half_life")
            origins[name] = trace_origin(
                "relayout", tune, name,
                "tuning part" + (f", recency half-life {half_life:.3g}" if half_life else ""),
            )  # fmt: skip
            tuning[name] = {
                "cache_bytes": target.cache_bytes,
                "threshold": chosen["threshold"],
                "pinned_share": chosen["pinned_share"],
                "source": f"relayout {method}: {label}",
            }
        else:
            entry["action"] = "keep"
            entry["reason"] = (
                f"{label} reads {chosen['heldout_blocks_read']} blocks on held-out queries, "
                f"not fewer than the current layout's {cur['heldout_blocks_read']}"
            )
        report.tables[name] = TableRelayout(**entry)
    if layouts and not dry_run:
        report.committed_version = store.relayout_tables(
            layouts, counts=counts_by_table, tuning=tuning, note=f"relayout {method}",
            progress=progress, counts_origin=origins,
        )  # fmt: skip
    return report


def _describe(cfg: Mapping[str, Any]) -> str:
    """'hypergraph (half-life 0.25, cold inline)'-style label of a configuration."""
    extra = []
    if cfg.get("half_life") is not None:
        extra.append(f"half-life {cfg['half_life']:.3g}")
    if cfg.get("cold") is not None:
        extra.append(f"cold {cfg['cold']}")
    return cfg["method"] + (f" ({', '.join(extra)})" if extra else "")
