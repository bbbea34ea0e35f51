"""Claims -> identity headers, and stripping identity headers a client sends itself."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.auth.identity import IdentityHeaders, header_key
from proxy.config.model import DEFAULT_HEADERS
from proxy.errors import UnusableIdentity


def make_identity(mapping: tuple[tuple[str, str], ...] = DEFAULT_HEADERS, separator: str = ",") -> IdentityHeaders:
    return IdentityHeaders(mapping, separator)


def test_header_key_folds_case_and_underscores() -> None:
    assert header_key("X_Forwarded_USER") == "x-forwarded-user"
    assert header_key("x-forwarded-user") == "x-forwarded-user"


def test_header_keys_are_remembered_only_up_to_a_bound() -> None:
    """Keys are memoised for the names clients really send; a client inventing thousands of names gets
    correct keys, and the memo stays bounded."""
    from proxy.auth import identity

    invented = [f"X_Made.Up-{i}" for i in range(3 * identity._KEYS_MAX)]
    assert [header_key(n) for n in invented] == [f"x-made-up-{i}" for i in range(3 * identity._KEYS_MAX)]
    assert len(identity._KEYS) <= identity._KEYS_MAX
    assert header_key("X_Forwarded_USER") == "x-forwarded-user"  # still right once the memo is full


@pytest.mark.parametrize(
    "name",
    [
        "X-Forwarded-User",
        "x-forwarded-user",
        "X-FORWARDED-EMAIL",
        "X_Forwarded_Groups",
        "x_forwarded_name",
        "X-Forwarded_Given-Name",
        "x-forwarded-family_name",
        "X-Forwarded-Access-Token",
        "x_forwarded_access_token",
        "X-Forwarded-Preferred-Username",
        "X-Auth-Request-User",
        "x_auth_request_email",
        "X-AUTH-REQUEST-ANYTHING",
        "Remote-User",
        "remote_user",
    ],
)
def test_strip_removes_every_spelling_of_an_identity_header(name: str) -> None:
    identity = make_identity((("Remote-User", "sub"),))
    headers = CIMultiDict([("Accept", "*/*"), (name, "admin"), (name, "root"), ("Cookie", "a=1")])
    identity.strip(headers)
    assert list(headers.items()) == [("Accept", "*/*"), ("Cookie", "a=1")]


def test_strip_also_removes_defaults_when_a_custom_mapping_replaces_them() -> None:
    """A console built for the default headers must not be fooled after an operator remaps them."""
    identity = make_identity((("X-User", "sub"),))
    headers = CIMultiDict([("X-Forwarded-Email", "boss@example.com"), ("X_User", "boss"), ("X-Other", "1")])
    identity.strip(headers)
    assert list(headers.items()) == [("X-Other", "1")]


def test_strip_keeps_unrelated_headers() -> None:
    identity = make_identity()
    original = [
        ("Host", "console"),
        ("Authorization", "Bearer x"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Users", "not quite"),
        ("X-Auth-Request", "no trailing dash"),
        ("User-Agent", "test"),
    ]
    headers = CIMultiDict(original)
    identity.strip(headers)
    assert list(headers.items()) == original


def test_values_follow_mapping_order_and_skip_missing_claims() -> None:
    identity = make_identity()
    claims = {"preferred_username": "alice", "email": "alice@example.com", "groups": ["admins", "ops"]}
    assert list(identity.values(claims)) == [
        ("X-Forwarded-User", "alice"),
        ("X-Forwarded-Email", "alice@example.com"),
        ("X-Forwarded-Groups", "admins,ops"),
    ]


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (None, None),
        ([], None),
        ([None], None),
        ("", None),
        ({"nested": "object"}, None),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (1.5, "1.5"),
        (["a", None, 2, True, {"x": 1}], "a;2;true"),
        ("Zoë 日本", "Zoë 日本"),
        ("Smith; John", "Smith; John"),  # the separator in a single value is not a list
    ],
)
def test_value_conversion(claim: object, expected: str | None) -> None:
    identity = make_identity((("X-Value", "v"),), separator=";")
    result = list(identity.values({"v": claim}))
    assert result == ([("X-Value", expected)] if expected is not None else [])


CONTROL_VALUES = [
    "alice\r\nX-Forwarded-User: admin",
    "ad\tmin",
    "x\x00y",
    "a\x7fb",
    "a\x85b",  # C1 NEL: a line break to some parsers
    "\r\n",
    ["ok", "x\n"],
]


@pytest.mark.parametrize("claim", CONTROL_VALUES)
def test_control_characters_are_refused_never_stripped(claim: object) -> None:
    """``ad<TAB>min`` must never become ``admin``: the value is refused, not cleaned."""
    identity = make_identity((("X-Value", "v"),))
    with pytest.raises(UnusableIdentity, match="control character"):
        identity.values({"v": claim})
    assert identity.problem({"v": claim}) == "the v claim contains a control character"


@pytest.mark.parametrize("claim", ["preferred_username", "email", "sub", "groups"])
def test_problem_checks_the_claims_the_sidecar_reads_even_when_not_forwarded(claim: str) -> None:
    identity = make_identity((("X-Other", "other"),))
    assert identity.problem({claim: "ad\tmin"}) == f"the {claim} claim contains a control character"


def test_problem_leaves_other_claims_alone() -> None:
    """OIDC Core allows line breaks in e.g. address.formatted; such claims are never forwarded."""
    identity = make_identity()
    claims = {"sub": "1", "address": {"formatted": "1 Main St\nTown"}, "note": "a\nb", "preferred_username": "José"}
    assert identity.problem(claims) is None
    assert list(identity.values(claims)) == [("X-Forwarded-User", "José")]


@pytest.mark.parametrize("groups", [["admins", "ops,admins"], "ops,admins"])
def test_a_group_holding_the_separator_is_refused(groups: object) -> None:
    """It would read as two groups at the console."""
    identity = make_identity()
    assert identity.problem({"groups": groups}) == "a value of the groups claim contains the list separator ','"
    with pytest.raises(UnusableIdentity, match="','"):
        identity.values({"groups": groups})


def test_namespaced_and_url_claims_are_looked_up_literally() -> None:
    identity = make_identity(
        (
            ("X-Groups", "cognito:groups"),
            ("X-Roles", "https://example.com/roles"),
            ("X-Dotted", "realm.roles"),
        )
    )
    claims = {
        "cognito:groups": ["g1", "g2"],
        "https://example.com/roles": ["r1"],
        "cognito": {"groups": ["wrong"]},
        "realm": {"roles": ["wrong"]},
    }
    assert list(identity.values(claims)) == [("X-Groups", "g1,g2"), ("X-Roles", "r1")]


def test_no_claims_no_headers() -> None:
    assert make_identity().values({}) == ()


@pytest.mark.parametrize(
    "name", ["X.Forwarded.User", "X~Forwarded~User", "x|forwarded|user", "X-Forwarded.User", "X*Forwarded+User"]
)
def test_every_punctuation_spelling_of_an_identity_header_is_stripped(name):
    """CGI-style servers turn any punctuation into "_", so all of these could reach the console as the user."""
    headers = CIMultiDict({name: "mallory", "Accept": "text/html"})
    IdentityHeaders(DEFAULT_HEADERS).strip(headers)
    assert list(headers.keys()) == ["Accept"]


def test_the_headers_of_long_lived_claims_are_remembered_and_of_plain_dicts_not() -> None:
    """The session cache's compact claims get their headers built once; a plain dict (a bearer token's
    claims) is read afresh every time, so changing it changes the headers; the memo stays bounded."""
    from proxy.auth import identity as module
    from proxy.sessions.model import CompactClaims

    identity = make_identity()
    compact = CompactClaims.of({"sub": "u1", "preferred_username": "alice", "groups": ["a", "b"]})
    first = identity.values(compact)
    assert identity.values(compact) is first
    assert ("X-Forwarded-Groups", "a,b") in first

    plain = {"sub": "u1", "preferred_username": "alice"}
    assert identity.values(plain) == (("X-Forwarded-User", "alice"),)
    plain["preferred_username"] = "bob"
    assert identity.values(plain) == (("X-Forwarded-User", "bob"),)

    many = [
        CompactClaims.of({"sub": f"u{i}", "preferred_username": f"user{i}"}) for i in range(3 * module._REMEMBERED_MAX)
    ]
    assert [identity.values(c) for c in many] == [(("X-Forwarded-User", f"user{i}"),) for i in range(len(many))]
    assert len(identity._remembered) <= module._REMEMBERED_MAX


@pytest.mark.parametrize("other", ["X-Forwarded-User", "x-forwarded-user", "X_Forwarded_User", "X.Forwarded.User"])
def test_two_identity_headers_that_are_one_header_cannot_be_built(other: str) -> None:
    """The gate sets the identity headers with one ``update``, which would send both of two such names where
    setting them one by one kept the last: refused when built (the config refuses them first, naming the key)."""
    with pytest.raises(ValueError, match="twice"):
        IdentityHeaders((("X-Forwarded-User", "preferred_username"), (other, "email")))


def test_the_headers_written_beside_the_identity_must_be_stripped_and_distinct() -> None:
    identity = IdentityHeaders(DEFAULT_HEADERS, also_stripped=("X-Console-Assertion", "X-Console-Roles"))
    identity.check_also_written(("X-Console-Assertion", "X-Console-Roles", "X-Sso-Assertion"))  # all stripped
    with pytest.raises(ValueError, match="not stripped"):
        identity.check_also_written(("X-Console-Assertion", "X-Unstripped"))
    with pytest.raises(ValueError, match="twice"):
        identity.check_also_written(("X-Console-Assertion", "x_console_assertion"))
    with pytest.raises(ValueError, match="twice"):  # stripped, but an identity header already writes it
        identity.check_also_written(("X-Forwarded-Email",))
