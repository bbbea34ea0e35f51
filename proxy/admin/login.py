"""Signing in to the settings page: a fresh sign-in before Enable, Disable and Forget, and the sign-in on the
page's own origin (``admin.public_url``).

- **Fresh sign-in.** On the console's origin a script of the console's (stored XSS, an uploaded HTML file)
  can read the page and its form token. It cannot make the admin type a password: Enable, Disable and
  Forget need a sign-in at most ``access.FRESH_SIGN_IN`` old, and ``/oauth2/admin/reauth`` asks the
  provider for one (``prompt=login``, ``max_age=0``), then returns to the page.
- **The page's own origin.** Cookies are per host, so the console's session is not the page's: the page
  signs admins in through its own redirect URI, ``admin.public_url`` + ``/oauth2/admin/callback`` (register
  it at the provider beside the console's), and its Test login comes back there too. The callback checks
  exactly what ``login.callback`` checks, then creates an ordinary session (revoked like any other).
"""

from __future__ import annotations

import dataclasses
import logging

from aiohttp import web

from proxy.admin.origin import PATH, on_page_origin
from proxy.config.model import Settings
from proxy.errors import Closed, LoginError, NotFound, SidecarError
from proxy.oidc.client import OIDCClient
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.signin.login import begin_login, finish_purpose, new_session, redeem, signed_in

log = logging.getLogger("sso_sidecar.admin")

CALLBACK = PATH + "/callback"
REAUTH = PATH + "/reauth"
FRESH_PARAMS = {"prompt": "login", "max_age": "0"}  # OIDC Core 3.1.2.1: authenticate again, and say when

_clients: dict[tuple[str, bool], OIDCClient] = {}
_clients_for: list[OIDCClient | None] = [None]


def page_redirect_uri(settings: Settings) -> str | None:
    """The redirect URI of the page's own origin, or None while the page shares the console's."""
    url = settings.admin.public_url
    return None if url is None else str(url.with_path(CALLBACK))


def _client(runtime: Runtime, active: Active, redirect_uri: str, fresh: bool) -> OIDCClient:
    """A relying party like the running one but with another redirect URI or a fresh sign-in; reused while
    the running one is (one discovery and JWKS cache each, not one per sign-in)."""
    assert active.oidc is not None
    if _clients_for[0] is not active.oidc:
        _clients.clear()
        _clients_for[0] = active.oidc
    client = _clients.get((redirect_uri, fresh))
    if client is None:
        sso = active.settings.sso
        if fresh:
            sso = dataclasses.replace(sso, extra_authorize_params={**sso.extra_authorize_params, **FRESH_PARAMS})
        client = _clients[(redirect_uri, fresh)] = OIDCClient(sso, redirect_uri, runtime.http)
    return client


async def begin_page_login(
    request: web.Request, runtime: Runtime, active: Active, return_to: str, *, fresh: bool = False
) -> web.Response:
    """A sign-in for the page: through the page origin's redirect URI where it has one, and asking the
    provider for a fresh sign-in when ``fresh``."""
    redirect_uri = page_redirect_uri(active.settings) or active.settings.redirect_uri
    if redirect_uri == active.settings.redirect_uri and not fresh:
        return await begin_login(request, runtime, active, return_to)
    client = _client(runtime, active, redirect_uri, fresh)
    return await begin_login(request, runtime, dataclasses.replace(active, oidc=client), return_to)


async def reauth(request: web.Request) -> web.StreamResponse:
    """Sign in again (``prompt=login``), then back to the page: what Enable, Disable and Forget ask for."""
    runtime = request.app[RUNTIME]
    active = runtime.active
    if not active.settings.admin.enabled:
        raise NotFound("The SSO settings page is not enabled (admin.enabled).")
    if active.oidc is None or runtime.closed is not None:
        raise LoginError(
            "SSO is off here, so there is no sign-in to repeat: run Test login as yourself (it always asks for "
            "a fresh sign-in), then try again.",
            status=409,
        )
    if not on_page_origin(request, active):
        raise web.HTTPFound(str(active.settings.admin.public_url).rstrip("/") + REAUTH)
    return await begin_page_login(request, runtime, active, PATH + "?done=reauth", fresh=True)


async def callback(request: web.Request) -> web.StreamResponse:
    """The page origin's redirect URI: a Test login (``trial``) or an admin's sign-in to the page."""
    runtime = request.app[RUNTIME]
    active = runtime.active
    redirect_uri = page_redirect_uri(active.settings)
    if redirect_uri is None or not active.settings.admin.enabled or not on_page_origin(request, active):
        raise NotFound("The sidecar has no page at this address.")
    query = request.query
    state = query.get("state", "")
    mine = bool(state) and active.cookies.login_belongs_to_browser(state, request.cookies)
    pending = await runtime.sessions.take_login(state) if mine else None
    if pending is not None and pending.purpose is not None:
        return await finish_purpose(request, runtime, pending, redirect_uri=redirect_uri)
    if runtime.closed is not None:
        raise Closed()
    if active.oidc is None:
        raise LoginError("Single sign-on is switched off.", status=404)
    if "error" in query:
        raise LoginError("The identity provider refused the sign-in.", code="provider_denied")
    if pending is None:
        raise LoginError("This sign-in was not started in this browser, has expired, or was already used.")
    try:
        if (pending.issuer, pending.client_id) != active.settings.sso.identity:
            raise LoginError("The sign-in settings changed while you were signing in.")
        client = _client(runtime, active, redirect_uri, fresh=False)
        metadata = await client.metadata()
        client.check_authorization_response_iss(query.get("iss"), metadata)
        code = query.get("code")
        if not code:
            raise LoginError("The sign-in response has no authorization code.")
        result = await redeem(client, code, pending)  # a refused code is the request's fault: 400
        problem = active.identity.problem(result.claims)
        if problem is not None:
            raise LoginError(f"Your account cannot be used to sign in here: {problem}.", code="unusable_identity")
    except SidecarError as exc:
        exc.return_to = PATH
        raise
    session = await new_session(request, runtime, active, result)  # a fresh session id, as at every sign-in
    log.info("settings page: sign-in on the page's own origin, sub=%s", session.subject[:8])
    return signed_in(active, session, pending.return_to, state)


def add_routes(app: web.Application) -> None:
    app.router.add_get(REAUTH, reauth)
    app.router.add_get(CALLBACK, callback)
