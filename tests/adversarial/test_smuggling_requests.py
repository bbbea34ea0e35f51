"""Request smuggling, client side: hand-written bytes to a real sidecar, a strict raw console behind it.

Every attack runs on a ``skip_auth`` path without a session and on an authenticated path with alice's
session. The oracle (``support.proxyrig.check_console``): the console sees exactly the requests the client
legitimately made, each body byte-exact (re-chunking is fine, the de-chunked bytes and Content-Encoding are
not to change), a Content-Length that matches, the client's Host, no identity header the sidecar did not set,
and never a request line the attacker embedded (``MARKER``); or the sidecar answers 4xx and the console
parses nothing of it. Each exchange ends with a ``Connection: close`` sentinel request, so the responses a
connection carried can be counted.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.procs import LOOPBACK, Process, free_port
from support.proxyrig import (
    AUTH_PATH,
    MARKER,
    SKIP_PATH,
    UPSTREAM_CLIENTS,
    Legit,
    Rig,
    check_console,
    chunked,
    identity_of,
    is_console_echo,
    new_sentinel,
    read_answers,
    rig_at_dev_idp,
    smuggled_request,
    start_rig,
    stop_rig,
)
from support.rawclient import RawClient, RawResponse
from support.rawconsole import Request


@pytest.fixture(scope="module", params=UPSTREAM_CLIENTS)
async def rig(request: pytest.FixtureRequest, idp: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    rig = await rig_at_dev_idp(tmp_path_factory.mktemp("smuggling-requests"), idp, request.param)
    yield rig
    await stop_rig(rig)


@dataclass(frozen=True)
class Ctx:
    """Where an attack runs: the skip-auth path without a session, or alice's authenticated path."""

    path: str
    user: str | None


CONTEXTS = {"skip-auth": Ctx(SKIP_PATH, None), "signed-in": Ctx(AUTH_PATH, "alice")}


@dataclass
class Attack:
    wire: bytes
    legit: list[Legit] | None = field(default_factory=list)  # what the console sees if accepted (None: any)
    outcome: str = "forward"  # forward | refuse (4xx, console sees nothing) | either
    check: Callable[[list[Request]], None] | None = None  # more checks on what the console saw
    host: str | None = ""  # the Host the console must see ("" the rig's, None: checked by ``check``)
    # Read this many final answers and send no sentinel: after an upgrade request aiohttp hands the rest of
    # the connection to that request's body stream, and neither answers nor closes it.
    answers: int | None = None


async def attempt(rig: Rig, ctx: Ctx, attack: Attack) -> list[RawResponse]:
    """Send the attack and a sentinel in one write; check the answers and everything the console parsed."""
    console = rig.console
    mark = console.mark()
    tag = new_sentinel()
    sentinel = rig.request("GET", f"{ctx.path}?{tag}", user=ctx.user, close=True)
    async with await RawClient.open(rig.port) as client:
        if attack.answers is None:
            await client.send(attack.wire + sentinel)
            answers = await read_answers(client, tag, timeout=5.0)
        else:
            await client.send(attack.wire)
            answers = [await client.response(timeout=5.0) for _ in range(attack.answers)]
    finals = [a for a in answers if not a.interim]
    refused = not finals or (finals[0].status >= 400 and not is_console_echo(finals[0]))
    if attack.outcome == "refuse":
        assert refused, f"expected a refusal, got {answers}"
    elif attack.outcome == "forward":
        assert not refused, f"expected the request to be forwarded, got {answers}"
    host = rig.host if attack.host == "" else attack.host
    if refused:
        assert not finals or 400 <= finals[0].status < 500 or finals[0].status == 501, answers
    seen = check_console(console, mark, host=host, user=ctx.user, legit=attack.legit, refused=refused, sentinel=tag)
    echoed = [a for a in finals if is_console_echo(a) and tag not in a.json()["target"]]
    for answer in echoed:
        assert identity_of(answer) == ctx.user
    if not refused and attack.legit is not None:
        assert [a.json()["target"] for a in echoed] == [x.target for x in attack.legit], answers
    if attack.check is not None:
        attack.check(seen)
    return answers


