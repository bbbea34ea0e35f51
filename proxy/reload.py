"""Config reload: validate the new config completely, then swap it in whole, or keep the old one."""

from __future__ import annotations

import logging
import time

from proxy.errors import ConfigError, SidecarError
from proxy.runtime import Runtime
from proxy.settings import load_settings

log = logging.getLogger("sso_sidecar.reload")


async def reload_config(runtime: Runtime, path: str) -> bool:
    """Load ``path`` and apply it; on any problem log it, keep the running config and return False."""
    status = runtime.reload_status
    status.last_attempt = time.time()
    try:
        settings = load_settings(path)
        current = runtime.active.settings
        if settings.digest == current.digest:
            return True
        restart = current.restart_needed(settings)
        active = await runtime.build(settings)
        if active.oidc is not None and active.oidc is not runtime.active.oidc:
            # Prove the new provider settings before anyone depends on them.
            await active.oidc.metadata()
    except ConfigError as exc:
        status.last_error = str(exc)
        status.count_failed += 1
        for problem in exc.problems:
            log.error("reload rejected, keeping the running config: %s", problem)
        return False
    except SidecarError as exc:
        status.last_error = exc.message
        status.count_failed += 1
        log.error("reload rejected, keeping the running config: %s", exc.message)
        return False
    runtime.swap(active)
    status.last_error = None
    status.needs_restart = restart
    status.count_ok += 1
    for key in restart:
        log.warning("reload: %s changed and needs a restart; the rest of the new config applies", key)
    log.info("config reloaded (version %s, sso %s)", settings.digest, "on" if settings.sso.enabled else "off")
    return True
