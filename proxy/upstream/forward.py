"""The streaming reverse proxy to the console: what is forwarded, through which client, and websockets.

Bodies are streamed both ways with back-pressure (never read whole), hop-by-hop headers are dropped in
both directions (RFC 9110 7.6.1; ``HOP_BY_HOP`` is this proxy's list, which the clients apply to the
answer), the client's ``Host`` is passed through, and ``X-Forwarded-*`` are replaced with what the caller
decided to trust. Connection-level failures before the response has started become ``UpstreamError``
(502; 504 for a timeout, 503 when every allowed connection stayed busy); after it has started, the
client connection is closed so the client sees a truncated response rather than a silently short one.

Plain HTTP goes through the client ``upstream_client`` names: ``h1`` (``h1.pool``, the lean HTTP/1.1
client, the default) or ``aiohttp`` (``aioclient``, the well-trodden fallback), each capped at
``upstream_max_connections``; ``relay`` writes the answer back byte-exact (a whole answer itself, with
``relay_writer: lean``, the default; through aiohttp's response with ``aiohttp``). Websockets go through
aiohttp's client, outside that cap.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NamedTuple, Protocol

import aiohttp
from aiohttp import StreamReader, hdrs, web
from multidict import CIMultiDict, istr
from yarl import URL

from proxy.auth.identity import HeaderFilter, header_key, remove_headers
from proxy.errors import BadRequest, UpstreamError
from proxy.upstream.aioclient import AiohttpClient
from proxy.upstream.answer import SKIP_AUTO_HEADERS, Answer, Broken, Busy, NotForwardable, Timeout, UpstreamFailure
from proxy.upstream.h1.pool import Pool
from proxy.upstream.relay import relay_streamed, relay_whole
from proxy.upstream.websocket import proxy_websocket

UPSTREAM_CLIENTS: Final = ("h1", "aiohttp")
RELAY_WRITERS: Final = ("lean", "aiohttp")
DEFAULT_MAX_CONNECTIONS: Final = 256
# How long a request waits for a connection to the console: to open one, or for one to come free when
# the pool is at its cap (HAProxy's queue timeout defaults to its connect timeout likewise).
CONNECT_TIMEOUT: Final = 5.0
# Headers that describe one hop only (RFC 9110 7.6.1), never passed on in either direction; Connection is
# also read for the names it lists.
HOP_BY_HOP: Final[frozenset[str]] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

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
_REQUEST_FILTER: Final = HeaderFilter(_REQUEST_DROP, first_chars=_REQUEST_DROP_FIRST)
_PLAIN_CONNECTION: Final = frozenset({"keep-alive", "close"})
# Never removed because a client listed them in Connection: without Host the sidecar would send the
# console's own address, and without Content-Length the body would lose its framing.
_NOT_LISTABLE: Final = frozenset({"host", "content-length"})

_DEFAULT_WS_MAX_MESSAGE: Final = 16 * 1024 * 1024

# The names this module reads and writes on every request are ``istr`` (aiohttp's ``hdrs``, and X-Real-IP here): a
# ``CIMultiDict`` takes an istr's lower-cased form as it is instead of lower-casing a plain str on every lookup, set
# and add, and hands back istr keys anyway (it turns every key it iterates into one). Spelled as sent: the key is
# written as given.
_X_REAL_IP: Final = istr("X-Real-IP")


class Forwarded(NamedTuple):
    """The client facts the upstream is told about; the caller decides which incoming ones to trust.

    ``for_`` is sent as X-Forwarded-For (the address chain, comma-separated, client first), ``client`` as
    X-Real-IP, ``proto`` as X-Forwarded-Proto and ``host`` as X-Forwarded-Host. A named tuple rather than a
    frozen dataclass: one is built for every request, and a frozen dataclass's ``__init__`` costs three times as
    much (``object.__setattr__`` per field).
    """

    for_: str
    proto: str
    host: str
    client: str


class _Client(Protocol):
    """What ``Upstream`` needs of a plain-HTTP client (``h1.pool.Pool``, ``aioclient.AiohttpClient``)."""

    @property
    def waiting(self) -> int: ...

    async def request(
        self, method: str, target: str, headers: CIMultiDict[str], body: StreamReader | None
    ) -> Answer: ...


class Upstream:
    """One pooled client session to the console, shared by every request of the app."""

    def __init__(
        self,
        base: URL,
        *,
        timeout: float,
        client: str = "h1",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float | None = None,
        ws_max_message: int = _DEFAULT_WS_MAX_MESSAGE,
        relay_writer: str = "lean",
    ) -> None:
        """``timeout`` bounds the wait for the response head and each later read (not the whole body),
        like nginx ``proxy_read_timeout``. ``client`` is one of ``UPSTREAM_CLIENTS``; ``max_connections``
        caps the plain-HTTP connections to the console, idle or in use. ``relay_writer`` (``RELAY_WRITERS``): who
        writes a whole answer back to the client, ``relay.relay_whole`` itself or aiohttp's response."""
        if base.query_string or base.fragment:
            raise ValueError("upstream URL must not have a query or fragment")
        if client not in UPSTREAM_CLIENTS:
            raise ValueError(f"unknown upstream client {client!r}")
        if relay_writer not in RELAY_WRITERS:
            raise ValueError(f"unknown relay writer {relay_writer!r}")
        self._lean = relay_writer == "lean"
        connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.client = client
        self._max_connections = max_connections
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
        self._client: _Client | None = None
        self._ws_max_message = ws_max_message
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        base = self.base
        tls = ssl.create_default_context() if base.scheme == "https" else None
        if self.client == "aiohttp":
            self._client = AiohttpClient(
                origin=base.origin(),
                tls=tls,
                read_timeout=self._read_timeout,
                connect_timeout=self._connect_timeout,
                max_connections=self._max_connections,
                drop=HOP_BY_HOP,
            )
        else:
            self._client = Pool(
                host=base.raw_host or "localhost",
                port=base.port or (443 if tls is not None else 80),
                tls=tls,
                authority=base.raw_authority,
                read_timeout=self._read_timeout,
                connect_timeout=self._connect_timeout,
                max_connections=self._max_connections,
                drop=HOP_BY_HOP,
            )
        # Websockets only: plain HTTP goes through ``self._client``.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=SKIP_AUTO_HEADERS,
            trust_env=False,
        )

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection to the console because the cap is reached."""
        return self._client.waiting if self._client is not None else 0

    async def close(self) -> None:
        client, self._client = self._client, None
        if isinstance(client, Pool):
            client.close()
        elif isinstance(client, AiohttpClient):
            await client.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def forward(
        self,
        request: web.Request,
        *,
        headers: CIMultiDict[str],
        path_qs: str,
        set_headers: Sequence[tuple[str, str]],
        remove_cookies: Callable[[str], bool] | None,
        forwarded: Forwarded,
    ) -> Awaitable[web.StreamResponse]:
        """Proxy ``request`` to the console and stream the answer back: the coroutine that does, to be awaited
        (a plain function: each frame between the gate and the h1 client is resumed once more per request).

        ``headers`` is the caller's mutable copy of ``request.headers`` with spoofed identity headers
        already removed (``IdentityHeaders.strip``); ``forward`` takes ownership and edits it in place
        (drops hop-by-hop headers and the cookies ``remove_cookies`` selects, sets X-Forwarded-*, then
        sets ``set_headers``, no two of which may be one header). ``path_qs`` is the already-normalised,
        still-encoded path and raw query. A websocket upgrade is proxied as a websocket.
        """
        session, client = self._session, self._client
        if session is None or client is None:
            raise RuntimeError("Upstream.start() was not called")
        upgrade = headers.get(hdrs.UPGRADE)
        framing = headers.get(hdrs.TRANSFER_ENCODING)
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
            return proxy_websocket(
                session,
                request,
                headers,
                url,
                own_cookie=remove_cookies,
                drop=HOP_BY_HOP,
                ws_timeout=self._ws_timeout,
                max_message=self._ws_max_message,
            )
        return _http(client, request, headers, self._path_prefix + path_qs, remove_cookies, self._lean)


# -- plain HTTP ---------------------------------------------------------------------------------------


async def _http(
    client: _Client,
    request: web.Request,
    headers: CIMultiDict[str],
    target: str,
    own_cookie: Callable[[str], bool] | None,
    lean: bool,
) -> web.StreamResponse:
    try:
        answer = await client.request(request.method, target, headers, request.content if request.body_exists else None)
    except Timeout:
        raise UpstreamError("The console did not answer in time.", code="gateway_timeout", status=504) from None
    except Broken as exc:
        raise UpstreamError(f"The console sent a broken response ({exc}).") from None
    except Busy as exc:
        raise UpstreamError(f"The console is busy: {exc}.", code="upstream_busy", status=503) from None
    except NotForwardable as exc:
        raise BadRequest(f"The request cannot be forwarded unchanged: {exc}.") from None
    except UpstreamFailure as exc:
        raise UpstreamError(f"The console could not be reached ({exc}).") from None
    if answer.complete:
        return await relay_whole(answer, request, own_cookie, lean=lean)
    return await relay_streamed(answer, request, own_cookie)


# -- helpers (module level: no attribute lookups through self on the hot path) --------------------------


def _prepare_headers(
    headers: CIMultiDict[str],
    set_headers: Sequence[tuple[str, str]],
    remove_cookies: Callable[[str], bool] | None,
    forwarded: Forwarded,
) -> None:
    connection = headers.getall(hdrs.CONNECTION, None)
    listed = _connection_tokens(connection) if connection else None
    # Either way every X-Forwarded-For/-Proto/-Host and X-Real-IP is gone from here on (``_REQUEST_DROP``).
    if listed is None:
        _REQUEST_FILTER.remove(headers)
    else:
        remove_headers(headers, _REQUEST_DROP | (listed - _NOT_LISTABLE))

    if remove_cookies is not None:
        cookies = headers.getall(hdrs.COOKIE, None)
        if cookies:
            kept = _filter_cookies(cookies, remove_cookies)
            if kept is None:
                pass  # nothing removed, a single header: leave it as the client sent it
            elif kept:
                headers[hdrs.COOKIE] = kept
            else:
                del headers[hdrs.COOKIE]

    # Appended in one call, not set one by one: the four names were removed just above (and Cookie is none of
    # them), so setting each would only append it at the end too, after looking for an old one.
    headers.extend(
        (
            (hdrs.X_FORWARDED_FOR, forwarded.for_),
            (hdrs.X_FORWARDED_PROTO, forwarded.proto),
            (hdrs.X_FORWARDED_HOST, forwarded.host),
            (_X_REAL_IP, forwarded.client),
        )
    )
    # Each replaced in place where present, else appended: what setting them one by one does, in one call. Not
    # appended (extend): an identity header may be named X-Real-IP or X-Forwarded-For (the mapping allows it,
    # and then replaces the sidecar's value in place), which an append would send twice. ``update`` equals
    # setting them one by one only while no two of ``set_headers`` are one header (it would keep both where
    # setting keeps the last): ``IdentityHeaders`` and ``ConsoleIdentity`` refuse any two when built. None on a
    # public path or with SSO off, where update(()) would cost more than the empty loop did.
    if set_headers:
        headers.update(set_headers)


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
