"""Signed-out ID tokens: which provider sessions (``sid``) and users (``sub``, up to a time) ended here.

An ID token is shown to the browser (and its history, and the provider's logs) by sign-out's
``id_token_hint``. Where ID tokens are bearer credentials (``sso.accept_id_tokens``), one whose session was
signed out, or ended by back-channel logout, must stop working on every replica for the rest of its life.

- **The record** lives in the session store, so every replica and a replica started later read it: a
  provider session as ``v:sid:<digest>``, a user as ``v:sub:<digest>``, an index whose members are the times
  before which that user's ID tokens were issued (a member per sign-out, each expiring on its own, so two
  sign-outs at once never overwrite each other). Each lives as long as the ID tokens it refuses can
  (``ttl_for``). Digests only: a store dump does not list who signed out.
- **What each process heard.** Every revocation is also published on the session invalidation channel;
  each process keeps what it heard (``_sids``, ``_subs``). A verified token checked against the store once
  is judged by what the process heard afterwards, without a store round trip, as long as the subscription
  stays up: ``generation`` changes whenever it starts or drops, and a token checked under another
  generation is asked about again. Without a live subscription every check asks the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from proxy.sessions.store import SessionStore

log = logging.getLogger("sso_sidecar.sessions")

# ID tokens that live longer are not bearer credentials: a sign-out must be remembered for a token's whole
# life, and back-channel logout does not say how long that is (providers issue 5 minutes to 10 hours).
ID_TOKEN_MAX_LIFETIME = 24 * 3600.0
_SID = "v:sid:"
_SUB = "v:sub:"
# Revocation messages share the invalidation channel with session ids, which never start with this.
PREFIX = b"~"
_HEARD_MAX = 100_000  # revocations a process keeps in memory (about 15 MB at most)


def _digest(kind: str, issuer: str, value: str) -> str:
    return hashlib.sha256("\x00".join(("sso-sidecar/revoked", kind, issuer, value)).encode()).hexdigest()[:40]


class Mark:
    """What an accepted ID token is judged by, computed once when it is verified (kept in the bearer cache)."""

    __slots__ = ("generation", "iat", "sid_key", "sub_key")

    def __init__(self, sid_key: str | None, sub_key: str, iat: float) -> None:
        self.sid_key = sid_key
        self.sub_key = sub_key
        self.iat = iat
        self.generation = -1  # the store has not been asked yet


def ttl_for(claims: Mapping[str, Any], skew: float) -> float:
    """How long a revocation of this ID token's session must last: the token's lifetime (``exp`` - ``iat``),
    which also covers every earlier ID token of the same session (refreshes), plus the clock skew."""
    exp, iat = claims.get("exp"), claims.get("iat")
    lifetime = ID_TOKEN_MAX_LIFETIME
    if isinstance(exp, int | float) and isinstance(iat, int | float) and not isinstance(exp, bool):
        lifetime = min(max(float(exp) - float(iat), 0.0), ID_TOKEN_MAX_LIFETIME)
    return lifetime + 2 * skew


class Revocations:
    def __init__(self, store: SessionStore, channel: str) -> None:
        self._store = store
        self._channel = channel
        self._sids: dict[str, float] = {}  # key -> until (monotonic)
        self._subs: dict[str, tuple[float, float]] = {}  # key -> (issued before, until)
        self._live = False
        self.generation = 0

    @staticmethod
    def mark(issuer: str, claims: Mapping[str, Any]) -> Mark:
        sid = claims.get("sid")
        sid_key = _digest("sid", issuer, sid) if isinstance(sid, str) and sid else None
        return Mark(sid_key, _digest("sub", issuer, str(claims.get("sub", ""))), float(claims.get("iat", 0)))

    async def revoke(self, issuer: str, *, sid: str | None, sub: str | None, issued_before: float, ttl: float) -> None:
        """From now on refuse the ID tokens of provider session ``sid``; without one, every ID token of user
        ``sub`` issued up to ``issued_before`` (the provider's clock)."""
        if sid:
            key = _digest("sid", issuer, sid)
            await self._store.set(_SID + key, b"1", ttl)
            message = f"s {key} {ttl:.0f}"
        elif sub:
            key = _digest("sub", issuer, sub)
            await self._store.index_add(_SUB + key, f"{issued_before:.3f}", ttl)
            message = f"u {key} {ttl:.0f} {issued_before:.3f}"
        else:
            return
        self.heard(PREFIX + message.encode())
        await self._store.publish(self._channel, PREFIX + message.encode())

    async def revoked(self, mark: Mark) -> bool:
        """True when the token's session or user was signed out. Asks the store only when this process
        cannot know (its subscription is down, or went down since the token was last asked about)."""
        if self._live and mark.generation == self.generation:
            return self._heard_of(mark)
        generation, live = self.generation, self._live
        # Both at once: one round trip of waiting, on a cache miss (or a subscription that was down) only.
        before, sid_ended = await asyncio.gather(
            self._store.index_members(_SUB + mark.sub_key), self._sid_ended(mark.sid_key)
        )
        if sid_ended or any(mark.iat <= float(b) for b in before):
            return True
        mark.generation = generation if live else -1
        return self._heard_of(mark)  # a revocation heard while the store answered

    async def _sid_ended(self, key: str | None) -> bool:
        return key is not None and await self._store.get(_SID + key) is not None

    def _heard_of(self, mark: Mark) -> bool:
        now = time.monotonic()
        if mark.sid_key is not None and self._sids.get(mark.sid_key, 0.0) > now:
            return True
        sub = self._subs.get(mark.sub_key)
        return sub is not None and sub[1] > now and mark.iat <= sub[0]

    # -- the subscription (``SessionManager`` runs it) -------------------------------------------------

    def listening(self, live: bool) -> None:
        """The invalidation subscription came up or went down: what was checked before may have missed a
        message, so every token is asked about again."""
        self._live = live
        self.generation += 1

    def heard(self, message: bytes) -> None:
        try:
            kind, key, ttl, *rest = message[len(PREFIX) :].decode("ascii").split(" ")
            until = time.monotonic() + float(ttl)
            if kind == "s":
                self._sids[key] = max(until, self._sids.get(key, 0.0))
            elif kind == "u":
                old_before, old_until = self._subs.get(key, (0.0, 0.0))
                self._subs[key] = (max(float(rest[0]), old_before), max(until, old_until))
        except (ValueError, IndexError, UnicodeDecodeError):
            log.warning("ignoring a malformed revocation message")
            return
        if len(self._sids) + len(self._subs) > _HEARD_MAX:
            self._forget_expired()

    def _forget_expired(self) -> None:
        now = time.monotonic()
        self._sids = {k: v for k, v in self._sids.items() if v > now}
        self._subs = {k: v for k, v in self._subs.items() if v[1] > now}
        if len(self._sids) + len(self._subs) > _HEARD_MAX:
            # More than memory should hold: forget it all, and ask the store about every token again.
            self._sids.clear()
            self._subs.clear()
            self.generation += 1
