"""The SSO settings page walked in a real Chromium, as an admin would, with a screenshot of every step.

Two replicas share a real redis-server; the provider is the real dev IdP. Screenshots go to
``.test-artifacts/admin-page/`` (the README's come from there).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect
from redis import Redis

from support import REPO
from support.adminsetup import ACCOUNTS, ADMIN, NOT_ADMIN, Replicas, start_replicas
from support.browser_login import sign_in_at_idp
from support.http import new_client
from support.idp import DevIdP
from support.procs import http_status
from support.redis_server import RedisServer
from support.waiting import eventually

pytest_plugins = ["support.browser"]  # the browser fixture (Playwright)

SHOTS = REPO / ".test-artifacts" / "admin-page"


@pytest.fixture(scope="module")
def page_idp(idp_factory: Any) -> DevIdP:
    return idp_factory(accounts=ACCOUNTS)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that keeps its data over a restart (AOF), as the deploy examples run it."""
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


class Walk:
    """One browser context (the admin's) and the numbered screenshots of the walk."""

    def __init__(self, context: BrowserContext, page: Page, replicas: Replicas, idp: DevIdP) -> None:
        self.context, self.page, self.r, self.idp = context, page, replicas, idp
        self.step = 0
        SHOTS.mkdir(parents=True, exist_ok=True)

    async def shot(self, name: str, page: Page | None = None) -> Path:
        self.step += 1
        path = SHOTS / f"{self.step:02d}-{name}.png"
        await (page or self.page).screenshot(path=str(path), full_page=True)
        return path

    @property
    def admin_url(self) -> str:
        return self.r.a.url + "/oauth2/admin"

    async def test_login(self, username: str, name: str) -> Page:
        async with self.context.expect_page() as opened:
            await self.page.get_by_role("button", name="Test login").click()
        window = await opened.value
        await window.wait_for_load_state()
        await sign_in_at_idp(window, username)
        await expect(window.get_by_role("heading", level=1)).to_contain_text("Test login")
        await self.shot(name, window)
        return window


async def _replica_enforces_sso(url: str, idp: DevIdP) -> bool:
    async with new_client() as client, client.get(url + "/", headers={"Accept": "text/html"}) as resp:
        return resp.status == 302 and resp.headers["Location"].startswith(idp.issuer)


async def _replica_is_open(url: str) -> bool:
    async with new_client() as client, client.get(url + "/api/whoami") as resp:
        return resp.status == 200


