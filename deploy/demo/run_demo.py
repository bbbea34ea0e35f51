"""``make demo``: the local identity provider, the sample console and the sidecar in front of it.

Checks its prerequisites first and says how to get a missing one. Ctrl-C (or SIGTERM) stops all three.
Logs go to ``.demo/*.log``.

``make check-demo`` (``--check``): ``sso-sidecar check`` on ``config/demo.yaml`` with the environment the
demo's sidecar gets, so it checks what the demo runs; it says so when the demo's provider is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
IDP_DIR = REPO / "deploy" / "dev-idp"
STATE_DIR = REPO / ".demo"
SIDECAR = REPO / ".venv" / "bin" / "sso-sidecar"
CONFIG = REPO / "config" / "demo.yaml"
HOST = "127.0.0.1"
IDP_PORT, CONSOLE_PORT, SIDECAR_PORT = 9000, 8888, 4180
MIN_NODE = 20

IDP_CONFIG = {
    "port": IDP_PORT,
    "issuer": f"http://{HOST}:{IDP_PORT}",
    "clients": [
        {
            "client_id": "console-demo",
            "client_secret": "demo-secret",
            "redirect_uris": [f"http://{HOST}:{SIDECAR_PORT}/oauth2/callback"],
            "post_logout_redirect_uris": [f"http://{HOST}:{SIDECAR_PORT}/oauth2/signed_out"],
            "backchannel_logout_uri": f"http://{HOST}:{SIDECAR_PORT}/oauth2/backchannel-logout",
            "backchannel_logout_session_required": True,
        }
    ],
    "allow_loopback_backchannel": True,
    "refresh_tokens": True,
}


def demo_idp_config(registration_token: str, state: Path) -> dict[str, object]:
    """The provider as ``make demo`` runs it: the console-demo client, and registration behind ``registration_token``
    (the clients it registers are kept in ``state``, so a client the settings page enabled outlives a restart)."""
    return {
        **IDP_CONFIG,
        "registration_initial_access_token": registration_token,
        "clients_file": str(state / "dev-idp-clients.json"),
    }


class DemoError(Exception):
    pass


class Child:
    def __init__(self, name: str, args: list[str], state: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = state / f"{name}.log"
        with self.log_path.open("wb") as log:
            # Own session: the terminal's Ctrl-C reaches only us, and we stop the children in order.
            self.proc = subprocess.Popen(  # noqa: S603 - our own fixed command lines
                args,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(f"  {line}" for line in text[-lines:])

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running():
                raise DemoError(f"{self.name} exited before {what}; its log ({self.log_path}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"{self.name}: no {what} after {timeout:.0f}s; its log:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - fixed http://127.0.0.1 URLs
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind it: connections of a demo just stopped, in TIME_WAIT, do not make it taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def check_prerequisites() -> str:
    """Return the node binary, or raise with what to do."""
    node = shutil.which("node")
    version = ""
    if node:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout  # noqa: S603
        version = out.strip()
    m = re.match(r"v(\d+)\.", version)
    if not node or not m or int(m.group(1)) < MIN_NODE:
        found = f"found {version}" if version else "not found"
        raise DemoError(
            f"Node.js >= {MIN_NODE} is needed for the local identity provider ({found}).\n"
            "  Debian 13 / Ubuntu 24.04:  sudo apt-get install nodejs npm\n"
            "  older releases:            https://nodejs.org/en/download (or nvm install 22)"
        )
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise DemoError(
            "The identity provider's Node packages are missing.\n"
            f"  run: make demo   (or: npm ci --prefix {IDP_DIR.relative_to(REPO)})"
        )
    if not SIDECAR.exists():
        raise DemoError(f"{SIDECAR.relative_to(REPO)} is missing.\n  run: make install")
    busy = [p for p in (IDP_PORT, CONSOLE_PORT, SIDECAR_PORT) if not port_free(p)]
    if busy:
        raise DemoError(
            f"port(s) {', '.join(map(str, busy))} on {HOST} already in use; stop what listens there "
            "(an earlier demo?) and try again"
        )
    return node


def _lasting_secret(path: Path) -> str:
    """A cookie secret kept in .demo/ across runs: the settings page's record is sealed under it, so a new
    secret every run would leave the page's settings unreadable (and the sidecar, rightly, closed)."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    secret = secrets.token_urlsafe(32)
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(0o600)
    return secret


