"""``/oauth2/auth``: the sidecar as the authorisation check of nginx ``auth_request`` / Traefik ``forwardAuth``.

The front proxy sends each request's headers (cookies, ``Authorization``, ``Accept``...) here first:

- 202 with the mapped identity headers as response headers (for ``auth_request_set`` /
  ``authResponseHeaders``) when the caller is signed in (or brings a valid bearer token) and the access
  policy admits them; 202 without identity headers for a ``skip_auth`` path or with SSO switched off;
- 401 when there is no session: JSON for API clients, and for browsers a page that goes on to the login
  (Traefik shows the answer as it is). Both carry ``X-Login-URL`` (``/oauth2/start?rd=...``, the
  original URI properly encoded), which nginx's ``error_page 401`` location redirects to;
- 403 when the policy says no; 400 for an original URI that cannot be read safely;
- 401 with ``WWW-Authenticate: Bearer error="insufficient_user_authentication"`` (RFC 9470) when a route of
  the original request needs a more recent or stronger sign-in: its ``X-Login-URL`` asks for that sign-in.

The original request is known only from the front proxy's ``X-Forwarded-Uri`` (Traefik) or
``X-Original-URI`` (nginx) and ``X-Forwarded-Method`` / ``X-Original-Method``, and those are read only
here and only from ``trusted_proxies``: from anyone else they could claim a ``skip_auth`` path for a
request to another one. Without them no ``skip_auth`` rule applies, the return-to is ``/``, and with
``routes`` every route may apply (an unknown path could be any of them; an unknown method any method).
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from multidict import CIMultiDict

from proxy.auth.clientaddress import is_trusted_proxy
from proxy.auth.paths import RequestPath, normalise
from proxy.auth.redirects import safe_return_to
from proxy.config.model import Settings
from proxy.errors import BadRequest, Closed, Unauthenticated
from proxy.gate.console import console_values
from proxy.gate.decide import BEARER_CHALLENGE, admit, identify, skips_auth, step_up_required
from proxy.runtime.state import RUNTIME
from proxy.signin.login import login_url

log = logging.getLogger("sso_sidecar.forward_auth")

AUTH_PATH = "/oauth2/auth"
LOGIN_URL_HEADER = "X-Login-URL"
_URI_HEADERS = ("X-Forwarded-Uri", "X-Original-URI")
_METHOD_HEADERS = ("X-Forwarded-Method", "X-Original-Method")
_METHOD = re.compile(r"^[A-Z]{1,16}$")
_NO_STORE = {"Cache-Control": "no-store"}


def _one(request: web.Request, names: tuple[str, ...]) -> str | None:
    """The one value sent under any of ``names``; two different values are a conflict, not a choice."""
    values = {v for name in names for v in request.headers.getall(name, ())}
    if len(values) > 1:
        raise BadRequest(f"Conflicting {' / '.join(names)} headers.")
    return values.pop() if values else None


def original_request(request: web.Request, settings: Settings) -> tuple[str | None, RequestPath | None]:
    """The front proxy's original method and path, or ``(None, None)`` when not told by a trusted proxy."""
    if not is_trusted_proxy(request.remote, settings):
        if any(name in request.headers for name in _URI_HEADERS):
            log.debug("ignoring X-Forwarded-Uri from %s: not in trusted_proxies", request.remote)
        return None, None
    uri = _one(request, _URI_HEADERS)
    method = _one(request, _METHOD_HEADERS)
    if method is not None:
        method = method.strip().upper()
        if not _METHOD.match(method):
            raise BadRequest("The original request method is not a method.")
    return method, normalise(uri.strip()) if uri else None


async def auth(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if runtime.closed is not None:
        raise Closed()  # the front proxy must not let anyone through on a config this process cannot confirm
    active = runtime.active
    method, target = original_request(request, active.settings)
    if active.oidc is None:
        return web.Response(status=202, headers=_NO_STORE)
    if target is not None and skips_auth(active.settings.skip_auth, method, target):
        return web.Response(status=202, headers=_NO_STORE)
    found = await identify(request, runtime, active)
    if found is None:
        raise Unauthenticated(login_url=login_url(_return_to(target)), challenge=BEARER_CHALLENGE)
    claims = found[0]
    short = admit(request, runtime, active.settings, claims, method, target)
    if short is not None:
        raise step_up_required(request, *short, _return_to(target), method, target)
    console = active.console
    if console is None:
        values = active.identity.values(claims)
    else:  # the roles, the assertion and the tokens too, for auth_request_set / authResponseHeaders
        found_values = await console_values(request, runtime, active, console, *found)
        if found_values is None:
            raise Unauthenticated(login_url=login_url(_return_to(target)), challenge=BEARER_CHALLENGE)
        values = found_values
    headers = CIMultiDict(_NO_STORE)
    headers.extend(values)
    return web.Response(status=202, headers=headers)


def _return_to(target: RequestPath | None) -> str:
    return safe_return_to(target.path_qs if target is not None else "/")


def add_routes(app: web.Application) -> None:
    # Any method: the front proxy may ask with the original request's method.
    app.router.add_route("*", AUTH_PATH, auth)
