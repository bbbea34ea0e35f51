"""Where the settings page is: its path, its origin (``admin.public_url``'s, else the console's), and whether a
request reached it there. Below both ``access`` (who may use the page) and ``login`` (signing in to it)."""

from __future__ import annotations

from aiohttp import web

from proxy.auth import clientaddress
from proxy.runtime.state import Active

PATH = "/oauth2/admin"


def page_origin(active: Active) -> str:
    """The origin the page is served on: ``admin.public_url``'s, else the console's."""
    settings = active.settings
    return str((settings.admin.public_url or settings.public_url).origin())


def on_page_origin(request: web.Request, active: Active) -> bool:
    host = active.settings.admin.public_host
    return host is None or clientaddress.names_host(request, active.settings, host)
