"""``app.ConsoleDispatch``: a request goes straight to the gate only where aiohttp's router would have sent it there.

The shortcut reads the path's first segment; the router walks its index. For the sidecar's own routes (every one
the app has, the settings page's too), the console's ordinary paths, and paths made to look like the one while
the router reads them as the other (percent-encoded letters and slashes, dot segments, empty segments, case,
parameters), the two must agree: whatever goes direct is what the router gives the console's catch-all.
"""

from __future__ import annotations

import itertools
import secrets

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from yarl import URL

from proxy.app import DISPATCH, create_app
from proxy.config.load import parse_settings
from proxy.gate import handler as gate


def _app() -> web.Application:
    config = {
        "public_url": "http://127.0.0.1:4180",
        "upstream": "http://127.0.0.1:9",
        "sso": {"issuer_url": "http://127.0.0.1:9/realms/x", "client_id": "console", "client_secret": "unused"},
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
        "admin": {"enabled": True, "emails": ["admin@example.com"], "settings_file": "/nonexistent/page.json"},
        "break_glass": {"token": secrets.token_urlsafe(32)},
    }
    app = create_app(parse_settings(yaml.safe_dump(config), environ={}))
    app.freeze()
    return app


def _request(app: web.Application, path: str, headers: dict[str, str] | None = None) -> web.Request:
    """A request whose URL is built as aiohttp's parser builds an origin-form target's (encoded, as sent)."""
    request = make_mocked_request("GET", "/", headers=CIMultiDict(headers or {}), app=app)
    return request.clone(rel_url=URL.build(path=path, encoded=True))


async def _router_gives_console(app: web.Application, request: web.Request) -> bool:
    match_info = await app.router.resolve(request)
    return match_info.handler is gate.handle


def _own_paths(app: web.Application) -> list[str]:
    paths = []
    for resource in app.router.resources():
        canonical = resource.canonical
        if canonical == "/{tail}":
            continue
        paths.append(canonical.replace("{name}", "app.css").replace("{tail}", "anything"))
    return paths


CONSOLE = ["/", "/console", "/console/", "/console/oauth2/start", "/app/healthz", "/index.html", "/a/b/c?d"]
CRAFTED = [
    "/oauth2", "/oauth2/", "/oauth2/unknown", "/oauth2/start/", "/%6Fauth2/start", "/%6fauth2/status",
    "/oauth2%2Fstart", "/%2Foauth2/start", "//oauth2/start", "/./oauth2/start", "/x/../oauth2/start",
    "/%2E%2E/oauth2/start", "/OAUTH2/start", "/oauth2;x/start", "/;oauth2/start", "/oauth2%3B/start",
    "/healthz", "/healthz/", "/healthz/x", "/HEALTHZ", "/%68ealthz", "/readyz", "/readyz%2F",
    "/.well-known/oauth-protected-resource", "/.well-known/other", "/%2Ewell-known/oauth-protected-resource",
    "/oauth2/admin/static/app.css", "/oauth2/admin/static/", "/oauth2/backchannel-logout", "/%252Foauth2",
    "/oauth2%00/start", "/oauth2 /start", "/ oauth2/start",
]  # fmt: skip


async def test_what_goes_direct_is_what_the_router_gives_the_console() -> None:
    app = _app()
    dispatch = app[DISPATCH]
    own = _own_paths(app)
    assert "/oauth2/admin/sessions/revoke" in own and "/healthz" in own and "/oauth2/jwks.json" in own
    for path in [*own, *CONSOLE, *CRAFTED]:
        request = _request(app, path.partition("?")[0])
        console = await _router_gives_console(app, request)
        assert not dispatch.direct(request) or console, f"{path} went direct, but the router gives it to {path!r}"
        if path in own:
            assert not console and not dispatch.direct(request), path
    for path in CONSOLE:
        assert dispatch.direct(_request(app, path.partition("?")[0])), f"{path} should go straight to the gate"


async def test_paths_made_of_the_own_routes_pieces_agree_with_the_router() -> None:
    """Every path of up to three pieces from the own routes' segments and their disguises."""
    app = _app()
    dispatch = app[DISPATCH]
    pieces = ["oauth2", "%6Fauth2", "oauth2%2F", "healthz", "readyz", ".well-known", "admin", "static", "start",
              "oauth-protected-resource", "", ".", "..", "%2E", "x"]  # fmt: skip
    checked = direct = 0
    for count in (1, 2, 3):
        for combo in itertools.product(pieces, repeat=count):
            request = _request(app, "/" + "/".join(combo))
            if dispatch.direct(request):
                direct += 1
                assert await _router_gives_console(app, request), request.rel_url.raw_path
            checked += 1
    assert checked > 3000 and direct > 100  # the shortcut is taken, and checked, for many of them


@pytest.mark.parametrize("expect", ["100-continue", ""])
async def test_a_request_with_expect_goes_through_the_application(expect: str) -> None:
    app = _app()
    assert not app[DISPATCH].direct(_request(app, "/console", {"Expect": expect}))


async def test_the_server_is_handed_the_dispatch() -> None:
    app = _app()
    server = app._make_handler()
    assert server.request_handler is app[DISPATCH]


async def test_the_match_info_is_the_one_the_catch_all_makes() -> None:
    """The dispatch makes the catch-all's match info itself for the usual path: the same dict and route as the
    resource's own resolve gives, for plain paths and the ones it leaves to the resource (percent signs, a line
    break its ``.*`` refuses)."""
    app = _app()
    dispatch = app[DISPATCH]
    console = next(r for r in app.router.resources() if r.canonical == "/{tail}")
    for path in [*CONSOLE, *CRAFTED, "/a%2Fb", "/a%252Fb", "/%25", "/a%0Ab", "/a%0D%0Ab", "/caf%C3%A9", "/x/"]:
        request = _request(app, path.partition("?")[0])
        made = await dispatch.match(request)
        resolved, _ = await console.resolve(request)
        if resolved is None:
            assert made is None, path
            continue
        assert made is not None and dict(made) == dict(resolved) and made.route is resolved.route, path
