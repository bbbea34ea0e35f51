"""The walking skeleton end to end: real sidecar processes, the real dev IdP, real Redis, the sample console.

Each test states the behaviour; the login is driven through the provider's own forms (support.idp.login).
"""

from __future__ import annotations

import json
import re

import aiohttp
import pytest
from yarl import URL

from support.idp import login, logout, parse_forms
from support.redis_ha import command
from support.sidecar import replica_of
from support.waiting import eventually

IDENTITY = {
    "X-Forwarded-User": "alice.smith",
    "X-Forwarded-Email": "alice.smith@example.com",
    "X-Forwarded-Given-Name": "Alice",
    "X-Forwarded-Family-Name": "Smith",
    "X-Forwarded-Name": "Alice Smith",
}
SESSION_COOKIE = "sso_sidecar"


async def whoami(client, url: str, **kwargs) -> dict:
    async with client.get(url, **kwargs) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.json()


async def signed_in(http, sidecar, username: str = "alice.smith", path: str = "/api/whoami?x=1"):
    client = http()
    resp = await login(client, sidecar.url_for(path), username)
    assert resp.status == 200, await resp.text()
    return client, json.loads(await resp.text())


async def walk_to_callback(client, start_url: str, username: str = "alice.smith", headers=None) -> str:
    """Drive the provider's forms until it redirects to the sidecar's callback; return that URL."""
    url, method, data = URL(start_url), "GET", None
    for _ in range(20):
        async with client.request(method, url, data=data, headers=headers) as resp:
            body = await resp.text()
            if resp.status in (302, 303):
                nxt = url.join(URL(resp.headers["Location"]))
                if nxt.path == "/oauth2/callback":
                    return str(nxt)
                url, method, data = nxt, "GET", None
                continue
            forms = [f for f in parse_forms(body) if f.fields.get("prompt") in ("login", "consent")]
            assert forms, f"unexpected page at {url}: {resp.status}"
            form = forms[0]
            data = dict(form.fields)
            if data["prompt"] == "login":
                data.update(login=username, password="pw")
            url, method = url.join(URL(form.action)), "POST"
    raise AssertionError("never reached the callback")


def session_cookie(client) -> str | None:
    return client.cookie(SESSION_COOKIE)


# --------------------------------------------------------------------------------------------------
# Happy paths


async def test_browser_navigation_logs_in_and_console_gets_identity_headers_at_the_original_url(http, sidecar):
    client = http()
    resp = await login(client, sidecar.url_for("/api/whoami?x=1&y=a%26b"), "alice.smith")
    assert resp.status == 200
    seen = json.loads(await resp.text())
    assert seen["raw_path"] == "/api/whoami?x=1&y=a%26b"
    for header, value in IDENTITY.items():
        assert seen["headers"][header] == value
    assert seen["headers"]["X-Forwarded-Groups"] == "users"


async def test_the_first_redirect_is_an_authorization_request_with_pkce_state_and_nonce(http, sidecar, idp):
    client = http()
    async with client.get(sidecar.url_for("/reports?id=7")) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
        set_cookie = resp.headers.getall("Set-Cookie")
    assert str(location).startswith(idp.discovery()["authorization_endpoint"])
    q = location.query
    assert q["response_type"] == "code"
    assert q["client_id"] == sidecar.config["sso"]["client_id"]
    assert q["redirect_uri"] == sidecar.url_for("/oauth2/callback")
    assert q["scope"] == "openid profile email"
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 32 and len(q["nonce"]) >= 32 and q["state"] != q["nonce"]
    assert any("HttpOnly" in c and "SameSite=Lax" in c for c in set_cookie)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_happy_path_with_each_store(http, sidecar_factory, redis_clean, store):
    config = {"session": {"store": store, "redis_url": redis_clean.url}}
    sc = sidecar_factory(config)
    client, seen = await signed_in(http, sc)
    assert seen["headers"]["X-Forwarded-Email"] == "alice.smith@example.com"
    again = await whoami(client, sc.url_for("/api/whoami"))
    assert again["headers"]["X-Forwarded-User"] == "alice.smith"


