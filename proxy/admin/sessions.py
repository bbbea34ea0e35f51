"""``/oauth2/admin/sessions``: see a user's sessions and revoke them, one or all, without rotating the cookie
secret (which signs everyone out).

For signed-in page admins only. Break-glass holders get 403: the token is a shared secret kept for when the
provider fails, and listing who is signed in from where, or signing users out, is neither lock-out protection
nor needed for it (while SSO is on, break-glass may only Disable; while it is off, there is nothing to revoke
that a Disable did not already make useless).

A session is found by its subject, username or email (``proxy.sessions.directory``). Revoking it deletes it from
the store and tells every worker and replica at once over the session invalidation channel, so it is refused
everywhere within a second; its ID tokens are refused from then on too where they are bearer credentials
(``sso.accept_id_tokens``): the provider session's (``sid``) for one session, all of the user's issued until now
for "Revoke all". Every form is checked like the settings page's (``access.form``: the form token, the origin,
a click), and every revocation is logged, counted and entered in the page's history.

With ``session.store: memory`` the sessions live in this process: the page says that the list and Revoke cover
it alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from html import escape
from typing import Any

from aiohttp import web
from yarl import URL

from proxy.admin import access, html, sync
from proxy.admin.access import Actor
from proxy.admin.origin import PATH as PAGE
from proxy.admin.record import PageRecord
from proxy.errors import BadRequest, Forbidden, SidecarError
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.sessions.directory import SessionFacts
from proxy.sessions.revocations import ID_TOKEN_MAX_LIFETIME

log = logging.getLogger("sso_sidecar.admin")

PATH = PAGE + "/sessions"
REVOKE = PATH + "/revoke"
_NAME_MAX = 256


def _admins_only(actor: Actor) -> None:
    if actor.break_glass:
        raise Forbidden(
            "Sessions are seen and revoked by signed-in admins only: break-glass access is for when the identity "
            "provider fails, and may not list who is signed in or sign anyone out.",
            code="break_glass_limited",
        )


def _name(value: str) -> str:
    name = value.strip()
    if len(name) > _NAME_MAX or any(not ch.isprintable() for ch in name):
        raise BadRequest("A user is named by a username, an email address or a subject (sub).")
    return name


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def local_only(runtime: Runtime) -> bool:
    """Sessions in this process's memory: a listing and a revocation cover this process alone."""
    return runtime.active.settings.session.store != "redis"


