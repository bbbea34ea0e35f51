"""Relying-party correctness end to end: the OpenID Foundation RP tests and token attacks.

Every case runs through the real HTTP flow: a browser-like client -> a real sidecar process (its CLI)
-> badop, a real provider that signs real tokens and misbehaves on request -> the sample console.
One badop (in process, on a loopback port) serves the whole module; each test switches its knobs and
reads its counters, reset in between. One long-lived sidecar serves every case whose outcome does not
depend on what the sidecar has cached (discovery, JWKS); the others get a fresh sidecar of their own.

Test names carry the OpenID Foundation RP test ids (rp-...) where one maps.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from support.badop import BadOP, running_badop
from support.http import HttpClient, new_client
from support.procs import LOOPBACK, free_port
from support.sidecar import Sidecar, merge

SESSION_COOKIE = "sso_sidecar"
LOGIN_COOKIE_PREFIX = SESSION_COOKIE + "_login_"
CLOCK_SKEW = 90  # seconds; deliberately not the default (60s), to show the setting is honoured
PATH = "/api/whoami?from=rp-test"
EVIL = "https://evil.example.com/realms/rp"

# Every sidecar started here, and every secret the sidecars saw, for the log check at the end.
SIDECARS: list[Sidecar] = []
SEEN_SECRETS: set[str] = set()


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
async def badop() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/rp") as op:
        yield op


@pytest.fixture
def op(badop: BadOP) -> Iterator[BadOP]:
    """The module's badop, well-behaved and with zeroed counters; what it issued is remembered."""
    badop.reset()
    yield badop
    SEEN_SECRETS.update(badop.issued)


def sidecar_config(op: BadOP, console: Any, **sso: Any) -> dict[str, Any]:
    port = free_port()
    config = {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": f"http://{LOOPBACK}:{port}",
        "upstream": console.url,
        "log_level": "debug",  # the most a sidecar ever logs: still no token, code or secret
        "sso": {
            "issuer_url": op.issuer,
            "client_id": op.client_id,
            "client_secret": op.client_secret,
            "clock_skew": f"{CLOCK_SKEW}s",
            "http_timeout": "5s",
        },
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
    }
    return merge(config, {"sso": sso})


async def start_sidecar(config: dict[str, Any], work_dir: Path, name: str) -> Sidecar:
    SEEN_SECRETS.update({config["sso"]["client_secret"], config["session"]["cookie_secret"]})
    sidecar = Sidecar(config, work_dir / name, name=name)
    SIDECARS.append(sidecar)
    # In a thread: badop answers on this event loop, which must not block while the sidecar starts.
    return await asyncio.to_thread(sidecar.start)


@pytest.fixture(scope="module")
async def sidecar(badop: BadOP, console: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sidecar]:
    """The long-lived sidecar: default settings except ``clock_skew``."""
    sc = await start_sidecar(sidecar_config(badop, console), tmp_path_factory.mktemp("rp"), "sidecar-rp")
    yield sc
    await sc.astop()


@pytest.fixture(scope="module")
async def allowlist_sidecar(
    badop: BadOP, console: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sidecar]:
    """A sidecar whose ``sso.id_token_signing_algs`` allows ES256 only (badop advertises all of them)."""
    config = sidecar_config(badop, console, id_token_signing_algs=["ES256"])
    sc = await start_sidecar(config, tmp_path_factory.mktemp("rp"), "sidecar-rp-allowlist")
    yield sc
    await sc.astop()


FreshSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def fresh_sidecar(op: BadOP, console: Any, tmp_path: Path) -> AsyncIterator[FreshSidecar]:
    """``await fresh_sidecar(**sso)``: a new sidecar with empty discovery and JWKS caches, for cases that
    depend on what the sidecar fetches first. Set badop's knobs before its first request."""
    started: list[Sidecar] = []

    async def make(**sso: Any) -> Sidecar:
        sc = await start_sidecar(sidecar_config(op, console, **sso), tmp_path, f"sidecar-fresh-{len(started)}")
        started.append(sc)
        return sc

    yield make
    for sc in started:
        await sc.astop()


@pytest.fixture
async def browser() -> AsyncIterator[Callable[[], HttpClient]]:
    """``browser()``: a new browser-like client with its own cookie jar, not following redirects."""
    clients: list[HttpClient] = []

    def make() -> HttpClient:
        client = new_client()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# --------------------------------------------------------------------------------------------------
# The flow, step by step, as a browser performs it


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: str
    url: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


