"""Session storage: both stores behind one interface, encryption at rest, single-use pending logins."""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any

import pytest
from redis import asyncio as aioredis

from proxy.config.model import Secret, SessionSettings
from proxy.errors import StoreUnavailable
from proxy.sessions import MemoryStore, PendingLogin, SessionManager
from proxy.sessions.manager import UNKNOWN
from proxy.sessions.model import Ticket
from proxy.sessions.redis import RedisStore
from proxy.sessions.revocations import ID_TOKEN_MAX_LIFETIME, Revocations, ttl_for
from proxy.sessions.store import SessionStore
from proxy.sessions.writes import Drop, Enter, Leave, Put
from support.redis_ha import command
from support.waiting import eventually

SETTINGS = SessionSettings(cookie_secrets=(Secret("n" * 40), Secret("o" * 40)), lifetime=60, idle_timeout=30)
TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-access-token-value.sig"


@pytest.fixture(params=["memory", "redis"])
async def manager(request, redis_server):
    store = MemoryStore() if request.param == "memory" else RedisStore(redis_server.url)
    yield SessionManager(store, SETTINGS)
    await store.close()


async def create(manager: SessionManager, **changes):
    values = dict(
        claims={"sub": "subject-7f3a9", "email": "u1@example.com"},
        id_token="id.token.value",
        access_token=TOKEN,
        refresh_token=None,
        access_expires_at=None,
        issuer="https://idp",
        client_id="c",
    )
    values.update(changes)
    return await manager.create(**values)


async def test_a_created_session_loads_with_its_ticket(manager):
    session = await create(manager)
    loaded = await manager.load(session.ticket, issuer="https://idp", client_id="c")
    assert loaded is not None
    assert loaded.claims["email"] == "u1@example.com"
    assert loaded.access_token == TOKEN


async def test_a_wrong_key_or_unknown_id_finds_nothing(manager):
    session = await create(manager)
    assert await manager.load(Ticket(session.id, b"k" * 32), issuer="https://idp", client_id="c") is None
    assert await manager.load(Ticket("unknown", session.key), issuer="https://idp", client_id="c") is None


async def test_sessions_from_another_issuer_or_client_are_not_trusted(manager):
    session = await create(manager)
    assert await manager.load(session.ticket, issuer="https://other", client_id="c") is None
    assert await manager.load(session.ticket, issuer="https://idp", client_id="other") is None


async def test_deleted_sessions_stay_deleted(manager):
    session = await create(manager)
    assert await manager.delete(session.id) is True
    assert await manager.load(session.ticket, issuer="https://idp", client_id="c") is None


async def test_a_session_past_its_absolute_lifetime_is_gone(manager):
    session = await create(manager)
    session.created_at = time.time() - SETTINGS.lifetime - 1
    short = SessionManager(manager.store, dataclasses.replace(SETTINGS, lifetime=10_000))
    await short.save(session)  # stored, but already too old for the real lifetime
    assert await manager.load(session.ticket, issuer="https://idp", client_id="c") is None


def remaining_ttl(manager: SessionManager, redis_port: int, key: str) -> float:
    """Seconds until ``key`` expires in the manager's store: Redis's PTTL, or the memory store's deadline."""
    if isinstance(manager.store, RedisStore):
        pttl = command(redis_port, "PTTL", "sso:" + key)
        assert isinstance(pttl, int)
        return pttl / 1000
    assert isinstance(manager.store, MemoryStore)
    return manager.store._data[key][1] - time.monotonic()


async def test_reading_a_session_restarts_its_idle_timer(manager, redis_server):
    """Observed on the store's TTL instead of by waiting: no clock needs to run."""
    session = await create(manager)
    key = "s:" + session.id
    assert SETTINGS.idle_timeout - 5 < remaining_ttl(manager, redis_server.port, key) <= SETTINGS.idle_timeout
    await manager.store.get(key, touch=2.0)  # as if it had been idle for all but two seconds
    assert remaining_ttl(manager, redis_server.port, key) <= 2.0
    assert await manager.load(session.ticket, issuer="https://idp", client_id="c") is not None
    assert remaining_ttl(manager, redis_server.port, key) > SETTINGS.idle_timeout - 5


async def test_idle_timeout_expires_unused_sessions(manager):
    fast = SessionManager(manager.store, dataclasses.replace(SETTINGS, idle_timeout=0.3))
    started = time.monotonic()
    session = await create(fast)
    # Polled without touching it (a load would restart the timer): gone once the idle timeout has passed.
    await eventually(lambda: _absent(fast.store, "s:" + session.id), what="the unused session to expire", timeout=10)
    assert time.monotonic() - started >= 0.3, "expired before its idle timeout"
    assert await fast.load(session.ticket, issuer="https://idp", client_id="c") is None


