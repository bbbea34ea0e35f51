"""Prometheus metrics, served at ``/metrics`` on ``metrics_listen`` only.

One ``Metrics`` object per process, in its own ``CollectorRegistry`` (not prometheus-client's global
one, so two apps in one test process never share counters). Add a metric by adding an attribute here;
the modules that count import nothing from prometheus-client.

The metrics are served by a separate ``web.Application`` on its own runner rather than by a second site
of the main runner: a site serves every route of its app, and the metrics port must not proxy to the
console, nor the console's port answer ``/metrics``: that path on the console's port is the console's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

log = logging.getLogger("sso_sidecar.metrics")

_PREFIX = "sso_sidecar_"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.config_reloads = Counter(
            _PREFIX + "config_reloads",
            "Config reload attempts that changed something, by result (success, failure) and trigger.",
            ["result", "trigger"],
            registry=r,
        )
        self.config_last_reload_successful = Gauge(
            _PREFIX + "config_last_reload_successful",
            "1 when the last config reload applied (or none was tried), 0 when it was refused.",
            registry=r,
        )
        self.config_last_reload_success_timestamp = Gauge(
            _PREFIX + "config_last_reload_success_timestamp_seconds",
            "Unix time when the running config was loaded.",
            registry=r,
        )
        self.config_restart_needed = Gauge(
            _PREFIX + "config_restart_needed",
            "Number of changed settings that apply only after a restart.",
            registry=r,
        )
        self.config_info = Gauge(
            _PREFIX + "config_info",
            "The running config: its version (a hash of the file and its secrets) and whether SSO is on.",
            ["version", "sso"],
            registry=r,
        )
        self.break_glass_attempts = Counter(
            _PREFIX + "break_glass_attempts",
            "Break-glass token checks, by how the token came (form, header) and result "
            "(granted, rejected, rate_limited).",
            ["via", "result"],
            registry=r,
        )
        self.break_glass_requests = Counter(
            _PREFIX + "break_glass_requests",
            "Requests let through to the console by break-glass access instead of a session.",
            registry=r,
        )
        self.admin_actions = Counter(
            _PREFIX + "admin_actions",
            "Changes made on the SSO settings page, by action (save, register, test, enable, disable, forget, "
            "revoke) and "
            "result (ok, refused, failed).",
            ["action", "result"],
            registry=r,
        )
        self.page_settings_closed = Gauge(
            _PREFIX + "page_settings_closed",
            "1 while this process does not proxy because it cannot read or apply the settings page's record.",
            registry=r,
        )
        self.config_last_reload_successful.set(1)
        self._info: tuple[str, str] | None = None

    def config_loaded(self, version: str, sso_enabled: bool, *, restart_needed: int = 0) -> None:
        """The config with ``version`` is now the running one."""
        labels = (version, "on" if sso_enabled else "off")
        if self._info is not None and self._info != labels:
            self.config_info.remove(*self._info)
        self.config_info.labels(*labels).set(1)
        self._info = labels
        self.config_last_reload_success_timestamp.set(time.time())
        self.config_restart_needed.set(restart_needed)

    def reload_result(self, ok: bool, trigger: str) -> None:
        self.config_reloads.labels("success" if ok else "failure", trigger).inc()
        self.config_last_reload_successful.set(1 if ok else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_app(get_metrics: Callable[[], Metrics]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=get_metrics().exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


async def serve(get_metrics: Callable[[], Metrics], host: str, port: int) -> AsyncIterator[None]:
    """Serve ``/metrics`` on ``host:port`` for as long as the generator is suspended."""
    runner = web.AppRunner(metrics_app(get_metrics), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("metrics on http://%s:%d/metrics", host, port)
        yield
    finally:
        await runner.cleanup()
