"""The route rules (pure): which routes a request hits under every reading of its path and method, who they
admit, what they ask of a sign-in, and how that is said (RFC 9470) and shown."""

from __future__ import annotations

import re

import pytest

from proxy.auth import routes
from proxy.auth.paths import normalise
from proxy.auth.routes import RecentDenials, Requirement
from proxy.config.model import AccessSettings, Route, SkipRule

ADMINS = AccessSettings(allowed_groups=("admins",))
TOP = AccessSettings(allowed_email_domains=("example.com",))
TABLE = (
    Route(0, None, re.compile(r"^/admin(/|$)"), ADMINS),
    Route(1, frozenset({"DELETE"}), re.compile(r"^/api/"), ADMINS),
    Route(2, frozenset({"GET", "HEAD"}), re.compile(r"^/keys/"), None, 900.0, ("urn:mfa", "urn:hwk")),
    Route(3, None, re.compile(r"^/"), AccessSettings()),
)


def names(method: str | None, target: str | None) -> tuple[str, ...]:
    methods = None if method is None else (method,)
    picked = routes.hits(TABLE, methods, None if target is None else normalise(target))
    return routes.names(picked)


def test_matches_is_the_rule_of_skip_auth_and_routes_alike():
    rule = SkipRule(frozenset({"GET"}), re.compile("^/static/"), "GET ^/static/")
    assert routes.matches(rule, "GET", "/static/x")
    assert not routes.matches(rule, "POST", "/static/x")
    assert not routes.matches(rule, None, "/static/x")  # an unknown method is named by no list
    assert routes.matches(TABLE[0], None, "/admin/x")  # a rule without methods takes any


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", "/admin/users", ("routes[0]",)),
        ("GET", "/admin", ("routes[0]",)),
        ("GET", "/administrator", ("routes[3]",)),  # the first match wins, in the file's order
        ("DELETE", "/api/x", ("routes[1]",)),
        ("GET", "/api/x", ("routes[3]",)),
        ("HEAD", "/keys/a", ("routes[2]",)),
        ("GET", "/%61dmin/", ("routes[0]",)),  # judged in the normal form
        ("GET", "/x/../admin/", ("routes[0]",)),
        ("GET", "//admin/", ("routes[0]",)),
        # Several readings: each picks its own route, and the request must pass them all.
        ("GET", "/admin%2Fusers", ("routes[3]", "routes[0]")),
        ("GET", "/admin;x/users", ("routes[3]", "routes[0]")),
        ("GET", "/admin%3Fx", ("routes[3]", "routes[0]")),
    ],
)
def test_each_reading_of_a_path_picks_its_first_route(method, target, expected):
    assert names(method, target) == expected


def test_a_path_no_route_matches_is_the_top_level_access():
    table = TABLE[:3]
    assert routes.names(routes.hits(table, ("GET",), normalise("/reports"))) == ("access",)
    assert routes.names(routes.hits(table, ("GET",), normalise("/admin%2Fx"))) == ("access", "routes[0]")


def test_an_unknown_path_may_be_any_route_and_an_unknown_method_any_method():
    assert names("GET", None) == ("routes[0]", "routes[2]", "routes[3]", "access")
    assert names(None, None) == ("routes[0]", "routes[1]", "routes[2]", "routes[3]", "access")
    assert names(None, "/api/x") == ("routes[1]", "routes[3]")


@pytest.mark.parametrize(
    ("method", "headers", "query", "expected"),
    [
        ("GET", {}, "", ("GET",)),
        ("delete", {}, "", ("DELETE",)),  # a parser that lets lower case through: judged as the console would
        ("POST", {}, "", ("POST",)),
        ("POST", {"X-HTTP-Method-Override": "delete"}, "", ("POST", "DELETE")),
        ("POST", {"X-HTTP-Method": "PUT", "X-Method-Override": "PATCH"}, "", ("POST", "PUT", "PATCH")),
        ("POST", {}, "a=1&_method=DELETE", ("POST", "DELETE")),
        ("POST", {}, "_method=", ("POST",)),
        ("GET", {"X-HTTP-Method-Override": "DELETE"}, "_method=DELETE", ("GET",)),  # frameworks honour POST only
    ],
)
def test_method_readings_include_the_overrides_frameworks_honour(method, headers, query, expected):
    assert routes.method_readings(method, headers, query) == expected


