"""The storage interface behind sessions: a small byte-level key-value contract with TTLs.

Everything stored is already encrypted by ``SessionManager``; stores never see claims or tokens.
"""

from __future__ import annotations

from typing import Protocol


class SessionStore(Protocol):
    """Implementations raise ``proxy.errors.StoreUnavailable`` when the backend cannot be reached."""

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None:
        """The value, or None. ``touch``: also reset the key's TTL to that many seconds (GETEX)."""

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def take(self, key: str) -> bytes | None:
        """Get and delete atomically: a value can be taken once, even with several replicas."""

    async def delete(self, key: str) -> bool: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
