"""Where things are, and ``tests/`` on ``sys.path`` so the test suite's process helpers (``support.*``)
can be reused by the benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TESTS = REPO / "tests"
RESULTS = BENCH / "results"

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
