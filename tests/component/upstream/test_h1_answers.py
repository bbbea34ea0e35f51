"""The HTTP/1.1 client (``proxy.upstream.h1``) against answers aiohttp's own server never sends.

The echo console and the in-process sidecar are in ``rig.py``, their fixtures in ``conftest.py``. Every test
runs once per upstream client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from .rig import JSON, OK_RESPONSE, MakeProxy, echo, echoed


async def test_keep_alive_connections_are_reused(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []
    raw = await raw_upstream(lambda conn, n, head: (seen.append(conn), (OK_RESPONSE, True))[1])
    proxy = await make_proxy(raw.url)
    for _ in range(5):
        async with client.get(proxy / "x") as resp:
            assert await resp.read() == b"ok"
    assert seen == [1, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connections_the_console_does_not_keep_are_not_reused(
    answer: bytes, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []
    raw = await raw_upstream(lambda conn, n, head: (seen.append(conn), (answer, True))[1])
    proxy = await make_proxy(raw.url)
    for _ in range(3):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
            assert "Connection" not in resp.headers or resp.headers["Connection"].lower() != "close"
    assert seen == [1, 2, 3]


async def test_body_without_length_ends_when_the_console_closes(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    body = b"x" * 300_000
    raw = await raw_upstream(lambda conn, n, head: (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, False))
    proxy = await make_proxy(raw.url)
    for _ in range(2):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == body


async def test_interim_answers_are_skipped(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    raw = await raw_upstream(lambda conn, n, head: (early + early + OK_RESPONSE, True))
    proxy = await make_proxy(raw.url)
    for _ in range(2):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
            assert "Link" not in resp.headers


async def test_head_answer_then_the_next_request_on_the_same_connection(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []

    def respond(conn: int, n: int, head: bytes) -> tuple[bytes, bool]:
        seen.append(conn)
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", True
        return OK_RESPONSE, True

    raw = await raw_upstream(respond)
    proxy = await make_proxy(raw.url)
    async with client.head(proxy / "x") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1234"
    async with client.get(proxy / "x") as resp:
        assert await resp.read() == b"ok"
    assert seen == [1, 1]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nX-Bad\x00Header: 1\r\nContent-Length: 2\r\n\r\nok",
        b"this is not HTTP\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["length-and-chunked", "two-lengths", "nul-in-header", "garbage", "unasked-101"],
)
async def test_malformed_answers_are_502(
    answer: bytes, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (answer, True))
    proxy = await make_proxy(raw.url)
    async with client.get(proxy / "x", headers=JSON) as resp:
        assert resp.status == 502
        data = await resp.json()
        assert data["error"] == "bad_gateway"
        assert "broken response" in data["message"]


async def test_console_going_quiet_mid_body_cuts_the_client_off(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    # Keeps the connection open but never sends the rest: the read timeout, not the client, ends it.
    raw = await raw_upstream(lambda conn, n, head: (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True))
    proxy = await make_proxy(raw.url, timeout=0.5)
    async with client.get(proxy / "x") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)


async def test_post_without_body_says_content_length_zero_and_host_is_kept(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (OK_RESPONSE, True))
    proxy = await make_proxy(raw.url)
    async with client.post(proxy / "x", headers={"Host": "console.example"}) as resp:
        assert resp.status == 200
    head = raw.requests[0].lower()
    assert b"\r\ncontent-length: 0\r\n" in head + b"\r\n"
    assert b"\r\nhost: console.example" in head
    assert b"transfer-encoding" not in head


@pytest.fixture
async def tls_console(tmp_path: Path) -> AsyncIterator[tuple[URL, Path]]:
    """The echo console over https, with a certificate for 127.0.0.1 from a throwaway CA."""
    import ssl

    from support.redis_ha import write_tls_files

    ca, cert, key = write_tls_files(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield URL(f"https://127.0.0.1:{port}"), ca
    await runner.cleanup()


async def test_https_console_is_verified_and_reached(
    tls_console: tuple[URL, Path], make_proxy: MakeProxy, client: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    url, ca = tls_console
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the system trust store, as far as OpenSSL is concerned
    proxy = await make_proxy(url)
    for _ in range(3):
        async with client.get(proxy / "echo" / "over-tls") as resp:
            data = await echoed(resp)
            assert data["raw_path"] == "/echo/over-tls"


async def test_https_console_with_an_untrusted_certificate_is_502(
    tls_console: tuple[URL, Path], make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    url, _ = tls_console
    proxy = await make_proxy(url)
    async with client.get(proxy / "echo" / "x", headers=JSON) as resp:
        assert resp.status == 502
        data = await resp.json()
        assert data["error"] == "bad_gateway"
        assert "TLS failed" in data["message"]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok",
    ],
    ids=["chunked", "until-close"],
)
async def test_an_answer_without_length_reaches_the_client_with_framing(
    answer: bytes, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """An answer framed by chunks, arriving whole with its head, is relayed with the Content-Length of its body
    (aiohttp's Response sets it); one that ends when the console closes is streamed, chunked. Never without any
    framing."""
    raw = await raw_upstream(lambda conn, n, head: (answer, b"close" not in answer))
    proxy = await make_proxy(raw.url)
    for _ in range(2):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            framing = (resp.headers.get("Content-Length"), resp.headers.get("Transfer-Encoding"))
            assert framing == (("2", None) if b"chunked" in answer else (None, "chunked"))
            assert await asyncio.wait_for(resp.read(), 5) == b"ok"
