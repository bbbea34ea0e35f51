"""The streaming reverse proxy, over real HTTP: an echo console and the real app (``create_app``) on 127.0.0.1.

Every test runs once per upstream client (``upstream_client: h1 | aiohttp``) and goes through the gate:
with SSO on, a session made in the sidecar's store carries the identity; with SSO off, the sidecar passes
requests through.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from proxy.app import create_app
from proxy.config.load import parse_settings
from proxy.config.model import DEFAULT_HEADERS
from proxy.errors import ConfigError
from proxy.runtime.state import RUNTIME
from proxy.upstream import forward as upstream_module
from proxy.upstream.forward import HOP_BY_HOP, UPSTREAM_CLIENTS, Upstream
from support.sidecar import Sidecar
from support.waiting import eventually

MiB = 1024 * 1024
COOKIE_NAME = "sso_sidecar"
ISSUER = "http://127.0.0.1:9/realms/never-asked"  # sessions are made in-process; discovery is never fetched
CLAIMS = {
    "preferred_username": "alice",
    "email": "alice@example.com",
    "name": "Zoë Ünicode",
    "groups": ["admins", "ops"],
}


# --------------------------------------------------------------------------------------------------
# The echo console


@dataclass
class Echo:
    """The echo upstream and the events its handlers signal, fresh for every test."""

    url: URL
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)
    download_finished: asyncio.Event = field(default_factory=asyncio.Event)
    client_got_first: asyncio.Event = field(default_factory=asyncio.Event)
    endless_stopped: asyncio.Event = field(default_factory=asyncio.Event)
    ws_closed: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    held: list[asyncio.Event] = field(default_factory=list)  # one per /hold request, set to answer it
    in_flight: int = 0
    max_in_flight: int = 0
    peers: set[int] = field(default_factory=set)  # the sidecar's connections (source ports) that asked


ECHO_STATE = web.AppKey("echo_state", Echo)


async def echo(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_length": received,
        }
    )


async def download(request: web.Request) -> web.StreamResponse:
    """``n`` bytes in ``chunk``-sized writes; ``wait=1`` pauses after the first MiB until the client has some."""
    state = request.app[ECHO_STATE]
    n = int(request.query["n"])
    chunk = int(request.query.get("chunk", 64 * 1024))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("length") == "1":
        resp.content_length = n
    await resp.prepare(request)
    if request.method == "HEAD":  # aiohttp would send a body written for HEAD
        await resp.write_eof()
        return resp
    block = memoryview(b"d" * chunk)
    sent = 0
    waited = request.query.get("wait") != "1"
    while sent < n:
        part = block[: min(chunk, n - sent)]
        await resp.write(part)
        sent += len(part)
        if not waited and sent >= MiB:
            waited = True
            await asyncio.wait_for(state.client_got_first.wait(), 10)
    await resp.write_eof()
    state.download_finished.set()
    return resp


async def upload(request: web.Request) -> web.Response:
    state = request.app[ECHO_STATE]
    received = 0
    async for chunk in request.content.iter_any():
        if received == 0:
            state.upload_started.set()
        received += len(chunk)
    return web.json_response(
        {
            "received": received,
            "content_length": request.headers.get("Content-Length"),
            "transfer_encoding": request.headers.get("Transfer-Encoding"),
        }
    )


async def endless(request: web.Request) -> web.StreamResponse:
    state = request.app[ECHO_STATE]
    resp = web.StreamResponse()
    await resp.prepare(request)
    try:
        while True:
            await resp.write(b"e" * 65536)
    except (ConnectionError, aiohttp.ClientError):
        pass
    finally:
        state.endless_stopped.set()
    return resp


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "2")))
    return web.Response(text="late")


async def hop_response(request: web.Request) -> web.Response:
    resp = web.Response(text="ok")
    resp.headers["Connection"] = "X-Hop-Resp"
    resp.headers["X-Hop-Resp"] = "secret"
    resp.headers["Keep-Alive"] = "timeout=5"
    resp.headers["Proxy-Authenticate"] = "Basic"
    resp.headers["Trailer"] = "X-Checksum"
    resp.headers["X-Kept"] = "yes"
    resp.headers.add("Set-Cookie", "a=1; Path=/")
    resp.headers.add("Set-Cookie", "b=2; HttpOnly")
    return resp


GZIPPED = gzip.compress(b"hello world " * 1000)


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {"ETag": '"v1"'} if code == 304 else {}
    if code in (301, 302, 303, 307, 308):
        headers["Location"] = "/elsewhere"
    return web.Response(status=code, headers=headers)


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    state = request.app[ECHO_STATE]
    ws = web.WebSocketResponse(protocols=("v2.proto", "v1.proto"))
    await ws.prepare(request)
    spoofed = [k for k in request.headers if k.lower().replace("_", "-") == "x-forwarded-email"]
    await ws.send_json(
        {
            "user": request.headers.get("X-Forwarded-User"),
            "email": request.headers.getall("X-Forwarded-Email", []),
            "spoofed_names": spoofed,
            "protocol": ws.ws_protocol,
            "cookie": request.headers.get("Cookie"),
            "key_forwarded": request.headers.get("Sec-WebSocket-Key") is not None,
        }
    )
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            if msg.data == "drop":  # vanish without a close frame
                assert request.transport is not None
                request.transport.close()
                break
            if msg.data.startswith("close:"):
                await ws.close(code=int(msg.data[6:]), message=b"bye")
                break
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    state.ws_closed.put_nowait(ws.close_code)
    return ws


async def hold(request: web.Request) -> web.Response:
    """Answers only when the test sets this request's event (``Echo.held``); counts requests in flight."""
    state = request.app[ECHO_STATE]
    state.peers.add(request.transport.get_extra_info("peername")[1] if request.transport else -1)
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    release = asyncio.Event()
    state.held.append(release)
    try:
        await release.wait()
    finally:
        state.in_flight -= 1
    return web.Response(text="held")