def sidecar_env(state: Path, break_glass: str) -> dict[str, str]:
    """What the demo's sidecar takes from its environment (``config/demo.yaml`` names these variables)."""
    state.mkdir(exist_ok=True)
    return {
        "COOKIE_SECRET": _lasting_secret(state / "cookie-secret"),
        "BREAK_GLASS_TOKEN": break_glass,
        "SSO_DEMO_STATE": str(state),
    }


def check(state: Path) -> int:
    """``sso-sidecar check`` on the demo's config with the demo's environment: the lasting cookie secret
    (which seals the settings page's record in ``state``), the page's state directory, and a break-glass
    token made as each demo run makes one. Its exit status is check's."""
    if not SIDECAR.exists():
        print(f"make check-demo: {SIDECAR.relative_to(REPO)} is missing.\n  run: make install", file=sys.stderr)
        return 1
    env = {**os.environ, **sidecar_env(state, secrets.token_urlsafe(24))}
    done = subprocess.run([str(SIDECAR), "check", "--config", str(CONFIG)], cwd=REPO, env=env, check=False)  # noqa: S603
    if done.returncode != 0 and not http_ok(f"{IDP_CONFIG['issuer']}/.well-known/openid-configuration"):
        print(
            f"\nmake check-demo: the demo is not running: its identity provider ({IDP_CONFIG['issuer']}) does "
            "not answer.\n  Start it with `make demo` in another terminal, then run `make check-demo` again.",
            file=sys.stderr,
        )
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make demo / make check-demo")
    parser.add_argument("--check", action="store_true", help="check config/demo.yaml as the demo runs it")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, help="the demo's state (default .demo/)")
    args = parser.parse_args(argv)
    state: Path = args.state_dir.resolve()
    if args.check:
        return check(state)
    try:
        node = check_prerequisites()
    except DemoError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1

    state.mkdir(exist_ok=True)
    idp_config = state / "dev-idp.json"
    # The provider registers clients (RFC 7591) for whoever holds this run's initial access token: the settings
    # page's "Register automatically" can be tried as with Keycloak or Okta.
    registration = secrets.token_urlsafe(18)
    idp_config.write_text(json.dumps(demo_idp_config(registration, state), indent=2), encoding="utf-8")
    children: list[Child] = []

    def shutdown(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        print("Starting the local identity provider on :9000, the console on :8888 and the sidecar on :4180 ...")
        idp = Child("dev-idp", [node, str(IDP_DIR / "server.mjs"), str(idp_config)], state)
        children.append(idp)
        idp.wait_until(lambda: "dev-idp listening on" in idp.log_path.read_text(errors="replace"), "readiness")

        console = Child("console", [sys.executable, str(REPO / "deploy" / "demo" / "console.py"),
                                    "--host", HOST, "--port", str(CONSOLE_PORT),
                                    "--sidecar", f"http://{HOST}:{SIDECAR_PORT}"], state)  # fmt: skip
        children.append(console)
        console.wait_until(lambda: http_ok(f"http://{HOST}:{CONSOLE_PORT}/api/whoami"), "readiness")

        break_glass = secrets.token_urlsafe(24)
        env = sidecar_env(state, break_glass)
        sidecar = Child("sidecar", [str(SIDECAR), "run", "--config", str(CONFIG)], state, env)
        children.append(sidecar)
        sidecar.wait_until(lambda: http_ok(f"http://{HOST}:{SIDECAR_PORT}/readyz"), "GET /readyz 200")

        print(
            f"\nOpen http://{HOST}:{SIDECAR_PORT}/ in your browser — sign in with any username "
            "(password anything). Ctrl-C stops everything.\n"
            f"\nThe SSO settings page: http://{HOST}:{SIDECAR_PORT}/oauth2/admin\n"
            "  SSO is on (config/demo.yaml): sign in as a user whose name starts with 'admin' (e.g. admin.you).\n"
            f"  initial access token for Register automatically: {registration}\n"
            f"  break-glass token for this run (while SSO is on it may only Disable SSO): {break_glass}\n"
            f"\nLogs: {state.relative_to(REPO) if state.is_relative_to(REPO) else state}/dev-idp.log, console.log, "
            "sidecar.log",
            flush=True,
        )
        while all(c.running() for c in children):
            time.sleep(0.5)
        dead = next(c for c in children if not c.running())
        raise DemoError(f"{dead.name} stopped unexpectedly (exit {dead.proc.returncode}):\n{dead.log_tail()}")
    except KeyboardInterrupt:
        print("\nStopping ...")
        return 0
    except DemoError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()


if __name__ == "__main__":
    sys.exit(main())
