"""The sessions' directory (``proxy.sessions.directory``): each session's sign-in facts and the index by user that
the settings page's Sessions reads, on both stores. Nothing of it in clear in Redis, everything with a TTL,
and revoking reaches the other worker's cache through the invalidation channel."""

from __future__ import annotations

import dataclasses
import time

import pytest
from redis import asyncio as aioredis

from proxy.config.model import Secret, SessionSettings
from proxy.sessions import MemoryStore, SessionManager
from proxy.sessions.directory import USER_AGENT_MAX, SignIn
from proxy.sessions.redis import RedisStore
from support.waiting import eventually

SETTINGS = SessionSettings(cookie_secrets=(Secret("n" * 40),), lifetime=600, idle_timeout=300)
CLIENT = SignIn("192.0.2.7", "Mozilla/5.0 (X11; Linux x86_64) Chrome/126")


@pytest.fixture(params=["memory", "redis"])
async def manager(request, redis_clean):
    store = MemoryStore() if request.param == "memory" else RedisStore(redis_clean.url)
    yield SessionManager(store, SETTINGS)
    await store.close()


async def sign_in(manager: SessionManager, username: str = "alice.smith", client: SignIn = CLIENT, **claims):
    values = {"sub": "u-" + username, "preferred_username": username, "email": f"{username}@Example.com", **claims}
    return await manager.create(claims=values, id_token="id.token", access_token="at", refresh_token=None,
                                access_expires_at=None, issuer="https://idp", client_id="c", client=client)  # fmt: skip


async def test_a_users_sessions_are_found_by_subject_username_or_email(manager):
    first = await sign_in(manager)
    second = await sign_in(manager, client=SignIn("198.51.100.2", "curl/8"))
    await sign_in(manager, "bob")
    for name in ("u-alice.smith", "alice.smith", "ALICE.Smith", "alice.smith@example.com"):
        found = await manager.directory.find(name)
        assert [f.session_id for f in found] == [second.id, first.id], name  # newest sign-in first
    assert await manager.directory.find("U-ALICE.SMITH") == []  # a subject is compared exactly
    assert await manager.directory.find("alice") == [] and await manager.directory.find("") == []


async def test_each_session_shows_its_sign_in_its_last_use_its_end_and_its_client(manager, monkeypatch):
    long = SessionManager(manager.store, dataclasses.replace(SETTINGS, lifetime=3600))
    started = time.time() - 1000
    with monkeypatch.context() as m:
        m.setattr("proxy.sessions.manager.time.time", lambda: started)  # signed in 1000 s ago
        session = await sign_in(long)
    (facts,) = await long.directory.find("alice.smith")
    assert (facts.address, facts.user_agent) == (CLIENT.address, CLIENT.user_agent)
    assert (facts.sub, facts.username, facts.email) == ("u-alice.smith", "alice.smith", "alice.smith@Example.com")
    assert facts.created_at == started and facts.expires_at == started + 3600
    # Unused for all but 60 of its 300 idle seconds: its last use was four minutes ago, and it ends in a
    # minute, long before its absolute end.
    await long.store.get("s:" + session.id, touch=60.0)
    (facts,) = await long.directory.find("alice.smith")
    assert facts.last_used_at is not None and facts.ends_at is not None
    assert 235 <= time.time() - facts.last_used_at <= 245
    assert 55 <= facts.ends_at - time.time() <= 60
    # Used again (the session restarts its idle timer): its last use is now.
    assert await long.load(session.ticket, issuer="https://idp", client_id="c") is not None
    (facts,) = await long.directory.find("alice.smith")
    assert facts.last_used_at is not None and time.time() - facts.last_used_at < 5
    assert facts.ends_at is not None and facts.ends_at - time.time() > 290


async def test_a_user_agent_is_kept_short_and_printable(manager):
    await sign_in(manager, client=SignIn("192.0.2.1", "evil\x1b[31m\n" + "A" * 1000))
    (facts,) = await manager.directory.find("alice.smith")
    assert len(facts.user_agent) == USER_AGENT_MAX and "\x1b" not in facts.user_agent and "\n" not in facts.user_agent


