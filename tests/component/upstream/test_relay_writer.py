"""``relay_writer``: the relay's own writer of whole answers sends the bytes aiohttp's response would send.

Two sidecars in front of one console, ``relay_writer: lean`` (the default: ``relay.relay_whole``) and ``relay_writer:
aiohttp`` (aiohttp's ``Response``, the well-trodden way), get the same raw requests, and their raw answers are
compared byte for byte (the Date aiohttp adds is the one value that may differ, by a second). The answers cover
what the writer decides itself (Content-Type, Date, Server, Connection, the reason phrase, obs-text bytes), and the
cases it leaves to aiohttp (HTTP/1.0, HEAD, 204 and 304, a whole body without Content-Length); the rest of the suite,
the smuggling suites among it, runs against both writers too (``proxyrig.UPSTREAM_CLIENTS``).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from aiohttp.http import SERVER_SOFTWARE
from yarl import URL

from support.proxyrig import AIOHTTP_WRITER

from .rig import MakeProxy

ANSWERS: dict[str, bytes] = {
    "plain": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
    "no-type": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "empty-typed": b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
    "dated": b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    "server": b"HTTP/1.1 200 OK\r\nserver: console/1\r\nContent-Length: 2\r\n\r\nok",
    "banner": b"HTTP/1.1 200 OK\r\nServer: " + SERVER_SOFTWARE.encode() + b"\r\nContent-Length: 2\r\n\r\nok",
    "banner-twice": b"HTTP/1.1 200 OK\r\nServer: " + SERVER_SOFTWARE.encode() + b"\r\nServer: other\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "no-reason": b"HTTP/1.1 404 \r\nContent-Length: 2\r\n\r\nno",
    "odd-reason": b"HTTP/1.1 299 Quite Fine\r\nContent-Length: 2\r\n\r\nok",
    "unknown-status": b"HTTP/1.1 599\r\nContent-Length: 2\r\n\r\nok",
    "obs-text": b'HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename="caf\xe9.txt"\r\nX-Tab: a\tb\r\n'
    b"Content-Length: 2\r\n\r\nok",
    "cookies": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: sso_sidecar=stolen\r\nSet-Cookie: b=2\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "many": b"HTTP/1.1 302 Found\r\nLocation: /x\r\nCache-Control: no-store\r\nVary: Accept\r\nX-A: 1\r\nx-a: 2\r\n"
    b"Content-Length: 5\r\n\r\nmoved",
    "no-content": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "1"\r\n\r\n',
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "connection-listed": b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
}
REQUESTS = {
    "keep-alive": b"GET /%s HTTP/1.1\r\nHost: console\r\n\r\n",
    "close": b"GET /%s HTTP/1.1\r\nHost: console\r\nConnection: close\r\n\r\n",
    "http/1.0": b"GET /%s HTTP/1.0\r\nHost: console\r\n\r\n",
    "http/1.0 keep-alive": b"GET /%s HTTP/1.0\r\nHost: console\r\nConnection: keep-alive\r\n\r\n",
    "head": b"HEAD /%s HTTP/1.1\r\nHost: console\r\n\r\n",
    "post": b"POST /%s HTTP/1.1\r\nHost: console\r\nContent-Length: 3\r\n\r\nabc",
}
_DATE = re.compile(rb"\r\nDate: [^\r]*")


async def _exchange(url: URL, request: bytes, cookie: str) -> bytes:
    """One request on a new connection; the raw answer, read to the end its own framing gives."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head, _, body = request.partition(b"\r\n\r\n")
    writer.write(head + f"\r\nCookie: {cookie}".encode() + b"\r\n\r\n" + body)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(answer.split(b" ", 2)[1])
        length = re.search(rb"\r\ncontent-length: (\d+)", answer, re.IGNORECASE)
        if request.startswith(b"HEAD") or status in (204, 304):
            pass
        elif length is not None:
            answer += await asyncio.wait_for(reader.readexactly(int(length.group(1))), 5)
        elif re.search(rb"\r\ntransfer-encoding: chunked", answer, re.IGNORECASE):
            while not answer.endswith(b"\r\n0\r\n\r\n"):
                answer += await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        else:
            answer += await asyncio.wait_for(reader.read(), 5)  # until the sidecar closes
    finally:
        writer.close()
    return answer


async def test_the_lean_writer_sends_what_aiohttps_response_sends(
    raw_upstream: Any, client: aiohttp.ClientSession
) -> None:
    def respond(conn: int, n: int, head: bytes) -> tuple[bytes, bool]:
        answer = ANSWERS[head.split(b" ")[1][1:].decode()]
        return answer, b"Connection: close" not in answer  # the console closes where its answer says so

    raw = await raw_upstream(respond)
    lean, fallback = MakeProxy(client, "h1"), MakeProxy(client, AIOHTTP_WRITER)
    try:
        lean_url = await lean(raw.url)
        lean_cookie = lean.cookie.partition("=")[2]
        fallback_url = await fallback(raw.url)
        fallback_cookie = fallback.cookie.partition("=")[2]
        compared = 0
        for name in ANSWERS:
            for kind, template in REQUESTS.items():
                request = template.replace(b"%s", name.encode())
                ours = await _exchange(lean_url, request, "sso_sidecar=" + lean_cookie)
                theirs = await _exchange(fallback_url, request, "sso_sidecar=" + fallback_cookie)
                assert ours.startswith(b"HTTP/1."), (name, kind, ours)
                # The one value allowed to differ: the Date aiohttp adds (a second may have passed).
                if not name.startswith("dated"):
                    ours, theirs = _DATE.sub(b"\r\nDate: -", ours), _DATE.sub(b"\r\nDate: -", theirs)
                assert ours == theirs, (name, kind)
                compared += 1
        assert compared == len(ANSWERS) * len(REQUESTS)
    finally:
        await lean.close()
        await fallback.close()


@pytest.mark.parametrize("value", ["a\x00b", "a\x7fb"])
async def test_a_control_character_in_an_answers_head_never_reaches_the_client(
    value: str, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The clients refuse such a head (502); the writer would refuse it too, as aiohttp's does."""
    answer = b"HTTP/1.1 200 OK\r\nX-Bad: " + value.encode("latin-1") + b"\r\nContent-Length: 2\r\n\r\nok"
    raw = await raw_upstream(lambda conn, n, head: (answer, True))
    proxy = await make_proxy(raw.url)
    async with client.get(proxy / "x") as resp:
        assert resp.status == 502 and "X-Bad" not in resp.headers
