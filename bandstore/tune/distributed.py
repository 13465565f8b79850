"""The rebuild on Ray (``tools/rebuild.py --engine ray``, ``rebuild(engine="ray")``).

What runs as Ray tasks (each a call of the same function the local engine runs, on the same
arrays, so the results are the same bit for bit):

- reading the logs: one task per log (:func:`read_logs`: decoding a recorded directory's frames
  or a ``.npz`` file into queries); the driver merges them in time order
  (:func:`bandstore.tune.logs.merge_logs`, as the local engine does);
- the relayout: one task per table (:func:`relayout_table`: its co-access counting,
  partitioning and the exact simulations that choose and check its layout);
- the cache sizing's simulations: one task per table and pass
  (:func:`bandstore.tune.sim.sizing.simulate_store` through :mod:`bandstore.tune.parallel`).

What stays in the driver: the split of the budget across tables (a knapsack over every table's
curves), the plan (profiles and the assignment of tables to workers), and the commit (block
files written and one catalog transaction: one writer).

Nothing here differs from the local engine in what it computes: every per-table step is a pure
function of its arrays and parameters (seeded METIS and hashing, no shared random state, sums
in a fixed order within one task), and the driver assembles the results in the local engine's
table order. Ray is imported lazily: ``import bandstore`` never imports it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import (
    ClusterUnavailableError,
    InvalidArgumentError,
    MissingDependencyError,
    UnknownTableError,
)
from bandstore.options import RelayoutOptions
from bandstore.traces.trace import Trace
from bandstore.tune.logs import merge_logs, read_log
from bandstore.tune.parallel import current_engine, use_engine
from bandstore.tune.relayout_job import _table_cache_bytes, relayout, split_point
from bandstore.tune.reports import RelayoutReport

#: Seconds to wait for a TCP connection to a cluster's address before calling it unreachable
#: (``ray.init`` itself retries for minutes).
CONNECT_TIMEOUT = 5.0
#: Tries to start a local cluster: on a loaded host the raylet may miss Ray's fixed 30 s
#: registration deadline.
START_ATTEMPTS = 3
#: Arrays at least this large go to the object store once and are passed by reference.
_PUT_BYTES = 1 << 20


def import_ray() -> Any:
    """The ``ray`` module, or MissingDependencyError naming the ``[ray]`` extra."""
    try:
        import ray
    except ImportError as e:
        raise MissingDependencyError("ray", e.name or "ray") from None
    return ray


def _check_reachable(address: str) -> None:
    """ClusterUnavailableError unless a TCP connection to ``address`` (``host:port``, or a
    ``ray://host:port`` client address) opens within :data:`CONNECT_TIMEOUT` seconds."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterUnavailableError(address, "an address is host:port (the head's GCS port)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        raise ClusterUnavailableError(address, e.strerror or str(e)) from None


@contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """A Ray connection for the block; yields the ``ray`` module.

    Already connected (``ray.init`` called by the caller): that connection, left open.
    ``address``: the cluster at ``host:port`` (its head's GCS address), disconnected at the end.
    Neither: a local cluster of ``num_cpus`` CPUs (default: all), started here and stopped at
    the end, also when the block raises (an error, Ctrl-C). Workers import bandstore from where
    this process does. Raises MissingDependencyError without Ray, ClusterUnavailableError when
    ``address`` does not answer.
    """
    auth_mode = os.environ.get(_AUTH_MODE)
    if address is not None and auth_mode is None and _token_available():
        # A cluster started with `ray start` on a host holding a token requires it; a driver
        # connecting to an address sends it only in token mode, read when ray is imported.
        os.environ[_AUTH_MODE] = "token"
    try:
        with _connected(address, num_cpus) as ray:
            yield ray
    finally:
        if auth_mode is None:
            os.environ.pop(_AUTH_MODE, None)


@contextmanager
def _connected(address: str | None, num_cpus: int | None) -> Iterator[Any]:
    """:func:`ray_cluster` once the authentication mode is set."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if num_cpus is not None and (isinstance(num_cpus, bool) or num_cpus < 1):
        raise InvalidArgumentError(f"num_cpus must be >= 1, got {num_cpus!r}", argument="num_cpus")
    if address is not None:
        _check_reachable(address)
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    kwargs: dict[str, Any] = dict(
        logging_level=logging.ERROR,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    for attempt in range(1 if address is not None else START_ATTEMPTS):
        try:
            if address is None:
                ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
            else:
                ray.init(address=address, **kwargs)
            break
        except Exception as e:  # noqa: BLE001 - Ray raises plain Exception on a start timeout
            ray.shutdown()
            if address is not None or attempt == START_ATTEMPTS - 1:
                text = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ClusterUnavailableError(address or "local", text) from None
    try:
        yield ray
    finally:
        ray.shutdown()


_AUTH_MODE = "RAY_AUTH_MODE"


def _token_available() -> bool:
    """Whether this host has a Ray authentication token (Ray's own places for it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


class RayEngine:
    """Runs module-level functions as Ray tasks (one CPU each), results in call order.

    Large numpy arguments are put into the object store once per engine (by identity) and
    passed by reference; a task's error is raised here as the task raised it (not wrapped).
    """

    def __init__(self, ray: Any, address: str | None = None):
        self.ray = ray
        self.address = address or "local"
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_call)
        self._refs: dict[int, tuple[np.ndarray, Any]] = {}

    def _arg(self, a: Any) -> Any:
        if isinstance(a, np.ndarray) and a.nbytes >= _PUT_BYTES:
            hit = self._refs.get(id(a))
            if hit is None or hit[0] is not a:
                hit = self._refs[id(a)] = (a, self.ray.put(a))
            return hit[1]
        return a

    def __call__(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        refs = [self._remote.remote(fn, *[self._arg(a) for a in args]) for args in calls]
        return self.get(refs)

    def get(self, refs: list[Any]) -> list[Any]:
        """The results of ``refs`` in order; the first failure (in order) raised as its
        task raised it, the other tasks cancelled."""
        ray = self.ray
        out = []
        try:
            for r in refs:
                out.append(ray.get(r))
        except ray.exceptions.RayTaskError as e:
            self._cancel(refs)
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except ray.exceptions.RayError as e:  # a worker or object lost, the cluster gone
            self._cancel(refs)
            text = str(e).strip().splitlines()
            raise ClusterUnavailableError(
                self.address, f"{type(e).__name__}: {text[0] if text else ''}"
            ) from None
        except BaseException:
            self._cancel(refs)
            raise
        return out

    def _cancel(self, refs: list[Any]) -> None:
        for r in refs:
            try:
                self.ray.cancel(r, force=True)
            except Exception:  # noqa: BLE001 - finished or gone: nothing to cancel
                pass

    def close(self) -> None:
        """Drop the object store references this engine holds."""
        self._refs.clear()


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """A task's body: ``fn(*args)`` in a worker."""
    return fn(*args)


# --------------------------------------------------------------------------- logs


def _read_log_arrays(path: str) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]],
                                         dict[str, int], int]:  # fmt: skip
    """A task: :func:`bandstore.tune.logs.read_log` as plain arrays (start, tables, num_rows,
    n_queries)."""
    start, t = read_log(path)
    return start, {n: t.table(n) for n in t.table_names}, t.num_rows, t.n_queries


