"""In-process: the runtime's upstream pool reference counting, and reload bookkeeping that needs no
provider (SSO off). The end-to-end behaviour is in tests/system/reload/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxy.config.load import load_settings
from proxy.config.model import Settings
from proxy.runtime.reload import changed_keys, reload_config
from proxy.runtime.state import Runtime
from proxy.sessions import MemoryStore
from proxy.upstream.forward import Upstream

BASE = {
    "listen": "127.0.0.1:4180",
    "public_url": "http://127.0.0.1:4180",
    "upstream": "http://127.0.0.1:8888",
    "sso": {"enabled": False},
    "session": {"cookie_secret": "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"},
}


def write(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return path


def is_open(upstream: Upstream) -> bool:
    return upstream._session is not None and not upstream._session.closed


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = load_settings(write(tmp_path / "config.yaml"))
    async with aiohttp.ClientSession() as http:
        rt = Runtime(settings, MemoryStore(), http)
        await rt.start(settings)
        yield rt
        await rt.close()


def settings_with(tmp_path: Path, **changes: object) -> Settings:
    return load_settings(write(tmp_path / "other.yaml", **changes))


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_replaced_pool_stays_open_until_the_last_request_using_it_ends(runtime, tmp_path):
    old = runtime.active.upstream
    first, second = runtime.pin(), runtime.pin()
    assert first is old and second is old
    runtime.swap(await runtime.build(settings_with(tmp_path, upstream_timeout="301s")))
    assert runtime.active.upstream is not old
    await settle()
    assert is_open(old)
    runtime.unpin(second)
    await settle()
    assert is_open(old)
    runtime.unpin(first)
    await settle()
    assert not is_open(old)
    assert is_open(runtime.active.upstream)


async def test_one_request_ending_does_not_close_a_pool_another_still_uses(runtime, tmp_path):
    old = runtime.active.upstream
    long = runtime.pin()  # e.g. a websocket opened before the reload
    short = runtime.pin()
    runtime.swap(await runtime.build(settings_with(tmp_path, upstream_timeout="301s")))
    runtime.unpin(short)
    await settle()
    assert is_open(old)
    runtime.unpin(long)
    await settle()
    assert not is_open(old)


async def test_a_replaced_pool_nobody_uses_is_closed_at_once(runtime, tmp_path):
    old = runtime.active.upstream
    runtime.swap(await runtime.build(settings_with(tmp_path, upstream="http://127.0.0.1:9999")))
    await settle()
    assert not is_open(old)


async def test_a_reload_that_keeps_the_upstream_keeps_its_pool(runtime, tmp_path):
    old = runtime.active.upstream
    runtime.swap(await runtime.build(settings_with(tmp_path, header_list_separator=";")))
    await settle()
    assert runtime.active.upstream is old and is_open(old)


async def test_a_refused_candidate_closes_only_what_it_opened(runtime, tmp_path):
    current = runtime.active.upstream
    same = await runtime.build(settings_with(tmp_path, header_list_separator=";"))
    runtime.discard(same)
    other = await runtime.build(settings_with(tmp_path, upstream_timeout="5s"))
    runtime.discard(other)
    await settle()
    assert is_open(current) and not is_open(other.upstream)


async def test_restart_needed_is_judged_against_what_the_process_started_with(runtime, tmp_path):
    path = tmp_path / "config.yaml"
    assert await reload_config(runtime, str(write(path, listen="127.0.0.1:4181")))
    assert runtime.reload_status.needs_restart == ["listen"]
    assert await reload_config(runtime, str(write(path, listen="127.0.0.1:4181", header_list_separator=";")))
    assert runtime.reload_status.needs_restart == ["listen"]  # still not applied
    assert runtime.active.settings.header_list_separator == ";"
    assert await reload_config(runtime, str(write(path, header_list_separator=";")))
    assert runtime.reload_status.needs_restart == []


async def test_a_broken_file_is_refused_and_reverting_it_clears_the_error(runtime, tmp_path):
    path = tmp_path / "config.yaml"
    version = runtime.active.settings.digest
    path.write_text("sso: [unclosed\n")
    assert not await reload_config(runtime, str(path))
    assert runtime.active.settings.digest == version
    assert runtime.reload_status.last_error is not None
    assert runtime.reload_status.last_error.startswith("(file): not valid YAML")
    exposition = runtime.metrics.exposition().decode()
    assert 'sso_sidecar_config_reloads_total{result="failure",trigger="sighup"} 1.0' in exposition
    assert "sso_sidecar_config_last_reload_successful 0.0" in exposition
    write(path)
    assert await reload_config(runtime, str(path))
    assert runtime.reload_status.last_error is None
    assert "sso_sidecar_config_last_reload_successful 1.0" in runtime.metrics.exposition().decode()


async def test_every_problem_of_a_refused_config_is_reported_with_its_key(runtime, tmp_path):
    path = write(tmp_path / "config.yaml", upstream_timeout="soon", reload={"watch_interval": "1ms"})
    assert not await reload_config(runtime, str(path))
    error = runtime.reload_status.last_error or ""
    assert "upstream_timeout:" in error and "reload.watch_interval:" in error


async def test_the_config_info_metric_names_the_running_version(runtime, tmp_path):
    path = write(tmp_path / "config.yaml", header_list_separator="|")
    old = runtime.active.settings.digest
    assert await reload_config(runtime, str(path), trigger="watch")
    new = runtime.active.settings.digest
    text = runtime.metrics.exposition().decode()
    assert f'sso_sidecar_config_info{{sso="off",version="{new}"}} 1.0' in text
    assert old not in text
    assert 'sso_sidecar_config_reloads_total{result="success",trigger="watch"} 1.0' in text


def test_changed_keys_names_top_level_keys(tmp_path):
    a = settings_with(tmp_path)
    b = settings_with(tmp_path, listen="127.0.0.1:1", skip_auth=["^/x"], sso={"enabled": False, "scopes": ["openid"]})
    assert sorted(changed_keys(a, b)) == ["listen", "skip_auth", "sso"]


async def test_a_file_that_is_not_text_is_refused_not_crashed_on(runtime, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert not await reload_config(runtime, str(path))
    assert "is not UTF-8 text" in (runtime.reload_status.last_error or "")
