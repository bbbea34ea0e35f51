"""Applying the settings page's record in every process, and never failing open.

With ``admin.enabled``, every worker of every replica polls the page record (``proxy.admin.store``) once a
second. When what it applies changes (Enable, Disable, Forget), the new effective config (the file, with
its ``sso:`` section replaced by the page's) goes through the same validated, atomic swap as a reload
(``proxy.runtime.reload.reload_config``, trigger ``page``), so a change reaches every replica within a few
seconds and no request is dropped. ``PageSync`` is the layer the runtime's config source reads over the file
(``proxy.runtime.source``): the reload asks it for the ``sso`` section and never knows it is the page's.

Never fail open, and never go back:

- versions only rise. Each process remembers the newest record version it has accepted (its floor, kept
  across restarts in the anchor file: ``proxy.admin.anchor``) and refuses a lower one, however well sealed: a
  replayed or restored copy is logged at ERROR, shown on the page and in ``/oauth2/status``, and the running
  config is kept;
- a store that lost a record which replaced the file's ``sso`` section ("expected") is not an empty store:
  a process keeps what it applied, and one that has applied nothing does not proxy;
- a process that cannot read the record (store unreachable for longer than ``STALE_AFTER``, or never read
  since start), that cannot open it before it ever applied one, or that cannot apply what it says, holds
  (``Runtime.hold``): it answers 503 and is not ready, rather than falling back to the file.

Writes (``change``) start from the newest record this process knows: a store that lost or rolled back the
record never makes a Save drop what is applied. "Forget page settings" and "Disable SSO" may replace a
record that cannot be used; nothing else may write over what it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from proxy.admin.anchor import Anchor, AnchorError, AnchorFile, anchor_for
from proxy.admin.record import Keys, PageRecord, Pinned, RecordError
from proxy.admin.store import Conflict, FilePageStore, PageStore, RedisPageStore
from proxy.config.model import Secret, Settings
from proxy.errors import SidecarError, StoreUnavailable
from proxy.runtime.reload import reload_config
from proxy.runtime.state import Runtime
from proxy.sessions.redis import RedisStore

log = logging.getLogger("sso_sidecar.admin")

TRIGGER_PAGE = "page"  # the reload's trigger, in its log lines and metrics
POLL = 1.0
STALE_AFTER = 5.0  # a record unread for this long may have changed: stop proxying until it is read
RETRY_APPLY = 5.0
STARTING = "starting: the SSO settings page's record has not been read yet"
WAY_OUT = "Forget page settings (or Disable SSO) replaces it; break-glass may do either"


class RecordUnusable(SidecarError):
    """The stored record cannot be the base of a change: it does not open, it is older than what this
    replica has seen, or it is gone while it was expected. The message says what to do next."""

    status = 409
    code = "page_settings_unusable"
    title = "The page settings cannot be used"


def open_page_store(settings: Settings, runtime: Runtime) -> PageStore | None:
    """The store page settings live in for this process: Redis with the sessions, else the settings file."""
    if isinstance(runtime.store, RedisStore):
        return RedisPageStore(runtime.store, settings.session.redis_url)
    if settings.admin.settings_file:
        return FilePageStore(settings.admin.settings_file)
    return None


def open_anchor(settings: Settings) -> AnchorFile | None:
    path = settings.admin.anchor_file
    return AnchorFile(path) if path else None


UNREACHABLE = "unreachable"


async def read_record(settings: Settings) -> tuple[str, PageRecord | None, str | None]:
    """For ``sso-sidecar check``, outside a running sidecar: where the page record lives, the record (None:
    none stored), and why it cannot be used, if it cannot: ``UNREACHABLE`` (the store does not answer
    here), or why a running sidecar would refuse it (not opening, older than the anchor says this replica
    has seen, gone while expected)."""
    redis = RedisStore(settings.session.redis) if settings.session.store == "redis" else None
    store: PageStore | None
    if redis is not None:
        store = RedisPageStore(redis, settings.session.redis_url)
    elif settings.admin.settings_file:
        store = FilePageStore(settings.admin.settings_file)
    else:
        return "(no store)", None, "admin.settings_file is not set"
    anchor_file = open_anchor(settings)
    try:
        anchor = await anchor_file.read() if anchor_file is not None else Anchor()
        raw = await store.read()
        if raw is None:
            if anchor.expected:
                return store.where, None, f"version {anchor.version} is expected ({anchor_file_of(settings)}) but gone"
            return store.where, None, None
        record = Keys(settings.session.cookie_secrets).open(raw)[0]
        if record.version < anchor.version:
            return store.where, None, f"version {record.version} is older than version {anchor.version}, seen here"
        return store.where, record, None
    except (StoreUnavailable, OSError) as exc:
        return store.where, None, UNREACHABLE if isinstance(exc, SidecarError) else str(exc)
    except (RecordError, AnchorError) as exc:
        return store.where, None, str(exc)
    finally:
        if redis is not None:
            await redis.close()


def anchor_file_of(settings: Settings) -> str:
    return f"admin.state_file {settings.admin.anchor_file}"


@dataclass(frozen=True)
class Base:
    """What a change starts from: the newest record this process can know, and how to write over it."""

    record: PageRecord
    known: bool  # False: what is applied is unknown here (the record is gone, older, or does not open)
    stored_version: int | None  # the stored record's version (CAS); None: the stored value does not open
    version: int  # the version the change gets


def of(runtime: Runtime) -> PageSync | None:
    """The settings page's sync in this process: the layer over the config file, when the page set one."""
    layer = runtime.source.layer
    return layer if isinstance(layer, PageSync) else None