def test_refusal_names_the_first_route_that_says_no():
    claims = {"sub": "u", "email": "u@example.com", "groups": ["staff"]}
    picked = routes.hits(TABLE, ("GET",), normalise("/admin%2Fx"))
    refused = routes.refusal(claims, picked, TOP)
    assert refused is not None and refused[0] is TABLE[0] and "not in the list" in refused[1]
    assert routes.refusal({**claims, "groups": ["admins"]}, picked, TOP) is None
    # A route without access of its own uses the top-level access.
    keys = routes.hits(TABLE, ("GET",), normalise("/keys/x"))
    assert routes.refusal({"sub": "u", "email": "u@elsewhere.org"}, keys, TOP) is not None


# --------------------------------------------------------------------------------------------------
# Requirement


NOW = 1_800_000_000.0


def test_a_route_that_asks_nothing_of_a_sign_in_has_no_requirement():
    assert routes.requirement([None, TABLE[0]]) is None


def test_a_route_requirement_is_met_by_its_acr_and_a_recent_enough_auth_time():
    need = routes.requirement([TABLE[2]])
    assert need == Requirement(("routes[2]",), (("urn:mfa", "urn:hwk"),), 900.0)
    assert need.shortfall({"acr": "urn:hwk", "auth_time": NOW - 900}, NOW, 0) is None
    assert need.shortfall({"acr": "urn:hwk", "auth_time": NOW - 950}, NOW, 60) is None  # within the clock skew
    assert need.shortfall({"acr": "urn:hwk", "auth_time": NOW - 901}, NOW, 0) == "a sign-in within the last 15m"


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"auth_time": NOW}, "a sign-in with urn:mfa or urn:hwk (your identity provider did not say how you "
         "signed in)"),
        ({"acr": "urn:pwd", "auth_time": NOW}, "a sign-in with urn:mfa or urn:hwk (your identity provider signed "
         "you in with urn:pwd)"),
        ({"acr": ["urn:mfa"], "auth_time": NOW}, "did not say how you signed in"),
        ({"acr": "urn:mfa"}, "a sign-in within the last 15m (your identity provider did not say when you signed in)"),
        ({"acr": "urn:mfa", "auth_time": "1800000000"}, "did not say when you signed in"),
        ({"acr": "urn:mfa", "auth_time": True}, "did not say when you signed in"),
    ],
)  # fmt: skip
def test_a_shortfall_says_what_is_missing(claims, words):
    need = routes.requirement([TABLE[2]])
    assert need is not None
    assert words in (need.shortfall(claims, NOW, 0) or "")


def test_several_routes_need_an_acr_every_one_accepts_and_the_shortest_max_age():
    a = Route(0, None, re.compile("^/"), None, 3600.0, ("urn:mfa", "urn:hwk"))
    b = Route(1, None, re.compile("^/"), None, 600.0, ("urn:hwk", "urn:pki"))
    need = routes.requirement([a, None, b])
    assert need is not None and need.routes == ("routes[0]", "routes[1]")
    assert (need.acr_values, need.max_age, need.satisfiable) == (("urn:hwk",), 600.0, True)
    assert need.shortfall({"acr": "urn:mfa", "auth_time": NOW}, NOW, 0) is not None
    c = Route(2, None, re.compile("^/"), None, None, ("urn:other",))
    impossible = routes.requirement([a, c])
    assert impossible is not None and not impossible.satisfiable
    assert "at once" in impossible.words()


def test_the_authorization_request_asks_for_the_acr_and_a_fresh_sign_in():
    assert Requirement(("r",), (("urn:a", "urn:b"),)).authorize_params() == {"acr_values": "urn:a urn:b"}
    assert Requirement(("r",), (), 900.0).authorize_params() == {"max_age": "900", "prompt": "login"}


