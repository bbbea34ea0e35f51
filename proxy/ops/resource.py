"""``/.well-known/oauth-protected-resource``: OAuth 2.0 Protected Resource Metadata (RFC 9728).

A CLI, an agent or an MCP client that calls the console's API without a token gets 401 with
``WWW-Authenticate: Bearer resource_metadata="<public_url>/.well-known/oauth-protected-resource"``
(RFC 9728 5.1); the document there names the authorization servers whose tokens the sidecar accepts, so the
client can get one without being told where by a person.

The document is served while SSO is on and bearer tokens are accepted (``sso.api_audiences`` for the issuer,
or ``sso.extra_issuers``); otherwise the path is the console's, as before. Both the document and the
challenge parameter depend only on the config: they are built once per ``Settings`` and reused, so a 401
costs a comparison, and a proxied request nothing.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from proxy.auth.clientaddress import names_host
from proxy.config.model import Settings
from proxy.gate import handler as gate
from proxy.runtime.state import RUNTIME

PATH = "/.well-known/oauth-protected-resource"
_HEADERS = {
    "Content-Type": "application/json",
    "Cache-Control": "max-age=300",
    # Public metadata: a browser-based client on another origin (an MCP inspector, say) may read it.
    "Access-Control-Allow-Origin": "*",
    "X-Content-Type-Options": "nosniff",
}


class _Built:
    """What one config publishes: the document's bytes and the challenge's parameter, or None for both."""

    __slots__ = ("body", "parameter", "settings")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        document = metadata(settings)
        self.body = None if document is None else json.dumps(document, indent=2).encode()
        self.parameter = None if document is None else f'resource_metadata="{metadata_url(settings)}"'


_built: list[_Built] = []  # one entry: the config last asked about (a reload replaces it)


def _for(settings: Settings) -> _Built:
    built = _built[0] if _built else None
    if built is None or built.settings is not settings:
        built = _Built(settings)
        _built[:] = [built]
    return built


def resource(settings: Settings) -> str:
    """The resource identifier: ``public_url`` without its trailing slash (RFC 9728 1.2, 3.1)."""
    return str(settings.public_url.origin())


def metadata_url(settings: Settings) -> str:
    return resource(settings) + PATH


def metadata(settings: Settings) -> dict[str, Any] | None:
    """The RFC 9728 document for ``settings``, or None while it is not served (SSO off, no bearer tokens)."""
    sso = settings.sso
    servers = [sso.issuer_url] if sso.bearer_audiences else []
    servers += [extra.issuer_url for extra in sso.extra_issuers if extra.issuer_url not in servers]
    if not sso.enabled or not servers:
        return None
    return {
        "resource": resource(settings),
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],  # Authorization: Bearer only, never a query or form token
        "scopes_supported": list(sso.scopes),
    }


def with_metadata(challenge: str, settings: Settings) -> str:
    """A ``Bearer`` challenge with ``resource_metadata`` added, where the document is served."""
    parameter = _for(settings).parameter
    if parameter is None or not challenge.startswith("Bearer"):
        return challenge
    if challenge == "Bearer":
        return f"Bearer {parameter}"
    return f"{challenge}, {parameter}"


async def document(request: web.Request) -> web.StreamResponse:
    """The document; where it is not served (or on the settings page's own origin, or while this process
    does not proxy), the request is the console's, exactly as it was before this path existed."""
    runtime = request.app[RUNTIME]
    active = runtime.active
    body = _for(active.settings).body
    admin_host = active.admin_host is not None and names_host(request, active.settings, active.admin_host)
    if body is None or runtime.closed is not None or admin_host:
        return await gate.handle(request)  # 503 while closed, 404 on the page's origin, else the console's
    return web.Response(body=body, headers=_HEADERS)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, document)