async def peer(request: web.Request) -> web.Response:
    state = request.app[ECHO_STATE]
    state.peers.add(request.transport.get_extra_info("peername")[1] if request.transport else -1)
    return web.Response(text="ok")


async def ws_forbidden(request: web.Request) -> web.Response:
    return web.Response(status=403, text="no websockets for you", headers={"X-Reason": "policy"})


async def start_app(app: web.Application) -> tuple[web.AppRunner, URL]:
    """Serve ``app`` on 127.0.0.1 as ``web.run_app`` does (handlers are not cancelled when a client leaves:
    pytest-aiohttp's ``TestServer`` would cancel them, and the proxy's disconnect handling would differ)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, URL.build(scheme="http", host=host, port=port)


@pytest.fixture
async def echo_console() -> AsyncIterator[Echo]:
    app = web.Application()
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hop", hop_response)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/ws-forbidden", ws_forbidden)
    app.router.add_get("/hold", hold)
    app.router.add_get("/peer", peer)
    state = Echo(url=URL())
    app[ECHO_STATE] = state
    runner, state.url = await start_app(app)
    yield state
    await runner.cleanup()


# --------------------------------------------------------------------------------------------------
# The sidecar: the real app (``create_app``), served in-process as ``sso-sidecar run`` serves it


@pytest.fixture(params=UPSTREAM_CLIENTS)
def upstream_client(request: pytest.FixtureRequest) -> str:
    """Every test that starts a proxy runs once per upstream client (``upstream_client``)."""
    param: str = request.param
    return param


class MakeProxy:
    """``await make_proxy(upstream_url, *, claims=CLAIMS, mapping=DEFAULT_HEADERS, timeout=30.0, **config)``:
    the sidecar's URL.

    With ``claims``, SSO is on and ``client`` carries the cookie of a session holding those claims (also in
    ``cookie``, for a test that sends its own Cookie header); with ``claims=None``, SSO is off
    (pass-through). ``config`` is merged into the sidecar's config. The provider is never asked: the
    session is created in the sidecar's own store.
    """

    def __init__(self, client: aiohttp.ClientSession, upstream_client: str) -> None:
        self._client = client
        self._upstream_client = upstream_client
        self._runners: list[web.AppRunner] = []
        self.cookie = ""
        self.app: web.Application | None = None

    async def __call__(
        self,
        upstream_url: URL,
        *,
        claims: dict[str, Any] | None = CLAIMS,
        mapping: tuple[tuple[str, str], ...] = DEFAULT_HEADERS,
        timeout: float = 30.0,
        **config: Any,
    ) -> URL:
        base: dict[str, Any] = {
            "public_url": "http://127.0.0.1:4180",
            "upstream": str(upstream_url),
            "upstream_timeout": timeout,
            "upstream_client": self._upstream_client,
            "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
            "headers": dict(mapping),
            "sso": {"enabled": False},
        }
        if claims is not None:
            base["sso"] = {"issuer_url": ISSUER, "client_id": "console", "client_secret": "unused"}
        settings = parse_settings(yaml.safe_dump({**base, **config}), environ={})
        app = create_app(settings)
        runner, url = await start_app(app)
        self._runners.append(runner)
        self.app = app
        if claims is not None:
            runtime = app[RUNTIME]
            session = await runtime.sessions.create(
                claims=claims,
                id_token="unused",
                access_token="unused",
                refresh_token=None,
                access_expires_at=None,
                issuer=ISSUER,
                client_id="console",
            )
            self.cookie = f"{COOKIE_NAME}={runtime.active.cookies.encode_ticket(session.ticket)}"
            self._client.headers["Cookie"] = self.cookie
        return url

    @property
    def upstream(self) -> Upstream:
        assert self.app is not None
        return self.app[RUNTIME].active.upstream

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


@pytest.fixture
async def make_proxy(client: aiohttp.ClientSession, upstream_client: str) -> AsyncIterator[MakeProxy]:
    factory = MakeProxy(client, upstream_client)
    yield factory
    await factory.close()


def test_the_upstream_client_and_the_connection_cap_are_checked_at_load() -> None:
    base = {"public_url": "http://127.0.0.1:4180", "upstream": "http://127.0.0.1:8888", "sso": {"enabled": False}}
    base["session"] = {"cookie_secret": secrets.token_urlsafe(32)}
    settings = parse_settings(yaml.safe_dump(base), environ={})
    assert (settings.upstream.client, settings.upstream.max_connections) == ("h1", 256)
    chosen = parse_settings(yaml.safe_dump({**base, "upstream_client": "aiohttp", "upstream_max_connections": 8}), {})
    assert (chosen.upstream.client, chosen.upstream.max_connections) == ("aiohttp", 8)
    with pytest.raises(ConfigError) as refused:
        parse_settings(yaml.safe_dump({**base, "upstream_client": "h2", "upstream_max_connections": 0}), {})
    assert {p.key for p in refused.value.problems} == {"upstream_client", "upstream_max_connections"}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # No invented headers and no decompression: the tests see exactly what crossed the wire.
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        yield session


JSON = {"Accept": "application/json"}  # the sidecar's own errors as JSON, not as a page

# app.py keeps the request id under a string key, which aiohttp 3.14 warns about once per process
# (web.RequestKey is recommended); in-process, that warning would fail every request here.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def echoed(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = json.loads(await resp.read())
    return data


def header_values(data: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in data["headers"] if k.lower() == name.lower()]


def header_names(data: dict[str, Any]) -> set[str]:
    return {k.lower() for k, _ in data["headers"]}


# --------------------------------------------------------------------------------------------------
# Methods, paths, queries


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "TRACE"])
async def test_every_method_is_forwarded(
    method: str, echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    body = b"payload" if method in ("POST", "PUT", "PATCH", "DELETE") else None
    async with client.request(method, proxy / "echo" / "m", data=body) as resp:
        data = await echoed(resp)
    assert data["method"] == method
    assert data["body_length"] == (len(body) if body else 0)


async def test_head_returns_headers_without_body(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy.with_path("/download").with_query(n="5000", length="1")) as resp:
        assert resp.headers["Content-Length"] == "5000"
    async with client.head(proxy.with_path("/download").with_query(n="5000", length="1")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "5000"
        assert await resp.read() == b""


async def test_path_and_query_are_forwarded_byte_for_byte(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    raw = "/echo/a%20b/c%2Fd/%E2%9C%93/semi;colon?x=1&y=a%26b&z=%2B+&empty=&flag&u=%C3%A9"
    async with client.get(URL(str(proxy) + raw, encoded=True)) as resp:
        data = await echoed(resp)
    assert data["raw_path"] == raw


async def test_base_path_prefix_is_joined_in_front(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url / "echo" / "")
    async with client.get(proxy / "x" / "y", params={"q": "1"}) as resp:
        data = await echoed(resp)
    assert data["raw_path"] == "/echo/x/y?q=1"


async def test_redirects_are_passed_through_not_followed(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "status" / "302", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"


@pytest.mark.parametrize("code", [204, 304])
async def test_bodyless_statuses(
    code: int, echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    for _ in range(2):  # and the connection stays usable afterwards
        async with client.get(proxy / "status" / str(code)) as resp:
            assert resp.status == code
            assert await resp.read() == b""
            assert "Transfer-Encoding" not in resp.headers
            if code == 304:
                assert resp.headers["ETag"] == '"v1"'


# --------------------------------------------------------------------------------------------------
# Headers


async def test_hop_by_hop_request_headers_are_not_forwarded(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    headers = {
        "Connection": "keep-alive, X-Hop-Req",
        "X-Hop-Req": "1",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic eDp5",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Upgrade": "foo/1",
        "Transfer_Encoding": "chunked",
        "X-Kept": "yes",
    }
    async with client.get(proxy / "echo" / "hop", headers=headers) as resp:
        data = await echoed(resp)
    names = header_names(data)
    assert not names & (HOP_BY_HOP | {"x-hop-req", "transfer_encoding"})
    assert header_values(data, "X-Kept") == ["yes"]


async def test_hop_by_hop_response_headers_are_not_returned(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "hop") as resp:
        assert await resp.text() == "ok"
        names = {k.lower() for k in resp.headers}
        assert "x-hop-resp" not in names
        assert not names & {"keep-alive", "proxy-authenticate", "trailer"}
        assert resp.headers.get("Connection") is None
        assert resp.headers["X-Kept"] == "yes"
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


async def test_forwarded_headers_replace_client_sent_ones(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    spoof = CIMultiDict(
        [
            ("Host", "console.test:8443"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", "7.7.7.7"),
            ("x_forwarded_for", "8.8.8.8"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
            ("X-Real-IP", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("X.Forwarded.For", "9.9.9.9"),  # PHP reads "." as "_", and CGI "_" as "-"
            ("Forwarded", "for=6.6.6.6;proto=https"),
        ]
    )
    async with client.get(proxy / "echo" / "fwd", headers=spoof) as resp:
        data = await echoed(resp)
    assert header_values(data, "Host") == ["console.test:8443"]  # the client's Host is passed through
    assert header_values(data, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(data, "X-Forwarded-Proto") == ["http"]
    assert header_values(data, "X-Forwarded-Host") == ["console.test:8443"]
    assert header_values(data, "X-Real-IP") == ["127.0.0.1"]
    assert not header_names(data) & {"forwarded", "x_forwarded_for", "x_real_ip", "x.forwarded.for"}


async def test_no_headers_are_invented(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """No Accept-Encoding (we never decompress), User-Agent or Content-Type the client did not send."""
    proxy = await make_proxy(echo_console.url, claims=None)
    async with client.post(proxy / "echo" / "x", data=b"raw", skip_auto_headers=("Content-Type", "Accept")) as resp:
        data = await echoed(resp)
    assert not header_names(data) & {"accept-encoding", "user-agent", "content-type", "accept"}


async def test_spoofed_identity_headers_are_stripped_in_every_spelling(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, claims={"preferred_username": "alice"})
    spoof = CIMultiDict(
        [
            ("X-Forwarded-User", "admin"),
            ("x-forwarded-user", "admin2"),
            ("X_Forwarded_User", "admin3"),
            ("X-FORWARDED-EMAIL", "boss@example.com"),
            ("x_forwarded_groups", "admins"),
            ("X-Forwarded-Access-Token", "t"),
            ("X-Forwarded-Preferred-Username", "admin"),
            ("X-Auth-Request-User", "admin"),
            ("x_auth_request_email", "boss@example.com"),
        ]
    )
    async with client.get(proxy / "echo" / "spoof", headers=spoof) as resp:
        data = await echoed(resp)
    identity_names = {n for n in header_names(data) if n.replace("_", "-").startswith(("x-forwarded-", "x-auth"))}
    assert identity_names == {"x-forwarded-user", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    assert header_values(data, "X-Forwarded-User") == ["alice"]


async def test_pass_through_strips_identity_headers_and_adds_none(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, claims=None)
    async with client.get(proxy / "echo" / "p", headers={"X_Forwarded_User": "admin"}) as resp:
        data = await echoed(resp)
    assert not any(n.replace("_", "-") == "x-forwarded-user" for n in header_names(data))


async def test_identity_values_reach_the_console(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    mapping = (
        ("X-Forwarded-User", "preferred_username"),
        ("X-Forwarded-Groups", "cognito:groups"),
        ("X-Roles", "https://example.com/roles"),
        ("X-Forwarded-Name", "name"),
        ("X-Forwarded-Email", "email"),  # claim missing: no header
        ("X-Note", "note"),
    )
    claims = {
        "preferred_username": "alice",
        "cognito:groups": ["a", "b"],
        "https://example.com/roles": ["r1", "r2"],
        "name": "Zoë 日本",
        "note": "a note",
    }
    proxy = await make_proxy(echo_console.url, claims=claims, mapping=mapping)
    async with client.get(proxy / "echo" / "id") as resp:
        data = await echoed(resp)
    assert header_values(data, "X-Forwarded-User") == ["alice"]
    assert header_values(data, "X-Forwarded-Groups") == ["a,b"]
    assert header_values(data, "X-Roles") == ["r1,r2"]
    assert header_values(data, "X-Forwarded-Name") == ["Zoë 日本"]  # raw UTF-8 on the wire
    assert header_values(data, "X-Note") == ["a note"]
    assert header_values(data, "X-Forwarded-Email") == []


async def test_session_cookies_are_removed_and_others_kept(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The session, pending-login and break-glass cookies stay with the sidecar; a look-alike passes."""
    proxy = await make_proxy(echo_console.url)
    own = f"{COOKIE_NAME}_login_0123456789abcdef=more; {COOKIE_NAME}_break_glass=bg"
    cookie = f"a=1; {make_proxy.cookie}; b=two=2;{own}; {COOKIE_NAME}_1=look-alike; c="
    async with client.get(proxy / "echo" / "c", headers={"Cookie": cookie}) as resp:
        data = await echoed(resp)
    assert header_values(data, "Cookie") == [f"a=1; b=two=2; {COOKIE_NAME}_1=look-alike; c="]
    assert header_values(data, "X-Forwarded-User") == ["alice"]


