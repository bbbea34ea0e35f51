"""checkov, with the committed skip list (.checkov.yaml), passes the Dockerfile, the plain Kubernetes example
and every rendered kustomize overlay. It runs with the image tests because it is slow to install: ``make
test-image`` puts it in a virtualenv of its own (.venv-checkov), apart from the project's dependencies."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
CONFIG = REPO / ".checkov.yaml"


def checkov() -> str:
    local = REPO / ".venv-checkov" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    assert found, "checkov is not installed: run make test-image"
    return found


def scan(*files: Path) -> subprocess.CompletedProcess[str]:
    args = [checkov(), "--skip-download", "--compact", "--quiet", "--config-file", str(CONFIG)]
    for path in files:
        args += ["--file", str(path)]
    return subprocess.run(
        [*args, "--framework", "kubernetes", "dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("overlays")
    paths = []
    for overlay in sorted((KUBERNETES / "overlays").iterdir()):
        done = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        path = out / f"{overlay.name}.yaml"
        path.write_text(done.stdout)
        paths.append(path)
    assert len(paths) >= 3
    return paths


def test_checkov_passes_the_dockerfile_and_every_manifest(rendered):
    done = scan(REPO / "Dockerfile", KUBERNETES / "sidecar.yaml", *rendered)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    counts = [int(n) for n in re.findall(r"Passed checks: (\d+), Failed checks: 0", done.stdout)]
    assert len(counts) == 2 and min(counts) > 10, done.stdout  # both frameworks ran, and found things to check


def test_checkov_fails_a_privileged_container(tmp_path):
    """The scan above can fail: a privileged pod that keeps its token is reported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: ns}\nspec:\n  containers:\n"
        "    - name: c\n      image: registry.example.com/c@sha256:" + "0" * 64 + "\n"
        "      securityContext: {privileged: true}\n"
    )
    done = scan(bad)
    assert done.returncode != 0 and "CKV_K8S_16" in done.stdout, done.stdout[-3000:]


def test_every_skipped_check_gives_its_reason():
    lines = CONFIG.read_text().splitlines()
    skipped = [i for i, line in enumerate(lines) if re.match(r"\s+- CKV_", line)]
    assert skipped
    for i in skipped:
        before = lines[i - 1].strip()
        assert before.startswith("#") or re.match(r"\s+- CKV_", lines[i - 1]), f"no reason above {lines[i]}"
