"""Where the settings page's record lives: in Redis when sessions do (shared by every replica), else in
``admin.settings_file``.

Both keep one sealed record (``proxy.admin.record``) and write it only by compare-and-set on its version:
a replica that writes back its copy of an older version (after Redis lost the record, say) is refused,
so it can never undo a later change. Both also keep a short-lived note per replica of the version it has
applied, which the page lists.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from proxy.errors import StoreUnavailable

_RECORD_KEY = "admin:settings"
_REPLICAS_KEY = "admin:replicas"
REPLICA_TTL = 30.0  # a replica that stopped reporting disappears from the page after this long


class Conflict(Exception):
    """The stored record is not the version the write was based on."""


class PageStore(Protocol):
    where: str  # for the page, status and logs: "Redis (redis://...)" or "file /path"
    shared: bool  # True when other replicas read the same record

    async def read(self) -> bytes | None:
        """The sealed record, or None when none is stored. ``StoreUnavailable`` when it cannot be read."""

    async def write(self, raw: bytes, expected_version: int) -> None:
        """Store ``raw`` if the stored version is ``expected_version`` (0: none), else ``Conflict``."""

    async def forget(self) -> None:
        """Remove the record, whatever it holds (also one that fails to open)."""

    async def report(self, replica: str, status: dict[str, Any]) -> None:
        """Note what this replica has applied."""

    async def replicas(self) -> list[dict[str, Any]]:
        """The notes of replicas that reported within ``REPLICA_TTL``."""

    def exposure(self) -> str | None:
        """Why others than the sidecar's user could replace the record (a world-writable file), or None."""


# Compare-and-set on a sealed record's clear-text version (``proxy.admin.record``): write (with no TTL) only while
# the stored version is ARGV[1] (0: nothing stored). 1: written; 0: another version is stored; -1: what is
# stored is not an envelope.
_SET_IF_VERSION = """
local current = redis.call('GET', KEYS[1])
local version = 0
if current then
  local ok, doc = pcall(cjson.decode, current)
  if not ok or type(doc) ~= 'table' or type(doc['version']) ~= 'number' then return -1 end
  version = doc['version']
end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class SharedRedis(Protocol):
    """What the page store needs of the Redis the sessions live in (``proxy.sessions.redis.RedisStore``): keys
    and an index as the session store keeps them, and a Lua script of its own. The record and its script are
    the page's; the session store knows nothing of them."""

    async def get(self, key: str, *, touch: float | None = None) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def index_add(self, key: str, member: str, ttl: float) -> int: ...

    async def index_members(self, key: str) -> builtins.set[str]: ...

    def script(self, source: str) -> Callable[[str, Sequence[str | int | bytes]], Awaitable[object]]: ...


class RedisPageStore:
    shared = True

    def __init__(self, redis: SharedRedis, where: str) -> None:
        self._redis = redis
        self._set_if_version = redis.script(_SET_IF_VERSION)
        self.where = f"Redis ({where})"

    async def read(self) -> bytes | None:
        return await self._redis.get(_RECORD_KEY)  # no TTL to restart: the record lasts

    async def write(self, raw: bytes, expected_version: int) -> None:
        result = await self._set_if_version(_RECORD_KEY, [expected_version, raw])
        if result != 1:
            raise Conflict("the page settings changed meanwhile" if result == 0 else "the stored record is not valid")

    async def forget(self) -> None:
        await self._redis.delete(_RECORD_KEY)

    async def report(self, replica: str, status: dict[str, Any]) -> None:
        await self._redis.set(f"{_REPLICAS_KEY}:{replica}", json.dumps(status).encode(), REPLICA_TTL)
        await self._redis.index_add(_REPLICAS_KEY, replica, REPLICA_TTL)

    def exposure(self) -> str | None:
        return None  # who may write to Redis is Redis's own access control

    async def replicas(self) -> list[dict[str, Any]]:
        result = []
        for replica in sorted(await self._redis.index_members(_REPLICAS_KEY)):
            raw = await self._redis.get(f"{_REPLICAS_KEY}:{replica}")
            if raw is None:
                continue
            with contextlib.suppress(ValueError):
                result.append({"replica": replica, **json.loads(raw)})
        return result


class FilePageStore:
    """One file, written atomically (a new file renamed over it) with mode 0600, under a lock file."""

    shared = False

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self.where = f"file {path}"
        self._replicas: dict[str, tuple[float, dict[str, Any]]] = {}

    async def read(self) -> bytes | None:
        return await asyncio.to_thread(self._read)

    async def write(self, raw: bytes, expected_version: int) -> None:
        await asyncio.to_thread(self._write, raw, expected_version)

    async def forget(self) -> None:
        await asyncio.to_thread(self._forget)

    async def report(self, replica: str, status: dict[str, Any]) -> None:
        self._replicas[replica] = (time.monotonic(), status)

    async def replicas(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {"replica": r, **status} for r, (at, status) in sorted(self._replicas.items()) if now - at < REPLICA_TTL
        ]

    def _read(self) -> bytes | None:
        try:
            return self._path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"The page settings file cannot be read ({exc.strerror or exc}).") from None

    def _write(self, raw: bytes, expected_version: int) -> None:
        with locked(self._path):
            current = self._read()
            if _version(current) != expected_version:
                raise Conflict("the page settings changed meanwhile")
            write_atomically(self._path, raw, "The page settings file")

    def _forget(self) -> None:
        with locked(self._path):
            try:
                self._path.unlink()
            except FileNotFoundError:
                return
            except OSError as exc:
                raise StoreUnavailable(f"The page settings file cannot be removed ({exc.strerror or exc}).") from None
            _fsync_dir(self._path.parent)

    def exposure(self) -> str | None:
        return exposure(self._path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s lock file beside it, for every process of every worker on this host."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreUnavailable(f"{path} cannot be locked ({exc.strerror or exc}).") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomically(path: Path, raw: bytes, what: str) -> None:
    """``raw`` into a new file (mode 0600) renamed over ``path``: a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreUnavailable(f"{what} cannot be written ({exc.strerror or exc}).") from None


def exposure(path: Path) -> str | None:
    """Why others than the sidecar's user could change or replace ``path``, or None.

    A file anyone may write (or one in a directory where anyone may rename files over it) can be swapped
    for an older copy or for nothing by any local user: say so loudly."""
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is not None and mode & stat.S_IWOTH:
        return f"{path} is writable by every user (chmod 600 it)"
    try:
        parent = path.parent.stat().st_mode
    except OSError:
        return None
    if parent & stat.S_IWOTH and not parent & stat.S_ISVTX:
        return f"{path.parent} is writable by every user, who could replace {path.name} (chmod o-w it)"
    return None


def _version(raw: bytes | None) -> int:
    if raw is None:
        return 0
    try:
        version = json.loads(raw)["version"]
    except (ValueError, KeyError, TypeError):
        return -1
    return version if isinstance(version, int) and not isinstance(version, bool) else -1


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
