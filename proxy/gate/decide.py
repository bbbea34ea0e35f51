"""The gate's decision, shared with forward auth: does a rule let the request pass without identity, who is
calling (the session, else a bearer token), may they pass, and is the caller an API client or a browser."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from proxy.auth.bearer import VERIFIERS, bearer_token
from proxy.auth.paths import RequestPath
from proxy.auth.policy import denial_reason
from proxy.config.model import Settings, SkipRule
from proxy.errors import Forbidden, InvalidToken
from proxy.runtime.state import Active, Runtime
from proxy.sessions import Session
from proxy.signin.current import session_for

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
    found = await identify(request, runtime, active)
    return None if found is None else found[0]


async def identify(
    request: web.Request, runtime: Runtime, active: Active
) -> tuple[Mapping[str, Any], Session | None] | None:
    """``caller`` with the session the claims come from (None for a bearer token's)."""
    assert active.oidc is not None
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
        who = claims.get("email") or claims.get("preferred_username") or claims.get("sub") or "an unknown user"
        raise Forbidden(f"You are signed in as {who}. {reason}", code="access_denied")
