"""Websockets to the console, over aiohttp's client: the handshake, then messages both ways until one
side closes, whose close code the other side gets.

The console's refusal of a handshake (401, 403, a redirect...) is passed on with its headers, byte-exact
and without hop-by-hop ones or the sidecar's own cookies. A vanished browser is "going away" (1001) to
the console; a vanished console is "bad gateway" (1014) to the browser.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from proxy.errors import UpstreamError
from proxy.upstream.relay import drop_own_set_cookies, exact_response

__all__ = ["proxy_websocket"]

# Re-created by aiohttp for the upstream handshake; the client's values belong to the client's handshake.
_WS_HANDSHAKE: Final = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Accept",
)
# Close codes that may appear in a close frame (RFC 6455 7.4); 1005/1006/1015 are reserved for reporting.
_SENDABLE_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_BAD_GATEWAY: Final = 1014  # IANA registry: "Bad Gateway" - the upstream failed
_CONTROL: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


async def proxy_websocket(
    session: aiohttp.ClientSession,
    request: web.Request,
    headers: CIMultiDict[str],
    url: URL,
    *,
    own_cookie: Callable[[str], bool] | None,
    drop: frozenset[str],
    ws_timeout: aiohttp.ClientWSTimeout,
    max_message: int,
) -> web.StreamResponse:
    """Proxy the websocket ``request`` to ``url``; ``headers`` are the ones to send (hop-by-hop removed),
    ``drop`` the response header names never passed on."""
    offered = _protocols(request)
    if not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
        raise web.HTTPBadRequest(text="Invalid websocket handshake.")
    for name in _WS_HANDSHAKE:
        headers.popall(name, None)
    try:
        upstream_ws = await session.ws_connect(
            url,
            protocols=offered,
            headers=headers,
            timeout=ws_timeout,
            autoclose=False,
            autoping=True,
            compress=0,
            max_msg_size=max_message,
            decode_text=False,
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status and exc.status != 101:
            # The console refused the upgrade (401, 403, 404, a redirect...): pass its answer on.
            return _refused(exc.status, exc.headers, request, own_cookie, drop)
        raise UpstreamError("The console sent an invalid websocket handshake.") from None
    except TimeoutError:
        raise UpstreamError("The console did not answer in time.", code="gateway_timeout", status=504) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"The console could not be reached ({_describe(exc)}).") from None

    client_ws: web.WebSocketResponse[bool] | None = None
    try:
        protocol = upstream_ws.protocol
        client_ws = web.WebSocketResponse(
            protocols=(protocol,) if protocol else (),
            autoclose=False,
            autoping=True,
            max_msg_size=max_message,
            decode_text=False,
        )
        try:
            await client_ws.prepare(request)
        except OSError:
            return client_ws
        await _relay_websocket(client_ws, upstream_ws)
        return client_ws
    finally:
        if not upstream_ws.closed:
            await upstream_ws.close(code=_CLOSE_GOING_AWAY)
        if client_ws is not None and client_ws.prepared and not client_ws.closed:
            await client_ws.close(code=_CLOSE_BAD_GATEWAY)


def _refused(
    status: int,
    headers: MultiMapping[str] | None,
    request: web.Request,
    own_cookie: Callable[[str], bool] | None,
    drop: frozenset[str],
) -> web.Response:
    passed: CIMultiDict[str] = CIMultiDict()
    for name, value in (headers or {}).items():
        lower = name.lower()
        if lower in drop or lower == "content-length":
            continue
        if _CONTROL.search(value) is not None:
            raise UpstreamError("The console sent a broken response (a header holds a control character).")
        # aiohttp's client decoded the bytes as UTF-8 (surrogateescape): back to them, one character each.
        passed.add(name, value.encode("utf-8", "surrogateescape").decode("latin-1"))
    if own_cookie is not None and "Set-Cookie" in passed:
        drop_own_set_cookies(passed, own_cookie, request)
    return exact_response(status, passed)


def _protocols(request: web.Request) -> list[str]:
    return [
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in value.split(",")
        if p.strip()
    ]


async def _relay_websocket(
    client: web.WebSocketResponse[bool], upstream: aiohttp.ClientWebSocketResponse[bool]
) -> None:
    """Pump messages both ways until either side closes, then close the other side with its code."""
    # A vanished browser is "going away" to the console; a vanished console is "bad gateway" to the browser.
    to_upstream = asyncio.ensure_future(
        _pump_ws(client, upstream, src_gone=_CLOSE_GOING_AWAY, dst_gone=_CLOSE_BAD_GATEWAY)
    )
    to_client = asyncio.ensure_future(
        _pump_ws(upstream, client, src_gone=_CLOSE_BAD_GATEWAY, dst_gone=_CLOSE_GOING_AWAY)
    )
    try:
        await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_upstream, to_client):
            if not task.done():
                task.cancel()
        await asyncio.gather(to_upstream, to_client, return_exceptions=True)


_WSAny = web.WebSocketResponse[bool] | aiohttp.ClientWebSocketResponse[bool]


async def _pump_ws(src: _WSAny, dst: _WSAny, *, src_gone: int, dst_gone: int) -> None:
    """Forward src -> dst. On src's close frame, close dst with the same code, then answer src.

    ``src_gone`` is the code dst gets when src vanishes without a close frame, ``dst_gone`` the code src
    gets when dst cannot be written to. Pings and pongs are answered by aiohttp on each leg (autoping), so
    they are not relayed.
    """
    while True:
        msg = await src.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            try:
                await dst.send_frame(msg.data, kind)
            except (OSError, aiohttp.ClientError, RuntimeError):
                await src.close(code=dst_gone)
                return
            continue
        if kind is WSMsgType.CLOSE:
            code = msg.data if msg.data in _SENDABLE_CLOSE_CODES or 3000 <= msg.data <= 4999 else 1000
            reason = msg.extra.encode() if isinstance(msg.extra, str) else (msg.extra or b"")
            await dst.close(code=code, message=reason)
            await src.close(code=code)
            return
        if kind is WSMsgType.CLOSING:
            return  # we are closing src ourselves (the other pump saw the close first)
        # CLOSED / ERROR: src vanished without a close frame.
        await dst.close(code=src_gone)
        return


def _describe(exc: BaseException) -> str:
    """A short reason for logs and the 502 page: the exception type and its OS error, never headers."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the console"
    return type(exc).__name__
