"""The OpenID Connect relying party: authorize URL, code exchange, refresh, userinfo, end-session URL.

``OIDCClient`` is one relying party (issuer + client) for one active configuration; a reload builds a
new one. It owns the issuer's ``Discovery`` cache and ``JWKS``, checks tokens with ``proxy.oidc.tokens``'
rules, and knows nothing about ``aiohttp.web``: handlers in ``proxy.signin.login`` call it and get plain data or
one of two errors back. ``ProviderError`` means the provider could not be reached or answered nonsense;
``TokenValidationError`` means a token (or the authorization response) must not be trusted. Their
messages are shown to users, so they say *what* failed and never contain a token, a code or the secret.

Specs followed: OpenID Connect Core 1.0 (3.1.3.7 ID token validation, 5.3 userinfo, 12 refresh),
RFC 7636 (PKCE), RFC 9207 (``iss`` in the authorization response), RFC 9700 (OAuth security BCP),
RP-Initiated Logout 1.0 and Back-Channel Logout 1.0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from yarl import URL

from proxy.b64 import b64url_encode
from proxy.config.model import SSOSettings
from proxy.errors import LoginError, ProviderError, TokenValidationError
from proxy.oidc import tokens
from proxy.oidc.discovery import Discovery, ProviderMetadata
from proxy.oidc.http import ProviderHTTP, printable
from proxy.oidc.jwks import JWKS

log = logging.getLogger("sso_sidecar.oidc")

_OAUTH_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# RFC 6749 A.12: an access token is printable ASCII. Anything else (a line break) can travel neither in the
# Authorization header to userinfo nor in a header to the console (pass_tokens).
_TOKEN_CHARS = re.compile(r"[\x20-\x7e]+")


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string without padding (state, nonce, PKCE verifier, session ids)."""
    return secrets.token_urlsafe(nbytes)


def pkce_challenge(code_verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))) without padding."""
    return b64url_encode(hashlib.sha256(code_verifier.encode("ascii")).digest())


def new_pkce() -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` pair; the challenge method is always S256."""
    verifier = random_token(32)  # 43 characters, the RFC 7636 minimum, from 256 bits of entropy
    return verifier, pkce_challenge(verifier)


@dataclass(frozen=True)
class TokenSet:
    """A token endpoint response. After a refresh without a new ID token, ``id_token`` is ``""``."""

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


class CredentialsUnproven(ProviderError):
    """The token endpoint answered the credential check with something that proves nothing either way."""


class ClientRejected(ProviderError):
    """The token endpoint refused the client's credentials (``invalid_client``): the ID, the secret, or both."""


