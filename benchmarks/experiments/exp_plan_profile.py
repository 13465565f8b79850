"""Where does a plan's batch time go? Per table and per worker, measured vs predicted.

Builds (or reuses, under ``--workdir``) one of bench_plan's workloads, plans it as
``compare_plans`` does, warms every contender on the tuning part, then serves the held-out
batches once each (contenders interleaved) with every runner's ``run_part`` timed. Prints per
contender: measured vs predicted batch time, the workers' busy time, and per table (and part)
the measured vs predicted ns per batch.

    python benchmarks/experiments/exp_plan_profile.py criteo --quick
    python benchmarks/experiments/exp_plan_profile.py extreme --contenders plan "plan, 1 thread"

"plan, 1 thread": the 2-worker plan served on one thread (its parts one after the other).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/

import bench_plan  # noqa: E402

import bandstore  # noqa: E402
from bandstore.demo import create_store_for_trace  # noqa: E402
from bandstore.options import ServeOptions  # noqa: E402
from bandstore.traces.trace import Trace  # noqa: E402
from bandstore.tune.planning import Calibration  # noqa: E402
from bandstore.tune.planning import _batches as make_batches  # noqa: E402
from bandstore.tune.planning.model import profile_trace  # noqa: E402
from bandstore.tune.planning.planner import make_plan, uniform_plan  # noqa: E402


def workload(name: str, quick: bool, seed: int = 0):
    d = bench_plan.DATA
    if name == "criteo":
        return bench_plan.real_workload("criteo", d / "criteo-8k" / "criteo-8k.tsv",
                                        20 if quick else 200, 60_000 if quick else 200_000,
                                        seed), 4096  # fmt: skip
    if name == "avazu":
        return bench_plan.real_workload("avazu", d / "avazu-9k" / "avazu-9k.csv",
                                        50 if quick else 500, 60_000 if quick else 200_000,
                                        seed), 4096  # fmt: skip
    if name == "dlrm":
        return bench_plan.dlrm_workload(1_000_000 if quick else 10_000_000,
                                        12_000 if quick else 40_000, seed), 256  # fmt: skip
    return bench_plan.extreme_workload(1_000_000 if quick else 4_000_000,
                                       10_000 if quick else 30_000, seed), 256  # fmt: skip


def prepare(name: str, quick: bool, workdir: Path):
    root = workdir / f"{name}-{'quick' if quick else 'full'}"
    tpath = root / "trace.npz"
    spath = root / "store"
    if not (tpath.exists() and (spath / "catalog").exists()):
        root.mkdir(parents=True, exist_ok=True)
        (trace, info), batch = workload(name, quick)
        with create_store_for_trace(spath, trace, dim=bench_plan.DIM, progress=False):
            pass
        trace.save(tpath)
        (root / "info.json").write_text(json.dumps({"info": info, "batch": batch}))
    meta = json.loads((root / "info.json").read_text())
    return spath, Trace.load(tpath), meta["batch"]


def calibration(workdir: Path, quick: bool, fresh: bool) -> Calibration:
    p = workdir / f"calibration-{'quick' if quick else 'full'}.json"
    return bench_plan.stored_calibration(p, quick, workdir, fresh)


def instrument(store, acc):
    """Wrap every runner's run_part to add its time to acc[(table, part)] and the thread's."""
    for name, (runner, _where) in store._executor.routes.items():
        orig = runner.run_part

        def timed(job, j, orig=orig, name=name):
            t0 = time.perf_counter()
            orig(job, j)
            dt = time.perf_counter() - t0
            acc["part"][(name, j)] += dt
            acc["thread"][threading.current_thread().name] += dt

        runner.run_part = timed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["criteo", "avazu", "dlrm", "extreme"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "bandstore-plan-profile",
                    help="stores, traces and calibrations are kept here between runs")  # fmt: skip
    ap.add_argument("--budget-fraction", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fresh-calibration", action="store_true")
    ap.add_argument("--contenders", nargs="*", default=["plan", "uniform", "plan, 1 worker"])
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--no-verify", action="store_true", help="serve without checksum checks")
    ap.add_argument("--switch-interval", type=float)
    args = ap.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.no_pin:
        import bandstore.serve.runtime as rt

        ex = rt.Executor
        rt.Executor = lambda w, b: ex(w, b, pin=False)
    spath, trace, batch = prepare(args.workload, args.quick, args.workdir)
    cal = calibration(args.workdir, args.quick, args.fresh_calibration)
    tune, held = trace.split(0.5)
    with bandstore.open(spath, cache_bytes=0, plan=False) as s:
        profiles = profile_trace(s, tune, batch_size=batch)
    decoded = sum(trace.num_rows[n] * bench_plan.DIM * 4 for n in trace.table_names)
    budget = int(args.budget_fraction * decoded)
    plans = {
        "plan": make_plan(profiles, cal, args.workers, budget),
        "uniform": uniform_plan(profiles, cal, args.workers, budget),
        "plan, 1 worker": make_plan(profiles, cal, 1, budget),
    }
    plans["plan, 1 thread"] = plans["plan"]
    plans = {k: v for k, v in plans.items() if k in args.contenders}
    warm = tune
    if batch <= 256 and tune.n_queries > 20_000:
        warm = tune.query_slice(tune.n_queries - 20_000, tune.n_queries)
    warm_b = make_batches(warm, batch)
    held_b = make_batches(held, batch)
    stores, accs, walls = {}, {}, {}
    faults = defaultdict(int)
    for n, plan in plans.items():
        st = bandstore.open(spath, plan=plan, workers=1 if "1 thread" in n else plan.workers,
                            options=ServeOptions(verify_reads=not args.no_verify))  # fmt: skip
        for req in warm_b:
            st.lookup_many(req)
        st.reset_stats()
        stores[n] = st
        accs[n] = {"part": defaultdict(float), "thread": defaultdict(float)}
        instrument(st, accs[n])
        walls[n] = []
    order = list(stores)
    for k, req in enumerate(held_b):
        for j in range(len(order)):
            n = order[(k + j) % len(order)]
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            stores[n].lookup_many(req)
            walls[n].append(time.perf_counter() - t0)
            faults[n] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    nb = len(held_b)
    import os

    print(f"{args.workload} {'quick' if args.quick else 'full'}: {nb} held-out batches of "
          f"{batch}, load {os.getloadavg()}")  # fmt: skip
    for n, st in stores.items():
        plan = plans[n]
        stats = st.stats()
        w = np.asarray(walls[n]) * 1e3
        print(f"\n== {n}: measured p50 {np.median(w):.2f} ms, mean {w.mean():.2f} ms; predicted "
              f"{plan.predicted['batch_ns'] / 1e6:.2f} ms (worker loads "
              f"{[round(x / 1e6, 2) for x in plan.predicted['worker_ns']]} ms, serial "
              f"{plan.predicted['serial_ns'] / 1e6:.2f})")  # fmt: skip
        print(f"   minor faults per batch: {faults[n] / nb:.0f}")
        busy = {t: v / nb * 1e3 for t, v in accs[n]["thread"].items()}
        print("   busy per batch (ms) by thread:", {t: round(v, 2) for t, v in busy.items()},
              " sum", round(sum(busy.values()), 2))  # fmt: skip
        rows = []
        for (tn, j), v in accs[n]["part"].items():
            tp = plan.tables[tn]
            p = profiles[tn]
            pred = tp.predicted_ns or 0.0
            ts = stats[tn]
            rows.append((v / nb * 1e6, tn, j, tp, pred / 1e3, p, ts))
        rows.sort(key=lambda r: -r[0])
        tot_m = sum(r[0] for r in rows)
        tot_p = sum(r[4] for r in rows)
        print(f"   sum of parts: measured {tot_m / 1e3:.2f} ms, predicted {tot_p / 1e3:.2f} ms")
        for us, tn, j, tp, pus, p, ts in rows[: args.top]:
            kind = tp.strategy if tp.strategy != "split" else f"split/{tp.inner}"
            bpl = ts["blocks_per_1000_lookups"]
            print(f"   {tn:>8}[{j}] w{tp.workers[j]} {kind:>14} cache {tp.cache_bytes / 2**20:6.1f}"
                  f" MiB rows {p.rows:>9,} L {p.lookups:8.0f}: measured {us:8.0f} us, predicted "
                  f"{pus:8.0f} us ({us / max(pus, 1e-9):4.2f}x); hit {ts['hit_ratio']:.3f}, "
                  f"blk/1k {bpl:6.1f} (predicted {1000 * p.at(tp.cache_bytes)[1]:6.1f})"
                  )  # fmt: skip
        st.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
