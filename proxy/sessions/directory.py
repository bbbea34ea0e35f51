"""Who is signed in: each session's sign-in facts and an index by user, for the settings page's Sessions.

A session is sealed under a key only its cookie holds (``model``), so nobody without the cookie, an admin
included, can read it. At sign-in (``SessionManager.create``) the session therefore gets a second, small record
beside it: who (``sub``, username, email), where (issuer, client), when, and the client's address and user
agent at sign-in, sealed under a key derived from the cookie secrets (a purpose of its own), so a store dump
reads nothing of it either. The session is added to the index of its subject, its username and its email
(digests only: a dump does not list who is signed in).

Every key lives at most as long as the session can (``session.lifetime``); index members expire one by one
(``SessionStore.index_add``), and a listing drops what it finds ended, so nothing grows without bound.

Nothing here runs per request. When a session was last used is read from its key's remaining idle time: every
use restarts that timer (GETEX), so the last use was ``idle_timeout - ttl`` ago, as exact as the session cache
lets it be (a cached session restarts its timer at most every minute, ``manager._from_cache``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from proxy.config.model import SessionSettings
from proxy.sessions.model import dumps, seal, unseal
from proxy.sessions.store import SessionStore
from proxy.sessions.writes import Drop, Enter, Leave, Put, Write

_FACTS = "m:"
_USER = "u:"
_AAD = b"sso-sidecar/session-facts|"
_KEY_INFO = b"sso-sidecar/session-facts-key/v1"
_HANDLE_INFO = b"sso-sidecar/session-handle/v1"
USER_AGENT_MAX = 300
LIST_MAX = 200  # sessions one listing shows: more than any person has, fewer than a runaway script makes
# At most this many store calls at once, however many sessions a listing reads: a Redis connection pool keeps
# every connection it ever opened (and refuses past its bound), so calls sent side by side cost a connection
# each for the rest of the process's life. A sign-in's writes and a sign-out's deletions go in one pipeline each.
_STORE_CALLS_AT_ONCE = 8


@dataclass(frozen=True)
class SignIn:
    """What the sign-in request said about the client."""

    address: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class SessionFacts:
    """One session as an admin sees it: never its tokens, never its cookie."""

    session_id: str
    sub: str
    username: str
    email: str
    issuer: str
    client_id: str
    sid: str | None
    created_at: float
    expires_at: float  # the absolute end: sign-in + session.lifetime
    address: str
    user_agent: str
    last_used_at: float | None = None  # filled in by ``find``
    ends_at: float | None = None  # filled in by ``find``: the absolute end, or the idle end if sooner

    def matches(self, name: str) -> bool:
        """``name`` is this session's subject (exactly), username or email (case-insensitively)."""
        folded = name.casefold()
        return name == self.sub or folded in (self.username.casefold(), self.email.casefold())


def _index_key(kind: str, value: str) -> str:
    return f"{_USER}{kind}:" + hashlib.sha256(f"sso-sidecar/user\x00{kind}\x00{value}".encode()).hexdigest()[:40]


def _index_keys(sub: str, username: str, email: str) -> list[str]:
    keys = [_index_key("sub", sub)] if sub else []
    keys += [_index_key("name", v.casefold()) for v in {username, email} if v]
    return keys


def _claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) else ""


