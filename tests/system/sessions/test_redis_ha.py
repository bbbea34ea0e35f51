"""Redis for high availability: Sentinel, Cluster, TLS, restarts and outages, with real sidecar processes,
the real dev IdP and real redis-server processes (tests/support/redis_ha.py)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from proxy.config.load import parse_settings
from proxy.config.model import Secret
from proxy.errors import ConfigError, StoreUnavailable
from proxy.sessions.redis import RedisStore
from support.idp import login, logout
from support.redis_ha import (
    RedisCluster,
    RedisNode,
    SentinelGroup,
    TLSRedisNode,
    aof_server,
    command,
    session_keys,
    text,
)
from support.waiting import eventually

SESSION_COOKIE = "sso_sidecar"
API = {"X-Requested-With": "test"}  # a lost session answers 401 instead of redirecting to the provider
# Every request finishes within this, whatever Redis does (the sidecars run with redis_timeout: 1s).
BOUND = 3.0


def redis_config(url: str, **extra: object) -> dict[str, object]:
    return {"session": {"store": "redis", "redis_url": url, "redis_timeout": "1s", **extra}}


def replica_of(sidecar_factory, first, config: dict[str, object]):
    """A second sidecar that shares the first one's client, cookie secret and public URL."""
    session = dict(config["session"])  # type: ignore[arg-type]
    session["cookie_secret"] = first.config["session"]["cookie_secret"]
    shared = {**config, "session": session, "public_url": first.config["public_url"], "sso": first.config["sso"]}
    return sidecar_factory(shared, register=False)


async def signed_in(http, sidecar, username: str = "alice.smith"):
    client = http()
    resp = await login(client, sidecar.url_for("/api/whoami"), username)
    assert resp.status == 200, await resp.text()
    return client


async def timed_get(client, url: str, **kwargs) -> tuple[int, float, str]:
    started = time.monotonic()
    async with client.get(url, **kwargs) as resp:
        body = await resp.text()
    return resp.status, time.monotonic() - started, body


async def until_unavailable(client, url: str, **kwargs) -> tuple[int, float, str]:
    """Requests until one gets 503: each within the bound, all within a few seconds."""

    async def unavailable() -> tuple[int, float, str] | None:
        status, elapsed, body = await timed_get(client, url, **kwargs)
        assert status in (200, 503) and elapsed < BOUND, (status, elapsed)
        return (status, elapsed, body) if status == 503 else None

    return await eventually(unavailable, what="a 503 while Redis is away", timeout=2 * BOUND, interval=0.1)


class Traffic:
    """Signed-in users' API requests in a loop (one loop per client), each one timed."""

    def __init__(self, sidecar, clients) -> None:
        self.sidecar = sidecar
        self.results: list[tuple[int, float]] = []
        self.unexpected: list[str] = []  # the body of each answer that is neither 200 nor 503
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._loop(c)) for c in clients]

    async def _loop(self, client) -> None:
        while not self._stop.is_set():
            status, elapsed, body = await timed_get(client, self.sidecar.url_for("/api/whoami"), headers=API)
            self.results.append((status, elapsed))
            if status not in (200, 503):
                self.unexpected.append(f"{status} {body[:300]}")
            await asyncio.sleep(0.02)  # pacing of the load, not a wait for anything

    def why(self) -> list[str]:
        """The unexpected answers, each with the sidecar's log lines for its request id."""
        out = []
        for answer in self.unexpected[:5]:
            match = re.search(r'"request_id": ?"([0-9a-f]+)"', answer)
            lines = [line for line in self.sidecar.logs().splitlines() if match and match[1] in line]
            out.append(answer + "\n" + "\n".join(line[:4000] for line in lines))
        return out

    def served(self) -> int:
        return sum(1 for status, _ in self.results if status == 200)

    async def flowing(self, what: str, more: int = 20) -> None:
        """Until ``more`` further requests were served (200)."""
        target = self.served() + more
        await eventually(lambda: self.served() >= target, what=f"{more} requests served {what}", timeout=20)

    async def stop(self) -> Counter[int]:
        """Stop; every request got its session (200) or a bounded 503, never a 401 or an error page."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        statuses = Counter(status for status, _ in self.results)
        assert set(statuses) <= {200, 503}, (statuses, self.why())
        assert max(elapsed for _, elapsed in self.results) < BOUND
        return statuses


async def user_at(client, url: str) -> str | None:
    status, _, body = await timed_get(client, url, headers=API)
    return json.loads(body)["headers"].get("X-Forwarded-User") if status == 200 else None


# --------------------------------------------------------------------------------------------------
# Configuration


BASE = """
public_url: "https://console.example.com"
upstream: "http://127.0.0.1:8888"
sso: {issuer_url: "https://idp.example.com", client_id: "c", client_secret: "s"}
session:
  store: redis
  cookie_secret: "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"
