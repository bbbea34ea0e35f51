"""Failures: a console that is down, slow, busy or cut off gives 502, 503 or 504, or a broken response.

The echo console and the in-process sidecar are in ``rig.py``, their fixtures in ``conftest.py``. Every test
runs once per upstream client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.upstream import forward as upstream_module

from .rig import JSON, OK_RESPONSE, Echo, MakeProxy, free_port, until


async def status_and_body(client: aiohttp.ClientSession, url: URL) -> tuple[int, bytes]:
    async with client.get(url, headers=JSON) as resp:
        return resp.status, await resp.read()


@contextlib.asynccontextmanager
async def holding(echo: Echo) -> AsyncIterator[list[asyncio.Future[Any]]]:
    """Requests the test starts (appended to the list) are answered and awaited when the block ends."""
    started: list[asyncio.Future[Any]] = []
    try:
        yield started
    finally:
        for release in echo.held:
            release.set()
        await asyncio.gather(*started, return_exceptions=True)


async def test_a_request_beyond_the_connection_cap_waits_then_is_503(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``upstream_max_connections: 2`` and both connections busy, a third request opens no third
    connection: it waits (here 0.5 s), then gets 503; afterwards the two connections serve on."""
    monkeypatch.setattr(upstream_module, "CONNECT_TIMEOUT", 0.5)
    proxy = await make_proxy(echo_console.url, upstream_max_connections=2)
    async with holding(echo_console) as started:
        held = [asyncio.ensure_future(status_and_body(client, proxy / "hold")) for _ in range(2)]
        started += held
        await until(lambda: echo_console.in_flight == 2, "two requests held at the console")
        async with client.get(proxy / "peer", headers=JSON) as resp:
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["error"] == "upstream_busy"
        assert echo_console.max_in_flight == 2 and len(echo_console.peers) == 2
        for release in echo_console.held:
            release.set()
        assert await asyncio.gather(*held) == [(200, b"held"), (200, b"held")]
    assert await status_and_body(client, proxy / "peer") == (200, b"ok")
    assert len(echo_console.peers) == 2, "a connection beyond the cap was opened"


async def test_a_request_beyond_the_connection_cap_gets_the_next_free_connection(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, upstream_max_connections=2)
    async with holding(echo_console) as started:
        held = [asyncio.ensure_future(status_and_body(client, proxy / "hold")) for _ in range(2)]
        started += held
        await until(lambda: echo_console.in_flight == 2, "two requests held at the console")
        third = asyncio.ensure_future(status_and_body(client, proxy / "peer"))
        started.append(third)
        await until(lambda: make_proxy.upstream.waiting == 1, "the third request waiting in the sidecar")
        assert not third.done() and len(echo_console.peers) == 2
        echo_console.held[0].set()
        assert await held[0] == (200, b"held")
        assert await third == (200, b"ok")
        echo_console.held[1].set()
        assert await held[1] == (200, b"held")
    assert echo_console.max_in_flight == 2 and len(echo_console.peers) == 2


async def test_upstream_down_is_502(make_proxy: MakeProxy, client: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(URL(f"http://127.0.0.1:{free_port()}"))
    async with client.get(proxy / "anything", headers=JSON) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "bad_gateway"


async def test_upstream_timeout_is_504(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, timeout=0.3)
    async with client.get(proxy.with_path("/slow").with_query(delay="2"), headers=JSON) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "gateway_timeout"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"a" * 100 + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_upstream_closing_mid_body_gives_the_client_a_broken_response(
    answer: bytes, raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (answer, False))
    proxy = await make_proxy(raw.url)
    async with client.get(proxy / "truncated") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)


async def test_stale_pooled_connection_is_retried_once_for_idempotent_requests(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    # The first connection answers one request and then hangs up on the next, as a console closing an
    # idle keep-alive connection at the moment it is reused would.
    raw = await raw_upstream(lambda conn, n, head: (OK_RESPONSE, True) if conn > 1 or n == 1 else (b"", False))
    proxy = await make_proxy(raw.url)
    for _ in range(2):
        async with client.get(proxy / "x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
    assert len(raw.requests) == 3


async def test_stale_pooled_connection_is_not_retried_for_post(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    raw = await raw_upstream(lambda conn, n, head: (OK_RESPONSE, True) if conn > 1 or n == 1 else (b"", False))
    proxy = await make_proxy(raw.url)
    async with client.get(proxy / "x") as resp:
        assert resp.status == 200
        await resp.read()
    async with client.post(proxy / "x", data=b"once only") as resp:
        assert resp.status == 502
    assert len(raw.requests) == 2
