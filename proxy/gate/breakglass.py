"""Break-glass access: a way past SSO for an operator when the provider is down or misconfigured.

Off unless ``break_glass.token`` (or ``token_file``) is set. The operator proves the token either

- in a browser, on the form at ``/oauth2/break-glass``: a correct token sets a short-lived signed cookie
  (``break_glass.ttl``, not extended by use), or
- from a script, in an ``X-Break-Glass: TOKEN`` header on each request.

A request so admitted goes to the console without a session and without asking the provider; its
identity headers are stripped like everyone's, then the one mapped to ``preferred_username`` is set to
``break_glass.user`` (default ``break-glass``), so the console can tell, and log, who came in this way.

Against guessing, and against being locked out by guessers: the token is compared first (constant
time), and a correct token always passes. A token of at least 24 random characters (weak ones are refused
at load) is out of reach of guessing at any rate, so wrong tokens are limited to keep the logs and metrics
quiet and to tell a client to back off, never to block the operator: per client (its address, or behind
``trusted_proxies`` the address the proxy vouches for), counted across every replica and worker through
Redis where sessions live there, the first ``FREE_FAILURES`` in ``WINDOW`` get 403 and the next ones 429
with a ``Retry-After`` that doubles up to ``MAX_DELAY``. There is no global count that one client could
fill for everyone. Every grant is logged (WARNING) and counted in
``sso_sidecar_break_glass_attempts_total``; wrong tokens too, until their client is limited. The cookie is
signed with the session cookie secrets and its own salt, and carries a fingerprint of the token, so
changing or removing the token (or the cookie secrets) ends every break-glass cookie at once.
"""

from __future__ import annotations

import asyncio
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

from proxy import html
from proxy.auth import clientaddress
from proxy.auth.cookies import cookie_value
from proxy.auth.identity import HeaderFilter, header_key
from proxy.auth.redirects import safe_return_to
from proxy.config.model import BreakGlassSettings, Settings
from proxy.errors import BadRequest, Forbidden, SidecarError, StoreUnavailable
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.sessions import SessionStore
from proxy.sessions.redis import RedisStore
from proxy.telemetry.logs import request_id

log = logging.getLogger("sso_sidecar.break_glass")

PATH = "/oauth2/break-glass"
HEADER = "X-Break-Glass"
_HEADER_FILTER = HeaderFilter(frozenset({header_key(HEADER)}), first_chars=frozenset("xX"))
_FINGERPRINT_INFO = b"sso-sidecar/break-glass-fingerprint/v1"
# Wrong tokens per client: this many in WINDOW are answered 403; each further one 429 with a Retry-After
# of 1 s, 2 s, 4 s ... up to MAX_DELAY. A client forgets its count after WINDOW without a wrong token.
WINDOW = 3600.0
FREE_FAILURES = 5
MAX_DELAY = 900.0
_COUNT_MAX = 60  # failures kept per client (the delay is at its maximum long before; not a power of 2, which logs)
_MAX_TRACKED_CLIENTS = 10_000
_KEY = "break_glass:failures:"


class RateLimited(SidecarError):
    status = 429
    code = "rate_limited"
    title = "Too many attempts"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = int(retry_after)


def delay_after(failures: int) -> float:
    """How long a client should wait after its ``failures``-th wrong token in the window (0: not limited)."""
    if failures <= FREE_FAILURES:
        return 0.0
    return min(MAX_DELAY, 2.0 ** (failures - FREE_FAILURES - 1))


