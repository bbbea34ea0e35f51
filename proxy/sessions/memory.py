"""In-process session store: the default for a single sidecar process."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Sequence

from proxy.sessions.writes import Write, one_by_one


class MemoryStore:
    """Dicts with per-key expiry. Expired keys are dropped on read and swept as the dicts grow."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._sets: dict[str, dict[str, float]] = {}  # index key -> member -> expiry
        self._next_sweep = 1024
        self._subscribers: dict[str, list[asyncio.Queue[bytes]]] = {}

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

    async def ttl(self, key: str) -> float | None:
        item = self._data.get(key)
        remaining = None if item is None else item[1] - time.monotonic()
        return remaining if remaining is not None and remaining > 0 else None

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

    async def index_add(self, key: str, member: str, ttl: float) -> int:
        # Each member expires on its own, so a user who signs in again and again does not grow the set.
        now = time.monotonic()
        members = {m: exp for m, exp in self._sets.get(key, {}).items() if exp > now}
        members[member] = max(now + ttl, members.get(member, 0.0))
        self._sets[key] = members
        return len(members)

    async def write(self, writes: Sequence[Write]) -> None:
        await one_by_one(self, writes)

    async def index_members(self, key: str) -> builtins.set[str]:
        now = time.monotonic()
        return {m for m, exp in self._sets.get(key, {}).items() if exp > now}

    async def index_remove(self, key: str, member: str) -> None:
        members = self._sets.get(key)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._sets[key]

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in self._subscribers.get(channel, ()):
            queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.setdefault(channel, []).append(queue)
        try:
            yield b""
            while True:
                yield await queue.get()
        finally:
            self._subscribers[channel].remove(queue)

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
        for key in [k for k, members in self._sets.items() if max(members.values(), default=0.0) <= now]:
            del self._sets[key]
        # Sweep again when the live set has doubled, so the cost stays amortised O(1) per write.
        self._next_sweep = max(1024, 2 * (len(self._data) + len(self._sets)))
