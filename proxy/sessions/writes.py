"""Writes a store makes together (``SessionStore.write``): a sign-in's session, index entries and facts.

Each stands for the one ``SessionStore`` call of the same meaning, so a store that cannot send them together
makes those calls one after another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Put:
    """``SessionStore.set(key, value, ttl)``."""

    key: str
    value: bytes
    ttl: float


@dataclass(frozen=True, slots=True)
class Enter:
    """``SessionStore.index_add(key, member, ttl)``, without its count."""

    key: str
    member: str
    ttl: float


Write = Put | Enter
