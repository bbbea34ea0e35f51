"""The client secret of a Save that was refused, kept sealed in the page's form until it is saved or abandoned.

A Save refused for another field (a mistyped issuer, say) must not make the admin paste the secret again, yet
the page never renders a secret back. So the secret travels in a hidden field, sealed (AES-256-GCM) under a key
derived from the cookie secrets (a purpose of its own), bound to whoever typed it (the form token's holder: an
admin's session or a break-glass grant) and good for an hour. Nobody else can open it; the page itself never
shows it; leaving the page drops it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.b64 import b64url_decode, b64url_encode
from proxy.config.model import Secret

FIELD = "client_secret_sealed"
KEPT_FOR = 3600.0
_INFO = b"sso-sidecar/page-pending-secret/v1"
_MAX_CHARS = 8192


def _key(secret: Secret) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.reveal().encode())


def seal(cookie_secrets: Sequence[Secret], holder: str, client_secret: str, now: float | None = None) -> str:
    nonce = os.urandom(12)
    plain = json.dumps({"s": client_secret, "e": (time.time() if now is None else now) + KEPT_FOR}).encode()
    return b64url_encode(nonce + AESGCM(_key(cookie_secrets[0])).encrypt(nonce, plain, holder.encode()))


def open_sealed(cookie_secrets: Sequence[Secret], holder: str, sealed: str, now: float | None = None) -> str:
    """The secret in ``sealed``, or "" when it is not one this holder sealed within the hour."""
    if not sealed or len(sealed) > _MAX_CHARS:
        return ""
    try:
        raw = b64url_decode(sealed)
    except ValueError:
        return ""
    for secret in cookie_secrets:
        try:
            plain = AESGCM(_key(secret)).decrypt(raw[:12], raw[12:], holder.encode())
        except (InvalidTag, ValueError):
            continue
        try:
            data = json.loads(plain)
            value, expires = str(data["s"]), float(data["e"])
        except (ValueError, KeyError, TypeError):
            return ""
        return value if (time.time() if now is None else now) < expires else ""
    return ""
