"""Fixtures of the upstream tests: the echo console, the in-process sidecar per upstream client, a raw console."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from support.proxyrig import UPSTREAM_CLIENTS

from .rig import (
    ECHO_STATE,
    Echo,
    MakeProxy,
    RawUpstream,
    Respond,
    download,
    echo,
    endless,
    gzipped,
    hold,
    hop_response,
    peer,
    slow,
    start_app,
    start_raw,
    status,
    upload,
    ws_echo,
    ws_forbidden,
)


@pytest.fixture
async def echo_console() -> AsyncIterator[Echo]:
    app = web.Application()
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hop", hop_response)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/ws-forbidden", ws_forbidden)
    app.router.add_get("/hold", hold)
    app.router.add_get("/peer", peer)
    state = Echo(url=URL())
    app[ECHO_STATE] = state
    runner, state.url = await start_app(app)
    yield state
    await runner.cleanup()


@pytest.fixture(params=UPSTREAM_CLIENTS)
def upstream_client(request: pytest.FixtureRequest) -> str:
    """Every test that starts a proxy runs once per upstream client (``upstream_client``), and the lean one also
    with aiohttp's response writing whole answers (``relay_writer: aiohttp``): ``proxyrig.UPSTREAM_CLIENTS``."""
    param: str = request.param
    return param


@pytest.fixture
async def make_proxy(client: aiohttp.ClientSession, upstream_client: str) -> AsyncIterator[MakeProxy]:
    factory = MakeProxy(client, upstream_client)
    yield factory
    await factory.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # No invented headers and no decompression: the tests see exactly what crossed the wire.
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        yield session


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    servers: list[asyncio.Server] = []

    async def factory(respond: Respond) -> RawUpstream:
        server, raw = await start_raw(respond)
        servers.append(server)
        return raw

    yield factory
    for server in servers:
        server.close()
        await server.wait_closed()
