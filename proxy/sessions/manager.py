"""The session manager: creates, loads and ends sessions, and stores and takes pending logins.

What it stores is sealed (``proxy.sessions.model``) under a key layout of its own: sessions by id,
pending logins by state (taken exactly once, and counted per client address), refresh locks, back-channel
logout indexes and replay guards. A cache of recently used sessions, without their tokens, spares the store
a round trip per request; its pub/sub invalidation also carries signed-out ID tokens (``revocations``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any, Final

from proxy.config.model import SessionSettings
from proxy.errors import StoreUnavailable
from proxy.sessions import revocations
from proxy.sessions.directory import Directory, SessionFacts, SignIn
from proxy.sessions.model import PendingLogin, Session, Ticket, dumps, seal, unseal
from proxy.sessions.revocations import Revocations
from proxy.sessions.store import SessionStore
from proxy.sessions.writes import Drop, Enter, Leave, Put, Write

log = logging.getLogger("sso_sidecar.sessions")

_SESSION = "s:"
_LOGIN = "l:"
_REFRESH_LOCK = "r:"
_INDEX = "i:"
_LOGOUT_JTI = "j:"
_PENDING_BY_ADDRESS = "a:"
# Pending logins carry no tokens, but the PKCE verifier and nonce must not be readable from a store dump.
_LOGIN_AAD = b"pending-login"
_INVALIDATE = "sso:invalidate"
_CACHE_MAX = 50_000
# A cached session restarts its idle timer in the store at most this often (or a quarter of idle_timeout).
TOUCH_EVERY = 60.0


class Unknown(enum.Enum):
    """``SessionManager.cached``'s answer when only the store can tell."""

    UNKNOWN = "unknown"


UNKNOWN: Final = Unknown.UNKNOWN


def _digest(*parts: str) -> str:
    # Index keys hold no identifier in clear: a store dump does not list who is signed in.
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:40]


def _index_key(issuer: str, kind: str, value: str) -> str:
    return f"{_INDEX}{kind}:{_digest(issuer, value)}"


def _index_keys(issuer: str, sub: str, sid: str | None) -> list[str]:
    keys = [_index_key(issuer, "sub", sub)]
    if sid:
        keys.append(_index_key(issuer, "sid", sid))
    return keys


