"""Streaming: bodies flow both ways with back-pressure, never read whole.

The echo console and the in-process sidecar are in ``rig.py``, their fixtures in ``conftest.py``. Every test
runs once per upstream client.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from support.proxyrig import proxy_path_config
from support.sidecar import Sidecar
from support.waiting import eventually

from .rig import Echo, MakeProxy, MiB, echoed


async def upload_after_first_block(echo_console: Echo) -> AsyncIterator[bytes]:
    """64 MiB, of which only the first MiB goes out until the console has started receiving."""
    block = b"u" * MiB
    yield block
    await asyncio.wait_for(echo_console.upload_started.wait(), 10)
    for _ in range(63):
        yield block


async def test_upload_with_length_is_streamed(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The console starts receiving before the client has sent it all (it waits for that)."""
    proxy = await make_proxy(echo_console.url)

    headers = {"Content-Length": str(64 * MiB)}
    async with client.put(proxy / "upload", data=upload_after_first_block(echo_console), headers=headers) as resp:
        data = await echoed(resp)
    assert data == {"received": 64 * MiB, "content_length": str(64 * MiB), "transfer_encoding": None}


async def test_upload_without_length_is_streamed_chunked(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)

    async with client.post(proxy / "upload", data=upload_after_first_block(echo_console)) as resp:
        data = await echoed(resp)
    assert data == {"received": 64 * MiB, "content_length": None, "transfer_encoding": "chunked"}


@pytest.mark.parametrize("length", ["1", "0"])
async def test_download_is_streamed(
    length: str, echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The client gets the first bytes before the console has sent it all (it waits for that)."""
    proxy = await make_proxy(echo_console.url)
    url = proxy.with_path("/download").with_query(n=str(64 * MiB), wait="1", length=length, chunk=str(MiB))
    async with client.get(url) as resp:
        first = await asyncio.wait_for(resp.content.readany(), 10)
        assert first
        assert not echo_console.download_finished.is_set()
        echo_console.client_got_first.set()
        total = len(first)
        async for chunk in resp.content.iter_any():
            total += len(chunk)
    assert total == 64 * MiB


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_proxy_process_memory_stays_flat_for_64_mib_each_way(
    echo_console: Echo, client: aiohttp.ClientSession, upstream_client: str, tmp_path: Path
) -> None:
    """The sidecar as it runs (``sso-sidecar run``, SSO off): its peak RSS does not grow with the bodies."""
    config = {
        "upstream": str(echo_console.url),
        **proxy_path_config(upstream_client),
        "sso": {"enabled": False},
        "session": {"cookie_secret": secrets.token_urlsafe(32)},
    }
    sidecar = Sidecar(config, tmp_path / "sidecar", name=f"sidecar-memory-{upstream_client}")
    await asyncio.to_thread(sidecar.start)  # the echo console answers on this loop: do not block it
    try:
        assert sidecar.proc is not None
        proxy = URL(sidecar.url)
        block = b"m" * MiB

        async def body(n: int) -> AsyncIterator[bytes]:
            for _ in range(n):
                yield block

        async def roundtrip(mib: int) -> None:
            async with client.post(proxy / "upload", data=body(mib)) as resp:
                assert (await echoed(resp))["received"] == mib * MiB
            url = proxy.with_path("/download").with_query(n=str(mib * MiB), length="1", chunk=str(MiB))
            async with client.get(url) as resp:
                total = 0
                async for chunk in resp.content.iter_any():
                    total += len(chunk)
                assert total == mib * MiB

        await roundtrip(2)  # warm up: imports, pools, buffers
        before = peak_rss_kib(sidecar.proc.pid)
        await roundtrip(64)
        growth_mib = (peak_rss_kib(sidecar.proc.pid) - before) / 1024
        assert growth_mib < 16, f"proxy peak RSS grew by {growth_mib:.1f} MiB for 64 MiB bodies"
    finally:
        await sidecar.astop()


async def latin_1_header_status(port: int) -> int:
    """The status of a request whose header holds a byte that is not UTF-8: h1 forwards it, aiohttp refuses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /echo/x HTTP/1.1\r\nHost: console.test\r\nX-Latin-1: caf\xe9\r\nConnection: close\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1])


async def test_a_reload_switches_the_upstream_client(echo_console: Echo, tmp_path: Path) -> None:
    """``upstream_client`` applies on reload (SIGHUP): the next requests go through the other client."""
    config = {
        "upstream": str(echo_console.url),
        "upstream_client": "h1",
        "sso": {"enabled": False},
        "session": {"cookie_secret": secrets.token_urlsafe(32)},
    }
    sidecar = Sidecar(config, tmp_path / "sidecar", name="sidecar-switch")
    await asyncio.to_thread(sidecar.start)  # the echo console answers on this loop: do not block it
    try:
        assert await latin_1_header_status(sidecar.port) == 200
        for client, expected in (("aiohttp", 400), ("h1", 200)):
            sidecar.reload({**sidecar.config, "upstream_client": client})

            async def switched(want: int = expected) -> bool:
                return await latin_1_header_status(sidecar.port) == want

            await eventually(switched, what=f"upstream_client {client} in use", timeout=10)
    finally:
        await sidecar.astop()


async def test_client_disconnect_mid_download_releases_the_upstream(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    resp = await client.get(proxy / "endless")
    assert await resp.content.readexactly(100000)
    resp.close()  # drop the connection mid-body
    await asyncio.wait_for(echo_console.endless_stopped.wait(), 10)
