"""Two sidecar replicas with the settings page on, behind one public URL, for the settings-page tests."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

from support.http import HttpClient
from support.idp import DevIdP, RegisteredClient, login
from support.procs import LOOPBACK, free_port
from support.redis_server import RedisServer
from support.sidecar import Sidecar

ADMIN = "admin.ada"  # in group "admins" at the dev IdP: an admin under admin.groups
NOT_ADMIN = "nomap.user"  # sent without given_name and family_name (see ACCOUNTS), and no admin
UNVERIFIED_ADMIN = "admin.bob"  # an admin (group "admins") whose email the provider does not vouch for
ACCOUNTS = {NOT_ADMIN: {"given_name": None, "family_name": None}, UNVERIFIED_ADMIN: {"email_verified": False}}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_DIGEST = re.compile(r'name="digest" value="([^"]*)"')


@dataclass
class Replicas:
    a: Sidecar  # public_url is a's address: browsers use a
    b: Sidecar
    client: RegisteredClient  # registered at the IdP for a's public_url, not yet known to the sidecars
    break_glass: str
    redis: RedisServer


def start_replicas(
    sidecar_factory: Any,
    idp: DevIdP,
    redis: RedisServer,
    *,
    extra: dict[str, Any] | None = None,
    file_sso: bool = False,
    with_break_glass: bool = True,
) -> Replicas:
    """Two replicas, page settings in Redis, admins: the IdP's group "admins". SSO is off in the file (the
    first-setup shape) unless ``file_sso``: then the file names the registered client."""
    port_a = free_port()
    public = f"http://{LOOPBACK}:{port_a}"
    client = idp.register_client(public)
    token = secrets.token_urlsafe(32)
    sso: dict[str, Any] = {"enabled": False}
    if file_sso:
        sso = {"issuer_url": idp.issuer, "client_id": client.client_id, "client_secret": client.client_secret}
    config: dict[str, Any] = {
        "public_url": public,
        "sso": sso,
        "session": {"store": "redis", "redis_url": redis.url, "cookie_secret": secrets.token_urlsafe(32)},
        "break_glass": {"token": token} if with_break_glass else None,
        "admin": {"enabled": True, "groups": ["admins"]},
        **(extra or {}),
    }
    config = {k: v for k, v in config.items() if v is not None}
    a = sidecar_factory(with_state(sidecar_factory, {**config, "listen": f"{LOOPBACK}:{port_a}"}, "replica-a"),
                        register=False, idp=idp, name="replica-a")  # fmt: skip
    b = sidecar_factory(with_state(sidecar_factory, config, "replica-b"), register=False, idp=idp, name="replica-b")
    return Replicas(a, b, client, token, redis)


def with_state(sidecar_factory: Any, config: dict[str, Any], name: str) -> dict[str, Any]:
    """``config`` with a state file of the replica's own (``admin.state_file``: its high-water mark)."""
    state = Path(sidecar_factory.work_dir) / f"{name}.state"
    return {**config, "admin": {**config.get("admin", {}), "state_file": str(state)}}


# -- walking the page ------------------------------------------------------------------------------------


async def page_html(http: HttpClient, base: str, status: int = 200) -> str:
    async with http.get(base + "/oauth2/admin") as resp:
        text = await resp.text()
        assert resp.status == status, (resp.status, text[:2000])
        return text


def csrf(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no form token on the page"
    return unescape(match.group(1))


def digest(html: str) -> str:
    match = _DIGEST.search(html)
    return unescape(match.group(1)) if match else ""


async def break_glass(http: HttpClient, base: str, token: str) -> None:
    async with http.post(base + "/oauth2/break-glass", data={"token": token, "rd": "/oauth2/admin"}) as resp:
        assert resp.status == 303, await resp.text()


async def post(
    http: HttpClient, base: str, action: str, html: str, *, origin: str | None = None, **fields: str
) -> tuple[int, str, str]:
    data = {"csrf": csrf(html), **fields}
    async with http.post(f"{base}/oauth2/admin/{action}", data=data, headers={"Origin": origin or base}) as resp:
        return resp.status, await resp.text(), resp.headers.get("Location", "")


async def save(http: HttpClient, r: Replicas, idp: DevIdP, html: str, **overrides: str) -> tuple[int, str, str]:
    fields = {
        "issuer_url": idp.issuer,
        "client_id": r.client.client_id,
        "client_secret": r.client.client_secret,
        "scopes": "openid profile email groups",
        **overrides,
    }
    return await post(http, r.a.url, "save", html, **fields)


async def run_test_login(http: HttpClient, base: str, username: str) -> str:
    html = await page_html(http, base)
    status, body, location = await post(http, base, "test", html, digest=digest(html))
    assert status == 303, body
    assert "prompt=login" in location
    resp = await login(http.session, location, username)
    text = await resp.text()
    assert resp.status == 200 and "Test login" in text, text[:3000]
    return text


async def enable_via_page(http: HttpClient, r: Replicas, idp: DevIdP) -> None:
    """First setup through break-glass: Save, Test login as an admin, Enable."""
    await break_glass(http, r.a.url, r.break_glass)
    status, body, _ = await save(http, r, idp, await page_html(http, r.a.url))
    assert status == 303, body
    await run_test_login(http, r.a.url, ADMIN)
    html = await page_html(http, r.a.url)
    status, body, location = await post(http, r.a.url, "enable", html, digest=digest(html))
    assert (status, location) == (303, "/oauth2/admin?done=enabled"), body


async def enforces_sso(http: HttpClient, url: str, idp: DevIdP) -> bool:
    async with http.get(url + "/", headers={"Accept": "text/html"}) as resp:
        return resp.status == 302 and resp.headers["Location"].startswith(idp.issuer)


async def is_open(http: HttpClient, url: str) -> bool:
    async with http.get(url + "/api/whoami") as resp:
        return resp.status == 200


async def is_closed(http: HttpClient, url: str) -> bool:
    async with http.get(url + "/api/whoami") as resp:
        return resp.status == 503
