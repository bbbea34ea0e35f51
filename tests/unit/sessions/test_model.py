"""The session records (``proxy.sessions.model``): what is stored, how it is sealed, the cached copies."""

from __future__ import annotations

import json
import sys

import pytest

from proxy.sessions import CompactClaims, PendingLogin, Session
from proxy.sessions.model import seal, unseal


def test_cached_copies_keep_every_claim_but_the_token_only_ones_in_less_memory():
    def session(user: str) -> Session:
        claims = json.loads(
            json.dumps(
                {"sub": user, "email": f"{user}@example.com", "groups": ["a", "b"], "iss": "https://idp.example",
                 "aud": "console", "exp": 1, "nonce": "n-" + user, "at_hash": "h", "c_hash": "c", "s_hash": "s"}
            )
        )  # fmt: skip
        return Session(
            id=user, key=b"k" * 32, claims=claims, id_token="id", access_token="at", refresh_token="rt",
            access_expires_at=None, created_at=0.0, issuer="https://idp.example", client_id="console",
        )  # fmt: skip

    one, two = session("alice").without_tokens(), session("bob").without_tokens()
    expected = {k: v for k, v in session("alice").claims.items() if k not in ("nonce", "at_hash", "c_hash", "s_hash")}
    assert isinstance(one.claims, CompactClaims)
    assert dict(one.claims) == expected and one.claims == expected
    assert one.claims.get("groups") == ["a", "b"] and one.claims.get("missing", "d") == "d"
    assert "email" in one.claims and "nonce" not in one.claims and len(one.claims) == len(expected)
    with pytest.raises(KeyError):
        one.claims["nonce"]
    assert one.subject == "alice" and one.id_token == "" and one.tokens_elided
    # What every session shares is stored once.
    assert one.claims["iss"] is two.claims["iss"] and one.issuer is two.issuer
    assert one.claims._index is two.claims._index  # type: ignore[attr-defined]
    assert sys.getsizeof(one.claims) + sys.getsizeof(one.claims._values) <= sys.getsizeof(expected) / 2  # type: ignore[attr-defined]
    assert json.loads(json.dumps(one.to_record()["c"])) == expected


def stored_session() -> Session:
    return Session(
        id="sid", key=b"k" * 32, claims={"sub": "alice", "groups": ["a"]}, id_token="id", access_token="at",
        refresh_token="rt", access_expires_at=1_700_000_300.0, created_at=1_700_000_000.0,
        issuer="https://idp.example", client_id="console", refreshed_at=1_700_000_100.0,
    )  # fmt: skip


def test_a_session_record_round_trips_through_json():
    session = stored_session()
    record = json.loads(json.dumps(session.to_record()))
    assert Session.from_record(session.ticket, record) == session


def test_a_record_stored_by_an_earlier_version_still_loads():
    """Records written before ``extra`` was dropped carry an ``"x"`` entry; sessions in Redis outlive an upgrade."""
    session = stored_session()
    record = {**session.to_record(), "x": {}}
    assert Session.from_record(session.ticket, record) == session


def test_a_pending_login_record_round_trips_through_json():
    login = PendingLogin("nonce", "verifier", "/back?x=1", "https://idp.example", "console", 1_700_000_000.0)
    assert PendingLogin.from_record(json.loads(json.dumps(login.to_record()))) == login


def test_sealed_records_open_only_with_their_key_and_context():
    sealed = seal(b"k" * 32, b"plaintext", b"context")
    assert b"plaintext" not in sealed
    assert unseal(b"k" * 32, sealed, b"context") == b"plaintext"
    assert unseal(b"x" * 32, sealed, b"context") is None
    assert unseal(b"k" * 32, sealed, b"another") is None
    assert unseal(b"k" * 32, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"context") is None
    assert unseal(b"k" * 32, b"short", b"context") is None


def token_session(**changes: object) -> Session:
    """Access token 300 s (issued at 1000), ID token 600 s (iat 1000), with a refresh token."""
    values: dict = dict(
        id="sid", key=b"k" * 32, claims={"sub": "alice", "iat": 1000, "exp": 1600}, id_token="id",
        access_token="at", refresh_token="rt", access_expires_at=1300.0, created_at=1000.0, issuer="https://idp",
        client_id="console", refreshed_at=1000.0,
    )  # fmt: skip
    values.update(changes)
    return Session(**values)


def test_a_refresh_is_due_near_the_access_tokens_expiry_and_with_pass_tokens_near_the_id_tokens():
    session = token_session(access_expires_at=2000.0)  # the access token outlives the ID token
    assert not session.refresh_due(1400.0) and not session.refresh_due(1400.0, id_token=True)
    assert not session.refresh_due(1540.0) and session.refresh_due(1540.0, id_token=True)  # the last minute of 600 s
    assert session.refresh_due(1940.0)
    assert not token_session(refresh_token=None).refresh_due(1599.0, id_token=True)  # nothing to refresh with


def test_a_passed_token_has_expired_from_its_expiry_on():
    session = token_session()
    assert not session.tokens_expired(1299.9, access_token=True, id_token=True)
    assert session.tokens_expired(1300.0, access_token=True, id_token=False)
    assert not session.tokens_expired(1300.0, access_token=False, id_token=True)
    assert session.tokens_expired(1600.0, access_token=False, id_token=True)
    assert not token_session(access_expires_at=None).tokens_expired(10**10, access_token=True, id_token=False)
    assert session.tokens_expire_at(access_token=True, id_token=True) == 1300.0
    assert session.tokens_expire_at(access_token=False, id_token=True) == 1600.0
    assert token_session(access_expires_at=None).tokens_expire_at(access_token=True, id_token=False) is None


def test_a_session_tells_when_and_how_its_user_signed_in_from_the_id_tokens_claims():
    def session(**claims: object) -> Session:
        return Session(
            id="s", key=b"k" * 32, claims={"sub": "u", **claims}, id_token="id", access_token="at",
            refresh_token=None, access_expires_at=None, created_at=0.0, issuer="https://idp", client_id="c",
        )  # fmt: skip

    strong = session(auth_time=1_700_000_000, acr="urn:mfa")
    assert (strong.auth_time, strong.acr) == (1_700_000_000.0, "urn:mfa")
    assert (strong.without_tokens().auth_time, strong.without_tokens().acr) == (1_700_000_000.0, "urn:mfa")
    odd = session(auth_time="1700000000", acr=["urn:mfa"])
    assert (odd.auth_time, odd.acr) == (None, None)
    assert (session().auth_time, session(auth_time=True).auth_time) == (None, None)


def test_a_refresh_keeps_the_sign_in_claims_of_the_sign_in():
    from proxy.sessions.model import keep_sign_in

    previous = {"sub": "u", "auth_time": 100, "acr": "urn:pwd", "amr": ["pwd"], "name": "Old"}
    refreshed = {"sub": "u", "auth_time": 200, "acr": "urn:mfa", "amr": ["otp"], "name": "New"}
    assert keep_sign_in(previous, refreshed) == {"sub": "u", "auth_time": 100, "acr": "urn:pwd", "amr": ["pwd"],
                                                 "name": "New"}  # fmt: skip
    # A sign-in that said nothing of them: a refreshed token cannot add them either.
    assert keep_sign_in({"sub": "u"}, {"sub": "u", "auth_time": 200, "acr": "urn:mfa"}) == {"sub": "u"}
