"""An issuer's signing keys (its JWKS) and JWS signature verification with them.

``JWKS`` fetches the key set the discovery document names, keeps it for an hour, refetches at once for
an unknown ``kid`` (the provider may have rotated its keys) but at most once per 30 s, and keeps the
previous keys while the provider fails. ``JWKS.verify`` judges a compact JWS: the algorithm first (no
``none``, no HMAC, only what the provider advertises or the config allows), then the key that fits it,
then the signature. What the claims must say is ``proxy.oidc.tokens``' business.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError, SecurityWarning
from joserfc.jwk import JWKRegistry, Key

from proxy.b64 import b64url_decode
from proxy.config.model import SUPPORTED_ID_TOKEN_ALGS
from proxy.errors import ProviderError, TokenValidationError
from proxy.oidc.discovery import Discovery, ProviderMetadata
from proxy.oidc.http import ProviderHTTP, printable
from proxy.oidc.singleflight import SingleFlight

log = logging.getLogger("sso_sidecar.oidc")

JWKS_MAX_AGE = 3600.0
# An unknown `kid` may mean the provider rotated keys, so the JWKS is refetched at once; but a stream of
# made-up kids must not turn the sidecar into a JWKS-fetching amplifier, hence one forced refetch per 30s.
JWKS_FORCED_REFETCH_INTERVAL = 30.0
# The one size cap for any JWT the sidecar reads (ID, access, logout tokens, signed userinfo), checked
# before anything is decoded. Bearer tokens arrive in a header, which the server caps lower anyway.
MAX_TOKEN_CHARS = 64 * 1024
_MIN_RSA_BITS = 2048

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
_PRINTABLE_ALG = re.compile(r"^[A-Za-z0-9+\-_]{1,20}$")


@dataclass(frozen=True)
class VerifyKey:
    """One public signature key from a JWKS, with what it may verify."""

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


@dataclass(frozen=True)
class Verified:
    """A JWS whose signature checked out: its header, its claims and the key that verified it."""

    header: dict[str, Any]
    claims: dict[str, Any]
    key: VerifyKey

    @property
    def alg(self) -> str:
        return str(self.header["alg"])


def parse_jwks(doc: object) -> tuple[VerifyKey, ...]:
    """Signature keys from a JWKS; keys we cannot or must not use are skipped, not fatal."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ProviderError("The provider's JWKS has no 'keys' list")
    keys: list[VerifyKey] = []
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
                    keys.append(VerifyKey(kid, str(kty), crv if isinstance(crv, str) else None, alg, key))
        if why is not None:
            log.info("JWKS: skipping key kid=%r kty=%r: %s", printable(str(kid), 64), printable(str(kty), 16), why)
    return tuple(keys)


class JWKS:
    """The signing keys of the issuer ``discovery`` describes, and signature checks with them.

    ``algorithms`` is the configured allow-list (``sso.id_token_signing_algs``); None or empty means
    what the provider advertises. ``clock`` is a monotonic clock in seconds.
    """

    max_age = JWKS_MAX_AGE
    forced_refetch_interval = JWKS_FORCED_REFETCH_INTERVAL

    def __init__(
        self,
        discovery: Discovery,
        http: ProviderHTTP,
        *,
        algorithms: Collection[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery = discovery
        self._http = http
        self._algorithms = tuple(algorithms or ())
        self._clock = clock
        self._keys: tuple[VerifyKey, ...] = ()
        self._uri: str | None = None  # the jwks_uri self._keys came from
        self._expires = 0.0
        self._forced_at: float | None = None
        self._flight: SingleFlight[tuple[VerifyKey, ...]] = SingleFlight()

    def allowed_algorithms(self, md: ProviderMetadata) -> tuple[str, ...]:
        if self._algorithms:
            allowed = tuple(a for a in self._algorithms if a in SUPPORTED_ID_TOKEN_ALGS)
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

    async def keys(self) -> tuple[VerifyKey, ...]:
        """The usable signature keys, cached; the previous keys are kept while a refetch fails."""
        uri = (await self.discovery.metadata()).jwks_uri
        if self._uri == uri and self._clock() < self._expires:
            return self._keys
        try:
            return await self._flight.run(lambda: self._fetch(uri))
        except ProviderError:
            if self._uri == uri and self._keys:
                log.warning("JWKS refresh failed; keeping the keys fetched before")
                return self._keys
            raise

    async def verify(self, token: str, what: str) -> Verified:
        """Check a compact JWS's signature. The alg is judged before any key is chosen (or fetched).

        ``what`` ("ID token", "Bearer token" ...) starts every ``TokenValidationError`` message.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
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
        allowed = self.allowed_algorithms(await self.discovery.metadata())
        if alg not in allowed or alg not in _ALG_KEYS:
            raise TokenValidationError(
                f"{what} algorithm '{_printable_alg(alg)}' is not allowed (accepted: {', '.join(allowed)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenValidationError(f"{what} key id (kid) is malformed")
        candidates = await self._keys_for(alg, kid, what)
        registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
        registry.max_header_length = 4096
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
            try:
                claims = json.loads(payload)
            except ValueError:
                claims = None
            if not isinstance(claims, dict):
                raise TokenValidationError(f"{what} payload is not a JSON object")
            return Verified(header, claims, candidate)
        raise TokenValidationError(f"{what} signature is invalid")

    async def _keys_for(self, alg: str, kid: str | None, what: str) -> list[VerifyKey]:
        found = _select_keys(await self.keys(), alg, kid, what)
        # Perhaps the provider rotated its keys since we fetched them.
        if isinstance(found, str) and found != _AMBIGUOUS and await self._refetch():
            found = _select_keys(self._keys, alg, kid, what)
        if isinstance(found, str):
            raise TokenValidationError(found if found != _AMBIGUOUS else _ambiguous_message(what))
        return found

    async def _refetch(self) -> bool:
        """A forced refetch for an unknown key: coalesced, and at most one per interval. True if done."""
        if not self._flight.running:
            now = self._clock()
            last = self._forced_at
            if last is not None and now - last < self.forced_refetch_interval:
                log.info("JWKS: unknown key, but the last forced refetch was %.0fs ago; not refetching", now - last)
                return False
            self._forced_at = now
            log.info("JWKS: refetching for an unknown key id")
        uri = (await self.discovery.metadata()).jwks_uri
        try:
            await self._flight.run(lambda: self._fetch(uri))
        except ProviderError as exc:
            log.warning("JWKS refetch failed: %s", exc.message)
            return False
        return True

    async def _fetch(self, uri: str) -> tuple[VerifyKey, ...]:
        answer = await self._http.request("GET", uri, "JWKS")
        if answer.status != 200:
            raise ProviderError(f"The provider's JWKS could not be fetched (HTTP {answer.status})")
        keys = parse_jwks(answer.json_object("The provider's JWKS"))
        if not keys:
            log.warning("JWKS at %s holds no usable signature key", uri)
        self._keys, self._uri = keys, uri
        self._expires = self._clock() + self.max_age
        return keys


_AMBIGUOUS = "ambiguous"


def _ambiguous_message(what: str) -> str:
    return f"{what} names no key id (kid) and the provider publishes several keys for its algorithm"


def _select_keys(keys: Collection[VerifyKey], alg: str, kid: str | None, what: str) -> list[VerifyKey] | str:
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


def _printable_alg(alg: object) -> str:
    return alg if isinstance(alg, str) and _PRINTABLE_ALG.match(alg) else "(unreadable)"
