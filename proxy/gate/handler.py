"""Every request that is not the sidecar's own: decide, then proxy.

Top to bottom: normalise the path (``paths``) -> strip spoofable identity headers -> SSO off? pass
through -> skip-auth rule? pass without identity -> who is calling (session cookie, else a bearer token)
-> (login redirect | 401 JSON | 403 page | proxy with identity headers). The path that rules were
matched against is the path forwarded, with the raw query.

The pieces (``caller``, ``authorize``, ``skips_auth``) are shared with the
forward-auth endpoint (``forward_auth``), which answers the same questions for nginx and Traefik.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from proxy.auth.bearer import VERIFIERS, bearer_token
from proxy.auth.clientaddress import is_trusted_proxy, names_host, proxied_chain
from proxy.auth.paths import RequestPath, absolute_authority, normalise
from proxy.auth.policy import denial_reason
from proxy.config.model import Settings, SkipRule
from proxy.errors import BadRequest, Closed, Forbidden, InvalidToken, NotFound, Unauthenticated
from proxy.gate import breakglass
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.signin.current import session_for
from proxy.signin.login import begin_login, login_url
from proxy.telemetry.logs import LOG, RequestLog
from proxy.upstream.forward import Forwarded

_BROWSER_ACCEPT = ("text/html", "application/xhtml+xml", "*/*")
# RFC 6750 3: the challenge for a request that brought no credentials at all.
BEARER_CHALLENGE = "Bearer"
_HOST = re.compile(r"^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def is_api_request(request: web.BaseRequest) -> bool:
    """The rule in INTERFACE.md, plus: a request with a bearer token is an API client's.

    Such requests get 401 JSON instead of a login redirect."""
    headers = request.headers
    if "X-Requested-With" in headers or bearer_token(request) is not None:
        return True
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None and mode != "navigate":
        return True
    accept = headers.get("Accept", "*/*")
    return not any(kind in accept for kind in _BROWSER_ACCEPT)


# --------------------------------------------------------------------------------------------------
# Host and forwarded headers


def request_host(request: web.BaseRequest, settings: Settings) -> str:
    """The host the client asked for, as the console will see it in Host and X-Forwarded-Host.

    RFC 9112 3.2: a request with two Host fields, an invalid one, or (HTTP/1.1) none is refused with 400,
    so that no two parties can read a different host out of one request. An absolute-form target's
    authority is the host (3.2.2). An HTTP/1.0 request without Host is taken as meant for ``public_url``.
    """
    values = request.headers.getall("Host", ())
    if len(values) > 1:
        raise BadRequest("The request has more than one Host header.")
    target = request.raw_path
    host = None if target[:1] == "/" else absolute_authority(target)  # origin form, the usual case: no authority
    if host is None:
        if not values:
            if request.version >= HttpVersion11:
                raise BadRequest("The request has no Host header.")
            return settings.public_url.raw_authority
        host = values[0]
    if host not in _VALID_HOSTS:
        if not _HOST.match(host):
            raise BadRequest("The request's host is not a valid host name.")
        if len(_VALID_HOSTS) < 256:  # the few names the sidecar is reached by, not whatever clients invent
            _VALID_HOSTS.add(host)
    return host


_VALID_HOSTS: set[str] = set()


def forwarded_for(request: web.BaseRequest, settings: Settings, host: str) -> Forwarded:
    """What the console is told about the client.

    From a trusted proxy, its X-Forwarded-For chain is extended with the proxy's own address and the
    client is the right-most address that is not a trusted proxy (``clientaddress.proxied_chain``);
    X-Forwarded-Proto and X-Forwarded-Host are taken when well-formed. From anyone else, all of them are
    replaced: the client is the connected address, the scheme is ``public_url``'s.
    """
    remote = request.remote or ""
    if not is_trusted_proxy(remote, settings):
        return Forwarded(for_=remote, proto=settings.public_url.scheme, host=host, client=remote)
    chain, client = proxied_chain(request, settings, remote)
    proto = _first(request.headers.get("X-Forwarded-Proto")).lower()
    forwarded_host = _first(request.headers.get("X-Forwarded-Host"))
    return Forwarded(
        for_=", ".join(chain),
        proto=proto if proto in ("http", "https") else settings.public_url.scheme,
        host=forwarded_host if _HOST.match(forwarded_host) else host,
        client=client,
    )


def _first(value: str | None) -> str:
    return (value or "").split(",", 1)[0].strip()


# --------------------------------------------------------------------------------------------------
# The decision


def skips_auth(rules: Iterable[SkipRule], method: str | None, target: RequestPath) -> bool:
    """True when a rule lets this request through without a session.

    A rule must match every reading of the path (``RequestPath.readings``): a path that some server
    could read as outside the rule is not let through. ``method`` None (unknown, in forward-auth without
    a method header) matches only rules without methods.
    """
    for rule in rules:
        if rule.methods is not None and (method is None or method not in rule.methods):
            continue
        if all(rule.pattern.search(reading) for reading in target.readings):
            return True
    return False


async def caller(request: web.Request, runtime: Runtime, active: Active) -> Mapping[str, Any] | None:
    """The claims of whoever sends the request: the session's, else a valid bearer token's.

    None when the request carries neither; ``InvalidToken`` for a bearer token that is not valid.
    """
    assert active.oidc is not None
    session = await session_for(request, runtime, active)
    if session is not None:
        return session.claims
    token = bearer_token(request)
    if token is None:
        return None
    verifier = request.app[VERIFIERS].get(active.oidc, runtime.http)
    if not verifier.enabled:
        raise InvalidToken("This console does not accept bearer tokens.")
    claims = await verifier.verify(token, runtime.sessions.revocations)
    problem = active.identity.problem(claims)
    if problem is not None:
        raise InvalidToken(f"The token cannot be used as an identity here: {problem}.")
    return claims


def authorize(claims: Mapping[str, Any], settings: Settings) -> None:
    """``Forbidden`` (a page naming who is signed in, with sign-out) when the access policy says no."""
    reason = denial_reason(claims, settings.access)
    if reason is not None:
        who = claims.get("email") or claims.get("preferred_username") or claims.get("sub") or "an unknown user"
        raise Forbidden(f"You are signed in as {who}. {reason}", code="access_denied")


async def _identity(
    request: web.Request, runtime: Runtime, active: Active, target: RequestPath, entry: RequestLog
) -> Sequence[tuple[str, str]] | web.StreamResponse:
    """The identity headers for the console, or the login redirect a browser without a session gets.

    Also notes the route kind and the subject for the access log."""
    if active.oidc is None:
        entry.route = "passthrough"
        return []
    if skips_auth(active.settings.skip_auth, request.method, target):
        entry.route = "public"
        return []
    claims = await caller(request, runtime, active)
    if claims is None:
        if is_api_request(request):
            raise Unauthenticated(login_url=login_url(target.path_qs), challenge=BEARER_CHALLENGE)
        entry.route = "login"
        return await begin_login(request, runtime, active, target.path_qs)
    subject = claims.get("sub")
    if isinstance(subject, str):
        entry.user = subject
    authorize(claims, active.settings)
    return active.identity.values(claims)


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if runtime.closed is not None:
        raise Closed()  # never fail open: the settings page's record could not be read or applied
    active = runtime.active
    target = normalise(request.raw_path)
    host = request_host(request, active.settings)
    if active.admin_host is not None and names_host(request, active.settings, active.admin_host):
        # The settings page's own origin serves the page alone: a console page there would be a script on
        # the page's origin, the very thing the origin of its own keeps out.
        raise NotFound("This address serves only the SSO settings page, at /oauth2/admin.")
    headers = CIMultiDict(request.headers)
    headers["Host"] = host
    entry = request[LOG]
    entry.route = "proxy"  # until the decision below says which kind
    headers["X-Request-Id"] = entry.id
    active.identity.strip(headers)
    # Lock-out protection (``breakglass``); it also keeps its token header from reaching the console.
    emergency = breakglass.admit(request, runtime, active, headers)
    if emergency is not None:
        entry.route, entry.user = "break_glass", active.settings.break_glass.user
    decided = emergency if emergency is not None else await _identity(request, runtime, active, target, entry)
    if isinstance(decided, web.StreamResponse):
        return decided
    return await active.upstream.forward(
        request,
        headers=headers,
        path_qs=target.path_qs,
        set_headers=decided,
        remove_cookies=breakglass.own_cookies(active),
        forwarded=forwarded_for(request, active.settings, host),
    )
