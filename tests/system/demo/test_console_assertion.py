"""The sample console (deploy/demo/console.py) verifies the sidecar's assertion, as ``make demo`` runs it: with
``--sidecar`` it checks the signature against the sidecar's ``/oauth2/jwks.json``, ``iss``, ``aud`` (its own URL)
and ``exp``, and shows "verified" next to the identity; whatever reaches it around the sidecar is "not verified".
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from conftest import Console, SidecarFactory

from support import REPO, procs
from support.assertions import jwks
from support.idp import login
from support.procs import LOOPBACK, Process, free_port

CONSOLE = REPO / "deploy" / "demo" / "console.py"
FORGED = "eyJhbGciOiJFUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJhZG1pbiIsInJvbGVzIjpbImFkbWluIl19.c2ln"


@pytest.fixture
def verifying(idp: Any, tmp_path: Any) -> Iterator[tuple[Any, Process]]:
    """A sidecar with the demo's assertion and roles, and a console of its own that verifies against it."""
    sidecar_port, console_port = free_port(), free_port()
    sidecar_url = f"http://{LOOPBACK}:{sidecar_port}"
    console = procs.start_process(
        "console-verifying",
        [sys.executable, str(CONSOLE), "--host", LOOPBACK, "--port", str(console_port), "--sidecar", sidecar_url],
        cwd=REPO,
        log_dir=tmp_path,
        ready_url=f"http://{LOOPBACK}:{console_port}/api/whoami",
    )
    factory = SidecarFactory(idp, procs_console(console_port, console), tmp_path)
    roles = {"rules": [{"role": "admin", "groups": ["admins"]}], "default": ["viewer"]}
    sidecar = factory({"listen": f"{LOOPBACK}:{sidecar_port}", "assertion": {}, "roles": roles})
    yield sidecar, console
    factory.stop_all()
    console.stop()


def procs_console(port: int, proc: Process) -> Console:
    return Console(f"http://{LOOPBACK}:{port}", port, proc)


async def test_the_console_shows_verified_next_to_the_identity(http, verifying):
    sidecar, _ = verifying
    client = http()
    resp = await login(client, sidecar.url_for("/reports"), "admin.ann")
    page = await resp.text()
    assert resp.status == 200
    assert '<b id="display-name">Admin Ann</b> <span id="assertion-status" class="verified"' in page
    assert ">verified</span>" in page and "Signed assertion: verified" in page
    assert "<td>[&quot;admin&quot;]</td>" in page  # the roles, from the verified claims
    async with client.get(sidecar.url_for("/api/whoami"), headers={"Accept": "application/json"}) as api:
        status = (await api.json())["assertion"]
    assert status["verified"] and status["claims"]["preferred_username"] == "admin.ann"


async def test_what_reaches_the_console_around_the_sidecar_is_not_verified(http, verifying, idp):
    sidecar, console = verifying
    console_url = sidecar.config["upstream"]
    headers = {"X-Sso-Assertion": FORGED, "X-Forwarded-User": "admin", "Accept": "application/json"}
    async with aiohttp.ClientSession() as s, s.get(console_url + "/api/whoami", headers=headers) as resp:
        status = (await resp.json())["assertion"]
    assert status["verified"] is False and status["reason"]
    async with aiohttp.ClientSession() as s, s.get(console_url + "/", headers=headers) as resp:
        page = await resp.text()
    assert 'class="unverified">not verified</span>' in page and "verified</span>" not in page.replace(
        "not verified</span>", ""
    )
    # An assertion from another sidecar (another key, another issuer) is not verified either.
    other = SidecarFactory(idp, procs_console(int(console_url.rsplit(":", 1)[1]), console), sidecar.dir.parent / "x")
    try:
        stranger = other({"assertion": {}})
        client = http()
        resp = await login(client, stranger.url_for("/api/whoami"), "admin.ann")
        assert (await resp.json(content_type=None))["assertion"]["verified"] is False
    finally:
        other.stop_all()


async def test_the_console_fetches_the_jwks_at_its_first_assertion_however_young_the_machine(
    sidecar_factory, monkeypatch
):
    """The first fetch does not wait for REFETCH_AFTER seconds of the monotonic clock (a machine's uptime)."""
    spec = importlib.util.spec_from_file_location("demo_console_under_test", CONSOLE)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    sidecar = sidecar_factory({"assertion": {}})
    # The demo's clock only (the event loop keeps its own): a machine booted three seconds ago.
    monkeypatch.setattr(demo, "time", SimpleNamespace(monotonic=lambda: 3.0, time=time.time))
    check = demo.AssertionCheck(sidecar.url, "http://console.example")
    async with aiohttp.ClientSession() as http:
        keys = await check.keys("any-kid", http)
    published = [k["kid"] for k in (await jwks(sidecar.url))["keys"]]
    assert len(published) == 1 and [k.kid for k in keys.keys] == published
