"""Every request that is not the sidecar's own: decide, then proxy.

Top to bottom: normalise the path (``paths``) -> strip spoofable identity headers -> SSO off? pass
through -> skip-auth rule? pass without identity -> who is calling (session cookie, else a bearer token)
-> may they, under the routes the request hits (``routes``)? -> (login redirect | 401 JSON | 403 page |
step-up sign-in | proxy with identity headers). The path that rules were matched against is the path
forwarded, with the raw query.

The decision's pieces (``decide``: ``caller``, ``admit``, ``skips_auth``) are shared with the
forward-auth endpoint (``forward_auth``), which answers the same questions for nginx and Traefik.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from aiohttp import HttpVersion11, hdrs, web
from multidict import istr

from proxy.auth.clientaddress import is_trusted_proxy, names_host, proxied_chain
from proxy.auth.paths import RequestPath, absolute_authority, normalise
from proxy.auth.routes import Requirement
from proxy.config.model import Settings
from proxy.errors import BadRequest, Closed, NotFound, Unauthenticated
from proxy.gate import breakglass
from proxy.gate.console import console_values
from proxy.gate.decide import (
    BEARER_CHALLENGE,
    admit,
    identify,
    is_api_request,
    skips_auth,
    step_up_required,
)
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.sessions import Session
from proxy.sessions.manager import UNKNOWN, Unknown
from proxy.signin.current import known_session
from proxy.signin.login import begin_login, login_url, route_requirement
from proxy.telemetry.logs import LOG, RequestLog
from proxy.upstream.forward import Forwarded

_HOST = re.compile(r"^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
# As ``istr`` (with Host from aiohttp's ``hdrs``): a CIMultiDict takes an istr's lower-cased form as it is, where a
# plain str is lower-cased on every lookup and set (see ``upstream.forward``). Spelled as sent.
_REQUEST_ID_HEADER = istr("X-Request-Id")


# --------------------------------------------------------------------------------------------------
# Host and forwarded headers


def request_host(request: web.BaseRequest, settings: Settings) -> str:
    """The host the client asked for, as the console will see it in Host and X-Forwarded-Host.

    RFC 9112 3.2: a request with two Host fields, an invalid one, or (HTTP/1.1) none is refused with 400,
    so that no two parties can read a different host out of one request. An absolute-form target's
    authority is the host (3.2.2). An HTTP/1.0 request without Host is taken as meant for ``public_url``.
    """
    values = request.headers.getall(hdrs.HOST, ())
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
        return Forwarded(remote, settings.public_url.scheme, host, remote)  # for_, proto, host, client
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


class _Unsettled:
    """``_settled`` could not tell: ``_identity`` finds out, given what ``known_session`` said (``known``)."""

    __slots__ = ("known",)

    def __init__(self, known: Session | Unknown | None) -> None:
        self.known = known


class _Admitted(_Unsettled):
    """``_settled`` found the session (``known``) and admitted it, but the console's headers for it are not
    remembered (``ConsoleIdentity.cached``): ``console_values`` builds them, which may read the store."""

    known: Session


_NO_SESSION: Final = _Unsettled(None)
_NOT_CACHED: Final = _Unsettled(UNKNOWN)


def _settled(
    request: web.Request, runtime: Runtime, active: Active, target: RequestPath, entry: RequestLog
) -> Sequence[tuple[str, str]] | _StepUp | _Unsettled:
    """``_identity``'s answer where it needs no I/O and no redirect, which is nearly every request: SSO off, a
    public path, or a signed-in user the session cache knows (and, with ``assertion``, ``roles`` or
    ``pass_tokens``, whose console headers are remembered): the identity headers, or what a route needs that the
    sign-in lacks (``_step_up``). ``_Admitted`` where only the console's headers are missing; ``_Unsettled`` where
    only ``_identity`` can tell. A plain function: the request it answers costs no coroutine (``_identity``,
    ``identify`` and ``console_values`` would cost three).

    Also notes the route kind and the subject for the access log."""
    if active.oidc is None:
        entry.route = "passthrough"
        return ()
    if skips_auth(active.settings.skip_auth, request.method, target):
        entry.route = "public"
        return ()
    session = known_session(request, runtime, active)
    if session is None:
        return _NO_SESSION
    if session is UNKNOWN:
        return _NOT_CACHED
    claims = session.claims
    _note_user(entry, claims)
    short = admit(request, runtime, active.settings, claims, request.method, target)
    if short is not None:
        return _StepUp(*short)
    console = active.console
    if console is None:
        return active.identity.values(claims)
    remembered = console.cached(session.id, session.refreshed_at, time.time())  # as console_values asks first
    return remembered if remembered is not None else _Admitted(session)


def _note_user(entry: RequestLog, claims: Mapping[str, Any]) -> None:
    subject = claims.get("sub")
    if isinstance(subject, str):
        entry.user = subject


class _StepUp(NamedTuple):
    """What a route needs that the sign-in falls short of (``admit``), for ``_step_up``."""

    need: Requirement
    why: str


async def _step_up(
    request: web.Request, runtime: Runtime, active: Active, target: RequestPath, entry: RequestLog, short: _StepUp
) -> web.StreamResponse:
    """A route needs a more recent or stronger sign-in: 401 for an API caller, a step-up sign-in for a browser."""
    if is_api_request(request):
        raise step_up_required(request, short.need, short.why, target.path_qs, request.method, target)
    entry.route = "step_up"
    return await begin_login(request, runtime, active, target.path_qs, step_up=short.need)


async def _identity(
    request: web.Request,
    runtime: Runtime,
    active: Active,
    target: RequestPath,
    entry: RequestLog,
    known: Session | Unknown | None,
) -> Sequence[tuple[str, str]] | web.StreamResponse:
    """The identity headers for the console, or the login redirect a browser without a session gets, where
    ``_settled`` could not tell (SSO is on and the path is not public: it answered those): the session from the
    store, a bearer token, a console lookup.

    Also notes the subject for the access log."""
    found = await identify(request, runtime, active, known)
    if found is None:
        return await _sign_in(request, runtime, active, target, entry)
    claims = found[0]
    _note_user(entry, claims)
    short = admit(request, runtime, active.settings, claims, request.method, target)
    if short is not None:  # a route needs a more recent or stronger sign-in
        return await _step_up(request, runtime, active, target, entry, _StepUp(*short))
    console = active.console
    if console is None:
        return active.identity.values(claims)
    values = await console_values(request, runtime, active, console, claims, found[1])
    return values if values is not None else await _sign_in(request, runtime, active, target, entry)


async def _sign_in(
    request: web.Request, runtime: Runtime, active: Active, target: RequestPath, entry: RequestLog
) -> web.StreamResponse:
    """No session: a browser is sent to sign in, an API call gets 401."""
    if is_api_request(request):
        raise Unauthenticated(login_url=login_url(target.path_qs), challenge=BEARER_CHALLENGE)
    entry.route = "login"
    # A route that needs a stronger or more recent sign-in asks for it in this one (the browser comes back
    # with a GET): not in a second round trip after the first.
    step_up = route_requirement(active.settings, target.path_qs)
    return await begin_login(request, runtime, active, target.path_qs, step_up=step_up)


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
    headers = request.headers.copy()
    headers[hdrs.HOST] = host
    entry = request[LOG]
    entry.route = "proxy"  # until the decision below says which kind
    headers[_REQUEST_ID_HEADER] = entry.id
    active.identity.strip(headers)
    # Lock-out protection (``breakglass``); it also keeps its token header from reaching the console.
    emergency = breakglass.admit(request, runtime, active, headers)
    if emergency is not None:
        entry.route, entry.user = "break_glass", active.settings.break_glass.user
    settled = emergency if emergency is not None else _settled(request, runtime, active, target, entry)
    decided: Sequence[tuple[str, str]]
    if isinstance(settled, _Unsettled):
        if isinstance(settled, _Admitted):
            assert active.console is not None  # only a console's headers make an _Admitted
            session = settled.known
            values = await console_values(request, runtime, active, active.console, session.claims, session)
            if values is None:  # signed out on another replica meanwhile
                return await _sign_in(request, runtime, active, target, entry)
            decided = values
        else:
            found = await _identity(request, runtime, active, target, entry, settled.known)
            if isinstance(found, web.StreamResponse):
                return found
            decided = found
    elif isinstance(settled, _StepUp):
        return await _step_up(request, runtime, active, target, entry, settled)
    else:
        decided = settled
    return await active.upstream.forward(
        request,
        headers=headers,
        path_qs=target.path_qs,
        set_headers=decided,
        remove_cookies=breakglass.own_cookies(active),
        forwarded=forwarded_for(request, active.settings, host),
    )