def test_the_rfc_9470_challenge_and_details():
    need = Requirement(("r",), (("urn:a", "urn:b"),), 300.0)
    assert need.challenge('a "quoted" \\ description\n') == (
        'Bearer error="insufficient_user_authentication", error_description="a quoted  description", '
        'acr_values="urn:a urn:b", max_age="300"'
    )
    assert need.details() == {"acr_values": ["urn:a", "urn:b"], "max_age": 300}
    assert Requirement(("r",), (), 60.0).challenge("x").endswith('error_description="x", max_age="60"')


def test_a_requirement_travels_in_a_pending_login_as_text():
    need = Requirement(("routes[2]", "routes[5]"), (("a", "b"), ("b",)), 120.0)
    assert Requirement.from_text(need.to_text()) == need


@pytest.mark.parametrize(("seconds", "text"), [(900, "15m"), (3600, "1h"), (86400 * 2, "2d"), (90, "90s"), (5, "5s")])
def test_durations_are_said_in_their_largest_whole_unit(seconds, text):
    assert routes.duration(seconds) == text


# --------------------------------------------------------------------------------------------------
# The table and the denials


def test_the_table_lists_the_routes_in_order_then_the_top_level_access():
    rows = routes.table(TABLE[:3], TOP)
    assert [r["route"] for r in rows] == ["routes[0]", "routes[1]", "routes[2]", "access"]
    assert rows[0]["access"] == "groups admins"
    assert rows[2]["access"] == "email domains example.com (the top-level access)"
    assert (rows[2]["methods"], rows[2]["max_age"], rows[2]["acr_values"]) == (["GET", "HEAD"], "15m",
                                                                               ["urn:mfa", "urn:hwk"])  # fmt: skip
    assert routes.sign_in_words(rows[2]) == "acr urn:mfa or urn:hwk; at most 15m old"
    assert routes.sign_in_words(rows[0]) == "any"
    assert rows[3] == {"route": "access", "path": None, "methods": None, "access": "email domains example.com",
                       "max_age": None, "acr_values": None}  # fmt: skip
    assert routes.table((), AccessSettings())[0]["access"] == "anyone who signs in"


def test_recent_denials_are_few_newest_first_and_hold_no_query_or_token():
    denials = RecentDenials(size=3)
    for i in range(5):
        denials.add("access_denied", ("routes[0]",), "GET", f"/admin/{i}", {"sub": "s", "email": "e@example.com"})
    latest = denials.latest()
    assert [d.path for d in latest] == ["/admin/4", "/admin/3", "/admin/2"]
    assert latest[0].user == "e@example.com" and latest[0].routes == ("routes[0]",)


def test_what_a_table_picked_is_remembered_for_that_table_only_and_within_bounds(monkeypatch):
    memo = routes._Picked()
    monkeypatch.setattr(routes, "_PICKED", memo)
    target = normalise("/admin/x")
    assert routes.hits(TABLE, ("GET",), target) == (TABLE[0],)
    assert memo._entries == {(("GET",), ("/admin/x",)): (TABLE[0],)}
    assert routes.hits(TABLE, ("GET",), normalise("/admin/x")) == (TABLE[0],)  # found again: one lookup
    # Another table (a reload) starts afresh.
    other = (Route(0, None, re.compile("^/admin/"), AccessSettings()),)
    assert routes.hits(other, ("GET",), target) == (other[0],)
    assert list(memo._entries.values()) == [(other[0],)]
    # Long paths are not kept, and the memory is emptied when full rather than grown.
    long = normalise("/" + "a" * (routes._Picked.MAX_PATH + 1))
    assert routes.hits(other, ("GET",), long) == (None,)
    assert len(memo._entries) == 1
    monkeypatch.setattr(routes._Picked, "MAX_ENTRIES", 3)
    for i in range(7):
        routes.hits(other, ("GET",), normalise(f"/p{i}"))
    assert len(memo._entries) <= 3
