"""proxy.oidc against badop, a real (misbehaving) OpenID Provider over HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.errors import LoginError, ProviderError, TokenValidationError
from proxy.oidc import (
    LoginResult,
    OIDCClient,
    ProviderMetadata,
    TokenEndpointError,
    TokenSet,
    merge_userinfo,
    new_pkce,
    parse_jwks,
    pkce_challenge,
    random_token,
)
from proxy.settings import Secret, SSOSettings
from support import REPO
from support.badop import BadOP, running_badop
from support.waiting import eventually

REDIRECT_URI = "https://console.example.com/oauth2/callback"
MakeClient = Callable[..., OIDCClient]


# --------------------------------------------------------------------------------------------------
# Fixtures: one badop for the session, reset for every test; a fresh client (and caches) per test


@pytest.fixture(scope="session")
async def badop_server() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/test") as op:
        yield op


@pytest.fixture
def op(badop_server: BadOP) -> BadOP:
    badop_server.reset()
    return badop_server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_client(op: BadOP, http: aiohttp.ClientSession) -> MakeClient:
    def make(**sso_changes: Any) -> OIDCClient:
        fields: dict[str, Any] = {
            "issuer_url": op.issuer,
            "client_id": op.client_id,
            "client_secret": Secret(op.client_secret),
            "http_timeout": 5.0,
        }
        fields.update(sso_changes)
        return OIDCClient(SSOSettings(**fields), REDIRECT_URI, http)

    return make


@pytest.fixture
def client(make_client: MakeClient) -> OIDCClient:
    return make_client()


class Flow:
    """What the browser and the callback handler would do, step by step."""

    def __init__(self, client: OIDCClient, http: aiohttp.ClientSession) -> None:
        self.client = client
        self.http = http

    async def authorize(self) -> tuple[str, str, str, dict[str, str]]:
        """Returns ``(code, code_verifier, nonce, callback query)``; checks state and RFC 9207 iss."""
        state, nonce = random_token(), random_token()
        verifier, challenge = new_pkce()
        url = await self.client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
        async with self.http.get(url, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            query = dict(URL(resp.headers["Location"]).query)
        assert query["state"] == state
        self.client.check_authorization_response_iss(query.get("iss"), await self.client.metadata())
        return query["code"], verifier, nonce, query

    async def login(self) -> LoginResult:
        code, verifier, nonce, _ = await self.authorize()
        return await self.client.login(code=code, code_verifier=verifier, nonce=nonce)


@pytest.fixture
def flow(client: OIDCClient, http: aiohttp.ClientSession) -> Flow:
    return Flow(client, http)


async def rejected(flow: Flow, match: str, exc: type[Exception] = TokenValidationError) -> Exception:
    """Run a login that must fail with ``exc`` matching ``match``; the message must not leak anything."""
    code, verifier, nonce, _ = await flow.authorize()
    with pytest.raises(exc, match=match) as info:
        await flow.client.login(code=code, code_verifier=verifier, nonce=nonce)
    assert_user_safe(str(info.value), code, verifier, nonce)
    return info.value


def assert_user_safe(message: str, *secrets: str) -> None:
    from support.badop import DEFAULT_CLIENT_SECRET

    for value in (*secrets, DEFAULT_CLIENT_SECRET):
        assert value not in message
    assert "eyJ" not in message  # no JWT fragment


# --------------------------------------------------------------------------------------------------
# Pure helpers


def test_pkce_challenge_matches_the_rfc7636_appendix_b_vector() -> None:
    assert (
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_new_pkce_pairs_a_43_character_verifier_with_its_s256_challenge() -> None:
    verifier, challenge = new_pkce()
    assert len(verifier) == 43
    assert challenge == pkce_challenge(verifier)
    assert new_pkce()[0] != verifier


def test_random_token_is_url_safe_without_padding() -> None:
    token = random_token(32)
    assert len(token) == 43
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


DOC = {
    "issuer": "https://idp.example.com/realms/main",
    "authorization_endpoint": "https://idp.example.com/auth",
    "token_endpoint": "https://idp.example.com/token",
    "jwks_uri": "https://idp.example.com/jwks",
}


def test_metadata_missing_a_required_field_names_that_field() -> None:
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "issuer"):
        doc = {k: v for k, v in DOC.items() if k != name}
        with pytest.raises(ProviderError, match=f"'{name}'"):
            ProviderMetadata.from_document(doc, expected_issuer=DOC["issuer"])


def test_metadata_refuses_plain_http_endpoints_for_an_https_issuer() -> None:
    doc = {**DOC, "token_endpoint": "http://idp.example.com/token"}
    with pytest.raises(ProviderError, match="'token_endpoint' must be an https:// URL"):
        ProviderMetadata.from_document(doc, expected_issuer=DOC["issuer"])


def test_metadata_allows_http_endpoints_only_on_loopback_for_a_loopback_issuer() -> None:
    local = {k: v.replace("https://idp.example.com", "http://127.0.0.1:9000") for k, v in DOC.items()}
    assert ProviderMetadata.from_document(local, expected_issuer=local["issuer"]).jwks_uri.startswith("http://")
    with pytest.raises(ProviderError, match="'jwks_uri' must be an https:// URL"):
        ProviderMetadata.from_document(
            {**local, "jwks_uri": "http://evil.example/jwks"}, expected_issuer=local["issuer"]
        )


def test_metadata_issuer_must_match_exactly_even_the_trailing_slash() -> None:
    with pytest.raises(ProviderError, match="does not match the configured issuer_url"):
        ProviderMetadata.from_document(DOC, expected_issuer=DOC["issuer"] + "/")


def test_rfc9207_iss_in_the_authorization_response_must_match_the_issuer(client: OIDCClient) -> None:
    md = ProviderMetadata.from_document(DOC, expected_issuer=DOC["issuer"])
    client.check_authorization_response_iss(DOC["issuer"], md)
    client.check_authorization_response_iss(None, md)  # the provider does not promise iss
    with pytest.raises(LoginError, match="issuer"):
        client.check_authorization_response_iss("https://attacker.example", md)


def test_rfc9207_iss_is_required_when_the_provider_advertises_it(client: OIDCClient) -> None:
    doc = {**DOC, "authorization_response_iss_parameter_supported": True}
    md = ProviderMetadata.from_document(doc, expected_issuer=DOC["issuer"])
    with pytest.raises(LoginError, match="no 'iss' parameter"):
        client.check_authorization_response_iss(None, md)


def test_parse_jwks_skips_unusable_keys_instead_of_failing(op: BadOP) -> None:
    op.set(jwks_include_unusable=True)
    keys = parse_jwks(op.jwks())
    kids = {k.kid for k in keys}
    assert kids == {"rsa-1", "ec256-1", "ec384-1", "ec521-1", "ed-1"}
    with pytest.raises(ProviderError, match="no 'keys' list"):
        parse_jwks({"keys": "nope"})


def test_userinfo_cannot_override_authentication_claims() -> None:
    id_claims = {"iss": "a", "sub": "1", "aud": "c", "sid": "s", "nonce": "n", "exp": 2, "name": "old"}
    merged = merge_userinfo(id_claims, {"iss": "evil", "sub": "2", "sid": "x", "exp": 9, "name": "new", "email": "e"})
    assert merged == {**id_claims, "name": "new", "email": "e"}


def test_token_set_repr_shows_no_tokens() -> None:
    tokens = TokenSet("id.tok.en", "access-secret", "refresh-secret", None, "Bearer", "openid")
    assert "secret" not in repr(tokens) and "id.tok.en" not in repr(tokens)


def test_end_session_url_carries_hint_redirect_state_and_client_id(client: OIDCClient) -> None:
    md = ProviderMetadata.from_document({**DOC, "end_session_endpoint": "https://idp.example.com/logout?x=1"},
                                        expected_issuer=DOC["issuer"])  # fmt: skip
    url = client.end_session_url(md, id_token_hint="h.i.nt", post_logout_redirect_uri="https://c/out", state="st")
    assert url is not None and url.startswith("https://idp.example.com/logout?x=1&")
    query = URL(url).query
    assert (query["id_token_hint"], query["post_logout_redirect_uri"], query["state"]) == (
        "h.i.nt",
        "https://c/out",
        "st",
    )
    assert query["client_id"] == client.settings.client_id
    no_endpoint = ProviderMetadata.from_document(DOC, expected_issuer=DOC["issuer"])
    assert client.end_session_url(no_endpoint, id_token_hint="x") is None


# --------------------------------------------------------------------------------------------------
# Discovery


async def test_authorization_url_carries_pkce_nonce_state_scope_and_extra_params(
    make_client: MakeClient, op: BadOP
) -> None:
    client = make_client(extra_authorize_params={"prompt": "login"}, scopes=("openid", "email"))
    url = await client.authorization_url(state="st", nonce="no", code_challenge="ch")
    assert url.startswith(op.url("/authorize?"))
    query = URL(url).query
    assert dict(query) == {
        "prompt": "login",
        "response_type": "code",
        "client_id": op.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email",
        "state": "st",
        "nonce": "no",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }


async def test_discovery_issuer_mismatch_is_refused_before_anyone_is_sent_to_the_provider(
    client: OIDCClient, op: BadOP
) -> None:
    op.set(issuer_in_discovery="https://evil.example.com")
    with pytest.raises(ProviderError, match="does not match the configured issuer_url"):
        await client.authorization_url(state="s", nonce="n", code_challenge="c")


async def test_discovery_without_jwks_uri_names_the_field(client: OIDCClient, op: BadOP) -> None:
    op.set(discovery_overrides={"jwks_uri": None})
    with pytest.raises(ProviderError, match="'jwks_uri'"):
        await client.metadata()


async def test_discovery_is_cached_and_concurrent_first_calls_share_one_fetch(client: OIDCClient, op: BadOP) -> None:
    results = await asyncio.gather(*(client.metadata() for _ in range(10)))
    assert all(md is results[0] for md in results)
    await client.metadata()
    assert op.requests["discovery"] == 1


async def test_discovery_failure_backs_off_instead_of_refetching_on_every_call(client: OIDCClient, op: BadOP) -> None:
    client.discovery_retry_min = 0.3  # the first backoff step (1s by default)
    op.set(discovery_status=503)
    failed_at = time.monotonic()
    with pytest.raises(ProviderError, match="HTTP 503"):
        await client.metadata()
    op.set(discovery_status=200)

    async def fetched() -> bool:
        # Every call before the backoff has passed fails at once, without asking the provider again.
        try:
            await client.metadata()
        except ProviderError as exc:
            assert "HTTP 503" in exc.message
            return False
        return True

    await eventually(fetched, what="discovery to be retried after the backoff", timeout=10, interval=0.01)
    assert op.requests["discovery"] == 2, "one failed fetch, then one after the backoff: no more"
    assert time.monotonic() - failed_at >= 0.3, "retried before the backoff had passed"


async def test_unreachable_provider_is_a_provider_error(make_client: MakeClient) -> None:
    client = make_client(issuer_url="http://127.0.0.1:9", http_timeout=2.0)
    with pytest.raises(ProviderError, match="Could not reach the identity provider"):
        await client.metadata()


# --------------------------------------------------------------------------------------------------
# Accepted logins


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA", "ES384"])
async def test_login_with_an_asymmetric_algorithm_is_accepted(flow: Flow, op: BadOP, alg: str) -> None:
    op.set(alg=alg)
    result = await flow.login()
    assert result.claims["sub"] == "user-1"
    assert result.claims["iss"] == op.issuer
    assert result.claims["email"] == "ada@example.com"  # from userinfo
    assert result.claims["name"] == "Ada Lovelace"  # userinfo wins for profile claims
    assert result.tokens.token_type == "Bearer"
    assert result.tokens.refresh_token and result.tokens.expires_at
    assert result.tokens.expires_at > time.time()


async def test_token_without_kid_uses_the_single_key_usable_for_its_alg(flow: Flow, op: BadOP) -> None:
    op.set(include_kid=False, jwks_include_unusable=True)
    assert (await flow.login()).claims["sub"] == "user-1"


async def test_token_without_kid_is_rejected_when_several_keys_fit(flow: Flow, op: BadOP) -> None:
    op.set(include_kid=False, jwks_extra_keys=[op.public_jwk("rogue")])
    await rejected(flow, "no key id .* several keys")


async def test_unusable_keys_in_the_jwks_are_skipped_not_fatal(flow: Flow, op: BadOP) -> None:
    op.set(jwks_include_unusable=True, alg="ES256")
    assert (await flow.login()).claims["sub"] == "user-1"


async def test_rotated_signing_key_is_found_by_one_jwks_refetch(flow: Flow, op: BadOP) -> None:
    await flow.login()
    assert op.requests["jwks"] == 1
    op.set(sign_with="rotated")
    assert (await flow.login()).claims["sub"] == "user-1"
    assert op.requests["jwks"] == 2


async def test_flood_of_unknown_kids_causes_at_most_one_extra_jwks_fetch(
    client: OIDCClient, flow: Flow, op: BadOP
) -> None:
    await flow.login()
    assert op.requests["jwks"] == 1
    tokens: list[str] = []
    for i in range(40):
        op.set(kid=f"made-up-{i}")
        tokens.append(op.mint_id_token(nonce="n"))
    concurrent = await asyncio.gather(
        *(client.validate_id_token(t, nonce="n") for t in tokens[:20]), return_exceptions=True
    )
    for t in tokens[20:]:
        with pytest.raises(TokenValidationError, match="unknown key"):
            await client.validate_id_token(t, nonce="n")
    assert all(isinstance(r, TokenValidationError) and "unknown key" in str(r) for r in concurrent)
    assert op.requests["jwks"] == 2


async def test_forced_jwks_refetch_is_allowed_again_after_the_interval(client: OIDCClient, op: BadOP) -> None:
    client.jwks_forced_refetch_interval = 0.0
    op.set(kid="made-up")
    token = op.mint_id_token(nonce="n")
    for _ in range(3):
        with pytest.raises(TokenValidationError, match="unknown key"):
            await client.validate_id_token(token, nonce="n")
    assert op.requests["jwks"] == 4  # the first fetch, then one refetch per attempt


async def test_id_token_expired_within_the_clock_skew_is_accepted(flow: Flow, op: BadOP) -> None:
    op.set(id_token_exp_in=-30, id_token_iat_offset=30)  # skew is 60s
    assert (await flow.login()).claims["sub"] == "user-1"


async def test_several_audiences_with_azp_of_this_client_are_accepted(flow: Flow, op: BadOP) -> None:
    op.set(id_token_claims_override={"aud": [op.client_id, "other"], "azp": op.client_id})
    assert (await flow.login()).claims["azp"] == op.client_id


async def test_configured_algorithm_allow_list_accepts_its_algorithms(
    make_client: MakeClient, http: Any, op: BadOP
) -> None:
    op.set(alg="ES256", discovery_overrides={"id_token_signing_alg_values_supported": ["RS256"]})
    flow = Flow(make_client(id_token_signing_algs=("ES256",)), http)
    assert (await flow.login()).claims["sub"] == "user-1"


# --------------------------------------------------------------------------------------------------
# Rejected ID tokens (and no userinfo call for them)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"iss": "https://evil.example.com"}, "ID token issuer does not match"),
        ({"aud": "another-client"}, "ID token audience does not include this client"),
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
    ],
)
async def test_id_token_with_bad_claims_is_rejected(
    flow: Flow, op: BadOP, override: dict[str, Any], match: str
) -> None:
    op.set(id_token_claims_override=override)
    await rejected(flow, match)
    assert op.requests["userinfo"] == 0


async def test_id_token_expired_beyond_the_clock_skew_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(id_token_exp_in=-120, id_token_iat_offset=-400)
    await rejected(flow, "ID token has expired")


async def test_id_token_issued_in_the_future_beyond_the_skew_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(id_token_iat_offset=300)
    await rejected(flow, "issued in the future")


async def test_id_token_signed_by_a_rogue_key_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(sign_with="rogue")
    await rejected(flow, "ID token signature is invalid")
    assert op.requests["userinfo"] == 0


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
    make_client: MakeClient, http: Any, op: BadOP
) -> None:
    flow = Flow(make_client(id_token_signing_algs=("ES256",)), http)
    await rejected(flow, "ID token algorithm 'RS256' is not allowed")


async def test_header_alg_naming_a_key_of_another_type_is_rejected(flow: Flow, op: BadOP) -> None:
    """The key must fit the alg in the header: an ES256 token cannot be checked with the RSA key."""
    op.set(alg="ES256", kid="rsa-1")
    await rejected(flow, "key type does not fit its algorithm ES256")


async def test_es384_token_naming_a_p256_key_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(alg="ES384", kid="ec256-1")
    await rejected(flow, "key type does not fit its algorithm ES384")


async def test_refresh_validates_the_new_id_token_and_its_subject(flow: Flow, op: BadOP) -> None:
    result = await flow.login()
    assert result.tokens.refresh_token
    tokens = await flow.client.refresh(result.tokens.refresh_token, expected_sub="user-1")
    assert tokens.id_token and tokens.access_token != result.tokens.access_token and tokens.refresh_token
    op.set(sub="someone-else")
    with pytest.raises(TokenValidationError, match="subject"):
        await flow.client.refresh(tokens.refresh_token, expected_sub="user-1")


async def test_refresh_without_a_new_id_token_returns_an_empty_one(flow: Flow, op: BadOP) -> None:
    result = await flow.login()
    assert result.tokens.refresh_token
    op.set(refresh_id_token=False, token_response_override={"refresh_token": None})
    tokens = await flow.client.refresh(result.tokens.refresh_token, expected_sub="user-1")
    assert tokens.id_token == "" and tokens.refresh_token is None and tokens.access_token


async def test_used_refresh_token_is_reported_as_invalid_grant(flow: Flow, op: BadOP) -> None:
    with pytest.raises(TokenEndpointError) as info:
        await flow.client.refresh("rt-never-issued")
    assert info.value.error == "invalid_grant"
    assert "rt-never-issued" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# Userinfo


async def test_userinfo_access_token_travels_only_in_the_authorization_header(flow: Flow, op: BadOP) -> None:
    await flow.login()
    assert op.userinfo_token_locations == ["header"]
    assert op.userinfo_query_strings == [""]


async def test_userinfo_for_another_subject_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(userinfo_sub="user-2")
    await rejected(flow, r"Userinfo subject \(sub\) does not match the ID token")


async def test_userinfo_cannot_change_iss_sub_or_sid_of_the_login(flow: Flow, op: BadOP) -> None:
    op.set(userinfo_claims={"iss": "https://evil.example", "sid": "evil", "aud": "x", "email": "e@example.com"})
    result = await flow.login()
    assert result.claims["iss"] == op.issuer and result.claims["sid"] == op.last_sid
    assert result.claims["aud"] == op.client_id and result.claims["email"] == "e@example.com"


async def test_signed_userinfo_is_verified_like_an_id_token(flow: Flow, op: BadOP) -> None:
    op.set(userinfo_format="jwt", alg="ES256")
    assert (await flow.login()).claims["email"] == "ada@example.com"


async def test_signed_userinfo_with_a_bad_signature_is_rejected(flow: Flow, op: BadOP) -> None:
    code, verifier, _, _ = await flow.authorize()
    tokens = await flow.client.exchange_code(code, verifier)
    op.set(userinfo_format="jwt", sign_with="rogue")
    with pytest.raises(TokenValidationError, match="Userinfo response signature is invalid"):
        await flow.client.fetch_userinfo(tokens.access_token, expected_sub="user-1")


async def test_userinfo_that_is_not_json_is_a_provider_error(flow: Flow, op: BadOP) -> None:
    op.set(userinfo_format="html")
    await rejected(flow, "userinfo response is not JSON", ProviderError)


async def test_userinfo_error_status_is_a_provider_error(flow: Flow, op: BadOP) -> None:
    op.set(userinfo_status=500)
    await rejected(flow, r"userinfo endpoint refused the request \(HTTP 500\)", ProviderError)


async def test_no_userinfo_endpoint_means_id_token_claims_only(flow: Flow, op: BadOP) -> None:
    op.set(userinfo_enabled=False)
    result = await flow.login()
    assert "email" not in result.claims and op.requests["userinfo"] == 0


# --------------------------------------------------------------------------------------------------
# Token endpoint


async def test_token_request_uses_client_secret_basic_with_form_encoded_credentials(flow: Flow, op: BadOP) -> None:
    """badop's secret has ':', '+', '/', ' ' and 'é': only RFC 6749 2.3.1 encoding gets it through."""
    await flow.login()
    assert op.token_auth_methods_seen == ["client_secret_basic"]
    request = op.token_requests[0]
    assert request["redirect_uri"] == REDIRECT_URI and len(request["code_verifier"]) == 43
    assert "client_secret" not in request and "client_id" not in request


