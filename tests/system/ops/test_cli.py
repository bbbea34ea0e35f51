"""The command line through its real entry point: redirect-uri, check, and run refusing bad configs."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from support.procs import LOOPBACK
from support.sidecar import sidecar_command

COOKIE_SECRET = "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"


def run(*args: str, config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sidecar_command(), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def good_config(idp, client) -> dict:
    return {
        "public_url": "https://console.example.com",
        "upstream": "http://127.0.0.1:8888",
        "sso": {"issuer_url": idp.issuer, "client_id": client.client_id, "client_secret": client.client_secret},
        "session": {"cookie_secret": COOKIE_SECRET},
    }


def test_redirect_uri_prints_one_line_and_needs_only_public_url(tmp_path):
    path = write(tmp_path, {"public_url": "https://console.example.com", "sso": {"client_secret": "${NOT_SET}"}})
    result = run("redirect-uri", config=path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "https://console.example.com/oauth2/callback\n"


def test_redirect_uri_names_a_bad_public_url(tmp_path):
    result = run("redirect-uri", config=write(tmp_path, {"public_url": "console"}))
    assert result.returncode != 0
    assert "public_url" in result.stderr and result.stdout == ""


def test_check_prints_everything_to_register_and_what_discovery_found(tmp_path, idp):
    client = idp.register_client("https://console.example.com")
    result = run("check", config=write(tmp_path, good_config(idp, client)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "https://console.example.com/oauth2/callback",
        "https://console.example.com/oauth2/signed_out",
        "https://console.example.com/oauth2/backchannel-logout",
        idp.issuer,
        idp.discovery()["authorization_endpoint"],
        idp.discovery()["token_endpoint"],
        "openid profile email",
        "X-Forwarded-Email: email",
        "client credentials:        accepted",
    ):
        assert expected in out, expected
    assert client.client_secret not in out


def test_check_shows_the_assertion_its_jwks_url_and_a_sample_of_its_claims(tmp_path, idp):
    client = idp.register_client("https://console.example.com")
    config = good_config(idp, client) | {
        "assertion": {"lifetime": "2m"},
        "roles": {"rules": [{"role": "admin", "groups": ["sample-group"]}], "default": ["viewer"]},
        "pass_tokens": {"access_token": "Authorization"},
    }
    result = run("check", config=write(tmp_path, config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "signed assertion:  X-Sso-Assertion, ES256",
        "keys:            derived from session.cookie_secret",
        "JWKS:            https://console.example.com/oauth2/jwks.json (1 key(s) published)",
        "issuer (iss):    https://console.example.com\n",
        "audience (aud):  http://127.0.0.1:8888",
        "lifetime:        120s",
        '"preferred_username": "sample.user"',
        '"roles": [',
        "roles:             X-Forwarded-Roles, 1 rule(s), default: viewer",
        "admin: group sample-group",
        "access token:     Authorization (Bearer)",
    ):
        assert expected in out, expected
    claims = out[out.index("sample claims") : out.index("roles:")]
    assert '"iat"' in claims and '"exp"' in claims and "eyJ" not in out  # claims, never a signed token
    assert COOKIE_SECRET not in out


def test_check_reports_rejected_client_credentials(tmp_path, idp):
    client = idp.register_client("https://console.example.com")
    config = good_config(idp, client)
    config["sso"]["client_secret"] = "wrong-secret"
    result = run("check", config=write(tmp_path, config))
    assert result.returncode == 1
    assert "sso.client_secret" in result.stderr and "rejected" in result.stderr
    assert "wrong-secret" not in result.stdout + result.stderr


def test_check_reports_an_unreachable_issuer(tmp_path):
    config = {
        "public_url": "https://console.example.com",
        "upstream": "http://127.0.0.1:8888",
        "sso": {"issuer_url": "http://127.0.0.1:9", "client_id": "c", "client_secret": "s"},
        "session": {"cookie_secret": COOKIE_SECRET},
    }
    result = run("check", config=write(tmp_path, config))
    assert result.returncode == 1
    assert "sso.issuer_url" in result.stderr


def test_check_and_run_list_every_config_problem_and_exit_non_zero(tmp_path):
    config = {"public_url": "nope", "upstream": "http://x", "sso": {"issuer_url": "http://idp.example.com"}, "bogus": 1}
    path = write(tmp_path, config)
    for command in ("check", "run"):
        result = run(command, config=path)
        assert result.returncode == 2, command
        for key in (
            "public_url",
            "bogus",
            "sso.issuer_url",
            "sso.client_id",
            "sso.client_secret",
            "session.cookie_secret",
        ):
            assert key in result.stderr, (command, key)


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    result = run("check", config=tmp_path / "missing.yaml")
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_clear_error_and_never_said_to_listen(tmp_path, workers):
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        config = {
            "listen": f"{LOOPBACK}:{port}",
            "public_url": f"http://{LOOPBACK}:{port}",
            "upstream": "http://127.0.0.1:8888",
            "sso": {"enabled": False},
            "session": {"cookie_secret": COOKIE_SECRET, "store": "memory" if workers == 1 else "redis"},
            "workers": workers,
        }
        result = run("run", config=write(tmp_path, config))
    assert result.returncode == 1
    assert f"cannot listen on {LOOPBACK}:{port}: address already in use (listen)" in result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stderr, result.stderr


def test_check_prints_the_route_table_as_it_will_be_applied(tmp_path, idp):
    client = idp.register_client("https://console.example.com")
    config = good_config(idp, client)
    config["access"] = {"allowed_email_domains": ["example.com"]}
    config["routes"] = [
        {"path": "^/admin/", "methods": ["POST", "delete"], "access": {"allowed_groups": ["console-admins"]}},
        {"path": "^/billing/", "max_age": "15m", "acr_values": ["urn:mfa"]},
    ]
    result = run("check", config=write(tmp_path, config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout[result.stdout.index("Routes, as they will be applied") :].splitlines()
    assert lines[1:8] == [
        "  routes[0]   ^/admin/  [DELETE,POST]",
        "              who: groups console-admins",
        "              sign-in: any",
        "  routes[1]   ^/billing/  [any method]",
        "              who: email domains example.com (the top-level access)",
        "              sign-in: acr urn:mfa; at most 15m old",
        "  access      (any other path)  [any method]",
    ]
    assert lines[8] == "              who: email domains example.com"


def test_check_names_every_bad_route_key(tmp_path, idp):
    client = idp.register_client("https://console.example.com")
    config = good_config(idp, client)
    config["routes"] = [{"path": "^/a/("}, {"path": "^/b/", "acr_values": ["a b"], "max_age": "0s"}]
    result = run("check", config=write(tmp_path, config))
    assert result.returncode == 2
    for key in ("routes[0].path: invalid regex", "routes[1].acr_values[0]", "routes[1].max_age"):
        assert key in result.stderr, key
