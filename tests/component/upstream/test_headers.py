"""Headers: hop-by-hop ones dropped both ways, X-Forwarded-* replaced, identity set, the rest byte-exact.

The echo console and the in-process sidecar are in ``rig.py``, their fixtures in ``conftest.py``. Every test
runs once per upstream client.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict
from yarl import URL

from proxy.upstream.forward import HOP_BY_HOP
from support.rawclient import RawClient

from .rig import COOKIE_NAME, GZIPPED, Echo, MakeProxy, RawUpstream, echoed, header_names, header_values


async def test_hop_by_hop_request_headers_are_not_forwarded(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    headers = {
        "Connection": "keep-alive, X-Hop-Req",
        "X-Hop-Req": "1",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic eDp5",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Upgrade": "foo/1",
        "Transfer_Encoding": "chunked",
        "X-Kept": "yes",
    }
    async with client.get(proxy / "echo" / "hop", headers=headers) as resp:
        data = await echoed(resp)
    names = header_names(data)
    assert not names & (HOP_BY_HOP | {"x-hop-req", "transfer_encoding"})
    assert header_values(data, "X-Kept") == ["yes"]


async def test_hop_by_hop_response_headers_are_not_returned(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "hop") as resp:
        assert await resp.text() == "ok"
        names = {k.lower() for k in resp.headers}
        assert "x-hop-resp" not in names
        assert not names & {"keep-alive", "proxy-authenticate", "trailer"}
        assert resp.headers.get("Connection") is None
        assert resp.headers["X-Kept"] == "yes"
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


async def test_forwarded_headers_replace_client_sent_ones(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    spoof = CIMultiDict(
        [
            ("Host", "console.test:8443"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", "7.7.7.7"),
            ("x_forwarded_for", "8.8.8.8"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
            ("X-Real-IP", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("X.Forwarded.For", "9.9.9.9"),  # PHP reads "." as "_", and CGI "_" as "-"
            ("Forwarded", "for=6.6.6.6;proto=https"),
        ]
    )
    async with client.get(proxy / "echo" / "fwd", headers=spoof) as resp:
        data = await echoed(resp)
    assert header_values(data, "Host") == ["console.test:8443"]  # the client's Host is passed through
    assert header_values(data, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(data, "X-Forwarded-Proto") == ["http"]
    assert header_values(data, "X-Forwarded-Host") == ["console.test:8443"]
    assert header_values(data, "X-Real-IP") == ["127.0.0.1"]
    assert not header_names(data) & {"forwarded", "x_forwarded_for", "x_real_ip", "x.forwarded.for"}


async def test_no_headers_are_invented(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """No Accept-Encoding (we never decompress), User-Agent or Content-Type the client did not send."""
    proxy = await make_proxy(echo_console.url, claims=None)
    async with client.post(proxy / "echo" / "x", data=b"raw", skip_auto_headers=("Content-Type", "Accept")) as resp:
        data = await echoed(resp)
    assert not header_names(data) & {"accept-encoding", "user-agent", "content-type", "accept"}


async def test_spoofed_identity_headers_are_stripped_in_every_spelling(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, claims={"preferred_username": "alice"})
    spoof = CIMultiDict(
        [
            ("X-Forwarded-User", "admin"),
            ("x-forwarded-user", "admin2"),
            ("X_Forwarded_User", "admin3"),
            ("X-FORWARDED-EMAIL", "boss@example.com"),
            ("x_forwarded_groups", "admins"),
            ("X-Forwarded-Access-Token", "t"),
            ("X-Forwarded-Preferred-Username", "admin"),
            ("X-Auth-Request-User", "admin"),
            ("x_auth_request_email", "boss@example.com"),
        ]
    )
    async with client.get(proxy / "echo" / "spoof", headers=spoof) as resp:
        data = await echoed(resp)
    identity_names = {n for n in header_names(data) if n.replace("_", "-").startswith(("x-forwarded-", "x-auth"))}
    assert identity_names == {"x-forwarded-user", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    assert header_values(data, "X-Forwarded-User") == ["alice"]


async def test_pass_through_strips_identity_headers_and_adds_none(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url, claims=None)
    async with client.get(proxy / "echo" / "p", headers={"X_Forwarded_User": "admin"}) as resp:
        data = await echoed(resp)
    assert not any(n.replace("_", "-") == "x-forwarded-user" for n in header_names(data))


async def test_identity_values_reach_the_console(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    mapping = (
        ("X-Forwarded-User", "preferred_username"),
        ("X-Forwarded-Groups", "cognito:groups"),
        ("X-Roles", "https://example.com/roles"),
        ("X-Forwarded-Name", "name"),
        ("X-Forwarded-Email", "email"),  # claim missing: no header
        ("X-Note", "note"),
    )
    claims = {
        "preferred_username": "alice",
        "cognito:groups": ["a", "b"],
        "https://example.com/roles": ["r1", "r2"],
        "name": "Zoë 日本",
        "note": "a note",
    }
    proxy = await make_proxy(echo_console.url, claims=claims, mapping=mapping)
    async with client.get(proxy / "echo" / "id") as resp:
        data = await echoed(resp)
    assert header_values(data, "X-Forwarded-User") == ["alice"]
    assert header_values(data, "X-Forwarded-Groups") == ["a,b"]
    assert header_values(data, "X-Roles") == ["r1,r2"]
    assert header_values(data, "X-Forwarded-Name") == ["Zoë 日本"]  # raw UTF-8 on the wire
    assert header_values(data, "X-Note") == ["a note"]
    assert header_values(data, "X-Forwarded-Email") == []


async def test_session_cookies_are_removed_and_others_kept(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The session, pending-login and break-glass cookies stay with the sidecar; a look-alike passes."""
    proxy = await make_proxy(echo_console.url)
    own = f"{COOKIE_NAME}_login_0123456789abcdef=more; {COOKIE_NAME}_break_glass=bg"
    cookie = f"a=1; {make_proxy.cookie}; b=two=2;{own}; {COOKIE_NAME}_1=look-alike; c="
    async with client.get(proxy / "echo" / "c", headers={"Cookie": cookie}) as resp:
        data = await echoed(resp)
    assert header_values(data, "Cookie") == [f"a=1; b=two=2; {COOKIE_NAME}_1=look-alike; c="]
    assert header_values(data, "X-Forwarded-User") == ["alice"]