def read_logs(
    engine: RayEngine, paths: Sequence[str | os.PathLike[str]], num_rows: Mapping[str, int]
) -> Trace:
    """:func:`bandstore.tune.logs.load_logs` with every log read in its own task."""
    if not paths:
        raise InvalidArgumentError("rebuild needs at least one log", argument="logs")
    parts = engine(_read_log_arrays, [(str(p),) for p in paths])
    loaded = [(start, Trace._trusted(tables, rows, n)) for start, tables, rows, n in parts]
    return merge_logs(loaded, num_rows)


# --------------------------------------------------------------------------- relayout


class _OneTable:
    """The part of a store :func:`bandstore.tune.relayout` reads for one table, recording the
    write it makes instead of committing it."""

    writable = True

    def __init__(self, name: str, info: Any, layout: np.ndarray, counts: np.ndarray,
                 policy: Mapping[str, Any]):  # fmt: skip
        self.tables = {name: info}
        self._name, self._layout, self._counts, self._policy = name, layout, counts, policy
        self.staged: dict[str, Any] = {}

    def cache_info(self) -> dict[str, Mapping[str, Any]]:
        return {self._name: self._policy}

    def table_layout(self, table: str) -> tuple[np.ndarray, None]:
        return self._layout, None

    def table_counts(self, table: str) -> np.ndarray:
        return self._counts

    def relayout_tables(self, layouts: Mapping[str, np.ndarray], *, counts: Any = None,
                        tuning: Any = None, counts_origin: Any = None,
                        **_: Any) -> None:  # fmt: skip
        self.staged = {
            "layouts": dict(layouts),
            "counts": dict(counts or {}),
            "tuning": dict(tuning or {}),
            "origins": dict(counts_origin or {}),
        }


