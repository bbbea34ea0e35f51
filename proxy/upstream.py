"""The streaming reverse proxy to the console: plain HTTP and websockets.

Bodies are streamed both ways with back-pressure (never read whole), hop-by-hop headers are dropped in
both directions (RFC 9110 7.6.1), the client's ``Host`` is passed through, and ``X-Forwarded-*`` are
replaced with what the caller decided to trust. Connection-level failures before the response has started
become ``UpstreamError``; after it has started, the client connection is closed so the client sees a
truncated response rather than a silently short one.

Plain HTTP goes through ``proxy.h1`` (a lean HTTP/1.1 client); websockets through aiohttp's client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from proxy import h1
from proxy.errors import BadRequest, UpstreamError
from proxy.h1 import HOP_BY_HOP
from proxy.identity import header_key, remove_headers

log = logging.getLogger(__name__)

# Request headers never copied upstream, compared by ``header_key`` (CGI-style stacks treat
# X_Forwarded_For and X.Forwarded.For as X-Forwarded-For). X-Forwarded-* and X-Real-IP are replaced with the
# caller's trusted values; RFC 7239 Forwarded is dropped rather than rewritten. Expect is answered by
# our own server (100-continue), so forwarding it would make the client side wait for a second one.
_REQUEST_DROP: Final = HOP_BY_HOP | {
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "expect",
}
_REQUEST_DROP_FIRST: Final = frozenset(c for k in _REQUEST_DROP for c in (k[0], k[0].upper()))
_PLAIN_CONNECTION: Final = frozenset({"keep-alive", "close"})
# Never removed because a client listed them in Connection: without Host the sidecar would send the
# console's own address, and without Content-Length the body would lose its framing.
_NOT_LISTABLE: Final = frozenset({"host", "content-length"})
# Re-created by aiohttp for the upstream handshake; the client's values belong to the client's handshake.
_WS_HANDSHAKE: Final = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Accept",
)
# aiohttp adds these when absent; a proxy must not invent them. Accept-Encoding above all: we do not
# decompress, so the console must only compress in encodings the browser offered.
_SKIP_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

# Close codes that may appear in a close frame (RFC 6455 7.4); 1005/1006/1015 are reserved for reporting.
_SENDABLE_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_BAD_GATEWAY: Final = 1014  # IANA registry: "Bad Gateway" - the upstream failed

_DEFAULT_WS_MAX_MESSAGE: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The client facts the upstream is told about; the caller decides which incoming ones to trust.

    ``for_`` is sent as X-Forwarded-For (the address chain, comma-separated, client first), ``client`` as
    X-Real-IP, ``proto`` as X-Forwarded-Proto and ``host`` as X-Forwarded-Host.
    """

    for_: str
    proto: str
    host: str
    client: str

    @classmethod
    def direct(cls, request: web.BaseRequest) -> Forwarded:
        """For a client connected directly (no trusted proxy in front): trust nothing it sent."""
        remote = request.remote or ""
        return cls(for_=remote, proto=request.scheme, host=request.host, client=remote)