async def test_two_replicas_on_one_redis_serve_the_same_session(http, sidecar_factory, redis_clean):
    a = sidecar_factory({"session": {"store": "redis", "redis_url": redis_clean.url}})
    b = sidecar_factory(replica_of(a), register=False)
    client, _ = await signed_in(http, a)
    seen = await whoami(client, b.url_for("/api/whoami"))
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"


async def test_several_tabs_may_log_in_at_once(http, sidecar):
    client = http()
    callbacks = [await walk_to_callback(client, sidecar.url_for(f"/tab{i}"), "alice.smith") for i in range(3)]
    # Complete them in reverse order: each is still bound to this browser and usable once.
    for i, url in reversed(list(enumerate(callbacks))):
        async with client.get(url) as resp:
            assert resp.status == 302, await resp.text()
            assert resp.headers["Location"] == f"/tab{i}"


async def test_pending_login_cookies_a_browser_can_accumulate_are_bounded(http, sidecar):
    client = http()
    for i in range(12):
        async with client.get(sidecar.url_for(f"/p{i}")) as resp:
            assert resp.status == 302
    pending = [m for m in client.cookie_jar if m.key.startswith(SESSION_COOKIE + "_login_")]
    assert 1 <= len(pending) <= 5


# --------------------------------------------------------------------------------------------------
# Headers and cookies


