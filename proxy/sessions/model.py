"""The session record and the pending login, and how both are sealed at rest.

A session is sealed with AES-256-GCM under a key that only the user's cookie ticket holds (``Ticket``, which
``proxy.auth.cookies`` signs into the session cookie): the store, and anyone who dumps it, sees ciphertext only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Claims that only served to validate the ID token they came in: cached copies leave them out.
_TOKEN_ONLY_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
# Claims whose values are the same for every session (the provider, our client): one shared copy.
_SHARED_VALUE_CLAIMS = frozenset({"iss", "aud", "azp"})
_SHARED_MAX = 1024
_shared_strings: dict[str, str] = {}
_shapes: dict[tuple[str, ...], dict[str, int]] = {}
_ELIDED = "(elided)"  # stands for a refresh token in cached copies, so refresh_due() still works
# The claims that describe the sign-in itself (OIDC Core 2): when and how the user authenticated. A session keeps
# them from the ID token of its sign-in; a refresh is no new sign-in, so they are kept through it (Core 12.2).
SIGN_IN_CLAIMS = ("auth_time", "acr", "amr")


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


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the session cookie carries: where the session is, and the key that decrypts it.

    Nothing else: no claims, no tokens. A Redis dump without the cookie reveals nothing, and the cookie
    without Redis is useless.
    """

    session_id: str
    key: bytes


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
            tokens_elided=True,
        )

    @property
    def ticket(self) -> Ticket:
        return Ticket(self.id, self.key)

    @property
    def subject(self) -> str:
        return str(self.claims.get("sub", ""))

    @property
    def auth_time(self) -> float | None:
        """When the user last authenticated at the provider (the ID token's ``auth_time``), if it said."""
        value = self.claims.get("auth_time")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def acr(self) -> str | None:
        """How strongly the user authenticated (the ID token's ``acr``), if the provider said."""
        value = self.claims.get("acr")
        return value if isinstance(value, str) else None

    @property
    def provider_session(self) -> str | None:
        """The provider's session id (``sid``), which back-channel logout names."""
        sid = self.claims.get("sid")
        return sid if isinstance(sid, str) and sid else None

    def refresh_due(self, now: float, *, id_token: bool = False) -> bool:
        """Near the access token's expiry (with ``id_token``, also the ID token's), with a refresh token to renew it.

        Without a refresh token nothing is due: access-token expiry alone never ends a session (unless the
        console is given the tokens: ``tokens_expired``).
        """
        if not self.refresh_token:
            return False
        expires = self.access_expires_at
        if expires is not None:
            lifetime = expires - (self.refreshed_at or self.created_at)
            if now >= expires - min(60.0, max(1.0, lifetime / 4)):  # _refresh_margin, inline: every request asks
                return True
        if id_token:
            expires, issued = _number(self.claims.get("exp")), _number(self.claims.get("iat"))
            if expires is not None and now >= expires - _refresh_margin(expires - (issued or expires)):
                return True
        return False

    def tokens_expired(self, now: float, *, access_token: bool, id_token: bool) -> bool:
        """Whether a token the console is given (``pass_tokens``) has expired: the access token (when its
        lifetime is known) or the ID token (its ``exp``, which the session's claims carry)."""
        if access_token and self.access_expires_at is not None and now >= self.access_expires_at:
            return True
        if id_token:
            expires = _number(self.claims.get("exp"))
            return expires is not None and now >= expires
        return False

    def tokens_expire_at(self, *, access_token: bool, id_token: bool) -> float | None:
        """When the first token the console is given expires; None when unknown."""
        times = []
        if access_token and self.access_expires_at is not None:
            times.append(self.access_expires_at)
        if id_token and (expires := _number(self.claims.get("exp"))) is not None:
            times.append(expires)
        return min(times) if times else None

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
        )


@dataclass(frozen=True, slots=True)
class PendingLogin:
    nonce: str
    code_verifier: str
    return_to: str
    issuer: str
    client_id: str
    created_at: float
    # What the sign-in is for, when not an ordinary one (which creates a session): a purpose that a module
    # registered (``proxy.signin.login.register_purpose``) and that finishes it instead, with what that module
    # keeps about it. The settings page's Test login is one: the digest of the draft it tests (``about``) and
    # who started it (``by``); it creates no session.
    purpose: str | None = None
    about: str = ""
    by: str = ""
    # The store key that counts the open sign-ins of the client's address (``SessionManager.save_login``).
    address_key: str | None = None

    def to_record(self) -> dict[str, Any]:
        record = {
            "n": self.nonce,
            "v": self.code_verifier,
            "r": self.return_to,
            "i": self.issuer,
            "c": self.client_id,
            "t": self.created_at,
        }
        if self.purpose is not None:
            record["p"] = self.purpose
            record["d"] = self.about
            record["b"] = self.by
        if self.address_key is not None:
            record["a"] = self.address_key
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PendingLogin:
        return cls(
            record["n"],
            record["v"],
            record["r"],
            record["i"],
            record["c"],
            record["t"],
            record.get("p"),
            record.get("d", ""),
            record.get("b", ""),
            record.get("a"),
        )


def _refresh_margin(lifetime: float) -> float:
    """How long before a token's expiry it is renewed: a quarter of its lifetime, at least 1 s, at most 60 s."""
    return min(60.0, max(1.0, lifetime / 4))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def keep_sign_in(previous: Mapping[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    """``claims`` (after a refresh) with the sign-in claims of ``previous`` (``SIGN_IN_CLAIMS``): a refreshed ID
    token may say otherwise, or nothing, but no one signed in again."""
    for name in SIGN_IN_CLAIMS:
        if name in previous:
            claims[name] = previous[name]
        else:
            claims.pop(name, None)
    return claims


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    """The plaintext, or None when ``key`` or ``aad`` is not the one it was sealed with (or it was altered)."""
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except (InvalidTag, ValueError):
        return None


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
