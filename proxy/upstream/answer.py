"""What an upstream client hands the proxy: the console's ``Answer``, and why there is none.

Two clients implement it (``upstream_client``): ``h1``, the lean HTTP/1.1 client, and ``aioclient``, the
same over aiohttp's ``ClientSession``. Both hold the console's answer to the same rules, so the proxy
(``upstream``, ``relay``) does not care which one it talks to:

- the head is bounded by the limits below; going over them is ``Broken`` (a 502), never a memory sink;
- header names and values are the console's bytes decoded as latin-1, one character per byte, so that
  ``relay`` can write them back byte-exact (RFC 9110 5.5: field values are octets, obs-text included);
  values with a control character other than HTAB, and reason phrases with one, are ``Broken``;
- hop-by-hop headers and the ones ``Connection`` lists are already gone, and so is the framing
  (``Transfer-Encoding``): the body is handed on de-chunked, with the console's ``Content-Length`` if it
  sent one;
- the body is never decoded (no decompression).
"""

from __future__ import annotations

from typing import Final, Protocol

from multidict import CIMultiDict

__all__ = [
    "MAX_FIELD",
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_REASON",
    "Answer",
    "Broken",
    "Busy",
    "NotForwardable",
    "Timeout",
    "Unreachable",
    "UpstreamFailure",
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
