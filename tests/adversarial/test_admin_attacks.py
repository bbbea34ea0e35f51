"""The settings page's two promises, never fail open and no lock-out, acted out as the attacker or the unlucky
operator would (issue 20: one test per finding).

Two replicas share a real redis-server with an append-only file (as the deploy examples run it), the
provider is the real dev IdP, and Chromium plays the admin where a browser matters.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, expect
from redis import Redis

from proxy.admin.record import Applied, PageRecord, PageSSO
from proxy.config.load import parse_settings
from support.adminsetup import (
    ACCOUNTS,
    ADMIN,
    NOT_ADMIN,
    Replicas,
    break_glass,
    digest,
    enable_via_page,
    enforces_sso,
    is_closed,
    is_open,
    page_html,
    post,
    run_test_login,
    save,
    start_replicas,
)
from support.badop import running_badop
from support.browser_login import sign_in_at_idp
from support.http import HttpClient
from support.idp import DevIdP, RegisteredClient, login
from support.procs import LOOPBACK
from support.redis_server import RedisServer
from support.waiting import eventually

pytest_plugins = ["support.browser"]  # the browser fixture (Playwright)

KEY = "sso:admin:settings"
SESSION_COOKIE = "sso_sidecar"  # session.cookie_name's default


@pytest.fixture(scope="module")
def admin_idp(idp_factory: Any) -> DevIdP:
    return idp_factory(accounts=ACCOUNTS)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Redis with ``appendonly yes``: what it acknowledged survives its own restart."""
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture
def replicas(sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer) -> Replicas:
    return start_replicas(sidecar_factory, admin_idp, aof_redis)


def stored(r: Replicas) -> bytes:
    raw = Redis.from_url(r.redis.url).get(KEY)
    assert raw is not None, "no page record in Redis"
    return raw


def version_of(raw: bytes) -> int:
    return int(json.loads(raw)["version"])


