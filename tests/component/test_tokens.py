"""proxy.oidc.tokens: what ID, access and logout tokens and signed userinfo must claim.

First through a real login (and real logout tokens) against badop, which signs tokens with the claims
each case gets wrong; then the rules alone, on verified tokens built by hand with a fixed clock, for
the exact boundaries of the clock skew.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from joserfc.jwk import ECKey

from proxy.errors import TokenValidationError
from proxy.oidc.client import OIDCClient
from proxy.oidc.jwks import Verified, parse_jwks
from proxy.oidc.tokens import (
    LOGOUT_TOKEN_MAX_AGE,
    check_access_token,
    check_id_token,
    check_logout_token,
    check_signed_userinfo,
    is_id_token,
    merge_userinfo,
)
from support.badop import BadOP
from support.rp import Flow, rejected

pytest_plugins = ["support.rp_fixtures"]


# --------------------------------------------------------------------------------------------------
# ID tokens at login


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"iss": "https://evil.example.com"}, "ID token issuer does not match"),
        ({"iss": None}, "ID token issuer does not match"),
        ({"aud": "another-client"}, "ID token audience does not include this client"),
        ({"aud": None}, r"ID token audience \(aud\) is missing or malformed"),
        ({"aud": ["sidecar", 7]}, r"ID token audience \(aud\) is missing or malformed"),
        ({"aud": ["sidecar", "other"]}, "several audiences but no authorized party"),
        ({"azp": "another-client"}, r"authorized party \(azp\) is not this client"),
        ({"sub": None}, r"ID token has no subject \(sub\)"),
        ({"sub": ""}, r"ID token has no subject \(sub\)"),
        ({"iat": None}, r"ID token has no issue time \(iat\)"),
        ({"exp": None}, r"ID token has no expiry \(exp\)"),
        ({"nonce": None}, "ID token nonce is missing"),
        ({"nonce": "someone-elses-nonce"}, "ID token nonce does not match"),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "at_hash does not match the access token"),
        ({"exp": "tomorrow"}, "claim 'exp' is not a number"),
        ({"nbf": int(time.time()) + 3600}, r"ID token is not valid yet \(nbf\)"),
    ],
)
async def test_id_token_with_bad_claims_is_rejected(
    flow: Flow, op: BadOP, override: dict[str, Any], match: str
) -> None:
    op.set(id_token_claims_override=override)
    await rejected(flow, match)
    assert op.requests["userinfo"] == 0


async def test_id_token_expired_within_the_clock_skew_is_accepted(flow: Flow, op: BadOP) -> None:
    op.set(id_token_exp_in=-30, id_token_iat_offset=30)  # skew is 60s
    assert (await flow.login()).claims["sub"] == "user-1"


async def test_id_token_expired_beyond_the_clock_skew_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(id_token_exp_in=-120, id_token_iat_offset=-400)
    await rejected(flow, "ID token has expired")


async def test_id_token_issued_in_the_future_beyond_the_skew_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(id_token_iat_offset=300)
    await rejected(flow, "issued in the future")


async def test_several_audiences_with_azp_of_this_client_are_accepted(flow: Flow, op: BadOP) -> None:
    op.set(id_token_claims_override={"aud": [op.client_id, "other"], "azp": op.client_id})
    assert (await flow.login()).claims["azp"] == op.client_id


async def test_logout_token_is_not_accepted_as_an_id_token(rp: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match="ID token is a logout token"):
        await rp.validate_id_token(op.mint_logout_token(), nonce="n")


def test_userinfo_cannot_override_authentication_claims() -> None:
    id_claims = {"iss": "a", "sub": "1", "aud": "c", "sid": "s", "nonce": "n", "exp": 2, "name": "old"}
    merged = merge_userinfo(id_claims, {"iss": "evil", "sub": "2", "sid": "x", "exp": 9, "name": "new", "email": "e"})
    assert merged == {**id_claims, "name": "new", "email": "e"}


# --------------------------------------------------------------------------------------------------
# Back-channel logout tokens


async def test_good_logout_token_is_accepted(rp: OIDCClient, op: BadOP) -> None:
    claims = await rp.validate_logout_token(op.mint_logout_token({"sid": "sid-1"}))
    assert claims["sid"] == "sid-1" and claims["sub"] == "user-1" and claims["jti"]


async def test_logout_token_with_only_sub_or_only_sid_is_accepted(rp: OIDCClient, op: BadOP) -> None:
    await rp.validate_logout_token(op.mint_logout_token({"sid": None}))
    await rp.validate_logout_token(op.mint_logout_token({"sub": None}))


async def test_logout_token_typed_jwt_is_accepted_for_older_providers(rp: OIDCClient, op: BadOP) -> None:
    await rp.validate_logout_token(op.mint_logout_token(typ="JWT"))
    await rp.validate_logout_token(op.mint_logout_token(typ=None))


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        ({"events": None}, "no back-channel logout event"),
        ({"events": {"http://schemas.openid.net/event/other": {}}}, "no back-channel logout event"),
        ({"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}}, "is not a JSON object"),
        ({"events": ["http://schemas.openid.net/event/backchannel-logout"]}, "no back-channel logout event"),
        ({"nonce": "n"}, "must not contain a nonce"),
        ({"sid": None, "sub": None}, "neither sid nor sub"),
        ({"sid": ""}, "sid is not a non-empty string"),
        ({"sub": 42}, "sub is not a non-empty string"),
        ({"aud": "another-client"}, "audience does not include this client"),
        ({"iss": "https://evil.example.com"}, "issuer does not match"),
        ({"jti": None}, "has no jti"),
        ({"iat": None}, r"no issue time \(iat\)"),
        ({"iat": int(time.time()) - 3600, "exp": None}, "too old"),
        ({"exp": int(time.time()) - 600}, "has expired"),
    ],
)
async def test_bad_logout_token_is_rejected(rp: OIDCClient, op: BadOP, claims: dict[str, Any], match: str) -> None:
    with pytest.raises(TokenValidationError, match=f"^Logout token .*{match}"):
        await rp.validate_logout_token(op.mint_logout_token(claims))


async def test_logout_token_of_another_type_is_rejected(rp: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match=r"wrong type \(typ\)"):
        await rp.validate_logout_token(op.mint_logout_token(typ="at+jwt"))


# --------------------------------------------------------------------------------------------------
# The rules alone: a fixed clock, a skew of 60 s, tokens built by hand

NOW = 1_700_000_000
SKEW = 60
ISSUER = "https://idp.example.com/realms/main"
CLIENT_ID = "console"
KEY = parse_jwks({"keys": [ECKey.generate_key("P-256", parameters={"kid": "k"}).as_dict(private=False)]})[0]
ABSENT = object()


def verified(typ: str | None = "JWT", **changes: Any) -> Verified:
    """A verified token with good ID token claims, changed by ``changes`` (``ABSENT`` removes one)."""
    claims: dict[str, Any] = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "u-1", "iat": NOW, "exp": NOW + 300}
    claims.update(changes)
    header = {"alg": "ES256"} if typ is None else {"alg": "ES256", "typ": typ}
    return Verified(header, {k: v for k, v in claims.items() if v is not ABSENT}, KEY)


def id_token(**changes: Any) -> dict[str, Any]:
    return check_id_token(verified(**changes), issuer=ISSUER, client_id=CLIENT_ID, skew=SKEW, nonce=None, now=NOW)


def access_token(audiences: tuple[str, ...] = (CLIENT_ID,), **changes: Any) -> dict[str, Any]:
    token = verified(typ="at+jwt", **changes)
    return check_access_token(token, issuer=ISSUER, audiences=audiences, skew=SKEW, now=NOW)


def logout_token(**changes: Any) -> dict[str, Any]:
    changes = {"jti": "j-1", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}, **changes}
    return check_logout_token(
        verified(typ="logout+jwt", **changes), issuer=ISSUER, client_id=CLIENT_ID, skew=SKEW, now=NOW
    )


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"exp": NOW - SKEW + 1}, None),
        ({"exp": NOW - SKEW}, "ID token has expired"),
        ({"iat": NOW + SKEW}, None),
        ({"iat": NOW + SKEW + 1}, r"ID token was issued in the future \(check the clocks\)"),
        ({"nbf": NOW + SKEW}, None),
        ({"nbf": NOW + SKEW + 1}, r"ID token is not valid yet \(nbf\)"),
        ({"nbf": None}, None),  # a null claim counts as absent
        ({"exp": NOW + 0.5}, None),  # NumericDate may be fractional
    ],
)
def test_time_claims_are_judged_with_the_clock_skew_to_the_second(changes: dict[str, Any], refusal: str | None) -> None:
    if refusal is None:
        assert id_token(**changes)["sub"] == "u-1"
    else:
        with pytest.raises(TokenValidationError, match=f"^{refusal}$"):
            id_token(**changes)


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [True, "1700000000", math.nan, math.inf, [NOW]])
def test_a_time_claim_that_is_not_a_finite_number_is_refused(name: str, value: object) -> None:
    with pytest.raises(TokenValidationError, match=f"^ID token claim '{name}' is not a number$"):
        id_token(**{name: value})


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"exp": None}, r"ID token has no expiry \(exp\)"),
        ({"exp": ABSENT}, r"ID token has no expiry \(exp\)"),
        ({"iat": ABSENT}, r"ID token has no issue time \(iat\)"),
        ({"iss": ABSENT}, "ID token issuer does not match"),
        ({"iss": ISSUER + "/"}, "ID token issuer does not match"),
        ({"iss": [ISSUER]}, "ID token issuer does not match"),
        ({"aud": ABSENT}, r"ID token audience \(aud\) is missing or malformed"),
        ({"aud": {"console": True}}, r"ID token audience \(aud\) is missing or malformed"),
        ({"aud": []}, "ID token audience does not include this client"),
        ({"aud": ""}, "ID token audience does not include this client"),
        ({"aud": "Console"}, "ID token audience does not include this client"),
    ],
)
def test_issuer_audience_and_required_times(changes: dict[str, Any], refusal: str) -> None:
    with pytest.raises(TokenValidationError, match=f"^{refusal}$"):
        id_token(**changes)


def test_an_id_token_with_this_client_among_its_audiences_needs_azp() -> None:
    assert id_token(aud=["other", CLIENT_ID], azp=CLIENT_ID)["azp"] == CLIENT_ID
    with pytest.raises(TokenValidationError, match="several audiences but no authorized party"):
        id_token(aud=["other", CLIENT_ID])


def test_an_access_token_needs_one_of_the_configured_audiences_and_no_azp() -> None:
    audiences = ("api://console", "api://other")
    assert access_token(audiences, aud=["https://elsewhere", "api://other"])["sub"] == "u-1"
    with pytest.raises(TokenValidationError, match=r"^Bearer token is not meant for this console \(audience\)$"):
        access_token(audiences, aud=CLIENT_ID)
    with pytest.raises(TokenValidationError, match=r"^Bearer token has no expiry \(exp\)$"):
        access_token(exp=ABSENT)
    with pytest.raises(TokenValidationError, match=r"^Bearer token is a logout token$"):
        access_token(events={})


def test_a_logout_token_needs_no_expiry_but_must_not_be_older_than_the_max_age() -> None:
    oldest = NOW - int(LOGOUT_TOKEN_MAX_AGE) - SKEW
    assert logout_token(exp=ABSENT, iat=oldest)["jti"] == "j-1"
    with pytest.raises(TokenValidationError, match=r"^Logout token is too old$"):
        logout_token(exp=ABSENT, iat=oldest - 1)


def test_signed_userinfo_is_checked_for_issuer_and_audience_only_when_it_names_them() -> None:
    profile = verified(iss=ABSENT, aud=ABSENT, iat=ABSENT, exp=NOW - 3600)
    assert check_signed_userinfo(profile, issuer=ISSUER, client_id=CLIENT_ID)["sub"] == "u-1"
    assert check_signed_userinfo(verified(exp=NOW - 3600), issuer=ISSUER, client_id=CLIENT_ID)["sub"] == "u-1"
    with pytest.raises(TokenValidationError, match=r"^Userinfo response issuer does not match$"):
        check_signed_userinfo(verified(iss="https://evil.example"), issuer=ISSUER, client_id=CLIENT_ID)
    with pytest.raises(TokenValidationError, match=r"^Userinfo response audience \(aud\) is missing or malformed$"):
        check_signed_userinfo(verified(aud=ABSENT), issuer=ISSUER, client_id=CLIENT_ID)


# --------------------------------------------------------------------------------------------------
# ID token or access token: the rule in README "API clients"

AT = {"typ": "at+jwt"}
JWT = {"typ": "JWT"}


@pytest.mark.parametrize(
    ("header", "claims", "id_token"),
    [
        # 1. Claims only ID tokens carry win over everything else.
        (AT, {"aud": "api", "nonce": "n"}, True),
        (AT, {"aud": "api", "at_hash": "h", "scope": "x"}, True),
        (JWT, {"aud": "api", "c_hash": "h"}, True),
        (JWT, {"aud": "api", "s_hash": "h", "scp": ["x"]}, True),
        # 2. RFC 9068's typ, in either spelling and any case.
        (AT, {"aud": "client"}, False),
        ({"typ": "application/AT+JWT"}, {"aud": ["client", "x"]}, False),
        # 3. Scope, as JWT access tokens carried it before RFC 9068.
        (JWT, {"aud": "client", "scope": "openid"}, False),
        ({}, {"aud": "client", "scp": "read"}, False),
        # 4. No marker: an ID token when it is for the login client, as a refreshed ID token is.
        (JWT, {"aud": "client", "sid": "s", "auth_time": 1}, True),
        ({}, {"aud": ["x", "client"], "azp": "client"}, True),
        (JWT, {"aud": "api://console", "roles": ["reader"]}, False),
        (JWT, {"aud": ["api://console", "clientX"]}, False),
        ({"typ": "logout+jwt"}, {"aud": "client"}, True),  # refused anyway as a logout token
    ],
)
def test_an_id_token_is_told_from_an_access_token_by_the_token_itself(header, claims, id_token):
    assert is_id_token(header, claims, "client") is id_token
