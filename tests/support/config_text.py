"""A minimal valid config as YAML text, and helpers that parse a variant of it or collect its problems."""

from __future__ import annotations

import textwrap

import pytest

from proxy.config.load import parse_settings
from proxy.config.model import Settings
from proxy.errors import ConfigError

SECRET = "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"
ENV = {"COOKIE_SECRET": SECRET, "OIDC_SECRET": "client-secret-value"}

MINIMAL = """
public_url: "https://console.example.com"
upstream: "http://127.0.0.1:8888"
sso:
  issuer_url: "https://idp.example.com/realms/main"
  client_id: "console"
  client_secret: "${OIDC_SECRET}"
session:
  cookie_secret: "${COOKIE_SECRET}"
"""


def parse(text: str, env: dict[str, str] | None = None) -> Settings:
    return parse_settings(textwrap.dedent(text), ENV if env is None else env)


def problems(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Each problem's message by its key; the config must be refused."""
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return {p.key: p.message for p in info.value.problems}
