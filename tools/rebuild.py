#!/usr/bin/env python3
"""The offline rebuild a cron job or a cluster runs: layout, cache sizes and plan from logs.

    python tools/rebuild.py STORE LOGS... [--budget SIZE] [--workers N] [--holdout F] [--json]
                            [--engine local|ray [--address HOST:PORT]]

LOGS are directories written by the recorder (``bandstore.open(path, record=DIR)``) or trace
files (``.npz``), concatenated in time order. The result is committed as one new version
(layouts, access counts, cache policies and plan in one catalog transaction) by
``bandstore.tune.rebuild``; a running ``bandstore serve`` moves to it by itself between batches
(``ServeOptions.follow_versions``), other stores on ``refresh()``. Updates written while it
runs are folded up to the point its commit read the log; later ones stay in the log and are
served on top of the new version. Exit status 0 on success, 2 on a bandstore error (printed),
nothing changed.

``--engine ray`` reads the logs, relayouts the tables and simulates their caches as Ray tasks
(``bandstore.tune.distributed``; the committed version is the same as ``--engine local``'s) on
the cluster at ``--address``, or on a local cluster started for the job and stopped when it
ends (also on an error, Ctrl-C or SIGTERM). Needs the ``[ray]`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

try:
    import bandstore
except ImportError:  # run from a checkout without installing: the package is beside tools/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bandstore

from bandstore.cli.main import _print_json, _size
from bandstore.options import RELAYOUT_METHODS as METHODS
from bandstore.tune.pipeline import ENGINES, load_logs, rebuild


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rebuild.py",
        description="Rebuild a store's block layouts, cache sizes and plan from recorded logs "
        "or trace files and commit them as one new version.",
    )
    p.add_argument("store", help="the store directory")
    p.add_argument(
        "logs", nargs="+", help="recorded log directories or .npz trace files (any order)"
    )
    p.add_argument(
        "--budget",
        type=_size,
        default=None,
        help="DRAM for caches and plan, e.g. 256M (default: 10%% of the decoded tables)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="the plan's worker threads (default: the stored plan's, else 1)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of the latest queries that only measure (default 0.2)",
    )
    p.add_argument("--method", choices=METHODS, default="auto", help="layout method")
    p.add_argument("--batch-size", type=int, default=256, help="queries per lookup_many call")
    p.add_argument("--engine", choices=ENGINES, default="local", help="where the work runs")
    p.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the Ray cluster's HOST:PORT (default: a local cluster "
        "started for the job and stopped when it ends)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    return p


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: a cluster started here is stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.address is not None and args.engine != "ray":
        print("rebuild: error: --address needs --engine ray", file=sys.stderr)
        return 2
    # Only the main thread may install a handler (a caller may run main() in a thread).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        with bandstore.open(args.store, writable=True, plan=False) as store:
            num_rows = {n: t.rows for n, t in store.tables.items()}
            with contextlib.ExitStack() as stack:
                if args.engine == "ray":
                    from bandstore.tune.distributed import engine_for, read_logs

                    engine = stack.enter_context(engine_for(args.address))
                    if in_main:  # ray.init put its own handlers in (its C++ one aborts)
                        signal.signal(signal.SIGTERM, _terminate)
                    trace = read_logs(engine, args.logs, num_rows)
                else:
                    trace = load_logs(args.logs, num_rows)
                report = rebuild(
                    store,
                    trace,
                    budget=args.budget,
                    workers=args.workers,
                    holdout=args.holdout,
                    method=args.method,
                    batch_size=args.batch_size,
                    engine=args.engine,
                    progress=args.progress,
                )
    except bandstore.BandstoreError as exc:
        print(f"rebuild: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rebuild: interrupted, nothing committed", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if args.json:
        _print_json(report.as_dict())
    else:
        print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
