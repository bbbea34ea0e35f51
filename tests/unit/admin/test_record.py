"""The settings page's record: sealing, rotation, tampering, rollback, and what it applies (pure)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from proxy.admin.record import (
    TEST_VALID_FOR,
    Applied,
    Draft,
    Keys,
    PageRecord,
    PageSSO,
    Pinned,
    RecordError,
    Registration,
    TestResult,
)
from proxy.b64 import b64url_decode, b64url_encode
from proxy.config.model import Secret

OLD, NEW = Secret("o" * 8 + "old-secret-0123456789abcdef"), Secret("n" * 8 + "new-secret-0123456789abcdef")
SSO = PageSSO("https://idp.example.com", "console", "s3cr3t-value", ("openid", "profile", "email"))
FIVE = ("preferred_username", "email", "given_name", "family_name", "name")


def record(version: int = 3) -> PageRecord:
    keys = Keys([NEW])
    draft = Draft(SSO, keys.digest(SSO), 1_700_000_000.0, "break-glass from 10.0.0.1")
    applied = Applied(True, SSO, draft.digest, 1_700_000_100.0, "ada@example.com")
    pinned = Pinned(SSO.issuer_url, SSO.client_id)
    return PageRecord(version=version, draft=draft, applied=applied, pinned=pinned).with_entry(
        "ada@example.com", "enabled", "x", now=1_700_000_200.0, sub="u-ada"
    )


def test_a_sealed_record_opens_to_the_same_record_and_shows_no_secret() -> None:
    keys = Keys([NEW])
    sealed = keys.seal(record())
    assert b"s3cr3t" not in sealed and b"console" not in sealed
    opened, stale = keys.open(sealed)
    assert opened == record() and stale is False


def test_a_record_sealed_under_an_older_secret_opens_and_asks_to_be_resealed() -> None:
    sealed = Keys([OLD]).seal(record())
    opened, stale = Keys([NEW, OLD]).open(sealed)
    assert opened == record() and stale is True
    with pytest.raises(RecordError, match="fail to open"):
        Keys([NEW]).open(sealed)  # the old secret dropped before a re-seal: refused, never guessed


@pytest.mark.parametrize("field", ["data", "nonce"])
def test_a_flipped_bit_is_refused(field: str) -> None:
    envelope = json.loads(Keys([NEW]).seal(record()))
    raw = bytearray(b64url_decode(envelope[field]))
    raw[len(raw) // 2] ^= 0x01
    envelope[field] = b64url_encode(bytes(raw))
    with pytest.raises(RecordError):
        Keys([NEW]).open(json.dumps(envelope).encode())


def test_the_clear_version_is_bound_into_the_seal() -> None:
    """A stored record cannot be relabelled to win or lose a compare-and-set."""
    envelope = json.loads(Keys([NEW]).seal(record(version=3)))
    envelope["version"] = 9
    with pytest.raises(RecordError):
        Keys([NEW]).open(json.dumps(envelope).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": 1}',
        b'{"format": 1, "version": true}',
        b'{"format": 1, "version": 9, "key": null, "nonce": "AAAA", "data": "AAAA"}',  # a 3-byte nonce
    ],
)
def test_garbage_is_refused_as_not_a_record(raw: bytes) -> None:
    with pytest.raises(RecordError):
        Keys([NEW]).open(raw)


def test_a_record_from_before_pins_existed_pins_what_it_enabled() -> None:
    """A record sealed by an older sidecar has no ``pinned``: what it enabled is what an admin enabled, so an
    upgrade does not hand break-glass a free first setup."""
    keys = Keys([NEW])
    opened, _ = keys.open(keys.seal(dataclasses.replace(record(), pinned=None)))
    assert opened.pinned == Pinned(SSO.issuer_url, SSO.client_id)
    disabled = dataclasses.replace(record(), applied=Applied(False, None, None, 1.0, "x"), pinned=None)
    assert keys.open(keys.seal(disabled))[0].pinned is None


def test_the_digest_names_the_content_and_is_keyed() -> None:
    keys = Keys([NEW])
    assert keys.digest(SSO) == keys.digest(dataclasses.replace(SSO))
    assert keys.digest(SSO) != keys.digest(dataclasses.replace(SSO, client_secret="other"))
    assert keys.digest(SSO) != keys.digest(dataclasses.replace(SSO, scopes=("openid",)))
    assert keys.digest(SSO) != Keys([OLD]).digest(SSO)  # no offline guessing of the secret from the digest


def test_what_a_record_applies() -> None:
    assert PageRecord().sso_override() is None
    disabled = dataclasses.replace(record(), applied=Applied(False, None, None, 1.0, "x"))
    assert disabled.sso_override() == {"enabled": False}
    assert record().sso_override() == {
        "enabled": True,
        "issuer_url": "https://idp.example.com",
        "client_id": "console",
        "client_secret": "s3cr3t-value",
        "scopes": ["openid", "profile", "email"],
    }


def _test_result(**changes: object) -> TestResult:
    base = TestResult(
        digest=record().draft.digest,  # type: ignore[union-attr]
        at=time.time(),
        by="x",
        ok=True,
        claims={c: "v" for c in FIVE},
        passes_access=True,
        is_admin=True,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"digest": "another"}, "saved again after the test"),
        ({"ok": False}, "failed"),
        ({"at": time.time() - TEST_VALID_FOR - 1}, "more than 60 minutes old"),
        ({"claims": {c: "v" for c in FIVE if c != "family_name"}}, "did not send family_name"),
        ({"is_admin": False}, "not an admin"),
    ],
)
def test_enable_needs_a_fresh_successful_test_of_this_draft_by_an_admin_with_every_claim(
    changes: dict[str, object], reason: str | None
) -> None:
    draft = record().draft
    assert draft is not None
    found = _test_result(**changes).enables(draft, FIVE)
    assert found is None if reason is None else reason in (found or "")


def test_history_keeps_the_newest_entries_first_and_is_bounded() -> None:
    r = PageRecord()
    for i in range(60):
        r = r.with_entry("x", "saved", str(i))
    assert len(r.history) == 50
    assert [e.detail for e in r.history[:2]] == ["59", "58"]


def test_a_registration_and_a_test_users_admin_reason_are_sealed_with_the_record() -> None:
    """RFC 7592's registration access token and client URI are kept for a later update of the URIs: inside the
    seal, never in clear, never in a repr (a log line or a traceback)."""
    made = Registration(SSO.issuer_url, "reg-client", "https://idp.example.com/reg/reg-client", "rat-value-123",
                        1_700_000_300.0, "ada@example.com")  # fmt: skip
    test = TestResult("d", 1.0, "ada", True, admin_reason="an admin needs ...; the provider sent no groups")
    full = dataclasses.replace(record(), registration=made, test=test)
    keys = Keys([NEW])
    sealed = keys.seal(full)
    assert b"rat-value-123" not in sealed and b"/reg/reg-client" not in sealed
    assert keys.open(sealed)[0] == full
    assert "rat-value-123" not in repr(made) and "/reg/" not in repr(made)


def test_a_record_without_a_registration_opens_as_before() -> None:
    keys = Keys([NEW])
    assert keys.open(keys.seal(record()))[0].registration is None
