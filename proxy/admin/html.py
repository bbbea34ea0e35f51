"""The settings page's HTML frame, and its smaller pages: the Test login result and the Disable confirmation.

Plain server-rendered HTML that works without JavaScript; ``static/admin.js`` only adds the Copy button's
clipboard and the preset filling. No inline script or style (the CSP forbids both), every value escaped,
every input with its own label, errors tied to their field and announced.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from aiohttp import web
from yarl import URL

from proxy.admin.record import BRIEF_CLAIMS, Draft, TestResult

_ASSETS = "/oauth2/admin/static"


def origin_of(url: str) -> str:
    return str(URL(url).origin())


def headers(form_targets: Sequence[str] = ()) -> dict[str, str]:
    form_action = " ".join(["'self'", *form_targets])
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # same-origin, not no-referrer: with no-referrer, browsers send "Origin: null" on the page's own forms.
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        # A console page that opens this one with window.open() gets no handle on it (a browsing context
        # group of its own), so a script there cannot read the form token or click a button in it.
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def when(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return f'<time datetime="{moment.isoformat(timespec="seconds")}">{moment:%Y-%m-%d %H:%M:%S} UTC</time>'


def document(title: str, body: str, *, status: int = 200, form_targets: Sequence[str] = ()) -> web.Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title>"
        f'<link rel="stylesheet" href="{_ASSETS}/admin.css">'
        f'<script src="{_ASSETS}/admin.js" defer></script></head><body>'
        '<header class="top"><span class="brand">sso-sidecar</span>'
        '<span class="top-title">Single sign-on</span></header>'
        f'<main id="main">{body}</main></body></html>'
    )
    return web.Response(status=status, text=html, content_type="text/html", headers=headers(form_targets))


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{name}" value="{escape(value)}">'


def post_form(action: str, csrf: str, button: str, *, extra: str = "", css: str = "", target: str = "") -> str:
    target_attr = f' target="{target}"' if target else ""
    css_attr = f' class="{css}"' if css else ""
    return (
        f'<form method="post" action="/oauth2/admin/{action}"{target_attr}>{hidden("csrf", csrf)}{extra}'
        f'<button type="submit"{css_attr}>{escape(button)}</button></form>'
    )


def confirm_disable(csrf: str) -> web.Response:
    body = (
        '<section class="card" aria-labelledby="confirm-h"><h1 id="confirm-h">Disable SSO?</h1>'
        "<p>Every replica stops asking for a sign-in within a few seconds: requests reach the console without "
        "identity headers, and its own login takes over.</p>"
        '<div class="actions">'
        + post_form("disable", csrf, "Disable SSO", extra=hidden("confirm", "yes"), css="danger")
        + '<a class="button secondary" href="/oauth2/admin">Cancel</a></div></section>'
    )
    return document("Disable SSO?", body)


def confirm_forget(csrf: str, afterwards: str) -> web.Response:
    body = (
        '<section class="card" aria-labelledby="confirm-h"><h1 id="confirm-h">Forget page settings?</h1>'
        "<p>The draft and what this page applied are dropped, on every replica within a few seconds. The "
        "config file's <code>sso:</code> section is then in force:</p>"
        f'<p class="notice" role="status"><strong>{escape(afterwards)}</strong></p>'
        '<div class="actions">'
        + post_form("forget", csrf, "Forget page settings", extra=hidden("confirm", "yes"), css="danger")
        + '<a class="button secondary" href="/oauth2/admin">Cancel</a></div></section>'
    )
    return document("Forget page settings?", body)


def sign_in_again(action: str, *, sso_on: bool) -> web.Response:
    """What an admin whose sign-in is not recent enough sees instead of the change (403: nothing changed)."""
    how = (
        '<div class="actions"><a class="button" href="/oauth2/admin/reauth">Sign in again</a>'
        '<a class="button secondary" href="/oauth2/admin">Back to the settings page</a></div>'
        if sso_on
        else "<p>SSO is off, so run <strong>Test login</strong> as yourself on the settings page first (it "
        'always asks for a fresh sign-in), then try again.</p><div class="actions"><a class="button secondary" '
        'href="/oauth2/admin">Back to the settings page</a></div>'
    )
    body = (
        '<section class="card" aria-labelledby="again-h"><h1 id="again-h">Sign in again to continue</h1>'
        f"<p>To {escape(action)}, your sign-in must be at most 10 minutes old: nothing was changed. This keeps a "
        "script on the console's pages, which can read this page, from making the change for you.</p>"
        f"{how}</section>"
    )
    return document("Sign in again", body, status=403)


def test_state(test: TestResult) -> str:
    """The Test login row: outcome, when, by whom, as whom (shared with the result window, which tells this page)."""
    outcome = "succeeded" if test.ok else "failed"
    return (
        f"{outcome.capitalize()} {when(test.at)}, run by {escape(test.by)}"
        + (f", signed in as {escape(test.user)}" if test.user else "")
        + (f". {escape(test.error)}" if test.error else ".")
    )


def verdict(test: TestResult, required: Sequence[str], draft: Draft) -> str:
    """The Result row (shared with the result window, which tells this page)."""
    if not test.ok:
        return "The test login failed, so there is nothing to enable yet: see why above, then run it again."
    missing = [c for c in required if not test.claims.get(c)]
    parts = [
        "passes the access rules"
        if test.passes_access
        else f"does not pass the access rules ({escape(test.access_reason or '')})",
        "is an admin"
        if test.is_admin
        else f"is not an admin ({escape(test.admin_reason or 'admin.emails, admin.groups')})",
    ]
    if missing:
        parts.append("missing claims: " + ", ".join(f"<code>{escape(c)}</code>" for c in missing))
    reason = test.enables(draft, required)
    ready = "Ready to enable." if reason is None else f"Not ready to enable: {escape(reason)}."
    return f"The test user {'; '.join(parts)}. <strong>{ready}</strong>"


def test_result(result: TestResult, required: Sequence[str], draft: Draft | None) -> web.Response:
    title = "Test login succeeded" if result.ok else "Test login failed"
    parts = [f'<section class="card" aria-labelledby="result-h"><h1 id="result-h">{title}</h1>']
    if result.error:
        parts.append(f'<div class="alert" role="alert">{escape(result.error)}</div>')
    if result.user:
        parts.append(f"<p>Signed in at the provider as <strong>{escape(result.user)}</strong>.</p>")
    if result.claims:
        rows = "".join(
            f"<tr><td><code>{escape(c)}</code></td><td>"
            + (escape(v) if (v := result.claims.get(c)) else '<strong class="missing">missing</strong>')
            + "</td></tr>"
            for c in BRIEF_CLAIMS
        )
        parts.append(
            '<h2>Claims</h2><table class="grid"><thead><tr><th scope="col">Claim</th><th scope="col">Received</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
        headers = "".join(f"<tr><td><code>{escape(h)}</code></td><td>{escape(v)}</td></tr>" for h, v in result.headers)
        parts.append(
            '<h2>Headers the console would receive</h2><table class="grid"><thead><tr><th scope="col">Header</th>'
            f'<th scope="col">Value</th></tr></thead><tbody>{headers}</tbody></table>'
            if headers
            else "<h2>Headers the console would receive</h2><p>None.</p>"
        )
        access = "Yes" if result.passes_access else f"No: {escape(result.access_reason or '')}"
        admin = (
            "Yes" if result.is_admin else f"No: {escape(result.admin_reason or 'not in admin.emails or admin.groups')}"
        )
        parts.append(
            f'<dl class="facts"><dt>Passes the access rules</dt><dd>{access}</dd>'
            f"<dt>Admin under the draft</dt><dd>{admin}</dd></dl>"
        )
    if draft is not None and draft.digest == result.digest:
        # The settings page in the other window shows this at once (static/admin.js, BroadcastChannel): it reads
        # the text, never markup, so a message forged by another script of this origin can inject nothing.
        parts.append(
            f'<div id="test-outcome" hidden data-digest="{escape(draft.digest)}">'
            f'<span data-row="test-state">{test_state(result)}</span>'
            f'<span data-row="test-result">{verdict(result, required, draft)}</span></div>'
        )
        reason = result.enables(draft, required)
        next_step = (
            "You can now enable SSO on the settings page."
            if reason is None
            else f"Enable SSO is not possible yet: {reason}."
        )
        parts.append(f'<p class="{"notice" if reason is None else "warning"}" role="status">{escape(next_step)}</p>')
    parts.append(
        '<p class="hint">No session was created and the tokens were discarded. Close this window and return to '
        'the settings page.</p><div class="actions"><a class="button secondary" href="/oauth2/admin">'
        "Back to the settings page</a></div></section>"
    )
    return document(title, "".join(parts))
