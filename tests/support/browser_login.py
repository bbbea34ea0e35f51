"""Signing in at the dev IdP in a real browser (Playwright), as a person would. A module of its own, not part of
the ``support.browser`` plugin: a plugin module that a test module also imports cannot have its asserts rewritten."""

from __future__ import annotations

from playwright.async_api import Page, expect


async def sign_in_at_idp(page: Page, username: str, *, if_asked: bool = False) -> None:
    """The dev IdP's sign-in form (and its consent, the first time a user meets a client), filled and sent.
    ``if_asked``: nothing to do when the provider, still signed in, sent the browser straight back."""
    if if_asked and not await page.locator("#login").count():
        return
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#login", username)
    await page.fill("#password", "any password")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_function("document.querySelector('#login') === null")
    await page.wait_for_load_state()
    allow = page.get_by_role("button", name="Allow")
    if await allow.count():
        await allow.click()