def relayout_table(
    name: str,
    info: Any,
    indices: np.ndarray,
    offsets: np.ndarray,
    rows: int,
    source: str | None,
    layout: np.ndarray,
    counts: np.ndarray,
    policy: Mapping[str, Any],
    cache_bytes: int,
    method: str,
    holdout: float,
    options: RelayoutOptions,
) -> tuple[Any, dict[str, Any]]:
    """A task: :func:`bandstore.tune.relayout` of one table (its queries ``indices`` /
    ``offsets``, the store's ``layout``, ``counts`` and cache ``policy`` for it, the table's
    ``cache_bytes``). Returns (the table's report entry, its staged layouts / counts / tuning /
    counts origins: empty when it keeps its layout)."""
    trace = Trace._trusted({name: (indices, offsets)}, {name: rows}, len(offsets) - 1, source)
    view = _OneTable(name, info, layout, counts, policy)
    report = relayout(
        view,  # type: ignore[arg-type]  # the Store methods relayout uses, for one table
        trace,
        method=method,
        holdout=holdout,
        cache_bytes={name: cache_bytes},
        tables=[name],
        progress=False,
        options=options,
    )
    return report.tables[name], view.staged


def relayout_on_ray(
    engine: RayEngine,
    store: Any,
    trace: Trace,
    *,
    method: str,
    holdout: float,
    cache_bytes: int,
    options: RelayoutOptions,
) -> RelayoutReport:
    """:func:`bandstore.tune.relayout` of every table of ``trace`` with one task per table;
    the staged write (``store.relayout_tables``, the pipeline's staging view) is made here,
    once, with the tables in trace order, as the local engine makes it."""
    names = list(trace.table_names)
    for name in names:
        if name not in store.tables:
            raise UnknownTableError(name, list(store.tables))
    split = split_point(trace, holdout, options.batch_size)
    policies = store.cache_info()
    calls = []
    for name in names:
        idx, off = trace.table(name)
        calls.append(
            (
                name, store.tables[name], idx, off, trace.num_rows[name], trace.source,
                np.asarray(store.table_layout(name)[0]), np.asarray(store.table_counts(name)),
                dict(policies[name]), _table_cache_bytes(store, name, cache_bytes), method,
                holdout, options,
            )
        )  # fmt: skip
    results = engine(relayout_table, calls)
    report = RelayoutReport(
        queries={"tuning": split, "heldout": trace.n_queries - split},
        method=method,
        max_tuning_lookups=options.max_tuning_lookups,
        tables={},
    )
    layouts: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    tuning: dict[str, Any] = {}
    origins: dict[str, Any] = {}
    for name, (entry, staged) in zip(names, results, strict=True):
        report.tables[name] = entry
        layouts.update(staged.get("layouts", {}))
        counts.update(staged.get("counts", {}))
        tuning.update(staged.get("tuning", {}))
        origins.update(staged.get("origins", {}))
    if layouts:
        report.committed_version = store.relayout_tables(
            layouts, counts=counts, tuning=tuning, note=f"relayout {method}",
            progress=False, counts_origin=origins,
        )  # fmt: skip
    return report


@contextmanager
def engine_for(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[RayEngine]:
    """A :class:`RayEngine` on :func:`ray_cluster` (``address`` / ``num_cpus``), installed for
    the tune layer's per-table work (:func:`bandstore.tune.parallel.map_tables`) in the block;
    the one already installed if there is one."""
    installed = current_engine()
    if isinstance(installed, RayEngine):
        yield installed
        return
    with ray_cluster(address, num_cpus=num_cpus) as ray:
        engine = RayEngine(ray, address)
        try:
            with use_engine(engine):
                yield engine
        finally:
            engine.close()
