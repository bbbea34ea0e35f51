"""Forward-auth mode: ``/oauth2/auth`` for nginx ``auth_request`` and Traefik ``forwardAuth``.

First the endpoint itself (asked directly, as a front proxy would), then a real nginx (the Debian
package) running ``deploy/nginx/console.conf`` with only its two addresses and its port replaced: a full
login through nginx, the console behind it receiving the identity headers that nginx got from
``auth_request``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarFactory
from yarl import URL

from support import REPO
from support.idp import login
from support.procs import LOOPBACK, Process, free_port
from support.sidecar import Sidecar

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EXAMPLE = REPO / "deploy" / "nginx" / "console.conf"
SKIP_AUTH = ["GET ^/static/", "POST ^/api/whoami$"]
BROWSER = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"}
API = {"Accept": "application/json"}
IDENTITY = ("X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Name", "X-Forwarded-Groups")


class Nginx:
    """A real nginx in the foreground, its whole prefix (config, logs, temp files) in a tmp dir."""

    def __init__(self, directory: Path, server_conf: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        (directory / "console.conf").write_text(server_conf.replace("listen 80;", f"listen {LOOPBACK}:{self.port};"))
        temp = "\n".join(
            f"  {kind}_temp_path {directory}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the tmp dir
        (directory / "nginx.conf").write_text(
            f"{user}worker_processes 1;\nerror_log {directory}/error.log info;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n  access_log {directory}/access.log;\n{temp}\n  include {directory}/console.conf;\n}}\n"
        )
        self.proc = Process(
            "nginx",
            [
                NGINX,
                "-p",
                str(directory),
                "-c",
                str(directory / "nginx.conf"),
                "-g",
                f"daemon off; pid {directory}/nginx.pid;",
            ],
            log_dir=directory,
        )

    def start(self) -> Nginx:
        self.proc.start().wait_for_port(self.port, timeout=10)
        return self

    def stop(self) -> None:
        self.proc.stop(timeout=5)

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def stack(idp: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, Sidecar]]:
    """nginx from the documented example, in front of the console, asking a sidecar that trusts it."""
    work = tmp_path_factory.mktemp("forward-auth")
    sidecar_port = free_port()
    conf = EXAMPLE.read_text().replace("127.0.0.1:4180", f"{LOOPBACK}:{sidecar_port}")
    conf = conf.replace("127.0.0.1:8888", f"{LOOPBACK}:{console.port}")
    nginx = Nginx(work, conf).start()
    factory = SidecarFactory(idp, console, work)
    sidecar = factory(
        {
            "listen": f"{LOOPBACK}:{sidecar_port}",
            "public_url": nginx.url,
            "trusted_proxies": ["127.0.0.1/32"],
            "skip_auth": SKIP_AUTH,
            "access": {"allowed_email_domains": ["example.com"]},
        },
        name="forward-auth",
    )
    try:
        yield nginx, sidecar
    finally:
        factory.stop_all()
        nginx.stop()


@pytest.fixture(scope="module")
def untrusting(idp: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """A sidecar with no trusted proxies: it must ignore X-Forwarded-Uri from anyone."""
    factory = SidecarFactory(idp, console, tmp_path_factory.mktemp("forward-auth-untrusting"))
    yield factory({"skip_auth": SKIP_AUTH}, name="forward-auth-untrusting")
    factory.stop_all()


async def signed_in(http: Any, nginx: Nginx, username: str = "alice.smith") -> Any:
    client = http()
    resp = await login(client, nginx.url + "/api/whoami", username)
    assert resp.status == 200, (resp.status, await resp.text())
    return client


def challenge(sidecar: Sidecar) -> str:
    """The 401's WWW-Authenticate: where the protected-resource metadata is, at the public URL (RFC 9728 5.1)."""
    return f'Bearer resource_metadata="{sidecar.config["public_url"]}/.well-known/oauth-protected-resource"'


async def ask(client: Any, sidecar: Sidecar, **headers: str) -> tuple[int, Any, str]:
    async with client.get(sidecar.url_for("/oauth2/auth"), headers=headers) as resp:
        return resp.status, resp.headers, await resp.text()


# --------------------------------------------------------------------------------------------------
# The endpoint, asked directly


async def test_no_session_is_401_and_a_browser_is_sent_on_to_sign_in(http, stack):
    _, sidecar = stack
    original = "/reports/7?tab=a&x=%2F"
    status, headers, body = await ask(http(), sidecar, **BROWSER, **{"X-Forwarded-Uri": original})
    assert status == 401
    login_url = URL(headers["X-Login-URL"])
    assert login_url.path == "/oauth2/start" and login_url.query["rd"] == original
    assert f'http-equiv="refresh" content="0;url={headers["X-Login-URL"].replace("&", "&amp;")}"' in body
    assert headers["WWW-Authenticate"] == challenge(sidecar)


