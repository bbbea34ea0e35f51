"""The image runs the sidecar as the Kubernetes examples do: read-only root filesystem, uid 10001, config and
secrets mounted as directories. It answers its probes, signs a user in against the dev identity provider,
and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time

import pytest
from packaging.utils import canonicalize_name

from support.containers import CONFIG_DIR, SECRETS_DIR, Container, ContainerFactory, podman, wait_until
from support.idp import DevIdP, login
from support.locks import LOCKS, pins_for
from support.procs import LOOPBACK, free_port, http_status

COOKIE_NAME = "sso_sidecar"
CHUNK = 64 * 1024


def download_bytes(n: int) -> bytes:
    """What the sample console's ``/download/{n}`` sends (deploy/demo/console.py)."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def config_for(idp: DevIdP, console_url: str, port: int, client_id: str = "unregistered") -> dict:
    """Memory sessions, secrets from the mounted directory, a skip_auth path for the drain test."""
    return {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": f"http://{LOOPBACK}:{port}",
        "upstream": console_url,
        "sso": {
            "issuer_url": idp.issuer,
            "client_id": client_id,
            "client_secret_file": f"{SECRETS_DIR}/client-secret",
        },
        "session": {"store": "memory", "cookie_secret_file": f"{SECRETS_DIR}/cookie-secret"},
        "skip_auth": ["GET ^/download/"],
    }


def secret_files(client_secret: str = "unregistered") -> dict[str, str]:
    return {"client-secret": client_secret, "cookie-secret": secrets.token_urlsafe(32)}


@pytest.fixture
def signed_in_sidecar(containers: ContainerFactory, idp: DevIdP, console) -> Container:
    port = free_port()
    client = idp.register_client(f"http://{LOOPBACK}:{port}")
    container = containers(
        config_for(idp, console.url, port, client.client_id), secret_files=secret_files(client.client_secret)
    )
    container.wait_ready()
    return container


def test_the_image_is_small_non_root_and_carries_no_build_tools(image):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    assert info["Config"]["User"] == "10001:10001"
    assert info["Config"]["Entrypoint"] == ["sso-sidecar"]
    assert info["Healthcheck"]["Test"][0] == "CMD", "HEALTHCHECK in exec form"
    assert info["Size"] < 200_000_000, f"{info['Size'] / 1e6:.0f} MB"
    probe = "import importlib.util as u; print([m for m in ('pip', 'setuptools') if u.find_spec(m)])"
    found = podman("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", probe).stdout
    assert found.strip() == "[]", f"left in the venv: {found}"
    tools = "for t in gcc cc make strip apt-get; do command -v $t >/dev/null && echo $t; done; true"
    found = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", tools).stdout.split()
    assert set(found) <= {"apt-get"}, f"build tools in the image: {found}"  # apt-get is the base image's own


def test_the_image_holds_exactly_the_locked_runtime_packages(image):
    """What the Dockerfile installs is requirements/image.txt, the runtime part of the lock the tests ran on:
    every package at its locked version (markers judged by the image's own Python), nothing else but the
    sidecar, and pip and setuptools (build tools, also locked) removed."""
    script = (
        "import json, os, platform, sys, importlib.metadata as m; "
        "env = dict(python_full_version=platform.python_version(), "
        "python_version='.'.join(platform.python_version_tuple()[:2]), sys_platform=sys.platform, "
        "platform_python_implementation=platform.python_implementation(), "
        "implementation_name=sys.implementation.name, platform_machine=platform.machine(), os_name=os.name, "
        "platform_system=platform.system()); "
        "print(json.dumps([env, sorted((d.metadata['Name'], d.version) for d in m.distributions())]))"
    )
    done = podman("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", script)
    environment, found = json.loads(done.stdout)
    have = {canonicalize_name(name): version for name, version in found}
    locked = {
        name: pin.version
        for name, pin in pins_for(LOCKS / "image.txt", environment).items()
        if name not in ("pip", "setuptools")
    }
    assert have.pop("sso-sidecar", None) is not None, "the sidecar itself is not installed"
    assert have == locked, f"only in the image: {set(have.items()) - set(locked.items())}; only in the lock: " + str(
        set(locked.items()) - set(have.items())
    )


