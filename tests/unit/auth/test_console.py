"""What the console is told (``proxy.auth.console``): the headers, and one signature per session and window."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from yarl import URL

from proxy.auth import console as console_module
from proxy.auth.console import ConsoleIdentity, PassedTokens
from proxy.auth.identity import IdentityHeaders
from proxy.config.model import (
    AssertionSettings,
    PassTokensSettings,
    RoleRule,
    RolesSettings,
    Secret,
    SessionSettings,
    Settings,
    SSOSettings,
    UpstreamSettings,
)
from proxy.runtime.state import console_headers

SETTINGS = Settings(
    public_url=URL("https://console.example.com/"),
    upstream=UpstreamSettings(URL("http://127.0.0.1:8888")),
    sso=SSOSettings(),
    session=SessionSettings(cookie_secrets=(Secret("q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"),)),
    assertion=AssertionSettings(audience="http://127.0.0.1:8888", lifetime=300),
    roles=RolesSettings(rules=(RoleRule("admin", groups=("admins",)),), default=("viewer",)),
)
ANN = {"sub": "u-1", "preferred_username": "ann", "email": "ann@example.com", "groups": ["admins"]}
NOW = 1_700_000_000.0


def make(settings: Settings = SETTINGS) -> ConsoleIdentity:
    identity = IdentityHeaders(
        settings.headers, settings.header_list_separator, also_stripped=console_headers(settings)
    )
    return ConsoleIdentity(settings, identity)


def assertion_of(headers: tuple[tuple[str, str], ...], name: str = "X-Sso-Assertion") -> str:
    [value] = [v for k, v in headers if k == name]
    return value


def test_the_headers_are_the_identity_the_roles_and_the_assertion():
    identity = make()
    headers = identity.for_session("s1", 1.0, ANN, not_after=NOW + 3600, tokens=None, now=NOW)
    assert ("X-Forwarded-User", "ann") in headers and ("X-Forwarded-Roles", "admin") in headers
    keys = KeySet.import_key_set(json.loads(identity.keyring.jwks_body))  # type: ignore[union-attr]
    claims = jwt.decode(assertion_of(headers), keys, algorithms=["ES256"]).claims
    assert claims["iss"] == "https://console.example.com" and claims["aud"] == "http://127.0.0.1:8888"
    assert claims["roles"] == ["admin"] and claims["exp"] == int(NOW) + 300


def test_a_session_is_signed_once_per_window_and_again_when_it_nears_its_end():
    identity = make()
    first = identity.for_session("s1", 1.0, ANN, not_after=NOW + 3600, tokens=None, now=NOW)
    assert identity.signatures == 1
    for later in (1.0, 100.0, 239.0):  # 300 s lifetime: renewed in its last minute
        assert identity.cached("s1", 1.0, NOW + later) is first
    assert identity.cached("s1", 1.0, NOW + 240.0) is None
    assert identity.cached("s1", 2.0, NOW + 1.0) is None  # refreshed since: claims and tokens may differ
    assert identity.cached("s2", 1.0, NOW + 1.0) is None  # another session never gets this one's
    second = identity.for_session("s1", 1.0, ANN, not_after=NOW + 3600, tokens=None, now=NOW + 240)
    assert identity.signatures == 2 and assertion_of(second) != assertion_of(first)


def test_an_assertion_capped_at_the_session_end_is_kept_to_that_end():
    identity = make()
    headers = identity.for_session("s1", 1.0, ANN, not_after=NOW + 30, tokens=None, now=NOW)
    assert identity.cached("s1", 1.0, NOW + 29.5) is headers
    assert identity.cached("s1", 1.0, NOW + 30) is None


def test_tokens_are_passed_and_an_entry_never_outlives_them():
    settings = replace(SETTINGS, pass_tokens=PassTokensSettings(access_token="Authorization", id_token="X-Id-Token"))
    identity = make(settings)
    tokens = PassedTokens("access-1", "id-1", expires_at=NOW + 20)
    headers = identity.for_session("s1", 1.0, ANN, not_after=NOW + 3600, tokens=tokens, now=NOW)
    assert ("Authorization", "Bearer access-1") in headers and ("X-Id-Token", "id-1") in headers
    assert identity.cached("s1", 1.0, NOW + 19) is headers and identity.cached("s1", 1.0, NOW + 20) is None


def test_a_bearer_token_is_remembered_by_its_claims_object_and_passes_itself():
    settings = replace(SETTINGS, pass_tokens=PassTokensSettings(access_token="X-Access-Token", id_token="X-Id-Token"))
    identity = make(settings)
    claims = {**ANN, "exp": NOW + 60}
    headers = identity.for_bearer(claims, "the-token", NOW)
    assert ("X-Access-Token", "the-token") in headers and not [h for h, _ in headers if h == "X-Id-Token"]
    assert identity.for_bearer(claims, "the-token", NOW + 10) is headers and identity.signatures == 1
    # Equal claims in another object (another token verified alike) are not taken for these.
    identity.for_bearer(dict(claims), "other-token", NOW + 10)
    assert identity.signatures == 2
    exp = jwt.decode(assertion_of(headers), KeySet.import_key_set(identity.keyring.jwks), algorithms=["ES256"]).claims[
        "exp"
    ]  # type: ignore[union-attr]
    assert exp == int(NOW + 60)  # never past the token's own expiry


def test_the_assertion_in_authorization_is_a_bearer_value():
    identity = make(replace(SETTINGS, assertion=replace(SETTINGS.assertion, header="Authorization")))  # type: ignore[arg-type]
    headers = identity.for_session("s1", 1.0, ANN, not_after=NOW + 3600, tokens=None, now=NOW)
    assert assertion_of(headers, "Authorization").startswith("Bearer ey")


def test_the_memo_is_bounded_and_drops_the_oldest(monkeypatch):
    monkeypatch.setattr(console_module, "REMEMBERED_MAX", 3)
    identity = make(replace(SETTINGS, assertion=None))
    for i in range(5):
        identity.for_session(f"s{i}", 1.0, ANN, not_after=NOW + 3600, tokens=None, now=NOW)
    assert [identity.cached(f"s{i}", 1.0, NOW) is not None for i in range(5)] == [False, False, True, True, True]


@pytest.mark.parametrize("groups", [["admins"], ["others"]])
def test_the_sample_is_what_would_be_signed(groups):
    sample = make().sample({**ANN, "groups": groups}, NOW)
    assert sample is not None and sample["roles"] == (["admin"] if groups == ["admins"] else ["viewer"])
    assert make(replace(SETTINGS, assertion=None)).sample(ANN, NOW) is None


def test_it_cannot_be_built_over_identity_headers_that_do_not_strip_its_headers():
    """A client's X-Console-Identity would reach the console beside the sidecar's (or, set in place, decide
    where it stands) if the gate's strip missed it: a construction error, never a per-request check."""
    settings = replace(SETTINGS, assertion=replace(SETTINGS.assertion, header="X-Console-Identity"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"X-Console-Identity .* not stripped"):
        ConsoleIdentity(settings, IdentityHeaders(settings.headers, settings.header_list_separator))
    make(settings)  # built as the runtime builds it: stripped


def test_it_cannot_be_built_where_one_of_its_headers_is_an_identity_header():
    settings = replace(SETTINGS, headers=(*SETTINGS.headers, ("X-Forwarded-Roles", "groups")))
    with pytest.raises(ValueError, match="twice"):
        make(settings)
