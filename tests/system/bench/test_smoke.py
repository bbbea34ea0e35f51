"""The benchmark harness runs end to end (``bench/run.py --smoke``): bare proxy, sidecar (memory store) and
the API-client variant (bearer access tokens from the bench's own issuer), real logins through the dev IdP,
one short load run each, a results file and a Markdown table; and with ``--baseline``, the same sidecars
run from another source tree next to the working tree's, new/old ratios, and a loud refusal of a baseline
that would import the working tree's code. Non-2xx answers mark a system's figures invalid.

Nothing here needs a package beyond what ``make test`` installs (wrk is used when present, otherwise a
Python load generator), and nothing asserts on timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from support import REPO

RUN = REPO / "bench" / "run.py"


def _bench_module(name: str) -> ModuleType:
    """A module of bench/ (not a package), under a name that cannot shadow anything."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(240)
def test_smoke_run_produces_results_and_a_table(tmp_path: Path) -> None:
    """--smoke logs in to the sidecar, mints access tokens for the bearer variant, loads every system, and
    reports each with its figures; every bearer request was accepted (2xx)."""
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
    assert set(throughput) == {"bare-1w", "sidecar-memory-1w", "sidecar-bearer"}
    for row in throughput.values():
        assert row["requests"] > 0
        assert row["rps"] > 0
        assert row["non2xx"] == 0  # every request carried a live session, or an access token the sidecar took
    assert throughput["sidecar-bearer"]["credential"] == "Authorization"
    assert throughput["sidecar-memory-1w"]["credential"] == "Cookie"
    assert results["bearer"]["tokens"] == 8  # --smoke: 8 sessions per system, 8 tokens
    assert "sidecar-bearer" not in results["logins"]  # an API client signs in nowhere
    login = results["logins"]["sidecar-memory-1w"]
    assert login["sessions"] >= 1 and login["failures"] == 0
    assert login["rp_cpu_ms_per_callback"] is not None
    assert any(c["check"] == "sidecar-memory-1w / bare-1w req/s" for c in results["ratios"])
    assert "| sidecar-memory-1w | 1 |" in proc.stdout
    assert "| bare-1w | 1 |" in proc.stdout
    assert "| sidecar-bearer | 1 |" in proc.stdout