class PageSync:
    """Reads, checks and applies the page record in this process; the ``source.Layer`` over the config file."""

    def __init__(self, runtime: Runtime, store: PageStore | None, path: str) -> None:
        self._runtime = runtime
        self.store = store
        self.anchor_file = open_anchor(runtime.active.settings)
        self._path = path
        self.replica = f"{socket.gethostname()}/{os.getpid()}"
        self.override: dict[str, Any] | None = None  # the ``sso:`` section applied from the page, if any
        self.version: int | None = None  # the record version this process has applied; None: none yet
        self.record: PageRecord | None = None  # the newest record this process accepted
        self.error: str | None = None  # the last problem reading, opening or applying the record
        # The newest version accepted here or in the anchor: anything lower is refused.
        self.floor = 0
        self.expected = False  # the record at ``floor`` replaces the file's sso section
        self.pinned: Pinned | None = None  # the provider last enabled (break-glass may enable only it)
        self.anchor_error: str | None = None
        self.warnings: tuple[str, ...] = ()  # files others could replace (world-writable)
        self._anchor_ready = self.anchor_file is None
        self._last_read: float | None = None
        self._applied = False  # the last apply of ``override`` succeeded
        self._failed_apply_at = 0.0
        self._said: str | None = None  # the last lasting problem logged, so it is logged once, then on change
        self._keys: tuple[tuple[Secret, ...], Keys] | None = None
        self._lock = asyncio.Lock()

    def sso_over(self, file: Settings) -> dict[str, Any] | None:
        """The layer: the ``sso`` section the page applies, while the config file enables the page."""
        return self.override if file.admin.enabled else None

    def keys(self) -> Keys:
        secrets = self._runtime.active.settings.session.cookie_secrets
        if self._keys is None or self._keys[0] != secrets:
            self._keys = (secrets, Keys(secrets))
        return self._keys[1]

    # -- reading and changing the record (the settings page's handlers) ----------------------------------

    async def view(self) -> tuple[PageRecord | None, str | None]:
        """The record the page shows (the stored one, or the newer one this process holds) and the problem
        with the stored one, if any. ``StoreUnavailable`` when the store cannot be read."""
        base = await self.base()
        return (base.record if base.known else self.record), self._problem(base)

    async def load(self) -> PageRecord:
        """The newest record, for a change. ``RecordUnusable`` (with the way out) when it is not known here."""
        base = await self.base()
        if not base.known:
            raise RecordUnusable(f"{self._problem(base)} {WAY_OUT}.")
        return base.record

    async def base(self) -> Base:
        if self.store is None:
            raise StoreUnavailable("There is no store for page settings (admin.settings_file changed: restart).")
        try:
            await self._ready_anchor()
        except AnchorError as exc:
            settings = self._runtime.active.settings
            raise RecordUnusable(
                f"{anchor_file_of(settings)} {exc}. Stop this replica and delete it to make it trust the store again."
            ) from None
        raw = await self.store.read()
        stored: PageRecord | None = None
        stored_version: int | None = 0
        if raw is not None:
            try:
                stored = self.keys().open(raw)[0]
                stored_version = stored.version
            except RecordError:
                stored_version = None
        held = self.record
        newest = max(self.floor, stored_version or 0, held.version if held is not None else 0)
        if stored is not None and stored.version >= self.floor:
            return Base(stored, True, stored_version, newest + 1)
        if held is not None and held.version >= newest and stored_version is not None:
            # The store lost the record, or went back to an older one: what this process holds is newer. (A
            # stored value that does not open could be newer than anything here: only a replacing change.)
            return Base(held, True, stored_version, newest + 1)
        if raw is None and not self.expected:
            return Base(PageRecord(pinned=self.pinned), True, 0, newest + 1)  # nothing was applied from it
        history = stored.history if stored is not None else ()
        return Base(PageRecord(history=history, pinned=self.pinned), False, stored_version, newest + 1)

    async def change(self, edit: Callable[[PageRecord], PageRecord], *, replaces: bool = False) -> PageRecord:
        """Edit the newest record and write it by compare-and-set; ``edit`` runs again on a conflict.

        ``replaces``: the edit decides what is applied (Disable, Forget), so it may start from a record that
        is unknown here, and write over a stored value that does not open. Any other edit of an unknown
        record is refused: it would drop what the record applies."""
        assert self.store is not None
        for _ in range(5):
            base = await self.base()
            if not base.known and not replaces:
                raise RecordUnusable(f"{self._problem(base)} {WAY_OUT}.")
            new = replace(edit(base.record), version=base.version)
            sealed = self.keys().seal(new)
            try:
                if base.stored_version is None:
                    await self.store.forget()  # does not open: replaced whole, then written as if new
                    await self.store.write(sealed, 0)
                else:
                    await self.store.write(sealed, base.stored_version)
            except Conflict:
                continue
            await self._accept(new)
            return new
        raise StoreUnavailable("The page settings kept changing while saving; please try again.")

    def _problem(self, base: Base) -> str | None:
        kept = "A replica that applied the settings before keeps them; one that did not, does not proxy."
        if base.stored_version is None:
            return (
                "The stored page settings were refused: they do not open (tampered, or sealed under a cookie secret "
                f"no longer configured). {kept}"
            )
        if base.stored_version and base.stored_version < self.floor:
            return (
                f"The stored page settings were refused: version {base.stored_version} is older than version "
                f"{self.floor}, which this replica has already seen (a replayed or restored copy). {kept}"
            )
        if base.stored_version == 0 and self.expected:
            where = self.store.where if self.store is not None else "the store"
            return (
                f"The page settings (version {self.floor}) are gone from {where}, although they replace the config "
                f"file's sso section. {kept}"
            )
        return None

    # -- every process: read, check, apply -------------------------------------------------------------------

    async def start(self) -> None:
        """Before the first request: closed until the record was read and applied (never open on the file's
        ``sso`` before the page's record says so), then the first sync."""
        self._close(STARTING)
        await self.sync()

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
        try:
            await self._ready_anchor()
        except AnchorError as exc:
            self._close(f"{anchor_file_of(settings)} {exc}: this replica cannot tell an old record from a new one")
            return
        self._check_exposure()
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
        if raw is None:
            if self.expected:
                self._refuse(
                    f"the page settings (version {self.floor}) are gone from {self.store.where}, although they "
                    "replace the config file's sso section"
                )
                return
            record = PageRecord(pinned=self.pinned)  # nothing stored, nothing expected: the file applies
        else:
            try:
                record, old_key = self.keys().open(raw)
            except RecordError as exc:
                self._refuse(f"the page settings record was refused: {exc}")
                return
            if record.version < self.floor:
                self._refuse(
                    f"the stored page settings were refused: version {record.version} is older than version "
                    f"{self.floor}, which this replica has already seen (a replayed or restored copy)"
                )
                return
            if old_key:
                self._reseal(record)
            await self._accept(record)
        self._said = None
        await self._apply(record)

    def _refuse(self, problem: str) -> None:
        """A stored record (or its absence) that must not be applied: loud once, then on change; the running
        config is kept, and a process that has applied nothing yet does not proxy."""
        self.error = problem
        if problem != self._said:
            self._said = problem
            log.error("settings page: %s; the running config is kept. %s", problem, WAY_OUT)
        if self.version is None:
            self._close(problem)  # nothing applied yet: never fall back to the file

    async def _ready_anchor(self) -> None:
        if self._anchor_ready or self.anchor_file is None:
            return
        anchor = await self.anchor_file.read()
        self.floor = max(self.floor, anchor.version)
        if anchor.version >= self.floor:
            self.expected, self.pinned = anchor.expected, anchor.pinned
        self._anchor_ready = True

    async def _accept(self, record: PageRecord) -> None:
        """``record`` is the newest this process knows: raise the floor (here and in the anchor)."""
        if self.record is not None and record.version < self.record.version:
            return
        self.record = record
        if record.version < self.floor:
            return
        news = record.version > self.floor or (self.expected, self.pinned) != (record.expects_override, record.pinned)
        self.floor = record.version
        self.expected = record.expects_override
        self.pinned = record.pinned
        if not news or self.anchor_file is None or record.version == 0:
            return
        try:
            await self.anchor_file.raise_to(anchor_for(record.version, record.expects_override, record.pinned))
            self.anchor_error = None
        except AnchorError as exc:
            problem = f"{anchor_file_of(self._runtime.active.settings)} {exc}"
            if problem != self.anchor_error:
                log.error("settings page: %s: a restart of this replica could be rolled back", problem)
            self.anchor_error = problem

    def _check_exposure(self) -> None:
        found = tuple(
            w
            for w in (
                self.store.exposure() if self.store is not None else None,
                self.anchor_file.exposure() if self.anchor_file is not None else None,
            )
            if w is not None
        )
        if found != self.warnings:
            for warning in found:
                log.warning("settings page: %s: anyone on this host could replace the page settings", warning)
            self.warnings = found

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
        if self._runtime.closed != reason and reason != STARTING:
            log.error("settings page: not proxying: %s", reason)
        self._runtime.hold(reason)

    def _open_gate(self) -> None:
        closed = self._runtime.closed
        if closed == STARTING:
            log.info("settings page: record read (%s)", _in_force(self.version))
        elif closed is not None:
            log.warning("settings page: proxying again (%s)", _in_force(self.version))
        self._runtime.resume()

    def status(self) -> dict[str, Any]:
        """For ``/oauth2/status`` and the page."""
        return {
            "store": self.store.where if self.store is not None else None,
            "applied_version": self.version,
            "newest_version_seen": self.floor,
            "expected": self.expected,
            "error": self.error,
            "state_file": self.anchor_file.path.as_posix() if self.anchor_file is not None else None,
            "state_file_error": self.anchor_error,
            "warnings": list(self.warnings),
        }

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


def _in_force(version: int | None) -> str:
    return f"page settings version {version} applied" if version else "the config file's sso settings in force"
