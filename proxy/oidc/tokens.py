"""What a signed token's claims must say: ID tokens, access tokens, logout tokens and signed userinfo.

Pure functions over a ``jwks.Verified`` (a JWS whose signature already checked out). The registered
claims ``iss``, ``aud``, ``exp``, ``iat`` and ``nbf`` go through joserfc's ``JWTClaimsRegistry`` with
the configured clock skew as leeway; what OpenID Connect adds (``azp``, ``nonce``, ``at_hash``, ``sub``
and the logout-token rules) is checked here. Every refusal is a ``TokenValidationError`` whose message
starts with what the token is ("ID token ...") and never contains the token.

Specs: OpenID Connect Core 1.0 3.1.3.7 (ID token) and 5.3.2 (signed userinfo), RFC 9068 (JWT access
tokens), Back-Channel Logout 1.0 2.4 and 2.6.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Collection, Mapping
from typing import Any

from joserfc.errors import ClaimError, ExpiredTokenError, MissingClaimError
from joserfc.jwt import ClaimsOption, JWTClaimsRegistry

from proxy.b64 import b64url_encode
from proxy.errors import TokenValidationError
from proxy.oidc.jwks import Verified

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Logout tokens often carry no `exp`; refusing old ones bounds how long the caller must remember a `jti`.
LOGOUT_TOKEN_MAX_AGE = 600.0

# Claims that describe the authentication event; userinfo must not be able to rewrite them.
PROTECTED_CLAIMS = frozenset(
    {"iss", "aud", "sub", "exp", "iat", "nbf", "nonce", "azp", "sid", "auth_time", "acr", "amr",
     "at_hash", "c_hash", "jti"}
)  # fmt: skip
_LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})
# RFC 9068 2.1: a JWT access token says so in its header; RFC 9068 access tokens never carry these claims,
# which OpenID Connect defines for ID tokens only (Core 2, 3.1.3.6, 3.3.2.11; FAPI's s_hash).
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
# The claims handed to JWTClaimsRegistry, in the order a token's faults are reported.
_REGISTERED = ("iss", "aud", "iat", "exp", "nbf")


def check_id_token(
    verified: Verified,
    *,
    issuer: str,
    client_id: str,
    skew: float,
    nonce: str | None,
    access_token: str | None = None,
    expected_sub: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """OIDC Core 3.1.3.7. ``nonce=None`` only for refreshed ID tokens (Core 12.2), never at login."""
    what = "ID token"
    header, claims = verified.header, verified.claims
    if isinstance(header.get("typ"), str) and header["typ"].lower() in _LOGOUT_TYPES:
        raise TokenValidationError("ID token is a logout token")
    _check_registered(claims, what, issuer=issuer, audiences=[client_id], skew=skew, now=now)
    _check_azp(claims, what, client_id)
    sub = _check_sub(claims, what)
    if expected_sub is not None and sub != expected_sub:
        raise TokenValidationError("ID token subject (sub) differs from the signed-in user")
    if nonce is not None:
        got = claims.get("nonce")
        if got is None:
            raise TokenValidationError("ID token nonce is missing")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise TokenValidationError("ID token nonce does not match")
    at_hash = claims.get("at_hash")
    if at_hash is not None and access_token is not None:
        expected = token_hash(access_token, verified.alg, verified.key.crv)
        if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash.encode(), expected.encode()):
            raise TokenValidationError("ID token at_hash does not match the access token")
    return claims


def check_access_token(
    verified: Verified, *, issuer: str, audiences: Collection[str], skew: float, now: float | None = None
) -> dict[str, Any]:
    """A JWT bearer token from ``issuer`` meant for one of ``audiences``. ``exp`` is required; logout tokens
    are refused. Whether an ID token may stand in for an access token is the caller's rule (``is_id_token``)."""
    what = "Bearer token"
    typ, claims = verified.header.get("typ"), verified.claims
    if (isinstance(typ, str) and typ.lower() in _LOGOUT_TYPES) or "events" in claims:
        raise TokenValidationError(f"{what} is a logout token")
    _check_registered(claims, what, issuer=issuer, audiences=audiences, skew=skew, now=now,
                      audience_error=f"{what} is not meant for this console (audience)")  # fmt: skip
    _check_sub(claims, what)
    return claims


def is_id_token(header: Mapping[str, Any], claims: Mapping[str, Any], client_id: str) -> bool:
    """Whether a JWT from the login client's issuer is one of its ID tokens rather than an access token.

    1. ``nonce``, ``at_hash``, ``c_hash`` or ``s_hash``: an ID token, whatever else it says.
    2. ``typ`` ``at+jwt``: an access token (RFC 9068 2.1 requires the header; 4 has resource servers check it).
    3. ``scope`` or ``scp``: an access token (JWT access tokens from before RFC 9068: Keycloak, Okta, Entra ID).
    4. None of these: an ID token when ``aud`` names the login client, as every ID token issued to it does
       (Core 2). A refreshed ID token usually has no nonce (Core 12.2 says it SHOULD NOT) and ``at_hash`` is
       optional in the code flow, so such a token is exactly what sign-out would show; a token without
       markers that was minted for another audience (``sso.api_audiences``) is an access token.

    Pure: it judges header and claims as given, so it works on a token not verified yet (to refuse it
    early) and on a verified one alike.
    """
    if any(name in claims for name in _ID_TOKEN_CLAIMS):
        return True
    typ = header.get("typ")
    if isinstance(typ, str) and typ.lower() in _ACCESS_TOKEN_TYPES:
        return False
    if "scope" in claims or "scp" in claims:
        return False
    aud = claims.get("aud")
    return aud == client_id or (isinstance(aud, list) and client_id in aud)


