"""Who may use the SSO settings page, and the checks every one of its forms passes.

- a signed-in admin (``admin.emails``, ``admin.groups``) for everything. While the page has switched SSO
  off, the admin's own session (from the provider last enabled) still opens the page, so the admin who
  disabled SSO can turn it back on;
- a break-glass holder (cookie or header): never a way to set up a provider an admin did not. Once a
  provider was enabled (``PageRecord.pinned``), or while the config file names one, break-glass may only
  Disable, and while SSO is off Save, Test and Enable exactly that provider; only the very first setup
  (nothing pinned, the file's SSO off) is free. While SSO is on, break-glass may only Disable; while the
  page settings cannot be used (closed, unopenable, older, gone), it may also Forget;
- a signed-in non-admin gets 403; a browser without credentials signs in (SSO on) or is sent to the
  break-glass form, which comes back to the page (SSO off).

Every form is bound to its holder by a signed token (``CookieCodec.form_token``), refused from a foreign
origin and, where the browser says how it was sent (Fetch Metadata), unless a person clicked a button on
the page (``Sec-Fetch-Mode: navigate``, ``Sec-Fetch-User: ?1``): a script on the console's origin can read
the page, but not click. Every change is logged at WARNING and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.admin import sync
from proxy.admin.login import begin_page_login
from proxy.admin.origin import PATH, on_page_origin, page_origin
from proxy.admin.record import PageRecord, PageSSO, Pinned
from proxy.admin.sync import PageSync
from proxy.auth.policy import display_name, is_operator
from proxy.config.load import load_settings
from proxy.errors import BadRequest, ConfigError, Forbidden, NotFound, SidecarError, StoreUnavailable
from proxy.gate import breakglass
from proxy.runtime.state import Active, Runtime
from proxy.sessions import Session
from proxy.signin.current import session_for
from proxy.signin.login import begin_login

log = logging.getLogger("sso_sidecar.admin")

# Enable, Disable and Forget by a signed-in admin on the console's origin need a sign-in this recent: a
# script of the console's cannot make the admin type a password (see ``fresh``).
FRESH_SIGN_IN = 600.0


@dataclass(frozen=True)
class Actor:
    name: str  # for the history and the logs: a verified email, else the username, else the subject
    holder: str  # what the form token is bound to
    break_glass: bool
    sub: str = ""  # a signed-in admin's subject at ``issuer``
    issuer: str = ""
    signed_in_at: float | None = None  # the admin's last sign-in (auth_time), when known
    # A signed-in admin's identity, for the page's sample assertion (not part of who the actor is).
    claims: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """The name with the subject, for logs: an email or a username alone can be reassigned."""
        return f"{self.name} (sub {self.sub})" if self.sub and self.sub != self.name else self.name


class Refused(SidecarError):
    """An action the page refuses, shown on the page next to what caused it."""

    status = 409
    code = "refused"
    title = "Not possible"


async def actor(request: web.Request, runtime: Runtime, active: Active) -> Actor | web.StreamResponse:
    """Who is asking; for a browser without credentials, where it should go instead (a sign-in, or the
    break-glass form while SSO is off). On the console's origin while the page has one of its own: there."""
    settings = active.settings
    if not settings.admin.enabled:
        raise NotFound("The SSO settings page is not enabled (admin.enabled).")
    if not on_page_origin(request, active):
        if request.method != "GET":
            raise Forbidden(f"The SSO settings page is served at {page_origin(active)}{PATH}.", code="wrong_origin")
        return web.HTTPFound(page_origin(active) + request.rel_url.path_qs)
    signed_in_non_admin = False
    session = await _session(request, runtime, active)
    if session is not None:
        claims = session.claims
        if is_operator(claims, settings):
            auth_time = claims.get("auth_time")
            signed_in_at = float(auth_time) if isinstance(auth_time, int | float) else session.created_at
            return Actor(display_name(claims), f"session {session.id}", False, str(claims.get("sub", "")),
                         session.issuer, signed_in_at, claims)  # fmt: skip
        signed_in_non_admin = True
    grant = breakglass.holder(request, runtime, active)
    if grant is not None:
        return Actor(f"break-glass from {breakglass.client_address(request, settings)}", grant, break_glass=True)
    if signed_in_non_admin:
        raise Forbidden("The SSO settings page is for admins (admin.emails, admin.groups).", code="not_admin")
    if active.oidc is not None and runtime.closed is None:
        if settings.admin.public_url is not None:
            return await begin_page_login(request, runtime, active, PATH)  # the page origin's own redirect URI
        return await begin_login(request, runtime, active, PATH)
    return web.HTTPFound("/oauth2/break-glass?rd=" + PATH)


