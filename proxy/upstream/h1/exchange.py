"""A lean HTTP/1.1 client to the console: one connection and the exchange on it (``pool`` pools them).

Every proxied request pays for the client side of the hop, and aiohttp's general-purpose
``ClientSession`` spends more CPU per request than the whole rest of the sidecar (request and response
objects, cookie and redirect machinery, per-read timers). This client does only what a reverse proxy
needs: write a request head and stream its body, parse the answer with llhttp (``httptools``, the parser
Node.js uses), and hand the body on as it arrives, with back-pressure both ways. ``aioclient`` is the
same over aiohttp, for operators who prefer the well-trodden client (``upstream_client: aiohttp``).

Rules it follows (RFC 9112), beside those every client keeps (``proxy.upstream.answer``):
- one exchange at a time per connection; a connection goes back to the pool only when the request was
  sent in full, the response was read in full and both sides allow keep-alive;
- one exchange is one response: parsing stops at the end of the first final answer. Any byte after it
  (a second answer in the same read, a stray body after a 204) or sent unasked to an idle pooled
  connection retires that connection: such bytes are never read as an answer and the connection is
  never reused, so a console that was tricked into answering twice cannot hand one user's answer to
  the next user (response desynchronisation);
- the request head goes out byte-exact (``request.serialize``); the body exactly as framed: with the
  client's Content-Length, exactly that many bytes (fewer or more aborts the connection, so the console
  never reads the difference as another request), else chunked;
- interim 1xx answers (103 Early Hints...) are skipped; HEAD, 204 and 304 answers have no body; a body
  with neither length nor chunking ends when the console closes the connection;
- ``read_timeout`` bounds every wait for the console (head or next body bytes), not the whole body.

Websockets are not handled here (``forward`` keeps aiohttp's client for them).

An exchange never imports its pool: it talks back through ``PoolSide``, which ``pool.Pool`` implements
(httpcore's ``interfaces`` pattern), so the pool depends on the exchange and never the other way round.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Final, Protocol, cast

import httptools
from aiohttp import StreamReader
from multidict import CIMultiDict

from proxy.upstream.answer import (
    CONTROL,
    FRAMING_REFUSED,
    MAX_FIELD,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_REASON,
    Broken,
    Timeout,
    Unreachable,
    UpstreamFailure,
    chunked_only,
    every_chunk,
    exactly,
    remove_listed,
)

__all__ = ["ClosedEarly", "Exchange", "PoolSide"]

# Read pausing: the console is not read further while this much body waits for the client.
_HIGH_WATER: Final = 256 * 1024


class PoolSide(Protocol):
    """What an exchange needs of the pool that opened its connection (``pool.Pool`` implements it)."""

    loop: asyncio.AbstractEventLoop
    drop: frozenset[bytes]  # response header names never passed on (``answer.dropped``)
    busy: set[Exchange]  # exchanges in flight, which the pool's one timer sweeps for read timeouts

    def watch(self, exchange: Exchange) -> None:
        """A request went out on ``exchange``: sweep it for read timeouts until its answer is complete."""

    def put_back(self, exchange: Exchange) -> None:
        """A finished exchange whose connection may be reused."""

    def forget(self, exchange: Exchange) -> None:
        """The connection closed: it is no longer pooled."""

    def free_slot(self) -> None:
        """The connection ended: its place under the pool's cap is free."""


class ClosedEarly(Unreachable):
    """Closed before the first byte of the answer: a reused connection may have been stale."""


class _Extra(Exception):
    """Raised from a parser callback to stop parsing: bytes followed the end of the answer."""


class _Refused(Exception):
    """Raised from a parser callback: a part of the answer head is over its limit, or not acceptable."""


