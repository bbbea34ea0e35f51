"""The configs the README points at are valid: config/example.yaml, config/demo.yaml and the one in the
Kubernetes example. Secret files are replaced by temporary ones; nothing else is changed."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
import yaml

from proxy.config.load import parse_settings
from support import REPO


def with_temp_secret_files(text: str, tmp_path: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        secret = tmp_path / Path(match.group(2)).name
        secret.write_text(secrets.token_urlsafe(32) + "\n")
        return f'{match.group(1)}"{secret}"'

    return re.sub(r'(_file:\s*)"(/[^"]+)"', replace, text)


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name, tmp_path):
    text = with_temp_secret_files((REPO / "config" / name).read_text(), tmp_path)
    env = {
        "COOKIE_SECRET": secrets.token_urlsafe(32),
        "OIDC_CLIENT_SECRET": "x",
        "BREAK_GLASS_TOKEN": secrets.token_urlsafe(24),
        "SSO_DEMO_STATE": "/d",
    }
    settings = parse_settings(text, env)
    assert settings.redirect_uri.endswith("/oauth2/callback")


def test_the_kubernetes_example_config_is_valid(tmp_path):
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "sidecar.yaml").read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"]
    settings = parse_settings(with_temp_secret_files(config, tmp_path), {})
    assert settings.workers == 2 and settings.session.store == "redis"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sso-sidecar")
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
