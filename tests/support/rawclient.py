"""A raw-socket HTTP/1.1 client: writes hand-crafted bytes and reads back every response, raw.

Its response parser is deliberately simple and literal: status line, header lines, then a body framed by
the request method and the status (HEAD, 1xx, 204, 304: none), ``Transfer-Encoding: chunked``,
``Content-Length`` or the end of the connection. Interim 1xx answers come back as responses of their own,
so a test sees exactly how many answers a connection carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from support.procs import LOOPBACK

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: (.*))?")
# Generous: the suite must be able to read what an unfixed sidecar relays (a 50 MB status line).
MAX_LINE = 128 * 1024 * 1024


class ResponseError(AssertionError):
    """The bytes on the connection are not an HTTP/1.1 response."""


@dataclass
class RawResponse:
    status: int
    reason: bytes
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes

    def values(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("utf-8", "backslashreplace") for n, v in self.raw_headers if n.lower() == key]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name} answered {len(values)} times: {values}"
        return values[0] if values else None

    @property
    def names(self) -> list[str]:
        return [n.decode("latin-1") for n, _ in self.raw_headers]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def interim(self) -> bool:
        return 100 <= self.status < 200

    def __repr__(self) -> str:
        reason = self.reason[:40] + (b"..." if len(self.reason) > 40 else b"")
        return f"<RawResponse {self.status} {reason!r} {len(self.raw_headers)} headers, {len(self.body)} body bytes>"


class RawClient:
    """One TCP connection to ``port``: ``send`` bytes, read ``response()``s, ``until_eof()``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buf = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, port: int, host: str = LOOPBACK) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        return cls(reader, writer)

    async def send(self, *parts: bytes) -> None:
        """Write ``parts`` one write each, waiting for the socket to take each one."""
        for part in parts:
            self._writer.write(part)
            await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reading ------------------------------------------------------------------------------------

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self._reader.read(256 * 1024)
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    async def _line(self) -> bytes:
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                return line
            start = len(self._buf)
            if len(self._buf) > MAX_LINE:
                raise ResponseError("a response line longer than the client's limit")
            if not await self._fill():
                raise EOFError(f"connection closed in the middle of a line: {bytes(self._buf[:80])!r}")

    async def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not await self._fill():
                raise EOFError(f"connection closed after {len(self._buf)} of {n} body bytes")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def _rest(self) -> bytes:
        while await self._fill():
            pass
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def response(self, method: str = "GET", timeout: float = 10.0) -> RawResponse:
        """The next response (an interim 1xx is one too). ``EOFError`` when the connection ends first."""
        async with asyncio.timeout(timeout):
            return await self._response(method)

    async def _response(self, method: str) -> RawResponse:
        if not self._buf and not await self._fill():
            raise EOFError("connection closed before a response")
        status_line = await self._line()
        head = [status_line]
        m = _STATUS_LINE.fullmatch(status_line.rstrip(b"\r\n"))
        if m is None:
            raise ResponseError(f"not a status line: {status_line[:120]!r}")
        status = int(m.group(1))
        headers: list[tuple[bytes, bytes]] = []
        while True:
            line = await self._line()
            head.append(line)
            if line in (b"\r\n", b"\n"):
                break
            name, colon, value = line.rstrip(b"\r\n").partition(b":")
            if not colon:
                raise ResponseError(f"not a header line: {line[:120]!r}")
            headers.append((name, value.strip(b" \t")))
        response = RawResponse(status, m.group(2) or b"", headers, b"", b"".join(head))
        if method == "HEAD" or status < 200 or status in (204, 304):
            return response
        te = response.values("Transfer-Encoding")
        lengths = response.values("Content-Length")
        if te and te[-1].lower().endswith("chunked"):
            response.body = await self._chunked()
        elif lengths:
            response.body = await self._exactly(int(lengths[0]))
        else:
            response.body = await self._rest()
        return response

    async def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int((await self._line()).split(b";")[0].strip(), 16)
            if size == 0:
                while (await self._line()) not in (b"\r\n", b"\n"):
                    pass  # trailers
                return bytes(body)
            body += await self._exactly(size)
            if (await self._exactly(2)) != b"\r\n":
                raise ResponseError("chunk data not followed by CRLF")

    async def until_eof(self, methods: Sequence[str] = (), timeout: float = 10.0) -> list[RawResponse]:
        """Every response until the server closes the connection (``methods`` in request order, GET after).

        Fails (``TimeoutError``) when the server keeps the connection open past ``timeout``.
        """
        responses: list[RawResponse] = []
        finals = 0
        async with asyncio.timeout(timeout):
            while True:
                method = methods[finals] if finals < len(methods) else "GET"
                try:
                    response = await self._response(method)
                except EOFError:
                    if self._buf:
                        raise ResponseError(f"trailing bytes before the close: {bytes(self._buf[:120])!r}") from None
                    return responses
                responses.append(response)
                if not response.interim:
                    finals += 1


async def exchange(port: int, *parts: bytes, methods: Sequence[str] = (), timeout: float = 10.0) -> list[RawResponse]:
    """Open a connection, write ``parts`` (one write each) and read every response until the server closes."""
    async with await RawClient.open(port) as client:
        await client.send(*parts)
        return await client.until_eof(methods, timeout)
