"""create_app(settings): routes, middleware order, long-lived resources. The only wiring."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from proxy import html, server
from proxy.admin import handlers as admin
from proxy.admin.sync import PageSync, open_page_store
from proxy.auth import bearer
from proxy.config.model import BACKCHANNEL_LOGOUT_PATH, Settings
from proxy.errors import Forbidden, LoginError, NotFound, SidecarError, StepUpRequired, Unauthenticated
from proxy.gate import breakglass, forward_auth
from proxy.gate import handler as gate
from proxy.gate.decide import is_api_request
from proxy.ops import health, jwks, resource, status
from proxy.runtime.state import RUNTIME, Runtime
from proxy.sessions import open_store
from proxy.signin import backchannel, login, stepup
from proxy.telemetry import metrics
from proxy.telemetry.logs import LOG, RequestLog, request_id

log = logging.getLogger("sso_sidecar")


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith(("/oauth2/userinfo", status.PATH)) or is_api_request(request)


def render_error(request: web.Request, exc: SidecarError) -> web.StreamResponse:
    """The one place where an error becomes a response: JSON for API callers, a page for browsers."""
    the_id = request_id(request, "")
    headers = {"Cache-Control": "no-store"}
    if isinstance(exc, Unauthenticated) and exc.challenge:
        # RFC 6750 3, with where to learn how to get a token (RFC 9728 5.1): built once per config.
        headers["WWW-Authenticate"] = resource.with_metadata(exc.challenge, request.app[RUNTIME].active.settings)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if _wants_json(request):
        body: dict[str, Any] = {"error": exc.code, "message": exc.message, "request_id": the_id}
        if isinstance(exc, Unauthenticated):
            body["login_url"] = exc.login_url
        if isinstance(exc, StepUpRequired):
            body.update(exc.details)  # RFC 9470's acr_values and max_age
        return web.json_response(body, status=exc.status, headers=headers)
    actions: list[tuple[str, str]] = []
    if isinstance(exc, LoginError):
        actions.append(("Try again", login.login_url(exc.return_to or "/")))
    elif isinstance(exc, Forbidden):
        actions.append(("Sign out", "/oauth2/sign_out"))
    elif isinstance(exc, Unauthenticated):
        actions.append(("Sign in", exc.login_url))
    else:
        actions.append(("Try again", request.rel_url.path_qs if request.method == "GET" else "/"))
    response = html.render(
        exc.title,
        exc.message,
        status=exc.status,
        actions=actions,
        request_id=the_id,
        # Only forward-auth shows browsers this page (the gate redirects them): move on to the login.
        refresh=exc.login_url if isinstance(exc, Unauthenticated) else None,
    )
    response.headers.update(headers)
    if isinstance(exc, Unauthenticated):
        # Where nginx's error_page location sends a browser (forward_auth); API clients get no redirect.
        response.headers[forward_auth.LOGIN_URL_HEADER] = exc.login_url
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The only middleware: a request id, the config pin, and turning errors into responses (``guarded``)."""
    return await guarded(request, handler, request.app[RUNTIME])


async def guarded(request: web.Request, handler: Any, runtime: Runtime) -> web.StreamResponse:
    """``error_middleware``'s work, for ``runtime``, the application's (``ConsoleDispatch`` has it at hand).

    The pin holds the active config's upstream pool open until the request's last byte
    (``Runtime.pin``); the handler starts, and reads ``runtime.active``, in the same step as the pin,
    so both see the same config. (One middleware, not two: each layer costs every request.)
    """
    offered = request.headers.get("X-Request-Id")
    # A front proxy's request id is kept (and passed to the console), so one id follows the request
    # through every hop's logs; anything that is not a plain token is replaced, never logged.
    # Into the request's dict directly: Request.__setitem__ (a Python call) only adds a check of the key's type.
    request._state[LOG] = entry = RequestLog(
        offered if offered is not None and _REQUEST_ID.match(offered) else _next_request_id()
    )
    upstream = runtime.pin()
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except SidecarError as exc:
        # Someone who simply has not signed in yet is routine (INFO); refusals are worth a look (WARNING).
        anonymous = type(exc) is Unauthenticated
        level = logging.INFO if anonymous else logging.WARNING if exc.status < 500 else logging.ERROR
        if anonymous:
            entry.route = "unauthenticated"
        log.log(level, "%s %s -> %d %s: %s [%s]", request.method, request.path, exc.status, exc.code,
                exc.message, entry.id)  # fmt: skip
        return render_error(request, exc)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s [%s]", request.method, request.path, entry.id)
        return render_error(request, SidecarError("An unexpected error occurred."))
    finally:
        runtime.unpin(upstream)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:+/=-]{1,128}$")


