"""Where page settings live: compare-and-set writes in a real Redis and in a file (0600, atomic)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.admin.store import Conflict, FilePageStore, PageStore, RedisPageStore
from proxy.sessions.redis import RedisStore
from support.redis_server import RedisServer


def sealed(version: int, body: str = "x") -> bytes:
    """Stands for a sealed record: the stores only read the clear-text version."""
    return json.dumps({"format": 1, "version": version, "data": body}).encode()


@pytest.fixture(params=["redis", "file"])
async def store(request: pytest.FixtureRequest, redis_clean: RedisServer, tmp_path: Path) -> AsyncIterator[PageStore]:
    if request.param == "file":
        yield FilePageStore(str(tmp_path / "page-settings.json"))
        return
    redis = RedisStore(redis_clean.url)
    yield RedisPageStore(redis, redis_clean.url)
    await redis.close()


async def test_writes_are_compare_and_set_on_the_version(store: PageStore) -> None:
    assert await store.read() is None
    await store.write(sealed(1), 0)
    with pytest.raises(Conflict):
        await store.write(sealed(1, "again"), 0)  # written on top of nothing, but something is there
    await store.write(sealed(2), 1)
    with pytest.raises(Conflict):
        await store.write(sealed(2, "stale"), 1)  # a second writer that read version 1 loses
    assert await store.read() == sealed(2)


async def test_a_copy_written_back_after_the_record_was_lost_is_refused(store: PageStore) -> None:
    """A replica holding version 5 must never put it back over what came after (or over nothing)."""
    await store.write(sealed(1), 0)
    await store.forget()  # Redis lost its data (or Forget page settings)
    with pytest.raises(Conflict):
        await store.write(sealed(6, "old copy"), 5)
    assert await store.read() is None


async def test_a_stored_value_that_is_not_a_record_blocks_writes_until_forgotten(store: PageStore) -> None:
    await store.write(sealed(1), 0)
    if isinstance(store, FilePageStore):
        Path(store.where.removeprefix("file ")).write_bytes(b"garbage")
    else:
        await store._set_if_version("admin:settings", [1, b"garbage"])
    with pytest.raises(Conflict):
        await store.write(sealed(2), 1)
    await store.forget()
    await store.write(sealed(1), 0)


async def test_the_file_is_private_and_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "page-settings.json"
    store = FilePageStore(str(path))
    await store.write(sealed(1), 0)
    inode = path.stat().st_ino
    await store.write(sealed(2), 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # a new file renamed over the old: a reader never sees half of one
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".page-settings.json.") and p.suffix == ".tmp"
    ] == []


async def test_an_unreadable_file_is_unavailable_not_empty(tmp_path: Path) -> None:
    from proxy.errors import StoreUnavailable

    path = tmp_path / "page-settings.json"
    path.write_bytes(sealed(1))
    path.chmod(0)
    store = FilePageStore(str(path))
    if os.geteuid() == 0:  # root reads anything: make the path a directory instead
        path.chmod(0o600)
        path.unlink()
        path.mkdir()
    with pytest.raises(StoreUnavailable):
        await store.read()


async def test_replicas_report_what_they_applied(store: PageStore) -> None:
    await store.report("host-a/1", {"version": 3, "at": 1.0})
    await store.report("host-b/2", {"version": 4, "at": 2.0})
    found = await store.replicas()
    assert [(r["replica"], r["version"]) for r in found] == [("host-a/1", 3), ("host-b/2", 4)]
