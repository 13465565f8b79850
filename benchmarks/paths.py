"""Where the benchmarks read the real traces and write their results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _find_data() -> Path:
    """``BANDSTORE_DATA`` if set, else the nearest ``shared/data`` beside the checkout or one of
    its parents (so a git worktree nested deeper finds the same data)."""
    if os.environ.get("BANDSTORE_DATA"):
        return Path(os.environ["BANDSTORE_DATA"])
    for parent in HERE.parents[1:]:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return HERE.parents[1] / "shared" / "data"


#: The real traces. Never committed; benchmarks skip what is absent.
DATA = _find_data()


def run_facts(script: str, argv: list[str] | None) -> tuple[str, str, str]:
    """What a results file says of its run: the command that reproduces it, the commit, and
    the load average."""
    cmd = " ".join([f"python benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()  # fmt: skip
    return cmd, commit, ", ".join(f"{x:.2f}" for x in os.getloadavg())