async def fetch(client: HttpClient, url: str | URL, **kwargs: Any) -> Answer:
    async with client.get(url, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.text(), str(url))


async def to_provider(client: HttpClient, sc: Sidecar, op: BadOP, path: str = PATH) -> str:
    """A navigation without a session: the sidecar's 302 to badop's authorization endpoint."""
    answer = await fetch(client, sc.url_for(path))
    assert answer.status == 302, (answer.status, answer.body[:300])
    assert answer.location.startswith(op.url("/authorize?")), answer.location
    return answer.location


async def to_callback(client: HttpClient, sc: Sidecar, op: BadOP, path: str = PATH) -> str:
    """Start a login and let badop answer it; the callback URL the browser would be sent to next."""
    answer = await fetch(client, await to_provider(client, sc, op, path))
    assert answer.status == 302, (answer.status, answer.body[:300])
    assert answer.location.startswith(sc.url_for("/oauth2/callback?")), answer.location
    return answer.location


async def login(client: HttpClient, sc: Sidecar, op: BadOP, path: str = PATH) -> Answer:
    """The whole login up to the sidecar's answer at the callback."""
    return await fetch(client, await to_callback(client, sc, op, path))


def login_cookie(client: HttpClient) -> tuple[str, str]:
    return next((m.key, m.value) for m in client.cookie_jar if m.key.startswith(LOGIN_COOKIE_PREFIX))


async def assert_signed_in(client: HttpClient, sc: Sidecar, answer: Answer, path: str = PATH) -> dict[str, Any]:
    """The callback set a session and sent the browser back; the console sees who the user is."""
    assert answer.status == 302, (answer.status, answer.body[:500])
    assert answer.location == path
    cookie = client.cookie(SESSION_COOKIE)
    assert cookie
    SEEN_SECRETS.add(cookie)
    page = await fetch(client, sc.url_for(path))
    assert page.status == 200, (page.status, page.body[:300])
    seen = json.loads(page.body)
    assert seen["raw_path"] == path
    headers = seen["headers"]
    assert headers["X-Forwarded-User"] == "ada"
    assert headers["X-Forwarded-Email"] == "ada@example.com"
    assert headers["X-Forwarded-Name"] == "Ada Lovelace"
    assert headers["X-Forwarded-Groups"] == "admins,staff"
    return seen


async def assert_refused(client: HttpClient, sc: Sidecar, op: BadOP, answer: Answer, *, statuses: range) -> None:
    """A clean error page, no session: the browser's next navigation is sent to log in again."""
    assert answer.status in statuses, (answer.status, answer.body[:500])
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "Try again" in answer.body and "/oauth2/start?rd=" in answer.body
    assert "Traceback" not in answer.body
    assert not re.search(r"eyJ[A-Za-z0-9_-]{5,}", answer.body), "a JWT in the error page"
    for value in (*op.issued, op.client_secret):
        assert value not in answer.body
    set_session = [
        c
        for c in answer.headers.getall("Set-Cookie", [])
        if c.startswith(SESSION_COOKIE + "=") and "Max-Age=0" not in c
    ]
    assert not set_session, set_session
    assert client.cookie(SESSION_COOKIE) is None
    await to_provider(client, sc, op)  # no session: a navigation is sent to log in


def exchanged(op: BadOP, *, tokens: int, userinfo: int) -> None:
    assert (op.requests["token"], op.requests["userinfo"]) == (tokens, userinfo)


ID_TOKEN_REFUSED = range(400, 500)
PROVIDER_FAILED = range(500, 600)


# --------------------------------------------------------------------------------------------------
# Accepted


async def test_rp_response_type_code_with_state_nonce_and_pkce_s256(browser, sidecar, op):
    """rp-response_type-code, rp-discovery-openid-configuration: the authorization request is a code flow
    request at the discovered endpoint, with fresh state and nonce and PKCE S256."""
    client = browser()
    answer = await login(client, sidecar, op)
    await assert_signed_in(client, sidecar, answer)
    (request,) = op.authorize_requests
    assert request["response_type"] == "code"
    assert request["client_id"] == op.client_id
    assert request["redirect_uri"] == sidecar.url_for("/oauth2/callback")
    assert request["scope"].split() == ["openid", "profile", "email"]
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) == 43
    assert len(request["state"]) >= 32 and len(request["nonce"]) >= 32


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256"])
async def test_rp_id_token_sig_is_accepted_for_each_advertised_algorithm(browser, sidecar, op, alg):
    """rp-id_token-sig-rs256, rp-id_token-sig-es256 (and PS256): a correctly signed ID token signs the user in."""
    op.set(alg=alg)
    client = browser()
    await assert_signed_in(client, sidecar, await login(client, sidecar, op))
    exchanged(op, tokens=1, userinfo=1)


