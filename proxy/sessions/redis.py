"""Redis session store (redis.asyncio): sessions shared by every replica, on one server, on the master a
Sentinel group names, or on a Redis Cluster.

This is the hot path: a request costs one GETEX and nothing more (pipelined by ``fastget`` on a single
server without TLS). Every call is bounded by
``RedisSettings.timeout``; a call Redis cannot answer in time raises ``StoreUnavailable`` (a 503 page) and
the next call simply tries again, so the sidecar recovers by itself when Redis returns.

Cluster: every command and every Lua script touch exactly one key, so nothing ever crosses hash slots (a
script another module runs here, ``script``, must keep to that too).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisClusterException, RedisError

from proxy.config.model import RedisSettings
from proxy.config.redis_url import parse_redis_url
from proxy.errors import StoreUnavailable
from proxy.sessions.fastget import Fallback, FastGet
from proxy.sessions.writes import Drop, Enter, Put, Write, one_by_one

log = logging.getLogger("sso_sidecar.sessions")
_T = TypeVar("_T")
# A registered Lua script: (key, args) -> its reply.
Script = Callable[[str, Sequence[str | int | bytes]], Awaitable[object]]
_PREFIX = "sso:"
_MAX_CONNECTIONS = 512
# How often the Sentinel master is looked up besides on every new connection (see ``_watch_master``).
_MASTER_CHECK_INTERVAL = 1.0
# A subscription that has heard nothing for this long pings; with no answer within the timeout it is lost.
_SUBSCRIPTION_PING = 1.0
# RuntimeError: under uvloop, a write on a connection that just died (a Cluster master killed) raises
# "unable to perform operation on <TCPTransport ...>; the handler is closed", and redis-py passes it on.
_UNAVAILABLE = (RedisError, RedisClusterException, OSError, TimeoutError, RuntimeError)

# Compare-and-delete: release a lock only while it is still ours.
_DELETE_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
# An index is a sorted set of member -> expiry (ms since the epoch). Expired members are dropped on every
# add, so the index of a user who signs in daily and never signs out stays as small as their live
# sessions; the key's own TTL covers its longest-lived member. ARGV: member, now (ms), ttl (ms).
_INDEX_ADD = """
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old or tonumber(old) < now + ttl then redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) end
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return redis.call('ZCARD', KEYS[1])
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class _MasterPool(SentinelConnectionPool):
    """A connection to a master that is no longer the master is closed when it comes back to the pool.

    redis-py re-resolves the master for every new connection and closes idle ones when it changed, but
    a connection busy at that moment would otherwise return to the pool still talking to the old master
    (which, after ``SENTINEL FAILOVER``, keeps accepting writes until Sentinel demotes it).
    """

    async def release(self, connection: AbstractConnection) -> None:
        address = (getattr(connection, "host", None), getattr(connection, "port", None))
        if self.master_address is not None and address != self.master_address:
            connection.mark_for_reconnect()  # type: ignore[no-untyped-call]
        await super().release(connection)