async def test_token_request_uses_client_secret_post_when_the_provider_supports_only_that(
    flow: Flow, op: BadOP
) -> None:
    op.set(token_auth_methods_supported=["client_secret_post"])
    await flow.login()
    assert op.token_auth_methods_seen == ["client_secret_post"]


async def test_token_request_uses_client_secret_basic_when_the_provider_lists_no_methods(flow: Flow, op: BadOP) -> None:
    op.set(token_auth_methods_supported=None)
    await flow.login()
    assert op.token_auth_methods_seen == ["client_secret_basic"]


async def test_token_request_uses_client_secret_post_when_configured(
    make_client: MakeClient, http: Any, op: BadOP
) -> None:
    await Flow(make_client(token_endpoint_auth_method="client_secret_post"), http).login()
    assert op.token_auth_methods_seen == ["client_secret_post"]


async def test_provider_supporting_neither_secret_method_is_refused(flow: Flow, op: BadOP) -> None:
    op.set(token_auth_methods_supported=["private_key_jwt"])
    await rejected(flow, "neither client_secret_basic nor client_secret_post", ProviderError)


async def test_token_endpoint_error_names_the_oauth_error_but_not_the_description(flow: Flow, op: BadOP) -> None:
    op.set(token_error="invalid_client")
    error = await rejected(flow, "The token endpoint refused the request: invalid_client", TokenEndpointError)
    assert isinstance(error, TokenEndpointError) and error.error == "invalid_client" and error.http_status == 401
    assert "badop says" not in str(error)


