"""Routes under attack: a user a route refuses tries to reach its paths by another spelling of the path or of the
method, through a real sidecar, with raw request targets (``http.client`` sends them byte for byte).

Every attempt must end in the route's 403 (or the 400 of a path that cannot be read safely): never the console.
The controls show the same user reaching paths no route guards, and an admin reaching the route, so a refusal
here is the route's doing. The matching rule: tests/unit/auth/test_routes.py; skip_auth's attacks:
test_gate_paths.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SidecarFactory

from support.idp import login
from support.procs import LOOPBACK
from support.sidecar import Sidecar

ROUTES = [
    {"path": "^/admin(/|$)", "access": {"allowed_groups": ["console-admins"]}},
    {"path": "^/api/whoami$", "methods": ["DELETE"], "access": {"allowed_groups": ["console-admins"]}},
    {"path": "^/exports/", "methods": ["GET"], "access": {"allowed_groups": ["console-admins"]}},
]
# Top-level access for admins only, and one area open to anyone who signs in: a path that is the open area under
# one reading and not under another must be judged by both, so the top-level access still refuses.
OPEN_AREA = {"access": {"allowed_groups": ["console-admins"]}, "routes": [{"path": "^/help(/|$)", "access": {}}]}
ACCOUNTS = {"ann": {"groups": ["users", "console-admins"]}}
API = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def route_sidecar(idp_factory: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    provider = idp_factory(accounts=ACCOUNTS)
    factory = SidecarFactory(provider, console, tmp_path_factory.mktemp("route-paths"))
    yield factory({"routes": ROUTES}, name="route-paths")
    factory.stop_all()


@pytest.fixture(scope="module")
def open_area_sidecar(idp_factory: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    provider = idp_factory(accounts=ACCOUNTS)
    factory = SidecarFactory(provider, console, tmp_path_factory.mktemp("route-open-area"))
    yield factory({**OPEN_AREA, "session": {"cookie_name": "open_area"}}, name="route-open-area")
    factory.stop_all()


async def signed_in_cookies(sidecar: Sidecar, landing: str = "/") -> dict[str, str]:
    """The Cookie header of a signed-in user outside the routes' groups (carl), and of one inside (ann)."""
    from support.http import new_client

    headers = {}
    for username in ("carl", "ann"):
        async with new_client() as client:
            resp = await login(client, sidecar.url_for(landing), username)
            assert resp.status in (200, 403)  # signed in, whether or not the landing page admits them
            headers[username] = "; ".join(f"{m.key}={m.value}" for m in client.cookie_jar)
    return headers


@pytest.fixture(scope="module")
async def cookies(route_sidecar: Sidecar) -> dict[str, str]:
    return await signed_in_cookies(route_sidecar)


@pytest.fixture(scope="module")
async def open_area_cookies(open_area_sidecar: Sidecar) -> dict[str, str]:
    return await signed_in_cookies(open_area_sidecar, "/help/")