async def page_status(http: HttpClient, url: str, token: str) -> dict[str, Any]:
    async with http.get(url + "/oauth2/status", headers={"X-Break-Glass": token}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return dict(body["sso_settings"].get("page") or {})


async def ready(http: HttpClient, url: str) -> int:
    async with http.get(url + "/readyz") as resp:
        return resp.status


async def has_read(http: HttpClient, r: Replicas, url: str, idp: DevIdP, words: str) -> bool:
    """The replica has read the store since it changed: it refused what it found (``words`` in its status),
    or it went open (the attack worked, and the assertion after this wait says so)."""
    error = (await page_status(http, url, r.break_glass)).get("error") or ""
    return words in error or not await enforces_sso(http, url, idp)


# -- 1. fail open: an older sealed record put back ---------------------------------------------------------


async def test_replaying_older_record_bytes_switches_sso_off_nowhere(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    """Every earlier value of the record is a valid seal: a draft-only one, or one that said Disabled, written
    back (a replay, or a restored backup) must change nothing, on running and on restarted replicas."""
    r = replicas
    operator = http()
    await break_glass(operator, r.a.url, r.break_glass)
    assert (await save(operator, r, admin_idp, await page_html(operator, r.a.url)))[0] == 303
    draft_only = stored(r)  # version 1: a draft, nothing applied (the file's sso: off)
    await run_test_login(operator, r.a.url, ADMIN)
    html = await page_html(operator, r.a.url)
    assert (await post(operator, r.a.url, "enable", html, digest=digest(html)))[0] == 303
    html = await page_html(operator, r.a.url)
    assert (await post(operator, r.a.url, "disable", html, confirm="yes"))[0] == 303
    said_disabled = stored(r)
    await run_test_login(operator, r.a.url, ADMIN)  # Disable voided the test: test again, then enable
    html = await page_html(operator, r.a.url)
    assert (await post(operator, r.a.url, "enable", html, digest=digest(html)))[0] == 303
    newest = stored(r)
    anyone = http()
    for replica in (r.a, r.b):
        await eventually(lambda u=replica.url: enforces_sso(anyone, u, admin_idp), what=replica.name, timeout=5)

    redis = Redis.from_url(r.redis.url)
    for old in (draft_only, said_disabled):
        redis.set(KEY, old)
        words = f"version {version_of(old)} is older than version {version_of(newest)}"
        for replica in (r.a, r.b):
            await eventually(lambda u=replica.url, w=words: has_read(anyone, r, u, admin_idp, w), what=replica.name)
            assert await enforces_sso(anyone, replica.url, admin_idp), f"{replica.name} went open"
            assert await ready(anyone, replica.url) == 200
        html = await page_html(operator, r.a.url)
        assert "were refused" in html and words in unescape(html)
    assert r.a.logs().count("older than version") == 2  # once per replayed record, not once a second

    # A replica restarted now has applied nothing, but remembers what it saw: closed, never open.
    r.b.stop()
    r.b.start()
    assert await is_closed(anyone, r.b.url)
    assert await ready(anyone, r.b.url) == 503
    redis.set(KEY, newest)
    await eventually(lambda: enforces_sso(anyone, r.b.url, admin_idp), what="replica b back", timeout=5)


# -- 2. fail open: a routine Save after Redis lost the record ----------------------------------------------


async def test_flushall_then_save_keeps_sso_on_everywhere(replicas: Replicas, http: Any, admin_idp: DevIdP) -> None:
    r = replicas
    await enable_via_page(http(), r, admin_idp)
    anyone = http()
    for replica in (r.a, r.b):
        await eventually(lambda u=replica.url: enforces_sso(anyone, u, admin_idp), what=replica.name, timeout=5)
    r.redis.flushall()
    ada = http()  # the sessions went with it: the admin signs in again
    await login(ada.session, r.a.url + "/", ADMIN)
    html = await page_html(ada, r.a.url)
    gone = "are gone from" in html
    status, body, _ = await save(ada, r, admin_idp, html, scopes="openid profile email")
    assert status == 303, body
    new_version = version_of(stored(r))

    async def applied(url: str) -> bool:  # the replica read the new record (and applied it, or not)
        status = await page_status(anyone, url, r.break_glass)
        return status.get("applied_version") == new_version or not await enforces_sso(anyone, url, admin_idp)

    for replica in (r.a, r.b):
        await eventually(lambda u=replica.url: applied(u), what=f"{replica.name} at version {new_version}")
        assert await enforces_sso(anyone, replica.url, admin_idp), f"{replica.name} went open"
    html = await page_html(ada, r.a.url)
    assert "enabled: true" in html  # the export: what is applied was carried over, not dropped
    assert gone, "the page did not say the record was gone"


# -- 3. fail open: a replica restarted after the record was deleted ------------------------------------------


async def test_deleting_the_record_then_restarting_a_replica_leaves_it_closed(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    """The file's sso is off (the first-setup shape): an empty store after an Enable is not a first setup."""
    r = replicas
    await enable_via_page(http(), r, admin_idp)
    anyone = http()
    for replica in (r.a, r.b):
        await eventually(lambda u=replica.url: enforces_sso(anyone, u, admin_idp), what=replica.name, timeout=5)
    Redis.from_url(r.redis.url).delete(KEY)
    r.b.stop()
    r.b.start()
    assert await is_closed(anyone, r.b.url), "the restarted replica serves the console"
    async with anyone.get(r.b.url + "/readyz") as resp:
        assert resp.status == 503 and "are gone from" in (await resp.json())["reason"]
    assert await enforces_sso(anyone, r.a.url, admin_idp)  # the running one keeps what it applied

    # Until an operator says otherwise: break-glass forgets the page settings, and the file applies.
    operator = http()
    await break_glass(operator, r.b.url, r.break_glass)
    html = await page_html(operator, r.b.url)
    status, body, _ = await post(operator, r.b.url, "forget", html, origin=r.a.url)  # the replicas' public URL
    assert status == 200 and "SSO disabled: every request reaches the console" in unescape(body), body
    assert (await post(operator, r.b.url, "forget", html, confirm="yes", origin=r.a.url))[0] == 303
    for replica in (r.a, r.b):
        await eventually(lambda u=replica.url: is_open(anyone, u), what=f"{replica.name} open", timeout=5)


# -- 4. lock-out: a record that does not open, with the file's SSO on ------------------------------------------


async def test_an_unopenable_record_leaves_break_glass_a_way_out(
    sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer, http: Any
) -> None:
    r = start_replicas(sidecar_factory, admin_idp, aof_redis, file_sso=True)
    anyone = http()
    ada = http()
    await login(ada.session, r.a.url + "/", ADMIN)  # SSO is on through the file: the admin signs in
    html = await page_html(ada, r.a.url)
    assert (await save(ada, r, admin_idp, html, scopes="openid profile email"))[0] == 303
    await run_test_login(ada, r.a.url, ADMIN)
    html = await page_html(ada, r.a.url)
    assert (await post(ada, r.a.url, "enable", html, digest=digest(html)))[0] == 303
    redis = Redis.from_url(r.redis.url)
    envelope = json.loads(stored(r))
    envelope["data"] = ("B" if envelope["data"][0] == "A" else "A") + envelope["data"][1:]
    redis.set(KEY, json.dumps(envelope))  # one character changed: the seal no longer opens
    for replica in (r.a, r.b):  # restarted with a record nobody can open: neither proxies
        replica.stop()
        replica.start()
        assert await is_closed(anyone, replica.url)

    async with ada.get(r.a.url + "/oauth2/admin") as resp:  # the admin's session counts for nothing now
        assert resp.status == 302 and resp.headers["Location"].startswith("/oauth2/break-glass")
    operator = http()
    await break_glass(operator, r.a.url, r.break_glass)
    html = await page_html(operator, r.a.url)
    assert "were refused" in html and "Disable SSO" in html and "Forget page settings" in html
    status, body, _ = await post(operator, r.a.url, "disable", html)
    assert status == 200 and 'name="confirm" value="yes"' in body, body
    status, body, location = await post(operator, r.a.url, "disable", html, confirm="yes")
    assert (status, location) == (303, "/oauth2/admin?done=disabled"), body
    for replica in (r.a, r.b):
        await eventually(lambda u=replica.url: is_open(anyone, u), what=f"{replica.name} off", timeout=5)
    html = await page_html(operator, r.a.url)
    status, body, _ = await post(operator, r.a.url, "forget", html)
    assert status == 200 and "SSO enabled with the issuer" in unescape(body), body
    assert (await post(operator, r.a.url, "forget", html, confirm="yes"))[0] == 303
    for replica in (r.a, r.b):  # the file's own provider again
        await eventually(lambda u=replica.url: enforces_sso(anyone, u, admin_idp), what=replica.name, timeout=5)


# -- 5. lock-out: one click on Disable without break-glass ------------------------------------------------------


async def test_disable_without_break_glass_is_refused_and_every_replica_keeps_sso(
    sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer, http: Any
) -> None:
    r = start_replicas(sidecar_factory, admin_idp, aof_redis, file_sso=True, with_break_glass=False)
    ada = http()
    await login(ada.session, r.a.url + "/", ADMIN)
    html = await page_html(ada, r.a.url)
    for fields in ({}, {"confirm": "yes"}):
        status, body, _ = await post(ada, r.a.url, "disable", html, **fields)
        assert status == 409, (status, body[:500])
        assert "needs break_glass.token while sso is off" in unescape(body)
    anyone = http()
    for replica in (r.a, r.b):
        assert await enforces_sso(anyone, replica.url, admin_idp)
        assert await ready(anyone, replica.url) == 200
    assert "disable refused by admin.ada@example.com" in r.a.logs()


async def test_forget_is_refused_when_the_config_file_would_not_run(
    sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer, http: Any
) -> None:
    """Forget hands every replica to the config file: a file whose provider no longer accepts its client is
    refused before anything is written."""
    r = start_replicas(sidecar_factory, admin_idp, aof_redis, file_sso=True)
    ada = http()
    await login(ada.session, r.a.url + "/", ADMIN)
    html = await page_html(ada, r.a.url)
    assert (await save(ada, r, admin_idp, html, scopes="openid profile email"))[0] == 303
    await run_test_login(ada, r.a.url, ADMIN)
    html = await page_html(ada, r.a.url)
    assert (await post(ada, r.a.url, "enable", html, digest=digest(html)))[0] == 303
    broken = {**r.a.config, "sso": {**r.a.config["sso"], "client_secret": "no-longer-" + r.client.client_secret}}
    r.a.write_config(broken)  # the page's section is in force, so the file's provider is not proven yet
    html = await page_html(ada, r.a.url)
    status, body, _ = await post(ada, r.a.url, "forget", html, confirm="yes")
    assert status == 409 and "invalid_client" in body, (status, body[:500])
    for replica in (r.a, r.b):
        assert await enforces_sso(http(), replica.url, admin_idp)
        assert await ready(http(), replica.url) == 200


# -- 6. lock-out: the admin who disabled SSO, in a browser ----------------------------------------------------


async def test_the_admin_who_disabled_sso_turns_it_back_on(
    browser: Browser, replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    r = replicas
    await enable_via_page(http(), r, admin_idp)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(r.a.url + "/oauth2/admin")
        await sign_in_at_idp(page, ADMIN)
        await expect(page.get_by_text("SSO is enabled").first).to_be_visible()
        await page.get_by_role("button", name="Disable SSO").click()
        await page.get_by_role("button", name="Disable SSO").click()  # the confirmation's own button
        await expect(page).to_have_url(r.a.url + "/oauth2/admin?done=disabled")  # not thrown out to break-glass
        await expect(page.get_by_text("SSO is disabled").first).to_be_visible()
        await expect(page.get_by_text("run Test login, then Enable SSO")).to_be_visible()
        for replica in (r.a, r.b):
            await eventually(lambda u=replica.url: is_open(http(), u), what=f"{replica.name} off", timeout=5)

        async with context.expect_page() as opened:
            await page.get_by_role("button", name="Test login").click()
        window = await opened.value
        await window.wait_for_load_state()
        await sign_in_at_idp(window, ADMIN)
        await expect(window.get_by_text("You can now enable SSO")).to_be_visible()
        await window.close()
        await page.goto(r.a.url + "/oauth2/admin")
        await page.get_by_role("button", name="Enable SSO").click()
        await expect(page).to_have_url(r.a.url + "/oauth2/admin?done=enabled")
        for replica in (r.a, r.b):
            await eventually(lambda u=replica.url: enforces_sso(http(), u, admin_idp), what=replica.name, timeout=5)
    finally:
        await context.close()


async def test_the_admin_who_disabled_the_config_files_sso_turns_it_back_on(
    browser: Browser, sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer, http: Any
) -> None:
    """The demo's shape: SSO on through the config file, nothing enabled on the page yet."""
    r = start_replicas(sidecar_factory, admin_idp, aof_redis, file_sso=True)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(r.a.url + "/oauth2/admin")
        await sign_in_at_idp(page, ADMIN)
        await page.get_by_role("button", name="Disable SSO").click()
        await page.get_by_role("button", name="Disable SSO").click()
        await expect(page).to_have_url(r.a.url + "/oauth2/admin?done=disabled")
        await expect(page.get_by_text("SSO is disabled").first).to_be_visible()
        for replica in (r.a, r.b):
            await eventually(lambda u=replica.url: is_open(http(), u), what=f"{replica.name} off", timeout=5)
        await page.get_by_role("button", name="Forget page settings").click()
        await expect(page.get_by_text("SSO enabled with the issuer")).to_be_visible()  # what comes next
        await page.get_by_role("button", name="Forget page settings").click()
        await expect(page).to_have_url(r.a.url + "/oauth2/admin?done=forgotten")
        for replica in (r.a, r.b):
            await eventually(lambda u=replica.url: enforces_sso(http(), u, admin_idp), what=replica.name, timeout=5)
    finally:
        await context.close()


# -- 7. lock-out: anyone's wrong tokens against the operator's right one ----------------------------------------


def from_address(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (127.0.0.0/8 is all local)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def try_token(client: aiohttp.ClientSession, url: str, token: str, **headers: str) -> int:
    data = {"token": token, "rd": "/"}
    async with client.post(url + "/oauth2/break-glass", data=data, headers=headers, allow_redirects=False) as resp:
        return resp.status


async def test_thirty_wrong_tokens_from_six_addresses_then_the_right_one_passes(
    sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer
) -> None:
    r = start_replicas(sidecar_factory, admin_idp, aof_redis, extra={"trusted_proxies": ["127.0.0.1/32"]})
    guessers = [from_address(f"127.0.0.{n}") for n in range(2, 8)]
    operator = from_address("127.0.0.8")
    proxy = from_address("127.0.0.1")
    try:
        for guesser in guessers:
            for _ in range(5):
                assert await try_token(guesser, r.a.url, "guess-" + secrets.token_urlsafe(8)) == 403
        assert await try_token(operator, r.a.url, r.break_glass) == 303  # not 429 for anyone's guesses
        async with operator.get(r.a.url + "/api/whoami", headers={"X-Break-Glass": r.break_glass}) as resp:
            assert resp.status == 200
        # A guesser's count is kept in Redis: the other replica slows it down too.
        assert await try_token(guessers[0], r.b.url, "guess") == 429
        # Behind a reverse proxy every client shares its address: the one it vouches for counts.
        for n in range(1, 7):
            for _ in range(5):
                assert await try_token(proxy, r.a.url, "guess", **{"X-Forwarded-For": f"198.51.100.{n}"}) == 403
        assert await try_token(proxy, r.a.url, r.break_glass, **{"X-Forwarded-For": "203.0.113.9"}) == 303
        assert await try_token(proxy, r.a.url, r.break_glass, **{"X-Forwarded-For": "198.51.100.1"}) == 303
    finally:
        for client in (*guessers, operator, proxy):
            await client.close()


# -- 8. takeover: break-glass pointing SSO at a provider of its own ----------------------------------------------


async def test_break_glass_disables_then_cannot_save_a_provider_of_its_own(
    replicas: Replicas, http: Any, admin_idp: DevIdP, idp: DevIdP
) -> None:
    r = replicas
    await enable_via_page(http(), r, admin_idp)
    emergency = http()
    await break_glass(emergency, r.a.url, r.break_glass)
    html = await page_html(emergency, r.a.url)
    assert 'action="/oauth2/admin/save"' not in html  # while SSO is on, break-glass is shown Disable alone
    assert (await post(emergency, r.a.url, "disable", html, confirm="yes"))[0] == 303  # allowed
    html = await page_html(emergency, r.a.url)
    enabled_draft = digest(html)
    assert enabled_draft
    own_client = admin_idp.register_client(r.a.url)  # another client at the same provider
    own_provider = idp.register_client(r.a.url)  # a client at another provider
    for issuer, client in ((admin_idp.issuer, own_client), (idp.issuer, own_provider)):
        status, body, _ = await save(
            emergency, r, admin_idp, html, issuer_url=issuer, client_id=client.client_id,
            client_secret=client.client_secret,
        )  # fmt: skip
        assert status == 403 and "may not save settings for another provider" in unescape(body), (status, body[:300])
    html = await page_html(emergency, r.a.url)
    assert digest(html) == enabled_draft  # nothing saved
    assert "may set up only the provider an admin enabled" in html
    # Re-enabling the very provider an admin enabled needs a new test (Disable voided it).
    status, body, _ = await post(emergency, r.a.url, "enable", html, digest=digest(html))
    assert status == 409 and "has not been tested" in unescape(body)
    status, _, location = await post(emergency, r.a.url, "test", html, digest=digest(html))
    assert status == 303 and location.startswith(admin_idp.issuer)  # testing it is allowed


# -- 9. takeover: a script on the console's origin ------------------------------------------------------------

READ_THE_PAGE = """
async () => (await fetch('/oauth2/admin')).status
"""

POST_DISABLE = """
async (csrf) => {
  const body = new URLSearchParams({csrf: csrf, confirm: 'yes'});
  const answer = await fetch('/oauth2/admin/disable', {method: 'POST', body: body});
  return {status: answer.status, redirected: answer.redirected};
}
"""

OPEN_THE_PAGE = """
async () => {
  const opened = window.open('/oauth2/admin');
  for (let i = 0; i < 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    try {
      if (opened.closed) return 'no handle';
      const token = opened.document.querySelector('input[name=csrf]');
      if (token) return 'read ' + token.value;
    } catch (error) {
      return 'no access';
    }
  }
  return 'nothing loaded';
}
"""


async def test_a_console_pages_fetch_cannot_operate_the_settings_page(
    browser: Browser, replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    r = replicas
    await enable_via_page(http(), r, admin_idp)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(r.a.url + "/reports")  # a page the console serves (say, with a stored XSS in it)
        await sign_in_at_idp(page, ADMIN)  # the admin has just signed in: the freshest sign-in there is
        await expect(page.locator("#identity")).to_contain_text("admin.ada")
        # Read the page, to take its form token: refused to a script.
        assert await page.evaluate(READ_THE_PAGE) == 403
        # Open it in a window of its own, to read the token there: no handle on it (COOP).
        opened = await page.evaluate(OPEN_THE_PAGE)
        assert opened in ("no handle", "no access"), opened
        # And a token that leaked anyway is no use to fetch(): only a click on the page posts.
        admin_page = await context.new_page()
        await admin_page.goto(r.a.url + "/oauth2/admin")
        token = await admin_page.locator("input[name=csrf]").first.get_attribute("value")
        answer = await page.evaluate(POST_DISABLE, token)
        assert answer == {"status": 403, "redirected": False}, answer
        for replica in (r.a, r.b):
            assert await enforces_sso(http(), replica.url, admin_idp)
        assert "disable ok" not in r.a.logs()
    finally:
        await context.close()


def page_on_an_origin_of_its_own(
    sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer
) -> tuple[Replicas, str, RegisteredClient]:
    """Replica a with SSO on and the page on an origin of its own (``admin.public_url``: localhost, where the
    console's is 127.0.0.1, so the browser keeps apart their cookies), with a client that may come back to
    both callbacks; the page's origin."""
    r = start_replicas(sidecar_factory, admin_idp, aof_redis, file_sso=True)
    page_origin = f"http://localhost:{r.a.port}"
    own = admin_idp.register_client(
        r.a.url, redirect_uris=[r.a.url + "/oauth2/callback", page_origin + "/oauth2/admin/callback"]
    )
    config = {
        **r.a.config,
        "sso": {**r.a.config["sso"], "client_id": own.client_id, "client_secret": own.client_secret},
        "admin": {**r.a.config["admin"], "public_url": page_origin},
        "trusted_proxies": ["127.0.0.1/32"],  # a front proxy here may rewrite Host: X-Forwarded-Host counts
    }
    r.a.stop()
    r.a.write_config(config)
    r.a.start()
    return r, page_origin, own


async def test_the_page_on_an_origin_of_its_own_serves_only_the_page(
    browser: Browser, sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer, http: Any
) -> None:
    """``admin.public_url``: the console's origin sends the page there, the page's origin proxies nothing,
    admins sign in (and Test login comes back) through its own redirect URI."""
    r, page_origin, own = page_on_an_origin_of_its_own(sidecar_factory, admin_idp, aof_redis)
    async with http().get(r.a.url + "/oauth2/admin?x=1") as resp:
        assert resp.status == 302 and resp.headers["Location"] == page_origin + "/oauth2/admin?x=1"
    async with http().get(page_origin + "/api/whoami", headers={"X-Break-Glass": r.break_glass}) as resp:
        assert resp.status == 404  # no console here, not even through break-glass
    forwarded = {"X-Forwarded-Host": f"localhost:{r.a.port}"}  # a proxy that sent its own Host
    async with http().get(r.a.url + "/api/whoami", headers=forwarded) as resp:
        assert resp.status == 404
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(page_origin + "/oauth2/admin")
        await sign_in_at_idp(page, ADMIN)
        await expect(page).to_have_url(page_origin + "/oauth2/admin")
        await expect(page.locator(".who")).to_contain_text("Signed in as admin.ada@example.com")
        await expect(page.get_by_text(page_origin + "/oauth2/admin/callback")).to_be_visible()
        await page.get_by_label("Issuer URL").fill(admin_idp.issuer)
        await page.get_by_label("Client ID").fill(own.client_id)
        await page.get_by_label("Client secret").fill(own.client_secret)
        await page.get_by_role("button", name="Save").click()
        await expect(page.get_by_text("Saved. The running config is unchanged")).to_be_visible()
        async with context.expect_page() as opened:
            await page.get_by_role("button", name="Test login").click()
        window = await opened.value
        await window.wait_for_load_state()
        await sign_in_at_idp(window, ADMIN)
        await expect(window.get_by_text("You can now enable SSO")).to_be_visible()
        assert window.url.startswith(page_origin + "/oauth2/admin/callback")
        await window.close()
        # The console's origin, signed in as the same admin, cannot post to the page.
        console = await context.new_page()
        await console.goto(r.a.url + "/reports")
        await sign_in_at_idp(console, ADMIN, if_asked=True)
        await expect(console.locator("#identity")).to_contain_text("admin.ada")
        status = await console.evaluate(
            "async () => (await fetch('/oauth2/admin/enable', {method: 'POST', body: 'x=1'})).status"
        )
        assert status == 403
        await page.goto(page_origin + "/oauth2/admin")
        await page.get_by_role("button", name="Enable SSO").click()
        await expect(page).to_have_url(page_origin + "/oauth2/admin?done=enabled")
    finally:
        await context.close()


async def test_the_page_origins_own_callback_leaves_a_fresh_session_id_not_a_planted_one(
    browser: Browser, sidecar_factory: Any, admin_idp: DevIdP, aof_redis: RedisServer, http: Any
) -> None:
    """Session fixation (RFC 9700 4.x; OIDC Core 3.1.2.7): a session cookie planted on the page's own origin
    before an admin signs in there, here a real session of another user that the planter holds, is not the
    session that sign-in leaves. The page origin's own callback sets a new id and ends the planted session."""
    r, page_origin, _ = page_on_an_origin_of_its_own(sidecar_factory, admin_idp, aof_redis)
    planter = http()
    signed_in = await login(planter, r.a.url + "/api/whoami", NOT_ADMIN)
    assert signed_in.status == 200 and NOT_ADMIN in await signed_in.text()
    planted = planter.cookie(SESSION_COOKIE)
    assert planted

    async def planted_is_a_session() -> bool:
        async with http().get(r.a.url + "/api/whoami", headers={"Cookie": f"{SESSION_COOKIE}={planted}"}) as resp:
            assert resp.status in (200, 302), resp.status  # 302: to the provider, to sign in
            return resp.status == 200

    context = await browser.new_context()
    try:
        await context.add_cookies([{"name": SESSION_COOKIE, "value": planted, "url": page_origin}])
        page = await context.new_page()
        opened = await page.goto(page_origin + "/oauth2/admin")
        assert opened is not None and opened.status == 403, "the planted cookie is a live session on the page origin"
        await page.goto(page_origin + "/oauth2/admin/reauth")  # the admin signs in, through the page's callback
        await sign_in_at_idp(page, ADMIN)
        await expect(page).to_have_url(page_origin + "/oauth2/admin?done=reauth")
        await expect(page.locator(".who")).to_contain_text("Signed in as admin.ada@example.com")
        cookies = {c["name"]: c["value"] for c in await context.cookies(page_origin)}
        assert cookies.get(SESSION_COOKIE) not in (None, planted)
        assert not await planted_is_a_session(), "the planted session outlived the sign-in over it"
    finally:
        await context.close()


# -- 10. the YAML export ---------------------------------------------------------------------------------------

FILE = """
public_url: https://console.example.com
upstream: http://127.0.0.1:8888
session: {cookie_secret: "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"}
"""


def test_an_export_holding_dollar_brace_reads_back_as_it_was_applied() -> None:
    """Page values are literal; pasted into the file, ``${OIDC_CLIENT_SECRET}`` in a client ID would otherwise
    expand to the secret, and put it into every authorization URL."""
    from proxy.admin.view import export_yaml

    sso = PageSSO(
        "https://idp.example.com/realms/${REALM}",
        "console-${OIDC_CLIENT_SECRET}",
        "the-secret",
        ("openid", "profile", "${OIDC_CLIENT_SECRET}", "a$b", "$${x}"),
    )
    record = PageRecord(version=3, applied=Applied(True, sso, "d", 1.0, "ada"))
    text = export_yaml(record)
    assert text is not None and "the-secret" not in text
    settings = parse_settings(FILE + text, {"OIDC_CLIENT_SECRET": "s3cr3t-from-env", "REALM": "other"})
    assert settings.sso.issuer_url == sso.issuer_url
    assert settings.sso.client_id == sso.client_id
    assert settings.sso.scopes == sso.scopes
    assert settings.sso.client_secret is not None and settings.sso.client_secret.reveal() == "s3cr3t-from-env"


# -- the smaller findings ------------------------------------------------------------------------------------


async def test_the_history_names_an_admin_by_a_verified_email_else_the_username_and_keeps_the_sub(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    r = replicas
    await enable_via_page(http(), r, admin_idp)
    bob = http()
    await login(bob.session, r.a.url + "/", "admin.bob")  # email_verified: false at the provider (ACCOUNTS)
    html = await page_html(bob, r.a.url)
    assert "Signed in as admin.bob." in html and "admin.bob@example.com" not in html
    assert (await save(bob, r, admin_idp, html, scopes="openid profile email"))[0] == 303
    html = unescape(await page_html(bob, r.a.url))
    entry = re.search(r"<li>.*?</li>", html[html.index('class="history"') :])
    assert entry is not None and "<strong>admin.bob</strong>" in entry.group(0)
    assert re.search(r"\(sub [^)]+\)", entry.group(0)), entry.group(0)
    assert re.search(r"save ok by admin\.bob \(sub [^)]+\)", r.a.logs())


async def test_a_non_utf8_form_and_a_broken_preset_url_are_answered_not_crashed(replicas: Replicas, http: Any) -> None:
    r = replicas
    operator = http()
    await break_glass(operator, r.a.url, r.break_glass)
    html = await page_html(operator, r.a.url)
    from support.adminsetup import csrf

    body = b"csrf=" + csrf(html).encode() + b"&issuer_url=%ff%fe&client_id=\xff\xfe"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": r.a.url}
    async with operator.post(r.a.url + "/oauth2/admin/save", data=body, headers=headers) as resp:
        assert resp.status == 400, await resp.text()
    async with operator.post(r.a.url + "/oauth2/break-glass", data=b"token=\xff", headers=headers) as resp:
        assert resp.status == 400
    async with operator.get(r.a.url + "/oauth2/admin?preset=keycloak&name=main&server=http://[zz") as resp:
        assert resp.status == 200 and "Enter the Keycloak server URL" in await resp.text()
    assert "Traceback" not in r.a.logs()


async def test_enable_on_a_record_that_does_not_open_shows_the_way_out(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    r = replicas
    operator = http()
    await break_glass(operator, r.a.url, r.break_glass)
    assert (await save(operator, r, admin_idp, await page_html(operator, r.a.url)))[0] == 303
    html = await page_html(operator, r.a.url)
    Redis.from_url(r.redis.url).set(KEY, b'{"format":1,"version":5,"key":null,"nonce":"AAAA","data":"AAAA"}')
    status, body, _ = await post(operator, r.a.url, "enable", html, digest=digest(html))
    assert status == 409 and "Forget page settings (below) or Disable SSO replaces them" in unescape(body), body[:500]
    assert "Traceback" not in r.a.logs()


async def test_a_lost_record_is_logged_once_not_every_second(replicas: Replicas, http: Any, admin_idp: DevIdP) -> None:
    r = replicas
    await enable_via_page(http(), r, admin_idp)
    anyone = http()
    await eventually(lambda: enforces_sso(anyone, r.b.url, admin_idp), what="replica b enforcing", timeout=5)
    r.redis.flushall()
    await eventually(lambda: "are gone from" in r.b.logs(), what="replica b noticing")
    noticed = report_time(r, r.b)
    # Each poll of replica b writes its report: wait for polls three seconds after the one that noticed.
    await eventually(lambda: report_time(r, r.b) > noticed + 3, what="replica b polling on")
    assert r.b.logs().count("are gone from") == 1


def report_time(r: Replicas, replica: Any) -> float:
    """When ``replica`` last reported to the page (it does after every poll of the store)."""
    redis = Redis.from_url(r.redis.url)
    times = [0.0]
    for key in redis.scan_iter("sso:admin:replicas:*"):
        raw = redis.get(key)
        if raw is not None and replica.proc is not None and key.decode().endswith(f"/{replica.proc.pid}"):
            times.append(float(json.loads(raw)["at"]))
    return max(times)


async def test_save_words_unreachable_issuers_alike_so_it_cannot_map_the_network(
    replicas: Replicas, http: Any, console: Any
) -> None:
    r = replicas
    operator = http()
    await break_glass(operator, r.a.url, r.break_glass)
    html = await page_html(operator, r.a.url)
    closed_port = f"http://{LOOPBACK}:1"  # nothing listens there
    web_server = console.url  # an HTTP server, not a provider
    redis_port = f"http://{LOOPBACK}:{r.redis.port}"  # a TCP service that does not speak HTTP
    words = []
    for issuer in (closed_port, web_server, redis_port):
        status, body, _ = await post(
            operator, r.a.url, "save", html, issuer_url=issuer, client_id="c", client_secret="s", scopes=""
        )
        assert status == 400
        found = re.search(r'id="issuer_url-error" class="error">([^<]*)<', body)
        assert found is not None, body[:2000]
        words.append(unescape(found.group(1)).replace(issuer, "ISSUER"))
    assert len(set(words)) == 1, words
    for leak in ("refused", "HTTP", "JSON", "TLS", "in time"):
        assert leak not in words[0], words[0]


async def test_a_credentials_check_answered_invalid_request_is_no_proof(replicas: Replicas, http: Any) -> None:
    """Only ``invalid_grant`` for a made-up code proves the client ID and secret; the draft is not kept on less."""
    r = replicas
    operator = http()
    await break_glass(operator, r.a.url, r.break_glass)
    html = await page_html(operator, r.a.url)
    async with running_badop() as op:
        op.set(token_error="invalid_request")
        fields = {"issuer_url": op.issuer, "client_id": op.client_id, "client_secret": op.client_secret}
        status, body, _ = await post(operator, r.a.url, "save", html, scopes="openid", **fields)
        assert op.requests["token"] == 1
    assert status == 400, body[:500]
    assert "answered invalid_request to the credential check, which does not prove" in unescape(body)
    assert "No draft saved yet." in await page_html(operator, r.a.url)


async def test_the_page_reads_the_draft_providers_discovery_once_not_at_every_view(
    replicas: Replicas, http: Any
) -> None:
    r = replicas
    operator = http()
    await break_glass(operator, r.a.url, r.break_glass)
    html = await page_html(operator, r.a.url)
    async with running_badop() as op:
        fields = {"issuer_url": op.issuer, "client_id": op.client_id, "client_secret": op.client_secret}
        assert (await post(operator, r.a.url, "save", html, scopes="openid", **fields))[0] == 303
        after_save = op.requests["discovery"]
        for _ in range(4):
            assert op.issuer in await page_html(operator, r.a.url)
        assert op.requests["discovery"] <= after_save + 1, op.requests


async def test_a_world_writable_settings_file_is_said_loudly(
    sidecar_factory: Any, admin_idp: DevIdP, http: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)  # anyone on the host could rename an older copy over the settings file
    token = secrets.token_urlsafe(32)
    sidecar = sidecar_factory(
        {
            "sso": {"enabled": False},
            "break_glass": {"token": token},
            "admin": {"enabled": True, "emails": ["admin.ada@example.com"], "settings_file": str(state / "p.json")},
        },
        idp=admin_idp,
    )
    await eventually(lambda: "is writable by every user" in sidecar.logs(), what="the warning")
    operator = http()
    await break_glass(operator, sidecar.url, token)
    assert f"{state} is writable by every user" in await page_html(operator, sidecar.url)