"""


def parse(session_yaml: str, env: dict[str, str] | None = None):
    text = BASE + textwrap.indent(textwrap.dedent(session_yaml), "  ")
    return parse_settings(text, env or {})


def problems(session_yaml: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(session_yaml, env)
    return {p.key: p.message for p in info.value.problems}


def test_each_redis_topology_is_read_from_its_url_or_keys(tmp_path: Path):
    single = parse('redis_url: "rediss://app:${PW}@redis.internal:6380/2"', {"PW": "s3cr/t+x"}).session
    assert (single.redis.mode, single.redis.addresses, single.redis.db, single.redis.tls) == (
        "single",
        (("redis.internal", 6380),),
        2,
        True,
    )
    assert single.redis.username == "app" and single.redis.password == Secret("s3cr/t+x")
    assert single.redis_url == "rediss://app:****@redis.internal:6380/2"  # shown by `check`, never the password

    sentinel = parse('redis_url: "redis+sentinel://:pw@s1,s2:26380/mymaster/1"').session.redis
    assert sentinel.mode == "sentinel" and sentinel.master_name == "mymaster" and sentinel.db == 1
    assert sentinel.addresses == (("s1", 26379), ("s2", 26380)) and sentinel.password == Secret("pw")

    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "spw").write_text("sentinel-pw\n")
    keys = parse(f"""
        redis_password_file: "{tmp_path / "pw"}"
        redis_sentinel:
          master_name: mymaster
          addresses: ["10.0.0.1:26379", "10.0.0.2"]
          sentinel_password_file: "{tmp_path / "spw"}"
          tls: true
    """).session.redis
    assert (keys.mode, keys.master_name, keys.tls) == ("sentinel", "mymaster", True)
    assert keys.addresses == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert keys.password == Secret("from-file") and keys.sentinel_password == Secret("sentinel-pw")
    assert keys.url == "rediss+sentinel://:****@10.0.0.1:26379,10.0.0.2:26379/mymaster/0"

    cluster = parse('redis_url: "redis+cluster://n1:7000,n2:7001"').session.redis
    assert cluster.mode == "cluster" and cluster.addresses == (("n1", 7000), ("n2", 7001))
    flagged = parse('redis_url: "redis://n1:7000"\nredis_cluster: true\nredis_timeout: 500ms').session.redis
    assert flagged.mode == "cluster" and flagged.timeout == 0.5 and flagged.url == "redis+cluster://n1:7000"
    assert "s3cr" not in repr(single) and "from-file" not in repr(keys)


def test_every_redis_config_problem_names_its_key(tmp_path: Path):
    assert "+sentinel://" in problems('redis_url: "http://x"')["session.redis_url"]
    assert "master" in problems('redis_url: "redis+sentinel://s1:26379"')["session.redis_url"]
    assert "database 0" in problems('redis_url: "redis+cluster://n1/3"')["session.redis_url"]
    assert "several hosts" in problems('redis_url: "redis://a,b"')["session.redis_url"]
    found = problems("redis_url: 'redis+sentinel://:hunter2@s1/m'\nredis_cluster: true")
    assert "Sentinel" in found["session.redis_cluster"]
    assert "hunter2" not in json.dumps(problems('redis_url: "redis://:hunter2@h:99999"'))
    assert "one place" in problems('redis_url: "redis://:pw@h"\nredis_password: other')["session.redis_password"]
    found = problems("""
        redis_url: "redis://h"
        redis_timeout: 0s
        redis_ca_file: /nonexistent
        redis_sentinel: {addresses: ["h:x"], colour: blue}
    """)
    assert set(found) >= {
        "session.redis_timeout",
        "session.redis_ca_file",
        "session.redis_sentinel",
        "session.redis_sentinel.master_name",
        "session.redis_sentinel.addresses[0]",
        "session.redis_sentinel.colour",
    }
    assert "required" in problems("redis_sentinel: {master_name: m}")["session.redis_sentinel.addresses"]
    # With the memory store, Redis keys are not read at all (no password file needed).
    assert parse("store: memory\nredis_password_file: /nonexistent").session.store == "memory"


def test_a_changed_redis_target_needs_a_restart():
    before = parse('redis_url: "redis+sentinel://s1/m"')
    assert before.restart_needed(parse('redis_url: "redis+sentinel://s1/m"')) == []
    assert before.restart_needed(parse('redis_url: "redis+sentinel://s2/m"')) == ["session.redis_url"]
    assert before.restart_needed(parse('redis_url: "redis+sentinel://s1/m"\nredis_timeout: 5s')) == ["session.redis_*"]


# --------------------------------------------------------------------------------------------------
# Hygiene


async def test_an_index_forgets_members_whose_time_is_up(redis_clean):
    """A user who signs in again and again without signing out does not grow their index forever."""
    store = RedisStore(redis_clean.url)
    try:
        added = time.monotonic()
        await store.index_add("i:user", "old", 0.2)
        await store.index_add("i:user", "live", 30)

        async def forgotten() -> bool:
            return await store.index_members("i:user") == {"live"}

        await eventually(forgotten, what="the member whose time is up to be forgotten")
        assert time.monotonic() - added >= 0.2, "forgotten before its time"
        await store.index_add("i:user", "new", 10)
        assert command(redis_clean.port, "ZCARD", "sso:i:user") == 2
        assert 29_000 < session_keys([redis_clean.port])["sso:i:user"][1] <= 30_000  # never shortened
        await store.index_remove("i:user", "live")
        assert await store.index_members("i:user") == {"new"}
    finally:
        await store.close()


async def test_every_session_key_expires_after_logins_logouts_and_abandoned_logins(http, sidecar_factory, redis_clean):
    sc = sidecar_factory(redis_config(redis_clean.url))
    for user in ("alice.smith", "bob.jones", "alice.smith"):
        await signed_in(http, sc, user)
    leaving = await signed_in(http, sc, "bob.jones")
    await logout(leaving, sc.url_for("/oauth2/sign_out"))
    async with http().get(sc.url_for("/somewhere")) as resp:  # a login started and never finished
        assert resp.status == 302
    keys = session_keys([redis_clean.port], "*")
    assert keys and all(key.startswith("sso:") for key in keys)
    assert {key: ttl for key, (_, ttl) in keys.items() if ttl <= 0} == {}


async def test_a_subscription_hears_publishes_and_ends_when_redis_may_have_missed_one(tmp_path):
    """Invalidations (sign-out elsewhere) travel by pub/sub; a subscriber that cannot be sure it heard
    them all must say so (StoreUnavailable) within a bound, so that cached sessions are dropped."""
    redis = RedisNode(tmp_path / "redis").start()
    store = RedisStore(redis.url, timeout=0.5)
    subscription = store.subscribe("sso:test")
    try:
        assert await anext(subscription) == b""
        await store.publish("sso:test", b"session-1")
        assert await asyncio.wait_for(anext(subscription), 2) == b"session-1"

        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(anext(subscription), 5)
        assert time.monotonic() - started < 3
        redis.proc.send_signal(signal.SIGCONT)

        again = store.subscribe("sso:test")
        assert await anext(again) == b""
        await asyncio.to_thread(redis.stop)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(anext(again), 5)
        await again.aclose()
    finally:
        await subscription.aclose()
        await store.close()
        redis.stop()


# --------------------------------------------------------------------------------------------------
# Outages and restarts


async def test_outages_give_a_bounded_503_and_an_aof_restart_keeps_sessions(http, sidecar_factory, tmp_path):
    """A hung Redis (SIGSTOP) and a stopped one both give 503 within the bound and /readyz says not ready;
    the sidecar recovers by itself, and a graceful restart with AOF persistence loses no session."""
    redis = aof_server(tmp_path / "redis").start()
    try:
        sc = sidecar_factory(redis_config(redis.url))
        client = await signed_in(http, sc)
        assert await user_at(client, sc.url_for("/api/whoami")) == "alice.smith"

        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing: only timeouts help
        try:
            # Sessions cached in memory are served until the sidecar notices that it can no longer hear
            # invalidations (a ping interval plus the timeout); then every request needs Redis.
            status, elapsed, body = await until_unavailable(client, sc.url_for("/api/whoami"))
            assert "Temporarily unavailable" in body and "Traceback" not in body
            status, elapsed, body = await timed_get(client, sc.url_for("/api/whoami"), headers=API)
            assert (status, json.loads(body)["error"], elapsed < BOUND) == (503, "session_store_unavailable", True)
            status, elapsed, _ = await timed_get(http(), sc.url_for("/readyz"))
            assert (status, elapsed < BOUND) == (503, True)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert await user_at(client, sc.url_for("/api/whoami")) == "alice.smith"

        await asyncio.to_thread(redis.stop)  # SIGTERM: Redis fsyncs the AOF and exits
        await until_unavailable(client, sc.url_for("/api/whoami"), headers=API)
        assert (await timed_get(http(), sc.url_for("/readyz")))[0] == 503
        assert sc.healthz() == 200 and sc.proc is not None and sc.proc.alive

        await asyncio.to_thread(redis.start)  # the same port and directory: the AOF is replayed
        assert await user_at(client, sc.url_for("/api/whoami")) == "alice.smith"
        assert (await timed_get(http(), sc.url_for("/readyz")))[0] == 200
        assert await user_at(await signed_in(http, sc, "bob.jones"), sc.url_for("/api/whoami")) == "bob.jones"
    finally:
        redis.stop()


# --------------------------------------------------------------------------------------------------
# Sentinel


def test_three_sentinels_with_quorum_two_watch_the_master(tmp_path):
    """What the failover tests stand on: three Sentinels, each monitoring the master with quorum 2 and
    knowing the two others, so that any two of them can agree and authorize a failover."""
    group = SentinelGroup(tmp_path / "redis").start()
    try:
        assert len(group.sentinels) == 3
        for sentinel in group.sentinels:
            flat = sentinel.command("SENTINEL", "MASTER", group.MASTER_NAME)
            assert isinstance(flat, list)
            master = {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}
            assert (master["port"], master["quorum"], master["num-other-sentinels"]) == (
                str(group.master.port),
                "2",
                "2",
            )
            assert text(sentinel.command("SENTINEL", "CKQUORUM", group.MASTER_NAME)).startswith("OK 3 usable Sentinels")
    finally:
        group.stop()


@pytest.mark.parametrize("how", ["sentinel-failover", "master-crash", "master-crash-with-a-sentinel-down"])
async def test_a_sentinel_failover_under_traffic_keeps_every_session(http, sidecar_factory, tmp_path, how):
    group = await asyncio.to_thread(SentinelGroup(tmp_path / "redis").start)
    try:
        sc = sidecar_factory(redis_config(group.url))
        users = ["alice.smith", "bob.jones", "alice.smith", "bob.jones"]
        clients = [await signed_in(http, sc, user) for user in users]
        assert await asyncio.to_thread(group.replicate) == 1  # the replica has every session

        traffic = Traffic(sc, clients)
        listener = RedisStore(group.url, timeout=1.0)
        subscription = listener.subscribe("sso:test")
        assert await anext(subscription) == b""
        ended = asyncio.create_task(anext(subscription))
        await traffic.flowing("before the failover")
        old = group.master.port
        if how == "sentinel-failover":
            group.sentinel.command("SENTINEL", "FAILOVER", group.MASTER_NAME)
        else:
            if how == "master-crash-with-a-sentinel-down":
                # The first Sentinel the sidecar knows: the two left must agree (quorum 2, a majority of 3).
                group.sentinels[0].kill()
            group.master.kill()
        new = await asyncio.to_thread(group.wait_for_new_master, old)
        assert new == group.replica.port
        with pytest.raises(StoreUnavailable):  # it might have missed messages published on the new master
            await asyncio.wait_for(ended, BOUND)
        async with asyncio.timeout(3 * BOUND):  # closing is bounded too, even mid-failover
            await subscription.aclose()
            await listener.close()
        await traffic.flowing("after the switch")
        statuses = await traffic.stop()

        for client, user in zip(clients, users, strict=True):
            assert await user_at(client, sc.url_for("/api/whoami")) == user
        # New logins (pending login taken on the new master) and /readyz work after the switch.
        assert await user_at(await signed_in(http, sc, "carol.white"), sc.url_for("/api/whoami")) == "carol.white"
        assert (await timed_get(http(), sc.url_for("/readyz")))[0] == 200
        # Carol's session went to the new master, not to an old one that Sentinel has yet to demote.
        assert len(session_keys([new], "sso:s:*")) == len(clients) + 1
        assert all(ttl > 0 for _, ttl in session_keys([new]).values())
        print(how, statuses, max(elapsed for _, elapsed in traffic.results))
    finally:
        await asyncio.to_thread(group.stop)


# --------------------------------------------------------------------------------------------------
# Cluster


async def login_across(a, b, http, users: list[str]) -> list:
    """Logins that start on either replica; every callback goes to ``a`` (the one ``public_url`` names), so
    a pending login started on ``b`` is finished by ``a`` through the shared store."""
    clients = []
    for i, user in enumerate(users):
        client = http()
        first = a if i % 2 else b
        async with client.get(first.url_for("/api/whoami"), headers={"Accept": "text/html"}) as resp:
            assert resp.status == 302
            provider = resp.headers["Location"]
        resp = await login(client, provider, user)
        assert resp.status == 200, await resp.text()
        clients.append(client)
    return clients


async def test_a_redis_cluster_serves_sessions_to_two_replicas(http, sidecar_factory, tmp_path):
    cluster = await asyncio.to_thread(RedisCluster(tmp_path / "cluster").start)
    try:
        a = sidecar_factory(redis_config(cluster.url))
        b = replica_of(sidecar_factory, a, redis_config(f"redis://127.0.0.1:{cluster.ports[1]}", redis_cluster=True))
        users = ["alice.smith", "bob.jones", "carol.white", "alice.smith", "bob.jones", "carol.white"]
        clients = await login_across(a, b, http, users)
        for client, user in zip(clients, users, strict=True):
            assert await user_at(client, a.url_for("/api/whoami")) == user
            assert await user_at(client, b.url_for("/api/whoami")) == user

        await logout(clients[0], b.url_for("/oauth2/sign_out"))
        assert await user_at(clients[0], a.url_for("/api/whoami")) is None

        keys = await asyncio.to_thread(session_keys, cluster.master_ports())
        assert len({port for port, _ in keys.values()}) >= 2, keys  # spread over the slots of several masters
        assert all(ttl > 0 for _, ttl in keys.values()), keys
        assert (await timed_get(http(), b.url_for("/readyz")))[0] == 200
        for sidecar in (a, b):  # the invalidation listener subscribed at start, before any other command
            assert "Traceback" not in sidecar.logs(), sidecar.logs()
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_a_redis_cluster_with_replicas_survives_the_loss_of_a_master(http, sidecar_factory, tmp_path):
    """Three masters with a replica each; the master holding the most sessions dies under traffic. Its
    replica takes over its slots, and every session (replicated first) is still there."""
    cluster = await asyncio.to_thread(RedisCluster(tmp_path / "cluster").start)
    try:
        sc = sidecar_factory(redis_config(cluster.url))
        users = ["alice.smith", "bob.jones", "carol.white"] * 2
        clients = [await signed_in(http, sc, user) for user in users]
        await asyncio.to_thread(cluster.replicate)
        sessions = Counter(port for port, _ in session_keys(cluster.master_ports(), "sso:s:*").values())
        assert sum(sessions.values()) == len(clients), sessions
        victim = sessions.most_common(1)[0][0]
        (heir,) = cluster.replica_ports_of(victim)

        traffic = Traffic(sc, clients)
        await traffic.flowing("before the master dies")
        cluster.node(victim).kill()
        await asyncio.to_thread(cluster.wait_for_failover, victim, heir)
        await traffic.flowing("after the failover")
        statuses = await traffic.stop()

        for client, user in zip(clients, users, strict=True):
            assert await user_at(client, sc.url_for("/api/whoami")) == user
        moved = session_keys([heir], "sso:s:*")
        assert len(moved) == sessions[victim], "the heir serves every session the dead master held"
        assert await user_at(await signed_in(http, sc, "dave"), sc.url_for("/api/whoami")) == "dave"
        assert (await timed_get(http(), sc.url_for("/readyz")))[0] == 200
        print("cluster failover", statuses, max(elapsed for _, elapsed in traffic.results))
    finally:
        await asyncio.to_thread(cluster.stop)


# --------------------------------------------------------------------------------------------------
# TLS


async def test_tls_redis_with_a_private_ca_and_a_password_file(http, sidecar_factory, tmp_path):
    redis = TLSRedisNode(tmp_path / "redis", password="tls-redis-password").start()
    try:
        (tmp_path / "redis-password").write_text("tls-redis-password\n")
        config = redis_config(
            redis.url, redis_ca_file=str(redis.ca), redis_password_file=str(tmp_path / "redis-password")
        )
        sc = sidecar_factory(config)
        client = await signed_in(http, sc)
        assert await user_at(client, sc.url_for("/api/whoami")) == "alice.smith"
        assert (await timed_get(http(), sc.url_for("/readyz")))[0] == 200
    finally:
        redis.stop()
