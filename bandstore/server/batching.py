"""Request validation and dynamic batching for ``bandstore serve``.

Each HTTP request is validated on its own (:func:`validate_table`) before it joins a batch, so
a bad request is answered 4xx and never fails the requests it would have been merged with.
Concurrent requests are merged into one backend call per group (tables concatenated, offsets
rebased) up to ``max_batch_size`` bags or ``max_wait_ms`` after the first one arrived; each
bag is pooled on its own, so every answer is identical to serving its request alone.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

from bandstore.errors import (
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidShapeError,
    MalformedRequestError,
    QueueFullError,
    StoreClosedError,
)
from bandstore.kernels.resident import _checked_bags
from bandstore.serve.store import check_offsets
from bandstore.server.backend import MODES, Backend, TableSpec
from bandstore.server.model import DLRM


@dataclass(frozen=True)
class TableRequest:
    """One table's validated part of a request: int64 ``indices``, int64 ``offsets`` (bag
    starts, EmbeddingBag's form without the last offset), float32 ``weights`` or None."""

    indices: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray | None
    mode: str

    @property
    def bags(self) -> int:
        return int(self.offsets.shape[0])


def _int_array(value: Any, argument: str, table: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise MalformedRequestError(
            f"{argument} for table {table!r} is not an array of integers: {e}", field=argument
        ) from None
    if arr.size == 0 and arr.dtype.kind in "fO":  # [] parses as float64
        return np.empty(arr.shape, dtype=np.int64)
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "u" and arr.dtype.itemsize == 8):
        raise InvalidDtypeError(
            f"{argument} for table {table!r} must be integers, got dtype {arr.dtype}",
            argument=argument,
            dtype=arr.dtype,
        )
    if arr.ndim != 1:
        raise InvalidShapeError(
            f"{argument} for table {table!r} must be 1-D, got shape {arr.shape}",
            argument=argument,
            shape=arr.shape,
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def validate_table(
    table: str,
    spec: TableSpec,
    indices: Any,
    offsets: Any,
    weights: Any = None,
    mode: Any = "sum",
) -> TableRequest:
    """Check one table's part of a request as ``Store.embedding_bag`` would, and normalise it.

    Raises InvalidDtypeError / MalformedRequestError (not integers, not arrays),
    InvalidShapeError, IdOutOfRangeError, InvalidOffsetsError or InvalidArgumentError (mode,
    weights with a mode other than sum). A request of no bags keeps no indices, so that merging
    never hands its ids to a neighbour's last bag.
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise InvalidArgumentError(
            f"mode for table {table!r} must be one of {list(MODES)}, got {mode!r}",
            argument="mode",
            value=mode,
        )
    idx = _int_array(indices, "indices", table)
    off = _int_array(offsets, "offsets", table)
    n = idx.shape[0]
    # Every rule in one kernel pass (the common, valid request); on failure the checks below
    # say which rule failed.
    valid = _checked_bags(idx, off, spec.rows, np.empty(off.shape[0] + 1, dtype=np.int64))
    if not valid:
        check_offsets(off, n, False, table)  # the Store's own check: raises naming the rule
    if not valid and n:
        bad = np.flatnonzero((idx < 0) | (idx >= spec.rows))
        if bad.size:
            pos = int(bad[0])
            raise IdOutOfRangeError(table, pos, int(idx[pos]), spec.rows)
    w = None
    if weights is not None:
        if mode != "sum":
            raise InvalidArgumentError(
                f"per_sample_weights for table {table!r} need mode 'sum', not {mode!r}",
                argument="per_sample_weights",
            )
        try:
            w = np.asarray(weights)
        except (ValueError, TypeError) as e:
            raise MalformedRequestError(
                f"per_sample_weights for table {table!r} are not an array of numbers: {e}",
                field="per_sample_weights",
            ) from None
        if w.dtype.kind not in "fiu" or (w.size == 0 and w.dtype.kind == "O"):
            raise InvalidDtypeError(
                f"per_sample_weights for table {table!r} must be numbers, got dtype {w.dtype}",
                argument="per_sample_weights",
                dtype=w.dtype,
            )
        if w.shape != idx.shape:
            raise InvalidShapeError(
                f"per_sample_weights for table {table!r} must have the shape of indices "
                f"{idx.shape}, got {w.shape}",
                argument="per_sample_weights",
                shape=w.shape,
            )
        w = np.ascontiguousarray(w, dtype=np.float32)
        if not np.isfinite(w).all():
            raise InvalidArgumentError(
                f"per_sample_weights for table {table!r} must be finite",
                argument="per_sample_weights",
            )
    if off.size == 0:
        idx = idx[:0]
        w = None if w is None else w[:0]
    return TableRequest(idx, off, w, mode)


def check_aligned(request: Mapping[str, TableRequest]) -> None:
    """Every table of ``request`` has the same number of bags (one query = one bag each), as
    a recording store needs; InvalidShapeError otherwise."""
    counts = {t: r.bags for t, r in request.items()}
    if len(set(counts.values())) > 1:
        raise InvalidShapeError(
            f"while the server records traffic, every table of a request must have the same "
            f"number of bags (one per query); got {counts}",
            argument="offsets",
            shape=tuple(counts.values()),
        )


def request_bags(request: Mapping[str, TableRequest]) -> int:
    """The size of a request for batching: its largest number of bags in one table."""
    return max((r.bags for r in request.values()), default=0)


# ---- merging -------------------------------------------------------------------------------
def _call_key(part_modes: dict[str, str], aligned: bool) -> tuple | None:
    # A recording backend needs equal bag counts per call: merge only requests of one table
    # set (and modes); other backends take any mix, one mode per table and call.
    return tuple(sorted(part_modes.items())) if aligned else None


def serve_merged(
    backend: Backend, requests: list[Mapping[str, TableRequest]]
) -> list[dict[str, np.ndarray] | BaseException]:
    """Serve ``requests`` with as few backend calls as the modes allow (one, unless two
    requests pool one table differently, or a recording backend sees different table sets),
    merging each table's parts; returns per request its results or its call's exception."""
    out: list[dict[str, np.ndarray] | BaseException] = [{} for _ in requests]
    # calls: (modes of the call, members [(request no, its parts)]); a request's parts go to
    # the first call that pools each of its tables as it does.
    calls: list[tuple[dict[str, str], list[tuple[int, dict[str, TableRequest]]]]] = []
    keyed: dict[tuple, int] = {}
    for i, req in enumerate(requests):
        modes = {table: part.mode for table, part in req.items()}
        key = _call_key(modes, backend.aligned_bags)
        if key is not None:
            c = keyed.get(key)
            if c is None:
                c = keyed[key] = len(calls)
                calls.append((dict(modes), []))
            calls[c][1].append((i, dict(req)))
            continue
        left = dict(req)
        for call_modes, members in calls:
            fits = {t: p for t, p in left.items() if call_modes.get(t, p.mode) == p.mode}
            if fits:
                call_modes.update({t: p.mode for t, p in fits.items()})
                members.append((i, fits))
                left = {t: p for t, p in left.items() if t not in fits}
            if not left:
                break
        if left:
            calls.append(({t: p.mode for t, p in left.items()}, [(i, left)]))
    for call_modes, members in calls:
        merged: dict[str, list[TableRequest]] = {}
        for _, parts in members:
            for table, part in parts.items():
                merged.setdefault(table, []).append(part)
        call = {table: _concat(parts) for table, parts in merged.items()}
        try:
            result = backend.lookup(call, call_modes)
        except BaseException as e:  # noqa: BLE001 - handed to the requests of this call
            for i, _ in members:
                out[i] = e
            continue
        start = dict.fromkeys(call, 0)
        for i, parts in members:
            for table, part in parts.items():
                s = start[table]
                start[table] = s + part.bags
                if not isinstance(out[i], BaseException):
                    out[i][table] = result[table][s : s + part.bags]  # type: ignore[index]
    return out


def serve_batch(
    backend: Backend, model: DLRM | None, items: list[tuple[Mapping[str, TableRequest], Any]]
) -> list[dict[str, np.ndarray] | np.ndarray | BaseException]:
    """Serve a batch of ``(request, dense)`` items: the lookups of all merged
    (:func:`serve_merged`), then ONE dense forward of ``model`` over the samples of every item
    with ``dense`` (float32 (bags, dense_features)), whose scores are split back. Per item its
    lookup results (``dense`` None) or scores, or its exception. The model's forward computes
    every sample on its own, so each answer equals serving its request alone."""
    looked = serve_merged(backend, [req for req, _ in items])
    out: list[dict[str, np.ndarray] | np.ndarray | BaseException] = list(looked)
    todo = [
        i
        for i, (_, dense) in enumerate(items)
        if dense is not None and not isinstance(looked[i], BaseException)
    ]
    if not todo:
        return out
    try:
        if model is None:
            raise InvalidArgumentError("predictions need a model", argument="model")
        feats = model.config.features
        dense = np.concatenate([items[i][1] for i in todo]) if len(todo) > 1 else items[todo[0]][1]
        pooled = {
            f.name: np.concatenate([looked[i][f.table] for i in todo])  # type: ignore[index]
            if len(todo) > 1
            else looked[todo[0]][f.table]  # type: ignore[index]
            for f in feats
        }
        scores = model.forward(dense, pooled)
    except BaseException as e:  # noqa: BLE001 - handed to the predictions of this batch
        for i in todo:
            out[i] = e
        return out
    start = 0
    for i in todo:
        n = items[i][1].shape[0]
        out[i] = scores[start : start + n]
        start += n
    return out


def _concat(parts: list[TableRequest]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if len(parts) == 1:
        p = parts[0]
        return p.indices, p.offsets, p.weights
    base = np.cumsum([0] + [p.indices.shape[0] for p in parts[:-1]])
    idx = np.concatenate([p.indices for p in parts])
    off = np.concatenate([p.offsets + b for p, b in zip(parts, base, strict=True)])
    w = None
    if any(p.weights is not None for p in parts):
        # A weight of 1 changes no bit of a sum (the kernels multiply every row by its weight).
        w = np.concatenate(
            [
                p.weights if p.weights is not None else np.ones(p.indices.shape, np.float32)
                for p in parts
            ]
        )
    return idx, off, w


# ---- the batcher ---------------------------------------------------------------------------
@dataclass
class _Pending:
    request: Mapping[str, TableRequest]
    dense: np.ndarray | None
    bags: int
    future: asyncio.Future


class Batcher:
    """Merges concurrent requests into backend calls and, for predictions, one forward pass
    of ``model`` per batch (:func:`serve_batch`); one batch in flight at a time.

    ``max_batch_size`` bags per batch (0 turns batching off: each request is its own backend
    call, run concurrently in threads); ``max_wait_ms``: how long the first request of a batch
    waits for others; ``max_queue``: requests waiting (or, unbatched, in flight) beyond which
    :meth:`lookup` raises QueueFullError. ``on_batch(bags)`` is called for every batch served.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
        model: DLRM | None = None,
    ):
        if max_batch_size < 0 or max_wait_ms < 0 or max_queue < 1:
            raise InvalidArgumentError(
                "need max_batch_size >= 0, max_wait_ms >= 0 and max_queue >= 1, got "
                f"{max_batch_size}, {max_wait_ms}, {max_queue}",
                argument="batching",
            )
        self.backend = backend
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_bags = 0
        self._in_flight = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (unbatched: requests being served)."""
        return len(self._queue) if self.max_batch_size else self._in_flight

    async def start(self) -> None:
        if self.max_batch_size and self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop taking requests; the waiting ones fail with StoreClosedError."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(StoreClosedError())
        self._queued_bags = 0

    async def lookup(self, request: Mapping[str, TableRequest]) -> dict[str, np.ndarray]:
        """The results of one validated request (table -> float32 (bags, dim))."""
        return await self._submit(request, None)  # type: ignore[return-value]

    async def predict(self, request: Mapping[str, TableRequest], dense: np.ndarray) -> np.ndarray:
        """The model's scores (n,) float32 for one validated request: the pooled features of
        ``request`` (n bags per table, tables of the model's features) and ``dense``, float32
        (n, dense_features) raw features."""
        return await self._submit(request, dense)  # type: ignore[return-value]

    async def _submit(
        self, request: Mapping[str, TableRequest], dense: np.ndarray | None
    ) -> dict[str, np.ndarray] | np.ndarray:
        if self._closed:
            raise StoreClosedError()
        if not self.max_batch_size:
            if self._in_flight >= self.max_queue:
                raise QueueFullError(self._in_flight, self.max_queue)
            self._in_flight += 1
            try:
                if self.on_batch is not None:
                    self.on_batch(request_bags(request))
                (res,) = await anyio.to_thread.run_sync(
                    serve_batch, self.backend, self.model, [(request, dense)]
                )
            finally:
                self._in_flight -= 1
            if isinstance(res, BaseException):
                raise res
            return res
        if len(self._queue) >= self.max_queue:
            raise QueueFullError(len(self._queue), self.max_queue)
        fut = asyncio.get_running_loop().create_future()
        bags = request_bags(request)
        self._queue.append(_Pending(request, dense, bags, fut))
        self._queued_bags += bags
        assert self._wake is not None, "Batcher.start() was not awaited"
        self._wake.set()
        return await fut

    async def _wait(self, timeout: float | None) -> bool:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                await self._wait(None)
            if self.max_wait > 0 and self._queued_bags < self.max_batch_size:
                deadline = loop.time() + self.max_wait
                while self._queued_bags < self.max_batch_size:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or not await self._wait(remaining):
                        break
            batch: list[_Pending] = []
            bags = 0
            while self._queue and (not batch or bags + self._queue[0].bags <= self.max_batch_size):
                p = self._queue.popleft()
                self._queued_bags -= p.bags
                if p.future.done():  # the client went away
                    continue
                batch.append(p)
                bags += p.bags
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(bags)
            try:
                results = await anyio.to_thread.run_sync(
                    serve_batch, self.backend, self.model, [(p.request, p.dense) for p in batch]
                )
            except asyncio.CancelledError:  # closing while serving: fail the batch
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(StoreClosedError())
                raise
            except Exception as e:  # noqa: BLE001 - serve_batch hands errors back; belt and braces
                results = [e] * len(batch)
            for p, res in zip(batch, results, strict=True):
                if p.future.done():
                    continue
                if isinstance(res, BaseException):
                    p.future.set_exception(res)
                else:
                    p.future.set_result(res)