def check_logout_token(
    verified: Verified, *, issuer: str, client_id: str, skew: float, now: float | None = None
) -> dict[str, Any]:
    """Back-Channel Logout 1.0 section 2.6. Replay (``jti``) tracking is the caller's job."""
    what = "Logout token"
    typ, claims = verified.header.get("typ"), verified.claims
    # 2.4 recommends explicit typing; "JWT" (or none) is what providers sent before that was added.
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _LOGOUT_TYPES | {"jwt"}):
        raise TokenValidationError("Logout token has the wrong type (typ)")
    now = time.time() if now is None else now
    # Logout tokens need no exp (2.4): "too old" below bounds them instead.
    required = ("iss", "aud", "iat")
    _check_registered(claims, what, issuer=issuer, audiences=[client_id], skew=skew, now=now, required=required)
    _check_azp(claims, what, client_id)
    if claims["iat"] < now - LOGOUT_TOKEN_MAX_AGE - skew:
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


def check_signed_userinfo(verified: Verified, *, issuer: str, client_id: str) -> dict[str, Any]:
    """Core 5.3.2: ``iss`` and ``aud`` are checked when present; no nonce or expiry (not an authentication
    event). Whether ``sub`` is the signed-in user's is the caller's check."""
    what = "Userinfo response"
    info = verified.claims
    if "iss" in info or "aud" in info:
        names = ("iss", "aud")
        _check_registered(info, what, issuer=issuer, audiences=[client_id], checked=names, required=names)
        _check_azp(info, what, client_id)
    return info


def merge_userinfo(id_claims: Mapping[str, Any], userinfo: Mapping[str, Any]) -> dict[str, Any]:
    """ID token claims plus userinfo; userinfo wins for profile claims but cannot touch the event claims."""
    merged = dict(id_claims)
    for name, value in userinfo.items():
        if name not in PROTECTED_CLAIMS:
            merged[name] = value
    return merged


def token_hash(token: str, alg: str, crv: object) -> str:
    """Core 3.1.3.6 at_hash: the left half of the hash the JWS algorithm uses, base64url-encoded."""
    data = token.encode("ascii", "replace")
    if alg == "EdDSA":
        digest = hashlib.shake_256(data).digest(114) if crv == "Ed448" else hashlib.sha512(data).digest()
    else:
        digest = hashlib.new("sha" + alg[-3:], data).digest()
    return b64url_encode(digest[: len(digest) // 2])


# --------------------------------------------------------------------------------------------------


def _check_registered(
    claims: Mapping[str, Any],
    what: str,
    *,
    issuer: str,
    audiences: Collection[str],
    skew: float = 0.0,
    now: float | None = None,
    checked: tuple[str, ...] = _REGISTERED,
    required: tuple[str, ...] = ("iss", "aud", "iat", "exp"),
    audience_error: str | None = None,
) -> None:
    """``iss`` is ``issuer`` and ``aud`` names one of ``audiences``; ``iat``, ``exp`` and ``nbf`` are not in
    the future / past beyond ``skew``. Of the ``checked`` claims, the ``required`` ones must be present."""
    options: dict[str, ClaimsOption] = {name: {"essential": name in required} for name in checked}
    options["iss"]["value"] = issuer
    options["aud"]["values"] = list(audiences)
    # The registry's clock counts whole seconds (now and the skew are truncated; claims may be fractional).
    # A null claim counts as absent, as it always did here.
    registry = JWTClaimsRegistry(now=int(time.time() if now is None else now), leeway=int(skew), **options)
    try:
        registry.validate({name: claims[name] for name in checked if claims.get(name) is not None})
    except ClaimError as exc:
        raise TokenValidationError(_message(exc, claims, what, audience_error)) from None


def _message(exc: ClaimError, claims: Mapping[str, Any], what: str, audience_error: str | None) -> str:
    """Our words for the registry's refusal, judged from the claim's value, not joserfc's wording."""
    names = exc.claim.split(",")  # MissingClaimError lists every missing essential claim
    name = next((n for n in _REGISTERED if n in names), names[0])
    value = claims.get(name)
    if name == "iss":
        return f"{what} issuer does not match"
    if name == "aud":
        if isinstance(exc, MissingClaimError) or not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(a, str) for a in value))
        ):
            return f"{what} audience (aud) is missing or malformed"
        return audience_error or f"{what} audience does not include this client"
    if isinstance(exc, MissingClaimError):
        return {"iat": f"{what} has no issue time (iat)", "exp": f"{what} has no expiry (exp)"}.get(
            name, f"{what} has no '{name}'"
        )
    if name in ("iat", "exp", "nbf") and not _is_numeric_date(value):
        return f"{what} claim '{name}' is not a number"
    if isinstance(exc, ExpiredTokenError) or name == "exp":
        return f"{what} has expired"
    if name == "iat":
        return f"{what} was issued in the future (check the clocks)"
    if name == "nbf":
        return f"{what} is not valid yet (nbf)"
    return f"{what} claim '{name}' is invalid"


def _is_numeric_date(value: object) -> bool:
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    )


def _check_azp(claims: Mapping[str, Any], what: str, client_id: str) -> None:
    """Core 3.1.3.7 (3)-(5): with several audiences, the authorized party must be this client."""
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    azp = claims.get("azp")
    if len(audiences) > 1 and azp is None:
        raise TokenValidationError(f"{what} has several audiences but no authorized party (azp)")
    if azp is not None and azp != client_id:
        raise TokenValidationError(f"{what} authorized party (azp) is not this client")


def _check_sub(claims: Mapping[str, Any], what: str) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenValidationError(f"{what} has no subject (sub)")
    return sub
