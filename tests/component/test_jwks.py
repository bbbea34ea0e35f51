"""proxy.oidc.jwks: the key set's cache and refetch rules, and JWS verification (algorithm, key, signature),
against badop over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from proxy.errors import ProviderError, TokenValidationError
from proxy.oidc.client import OIDCClient
from proxy.oidc.discovery import Discovery
from proxy.oidc.http import ProviderHTTP
from proxy.oidc.jwks import JWKS, MAX_TOKEN_CHARS, parse_jwks
from support.badop import BadOP
from support.rp import FakeClock, Flow, MakeRP, rejected

pytest_plugins = ["support.rp_fixtures"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jwks(op: BadOP, http_session: aiohttp.ClientSession, clock: FakeClock) -> JWKS:
    http = ProviderHTTP(http_session, 5.0)
    return JWKS(Discovery(op.issuer, http), http, clock=clock)


def padded_logout_token(op: BadOP, low: int, high: int) -> str:
    """A valid logout token of ``low`` to ``high`` characters (a padding claim fills it up)."""
    base = len(op.mint_logout_token({"pad": ""}))
    pad = (low - base) * 3 // 4
    for extra in range(pad - 4, pad + 8):
        token = op.mint_logout_token({"pad": "x" * extra})
        if low <= len(token) <= high:
            return token
    raise AssertionError(f"no padding gives a token of {low} to {high} characters")


# --------------------------------------------------------------------------------------------------
# The key set


def test_parse_jwks_skips_unusable_keys_instead_of_failing(op: BadOP) -> None:
    op.set(jwks_include_unusable=True)
    keys = parse_jwks(op.jwks())
    kids = {k.kid for k in keys}
    assert kids == {"rsa-1", "ec256-1", "ec384-1", "ec521-1", "ed-1"}
    with pytest.raises(ProviderError, match="no 'keys' list"):
        parse_jwks({"keys": "nope"})


async def test_keys_are_the_usable_keys_of_the_jwks_the_discovery_document_names(jwks: JWKS, op: BadOP) -> None:
    op.set(jwks_include_unusable=True)
    assert {k.kid for k in await jwks.keys()} == {"rsa-1", "ec256-1", "ec384-1", "ec521-1", "ed-1"}
    assert op.requests["jwks"] == 1


async def test_keys_are_cached_until_max_age_and_then_fetched_again(jwks: JWKS, op: BadOP, clock: FakeClock) -> None:
    await asyncio.gather(*(jwks.keys() for _ in range(5)))
    clock.advance(jwks.max_age - 1)
    await jwks.keys()
    assert op.requests["jwks"] == 1
    clock.advance(1)
    await jwks.keys()
    assert op.requests["jwks"] == 2


async def test_keys_fetched_before_are_kept_while_the_jwks_cannot_be_fetched(
    jwks: JWKS, op: BadOP, clock: FakeClock
) -> None:
    first = await jwks.keys()
    clock.advance(jwks.max_age)
    op.set(jwks_status=503)
    assert await jwks.keys() == first
    assert op.requests["jwks"] == 2


async def test_a_jwks_that_cannot_be_fetched_the_first_time_is_a_provider_error(jwks: JWKS, op: BadOP) -> None:
    op.set(jwks_status=500)
    with pytest.raises(ProviderError, match=r"JWKS could not be fetched \(HTTP 500\)"):
        await jwks.keys()


async def test_unusable_keys_in_the_jwks_are_skipped_not_fatal(flow: Flow, op: BadOP) -> None:
    op.set(jwks_include_unusable=True, alg="ES256")
    assert (await flow.login()).claims["sub"] == "user-1"


# --------------------------------------------------------------------------------------------------
# Choosing the key


async def test_token_without_kid_uses_the_single_key_usable_for_its_alg(flow: Flow, op: BadOP) -> None:
    op.set(include_kid=False, jwks_include_unusable=True)
    assert (await flow.login()).claims["sub"] == "user-1"


async def test_token_without_kid_is_rejected_when_several_keys_fit(flow: Flow, op: BadOP) -> None:
    op.set(include_kid=False, jwks_extra_keys=[op.public_jwk("rogue")])
    await rejected(flow, "no key id .* several keys")


async def test_rotated_signing_key_is_found_by_one_jwks_refetch(flow: Flow, op: BadOP) -> None:
    await flow.login()
    assert op.requests["jwks"] == 1
    op.set(sign_with="rotated")
    assert (await flow.login()).claims["sub"] == "user-1"
    assert op.requests["jwks"] == 2


async def test_flood_of_unknown_kids_causes_at_most_one_extra_jwks_fetch(rp: OIDCClient, flow: Flow, op: BadOP) -> None:
    await flow.login()
    assert op.requests["jwks"] == 1
    tokens: list[str] = []
    for i in range(40):
        op.set(kid=f"made-up-{i}")
        tokens.append(op.mint_id_token(nonce="n"))
    concurrent = await asyncio.gather(
        *(rp.validate_id_token(t, nonce="n") for t in tokens[:20]), return_exceptions=True
    )
    for t in tokens[20:]:
        with pytest.raises(TokenValidationError, match="unknown key"):
            await rp.validate_id_token(t, nonce="n")
    assert all(isinstance(r, TokenValidationError) and "unknown key" in str(r) for r in concurrent)
    assert op.requests["jwks"] == 2


async def test_forced_jwks_refetch_is_allowed_again_after_the_interval(jwks: JWKS, op: BadOP, clock: FakeClock) -> None:
    token = op.sign({"iss": op.issuer}, alg="RS256", kid="made-up")

    async def attempt() -> None:
        with pytest.raises(TokenValidationError, match="unknown key"):
            await jwks.verify(token, "Token")

    await attempt()
    assert op.requests["jwks"] == 2  # the first fetch, then one forced refetch
    clock.advance(jwks.forced_refetch_interval - 1)
    await attempt()
    assert op.requests["jwks"] == 2
    clock.advance(1)
    await attempt()
    assert op.requests["jwks"] == 3


async def test_header_alg_naming_a_key_of_another_type_is_rejected(flow: Flow, op: BadOP) -> None:
    """The key must fit the alg in the header: an ES256 token cannot be checked with the RSA key."""
    op.set(alg="ES256", kid="rsa-1")
    await rejected(flow, "key type does not fit its algorithm ES256")


async def test_es384_token_naming_a_p256_key_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(alg="ES384", kid="ec256-1")
    await rejected(flow, "key type does not fit its algorithm ES384")


# --------------------------------------------------------------------------------------------------
# The algorithm


async def test_id_token_with_alg_none_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(alg="none")
    await rejected(flow, "ID token algorithm 'none' is not allowed")


async def test_hs256_token_keyed_with_the_providers_public_key_is_rejected(flow: Flow, op: BadOP) -> None:
    """Algorithm confusion: the RSA public key (which anyone can fetch) used as an HMAC secret."""
    op.set(alg="HS256-public-key")
    await rejected(flow, "ID token algorithm 'HS256' is not allowed")
    assert op.requests["jwks"] == 0  # judged on the alg alone, before any key was looked at


async def test_hs256_token_keyed_with_the_client_secret_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(alg="HS256", discovery_overrides={"id_token_signing_alg_values_supported": ["HS256", "RS256"]})
    await rejected(flow, "algorithm 'HS256' is not allowed")


async def test_algorithm_the_provider_does_not_advertise_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(alg="ES256", discovery_overrides={"id_token_signing_alg_values_supported": ["RS256"]})
    await rejected(flow, r"ID token algorithm 'ES256' is not allowed \(accepted: RS256\)")


async def test_configured_allow_list_rejects_other_advertised_algorithms(
    make_rp: MakeRP, http_session: Any, op: BadOP
) -> None:
    flow = Flow(make_rp(id_token_signing_algs=("ES256",)), http_session)
    await rejected(flow, "ID token algorithm 'RS256' is not allowed")


async def test_configured_algorithm_allow_list_accepts_its_algorithms(
    make_rp: MakeRP, http_session: Any, op: BadOP
) -> None:
    op.set(alg="ES256", discovery_overrides={"id_token_signing_alg_values_supported": ["RS256"]})
    flow = Flow(make_rp(id_token_signing_algs=("ES256",)), http_session)
    assert (await flow.login()).claims["sub"] == "user-1"


async def test_provider_offering_no_acceptable_algorithm_is_a_provider_error(flow: Flow, op: BadOP) -> None:
    op.set(discovery_overrides={"id_token_signing_alg_values_supported": ["HS256", "none"]})
    await rejected(flow, "offers no ID token signing algorithm the sidecar accepts", ProviderError)


# --------------------------------------------------------------------------------------------------
# The signature and the token's shape


async def test_id_token_signed_by_a_rogue_key_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(sign_with="rogue")
    await rejected(flow, "ID token signature is invalid")
    assert op.requests["userinfo"] == 0


async def test_logout_token_signed_by_a_rogue_key_is_rejected(rp: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match="Logout token signature is invalid"):
        await rp.validate_logout_token(op.mint_logout_token(sign_with="rogue"))


async def test_logout_token_with_alg_none_is_rejected(rp: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match="algorithm 'none' is not allowed"):
        await rp.validate_logout_token(op.mint_logout_token(alg="none"))


@pytest.mark.parametrize("garbage", ["", "a.b", "a.b.c", "x" * 70000, "a.b.c.d.e"])
async def test_malformed_tokens_are_rejected_cleanly(rp: OIDCClient, garbage: str) -> None:
    with pytest.raises(TokenValidationError, match="Logout token"):
        await rp.validate_logout_token(garbage)


async def test_a_token_up_to_the_size_cap_is_read_and_a_longer_one_refused_unread(rp: OIDCClient, op: BadOP) -> None:
    assert (await rp.validate_logout_token(padded_logout_token(op, MAX_TOKEN_CHARS - 3, MAX_TOKEN_CHARS)))["pad"]
    op.reset()
    with pytest.raises(TokenValidationError, match="Logout token is missing or malformed"):
        await rp.validate_logout_token(padded_logout_token(op, MAX_TOKEN_CHARS + 1, MAX_TOKEN_CHARS + 4))
    assert op.requests["discovery"] == op.requests["jwks"] == 0