def _raw(port: int, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def raw(sidecar: Sidecar, cookie: str, target: str, method: str = "GET", **headers: str) -> tuple[int, bytes]:
    """Send ``target`` exactly as written, with ``cookie``."""
    sent = {**API, "Cookie": cookie, **headers}
    if method in ("POST", "PUT", "DELETE", "PATCH"):
        sent.setdefault("Content-Length", "0")
    return await asyncio.to_thread(_raw, sidecar.port, method, target, sent)


# --------------------------------------------------------------------------------------------------
# Controls


async def test_the_admin_reaches_the_route_and_the_user_reaches_the_rest(route_sidecar, cookies):
    assert (await raw(route_sidecar, cookies["ann"], "/admin/users", Accept="text/html"))[0] == 200
    assert (await raw(route_sidecar, cookies["ann"], "/api/whoami", method="DELETE"))[0] == 200
    assert (await raw(route_sidecar, cookies["carl"], "/reports", Accept="text/html"))[0] == 200
    assert (await raw(route_sidecar, cookies["carl"], "/api/whoami", method="POST"))[0] == 200
    status, body = await raw(route_sidecar, cookies["carl"], "/admin/users")
    assert status == 403 and json.loads(body)["error"] == "access_denied"


# --------------------------------------------------------------------------------------------------
# Another spelling of the path


@pytest.mark.parametrize(
    "target",
    [
        "/%61dmin/users",  # encoded letters
        "/%61%64%6D%69%6E/users",
        "/%41dmin/../admin/users",
        "/x/../admin/users",  # dot-segments
        "/x/%2e%2e/admin/users",
        "/x/%2E%2E/admin/users",
        "/./admin/users",
        "/admin/./users",
        "/reports/../../admin/users",
        "//admin/users",  # double slashes
        "///admin//users",
        "/admin;x/users",  # ;parameters: Tomcat and friends drop them
        "/admin;jsessionid=1",
        "/admin%3Bx/users",
        "/admin%2Fusers",  # an encoded slash that a server behind may decode
        "/admin%2fusers",
        "/admin%5Cusers",  # backslashes, encoded and raw
        "/admin\\users",
        "/admin%3F/users",  # a decoded '?' or '#' that a server behind may cut at
        "/admin%23x",
        "http://console.example/admin/users",  # absolute form
    ],
)
async def test_no_spelling_of_the_path_gets_past_the_route(route_sidecar, cookies, target):
    status, body = await raw(route_sidecar, cookies["carl"], target)
    assert status in (400, 403), (target, status, body[:200])
    assert b"Data Platform Console" not in body and b"raw_path" not in body


@pytest.mark.parametrize(
    "target", ["/x/..%2Fadmin/users", "/x/..;/admin/users", "/x/%252e%252e/admin/users", "/x/..%5Cadmin/users"]
)
async def test_spellings_that_read_differently_elsewhere_are_refused_outright(route_sidecar, cookies, target):
    status, body = await raw(route_sidecar, cookies["carl"], target)
    assert status == 400, (target, status, body[:200])


# --------------------------------------------------------------------------------------------------
# Another spelling of the method


@pytest.mark.parametrize(
    ("target", "method", "headers"),
    [
        ("/api/whoami", "DELETE", {}),
        ("/api/%77hoami", "DELETE", {}),
        ("/api/x/../whoami", "DELETE", {}),
        ("/api/whoami;x", "DELETE", {}),
        ("/api/whoami", "POST", {"X-HTTP-Method-Override": "DELETE"}),  # Rails, Express, Laravel, Symfony
        ("/api/whoami", "POST", {"X-HTTP-Method-Override": "delete"}),
        ("/api/whoami", "POST", {"X-HTTP-Method": "DELETE"}),
        ("/api/whoami", "POST", {"X-Method-Override": "DELETE"}),
        ("/api/whoami?_method=DELETE", "POST", {}),  # a form's method field, in the query
        ("/api/whoami?a=1&_method=delete", "POST", {}),
    ],
)
async def test_no_spelling_of_the_method_gets_past_a_route_for_delete(route_sidecar, cookies, target, method, headers):
    status, body = await raw(route_sidecar, cookies["carl"], target, method=method, **headers)
    assert status == 403, (target, method, headers, status, body[:200])


@pytest.mark.parametrize("method", ["delete", "Delete", "dElEtE"])
async def test_a_mixed_case_method_never_reaches_the_console(route_sidecar, cookies, method):
    """HTTP methods are case-sensitive (RFC 9110 9.1), and the sidecar's parser refuses these: a console that
    would upper-case them never sees them."""
    status, body = await raw(route_sidecar, cookies["carl"], "/api/whoami", method=method)
    assert status in (400, 403), (method, status, body[:200])
    assert b"raw_path" not in body


async def test_a_route_for_delete_leaves_other_methods_to_the_top_level_access(route_sidecar, cookies):
    for method in ("GET", "POST", "PUT", "PATCH"):
        status, body = await raw(route_sidecar, cookies["carl"], "/api/whoami", method=method)
        assert status == 200, (method, status, body[:200])
        assert json.loads(body)["method"] == method


async def test_head_is_judged_as_get_by_a_route_for_get(route_sidecar, cookies):
    """A HEAD is a GET without its body (the console answers it with the GET handler): a route for GET that
    did not hold it would leak a page's existence, length and headers."""
    assert (await raw(route_sidecar, cookies["ann"], "/exports/all.csv", method="HEAD"))[0] == 200
    assert (await raw(route_sidecar, cookies["carl"], "/reports", method="HEAD"))[0] == 200
    for target in ("/exports/all.csv", "/%65xports/all.csv", "//exports/all.csv"):
        assert (await raw(route_sidecar, cookies["carl"], target, method="HEAD"))[0] == 403, target


# --------------------------------------------------------------------------------------------------
# A path that is an open route under one reading and not under another


async def test_the_open_area_is_open_and_the_rest_is_for_admins(open_area_sidecar, open_area_cookies):
    assert (await raw(open_area_sidecar, open_area_cookies["carl"], "/help/start", Accept="text/html"))[0] == 200
    assert (await raw(open_area_sidecar, open_area_cookies["carl"], "/reports"))[0] == 403
    assert (await raw(open_area_sidecar, open_area_cookies["ann"], "/reports"))[0] == 200


@pytest.mark.parametrize(
    "target",
    [
        "/help;x/secret",  # /help/secret where ;parameters are dropped, /help;x/secret elsewhere
        "/help%2Fsecret",  # /help/secret where %2F is decoded
        "/help%3Fsecret",  # /help where a decoded '?' ends the path
        "/help%3Bx/secret",
    ],
)
async def test_a_path_that_is_the_open_area_only_under_some_reading_is_judged_by_the_top_level_too(
    open_area_sidecar, open_area_cookies, target
):
    """Each reading picks its own route; one that picks none brings in the top-level access, which refuses
    carl. The same spelling from an admin passes: the refusal is the routes' doing, not an unreadable path."""
    status, body = await raw(open_area_sidecar, open_area_cookies["carl"], target)
    assert status == 403 and json.loads(body)["error"] == "access_denied", (target, status, body[:200])
    assert (await raw(open_area_sidecar, open_area_cookies["ann"], target))[0] == 200, target
