"""``/oauth2/admin``: the SSO settings page's handlers. Configure, test, then enable; lock-out made impossible.

Who may do what, and the form checks, are ``adminaccess``'s; the HTML is ``adminpage``'s. Save validates the
draft exactly as a reload would (discovery, issuer, JWKS, client credentials at the token endpoint) and
stores it; the running config does not change. Enable works only after a successful Test login of exactly
the current draft by an admin under it, and applies it through the reload's validated swap on every
replica (``pagesync``). Every change is logged at WARNING, counted, and listed on the page.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from proxy import adminaccess as access
from proxy import adminhtml, adminpage, admintest, presets
from proxy.adminaccess import PATH, Actor, Refused
from proxy.errors import ConfigError, NotFound, SidecarError, StoreUnavailable
from proxy.oidc import OIDCClient
from proxy.pagerecord import Applied, Draft, PageRecord, PageSSO, RecordError
from proxy.reload import verify_provider
from proxy.runtime import RUNTIME, Active, Runtime
from proxy.settings import DEFAULT_SCOPES, Settings

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


# -- the page --------------------------------------------------------------------------------------------


async def show(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    who = await access.actor(request, runtime, active)
    if not isinstance(who, Actor):
        return who
    record, problem = await access.stored_record(runtime)
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    preset = request.query.get("preset")
    if preset:
        try:
            values["issuer_url"] = presets.issuer(preset, request.query, active.settings)
        except presets.PresetError as exc:
            errors["preset"] = str(exc)
    notice = _NOTICES.get(request.query.get("done", ""))
    return await _render(request, runtime, active, who, record, problem, values=values, errors=errors, notice=notice)


_NOTICES = {
    "saved": "Saved. The running config is unchanged: run Test login next.",
    "enabled": "SSO is enabled. Every replica applies it within a few seconds.",
    "disabled": "SSO is disabled. Every replica applies it within a few seconds.",
    "forgotten": "The page settings are forgotten: the config file is authoritative again.",
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
) -> web.Response:
    page = runtime.page
    replicas: list[dict[str, Any]] = []
    if page is not None and page.store is not None:
        try:
            replicas = await page.store.replicas()
        except StoreUnavailable:
            replicas = []
    view = adminpage.View(
        settings=active.settings,
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
        required_claims=admintest.required_claims(active.settings),
        provider_origins=await _provider_origins(runtime, active, record),
    )
    return adminpage.render(view, status=status)


async def _provider_origins(runtime: Runtime, active: Active, record: PageRecord | None) -> tuple[str, ...]:
    """Origins the Test login form may lead to (CSP form-action follows the redirect to the provider)."""
    if record is None or record.draft is None:
        return ()
    try:
        settings = admintest.draft_settings(runtime, record.draft.sso.as_config())
        metadata = await admintest.draft_client(runtime, settings, fresh_sign_in=False).metadata()
    except (ConfigError, SidecarError):
        return ()
    return (str(adminhtml.origin_of(metadata.authorization_endpoint)),)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise NotFound("No such file.")
    body = resources.files("proxy").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=_STATIC[name],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


# -- Save -------------------------------------------------------------------------------------------------


async def save(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.form(request, runtime, active)
    access.only_admins_while_on(actor, active, "saving provider settings")
    record, problem = await access.stored_record(runtime)
    if record is None:
        raise StoreUnavailable(problem or "The page settings cannot be read.")
    values = {name: form.get(name, "").strip() for name in FIELDS}
    errors = _required(values, record)
    candidate: PageSSO | None = None
    if not errors:
        secret = values["client_secret"] or (record.draft.sso.client_secret if record.draft else "")
        scopes = tuple(values["scopes"].split()) or DEFAULT_SCOPES
        candidate = PageSSO(values["issuer_url"], values["client_id"], secret, scopes)
        errors = await _validate(runtime, candidate)
    if errors or candidate is None:
        access.audit(runtime, actor, "save", "refused", "; ".join(f"{k}: {v}" for k, v in errors.items()))
        values.pop("client_secret", None)  # write-only: never rendered back
        return await _render(request, runtime, active, actor, record, None, values=values, errors=errors, status=400)
    digest = access.page_sync(runtime).keys().digest(candidate)
    what = _describe_save(record.draft, candidate, secret_given=bool(values["client_secret"]))

    def edit(current: PageRecord) -> PageRecord:
        draft = Draft(candidate, digest, time.time(), actor.name)
        # A new draft voids the test of the old one (compare-and-set on the digest at Enable).
        return dataclasses.replace(current, draft=draft).with_entry(actor.name, "saved", f"{what} (draft {digest})")

    await access.page_sync(runtime).change(edit)
    access.audit(runtime, actor, "save", "ok", f"{what} (draft {digest})")
    raise web.HTTPSeeOther(PATH + "?done=saved")


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
    """The problems a reload would find with this draft, by page field; empty when it would apply."""
    try:
        settings = admintest.draft_settings(runtime, candidate.as_config())
    except ConfigError as exc:
        return _by_field((p.key, p.message) for p in exc.problems)
    check = await verify_provider(OIDCClient(settings.sso, settings.redirect_uri, runtime.http))
    return _by_field((p.key, p.message) for p in check.problems)


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


# -- Test login -------------------------------------------------------------------------------------------


async def test_login(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.form(request, runtime, active)
    access.only_admins_while_on(actor, active, "a test login")
    record = await access.page_sync(runtime).load()
    if record.draft is None:
        raise Refused("Save the provider settings first: Test login runs with the saved draft.")
    if form.get("digest") and form.get("digest") != record.draft.digest:
        raise Refused("The draft was saved again since this page was loaded: reload the page, then test.")
    log.warning("settings page: test login of draft %s started by %s", record.draft.digest, actor.name)
    return await admintest.start(request, runtime, active, record.draft, actor.name)


# -- Enable, Disable, Forget ----------------------------------------------------------------------------------


async def enable(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.form(request, runtime, active)
    access.only_admins_while_on(actor, active, "enabling a provider")
    page = access.page_sync(runtime)
    record = await page.load()
    draft = record.draft
    reason: str | None
    if draft is None:
        reason = "there is no saved draft"
    elif form.get("digest") != draft.digest:
        reason = "the draft was saved again since this page was loaded: reload the page"
    elif record.test is None:
        reason = "the draft has not been tested: run Test login first"
    else:
        reason = record.test.enables(draft, admintest.required_claims(active.settings))
    if reason is None and draft is not None:
        problems = await _validate(runtime, draft.sso)
        if problems:
            reason = "the provider no longer accepts the draft: " + "; ".join(problems.values())
    if reason is not None or draft is None:
        access.audit(runtime, actor, "enable", "refused", reason or "")
        return await _render(
            request,
            runtime,
            active,
            actor,
            record,
            None,
            errors={"enable": f"Cannot enable SSO: {reason}."},
            status=409,
        )

    def edit(current: PageRecord) -> PageRecord:
        if current.draft is None or current.draft.digest != draft.digest:
            raise Refused("The draft changed while enabling it: reload the page.")
        applied = Applied(True, draft.sso, draft.digest, time.time(), actor.name)
        return dataclasses.replace(current, applied=applied).with_entry(
            actor.name, "enabled", f"enabled draft {draft.digest}: {draft.sso.issuer_url}, client {draft.sso.client_id}"
        )

    await _apply(runtime, actor, "enable", edit, f"draft {draft.digest}")
    raise web.HTTPSeeOther(PATH + "?done=enabled")


async def disable(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, form = await access.form(request, runtime, active)
    if form.get("confirm") != "yes":
        return adminhtml.confirm_disable(active.cookies.form_token(actor.holder))

    def edit(current: PageRecord) -> PageRecord:
        applied = Applied(False, None, None, time.time(), actor.name)
        return dataclasses.replace(current, applied=applied).with_entry(actor.name, "disabled", "disabled SSO")

    await _apply(runtime, actor, "disable", edit, "SSO off")
    raise web.HTTPSeeOther(PATH + "?done=disabled")


async def forget(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    active = runtime.active
    actor, _ = await access.form(request, runtime, active)
    access.only_admins_while_on(actor, active, "forgetting the page settings")

    def edit(current: PageRecord) -> PageRecord:
        return PageRecord(version=current.version, history=current.history).with_entry(
            actor.name, "forgotten", "forgot the page settings: the config file is authoritative"
        )

    page = access.page_sync(runtime)
    try:
        await _apply(runtime, actor, "forget", edit, "file authoritative")
    except RecordError:
        # A record that does not open (tampered) is replaced, not edited: Forget is the way out of it.
        await page.replace_unreadable(edit(PageRecord()))
        await page.sync()
        access.audit(runtime, actor, "forget", "ok", "replaced a record that did not open")
    raise web.HTTPSeeOther(PATH + "?done=forgotten")


async def _apply(runtime: Runtime, actor: Actor, action: str, edit: Any, what: str) -> None:
    page = access.page_sync(runtime)
    try:
        await page.change(edit)
    except Refused as exc:
        access.audit(runtime, actor, action, "refused", exc.message)
        raise
    access.audit(runtime, actor, action, "ok", what)
    await page.sync()  # this replica applies it now; the others within a poll or two


def add_routes(app: web.Application, settings: Settings) -> None:
    app.router.add_get(PATH, show)
    app.router.add_get(PATH + "/static/{name}", static)
    app.router.add_post(PATH + "/save", save)
    app.router.add_post(PATH + "/test", test_login)
    app.router.add_post(PATH + "/enable", enable)
    app.router.add_post(PATH + "/disable", disable)
    app.router.add_post(PATH + "/forget", forget)
