"""The keys of an ``access`` block, read and checked under any prefix: the top-level ``access:`` section
(``validate.parse_access``) and each route's own (``validate_routes``) take the same keys, checked alike."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from proxy.config.model import AccessSettings
from proxy.config.reader import ConfigReader

ACCESS_KEYS = frozenset({"allowed_email_domains", "allowed_emails", "allowed_groups", "groups_claim"})
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


def access_rules(r: ConfigReader, s: Mapping[str, Any], prefix: str, groups_claim: str = "groups") -> AccessSettings:
    """The access rules of the mapping ``s`` (its keys checked by the caller), every problem named
    ``{prefix}.key``; ``groups_claim`` is the claim used when ``s`` names none."""
    domains = r.string_list(s, "allowed_email_domains", f"{prefix}.allowed_email_domains") or ()
    for i, d in enumerate(domains):
        if not _DOMAIN.fullmatch(d.lower()):
            r.problem(f"{prefix}.allowed_email_domains[{i}]", f"{d!r} is not a domain name like example.com")
    emails = r.string_list(s, "allowed_emails", f"{prefix}.allowed_emails") or ()
    for i, e in enumerate(emails):
        if e.count("@") != 1:
            r.problem(f"{prefix}.allowed_emails[{i}]", f"{e!r} is not an email address")
    return AccessSettings(
        allowed_email_domains=tuple(d.lower() for d in domains),
        allowed_emails=tuple(e.lower() for e in emails),
        allowed_groups=r.string_list(s, "allowed_groups", f"{prefix}.allowed_groups") or (),
        groups_claim=r.string(s, "groups_claim", f"{prefix}.groups_claim") or groups_claim,
    )
