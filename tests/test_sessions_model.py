"""The session records (``proxy.sessions.model``): the compact copies the in-process cache keeps."""

from __future__ import annotations

import json
import sys

import pytest

from proxy.sessions import CompactClaims, Session


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
