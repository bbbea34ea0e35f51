"""Every request that is not the sidecar's own: decide, then proxy.

Top to bottom: strip spoofable identity headers -> SSO off? pass through -> skip-auth rule? pass
without identity -> session? -> (login redirect | 401 JSON | 403 page | proxy with identity headers).
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import Forbidden, Unauthenticated
from proxy.login import RUNTIME, begin_login, login_url, session_for
from proxy.policy import denial_reason
from proxy.runtime import Active
from proxy.upstream import Forwarded

_BROWSER_ACCEPT = ("text/html", "application/xhtml+xml", "*/*")


def is_api_request(request: web.Request) -> bool:
    """The rule in INTERFACE.md: such requests get 401 JSON instead of a login redirect."""
    headers = request.headers
    if "X-Requested-With" in headers:
        return True
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None and mode != "navigate":
        return True
    accept = headers.get("Accept", "*/*")
    return not any(kind in accept for kind in _BROWSER_ACCEPT)


def forwarded_for(request: web.Request, active: Active) -> Forwarded:
    remote = request.remote or ""
    return Forwarded(for_=remote, proto=active.settings.public_url.scheme, host=request.host, client=remote)


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    headers = CIMultiDict(request.headers)
    active.identity.strip(headers)
    path_qs = request.raw_path
    identity: list[tuple[str, str]] = []
    if active.oidc is not None:
        path = request.path
        if not any(rule.matches(request.method, path) for rule in active.settings.skip_auth):
            session = await session_for(request, runtime, active)
            if session is None:
                if is_api_request(request):
                    raise Unauthenticated(login_url=login_url(path_qs))
                return await begin_login(request, runtime, active, path_qs)
            reason = denial_reason(session.claims, active.settings.access)
            if reason is not None:
                who = session.claims.get("email") or session.claims.get("preferred_username") or session.subject
                raise Forbidden(f"You are signed in as {who}. {reason}", code="access_denied")
            identity = active.identity.values(session.claims)
    return await active.upstream.forward(
        request,
        headers=headers,
        path_qs=path_qs,
        set_headers=identity,
        remove_cookies=active.cookies.is_own_cookie,
        forwarded=forwarded_for(request, active),
    )