async def test_rp_scope_userinfo_claims_reach_the_console_as_identity_headers(browser, sidecar, op):
    """rp-scope-userinfo-claims: claims of the profile and email scopes, from userinfo, become headers."""
    op.set(userinfo_claims={**op.behaviour.userinfo_claims, "preferred_username": "ada.l"})
    client = browser()
    answer = await login(client, sidecar, op)
    assert answer.status == 302
    page = json.loads((await fetch(client, sidecar.url_for("/api/whoami"))).body)
    assert page["headers"]["X-Forwarded-User"] == "ada.l"  # only userinfo had it
    assert page["headers"]["X-Forwarded-Name"] == "Ada Lovelace"  # userinfo wins over the ID token


async def test_rp_token_endpoint_client_secret_basic(browser, sidecar, op):
    """rp-token_endpoint-client_secret_basic: the secret (with ':', '+', '/', ' ', 'é') in the header only."""
    client = browser()
    await assert_signed_in(client, sidecar, await login(client, sidecar, op))
    assert op.token_auth_methods_seen == ["client_secret_basic"]
    (request,) = op.token_requests
    assert "client_secret" not in request and "client_id" not in request
    assert request["grant_type"] == "authorization_code" and len(request["code_verifier"]) == 43


async def test_token_request_uses_client_secret_post_when_that_is_all_the_provider_offers(browser, fresh_sidecar, op):
    op.set(token_auth_methods_supported=["client_secret_post"])
    sc = await fresh_sidecar()
    client = browser()
    await assert_signed_in(client, sc, await login(client, sc, op))
    assert op.token_auth_methods_seen == ["client_secret_post"]


async def test_rp_userinfo_bearer_header(browser, sidecar, op):
    """rp-userinfo-bearer-header: the access token goes in the Authorization header, never the query."""
    client = browser()
    await assert_signed_in(client, sidecar, await login(client, sidecar, op))
    assert op.userinfo_token_locations == ["header"]
    assert op.userinfo_query_strings == [""]


async def test_id_token_expired_within_the_configured_clock_skew_is_accepted(browser, sidecar, op):
    op.set(id_token_exp_in=-(CLOCK_SKEW - 30), id_token_iat_offset=-300)
    client = browser()
    await assert_signed_in(client, sidecar, await login(client, sidecar, op))


async def test_rp_id_token_kid_absent_single_jwks(browser, fresh_sidecar, op):
    """rp-id_token-kid-absent-single-jwks, rp-discovery-jwks_uri-keys: without a kid, the one JWKS key
    usable for the algorithm verifies it; keys of other types, uses and curves are skipped, not fatal."""
    op.set(include_kid=False, jwks_include_unusable=True)
    sc = await fresh_sidecar()
    client = browser()
    await assert_signed_in(client, sc, await login(client, sc, op))
    assert op.requests["discovery"] == 1 and op.requests["jwks"] == 1


async def test_rp_key_rotation_op_sign_key(browser, fresh_sidecar, op):
    """rp-key-rotation-op-sign-key (and -native): a key rotated in after the JWKS was cached is found
    by refetching the JWKS once."""
    sc = await fresh_sidecar()
    first = browser()
    await assert_signed_in(first, sc, await login(first, sc, op))
    assert op.requests["jwks"] == 1
    op.set(sign_with="rotated")
    second = browser()
    await assert_signed_in(second, sc, await login(second, sc, op))
    assert op.requests["jwks"] == 2


async def test_a_flood_of_unknown_kids_costs_the_provider_at_most_one_jwks_fetch(browser, fresh_sidecar, op):
    sc = await fresh_sidecar()
    client = browser()
    await assert_signed_in(client, sc, await login(client, sc, op))
    assert op.requests["jwks"] == 1
    for i in range(12):
        op.set(kid=f"made-up-{i}")
        attacker = browser()
        await assert_refused(attacker, sc, op, await login(attacker, sc, op), statuses=ID_TOKEN_REFUSED)
    assert op.requests["jwks"] == 2  # one forced refetch, then rate-limited
    exchanged(op, tokens=13, userinfo=1)


# --------------------------------------------------------------------------------------------------
# Refused ID tokens: no session, and userinfo is never called with the access token that came with them


