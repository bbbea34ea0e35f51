"""The keep-alive pool of ``h1`` connections to one console, with a cap on how many it opens.

The cap (``upstream_max_connections``) counts every connection to the console, idle or in use, like
HAProxy's ``maxconn`` on a server. A request that finds no idle connection and the cap reached waits, in
arrival order, for one to come free: a connection released by another request is handed over directly,
and a connection that closes leaves room to open a new one. A request that waited ``connect_timeout``
in vain is ``Busy`` (503), like HAProxy's queue timeout, which defaults to its connect timeout.

Also here: stale idle connections (older than ``_IDLE_KEEPALIVE``, closed by the console, or holding
bytes nobody asked for) are closed instead of reused; a reused connection that the console closed just
before our request (the idle keep-alive race) is retried once on a fresh connection, only for an
idempotent method without a body (RFC 9110 9.2.2); and one timer sweeps every exchange in flight for
read timeouts instead of a timer per request.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import time
from typing import Final

from aiohttp import StreamReader
from multidict import CIMultiDict

from proxy.upstream.answer import Busy, Timeout, Unreachable, dropped, frame_request
from proxy.upstream.h1.exchange import ClosedEarly, Exchange
from proxy.upstream.h1.request import serialize

__all__ = ["Pool"]

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_IDLE_KEEPALIVE: Final = 15.0  # pooled connections older than this are closed, not reused


class Pool:
    """Keep-alive connections to one origin, most recently used first, at most ``max_connections``.

    The ``exchange.PoolSide`` of every ``Exchange`` it opens: ``loop``, ``drop``, ``busy``, ``watch``,
    ``put_back``, ``forget`` and ``free_slot``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        authority: str,
        read_timeout: float,
        connect_timeout: float,
        max_connections: int,
        drop: frozenset[str],
    ) -> None:
        """``drop``: response header names (lower case) never passed on, e.g. hop-by-hop ones."""
        self._host = host
        self._port = port
        self._tls = tls
        self._authority = authority
        self.read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self.drop = dropped(drop)
        self._idle: list[Exchange] = []
        self._poller = select.poll()
        self._cap = max_connections
        self._slots = 0  # connections open or being opened, idle or in use
        # Requests waiting for a connection: each gets an idle one (an Exchange) or room to open one (None).
        self._waiters: collections.deque[asyncio.Future[Exchange | None]] = collections.deque()
        # Exchanges in flight, checked for read timeouts by one sweep instead of a timer per request; a
        # timeout fires between 1x and 1.25x ``read_timeout`` after the console's last byte.
        self.busy: set[Exchange] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_every = max(0.01, min(1.0, read_timeout / 4))
        self._closed = False
        self.loop = asyncio.get_running_loop()

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: StreamReader | None,
    ) -> Exchange:
        """Send a request and wait for the head of its answer. ``headers`` is sent as given, plus Host when
        missing and the body framing: the client's Content-Length when it sent one (and then exactly that
        many bytes), else chunked. ``headers`` must hold no Transfer-Encoding (it is hop-by-hop)."""
        length = frame_request(method, headers, body is not None, self._authority, say_chunked=True)
        head = serialize(method, target, headers.items(), len(headers))
        retry = body is None and method in _IDEMPOTENT
        while True:
            exchange = self._take_idle() or await self._acquire()
            exchange.send_request(method, head, body, length)
            try:
                await exchange.wait_head()
            except ClosedEarly:
                exchange.close()
                if retry and exchange.reused:
                    retry = False
                    continue
                raise
            except BaseException:
                exchange.close()
                raise
            return exchange

    # -- connections under the cap --------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection because the pool is at its cap."""
        return sum(not waiter.done() for waiter in self._waiters)

    async def _acquire(self) -> Exchange:
        """A connection for a request that found no idle one: a new one while under the cap, else the
        first one another request releases (or room for a new one when one closes)."""
        if self._slots < self._cap:
            self._slots += 1
            return await self._open()
        waiter: asyncio.Future[Exchange | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._connect_timeout):
                handed = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection (or room) in the same moment we gave up: pass it on.
                self._pass_on(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise Busy(f"all {self._cap} connections to the console stayed in use") from None
            raise
        if handed is None:
            return await self._open()
        if handed.closing or self._has_unread(handed.fileno):
            # It went bad between the hand-over and now: its place under the cap is ours to reopen.
            handed.holds_slot = False
            handed.close()
            return await self._open()
        handed.reused = True
        return handed

    async def _open(self) -> Exchange:
        """Connect, on a place under the cap the caller already holds."""
        try:
            exchange = await self._connect()
        except BaseException:
            self.free_slot()
            raise
        if exchange.closing:  # the console hung up before we got to use it
            self.free_slot()
            raise Unreachable("connection closed by the console")
        exchange.holds_slot = True  # from now on the exchange frees its place when its connection ends
        return exchange

    def _pass_on(self, handed: Exchange | None) -> None:
        if handed is None:
            self.free_slot()
        else:
            self.put_back(handed)

    def free_slot(self) -> None:
        """A connection ended (or could not be opened): the first waiter may open one, else there is room."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place passes to the waiter
                return
        self._slots -= 1

    def _take_idle(self) -> Exchange | None:
        idle = self._idle
        stale = time.monotonic() - _IDLE_KEEPALIVE
        while idle:
            exchange = idle.pop()
            if exchange.closing or exchange.idle_since < stale or self._has_unread(exchange.fileno):
                exchange.close()
                continue
            exchange.reused = True
            return exchange
        return None

    def _has_unread(self, fileno: int) -> bool:
        """True when bytes (or a close) arrived on an idle connection since the event loop last looked.

        Bytes the loop already saw retired the connection (``Exchange.data_received``); this closes the
        window in which unasked bytes sit unread in the socket and would be parsed as the answer to the
        request we are about to send.
        """
        if fileno < 0:
            return False
        poller = self._poller
        poller.register(fileno, select.POLLIN)
        try:
            return bool(poller.poll(0))
        finally:
            poller.unregister(fileno)

    async def _connect(self) -> Exchange:
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, exchange = await self.loop.create_connection(
                    lambda: Exchange(self),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except TimeoutError:
            raise Timeout("connecting timed out") from None
        except ssl.SSLError as exc:
            raise Unreachable(f"TLS failed: {exc.reason or type(exc).__name__}") from None
        except OSError as exc:
            raise Unreachable(f"connection failed: {exc.strerror or type(exc).__name__}") from None
        return exchange

    # -- exchanges in flight and back ----------------------------------------------------------------

    def watch(self, exchange: Exchange) -> None:
        self.busy.add(exchange)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._sweep_every, self._check)

    def _check(self) -> None:
        self._sweep = None
        now, timeout = self.loop.time(), self.read_timeout
        for exchange in list(self.busy):
            exchange.check_timeout(now, timeout)
        if self.busy:
            self._sweep = self.loop.call_later(self._sweep_every, self._check)

    def put_back(self, exchange: Exchange) -> None:
        """A finished exchange whose connection may be reused: to the first waiter, else idle."""
        if self._closed or exchange.closing:
            exchange.close()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(exchange)
                return
        exchange.idle_since = time.monotonic()
        self._idle.append(exchange)

    def forget(self, exchange: Exchange) -> None:
        """A connection closed: it is no longer pooled."""
        if self._idle and exchange in self._idle:
            self._idle.remove(exchange)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they are released."""
        self._closed = True
        if self._sweep is not None and not self.busy:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for exchange in idle:
            exchange.close()
