"""Console roles from groups and emails (``proxy.auth.roles``)."""

from __future__ import annotations

from proxy.auth.roles import RoleRules
from proxy.config.model import RoleRule, RolesSettings

RULES = RolesSettings(
    rules=(
        RoleRule("admin", groups=("console-admins",)),
        RoleRule("auditor", emails=("boss@example.com",)),
        RoleRule("editor", groups=("staff", "console-admins")),
    ),
    default=("viewer",),
)


def roles(claims: dict, groups_claim: str = "groups") -> tuple[str, ...]:
    return RoleRules(RULES, groups_claim).of(claims)


def test_every_matching_rule_adds_its_role_once_in_the_order_of_the_rules():
    claims = {"groups": ["staff", "console-admins"], "email": "Boss@Example.com", "email_verified": True}
    assert roles(claims) == ("admin", "auditor", "editor")


def test_default_applies_only_when_no_rule_matched():
    assert roles({"groups": ["others"], "email": "x@example.com"}) == ("viewer",)
    assert roles({}) == ("viewer",)
    assert roles({"groups": ["staff"]}) == ("editor",)
    assert RoleRules(RolesSettings(), "groups").of({"groups": ["x"]}) == ()


def test_groups_are_read_from_the_configured_claim_and_compared_exactly():
    assert roles({"cognito:groups": ["console-admins"]}, "cognito:groups") == ("admin", "editor")
    assert roles({"groups": "console-admins"}) == ("admin", "editor")  # one group as a string
    for near in (["Console-Admins"], ["console-admins "], ["staff,console-admins"], ["console-admins\u200b"]):
        assert roles({"groups": near}) == ("viewer",), near


def test_an_email_counts_only_when_the_provider_vouches_for_it():
    assert roles({"email": "boss@example.com", "email_verified": False}) == ("viewer",)
    assert roles({"email": "boss@example.com", "email_verified": "false"}) == ("viewer",)
    assert roles({"email": "boss@example.com"}) == ("auditor",)  # silent: as the access rules read it
    assert roles({"email": "boss@example.com@evil.test", "email_verified": True}) == ("viewer",)
