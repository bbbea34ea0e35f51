"""OpenID Provider discovery (Discovery 1.0): the validated provider metadata and its cache.

``ProviderMetadata`` is the part of the discovery document the sidecar uses, checked field by field.
``Discovery`` fetches it for one issuer, keeps it for an hour, serves the last good copy while the
provider fails, and backs off between failed fetches so an outage costs one request per step, not one
per login.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from yarl import URL

from proxy.config.model import is_loopback_host
from proxy.errors import ProviderError
from proxy.oidc.http import ProviderHTTP, ProviderUnreadable, printable
from proxy.oidc.singleflight import SingleFlight

log = logging.getLogger("sso_sidecar.oidc")

DISCOVERY_PATH = "/.well-known/openid-configuration"
METADATA_MAX_AGE = 3600.0
# After a failed discovery fetch, wait 1s, 2s, 4s ... up to 30s before asking again, so a provider
# outage costs one request per backoff step instead of one per incoming login.
DISCOVERY_RETRY_MIN = 1.0
DISCOVERY_RETRY_MAX = 30.0


class DocumentError(ProviderError):
    """The discovery document was read, and says something wrong (a provider's, not the network's, fault)."""


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the discovery document (OIDC Discovery 1.0 section 3) the sidecar uses.

    ``authorization_endpoint`` and ``token_endpoint`` are empty for an issuer whose tokens are only
    verified (``sso.extra_issuers``): such a document needs just ``issuer`` and ``jwks_uri``, as workload
    identity issuers publish it (GitHub Actions' has neither endpoint)."""

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
    registration_endpoint: str | None = None  # RFC 7591 dynamic client registration, where offered

    @classmethod
    def from_document(cls, doc: object, *, expected_issuer: str, sign_in: bool = True) -> ProviderMetadata:
        """Validate a discovery document; ``ProviderError`` names the first field that is wrong.
        ``sign_in``: users sign in at this issuer, so its authorization and token endpoints are required."""
        if not isinstance(doc, dict):
            raise DocumentError("The discovery document is not a JSON object")
        issuer = doc.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise DocumentError("The discovery document has no 'issuer'")
        # Discovery 4.3: the issuer must be exactly the one we asked, or the provider could speak for
        # another issuer (and its tokens would carry that other iss).
        if issuer != expected_issuer:
            raise DocumentError(
                f"The discovery document's issuer {printable(issuer)!r} does not match the configured "
                f"issuer_url {printable(expected_issuer)!r}"
            )
        loopback_http = URL(issuer).scheme == "http"

        def endpoint(name: str, *, required: bool) -> str | None:
            value = doc.get(name)
            if value is None or value == "":
                if required:
                    raise DocumentError(f"The discovery document has no '{name}'")
                return None
            if not isinstance(value, str):
                raise DocumentError(f"The discovery document's '{name}' is not a URL")
            try:
                url = URL(value)
            except ValueError:
                raise DocumentError(f"The discovery document's '{name}' is not a URL") from None
            if not url.host or url.scheme not in ("https", "http"):
                raise DocumentError(f"The discovery document's '{name}' is not an absolute URL")
            # Tokens and the client secret travel to these endpoints: plain http only in local tests.
            if url.scheme == "http" and not (loopback_http and is_loopback_host(url.host)):
                raise DocumentError(f"The discovery document's '{name}' must be an https:// URL")
            return value

        def strings(name: str) -> tuple[str, ...]:
            value = doc.get(name)
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DocumentError(f"The discovery document's '{name}' is not a list of strings")
            return tuple(value)

        def flag(name: str) -> bool:
            return doc.get(name) is True

        authorization_endpoint = endpoint("authorization_endpoint", required=sign_in)
        token_endpoint = endpoint("token_endpoint", required=sign_in)
        jwks_uri = endpoint("jwks_uri", required=True)
        assert jwks_uri
        return cls(
            issuer=issuer,
            authorization_endpoint=authorization_endpoint or "",
            token_endpoint=token_endpoint or "",
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
            registration_endpoint=endpoint("registration_endpoint", required=False),
        )


class Discovery:
    """One issuer's discovery document, fetched once and cached (``max_age``), with backoff on failure.

    ``clock`` is a monotonic clock in seconds; tests pass their own to step through expiry and backoff.
    """

    max_age = METADATA_MAX_AGE
    retry_min = DISCOVERY_RETRY_MIN
    retry_max = DISCOVERY_RETRY_MAX

    def __init__(
        self,
        issuer_url: str,
        http: ProviderHTTP,
        *,
        clock: Callable[[], float] = time.monotonic,
        sign_in: bool = True,
    ) -> None:
        """``sign_in``: false for an issuer whose tokens are only verified (``ProviderMetadata``)."""
        self.issuer_url = issuer_url
        self._sign_in = sign_in
        self._http = http
        self._clock = clock
        self._md: ProviderMetadata | None = None
        self._expires = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._error = ""
        self._flight: SingleFlight[ProviderMetadata] = SingleFlight()

    @property
    def url(self) -> str:
        return self.issuer_url.rstrip("/") + DISCOVERY_PATH

    async def metadata(self) -> ProviderMetadata:
        """The validated discovery document, cached; a stale copy is served while the provider is down."""
        now = self._clock()
        if self._md is not None and now < self._expires:
            return self._md
        if now < self._retry_at:
            if self._md is not None:
                return self._md
            raise ProviderError(self._error)
        try:
            return await self._flight.run(self._fetch)
        except ProviderError:
            if self._md is not None:
                log.warning("discovery: keeping the previously fetched document while the provider fails")
                return self._md
            raise

    async def _fetch(self) -> ProviderMetadata:
        try:
            answer = await self._http.request("GET", self.url, "discovery document")
            if answer.status != 200:
                raise ProviderUnreadable(f"The discovery document could not be fetched (HTTP {answer.status})")
            doc = answer.json_object("The discovery document")
            md = ProviderMetadata.from_document(doc, expected_issuer=self.issuer_url, sign_in=self._sign_in)
        except ProviderError as exc:
            self._failures += 1
            delay = min(self.retry_max, self.retry_min * 2 ** (self._failures - 1))
            self._retry_at = self._clock() + delay
            self._error = exc.message
            log.warning("discovery failed (%s); next attempt in %.0fs: %s", self.url, delay, exc.message)
            raise
        if self._sign_in and md.code_challenge_methods_supported and "S256" not in md.code_challenge_methods_supported:
            log.warning("the provider does not list PKCE method S256; the sidecar sends it anyway")
        self._failures = 0
        self._retry_at = 0.0
        self._md = md
        self._expires = self._clock() + self.max_age
        return md
