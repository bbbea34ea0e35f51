"""``/oauth2/admin``: the SSO settings page's handlers. Configure, test, then enable; lock-out made impossible.

Who may do what, and the form checks, are ``proxy.admin.access``'s; the HTML is ``adminpage``'s. Save validates the
draft as a reload would (discovery, issuer, JWKS, client credentials proven at the token endpoint) and
stores it; the running config does not change. Enable works only after a successful Test login of exactly
the current draft by an admin under it, and applies it through the reload's validated swap on every
replica (``proxy.admin.sync``). Disable and Forget build the config they would leave in force and refuse, with the
reason, one that could not load or whose provider does not answer: no click takes every replica down.
Every change is logged at WARNING, counted, and listed on the page.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from proxy.admin import access, html, login, pending, presets, registration, sessions, sync, trial, view
from proxy.admin.access import Actor, Refused
from proxy.admin.identity_view import identity_view
from proxy.admin.origin import PATH
from proxy.admin.record import Applied, Draft, PageRecord, PageSSO, Pinned, Registration
from proxy.admin.sync import PageSync, RecordUnusable
from proxy.config.load import load_settings
from proxy.config.model import DEFAULT_SCOPES, Settings
from proxy.errors import ConfigError, Forbidden, NotFound, SidecarError, StoreUnavailable
from proxy.oidc.client import ClientRejected, OIDCClient
from proxy.oidc.discovery import DocumentError
from proxy.oidc.http import ProviderUnreadable
from proxy.oidc.verify import verify_provider
from proxy.runtime.state import RUNTIME, Active, Runtime
from proxy.signin.login import register_purpose

log = logging.getLogger("sso_sidecar.admin")
FIELDS = ("issuer_url", "client_id", "client_secret", "scopes")
# Which page field a config problem belongs to.
_FIELD_OF_KEY = {
    "sso.issuer_url": "issuer_url",
    "sso.client_id": "client_id",
    "sso.client_secret": "client_secret",
    "sso.scopes": "scopes",
}
_STATIC = {"admin.css": "text/css", "admin.js": "text/javascript"}
# The Test login form's CSP needs the draft provider's origin: read once per draft, not at every view.
_ORIGIN_TTL, _ORIGIN_RETRY = 600.0, 30.0
_origins: dict[str, tuple[float, tuple[str, ...]]] = {}

_NO_ANSWER = (
    "The provider's token endpoint could not prove the client credentials: it did not answer as a token "
    "endpoint does (the log says more)."
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _shows_problems(handler: Handler) -> Handler:
    """A refusal, or page settings that cannot be used, end on the settings page with the reason and the way
    out, not on an error page that leaves the admin guessing; a sign-in too old for the change, on the page
    that says how to sign in again."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except access.SignInAgain as exc:
            return html.sign_in_again(exc.action, sso_on=exc.sso_on)
        except (RecordUnusable, Refused) as exc:
            runtime = request.app[RUNTIME]
            active = runtime.active
            who = await access.actor(request, runtime, active)
            if not isinstance(who, Actor):
                raise
            record, problem = await access.stored_record(runtime)
            general = exc.message if isinstance(exc, Refused) else None
            errors = {"general": general} if general else {}
            return await _render(request, runtime, active, who, record, problem or exc.message, errors=errors,
                                 status=exc.status)  # fmt: skip

    return wrapped


# -- the page --------------------------------------------------------------------------------------------


