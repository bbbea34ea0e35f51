"""Redis session store (redis.asyncio): sessions shared by every replica."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from proxy.errors import StoreUnavailable

log = logging.getLogger("sso_sidecar.sessions")
_T = TypeVar("_T")
_PREFIX = "sso:"


class RedisStore:
    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            max_connections=512,
        )

    async def _call(self, op: Callable[[], Awaitable[_T]]) -> _T:
        # Bounded: a request that needs a session gets a 503 within ``timeout``, never hangs.
        try:
            return await asyncio.wait_for(op(), self._timeout * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("session store unreachable: %s", type(exc).__name__)
            raise StoreUnavailable("The session store is unreachable. Please try again shortly.") from None

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None:
        if touch is None:
            value = await self._call(lambda: self._redis.get(_PREFIX + key))
        else:
            value = await self._call(lambda: self._redis.getex(_PREFIX + key, px=max(1, int(touch * 1000))))
        return _as_bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(lambda: self._redis.set(_PREFIX + key, value, px=max(1, int(ttl * 1000))))

    async def take(self, key: str) -> bytes | None:
        return _as_bytes(await self._call(lambda: self._redis.getdel(_PREFIX + key)))

    async def delete(self, key: str) -> bool:
        return bool(await self._call(lambda: self._redis.delete(_PREFIX + key)))

    async def ping(self) -> None:
        await self._call(lambda: self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is created without decode_responses, so values arrive as bytes.
    return value.encode() if isinstance(value, str) else value
