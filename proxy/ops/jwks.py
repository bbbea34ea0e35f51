"""``GET /oauth2/jwks.json``: the public keys the console verifies the signed assertion with (``assertion:``).

Served here, beside the status and health documents, rather than by sign-in: it is a public document about the
running config that needs no session and no provider, answers the same on every replica (``auth.assertion``), and
is read by consoles and their libraries (Grafana's ``jwk_set_url``), never by browsers signing in.

Every published key has its ``kid``; an HS256 secret is never published (the set is empty). ``Cache-Control:
max-age`` is a minute, so a console that caches the set sees a rotated key within a minute (one that fetches again
for an unknown ``kid`` at once), and an ``ETag`` lets it ask cheaply. 404 while the assertion is off.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from proxy.config.model import JWKS_PATH
from proxy.errors import NotFound
from proxy.runtime.state import RUNTIME

PATH = JWKS_PATH
MAX_AGE = 60


async def jwks(request: web.Request) -> web.StreamResponse:
    console = request.app[RUNTIME].active.console
    keyring = console.keyring if console is not None else None
    if keyring is None:
        raise NotFound("No signed assertion is configured (assertion:), so there are no keys to publish.")
    body = keyring.jwks_body
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": f"public, max-age={MAX_AGE}", "ETag": etag}
    if etag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, jwks)
