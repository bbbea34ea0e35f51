"""Cross-user checks under concurrency: three signed-in users and an attacker on one sidecar at once.

alice, bob and carol sign in through the dev identity provider, then send interleaved keep-alive and
pipelined requests (GETs, bodies with a length, chunked bodies, garbage cookies beside the session cookie,
and now and then a forged session cookie that must be refused) over raw sockets, while an attacker's
connections send smuggling attempts, spoofed identity headers, forged cookies and malformed requests.
Every answer a user gets must be the answer to that user's own request, with that user's identity; every
request the console parses must carry exactly the identity of the user who sent it (none for the
attacker), and no request line the attacker embedded.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from support.proxyrig import (
    AUTH_PATH,
    COOKIE,
    MARKER,
    SKIP_PATH,
    UPSTREAM_CLIENTS,
    Rig,
    check_request,
    chunked,
    identity_of,
    is_console_echo,
    rig_at_dev_idp,
    smuggled_request,
    stop_rig,
)
from support.rawclient import RawClient

USERS = ("alice", "bob", "carol")
CONNECTIONS_PER_USER = 3
ROUNDS = 8
BATCH = 6  # requests pipelined in one write
ATTACK_ROUNDS = 12


@pytest.fixture(scope="module", params=UPSTREAM_CLIENTS)
async def rig(request: pytest.FixtureRequest, idp: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    rig = await rig_at_dev_idp(tmp_path_factory.mktemp("smuggling-concurrency"), idp, request.param, USERS)
    yield rig
    await stop_rig(rig)


def forged(cookie: str) -> str:
    """Another user's session cookie, one character in the middle changed: it must not authenticate anyone.
    (Not the last character: in base64 its low bits may be padding, and the decoded bytes the same.)"""
    middle = len(cookie) // 2
    return cookie[:middle] + ("A" if cookie[middle] != "A" else "B") + cookie[middle + 1 :]


async def user_connection(rig: Rig, user: str, conn_no: int) -> int:
    """Rounds of pipelined requests on one keep-alive connection; checks every answer. Returns how many
    requests reached the console."""
    session = rig.cookies[user]
    garbage = f"junk=%zz%; {COOKIE}_login_0123456789abcdef=stale; theme=dark"
    forwarded = 0
    async with await RawClient.open(rig.port) as client:
        for round_ in range(ROUNDS):
            wire = b""
            expected: list[tuple[str, str, bytes]] = []  # (kind, target, body)
            for i in range(BATCH):
                tag = f"{conn_no}-{round_}-{i}"
                kind = ("get", "length", "chunked", "garbage-cookies", "forged-session", "get")[(i + round_) % BATCH]
                target = f"{AUTH_PATH}?u={user}&n={tag}"
                body = f"{user}:{tag}:".encode() * (i + 1)
                cookie = f"Cookie: {COOKIE}={session}"
                if kind == "get":
                    wire += raw(rig, "GET", target, cookie)
                    body = b""
                elif kind == "length":
                    wire += raw(rig, "POST", target, cookie, f"Content-Length: {len(body)}", body=body)
                elif kind == "chunked":
                    half = len(body) // 2
                    wire += raw(
                        rig,
                        "POST",
                        target,
                        cookie,
                        "Transfer-Encoding: chunked",
                        body=chunked(body[:half], body[half:]),
                    )
                elif kind == "garbage-cookies":
                    wire += raw(rig, "GET", target, f"Cookie: {garbage}; {COOKIE}={session}; x=1")
                    body = b""
                else:
                    other = rig.cookies[USERS[(USERS.index(user) + 1) % len(USERS)]]
                    target = f"{AUTH_PATH}?u=refused&n={tag}"
                    wire += raw(rig, "GET", target, f"Cookie: {COOKIE}={forged(other)}")
                    body = b""
                expected.append((kind, target, body))
            await client.send(wire)
            for kind, target, body in expected:
                answer = await client.response(timeout=10)
                if kind == "forged-session":
                    assert answer.status == 401, (user, target, answer)
                    continue
                assert is_console_echo(answer), (user, target, answer, answer.body[:200])
                echo = answer.json()
                assert echo["target"] == target, f"{user} got the answer to {echo['target']} for {target}"
                assert identity_of(answer) == user, f"{user} was {identity_of(answer)} at the console"
                assert echo["body_sha256"] == hashlib.sha256(body).hexdigest(), (user, target)
                forwarded += 1
    return forwarded


def raw(rig: Rig, method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    return rig.request(method, target, "Accept: application/json", *headers, body=body)


async def attacker(rig: Rig) -> None:
    """Smuggling attempts, spoofed identities, forged cookies and malformed requests, each round on fresh
    connections (a malformed request may end one)."""
    victim = rig.cookies["bob"]
    spill = smuggled_request(rig.host, user="bob", path=f"/{MARKER}?u=bob")
    for round_ in range(ATTACK_ROUNDS):
        tag = f"a{round_}"
        packed = gzip.compress(b"\r\n" * 200 + spill)
        attempts = [
            # A compressed body whose plain text holds a request for bob.
            raw(
                rig,
                "POST",
                f"{SKIP_PATH}?u=mallory&n={tag}",
                "Content-Encoding: gzip",
                f"Content-Length: {len(packed)}",
                body=packed,
            )
            + raw(rig, "GET", f"{SKIP_PATH}?u=mallory&n={tag}-next", "Connection: close"),
            # The same, chunked.
            raw(
                rig,
                "POST",
                f"{SKIP_PATH}?u=mallory&n={tag}-c",
                "Content-Encoding: gzip",
                "Transfer-Encoding: chunked",
                body=chunked(packed),
            )
            + raw(rig, "GET", f"{SKIP_PATH}?u=mallory&n={tag}-c-next", "Connection: close"),
            # Identity headers of its own, pipelined.
            raw(
                rig,
                "GET",
                f"{SKIP_PATH}?u=mallory&n={tag}-s",
                "X-Forwarded-User: bob",
                "X_Forwarded_Email: bob@example.com",
            )
            + raw(rig, "GET", f"{AUTH_PATH}?u=refused&n={tag}-s", "X-Forwarded-User: alice", "Connection: close"),
            # Someone else's cookie, forged; then garbage in the cookie header.
            raw(rig, "GET", f"{AUTH_PATH}?u=refused&n={tag}-f", f"Cookie: {COOKIE}={forged(victim)}")
            + raw(
                rig, "GET", f"{AUTH_PATH}?u=refused&n={tag}-g", f"Cookie: {COOKIE}=%%%; {COOKIE}=", "Connection: close"
            ),
            # Conflicting framing, and a chunk size that overflows: refused, the connection may end.
            raw(
                rig,
                "POST",
                f"{SKIP_PATH}?u=mallory&n={tag}-t",
                "Content-Length: 5",
                "Transfer-Encoding: chunked",
                body=b"0\r\n\r\n" + spill,
            ),
            raw(
                rig,
                "POST",
                f"{SKIP_PATH}?u=mallory&n={tag}-o",
                "Transfer-Encoding: chunked",
                body=b"1000000000000000b\r\n" + spill,
            ),
            # Bare LF line ends.
            f"GET {SKIP_PATH}?u=mallory&n={tag}-l HTTP/1.1\nHost: {rig.host}\nX-Forwarded-User: carol\n\n".encode()
            + spill,
        ]
        await asyncio.gather(*(attack(rig, wire) for wire in attempts))


async def attack(rig: Rig, wire: bytes) -> None:
    async with await RawClient.open(rig.port) as client:
        await client.send(wire)
        async with asyncio.timeout(10):
            while True:
                try:
                    answer = await client.response()
                except EOFError:
                    return
                if is_console_echo(answer):
                    assert identity_of(answer) is None, answer.body[:300]
                    assert "mallory" in answer.json()["target"], answer.body[:300]
                elif answer.status >= 400 and answer.status not in (401, 403):
                    return  # refused: aiohttp may read no further on this connection


async def test_three_users_and_an_attacker_each_see_only_their_own_identity(rig: Rig) -> None:
    mark = rig.console.mark()
    users = [user_connection(rig, user, n) for user in USERS for n in range(CONNECTIONS_PER_USER)]
    results = await asyncio.gather(attacker(rig), *users)
    forwarded = sum(results[1:])
    assert not rig.console.errors_since(mark), rig.console.errors_since(mark)
    seen = rig.console.requests_since(mark)
    by_user: dict[str, int] = dict.fromkeys(USERS, 0)
    for request in seen:
        query = parse_qs(urlsplit(request.target).query)
        owner = query.get("u", ["?"])[0]
        assert owner != "refused", f"a request without a valid session reached the console: {request.target}"
        check_request(request, host=rig.host, user=owner if owner in USERS else None)
        if owner in USERS:
            by_user[owner] += 1
    assert sum(by_user.values()) == forwarded, (by_user, forwarded)
    assert all(count > 0 for count in by_user.values()), by_user
