"""Websockets through the sidecar.

The echo console and the in-process sidecar are in ``rig.py``, their fixtures in ``conftest.py``. Every test
runs once per upstream client.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import WSMsgType
from yarl import URL

from .rig import Echo, MakeProxy, free_port


async def test_websocket_text_and_binary_echo_with_identity(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    headers = {"X_Forwarded_Email": "boss@example.com", "Cookie": f"{make_proxy.cookie}; theme=dark"}
    async with client.ws_connect(proxy / "ws", headers=headers) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello == {
            "user": "alice",
            "email": ["alice@example.com"],
            "spoofed_names": ["X-Forwarded-Email"],
            "protocol": None,
            "cookie": "theme=dark",
            "key_forwarded": True,
        }
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=5) == "héllo"
        payload = os.urandom(200000)
        await ws.send_bytes(payload)
        assert await ws.receive_bytes(timeout=5) == payload
        await ws.close(code=4002, message=b"done")
    assert await asyncio.wait_for(echo_console.ws_closed.get(), 5) == 4002


async def test_websocket_subprotocol_is_negotiated_with_the_console(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.ws_connect(proxy / "ws", protocols=("v3.proto", "v1.proto", "v2.proto")) as ws:
        assert ws.protocol == "v1.proto"
        assert (await ws.receive_json(timeout=5))["protocol"] == "v1.proto"
    async with client.ws_connect(proxy / "ws", protocols=("v9.proto",)) as ws:
        assert ws.protocol is None
        assert (await ws.receive_json(timeout=5))["protocol"] is None


async def test_websocket_close_code_from_console_reaches_the_client(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.ws_connect(proxy / "ws") as ws:
        await ws.receive_json(timeout=5)
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 4001
        assert msg.extra == "bye"
    assert ws.close_code == 4001


async def test_websocket_console_vanishing_closes_the_client_with_bad_gateway(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.ws_connect(proxy / "ws") as ws:
        await ws.receive_json(timeout=5)
        await ws.send_str("drop")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 1014


async def test_websocket_client_vanishing_closes_the_console_with_going_away(
    echo_console: Echo, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(echo_console.url)
    assert proxy.host is not None and proxy.port is not None
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: console.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Cookie: " + make_proxy.cookie.encode() + b"\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.close()  # no close frame
    await writer.wait_closed()
    assert await asyncio.wait_for(echo_console.ws_closed.get(), 5) == 1001


async def test_websocket_refused_by_console_passes_its_status(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(proxy / "ws-forbidden")
    assert info.value.status == 403
    assert info.value.headers is not None
    assert info.value.headers["X-Reason"] == "policy"


async def test_websocket_to_a_down_console_is_502(make_proxy: MakeProxy, client: aiohttp.ClientSession) -> None:
    proxy = await make_proxy(URL(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(proxy / "ws")
    assert info.value.status == 502