async def test_cookie_header_dropped_when_only_session_cookies(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "echo" / "c", headers={"Cookie": make_proxy.cookie}) as resp:
        data = await echoed(resp)
    assert "cookie" not in header_names(data)
    assert header_values(data, "X-Forwarded-User") == ["alice"]


async def test_content_encoding_and_length_preserved_without_decompression(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy / "gzip", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(GZIPPED))
        assert await resp.read() == GZIPPED


async def test_unknown_length_response_is_chunked(
    echo_console: Echo, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(echo_console.url)
    async with client.get(proxy.with_path("/download").with_query(n="300000")) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert len(await resp.read()) == 300000


async def test_relayed_answers_never_name_the_stack_and_keep_the_consoles_server(
    raw_upstream: Any, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """aiohttp adds its Server banner where none was set; a relayed answer, whole or streamed, loses it (the
    relay does this itself, without the on_response_prepare signal), and the console's own Server passes."""
    big = b"y" * 300_000  # more than arrives with the head: streamed
    answers = {
        "/bare": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/bare-streamed": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big,
        "/own": b"HTTP/1.1 200 OK\r\nServer: console/2.1\r\nContent-Length: 2\r\n\r\nok",
        "/own-streamed": b"HTTP/1.1 200 OK\r\nServer: console/2.1\r\nContent-Length: %d\r\n\r\n" % len(big) + big,
        "/banner": b"HTTP/1.1 200 OK\r\nServer: " + SERVER_SOFTWARE.encode() + b"\r\nContent-Length: 2\r\n\r\nok",
    }
    raw = await raw_upstream(lambda conn, n, head: (answers[head.split(b" ")[1].decode()], True))
    proxy = await make_proxy(raw.url)
    for path, server in [("/bare", None), ("/bare-streamed", None), ("/own", "console/2.1"),
                         ("/own-streamed", "console/2.1"), ("/banner", None)]:  # fmt: skip
        async with client.get(proxy / path.lstrip("/")) as resp:
            assert resp.status == 200
            await resp.read()
            assert resp.headers.getall("Server", [None]) == [server], path


_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _head_sent(proxy: URL, lines: list[str]) -> bytes:
    """The head the console gets, byte for byte, for a GET whose head is exactly ``lines``."""
    head = "\r\n".join(["GET /order HTTP/1.1", *lines, "", ""])
    assert proxy.port is not None
    async with await RawClient.open(proxy.port, proxy.host or "127.0.0.1") as raw:
        await raw.send(head.encode())
        resp = await raw.response()
    assert resp.status == 200, resp.body
    return resp.body


async def test_the_console_gets_the_head_in_order(
    raw_upstream: Callable[..., Awaitable[RawUpstream]], make_proxy: MakeProxy
) -> None:
    """The client's headers where the client put them (Host and X-Request-Id set in place, the session cookie
    taken out of Cookie, forged forwarded and identity headers gone), then X-Forwarded-For/-Proto/-Host and
    X-Real-IP, then the identity headers in mapping order. Pins the head the gate and ``forward`` build."""
    console = await raw_upstream(lambda conn, req, head: (_ANSWER, True))
    proxy = await make_proxy(console.url)
    await _head_sent(
        proxy,
        [
            "host: console.test:8443",
            "X-Forwarded-For: 6.6.6.6",
            "Accept: text/html",
            "x-request-id: abc123",
            "X_Forwarded_User: admin",
            f"Cookie: a=1; {make_proxy.cookie}; b=2",
            "X-Real-IP: 6.6.6.6",
            "X-Custom: 1",
        ],
    )
    assert console.requests == [
        b"GET /order HTTP/1.1\r\n"
        b"Host: console.test:8443\r\n"  # the client's line, set in place (in the sidecar's spelling)
        b"Accept: text/html\r\n"
        b"X-Request-Id: abc123\r\n"  # a well-formed one is kept, one id through every hop's logs
        b"Cookie: a=1; b=2\r\n"
        b"X-Custom: 1\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: console.test:8443\r\n"
        b"X-Real-IP: 127.0.0.1\r\n"
        b"X-Forwarded-Email: alice@example.com\r\n"  # the mapping's order (the rig's YAML sorts it)
        b"X-Forwarded-Groups: admins,ops\r\n"
        b"X-Forwarded-Name: Zo\xc3\xab \xc3\x9cnicode\r\n"
        b"X-Forwarded-User: alice\r\n"
        b"\r\n"
    ]


async def test_an_identity_header_named_like_a_forwarded_one_replaces_it_in_place(
    raw_upstream: Callable[..., Awaitable[RawUpstream]], make_proxy: MakeProxy
) -> None:
    """A mapping may name X-Real-IP (or X-Forwarded-For): the console gets the claim there, once, where the
    client address would be. Appending the identity headers instead of setting them would send both."""
    console = await raw_upstream(lambda conn, req, head: (_ANSWER, True))
    mapping = (("X-Real-IP", "preferred_username"), ("X-Forwarded-Email", "email"))
    proxy = await make_proxy(console.url, mapping=mapping)
    await _head_sent(proxy, ["Host: console.test", "X-Real-IP: 6.6.6.6", f"Cookie: {make_proxy.cookie}"])
    assert console.requests == [
        b"GET /order HTTP/1.1\r\n"
        b"Host: console.test\r\n"
        b"X-Request-Id: " + _request_id(console.requests[0]) + b"\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: console.test\r\n"
        b"X-Real-IP: alice\r\n"
        b"X-Forwarded-Email: alice@example.com\r\n"
        b"\r\n"
    ]


def _request_id(head: bytes) -> bytes:
    match = re.search(rb"\r\nX-Request-Id: ([^\r]+)\r\n", head)
    assert match is not None, head
    return match.group(1)