# --------------------------------------------------------------------------------------------------
# Bodies


def spill(encode: Callable[[bytes], bytes], host: str) -> bytes:
    """A compressed body whose plain text is longer than itself and ends in a whole request carrying an
    identity. A proxy that forwards the plain text under the compressed length spills that request into
    the console's connection; the leading empty lines (which nginx skips before a request line) make the
    spill start at a request line wherever the declared length cuts it."""
    tail = smuggled_request(host)
    for pad in range(32, 4096, 32):
        body = encode(b"\r\n" * pad + tail)
        if len(body) < 2 * pad:
            return body
    raise AssertionError("no spilling body found")


def deflate_raw(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def brotli_stored(data: bytes) -> bytes:
    """A valid brotli stream (RFC 7932) holding ``data`` in uncompressed meta-blocks, written by hand: the
    test needs no brotli package, and the sidecar must not decode it anyway."""
    out = bytearray()
    first = True
    for i in range(0, len(data), 65536):
        block = data[i : i + 65536]
        # (first block only: WBITS=16, one 0 bit) ISLAST=0, MNIBBLES=4 (0b00), MLEN-1 (16 bits),
        # ISUNCOMPRESSED=1, zero bits to the byte boundary; then the block itself.
        bits = (len(block) - 1) << 3 | 1 << 19
        bits = bits << 1 if first else bits
        width = 24 if first else 20
        out += (bits).to_bytes((width + 7) // 8, "little")
        out += block
        first = False
    return bytes(out + b"\x03")  # the last meta-block: ISLAST=1, ISLASTEMPTY=1


def with_body(rig: Rig, ctx: Ctx, body: bytes, *headers: str, method: str = "POST") -> bytes:
    return rig.request(method, ctx.path, *headers, f"Content-Length: {len(body)}", body=body, user=ctx.user)


# --------------------------------------------------------------------------------------------------
# The attacks


def coded(encoding: str, encode: Callable[[bytes], bytes]) -> Callable[[Rig, Ctx], Attack]:
    def build(rig: Rig, ctx: Ctx) -> Attack:
        body = spill(encode, rig.host)
        wire = with_body(rig, ctx, body, "Content-Type: application/octet-stream", f"Content-Encoding: {encoding}")
        return Attack(wire, [Legit("POST", ctx.path, body, encoding)])

    return build


def brotli_body(rig: Rig, ctx: Ctx) -> Attack:
    body = brotli_stored(smuggled_request(rig.host) * 3)
    wire = with_body(rig, ctx, body, "Content-Encoding: br")
    return Attack(wire, [Legit("POST", ctx.path, body, "br")])


def chunked_gzip(rig: Rig, ctx: Ctx) -> Attack:
    """4 KiB on the wire that inflate to 4 MiB: the console must get the 4 KiB, still labelled gzip."""
    body = gzip.compress(b"\0" * (4 * 1024 * 1024))
    parts = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    wire = rig.request(
        "POST", ctx.path, "Content-Encoding: gzip", "Transfer-Encoding: chunked", body=chunked(*parts), user=ctx.user
    )
    return Attack(wire, [Legit("POST", ctx.path, body, "gzip")])


def framing(*headers: str, body: bytes, outcome: str) -> Callable[[Rig, Ctx], Attack]:
    """A POST of ``hello`` with these framing headers and this body, followed by an embedded request."""

    def build(rig: Rig, ctx: Ctx) -> Attack:
        wire = rig.request("POST", ctx.path, *headers, body=body + smuggled_request(rig.host), user=ctx.user)
        return Attack(wire, [Legit("POST", ctx.path, b"hello")], outcome)

    return build


def raw_head(head: bytes, outcome: str, *, body: bytes = b"", method: str = "GET") -> Callable[[Rig, Ctx], Attack]:
    """A request written byte for byte: ``{path}``, ``{host}`` and ``{cookie}`` (a whole line) filled in."""

    def build(rig: Rig, ctx: Ctx) -> Attack:
        cookie = "".join(line + "\r\n" for line in rig.cookie_header(ctx.user)).encode()
        wire = head.replace(b"{path}", ctx.path.encode()).replace(b"{host}", rig.host.encode())
        wire = wire.replace(b"{cookie}", cookie) + body
        return Attack(wire, [Legit(method, ctx.path, b"hello" if body else b"")], outcome)

    return build


HELLO = chunked(b"hello")


def pipelined_unauthenticated(rig: Rig, ctx: Ctx) -> Attack:
    """Two requests in one write, the second without a session: it is judged on its own."""
    second = rig.request("GET", f"{ctx.path}?second", "Accept: application/json")
    wire = rig.request("GET", f"{ctx.path}?first", user=ctx.user) + second
    legit = [Legit("GET", f"{ctx.path}?first")]
    if ctx.user is None:
        legit.append(Legit("GET", f"{ctx.path}?second"))  # the skip-auth path needs no session
    return Attack(wire, legit)


def pipelined_spoofed_identity(rig: Rig, ctx: Ctx) -> Attack:
    spoofed = (
        "X-Forwarded-User: admin",
        "X_Forwarded_User: admin",
        "x.forwarded.user: admin",
        "X-Auth-Request-User: x",
    )
    second = rig.request("GET", f"{ctx.path}?second", *spoofed, user=ctx.user)
    wire = rig.request("GET", f"{ctx.path}?first", *spoofed, user=ctx.user) + second
    return Attack(wire, [Legit("GET", f"{ctx.path}?first"), Legit("GET", f"{ctx.path}?second")])


def pipelined_body_with_request(rig: Rig, ctx: Ctx) -> Attack:
    """A body that holds a request line is a body: the console reads it as such, byte-exact."""
    body = smuggled_request(rig.host)
    wire = with_body(rig, ctx, body) + rig.request("GET", f"{ctx.path}?after", user=ctx.user)
    return Attack(wire, [Legit("POST", ctx.path, body), Legit("GET", f"{ctx.path}?after")])


def get_with_body(rig: Rig, ctx: Ctx) -> Attack:
    body = smuggled_request(rig.host)
    return Attack(with_body(rig, ctx, body, method="GET"), [Legit("GET", ctx.path, body)])


def empty_body_then_request(rig: Rig, ctx: Ctx) -> Attack:
    wire = rig.request("POST", ctx.path, "Content-Length: 0", user=ctx.user) + smuggled_request(rig.host)
    return Attack(wire, [Legit("POST", ctx.path)])


def expect(value: str, outcome: str) -> Callable[[Rig, Ctx], Attack]:
    def build(rig: Rig, ctx: Ctx) -> Attack:
        return Attack(with_body(rig, ctx, b"hello", f"Expect: {value}"), [Legit("POST", ctx.path, b"hello")], outcome)

    return build


def h2c_upgrade(rig: Rig, ctx: Ctx) -> Attack:
    """An h2c upgrade the proxy does not take: a plain GET; what follows is never the console's to parse."""
    headers = ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")
    wire = rig.request("GET", ctx.path, *headers, user=ctx.user) + smuggled_request(rig.host)
    return Attack(wire, [Legit("GET", ctx.path)], answers=1)


def upgrade_with_body(protocol: str) -> Callable[[Rig, Ctx], Attack]:
    def build(rig: Rig, ctx: Ctx) -> Attack:
        body = b"hello"
        wire = with_body(rig, ctx, body, "Connection: Upgrade", f"Upgrade: {protocol}") + smuggled_request(rig.host)
        return Attack(wire, [Legit("POST", ctx.path, body)], answers=1)

    return build


def websocket_get_with_body(rig: Rig, ctx: Ctx) -> Attack:
    """A websocket handshake carrying a body: the body must not vanish while its length is passed on (the
    console would wait for it, or read what comes next as the body). Refused, or forwarded consistently."""
    body = smuggled_request(rig.host)
    headers = (
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    return Attack(with_body(rig, ctx, body, *headers, method="GET"), None, "either", answers=1)


def absolute_form(authority: str | None) -> Callable[[Rig, Ctx], Attack]:
    """``GET http://authority/path``: forwarded in origin form with one consistent Host, or refused.

    RFC 9112 3.2.2: the target's authority wins over Host, and a proxy generates Host from it; HAProxy
    refuses a mismatch. Passing the client's mismatched Host while X-Forwarded-Host names the target's
    authority would let the console and the sidecar disagree about the site."""

    def build(rig: Rig, ctx: Ctx) -> Attack:
        target_host = authority or rig.host
        headers = [f"Host: {rig.host if authority is None else 'mismatch.example'}", *rig.cookie_header(ctx.user)]
        wire = b"GET http://%s%s HTTP/1.1\r\n" % (target_host.encode(), ctx.path.encode())
        wire += "".join(h + "\r\n" for h in headers).encode() + b"\r\n"

        def check(seen: list[Request]) -> None:
            for request in seen:
                assert request.target.startswith("/"), request.target
                assert request.values("Host") == request.values("X-Forwarded-Host"), request.raw_headers
                assert request.values("Host") == [target_host], request.raw_headers

        outcome = "forward" if authority is None else "either"
        return Attack(wire, [Legit("GET", ctx.path)], outcome, check, host=None)

    return build


def connection_lists(name: str, *, body: bytes = b"", extra: tuple[str, ...] = ()) -> Callable[[Rig, Ctx], Attack]:
    """``Connection: <name>`` may not remove what the sidecar owns (Host, the framing, X-Forwarded-*)."""

    def build(rig: Rig, ctx: Ctx) -> Attack:
        headers = (f"Connection: {name}", *extra)
        if body:
            wire = with_body(rig, ctx, body, *headers)
            return Attack(wire, [Legit("POST", ctx.path, body, keep_length=True)])
        wire = rig.request("GET", ctx.path, *headers, user=ctx.user)

        def check(seen: list[Request]) -> None:
            for request in seen:
                assert request.values("X-Forwarded-For") == [LOOPBACK], request.raw_headers
                assert request.values("X-Forwarded-Host") == [rig.host], request.raw_headers

        return Attack(wire, [Legit("GET", ctx.path)], check=check)

    return build


def chunked_connection_te(rig: Rig, ctx: Ctx) -> Attack:
    headers = ("Connection: Transfer-Encoding", "Transfer-Encoding: chunked")
    wire = rig.request("POST", ctx.path, *headers, body=HELLO, user=ctx.user)
    return Attack(wire, [Legit("POST", ctx.path, b"hello")])


SMUGGLE = b"GET /" + MARKER.encode() + b" HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-User: admin\r\n\r\n"
ATTACKS: dict[str, Callable[[Rig, Ctx], Attack]] = {
    # Content codings: forwarded byte-exact, never inflated under the compressed length.
    "gzip-body-longer-than-declared": coded("gzip", gzip.compress),
    "deflate-body-longer-than-declared": coded("deflate", zlib.compress),
    "raw-deflate-body-longer-than-declared": coded("deflate", deflate_raw),
    "brotli-body": brotli_body,
    "chunked-gzip-4KiB-to-4MiB": chunked_gzip,
    # CL/TE conflicts and obfuscations.
    "CL-and-TE": framing("Content-Length: 15", "Transfer-Encoding: chunked", body=HELLO, outcome="refuse"),
    "TE-and-CL": framing("Transfer-Encoding: chunked", "Content-Length: 4", body=HELLO, outcome="refuse"),
    "two-different-CLs": framing("Content-Length: 5", "Content-Length: 50", body=b"hello", outcome="refuse"),
    "two-equal-CLs": framing("Content-Length: 5", "Content-Length: 5", body=b"hello", outcome="either"),
    "CL-list": framing("Content-Length: 5, 5", body=b"hello", outcome="either"),
    "CL-plus-sign": framing("Content-Length: +5", body=b"hello", outcome="refuse"),
    "CL-overflow": framing("Content-Length: 18446744073709551621", body=b"hello", outcome="refuse"),
    "TE-xchunked": framing("Transfer-Encoding: xchunked", body=HELLO, outcome="refuse"),
    "TE-space-chunked": framing("Transfer-Encoding:  chunked", body=HELLO, outcome="either"),
    "TE-chunked-identity": framing("Transfer-Encoding: chunked, identity", body=HELLO, outcome="refuse"),
    "TE-gzip-chunked": framing("Transfer-Encoding: gzip, chunked", body=HELLO, outcome="refuse"),
    "TE-identity-with-CL": framing("Transfer-Encoding: identity", "Content-Length: 5", body=b"hello", outcome="refuse"),
    "TE-twice": framing("Transfer-Encoding: chunked", "Transfer-Encoding: chunked", body=HELLO, outcome="refuse"),
    "TE-space-before-colon": framing("Transfer-Encoding : chunked", body=HELLO, outcome="refuse"),
    "TE-tab-before-colon": framing("Transfer-Encoding\t: chunked", body=HELLO, outcome="refuse"),
    "TE-obs-fold": framing(
        "X-Pad: x", " Transfer-Encoding: chunked", "Content-Length: 5", body=b"hello", outcome="either"
    ),
    "TE-with-HTTP-1.0": raw_head(
        b"POST {path} HTTP/1.0\r\nHost: {host}\r\n{cookie}Transfer-Encoding: chunked\r\n\r\n",
        "refuse",
        body=HELLO + SMUGGLE,
        method="POST",
    ),
    "chunk-size-overflow": framing(
        "Transfer-Encoding: chunked", body=b"10000000000000005\r\nhello\r\n0\r\n\r\n", outcome="refuse"
    ),
    "chunk-size-0x": framing("Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n", outcome="refuse"),
    "chunk-size-negative": framing("Transfer-Encoding: chunked", body=b"-5\r\nhello\r\n0\r\n\r\n", outcome="refuse"),
    "chunk-extensions": framing("Transfer-Encoding: chunked", body=b"5;a=b\r\nhello\r\n0;x\r\n\r\n", outcome="forward"),
    "chunk-data-longer-than-size": framing("Transfer-Encoding: chunked", body=b"5\r\nhello0\r\n\r\n", outcome="refuse"),
    "chunk-trailer-identity": framing(
        "Transfer-Encoding: chunked", body=chunked(b"hello", trailers=["X-Forwarded-User: admin"]), outcome="forward"
    ),
    "last-chunk-then-request-line": framing(
        "Transfer-Encoding: chunked",
        body=b"5\r\nhello\r\n0\r\nGET /" + MARKER.encode() + b" HTTP/1.1\r\n",
        outcome="refuse",
    ),
    # Line endings and folding.
    "obs-fold": raw_head(b"GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}X-Pad: a\r\n b\r\n\r\n", "either"),
    "bare-LF-lines": raw_head(b"GET {path} HTTP/1.1\nHost: {host}\n{cookie}X-Pad: a\n\n", "either"),
    "bare-CR-in-head": raw_head(
        b"GET {path} HTTP/1.1\r\nHost: {host}\rX-Forwarded-User: admin\r\n{cookie}\r\n", "refuse"
    ),
    "NUL-in-value": raw_head(b"GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}X-Pad: a\x00b\r\n\r\n", "refuse"),
    "two-Hosts": raw_head(b"GET {path} HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n{cookie}\r\n", "refuse"),
    # Pipelining.
    "pipelined-second-unauthenticated": pipelined_unauthenticated,
    "pipelined-spoofed-identity-headers": pipelined_spoofed_identity,
    "pipelined-body-holding-a-request": pipelined_body_with_request,
    "GET-with-a-body": get_with_body,
    "empty-body-then-request": empty_body_then_request,
    # Expect.
    "expect-100-continue-body-at-once": expect("100-continue", "forward"),
    "expect-other-value": expect("200-ok", "either"),
    # Upgrades.
    "h2c-upgrade-then-request": h2c_upgrade,
    "websocket-upgrade-on-POST": upgrade_with_body("websocket"),
    "connection-upgrade-with-body": upgrade_with_body("foo/1"),
    "websocket-GET-with-body": websocket_get_with_body,
    # Absolute-form targets.
    "absolute-form-same-host": absolute_form(None),
    "absolute-form-mismatched-host": absolute_form("other.example"),
    # Connection listing what the sidecar owns.
    "connection-host": connection_lists("Host"),
    "connection-content-length": connection_lists("Content-Length", body=b"hello"),
    "connection-x-forwarded-for": connection_lists("X-Forwarded-For, X-Forwarded-Host"),
    "connection-x-forwarded-user": connection_lists("X-Forwarded-User, Cookie"),
    "connection-transfer-encoding": chunked_connection_te,
}


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
@pytest.mark.parametrize("name", ATTACKS)
async def test_the_console_sees_only_what_the_client_legitimately_sent(rig: Rig, ctx: Ctx, name: str) -> None:
    attack = ATTACKS[name](rig, ctx)
    attack.wire = attack.wire.replace(b"{host}", rig.host.encode())
    await attempt(rig, ctx, attack)


async def test_expect_100_continue_is_answered_before_the_body_and_the_body_arrives_intact(rig: Rig) -> None:
    for ctx in CONTEXTS.values():
        mark = rig.console.mark()
        body = smuggled_request(rig.host)
        head = rig.request("POST", ctx.path, "Expect: 100-continue", f"Content-Length: {len(body)}", user=ctx.user)
        async with await RawClient.open(rig.port) as client:
            await client.send(head)
            interim = await client.response(timeout=5)
            assert interim.status == 100, interim
            await client.send(body)
            final = await client.response(timeout=5)
        assert is_console_echo(final) and identity_of(final) == ctx.user, final
        check_console(rig.console, mark, host=rig.host, user=ctx.user, legit=[Legit("POST", ctx.path, body)])


async def test_a_refused_request_with_expect_never_hands_its_body_to_the_console(rig: Rig) -> None:
    """No session: 401 (aiohttp may have said 100 first); the body, holding a request, is never parsed upstream."""
    mark = rig.console.mark()
    body = smuggled_request(rig.host)
    head = rig.request(
        "POST", AUTH_PATH, "Accept: application/json", "Expect: 100-continue", f"Content-Length: {len(body)}"
    )
    async with await RawClient.open(rig.port) as client:
        await client.send(head)
        refused = await client.response(timeout=5)
        if refused.status == 100:
            refused = await client.response(timeout=5)
        assert refused.status == 401, refused
        tag = new_sentinel()
        await client.send(body + rig.request("GET", f"{SKIP_PATH}?{tag}", close=True))
        answers = await read_answers(client, tag, timeout=5)
    assert all(not is_console_echo(a) or tag in a.json()["target"] for a in answers), answers
    check_console(rig.console, mark, host=rig.host, user=None, legit=[], sentinel=tag)


# --------------------------------------------------------------------------------------------------
# Header bytes beyond ASCII


UTF8_HEADER = (b"X-Utf-8", "café crème 日本".encode())
NOT_UTF8_HEADERS = [
    (b"X-Latin-1", b"caf\xe9 cr\xe8me"),
    (b"X-Every-High-Byte", bytes(range(0x80, 0x100))),
]


async def one_request(rig: Rig, ctx: Ctx, tag: str, headers: list[tuple[bytes, bytes]]) -> RawResponse:
    lines = [name + b": " + value for name, value in headers]
    wire = rig.request("GET", f"{ctx.path}?{tag}", *lines, "Accept: application/json", user=ctx.user, close=True)
    async with await RawClient.open(rig.port) as client:
        await client.send(wire)
        return await client.response(timeout=5)


@pytest.mark.parametrize("ctx", CONTEXTS.values(), ids=CONTEXTS.keys())
async def test_header_bytes_beyond_ascii_reach_the_console_byte_exact_or_are_refused(rig: Rig, ctx: Ctx) -> None:
    """UTF-8 header bytes reach the console unchanged through either client; other obs-text bytes do through
    h1, while aiohttp's writer cannot send them, so with it the request is refused (400), never altered."""
    mark = rig.console.mark()
    got = await one_request(rig, ctx, "utf8", [UTF8_HEADER])
    assert is_console_echo(got), got
    (seen,) = check_console(rig.console, mark, host=rig.host, user=ctx.user, legit=[Legit("GET", f"{ctx.path}?utf8")])
    assert [h for h in seen.raw_headers if h[0] == UTF8_HEADER[0]] == [UTF8_HEADER], seen.head

    mark = rig.console.mark()
    got = await one_request(rig, ctx, "latin", NOT_UTF8_HEADERS)
    if rig.upstream_client == "aiohttp":
        assert got.status == 400, got
        check_console(rig.console, mark, host=rig.host, user=ctx.user, refused=True)
        return
    assert is_console_echo(got), got
    (seen,) = check_console(rig.console, mark, host=rig.host, user=ctx.user, legit=[Legit("GET", f"{ctx.path}?latin")])
    names = {name for name, _ in NOT_UTF8_HEADERS}
    assert [h for h in seen.raw_headers if h[0] in names] == NOT_UTF8_HEADERS, seen.head


# --------------------------------------------------------------------------------------------------
# Real nginx as the console: the smuggled request is parsed by nginx itself on base


NGINX = "/usr/sbin/nginx"
NGINX_CONF = """
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  log_format probe '$request_uri user=$http_x_forwarded_user';
  access_log {dir}/access.log probe;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  keepalive_requests 10000;
  server {{
    listen {host}:{port};
    location / {{ return 200 "uri=$request_uri user=$http_x_forwarded_user\\n"; }}
  }}
}}
"""


@pytest.fixture(scope="module", params=UPSTREAM_CLIENTS)
async def nginx_rig(
    request: pytest.FixtureRequest, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Rig, Path]]:
    work = tmp_path_factory.mktemp("smuggling-nginx")
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(user + NGINX_CONF.format(dir=work, host=LOOPBACK, port=port))
    nginx = Process(
        "nginx", [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"], log_dir=work
    )
    nginx.start().wait_for_port(port, timeout=10)
    rig = await start_rig(
        work,
        issuer=idp.issuer,
        client_id="unregistered",
        client_secret="unregistered",
        upstream_client=request.param,
        upstream=f"http://{LOOPBACK}:{port}",
        name="nginx-rig",
    )
    yield rig, work / "access.log"
    await stop_rig(rig)
    nginx.stop()


async def test_real_nginx_never_parses_a_request_hidden_in_a_compressed_body(nginx_rig: tuple[Rig, Path]) -> None:
    """The issue's report: a gzip body spilled into nginx, and the next user's request got a foreign answer."""
    rig, access_log = nginx_rig
    body = spill(gzip.compress, rig.host)
    attack = rig.request(
        "POST", SKIP_PATH, "Content-Encoding: gzip", f"Content-Length: {len(body)}", body=body, close=True
    )
    for round_ in range(3):
        async with await RawClient.open(rig.port) as client:
            await client.send(attack)
            first = await client.response(timeout=5)
        assert first.status == 200 and first.body == b"uri=/api/health user=\n", first
        # The next user, on a fresh client connection (the sidecar's upstream connection is pooled).
        async with await RawClient.open(rig.port) as client:
            await client.send(rig.request("GET", f"{SKIP_PATH}?next={round_}", close=True))
            after = await client.response(timeout=5)
        assert (after.status, after.body) == (200, f"uri=/api/health?next={round_} user=\n".encode()), after
    logged = access_log.read_text()
    assert MARKER not in logged and "user=admin" not in logged, logged
