"""API clients with ``Authorization: Bearer <JWT>`` (RFC 6750), through a real sidecar.

Two badop providers sign real tokens: ``main`` is the sidecar's issuer (tokens for the client id), and
``partner`` is an ``sso.extra_issuers`` entry whose tokens must carry ``api://console``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy import bearer
from proxy.bearer import BearerVerifier
from proxy.errors import InvalidToken
from proxy.jwks import MAX_TOKEN_CHARS, Verified
from proxy.oidc import OIDCClient
from proxy.settings import SSOSettings
from support.badop import BadOP, running_badop
from support.procs import LOOPBACK, free_port
from support.sidecar import Sidecar
from support.waiting import eventually

PARTNER_AUDIENCE = "api://console"


@pytest.fixture(scope="module")
async def main_op() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/main") as op:
        yield op


@pytest.fixture(scope="module")
async def partner_op() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/partner") as op:
        yield op


@pytest.fixture(scope="module")
async def api_sidecar(
    main_op: BadOP, partner_op: BadOP, console: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sidecar]:
    port = free_port()
    config = {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": f"http://{LOOPBACK}:{port}",
        "upstream": console.url,
        "sso": {
            "issuer_url": main_op.issuer,
            "client_id": main_op.client_id,
            "client_secret": main_op.client_secret,
            "extra_issuers": [{"issuer_url": partner_op.issuer, "audiences": [PARTNER_AUDIENCE]}],
        },
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
        "access": {"allowed_email_domains": ["example.com"]},
    }
    sidecar = Sidecar(config, tmp_path_factory.mktemp("bearer") / "bearer", name="bearer")
    await asyncio.to_thread(sidecar.start)  # badop answers on this loop: do not block it
    yield sidecar
    await sidecar.astop()


def mint(op: BadOP, audience: str | list[str] | None = None, sign: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token from ``op`` (RFC 9068 shaped); a ``None`` claim is left out."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": op.issuer,
        "sub": "svc-ci",
        "aud": audience if audience is not None else op.client_id,
        "iat": now,
        "exp": now + 300,
        "client_id": "ci",
        "preferred_username": "ci-bot",
        "email": "ci-bot@example.com",
        "groups": ["deployers", "readers"],
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return op.sign(body, **{"typ": "at+jwt", **(sign or {})})


async def call(http: Any, sidecar: Sidecar, token: str | None, **headers: str) -> tuple[int, Any, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http(cookies=False).get(sidecar.url_for("/api/whoami"), headers=headers) as resp:
        body = await resp.json(content_type=None)
        return resp.status, resp.headers, body


async def test_an_api_request_without_credentials_gets_401_with_a_bearer_challenge(http, api_sidecar):
    status, headers, body = await call(http, api_sidecar, None, Accept="application/json")
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert body["error"] == "unauthenticated" and body["login_url"].startswith("/oauth2/start?rd=")


async def test_a_token_from_the_provider_passes_with_identity_headers_from_its_claims(http, main_op, api_sidecar):
    status, _, seen = await call(http, api_sidecar, mint(main_op))
    assert status == 200, seen
    assert seen["headers"]["X-Forwarded-User"] == "ci-bot"
    assert seen["headers"]["X-Forwarded-Email"] == "ci-bot@example.com"
    assert seen["headers"]["X-Forwarded-Groups"] == "deployers,readers"
    assert seen["headers"]["Authorization"].startswith("Bearer ")  # the console may use it too


async def test_a_token_from_an_extra_issuer_with_its_audience_passes(http, partner_op, api_sidecar):
    for audience in (PARTNER_AUDIENCE, ["https://other.api", PARTNER_AUDIENCE]):
        status, _, seen = await call(http, api_sidecar, mint(partner_op, audience))
        assert status == 200, seen
        assert seen["headers"]["X-Forwarded-User"] == "ci-bot"


async def test_a_bearer_token_needs_no_browser_headers(http, main_op, api_sidecar):
    """A token on a request that looks like a browser navigation is still an API call, never a redirect."""
    status, _, _ = await call(http, api_sidecar, mint(main_op), Accept="text/html")
    assert status == 200
    status, _, body = await call(http, api_sidecar, "junk", Accept="text/html")
    assert status == 401 and body["error"] == "invalid_token"


INVALID: dict[str, Any] = {
    "expired": lambda m, p: mint(m, exp=int(time.time()) - 600, iat=int(time.time()) - 900),
    "no expiry": lambda m, p: mint(m, exp=None),
    "not yet valid": lambda m, p: mint(m, nbf=int(time.time()) + 600),
    "issued in the future": lambda m, p: mint(m, iat=int(time.time()) + 600),
    "another audience": lambda m, p: mint(m, "api://something-else"),
    "no audience": lambda m, p: mint(m, aud=None),
    "extra issuer with the main client id": lambda m, p: mint(p, m.client_id),
    "main issuer with the extra audience": lambda m, p: mint(m, PARTNER_AUDIENCE),
    "unknown issuer": lambda m, p: mint(m, iss="https://evil.example/realms/main"),
    "main iss signed by the partner's key": lambda m, p: p.sign(json.loads(bearer_payload(mint(m))), typ="at+jwt"),
    "rogue key with a published kid": lambda m, p: mint(m, sign={"sign_with": "rogue"}),
    "alg none": lambda m, p: mint(m, sign={"alg": "none"}),
    "HS256 with the client secret": lambda m, p: mint(m, sign={"alg": "HS256"}),
    "HS256 keyed with the public key": lambda m, p: mint(m, sign={"alg": "HS256-public-key"}),
    "tampered payload": lambda m, p: tamper(mint(m)),
    "logout token": lambda m, p: mint(m, events={"http://schemas.openid.net/event/backchannel-logout": {}}),
    "no subject": lambda m, p: mint(m, sub=None),
    "opaque": lambda m, p: "opaque-" + secrets.token_urlsafe(24),
    "three junk parts": lambda m, p: "a.b.c",
    "empty": lambda m, p: "",
}


def bearer_payload(token: str) -> str:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def tamper(token: str) -> str:
    header, _, signature = token.split(".")
    claims = json.loads(bearer_payload(token))
    claims["preferred_username"] = "admin"
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_an_invalid_token_gets_401_invalid_token(http, main_op, partner_op, api_sidecar, case):
    token = INVALID[case](main_op, partner_op)
    status, headers, body = await call(http, api_sidecar, token)
    assert status == 401, (case, body)
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"'), headers["WWW-Authenticate"]
    assert body["error"] in ("invalid_token", "unauthenticated"), body
    if token:
        assert body["error"] == "invalid_token"
        assert token not in json.dumps(body) and token not in headers["WWW-Authenticate"]


async def test_the_access_policy_applies_to_bearer_tokens(http, main_op, api_sidecar):
    status, _, body = await call(http, api_sidecar, mint(main_op, email="ci-bot@evil.com"))
    assert status == 403
    assert body["error"] == "access_denied" and "ci-bot@evil.com" in body["message"]
    status, _, _ = await call(http, api_sidecar, mint(main_op, email="ci-bot@example.com", email_verified=False))
    assert status == 403


async def test_spoofed_identity_headers_next_to_a_token_are_replaced(http, main_op, api_sidecar):
    spoof = {"X-Forwarded-User": "root", "X_Forwarded_Groups": "admins"}
    status, _, seen = await call(http, api_sidecar, mint(main_op), **spoof)
    assert status == 200
    assert seen["headers"]["X-Forwarded-User"] == "ci-bot"
    assert "root" not in json.dumps(seen["header_list"]) and "admins" not in json.dumps(seen["header_list"])


# --------------------------------------------------------------------------------------------------
# The verified-token cache (in process: what it saves is not visible over HTTP)


@pytest.fixture
async def verifier(main_op: BadOP) -> AsyncIterator[tuple[BearerVerifier, list[str]]]:
    """A verifier for ``main_op``'s tokens, and the list of tokens whose signature it checked."""
    main_op.reset()
    async with aiohttp.ClientSession() as session:
        client = OIDCClient(SSOSettings(issuer_url=main_op.issuer, client_id=main_op.client_id), "", session)
        checked: list[str] = []
        verify = client.jwks.verify

        async def counting(token: str, what: str) -> Verified:
            checked.append(token)
            return await verify(token, what)

        client.jwks.verify = counting  # type: ignore[method-assign]
        yield BearerVerifier(client, session), checked