class Directory:
    """Records each session's facts at sign-in; finds and forgets them for the settings page."""

    def __init__(self, store: SessionStore, session_prefix: str) -> None:
        self._store = store
        self._session_prefix = session_prefix  # where the sessions themselves are (their ttl: the last use)
        self._keys: list[bytes] = []
        self._handle_key = b""

    def configure(self, settings: SessionSettings) -> None:
        self._settings = settings
        secrets_ = [s.reveal().encode() for s in settings.cookie_secrets] or [secrets.token_bytes(32)]
        self._keys = [hmac.new(s, _KEY_INFO, hashlib.sha256).digest() for s in secrets_]
        self._handle_key = hmac.new(secrets_[0], _HANDLE_INFO, hashlib.sha256).digest()

    def handle(self, session_id: str) -> str:
        """A name for a session in a page or a form that is not its id (the id is half of its cookie)."""
        return hmac.new(self._handle_key, session_id.encode(), hashlib.sha256).hexdigest()[:24]

    def writes(
        self, session_id: str, claims: Mapping[str, Any], issuer: str, client_id: str, created_at: float, client: SignIn
    ) -> list[Write]:
        """A new session's facts and index entries, for the sign-in to write together with the session itself
        (``SessionManager._begin``)."""
        lifetime = self._settings.lifetime
        sid = claims.get("sid")
        facts = SessionFacts(
            session_id=session_id,
            sub=_claim(claims, "sub"),
            username=_claim(claims, "preferred_username"),
            email=_claim(claims, "email"),
            issuer=issuer,
            client_id=client_id,
            sid=sid if isinstance(sid, str) and sid else None,
            created_at=created_at,
            expires_at=created_at + lifetime,
            address=client.address,
            user_agent="".join(c if c.isprintable() else "?" for c in client.user_agent[:USER_AGENT_MAX]),
        )
        sealed = seal(self._keys[0], dumps(asdict(facts)), _AAD + session_id.encode())
        writes: list[Write] = [Put(_FACTS + session_id, sealed, lifetime)]
        writes += [Enter(key, session_id, lifetime) for key in _index_keys(facts.sub, facts.username, facts.email)]
        return writes

    async def find(self, name: str, now: float | None = None) -> list[SessionFacts]:
        """The live sessions whose subject, username or email is ``name``, newest sign-in first."""
        if not name:
            return []
        ids = sorted(
            (await self._store.index_members(_index_key("sub", name)))
            | (await self._store.index_members(_index_key("name", name.casefold())))
        )[: LIST_MAX * 2]
        found: list[SessionFacts | None] = []
        for at in range(0, len(ids), _STORE_CALLS_AT_ONCE):
            batch = ids[at : at + _STORE_CALLS_AT_ONCE]
            found += await asyncio.gather(*(self._live(i, time.time() if now is None else now) for i in batch))
        listed = [f for f in found if f is not None and f.matches(name)]
        listed.sort(key=lambda f: f.created_at, reverse=True)
        return listed[:LIST_MAX]

    async def _live(self, session_id: str, now: float) -> SessionFacts | None:
        raw = await self._store.get(_FACTS + session_id)
        ttl = await self._store.ttl(self._session_prefix + session_id)
        facts = self._open(session_id, raw) if raw is not None else None
        if facts is None or ttl is None:
            # The session ended (signed out, revoked, idle, replaced at a new sign-in): its traces go too.
            await self.forget(session_id, facts)
            return None
        idle = self._settings.idle_timeout
        last_used = min(now, max(facts.created_at, now - max(0.0, idle - ttl)))
        return replace(facts, last_used_at=last_used, ends_at=min(facts.expires_at, now + ttl))

    def _open(self, session_id: str, raw: bytes) -> SessionFacts | None:
        aad = _AAD + session_id.encode()
        plain = next((p for key in self._keys if (p := unseal(key, raw, aad)) is not None), None)
        if plain is None:
            return None
        try:
            data = json.loads(plain)
            return SessionFacts(**{k: v for k, v in data.items() if k in SessionFacts.__dataclass_fields__})
        except (ValueError, TypeError):
            return None

    async def forget(self, session_id: str, facts: SessionFacts | None) -> None:
        """Drop a session's facts and index entries (the session itself is the manager's)."""
        await self._store.write(self.forgetting(session_id, facts))

    def forgetting(self, session_id: str, facts: SessionFacts | None) -> list[Write]:
        """What ``forget`` deletes, for a caller to write together with deletions of its own."""
        keys: Iterable[str] = _index_keys(facts.sub, facts.username, facts.email) if facts is not None else ()
        return _deletions(session_id, keys)

    def forgetting_claims(self, session_id: str, claims: Mapping[str, Any]) -> list[Write]:
        """At sign-out: the same, from the session's own claims."""
        keys = _index_keys(_claim(claims, "sub"), _claim(claims, "preferred_username"), _claim(claims, "email"))
        return _deletions(session_id, keys)


def _deletions(session_id: str, index_keys: Iterable[str]) -> list[Write]:
    return [Drop(_FACTS + session_id), *(Leave(key, session_id) for key in index_keys)]
