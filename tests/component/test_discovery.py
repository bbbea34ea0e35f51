"""proxy.oidc.discovery: the discovery document's validation, and its cache against badop over HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.errors import ProviderError
from proxy.oidc.client import OIDCClient
from proxy.oidc.discovery import Discovery, ProviderMetadata
from proxy.oidc.http import ProviderHTTP
from support.badop import BadOP
from support.rp import FakeClock, MakeRP

pytest_plugins = ["support.rp_fixtures"]

DOC = {
    "issuer": "https://idp.example.com/realms/main",
    "authorization_endpoint": "https://idp.example.com/auth",
    "token_endpoint": "https://idp.example.com/token",
    "jwks_uri": "https://idp.example.com/jwks",
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def discovery(op: BadOP, http_session: aiohttp.ClientSession, clock: FakeClock) -> Discovery:
    return Discovery(op.issuer, ProviderHTTP(http_session, 5.0), clock=clock)


# --------------------------------------------------------------------------------------------------
# ProviderMetadata.from_document


def test_metadata_missing_a_required_field_names_that_field() -> None:
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "issuer"):
        doc = {k: v for k, v in DOC.items() if k != name}
        with pytest.raises(ProviderError, match=f"'{name}'"):
            ProviderMetadata.from_document(doc, expected_issuer=DOC["issuer"])


def test_a_token_only_issuer_needs_just_issuer_and_jwks_uri() -> None:
    """sso.extra_issuers are only verified against: GitHub Actions' document has no authorization or token
    endpoint, and must not be refused for it. A sign-in issuer still needs both."""
    token_only = {"issuer": DOC["issuer"], "jwks_uri": DOC["jwks_uri"]}
    md = ProviderMetadata.from_document(token_only, expected_issuer=DOC["issuer"], sign_in=False)
    assert (md.jwks_uri, md.authorization_endpoint, md.token_endpoint) == (DOC["jwks_uri"], "", "")
    with pytest.raises(ProviderError, match="'authorization_endpoint'"):
        ProviderMetadata.from_document(token_only, expected_issuer=DOC["issuer"])
    with pytest.raises(ProviderError, match="'jwks_uri'"):
        ProviderMetadata.from_document({"issuer": DOC["issuer"]}, expected_issuer=DOC["issuer"], sign_in=False)


def test_metadata_refuses_plain_http_endpoints_for_an_https_issuer() -> None:
    doc = {**DOC, "token_endpoint": "http://idp.example.com/token"}
    with pytest.raises(ProviderError, match="'token_endpoint' must be an https:// URL"):
        ProviderMetadata.from_document(doc, expected_issuer=DOC["issuer"])


def test_metadata_allows_http_endpoints_only_on_loopback_for_a_loopback_issuer() -> None:
    local = {k: v.replace("https://idp.example.com", "http://127.0.0.1:9000") for k, v in DOC.items()}
    assert ProviderMetadata.from_document(local, expected_issuer=local["issuer"]).jwks_uri.startswith("http://")
    with pytest.raises(ProviderError, match="'jwks_uri' must be an https:// URL"):
        ProviderMetadata.from_document(
            {**local, "jwks_uri": "http://evil.example/jwks"}, expected_issuer=local["issuer"]
        )


def test_metadata_issuer_must_match_exactly_even_the_trailing_slash() -> None:
    with pytest.raises(ProviderError, match="does not match the configured issuer_url"):
        ProviderMetadata.from_document(DOC, expected_issuer=DOC["issuer"] + "/")


# --------------------------------------------------------------------------------------------------
# Fetching and caching


async def test_discovery_issuer_mismatch_is_refused_before_anyone_is_sent_to_the_provider(
    rp: OIDCClient, op: BadOP
) -> None:
    op.set(issuer_in_discovery="https://evil.example.com")
    with pytest.raises(ProviderError, match="does not match the configured issuer_url"):
        await rp.authorization_url(state="s", nonce="n", code_challenge="c")


async def test_discovery_without_jwks_uri_names_the_field(discovery: Discovery, op: BadOP) -> None:
    op.set(discovery_overrides={"jwks_uri": None})
    with pytest.raises(ProviderError, match="'jwks_uri'"):
        await discovery.metadata()


async def test_discovery_is_fetched_from_the_well_known_path_under_the_issuer(discovery: Discovery, op: BadOP) -> None:
    assert discovery.url == op.issuer + "/.well-known/openid-configuration"
    assert (await discovery.metadata()).token_endpoint == op.url("/token")


async def test_discovery_is_cached_and_concurrent_first_calls_share_one_fetch(discovery: Discovery, op: BadOP) -> None:
    results = await asyncio.gather(*(discovery.metadata() for _ in range(10)))
    assert all(md is results[0] for md in results)
    await discovery.metadata()
    assert op.requests["discovery"] == 1


async def test_discovery_is_fetched_again_once_it_is_older_than_max_age(
    discovery: Discovery, op: BadOP, clock: FakeClock
) -> None:
    await discovery.metadata()
    clock.advance(discovery.max_age - 1)
    await discovery.metadata()
    assert op.requests["discovery"] == 1
    clock.advance(1)
    await discovery.metadata()
    assert op.requests["discovery"] == 2


async def test_discovery_keeps_the_last_good_document_while_the_provider_fails(
    discovery: Discovery, op: BadOP, clock: FakeClock
) -> None:
    first = await discovery.metadata()
    clock.advance(discovery.max_age)
    op.set(discovery_status=503)
    assert await discovery.metadata() is first
    assert op.requests["discovery"] == 2


async def test_discovery_failure_backs_off_exponentially_instead_of_refetching_on_every_call(
    discovery: Discovery, op: BadOP, clock: FakeClock
) -> None:
    op.set(discovery_status=503)
    for _ in range(3):
        with pytest.raises(ProviderError, match="HTTP 503"):
            await discovery.metadata()
    assert op.requests["discovery"] == 1
    clock.advance(discovery.retry_min - 0.01)
    with pytest.raises(ProviderError, match="HTTP 503"):
        await discovery.metadata()  # from memory: still inside the first backoff step
    assert op.requests["discovery"] == 1
    clock.advance(0.01)
    with pytest.raises(ProviderError, match="HTTP 503"):
        await discovery.metadata()
    assert op.requests["discovery"] == 2  # the second failure doubles the wait
    op.set(discovery_status=200)
    clock.advance(2 * discovery.retry_min - 0.01)
    with pytest.raises(ProviderError, match="HTTP 503"):
        await discovery.metadata()
    clock.advance(0.01)
    assert (await discovery.metadata()).issuer == op.issuer
    assert op.requests["discovery"] == 3


async def test_unreachable_provider_is_a_provider_error(make_rp: MakeRP) -> None:
    rp = make_rp(issuer_url="http://127.0.0.1:9", http_timeout=2.0)
    with pytest.raises(ProviderError, match="Could not reach the identity provider"):
        await rp.metadata()
