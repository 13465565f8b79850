"""The executor: runs one ``lookup_many`` call's tables (and table parts) on W worker threads.

Worker 0 is the calling thread; workers 1..W-1 are helper threads, each pinned to one core
where the OS allows (``os.sched_setaffinity``). A plan routes every table (or each part of a
split table) to one worker, so a table's cache is driven by one thread: the kernels take no
lock, and the per-table lock around each kernel call is uncontended unless several callers
serve the same table at once (then it serializes them, which keeps results and counters exact).
The kernels release the GIL, so the workers' tables run in parallel.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from bandstore.serve.multi import PooledGroup, groupable
from bandstore.serve.strategies import CachedRunner, Runner, _bag_range, commit_stats

#: Per-call latencies kept for p50/p99 (a ring: the most recent calls).
LATENCY_WINDOW = 4096
#: Weight of the newest time in a task's moving average (about the last 1 / w calls count).
RECENT_WEIGHT = 0.125
#: Every this many calls (and the first ones) the tasks note their CPU time for the inline
#: rule's estimates: reading a thread's CPU clock costs ~1 us, too much for every task.
CPU_SAMPLE_EVERY = 8
CPU_SAMPLE_WINDOW = 5
#: Calls between two re-orderings of the tasks by their measured times (after the first
#: REORDER_EVERY calls, which each re-order).
REORDER_EVERY = 32
#: A one-part table whose strategy can serve any range of bags (resident, pinned, direct) is
#: cut into one range per worker when its measured time exceeds this share of a worker's fair
#: share of the call (the work of every table / W): no order balances a task longer than that.
#: It is served whole again below UNCUT_SHARE (the gap keeps it from flapping).
CUT_SHARE = 0.9
UNCUT_SHARE = 0.6
#: A cut table's ranges (and a split table's parts, for those strategies) are cut again into up
#: to MAX_CHUNKS ranges of at least CHUNK_SECONDS each: the helper starts its list tens to
#: hundreds of microseconds after the caller (a wake-up of its virtual CPU), and with one range
#: per worker the caller then waits that long at the end; with several, it takes the helper's
#: last ones instead. Each range costs a task's overhead (~15 us of Python).
CHUNK_SECONDS = 0.0004
MAX_CHUNKS = 4

#: A task: a runner, its job, and a part of the plan (int) or a range of bags (b0, b1).
Task = tuple[Runner, Any, "int | tuple[int, int]"]


class CallCounts:
    """``lookup_many`` calls handed to the helper workers and served inline by the executor's
    rule, since reset. The store owns them, so they outlive an executor replaced by a new plan
    (as its LatencyLog does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parallel = 0
        self.inline = 0

    def add(self, *, inline: bool) -> None:
        with self._lock:
            if inline:
                self.inline += 1
            else:
                self.parallel += 1

    def reset(self) -> None:
        with self._lock:
            self.parallel = self.inline = 0


class LatencyLog:
    """A bounded ring of per-call latencies (seconds); cheap to append, percentiles on demand."""

    def __init__(self, size: int = LATENCY_WINDOW):
        self._buf = np.zeros(size, dtype=np.float64)
        self._n = 0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._buf[self._n % self._buf.shape[0]] = seconds
            self._n += 1

    def reset(self) -> None:
        with self._lock:
            self._n = 0

    def summary(self) -> dict[str, float]:
        """``calls`` (all since reset), and p50/p99 in microseconds over the window."""
        with self._lock:
            n = self._n
            window = self._buf[: min(n, self._buf.shape[0])].copy()
        if window.size == 0:
            return {"calls": 0, "p50_us": 0.0, "p99_us": 0.0}
        p50, p99 = np.percentile(window, [50, 99]) * 1e6
        return {"calls": n, "p50_us": float(p50), "p99_us": float(p99)}


class _Batch:
    """The tasks of one call: a list per worker, taken from the front by its own worker and
    from the back by any other worker once that one's own list is done (work stealing, both
    ways: a helper that the OS is slow to wake delays nothing, and a worker whose tables took
    longer than planned hands its last ones to the other). Counts the tasks not yet finished.

    The caller's own list (0) is added with ``extend`` after the helpers have started."""

    __slots__ = ("lists", "heads", "tails", "_lock", "_left", "_done", "error")

    def __init__(self, lists: list[list[Task]]):
        self.lists = lists
        self.heads = [0] * len(lists)
        self.tails = [len(x) for x in lists]
        self._lock = threading.Lock()
        self._left = sum(len(x) for x in lists) + 1  # + 1: list 0 is still to come
        self._done = threading.Event()
        self.error: BaseException | None = None

    def extend(self, k: int, tasks: list[Task]) -> None:
        """Add list ``k``'s tasks (once, before anyone can have taken from it)."""
        with self._lock:
            self.lists[k] = tasks
            self.heads[k], self.tails[k] = 0, len(tasks)
            self._left += len(tasks)
        self._finished(None)  # the placeholder

    def _take(self, k: int, front: bool) -> Task | None:
        with self._lock:
            if self.heads[k] >= self.tails[k]:
                return None
            if front:
                self.heads[k] += 1
                return self.lists[k][self.heads[k] - 1]
            self.tails[k] -= 1
            return self.lists[k][self.tails[k]]

    def _finished(self, error: BaseException | None) -> None:
        with self._lock:
            if error is not None and self.error is None:
                self.error = error
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def work(self, k: int, front: bool, busy: BusyLog | None = None) -> None:
        """Run tasks of list ``k`` until none is left."""
        while True:
            task = self._take(k, front)
            if task is None:
                return
            self._finished(_run_part(task, busy))

    def steal(self, k: int, busy: BusyLog | None = None) -> None:
        """Run what is left of the other workers' lists, from their backs."""
        for other in range(len(self.lists)):
            if other != k:
                self.work(other, front=False, busy=busy)

    def wait(self) -> None:
        self._done.wait()


class BusyLog:
    """Seconds each table's tasks took (all parts, on whichever worker), since ``reset``:
    what a plan really costs per table on this machine in this mix of tables, which the
    planner can use to correct its model (``bandstore.tune.planning.refine_plan``), and the
    executor to start the longest tasks first. ``recent`` is a moving average per task (not
    reset)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.calls = 0
        self.recent: dict[str, float] = {}
        #: CPU ns per lookup of each table (median of its last sampled tasks): a call's work,
        #: before it is served, for the executor's inline rule.
        self.per_lookup: dict[str, float] = {}
        self._samples: dict[str, list[float]] = {}
        #: Whether the tasks now running note their CPU time (``_run_part``).
        self.sample_cpu = False

    def add(self, table: str, seconds: float, lookups: int = 0, cpu_ns: int = 0) -> None:
        with self._lock:
            self.seconds[table] = self.seconds.get(table, 0.0) + seconds
            last = self.recent.get(table, seconds)
            self.recent[table] = last + RECENT_WEIGHT * (seconds - last)
            if lookups > 0:
                # The median of the last few samples: the first calls of a table (page faults,
                # a cold cache) cost many times the steady state and would linger in an average.
                window = self._samples.setdefault(table, [])
                window.append(cpu_ns / lookups)
                del window[:-CPU_SAMPLE_WINDOW]
                self.per_lookup[table] = sorted(window)[len(window) // 2]  # (np.median: ~10 us)

    def add_shares(self, tables: list[str], lookups: list[int], seconds: float, cpu_ns: int
                   ) -> None:  # fmt: skip
        """``add`` for the tables of one PooledGroup task: each gets the share of ``seconds``
        (and of ``cpu_ns`` when sampled, >= 0) its ``lookups`` are of the task's."""
        total = max(1, sum(lookups))
        with self._lock:
            for table, lk in zip(tables, lookups, strict=True):
                s = seconds * lk / total
                self.seconds[table] = self.seconds.get(table, 0.0) + s
                last = self.recent.get(table, s)
                self.recent[table] = last + RECENT_WEIGHT * (s - last)
                if cpu_ns >= 0 and lk > 0:
                    window = self._samples.setdefault(table, [])
                    window.append(cpu_ns / total)
                    del window[:-CPU_SAMPLE_WINDOW]
                    self.per_lookup[table] = sorted(window)[len(window) // 2]

    def recent_times(self) -> dict[str, float]:
        with self._lock:
            return dict(self.recent)

    def called(self) -> None:
        with self._lock:
            self.calls += 1

    def reset(self) -> None:
        with self._lock:
            self.seconds = {}
            self.calls = 0


def _run_tasks(tasks: Sequence[Task], busy: BusyLog | None = None
               ) -> BaseException | None:  # fmt: skip
    """Run every task; return the first exception (the others still run: their state is
    consistent and the call raises once all are done)."""
    first = None
    for task in tasks:
        exc = _run_part(task, busy)
        if first is None:
            first = exc
    return first


def _run_part(task: Task, busy: BusyLog | None) -> BaseException | None:
    """Run one task, timed into ``busy`` when it succeeds; return its exception, if any.

    When ``busy.sample_cpu`` is set, the task's thread CPU time per lookup is noted too: the
    table's work, without the waits for the GIL that its wall time holds with two workers
    (largest on exactly the small calls the inline rule must recognize)."""
    runner, job, part = task
    sample = busy is not None and busy.sample_cpu
    c0 = time.thread_time_ns() if sample else 0
    t0 = time.perf_counter()
    try:
        if job.out is None:
            runner.allocate(job)
        if isinstance(part, tuple):
            runner.run_bags(job, *part)
        else:
            runner.run_part(job, part)
    except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
        return exc
    if busy is not None:
        seconds = time.perf_counter() - t0
        group = cast(Any, runner)
        if isinstance(group, PooledGroup):  # each member's share, by its lookups
            cpu = time.thread_time_ns() - c0 if sample else -1
            busy.add_shares(job.names, group.member_lookups(job), seconds, cpu)
            return None
        if sample:
            if isinstance(part, tuple):
                lookups = int(job.offsets[part[1]] - job.offsets[part[0]])
            else:
                lookups = max(1, job.ids.shape[0] // runner.parts)
            busy.add(runner.table.name, seconds, lookups, time.thread_time_ns() - c0)
        else:
            busy.add(runner.table.name, seconds)
    return None


class Executor:
    """W workers and the routes of a plan: table -> (runner, worker of each part)."""

    def __init__(self, workers: int, routes: Mapping[str, tuple[Runner, tuple[int, ...]]],
                 *, pin: bool = True, costs: Mapping[str, float] | None = None,
                 inline_below: tuple[float, float] | None = None,
                 calls: CallCounts | None = None):  # fmt: skip
        self.workers = int(workers)
        self.routes = dict(routes)
        #: (base ns, ns per task): a call whose measured work is below base + per task x its
        #: tasks runs on the calling thread alone. Handing work to a helper and back costs
        #: wake-ups and GIL transfers (tens of microseconds each on a VM), which a small call
        #: cannot earn back; None: always use the workers.
        self.inline_below = inline_below
        #: Calls served on the workers / on the calling thread alone by the rule above.
        self.calls = CallCounts() if calls is None else calls
        # Each worker starts its longest tasks first, so that what is left for the other
        # worker to take from the back of its list once its own is done are the short ones
        # (longest-first list scheduling). The order starts from ``costs`` (the plan's
        # predictions, any unit) and follows the measured times every REORDER_EVERY calls.
        self._rank = self._ranks(costs or {})
        self._cuts: dict[str, int] = {}  # table -> ranges of bags it is served in (> 1)
        self._parts_memo: dict[tuple[int, ...], tuple] = {}
        #: Whether each routed table's requests can join a PooledGroup, and the groups built
        #: (by their tables: the same sets come back every call).
        self._groupable: dict[str, bool] = {}
        self._groups: dict[tuple[str, ...], PooledGroup] = {}
        self._queues: list[queue.SimpleQueue] = []
        self._threads: list[threading.Thread] = []
        self.pinned: list[int | None] = [None] * self.workers
        self._state = threading.Condition()
        self._active = 0
        self._closing = False
        self.busy = BusyLog()
        #: Helpers take the caller's (and each other's) last tasks once their own are done.
        self.share = True
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        for w in range(1, self.workers):
            q: queue.SimpleQueue = queue.SimpleQueue()
            cpu = cpus[w % len(cpus)] if (pin and cpus) else None
            th = threading.Thread(
                target=self._loop, args=(q, cpu, w), name=f"bandstore-worker-{w}", daemon=True
            )
            self._queues.append(q)
            self._threads.append(th)
            th.start()

    def _loop(self, q: queue.SimpleQueue, cpu: int | None, w: int) -> None:
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})  # 0: this thread
                self.pinned[w] = cpu
            except OSError:
                pass
        while True:
            item = q.get()
            if item is None:
                return
            batch, k = item
            batch.work(k, front=True, busy=self.busy)
            if self.share:
                batch.steal(k, busy=self.busy)

    def _ranks(self, costs: Mapping[str, float]) -> dict[str, int]:
        """Position of each routed table in the serving order: costliest first, then the
        tables without a cost in route order."""
        names = sorted(self.routes, key=lambda n: -costs.get(n, -1.0))
        return {n: i for i, n in enumerate(names)}

    def _order(self, prepared: Mapping[str, tuple]) -> list[str]:
        calls = self.busy.calls  # every call at first, so that measured times take over soon
        if (calls < REORDER_EVERY or calls % REORDER_EVERY == 0) and self.busy.recent:
            recent = self.busy.recent_times()
            self._rank = self._ranks(recent)
            if self.workers > 1:
                self._cuts = self._cut(recent)
        rank, last = self._rank, len(self._rank)
        return sorted(prepared, key=lambda n: rank.get(n, last))

    def _cut(self, recent: Mapping[str, float]) -> dict[str, int]:
        """The tables to serve in ranges of bags, and how many, from the measured times per
        task (``recent``): a long one-part table in one range per worker, a split one in its
        parts; either cut again into chunks (CHUNK_SECONDS, MAX_CHUNKS)."""
        tasks = {n: self._cuts.get(n, len(where)) for n, (_, where) in self.routes.items()}
        table_s = {n: recent[n] * k for n, k in tasks.items() if n in recent}
        fair = sum(table_s.values()) / self.workers
        cuts = {}
        for n, s in table_s.items():
            runner, where = self.routes[n]
            if not runner.bag_ranges:
                continue
            if len(where) == 1:
                share = CUT_SHARE if n not in self._cuts else UNCUT_SHARE
                if s <= share * fair:
                    continue
                base = self.workers
            else:
                base = len(where)
            chunks = int(min(MAX_CHUNKS, max(1, s / base // CHUNK_SECONDS)))
            if base * chunks > len(where):
                cuts[n] = base * chunks
        return cuts

    def route(self, name: str, t: Any) -> tuple[Runner, tuple[int, ...]]:
        r = self.routes.get(name)
        if r is None or r[0].table is not t:
            # A table the plan does not know (or an older table object): served cached.
            return CachedRunner(t), (0,)
        return r

    def _parts(self, where: tuple[int, ...]) -> tuple[tuple[tuple[int, int], ...], bool]:
        """An uncut job's tasks ``(worker, part)`` and whether a helper runs any (memoized:
        the same few placements come back every call)."""
        got = self._parts_memo.get(where)
        if got is None:
            parts = tuple((w % self.workers, j) for j, w in enumerate(where))
            got = self._parts_memo[where] = (parts, any(w for w, _ in parts))
        return got

    def run(
        self, prepared: Mapping[str, tuple], extra_stats: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Serve validated requests ``{table: (t, ids, offsets, weights, mode, pad)}``;
        ``extra_stats[table]`` (counters + device bytes) are committed with the table's job's
        counters (the update overlay's rows: one commit per call, none if it raises)."""
        jobs = {}
        per_worker: list[list[Task]] = [[] for _ in range(self.workers)]
        for_helpers: list[tuple] = []
        for_caller: list[tuple] = []
        order = self._order(prepared)  # (may re-decide the cuts)
        cuts = self._cuts
        work, n_tasks, any_helped = 0.0, 0, False
        rule = self.inline_below is not None and self.workers > 1
        per_lookup = self.busy.per_lookup if rule else None
        grouped: dict[int, list[str]] = {}  # worker -> tables served by one PooledGroup
        for name in order:
            req = prepared[name]
            runner, where = self.route(name, req[0])
            cut = cuts.get(name, 1)
            if cut == 1 and len(where) == 1 and self._can_group(name, runner, req):
                w = where[0] % self.workers
                members = grouped.get(w)
                if members is None:
                    grouped[w] = members = []
                    (for_caller if w == 0 else for_helpers).append((None, w, None, None))
                    any_helped |= w != 0
                    n_tasks += 1
                members.append(name)
                if per_lookup is not None:
                    work += req[1].shape[0] * per_lookup.get(name, 0.0)
                continue
            if cut > 1:  # ranges of bags: a split's parts' workers in turn, else every worker's
                n_bags = req[2].shape[0] - 1
                k, w = len(where), self.workers
                parts: tuple[tuple[int, Any], ...]
                parts = tuple(((where[c % k] if k > 1 else where[0] + c) % w,
                               _bag_range(n_bags, cut, c)) for c in range(cut))  # fmt: skip
                helped = True  # (ranges on every worker of the table)
            else:
                parts, helped = self._parts(where)
            (for_helpers if helped else for_caller).append((name, runner, req, parts))
            any_helped |= helped
            n_tasks += len(parts)
            if per_lookup is not None:  # a table not yet timed: served inline (and timed)
                work += req[1].shape[0] * per_lookup.get(name, 0.0)

        groups: list[tuple[PooledGroup, Any]] = []

        def begin(items: list[tuple]) -> None:
            # The helpers' jobs are begun first and handed over at once, then this thread
            # begins its own while they run. A one-part job's output is allocated (zeroed) by
            # the worker that runs it, in parallel (zeroing every output here took up to a
            # tenth of a call of many tables with large batches).
            for name, runner, req, parts in items:
                if name is None:  # the tables of worker ``runner`` served by one group
                    names = grouped[runner]
                    group = self._group(tuple(names))
                    gjob = group.begin([prepared[n] for n in names])
                    groups.append((group, gjob))
                    per_worker[runner].append((group, gjob, 0))
                    continue
                _, ids, off, weights, mode, pad = req
                job = runner.begin(ids, off, weights, mode, pad, allocate=len(parts) > 1)
                jobs[name] = (runner, job)
                for w, part in parts:
                    if part.__class__ is not tuple or part[0] < part[1]:  # no empty range
                        per_worker[w].append((runner, job, part))

        if rule:
            calls = self.busy.calls
            self.busy.sample_cpu = calls < CPU_SAMPLE_EVERY or calls % CPU_SAMPLE_EVERY == 0
        small = False
        if rule and any_helped:
            base, per_task = self.inline_below  # type: ignore[misc]
            small = work < base + per_task * n_tasks
        with self._state:
            inline = self._closing or self.workers == 1 or small
            if not inline:
                self._active += 1
            counted = small or (any_helped and not inline)
        if inline:  # one worker, a small call, or replaced by a new plan: all on this thread
            begin(for_helpers)
            begin(for_caller)
            error = _run_tasks([task for tasks in per_worker for task in tasks], self.busy)
        else:
            try:
                begin(for_helpers)
                batch = _Batch([[], *per_worker[1:]])
                for w in range(1, self.workers):
                    if per_worker[w]:
                        self._queues[w - 1].put((batch, w))
                begin(for_caller)
                batch.extend(0, per_worker[0])
                batch.work(0, front=True, busy=self.busy)
                batch.steal(0, busy=self.busy)  # what the helpers have not started
                batch.wait()
                error = batch.error
            finally:
                with self._state:
                    self._active -= 1
                    if self._active == 0:
                        self._state.notify_all()
        if error is not None:
            raise error  # before any counter: a call that raises changes none
        for name, (runner, job) in jobs.items():
            commit_stats(runner.table, job, extra_stats.get(name) if extra_stats else None)
        results = {}
        for group, gjob in groups:
            group.commit(gjob, extra_stats)
            results.update(group.results(gjob))
        if counted:
            self.calls.add(inline=small)
        self.busy.called()
        return {name: results[name] if name in results else jobs[name][0].finish(jobs[name][1])
                for name in prepared}  # fmt: skip

    def _can_group(self, name: str, runner: Runner, req: tuple) -> bool:
        """Whether table ``name``'s request joins its worker's PooledGroup (its planned
        runner is resident whole in DRAM, one part; the mode is a pooling one)."""
        ok = self._groupable.get(name)
        if ok is None:
            r = self.routes.get(name)
            ok = self._groupable[name] = r is not None and groupable(r[0], (*req[:4], 0, -1))
        return ok and runner is self.routes[name][0] and req[4] <= 2

    def _group(self, names: tuple[str, ...]) -> PooledGroup:
        g = self._groups.get(names)
        if g is None:
            if len(self._groups) > 64:  # a bounded memo: callers may vary their table sets
                self._groups.clear()
            g = self._groups[names] = PooledGroup([(n, self.routes[n][0]) for n in names])
        return g

    def close(self) -> None:
        """Stop the helper threads once the calls in flight are done; later calls run inline."""
        with self._state:
            self._closing = True
            while self._active:
                self._state.wait()
        for q in self._queues:
            q.put(None)
        for th in self._threads:
            th.join(timeout=5)
        self._queues, self._threads = [], []
