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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.auth import bearer
from proxy.auth.bearer import BearerVerifier
from proxy.config.model import SSOSettings
from proxy.errors import InvalidToken
from proxy.oidc.client import OIDCClient
from proxy.oidc.jwks import MAX_TOKEN_CHARS, Verified
from proxy.sessions import MemoryStore
from proxy.sessions.revocations import Revocations
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
    """A token-only issuer: its discovery document names no sign-in endpoints, as GitHub Actions' does."""
    async with running_badop("/realms/partner") as op:
        op.set(
            discovery_overrides={
                name: None
                for name in ("authorization_endpoint", "token_endpoint", "end_session_endpoint", "userinfo_endpoint")
            }
        )
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
    metadata = api_sidecar.url_for("/.well-known/oauth-protected-resource")
    assert headers["WWW-Authenticate"] == f'Bearer resource_metadata="{metadata}"'  # RFC 9728 5.1
    assert body["error"] == "unauthenticated" and body["login_url"].startswith("/oauth2/start?rd=")


async def test_the_protected_resource_metadata_names_the_issuer_and_the_extra_issuers(
    http, main_op, partner_op, api_sidecar
):
    """RFC 9728 3.2: where a client learns which authorization servers' tokens this resource accepts."""
    async with http(cookies=False).get(api_sidecar.url_for("/.well-known/oauth-protected-resource")) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        document = await resp.json()
    assert document == {
        "resource": api_sidecar.url_for("/").rstrip("/"),
        "authorization_servers": [main_op.issuer, partner_op.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["openid", "profile", "email"],
    }


async def test_a_cli_follows_the_challenge_to_an_authorization_server_and_back(http, partner_op, api_sidecar):
    """What docs/configuration.md's CLI example does: 401 -> resource_metadata -> an authorization server it
    can get a token from -> the same call with that token passes."""
    client = http(cookies=False)
    async with client.get(api_sidecar.url_for("/api/whoami"), headers={"Accept": "application/json"}) as resp:
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
    scheme, _, params = challenge.partition(" ")
    assert scheme == "Bearer"
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    async with client.get(json.loads(fields["resource_metadata"])) as resp:
        servers = (await resp.json())["authorization_servers"]
    assert partner_op.issuer in servers
    async with client.get(partner_op.issuer + "/.well-known/openid-configuration") as resp:
        assert (await resp.json())["issuer"] == partner_op.issuer  # RFC 8414 / Discovery at the named issuer
    token = mint(partner_op, PARTNER_AUDIENCE)  # the token a CLI would obtain from it
    status, _, seen = await call(http, api_sidecar, token)
    assert status == 200 and seen["headers"]["X-Forwarded-User"] == "ci-bot"


async def test_an_invalid_token_challenge_carries_the_resource_metadata_too(http, api_sidecar):
    status, headers, _ = await call(http, api_sidecar, "junk")
    assert status == 401
    metadata = api_sidecar.url_for("/.well-known/oauth-protected-resource")
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token", error_description="')
    assert headers["WWW-Authenticate"].endswith(f', resource_metadata="{metadata}"')


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


JWT = {"typ": "JWT"}  # a header without RFC 9068's at+jwt


@pytest.mark.parametrize(
    "claims",
    [{"scope": "openid console:read"}, {"scp": ["console.read"]}, {"scp": "console.read"}],
    ids=["scope", "scp list", "scp string"],
)
async def test_a_jwt_access_token_from_before_rfc_9068_passes_by_its_scope(http, main_op, api_sidecar, claims):
    status, _, seen = await call(http, api_sidecar, mint(main_op, sign=JWT, **claims))
    assert status == 200, seen


async def test_an_extra_issuers_tokens_are_not_sorted_into_id_and_access_tokens(http, partner_op, api_sidecar):
    """A workload-identity token (a CI system's, a cloud service account's) is ID-token shaped: no at+jwt, no
    scope, sometimes a nonce. The sidecar never signs anyone in through an extra issuer: it passes."""
    for claims in ({}, {"nonce": "n"}):
        status, _, seen = await call(http, api_sidecar, mint(partner_op, PARTNER_AUDIENCE, sign=JWT, **claims))
        assert status == 200, (claims, seen)


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
    # The provider's ID tokens are not bearer credentials (sso.accept_id_tokens is false by default).
    "ID token": lambda m, p: m.mint_id_token(nonce="n", access_token="at"),
    "ID token refreshed (no nonce, no at_hash)": lambda m, p: m.mint_id_token(nonce=None),
    "ID token for several audiences": lambda m, p: mint(m, [m.client_id, "x"], sign=JWT, azp=m.client_id),
    "at+jwt with a nonce": lambda m, p: mint(m, nonce="n"),
    "at+jwt with an at_hash": lambda m, p: mint(m, at_hash="abc"),
    "scope with a c_hash": lambda m, p: mint(m, sign=JWT, scope="x", c_hash="abc"),
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


Verify = Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture
async def verifier(main_op: BadOP) -> AsyncIterator[tuple[Verify, list[str]]]:
    """``verify(token)`` with a verifier for ``main_op``'s tokens, and the list of tokens whose signature it
    checked."""
    main_op.reset()
    async with aiohttp.ClientSession() as session:
        client = OIDCClient(SSOSettings(issuer_url=main_op.issuer, client_id=main_op.client_id), "", session)
        checked: list[str] = []
        verify = client.jwks.verify

        async def counting(token: str, what: str) -> Verified:
            checked.append(token)
            return await verify(token, what)

        client.jwks.verify = counting  # type: ignore[method-assign]
        v, revocations = BearerVerifier(client, session), Revocations(MemoryStore(), "invalidate")
        yield (lambda token: v.verify(token, revocations)), checked


async def test_a_verified_token_is_not_verified_again_until_it_expires(verifier, main_op, monkeypatch):
    v, checked = verifier
    token = mint(main_op)
    first = await v(token)
    assert await v(token) == first
    assert len(checked) == 1
    monkeypatch.setattr(bearer, "MAX_CACHE_AGE", 0.05)
    other = mint(main_op, jti="2")
    started = time.time()  # the cache's clock
    await v(other)
    assert checked.count(other) == 1

    async def verified_again() -> bool:
        await v(other)
        return checked.count(other) == 2

    await eventually(verified_again, what="the cached verification to expire", timeout=10, interval=0.01)
    assert time.time() - started >= 0.05, "verified again before MAX_CACHE_AGE had passed"


async def test_the_cache_is_bounded_and_keeps_no_failures(verifier, main_op, monkeypatch):
    v, checked = verifier
    monkeypatch.setattr(bearer, "CACHE_SIZE", 2)
    tokens = [mint(main_op, jti=str(i)) for i in range(3)]
    for token in tokens:
        await v(token)
    await v(tokens[0])  # pushed out by the third
    assert checked.count(tokens[0]) == 2
    bad = mint(main_op, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await v(bad)
    assert checked.count(bad) == 2


async def test_a_token_as_long_as_any_other_jwt_the_sidecar_reads_is_accepted(verifier, main_op):
    """One size cap for every JWT: a bearer token up to it is checked, a longer one refused unread."""
    v, checked = verifier
    base = len(mint(main_op, pad=""))
    pad = (MAX_TOKEN_CHARS - base) * 3 // 4
    token = next(t for n in range(pad, pad - 8, -1) if len(t := mint(main_op, pad="x" * n)) <= MAX_TOKEN_CHARS)
    assert len(token) > MAX_TOKEN_CHARS - 8
    assert (await v(token))["pad"]
    too_long = mint(main_op, pad="x" * (pad + 8))
    assert len(too_long) > MAX_TOKEN_CHARS
    with pytest.raises(InvalidToken, match="missing or too long"):
        await v(too_long)
    assert checked == [token]


async def test_an_id_token_is_refused_before_its_signature_is_checked(verifier, main_op):
    """Refusing costs no signature check: the token says itself what it is."""
    v, checked = verifier
    with pytest.raises(InvalidToken, match="ID token"):
        await v(main_op.mint_id_token(nonce="n"))
    assert checked == []


@pytest.fixture
async def accepting(main_op: BadOP) -> AsyncIterator[tuple[Verify, Revocations]]:
    """``verify(token)`` with ``sso.accept_id_tokens: true``, and its revocations (memory store)."""
    main_op.reset()
    async with aiohttp.ClientSession() as session:
        sso = SSOSettings(issuer_url=main_op.issuer, client_id=main_op.client_id, accept_id_tokens=True)
        v = BearerVerifier(OIDCClient(sso, "", session), session)
        revocations = Revocations(MemoryStore(), "invalidate")
        yield (lambda token: v.verify(token, revocations)), revocations


async def test_an_accepted_id_token_that_lives_longer_than_a_day_is_refused(accepting, main_op):
    verify, _ = accepting
    assert (await verify(main_op.mint_id_token(nonce="n")))["sub"] == main_op.behaviour.sub
    main_op.set(id_token_exp_in=24 * 3600 + 60)
    with pytest.raises(InvalidToken, match="longer than a day"):
        await verify(main_op.mint_id_token(nonce="n"))


class Unreachable(MemoryStore):
    """A store that must not be asked: every read fails the test."""

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None:
        raise AssertionError(f"the store was asked for {key}")

    async def index_members(self, key: str) -> set[str]:
        raise AssertionError(f"the store was asked for {key}")


async def test_a_cached_access_token_costs_no_revocation_check(main_op):
    """The hot path: an access token served from the cache never asks about sign-outs, not even in memory."""
    async with aiohttp.ClientSession() as session:
        sso = SSOSettings(issuer_url=main_op.issuer, client_id=main_op.client_id, accept_id_tokens=True)
        v = BearerVerifier(OIDCClient(sso, "", session), session)
        revocations = Revocations(Unreachable(), "invalidate")
        token = mint(main_op)
        for _ in range(3):
            assert (await v.verify(token, revocations))["sub"] == "svc-ci"
