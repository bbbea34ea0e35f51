"""The login URL of a step-up challenge, and what /oauth2/start reads of it (the round trip: tests/system/gate/
test_routes.py)."""

from __future__ import annotations

import pytest
from yarl import URL

from proxy.signin.login import login_url, start_methods


def test_a_login_url_names_the_methods_only_when_a_get_would_not_ask_the_same():
    assert login_url("/api/x?a=1") == "/oauth2/start?rd=/api/x?a%3D1"
    assert login_url("/api/x", ("GET",)) == login_url("/api/x", ("HEAD",)) == login_url("/api/x")
    assert URL(login_url("/api/x", ("DELETE",))).query["method"] == "DELETE"
    assert URL(login_url("/api/x", ("POST", "DELETE"))).query["method"] == "POST,DELETE"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("GET",)),
        ("", ("GET",)),
        ("DELETE", ("GET", "DELETE")),
        ("post, delete", ("GET", "POST", "DELETE")),
        ("GET", ("GET",)),
        ("DELETE,<script>,a b,", ("GET", "DELETE")),  # not method tokens: ignored
        ("A,B,C,D,E,F", ("GET", "A", "B", "C", "D")),  # a few at most
        ("VERYLONGMETHODNAMEX", ("GET",)),
    ],
)
def test_start_asks_for_the_landing_get_and_the_methods_named(value, expected):
    assert start_methods(value) == expected
