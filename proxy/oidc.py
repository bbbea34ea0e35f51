"""The OpenID Connect relying party: discovery, authorize URL, code exchange, token validation, JWKS cache.

Everything that talks to the identity provider or judges what it sent lives here, and nothing here knows
about ``aiohttp.web``: handlers in ``login.py`` call ``OIDCClient`` and get plain data or one of two
errors back. ``ProviderError`` means the provider could not be reached or answered nonsense;
``TokenValidationError`` means a token (or the authorization response) must not be trusted. Their
messages are shown to users, so they say *what* failed and never contain a token, a code or the secret.

Specs followed: OpenID Connect Core 1.0 (3.1.3.7 ID token validation, 5.3 userinfo, 12 refresh),
Discovery 1.0 (4.3), RFC 7636 (PKCE), RFC 9207 (``iss`` in the authorization response), RFC 9700 (OAuth
security BCP) and Back-Channel Logout 1.0 (2.4, 2.6).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import warnings
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar
from urllib.parse import quote_plus, urlencode

import aiohttp
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError, SecurityWarning
from joserfc.jwk import JWKRegistry, Key
from yarl import URL

from proxy.b64 import b64url_decode, b64url_encode
from proxy.errors import LoginError, ProviderError, TokenValidationError
from proxy.settings import SUPPORTED_ID_TOKEN_ALGS, SSOSettings, is_loopback_host

log = logging.getLogger("sso_sidecar.oidc")

DISCOVERY_PATH = "/.well-known/openid-configuration"
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"

# Cache lifetimes and retry pacing. Class attributes on OIDCClient read these, so tests can shorten them.
METADATA_MAX_AGE = 3600.0
JWKS_MAX_AGE = 3600.0
# After a failed discovery fetch, wait 1s, 2s, 4s ... up to 30s before asking again, so a provider
# outage costs one request per backoff step instead of one per incoming login.
DISCOVERY_RETRY_MIN = 1.0
DISCOVERY_RETRY_MAX = 30.0
# An unknown `kid` may mean the provider rotated keys, so the JWKS is refetched at once; but a stream of
# made-up kids must not turn the sidecar into a JWKS-fetching amplifier, hence one forced refetch per 30s.
JWKS_FORCED_REFETCH_INTERVAL = 30.0
# Logout tokens often carry no `exp`; refusing old ones bounds how long the caller must remember a `jti`.
LOGOUT_TOKEN_MAX_AGE = 600.0

_MAX_RESPONSE_BYTES = 1 << 20
_MAX_TOKEN_CHARS = 64 * 1024
_MIN_RSA_BITS = 2048

# Claims that describe the authentication event; userinfo must not be able to rewrite them.
_PROTECTED_CLAIMS = frozenset(
    {"iss", "aud", "sub", "exp", "iat", "nbf", "nonce", "azp", "sid", "auth_time", "acr", "amr",
     "at_hash", "c_hash", "jti"}
)  # fmt: skip
# alg -> (kty, allowed curves or None for any). The key must fit the algorithm the header names, so
# an attacker cannot make us verify e.g. an RS256 signature with an EC key or an HMAC with an RSA key.
_ALG_KEYS: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})), "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})), "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}  # fmt: skip
_CURVES = {"EC": ("P-256", "P-384", "P-521"), "OKP": ("Ed25519", "Ed448")}
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_OAUTH_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PRINTABLE_ALG = re.compile(r"^[A-Za-z0-9+\-_]{1,20}$")
_LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})


# --------------------------------------------------------------------------------------------------
# Small pure helpers


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string without padding (state, nonce, PKCE verifier, session ids)."""
    return secrets.token_urlsafe(nbytes)


def pkce_challenge(code_verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))) without padding."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return b64url_encode(digest)


