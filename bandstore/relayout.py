"""Rebuild block layouts from an access log, prove them on held-out queries, commit atomically.

For each table of the trace:
1. the trace is split by query position: the tuning part (earlier queries) and the held-out part
   (later queries, never used for any decision);
2. candidate layouts are built from the tuning part only (``bandstore.layout.build_layout``),
   next to the layout the store has now;
3. for each candidate, the admission threshold and pinned share are chosen on the tuning part by
   exact simulation of the store's cache policy (``bandstore.sim``), at the table's cache size;
4. each candidate, with its policy, is replayed over the held-out part by the same exact
   simulator, the cache warmed by the tuning part as a serving store's would be;
5. the best candidate is committed only if it reads fewer blocks than the current layout with
   its current policy (``force`` overrides): a new version, rows copied byte for byte and checked,
   committed in one catalog transaction together with the access counts and policy it used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandstore.cache import threshold_to_json
from bandstore.errors import InvalidArgumentError, UnknownTableError
from bandstore.kernels.cache import NEVER
from bandstore.store import Store
from bandstore.trace import Trace

#: Candidate methods of ``auto``.
AUTO_METHODS = ("frequency", "metis", "hypergraph")
METHODS = ("auto", "identity", "random", "frequency", "metis", "hypergraph")
#: Admission thresholds tried on the tuning part (NEVER: no neighbour admission).
DEFAULT_THRESHOLDS: tuple[int, ...] = (0, 1, 2, 3, 5, 8, 16, NEVER)
#: Pinned shares tried on the tuning part.
DEFAULT_PINNED_SHARES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def split_point(trace: Trace, holdout: float, batch_size: int) -> int:
    """The first held-out query, on a batch boundary so that batches match in every replay."""
    if not 0.0 < holdout < 1.0:
        raise InvalidArgumentError(
            f"holdout must be in (0, 1), got {holdout}", argument="holdout", value=holdout
        )
    split = int(round((1.0 - holdout) * trace.n_queries / batch_size)) * batch_size
    if split <= 0 or split >= trace.n_queries:
        raise InvalidArgumentError(
            f"a trace of {trace.n_queries} queries cannot be split into tuning and held-out "
            f"parts of whole batches of {batch_size} queries at holdout={holdout}",
            argument="holdout",
            value=holdout,
        )
    return split


def _counts(trace: Trace, table: str, rows: int) -> np.ndarray:
    c = trace.access_counts(table)
    if c.shape[0] < rows:
        c = np.concatenate([c, np.zeros(rows - c.shape[0], dtype=c.dtype)])
    return np.minimum(c, 2**31 - 1).astype(np.int32)


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
    rows_per_block: int,
    dim: int,
    counts: np.ndarray,
    cache_bytes: int,
    *,
    thresholds: Sequence[int],
    pinned_shares: Sequence[float],
    batch_size: int,
    block_size: int,
    row_bytes: int,
) -> dict[str, Any]:
    """Choose (threshold, pinned share) on queries ``[0, split)``; report queries after it.

    The held-out counters are (whole trace) - (tuning part) of two exact simulations: the
    simulator is deterministic and batches align at ``split``, so the difference is exactly
    the held-out part replayed through a cache warmed by the tuning part.
    """
    from bandstore.sim.mrc import simulate

    idx, off = trace.table(table)
    tune_idx, tune_off = idx[: off[split]], off[: split + 1]
    common = dict(
        sizes_bytes=[cache_bytes],
        batch_size=batch_size,
        block_size=block_size,
        row_bytes=row_bytes,
        check=False,
        table=table,
    )
    tune = simulate(
        tune_idx, tune_off, layout, rows_per_block, dim, counts,
        thresholds=thresholds, pinned_shares=pinned_shares, **common,
    )  # fmt: skip
    blocks, ti, pi = tune.envelope()
    threshold, share = int(tune.thresholds[ti[0]]), float(tune.pinned_shares[pi[0]])
    whole = simulate(
        idx, off, layout, rows_per_block, dim, counts,
        thresholds=[threshold], pinned_shares=[share], **common,
    )  # fmt: skip
    t_i, p_i = list(tune.thresholds).index(threshold), list(tune.pinned_shares).index(share)
    held_lookups = whole.lookups - tune.lookups
    held_misses = int(whole.misses[0, 0, 0] - tune.misses[t_i, p_i, 0])
    held_blocks = int(whole.blocks_read[0, 0, 0] - tune.blocks_read[t_i, p_i, 0])
    return {
        "threshold": threshold_to_json(threshold),
        "pinned_share": share,
        "tuning_blocks_per_1000_lookups": 1000.0 * float(blocks[0]) / max(1, tune.lookups),
        "heldout_lookups": int(held_lookups),
        "heldout_blocks_read": held_blocks,
        "heldout_blocks_per_1000_lookups": 1000.0 * held_blocks / max(1, held_lookups),
        "heldout_hit_ratio": 1.0 - held_misses / held_lookups if held_lookups else 0.0,
        # Each miss is one requested row served from a block read (rows read twice in one
        # batch count twice here; the store's counter counts them once).
        "heldout_useful_per_byte_read": (
            held_misses * row_bytes / (held_blocks * block_size) if held_blocks else 0.0
        ),
    }


def relayout(
    store: Store,
    trace: Trace,
    *,
    method: str = "auto",
    holdout: float = 0.2,
    cache_bytes: int | Mapping[str, int] | None = None,
    force: bool = False,
    dry_run: bool = False,
    tables: Sequence[str] | None = None,
    batch_size: int = 256,
    thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
    pinned_shares: Sequence[float] = DEFAULT_PINNED_SHARES,
    seed: int = 0,
    progress: bool | None = None,
    layout_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Relayout ``store``'s tables from ``trace``; return the per-table report.

    method: ``auto`` (the best of the candidates on held-out queries) or one method.
    cache_bytes: the DRAM the decision is made for: a total (split by table size), per table,
    or None for each table's current cache size.
    """
    from bandstore.layout import build_layout

    if method not in METHODS:
        raise InvalidArgumentError(
            f"unknown method {method!r}; known: {list(METHODS)}", argument="method", value=method
        )
    if batch_size < 1:
        raise InvalidArgumentError(
            f"batch_size must be >= 1, got {batch_size}", argument="batch_size"
        )
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
    candidates = AUTO_METHODS if method == "auto" else (method,)
    report: dict[str, Any] = {
        "queries": {"tuning": split, "heldout": trace.n_queries - split},
        "method": method,
        "tables": {},
    }
    layouts, counts_by_table, tuning = {}, {}, {}
    for name in names:
        info = store.tables[name]
        rows, rpb = info.rows, info.rows_per_block
        counts = _counts(tune, name, rows)
        cb = _table_cache_bytes(store, name, cache_bytes)
        tune_idx, tune_off = tune.table(name)
        evaluate = dict(
            rows_per_block=rpb, dim=info.dim, cache_bytes=cb, thresholds=thresholds,
            pinned_shares=pinned_shares, batch_size=batch_size, block_size=info.block_size,
            row_bytes=info.row_bytes,
        )  # fmt: skip
        current_layout = np.asarray(store.table_layout(name)[0])
        current_policy = store.cache_info()[name]
        entry: dict[str, Any] = {"cache_bytes": cb, "candidates": {}}
        # The store as it is: its layout and its policy (its own counts, if it has any).
        cur_counts = store.table_counts(name)
        cur_threshold = current_policy["threshold"]
        cur = evaluate_layout(
            trace, name, split, current_layout, counts=cur_counts,
            **{**evaluate, "thresholds": [NEVER if cur_threshold is None else int(cur_threshold)],
               "pinned_shares": [current_policy["pinned_share"]]},
        )  # fmt: skip
        entry["current"] = cur
        # The naive store: identity layout, plain CLOCK, no admission, nothing pinned.
        identity = np.arange(rows, dtype=np.int64)
        entry["naive"] = evaluate_layout(
            trace, name, split, identity, counts=counts,
            **{**evaluate, "thresholds": [NEVER], "pinned_shares": [0.0]},
        )  # fmt: skip
        built = {"identity": identity}
        for m in candidates:
            t0 = time.perf_counter()
            if m not in built:
                built[m] = build_layout(
                    m, tune_idx, tune_off, rows, rpb, seed=seed,
                    progress=bool(progress), **dict((layout_params or {}).get(m, {})),
                )  # fmt: skip
            build_seconds = time.perf_counter() - t0
            res = evaluate_layout(trace, name, split, built[m], counts=counts, **evaluate)
            res["build_seconds"] = build_seconds
            entry["candidates"][m] = res
        # The identity layout with a tuned policy: what the policy alone is worth.
        entry["policy_only"] = evaluate_layout(
            trace, name, split, identity, counts=counts, **evaluate
        )
        best = min(
            entry["candidates"],
            key=lambda m: entry["candidates"][m]["heldout_blocks_read"],
        )
        chosen = entry["candidates"][best]
        better = chosen["heldout_blocks_read"] < cur["heldout_blocks_read"]
        entry["chosen"] = best
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
        if better or force:
            entry["action"] = "commit"
            layouts[name] = built[best]
            counts_by_table[name] = counts
            tuning[name] = {
                "cache_bytes": cb,
                "threshold": chosen["threshold"],
                "pinned_share": chosen["pinned_share"],
                "source": f"relayout {best}",
            }
        else:
            entry["action"] = "keep"
            entry["reason"] = (
                f"{best} reads {chosen['heldout_blocks_read']} blocks on held-out queries, "
                f"not fewer than the current layout's {cur['heldout_blocks_read']}"
            )
        report["tables"][name] = entry
    report["committed_version"] = None
    if layouts and not dry_run:
        report["committed_version"] = store.relayout_tables(
            layouts, counts=counts_by_table, tuning=tuning, note=f"relayout {method}",
            progress=progress,
        )  # fmt: skip
    return report
