"""A strict, nginx-like reading of HTTP/1.1 requests (``ngx_http_parse.c``), for the raw console.

- empty lines before a request line are skipped; a line may end in a bare LF (both are recorded as
  anomalies: a well-behaved proxy sends neither);
- a space before a header's colon, a folded (obs-fold) line, a NUL or a lone CR is an error;
- ``Transfer-Encoding`` other than exactly ``chunked`` is 501; with ``Content-Length`` as well, a second
  ``Content-Length``, a second ``Host``, no Host in HTTP/1.1 or a non-numeric length is 400;
- chunk sizes are hex digits (no ``0x``, no sign, no overflow), extensions are ignored.

The incremental state machine that feeds these (head, then the body by length or chunks) is
``rawconsole.Conn``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_METHOD = re.compile(rb"[A-Z_-]+")  # nginx: upper-case letters, "_" and "-" only
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")  # no controls, no spaces
_VERSION = re.compile(rb"HTTP/1\.[01]")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?")  # 15 hex digits: < 2**60, no overflow
MAX_HEAD = 1024 * 1024
MAX_LINE = 64 * 1024


class ParseError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One request as the console parsed it."""

    conn: int
    index: int  # on its connection, from 0
    method: str
    target: str
    version: str
    raw_headers: list[tuple[bytes, bytes]]
    head: bytes  # the exact bytes from the request line to the empty line, inclusive
    wire_body: bytes  # the body bytes as they came (chunk framing included)
    body: bytes  # the body as the console reads it (de-chunked)
    chunked: bool
    trailers: list[tuple[bytes, bytes]]
    anomalies: list[str]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), decoded as UTF-8 (invalid bytes escaped)."""
        key = name.lower().encode()
        return [v.decode("utf-8", "backslashreplace") for n, v in self.raw_headers if n.lower() == key]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    @property
    def names(self) -> list[str]:
        return [n.decode("latin-1") for n, _ in self.raw_headers]


def head_end(buf: bytearray, start: int) -> int | None:
    """The offset just after the empty line that ends the head (CRLF or bare LF lines)."""
    pos = start
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return None
        if nl == pos or (nl == pos + 1 and buf[pos] == 0x0D):
            return nl + 1
        pos = nl + 1


def parse_head(head: bytes, anomalies: list[str]) -> tuple[str, str, str, list[tuple[bytes, bytes]]]:
    if len(head) > MAX_HEAD:
        raise ParseError("request head too large")
    lines: list[bytes] = []
    for line in head.split(b"\n")[:-1]:  # the head ends in the empty line's LF
        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            anomalies.append("bare LF in the head")
        if b"\r" in line:
            raise ParseError("a CR inside a line")
        lines.append(line)
    request_line, header_lines = lines[0], lines[1:-1]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise ParseError(f"invalid request line {request_line[:80]!r}")
    if not _VERSION.fullmatch(parts[2]):
        raise ParseError(f"unsupported version {parts[2][:20]!r}")
    headers = [header_line(line) for line in header_lines]
    version = parts[2].decode()
    _check_framing(headers, version)
    return parts[0].decode(), parts[1].decode("latin-1"), version, headers


def header_line(line: bytes) -> tuple[bytes, bytes]:
    if line[:1] in (b" ", b"\t"):
        raise ParseError("a folded header line (obs-fold)")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise ParseError(f"invalid header line {line[:80]!r}")
    value = value.strip(b" \t")
    if b"\x00" in value:
        raise ParseError("NUL in a header value")
    return name, value


def _check_framing(headers: list[tuple[bytes, bytes]], version: str) -> None:
    def named(name: bytes) -> list[bytes]:
        return [v for n, v in headers if n.lower() == name]

    hosts, lengths, te = named(b"host"), named(b"content-length"), named(b"transfer-encoding")
    if len(hosts) > 1:
        raise ParseError("duplicate Host")
    if version == "HTTP/1.1" and not hosts:
        raise ParseError("HTTP/1.1 request without Host")
    if len(lengths) > 1:
        raise ParseError("duplicate Content-Length")
    if lengths and not lengths[0].isdigit():
        raise ParseError(f"invalid Content-Length {lengths[0][:20]!r}")
    if te:
        if len(te) > 1:
            raise ParseError("duplicate Transfer-Encoding")
        if lengths:
            raise ParseError("both Content-Length and Transfer-Encoding")
        if version == "HTTP/1.0":
            raise ParseError("Transfer-Encoding in an HTTP/1.0 request")
        if te[0].lower() != b"chunked":
            raise ParseError(f"unknown transfer encoding {te[0][:40]!r}", status=501)


def wants_close(request: Request) -> bool:
    tokens = {t.strip().lower() for v in request.values("Connection") for t in v.split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens
