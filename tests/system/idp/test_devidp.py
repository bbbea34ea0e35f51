"""The dev identity provider and the scripted login behave: the test infrastructure itself.

A small relying party runs in the test (no sidecar involved): it receives the authorization response and
back-channel logout tokens, and the test does the code exchange by hand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet
from yarl import URL

from support.http import HttpClient
from support.idp import DevIdP, RegisteredClient, idp_config, login, logout
from support.procs import LOOPBACK, free_port


@dataclass
class RelyingParty:
    base: str
    client: RegisteredClient
    callbacks: list[dict[str, str]] = field(default_factory=list)
    logout_tokens: list[str] = field(default_factory=list)
    logout_received: asyncio.Event = field(default_factory=asyncio.Event)

    def authorize_url(self, idp: DevIdP, scope: str = "openid profile email", **params: str) -> tuple[str, str, str]:
        """(authorization URL, state, code_verifier); ``params`` go into the request too (acr_values...)."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        url = URL(idp.discovery()["authorization_endpoint"]).with_query(
            response_type="code",
            client_id=self.client.client_id,
            redirect_uri=self.client.redirect_uris[0],
            scope=scope,
            state=state,
            nonce=secrets.token_urlsafe(16),
            code_challenge=challenge,
            code_challenge_method="S256",
            **params,
        )
        return str(url), state, verifier


