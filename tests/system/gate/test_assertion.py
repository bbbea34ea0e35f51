"""The signed assertion and the roles through real sidecars, checked as a console checks them: the echo console
(deploy/demo/console.py) shows what it received, the keys come from the sidecar's ``/oauth2/jwks.json``, and
joserfc verifies (never the sidecar's own code). Users sign in at the dev IdP, whose ``admin*`` users are in the
group ``admins`` and whose usernames become ``NAME@example.com``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, InvalidClaimError

from support.assertions import check_claims, fetch_json, headers_named, jwks, seen_by_console, verify
from support.idp import login
from support.redis_server import RedisServer
from support.sidecar import replica_of
from support.waiting import eventually

ROLES = {
    "rules": [
        {"role": "admin", "groups": ["admins"]},
        {"role": "auditor", "emails": ["ann.audit@example.com"]},
    ],
    "default": ["viewer"],
}


def pem_key(tmp_path: Path, name: str, *kind: str) -> str:
    """A private key made by openssl, as an operator would (``kind``: genpkey's algorithm options)."""
    path = tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "genpkey", *kind, "-out", str(path)], check=True, capture_output=True)
    return str(path)


EC = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
RSA = ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
ED25519 = ("-algorithm", "ed25519")


async def signed_in(http: Any, sidecar: Any, username: str) -> tuple[Any, dict[str, Any]]:
    client = http()
    resp = await login(client, sidecar.url_for("/api/whoami"), username)
    assert resp.status == 200, await resp.text()
    return client, json.loads(await resp.text())


# --------------------------------------------------------------------------------------------------
# The assertion as a console verifies it


async def test_the_console_gets_an_assertion_that_verifies_at_the_published_jwks(http, sidecar_factory, console):
    sidecar = sidecar_factory({"assertion": {}, "roles": ROLES})
    before = int(time.time())
    _, seen = await signed_in(http, sidecar, "admin.ann")
    [token] = headers_named(seen, "X-Sso-Assertion")
    status, headers, key_set = await fetch_json(sidecar.url_for("/oauth2/jwks.json"))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "public, max-age=60" and headers["ETag"]
    verified = verify(token, key_set)
    assert verified.header == {"alg": "ES256", "typ": "JWT", "kid": key_set["keys"][0]["kid"]}
    claims = verified.claims
    check_claims(claims, issuer=sidecar.url, audience=console.url)
    assert before <= claims["iat"] <= time.time() and claims["exp"] == claims["iat"] + 300
    assert claims["sub"] and claims["sub"] != "admin.ann"  # the provider's subject, not the name
    assert claims["preferred_username"] == "admin.ann"
    assert claims["email"] == "admin.ann@example.com"
    assert claims["name"] == "Admin Ann"
    assert claims["groups"] == ["users", "admins"]
    assert claims["roles"] == ["admin"]
    assert set(claims) == {"iss", "aud", "sub", "iat", "exp", "preferred_username", "email", "name", "groups", "roles"}
    assert headers_named(seen, "X-Forwarded-Roles") == ["admin"]
    # Expiry: refused from exp on, as every JWT library does.
    check_claims(claims, issuer=sidecar.url, audience=console.url, now=claims["exp"] - 1)
    with pytest.raises(ExpiredTokenError):
        check_claims(claims, issuer=sidecar.url, audience=console.url, now=claims["exp"])
    # A changed claim no longer verifies; another issuer or audience is refused by the claim rules.
    head, body, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged["roles"] = ["admin", "root"]
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(BadSignatureError):
        verify(f"{head}.{forged_body}.{signature}", key_set)
    with pytest.raises(InvalidClaimError):
        check_claims(claims, issuer="http://other.example", audience=console.url)
    with pytest.raises(InvalidClaimError):
        check_claims(claims, issuer=sidecar.url, audience="http://other-console.example")


async def test_roles_come_from_rules_and_default_applies_when_no_rule_matched(http, sidecar_factory):
    sidecar = sidecar_factory({"assertion": {}, "roles": ROLES})
    key_set = await jwks(sidecar.url)
    for username, roles in {"ann.audit": ["auditor"], "bob": ["viewer"], "admin.audit": ["admin"]}.items():
        client, seen = await signed_in(http, sidecar, username)
        assert verify(headers_named(seen, "X-Sso-Assertion")[0], key_set).claims["roles"] == roles, username
        assert headers_named(seen, "X-Forwarded-Roles") == [",".join(roles)]
        async with client.get(sidecar.url_for("/oauth2/userinfo")) as resp:  # the console's front end
            assert (await resp.json())["roles"] == roles


