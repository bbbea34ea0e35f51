"""The sidecar's own endpoints under /oauth2/: start, callback, sign-out, signed-out, userinfo.

Protocol work (discovery, tokens, validation) is ``proxy.oidc.client``'s; this module binds it to browsers:
pending-login cookies, the session cookie, redirects.

A sign-in may serve another purpose than a session: a module registers the purpose and how to finish it
(``register_purpose``; the settings page's Test login is one), its pending login carries the purpose, and the
callback hands such a sign-in to it. Sign-in itself never calls into the module that registered it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from yarl import URL

from proxy import html
from proxy.auth import routes
from proxy.auth.clientaddress import address_group, client_address
from proxy.auth.cookies import cookie_value
from proxy.auth.paths import normalise
from proxy.auth.redirects import return_to_for
from proxy.config.model import SIGNED_OUT_PATH, Settings
from proxy.errors import BadRequest, Closed, LoginError, SidecarError, TooManySignIns, Unauthenticated
from proxy.oidc.client import LoginResult, OIDCClient, TokenEndpointError, logout_hints, new_pkce, random_token
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.sessions import PendingLogin, Session
from proxy.sessions.directory import SignIn
from proxy.sessions.revocations import ttl_for
from proxy.signin.current import session_for

log = logging.getLogger("sso_sidecar.login")

_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Identity claims worth showing a front end; protocol claims (nonce, at_hash, aud, ...) are left out.
_PROTOCOL_CLAIMS = frozenset({"aud", "azp", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "s_hash", "jti", "sid"})


class Finish(Protocol):
    """How a module finishes a sign-in of its purpose, in place of a session (``register_purpose``)."""

    async def __call__(
        self, request: web.Request, runtime: Runtime, pending: PendingLogin, *, redirect_uri: str | None = None
    ) -> web.StreamResponse: ...


PURPOSES: web.AppKey[dict[str, Finish]] = web.AppKey("sign_in_purposes", dict)
# A sign-in that asks the provider for more than a session (a route's ``acr_values``, ``max_age``): its pending
# login carries the requirement (``about``) and the session it upgrades (``by``); ``proxy.signin.stepup``
# finishes it.
STEP_UP = "step_up"


def register_purpose(app: web.Application, purpose: str, finish: Finish) -> None:
    """Sign-ins whose pending login carries ``purpose`` end in ``finish``: the callback creates no session."""
    if PURPOSES not in app:
        app[PURPOSES] = {}
    app[PURPOSES][purpose] = finish


async def finish_purpose(
    request: web.Request, runtime: Runtime, pending: PendingLogin, *, redirect_uri: str | None = None
) -> web.StreamResponse:
    """Hand a sign-in of a registered purpose to the module that registered it (``redirect_uri``: the one it
    came back to, when not the console's)."""
    assert pending.purpose is not None
    finish = request.app.get(PURPOSES, {}).get(pending.purpose)
    if finish is None:
        raise LoginError("This sign-in cannot be finished here.", status=404)
    return await finish(request, runtime, pending, redirect_uri=redirect_uri)


# /oauth2/start's ``method``: the methods of the request a step-up is for, when not a GET (at most a few).
_START_METHOD = re.compile(r"^[A-Z]{1,16}$")
_START_METHODS_MAX = 4


def login_url(return_to: str, methods: Sequence[str] = ()) -> str:
    """``/oauth2/start`` for ``return_to``. ``methods``: the methods of a request a route asked more of (a DELETE,
    or a POST that overrides to one): the browser comes back with a GET, so ``start`` can only ask the provider
    for that request's sign-in if it is told them (``method=DELETE``, or ``POST,DELETE``)."""
    if any(m not in ("GET", "HEAD") for m in methods):
        return str(URL("/oauth2/start").with_query(rd=return_to, method=",".join(methods)))
    return str(URL("/oauth2/start").with_query(rd=return_to))


def start_methods(value: str | None) -> tuple[str, ...]:
    """The methods a ``start`` asks the sign-in for: GET (the browser lands with one), and those ``method``
    names; a name that is not a method token is ignored (anyone may write this URL: it can only ask for more)."""
    named = (m.strip().upper() for m in (value or "").split(",")[:_START_METHODS_MAX])
    return tuple(dict.fromkeys(("GET", *(m for m in named if _START_METHOD.match(m)))))


async def begin_login(
    request: web.Request,
    runtime: Runtime,
    active: Active,
    return_to: str,
    *,
    step_up: routes.Requirement | None = None,
) -> web.Response:
    """Send the browser to the provider, with a fresh pending login bound to this browser.

    ``step_up``: what the route at ``return_to`` asks of the sign-in; the provider is asked for it
    (``acr_values``, ``max_age``), and the pending login is bound to the session it will upgrade."""
    return_to = return_to_for(return_to, active.settings)
    if active.oidc is None:
        raise web.HTTPFound(return_to)
    try:
        # Fails with a clear page before anyone is sent to a misconfigured issuer.
        metadata = await active.oidc.metadata()
    except SidecarError as exc:
        exc.return_to = return_to
        raise
    state, nonce = random_token(), random_token()
    verifier, challenge = new_pkce()
    sso = active.settings.sso
    address = address_group(client_address(request, active.settings))
    pending = PendingLogin(nonce, verifier, return_to, metadata.issuer, sso.client_id, time.time())
    if step_up is not None:
        ticket = active.cookies.decode_ticket(cookie_value(request, active.cookies.session_name))
        by = session_binding(ticket.session_id) if ticket is not None else ""
        pending = dataclasses.replace(pending, purpose=STEP_UP, about=step_up.to_text(), by=by)
    if not await runtime.sessions.save_login(state, pending, address=address):
        # Every start is stored until it finishes or login_timeout passes: bounded per address, so that
        # anonymous requests cannot fill the store. Several tabs of one user are far below the bound.
        log.warning("sign-in refused: too many open sign-ins from %s", address)
        raise TooManySignIns(retry_after=int(min(60.0, active.settings.session.login_timeout)))
    params = step_up.authorize_params() if step_up is not None else None
    url = await active.oidc.authorization_url(state=state, nonce=nonce, code_challenge=challenge, extra=params)
    response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    active.cookies.set_login(response, state, request.cookies)
    return response


def session_binding(session_id: str) -> str:
    """What a pending step-up keeps of the session it upgrades: a digest, not the id (the store sees it)."""
    return hashlib.sha256(b"sso-sidecar/step-up/" + session_id.encode()).hexdigest()[:32]


def route_requirement(
    settings: Settings, return_to: str, methods: Sequence[str] = ("GET",)
) -> routes.Requirement | None:
    """What the routes of ``return_to`` (requests of ``methods``) ask of a sign-in, when it is a path of this
    console."""
    if not settings.routes or not return_to.startswith("/"):
        return None
    try:
        target = normalise(return_to)
    except BadRequest:
        return None
    return routes.requirement(routes.hits(settings.routes, tuple(methods), target))


async def start(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if runtime.closed is not None:
        raise Closed()
    active = runtime.active
    return_to = return_to_for(request.query.get("rd"), active.settings)
    # A page that needs a stronger or more recent sign-in asks for it now, not after a round trip: forward
    # auth's 401 and an API's step-up challenge send browsers here, with the methods of the request refused.
    step_up = route_requirement(active.settings, return_to, start_methods(request.query.get("method")))
    return await begin_login(request, runtime, active, return_to, step_up=step_up)


async def callback(request: web.Request) -> web.StreamResponse:
    """The redirect URI: validate the authorization response, redeem the code, create the session.

    A sign-in of another purpose (the settings page's Test login) comes back here too (the one registered
    redirect URI); its pending login says so, and the module that registered the purpose finishes it without
    creating a session."""
    runtime = request.app[RUNTIME]
    active = runtime.active
    query = request.query
    state = query.get("state", "")
    # Login CSRF (RFC 9700 4.7): only a state this browser started counts; it is taken exactly once.
    mine = bool(state) and active.cookies.login_belongs_to_browser(state, request.cookies)
    pending = await runtime.sessions.take_login(state) if mine else None
    if pending is not None and pending.purpose is not None:
        return await finish_purpose(request, runtime, pending)
    if runtime.closed is not None:
        raise Closed()
    if active.oidc is None:
        raise LoginError("Single sign-on is switched off.", status=404)
    refused = provider_refusal(query)
    if refused is not None:
        raise refused
    if not state:
        raise LoginError("The sign-in response has no state parameter.")
    if not mine:
        raise LoginError("This sign-in was not started in this browser, or it has expired.")
    if pending is None:
        raise LoginError("This sign-in has expired or was already used.")
    result = await checked_result(request, active, pending)
    session = await new_session(request, runtime, active, result)
    return signed_in(active, session, pending.return_to, state)


async def new_session(request: web.Request, runtime: Runtime, active: Active, result: LoginResult) -> Session:
    """A session for a sign-in that succeeded; the browser's previous session, if any, ends."""
    previous = active.cookies.decode_ticket(request.cookies.get(active.cookies.session_name))
    if previous is not None:
        # A fresh session id on every login: a cookie planted before login is worth nothing after it.
        await runtime.sessions.delete(previous.session_id)
    tokens = result.tokens
    session = await runtime.sessions.create(
        claims=result.claims,
        id_token=tokens.id_token,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        access_expires_at=tokens.expires_at,
        issuer=active.settings.sso.issuer_url,
        client_id=active.settings.sso.client_id,
        client=sign_in_client(request, active),
    )
    log.info("login ok sub=%s", _short(session.subject))
    return session


def signed_in(active: Active, session: Session, return_to: str, state: str) -> web.Response:
    """The callback's answer: to the page the user wanted, with the session's cookie; the sign-in's is done."""
    response = web.Response(status=302, headers={"Location": return_to, "Cache-Control": "no-store"})
    active.cookies.set_session(response, session.ticket)
    active.cookies.clear_login(response, state)
    return response


def provider_refusal(query: Mapping[str, str]) -> LoginError | None:
    """The provider's error response (RFC 6749 4.1.2.1), as the error to show; None when it sent none."""
    if "error" not in query:
        return None
    error = query["error"] if _ERROR_CODE.match(query["error"]) else "invalid_request"
    return LoginError(f"The identity provider refused the sign-in ({error}).", code="provider_denied")


async def checked_result(request: web.Request, active: Active, pending: PendingLogin) -> LoginResult:
    """The authorization response of ``pending`` checked (the sign-in settings unchanged, RFC 9207 ``iss``) and
    its code redeemed (ID token validated, userinfo read), for an identity this console can use. Errors carry
    the page the user wanted, for "try again"."""
    assert active.oidc is not None
    query = request.query
    try:
        if (pending.issuer, pending.client_id) != active.settings.sso.identity:
            raise LoginError("The sign-in settings changed while you were signing in.")
        metadata = await active.oidc.metadata()
        active.oidc.check_authorization_response_iss(query.get("iss"), metadata)
        code = query.get("code")
        if not code:
            raise LoginError("The sign-in response has no authorization code.")
        result = await redeem(active.oidc, code, pending)
        problem = active.identity.problem(result.claims)
        if problem is not None:
            log.warning("login refused: %s (sub=%s)", problem, _short(str(result.claims.get("sub", ""))))
            raise LoginError(
                f"Your account cannot be used to sign in here: {problem}. "
                "Ask the administrator of your identity provider to correct it.",
                code="unusable_identity",
            )
    except SidecarError as exc:
        exc.return_to = pending.return_to
        raise
    return result


def sign_in_client(request: web.Request, active: Active) -> SignIn:
    """The browser that signs in, as the settings page's Sessions lists it: its address, its user agent."""
    return SignIn(client_address(request, active.settings), request.headers.get("User-Agent", ""))


async def redeem(oidc: OIDCClient, code: str, pending: PendingLogin) -> LoginResult:
    try:
        return await oidc.login(code=code, code_verifier=pending.code_verifier, nonce=pending.nonce)
    except TokenEndpointError as exc:
        if exc.error != "invalid_grant":
            raise
        # RFC 6749 5.2: the code is used, expired, or was issued for another PKCE verifier or redirect URI,
        # e.g. a code swapped in from another sign-in. The request's fault, not a provider outage: 400.
        raise LoginError(
            "The identity provider did not accept this sign-in's authorization code: it was used already, "
            "has expired, or belongs to another sign-in. Please start again.",
            code="invalid_grant",
        ) from None


def _same_site_request(request: web.Request, public_origin: str) -> bool:
    """True when the browser says this request came from our own pages (or was typed by the user)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is not None and origin == public_origin


async def sign_out(request: web.Request) -> web.StreamResponse:
    """End the session here, then at the provider (RP-Initiated Logout 1.0), then land on ``rd``."""
    runtime = request.app[RUNTIME]
    active = runtime.active
    form = await request.post() if request.method == "POST" else None
    rd_value = (form.get("rd") if form is not None else None) or request.query.get("rd")
    rd = return_to_for(rd_value if isinstance(rd_value, str) else None, active.settings, default=SIGNED_OUT_PATH)
    session = await session_for(request, runtime, active)
    public_origin = str(active.settings.public_url.origin())
    if session is not None and not _same_site_request(request, public_origin):
        token = form.get("token") if form is not None else None
        if not (isinstance(token, str) and active.cookies.check_sign_out_token(token, session.id)):
            # A cross-site link or form must not sign the user out silently: ask first.
            return html.render(
                "Sign out?",
                "Do you want to sign out of the console?",
                form=html.sign_out_form(active.cookies.sign_out_token(session.id), rd),
            )
    location = rd
    if session is not None:
        sso = active.settings.sso
        if session.tokens_elided:  # a cached copy: the ID token for id_token_hint is in the store record
            stored = await runtime.sessions.load(
                session.ticket, issuer=sso.issuer_url, client_id=sso.client_id, use_cache=False
            )
            session = stored or session
        # First the ID tokens, then the session: a sign-out that fails half-way (the store down) leaves the
        # user signed in to try again, never signed out with a token that still works.
        await runtime.sessions.revocations.revoke(
            session.issuer,
            sid=session.provider_session,
            sub=session.subject,
            issued_before=time.time() + sso.clock_skew,
            ttl=ttl_for(session.claims, sso.clock_skew),
        )
        await runtime.sessions.end(session)
        log.info("sign-out sub=%s", _short(session.subject))
        location = await _provider_logout_url(active, session, rd) or rd
    response = web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})
    active.cookies.clear_session(response)
    return response


async def _provider_logout_url(active: Active, session: Session, rd: str) -> str | None:
    if active.oidc is None:
        return None
    try:
        metadata = await active.oidc.metadata()
    except SidecarError:
        return None  # the local session is gone; a provider outage must not block signing out
    return active.oidc.end_session_url(
        metadata,
        **logout_hints(active.settings.sso.logout_hint, session.claims, session.id_token),
        post_logout_redirect_uri=active.settings.post_logout_redirect_uri,
        state=active.cookies.encode_logout_state(rd),
    )


async def signed_out(request: web.Request) -> web.StreamResponse:
    active = request.app[RUNTIME].active
    rd = active.cookies.decode_logout_state(request.query.get("state"))
    if rd and rd != SIGNED_OUT_PATH:
        raise web.HTTPFound(rd)
    return html.render(
        "Signed out",
        "You have been signed out.",
        actions=[("Sign in again", login_url("/"))],
    )


async def userinfo(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    session = await session_for(request, runtime, active)
    if session is None:
        raise Unauthenticated(login_url=login_url("/"))
    claims: dict[str, Any] = {k: v for k, v in session.claims.items() if k not in _PROTOCOL_CLAIMS}
    if active.console is not None and active.settings.roles is not None:
        claims["roles"] = list(active.console.roles_of(session.claims))  # as the console's headers have them
    return web.json_response(claims, headers={"Cache-Control": "no-store"})


def _short(value: str) -> str:
    """Enough of an identifier to correlate log lines, not to reveal it."""
    return value[:8] + "…" if len(value) > 12 else value


def add_routes(app: web.Application) -> None:
    app.router.add_get("/oauth2/start", start)
    app.router.add_get("/oauth2/callback", callback)
    app.router.add_route("GET", "/oauth2/sign_out", sign_out)
    app.router.add_route("POST", "/oauth2/sign_out", sign_out)
    app.router.add_get(SIGNED_OUT_PATH, signed_out)
    app.router.add_get("/oauth2/userinfo", userinfo)
