"""Config reload: validate the new config completely, then swap it in whole, or keep the old one.

Triggers: SIGHUP, and the file watcher (``proxy.runtime.watch``) on the config file and its ``*_file`` secrets.
Whatever the trigger, one reload runs at a time and goes through the same steps:

1. read and validate the file (``load_settings``: every problem, each naming its key);
2. build everything for it (``Runtime.build`` reuses what did not change);
3. when the SSO settings changed: fetch the issuer's discovery document and JWKS and prove the client
   credentials at the token endpoint (``verify_provider``, which ``sso-sidecar check`` runs too);
4. swap it in whole (``Runtime.swap``), or on any problem log it, count it and keep the running config.

Settings that a running process cannot change (``Settings.restart_needed``) are reported, and the rest
applies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields

from aiohttp import web

from proxy.config.load import load_settings
from proxy.config.model import Settings
from proxy.errors import ConfigError, ConfigProblem, SidecarError
from proxy.oidc.client import OIDCClient
from proxy.oidc.discovery import ProviderMetadata
from proxy.runtime.state import RUNTIME, Runtime
from proxy.runtime.watch import FileWatcher
from proxy.telemetry import logs

log = logging.getLogger("sso_sidecar.reload")

TRIGGER_SIGHUP = "sighup"
TRIGGER_WATCH = "watch"
TRIGGER_PAGE = "page"
# Bookkeeping fields of Settings, not settings anyone changes.
_NOT_KEYS = frozenset({"source", "digest", "secret_files", "sso_source"})


@dataclass
class ProviderCheck:
    """What the provider said about an SSO config: its metadata, if any, and every problem found."""

    metadata: ProviderMetadata | None = None
    signing_keys: int = 0
    credentials_ok: bool = False
    problems: list[ConfigProblem] = field(default_factory=list)


async def verify_provider(client: OIDCClient, *, strict: bool = False) -> ProviderCheck:
    """Discovery, JWKS and client credentials, as a reload must pass them before the swap.

    Shared with ``sso-sidecar check`` so that both report the same problem in the same words. ``strict``
    (the settings page): only an answer that proves the credentials counts (``prove_client_credentials``).
    """
    sso = client.settings
    secret_key = "sso.client_secret_file" if sso.client_secret_file else "sso.client_secret"
    result = ProviderCheck()
    try:
        result.metadata = await client.metadata()
    except SidecarError as exc:
        result.problems.append(ConfigProblem("sso.issuer_url", exc.message))
        return result
    try:
        # The client's own fetch (size limits, key filtering) also warms the cache the swap inherits.
        keys = await client.jwks.keys()
    except SidecarError as exc:
        result.problems.append(ConfigProblem("sso.issuer_url", exc.message))
    else:
        result.signing_keys = len(keys)
        if not keys:
            result.problems.append(ConfigProblem("sso.issuer_url", "The provider's JWKS has no usable signature key"))
    try:
        await client.prove_client_credentials(strict=strict)
    except SidecarError as exc:
        result.problems.append(ConfigProblem(secret_key, exc.message))
    else:
        result.credentials_ok = True
    return result


def load_effective(runtime: Runtime, path: str) -> Settings:
    """The config file, with its ``sso:`` section replaced by the settings page's while the page applies one
    (``admin.enabled`` and a Save + Enable or Disable on the page: ``pagesync``)."""
    settings = load_settings(path)
    override = runtime.page.override if runtime.page is not None else None
    if override is None or not settings.admin.enabled:
        return settings
    return load_settings(path, sso=override)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Top-level config keys (``sso``, ``access``...) whose value differs, for the log and status."""
    keys = [
        f.name for f in fields(Settings) if f.name not in _NOT_KEYS and getattr(old, f.name) != getattr(new, f.name)
    ]
    return ["listen" if k in ("listen_host", "listen_port") else k for k in dict.fromkeys(keys)]


async def reload_config(runtime: Runtime, path: str, *, trigger: str = TRIGGER_SIGHUP) -> bool:
    """Load ``path`` and apply it; on any problem log it, keep the running config and return False."""
    async with runtime.reload_lock:
        return await _reload(runtime, path, trigger)


async def _reload(runtime: Runtime, path: str, trigger: str) -> bool:
    status = runtime.reload_status
    status.last_attempt = time.time()
    current = runtime.active.settings
    try:
        settings = load_effective(runtime, path)
    except ConfigError as exc:
        return _refuse(runtime, exc.problems, trigger)
    except Exception as exc:  # a reload must never take the process down; report and keep running
        log.exception("reload (%s): unexpected error reading %s", trigger, path)
        return _refuse(runtime, [ConfigProblem("(file)", f"unexpected error: {type(exc).__name__}")], trigger)
    if settings.digest == current.digest:
        # The file says what is already running (perhaps reverted after a refused edit): nothing to do,
        # and nothing outstanding to report.
        status.last_error = None
        runtime.metrics.config_last_reload_successful.set(1)
        log.info("reload (%s): the file matches the running config (version %s)", trigger, current.digest)
        return True
    candidate = None
    try:
        candidate = await runtime.build(settings)
        problems: list[ConfigProblem] = []
        if candidate.oidc is not None and candidate.oidc is not runtime.active.oidc:
            # New provider settings are proven before anyone depends on them.
            problems = (await verify_provider(candidate.oidc)).problems
    except Exception as exc:  # a reload must never take the process down; report and keep running
        log.exception("reload (%s): unexpected error", trigger)
        problems = [ConfigProblem("(reload)", f"unexpected error: {type(exc).__name__}")]
    if problems:
        if candidate is not None:
            runtime.discard(candidate)
        return _refuse(runtime, problems, trigger)
    assert candidate is not None
    restart = runtime.boot_settings.restart_needed(settings)
    changed = changed_keys(current, settings)
    runtime.swap(candidate)
    if (settings.log_level, settings.log_format) != (current.log_level, current.log_format):
        logs.setup(settings.log_level, settings.log_format)
    status.last_error = None
    status.last_error_at = None
    status.needs_restart = restart
    status.count_ok += 1
    runtime.metrics.reload_result(True, trigger)
    runtime.metrics.config_loaded(settings.digest, settings.sso.enabled, restart_needed=len(restart))
    for key in restart:
        log.warning("reload: %s changed and needs a restart; the rest of the new config applies", key)
    if current.sso.identity != settings.sso.identity and current.sso.enabled and settings.sso.enabled:
        log.warning("reload: issuer or client changed: sessions signed in under the previous one now sign in again")
    log.info(
        "config reloaded (%s): version %s -> %s, sso %s, changed: %s",
        trigger,
        current.digest,
        settings.digest,
        "on" if settings.sso.enabled else "off",
        ", ".join(changed) or "secrets only",
    )
    return True


def _refuse(runtime: Runtime, problems: Sequence[ConfigProblem], trigger: str) -> bool:
    status = runtime.reload_status
    status.last_error = "; ".join(str(p) for p in problems)
    status.last_error_at = time.time()
    status.count_failed += 1
    runtime.metrics.reload_result(False, trigger)
    version = runtime.active.settings.digest
    for problem in problems:
        log.error("reload (%s) refused, keeping the running config (version %s): %s", trigger, version, problem)
    return False


def triggers(path: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` for ``sso-sidecar run``: SIGHUP and the file watcher reload ``path``.

    Append it after the context that creates the runtime.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            log.info("SIGHUP: reloading %s", path)
            task = loop.create_task(reload_config(runtime, path, trigger=TRIGGER_SIGHUP))
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def on_change() -> None:
            log.info("config or secret file changed: reloading %s", path)
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
