"""A guard on the private aiohttp API that the proxy path relies on.

``proxy/upstream/relay.py`` writes a relayed answer's head itself (latin-1, byte-exact) through ``StreamResponse`` and
``StreamWriter`` internals; ``proxy/upstream/aioclient.py`` puts its own ``ResponseHandler`` under aiohttp's
``TCPConnector``; ``proxy/app.py``'s ``ConsoleDispatch`` stands in for ``Application._handle`` and sets the
request's match info itself. None of that is public API, so an aiohttp upgrade (``make lock``) may move it. These tests
name each internal and fail with a message that says which module needs it, before the smuggling suites fail
in ways that are harder to read. The behaviour itself is held by ``tests/adversarial/test_smuggling_*.py`` and
``tests/component/upstream/``, which run against both upstream clients; the probes below check that the two hooks
still take effect at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict
from yarl import URL

from proxy.upstream import aioclient, relay

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


def _explain(where: str, missing: list[str], needed_by: str) -> str:
    return (
        f"aiohttp {aiohttp.__version__} no longer has {', '.join(f'{where}.{name}' for name in missing)}, "
        f"which {needed_by} relies on. Pin aiohttp back in requirements/ (make lock UPGRADE=none after "
        "restoring the old pin) or port the module to the new internals."
    )


def test_stream_response_internals_that_relay_writes_the_head_through() -> None:
    """relay._ExactHead overrides _write_headers and _start (StreamResponse._start without the prepare signal:
    _prepare_headers, then _write_headers) and reads the response's head state; relay._Sent (an answer relay wrote
    itself) is marked sent (_eof_sent) with its keep-alive, which prepare() and write_eof() then skip, and the
    reason phrases and Date it adds are aiohttp's own (web_response.REASON_PHRASES, helpers.rfc822_formatted_time)."""
    from aiohttp import helpers, web_response

    assert hasattr(web_response, "REASON_PHRASES") and hasattr(helpers, "rfc822_formatted_time"), _explain(
        "aiohttp", ["web_response.REASON_PHRASES or helpers.rfc822_formatted_time"], "proxy/upstream/relay.py"
    )
    response = web.StreamResponse()
    needed = ("_write_headers", "_headers", "_reason", "_status", "_req", "_payload_writer")
    needed += ("_send_headers_immediately", "_start", "_prepare_headers", "_eof_sent", "_keep_alive")
    missing = _missing(response, needed)
    assert not missing, _explain("web.StreamResponse", missing, "proxy/upstream/relay.py (_ExactHead)")
    assert asyncio.iscoroutinefunction(web.StreamResponse._write_headers), _explain(
        "web.StreamResponse", ["_write_headers (as a coroutine)"], "proxy/upstream/relay.py (_ExactHead)"
    )


