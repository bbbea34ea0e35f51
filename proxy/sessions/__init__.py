"""Server-side sessions and pending logins, encrypted at rest.

A session is stored under its id, sealed with AES-256-GCM under a key that only the user's cookie ticket
holds (``proxy.cookies.Ticket``). The store, and anyone who dumps it, sees ciphertext only.
Pending logins (state -> nonce, PKCE verifier, return URL) are stored the same way and taken exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.cookies import Ticket
from proxy.errors import StoreUnavailable
from proxy.sessions.memory import MemoryStore
from proxy.sessions.store import SessionStore
from proxy.settings import SessionSettings

__all__ = ["MemoryStore", "PendingLogin", "Session", "SessionManager", "SessionStore", "open_store"]

log = logging.getLogger("sso_sidecar.sessions")

_SESSION = "s:"
_LOGIN = "l:"
_REFRESH_LOCK = "r:"
_INDEX = "i:"
_LOGOUT_JTI = "j:"
# Pending logins carry no tokens, but the PKCE verifier and nonce must not be readable from a store dump.
_LOGIN_AAD = b"pending-login"


# Claims that only served to validate the ID token they came in: cached copies leave them out.
_TOKEN_ONLY_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
# Claims whose values are the same for every session (the provider, our client): one shared copy.
_SHARED_VALUE_CLAIMS = frozenset({"iss", "aud", "azp"})
_SHARED_MAX = 1024
_shared_strings: dict[str, str] = {}
_shapes: dict[tuple[str, ...], dict[str, int]] = {}
_NO_EXTRA: dict[str, Any] = {}  # shared by cached copies: nothing ever writes to ``extra`` in place


def _share(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    shared = _shared_strings.get(value)
    if shared is not None:
        return shared
    if len(_shared_strings) < _SHARED_MAX:
        _shared_strings[value] = value
    return value


class CompactClaims(Mapping[str, Any]):
    """A cached session's claims in half a dict's memory or less: the values in a tuple, the names in
    an index shared by every session whose claims have the same names (one provider sends the same ones).
    """

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: tuple[Any, ...]) -> None:
        self._index = index
        self._values = values

    @staticmethod
    def of(claims: Mapping[str, Any]) -> Mapping[str, Any]:
        names = tuple(sys.intern(k) for k in claims if k not in _TOKEN_ONLY_CLAIMS)
        values = tuple(_share(claims[k]) if k in _SHARED_VALUE_CLAIMS else claims[k] for k in names)
        index = _shapes.get(names)
        if index is None:
            if len(_shapes) >= _SHARED_MAX:
                return dict(zip(names, values, strict=True))  # an endless variety of claim names: plain dicts
            index = _shapes[names] = {name: i for i, name in enumerate(names)}
        return CompactClaims(index, values)

    def __getitem__(self, name: str) -> Any:
        return self._values[self._index[name]]

    def get(self, name: str, default: Any = None) -> Any:
        i = self._index.get(name)
        return default if i is None else self._values[i]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"CompactClaims({dict(self)!r})"


@dataclass(slots=True)
class Session:
    id: str
    key: bytes
    claims: Mapping[str, Any]
    id_token: str
    access_token: str
    refresh_token: str | None
    access_expires_at: float | None
    created_at: float
    issuer: str
    client_id: str
    refreshed_at: float = 0.0  # when the current access token was obtained (login or refresh)
    extra: dict[str, Any] = field(default_factory=dict)
    # True for the copies kept in the in-process cache: they hold claims but no tokens (memory), and
    # whoever needs a token (refresh, sign-out's id_token_hint) reads the session from the store.
    tokens_elided: bool = False
    # The cache's bookkeeping for such copies (``time.monotonic()``): until when it may be served, and when
    # the store's idle timer was last restarted. Kept here rather than in a tuple beside it: less memory.
    cached_until: float = 0.0
    touched_at: float = 0.0

    def without_tokens(self) -> Session:
        """The copy the in-process cache keeps: no tokens, and as little memory as the claims allow."""
        return dataclasses.replace(
            self,
            claims=CompactClaims.of(self.claims),
            id_token="",
            access_token="",
            refresh_token=_ELIDED if self.refresh_token else None,
            issuer=_share(self.issuer),
            client_id=_share(self.client_id),
            extra=_NO_EXTRA,
            tokens_elided=True,
        )

    @property
    def ticket(self) -> Ticket:
        return Ticket(self.id, self.key)

    @property
    def subject(self) -> str:
        return str(self.claims.get("sub", ""))

    @property
    def provider_session(self) -> str | None:
        """The provider's session id (``sid``), which back-channel logout names."""
        sid = self.claims.get("sid")
        return sid if isinstance(sid, str) and sid else None

    def refresh_due(self, now: float) -> bool:
        """Near the access token's expiry, with a refresh token to renew it.

        Without a refresh token nothing is due: access-token expiry alone never ends a session.
        """
        if not self.refresh_token or self.access_expires_at is None:
            return False
        lifetime = self.access_expires_at - (self.refreshed_at or self.created_at)
        margin = min(60.0, max(1.0, lifetime / 4))
        return now >= self.access_expires_at - margin

    def to_record(self) -> dict[str, Any]:
        return {
            "c": dict(self.claims),
            "it": self.id_token,
            "at": self.access_token,
            "rt": self.refresh_token,
            "ae": self.access_expires_at,
            "ca": self.created_at,
            "is": self.issuer,
            "ci": self.client_id,
            "ra": self.refreshed_at,
            "x": self.extra,
        }

    @classmethod
    def from_record(cls, ticket: Ticket, record: dict[str, Any]) -> Session:
        return cls(
            id=ticket.session_id,
            key=ticket.key,
            claims=record["c"],
            id_token=record["it"],
            access_token=record["at"],
            refresh_token=record.get("rt"),
            access_expires_at=record.get("ae"),
            created_at=record["ca"],
            issuer=record["is"],
            client_id=record["ci"],
            refreshed_at=record.get("ra") or record["ca"],
            extra=record.get("x") or {},
        )


