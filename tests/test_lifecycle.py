"""Session lifecycle: timeouts, refresh (once, across replicas), RP-initiated and back-channel logout.

Real processes throughout: sidecars through their CLI, the dev IdP (oidc-provider, which revokes the whole
grant when a rotated refresh token is used twice) and, where a provider must misbehave or change a
user's claims on purpose, the test provider ``support/badop.py`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import pytest

from support import REPO
from support.idp import login, logout
from support.procs import Process
from support.sidecar import replica_of

SESSION_COOKIE = "sso_sidecar"


async def get_status(client, url: str, **kwargs) -> int:
    async with client.get(url, **kwargs) as resp:
        await resp.read()
        return resp.status


async def whoami(client, url: str) -> dict:
    async with client.get(url) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.json()


# --------------------------------------------------------------------------------------------------
# The misbehaving provider as a process, shared by this module


class BadOPProcess:
    def __init__(self, proc: Process, issuer: str) -> None:
        self.proc = proc
        self.issuer = issuer

    async def control(self, path: str = "", **body) -> dict:
        async with aiohttp.ClientSession() as s, s.post(f"{self.issuer}/_control{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def state(self) -> dict:
        async with aiohttp.ClientSession() as s, s.get(f"{self.issuer}/_control/state") as resp:
            return await resp.json()

    async def refresh_count(self) -> int:
        state = await self.state()
        return sum(1 for r in state["token_requests"] if r.get("grant_type") == "refresh_token")


@pytest.fixture(scope="module")
def badop(tmp_path_factory):
    proc = Process(
        "badop",
        [sys.executable, str(REPO / "tests" / "support" / "badop.py"), "--port", "0"],
        cwd=REPO,
        log_dir=tmp_path_factory.mktemp("badop"),
    ).start()
    issuer = proc.wait_for_line(r"READY (\S+)", 20).group(1)
    yield BadOPProcess(proc, issuer)
    proc.stop()


@pytest.fixture
async def fresh_badop(badop):
    await badop.control("/reset")
    return badop


def badop_sidecar(sidecar_factory, badop, **config):
    base = {
        "sso": {"issuer_url": badop.issuer, "client_id": "sidecar", "client_secret": "s3cret:with+odd/chars é"},
    }
    for key, value in config.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return sidecar_factory(base, register=False)


# --------------------------------------------------------------------------------------------------
# Timeouts


async def test_an_idle_session_expires_and_the_fresh_login_returns_to_the_page(http, sidecar_factory):
    sc = sidecar_factory({"session": {"idle_timeout": "1500ms"}})
    client = http()
    await login(client, sc.url_for("/api/whoami"), "alice.smith")
    await asyncio.sleep(0.8)
    assert await get_status(client, sc.url_for("/api/whoami")) == 200  # use restarts the idle timer
    await asyncio.sleep(0.8)
    assert await get_status(client, sc.url_for("/api/whoami")) == 200
    await asyncio.sleep(1.8)
    async with client.get(sc.url_for("/reports?id=7")) as resp:
        assert resp.status == 302
    # The provider still knows the user: the new login needs no form and lands on the same page.
    final = await login(client, sc.url_for("/reports?id=7"), "alice.smith")
    assert final.status == 200 and final.url.path_qs == "/reports?id=7"


async def test_the_absolute_lifetime_ends_even_a_busy_session(http, sidecar_factory):
    sc = sidecar_factory({"session": {"lifetime": "2s", "idle_timeout": "1h"}})
    client = http()
    await login(client, sc.url_for("/api/whoami"), "alice.smith")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert await get_status(client, sc.url_for("/api/whoami")) == 200
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)
    assert await get_status(client, sc.url_for("/api/whoami")) == 302


# --------------------------------------------------------------------------------------------------
# Refresh


@pytest.fixture(scope="module")
def short_token_idp(idp_factory):
    """Access and ID tokens live 3 s; refresh tokens rotate on every use (and reuse revokes the grant)."""
    return idp_factory(ttl={"AccessToken": 3, "IdToken": 3})


async def test_concurrent_requests_on_two_replicas_never_refresh_twice(
    http, sidecar_factory, short_token_idp, redis_clean
):
    a = sidecar_factory({"session": {"store": "redis", "redis_url": redis_clean.url}}, idp=short_token_idp)
    b = sidecar_factory(
        replica_of(a),
        idp=short_token_idp,
        register=False,
    )
    client = http()
    first = await login(client, a.url_for("/api/whoami"), "alice.smith")
    assert first.status == 200
    # Three access-token lifetimes of bursts across both replicas: a refresh token spent twice would make
    # the provider revoke the grant, the next refresh would fail and the session would end (302).
    statuses: list[int] = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        burst = [get_status(client, (a if i % 2 else b).url_for("/api/whoami")) for i in range(12)]
        statuses += await asyncio.gather(*burst)
        await asyncio.sleep(0.2)
    assert set(statuses) == {200}, statuses
    seen = await whoami(client, b.url_for("/api/whoami"))
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"


async def test_without_a_refresh_token_access_token_expiry_does_not_sign_out(http, idp_factory, sidecar_factory):
    idp = idp_factory(ttl={"AccessToken": 1, "IdToken": 1}, refresh_tokens=False)
    sc = sidecar_factory(idp=idp)
    client = http()
    await login(client, sc.url_for("/api/whoami"), "alice.smith")
    await asyncio.sleep(2.5)
    assert await get_status(client, sc.url_for("/api/whoami")) == 200


async def test_refresh_updates_the_identity_headers(http, sidecar_factory, fresh_badop):
    await fresh_badop.control(token_response_override={"expires_in": 2})
    sc = badop_sidecar(sidecar_factory, fresh_badop)
    client = http()
    resp = await login(client, sc.url_for("/api/whoami"), "ignored")
    assert json.loads(await resp.text())["headers"]["X-Forwarded-Name"] == "Ada Lovelace"
    claims = (await fresh_badop.state())["behaviour"]["userinfo_claims"]
    await fresh_badop.control(userinfo_claims={**claims, "name": "Ada King"})
    await asyncio.sleep(1.6)
    seen = await whoami(client, sc.url_for("/api/whoami"))
    assert seen["headers"]["X-Forwarded-Name"] == "Ada King"
    assert await fresh_badop.refresh_count() == 1


async def test_a_refresh_the_provider_refuses_ends_the_session(http, sidecar_factory, fresh_badop):
    await fresh_badop.control(token_response_override={"expires_in": 2})
    sc = badop_sidecar(sidecar_factory, fresh_badop)
    client = http()
    await login(client, sc.url_for("/api/whoami"), "ignored")
    await fresh_badop.control(token_error="invalid_grant")
    await asyncio.sleep(1.6)
    assert await get_status(client, sc.url_for("/api/whoami")) == 302
    await fresh_badop.control(token_error=None)
    assert await get_status(client, sc.url_for("/api/whoami")) == 302, "the ended session must stay ended"


async def test_a_provider_outage_during_refresh_keeps_the_session(http, sidecar_factory, fresh_badop):
    await fresh_badop.control(token_response_override={"expires_in": 2})
    sc = badop_sidecar(sidecar_factory, fresh_badop)
    client = http()
    await login(client, sc.url_for("/api/whoami"), "ignored")
    await fresh_badop.control(token_error="temporarily_unavailable")
    await asyncio.sleep(1.6)
    assert await get_status(client, sc.url_for("/api/whoami")) == 200


# --------------------------------------------------------------------------------------------------
# RP-initiated logout


async def test_sign_out_ends_the_provider_session_and_lands_on_the_signed_out_page(http, sidecar_factory, idp):
    sc = sidecar_factory()
    client = http()
    await login(client, sc.url_for("/api/whoami"), "alice.smith")
    final = await logout(client, sc.url_for("/oauth2/sign_out"))
    assert final.status == 200
    assert final.url.path == "/oauth2/signed_out"
    assert "You have been signed out" in await final.text()
    # The provider session is gone too: signing in again shows the provider's login form.
    async with client.get(sc.url_for("/api/whoami")) as resp:
        location = resp.headers["Location"]
    async with client.get(location, allow_redirects=True) as resp:
        assert 'name="login"' in await resp.text()


async def test_sign_out_returns_to_a_safe_rd_through_the_provider(http, sidecar_factory):
    sc = sidecar_factory({"skip_auth": ["^/goodbye$"]})
    client = http()
    await login(client, sc.url_for("/api/whoami"), "alice.smith")
    final = await logout(client, sc.url_for("/oauth2/sign_out?rd=/goodbye%3Fx%3D1"))
    assert final.url.path_qs == "/goodbye?x=1"
    evil = http()
    await login(evil, sc.url_for("/api/whoami"), "alice.smith")
    final = await logout(evil, sc.url_for("/oauth2/sign_out?rd=//evil.example"))
    assert final.url.host == "127.0.0.1" and final.url.path == "/oauth2/signed_out"


# --------------------------------------------------------------------------------------------------
# Back-channel logout


async def test_a_logout_at_the_provider_ends_the_session_on_both_replicas(http, sidecar_factory, idp, redis_clean):
    a = sidecar_factory({"session": {"store": "redis", "redis_url": redis_clean.url}})
    b = sidecar_factory(
        replica_of(a),
        register=False,
    )
    client = http()
    await login(client, a.url_for("/api/whoami"), "bob")
    assert await get_status(client, b.url_for("/api/whoami")) == 200
    # Sign out at the provider itself, not through the sidecar: only the back-channel can tell the sidecar.
    await logout(client, idp.discovery()["end_session_endpoint"])
    for _ in range(50):
        if await get_status(client, a.url_for("/api/whoami")) == 302:
            break
        await asyncio.sleep(0.1)
    assert await get_status(client, a.url_for("/api/whoami")) == 302
    assert await get_status(client, b.url_for("/api/whoami")) == 302
    assert "backchannel" in idp.logs().lower() or "back-channel" in a.logs().lower()


@pytest.fixture
async def bc_setup(http, sidecar_factory, fresh_badop):
    """A badop-backed sidecar with one signed-in user (sub user-1, sid from badop)."""
    sc = badop_sidecar(sidecar_factory, fresh_badop)
    client = http()
    await login(client, sc.url_for("/api/whoami"), "ignored")
    sid = (await fresh_badop.state())["last_sid"]
    return sc, client, fresh_badop, sid


def logout_claims(badop, session_sid: str, **changes) -> dict:
    """Claims of a good logout token; a change to None sends JSON null, which badop leaves out."""
    claims = {
        "iss": badop.issuer,
        "aud": "sidecar",
        "iat": int(time.time()),
        "jti": f"jti-{time.monotonic_ns()}",
        "sid": session_sid,
        "sub": "user-1",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }
    claims.update(changes)
    return claims


async def post_logout_token(sc, token: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.url_for("/oauth2/backchannel-logout"), data={"logout_token": token}) as resp,
    ):
        body = await resp.text()
        return resp.status, (json.loads(body) if body else {})


async def mint(badop, claims: dict, **options) -> str:
    return (await badop.control("/logout_token", claims=claims, **options))["logout_token"]


@pytest.mark.parametrize(
    ("case", "changes", "options"),
    [
        ("no events claim", {"events": None}, {}),
        ("events member not an object", {"events": {"http://schemas.openid.net/event/backchannel-logout": "x"}}, {}),
        ("nonce present", {"nonce": "n"}, {}),
        ("neither sid nor sub", {"sid": None, "sub": None}, {}),
        ("wrong audience", {"aud": "someone-else"}, {}),
        ("wrong issuer", {"iss": "https://evil.example"}, {}),
        ("no iat", {"iat": None}, {}),
        ("too old", {"iat": int(time.time()) - 3600}, {}),
        ("no jti", {"jti": None}, {}),
        ("bad signature", {}, {"sign_with": "rogue"}),
        ("alg none", {}, {"alg": "none"}),
        ("wrong typ", {}, {"typ": "at+jwt"}),
    ],
)
async def test_bad_logout_tokens_get_400_and_touch_nothing(bc_setup, case, changes, options):
    sc, client, badop, sid = bc_setup
    token = await mint(badop, logout_claims(badop, sid, **changes), **options)
    status, body = await post_logout_token(sc, token)
    assert status == 400, case
    assert body["error"] == "invalid_request"
    assert await get_status(client, sc.url_for("/api/whoami")) == 200, case


async def test_a_good_logout_token_by_sid_ends_the_session_and_a_replay_is_refused(bc_setup):
    sc, client, badop, sid = bc_setup
    token = await mint(badop, logout_claims(badop, sid))
    assert (await post_logout_token(sc, token))[0] == 200
    assert await get_status(client, sc.url_for("/api/whoami")) == 302
    status, body = await post_logout_token(sc, token)
    assert status == 400 and "replay" in body["error_description"]


async def test_a_logout_token_with_only_sub_ends_every_session_of_that_user(http, bc_setup):
    sc, client, badop, sid = bc_setup
    other = http()
    await login(other, sc.url_for("/api/whoami"), "ignored")
    token = await mint(badop, logout_claims(badop, sid, sid=None))
    assert (await post_logout_token(sc, token))[0] == 200
    assert await get_status(client, sc.url_for("/api/whoami")) == 302
    assert await get_status(other, sc.url_for("/api/whoami")) == 302


async def test_a_logout_token_for_an_unknown_session_is_accepted_and_ends_nothing(bc_setup):
    sc, client, badop, _ = bc_setup
    token = await mint(badop, logout_claims(badop, "some-other-sid"))
    assert (await post_logout_token(sc, token))[0] == 200
    assert await get_status(client, sc.url_for("/api/whoami")) == 200


async def test_the_backchannel_endpoint_takes_only_a_form_post(bc_setup):
    sc, _, _, _ = bc_setup
    async with aiohttp.ClientSession() as s:
        async with s.get(sc.url_for("/oauth2/backchannel-logout")) as resp:
            assert resp.status in (404, 405)
        async with s.post(sc.url_for("/oauth2/backchannel-logout"), json={"logout_token": "x"}) as resp:
            assert resp.status == 400


async def test_every_key_the_sidecar_writes_to_redis_expires(http, sidecar_factory, redis_clean):
    sc = sidecar_factory({"session": {"store": "redis", "redis_url": redis_clean.url}})
    signed_out, kept = http(), http()
    await login(signed_out, sc.url_for("/api/whoami"), "carol")
    await login(kept, sc.url_for("/api/whoami"), "dave")
    async with http().get(sc.url_for("/pending")) as resp:  # a pending login left behind
        assert resp.status == 302
    await logout(signed_out, sc.url_for("/oauth2/sign_out"))
    import redis

    r = redis.Redis.from_url(redis_clean.url)
    keys = list(r.scan_iter("sso:*"))
    kinds = {k.split(b":")[1] for k in keys}
    assert {b"s", b"i", b"l"} <= kinds, kinds
    for key in keys:
        assert r.pttl(key) > 0, key
    r.close()
