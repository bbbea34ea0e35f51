"""The hot path's hand-written Redis client (``proxy.sessions.fastget``) against hostile and broken peers.

``FastGet`` pipelines every request's GETEX on one connection and hands replies to callers first-in,
first-out, so the attack that matters is a reply reaching the wrong caller: one user's session read as
another's. Each test here is a peer that misbehaves on purpose, a RESP server on 127.0.0.1 written for it
(replies cut into single bytes, garbage, a reply nobody asked for, a connection closed mid-reply, a reply of
the wrong type, a refused handshake, a caller that gives up), and checks that every caller gets its own
value or an error, never another caller's. The last test puts a man in the middle between the store and a
real redis-server that swaps the replies of concurrent reads: the session's sealing (under its cookie's key,
bound to its id) must turn every swap into "no session", never into the other user's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self

import hiredis
import pytest

from proxy.config.model import RedisSettings, Secret, SessionSettings
from proxy.sessions import SessionManager
from proxy.sessions.fastget import Fallback, FastGet
from proxy.sessions.redis import RedisStore
from support.redis_server import RedisServer
from support.waiting import eventually

TIMEOUT = 2.0


class _Commands:
    """The commands a client sends, parsed (a RESP array each)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._parser = hiredis.Reader()

    async def next(self) -> list[bytes] | None:
        while (command := self._parser.gets()) is False:
            data = await self._reader.read(65536)
            if not data:
                return None
            self._parser.feed(data)
        return command

    async def answer_handshake(self, writer: asyncio.StreamWriter, reply: bytes = b"+OK\r\n") -> None:
        command = await self.next()
        assert command is not None and command[:2] == [b"CLIENT", b"SETNAME"], command
        writer.write(reply)
        await writer.drain()


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def value_of(command: list[bytes]) -> bytes:
    assert command[0] == b"GETEX", command
    return b"value-of-" + command[1]


Handler = Callable[[_Commands, asyncio.StreamWriter], Awaitable[None]]


