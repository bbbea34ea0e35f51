"""The few HTML pages the sidecar shows itself: errors, sign-out confirmation, signed out.

Every value is escaped; pages carry no script, forbid framing and are never cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from aiohttp import web

_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f5f6f8;color:#1d2330;margin:0}
main{max-width:34rem;margin:12vh auto;background:#fff;border-radius:10px;padding:2rem 2.25rem;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{font-size:1.35rem;margin:0 0 .75rem}
p{line-height:1.5}
.actions{margin-top:1.5rem;display:flex;gap:.75rem;flex-wrap:wrap}
a.button,button{background:#2456d6;color:#fff;border:0;border-radius:6px;padding:.6rem 1.1rem;font-size:1rem;
text-decoration:none;cursor:pointer}
a.secondary{background:#e7eaf0;color:#1d2330}
small{color:#6a7282}
input{box-sizing:border-box;max-width:100%}
p.error{color:#b42318;background:#fef3f2;border:1px solid #fecdca;border-radius:6px;padding:.6rem .8rem}
"""


def render(
    title: str,
    message: str,
    *,
    status: int = 200,
    actions: Sequence[tuple[str, str]] = (),
    form: str = "",
    request_id: str | None = None,
    refresh: str | None = None,
    error: bool = False,
) -> web.Response:
    """``error``: the message says what went wrong with what the user sent (shown, and announced, as an error)."""
    links = "".join(
        f'<a class="button{" secondary" if i else ""}" href="{escape(href)}">{escape(label)}</a>'
        for i, (label, href) in enumerate(actions)
    )
    reference = f"<p><small>Reference: {escape(request_id)}</small></p>" if request_id else ""
    # A same-site relative URL to go on to at once (no script needed, so the CSP stays script-free).
    meta = f'<meta http-equiv="refresh" content="0;url={escape(refresh)}">' if refresh else ""
    paragraph = f'<p class="error" role="alert">{escape(message)}</p>' if error else f"<p>{escape(message)}</p>"
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{meta}<title>{escape(title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>{escape(title)}</h1>{paragraph}{form}"
        f'<div class="actions">{links}</div>{reference}</main></body></html>'
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=PAGE_HEADERS)


def sign_out_form(token: str, rd: str) -> str:
    """A form that completes a sign-out that was not clearly asked for by this site (a cross-site link)."""
    return (
        '<form method="post" action="/oauth2/sign_out">'
        f'<input type="hidden" name="token" value="{escape(token)}">'
        f'<input type="hidden" name="rd" value="{escape(rd)}">'
        '<div class="actions"><button type="submit">Sign out</button>'
        '<a class="button secondary" href="/">Cancel</a></div></form>'
    )
