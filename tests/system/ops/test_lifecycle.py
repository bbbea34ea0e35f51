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
from support.redis_ha import command, session_keys
from support.sidecar import replica_of
from support.waiting import eventually

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


async def test_an_idle_session_expires_and_the_fresh_login_returns_to_the_page(http, sidecar_factory, redis_clean):
    """The idle timer is the session key's TTL in Redis: watched there rather than guessed with sleeps."""
    session = {"store": "redis", "redis_url": redis_clean.url, "idle_timeout": "3s"}
    sc = sidecar_factory({"session": session})
    client = http()
    await login(client, sc.url_for("/api/whoami"), "alice.smith")
    (key,) = session_keys([redis_clean.port], "sso:s:*")

    def ttl_ms() -> int:
        pttl = command(redis_clean.port, "PTTL", key)
        assert isinstance(pttl, int) and pttl > 0, f"the session key is gone (PTTL {pttl})"
        return pttl

    def idled_a_second() -> int | None:
        pttl = ttl_ms()
        return pttl if pttl <= 2000 else None

    idle_for_a_second = await eventually(idled_a_second, what="a second of idling")
    assert await get_status(client, sc.url_for("/api/whoami")) == 200
    assert ttl_ms() > idle_for_a_second, "using the session must restart its idle timer"
    # Unused, it expires (EXISTS does not touch it, as a request would).
    await eventually(lambda: command(redis_clean.port, "EXISTS", key) == 0, what="the idle session to expire")
    async with client.get(sc.url_for("/reports?id=7")) as resp:
        assert resp.status == 302
    # The provider still knows the user: the new login needs no form and lands on the same page.
    final = await login(client, sc.url_for("/reports?id=7"), "alice.smith")
    assert final.status == 200 and final.url.path_qs == "/reports?id=7"


async def test_the_absolute_lifetime_ends_even_a_busy_session(http, sidecar_factory):
    sc = sidecar_factory({"session": {"lifetime": "2s", "idle_timeout": "1h"}})
    client = http()
    started = time.monotonic()  # before the session exists: it cannot end before started + 2s
    assert (await login(client, sc.url_for("/api/whoami"), "alice.smith")).status == 200

    async def ended() -> bool:  # a request every 100 ms keeps it busy until then
        status = await get_status(client, sc.url_for("/api/whoami"))
        assert status in (200, 302), status
        return status == 302

    await eventually(ended, what="the session to reach its lifetime", interval=0.1)
    assert time.monotonic() - started >= 2.0, "ended before its lifetime"
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
    # Every refresh rewrites the session in Redis (new tokens, sealed afresh): count the versions.
    (key,) = session_keys([redis_clean.port], "sso:s:*")
    versions = {command(redis_clean.port, "GET", key)}

    # Bursts across both replicas until three refreshes happened: a refresh token spent twice would make
    # the provider revoke the grant, the refresh would fail and the session would end (302).
    async def refreshed_three_times() -> bool:
        burst = [get_status(client, (a if i % 2 else b).url_for("/api/whoami")) for i in range(12)]
        statuses = await asyncio.gather(*burst)
        assert set(statuses) == {200}, statuses
        versions.add(command(redis_clean.port, "GET", key))
        return len(versions) > 3

    await eventually(refreshed_three_times, what="three refreshes of the session", timeout=60, interval=0.2)
    seen = await whoami(client, b.url_for("/api/whoami"))
    assert seen["headers"]["X-Forwarded-User"] == "alice.smith"


async def test_without_a_refresh_token_access_token_expiry_does_not_sign_out(http, idp_factory, sidecar_factory):
    idp = idp_factory(ttl={"AccessToken": 1, "IdToken": 1}, refresh_tokens=False)
    sc = sidecar_factory(idp=idp)
    client = http()
    await login(client, sc.url_for("/api/whoami"), "alice.smith")
    expired_by = time.monotonic() + 1  # the access token (1 s) was issued before login() returned

    async def used_after_expiry() -> bool:
        after = time.monotonic() > expired_by
        assert await get_status(client, sc.url_for("/api/whoami")) == 200, "signed out"
        return after

    await eventually(used_after_expiry, what="a request after the access token expired", interval=0.1)


async def test_refresh_updates_the_identity_headers(http, sidecar_factory, fresh_badop):
    await fresh_badop.control(token_response_override={"expires_in": 2})
    sc = badop_sidecar(sidecar_factory, fresh_badop)
    client = http()
    resp = await login(client, sc.url_for("/api/whoami"), "ignored")
    assert json.loads(await resp.text())["headers"]["X-Forwarded-Name"] == "Ada Lovelace"
    claims = (await fresh_badop.state())["behaviour"]["userinfo_claims"]
    await fresh_badop.control(userinfo_claims={**claims, "name": "Ada King"})

    async def renamed() -> bool:  # the refresh is due a second before the 2 s access token expires
        return (await whoami(client, sc.url_for("/api/whoami")))["headers"]["X-Forwarded-Name"] == "Ada King"

    await eventually(renamed, what="a refresh to bring the new name", interval=0.1)
    assert await fresh_badop.refresh_count() == 1


async def test_a_refresh_the_provider_refuses_ends_the_session(http, sidecar_factory, fresh_badop):
    await fresh_badop.control(token_response_override={"expires_in": 2})
    sc = badop_sidecar(sidecar_factory, fresh_badop)
    client = http()
    await login(client, sc.url_for("/api/whoami"), "ignored")
    await fresh_badop.control(token_error="invalid_grant")

    async def ended() -> bool:
        status = await get_status(client, sc.url_for("/api/whoami"))
        assert status in (200, 302), status
        return status == 302

    await eventually(ended, what="the refused refresh to end the session", interval=0.1)
    assert await fresh_badop.refresh_count() == 1, "ended by the refresh, not by anything else"
    await fresh_badop.control(token_error=None)
    assert await get_status(client, sc.url_for("/api/whoami")) == 302, "the ended session must stay ended"


async def test_a_provider_outage_during_refresh_keeps_the_session(http, sidecar_factory, fresh_badop):
    await fresh_badop.control(token_response_override={"expires_in": 2})
    sc = badop_sidecar(sidecar_factory, fresh_badop)
    client = http()
    await login(client, sc.url_for("/api/whoami"), "ignored")
    await fresh_badop.control(token_error="temporarily_unavailable")

    async def refresh_tried() -> bool:
        assert await get_status(client, sc.url_for("/api/whoami")) == 200
        return await fresh_badop.refresh_count() >= 1

    await eventually(refresh_tried, what="a refresh attempt", interval=0.1)
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

    async def ended_on_a() -> bool:
        return await get_status(client, a.url_for("/api/whoami")) == 302

    await eventually(ended_on_a, what="the back-channel logout to end the session")
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
