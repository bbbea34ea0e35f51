"""The whole sign-in and sign-out, once, in a real headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from support.idp import DevIdP
from support.waiting import eventually

pytest_plugins = ["support.browser"]  # the browser fixture (Playwright)


async def confirm_sign_out(page: Page, sidecar_url: str, idp: DevIdP) -> None:
    """Click through the "sign out?" pages: the sidecar's own (if it shows one), then the provider's."""
    for _ in range(4):
        await page.wait_for_load_state()
        if page.url.startswith(idp.issuer):
            yes = page.get_by_role("button", name="Yes, sign me out")
            if await yes.count() == 0:
                return
            await yes.click()
        elif "/oauth2/sign_out" in page.url:
            submit = page.locator("form button, form input[type=submit]").first
            if await submit.count() == 0:
                return
            await submit.click()
        else:
            return


async def test_sign_in_lands_on_original_page_and_sign_out_requires_login_again(
    browser: Browser, sidecar_factory, idp: DevIdP, tmp_path: Path
) -> None:
    sidecar = sidecar_factory()
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{sidecar.url}/reports?id=7")

        # At the provider's sign-in form.
        await expect(page).to_have_url(re.compile(re.escape(idp.issuer) + r"/interaction/"))
        await page.fill("#login", "alice.smith")
        await page.fill("#password", "any password")
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Allow").click()

        # Back on the console, at the path and query first asked for, with the identity headers.
        await expect(page).to_have_url(f"{sidecar.url}/reports?id=7")
        await expect(page).to_have_title("Data Platform Console")
        identity = page.locator("#identity")
        await expect(identity).to_contain_text("Alice Smith")
        await expect(identity).to_contain_text("alice.smith@example.com")

        # Sign out through the console's own link, here and at the provider.
        await page.get_by_role("link", name="Sign out").click()
        await confirm_sign_out(page, sidecar.url, idp)
        await page.wait_for_load_state()
        assert not page.url.startswith(f"{sidecar.url}/reports"), page.url

        # The protected page asks for a sign-in again (the provider's session is gone too).
        await page.goto(f"{sidecar.url}/reports?id=7")
        await expect(page).to_have_url(re.compile(re.escape(idp.issuer) + r"/interaction/"))
        await expect(page.locator("#login")).to_be_visible()
    except Exception:
        shot = tmp_path / "failure.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}\nurl: {page.url}\n{(await page.content())[:3000]}")
        raise
    finally:
        await context.close()


async def test_a_route_that_needs_a_stronger_sign_in_steps_up_in_place_and_lands_on_it(
    browser: Browser, sidecar_factory, idp_factory, tmp_path: Path
) -> None:
    """Step-up (``routes[].acr_values``) with the real provider: a session without the acr is sent to sign in
    again, types a one-time code, and comes back to the page it asked for, the same session upgraded."""
    mfa = "urn:dev-idp:mfa"
    acr_idp: DevIdP = idp_factory(acr={"password": "urn:dev-idp:pwd", "one_time_code": mfa})
    sidecar = sidecar_factory({"routes": [{"path": "^/keys/", "acr_values": [mfa]}]}, idp=acr_idp)
    context = await browser.new_context()
    page = await context.new_page()

    async def session_cookie() -> str:
        return next(c["value"] for c in await context.cookies(sidecar.url) if c["name"] == "sso_sidecar")

    try:
        await page.goto(f"{sidecar.url}/reports")
        await page.fill("#login", "carl.jones")
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Allow").click()
        await expect(page).to_have_url(f"{sidecar.url}/reports")
        first = await session_cookie()

        # The page that needs the one-time code: back at the provider's form, which says so.
        await page.goto(f"{sidecar.url}/keys/rotate?id=3")
        await expect(page).to_have_url(re.compile(re.escape(acr_idp.issuer) + r"/interaction/"))
        await expect(page.locator("main")).to_contain_text("asks for a sign-in with a one-time code")
        await page.fill("#login", "carl.jones")
        await page.fill("#otp", "246810")
        await page.get_by_role("button", name="Sign in").click()

        # Landed on the route, with a new session id for the same session; other pages do not ask again.
        await expect(page).to_have_url(f"{sidecar.url}/keys/rotate?id=3")
        await expect(page.locator("#path")).to_have_text("/keys/rotate?id=3")
        await expect(page.locator("#identity")).to_contain_text("carl.jones@example.com")
        assert await session_cookie() != first
        await page.goto(f"{sidecar.url}/reports")
        await expect(page).to_have_url(f"{sidecar.url}/reports")
        await page.goto(f"{sidecar.url}/keys/list")
        await expect(page).to_have_url(f"{sidecar.url}/keys/list")
    except Exception:
        shot = tmp_path / "failure.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}\nurl: {page.url}\n{(await page.content())[:3000]}")
        raise
    finally:
        await context.close()


async def test_a_step_up_the_provider_does_not_deliver_ends_on_one_403_page_and_the_session_lives_on(
    browser: Browser, sidecar_factory, idp_factory, tmp_path: Path
) -> None:
    """Never a loop, in a browser that follows every redirect: a route whose acr the provider never issues, and
    one whose one-time code the user does not type, each end on one 403 page after one trip to the provider,
    saying what the route requires; the session goes on unchanged for the rest of the console."""
    pwd, mfa, never = "urn:dev-idp:pwd", "urn:dev-idp:mfa", "urn:example:never"
    acr_idp: DevIdP = idp_factory(acr={"password": pwd, "one_time_code": mfa})
    routes = [{"path": "^/keys/", "acr_values": [mfa]}, {"path": "^/vault/", "acr_values": [never]}]
    sidecar = sidecar_factory({"routes": routes}, idp=acr_idp)
    context = await browser.new_context()
    page = await context.new_page()
    authorizations: list[str] = []
    page.on("request", lambda r: authorizations.append(r.url) if r.url.startswith(acr_idp.issuer + "/auth?") else None)

    async def session_cookie() -> str:
        return next(c["value"] for c in await context.cookies(sidecar.url) if c["name"] == "sso_sidecar")

    try:
        await page.goto(f"{sidecar.url}/reports")
        await page.fill("#login", "carl.jones")
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Allow").click()
        await expect(page).to_have_url(f"{sidecar.url}/reports")
        first = await session_cookie()
        authorizations.clear()

        # An acr the provider ignores: it answers at once, without it, and the callback ends there.
        response = await page.goto(f"{sidecar.url}/vault/secrets")
        assert response is not None and response.status == 403
        await expect(page).to_have_url(re.compile(re.escape(sidecar.url) + r"/oauth2/callback\?"))
        await expect(page.locator("body")).to_contain_text(never)
        await expect(page.locator("body")).to_contain_text("still signed in")
        assert len(authorizations) == 1 and f"acr_values={never}" in authorizations[0], authorizations
        assert await page.locator("meta[http-equiv]").count() == 0  # nothing sends the browser round again
        assert await session_cookie() == first

        # The code asked for and not typed: the provider signs in with a password only, and that is one 403.
        authorizations.clear()
        await page.goto(f"{sidecar.url}/keys/rotate")
        await expect(page.locator("main")).to_contain_text("asks for a sign-in with a one-time code")
        await page.fill("#login", "carl.jones")
        async with page.expect_navigation(url=re.compile(re.escape(sidecar.url) + r"/oauth2/callback\?")) as nav:
            await page.get_by_role("button", name="Sign in").click()
        response = await nav.value
        assert response is not None and response.status == 403
        await expect(page.locator("body")).to_contain_text(mfa)
        await expect(page.locator("body")).to_contain_text(pwd)
        assert len(authorizations) == 1, authorizations
        assert await session_cookie() == first

        # The rest of the console is as it was: no sign-in asked for.
        response = await page.goto(f"{sidecar.url}/reports?after=1")
        assert response is not None and response.status == 200
        await expect(page).to_have_url(f"{sidecar.url}/reports?after=1")
        await expect(page.locator("#identity")).to_contain_text("carl.jones@example.com")
    except Exception:
        shot = tmp_path / "failure.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}\nurl: {page.url}\n{(await page.content())[:3000]}")
        raise
    finally:
        await context.close()


async def test_a_route_with_max_age_asks_for_a_fresh_sign_in_once_the_old_one_is_too_old(
    browser: Browser, sidecar_factory, idp: DevIdP, tmp_path: Path
) -> None:
    """Step-up (``routes[].max_age``) in a browser: once the sign-in is older than the route allows, the route
    sends the browser to the provider's sign-in form again (``prompt=login``), and it lands back on the route;
    other pages never ask."""
    sidecar = sidecar_factory(
        {"routes": [{"path": "^/payments/", "max_age": "5s"}], "sso": {"clock_skew": "0s"}}, name="max-age-browser"
    )
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{sidecar.url}/payments/new")
        await page.fill("#login", "carl.jones")
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Allow").click()
        await expect(page).to_have_url(f"{sidecar.url}/payments/new")

        async def asked_again() -> bool:
            await page.goto(f"{sidecar.url}/payments/new?try=1")
            return page.url.startswith(idp.issuer)

        await eventually(asked_again, what="the route to ask for a fresh sign-in", timeout=30)
        await expect(page.locator("#login")).to_be_visible()  # the provider's form, not its session
        await page.fill("#login", "carl.jones")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(f"{sidecar.url}/payments/new?try=1")
        await expect(page.locator("#identity")).to_contain_text("carl.jones@example.com")
        await page.goto(f"{sidecar.url}/reports")
        await expect(page).to_have_url(f"{sidecar.url}/reports")
    except Exception:
        shot = tmp_path / "failure.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}\nurl: {page.url}\n{(await page.content())[:3000]}")
        raise
    finally:
        await context.close()
