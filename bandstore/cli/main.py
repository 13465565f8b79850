"""The ``bandstore`` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import BandstoreError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _size(text: str) -> int:
    """Byte sizes with optional K/M/G suffix (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 64M, 1.5G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0: {text!r}")
    return int(value)


def _stats_table(stats: dict[str, Any]) -> str:
    cols = (
        "lookups",
        "hit_ratio",
        "blocks_read",
        "blocks_per_1000_lookups",
        "useful_per_byte_read",
    )
    names = [k for k, v in stats.items() if isinstance(v, dict)]
    width = max([len(n) for n in names] + [5])
    lines = [f"{'table':<{width}}  " + "  ".join(f"{c:>24}" for c in cols)]
    for n in names:
        row = stats[n]
        cells = []
        for c in cols:
            v = row.get(c, 0)
            cells.append(f"{v:>24.4f}" if isinstance(v, float) else f"{v:>24}")
        lines.append(f"{n:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


# ---- commands -------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from bandstore.demo import format_demo, run_demo

    result = run_demo(
        workdir=args.workdir, scale=args.scale, seed=args.seed, progress=not args.json
    )
    if args.json:
        _print_json(result)
    else:
        print(format_demo(result))
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    import bandstore

    if args.from_trace and args.table:
        raise SystemExit("bandstore create: use --table or --from-trace, not both")
    if not args.from_trace and not args.table:
        raise SystemExit("bandstore create: give at least one --table NAME=FILE.npy[:CODEC]")
    if args.from_trace:
        from bandstore.demo import create_store_for_trace
        from bandstore.traces.trace import Trace

        trace = Trace.load(args.from_trace)
        store = create_store_for_trace(
            args.store,
            trace,
            dim=args.dim,
            codec=args.codec,
            block_size=args.block_size,
            checksum_bytes=args.checksum_bytes,
            seed=args.seed,
        )
    else:
        store = bandstore.create(
            args.store, block_size=args.block_size, checksum_bytes=args.checksum_bytes
        )
        try:
            for spec in args.table:
                name, _, rest = spec.partition("=")
                path, _, codec = rest.partition(":")
                if not name or not path:
                    raise SystemExit(
                        f"bandstore create: bad --table {spec!r}, want NAME=FILE.npy[:CODEC]"
                    )
                store.add_table(name, path, codec=codec or args.codec, progress=not args.json)
        except BaseException:
            store.close()
            raise
    with store:
        info = {
            "store": str(args.store),
            "version": store.version,
            "tables": {n: t.as_dict() for n, t in store.tables.items()},
        }
    if args.json:
        _print_json(info)
    else:
        print(f"created {args.store} (version {info['version']})")
        for n, t in info["tables"].items():
            print(
                f"  {n}: {t['rows']} rows x {t['dim']} {t['codec']}, {t['blocks']} blocks of "
                f"{t['rows_per_block']} rows"
            )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import bandstore

    with bandstore.open(args.store, cache_bytes=0) as store:
        info = {
            "store": str(args.store),
            "version": store.version,
            "block_size": store.block_size,
            "checksum_bytes": store.checksum_bytes,
            "tables": {n: t.as_dict() for n, t in store.tables.items()},
            "tuning": {n: store.catalog.tuning(n) for n in store.tables},
            "updates": store.updates_info(),
        }
    if args.json:
        _print_json(info)
    else:
        print(
            f"{info['store']}: version {info['version']}, block size {info['block_size']}, "
            f"checksum per {info['checksum_bytes']} bytes"
        )
        for n, t in info["tables"].items():
            tun = info["tuning"][n]
            print(
                f"  {n}: {t['rows']} rows x {t['dim']} {t['codec']}, {t['blocks']} blocks "
                f"({t['rows_per_block']} rows each)" + (f", tuned {tun}" if tun else "")
            )
        u = info["updates"]
        print(
            f"  update log: {u['records']} records, {u['rows']} rows, {u['bytes']} bytes "
            f"(last update {u['update_seq']})"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import bandstore

    with bandstore.open(args.store, cache_bytes=0) as store:
        problems = store.verify(progress=not args.json)
        n_blocks = sum(t.blocks for t in store.tables.values())
    if args.json:
        _print_json({"ok": not problems, "blocks_checked": n_blocks, "problems": problems})
    else:
        for p in problems:
            if "seq" in p:
                print(f"CORRUPT: table {p['table']!r} update record {p['seq']}: {p['reason']}")
            else:
                print(f"CORRUPT: table {p['table']!r} block {p['block']} ({p['path']})")
        print(
            f"{'FAILED' if problems else 'OK'}: {n_blocks} blocks and the update log checked, "
            f"{len(problems)} corrupt"
        )
    return 1 if problems else 0


def cmd_lookup(args: argparse.Namespace) -> int:
    import bandstore

    with bandstore.open(args.store, cache_bytes=0) as store:
        rows = store.lookup(args.table, np.array(args.ids, dtype=np.int64))
    if args.json:
        _print_json({"table": args.table, "ids": args.ids, "rows": rows})
    else:
        with np.printoptions(precision=5, suppress=True, linewidth=120):
            for i, r in zip(args.ids, rows, strict=True):
                print(f"{i}: {r}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import bandstore
    from bandstore.tune.measure import replay

    trace = _load_trace(args.trace)
    if args.holdout:
        trace = trace.split(1.0 - args.holdout)[1]
    kwargs: dict[str, Any] = {}
    if args.cache_bytes is not None:
        kwargs["cache_bytes"] = args.cache_bytes
    if args.threshold is not None:
        kwargs["threshold"] = bandstore.NEVER if args.threshold < 0 else args.threshold
    if args.pinned_share is not None:
        kwargs["pinned_share"] = args.pinned_share
    with bandstore.open(args.store, **kwargs) as store:
        if args.cold:
            store.drop_page_cache()
        stats = replay(store, trace, batch_size=args.batch_size, progress=not args.json)
        stats["cache"] = store.cache_info()
    if args.json:
        _print_json(stats)
    else:
        print(_stats_table(stats))
        print(
            f"{stats['total']['lookups']} lookups in {stats['seconds']:.3f} s: "
            f"{stats['lookups_per_second']:,.0f} lookups/s"
        )
    return 0


def _load_trace(path: Path):
    """A saved trace (.npz) or a directory of recorded segments (open(..., record=DIR))."""
    from bandstore.traces.trace import Trace

    if Path(path).is_dir():
        from bandstore.traces.recorder import read_recorded

        return read_recorded(path)
    return Trace.load(path)


def cmd_relayout(args: argparse.Namespace) -> int:
    import bandstore
    from bandstore.tune.relayout_job import relayout

    trace = _load_trace(args.trace)
    with bandstore.open(args.store, writable=True) as store:
        report = relayout(
            store,
            trace,
            method=args.method,
            holdout=args.holdout,
            cache_bytes=args.cache_bytes,
            force=args.force,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.json,
            **(
                {}
                if args.max_tuning_lookups is None
                else {"max_tuning_lookups": args.max_tuning_lookups or None}
            ),
        )
    if args.json:
        _print_json(report)
        return 0
    q = report["queries"]
    print(f"tuning on {q['tuning']} queries, judged on the {q['heldout']} later ones")
    cols = f"{'':<16}{'blocks/1000':>12}{'hit ratio':>10}{'threshold':>10}{'pinned':>8}"
    for name, e in report["tables"].items():
        print(f"\n{name} (cache {e['cache_bytes'] / 2**20:.1f} MiB):\n  {cols}")
        rows = [("naive", e["naive"]), ("current", e["current"]), ("policy only", e["policy_only"])]
        rows += list(e["candidates"].items())
        if "choice" in e:
            rows.append(("auto", e["result"]))
        for label, r in rows:
            t = "never" if r["threshold"] is None else r["threshold"]
            print(
                f"  {label:<16}{r['heldout_blocks_per_1000_lookups']:>12.1f}"
                f"{r['heldout_hit_ratio']:>10.3f}{t!s:>10}{r['pinned_share']:>8.2f}"
            )
        c = e["configuration"]
        if "skipped_candidates" in e:
            print(f"  (not built at full size: {', '.join(e['skipped_candidates'])})")
        if "policy_window" in e:
            pw = e["policy_window"]
            print(
                f"  policies{' and configuration' if 'choice' in e else ''} chosen on the last "
                f"{pw['queries']} tuning queries ({pw['lookups']} lookups)"
            )
        if "choice" in e:
            q = e["choice"]["queries"]
            print(
                f"  auto chose {c['method']} (recency half-life "
                f"{'none' if c['half_life'] is None else c['half_life']}"
                + (f", cold rows {c['cold']}" if c["cold"] is not None else "")
                + f") out of {len(e['choice']['configurations'])} configurations, on the last "
                f"{q['select']} tuning queries (layouts built from the {q['fit']} before them)"
            )
        verdict = f"commit {e['chosen']}" if e["action"] == "commit" else f"keep ({e['reason']})"
        print(f"  -> {verdict}; {e['improvement_over_naive']:.2f}x fewer blocks than naive")
    v = report["committed_version"]
    print(f"\ncommitted version {v}" if v is not None else "\nnothing committed")
    return 0


def _threshold_arg(text: str) -> int | None:
    """An admission threshold: an integer >= 0, or 'never' (also -1) for no neighbours."""
    if text.strip().lower() in ("never", "none", "-1"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a threshold: {text!r} (integer or never)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"threshold must be >= 0 or 'never': {text!r}")
    return value


def cmd_size_cache(args: argparse.Namespace) -> int:
    import bandstore
    from bandstore.tune.sim import (
        DEFAULT_PINNED_SHARES,
        DEFAULT_THRESHOLDS,
        DEFAULT_WARMUP,
        format_sizing,
        size_cache,
    )

    trace = _load_trace(args.trace)
    with bandstore.open(args.store, writable=args.apply, cache_bytes=0) as store:
        result = size_cache(
            store, trace, args.budget, sample_rate=args.sample_rate,
            thresholds=args.thresholds or DEFAULT_THRESHOLDS,
            pinned_shares=args.pinned_shares or DEFAULT_PINNED_SHARES,
            batch_size=args.batch_size, apply=args.apply,
            warmup=DEFAULT_WARMUP if args.warmup is None else args.warmup,
            apply_counts=args.apply_counts, plot=args.plot, seed=args.seed,
            progress=not args.json,
        )  # fmt: skip
    if args.json:
        _print_json(result)
    else:
        print(format_sizing(result))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from bandstore.storage.versions import collect_garbage

    result = collect_garbage(args.store)
    if args.json:
        _print_json(result)
    else:
        print(f"removed versions {result['removed']}; kept {result['kept']}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    import bandstore
    from bandstore.serve.overlay import read_npz

    batch = read_npz(args.file, table=args.table)
    with bandstore.open(args.store, writable=True, cache_bytes=0) as store:
        seq = store.update_many(batch, allow_nan=args.allow_nan)
    rows = {n: int(len(b[0])) for n, b in batch.items()}
    if args.json:
        _print_json({"seq": seq, "rows": rows})
    else:
        print(f"update {seq}: " + ", ".join(f"{n} {k} rows" for n, k in rows.items()))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    import bandstore

    with bandstore.open(args.store, writable=True, cache_bytes=0) as store:
        report = store.compact(progress=not args.json)
    if args.json:
        _print_json(report)
    elif report["tables"]:
        rows = ", ".join(f"{n} {k} rows" for n, k in report["tables"].items())
        print(
            f"folded updates up to {report['folded_seq']} into version {report['version']} "
            f"({rows}); {report['pruned_records']} log records deleted"
        )
    else:
        print(f"nothing to fold (updates up to {report['folded_seq']} are in the version)")
    return 0


def cmd_trace_convert(args: argparse.Namespace) -> int:
    from bandstore.traces.formats import convert

    options = {}
    if args.session_gap is not None:
        options["session_gap"] = args.session_gap
    if args.top is not None:
        options["top"] = args.top
    trace = convert(args.format, args.input, **options)
    trace.save(args.output)
    if args.json:
        _print_json({"output": str(args.output), **trace.summary()})
    else:
        print(f"wrote {args.output}: {trace.n_queries} queries, {trace.n_lookups()} lookups")
    return 0


def _parse_tables(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        name, _, rows = part.partition("=")
        try:
            out[name.strip()] = int(float(rows))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad table spec {part!r}: want NAME=ROWS") from None
    return out


def cmd_trace_synth(args: argparse.Namespace) -> int:
    from bandstore.traces.synth import synth

    trace = synth(
        args.tables,
        args.queries,
        pooling=args.pooling,
        zipf=args.zipf,
        community_size=args.community_size,
        co_access=args.co_access,
        seed=args.seed,
    )
    trace.save(args.output)
    if args.json:
        _print_json({"output": str(args.output), **trace.summary()})
    else:
        print(f"wrote {args.output}: {trace.n_queries} queries, {trace.n_lookups()} lookups")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from bandstore.tune.planning import calibrate_store

    cal = calibrate_store(args.store, quick=args.quick)
    if args.json:
        _print_json(cal.as_dict())
    else:
        from bandstore.tune.planning.calibrate import format_calibration

        print(format_calibration(cal))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from bandstore.tune.planning.report import run_plan_command

    return run_plan_command(args)


# ---- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bandstore",
        description="Embedding store with co-access block layouts and a simulated-to-size cache.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print JSON (no progress bars)")
        sp.set_defaults(func=fn)
        return sp

    sp = add("demo", cmd_demo, "generate data, build a store, replay, and print the figures")
    sp.add_argument("--workdir", type=Path, help="keep the demo's files here (default: temporary)")
    sp.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1.0)")
    sp.add_argument("--seed", type=int, default=0)

    sp = add("create", cmd_create, "create a store from .npy tables or sized to a trace")
    sp.add_argument("store", type=Path)
    sp.add_argument("--table", action="append", metavar="NAME=FILE.npy[:CODEC]")
    sp.add_argument(
        "--from-trace",
        type=Path,
        metavar="TRACE",
        help="random vectors for every table of this trace",
    )
    sp.add_argument("--dim", type=int, default=64)
    sp.add_argument("--codec", default="float32", choices=["float32", "float16", "int8"])
    sp.add_argument("--block-size", type=int, default=4096)
    sp.add_argument(
        "--checksum-bytes",
        type=int,
        default=None,
        help="bytes each block checksum covers (64..block size; default 512)",
    )
    sp.add_argument("--seed", type=int, default=0)

    sp = add("info", cmd_info, "describe a store")
    sp.add_argument("store", type=Path)

    sp = add("verify", cmd_verify, "check every block checksum (exit 1 on corruption)")
    sp.add_argument("store", type=Path)

    sp = add("update", cmd_update, "write row updates from a .npz (durable on return)")
    sp.add_argument("store", type=Path)
    sp.add_argument("file", type=Path, help="arrays TABLE/ids and TABLE/rows (or ids, rows)")
    sp.add_argument("--table", help="the table of arrays named ids and rows")
    sp.add_argument("--allow-nan", action="store_true", help="store NaN / inf values as given")

    sp = add("compact", cmd_compact, "fold the row updates into a new version")
    sp.add_argument("store", type=Path)

    sp = add("lookup", cmd_lookup, "print rows of a table")
    sp.add_argument("store", type=Path)
    sp.add_argument("table")
    sp.add_argument("ids", type=int, nargs="+")

    sp = add("replay", cmd_replay, "replay a trace through the store and print its counters")
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path)
    sp.add_argument("--cache-bytes", type=_size, help="total DRAM for caches (default: tuned)")
    sp.add_argument("--threshold", type=int, help="admission threshold (-1: never)")
    sp.add_argument("--pinned-share", type=float)
    sp.add_argument("--batch-size", type=int, default=256, help="queries per lookup_many call")
    sp.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="replay only the last fraction of the queries (held-out part)",
    )
    sp.add_argument("--cold", action="store_true", help="drop block files from the page cache")

    sp = add("calibrate", cmd_calibrate, "measure this machine's lookup costs, store them")
    sp.add_argument("store", type=Path)
    sp.add_argument("--quick", action="store_true", help="fewer, smaller measurements")

    sp = add("plan", cmd_plan, "plan strategies and workers per table for a trace, and measure")
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path)
    sp.add_argument("--workers", type=int, required=True, help="worker threads (W >= 1)")
    sp.add_argument("--budget", type=_size, help="DRAM bytes (default: 25%% of the tables)")
    sp.add_argument("--apply", action="store_true", help="store the plan; later opens serve it")
    sp.add_argument("--batch-size", type=int, default=256, help="queries per lookup_many call")
    sp.add_argument("--holdout", type=float, default=0.5, help="share of queries measured on")
    sp.add_argument("--repeats", type=int, default=3, help="interleaved repetitions")

    sp = add("relayout", cmd_relayout, "rebuild layouts from a trace, judged on held-out queries")
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path, help="a trace .npz or a directory of recorded queries")
    sp.add_argument(
        "--method",
        default="auto",
        choices=["auto", "identity", "random", "frequency", "metis", "hypergraph"],
    )
    sp.add_argument("--holdout", type=float, default=0.2, help="share of later queries held out")
    sp.add_argument("--cache-bytes", type=_size, help="DRAM to decide for (default: current)")
    sp.add_argument("--batch-size", type=int, default=256, help="queries per serving call")
    sp.add_argument("--force", action="store_true", help="commit even if not better")
    sp.add_argument("--dry-run", action="store_true", help="report, commit nothing")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--max-tuning-lookups", type=int, default=None, metavar="N",
                    help="above N tuning lookups per table, choose policies (and auto's "
                         "configuration) on the most recent N; held-out figures stay whole "
                         "(default: bandstore.tune.relayout_job.DEFAULT_MAX_TUNING_LOOKUPS; 0: no "
                         "bound)")  # fmt: skip

    sp = add("size-cache", cmd_size_cache,
             "size each table's DRAM cache within a budget by mini cache simulation")  # fmt: skip
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path, help="the tuning trace (.npz or a recorded directory)")
    sp.add_argument("--budget", type=_size, required=True, help="total DRAM bytes (e.g. 64M)")
    sp.add_argument("--sample-rate", type=float, default=0.01,
                    help="SHARDS sampling rate in (0, 1]; 1 = exact (default 0.01; small "
                         "tables run at a higher rate)")  # fmt: skip
    sp.add_argument("--thresholds", type=_threshold_arg, nargs="+", metavar="T",
                    help="thresholds to try (integers, never; default 0 1 4 16 never)")  # fmt: skip
    sp.add_argument("--pinned-shares", type=float, nargs="+", metavar="P",
                    help="pinned shares to try (default 0 0.25 0.5 0.75 0.9 1)")  # fmt: skip
    sp.add_argument("--batch-size", type=int, default=256, help="queries per lookup_many call")
    sp.add_argument("--warmup", type=float,
                    help="share of the queries that give the access counts and warm the caches; "
                         "predictions are for the rest (default 0.7: size_cache's)")  # fmt: skip
    sp.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the curves (matplotlib)")
    sp.add_argument("--apply", action="store_true",
                    help="store the sizes in the catalog, for bandstore.open()")  # fmt: skip
    sp.add_argument("--apply-counts", choices=["trace", "warmup"], default="trace",
                    help="access counts stored with --apply: the whole trace's (default) "
                         "or its warm-up part's (those the predictions used)")  # fmt: skip
    sp.add_argument("--seed", type=int, default=0, help="sampling hash seed")

    sp = add("gc", cmd_gc, "remove versions no reader holds")
    sp.add_argument("store", type=Path)

    tp = sub.add_parser("trace", help="convert or generate traces")
    tsub = tp.add_subparsers(dest="trace_command", required=True, metavar="COMMAND")
    sp = tsub.add_parser("convert", help="convert a public log format to a trace (.npz)")
    sp.add_argument("format", choices=["lightgcn", "lastfm", "movielens", "criteo", "avazu", "csv"])
    sp.add_argument("input", type=Path)
    sp.add_argument("output", type=Path)
    sp.add_argument("--session-gap", type=float, help="movielens: seconds between sessions")
    sp.add_argument("--top", type=int, help="lastfm: artists per user")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_trace_convert)
    sp = tsub.add_parser("synth", help="generate a trace with Zipf popularity and co-access")
    sp.add_argument("output", type=Path)
    sp.add_argument(
        "--tables",
        type=_parse_tables,
        default={"t0": 1_000_000},
        help="NAME=ROWS[,NAME=ROWS...] (default t0=1000000)",
    )
    sp.add_argument("--queries", type=int, default=100_000)
    sp.add_argument("--pooling", type=int, default=20, help="mean lookups per query and table")
    sp.add_argument("--zipf", type=float, default=1.05, help="popularity exponent")
    sp.add_argument("--community-size", type=int, default=64, help="rows read together")
    sp.add_argument(
        "--co-access",
        type=float,
        default=0.8,
        help="probability a lookup comes from the query's community",
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_trace_synth)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BandstoreError as exc:
        print(f"bandstore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
