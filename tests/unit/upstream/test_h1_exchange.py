"""The h1 client's exchange on an in-memory connection: states a real socket reaches only by timing.

The component tests (tests/component/upstream) drive the client over real sockets; what they cannot make
happen on demand is the order of reads within one turn of the event loop, which these tests set.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict

from proxy.upstream.answer import Timeout
from proxy.upstream.forward import HOP_BY_HOP
from proxy.upstream.h1.exchange import Exchange
from proxy.upstream.h1.pool import Pool


class Connection(asyncio.Transport):
    """The console's end of one connection, as the exchange sees it: what arrives while reading is paused
    is held back, as the kernel would hold it, until reading resumes."""

    def __init__(self, exchange: Exchange) -> None:
        super().__init__()
        self.exchange = exchange
        self.paused = False
        self.held: list[bytes] = []
        self.sent: list[bytes] = []
        self.closed = False

    def arrive(self, data: bytes) -> None:
        if self.paused:
            self.held.append(data)
        else:
            self.exchange.data_received(data)

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.exchange.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        held, self.held = self.held, []
        for data in held:
            self.exchange.data_received(data)


@pytest.fixture
async def pool() -> Pool:
    return Pool(
        host="console.invalid",
        port=80,
        tls=None,
        authority="console.invalid",
        read_timeout=0.5,
        connect_timeout=5.0,
        max_connections=1,
        drop=HOP_BY_HOP,
    )


def connect(pool: Pool) -> Connection:
    """The pool's one connection (``max_connections=1``), opened on first use."""
    exchange = Exchange(pool)
    connection = Connection(exchange)
    exchange.connection_made(connection)

    async def opened() -> Exchange:
        return exchange

    pool._connect = opened  # type: ignore[method-assign]
    return connection


async def test_a_whole_body_over_the_high_water_mark_leaves_the_connection_reading(pool: Pool) -> None:
    # The head and the whole body arrive in two reads of one turn of the loop, before the request's task
    # resumes: reading pauses at 256 KiB, and the answer is complete all the same (relay_whole takes it).
    connection = connect(pool)
    body = b"x" * 300_000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + body

    def both_reads() -> None:
        connection.arrive(answer[:200_000])
        connection.arrive(answer[200_000:])

    asyncio.get_running_loop().call_soon(both_reads)
    first = await pool.request("GET", "/big", CIMultiDict(), None)
    assert first.complete
    assert first.take_body() == body
    first.release()

    # The next request goes out on the same pooled connection; its answer must be read, not left in the
    # socket until the read timeout.
    asyncio.get_running_loop().call_soon(connection.arrive, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    try:
        second = await pool.request("GET", "/next", CIMultiDict(), None)
    except Timeout:
        pytest.fail("the pooled connection was left with its reading paused")
    assert len(connection.sent) == 2  # one connection, both requests
    assert second.complete
    assert second.take_body() == b"ok"
    second.release()


async def test_answers_on_one_connection_each_get_only_their_own_head_and_body(pool: Pool) -> None:
    # One parser serves every answer of a connection: nothing of an answer (its headers, a chunked body's
    # state, its length) reaches the next, a HEAD answer's announced length included.
    connection = connect(pool)
    answers = [
        ("GET", b"HTTP/1.1 200 OK\r\nX-First: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nX-Second: 2\r\nContent-Length: 1000\r\n\r\n"),
        ("GET", b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nthree"),
        ("GET", b"HTTP/1.1 204 No Content\r\nX-Fourth: 4\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfive"),
    ]
    seen = []
    for method, answer in answers:
        asyncio.get_running_loop().call_soon(connection.arrive, answer)
        exchange = await pool.request(method, "/", CIMultiDict(), None)
        assert exchange.complete
        seen.append((exchange.status, sorted(exchange.headers.items()), exchange.take_body()))
        exchange.release()
    assert seen == [
        (200, [("X-First", "1")], b"one"),
        (200, [("Content-Length", "1000"), ("X-Second", "2")], b""),
        (404, [("Content-Length", "5")], b"three"),
        (204, [("X-Fourth", "4")], b""),
        (200, [("Content-Length", "4")], b"five"),
    ]
    assert len(connection.sent) == len(answers) and not connection.closed
