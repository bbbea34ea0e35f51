"""Config loading: defaults, ${VAR} expansion, *_file secrets, and every problem named with its key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.configfile import parse_settings
from proxy.configreader import parse_duration
from proxy.errors import ConfigError
from proxy.gate import skips_auth
from proxy.paths import normalise
from proxy.settings import DEFAULT_HEADERS, DEFAULT_SCOPES, SkipRule

SECRET = "s" * 40
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


def parse(text: str, env: dict[str, str] | None = None):
    return parse_settings(textwrap.dedent(text), ENV if env is None else env)


def problems(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return {p.key: p.message for p in info.value.problems}


def test_minimal_config_gets_the_documented_defaults():
    s = parse(MINIMAL)
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 4180)
    assert s.redirect_uri == "https://console.example.com/oauth2/callback"
    assert s.post_logout_redirect_uri == "https://console.example.com/oauth2/signed_out"
    assert s.backchannel_logout_uri == "https://console.example.com/oauth2/backchannel-logout"
    assert s.sso.enabled is True
    assert s.sso.scopes == DEFAULT_SCOPES
    assert s.headers == DEFAULT_HEADERS
    assert s.session.store == "memory"
    assert s.session.lifetime == 8 * 3600 and s.session.idle_timeout == 3600
    assert s.secure_cookies is True
    assert s.sso.client_secret is not None and s.sso.client_secret.reveal() == "client-secret-value"


def test_secrets_never_show_in_repr():
    s = parse(MINIMAL)
    assert "client-secret-value" not in repr(s)
    assert SECRET not in repr(s)


def test_every_problem_is_reported_at_once_with_its_key():
    found = problems(
        """
        public_url: "not a url"
        upstream: "ftp://x"
        listen: "nope"
        colour: blue
        sso:
          issuer_url: "http://idp.example.com"
          client_id: ""
          client_secret: "${MISSING_VAR}"
          scopes: ["profile"]
          extra: 1
        session:
          store: "disk"
          cookie_secret: "short"
          lifetime: "forever"
        skip_auth: ["GET ^/static/(", "^/ok$"]
        """,
    )
    assert "listen" in found and "host:port" in found["listen"]
    assert "public_url" in found
    assert "upstream" in found and "http" in found["upstream"]
    assert found["colour"].startswith("unknown key")
    assert "http://" in found["sso.issuer_url"]
    assert found["sso.client_id"] == "is required"
    assert "MISSING_VAR" in found["sso.client_secret"]
    assert "openid" in found["sso.scopes"]
    assert found["sso.extra"].startswith("unknown key")
    assert "memory" in found["session.store"]
    assert "32 characters" in found["session.cookie_secret"]
    assert "duration" in found["session.lifetime"]
    assert "regex" in found["skip_auth[0]"]
    assert "skip_auth[1]" not in found


def test_unknown_key_suggests_the_close_one():
    found = problems(MINIMAL + "upstreem: x\n")
    assert "did you mean 'upstream'" in found["upstreem"]


def test_http_issuer_is_allowed_only_on_loopback():
    for host in ("127.0.0.1:9000", "localhost:9000", "[::1]:9000"):
        s = parse(MINIMAL.replace("https://idp.example.com/realms/main", f"http://{host}"))
        assert s.sso.issuer_url == f"http://{host}"
    assert "sso.issuer_url" in problems(MINIMAL.replace("https://idp.example.com", "http://10.0.0.1"))


def test_missing_required_keys_are_named():
    found = problems("sso: {enabled: true}\n")
    for key in ("public_url", "upstream", "sso.issuer_url", "sso.client_id", "sso.client_secret",
                "session.cookie_secret"):  # fmt: skip
        assert key in found, key


def test_dollar_escapes_and_literal_dollars():
    s = parse(MINIMAL.replace('client_id: "console"', 'client_id: "a$b$${NOT_A_VAR}"'))
    assert s.sso.client_id == "a$b${NOT_A_VAR}"


def test_secret_files_strip_one_trailing_newline_and_cookie_secrets_are_newest_first(tmp_path: Path):
    client = tmp_path / "client"
    client.write_text("from-file\n")
    cookies = tmp_path / "cookies"
    cookies.write_text(f"{'n' * 40}\n{'o' * 40}\n")
    text = MINIMAL.replace('client_secret: "${OIDC_SECRET}"', f'client_secret_file: "{client}"').replace(
        'cookie_secret: "${COOKIE_SECRET}"', f'cookie_secret_file: "{cookies}"'
    )
    s = parse(text)
    assert s.sso.client_secret is not None and s.sso.client_secret.reveal() == "from-file"
    assert [x.reveal() for x in s.session.cookie_secrets] == ["n" * 40, "o" * 40]
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


def test_disabled_sso_needs_no_provider_settings():
    s = parse(
        """
        public_url: "http://127.0.0.1:4180"
        upstream: "http://127.0.0.1:8888"
        sso: {enabled: false}
        session: {cookie_secret: "${COOKIE_SECRET}"}
        """
    )
    assert s.sso.enabled is False
    assert s.secure_cookies is False


def test_header_map_replaces_the_default_and_rejects_duplicates_and_bad_names():
    s = parse(MINIMAL + "headers:\n  X-User: sub\n  X-Roles: cognito:groups\n")
    assert s.headers == (("X-User", "sub"), ("X-Roles", "cognito:groups"))
    found = problems(MINIMAL + "headers:\n  X-User: sub\n  x_user: email\n  'Bad Header': name\n  Cookie: sub\n")
    assert "twice" in found["headers.x_user"]
    assert "header name" in found["headers.Bad Header"]
    assert "cannot be used" in found["headers.Cookie"]


def test_skip_auth_rules_parse_methods_and_get_implies_head():
    s = parse(MINIMAL + 'skip_auth: ["GET ^/static/", "^/api/health$", "POST,PUT ^/hook"]\n')
    static, health, hook = s.skip_auth

    def skips(rule: SkipRule, method: str, path: str) -> bool:
        return skips_auth([rule], method, normalise(path))

    assert skips(static, "GET", "/static/a.css") and skips(static, "HEAD", "/static/a.css")
    assert not skips(static, "POST", "/static/a.css")
    assert skips(health, "DELETE", "/api/health") and not skips(health, "GET", "/api/healthz")
    assert skips(hook, "PUT", "/hook") and not skips(hook, "GET", "/hook")


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


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("8h", 28800), ("7d", 604800), ("250ms", 0.25), (30, 30)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5s", "5 weeks", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_restart_needed_lists_what_cannot_change_live():
    a = parse(MINIMAL)
    b = parse(
        MINIMAL.replace('upstream: "http://127.0.0.1:8888"', 'upstream: "http://127.0.0.1:9999"\nlisten: ":5000"')
    )
    assert a.restart_needed(b) == ["listen"]
