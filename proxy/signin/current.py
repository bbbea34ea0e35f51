"""Which session a request belongs to: the ticket in its cookie, the stored session, refreshed when due."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.auth.cookies import cookie_value
from proxy.sessions.manager import UNKNOWN, Unknown

if TYPE_CHECKING:  # the runtime holds the session manager, so it is imported for types only
    from aiohttp import web

    from proxy.runtime.state import Active, Runtime
    from proxy.sessions.model import Session


def known_session(request: web.BaseRequest, runtime: Runtime, active: Active) -> Session | Unknown | None:
    """``session_for``'s answer where it needs no I/O, which is nearly every request of a signed-in user: no
    cookie, a ticket that does not verify, or a session the in-process cache holds and that needs no refresh.
    ``UNKNOWN`` where only ``session_for`` can tell (the store, a refresh). A plain function: a request it
    answers costs no coroutine, where ``session_for`` and the two it awaits would cost three."""
    ticket = active.cookies.decode_ticket(cookie_value(request, active.cookies.session_name))
    if ticket is None or active.oidc is None:
        return None
    sso = active.settings.sso
    session = runtime.sessions.cached(ticket, issuer=sso.issuer_url, client_id=sso.client_id)
    if session is None or session is UNKNOWN:
        return session
    return session if runtime.refresher.current(session, active.passed_tokens) else UNKNOWN


async def session_for(request: web.BaseRequest, runtime: Runtime, active: Active) -> Session | None:
    """The session the request's cookie points at, if it is live and from the configured provider."""
    ticket = active.cookies.decode_ticket(cookie_value(request, active.cookies.session_name))
    if ticket is None or active.oidc is None:
        return None
    sso = active.settings.sso
    session = await runtime.sessions.load(ticket, issuer=sso.issuer_url, client_id=sso.client_id)
    if session is None:
        return None
    return await runtime.refresher.fresh(session, active.oidc, active.passed_tokens)