async def test_wrong_pkce_verifier_is_refused_by_the_provider(flow: Flow, op: BadOP) -> None:
    code, _, nonce, _ = await flow.authorize()
    with pytest.raises(TokenEndpointError, match="invalid_grant"):
        await flow.client.login(code=code, code_verifier=new_pkce()[0], nonce=nonce)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"token_type": "mac"}, "did not issue a Bearer token"),
        ({"token_type": None}, "did not issue a Bearer token"),
        ({"id_token": None}, "has no id_token"),
        ({"access_token": None}, "has no access_token"),
    ],
)
async def test_incomplete_token_response_is_a_provider_error(
    flow: Flow, op: BadOP, override: dict[str, Any], match: str
) -> None:
    op.set(token_response_override=override)
    await rejected(flow, match, ProviderError)


async def test_token_type_is_compared_case_insensitively(flow: Flow, op: BadOP) -> None:
    op.set(token_response_override={"token_type": "bearer"})
    assert (await flow.login()).tokens.token_type == "Bearer"


async def test_prove_client_credentials_accepts_invalid_grant_as_proof(client: OIDCClient, op: BadOP) -> None:
    await client.prove_client_credentials()
    assert op.token_auth_methods_seen == ["client_secret_basic"]


async def test_prove_client_credentials_reports_a_rejected_secret(make_client: MakeClient, op: BadOP) -> None:
    client = make_client(client_secret=Secret("wrong-secret"))
    with pytest.raises(ProviderError, match="rejected the client credentials") as info:
        await client.prove_client_credentials()
    assert "wrong-secret" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# Authorization response (RFC 9207) through the real redirect


