"""The dense forward pass of a DLRM, one sample at a time in a fixed order (numba).

Every output element is summed in one fixed order whatever the batch, so a sample's score does
not depend on which samples it was computed with: the server merges concurrent requests into
one forward pass and still answers each exactly as it would alone (a BLAS matmul does not
promise that: its blocking, and so its rounding, changes with the number of rows). No
fastmath: LLVM may vectorize across a layer's outputs, never reorder one output's sum.

Weights come packed: ``weights`` holds, layer after layer, the (in, out) matrix row-major and
then the out biases; ``shapes`` is (layers, 2) of (in, out), the bottom layers first, then the
top ones; ``n_bottom`` says where the top starts.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: samples computed together: each weight row is loaded once per tile, not once per sample
TILE = 16


@njit(nogil=True, cache=True)
def _layer(x, ts, n_in, weights, at, n_out, relu, out) -> int:
    # out[s, j] = sum_k x[s, k] * W[k, j] (k ascending), + b[j], for the ts samples of the
    # tile; returns the next layer's offset in ``weights``
    for s in range(ts):
        out[s, :n_out] = 0.0
    for k in range(n_in):
        w = weights[at + k * n_out : at + (k + 1) * n_out]
        for s in range(ts):
            xk = x[s, k]
            o = out[s]
            for j in range(n_out):
                o[j] += xk * w[j]
    b = at + n_in * n_out
    for s in range(ts):
        for j in range(n_out):
            v = out[s, j] + weights[b + j]
            if relu and v < 0.0:
                v = np.float32(0.0)
            out[s, j] = v
    return b + n_out


@njit(nogil=True, cache=True)
def _dlrm_forward(dense, log1p, pooled, weights, shapes, n_bottom, width, scores) -> int:
    """Scores (n,) of raw ``dense`` (n, F) and ``pooled`` (n, T, D) float32 rows; ``width``:
    the widest layer. Returns 0, or 1 if the shapes disagree (nothing written then)."""
    n, f = dense.shape
    t, d = pooled.shape[1], pooled.shape[2]
    n_layers = shapes.shape[0]
    if pooled.shape[0] != n or scores.shape[0] != n or n_bottom < 1 or n_bottom >= n_layers:
        return 1
    if shapes[0, 0] != f or shapes[n_bottom - 1, 1] != d:
        return 1
    pairs = (t + 1) * t // 2
    if shapes[n_bottom, 0] != d + pairs or shapes[n_layers - 1, 1] != 1:
        return 1
    w = max(width, d + pairs, f)
    a = np.empty((TILE, w), dtype=np.float32)
    b = np.empty((TILE, w), dtype=np.float32)
    vecs = np.empty((d, t + 1), dtype=np.float32)  # column 0 the bottom output, then features
    acc = np.empty(t + 1, dtype=np.float32)
    for s0 in range(0, n, TILE):
        ts = min(TILE, n - s0)
        for s in range(ts):
            for k in range(f):
                v = dense[s0 + s, k]
                if log1p:
                    v = np.float32(math.log1p(max(v, np.float32(0.0))))
                a[s, k] = v
        at = 0
        for i in range(n_bottom):
            at = _layer(a, ts, shapes[i, 0], weights, at, shapes[i, 1], True, b)
            a, b = b, a
        # the interaction: the bottom output, then the dot of every pair (i > j) of the T + 1
        # vectors, in np.tril_indices order; each dot summed over k ascending
        for s in range(ts):
            for k in range(d):
                vecs[k, 0] = a[s, k]
                for i in range(t):
                    vecs[k, i + 1] = pooled[s0 + s, i, k]
            for k in range(d):
                b[s, k] = a[s, k]
            p = d
            for i in range(1, t + 1):
                for j in range(i):
                    acc[j] = 0.0
                for k in range(d):
                    u = vecs[k, i]
                    for j in range(i):
                        acc[j] += u * vecs[k, j]
                for j in range(i):
                    b[s, p + j] = acc[j]
                p += i
        a, b = b, a
        for i in range(n_bottom, n_layers):
            at = _layer(a, ts, shapes[i, 0], weights, at, shapes[i, 1], i < n_layers - 1, b)
            a, b = b, a
        for s in range(ts):
            scores[s0 + s] = np.float32(1.0 / (1.0 + math.exp(-np.float64(a[s, 0]))))
    return 0