def _baseline(tmp_path: Path) -> tuple[str, Path | None]:
    """``HEAD`` (a temporary git worktree) in a git checkout; otherwise a copy of ``proxy/`` as a path."""
    head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        return "HEAD", None
    tree = tmp_path / "baseline"
    shutil.copytree(REPO / "proxy", tree / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    return str(tree), tree


@pytest.mark.timeout(240)
def test_smoke_baseline_runs_both_trees_side_by_side(tmp_path: Path) -> None:
    """--baseline: the memory sidecar runs from the baseline tree too (probed to import that tree, not the
    working tree), gets its own logins, is loaded in the same repetition, and a new/old row is reported;
    a worktree made for a ref is removed again."""
    spec, tree = _baseline(tmp_path)
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--smoke",
            "--no-install",
            "--only",
            "sidecars",
            "--baseline",
            spec,
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert "error" not in results
    throughput = results["throughput"]
    # --only sidecars: no bare proxy
    assert set(throughput) == {"sidecar-memory-1w", "sidecar-memory-1w@old", "sidecar-bearer", "sidecar-bearer@old"}
    for row in throughput.values():
        assert row["runs"] == 1 and row["rps"] > 0 and row["non2xx"] == 0
    assert results["logins"]["sidecar-memory-1w@old"]["sessions"] >= 1  # a memory store is its process's own
    baseline = results["baseline"]
    old_tree = Path(baseline["tree"])
    assert Path(baseline["probe"]["proxy"]) == old_tree / "proxy" / "__init__.py"
    assert Path(results["new"]["probe"]["proxy"]) == REPO / "proxy" / "__init__.py"
    rows = {row["variant"]: row for row in results["comparison"]}
    assert set(rows) == {"sidecar-memory-1w", "sidecar-bearer"}
    for row in rows.values():
        assert row["authenticated"] and row["rps_ratio"] > 0 and row["ok"] is not None
    assert "### new/old" in proc.stdout
    assert "| sidecar-memory-1w | " in proc.stdout and "| sidecar-bearer | " in proc.stdout
    if tree is None:  # the temporary worktree is gone, from disk and from git's list
        assert not old_tree.exists()
        listed = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
        assert str(old_tree) not in listed


@pytest.mark.timeout(240)
def test_routes_variant_runs_with_its_table_and_against_a_baseline_without_routes(tmp_path: Path) -> None:
    """--routes 20: sidecar-routes20 runs with 20 routes (19 that never match the benchmark's path, one that
    admits its users), is checked to apply them before any load, and every request passes. A baseline from
    before routes (here: a copy of proxy/ whose config refuses the key) runs its twin without them, and the
    new/old row says the configs differ."""
    tree = tmp_path / "before-routes"
    shutil.copytree(REPO / "proxy", tree / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    validate = tree / "proxy" / "config" / "validate.py"
    text = validate.read_text()
    # The line of the top-level keys that names routes: without it there, the copy refuses the key.
    (line,) = [k for k in text.splitlines() if '"upstream_max_connections",' in k and ' "routes",' in k]
    validate.write_text(text.replace(line, line.replace(' "routes",', "")))
    out = tmp_path / "routes.json"
    args = ["--smoke", "--no-install", "--only", "sidecars", "--routes", "20", "--baseline", str(tree)]
    proc = subprocess.run(
        [sys.executable, str(RUN), *args, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=220
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["routes"] == {"variant": "sidecar-routes20", "routes": 20, "checked": {"/admin-0/": 403, "/": 200}}
    throughput = results["throughput"]
    for name in ("sidecar-routes20", "sidecar-routes20@old"):
        assert throughput[name]["rps"] > 0 and throughput[name]["non2xx"] == 0, name
    rows = {row["variant"]: row for row in results["comparison"]}
    assert rows["sidecar-routes20"]["config_differs"] == "old without routes (the baseline has none)"
    assert rows["sidecar-routes20"]["authenticated"] and rows["sidecar-routes20"]["ok"] is not None
    assert "sidecar-routes20@old ran without routes" in proc.stdout


def test_full_runs_the_routes_variant_with_assertion_and_roles(tmp_path: Path) -> None:
    """--full: the routes variant (20 routes by default) also carries `assertion: {}` and roles; it must publish
    its signing key (/oauth2/jwks.json answers 200 only with an assertion configured) and apply its routes before
    any load, and every request passes."""
    out = tmp_path / "full.json"
    args = ["--smoke", "--no-install", "--only", "sidecars", "--full"]
    proc = subprocess.run(
        [sys.executable, str(RUN), *args, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=220
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["full"]["variant"] == "sidecar-routes20" and results["full"]["config"]["assertion"] == {}
    assert results["routes"]["checked"] == {"/admin-0/": 403, "/": 200}
    row = results["throughput"]["sidecar-routes20"]
    assert row["rps"] > 0 and row["non2xx"] == 0
    assert "sidecar-routes20" in results["identity"]["variants"]
    assert "assertion: {} and roles on" in proc.stdout


def test_the_full_variant_runs_back_to_back_with_the_system_it_is_judged_against(monkeypatch) -> None:
    """--full's variant and sidecar-redis-cache are neighbours in every repetition (in alternating order), as each
    system is with its baseline twin; every system runs once per repetition."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # run.py's own imports (_paths, stack...)
    run = _bench_module("run")
    systems = ["bare-2w", "passthrough-2w", "sidecar-redis-cache", "sidecar-redis-cache@old", "sidecar-bearer",
               "sidecar-routes20", "sidecar-routes20@old", "apache"]  # fmt: skip
    full = {"variant": "sidecar-routes20", "against": "sidecar-redis-cache"}
    groups = run.run_groups(systems, full)
    for rep in range(6):
        order = run.run_order(groups, rep)
        assert sorted(order) == sorted(systems)
        at = {name: i for i, name in enumerate(order)}
        assert abs(at["sidecar-redis-cache"] - at["sidecar-redis-cache@old"]) == 1
        assert abs(at["sidecar-routes20"] - at["sidecar-routes20@old"]) == 1
        together = sorted(at[n] for n in ("sidecar-redis-cache", "sidecar-redis-cache@old", "sidecar-routes20"))
        assert together[2] - together[0] <= 3, order  # the four in a row
    firsts = {run.run_order(groups, rep).index("sidecar-routes20") < run.run_order(groups, rep).index(
        "sidecar-redis-cache") for rep in range(2)}  # fmt: skip
    assert firsts == {True, False}, "the pair's order alternates"
    # Without --full's pairing (or without its partner) the groups are the twins alone.
    assert run.run_groups(systems, None) == [
        ["bare-2w"], ["passthrough-2w"], ["sidecar-redis-cache", "sidecar-redis-cache@old"], ["sidecar-bearer"],
        ["sidecar-routes20", "sidecar-routes20@old"], ["apache"],
    ]  # fmt: skip


def test_the_routes_variant_has_one_matching_route_after_the_rest():
    routes = _bench_module("routes")
    table = routes.table(20)
    assert len(table) == 20 and table[-1]["path"] == "^/"
    assert not any(re.search(r["path"], "/") for r in table[:-1])
    assert all("methods" not in r for r in table)  # every regex is searched, as a GET to / would
    assert routes.probe(20) == "/admin-0/" and re.search(table[0]["path"], "/admin-0/")


@pytest.mark.timeout(120)
def test_baseline_that_would_import_the_working_tree_is_refused(tmp_path: Path) -> None:
    """A baseline whose venv runs another checkout's code (here: this checkout's editable install) fails
    before anything starts, naming the file it would have imported."""
    venv = REPO / ".venv" / "bin"
    assert (venv / "python").exists(), "this checkout's .venv is missing (make install creates it)"
    tree = tmp_path / "stale"
    shutil.copytree(REPO / "proxy", tree / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / ".venv" / "bin").mkdir(parents=True)
    script = tree / ".venv" / "bin" / "sso-sidecar"
    script.write_text(f"#!{venv / 'python'}\nimport sys\nfrom proxy.cli import main\nsys.exit(main())\n")
    os.chmod(script, 0o755)
    args = ["--smoke", "--no-install", "--only", "sidecars", "--baseline", str(tree), "--out", str(tmp_path / "x.json")]
    proc = subprocess.run(
        [sys.executable, str(RUN), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 1
    assert f"would import {REPO / 'proxy' / '__init__.py'}, not the tree under test" in proc.stderr, proc.stderr


def test_non2xx_answers_flag_a_system_and_invalidate_its_comparison() -> None:
    """A system whose measured runs got refusals (a 401 storm is fast) is flagged in the checks and the
    table, and its new/old row has no verdict; systems without refusals are not flagged."""
    report = _bench_module("report")

    def row(rps: float, non2xx: int) -> dict[str, object]:
        each = [{"rps": rps}]
        return {"workers": 2, "rps": rps, "rps_min": rps, "rps_max": rps, "p50_ms": 1.0, "p99_ms": 2.0,
                "non2xx": non2xx, "socket_errors": 0, "redis_cmds_per_s": None, "each": each}  # fmt: skip

    out: dict[str, object] = {
        "throughput": {
            "sidecar-bearer": row(9000.0, 1234),
            "sidecar-bearer@old": row(5000.0, 0),
            "sidecar-redis-cache": row(5000.0, 0),
            "sidecar-redis-cache@old": row(5000.0, 0),
        },
        "baseline": {},
    }
    assert report.non2xx(out) == {"sidecar-bearer": 1234}
    out["ratios"] = report.ratios(out)
    out["comparison"] = report.comparison(out)
    flags = [c for c in out["ratios"] if c["ok"] is False]
    assert [(c["check"], c["value"]) for c in flags] == [("sidecar-bearer: every answer 2xx", 1234)]
    rows = {r["variant"]: r for r in out["comparison"]}
    assert rows["sidecar-bearer"]["ok"] is None and rows["sidecar-redis-cache"]["ok"] is True
    table = report.markdown(out)
    assert "**INVALID: non-2xx answers from sidecar-bearer (1,234)." in table
    assert "| sidecar-bearer | 9,000 | 5,000 | 1.800 | 1.80 |" in table and "**invalid** (non-2xx answers)" in table


# The last commit before ``assertion`` and ``roles`` existed: a baseline that refuses them.
BEFORE_IDENTITY = "16693924d561218a7e1d02c2322c5139ddf33fa7"


@pytest.mark.timeout(240)
def test_smoke_identity_runs_the_session_sidecars_with_assertion_and_roles(tmp_path: Path) -> None:
    """--identity: the cookie-session sidecars run with ``assertion: {}`` and ``roles`` (each proves it by its
    JWKS before any load); a baseline from before these keys runs without them, and its row says so."""
    known = subprocess.run(["git", "cat-file", "-e", BEFORE_IDENTITY], cwd=REPO, capture_output=True)
    spec = BEFORE_IDENTITY if known.returncode == 0 else _baseline(tmp_path)[0]
    out = tmp_path / "identity.json"
    args = ["--smoke", "--no-install", "--only", "sidecars", "--identity", "--baseline", spec, "--out", str(out)]
    proc = subprocess.run([sys.executable, str(RUN), *args], cwd=REPO, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["identity"]["variants"] == (
        ["sidecar-memory-1w"] if known.returncode == 0 else ["sidecar-memory-1w", "sidecar-memory-1w@old"]
    )
    assert results["identity"]["config"]["assertion"] == {}
    for row in results["throughput"].values():
        assert row["non2xx"] == 0
    rows = {row["variant"]: row for row in results["comparison"]}
    if known.returncode == 0:
        assert rows["sidecar-memory-1w"]["config_differs"] == "old without assertion and roles (it has neither)"
        assert "old without assertion and roles" in proc.stdout
    assert rows["sidecar-bearer"]["config_differs"] is None  # API clients: not an identity variant
