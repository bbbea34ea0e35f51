"""``/healthz`` (the process answers) and ``/readyz`` (it may get traffic: it proxies, and its session store
answers), for Kubernetes probes and the image's HEALTHCHECK."""

from __future__ import annotations

from aiohttp import web

from proxy import __version__
from proxy.errors import SidecarError
from proxy.runtime.state import RUNTIME


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if runtime.closed is not None:
        return web.json_response({"status": "not ready", "reason": runtime.closed}, status=503)
    try:
        await runtime.store.ping()
    except SidecarError:
        return web.json_response({"status": "not ready", "session_store": "unreachable"}, status=503)
    return web.json_response({"status": "ready", "config": runtime.active.settings.digest})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
