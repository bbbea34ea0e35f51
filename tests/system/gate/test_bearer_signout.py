"""Sign-out ends every credential it showed: ID tokens as bearer tokens, across replicas (issue 26).

Two sidecar replicas share one real Redis; badop (in process) signs real tokens and sends real back-channel
logout tokens. An ID token reaches an attacker through sign-out's ``id_token_hint`` (browser history, the
provider's logs): by default it is no bearer credential at all, and with ``sso.accept_id_tokens: true`` it
stops working on every replica once its session or user is signed out.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from support.badop import BadOP, running_badop
from support.procs import LOOPBACK, free_port
from support.sidecar import Sidecar
from support.waiting import eventually

API = {"Accept": "application/json"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


@pytest.fixture(scope="module")
async def badop() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/signout") as op:
        yield op


@pytest.fixture
def op(badop: BadOP) -> BadOP:
    badop.reset()
    return badop


Replicas = Callable[..., Awaitable[list[Sidecar]]]


@pytest.fixture
async def replicas(op: BadOP, console: Any, redis_clean: Any, tmp_path: Path) -> AsyncIterator[Replicas]:
    """``await replicas(n=2, **sso)``: replicas of one sidecar (one public URL, client, Redis and cookie
    secret), each with its own listen port. More can be added to the same group later."""
    started: list[Sidecar] = []
    shared: dict[str, Any] = {}

    async def make(n: int = 2, **sso: Any) -> list[Sidecar]:
        group = []
        for _ in range(n):
            port = free_port()
            if not shared:
                client = {"issuer_url": op.issuer, "client_id": op.client_id, "client_secret": op.client_secret}
                store = {"store": "redis", "redis_url": redis_clean.url, "cookie_secret": secrets.token_urlsafe(32)}
                shared.update(public_url=f"http://{LOOPBACK}:{port}", sso={**client, **sso}, session=store)
            config = {"listen": f"{LOOPBACK}:{port}", "upstream": console.url, **shared}
            sidecar = Sidecar(config, tmp_path / f"replica-{len(started)}", name=f"replica-{len(started)}")
            started.append(sidecar)
            # In a thread: badop answers on this event loop, which must not block while the sidecar starts.
            group.append(await asyncio.to_thread(sidecar.start))
        return group

    yield make
    for sidecar in started:
        await sidecar.astop()


async def sign_in(http: Any, sidecar: Sidecar, op: BadOP) -> tuple[Any, str]:
    """A browser signs in through ``sidecar``; the client and the ID token the sidecar now holds."""
    client = http()
    async with client.get(sidecar.url_for("/api/whoami")) as resp:
        assert resp.status == 302, await resp.text()
        authorize = resp.headers["Location"]
    async with client.get(authorize) as resp:
        assert resp.status == 302, await resp.text()
        callback = resp.headers["Location"]
    async with client.get(callback) as resp:
        assert resp.status == 302, (resp.status, await resp.text())
    assert op.last_id_token
    return client, op.last_id_token


async def sign_out(client: Any, sidecar: Sidecar) -> URL:
    async with client.get(sidecar.url_for("/oauth2/sign_out"), headers=SAME_ORIGIN) as resp:
        assert resp.status == 302, await resp.text()
        return URL(resp.headers["Location"])


async def bearer(http: Any, sidecar: Sidecar, token: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", **API}
    async with http(cookies=False).get(sidecar.url_for("/api/whoami"), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def access_token(op: BadOP, typ: str = "at+jwt", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": op.issuer, "sub": "svc-ci", "aud": op.client_id, "iat": now, "exp": now + 300,
            "client_id": "ci", "jti": secrets.token_urlsafe(8), "preferred_username": "ci-bot", **claims}  # fmt: skip
    return op.sign(body, typ=typ)


# --------------------------------------------------------------------------------------------------
# The default: ID tokens are no bearer credentials


async def test_the_id_token_sign_out_exposes_is_refused_as_a_bearer_token_on_every_replica(http, op, replicas):
    a, b = await replicas()
    client, id_token = await sign_in(http, a, op)
    location = await sign_out(client, a)
    exposed = location.query.get("id_token_hint")
    assert exposed == id_token  # badop advertises no logout_hint support: the hint is still sent
    for sidecar in (a, b):
        status, body = await bearer(http, sidecar, exposed)
        assert status == 401, (sidecar.name, body)
        assert body["error"] == "invalid_token"


async def test_id_tokens_are_refused_and_access_tokens_accepted_by_default(http, op, replicas):
    (a,) = await replicas(n=1)
    _, id_token = await sign_in(http, a, op)
    status, body = await bearer(http, a, id_token)  # the session is live: still not a bearer credential
    assert status == 401 and body["error"] == "invalid_token", body
    assert "ID token" in body["message"]
    # RFC 9068, and a pre-9068 JWT access token that carries its scope: both pass.
    for token in (access_token(op), access_token(op, typ="JWT", scope="openid console:read")):
        status, seen = await bearer(http, a, token)
        assert status == 200, seen
        assert seen["headers"]["X-Forwarded-User"] == "ci-bot"


async def test_after_a_back_channel_logout_the_id_token_is_refused_on_the_other_replica(http, op, replicas):
    a, b = await replicas()
    _, id_token = await sign_in(http, a, op)
    assert await op.send_logout_token(a.url_for("/oauth2/backchannel-logout"), op.mint_logout_token()) == 200
    status, body = await bearer(http, b, id_token)
    assert status == 401 and body["error"] == "invalid_token", body


# --------------------------------------------------------------------------------------------------
# sso.accept_id_tokens: true, for providers whose access tokens are opaque


async def test_an_accepted_id_token_stops_working_on_every_replica_once_its_session_signs_out(http, op, replicas):
    a, b = await replicas(accept_id_tokens=True)
    client, id_token = await sign_in(http, a, op)
    for sidecar in (a, b):  # live: accepted, and now in each replica's verified-token cache
        status, seen = await bearer(http, sidecar, id_token)
        assert status == 200, (sidecar.name, seen)
        assert seen["headers"]["X-Forwarded-Name"] == "Ada (from the ID token)"
    await sign_out(client, a)
    status, body = await bearer(http, a, id_token)
    assert status == 401 and body["error"] == "invalid_token", body

    async def refused_by_b() -> bool:
        return (await bearer(http, b, id_token))[0] == 401

    await eventually(refused_by_b, what="the other replica to refuse the signed-out ID token", timeout=5)
    (late,) = await replicas(n=1)  # a replica that starts afterwards, with nothing cached, knows it too
    assert (await bearer(http, late, id_token))[0] == 401


async def test_a_back_channel_logout_by_sid_ends_that_sessions_id_tokens_only(http, op, replicas):
    a, b = await replicas(accept_id_tokens=True)
    _, first = await sign_in(http, a, op)
    first_sid = op.last_sid
    _, second = await sign_in(http, a, op)  # the same user in another browser: another provider session
    for token in (first, second):
        assert (await bearer(http, b, token))[0] == 200
    logout = op.mint_logout_token({"sid": first_sid})
    assert await op.send_logout_token(a.url_for("/oauth2/backchannel-logout"), logout) == 200

    async def first_refused_by_b() -> bool:
        return (await bearer(http, b, first))[0] == 401

    await eventually(first_refused_by_b, what="the other replica to refuse the logged-out session's ID token")
    assert (await bearer(http, a, first))[0] == 401
    assert (await bearer(http, b, second))[0] == 200


async def test_a_back_channel_logout_by_sub_ends_the_users_earlier_id_tokens_not_later_ones(http, op, replicas):
    a, b = await replicas(accept_id_tokens=True)
    _, before = await sign_in(http, a, op)
    assert (await bearer(http, b, before))[0] == 200
    logout = op.mint_logout_token({"sid": None, "iat": int(time.time())})
    assert await op.send_logout_token(a.url_for("/oauth2/backchannel-logout"), logout) == 200

    async def refused_by_b() -> bool:
        return (await bearer(http, b, before))[0] == 401

    await eventually(refused_by_b, what="the other replica to refuse the user's earlier ID token")
    op.set(id_token_iat_offset=2)  # a sign-in after the logout (badop's clock counts whole seconds)
    _, after = await sign_in(http, a, op)
    status, seen = await bearer(http, b, after)
    assert status == 200, seen
