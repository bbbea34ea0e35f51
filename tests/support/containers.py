"""Containers of the sidecar's image, through podman, for the image tests (``tests/deploy/image``, ``make test-image``).

Containers use the host's network, because the dev identity provider, the console and Redis of the shared
fixtures listen on loopback. ``CONTAINERS_CONF`` defaults to ``tests/deploy/image/containers.conf``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support import REPO
from support.procs import LOOPBACK, http_status

os.environ.setdefault("CONTAINERS_CONF", str(REPO / "tests" / "deploy" / "image" / "containers.conf"))
IMAGE = os.environ.get("SSO_SIDECAR_IMAGE", "localhost/sso-sidecar:dev")
# Where the Kubernetes examples mount things; the containers here use the same paths.
CONFIG_DIR = "/etc/sso-sidecar/config"
SECRETS_DIR = "/etc/sso-sidecar/secrets"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 30.0, on_timeout: Callable[[], str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"no {what} within {timeout} s{extra}")
        time.sleep(0.1)


@dataclass
class Container:
    """One ``podman run -d`` container; ``port`` is the sidecar's loopback port on the host network."""

    name: str
    port: int
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def status(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()

    def exit_code(self) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(podman("inspect", self.name).stdout)[0])

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.status() == "running", f"{self.name} is {self.status()}:\n{self.logs()}"
            return http_status(self.url + "/readyz") == 200

        wait_until(ready, f"200 from {self.url}/readyz", timeout, self.logs)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


class ContainerFactory:
    """``containers(config, secrets={...}, extra_args=[...]) -> Container``: the image with the config in a
    read-only directory mount and the secrets in another, as the Kubernetes examples mount them."""

    def __init__(self, image: str, work_dir: Path) -> None:
        self.image = image
        self.work_dir = work_dir
        self.started: list[Container] = []

    def __call__(
        self,
        config: dict[str, Any],
        *,
        secret_files: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        command: Sequence[str] = (),
    ) -> Container:
        name = f"sso-sidecar-test-{secrets.token_hex(4)}"
        config_dir = self.work_dir / name / "config"
        secrets_dir = self.work_dir / name / "secrets"
        config_dir.mkdir(parents=True)
        secrets_dir.mkdir()
        (config_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for key, value in (secret_files or {}).items():
            (secrets_dir / key).write_text(value + "\n")
        # Files readable by the container's uid 10001 (the directories stay the host's).
        for path in (config_dir, secrets_dir, *config_dir.iterdir(), *secrets_dir.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        args = [
            "run", "--detach", "--name", name, "--network", "host", "--read-only", "--user", "10001",
            "--volume", f"{config_dir}:{CONFIG_DIR}:ro", "--volume", f"{secrets_dir}:{SECRETS_DIR}:ro",
            *extra_args, self.image,
            *(command or ["run", "--config", f"{CONFIG_DIR}/config.yaml"]),
        ]  # fmt: skip
        port = int(str(config["listen"]).rpartition(":")[2])
        container = Container(name, port, args)
        self.started.append(container)
        podman(*args)
        return container

    def remove_all(self) -> None:
        for container in self.started:
            container.remove()
