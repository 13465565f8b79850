"""Several ``resident`` tables of one ``lookup_many`` call served by one kernel call.

A call of many small tables (DLRM: 26 tables, one id per table per sample) spent most of its
time per table, not per row: a job, a task, an output, a kernel dispatch and a counter commit
each. The executor hands the tables a worker serves whole from DRAM (``resident``, one part,
not cut into bag ranges) to a :class:`PooledGroup` instead: their requests concatenated, one
``kernels.multi`` call per codec among them, one output buffer whose per-table views are the
results.

Results and counters are those of the per-table path (the same loops in the same order; every
id a lookup and a hit), committed only once the whole call succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bandstore.kernels import cache as kc
from bandstore.kernels.codec import FLOAT16, FLOAT32, INT8
from bandstore.kernels.multi import AVAILABLE, KERNELS
from bandstore.serve.strategies import ResidentRunner

#: The pooling modes the group kernel serves (sum, mean, max; a plain lookup goes per table).
_MODES = (kc.MODE_SUM, kc.MODE_MEAN, kc.MODE_MAX)


def pool_source(runner: Any) -> tuple[int, int, int] | None:
    """``(address, row stride in bytes, codec)`` of the rows a one-part ``resident`` runner
    holds, when they are laid out as ``kernels.pool`` reads them (float32 (rows, dim), float16
    as uint16 (rows, dim) or bytes, int8 rowwise bytes; or each as stored bytes); else None
    (served per table)."""
    if not AVAILABLE or type(runner) is not ResidentRunner or runner.parts != 1:
        return None
    data = getattr(runner, "data", None)
    info = runner.table.info
    if not isinstance(data, np.ndarray) or data.ndim != 2 or not data.flags.c_contiguous:
        return None
    if data.shape[0] != info.rows or data.shape[0] == 0:
        return None
    dim = info.dim
    if data.dtype == np.float32 and data.shape[1] == dim:
        codec = FLOAT32
    elif data.dtype == np.uint8 and runner.table.codec == FLOAT32 and data.shape[1] >= 4 * dim:
        codec = FLOAT32  # the rows as the block file stores them (serve.strategies.encoded_table)
    elif data.dtype == np.uint16 and data.shape[1] == dim and runner.table.codec == FLOAT16:
        codec = FLOAT16
    elif data.dtype == np.uint8 and runner.table.codec == FLOAT16 and data.shape[1] >= 2 * dim:
        codec = FLOAT16
    elif data.dtype == np.uint8 and runner.table.codec == INT8 and data.shape[1] >= 8 + dim:
        codec = INT8
    else:
        return None
    return int(data.ctypes.data), int(data.strides[0]), codec


class GroupJob:
    """One call's share of a group: the concatenated request, the output and the counts."""

    __slots__ = ("names", "ids", "offsets", "id0", "weights", "weighted", "modes", "pads",
                 "bag0", "out", "out0", "counts", "lookups")  # fmt: skip

    names: list[str]
    ids: np.ndarray
    offsets: np.ndarray
    id0: np.ndarray
    weights: np.ndarray
    weighted: np.ndarray
    modes: np.ndarray
    pads: np.ndarray
    bag0: np.ndarray
    out0: np.ndarray
    lookups: int

    def __init__(self) -> None:
        self.out: np.ndarray | None = None
        self.counts = np.zeros(0, dtype=np.int64)


