"""The SSO settings page's record: the draft, its test, what is applied, and the history of changes.

The record is what the settings page (``proxy.admin``) edits and what every replica applies
(``proxy.admin.sync``). It is stored whole, sealed with AES-256-GCM under a key derived from the cookie
secrets (HKDF, a purpose of its own), in an envelope that carries its ``version`` in the clear for
compare-and-set writes and binds it into the seal, so a stored record can be neither read, nor changed,
nor swapped for an older one by anyone without a cookie secret. A record sealed under an older cookie
secret still opens (``open_record`` says so) and is re-sealed under the newest one, so that dropping the
old secret after a rotation breaks nothing.

What a page may set is only the provider part of ``sso``: issuer URL, client ID, client secret and
scopes (``PageSSO``). Once applied, it replaces the file's whole ``sso:`` section.

The record also remembers the provider last enabled (``pinned``): break-glass may re-enable exactly that
provider, never set up another one (``proxy.admin.access``), and no break-glass action clears it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.b64 import b64url_decode, b64url_encode
from proxy.config.model import DEFAULT_SCOPES, Secret

FORMAT = 1
_INFO = b"sso-sidecar/page-settings/v1"
_DIGEST_INFO = b"sso-sidecar/page-settings-digest/v1"
HISTORY_MAX = 50
_NONCE_BYTES = 12
# The claims the page asks the provider to send (the identity consoles use), in the order the page shows them.
BRIEF_CLAIMS = ("preferred_username", "email", "given_name", "family_name", "name")
# A test proves the draft against the provider as it is now; after this long it has to be run again.
TEST_VALID_FOR = 3600.0


class RecordError(Exception):
    """The stored record cannot be used: not an envelope, or it fails to open under every cookie secret."""


@dataclass(frozen=True)
class PageSSO:
    """The provider settings the page edits."""

    issuer_url: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = DEFAULT_SCOPES

    def as_config(self) -> dict[str, Any]:
        """The ``sso:`` section these settings stand for, as the config file would spell it."""
        return {
            "enabled": True,
            "issuer_url": self.issuer_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "scopes": list(self.scopes),
        }


@dataclass(frozen=True)
class Draft:
    sso: PageSSO
    digest: str  # names exactly this content (``Keys.digest``); Enable compares it
    saved_at: float
    saved_by: str


@dataclass(frozen=True)
class TestResult:
    """What one Test login of a draft showed. Tokens are never kept; claims are the five the page shows."""

    __test__ = False  # a name pytest would otherwise collect
    digest: str
    at: float
    by: str  # who ran the test (an admin, or break-glass from an address)
    ok: bool
    error: str | None = None
    user: str = ""  # who signed in at the provider (verified email, else username, else sub)
    claims: Mapping[str, str | None] = field(default_factory=dict)  # claim -> value, None when missing
    headers: Sequence[tuple[str, str]] = ()  # what the console would receive
    passes_access: bool = False
    access_reason: str | None = None
    is_admin: bool = False
    admin_reason: str | None = None  # why the test user is no admin, and who would be, in words
    sub: str = ""  # the test user's subject at the draft's issuer
    issuer: str = ""  # the draft's issuer: with ``sub``, who proved a fresh sign-in by running this test

    def enables(self, draft: Draft, required_claims: Sequence[str], now: float | None = None) -> str | None:
        """Why this test does not allow enabling ``draft``, or None when it does."""
        if self.digest != draft.digest:
            return "the draft was saved again after the test: test it again"
        if not self.ok:
            return "the last test login failed"
        if (now or time.time()) - self.at > TEST_VALID_FOR:
            return f"the last test login is more than {int(TEST_VALID_FOR // 60)} minutes old: test it again"
        missing = [c for c in required_claims if not self.claims.get(c)]
        if missing:
            return "the provider did not send " + ", ".join(missing) + ": map these claims at the provider"
        if not self.is_admin:
            why = f" ({self.admin_reason})" if self.admin_reason else " (admin.emails, admin.groups)"
            return f"the test user is not an admin{why}: nobody could open this page afterwards"
        return None


@dataclass(frozen=True)
class Applied:
    """What the page has applied: SSO on with ``sso``, or off."""

    enabled: bool
    sso: PageSSO | None
    digest: str | None
    at: float
    by: str


@dataclass(frozen=True)
class Pinned:
    """The provider last enabled: the only one break-glass may enable again."""

    issuer_url: str
    client_id: str

    def allows(self, sso: PageSSO) -> bool:
        return (self.issuer_url, self.client_id) == (sso.issuer_url, sso.client_id)


@dataclass(frozen=True)
class Registration:
    """The last client the page registered automatically (RFC 7591), with what manages it (RFC 7592): kept
    sealed in the record for a later update of its URIs, never shown, logged or exported."""

    issuer_url: str
    client_id: str
    client_uri: str  # registration_client_uri ("" when the provider gave none)
    access_token: str  # registration_access_token ("" when the provider gave none)
    at: float
    by: str

    def __repr__(self) -> str:
        return f"Registration(issuer_url={self.issuer_url!r}, client_id={self.client_id!r}, ...)"


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    by: str  # a verified email, else the username, else the subject; or "break-glass from ADDRESS"
    action: str  # saved | registered | tested | enabled | disabled | forgotten | revoked
    detail: str
    sub: str = ""  # the admin's subject at its issuer ("" for break-glass)


@dataclass(frozen=True)
class PageRecord:
    version: int = 0  # 0: nothing stored yet
    draft: Draft | None = None
    test: TestResult | None = None
    applied: Applied | None = None
    history: tuple[HistoryEntry, ...] = ()
    pinned: Pinned | None = None
    registration: Registration | None = None

    def with_entry(self, by: str, action: str, detail: str, now: float | None = None, sub: str = "") -> PageRecord:
        entry = HistoryEntry(now or time.time(), by, action, detail, sub)
        return replace(self, history=(entry, *self.history)[:HISTORY_MAX])

    @property
    def expects_override(self) -> bool:
        """True when this record replaces the file's ``sso`` section (SSO enabled or disabled by the page)."""
        return self.applied is not None

    def sso_override(self) -> dict[str, Any] | None:
        """The ``sso:`` section that replaces the file's, or None while the file is authoritative."""
        if self.applied is None:
            return None
        if not self.applied.enabled or self.applied.sso is None:
            return {"enabled": False}
        return self.applied.sso.as_config()