def test_bytecode_is_compiled_at_build_time(image):
    """With the root filesystem read-only nothing could be cached at run time: every module of the sidecar
    and its dependencies has its .pyc from the build."""
    script = (
        "import pathlib, importlib.util as u; "
        "py = [p for p in pathlib.Path('/opt/venv/lib').rglob('*.py')]; "
        "missing = [str(p) for p in py if not pathlib.Path(u.cache_from_source(str(p))).exists()]; "
        "print(len(py), missing[:5])"
    )
    done = podman("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", script)
    count, missing = done.stdout.split(" ", 1)
    assert int(count) > 100 and missing.strip() == "[]", done.stdout


def test_read_only_as_uid_10001_it_answers_healthz_and_readyz(containers, idp, console):
    port = free_port()
    # HEALTHCHECK_URL: the image's HEALTHCHECK otherwise assumes the default port 4180.
    health_url = f"http://{LOOPBACK}:{port}/healthz"
    container = containers(
        config_for(idp, console.url, port),
        secret_files=secret_files(),
        extra_args=["--env", f"HEALTHCHECK_URL={health_url}"],
    )
    container.wait_ready()
    assert http_status(container.url + "/healthz") == 200
    assert http_status(container.url + "/readyz") == 200
    info = container.inspect()
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    # Nothing is writable but podman's own tmpfs mounts (/tmp, /run, /var/tmp, /dev/shm).
    writable = podman("exec", container.name, "sh", "-c", "touch /opt/venv/x /etc/x 2>&1; true").stdout
    assert writable.count("Read-only file system") == 2, writable
    done = podman("healthcheck", "run", container.name, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_healthcheck_fails_when_nothing_answers(containers, idp, console):
    """The HEALTHCHECK can fail: pointed at a port nobody listens on, it reports unhealthy."""
    port = free_port()
    container = containers(
        config_for(idp, console.url, port),
        secret_files=secret_files(),
        extra_args=["--env", f"HEALTHCHECK_URL=http://{LOOPBACK}:{free_port()}/healthz"],
    )
    container.wait_ready()
    assert podman("healthcheck", "run", container.name, check=False).returncode != 0


async def test_a_full_sign_in_through_the_container(signed_in_sidecar, http):
    client = http()
    resp = await login(client, signed_in_sidecar.url + "/api/whoami?from=container", "alice.smith")
    assert resp.status == 200, await resp.text()
    seen = json.loads(await resp.text())
    assert seen["raw_path"] == "/api/whoami?from=container"
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"
    assert seen["headers"]["X-Forwarded-Email"] == "alice.smith@example.com"
    assert client.cookie(COOKIE_NAME), "no session cookie"
    async with client.get(signed_in_sidecar.url + "/api/whoami") as again:
        assert again.status == 200 and (await again.json())["headers"]["X-Forwarded-User"] == "alice.smith"


async def test_sigterm_drains_an_inflight_download_and_exits_0(signed_in_sidecar, http):
    """A download under way when SIGTERM arrives is finished; then the process exits 0, well within the
    45 s grace period of the Kubernetes examples."""
    client = http()
    size, delay = 12 * CHUNK, 0.25  # twelve chunks, a quarter second apart: about 3 s in all
    async with client.get(f"{signed_in_sidecar.url}/download/{size}?delay={delay}") as resp:
        assert resp.status == 200
        received = bytearray(await resp.content.readexactly(CHUNK))  # the download is under way
        signalled = time.monotonic()
        podman("kill", "--signal", "TERM", signed_in_sidecar.name)
        received += await resp.content.read()
    assert hashlib.sha256(received).digest() == hashlib.sha256(download_bytes(size)).digest()

    def exited() -> bool:
        return signed_in_sidecar.status() in ("exited", "stopped")

    await asyncio.to_thread(wait_until, exited, "exit after SIGTERM", 40.0, signed_in_sidecar.logs)
    assert signed_in_sidecar.exit_code() == 0, signed_in_sidecar.logs()
    assert time.monotonic() - signalled < 30
    assert http_status(signed_in_sidecar.url + "/healthz") is None


def test_a_config_error_exits_non_zero_naming_the_key(containers, idp, console):
    """The container fails visibly (a crash loop in Kubernetes) rather than running half configured."""
    port = free_port()
    config = config_for(idp, console.url, port)
    config["sso"]["client_secret_file"] = f"{CONFIG_DIR}/no-such-file"
    container = containers(config, secret_files=secret_files())
    wait_until(lambda: container.status() in ("exited", "stopped"), "exit on a bad config", 30.0, container.logs)
    assert container.exit_code() != 0
    assert "client_secret_file" in container.logs()
