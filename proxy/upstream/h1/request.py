"""The request head an ``exchange`` writes: as the client sent it.

aiohttp's server decodes header bytes as UTF-8 with ``surrogateescape``, and ``serialize`` encodes them back
the same way, so obs-text bytes arrive unchanged and the identity values the sidecar sets (``str``) arrive as
UTF-8. The body's framing is ``answer.frame_request``'s, shared with ``aioclient``.
"""

from __future__ import annotations

from collections.abc import Iterable


def serialize(method: str, target: str, headers: Iterable[tuple[str, str]], count: int) -> bytes:
    """The request head: the client's bytes back as they came (``surrogateescape``), the sidecar's own
    values as UTF-8. ``ValueError`` if a name or value holds a line break."""
    lines = "\r\n".join(map(": ".join, headers))
    head = f"{method} {target} HTTP/1.1\r\n{lines}\r\n\r\n" if lines else f"{method} {target} HTTP/1.1\r\n\r\n"
    # Each line ends in the one CRLF we wrote: a CR or LF inside a name or value would split a header.
    if head.count("\n") != count + 2 or head.count("\r") != count + 2:
        raise ValueError("a request header contains a line break")
    return head.encode("utf-8", "surrogateescape")
