"""The relying party against badop, in process: a scripted browser and helpers for the tests of
``proxy.oidc.discovery``, ``proxy.oidc.jwks``, ``proxy.oidc.tokens`` and ``proxy.oidc.client``; their fixtures are in
``support.rp_fixtures``.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
from yarl import URL

from proxy.errors import TokenValidationError
from proxy.oidc.client import LoginResult, OIDCClient, new_pkce, random_token
from support.badop import DEFAULT_CLIENT_SECRET

REDIRECT_URI = "https://console.example.com/oauth2/callback"
MakeRP = Callable[..., OIDCClient]


class FakeClock:
    """A monotonic clock a test moves by hand: expiry and backoff without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Flow:
    """What the browser and the callback handler would do, step by step."""

    def __init__(self, client: OIDCClient, http: aiohttp.ClientSession) -> None:
        self.client = client
        self.http = http

    async def authorize(self) -> tuple[str, str, str, dict[str, str]]:
        """Returns ``(code, code_verifier, nonce, callback query)``; checks state and RFC 9207 iss."""
        state, nonce = random_token(), random_token()
        verifier, challenge = new_pkce()
        url = await self.client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
        async with self.http.get(url, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            query = dict(URL(resp.headers["Location"]).query)
        assert query["state"] == state
        self.client.check_authorization_response_iss(query.get("iss"), await self.client.metadata())
        return query["code"], verifier, nonce, query

    async def login(self) -> LoginResult:
        code, verifier, nonce, _ = await self.authorize()
        return await self.client.login(code=code, code_verifier=verifier, nonce=nonce)


async def rejected(flow: Flow, match: str, exc: type[Exception] = TokenValidationError) -> Exception:
    """Run a login that must fail with ``exc`` matching ``match``; the message must not leak anything."""
    code, verifier, nonce, _ = await flow.authorize()
    with pytest.raises(exc, match=match) as info:
        await flow.client.login(code=code, code_verifier=verifier, nonce=nonce)
    assert_user_safe(str(info.value), code, verifier, nonce)
    return info.value


def assert_user_safe(message: str, *secrets: str) -> None:
    for value in (*secrets, DEFAULT_CLIENT_SECRET):
        assert value not in message
    assert "eyJ" not in message  # no JWT fragment
