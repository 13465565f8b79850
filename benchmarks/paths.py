"""Where the benchmarks read the real traces and write their results."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: The real traces: the directory named by ``BANDSTORE_DATA``, else ``shared/data`` beside the
#: checkout (the project's workspace layout). Never committed; benchmarks skip what is absent.
DATA = Path(os.environ.get("BANDSTORE_DATA") or HERE.parents[1] / "shared" / "data")
