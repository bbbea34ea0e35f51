"""``make demo`` tells the README's story: the demo itself (deploy/demo/run_demo.py with config/demo.yaml, on
its fixed ports) walked in Chromium as the README's "Quick start: the demo" says, step by step. SSO is on from
the file: a user signs in and lands on the console; an admin signs in to the settings page, sees what runs,
sees and revokes the user's session, and registers a client with the initial access token the demo prints;
the break-glass token it prints opens the page for Disable SSO alone, and the page says why."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from support import REPO
from support.procs import Process, port_open

pytest_plugins = ["support.browser"]  # the browser fixture (Playwright)
pytestmark = pytest.mark.usefixtures("demo_ports")  # the demo's fixed ports, one test at a time (conftest.py)

RUN_DEMO = REPO / "deploy" / "demo" / "run_demo.py"
README = (REPO / "README.md").read_text(encoding="utf-8")
DEMO = "http://127.0.0.1:4180"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Process]:
    """``make demo``'s launcher, with its state in a temporary directory instead of .demo/."""
    busy = [p for p in (9000, 8888, 4180) if port_open(p)]
    assert not busy, f"the demo's ports {busy} are taken (a running `make demo`?): the test needs them"
    proc = Process("make-demo", [sys.executable, str(RUN_DEMO), "--state-dir", str(tmp_path / "state")],
                   cwd=REPO, log_dir=tmp_path).start()  # fmt: skip
    try:
        proc.wait_for_line(r"Open http://127\.0\.0\.1:4180/", timeout=60)
        yield proc
    finally:
        proc.stop(timeout=20)


async def sign_in(page: Page, username: str) -> None:
    await page.fill("#login", username)
    await page.fill("#password", "anything")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_function("document.querySelector('#login') === null")
    allow = page.get_by_role("button", name="Allow")
    if await allow.count():
        await allow.click()


async def test_the_demo_walks_as_the_readme_says(demo: Process, browser: Browser) -> None:
    printed = demo.logs()
    registration = re.search(r"initial access token for Register automatically: (\S+)", printed)
    break_glass = re.search(
        r"break-glass token for this run \(while SSO is on it may only Disable SSO\): (\S+)", printed
    )
    assert registration and break_glass, printed
    # What the README promises, in its words.
    promises = ("sign in as a user whose name starts with `admin`", "Register automatically", "**Disable SSO**",
                "initial access token the demo prints", "Sessions", "/oauth2/break-glass?rd=/oauth2/admin")  # fmt: skip
    for said in promises:
        assert said in README, said

    # Open the console, sign in with any username: the console shows the name and email.
    user = await (await browser.new_context()).new_page()
    await user.goto(DEMO + "/")
    await sign_in(user, "alice.smith")
    await expect(user.locator("#identity")).to_contain_text("alice.smith@example.com")

    # The settings page: an admin signs in, and sees what runs (the config file's provider).
    admin = await (await browser.new_context(viewport={"width": 1100, "height": 900})).new_page()
    await admin.goto(DEMO + "/oauth2/admin")
    await sign_in(admin, "admin.you")
    await expect(admin.get_by_text("SSO is enabled").first).to_be_visible()
    await expect(admin.get_by_text("The SSO settings come from the config file.")).to_be_visible()
    await expect(admin.locator("dl.running")).to_contain_text("console-demo")

    # Sessions: alice's, revoked: her cookie is worth nothing now.
    await admin.get_by_label("User", exact=True).fill("alice.smith")
    await admin.get_by_role("button", name="Show sessions").click()
    await expect(admin.locator("table.sessions tbody tr")).to_have_count(1)
    api = {"Accept": "application/json"}
    assert (await user.context.request.get(DEMO + "/api/whoami", headers=api)).status == 200
    await admin.get_by_role("button", name="Revoke", exact=True).click()
    await expect(admin.get_by_text("Revoked 1 session.")).to_be_visible()
    assert (await user.context.request.get(DEMO + "/api/whoami", headers=api)).status == 401  # to sign in again

    # Register automatically, with the token the demo printed: a second client, as the draft.
    await admin.goto(DEMO + "/oauth2/admin")
    await admin.get_by_label("Issuer URL").fill("http://127.0.0.1:9000")
    await admin.get_by_label("Initial access token").fill(registration.group(1))
    await admin.get_by_role("button", name="Register automatically").click()
    await expect(admin.get_by_text("Registered a new client at the provider")).to_be_visible()
    assert await admin.get_by_label("Client ID").input_value() not in ("", "console-demo")

    # Break-glass, while SSO is on: the page shows Disable SSO alone, and says why.
    emergency = await (await browser.new_context()).new_page()
    await emergency.goto(DEMO + "/oauth2/break-glass?rd=/oauth2/admin")
    await emergency.get_by_label("Break-glass token").fill(break_glass.group(1))
    await emergency.get_by_role("button", name="Continue to the settings page").click()
    await expect(emergency.locator("#break-glass-limit")).to_contain_text("may only disable it")
    await expect(emergency.get_by_role("button", name="Save")).to_have_count(0)
    await expect(emergency.get_by_role("button", name="Disable SSO")).to_have_count(1)
