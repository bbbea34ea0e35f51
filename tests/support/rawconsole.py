"""A raw-socket console: a strict, nginx-like HTTP/1.1 server that records the exact bytes it parsed.

It stands behind a sidecar in the adversarial proxy tests. Every connection keeps every byte it
received (``Conn.raw``) and every request it parsed (``Request``: the head's exact bytes, the body's wire
bytes and the de-chunked body). Requests are read as nginx reads them (``support.strictparse``), bodies by
length or chunks (data followed by CRLF, trailers recorded), pipelined and answered in order;
``Connection: close`` ends the connection.

A parse error is recorded (``RawConsole.errors``), answered like nginx (400/501 and close) and fails the
oracle: it means the sidecar sent bytes that a strict server reads differently than it meant.

Answers are scripted per path (``RawConsole.script``) with hand-written bytes; the default answer is a JSON
echo of what the console parsed (identity headers included), so a client can check every response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from support.procs import LOOPBACK
from support.strictparse import (
    CHUNK_SIZE,
    MAX_HEAD,
    MAX_LINE,
    ParseError,
    Request,
    head_end,
    header_line,
    parse_head,
    wants_close,
)


@dataclass
class Reply:
    """Hand-written answer bytes: ``data`` in one write (a list: one write each), then close if asked."""

    data: bytes | list[bytes]
    close: bool = False


Responder = Callable[["Request"], Reply | bytes]


def response(status: int = 200, body: bytes = b"", *headers: str, reason: str = "OK") -> bytes:
    """A well-formed answer with a Content-Length, for scripts; ``headers`` as ``"Name: value"``."""
    lines = [f"HTTP/1.1 {status} {reason}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def echo_body(request: Request) -> dict[str, object]:
    """What the default answer tells: the request as the console parsed it."""
    return {
        "conn": request.conn,
        "n": request.index,
        "method": request.method,
        "target": request.target,
        "headers": [[n.decode("latin-1"), v.decode("utf-8", "backslashreplace")] for n, v in request.raw_headers],
        "body_length": len(request.body),
        "body_sha256": hashlib.sha256(request.body).hexdigest(),
    }


def echo_reply(request: Request) -> Reply:
    body = json.dumps(echo_body(request)).encode()
    closing = wants_close(request)
    extra = ("Connection: close",) if closing else ()
    data = response(200, body, "Content-Type: application/json", *extra)
    if request.method == "HEAD":
        data = data[: data.index(b"\r\n\r\n") + 4]
    return Reply(data, close=closing)


class Conn(asyncio.Protocol):
    """One accepted connection: its bytes, its requests and its parser state."""

    def __init__(self, console: RawConsole, ident: int) -> None:
        self.console = console
        self.id = ident
        self.raw = bytearray()
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self.closed_by_peer = False  # the sidecar closed it (EOF or reset) before we did
        self.last_seq = 0  # the console's ``seq`` when bytes last arrived here
        self._buf = bytearray()
        self._state = "start"
        self._head: tuple[bytes, str, str, str, list[tuple[bytes, bytes]], list[str]] | None = None
        self._body_start = 0
        self._chunk_pos = 0
        self._remaining = 0
        self._body = bytearray()
        self._trailers: list[tuple[bytes, bytes]] = []
        self._done = False  # answered with close, or failed: further bytes are only recorded

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.console.seq += 1
        self.last_seq = self.console.seq
        self.raw += data
        if self._done:
            return
        self._buf += data
        try:
            while not self._done and self._step():
                pass
        except ParseError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        self.closed_by_peer = not self._done
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self.closed_by_peer = True
        self.closed.set()

    # -- pushing bytes ------------------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Write bytes nobody asked for (unsolicited, on an idle connection)."""
        assert self.transport is not None
        self.transport.write(data)

    @property
    def pending(self) -> bytes:
        """Bytes received and not yet part of a complete request (a request the console still waits for)."""
        return bytes(self._buf)

    # -- the parser ---------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Parse as far as the buffer allows; True when a state was completed and the loop should go on."""
        if self._state == "start":
            return self._start()
        if self._state == "length":
            take = min(self._remaining, len(self._buf) - self._body_start - len(self._body))
            if take <= 0 and self._remaining:
                return False
            offset = self._body_start + len(self._body)
            self._body += self._buf[offset : offset + take]
            self._remaining -= take
            if self._remaining == 0:
                self._finish(self._body_start + len(self._body))
                return True
            return False
        if self._state == "chunk-size":
            return self._chunk_size()
        if self._state == "chunk-data":
            return self._chunk_data()
        if self._state == "trailers":
            return self._trailer_lines()
        raise AssertionError(self._state)

    def _start(self) -> bool:
        buf = self._buf
        skipped = 0
        while skipped < len(buf) and buf[skipped] in b"\r\n":
            skipped += 1
        if skipped == len(buf):
            return False
        end = head_end(buf, skipped)
        if end is None:
            if len(buf) > MAX_HEAD:
                raise ParseError("request head too large")
            return False
        anomalies = ["empty lines before the request line"] if skipped else []
        head = bytes(buf[skipped:end])
        method, target, version, headers = parse_head(head, anomalies)
        del buf[:skipped]
        self._head = (head, method, target, version, headers, anomalies)
        self._body_start = len(head)
        self._body = bytearray()
        self._trailers = []
        te = [v for n, v in headers if n.lower() == b"transfer-encoding"]
        lengths = [v for n, v in headers if n.lower() == b"content-length"]
        if te:
            self._state = "chunk-size"
            self._chunk_pos = self._body_start
            return True
        self._remaining = int(lengths[0]) if lengths else 0
        self._state = "length"
        if self._remaining == 0:
            self._finish(self._body_start)
        return True

    def _line(self, start: int) -> tuple[bytes, int] | None:
        """The line at ``start`` without its ending, and the offset after it; None when incomplete."""
        nl = self._buf.find(b"\n", start)
        if nl < 0:
            if len(self._buf) - start > MAX_LINE:
                raise ParseError("line too long")
            return None
        line = bytes(self._buf[start:nl])
        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            assert self._head is not None
            self._head[5].append("bare LF in the chunked body")
        if b"\r" in line:
            raise ParseError("a CR inside a line")
        return line, nl + 1

    def _chunk_size(self) -> bool:
        got = self._line(self._chunk_pos)
        if got is None:
            return False
        line, after = got
        m = CHUNK_SIZE.fullmatch(line)
        if m is None:
            raise ParseError(f"invalid chunk size line {line[:40]!r}")
        size = int(m.group(1), 16)
        self._chunk_pos = after
        if size == 0:
            self._state = "trailers"
        else:
            self._remaining = size
            self._state = "chunk-data"
        return True

    def _chunk_data(self) -> bool:
        available = len(self._buf) - self._chunk_pos
        take = min(self._remaining, available)
        self._body += self._buf[self._chunk_pos : self._chunk_pos + take]
        self._chunk_pos += take
        self._remaining -= take
        if self._remaining:
            return False
        end = self._buf[self._chunk_pos : self._chunk_pos + 2]
        if end == b"\r\n":
            self._chunk_pos += 2
        elif end[:1] == b"\n":
            assert self._head is not None
            self._head[5].append("bare LF after chunk data")
            self._chunk_pos += 1
        elif len(end) < 2 and end in (b"", b"\r"):
            self._remaining = 0
            return False  # wait for the CRLF
        else:
            raise ParseError("chunk data longer than its size")
        self._state = "chunk-size"
        return True

    def _trailer_lines(self) -> bool:
        got = self._line(self._chunk_pos)
        if got is None:
            return False
        line, after = got
        self._chunk_pos = after
        if not line:
            self._finish(after)
            return True
        self._trailers.append(header_line(line))
        return True

    def _finish(self, end: int) -> None:
        assert self._head is not None
        head, method, target, version, headers, anomalies = self._head
        wire_body = bytes(self._buf[len(head) : end])
        request = Request(
            conn=self.id,
            index=len(self.requests),
            method=method,
            target=target,
            version=version,
            raw_headers=headers,
            head=head,
            wire_body=wire_body,
            body=bytes(self._body),
            chunked=self._state != "length",
            trailers=list(self._trailers),
            anomalies=anomalies,
        )
        del self._buf[:end]
        self._state = "start"
        self._head = None
        self.requests.append(request)
        self.console.requests.append(request)
        reply = self.console.answer(request)
        if isinstance(reply, bytes):
            reply = Reply(reply)
        assert self.transport is not None
        if isinstance(reply.data, list):
            for part in reply.data:
                self.transport.write(part)
        else:
            self.transport.write(reply.data)
        if reply.close:
            self._done = True
            self.transport.close()

    def _fail(self, exc: ParseError) -> None:
        message = f"conn {self.id}: {exc}"
        self.errors.append(message)
        self.console.errors.append(message)
        self._done = True
        if self.transport is not None:
            reason = "Bad Request" if exc.status == 400 else "Not Implemented"
            self.transport.write(f"HTTP/1.1 {exc.status} {reason}\r\nConnection: close\r\n\r\n".encode())
            self.transport.close()


