"""``server_loop``: the lean request loop (``proxy.server.LeanRequestHandler``) answers every exchange with the bytes
aiohttp's own loop sends, and runs a connection's requests in the connection's task rather than one Task each.

Each exchange is raw bytes on a real socket to an aiohttp application served through ``serve_with``, once per
loop; the answers are compared byte for byte (the Date header aside). The exchanges are those where the two loops
could part: a handler's own response, one it sent whole itself (the fast finish), an HTTP error raised, a crash, a
handler that returns nothing, a malformed request, pipelined requests, a body left unread (lingering close), an
HTTP/1.0 client, ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from proxy import server
from proxy.upstream.relay import _Sent

_DATE = re.compile(rb"\r\nDate: [^\r]*")


class _Tasks:
    """The task each request ran in, in the order the requests came."""

    def __init__(self) -> None:
        self.seen: list[asyncio.Task[object] | None] = []


def _app(tasks: _Tasks) -> web.Application:
    async def plain(request: web.Request) -> web.StreamResponse:
        tasks.seen.append(asyncio.current_task())
        return web.Response(text=f"plain {request.path}")

    async def sent_whole(request: web.Request) -> web.StreamResponse:
        # What relay_whole does: the head and body written directly, then a response that says so.
        tasks.seen.append(asyncio.current_task())
        body = b"written whole\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % len(body)
        await request._payload_writer.write(head + body)
        return _Sent(200, "OK", request.keep_alive, request)

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"part one\n")
        await response.write_eof(b"part two\n")
        return response

    async def missing(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound(text="no such thing")

    async def crash(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("boom")

    async def nothing(request: web.Request) -> web.StreamResponse:
        return None  # type: ignore[return-value]

    async def ignores_body(request: web.Request) -> web.StreamResponse:
        return web.Response(text="body left unread")

    async def reads_body(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"read: " + await request.read())

    app = web.Application()
    app.router.add_get("/plain/{tail:.*}", plain)
    app.router.add_get("/whole", sent_whole)
    app.router.add_get("/streamed", streamed)
    app.router.add_get("/missing", missing)
    app.router.add_get("/crash", crash)
    app.router.add_get("/nothing", nothing)
    app.router.add_post("/ignores", ignores_body)
    app.router.add_post("/reads", reads_body)
    return app


@contextlib.asynccontextmanager
async def _served(loop_for: Callable[[], str], tasks: _Tasks) -> AsyncIterator[int]:
    """The test app served through ``serve_with(app, loop_for)`` on a free loopback port (the port)."""
    app = _app(tasks)
    server.serve_with(app, loop_for)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
    await runner.setup()
    assert isinstance(runner.server, server.SidecarServer)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on one connection, then read to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


CLOSE = b"Connection: close\r\n"
EXCHANGES = {
    "plain": b"GET /plain/a HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "sent whole": b"GET /whole HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "streamed": b"GET /streamed HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "http error": b"GET /missing HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "unrouted": b"GET /nowhere HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "crash": b"GET /crash HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "no response": b"GET /nothing HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "malformed": b"GET /plain/a HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    "pipelined": (
        b"GET /plain/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /whole HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\nGET /plain/2 HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n"
    ),
    "pipelined after an error": (
        b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\nGET /plain/after HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n"
    ),
    "body left unread, then the next request": (
        b"POST /ignores HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello worldGET /plain/next HTTP/1.1\r\n"
        b"Host: x\r\n" + CLOSE + b"\r\n"
    ),
    "body read": b"POST /reads HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" + CLOSE + b"\r\nhello",
    "chunked body left unread": (
        b"POST /ignores HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /plain/next HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n"
    ),
    "http/1.0": b"GET /plain/old HTTP/1.0\r\nHost: x\r\n\r\n",
    "http/1.0 sent whole": b"GET /whole HTTP/1.0\r\nHost: x\r\n\r\n",
    "smuggling: two lengths": (
        b"POST /reads HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "smuggling: length and chunked": (
        b"POST /reads HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /plain/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", sorted(EXCHANGES))
async def test_the_lean_loop_answers_with_aiohttps_bytes(name: str) -> None:
    answers = {}
    for loop_name in server.SERVER_LOOPS:
        async with _served(lambda chosen=loop_name: chosen, _Tasks()) as port:
            answers[loop_name] = _DATE.sub(b"", await _exchange(port, EXCHANGES[name]))
    assert answers["lean"].startswith(b"HTTP/1.")
    assert answers["lean"] == answers["aiohttp"]


async def test_pipelined_answers_come_in_order_and_the_smuggled_request_is_never_served() -> None:
    """Read for itself (not only equal to aiohttp's): the order of pipelined answers, and no answer for a
    request hidden in a body that llhttp refuses to frame."""
    async with _served(lambda: "lean", _Tasks()) as port:
        got = await _exchange(port, EXCHANGES["pipelined"])
        assert re.findall(rb"HTTP/1\.1 (\d{3})", got) == [b"200", b"200", b"404", b"200"]
        assert got.index(b"plain /plain/1") < got.index(b"written whole") < got.index(b"plain /plain/2")
        smuggled = await _exchange(port, EXCHANGES["smuggling: length and chunked"])
        assert re.match(rb"HTTP/1\.[01] 400 ", smuggled)
        assert b"/plain/smuggled" not in smuggled


@pytest.mark.parametrize(("loop_name", "one_task"), [("lean", True), ("aiohttp", False)])
async def test_a_connections_requests_share_its_task_only_in_the_lean_loop(loop_name: str, one_task: bool) -> None:
    tasks = _Tasks()
    async with _served(lambda: loop_name, tasks) as port:
        three = b"".join(b"GET /plain/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(2)) + EXCHANGES["sent whole"]
        got = await _exchange(port, three)
    assert got.count(b"HTTP/1.1 200 OK") == 3
    assert len(tasks.seen) == 3
    assert (len({id(task) for task in tasks.seen}) == 1) is one_task


async def test_each_new_connection_asks_which_loop() -> None:
    """A reload that changes ``server_loop`` applies to the connections opened after it: ``loop_for`` is asked
    per connection, and an open connection keeps the loop it began with."""
    tasks = _Tasks()
    choice = ["aiohttp"]
    async with _served(lambda: choice[0], tasks) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /plain/kept HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"plain /plain/kept")
        assert len({id(t) for t in tasks.seen}) == 2  # aiohttp's loop: a task per request
        choice[0] = "lean"
        writer.write(b"GET /plain/kept HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"plain /plain/kept")
        assert len({id(t) for t in tasks.seen}) == 3  # the open connection keeps aiohttp's loop
        tasks.seen.clear()
        got = await _exchange(port, b"GET /plain/1 HTTP/1.1\r\nHost: x\r\n\r\n" + EXCHANGES["plain"])
        assert got.count(b"200 OK") == 2
        assert len({id(t) for t in tasks.seen}) == 1  # a new connection: the lean loop
        writer.close()


def test_the_server_loop_setting_is_checked() -> None:
    from proxy.config.load import parse_settings
    from proxy.errors import ConfigError

    base = (
        "public_url: http://127.0.0.1:4180\nupstream: http://127.0.0.1:9\n"
        "sso: {issuer_url: 'http://127.0.0.1:9/x', client_id: c, client_secret: s}\n"
        "session: {store: memory, cookie_secret: 9fK2mQx7Lp4Zr8Tb1Wn6Vc3Hy5Jd0Gs2}\n"
    )
    assert parse_settings(base, environ={}).server_loop == "lean"
    assert parse_settings(base + "server_loop: aiohttp\n", environ={}).server_loop == "aiohttp"
    with pytest.raises(ConfigError, match=r"server_loop: must be lean or aiohttp"):
        parse_settings(base + "server_loop: fast\n", environ={})


async def test_the_sidecar_serves_with_the_loop_its_config_names_and_a_reload_changes_it(tmp_path: Path) -> None:
    """``create_app`` wires ``server_loop`` to the config in force: each new connection's handler is the lean
    loop's, and after a reload to ``aiohttp``, aiohttp's own."""
    from aiohttp.web_protocol import RequestHandler

    from proxy.app import create_app
    from proxy.config.load import load_settings
    from proxy.runtime.reload import reload_config
    from proxy.runtime.state import RUNTIME

    path = tmp_path / "config.yaml"
    config = {
        "public_url": "http://127.0.0.1:4180",
        "upstream": "http://127.0.0.1:9",
        "sso": {"issuer_url": "http://127.0.0.1:9/realms/x", "client_id": "console", "client_secret": "unused"},
        "session": {"store": "memory", "cookie_secret": "9fK2mQx7Lp4Zr8Tb1Wn6Vc3Hy5Jd0Gs2"},
    }
    path.write_text(yaml.safe_dump(config))
    app = create_app(load_settings(str(path)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        assert runner.server is not None
        assert type(runner.server()) is server.LeanRequestHandler
        path.write_text(yaml.safe_dump({**config, "server_loop": "aiohttp"}))
        assert await reload_config(app[RUNTIME], str(path))
        assert type(runner.server()) is RequestHandler
        path.write_text(yaml.safe_dump({**config, "server_loop": "quick"}))
        assert not await reload_config(app[RUNTIME], str(path))  # refused, naming the key: the last good stays
        assert app[RUNTIME].reload_status.last_error is not None
        assert "server_loop: must be lean or aiohttp" in str(app[RUNTIME].reload_status.last_error)
        assert type(runner.server()) is RequestHandler
    finally:
        await runner.cleanup()
