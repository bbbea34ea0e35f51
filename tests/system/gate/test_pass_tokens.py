"""``pass_tokens``: the console gets the user's own tokens, valid, renewed before they expire, and never expired.

Against the dev IdP (node ``oidc-provider``) with tokens that live a few seconds, the tokens verify where the
provider says they do (the ID token at its JWKS, the opaque access token at its userinfo endpoint), and after
the access token's lifetime the console gets fresh ones with no new sign-in. badop, a provider that signs real
tokens and misbehaves on request, issues JWT access tokens (verified at its JWKS) and plays the cases where a
token cannot be renewed: then the session ends, a browser is sent to sign in, an API call gets 401.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from support import REPO
from support.assertions import API, headers_named, jwks, verify
from support.idp import DevIdP, login
from support.procs import Process
from support.reloading import status_of
from support.sidecar import replica_of
from support.waiting import eventually

ACCESS_HEADER = "X-Forwarded-Access-Token"
ID_HEADER = "X-Forwarded-Id-Token"


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (for its exp; every test also verifies the signature)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def call(client: Any, url: str, *headers: tuple[str, str]) -> tuple[int, dict[str, Any]]:
    async with client.get(url, headers=[*API.items(), *headers]) as resp:
        return resp.status, (await resp.json()) if resp.content_type == "application/json" else {}


async def provider_keys(issuer: str, jwks_path: str | None = None) -> KeySet:
    async with aiohttp.ClientSession() as s:
        if jwks_path is None:
            async with s.get(issuer + "/.well-known/openid-configuration") as resp:
                jwks_uri = (await resp.json())["jwks_uri"]
        else:
            jwks_uri = issuer + jwks_path
        async with s.get(jwks_uri) as resp:
            return KeySet.import_key_set(await resp.json())


# --------------------------------------------------------------------------------------------------
# The dev IdP: real tokens, renewed with no new sign-in


@pytest.fixture(scope="module")
def short_idp(idp_factory: Any) -> DevIdP:
    """Access and ID tokens live 6 s; refresh tokens rotate on every use."""
    return idp_factory(ttl={"AccessToken": 6, "IdToken": 6})


async def userinfo_accepts(idp: DevIdP, access_token: str) -> str | None:
    """The subject the provider's userinfo endpoint answers for this access token, or None when it refuses it."""
    endpoint = idp.discovery()["userinfo_endpoint"]
    async with aiohttp.ClientSession() as s, s.get(endpoint, headers={"Authorization": f"Bearer {access_token}"}) as r:
        return (await r.json())["sub"] if r.status == 200 else None


async def test_tokens_passed_verify_at_the_provider_and_are_renewed_with_no_new_sign_in(
    http, sidecar_factory, short_idp
):
    sidecar = sidecar_factory({"pass_tokens": {"access_token": "Authorization", "id_token": ID_HEADER}}, idp=short_idp)
    keys = await provider_keys(short_idp.issuer)
    client = http()
    signed_in_at = time.time()
    assert (await login(client, sidecar.url_for("/api/whoami"), "alice.smith")).status == 200
    first_expiry = signed_in_at + 6
    access_tokens: list[str] = []
    id_tokens: list[str] = []

    async def renewed_after_the_first_expired() -> bool:
        status, seen = await call(client, sidecar.url_for("/api/whoami"))
        received = time.time()
        assert status == 200, "the session must go on with no new sign-in"
        [authorization] = headers_named(seen, "Authorization")
        access = authorization.removeprefix("Bearer ")
        [id_token] = headers_named(seen, ID_HEADER)
        # Never expired when the console gets it: the ID token by its exp, the access token by the provider.
        claims = jwt.decode(id_token, keys, algorithms=["RS256"]).claims
        jwt.JWTClaimsRegistry(
            now=int(received), iss={"essential": True, "value": short_idp.issuer}, aud={"essential": True}
        ).validate(claims)
        assert claims["exp"] > received
        sub = await userinfo_accepts(short_idp, access)
        assert sub is not None and sub == claims["sub"], "the provider refused the access token it was given"
        for seen_tokens, token in ((access_tokens, access), (id_tokens, id_token)):
            if not seen_tokens or seen_tokens[-1] != token:
                seen_tokens.append(token)
        return received > first_expiry + 1 and len(access_tokens) > 1

    await eventually(
        renewed_after_the_first_expired, what="tokens renewed past the first one's lifetime", timeout=40, interval=0.3
    )
    assert len(id_tokens) > 1