class FailureLimiter:
    """Wrong tokens per client: in the shared store (Redis) where there is one, else in this process.

    Only wrong tokens ever reach it, and it only ever says how loudly to refuse them: a correct token is
    judged before it is asked. When Redis is unreachable, this process counts on its own."""

    def __init__(self) -> None:
        self._local: dict[str, deque[float]] = {}
        self._shared_seen: dict[str, int] = {}  # the last shared count seen per client (header path)
        self._pending: set[asyncio.Task[int]] = set()

    async def failed(self, store: SessionStore, client: str, now: float | None = None) -> int:
        """Count one wrong token from ``client``; its failures in the window, this one included."""
        local = self._failed_here(client, now)
        if not isinstance(store, RedisStore):
            return local
        key, member = _KEY + client, secrets.token_hex(8)
        try:
            seen = await store.index_add(key, member, WINDOW)  # the count, in the same atomic step
            if seen > _COUNT_MAX:
                await store.index_remove(key, member)  # a flood: the count stays bounded
                seen = _COUNT_MAX
        except StoreUnavailable:
            return local
        if len(self._shared_seen) >= _MAX_TRACKED_CLIENTS:
            self._shared_seen.clear()
        self._shared_seen[client] = seen
        return max(seen, local)

    def failed_soon(self, store: SessionStore, client: str) -> int:
        """For a caller that cannot wait (the gate's header check): count here now, in the shared store in
        the background; the answer uses the newest shared count seen, so it may lag by one attempt."""
        local = self._failed_here(client)
        if isinstance(store, RedisStore):
            task = asyncio.get_running_loop().create_task(self.failed(store, client))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return max(local, self._shared_seen.get(client, 0) + 1)

    def _failed_here(self, client: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        q = self._local.get(client)
        if q is None:
            if len(self._local) >= _MAX_TRACKED_CLIENTS:
                # Forget clients whose window has passed, else the oldest: memory stays bounded.
                for key in [k for k, v in self._local.items() if not v or v[-1] <= now - WINDOW]:
                    del self._local[key]
                if len(self._local) >= _MAX_TRACKED_CLIENTS:
                    self._local.pop(next(iter(self._local)))
            q = self._local[client] = deque(maxlen=_COUNT_MAX)
        while q and q[0] <= now - WINDOW:
            q.popleft()
        q.append(now)
        return len(q)


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


def client_address(request: web.Request, settings: Settings) -> str:
    """The client's address (behind trusted proxies, the one they vouch for), for logs."""
    return clientaddress.client_address(request, settings) or "-"


def _counted_as(request: web.Request, settings: Settings) -> str:
    """Whose wrong tokens these are: the address, an IPv6 /64 (one holder has all of it)."""
    return clientaddress.address_group(client_address(request, settings))


def check_token(request: web.Request, runtime: Runtime, active: Active, offered: str, via: str) -> bool:
    """Judge one offered token: True if it is right. A wrong one is counted, and raises ``RateLimited``
    once its client is past ``FREE_FAILURES``. The gate's header check cannot wait for Redis: it counts in
    the background (``FailureLimiter.failed_soon``)."""
    if token_matches(active.settings.break_glass, offered):
        runtime.metrics.break_glass_attempts.labels(via, "granted").inc()
        return True
    client = _counted_as(request, active.settings)
    failures = request.app[LIMITER].failed_soon(runtime.store, client)
    _judged(runtime, client, via, failures)
    return False


async def check_token_async(request: web.Request, runtime: Runtime, active: Active, offered: str, via: str) -> bool:
    """``check_token`` for a caller that can wait: the shared count is read before answering."""
    if token_matches(active.settings.break_glass, offered):
        runtime.metrics.break_glass_attempts.labels(via, "granted").inc()
        return True
    client = _counted_as(request, active.settings)
    failures = await request.app[LIMITER].failed(runtime.store, client)
    _judged(runtime, client, via, failures)
    return False


def _judged(runtime: Runtime, client: str, via: str, failures: int) -> None:
    """A wrong token from ``client``, its ``failures``-th: logged and counted; ``RateLimited`` past the free ones."""
    delay = delay_after(failures)
    metrics = runtime.metrics.break_glass_attempts
    if not delay:
        metrics.labels(via, "rejected").inc()
        log.warning("break-glass: wrong token from %s via %s", client, via)
        return
    metrics.labels(via, "rate_limited").inc()
    if failures & (failures - 1) == 0 or failures == FREE_FAILURES + 1:  # once, then at 8, 16, 32...
        log.warning("break-glass: %d wrong tokens from %s: rate limited (via %s)", failures, client, via)
    raise RateLimited(
        f"Too many wrong break-glass tokens from your address. Wait {int(delay)} s before trying another; "
        "the right token is always accepted.",
        delay,
    )


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
    for name in _HEADER_FILTER.doomed(headers):
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
    log.warning("break-glass: %s %s from %s [%s]", request.method, request.path,
                client_address(request, active.settings), request_id(request))  # fmt: skip
    settings = active.settings.break_glass
    return active.identity.values({"preferred_username": settings.user, "sub": settings.user})


def own_cookies(active: Active) -> Callable[[str], bool]:
    """The gate's cookie filter: the sidecar's cookies, the break-glass one included, stay here."""
    return active.cookies.is_own_cookie


# -- the form ------------------------------------------------------------------------------------------


def _form(rd: str) -> str:
    # The button says where it leads: the settings page's first setup comes through here too.
    where = "the settings page" if rd == _ADMIN or rd.startswith(_ADMIN + "?") else "the console"
    return (
        f'<form method="post" action="{PATH}">'
        '<p><label>Break-glass token<br><input type="password" name="token" autocomplete="off" '
        'required autofocus style="width:100%;padding:.5rem;font-size:1rem"></label></p>'
        f'<input type="hidden" name="rd" value="{escape(rd)}">'
        f'<div class="actions"><button type="submit">Continue to {where}</button></div></form>'
    )


_ADMIN = "/oauth2/admin"  # the settings page (proxy.admin, a layer above: named, not imported)


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
    return html.render("Break-glass access", message, form=_form(rd))


async def submit(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    settings = active.settings.break_glass
    if not settings.enabled:
        raise _not_configured()
    try:
        data = await request.post()
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form could not be read (it is not UTF-8 form data).") from None
    token, rd_value = data.get("token"), data.get("rd")
    rd = safe_return_to(rd_value if isinstance(rd_value, str) else None)
    try:
        right = isinstance(token, str) and await check_token_async(request, runtime, active, token, "form")
    except RateLimited as exc:
        response = html.render("Break-glass access", exc.message, status=429, form=_form(rd), error=True)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if not right:
        return html.render("Break-glass access", "That token was not accepted.", status=403, form=_form(rd), error=True)
    grant = secrets.token_hex(6)
    log.warning("break-glass: access granted to %s via the form, grant %s, for %ds",
                client_address(request, active.settings), grant, int(settings.ttl))  # fmt: skip
    response = web.Response(status=303, headers={"Location": rd, "Cache-Control": "no-store"})
    active.cookies.set_break_glass(response, f"{_fingerprint(settings)}.{grant}", max_age=int(settings.ttl))
    return response


def add_routes(app: web.Application) -> None:
    app[LIMITER] = FailureLimiter()
    app.router.add_get(PATH, form)
    app.router.add_post(PATH, submit)
