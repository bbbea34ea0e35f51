"""The benchmark harness runs end to end (``bench/run.py --smoke``): bare proxy and sidecar (memory store),
real logins through the dev IdP, one short load run each, a results file and a Markdown table.

Nothing here needs a package beyond what ``make test`` installs (wrk is used when present, otherwise a
Python load generator), and nothing asserts on timings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

RUN = REPO / "bench" / "run.py"


@pytest.mark.timeout(240)
def test_smoke_run_produces_results_and_a_table(tmp_path: Path) -> None:
    """--smoke logs in to the sidecar, loads both systems, and reports every system with its figures."""
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists(), "nginx is missing (make test installs it)"
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--no-install", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert "error" not in results
    throughput = results["throughput"]
    assert set(throughput) == {"bare-1w", "sidecar-memory-1w"}
    for row in throughput.values():
        assert row["requests"] > 0
        assert row["rps"] > 0
        assert row["non2xx"] == 0  # every request carried a live session
    login = results["logins"]["sidecar-memory-1w"]
    assert login["sessions"] >= 1 and login["failures"] == 0
    assert login["rp_cpu_ms_per_callback"] is not None
    assert any(c["check"].startswith("sidecar-memory-1w overhead vs bare-1w") for c in results["ratios"])
    assert "| sidecar-memory-1w | 1 |" in proc.stdout
    assert "| bare-1w | 1 |" in proc.stdout