async def test_an_unverified_email_grants_no_role(http, sidecar_factory):
    rules = {"rules": [{"role": "auditor", "emails": ["unverified.ann@example.com"]}], "default": []}
    sidecar = sidecar_factory({"assertion": {}, "roles": rules})
    _, seen = await signed_in(http, sidecar, "unverified.ann")
    claims = verify(headers_named(seen, "X-Sso-Assertion")[0], await jwks(sidecar.url)).claims
    assert claims["roles"] == [] and claims["email"] == "unverified.ann@example.com"
    assert headers_named(seen, "X-Forwarded-Roles") == []  # no roles, no header


async def test_one_signature_per_session_and_window_not_per_request(http, sidecar_factory):
    sidecar = sidecar_factory({"assertion": {}})
    alice, seen = await signed_in(http, sidecar, "alice")
    first = headers_named(seen, "X-Sso-Assertion")
    for _ in range(5):
        _, again = await seen_by_console(alice, sidecar.url_for("/api/whoami"))
        assert headers_named(again, "X-Sso-Assertion") == first
    _, bob = await signed_in(http, sidecar, "bob")
    assert headers_named(bob, "X-Sso-Assertion") != first


async def test_the_assertion_never_outlives_the_session(http, sidecar_factory):
    sidecar = sidecar_factory({"assertion": {"lifetime": "1h"}, "session": {"lifetime": "2m"}})
    before = time.time()
    _, seen = await signed_in(http, sidecar, "alice")
    claims = verify(headers_named(seen, "X-Sso-Assertion")[0], await jwks(sidecar.url)).claims
    assert claims["exp"] <= time.time() + 120 and claims["exp"] >= before + 120 - 1


# --------------------------------------------------------------------------------------------------
# Keys: replicas, rotation, algorithms


async def test_two_replicas_share_the_derived_key(http, sidecar_factory, redis_clean: RedisServer):
    first = sidecar_factory({"assertion": {}, "session": {"store": "redis", "redis_url": redis_clean.url}})
    second = sidecar_factory(replica_of(first) | {"assertion": {}}, register=False)
    assert await jwks(first.url) == await jwks(second.url)
    [key] = (await jwks(first.url))["keys"]
    client, seen = await signed_in(http, first, "alice")
    # The same session through the other replica: its assertion verifies at the first replica's keys.
    _, other = await seen_by_console(client, second.url_for("/api/whoami"))
    for token in (headers_named(seen, "X-Sso-Assertion")[0], headers_named(other, "X-Sso-Assertion")[0]):
        verified = verify(token, await jwks(second.url))
        assert verified.header["kid"] == key["kid"]
        assert verified.claims["iss"] == first.url  # replicas share public_url


async def test_a_cookie_secret_rotation_publishes_both_derived_keys_and_signs_with_the_new(http, sidecar_factory):
    old = secrets.token_urlsafe(32)
    sidecar = sidecar_factory({"assertion": {}, "session": {"cookie_secret": old}})
    [old_key] = (await jwks(sidecar.url))["keys"]
    sidecar.reload(
        {**sidecar.config, "session": {**sidecar.config["session"], "cookie_secret": [secrets.token_urlsafe(32), old]}}
    )
    key_set = await eventually(
        lambda: _keys_if(sidecar.url, 2), what="the new derived key published beside the old one"
    )
    assert key_set["keys"][1] == old_key
    _, seen = await signed_in(http, sidecar, "alice")
    assert verify(headers_named(seen, "X-Sso-Assertion")[0], key_set).header["kid"] == key_set["keys"][0]["kid"]


async def _keys_if(url: str, count: int) -> dict[str, Any] | None:
    key_set = await jwks(url)
    return key_set if len(key_set["keys"]) == count else None


async def test_a_key_file_rotation_by_reload_publishes_both_keys_and_signs_with_the_new(
    http, sidecar_factory, tmp_path
):
    old_key, new_key = pem_key(tmp_path, "old", *EC), pem_key(tmp_path, "new", *EC)
    sidecar = sidecar_factory({"assertion": {"key_file": old_key}})
    client, seen = await signed_in(http, sidecar, "alice")
    [old_jwk] = (await jwks(sidecar.url))["keys"]
    old_token = headers_named(seen, "X-Sso-Assertion")[0]
    assert verify(old_token, await jwks(sidecar.url)).header["kid"] == old_jwk["kid"]
    sidecar.reload({**sidecar.config, "assertion": {"key_file": [new_key, old_key]}})
    key_set = await eventually(lambda: _keys_if(sidecar.url, 2), what="both keys published after the reload")
    assert key_set["keys"][1] == old_jwk
    _, after = await seen_by_console(client, sidecar.url_for("/api/whoami"))
    new_token = headers_named(after, "X-Sso-Assertion")[0]
    assert verify(new_token, key_set).header["kid"] == key_set["keys"][0]["kid"] != old_jwk["kid"]
    assert verify(old_token, key_set).claims["sub"]  # what the old key signed still verifies


