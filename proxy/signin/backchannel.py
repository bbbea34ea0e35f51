"""OpenID Connect Back-Channel Logout 1.0 receiver: the provider tells us a user or session signed out."""

from __future__ import annotations

import logging

from aiohttp import web

from proxy.errors import ProviderError, TokenValidationError
from proxy.oidc.tokens import LOGOUT_TOKEN_MAX_AGE
from proxy.runtime.state import RUNTIME
from proxy.sessions.revocations import ID_TOKEN_MAX_LIFETIME

log = logging.getLogger("sso_sidecar.backchannel")
_HEADERS = {"Cache-Control": "no-store"}


def _refuse(description: str, status: int = 400) -> web.Response:
    # Section 2.8: 400 with an OAuth-style error body when the logout request is invalid.
    return web.json_response({"error": "invalid_request", "error_description": description}, status=status,
                             headers=_HEADERS)  # fmt: skip


async def backchannel_logout(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    if active.oidc is None:
        return _refuse("single sign-on is switched off", status=404)
    if request.content_type != "application/x-www-form-urlencoded":
        return _refuse("expected a form with logout_token")
    form = await request.post()
    tokens = form.getall("logout_token", [])
    if len(tokens) != 1 or not isinstance(tokens[0], str):
        return _refuse("expected exactly one logout_token")
    try:
        claims = await active.oidc.validate_logout_token(tokens[0])
    except TokenValidationError as exc:
        log.warning("back-channel logout refused: %s", exc.message)
        return _refuse(exc.message)
    except ProviderError as exc:
        log.error("back-channel logout could not be checked: %s", exc.message)
        return _refuse("the logout token could not be verified right now", status=503)
    issuer = str(claims["iss"])
    ttl = LOGOUT_TOKEN_MAX_AGE + 2 * active.settings.sso.clock_skew
    if not await runtime.sessions.first_use_of_logout_token(issuer, str(claims["jti"]), ttl):
        log.warning("back-channel logout refused: replayed logout token (jti)")
        return _refuse("replayed logout token")
    sid, sub = claims.get("sid"), claims.get("sub")
    skew = active.settings.sso.clock_skew
    # Section 2.7: the session named by sid, else every session of sub. Their ID tokens first (bearer
    # credentials where sso.accept_id_tokens): a user's are those issued up to the logout (the provider's
    # clock, as their iat), for as long as any ID token may live, since the logout token does not say.
    await runtime.sessions.revocations.revoke(
        issuer, sid=sid, sub=sub, issued_before=float(claims["iat"]), ttl=ID_TOKEN_MAX_LIFETIME + 2 * skew
    )
    ended = await runtime.sessions.end_matching(issuer, sub=sub, sid=sid)
    log.info("back-channel logout: ended %d session(s) (%s)", ended, "by sid" if sid else "by sub")
    return web.Response(status=200, headers=_HEADERS)
