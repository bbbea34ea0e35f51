"""``/oauth2/status``: what the sidecar is running, for operators. JSON; secrets never appear.

Who may read it: a request with break-glass proof (cookie or ``X-Break-Glass`` header), or a signed-in
user in one of ``status.admin_groups``. Without either configured, nobody: the answer names the
provider, the client and the console's address, which are not for everyone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from proxy.auth import routes
from proxy.auth.policy import is_operator
from proxy.config.model import JWKS_PATH
from proxy.errors import Forbidden, SidecarError, Unauthenticated
from proxy.gate import breakglass
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.signin.current import session_for
from proxy.signin.login import login_url

PATH = "/oauth2/status"
_MASK = "********"


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _authorize(request: web.Request, runtime: Runtime, active: Active) -> None:
    if breakglass.authorized(request, runtime, active):
        return
    settings = active.settings
    session = await session_for(request, runtime, active) if runtime.closed is None else None
    if session is None:
        raise Unauthenticated(login_url=login_url(PATH))
    if is_operator(session.claims, settings, reading_status=True):
        return  # the settings page's admins, and status.admin_groups
    raise Forbidden("The status page is for operators (admin.groups, admin.emails or the break-glass token).")


async def discovery_status(active: Active) -> dict[str, Any]:
    if active.oidc is None:
        return {"status": "disabled"}
    try:
        md = await active.oidc.metadata()  # cached; refetched (with backoff) only when stale or failing
    except SidecarError as exc:
        return {"status": "error", "error": exc.message}
    return {
        "status": "ok",
        "issuer": md.issuer,
        "authorization_endpoint": md.authorization_endpoint,
        "token_endpoint": md.token_endpoint,
        "end_session_endpoint": md.end_session_endpoint,
    }


async def describe(runtime: Runtime, active: Active) -> dict[str, Any]:
    settings = active.settings
    sso = settings.sso
    reload = runtime.reload_status
    return {
        "config": {
            "version": settings.digest,
            "source": settings.source,
            "loaded_at": _when(active.loaded_at),
            "public_url": str(settings.public_url),
            "redirect_uri": settings.redirect_uri,
            "upstream": str(settings.upstream.url),
            "sso": {
                "enabled": sso.enabled,
                "issuer_url": sso.issuer_url or None,
                "client_id": sso.client_id or None,
                "client_secret": _MASK if sso.client_secret is not None else None,
                "client_secret_file": sso.client_secret_file,
                "scopes": list(sso.scopes),
            },
            "session_store": settings.session.store,
            "break_glass": {"enabled": settings.break_glass.enabled, "ttl_seconds": settings.break_glass.ttl},
            "watch": {"enabled": settings.reload.watch, "interval_seconds": settings.reload.watch_interval},
            "console_identity": _console_identity(active),
            "routes": routes.table(settings.routes, settings.access),
        },
        "reload": {
            "last_attempt": _when(reload.last_attempt),
            "last_error": reload.last_error,
            "last_error_at": _when(reload.last_error_at),
            "needs_restart": list(reload.needs_restart),
            "succeeded": reload.count_ok,
            "failed": reload.count_failed,
        },
        "discovery": await discovery_status(active),
        "sso_settings": _sso_settings(runtime, active),
        "denials": _denials(runtime),
    }


def _console_identity(active: Active) -> dict[str, Any]:
    """The assertion, roles and tokens the console gets (no key, secret or token, only their names)."""
    settings = active.settings
    a, roles, tokens = settings.assertion, settings.roles, settings.pass_tokens
    keyring = active.console.keyring if active.console is not None else None
    assertion = None
    if a is not None and keyring is not None:
        assertion = {
            "header": a.header,
            "algorithm": a.algorithm,
            "keys": keyring.source,
            "signing_kid": keyring.signing.kid,
            "published_kids": [k["kid"] for k in keyring.jwks["keys"]],
            "jwks_url": settings.url_for(JWKS_PATH),
            "audience": a.audience,
            "lifetime_seconds": a.lifetime,
            "claims": list(a.claims),
        }
    return {
        "assertion": assertion,
        "roles": None
        if roles is None
        else {"header": roles.header, "rules": len(roles.rules), "default": list(roles.default)},
        "pass_tokens": {"access_token": tokens.access_token or None, "id_token": tokens.id_token or None},
    }


def _denials(runtime: Runtime) -> list[dict[str, Any]]:
    """This process's last refusals, newest first, with the routes that made them (never a token or a query)."""
    return [
        {"at": _when(d.at), "kind": d.kind, "routes": list(d.routes), "method": d.method, "path": d.path,
         "user": d.user}
        for d in runtime.denials.latest()
    ]  # fmt: skip


def _sso_settings(runtime: Runtime, active: Active) -> dict[str, Any]:
    """Where the effective ``sso`` section came from: the config file, or the settings page."""
    layer = runtime.source.layer
    result: dict[str, Any] = {"source": active.settings.sso_source, "proxying": runtime.closed is None}
    if runtime.closed is not None:
        result["not_proxying_because"] = runtime.closed
    if active.settings.admin.enabled and layer is not None:
        result["page"] = layer.status()
    return result


async def status(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    await _authorize(request, runtime, active)
    return web.json_response(await describe(runtime, active), headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, status)