async def _session(request: web.Request, runtime: Runtime, active: Active) -> Session | None:
    """The caller's session: under the running provider, or, while the page has switched SSO off, under the
    provider it last enabled or the config file's (whichever the admin signed in with before the Disable).
    None while the process is closed (what the provider is cannot be confirmed)."""
    if runtime.closed is not None:
        return None
    if active.oidc is not None:
        return await session_for(request, runtime, active)
    ticket = active.cookies.decode_ticket(request.cookies.get(active.cookies.session_name))
    if ticket is None:
        return None
    for provider in _providers_before_disable(runtime, active):
        session = await runtime.sessions.load(ticket, issuer=provider.issuer_url, client_id=provider.client_id)
        if session is not None:
            return session
    return None


def _providers_before_disable(runtime: Runtime, active: Active) -> list[Pinned]:
    if active.settings.sso_source != "page":
        return []  # SSO is off by the config file itself: no page session to honour
    page = sync.of(runtime)
    pinned = page.pinned if page is not None else None
    found = [pinned] if pinned is not None else []
    try:
        file_sso = load_settings(active.settings.source).sso
    except ConfigError:
        return found
    if file_sso.enabled:
        found.append(Pinned(file_sso.issuer_url, file_sso.client_id))
    return found


def sso_on(active: Active) -> bool:
    return active.oidc is not None


async def form(request: web.Request, runtime: Runtime, active: Active) -> tuple[Actor, dict[str, str]]:
    """The actor and the fields of a settings-page POST, after the CSRF checks (403 otherwise)."""
    who = await actor(request, runtime, active)
    if not isinstance(who, Actor):
        raise Forbidden("Sign in, or use the break-glass form, before changing SSO settings.", code="no_credentials")
    if not same_origin(request, page_origin(active)):
        raise Forbidden("This form was sent from another site.", code="cross_site")
    if not clicked(request):
        raise Forbidden(
            "This form must be sent by clicking its button on the settings page (the browser says it was not).",
            code="not_clicked",
        )
    try:
        fields = await request.post()
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form could not be read (it is not UTF-8 form data).") from None
    token = fields.get("csrf")
    if not isinstance(token, str) or not active.cookies.check_form_token(token, who.holder):
        raise Forbidden("This form was not sent from the settings page (its form token is missing or old).",
                        code="bad_form_token")  # fmt: skip
    return who, {k: v for k, v in fields.items() if isinstance(v, str)}


async def setup_form(
    request: web.Request, runtime: Runtime, active: Active, action: str
) -> tuple[Actor, dict[str, str]]:
    """``form``, for a form that sets a provider up (Save, Register, Test login, Enable): break-glass may not while
    SSO is on (``break_glass_may_set_up``; ``action`` names the form in the refusal)."""
    who, fields = await form(request, runtime, active)
    break_glass_may_set_up(who, active, action)
    return who, fields


def same_origin(request: web.Request, page_origin: str) -> bool:
    """The browser's word that a POST comes from our own pages (Fetch Metadata, else Origin)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin == "null":
        return fetch_site is not None  # an opaque origin: only a browser's Fetch Metadata can vouch for it
    return origin is None or origin == page_origin


def navigated(request: web.Request) -> bool:
    """Where the browser sends Fetch Metadata: the page is being opened as a document (typed, a link), not
    read by a script's ``fetch()``, which must not get its form token."""
    mode, dest = request.headers.get("Sec-Fetch-Mode"), request.headers.get("Sec-Fetch-Dest")
    return mode in (None, "navigate") and dest in (None, "document")


def clicked(request: web.Request) -> bool:
    """Where the browser sends Fetch Metadata: a navigation a person started (a button clicked), not a
    ``fetch()`` or a script's own ``form.submit()`` (which browsers send without ``Sec-Fetch-User``)."""
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is None:
        return True  # an older browser, or a script outside any browser: the form token and Origin decide
    return mode == "navigate" and request.headers.get("Sec-Fetch-User") == "?1"


# -- what break-glass may do --------------------------------------------------------------------------------


def unusable(runtime: Runtime, problem: str | None) -> bool:
    """The page settings cannot be used here: break-glass may then also Forget (the way out)."""
    return runtime.closed is not None or problem is not None


