"""Routes through real sidecars and the real dev IdP (``oidc-provider`` with ``acr``: a sign-in with a one-time
code has acr ``urn:dev-idp:mfa``, one without ``urn:dev-idp:pwd``): per-route access for three users by method,
step-up for ``acr_values`` and ``max_age`` (the session upgraded in place, landing on the route, never a loop),
the RFC 9470 challenge for API calls, reload, and what ``/oauth2/status`` shows. Bearer tokens (judged by their
own ``acr`` and ``auth_time``) come from badop, which signs real tokens with whatever claims a test asks.

The rules themselves: tests/unit/auth/test_routes.py; bypass attempts: tests/adversarial/test_route_paths.py;
forward auth: tests/system/gate/test_forward_auth.py; the round trip in a browser: test_browser.py of signin.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import SidecarFactory
from yarl import URL

from support.badop import BadOP, running_badop
from support.idp import DevIdP, login, logout
from support.procs import LOOPBACK, free_port
from support.sidecar import Sidecar
from support.waiting import eventually

PWD, MFA = "urn:dev-idp:pwd", "urn:dev-idp:mfa"
ACR = {"password": PWD, "one_time_code": MFA}
ACCOUNTS = {
    "ann": {"groups": ["users", "console-admins"]},
    "bob": {"groups": ["users", "billing"]},
    "carl": {"groups": ["users"]},
}
ROUTES = [
    {"path": "^/admin(/|$)", "access": {"allowed_groups": ["console-admins"]}},
    {
        "path": "^/api/whoami$",
        "methods": ["POST", "PUT", "PATCH", "DELETE"],
        "access": {"allowed_groups": ["console-admins", "billing"]},
    },
    {"path": "^/billing/", "access": {"allowed_groups": ["billing"]}},
    {"path": "^/mfa/", "acr_values": [MFA]},
    {"path": "^/never/", "acr_values": ["urn:example:never"]},
]
API = {"Accept": "application/json"}
COOKIE = "sso_sidecar"


@pytest.fixture(scope="module")
def acr_idp(idp_factory: Any) -> DevIdP:
    return idp_factory(acr=ACR, accounts=ACCOUNTS)


@pytest.fixture(scope="module")
def routes_sidecar(acr_idp: DevIdP, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    factory = SidecarFactory(acr_idp, console, tmp_path_factory.mktemp("routes"))
    yield factory(
        {"routes": ROUTES, "access": {"allowed_email_domains": ["example.com"]}},
        name="routes",
    )
    factory.stop_all()


async def signed_in(http: Any, sidecar: Sidecar, username: str, *, otp: str = "") -> Any:
    """A client signed in as ``username`` (at ``/``)."""
    client = http()
    resp = await login(client, sidecar.url_for("/"), username, otp=otp)
    assert resp.status == 200, (resp.status, await resp.text())
    return client


async def status_of(client: Any, method: str, url: str, **headers: str) -> int:
    async with client.request(method, url, headers={**API, **headers}) as resp:
        return int(resp.status)


# --------------------------------------------------------------------------------------------------
# Who may reach which paths


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        # GET /admin/x, GET /billing/x, GET /api/whoami, POST and DELETE /api/whoami, GET /reports
        ("ann", {"GET /admin/x": 200, "GET /billing/x": 403, "GET /api/whoami": 200, "POST /api/whoami": 200,
                 "DELETE /api/whoami": 200, "HEAD /admin": 200, "GET /reports": 200}),
        ("bob", {"GET /admin/x": 403, "GET /billing/x": 200, "GET /api/whoami": 200, "POST /api/whoami": 200,
                 "DELETE /api/whoami": 200, "HEAD /admin": 403, "GET /reports": 200}),
        ("carl", {"GET /admin/x": 403, "GET /billing/x": 403, "GET /api/whoami": 200, "POST /api/whoami": 403,
                  "DELETE /api/whoami": 403, "HEAD /admin": 403, "GET /reports": 200}),
    ],
)  # fmt: skip
async def test_each_route_admits_its_own_groups_by_method(http, routes_sidecar, username, expected):
    client = await signed_in(http, routes_sidecar, username)
    seen = {}
    for request in expected:
        method, path = request.split(" ")
        seen[request] = await status_of(client, method, routes_sidecar.url_for(path))
    assert seen == expected


async def test_a_refusal_by_a_route_is_a_403_page_naming_the_user_and_json_for_an_api(http, routes_sidecar):
    client = await signed_in(http, routes_sidecar, "carl")
    async with client.get(routes_sidecar.url_for("/admin/users"), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 403
        assert "signed in as carl@example.com" in await resp.text()
    async with client.delete(routes_sidecar.url_for("/api/whoami"), headers=API) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "access_denied"


# --------------------------------------------------------------------------------------------------
# Step-up: acr_values


async def test_a_session_without_the_acr_steps_up_in_place_and_lands_on_the_route(http, routes_sidecar):
    client = await signed_in(http, routes_sidecar, "carl")
    before = client.cookie(COOKIE)
    async with client.get(routes_sidecar.url_for("/mfa/keys?x=1")) as resp:
        assert resp.status == 302
        authorize = URL(resp.headers["Location"])
    assert authorize.query["acr_values"] == MFA
    assert "max_age" not in authorize.query and "prompt" not in authorize.query
    # At the provider: its session is not at that level, so it asks; this time with a one-time code.
    landed = await login(client, str(authorize), "carl", otp="123456")
    assert landed.status == 200
    assert URL(str(landed.url)).path_qs == "/mfa/keys?x=1"
    after = client.cookie(COOKIE)
    assert after and after != before  # a new session id, as after any sign-in
    # The same session, upgraded: other paths do not ask again, and the old cookie is worth nothing.
    assert await status_of(client, "GET", routes_sidecar.url_for("/reports")) == 200
    assert await status_of(client, "GET", routes_sidecar.url_for("/mfa/other")) == 200
    stale = http()
    stale.cookie_jar.update_cookies({COOKIE: before}, URL(routes_sidecar.url))
    assert await status_of(stale, "GET", routes_sidecar.url_for("/reports")) == 401


async def test_a_logout_at_the_provider_ends_the_upgraded_session(http, acr_idp, routes_sidecar):
    """Back-channel logout as today: the provider's logout finds the session a step-up upgraded (its new id,
    and the provider session of its latest sign-in)."""
    client = await signed_in(http, routes_sidecar, "bob")
    landed = await login(client, routes_sidecar.url_for("/mfa/ledger"), "bob", otp="8080")
    assert landed.status == 200 and URL(str(landed.url)).path == "/mfa/ledger"
    assert await status_of(client, "GET", routes_sidecar.url_for("/billing/x")) == 200
    # Sign out at the provider itself, not through the sidecar: only the back-channel can tell the sidecar.
    await logout(client, acr_idp.discovery()["end_session_endpoint"])

    async def ended() -> bool:
        return await status_of(client, "GET", routes_sidecar.url_for("/billing/x")) == 401

    await eventually(ended, what="the back-channel logout to end the upgraded session")


async def test_an_acr_the_provider_never_delivers_ends_on_one_403_without_a_loop(http, routes_sidecar):
    client = await signed_in(http, routes_sidecar, "ann")
    before = client.cookie(COOKIE)
    url, redirects = routes_sidecar.url_for("/never/x"), 0
    while True:
        async with client.get(url, headers={"Accept": "text/html"}) as resp:
            if resp.status not in (301, 302, 303, 307, 308):
                status, body = resp.status, await resp.text()
                break
            redirects += 1
            assert redirects <= 5, "a redirect loop"
            url = str(URL(url).join(URL(resp.headers["Location"])))
    # To the provider, back to the callback: and there it ends.
    assert redirects == 2
    assert status == 403
    assert "urn:example:never" in body and "still signed in" in body
    # The session elsewhere is unharmed: the same cookie still works.
    assert client.cookie(COOKIE) == before
    assert await status_of(client, "GET", routes_sidecar.url_for("/reports")) == 200


async def test_a_step_up_without_the_code_ends_on_a_403_page_once(http, routes_sidecar):
    client = await signed_in(http, routes_sidecar, "bob")
    before = client.cookie(COOKIE)
    resp = await login(client, routes_sidecar.url_for("/mfa/x"), "bob")  # asked again, and no code typed
    assert resp.status == 403
    text = await resp.text()
    assert MFA in text and PWD in text
    assert client.cookie(COOKIE) == before
    assert await status_of(client, "GET", routes_sidecar.url_for("/billing/x")) == 200


async def test_a_browser_without_a_session_is_asked_for_the_acr_in_its_first_sign_in(http, routes_sidecar):
    client = http()
    async with client.get(routes_sidecar.url_for("/mfa/x")) as resp:
        assert resp.status == 302
        assert URL(resp.headers["Location"]).query["acr_values"] == MFA
    landed = await login(client, routes_sidecar.url_for("/mfa/x"), "carl", otp="42")
    assert landed.status == 200 and URL(str(landed.url)).path == "/mfa/x"


# --------------------------------------------------------------------------------------------------
# RFC 9470 for API calls on a session


async def test_an_api_call_whose_session_lacks_the_acr_gets_the_rfc_9470_challenge(http, routes_sidecar):
    client = await signed_in(http, routes_sidecar, "ann")
    async with client.get(routes_sidecar.url_for("/mfa/data"), headers=API) as resp:
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
        body = await resp.json()
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert f'acr_values="{MFA}"' in challenge
    assert body["error"] == "insufficient_user_authentication"
    assert body["acr_values"] == [MFA]
    assert body["login_url"] == "/oauth2/start?rd=/mfa/data"
    # The login URL asks the provider for that sign-in, bound to this session.
    async with client.get(routes_sidecar.url_for(body["login_url"])) as start:
        assert start.status == 302
        assert URL(start.headers["Location"]).query["acr_values"] == MFA


# --------------------------------------------------------------------------------------------------
# Step-up: max_age


@pytest.fixture(scope="module")
def recent_sidecar(acr_idp: DevIdP, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    factory = SidecarFactory(acr_idp, console, tmp_path_factory.mktemp("recent"))
    # No clock skew allowance: the dev IdP runs on this machine's clock.
    yield factory(
        {"routes": [{"path": "^/recent/", "max_age": "4s"}], "sso": {"clock_skew": "0s"}},
        name="recent",
    )
    factory.stop_all()


async def test_max_age_expiry_asks_for_a_fresh_sign_in_that_lands_on_the_route(http, recent_sidecar):
    client = await signed_in(http, recent_sidecar, "carl")
    before = client.cookie(COOKIE)
    route = recent_sidecar.url_for("/recent/payments")

    async def asks_again() -> URL | None:
        async with client.get(route) as resp:
            return URL(resp.headers["Location"]) if resp.status == 302 else None

    authorize = await eventually(asks_again, what="the route to ask for a fresh sign-in", timeout=30)
    assert authorize.query["max_age"] == "4" and authorize.query["prompt"] == "login"
    # Other paths never ask: the session is as good as ever there.
    assert await status_of(client, "GET", recent_sidecar.url_for("/reports")) == 200
    landed = await login(client, str(authorize), "carl")
    assert landed.status == 200
    assert URL(str(landed.url)).path == "/recent/payments"
    assert client.cookie(COOKIE) != before


# --------------------------------------------------------------------------------------------------
# badop: bearer tokens judged by their own acr and auth_time, and what the dev IdP cannot do


@pytest.fixture(scope="module")
async def module_op() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/routes") as op:
        yield op


@pytest.fixture
def token_op(module_op: BadOP) -> BadOP:
    module_op.reset()
    return module_op


@pytest.fixture(scope="module")
async def bearer_sidecar(
    module_op: BadOP, console: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sidecar]:
    token_op = module_op
    port = free_port()
    config = {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": f"http://{LOOPBACK}:{port}",
        "upstream": console.url,
        "sso": {
            "issuer_url": token_op.issuer,
            "client_id": token_op.client_id,
            "client_secret": token_op.client_secret,
        },
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
        "routes": [
            {"path": "^/api/whoami$", "methods": ["DELETE"], "acr_values": ["urn:mfa", "urn:hwk"], "max_age": "10m"},
            {"path": "^/mfa/", "acr_values": ["urn:mfa"]},
        ],
    }
    sidecar = Sidecar(config, tmp_path_factory.mktemp("bearer-routes") / "bearer-routes", name="bearer-routes")
    await asyncio.to_thread(sidecar.start)  # badop answers on this loop: do not block it
    yield sidecar
    await sidecar.astop()


def token(op: BadOP, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": op.issuer, "sub": "svc", "aud": op.client_id, "iat": now, "exp": now + 300, "scope": "console",
            "preferred_username": "svc", **claims}  # fmt: skip
    return op.sign({k: v for k, v in body.items() if v is not None}, typ="at+jwt")


@pytest.mark.parametrize(
    ("claims", "wanted"),
    [
        ({}, "a sign-in with urn:mfa or urn:hwk"),
        ({"acr": "urn:pwd", "auth_time": "now"}, "a sign-in with urn:mfa or urn:hwk"),
        ({"acr": "urn:mfa"}, "a sign-in within the last 10m"),
        ({"acr": "urn:mfa", "auth_time": "old"}, "a sign-in within the last 10m"),
    ],
    ids=["no acr", "weak acr", "no auth_time", "old auth_time"],
)
async def test_a_bearer_token_that_falls_short_gets_the_rfc_9470_challenge(
    http, token_op, bearer_sidecar, claims, wanted
):
    now = int(time.time())
    claims = {**claims}
    if "auth_time" in claims:
        claims["auth_time"] = now if claims["auth_time"] == "now" else now - 3600
    bearer = {"Authorization": f"Bearer {token(token_op, **claims)}"}
    async with http(cookies=False).delete(bearer_sidecar.url_for("/api/whoami"), headers=bearer) as resp:
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
        body = await resp.json()
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="urn:mfa urn:hwk"' in challenge and 'max_age="600"' in challenge
    # RFC 9728 5.1: the step-up challenge, as every Bearer 401, says where the resource's metadata is.
    metadata = bearer_sidecar.url_for("/.well-known/oauth-protected-resource")
    assert challenge.endswith(f', resource_metadata="{metadata}"')
    assert body["acr_values"] == ["urn:mfa", "urn:hwk"] and body["max_age"] == 600
    assert wanted in body["message"]


async def test_a_bearer_token_with_its_own_strong_recent_sign_in_passes(http, token_op, bearer_sidecar):
    bearer = {"Authorization": f"Bearer {token(token_op, acr='urn:hwk', auth_time=int(time.time()) - 60)}"}
    async with http(cookies=False).delete(bearer_sidecar.url_for("/api/whoami"), headers=bearer) as resp:
        assert resp.status == 200
        assert (await resp.json())["method"] == "DELETE"
    # And the route is for DELETE only: a GET with a weak token passes.
    weak = {"Authorization": f"Bearer {token(token_op)}"}
    async with http(cookies=False).get(bearer_sidecar.url_for("/api/whoami"), headers=weak) as resp:
        assert resp.status == 200


async def test_a_step_up_as_another_user_changes_nothing(http, token_op, bearer_sidecar):
    """The dev IdP cannot play this: signing in as another user there ends the first user's provider session,
    and its back-channel logout ends the sidecar's session too. badop just answers for another subject."""
    client = http()
    assert (await login(client, bearer_sidecar.url_for("/"), "any")).status == 200
    before = client.cookie(COOKIE)
    token_op.set(sub="user-2", id_token_claims_override={"acr": "urn:mfa"}, userinfo_sub="user-2")
    resp = await login(client, bearer_sidecar.url_for("/mfa/x"), "any")
    assert resp.status == 403
    assert "another user" in await resp.text()
    assert token_op.authorize_requests[-1]["acr_values"] == "urn:mfa"
    assert client.cookie(COOKIE) == before
    async with client.get(bearer_sidecar.url_for("/oauth2/userinfo")) as me:
        assert (await me.json())["sub"] == "user-1"