class OIDCClient:
    """One relying party (issuer + client) with its discovery and JWKS caches.

    Created per active configuration; a reload builds a new one. ``http`` is the app's shared session.
    """

    def __init__(self, sso: SSOSettings, redirect_uri: str, http: aiohttp.ClientSession) -> None:
        self._sso = sso
        self._redirect_uri = redirect_uri
        self._http = ProviderHTTP(http, sso.http_timeout)
        self.discovery = Discovery(sso.issuer_url, self._http)
        self.jwks = JWKS(self.discovery, self._http, algorithms=sso.id_token_signing_algs)

    @property
    def settings(self) -> SSOSettings:
        return self._sso

    @property
    def redirect_uri(self) -> str:
        return self._redirect_uri

    async def metadata(self) -> ProviderMetadata:
        """The issuer's validated discovery document (cached; see ``Discovery``)."""
        return await self.discovery.metadata()

    # -- authorization request / response -----------------------------------------------------------

    async def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, extra: Mapping[str, str] | None = None
    ) -> str:
        """``extra``: parameters of this one request (a step-up's ``acr_values``, ``max_age``, ``prompt``), over
        ``sso.extra_authorize_params``; neither can replace the protocol's own."""
        md = await self.metadata()
        params: dict[str, str] = dict(self._sso.extra_authorize_params)
        params.update(extra or {})
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
        return _with_query(md.authorization_endpoint, params)

    def check_authorization_response_iss(self, iss: str | None, metadata: ProviderMetadata) -> None:
        """RFC 9207: defeats mix-up attacks where a response from one provider is replayed to another."""
        if iss is None:
            if metadata.authorization_response_iss_parameter_supported:
                raise LoginError("The authorization response has no 'iss' parameter although the provider sends one")
            return
        if iss != metadata.issuer:
            raise LoginError("The authorization response issuer (iss) does not match the configured issuer")

    # -- the callback sequence, and refresh ---------------------------------------------------------

    async def login(self, *, code: str, code_verifier: str, nonce: str) -> LoginResult:
        """Code exchange, ID token validation, then userinfo (only once the ID token was accepted)."""
        token_set = await self.exchange_code(code, code_verifier)
        claims = await self.validate_id_token(token_set.id_token, nonce=nonce, access_token=token_set.access_token)
        md = await self.metadata()
        if md.userinfo_endpoint:
            userinfo = await self.fetch_userinfo(token_set.access_token, expected_sub=claims["sub"])
            claims = tokens.merge_userinfo(claims, userinfo)
        return LoginResult(tokens=token_set, claims=claims)

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

    async def refresh_login(self, refresh_token: str, *, previous_claims: Mapping[str, Any]) -> LoginResult:
        """A refresh-token grant that brings the identity up to date: a new ID token, if any, is validated
        (Core 12.2: same iss, aud and ``sub``) and its claims taken, then userinfo. A userinfo failure
        keeps the previous profile rather than ending the session.

        ``tokens.refresh_token`` is ``None`` when the provider did not rotate it (keep the old one);
        ``tokens.id_token`` is ``""`` when it sent no new ID token. ``TokenEndpointError`` with
        ``error == "invalid_grant"`` means the provider ended the grant: the session is over.
        """
        sub = str(previous_claims["sub"])
        body = await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})
        token_set = _token_set(body, require_id_token=False)
        claims = dict(previous_claims)
        if token_set.id_token:
            claims.update(
                await self.validate_id_token(
                    token_set.id_token, nonce=None, access_token=token_set.access_token, expected_sub=sub
                )
            )
        md = await self.metadata()
        if md.userinfo_endpoint:
            try:
                claims = tokens.merge_userinfo(
                    claims, await self.fetch_userinfo(token_set.access_token, expected_sub=sub)
                )
            except ProviderError as exc:
                log.warning("userinfo after refresh failed, keeping the previous profile: %s", exc.message)
        return LoginResult(tokens=token_set, claims=claims)

    async def prove_client_credentials(self, *, strict: bool = False) -> None:
        """Check the client id and secret without a user: redeem a code that cannot exist.

        ``invalid_grant`` means the provider authenticated the client and only disliked the code: proven.
        Other refusals that do not concern the credentials (``invalid_request``...) prove nothing: a reload
        logs them and goes on (the file is the operator's), ``strict`` (the settings page) refuses them.
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
                raise ClientRejected(
                    "The identity provider rejected the client credentials (invalid_client): "
                    "check sso.client_id and the client secret"
                ) from None
            if exc.error == "unauthorized_client":
                raise ProviderError(
                    "The identity provider rejected the client credentials (unauthorized_client): the client "
                    "may not use the authorization code flow"
                ) from None
            if strict:
                answer = exc.error or "something that is not an OAuth error"
                raise CredentialsUnproven(
                    f"The token endpoint answered {answer} to the credential check, which does not prove the "
                    "client ID and secret (only invalid_grant for a made-up code does)"
                ) from None
            log.warning("client credential check inconclusive: the token endpoint answered %s", exc.message)
            return
        raise ProviderError("The token endpoint accepted a made-up authorization code")

    async def client_known(self) -> bool | None:
        """After ``ClientRejected``: does the provider know the client ID at all? The token endpoint's
        ``invalid_client`` does not say whether the ID or the secret is wrong (RFC 6749 5.2), but the authorization
        endpoint must not redirect for a client it does not know (RFC 6749 4.1.2.1): a redirect (to its sign-in,
        or back to us) means the client exists, a 4xx that it does not (or that the redirect URI is not its), and
        a page of its own (200: a sign-in form or an error) tells nothing. Nothing is followed or signed in."""
        md = await self.metadata()
        verifier = random_token(32)
        url = _with_query(
            md.authorization_endpoint,
            {
                "response_type": "code",
                "client_id": self._sso.client_id,
                "redirect_uri": self._redirect_uri,
                "scope": "openid",
                "state": random_token(16),
                "nonce": random_token(16),
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            },
        )
        try:
            answer = await self._http.request("GET", url, "authorization endpoint")
        except ProviderError:
            return None
        if 300 <= answer.status < 400:
            return True
        if 400 <= answer.status < 500:
            return False
        return None

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
        answer = await self._http.request("POST", md.token_endpoint, "token endpoint", data=form, headers=headers)
        try:
            body = json.loads(answer.body)
        except ValueError:
            body = None
        if answer.status == 200 and isinstance(body, dict) and "error" not in body:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, str) and _OAUTH_ERROR_CODE.match(error):
            # The description is not shown: some providers echo the submitted code or parameters in it.
            raise TokenEndpointError(
                f"The token endpoint refused the request: {error}", error=error, http_status=answer.status
            )
        if answer.status == 200:
            raise ProviderError("The token endpoint's answer is not a JSON object")
        raise TokenEndpointError(
            f"The token endpoint refused the request (HTTP {answer.status})", error=None, http_status=answer.status
        )

    # -- tokens ---------------------------------------------------------------------------------------

    async def validate_id_token(
        self,
        id_token: str,
        *,
        nonce: str | None,
        access_token: str | None = None,
        expected_sub: str | None = None,
    ) -> dict[str, Any]:
        """OIDC Core 3.1.3.7. ``nonce=None`` only for refreshed ID tokens (Core 12.2), never at login."""
        verified = await self.jwks.verify(id_token, "ID token")
        return tokens.check_id_token(
            verified,
            issuer=self._sso.issuer_url,
            client_id=self._sso.client_id,
            skew=self._sso.clock_skew,
            nonce=nonce,
            access_token=access_token,
            expected_sub=expected_sub,
        )

    async def validate_logout_token(self, logout_token: str) -> dict[str, Any]:
        """Back-Channel Logout 1.0 section 2.6. Replay (``jti``) tracking is the caller's job."""
        verified = await self.jwks.verify(logout_token, "Logout token")
        return tokens.check_logout_token(
            verified, issuer=self._sso.issuer_url, client_id=self._sso.client_id, skew=self._sso.clock_skew
        )

    # -- userinfo -----------------------------------------------------------------------------------

    async def fetch_userinfo(self, access_token: str, *, expected_sub: str) -> dict[str, Any]:
        """OIDC Core 5.3; the access token goes in the Authorization header only (RFC 6750 2.1, RFC 9700)."""
        md = await self.metadata()
        if not md.userinfo_endpoint:
            raise ProviderError("The provider has no userinfo endpoint")
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json, application/jwt"}
        answer = await self._http.request("GET", md.userinfo_endpoint, "userinfo endpoint", headers=headers)
        if answer.status != 200:
            raise ProviderError(f"The userinfo endpoint refused the request (HTTP {answer.status})")
        if answer.content_type == "application/jwt":
            # Signed userinfo: the same keys and algorithms as ID tokens.
            verified = await self.jwks.verify(answer.body.decode("ascii", "replace").strip(), "Userinfo response")
            info = tokens.check_signed_userinfo(verified, issuer=self._sso.issuer_url, client_id=self._sso.client_id)
        elif answer.content_type == "application/json" or answer.content_type.endswith("+json"):
            info = answer.json_object("The userinfo response")
        else:
            content_type = printable(answer.content_type, 60) or "no type"
            raise ProviderError(f"The userinfo response is not JSON ({content_type})")
        sub = info.get("sub")
        if not isinstance(sub, str) or sub != expected_sub:
            # Core 5.3.4: a userinfo response for another subject could graft someone else's profile on.
            raise TokenValidationError("Userinfo subject (sub) does not match the ID token")
        return info

    # -- RP-initiated logout ------------------------------------------------------------------------

    def end_session_url(
        self,
        metadata: ProviderMetadata,
        *,
        id_token_hint: str | None = None,
        logout_hint: str | None = None,
        post_logout_redirect_uri: str | None = None,
        state: str | None = None,
    ) -> str | None:
        """OIDC RP-Initiated Logout 1.0 section 2, or ``None`` when the provider has no such endpoint.
        ``client_id`` is always sent; which hint goes with it is ``logout_hints``' rule."""
        if not metadata.end_session_endpoint:
            return None
        params: dict[str, str] = {"client_id": self._sso.client_id}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        if logout_hint:
            params["logout_hint"] = logout_hint
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        if state:
            params["state"] = state
        return _with_query(metadata.end_session_endpoint, params)