async def test_spoofed_identity_headers_are_stripped_in_every_spelling(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    spoof = {
        "X-Forwarded-User": "mallory",
        "x-forwarded-email": "mallory@evil.com",
        "X_Forwarded_Name": "Mallory",
        "X-FORWARDED-GROUPS": "admins",
        "x_forwarded-given_name": "M",
    }
    seen = await whoami(client, sidecar.url_for("/api/whoami"), headers=spoof)
    header_list = seen["header_list"]
    names = [name.lower().replace("_", "-") for name, _ in header_list]
    assert names.count("x-forwarded-user") == 1 and names.count("x-forwarded-email") == 1
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"
    assert "mallory" not in json.dumps(header_list).lower()
    assert "admins" not in json.dumps(header_list)


async def test_spoofed_identity_headers_are_stripped_without_a_session_on_skip_auth_paths(http, sidecar_factory):
    sc = sidecar_factory({"skip_auth": ["GET ^/api/whoami$"]})
    client = http()
    seen = await whoami(
        client, sc.url_for("/api/whoami"), headers={"X-Forwarded-User": "mallory", "X_Forwarded_Email": "m@x"}
    )
    assert not any(k.lower().replace("_", "-").startswith("x-forwarded-user") for k, _ in seen["header_list"])
    assert "m@x" not in json.dumps(seen)


async def test_the_sidecars_own_cookies_are_not_forwarded_but_others_are(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    seen = await whoami(client, sidecar.url_for("/api/whoami"), headers={"Cookie": "theme=dark"})
    cookie = seen["headers"].get("Cookie", "")
    assert "theme=dark" in cookie
    assert SESSION_COOKIE not in cookie


async def test_the_session_cookie_is_a_small_ticket_without_claims_or_tokens(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    value = session_cookie(client)
    assert value is not None and len(value) < 200
    assert "alice" not in value and "eyJ" not in value


# --------------------------------------------------------------------------------------------------
# Without a session


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Requested-With": "XMLHttpRequest"},
        {"Sec-Fetch-Mode": "cors"},
        {"Accept": "application/json"},
    ],
)
async def test_api_requests_without_a_session_get_401_json_with_a_login_url(http, sidecar, headers):
    async with http().get(sidecar.url_for("/api/data?q=1"), headers=headers) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["error"] == "unauthenticated"
    assert (
        body["login_url"] == "/oauth2/start?rd=/api/data?q%3D1" or URL(body["login_url"]).query["rd"] == "/api/data?q=1"
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"Accept": "text/html,application/xhtml+xml"}, {"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}],
)
async def test_browser_navigations_without_a_session_are_redirected_to_log_in(http, sidecar, idp, headers):
    async with http().get(sidecar.url_for("/x"), headers=headers) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith(idp.issuer)


async def test_a_tampered_session_cookie_counts_as_no_session(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    value = session_cookie(client)
    assert value is not None
    start = value.rindex(".") + 1  # the signature's first character is fully covered by the MAC
    forged = value[:start] + ("B" if value[start] != "B" else "C") + value[start + 1 :]
    fresh = http(cookies=False)
    async with fresh.get(sidecar.url_for("/api/whoami"), headers={"Cookie": f"{SESSION_COOKIE}={forged}"}) as resp:
        assert resp.status == 302


# --------------------------------------------------------------------------------------------------
# Sign-out


async def test_sign_out_deletes_the_session_server_side_and_goes_to_the_provider(http, sidecar, idp):
    client, _ = await signed_in(http, sidecar)
    old = session_cookie(client)
    async with client.get(sidecar.url_for("/oauth2/sign_out"), headers={"Sec-Fetch-Site": "same-origin"}) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
        cleared = [c for c in resp.headers.getall("Set-Cookie") if c.startswith(SESSION_COOKIE + "=")]
    assert str(location).startswith(idp.discovery()["end_session_endpoint"])
    assert location.query["post_logout_redirect_uri"] == sidecar.url_for("/oauth2/signed_out")
    assert "id_token_hint" in location.query and "state" in location.query
    assert cleared and "Max-Age=0" in cleared[0]
    replay = http(cookies=False)
    async with replay.get(sidecar.url_for("/api/whoami"), headers={"Cookie": f"{SESSION_COOKIE}={old}"}) as resp:
        assert resp.status == 302, "a replayed cookie of a signed-out session must not work"


async def test_sign_out_can_name_the_user_by_logout_hint_and_never_show_the_id_token(http, sidecar_factory, idp):
    """sso.logout_hint: sid. The real provider (node oidc-provider) takes client_id + logout_hint, asks the
    user to confirm (as RP-Initiated Logout 1.0 has it do without id_token_hint), and sends them back."""
    sc = sidecar_factory({"sso": {"logout_hint": "sid"}})
    client, _ = await signed_in(http, sc)
    async with client.get(sc.url_for("/oauth2/sign_out"), headers={"Sec-Fetch-Site": "same-origin"}) as resp:
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert str(location).startswith(idp.discovery()["end_session_endpoint"])
    assert "id_token_hint" not in location.query and "eyJ" not in str(location)
    assert location.query["client_id"] == sc.config["sso"]["client_id"]
    assert location.query["logout_hint"]  # the provider session's sid
    resp = await logout(client, str(location))
    assert resp.status == 200 and resp.url.path == "/oauth2/signed_out", (resp.url, await resp.text())
    # The provider's session ended too: the next sign-in asks for the password again.
    async with client.get(sc.url_for("/api/whoami")) as resp:
        assert resp.status == 302
        authorize = resp.headers["Location"]
    async with client.get(authorize, allow_redirects=True) as resp:
        assert any(f.fields.get("prompt") == "login" for f in parse_forms(await resp.text()))


async def test_a_cross_site_sign_out_link_asks_for_confirmation(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    async with client.get(sidecar.url_for("/oauth2/sign_out"), headers={"Sec-Fetch-Site": "cross-site"}) as resp:
        assert resp.status == 200
        page = await resp.text()
    assert "Sign out?" in page
    await whoami(client, sidecar.url_for("/api/whoami"))  # still signed in
    form = parse_forms(page)[0]
    async with client.post(
        sidecar.url_for(form.action), data=form.fields, headers={"Sec-Fetch-Site": "same-origin"}
    ) as resp:
        assert resp.status == 302
    async with client.get(sidecar.url_for("/api/whoami")) as resp:
        assert resp.status == 302


async def test_a_forged_sign_out_form_without_the_token_is_not_accepted(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    async with client.post(
        sidecar.url_for("/oauth2/sign_out"), data={"token": "forged"}, headers={"Sec-Fetch-Site": "cross-site"}
    ) as resp:
        assert resp.status == 200 and "Sign out?" in await resp.text()
    await whoami(client, sidecar.url_for("/api/whoami"))


async def test_signed_out_page_returns_to_a_safe_rd_only(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    async with client.get(
        sidecar.url_for("/oauth2/sign_out?rd=/bye"), headers={"Sec-Fetch-Site": "same-origin"}
    ) as resp:
        state = URL(resp.headers["Location"]).query["state"]
    async with client.get(sidecar.url_for(f"/oauth2/signed_out?state={state}")) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/bye"
    async with client.get(sidecar.url_for("/oauth2/signed_out?state=forged")) as resp:
        assert resp.status == 200 and "signed out" in (await resp.text()).lower()


# --------------------------------------------------------------------------------------------------
# Bad callbacks: a clear error page, 4xx, no session


async def assert_error_page_and_no_session(client, url: str, *, status_range=range(400, 500)) -> str:
    async with client.get(url) as resp:
        body = await resp.text()
        assert resp.status in status_range, (resp.status, body[:300])
        assert "text/html" in resp.headers["Content-Type"]
        assert not any(
            c.startswith(SESSION_COOKIE + "=") and "Max-Age=0" not in c for c in resp.headers.getall("Set-Cookie", [])
        )
    assert "Try again" in body and "/oauth2/start" in body
    assert "Traceback" not in body
    return body


async def test_callback_without_state_is_refused(http, sidecar):
    await assert_error_page_and_no_session(http(), sidecar.url_for("/oauth2/callback?code=abc"))


async def test_callback_with_an_unknown_state_is_refused(http, sidecar):
    await assert_error_page_and_no_session(http(), sidecar.url_for("/oauth2/callback?code=abc&state=unknown"))


async def test_callback_with_provider_error_is_refused(http, sidecar):
    client = http()
    callback = await walk_to_callback(client, sidecar.url_for("/x"))
    state = URL(callback).query["state"]
    body = await assert_error_page_and_no_session(
        client, sidecar.url_for(f"/oauth2/callback?error=access_denied&error_description=%3Cscript%3E&state={state}")
    )
    assert "access_denied" in body and "<script>" not in body


async def test_a_replayed_callback_is_refused_even_with_the_login_cookie(http, sidecar):
    client = http()
    callback = await walk_to_callback(client, sidecar.url_for("/x"))
    name, value = next((m.key, m.value) for m in client.cookie_jar if m.key.startswith(SESSION_COOKIE + "_login_"))
    async with client.get(callback) as resp:
        assert resp.status == 302
    attacker = http(cookies=False)
    async with attacker.get(callback, headers={"Cookie": f"{name}={value}"}) as resp:
        body = await resp.text()
        assert resp.status == 400
        assert "Set-Cookie" not in resp.headers or SESSION_COOKIE + "=" not in resp.headers.get("Set-Cookie", "")
    assert "already used" in body or "expired" in body


async def test_a_callback_started_in_another_browser_is_refused(http, sidecar):
    attacker = http()
    callback = await walk_to_callback(attacker, sidecar.url_for("/x"), "mallory")
    victim = http()
    await assert_error_page_and_no_session(victim, callback)


async def test_a_code_the_provider_rejects_is_refused(http, sidecar):
    client = http()
    callback = URL(await walk_to_callback(client, sidecar.url_for("/x")))
    bad = callback.update_query(code="not-a-real-code")
    body = await assert_error_page_and_no_session(client, str(bad), status_range=range(400, 600))
    assert "not-a-real-code" not in body


# --------------------------------------------------------------------------------------------------
# Upstream, health


async def test_an_unreachable_upstream_gets_a_502_page(http, sidecar_factory):
    sc = sidecar_factory({"upstream": "http://127.0.0.1:9", "skip_auth": ["^/"]})
    async with http().get(sc.url_for("/anything")) as resp:
        assert resp.status == 502
        body = await resp.text()
    assert "Console unavailable" in body and "Traceback" not in body


async def test_health_and_readiness(http, sidecar_factory, redis_clean):
    sc = sidecar_factory({"session": {"store": "redis", "redis_url": redis_clean.url}})
    client = http()
    assert (await whoami(client, sc.url_for("/healthz")))["status"] == "ok"
    assert (await whoami(client, sc.url_for("/readyz")))["status"] == "ready"


async def test_readyz_reports_not_ready_while_redis_is_down(http, sidecar_factory, redis_server):
    sc = sidecar_factory({"session": {"store": "redis", "redis_url": redis_server.url}})
    redis_server.kill()
    try:
        async with http().get(sc.url_for("/readyz")) as resp:
            assert resp.status == 503
        async with http().get(sc.url_for("/x"), headers={"Cookie": f"{SESSION_COOKIE}=whatever"}) as resp:
            assert resp.status in (302, 503)
    finally:
        redis_server.start()

    async def ready() -> bool:
        async with http().get(sc.url_for("/readyz")) as resp:
            return resp.status == 200

    await eventually(ready, what="/readyz to recover after Redis came back")


# --------------------------------------------------------------------------------------------------
# Streaming and websockets through the whole sidecar


async def test_large_download_and_upload_stream_through_a_signed_in_session(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    size = 64 * 1024 * 1024
    received = 0
    async with client.get(sidecar.url_for(f"/download/{size}")) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(1 << 20):
            received += len(chunk)
    assert received == size

    async def body():
        chunk = b"x" * (1 << 20)
        for _ in range(64):
            yield chunk

    async with client.post(sidecar.url_for("/upload"), data=body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["bytes"] == size


async def test_websockets_are_proxied_with_identity(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    async with client.session.ws_connect(sidecar.url_for("/ws")) as ws:
        first = await ws.receive_json(timeout=5)
        assert first["identity"]["X-Forwarded-User"] == "alice.smith"
        await ws.send_str("ping")
        echoed = await ws.receive(timeout=5)
        assert echoed.type == aiohttp.WSMsgType.TEXT and "ping" in echoed.data


async def test_a_websocket_without_a_session_is_refused(http, sidecar):
    with pytest.raises(aiohttp.WSServerHandshakeError):
        async with http().session.ws_connect(sidecar.url_for("/ws")):
            pass


async def test_userinfo_returns_the_identity_as_json(http, sidecar):
    client, _ = await signed_in(http, sidecar)
    info = await whoami(client, sidecar.url_for("/oauth2/userinfo"))
    assert info["preferred_username"] == "alice.smith" and info["email"] == "alice.smith@example.com"
    assert "nonce" not in info and not any(isinstance(v, str) and v.startswith("eyJ") for v in info.values())


async def test_pending_logins_are_bounded_per_address_while_five_tabs_of_a_user_are_fine(
    http, sidecar_factory, redis_clean
):
    """Every sign-in started is stored until it finishes or times out: one address (an IPv6 /64) cannot keep
    more than session.max_pending_logins_per_address open, so anonymous requests cannot fill Redis."""
    session = {"store": "redis", "redis_url": redis_clean.url, "max_pending_logins_per_address": 10}
    sc = sidecar_factory({"trusted_proxies": ["127.0.0.1/32"], "session": session})
    statuses = []
    for i in range(30):  # one attacker: an IPv4 address, then addresses of one IPv6 /64
        sender = "203.0.113.66" if i < 15 else f"2001:db8:0:1::{i:x}"
        async with http(cookies=False).get(
            sc.url_for(f"/oauth2/start?rd=/a{i}"), headers={"X-Forwarded-For": sender}
        ) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                page, retry_after = await resp.text(), resp.headers.get("Retry-After")
    assert statuses == [302] * 10 + [429] * 5 + [302] * 10 + [429] * 5
    assert "Too many sign-ins" in page and "Traceback" not in page and retry_after == "60"
    async with http(cookies=False).get(
        sc.url_for("/api/data"), headers={"X-Forwarded-For": "203.0.113.66", "Accept": "application/json"}
    ) as resp:
        assert resp.status == 401  # an API call starts no sign-in, and is told to sign in as ever
    assert len(command(redis_clean.port, "KEYS", "sso:l:*")) == 20  # type: ignore[arg-type]
    # A user elsewhere, with five tabs open at once: each sign-in starts and completes.
    client = http()
    user = {"X-Forwarded-For": "198.51.100.7"}
    callbacks = [await walk_to_callback(client, sc.url_for(f"/tab{i}"), headers=user) for i in range(5)]
    for i, url in enumerate(callbacks):
        async with client.get(url, headers=user) as resp:
            assert resp.status == 302, await resp.text()
            assert resp.headers["Location"] == f"/tab{i}"
    # Finished sign-ins free their places: the same address can start the whole bound again.
    for _ in range(10):
        async with http(cookies=False).get(sc.url_for("/oauth2/start?rd=/"), headers=user) as resp:
            assert resp.status == 302


def test_log_lines_carry_no_tokens_codes_or_cookies(sidecar):
    logs = sidecar.logs()
    assert logs
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", logs)
    assert "code=" not in logs and "state=" not in logs
    assert sidecar.config["sso"]["client_secret"] not in logs
    assert sidecar.config["session"]["cookie_secret"] not in logs
