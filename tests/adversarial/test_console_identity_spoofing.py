"""Forged assertion, roles and token headers never reach the console.

A client that can reach the sidecar sends every header the console would believe (the assertion, the roles, the
user's tokens), in every spelling a CGI-style stack reads as the same name and more than once, on every kind of
path: signed in (the console must see the sidecar's one value and nothing else), a ``skip_auth`` path and with SSO
off (the console must see none). Through real sidecars in front of the echo console, signed in at the dev IdP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SidecarFactory

from support.assertions import API, headers_named, jwks, verify
from support.idp import login
from support.sidecar import Sidecar

FORGED_ASSERTION = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290Iiwicm9sZXMiOlsiYWRtaW4iXX0."
# The configured names, and the defaults a console may still read while a feature is off or renamed.
CONFIG = {
    "assertion": {"header": "X-Console-Identity"},
    "roles": {"header": "X-Console-Roles", "rules": [{"role": "admin", "groups": ["admins"]}], "default": ["viewer"]},
    "pass_tokens": {"access_token": "X-Console-Access-Token", "id_token": "X-Console-Id-Token"},
}
NAMES = (
    "X-Console-Identity",
    "X-Console-Roles",
    "X-Console-Access-Token",
    "X-Console-Id-Token",
    "X-Sso-Assertion",
    "X-Forwarded-Roles",
    "X-Forwarded-Access-Token",
)


def spellings(name: str) -> list[str]:
    """The name as sent, in other cases, with ``_`` and ``.`` for ``-``: one variable to CGI, PHP and WSGI."""
    return [
        name,
        name.lower(),
        name.upper(),
        name.replace("-", "_"),
        name.replace("-", "."),
        name.lower().replace("-", "_"),
    ]


FORGED = [(spelled, "forged-" + spelled) for name in NAMES for spelled in spellings(name)]
FORGED += [("X-Console-Identity", FORGED_ASSERTION), ("X-Console-Roles", "admin"), ("X-Console-Roles", "root")]


@pytest.fixture(scope="module")
def identity_sidecar(idp: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    factory = SidecarFactory(idp, console, tmp_path_factory.mktemp("spoofing"))
    yield factory(CONFIG, name="spoofing")
    factory.stop_all()


def forged_seen(seen: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in seen["header_list"] if v.startswith("forged-") or v in (FORGED_ASSERTION, "root")]


async def test_forged_headers_never_reach_the_console_of_a_signed_in_user(http, identity_sidecar):
    client = http()
    resp = await login(client, identity_sidecar.url_for("/api/whoami"), "admin.ann")
    assert resp.status == 200
    async with client.get(identity_sidecar.url_for("/api/whoami"), headers=[*API.items(), *FORGED]) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert forged_seen(seen) == []
    # Exactly the sidecar's own values, once each.
    [assertion] = headers_named(seen, "X-Console-Identity")
    claims = verify(assertion, await jwks(identity_sidecar.url)).claims
    assert claims["preferred_username"] == "admin.ann" and claims["roles"] == ["admin"]
    assert headers_named(seen, "X-Console-Roles") == ["admin"]
    assert len(headers_named(seen, "X-Console-Access-Token")) == 1
    assert len(headers_named(seen, "X-Console-Id-Token")) == 1
    for name in ("X-Sso-Assertion", "X-Forwarded-Roles", "X-Forwarded-Access-Token"):
        assert headers_named(seen, name) == [], name


@pytest.mark.parametrize("sso", [True, False], ids=["skip_auth", "sso-off"])
async def test_forged_headers_never_reach_the_console_without_a_session(http, sidecar_factory: SidecarFactory, sso):
    """A ``skip_auth`` path (here the echo endpoint itself), and every path with SSO off."""
    sidecar = sidecar_factory({**CONFIG, "skip_auth": ["GET ^/api/whoami$"], "sso": {"enabled": sso}})
    async with http().get(sidecar.url_for("/api/whoami"), headers=[*API.items(), *FORGED]) as resp:
        assert resp.status == 200  # passed without a session
        seen = json.loads(await resp.text())
    assert forged_seen(seen) == []
    for name in NAMES:
        assert headers_named(seen, name) == [], name


async def test_the_default_assertion_and_roles_headers_are_stripped_while_both_are_off(http, sidecar):
    """A console left reading X-Sso-Assertion or X-Forwarded-Roles must not believe a client meanwhile."""
    client = http()
    resp = await login(client, sidecar.url_for("/api/whoami"), "alice")
    assert resp.status == 200
    headers = [*API.items(), *((n, "forged-" + n) for n in ("X-Sso-Assertion", "x_forwarded_roles", "X.Sso.Assertion"))]
    async with client.get(sidecar.url_for("/api/whoami"), headers=headers) as resp:
        seen = await resp.json()
    assert forged_seen(seen) == []
