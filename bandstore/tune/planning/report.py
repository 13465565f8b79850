"""Text output of plans and comparisons, and the ``bandstore plan`` command's logic."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bandstore.errors import InvalidArgumentError, PlanError
from bandstore.serve.plan import check_workers


def format_plan(plan: dict[str, Any]) -> str:
    """One line per table: strategy, worker(s), cache, predicted time, DRAM."""
    lines = [f"{plan.get('name', 'plan')}: {plan['workers']} worker(s)"]
    width = max([len(n) for n in plan["tables"]] + [5])
    lines.append(
        f"  {'table':<{width}}  {'strategy':<16}{'workers':>9}{'cache MiB':>11}"
        f"{'pred. us':>10}{'DRAM MiB':>10}"
    )
    for n, tp in plan["tables"].items():
        strat = tp["strategy"] if tp["strategy"] != "split" else f"split/{tp['inner']}"
        ws = tp.get("workers", [tp.get("worker", 0)])
        cache = tp.get("cache_bytes")
        pred = tp.get("predicted_ns")
        dram = tp.get("dram_bytes")
        if tp.get("replicate"):
            strat += f"+{len(tp['replicate'])}hot"
        lines.append(
            f"  {n:<{width}}  {strat:<16}{','.join(map(str, ws)):>9}"
            f"{'' if cache is None else f'{cache / 2**20:.2f}':>11}"
            f"{'' if pred is None else f'{pred / 1e3:.1f}':>10}"
            f"{'' if dram is None else f'{dram / 2**20:.2f}':>10}"
        )
    pred = plan.get("predicted") or {}
    if pred:
        loads = ", ".join(f"{x / 1e3:.0f}" for x in pred.get("worker_ns", []))
        lines.append(
            f"  predicted batch {pred['batch_ns'] / 1e3:.0f} us (worker loads {loads} us, "
            f"serial {pred['serial_ns'] / 1e3:.0f} us)"
        )
    return "\n".join(lines)


def format_comparison(result: dict[str, Any], *, advice: bool = True) -> str:
    """The figures of :func:`bandstore.tune.planning.compare_plans` as text (``advice``:
    suggest commands on the store, which a caller whose store is gone turns off)."""
    lines = [format_plan(result["plans"]["plan"]), ""]
    lines.append(
        f"budget {result['budget_bytes'] / 2**20:.1f} MiB, batches of {result['batch_size']} "
        f"queries, {result['queries']['heldout']:,} held-out queries "
        f"({result['heldout_lookups']:,} lookups)"
        + (
            ""
            if result["calibrated"]
            else "; NOT calibrated: run `bandstore calibrate STORE`"
            if advice
            else "; NOT calibrated (typical costs)"
        )
    )
    lines.append(
        f"  {'':<16}{'workers':>8}{'pred. us':>10}{'meas. us':>10}{'p99 us':>10}"
        f"{'lookups/s':>14}{'hit ratio':>11}{'DRAM MiB':>10}"
    )
    for n, r in result["results"].items():
        dram = r["dram_bytes"]
        lines.append(
            f"  {n:<16}{r['workers']:>8}{r['predicted_batch_us']:>10.0f}"
            f"{r['measured_batch_us']:>10.0f}{r['p99_batch_us']:>10.0f}"
            f"{r['lookups_per_second']:>14,.0f}{r['hit_ratio']:>11.3f}"
            f"{'' if dram is None else f'{dram / 2**20:.1f}':>10}"
        )
    sp = result["speedup"]
    lines.append(
        "  speedup: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in sp.items())
    )
    return "\n".join(lines)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_plan_command(args: argparse.Namespace) -> int:
    """``bandstore plan STORE TRACE --workers W [--budget B] [--apply [--force]] [--json]``.

    ``--apply`` stores the measured plan object itself (with the access counts that rank its
    pinned tables' rows), and refuses, unless ``--force``: a plan its own measurement shows
    slower than the uniform mapping, and more workers than the CPUs this process may use.
    A refused or failed apply changes nothing in the store.
    """
    import bandstore
    from bandstore.traces.trace import Trace
    from bandstore.tune.planning import apply_plan, compare_plans

    check_workers(args.workers)
    if args.batch_size < 1:
        raise InvalidArgumentError("--batch-size must be >= 1", argument="batch_size")
    if not 0.0 < args.holdout < 1.0:
        raise InvalidArgumentError(
            f"--holdout must be strictly between 0 and 1, got {args.holdout}",
            argument="holdout",
            value=args.holdout,
        )
    force = getattr(args, "force", False)
    cpus = available_cpus()
    if args.apply and args.workers > cpus and not force:
        raise PlanError(
            f"--workers {args.workers} is more than the {cpus} CPU(s) this process may use: "
            "the workers would share cores and the plan's timings would not hold; use "
            "--workers <= CPUs, or --force to apply anyway"
        )
    if args.workers > cpus and not args.apply:
        import sys

        print(
            f"note: {args.workers} workers on the {cpus} CPU(s) this process may use share "
            "cores; the measured times say so",
            file=sys.stderr,
        )
    trace = Trace.load(args.trace)
    comparison = compare_plans(
        args.store,
        trace,
        workers=args.workers,
        budget=args.budget,
        batch_size=args.batch_size,
        holdout=args.holdout,
        repeats=args.repeats,
    )
    result = comparison.as_dict()
    plan = comparison.plan_objects["plan"]
    if args.apply:
        speedup = result["speedup"]["plan_vs_uniform"]
        if speedup < 1.0 and not force:
            result["applied"] = False
            _print_result(args, result)
            raise PlanError(
                f"not applied: measured here the plan serves {speedup:.2f}x the lookups/s of "
                "the uniform mapping (slower)"
                + ("" if result["calibrated"] else "; the store is not calibrated: run "
                   "`bandstore calibrate STORE` first")
                + "; --force applies it anyway"
            )  # fmt: skip
        with bandstore.open(args.store, writable=True, cache_bytes=0, plan=False) as s:
            # One source of truth: while a plan is applied it sets the cache of every table it
            # names; say which stored sizes (size-cache --apply) it takes over from.
            sized = sorted(n for n in plan.tables if "cache_bytes" in (s.catalog.tuning(n) or {}))
            apply_plan(s, plan)  # the plan object: its pinned tables' counts go with it
        result["applied"] = True
        if sized:
            result["notes"] = [
                f"note: while this plan is applied it replaces the cache sizes stored by "
                f"size-cache for {', '.join(sized)} (they stay stored; `bandstore size-cache "
                "--apply` again removes the plan)"
            ]
    _print_result(args, result)
    return 0


def _print_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=float))
        return
    print(format_comparison(result))
    if result.get("applied"):
        print(f"applied: stores opened from now on serve this plan ({args.store})")
    for note in result.get("notes", []):
        print(note)