async def test_two_replicas_renew_an_expired_token_once_and_never_pass_it(
    http, sidecar_factory, short_idp, redis_clean
):
    """Requests on both replicas after the tokens expired unused: one replica renews (the provider rotates refresh
    tokens, and a second use would end the grant), the other waits for it instead of passing the expired token."""
    tokens = {"access_token": ACCESS_HEADER, "id_token": ID_HEADER}
    first = sidecar_factory(
        {"session": {"store": "redis", "redis_url": redis_clean.url}, "pass_tokens": tokens}, idp=short_idp
    )
    second = sidecar_factory(replica_of(first) | {"pass_tokens": tokens}, idp=short_idp, register=False)
    client = http()
    for round_ in range(2):
        started = time.time()
        if round_ == 0:
            assert (await login(client, first.url_for("/api/whoami"), "alice.smith")).status == 200
        # Unused until everything the console was given has expired (6 s tokens).
        await eventually(lambda started=started: time.time() > started + 6.5, what="the tokens to expire", timeout=20)
        burst = [call(client, (first if i % 2 else second).url_for("/api/whoami")) for i in range(8)]
        answers = await asyncio.gather(*burst)
        received = time.time()
        assert [status for status, _ in answers] == [200] * 8, "the session must survive the renewal"
        for _, seen in answers:
            [id_token] = headers_named(seen, ID_HEADER)
            assert claims_of(id_token)["exp"] > received - 1, "an expired ID token reached the console"
            assert await userinfo_accepts(short_idp, headers_named(seen, ACCESS_HEADER)[0]) is not None


# --------------------------------------------------------------------------------------------------
# badop: JWT access tokens, and tokens that cannot be renewed


class BadOPProcess:
    """badop as a process (tests/support/badop.py), controlled over HTTP."""

    def __init__(self, proc: Process, issuer: str) -> None:
        self.proc = proc
        self.issuer = issuer

    async def control(self, path: str = "", **body: Any) -> None:
        async with aiohttp.ClientSession() as s, s.post(f"{self.issuer}/_control{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def refreshes(self) -> int:
        async with aiohttp.ClientSession() as s, s.get(f"{self.issuer}/_control/state") as resp:
            state = await resp.json()
        return sum(1 for r in state["token_requests"] if r.get("grant_type") == "refresh_token")


@pytest.fixture(scope="module")
def badop_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadOPProcess]:
    proc = Process(
        "badop",
        [sys.executable, str(REPO / "tests" / "support" / "badop.py"), "--port", "0"],
        cwd=REPO,
        log_dir=tmp_path_factory.mktemp("badop"),
    ).start()
    yield BadOPProcess(proc, proc.wait_for_line(r"READY (\S+)", 20).group(1))
    proc.stop()


@pytest.fixture
async def op(badop_proc: BadOPProcess) -> BadOPProcess:
    await badop_proc.control("/reset")
    await badop_proc.control(jwt_access_tokens=True)
    return badop_proc


async def test_a_session_gone_from_the_store_passes_no_token_when_its_headers_are_built_again(
    http, sidecar_factory, short_idp, redis_clean
):
    """The worker's cache still holds the session (its copy carries no tokens), the store no longer does (signed out
    on another replica whose word has not arrived yet), and the console's headers must be built again (here: a
    reload changed them). The tokens are read from the store, found gone, and the caller is treated as signed out:
    401 from the sidecar, and nothing reaches the console."""
    import redis

    glass = secrets.token_urlsafe(24)
    config = {
        "session": {"store": "redis", "redis_url": redis_clean.url, "cache_ttl": "1m"},
        "pass_tokens": {"access_token": ACCESS_HEADER, "id_token": ID_HEADER},
        "break_glass": {"token": glass},
    }
    sidecar = sidecar_factory(config, idp=short_idp)
    client = http()
    url = sidecar.url_for("/api/whoami")
    assert (await login(client, url, "alice.smith")).status == 200
    status, seen = await call(client, url)  # from the worker's cache, with the headers it remembers
    assert status == 200 and headers_named(seen, ID_HEADER)
    store = redis.Redis.from_url(redis_clean.url)
    try:
        sessions = list(store.scan_iter("sso:s:*"))
        assert len(sessions) == 1, sessions
        store.delete(*sessions)  # as a sign-out elsewhere does, without its invalidation message
    finally:
        store.close()
    version = (await status_of(sidecar, glass))["config"]["version"]
    sidecar.reload({**sidecar.config, "pass_tokens": {"access_token": ACCESS_HEADER, "id_token": "X-Id-Token-2"}})

    async def reloaded() -> bool:
        return (await status_of(sidecar, glass))["config"]["version"] != version

    await eventually(reloaded, what="the reload to apply", timeout=10, interval=0.2)
    status, seen = await call(client, url)
    assert status == 401, (status, seen)
    assert "header_list" not in seen, "the request reached the console"