def new_pkce() -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` pair; the challenge method is always S256."""
    verifier = random_token(32)  # 43 characters, the RFC 7636 minimum, from 256 bits of entropy
    return verifier, pkce_challenge(verifier)


def _printable_alg(alg: object) -> str:
    return alg if isinstance(alg, str) and _PRINTABLE_ALG.match(alg) else "(unreadable)"


def _short(text: str, limit: int = 200) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------------------------------
# Data the rest of the sidecar gets back


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the discovery document (OIDC Discovery 1.0 section 3) the sidecar uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    backchannel_logout_supported: bool = False
    backchannel_logout_session_supported: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_document(cls, doc: object, *, expected_issuer: str) -> ProviderMetadata:
        """Validate a discovery document; ``ProviderError`` names the first field that is wrong."""
        if not isinstance(doc, dict):
            raise ProviderError("The discovery document is not a JSON object")
        issuer = doc.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ProviderError("The discovery document has no 'issuer'")
        # Discovery 4.3: the issuer must be exactly the one we asked, or the provider could speak for
        # another issuer (and its tokens would carry that other iss).
        if issuer != expected_issuer:
            raise ProviderError(
                f"The discovery document's issuer {_short(issuer)!r} does not match the configured "
                f"issuer_url {_short(expected_issuer)!r}"
            )
        loopback_http = URL(issuer).scheme == "http"

        def endpoint(name: str, *, required: bool) -> str | None:
            value = doc.get(name)
            if value is None or value == "":
                if required:
                    raise ProviderError(f"The discovery document has no '{name}'")
                return None
            if not isinstance(value, str):
                raise ProviderError(f"The discovery document's '{name}' is not a URL")
            try:
                url = URL(value)
            except ValueError:
                raise ProviderError(f"The discovery document's '{name}' is not a URL") from None
            if not url.host or url.scheme not in ("https", "http"):
                raise ProviderError(f"The discovery document's '{name}' is not an absolute URL")
            # Tokens and the client secret travel to these endpoints: plain http only in local tests.
            if url.scheme == "http" and not (loopback_http and is_loopback_host(url.host)):
                raise ProviderError(f"The discovery document's '{name}' must be an https:// URL")
            return value

        def strings(name: str) -> tuple[str, ...]:
            value = doc.get(name)
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProviderError(f"The discovery document's '{name}' is not a list of strings")
            return tuple(value)

        def flag(name: str) -> bool:
            return doc.get(name) is True

        authorization_endpoint = endpoint("authorization_endpoint", required=True)
        token_endpoint = endpoint("token_endpoint", required=True)
        jwks_uri = endpoint("jwks_uri", required=True)
        assert authorization_endpoint and token_endpoint and jwks_uri
        return cls(
            issuer=issuer,
            authorization_endpoint=authorization_endpoint,
            token_endpoint=token_endpoint,
            jwks_uri=jwks_uri,
            userinfo_endpoint=endpoint("userinfo_endpoint", required=False),
            end_session_endpoint=endpoint("end_session_endpoint", required=False),
            id_token_signing_alg_values_supported=strings("id_token_signing_alg_values_supported"),
            token_endpoint_auth_methods_supported=strings("token_endpoint_auth_methods_supported"),
            code_challenge_methods_supported=strings("code_challenge_methods_supported"),
            scopes_supported=strings("scopes_supported"),
            authorization_response_iss_parameter_supported=flag("authorization_response_iss_parameter_supported"),
            backchannel_logout_supported=flag("backchannel_logout_supported"),
            backchannel_logout_session_supported=flag("backchannel_logout_session_supported"),
            raw=MappingProxyType(dict(doc)),
        )


@dataclass(frozen=True)
class TokenSet:
    """A token endpoint response. After ``refresh`` without a new ID token, ``id_token`` is ``""``."""

    id_token: str
    access_token: str
    refresh_token: str | None
    expires_at: float | None  # unix time
    token_type: str
    scope: str | None

    def __repr__(self) -> str:
        return f"TokenSet(token_type={self.token_type!r}, expires_at={self.expires_at!r}, scope={self.scope!r})"


@dataclass(frozen=True)
class LoginResult:
    tokens: TokenSet
    # The validated ID token claims, plus userinfo claims that do not describe the authentication event.
    claims: dict[str, Any]


class TokenEndpointError(ProviderError):
    """The token endpoint refused a request; ``error`` is its OAuth error code (RFC 6749 5.2) if any."""

    def __init__(self, message: str, *, error: str | None, http_status: int) -> None:
        super().__init__(message)
        self.error = error
        self.http_status = http_status


@dataclass(frozen=True)
class _Response:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class _VerifyKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Key

    def fits(self, alg: str) -> bool:
        kty, curves = _ALG_KEYS[alg]
        if self.kty != kty or (curves is not None and self.crv not in curves):
            return False
        return self.alg is None or self.alg == alg


def parse_jwks(doc: object) -> tuple[_VerifyKey, ...]:
    """Signature keys from a JWKS; keys we cannot or must not use are skipped, not fatal."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ProviderError("The provider's JWKS has no 'keys' list")
    keys: list[_VerifyKey] = []
    for entry in doc["keys"]:
        if not isinstance(entry, dict):
            continue
        kty, kid, use, alg, crv = (entry.get(k) for k in ("kty", "kid", "use", "alg", "crv"))
        ops = entry.get("key_ops")
        why = None
        if kty not in ("RSA", "EC", "OKP"):
            why = "key type not usable for signatures"  # incl. "oct": never a symmetric key
        elif use is not None and use != "sig":
            why = "not a signature key"
        elif ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            why = "key_ops exclude verify"
        elif alg is not None and alg not in _ALG_KEYS:
            why = "algorithm not supported"
        elif kid is not None and not isinstance(kid, str):
            why = "kid is not a string"
        elif crv not in _CURVES.get(str(kty), (crv,)):
            why = "unsupported curve"
        if why is None:
            public = {k: v for k, v in entry.items() if k not in _PRIVATE_JWK_MEMBERS}
            try:
                key = JWKRegistry.import_key(public)
            except Exception:  # any malformed member (bad base64, off-curve point, ...) means: skip it
                why = "malformed"
            else:
                if kty == "RSA" and getattr(key.raw_value, "key_size", 0) < _MIN_RSA_BITS:
                    why = "RSA key shorter than 2048 bits"
                else:
                    keys.append(_VerifyKey(kid, str(kty), crv if isinstance(crv, str) else None, alg, key))
        if why is not None:
            log.info("JWKS: skipping key kid=%r kty=%r: %s", _short(str(kid), 64), _short(str(kty), 16), why)
    return tuple(keys)


_T = TypeVar("_T")


class _SingleFlight(Generic[_T]):
    """Coalesces concurrent calls: while one fetch runs, every other caller awaits that same fetch."""

    def __init__(self) -> None:
        self._task: asyncio.Task[_T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def run(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        if self._task is None:
            task = asyncio.ensure_future(factory())
            self._task = task
            task.add_done_callback(self._done)
        # shield: one caller giving up (client disconnected) must not cancel the fetch for the others.
        return await asyncio.shield(self._task)

    def _done(self, task: asyncio.Task[_T]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # mark as retrieved even if every waiter went away


# --------------------------------------------------------------------------------------------------
# The client


class OIDCClient:
    """One relying party (issuer + client) with its discovery and JWKS caches.

    Created per active configuration; a reload builds a new one. ``http`` is the app's shared session.
    """

    metadata_max_age = METADATA_MAX_AGE
    jwks_max_age = JWKS_MAX_AGE
    discovery_retry_min = DISCOVERY_RETRY_MIN
    discovery_retry_max = DISCOVERY_RETRY_MAX
    jwks_forced_refetch_interval = JWKS_FORCED_REFETCH_INTERVAL

    def __init__(self, sso: SSOSettings, redirect_uri: str, http: aiohttp.ClientSession) -> None:
        self._sso = sso
        self._redirect_uri = redirect_uri
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=sso.http_timeout)
        self._md: ProviderMetadata | None = None
        self._md_expires = 0.0
        self._md_failures = 0
        self._md_retry_at = 0.0
        self._md_error = ""
        self._md_flight: _SingleFlight[ProviderMetadata] = _SingleFlight()
        self._keys: tuple[_VerifyKey, ...] = ()
        self._keys_uri: str | None = None
        self._keys_expires = 0.0
        self._keys_forced_at: float | None = None
        self._keys_flight: _SingleFlight[tuple[_VerifyKey, ...]] = _SingleFlight()

    @property
    def settings(self) -> SSOSettings:
        return self._sso

    @property
    def redirect_uri(self) -> str:
        return self._redirect_uri

    # -- discovery --------------------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return self._sso.issuer_url.rstrip("/") + DISCOVERY_PATH

    async def metadata(self) -> ProviderMetadata:
        """The validated discovery document, cached; a stale copy is served while the provider is down."""
        now = time.monotonic()
        if self._md is not None and now < self._md_expires:
            return self._md
        if now < self._md_retry_at:
            if self._md is not None:
                return self._md
            raise ProviderError(self._md_error)
        try:
            return await self._md_flight.run(self._fetch_metadata)
        except ProviderError:
            if self._md is not None:
                log.warning("discovery: keeping the previously fetched document while the provider fails")
                return self._md
            raise

    async def _fetch_metadata(self) -> ProviderMetadata:
        try:
            resp = await self._request("GET", self.discovery_url, "discovery document")
            if resp.status != 200:
                raise ProviderError(f"The discovery document could not be fetched (HTTP {resp.status})")
            doc = self._json(resp, "The discovery document")
            md = ProviderMetadata.from_document(doc, expected_issuer=self._sso.issuer_url)
        except ProviderError as exc:
            self._md_failures += 1
            delay = min(self.discovery_retry_max, self.discovery_retry_min * 2 ** (self._md_failures - 1))
            self._md_retry_at = time.monotonic() + delay
            self._md_error = exc.message
            log.warning("discovery failed (%s); next attempt in %.0fs: %s", self.discovery_url, delay, exc.message)
            raise
        if "S256" not in md.code_challenge_methods_supported and md.code_challenge_methods_supported:
            log.warning("the provider does not list PKCE method S256; the sidecar sends it anyway")
        self._md_failures = 0
        self._md_retry_at = 0.0
        self._md = md
        self._md_expires = time.monotonic() + self.metadata_max_age
        if self._keys_uri is not None and self._keys_uri != md.jwks_uri:
            self._keys, self._keys_uri, self._keys_expires = (), None, 0.0
        return md

    # -- authorization request / response -----------------------------------------------------------

    async def authorization_url(self, *, state: str, nonce: str, code_challenge: str) -> str:
        md = await self.metadata()
        params: dict[str, str] = dict(self._sso.extra_authorize_params)
        params.update(
            response_type="code",
            client_id=self._sso.client_id,
            redirect_uri=self._redirect_uri,
            scope=" ".join(self._sso.scopes),
            state=state,
            nonce=nonce,
            code_challenge=code_challenge,
            code_challenge_method="S256",
        )
        separator = "&" if "?" in md.authorization_endpoint else "?"
        return md.authorization_endpoint + separator + urlencode(params)

    def check_authorization_response_iss(self, iss: str | None, metadata: ProviderMetadata) -> None:
        """RFC 9207: defeats mix-up attacks where a response from one provider is replayed to another."""
        if iss is None:
            if metadata.authorization_response_iss_parameter_supported:
                raise LoginError("The authorization response has no 'iss' parameter although the provider sends one")
            return
        if iss != metadata.issuer:
            raise LoginError("The authorization response issuer (iss) does not match the configured issuer")

    # -- the callback sequence --------------------------------------------------------------------

    async def login(self, *, code: str, code_verifier: str, nonce: str) -> LoginResult:
        """Code exchange, ID token validation, then userinfo (only once the ID token was accepted)."""
        tokens = await self.exchange_code(code, code_verifier)
        claims = await self.validate_id_token(tokens.id_token, nonce=nonce, access_token=tokens.access_token)
        md = await self.metadata()
        if md.userinfo_endpoint:
            userinfo = await self.fetch_userinfo(tokens.access_token, expected_sub=claims["sub"])
            claims = merge_userinfo(claims, userinfo)
        return LoginResult(tokens=tokens, claims=claims)

    async def exchange_code(self, code: str, code_verifier: str) -> TokenSet:
        body = await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self._redirect_uri,
                "code_verifier": code_verifier,
            }
        )
        return _token_set(body, require_id_token=True)

    async def refresh(self, refresh_token: str, *, expected_sub: str | None = None) -> TokenSet:
        """A refresh-token grant. A new ID token, if any, is validated (Core 12.2: same iss, aud, sub).

        ``refresh_token`` in the result is ``None`` when the provider did not rotate it (keep the old
        one); ``id_token`` is ``""`` when it sent no new ID token. ``TokenEndpointError`` with
        ``error == "invalid_grant"`` means the provider ended the grant: the session is over.
        """
        body = await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})
        tokens = _token_set(body, require_id_token=False)
        if tokens.id_token:
            await self.validate_id_token(
                tokens.id_token, nonce=None, access_token=tokens.access_token, expected_sub=expected_sub
            )
        return tokens

    async def refresh_login(self, refresh_token: str, *, previous_claims: Mapping[str, Any]) -> LoginResult:
        """Refresh, and bring the identity up to date: a new ID token's claims (same ``sub``), then
        userinfo. A userinfo failure keeps the previous profile rather than ending the session."""
        sub = str(previous_claims["sub"])
        body = await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})
        tokens = _token_set(body, require_id_token=False)
        claims = dict(previous_claims)
        if tokens.id_token:
            claims.update(
                await self.validate_id_token(
                    tokens.id_token, nonce=None, access_token=tokens.access_token, expected_sub=sub
                )
            )
        md = await self.metadata()
        if md.userinfo_endpoint:
            try:
                claims = merge_userinfo(claims, await self.fetch_userinfo(tokens.access_token, expected_sub=sub))
            except ProviderError as exc:
                log.warning("userinfo after refresh failed, keeping the previous profile: %s", exc.message)
        return LoginResult(tokens=tokens, claims=claims)

    async def prove_client_credentials(self) -> None:
        """Check the client id and secret without a user: redeem a code that cannot exist.

        ``invalid_grant`` means the provider authenticated the client and only disliked the code. Other
        refusals that do not concern the credentials are logged and treated as inconclusive.
        """
        try:
            await self._token_request(
                {
                    "grant_type": "authorization_code",
                    "code": "sso-sidecar-credential-check-" + random_token(16),
                    "redirect_uri": self._redirect_uri,
                    "code_verifier": random_token(32),
                }
            )
        except TokenEndpointError as exc:
            if exc.error == "invalid_grant":
                return
            if exc.error == "invalid_client" or (exc.error is None and exc.http_status == 401):
                raise ProviderError(
                    "The identity provider rejected the client credentials (invalid_client): "
                    "check sso.client_id and the client secret"
                ) from None
            if exc.error == "unauthorized_client":
                raise ProviderError(
                    "The identity provider rejected the client credentials (unauthorized_client): the client "
                    "may not use the authorization code flow"
                ) from None
            log.warning("client credential check inconclusive: the token endpoint answered %s", exc.message)
            return
        raise ProviderError("The token endpoint accepted a made-up authorization code")

    # -- token endpoint -----------------------------------------------------------------------------

    def _auth_method(self, md: ProviderMetadata) -> str:
        if self._sso.client_secret is None:
            return "none"
        if self._sso.token_endpoint_auth_method:
            return self._sso.token_endpoint_auth_method
        # Discovery 3: when the provider does not say, client_secret_basic is the default.
        supported = md.token_endpoint_auth_methods_supported or ("client_secret_basic",)
        for method in ("client_secret_basic", "client_secret_post"):
            if method in supported:
                return method
        raise ProviderError(
            "The provider supports neither client_secret_basic nor client_secret_post at its token endpoint"
        )

    async def _token_request(self, form: dict[str, str]) -> dict[str, Any]:
        md = await self.metadata()
        method = self._auth_method(md)
        headers = {"Accept": "application/json"}
        form = dict(form)
        secret = self._sso.client_secret.reveal() if self._sso.client_secret is not None else ""
        if method == "client_secret_basic":
            # RFC 6749 2.3.1: both parts are form-urlencoded before base64, so ':' in an id is unambiguous.
            pair = f"{quote_plus(self._sso.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")
        elif method == "client_secret_post":
            form["client_id"] = self._sso.client_id
            form["client_secret"] = secret
        else:
            form["client_id"] = self._sso.client_id
        resp = await self._request("POST", md.token_endpoint, "token endpoint", data=form, headers=headers)
        try:
            body = json.loads(resp.body)
        except ValueError:
            body = None
        if resp.status == 200 and isinstance(body, dict) and "error" not in body:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, str) and _OAUTH_ERROR_CODE.match(error):
            # The description is not shown: some providers echo the submitted code or parameters in it.
            raise TokenEndpointError(
                f"The token endpoint refused the request: {error}", error=error, http_status=resp.status
            )
        if resp.status == 200:
            raise ProviderError("The token endpoint's answer is not a JSON object")
        raise TokenEndpointError(
            f"The token endpoint refused the request (HTTP {resp.status})", error=None, http_status=resp.status
        )

    # -- ID token -------------------------------------------------------------------------------------

    async def validate_id_token(
        self,
        id_token: str,
        *,
        nonce: str | None,
        access_token: str | None = None,
        expected_sub: str | None = None,
    ) -> dict[str, Any]:
        """OIDC Core 3.1.3.7. ``nonce=None`` only for refreshed ID tokens (Core 12.2), never at login."""
        what = "ID token"
        header, claims, key = await self._verify(id_token, what)
        if isinstance(header.get("typ"), str) and header["typ"].lower() in _LOGOUT_TYPES:
            raise TokenValidationError("ID token is a logout token")
        now = time.time()
        self._check_iss_aud(claims, what)
        sub = _check_sub(claims, what)
        if expected_sub is not None and sub != expected_sub:
            raise TokenValidationError("ID token subject (sub) differs from the signed-in user")
        self._check_times(claims, what, now, require_exp=True)
        if nonce is not None:
            got = claims.get("nonce")
            if got is None:
                raise TokenValidationError("ID token nonce is missing")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise TokenValidationError("ID token nonce does not match")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            expected = _token_hash(access_token, str(header["alg"]), key.crv)
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash.encode(), expected.encode()):
                raise TokenValidationError("ID token at_hash does not match the access token")
        return claims

    # -- bearer tokens from API clients --------------------------------------------------------------

    async def validate_access_token(self, token: str, audiences: Collection[str]) -> dict[str, Any]:
        """A JWT bearer token from this issuer meant for one of ``audiences``: an RFC 9068 access token,
        or an ID token (whose ``aud`` is the client id). Signature, ``iss``, ``aud``, ``exp`` (required),
        ``iat`` and ``nbf`` are checked; logout tokens are refused. Opaque tokens cannot be checked here."""
        what = "Bearer token"
        header, claims, _ = await self._verify(token, what)
        typ = header.get("typ")
        if (isinstance(typ, str) and typ.lower() in _LOGOUT_TYPES) or "events" in claims:
            raise TokenValidationError(f"{what} is a logout token")
        granted = self._issuer_and_audiences(claims, what)
        if not set(granted) & set(audiences):
            raise TokenValidationError(f"{what} is not meant for this console (audience)")
        _check_sub(claims, what)
        self._check_times(claims, what, time.time(), require_exp=True)
        return claims

    # -- userinfo -----------------------------------------------------------------------------------

    async def fetch_userinfo(self, access_token: str, *, expected_sub: str) -> dict[str, Any]:
        """OIDC Core 5.3; the access token goes in the Authorization header only (RFC 6750 2.1, RFC 9700)."""
        md = await self.metadata()
        if not md.userinfo_endpoint:
            raise ProviderError("The provider has no userinfo endpoint")
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json, application/jwt"}
        resp = await self._request("GET", md.userinfo_endpoint, "userinfo endpoint", headers=headers)
        if resp.status != 200:
            raise ProviderError(f"The userinfo endpoint refused the request (HTTP {resp.status})")
        what = "Userinfo response"
        if resp.content_type == "application/jwt":
            # Signed userinfo: the same keys and algorithms as ID tokens; iss/aud checked when present
            # (Core 5.3.2), no nonce or expiry (it is not an authentication event).
            _, info, _ = await self._verify(resp.body.decode("ascii", "replace").strip(), what)
            if "iss" in info or "aud" in info:
                self._check_iss_aud(info, what)
        elif resp.content_type == "application/json" or resp.content_type.endswith("+json"):
            info = self._json(resp, "The userinfo response")
        else:
            raise ProviderError(f"The userinfo response is not JSON ({_short(resp.content_type, 60) or 'no type'})")
        sub = info.get("sub")
        if not isinstance(sub, str) or sub != expected_sub:
            # Core 5.3.4: a userinfo response for another subject could graft someone else's profile on.
            raise TokenValidationError("Userinfo subject (sub) does not match the ID token")
        return info

    # -- back-channel logout ----------------------------------------------------------------------

    async def validate_logout_token(self, logout_token: str) -> dict[str, Any]:
        """Back-Channel Logout 1.0 section 2.6. Replay (``jti``) tracking is the caller's job."""
        what = "Logout token"
        header, claims, _ = await self._verify(logout_token, what)
        typ = header.get("typ")
        # 2.4 recommends explicit typing; "JWT" (or none) is what providers sent before that was added.
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _LOGOUT_TYPES | {"jwt"}):
            raise TokenValidationError("Logout token has the wrong type (typ)")
        now = time.time()
        self._check_iss_aud(claims, what)
        self._check_times(claims, what, now, require_exp=False)
        iat = claims["iat"]
        if iat < now - LOGOUT_TOKEN_MAX_AGE - self._sso.clock_skew:
            raise TokenValidationError("Logout token is too old")
        events = claims.get("events")
        if not isinstance(events, dict) or BACKCHANNEL_LOGOUT_EVENT not in events:
            raise TokenValidationError("Logout token has no back-channel logout event")
        if not isinstance(events[BACKCHANNEL_LOGOUT_EVENT], dict):
            raise TokenValidationError("Logout token back-channel logout event is not a JSON object")
        # A nonce would let a logout token pass as an ID token in a forged authentication response.
        if "nonce" in claims:
            raise TokenValidationError("Logout token must not contain a nonce")
        sid, sub = claims.get("sid"), claims.get("sub")
        if sid is None and sub is None:
            raise TokenValidationError("Logout token has neither sid nor sub")
        for name, value in (("sid", sid), ("sub", sub)):
            if value is not None and (not isinstance(value, str) or not value):
                raise TokenValidationError(f"Logout token {name} is not a non-empty string")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise TokenValidationError("Logout token has no jti")
        return claims

    # -- RP-initiated logout ------------------------------------------------------------------------

    def end_session_url(
        self,
        metadata: ProviderMetadata,
        *,
        id_token_hint: str | None = None,
        post_logout_redirect_uri: str | None = None,
        state: str | None = None,
    ) -> str | None:
        """OIDC RP-Initiated Logout 1.0 section 2, or ``None`` when the provider has no such endpoint."""
        if not metadata.end_session_endpoint:
            return None
        params: dict[str, str] = {"client_id": self._sso.client_id}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        if state:
            params["state"] = state
        separator = "&" if "?" in metadata.end_session_endpoint else "?"
        return metadata.end_session_endpoint + separator + urlencode(params)

    # -- JWS verification and the JWKS cache ---------------------------------------------------------

    def allowed_algorithms(self, md: ProviderMetadata) -> tuple[str, ...]:
        if self._sso.id_token_signing_algs:
            allowed = tuple(a for a in self._sso.id_token_signing_algs if a in SUPPORTED_ID_TOKEN_ALGS)
        else:
            # Core 15.1 / Discovery 3: RS256 is what a provider that lists nothing must support.
            advertised = md.id_token_signing_alg_values_supported or ("RS256",)
            allowed = tuple(a for a in advertised if a in SUPPORTED_ID_TOKEN_ALGS)
        if not allowed:
            raise ProviderError(
                "The provider offers no ID token signing algorithm the sidecar accepts "
                f"({', '.join(SUPPORTED_ID_TOKEN_ALGS)})"
            )
        return allowed

    async def _verify(self, token: str, what: str) -> tuple[dict[str, Any], dict[str, Any], _VerifyKey]:
        """Check the signature; return ``(header, claims, key)``. The alg is judged before any key is chosen."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise TokenValidationError(f"{what} is missing or malformed")
        parts = token.split(".")
        if len(parts) == 5:
            raise TokenValidationError(f"{what} is encrypted, which the sidecar does not support")
        if len(parts) != 3:
            raise TokenValidationError(f"{what} is malformed")
        try:
            header = json.loads(b64url_decode(parts[0]))
        except ValueError:  # binascii.Error and JSONDecodeError both are ValueErrors
            header = None
        if not isinstance(header, dict):
            raise TokenValidationError(f"{what} header is malformed")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenValidationError(f"{what} has no algorithm")
        if alg.lower() == "none":
            raise TokenValidationError(f"{what} algorithm 'none' is not allowed")
        if alg.upper().startswith("HS"):
            # An HMAC "signature" keyed with the provider's public key is the algorithm-confusion attack.
            raise TokenValidationError(f"{what} algorithm '{_printable_alg(alg)}' is not allowed (symmetric)")
        md = await self.metadata()
        allowed = self.allowed_algorithms(md)
        if alg not in allowed or alg not in _ALG_KEYS:
            raise TokenValidationError(
                f"{what} algorithm '{_printable_alg(alg)}' is not allowed (accepted: {', '.join(allowed)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenValidationError(f"{what} key id (kid) is malformed")
        candidates = await self._keys_for(md, alg, kid, what)
        registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
        registry.max_header_length = 4096
        payload: bytes | None = None
        used = candidates[0]
        for candidate in candidates:
            try:
                with warnings.catch_warnings():
                    # joserfc flags EdDSA as superseded by RFC 9864; it is still what providers send.
                    warnings.simplefilter("ignore", SecurityWarning)
                    payload = jws.deserialize_compact(token, candidate.key, registry=registry).payload
            except BadSignatureError:
                continue
            except (JoseError, ValueError, TypeError):
                raise TokenValidationError(f"{what} is malformed") from None
            used = candidate
            break
        if payload is None:
            raise TokenValidationError(f"{what} signature is invalid")
        try:
            claims = json.loads(payload)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise TokenValidationError(f"{what} payload is not a JSON object")
        return header, claims, used

    async def _keys_for(self, md: ProviderMetadata, alg: str, kid: str | None, what: str) -> list[_VerifyKey]:
        keys = await self._jwks(md)
        found = _select_keys(keys, alg, kid, what)
        # Perhaps the provider rotated its keys since we fetched them.
        if isinstance(found, str) and found != _AMBIGUOUS and await self._refetch_jwks(md):
            found = _select_keys(self._keys, alg, kid, what)
        if isinstance(found, str):
            raise TokenValidationError(found if found != _AMBIGUOUS else _ambiguous_message(what))
        return found

    async def _jwks(self, md: ProviderMetadata) -> tuple[_VerifyKey, ...]:
        fresh = self._keys_uri == md.jwks_uri and time.monotonic() < self._keys_expires
        if fresh:
            return self._keys
        try:
            return await self._keys_flight.run(lambda: self._fetch_jwks(md.jwks_uri))
        except ProviderError:
            if self._keys_uri == md.jwks_uri and self._keys:
                log.warning("JWKS refresh failed; keeping the keys fetched before")
                return self._keys
            raise

    async def _refetch_jwks(self, md: ProviderMetadata) -> bool:
        """A forced refetch for an unknown key: coalesced, and at most one per interval. True if done."""
        if not self._keys_flight.running:
            now = time.monotonic()
            last = self._keys_forced_at
            if last is not None and now - last < self.jwks_forced_refetch_interval:
                log.info("JWKS: unknown key, but the last forced refetch was %.0fs ago; not refetching", now - last)
                return False
            self._keys_forced_at = now
            log.info("JWKS: refetching for an unknown key id")
        try:
            await self._keys_flight.run(lambda: self._fetch_jwks(md.jwks_uri))
        except ProviderError as exc:
            log.warning("JWKS refetch failed: %s", exc.message)
            return False
        return True

    async def _fetch_jwks(self, uri: str) -> tuple[_VerifyKey, ...]:
        resp = await self._request("GET", uri, "JWKS")
        if resp.status != 200:
            raise ProviderError(f"The provider's JWKS could not be fetched (HTTP {resp.status})")
        keys = parse_jwks(self._json(resp, "The provider's JWKS"))
        if not keys:
            log.warning("JWKS at %s holds no usable signature key", uri)
        self._keys, self._keys_uri = keys, uri
        self._keys_expires = time.monotonic() + self.jwks_max_age
        return keys

    # -- claims -------------------------------------------------------------------------------------

    def _issuer_and_audiences(self, claims: Mapping[str, Any], what: str) -> list[str]:
        """The token's audiences, after checking that our issuer issued it."""
        if claims.get("iss") != self._sso.issuer_url:
            raise TokenValidationError(f"{what} issuer does not match")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise TokenValidationError(f"{what} audience (aud) is missing or malformed")
        return audiences

    def _check_iss_aud(self, claims: Mapping[str, Any], what: str) -> None:
        audiences = self._issuer_and_audiences(claims, what)
        if self._sso.client_id not in audiences:
            raise TokenValidationError(f"{what} audience does not include this client")
        azp = claims.get("azp")
        if len(audiences) > 1 and azp is None:
            raise TokenValidationError(f"{what} has several audiences but no authorized party (azp)")
        if azp is not None and azp != self._sso.client_id:
            raise TokenValidationError(f"{what} authorized party (azp) is not this client")

    def _check_times(self, claims: Mapping[str, Any], what: str, now: float, *, require_exp: bool) -> None:
        skew = self._sso.clock_skew
        iat = _number(claims, "iat", what)
        if iat is None:
            raise TokenValidationError(f"{what} has no issue time (iat)")
        if iat > now + skew:
            raise TokenValidationError(f"{what} was issued in the future (check the clocks)")
        exp = _number(claims, "exp", what)
        if exp is None:
            if require_exp:
                raise TokenValidationError(f"{what} has no expiry (exp)")
        elif exp <= now - skew:
            raise TokenValidationError(f"{what} has expired")
        nbf = _number(claims, "nbf", what)
        if nbf is not None and nbf > now + skew:
            raise TokenValidationError(f"{what} is not valid yet (nbf)")

    # -- HTTP -----------------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Response:
        # No redirects: a 3xx could move a bearer token or the client secret to another host or to http.
        try:
            async with self._http.request(
                method, url, data=data, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                if resp.content_length is not None and resp.content_length > _MAX_RESPONSE_BYTES:
                    raise ProviderError(f"The {what} answer is too large")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > _MAX_RESPONSE_BYTES:
                        raise ProviderError(f"The {what} answer is too large")
                    chunks.append(chunk)
                return _Response(resp.status, resp.content_type, b"".join(chunks))
        except TimeoutError:
            log.warning("%s at %s did not answer within %ss", what, url, self._sso.http_timeout)
            raise ProviderError(f"The identity provider did not answer in time ({what})") from None
        except aiohttp.ClientError as exc:
            log.warning("%s at %s failed: %s", what, url, type(exc).__name__)
            raise ProviderError(f"Could not reach the identity provider ({what})") from None

    @staticmethod
    def _json(resp: _Response, what: str) -> dict[str, Any]:
        try:
            value = json.loads(resp.body)
        except ValueError:
            raise ProviderError(f"{what} is not valid JSON") from None
        if not isinstance(value, dict):
            raise ProviderError(f"{what} is not a JSON object")
        return value


# --------------------------------------------------------------------------------------------------
# Helpers for the above

_AMBIGUOUS = "ambiguous"


def _ambiguous_message(what: str) -> str:
    return f"{what} names no key id (kid) and the provider publishes several keys for its algorithm"


def _select_keys(keys: Collection[_VerifyKey], alg: str, kid: str | None, what: str) -> list[_VerifyKey] | str:
    """The keys to try, or why there are none."""
    if kid is not None:
        named = [k for k in keys if k.kid == kid]
        if not named:
            return f"{what} was signed with an unknown key (kid not in the provider's JWKS)"
        fitting = [k for k in named if k.fits(alg)]
        return fitting or f"{what} key type does not fit its algorithm {alg}"
    fitting = [k for k in keys if k.fits(alg)]
    if not fitting:
        return f"{what} names no key id (kid) and the provider publishes no key for {alg}"
    if len(fitting) > 1:
        return _AMBIGUOUS
    return fitting


def _check_sub(claims: Mapping[str, Any], what: str) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenValidationError(f"{what} has no subject (sub)")
    return sub


def _number(claims: Mapping[str, Any], name: str, what: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenValidationError(f"{what} claim '{name}' is not a number")
    return float(value)


def _token_hash(token: str, alg: str, crv: object) -> str:
    """Core 3.1.3.6 at_hash: the left half of the hash the JWS algorithm uses, base64url-encoded."""
    data = token.encode("ascii", "replace")
    if alg == "EdDSA":
        digest = hashlib.shake_256(data).digest(114) if crv == "Ed448" else hashlib.sha512(data).digest()
    else:
        digest = hashlib.new("sha" + alg[-3:], data).digest()
    return b64url_encode(digest[: len(digest) // 2])


def _token_set(body: Mapping[str, Any], *, require_id_token: bool) -> TokenSet:
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProviderError("The token endpoint did not issue a Bearer token")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError("The token endpoint's answer has no access_token")
    id_token = body.get("id_token")
    if id_token is None and not require_id_token:
        id_token = ""
    if not isinstance(id_token, str) or (require_id_token and not id_token):
        raise ProviderError("The token endpoint's answer has no id_token (is 'openid' among the scopes?)")
    refresh_token = body.get("refresh_token")
    scope = body.get("scope")
    expires_in = body.get("expires_in")
    expires_at: float | None = None
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some providers send it quoted
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in >= 0:
        expires_at = time.time() + float(expires_in)
    return TokenSet(
        id_token=id_token,
        access_token=access_token,
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=expires_at,
        token_type="Bearer",  # noqa: S106 - the scheme name, checked above
        scope=scope if isinstance(scope, str) else None,
    )


def merge_userinfo(id_claims: Mapping[str, Any], userinfo: Mapping[str, Any]) -> dict[str, Any]:
    """ID token claims plus userinfo; userinfo wins for profile claims but cannot touch the event claims."""
    merged = dict(id_claims)
    for name, value in userinfo.items():
        if name not in _PROTECTED_CLAIMS:
            merged[name] = value
    return merged
