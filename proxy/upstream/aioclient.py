"""Plain HTTP to the console over aiohttp's ``ClientSession``: ``upstream_client: aiohttp``.

The well-trodden fallback for ``h1``, for a console the lean client ever misbehaves with. It keeps the
same rules (``proxy.upstream.answer``); how each one is kept on top of aiohttp:

- nothing is decoded or invented: ``auto_decompress=False``, ``skip_auto_headers``, no cookie jar, no
  redirects followed, no proxy from the environment;
- the head limits: the reason phrase, each header line and the header count at aiohttp's parser; the
  whole head, interim 1xx heads included, in ``_Handler``. aiohttp's parser lets control characters
  through in header values and the reason phrase: such an answer is ``Broken`` here;
- one exchange is one response: ``_Handler`` retires a connection on which anything arrives after the
  final answer (in the same read or later, idle in the pool), and the pool never reuses a connection
  with unread bytes; aiohttp on its own would queue such bytes as the answer to the next request. A
  HEAD answer is its head alone: what follows it is never parsed;
- the request goes out as the client sent it: aiohttp writes header strings as UTF-8, which gives back
  the client's bytes when they were UTF-8 (aiohttp's server decodes them so). Bytes that are not (they
  arrive as lone surrogates) cannot be written by aiohttp's writer; such a request is refused
  (``NotForwardable``, a 400), never altered. ``h1`` forwards them;
- the body goes out exactly as declared (``answer.exactly``), and only once: aiohttp's own retry of an
  idempotent request on a stale connection cannot resend a streamed body, so it fails (502) instead;
- the cap on connections is a semaphore of ``max_connections``, waited for ``connect_timeout`` (``Busy``);
- ``read_timeout`` is aiohttp's ``sock_read``, ``connect_timeout`` its ``sock_connect``.

``_Handler`` relies on aiohttp's ``ResponseHandler`` internals (aiohttp 3.14); the upstream tests and the
adversarial proxy suite run against this client too, and catch a change there.
"""

from __future__ import annotations

import asyncio
import functools
import re
import select
import ssl
from collections.abc import AsyncIterator
from typing import Any, Final, cast

import aiohttp
from aiohttp import StreamReader
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict
from yarl import URL

from proxy.upstream.answer import (
    CONTROL,
    FRAMING_REFUSED,
    MAX_FIELD,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_REASON,
    SKIP_AUTO_HEADERS,
    Answer,
    Broken,
    Busy,
    NotForwardable,
    Timeout,
    Unreachable,
    UpstreamFailure,
    chunked_only,
    dropped,
    every_chunk,
    exactly,
    frame_request,
    remove_listed,
)

__all__ = ["AiohttpClient"]

_BARE_CR_LF: Final = re.compile(rb"(?<!\r)\n|\r(?!\n)")


class _Refused(Exception):
    """Raised to the reader of a connection whose answer head is over MAX_HEAD or not strictly framed."""


