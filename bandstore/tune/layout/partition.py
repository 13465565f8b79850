"""Partitioners: the identity / random / frequency baselines, and METIS on the co-access graph
followed by a repair to blocks of exactly ``rows_per_block`` rows.

Every co-access layout has three sections, in slot order:
1. hot rows (the ``hot_fraction * rows`` most read, rounded up to whole blocks), hottest first:
   the DRAM cache holds them anyway, and a row read by everyone is co-accessed with everything,
   so they would only blur the partition;
2. the other rows read by the tuning queries ("active"), in the blocks found by the partitioner;
   the one block that is not full comes last;
3. rows never read by the tuning queries ("cold"), in id order (with ``cold="inline"`` they are
   active rows instead, so an id-order start keeps them where they are).
There are no holes: ``n_blocks == ceil(rows / rows_per_block)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pymetis
from numba import njit

from bandstore.tune.layout.graph import Graph, build_nets, coaccess_graph

# --------------------------------------------------------------------------- baselines


def identity_layout(rows: int) -> np.ndarray:
    """slot = id: what a naive store has."""
    return np.arange(rows, dtype=np.int64)


def random_layout(rows: int, seed: int) -> np.ndarray:
    """A seeded random permutation: the layout with no locality at all."""
    return np.random.default_rng(seed).permutation(rows).astype(np.int64)


def frequency_order(counts: np.ndarray) -> np.ndarray:
    """Row ids by access count, hottest first, ties by lower id."""
    return np.lexsort((np.arange(len(counts)), -counts)).astype(np.int64)


def frequency_layout(counts: np.ndarray) -> np.ndarray:
    """Rows sorted by access count so the hot rows share blocks (never-read rows last, id order)."""
    slot_of_id = np.empty(len(counts), np.int64)
    slot_of_id[frequency_order(counts)] = np.arange(len(counts), dtype=np.int64)
    return slot_of_id


# --------------------------------------------------------------------------- row classes


class RowClasses(NamedTuple):
    """Hot rows (hottest first), active rows (ascending id = vertex order) and cold rows."""

    hot: np.ndarray
    active: np.ndarray
    cold: np.ndarray
    vertex_of_row: np.ndarray  # int64[rows], -1 for rows that are not active


def classify_rows(
    counts: np.ndarray,
    rows_per_block: int,
    hot_fraction: float,
    cold_inline: bool = False,
) -> RowClasses:
    """Split rows into hot / active / cold (see the module docstring). cold_inline: rows never
    read are active too (no cold section), so they keep their place in id order."""
    rows = len(counts)
    n_seen = int(np.count_nonzero(counts))
    n_hot = 0
    if hot_fraction > 0:
        n_hot = math.ceil(math.ceil(hot_fraction * rows) / rows_per_block) * rows_per_block
        n_hot = min(n_hot, n_seen)
    hot = frequency_order(counts)[:n_hot]
    is_active = counts > 0
    if cold_inline:
        is_active[:] = True
    is_active[hot] = False
    active = np.flatnonzero(is_active).astype(np.int64)
    cold = np.flatnonzero(~is_active & (counts == 0)).astype(np.int64)
    vertex_of_row = np.full(rows, -1, np.int64)
    vertex_of_row[active] = np.arange(len(active), dtype=np.int64)
    return RowClasses(hot, active, cold, vertex_of_row)


def block_caps(n_vertices: int, rows_per_block: int) -> np.ndarray:
    """Capacities of the ceil(n / rpb) blocks of the active section: full, but the last."""
    k = max(1, math.ceil(n_vertices / rows_per_block))
    caps = np.full(k, rows_per_block, np.int64)
    caps[-1] = n_vertices - (k - 1) * rows_per_block
    return caps


def assemble(classes: RowClasses, block_of_vertex: np.ndarray, rows_per_block: int) -> np.ndarray:
    """slot_of_id from the three sections; block_of_vertex must respect block_caps (the only
    block that is not full is the last one)."""
    rows = len(classes.vertex_of_row)
    slot_of_id = np.empty(rows, np.int64)
    n_hot = len(classes.hot)
    slot_of_id[classes.hot] = np.arange(n_hot, dtype=np.int64)
    n_act = len(classes.active)
    if n_act:
        order = np.argsort(block_of_vertex, kind="stable")
        blocks = block_of_vertex[order]
        first = np.searchsorted(blocks, blocks, side="left")
        rank = np.arange(n_act, dtype=np.int64) - first
        slot_of_id[classes.active[order]] = n_hot + blocks * rows_per_block + rank
    slot_of_id[classes.cold] = n_hot + n_act + np.arange(len(classes.cold), dtype=np.int64)
    return slot_of_id


# --------------------------------------------------------------------------- METIS


def _int_weights(w: np.ndarray) -> np.ndarray:
    """METIS wants positive integer edge weights: the median edge maps to 100."""
    if len(w) == 0:
        return np.zeros(0, np.int64)
    scale = 100.0 / float(np.median(w))
    return np.clip(np.rint(w * scale), 1, 1 << 24).astype(np.int64)


def metis_part(g: Graph, n_parts: int, seed: int, ufactor: int = 30) -> np.ndarray:
    """pymetis k-way partition of g into n_parts (labels int64[g.n])."""
    n = g.n
    if n_parts <= 1 or n == 0:
        return np.zeros(n, np.int64)
    if n_parts >= n:
        return np.arange(n, dtype=np.int64)
    opts = pymetis.Options(seed=int(seed) & 0x7FFFFFFF, ufactor=int(ufactor))
    idx = pymetis.zero_copy_dtype()
    res = pymetis.part_graph(
        int(n_parts),
        pymetis.CSRAdjacency(g.xadj.astype(idx), g.adj.astype(idx)),
        eweights=_int_weights(g.w).astype(idx),
        options=opts,
        recursive=False,
    )
    return np.asarray(res.vertex_part, dtype=np.int64)


@njit(nogil=True, cache=True)
def _group_csr(xadj, adj, w, group, new_id, group_start, count_only, deg, out_x, out_adj, out_w):
    """Induced subgraphs of all groups at once: vertices renumbered so each group is contiguous
    (new_id), edges across groups dropped, neighbours given relative to their group's start."""
    n = xadj.shape[0] - 1
    for u in range(n):
        g = group[u]
        nu = new_id[u]
        c = 0 if count_only else out_x[nu]
        k = 0
        for j in range(xadj[u], xadj[u + 1]):
            v = adj[j]
            if group[v] == g:
                if not count_only:
                    out_adj[c + k] = new_id[v] - group_start[g]
                    out_w[c + k] = w[j]
                k += 1
        if count_only:
            deg[nu] = k


