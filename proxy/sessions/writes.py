"""Writes a store makes together (``SessionStore.write``): a sign-in's session, index entries and facts; a
sign-out's deletions.

Each stands for the one ``SessionStore`` call of the same meaning, so a store that cannot send them together
makes those calls one after another (``one_by_one``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


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


@dataclass(frozen=True, slots=True)
class Drop:
    """``SessionStore.delete(key)``, without its answer."""

    key: str


@dataclass(frozen=True, slots=True)
class Leave:
    """``SessionStore.index_remove(key, member)``."""

    key: str
    member: str


Write = Put | Enter | Drop | Leave


class _Calls(Protocol):
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def index_add(self, key: str, member: str, ttl: float) -> int: ...

    async def delete(self, key: str) -> bool: ...

    async def index_remove(self, key: str, member: str) -> None: ...


async def one_by_one(store: _Calls, writes: Sequence[Write]) -> None:
    """``writes`` as the calls they stand for, one after another."""
    for w in writes:
        if isinstance(w, Put):
            await store.set(w.key, w.value, w.ttl)
        elif isinstance(w, Enter):
            await store.index_add(w.key, w.member, w.ttl)
        elif isinstance(w, Drop):
            await store.delete(w.key)
        else:
            await store.index_remove(w.key, w.member)