async def test_no_session_is_401_json_for_an_api_client(http, stack):
    _, sidecar = stack
    status, headers, body = await ask(http(), sidecar, **API, **{"X-Forwarded-Uri": "/api/x"})
    assert status == 401
    assert headers["WWW-Authenticate"] == challenge(sidecar)
    assert json.loads(body)["error"] == "unauthenticated"
    assert "X-Login-URL" not in headers  # nginx's error_page then answers 401, not a redirect


async def test_a_session_is_202_with_the_mapped_identity_headers(http, stack):
    nginx, sidecar = stack
    client = await signed_in(http, nginx)
    status, headers, _ = await ask(client, sidecar, **{"X-Forwarded-Uri": "/anything"})
    assert status == 202
    assert headers["X-Forwarded-User"] == "alice.smith"
    assert headers["X-Forwarded-Email"] == "alice.smith@example.com"
    assert headers["X-Forwarded-Groups"] == "users"
    assert headers["Cache-Control"] == "no-store"


async def test_skip_auth_uses_the_trusted_proxys_original_uri_and_method(http, stack):
    _, sidecar = stack
    client = http()
    traefik = {"X-Forwarded-Uri": "/static/app.css", "X-Forwarded-Method": "GET"}
    status, headers, _ = await ask(client, sidecar, **API, **traefik)
    assert status == 202 and not any(h in headers for h in IDENTITY)
    nginx_style = {"X-Original-URI": "/static/app.css", "X-Original-Method": "HEAD"}
    assert (await ask(client, sidecar, **API, **nginx_style))[0] == 202
    # The rule is for GET: another method, or none said, is not let through.
    assert (await ask(client, sidecar, **API, **{**traefik, "X-Forwarded-Method": "POST"}))[0] == 401
    assert (await ask(client, sidecar, **API, **{"X-Forwarded-Uri": "/static/app.css"}))[0] == 401


@pytest.mark.parametrize(
    ("uri", "status"),
    [
        ("/static/../api/whoami", 401),
        ("/static/%2e%2e/api/whoami", 401),
        ("/api/whoami?/static/", 401),
        ("/api/whoami%23/static/", 401),
        ("/static/..%2fapi/whoami", 400),
        ("/static/..;/api/whoami", 400),
        ("http://evil.example/static/../admin", 401),
    ],
)
async def test_the_original_uri_is_normalised_like_a_proxied_path(http, stack, uri, status):
    _, sidecar = stack
    headers = {"X-Forwarded-Uri": uri, "X-Forwarded-Method": "GET"}
    assert (await ask(http(), sidecar, **API, **headers))[0] == status


async def test_conflicting_original_uri_headers_are_refused(http, stack):
    _, sidecar = stack
    headers = {"X-Forwarded-Uri": "/static/x", "X-Original-URI": "/admin", "X-Forwarded-Method": "GET"}
    assert (await ask(http(), sidecar, **API, **headers))[0] == 400


async def test_an_untrusted_caller_cannot_name_the_original_uri(http, untrusting):
    headers = {"X-Forwarded-Uri": "/static/x.css", "X-Original-URI": "/static/x.css", "X-Forwarded-Method": "GET"}
    status, response_headers, _ = await ask(http(), untrusting, **BROWSER, **headers)
    assert status == 401
    assert URL(response_headers["X-Login-URL"]).query["rd"] == "/"


async def test_a_user_outside_the_policy_is_403(http, stack):
    nginx, sidecar = stack
    client = http()
    resp = await login(client, nginx.url + "/api/whoami", "eve@evil.com")
    assert resp.status == 403
    status, _, body = await ask(client, sidecar, **BROWSER, **{"X-Forwarded-Uri": "/"})
    assert status == 403 and "signed in as eve@evil.com" in body


# --------------------------------------------------------------------------------------------------
# A real nginx with the documented config


async def test_through_nginx_a_browser_without_a_session_lands_on_the_login_not_a_bare_401(http, stack, idp):
    nginx, _ = stack
    async with http().get(nginx.url + "/api/whoami?x=1&y=a%26b", headers=BROWSER) as resp:
        assert resp.status == 302, await resp.text()
        location = URL(resp.headers["Location"])
    assert location.path == "/oauth2/start" and location.query["rd"] == "/api/whoami?x=1&y=a%26b"
    async with http().get(URL(nginx.url).join(location), headers=BROWSER) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith(idp.discovery()["authorization_endpoint"])