async def test_revoked_signed_out_and_ended_sessions_are_not_listed_and_leave_no_trace(manager):
    revoked, signed_out, ended, kept = [await sign_in(manager) for _ in range(4)]
    found = {f.session_id: f for f in await manager.directory.find("alice.smith")}
    assert await manager.revoke(found[revoked.id]) is True
    assert await manager.load(revoked.ticket, issuer="https://idp", client_id="c") is None
    await manager.end(signed_out)
    await manager.delete(ended.id)  # a new sign-in replaced it, or back-channel logout ended it
    assert [f.session_id for f in await manager.directory.find("alice.smith")] == [kept.id]
    for gone in (revoked, signed_out, ended):
        assert await manager.store.get("m:" + gone.id) is None
    assert await manager.store.get("m:" + kept.id) is not None


async def test_facts_sealed_under_an_older_cookie_secret_still_open(manager):
    older = SessionManager(manager.store, dataclasses.replace(SETTINGS, cookie_secrets=(Secret("o" * 40),)))
    session = await sign_in(older)
    both = (Secret("p" * 40), Secret("o" * 40))
    rotated = SessionManager(manager.store, dataclasses.replace(SETTINGS, cookie_secrets=both))
    assert [f.session_id for f in await rotated.directory.find("alice.smith")] == [session.id]
    # Under a secret that no longer opens them, they are not shown (and not trusted): nothing to read.
    assert await manager.directory.find("alice.smith") == []


async def test_redis_holds_the_directory_sealed_and_every_key_expires(redis_clean):
    store = RedisStore(redis_clean.url)
    manager = SessionManager(store, SETTINGS)
    await sign_in(manager, sid="provider-session-1")
    raw = aioredis.Redis.from_url(redis_clean.url)
    try:
        dump, ttls = b"", {}
        async for key in raw.scan_iter("sso:*"):
            kind = await raw.type(key)
            dump += key + (b"".join(await raw.zrange(key, 0, -1)) if kind == b"zset" else await raw.get(key) or b"")
            ttls[key] = await raw.pttl(key)
    finally:
        await raw.aclose()
        await store.close()
    assert any(k.startswith(b"sso:m:") for k in ttls) and any(k.startswith(b"sso:u:") for k in ttls)
    for clear in (b"alice", b"Example.com", b"192.0.2.7", b"Chrome", b"provider-session-1"):
        assert clear not in dump
    assert all(0 < ttl <= SETTINGS.lifetime * 1000 for ttl in ttls.values()), ttls


async def test_a_revoked_session_leaves_the_other_workers_cache_at_once(redis_clean):
    """Two workers (or replicas) on one Redis, the session cached in the second: revoking it in the first
    reaches the second through the invalidation channel, long before its cache_ttl (30 s) would."""
    cached = dataclasses.replace(SETTINGS, cache_ttl=30)
    stores = [RedisStore(redis_clean.url), RedisStore(redis_clean.url)]
    a, b = (SessionManager(store, cached) for store in stores)
    for m in (a, b):
        await m.start()
    try:
        await eventually(lambda: a._cache_live and b._cache_live, what="both subscriptions live")
        session = await sign_in(a)
        assert await b.load(session.ticket, issuer="https://idp", client_id="c") is not None  # cached in b
        (facts,) = await a.directory.find("alice.smith")
        await a.revoke(facts)

        async def gone() -> bool:
            return await b.load(session.ticket, issuer="https://idp", client_id="c") is None

        await eventually(gone, what="the revoked session to leave b", timeout=1.0)
    finally:
        for m in (a, b):
            await m.stop()
        for store in stores:
            await store.close()


async def test_a_step_up_lists_the_upgraded_session_under_its_new_id_and_revoking_it_ends_it(manager):
    """A step-up (``SessionManager.upgrade``) moves the session to a new id: the settings page's Sessions must
    list that one, with the step-up's browser and the first sign-in's start, and never the old id (revoking a
    row that is no longer the live session would leave the user signed in)."""
    old = await sign_in(manager, acr="urn:pwd")
    stepped = SignIn("198.51.100.9", "Firefox/128")
    claims = {"sub": "u-alice.smith", "preferred_username": "alice.smith", "email": "alice.smith@Example.com"}
    new = await manager.upgrade(old, claims={**claims, "acr": "urn:mfa"}, id_token="id2", access_token="at2",
                                refresh_token=None, access_expires_at=None, client=stepped)  # fmt: skip
    (facts,) = await manager.directory.find("alice.smith")
    assert facts.session_id == new.id
    assert (facts.address, facts.user_agent, facts.created_at) == (stepped.address, stepped.user_agent, old.created_at)
    assert await manager.revoke(facts)
    assert await manager.load(new.ticket, issuer="https://idp", client_id="c", use_cache=False) is None
    assert await manager.directory.find("alice.smith") == []
