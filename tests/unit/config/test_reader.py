"""Reading values: ${VAR} expansion, *_file secrets, durations, and unknown keys with a did-you-mean."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from proxy.config.reader import ConfigReader, parse_duration
from support.config_text import MINIMAL, parse, problems


def test_unknown_key_suggests_the_close_one():
    found = problems(MINIMAL + "upstreem: x\n")
    assert "did you mean 'upstream'" in found["upstreem"]


def test_dollar_escapes_and_literal_dollars():
    s = parse(MINIMAL.replace('client_id: "console"', 'client_id: "a$b$${NOT_A_VAR}"'))
    assert s.sso.client_id == "a$b${NOT_A_VAR}"


def test_secret_files_strip_one_trailing_newline_and_cookie_secrets_are_newest_first(tmp_path: Path):
    client = tmp_path / "client"
    client.write_text("from-file\n")
    cookies = tmp_path / "cookies"
    newest, oldest = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    cookies.write_text(f"{newest}\n{oldest}\n")
    text = MINIMAL.replace('client_secret: "${OIDC_SECRET}"', f'client_secret_file: "{client}"').replace(
        'cookie_secret: "${COOKIE_SECRET}"', f'cookie_secret_file: "{cookies}"'
    )
    s = parse(text)
    assert s.sso.client_secret is not None and s.sso.client_secret.reveal() == "from-file"
    assert [x.reveal() for x in s.session.cookie_secrets] == [newest, oldest]
    assert set(s.secret_files) == {str(client), str(cookies)}


def test_unreadable_secret_file_is_named(tmp_path: Path):
    text = MINIMAL.replace('client_secret: "${OIDC_SECRET}"', f'client_secret_file: "{tmp_path}/nope"')
    assert "cannot read" in problems(text)["sso.client_secret_file"]


def test_secret_and_secret_file_together_is_an_error(tmp_path: Path):
    (tmp_path / "s").write_text("x")
    text = MINIMAL.replace(
        'client_secret: "${OIDC_SECRET}"', f'client_secret: "a"\n  client_secret_file: "{tmp_path}/s"'
    )
    assert "not both" in problems(text)["sso.client_secret"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("8h", 28800), ("7d", 604800), ("250ms", 0.25), (30, 30)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5s", "5 weeks", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_missing_variable_is_the_only_problem_reported_for_its_key():
    r = ConfigReader({})
    secret, _ = r.one_secret({"client_secret": "${NOPE}"}, "client_secret", "sso", required=True)
    assert secret is None
    assert [str(p) for p in r.problems] == ["sso.client_secret: environment variable NOPE is not set"]
