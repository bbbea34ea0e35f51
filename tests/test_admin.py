"""The SSO settings page over HTTP: access, Save, Test login, Enable, Disable, Forget, CSRF, the record.

Real components: two sidecar replicas through their CLI sharing a real redis-server, and a dev IdP
(``oidc-provider``) with one account that lacks given/family name. The browser walk with screenshots is
``test_admin_browser.py``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest

from support.http import HttpClient
from support.idp import DevIdP, login
from support.redis_server import RedisServer
from support.sidecar import Sidecar
from support.waiting import eventually

ADMIN = "admin.ada"  # in group "admins" at the dev IdP
NOT_ADMIN = "nomap.user"  # no given/family name, not an admin
BREAK_GLASS = secrets.token_urlsafe(32)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_DIGEST = re.compile(r'name="digest" value="([^"]*)"')


@pytest.fixture(scope="module")
def admin_idp(idp_factory: Any) -> DevIdP:
    return idp_factory(accounts={NOT_ADMIN: {"given_name": None, "family_name": None}})


class Replicas:
    def __init__(self, a: Sidecar, b: Sidecar, client: Any) -> None:
        self.a, self.b, self.client = a, b, client


@pytest.fixture
def replicas(sidecar_factory: Any, admin_idp: DevIdP, redis_clean: RedisServer) -> Iterator[Replicas]:
    """Two replicas behind one public URL (a's), SSO off in the file, page settings in Redis."""
    port_a = _free_port()
    public = f"http://127.0.0.1:{port_a}"
    client = admin_idp.register_client(public)
    cookie_secret = secrets.token_urlsafe(32)
    config = {
        "public_url": public,
        "sso": {"enabled": False},
        "session": {"store": "redis", "redis_url": redis_clean.url, "cookie_secret": cookie_secret},
        "break_glass": {"token": BREAK_GLASS},
        "admin": {"enabled": True, "groups": ["admins"]},
    }
    a = sidecar_factory({**config, "listen": f"127.0.0.1:{port_a}"}, register=False, idp=admin_idp, name="replica-a")
    b = sidecar_factory(config, register=False, idp=admin_idp, name="replica-b")
    yield Replicas(a, b, client)


def _free_port() -> int:
    from support.procs import free_port

    return free_port()


async def _page(http: HttpClient, base: str) -> str:
    async with http.get(base + "/oauth2/admin") as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.text()


def _csrf(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no form token on the page"
    return unescape(match.group(1))


async def _break_glass(http: HttpClient, base: str) -> None:
    async with http.post(base + "/oauth2/break-glass", data={"token": BREAK_GLASS, "rd": "/oauth2/admin"}) as resp:
        assert resp.status == 303, await resp.text()


async def _post(http: HttpClient, base: str, action: str, html: str, **fields: str) -> tuple[int, str, str]:
    data = {"csrf": _csrf(html), **fields}
    async with http.post(f"{base}/oauth2/admin/{action}", data=data, headers={"Origin": base}) as resp:
        return resp.status, await resp.text(), resp.headers.get("Location", "")


async def _test_login(http: HttpClient, base: str, html: str, username: str) -> str:
    digest = _DIGEST.search(html)
    status, body, location = await _post(http, base, "test", html, digest=unescape(digest.group(1)) if digest else "")
    assert status == 303, body
    assert "prompt=login" in location
    resp = await login(http.session, location, username)
    text = await resp.text()
    assert resp.status == 200, text
    assert "Submitting" not in text, text
    return text


async def test_first_setup_through_break_glass_then_enable_on_both_replicas(
    replicas: Replicas, http: Any, admin_idp: DevIdP
) -> None:
    a, b, client = replicas.a, replicas.b, replicas.client
    browser = http()
    # No credentials, SSO off: pointed to the break-glass form, which comes back to the page.
    async with browser.get(a.url + "/oauth2/admin") as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/oauth2/break-glass?rd=/oauth2/admin"
    await _break_glass(browser, a.url)
    html = await _page(browser, a.url)
    assert "SSO is disabled" in html
    assert f"{a.url}/oauth2/callback" in html

    # Save with a wrong secret: refused, next to the secret, the provider's error included.
    form = {"issuer_url": admin_idp.issuer, "client_id": client.client_id, "scopes": "openid profile email groups"}
    status, body, _ = await _post(browser, a.url, "save", html, client_secret="wrong-" + client.client_secret, **form)
    assert status == 400
    assert 'id="client_secret-error"' in body and "invalid_client" in body
    assert client.client_secret not in body
    status, _, location = await _post(browser, a.url, "save", html, client_secret=client.client_secret, **form)
    assert (status, location) == (303, "/oauth2/admin?done=saved")
    html = await _page(browser, a.url)
    assert client.client_secret not in html

    # Enable before a test: refused.
    status, body, _ = await _post(browser, a.url, "enable", html, digest=_DIGEST.search(html).group(1))
    assert status == 409 and "has not been tested" in body

    # A user without given/family name who is no admin: shown as missing, Enable refused.
    result = await _test_login(browser, a.url, html, NOT_ADMIN)
    assert "Test login succeeded" in result
    assert result.count(">missing<") == 2
    assert "is not an admin" in unescape(await _page(browser, a.url))
    html = await _page(browser, a.url)
    status, body, _ = await _post(browser, a.url, "enable", html, digest=_DIGEST.search(html).group(1))
    assert status == 409 and "did not send given_name, family_name" in unescape(body)

    # A complete admin: Enable works, and both replicas enforce SSO.
    result = await _test_login(browser, a.url, html, ADMIN)
    assert "Test login succeeded" in result and ">missing<" not in result
    html = await _page(browser, a.url)
    status, body, location = await _post(browser, a.url, "enable", html, digest=_DIGEST.search(html).group(1))
    assert (status, location) == (303, "/oauth2/admin?done=enabled"), body
    anonymous = http()

    async def both_enforce() -> bool:
        for replica in (a, b):
            async with anonymous.get(replica.url + "/", headers={"Accept": "text/html"}) as resp:
                if resp.status != 302 or not resp.headers["Location"].startswith(admin_idp.issuer):
                    return False
        return True

    await eventually(both_enforce, timeout=5, what="both replicas redirect to the provider")
    # A new user signs in and the console receives the headers.
    user = http()
    page = await login(user.session, a.url + "/", "carol.jones")
    assert "carol.jones" in await page.text()
