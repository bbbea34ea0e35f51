"""The settings page's read-only view of who may reach which paths: the access rules, then the routes.

Both come from the config file (``access:``, ``routes:``); the page edits neither. The table is the one
``sso-sidecar check`` prints and ``/oauth2/status`` lists (``proxy.auth.routes.table``), in the order a request
is matched: the first route that matches wins, and a path no route matches gets the access rules.
"""

from __future__ import annotations

from html import escape
from typing import Any

from proxy.auth import routes
from proxy.config.model import Settings


def section(settings: Settings) -> str:
    rows = routes.table(settings.routes, settings.access)
    top = rows[-1]
    if not settings.routes:
        table = '<p class="muted">No routes: the access rules apply to every path.</p>'
    else:
        body = "".join(_row(row) for row in rows[:-1])
        table = (
            '<table class="grid" aria-labelledby="routes-h"><thead><tr><th scope="col">Route</th>'
            '<th scope="col">Path (regex)</th><th scope="col">Methods</th><th scope="col">Who may pass</th>'
            '<th scope="col">Sign-in</th></tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )
    return (
        '<section class="card" aria-labelledby="access-h"><h2 id="access-h">Access rules</h2>'
        f'<dl class="facts"><dt>Who may pass</dt><dd>{escape(top["access"])}</dd></dl>'
        '<h3 id="routes-h">Routes</h3>'
        f"{table}"
        '<p class="hint">From the config file (<code>access</code>, <code>routes</code>); this page does not change '
        "them. The first route whose path and methods match a request decides it; a path no route matches gets "
        "the access rules above.</p></section>"
    )


def _row(row: dict[str, Any]) -> str:
    methods = ", ".join(row["methods"]) if row["methods"] else "any"
    return (
        f"<tr><td>{escape(row['route'])}</td><td><code>{escape(row['path'])}</code></td>"
        f"<td>{escape(methods)}</td><td>{escape(row['access'])}</td><td>{escape(routes.sign_in_words(row))}</td></tr>"
    )
