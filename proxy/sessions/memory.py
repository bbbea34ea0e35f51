"""In-process session store: the default for a single sidecar process."""

from __future__ import annotations

import time


class MemoryStore:
    """A dict with per-key expiry. Expired keys are dropped on read and swept as the dict grows."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._next_sweep = 1024

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        now = time.monotonic()
        if expires <= now:
            del self._data[key]
            return None
        if touch is not None:
            self._data[key] = (value, now + touch)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._data[key] = (value, time.monotonic() + ttl)
        if len(self._data) >= self._next_sweep:
            self._sweep()

    async def take(self, key: str) -> bytes | None:
        item = self._data.pop(key, None)
        if item is None or item[1] <= time.monotonic():
            return None
        return item[0]

    async def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, expires) in self._data.items() if expires <= now]:
            del self._data[key]
        # Sweep again when the live set has doubled, so the cost stays amortised O(1) per write.
        self._next_sweep = max(1024, 2 * len(self._data))
