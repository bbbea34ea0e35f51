"""The SSO settings page over HTTP: access rules, Save, Test login, Enable, Disable, Forget, CSRF, where the
settings live, and never failing open.

Real components: sidecar replicas through their CLI sharing a real redis-server, and a dev IdP
(``oidc-provider``) with one account that lacks given/family name. ``test_browser.py`` beside it walks the
same page in Chromium.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import stat
import subprocess
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from redis import Redis
from yarl import URL

from support.adminsetup import (
    ACCOUNTS,
    ADMIN,
    NOT_ADMIN,
    Replicas,
    break_glass,
    csrf,
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
from support.idp import DevIdP, login
from support.redis_server import RedisServer
from support.sidecar import Sidecar, sidecar_command
from support.waiting import eventually


@pytest.fixture(scope="module")
def admin_idp(idp_factory: Any) -> DevIdP:
    return idp_factory(accounts=ACCOUNTS)


@pytest.fixture
def replicas(sidecar_factory: Any, admin_idp: DevIdP, redis_clean: RedisServer) -> Replicas:
    return start_replicas(sidecar_factory, admin_idp, redis_clean)


# -- the tests -----------------------------------------------------------------------------------------


async def test_a_start_reads_the_record_without_a_warning(replicas: Replicas) -> None:
    """Reading the record at start is no recovery: it is logged at INFO, never as "proxying again"."""
    for replica in (replicas.a, replicas.b):
        await eventually(lambda r=replica: "settings page: record read" in r.proc.logs(), what=replica.name)
        logs = replica.proc.logs()
        assert "proxying again" not in logs and "not proxying" not in logs, logs


async def test_first_setup_through_break_glass_then_enable_on_both_replicas(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    a, b, client = replicas.a, replicas.b, replicas.client
    browser = http()
    async with browser.get(a.url + "/oauth2/admin") as resp:  # SSO off, no credentials: the break-glass form
        assert resp.status == 302
        assert resp.headers["Location"] == "/oauth2/break-glass?rd=/oauth2/admin"
    await break_glass(browser, a.url, replicas.break_glass)
    html = await page_html(browser, a.url)
    assert "SSO is disabled" in html and f"{a.url}/oauth2/callback" in html

    # A wrong secret is refused next to its field with the provider's error; the right one is saved.
    status, body, _ = await save(browser, replicas, admin_idp, html, client_secret="wrong-" + client.client_secret)
    assert status == 400
    assert 'id="client_secret-error"' in body and "invalid_client" in body
    assert client.client_secret not in body
    status, _, location = await save(browser, replicas, admin_idp, html)
    assert (status, location) == (303, "/oauth2/admin?done=saved")
    html = await page_html(browser, a.url)
    assert client.client_secret not in html
    assert await is_open(http(), a.url)  # Save changed nothing that runs

    status, body, _ = await post(browser, a.url, "enable", html, digest=digest(html))
    assert status == 409 and "has not been tested" in body

    result = await run_test_login(browser, a.url, NOT_ADMIN)
    assert "Test login succeeded" in result and result.count(">missing<") == 2
    html = await page_html(browser, a.url)
    status, body, _ = await post(browser, a.url, "enable", html, digest=digest(html))
    assert status == 409 and "did not send given_name, family_name" in unescape(body)

    result = await run_test_login(browser, a.url, ADMIN)
    assert ">missing<" not in result and "You can now enable SSO" in result
    html = await page_html(browser, a.url)
    status, body, location = await post(browser, a.url, "enable", html, digest=digest(html))
    assert (status, location) == (303, "/oauth2/admin?done=enabled"), body
    anonymous = http()
    for replica in (a, b):
        await eventually(lambda r=replica: enforces_sso(anonymous, r.url, admin_idp), what=replica.name, timeout=5)
    user = http()
    page = await login(user.session, a.url + "/", "carol.jones")
    text = await page.text()
    assert "carol.jones@example.com" in text and "Carol Jones" in text
    for replica in (a, b):  # every change was logged, and never the secret
        logs = replica.proc.logs()
        assert client.client_secret not in logs
    assert "settings page: save ok by break-glass from 127.0.0.1" in a.proc.logs()
    assert "settings page: enable ok by break-glass from 127.0.0.1" in a.proc.logs()


class PageSwapTraffic:
    """Anonymous traffic on one replica while the page switches SSO: one API caller, one after another
    (so its statuses are in the order the replica answered them), and downloads that span the swap."""

    DOWNLOAD = 512 * 1024  # 8 chunks with 0.1 s between them: in flight across a swap
    # the console's content (deploy/demo/console.py): bytes 0..255 over and over

    def __init__(self, http: Any, url: str) -> None:
        self.http, self.url = http(), url
        self.api: list[int] = []
        self.downloads: list[int] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> PageSwapTraffic:
        self._tasks = [asyncio.ensure_future(loop()) for loop in (self._calls, self._download, self._download)]
        return self

    async def _calls(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.http.get(self.url + "/api/whoami", headers={"Accept": "application/json"}) as resp:
                    await resp.read()
                    self.api.append(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"api: {exc!r}")
            await asyncio.sleep(0.01)  # pacing of the load, not a wait for anything

    async def _download(self) -> None:
        url = f"{self.url}/download/{self.DOWNLOAD}?delay=0.1"
        while not self._stop.is_set():
            try:
                async with self.http.get(url, headers={"Accept": "application/octet-stream"}) as resp:
                    body = await resp.read()
                    self.downloads.append(resp.status)
                    if resp.status == 200 and body != bytes(range(256)) * (self.DOWNLOAD // 256):
                        self.failures.append(f"download: {len(body)} bytes, not the console's")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"download: {exc!r}")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 30)


async def test_enable_and_disable_through_the_page_fail_no_request_on_either_replica(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    anonymous = http()
    traffic = {r.name: PageSwapTraffic(http, r.url).start() for r in (replicas.a, replicas.b)}
    operator = http()
    await enable_via_page(operator, replicas, admin_idp)
    for replica in (replicas.a, replicas.b):
        await eventually(lambda r=replica: enforces_sso(anonymous, r.url, admin_idp), what=replica.name, timeout=5)
    html = await page_html(operator, replicas.a.url)
    status, _, location = await post(operator, replicas.a.url, "disable", html, confirm="yes")
    assert (status, location) == (303, "/oauth2/admin?done=disabled")
    for replica in (replicas.a, replicas.b):
        await eventually(lambda r=replica: is_open(anonymous, r.url), what=f"{replica.name} open", timeout=5)
    await traffic[replicas.a.name].stop()  # stopping each waits for the downloads under way
    await traffic[replicas.b.name].stop()
    for name, load in traffic.items():
        assert load.failures == [], (name, load.failures[:5])
        # Open, then enforcing (401 for an API call), then open again: each replica switched once each
        # way, with nothing else in between (no 5xx, no flapping back).
        runs = [code for i, code in enumerate(load.api) if i == 0 or load.api[i - 1] != code]
        assert runs == [200, 401, 200], (name, runs)
        assert set(load.downloads) <= {200, 401} and 200 in load.downloads, (name, load.downloads)


async def test_a_save_after_the_test_voids_it(replicas: Replicas, http: Any, admin_idp: DevIdP) -> None:
    browser = http()
    await break_glass(browser, replicas.a.url, replicas.break_glass)
    await save(browser, replicas, admin_idp, await page_html(browser, replicas.a.url))
    await run_test_login(browser, replicas.a.url, ADMIN)
    html = await page_html(browser, replicas.a.url)
    old_digest = digest(html)
    status, _, _ = await save(browser, replicas, admin_idp, html, scopes="openid profile email")
    assert status == 303
    html = await page_html(browser, replicas.a.url)
    assert digest(html) != old_digest
    for offered in (old_digest, digest(html)):  # neither the old draft nor the untested new one
        status, body, _ = await post(browser, replicas.a.url, "enable", html, digest=offered)
        assert status == 409, body
    assert await is_open(http(), replicas.a.url)


async def test_an_empty_secret_keeps_the_stored_one_only_for_the_same_issuer_and_client(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    browser = http()
    await break_glass(browser, replicas.a.url, replicas.break_glass)
    html = await page_html(browser, replicas.a.url)
    status, body, _ = await save(browser, replicas, admin_idp, html, client_secret="")
    assert status == 400 and "Enter the client secret." in body  # nothing stored yet
    assert (await save(browser, replicas, admin_idp, html))[0] == 303
    assert (await save(browser, replicas, admin_idp, html, client_secret="", scopes="openid email"))[0] == 303
    status, body, _ = await save(browser, replicas, admin_idp, html, client_secret="", client_id="another-client")
    assert status == 400
    assert "only while the issuer URL and client ID stay the same" in body


async def test_break_glass_may_only_disable_while_sso_is_enabled(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    await enable_via_page(http(), replicas, admin_idp)
    emergency = http()
    await break_glass(emergency, replicas.a.url, replicas.break_glass)
    html = await page_html(emergency, replicas.a.url)
    assert "may only disable it" in html
    for action, fields in (
        ("save", {"issuer_url": "https://evil.example"}),
        ("test", {}),
        ("enable", {}),
        ("forget", {}),
    ):
        status, body, _ = await post(emergency, replicas.a.url, action, html, **fields)
        assert status == 403, (action, body)
    assert await enforces_sso(http(), replicas.a.url, admin_idp)
    status, body, _ = await post(emergency, replicas.a.url, "disable", html)
    assert status == 200 and 'name="confirm" value="yes"' in body  # a second button completes it
    status, _, location = await post(emergency, replicas.a.url, "disable", html, confirm="yes")
    assert (status, location) == (303, "/oauth2/admin?done=disabled")
    await eventually(lambda: is_open(http(), replicas.b.url), what="replica b open", timeout=5)


async def test_admins_and_others_once_sso_is_on(replicas: Replicas, http: Any, admin_idp: DevIdP) -> None:
    await enable_via_page(http(), replicas, admin_idp)
    nobody = http()
    async with nobody.get(replicas.a.url + "/oauth2/admin") as resp:  # no credentials, SSO on: sign in
        assert resp.status == 302 and resp.headers["Location"].startswith(admin_idp.issuer)
    carol = http()
    await login(carol.session, replicas.a.url + "/", "carol.jones")
    await page_html(carol, replicas.a.url, status=403)
    ada = http()
    await login(ada.session, replicas.a.url + "/", ADMIN)
    html = await page_html(ada, replicas.a.url)
    assert "Signed in as admin.ada@example.com" in html
    session_id = (ada.cookie("sso_sidecar") or "").split(".")[1]
    assert len(session_id) > 10 and session_id not in html  # the form token is bound to it, never shows it
    async with ada.get(replicas.a.url + "/oauth2/status") as resp:  # page admins may read the status
        status = await resp.json()
    assert status["sso_settings"]["source"] == "page"
    assert status["config"]["sso"]["client_secret"] == "********"
    assert replicas.client.client_secret not in json.dumps(status)


async def test_forms_refuse_a_missing_token_and_a_foreign_origin(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    browser = http()
    await break_glass(browser, replicas.a.url, replicas.break_glass)
    html = await page_html(browser, replicas.a.url)
    fields = {"issuer_url": admin_idp.issuer, "client_id": "x", "client_secret": "y"}
    async with browser.post(replicas.a.url + "/oauth2/admin/save", data=fields) as resp:
        assert resp.status == 403 and "form token" in await resp.text()
    status, body, _ = await post(browser, replicas.a.url, "save", html, origin="https://evil.example", **fields)
    assert status == 403 and "another site" in body
    other = http()  # a token from another holder is worth nothing
    await break_glass(other, replicas.a.url, replicas.break_glass)
    async with other.post(replicas.a.url + "/oauth2/admin/save", data={"csrf": csrf(html), **fields}) as resp:
        assert resp.status == 403
    assert "No draft saved yet." in await page_html(browser, replicas.a.url)


async def test_a_test_login_is_bound_to_the_browser_and_its_iss_is_checked(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    browser = http()
    await break_glass(browser, replicas.a.url, replicas.break_glass)
    await save(browser, replicas, admin_idp, await page_html(browser, replicas.a.url))
    html = await page_html(browser, replicas.a.url)
    _, _, location = await post(browser, replicas.a.url, "test", html, digest=digest(html))
    redirect = await login(browser.session, location, ADMIN, stop_at=replicas.a.url + "/oauth2/callback")
    callback = URL(redirect.headers["Location"])
    assert callback.query.get("iss") == admin_idp.issuer
    # Another browser with the same response: not started there (login CSRF).
    async with http().get(callback) as resp:
        text = await resp.text()
        assert resp.status in (400, 404) and "Test login" not in text, text  # SSO is off here: 404
        assert "Set-Cookie" not in resp.headers
    # This browser, with the response claiming another issuer (a mix-up, RFC 9207): a failed test.
    async with browser.get(callback.update_query(iss="https://evil.example")) as resp:
        text = await resp.text()
    assert "Test login failed" in text and "issuer (iss) does not match" in text
    assert "Not ready to enable" not in text
    html = await page_html(browser, replicas.a.url)
    status, _, _ = await post(browser, replicas.a.url, "enable", html, digest=digest(html))
    assert status == 409


async def test_forget_makes_the_file_authoritative_again(replicas: Replicas, http: Any, admin_idp: DevIdP) -> None:
    await enable_via_page(http(), replicas, admin_idp)
    ada = http()  # a browser of its own: one with the break-glass cookie is let through without a sign-in
    await login(ada.session, replicas.a.url + "/", ADMIN)
    html = await page_html(ada, replicas.a.url)
    assert "Signed in as admin.ada@example.com" in html
    status, body, _ = await post(ada, replicas.a.url, "forget", html)  # asks first, saying what comes next
    assert status == 200 and 'name="confirm" value="yes"' in body
    assert "SSO disabled: every request reaches the console without a sign-in" in unescape(body)
    status, _, location = await post(ada, replicas.a.url, "forget", html, confirm="yes")
    assert (status, location) == (303, "/oauth2/admin?done=forgotten")
    for replica in (replicas.a, replicas.b):  # the file says sso.enabled: false
        await eventually(lambda r=replica: is_open(http(), r.url), what=f"{replica.name} open", timeout=5)


async def test_a_tampered_record_is_refused_and_the_running_config_kept(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    await enable_via_page(http(), replicas, admin_idp)
    for replica in (replicas.a, replicas.b):
        await eventually(lambda r=replica: enforces_sso(http(), r.url, admin_idp), what=replica.name, timeout=5)
    redis = Redis.from_url(replicas.redis.url)
    original = redis.get("sso:admin:settings")
    assert original is not None
    envelope = json.loads(original)
    envelope["data"] = "A" + envelope["data"][1:] if envelope["data"][0] != "A" else "B" + envelope["data"][1:]
    redis.set("sso:admin:settings", json.dumps(envelope))
    await eventually(lambda: "record was refused" in replicas.b.proc.logs(), what="replica b refusing the record")
    assert await enforces_sso(http(), replicas.b.url, admin_idp)
    assert await enforces_sso(http(), replicas.a.url, admin_idp)
    # A restarted replica has nothing applied yet: it does not proxy rather than fall back to the file.
    replicas.b.stop()
    replicas.b.start()
    async with http().get(replicas.b.url + "/api/whoami") as resp:
        assert resp.status == 503
    async with http().get(replicas.b.url + "/readyz") as resp:
        assert resp.status == 503 and "refused" in (await resp.json())["reason"]
    redis.set("sso:admin:settings", original)
    await eventually(lambda: enforces_sso(http(), replicas.b.url, admin_idp), what="replica b back", timeout=5)


async def test_a_replica_that_cannot_read_the_settings_stops_proxying(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    """With the settings off, a Redis outage must not leave a replica proxying on what it read last."""
    replicas.redis.stop()
    try:
        await eventually(lambda: is_closed(http(), replicas.a.url), what="replica a closed", timeout=15)
    finally:
        replicas.redis.start()
    await eventually(lambda: is_open(http(), replicas.a.url), what="replica a open again", timeout=10)


async def test_settings_file_without_redis_is_private_and_survives_a_restart(
    sidecar_factory: Any, admin_idp: DevIdP, http: Any, tmp_path: Path
) -> None:
    settings_file = tmp_path / "state" / "page-settings.json"
    settings_file.parent.mkdir()
    token = secrets.token_urlsafe(32)
    sidecar: Sidecar = sidecar_factory(
        {
            "sso": {"enabled": False},
            "break_glass": {"token": token},
            "admin": {"enabled": True, "emails": ["admin.ada@example.com"], "settings_file": str(settings_file)},
        },
        idp=admin_idp,
    )
    r = Replicas(sidecar, sidecar, sidecar.client, token, None)  # type: ignore[arg-type]
    browser = http()
    await enable_via_page(browser, r, admin_idp)
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    assert sidecar.client.client_secret.encode() not in settings_file.read_bytes()
    sidecar.stop()
    sidecar.start()
    assert await enforces_sso(http(), sidecar.url, admin_idp)


async def test_check_says_where_the_sso_settings_come_from(replicas: Replicas, http: Any, admin_idp: DevIdP) -> None:
    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*sidecar_command(), "check", "--config", str(replicas.a.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    before = check()
    assert "sso settings:      from the config file" in before.stdout, before.stdout + before.stderr
    await enable_via_page(http(), replicas, admin_idp)
    after = check()
    assert after.returncode == 0, after.stdout + after.stderr
    assert "from the settings page: version" in after.stdout
    assert f"issuer:            {admin_idp.issuer}" in after.stdout
    assert replicas.client.client_secret not in after.stdout + after.stderr
    replicas.redis.stop()
    try:
        down = check()
    finally:
        replicas.redis.start()
    assert "UNKNOWN: the settings page's record" in down.stdout
    assert "Traceback" not in down.stderr and "ConnectionError" not in down.stdout + down.stderr

    # A record this config cannot open (sealed under other cookie secrets): a sidecar with it would not
    # proxy, so check does not call the config usable.
    other = yaml.safe_load(replicas.a.config_path.read_text())
    other["session"]["cookie_secret"] = secrets.token_urlsafe(32)
    other_path = replicas.a.config_path.with_name("other-secret.yaml")
    other_path.write_text(yaml.safe_dump(other))
    refused = subprocess.run(
        [*sidecar_command(), "check", "--config", str(other_path)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "REFUSED: the settings page's record" in refused.stdout
    assert "(settings page) admin: the record in" in refused.stderr


async def test_the_page_is_locked_down(replicas: Replicas, http: Any, admin_idp: DevIdP) -> None:
    browser = http()
    await break_glass(browser, replicas.a.url, replicas.break_glass)
    async with browser.get(replicas.a.url + "/oauth2/admin") as resp:
        headers = resp.headers
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    async with browser.get(replicas.a.url + "/oauth2/admin?preset=google") as resp:
        assert "set access.allowed_email_domains" in await resp.text()
    async with browser.get(replicas.a.url + "/oauth2/admin?preset=okta&name=acme") as resp:
        assert 'value="https://acme.okta.com/oauth2/default"' in await resp.text()
    async with browser.get(
        replicas.a.url + "/oauth2/admin?preset=keycloak&name=main&server=https://sso.example.com"
    ) as resp:
        assert 'value="https://sso.example.com/realms/main"' in await resp.text()


async def test_a_cookie_secret_rotation_reseals_the_record_so_the_old_secret_can_go(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    await enable_via_page(http(), replicas, admin_idp)
    redis = Redis.from_url(replicas.redis.url)
    sealed_by = json.loads(redis.get("sso:admin:settings") or b"{}")["key"]
    old = replicas.a.config["session"]["cookie_secret"]
    new = secrets.token_urlsafe(32)
    for replica in (replicas.a, replicas.b):  # step 1: the new secret first, the old one still accepted
        replica.write_config({**replica.config, "session": {**replica.config["session"], "cookie_secret": [new, old]}})
        replica.reload()

    def resealed() -> bool:
        return json.loads(redis.get("sso:admin:settings") or b"{}")["key"] != sealed_by

    await eventually(resealed, what="the record re-sealed under the newest cookie secret")
    for replica in (replicas.a, replicas.b):  # step 2: the old secret dropped
        replica.write_config({**replica.config, "session": {**replica.config["session"], "cookie_secret": new}})
        replica.reload()
    restarted = replicas.b
    restarted.stop()
    restarted.start()  # nothing applied yet: it must open the record under the new secret alone
    assert await enforces_sso(http(), restarted.url, admin_idp)
    assert "record was refused" not in restarted.proc.logs()


async def test_sign_in_again_asks_the_provider_for_a_fresh_sign_in_and_returns_to_the_page(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    """What Enable, Disable and Forget send an admin with an old sign-in to (``adminlogin.reauth``)."""
    await enable_via_page(http(), replicas, admin_idp)
    ada = http()
    await login(ada.session, replicas.a.url + "/", ADMIN)
    async with ada.get(replicas.a.url + "/oauth2/admin/reauth") as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert str(location).startswith(admin_idp.issuer)
    assert location.query["prompt"] == "login" and location.query["max_age"] == "0"
    back = await login(ada.session, str(location), ADMIN)  # the provider asks again: the form is filled in
    assert back.status == 200 and str(back.url).endswith("/oauth2/admin?done=reauth")
    assert "You signed in again" in await back.text()
    # A script's read of the page (Fetch Metadata says so) gets no form token.
    async with ada.get(replicas.a.url + "/oauth2/admin", headers={"Sec-Fetch-Mode": "cors"}) as resp:
        assert resp.status == 403 and 'name="csrf"' not in await resp.text()


async def test_the_page_shows_the_access_rules_and_the_routes_read_only(
    sidecar_factory: Any, http: Any, tmp_path: Path
) -> None:
    """The routes come from the file: the page lists them under the access rules, in the order they are tried,
    and offers no way to change them."""
    token = secrets.token_urlsafe(32)
    sidecar = sidecar_factory(
        {
            "sso": {"enabled": False},
            "break_glass": {"token": token},
            "admin": {"enabled": True, "groups": ["admins"], "settings_file": str(tmp_path / "page.json")},
            "access": {"allowed_email_domains": ["example.com"]},
            "routes": [
                {"path": "^/admin/", "methods": ["DELETE"], "access": {"allowed_groups": ["console-admins"]}},
                {"path": "^/billing/<b>", "max_age": "15m", "acr_values": ["urn:mfa"]},
            ],
        },
        name="page-routes",
    )
    browser = http()
    await break_glass(browser, sidecar.url, token)
    html = await page_html(browser, sidecar.url)
    section = html[html.index('<h2 id="access-h">Access rules</h2>') :]
    section = section[: section.index("</section>")]
    assert "<dd>email domains example.com</dd>" in section
    rows = section[section.index("<tbody>") :]
    assert rows.index("routes[0]") < rows.index("routes[1]")
    assert "<code>^/admin/</code></td><td>DELETE</td><td>groups console-admins</td><td>any</td>" in rows
    assert "<code>^/billing/&lt;b&gt;</code>" in rows and "<b>" not in rows  # escaped
    assert "email domains example.com (the top-level access)</td><td>acr urn:mfa; at most 15m old" in rows
    assert "<form" not in section and "<input" not in section
