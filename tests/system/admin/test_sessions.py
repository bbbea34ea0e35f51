"""``/oauth2/admin/sessions``: a user's sessions seen and revoked, one or all, on two replicas sharing a real
redis-server, with the real dev IdP; refused to non-admins, to break-glass and to forged forms. A revoked
session is refused on the other replica within a second (its cache hears of it over pub/sub)."""

from __future__ import annotations

import re
import time
from html import unescape
from typing import Any

import pytest

from support.adminsetup import ACCOUNTS, ADMIN, Replicas, break_glass, csrf, start_replicas
from support.http import HttpClient
from support.idp import DevIdP, login
from support.redis_server import RedisServer
from support.sidecar import Sidecar
from support.waiting import eventually

USER = "carol.jones"
SESSIONS = "/oauth2/admin/sessions"
_HANDLE = re.compile(r'name="session" value="([^"]+)"')


@pytest.fixture(scope="module")
def admin_idp(idp_factory: Any) -> DevIdP:
    return idp_factory(accounts=ACCOUNTS)


@pytest.fixture
def replicas(sidecar_factory: Any, admin_idp: DevIdP, redis_clean: RedisServer) -> Replicas:
    """SSO on from the file, as most deployments run it."""
    return start_replicas(sidecar_factory, admin_idp, redis_clean, file_sso=True)


async def signed_in(http: Any, sidecar: Sidecar, username: str, user_agent: str = "pytest") -> HttpClient:
    client = http(headers={"User-Agent": user_agent})
    resp = await login(client.session, sidecar.url + "/api/whoami", username)
    assert resp.status == 200, await resp.text()
    return client


async def passes(client: HttpClient, sidecar: Sidecar) -> bool:
    async with client.get(sidecar.url + "/api/whoami", headers={"Accept": "application/json"}) as resp:
        return resp.status == 200


async def refused(client: HttpClient, sidecar: Sidecar) -> bool:
    async with client.get(sidecar.url + "/api/whoami", headers={"Accept": "application/json"}) as resp:
        return resp.status == 401


async def listing(admin: HttpClient, sidecar: Sidecar, user: str = USER, status: int = 200) -> str:
    async with admin.get(sidecar.url + SESSIONS, params={"user": user}) as resp:
        text = await resp.text()
        assert resp.status == status, text[:2000]
        return text


def revoke(admin: HttpClient, sidecar: Sidecar, page: str, *, origin: str | None = None, **fields: str) -> Any:
    data = {"csrf": csrf(page), "user": USER, **fields}
    return admin.post(sidecar.url + SESSIONS + "/revoke", data=data, headers={"Origin": origin or sidecar.url})