async def _absent(store: SessionStore, key: str) -> bool:
    return await store.get(key) is None


async def test_pending_logins_can_be_taken_once(manager):
    login = PendingLogin("nonce", "verifier", "/back?x=1", "https://idp", "c", time.time())
    await manager.save_login("state-1", login)
    assert await manager.take_login("state-1") == login
    assert await manager.take_login("state-1") is None


async def test_a_pending_login_stored_under_an_older_secret_still_opens(manager):
    old = SessionManager(manager.store, dataclasses.replace(SETTINGS, cookie_secrets=(Secret("o" * 40),)))
    login = PendingLogin("nonce", "verifier", "/", "https://idp", "c", time.time())
    await old.save_login("state-2", login)
    assert await manager.take_login("state-2") == login


async def test_redis_holds_no_token_or_claim_in_clear(redis_server):
    store = RedisStore(redis_server.url)
    manager = SessionManager(store, SETTINGS)
    session = await create(manager)
    await manager.save_login("state-3", PendingLogin("the-nonce", "the-verifier", "/", "i", "c", 0))
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        dump = b""
        async for key in raw.scan_iter("sso:*"):
            if await raw.type(key) == b"zset":
                dump += b"".join(await raw.zrange(key, 0, -1)) + key
            else:
                dump += (await raw.get(key) or b"") + key
        ttl = await raw.pttl(f"sso:s:{session.id}")
    finally:
        await raw.aclose()
        await store.close()
    assert dump
    for secret in (TOKEN, "id.token.value", "u1@example.com", "the-verifier", "the-nonce", "subject-7f3a9"):
        assert secret.encode() not in dump
    assert 0 < ttl <= SETTINGS.idle_timeout * 1000


async def test_unreachable_redis_is_a_clear_bounded_error():
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.5)
    for call in (lambda: store.get("s:x"), lambda: store.write([Put("s:x", b"v", 5), Enter("i:x", "m", 5)])):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        assert time.monotonic() - started < 5
    await store.close()


async def test_writes_made_together_are_the_calls_they_stand_for(manager, redis_server):
    """``write`` (a sign-in's or a sign-out's pipeline on Redis): every write made, in order, each with its own TTL;
    an index entry never shortens a member's or the index's time, and its members expire one by one."""
    store, n = manager.store, secrets.token_hex(4)  # the Redis server is shared: keys of this test's own
    iw, ix, ka, kb = f"i:w{n}", f"i:x{n}", f"k:a{n}", f"k:b{n}"
    assert await store.index_add(iw, "kept", 30) == 1
    await store.write([
        Put(ka, b"first", 20), Enter(iw, "kept", 5), Enter(iw, "brief", 0.3), Put(ka, b"second", 40),
        Enter(ix, "m", 10), Put(kb, b"b", 10),
    ])  # fmt: skip
    assert (await store.get(ka), await store.get(kb)) == (b"second", b"b")
    assert 35 < (await store.ttl(ka) or 0) <= 40 and 5 < (await store.ttl(kb) or 0) <= 10
    assert await store.index_members(iw) == {"kept", "brief"}
    assert await store.index_members(ix) == {"m"}
    if isinstance(store, RedisStore):
        assert 29_000 < int(command(redis_server.port, "PTTL", "sso:" + iw)) <= 30_000  # not shortened to 5 s
        assert 9_000 < int(command(redis_server.port, "PTTL", "sso:" + ix)) <= 10_000  # a new index: its entry's

    async def brief_gone() -> bool:
        return await store.index_members(iw) == {"kept"}

    await eventually(brief_gone, what="the 0.3 s member to expire alone")
    assert await store.index_add(iw, "third", 30) == 2  # "kept" outlived its 5 s entry: still counted
    # A sign-out's deletions: keys and members gone, others kept, and deleting what is not there is no error.
    await store.write([Drop(kb), Leave(iw, "kept"), Leave(ix, "m"), Drop(f"k:never{n}"), Leave(iw, "never")])
    assert (await store.get(ka), await store.get(kb)) == (b"second", None)
    assert (await store.index_members(iw), await store.index_members(ix)) == ({"third"}, set())


