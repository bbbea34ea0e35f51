"""Measurements besides throughput: Redis memory per session, sidecar RSS, invalidation latency."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import _paths  # noqa: F401  (tests/ on sys.path)
import aiohttp
import redis
from stack import Running, rss_kib
from yarl import URL

from support.idp import parse_forms

AES_GCM_OVERHEAD = 12 + 16  # nonce + tag around each sealed record (proxy/sessions)


def _compact(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


# --------------------------------------------------------------------------------------------------
# Redis memory per session


def redis_memory(port: int, pattern: str, *, limit: int = 2000) -> dict[str, Any]:
    """``MEMORY USAGE`` (exact: ``SAMPLES 0``) and ``STRLEN`` of up to ``limit`` keys matching
    ``pattern``."""
    client = redis.Redis(host="127.0.0.1", port=port)
    usage, lengths = [], []
    try:
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key)
            usage.append(int(client.memory_usage(key, samples=0) or 0))
            if kind == b"string":
                lengths.append(int(client.strlen(key)))
            if len(usage) >= limit:
                break
    finally:
        client.close()
    return {
        "keys": len(usage),
        "memory_usage_median": statistics.median(usage) if usage else None,
        "memory_usage_mean": round(statistics.fmean(usage), 1) if usage else None,
        "value_bytes_median": statistics.median(lengths) if lengths else None,
    }


def redis_total(port: int, pattern: str) -> dict[str, Any]:
    """Every key matching ``pattern``: how many, and their ``MEMORY USAGE`` summed."""
    client = redis.Redis(host="127.0.0.1", port=port)
    count = total = 0
    try:
        for key in client.scan_iter(match=pattern, count=1000):
            count += 1
            total += int(client.memory_usage(key, samples=0) or 0)
    finally:
        client.close()
    return {"keys": count, "bytes": total}


def session_memory(redis_port: int, direct: dict[str, Any], userinfo: dict[str, Any] | None) -> dict[str, Any]:
    """Redis bytes per sidecar session against the raw size of what it holds.

    Raw size: the three tokens as the provider issued them for a user like the benchmark's (a code flow of
    our own, ``logins.direct_tokens``) plus the claims as compact JSON (ID-token claims merged with the
    userinfo claims: what the sidecar keeps). The record itself is sealed, so its plaintext size is the
    stored value minus AES-GCM's nonce and tag.
    """
    tokens = direct["tokens"]
    claims = {**direct["id_token_claims"], **direct["userinfo"]}
    token_bytes = sum(len(tokens.get(k) or "") for k in ("id_token", "access_token", "refresh_token"))
    raw = token_bytes + _compact(claims)
    sessions = redis_memory(redis_port, "sso:s:*")
    everything = redis_total(redis_port, "sso:*")
    out: dict[str, Any] = {
        "raw_tokens_bytes": token_bytes,
        "raw_claims_bytes": _compact(claims),
        "raw_bytes": raw,
        "userinfo_endpoint_claims_bytes": _compact(userinfo) if userinfo is not None else None,
        "session_keys": sessions["keys"],
        "memory_usage_median": sessions["memory_usage_median"],
        "stored_value_bytes_median": sessions["value_bytes_median"],
        "all_sidecar_keys": everything["keys"],
        "all_sidecar_bytes": everything["bytes"],
    }
    if sessions["memory_usage_median"] is not None:
        out["overhead_bytes"] = sessions["memory_usage_median"] - raw
        if sessions["value_bytes_median"] is not None:
            plaintext = sessions["value_bytes_median"] - AES_GCM_OVERHEAD
            out["record_plaintext_bytes"] = plaintext
            out["record_overhead_bytes"] = plaintext - raw
            out["redis_key_overhead_bytes"] = sessions["memory_usage_median"] - sessions["value_bytes_median"]
        if sessions["keys"]:
            # Index entries (sub and sid sets for back-channel logout) are part of a session's cost too.
            out["all_in_bytes_per_session"] = round(everything["bytes"] / sessions["keys"], 1)
    return out


# --------------------------------------------------------------------------------------------------
# RSS


def rss_total_kib(run: Running) -> dict[str, Any]:
    pids = run.pids()
    per = {pid: rss_kib(pid) for pid in pids}
    return {"total_kib": sum(per.values()), "per_process_kib": per}


# --------------------------------------------------------------------------------------------------
# Invalidation latency


@dataclass
class Poll:
    replica: str
    sent: float
    status: int


async def _poller(url: str, cookie: str, replica: str, stop: asyncio.Event, out: list[Poll], gap: float) -> None:
    # A new connection per request: SO_REUSEPORT hashes each one to a worker, so polls reach them all.
    connector = aiohttp.TCPConnector(force_close=True)
    headers = {"Cookie": cookie, "Accept": "application/json", "X-Requested-With": "bench"}
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                async with http.get(url, headers=headers, allow_redirects=False) as resp:
                    await resp.read()
                    out.append(Poll(replica, sent, resp.status))
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(gap)


async def _warm(url: str, cookie: str, n: int) -> int:
    connector = aiohttp.TCPConnector(force_close=True)
    ok = 0
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
        for _ in range(n):
            async with http.get(url, headers={"Cookie": cookie}, allow_redirects=False) as resp:
                await resp.read()
                ok += resp.status == 200
    return ok


async def invalidation(
    replicas: Sequence[Running],
    cookie: str,
    trigger: Callable[[], Awaitable[dict[str, Any]]],
    *,
    pollers: int = 4,
    gap: float = 0.003,
    horizon: float = 1.5,
) -> dict[str, Any]:
    """Poll every replica (fresh connections, so every worker) with ``cookie``; await ``trigger()`` (the
    sign-out or back-channel logout request); keep polling ``horizon`` seconds.

    ``latency_ms``: how long after the trigger's response a request could still get through (the send
    time of the last accepted poll; 0 when every poll sent after the response was refused). The
    ``*_since_request_ms`` figures count from when the trigger request was sent instead.
    """
    warm = {r.name: await _warm(r.url + "/", cookie, 24) for r in replicas}
    polls: list[Poll] = []
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_poller(r.url + "/", cookie, r.name, stop, polls, gap))
        for r in replicas
        for _ in range(pollers)
    ]
    await asyncio.sleep(0.3)
    before_ok = sum(p.status == 200 for p in polls)
    started = time.perf_counter()
    detail = await trigger()
    t0 = time.perf_counter()
    await asyncio.sleep(horizon)
    stop.set()
    await asyncio.gather(*tasks)
    per: dict[str, Any] = {}
    worst = 0.0
    for r in replicas:
        mine = [p for p in polls if p.replica == r.name and p.sent >= started]
        after = [p for p in mine if p.sent >= t0]
        accepted = [(p.sent - t0) * 1000 for p in after if p.status == 200]
        last_ok = max(accepted) if accepted else 0.0
        worst = max(worst, last_ok)
        ok_since = [(p.sent - started) * 1000 for p in mine if p.status == 200]
        refused_since = [(p.sent - started) * 1000 for p in mine if p.status != 200]
        per[r.name] = {
            "workers": r.workers,
            "warm_ok": warm[r.name],
            "polls_after": len(after),
            "accepted_after": len(accepted),
            "last_accepted_ms": round(last_ok, 1),
            "last_accepted_since_request_ms": round(max(ok_since), 1) if ok_since else None,
            "first_refused_since_request_ms": round(min(refused_since), 1) if refused_since else None,
            "statuses_after": sorted({p.status for p in after}),
        }
    return {
        "latency_ms": round(worst, 1),
        "resolution_ms": round(gap * 1000 + 1, 1),
        "observed_ms": horizon * 1000,
        "trigger_ms": round((t0 - started) * 1000, 1),
        "accepted_before_trigger": before_ok,
        "still_accepted_at_end": worst >= horizon * 1000 - 50,
        "replicas": per,
        "trigger": detail,
    }


async def sign_out(run: Running, cookie: str) -> dict[str, Any]:
    """The user's sign-out on one replica, from the sidecar's own page (same-origin)."""
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.get(
            run.url + "/oauth2/sign_out",
            headers={"Cookie": cookie, "Sec-Fetch-Site": "same-origin"},
            allow_redirects=False,
        ) as resp,
    ):
        return {"status": resp.status, "via": run.name}


async def prepare_provider_logout(
    browser: aiohttp.ClientSession, end_session_endpoint: str
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """Open the provider's "sign out?" page now; the returned trigger confirms it. On confirmation the
    provider ends its session and POSTs a logout token to the relying party's back-channel URI."""
    async with browser.get(end_session_endpoint) as resp:
        html = await resp.text()
        page = resp.url
    for form in parse_forms(html):
        if form.method == "POST" and ("xsrf" in form.fields or form.action.endswith("/session/end/confirm")):
            fields = {**form.fields, "logout": "yes"}
            action = page.join(URL(form.action))
            break
    else:
        raise RuntimeError(f"no sign-out form at {page}")

    async def confirm() -> dict[str, Any]:
        async with browser.post(action, data=fields, allow_redirects=False) as resp:
            await resp.read()
            return {"status": resp.status, "via": "provider end_session confirm -> back-channel logout"}

    return confirm