class _WholeAnswer:
    """A console's answer that arrived whole (``upstream.answer.Answer``): what ``relay_whole`` writes itself."""

    status, reason, complete = 200, "OK", True

    def __init__(self) -> None:
        self.headers = CIMultiDict({"Content-Length": "2"})

    def take_body(self) -> bytes:
        return b"ok"

    async def read(self) -> bytes:
        return b""

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_relay_sent_has_every_field_of_a_stream_response_aiohttp_prepared_and_finished() -> None:
    """relay._Sent sets StreamResponse's fields itself, without its __init__, prepare or write_eof. A plain
    StreamResponse that aiohttp's server prepared and finished (finish_response) is the measure: a field a new
    aiohttp sets there, and may read afterwards (the server, its access log, repr), must be one _Sent sets too,
    or this test fails rather than a request in production."""
    responses: dict[str, web.StreamResponse] = {}

    async def plain(request: web.Request) -> web.StreamResponse:
        responses["plain"] = response = web.StreamResponse()
        response.content_length = 0
        return response  # prepared and finished by the server, as aiohttp does with any response

    async def relayed(request: web.Request) -> web.StreamResponse:
        responses["relayed"] = response = await relay.relay_whole(_WholeAnswer(), request, None)
        return response

    async with _served({"/plain": plain, "/relayed": relayed}) as port:
        # One connection: the server finishes each response before it reads the next request, and closes the
        # connection only once the last one is finished.
        raw = await _exchange(
            port, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\nGET /relayed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 2 and raw.endswith(b"\r\n\r\nok"), raw
    sent, finished = responses["relayed"], responses["plain"]
    assert type(sent) is relay._Sent, "the answer took aiohttp's response, not relay._Sent: see _whole_head"
    missing, stale = sorted(set(vars(finished)) - set(vars(sent))), sorted(set(vars(sent)) - set(vars(finished)))
    assert not missing, (
        f"aiohttp {aiohttp.__version__}'s StreamResponse, prepared and finished, has {', '.join(missing)}, which "
        "relay._Sent does not set: set them in _Sent.__init__ (proxy/upstream/relay.py) to what prepare and "
        "write_eof leave there, or pin aiohttp back in requirements/ (make lock UPGRADE=none)."
    )
    assert not stale, (
        f"relay._Sent sets {', '.join(stale)}, which aiohttp {aiohttp.__version__}'s StreamResponse no longer has "
        "after prepare and write_eof: proxy/upstream/relay.py (_Sent.__init__) needs porting."
    )
    assert (sent.prepared, sent.keep_alive, sent.status, sent.reason) == (True, False, 200, "OK")
    assert sent.body_length == len(raw) - raw.index(b"HTTP/1.1 200 OK\r\n", 1), "the bytes written, as write_eof counts"


async def test_stream_writer_internals_that_relay_fills_with_a_latin1_head() -> None:
    """relay._ExactHead sets StreamWriter._headers_buf / _headers_written and calls send_headers()."""
    writer = StreamWriter(ResponseHandler(asyncio.get_running_loop()), asyncio.get_running_loop())
    missing = _missing(writer, ("_headers_buf", "_headers_written", "send_headers"))
    assert not missing, _explain("http_writer.StreamWriter", missing, "proxy/upstream/relay.py (_ExactHead)")


async def test_response_handler_internals_that_aioclient_overrides() -> None:
    """aioclient._Handler subclasses ResponseHandler and reads its per-request state."""
    handler = ResponseHandler(asyncio.get_running_loop())
    needed = (
        "set_response_params",
        "data_received",
        "feed_data",
        "is_connected",
        "should_close",
        "set_exception",
        "transport",
        "_skip_payload",
        "_should_close",
    )
    missing = _missing(handler, needed)
    assert not missing, _explain("client_proto.ResponseHandler", missing, "proxy/upstream/aioclient.py (_Handler)")


async def test_connector_factory_that_aioclient_replaces() -> None:
    """AiohttpClient swaps TCPConnector._factory (a partial of ResponseHandler) for its own handler."""
    connector = aiohttp.TCPConnector()
    try:
        factory = getattr(connector, "_factory", None)
        assert isinstance(factory, functools.partial) and factory.func is ResponseHandler, _explain(
            "TCPConnector",
            ["_factory (a functools.partial of ResponseHandler)"],
            "proxy/upstream/aioclient.py (AiohttpClient)",
        )
    finally:
        await connector.close()


async def test_a_relayed_head_keeps_its_latin1_bytes_and_aioclient_handler_is_used() -> None:
    """Both hooks take effect: a header byte 0xE9 reaches the client as one byte, and the aiohttp upstream
    client's connections are aioclient._Handler, not aiohttp's own ResponseHandler."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = relay._ExactResponse(status=200, body=b"ok")
        response.headers["Content-Disposition"] = "attachment; filename=caf\xe9.txt"  # latin-1 0xE9
        return response

    release = asyncio.Event()

    async def streaming(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 2
        await response.prepare(request)
        await response.write(b"o")
        await release.wait()  # the answer stays open, so its connection is the client's to inspect
        await response.write(b"k")
        return response

    async with _served({"/": handler, "/streaming": streaming}) as port:
        raw = await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"filename=caf\xe9.txt\r\n" in raw, (
            f"aiohttp {aiohttp.__version__}: relay._ExactHead no longer writes the head as latin-1 "
            f"(got {raw[:300]!r}); see proxy/upstream/relay.py"
        )

        client = aioclient.AiohttpClient(
            origin=URL(f"http://127.0.0.1:{port}"),
            tls=None,
            read_timeout=5,
            connect_timeout=5,
            max_connections=4,
            drop=frozenset(),
        )
        try:
            answer = await client.request("GET", "/streaming", CIMultiDict(), None)
            connection = answer._resp.connection  # type: ignore[attr-defined]
            protocol = connection.protocol if connection is not None else None
            release.set()
            await answer.read()
            answer.release()
            assert isinstance(protocol, aioclient._Handler), (
                f"aiohttp {aiohttp.__version__}: TCPConnector no longer builds its connections with _factory, so "
                "proxy/upstream/aioclient.py's _Handler (strict heads, one answer per request) is not in use "
                f"({protocol!r})"
            )
        finally:
            await client.close()


async def test_application_internals_that_the_console_dispatch_takes_over() -> None:
    """app.ConsoleDispatch stands in for Application._handle (the handler _make_handler gives the server) and sets
    Request._match_info as _handle does, from the catch-all resource's own resolve()."""
    from aiohttp.test_utils import make_mocked_request
    from aiohttp.web_urldispatcher import UrlMappingMatchInfo

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    app = web.Application()
    resource = app.router.add_route("*", "/{tail:.*}", handler).resource
    assert resource is not None
    missing = _missing(app, ("_handle", "_make_handler"))
    assert not missing, _explain("web.Application", missing, "proxy/app.py (ConsoleDispatch)")
    request = make_mocked_request("GET", "/x", app=app)
    assert "_match_info" in web.Request.__slots__ or hasattr(request, "_match_info"), _explain(
        "web.Request", ["_match_info"], "proxy/app.py (ConsoleDispatch)"
    )
    match_info, _ = await resource.resolve(request)
    assert isinstance(match_info, UrlMappingMatchInfo), _explain(
        "DynamicResource.resolve", ["(a UrlMappingMatchInfo)"], "proxy/app.py (ConsoleDispatch)"
    )
    missing = _missing(match_info, ("add_app", "freeze"))
    assert not missing, _explain("UrlMappingMatchInfo", missing, "proxy/app.py (ConsoleDispatch)")
    match_info.add_app(app)
    match_info.freeze()
    request._match_info = match_info
    assert request.app is app and request.match_info is match_info


def test_request_state_that_the_middleware_and_access_log_use_directly() -> None:
    """app.guarded stores the request's log entry, and telemetry.accesslog reads it, through Request._state (the dict
    behind the request's mapping) rather than its Python __setitem__/get: the two must stay the same dict."""
    from aiohttp.test_utils import make_mocked_request

    from proxy.telemetry.logs import LOG, RequestLog

    request = make_mocked_request("GET", "/x")
    missing = _missing(request, ("_state",))
    assert not missing, _explain("web.Request", missing, "proxy/app.py (guarded), proxy/telemetry/accesslog.py")
    entry = RequestLog("id")
    request._state[LOG] = entry
    assert request.get(LOG) is entry and request[LOG] is entry
    assert request._state.get(LOG) is entry


@contextlib.asynccontextmanager
async def _served(routes: dict[str, Handler]) -> AsyncIterator[int]:
    """aiohttp's own server with these GET routes on a free loopback port (the port), stopped at the end."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _exchange(port: int, request: bytes) -> bytes:
    """Send raw request bytes on one connection and read until the server closes it."""
    loop = asyncio.get_running_loop()
    raw = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        while chunk := await loop.run_in_executor(None, sock.recv, 65536):
            raw += chunk
    return raw


async def _ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


# The aiohttp code that proxy/server.py's lean request loop copies, as of the pinned aiohttp: its source's digest.
_COPIED = {"start": "2e565fd40c8e04fb", "_handle_request": "a88a34ee65a2714c", "finish_response": "b7eb53db8f4b30ca"}


async def test_the_request_loop_that_the_lean_loop_copies_is_unchanged() -> None:
    """proxy.server.LeanRequestHandler.start is aiohttp's RequestHandler.start with _handle_request inlined, and
    finishes a response sent whole as finish_response would. A new aiohttp whose loop differs fails here, so that
    the copy is compared with it (a fix there may be one the copy needs) before the digests are updated."""
    import hashlib
    import inspect

    from aiohttp.web_protocol import RequestHandler

    from proxy import server

    changed = [
        name
        for name, digest in _COPIED.items()
        if hashlib.sha256(inspect.getsource(getattr(RequestHandler, name)).encode()).hexdigest()[:16] != digest
    ]
    assert not changed, (
        f"aiohttp {aiohttp.__version__} changed RequestHandler.{', '.join(changed)}, which proxy/server.py's "
        "LeanRequestHandler copies: compare the two, port what changed, then update _COPIED here."
    )
    needed = ("_messages", "_waiter", "_parser", "_buffer_paused", "_msg_queue_resume_size", "_lingering_time")
    needed += ("_request_in_progress", "_handler_waiter", "_upgraded", "_keepalive_handle", "_task_handler")
    handler = RequestHandler(web.Server(_ok), loop=asyncio.get_running_loop())
    missing = _missing(handler, needed)
    assert not missing, _explain("RequestHandler", missing, "proxy/server.py (LeanRequestHandler)")
    assert issubclass(server.SidecarServer, web.Server)
