"""The ``bandstore`` command: parses arguments and calls the library, nothing more.

Errors are one line on stderr, ``bandstore: error: ...`` (no traceback), and the exit status
says what kind: see ``EXIT_STATUS``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bandstore.errors import BandstoreError, InvalidArgumentError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3
EXIT_STATUS = """exit status:
  0  success
  1  failure: the command could not do its work (a missing or malformed file, a bad value
     found in the data, a store that refuses the operation); for `verify`: corrupt blocks
  2  usage: bad arguments (the message names the argument)
  3  `verify` only: the store could not be read at all (catalog, layout or version missing
     or damaged), so its blocks were not checked"""


class _Parser(argparse.ArgumentParser):
    """argparse with bandstore's error style: usage, then ``bandstore: error: ...``, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"bandstore: error: {message} (see `{self.prog} --help`)\n")


def _usage(args: argparse.Namespace, message: str) -> None:
    """A usage error found after parsing (exit 2)."""
    args._parser.error(message)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only for a person watching: not with --json, not into a log file."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


def kernels_compiled() -> bool:
    """Whether numba's cache holds bandstore's compiled kernels (else the first calls compile
    them, for tens of seconds)."""
    from pathlib import Path as _P

    import bandstore.kernels as kpkg

    dirs = [_P(kpkg.__file__).parent / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        dirs.append(_P(os.environ["NUMBA_CACHE_DIR"]))
    return any(next(d.rglob("*.nbi"), None) is not None for d in dirs if d.is_dir())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _row_id(text: str) -> int:
    """A row id: a decimal integer that fits in int64 (range checks are the store's)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer row id: {text!r}") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"row id {text} does not fit in 64 bits")
    return value


def _open_fraction(text: str) -> float:
    """A share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _rate(text: str) -> float:
    """A sampling rate in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


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
        "device_bytes",
    )
    names = [k for k, v in stats.items() if isinstance(v, dict) and "lookups" in v]
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

    if args.scale <= 0:
        _usage(args, f"argument --scale: must be > 0, got {args.scale}")
    result = run_demo(
        workdir=args.workdir, scale=args.scale, seed=args.seed, progress=_progress(args)
    )
    if args.json:
        _print_json(result)
    else:
        print(format_demo(result))
    return 0


def _table_spec(args: argparse.Namespace, spec: str) -> tuple[str, Path, str]:
    """``NAME=FILE.npy[:CODEC]`` -> (name, path, codec). The ``:CODEC`` suffix is taken only
    when it names a codec, so a path may hold ``:``; the file is checked to be a 2-D float
    ``.npy`` array before anything is created."""
    from bandstore.storage.codecs import CODECS

    name, eq, rest = spec.partition("=")
    if not eq or not name or not rest:
        _usage(args, f"bad --table {spec!r}: want NAME=FILE.npy[:CODEC]")
    path, codec = rest, args.codec
    head, colon, tail = rest.rpartition(":")
    if colon and tail in CODECS:
        path, codec = head, tail
    elif colon and not Path(rest).exists() and "/" not in tail and not tail.endswith(".npy"):
        _usage(args, f"bad --table {spec!r}: unknown codec {tail!r} (known: {', '.join(CODECS)})")
    file = Path(path)
    if not file.is_file():
        raise InvalidArgumentError(f"--table {name}: no such file: {file}", argument="table")
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidArgumentError(
            f"--table {name}: {file} is not a readable .npy array ({exc})", argument="table"
        ) from exc
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind != "f" or 0 in arr.shape:
        raise InvalidArgumentError(
            f"--table {name}: {file} must hold a non-empty 2-D float array (rows, dim), got "
            f"{getattr(arr, 'dtype', '?')}{getattr(arr, 'shape', '')}",
            argument="table",
        )
    return name, file, codec


def cmd_create(args: argparse.Namespace) -> int:
    """Atomic: every --table is checked first, and a store that fails half-made is removed."""
    import bandstore

    if args.from_trace and args.table:
        _usage(args, "use --table or --from-trace, not both")
    if not args.from_trace and not args.table:
        _usage(args, "give at least one --table NAME=FILE.npy[:CODEC], or --from-trace TRACE")
    target = Path(args.store)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        from bandstore.errors import StoreExistsError

        raise StoreExistsError(str(target))
    trace = None
    specs: list[tuple[str, Path, str]] = []
    if args.from_trace:
        from bandstore.traces.trace import Trace

        trace = Trace.load(args.from_trace)
    else:
        specs = [_table_spec(args, spec) for spec in args.table]
        names = [n for n, _, _ in specs]
        if len(set(names)) != len(names):
            _usage(args, f"a table name is given twice: {names}")
    made = not target.exists()
    try:
        if trace is not None:
            from bandstore.demo import create_store_for_trace

            store = create_store_for_trace(
                target, trace, dim=args.dim, codec=args.codec, block_size=args.block_size,
                checksum_bytes=args.checksum_bytes, seed=args.seed, progress=_progress(args),
            )  # fmt: skip
        else:
            store = bandstore.create(
                target, block_size=args.block_size, checksum_bytes=args.checksum_bytes
            )
            try:
                store.add_tables(
                    {n: p for n, p, _ in specs},
                    codec={n: c for n, _, c in specs},
                    progress=_progress(args),
                )
            except BaseException:
                store.close()
                raise
    except BaseException:
        if made:  # nothing half-made is left behind: the retry must not find a store
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise
    with store:
        info: dict[str, Any] = {
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


def cmd_import(args: argparse.Namespace) -> int:
    from bandstore.importers import import_weights

    report = import_weights(
        args.store,
        args.files,
        codec=args.codec,
        match=args.match,
        block_size=args.block_size,
        progress=_progress(args),
    )
    if args.json:
        _print_json(report.as_dict())
    else:
        verb = "created" if report.created else "added to"
        print(f"{verb} {args.store} (version {report.version}): {len(report.tables)} tables")
        for n, t in report.tables.items():
            print(f"  {n}: {t['rows']} rows x {t['dim']} {t['codec']} <- {t['file']}:{t['key']}")
        for sk in report.skipped:
            print(f"  skipped {sk['file']}:{sk['key']} ({sk['reason']})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from bandstore.serve.describe import describe_store, format_description

    info = describe_store(args.store)
    if args.json:
        _print_json(info)
    else:
        print(format_description(info))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import bandstore

    try:
        store = bandstore.open(args.store, cache_bytes=0, plan=False)
    except (BandstoreError, OSError) as exc:
        # Not "corrupt blocks" (1): the store could not be read, nothing was checked.
        print(f"bandstore: error: cannot verify {args.store}: {_message(exc)}", file=sys.stderr)
        return EXIT_UNREADABLE
    with store:
        problems = store.verify(progress=_progress(args))
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
    return EXIT_FAILURE if problems else EXIT_OK


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
    from bandstore.options import CacheOptions, ServeOptions
    from bandstore.tune.measure import replay
    from bandstore.tune.reports import jsonable

    trace = _load_trace(args.trace)
    if args.holdout is not None:
        trace = trace.split(1.0 - args.holdout)[1]
    options = ServeOptions(cache=CacheOptions(args.cache_bytes, args.threshold, args.pinned_share))
    with bandstore.open(args.store, options=options, io=args.io) as store:
        if args.cold:
            store.drop_page_cache()
        report = replay(store, trace, batch_size=args.batch_size, progress=_progress(args))
        cache = store.cache_info()
        memory = store.memory()
    if args.json:
        _print_json({**report.as_dict(), "cache": jsonable(cache), "memory": memory})
    else:
        print(_stats_table({**report.tables, "total": report.total}))
        print(
            f"{report.total['lookups']} lookups in {report.seconds:.3f} s: "
            f"{report.lookups_per_second:,.0f} lookups/s"
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
    from bandstore.options import RelayoutOptions
    from bandstore.tune.relayout_job import relayout

    trace = _load_trace(args.trace)
    options = RelayoutOptions(batch_size=args.batch_size, seed=args.seed)
    if args.max_tuning_lookups is not None:  # 0: no bound
        options = RelayoutOptions(batch_size=args.batch_size, seed=args.seed,
                                  max_tuning_lookups=args.max_tuning_lookups or None)  # fmt: skip
    with bandstore.open(args.store, writable=True) as store:
        result = relayout(
            store,
            trace,
            method=args.method,
            holdout=args.holdout,
            cache_bytes=args.cache_bytes,
            force=args.force,
            dry_run=args.dry_run,
            progress=_progress(args),
            options=options,
        )
    report = result.as_dict()
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
        if e["choice"]:
            rows.append(("auto", e["result"]))
        for label, r in rows:
            t = r["threshold"]
            print(
                f"  {label:<16}{r['heldout_blocks_per_1000_lookups']:>12.1f}"
                f"{r['heldout_hit_ratio']:>10.3f}{t!s:>10}{r['pinned_share']:>8.2f}"
            )
        c = e["configuration"]
        if e["skipped_candidates"]:
            print(f"  (not built at full size: {', '.join(e['skipped_candidates'])})")
        if e["policy_window"]:
            pw = e["policy_window"]
            print(
                f"  policies{' and configuration' if e['choice'] else ''} chosen on the last "
                f"{pw['queries']} tuning queries ({pw['lookups']} lookups)"
            )
        if e["choice"]:
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


def _threshold_arg(text: str) -> int:
    """An admission threshold: an integer >= 0, or 'never' for no neighbour admission."""
    from bandstore.options import threshold_from_json

    try:
        return threshold_from_json(text)
    except BandstoreError:
        raise argparse.ArgumentTypeError(
            f"not a threshold: {text!r} (an integer >= 0, or 'never' for no neighbour admission)"
        ) from None


def cmd_size_cache(args: argparse.Namespace) -> int:
    import bandstore
    from bandstore.options import SimOptions, SizingOptions
    from bandstore.tune.sim import format_sizing, size_cache

    if args.plot is not None:  # before the simulation, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidArgumentError(
                "--plot needs matplotlib, which is not installed (pip install matplotlib)",
                argument="plot",
            ) from None
        if not Path(args.plot).resolve().parent.is_dir():
            raise InvalidArgumentError(
                f"--plot: no such folder: {Path(args.plot).parent}", argument="plot"
            )
    trace = _load_trace(args.trace)
    sim = SimOptions(sample_rate=args.sample_rate, batch_size=args.batch_size, seed=args.seed)
    if args.thresholds:
        sim = replace(sim, thresholds=tuple(args.thresholds))
    if args.pinned_shares:
        sim = replace(sim, pinned_shares=tuple(args.pinned_shares))
    options = SizingOptions(sim=sim, apply_counts=args.apply_counts)
    if args.warmup is not None:
        options = SizingOptions(sim=sim, apply_counts=args.apply_counts, warmup=args.warmup)
    notes = []
    with bandstore.open(args.store, writable=args.apply, cache_bytes=0) as store:
        result = size_cache(store, trace, args.budget, apply=args.apply, plot=args.plot,
                            progress=_progress(args), options=options)  # fmt: skip
        if args.apply and store.catalog.meta("plan"):
            # One source of truth: the newer decision wins. A stored plan sizes the caches of
            # every table it names, so the sizes just stored would never be served under it.
            store.set_plan(None)
            notes.append(
                "note: removed the applied plan (`bandstore plan --apply`), whose cache sizes "
                "would have overridden these; stores opened from now on serve these sizes"
            )
    if args.json:
        _print_json({**result.as_dict(), "notes": notes})
    else:
        print(format_sizing(result))
        for n in notes:
            print(n)
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
    _check_output_folder(args.output)  # before reading a large log, not after
    trace = convert(args.format, args.input, **options)
    trace.save(args.output)
    _print_trace_summary(args, trace)
    return 0


def _check_output_folder(path: Path) -> None:
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise InvalidArgumentError(f"no such folder for the output: {folder}", argument="output")


def _print_trace_summary(args: argparse.Namespace, trace: Any) -> None:
    summary = trace.summary()
    if args.json:
        _print_json({"output": str(args.output), **summary})
        return
    print(f"wrote {args.output}: {trace.n_queries} queries, {trace.n_lookups()} lookups")
    for name in trace.table_names:
        print(f"  {name}: {trace.num_rows[name]} rows, {trace.n_lookups(name)} lookups")


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
    _check_output_folder(args.output)
    trace.save(args.output)
    _print_trace_summary(args, trace)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from bandstore.tune.planning import calibrate_store

    if not Path(args.store).is_dir():
        from bandstore.errors import NotAStoreError

        raise NotAStoreError(str(args.store), "no such directory")
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


def cmd_serve(args: argparse.Namespace) -> int:
    from bandstore.errors import MissingDependencyError

    try:
        from bandstore.server.run import serve, server_kwargs
    except ModuleNotFoundError as e:
        raise MissingDependencyError("serve", e.name or str(e)) from None
    if args.sample_rate is not None and args.record is None:
        raise InvalidArgumentError("--sample-rate needs --record DIR", argument="sample_rate")
    if args.engine == "local":
        for flag in ("shards", "replicas", "address", "split_rows"):
            if getattr(args, flag) is not None:
                raise InvalidArgumentError(
                    f"--{flag.replace('_', '-')} needs --engine ray", argument=flag
                )
        return serve(args.store, **server_kwargs(args))
    from bandstore.server.sharded import ShardOptions, serve_sharded

    if args.record is not None:
        raise InvalidArgumentError(
            "--record is per process: serve with --engine local to record traffic",
            argument="record",
        )
    kwargs = server_kwargs(args)
    for key in ("record", "sample_rate"):
        kwargs.pop(key)
    shard = ShardOptions(
        shards=2 if args.shards is None else args.shards,
        replicas=1 if args.replicas is None else args.replicas,
        **({} if args.split_rows is None else {"split_rows": args.split_rows}),
    )
    return serve_sharded(args.store, shard_options=shard, address=args.address, **kwargs)


# ---- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bandstore",
        description="Embedding store with co-access block layouts and a simulated-to-size cache.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, epilog=EXIT_STATUS,
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        sp.add_argument("--json", action="store_true", help="print JSON (no progress bars)")
        sp.set_defaults(func=fn, _parser=sp)
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
    sp.add_argument("--dim", type=_positive_int, default=64, help="with --from-trace (>= 1)")
    sp.add_argument("--codec", default="float32", choices=["float32", "float16", "int8"])
    sp.add_argument("--block-size", type=int, default=4096)
    sp.add_argument(
        "--checksum-bytes",
        type=int,
        default=None,
        help="bytes each block checksum covers (64..block size; default 512)",
    )
    sp.add_argument("--seed", type=int, default=0)

    sp = add("import", cmd_import,
             "add every 2-D float tensor of torch, safetensors, .npz or .npy files as tables "
             "(creating the store if missing), all in one version")  # fmt: skip
    sp.add_argument("store", type=Path)
    sp.add_argument("files", type=Path, nargs="+", metavar="FILE")
    sp.add_argument("--codec", default="float32", choices=["float32", "float16", "int8"])
    sp.add_argument("--match", metavar="REGEX",
                    help="import only tensors whose key contains a match (re.search)")  # fmt: skip
    sp.add_argument("--block-size", type=int, default=4096, help="of a new store")

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
    sp.add_argument("ids", type=_row_id, nargs="+")

    sp = add("replay", cmd_replay, "replay a trace through the store and print its counters")
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path)
    sp.add_argument("--cache-bytes", type=_size, help="total DRAM for caches (default: tuned)")
    sp.add_argument("--threshold", type=_threshold_arg,
                    help="admission threshold: an integer >= 0, or never")  # fmt: skip
    sp.add_argument("--pinned-share", type=float)
    sp.add_argument("--batch-size", type=int, default=256, help="queries per lookup_many call")
    sp.add_argument(
        "--holdout",
        type=_open_fraction,
        default=None,
        help="replay only this last share of the queries (0 < H < 1; default: all of them)",
    )
    sp.add_argument("--cold", action="store_true", help="drop block files from the page cache")
    sp.add_argument("--io", choices=["mmap", "direct"], default="mmap",
                    help="read block files mapped (mmap) or with O_DIRECT (direct)")  # fmt: skip

    sp = add("calibrate", cmd_calibrate, "measure this machine's lookup costs, store them")
    sp.add_argument("store", type=Path)
    sp.add_argument("--quick", action="store_true", help="fewer, smaller measurements")

    sp = add("plan", cmd_plan, "plan strategies and workers per table for a trace, and measure")
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path)
    sp.add_argument("--workers", type=_positive_int, required=True,
                    help="worker threads (W >= 1; --apply refuses more than the CPUs this "
                         "process may use, unless --force)")  # fmt: skip
    sp.add_argument("--budget", type=_size, help="DRAM bytes (default: 25%% of the tables)")
    sp.add_argument("--apply", action="store_true", help="store the plan; later opens serve it")
    sp.add_argument("--force", action="store_true",
                    help="with --apply: apply even a plan measured slower than the uniform "
                         "mapping, or more workers than CPUs")  # fmt: skip
    sp.add_argument("--batch-size", type=int, default=256, help="queries per lookup_many call")
    sp.add_argument("--holdout", type=_open_fraction, default=0.5,
                    help="share of later queries measured on (0 < H < 1)")  # fmt: skip
    sp.add_argument("--repeats", type=int, default=3, help="interleaved repetitions")

    sp = add("relayout", cmd_relayout, "rebuild layouts from a trace, judged on held-out queries")
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path, help="a trace .npz or a directory of recorded queries")
    sp.add_argument(
        "--method",
        default="auto",
        choices=["auto", "identity", "random", "frequency", "metis", "hypergraph"],
    )
    sp.add_argument("--holdout", type=_open_fraction, default=0.2,
                    help="share of later queries held out (0 < H < 1)")  # fmt: skip
    sp.add_argument("--cache-bytes", type=_size, help="DRAM to decide for (default: current)")
    sp.add_argument("--batch-size", type=int, default=256, help="queries per serving call")
    sp.add_argument("--force", action="store_true", help="commit even if not better")
    sp.add_argument("--dry-run", action="store_true", help="report, commit nothing")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--max-tuning-lookups", type=int, default=None, metavar="N",
                    help="above N tuning lookups per table, choose policies (and auto's "
                         "configuration) on the most recent N; held-out figures stay whole "
                         "(default: bandstore.options.RelayoutOptions.max_tuning_lookups; 0: "
                         "no bound)")  # fmt: skip

    sp = add("size-cache", cmd_size_cache,
             "size each table's DRAM cache within a budget by mini cache simulation")  # fmt: skip
    sp.add_argument("store", type=Path)
    sp.add_argument("trace", type=Path, help="the tuning trace (.npz or a recorded directory)")
    sp.add_argument("--budget", type=_size, required=True, help="total DRAM bytes (e.g. 64M)")
    sp.add_argument("--sample-rate", type=_rate, default=0.01,
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

    sp = sub.add_parser(
        "serve",
        help="serve a store over HTTP (extra [serve])",
        description="Serve lookups (and a DLRM's predictions with --model) over HTTP.",
    )
    sp.add_argument("store", type=Path)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--model", type=Path, help="a DLRM directory (config.json + safetensors)")
    sp.add_argument("--max-batch-size", type=int, default=1024,
                    help="bags per merged lookup (0: no batching)")  # fmt: skip
    sp.add_argument("--max-wait-ms", type=float, default=1.0,
                    help="how long a batch waits for more requests")  # fmt: skip
    sp.add_argument("--max-queue", type=int, default=256,
                    help="waiting requests before 429 Too Many Requests")  # fmt: skip
    sp.add_argument("--max-body-bytes", type=_size, default=64 << 20,
                    help="larger request bodies are refused with 413")  # fmt: skip
    sp.add_argument("--cache-bytes", type=_size, help="DRAM for row caches (default: tuned)")
    sp.add_argument("--record", type=Path, help="append sampled queries to this directory")
    sp.add_argument("--sample-rate", type=float, help="share of queries recorded (0.01)")
    sp.add_argument("--workers", type=int, help="lookup worker threads (default: the plan's)")
    sp.add_argument("--io", choices=["mmap", "direct"], default="mmap",
                    help="read block files mapped (mmap) or with O_DIRECT (direct)")  # fmt: skip
    sp.add_argument("--allow-updates", action="store_true",
                    help="serve POST /v1/update (opens the store writable)")  # fmt: skip
    sp.add_argument("--no-follow-versions", action="store_true",
                    help="keep serving the version opened (default: move to a version "
                    "committed meanwhile, e.g. by tools/rebuild.py, between batches)")  # fmt: skip
    sp.add_argument("--log-level", default="info",
                    choices=["critical", "error", "warning", "info", "debug"])  # fmt: skip
    sp.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local: one process; ray: sharded over Ray actors ([ray])")  # fmt: skip
    sp.add_argument("--shards", type=int, help="shard actors (--engine ray; default 2)")
    sp.add_argument("--replicas", type=int, help="actors per shard, failed over (default 1)")
    sp.add_argument("--address", help="a Ray cluster to join (default: start a local one)")
    sp.add_argument("--split-rows", type=int,
                    help="tables of more rows are split by row range over every shard")  # fmt: skip
    sp.set_defaults(func=cmd_serve)

    tp = sub.add_parser("trace", help="convert or generate traces", epilog=EXIT_STATUS,
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    tsub = tp.add_subparsers(dest="trace_command", required=True, metavar="COMMAND")
    sp = tsub.add_parser("convert", help="convert a public log format to a trace (.npz)")
    sp.add_argument("format", choices=["lightgcn", "lastfm", "movielens", "criteo", "avazu", "csv"])
    sp.add_argument("input", type=Path)
    sp.add_argument("output", type=Path)
    sp.add_argument("--session-gap", type=float, help="movielens: seconds between sessions")
    sp.add_argument("--top", type=int, help="lastfm: artists per user")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_trace_convert, _parser=sp)
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
    sp.set_defaults(func=cmd_trace_synth, _parser=sp)
    return p


def _message(exc: BaseException) -> str:
    """An exception as one line for a user: an OSError as "what: which file"."""
    if isinstance(exc, OSError) and not isinstance(exc, BandstoreError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{exc.strerror}: {where}" if where else exc.strerror
    return str(exc)


#: Commands that run numba kernels (the first run compiles them).
_COMPILING = {"demo", "create", "verify", "lookup", "replay", "relayout", "size-cache",
              "calibrate", "plan"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (``EXIT_STATUS``), never raise for a user's
    mistake or a bad file: those are one ``bandstore: error: ...`` line on stderr."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    if args.command in _COMPILING and not kernels_compiled():
        print("bandstore: compiling kernels (first run only)...", file=sys.stderr, flush=True)
    try:
        return int(args.func(args) or 0)
    except SystemExit as exc:  # a usage error found after parsing (_usage), already printed
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    except (BandstoreError, OSError) as exc:
        print(f"bandstore: error: {_message(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("bandstore: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
