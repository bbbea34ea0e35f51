"""API clients with ``Authorization: Bearer <JWT>``: which issuer, is it valid, and a short cache.

A token is accepted when it is a JWT signed by the configured issuer (or one of ``sso.extra_issuers``)
with one of that issuer's audiences (``sso.api_audiences``, default the client id), and not expired.
The main issuer's signatures are checked with the ``OIDCClient``'s JWKS (one key cache for logins and
API calls); each extra issuer gets its own discovery and JWKS caches under the same algorithm and clock
rules, and the claims are judged by ``proxy.tokens.check_access_token``.

The main issuer's ID tokens (``proxy.tokens.is_id_token``) are refused unless ``sso.accept_id_tokens``:
sign-out shows them to the browser. Accepted, each is judged against the signed-out sessions and users
(``proxy.sessions.revocations``) on every use. Extra issuers' tokens are not sorted so: the sidecar never
signs anyone in through them, and their ID-token-shaped workload tokens (CI systems, cloud service
accounts) are minted as bearer credentials for the audiences configured.

A verified token is remembered until it expires (at most ``MAX_CACHE_AGE``, ``CACHE_SIZE`` tokens, least
recently used out first), so a busy API client does not pay for a signature check on every call; the
cache is keyed by a hash of the token, never the token itself.
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from proxy.b64 import b64url_decode
from proxy.errors import InvalidToken, ProviderError, TokenValidationError
from proxy.oidc.client import OIDCClient
from proxy.oidc.discovery import Discovery
from proxy.oidc.http import ProviderHTTP
from proxy.oidc.jwks import JWKS, MAX_TOKEN_CHARS
from proxy.oidc.tokens import check_access_token, is_id_token
from proxy.sessions.revocations import ID_TOKEN_MAX_LIFETIME, Mark, Revocations

CACHE_SIZE = 4096
MAX_CACHE_AGE = 600.0
_ID_REFUSED = "The bearer token is an ID token; this console accepts access tokens."
_SIGNED_OUT = "The bearer token is an ID token of a session that was signed out."


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 2.1); None without one."""
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


@dataclass(frozen=True)
class _Issuer:
    keys: JWKS
    audiences: tuple[str, ...]


class BearerVerifier:
    """The issuers whose tokens one active configuration accepts, with the verified-token cache."""

    def __init__(self, primary: OIDCClient, http: aiohttp.ClientSession) -> None:
        sso = primary.settings
        self._skew = sso.clock_skew
        self._primary = sso.issuer_url
        self._client_id = sso.client_id
        self._accept_id_tokens = sso.accept_id_tokens
        self._issuers: dict[str, _Issuer] = {}
        if sso.bearer_audiences:
            self._issuers[sso.issuer_url] = _Issuer(primary.jwks, sso.bearer_audiences)
        provider_http = ProviderHTTP(http, sso.http_timeout)
        for extra in sso.extra_issuers:
            # Its own discovery and JWKS caches; the same algorithm rules as the main issuer.
            discovery = Discovery(extra.issuer_url, provider_http, sign_in=False)
            keys = JWKS(discovery, provider_http, algorithms=sso.id_token_signing_algs)
            self._issuers[extra.issuer_url] = _Issuer(keys, extra.audiences)
        # hash of the token -> (valid until, claims, what an accepted ID token is judged by, or None)
        self._cache: OrderedDict[bytes, tuple[float, dict[str, Any], Mark | None]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self._issuers)

    async def verify(self, token: str, revocations: Revocations) -> dict[str, Any]:
        """The token's claims; ``InvalidToken`` (401, ``invalid_token``) when it must not be trusted."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("The bearer token is missing or too long.")
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = time.time()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                # Access tokens cost nothing more here; an accepted ID token a look at what this process
                # heard of sign-outs (the store only when it may have missed one).
                if hit[2] is not None and await revocations.revoked(hit[2]):
                    raise InvalidToken(_SIGNED_OUT)
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        header, payload = _unverified(token)
        issuer = payload.get("iss")
        entry = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if not isinstance(issuer, str) or entry is None:
            raise InvalidToken("The bearer token is not a JWT from an issuer this console accepts.")
        own = issuer == self._primary
        if own and not self._accept_id_tokens and is_id_token(header, payload, self._client_id):
            raise InvalidToken(_ID_REFUSED)  # said by the token itself: no signature check needed to refuse it
        try:
            verified = await entry.keys.verify(token, "Bearer token")
            claims = check_access_token(verified, issuer=issuer, audiences=entry.audiences, skew=self._skew)
        except TokenValidationError as exc:
            raise InvalidToken(exc.message) from None
        except ProviderError as exc:
            # The issuer's discovery or JWKS is unreachable: the token cannot be checked, so it is not valid.
            raise InvalidToken(f"The bearer token cannot be checked now: {exc.message}") from None
        mark = None
        if own and is_id_token(verified.header, claims, self._client_id):
            if not self._accept_id_tokens:
                raise InvalidToken(_ID_REFUSED)
            if float(claims["exp"]) - float(claims["iat"]) > ID_TOKEN_MAX_LIFETIME:
                # A sign-out is remembered for a day at most (back-channel logout does not say for how long).
                raise InvalidToken("The bearer token is an ID token that lives longer than a day.")
            mark = revocations.mark(issuer, claims)
            if await revocations.revoked(mark):
                raise InvalidToken(_SIGNED_OUT)
        expires = min(float(claims["exp"]), now + MAX_CACHE_AGE)
        self._cache[key] = (expires, claims, mark)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return claims


class BearerVerifiers:
    """One ``BearerVerifier`` per active OIDC client: a reload that changes ``sso`` builds a new client,
    and with it a fresh verifier (and cache); a reload that does not keeps both."""

    def __init__(self) -> None:
        self._by_client: weakref.WeakKeyDictionary[OIDCClient, BearerVerifier] = weakref.WeakKeyDictionary()

    def get(self, client: OIDCClient, http: aiohttp.ClientSession) -> BearerVerifier:
        verifier = self._by_client.get(client)
        if verifier is None:
            verifier = self._by_client[client] = BearerVerifier(client, http)
        return verifier


VERIFIERS: web.AppKey[BearerVerifiers] = web.AppKey("bearer_verifiers", BearerVerifiers)


def _unverified(token: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """Header and payload, read before verification only to pick the keys to verify with (``iss``) and to
    refuse a token that says itself it is not acceptable. Empty mappings for what is not a JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}, {}
    try:
        header, payload = json.loads(b64url_decode(parts[0])), json.loads(b64url_decode(parts[1]))
    except ValueError:
        return {}, {}
    if not isinstance(header, Mapping) or not isinstance(payload, Mapping):
        return {}, {}
    return header, payload