async def test_a_verified_token_is_not_verified_again_until_it_expires(verifier, main_op, monkeypatch):
    v, checked = verifier
    token = mint(main_op)
    first = await v.verify(token)
    assert await v.verify(token) == first
    assert len(checked) == 1
    monkeypatch.setattr(bearer, "MAX_CACHE_AGE", 0.05)
    other = mint(main_op, jti="2")
    started = time.time()  # the cache's clock
    await v.verify(other)
    assert checked.count(other) == 1

    async def verified_again() -> bool:
        await v.verify(other)
        return checked.count(other) == 2

    await eventually(verified_again, what="the cached verification to expire", timeout=10, interval=0.01)
    assert time.time() - started >= 0.05, "verified again before MAX_CACHE_AGE had passed"


async def test_the_cache_is_bounded_and_keeps_no_failures(verifier, main_op, monkeypatch):
    v, checked = verifier
    monkeypatch.setattr(bearer, "CACHE_SIZE", 2)
    tokens = [mint(main_op, jti=str(i)) for i in range(3)]
    for token in tokens:
        await v.verify(token)
    await v.verify(tokens[0])  # pushed out by the third
    assert checked.count(tokens[0]) == 2
    bad = mint(main_op, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await v.verify(bad)
    assert checked.count(bad) == 2


async def test_a_token_as_long_as_any_other_jwt_the_sidecar_reads_is_accepted(verifier, main_op):
    """One size cap for every JWT: a bearer token up to it is checked, a longer one refused unread."""
    v, checked = verifier
    base = len(mint(main_op, pad=""))
    pad = (MAX_TOKEN_CHARS - base) * 3 // 4
    token = next(t for n in range(pad, pad - 8, -1) if len(t := mint(main_op, pad="x" * n)) <= MAX_TOKEN_CHARS)
    assert len(token) > MAX_TOKEN_CHARS - 8
    assert (await v.verify(token))["pad"]
    too_long = mint(main_op, pad="x" * (pad + 8))
    assert len(too_long) > MAX_TOKEN_CHARS
    with pytest.raises(InvalidToken, match="missing or too long"):
        await v.verify(too_long)
    assert checked == [token]
