"""Sharded serving on Ray: ``bandstore serve STORE --engine ray --shards N [--replicas R]``.

The store's tables are split over ``N`` shards: a table of more than ``split_rows`` rows is cut
by row range into one part per shard; the others go whole to the least loaded shard (by bytes,
largest first). Each shard is ``R`` Ray actors of class :class:`StoreShard` (the process title
is ``ray::StoreShard``, so ``ps`` and ``ray list actors`` show them), each opening the store
directory (``bandstore.open``: one copy of the files, read through the page cache) with caches
only for what it owns: a whole table's cache as the one-process server sizes it, or a part's
share of it.

The router is the one-process server's app (``create_app``) over a :class:`ShardedBackend`:
parsing, validation (4xx), batching and metrics are the same code. A batch's tables are
grouped by shard and sent as one actor call per shard, all in flight together; the parts of a
split table are pooled on their shards and combined here per mode: ``sum`` adds the partial
sums (weights travel with their ids), ``mean`` is the sum of the partial sums over each bag's
total count, ``max`` the maximum over the parts where the bag has ids (a bag with none is 0,
as in ``embedding_bag``). Sums of a split table may therefore differ from the one-process
answer in the last bits (float32 additions in another order); everything else is identical.

Failures: actors restart (``max_restarts=-1``); a call that fails on one replica is retried on
the next, and with one replica on the same actor once Ray restarted it, for up to
``retry_s`` (then 503 ``ShardUnavailableError``). A failed replica is skipped for
``down_s`` so that requests do not queue behind its restart while another replica answers.

Updates (``POST /v1/update``, ``--allow-updates``): every shard opens the store writable; the
router validates the request, sends it whole (one transaction, one sequence number) to the
shard owning most of its rows, then has every replica of every shard owning any of its rows
apply the log before it answers, so the next lookup of any of them sees the rows
(read-your-writes through the router; other readers of the directory within their poll).

Ray is imported lazily: without the ``[ray]`` extra nothing here is loaded.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

import bandstore
from bandstore import errors
from bandstore.errors import (
    InvalidArgumentError,
    MissingDependencyError,
    ReadOnlyError,
    ShardUnavailableError,
)
from bandstore.options import ServeOptions
from bandstore.serve import overlay
from bandstore.server.backend import StoreBackend, TablePart, TableSpec

if TYPE_CHECKING:
    from bandstore.server.app import ServerOptions

log = logging.getLogger("bandstore")

#: The counters summed over shards (``Store.stats`` keys; the ratios are recomputed).
_COUNTERS = ("lookups", "hits", "misses", "blocks_read", "bytes_read", "useful_bytes",
             "device_bytes")  # fmt: skip


@dataclass(frozen=True)
class ShardOptions:
    """How a store is sharded. ``shards``: shard count; ``replicas``: actors per shard;
    ``split_rows``: tables with more rows are split by row range over every shard;
    ``retry_s``: how long a request waits for a shard (failover, restarts) before 503;
    ``call_timeout_s``: one actor call's limit before the next replica is tried; ``down_s``:
    how long a replica that failed is skipped; ``shard_cpus``: the CPUs Ray reserves per
    actor (0: shards are placed regardless of the cluster's CPU count);
    ``start_timeout_s``: how long the shards may take to open the store and warm up."""

    shards: int = 2
    replicas: int = 1
    split_rows: int = 1 << 22
    retry_s: float = 30.0
    call_timeout_s: float = 10.0
    down_s: float = 2.0
    shard_cpus: float = 0.0
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.shards < 1 or self.replicas < 1 or self.split_rows < 1:
            raise InvalidArgumentError(
                f"need shards >= 1, replicas >= 1 and split_rows >= 1, got {self.shards}, "
                f"{self.replicas}, {self.split_rows}",
                argument="shards",
            )
        if min(self.retry_s, self.call_timeout_s, self.down_s, self.start_timeout_s) <= 0:
            raise InvalidArgumentError("the shard timeouts must be > 0", argument="retry_s")
        if self.shard_cpus < 0:
            raise InvalidArgumentError("shard_cpus must be >= 0", argument="shard_cpus")


@dataclass(frozen=True)
class Part:
    """Rows ``[lo, hi)`` of ``table``, served by shard ``shard``."""

    table: str
    lo: int
    hi: int
    shard: int

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "lo": self.lo, "hi": self.hi, "shard": self.shard}


def partition(
    specs: Mapping[str, TableSpec], shards: int, split_rows: int
) -> dict[str, list[Part]]:
    """Each table's parts (ascending row ranges covering it): tables of more than
    ``split_rows`` rows in ``shards`` equal ranges, one per shard; the others whole, largest
    first, to the shard holding the fewest bytes so far (ties: the lowest shard)."""
    load = [0] * shards
    out: dict[str, list[Part]] = {}
    whole = []
    for name, s in specs.items():
        if shards > 1 and s.rows > split_rows:
            step = -(-s.rows // shards)
            out[name] = [
                Part(name, k * step, min(s.rows, (k + 1) * step), k) for k in range(shards)
            ]
            for k in range(shards):
                load[k] += (min(s.rows, (k + 1) * step) - k * step) * s.dim
        else:
            whole.append(s)
    for s in sorted(whole, key=lambda s: (-s.rows * s.dim, s.name)):
        k = min(range(shards), key=lambda i: (load[i], i))
        out[s.name] = [Part(s.name, 0, s.rows, k)]
        load[k] += s.rows * s.dim
    return {name: out[name] for name in specs}


class StoreShard:
    """One shard: the store opened with caches for ``parts`` only (the Ray actor's class).

    ``cache_bytes`` is the one-process server's (None: tuned or default sizes); each owned
    table keeps its cache size times its share of the table's rows, the others none. Plans are
    not served by shards (a plan sizes one process's strategies and workers)."""

    def __init__(
        self,
        path: str,
        parts: Sequence[tuple[str, int, int]],
        *,
        cache_bytes: Any = None,
        workers: int | None = None,
        io: str = "mmap",
        writable: bool = False,
        follow_versions: bool = False,
    ):
        self.store = bandstore.open(
            path, cache_bytes=cache_bytes, workers=workers, io=io, writable=writable, plan=False,
            options=ServeOptions(follow_versions=follow_versions),
        )  # fmt: skip
        try:
            owned: dict[str, list[tuple[int, int]]] = {}
            for table, lo, hi in parts:
                owned.setdefault(table, []).append((lo, hi))
            self.parts = owned
            info = self.store.cache_info()
            for name, t in self.store.tables.items():
                rows = sum(hi - lo for lo, hi in owned.get(name, ()))
                full = int(info[name]["cache_bytes"])
                want = full * rows // t.rows if t.rows else 0
                if want != full:
                    self.store.configure_cache(name, cache_bytes=want)
            self._warm_up()
        except BaseException:
            self.store.close()
            raise

    def _warm_up(self) -> None:
        """Compile the kernels on a row of each owned part (every mode, and weighted)."""
        start = np.zeros(1, dtype=np.int64)
        calls = {t: (np.array([lo], dtype=np.int64), start) for t, r in self.parts.items()
                 for lo, hi in r[:1] if hi > lo}  # fmt: skip
        if calls:
            for mode in ("sum", "mean", "max"):
                self.store.lookup_many(calls, mode=mode)
            w = np.ones(1, dtype=np.float32)
            self.store.lookup_many({t: (i, o, w) for t, (i, o) in calls.items()}, mode="sum")
        self.store.reset_stats()

    def lookup(self, requests: Mapping[str, TablePart], modes: Mapping[str, str]) -> Any:
        """Pooled lookups of (global) ids of this shard's parts; see ``Backend.lookup``. A
        bandstore error is returned as a :class:`ShardError` (see there)."""
        # Ray hands over arrays read-only (views of its object store); the kernels are
        # compiled for writable ones, and a read-only argument would compile them all again.
        own = {t: tuple(None if a is None else _writable(a) for a in part)
               for t, part in requests.items()}  # fmt: skip
        parts = {t: (i, o) if w is None else (i, o, w) for t, (i, o, w) in own.items()}
        return _guard(functools.partial(self.store.lookup_many, mode={t: modes[t] for t in parts}),
                      parts)  # fmt: skip

    def update(self, batch: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Any:
        """Write ``batch`` durably (one sequence number); return it."""
        own = {t: (_writable(i), _writable(r)) for t, (i, r) in batch.items()}
        return _guard(self.store.update_many, own)

    def catch_up(self) -> None:
        """Apply every update committed so far (served from the next lookup on)."""
        overlay.catch_up(self.store)

    def stats(self) -> dict[str, dict[str, float]]:
        return self.store.stats()

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> bool:
        return True


@dataclass(frozen=True)
class ShardError:
    """A bandstore error raised in a shard, carried back as data: the error classes take
    keyword arguments, which pickling (Ray's transport) cannot rebuild."""

    kind: str
    message: str
    fields: dict[str, Any]

    def rebuild(self) -> BaseException:
        """The error as the shard raised it (same class, message and fields)."""
        cls = getattr(errors, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.BandstoreError)):
            return RuntimeError(f"{self.kind}: {self.message}")
        exc = cls.__new__(cls)
        Exception.__init__(exc, self.message)
        exc.__dict__.update(self.fields)
        return exc


def _guard(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except errors.BandstoreError as e:
        return ShardError(type(e).__name__, str(e), dict(vars(e)))


def _writable(a: Any) -> Any:
    return a if not isinstance(a, np.ndarray) or a.flags.writeable else a.copy()


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as e:
        raise MissingDependencyError("ray", e.name or "ray") from None
    return ray


@dataclass
class _Replica:
    actor: Any
    down_until: float = 0.0


class ShardedBackend:
    """A :class:`bandstore.server.backend.Backend` over shard actors (Ray must be initialised:
    ``ray.init``); the router side of sharded serving. ``close`` kills the actors."""

    aligned_bags = False

    def __init__(
        self,
        path: str | os.PathLike,
        options: ShardOptions | None = None,
        *,
        cache_bytes: Any = None,
        workers: int | None = None,
        io: str = "mmap",
        writable: bool = False,
        follow_versions: bool = False,
    ):
        ray = _ray()
        if not ray.is_initialized():
            raise InvalidArgumentError(
                "ShardedBackend needs a Ray connection: call ray.init() first", argument="ray"
            )
        self.options = o = options or ShardOptions()
        self.path = str(os.fspath(path))
        self.writable = writable
        # The router reads the tables only: no cache, no plan.
        probe = bandstore.open(self.path, cache_bytes=0, plan=False)
        try:
            self.specs = StoreBackend(probe).tables()
        finally:
            probe.close()
        self.parts = partition(self.specs, o.shards, o.split_rows)
        self._bounds = {
            name: np.array([p.lo for p in ps[1:]], dtype=np.int64)
            for name, ps in self.parts.items()
            if len(ps) > 1
        }
        remote = ray.remote(
            max_restarts=-1, max_task_retries=0, max_concurrency=8, num_cpus=o.shard_cpus
        )(StoreShard)
        self.replicas: list[list[_Replica]] = []
        for k in range(o.shards):
            mine = [(p.table, p.lo, p.hi) for ps in self.parts.values() for p in ps if p.shard == k]
            self.replicas.append(
                [
                    _Replica(
                        remote.remote(
                            self.path,
                            mine,
                            cache_bytes=cache_bytes,
                            workers=workers,
                            io=io,
                            writable=writable,
                            follow_versions=follow_versions,
                        )  # fmt: skip
                    )
                    for _ in range(o.replicas)
                ]
            )
        self._rr = itertools.count()
        self._lock = threading.Lock()
        try:
            ray.get(
                [r.actor.ping.remote() for rs in self.replicas for r in rs],
                timeout=o.start_timeout_s,
            )
        except BaseException:
            self.close()
            raise

    # ---- Backend -------------------------------------------------------------------------
    def tables(self) -> dict[str, TableSpec]:
        return dict(self.specs)

    def warm_up(self) -> None:
        """Every replica answers (each warmed its kernels when it opened the store)."""
        ray = _ray()
        ray.get([r.actor.ping.remote() for rs in self.replicas for r in rs])

    def lookup(
        self, requests: Mapping[str, TablePart], modes: Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        calls: dict[int, tuple[dict[str, TablePart], dict[str, str]]] = {}
        splits: dict[str, tuple[list[np.ndarray], list[int]]] = {}
        for table, (idx, off, w) in requests.items():
            mode = modes[table]
            parts = self.parts[table]
            if len(parts) == 1:
                req, mo = calls.setdefault(parts[0].shard, ({}, {}))
                req[table], mo[table] = (idx, off, w), mode
                continue
            # A split table: each part gets its ids with their weights, bag by bag.
            bags = off.shape[0]
            lengths = np.diff(np.append(off, idx.shape[0]))
            bag_of = np.repeat(np.arange(bags, dtype=np.int64), lengths)
            where = np.searchsorted(self._bounds[table], idx, side="right")
            counts, shards = [], []
            for k, p in enumerate(parts):
                sel = np.flatnonzero(where == k)
                cnt = np.bincount(bag_of[sel], minlength=bags)
                counts.append(cnt)
                shards.append(p.shard)
                if sel.size == 0:
                    continue
                sub_off = np.zeros(bags, dtype=np.int64)
                np.cumsum(cnt[:-1], out=sub_off[1:])
                req, mo = calls.setdefault(p.shard, ({}, {}))
                req[table] = (idx[sel], sub_off, None if w is None else w[sel])
                mo[table] = "max" if mode == "max" else "sum"
            splits[table] = (counts, shards)
        got = self._call_all({k: ("lookup", c) for k, c in calls.items()})
        out: dict[str, np.ndarray] = {}
        for table in requests:
            if table not in splits:
                out[table] = got[self.parts[table][0].shard][table]
                continue
            counts, shards = splits[table]
            dim = self.specs[table].dim
            bags = requests[table][1].shape[0]
            partials = [(got[k][table], c) for k, c in zip(shards, counts, strict=True)
                        if table in got.get(k, {})]  # fmt: skip
            out[table] = _combine(partials, modes[table], bags, dim)
        return out

    def stats(self) -> dict[str, dict[str, float]]:
        """Counters per table and in ``total``, summed over every live replica (a replica that
        does not answer within 2 s is left out; a restarted one counts from zero)."""
        ray = _ray()
        refs = [r.actor.stats.remote() for rs in self.replicas for r in rs]
        sums: dict[str, dict[str, float]] = {t: dict.fromkeys(_COUNTERS, 0) for t in self.specs}
        for ref in refs:
            try:
                st = ray.get(ref, timeout=2.0)
            except Exception:  # noqa: BLE001 - a dead or restarting replica: no counters
                continue
            for t in self.specs:
                for c in _COUNTERS:
                    sums[t][c] += st.get(t, {}).get(c, 0)
        total = {c: sum(s[c] for s in sums.values()) for c in _COUNTERS}
        out = {t: _ratios(s) for t, s in sums.items()}
        out["total"] = _ratios(total)
        return out

    def close(self) -> None:
        """Kill the shard actors (no restart)."""
        ray = _ray()
        for rs in getattr(self, "replicas", []):
            for r in rs:
                try:
                    ray.kill(r.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.replicas = []

    # ---- updates -------------------------------------------------------------------------
    def update(self, payload: Any) -> dict[str, Any]:
        """Serve a ``POST /v1/update`` body: validated here, written as one transaction by the
        shard owning most of its rows, applied by every replica owning any before answering.
        Returns ``{"seq", "rows", "shard"}``."""
        if not self.writable:
            raise ReadOnlyError("row updates need a writable store: serve with --allow-updates")
        batch = overlay.parse_request(_SpecsView(self.specs), payload)
        owners: dict[int, int] = {}
        checked = {}
        for table, (ids, rows) in batch.items():
            ids = overlay._checked_ids(ids, table, self.specs[table].rows)
            checked[table] = (ids, rows)
            parts = self.parts[table]
            if len(parts) == 1:
                owners[parts[0].shard] = owners.get(parts[0].shard, 0) + int(ids.size)
                continue
            where = np.searchsorted(self._bounds[table], ids, side="right")
            for k, n in enumerate(np.bincount(where, minlength=len(parts)).tolist()):
                if n:
                    owners[parts[k].shard] = owners.get(parts[k].shard, 0) + n
        writer = max(owners, key=lambda k: (owners[k], -k)) if owners else 0
        seq = self._call_all({writer: ("update", (checked,))})[writer]
        # Every replica of every owning shard applies the log now (not at its next poll).
        self._call_all({k: ("catch_up", ()) for k in owners}, every_replica=True)
        return {
            "seq": int(seq),
            "rows": {n: int(np.asarray(b[0]).size) for n, b in batch.items()},
            "shard": writer,
        }

    # ---- operators and tests -------------------------------------------------------------
    def shard_pids(self) -> list[list[int]]:
        """The process id of each replica of each shard."""
        ray = _ray()
        return [ray.get([r.actor.pid.remote() for r in rs]) for rs in self.replicas]

    def describe(self) -> dict[str, Any]:
        """The partition: each table's parts and shards."""
        return {
            "shards": self.options.shards,
            "replicas": self.options.replicas,
            "parts": {t: [p.as_dict() for p in ps] for t, ps in self.parts.items()},
        }

    # ---- calls with failover -------------------------------------------------------------
    def _call_all(
        self, calls: Mapping[int, tuple[str, Any]], *, every_replica: bool = False
    ) -> dict[int, Any]:
        """Run ``method(*args)`` on one replica of each shard, all in flight together; a
        replica that fails is retried on the next (or, alone, on itself once restarted) for up
        to ``retry_s``. ``every_replica``: on all of them, skipping those that fail."""
        ray = _ray()
        o = self.options
        deadline = time.monotonic() + o.retry_s
        if every_replica:
            jobs = [(k, i) for k in calls for i in range(len(self.replicas[k]))]
        else:
            jobs = [(k, self._pick(k)) for k in calls]
        refs = {job: self._submit(job, calls[job[0]]) for job in jobs}
        out: dict[int, Any] = {}
        for job in jobs:
            k, i = job
            ref = refs[job]
            attempt = 0
            while True:
                try:
                    wait = min(o.call_timeout_s, deadline - time.monotonic())
                    res = ray.get(ref, timeout=max(0.0, wait))
                    if isinstance(res, ShardError):
                        raise res.rebuild()
                    break
                except ray.exceptions.RayTaskError as e:  # raised by the shard's own code
                    raise _cause(e) from None
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                        ray.exceptions.ObjectLostError) as e:  # fmt: skip
                    self._mark_down(k, i)
                    if every_replica:
                        # (A restarted replica reads the log when it opens the store.)
                        log.warning("shard %d replica %d: %s", k, i, type(e).__name__)
                        res = None
                        break
                    if time.monotonic() >= deadline:
                        raise ShardUnavailableError(k, o.retry_s, type(e).__name__) from None
                    i = self._pick(k, after=i)
                    # A restarting actor refuses calls at once: back off, up to 0.5 s.
                    attempt += 1
                    time.sleep(min(0.5, 0.02 * 2**attempt))
                    ref = self._submit((k, i), calls[k])
            if res is not None or k not in out:
                out[k] = res
        return out

    def _submit(self, job: tuple[int, int], call: tuple[str, Any]) -> Any:
        k, i = job
        method, args = call
        return getattr(self.replicas[k][i].actor, method).remote(*args)

    def _pick(self, k: int, after: int | None = None) -> int:
        """A replica of shard ``k``: round robin over those not marked down (``after``: the
        next one after a failed replica); all down: the next one anyway."""
        rs = self.replicas[k]
        n = len(rs)
        start = next(self._rr) % n if after is None else after + 1
        now = time.monotonic()
        for j in range(n):
            i = (start + j) % n
            if rs[i].down_until <= now:
                return i
        return start % n

    def _mark_down(self, k: int, i: int) -> None:
        with self._lock:
            self.replicas[k][i].down_until = time.monotonic() + self.options.down_s


class _SpecsView:
    """What ``overlay.parse_request`` reads of a store: its tables' names and dims."""

    def __init__(self, specs: Mapping[str, TableSpec]):
        self.tables = specs


def _cause(e: Any) -> BaseException:
    """The exception a shard raised (Ray wraps it)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _ratios(s: Mapping[str, float]) -> dict[str, float]:
    d = {c: int(s[c]) for c in _COUNTERS}
    lookups = d["lookups"]
    out: dict[str, float] = dict(d)
    out["hit_ratio"] = d["hits"] / lookups if lookups else 0.0
    out["blocks_per_1000_lookups"] = 1000.0 * d["blocks_read"] / lookups if lookups else 0.0
    out["useful_per_byte_read"] = d["useful_bytes"] / d["bytes_read"] if d["bytes_read"] else 0.0
    return out


def _combine(partials: list[tuple[np.ndarray, np.ndarray]], mode: str, bags: int, dim: int):
    """One split table's result from its parts' ``(pooled (bags, dim), ids per bag)``."""
    if mode == "max":
        out = np.full((bags, dim), -np.inf, dtype=np.float32)
        seen = np.zeros(bags, dtype=bool)
        for res, cnt in partials:
            has = cnt > 0
            np.maximum(out, res, out=out, where=has[:, None])
            seen |= has
        out[~seen] = 0.0
        return out
    out = np.zeros((bags, dim), dtype=np.float32)
    total = np.zeros(bags, dtype=np.int64)
    for res, cnt in partials:
        out += res
        total += cnt
    if mode == "mean":
        nz = total > 0
        out[nz] /= total[nz, None].astype(np.float32)
    return out


def serve_sharded(
    path: str | os.PathLike,
    *,
    shard_options: ShardOptions,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServerOptions | None = None,
    cache_bytes: int | None = None,
    workers: int | None = None,
    io: str = "mmap",
    log_level: str = "info",
    follow_versions: bool = True,
) -> int:
    """``bandstore serve --engine ray``: connect to the Ray cluster at ``address`` (None:
    start a local one, stopped on exit), start the shards, serve the router until SIGINT /
    SIGTERM; then the shards are killed and the cluster it started stopped. Each shard's store
    follows committed versions (``follow_versions``) as the one-process server's does. Exit
    code as :func:`bandstore.server.run.serve`."""
    # The HTTP stack ([serve]) only here: the shards and the backend need numpy and Ray only.
    from bandstore.server.app import ServerOptions, create_app
    from bandstore.server.run import run_app

    ray = _ray()
    options = options or ServerOptions()
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    try:
        backend = ShardedBackend(
            path, shard_options, cache_bytes=cache_bytes, workers=workers, io=io,
            writable=options.allow_updates, follow_versions=follow_versions,
        )  # fmt: skip
        try:
            app = create_app(backend, options)
        except BaseException:
            backend.close()
            raise
        log.info("sharded: %s", backend.describe())
        return run_app(app, host=host, port=port, log_level=log_level, on_failure=backend.close)
    finally:
        if started:
            ray.shutdown()
