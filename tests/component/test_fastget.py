"""The pipelined GETEX of the Redis store (``proxy.sessions.fastget``), against a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from proxy.errors import StoreUnavailable
from proxy.sessions.redis import RedisStore
from support.redis_ha import RedisNode, command
from support.waiting import eventually


def getex_clients(node: RedisNode) -> int:
    """How many client connections last sent a GETEX."""
    reply = node.command("CLIENT", "LIST")
    assert isinstance(reply, bytes)
    return sum(1 for line in reply.decode().splitlines() if " cmd=getex " in f" {line} ")


def pipelined(node: RedisNode) -> bool:
    """Whether the store's own pipelined connection (named ``sso-sidecar``) is open and did the last GETEX."""
    reply = node.command("CLIENT", "LIST")
    assert isinstance(reply, bytes)
    return any(
        " name=sso-sidecar " in f" {line} " and " cmd=getex " in f" {line} " for line in reply.decode().splitlines()
    )


@pytest.fixture
def node(tmp_path):
    redis = RedisNode(tmp_path / "redis").start()
    yield redis
    redis.stop()


async def test_concurrent_reads_share_one_connection_and_each_gets_its_own_value(node):
    store = RedisStore(node.url)
    try:
        for i in range(300):
            await store.set(f"s:{i}", b"value-%d" % i, 60)
        values = await asyncio.gather(*(store.get(f"s:{i}", touch=600) for i in range(300)))
        assert values == [b"value-%d" % i for i in range(300)]
        assert await store.get("s:missing", touch=600) is None
        # One pipelined connection carried all 301 reads (redis-py would have opened one per waiting read).
        assert getex_clients(node) == 1
        pttl = command(node.port, "PTTL", "sso:s:7")
        assert isinstance(pttl, int) and 590_000 < pttl <= 600_000  # the idle timer was restarted
    finally:
        await store.close()


async def test_a_restarted_redis_costs_no_failed_read(node):
    store = RedisStore(node.url)
    try:
        await store.set("s:a", b"one", 60)
        assert await store.get("s:a", touch=60) == b"one"
        node.kill()
        node.start()
        await store.set("s:a", b"two", 60)
        # The pipelined connection died with the old process: the read falls back to redis-py, which
        # reconnects, and the pipelined connection is opened again a second later.
        assert await store.get("s:a", touch=60) == b"two"

        async def pipelined_again() -> bool:
            assert await store.get("s:a", touch=60) == b"two"  # every read on the way succeeds
            return pipelined(node)

        await eventually(pipelined_again, what="the pipelined connection to be opened again", timeout=10)
        assert getex_clients(node) == 1
    finally:
        await store.close()


async def test_a_hung_redis_is_unavailable_after_one_timeout_not_two(node):
    store = RedisStore(node.url, timeout=1.0)
    try:
        await store.set("s:a", b"one", 60)
        assert await store.get("s:a", touch=60) == b"one"
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.get("s:a", touch=60)
            # A timeout on the pipelined connection is final; falling back would double the wait.
            assert time.monotonic() - started < 1.8
        finally:
            node.proc.send_signal(signal.SIGCONT)

        async def served() -> bool:
            return await store.get("s:a", touch=60) == b"one"

        await eventually(served, what="reads to work again", timeout=10, ignoring=StoreUnavailable)
    finally:
        await store.close()


async def test_password_and_database_are_used(node):
    command(node.port, "CONFIG", "SET", "requirepass", "s3cret")
    store = RedisStore(f"redis://:s3cret@127.0.0.1:{node.port}/3")
    wrong = RedisStore(f"redis://:wrong@127.0.0.1:{node.port}/3", timeout=1.0)
    try:
        await store.set("s:a", b"in db 3", 60)
        assert await store.get("s:a", touch=60) == b"in db 3"
        assert await asyncio.gather(*(store.get("s:a", touch=60) for _ in range(20))) == [b"in db 3"] * 20
        with pytest.raises(StoreUnavailable):
            await wrong.get("s:a", touch=60)
    finally:
        await store.close()
        await wrong.close()
    plain = RedisStore(f"redis://:s3cret@127.0.0.1:{node.port}/0")
    try:
        assert await plain.get("s:a", touch=60) is None  # the value lives in db 3 only
    finally:
        await plain.close()


async def test_an_error_reply_is_reported_and_the_connection_keeps_working(node):
    store = RedisStore(node.url, timeout=1.0)
    try:
        await store.set("s:ok", b"fine", 60)
        assert await store.get("s:ok", touch=60) == b"fine"
        command(node.port, "LPUSH", "sso:s:list", "x")  # GETEX on a list: WRONGTYPE
        with pytest.raises(StoreUnavailable):
            await store.get("s:list", touch=60)
        assert await store.get("s:ok", touch=60) == b"fine"
    finally:
        await store.close()
