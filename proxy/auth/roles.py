"""Console roles from the user's groups and emails (``roles:``): pure rules, no I/O.

Every rule that matches adds its role: a group in ``access.groups_claim`` equal to one of the rule's groups, or a
verified email (``policy.verified_email``: an address the provider does not disown) equal to one of its emails.
Compared exactly as the access rules compare, after lower-casing emails only: a group named ``x,admins`` is not
``admins``, an unverified email grants nothing. A user no rule matched has ``default``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.auth.policy import claim_list, verified_email
from proxy.config.model import RolesSettings


class RoleRules:
    """``roles:`` with its rules turned into lookups once, applied per identity."""

    __slots__ = ("_by_email", "_by_group", "_default", "_groups_claim", "_order")

    def __init__(self, settings: RolesSettings, groups_claim: str) -> None:
        self._groups_claim = groups_claim
        self._default = tuple(dict.fromkeys(settings.default))
        self._by_group: dict[str, list[str]] = {}
        self._by_email: dict[str, list[str]] = {}
        for rule in settings.rules:
            for group in rule.groups:
                self._by_group.setdefault(group, []).append(rule.role)
            for email in rule.emails:
                self._by_email.setdefault(email, []).append(rule.role)
        # Roles come out in the order the rules list them, whatever matched first.
        self._order = {role: i for i, role in enumerate(dict.fromkeys(rule.role for rule in settings.rules))}

    def of(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """The roles of this identity, each once, in the order of the rules; ``default`` when none matched."""
        found: set[str] = set()
        if self._by_group:
            for group in claim_list(claims, self._groups_claim) or ():
                found.update(self._by_group.get(group, ()))
        if self._by_email:
            email = verified_email(claims)
            if email is not None:
                found.update(self._by_email.get(email, ()))
        if not found:
            return self._default
        return tuple(sorted(found, key=self._order.__getitem__))