# -- sealing --------------------------------------------------------------------------------------------


class Keys:
    """The record keys derived from the cookie secrets, newest first."""

    def __init__(self, cookie_secrets: Sequence[Secret]) -> None:
        if not cookie_secrets:
            raise ValueError("no cookie secret")
        self._keys = [(_kid(k), k) for k in (_derive(s, _INFO) for s in cookie_secrets)]
        self._digest_key = _derive(cookie_secrets[0], _DIGEST_INFO)

    def digest(self, sso: PageSSO) -> str:
        """A name for exactly this content (secret included, but keyed: it reveals nothing about it)."""
        canonical = json.dumps(asdict(sso), sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._digest_key, canonical, hashlib.sha256).hexdigest()[:16]

    def seal(self, record: PageRecord) -> bytes:
        kid, key = self._keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        data = AESGCM(key).encrypt(nonce, json.dumps(_to_json(record)).encode(), _aad(record.version))
        envelope = {
            "format": FORMAT,
            "version": record.version,
            "key": kid,
            "nonce": b64url_encode(nonce),
            "data": b64url_encode(data),
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    def open(self, raw: bytes) -> tuple[PageRecord, bool]:
        """The record in ``raw`` and whether it was sealed under an older secret (then re-seal it)."""
        try:
            envelope = json.loads(raw)
            version = envelope["version"]
            nonce, data = _unb64(envelope["nonce"]), _unb64(envelope["data"])
            if len(nonce) != _NONCE_BYTES:
                raise ValueError("not an AES-GCM nonce")  # AESGCM would raise it mid-open, not RecordError
            if envelope["format"] != FORMAT or not isinstance(version, int) or isinstance(version, bool):
                raise RecordError("the stored page settings have an unknown format")
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError("the stored page settings are not a sealed record") from exc
        for i, (kid, key) in enumerate(self._keys):
            if envelope.get("key") not in (kid, None):
                continue
            try:
                plain = AESGCM(key).decrypt(nonce, data, _aad(version))
            except InvalidTag:
                continue
            try:
                record = _from_json(json.loads(plain))
            except (ValueError, KeyError, TypeError) as exc:
                raise RecordError("the stored page settings do not parse") from exc
            if record.version != version:
                raise RecordError("the stored page settings do not match their envelope")
            return record, i > 0
        raise RecordError(
            "the stored page settings fail to open under every cookie secret (tampered, or sealed under a "
            "secret no longer configured)"
        )


def _derive(secret: Secret, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.reveal().encode())


def _kid(key: bytes) -> str:
    return hashlib.sha256(b"kid" + key).hexdigest()[:16]


def _aad(version: int) -> bytes:
    return _INFO + b"|" + str(version).encode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not base64 text")
    return b64url_decode(text)


# -- JSON -------------------------------------------------------------------------------------------------


def _to_json(record: PageRecord) -> dict[str, Any]:
    return asdict(record)


def _sso(raw: Mapping[str, Any]) -> PageSSO:
    return PageSSO(
        issuer_url=str(raw["issuer_url"]),
        client_id=str(raw["client_id"]),
        client_secret=str(raw["client_secret"]),
        scopes=tuple(str(s) for s in raw["scopes"]),
    )


def _draft(raw: Mapping[str, Any]) -> Draft:
    return Draft(_sso(raw["sso"]), str(raw["digest"]), float(raw["saved_at"]), str(raw["saved_by"]))


def _test(raw: Mapping[str, Any]) -> TestResult:
    return TestResult(
        digest=str(raw["digest"]),
        at=float(raw["at"]),
        by=str(raw["by"]),
        ok=bool(raw["ok"]),
        error=None if raw.get("error") is None else str(raw["error"]),
        user=str(raw.get("user", "")),
        claims={str(k): (None if v is None else str(v)) for k, v in raw.get("claims", {}).items()},
        headers=tuple((str(h), str(v)) for h, v in raw.get("headers", ())),
        passes_access=bool(raw.get("passes_access")),
        access_reason=None if raw.get("access_reason") is None else str(raw["access_reason"]),
        is_admin=bool(raw.get("is_admin")),
        admin_reason=None if raw.get("admin_reason") is None else str(raw["admin_reason"]),
        sub=str(raw.get("sub", "")),
        issuer=str(raw.get("issuer", "")),
    )


def _applied(raw: Mapping[str, Any]) -> Applied:
    sso = raw.get("sso")
    return Applied(
        enabled=bool(raw["enabled"]),
        sso=None if sso is None else _sso(sso),
        digest=None if raw.get("digest") is None else str(raw["digest"]),
        at=float(raw["at"]),
        by=str(raw["by"]),
    )


def _entry(raw: Mapping[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        float(raw["at"]), str(raw["by"]), str(raw["action"]), str(raw["detail"]), str(raw.get("sub", ""))
    )


def _pinned(raw: Mapping[str, Any]) -> Pinned:
    return Pinned(str(raw["issuer_url"]), str(raw["client_id"]))


def _registration(raw: Mapping[str, Any]) -> Registration:
    return Registration(
        str(raw["issuer_url"]),
        str(raw["client_id"]),
        str(raw.get("client_uri", "")),
        str(raw.get("access_token", "")),
        float(raw["at"]),
        str(raw["by"]),
    )


def _from_json(raw: Mapping[str, Any]) -> PageRecord:
    draft, test, applied, pinned = raw.get("draft"), raw.get("test"), raw.get("applied"), raw.get("pinned")
    registration = raw.get("registration")
    record = PageRecord(
        version=int(raw["version"]),
        draft=None if draft is None else _draft(draft),
        test=None if test is None else _test(test),
        applied=None if applied is None else _applied(applied),
        history=tuple(_entry(h) for h in raw.get("history", ())),
        pinned=None if pinned is None else _pinned(pinned),
        registration=None if registration is None else _registration(registration),
    )
    if record.pinned is None and record.applied is not None and record.applied.sso is not None:
        # A record written before ``pinned`` existed: what it has enabled is what an admin enabled.
        sso = record.applied.sso
        record = replace(record, pinned=Pinned(sso.issuer_url, sso.client_id))
    return record
