"""How many Redis connections a worker keeps after sign-ins, sign-outs and the settings page's Sessions.

redis-py's connection pool never closes a connection it opened: every command in flight beside another costs a
connection for the rest of the worker's life (over 20 KiB of memory each, up to the pool's bound of 512, past
which it refuses). A sign-in's seven writes sent side by side left a worker with six connections per concurrent
sign-in: most of the RSS growth per login that issue 25 measured. Counted here on the real server (CLIENT LIST),
so the bounds hold whatever the client library does inside.
"""

from __future__ import annotations

import asyncio

import pytest
from redis import asyncio as aioredis

from proxy.config.model import Secret, SessionSettings
from proxy.sessions import SessionManager
from proxy.sessions.directory import SignIn
from proxy.sessions.redis import RedisStore

SETTINGS = SessionSettings(cookie_secrets=(Secret("n" * 40),), lifetime=600, idle_timeout=300)
AT_ONCE = 20


async def connections(url: str) -> int:
    """The sidecar's connections to the server (its clients are named ``sso-sidecar``)."""
    raw = aioredis.Redis.from_url(url)
    try:
        listed = await raw.client_list()
    finally:
        await raw.aclose()
    return sum(1 for client in listed if client.get("name") == "sso-sidecar")


@pytest.fixture
async def manager(redis_clean):
    store = RedisStore(redis_clean.url)
    yield SessionManager(store, SETTINGS)
    await store.close()


async def sign_in(manager: SessionManager, n: int, username: str = "alice"):
    # Every index a sign-in joins: back-channel logout's sub and sid, the directory's sub, username and email.
    claims = {"sub": f"u-{username}", "sid": f"op-{n}", "preferred_username": username, "email": f"{username}@x.org"}
    return await manager.create(claims=claims, id_token="id.token", access_token="at", refresh_token=None,
                                access_expires_at=None, issuer="https://idp", client_id="c",
                                client=SignIn("192.0.2.7", "Firefox"))  # fmt: skip


async def test_sign_ins_side_by_side_hold_one_connection_each_at_most(manager, redis_clean):
    await sign_in(manager, 0)  # the pool's first connection, and the index script loaded
    before = await connections(redis_clean.url)
    sessions = await asyncio.gather(*(sign_in(manager, n, f"user{n}") for n in range(AT_ONCE)))
    assert await connections(redis_clean.url) - before <= AT_ONCE - 1
    # Every write was made: each session is listed under its user and ends with its sign-out.
    for n, session in enumerate(sessions):
        assert [f.session_id for f in await manager.directory.find(f"user{n}@x.org")] == [session.id]
    await asyncio.gather(*(manager.end(s) for s in sessions))
    assert await connections(redis_clean.url) - before <= AT_ONCE - 1
    for n in range(AT_ONCE):
        assert await manager.directory.find(f"user{n}") == []


async def test_a_step_up_upgrade_holds_one_connection_at_a_time(manager, redis_clean):
    old = await asyncio.gather(*(sign_in(manager, n, f"user{n}") for n in range(AT_ONCE)))
    before = await connections(redis_clean.url)
    upgraded = await asyncio.gather(*(
        manager.upgrade(s, claims=dict(s.claims), id_token="id.2", access_token="at.2", refresh_token=None,
                        access_expires_at=None) for s in old
    ))  # fmt: skip
    assert await connections(redis_clean.url) <= max(before, AT_ONCE)
    for n, session in enumerate(upgraded):
        assert [f.session_id for f in await manager.directory.find(f"user{n}")] == [session.id]


async def test_listing_and_revoking_many_sessions_opens_a_few_connections_only(manager, redis_clean):
    many = [await sign_in(manager, n) for n in range(60)]  # one after another
    found = await manager.directory.find("alice")
    assert {f.session_id for f in found} == {s.id for s in many}
    assert await connections(redis_clean.url) <= 8  # directory._STORE_CALLS_AT_ONCE
    for facts in found:
        assert await manager.revoke(facts) is True
    assert await manager.directory.find("alice") == []
    # Sessions that ended without the directory knowing (idle, replaced) are dropped by the listing itself.
    ended = [await sign_in(manager, n) for n in range(60, 90)]
    for session in ended:
        await manager.delete(session.id)
    assert await manager.directory.find("alice") == []
    assert await connections(redis_clean.url) <= 8