class _RequestIds:
    """Request ids for log correlation without a random read (or a getpid) per request: a random
    per-process prefix, drawn again in a forked worker so workers differ, and a counter."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix, self._count = secrets.token_hex(3), itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFFFFFFFF:010x}"


_next_request_id = _RequestIds()


async def not_found(request: web.Request) -> web.StreamResponse:
    raise NotFound("The sidecar has no page at this address.")


WORKER: web.AppKey[int] = web.AppKey("worker", int)


async def _probe_provider(runtime: Runtime) -> None:
    """At startup, ask the issuer once, so a provider that is unreachable or misconfigured is said loudly
    now rather than at the first sign-in. The sidecar stays ready: signed-in users keep working, and
    ``/oauth2/status`` shows the discovery status."""
    oidc = runtime.active.oidc
    if oidc is None:
        return
    issuer = oidc.settings.issuer_url
    try:
        await oidc.metadata()
        keys = await oidc.jwks.keys()
    except SidecarError as exc:
        log.warning("the issuer %s cannot be used right now: %s. Signed-in users keep working; sign-ins fail "
                    "until it answers (see /oauth2/status)", issuer, exc.message)  # fmt: skip
        return
    if not keys:
        log.warning("the issuer %s publishes no usable signing key: sign-ins will fail", issuer)
        return
    log.info("the issuer %s answers: discovery and %d signing key(s) read", issuer, len(keys))


async def _no_server_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """aiohttp adds ``Server: Python/3.x aiohttp/3.y`` where nobody set one: a version list for scanners.
    The console's own Server header, if it sends one, passes. (Relayed answers do the same themselves, without
    this signal: ``upstream.relay._ExactHead``. Another receiver added here would not see them.)"""
    if response.headers.get("Server") == SERVER_SOFTWARE:
        del response.headers["Server"]


class ConsoleDispatch:
    """The server's handler: a request for the console goes to the gate with no walk through the router and no
    middleware chain; every other request is the application's (``usual``).

    The router picks the console's catch-all for every path whose first segment begins none of the sidecar's
    own routes: it tries the path and each shorter prefix at a "/", and every own route begins with one of
    those segments. For such a path this asks the catch-all alone, as the router's walk ends by doing, and runs
    ``error_middleware`` around the gate: the same match info, middleware and handler, without aiohttp's
    generic dispatch (a few per cent of every proxied request's CPU). A request with ``Expect`` goes the usual
    way (the application answers 100-continue), and so does everything while an own route's first segment is a
    pattern, which only the router can read.
    """

    def __init__(self, app: web.Application, console: web.AbstractResource) -> None:
        self._app = app
        self._console = console
        self._usual = app._handle
        (self._route,) = console  # the catch-all's one route, for every method
        self._own: frozenset[str] | None = None  # read from the router at the first request: it is frozen then

    def _own_segments(self) -> frozenset[str]:
        segments = set()
        for each in self._app.router.resources():
            if each is self._console:
                continue
            canonical = each.canonical
            first = canonical.split("/", 2)[1] if canonical.startswith("/") else "{"
            segments.add("{" if "{" in first else first)
        return frozenset(segments)

    def direct(self, request: web.BaseRequest) -> bool:
        """Whether the router would give ``request`` to the console's catch-all, read from its path alone."""
        return self._direct_path(request) is not None

    def _direct_path(self, request: web.BaseRequest) -> str | None:
        """``request``'s path where ``direct``, else None (the path read once for both)."""
        own = self._own
        if own is None:
            own = self._own = self._own_segments()
        path = request.rel_url.path_safe
        if path[:1] == "/" and "{" not in own and path.split("/", 2)[1] not in own and "Expect" not in request.headers:
            return path
        return None

    async def match(self, request: web.Request) -> UrlMappingMatchInfo | None:
        """The catch-all's match info for ``request``, as its ``resolve`` makes it: ``{"tail": path}`` for the route.
        Made here for the usual path (``_made``), else by the resource itself."""
        path = request.rel_url.path_safe
        if "%" in path or "\n" in path:
            match_info = (await self._console.resolve(request))[0]
            if match_info is not None:
                match_info.add_app(self._app)
                match_info.freeze()
            return match_info
        return self._made(path)

    def _made(self, path: str) -> UrlMappingMatchInfo:
        """The match info the catch-all's ``resolve`` makes for ``path``, one without "%" (which the resource would
        unquote) or a line break (which its ``.*`` does not match)."""
        match_info = UrlMappingMatchInfo({"tail": path[1:]}, self._route)
        match_info.add_app(self._app)
        match_info.freeze()
        return match_info

    def __call__(self, request: web.Request) -> Awaitable[web.StreamResponse]:
        # Not a coroutine itself: it hands the server the coroutine that answers (the server awaits whatever the
        # handler returns), so the request's every resumption passes one frame fewer.
        path = self._direct_path(request)
        if path is None:
            return self._usual(request)
        if "%" in path or "\n" in path:
            return self._resolved(request)
        request._match_info = self._made(path)
        return guarded(request, gate.handle, self._app[RUNTIME])

    async def _resolved(self, request: web.Request) -> web.StreamResponse:
        match_info = await self.match(request)
        if match_info is None:  # a path the catch-all's pattern refuses (a line break): the router's 404
            return await self._usual(request)
        request._match_info = match_info
        return await guarded(request, gate.handle, self._app[RUNTIME])


DISPATCH: web.AppKey[ConsoleDispatch] = web.AppKey("dispatch", ConsoleDispatch)


def create_app(settings: Settings, *, worker: int = 0) -> web.Application:
    """The sidecar for ``settings``; ``worker`` is this process's index when ``workers`` > 1."""
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=64 * 1024,  # only the sidecar's own forms are read whole; proxied bodies stream
        # Consoles and identity providers set large cookies; aiohttp's default stops at 8190 bytes.
        # Request bodies pass byte-exact: decompressed, a gzip body would reach the console longer than the
        # Content-Length sent with it, and the rest would be read as another request (smuggling).
        handler_args={"max_line_size": 16384, "max_field_size": 32768, "auto_decompress": False},
    )
    app[WORKER] = worker
    app.on_response_prepare.append(_no_server_header)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=settings.sso.http_timeout)
        async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
            runtime = Runtime(settings, open_store(settings.session), http)
            await runtime.start(settings)
            await runtime.sessions.start()
            app[RUNTIME] = runtime
            page = PageSync(runtime, open_page_store(settings, runtime), settings.source)
            runtime.source.stack(page)  # the page's layer over the config file: every reload reads through it
            if settings.admin.enabled:
                await page.start()
            page_task = asyncio.get_running_loop().create_task(page.run())
            probe = asyncio.get_running_loop().create_task(_probe_provider(runtime))
            try:
                yield
            finally:
                for task in (page_task, probe):
                    task.cancel()
                await asyncio.gather(page_task, probe, return_exceptions=True)
                await runtime.sessions.stop()
                await runtime.close()

    app.cleanup_ctx.append(resources)
    # Changing metrics_listen needs a restart, so it is read once here. With several workers only the
    # first binds it (the others' counters are not merged: see README, Metrics).
    if settings.metrics_listen is not None and worker == 0:
        host, port = settings.metrics_listen
        app.cleanup_ctx.append(lambda app: metrics.serve(lambda: app[RUNTIME].metrics, host, port))
    health.add_routes(app)
    app[bearer.VERIFIERS] = bearer.BearerVerifiers()
    login.add_routes(app)
    login.register_purpose(app, login.STEP_UP, stepup.finish)  # a step-up sign-in upgrades the session
    forward_auth.add_routes(app)
    breakglass.add_routes(app)
    status.add_routes(app)
    jwks.add_routes(app)
    resource.add_routes(app)
    admin.add_routes(app, settings)
    app.router.add_post(BACKCHANNEL_LOGOUT_PATH, backchannel.backchannel_logout)
    # Routes of the sidecar's own go above this line: /oauth2/ is ours, an unknown path there is a 404
    # rather than a request for the console.
    app.router.add_route("*", "/oauth2/{tail:.*}", not_found)
    console = app.router.add_route("*", "/{tail:.*}", gate.handle).resource
    assert console is not None
    app[DISPATCH] = dispatch = ConsoleDispatch(app, console)
    object.__setattr__(app, "_handle", dispatch)  # what the runner hands the server (Application._make_handler)
    # Each new connection's request loop (``server_loop``), read from the config in force when it opens.
    server.serve_with(app, lambda: app[RUNTIME].active.settings.server_loop if RUNTIME in app else settings.server_loop)
    return app