@pytest.mark.parametrize(
    ("algorithm", "kind", "kty"), [("RS256", RSA, "RSA"), ("EdDSA", ED25519, "OKP"), ("ES256", EC, "EC")]
)
async def test_each_algorithm_signs_with_its_key_file(http, sidecar_factory, tmp_path, algorithm, kind, kty):
    sidecar = sidecar_factory({"assertion": {"algorithm": algorithm, "key_file": [pem_key(tmp_path, "k", *kind)]}})
    _, seen = await signed_in(http, sidecar, "alice")
    key_set = await jwks(sidecar.url)
    [key] = key_set["keys"]
    assert key["kty"] == kty and key["alg"] == algorithm and key["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # never the private parts
    verified = verify(headers_named(seen, "X-Sso-Assertion")[0], key_set, [algorithm])
    assert verified.header["alg"] == algorithm and verified.claims["preferred_username"] == "alice"


async def test_eddsa_derives_its_key_from_the_cookie_secret_too(http, sidecar_factory):
    sidecar = sidecar_factory({"assertion": {"algorithm": "EdDSA"}})
    _, seen = await signed_in(http, sidecar, "alice")
    key_set = await jwks(sidecar.url)
    assert [k["crv"] for k in key_set["keys"]] == ["Ed25519"]
    assert verify(headers_named(seen, "X-Sso-Assertion")[0], key_set, ["EdDSA"]).claims["preferred_username"] == "alice"


async def test_hs256_verifies_with_the_shared_secret_in_authorization_and_is_never_published(
    http, sidecar_factory, tmp_path
):
    secret = secrets.token_urlsafe(32)
    secret_file = tmp_path / "assertion-secret"
    secret_file.write_text(secret + "\n")
    sidecar = sidecar_factory(
        {"assertion": {"algorithm": "HS256", "secret_file": str(secret_file), "header": "Authorization"}}
    )
    _, seen = await signed_in(http, sidecar, "alice")
    [value] = headers_named(seen, "Authorization")
    assert value.startswith("Bearer ")
    token = value.removeprefix("Bearer ")
    from joserfc.jwk import OctKey

    verified = jwt.decode(token, OctKey.import_key(secret.encode()), algorithms=["HS256"])
    assert verified.header["alg"] == "HS256" and verified.header["typ"] == "JWT"
    assert verified.claims["preferred_username"] == "alice"
    status, _, body = await fetch_json(sidecar.url_for("/oauth2/jwks.json"))
    assert status == 200 and body == {"keys": []}
    with pytest.raises(BadSignatureError):
        jwt.decode(token, OctKey.import_key(secrets.token_bytes(32)), algorithms=["HS256"])


async def test_jwks_is_404_while_the_assertion_is_off_and_answers_304_to_its_etag(http, sidecar_factory):
    plain = sidecar_factory()
    status, _, body = await fetch_json(plain.url_for("/oauth2/jwks.json"))
    assert status == 404 and body["error"] == "not_found"
    signing = sidecar_factory({"assertion": {}})
    _, headers, _ = await fetch_json(signing.url_for("/oauth2/jwks.json"))
    async with http().get(signing.url_for("/oauth2/jwks.json"), headers={"If-None-Match": headers["ETag"]}) as resp:
        assert resp.status == 304 and resp.headers["ETag"] == headers["ETag"]


async def test_the_assertion_survives_concurrent_requests_of_many_sessions(http, sidecar_factory):
    sidecar = sidecar_factory({"assertion": {}})
    users = [await signed_in(http, sidecar, f"user{i}") for i in range(4)]
    key_set = await jwks(sidecar.url)
    answers = await asyncio.gather(
        *(seen_by_console(client, sidecar.url_for("/api/whoami")) for client, _ in users for _ in range(5))
    )
    for i, (status, seen) in enumerate(answers):
        assert status == 200
        assert (
            verify(headers_named(seen, "X-Sso-Assertion")[0], key_set).claims["preferred_username"] == f"user{i // 5}"
        )


async def test_forward_auth_answers_with_the_assertion_and_the_roles(http, sidecar_factory):
    """nginx ``auth_request`` / Traefik ``forwardAuth`` pass them on as they pass the identity headers."""
    sidecar = sidecar_factory({"assertion": {}, "roles": ROLES})
    client, _ = await signed_in(http, sidecar, "admin.ann")
    async with client.get(sidecar.url_for("/oauth2/auth"), headers={"Accept": "application/json"}) as resp:
        assert resp.status == 202
        token, roles = resp.headers["X-Sso-Assertion"], resp.headers.getall("X-Forwarded-Roles")
    assert roles == ["admin"]
    assert verify(token, await jwks(sidecar.url)).claims["preferred_username"] == "admin.ann"
