"""The gate's decision, shared with forward auth: does a rule let the request pass without identity, who is
calling (the session, else a bearer token), may they pass (the top-level access, or the routes the request
hits), is their sign-in strong and recent enough for those routes, and is the caller an API client or a
browser."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from aiohttp import web

from proxy.auth import routes
from proxy.auth.bearer import VERIFIERS, bearer_token
from proxy.auth.paths import RequestPath
from proxy.auth.policy import denial_reason
from proxy.config.model import Settings, SkipRule
from proxy.errors import Forbidden, InvalidToken, StepUpFailed, StepUpRequired
from proxy.runtime.state import Active, Runtime
from proxy.sessions import Session
from proxy.sessions.manager import UNKNOWN, Unknown
from proxy.signin.current import known_session, session_for
from proxy.signin.login import login_url

_BROWSER_ACCEPT = ("text/html", "application/xhtml+xml", "*/*")
# RFC 6750 3: the challenge for a request that brought no credentials at all.
BEARER_CHALLENGE = "Bearer"


def is_api_request(request: web.BaseRequest) -> bool:
    """Whether a request without a session is an API call, which gets 401 JSON, rather than a browser's
    navigation, which is sent to sign in: it has ``X-Requested-With``, a bearer token, a ``Sec-Fetch-Mode``
    other than ``navigate``, or an ``Accept`` with none of ``text/html``, ``application/xhtml+xml``, ``*/*``
    (a missing ``Accept`` counts as ``*/*``)."""
    headers = request.headers
    if "X-Requested-With" in headers or bearer_token(request) is not None:
        return True
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None and mode != "navigate":
        return True
    accept = headers.get("Accept", "*/*")
    return not any(kind in accept for kind in _BROWSER_ACCEPT)


def skips_auth(rules: Iterable[SkipRule], method: str | None, target: RequestPath) -> bool:
    """True when a rule lets this request through without a session.

    A rule must match every reading of the path (``RequestPath.readings``): a path that some server
    could read as outside the rule is not let through. ``method`` None (unknown, in forward-auth without
    a method header) matches only rules without methods.
    """
    readings = target.readings
    for rule in rules:
        for reading in readings:
            if not routes.matches(rule, method, reading):
                break
        else:
            return True
    return False


async def caller(request: web.Request, runtime: Runtime, active: Active) -> Mapping[str, Any] | None:
    """The claims of whoever sends the request: the session's, else a valid bearer token's.

    None when the request carries neither; ``InvalidToken`` for a bearer token that is not valid.
    """
    found = await identify(request, runtime, active)
    return None if found is None else found[0]


class NotAsked(enum.Enum):
    """``identify``'s ``known`` where its caller has not asked ``known_session``."""

    NOT_ASKED = "not asked"


NOT_ASKED: Final = NotAsked.NOT_ASKED


async def identify(
    request: web.Request, runtime: Runtime, active: Active, known: Session | Unknown | NotAsked | None = NOT_ASKED
) -> tuple[Mapping[str, Any], Session | None] | None:
    """``caller`` with the session the claims come from (None for a bearer token's). ``known``: what
    ``known_session`` said of this request, where the caller asked it already (the gate's ``_settled``): it is
    not asked twice (a second cookie parse and cache read on every request the cache cannot answer)."""
    assert active.oidc is not None
    # known_session: nearly every request, with no I/O and no coroutine
    session = known_session(request, runtime, active) if known is NOT_ASKED else known
    if session is UNKNOWN:
        session = await session_for(request, runtime, active)
    if session is not None:
        return session.claims, session
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
    return claims, None


def authorize(claims: Mapping[str, Any], settings: Settings) -> None:
    """``Forbidden`` (a page naming who is signed in, with sign-out) when the access policy says no."""
    reason = denial_reason(claims, settings.access)
    if reason is not None:
        raise _refused(claims, reason)


def _refused(claims: Mapping[str, Any], reason: str) -> Forbidden:
    who = claims.get("email") or claims.get("preferred_username") or claims.get("sub") or "an unknown user"
    return Forbidden(f"You are signed in as {who}. {reason}", code="access_denied")


def admit(
    request: web.BaseRequest,
    runtime: Runtime,
    settings: Settings,
    claims: Mapping[str, Any],
    method: str | None,
    target: RequestPath | None,
) -> tuple[routes.Requirement, str] | None:
    """May ``claims`` have this request (``method`` and ``target``: None when not known)? ``Forbidden`` when
    the access of a route it hits (or the top-level access) says no; the requirement of those routes that the
    sign-in falls short of, and what it lacks in words, for a step-up; None to pass. Every refusal is noted
    for ``/oauth2/status`` with the routes that made it.

    Without ``routes`` in the config this is the top-level access alone, as it always was."""
    if not settings.routes:
        try:
            authorize(claims, settings)
        except Forbidden:
            runtime.denials.add("access_denied", (routes.TOP_LEVEL,), method or "", _path(target), claims)
            raise
        return None
    methods = None if method is None else routes.method_readings(method, request.headers, _query(target))
    picked = routes.hits(settings.routes, methods, target)
    refused = routes.refusal(claims, picked, settings.access)
    if refused is not None:
        runtime.denials.add("access_denied", routes.names((refused[0],)), method or "", _path(target), claims)
        raise _refused(claims, refused[1])
    need = routes.requirement(picked)
    if need is None:
        return None
    if not need.satisfiable:
        runtime.denials.add("step_up_failed", need.routes, method or "", _path(target), claims)
        raise StepUpFailed(f"This page needs {need.words()}, which no sign-in can meet: ask the administrator.")
    why = need.shortfall(claims, time.time(), settings.sso.clock_skew)
    if why is None:
        return None
    runtime.denials.add(routes.INSUFFICIENT, need.routes, method or "", _path(target), claims)
    return need, why


def _query(target: RequestPath | None) -> str:
    return target.query if target is not None else ""


def _path(target: RequestPath | None) -> str:
    return "(not told)" if target is None else target.path


def step_up_required(
    request: web.BaseRequest,
    need: routes.Requirement,
    why: str,
    return_to: str,
    method: str | None,
    target: RequestPath | None,
) -> StepUpRequired:
    """The RFC 9470 answer for an API call (or forward auth) whose sign-in falls short: 401 with the
    ``insufficient_user_authentication`` challenge; a browser that follows ``login_url`` is asked for the
    sign-in the route needs (``/oauth2/start`` applies the routes of its ``rd`` for its ``method``: this
    request's methods, as ``admit`` read them, when the method is known)."""
    methods = () if method is None else routes.method_readings(method, request.headers, _query(target))
    return StepUpRequired(
        f"This needs {why}.",
        login_url=login_url(return_to, methods),
        challenge=need.challenge(f"This needs {need.words()}"),
        details=need.details(),
    )
