"""The ASGI app of ``bandstore serve`` (Starlette): lookups, predictions, health and metrics.

``create_app(store, options)`` serves one open Store (or any :class:`Backend`); the app owns
it and closes it at shutdown, after the requests in flight are answered. Endpoints:

- ``GET /healthz``: 200 while the process serves. ``GET /readyz``: 200 once every table
  answered a warm-up lookup (kernels compiled), 503 before and while shutting down.
- ``GET /v1/tables``: ``{"tables": [{"name", "rows", "dim", "codec"}, ...]}``.
- ``GET /metrics``: Prometheus text (see :mod:`bandstore.server.metrics`).
- ``POST /v1/lookup``: JSON ``{"tables": {NAME: {"indices": [...], "offsets": [...],
  "per_sample_weights": [...]?, "mode": "sum"?}}}`` -> ``{"tables": {NAME: [[...], ...]}}``
  (EmbeddingBag semantics: offsets are bag starts). Or an ``application/x-npz`` body with
  arrays ``NAME/indices``, ``NAME/offsets``, ``NAME/per_sample_weights`` and ``NAME/mode`` (a
  0-d string array); ``?mode=`` sets the default mode of both forms. With ``Accept:
  application/x-npz`` the answer is an .npz of float32 arrays keyed by table name.
- ``POST /v1/predict`` (with a model): ``{"dense": [[...13 raw values...], ...], "sparse":
  {FEATURE: {"indices": [...], "offsets": [...]}}}`` -> ``{"scores": [...]}``; ids are the
  model's dense row ids of each feature's table. Or an ``application/x-npz`` body in
  KeyedJaggedTensor layout (``dense``, ``values``, ``lengths``, ``keys``: see
  :mod:`bandstore.server.predict`); ``Accept: application/x-npz`` answers an .npz of
  ``scores``. Concurrent predictions share one lookup and one dense forward per batch.

Client mistakes are answered ``{"error": {"type": ..., "message": ...}}`` with 400 (malformed
body, not integers), 404 (unknown table or route), 413 (body over ``max_body_bytes``), 422 (ids
out of range, bad offsets or shapes, bad mode, missing feature) or 429 (queue full, with
``Retry-After``); each request is validated before it joins a batch.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bandstore import Store
from bandstore.errors import (
    BandstoreError,
    IdOutOfRangeError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidOffsetsError,
    InvalidShapeError,
    MalformedRequestError,
    QueueFullError,
    ReadOnlyError,
    RequestTooLargeError,
    ShardUnavailableError,
    StoreClosedError,
    UnknownTableError,
)
from bandstore.serve.overlay import apply_request
from bandstore.server.backend import Backend, StoreBackend, TableSpec
from bandstore.server.batching import Batcher, TableRequest, check_aligned, validate_table
from bandstore.server.metrics import ServerMetrics
from bandstore.server.model import DLRM
from bandstore.server.predict import (
    dumps,
    loads,
    parse_json_predict,
    parse_npz_predict,
    read_npz,
    scores_json,
    scores_npz,
)

NPZ = "application/x-npz"
_NPZ_FIELDS = ("indices", "offsets", "per_sample_weights", "mode")


@dataclass(frozen=True)
class ServerOptions:
    """How the app serves. ``max_batch_size``: bags per merged backend call (0: batching off,
    every request its own call); ``max_wait_ms``: how long a batch waits for more requests;
    ``max_queue``: requests waiting (unbatched: in flight) before 429; ``max_body_bytes``:
    request bodies beyond it are 413; ``model``: a DLRM directory for ``/v1/predict``;
    ``warm_up``: look up every table once at startup (compiles the kernels) before ready;
    ``retry_after_s``: the Retry-After of a 429; ``allow_updates``: serve ``POST /v1/update``
    (row updates, durable when answered; the store must be writable), else it is 403."""

    max_batch_size: int = 1024
    max_wait_ms: float = 1.0
    max_queue: int = 256
    max_body_bytes: int = 64 << 20
    model: str | None = None
    warm_up: bool = True
    retry_after_s: int = 1
    allow_updates: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 0 or self.max_wait_ms < 0 or self.max_queue < 1:
            raise InvalidArgumentError(
                "need max_batch_size >= 0, max_wait_ms >= 0 and max_queue >= 1",
                argument="options",
            )
        if self.max_body_bytes < 1 or self.retry_after_s < 0:
            raise InvalidArgumentError(
                "need max_body_bytes >= 1 and retry_after_s >= 0", argument="options"
            )


def error_status(e: BaseException) -> int:
    """The HTTP status of an error raised while serving a request: 4xx for client mistakes."""
    if isinstance(e, MalformedRequestError | InvalidDtypeError):
        return 400
    if isinstance(e, UnknownTableError):
        return 404
    if isinstance(e, ReadOnlyError):
        return 403
    if isinstance(e, RequestTooLargeError):
        return 413
    if isinstance(e, QueueFullError):
        return 429
    if isinstance(
        e, IdOutOfRangeError | InvalidOffsetsError | InvalidShapeError | InvalidArgumentError
    ):
        return 422
    if isinstance(e, StoreClosedError | ShardUnavailableError):
        return 503
    return 500


def _error(status: int, kind: str, message: str, headers: Mapping[str, str] | None = None):
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


class _State:
    def __init__(self, backend: Backend, options: ServerOptions, model: DLRM | None):
        self.backend = backend
        self.options = options
        self.model = model
        self.specs: dict[str, TableSpec] = backend.tables()
        self.ready = False
        self.batcher = Batcher(
            backend,
            max_batch_size=options.max_batch_size,
            max_wait_ms=options.max_wait_ms,
            max_queue=options.max_queue,
            model=model,
        )
        store = getattr(backend, "store", None)  # (its served version: bandstore_version)
        version = None if store is None else (lambda: store.version)
        self.metrics = ServerMetrics(backend.stats, lambda: self.batcher.depth, version)
        self.batcher.on_batch = self.metrics.batch_bags.observe


def create_app(store: Any, options: ServerOptions | None = None) -> Starlette:
    """The app serving ``store`` (a :class:`bandstore.Store` or a :class:`Backend`), which it
    owns: it is closed when the app shuts down."""
    options = options or ServerOptions()
    backend: Backend = StoreBackend(store) if isinstance(store, Store) else store
    model = None
    if options.model is not None:
        model = DLRM.load(options.model)
        _check_model_tables(model, backend.tables())
    state = _State(backend, options, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.batcher.start()
        try:
            if options.warm_up:
                await anyio.to_thread.run_sync(_warm_up, backend, model)
            state.ready = True
            yield
        finally:
            state.ready = False
            await state.batcher.close()
            backend.close()

    routes = [
        Route("/healthz", _endpoint(state, "healthz", _healthz), methods=["GET"]),
        Route("/readyz", _endpoint(state, "readyz", _readyz), methods=["GET"]),
        Route("/v1/tables", _endpoint(state, "tables", _tables), methods=["GET"]),
        Route("/metrics", _metrics_endpoint(state), methods=["GET"]),
        Route("/v1/lookup", _endpoint(state, "lookup", _lookup), methods=["POST"]),
        Route("/v1/update", _endpoint(state, "update", _update), methods=["POST"]),
    ]
    if model is not None:
        routes.append(Route("/v1/predict", _endpoint(state, "predict", _predict), methods=["POST"]))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return _error(exc.status_code, kind, f"{exc.detail}: {request.method} {request.url.path}")

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.bandstore = state
    return app


def _check_model_tables(model: DLRM, specs: Mapping[str, TableSpec]) -> None:
    c = model.config
    tables = [f.table for f in c.features]
    if len(set(tables)) != len(tables):
        raise InvalidArgumentError(
            "every feature of the model must read its own table", argument="features"
        )
    for f in c.features:
        if f.table not in specs:
            raise UnknownTableError(f.table, list(specs))
        if specs[f.table].dim != c.embedding_dim:
            raise InvalidShapeError(
                f"table {f.table!r} of feature {f.name!r} has dim {specs[f.table].dim}, the "
                f"model's embedding_dim is {c.embedding_dim}",
                argument="embedding_dim",
                shape=(specs[f.table].rows, specs[f.table].dim),
            )


def _warm_up(backend: Backend, model: DLRM | None) -> None:
    warm = getattr(backend, "warm_up", None)
    if warm is not None:
        warm()
    if model is not None:  # compiles the forward kernel before the first request needs it
        c = model.config
        pooled = {f.name: np.zeros((1, c.embedding_dim), np.float32) for f in c.features}
        model.forward(np.zeros((1, c.dense_features), np.float32), pooled)


# ---- endpoint plumbing ---------------------------------------------------------------------
Handler = Callable[[_State, Request], Any]


def _endpoint(state: _State, name: str, handler: Handler) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        reason = None
        try:
            response = await handler(state, request)
        except ClientDisconnect:  # nobody to answer; counted, not logged as a server error
            response = Response(status_code=400)
            reason = "ClientDisconnect"
        except BandstoreError as e:
            status = error_status(e)
            headers = None
            if status == 429:
                headers = {"Retry-After": str(state.options.retry_after_s)}
            if status < 500:
                reason = type(e).__name__
            response = _error(status, type(e).__name__, str(e), headers)
        state.metrics.observe(name, response.status_code, time.perf_counter() - t0, reason)
        return response

    return endpoint


def _metrics_endpoint(state: _State) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return endpoint


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise MalformedRequestError(
                f"Content-Length {declared!r} is not a number", field="Content-Length"
            ) from None
        if n > limit:
            raise RequestTooLargeError(n, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_body(raw: bytes) -> Any:
    return loads(raw)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


# ---- endpoints -----------------------------------------------------------------------------
async def _healthz(state: _State, request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(state: _State, request: Request) -> Response:
    if state.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503)


async def _tables(state: _State, request: Request) -> Response:
    return JSONResponse({"tables": [s.as_dict() for s in state.specs.values()]})


def _spec(state: _State, table: Any) -> TableSpec:
    if not isinstance(table, str) or table not in state.specs:
        raise UnknownTableError(str(table), list(state.specs))
    return state.specs[table]


def _parse_json_lookup(state: _State, raw: bytes, default_mode: str) -> dict[str, TableRequest]:
    body = _json_body(raw)
    if not isinstance(body, dict) or not isinstance(body.get("tables"), dict):
        raise MalformedRequestError(
            'the body must be a JSON object {"tables": {NAME: {"indices": [...], '
            '"offsets": [...]}}}',
            field="tables",
        )
    out: dict[str, TableRequest] = {}
    for name, part in body["tables"].items():
        spec = _spec(state, name)
        if not isinstance(part, dict):
            raise MalformedRequestError(
                f"tables[{name!r}] must be an object with indices and offsets", field=name
            )
        unknown = sorted(set(part) - set(_NPZ_FIELDS))
        if unknown:
            raise MalformedRequestError(
                f"tables[{name!r}] has unknown fields {unknown} (known: {list(_NPZ_FIELDS)})",
                field=name,
            )
        for key in ("indices", "offsets"):
            if key not in part:
                raise MalformedRequestError(f"tables[{name!r}] lacks {key!r}", field=key)
            if not isinstance(part[key], list):
                raise MalformedRequestError(
                    f"tables[{name!r}][{key!r}] must be a list of integers", field=key
                )
        weights = part.get("per_sample_weights")
        if weights is not None and not isinstance(weights, list):
            raise MalformedRequestError(
                f"tables[{name!r}]['per_sample_weights'] must be a list of numbers",
                field="per_sample_weights",
            )
        out[name] = validate_table(
            name, spec, part["indices"], part["offsets"], weights, part.get("mode", default_mode)
        )
    return out


def _parse_npz_lookup(state: _State, raw: bytes, default_mode: str) -> dict[str, TableRequest]:
    arrays = read_npz(raw)
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in arrays.items():
        name, _, field = key.rpartition("/")
        if not name or field not in _NPZ_FIELDS:
            raise MalformedRequestError(
                f"array {key!r}: names must be NAME/FIELD with FIELD in {list(_NPZ_FIELDS)}",
                field=key,
            )
        parts.setdefault(name, {})[field] = arr
    if not parts:
        raise MalformedRequestError("the .npz archive holds no table", field="tables")
    out: dict[str, TableRequest] = {}
    for name, part in parts.items():
        spec = _spec(state, name)
        for key in ("indices", "offsets"):
            if key not in part:
                raise MalformedRequestError(f"the archive lacks {name}/{key}", field=key)
        mode: Any = default_mode
        if "mode" in part:
            m = part["mode"]
            if m.ndim != 0 or m.dtype.kind not in "US":
                raise MalformedRequestError(f"{name}/mode must be a 0-d string array", field="mode")
            mode = str(m[()].decode() if m.dtype.kind == "S" else m[()])  # type: ignore[attr-defined]
        out[name] = validate_table(
            name, spec, part["indices"], part["offsets"], part.get("per_sample_weights"), mode
        )
    return out


async def _lookup(state: _State, request: Request) -> Response:
    raw = await _read_body(request, state.options.max_body_bytes)
    mode = request.query_params.get("mode", "sum")
    ctype = _content_type(request)
    if ctype == NPZ:
        req = _parse_npz_lookup(state, raw, mode)
    elif ctype in ("application/json", ""):
        req = _parse_json_lookup(state, raw, mode)
    else:
        raise MalformedRequestError(
            f"unsupported content type {ctype!r}; send application/json or {NPZ}",
            field="Content-Type",
        )
    if not req:
        raise MalformedRequestError("the request names no table", field="tables")
    if state.backend.aligned_bags:
        check_aligned(req)
    result = await state.batcher.lookup(req)
    if NPZ in request.headers.get("accept", ""):
        buf = io.BytesIO()
        np.savez(buf, **{name: np.ascontiguousarray(result[name]) for name in req})  # type: ignore[arg-type]
        return Response(buf.getvalue(), media_type=NPZ)
    # float64 text of every float32 value: exact, as tolist() was, and written by orjson
    body = dumps({"tables": {name: result[name].astype(np.float64) for name in req}})
    return Response(body, media_type="application/json")


async def _update(state: _State, request: Request) -> Response:
    """``{"tables": {NAME: {"ids": [...], "rows": [[...]]}}}`` -> ``{"seq", "rows"}`` once
    durable; the next lookups serve the new rows."""
    routed = getattr(state.backend, "update", None)
    if routed is not None and state.options.allow_updates:
        # A backend that routes each update to its writer (server.sharded) checks it itself.
        body = _json_body(await _read_body(request, state.options.max_body_bytes))
        return JSONResponse(await anyio.to_thread.run_sync(routed, body))
    store = getattr(state.backend, "store", None)
    if not state.options.allow_updates or store is None:
        raise ReadOnlyError("row updates are off: start the server with --allow-updates")
    if not store.writable:
        raise ReadOnlyError("row updates need a writable store")
    body = _json_body(await _read_body(request, state.options.max_body_bytes))
    result = await anyio.to_thread.run_sync(apply_request, store, body)
    return JSONResponse(result)


async def _predict(state: _State, request: Request) -> Response:
    model = state.model
    assert model is not None
    raw = await _read_body(request, state.options.max_body_bytes)
    ctype = _content_type(request)
    if ctype == NPZ:
        req, dense = parse_npz_predict(model.config, state.specs, raw)
    elif ctype in ("application/json", ""):
        req, dense = parse_json_predict(model.config, state.specs, loads(raw))
    else:
        raise MalformedRequestError(
            f"unsupported content type {ctype!r}; send application/json or {NPZ}",
            field="Content-Type",
        )
    if state.backend.aligned_bags:
        check_aligned(req)
    scores = await state.batcher.predict(req, dense)
    if NPZ in request.headers.get("accept", ""):
        return Response(scores_npz(scores), media_type=NPZ)
    return Response(scores_json(scores), media_type="application/json")