async def test_a_provider_that_answers_at_once_without_the_acr_ends_on_one_403(http, token_op, bearer_sidecar):
    """badop never asks anyone anything: the step-up comes straight back without the acr, and stops there."""
    client = http()
    assert (await login(client, bearer_sidecar.url_for("/"), "any")).status == 200
    before = client.cookie(COOKIE)
    token_op.set(id_token_claims_override={"acr": "urn:pwd"})
    url, hops = bearer_sidecar.url_for("/mfa/x"), []
    for _ in range(6):
        async with client.get(url, headers={"Accept": "text/html"}) as resp:
            hops.append(resp.status)
            if resp.status != 302:
                text = await resp.text()
                break
            url = str(URL(url).join(URL(resp.headers["Location"])))
    assert hops == [302, 302, 403]
    assert "urn:mfa" in text and "urn:pwd" in text
    assert client.cookie(COOKIE) == before
    assert await status_of(client, "GET", bearer_sidecar.url_for("/reports")) == 200


async def test_a_session_keeps_the_acr_and_auth_time_of_its_sign_in_across_a_refresh(http, token_op, bearer_sidecar):
    """OIDC Core 12.2: a refresh is no new sign-in. badop's refreshed ID token claims a newer auth_time and a
    stronger acr; the session keeps its own, so the route still asks for a step-up."""
    client = http()
    token_op.set(id_token_claims_override={"acr": "urn:pwd"}, token_response_override={"expires_in": 2})
    assert (await login(client, bearer_sidecar.url_for("/"), "any")).status == 200
    token_op.set(id_token_claims_override={"acr": "urn:mfa", "auth_time": int(time.time()) + 5})
    refreshes = token_op.requests["token"]

    async def refreshed() -> bool:
        assert await status_of(client, "GET", bearer_sidecar.url_for("/reports")) == 200
        return token_op.requests["token"] > refreshes

    await eventually(refreshed, what="the session's tokens to be refreshed")
    async with client.get(bearer_sidecar.url_for("/oauth2/userinfo")) as me:
        kept = await me.json()
    assert kept["acr"] == "urn:pwd" and kept["auth_time"] <= time.time()
    async with client.get(bearer_sidecar.url_for("/mfa/x"), headers=API) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "insufficient_user_authentication"


