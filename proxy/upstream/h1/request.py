"""The request side of an ``h1`` exchange: the head as the client sent it, and the body exactly as framed.

- the head goes out as the client sent it: aiohttp's server decodes header bytes as UTF-8 with
  ``surrogateescape``, and ``serialize`` encodes them back the same way, so obs-text bytes arrive
  unchanged and the identity values the sidecar sets (``str``) arrive as UTF-8;
- the body goes out exactly as framed: with the client's Content-Length, exactly that many bytes (fewer
  or more aborts the connection, so the console never reads the difference as another request), else
  chunked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiohttp import StreamReader

from proxy.upstream.answer import UpstreamFailure


class _BodyMismatch(Exception):
    """The request body is not the length its Content-Length declared."""


class RequestSide:
    """Sending one request on an exchange's connection; ``h1.Exchange`` holds the state named here."""

    transport: asyncio.Transport | None
    _loop: asyncio.AbstractEventLoop
    _error: UpstreamFailure | None
    _lost: bool
    _paused_writing: bool
    _drain: asyncio.Future[None] | None
    _request_sent: bool
    _body_task: asyncio.Task[None] | None

    def _start(self, method: str) -> None:
        """Reset the exchange for a new request (``h1.Exchange``)."""
        raise NotImplementedError

    def send_request(self, method: str, head: bytes, body: StreamReader | None, length: int | None) -> None:
        transport = self.transport
        assert transport is not None
        self._start(method)
        transport.write(head)
        if body is None:
            self._request_sent = True
        else:
            self._body_task = self._loop.create_task(self._send_body(body, length))

    async def _send_body(self, body: StreamReader, length: int | None) -> None:
        """Stream the body: exactly ``length`` bytes when the head declared a Content-Length, else chunked.

        A body that turns out longer or shorter than its declared length is never sent as it is: the
        console would read the difference as (part of) another request.
        """
        transport = self.transport
        assert transport is not None
        sent = 0
        try:
            while True:
                chunk = await body.readany()
                if not chunk:
                    break
                if self._error is not None or self._lost:
                    return
                if length is None:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    sent += len(chunk)
                    if sent > length:
                        raise _BodyMismatch
                    transport.write(chunk)
                if self._paused_writing:
                    self._drain = self._loop.create_future()
                    await self._drain
            if length is None:
                transport.write(b"0\r\n\r\n")
            elif sent != length:
                raise _BodyMismatch
            self._request_sent = True
        except Exception:
            # The client's upload broke (a reset, or aiohttp's payload errors for a malformed body), its
            # length did not match, or the console hung up: cut the request short so the console never
            # takes it for complete.
            self._abort()

    def _abort(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abort()


def serialize(method: str, target: str, headers: Iterable[tuple[str, str]], count: int) -> bytes:
    """The request head: the client's bytes back as they came (``surrogateescape``), the sidecar's own
    values as UTF-8. ``ValueError`` if a name or value holds a line break."""
    lines = "\r\n".join(map(": ".join, headers))
    head = f"{method} {target} HTTP/1.1\r\n{lines}\r\n\r\n" if lines else f"{method} {target} HTTP/1.1\r\n\r\n"
    # Each line ends in the one CRLF we wrote: a CR or LF inside a name or value would split a header.
    if head.count("\n") != count + 2 or head.count("\r") != count + 2:
        raise ValueError("a request header contains a line break")
    return head.encode("utf-8", "surrogateescape")
