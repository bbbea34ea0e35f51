"""Protected-resource metadata (RFC 9728, ``proxy.ops.resource``): the document a config publishes, and the
``resource_metadata`` parameter of its 401 challenges."""

from __future__ import annotations

from proxy.config.model import Settings
from proxy.ops.resource import metadata, with_metadata
from support.config_text import MINIMAL, parse

URL = "https://console.example.com/.well-known/oauth-protected-resource"
EXTRA = """
  extra_issuers:
    - {issuer_url: "https://token.actions.githubusercontent.com", audiences: ["api://console"]}"""


def with_sso(lines: str = "", text: str = MINIMAL) -> Settings:
    """The minimal config with ``lines`` added to its ``sso:`` section."""
    return parse(text.replace('client_secret: "${OIDC_SECRET}"', 'client_secret: "${OIDC_SECRET}"' + lines))


def test_the_document_names_the_resource_the_issuer_the_header_method_and_the_scopes():
    assert metadata(parse(MINIMAL)) == {
        "resource": "https://console.example.com",
        "authorization_servers": ["https://idp.example.com/realms/main"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["openid", "profile", "email"],
    }


def test_extra_issuers_are_authorization_servers_too():
    document = metadata(with_sso("\n  scopes: [openid, email]" + EXTRA))
    assert document is not None
    assert document["authorization_servers"] == [
        "https://idp.example.com/realms/main",
        "https://token.actions.githubusercontent.com",
    ]
    assert document["scopes_supported"] == ["openid", "email"]


def test_an_issuer_whose_tokens_are_not_accepted_is_not_named():
    document = metadata(with_sso("\n  api_audiences: []" + EXTRA))
    assert document is not None and document["authorization_servers"] == ["https://token.actions.githubusercontent.com"]


def test_nothing_is_published_without_bearer_tokens_or_with_sso_off():
    assert metadata(with_sso("\n  api_audiences: []")) is None
    assert metadata(with_sso("\n  enabled: false")) is None


def test_every_bearer_challenge_gets_the_parameter_where_the_document_is_published():
    settings = parse(MINIMAL)
    assert with_metadata("Bearer", settings) == f'Bearer resource_metadata="{URL}"'
    invalid = 'Bearer error="invalid_token", error_description="expired"'
    assert with_metadata(invalid, settings) == f'{invalid}, resource_metadata="{URL}"'
    assert with_metadata('Basic realm="x"', settings) == 'Basic realm="x"'


def test_the_parameter_follows_a_reload():
    assert with_metadata("Bearer", parse(MINIMAL)).endswith(f'"{URL}"')
    assert with_metadata("Bearer", with_sso("\n  api_audiences: []")) == "Bearer"
    other = with_sso(text=MINIMAL.replace("console.example.com", "ops.example.com"))
    assert (
        with_metadata("Bearer", other)
        == 'Bearer resource_metadata="https://ops.example.com/.well-known/oauth-protected-resource"'
    )