async def test_a_sign_in_writes_its_indexes_also_when_redis_has_forgotten_its_scripts(redis_clean):
    """A restarted or flushed Redis holds no scripts: the sign-in's pipeline sends each index entry's script
    whole (EVAL), so it never meets NOSCRIPT, and every index finds the session."""
    store = RedisStore(redis_clean.url)
    try:
        manager = SessionManager(store, SETTINGS)
        await create(manager, claims={"sub": "s-1", "sid": "op-9", "email": "a@example.org"})
        command(redis_clean.port, "SCRIPT", "FLUSH")
        session = await create(manager, claims={"sub": "s-2", "sid": "op-8", "email": "b@example.org"})
        assert [f.session_id for f in await manager.directory.find("b@example.org")] == [session.id]
        assert await manager.end_matching("https://idp", sub=None, sid="op-8") == 1
        assert await manager.load(session.ticket, issuer="https://idp", client_id="c") is None
    finally:
        await store.close()


# --------------------------------------------------------------------------------------------------
# The in-process cache and its invalidation across workers and replicas


@pytest.fixture(params=["memory", "redis"])
async def twin_managers(request, redis_server):
    """Two managers sharing one store, as two workers (or replicas) share Redis."""
    cached = dataclasses.replace(SETTINGS, cache_ttl=30)
    if request.param == "memory":
        shared = MemoryStore()
        stores = [shared, shared]
    else:
        stores = [RedisStore(redis_server.url), RedisStore(redis_server.url)]
    managers = [SessionManager(store, cached) for store in stores]
    for m in managers:
        await m.start()
    await eventually(lambda: all(m._cache_live for m in managers), what="both invalidation subscriptions to be live")
    yield managers
    for m in managers:
        await m.stop()
    for store in set(stores):
        await store.close()


async def test_a_cached_session_is_served_without_the_store(twin_managers):
    a, _ = twin_managers
    session = await create(a)
    assert await a.load(session.ticket, issuer="https://idp", client_id="c") is not None
    await a.store.delete("s:" + session.id)  # behind the manager's back: no invalidation published
    assert await a.load(session.ticket, issuer="https://idp", client_id="c") is not None


async def test_ending_a_session_on_one_worker_reaches_the_other_long_before_its_cache_expires(twin_managers):
    """The invalidation travels by pub/sub: b drops its cached copy well within cache_ttl (30s). How fast
    it is on an idle machine (the README's 100 ms) is the benchmark's to measure, not a unit test's."""
    a, b = twin_managers
    session = await create(a)
    assert await b.load(session.ticket, issuer="https://idp", client_id="c") is not None  # now cached in b
    await a.store.delete("s:" + session.id)  # behind both managers' backs: only the message can tell b
    assert await b.load(session.ticket, issuer="https://idp", client_id="c") is not None  # served from b's cache
    await a.end(session)

    async def dropped_by_b() -> bool:
        return await b.load(session.ticket, issuer="https://idp", client_id="c") is None

    await eventually(dropped_by_b, what="b to drop the session a ended", timeout=5)


async def test_the_cache_never_serves_a_session_to_a_ticket_with_another_key(twin_managers):
    a, _ = twin_managers
    session = await create(a)
    await a.load(session.ticket, issuer="https://idp", client_id="c")
    assert await a.load(Ticket(session.id, b"x" * 32), issuer="https://idp", client_id="c") is None


async def test_cached_copies_hold_no_tokens_and_the_store_still_has_them(twin_managers):
    a, _ = twin_managers
    session = await create(a, refresh_token="rt-value", access_expires_at=time.time() + 60)
    await a.load(session.ticket, issuer="https://idp", client_id="c")
    cached = await a.load(session.ticket, issuer="https://idp", client_id="c")
    assert cached is not None and cached.tokens_elided
    assert (cached.access_token, cached.id_token) == ("", "") and "rt-value" not in repr(cached)
    assert cached.refresh_due(time.time() + 10**6), "a cached copy still knows a refresh token exists"
    full = await a.load(session.ticket, issuer="https://idp", client_id="c", use_cache=False)
    assert full is not None and (full.access_token, full.refresh_token) == (TOKEN, "rt-value")


