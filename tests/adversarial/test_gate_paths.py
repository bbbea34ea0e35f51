"""Skip-auth routes under attack: what a rule is matched against is what the console receives.

Bypass attempts through a real sidecar, sent as raw request targets (``http.client`` sends them byte for byte;
aiohttp's client would normalise them first). The normal form itself: tests/unit/auth/test_paths.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SidecarFactory

from proxy.errors import BadRequest
from support.procs import LOOPBACK

# --------------------------------------------------------------------------------------------------
# Through a real sidecar

SKIP_AUTH = [
    "GET ^/static/",
    "POST ^/api/whoami$",
    "GET ^/public/.*/info$",
    "^/open/",
]
API = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def paths_sidecar(idp: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One sidecar for the module; it trusts 127.0.0.1 as a proxy, to show the gate still never reads
    X-Forwarded-Uri / X-Original-URI."""
    factory = SidecarFactory(idp, console, tmp_path_factory.mktemp("gate-paths"))
    yield factory({"skip_auth": SKIP_AUTH, "trusted_proxies": ["127.0.0.1/32"]}, name="gate-paths")
    factory.stop_all()


def _raw(port: int, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def raw(sidecar: Any, target: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Send ``target`` exactly as written (no client-side normalisation)."""
    return await asyncio.to_thread(_raw, sidecar.port, method, target, {**API, **headers})


def echoed(body: bytes) -> dict[str, Any]:
    return dict(json.loads(body))


def page_path(body: bytes) -> str:
    """The path the sample console's HTML page says it was asked for."""
    m = re.search(r'<code id="path">([^<]*)</code>', body.decode())
    assert m, body[:200]
    return m.group(1).replace("&amp;", "&")


async def test_a_skip_auth_path_is_proxied_without_a_session(paths_sidecar):
    status, headers, _ = await raw(paths_sidecar, "/static/console.css", Accept="text/css")
    assert status == 200 and headers["content-type"].startswith("text/css")


@pytest.mark.parametrize(
    "target",
    [
        "/static/../api/status/200",
        "/static/%2e%2e/api/status/200",
        "/static/%2E%2E/api/status/200",
        "/static/./../api/status/200",
        "//static/../api/status/200",
        "/static//../../api/status/200",
        "/api/status/200?/static/",
        "/api/status/200?x=/static/",
        "/api/status/200%3F/static/",
        "/api/status/200%23/static/",
        "/static%2Fconsole.css",
        "/STATIC/console.css",
        "/public/secret%23/info",
        "/public/secret%3F/info",
        "/public/x/info/..",
    ],
)
async def test_bypass_attempts_against_skip_auth_rules_need_a_session(paths_sidecar, target):
    status, _, body = await raw(paths_sidecar, target)
    assert status == 401, (target, status, body[:200])
    assert json.loads(body)["error"] == "unauthenticated"


@pytest.mark.parametrize(
    "target", ["/api/whoami/", "/api/whoami%2F", "/api/whoamix", "/api/whoami%3F", "/api/whoami;x", "/api/whoami/."]
)
async def test_anchored_rules_do_not_stretch(paths_sidecar, target):
    status, _, body = await raw(paths_sidecar, target, method="POST", **{"Content-Length": "0"})
    assert status == 401, (target, status, body[:200])


@pytest.mark.parametrize(
    "target",
    [
        "/static/..%2fapi/status/200",
        "/static/..%2Fapi/status/200",
        "/static%2F..%2Fapi/status/200",
        "/static/%2e%2e%2fapi/status/200",
        "/static/..%5capi/status/200",
        "/static\\..\\api/status/200",
        "/static/..;/api/status/200",
        "/static/%252e%252e/api/status/200",
        "/static/a%00b",
        "/static/x#/../../api/status/200",
    ],
)
async def test_paths_that_read_differently_on_other_servers_are_refused(paths_sidecar, target):
    status, _, body = await raw(paths_sidecar, target)
    assert status == 400, (target, status, body[:200])
    assert json.loads(body)["error"] == "bad_request"


async def test_a_skip_auth_rule_never_sees_the_client_supplied_original_uri(paths_sidecar):
    spoof = {"X-Forwarded-Uri": "/static/x.css", "X-Original-URI": "/static/x.css", "X-Original-Url": "/static/"}
    status, _, _ = await raw(paths_sidecar, "/api/status/200", **spoof)
    assert status == 401


async def test_the_console_receives_the_path_the_rule_matched_with_the_raw_query(paths_sidecar):
    for target in ["/api/x/../whoami?a=%2F&b=1", "/api/%77hoami?a=%2F&b=1", "/static/../api/./whoami?a=%2F&b=1"]:
        status, _, body = await raw(paths_sidecar, target, method="POST", **{"Content-Length": "0"})
        assert status == 200, (target, body[:200])
        seen = echoed(body)
        assert seen["raw_path"] == "/api/whoami?a=%2F&b=1", target
        assert seen["path"] == "/api/whoami"


async def test_an_encoded_slash_stays_encoded_on_the_way_to_the_console(paths_sidecar):
    status, _, body = await raw(paths_sidecar, "/open/vhost/%2F/queue?x=1", Accept="text/html")
    assert status == 200
    assert page_path(body) == "/open/vhost/%2F/queue?x=1"


async def test_a_skip_auth_rule_matches_when_every_reading_fits(paths_sidecar):
    status, _, body = await raw(paths_sidecar, "/public/a/b/info", Accept="text/html")
    assert status == 200 and page_path(body) == "/public/a/b/info"


async def test_method_restricted_rules_apply_to_their_methods_only(paths_sidecar):
    assert (await raw(paths_sidecar, "/static/console.css", method="HEAD"))[0] == 200  # GET implies HEAD
    status, _, _ = await raw(paths_sidecar, "/static/console.css", method="POST", **{"Content-Length": "0"})
    assert status == 401


async def test_identity_headers_are_stripped_on_skip_auth_paths_after_normalisation(paths_sidecar):
    spoof = {"X-Forwarded-User": "mallory", "X_Forwarded_Email": "m@evil.com", "x-forwarded-groups": "admins"}
    status, _, body = await raw(
        paths_sidecar, "/static/../api/whoami", method="POST", **spoof, **{"Content-Length": "0"}
    )
    assert status == 200
    seen = echoed(body)
    assert seen["raw_path"] == "/api/whoami"
    assert not any("mallory" in v or "evil" in v or "admins" in v for _, v in seen["header_list"])


async def test_signed_in_users_get_the_normalised_path_too(paths_sidecar, http):
    from support.idp import login

    client = http()
    resp = await login(client, paths_sidecar.url_for("/api/whoami"), "alice.smith")
    assert resp.status == 200
    status, _, body = await raw(
        paths_sidecar,
        "/api/status/../whoami?q=%2e%2e",
        Cookie="; ".join(f"{m.key}={m.value}" for m in client.cookie_jar),
    )
    assert status == 200
    seen = echoed(body)
    assert seen["raw_path"] == "/api/whoami?q=%2e%2e"
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"


def test_valid_hosts_are_remembered_only_up_to_a_bound_and_bad_ones_never() -> None:
    """``request_host`` remembers the host names that passed its check, so the usual few skip the regex;
    thousands of invented names stay correct and bounded, and an invalid one is refused every time."""
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from proxy.config.load import parse_settings
    from proxy.gate import handler as gate

    settings = parse_settings(
        "public_url: https://console.example.com\nupstream: http://127.0.0.1:8888\nsso: {enabled: false}\n"
        'session: {cookie_secret: "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"}\n',
        {},
    )

    def host_of(value: str) -> str:
        return gate.request_host(make_mocked_request("GET", "/", headers=CIMultiDict(Host=value)), settings)

    assert [host_of(f"h{i}.example.com:8443") for i in range(2000)] == [f"h{i}.example.com:8443" for i in range(2000)]
    assert len(gate._VALID_HOSTS) <= 256
    for bad in ("evil.example.com/x", "a b", "h1.example.com:8443@evil", ""):
        for _ in range(2):
            with pytest.raises(BadRequest):
                host_of(bad)
    assert not {"evil.example.com/x", "a b", ""} & gate._VALID_HOSTS