@contextlib.asynccontextmanager
async def relying_party(idp: DevIdP) -> AsyncIterator[RelyingParty]:
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    party = RelyingParty(base, idp.register_client(base))

    async def callback(request: web.Request) -> web.Response:
        party.callbacks.append(dict(request.query))
        return web.Response(text="<html><body>callback reached</body></html>", content_type="text/html")

    async def backchannel(request: web.Request) -> web.Response:
        form = await request.post()
        party.logout_tokens.append(str(form["logout_token"]))
        party.logout_received.set()
        return web.Response(status=200)

    async def signed_out(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>signed out</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/oauth2/callback", callback)
    app.router.add_post("/oauth2/backchannel-logout", backchannel)
    app.router.add_get("/oauth2/signed_out", signed_out)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        yield party
    finally:
        await runner.cleanup()


@pytest.fixture
async def rp(idp: DevIdP) -> AsyncIterator[RelyingParty]:
    async with relying_party(idp) as party:
        yield party


async def exchange(http: HttpClient, idp: DevIdP, rp: RelyingParty, code: str, verifier: str) -> dict[str, Any]:
    async with http.post(
        idp.discovery()["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": rp.client.redirect_uris[0],
            "code_verifier": verifier,
        },
        headers=_basic(rp.client),
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body)


def _basic(client: RegisteredClient) -> dict[str, str]:
    # RFC 6749 2.3.1: form-encode id and secret before Basic (aiohttp.BasicAuth is deprecated in 3.14).
    raw = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


def verified_claims(idp: DevIdP, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(_jwks(idp))
    claims = dict(jwt.decode(token, keys).claims)
    assert claims["iss"] == idp.issuer
    return claims


def _jwks(idp: DevIdP) -> dict[str, Any]:
    with urllib.request.urlopen(idp.discovery()["jwks_uri"], timeout=5) as resp:
        return dict(json.load(resp))


async def sign_in(
    http: HttpClient, idp: DevIdP, rp: RelyingParty, username: str, *, otp: str = "", **params: str
) -> dict[str, Any]:
    url, state, verifier = rp.authorize_url(idp, **params)
    final = await login(http, url, username, otp=otp)
    assert final.status == 200
    assert "callback reached" in await final.text()
    params = rp.callbacks[-1]
    assert params["state"] == state
    assert params["iss"] == idp.issuer  # RFC 9207
    return await exchange(http, idp, rp, params["code"], verifier)


# --------------------------------------------------------------------------------------------------


def test_discovery_advertises_what_the_sidecar_relies_on(idp: DevIdP) -> None:
    doc = idp.discovery()
    assert doc["issuer"] == idp.issuer
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint",
                     "end_session_endpoint", "registration_endpoint", "revocation_endpoint"):  # fmt: skip
        assert doc[endpoint].startswith(idp.issuer + "/"), endpoint
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["backchannel_logout_supported"] is True
    assert doc["backchannel_logout_session_supported"] is True
    assert {"RS256", "ES256"} <= set(doc["id_token_signing_alg_values_supported"])
    assert {"openid", "profile", "email", "offline_access", "groups"} <= set(doc["scopes_supported"])
    assert {"preferred_username", "given_name", "family_name", "email", "groups"} <= set(doc["claims_supported"])


def test_registration_returns_a_client_for_loopback_uris(idp: DevIdP) -> None:
    base = f"http://{LOOPBACK}:{free_port()}"
    client = idp.register_client(base)
    assert client.client_id and client.client_secret
    assert client.redirect_uris == (base + "/oauth2/callback",)
    assert client.metadata["backchannel_logout_uri"] == base + "/oauth2/backchannel-logout"
    assert client.metadata["post_logout_redirect_uris"] == [base + "/oauth2/signed_out"]


async def test_login_helper_completes_code_flow_with_profile_claims_in_id_token(
    http: Any, idp: DevIdP, rp: RelyingParty
) -> None:
    client = http()
    tokens = await sign_in(client, idp, rp, "alice.smith")
    claims = verified_claims(idp, tokens["id_token"])
    assert claims["aud"] == rp.client.client_id
    assert claims["preferred_username"] == "alice.smith"
    assert claims["email"] == "alice.smith@example.com"
    assert claims["email_verified"] is True
    assert (claims["given_name"], claims["family_name"], claims["name"]) == ("Alice", "Smith", "Alice Smith")
    assert claims["groups"] == ["users"]
    assert claims["sub"] != "alice.smith" and claims["sid"]
    assert tokens["refresh_token"]

    async with client.get(
        idp.discovery()["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"}
    ) as resp:
        info = await resp.json()
    assert info["sub"] == claims["sub"]
    assert info["preferred_username"] == "alice.smith"


async def test_same_username_same_sub_and_admins_group(http: Any, idp: DevIdP, rp: RelyingParty) -> None:
    first = verified_claims(idp, (await sign_in(http(), idp, rp, "admin.jones"))["id_token"])
    second = verified_claims(idp, (await sign_in(http(), idp, rp, "admin.jones"))["id_token"])
    plain = verified_claims(idp, (await sign_in(http(), idp, rp, "bob"))["id_token"])
    assert first["sub"] == second["sub"] != plain["sub"]
    assert first["groups"] == ["users", "admins"]
    assert (plain["given_name"], plain["family_name"]) == ("Bob", "Example")


async def test_second_login_in_same_browser_needs_no_form(http: Any, idp: DevIdP, rp: RelyingParty) -> None:
    client = http()
    await sign_in(client, idp, rp, "carol")
    url, _, _ = rp.authorize_url(idp)
    final = await login(client, url, "someone-else")
    assert "callback reached" in await final.text()
    assert "code" in rp.callbacks[-1]


async def test_a_code_outlives_thousands_of_other_objects_in_the_providers_store(
    http: Any, idp: DevIdP, rp: RelyingParty
) -> None:
    """The provider's in-memory store keeps an authorization code until it is redeemed, however busy: every
    authorization request stores an interaction, and 2,500 of them come between the code's issue and its
    redemption (the library's default store forgets its oldest entries past 1,000, which under the benchmark's
    hundreds of sign-ins a second cost sign-ins that were done right an invalid_grant)."""
    client = http()
    url, state, verifier = rp.authorize_url(idp)
    final = await login(client, url, "frank")
    assert "callback reached" in await final.text() and rp.callbacks[-1]["state"] == state
    code = rp.callbacks[-1]["code"]
    busy, gate = http(cookies=False), asyncio.Semaphore(16)

    async def interaction() -> None:
        async with gate, busy.get(rp.authorize_url(idp)[0]) as resp:
            assert resp.status in (302, 303), resp.status  # on to the sign-in form: an interaction stored

    await asyncio.gather(*(interaction() for _ in range(2500)))
    tokens = await exchange(client, idp, rp, code, verifier)
    assert verified_claims(idp, tokens["id_token"])["preferred_username"] == "frank"


async def test_pkce_is_required(http: Any, idp: DevIdP, rp: RelyingParty) -> None:
    url, _, _ = rp.authorize_url(idp)
    without_pkce = URL(url).without_query_params("code_challenge", "code_challenge_method")
    final = await login(http(), str(without_pkce), "dave")
    assert "callback reached" in await final.text()
    assert rp.callbacks[-1]["error"] == "invalid_request"
    assert "PKCE" in rp.callbacks[-1]["error_description"]


async def test_refresh_token_rotates(http: Any, idp: DevIdP, rp: RelyingParty) -> None:
    client = http()
    tokens = await sign_in(client, idp, rp, "erin")
    async with client.post(
        idp.discovery()["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=_basic(rp.client),
    ) as resp:
        refreshed = await resp.json()
    assert resp.status == 200, refreshed
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert verified_claims(idp, refreshed["id_token"])["preferred_username"] == "erin"


async def test_end_session_sends_back_channel_logout_to_loopback(http: Any, idp: DevIdP, rp: RelyingParty) -> None:
    client = http()
    tokens = await sign_in(client, idp, rp, "frank")
    claims = verified_claims(idp, tokens["id_token"])
    end = URL(idp.discovery()["end_session_endpoint"]).with_query(
        id_token_hint=tokens["id_token"], post_logout_redirect_uri=rp.base + "/oauth2/signed_out", state="s1"
    )
    final = await logout(client, str(end))
    assert "signed out" in await final.text()
    await asyncio.wait_for(rp.logout_received.wait(), 5)
    logout_claims = verified_claims(idp, rp.logout_tokens[0])
    assert logout_claims["sub"] == claims["sub"]
    assert logout_claims["sid"] == claims["sid"]
    assert "http://schemas.openid.net/event/backchannel-logout" in logout_claims["events"]


# --------------------------------------------------------------------------------------------------
# Authentication levels (the config's ``acr``): what the sidecar's step-up tests rely on

PWD, MFA = "urn:dev-idp:pwd", "urn:dev-idp:mfa"


@pytest.fixture(scope="module")
def acr_idp(idp_factory: Any) -> DevIdP:
    return idp_factory(acr={"password": PWD, "one_time_code": MFA})


async def test_levels_are_advertised_and_every_id_token_says_which_one(http: Any, acr_idp: DevIdP) -> None:
    assert acr_idp.discovery()["acr_values_supported"] == [PWD, MFA]
    async with relying_party(acr_idp) as party:
        plain = verified_claims(acr_idp, (await sign_in(http(), acr_idp, party, "dana"))["id_token"])
        strong = verified_claims(acr_idp, (await sign_in(http(), acr_idp, party, "dana", otp="1"))["id_token"])
    assert (plain["acr"], plain["amr"]) == (PWD, ["pwd"])
    assert (strong["acr"], strong["amr"]) == (MFA, ["pwd", "otp"])


async def test_acr_values_above_the_sessions_level_ask_to_sign_in_again(http: Any, acr_idp: DevIdP) -> None:
    client = http()
    async with relying_party(acr_idp) as party:
        await sign_in(client, acr_idp, party, "erin")
        # The form appears again, saying what is asked for; the one-time code then raises the level.
        url, _, _ = party.authorize_url(acr_idp, acr_values=MFA)
        async with client.get(url) as resp:
            assert resp.status in (302, 303)
            form_url = URL(url).join(URL(resp.headers["Location"]))
        async with client.get(form_url) as page:
            assert "asks for a sign-in with a one-time code" in await page.text()
        claims = verified_claims(acr_idp, (await sign_in(client, acr_idp, party, "erin", otp="7", acr_values=MFA))[
            "id_token"])  # fmt: skip
        assert claims["acr"] == MFA
        # A level the session has, or one the provider does not know, asks nothing: no form, straight back.
        for asked in (MFA, PWD, "urn:example:unknown"):
            url, _, _ = party.authorize_url(acr_idp, acr_values=asked)
            async with client.get(url, allow_redirects=True) as final:
                assert "callback reached" in await final.text(), asked


def _authenticates(idp: DevIdP, client_id: str, secret: str) -> bool:
    """The token endpoint knows the client and its secret: a made-up code is refused as a grant, not a client."""
    body = "grant_type=authorization_code&code=made-up&code_verifier=" + "v" * 43
    auth = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    request = urllib.request.Request(idp.discovery()["token_endpoint"], data=body.encode(), method="POST",
                                     headers={"Authorization": f"Basic {auth}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5):
            return False
    except urllib.error.HTTPError as exc:
        with exc:
            return bool(json.loads(exc.read())["error"] == "invalid_grant")


def test_registration_with_an_initial_access_token_and_clients_kept_across_a_restart(tmp_path: Any) -> None:
    """The demo's provider: registration only with the initial access token, and the clients it registered
    still known after a restart (a client the settings page enabled must outlive ``make demo``'s next run)."""
    config = idp_config(port=free_port(), allow_registration=False, registration_initial_access_token="iat-1",
                        clients_file=str(tmp_path / "clients.json"))  # fmt: skip
    provider = DevIdP(config, tmp_path / "idp").start()
    try:
        assert _post(provider, {"redirect_uris": ["http://127.0.0.1:1/cb"]}, token="wrong") == 401
        client = provider.register_client("http://127.0.0.1:1")
        assert _authenticates(provider, client.client_id, client.client_secret)
        provider.stop()
        provider = DevIdP(config, tmp_path / "idp").start()
        assert _authenticates(provider, client.client_id, client.client_secret)
        assert not _authenticates(provider, client.client_id, "wrong")
    finally:
        provider.stop()


def _post(provider: DevIdP, body: dict[str, Any], *, token: str) -> int:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    endpoint = provider.discovery()["registration_endpoint"]
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code