class _Loopback:
    """A TCP server on 127.0.0.1 for the length of an ``async with``; ``_serve`` answers each connection."""

    server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Peer(_Loopback):
    """A RESP server whose every connection is served by ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_client = 0

    def client(self) -> FastGet:
        return FastGet(RedisSettings(addresses=(("127.0.0.1", self.port),), timeout=TIMEOUT), TIMEOUT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(_Commands(reader), writer)
            if not await reader.read(1):
                self.closed_by_client += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client += 1
        finally:
            writer.close()


async def honest_after_handshake(commands: _Commands, writer: asyncio.StreamWriter) -> None:
    while (command := await commands.next()) is not None:
        writer.write(bulk(value_of(command)))
        await writer.drain()


async def each_own_value(fast: FastGet, keys: list[str]) -> None:
    values = await asyncio.gather(*(fast.getex(key, 60_000) for key in keys))
    assert values == [b"value-of-" + key.encode() for key in keys]


async def test_replies_cut_into_single_bytes_reach_each_its_own_caller() -> None:
    async def dribble(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer)
        while (command := await commands.next()) is not None:
            reply = bulk(value_of(command))
            for i in range(len(reply)):
                writer.write(reply[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    async with Peer(dribble) as peer:
        fast = peer.client()
        try:
            await each_own_value(fast, [f"s:{i}" for i in range(60)])
            assert peer.connections == 1
        finally:
            fast.close()


async def test_replies_held_back_then_sent_in_one_write_reach_each_its_own_caller() -> None:
    async def hoard(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer)
        held = []
        while len(held) < 200 and (command := await commands.next()) is not None:
            held.append(bulk(value_of(command)))
        writer.write(b"".join(held))
        await writer.drain()
        await honest_after_handshake(commands, writer)

    async with Peer(hoard) as peer:
        fast = peer.client()
        try:
            await each_own_value(fast, [f"s:{i}" for i in range(200)])
            await each_own_value(fast, ["s:after"])
        finally:
            fast.close()


async def test_a_reply_nobody_asked_for_ends_the_connection_and_reaches_nobody() -> None:
    """An unsolicited reply can only be told apart when nothing is pending: then the connection is dropped at
    once, and a read made just after must not wait for a reply that cannot come on it (it is answered by
    redis-py, ``Fallback``) nor be given the stray value."""

    async def stray_after_handshake(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer, b"+OK\r\n" + bulk(b"value-of-sso:s:victim"))
        await honest_after_handshake(commands, writer)

    async with Peer(stray_after_handshake) as peer:
        fast = peer.client()
        try:
            with pytest.raises(Fallback):  # not a wait without end (as before this test), nor the stray value
                await asyncio.wait_for(fast.getex("sso:s:victim", 60_000), TIMEOUT * 5)
            await eventually(lambda: peer.closed_by_client == 1, what="the stray reply's connection dropped")
        finally:
            fast.close()

    async def stray_later(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer)
        command = await commands.next()
        assert command is not None
        writer.write(bulk(value_of(command)) + bulk(b"value-of-s:next"))  # one more than asked
        await writer.drain()
        await honest_after_handshake(commands, writer)

    async with Peer(stray_later) as peer:
        fast = peer.client()
        try:
            assert await fast.getex("s:first", 60_000) == b"value-of-s:first"
            await eventually(lambda: peer.closed_by_client == 1, what="the connection with a stray reply dropped")
            # The next read goes out on a new connection and gets its own reply, not the stray one.
            assert await fast.getex("s:next-user", 60_000) == b"value-of-s:next-user"
            assert peer.connections == 2
        finally:
            fast.close()


@pytest.mark.parametrize(
    "junk",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"$-5\r\n",
        b"*1\r\n!\r\n",
        b"\x00" * 16,
    ],
    ids=["http", "negative-length", "nested-bad-type", "nul-bytes"],
)
async def test_garbage_fails_every_waiting_caller_and_the_next_read_reconnects(junk: bytes) -> None:
    answered = 0

    async def garbage_first(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await commands.answer_handshake(writer)
        if answered == 0:
            answered += 1
            for _ in range(3):
                await commands.next()
            writer.write(junk)
            await writer.drain()
        await honest_after_handshake(commands, writer)

    async with Peer(garbage_first) as peer:
        fast = peer.client()
        try:
            results = await asyncio.gather(*(fast.getex(f"s:{i}", 60_000) for i in range(3)), return_exceptions=True)
            assert all(isinstance(r, Fallback) for r in results), results
            await each_own_value(fast, ["s:0", "s:1"])
            assert peer.connections == 2
        finally:
            fast.close()


async def test_a_connection_closed_mid_reply_gives_nobody_part_of_a_value() -> None:
    async def cut(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer)
        first, second = await commands.next(), await commands.next()
        assert first is not None and second is not None
        writer.write(bulk(value_of(first)) + b"$40\r\nvalue-of-s:b-but-cut")
        await writer.drain()
        writer.close()

    async with Peer(cut) as peer:
        fast = peer.client()
        try:
            a, b = await asyncio.gather(fast.getex("s:a", 60_000), fast.getex("s:b", 60_000), return_exceptions=True)
            assert a == b"value-of-s:a"
            assert isinstance(b, Fallback)
        finally:
            fast.close()


async def test_a_reply_of_the_wrong_type_fails_only_its_own_caller() -> None:
    async def odd(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer)
        while (command := await commands.next()) is not None:
            key = command[1]
            if key.endswith(b"int"):
                writer.write(b":42\r\n")
            elif key.endswith(b"array"):
                writer.write(b"*2\r\n" + bulk(b"value-of-s:x") + bulk(b"value-of-s:y"))
            elif key.endswith(b"error"):
                writer.write(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
            else:
                writer.write(bulk(value_of(command)))
            await writer.drain()

    async with Peer(odd) as peer:
        fast = peer.client()
        try:
            keys = ["s:a", "s:int", "s:b", "s:array", "s:c", "s:error", "s:d"]
            results = await asyncio.gather(*(fast.getex(k, 60_000) for k in keys), return_exceptions=True)
            for key, result in zip(keys, results, strict=True):
                if key in ("s:int", "s:array", "s:error"):
                    assert isinstance(result, Fallback), (key, result)
                else:
                    assert result == b"value-of-" + key.encode(), (key, result)
            assert peer.connections == 1  # still in step: the connection was kept
        finally:
            fast.close()


async def test_a_caller_that_gave_up_leaves_its_reply_to_nobody_else() -> None:
    release = asyncio.Event()

    async def slow(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer)
        held = []
        while len(held) < 3 and (command := await commands.next()) is not None:
            held.append(bulk(value_of(command)))
        await release.wait()
        writer.write(b"".join(held))
        await writer.drain()
        await honest_after_handshake(commands, writer)

    async with Peer(slow) as peer:
        fast = peer.client()
        try:
            alice = asyncio.ensure_future(fast.getex("s:alice", 60_000))
            bob = asyncio.ensure_future(fast.getex("s:bob", 60_000))
            carol = asyncio.ensure_future(fast.getex("s:carol", 60_000))
            await asyncio.sleep(0.05)
            alice.cancel()  # alice's client went away while her read was on the wire
            release.set()
            assert await bob == b"value-of-s:bob"
            assert await carol == b"value-of-s:carol"
            assert alice.cancelled()
            assert await fast.getex("s:dave", 60_000) == b"value-of-s:dave"
        finally:
            fast.close()


async def test_a_refused_handshake_is_not_retried_for_a_second() -> None:
    async def refuse(commands: _Commands, writer: asyncio.StreamWriter) -> None:
        await commands.answer_handshake(writer, b"-NOAUTH Authentication required.\r\n")

    async with Peer(refuse) as peer:
        fast = peer.client()
        try:
            with pytest.raises(Fallback):
                await fast.getex("s:a", 60_000)
            refused_at = time.monotonic()
            for _ in range(20):  # every read of the next second goes to redis-py without a new connection
                with pytest.raises(Fallback):
                    await fast.getex("s:a", 60_000)
            if time.monotonic() - refused_at < 0.9:  # (a machine stalled for a second may rightly have tried again)
                assert peer.connections == 1
            await asyncio.sleep(1.1)
            with pytest.raises(Fallback):
                await fast.getex("s:a", 60_000)
            assert peer.connections == 2
        finally:
            fast.close()


# -- a man in the middle swapping the replies of concurrent reads, before a real redis-server -----------------


def _resp(reply: Any) -> bytes:
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, bytes):
        return bulk(reply)
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(_resp(r) for r in reply)
    return b"-%s\r\n" % str(reply).encode()


class Swapper(_Loopback):
    """Relays bytes between clients and a real redis-server; on the sidecar's pipelined connection (the one that
    names itself ``sso-sidecar``) it swaps every two neighbouring replies that arrive together and differ."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.swaps = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        pipelined = False

        async def upstream() -> None:
            nonlocal pipelined
            while data := await client_reader.read(65536):
                if b"SETNAME" in data and b"sso-sidecar" in data:
                    pipelined = True
                redis_writer.write(data)
                await redis_writer.drain()
            redis_writer.close()

        async def downstream() -> None:
            parser = hiredis.Reader()
            while data := await redis_reader.read(65536):
                if not pipelined:
                    client_writer.write(data)
                else:
                    parser.feed(data)
                    replies = []
                    while (reply := parser.gets()) is not False:
                        replies.append(reply)
                    for i in range(0, len(replies) - 1, 2):
                        if replies[i] != replies[i + 1]:
                            replies[i], replies[i + 1] = replies[i + 1], replies[i]
                            self.swaps += 1
                    client_writer.write(b"".join(_resp(r) for r in replies))
                await client_writer.drain()
            client_writer.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except ConnectionError:
            pass
        finally:
            client_writer.close()
            redis_writer.close()


