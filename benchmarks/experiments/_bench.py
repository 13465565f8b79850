"""Puts ``benchmarks/`` on the import path (``paths.py``, ``bench_*.py``) for the archived
experiments in this folder, which reuse the benchmarks' workloads and helpers."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