async def show(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    if not access.navigated(request):
        raise Forbidden("The sessions page is shown to a browser opening it, not to a script.", code="not_navigated")
    who = await access.actor(request, runtime, active)
    if not isinstance(who, Actor):
        return who
    _admins_only(who)
    name = _name(request.query.get("user", ""))
    found = await runtime.sessions.directory.find(name) if name else []
    own = who.holder.removeprefix("session ")
    if _wants_json(request):
        return web.json_response(_as_json(runtime, name, found, own), headers={"Cache-Control": "no-store"})
    revoked = request.query.get("revoked", "")
    notice = f"Revoked {revoked} session{'s' if revoked != '1' else ''}." if revoked.isdigit() else None
    return _page(runtime, active, who, name, found, own, notice)


def _as_json(runtime: Runtime, name: str, found: Sequence[SessionFacts], own: str) -> dict[str, Any]:
    directory = runtime.sessions.directory
    return {
        "user": name,
        "covers": "this process" if local_only(runtime) else "every replica",
        "sessions": [
            {
                "id": directory.handle(f.session_id),
                "sub": f.sub,
                "username": f.username,
                "email": f.email,
                "issuer": f.issuer,
                "signed_in_at": _iso(f.created_at),
                "last_used_at": _iso(f.last_used_at),
                "expires_at": _iso(f.ends_at),
                "client_address": f.address,
                "user_agent": f.user_agent,
                "current": f.session_id == own,
            }
            for f in found
        ],
    }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


async def revoke(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.form(request, runtime, active)
    _admins_only(actor)
    name = _name(form.get("user", ""))
    directory = runtime.sessions.directory
    found = await directory.find(name) if name else []
    every = form.get("all") == "yes"
    chosen = found if every else [f for f in found if directory.handle(f.session_id) == form.get("session")]
    ended = 0
    for facts in chosen:
        ended += await runtime.sessions.revoke(facts)
    await _refuse_id_tokens(runtime, active, chosen, every=every)
    subjects = sorted({f.sub for f in chosen})
    what = f"{ended} session{'s' if ended != 1 else ''} of {name}" + (
        f" (sub {', '.join(subjects)})" if subjects else ""
    )
    what += " (all)" if every else ""
    access.audit(
        runtime, actor, "revoke", "ok" if chosen else "refused", what if chosen else f"no such session of {name}"
    )
    if chosen:
        await _history(runtime, actor, "revoked " + what)
    raise web.HTTPSeeOther(str(URL(PATH).with_query(user=name, revoked=str(ended))))


async def _refuse_id_tokens(runtime: Runtime, active: Active, chosen: Sequence[SessionFacts], *, every: bool) -> None:
    """Where ID tokens are bearer credentials, a revoked session's must stop working too, as at sign-out."""
    skew = active.settings.sso.clock_skew
    ttl = ID_TOKEN_MAX_LIFETIME + 2 * skew
    revocations = runtime.sessions.revocations
    if every:
        for issuer, sub in {(f.issuer, f.sub) for f in chosen if f.sub}:
            await revocations.revoke(issuer, sid=None, sub=sub, issued_before=time.time() + skew, ttl=ttl)
        return
    for facts in chosen:
        if facts.sid:
            await revocations.revoke(facts.issuer, sid=facts.sid, sub=None, issued_before=0.0, ttl=ttl)


async def _history(runtime: Runtime, actor: Actor, detail: str) -> None:
    """An entry in the page's history. The revocation has happened whatever this does: a history that cannot be
    written is logged (the audit line above has it), never a reason to keep a session alive."""
    page = sync.of(runtime)
    if page is None or page.store is None:
        return

    def edit(current: PageRecord) -> PageRecord:
        return current.with_entry(actor.name, "revoked", detail, sub=actor.sub)

    try:
        await page.change(edit)
    except SidecarError as exc:
        log.error("settings page: the revocation by %s is not in the page's history: %s", actor.label, exc.message)


# -- the page ----------------------------------------------------------------------------------------------


def _page(
    runtime: Runtime,
    active: Active,
    actor: Actor,
    name: str,
    found: Sequence[SessionFacts],
    own: str,
    notice: str | None,
) -> web.Response:
    csrf = active.cookies.form_token(actor.holder)
    scope = (
        '<div class="warning" role="note">Sessions are kept in this process\'s memory (<code>session.store: '
        "memory</code>): this list shows, and Revoke ends, the sessions of this process only.</div>"
        if local_only(runtime)
        else "<p>Sessions are kept in the shared session store: a revoked session is refused on every replica "
        "within a second.</p>"
    )
    search = (
        f'<form method="get" action="{PATH}" class="search"><div class="field"><label for="user">User</label>'
        f'<input id="user" name="user" type="text" value="{escape(name)}" autocomplete="off" spellcheck="false" '
        'aria-describedby="user-hint"><p id="user-hint" class="hint">A username, an email address or a subject '
        '(<code>sub</code>).</p></div><button type="submit" class="secondary">Show sessions</button></form>'
    )
    status = f'<div class="notice" role="status">{escape(notice)}</div>' if notice else ""
    parts = [
        '<section class="card" aria-labelledby="sessions-h"><h1 id="sessions-h">Sessions</h1>'
        f'<p><a href="{PAGE}">Back to the SSO settings</a></p>{scope}{search}{status}</section>'
    ]
    if name:
        parts.append(_listing(runtime, csrf, name, found, own))
    return html.document("Sessions", "".join(parts))


def _listing(runtime: Runtime, csrf: str, name: str, found: Sequence[SessionFacts], own: str) -> str:
    heading = f'<h2 id="list-h">Sessions of {escape(name)}</h2>'
    if not found:
        return f'<section class="card" aria-labelledby="list-h">{heading}<p>No live sessions.</p></section>'
    directory = runtime.sessions.directory
    user = html.hidden("user", name)
    running = runtime.active.settings.sso.issuer_url
    rows = []
    for f in found:
        mine = f.session_id == own
        notes = ('<br><strong class="own-mark">Your session</strong>' if mine else "") + (
            f'<br><span class="muted">at {escape(f.issuer)}</span>' if f.issuer != running else ""
        )
        button = _form(REVOKE, csrf, "Revoke", user + html.hidden("session", directory.handle(f.session_id)))
        rows.append(
            f"<tr{' class=own' if mine else ''}><td class=when>{_when(f.created_at)}{notes}</td>"
            f"<td class=when>{_when(f.last_used_at)}</td><td class=when>{_when(f.ends_at)}</td>"
            f"<td class=address><code>{escape(f.address or '—')}</code></td>"
            f"<td class=agent>{escape(f.user_agent or '—')}</td>"
            f"<td>{button}</td></tr>"
        )
    every = _form(REVOKE, csrf, "Revoke all", user + html.hidden("all", "yes"), css="danger")
    return (
        f'<section class="card" aria-labelledby="list-h">{heading}'
        '<table class="grid sessions"><thead><tr><th scope="col">Signed in</th>'
        '<th scope="col">Last used</th><th scope="col">Expires</th><th scope="col">Client address</th>'
        '<th scope="col">User agent</th><th scope="col"><span class="visually-hidden">Action</span></th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        f'<div class="actions">{every}</div>'
        '<p class="hint">Revoke ends the session here at once: its next request signs in again. It does not sign '
        "the user out at the identity provider, which may sign them in again without a password.</p></section>"
    )


def _when(timestamp: float | None) -> str:
    """A time in a narrow column: to the minute, in UTC (the JSON has the seconds)."""
    if timestamp is None:
        return "—"
    moment = time.gmtime(timestamp)
    return (
        f'<time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)}">{time.strftime("%Y-%m-%d", moment)}<br>'
        f'{time.strftime("%H:%M", moment)} <span class="muted">UTC</span></time>'
    )


def _form(action: str, csrf: str, button: str, extra: str, *, css: str = "secondary") -> str:
    return (
        f'<form method="post" action="{action}">{html.hidden("csrf", csrf)}{extra}'
        f'<button type="submit" class="{css}">{escape(button)}</button></form>'
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, show)
    app.router.add_post(REVOKE, revoke)
