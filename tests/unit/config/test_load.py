"""The config file: reading it, its YAML, its digest, and the public_url-only read behind ``redirect-uri``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.config.load import load_public_url, load_settings, parse_settings
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


@pytest.mark.parametrize("load", [load_settings, load_public_url])
def test_a_file_that_cannot_be_read_or_is_not_utf8_is_one_problem(tmp_path: Path, load):
    assert "cannot read" in file_problems(load, tmp_path / "missing.yaml")["(file)"]
    (tmp_path / "latin1.yaml").write_bytes(b'public_url: "https://caf\xe9.example.com"\n')
    assert "not UTF-8" in file_problems(load, tmp_path / "latin1.yaml")["(file)"]
    (tmp_path / "list.yaml").write_text("- public_url\n")
    assert "mapping" in file_problems(load, tmp_path / "list.yaml")["(file)"]
    (tmp_path / "empty.yaml").write_text("")
    assert file_problems(load, tmp_path / "empty.yaml")["public_url"] == "is required"


def test_load_settings_records_where_the_config_came_from(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL)
    s = load_settings(path, ENV)
    assert s.source == str(path) and s.digest == parse(MINIMAL).digest


def test_redirect_uri_reads_only_public_url_and_checks_it_as_run_does(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text('public_url: "https://console.example.com"\nsso: {client_secret: "${NOT_SET}"}\n')
    assert str(load_public_url(path, {})) == "https://console.example.com/"
    path.write_text(MINIMAL.replace("https://console.example.com", "https://console.example.com/app"))
    assert "must not have a path" in file_problems(load_public_url, path)["public_url"]
    assert "must not have a path" in file_problems(load_settings, path)["public_url"]
