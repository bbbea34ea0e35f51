"""Shared fixtures: real redis-server, dev identity provider, sample console and sidecars.

Long-lived processes are session-scoped and start only when a test asks for them; sidecars are cheap and
started per test through ``sidecar_factory`` (or the shared default ``sidecar`` for tests that change
nothing). The browser (Playwright) is a plugin of its own, ``support.browser``, loaded by the tests that use
it: nothing else imports Playwright.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import REPO, procs
from support.http import HttpClient, new_client
from support.idp import DevIdP, RegisteredClient, idp_config
from support.procs import LOOPBACK, Process, free_port
from support.redis_server import RedisServer
from support.sidecar import Sidecar, merge

CONSOLE_SCRIPT = REPO / "deploy" / "demo" / "console.py"


# --------------------------------------------------------------------------------------------------
# Process logs in failure reports


def pytest_runtest_setup(item: pytest.Item) -> None:
    for proc in procs.REGISTRY:
        proc.mark = proc.log_size()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.when in ("setup", "call"):
        for proc in procs.REGISTRY:
            text = proc.logs(proc.mark)
            if text.strip():
                cut = text[-procs.LOG_TAIL :]
                report.sections.append((f"log {proc.name} ({proc.log_path})", cut))


def pytest_sessionfinish(session: pytest.Session) -> None:
    procs.stop_all()  # anything a test started by hand and did not stop


# --------------------------------------------------------------------------------------------------
# Long-lived processes


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server. A test that kills it must ``restart()`` it before it ends."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> RedisServer:
    """The shared redis-server, running and empty."""
    if not redis_server.alive:
        redis_server.start()
    redis_server.flushall()
    return redis_server


IdPFactory = Callable[..., DevIdP]


@pytest.fixture(scope="session")
def idp_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdPFactory]:
    """``idp_factory(ttl={"IdToken": 5}, refresh_tokens=False, accounts={...}, clients=[...])`` starts
    another dev IdP (registration and loopback back-channel logout on); stopped at session end."""
    started: list[DevIdP] = []

    def factory(**config: Any) -> DevIdP:
        idp = DevIdP(idp_config(**config), tmp_path_factory.mktemp("idp"))
        started.append(idp.start())
        return idp

    yield factory
    for idp in started:
        idp.stop()


@pytest.fixture(scope="session")
def idp(idp_factory: IdPFactory) -> DevIdP:
    """The shared dev IdP: open registration, loopback back-channel logout, refresh tokens always,
    TTLs of minutes (``support.idp.DEFAULT_TTL``)."""
    return idp_factory()


@dataclass
class Console:
    url: str
    port: int
    proc: Process


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The sample console (``deploy/demo/console.py``) as a process: the upstream of every sidecar."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = procs.start_process(
        "console",
        [sys.executable, str(CONSOLE_SCRIPT), "--host", LOOPBACK, "--port", str(port)],
        cwd=REPO,
        log_dir=tmp_path_factory.mktemp("console"),
        ready_url=f"{url}/api/whoami",
    )
    yield Console(url, port, proc)
    proc.stop()


# --------------------------------------------------------------------------------------------------
# Sidecars


def sidecar_config(
    port: int, idp: DevIdP, client: RegisteredClient | None, upstream: str, public_url: str | None = None
) -> dict[str, Any]:
    """The default config the factory starts from: memory sessions, a fresh cookie secret."""
    return {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": public_url or f"http://{LOOPBACK}:{port}",
        "upstream": upstream,
        "sso": {
            "issuer_url": idp.issuer,
            "client_id": client.client_id if client else "unregistered",
            "client_secret": client.client_secret if client else "unregistered",
        },
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
    }


class SidecarFactory:
    """``sidecar_factory(config=None, *, env=None, register=True, idp=None, wait=True, timeout=20,
    name=None, register_kwargs=None) -> Sidecar``

    ``config`` is deep-merged over ``sidecar_config(...)`` (a ``None`` value removes a key). With
    ``register`` a client is registered at the IdP for the sidecar's ``public_url`` (callback,
    signed-out and back-channel URIs) and set in ``sso``; it is on ``sidecar.client``.
    """

    def __init__(self, idp: DevIdP, console: Console, work_dir: Path) -> None:
        self.idp = idp
        self.console = console
        self.work_dir = work_dir
        self.started: list[Sidecar] = []

    def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        register: bool = True,
        idp: DevIdP | None = None,
        wait: bool = True,
        timeout: float = 20.0,
        name: str | None = None,
        register_kwargs: Mapping[str, Any] | None = None,
    ) -> Sidecar:
        config = dict(config or {})
        provider = idp or self.idp
        listen = config.get("listen")
        port = int(listen.rpartition(":")[2]) if isinstance(listen, str) else free_port()
        public_url = config.get("public_url") or f"http://{LOOPBACK}:{port}"
        client = provider.register_client(public_url, **(register_kwargs or {})) if register else None
        base = sidecar_config(port, provider, client, self.console.url, public_url)
        name = name or f"sidecar-{len(self.started) + 1}-{port}"
        sidecar = Sidecar(merge(base, config), self.work_dir / name, env=env, name=name)
        sidecar.client = client
        self.started.append(sidecar)
        return sidecar.start(timeout, wait=wait)

    def stop_all(self) -> None:
        for sidecar in reversed(self.started):
            sidecar.stop()


@pytest.fixture
def sidecar_factory(idp: DevIdP, console: Console, tmp_path: Path) -> Iterator[SidecarFactory]:
    factory = SidecarFactory(idp, console, tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def sidecar(idp: DevIdP, console: Console, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """One default sidecar shared by tests that only read (do not reload or stop it)."""
    factory = SidecarFactory(idp, console, tmp_path_factory.mktemp("sidecar"))
    yield factory(name="sidecar-shared")
    factory.stop_all()


# --------------------------------------------------------------------------------------------------
# HTTP clients


HttpFactory = Callable[..., HttpClient]


@pytest.fixture
async def http() -> AsyncIterator[HttpFactory]:
    """``http(cookies=True, follow_redirects=False, **ClientSession_kwargs) -> HttpClient``: each call
    is a new browser-like client with its own cookie jar (IP hosts allowed); closed after the test.
    Cookies ignore ports, so one client signed in to two sidecars on 127.0.0.1 holds both cookies:
    give sidecars distinct ``session.cookie_name`` values or use one client per sidecar."""
    clients: list[HttpClient] = []

    def factory(**kwargs: Any) -> HttpClient:
        client = new_client(**kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
