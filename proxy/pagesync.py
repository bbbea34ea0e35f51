"""Applying the settings page's record in every process, and never failing open.

With ``admin.enabled``, every worker of every replica polls the page record (``pagestore``) once a
second. When what it applies changes (Enable, Disable, Forget), the new effective config (the file, with
its ``sso:`` section replaced by the page's) goes through the same validated, atomic swap as a reload
(``reload.reload_config``, trigger ``page``), so a change reaches every replica within a few seconds and
no request is dropped.

Never fail open: a process that cannot read the record (store unreachable for longer than
``STALE_AFTER``, or never read since start), that cannot open it before it ever applied one, or that
cannot apply what it says, sets ``runtime.closed``: it answers 503 and is not ready, rather than falling
back to the file's ``sso:`` section. A record that fails to open later (tampered, or a secret no longer
configured) is refused loudly and the running config is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proxy.errors import SidecarError, StoreUnavailable
from proxy.pagerecord import Keys, PageRecord, RecordError
from proxy.pagestore import Conflict, FilePageStore, PageStore, RedisPageStore
from proxy.reload import TRIGGER_PAGE, reload_config
from proxy.runtime import Runtime
from proxy.sessions.redis import RedisStore
from proxy.settings import Secret, Settings

log = logging.getLogger("sso_sidecar.admin")

POLL = 1.0
STALE_AFTER = 5.0  # a record unread for this long may have changed: stop proxying until it is read
RETRY_APPLY = 5.0


def open_page_store(settings: Settings, runtime: Runtime) -> PageStore | None:
    """The store page settings live in for this process: Redis with the sessions, else the settings file."""
    if isinstance(runtime.store, RedisStore):
        return RedisPageStore(runtime.store, settings.session.redis_url)
    if settings.admin.settings_file:
        return FilePageStore(settings.admin.settings_file)
    return None


async def read_record(settings: Settings) -> tuple[str, PageRecord | None, str | None]:
    """For ``sso-sidecar check``, outside a running sidecar: where the page record lives, the record (None:
    none stored), and why it cannot be read, if it cannot."""
    redis = RedisStore(settings.session.redis) if settings.session.store == "redis" else None
    store: PageStore | None
    if redis is not None:
        store = RedisPageStore(redis, settings.session.redis_url)
    elif settings.admin.settings_file:
        store = FilePageStore(settings.admin.settings_file)
    else:
        return "(no store)", None, "admin.settings_file is not set"
    try:
        raw = await store.read()
        if raw is None:
            return store.where, None, None
        return store.where, Keys(settings.session.cookie_secrets).open(raw)[0], None
    except (StoreUnavailable, OSError) as exc:
        return store.where, None, "unreachable" if isinstance(exc, SidecarError) else str(exc)
    except RecordError as exc:
        return store.where, None, str(exc)
    finally:
        if redis is not None:
            await redis.close()


class PageSync:
    def __init__(self, runtime: Runtime, store: PageStore | None, path: str) -> None:
        self._runtime = runtime
        self.store = store
        self._path = path
        self.replica = f"{socket.gethostname()}/{os.getpid()}"
        self.override: dict[str, Any] | None = None  # the ``sso:`` section applied from the page, if any
        self.version: int | None = None  # the record version this process has applied; None: none yet
        self.record: PageRecord | None = None  # the last record that opened
        self.error: str | None = None  # the last problem reading, opening or applying the record
        self._last_read: float | None = None
        self._applied = False  # the last apply of ``override`` succeeded
        self._failed_apply_at = 0.0
        self._bad_raw: bytes | None = None
        self._keys: tuple[tuple[Secret, ...], Keys] | None = None
        self._lock = asyncio.Lock()

    def keys(self) -> Keys:
        secrets = self._runtime.active.settings.session.cookie_secrets
        if self._keys is None or self._keys[0] != secrets:
            self._keys = (secrets, Keys(secrets))
        return self._keys[1]

    # -- reading and changing the record (the settings page's handlers) ----------------------------------

    async def load(self) -> PageRecord:
        """The record as stored now. ``StoreUnavailable`` when it cannot be read, ``RecordError`` when it
        does not open."""
        if self.store is None:
            raise StoreUnavailable("There is no store for page settings (admin.settings_file changed: restart).")
        raw = await self.store.read()
        if raw is None:
            return PageRecord()
        return self.keys().open(raw)[0]

    async def change(self, edit: Callable[[PageRecord], PageRecord]) -> PageRecord:
        """Read, ``edit`` and write back the record by compare-and-set; ``edit`` runs again on a conflict."""
        assert self.store is not None
        for _ in range(5):
            current = await self.load()
            new = replace(edit(current), version=current.version + 1)
            try:
                await self.store.write(self.keys().seal(new), current.version)
            except Conflict:
                continue
            return new
        raise StoreUnavailable("The page settings kept changing while saving; please try again.")

    async def replace_unreadable(self, record: PageRecord) -> None:
        """Overwrite a record that does not open (Forget page settings, only)."""
        assert self.store is not None
        await self.store.forget()
        await self.store.write(self.keys().seal(replace(record, version=1)), 0)

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # the loop must outlive any one failure; it is reported and retried
                log.exception("settings page: unexpected error while applying the page settings")
                self._close("an unexpected error occurred while applying the SSO settings")
            await asyncio.sleep(POLL)

    async def sync(self) -> None:
        """Read the record once and apply it if what it applies changed. Serialised."""
        async with self._lock:
            await self._sync()
            await self._report()

    async def _sync(self) -> None:
        runtime = self._runtime
        settings = runtime.active.settings
        if not settings.admin.enabled:
            await self._file_authoritative()
            return
        if self.store is None:
            self._close("admin.settings_file changed: restart the sidecar to use it")
            return
        now = time.monotonic()
        try:
            raw = await self.store.read()
        except (StoreUnavailable, OSError) as exc:
            reason = exc.message if isinstance(exc, SidecarError) else str(exc)
            self.error = f"the page settings cannot be read from {self.store.where}: {reason}"
            if self._last_read is None or now - self._last_read > STALE_AFTER:
                self._close(self.error)
            return
        self._last_read = now
        record = self._open(raw)
        if record is None:
            return
        if record.version == 0 and self.version:
            # A store that lost the record (Redis without persistence, restarted) must not silently turn
            # the file's sso section back on or off: keep what was applied, and say so.
            self.error = (
                f"the page settings (version {self.version}) are gone from {self.store.where}; the applied "
                "settings are kept until a new Save and Enable, or Forget page settings"
            )
            log.error("settings page: %s", self.error)
            return
        self.record = record
        await self._apply(record)

    def _open(self, raw: bytes | None) -> PageRecord | None:
        if raw is None:
            return PageRecord()
        try:
            record, old_key = self.keys().open(raw)
        except RecordError as exc:
            self.error = f"the page settings record was refused: {exc}"
            if raw != self._bad_raw:  # loud, but once per bad record rather than once a second
                self._bad_raw = raw
                log.error("settings page: %s; the running config is kept", self.error)
            if self.version is None:
                self._close(self.error)  # nothing applied yet: never fall back to the file
            return None
        self._bad_raw = None
        if old_key:
            self._reseal(record)
        return record

    def _reseal(self, record: PageRecord) -> None:
        """After a cookie-secret rotation: seal the record under the newest secret (one replica wins)."""

        async def write() -> None:
            assert self.store is not None
            newer = replace(record, version=record.version + 1)
            with contextlib.suppress(Exception):
                await self.store.write(self.keys().seal(newer), record.version)
                log.info("settings page: record re-sealed under the newest cookie secret (version %d)", newer.version)

        task = asyncio.get_running_loop().create_task(write())
        task.add_done_callback(lambda _: None)

    async def _apply(self, record: PageRecord) -> None:
        override = record.sso_override()
        if self._applied and override == self.override:
            self.version = record.version  # a draft or a test changed, or the store came back: nothing to apply
            self.error = None
            self._open_gate()
            return
        if override == self.override and time.monotonic() - self._failed_apply_at < RETRY_APPLY:
            return  # a failed apply is retried every few seconds, not at every poll
        self.override = override
        self._applied = await reload_config(self._runtime, self._path, trigger=TRIGGER_PAGE)
        if self._applied:
            self.version = record.version
            self.error = None
            self._open_gate()
            return
        self._failed_apply_at = time.monotonic()
        problem = self._runtime.reload_status.last_error or "unknown problem"
        self.error = f"the page settings (version {record.version}) cannot be applied here: {problem}"
        self._close(self.error)

    async def _file_authoritative(self) -> None:
        self._last_read = None
        self._applied = False
        if self.override is not None:
            self.override = None
            await reload_config(self._runtime, self._path, trigger=TRIGGER_PAGE)
        self.version = None
        self.error = None
        self._open_gate()

    def _close(self, reason: str) -> None:
        if self._runtime.closed != reason:
            log.error("settings page: not proxying: %s", reason)
        self._runtime.closed = reason
        self._runtime.metrics.page_settings_closed.set(1)

    def _open_gate(self) -> None:
        if self._runtime.closed is not None:
            log.warning("settings page: proxying again (page settings version %s applied)", self.version)
        self._runtime.closed = None
        self._runtime.metrics.page_settings_closed.set(0)

    async def _report(self) -> None:
        if self.store is None or not self._runtime.active.settings.admin.enabled:
            return
        active = self._runtime.active.settings
        status = {
            "version": self.version,
            "sso": "enabled" if active.sso.enabled else "disabled",
            "source": active.sso_source,
            "closed": self._runtime.closed,
            "error": self.error,
            "at": time.time(),
        }
        with contextlib.suppress(StoreUnavailable, OSError):
            await self.store.report(self.replica, status)
