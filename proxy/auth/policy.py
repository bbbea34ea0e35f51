"""Who may pass once signed in, and who operates the sidecar (pure functions).

A user passes when any configured rule admits them: their email address, their email's domain, or one
of their groups. With no rule configured, everyone who can sign in passes. Everything is compared
exactly, after lower-casing emails and domains only: no trimming, no Unicode folding (a fullwidth
letter is not its ASCII twin), no splitting of a group string (a group named ``x,admins`` is not ``admins``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.config.model import AccessSettings, Settings

NOT_ALLOWED = "Your account is not in the list of users allowed to use this console."
UNVERIFIED = "Your identity provider has not verified your email address, so it cannot be used to let you in."
GROUPS_OVERAGE = (
    "Your identity provider did not send your group memberships (you are in too many groups for it to "
    "include them in the sign-in), so membership of an allowed group cannot be checked. Ask an "
    "administrator to limit the groups sent to this application."
)
GROUPS_MISSING = (
    "Your identity provider did not send your group memberships, so membership of an allowed group cannot be checked."
)
GROUPS_UNREADABLE = "Your identity provider sent your group memberships in a form the sidecar cannot read."


def claim_list(claims: Mapping[str, Any], name: str) -> list[str] | None:
    """A claim as a list of strings; None when absent or not a string / list of strings and numbers.

    ``name`` is one literal key: ``cognito:groups`` or ``https://example.com/roles`` are never paths.
    """
    value = claims.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))]
    return None


def _vouched(claims: Mapping[str, Any]) -> bool:
    verified = claims.get("email_verified")
    return verified is None or verified is True or (isinstance(verified, str) and verified.lower() == "true")


def verified_email(claims: Mapping[str, Any]) -> str | None:
    """The email claim, lower-cased, when it is one plain address the provider does not disown.

    ``email_verified`` absent means the provider says nothing (many send verified addresses only); any
    value other than true (false, "false", 0, junk) means it does not vouch for the address (OIDC Core
    5.1). Some providers (AWS Cognito) send the flag as the string "true"/"false".
    """
    email = claims.get("email")
    if not isinstance(email, str):
        return None
    if not _vouched(claims):
        return None
    # Exactly one "@" with something on both sides: "attacker@evil.com@company.com" or a quoted local
    # part holding "@" is not an address any rule should reason about.
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain:
        return None
    if any(ch.isspace() or not ch.isprintable() for ch in email):
        return None  # not an address at all; never trimmed into one
    return email.lower()


def display_name(claims: Mapping[str, Any]) -> str:
    """Who a user is, in words for a history or a log: a verified email (an unverified one could be
    anyone's), else the username, else the subject."""
    username = claims.get("preferred_username")
    if (email := verified_email(claims)) is not None:
        return email
    return username if isinstance(username, str) and username else str(claims.get("sub", ""))


def groups_overage(claims: Mapping[str, Any], groups_claim: str) -> bool:
    """True when the provider says the groups exist but were left out (Entra ID group overage).

    Entra sends ``_claim_names: {"groups": "src1"}`` with ``_claim_sources`` (OIDC Core 5.6.2
    distributed claims) instead of the list, or ``hasgroups: true`` in implicit-flow tokens.
    """
    names = claims.get("_claim_names")
    if isinstance(names, Mapping) and groups_claim in names:
        return True
    return groups_claim == "groups" and claims.get("hasgroups") is True


def denial_reason(claims: Mapping[str, Any], access: AccessSettings) -> str | None:
    """None when ``claims`` may pass, else a sentence for the user saying why not."""
    if not access.restricted:
        return None
    email = verified_email(claims)
    if email is not None:
        domain = email.rpartition("@")[2]
        if email in access.allowed_emails or domain in access.allowed_email_domains:
            return None
    if access.allowed_groups:
        groups = claim_list(claims, access.groups_claim)
        if groups is not None and not set(groups).isdisjoint(access.allowed_groups):
            return None
        if groups is None or not groups:
            # Unknown is not "in no group": say why, so the user and the admin know what to fix.
            if groups_overage(claims, access.groups_claim):
                return GROUPS_OVERAGE
            if access.groups_claim in claims and groups is None:
                return GROUPS_UNREADABLE
            if groups is None:
                return GROUPS_MISSING
    if (access.allowed_emails or access.allowed_email_domains) and email is None and not _vouched(claims):
        return UNVERIFIED
    return NOT_ALLOWED


def is_operator(claims: Mapping[str, Any], settings: Settings, *, reading_status: bool = False) -> bool:
    """Who operates the sidecar, for both ``/oauth2/status`` and the settings page: an admin of the page (while
    ``admin.enabled``), that is a verified email in ``admin.emails`` or a group (``access.groups_claim``) in
    ``admin.groups``, compared exactly like the access rules. ``reading_status`` also admits the groups of
    ``status.admin_groups`` (deprecated), which grant the status alone, never the page."""
    groups = claim_list(claims, settings.access.groups_claim)
    if reading_status and groups and not set(groups).isdisjoint(settings.status.admin_groups):
        return True
    if not settings.admin.enabled:
        return False
    email = verified_email(claims)
    if email is not None and email in settings.admin.emails:
        return True
    return bool(groups) and not set(groups or ()).isdisjoint(settings.admin.groups)
