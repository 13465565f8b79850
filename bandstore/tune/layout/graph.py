"""Co-access structure of a trace for one table: nets (queries as sets of vertices) and the
weighted co-access graph (clique expansion of each net) that METIS partitions.

Why this shape: a 100M-lookup trace has queries whose full clique expansion would be billions of
pairs. Each net of ``m`` vertices emits at most ``m * degree`` pairs (the full clique when
``m <= 2 * degree + 1``, else ``degree`` hash-sampled partners per member), every member's total
weight from one net is ~1 (``1 / (m - 1)`` per clique pair), and the duplicate pairs are summed
per source vertex in chunks of vertex ranges, so the raw pair buffer never exceeds
``chunk_entries`` entries. Each vertex then keeps its ``max_neighbors`` heaviest edges (union
symmetrised), which bounds the edge count at ``n * max_neighbors``.

All kernels are numba ``@njit(nogil=True, cache=True)`` over contiguous arrays, write into
caller-allocated outputs, never raise, and run as plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

_M31 = 0x7FFFFFFF


@njit(nogil=True, cache=True)
def _hash32(x: int) -> int:
    """A 31-bit integer hash (int64 arithmetic that never overflows, same with and without JIT)."""
    x = x & _M31
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M31
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M31
    x = (x >> 16) ^ x
    return x


@njit(nogil=True, cache=True)
def _filter_nets(indices, offsets, vertex_of_row, mark, min_size, out_pins, out_off, out_query):
    """Map each query to the distinct vertices it reads (rows with vertex_of_row < 0 dropped),
    keep nets of at least ``min_size`` vertices. ``mark`` (int64[n_vertices], all -1) is scratch.
    Writes out_pins/out_off/out_query (the query of each net); returns (n_nets, n_pins)."""
    n_q = offsets.shape[0] - 1
    n_nets = 0
    n_pins = 0
    out_off[0] = 0
    for q in range(n_q):
        start = n_pins
        for j in range(offsets[q], offsets[q + 1]):
            v = vertex_of_row[indices[j]]
            if v >= 0 and mark[v] != q:
                mark[v] = q
                out_pins[n_pins] = v
                n_pins += 1
        if n_pins - start < min_size:
            n_pins = start
        else:
            out_query[n_nets] = q
            n_nets += 1
            out_off[n_nets] = n_pins
    return n_nets, n_pins


@njit(nogil=True, cache=True)
def _emit_pair(u, v, w, lo, hi, count_only, deg, cursor, adj_raw, w_raw):
    """One undirected pair (u, v) of weight w: counted, or written in both directions whose
    source lies in [lo, hi)."""
    if count_only:
        deg[u] += 1
        deg[v] += 1
        return
    if lo <= u < hi:
        c = cursor[u - lo]
        adj_raw[c] = v
        w_raw[c] = w
        cursor[u - lo] = c + 1
    if lo <= v < hi:
        c = cursor[v - lo]
        adj_raw[c] = u
        w_raw[c] = w
        cursor[v - lo] = c + 1


@njit(nogil=True, cache=True)
def _emit_pairs(pins, off, net_w, degree, seed, lo, hi, count_only, deg, cursor, adj_raw, w_raw):
    """Clique (or sampled) expansion of every net.

    count_only: add to deg[v] the number of directed pair entries with source v.
    else: write the entries whose source lies in [lo, hi) at adj_raw/w_raw[cursor[src - lo]],
    advancing the cursor. Both directions of every pair are emitted, so the result is symmetric.
    A pair's weight is net_w[e] / (m - 1) in a clique and net_w[e] / (2 * degree) in a sampled
    net: every member's total weight from a net is then ~net_w[e], so big queries do not
    dominate.
    """
    n_nets = off.shape[0] - 1
    for e in range(n_nets):
        a = off[e]
        m = off[e + 1] - a
        if m < 2:
            continue
        if m <= 2 * degree + 1:
            w = net_w[e] / (m - 1)
            for i in range(m):
                u = pins[a + i]
                for j in range(i + 1, m):
                    _emit_pair(u, pins[a + j], w, lo, hi, count_only, deg, cursor, adj_raw, w_raw)
        else:
            # each member picks `degree` partners among the other m-1; it then takes part in
            # ~2*degree pairs of this net, each weighted 1/(2*degree)
            w = net_w[e] * 0.5 / degree
            h0 = _hash32(seed * 1000003 + e)
            for i in range(m):
                u = pins[a + i]
                for t in range(degree):
                    r = _hash32(h0 + i * 7919 + t * 104729) % (m - 1)
                    j = r if r < i else r + 1
                    _emit_pair(u, pins[a + j], w, lo, hi, count_only, deg, cursor, adj_raw, w_raw)


@njit(nogil=True, cache=True)
def _reduce_rows(
    raw_off, adj_raw, w_raw, lo, vscale, alpha, max_neighbors, out_deg, out_adj, out_w, out_pos
):
    """Per source vertex (lo + i): sum duplicate entries, scale each weight w(u, v) by
    (vscale[u] * vscale[v]) ** -alpha, keep the max_neighbors heaviest (ties: lower id), write
    them sorted by neighbour at out_adj/out_w[out_pos:], set out_deg[lo + i].
    Returns the new out_pos."""
    n = raw_off.shape[0] - 1
    pos = out_pos
    longest = 0
    for i in range(n):
        longest = max(longest, raw_off[i + 1] - raw_off[i])
    tmp_adj = np.empty(longest, np.int32)
    tmp_w = np.empty(longest, np.float64)
    for i in range(n):
        a = raw_off[i]
        b = raw_off[i + 1]
        u = lo + i
        if b == a:
            out_deg[u] = 0
            continue
        seg = adj_raw[a:b]
        order = np.argsort(seg, kind="mergesort")
        k = 0
        prev = -1
        for t in range(b - a):
            v = seg[order[t]]
            if v == u:
                continue
            if v != prev:
                tmp_adj[k] = v
                tmp_w[k] = w_raw[a + order[t]]
                k += 1
                prev = v
            else:
                tmp_w[k - 1] += w_raw[a + order[t]]
        if alpha != 0.0:
            for t in range(k):
                tmp_w[t] = tmp_w[t] * (vscale[u] * vscale[tmp_adj[t]]) ** (-alpha)
        if k > max_neighbors:
            # heaviest first, ties by lower id (tmp_adj is ascending, mergesort is stable)
            sel = np.argsort(-tmp_w[:k], kind="mergesort")[:max_neighbors]
            sel.sort()
            for t in range(max_neighbors):
                out_adj[pos + t] = tmp_adj[sel[t]]
                out_w[pos + t] = tmp_w[sel[t]]
            k = max_neighbors
        else:
            for t in range(k):
                out_adj[pos + t] = tmp_adj[t]
                out_w[pos + t] = tmp_w[t]
        out_deg[u] = k
        pos += k
    return pos


@njit(nogil=True, cache=True)
def _transpose(xadj, adj, w, count_only, t_deg, t_cursor, t_adj, t_w):
    """Transpose a CSR (rows may differ from columns in count).

    count_only: t_deg[adj[j]] += 1. Else: write source ids (ascending per target row) and weights
    at t_cursor[target], advancing it."""
    n = xadj.shape[0] - 1
    for u in range(n):
        for j in range(xadj[u], xadj[u + 1]):
            v = adj[j]
            if count_only:
                t_deg[v] += 1
            else:
                c = t_cursor[v]
                t_adj[c] = u
                t_w[c] = w[j]
                t_cursor[v] = c + 1


@njit(nogil=True, cache=True)
def _merge_union(xa, aa, wa, xb, ab, wb, count_only, deg, out_x, out_adj, out_w):
    """Row-wise union of two CSR graphs whose rows are sorted by neighbour (a pair in both has
    the same weight in both: a graph and its transpose). count_only: deg[u] = |row_a(u) U
    row_b(u)|; else fill out_adj/out_w from out_x."""
    n = xa.shape[0] - 1
    for u in range(n):
        i = xa[u]
        ie = xa[u + 1]
        j = xb[u]
        je = xb[u + 1]
        c = 0 if count_only else out_x[u]
        k = 0
        while i < ie or j < je:
            if j >= je or (i < ie and aa[i] < ab[j]):
                v = aa[i]
                wt = wa[i]
                i += 1
            elif i >= ie or ab[j] < aa[i]:
                v = ab[j]
                wt = wb[j]
                j += 1
            else:
                v = aa[i]
                wt = wa[i]
                i += 1
                j += 1
            if not count_only:
                out_adj[c + k] = v
                out_w[c + k] = wt
            k += 1
        if count_only:
            deg[u] = k


class Nets(NamedTuple):
    """Queries restricted to a vertex set: net e has vertices pins[off[e]:off[e+1]] (distinct)
    and weight w[e] (its query's weight)."""

    pins: np.ndarray  # int32
    off: np.ndarray  # int64
    w: np.ndarray  # float64


class Graph(NamedTuple):
    """Symmetric weighted graph in CSR form, rows sorted by neighbour, no self loops."""

    xadj: np.ndarray  # int64[n + 1]
    adj: np.ndarray  # int32[m2]
    w: np.ndarray  # float32[m2]

    @property
    def n(self) -> int:
        return len(self.xadj) - 1


def build_nets(
    indices: np.ndarray,
    offsets: np.ndarray,
    vertex_of_row: np.ndarray,
    n_vertices: int,
    query_weights: np.ndarray | None = None,
    min_size: int = 2,
) -> Nets:
    """Queries as nets over vertices (``vertex_of_row[id] >= 0``), duplicates removed, nets with
    fewer than ``min_size`` vertices dropped (a net of one vertex costs one block wherever it
    is). Net weights: query_weights of their queries (default 1)."""
    pins = np.empty(len(indices), np.int32)
    off = np.empty(len(offsets), np.int64)
    query = np.empty(max(len(offsets) - 1, 0), np.int64)
    mark = np.full(n_vertices, -1, np.int64)
    n_nets, n_pins = _filter_nets(indices, offsets, vertex_of_row, mark, min_size, pins, off, query)
    if query_weights is None:
        w = np.ones(n_nets, np.float64)
    else:
        w = np.ascontiguousarray(query_weights, dtype=np.float64)[query[:n_nets]]
    return Nets(pins[:n_pins].copy(), off[: n_nets + 1].copy(), w)


def transpose_nets(nets: Nets, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex -> nets CSR (vx_off int64[n + 1], vx_nets int32), nets ascending per vertex."""
    deg = np.zeros(n_vertices, np.int64)
    pin_w = np.zeros(len(nets.pins), np.float32)
    _transpose(nets.off, nets.pins, pin_w, True, deg, deg, nets.pins, pin_w)
    vx_off = np.zeros(n_vertices + 1, np.int64)
    np.cumsum(deg, out=vx_off[1:])
    vx_nets = np.empty(vx_off[-1], np.int32)
    _transpose(
        nets.off,
        nets.pins,
        pin_w,
        False,
        deg,
        vx_off[:-1].copy(),
        vx_nets,
        np.empty(len(vx_nets), np.float32),
    )
    return vx_off, vx_nets


def coaccess_graph(
    nets: Nets,
    n_vertices: int,
    *,
    degree: int = 8,
    max_neighbors: int = 32,
    alpha: float = 0.0,
    vertex_counts: np.ndarray | None = None,
    seed: int = 0,
    chunk_entries: int = 1 << 26,
    progress=None,
) -> Graph:
    """The weighted co-access graph of ``nets`` (see the module docstring).

    ``alpha`` > 0 divides each edge weight by ``(count_u * count_v) ** alpha`` (``vertex_counts``
    are the access counts): a row read by everyone is co-accessed with everything, and without
    this its edges would dominate the cut. ``progress`` is an optional callable(n_done, n_total)
    reporting vertices reduced.
    """
    n = n_vertices
    deg = np.zeros(n, np.int64)
    dummy_i = np.zeros(0, np.int32)
    dummy_f = np.zeros(0, np.float32)
    _emit_pairs(nets.pins, nets.off, nets.w, degree, seed, 0, 0, True, deg, deg, dummy_i, dummy_f)
    if vertex_counts is None or alpha == 0.0:
        vscale = np.ones(n, np.float64)
    else:
        vscale = np.maximum(vertex_counts.astype(np.float64), 1.0)

    kept_deg = np.zeros(n, np.int64)
    cap_kept = int(np.minimum(deg, max_neighbors).sum())
    kept_adj = np.empty(cap_kept, np.int32)
    kept_w = np.empty(cap_kept, np.float32)
    pos = 0
    lo = 0
    cum = np.zeros(n + 1, np.int64)
    np.cumsum(deg, out=cum[1:])
    while lo < n:
        # largest hi with cum[hi] - cum[lo] <= chunk_entries (at least one vertex)
        hi = int(np.searchsorted(cum, cum[lo] + chunk_entries, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        raw_off = cum[lo : hi + 1] - cum[lo]
        adj_raw = np.empty(raw_off[-1], np.int32)
        w_raw = np.empty(raw_off[-1], np.float32)
        cursor = raw_off[:-1].copy()
        _emit_pairs(
            nets.pins, nets.off, nets.w, degree, seed, lo, hi, False, deg, cursor, adj_raw, w_raw
        )
        pos = _reduce_rows(
            raw_off,
            adj_raw,
            w_raw,
            lo,
            vscale,
            alpha,
            max_neighbors,
            kept_deg,
            kept_adj,
            kept_w,
            pos,
        )
        del adj_raw, w_raw
        lo = hi
        if progress is not None:
            progress(lo, n)
    kx = np.zeros(n + 1, np.int64)
    np.cumsum(kept_deg, out=kx[1:])
    kept_adj = kept_adj[:pos].copy()  # frees the slack of the upper bound
    kept_w = kept_w[:pos].copy()

    # union symmetrisation: keep (u, v) when either endpoint kept it
    t_deg = np.zeros(n, np.int64)
    _transpose(kx, kept_adj, kept_w, True, t_deg, t_deg, kept_adj, kept_w)
    tx = np.zeros(n + 1, np.int64)
    np.cumsum(t_deg, out=tx[1:])
    t_adj = np.empty(tx[-1], np.int32)
    t_w = np.empty(tx[-1], np.float32)
    _transpose(kx, kept_adj, kept_w, False, t_deg, tx[:-1].copy(), t_adj, t_w)
    u_deg = np.zeros(n, np.int64)
    _merge_union(kx, kept_adj, kept_w, tx, t_adj, t_w, True, u_deg, kx, kept_adj, kept_w)
    ux = np.zeros(n + 1, np.int64)
    np.cumsum(u_deg, out=ux[1:])
    u_adj = np.empty(ux[-1], np.int32)
    u_w = np.empty(ux[-1], np.float32)
    _merge_union(kx, kept_adj, kept_w, tx, t_adj, t_w, False, u_deg, ux, u_adj, u_w)
    return Graph(ux, u_adj, u_w)