# --------------------------------------------------------------------------------------------------
# Reload, and what operators see


async def test_routes_reload_live_and_a_bad_route_is_refused_naming_its_key(http, sidecar_factory):
    sidecar = sidecar_factory({"admin": {"enabled": False}}, name="routes-reload")
    client = await signed_in(http, sidecar, "carl")
    assert await status_of(client, "GET", sidecar.url_for("/admin/x")) == 200

    async def refused() -> bool:
        return await status_of(client, "GET", sidecar.url_for("/admin/x")) == 403

    sidecar.reload({**sidecar.config, "routes": [{"path": "^/admin/", "access": {"allowed_groups": ["admins"]}}]})
    await eventually(refused, what="the new route to apply")

    sidecar.reload({**sidecar.config, "routes": [{"path": "^/admin/(", "acces": {}}]})
    await eventually(lambda: "routes[0].path: invalid regex" in sidecar.logs(), what="the refusal in the log")
    assert "routes[0].acces: unknown key (did you mean 'access'?)" in sidecar.logs()
    assert await status_of(client, "GET", sidecar.url_for("/admin/x")) == 403  # the last good config holds
    assert await status_of(client, "GET", sidecar.url_for("/reports")) == 200


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_status_shows_the_route_table_and_which_route_each_denial_hit_never_a_token(
    http, sidecar_factory, request, store
):
    """A session the cache holds is settled in the gate's plain-function path (``_settled``), with either store:
    each refusal is noted once there too (``admit`` notes it; it is never asked twice for one request)."""
    routes = [{"path": "^/admin/", "access": {"allowed_groups": ["admins"]}}, {"path": "^/mfa/", "acr_values": [MFA]}]
    config: dict[str, Any] = {"routes": routes, "break_glass": {"token": secrets.token_urlsafe(24)}}
    if store == "redis":
        redis = request.getfixturevalue("redis_clean")
        config["session"] = {"store": "redis", "redis_url": redis.url, "cache_ttl": "1h"}
    sidecar = sidecar_factory(config, name=f"routes-status-{store}")
    client = await signed_in(http, sidecar, "carl")
    assert await status_of(client, "GET", sidecar.url_for("/reports")) == 200  # the session is now cached
    assert await status_of(client, "GET", sidecar.url_for("/admin/x?secret=1")) == 403
    assert await status_of(client, "GET", sidecar.url_for("/mfa/y")) == 401
    glass = {"X-Break-Glass": sidecar.config["break_glass"]["token"]}
    async with http(cookies=False).get(sidecar.url_for("/oauth2/status"), headers=glass) as resp:
        assert resp.status == 200
        text = await resp.text()
    status = json.loads(text)
    table = status["config"]["routes"]
    assert [(r["route"], r["path"]) for r in table] == [("routes[0]", "^/admin/"), ("routes[1]", "^/mfa/"),
                                                         ("access", None)]  # fmt: skip
    assert table[1]["acr_values"] == [MFA]
    denials = status["denials"]
    assert [(d["kind"], d["routes"], d["path"]) for d in denials] == [
        ("insufficient_user_authentication", ["routes[1]"], "/mfa/y"),
        ("access_denied", ["routes[0]"], "/admin/x"),
    ]
    assert denials[0]["user"] == "carl@example.com"
    assert "secret=1" not in text
    assert client.cookie(COOKIE) not in text


