"""The sidecar started through its real command line: ``sso-sidecar run --config FILE``."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from support import REPO
from support.procs import LOOPBACK, Process, free_port, http_status

CONSOLE_SCRIPT = REPO / ".venv" / "bin" / "sso-sidecar"


def sidecar_command() -> list[str]:
    """The installed console script when there is one (``make install``), else the package itself."""
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "proxy"]


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge for config dicts; a ``None`` in ``override`` removes the key, so a test can leave
    a default out."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Sidecar:
    """A running sidecar: ``url``, ``config``, ``config_path``, ``proc``, ``reload()``, ``stop()``."""

    def __init__(
        self,
        config: Mapping[str, Any],
        work_dir: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str = "sidecar",
    ) -> None:
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config = dict(config)
        self.port = _port_of(self.config) or free_port()
        self.config.setdefault("listen", f"{LOOPBACK}:{self.port}")
        self.config.setdefault("public_url", f"http://{LOOPBACK}:{self.port}")
        self.config_path = self.dir / f"{name}.yaml"
        self.env = {**os.environ, **(env or {})}
        self.proc: Process | None = None
        self.client: Any = None  # the RegisteredClient, when the fixture registered one
        self.write_config(self.config)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Replace the file atomically (rename), as an editor or a ConfigMap update would."""
        self.config = dict(config)
        tmp = self.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        tmp.replace(self.config_path)

    def start(self, timeout: float = 20.0, *, wait: bool = True) -> Sidecar:
        args = [*sidecar_command(), "run", "--config", str(self.config_path)]
        self.proc = Process(self.name, args, env=self.env, cwd=REPO, log_dir=self.dir).start()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        self.proc.wait_for_http(self.url_for("/healthz"), timeout)

    def healthz(self) -> int | None:
        return http_status(self.url_for("/healthz"))

    def reload(self, config: Mapping[str, Any] | None = None) -> None:
        """Optionally write a new config, then SIGHUP. Returns at once: poll for the effect."""
        if config is not None:
            self.write_config(config)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for the exit (blocking: use ``astop`` while requests are in flight)."""
        return self.proc.stop(timeout) if self.proc is not None else None

    async def astop(self, timeout: float = 15.0) -> int | None:
        return await self.proc.astop(timeout) if self.proc is not None else None

    def logs(self) -> str:
        return self.proc.logs() if self.proc is not None else ""

    def __repr__(self) -> str:
        return f"<Sidecar {self.url} {self.proc!r}>"


def _port_of(config: Mapping[str, Any]) -> int | None:
    listen = config.get("listen")
    if isinstance(listen, str) and listen.rpartition(":")[2].isdigit():
        return int(listen.rpartition(":")[2])
    return None


def start_sidecar(
    config: Mapping[str, Any],
    work_dir: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    name: str = "sidecar",
    timeout: float = 20.0,
    wait: bool = True,
) -> Sidecar:
    return Sidecar(config, work_dir, env=env, name=name).start(timeout, wait=wait)


def replica_of(sidecar: Sidecar) -> dict[str, Any]:
    """Config overrides for another replica of ``sidecar``: the same public URL, provider client, session
    store and cookie secret (what replicas behind one Service share)."""
    return {
        "public_url": sidecar.config["public_url"],
        "sso": sidecar.config["sso"],
        "session": dict(sidecar.config["session"]),
    }