async def test_cookie_header_dropped_when_only_session_cookies(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "echo" / "c", headers={"Cookie": make_proxy.cookie}) as resp:
        data = await echoed(resp)
    assert "cookie" not in header_names(data)
    assert header_values(data, "X-Forwarded-User") == ["alice"]


async def test_content_encoding_and_length_preserved_without_decompression(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "gzip", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(GZIPPED))
        assert await resp.read() == GZIPPED


async def test_unknown_length_response_is_chunked(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy.with_path("/download").with_query(n="300000")) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert len(await resp.read()) == 300000


# --------------------------------------------------------------------------------------------------
# Streaming


async def upload_after_first_block(echo_console: Echo) -> AsyncIterator[bytes]:
    """64 MiB, of which only the first MiB goes out until the console has started receiving."""
    block = b"u" * MiB
    yield block
    await asyncio.wait_for(echo_console.upload_started.wait(), 10)
    for _ in range(63):
        yield block


async def test_upload_with_length_is_streamed(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The console starts receiving before the client has sent it all (it waits for that)."""
    proxy = await make_proxy(echo_console.url)

    headers = {"Content-Length": str(64 * MiB)}
    async with client.put(proxy / "upload", data=upload_after_first_block(echo_console), headers=headers) as resp:
        data = await echoed(resp)
    assert data == {"received": 64 * MiB, "content_length": str(64 * MiB), "transfer_encoding": None}


async def test_upload_without_length_is_streamed_chunked(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)

    async with client.post(proxy / "upload", data=upload_after_first_block(echo_console)) as resp:
        data = await echoed(resp)
    assert data == {"received": 64 * MiB, "content_length": None, "transfer_encoding": "chunked"}


@pytest.mark.parametrize("length", ["1", "0"])
async def test_download_is_streamed(
    length: str, echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The client gets the first bytes before the console has sent it all (it waits for that)."""
    proxy = await make_proxy(echo_console.url)
    url = proxy.with_path("/download").with_query(n=str(64 * MiB), wait="1", length=length, chunk=str(MiB))
    async with client.get(url) as resp:
        first = await asyncio.wait_for(resp.content.readany(), 10)
        assert first
        assert not echo_console.download_finished.is_set()
        echo_console.client_got_first.set()
        total = len(first)
        async for chunk in resp.content.iter_any():
            total += len(chunk)
    assert total == 64 * MiB


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_proxy_process_memory_stays_flat_for_64_mib_each_way(
    echo_console: Echo, client: aiohttp.ClientSession, upstream_client: str, tmp_path: Path
) -> None:
    """The sidecar as it runs (``sso-sidecar run``, SSO off): its peak RSS does not grow with the bodies."""
    config = {
        "upstream": str(echo_console.url),
        "upstream_client": upstream_client,
        "sso": {"enabled": False},
        "session": {"cookie_secret": secrets.token_urlsafe(32)},
    }
    sidecar = Sidecar(config, tmp_path / "sidecar", name=f"sidecar-memory-{upstream_client}")
    await asyncio.to_thread(sidecar.start)  # the echo console answers on this loop: do not block it
    try:
        assert sidecar.proc is not None
        proxy = URL(sidecar.url)
        block = b"m" * MiB

        async def body(n: int) -> AsyncIterator[bytes]:
            for _ in range(n):
                yield block

        async def roundtrip(mib: int) -> None:
            async with client.post(proxy / "upload", data=body(mib)) as resp:
                assert (await echoed(resp))["received"] == mib * MiB
            url = proxy.with_path("/download").with_query(n=str(mib * MiB), length="1", chunk=str(MiB))
            async with client.get(url) as resp:
                total = 0
                async for chunk in resp.content.iter_any():
                    total += len(chunk)
                assert total == mib * MiB

        await roundtrip(2)  # warm up: imports, pools, buffers
        before = peak_rss_kib(sidecar.proc.pid)
        await roundtrip(64)
        growth_mib = (peak_rss_kib(sidecar.proc.pid) - before) / 1024
        assert growth_mib < 16, f"proxy peak RSS grew by {growth_mib:.1f} MiB for 64 MiB bodies"
    finally:
        await sidecar.astop()


async def latin_1_header_status(port: int) -> int:
    """The status of a request whose header holds a byte that is not UTF-8: h1 forwards it, aiohttp refuses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /echo/x HTTP/1.1\r\nHost: console.test\r\nX-Latin-1: caf\xe9\r\nConnection: close\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1])


async def test_a_reload_switches_the_upstream_client(echo_console: Echo, tmp_path: Path) -> None:
    """``upstream_client`` applies on reload (SIGHUP): the next requests go through the other client."""
    config = {
        "upstream": str(echo_console.url),
        "upstream_client": "h1",
        "sso": {"enabled": False},
        "session": {"cookie_secret": secrets.token_urlsafe(32)},
    }
    sidecar = Sidecar(config, tmp_path / "sidecar", name="sidecar-switch")
    await asyncio.to_thread(sidecar.start)  # the echo console answers on this loop: do not block it
    try:
        assert await latin_1_header_status(sidecar.port) == 200
        for client, expected in (("aiohttp", 400), ("h1", 200)):
            sidecar.reload({**sidecar.config, "upstream_client": client})

            async def switched(want: int = expected) -> bool:
                return await latin_1_header_status(sidecar.port) == want

            await eventually(switched, what=f"upstream_client {client} in use", timeout=10)
    finally:
        await sidecar.astop()


async def test_client_disconnect_mid_download_releases_the_upstream(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    resp = await client.get(proxy / "endless")
    assert await resp.content.readexactly(100000)
    resp.close()  # drop the connection mid-body
    await asyncio.wait_for(echo_console.endless_stopped.wait(), 10)


# --------------------------------------------------------------------------------------------------
# Failures


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    await eventually(condition, what=what, timeout=timeout)


async def status_and_body(client: aiohttp.ClientSession, url: URL) -> tuple[int, bytes]:
    async with client.get(url, headers=JSON) as resp:
        return resp.status, await resp.read()


@contextlib.asynccontextmanager
async def holding(echo: Echo) -> AsyncIterator[list[asyncio.Future[Any]]]:
    """Requests the test starts (appended to the list) are answered and awaited when the block ends."""
    started: list[asyncio.Future[Any]] = []
    try:
        yield started
    finally:
        for release in echo.held:
            release.set()
        await asyncio.gather(*started, return_exceptions=True)


async def test_a_request_beyond_the_connection_cap_waits_then_is_503(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``upstream_max_connections: 2`` and both connections busy, a third request opens no third
    connection: it waits (here 0.5 s), then gets 503; afterwards the two connections serve on."""
    monkeypatch.setattr(upstream_module, "CONNECT_TIMEOUT", 0.5)
    proxy = await make_proxy(echo_console.url, upstream_max_connections=2)
    async with holding(echo_console) as started:
        held = [asyncio.ensure_future(status_and_body(client, proxy / "hold")) for _ in range(2)]
        started += held
        await until(lambda: echo_console.in_flight == 2, "two requests held at the console")
        async with client.get(proxy / "peer", headers=JSON) as resp:
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["error"] == "upstream_busy"
        assert echo_console.max_in_flight == 2 and len(echo_console.peers) == 2
        for release in echo_console.held:
            release.set()
        assert await asyncio.gather(*held) == [(200, b"held"), (200, b"held")]
    assert await status_and_body(client, proxy / "peer") == (200, b"ok")
    assert len(echo_console.peers) == 2, "a connection beyond the cap was opened"


async def test_a_request_beyond_the_connection_cap_gets_the_next_free_connection(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, upstream_max_connections=2)
    async with holding(echo_console) as started:
        held = [asyncio.ensure_future(status_and_body(client, proxy / "hold")) for _ in range(2)]
        started += held
        await until(lambda: echo_console.in_flight == 2, "two requests held at the console")
        third = asyncio.ensure_future(status_and_body(client, proxy / "peer"))
        started.append(third)
        await until(lambda: make_proxy.upstream.waiting == 1, "the third request waiting in the sidecar")
        assert not third.done() and len(echo_console.peers) == 2
        echo_console.held[0].set()
        assert await held[0] == (200, b"held")
        assert await third == (200, b"ok")
        echo_console.held[1].set()
        assert await held[1] == (200, b"held")
    assert echo_console.max_in_flight == 2 and len(echo_console.peers) == 2


async def test_upstream_down_is_502(make_proxy: MakeProxy, client: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(URL(f"http://127.0.0.1:{free_port()}"))
    async with client.get(proxy / "anything", headers=JSON) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "bad_gateway"


async def test_upstream_timeout_is_504(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, timeout=0.3)
    async with client.get(proxy.with_path("/slow").with_query(delay="2"), headers=JSON) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "gateway_timeout"


@dataclass
class RawUpstream:
    """A hand-written HTTP/1.1 server for the misbehaviours aiohttp will not produce."""

    url: URL
    requests: list[bytes]


Respond = Callable[[int, int, bytes], tuple[bytes, bool]]


async def start_raw(respond: Respond) -> tuple[asyncio.Server, RawUpstream]:
    """``respond(connection_no, request_no_on_connection, head)`` -> (bytes to send, keep the connection)."""
    requests: list[bytes] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        conn_no, req_no = connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                req_no += 1
                requests.append(head)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                answer, keep = respond(conn_no, req_no, head)
                writer.write(answer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, RawUpstream(URL(f"http://127.0.0.1:{port}"), requests)


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    servers: list[asyncio.Server] = []

    async def factory(respond: Respond) -> RawUpstream:
        server, raw = await start_raw(respond)
        servers.append(server)
        return raw

    yield factory
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"a" * 100 + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_upstream_closing_mid_body_gives_the_client_a_broken_response(
    answer: bytes, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (answer, False))
    proxy = await make_proxy(raw.url)
    async with client.get(proxy / "truncated") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)


OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_stale_pooled_connection_is_retried_once_for_idempotent_requests(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    # The first connection answers one request and then hangs up on the next, as a console closing an
    # idle keep-alive connection at the moment it is reused would.
    raw = await raw_upstream(lambda conn, n, head: (OK_RESPONSE, True) if conn > 1 or n == 1 else (b"", False))
    proxy = await make_proxy(raw.url)
    for _ in range(2):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
    assert len(raw.requests) == 3


async def test_stale_pooled_connection_is_not_retried_for_post(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (OK_RESPONSE, True) if conn > 1 or n == 1 else (b"", False))
    proxy = await make_proxy(raw.url)
    async with client.get(proxy / "x") as resp:
        assert resp.status == 200
        await resp.read()
    async with client.post(proxy / "x", data=b"once only") as resp:
        assert resp.status == 502
    assert len(raw.requests) == 2


# --------------------------------------------------------------------------------------------------
# Websockets


async def test_websocket_text_and_binary_echo_with_identity(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    headers = {"X_Forwarded_Email": "boss@example.com", "Cookie": f"{make_proxy.cookie}; theme=dark"}
    async with client.ws_connect(proxy / "ws", headers=headers) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello == {
            "user": "alice",
            "email": ["alice@example.com"],
            "spoofed_names": ["X-Forwarded-Email"],
            "protocol": None,
            "cookie": "theme=dark",
            "key_forwarded": True,
        }
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=5) == "héllo"
        payload = os.urandom(200000)
        await ws.send_bytes(payload)
        assert await ws.receive_bytes(timeout=5) == payload
        await ws.close(code=4002, message=b"done")
    assert await asyncio.wait_for(echo_console.ws_closed.get(), 5) == 4002


async def test_websocket_subprotocol_is_negotiated_with_the_console(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.ws_connect(proxy / "ws", protocols=("v3.proto", "v1.proto", "v2.proto")) as ws:
        assert ws.protocol == "v1.proto"
        assert (await ws.receive_json(timeout=5))["protocol"] == "v1.proto"
    async with client.ws_connect(proxy / "ws", protocols=("v9.proto",)) as ws:
        assert ws.protocol is None
        assert (await ws.receive_json(timeout=5))["protocol"] is None


async def test_websocket_close_code_from_console_reaches_the_client(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.ws_connect(proxy / "ws") as ws:
        await ws.receive_json(timeout=5)
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 4001
        assert msg.extra == "bye"
    assert ws.close_code == 4001


async def test_websocket_console_vanishing_closes_the_client_with_bad_gateway(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.ws_connect(proxy / "ws") as ws:
        await ws.receive_json(timeout=5)
        await ws.send_str("drop")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 1014


async def test_websocket_client_vanishing_closes_the_console_with_going_away(
    echo_console: Echo, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(echo_console.url)
    assert proxy.host is not None and proxy.port is not None
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: console.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Cookie: " + make_proxy.cookie.encode() + b"\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.close()  # no close frame
    await writer.wait_closed()
    assert await asyncio.wait_for(echo_console.ws_closed.get(), 5) == 1001


async def test_websocket_refused_by_console_passes_its_status(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(proxy / "ws-forbidden")
    assert info.value.status == 403
    assert info.value.headers is not None
    assert info.value.headers["X-Reason"] == "policy"


async def test_websocket_to_a_down_console_is_502(make_proxy: MakeProxy, client: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(URL(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(proxy / "ws")
    assert info.value.status == 502


# --------------------------------------------------------------------------------------------------
# The HTTP/1.1 client (proxy.upstream.h1.exchange) against answers aiohttp's own server never sends


async def test_keep_alive_connections_are_reused(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []
    raw = await raw_upstream(lambda conn, n, head: (seen.append(conn), (OK_RESPONSE, True))[1])
    proxy = await make_proxy(raw.url)
    for _ in range(5):
        async with client.get(proxy / "x") as resp:
            assert await resp.read() == b"ok"
    assert seen == [1, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connections_the_console_does_not_keep_are_not_reused(
    answer: bytes, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []
    raw = await raw_upstream(lambda conn, n, head: (seen.append(conn), (answer, True))[1])
    proxy = await make_proxy(raw.url)
    for _ in range(3):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
            assert "Connection" not in resp.headers or resp.headers["Connection"].lower() != "close"
    assert seen == [1, 2, 3]


async def test_body_without_length_ends_when_the_console_closes(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    body = b"x" * 300_000
    raw = await raw_upstream(lambda conn, n, head: (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, False))
    proxy = await make_proxy(raw.url)
    for _ in range(2):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == body


async def test_interim_answers_are_skipped(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    raw = await raw_upstream(lambda conn, n, head: (early + early + OK_RESPONSE, True))
    proxy = await make_proxy(raw.url)
    for _ in range(2):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
            assert "Link" not in resp.headers


async def test_head_answer_then_the_next_request_on_the_same_connection(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []

    def respond(conn: int, n: int, head: bytes) -> tuple[bytes, bool]:
        seen.append(conn)
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", True
        return OK_RESPONSE, True

    raw = await raw_upstream(respond)
    proxy = await make_proxy(raw.url)
    async with client.head(proxy / "x") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1234"
    async with client.get(proxy / "x") as resp:
        assert await resp.read() == b"ok"
    assert seen == [1, 1]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nX-Bad\x00Header: 1\r\nContent-Length: 2\r\n\r\nok",
        b"this is not HTTP\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["length-and-chunked", "two-lengths", "nul-in-header", "garbage", "unasked-101"],
)
async def test_malformed_answers_are_502(
    answer: bytes, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (answer, True))
    proxy = await make_proxy(raw.url)
    async with client.get(proxy / "x", headers=JSON) as resp:
        assert resp.status == 502
        data = await resp.json()
        assert data["error"] == "bad_gateway"
        assert "broken response" in data["message"]


async def test_console_going_quiet_mid_body_cuts_the_client_off(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    # Keeps the connection open but never sends the rest: the read timeout, not the client, ends it.
    raw = await raw_upstream(lambda conn, n, head: (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True))
    proxy = await make_proxy(raw.url, timeout=0.5)
    async with client.get(proxy / "x") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)


async def test_post_without_body_says_content_length_zero_and_host_is_kept(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (OK_RESPONSE, True))
    proxy = await make_proxy(raw.url)
    async with client.post(proxy / "x", headers={"Host": "console.example"}) as resp:
        assert resp.status == 200
    head = raw.requests[0].lower()
    assert b"\r\ncontent-length: 0\r\n" in head + b"\r\n"
    assert b"\r\nhost: console.example" in head
    assert b"transfer-encoding" not in head


@pytest.fixture
async def tls_console(tmp_path: Path) -> AsyncIterator[tuple[URL, Path]]:
    """The echo console over https, with a certificate for 127.0.0.1 from a throwaway CA."""
    import ssl

    from support.redis_ha import write_tls_files

    ca, cert, key = write_tls_files(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield URL(f"https://127.0.0.1:{port}"), ca
    await runner.cleanup()


async def test_https_console_is_verified_and_reached(
    tls_console: tuple[URL, Path], make_proxy: MakeProxy, client: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    url, ca = tls_console
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the system trust store, as far as OpenSSL is concerned
    proxy = await make_proxy(url)
    for _ in range(3):
        async with client.get(proxy / "echo" / "over-tls") as resp:
            data = await echoed(resp)
            assert data["raw_path"] == "/echo/over-tls"


async def test_https_console_with_an_untrusted_certificate_is_502(
    tls_console: tuple[URL, Path], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    url, _ = tls_console
    proxy = await make_proxy(url)
    async with client.get(proxy / "echo" / "x", headers=JSON) as resp:
        assert resp.status == 502
        data = await resp.json()
        assert data["error"] == "bad_gateway"
        assert "TLS failed" in data["message"]
