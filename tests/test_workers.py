"""Several worker processes on one port: shared sessions, sign-out reaching every worker at once,
SIGHUP passed on to every worker, SIGTERM stopping them all."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from yarl import URL

from support.idp import login

SESSION_COOKIE = "sso_sidecar"


def worker_pids(parent: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.add(int(entry))
    return children


async def status(client, url: str, **kwargs) -> int:
    async with client.get(url, **kwargs) as resp:
        await resp.read()
        return resp.status


@pytest.fixture
def two_workers(sidecar_factory, redis_clean):
    return sidecar_factory(
        {"workers": 2, "session": {"store": "redis", "redis_url": redis_clean.url, "cache_ttl": "30s"}}
    )


async def test_two_workers_serve_one_port_and_share_sessions(http, two_workers):
    assert len(worker_pids(two_workers.proc.pid)) == 2
    client = http()
    await login(client, two_workers.url_for("/api/whoami"), "alice.smith")
    # Fresh connections land on either worker; every one of them knows the session.
    statuses = [await status(http(cookies=False), two_workers.url_for("/api/whoami"),
                             headers={"Cookie": f"{SESSION_COOKIE}={client.cookie(SESSION_COOKIE)}"})
                for _ in range(20)]  # fmt: skip
    assert set(statuses) == {200}


async def test_sign_out_is_rejected_by_every_worker_within_100ms(http, two_workers):
    client = http()
    await login(client, two_workers.url_for("/api/whoami"), "alice.smith")
    cookie = {"Cookie": f"{SESSION_COOKIE}={client.cookie(SESSION_COOKIE)}"}
    clients = [http(cookies=False) for _ in range(8)]
    for _ in range(3):  # warm both workers' caches over several connections
        assert set(
            await asyncio.gather(*(status(c, two_workers.url_for("/api/whoami"), headers=cookie) for c in clients))
        ) == {200}
    async with client.get(two_workers.url_for("/oauth2/sign_out"), headers={"Sec-Fetch-Site": "same-origin"}) as resp:
        assert resp.status == 302
        # The cached copy has no tokens; the ID token for the provider comes from Redis.
        assert URL(resp.headers["Location"]).query.get("id_token_hint", "").startswith("eyJ")
    signed_out_at = time.monotonic()
    await asyncio.sleep(0.1)
    results = await asyncio.gather(
        *(status(c, two_workers.url_for("/api/whoami"), headers=cookie) for c in clients * 3)
    )
    assert set(results) == {302}, f"still accepted {time.monotonic() - signed_out_at:.3f}s after sign-out"


async def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(http, two_workers):
    pids = worker_pids(two_workers.proc.pid)
    config = dict(two_workers.config)
    config["sso"] = {**config["sso"], "enabled": False}
    two_workers.reload(config)
    deadline = time.monotonic() + 10
    clients = [http(cookies=False) for _ in range(8)]
    while time.monotonic() < deadline:
        results = await asyncio.gather(*(status(c, two_workers.url_for("/api/whoami")) for c in clients))
        if set(results) == {200}:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("not every worker applied the reload")
    assert worker_pids(two_workers.proc.pid) == pids, "a reload must not restart workers"
    two_workers.proc.send_signal(signal.SIGTERM)
    assert await two_workers.proc.await_exit(15) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived its parent"


def test_more_than_one_worker_needs_redis(tmp_path):
    import subprocess

    from support.sidecar import sidecar_command

    path = tmp_path / "c.yaml"
    path.write_text(
        "public_url: http://127.0.0.1:1\nupstream: http://127.0.0.1:2\nworkers: 2\n"
        "sso: {enabled: false}\nsession: {cookie_secret: '" + "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT" + "'}\n"
    )
    result = subprocess.run([*sidecar_command(), "check", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and "workers" in result.stderr and "redis" in result.stderr
