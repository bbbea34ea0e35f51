"""The ``session.redis_url`` grammar: sockets, IPv6, passwords with "/" and "@", and the password never shown.

The topologies as the config reads them (and their problems by key) are in ``tests/system/sessions/test_redis_ha.py``.
"""

from __future__ import annotations

import pytest

from proxy.config.model import Secret
from proxy.config.redis_url import parse_redis_url, redact_redis_url


def test_unix_sockets_and_ipv6_hosts():
    sock = parse_redis_url("unix://:pw@/run/redis/redis.sock?db=3")
    assert (sock.unix_path, sock.db, sock.addresses, sock.password) == ("/run/redis/redis.sock", 3, (), Secret("pw"))
    assert sock.url == "unix://:****@/run/redis/redis.sock?db=3"
    v6 = parse_redis_url("redis://[::1]:6380/1")
    assert v6.addresses == (("::1", 6380),) and v6.url == "redis://[::1]:6380/1"
    assert parse_redis_url("redis+sentinel://[fd00::1],h/m").addresses == (("fd00::1", 26379), ("h", 26379))


def test_the_last_at_sign_ends_the_user_info():
    target = parse_redis_url("redis://user:a/b@c@host/0")
    assert target.username == "user" and target.password == Secret("a/b@c")
    assert target.addresses == (("host", 6379),)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/0?ssl_cert_reqs=none", "query parameters"),
        ("unix://", "socket path"),
        ("redis://", "names no host"),
        ("redis://h/0/1", "only the database number"),
        ("redis://h/x", "must be a number"),
        ("redis://h:0", "is not host:port"),
        ("rediss+cluster://n1/0/x", "only database 0"),
    ],
)
def test_an_unusable_url_says_why_without_the_password(url, message):
    with pytest.raises(ValueError) as info:
        parse_redis_url(url.replace("://", "://:hunter2@", 1))
    assert message in str(info.value) and "hunter2" not in str(info.value)


def test_redaction_masks_only_the_password():
    assert redact_redis_url("rediss://app:s3cr/t@h:6380/2?db=1") == "rediss://app:****@h:6380/2?db=1"
    assert redact_redis_url("redis://app@h:6379/0") == "redis://app@h:6379/0"
    assert redact_redis_url("not a url") == "not a url"