BAD_ID_TOKENS = [
    pytest.param({"id_token_claims_override": {"iss": EVIL}}, id="rp-id_token-iss-mismatch"),
    pytest.param({"id_token_claims_override": {"aud": "another-client"}}, id="rp-id_token-aud"),
    pytest.param({"id_token_claims_override": {"aud": ["sidecar", "other"]}}, id="rp-id_token-aud-several-no-azp"),
    pytest.param(
        {"id_token_claims_override": {"aud": ["sidecar", "other"], "azp": "other"}}, id="rp-id_token-azp-other"
    ),
    pytest.param({"id_token_claims_override": {"sub": None}}, id="rp-id_token-sub"),
    pytest.param({"id_token_claims_override": {"iat": None}}, id="rp-id_token-iat"),
    pytest.param({"id_token_exp_in": -(CLOCK_SKEW + 60), "id_token_iat_offset": -600}, id="exp-beyond-clock-skew"),
    pytest.param({"id_token_claims_override": {"nonce": None}}, id="rp-nonce-unless-code-flow"),
    pytest.param({"id_token_claims_override": {"nonce": "someone-elses-nonce"}}, id="rp-nonce-invalid"),
    pytest.param({"sign_with": "rogue"}, id="rp-id_token-bad-sig-rs256"),
    pytest.param({"sign_with": "rogue", "alg": "ES256"}, id="rp-id_token-bad-sig-es256"),
    pytest.param({"alg": "none"}, id="rp-id_token-sig-none"),
    pytest.param({"alg": "HS256-public-key"}, id="hs256-keyed-with-the-public-key"),
]


@pytest.mark.parametrize("knobs", BAD_ID_TOKENS)
async def test_bad_id_token_is_refused_without_session_or_userinfo_call(browser, sidecar, op, knobs):
    op.set(**knobs)
    client = browser()
    await assert_refused(client, sidecar, op, await login(client, sidecar, op), statuses=ID_TOKEN_REFUSED)
    exchanged(op, tokens=1, userinfo=0)


async def test_id_token_algorithm_the_provider_does_not_advertise_is_refused(browser, fresh_sidecar, op):
    op.set(alg="ES256", discovery_overrides={"id_token_signing_alg_values_supported": ["RS256"]})
    sc = await fresh_sidecar()
    client = browser()
    await assert_refused(client, sc, op, await login(client, sc, op), statuses=ID_TOKEN_REFUSED)
    exchanged(op, tokens=1, userinfo=0)


async def test_id_token_algorithm_outside_the_configured_allow_list_is_refused(browser, allowlist_sidecar, op):
    sc = allowlist_sidecar  # badop signs RS256 and advertises it, but the config allows ES256 only
    client = browser()
    await assert_refused(client, sc, op, await login(client, sc, op), statuses=ID_TOKEN_REFUSED)
    exchanged(op, tokens=1, userinfo=0)


async def test_id_token_algorithm_in_the_configured_allow_list_is_accepted(browser, allowlist_sidecar, op):
    op.set(alg="ES256")
    client = browser()
    await assert_signed_in(client, allowlist_sidecar, await login(client, allowlist_sidecar, op))


async def test_rp_id_token_kid_absent_multiple_jwks(browser, fresh_sidecar, op):
    """rp-id_token-kid-absent-multiple-jwks: without a kid and with two keys that fit, the sidecar does
    not guess (the test allows refusing; trying every key would be the other choice)."""
    op.set(include_kid=False, jwks_extra_keys=[op.public_jwk("rogue")])
    sc = await fresh_sidecar()
    client = browser()
    await assert_refused(client, sc, op, await login(client, sc, op), statuses=ID_TOKEN_REFUSED)
    exchanged(op, tokens=1, userinfo=0)


async def test_rp_userinfo_bad_sub_claim(browser, sidecar, op):
    """rp-userinfo-bad-sub-claim: a userinfo response about another subject ends the login."""
    op.set(userinfo_sub="user-2")
    client = browser()
    await assert_refused(client, sidecar, op, await login(client, sidecar, op), statuses=ID_TOKEN_REFUSED)
    exchanged(op, tokens=1, userinfo=1)


# --------------------------------------------------------------------------------------------------
# Discovery and the authorization response


async def test_rp_discovery_issuer_not_matching_config(browser, fresh_sidecar, op):
    """rp-discovery-issuer-not-matching-config: refused before anyone is sent to the provider."""
    op.set(issuer_in_discovery=EVIL)
    sc = await fresh_sidecar()
    client = browser()
    for url in (sc.url_for(PATH), sc.url_for("/oauth2/start?rd=/")):
        answer = await fetch(client, url)
        assert answer.status in PROVIDER_FAILED and "Location" not in answer.headers
        assert answer.headers["Content-Type"].startswith("text/html")
        assert "does not match" in answer.body and "Try again" in answer.body
        assert "Traceback" not in answer.body
    assert op.requests["discovery"] >= 1
    assert op.requests["authorize"] == 0 and op.requests["token"] == 0
    assert client.cookie(SESSION_COOKIE) is None