async def test_full_login_through_nginx_gives_the_console_the_identity_headers(http, stack):
    nginx, _ = stack
    client = http()
    resp = await login(client, nginx.url + "/api/whoami?x=1&y=a%26b", "alice.smith")
    assert resp.status == 200, await resp.text()
    seen = json.loads(await resp.text())
    assert seen["raw_path"] == "/api/whoami?x=1&y=a%26b"
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"
    assert seen["headers"]["X-Forwarded-Email"] == "alice.smith@example.com"
    assert seen["headers"]["X-Forwarded-Name"] == "Alice Smith"
    assert seen["headers"]["X-Forwarded-Groups"] == "users"
    # The sidecar's own cookie is the console's business only as nginx decides; the identity is not.
    spoof = {"X-Forwarded-User": "mallory", "x-forwarded-email": "m@evil.com", "X_Forwarded_Name": "M"}
    async with client.get(nginx.url + "/api/whoami", headers=spoof) as again:
        seen = await again.json()
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"
    assert "mallory" not in json.dumps(seen["header_list"]) and "m@evil.com" not in json.dumps(seen["header_list"])


async def test_through_nginx_an_api_client_without_a_session_gets_401_with_a_bearer_challenge(http, stack):
    nginx, sidecar = stack
    async with http().get(nginx.url + "/api/whoami", headers=API) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == challenge(sidecar)


async def test_through_nginx_the_challenge_leads_to_the_protected_resource_metadata(http, stack, idp):
    """The example routes /.well-known/oauth-protected-resource to the sidecar (RFC 9728), not to the check."""
    nginx, _ = stack
    async with http(cookies=False).get(nginx.url + "/.well-known/oauth-protected-resource") as resp:
        assert resp.status == 200, await resp.text()
        document = await resp.json()
    assert document["resource"] == nginx.url and document["authorization_servers"] == [idp.issuer]


async def test_through_nginx_skip_auth_paths_pass_without_identity_even_when_spoofed(http, stack):
    nginx, _ = stack
    spoof = {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "admins", **API}
    async with http().post(nginx.url + "/api/whoami", headers=spoof, data=b"") as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert not any(h in seen["headers"] for h in IDENTITY)
    async with http().get(nginx.url + "/static/console.css") as resp:
        assert resp.status == 200


async def test_through_nginx_a_user_outside_the_policy_sees_the_sidecars_403_page(http, stack):
    nginx, _ = stack
    client = http()
    resp = await login(client, nginx.url + "/reports", "eve@evil.com")
    assert resp.status == 403
    body = await resp.text()
    assert "signed in as eve@evil.com" in body and "/oauth2/sign_out" in body


async def test_through_nginx_a_dot_segment_trick_does_not_reach_the_console(http, stack):
    nginx, _ = stack
    for target in ("/static/../api/whoami", "/static/%2e%2e/api/whoami", "/static/..%2fapi/whoami"):
        reader, writer = await asyncio.open_connection(LOOPBACK, nginx.port)
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n".encode()
        )
        response = await reader.read()
        writer.close()
        status = int(re.match(rb"HTTP/1\.1 (\d{3})", response).group(1))  # type: ignore[union-attr]
        assert status in (401, 500), (target, response[:300])
        assert b"raw_path" not in response


async def test_through_nginx_a_flood_of_pending_login_cookies_cannot_block_a_sign_in(http, stack, idp):
    """150 look-alike pending-login cookies (6.7 KB, e.g. planted from a sibling host) once made the sign-in
    answer 147 Set-Cookie headers long (22 KB): nginx's default 4 KB buffer for an upstream's head turned it
    into a 502. Only cookies the sidecar signed are expired, a few per answer: the sign-in goes through."""
    nginx, _ = stack
    junk = {f"sso_sidecar_login_{i:023d}": "x" for i in range(150)}
    assert 6500 < len("; ".join(f"{k}={v}" for k, v in junk.items())) < 7000
    # And 20 real ones, signed by this sidecar for 20 sign-ins that were never finished.
    signed: dict[str, str] = {}
    for _ in range(20):
        async with http(cookies=False).get(nginx.url + "/oauth2/start?rd=/", headers=BROWSER) as resp:
            assert resp.status == 302
            signed.update((m.key, m.value) for m in resp.cookies.values())
    assert len(signed) == 20
    client = http()
    client.cookie_jar.update_cookies({**junk, **signed}, URL(nginx.url))
    for _ in range(3):  # the signed ones beyond the bound go over several answers, each small
        async with client.get(nginx.url + "/oauth2/start?rd=/api/whoami", headers=BROWSER) as resp:
            assert resp.status == 302, (resp.status, (await resp.text())[:300])
            assert resp.headers["Location"].startswith(idp.discovery()["authorization_endpoint"])
            set_cookie = resp.headers.getall("Set-Cookie")
        assert 1 <= len(set_cookie) <= 8, len(set_cookie)
        assert not any(name in c for c in set_cookie for name in junk)
    left = [m.key for m in client.cookie_jar if m.key in signed]
    assert len(left) <= 5 - 1
    resp = await login(client, nginx.url + "/api/whoami", "alice.smith")  # and the sign-in completes
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["headers"]["X-Forwarded-User"] == "alice.smith"
    assert "too big header" not in nginx.error_log()


