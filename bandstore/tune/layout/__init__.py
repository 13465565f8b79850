"""Block layouts from access traces, one table at a time.

``build_layout(method, indices, offsets, rows, rows_per_block)`` turns the tuning queries of a
table (EmbeddingBag ``indices``/``offsets``, in trace order) into ``slot_of_id`` (int64, a
permutation of ``0..rows-1``: no holes, ``n_blocks == ceil(rows / rows_per_block)``) so that
rows read together share blocks. Methods:

- ``identity``: slot = id (the naive store); ``random``: seeded permutation;
- ``frequency``: rows by access count, hottest first (ties by id);
- ``metis``: the ``hot_fraction`` hottest rows first by frequency (the DRAM cache holds them;
  a row read by everyone is co-accessed with everything), then METIS on the co-access graph of
  the other rows read by the queries, repaired to blocks of exactly ``rows_per_block`` rows,
  then the rows never read, in id order;
- ``hypergraph``: a layout refined by row swaps that lower the fanout of the rows that miss
  (hot rows are left out of the objective), started from ``init``; with ``validate`` the last
  share of the queries decides how far to refine (and, for ``init="auto"``, from which start).

Parameters (``DEFAULTS``; the measurements behind each default, and the ideas tried and dropped,
are in ``docs/decisions/layout.md``):

- ``hot_fraction`` (0.1): the share of the table the DRAM cache holds, left out of the
  partition (``bandstore.tune.relayout`` sets it to the share of the cache it decides for);
- ``half_life`` (None): recency weight of the queries as a share of the trace (a query that
  far from the end weighs 1/2) for counts, graph and objective;
- ``alpha`` (0.5): edge weights divided by ``(count_u * count_v) ** alpha``;
- ``degree`` (8): nets of more than ``2 * degree + 1`` rows get ``degree`` sampled partners per
  row instead of the full clique;
- ``max_neighbors`` (8): heaviest edges kept per row before union symmetrisation;
- ``group_blocks`` (32): METIS first splits the graph into groups of this many blocks, then
  each group into its blocks;
- ``cold`` ("after"): rows never read go after the others in id order; ``"inline"`` keeps them
  among the others in id order;
- ``init`` ("auto"): start of the refinement; "auto" tries identity, frequency and metis on the
  earlier queries and keeps the one with the lowest fanout on the validation queries;
- ``validate`` (0.2): share of the last queries that decides where the refinement stops;
- ``prior_weight`` (1.0): each initial block is also a net of this weight (relative to the mean
  query weight), so a swap must beat the evidence for the start layout;
- ``iterations`` (10), ``tol``, ``min_gain`` (1), ``n_cand`` (2), ``scan_cap`` (64), ``row_cap``
  (512): refinement effort and cost bounds (see ``refine.refine_blocks``).

``fanout`` is the objective (distinct blocks per query, summed) and ``validate_layout`` checks
the layout contract of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bandstore.errors import (
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidOffsetsError,
    InvalidShapeError,
)
from bandstore.storage.blockfile import check_count as _check_count
from bandstore.storage.blockfile import validate_layout
from bandstore.tune.layout.graph import Nets, build_nets
from bandstore.tune.layout.partition import (
    METIS_DEFAULTS,
    RowClasses,
    assemble,
    classify_rows,
    frequency_layout,
    frequency_order,
    identity_layout,
    metis_blocks,
    random_layout,
)
from bandstore.tune.layout.refine import RefineResult, _fanout, add_block_nets, refine_blocks

__all__ = [
    "DEFAULTS",
    "METHODS",
    "access_counts",
    "build_layout",
    "fanout",
    "query_weights",
    "validate_layout",
]

HYPERGRAPH_DEFAULTS: dict[str, Any] = {
    **METIS_DEFAULTS,
    "init": "auto",  # "metis", "frequency", "identity" (id order), "auto" (best on validation)
    "iterations": 10,  # refinement sweeps (each visits every active row once)
    "tol": 1e-3,  # stop when a sweep lowers the objective by less than this share
    "scan_cap": 64,  # nets larger than this are not scanned for candidate blocks
    "row_cap": 512,  # rows read by more queries than this are not moved (cost bound)
    "n_cand": 2,  # candidate blocks tried per row and sweep
    "min_gain": 1.0,  # a swap must lower the tuning fanout by at least this (>= 1 query)
    "prior_weight": 1.0,  # each initial block is also a net of this weight: stay near init
    "validate": 0.2,  # share of (last) queries that picks how far to refine; 0 = no check
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "identity": {},
    "random": {},
    "frequency": {"half_life": None},
    "metis": dict(METIS_DEFAULTS),
    "hypergraph": HYPERGRAPH_DEFAULTS,
}
METHODS = tuple(DEFAULTS)


def _as_int_array(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise InvalidShapeError(
            f"{name} must be 1-D, got shape {arr.shape}", argument=name, shape=arr.shape
        )
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return np.zeros(0, np.int64)
        raise InvalidDtypeError(
            f"{name} must hold integers, got dtype {arr.dtype}", argument=name, dtype=arr.dtype
        )
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidArgumentError(f"{name} holds values beyond int64", argument=name)
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_trace(indices: Any, offsets: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """indices within [0, rows), offsets a non-decreasing CSR pointer over them."""
    ind = _as_int_array(indices, "indices")
    off = _as_int_array(offsets, "offsets")
    if len(off) == 0:
        raise InvalidOffsetsError("offsets must have n_queries + 1 >= 1 entries")
    if off[0] != 0:
        raise InvalidOffsetsError(f"offsets[0] must be 0, got {off[0]}", position=0)
    if off[-1] != len(ind):
        raise InvalidOffsetsError(
            f"offsets[-1] must equal len(indices) = {len(ind)}, got {off[-1]}",
            position=len(off) - 1,
        )
    bad = np.flatnonzero(np.diff(off) < 0)
    if len(bad):
        raise InvalidOffsetsError(
            f"offsets decrease at position {bad[0] + 1}", position=int(bad[0] + 1)
        )
    if len(ind):
        wrong = np.flatnonzero((ind < 0) | (ind >= rows))
        if len(wrong):
            p = int(wrong[0])
            raise IdOutOfRangeError("indices", p, int(ind[p]), rows)
    return ind, off


def fanout(indices: Any, offsets: Any, slot_of_id: Any, rows_per_block: int) -> int:
    """Sum over queries of the number of distinct blocks the query reads (the I/O a layout
    costs with no cache)."""
    rpb = _check_count(rows_per_block, "rows_per_block", 1)
    slots = _as_int_array(slot_of_id, "slot_of_id")
    ind, off = _check_trace(indices, offsets, len(slots))
    if len(slots) and slots.min() < 0:
        raise InvalidArgumentError("slot_of_id has negative slots", argument="slot_of_id")
    block_of_id = slots // rpb
    n_blocks = int(block_of_id.max()) + 1 if len(slots) else 0
    per = np.empty(len(off) - 1, np.int64)
    return int(_fanout(ind, off, block_of_id, np.full(n_blocks, -1, np.int64), per))


def _make_progress(enabled: bool) -> tuple[Callable[..., None] | None, Callable[[], None]]:
    """A callback(stage, done, total) drawing one tqdm bar per stage, and a closer."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def report(stage: str, done: int, total: int, **postfix: Any) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"layout {stage}", leave=False)
        bar.total = total
        bar.update(done - bar.n)
        if postfix:
            bar.set_postfix(postfix)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return report, close