async def test_authorization_response_iss_of_another_issuer_is_refused(browser, sidecar, op):
    """RFC 9207 (mix-up): the code is never redeemed."""
    op.set(authorization_iss=EVIL)
    client = browser()
    await assert_refused(client, sidecar, op, await login(client, sidecar, op), statuses=range(400, 500))
    exchanged(op, tokens=0, userinfo=0)


async def test_a_replayed_state_is_refused(browser, sidecar, op):
    """The pending login is taken exactly once: the same callback, even with its login cookie, fails."""
    victim = browser()
    callback = await to_callback(victim, sidecar, op)
    name, value = login_cookie(victim)
    await assert_signed_in(victim, sidecar, await fetch(victim, callback))
    attacker = browser()
    attacker.cookie_jar.update_cookies({name: value}, URL(sidecar.url))
    await assert_refused(attacker, sidecar, op, await fetch(attacker, callback), statuses=range(400, 500))
    exchanged(op, tokens=1, userinfo=1)


async def test_a_replayed_code_fails_at_the_token_endpoint_with_400(browser, sidecar, op):
    """A used code injected into a fresh login of another browser: badop refuses it (single use). The
    request's fault, not a provider outage: 400 and "start again", never 502 "Identity provider problem"."""
    victim = browser()
    callback = URL(await to_callback(victim, sidecar, op))
    await assert_signed_in(victim, sidecar, await fetch(victim, callback))
    attacker = browser()
    fresh_state = URL(await to_provider(attacker, sidecar, op)).query["state"]
    injected = callback.update_query(state=fresh_state)
    answer = await fetch(attacker, injected)
    await assert_refused(attacker, sidecar, op, answer, statuses=range(400, 401))
    assert "start again" in answer.body and "Identity provider problem" not in answer.body
    exchanged(op, tokens=2, userinfo=1)


async def test_a_code_swapped_between_two_pending_logins_is_400(browser, sidecar, op):
    """Two sign-ins open in one browser; each callback carries the other's code. The PKCE verifier of the
    pending login does not fit the code (RFC 7636 4.6): refused as the client's fault, no session."""
    client = browser()
    first, second = URL(await to_callback(client, sidecar, op)), URL(await to_callback(client, sidecar, op))
    swapped = first.update_query(code=second.query["code"])
    answer = await fetch(client, swapped)
    await assert_refused(client, sidecar, op, answer, statuses=range(400, 401))
    assert "start again" in answer.body
    exchanged(op, tokens=1, userinfo=0)


async def test_a_callback_whose_state_belongs_to_another_browser_is_refused(browser, sidecar, op):
    """Login CSRF: a callback started by the attacker's browser, followed by the victim's."""
    attacker = browser()
    callback = await to_callback(attacker, sidecar, op)
    victim = browser()
    await assert_refused(victim, sidecar, op, await fetch(victim, callback), statuses=range(400, 500))
    exchanged(op, tokens=0, userinfo=0)
    # The attempt did not use up the attacker's own pending login either.
    await assert_signed_in(attacker, sidecar, await fetch(attacker, callback))


# --------------------------------------------------------------------------------------------------
# Logs


async def test_logs_carry_no_token_code_or_secret(browser, sidecar, op):
    """The sidecars' own logs (at debug level), after the cases above and one good and one bad login."""
    client = browser()
    await assert_signed_in(client, sidecar, await login(client, sidecar, op))
    op.set(sign_with="rogue")
    other = browser()
    await assert_refused(other, sidecar, op, await login(other, sidecar, op), statuses=ID_TOKEN_REFUSED)
    assert len(op.issued) >= 6  # codes, access, refresh and ID tokens of both logins
    secrets_seen = SEEN_SECRETS | set(op.issued)
    for sc in SIDECARS:
        logs = sc.logs()
        if sc is sidecar:
            assert "login ok" in logs  # the log really is this sidecar's
        assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", logs), f"a JWT in {sc.name}'s log"
        assert "code=" not in logs and "access_token" not in logs
        leaked = [value[:12] + "..." for value in secrets_seen if value in logs]
        assert not leaked, f"{sc.name}'s log holds {leaked}"