class SessionManager:
    """Creates, loads and ends sessions; stores and takes pending logins.

    With ``cache_ttl`` > 0 it keeps recently used sessions decoded in memory for that long, so a busy
    session costs no store round trip per request. Every change to a session (sign-out, back-channel
    logout, refresh) is published on the store, and every worker and replica drops its copy at once; the
    cache is used only while that subscription is live.
    """

    def __init__(self, store: SessionStore, settings: SessionSettings) -> None:
        self.store = store
        self._cache: dict[str, Session] = {}  # id -> a copy without tokens
        self._cache_live = False
        self._next_sweep = 0.0
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        # Signed-out ID tokens, told to every process over the same subscription as ended sessions.
        self.revocations = Revocations(store, _INVALIDATE)
        # Each session's sign-in facts and the index by user, for the settings page (never per request).
        self.directory = Directory(store, _SESSION)
        self.configure(settings)

    async def start(self) -> None:
        if self.settings.cache_ttl > 0 and self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        task, self._listener = self._listener, None
        if task is None:
            return
        self._stopping = True
        # redis-py can turn a cancellation into a connection error (which the listener survives by
        # design), so ask again until the task is gone: shutdown must never hang here.
        for _ in range(40):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return
        log.error("session invalidation listener did not stop")

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                async for message in self.store.subscribe(_INVALIDATE):
                    if not message:
                        self._cache_live = True
                        self.revocations.listening(True)
                    elif message.startswith(revocations.PREFIX):
                        self.revocations.heard(message)
                    else:
                        self._cache.pop(message.decode(), None)
            except StoreUnavailable:
                pass
            except Exception:  # keep listening whatever happens; never serve a cache we cannot invalidate
                log.exception("session invalidation listener failed")
            self._cache_live = False
            self._cache.clear()
            self.revocations.listening(False)
            if self._stopping:
                return
            await asyncio.sleep(1.0)

    async def _forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)
        if self._listener is not None:
            await self.store.publish(_INVALIDATE, session_id.encode())

    def configure(self, settings: SessionSettings) -> None:
        """Apply reloaded timeouts and secrets; the store itself cannot change without a restart."""
        self.settings = settings
        # A cached copy's idle timer in the store is due a restart after this long (``_touch_due``).
        self._touch_after = min(TOUCH_EVERY, settings.idle_timeout / 4)
        self.directory.configure(settings)
        # Derived from the cookie secrets (newest first) so every replica can open a pending login
        # another one stored, also while a secret rotation rolls out.
        self._login_keys = [
            hmac.new(s.reveal().encode(), b"sso-sidecar/pending-login-key/v1", hashlib.sha256).digest()
            for s in settings.cookie_secrets
        ] or [secrets.token_bytes(32)]

    # -- sessions -----------------------------------------------------------------------------------

    async def create(
        self,
        *,
        claims: dict[str, Any],
        id_token: str,
        access_token: str,
        refresh_token: str | None,
        access_expires_at: float | None,
        issuer: str,
        client_id: str,
        client: SignIn | None = None,
    ) -> Session:
        """A new session; ``client``: what the sign-in request said about the browser (for the settings page's
        Sessions), recorded beside it."""
        now = time.time()
        session = Session(
            id=secrets.token_urlsafe(16),
            key=secrets.token_bytes(32),
            claims=claims,
            id_token=id_token,
            access_token=access_token,
            refresh_token=refresh_token,
            access_expires_at=access_expires_at,
            created_at=now,
            issuer=issuer,
            client_id=client_id,
            refreshed_at=now,
        )
        await self._begin(session, client)
        return session

    async def upgrade(
        self,
        old: Session,
        *,
        claims: dict[str, Any],
        id_token: str,
        access_token: str,
        refresh_token: str | None,
        access_expires_at: float | None,
        client: SignIn | None = None,
    ) -> Session:
        """A new sign-in of the user of ``old`` (a step-up), kept as that session: the sign-in's claims and tokens,
        and the lifetime running on from when ``old`` began. Its id and key are new, as after any sign-in, and
        ``old`` ends: a cookie that held it is worth nothing now. The settings page's Sessions list it under its
        new id, with the browser of the step-up's sign-in (``client``)."""
        session = Session(
            id=secrets.token_urlsafe(16),
            key=secrets.token_bytes(32),
            claims=claims,
            id_token=id_token,
            access_token=access_token,
            refresh_token=refresh_token,
            access_expires_at=access_expires_at,
            created_at=old.created_at,
            issuer=old.issuer,
            client_id=old.client_id,
            refreshed_at=time.time(),
        )
        await self._begin(session, client)
        await self.end(old)
        return session

    async def _begin(self, session: Session, client: SignIn | None) -> None:
        """Store a new session (``create``'s, ``upgrade``'s) with its logout index entries, and its sign-in facts
        for the settings page's Sessions: every write in one round trip (``SessionStore.write``) on one connection.
        Never side by side: a Redis connection pool keeps every connection it ever opened, so writes sent beside
        each other would leave it with several connections per concurrent sign-in for the rest of the process's
        life (tests/component/test_store_connections.py)."""
        put = self._put(session)
        writes: list[Write] = [put] if put is not None else []
        # Back-channel logout names a user (sub) or a provider session (sid), never our session id.
        writes += [
            Enter(key, session.id, self.settings.lifetime)
            for key in _index_keys(session.issuer, session.subject, session.provider_session)
        ]
        writes += self.directory.writes(
            session.id, session.claims, session.issuer, session.client_id, session.created_at, client or SignIn()
        )
        await self.store.write(writes)

    def _put(self, session: Session) -> Put | None:
        """The sealed session's write, with the idle timeout as its TTL (or what is left of its lifetime, when
        less); None when its lifetime is over."""
        ttl = min(self.settings.idle_timeout, self._remaining(session))
        if ttl <= 0:
            return None
        return Put(_SESSION + session.id, seal(session.key, dumps(session.to_record()), session.id.encode()), ttl)

    async def save(self, session: Session) -> None:
        put = self._put(session)
        if put is not None:
            await self.store.set(put.key, put.value, put.ttl)

    async def load(self, ticket: Ticket, *, issuer: str, client_id: str, use_cache: bool = True) -> Session | None:
        """The live session for a ticket, or None (unknown, expired, or from another provider/client).

        Reading it also restarts its idle timer. From the cache it comes without tokens
        (``tokens_elided``); ``use_cache=False`` reads the complete session from the store.
        """
        if self._cache_live and use_cache:
            cached = self._cache.get(ticket.session_id)
            if cached is not None:
                return await self._from_cache(ticket, cached, issuer=issuer, client_id=client_id)
        sealed = await self.store.get(_SESSION + ticket.session_id, touch=self.settings.idle_timeout)
        if sealed is None:
            return None
        plaintext = unseal(ticket.key, sealed, ticket.session_id.encode())
        if plaintext is None:
            return None
        session = Session.from_record(ticket, json.loads(plaintext))
        if self._remaining(session) <= 0:
            await self.store.delete(_SESSION + session.id)
            return None
        if (session.issuer, session.client_id) != (issuer, client_id):
            # Sessions are only trusted under the provider and client that created them.
            return None
        if self._cache_live:
            self._remember(session)
        return session

    def cached(self, ticket: Ticket, *, issuer: str, client_id: str) -> Session | Unknown | None:
        """``load`` for a session the cache settles without I/O (nearly every request of a signed-in user, on a
        coroutine less): the session, or None when the cache refuses it; ``UNKNOWN`` when ``load`` must be
        asked (not cached, its copy expired, or its idle timer in the store is due a restart). Every check is
        ``_from_cache``'s, and ``load`` makes them again: the answer is the one ``load`` would give."""
        if not self._cache_live:
            return UNKNOWN
        session = self._cache.get(ticket.session_id)
        if session is None:
            return UNKNOWN
        now = time.monotonic()
        if session.cached_until <= now or self._touch_due(session, now):
            return UNKNOWN
        return None if self._refuses(ticket, session, issuer, client_id) else session

    def _touch_due(self, session: Session, now: float) -> bool:
        # The idle timer lives in the store; a cached copy restarts it now and then rather than on every request.
        return now - session.touched_at > self._touch_after

    def _refuses(self, ticket: Ticket, session: Session, issuer: str, client_id: str) -> bool:
        """True when a live cached copy must not answer ``ticket``: another key (the copy goes, so that a guessed
        id never meets it again), past its lifetime, or from another provider or client."""
        if not hmac.compare_digest(session.key, ticket.key):
            self._cache.pop(ticket.session_id, None)
            return True
        return self._remaining(session) <= 0 or (session.issuer, session.client_id) != (issuer, client_id)

    def _remember(self, session: Session) -> None:
        now = time.monotonic()
        if now >= self._next_sweep or len(self._cache) >= _CACHE_MAX:
            # Expired copies go, so the cache holds only sessions used within the last cache_ttl.
            self._cache = {k: v for k, v in self._cache.items() if v.cached_until > now}
            self._next_sweep = now + self.settings.cache_ttl
            if len(self._cache) >= _CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))
        copy = session.without_tokens()
        copy.cached_until = now + self.settings.cache_ttl
        copy.touched_at = now
        self._cache[session.id] = copy

    async def _from_cache(self, ticket: Ticket, session: Session, *, issuer: str, client_id: str) -> Session | None:
        now = time.monotonic()
        if session.cached_until <= now:
            self._cache.pop(ticket.session_id, None)
            return await self.load(ticket, issuer=issuer, client_id=client_id)
        if self._refuses(ticket, session, issuer, client_id):
            return None
        if self._touch_due(session, now):
            if await self.store.get(_SESSION + session.id, touch=self.settings.idle_timeout) is None:
                self._cache.pop(session.id, None)
                return None
            session.touched_at = now
        return session

    async def update(self, session: Session) -> None:
        """Save a changed session (new tokens, claims) and make every worker read it afresh."""
        await self.save(session)
        await self._forget(session.id)

    async def delete(self, session_id: str) -> bool:
        deleted = await self.store.delete(_SESSION + session_id)
        await self._forget(session_id)
        return deleted

    async def end(self, session: Session) -> None:
        """Sign-out: the session, its index entries and its record for the settings page, in one round trip
        (``SessionStore.write``); then every worker drops its copy."""
        writes: list[Write] = [Drop(_SESSION + session.id)]
        writes += [
            Leave(key, session.id) for key in _index_keys(session.issuer, session.subject, session.provider_session)
        ]
        writes += self.directory.forgetting_claims(session.id, session.claims)
        await self.store.write(writes)
        await self._forget(session.id)

    async def revoke(self, facts: SessionFacts) -> bool:
        """An admin ends someone's session (the settings page's Sessions): gone from the store, and from every
        worker's and replica's cache at once (the invalidation channel), with its index entries. True when it
        was still live."""
        ended = await self.delete(facts.session_id)
        writes: list[Write] = [Leave(key, facts.session_id) for key in _index_keys(facts.issuer, facts.sub, facts.sid)]
        writes += self.directory.forgetting(facts.session_id, facts)
        await self.store.write(writes)
        return ended

    async def end_matching(self, issuer: str, *, sub: str | None, sid: str | None) -> int:
        """Back-channel logout (section 2.7): with ``sid``, the sessions of that provider session; with
        only ``sub``, every session of that user. Returns how many were live."""
        key = _index_key(issuer, "sid", sid) if sid else _index_key(issuer, "sub", sub or "")
        ended = 0
        for session_id in await self.store.index_members(key):
            ended += await self.delete(session_id)
        await self.store.delete(key)
        return ended

    async def first_use_of_logout_token(self, issuer: str, jti: str, ttl: float) -> bool:
        """Replay guard for logout tokens (section 2.6 step 7): True only the first time."""
        return await self.store.add(_LOGOUT_JTI + _digest(issuer, jti), b"1", ttl)

    async def lock_refresh(self, session_id: str, ttl: float) -> bytes | None:
        """One refresh at a time per session across every worker and replica: providers that rotate
        refresh tokens end the grant when the same refresh token is used twice."""
        token = secrets.token_bytes(16)
        return token if await self.store.add(_REFRESH_LOCK + session_id, token, ttl) else None

    async def unlock_refresh(self, session_id: str, token: bytes) -> None:
        await self.store.delete_if(_REFRESH_LOCK + session_id, token)

    def _remaining(self, session: Session) -> float:
        return session.created_at + self.settings.lifetime - time.time()

    # -- pending logins -------------------------------------------------------------------------------

    async def save_login(self, state: str, login: PendingLogin, *, address: str | None = None) -> bool:
        """Store a pending login until ``login_timeout``. With the client's ``address``
        (``clientaddress.address_group``) at most ``max_pending_logins_per_address`` are open per address at a
        time, so anonymous requests cannot fill the store: False, and nothing stored, past that bound."""
        if address is not None:
            key, member = _PENDING_BY_ADDRESS + _digest(address), _digest(state)
            # Counted atomically with the add: concurrent starts cannot all slip under the bound.
            if await self.store.index_add(key, member, self.settings.login_timeout) > (
                self.settings.max_pending_logins_per_address
            ):
                await self.store.index_remove(key, member)
                return False
            login = dataclasses.replace(login, address_key=key)
        sealed = seal(self._login_keys[0], dumps(login.to_record()), _LOGIN_AAD + state.encode())
        await self.store.set(_LOGIN + state, sealed, self.settings.login_timeout)
        return True

    async def take_login(self, state: str) -> PendingLogin | None:
        """The pending login for ``state``, removed so that it can never be used again."""
        sealed = await self.store.take(_LOGIN + state)
        if sealed is None:
            return None
        aad = _LOGIN_AAD + state.encode()
        plaintext = next((p for key in self._login_keys if (p := unseal(key, sealed, aad)) is not None), None)
        if plaintext is None:
            return None
        login = PendingLogin.from_record(json.loads(plaintext))
        if login.address_key is not None:  # finished: no longer counts against its address's bound
            await self.store.index_remove(login.address_key, _digest(state))
        return login
