"""X-Forwarded-For/-Proto/-Host: believed from ``trusted_proxies`` only, replaced for everyone else;
``public_url`` always decides the redirect URI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SidecarFactory
from yarl import URL

from proxy.auth.clientaddress import address_group
from support.sidecar import Sidecar

SKIP_AUTH = ["POST ^/api/whoami$"]  # an echo without signing in
SPOOF = {
    "X-Forwarded-For": "203.0.113.9, 10.0.0.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "console.example.com",
    "X-Real-IP": "203.0.113.9",
    "Forwarded": "for=203.0.113.9;proto=https;host=evil.example",
}


@pytest.fixture(scope="module")
def sidecars(idp: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Sidecar]]:
    factory = SidecarFactory(idp, console, tmp_path_factory.mktemp("trusted"))
    trusting = factory({"skip_auth": SKIP_AUTH, "trusted_proxies": ["127.0.0.0/8", "::1"]}, name="trusting")
    untrusting = factory({"skip_auth": SKIP_AUTH, "trusted_proxies": ["10.0.0.0/8"]}, name="untrusting")
    yield trusting, untrusting
    factory.stop_all()


async def echo(http: Any, sidecar: Sidecar, headers: dict[str, str]) -> dict[str, str]:
    async with http().post(sidecar.url_for("/api/whoami"), headers=headers, data=b"") as resp:
        assert resp.status == 200
        seen = await resp.json()
    return {k.lower(): v for k, v in seen["header_list"]}


async def test_forwarded_headers_from_an_untrusted_client_are_replaced(http, sidecars):
    _, untrusting = sidecars
    seen = await echo(http, untrusting, SPOOF)
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"  # public_url's scheme
    assert seen["x-forwarded-host"] == f"127.0.0.1:{untrusting.port}"
    assert "forwarded" not in seen


async def test_forwarded_headers_from_a_trusted_proxy_are_extended_and_believed(http, sidecars):
    trusting, _ = sidecars
    seen = await echo(http, trusting, SPOOF)
    assert seen["x-forwarded-for"] == "203.0.113.9, 10.0.0.7, 127.0.0.1"
    # The client is the right-most address that is not a trusted proxy (the left-most is anyone's word).
    assert seen["x-real-ip"] == "10.0.0.7"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "console.example.com"
    assert "forwarded" not in seen


async def test_malformed_forwarded_values_from_a_trusted_proxy_are_not_passed_on(http, sidecars):
    trusting, _ = sidecars
    junk = {
        "X-Forwarded-For": "unknown, <script>, 10.0.0.7",
        "X-Forwarded-Proto": "gopher",
        "X-Forwarded-Host": "a b/c",
    }
    seen = await echo(http, trusting, junk)
    assert seen["x-forwarded-for"] == "10.0.0.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{trusting.port}"


@pytest.mark.parametrize("which", [0, 1])
async def test_public_url_always_decides_the_redirect_uri(http, sidecars, which):
    sidecar = sidecars[which]
    headers = {**SPOOF, "Host": "evil.example", "Accept": "text/html"}
    async with http().get(sidecar.url_for("/reports"), headers=headers) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert location.query["redirect_uri"] == sidecar.url_for("/oauth2/callback")


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2:ffff:ffff:ffff:ffff]", "2001:db8:1:2::/64"),  # the same subscriber's /64
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_per_client_bounds_count_an_ipv4_address_or_an_ipv6_64(address, group):
    assert address_group(address) == group