@dataclass
class Mark:
    requests: int
    conns: int
    errors: int
    seq: int


class RawConsole:
    """The server: ``start()``, ``url``, ``script(path, reply)``, and what it saw since a ``mark()``."""

    def __init__(self) -> None:
        self.connections: list[Conn] = []
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self.scripts: dict[str, Responder | Reply | bytes] = {}
        self.port = 0
        self.seq = 0  # counts reads on all connections, so a mark can tell which connections got bytes since
        self._server: asyncio.Server | None = None

    async def start(self) -> RawConsole:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in self.connections:
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None
            # abort() closes the socket on a later loop turn: wait for it, or the socket outlives the loop.
            for conn in self.connections:
                await self.wait_closed(conn, timeout=2.0)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _accept(self) -> Conn:
        conn = Conn(self, len(self.connections))
        self.connections.append(conn)
        return conn

    def script(self, path: str, reply: Responder | Reply | bytes) -> None:
        """Answer requests for ``path`` (the target without its query) with ``reply`` from now on."""
        self.scripts[path] = reply

    def answer(self, request: Request) -> Reply | bytes:
        scripted = self.scripts.get(request.path)
        if scripted is None:
            return echo_reply(request)
        if isinstance(scripted, Reply | bytes):
            return scripted
        return scripted(request)

    def mark(self) -> Mark:
        return Mark(len(self.requests), len(self.connections), len(self.errors), self.seq)

    def requests_since(self, mark: Mark) -> list[Request]:
        return self.requests[mark.requests :]

    def errors_since(self, mark: Mark) -> list[str]:
        return self.errors[mark.errors :]

    def connections_since(self, mark: Mark) -> list[Conn]:
        return self.connections[mark.conns :]

    def active_since(self, mark: Mark) -> list[Conn]:
        """Connections that received bytes since ``mark``."""
        return [c for c in self.connections if c.last_seq > mark.seq]

    def conn_of(self, request: Request) -> Conn:
        return self.connections[request.conn]

    async def wait_closed(self, conn: Conn, timeout: float = 5.0) -> bool:
        """True once ``conn`` is closed (by either side) within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await conn.closed.wait()
        except TimeoutError:
            return False
        return True
