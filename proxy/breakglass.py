"""Break-glass access: a way past SSO for an operator when the provider is down or misconfigured.

Off unless ``break_glass.token`` (or ``token_file``) is set. The operator proves the token either

- in a browser, on the form at ``/oauth2/break-glass``: a correct token sets a short-lived signed cookie
  (``break_glass.ttl``, not extended by use), or
- from a script, in an ``X-Break-Glass: TOKEN`` header on each request.

A request so admitted goes to the console without a session and without asking the provider; its
identity headers are stripped like everyone's, then the one mapped to ``preferred_username`` is set to
``break_glass.user`` (default ``break-glass``), so the console can tell, and log, who came in this way.

Against guessing: the comparison is constant-time; failed attempts are rate-limited per client address
and globally, and a limited client is refused before its token is even compared. Every grant and every
refusal is logged (WARNING) and counted in ``sso_sidecar_break_glass_attempts_total``. The cookie is
signed with the session cookie secrets and its own salt, and carries a fingerprint of the token, so
changing or removing the token (or the cookie secrets) ends every break-glass cookie at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from html import escape

from aiohttp import web
from multidict import CIMultiDict

from proxy import pages
from proxy.cookies import cookie_value
from proxy.errors import Forbidden, SidecarError
from proxy.identity import header_key
from proxy.logs import request_id
from proxy.redirects import safe_return_to
from proxy.runtime import RUNTIME, Active, Runtime
from proxy.settings import BreakGlassSettings

log = logging.getLogger("sso_sidecar.break_glass")

PATH = "/oauth2/break-glass"
HEADER = "X-Break-Glass"
_HEADER_KEY = header_key(HEADER)
_FINGERPRINT_INFO = b"sso-sidecar/break-glass-fingerprint/v1"
# Failed attempts allowed per window: per client address, and from everyone together (an attacker
# with many addresses). A 24+ character random token is out of reach at these rates either way.
WINDOW = 60.0
PER_CLIENT_FAILURES = 5
GLOBAL_FAILURES = 30
_MAX_TRACKED_CLIENTS = 10_000


class RateLimited(SidecarError):
    status = 429
    code = "rate_limited"
    title = "Too many attempts"


class FailureLimiter:
    """Sliding-window count of failed attempts, per client address and in total."""

    def __init__(self, per_client: int = PER_CLIENT_FAILURES, total: int = GLOBAL_FAILURES) -> None:
        self.per_client = per_client
        self.total = total
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def _prune(self, q: deque[float], now: float) -> deque[float]:
        while q and q[0] <= now - WINDOW:
            q.popleft()
        return q

    def blocked(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if len(self._prune(self._all, now)) >= self.total:
            return True
        q = self._clients.get(client)
        return q is not None and len(self._prune(q, now)) >= self.per_client

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._all.append(now)
        if client not in self._clients and len(self._clients) >= _MAX_TRACKED_CLIENTS:
            # Forget clients whose window has passed; the global limit still holds for everyone.
            for key in [k for k, q in self._clients.items() if not self._prune(q, now)]:
                del self._clients[key]
            if len(self._clients) >= _MAX_TRACKED_CLIENTS:
                self._clients.pop(next(iter(self._clients)))
        self._clients.setdefault(client, deque()).append(now)


LIMITER: web.AppKey[FailureLimiter] = web.AppKey("break_glass_limiter", FailureLimiter)


# -- tokens and cookies --------------------------------------------------------------------------------


def _fingerprint(settings: BreakGlassSettings) -> str:
    assert settings.token is not None
    return hmac.new(settings.token.reveal().encode(), _FINGERPRINT_INFO, hashlib.sha256).hexdigest()[:32]


def token_matches(settings: BreakGlassSettings, offered: str) -> bool:
    if settings.token is None:
        return False
    # Constant time: how much of a guess was right must not show in the response time. Comparing
    # digests keeps the token's length out of it too.
    expected = hashlib.sha256(settings.token.reveal().encode()).digest()
    return hmac.compare_digest(hashlib.sha256(offered.encode()).digest(), expected)


def _cookie_grant(request: web.Request, active: Active) -> str | None:
    """The grant id in a valid break-glass cookie, else None."""
    settings = active.settings.break_glass
    value = cookie_value(request, active.cookies.break_glass_name)
    payload = active.cookies.decode_break_glass(value, max_age=int(settings.ttl))
    if payload is None:
        return None
    fingerprint, _, grant = payload.partition(".")
    if not grant or not hmac.compare_digest(fingerprint, _fingerprint(settings)):
        return None  # issued for a token that has since been changed
    return grant


def _client(request: web.Request) -> str:
    return request.remote or "-"


def check_token(request: web.Request, runtime: Runtime, active: Active, offered: str, via: str) -> bool:
    """Judge one offered token: True if it is right. Raises ``RateLimited`` while the client is limited."""
    limiter = request.app[LIMITER]
    client = _client(request)
    metrics = runtime.metrics.break_glass_attempts
    if limiter.blocked(client):
        metrics.labels(via, "rate_limited").inc()
        log.warning("break-glass: attempt from %s via %s refused: rate limited", client, via)
        raise RateLimited("Too many wrong break-glass tokens. Wait a minute, then try again.")
    if token_matches(active.settings.break_glass, offered):
        metrics.labels(via, "granted").inc()
        return True
    limiter.failed(client)
    metrics.labels(via, "rejected").inc()
    log.warning("break-glass: wrong token from %s via %s", client, via)
    return False


def authorized(request: web.Request, runtime: Runtime, active: Active, headers: CIMultiDict[str] | None = None) -> bool:
    """True when the request carries valid break-glass proof (cookie or header).

    A wrong header token raises ``Forbidden`` (a script should hear that its token is wrong rather than
    be sent to a login page it cannot use). ``headers``, when given, loses the header in every spelling.
    """
    offered = _take_header(headers if headers is not None else CIMultiDict(request.headers))
    settings = active.settings.break_glass
    if not settings.enabled:
        return False
    if offered is not None:
        if check_token(request, runtime, active, offered, "header"):
            return True
        raise Forbidden("The break-glass token was not accepted.", code="break_glass_rejected")
    return _cookie_grant(request, active) is not None


def holder(request: web.Request, runtime: Runtime, active: Active) -> str | None:
    """Who holds break-glass proof on this request, for binding forms to it: ``grant <id>`` (the form's
    cookie) or ``header``; None without proof. A wrong header token raises ``Forbidden``."""
    if not active.settings.break_glass.enabled:
        return None
    offered = _take_header(CIMultiDict(request.headers))
    if offered is not None:
        if check_token(request, runtime, active, offered, "header"):
            return "header"
        raise Forbidden("The break-glass token was not accepted.", code="break_glass_rejected")
    grant = _cookie_grant(request, active)
    return None if grant is None else f"grant {grant}"


def _take_header(headers: CIMultiDict[str]) -> str | None:
    """The offered token, removing the header in every spelling (any case, ``_`` for ``-``)."""
    offered = None
    for name in [n for n in headers if n[:1] in "xX" and header_key(n) == _HEADER_KEY]:
        offered = offered or headers.get(name)
        headers.popall(name, None)
    return offered


def admit(
    request: web.Request, runtime: Runtime, active: Active, headers: CIMultiDict[str]
) -> Sequence[tuple[str, str]] | None:
    """The gate's hook: identity headers for a break-glass request, or None for the usual way.

    Always removes the ``X-Break-Glass`` header from ``headers`` (the upstream's copy), so the token never
    reaches the console, also when SSO is off or break-glass is not configured.
    """
    if active.oidc is None:
        _take_header(headers)  # SSO is off: everyone passes, and the token still stays here
        return None
    if not authorized(request, runtime, active, headers):
        return None
    runtime.metrics.break_glass_requests.inc()
    log.warning("break-glass: %s %s from %s [%s]", request.method, request.path, _client(request),
                request_id(request))  # fmt: skip
    settings = active.settings.break_glass
    return active.identity.values({"preferred_username": settings.user, "sub": settings.user})


def own_cookies(active: Active) -> Callable[[str], bool]:
    """The gate's cookie filter: the sidecar's cookies, the break-glass one included, stay here."""
    return active.cookies.is_own_cookie


# -- the form ------------------------------------------------------------------------------------------


def _form(rd: str) -> str:
    return (
        f'<form method="post" action="{PATH}">'
        '<p><label>Break-glass token<br><input type="password" name="token" autocomplete="off" '
        'required autofocus style="width:100%;padding:.5rem;font-size:1rem"></label></p>'
        f'<input type="hidden" name="rd" value="{escape(rd)}">'
        '<div class="actions"><button type="submit">Continue to the console</button></div></form>'
    )


def _not_configured() -> SidecarError:
    return SidecarError("Break-glass access is not configured.", code="not_found", status=404)


_EXPLANATION = (
    "Emergency access for operators while single sign-on is unavailable. Every use is logged. "
    "Access ends after {ttl} minutes."
)


async def form(request: web.Request) -> web.StreamResponse:
    active = request.app[RUNTIME].active
    settings = active.settings.break_glass
    if not settings.enabled:
        raise _not_configured()
    rd = safe_return_to(request.query.get("rd"))
    message = _EXPLANATION.format(ttl=max(1, round(settings.ttl / 60)))
    return pages.render("Break-glass access", message, form=_form(rd))


async def submit(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    settings = active.settings.break_glass
    if not settings.enabled:
        raise _not_configured()
    data = await request.post()
    token, rd_value = data.get("token"), data.get("rd")
    rd = safe_return_to(rd_value if isinstance(rd_value, str) else None)
    if not isinstance(token, str) or not check_token(request, runtime, active, token, "form"):
        return pages.render("Break-glass access", "That token was not accepted.", status=403, form=_form(rd))
    grant = secrets.token_hex(6)
    log.warning("break-glass: access granted to %s via the form, grant %s, for %ds", _client(request), grant,
                int(settings.ttl))  # fmt: skip
    response = web.Response(status=303, headers={"Location": rd, "Cache-Control": "no-store"})
    active.cookies.set_break_glass(response, f"{_fingerprint(settings)}.{grant}", max_age=int(settings.ttl))
    return response


def add_routes(app: web.Application) -> None:
    app[LIMITER] = FailureLimiter()
    app.router.add_get(PATH, form)
    app.router.add_post(PATH, submit)
