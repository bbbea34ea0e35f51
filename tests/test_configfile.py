"""The config file: reading it, its YAML, its digest, and the public_url-only read behind ``redirect-uri``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.configfile import load_settings, parse_settings
from proxy.errors import ConfigError
from support.config_text import ENV, MINIMAL, parse


def file_problems(load: Callable[..., Any], path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(path, ENV)
    return {p.key: p.message for p in info.value.problems}


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ConfigError) as info:
        parse_settings("public_url: [unclosed\n", ENV)
    assert "line" in str(info.value)


def test_digest_changes_with_the_secret_file_content(tmp_path: Path):
    secret = tmp_path / "client"
    secret.write_text("one")
    text = MINIMAL.replace('client_secret: "${OIDC_SECRET}"', f'client_secret_file: "{secret}"')
    first = parse(text).digest
    secret.write_text("two")
    assert parse(text).digest != first


def test_load_settings_records_where_the_config_came_from(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL)
    s = load_settings(path, ENV)
    assert s.source == str(path) and s.digest == parse(MINIMAL).digest
