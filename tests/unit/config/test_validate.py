"""Each section's checks: defaults, every problem at once with its key, and the rules each key must follow."""

from __future__ import annotations

import pytest

from proxy.auth.paths import normalise
from proxy.config.model import DEFAULT_HEADERS, DEFAULT_SCOPES, HTTP_METHODS, SkipRule
from proxy.errors import ConfigError
from proxy.gate.decide import skips_auth
from support.config_text import MINIMAL, parse, problems


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


def test_http_issuer_is_allowed_only_on_loopback():
    for host in ("127.0.0.1:9000", "localhost:9000", "[::1]:9000"):
        s = parse(MINIMAL.replace("https://idp.example.com/realms/main", f"http://{host}"))
        assert s.sso.issuer_url == f"http://{host}"
    assert "sso.issuer_url" in problems(MINIMAL.replace("https://idp.example.com", "http://10.0.0.1"))


def test_an_issuer_without_a_scheme_is_told_what_a_url_looks_like_loopback_http_included():
    found = problems(MINIMAL.replace("https://idp.example.com/realms/main", "idp.example.com/realms/main"))
    assert found["sso.issuer_url"].endswith(
        "must be an absolute URL: https://host/... (http:// only on a loopback host)"
    )


def test_an_unreadable_or_empty_cookie_secret_file_is_one_problem_naming_the_file(tmp_path):
    missing = tmp_path / "missing"
    found = problems(MINIMAL.replace('cookie_secret: "${COOKIE_SECRET}"', f"cookie_secret_file: {missing}"))
    assert found == {"session.cookie_secret_file": f"cannot read {missing}: No such file or directory"}
    (tmp_path / "empty").write_text("\n\n")
    found = problems(MINIMAL.replace('cookie_secret: "${COOKIE_SECRET}"', f"cookie_secret_file: {tmp_path / 'empty'}"))
    assert found == {
        "session.cookie_secret_file": f"{tmp_path / 'empty'} holds no secret: one per line, newest first "
        "(openssl rand -base64 32)"
    }


def test_missing_required_keys_are_named():
    found = problems("sso: {enabled: true}\n")
    for key in ("public_url", "upstream", "sso.issuer_url", "sso.client_id", "sso.client_secret",
                "session.cookie_secret"):  # fmt: skip
        assert key in found, key


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


def test_skip_auth_names_the_methods_routes_name_webdav_too():
    """One list of methods (config.model.HTTP_METHODS) for skip_auth and routes: "PROPFIND ^/dav/" is a rule for
    PROPFIND, as ``methods: [PROPFIND]`` is in a route, not a regex that can never match."""
    every = ",".join(HTTP_METHODS)
    s = parse(
        MINIMAL
        + f'skip_auth: ["PROPFIND,MKCOL ^/dav/", "{every} ^/all/"]\nroutes: [{{path: "^/", methods: [{every}]}}]\n'
    )
    dav, everything = s.skip_auth
    assert dav.methods == frozenset({"PROPFIND", "MKCOL"}) and dav.pattern.pattern == "^/dav/"
    assert skips_auth([dav], "PROPFIND", normalise("/dav/a")) and not skips_auth([dav], "GET", normalise("/dav/a"))
    assert everything.methods == s.routes[0].methods == frozenset(HTTP_METHODS)


def test_a_bad_key_is_listed_once():
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL.replace('cookie_secret: "${COOKIE_SECRET}"', "cookie_secret_file: [a, b]"))
    listed = [str(p) for p in info.value.problems]
    assert listed.count("session.cookie_secret_file: must be a string") == 1, listed


# -- admin (the settings page) ---------------------------------------------------------------------------

SECRET_32 = "tB7yQ2mX9kL4pW6rZ1vN8cH3jF5dG0sK"
ADMIN_ON = "admin: {enabled: true, groups: [admins]}\n"


def test_the_settings_page_is_off_by_default_and_its_keys_are_read():
    assert parse(MINIMAL).admin.enabled is False
    s = parse(
        MINIMAL
        + "admin: {enabled: true, emails: [Ada@Example.com], groups: [ops], settings_file: /var/lib/s/page.json}\n"
    )
    assert (s.admin.enabled, s.admin.emails, s.admin.groups) == (True, ("ada@example.com",), ("ops",))
    assert s.admin.settings_file == "/var/lib/s/page.json"


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        # Memory sessions keep page settings in a file: it must be named.
        (ADMIN_ON, "admin.settings_file", "required with admin.enabled unless session.store is redis"),
        # Nobody could ever be an admin: Enable would be refused forever.
        ("admin: {enabled: true, settings_file: /x}\n", "admin.enabled", "needs admin.emails or admin.groups"),
        ("admin: {enabled: true, groups: [a], emails: [not-an-email], settings_file: /x}\n", "admin.emails[0]",
         "is not an email address"),
        ("admin: {enabled: true, group: [a], settings_file: /x}\n", "admin.group", "did you mean"),
    ],
)  # fmt: skip
def test_settings_page_config_problems_name_their_key(extra: str, key: str, words: str):
    found = problems(MINIMAL + extra)
    assert words in found.get(key, ""), found


def test_the_settings_page_with_sso_off_needs_a_break_glass_token():
    """The first setup goes through break-glass: with SSO off, nobody can sign in to reach the page."""
    off = MINIMAL.replace("sso:\n", "sso:\n  enabled: false\n") + ADMIN_ON.replace("}", ", settings_file: /x}")
    found = problems(off)
    assert "needs break_glass.token" in found.get("admin.enabled", ""), found
    assert parse(off + f"break_glass: {{token: {SECRET_32}}}\n").admin.enabled


def test_page_values_are_literal_never_expanded_from_the_environment():
    """A ${VAR} typed into the settings page must not read the process environment."""
    from proxy.config.load import parse_settings

    page_sso = {"issuer_url": "https://idp.example.com", "client_id": "${COOKIE_SECRET}", "client_secret": "$${x}"}
    s = parse_settings(
        MINIMAL, {"COOKIE_SECRET": "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT", "OIDC_SECRET": "v"}, sso=page_sso
    )
    assert s.sso.client_id == "${COOKIE_SECRET}"
    assert s.sso.client_secret is not None and s.sso.client_secret.reveal() == "$${x}"
    assert s.sso_source == "page"