class Exchange(asyncio.Protocol):
    """One connection to the console, and the request/response exchange currently on it.

    After ``Pool.request`` returns, ``status``, ``reason`` and ``headers`` are known; ``complete`` says
    whether the whole body has already arrived (``take_body``), otherwise ``read`` streams it. Finish
    with ``release`` (back to the pool when reusable) or ``close``.
    """

    def __init__(self, pool: PoolSide) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._drop = pool.drop
        # Counted against the pool's connection cap until the connection ends (``_end``); the pool sets
        # it once the connection is its own.
        self.holds_slot = False
        self.transport: asyncio.Transport | None = None
        self._lost = False
        self._paused_writing = False
        self._drain: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.reused = False
        self.fileno = -1
        self._head_only = False
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._raw_headers: list[tuple[str, str]] = []  # latin-1: one character per byte
        self._head_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused_reading = False
        self._body_task: asyncio.Task[None] | None = None
        self._last_read = 0.0
        self._reset("GET")

    def _reset(self, method: str) -> None:
        """Ready for the next exchange. Only what an exchange that ended reusable (``release``) leaves behind
        is reset: the waiters are None again, ``_raw_headers`` was emptied by ``on_headers_complete``, and
        ``status``, ``reason`` and ``headers`` are set there before anyone reads them (``Pool.request``
        returns an exchange only once its head is in)."""
        if self._head_only:
            # llhttp goes on to the next message by itself after a complete one (it clears its flags and
            # length), so one parser serves every answer on the connection; but after a HEAD answer it still
            # waits for the body the head announced (a callback cannot tell it that none comes).
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = method == "HEAD"
        if self._chunks:  # never, as the body is taken whole; but no byte of it may open the next answer
            self._chunks.clear()
        self._buffered = 0
        self._reason = b""
        self._head_bytes = 0  # bytes fed to the parser before the final head was complete
        self._header_count = 0
        self._listed: list[bytes] | None = None  # Connection header values
        self._framed = False  # Content-Length or chunked: the end of the body is known
        self._have_head = False
        self.complete = False
        self._keep_alive = False
        self._request_sent = False
        self._error: UpstreamFailure | None = None
        self._got_bytes = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        self.fileno = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._last_read = self._loop.time()
        if self.complete:
            # Bytes after a complete answer (a second answer, a HEAD answer's unwanted body) or sent
            # unasked to an idle pooled connection: never parsed, and the connection is retired.
            self._retire()
            return
        if self._have_head:
            self._feed(data)
            return
        room = MAX_HEAD - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._feed(data)
            return
        # Feed only what the head may still take; the rest is body only if the head ended within it.
        self._head_bytes = MAX_HEAD
        self._feed(data[:room])
        if self._error is not None:
            return
        if not self._have_head:
            self._fail(Broken(f"the response head is larger than {MAX_HEAD // 1024} KiB"))
            return
        if not self.complete:
            self._feed(data[room:])
        elif len(data) > room:
            self._retire()

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Broken("it switched protocols unasked"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Extra):
                self._retire()
            elif isinstance(cause, _Refused):
                self._fail(Broken(str(cause)))
            else:
                self._fail(Broken(f"malformed HTTP: {_short(cause or exc)}"))
        except httptools.HttpParserError as exc:
            if self.complete:
                self._retire()  # garbage after a complete answer: the answer stands, the connection goes
            else:
                self._fail(Broken(f"malformed HTTP: {_short(exc)}"))

    def _retire(self) -> None:
        """Never reuse this connection (the answer already read, if any, stands)."""
        self._keep_alive = False
        if self.transport is not None and not self._lost:
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._pool.forget(self)
        self._end()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the console closed the connection"))
        if self.complete:
            return
        if self._have_head and not self._framed and exc is None:
            self._message_done()  # a body without length ends when the connection does
            return
        if not self._got_bytes:
            self._fail(ClosedEarly("connection closed by the console"))
        elif self._have_head:
            self._fail(Broken("connection closed in the middle of the body"))
        else:
            self._fail(Broken("connection closed in the middle of the response head"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Extra  # a second message after the answer: stop before it can touch the first

    def on_status(self, status: bytes) -> None:
        self._reason += status
        if len(self._reason) > MAX_REASON:
            raise _Refused(f"the response reason phrase is longer than {MAX_REASON} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD:
            raise _Refused(f"a response header is larger than {MAX_FIELD // 1024} KiB")
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise _Refused(f"the response has more than {MAX_HEADERS} headers")
        lower = name.lower()
        if lower in self._drop:  # hop-by-hop (the proxy's list), with Connection and Transfer-Encoding
            if lower == b"connection":
                # A single name of a header already dropped ("keep-alive", nginx's every answer) would make
                # ``remove_listed`` look for what is not there: skipped. Only ASCII is lowered and stripped
                # here, so whatever is skipped names the same header for ``remove_listed`` too.
                if value.strip().lower() in self._drop:
                    return
                if self._listed is None:
                    self._listed = [value]
                else:
                    self._listed.append(value)
            elif lower == b"transfer-encoding":
                # llhttp refuses anything but a final "chunked" (RFC 9112 6.3). A coding before it
                # ("gzip, chunked") would reach the client as a body without its coding: refused too.
                if self._framed or not chunked_only(value):
                    raise _Refused(FRAMING_REFUSED)
                self._framed = True
            return
        if lower == b"content-length":
            self._framed = True
        self._raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise httptools.HttpParserError("101 Switching Protocols to a plain request")
            # An interim answer: forget it and parse the final one that follows (its bytes still count
            # towards MAX_HEAD, so an endless stream of 103s ends in a 502).
            self._reason, self._listed, self._framed = b"", None, False
            self._raw_headers.clear()
            self._header_count = 0
            return
        # llhttp refuses control characters in header values, but not in the reason phrase.
        if CONTROL.search(self._reason) is not None:
            raise _Refused("the response reason phrase holds a control character")
        self.status = status
        self.reason = self._reason.decode("latin-1").strip()
        raw = self._raw_headers
        headers = CIMultiDict(raw)
        raw.clear()  # the list goes on to the next answer on this connection
        if self._listed is not None:
            remove_listed(headers, self._listed)
        self.headers = headers
        self._keep_alive = self._parser.should_keep_alive()
        if status in (204, 304):
            self._framed = True
        self._have_head = True
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._head_only:
            self._framed = True
            self._message_done()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self._keep_alive = False  # a body after a HEAD answer's head: dropped, and not reused
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if not self._have_head:
            return  # the end of an interim 1xx answer
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()
        self._message_done()

    # -- state --------------------------------------------------------------------------------------

    def _message_done(self) -> None:
        if self.complete:
            return
        self.complete = True
        self._cancel_timer()
        self._wake_body()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamFailure) -> None:
        if self._error is None:
            self._error = error
        self._cancel_timer()
        for waiter in (self._head_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self.transport is not None and not self._lost:
            self.transport.close()

    def _cancel_timer(self) -> None:
        self._pool.busy.discard(self)

    def check_timeout(self, now: float, timeout: float) -> None:
        """Called by the pool's sweep: fail when someone waits and the console sent nothing for too long."""
        if self.complete or self._error is not None:
            self._pool.busy.discard(self)
        elif (self._head_waiter is not None or self._body_waiter is not None) and now - self._last_read >= timeout:
            self._fail(Timeout("the console did not answer in time"))

    # -- the exchange: sending the request, then reading the answer --------------------------------------

    def send_request(self, method: str, head: bytes, body: StreamReader | None, length: int | None) -> None:
        """Write ``head`` (``request.serialize``), then stream ``body``: exactly ``length`` bytes, else chunked."""
        transport = self.transport
        assert transport is not None
        self._reset(method)
        self._last_read = self._loop.time()
        self._pool.watch(self)
        transport.write(head)
        if body is None:
            self._request_sent = True
        else:
            self._body_task = self._loop.create_task(self._send_body(body, length))

    async def _send_body(self, body: StreamReader, length: int | None) -> None:
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in exactly(body, length) if length is not None else every_chunk(body):
                if self._error is not None or self._lost:
                    return
                if length is None:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self._paused_writing:
                    self._drain = self._loop.create_future()
                    await self._drain
            if length is None:
                transport.write(b"0\r\n\r\n")
            self._request_sent = True
        except Exception:
            # The client's upload broke (a reset, or aiohttp's payload errors for a malformed body), its
            # length did not match (``answer.BodyMismatch``), or the console hung up: cut the request short
            # so the console never takes it for complete.
            if self.transport is not None and not self._lost:
                self.transport.abort()

    async def wait_head(self) -> None:
        if not self._have_head and self._error is None:
            self._head_waiter = self._loop.create_future()
            self._last_read = self._loop.time()
            try:
                await self._head_waiter
            finally:
                self._head_waiter = None
        if self._error is not None:
            raise self._error

    def take_body(self) -> bytes:
        """The whole body, when ``complete`` (it arrived with the head); else what arrived so far (``read``)."""
        chunks = self._chunks
        data = b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused_reading and self.transport is not None:
            # Also for a whole body: more than _HIGH_WATER of it can arrive in the reads of one turn of the
            # loop, before the request's task sees the head; left paused, the pooled connection would never
            # read its next answer.
            self._paused_reading = False
            self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The body bytes that arrived since the last read; b"" at the end. ``Broken``/``Timeout``."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._body_waiter = self._loop.create_future()
            self._last_read = self._loop.time()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None
        return self.take_body()

    def release(self) -> None:
        """Done with the answer: back to the pool when both sides allow it, else closed."""
        self._cancel_timer()
        task = self._body_task
        reusable = (
            self.complete
            and self._keep_alive
            and self._request_sent
            and self._error is None
            and not self._lost
            and (task is None or task.done())
        )
        if reusable:
            self._body_task = None
            self._pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        task, self._body_task = self._body_task, None
        if task is not None and not task.done():
            task.cancel()
        if self.transport is not None and not self._lost:
            self.transport.close()
        self._end()

    def _end(self) -> None:
        """The connection is over (or closing): its place under the pool's cap is free (once)."""
        if self.holds_slot:
            self.holds_slot = False
            self._pool.free_slot()

    @property
    def closing(self) -> bool:
        return self._lost or self.transport is None or self.transport.is_closing()


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:80]
