""" "Register automatically" (RFC 7591) against the real ``oidc-provider`` with registration behind an initial
access token: a wrong token refused in the provider's words and nothing saved; the right one registers a
confidential client with the sidecar's URIs, whose ID and secret become the draft exactly as a Save's would, and
which then tests and enables like a typed one. The registration access token is kept sealed in the record, and
it manages the client at the provider (RFC 7592). Break-glass may register only at the very first setup."""

from __future__ import annotations

import json
import re
import secrets
import urllib.request
from html import unescape
from typing import Any

import pytest
from redis import Redis

from proxy.admin.record import Keys
from proxy.config.model import Secret
from support.adminsetup import (
    ACCOUNTS,
    ADMIN,
    Replicas,
    break_glass,
    digest,
    enable_via_page,
    enforces_sso,
    page_html,
    post,
    run_test_login,
    start_replicas,
)
from support.idp import DevIdP, login
from support.redis_server import RedisServer
from support.waiting import eventually

TOKEN = secrets.token_urlsafe(24)  # the provider's initial access token
SCOPES = "openid profile email groups"


@pytest.fixture(scope="module")
def reg_idp(idp_factory: Any) -> DevIdP:
    """Registration only with the initial access token (and RFC 7592 management), as Keycloak and Okta run it."""
    return idp_factory(accounts=ACCOUNTS, allow_registration=False, registration_initial_access_token=TOKEN)


@pytest.fixture
def replicas(sidecar_factory: Any, reg_idp: DevIdP, redis_clean: RedisServer) -> Replicas:
    return start_replicas(sidecar_factory, reg_idp, redis_clean)


def stored(r: Replicas) -> Any:
    """The page record as the sidecars sealed it (the test knows their cookie secret)."""
    raw = Redis.from_url(r.redis.url).get("sso:admin:settings")
    assert raw is not None
    return Keys([Secret(r.a.config["session"]["cookie_secret"])]).open(raw)[0], raw


