"""In-process session store: the default for a single sidecar process."""

from __future__ import annotations

import builtins
import time


class MemoryStore:
    """Dicts with per-key expiry. Expired keys are dropped on read and swept as the dicts grow."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._sets: dict[str, tuple[builtins.set[str], float]] = {}
        self._next_sweep = 1024

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item[0]

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None:
        value = self._live(key)
        if value is not None and touch is not None:
            self._data[key] = (value, time.monotonic() + touch)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._data[key] = (value, time.monotonic() + ttl)
        if len(self._data) + len(self._sets) >= self._next_sweep:
            self._sweep()

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl)
        return True

    async def take(self, key: str) -> bytes | None:
        value = self._live(key)
        self._data.pop(key, None)
        return value

    async def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    async def delete_if(self, key: str, value: bytes) -> bool:
        if self._live(key) == value:
            del self._data[key]
            return True
        return False

    async def index_add(self, key: str, member: str, ttl: float) -> None:
        members, expires = self._live_set(key)
        members.add(member)
        self._sets[key] = (members, max(expires, time.monotonic() + ttl))

    async def index_members(self, key: str) -> builtins.set[str]:
        return set(self._live_set(key)[0])

    async def index_remove(self, key: str, member: str) -> None:
        members, _ = self._live_set(key)
        members.discard(member)
        if not members:
            self._sets.pop(key, None)

    def _live_set(self, key: str) -> tuple[builtins.set[str], float]:
        item = self._sets.get(key)
        if item is None or item[1] <= time.monotonic():
            self._sets.pop(key, None)
            return set(), 0.0
        return item

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()
        self._sets.clear()

    def __len__(self) -> int:
        return len(self._data)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires) in self._data.items() if expires <= now]:
            del self._data[key]
        for key in [k for k, (_, expires) in self._sets.items() if expires <= now]:
            del self._sets[key]
        # Sweep again when the live set has doubled, so the cost stays amortised O(1) per write.
        self._next_sweep = max(1024, 2 * (len(self._data) + len(self._sets)))