async def test_the_cache_answers_without_io_only_what_load_would_answer(twin_managers):
    """``cached`` (the gate's path, without a coroutine) gives a session or a refusal only where ``load`` would give
    the same from the cache, and leaves everything else to ``load``: a session not cached, a copy past its
    ``cache_ttl``, one whose idle timer in the store is due a restart, and all of them while the invalidation
    channel is down. Each refusal (another key, provider or client, a lifetime over) is ``load``'s too."""
    a, _ = twin_managers
    session = await create(a)
    where = {"issuer": "https://idp", "client_id": "c"}
    assert a.cached(session.ticket, **where) is UNKNOWN  # not cached yet
    await a.load(session.ticket, **where)  # from the store, and cached
    loaded = await a.load(session.ticket, **where)
    assert loaded is not None and loaded.tokens_elided and a.cached(session.ticket, **where) is loaded
    for elsewhere in ({"issuer": "https://other", "client_id": "c"}, {"issuer": "https://idp", "client_id": "other"}):
        assert a.cached(session.ticket, **elsewhere) is None
        assert await a.load(session.ticket, **elsewhere) is None
    assert a.cached(Ticket(session.id, b"x" * 32), **where) is None
    assert a.cached(session.ticket, **where) is UNKNOWN, "a ticket with another key dropped the copy"
    assert await a.load(session.ticket, **where) is not None

    copy = a._cache[session.id]
    copy.touched_at -= 3600  # the store's idle timer is due a restart: that is load's, with a round trip
    assert a.cached(session.ticket, **where) is UNKNOWN
    await a.store.delete("s:" + session.id)  # behind the manager's back: the restart finds it gone
    assert await a.load(session.ticket, **where) is None
    assert a.cached(session.ticket, **where) is UNKNOWN

    other = await create(a)
    assert await a.load(other.ticket, **where) is not None
    a._cache[other.id].cached_until = 0.0  # past its cache_ttl: load reads the store again
    assert a.cached(other.ticket, **where) is UNKNOWN
    assert await a.load(other.ticket, **where) is not None
    assert a.cached(other.ticket, **where) is not None

    ended = await create(a)
    assert await a.load(ended.ticket, **where) is not None
    a._cache[ended.id].created_at -= SETTINGS.lifetime  # past its absolute lifetime while its copy is cached
    assert a.cached(ended.ticket, **where) is None
    assert await a.load(ended.ticket, **where) is None
    a._cache_live = False  # the channel that invalidates copies is down: the cache serves nothing
    assert a.cached(other.ticket, **where) is UNKNOWN


# --------------------------------------------------------------------------------------------------
# Signed-out ID tokens (``revocations``): in the store for every replica, heard by every process

ISSUER = "https://idp"


def id_token_claims() -> dict[str, Any]:
    """An ID token's claims for a user and provider session of its own (the Redis server is shared)."""
    return {"sub": "subject-" + secrets.token_hex(4), "sid": "sid-" + secrets.token_hex(4), "iat": 1_000_000.0}


