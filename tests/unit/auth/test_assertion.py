"""The assertion's keys, claims and signature (``proxy.auth.assertion``), checked with joserfc as a console would."""

from __future__ import annotations

import base64
import json
import secrets
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.errors import BadSignatureError, SecurityWarning
from joserfc.jwk import KeySet, OctKey

from proxy.auth.assertion import AssertionSigner, Keyring, derive_private_pem
from proxy.config.model import AssertionSettings, Secret

SECRETS = (Secret("n" * 16 + secrets.token_urlsafe(24)), Secret("o" * 16 + secrets.token_urlsafe(24)))
IDENTITY = {"sub": "u-1", "preferred_username": "ann", "email": "ann@example.com", "groups": ["a", "b"], "acr": "x"}


def pem_of(key: object) -> Secret:
    pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Secret(pem.decode())


def decode(token: str, keyring: Keyring, algorithm: str) -> jwt.Token:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.decode(token, KeySet.import_key_set(json.loads(keyring.jwks_body)), algorithms=[algorithm])


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_a_derived_key_is_the_same_wherever_the_cookie_secret_is(algorithm):
    settings = AssertionSettings(algorithm=algorithm)
    one, two = Keyring(settings, SECRETS), Keyring(settings, SECRETS)
    assert one.derived and one.jwks == two.jwks and one.signing.kid == two.signing.kid
    assert derive_private_pem(SECRETS[0], algorithm) == derive_private_pem(SECRETS[0], algorithm)
    # Each listed secret's key is published, the newest signs; another secret gives another key.
    assert [k["kid"] for k in one.jwks["keys"]] == [Keyring(settings, (s,)).signing.kid for s in SECRETS]
    assert Keyring(settings, (Secret("z" * 40),)).signing.kid not in {k["kid"] for k in one.jwks["keys"]}


def test_the_derived_key_has_a_purpose_of_its_own():
    """Not the cookie secret itself, nor any other key derived from it (the settings page's record key, say)."""
    pem = derive_private_pem(SECRETS[0], "ES256")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    assert SECRETS[0].reveal().encode()[:32] != scalar
    from proxy.admin.record import _INFO, _derive

    assert _derive(SECRETS[0], _INFO) != scalar
    assert derive_private_pem(SECRETS[0], "EdDSA") != pem


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("RS256", rsa.generate_private_key(65537, 2048)),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ],
)
def test_key_files_sign_and_publish_only_their_public_part(algorithm, key):
    older = {"ES256": ec.generate_private_key(ec.SECP256R1()), "RS256": rsa.generate_private_key(65537, 2048),
             "EdDSA": ed25519.Ed25519PrivateKey.generate()}[algorithm]  # fmt: skip
    settings = AssertionSettings(algorithm=algorithm, keys=(pem_of(key), pem_of(older)), audience="http://console")
    keyring = Keyring(settings, SECRETS)
    assert not keyring.derived and len(keyring.jwks["keys"]) == 2
    for jwk in keyring.jwks["keys"]:
        assert jwk["alg"] == algorithm and jwk["use"] == "sig" and jwk["kid"]
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    signer = AssertionSigner(settings, keyring, "https://console.example.com")
    token = signer.sign(signer.claims(IDENTITY, ["admin"], now=1_000_000, not_after=None))
    verified = decode(token, keyring, algorithm)
    assert verified.header == {"alg": algorithm, "typ": "JWT", "kid": keyring.jwks["keys"][0]["kid"]}


def test_the_same_key_listed_twice_is_published_once():
    key = pem_of(ec.generate_private_key(ec.SECP256R1()))
    assert len(Keyring(AssertionSettings(keys=(key, key)), SECRETS).jwks["keys"]) == 1


def test_ec_coordinates_are_full_length_as_strict_jose_libraries_require():
    """go-jose (Grafana) refuses a P-256 JWK whose x or y is not exactly 32 bytes (RFC 7518 6.2.1.2)."""
    for _ in range(20):
        keyring = Keyring(AssertionSettings(), (Secret(secrets.token_urlsafe(32)),))
        jwk = keyring.jwks["keys"][0]
        for coordinate in ("x", "y"):
            assert len(base64.urlsafe_b64decode(jwk[coordinate] + "==")) == 32


def test_claims_carry_the_listed_identity_roles_and_a_capped_expiry():
    settings = AssertionSettings(audience="http://console:8888", lifetime=300)
    signer = AssertionSigner(settings, Keyring(settings, SECRETS), "https://console.example.com")
    claims = signer.claims(IDENTITY, ("admin",), now=1_000_000.7, not_after=None)
    assert claims == {
        "iss": "https://console.example.com", "aud": "http://console:8888", "sub": "u-1", "iat": 1_000_000,
        "exp": 1_000_300, "preferred_username": "ann", "email": "ann@example.com", "groups": ["a", "b"],
        "roles": ["admin"],
    }  # fmt: skip
    assert signer.claims(IDENTITY, (), now=1_000_000, not_after=1_000_100.9)["exp"] == 1_000_100
    assert "name" not in claims and "acr" not in claims  # absent, or not listed


def test_hs256_signs_with_the_secret_and_publishes_nothing():
    secret = Secret(secrets.token_urlsafe(32))
    settings = AssertionSettings(algorithm="HS256", secret=secret)
    keyring = Keyring(settings, SECRETS)
    assert keyring.jwks == {"keys": []} and secret.reveal() not in keyring.signing.kid
    signer = AssertionSigner(settings, keyring, "https://console.example.com")
    token = signer.sign(signer.claims(IDENTITY, (), now=1, not_after=None))
    assert jwt.decode(token, OctKey.import_key(secret.reveal().encode()), algorithms=["HS256"]).claims["sub"] == "u-1"
    with pytest.raises(BadSignatureError):
        jwt.decode(token, OctKey.import_key(secrets.token_bytes(32)), algorithms=["HS256"])
