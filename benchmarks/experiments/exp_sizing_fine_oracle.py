"""Experiment: the oracle split of synthetic-5 on finer grids near its choice (issue 4, 5% budget).

exp_sizing_choice.py's oracle is a knapsack on exact held-out curves over size_cache's grids (33
sizes, thresholds 0/1/4/16/never, pinned shares 0/0.25/0.5/0.75/0.9/1). The store takes any
threshold, share and size, so that oracle is not the best of the store's policies. Here the two
tables that share the 5% budget (t1_000_000, t10_000_000; the three small ones are cached whole)
are simulated again exactly on the held-out part (tuning counts, warmed on the tuning part) at 12
sizes around the oracle's choice, thresholds 0/1/2/4/8/16/never and shares
0/0.25/0.5/0.6/0.75/0.8/0.9/1, and the knapsack is run on these points with the oracle's.

    python benchmarks/experiments/exp_sizing_choice.py --workloads synthetic-5 --variants oracle \
        --save-curves /tmp/sz           # the oracle's curves: /tmp/sz/synthetic-5.npz
    python benchmarks/experiments/exp_sizing_fine_oracle.py /tmp/sz/synthetic-5.npz

Prints the finer oracle's blocks per 1000 held-out lookups and its choice at 5% and 20%.
"""

import sys
import time

import _bench  # noqa: F401 - benchmarks/ on the import path
import bench_sizing as bs
import numpy as np

from bandstore.kernels.cache import NEVER
from bandstore.options import SimOptions
from bandstore.serve.cache import cache_row_bytes
from bandstore.tune.sim import knapsack, simulate

RPB = 4096 // (4 * bs.DIM)
trace = bs.synthetic_workload(10_000_000, 100_000, 0)
n_tune = int(round(0.8 * trace.n_queries))
crb = cache_row_bytes(bs.DIM)
total_bytes = sum(max(1, trace.num_rows[n]) * crb for n in trace.table_names)
held = trace.n_lookups() - trace.query_slice(0, n_tune).n_lookups()
per = 1000 / held
z = np.load(sys.argv[1])
ranges = {"t1_000_000": (11.0e6, 29.0e6), "t10_000_000": (6.5e6, 22.0e6)}
THR = (0, 1, 2, 4, 8, 16, NEVER)
SH = (0.0, 0.25, 0.5, 0.6, 0.75, 0.8, 0.9, 1.0)
fine = {}
for name, (lo, hi) in ranges.items():
    sizes = np.unique((np.linspace(lo, hi, 12) // crb * crb).astype(np.int64))
    idx, off = trace.table(name)
    rows = trace.num_rows[name]
    c = np.bincount(idx[: off[n_tune]], minlength=rows)
    t0 = time.time()
    cv = simulate(
        idx,
        off,
        np.arange(rows, dtype=np.int64),
        RPB,
        bs.DIM,
        c,
        sizes_bytes=sizes,
        options=SimOptions(thresholds=THR, pinned_shares=SH, batch_size=bs.BATCH),
        warmup_queries=n_tune,
        table=name,
        check=False,
    )
    fine[name] = cv
    bs.log(f"{name}: {time.time() - t0:.0f}s")
    for k in range(sizes.size):
        f = cv.blocks_read[:, :, k]
        i, j = np.unravel_index(np.argmin(f), f.shape)
        print(
            f"  {name} {sizes[k] / 1e6:8.3f}MB best {f[i, j] * per:8.3f} thr {THR[i]} pin {SH[j]}",
            flush=True,
        )
res = {}
for frac in (0.05, 0.2):
    budget = int(frac * total_bytes)
    opts, names = [], []
    for n in trace.table_names:
        w = z[f"{n}/sizes_bytes"].astype(np.int64)
        cst = z[f"{n}/blocks_read"].min(axis=(0, 1))
        if n in fine:
            w = np.concatenate([w, fine[n].sizes_bytes])
            cst = np.concatenate([cst, fine[n].blocks_read.min(axis=(0, 1))])
        opts.append((w, cst))
        names.append(n)
    picks = knapsack(opts, budget)
    tot = sum(opts[g][1][p] for g, p in enumerate(picks))
    res[frac] = {
        n: (int(opts[g][0][picks[g]]), float(opts[g][1][picks[g]] * per))
        for g, n in enumerate(names)
    }
    print(f"{frac:.0%}: finer oracle {tot * per:.2f} / 1000; {res[frac]}", flush=True)
