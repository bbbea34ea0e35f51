"""proxy.oidc.client, the relying-party flows, against badop, a real (misbehaving) OpenID Provider over HTTP on
loopback: PKCE, the authorization request and response, code exchange, refresh, userinfo, the token
endpoint's client authentication and the end-session URL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.config.model import Secret, SSOSettings
from proxy.errors import LoginError, ProviderError, TokenValidationError
from proxy.oidc.client import (
    OIDCClient,
    TokenEndpointError,
    TokenSet,
    logout_hints,
    new_pkce,
    pkce_challenge,
    random_token,
)
from proxy.oidc.discovery import ProviderMetadata
from support import REPO
from support.badop import BadOP
from support.rp import REDIRECT_URI, Flow, MakeRP, rejected

pytest_plugins = ["support.rp_fixtures"]

DOC = {
    "issuer": "https://idp.example.com/realms/main",
    "authorization_endpoint": "https://idp.example.com/auth",
    "token_endpoint": "https://idp.example.com/token",
    "jwks_uri": "https://idp.example.com/jwks",
}


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


def test_rfc9207_iss_in_the_authorization_response_must_match_the_issuer(rp: OIDCClient) -> None:
    md = ProviderMetadata.from_document(DOC, expected_issuer=DOC["issuer"])
    rp.check_authorization_response_iss(DOC["issuer"], md)
    rp.check_authorization_response_iss(None, md)  # the provider does not promise iss
    with pytest.raises(LoginError, match="issuer"):
        rp.check_authorization_response_iss("https://attacker.example", md)


def test_rfc9207_iss_is_required_when_the_provider_advertises_it(rp: OIDCClient) -> None:
    doc = {**DOC, "authorization_response_iss_parameter_supported": True}
    md = ProviderMetadata.from_document(doc, expected_issuer=DOC["issuer"])
    with pytest.raises(LoginError, match="no 'iss' parameter"):
        rp.check_authorization_response_iss(None, md)


def test_token_set_repr_shows_no_tokens() -> None:
    tokens = TokenSet("id.tok.en", "access-secret", "refresh-secret", None, "Bearer", "openid")
    assert "secret" not in repr(tokens) and "id.tok.en" not in repr(tokens)


def test_end_session_url_carries_hint_redirect_state_and_client_id(rp: OIDCClient) -> None:
    md = ProviderMetadata.from_document({**DOC, "end_session_endpoint": "https://idp.example.com/logout?x=1"},
                                        expected_issuer=DOC["issuer"])  # fmt: skip
    url = rp.end_session_url(md, id_token_hint="h.i.nt", post_logout_redirect_uri="https://c/out", state="st")
    assert url is not None and url.startswith("https://idp.example.com/logout?x=1&")
    query = URL(url).query
    assert (query["id_token_hint"], query["post_logout_redirect_uri"], query["state"]) == (
        "h.i.nt",
        "https://c/out",
        "st",
    )
    assert query["client_id"] == rp.settings.client_id
    no_endpoint = ProviderMetadata.from_document(DOC, expected_issuer=DOC["issuer"])
    assert rp.end_session_url(no_endpoint, id_token_hint="x") is None


@pytest.mark.parametrize(
    ("mode", "claims", "expected"),
    [
        # auto: a provider that issued a login_hint claim (Entra ID) takes it back as logout_hint
        ("auto", {"sub": "u", "login_hint": "O.aXQ"}, {"logout_hint": "O.aXQ"}),
        ("auto", {"sub": "u", "sid": "s"}, {"id_token_hint": "id.tok.en"}),
        ("auto", {"sub": "u", "login_hint": ""}, {"id_token_hint": "id.tok.en"}),
        ("id_token_hint", {"sub": "u", "login_hint": "O.aXQ"}, {"id_token_hint": "id.tok.en"}),
        # a claim name: this provider takes client_id + logout_hint; never the ID token
        ("sid", {"sub": "u", "sid": "s-1"}, {"logout_hint": "s-1"}),
        ("email", {"sub": "u", "email": "ada@example.com"}, {"logout_hint": "ada@example.com"}),
        ("sid", {"sub": "u"}, {}),
        ("sid", {"sub": "u", "sid": ["not", "a", "string"]}, {}),
    ],
)
def test_sign_out_names_the_user_with_logout_hint_where_the_provider_takes_it(mode, claims, expected) -> None:
    assert logout_hints(mode, claims, "id.tok.en") == expected


def test_end_session_url_without_a_query_of_its_own_starts_one(rp: OIDCClient) -> None:
    md = ProviderMetadata.from_document({**DOC, "end_session_endpoint": "https://idp.example.com/logout"},
                                        expected_issuer=DOC["issuer"])  # fmt: skip
    url = rp.end_session_url(md, post_logout_redirect_uri="https://c/out?a=1&b=2")
    assert url is not None and url.startswith("https://idp.example.com/logout?client_id=")
    assert dict(URL(url).query) == {
        "client_id": rp.settings.client_id,
        "post_logout_redirect_uri": "https://c/out?a=1&b=2",
    }


# --------------------------------------------------------------------------------------------------
# The authorization request


async def test_authorization_url_carries_pkce_nonce_state_scope_and_extra_params(make_rp: MakeRP, op: BadOP) -> None:
    rp = make_rp(extra_authorize_params={"prompt": "login"}, scopes=("openid", "email"))
    url = await rp.authorization_url(state="st", nonce="no", code_challenge="ch")
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


async def test_authorization_url_keeps_a_query_the_endpoint_already_has(make_rp: MakeRP, op: BadOP) -> None:
    op.set(discovery_overrides={"authorization_endpoint": op.url("/authorize?tenant=a+b&x=%2F")})
    url = await make_rp().authorization_url(state="s&t=1", nonce="n o", code_challenge="c+h")
    assert url.startswith(op.url("/authorize?tenant=a+b&x=%2F&"))
    query = URL(url).query
    assert (query["tenant"], query["x"], query["state"], query["nonce"], query["code_challenge"]) == (
        "a b",
        "/",
        "s&t=1",
        "n o",
        "c+h",
    )
    assert query["redirect_uri"] == REDIRECT_URI


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


# --------------------------------------------------------------------------------------------------
# Refresh


async def test_refresh_validates_the_new_id_token_and_its_subject(flow: Flow, op: BadOP) -> None:
    result = await flow.login()
    assert result.tokens.refresh_token
    refreshed = await flow.client.refresh_login(result.tokens.refresh_token, previous_claims=result.claims)
    tokens = refreshed.tokens
    assert tokens.id_token and tokens.access_token != result.tokens.access_token and tokens.refresh_token
    assert refreshed.claims["sub"] == "user-1" and refreshed.claims["email"] == "ada@example.com"
    assert refreshed.claims["iat"] >= result.claims["iat"]  # the new ID token's claims
    op.set(sub="someone-else")
    with pytest.raises(TokenValidationError, match="subject"):
        await flow.client.refresh_login(tokens.refresh_token, previous_claims=result.claims)


async def test_refresh_without_a_new_id_token_returns_an_empty_one_and_keeps_the_claims(flow: Flow, op: BadOP) -> None:
    result = await flow.login()
    assert result.tokens.refresh_token
    op.set(refresh_id_token=False, token_response_override={"refresh_token": None})
    op.set(userinfo_claims={**op.behaviour.userinfo_claims, "name": "Ada King"})
    refreshed = await flow.client.refresh_login(result.tokens.refresh_token, previous_claims=result.claims)
    tokens = refreshed.tokens
    assert tokens.id_token == "" and tokens.refresh_token is None and tokens.access_token
    assert refreshed.claims == {**result.claims, "name": "Ada King"}  # userinfo brought up to date


async def test_refresh_keeps_the_previous_profile_when_userinfo_fails(flow: Flow, op: BadOP) -> None:
    result = await flow.login()
    assert result.tokens.refresh_token
    op.set(refresh_id_token=False, userinfo_status=500)
    refreshed = await flow.client.refresh_login(result.tokens.refresh_token, previous_claims=result.claims)
    assert refreshed.claims == result.claims and refreshed.tokens.access_token != result.tokens.access_token


async def test_used_refresh_token_is_reported_as_invalid_grant(flow: Flow, op: BadOP) -> None:
    with pytest.raises(TokenEndpointError) as info:
        await flow.client.refresh_login("rt-never-issued", previous_claims={"sub": "user-1"})
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
    make_rp: MakeRP, http_session: Any, op: BadOP
) -> None:
    await Flow(make_rp(token_endpoint_auth_method="client_secret_post"), http_session).login()
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
        ({"access_token": "at-1\r\nX-Injected: 1"}, "characters no token may have"),
        ({"access_token": "at-\u00e9"}, "characters no token may have"),
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


async def test_prove_client_credentials_accepts_invalid_grant_as_proof(rp: OIDCClient, op: BadOP) -> None:
    await rp.prove_client_credentials()
    assert op.token_auth_methods_seen == ["client_secret_basic"]


async def test_prove_client_credentials_reports_a_rejected_secret(make_rp: MakeRP, op: BadOP) -> None:
    rp = make_rp(client_secret=Secret("wrong-secret"))
    with pytest.raises(ProviderError, match="rejected the client credentials") as info:
        await rp.prove_client_credentials()
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
# badop as a process (the end-to-end tests run it that way)


async def test_badop_runs_as_a_subprocess_with_an_http_control_api(http_session: aiohttp.ClientSession) -> None:
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
        async with http_session.get(issuer + "/.well-known/openid-configuration") as resp:
            assert (await resp.json())["issuer"] == issuer
        async with http_session.post(base + "_control", json={"alg": "ES256"}) as resp:
            assert resp.status == 200
        async with http_session.post(base + "_control", json={"no_such_knob": 1}) as resp:
            assert resp.status == 400
        async with http_session.post(base + "_control/logout_token", json={"claims": {"sid": "s"}}) as resp:
            token = (await resp.json())["logout_token"]
        client = OIDCClient(
            SSOSettings(issuer_url=issuer, client_id="sidecar", client_secret=Secret("x")), REDIRECT_URI, http_session
        )
        assert (await client.validate_logout_token(token))["sid"] == "s"
        async with http_session.get(base + "_control/state") as resp:
            state = await resp.json()
        assert state["behaviour"]["alg"] == "ES256" and state["requests"]["jwks"] == 1
        assert json.dumps(state)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
