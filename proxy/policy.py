"""Who may pass once signed in (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.settings import AccessSettings


def claim_list(claims: Mapping[str, Any], name: str) -> list[str] | None:
    """A claim as a list of strings; None when the provider did not send it."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return None


def denial_reason(claims: Mapping[str, Any], access: AccessSettings) -> str | None:
    """None when ``claims`` may pass, else a sentence for the user saying why not."""
    if not access.restricted:
        return None
    email_ok = False
    email = claims.get("email")
    # email_verified false means the provider does not vouch for the address (OIDC Core 5.1).
    if isinstance(email, str) and claims.get("email_verified") is not False and email.count("@") == 1:
        address = email.strip().lower()
        domain = address.rpartition("@")[2]
        email_ok = address in access.allowed_emails or domain in access.allowed_email_domains
    if email_ok:
        return None
    if access.allowed_groups:
        groups = claim_list(claims, access.groups_claim)
        if groups is None:
            overage = "_claim_names" in claims and access.groups_claim in (claims.get("_claim_names") or {})
            if overage:
                return (
                    "Your identity provider did not send your group memberships (too many groups to include), "
                    "so membership of an allowed group cannot be checked."
                )
            return "Your identity provider did not send your group memberships, so access cannot be checked."
        if set(groups) & set(access.allowed_groups):
            return None
    return "Your account is not in the list of users allowed to use this console."