def badop_sidecar(sidecar_factory: Any, op: BadOPProcess, **config: Any) -> Any:
    sso = {"issuer_url": op.issuer, "client_id": "sidecar", "client_secret": "s3cret:with+odd/chars é"}
    tokens = {"access_token": ACCESS_HEADER, "id_token": ID_HEADER}
    return sidecar_factory({"sso": sso, "pass_tokens": tokens, **config}, register=False)


async def test_jwt_access_tokens_passed_verify_at_the_providers_jwks_and_are_renewed(http, sidecar_factory, op):
    await op.control(token_response_override={"expires_in": 3})
    sidecar = badop_sidecar(sidecar_factory, op)
    keys = await provider_keys(op.issuer, "/jwks")
    client = http()
    assert (await login(client, sidecar.url_for("/api/whoami"), "ignored")).status == 200
    seen_tokens: list[str] = []

    async def renewed() -> bool:
        status, seen = await call(client, sidecar.url_for("/api/whoami"))
        received = time.time()
        assert status == 200
        [access] = headers_named(seen, ACCESS_HEADER)
        claims = jwt.decode(access, keys, algorithms=["RS256"]).claims
        assert claims["iss"] == op.issuer and claims["exp"] > received, "an expired access token reached the console"
        if access not in seen_tokens:
            seen_tokens.append(access)
        return len(seen_tokens) > 1 and received > claims_of(seen_tokens[0])["exp"]

    await eventually(renewed, what="a renewed access token after the first expired", timeout=30, interval=0.2)


async def ended(client: Any, url: str, expiry: float) -> bool:
    """Poll: 200 (with a token still valid) until the session has ended (401); never a sign-in redirect."""
    status, seen = await call(client, url)
    if status == 200:
        [access] = headers_named(seen, ACCESS_HEADER)
        assert claims_of(access)["exp"] > time.time() - 1, "an expired access token reached the console"
        return False
    assert status == 401, status
    assert time.time() >= expiry - 1.5, "ended long before the token was due"
    return True