async def show(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    if not access.navigated(request):
        raise Forbidden("The settings page is shown to a browser opening it, not to a script.", code="not_navigated")
    who = await access.actor(request, runtime, active)
    if not isinstance(who, Actor):
        return who
    record, problem = await access.stored_record(runtime)
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    preset = request.query.get("preset")
    if preset:
        # The preset fields keep what was asked (a browser without scripts comes back here to fill the issuer).
        values.update({"preset": preset, "preset-name": request.query.get("name", ""),
                       "preset-server": request.query.get("server", "")})  # fmt: skip
        try:
            values["issuer_url"] = presets.issuer(preset, request.query, active.settings)
        except presets.PresetError as exc:
            errors["preset"] = str(exc)
    notice = _NOTICES.get(request.query.get("done", ""))
    return await _render(request, runtime, active, who, record, problem, values=values, errors=errors, notice=notice)


_NOTICES = {
    "saved": "Saved. The running config is unchanged: run Test login next.",
    "registered": (
        "Registered a new client at the provider and saved it as the draft (its secret is stored, never shown). "
        "The running config is unchanged: run Test login next."
    ),
    "enabled": "SSO is enabled. Every replica applies it within a few seconds.",
    "disabled": (
        "SSO is disabled. Every replica applies it within a few seconds. You can still use this page: to turn "
        "SSO back on, run Test login, then Enable SSO (or Forget page settings, for the config file's own)."
    ),
    "forgotten": "The page settings are forgotten: the config file is authoritative again.",
    "reauth": "You signed in again: Enable, Disable and Forget are open to you for the next few minutes.",
}


async def _render(
    request: web.Request,
    runtime: Runtime,
    active: Active,
    actor: Actor,
    record: PageRecord | None,
    problem: str | None,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    notice: str | None = None,
    status: int = 200,
    pending_secret: str = "",
) -> web.Response:
    page = sync.of(runtime)
    replicas: list[dict[str, Any]] = []
    if page is not None and page.store is not None:
        try:
            replicas = await page.store.replicas()
        except StoreUnavailable:
            replicas = []
    settings = active.settings
    draft = record.draft if record is not None else None
    issuer = (values or {}).get("issuer_url") or (draft.sso.issuer_url if draft is not None else "")
    shown = view.View(
        settings=settings,
        sso_on=access.sso_on(active),
        actor_name=actor.name,
        break_glass=actor.break_glass,
        csrf=active.cookies.form_token(actor.holder),
        record=record,
        problem=problem or (page.error if page is not None else None),
        closed=runtime.closed,
        store=page.store.where if page is not None and page.store is not None else "",
        shared_store=bool(page is not None and page.store is not None and page.store.shared),
        replicas=replicas,
        values=values or {},
        errors=errors or {},
        notice=notice,
        required_claims=trial.required_claims(settings),
        provider_origins=await _provider_origins(runtime, active, record),
        pinned=page.pinned if page is not None else None,
        page_redirect_uri=login.page_redirect_uri(settings),
        warnings=_warnings(page),
        unusable=access.unusable(runtime, problem),
        identity=identity_view(active, actor.claims),
        pending_secret=pending_secret,
        registration_offered=registration.offered(issuer) if issuer else None,
        admins=trial.admins(settings),
    )
    return view.render(shown, status=status)


def _warnings(page: PageSync | None) -> tuple[str, ...]:
    if page is None:
        return ()
    return page.warnings + ((page.anchor_error,) if page.anchor_error else ())


async def _provider_origins(runtime: Runtime, active: Active, record: PageRecord | None) -> tuple[str, ...]:
    """Origins the Test login form may lead to (CSP form-action follows the redirect to the provider)."""
    if record is None or record.draft is None:
        return ()
    digest, now = record.draft.digest, time.monotonic()
    cached = _origins.get(digest)
    if cached is not None and now < cached[0]:
        return cached[1]
    origins: tuple[str, ...] = ()
    try:
        settings = trial.draft_settings(runtime, record.draft.sso.as_config())
        metadata = await trial.draft_client(runtime, settings, fresh_sign_in=False).metadata()
        origins = (str(html.origin_of(metadata.authorization_endpoint)),)
        registration.note(metadata)
    except (ConfigError, SidecarError):
        pass
    _origins.clear()  # one draft at a time
    _origins[digest] = (now + (_ORIGIN_TTL if origins else _ORIGIN_RETRY), origins)
    return origins


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise NotFound("No such file.")
    body = resources.files("proxy.admin").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=_STATIC[name],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def _file_sso(runtime: Runtime) -> PageSSO | None:
    """The config file's own provider, while the file enables SSO: break-glass may use it too."""
    try:
        sso = load_settings(runtime.active.settings.source).sso
    except ConfigError:
        return None
    if not sso.enabled:
        return None
    return PageSSO(sso.issuer_url, sso.client_id, "")


def _allowed(runtime: Runtime) -> list[Pinned]:
    return access.allowed_providers(access.page_sync(runtime).pinned, _file_sso(runtime))


# -- Save -------------------------------------------------------------------------------------------------


@_shows_problems
async def save(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.setup_form(request, runtime, active, "saving provider settings")
    page = access.page_sync(runtime)
    record = await page.load()
    values = {name: form.get(name, "").strip() for name in FIELDS}
    cookie_secrets = active.settings.session.cookie_secrets
    if not values["client_secret"]:
        # The secret typed before a refused Save, sealed in the form since: as if typed again.
        values["client_secret"] = pending.open_sealed(cookie_secrets, actor.holder, form.get(pending.FIELD, ""))
    errors = _required(values, record)
    candidate: PageSSO | None = None
    if not errors:
        secret = values["client_secret"] or (record.draft.sso.client_secret if record.draft else "")
        scopes = tuple(values["scopes"].split()) or DEFAULT_SCOPES
        candidate = PageSSO(values["issuer_url"], values["client_id"], secret, scopes)
        access.break_glass_may_use(actor, candidate, _allowed(runtime), "save settings for")
        errors = await _validate(runtime, candidate)
    if errors or candidate is None:
        access.audit(runtime, actor, "save", "refused", "; ".join(f"{k}: {v}" for k, v in errors.items()))
        typed = values.pop("client_secret", "")  # write-only: never rendered back, only kept sealed
        kept = pending.seal(cookie_secrets, actor.holder, typed) if typed else ""
        return await _render(request, runtime, active, actor, record, None, values=values, errors=errors, status=400,
                             pending_secret=kept)  # fmt: skip
    what = _describe_save(record.draft, candidate, secret_given=bool(values["client_secret"]))
    digest = await _store_draft(page, actor, candidate, "saved", what)
    access.audit(runtime, actor, "save", "ok", f"{what} (draft {digest})")
    raise web.HTTPSeeOther(PATH + "?done=saved")


async def _store_draft(
    page: PageSync, actor: Actor, candidate: PageSSO, action: str, what: str, made: Registration | None = None
) -> str:
    """Keep ``candidate`` as the draft (and ``made``, the registration that created its client); its digest."""
    digest = page.keys().digest(candidate)

    def edit(current: PageRecord) -> PageRecord:
        draft = Draft(candidate, digest, time.time(), actor.name)
        # A new draft voids the test of the old one (compare-and-set on the digest at Enable).
        changed = dataclasses.replace(current, draft=draft)
        if made is not None:
            changed = dataclasses.replace(changed, registration=made)
        return changed.with_entry(actor.name, action, f"{what} (draft {digest})", sub=actor.sub)

    await page.change(edit)
    return digest


def _required(values: Mapping[str, str], record: PageRecord) -> dict[str, str]:
    errors = {}
    if not values["issuer_url"]:
        errors["issuer_url"] = "Enter the issuer URL, e.g. https://idp.example.com/realms/main."
    if not values["client_id"]:
        errors["client_id"] = "Enter the client ID the identity provider gave this client."
    if not values["client_secret"]:
        draft = record.draft
        same_client = draft is not None and (draft.sso.issuer_url, draft.sso.client_id) == (
            values["issuer_url"],
            values["client_id"],
        )
        if not same_client:
            # The stored secret belongs to the stored issuer and client: never prove it at another provider.
            errors["client_secret"] = (
                "Enter the client secret: the stored one is kept only while the issuer URL and client ID stay the same."
                if draft is not None
                else "Enter the client secret."
            )
    return errors


async def _validate(runtime: Runtime, candidate: PageSSO) -> dict[str, str]:
    """The problems a reload would find with this draft, by page field; empty when it would apply.

    Stricter than a reload (only an answer that proves the credentials counts), and worded so that a URL
    typed here cannot map the network: what failed, never whether a port was closed, slow, TLS or HTTP
    (the log has the network's reason, for the operator)."""
    try:
        settings = trial.draft_settings(runtime, candidate.as_config())
    except ConfigError as exc:
        return _by_field((p.key, p.message) for p in exc.problems)
    client = OIDCClient(settings.sso, settings.redirect_uri, runtime.http)
    issuer = settings.sso.issuer_url
    try:
        registration.note(await client.metadata())
    except DocumentError as exc:
        return {"issuer_url": exc.message}
    except SidecarError as exc:
        log.warning("settings page: no discovery document at %s: %s", issuer, exc.message)
        return {
            "issuer_url": f"No OpenID Provider configuration could be read at {client.discovery.url}: check "
            "the issuer URL (the log says more)."
        }
    errors: dict[str, str] = {}
    try:
        if not await client.jwks.keys():
            errors["issuer_url"] = "The provider publishes no signing key the sidecar can use (its jwks_uri)."
    except SidecarError as exc:
        log.warning("settings page: the signing keys of %s cannot be read: %s", issuer, exc.message)
        errors["issuer_url"] = "The provider's signing keys (its jwks_uri) could not be read (the log says more)."
    try:
        await client.prove_client_credentials(strict=True)
    except ProviderUnreadable as exc:
        log.warning("settings page: the token endpoint of %s did not answer: %s", issuer, exc.message)
        errors["client_secret"] = _NO_ANSWER
    except ClientRejected:
        errors.update(await _rejected(client))
    except SidecarError as exc:
        errors["client_secret"] = exc.message
    return errors


async def _rejected(client: OIDCClient) -> dict[str, str]:
    """``invalid_client`` does not say whether the ID or the secret is wrong: the field the provider's answers
    point to, else both, in words for a person (no config keys: the page is not the file)."""
    known = await client.client_known()
    if known is False:
        return {
            "client_id": "The provider does not know this client ID (invalid_client), at least not with the "
            "redirect URI of step 1: copy the client ID again from the provider, and check that this redirect URI "
            "is registered for it."
        }
    if known:
        return {
            "client_secret": "The provider knows this client ID but did not accept the client secret "
            "(invalid_client): copy the secret again from the provider (or make a new one)."
        }
    return {
        "client_id": "The provider did not accept this client ID and secret together (invalid_client), and does "
        "not say which is wrong: check that this is the client ID the provider shows for the application ...",
        "client_secret": "... and that this client secret belongs to that client (copy it again from the provider).",
    }


def _by_field(problems: Any) -> dict[str, str]:
    errors: dict[str, str] = {}
    for key, message in problems:
        field = _FIELD_OF_KEY.get(key, "general")
        text = message if field != "general" else f"{key}: {message}"
        errors[field] = f"{errors[field]} {text}" if field in errors else text
    return errors


def _describe_save(old: Draft | None, new: PageSSO, *, secret_given: bool) -> str:
    changes = []
    for name in ("issuer_url", "client_id"):
        if old is None or getattr(old.sso, name) != getattr(new, name):
            changes.append(f"{name} {getattr(new, name)}")
    if old is None or old.sso.scopes != new.scopes:
        changes.append("scopes " + " ".join(new.scopes))
    changes.append("client secret changed" if secret_given else "client secret kept")
    return "saved " + ", ".join(changes)


# -- Register automatically (RFC 7591) --------------------------------------------------------------------------


@_shows_problems
async def register(request: web.Request) -> web.StreamResponse:
    """Register a client at the provider, then exactly Save: its checks on the client ID and secret, and the
    draft. A refusal is shown in the provider's words next to its field, and nothing is saved."""
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.setup_form(request, runtime, active, "registering a client")
    registration.break_glass_may_register(actor, _allowed(runtime))
    page = access.page_sync(runtime)
    record = await page.load()
    values = {name: form.get(name, "").strip() for name in ("issuer_url", "client_id", "scopes")}
    issuer = values["issuer_url"]
    scopes = tuple(values["scopes"].split()) or DEFAULT_SCOPES
    token = form.get(registration.FIELD, "").strip()  # used once, kept nowhere
    try:
        made = await registration.register(runtime, issuer, scopes, token)
    except registration.Problem as exc:
        access.audit(runtime, actor, "register", "refused", "; ".join(f"{k}: {v}" for k, v in exc.errors.items()))
        return await _render(request, runtime, active, actor, record, None, values=values, errors=exc.errors,
                             status=400)  # fmt: skip
    candidate = PageSSO(issuer, made.client_id, made.client_secret, scopes)
    errors = await _validate(runtime, candidate)
    if errors:
        deleted = await registration.discard(runtime, made)
        what = f"client {made.client_id} registered at {issuer}, then refused by Save's checks"
        access.audit(runtime, actor, "register", "refused", f"{what} ({'deleted' if deleted else 'not deleted'})")
        errors["general"] = (
            f"The provider registered the client {made.client_id}, but it does not pass Save's checks (below); "
            + ("it was deleted again." if deleted else "delete it at the provider.")
        )
        values["client_id"] = made.client_id
        return await _render(request, runtime, active, actor, record, None, values=values, errors=errors, status=400)
    kept = Registration(issuer, made.client_id, made.registration_client_uri, made.registration_access_token,
                        time.time(), actor.name)  # fmt: skip
    what = f"registered the client {made.client_id} at {issuer} automatically, scopes {' '.join(scopes)}"
    digest = await _store_draft(page, actor, candidate, "registered", what, kept)
    access.audit(runtime, actor, "register", "ok", f"{what} (draft {digest})")
    raise web.HTTPSeeOther(PATH + "?done=registered")


# -- Test login -------------------------------------------------------------------------------------------


@_shows_problems
async def test_login(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.setup_form(request, runtime, active, "a test login")
    record = await access.page_sync(runtime).load()
    if record.draft is None:
        raise Refused("Save the provider settings first: Test login runs with the saved draft.")
    if form.get("digest") and form.get("digest") != record.draft.digest:
        raise Refused("The draft was saved again since this page was loaded: reload the page, then test.")
    access.break_glass_may_use(actor, record.draft.sso, _allowed(runtime), "test")
    log.warning("settings page: test login of draft %s started by %s", record.draft.digest, actor.label)
    redirect_uri = login.page_redirect_uri(active.settings)
    return await trial.start(request, runtime, active, record.draft, actor.label, redirect_uri=redirect_uri)


# -- Enable, Disable, Forget ----------------------------------------------------------------------------------


@_shows_problems
async def enable(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.setup_form(request, runtime, active, "enabling a provider")
    page = access.page_sync(runtime)
    record = await page.load()
    access.require_fresh(actor, record, active, "enable SSO")
    draft = record.draft
    if draft is not None:
        access.break_glass_may_use(actor, draft.sso, _allowed(runtime), "enable")
    reason: str | None
    if draft is None:
        reason = "there is no saved draft"
    elif form.get("digest") != draft.digest:
        reason = "the draft was saved again since this page was loaded: reload the page"
    elif record.test is None:
        reason = "the draft has not been tested (since it was saved, or since SSO was disabled): run Test login first"
    else:
        reason = record.test.enables(draft, trial.required_claims(active.settings))
    if reason is None and draft is not None:
        problems = await _validate(runtime, draft.sso)
        if problems:
            reason = "the provider no longer accepts the draft: " + "; ".join(problems.values())
    if reason is not None or draft is None:
        access.audit(runtime, actor, "enable", "refused", reason or "")
        return await _render(request, runtime, active, actor, record, None,
                             errors={"enable": f"Cannot enable SSO: {reason}."}, status=409)  # fmt: skip

    def edit(current: PageRecord) -> PageRecord:
        if current.draft is None or current.draft.digest != draft.digest:
            raise Refused("The draft changed while enabling it: reload the page.")
        applied = Applied(True, draft.sso, draft.digest, time.time(), actor.name)
        pinned = Pinned(draft.sso.issuer_url, draft.sso.client_id)  # the one break-glass may enable again
        return dataclasses.replace(current, applied=applied, pinned=pinned).with_entry(
            actor.name,
            "enabled",
            f"enabled draft {draft.digest}: {draft.sso.issuer_url}, client {draft.sso.client_id}",
            sub=actor.sub,
        )

    await _apply(runtime, actor, "enable", edit, f"draft {draft.digest}")
    raise web.HTTPSeeOther(PATH + "?done=enabled")


@_shows_problems
async def disable(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.form(request, runtime, active)
    record, _ = await access.stored_record(runtime)
    access.require_fresh(actor, record, active, "disable SSO")
    problem = await _problem_with(runtime, {"enabled": False})
    if problem is not None:
        access.audit(runtime, actor, "disable", "refused", problem)
        raise Refused(f"SSO cannot be disabled: {problem}")
    if form.get("confirm") != "yes":
        return html.confirm_disable(active.cookies.form_token(actor.holder))

    def edit(current: PageRecord) -> PageRecord:
        applied = Applied(False, None, None, time.time(), actor.name)
        # The test is void: turning SSO back on proves the provider, and an admin's sign-in, again.
        return dataclasses.replace(current, applied=applied, test=None).with_entry(
            actor.name, "disabled", "disabled SSO", sub=actor.sub
        )

    await _apply(runtime, actor, "disable", edit, "SSO off", replaces=True)
    raise web.HTTPSeeOther(PATH + "?done=disabled")


@_shows_problems
async def forget(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.form(request, runtime, active)
    record, stored_problem = await access.stored_record(runtime)
    access.break_glass_may_forget(actor, active, runtime, stored_problem)
    access.require_fresh(actor, record, active, "forget the page settings")
    problem = await _problem_with(runtime, None)
    if problem is not None:
        access.audit(runtime, actor, "forget", "refused", problem)
        raise Refused(f"The page settings cannot be forgotten: {problem}")
    if form.get("confirm") != "yes":
        return html.confirm_forget(active.cookies.form_token(actor.holder), _file_state(runtime))

    def edit(current: PageRecord) -> PageRecord:
        # Break-glass keeps the pin: forgetting must not turn the next setup into a free first one.
        pinned = current.pinned if actor.break_glass else None
        kept = current.registration  # the provider's handle on a client that may outlive the page's settings
        return PageRecord(history=current.history, pinned=pinned, registration=kept).with_entry(
            actor.name, "forgotten", "forgot the page settings: the config file is authoritative", sub=actor.sub
        )

    await _apply(runtime, actor, "forget", edit, "file authoritative", replaces=True)
    raise web.HTTPSeeOther(PATH + "?done=forgotten")


async def _problem_with(runtime: Runtime, sso: dict[str, Any] | None) -> str | None:
    """Why the config that would be in force afterwards could not run: the file with ``sso`` as its section
    (None: the file's own), checked as a reload checks it, its provider proven where it is a new one."""
    try:
        settings = load_settings(runtime.active.settings.source, sso=sso)
    except ConfigError as exc:
        return "the config that would then be in force does not load: " + "; ".join(str(p) for p in exc.problems)
    running = runtime.active.settings.sso
    if settings.sso.enabled and settings.sso != running:
        check = await verify_provider(OIDCClient(settings.sso, settings.redirect_uri, runtime.http))
        if check.problems:
            return "the config file's provider does not answer as it must: " + "; ".join(str(p) for p in check.problems)
    return None


def _file_state(runtime: Runtime) -> str:
    """What the config file says about SSO, in words, for the Forget confirmation."""
    settings = load_settings(runtime.active.settings.source)
    if not settings.sso.enabled:
        return "SSO disabled: every request reaches the console without a sign-in (the console's own login takes over)."
    return f"SSO enabled with the issuer {settings.sso.issuer_url} and the client {settings.sso.client_id}."


async def _apply(runtime: Runtime, actor: Actor, action: str, edit: Any, what: str, *, replaces: bool = False) -> None:
    page = access.page_sync(runtime)
    try:
        await page.change(edit, replaces=replaces)
    except Refused as exc:
        access.audit(runtime, actor, action, "refused", exc.message)
        raise
    access.audit(runtime, actor, action, "ok", what)
    await page.sync()  # this replica applies it now; the others within a poll or two


def add_routes(app: web.Application, settings: Settings) -> None:
    app.router.add_get(PATH, show)
    app.router.add_get(PATH + "/static/{name}", static)
    app.router.add_post(PATH + "/save", save)
    app.router.add_post(PATH + "/register", register)
    app.router.add_post(PATH + "/test", test_login)
    app.router.add_post(PATH + "/enable", enable)
    app.router.add_post(PATH + "/disable", disable)
    app.router.add_post(PATH + "/forget", forget)
    login.add_routes(app)
    sessions.add_routes(app)
    register_purpose(app, trial.PURPOSE, trial.finish)  # a Test login ends on the page, never in a session