class _Handler(ResponseHandler):
    """aiohttp's connection protocol, holding the console to one answer per request and strict heads.

    aiohttp's response parser is lenient (llhttp's lenient headers and optional CR before LF): a head
    with bare LFs would be read as more headers than a strict parser sees. So the head bytes are checked
    here before aiohttp parses them: lines end in CRLF only (RFC 9112 2.2), and all heads of one answer
    (interim ones included) fit in MAX_HEAD. The body is not scanned.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._expecting = False  # a request was sent and its final answer is not complete yet
        self._head_open = False  # the bytes arriving now belong to a head
        self._head_bytes = 0
        self._head_start = b""  # the first bytes of the current head (its status code)
        self._seen = b""  # the last bytes of the current head so far, to find its end across reads
        self._retired = False

    def set_response_params(self, *args: Any, **kwargs: Any) -> None:
        # Called for every request on this connection, before it is sent.
        self._expecting = self._head_open = True
        self._head_bytes = 0
        self._head_start = self._seen = b""
        super().set_response_params(*args, **kwargs)

    def data_received(self, data: bytes) -> None:
        if not data:
            super().data_received(data)
            return
        if not self._expecting or self._retired:
            self._retire()  # sent unasked: never parsed, and the connection is not reused
            return
        if self._head_open:
            try:
                body_at = self._scan(data)
            except _Refused as exc:
                self.set_exception(exc)
                self._retire()
                return
            if body_at >= 0 and self._skip_payload:
                # A HEAD answer is its head alone: what follows it (a body sent anyway) is never parsed.
                super().data_received(data[:body_at])
                if body_at < len(data):
                    self._retire()
                return
        super().data_received(data)

    def _scan(self, data: bytes) -> int:
        """Check the head bytes in ``data``; where the final head ends in it (-1: not in this read)."""
        offset = 0  # where in ``data`` the current head's new bytes start
        while True:
            seen = self._seen
            text = seen + data[offset:]
            end = text.find(b"\r\n\r\n")
            stop = len(text) if end < 0 else end + 4
            self._head_bytes += stop - len(seen)
            if self._head_bytes > MAX_HEAD:
                raise _Refused(f"the response head is larger than {MAX_HEAD // 1024} KiB")
            # A CR at the end of a read is judged with the next one; one at the end of ``seen`` is that CR.
            check_from = len(seen) - 1 if seen.endswith(b"\r") else len(seen)
            check_to = stop - 1 if end < 0 and text.endswith(b"\r") else stop
            if _BARE_CR_LF.search(text, check_from, check_to) is not None:
                raise _Refused("the response head has a line break other than CRLF")
            if len(self._head_start) < 12:
                self._head_start += text[len(seen) : len(seen) + 12 - len(self._head_start)]
            if end < 0:
                self._seen = text[-3:]
                return -1
            offset += stop - len(seen)
            code = self._head_start[9:12]
            self._head_start = self._seen = b""
            if not (code.startswith(b"1") and code != b"101"):
                self._head_open = False  # the final head: what follows is the body
                return offset

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        message, payload = data
        if not self._expecting:
            self._retire()  # a second answer after the final one, in the same read
            return
        if message.code >= 200 or message.code == 101:
            if payload is EMPTY_PAYLOAD or payload.is_eof() or self._skip_payload or message.code in (204, 304):
                self._expecting = False
            else:
                payload.on_eof(self._answered)
        super().feed_data(data, size)

    def _answered(self) -> None:
        self._expecting = False

    def _retire(self) -> None:
        self._retired = True
        self._should_close = True
        transport = self.transport
        if transport is not None:
            transport.close()

    def is_connected(self) -> bool:
        """Asked by the pool before it reuses an idle connection (and by its keep-alive sweep)."""
        if self._retired or self.should_close or not super().is_connected():
            return False
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return True
        # Bytes (or a close) that arrived since the event loop last looked would be read as the answer
        # to the next request: such a connection is not reused.
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)


class _AiohttpAnswer:
    """An ``Answer`` over an aiohttp ``ClientResponse``."""

    __slots__ = ("_resp", "_slots", "complete", "headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse, headers: CIMultiDict[str], reason: str, slots: _Slots) -> None:
        self._resp = resp
        self._slots: _Slots | None = slots
        self.status = resp.status
        self.reason = reason
        self.headers = headers
        self.complete = resp.content.is_eof()

    def take_body(self) -> bytes:
        return self._resp.content.read_nowait()

    async def read(self) -> bytes:
        try:
            return await self._resp.content.readany()
        except TimeoutError:
            raise Timeout("the console did not answer in time") from None
        except aiohttp.ClientPayloadError:
            raise Broken("connection closed in the middle of the body") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Broken(f"the body was cut off ({_cause_name(exc)})") from None

    def release(self) -> None:
        self._resp.release()
        self._free()

    def close(self) -> None:
        self._resp.close()
        self._free()

    def _free(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


_Slots = asyncio.Semaphore


class AiohttpClient:
    """Plain HTTP to one console through one aiohttp ``ClientSession``."""

    def __init__(
        self,
        *,
        origin: URL,
        tls: ssl.SSLContext | None,
        read_timeout: float,
        connect_timeout: float,
        max_connections: int,
        drop: frozenset[str],
    ) -> None:
        """``drop``: response header names (lower case) never passed on, e.g. hop-by-hop ones."""
        self._origin = str(origin)
        self._authority = origin.raw_authority
        self._connect_timeout = connect_timeout
        self._cap = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self.waiting = 0  # requests waiting for a connection because the cap is reached
        self._drop = dropped(drop)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, ssl=tls if tls is not None else False, keepalive_timeout=15.0
        )
        # Every connection gets ``_Handler`` instead of aiohttp's ResponseHandler (no public hook for it).
        handler = functools.partial(_Handler, loop=asyncio.get_running_loop())
        connector._factory = cast("functools.partial[ResponseHandler]", handler)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=SKIP_AUTO_HEADERS,
            trust_env=False,
            max_line_size=MAX_REASON,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(self, method: str, target: str, headers: CIMultiDict[str], body: StreamReader | None) -> Answer:
        """Like ``h1.pool.Pool.request``: the body framed by the client's Content-Length, else chunked."""
        if not _utf8(target) or not all(map(_utf8, headers.values())):
            raise NotForwardable("the request holds bytes that are not UTF-8 (upstream_client: aiohttp)")
        # aiohttp says chunked itself for a body of unknown length.
        length = frame_request(method, headers, body is not None, self._authority, say_chunked=False)
        data: AsyncIterator[bytes] | None = None
        if body is not None:
            data = exactly(body, length) if length is not None else every_chunk(body)
        if self._slots.locked():
            self.waiting += 1
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise Busy(f"all {self._cap} connections to the console stayed in use") from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            resp = await self._session.request(
                method,
                URL(self._origin + target, encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
            )
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, Exception):
                raise _failure(exc) from None
            raise
        try:
            reason, answer_headers = self._check(resp)
        except BaseException:
            resp.close()
            self._slots.release()
            raise
        return _AiohttpAnswer(resp, answer_headers, reason, self._slots)

    def _check(self, resp: aiohttp.ClientResponse) -> tuple[str, CIMultiDict[str]]:
        """The reason and headers as ``proxy.upstream.answer`` promises them, or ``Broken``."""
        if resp.status == 101:
            raise Broken("it switched protocols unasked")
        # aiohttp decoded the reason as UTF-8 (surrogateescape): back to its bytes.
        reason = (resp.reason or "").encode("utf-8", "surrogateescape")
        if CONTROL.search(reason) is not None:
            raise Broken("the response reason phrase holds a control character")
        headers: CIMultiDict[str] = CIMultiDict()
        listed: list[bytes] = []
        framing: list[bytes] = []
        drop = self._drop
        for name, value in resp.raw_headers:
            lower = name.lower()
            if lower in drop:
                if lower == b"connection":
                    listed.append(value)
                elif lower == b"transfer-encoding":
                    framing.append(value)
                continue
            if CONTROL.search(value) is not None:
                raise Broken("a response header holds a control character")
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        if framing and (len(framing) > 1 or not chunked_only(framing[0]) or "Content-Length" in headers):
            # With a length as well, the framing is ambiguous (RFC 9112 6.3).
            raise Broken(FRAMING_REFUSED)
        if listed:
            remove_listed(headers, listed)
        return reason.decode("latin-1").strip(), headers  # one character per byte


def _utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _failure(exc: Exception) -> UpstreamFailure:
    """aiohttp's exception for a request that got no answer, as the failure the proxy reports."""
    if isinstance(exc, UpstreamFailure):
        return exc
    if isinstance(exc, _Refused):
        return Broken(str(exc))
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Timeout("connecting timed out")
    if isinstance(exc, TimeoutError):
        return Timeout("the console did not answer in time")
    if isinstance(exc, aiohttp.ClientSSLError):
        os_error = exc.os_error
        reason = getattr(os_error, "reason", None) or type(os_error).__name__
        return Unreachable(f"TLS failed: {reason}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Unreachable(f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return Broken(f"malformed HTTP: {_cause_name(exc)}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Unreachable("connection closed by the console")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return Unreachable(f"the connection failed ({_cause_name(exc)})")
    return Broken(f"malformed HTTP: {_cause_name(exc)}")


def _cause_name(exc: BaseException) -> str:
    """The innermost cause's type: aiohttp's messages may quote the console's bytes, which are not shown."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__