class PooledGroup:
    """Tables served resident on one worker: ``members`` are ``(name, runner)`` pairs whose
    runners have a :func:`pool_source`; their arrays stay alive with this object."""

    parts = 1
    bag_ranges = False

    def __init__(self, members: Sequence[tuple[str, Any]]):
        self.names = [n for n, _ in members]
        self.runners = [r for _, r in members]
        self.tables = [r.table for r in self.runners]
        src = [pool_source(r) for r in self.runners]
        if any(s is None for s in src):
            raise ValueError("every member of a PooledGroup needs a pool_source")
        self.addr = np.array([s[0] for s in src], dtype=np.int64)  # type: ignore[index]
        self.stride = np.array([s[1] for s in src], dtype=np.int64)  # type: ignore[index]
        self.codec = np.array([s[2] for s in src], dtype=np.int64)  # type: ignore[index]
        self.dims = np.array([t.info.dim for t in self.tables], dtype=np.int64)
        self._dims = [t.info.dim for t in self.tables]
        # One kernel per codec among the members (each compiles only its own codec's loops).
        self._kernels = [KERNELS[c] for c in sorted(set(self.codec.tolist()))]
        # The group's members keep their arrays: the addresses stay valid while it lives.
        self._keep = [r.data for r in self.runners]

    def begin(self, reqs: Sequence[tuple]) -> GroupJob:
        """The job of the members' validated requests ``(t, ids, offsets, weights, mode, pad)``
        (in member order): their ids and offsets concatenated, one output (allocated later)."""
        job = GroupJob()
        ids, offs, n_ids, n_bags, modes, pads, weighted = [], [], [0], [0], [], [], []
        n = b = 0
        any_w = False
        for _, i, o, w, m, p in reqs:
            ids.append(i)
            offs.append(o)
            n += i.shape[0]
            b += o.shape[0] - 1
            n_ids.append(n)
            n_bags.append(b)
            modes.append(m)
            pads.append(p)
            has_w = w.shape[0] > 0
            weighted.append(has_w)
            any_w |= has_w
        job.ids = ids[0] if len(ids) == 1 else np.concatenate(ids)
        job.offsets = offs[0] if len(offs) == 1 else np.concatenate(offs)
        id0 = np.array(n_ids, dtype=np.int64)
        job.id0 = id0
        job.weights = _NO_WEIGHTS
        if any_w:
            job.weights = np.zeros(n, dtype=np.float32)
            for k, r in enumerate(reqs):
                if weighted[k]:
                    job.weights[id0[k] : id0[k + 1]] = r[3]
        job.weighted = np.array(weighted, dtype=np.uint8)
        job.modes = np.array(modes, dtype=np.int64)
        job.pads = np.array(pads, dtype=np.int64)
        job.bag0 = bag0 = np.array(n_bags, dtype=np.int64)
        out0 = np.zeros(len(reqs) + 1, dtype=np.int64)
        np.cumsum(np.diff(bag0) * self.dims, out=out0[1:])
        job.out0 = out0
        job.lookups = n
        job.names = self.names
        return job

    def allocate(self, job: GroupJob) -> None:
        # Not zeroed: the kernel stores every bag (zeroing was a fifth of a bag-of-one call).
        job.out = np.empty(int(job.out0[-1]), dtype=np.float32)

    def run_part(self, job: GroupJob, j: int) -> None:
        if job.out is None:
            self.allocate(job)
        counts = np.zeros(len(self.names), dtype=np.int64)
        for kernel in self._kernels:
            kernel(job.ids, job.offsets, job.id0, job.weights, job.weighted, self.addr,
                   self.stride, self.codec, job.bag0, self.dims, job.modes, job.pads, job.out,
                   job.out0, counts)  # fmt: skip
        job.counts = counts

    def member_lookups(self, job: GroupJob) -> list[int]:
        """The ids of each member's request (for the executor's timing per table)."""
        return np.diff(job.id0).tolist()

    def commit(self, job: GroupJob, extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Add each member's counters (every row reduced: a lookup and a hit) to its table's,
        with ``extra[name]`` (counters + device bytes: the update overlay's rows) if given."""
        for name, t, c in zip(self.names, self.tables, job.counts.tolist(), strict=True):
            more = extra.get(name) if extra else None
            with t.lock:
                t.stats[kc.STAT_LOOKUPS] += c
                t.stats[kc.STAT_HITS] += c
                if more is not None:
                    t.stats += more[: kc.N_STATS]
                    t.device_bytes += int(more[kc.N_STATS])

    def results(self, job: GroupJob) -> dict[str, np.ndarray]:
        """Each member's pooled bags: views of the job's one output buffer."""
        out, out0, bag0 = job.out, job.out0.tolist(), job.bag0.tolist()
        assert out is not None
        return {name: out[out0[k] : out0[k + 1]].reshape(bag0[k + 1] - bag0[k], self._dims[k])
                for k, name in enumerate(self.names)}  # fmt: skip


_NO_WEIGHTS = np.zeros(0, dtype=np.float32)


def groupable(runner: Any, req: tuple) -> bool:
    """Whether a one-part request ``(t, ids, offsets, weights, mode, pad)`` of ``runner`` can
    be served in a group."""
    return req[4] in _MODES and pool_source(runner) is not None
