"""Break-glass access: an operator gets to the console while the identity provider is unreachable.

End to end against real sidecar processes whose issuer does not answer; the rate limiter and the
settings are also tested in-process.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.load import parse_settings
from proxy.errors import ConfigError
from proxy.gate.breakglass import FREE_FAILURES, MAX_DELAY, WINDOW, FailureLimiter, delay_after
from proxy.sessions.memory import MemoryStore
from support.idp import login
from support.procs import LOOPBACK, free_port
from support.waiting import eventually

TOKEN = "bg-" + secrets.token_urlsafe(24)
FORM = "/oauth2/break-glass"


def down_config(tmp_path: Path, token: str = TOKEN, **extra: Any) -> dict[str, Any]:
    """A sidecar whose provider is unreachable, with break-glass configured from a token file."""
    token_file = tmp_path / "break-glass-token"
    token_file.write_text(token + "\n")
    return {
        "sso": {"issuer_url": f"http://{LOOPBACK}:{free_port()}/realms/down"},
        "break_glass": {"token_file": str(token_file)},
        **extra,
    }


async def console_view(client: Any, url: str, **kwargs: Any) -> dict[str, Any]:
    async with client.get(url, **kwargs) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return dict(await resp.json())


async def metrics_text(listen: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://{listen}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def post_token(client: Any, sidecar: Any, token: str, rd: str = "/reports") -> aiohttp.ClientResponse:
    async with client.post(sidecar.url_for(FORM), data={"token": token, "rd": rd}) as resp:
        await resp.read()
        return resp


# --------------------------------------------------------------------------------------------------
# End to end


async def test_the_form_lets_an_operator_through_while_the_provider_is_down(http, sidecar_factory, tmp_path):
    listen = f"{LOOPBACK}:{free_port()}"
    sc = sidecar_factory(down_config(tmp_path, metrics_listen=listen), register=False)
    operator = http()
    async with operator.get(sc.url_for("/reports")) as resp:
        assert resp.status == 502  # locked out: the provider does not answer

    async with operator.get(sc.url_for(f"{FORM}?rd=/reports")) as resp:
        assert resp.status == 200
        page = await resp.text()
    assert 'name="token"' in page and 'type="password"' in page and 'value="/reports"' in page

    wrong = await post_token(operator, sc, "not-the-token")
    assert wrong.status == 403
    resp = await post_token(operator, sc, TOKEN)
    assert resp.status == 303 and resp.headers["Location"] == "/reports"
    cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("sso_sidecar_break_glass="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=900" in cookie

    seen = await console_view(
        operator,
        sc.url_for("/api/whoami"),
        headers={"X-Forwarded-User": "mallory", "X-Forwarded-Email": "m@evil.example", "Cookie": "theme=dark"},
    )
    assert seen["headers"]["X-Forwarded-User"] == "break-glass"
    assert "X-Forwarded-Email" not in seen["headers"]
    assert "mallory" not in json.dumps(seen["header_list"])
    assert "break_glass" not in seen["headers"].get("Cookie", "")

    async with operator.get(sc.url_for("/oauth2/status")) as resp:
        assert resp.status == 200
        status = await resp.json()
    assert status["discovery"]["status"] == "error"
    assert status["config"]["break_glass"] == {"enabled": True, "ttl_seconds": 900.0}

    logs = sc.logs()
    assert "break-glass: access granted" in logs and "break-glass: GET /api/whoami" in logs
    assert "break-glass: wrong token" in logs and TOKEN not in logs
    text = await metrics_text(listen)
    assert 'sso_sidecar_break_glass_attempts_total{result="granted",via="form"} 1.0' in text
    assert 'sso_sidecar_break_glass_attempts_total{result="rejected",via="form"} 1.0' in text
    assert "sso_sidecar_break_glass_requests_total 1.0" in text


async def test_scripts_send_the_token_in_a_header_which_never_reaches_the_console(http, sidecar_factory, tmp_path):
    sc = sidecar_factory(down_config(tmp_path), register=False)
    script = http(cookies=False)
    for name in ("X-Break-Glass", "x_break_glass"):
        seen = await console_view(script, sc.url_for("/api/whoami"), headers={name: TOKEN})
        assert seen["headers"]["X-Forwarded-User"] == "break-glass"
        assert TOKEN not in json.dumps(seen)
    async with script.get(
        sc.url_for("/api/whoami"), headers={"X-Break-Glass": "guess", "Accept": "application/json"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "break_glass_rejected"


async def test_break_glass_gets_no_signed_assertion_roles_or_tokens(http, sidecar_factory, tmp_path):
    """The assertion vouches only for a user the provider signed in: a break-glass request has the identity
    headers alone, and whatever assertion, roles or tokens it brings are removed (docs/console-identity.md)."""
    identity = {
        "assertion": {},
        "roles": {"rules": [{"role": "admin", "groups": ["admins"]}], "default": ["viewer"]},
        "pass_tokens": {"access_token": "X-Forwarded-Access-Token"},
    }
    sc = sidecar_factory(down_config(tmp_path, **identity), register=False)
    forged = {"X-Sso-Assertion": "e30.e30.", "X-Forwarded-Roles": "admin", "X-Forwarded-Access-Token": "at-forged"}
    seen = await console_view(
        http(cookies=False), sc.url_for("/api/whoami"), headers={"X-Break-Glass": TOKEN, **forged}
    )
    assert seen["headers"]["X-Forwarded-User"] == "break-glass"
    received = {k.lower() for k, _ in seen["header_list"]}
    assert received.isdisjoint(name.lower() for name in forged), received


async def test_wrong_tokens_slow_their_client_down_but_the_right_token_always_passes(http, sidecar_factory, tmp_path):
    sc = sidecar_factory(down_config(tmp_path), register=False)
    client = http()
    for _ in range(5):
        assert (await post_token(client, sc, "guess")).status == 403
    for expected_wait in ("1", "2", "4"):  # then 429, and the wait doubles
        limited = await post_token(client, sc, "guess")
        assert limited.status == 429 and limited.headers["Retry-After"] == expected_wait
    assert (await post_token(client, sc, TOKEN)).status == 303  # the right token passes at once
    async with client.get(sc.url_for("/api/whoami"), headers={"X-Break-Glass": TOKEN}) as resp:
        assert resp.status == 200
    async with client.get(
        sc.url_for("/api/whoami"), headers={"X-Break-Glass": "guess", "Accept": "application/json"}
    ) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 8
        assert (await resp.json())["error"] == "rate_limited"
    assert "rate limited" in sc.logs()


async def test_changing_the_token_ends_every_break_glass_cookie(http, sidecar_factory, tmp_path):
    config = down_config(tmp_path)
    sc = sidecar_factory(config, register=False)
    operator = http()
    assert (await post_token(operator, sc, TOKEN)).status == 303
    await console_view(operator, sc.url_for("/api/whoami"))
    new_token = "bg-" + secrets.token_urlsafe(24)
    Path(config["break_glass"]["token_file"]).write_text(new_token + "\n")
    sc.reload()  # or the watcher, within a second

    async def old_cookie_refused() -> bool:
        async with operator.get(sc.url_for("/api/whoami")) as resp:
            return resp.status == 502  # back to the locked-out provider error

    await eventually(old_cookie_refused, what="the old break-glass cookie to be refused")
    seen = await console_view(http(cookies=False), sc.url_for("/api/whoami"), headers={"X-Break-Glass": new_token})
    assert seen["headers"]["X-Forwarded-User"] == "break-glass"


async def test_break_glass_is_off_unless_configured_and_its_header_is_stripped_anyway(http, sidecar_factory):
    sc = sidecar_factory({"skip_auth": ["^/api/whoami$"]})
    client = http()
    async with client.get(sc.url_for(FORM)) as resp:
        assert resp.status == 404
    async with client.get(sc.url_for("/reports"), headers={"X-Break-Glass": TOKEN}) as resp:
        assert resp.status == 302  # an ordinary login, not a way in
    seen = await console_view(client, sc.url_for("/api/whoami"), headers={"X-Break-Glass": TOKEN})
    assert TOKEN not in json.dumps(seen) and "X-Forwarded-User" not in seen["headers"]


async def test_a_signed_in_user_is_unaffected_by_break_glass_being_configured(http, sidecar_factory, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    sc = sidecar_factory({"break_glass": {"token_file": str(token_file), "user": "emergency"}})
    user = http()
    resp = await login(user, sc.url_for("/api/whoami"), "alice.smith")
    assert resp.status == 200
    assert json.loads(await resp.text())["headers"]["X-Forwarded-User"] == "alice.smith"
    seen = await console_view(http(cookies=False), sc.url_for("/api/whoami"), headers={"X-Break-Glass": TOKEN})
    assert seen["headers"]["X-Forwarded-User"] == "emergency"


# --------------------------------------------------------------------------------------------------
# In-process


async def test_the_limiter_counts_per_client_with_no_global_count():
    limiter = FailureLimiter()
    store = MemoryStore()
    for i in range(1, 8):
        assert await limiter.failed(store, "10.0.0.1", now=float(i)) == i
    assert await limiter.failed(store, "10.0.0.2", now=8.0) == 1  # another client starts from nothing
    assert await limiter.failed(store, "10.0.0.1", now=8.0 + WINDOW) == 1  # a window later: forgotten
    for i in range(200):  # a flood is counted up to a bound, and the wait stays at its ceiling
        count = await limiter.failed(store, "10.0.0.3", now=10.0 + i)
    assert count < 64 and delay_after(count) == MAX_DELAY


def test_the_wait_doubles_after_the_free_failures_up_to_a_ceiling():
    assert [delay_after(n) for n in range(1, FREE_FAILURES + 1)] == [0.0] * FREE_FAILURES
    assert [delay_after(FREE_FAILURES + n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert delay_after(FREE_FAILURES + 60) == MAX_DELAY


async def test_the_limiter_forgets_clients_rather_than_growing_without_bound(monkeypatch):
    monkeypatch.setattr("proxy.gate.breakglass._MAX_TRACKED_CLIENTS", 10)
    limiter = FailureLimiter()
    store = MemoryStore()
    for i in range(50):
        await limiter.failed(store, f"10.0.0.{i}", now=float(i))
    assert len(limiter._local) <= 10
    assert await limiter.failed(store, "10.0.0.49", now=49.0) == 2


BASE = """
public_url: https://console.example.com
upstream: http://127.0.0.1:8888
sso: {enabled: false}
session: {cookie_secret: "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"}
"""


def test_break_glass_settings_are_validated_with_their_keys():
    with pytest.raises(ConfigError) as exc:
        parse_settings(BASE + "break_glass: {token: short, ttl: 0s, tokn: x}\nstatus: {admin_groups: 3}\n", {})
    keys = {p.key for p in exc.value.problems}
    assert {"break_glass.token", "break_glass.ttl", "break_glass.tokn", "status.admin_groups"} <= keys
    with pytest.raises(ConfigError) as exc:
        parse_settings(BASE + "break_glass: {ttl: 5m}\n", {})
    assert "break_glass.token" in {p.key for p in exc.value.problems}


def test_break_glass_is_off_by_default_and_its_token_is_masked():
    assert not parse_settings(BASE, {}).break_glass.enabled
    settings = parse_settings(BASE + f"break_glass: {{token: {TOKEN}, ttl: 5m}}\n", {})
    assert settings.break_glass.enabled and settings.break_glass.ttl == 300
    assert TOKEN not in repr(settings)