async def test_the_settings_page_walk(
    browser: Browser, sidecar_factory: Any, page_idp: DevIdP, durable_redis: RedisServer, tmp_path: Path
) -> None:
    replicas = start_replicas(sidecar_factory, page_idp, durable_redis)
    redis = Redis.from_url(durable_redis.url)
    a, b, client = replicas.a, replicas.b, replicas.client
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=a.url)
    page = await context.new_page()
    walk = Walk(context, page, replicas, page_idp)
    try:
        # In through break-glass: SSO is off, so nobody can sign in yet.
        await page.goto(walk.admin_url)
        await expect(page).to_have_url(re.compile(r"/oauth2/break-glass\?rd=/oauth2/admin$"))
        await page.get_by_label("Break-glass token").fill(replicas.break_glass)
        await page.get_by_role("button", name="Continue to the settings page").click()
        await expect(page).to_have_url(walk.admin_url)
        await expect(page.get_by_text("SSO is disabled")).to_be_visible()
        await walk.shot("first-visit-through-break-glass")

        # Copy the redirect URI.
        await page.get_by_role("button", name="Copy").click()
        copied = await page.evaluate("navigator.clipboard.readText()")
        assert copied == f"{a.url}/oauth2/callback"
        await expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()

        # Fill the fields; Save with a wrong secret is refused, naming the secret.
        await page.get_by_label("Issuer URL").fill(page_idp.issuer)
        await page.get_by_label("Client ID").fill(client.client_id)
        await page.get_by_label("Client secret").fill("wrong-secret")
        await page.get_by_label("Scopes").fill("openid profile email groups")
        await page.get_by_role("button", name="Save").click()
        secret_error = page.locator("#client_secret-error")
        await expect(secret_error).to_contain_text("invalid_client")
        await expect(page.get_by_label("Client secret")).to_have_attribute("aria-invalid", "true")
        await walk.shot("save-refused-wrong-secret")
        await page.get_by_label("Client secret").fill(client.client_secret)
        await page.get_by_role("button", name="Save").click()
        await expect(page.get_by_text("Saved. The running config is unchanged")).to_be_visible()
        assert client.client_secret not in await page.content()
        await walk.shot("saved-draft")

        # Enable before a test: refused.
        await page.get_by_role("button", name="Enable SSO").click()
        await expect(page.locator("#enable-error")).to_contain_text("has not been tested")
        await walk.shot("enable-refused-untested")

        # A user without given/family name who is no admin: shown as missing, and Enable refused.
        window = await walk.test_login(NOT_ADMIN, "test-login-missing-claims")
        await expect(window.locator(".missing")).to_have_count(2)
        await expect(window.get_by_text("Admin under the draft")).to_be_visible()
        await window.close()
        await page.goto(walk.admin_url)
        await page.get_by_role("button", name="Enable SSO").click()
        await expect(page.locator("#enable-error")).to_contain_text("did not send given_name, family_name")
        await walk.shot("enable-refused-missing-claims")

        # A complete admin user: then Enable.
        window = await walk.test_login(ADMIN, "test-login-admin")
        await expect(window.locator(".missing")).to_have_count(0)
        await expect(window.get_by_text("You can now enable SSO")).to_be_visible()
        await window.close()
        await page.goto(walk.admin_url)
        await page.get_by_role("button", name="Enable SSO").click()
        await expect(page.get_by_text("SSO is enabled").first).to_be_visible()
        await walk.shot("enabled")

        # Both replicas enforce SSO; a new user signs in and the console receives the headers.
        for replica in (a, b):
            enforcing = f"{replica.name} enforcing SSO"
            await eventually(lambda r=replica: _replica_enforces_sso(r.url, page_idp), what=enforcing, timeout=5)
        user = await browser.new_context()
        user_page = await user.new_page()
        await user_page.goto(a.url + "/reports")
        await sign_in_at_idp(user_page, "carol.jones")
        await expect(user_page.locator("#identity")).to_contain_text("carol.jones@example.com")
        await expect(user_page.locator("#identity")).to_contain_text("Carol Jones")
        await walk.shot("console-after-sign-in", user_page)

        # A signed-in non-admin gets 403 on the page; an admin 200.
        response = await user_page.goto(walk.admin_url)
        assert response is not None and response.status == 403
        await walk.shot("non-admin-403", user_page)
        await user.close()
        admin = await browser.new_context()
        admin_page = await admin.new_page()
        await admin_page.goto(walk.admin_url)
        await sign_in_at_idp(admin_page, ADMIN)
        await expect(admin_page).to_have_url(walk.admin_url)
        await expect(admin_page.locator(".who")).to_contain_text("Signed in as admin.ada@example.com")
        await walk.shot("admin-signed-in", admin_page)

        # A cross-site POST without the token: refused, nothing changes.
        refused = await admin.request.post(
            a.url + "/oauth2/admin/disable", form={"confirm": "yes"}, headers={"Origin": "https://evil.example"}
        )
        assert refused.status == 403
        tokenless = await admin.request.post(a.url + "/oauth2/admin/disable", form={"confirm": "yes"})
        assert tokenless.status == 403
        assert await _replica_enforces_sso(a.url, page_idp)

        # Restart: still enabled, and never open in between, also with Redis down at the start.
        a.stop()
        replicas.redis.stop()
        a.start(wait=False)
        await eventually(lambda: http_status(a.url + "/healthz") == 200, what="replica a up")
        assert http_status(a.url + "/readyz") == 503
        assert http_status(a.url + "/api/whoami") == 503
        replicas.redis.start()
        await eventually(lambda: _replica_enforces_sso(a.url, page_idp), what="replica a enforcing SSO again")

        # A tampered record is refused: the running config is kept (and said so).
        key = "sso:admin:settings"
        original = redis.get(key)
        tampered = original.replace(b'"data":"', b'"data":"A', 1)
        redis.set(key, tampered)
        await admin_page.goto(walk.admin_url)
        await expect(admin_page.get_by_text("were refused").first).to_be_visible()
        await walk.shot("tampered-record-refused", admin_page)
        assert await _replica_enforces_sso(a.url, page_idp) and await _replica_enforces_sso(b.url, page_idp)
        redis.set(key, original)

        # Disable, confirmed on a second form: open again on both replicas.
        await admin_page.goto(walk.admin_url)
        await admin_page.get_by_role("button", name="Disable SSO").click()
        await expect(admin_page.get_by_role("heading", name="Disable SSO?")).to_be_visible()
        await walk.shot("disable-confirmation", admin_page)
        await admin_page.get_by_role("button", name="Disable SSO").click()
        await expect(admin_page).to_have_url(re.compile(r"/oauth2/(admin|break-glass)"))
        for replica in (a, b):
            await eventually(lambda r=replica: _replica_is_open(r.url), what=f"{replica.name} open again", timeout=5)
        await page.goto(walk.admin_url)  # the break-glass browser still reaches the page
        await expect(page.get_by_text("SSO is disabled")).to_be_visible()
        # Saved, tested twice, enabled, disabled: one entry each (refusals are logged, not history).
        await expect(page.locator("ol.history li")).to_have_count(5)
        await walk.shot("disabled-with-history")
    except Exception:
        await page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"failure screenshot: {tmp_path / 'failure.png'}; url {page.url}")
        raise
    finally:
        await context.close()
