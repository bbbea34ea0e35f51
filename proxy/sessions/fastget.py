"""The hot path's one Redis command, pipelined on one connection.

Without the in-process cache every proxied request reads its session with one GETEX. Through redis-py
that single command costs more CPU than the rest of the request's own work (connection-pool checkout,
argument encoding, a timeout scope, a stream reader). Redis answers commands on a connection in order, so
one connection can carry every request's GETEX at once: commands written in the same event-loop turn go
out in one write, and replies are matched to callers first-in, first-out (hiredis parses them).

Only for a single server reached over plain TCP or a unix socket; Sentinel, Cluster and TLS stores use
redis-py for everything. Any trouble on this connection other than a timeout (refused, reset, an error
reply, a failed handshake) makes the caller fall back to redis-py for that request (``Fallback``), which
has its own retry and error reporting; the connection is tried again a second later. A timeout is final:
the store is unavailable, and the request is not made to wait twice.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Final

import hiredis

from proxy.config.model import RedisSettings

__all__ = ["Fallback", "FastGet"]

_RETRY_AFTER: Final = 1.0  # after a failed connection, redis-py serves alone for this long


class Fallback(Exception):
    """Use redis-py for this command."""


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._pending: collections.deque[tuple[asyncio.Future[object], float]] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            pending = self._pending
            while (reply := reader.gets()) is not False:
                future, _ = pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self.kill(Fallback("unexpected bytes from Redis"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.kill(Fallback("connection lost"))

    def call(self, command: bytes) -> asyncio.Future[object]:
        future: asyncio.Future[object] = self._loop.create_future()
        if self.dead:
            # It died after the caller got it (while ``FastGet._connect`` handed it over): nothing would send this
            # command, and the watchdog no longer watches a dead connection, so the caller would wait forever.
            future.set_exception(Fallback("connection lost"))
            return future
        self._pending.append((future, self._loop.time() + self._timeout))
        self._out.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._pending[0][1], self._watch)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and not self.dead and out:
            self.transport.write(b"".join(out))

    def _watch(self) -> None:
        """The oldest unanswered command is the one that waited longest: Redis stopped answering."""
        self._watchdog = None
        if not self._pending or self.dead:
            return
        deadline = self._pending[0][1]
        if self._loop.time() >= deadline:
            self.kill(TimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._watch)

    def kill(self, error: BaseException) -> None:
        self.dead = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self._pending = self._pending, collections.deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class FastGet:
    def __init__(self, target: RedisSettings, timeout: float) -> None:
        assert target.mode == "single" and not target.tls
        self._target = target
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._retry_at = 0.0

    async def getex(self, key: str, px: int) -> bytes | None:
        """GETEX key PX px. ``Fallback`` when redis-py should do it; ``TimeoutError`` when Redis is stuck."""
        connection = self._connection
        if connection is None or connection.dead:
            connection = await self._connect()
        reply = await connection.call(_command(b"GETEX", key.encode(), b"PX", b"%d" % px))
        if reply is None or isinstance(reply, bytes):
            return reply
        raise Fallback("unexpected reply")  # an error reply (READONLY, NOAUTH, OOM...): let redis-py report it

    async def _connect(self) -> _Connection:
        if time.monotonic() < self._retry_at:
            raise Fallback("reconnecting later")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        except Exception:
            self._retry_at = time.monotonic() + _RETRY_AFTER
            raise Fallback("cannot connect") from None
        finally:
            if self._connecting is task and task.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        target = self._target

        def factory() -> _Connection:
            return _Connection(loop, self._timeout)

        async with asyncio.timeout(self._timeout):
            if target.unix_path is not None:
                _, connection = await loop.create_unix_connection(factory, target.unix_path)
            else:
                host, port = target.addresses[0] if target.addresses else ("localhost", 6379)
                _, connection = await loop.create_connection(factory, host, port)
            try:
                handshake = []
                if target.password is not None:
                    user = [target.username.encode()] if target.username else []
                    handshake.append(_command(b"AUTH", *user, target.password.reveal().encode()))
                if target.db:
                    handshake.append(_command(b"SELECT", b"%d" % target.db))
                handshake.append(_command(b"CLIENT", b"SETNAME", b"sso-sidecar"))
                replies = await asyncio.gather(*(connection.call(c) for c in handshake))
                if any(reply != b"OK" for reply in replies):
                    raise ConnectionError("the Redis handshake was refused")
            except BaseException:
                connection.kill(Fallback("handshake failed"))
                raise
        if self._connection is not None:
            self._connection.kill(Fallback("replaced"))
        self._connection = connection
        return connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.kill(Fallback("closed"))
