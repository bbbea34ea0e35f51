"""Config reload: validate the new config completely, then swap it in whole, or keep the old one.

What triggers it is ``watch``'s (SIGHUP, the file watcher) and the settings page's (``proxy.admin.sync``).
Whatever the trigger, one reload runs at a time and goes through the same steps:

1. read and validate the config through the runtime's source (``source.ConfigSource.load``: the file, with
   the layer over it; every problem, each naming its key);
2. build everything for it (``Runtime.build`` reuses what did not change);
3. when the SSO settings changed: fetch the issuer's discovery document and JWKS and prove the client
   credentials at the token endpoint (``proxy.oidc.verify.verify_provider``, which ``sso-sidecar check``
   runs too);
4. swap it in whole (``Runtime.swap``), or on any problem log it, count it and keep the running config.

Settings that a running process cannot change (``Settings.restart_needed``) are reported, and the rest
applies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import fields

from proxy.config.model import Settings
from proxy.errors import ConfigError, ConfigProblem
from proxy.oidc.verify import verify_provider
from proxy.runtime.state import Runtime
from proxy.telemetry import logs

log = logging.getLogger("sso_sidecar.reload")

# Bookkeeping fields of Settings, not settings anyone changes.
_NOT_KEYS = frozenset({"source", "digest", "secret_files", "sso_source"})


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Top-level config keys (``sso``, ``access``...) whose value differs, for the log and status."""
    keys: list[str] = []
    for f in fields(Settings):
        if f.name == "upstream":
            keys += old.upstream.changed_keys(new.upstream)  # its YAML keys are top-level
        elif f.name not in _NOT_KEYS and getattr(old, f.name) != getattr(new, f.name):
            keys.append("listen" if f.name in ("listen_host", "listen_port") else f.name)
    return list(dict.fromkeys(keys))


async def reload_config(runtime: Runtime, path: str, *, trigger: str = "sighup") -> bool:
    """Load ``path`` and apply it; on any problem log it, keep the running config and return False.

    ``trigger`` names the cause in the log and the metrics: ``sighup`` and ``watch`` (``watch``), ``page``."""
    async with runtime.reload_lock:
        return await _reload(runtime, path, trigger)


async def _reload(runtime: Runtime, path: str, trigger: str) -> bool:
    status = runtime.reload_status
    status.last_attempt = time.time()
    current = runtime.active.settings
    try:
        settings = runtime.source.load(path)
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
