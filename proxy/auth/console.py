"""Everything the console is told about the caller when ``assertion``, ``roles`` or ``pass_tokens`` is on: the
identity headers, the roles, the signed assertion and the user's own tokens, as one tuple of headers.

Signing costs far more than the rest of a request (``auth.assertion``), so the headers are remembered: per session,
by its id and the time its tokens and claims last changed (``Session.refreshed_at``: a refresh is the only thing
that changes either), and per bearer token, by the claims object its verifier keeps for it. An entry is served
until its assertion nears its end (the last quarter of its lifetime, at most the last minute) or a passed token
expires; a busy user costs one dict lookup per request and one signature per lifetime window. At most
``REMEMBERED_MAX`` entries are kept, the oldest going first. Pure: no I/O (``gate.console`` fetches tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidict import istr

from proxy.auth.assertion import AssertionSigner, Keyring
from proxy.auth.identity import IdentityHeaders
from proxy.auth.roles import RoleRules
from proxy.config.model import Settings

REMEMBERED_MAX = 10_000
_RENEW_MARGIN_MAX = 60.0  # re-sign at most a minute before the end...
_RENEW_SHARE = 0.25  # ...or in the last quarter of the lifetime, whichever is shorter
_FOREVER = float("inf")

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PassedTokens:
    """The session's tokens the console is given, and when the first of them expires (None: unknown)."""

    access_token: str
    id_token: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class _Entry:
    holder: object  # what the key stands for: the bearer claims object (its id is the key), else None
    version: float  # the session's refreshed_at
    until: float  # served while time.time() is below this
    headers: Headers


class ConsoleIdentity:
    """The headers for the console, built once per session and lifetime window."""

    def __init__(self, settings: Settings, identity: IdentityHeaders) -> None:
        self.identity = identity
        self.separator = settings.header_list_separator
        roles = settings.roles
        self.roles = RoleRules(roles, settings.access.groups_claim) if roles is not None else None
        # Header names as ``istr``, like ``IdentityHeaders``': the console's copy of the request headers (a
        # CIMultiDict) takes their lower-cased form as it is instead of lower-casing them on every request.
        self.roles_header = istr(roles.header) if roles is not None else ""
        assertion = settings.assertion
        self.keyring: Keyring | None = None
        self.signer: AssertionSigner | None = None
        self.assertion_header = ""
        if assertion is not None:
            self.keyring = Keyring(assertion, settings.session.cookie_secrets)
            issuer = str(settings.public_url).rstrip("/")
            self.signer = AssertionSigner(assertion, self.keyring, issuer)
            self.assertion_header = istr(assertion.header)
        self.access_header = istr(settings.pass_tokens.access_token)
        self.id_header = istr(settings.pass_tokens.id_token)
        self.passes_tokens = settings.pass_tokens.enabled
        # Each of these is stripped from every request and a header of its own, or this is a construction error.
        identity.check_also_written(
            h for h in (self.roles_header, self.assertion_header, self.access_header, self.id_header) if h
        )
        if self.signer is not None:
            lifetime = self.signer.lifetime
            self._margin = min(_RENEW_MARGIN_MAX, lifetime * _RENEW_SHARE)
        else:
            self._margin = 0.0
        self._memo: dict[object, _Entry] = {}
        self.signatures = 0  # how many assertions this object signed (tests and the micro-benchmark read it)

    # -- per request --------------------------------------------------------------------------------

    def cached(self, session_id: str, version: float, now: float) -> Headers | None:
        """The remembered headers of this session, or None when they must be built (``for_session``)."""
        entry = self._memo.get(session_id)
        if entry is not None and entry.version == version and now < entry.until:
            return entry.headers
        return None

    def for_session(
        self,
        session_id: str,
        version: float,
        claims: Mapping[str, Any],
        *,
        not_after: float,
        tokens: PassedTokens | None,
        now: float,
    ) -> Headers:
        """Build (and remember) the headers of a session that ends at ``not_after``."""
        headers, until = self._build(claims, not_after=not_after, now=now)
        if tokens is not None:
            headers = headers + self._token_headers(tokens.access_token, tokens.id_token)
            if tokens.expires_at is not None:
                until = min(until, tokens.expires_at)
        self._remember(session_id, _Entry(None, version, until, headers))
        return headers

    def for_bearer(self, claims: Mapping[str, Any], token: str, now: float) -> Headers:
        """The headers of an API client's verified bearer token (its own claims object, from the verifier's
        cache, is the key). Its access token is the bearer token itself; it has no ID token to pass."""
        key = ("bearer", id(claims))
        entry = self._memo.get(key)
        if entry is not None and entry.holder is claims and now < entry.until:
            return entry.headers
        expires = claims.get("exp")
        not_after = float(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else None
        headers, until = self._build(claims, not_after=not_after, now=now)
        if self.access_header:
            headers = headers + self._token_headers(token, "")
        # Holding ``claims`` keeps its id from being reused while the entry lives.
        self._remember(key, _Entry(claims, 0.0, until, headers))
        return headers

    # -- building -----------------------------------------------------------------------------------

    def _build(self, claims: Mapping[str, Any], *, not_after: float | None, now: float) -> tuple[Headers, float]:
        headers = self.identity.values(claims)
        roles = self.roles.of(claims) if self.roles is not None else ()
        if roles:
            headers = (*headers, (self.roles_header, self.separator.join(roles)))
        until = _FOREVER
        if self.signer is not None:
            body = self.signer.claims(claims, roles, now=now, not_after=not_after)
            jwt = self.signer.sign(body)
            self.signatures += 1
            value = "Bearer " + jwt if self.assertion_header == "Authorization" else jwt
            headers = (*headers, (self.assertion_header, value))
            capped = not_after is not None and body["exp"] >= int(not_after)
            # An assertion capped at the session's end is served to that end: signing again gains nothing.
            until = float(body["exp"]) if capped else body["exp"] - self._margin
        return headers, until

    def _token_headers(self, access_token: str, id_token: str) -> Headers:
        out: list[tuple[str, str]] = []
        for header, token in ((self.access_header, access_token), (self.id_header, id_token)):
            if header and token:
                out.append((header, "Bearer " + token if header == "Authorization" else token))
        return tuple(out)

    def _remember(self, key: object, entry: _Entry) -> None:
        memo = self._memo
        memo.pop(key, None)  # re-inserted at the end: the oldest entries stay at the front
        if len(memo) >= REMEMBERED_MAX:
            del memo[next(iter(memo))]
        memo[key] = entry

    # -- for operators --------------------------------------------------------------------------------

    def sample(self, claims: Mapping[str, Any], now: float, not_after: float | None = None) -> dict[str, Any] | None:
        """The claims an assertion for this identity would carry now (never signed), or None without one."""
        if self.signer is None:
            return None
        roles = self.roles.of(claims) if self.roles is not None else ()
        return self.signer.claims(claims, roles, now=now, not_after=not_after)

    def roles_of(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        return self.roles.of(claims) if self.roles is not None else ()
