"""The sidecar served in-process: its upstream settings are checked at load.

The echo console and the in-process sidecar are in ``rig.py``, their fixtures in ``conftest.py``. Every test
runs once per upstream client.
"""

from __future__ import annotations

import secrets

import pytest
import yaml

from proxy.config.load import parse_settings
from proxy.errors import ConfigError


def test_the_upstream_client_and_the_connection_cap_are_checked_at_load() -> None:
    base = {"public_url": "http://127.0.0.1:4180", "upstream": "http://127.0.0.1:8888", "sso": {"enabled": False}}
    base["session"] = {"cookie_secret": secrets.token_urlsafe(32)}
    settings = parse_settings(yaml.safe_dump(base), environ={})
    assert (settings.upstream.client, settings.upstream.max_connections) == ("h1", 256)
    chosen = parse_settings(yaml.safe_dump({**base, "upstream_client": "aiohttp", "upstream_max_connections": 8}), {})
    assert (chosen.upstream.client, chosen.upstream.max_connections) == ("aiohttp", 8)
    with pytest.raises(ConfigError) as refused:
        parse_settings(yaml.safe_dump({**base, "upstream_client": "h2", "upstream_max_connections": 0}), {})
    assert {p.key for p in refused.value.problems} == {"upstream_client", "upstream_max_connections"}


def test_the_relay_writer_is_checked_at_load() -> None:
    base = {"public_url": "http://127.0.0.1:4180", "upstream": "http://127.0.0.1:8888", "sso": {"enabled": False}}
    base["session"] = {"cookie_secret": secrets.token_urlsafe(32)}
    assert parse_settings(yaml.safe_dump(base), environ={}).upstream.relay_writer == "lean"
    chosen = parse_settings(yaml.safe_dump({**base, "relay_writer": "aiohttp"}), {})
    assert chosen.upstream.relay_writer == "aiohttp"
    assert parse_settings(yaml.safe_dump(base), {}).upstream.changed_keys(chosen.upstream) == ["relay_writer"]
    with pytest.raises(ConfigError) as refused:
        parse_settings(yaml.safe_dump({**base, "relay_writer": "fast"}), {})
    assert [(p.key, p.message) for p in refused.value.problems] == [("relay_writer", "must be lean or aiohttp")]
