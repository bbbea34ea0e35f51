"""Step-up: the end of a sign-in that a route asked to be more recent (``max_age``) or stronger
(``acr_values``) than the session's.

The gate (or ``/oauth2/start`` for a path on such a route) begins it with ``login.begin_login(step_up=...)``:
a pending login like any other, bound to the browser (the sign-in cookie, ``state``, ``nonce``, PKCE) and to
the page it returns to (validated), carrying the requirement and a digest of the session it upgrades. The
callback hands it here (``login.STEP_UP``, registered in ``app``). Then:

- the response is checked and redeemed as any sign-in's (``login.checked_result``);
- a sign-in that does not meet the requirement (the provider never sent the ``acr``, or an old ``auth_time``)
  ends on one 403 page that says what is required; it never sends the browser round again, and the session
  stays as it was, for every other path;
- a sign-in of another user than the session's, or for a session that changed meanwhile, changes nothing;
- otherwise the session is upgraded in place (``SessionManager.upgrade``): the new sign-in's ``auth_time``,
  ``acr`` and tokens, its lifetime running on, a new id as after any sign-in; the browser lands on the page.
  A browser that had no session gets one, as from any sign-in.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from proxy.auth.routes import Requirement
from proxy.errors import Closed, LoginError, StepUpFailed
from proxy.runtime.state import Runtime
from proxy.sessions import PendingLogin
from proxy.signin import login
from proxy.signin.current import session_for

log = logging.getLogger("sso_sidecar.login")

# OpenID Connect Unmet Authentication Requirements 1.0: the provider could not meet acr_values or max_age.
UNMET = "unmet_authentication_requirements"


async def finish(
    request: web.Request, runtime: Runtime, pending: PendingLogin, *, redirect_uri: str | None = None
) -> web.StreamResponse:
    """The callback of a step-up sign-in (``login.Finish``)."""
    if runtime.closed is not None:
        raise Closed()
    active = runtime.active
    if active.oidc is None:
        raise LoginError("Single sign-on is switched off.", status=404)
    need = Requirement.from_text(pending.about)
    if request.query.get("error") == UNMET:
        raise StepUpFailed(_words(need, "Your identity provider could not deliver it."))
    refused = login.provider_refusal(request.query)
    if refused is not None:
        refused.return_to = pending.return_to
        raise refused
    result = await login.checked_result(request, active, pending)
    claims = result.claims
    current = await session_for(request, runtime, active)
    if current is not None and pending.by and login.session_binding(current.id) != pending.by:
        # Signed out, or signed in again, in another tab since: this sign-in is not for the session here.
        raise LoginError("Your session changed while you were signing in again. Please try again.")
    if current is not None and current.subject != claims.get("sub"):
        raise LoginError(
            "You signed in as another user than the one signed in here, so nothing changed. Sign out first to "
            "change users.",
            code="step_up_other_user",
            status=403,
        )
    why = need.shortfall(claims, time.time(), active.settings.sso.clock_skew)
    if why is not None:
        # The provider answered, and not with what the route needs: asking again would only loop.
        log.warning("step-up for %s did not meet it: %s", ", ".join(need.routes), why)
        runtime.denials.add("step_up_failed", need.routes, "GET", pending.return_to.partition("?")[0], claims)
        raise StepUpFailed(_words(need, f"This sign-in was not it: {why}."))
    state = request.query.get("state", "")
    if current is None or not pending.by:
        session = await login.new_session(request, runtime, active, result)
        return login.signed_in(active, session, pending.return_to, state)
    tokens = result.tokens
    session = await runtime.sessions.upgrade(
        current,
        claims=claims,
        id_token=tokens.id_token,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        access_expires_at=tokens.expires_at,
        client=login.sign_in_client(request, active),
    )
    log.info("step-up ok for %s", ", ".join(need.routes))
    return login.signed_in(active, session, pending.return_to, state)


def _words(need: Requirement, what_happened: str) -> str:
    return (
        f"This page needs {need.words()}. {what_happened} You are still signed in for the rest of the console; "
        "ask the administrator of your identity provider how to sign in that way."
    )
