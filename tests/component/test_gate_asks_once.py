"""The gate asks ``known_session`` once per request, also where the session cache cannot answer.

``_settled`` asks it first; where it cannot tell (``cache_ttl: 0``, a session not cached yet, no cookie), the
answer goes on to ``identify`` instead of being asked again (a second cookie parse, ticket lookup and cache read
on every such request). The real application, started in this process with a memory store; the console is a port
nobody listens on, so each request ends in the gate's 502 after the gate has decided.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config.load import parse_settings
from proxy.errors import SidecarError
from proxy.gate import decide
from proxy.gate import handler as gate
from proxy.runtime.state import RUNTIME
from proxy.signin import current
from proxy.telemetry.logs import LOG, RequestLog

ISSUER = "http://127.0.0.1:9/realms/never-asked"


@pytest.fixture
async def app(unused_tcp_port: int) -> AsyncIterator[web.Application]:
    config = {
        "public_url": "http://127.0.0.1:4180",
        "upstream": f"http://127.0.0.1:{unused_tcp_port}",
        "sso": {"issuer_url": ISSUER, "client_id": "console", "client_secret": "unused"},
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32), "cache_ttl": "0s"},
    }
    app = create_app(parse_settings(yaml.safe_dump(config), environ={}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each call of ``known_session``, by the module that made it."""
    calls: list[str] = []

    def counting(module: str) -> Any:
        def known_session(*args: Any) -> Any:
            calls.append(module)
            return current.known_session(*args)

        return known_session

    monkeypatch.setattr(gate, "known_session", counting("gate"))
    monkeypatch.setattr(decide, "known_session", counting("decide"))
    return calls


async def _through_the_gate(app: web.Application, cookie: str | None) -> str:
    """Where the request ended: the error the gate raised (the console's or the provider's port is closed)."""
    headers = CIMultiDict({"Host": "127.0.0.1:4180", "Accept": "text/html"})
    if cookie is not None:
        headers["Cookie"] = cookie
    request = make_mocked_request("GET", "/console/page", headers=headers, app=app)
    request[LOG] = RequestLog("test")
    try:
        response = await gate.handle(request)
    except SidecarError as exc:
        return f"{exc.status} {exc.message}"
    return f"{response.status} answered"


async def test_a_session_the_cache_cannot_answer_is_asked_for_once(app: web.Application, asked: list[str]) -> None:
    runtime = app[RUNTIME]
    session = await runtime.sessions.create(
        claims={"sub": "u-1", "email": "u1@example.com", "preferred_username": "u1"}, id_token="unused",
        access_token="unused", refresh_token=None, access_expires_at=None, issuer=ISSUER, client_id="console",
    )  # fmt: skip
    cookie = f"{runtime.active.settings.session.cookie_name}={runtime.active.cookies.encode_ticket(session.ticket)}"
    for _ in range(3):
        # signed in: forwarded, and the console's port is closed
        assert (await _through_the_gate(app, cookie)).startswith("502 The console could not be reached")
    assert asked == ["gate"] * 3


async def test_a_request_without_a_session_is_asked_for_once(app: web.Application, asked: list[str]) -> None:
    # a browser is sent to sign in, and the provider's port is closed
    assert "Could not reach the identity provider" in await _through_the_gate(app, None)
    assert asked == ["gate"]