async def test_authorization_response_from_another_issuer_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(authorization_iss="https://evil.example.com")
    with pytest.raises(LoginError, match="issuer"):
        await flow.authorize()


async def test_authorization_response_without_promised_iss_is_rejected(flow: Flow, op: BadOP) -> None:
    op.set(authorization_iss=False)
    with pytest.raises(LoginError, match="no 'iss' parameter"):
        await flow.authorize()


# --------------------------------------------------------------------------------------------------
# Back-channel logout tokens


async def test_good_logout_token_is_accepted(client: OIDCClient, op: BadOP) -> None:
    claims = await client.validate_logout_token(op.mint_logout_token({"sid": "sid-1"}))
    assert claims["sid"] == "sid-1" and claims["sub"] == "user-1" and claims["jti"]


async def test_logout_token_with_only_sub_or_only_sid_is_accepted(client: OIDCClient, op: BadOP) -> None:
    await client.validate_logout_token(op.mint_logout_token({"sid": None}))
    await client.validate_logout_token(op.mint_logout_token({"sub": None}))


async def test_logout_token_typed_jwt_is_accepted_for_older_providers(client: OIDCClient, op: BadOP) -> None:
    await client.validate_logout_token(op.mint_logout_token(typ="JWT"))
    await client.validate_logout_token(op.mint_logout_token(typ=None))


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        ({"events": None}, "no back-channel logout event"),
        ({"events": {"http://schemas.openid.net/event/other": {}}}, "no back-channel logout event"),
        ({"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}}, "is not a JSON object"),
        ({"events": ["http://schemas.openid.net/event/backchannel-logout"]}, "no back-channel logout event"),
        ({"nonce": "n"}, "must not contain a nonce"),
        ({"sid": None, "sub": None}, "neither sid nor sub"),
        ({"aud": "another-client"}, "audience does not include this client"),
        ({"iss": "https://evil.example.com"}, "issuer does not match"),
        ({"jti": None}, "has no jti"),
        ({"iat": None}, r"no issue time \(iat\)"),
        ({"iat": int(time.time()) - 3600, "exp": None}, "too old"),
        ({"exp": int(time.time()) - 600}, "has expired"),
    ],
)
async def test_bad_logout_token_is_rejected(client: OIDCClient, op: BadOP, claims: dict[str, Any], match: str) -> None:
    with pytest.raises(TokenValidationError, match=f"^Logout token .*{match}"):
        await client.validate_logout_token(op.mint_logout_token(claims))


