"""The ``session:`` section: the store (memory or Redis, with its URL and keys) and the cookie secrets."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from proxy.config.model import RedisSettings, Secret, SessionSettings
from proxy.config.reader import ConfigReader, positive_int
from proxy.config.redis_url import SENTINEL_PORT, parse_redis_url, redact_redis_url, redis_address, redis_db
from proxy.config.secrets import weakness

MIN_COOKIE_SECRET_LENGTH = 32


def parse_session(r: ConfigReader, raw: Mapping[str, Any]) -> SessionSettings:
    allowed = {
        "store", "redis_url", "cookie_secret", "cookie_secret_file", "cookie_name", "lifetime",
        "idle_timeout", "login_timeout", "max_pending_logins", "redis_password", "redis_password_file",
        "redis_sentinel", "redis_cluster", "redis_timeout", "redis_ca_file", "cache_ttl",
        "max_pending_logins_per_address",
    }  # fmt: skip
    s = r.section(raw, "session", allowed, "session")
    store = r.string(s, "store", "session.store") or "memory"
    if store not in ("memory", "redis"):
        r.problem("session.store", f"{store!r} must be 'memory' or 'redis'")
    redis_url = r.string(s, "redis_url", "session.redis_url") or "redis://127.0.0.1:6379/0"
    # Redis keys are only read (secret files too) when Redis is in use.
    redis = parse_redis(r, s, redis_url) if store == "redis" else RedisSettings()
    secrets = parse_cookie_secrets(r, s)
    cookie_name = r.string(s, "cookie_name", "session.cookie_name") or "sso_sidecar"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", cookie_name) or cookie_name.startswith("__"):
        r.problem("session.cookie_name", "may contain only letters, digits, '_' and '-', not start with '__'")
    lifetime = r.duration(s, "lifetime", "session.lifetime", 8 * 3600.0)
    idle = r.duration(s, "idle_timeout", "session.idle_timeout", 3600.0)
    if lifetime <= 0:
        r.problem("session.lifetime", "must be positive")
    if idle <= 0:
        r.problem("session.idle_timeout", "must be positive")
    return SessionSettings(
        store=store,
        redis_url=redis.url if store == "redis" else redact_redis_url(redis_url),
        redis=redis,
        cookie_secrets=secrets,
        cookie_name=cookie_name,
        lifetime=lifetime,
        idle_timeout=idle,
        login_timeout=r.duration(s, "login_timeout", "session.login_timeout", 600.0),
        max_pending_logins=r.get(s, "max_pending_logins", "session.max_pending_logins", positive_int, 5),
        max_pending_logins_per_address=r.get(
            s, "max_pending_logins_per_address", "session.max_pending_logins_per_address", positive_int, 1000
        ),
        cache_ttl=r.duration(s, "cache_ttl", "session.cache_ttl", 5.0),
    )


def parse_redis(r: ConfigReader, s: Mapping[str, Any], url: str) -> RedisSettings:
    sentinel = s.get("redis_sentinel")
    if sentinel is not None:
        target = parse_redis_sentinel(r, s)
        if s.get("redis_url") is not None:
            r.problem("session.redis_sentinel", "set either this or session.redis_url, not both")
    else:
        try:
            target = parse_redis_url(url)
        except ValueError as exc:
            r.problem("session.redis_url", str(exc))
            target = RedisSettings()
    if r.boolean(s, "redis_cluster", "session.redis_cluster", False):
        if target.mode == "sentinel":
            r.problem("session.redis_cluster", "cannot be combined with Sentinel (a Cluster fails over itself)")
        elif target.unix_path is not None:
            r.problem("session.redis_cluster", "a Redis Cluster is reached over TCP, not a unix:// socket")
        elif target.db != 0:
            r.problem("session.redis_url", "a Redis Cluster has only database 0")
        else:
            target = replace(target, mode="cluster")
    password, _ = r.one_secret(s, "redis_password", "session", required=False)
    if password is not None:
        if target.password is not None:
            r.problem("session.redis_password", "session.redis_url has a password too; set it in one place")
        target = replace(target, password=password)
    timeout = r.duration(s, "redis_timeout", "session.redis_timeout", 2.0)
    if not 0 < timeout <= 60:
        r.problem("session.redis_timeout", "must be positive and at most 60s")
        timeout = 2.0
    ca_file = r.string(s, "redis_ca_file", "session.redis_ca_file") or None
    if ca_file is not None:
        if not target.tls:
            r.problem("session.redis_ca_file", "needs TLS: a rediss:// URL or session.redis_sentinel.tls")
        elif not os.access(ca_file, os.R_OK):
            r.problem("session.redis_ca_file", f"cannot read {ca_file}")
    return replace(target, timeout=timeout, ca_file=ca_file)


def parse_redis_sentinel(r: ConfigReader, s: Mapping[str, Any]) -> RedisSettings:
    prefix = "session.redis_sentinel"
    allowed = {"master_name", "addresses", "db", "tls", "sentinel_password", "sentinel_password_file"}
    sub = r.section(s, "redis_sentinel", allowed, prefix)
    master = r.string(sub, "master_name", f"{prefix}.master_name", required=True)
    addresses: list[tuple[str, int]] = []
    for i, text in enumerate(r.string_list(sub, "addresses", f"{prefix}.addresses") or ()):
        try:
            addresses.append(redis_address(text, SENTINEL_PORT))
        except ValueError as exc:
            r.problem(f"{prefix}.addresses[{i}]", str(exc))
    if "addresses" not in sub:
        r.problem(f"{prefix}.addresses", "is required: the sentinels as host:port, e.g. [redis-0:26379]")
    sentinel_password, _ = r.one_secret(sub, "sentinel_password", prefix, required=False)
    return RedisSettings(
        mode="sentinel",
        addresses=tuple(addresses),
        db=r.get(sub, "db", f"{prefix}.db", redis_db, 0),
        tls=r.boolean(sub, "tls", f"{prefix}.tls", False),
        master_name=master,
        sentinel_password=sentinel_password,
    )


def parse_cookie_secrets(r: ConfigReader, s: Mapping[str, Any]) -> tuple[Secret, ...]:
    key, file_key = "session.cookie_secret", "session.cookie_secret_file"
    raw_value, path = s.get("cookie_secret"), r.string(s, "cookie_secret_file", file_key)
    values: list[str] = []
    if raw_value is not None and path:
        r.problem(key, "set either cookie_secret or cookie_secret_file, not both")
        return ()
    if path:
        content = r.secret_file(path, file_key)
        if content is None:
            return ()  # unreadable: secret_file said so, naming the file
        # One secret per line, newest first, so a rotation is "add a line on top".
        values = [line.strip() for line in content.splitlines() if line.strip()]
        if not values:
            r.problem(file_key, f"{path} holds no secret: one per line, newest first (openssl rand -base64 32)")
            return ()
        key = file_key
    elif isinstance(raw_value, str):
        values = [r.expand_str(raw_value, key)]
    elif isinstance(raw_value, list) and all(isinstance(v, str) for v in raw_value):
        values = [r.expand_str(v, f"{key}[{i}]") for i, v in enumerate(raw_value)]
    elif raw_value is not None:
        r.problem(key, "must be a string or a list of strings (newest first)")
        return ()
    if not values:
        r.problem(key, "is required (or session.cookie_secret_file); generate one with: openssl rand -base64 32")
        return ()
    for i, v in enumerate(values):
        where = key if len(values) == 1 else f"{key}[{i}]"
        if len(v) < MIN_COOKIE_SECRET_LENGTH:
            r.problem(where, f"must be at least {MIN_COOKIE_SECRET_LENGTH} characters (openssl rand -base64 32)")
        elif (weak := weakness(v)) is not None:
            r.problem(where, weak)
    for v in values:
        r.fingerprint(v)
    return tuple(Secret(v) for v in values)