async def test_a_refresh_the_provider_refuses_ends_the_session(http, sidecar_factory, op):
    await op.control(token_response_override={"expires_in": 2})
    sidecar = badop_sidecar(sidecar_factory, op)
    client = http()
    before = time.time()
    await login(client, sidecar.url_for("/api/whoami"), "ignored")
    await op.control(token_error="invalid_grant")
    url = sidecar.url_for("/api/whoami")
    await eventually(lambda: ended(client, url, before + 2), what="the session to end", interval=0.1)
    assert await op.refreshes() == 1
    await op.control(token_error=None)
    # API calls get 401; a browser is sent to sign in again.
    assert (await call(client, url))[0] == 401
    async with client.get(sidecar.url_for("/reports"), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith(op.issuer + "/authorize")


async def test_without_a_refresh_token_the_session_ends_when_its_passed_token_expires(http, sidecar_factory, op):
    """Unlike a session whose tokens the console does not get (tests/system/ops/test_lifecycle.py), which goes on."""
    await op.control(token_response_override={"expires_in": 2, "refresh_token": None})
    sidecar = badop_sidecar(sidecar_factory, op)
    client = http()
    before = time.time()
    await login(client, sidecar.url_for("/api/whoami"), "ignored")
    await eventually(
        lambda: ended(client, sidecar.url_for("/api/whoami"), before + 2), what="the session to end", interval=0.1
    )
    assert await op.refreshes() == 0


async def test_a_provider_outage_ends_the_session_once_its_passed_token_expired(http, sidecar_factory, op):
    await op.control(token_response_override={"expires_in": 2})
    sidecar = badop_sidecar(sidecar_factory, op)
    client = http()
    before = time.time()
    await login(client, sidecar.url_for("/api/whoami"), "ignored")
    await op.control(token_error="temporarily_unavailable")
    await eventually(
        lambda: ended(client, sidecar.url_for("/api/whoami"), before + 2), what="the session to end", interval=0.1
    )
    assert await op.refreshes() >= 1


async def test_an_id_token_the_provider_does_not_renew_ends_the_session_at_its_expiry(http, sidecar_factory, op):
    await op.control(id_token_exp_in=3, refresh_id_token=False)
    sidecar = badop_sidecar(sidecar_factory, op)
    client = http()
    before = time.time()
    await login(client, sidecar.url_for("/api/whoami"), "ignored")

    async def id_token_ended() -> bool:
        status, seen = await call(client, sidecar.url_for("/api/whoami"))
        if status == 200:
            [id_token] = headers_named(seen, ID_HEADER)
            assert claims_of(id_token)["exp"] > time.time() - 1, "an expired ID token reached the console"
            return False
        assert status == 401 and time.time() >= before + 3 - 1.5
        return True

    await eventually(id_token_ended, what="the session to end with its ID token", interval=0.1)
    assert await op.refreshes() >= 1, "a refresh was tried before the ID token expired"


async def test_bearer_clients_keep_their_own_authorization_header(http, sidecar_factory, op):
    sidecar = badop_sidecar(
        sidecar_factory, op, pass_tokens={"access_token": "Authorization", "id_token": ID_HEADER}, assertion={}
    )
    now = int(time.time())
    token = await _minted(op, {"sub": "svc-ci", "iat": now, "exp": now + 120, "preferred_username": "ci-bot"})
    status, seen = await call(http(cookies=False), sidecar.url_for("/api/whoami"), ("Authorization", f"Bearer {token}"))
    assert status == 200
    assert headers_named(seen, "Authorization") == [f"Bearer {token}"]
    assert headers_named(seen, ID_HEADER) == []  # an API client has no ID token to pass
    claims = verify(headers_named(seen, "X-Sso-Assertion")[0], await jwks(sidecar.url)).claims
    assert claims["sub"] == "svc-ci" and claims["exp"] <= now + 120
    # A browser's own Authorization header is replaced by its session's access token.
    client = http()
    await login(client, sidecar.url_for("/api/whoami"), "ignored")
    status, seen = await call(client, sidecar.url_for("/api/whoami"), ("Authorization", "Basic YWRtaW46YWRtaW4="))
    [authorization] = headers_named(seen, "Authorization")
    assert status == 200 and authorization.startswith("Bearer ") and claims_of(authorization[7:])["sub"] == "user-1"


async def _minted(op: BadOPProcess, claims: dict[str, Any]) -> str:
    """An RFC 9068 access token from badop for its client (``/_control/logout_token`` signs any claims)."""
    body = {
        "iss": op.issuer,
        "aud": "sidecar",
        "client_id": "ci",
        "scope": "api",
        "events": None,
        "sid": None,
        **claims,
    }
    spec = {"claims": body, "typ": "at+jwt"}
    async with aiohttp.ClientSession() as s, s.post(f"{op.issuer}/_control/logout_token", json=spec) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["logout_token"])


async def test_an_access_token_no_header_can_carry_is_a_clean_sign_in_error_and_reaches_no_one(
    http, sidecar_factory, op
):
    """A provider whose access token holds a line break: it could go neither to userinfo nor to the console."""
    await op.control(token_response_override={"access_token": "at-1\r\nX-Injected: yes"}, include_at_hash=False)
    sidecar = badop_sidecar(sidecar_factory, op)
    client = http()
    resp = await login(client, sidecar.url_for("/api/whoami"), "ignored")
    page = await resp.text()
    assert resp.status == 502 and "access_token" in page and "X-Injected" not in page
    status, _ = await call(client, sidecar.url_for("/api/whoami"))
    assert status == 401  # no session
    assert "Traceback" not in sidecar.logs()
