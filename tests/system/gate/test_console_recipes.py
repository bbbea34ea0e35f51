"""The recipes of README.md and docs/console-identity.md, tested as written.

- The Python recipe runs verbatim (read from the README, executed) against a real sidecar's assertion.
- Grafana ``auth.jwt`` and Spark's ``JWSFilter`` are not available here (no Grafana, no JVM with Spark). Their
  recipes' sidecar configs run as written, and the assertion and key set are checked against what each requires,
  from their documentation and code: Grafana's ``pkg/services/auth/jwt`` (go-jose: a ``kid`` the set holds, a P-256
  key with 32-byte coordinates, string ``iss``/``sub``/``aud``, numeric times, ``expect_claims`` matched exactly,
  the username and email claims) and Spark's ``JWSFilter.scala`` (``Bearer <jws>``, the key base64url-decoded from
  ``secretKey``, at least 256 bits, HS256, an expiry), the HMAC computed here by hand, not by the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from joserfc.errors import JoseError

from support import REPO
from support.assertions import headers_named, jwks, verify
from support.idp import login

README = REPO / "README.md"
GUIDE = REPO / "docs" / "console-identity.md"


def blocks(path: Path, language: str, section: str | None = None) -> list[str]:
    """The fenced ``language`` blocks of ``path`` (of one ``## section`` only, when given)."""
    text = path.read_text(encoding="utf-8")
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


async def signed_in(http: Any, sidecar: Any, username: str) -> tuple[Any, dict[str, Any]]:
    client = http()
    resp = await login(client, sidecar.url_for("/api/whoami"), username)
    assert resp.status == 200, await resp.text()
    return client, json.loads(await resp.text())


# --------------------------------------------------------------------------------------------------
# Python, verbatim


async def test_the_readme_python_recipe_verifies_the_assertion(http, sidecar_factory, console, monkeypatch):
    [recipe] = [b for b in blocks(README, "python") if "/oauth2/jwks.json" in b]
    sidecar = sidecar_factory({"assertion": {}, "roles": {"rules": [{"role": "admin", "groups": ["admins"]}]}})
    _, seen = await signed_in(http, sidecar, "admin.ann")
    monkeypatch.setenv("SSO_SIDECAR_URL", sidecar.url)
    monkeypatch.setenv("SSO_AUDIENCE", console.url)
    namespace: dict[str, Any] = {}
    await asyncio.to_thread(exec, compile(recipe, str(README), "exec"), namespace)  # it fetches the JWKS
    verified_user = namespace["verified_user"]
    claims = verified_user(seen["headers"])
    assert claims["preferred_username"] == "admin.ann" and claims["roles"] == ["admin"]
    # What did not come from this sidecar, as it is, is refused.
    token = seen["headers"]["X-Sso-Assertion"]
    head, body, signature = token.split(".")
    with pytest.raises(JoseError):
        verified_user({"X-Sso-Assertion": f"{head}.{body[:-4]}AAAA.{signature}"})
    other = sidecar_factory({"assertion": {}})
    _, elsewhere = await signed_in(http, other, "admin.ann")
    with pytest.raises(JoseError):
        verified_user(elsewhere["headers"])  # another sidecar's key
    monkeypatch.setenv("SSO_AUDIENCE", "http://another-console.example")
    strict: dict[str, Any] = {}
    await asyncio.to_thread(exec, compile(recipe, str(README), "exec"), strict)
    with pytest.raises(JoseError):
        strict["verified_user"](seen["headers"])  # meant for another console


# --------------------------------------------------------------------------------------------------
# Grafana auth.jwt


def ini(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def b64url_bytes(text: str) -> bytes:
    assert re.fullmatch(r"[A-Za-z0-9_-]+", text), f"not unpadded base64url: {text!r}"
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_the_grafana_recipe_gives_grafana_what_its_jwt_auth_requires(http, sidecar_factory, idp_factory, console):
    sidecar_yaml, grafana_ini = (
        blocks(GUIDE, "yaml", "Grafana `auth.jwt`")[0],
        blocks(GUIDE, "ini", "Grafana `auth.jwt`")[0],
    )
    recipe, grafana = yaml.safe_load(sidecar_yaml), ini(grafana_ini)
    # The recipe agrees with itself: Grafana's URLs and expectations are the sidecar's.
    assert grafana["jwk_set_url"] == recipe["public_url"] + "/oauth2/jwks.json"
    assert grafana["jwk_set_url"].startswith("https://")  # Grafana: "jwt_set_url must have https scheme"
    assert json.loads(grafana["expect_claims"]) == {"iss": recipe["public_url"], "aud": recipe["upstream"]}
    assert grafana["header_name"] == "X-Sso-Assertion" and recipe["assertion"] == {}
    assert grafana["role_attribute_path"] == (  # the expression the role check below reads as Grafana would
        "contains(roles[*], 'admin') && 'Admin' || contains(roles[*], 'editor') && 'Editor' || 'Viewer'"
    )
    # The config as written, on this machine's addresses.
    idp = idp_factory(accounts={"gina": {"groups": ["grafana-admins"]}, "ed": {"groups": ["grafana-editors"]}})
    config = {k: v for k, v in recipe.items() if k not in ("public_url", "upstream")}
    sidecar = sidecar_factory(config, idp=idp)
    key_set = await jwks(sidecar.url)
    for key in key_set["keys"]:  # as go-jose reads a JSON Web Key
        assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["use"] == "sig"
        assert len(b64url_bytes(key["x"])) == 32 and len(b64url_bytes(key["y"])) == 32
        assert isinstance(key["kid"], str) and key["kid"] and "d" not in key
    expected = {"iss": sidecar.url, "aud": console.url}  # expect_claims, for these addresses
    for username, grafana_role in (("gina", "Admin"), ("ed", "Editor"), ("vic", "Viewer")):
        _, seen = await signed_in(http, sidecar, username)
        [token] = headers_named(seen, grafana["header_name"])
        verified = verify(token, key_set)
        assert verified.header["kid"] in {k["kid"] for k in key_set["keys"]}  # Grafana looks the key up by kid
        claims = verified.claims
        assert {k: claims[k] for k in expected} == expected  # matched exactly
        assert isinstance(claims["sub"], str) and claims["sub"]  # "sub" is mandatory
        assert all(isinstance(claims[t], int) for t in ("exp", "iat"))
        assert (
            claims[grafana["username_claim"]] == username
            and claims[grafana["email_claim"]] == f"{username}@example.com"
        )
        roles = claims["roles"]
        assert isinstance(roles, list) and all(isinstance(r, str) for r in roles)  # contains(roles[*], ...) reads it
        # What role_attribute_path selects: the first of 'admin', 'editor' in roles, else Viewer.
        assert ("Admin" if "admin" in roles else "Editor" if "editor" in roles else "Viewer") == grafana_role


# --------------------------------------------------------------------------------------------------
# Spark JWSFilter


async def test_the_spark_recipe_gives_jwsfilter_an_hs256_bearer_token_under_its_secret_key(
    http, sidecar_factory, tmp_path
):
    section = "Spark `JWSFilter` (HS256)"
    recipe = yaml.safe_load(blocks(GUIDE, "yaml", section)[0])
    [shell] = blocks(GUIDE, "sh", section)
    setup = shell.split("\nspark-submit", 1)[0]  # the commands before Spark itself
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", setup + '\nprintf %s "$SECRET_KEY"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    secret_key = done.stdout
    recipe["assertion"]["secret_file"] = str(tmp_path / "spark-jws-secret")
    sidecar = sidecar_factory(recipe)
    _, seen = await signed_in(http, sidecar, "alice")
    # JWSFilter: case s"Bearer $token" => Jwts.parser().verifyWith(key).build().parseSignedClaims(token)
    [authorization] = headers_named(seen, "Authorization")
    match = re.fullmatch(r"Bearer (.+)", authorization)
    assert match is not None
    token = match.group(1)
    key = b64url_bytes(secret_key)  # Decoders.BASE64URL.decode(secretKey)
    assert len(key) * 8 >= 256  # Keys.hmacShaKeyFor: a weaker key is refused
    assert key == (tmp_path / "spark-jws-secret").read_bytes().rstrip(b"\n")  # the sidecar's secret, byte for byte
    head, payload, signature = token.split(".")
    assert json.loads(b64url_bytes(head))["alg"] == "HS256"
    assert hmac.compare_digest(
        hmac.new(key, f"{head}.{payload}".encode(), hashlib.sha256).digest(), b64url_bytes(signature)
    )
    claims = json.loads(b64url_bytes(payload))
    assert claims["exp"] > time.time()  # requireExpiration=true, and not expired
    assert claims["preferred_username"] == "alice"
    assert (await jwks(sidecar.url)) == {"keys": []}  # the secret is never published