def build_layout(
    method: str,
    indices: np.ndarray,
    offsets: np.ndarray,
    rows: int,
    rows_per_block: int,
    *,
    seed: int = 0,
    progress: bool = False,
    **params: Any,
) -> np.ndarray:
    """Layout (int64 slot_of_id of length rows, injective, no holes) of one table from its
    tuning queries. params override DEFAULTS[method] (see the module docstring); unknown ones
    are refused. progress=True draws tqdm bars per stage."""
    if method not in DEFAULTS:
        raise InvalidArgumentError(
            f"unknown layout method {method!r}; known: {list(METHODS)}",
            argument="method",
            value=method,
        )
    unknown = sorted(set(params) - set(DEFAULTS[method]))
    if unknown:
        raise InvalidArgumentError(
            f"unknown parameter(s) {unknown} for layout method {method!r}; "
            f"known: {sorted(DEFAULTS[method])}",
            argument=unknown[0],
        )
    p = {**DEFAULTS[method], **params}
    rows = _check_count(rows, "rows", 0)
    rpb = _check_count(rows_per_block, "rows_per_block", 1)
    seed = _check_count(seed, "seed", 0)
    ind, off = _check_trace(indices, offsets, rows)
    _check_params(method, p)

    if method == "identity":
        out = identity_layout(rows)
    elif method == "random":
        out = random_layout(rows, seed)
    else:
        qw = query_weights(off, p["half_life"])
        counts = access_counts(ind, off, rows, qw)
        if method == "frequency":
            out = frequency_layout(counts)
        else:
            report, close = _make_progress(progress)
            try:
                out = _co_access_layout(method, ind, off, counts, qw, rpb, seed, p, report)
            finally:
                close()
    validate_layout(out, rows, rpb)
    return out


