"""The streaming reverse proxy, over real HTTP: an echo console and the real app (``create_app``) on 127.0.0.1.

Every test runs once per proxy path (``proxyrig.UPSTREAM_CLIENTS``: ``upstream_client: h1 | aiohttp``, and h1 with
``relay_writer: aiohttp``) and goes through the gate:
with SSO on, a session made in the sidecar's store carries the identity; with SSO off, the sidecar passes
requests through.

The rig of the upstream tests: the echo console and the real app served in-process (``MakeProxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.app import create_app
from proxy.config.load import parse_settings
from proxy.config.model import DEFAULT_HEADERS
from proxy.runtime.state import RUNTIME
from proxy.upstream.forward import Upstream
from support.proxyrig import proxy_path_config
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
            **proxy_path_config(self._upstream_client),
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


JSON = {"Accept": "application/json"}  # the sidecar's own errors as JSON, not as a page


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


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    await eventually(condition, what=what, timeout=timeout)


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


OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