def logout_hints(mode: str, claims: Mapping[str, Any], id_token: str) -> dict[str, str]:
    """What sign-out tells the provider about who is signing out (``sso.logout_hint``), besides ``client_id``.

    RP-Initiated Logout 1.0 (section 2) lets the request name the user with ``logout_hint``, whose value is
    the provider's to define, instead of the ID token in ``id_token_hint``, and defines no discovery field
    that says a provider accepts it. So:

    - ``auto``: ``logout_hint`` when the ID token carries a ``login_hint`` claim, which a provider issues
      for exactly that (Microsoft Entra ID, as an optional claim); otherwise ``id_token_hint``.
    - ``id_token_hint``: always the ID token.
    - any other value names the claim whose value is sent as ``logout_hint`` (``sid`` for Auth0, say): the
      operator says this provider takes ``client_id`` + ``logout_hint``. Never the ID token; without that
      claim, ``client_id`` alone (the provider then asks the user to confirm, as section 2 has it do).
    """
    if mode == "id_token_hint":
        return {"id_token_hint": id_token} if id_token else {}
    value = claims.get("login_hint" if mode == "auto" else mode)
    if isinstance(value, str) and value:
        return {"logout_hint": value}
    if mode == "auto" and id_token:
        return {"id_token_hint": id_token}
    return {}


def _with_query(endpoint: str, params: Mapping[str, str]) -> str:
    """``params`` added to a provider endpoint's URL; a query the endpoint already has stays byte for byte."""
    return str(URL(endpoint, encoded=True).extend_query(params))


def _token_set(body: Mapping[str, Any], *, require_id_token: bool) -> TokenSet:
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProviderError("The token endpoint did not issue a Bearer token")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderError("The token endpoint's answer has no access_token")
    if not _TOKEN_CHARS.fullmatch(access_token):
        raise ProviderError("The token endpoint's access_token has characters no token may have (RFC 6749 A.12)")
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