class Upstream:
    """One pooled client session to the console, shared by every request of the app."""

    def __init__(
        self,
        base: URL,
        *,
        timeout: float,
        connect_timeout: float = 5.0,
        ws_max_message: int = _DEFAULT_WS_MAX_MESSAGE,
    ) -> None:
        """``timeout`` bounds the wait for the response head and each later read (not the whole body),
        like nginx ``proxy_read_timeout``."""
        if base.query_string or base.fragment:
            raise ValueError("upstream URL must not have a query or fragment")
        self.base = base
        # Joined in front of the request's path_qs by plain concatenation: path_qs is already encoded.
        self._path_prefix = base.raw_path.rstrip("/")
        self._prefix = str(base.origin()) + self._path_prefix
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        self._read_timeout = timeout
        self._connect_timeout = connect_timeout
        self._ws_timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0)
        self._pool: h1.Pool | None = None
        self._ws_max_message = ws_max_message
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        base = self.base
        tls = ssl.create_default_context() if base.scheme == "https" else None
        self._pool = h1.Pool(
            host=base.raw_host or "localhost",
            port=base.port or (443 if tls is not None else 80),
            tls=tls,
            authority=base.raw_authority,
            read_timeout=self._read_timeout,
            connect_timeout=self._connect_timeout,
        )
        # Websockets only: plain HTTP goes through ``h1``.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def forward(
        self,
        request: web.Request,
        *,
        headers: CIMultiDict[str],
        path_qs: str,
        set_headers: Sequence[tuple[str, str]],
        remove_cookies: Callable[[str], bool] | None,
        forwarded: Forwarded,
    ) -> web.StreamResponse:
        """Proxy ``request`` to the console and stream the answer back.

        ``headers`` is the caller's mutable copy of ``request.headers`` with spoofed identity headers
        already removed (``IdentityHeaders.strip``); ``forward`` takes ownership and edits it in place
        (drops hop-by-hop headers and the cookies ``remove_cookies`` selects, sets X-Forwarded-*, then
        adds ``set_headers``). ``path_qs`` is the already-normalised, still-encoded path and raw query.
        A websocket upgrade is proxied as a websocket.
        """
        session, pool = self._session, self._pool
        if session is None or pool is None:
            raise RuntimeError("Upstream.start() was not called")
        upgrade = headers.get("Upgrade")
        framing = headers.get("Transfer-Encoding")
        if framing is not None and framing.lower() != "chunked":
            # aiohttp takes "gzip, chunked" and hands us the body de-chunked but still gzip-coded; sent on
            # re-chunked it would be a different body. nginx refuses such requests too.
            raise BadRequest("The request uses a transfer coding other than chunked.")
        _prepare_headers(headers, set_headers, remove_cookies, forwarded)
        if upgrade is not None and upgrade.lower() == "websocket" and request.method == "GET":
            if request.body_exists or framing is not None:
                # A handshake has no body (RFC 6455 4.1); forwarded, its length would make the console wait
                # for bytes that never come, or read the next ones as the body.
                raise BadRequest("A websocket handshake must not have a body.")
            url = URL(self._prefix + path_qs, encoded=True)
            return await self._websocket(session, request, headers, url, remove_cookies)
        return await _http(pool, request, headers, self._path_prefix + path_qs, remove_cookies)

    # -- websockets --------------------------------------------------------------------------------

    async def _websocket(
        self,
        session: aiohttp.ClientSession,
        request: web.Request,
        headers: CIMultiDict[str],
        url: URL,
        own_cookie: Callable[[str], bool] | None,
    ) -> web.StreamResponse:
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
                timeout=self._ws_timeout,
                autoclose=False,
                autoping=True,
                compress=0,
                max_msg_size=self._ws_max_message,
                decode_text=False,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status and exc.status != 101:
                # The console refused the upgrade (401, 403, 404, a redirect...): pass its answer on.
                refused = web.Response(status=exc.status)
                if exc.headers is not None:
                    passed: CIMultiDict[str] = CIMultiDict(
                        (k, v)
                        for k, v in exc.headers.items()
                        if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
                    )
                    if own_cookie is not None and "Set-Cookie" in passed:
                        _drop_own_set_cookies(passed, own_cookie, request)
                    refused.headers.extend(passed)
                return refused
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
                max_msg_size=self._ws_max_message,
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


# -- plain HTTP ---------------------------------------------------------------------------------------


async def _http(
    pool: h1.Pool,
    request: web.Request,
    headers: CIMultiDict[str],
    target: str,
    own_cookie: Callable[[str], bool] | None,
) -> web.StreamResponse:
    try:
        answer = await pool.request(request.method, target, headers, request.content if request.body_exists else None)
    except h1.Timeout:
        raise UpstreamError("The console did not answer in time.", code="gateway_timeout", status=504) from None
    except h1.Broken as exc:
        raise UpstreamError(f"The console sent a broken response ({exc}).") from None
    except h1.UpstreamFailure as exc:
        raise UpstreamError(f"The console could not be reached ({exc}).") from None

    if own_cookie is not None and "Set-Cookie" in answer.headers:
        _drop_own_set_cookies(answer.headers, own_cookie, request)
    if answer.complete:
        # The whole body arrived with the head (most small responses): answer with one write instead of
        # head and body separately, and hand the pooled connection back before answering.
        whole = web.Response(status=answer.status, reason=answer.reason or None, body=answer.take_body())
        whole.headers.extend(answer.headers)
        answer.release()
        return whole

    released = False
    try:
        resp = web.StreamResponse(status=answer.status, reason=answer.reason or None)
        resp.headers.extend(answer.headers)
        try:
            await resp.prepare(request)
        except OSError:
            return resp  # the client left before the head went out; nothing to tell it
        if await _pump_body(answer, resp, request):
            answer.release()
            released = True
        return resp
    finally:
        if not released:
            answer.close()  # mid-body: the connection cannot be reused


