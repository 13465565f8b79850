"""Hypergraph refinement of a block layout on the real objective, and the fanout kernel.

Objective: fanout = sum over queries (nets) of the number of distinct blocks the query touches,
counted over the active rows only (the hot rows, which the DRAM cache holds, are left out, so it
is the fanout of the rows that miss). In the spirit of Facebook's Social Hash Partitioner, rows
move to the block their queries already touch most; block sizes stay exact because a move is
always a swap: row v goes a -> b and the member u of b whose move b -> a gains most goes back,
committed only when the pair lowers the (weighted) fanout. Sweeps visit rows in a seeded random
order, sequentially, so the result is deterministic, and the objective never increases.

Per net, the count of its pins in each block is kept in a small open-addressing table
(size: next power of two >= 2 * pins), so a move's gain costs one lookup per net of the row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import njit

from bandstore.tune.layout.graph import Nets, transpose_nets

# --------------------------------------------------------------------------- fanout


@njit(nogil=True, cache=True)
def _fanout(indices, offsets, block_of_id, mark, per_query):
    """Distinct blocks per query (rows with block -1 are not counted); mark: int64[n_blocks]
    of -1 (scratch). Writes per_query, returns the sum."""
    total = 0
    for q in range(offsets.shape[0] - 1):
        c = 0
        for j in range(offsets[q], offsets[q + 1]):
            b = block_of_id[indices[j]]
            if b >= 0 and mark[b] != q:
                mark[b] = q
                c += 1
        per_query[q] = c
        total += c
    return total


# --------------------------------------------------------------------------- per-net tables


@njit(nogil=True, cache=True)
def _slot(tkey, a, size, b):
    """Index of key b in the table at [a, a+size), or of the empty slot where it goes."""
    i = ((b * 0x9E3779B1) >> 13) & (size - 1)
    while True:
        k = tkey[a + i]
        if k == b or k == -1:
            return a + i
        i = (i + 1) & (size - 1)


@njit(nogil=True, cache=True)
def _count(tkey, tcnt, toff, e, b):
    a = toff[e]
    s = _slot(tkey, a, toff[e + 1] - a, b)
    return tcnt[s] if tkey[s] == b else 0


@njit(nogil=True, cache=True)
def _rebuild(pins, off, block_of, tkey, tcnt, toff, used, e):
    a = toff[e]
    size = toff[e + 1] - a
    for i in range(a, a + size):
        tkey[i] = -1
        tcnt[i] = 0
    used[e] = 0
    for j in range(off[e], off[e + 1]):
        b = block_of[pins[j]]
        s = _slot(tkey, a, size, b)
        if tkey[s] != b:
            tkey[s] = b
            used[e] += 1
        tcnt[s] += 1


@njit(nogil=True, cache=True)
def _add(pins, off, block_of, tkey, tcnt, toff, used, e, b, delta):
    """count(e, b) += delta. Keys whose count falls to 0 stay until the table is 3/4 full, then
    the table is rebuilt from block_of (which must already reflect the move)."""
    a = toff[e]
    size = toff[e + 1] - a
    s = _slot(tkey, a, size, b)
    if tkey[s] == b:
        tcnt[s] += delta
        return
    if 4 * (used[e] + 1) > 3 * size:
        _rebuild(pins, off, block_of, tkey, tcnt, toff, used, e)
        return
    tkey[s] = b
    tcnt[s] = delta
    used[e] += 1


@njit(nogil=True, cache=True)
def _gain(vx_off, vx_nets, wq, tkey, tcnt, toff, v, a, b):
    """Weighted fanout decrease if v moved from block a to block b (b != a)."""
    g = 0.0
    for j in range(vx_off[v], vx_off[v + 1]):
        e = vx_nets[j]
        if _count(tkey, tcnt, toff, e, a) == 1:
            g += wq[e]
        if _count(tkey, tcnt, toff, e, b) == 0:
            g -= wq[e]
    return g


@njit(nogil=True, cache=True)
def _move(pins, off, vx_off, vx_nets, block_of, tkey, tcnt, toff, used, v, a, b):
    block_of[v] = b
    for j in range(vx_off[v], vx_off[v + 1]):
        e = vx_nets[j]
        _add(pins, off, block_of, tkey, tcnt, toff, used, e, a, -1)
        _add(pins, off, block_of, tkey, tcnt, toff, used, e, b, 1)


@njit(nogil=True, cache=True)
def _init_tables(pins, off, block_of, tkey, tcnt, toff, used):
    for e in range(off.shape[0] - 1):
        _rebuild(pins, off, block_of, tkey, tcnt, toff, used, e)


@njit(nogil=True, cache=True)
def _sweep(
    pins,
    off,
    wq,
    vx_off,
    vx_nets,
    block_of,
    slot_row,
    pos_of,
    rpb,
    tkey,
    tcnt,
    toff,
    used,
    order,
    scan_cap,
    row_cap,
    n_cand,
    min_gain,
    acc,
    touched,
    cand,
):
    """One pass of swap refinement over the rows in `order`. Rows in more than row_cap nets stay
    where they are (a row read by everyone would cost a scan of all its nets per visit and
    per partner check). Returns the total weighted fanout decrease.
    Scratch: acc float64[n_blocks] of zeros, touched int64[n_blocks], cand int64[n_cand]."""
    total = 0.0
    for idx in range(order.shape[0]):
        v = order[idx]
        if vx_off[v + 1] - vx_off[v] > row_cap:
            continue
        a = block_of[v]
        # blocks that v's (not too large) nets already touch, weighted by net weight
        nt = 0
        for j in range(vx_off[v], vx_off[v + 1]):
            e = vx_nets[j]
            if off[e + 1] - off[e] > scan_cap:
                continue
            for s in range(toff[e], toff[e + 1]):
                b = tkey[s]
                if b >= 0 and b != a and tcnt[s] > 0:
                    if acc[b] == 0.0:
                        touched[nt] = b
                        nt += 1
                    acc[b] += wq[e]
        # the n_cand most touched (ties: lower block)
        nc = 0
        for i in range(nt):
            b = touched[i]
            # insertion into the small sorted candidate list
            p = nc
            while p > 0 and (
                acc[cand[p - 1]] < acc[b] or (acc[cand[p - 1]] == acc[b] and cand[p - 1] > b)
            ):
                p -= 1
            if p < n_cand:
                last = nc if nc < n_cand else n_cand - 1
                for r in range(last, p, -1):
                    cand[r] = cand[r - 1]
                cand[p] = b
                if nc < n_cand:
                    nc += 1
        for i in range(nt):
            acc[touched[i]] = 0.0
        for ci in range(nc):
            b = cand[ci]
            gv = _gain(vx_off, vx_nets, wq, tkey, tcnt, toff, v, a, b)
            if gv <= 0.0:
                continue
            _move(pins, off, vx_off, vx_nets, block_of, tkey, tcnt, toff, used, v, a, b)
            best_u = -1
            best_g = -1e300
            for s in range(b * rpb, (b + 1) * rpb):
                u = slot_row[s]
                if u < 0 or u == v or vx_off[u + 1] - vx_off[u] > row_cap:
                    continue
                gu = _gain(vx_off, vx_nets, wq, tkey, tcnt, toff, u, b, a)
                if gu > best_g:
                    best_g = gu
                    best_u = u
            if best_u >= 0 and gv + best_g >= min_gain - 1e-9:
                _move(pins, off, vx_off, vx_nets, block_of, tkey, tcnt, toff, used, best_u, b, a)
                pv = pos_of[v]
                pu = pos_of[best_u]
                slot_row[pv] = best_u
                slot_row[pu] = v
                pos_of[v] = pu
                pos_of[best_u] = pv
                total += gv + best_g
                break
            _move(pins, off, vx_off, vx_nets, block_of, tkey, tcnt, toff, used, v, b, a)
    return total


class RefineResult(NamedTuple):
    block_of: np.ndarray  # int64[n_vertices]
    steps: int  # steps applied (a step is 1/steps_per_sweep of a sweep)
    objective: float  # weighted fanout of nets at the end
    val_objective: float  # weighted fanout of val_nets at the end (inf without val_nets)


def refine_blocks(
    nets: Nets,
    n_vertices: int,
    block_of: np.ndarray,
    rows_per_block: int,
    *,
    iterations: int = 10,
    tol: float = 1e-3,
    scan_cap: int = 64,
    row_cap: int = 512,
    n_cand: int = 2,
    min_gain: float = 1.0,
    seed: int = 0,
    steps_per_sweep: int = 4,
    max_steps: int | None = None,
    val_nets: Nets | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> RefineResult:
    """Swap refinement of block_of (int64[n_vertices], block sizes kept) to lower the weighted
    fanout of nets. Each sweep visits all rows in a seeded random order, in steps_per_sweep
    steps. Stops after `iterations` sweeps (or max_steps steps), or when a sweep gains less than
    tol * current objective. Nets larger than scan_cap still count in gains but are not scanned
    for candidate blocks; rows in more than row_cap nets are not moved.

    With val_nets (validation queries over the same vertices), the state after the step with
    the lowest validation fanout (possibly 0 steps: the input) is returned, so a refinement that
    memorises the tuning queries without helping other queries stops where it stops helping."""
    block_of = np.ascontiguousarray(block_of, dtype=np.int64).copy()
    n = n_vertices
    if n == 0 or len(nets.off) <= 1:
        return RefineResult(block_of, 0, 0.0, np.inf)
    n_blocks = int(block_of.max()) + 1
    wq = nets.w
    vx_off, vx_nets = transpose_nets(nets, n)
    sizes = np.diff(nets.off)
    tsize = np.maximum(4, 1 << np.ceil(np.log2(np.maximum(2 * sizes, 1))).astype(np.int64))
    toff = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(tsize, out=toff[1:])
    tkey = np.full(toff[-1], -1, np.int64)
    tcnt = np.zeros(toff[-1], np.int32)
    used = np.zeros(len(sizes), np.int64)
    _init_tables(nets.pins, nets.off, block_of, tkey, tcnt, toff, used)
    # slots of the active section: block b holds slot_row[b*rpb:(b+1)*rpb] (-1 = no row)
    slot_row = np.full(n_blocks * rows_per_block, -1, np.int64)
    order = np.argsort(block_of, kind="stable")
    first = np.searchsorted(block_of[order], block_of[order], side="left")
    pos_of = np.empty(n, np.int64)
    pos_of[order] = block_of[order] * rows_per_block + (np.arange(n) - first)
    slot_row[pos_of] = np.arange(n, dtype=np.int64)

    objective = float(np.dot(wq, _net_fanout(nets, block_of, n_blocks)))
    best = (np.inf, 0, block_of.copy(), objective)
    if val_nets is not None:
        best = (_weighted_fanout(val_nets, block_of, n_blocks), 0, block_of.copy(), objective)
    rng = np.random.default_rng(seed)
    acc = np.zeros(n_blocks, np.float64)
    touched = np.empty(n_blocks, np.int64)
    cand = np.empty(max(1, n_cand), np.int64)
    spp = max(1, int(steps_per_sweep))
    limit = iterations * spp if max_steps is None else min(max_steps, iterations * spp)
    steps = 0
    for it in range(iterations):
        perm = rng.permutation(n).astype(np.int64)
        sweep_gain = 0.0
        for part in np.array_split(perm, spp):
            if steps >= limit:
                break
            gain = _sweep(
                nets.pins,
                nets.off,
                wq,
                vx_off,
                vx_nets,
                block_of,
                slot_row,
                pos_of,
                rows_per_block,
                tkey,
                tcnt,
                toff,
                used,
                part,
                scan_cap,
                row_cap,
                max(1, n_cand),
                max(float(min_gain), 1e-6),
                acc,
                touched,
                cand,
            )
            steps += 1
            objective -= gain
            sweep_gain += gain
            if val_nets is not None:
                v = _weighted_fanout(val_nets, block_of, n_blocks)
                if v < best[0]:
                    best = (v, steps, block_of.copy(), objective)
        if progress is not None:
            progress(it + 1, iterations, objective)
        if steps >= limit or sweep_gain <= tol * max(objective, 1.0):
            break
    if val_nets is not None:
        return RefineResult(best[2], best[1], best[3], best[0])
    return RefineResult(block_of, steps, objective, np.inf)


def _weighted_fanout(nets: Nets, block_of: np.ndarray, n_blocks: int) -> float:
    return float(np.dot(nets.w, _net_fanout(nets, block_of, n_blocks)))


def _net_fanout(nets: Nets, block_of: np.ndarray, n_blocks: int) -> np.ndarray:
    per = np.empty(len(nets.off) - 1, np.int64)
    _fanout(nets.pins.astype(np.int64), nets.off, block_of, np.full(n_blocks, -1, np.int64), per)
    return per


def add_block_nets(nets: Nets, block_of: np.ndarray, weight: float) -> Nets:
    """nets plus one net per block of block_of (its rows), of the given weight: moving a row
    away from its initial block-mates then costs `weight`, a prior that keeps what the trace
    gives no evidence against (e.g. the id order, when ids were assigned in creation order)."""
    order = np.argsort(block_of, kind="stable").astype(np.int32)
    sizes = np.bincount(block_of)
    keep = sizes >= 2
    bounds = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=bounds[1:])
    mask = np.repeat(keep, sizes)
    pins = np.concatenate([nets.pins, order[mask]])
    off = np.concatenate([nets.off, nets.off[-1] + np.cumsum(sizes[keep])])
    w = np.concatenate([nets.w, np.full(int(keep.sum()), weight)])
    return Nets(pins, off, w)