def provider_view(uri: str, token: str) -> dict[str, Any]:
    """RFC 7592 2.1: the client's registration as the provider has it, read with the registration access token."""
    request = urllib.request.Request(uri, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return dict(json.load(resp))


async def register(http: Any, r: Replicas, idp: DevIdP, html: str, token: str) -> tuple[int, str, str]:
    fields = {"issuer_url": idp.issuer, "client_id": "", "client_secret": "", "scopes": SCOPES}
    return await post(http, r.a.url, "register", html, initial_access_token=token, **fields)


async def test_a_wrong_token_is_refused_in_the_providers_words_and_the_right_one_registers_tests_and_enables(
    replicas: Replicas, http: Any, reg_idp: DevIdP
) -> None:
    r = replicas
    browser = http()
    await break_glass(browser, r.a.url, r.break_glass)  # the very first setup: break-glass may choose
    html = await page_html(browser, r.a.url)
    assert '<label for="initial_access_token">Initial access token</label>' in html
    assert ">Register automatically</button>" in html

    status, body, _ = await register(browser, r, reg_idp, html, "wrong-" + TOKEN)
    assert status == 400
    error = re.search(r'<p id="initial_access_token-error" class="error">(.*?)</p>', body)
    assert error is not None and "invalid_token: invalid token provided" in unescape(error.group(1)), body[-3000:]
    assert TOKEN not in body and "No draft saved yet." in body  # nothing saved
    assert "register refused by break-glass from 127.0.0.1" in r.a.proc.logs()

    status, body, location = await register(browser, r, reg_idp, html, TOKEN)
    assert (status, location) == (303, "/oauth2/admin?done=registered"), body[-3000:]
    html = await page_html(browser, r.a.url)
    record, raw = stored(r)
    made = record.registration
    assert record.draft is not None and made is not None
    client_id, client_secret = record.draft.sso.client_id, record.draft.sso.client_secret
    assert client_id not in (r.client.client_id, "") and made.client_id == client_id
    assert f'value="{client_id}"' in html and "registered automatically" in html
    for secret in (client_secret, made.access_token, TOKEN):  # shown nowhere, logged nowhere, sealed at rest
        assert secret and secret not in html and secret not in r.a.proc.logs() and secret.encode() not in raw
    at_provider = provider_view(made.client_uri, made.access_token)
    assert at_provider["redirect_uris"] == [f"{r.a.url}/oauth2/callback"]
    assert at_provider["post_logout_redirect_uris"] == [f"{r.a.url}/oauth2/signed_out"]
    assert at_provider["backchannel_logout_uri"] == f"{r.a.url}/oauth2/backchannel-logout"
    assert at_provider["token_endpoint_auth_method"] == "client_secret_basic"
    assert at_provider["client_name"] == f"sso-sidecar for {r.a.url}"
    assert "registered the client" in unescape(html)  # the history says who registered which client

    # Then exactly as a typed client: Test login, Enable, and both replicas sign users in with it.
    await run_test_login(browser, r.a.url, ADMIN)
    html = await page_html(browser, r.a.url)
    status, body, location = await post(browser, r.a.url, "enable", html, digest=digest(html))
    assert (status, location) == (303, "/oauth2/admin?done=enabled"), body
    anonymous = http()
    for replica in (r.a, r.b):
        await eventually(lambda x=replica: enforces_sso(anonymous, x.url, reg_idp), what=replica.name, timeout=5)
    async with anonymous.get(r.b.url + "/", headers={"Accept": "text/html"}) as resp:
        assert f"client_id={client_id}" in resp.headers["Location"]
    user = http()
    page = await login(user.session, r.a.url + "/", "carol.jones")
    assert "carol.jones@example.com" in await page.text()


async def test_without_a_registration_endpoint_the_page_says_so_in_one_line(
    replicas: Replicas, http: Any, idp_factory: Any
) -> None:
    closed = idp_factory(allow_registration=False)  # no registration_endpoint in its discovery
    browser = http()
    await break_glass(browser, replicas.a.url, replicas.break_glass)
    html = await page_html(browser, replicas.a.url)
    fields = {"issuer_url": closed.issuer, "client_id": "x", "client_secret": "", "scopes": SCOPES}
    status, body, _ = await post(browser, replicas.a.url, "register", html, initial_access_token="t", **fields)
    assert status == 400 and "No draft saved yet." in body
    line = f"{closed.issuer} does not offer automatic registration"
    assert line in unescape(body)
    # Now that the page knows, the field gives way to that line, with the manual steps.
    status, body, _ = await post(browser, replicas.a.url, "save", html, **{**fields, "client_secret": "s"})
    assert status == 400 and line in unescape(body)
    assert 'id="initial_access_token"' not in body and "Register automatically" not in body
    assert "register the client by hand as step 1 says" in unescape(body)


async def test_break_glass_may_register_only_at_the_first_setup_and_an_admin_at_any_time(
    replicas: Replicas, http: Any, reg_idp: DevIdP
) -> None:
    r = replicas
    await enable_via_page(http(), r, reg_idp)  # pins the first client
    emergency = http()
    await break_glass(emergency, r.a.url, r.break_glass)
    html = await page_html(emergency, r.a.url)
    assert "Register automatically" not in html  # while SSO is on, break-glass sees Disable alone
    status, _, _ = await register(emergency, r, reg_idp, html, TOKEN)
    assert status == 403
    # An admin may: a new draft, the running config unchanged.
    ada = http()
    await login(ada.session, r.a.url + "/oauth2/admin", ADMIN)
    html = await page_html(ada, r.a.url)
    status, body, location = await register(ada, r, reg_idp, html, TOKEN)
    assert (status, location) == (303, "/oauth2/admin?done=registered"), body[-2000:]
    record, _ = stored(r)
    assert record.draft is not None and record.draft.sso.client_id != r.client.client_id
    assert record.applied is not None and record.applied.sso is not None
    assert record.applied.sso.client_id == r.client.client_id
    # After a Disable, break-glass may set up only the pinned client: a registration would be another one,
    # refused before anything reaches the provider.
    html = await page_html(ada, r.a.url)
    assert (await post(ada, r.a.url, "disable", html, confirm="yes"))[0] == 303
    before, _ = stored(r)
    html = await page_html(emergency, r.a.url)
    status, body, _ = await register(emergency, r, reg_idp, html, TOKEN)
    assert status == 403 and "may not register a new client" in unescape(body)
    after, _ = stored(r)
    assert (after.version, after.registration) == (before.version, before.registration)  # nothing registered
