"""Running the app under uvicorn: what ``bandstore serve`` calls."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import uvicorn

import bandstore
from bandstore.server.app import ServerOptions, create_app


def serve(
    path: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServerOptions | None = None,
    cache_bytes: int | None = None,
    record: str | os.PathLike | None = None,
    sample_rate: float = 0.01,
    workers: int | None = None,
    io: str = "mmap",
    log_level: str = "info",
    follow_versions: bool = True,
) -> int:
    """Open the store at ``path`` and serve it until SIGINT / SIGTERM; returns the exit code.

    ``follow_versions``: serve a version committed meanwhile (``tools/rebuild.py``, ``bandstore
    compact``) by itself, between batches (``ServeOptions.follow_versions``).

    On SIGTERM uvicorn stops accepting connections and answers the requests in flight, then
    the app's shutdown closes the store (and flushes the recorder); exit code 0. 1 if the app
    could not start.
    """
    store = bandstore.open(
        path,
        cache_bytes=cache_bytes,
        record=record,
        sample_rate=sample_rate,
        workers=workers,
        io=io,
        writable=bool(options is not None and options.allow_updates),
        options=bandstore.ServeOptions(follow_versions=follow_versions),
    )
    try:
        app = create_app(store, options or ServerOptions())
    except BaseException:
        store.close()
        raise
    return run_app(app, host=host, port=port, log_level=log_level, on_failure=store.close)


def run_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    on_failure: Any = None,
) -> int:
    """Serve ``app`` under uvicorn until SIGINT / SIGTERM (graceful); 0, or 1 if it did not
    start (then ``on_failure()`` runs: the lifespan that closes the store never ran).

    BLAS runs single-threaded in the server: its concurrency comes from requests, and BLAS
    threads on the model's small matrices fight the request threads and the lookup kernels
    (measured on 2 busy cores: a 32x367 @ 367x64 product took 22 ms with OpenBLAS's threads,
    42 us with one).
    """
    _single_threaded_blas()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        # A client may reuse a keep-alive connection just as the server closes it (a read
        # error on the client); on a busy machine the default 5 s makes that race likely.
        timeout_keep_alive=30,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM (graceful shutdown), then restores the handlers it found
    # and raises the signal again: with the default handlers the process would die by the
    # signal after a clean shutdown. These make that re-raise a no-op, so the exit code is 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        if on_failure is not None:
            on_failure()
        logging.getLogger("bandstore").error("the server did not start")
        return 1
    return 0


def _single_threaded_blas() -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError:  # without it BLAS keeps its default threads
        logging.getLogger("bandstore").warning(
            "threadpoolctl is missing: BLAS keeps its threads (slow on busy machines)"
        )
        return
    threadpool_limits(limits=1, user_api="blas")


def _ignore(signum: int, frame: Any) -> None:
    """Stands in for the default handlers while uvicorn serves (see :func:`serve`)."""


def server_kwargs(args: Any) -> dict[str, Any]:
    """``serve`` keyword arguments from the CLI's parsed arguments."""
    return {
        "host": args.host,
        "port": args.port,
        "options": ServerOptions(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            model=None if args.model is None else str(args.model),
            allow_updates=args.allow_updates,
        ),
        "cache_bytes": args.cache_bytes,
        "record": args.record,
        "sample_rate": 0.01 if args.sample_rate is None else args.sample_rate,
        "workers": args.workers,
        "io": args.io,
        "log_level": args.log_level,
        "follow_versions": not getattr(args, "no_follow_versions", False),
    }
