"""The ``routes:`` list: what each key becomes, and every problem named ``routes[N].key``."""

from __future__ import annotations

import textwrap

import pytest

from proxy.config.load import parse_settings
from proxy.config.model import AccessSettings, Settings
from proxy.errors import ConfigError

ENV = {"COOKIE_SECRET": "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"}
BASE = """
public_url: "https://console.example.com"
upstream: "http://127.0.0.1:8888"
sso:
  issuer_url: "https://idp.example.com/realms/main"
  client_id: "console"
  client_secret: "client-secret-value"
session:
  cookie_secret: "${COOKIE_SECRET}"
"""


def parse(extra: str) -> Settings:
    return parse_settings(textwrap.dedent(BASE) + textwrap.dedent(extra), ENV)


def problems(extra: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(extra)
    return {p.key: p.message for p in info.value.problems}


def test_without_routes_the_table_is_empty():
    assert parse("").routes == ()


def test_every_key_of_a_route_is_read():
    s = parse(
        """
        access: {allowed_email_domains: [example.com], groups_claim: roles}
        routes:
          - path: "^/admin/"
            methods: [post, DELETE]
            access: {allowed_groups: [console-admins]}
            max_age: 15m
            acr_values: ["urn:mfa", "phr"]
          - path: "^/reports/"
            methods: [GET]
          - path: "^/open/"
            access: {}
        """
    )
    admin, reports, open_ = s.routes
    assert (admin.index, admin.name, admin.pattern.pattern) == (0, "routes[0]", "^/admin/")
    assert admin.methods == frozenset({"POST", "DELETE"})
    # A route's access replaces the top-level lists; its groups claim is the top-level one unless it names one.
    assert admin.access == AccessSettings(allowed_groups=("console-admins",), groups_claim="roles")
    assert (admin.max_age, admin.acr_values, admin.steps_up) == (900.0, ("urn:mfa", "phr"), True)
    assert reports.methods == frozenset({"GET", "HEAD"})  # GET brings HEAD
    assert (reports.access, reports.max_age, reports.acr_values, reports.steps_up) == (None, None, (), False)
    assert open_.access == AccessSettings(groups_claim="roles") and not open_.access.restricted


def test_acr_values_may_be_one_space_separated_string():
    (route,) = parse('routes: [{path: "^/x", acr_values: "urn:a urn:b"}]').routes
    assert route.acr_values == ("urn:a", "urn:b")


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ('routes: "^/admin/"', "routes", "must be a list of routes"),
        ("routes: [[1]]", "routes[0]", "must be a mapping with a path"),
        ("routes: [{methods: [GET]}]", "routes[0].path", "is required"),
        ('routes: [{path: "^/admin/("}]', "routes[0].path", "invalid regex"),
        ('routes: [{path: "^/a", acces: {}}]', "routes[0].acces", "unknown key (did you mean 'access'?)"),
        ('routes: [{path: "^/a", acr_value: [x]}]', "routes[0].acr_value", "did you mean 'acr_values'?"),
        ('routes: [{path: "^/a", methods: [DELTE]}]', "routes[0].methods[0]", "'DELTE' is not an HTTP method (did "
         "you mean 'DELETE'?)"),
        ('routes: [{path: "^/a", methods: []}]', "routes[0].methods", "is empty"),
        ('routes: [{path: "^/a", methods: {a: 1}}]', "routes[0].methods", "must be a list of strings"),
        ('routes: [{path: "^/a", access: [x]}]', "routes[0].access", "must be a mapping"),
        ('routes: [{path: "^/a", access: {allowed_group: [x]}}]', "routes[0].access.allowed_group",
         "did you mean 'allowed_groups'?"),
        ('routes: [{path: "^/a", access: {allowed_email_domains: ["not a domain"]}}]',
         "routes[0].access.allowed_email_domains[0]", "is not a domain name"),
        ('routes: [{path: "^/a", access: {allowed_emails: [nobody]}}]', "routes[0].access.allowed_emails[0]",
         "is not an email address"),
        ('routes: [{path: "^/a", max_age: soon}]', "routes[0].max_age", "must be a duration"),
        ('routes: [{path: "^/a", max_age: 0s}]', "routes[0].max_age", "must be a positive duration"),
        ('routes: [{path: "^/a", acr_values: ["urn:a", "q\\"uote"]}]', "routes[0].acr_values[1]",
         "printable ASCII without spaces"),
        ('routes: [{path: "^/a", acr_values: []}]', "routes[0].acr_values", "is empty"),
    ],
)  # fmt: skip
def test_each_problem_names_its_route_and_key(extra, key, message):
    found = problems(extra)
    assert key in found, found
    assert message in found[key]


def test_every_problem_of_every_route_is_reported_at_once():
    found = problems(
        """
        routes:
          - path: "^/ok/"
          - path: "("
            methods: [GETT]
          - path: "^/b/"
            max_age: -1m
            acr_values: ["a b"]
        """
    )
    assert set(found) >= {"routes[1].path", "routes[1].methods[0]", "routes[2].max_age", "routes[2].acr_values[0]"}


def test_routes_are_part_of_the_config_digest_so_a_change_reloads():
    a = parse('routes: [{path: "^/admin/", access: {allowed_groups: [a]}}]')
    b = parse('routes: [{path: "^/admin/", access: {allowed_groups: [b]}}]')
    assert a.digest != b.digest and a.routes != b.routes
