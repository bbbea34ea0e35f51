"""The access policy (``proxy.auth.policy``): who may pass once signed in, and why not, in words."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.auth.policy import GROUPS_MISSING, GROUPS_OVERAGE, GROUPS_UNREADABLE, NOT_ALLOWED, UNVERIFIED, denial_reason
from proxy.config.model import AccessSettings

DOMAIN = AccessSettings(allowed_email_domains=("company.com",))
EMAILS = AccessSettings(allowed_emails=("boss@partner.org",))
GROUPS = AccessSettings(allowed_groups=("admins",))
COGNITO = AccessSettings(allowed_groups=("console-admins",), groups_claim="cognito:groups")

# --------------------------------------------------------------------------------------------------
# proxy.auth.policy


def test_no_rules_lets_everyone_in():
    assert denial_reason({}, AccessSettings()) is None


@pytest.mark.parametrize("email", ["a@company.com", "A@Company.COM", "first.last+tag@company.com", "a@COMPANY.com"])
def test_email_domain_matches_exactly_and_case_insensitively(email: str):
    assert denial_reason({"email": email, "email_verified": True}, DOMAIN) is None


@pytest.mark.parametrize(
    "email",
    [
        "attacker@evil.com@company.com",
        '"attacker@evil.com"@company.com',
        "x@evilcompany.com",
        "x@company.com.evil.io",
        "x@sub.company.com",
        "x@company.com.",
        " x@company.com",
        "x@company.com ",
        "x@\uff43ompany.com",  # fullwidth c
        "x@company\uff0ecom",  # fullwidth full stop
        "company.com",
        "@company.com",
        "x@",
    ],
)
def test_email_domain_lookalikes_do_not_match(email: str):
    assert denial_reason({"email": email, "email_verified": True}, DOMAIN) is not None


@pytest.mark.parametrize("flag", [False, "false", "False", 0, "no", None, True, "true"])
def test_only_an_unverified_email_is_refused(flag: Any):
    claims: dict[str, Any] = {"email": "a@company.com"}
    if flag is not None:
        claims["email_verified"] = flag
    vouched = flag is None or flag is True or flag == "true"
    assert (denial_reason(claims, DOMAIN) is None) is vouched
    if not vouched:
        assert denial_reason(claims, DOMAIN) == UNVERIFIED


def test_allowed_emails_match_the_whole_address():
    assert denial_reason({"email": "Boss@Partner.org"}, EMAILS) is None
    assert denial_reason({"email": "boss@partner.org.evil.io"}, EMAILS) == NOT_ALLOWED
    assert denial_reason({"email": "other@partner.org"}, EMAILS) == NOT_ALLOWED


@pytest.mark.parametrize(
    ("groups", "allowed"),
    [
        (["users", "admins"], True),
        ("admins", True),
        (["Admins"], False),
        (["admins-2"], False),
        (["x,admins"], False),
        ("users,admins", False),
        ([["admins"]], False),
        ([{"name": "admins"}], False),
        ([], False),
    ],
)
def test_groups_match_exactly(groups: Any, allowed: bool):
    assert (denial_reason({"groups": groups}, GROUPS) is None) is allowed


def test_namespaced_groups_claims_are_one_literal_key():
    assert denial_reason({"cognito:groups": ["console-admins"]}, COGNITO) is None
    assert denial_reason({"cognito": {"groups": ["console-admins"]}}, COGNITO) == GROUPS_MISSING
    roles = AccessSettings(allowed_groups=("ops",), groups_claim="https://example.com/roles")
    assert denial_reason({"https://example.com/roles": ["ops"]}, roles) is None


def test_groups_the_provider_did_not_send_are_unknown_and_deny_with_a_reason():
    assert denial_reason({"email": "a@x.com"}, GROUPS) == GROUPS_MISSING
    overage = {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://graph"}}}
    assert denial_reason(overage, GROUPS) == GROUPS_OVERAGE
    assert denial_reason({"hasgroups": True}, GROUPS) == GROUPS_OVERAGE
    assert denial_reason({"groups": {"admins": True}}, GROUPS) == GROUPS_UNREADABLE


def test_any_one_rule_admits():
    both = AccessSettings(allowed_email_domains=("company.com",), allowed_groups=("admins",))
    assert denial_reason({"email": "x@other.org", "groups": ["admins"]}, both) is None
    assert denial_reason({"email": "x@company.com", "groups": ["users"]}, both) is None
    # An allowed email admits even when the groups are unknown.
    assert denial_reason({"email": "x@company.com", "_claim_names": {"groups": "s"}}, both) is None
    assert denial_reason({"email": "x@other.org", "_claim_names": {"groups": "s"}}, both) == GROUPS_OVERAGE
