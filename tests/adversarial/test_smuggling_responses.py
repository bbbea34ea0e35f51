"""A hostile console: hand-written answers the sidecar must not merge, reuse, relay or let set its cookies.

One exchange is one response: bytes after the end of an answer, or unsolicited bytes on an idle pooled
connection, retire that connection (the next request opens a new one) and never reach a client. An answer
with ambiguous framing, or a head beyond the limits (64 KiB in all, 16 KiB a line, 100 headers, a 512-byte
reason phrase), is a 502 and the connection is closed, without the sidecar's memory growing with it.
``Set-Cookie`` for the sidecar's own cookies is dropped (and logged); every other cookie passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from support.procs import LOOPBACK, free_port
from support.proxyrig import (
    AUTH_PATH,
    SKIP_PATH,
    UPSTREAM_CLIENTS,
    Rig,
    identity_of,
    is_console_echo,
    rig_at_dev_idp,
    rss_kib,
    start_rig,
    stop_rig,
)
from support.rawclient import RawClient, RawResponse
from support.rawconsole import Conn, Reply, Request, echo_reply, response
from support.waiting import eventually

MiB = 1024 * 1024


@pytest.fixture(scope="module", params=UPSTREAM_CLIENTS)
async def rig(request: pytest.FixtureRequest, idp: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    rig = await rig_at_dev_idp(tmp_path_factory.mktemp("smuggling-responses"), idp, request.param)
    yield rig
    await stop_rig(rig)


@pytest.fixture
def console_scripts(rig: Rig) -> Iterator[None]:
    yield None
    rig.console.scripts.clear()


CONTEXTS = {"skip-auth": (SKIP_PATH, None), "signed-in": (AUTH_PATH, "alice")}


def hostile_once(rig: Rig, path: str, data: bytes | list[bytes]) -> None:
    """``path?evil`` gets ``data``; everything else the echo."""

    def answer(request: Request) -> Reply:
        return Reply(data) if "evil" in request.target else echo_reply(request)

    rig.console.script(path, answer)


async def ask(rig: Rig, target: str, user: str | None, *, method: str = "GET", timeout: float = 5.0) -> RawResponse:
    """One request on a fresh client connection; its (final) answer."""
    async with await RawClient.open(rig.port) as client:
        await client.send(rig.request(method, target, "Accept: application/json", user=user, close=True))
        answer = await client.response(method, timeout=timeout)
        while answer.interim:
            answer = await client.response(method, timeout=timeout)
        return answer


async def console_conn_of(rig: Rig, mark: Any, target_part: str) -> Conn:
    seen = [r for r in rig.console.requests_since(mark) if target_part in r.target]
    assert len(seen) == 1, [r.target for r in rig.console.requests_since(mark)]
    return rig.console.conn_of(seen[0])


async def assert_retired(rig: Rig, conn: Conn, path: str, user: str | None) -> None:
    """The sidecar closes ``conn``, and the next request goes over a new connection and gets its own answer."""
    assert await rig.console.wait_closed(conn, timeout=3.0), f"console connection {conn.id} is still open"
    assert conn.closed_by_peer, f"console connection {conn.id} was not closed by the sidecar"
    mark = rig.console.mark()
    after = await ask(rig, f"{path}?next", user)
    assert is_console_echo(after) and after.json()["target"] == f"{path}?next", after
    assert after.json()["conn"] != conn.id
    assert identity_of(after) == user
    assert after.values("X-Injected") == [], after.raw_headers
    assert rig.console.requests_since(mark)[0].conn != conn.id


# --------------------------------------------------------------------------------------------------
# One exchange is one response


TWO_ANSWERS = response(200, b"hi") + response(299, b"INJECTED", "X-Injected: yes", reason="Injected")


@pytest.mark.parametrize(("path", "user"), CONTEXTS.values(), ids=CONTEXTS.keys())
async def test_two_answers_in_one_write_reach_the_client_as_the_first_and_retire_the_connection(
    rig: Rig, console_scripts: None, path: str, user: str | None
) -> None:
    hostile_once(rig, path, TWO_ANSWERS)
    mark = rig.console.mark()
    got = await ask(rig, f"{path}?evil", user)
    assert (got.status, got.reason, got.body) == (200, b"OK", b"hi"), (got, got.head[:300])
    assert got.values("Content-Length") == ["2"] and got.values("X-Injected") == [], got.raw_headers
    await assert_retired(rig, await console_conn_of(rig, mark, "evil"), path, user)


STRAY = response(200, b"stray", "X-Injected: yes")
AFTER_BODYLESS = {
    "204-then-stray-bytes": ("GET", b"HTTP/1.1 204 No Content\r\nX-Answer: first\r\n\r\n" + STRAY, 204),
    "304-then-stray-bytes": ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nX-Answer: first\r\n\r\n' + STRAY, 304),
    "HEAD-answer-with-a-body": ("HEAD", response(200, b"a body for HEAD", "X-Answer: first") + STRAY, 200),
    "chunked-then-stray-bytes": (
        "GET",
        b"HTTP/1.1 200 OK\r\nX-Answer: first\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n" + STRAY,
        200,
    ),
}


@pytest.mark.parametrize(("path", "user"), CONTEXTS.values(), ids=CONTEXTS.keys())
@pytest.mark.parametrize("case", AFTER_BODYLESS)
async def test_bytes_after_an_answer_are_never_relayed_and_retire_the_connection(
    rig: Rig, console_scripts: None, path: str, user: str | None, case: str
) -> None:
    method, data, status = AFTER_BODYLESS[case]
    hostile_once(rig, path, data)
    mark = rig.console.mark()
    got = await ask(rig, f"{path}?evil", user, method=method)
    assert got.status == status, (got, got.head[:300])
    assert got.values("X-Answer") == ["first"] and got.values("X-Injected") == [], got.raw_headers
    if status in (204, 304) or method == "HEAD":
        assert got.body == b""
    else:
        assert got.body == b"hi"
    await assert_retired(rig, await console_conn_of(rig, mark, "evil"), path, user)


@pytest.mark.parametrize(("path", "user"), CONTEXTS.values(), ids=CONTEXTS.keys())
async def test_unsolicited_bytes_on_an_idle_connection_are_never_an_answer(
    rig: Rig, console_scripts: None, path: str, user: str | None
) -> None:
    mark = rig.console.mark()
    first = await ask(rig, f"{path}?first", user)
    assert is_console_echo(first), first
    conn = await console_conn_of(rig, mark, "first")
    # The connection is back in the sidecar's pool (released before the answer went out); now it speaks.
    conn.push(response(200, b"INJECTED", "X-Injected: yes"))
    await assert_retired(rig, conn, path, user)


AMBIGUOUS = {
    "CL-and-TE": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "TE-and-CL": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 20\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "two-different-CLs": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nhiINJECTED",
    "TE-not-chunked-last": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
}


@pytest.mark.parametrize(("path", "user"), CONTEXTS.values(), ids=CONTEXTS.keys())
@pytest.mark.parametrize("case", AMBIGUOUS)
async def test_an_ambiguously_framed_answer_is_a_502_and_the_connection_is_closed(
    rig: Rig, console_scripts: None, path: str, user: str | None, case: str
) -> None:
    hostile_once(rig, path, AMBIGUOUS[case])
    mark = rig.console.mark()
    got = await ask(rig, f"{path}?evil", user)
    assert got.status == 502, (got, got.head[:300], got.body[:200])
    assert b"INJECTED" not in got.body
    conn = await console_conn_of(rig, mark, "evil")
    assert await rig.console.wait_closed(conn, timeout=3.0) and conn.closed_by_peer


MALFORMED_HEADS = {
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n X-Injected: yes\r\nContent-Length: 2\r\n\r\nhi",
    "bare-LF": b"HTTP/1.1 200 OK\nX-Answer: first\nX-Injected: yes\nContent-Length: 2\n\nhi",
    "bare-CR": b"HTTP/1.1 200 OK\r\nX-Answer: first\rX-Injected: yes\r\nContent-Length: 2\r\n\r\nhi",
    "NUL-in-a-value": b"HTTP/1.1 200 OK\r\nX-Answer: fi\x00rst\r\nContent-Length: 2\r\n\r\nhi",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 9\r\nContent-Length: 2\r\n\r\nhiINJECTED",
}


@pytest.mark.parametrize("case", MALFORMED_HEADS)
async def test_a_malformed_response_head_is_refused_or_relayed_clean(
    rig: Rig, console_scripts: None, case: str
) -> None:
    """RFC 9112 5.2: a proxy discards a message with obs-fold (502) or unfolds it; never a folded line, a
    header the fold or a bare CR hid, or a NUL reaches the client."""
    hostile_once(rig, SKIP_PATH, MALFORMED_HEADS[case])
    got = await ask(rig, f"{SKIP_PATH}?evil", None)
    assert got.status in (200, 502), got
    lines = got.head.split(b"\r\n")
    assert not [line for line in lines if line[:1] in (b" ", b"\t")], got.head
    assert b"\x00" not in got.head and b"\r" not in got.head.replace(b"\r\n", b""), got.head
    assert got.values("X-Injected") == [] and b"INJECTED" not in got.body, got.head
    if got.status == 200:
        assert got.body == b"hi"


# RFC 9110 5.5: field values are octets; bytes 0x80-0xFF (obs-text) are the console's to send, UTF-8 or not.
OBS_TEXT_HEADERS = [
    (b"X-Latin-1", b"caf\xe9 cr\xe8me"),  # not UTF-8
    (b"X-Utf-8", "café crème 日本".encode()),
    (b"X-Every-High-Byte", bytes(range(0x80, 0x100))),
    (b"Content-Disposition", b'attachment; filename="r\xe9sum\xe9.pdf"'),
]
OBS_TEXT_REASON = b"\xc7a va \xe9t\xe9 \xc3\xa9"


def obs_text_head(framing: bytes) -> bytes:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in OBS_TEXT_HEADERS)
    return b"HTTP/1.1 200 " + OBS_TEXT_REASON + b"\r\n" + lines + framing + b"\r\n"


@pytest.mark.parametrize(("path", "user"), CONTEXTS.values(), ids=CONTEXTS.keys())
@pytest.mark.parametrize("whole", [True, False], ids=["body-with-the-head", "body-streamed-later"])
async def test_header_bytes_beyond_ascii_reach_the_client_byte_exact(
    rig: Rig, console_scripts: None, path: str, user: str | None, whole: bool
) -> None:
    """Non-UTF-8 and UTF-8 header bytes and reason phrase from the console arrive unchanged, whether the
    body came with the head (one write to the client) or streams after it."""
    if whole:
        hostile_once(rig, path, obs_text_head(b"Content-Length: 2\r\n") + b"hi")
    else:
        hostile_once(rig, path, obs_text_head(b"Transfer-Encoding: chunked\r\n") + b"1\r\nh\r\n")
    mark = rig.console.mark()
    async with await RawClient.open(rig.port) as client:
        await client.send(rig.request("GET", f"{path}?evil", "Accept: application/json", user=user, close=True))
        answer = asyncio.ensure_future(client.response(timeout=10))
        if not whole:
            conn = await until_request(rig, mark, "evil")
            conn.push(b"1\r\ni\r\n0\r\n\r\n")  # the rest of the body, after the head went out
        got = await answer
    assert (got.status, got.reason, got.body) == (200, OBS_TEXT_REASON, b"hi"), got.head
    relayed = [(name, value) for name, value in got.raw_headers if name in dict(OBS_TEXT_HEADERS)]
    assert relayed == OBS_TEXT_HEADERS, got.head


async def until_request(rig: Rig, mark: Any, target_part: str, timeout: float = 5.0) -> Conn:
    """The console connection of the request whose target holds ``target_part``, once it arrived."""
    await eventually(
        lambda: [r for r in rig.console.requests_since(mark) if target_part in r.target],
        what=f"the console receiving {target_part}",
        timeout=timeout,
    )
    return await console_conn_of(rig, mark, target_part)


INTERIM = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nSet-Cookie: sso_sidecar=planted\r\n\r\n"


async def test_interim_answers_never_set_the_sidecars_cookies(rig: Rig, console_scripts: None) -> None:
    hostile_once(rig, SKIP_PATH, INTERIM * 50 + response(200, b"hi", "X-Answer: final"))
    async with await RawClient.open(rig.port) as client:
        await client.send(rig.request("GET", f"{SKIP_PATH}?evil", close=True))
        answers = await client.until_eof(timeout=5)
    assert answers[-1].status in (200, 502) and all(a.status < 200 or a is answers[-1] for a in answers), answers
    for answer in answers:
        assert not [v for v in answer.values("Set-Cookie") if "planted" in v], answer.head


# --------------------------------------------------------------------------------------------------
# Limits on the console's response head


def many_headers(count: int, size: int) -> bytes:
    line = b"X-Filler-%06d: " + b"f" * max(0, size - 18) + b"\r\n"
    return b"".join(line % i for i in range(count))


def head_with(block: bytes = b"", reason: bytes = b"OK") -> bytes:
    return b"HTTP/1.1 200 " + reason + b"\r\n" + block + b"Content-Length: 2\r\n\r\nhi"


OVERSIZED: dict[str, Callable[[], bytes]] = {
    "30-MiB-header-block": lambda: head_with(many_headers(30 * MiB // 4096, 4096)),
    "50-MB-reason-phrase": lambda: head_with(reason=b"R" * 50_000_000),
    "100-KiB-single-header": lambda: head_with(b"X-Big: " + b"b" * (100 * 1024) + b"\r\n"),
    "10000-tiny-headers": lambda: head_with(many_headers(10_000, 20)),
    "20-KiB-single-header": lambda: head_with(b"X-Big: " + b"b" * (20 * 1024) + b"\r\n"),
    "200-headers-4-KiB-in-all": lambda: head_with(many_headers(200, 20)),
    "1-KiB-reason-phrase": lambda: head_with(reason=b"R" * 1024),
}


@pytest.mark.parametrize("case", OVERSIZED)
async def test_an_oversized_response_head_is_a_502_and_memory_stays_bounded(
    rig: Rig, console_scripts: None, case: str
) -> None:
    warm = await ask(rig, f"{SKIP_PATH}?warm", None)
    assert is_console_echo(warm)
    before = rss_kib(rig.pid)
    hostile_once(rig, SKIP_PATH, OVERSIZED[case]())
    mark = rig.console.mark()
    got = await ask(rig, f"{SKIP_PATH}?evil", None, timeout=60)
    grown = rss_kib(rig.pid) - before
    assert got.status == 502, (got, got.head[:200])
    assert grown < 32 * 1024, f"the sidecar's RSS grew by {grown} KiB"
    conn = await console_conn_of(rig, mark, "evil")
    assert await rig.console.wait_closed(conn, timeout=3.0) and conn.closed_by_peer


async def test_a_large_head_within_the_limits_passes_whole(rig: Rig, console_scripts: None) -> None:
    """Not too strict: 60 headers, an 8 KiB cookie and a 200-byte reason (nginx's defaults would pass them)."""
    cookie = "big=" + "c" * 8192
    block = many_headers(58, 100) + f"Set-Cookie: {cookie}\r\nX-Last: yes\r\n".encode()
    reason = b" ".join([b"Fine"] * 40)
    hostile_once(rig, SKIP_PATH, head_with(block, reason=reason))
    got = await ask(rig, f"{SKIP_PATH}?evil", None)
    assert (got.status, got.reason, got.body) == (200, reason, b"hi"), got
    assert got.values("Set-Cookie") == [cookie] and got.values("X-Last") == ["yes"]
    assert len([n for n in got.names if n.startswith("X-Filler-")]) == 58


# --------------------------------------------------------------------------------------------------
# The sidecar's cookies are its own


def cookie_answer(names: list[str]) -> bytes:
    lines = [f"Set-Cookie: {name}=planted-{i}; Path=/" for i, name in enumerate(names)]
    lines += ["Set-Cookie: theme=dark; Path=/", "Set-Cookie: console_session=abc; Path=/; HttpOnly"]
    return response(200, b"ok", *lines)


OWN_COOKIES = ["sso_sidecar", "sso_sidecar_break_glass", "sso_sidecar_login_0123456789abcdef", " sso_sidecar "]


async def check_own_cookies_dropped(rig: Rig, path: str, user: str | None, names: list[str]) -> None:
    hostile_once(rig, path, cookie_answer(names))
    since = rig.log_size()
    got = await ask(rig, f"{path}?evil", user)
    assert got.status == 200 and got.body == b"ok", got
    assert got.values("Set-Cookie") == ["theme=dark; Path=/", "console_session=abc; Path=/; HttpOnly"]
    log = await rig.log_after(since)
    warnings = [line for line in log.splitlines() if "WARNING" in line and "cookie" in line.lower()]
    assert warnings, f"no warning about the dropped cookies in:\n{log}"
    assert "planted" not in log, "a cookie value the console tried to set reached the log"


@pytest.mark.parametrize(("path", "user"), CONTEXTS.values(), ids=CONTEXTS.keys())
async def test_the_console_cannot_set_the_sidecars_own_cookies(
    rig: Rig, console_scripts: None, path: str, user: str | None
) -> None:
    await check_own_cookies_dropped(rig, path, user, OWN_COOKIES)


@pytest.fixture(scope="module", params=UPSTREAM_CLIENTS)
async def https_rig(
    request: pytest.FixtureRequest, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    """``public_url`` on https: the sidecar's cookies carry the ``__Host-`` prefix."""
    port = free_port()
    rig = await start_rig(
        tmp_path_factory.mktemp("smuggling-https"),
        issuer=idp.issuer,
        client_id="unregistered",
        client_secret="unregistered",
        upstream_client=request.param,
        port=port,
        public_url=f"https://{LOOPBACK}:{port}",
        name="https-rig",
    )
    yield rig
    await stop_rig(rig)


async def test_the_console_cannot_set_the_sidecars_own_host_prefixed_cookies(https_rig: Rig) -> None:
    names = ["__Host-sso_sidecar", "__Host-sso_sidecar_break_glass", "__Host-sso_sidecar_login_0123456789abcdef"]
    try:
        await check_own_cookies_dropped(https_rig, SKIP_PATH, None, names)
    finally:
        https_rig.console.scripts.clear()