def grouped_metis_part(
    g: Graph,
    rows_per_block: int,
    seed: int,
    *,
    group_blocks: int,
    ufactor: int = 30,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Partition g into about n / rows_per_block parts. When that is more than group_blocks
    parts, first split into ceil(parts / group_blocks) groups, then each group into its share
    of parts: one k-way METIS into n / 16 parts does not coarsen (its coarsening stops at
    30 x parts vertices) and measured worse and slower than groups of 32 blocks.
    Returns (labels, n_parts)."""
    n = g.n
    k = max(1, math.ceil(n / rows_per_block))
    if k <= group_blocks:
        return metis_part(g, k, seed, ufactor), k
    n_groups = math.ceil(k / group_blocks)
    group = metis_part(g, n_groups, seed, ufactor)
    perm = np.argsort(group, kind="stable")
    new_id = np.empty(n, np.int64)
    new_id[perm] = np.arange(n, dtype=np.int64)
    sizes = np.bincount(group, minlength=n_groups)
    starts = np.zeros(n_groups + 1, np.int64)
    np.cumsum(sizes, out=starts[1:])
    deg = np.zeros(n, np.int64)
    _group_csr(g.xadj, g.adj, g.w, group, new_id, starts, True, deg, g.xadj, g.adj, g.w)
    sx = np.zeros(n + 1, np.int64)
    np.cumsum(deg, out=sx[1:])
    s_adj = np.empty(sx[-1], np.int32)
    s_w = np.empty(sx[-1], np.float32)
    _group_csr(g.xadj, g.adj, g.w, group, new_id, starts, False, deg, sx, s_adj, s_w)
    labels_new = np.empty(n, np.int64)
    base = 0
    for gi in range(n_groups):
        a, b = int(starts[gi]), int(starts[gi + 1])
        if b == a:
            continue
        kg = max(1, round((b - a) / rows_per_block))
        e0, e1 = int(sx[a]), int(sx[b])
        sub = Graph(sx[a : b + 1] - e0, s_adj[e0:e1], s_w[e0:e1])
        labels_new[a:b] = base + metis_part(sub, kg, seed + gi + 1, ufactor)
        base += kg
        if progress is not None:
            progress(gi + 1, n_groups)
    return labels_new[new_id], base


# --------------------------------------------------------------------------- repair


@njit(nogil=True, cache=True)
def _repair(xadj, adj, w, part, caps, out_block):
    """Turn part labels (-1 = unassigned; part p must fit in block p) into blocks that respect
    caps exactly. In each over-full part the rows with the weakest ties to the rest of the part
    (sum of edge weights inside it; ties: higher id) are evicted; evicted and unassigned rows,
    strongest total weight first, go to the block with free room they are most tied to, else
    to the next block with free room. Writes out_block."""
    n = part.shape[0]
    k = caps.shape[0]
    tie = np.zeros(n, np.float64)
    wdeg = np.zeros(n, np.float64)
    for u in range(n):
        p = part[u]
        for j in range(xadj[u], xadj[u + 1]):
            wdeg[u] += w[j]
            if p >= 0 and part[adj[j]] == p:
                tie[u] += w[j]
    # bucket rows by part (ascending id inside), then order each bucket by tie, strongest first
    size = np.zeros(k + 1, np.int64)
    for u in range(n):
        size[part[u] + 1] += 1  # bucket 0 = unassigned
    start = np.zeros(k + 2, np.int64)
    for p in range(k + 1):
        start[p + 1] = start[p] + size[p]
    cur = start[:-1].copy()
    members = np.empty(n, np.int64)
    for u in range(n):
        b = part[u] + 1
        members[cur[b]] = u
        cur[b] += 1
    fill = np.zeros(k, np.int64)
    pool = np.empty(n, np.int64)
    n_pool = 0
    for u in members[start[0] : start[1]]:
        pool[n_pool] = u
        n_pool += 1
    for p in range(k):
        seg = members[start[p + 1] : start[p + 2]]
        order = np.argsort(-tie[seg], kind="mergesort")
        for t in range(seg.shape[0]):
            u = seg[order[t]]
            if t < caps[p]:
                out_block[u] = p
                fill[p] += 1
            else:
                out_block[u] = -1
                pool[n_pool] = u
                n_pool += 1
    for t in range(n_pool):
        out_block[pool[t]] = -1
    porder = np.argsort(-wdeg[pool[:n_pool]], kind="mergesort")
    acc = np.zeros(k, np.float64)
    touched = np.empty(k, np.int64)
    ptr = 0
    for t in range(n_pool):
        u = pool[porder[t]]
        nt = 0
        for j in range(xadj[u], xadj[u + 1]):
            b = out_block[adj[j]]
            if b >= 0 and fill[b] < caps[b]:
                if acc[b] == 0.0:
                    touched[nt] = b
                    nt += 1
                acc[b] += w[j]
        best = -1
        best_w = 0.0
        for i in range(nt):
            b = touched[i]
            if acc[b] > best_w or (acc[b] == best_w and b < best):
                best = b
                best_w = acc[b]
            acc[b] = 0.0
        if best < 0:
            while fill[ptr] >= caps[ptr]:
                ptr += 1
            best = ptr
        out_block[u] = best
        fill[best] += 1


def repair(g: Graph, labels: np.ndarray, n_parts: int, rows_per_block: int) -> np.ndarray:
    """Blocks of exactly rows_per_block rows (the last one: the remainder) from METIS parts.

    Parts beyond the number of blocks (smallest first) are dissolved into the pool; the smallest
    remaining part becomes the last block, whose capacity is the remainder."""
    n = g.n
    caps = block_caps(n, rows_per_block)
    k = len(caps)
    sizes = np.bincount(labels, minlength=n_parts)
    by_size = np.lexsort((np.arange(n_parts), -sizes))  # largest first
    keep = by_size[: min(k, n_parts)]
    new_label = np.full(n_parts, -1, np.int64)
    new_label[keep] = np.arange(len(keep), dtype=np.int64)  # smallest kept part -> last block
    part = new_label[labels]
    out = np.empty(n, np.int64)
    _repair(g.xadj, g.adj, g.w, part, caps, out)
    return out


# --------------------------------------------------------------------------- the method


METIS_DEFAULTS: dict[str, object] = {
    "half_life": None,  # recency weighting of queries (share of the trace), None = uniform
    "hot_fraction": 0.1,  # share of the table's rows packed first by frequency, off the graph
    "degree": 8,  # nets larger than 2*degree+1 are sampled to `degree` partners per member
    "max_neighbors": 8,  # edges kept per vertex (heaviest), union-symmetrised
    "alpha": 0.5,  # edge weight / (count_u * count_v) ** alpha: tames rows read by everyone
    "cold": "after",  # rows never read: "after" the others in id order, or "inline" in id order
    "group_blocks": 32,  # above this many blocks, METIS into groups, then each group
    "ufactor": 30,  # METIS imbalance (1 + ufactor/1000); repair makes blocks exact anyway
}


def metis_blocks(
    indices: np.ndarray,
    offsets: np.ndarray,
    counts: np.ndarray,
    query_weights: np.ndarray | None,
    classes: RowClasses,
    rows_per_block: int,
    seed: int,
    params: dict,
    progress: Callable[..., None] | None = None,
) -> tuple[np.ndarray, Graph]:
    """Blocks (respecting block_caps) of the active rows by METIS on their co-access graph."""
    n = len(classes.active)
    nets = build_nets(indices, offsets, classes.vertex_of_row, n, query_weights)
    if progress is not None:
        progress("graph", 0, 1)
    g = coaccess_graph(
        nets,
        n,
        degree=int(params["degree"]),
        max_neighbors=int(params["max_neighbors"]),
        alpha=float(params["alpha"]),
        vertex_counts=counts[classes.active],
        seed=seed,
        progress=None if progress is None else (lambda d, t: progress("graph", d, t)),
    )
    labels, n_parts = grouped_metis_part(
        g,
        rows_per_block,
        seed,
        group_blocks=int(params["group_blocks"]),
        ufactor=int(params["ufactor"]),
        progress=None if progress is None else (lambda d, t: progress("metis", d, t)),
    )
    return repair(g, labels, n_parts, rows_per_block), g