# -- helpers (module level: no attribute lookups through self on the hot path) --------------------------


def _prepare_headers(
    headers: CIMultiDict[str],
    set_headers: Sequence[tuple[str, str]],
    remove_cookies: Callable[[str], bool] | None,
    forwarded: Forwarded,
) -> None:
    connection = headers.getall("Connection", None)
    listed = _connection_tokens(connection) if connection else None
    if listed is None:
        remove_headers(headers, _REQUEST_DROP, first_chars=_REQUEST_DROP_FIRST)
    else:
        remove_headers(headers, _REQUEST_DROP | (listed - _NOT_LISTABLE))

    if remove_cookies is not None:
        cookies = headers.getall("Cookie", None)
        if cookies:
            kept = _filter_cookies(cookies, remove_cookies)
            if kept is None:
                pass  # nothing removed, a single header: leave it as the client sent it
            elif kept:
                headers["Cookie"] = kept
            else:
                del headers["Cookie"]

    headers["X-Forwarded-For"] = forwarded.for_
    headers["X-Forwarded-Proto"] = forwarded.proto
    headers["X-Forwarded-Host"] = forwarded.host
    headers["X-Real-IP"] = forwarded.client
    for name, value in set_headers:
        headers[name] = value


def _connection_tokens(values: list[str]) -> frozenset[str] | None:
    """Header names listed in Connection (RFC 9110 7.6.1); None for the usual bare keep-alive/close."""
    if len(values) == 1 and values[0].lower() in _PLAIN_CONNECTION:
        return None
    return frozenset(header_key(t.strip()) for v in values for t in v.split(","))


def _filter_cookies(values: list[str], remove: Callable[[str], bool]) -> str | None:
    """The Cookie header without the selected cookies; None when it can stay exactly as it was.

    Several Cookie fields (HTTP/2 splits them) are joined with "; " as RFC 9113 8.2.3 asks of gateways.
    """
    changed = len(values) > 1
    kept: list[str] = []
    for value in values:
        for pair in value.split(";"):
            pair = pair.strip()
            if not pair:
                continue
            name = pair.split("=", 1)[0].strip()
            if remove(name):
                changed = True
            else:
                kept.append(pair)
    return "; ".join(kept) if changed else None


def _drop_own_set_cookies(headers: CIMultiDict[str], own_cookie: Callable[[str], bool], request: web.Request) -> None:
    """Remove, in place, every Set-Cookie for one of the sidecar's cookie names.

    A console page that could set the session, pending-login or break-glass cookie could fix a session
    on the browser (session fixation) or sign the user out; those names belong to the sidecar.
    """
    values = headers.getall("Set-Cookie")
    kept = [v for v in values if not own_cookie(v.split("=", 1)[0].strip())]
    if len(kept) == len(values):
        return
    del headers["Set-Cookie"]
    for value in kept:
        headers.add("Set-Cookie", value)
    dropped = sorted({v.split("=", 1)[0].strip() for v in values} - {k.split("=", 1)[0].strip() for k in kept})
    log.warning("the console tried to set the sidecar's own cookie(s) %s on %s %s; dropped [%s]",
                ", ".join(dropped), request.method, request.raw_path.partition("?")[0],
                request.get("request_id", "-"))  # fmt: skip


async def _pump_body(answer: h1.Exchange, resp: web.StreamResponse, request: web.Request) -> bool:
    """Copy the upstream body to the client; True when it all arrived and the connection may be reused."""
    read = answer.read
    write = resp.write
    while True:
        try:
            chunk = await read()
        except h1.UpstreamFailure as exc:
            # The head is out, so no error page is possible: cut the client connection so it sees a
            # truncated body instead of a complete-looking short one.
            log.warning("upstream response aborted mid-body for %s %s: %s", request.method, request.path, exc)
            _abort_client(resp, request)
            return False
        if not chunk:
            break
        try:
            await write(chunk)
        except OSError:
            return False  # the client went away; the upstream connection is closed by the caller
    try:
        await resp.write_eof()
    except OSError:
        return True  # the body was read in full; only the client is gone
    return True


def _abort_client(resp: web.StreamResponse, request: web.Request) -> None:
    resp.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()


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
