"""Redis session store (redis.asyncio): sessions shared by every replica."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from proxy.errors import StoreUnavailable

log = logging.getLogger("sso_sidecar.sessions")
_T = TypeVar("_T")
_PREFIX = "sso:"
# Compare-and-delete: release a lock only while it is still ours.
_DELETE_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
# SADD, and never shorten the set's TTL (it covers the longest-lived member).
_INDEX_ADD = """
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


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
        self._delete_if = self._redis.register_script(_DELETE_IF)
        self._index_add = self._redis.register_script(_INDEX_ADD)

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
            value = await self._call(lambda: self._redis.getex(_PREFIX + key, px=_ms(touch)))
        return _as_bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(lambda: self._redis.set(_PREFIX + key, value, px=_ms(ttl)))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        created = await self._call(lambda: self._redis.set(_PREFIX + key, value, px=_ms(ttl), nx=True))
        return bool(created)

    async def take(self, key: str) -> bytes | None:
        return _as_bytes(await self._call(lambda: self._redis.getdel(_PREFIX + key)))

    async def delete(self, key: str) -> bool:
        return bool(await self._call(lambda: self._redis.delete(_PREFIX + key)))

    async def delete_if(self, key: str, value: bytes) -> bool:
        return bool(await self._call(lambda: self._delete_if(keys=[_PREFIX + key], args=[value])))

    async def index_add(self, key: str, member: str, ttl: float) -> None:
        await self._call(lambda: self._index_add(keys=[_PREFIX + key], args=[member, _ms(ttl)]))

    async def index_members(self, key: str) -> builtins.set[str]:
        members = await self._call(lambda: self._redis.smembers(_PREFIX + key))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def index_remove(self, key: str, member: str) -> None:
        await self._call(lambda: self._redis.srem(_PREFIX + key, member))

    async def ping(self) -> None:
        await self._call(lambda: self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is created without decode_responses, so values arrive as bytes.
    return value.encode() if isinstance(value, str) else value
