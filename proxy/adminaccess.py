"""Who may use the SSO settings page, and the checks every one of its forms passes.

- a signed-in admin (``admin.emails``, ``admin.groups``) for everything;
- a break-glass holder (cookie or header) for the first setup while SSO is off, and only to Disable while
  it is on: the emergency key must not become a way to point SSO at a provider of one's choosing, which
  would sign anyone in as anyone;
- a signed-in non-admin gets 403; a browser without credentials signs in (SSO on) or is sent to the
  break-glass form, which comes back to the page (SSO off).

Every form is bound to its holder by a signed token (``CookieCodec.form_token``) and refused from a
foreign origin. Every change is logged at WARNING and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from proxy import breakglass
from proxy.errors import Forbidden, NotFound, SidecarError, StoreUnavailable
from proxy.login import begin_login
from proxy.pagerecord import PageRecord, RecordError
from proxy.pagesync import PageSync
from proxy.policy import is_admin
from proxy.runtime import Active, Runtime
from proxy.sessions import session_for

log = logging.getLogger("sso_sidecar.admin")

PATH = "/oauth2/admin"


@dataclass(frozen=True)
class Actor:
    name: str  # for the history and the logs
    holder: str  # what the form token is bound to
    break_glass: bool


class Refused(SidecarError):
    """An action the page refuses, shown on the page next to what caused it."""

    status = 409
    code = "refused"
    title = "Not possible"


async def actor(request: web.Request, runtime: Runtime, active: Active) -> Actor | web.StreamResponse:
    """Who is asking; for a browser without credentials, where it should go instead (a sign-in, or the
    break-glass form while SSO is off)."""
    settings = active.settings
    if not settings.admin.enabled:
        raise NotFound("The SSO settings page is not enabled (admin.enabled).")
    signed_in_non_admin = False
    if active.oidc is not None and runtime.closed is None:
        session = await session_for(request, runtime, active)
        if session is not None:
            if is_admin(session.claims, settings.admin, settings.access.groups_claim):
                claims = session.claims
                name = str(claims.get("email") or claims.get("preferred_username") or claims.get("sub"))
                return Actor(name, f"session {session.id}", break_glass=False)
            signed_in_non_admin = True
    grant = breakglass.holder(request, runtime, active)
    if grant is not None:
        return Actor(f"break-glass from {request.remote or '-'}", grant, break_glass=True)
    if signed_in_non_admin:
        raise Forbidden("The SSO settings page is for admins (admin.emails, admin.groups).", code="not_admin")
    if active.oidc is not None and runtime.closed is None:
        return await begin_login(request, runtime, active, PATH)
    return web.HTTPFound("/oauth2/break-glass?rd=" + PATH)


def sso_on(active: Active) -> bool:
    return active.oidc is not None


async def form(request: web.Request, runtime: Runtime, active: Active) -> tuple[Actor, dict[str, str]]:
    """The actor and the fields of a settings-page POST, after the CSRF checks (403 otherwise)."""
    who = await actor(request, runtime, active)
    if not isinstance(who, Actor):
        raise Forbidden("Sign in, or use the break-glass form, before changing SSO settings.", code="no_credentials")
    if not same_origin(request, str(active.settings.public_url.origin())):
        raise Forbidden("This form was sent from another site.", code="cross_site")
    fields = await request.post()
    token = fields.get("csrf")
    if not isinstance(token, str) or not active.cookies.check_form_token(token, who.holder):
        raise Forbidden("This form was not sent from the settings page (its form token is missing or old).",
                        code="bad_form_token")  # fmt: skip
    return who, {k: v for k, v in fields.items() if isinstance(v, str)}


def same_origin(request: web.Request, public_origin: str) -> bool:
    """The browser's word that a POST comes from our own pages (Fetch Metadata, else Origin)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin == "null":
        return fetch_site is not None  # an opaque origin: only a browser's Fetch Metadata can vouch for it
    return origin is None or origin == public_origin


def only_admins_while_on(actor: Actor, active: Active, action: str) -> None:
    if actor.break_glass and sso_on(active):
        raise Forbidden(
            f"While SSO is enabled, break-glass access may only disable it; {action} needs a signed-in admin.",
            code="break_glass_limited",
        )


def page_sync(runtime: Runtime) -> PageSync:
    if runtime.page is None:
        raise StoreUnavailable("The SSO settings page has no store (admin.settings_file or Redis).")
    return runtime.page


async def stored_record(runtime: Runtime) -> tuple[PageRecord | None, str | None]:
    """The stored record, or None and why it cannot be shown."""
    try:
        return await page_sync(runtime).load(), None
    except RecordError as exc:
        return None, f"The stored page settings were refused: {exc}. The running config is kept."
    except StoreUnavailable as exc:
        return None, exc.message


def audit(runtime: Runtime, actor: Actor, action: str, result: str, what: str) -> None:
    runtime.metrics.admin_actions.labels(action, result).inc()
    log.warning("settings page: %s %s by %s: %s", action, result, actor.name, what)