class RedisStore:
    def __init__(self, target: RedisSettings | str, *, timeout: float | None = None) -> None:
        if isinstance(target, str):
            target = parse_redis_url(target)
        self._timeout = target.timeout if timeout is None else timeout
        self._where = target.url  # password masked
        self._sentinel: Sentinel | None = None
        self._master_pool: _MasterPool | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._down = False
        self._redis: Redis | RedisCluster = self._connect(target)
        # The per-request GETEX, pipelined on a connection of its own (``fastget``), where it can be.
        self._fast = FastGet(target, self._timeout) if target.mode == "single" and not target.tls else None
        self._delete_if = self._redis.register_script(_DELETE_IF)
        self._index_add = self._redis.register_script(_INDEX_ADD)

    def _connect(self, target: RedisSettings) -> Redis | RedisCluster:
        # Half the budget per attempt, so one retry on a fresh connection still fits in it: the retry
        # is what replaces a pooled connection that died with a restarted or failed-over server.
        attempt = self._timeout / 2
        retry = Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))
        common: dict[str, Any] = {
            "socket_timeout": attempt,
            "socket_connect_timeout": attempt,
            "retry": retry,
            "health_check_interval": 30,
        }
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": target.ca_file} if target.tls else {}
        auth: dict[str, Any] = {
            "username": target.username,
            "password": target.password.reveal() if target.password else None,
            "client_name": "sso-sidecar",
        }
        if target.mode == "cluster":
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in target.addresses],
                max_connections=_MAX_CONNECTIONS,
                **common,
                **tls,
                **auth,
            )
        if target.mode == "sentinel":
            sentinel_auth = target.sentinel_password.reveal() if target.sentinel_password else None
            self._sentinel = Sentinel(
                list(target.addresses),
                sentinel_kwargs={**common, **tls, "password": sentinel_auth, "health_check_interval": 0},
            )
            self._master_pool = _MasterPool(  # type: ignore[no-untyped-call]
                target.master_name,
                self._sentinel,
                is_master=True,
                max_connections=_MAX_CONNECTIONS,
                db=target.db,
                **common,
                **tls,
                **auth,
            )
            return Redis.from_pool(self._master_pool)
        return Redis(
            host=target.addresses[0][0] if target.addresses else "localhost",
            port=target.addresses[0][1] if target.addresses else 6379,
            unix_socket_path=target.unix_path,
            db=target.db,
            max_connections=_MAX_CONNECTIONS,
            **common,
            **tls,
            **auth,
        )

    def _watch(self) -> None:
        if self._master_pool is not None and self._watcher is None and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_master(self._master_pool))

    async def _call(self, op: Callable[[], Awaitable[_T]]) -> _T:
        if self._master_pool is not None and self._watcher is None and not self._closed:
            self._watch()
        try:
            # Bounded: a request that needs a session gets a 503 within ``timeout``, never hangs.
            async with asyncio.timeout(self._timeout):
                result = await op()
        except _UNAVAILABLE as exc:
            self._unavailable(exc)
        self._reachable()
        return result

    def _reachable(self) -> None:
        if self._down:  # the line that ends the outage's one "unreachable" line
            self._down = False
            log.warning("session store %s is reachable again", self._where)

    def _unavailable(self, exc: BaseException) -> NoReturn:
        if not self._down:  # one line per outage, not one per request
            self._down = True
            log.error("session store %s is unreachable: %s: %s", self._where, type(exc).__name__, exc)
        raise StoreUnavailable("The session store is unreachable. Please try again shortly.") from None

    async def _watch_master(self, pool: _MasterPool) -> None:
        """Ask Sentinel for the master every second, so that a failover moves every connection over at
        once instead of when each happens to fail (an old master can stay writable for seconds)."""
        while not self._closed:
            await asyncio.sleep(_MASTER_CHECK_INTERVAL)
            with contextlib.suppress(*_UNAVAILABLE):
                async with asyncio.timeout(self._timeout):
                    before = pool.master_address
                    # When the master moved, this also closes the idle connections to the old one.
                    after = await pool.get_master_address()  # type: ignore[no-untyped-call]
                    if before is not None and after != before:
                        log.warning("session store: Sentinel master moved from %s:%s to %s:%s", *before, *after)

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None:
        if touch is not None and self._fast is not None:
            try:
                fast = await self._fast.getex(_PREFIX + key, _ms(touch))
            except Fallback:
                pass  # redis-py below: it retries once on a fresh connection and reports what is wrong
            except TimeoutError as exc:
                self._unavailable(exc)
            else:
                self._reachable()
                return fast
        if touch is None:
            value = await self._call(lambda: self._redis.get(_PREFIX + key))
        else:
            value = await self._call(lambda: self._redis.getex(_PREFIX + key, px=_ms(touch)))
        return _as_bytes(value)

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._call(lambda: self._redis.pttl(_PREFIX + key)))
        if ms == -2:
            return None  # no such key
        return math.inf if ms < 0 else ms / 1000

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(lambda: self._redis.set(_PREFIX + key, value, px=_ms(ttl)))

    def script(self, source: str) -> Script:
        """A Lua script on one key, for a module that keeps records of its own beside the sessions (the settings
        page's, ``proxy.admin.store``): run like every other call, bounded, ``StoreUnavailable`` on failure."""
        registered = self._redis.register_script(source)

        async def run(key: str, args: Sequence[str | int | bytes]) -> object:
            return await self._call(lambda: registered(keys=[_PREFIX + key], args=list(args)))

        return run

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        created = await self._call(lambda: self._redis.set(_PREFIX + key, value, px=_ms(ttl), nx=True))
        return bool(created)

    async def take(self, key: str) -> bytes | None:
        return _as_bytes(await self._call(lambda: self._redis.getdel(_PREFIX + key)))

    async def delete(self, key: str) -> bool:
        return bool(await self._call(lambda: self._redis.delete(_PREFIX + key)))

    async def delete_if(self, key: str, value: bytes) -> bool:
        return bool(await self._call(lambda: self._delete_if(keys=[_PREFIX + key], args=[value])))

    async def index_add(self, key: str, member: str, ttl: float) -> int:
        args: list[str | int] = [member, _now_ms(), _ms(ttl)]
        return int(await self._call(lambda: self._index_add(keys=[_PREFIX + key], args=args)))

    async def write(self, writes: Sequence[Write]) -> None:
        if isinstance(self._redis, RedisCluster):
            # Their keys lie in different hash slots, so on different nodes: one call each.
            await one_by_one(self, writes)
            return

        async def pipelined() -> None:
            # One connection and one round trip. EVAL, not the registered script's EVALSHA: a pipeline would first
            # ask whether the script is loaded (a round trip of its own), and Redis caches what EVAL compiles.
            now = _now_ms()
            async with self._redis.pipeline(transaction=False) as pipe:
                for w in writes:
                    if isinstance(w, Put):
                        pipe.set(_PREFIX + w.key, w.value, px=_ms(w.ttl))
                    elif isinstance(w, Enter):
                        pipe.eval(_INDEX_ADD, 1, _PREFIX + w.key, w.member, now, _ms(w.ttl))
                    elif isinstance(w, Drop):
                        pipe.delete(_PREFIX + w.key)
                    else:
                        pipe.zrem(_PREFIX + w.key, w.member)
                await pipe.execute()

        await self._call(pipelined)

    async def index_members(self, key: str) -> builtins.set[str]:
        members = await self._call(lambda: self._redis.zrangebyscore(_PREFIX + key, f"({_now_ms()}", "+inf"))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def index_remove(self, key: str, member: str) -> None:
        await self._call(lambda: self._redis.zrem(_PREFIX + key, member))

    async def publish(self, channel: str, message: bytes) -> None:
        # In a Cluster, PUBLISH reaches the subscribers on every node, whichever node it is sent to.
        await self._call(lambda: self._redis.publish(channel, message))

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        self._watch()
        pubsub = self._redis.pubsub()
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    if isinstance(self._redis, RedisCluster):
                        # A cluster client learns its slot map on its first command; SUBSCRIBE needs it.
                        await self._redis.initialize()
                    await pubsub.subscribe(channel)
                    while (await pubsub.get_message(timeout=self._timeout) or {}).get("type") != "subscribe":
                        pass
            except _UNAVAILABLE as exc:
                self._unavailable(exc)
            yield b""
            while True:
                yield await self._next_message(pubsub)
        finally:
            with contextlib.suppress(*_UNAVAILABLE):
                async with asyncio.timeout(self._timeout):
                    await pubsub.aclose()

    async def _next_message(self, pubsub: PubSub) -> bytes:
        """The next published message. Raises ``StoreUnavailable`` whenever one may have been missed: the
        connection dropped (redis-py reconnects and subscribes again by itself), Redis stopped answering,
        or Sentinel moved the master (the old one may still be up, hearing nothing published)."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            connection = pubsub.connection
            if (
                self._master_pool is not None
                and connection is not None
                and (connection.host, connection.port) != self._master_pool.master_address
            ):
                self._unavailable(ConnectionError("the Sentinel master moved"))
            try:
                message = await pubsub.get_message(timeout=_SUBSCRIPTION_PING)
                if message is None:
                    silent = loop.time() - heard
                    if silent > _SUBSCRIPTION_PING + self._timeout:
                        raise TimeoutError("the subscription went silent")
                    if silent >= _SUBSCRIPTION_PING:
                        await pubsub.ping()  # answered by a "pong" message
                    continue
            except _UNAVAILABLE as exc:
                self._unavailable(exc)
            heard = loop.time()
            if message["type"] == "subscribe":
                self._unavailable(ConnectionError("the subscription was re-established"))
            if message["type"] == "message":
                data = message["data"]
                return data if isinstance(data, bytes) else str(data).encode()

    async def ping(self) -> None:
        await self._call(lambda: self._redis.ping())

    async def close(self) -> None:
        """Close every connection. Bounded: a reload or a shutdown never waits on a Redis that stopped
        answering, nor on a Sentinel check that does not end when cancelled."""
        self._closed = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=self._timeout)
        if self._fast is not None:
            self._fast.close()
        steps = [self._redis.aclose]
        if self._sentinel is not None:
            steps.append(self._sentinel.aclose)
        for step in steps:
            try:
                async with asyncio.timeout(self._timeout):
                    await step()
            except _UNAVAILABLE as exc:
                log.warning("session store %s: closing its connections: %s: %s", self._where, type(exc).__name__, exc)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is created without decode_responses, so values arrive as bytes.
    return value.encode() if isinstance(value, str) else value