async def test_an_admin_sees_a_users_sessions_and_revokes_one_then_all_on_every_replica(
    replicas: Replicas, http: Any
) -> None:
    a, b = replicas.a, replicas.b
    laptop = await signed_in(http, a, USER, "Laptop Firefox/128")
    phone = await signed_in(http, a, USER, "Phone Safari/17")
    bob = await signed_in(http, a, "bob.stone")
    for client in (laptop, phone):
        assert await passes(client, b)  # b now holds the session in its cache too
    admin = await signed_in(http, a, ADMIN)

    page = await listing(admin, a)
    assert "Laptop Firefox/128" in page and "Phone Safari/17" in page and "bob.stone" not in page
    assert page.count('name="session"') == 2 and "127.0.0.1" in page and "<time" in page
    for header in ("Signed in", "Last used", "Expires", "Client address", "User agent"):
        assert f">{header}</th>" in page
    assert "Your session" not in page  # the viewer's own is marked only in its own list
    for name in ("carol.jones@example.com", "CAROL.JONES"):  # by email, any case
        assert (await listing(admin, a, name)).count('name="session"') == 2
    async with admin.get(a.url + SESSIONS, params={"user": USER}, headers={"Accept": "application/json"}) as resp:
        listed = await resp.json()
    assert listed["covers"] == "every replica" and len(listed["sessions"]) == 2
    first = listed["sessions"][0]
    assert first["username"] == USER and first["client_address"] == "127.0.0.1" and first["current"] is False
    assert {s["user_agent"] for s in listed["sessions"]} == {"Laptop Firefox/128", "Phone Safari/17"}
    assert (await listing(admin, a, ADMIN)).count("Your session") == 1

    # Revoke the phone's session: refused on the other replica within a second; the laptop's still works.
    handle = next(s["id"] for s in listed["sessions"] if s["user_agent"] == "Phone Safari/17")
    async with revoke(admin, a, page, session=handle) as resp:
        assert resp.status == 303 and resp.headers["Location"].endswith("revoked=1")
        location = resp.headers["Location"]
    started = time.monotonic()
    await eventually(lambda: refused(phone, b), what="the revoked session refused on b", timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert await passes(laptop, b) and await passes(laptop, a)
    async with admin.get(a.url + location) as resp:
        assert "Revoked 1 session." in await resp.text()

    # Revoke all: the laptop's goes too, on both replicas; bob and the admin keep theirs.
    page = await listing(admin, a)
    async with revoke(admin, a, page, all="yes") as resp:
        assert resp.status == 303
    await eventually(lambda: refused(laptop, b), what="every session of the user refused on b", timeout=1.0)
    assert await refused(laptop, a) and await passes(bob, b) and await passes(admin, b)
    assert "No live sessions." in await listing(admin, b)

    # Who revoked whose sessions, and when: in the page's history and the log, never a session id.
    async with admin.get(a.url + "/oauth2/admin") as resp:
        settings_page = unescape(await resp.text())
    entries = re.findall(r"<li>(.*?)</li>", settings_page)
    revoked = [e for e in entries if "revoked" in e]
    assert len(revoked) == 2 and all("admin.ada@example.com" in e and "<time" in e for e in revoked), revoked
    assert any("1 session of carol.jones" in e for e in revoked) and any("(all)" in e for e in revoked)
    assert "settings page: revoke ok by admin.ada@example.com" in a.proc.logs()


async def test_non_admins_break_glass_and_forged_forms_are_refused_and_revoke_nothing(
    replicas: Replicas, http: Any
) -> None:
    a = replicas.a
    carol = await signed_in(http, a, USER)
    admin = await signed_in(http, a, ADMIN)
    page = await listing(admin, a)
    handle = _HANDLE.search(page)
    assert handle is not None

    # A signed-in non-admin: 403 to look, 403 to revoke (even her own, through this page).
    await listing(carol, a, status=403)
    async with carol.post(a.url + SESSIONS + "/revoke", data={"user": USER, "all": "yes"}) as resp:
        assert resp.status == 403
    # Break-glass: 403, however valid its form token.
    emergency = http()
    await break_glass(emergency, a.url, replicas.break_glass)
    async with emergency.get(a.url + "/oauth2/admin") as resp:
        emergency_page = await resp.text()
    assert "Show sessions" not in emergency_page  # no way there is shown
    await listing(emergency, a, status=403)
    async with revoke(emergency, a, emergency_page, all="yes") as resp:
        assert resp.status == 403
    # The admin's own browser, but a cross-site POST, one without the form token, or a script's fetch().
    async with revoke(admin, a, page, origin="https://evil.example", all="yes") as resp:
        assert resp.status == 403
    async with admin.post(a.url + SESSIONS + "/revoke", data={"user": USER, "all": "yes"}) as resp:
        assert resp.status == 403
    script = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Dest": "empty"}
    async with admin.get(a.url + SESSIONS, params={"user": USER}, headers=script) as resp:
        assert resp.status == 403  # not served to a script, so it never learns a form token
    data = {"csrf": csrf(page), "user": USER, "all": "yes"}
    async with admin.post(a.url + SESSIONS + "/revoke", data=data, headers={**script, "Origin": a.url}) as resp:
        assert resp.status == 403  # a leaked token is no use to a script either
    assert await passes(carol, a) and await passes(carol, replicas.b)
    # The same form, clicked on the page, does revoke: what was refused above was the forgery.
    async with revoke(admin, a, page, all="yes") as resp:
        assert resp.status == 303
    assert await refused(carol, a)
    assert handle.group(1) not in a.proc.logs()  # session handles are for forms, not logs


async def test_with_memory_sessions_the_page_says_it_covers_this_process_only(
    sidecar_factory: Any, http: Any, tmp_path: Any
) -> None:
    sidecar = sidecar_factory(
        {"admin": {"enabled": True, "groups": ["admins"], "settings_file": str(tmp_path / "page.json")}}
    )
    admin = await signed_in(http, sidecar, ADMIN)
    carol = await signed_in(http, sidecar, USER)
    page = await listing(admin, sidecar)
    assert "this process only" in page and page.count('name="session"') == 1
    async with admin.get(sidecar.url + SESSIONS, params={"user": USER}, headers={"Accept": "application/json"}) as r:
        assert (await r.json())["covers"] == "this process"
    async with revoke(admin, sidecar, page, all="yes") as resp:
        assert resp.status == 303
    assert await refused(carol, sidecar)