async def test_logout_token_signed_by_a_rogue_key_is_rejected(client: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match="Logout token signature is invalid"):
        await client.validate_logout_token(op.mint_logout_token(sign_with="rogue"))


async def test_logout_token_of_another_type_is_rejected(client: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match=r"wrong type \(typ\)"):
        await client.validate_logout_token(op.mint_logout_token(typ="at+jwt"))


async def test_logout_token_with_alg_none_is_rejected(client: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match="algorithm 'none' is not allowed"):
        await client.validate_logout_token(op.mint_logout_token(alg="none"))


async def test_logout_token_is_not_accepted_as_an_id_token(client: OIDCClient, op: BadOP) -> None:
    with pytest.raises(TokenValidationError, match="ID token is a logout token"):
        await client.validate_id_token(op.mint_logout_token(), nonce="n")


@pytest.mark.parametrize("garbage", ["", "a.b", "a.b.c", "x" * 70000, "a.b.c.d.e"])
async def test_malformed_tokens_are_rejected_cleanly(client: OIDCClient, garbage: str) -> None:
    with pytest.raises(TokenValidationError, match="Logout token"):
        await client.validate_logout_token(garbage)


# --------------------------------------------------------------------------------------------------
# badop as a process (the end-to-end tests run it that way)


async def test_badop_runs_as_a_subprocess_with_an_http_control_api(http: aiohttp.ClientSession) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "support" / "badop.py"), "--port", "0", "--issuer-path", "/op"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.startswith("READY http://127.0.0.1:")
        issuer = line.split()[1]
        base = str(URL(issuer).with_path("/"))
        async with http.get(issuer + "/.well-known/openid-configuration") as resp:
            assert (await resp.json())["issuer"] == issuer
        async with http.post(base + "_control", json={"alg": "ES256"}) as resp:
            assert resp.status == 200
        async with http.post(base + "_control", json={"no_such_knob": 1}) as resp:
            assert resp.status == 400
        async with http.post(base + "_control/logout_token", json={"claims": {"sid": "s"}}) as resp:
            token = (await resp.json())["logout_token"]
        client = OIDCClient(
            SSOSettings(issuer_url=issuer, client_id="sidecar", client_secret=Secret("x")), REDIRECT_URI, http
        )
        assert (await client.validate_logout_token(token))["sid"] == "s"
        async with http.get(base + "_control/state") as resp:
            state = await resp.json()
        assert state["behaviour"]["alg"] == "ES256" and state["requests"]["jwks"] == 1
        assert json.dumps(state)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
