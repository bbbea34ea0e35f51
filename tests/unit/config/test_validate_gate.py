"""The gate's config keys: ``sso.api_audiences``, ``sso.extra_issuers``, ``allowed_redirect_hosts``."""

from __future__ import annotations

import re
import textwrap

import pytest

from proxy.config.load import parse_settings
from proxy.config.model import ExtraIssuer
from proxy.errors import ConfigError
from support import REPO

ENV = {"COOKIE_SECRET": "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT", "OIDC_SECRET": "client-secret-value"}
BASE = """
public_url: "https://console.example.com"
upstream: "http://127.0.0.1:8888"
sso:
  issuer_url: "https://idp.example.com/realms/main"
  client_id: "console"
  client_secret: "${OIDC_SECRET}"
session:
  cookie_secret: "${COOKIE_SECRET}"
"""


def parse(extra: str = "", sso: str = ""):
    text = textwrap.dedent(BASE)
    if sso:
        text = text.replace(
            '  client_id: "console"\n', '  client_id: "console"\n' + textwrap.indent(textwrap.dedent(sso), "  ")
        )
    return parse_settings(text + textwrap.dedent(extra), ENV)


def problems(extra: str = "", sso: str = "") -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(extra, sso)
    return {p.key: p.message for p in info.value.problems}


def test_defaults_accept_tokens_for_the_client_id_from_the_issuer_only():
    s = parse()
    assert s.sso.bearer_audiences == ("console",)
    assert s.sso.extra_issuers == ()
    assert s.allowed_redirect_hosts == ()


def test_bearer_keys_are_read():
    s = parse(
        sso="""
        api_audiences: ["console", "api://console"]
        extra_issuers:
          - issuer_url: "https://token.actions.githubusercontent.com"
            audiences: ["https://console.example.com"]
          - issuer_url: "http://127.0.0.1:9001/realms/ci"
            audiences: ["a", "b"]
        """
    )
    assert s.sso.bearer_audiences == ("console", "api://console")
    assert s.sso.extra_issuers == (
        ExtraIssuer("https://token.actions.githubusercontent.com", ("https://console.example.com",)),
        ExtraIssuer("http://127.0.0.1:9001/realms/ci", ("a", "b")),
    )


def test_an_empty_audience_list_accepts_no_tokens_from_the_issuer():
    assert parse(sso="api_audiences: []\n").sso.bearer_audiences == ()


def test_every_bearer_problem_is_named():
    found = problems(
        sso="""
        api_audiences: "not a list"
        extra_issuers:
          - issuer_url: "http://idp.other.example.com"
            audiences: ["x"]
          - issuer_url: "https://idp.example.com/realms/main"
            audiences: ["x"]
          - issuer_url: "https://ci.example.com"
          - issuer_url: "https://ci2.example.com"
            audiences: ["x"]
            audience: ["typo"]
          - "https://just-a-string.example.com"
        """
    )
    assert "sso.extra_issuers[0].issuer_url" in found and "https://" in found["sso.extra_issuers[0].issuer_url"]
    assert "already configured" in found["sso.extra_issuers[1].issuer_url"]
    assert "required" in found["sso.extra_issuers[2].audiences"]
    assert "unknown key" in found["sso.extra_issuers[3].audience"]
    assert "mapping" in found["sso.extra_issuers[4]"]
    assert problems(sso="extra_issuers: {issuer_url: x}\n")["sso.extra_issuers"].startswith("must be a list")


def test_id_tokens_are_no_bearer_credentials_and_sign_out_picks_its_hint_by_default():
    s = parse()
    assert s.sso.accept_id_tokens is False and s.sso.logout_hint == "auto"
    s = parse(sso="accept_id_tokens: true\nlogout_hint: sid\n")
    assert s.sso.accept_id_tokens is True and s.sso.logout_hint == "sid"
    found = problems(sso='accept_id_tokens: "sometimes"\nlogout_hint: "a claim"\n')
    assert "sso.accept_id_tokens" in found
    assert "auto" in found["sso.logout_hint"] and "id_token_hint" in found["sso.logout_hint"]


def test_pending_logins_per_address_are_bounded_by_default():
    assert parse().session.max_pending_logins_per_address == 1000
    assert parse().session.max_pending_logins == 5
    text = 'session:\n  cookie_secret: "${COOKIE_SECRET}"\n  max_pending_logins_per_address: 0\n'
    with pytest.raises(ConfigError) as info:
        parse_settings(textwrap.dedent(BASE).replace('session:\n  cookie_secret: "${COOKIE_SECRET}"\n', text), ENV)
    assert "session.max_pending_logins_per_address" in {p.key for p in info.value.problems}


def test_allowed_redirect_hosts_are_host_names():
    s = parse('allowed_redirect_hosts: ["App.Example.com", "api.example.com:8443"]\n')
    assert s.allowed_redirect_hosts == ("app.example.com", "api.example.com:8443")
    found = problems('allowed_redirect_hosts: ["https://evil.com", "a b", "*.example.com", "ok.example.com"]\n')
    assert set(found) == {"allowed_redirect_hosts[0]", "allowed_redirect_hosts[1]", "allowed_redirect_hosts[2]"}


def test_the_example_config_with_the_gate_keys_switched_on_is_valid(tmp_path):
    """config/example.yaml documents these keys commented out; uncommented they must load."""
    text = (REPO / "config" / "example.yaml").read_text()
    keys = ("api_audiences", "extra_issuers", "allowed_redirect_hosts", "trusted_proxies", "accept_id_tokens",
            "logout_hint", "max_pending_logins_per_address")  # fmt: skip
    for key in keys:
        text = re.sub(rf"^(\s*)# ({key}:)", r"\1\2", text, flags=re.MULTILINE)
    text = re.sub(r"^  #   (- issuer_url|  audiences)", r"    \1", text, flags=re.MULTILINE)
    secret = tmp_path / "secret"
    secret.write_text("q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT" + "\n")
    text = text.replace("/etc/sso-sidecar/secrets/client-secret", str(secret))
    text = text.replace("/etc/sso-sidecar/secrets/cookie-secret", str(secret))
    s = parse_settings(text, ENV)
    assert s.sso.bearer_audiences == ("console", "api://console")
    assert s.sso.extra_issuers[0].audiences == ("https://console.example.com",)
    assert s.allowed_redirect_hosts == ("app.example.com",)
    assert (s.sso.accept_id_tokens, s.sso.logout_hint) == (True, "sid")
    assert s.session.max_pending_logins_per_address == 1000
