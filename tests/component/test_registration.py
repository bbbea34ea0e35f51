"""``proxy.oidc.registration`` (RFC 7591, 7592) against a registration endpoint served in the test: what a
provider's answer may and may not make the sidecar do. The real provider's side is
``tests/system/admin/test_registration.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import ProviderError
from proxy.oidc.discovery import ProviderMetadata
from proxy.oidc.http import ProviderHTTP
from proxy.oidc.registration import RegistrationRefused, delete, register, usable_token


class Endpoint:
    """A registration endpoint whose next answer the test sets; it records what it was sent."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (201, {})
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, dict(request.headers)))
        status, body = self.answer
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str, ProviderHTTP]]:
    served = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", served.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield served, f"http://127.0.0.1:{port}", ProviderHTTP(session, 5.0)
    await runner.cleanup()


OK = {"client_id": "c-1", "client_secret": "s-1", "client_secret_expires_at": 0}


async def test_the_initial_access_token_is_sent_as_a_bearer_token(endpoint):
    served, base, http = endpoint
    served.answer = (201, {**OK, "registration_access_token": "rat", "registration_client_uri": base + "/reg/c-1"})
    made = await register(http, base + "/reg", "iat-1", {"redirect_uris": ["https://x/cb"]})
    assert (made.client_id, made.client_secret) == ("c-1", "s-1")
    assert (made.registration_access_token, made.registration_client_uri) == ("rat", base + "/reg/c-1")
    assert served.seen[0][2]["Authorization"] == "Bearer iat-1"
    assert "s-1" not in repr(made) and "rat" not in repr(made)
    served.answer = (204, "")
    assert await delete(http, made) is True
    assert served.seen[-1][:2] == ("DELETE", "/reg/c-1") and served.seen[-1][2]["Authorization"] == "Bearer rat"


async def test_a_client_uri_on_another_origin_never_gets_the_registration_access_token(endpoint):
    served, base, http = endpoint
    served.answer = (201, {**OK, "registration_access_token": "rat", "registration_client_uri": "http://10.0.0.9/x"})
    made = await register(http, base + "/reg", "iat", {})
    assert (made.registration_access_token, made.registration_client_uri) == ("", "")
    assert await delete(http, made) is False and len(served.seen) == 1


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ((401, {"error": "invalid_token", "error_description": "invalid token provided"}),
         "invalid_token: invalid token provided"),
        ((400, {"error": "invalid_redirect_uri", "error_description": "bad\x1b[31m uri"}),
         "invalid_redirect_uri: bad?[31m uri"),
        ((403, "go away"), "HTTP 403: the initial access token was not accepted"),
    ],
)  # fmt: skip
async def test_a_refusal_carries_the_providers_words_made_printable(endpoint, answer, words):
    served, base, http = endpoint
    served.answer = answer
    with pytest.raises(RegistrationRefused) as refused:
        await register(http, base + "/reg", "iat", {})
    assert refused.value.message == words


@pytest.mark.parametrize(
    "answer",
    [(201, {"client_id": "c-1"}), (201, {"client_secret": "s"}), (500, "oops"), (200, "not json")],
    ids=["no secret (a public client)", "no client id", "a server error", "not JSON"],
)
async def test_an_answer_that_is_no_confidential_registration_is_an_error(endpoint, answer):
    served, base, http = endpoint
    served.answer = answer
    with pytest.raises(ProviderError) as failed:
        await register(http, base + "/reg", "", {})
    assert not isinstance(failed.value, RegistrationRefused)
    assert "Authorization" not in served.seen[0][2]  # no token given: none sent (open registration)


def test_a_token_with_spaces_or_control_characters_is_not_sent():
    assert usable_token("abc.DEF-123_~+/=") and not usable_token("a b") and not usable_token("a\nb")


def test_discovery_reads_the_registration_endpoint():
    doc = {"issuer": "https://idp.example.com", "authorization_endpoint": "https://idp.example.com/a",
           "token_endpoint": "https://idp.example.com/t", "jwks_uri": "https://idp.example.com/j"}  # fmt: skip
    assert ProviderMetadata.from_document(doc, expected_issuer=doc["issuer"]).registration_endpoint is None
    doc["registration_endpoint"] = "https://idp.example.com/reg"
    md = ProviderMetadata.from_document(doc, expected_issuer=doc["issuer"])
    assert md.registration_endpoint == "https://idp.example.com/reg"
    with pytest.raises(ProviderError, match="registration_endpoint"):
        ProviderMetadata.from_document({**doc, "registration_endpoint": "http://idp.example.com/reg"},
                                       expected_issuer=doc["issuer"])  # fmt: skip