async def test_the_login_url_of_a_challenge_for_a_destructive_method_asks_for_that_methods_sign_in(
    http, token_op, bearer_sidecar
):
    """A route for DELETE only: the API call's login URL must ask for the DELETE's sign-in, although the browser
    that follows it comes back with a GET; a plain sign-in would only be refused again."""
    client = http()
    token_op.set(id_token_claims_override={"acr": "urn:pwd"})
    assert (await login(client, bearer_sidecar.url_for("/"), "any")).status == 200
    async with client.delete(bearer_sidecar.url_for("/api/whoami"), headers=API) as resp:
        assert resp.status == 401
        login_url = (await resp.json())["login_url"]
    async with client.get(bearer_sidecar.url_for(login_url)) as start:
        assert start.status == 302
        asked = URL(start.headers["Location"]).query
    assert asked["acr_values"] == "urn:mfa urn:hwk" and asked["max_age"] == "600" and asked["prompt"] == "login"
    token_op.set(id_token_claims_override={"acr": "urn:hwk"})
    landed = await login(client, bearer_sidecar.url_for(login_url), "any")
    assert landed.status == 200 and URL(str(landed.url)).path == "/api/whoami"
    async with client.delete(bearer_sidecar.url_for("/api/whoami"), headers=API) as resp:
        assert resp.status == 200


async def test_a_step_up_for_a_session_replaced_meanwhile_changes_nothing(http, token_op, bearer_sidecar):
    """The pending step-up is bound to the session it was started for: signed in again in another tab before
    it came back, it upgrades neither the old session nor the new one."""
    client = http()
    token_op.set(id_token_claims_override={"acr": "urn:pwd"})
    assert (await login(client, bearer_sidecar.url_for("/"), "any")).status == 200
    async with client.get(bearer_sidecar.url_for("/mfa/x"), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 302
        authorize = resp.headers["Location"]
    assert (await login(client, bearer_sidecar.url_for("/oauth2/start?rd=/reports"), "any")).status == 200
    replaced = client.cookie(COOKIE)
    token_op.set(id_token_claims_override={"acr": "urn:mfa"})
    resp = await login(client, authorize, "any")
    assert resp.status == 400 and "session changed" in await resp.text()
    assert client.cookie(COOKIE) == replaced
    assert await status_of(client, "GET", bearer_sidecar.url_for("/mfa/x")) == 401  # still without the acr
    assert await status_of(client, "GET", bearer_sidecar.url_for("/reports")) == 200
