"""The storage interface behind sessions: a small byte-level key-value contract with TTLs.

Everything stored is already encrypted by ``SessionManager``; stores never see claims or tokens.
Every key is written with a TTL, so nothing a store holds outlives its use.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from proxy.config.model import SessionSettings
from proxy.sessions.memory import MemoryStore
from proxy.sessions.writes import Write


class SessionStore(Protocol):
    """Implementations raise ``proxy.errors.StoreUnavailable`` when the backend cannot be reached."""

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None:
        """The value, or None. ``touch``: also reset the key's TTL to that many seconds (GETEX)."""

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Set only if absent (SET NX): True when this call created the key. Locks and replay guards."""

    async def ttl(self, key: str) -> float | None:
        """Seconds until the key expires; None when it does not exist (``math.inf`` without an expiry)."""

    async def take(self, key: str) -> bytes | None:
        """Get and delete atomically: a value can be taken once, even with several replicas."""

    async def delete(self, key: str) -> bool: ...

    async def delete_if(self, key: str, value: bytes) -> bool:
        """Delete only while the key still holds ``value`` (releasing a lock this process owns)."""

    async def index_add(self, key: str, member: str, ttl: float) -> int:
        """Add ``member`` (expiring after ``ttl``) to the set at ``key`` and extend the set's TTL to at least
        ``ttl``; the number of live members afterwards, counted in the same atomic step."""

    async def index_members(self, key: str) -> builtins.set[str]: ...

    async def write(self, writes: Sequence[Write]) -> None:
        """Each of ``writes`` as its ``set``, ``index_add``, ``delete`` or ``index_remove`` would make it, in order, in
        one round trip where the store can (a sign-in's writes, a sign-out's deletions). Not a transaction: when it
        raises, some may have been made, as with the calls."""

    async def index_remove(self, key: str, member: str) -> None: ...

    async def publish(self, channel: str, message: bytes) -> None:
        """Tell every process sharing this store (other workers, other replicas)."""

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Messages published on ``channel``; yields ``b""`` once when the subscription is live.
        Raises ``StoreUnavailable`` when the connection is lost (messages may have been missed)."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def open_store(settings: SessionSettings) -> SessionStore:
    """The store the settings name: Redis, or this process's memory."""
    if settings.store == "redis":
        from proxy.sessions.redis import RedisStore

        return RedisStore(settings.redis)  # redis_url is only for display: its password is masked
    return MemoryStore()
