"""The signed assertion for the console (``assertion:``): its keys, its claims, its signature, its JWKS.

Keys. With ``key_file`` the PEM keys are read (the first signs, every one is published, so a rotation lists the new
key first and keeps the old one until the assertions it signed have expired). Without one, an EC P-256 (ES256) or
Ed25519 (EdDSA) key is derived from each ``session.cookie_secret`` with HKDF under a purpose of its own
(``_PURPOSE``), so every replica that shares the cookie secrets signs with the same key and publishes the same
keys, with no setup; rotating the cookie secret (a new one listed first) rotates the key with it and keeps the old
one published. HS256 signs with ``assertion.secret``, which is never published. Each key's ``kid`` is its RFC 7638
thumbprint (for HS256, a keyed digest that reveals nothing of the secret).

Claims: ``iss`` (``public_url``), ``aud``, ``sub``, ``iat``, ``exp``, the listed identity claims and ``roles``.
``exp`` is ``iat`` + ``lifetime`` and never past ``not_after`` (the session's end, a bearer token's expiry).
Pure: no I/O; the signing is ``joserfc``'s.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from proxy.b64 import b64url_encode
from proxy.config.model import AssertionSettings, Secret

# One purpose per derived key: a cookie secret's HKDF output for this can never stand in for any other use of it.
_PURPOSE = {
    "ES256": b"sso-sidecar/assertion-signing-key/es256/v1",
    "EdDSA": b"sso-sidecar/assertion-signing-key/ed25519/v1",
}
_HS256_KID = b"sso-sidecar/assertion-hs256-kid/v1"
# The order of the P-256 group (FIPS 186-4 D.1.2.3): a derived scalar is reduced into [1, n - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_PEM_ARGS = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

JoseKey = ECKey | RSAKey | OKPKey | OctKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    key: JoseKey
    jwk: Mapping[str, Any] | None  # what is published; None for an HS256 secret


def derive_private_pem(secret: Secret, algorithm: str) -> bytes:
    """The PEM of the key ``algorithm`` derives from one cookie secret: the same on every replica.

    P-256: 48 bytes of HKDF output reduced modulo n - 1, plus one (the FIPS 186-4 B.4.1 construction, whose
    bias is below 2^-64); Ed25519: its 32-byte seed is the HKDF output itself (RFC 8032 5.1.5).
    """
    if algorithm == "ES256":
        seed = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=_PURPOSE[algorithm]).derive(
            secret.reveal().encode()
        )
        scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1()).private_bytes(*_PEM_ARGS)
    if algorithm == "EdDSA":
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE[algorithm]).derive(
            secret.reveal().encode()
        )
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed).private_bytes(*_PEM_ARGS)
    raise ValueError(f"no key is derived for {algorithm}")


def _asymmetric(pem: bytes, algorithm: str) -> SigningKey:
    key: JoseKey
    if algorithm == "ES256":
        key = ECKey.import_key(pem)
    elif algorithm == "RS256":
        key = RSAKey.import_key(pem)
    else:
        key = OKPKey.import_key(pem)
    kid = key.thumbprint()
    jwk = {**key.as_dict(private=False), "kid": kid, "alg": algorithm, "use": "sig"}
    return SigningKey(kid, key, jwk)


def _hmac(secret: Secret) -> SigningKey:
    raw = secret.reveal().encode()
    kid = b64url_encode(hashlib.sha256(_HS256_KID + hashlib.sha256(raw).digest()).digest()[:12])
    return SigningKey(kid, OctKey.import_key(raw), None)


class Keyring:
    """The keys of one ``assertion:`` config, newest first: the first signs, the asymmetric ones are published."""

    def __init__(self, settings: AssertionSettings, cookie_secrets: Sequence[Secret]) -> None:
        self.algorithm = settings.algorithm
        self.derived = False
        if settings.algorithm == "HS256":
            if settings.secret is None:
                raise ValueError("HS256 needs assertion.secret")
            keys = [_hmac(settings.secret)]
        elif settings.keys:
            keys = [_asymmetric(pem.reveal().encode(), settings.algorithm) for pem in settings.keys]
        else:
            if not cookie_secrets:
                raise ValueError("no cookie secret to derive the assertion key from")
            self.derived = True
            keys = [_asymmetric(derive_private_pem(s, settings.algorithm), settings.algorithm) for s in cookie_secrets]
        unique: dict[str, SigningKey] = {}
        for key in keys:  # the same key listed twice is published once
            unique.setdefault(key.kid, key)
        self.keys: tuple[SigningKey, ...] = tuple(unique.values())
        self.signing = keys[0]
        self.jwks: dict[str, Any] = {"keys": [dict(k.jwk) for k in self.keys if k.jwk is not None]}
        self.jwks_body = json.dumps(self.jwks, separators=(",", ":")).encode()

    @property
    def source(self) -> str:
        """Where the keys come from, in words for ``check`` and the settings page."""
        if self.algorithm == "HS256":
            return "assertion.secret (shared with the console, never published)"
        if self.derived:
            return "derived from session.cookie_secret (every replica with the same secrets signs alike)"
        return "assertion.key_file"


class AssertionSigner:
    """Builds and signs the assertion for one identity. Signing costs tens of microseconds (RS256: about a
    millisecond): ``auth.console`` keeps each signed assertion for most of its lifetime."""

    def __init__(self, settings: AssertionSettings, keyring: Keyring, issuer: str) -> None:
        self.settings = settings
        self.keyring = keyring
        self.issuer = issuer
        self.audience = settings.audience
        self.lifetime = settings.lifetime
        self._listed = tuple(c for c in settings.claims if c != "sub")
        key = keyring.signing
        self._header = {"alg": keyring.algorithm, "typ": "JWT", "kid": key.kid}
        self._registry = jws.JWSRegistry(algorithms=[keyring.algorithm])

    def claims(
        self, identity: Mapping[str, Any], roles: Sequence[str], *, now: float, not_after: float | None
    ) -> dict[str, Any]:
        """What the assertion says: iss, aud, sub, iat, exp (never past ``not_after``), the listed claims, roles."""
        issued = int(now)
        expires = issued + int(self.lifetime)
        if not_after is not None:
            expires = min(expires, int(not_after))
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(identity.get("sub", "")),
            "iat": issued,
            "exp": expires,
        }
        for name in self._listed:
            value = identity.get(name)
            if value is not None:
                claims[name] = list(value) if isinstance(value, tuple) else value
        claims["roles"] = list(roles)
        return claims

    def sign(self, claims: Mapping[str, Any]) -> str:
        payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
        with warnings.catch_warnings():
            # joserfc flags the name "EdDSA" as superseded by RFC 9864's "Ed25519"; consoles (Grafana, jose
            # libraries) still know it by the older name.
            warnings.simplefilter("ignore", SecurityWarning)
            return jws.serialize_compact(self._header, payload, self.keyring.signing.key, registry=self._registry)
