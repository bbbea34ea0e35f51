"""The ``assertion:``, ``roles:`` and ``pass_tokens:`` keys: defaults, what is read, and every error naming its keys."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from proxy.config.load import parse_settings
from proxy.config.model import DEFAULT_ASSERTION_CLAIMS, PassTokensSettings, RoleRule
from proxy.errors import ConfigError

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
HS256_SECRET = "Zp4Wq9Lx2Nc7Vb3Mk8Hj5Gf1Dd6Ss0Aa-Tt_Yy"


def parse(extra: str = "", env: dict[str, str] | None = None):
    return parse_settings(textwrap.dedent(BASE) + textwrap.dedent(extra), {**ENV, **(env or {})})


def problems(extra: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(extra, env)
    return {p.key: p.message for p in info.value.problems}


def pem(tmp_path: Path, name: str, *kind: str) -> str:
    path = tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "genpkey", *kind, "-out", str(path)], check=True, capture_output=True)
    return str(path)


EC = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")


# -- defaults --------------------------------------------------------------------------------------------


def test_every_section_is_off_unless_present():
    s = parse()
    assert s.assertion is None and s.roles is None
    assert s.pass_tokens == PassTokensSettings() and not s.pass_tokens.enabled


def test_an_empty_assertion_section_takes_every_default():
    a = parse("assertion: {}\n").assertion
    assert a is not None
    assert (a.header, a.algorithm, a.key_files, a.secret, a.lifetime) == ("X-Sso-Assertion", "ES256", (), None, 300.0)
    assert a.audience == "http://127.0.0.1:8888"  # the upstream URL
    assert a.claims == DEFAULT_ASSERTION_CLAIMS


def test_assertion_keys_are_read(tmp_path):
    key = pem(tmp_path, "k", *EC)
    a = parse(f"""
    assertion:
      header: Authorization
      key_file: [{key}]
      audience: "https://console.example.com/api"
      lifetime: 2m
      claims: [sub, email, "https://example.com/tenant"]
    """).assertion
    assert a is not None and a.header == "Authorization" and a.key_files == (key,) and len(a.keys) == 1
    assert (a.audience, a.lifetime, a.claims) == (
        "https://console.example.com/api",
        120.0,
        ("sub", "email", "https://example.com/tenant"),
    )


def test_roles_and_pass_tokens_are_read():
    s = parse("""
    header_list_separator: ";"
    roles:
      rules:
        - {role: admin, groups: [console-admins], emails: [Boss@Example.com]}
        - {role: "viewer, reader", groups: [staff]}
      default: [guest]
    pass_tokens:
      access_token: x-forwarded-access-token
      id_token: authorization
    """)
    assert s.roles is not None and s.roles.header == "X-Forwarded-Roles" and s.roles.default == ("guest",)
    assert s.roles.rules == (
        RoleRule("admin", ("console-admins",), ("boss@example.com",)),
        RoleRule("viewer, reader", ("staff",)),
    )
    assert s.pass_tokens == PassTokensSettings("x-forwarded-access-token", "Authorization")


# -- errors, each naming its key -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ("assertion: {algorithm: PS512}\n", "assertion.algorithm", "must be one of ES256, RS256, EdDSA, HS256"),
        ("assertion: {algorithm: RS256}\n", "assertion.key_file", "is required with RS256"),
        ("assertion: {algorithm: HS256}\n", "assertion.secret", "is required"),
        (
            "assertion: {algorithm: HS256, secret: short-but-not-32-bytes}\n",
            "assertion.secret",
            "HS256 needs at least 32",
        ),
        (f"assertion: {{algorithm: HS256, secret: REPLACE-{HS256_SECRET}}}\n", "assertion.secret", "placeholder"),
        (f"assertion: {{secret: {HS256_SECRET}}}\n", "assertion.secret", "is for HS256 only"),
        ("assertion: {lifetime: 1s}\n", "assertion.lifetime", "between 5s and 1d"),
        ("assertion: {claims: [sub, exp]}\n", "assertion.claims[1]", "set by the sidecar"),
        ("assertion: {claims: [roles]}\n", "assertion.claims[0]", "set by the sidecar"),
        ("assertion: {header: 'Bad Header'}\n", "assertion.header", "not a valid HTTP header name"),
        ("assertion: {header: X-Forwarded-For}\n", "assertion.header", "cannot be used here"),
        ("assertion: {header: Cookie}\n", "assertion.header", "cannot be used here"),
        ("assertion: {key_fiel: x}\n", "assertion.key_fiel", "did you mean 'key_file'"),
        ("assertion: {key_file: /nonexistent/key.pem}\n", "assertion.key_file", "cannot read /nonexistent/key.pem"),
        ("roles: {header: Authorization}\n", "roles.header", "cannot be used here"),
        ("roles: {rules: [{role: admin}]}\n", "roles.rules[0]", "matches nobody"),
        ("roles: {rules: [{groups: [a]}]}\n", "roles.rules[0].role", "is required"),
        ("roles: {rules: [{role: admin, emails: [not-an-email]}]}\n", "roles.rules[0].emails[0]", "not an email"),
        ("roles: {rules: [{role: 'a,b', groups: [x]}]}\n", "roles.rules[0].role", "header_list_separator"),
        ("roles: {default: [' admin']}\n", "roles.default[0]", "without leading or trailing spaces"),
        ("roles: {rules: [{role: a, grups: [x]}]}\n", "roles.rules[0].grups", "did you mean 'groups'"),
        ("roles: {rules: {role: a}}\n", "roles.rules", "must be a list"),
        ("pass_tokens: {access_token: Host}\n", "pass_tokens.access_token", "cannot be used here"),
        ("pass_tokens: {refresh_token: X-Refresh}\n", "pass_tokens.refresh_token", "unknown key"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_key(extra, key, words):
    found = problems(extra)
    assert key in found, found
    assert words in found[key]


def test_a_key_file_of_the_wrong_kind_names_the_key_and_the_file(tmp_path):
    ec, ed = pem(tmp_path, "ec", *EC), pem(tmp_path, "ed", "-algorithm", "ed25519")
    not_a_key = tmp_path / "cert.txt"
    not_a_key.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    small = pem(tmp_path, "rsa1024", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024")
    found = problems(f"assertion: {{algorithm: RS256, key_file: [{ec}, {not_a_key}, {small}]}}\n")
    assert "RS256 needs an RSA key" in found["assertion.key_file[0]"] and ec in found["assertion.key_file[0]"]
    assert "not a PEM private key" in found["assertion.key_file[1]"]
    assert "1024 bits" in found["assertion.key_file[2]"]
    assert "ES256 needs an EC P-256 key" in problems(f"assertion: {{key_file: {ed}}}\n")["assertion.key_file"]
    assert (
        "EdDSA needs an Ed25519 key"
        in problems(f"assertion: {{algorithm: EdDSA, key_file: {ec}}}\n")["assertion.key_file"]
    )
    assert (
        "not used with HS256"
        in problems(f"assertion: {{algorithm: HS256, secret: {HS256_SECRET}, key_file: {ec}}}\n")["assertion.key_file"]
    )


def test_an_encrypted_key_file_is_refused(tmp_path):
    path = tmp_path / "enc.pem"
    subprocess.run(
        ["openssl", "genpkey", *EC, "-aes256", "-pass", "pass:secret", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    assert "encrypted" in problems(f"assertion: {{key_file: {path}}}\n")["assertion.key_file"]


@pytest.mark.parametrize(
    ("extra", "key", "other"),
    [
        ("roles: {header: X-Forwarded-User}\n", "roles.header", "headers.X-Forwarded-User (the default mapping)"),
        (
            "assertion: {header: x_forwarded_email}\n",
            "assertion.header",
            "headers.X-Forwarded-Email (the default mapping)",
        ),
        ("headers: {X-Roles: roles}\nroles: {header: x-roles}\n", "roles.header", "headers.X-Roles"),
        (
            "assertion: {header: Authorization}\npass_tokens: {access_token: authorization}\n",
            "pass_tokens.access_token",
            "assertion.header",
        ),
        (
            "pass_tokens: {access_token: X-Token, id_token: X.Token}\n",
            "pass_tokens.id_token",
            "pass_tokens.access_token",
        ),
        ("roles: {header: X-Sso-Assertion}\nassertion: {}\n", "assertion.header", "roles.header"),
    ],
)
def test_two_settings_that_write_the_same_header_are_an_error_naming_both(extra, key, other):
    found = problems(extra)
    assert key in found, found
    assert other in found[key]


def test_key_files_and_the_secret_file_count_into_the_config_version(tmp_path):
    """So that a rotated key file (or secret) is a new config that the watcher reloads."""
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", *EC, "-out", str(key)], check=True, capture_output=True)
    first = parse(f"assertion: {{key_file: {key}}}\n")
    subprocess.run(["openssl", "genpkey", *EC, "-out", str(key)], check=True, capture_output=True)
    second = parse(f"assertion: {{key_file: {key}}}\n")
    assert str(key) in first.secret_files and first.digest != second.digest
