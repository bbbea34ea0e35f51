"""Noticing that the config file or one of its ``*_file`` secrets changed, and when the change has settled.

Polling, not inotify, and on purpose:

- A Kubernetes ConfigMap or Secret volume is updated by kubelet's atomic writer: it writes a new
  ``..2026_01_31_12_00_00.123`` directory, then renames a fresh ``..data`` symlink over the old one.
  ``config.yaml`` itself is a symlink to ``..data/config.yaml`` and never gets an event; an inotify
  watch on the file dies with the old directory, and one on the mount directory sees only the rename
  of ``..data`` (reported as create on some kernels and write on others). Editors rename a temp file
  over the original, which ends a watch on the original inode the same way.
- Resolving each path to its real file and hashing the content every interval sees all of these, on
  every filesystem (also NFS and overlay, where inotify is unreliable), with no dependency. The files
  are a few kilobytes; reading them once a second costs nothing measurable.

``triggers`` wires both reload triggers of ``sso-sidecar run``: SIGHUP, and this watcher on the config file
and its ``*_file`` secrets.

Debounce: a change is acted on only when two consecutive polls read the same new content, so a file
caught half-written (an editor writing in place, a ``cp`` in progress) is never taken for a config; a
burst of changes within one interval causes one reload. Comparing content (not mtime) means a
``touch`` or a ConfigMap sync that rewrote identical data causes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from proxy.runtime.reload import reload_config
from proxy.runtime.state import RUNTIME

log = logging.getLogger("sso_sidecar.watch")


@dataclass(frozen=True, slots=True)
class FileState:
    """One watched path as read now: where it resolves to and a hash of what it holds."""

    # Where the path led is informative only: the same bytes behind a new ``..data`` are no change.
    real_path: str = field(compare=False)
    digest: str | None  # None: missing or unreadable (mid-swap, or deleted)


Snapshot = tuple[tuple[str, FileState], ...]


def read_state(path: str) -> FileState:
    real = os.path.realpath(path)
    try:
        with open(real, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        digest = None
    return FileState(real, digest)


def snapshot(paths: Sequence[str]) -> Snapshot:
    return tuple((p, read_state(p)) for p in sorted(set(paths)))


class ChangeDetector:
    """Fed one snapshot per poll; says True once a change from the baseline has read the same twice."""

    def __init__(self, baseline: Snapshot) -> None:
        self.baseline = baseline
        self.pending: Snapshot | None = None

    def observe(self, current: Snapshot) -> bool:
        if current == self.baseline:
            self.pending = None  # changed and changed back before it settled: nothing happened
            return False
        if current != self.pending:
            self.pending = current  # new, or still changing: wait for it to read the same again
            return False
        self.baseline, self.pending = current, None
        return True


class FileWatcher:
    """Polls ``paths()`` every ``interval()`` seconds while ``enabled()``; awaits ``on_change()`` per
    settled change. The callables are read on every poll, so a reload that changes the secret files,
    the interval or switches watching off takes effect at the next poll."""

    def __init__(
        self,
        paths: Callable[[], Sequence[str]],
        on_change: Callable[[], Awaitable[object]],
        *,
        interval: Callable[[], float],
        enabled: Callable[[], bool] = lambda: True,
    ) -> None:
        self._paths = paths
        self._on_change = on_change
        self._interval = interval
        self._enabled = enabled
        self.detector: ChangeDetector | None = None
        self._watched: tuple[str, ...] = ()

    async def poll(self) -> bool:
        """One poll: True when a settled change was found (and ``on_change`` has run)."""
        if not self._enabled():
            self.detector = None  # start from what is there when watching resumes
            return False
        paths = tuple(sorted(set(self._paths())))
        # File reads go to a thread: a stalled network volume must not stall the proxy.
        current = await asyncio.to_thread(snapshot, paths)
        if self.detector is None or paths != self._watched:
            # First poll, or a reload changed which secret files exist: the reload read them itself.
            self.detector, self._watched = ChangeDetector(current), paths
            return False
        if not self.detector.observe(current):
            return False
        try:
            await self._on_change()
        except Exception:  # the watcher must outlive any failure of the reload it triggers
            log.exception("reload after a file change failed")
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                log.exception("config watcher: poll failed")
            await asyncio.sleep(self._interval())


# -- the triggers of ``sso-sidecar run`` -------------------------------------------------------------------

TRIGGER_SIGHUP = "sighup"
TRIGGER_WATCH = "watch"
# What the triggers log goes under the reload's logger, beside the reload's own lines.
reload_log = logging.getLogger("sso_sidecar.reload")


def triggers(path: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` for ``sso-sidecar run``: SIGHUP and the file watcher reload ``path``.

    Append it after the context that creates the runtime.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            reload_log.info("SIGHUP: reloading %s", path)
            task = loop.create_task(reload_config(runtime, path, trigger=TRIGGER_SIGHUP))
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def on_change() -> None:
            reload_log.info("config or secret file changed: reloading %s", path)
            await reload_config(runtime, path, trigger=TRIGGER_WATCH)

        def watched() -> list[str]:
            settings = runtime.active.settings
            return [path, *settings.secret_files]

        watcher = FileWatcher(
            watched,
            on_change,
            interval=lambda: runtime.active.settings.reload.watch_interval,
            enabled=lambda: runtime.active.settings.reload.watch,
        )
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        # A SIGHUP that came while the process started was held back (``cli``, ``workers``): handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        watch_task = loop.create_task(watcher.run())
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # shutting down: a late SIGHUP must not kill it
            watch_task.cancel()
            for task in (watch_task, *pending):
                task.cancel()
            await asyncio.gather(watch_task, *pending, return_exceptions=True)

    return context