SETTINGS = SessionSettings(cookie_secrets=(Secret("s" * 40),), lifetime=600, idle_timeout=300)


async def test_replies_swapped_between_users_never_give_one_user_another_users_session(
    redis_clean: RedisServer,
) -> None:
    direct = RedisStore(redis_clean.url)
    users = ("alice", "bob", "carol", "dave")
    try:
        writer = SessionManager(direct, SETTINGS)
        sessions = {
            user: await writer.create(
                claims={"sub": f"sub-{user}", "email": f"{user}@example.com"},
                id_token=f"id-token-of-{user}",
                access_token=f"access-token-of-{user}",
                refresh_token=None,
                access_expires_at=None,
                issuer="https://idp",
                client_id="c",
            )
            for user in users
        }
        async with Swapper(redis_clean.port) as swapper:
            swapped = RedisStore(swapper.url)
            reader = SessionManager(swapped, SETTINGS)  # no invalidation listener: no cache, every read is a GETEX
            try:
                refused = 0
                for _ in range(20):
                    order = [users[i % len(users)] for i in range(40)]
                    loaded = await asyncio.gather(
                        *(reader.load(sessions[u].ticket, issuer="https://idp", client_id="c") for u in order)
                    )
                    for user, session in zip(order, loaded, strict=True):
                        if session is None:
                            refused += 1
                            continue
                        assert session.claims["sub"] == f"sub-{user}", "a user was given another user's session"
                        assert session.access_token == f"access-token-of-{user}"
                assert swapper.swaps > 0, "the attack never happened: the test proves nothing"
                assert refused == 2 * swapper.swaps  # each swapped reply, and only those, read as "no session"
            finally:
                await swapped.close()
    finally:
        await direct.close()