def break_glass_may_forget(actor: Actor, active: Active, runtime: Runtime, problem: str | None) -> None:
    if actor.break_glass and sso_on(active) and not unusable(runtime, problem):
        raise Forbidden(
            "While SSO is enabled, break-glass access may only disable it; forgetting the page settings needs a "
            "signed-in admin.",
            code="break_glass_limited",
        )


def break_glass_may_set_up(actor: Actor, active: Active, action: str) -> None:
    if actor.break_glass and sso_on(active):
        raise Forbidden(
            f"While SSO is enabled, break-glass access may only disable it; {action} needs a signed-in admin.",
            code="break_glass_limited",
        )


def allowed_providers(pinned: Pinned | None, file_sso: PageSSO | None) -> list[Pinned]:
    """The providers break-glass may set up: the one last enabled and the config file's; none listed means
    the very first setup, where any is allowed."""
    found = [pinned] if pinned is not None else []
    if file_sso is not None:
        found.append(Pinned(file_sso.issuer_url, file_sso.client_id))
    return found


def break_glass_may_use(actor: Actor, sso: PageSSO, allowed: list[Pinned], action: str) -> None:
    """Break-glass may set up no provider an admin (or the config file) did not: 403 otherwise."""
    if not actor.break_glass or not allowed or any(p.allows(sso) for p in allowed):
        return
    names = " or ".join(f"{p.issuer_url} (client {p.client_id})" for p in allowed)
    raise Forbidden(
        f"Break-glass access may not {action} another provider than the one an admin enabled or the config file "
        f"names ({names}): a signed-in admin must do that.",
        code="break_glass_limited",
    )


# -- a recent sign-in ----------------------------------------------------------------------------------------


class SignInAgain(SidecarError):
    """A change that needs a more recent sign-in (``fresh``): the page's handlers show ``html.sign_in_again``
    instead (403, nothing changed)."""

    status = 403
    code = "sign_in_again"
    title = "Sign in again"

    def __init__(self, action: str, *, sso_on: bool) -> None:
        super().__init__(
            f"To {action}, your sign-in must be at most {FRESH_SIGN_IN / 60:.0f} minutes old: sign in again."
        )
        self.action = action
        self.sso_on = sso_on


def require_fresh(actor: Actor, record: PageRecord | None, active: Active, action: str) -> None:
    """``SignInAgain`` unless ``actor`` signed in recently enough (``fresh``) to ``action``."""
    if not fresh(actor, record, active):
        raise SignInAgain(action, sso_on=sso_on(active))


def fresh(actor: Actor, record: PageRecord | None, active: Active, now: float | None = None) -> bool:
    """Whether ``actor`` signed in recently enough for Enable, Disable and Forget.

    On the page's own origin (``admin.public_url``) no script of the console's can reach it: any session is
    enough. On the console's origin the admin must have signed in within ``FRESH_SIGN_IN`` (the ID token's
    ``auth_time``), or have just run Test login as themself (same issuer and subject, ``prompt=login``).
    Break-glass holds no session: its forms rely on the token, the origin and Fetch Metadata checks."""
    if actor.break_glass or active.settings.admin.public_url is not None:
        return True
    now = time.time() if now is None else now
    if actor.signed_in_at is not None and now - actor.signed_in_at <= FRESH_SIGN_IN:
        return True
    test = record.test if record is not None else None
    return (
        test is not None
        and test.ok
        and bool(test.sub)
        and (test.issuer, test.sub) == (actor.issuer, actor.sub)
        and now - test.at <= FRESH_SIGN_IN
    )


def page_sync(runtime: Runtime) -> PageSync:
    page = sync.of(runtime)
    if page is None:
        raise StoreUnavailable("The SSO settings page has no store (admin.settings_file or Redis).")
    return page


async def stored_record(runtime: Runtime) -> tuple[PageRecord | None, str | None]:
    """The record to show, and why the stored one cannot be used, if it cannot."""
    try:
        record, problem = await page_sync(runtime).view()
    except StoreUnavailable as exc:
        return None, exc.message
    except SidecarError as exc:
        return None, exc.message
    return record, problem


def audit(runtime: Runtime, actor: Actor, action: str, result: str, what: str) -> None:
    runtime.metrics.admin_actions.labels(action, result).inc()
    log.warning("settings page: %s %s by %s: %s", action, result, actor.label, what)