def unreadable(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every read of ``store`` fails the test (writes and pub/sub still work)."""

    async def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the store was read: {args}")

    monkeypatch.setattr(store, "get", boom)
    monkeypatch.setattr(store, "index_members", boom)


async def test_a_revocation_reaches_the_other_worker_which_then_judges_without_the_store(twin_managers, monkeypatch):
    a, b = twin_managers
    claims = id_token_claims()
    mark = b.revocations.mark(ISSUER, claims)
    assert await b.revocations.revoked(mark) is False  # asked the store once
    unreadable(b.store, monkeypatch)
    assert await b.revocations.revoked(mark) is False  # then only what b heard
    await a.revocations.revoke(ISSUER, sid=claims["sid"], sub=claims["sub"], issued_before=0, ttl=60)

    async def refused_by_b() -> bool:
        return await b.revocations.revoked(mark)

    await eventually(refused_by_b, what="b to hear of the signed-out session", timeout=5)


async def test_after_the_subscription_drops_every_token_is_asked_about_again(twin_managers):
    """A revocation published while b was not listening is in the store only: b must not trust what it
    checked before."""
    a, b = twin_managers
    claims = id_token_claims()
    mark = b.revocations.mark(ISSUER, claims)
    assert await b.revocations.revoked(mark) is False
    b.revocations.listening(False)  # the subscription went down (messages may be lost from here)
    silent = Revocations(a.store, "nobody-listens-here")  # writes the store, publishes where b does not hear
    await silent.revoke(ISSUER, sid=claims["sid"], sub=None, issued_before=0, ttl=60)
    assert await b.revocations.revoked(mark) is True
    b.revocations.listening(True)  # back up: still from the store until checked under this subscription
    assert await b.revocations.revoked(b.revocations.mark(ISSUER, claims)) is True


async def test_a_user_revocation_ends_the_id_tokens_issued_before_it_only(manager):
    r = manager.revocations
    claims = id_token_claims()
    await r.revoke(ISSUER, sid=None, sub=claims["sub"], issued_before=2_000.0, ttl=60)
    await r.revoke(ISSUER, sid=None, sub=claims["sub"], issued_before=1_000.0, ttl=60)  # an older one, later
    fresh = Revocations(manager.store, "elsewhere")  # another replica: it knows only what the store says
    for iat, refused in ((999.0, True), (2_000.0, True), (2_000.5, False)):
        mark = fresh.mark(ISSUER, {"sub": claims["sub"], "sid": "another-session", "iat": iat})
        assert await fresh.revoked(mark) is refused, iat
    other_user = fresh.mark(ISSUER, {"sub": "someone-else", "iat": 1.0})
    other_issuer = fresh.mark("https://other-idp", {"sub": claims["sub"], "iat": 1.0})
    assert not await fresh.revoked(other_user) and not await fresh.revoked(other_issuer)


async def test_revocations_expire_with_the_tokens_and_name_no_one(redis_clean):
    redis_server = redis_clean
    store = RedisStore(redis_server.url)
    claims = id_token_claims()
    try:
        await Revocations(store, "c").revoke(ISSUER, sid=claims["sid"], sub=None, issued_before=0, ttl=90)
        await Revocations(store, "c").revoke(ISSUER, sid=None, sub=claims["sub"], issued_before=5, ttl=90)
        keys = [k for k in command(redis_server.port, "KEYS", "sso:v:*") if isinstance(k, bytes)]
        assert len(keys) == 2
        for key in keys:
            assert claims["sid"].encode() not in key and claims["sub"].encode() not in key
            assert 80_000 < int(command(redis_server.port, "PTTL", key)) <= 90_000  # type: ignore[arg-type]
    finally:
        await store.close()


def test_the_revocation_of_a_session_lasts_as_long_as_its_id_token_lives():
    assert ttl_for({"iat": 1000, "exp": 4600}, 60) == 3600 + 120
    assert ttl_for({"iat": 1000}, 60) == ID_TOKEN_MAX_LIFETIME + 120  # not known: as long as any may live
    assert ttl_for({"iat": 0, "exp": 10**9}, 0) == ID_TOKEN_MAX_LIFETIME


# --------------------------------------------------------------------------------------------------
# Pending logins bounded per client address


async def test_pending_logins_per_address_are_bounded_and_a_finished_one_frees_its_place(manager):
    bounded = SessionManager(manager.store, dataclasses.replace(SETTINGS, max_pending_logins_per_address=3))
    login = PendingLogin("nonce", "verifier", "/", "https://idp", "c", time.time())
    for i in range(3):
        assert await bounded.save_login(f"state-a{i}", login, address="198.51.100.7")
    assert not await bounded.save_login("state-a3", login, address="198.51.100.7")
    assert await bounded.take_login("state-a3") is None  # refused: nothing was stored
    assert await bounded.save_login("state-b0", login, address="203.0.113.9")  # another address is not counted
    assert await bounded.take_login("state-a0") is not None
    assert await bounded.save_login("state-a4", login, address="198.51.100.7")
    assert not await bounded.save_login("state-a5", login, address="198.51.100.7")


async def test_an_upgrade_is_the_same_session_under_a_new_id_and_the_old_one_is_gone(manager):
    """A step-up: the new sign-in's claims and tokens, the lifetime counted from the first sign-in, a new id and
    key (the cookie that held the old one is worth nothing), and the logout indexes follow it."""
    old = await create(manager, claims={"sub": "subject-7f3a9", "sid": "op-1", "acr": "urn:pwd", "auth_time": 100})
    old.created_at -= 30
    await manager.save(old)
    new = await manager.upgrade(
        old,
        claims={"sub": "subject-7f3a9", "sid": "op-2", "acr": "urn:mfa", "auth_time": 200},
        id_token="new.id.token",
        access_token="new-access",
        refresh_token="new-refresh",
        access_expires_at=None,
    )
    assert (new.id, new.key) != (old.id, old.key)
    assert new.created_at == old.created_at and new.refreshed_at > old.created_at
    assert await manager.load(old.ticket, issuer="https://idp", client_id="c") is None
    loaded = await manager.load(new.ticket, issuer="https://idp", client_id="c", use_cache=False)
    assert loaded is not None
    assert (loaded.acr, loaded.auth_time, loaded.access_token) == ("urn:mfa", 200.0, "new-access")
    # Back-channel logout finds the upgraded session by its new provider session, and not the old one's.
    assert await manager.end_matching("https://idp", sub=None, sid="op-1") == 0
    assert await manager.end_matching("https://idp", sub=None, sid="op-2") == 1
    assert await manager.load(new.ticket, issuer="https://idp", client_id="c") is None