def query_weights(offsets: np.ndarray, half_life: float | None) -> np.ndarray | None:
    """Recency weights of the queries (in trace order, the last one weighs 1): a query
    half_life * n_queries before the end weighs 1/2. None: all queries weigh the same."""
    if half_life is None:
        return None
    nq = len(offsets) - 1
    age = (nq - 1 - np.arange(nq, dtype=np.float64)) / max(nq, 1)
    return np.exp2(-age / float(half_life))


def access_counts(
    indices: np.ndarray,
    offsets: np.ndarray,
    rows: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Reads per row (int64), or their sum of query weights (float64) when weights are given."""
    if weights is None:
        return np.bincount(indices, minlength=rows).astype(np.int64)
    per_lookup = np.repeat(weights, np.diff(offsets))
    return np.bincount(indices, weights=per_lookup, minlength=rows)


def _check_params(method: str, p: dict[str, Any]) -> None:
    hl = p.get("half_life")
    if hl is not None and (not isinstance(hl, int | float) or not hl > 0):
        raise InvalidArgumentError(
            f"half_life must be None or > 0, got {hl!r}", argument="half_life", value=hl
        )
    if method not in ("metis", "hypergraph"):
        return
    hf = p["hot_fraction"]
    if not isinstance(hf, int | float) or not 0.0 <= hf <= 1.0:
        raise InvalidArgumentError(
            f"hot_fraction must be in [0, 1], got {hf!r}", argument="hot_fraction", value=hf
        )
    if not isinstance(p["alpha"], int | float) or not 0.0 <= p["alpha"] <= 2.0:
        raise InvalidArgumentError(
            f"alpha must be in [0, 2], got {p['alpha']!r}", argument="alpha", value=p["alpha"]
        )
    for name in ("degree", "max_neighbors", "group_blocks", "ufactor"):
        _check_count(p[name], name, 1)
    if p["cold"] not in ("after", "inline"):
        raise InvalidArgumentError(
            f"cold must be 'after' or 'inline', got {p['cold']!r}", argument="cold", value=p["cold"]
        )
    if method == "hypergraph":
        _check_count(p["row_cap"], "row_cap", 1)
        for name, lo, hi in (
            ("min_gain", 0.0, math.inf),
            ("prior_weight", 0.0, math.inf),
            ("validate", 0.0, 0.9),
        ):
            v = p[name]
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise InvalidArgumentError(
                    f"{name} must be in [{lo}, {hi}], got {v!r}", argument=name, value=v
                )
        if p["init"] not in ("metis", "frequency", "identity", "auto"):
            raise InvalidArgumentError(
                f"init must be 'metis', 'frequency', 'identity' or 'auto', got {p['init']!r}",
                argument="init",
                value=p["init"],
            )
        _check_count(p["iterations"], "iterations", 0)
        _check_count(p["scan_cap"], "scan_cap", 2)
        _check_count(p["n_cand"], "n_cand", 1)
        if not isinstance(p["tol"], int | float) or p["tol"] < 0:
            raise InvalidArgumentError(
                f"tol must be >= 0, got {p['tol']!r}", argument="tol", value=p["tol"]
            )


def _co_access_layout(
    method: str,
    ind: np.ndarray,
    off: np.ndarray,
    counts: np.ndarray,
    qw: np.ndarray | None,
    rpb: int,
    seed: int,
    p: dict[str, Any],
    report: Callable[..., None] | None,
) -> np.ndarray:
    """metis, or hypergraph refinement of its init. With validate > 0, the refinement is first
    run on the earlier queries while the fanout of the last `validate` share is watched; the
    whole trace is then refined for the number of steps that was best there (0: init only)."""
    max_steps = None
    nq = len(off) - 1
    n_val = int(round(float(p.get("validate", 0.0)) * nq))
    if (
        method == "hypergraph"
        and p["init"] == "auto"
        and not (p["iterations"] > 0 and 0 < n_val < nq)
    ):
        p = {**p, "init": "metis"}
    if method == "hypergraph" and p["iterations"] > 0 and 0 < n_val < nq:
        cut = nq - n_val
        fit_ind, fit_off = ind[: off[cut]], off[: cut + 1]
        val_ind, val_off = ind[off[cut] :], off[cut:] - off[cut]
        fit_qw = None if qw is None else qw[:cut]
        fit_counts = access_counts(fit_ind, fit_off, len(counts), fit_qw)
        inits = ("identity", "frequency", "metis") if p["init"] == "auto" else (p["init"],)
        best: tuple[float, str, int | None] = (np.inf, inits[-1], None)
        for init in inits:
            q = {**p, "init": init}
            classes, block_of = _initial_blocks(
                method, fit_ind, fit_off, fit_counts, fit_qw, rpb, seed, q, report
            )
            if len(classes.active) == 0:
                break
            val_nets = build_nets(
                val_ind,
                val_off,
                classes.vertex_of_row,
                len(classes.active),
                None if qw is None else qw[cut:],
            )
            res = _refine(
                fit_ind, fit_off, fit_qw, classes, block_of, rpb, seed, q, report, None, val_nets
            )
            if res.val_objective < best[0]:
                best = (res.val_objective, init, res.steps)
        p = {**p, "init": best[1]}
        max_steps = best[2]
    classes, block_of = _initial_blocks(method, ind, off, counts, qw, rpb, seed, p, report)
    n = len(classes.active)
    if n and method == "hypergraph" and p["iterations"] > 0 and max_steps != 0:
        block_of = _refine(
            ind, off, qw, classes, block_of, rpb, seed, p, report, max_steps, None
        ).block_of
    return assemble(classes, block_of, rpb)


def _initial_blocks(
    method: str,
    ind: np.ndarray,
    off: np.ndarray,
    counts: np.ndarray,
    qw: np.ndarray | None,
    rpb: int,
    seed: int,
    p: dict[str, Any],
    report: Callable[..., None] | None,
) -> tuple[RowClasses, np.ndarray]:
    """Row classes and the blocks of the active rows before refinement."""
    classes = classify_rows(counts, rpb, float(p["hot_fraction"]), p["cold"] == "inline")
    n = len(classes.active)
    if n == 0:
        block_of = np.zeros(0, np.int64)
    elif method == "metis" or p["init"] == "metis":
        block_of, _ = metis_blocks(ind, off, counts, qw, classes, rpb, seed, p, report)
    elif p["init"] == "frequency":
        order = frequency_order(counts[classes.active])
        block_of = np.empty(n, np.int64)
        block_of[order] = np.arange(n, dtype=np.int64) // rpb
    else:
        block_of = np.arange(n, dtype=np.int64) // rpb
    assert n == 0 or math.ceil(n / rpb) == int(block_of.max()) + 1
    return classes, block_of


def _refine(
    ind: np.ndarray,
    off: np.ndarray,
    qw: np.ndarray | None,
    classes: RowClasses,
    block_of: np.ndarray,
    rpb: int,
    seed: int,
    p: dict[str, Any],
    report: Callable[..., None] | None,
    max_steps: int | None,
    val_nets: Nets | None,
) -> RefineResult:
    n = len(classes.active)
    nets = build_nets(ind, off, classes.vertex_of_row, n, qw)
    if float(p["prior_weight"]) > 0 and len(nets.w):
        # relative to the mean query weight, so recency weighting does not change its meaning
        nets = add_block_nets(nets, block_of, float(p["prior_weight"]) * float(nets.w.mean()))
    stage = "refine" if val_nets is None else "refine (validation)"

    def sweep_report(done: int, total: int, objective: float) -> None:
        if report is not None:
            report(stage, done, total, fanout=int(objective))

    return refine_blocks(
        nets,
        n,
        block_of,
        rpb,
        iterations=int(p["iterations"]),
        tol=float(p["tol"]),
        scan_cap=int(p["scan_cap"]),
        row_cap=int(p["row_cap"]),
        n_cand=int(p["n_cand"]),
        seed=seed,
        min_gain=float(p["min_gain"]),
        max_steps=max_steps,
        val_nets=val_nets,
        progress=sweep_report,
    )