@dataclass(frozen=True, slots=True)
class PendingLogin:
    nonce: str
    code_verifier: str
    return_to: str
    issuer: str
    client_id: str
    created_at: float


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except (InvalidTag, ValueError):
        return None


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


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


_INVALIDATE = "sso:invalidate"
_ELIDED = "(elided)"  # stands for a refresh token in cached copies, so refresh_due() still works
_CACHE_MAX = 50_000


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
                    else:
                        self._cache.pop(message.decode(), None)
            except StoreUnavailable:
                pass
            except Exception:  # keep listening whatever happens; never serve a cache we cannot invalidate
                log.exception("session invalidation listener failed")
            self._cache_live = False
            self._cache.clear()
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
    ) -> Session:
        session = Session(
            id=secrets.token_urlsafe(16),
            key=secrets.token_bytes(32),
            claims=claims,
            id_token=id_token,
            access_token=access_token,
            refresh_token=refresh_token,
            access_expires_at=access_expires_at,
            created_at=time.time(),
            issuer=issuer,
            client_id=client_id,
        )
        session.refreshed_at = session.created_at
        await self.save(session)
        # Back-channel logout names a user (sub) or a provider session (sid), never our session id.
        for key in _index_keys(issuer, session.subject, session.provider_session):
            await self.store.index_add(key, session.id, self.settings.lifetime)
        return session

    async def save(self, session: Session) -> None:
        ttl = min(self.settings.idle_timeout, self._remaining(session))
        if ttl <= 0:
            return
        sealed = _seal(session.key, _dumps(session.to_record()), session.id.encode())
        await self.store.set(_SESSION + session.id, sealed, ttl)

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
        plaintext = _open(ticket.key, sealed, ticket.session_id.encode())
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
        expired = session.cached_until <= now
        if expired or not hmac.compare_digest(session.key, ticket.key):
            self._cache.pop(ticket.session_id, None)
            return await self.load(ticket, issuer=issuer, client_id=client_id) if expired else None
        if self._remaining(session) <= 0 or (session.issuer, session.client_id) != (issuer, client_id):
            return None
        # The idle timer lives in the store; restart it now and then rather than on every request.
        if now - session.touched_at > min(60.0, self.settings.idle_timeout / 4):
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
        """Sign-out: the session and its index entries."""
        await self.delete(session.id)
        for key in _index_keys(session.issuer, session.subject, session.provider_session):
            await self.store.index_remove(key, session.id)

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

    async def save_login(self, state: str, login: PendingLogin) -> None:
        record = {
            "n": login.nonce,
            "v": login.code_verifier,
            "r": login.return_to,
            "i": login.issuer,
            "c": login.client_id,
            "t": login.created_at,
        }
        sealed = _seal(self._login_keys[0], _dumps(record), _LOGIN_AAD + state.encode())
        await self.store.set(_LOGIN + state, sealed, self.settings.login_timeout)

    async def take_login(self, state: str) -> PendingLogin | None:
        """The pending login for ``state``, removed so that it can never be used again."""
        sealed = await self.store.take(_LOGIN + state)
        if sealed is None:
            return None
        aad = _LOGIN_AAD + state.encode()
        plaintext = next((p for key in self._login_keys if (p := _open(key, sealed, aad)) is not None), None)
        if plaintext is None:
            return None
        r = json.loads(plaintext)
        return PendingLogin(r["n"], r["v"], r["r"], r["i"], r["c"], r["t"])


def open_store(settings: SessionSettings) -> SessionStore:
    if settings.store == "redis":
        from proxy.sessions.redis import RedisStore

        return RedisStore(settings.redis)  # redis_url is only for display: its password is masked
    return MemoryStore()
