"""What an upstream client hands the proxy: the console's ``Answer``, why there is none, and the rules both
clients keep.

Two clients implement it (``upstream_client``): ``h1``, the lean HTTP/1.1 client, and ``aioclient``, the
same over aiohttp's ``ClientSession``. Both hold the console's answer to the same rules, so the proxy
(``forward``, ``relay``) does not care which one it talks to:

- the head is bounded by the limits below; going over them is ``Broken`` (a 502), never a memory sink;
- header names and values are the console's bytes decoded as latin-1, one character per byte, so that
  ``relay`` can write them back byte-exact (RFC 9110 5.5: field values are octets, obs-text included);
  values with a control character other than HTAB, and reason phrases with one, are ``Broken``;
- hop-by-hop headers and the ones ``Connection`` lists are already gone, and so is the framing
  (``Transfer-Encoding``): the body is handed on de-chunked, with the console's ``Content-Length`` if it
  sent one;
- the body is never decoded (no decompression).

Each rule the two clients share is written once, below (``frame_request``, ``exactly``, ``remove_listed``,
``CONTROL``...): a fix made in one client and not the other is exactly what the smuggling suites hunt.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from typing import Final, Protocol

from aiohttp import StreamReader, hdrs
from multidict import CIMultiDict

__all__ = [
    "BODY_FREE_METHODS",
    "CONTROL",
    "FRAMING_REFUSED",
    "MAX_FIELD",
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_REASON",
    "SKIP_AUTO_HEADERS",
    "Answer",
    "BodyMismatch",
    "Broken",
    "Busy",
    "NotForwardable",
    "Timeout",
    "Unreachable",
    "UpstreamFailure",
    "chunked_only",
    "dropped",
    "every_chunk",
    "exactly",
    "frame_request",
    "remove_listed",
]

# Limits on the console's answer head (interim 1xx heads included). nginx's proxy_buffer_size allows
# 4-8 KiB for the whole head; consoles with many large cookies need more, so the total is generous, but
# a console can never make the sidecar buffer an unbounded head.
MAX_HEAD: Final = 64 * 1024
MAX_FIELD: Final = 16 * 1024  # one header line, name and value
MAX_HEADERS: Final = 100
MAX_REASON: Final = 512


class UpstreamFailure(Exception):
    """The console could not give an answer; the message is safe to show (no headers, no bodies)."""


class Unreachable(UpstreamFailure):
    """No connection, or it was closed before any answer."""


class Broken(UpstreamFailure):
    """The answer was malformed, over a limit, or cut off in the middle."""


class Timeout(UpstreamFailure):
    """The console did not send anything for the read timeout, or a connection took too long to open."""


class Busy(UpstreamFailure):
    """Every connection the pool may open to the console stayed in use for the whole wait."""


class NotForwardable(UpstreamFailure):
    """The request cannot be sent on byte-exact by this client (it is refused, never changed)."""


class Answer(Protocol):
    """The console's answer to one request, its head read.

    ``complete`` says whether the whole body has already arrived (``take_body``); otherwise ``read``
    streams it (b"" at the end; ``Broken``/``Timeout`` when it is cut off). Finish with ``release``
    (the connection goes back to the pool when both sides allow it) or ``close``.
    """

    status: int
    reason: str  # latin-1, like the headers
    headers: CIMultiDict[str]
    complete: bool

    def take_body(self) -> bytes: ...

    async def read(self) -> bytes: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


# -- the rules both clients keep ------------------------------------------------------------------------

# Requests of these methods have no body unless they say so: without one, a request of any other method says
# ``Content-Length: 0`` (RFC 9110 8.6).
BODY_FREE_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# Request headers aiohttp adds when absent; a proxy must not invent them. Accept-Encoding above all: we do not
# decompress, so the console must only compress in encodings the browser offered.
SKIP_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# Never passed on, whatever the proxy's list says: the clients read them for the framing and keep-alive.
_FRAMING: Final = frozenset({b"connection", b"transfer-encoding"})
# RFC 9110 5.5, RFC 9112 4: HTAB is the only control character a field value or a reason phrase may hold.
CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
FRAMING_REFUSED: Final = "the response framing is ambiguous, or uses a transfer coding other than chunked"


class BodyMismatch(Exception):
    """The request body is not the length its Content-Length declared."""


def dropped(names: Iterable[str]) -> frozenset[bytes]:
    """The response header names (lower case, as bytes) a client never passes on: ``names`` (the proxy's
    hop-by-hop list), with ``Connection`` and ``Transfer-Encoding``."""
    return frozenset(name.encode("latin-1") for name in names) | _FRAMING


def chunked_only(value: bytes) -> bool:
    """A response ``Transfer-Encoding`` the clients accept: ``chunked`` alone. A coding before it ("gzip,
    chunked") would reach the client as a body without its coding (RFC 9112 6.3)."""
    return value.strip().lower() == b"chunked"


def remove_listed(headers: CIMultiDict[str], listed: Iterable[bytes]) -> None:
    """Remove, in place, the headers that the ``Connection`` values ``listed`` name (RFC 9110 7.6.1)."""
    for value in listed:
        for token in value.decode("latin-1").split(","):
            token = token.strip()
            if token:
                headers.popall(token, None)


# The header names below are aiohttp's ``hdrs``, ``istr``: a CIMultiDict takes an istr's lower-cased form as it is,
# where a plain str is lower-cased on every lookup and set; ``frame_request`` runs for every request.


def frame_request(
    method: str, headers: CIMultiDict[str], has_body: bool, authority: str, *, say_chunked: bool
) -> int | None:
    """Frame a request in place; the length its body must have (None: chunked, or no body).

    A body goes with the client's Content-Length when it sent one (and then exactly that many bytes:
    ``exactly``), else chunked (``say_chunked``: set ``Transfer-Encoding`` here, for a client that writes the
    framing itself). A request without a body of a method that may have one says ``Content-Length: 0``; Host is
    the console's authority when the request has none. ``headers`` holds no Transfer-Encoding (hop-by-hop)."""
    declared = headers.get(hdrs.CONTENT_LENGTH)
    length: int | None = None
    if has_body:
        if declared is not None:
            length = int(declared)
        elif say_chunked:
            headers[hdrs.TRANSFER_ENCODING] = "chunked"
    elif method not in BODY_FREE_METHODS and declared is None:
        headers[hdrs.CONTENT_LENGTH] = "0"  # RFC 9110 8.6: a POST without a body says so
    if hdrs.HOST not in headers:
        headers[hdrs.HOST] = authority
    return length


async def exactly(body: StreamReader, length: int) -> AsyncIterator[bytes]:
    """The body's chunks, raising ``BodyMismatch`` before passing on a byte beyond ``length`` or when it ends
    short of it. A body of another length than declared is never sent as it is: the console would read the
    difference as (part of) another request."""
    sent = 0
    while chunk := await body.readany():
        sent += len(chunk)
        if sent > length:
            raise BodyMismatch
        yield chunk
    if sent != length:
        raise BodyMismatch


async def every_chunk(body: StreamReader) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive (a body sent chunked: its length is not known)."""
    while chunk := await body.readany():
        yield chunk
