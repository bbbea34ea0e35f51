"""``make check-demo``: ``sso-sidecar check`` on config/demo.yaml with what ``make demo`` gives its sidecar,
against the demo's own provider setup (deploy/demo/run_demo.py's, on its fixed port 9000)."""

from __future__ import annotations

import importlib.util
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from support import REPO
from support.idp import DevIdP
from support.procs import LOOPBACK

RUN_DEMO = REPO / "deploy" / "demo" / "run_demo.py"
pytestmark = pytest.mark.usefixtures("demo_ports")  # the demo's fixed ports, one test at a time (conftest.py)


def _run_demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_demo", RUN_DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO = _run_demo_module()


def demo_port_is_free() -> bool:
    with socket.socket() as s:
        # As a server binds it: connections of an earlier test in TIME_WAIT do not make it taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, DEMO.IDP_PORT))
        except OSError:
            return False
    return True


def check_demo(state: Path) -> subprocess.CompletedProcess[str]:
    """What ``make check-demo`` runs, with the demo's state in ``state`` instead of .demo/."""
    return subprocess.run(
        [sys.executable, str(RUN_DEMO), "--check", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def demo_idp(tmp_path: Path) -> Iterator[DevIdP]:
    """The local provider exactly as ``make demo`` configures it (issuer, port, the console-demo client)."""
    assert demo_port_is_free(), f"port {DEMO.IDP_PORT} is taken (a running `make demo`?): the test needs it"
    idp = DevIdP(DEMO.IDP_CONFIG, tmp_path / "idp").start()
    yield idp
    idp.stop()


def test_check_demo_checks_the_demo_config_with_the_demos_own_secret_and_state(tmp_path, demo_idp):
    state = tmp_path / "demo-state"
    done = check_demo(state)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: the config is usable." in done.stdout
    assert "client credentials:        accepted by the token endpoint" in done.stdout
    # SSO_DEMO_STATE is the demo's state directory: the settings page's record is looked for there.
    assert f"file {state}/page-settings.json" in done.stdout
    # The cookie secret is the demo's lasting one, made as `make demo` makes it (0600, kept across runs) ...
    secret_file = state / "cookie-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    kept = secret_file.read_text()
    assert check_demo(state).returncode == 0 and secret_file.read_text() == kept
    # ... and it is what check judges, not a random stand-in: a placeholder there is refused by name.
    secret_file.write_text("REPLACE-ME-REPLACE-ME-REPLACE-ME-REPLACE-ME\n")
    refused = check_demo(state)
    assert refused.returncode == 2
    assert "session.cookie_secret" in refused.stderr and "REPLACE-ME" not in refused.stdout + refused.stderr


def test_check_demo_says_the_demo_is_not_running_when_its_provider_is_down(tmp_path):
    assert demo_port_is_free(), f"port {DEMO.IDP_PORT} is taken (a running `make demo`?): the test needs it free"
    done = check_demo(tmp_path / "demo-state")
    assert done.returncode == 1
    assert "sso.issuer_url" in done.stderr and "connection refused" in done.stderr
    assert "the demo is not running" in done.stderr and "make demo" in done.stderr
    assert "Traceback" not in done.stderr
