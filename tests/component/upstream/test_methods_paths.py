"""Methods, paths and queries reach the console as the client sent them.

The echo console and the in-process sidecar are in ``rig.py``, their fixtures in ``conftest.py``. Every test
runs once per upstream client.
"""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from .rig import Echo, MakeProxy, echoed


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "TRACE"])
async def test_every_method_is_forwarded(
    method: str, echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    body = b"payload" if method in ("POST", "PUT", "PATCH", "DELETE") else None
    async with client.request(method, proxy / "echo" / "m", data=body) as resp:
        data = await echoed(resp)
    assert data["method"] == method
    assert data["body_length"] == (len(body) if body else 0)


async def test_head_returns_headers_without_body(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy.with_path("/download").with_query(n="5000", length="1")) as resp:
        assert resp.headers["Content-Length"] == "5000"
    async with client.head(proxy.with_path("/download").with_query(n="5000", length="1")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "5000"
        assert await resp.read() == b""


async def test_path_and_query_are_forwarded_byte_for_byte(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    raw = "/echo/a%20b/c%2Fd/%E2%9C%93/semi;colon?x=1&y=a%26b&z=%2B+&empty=&flag&u=%C3%A9"
    async with client.get(URL(str(proxy) + raw, encoded=True)) as resp:
        data = await echoed(resp)
    assert data["raw_path"] == raw


async def test_base_path_prefix_is_joined_in_front(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url / "echo" / "")
    async with client.get(proxy / "x" / "y", params={"q": "1"}) as resp:
        data = await echoed(resp)
    assert data["raw_path"] == "/echo/x/y?q=1"


async def test_redirects_are_passed_through_not_followed(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "status" / "302", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"


@pytest.mark.parametrize("code", [204, 304])
async def test_bodyless_statuses(
    code: int, echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    for _ in range(2):  # and the connection stays usable afterwards
        async with client.get(proxy / "status" / str(code)) as resp:
            assert resp.status == code
            assert await resp.read() == b""
            assert "Transfer-Encoding" not in resp.headers
            if code == 304:
                assert resp.headers["ETag"] == '"v1"'