# --------------------------------------------------------------------------------------------------
# Routes: the route of the original request, from the trusted proxy only

MFA = "urn:dev-idp:mfa"
ROUTES = [
    {"path": "^/admin(/|$)", "access": {"allowed_groups": ["console-admins"]}},
    {"path": "^/api/whoami$", "methods": ["POST", "DELETE"], "access": {"allowed_groups": ["console-admins"]}},
    {"path": "^/mfa/", "acr_values": [MFA]},
]


@pytest.fixture(scope="module")
def routes_stack(
    idp_factory: Any, console: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Nginx, Sidecar, Sidecar]]:
    """nginx from the documented example and a sidecar with routes that trusts it; and one that trusts no one."""
    acr_idp = idp_factory(
        acr={"password": "urn:dev-idp:pwd", "one_time_code": MFA}, accounts={"ann": {"groups": ["console-admins"]}}
    )
    work = tmp_path_factory.mktemp("forward-auth-routes")
    sidecar_port = free_port()
    conf = EXAMPLE.read_text().replace("127.0.0.1:4180", f"{LOOPBACK}:{sidecar_port}")
    conf = conf.replace("127.0.0.1:8888", f"{LOOPBACK}:{console.port}")
    nginx = Nginx(work, conf).start()
    factory = SidecarFactory(acr_idp, console, work)
    config = {"routes": ROUTES, "session": {"cookie_name": "routes_fa"}}
    trusting = factory(
        {
            **config,
            "listen": f"{LOOPBACK}:{sidecar_port}",
            "public_url": nginx.url,
            "trusted_proxies": ["127.0.0.1/32"],
        },
        name="forward-auth-routes",
    )
    untrusting = factory(config, name="forward-auth-routes-untrusting")
    try:
        yield nginx, trusting, untrusting
    finally:
        factory.stop_all()
        nginx.stop()


@pytest.mark.parametrize(
    ("username", "uri", "method", "status"),
    [
        ("carl", "/admin/users", "GET", 403),
        ("ann", "/admin/users", "GET", 202),
        ("carl", "/api/whoami", "GET", 202),
        ("carl", "/api/whoami", "DELETE", 403),
        ("carl", "/api/whoami", "delete", 403),  # the method header is read in upper case
        ("ann", "/api/whoami", "DELETE", 202),
        ("carl", "/x/../admin", "GET", 403),  # normalised like a proxied path
        ("carl", "/%61dmin/", "GET", 403),
        ("carl", "//admin/", "GET", 403),
    ],
)
async def test_forward_auth_applies_the_route_of_the_original_uri_and_method(
    http, routes_stack, username, uri, method, status
):
    nginx, sidecar, _ = routes_stack
    client = http()
    assert (await login(client, nginx.url + "/reports", username)).status == 200
    headers = {"X-Original-URI": uri, "X-Original-Method": method}
    assert (await ask(client, sidecar, **API, **headers))[0] == status


async def test_forward_auth_without_a_trusted_original_uri_judges_by_every_route(http, routes_stack):
    """From a caller that is not a trusted proxy the path is unknown, so it could be any route's: a user the
    admin route refuses is refused whatever X-Forwarded-Uri claims."""
    _, _, untrusting = routes_stack
    client = http()
    assert (await login(client, untrusting.url_for("/reports"), "carl")).status == 200
    status, _, body = await ask(client, untrusting, **API, **{"X-Forwarded-Uri": "/reports"})
    assert status == 403 and json.loads(body)["error"] == "access_denied"


async def test_forward_auth_asks_for_a_step_up_and_nginx_takes_the_browser_there(http, routes_stack):
    nginx, sidecar, _ = routes_stack
    client = http()
    assert (await login(client, nginx.url + "/reports", "carl")).status == 200
    status, headers, _ = await ask(client, sidecar, **BROWSER, **{"X-Original-URI": "/mfa/keys"})
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Bearer error="insufficient_user_authentication"')
    assert URL(headers["X-Login-URL"]).query["rd"] == "/mfa/keys"
    # Through nginx: its error_page sends the browser to the login URL, which asks the provider for the acr.
    async with client.get(nginx.url + "/mfa/keys", headers=BROWSER) as resp:
        assert resp.status == 302 and URL(resp.headers["Location"]).path == "/oauth2/start"
    landed = await login(client, nginx.url + "/mfa/keys", "carl", otp="13579")
    assert landed.status == 200
    assert URL(str(landed.url)).path == "/mfa/keys"
    async with client.get(nginx.url + "/api/whoami", headers=API) as me:
        assert (await me.json())["headers"]["X-Forwarded-User"] == "carl"
