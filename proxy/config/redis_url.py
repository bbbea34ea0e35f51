"""The ``session.redis_url`` grammar: one server, a Sentinel group, or a Cluster, with TLS and credentials.

``parse_redis_url`` turns the URL into a ``RedisSettings``; ``redact_redis_url`` masks its password for
logs, errors and ``check``. No error message ever shows the password.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote

from proxy.config.model import RedisSettings, Secret

REDIS_PORT, SENTINEL_PORT = 6379, 26379
_SCHEMES = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_FORMS = "redis://, rediss://, unix://, redis[s]+sentinel:// or redis[s]+cluster://"
_ADDRESS = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([A-Za-z0-9._-]+)(?::(\d+))?")


def parse_redis_url(text: str) -> RedisSettings:
    """The Redis session store's URL; ``ValueError`` (never showing the password) when it is not usable.

    - ``redis[s]://[[user]:password@]host[:port][/db]`` and ``unix://[[user]:password@]/path.sock[?db=N]``
    - ``redis[s]+sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER_NAME[/db]``: the
      sentinels (port 26379 by default); the password is the Redis servers', not the sentinels'
    - ``redis[s]+cluster://[[user]:password@]host[:port][,host[:port]...]``: seed nodes of a Cluster
    """
    shown = redact_redis_url(text)
    scheme, sep, rest = text.partition("://")
    form = _SCHEMES.get(scheme.lower()) if sep else None
    if form is None:
        raise ValueError(f"{shown!r} must start with {_FORMS}")
    mode, tls = form
    rest, _, query = rest.partition("?")
    # The last "@" ends the user info even when the password holds an unescaped "/" (base64 does).
    userinfo, at, rest = rest.rpartition("@")
    slash = rest.find("/")
    hosts, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    username: str | None = None
    password: Secret | None = None
    if at:
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = Secret(unquote(secret)) if secret else None
    params = parse_qs(query, keep_blank_values=True)
    if set(params) - ({"db"} if scheme == "unix" else set()):
        raise ValueError(f"{shown!r}: query parameters are not supported here; see the session.redis_* keys")
    if scheme == "unix":
        if hosts or path in ("", "/"):
            raise ValueError(f"{shown!r} must name a socket path, e.g. unix:///run/redis/redis.sock")
        db = redis_db(params["db"][0]) if "db" in params else 0
        return RedisSettings(addresses=(), unix_path=unquote(path), db=db, username=username, password=password)
    if not hosts:
        raise ValueError(f"{shown!r} names no host")
    default_port = SENTINEL_PORT if mode == "sentinel" else REDIS_PORT
    addresses = tuple(redis_address(h, default_port) for h in hosts.split(","))
    segments = [unquote(p) for p in path.split("/") if p]
    db, master = 0, ""
    if mode == "single":
        if len(addresses) > 1:
            raise ValueError(f"{shown!r} names several hosts: use redis+sentinel:// or redis+cluster://")
        if len(segments) > 1:
            raise ValueError(f"{shown!r}: the path is only the database number, e.g. redis://host:6379/0")
        db = redis_db(segments[0]) if segments else 0
    elif mode == "sentinel":
        if not 1 <= len(segments) <= 2:
            raise ValueError(f"{shown!r} must name the master: redis+sentinel://host:26379,host:26379/MASTER_NAME[/DB]")
        master = segments[0]
        db = redis_db(segments[1]) if len(segments) == 2 else 0
    elif segments not in ([], ["0"]):
        raise ValueError(f"{shown!r}: a Redis Cluster has only database 0 and takes no path")
    return RedisSettings(
        mode=mode, addresses=addresses, db=db, tls=tls, username=username, password=password, master_name=master
    )


def redact_redis_url(text: str) -> str:
    """The URL with its password masked, for logs, errors and ``check`` output."""
    scheme, sep, rest = text.partition("://")
    rest, question, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text
    return f"{scheme}://{userinfo.partition(':')[0]}:****@{rest}{question}{query}"


def redis_address(text: str, default_port: int) -> tuple[str, int]:
    m = _ADDRESS.fullmatch(text.strip())
    port = int(m.group(2) or m.group(4) or default_port) if m else 0
    if m is None or not 0 < port < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return (m.group(1) or m.group(3), port)


def redis_db(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ValueError(f"database {value!r} must be a number like 0")
    return int(value)
