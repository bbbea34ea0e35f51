"""The settings page's Test login: a real authorization-code flow with the draft, and what it showed.

``start`` sends a new window to the draft's provider, always asking for a fresh sign-in
(``prompt=login``), through the registered redirect URI. The pending test lives in the session store,
where every replica finds it (the callback may land on another replica), bound to the browser (the
pending-login cookie) and to the draft's digest. ``finish`` (the sign-in callback hands it every pending login
of the purpose ``PURPOSE``, which ``handlers.add_routes`` registers) checks the response's ``iss`` (RFC 9207)
and the ID token against the draft, reads the claims, discards the tokens, records the result in the page
record and shows it. It creates no session and changes nothing for anyone else.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from proxy.admin import html, sync
from proxy.admin.record import BRIEF_CLAIMS, Draft, PageRecord, TestResult
from proxy.auth.identity import IdentityHeaders
from proxy.auth.policy import claim_list, denial_reason, display_name, is_operator, verified_email
from proxy.config.load import load_settings
from proxy.config.model import Settings
from proxy.errors import ConfigError, LoginError, SidecarError, UnusableIdentity
from proxy.oidc.client import OIDCClient, new_pkce, random_token
from proxy.runtime.state import Active, Runtime
from proxy.sessions import PendingLogin

log = logging.getLogger("sso_sidecar.admin")

PURPOSE = "test"  # what a Test login's pending login is for (``proxy.signin.login.register_purpose``)
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DESCRIPTION_MAX = 300


def draft_settings(runtime: Runtime, draft_sso: Mapping[str, Any]) -> Settings:
    """The config the draft would make: the file, with the draft as its ``sso:`` section. ``ConfigError``."""
    return load_settings(runtime.active.settings.source, sso=draft_sso)


def draft_client(
    runtime: Runtime, settings: Settings, *, fresh_sign_in: bool, redirect_uri: str | None = None
) -> OIDCClient:
    """The draft's relying party; ``redirect_uri``: the page origin's (``proxy.admin.login``), else the console's."""
    sso = settings.sso
    if fresh_sign_in:
        sso = dataclasses.replace(sso, extra_authorize_params={**sso.extra_authorize_params, "prompt": "login"})
    return OIDCClient(sso, redirect_uri or settings.redirect_uri, runtime.http)


def required_claims(settings: Settings) -> tuple[str, ...]:
    """The page's claims (``BRIEF_CLAIMS``) that the header mapping forwards: Enable needs the test to have
    received them."""
    mapped = {claim for _, claim in settings.headers}
    return tuple(c for c in BRIEF_CLAIMS if c in mapped)


async def start(
    request: web.Request, runtime: Runtime, active: Active, draft: Draft, by: str, *, redirect_uri: str | None = None
) -> web.Response:
    settings = draft_settings(runtime, draft.sso.as_config())
    client = draft_client(runtime, settings, fresh_sign_in=True, redirect_uri=redirect_uri)
    metadata = await client.metadata()
    state, nonce = random_token(), random_token()
    verifier, challenge = new_pkce()
    pending = PendingLogin(
        nonce,
        verifier,
        "/oauth2/admin",
        metadata.issuer,
        draft.sso.client_id,
        time.time(),
        purpose=PURPOSE,
        about=draft.digest,
        by=by,
    )
    await runtime.sessions.save_login(state, pending)
    url = await client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
    response = web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})
    active.cookies.set_login(response, state, request.cookies)
    return response


async def finish(
    request: web.Request, runtime: Runtime, pending: PendingLogin, *, redirect_uri: str | None = None
) -> web.StreamResponse:
    """The callback of a Test login: judge the response against the draft; never a session."""
    active = runtime.active
    page = sync.of(runtime)
    if page is None or not active.settings.admin.enabled:
        raise LoginError("The SSO settings page is not enabled.", status=404)
    record = await page.load()
    draft = record.draft
    if draft is None or draft.digest != pending.about:
        result = _failed(pending, "The draft was saved again after this test started: run Test login again.")
    else:
        result = await _judge(request, runtime, draft, pending, redirect_uri)
    verdict = "succeeded" if result.ok else f"failed: {result.error}"
    detail = f"test login of draft {pending.about} {verdict}" + (
        f" (signed in as {result.user})" if result.user else ""
    )

    def edit(current: PageRecord) -> PageRecord:
        if current.draft is None or current.draft.digest != result.digest:
            return current.with_entry(pending.by, "tested", detail)  # the draft moved on: history only
        return dataclasses.replace(current, test=result).with_entry(pending.by, "tested", detail)

    await page.change(edit)
    runtime.metrics.admin_actions.labels("test", "ok" if result.ok else "failed").inc()
    log.warning("settings page: %s by %s", detail, pending.by)
    required = required_claims(active.settings)
    response = html.test_result(result, required, draft)
    response.headers["Cache-Control"] = "no-store"
    active.cookies.clear_login(response, request.query.get("state", ""))
    return response


async def _judge(
    request: web.Request, runtime: Runtime, draft: Draft, pending: PendingLogin, redirect_uri: str | None
) -> TestResult:
    query = request.query
    if "error" in query:
        error = query["error"] if _ERROR_CODE.match(query["error"]) else "invalid_request"
        description = _plain(query.get("error_description", ""))
        words = f"The identity provider refused the sign-in ({error})" + (f": {description}" if description else "")
        return _failed(pending, words + ".")
    try:
        settings = draft_settings(runtime, draft.sso.as_config())
        client = draft_client(runtime, settings, fresh_sign_in=False, redirect_uri=redirect_uri)
        metadata = await client.metadata()
        if metadata.issuer != draft.sso.issuer_url:
            raise LoginError("The provider's issuer does not match the draft's issuer URL.")
        client.check_authorization_response_iss(query.get("iss"), metadata)  # RFC 9207, against the draft
        code = query.get("code")
        if not code:
            raise LoginError("The sign-in response has no authorization code.")
        # Validates the ID token against the draft (issuer, audience, signature, nonce...). The tokens are
        # dropped with ``login``: only the claims below are kept.
        claims = (await client.login(code=code, code_verifier=pending.code_verifier, nonce=pending.nonce)).claims
    except ConfigError as exc:
        return _failed(pending, "The draft is no longer a valid config: " + "; ".join(str(p) for p in exc.problems))
    except SidecarError as exc:
        return _failed(pending, exc.message)
    return _claims_result(runtime.active.settings, draft, pending, claims)


def _claims_result(settings: Settings, draft: Draft, pending: PendingLogin, claims: Mapping[str, Any]) -> TestResult:
    identity = IdentityHeaders(settings.headers, settings.header_list_separator, settings.access.groups_claim)
    problem = identity.problem(claims)
    headers: Sequence[tuple[str, str]] = ()
    if problem is None:
        try:
            headers = identity.values(claims)
        except UnusableIdentity as exc:
            problem = exc.message
    shown = {c: _shown(claims.get(c)) for c in BRIEF_CLAIMS}
    access_reason = denial_reason(claims, settings.access)
    admin = is_operator(claims, settings)
    return TestResult(
        digest=draft.digest,
        at=time.time(),
        by=pending.by,
        ok=problem is None,
        error=None if problem is None else f"This account cannot be used here: {problem}.",
        user=_plain(display_name(claims)),
        claims=shown,
        headers=tuple(headers),
        passes_access=access_reason is None,
        access_reason=access_reason,
        is_admin=admin,
        admin_reason=None if admin else not_admin(claims, settings),
        sub=str(claims.get("sub", "")),
        issuer=draft.sso.issuer_url,
    )


def admins(settings: Settings) -> str:
    """Who counts as an admin of the page, in words."""
    emails, groups = settings.admin.emails, settings.admin.groups
    if not emails and not groups:
        return "no admins are configured (admin.emails and admin.groups are empty)"
    ways = []
    if emails:
        ways.append("a verified email of " + ", ".join(emails) + " (admin.emails)")
    if groups:
        ways.append(
            f"membership of a group {', '.join(groups)} in the {settings.access.groups_claim} claim (admin.groups)"
        )
    return "an admin needs " + " or ".join(ways)


def not_admin(claims: Mapping[str, Any], settings: Settings) -> str:
    """Why this user is not an admin: who would count, and what the provider sent about this one."""
    email = claims.get("email")
    verified = verified_email(claims)
    if verified is not None:
        has = f"the verified email {verified}"
    elif isinstance(email, str) and email:
        has = f"the email {_plain(email)}, which the provider does not say is verified"
    else:
        has = "no email"
    groups = claim_list(claims, settings.access.groups_claim)
    in_groups = f"the groups {_plain(', '.join(str(g) for g in groups))}" if groups else "no groups"
    return f"{admins(settings)}; the provider sent {has} and {in_groups} for this user"


def _failed(pending: PendingLogin, error: str) -> TestResult:
    return TestResult(digest=pending.about, at=time.time(), by=pending.by, ok=False, error=error)


def _shown(value: Any) -> str | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list | tuple):
        return _plain(", ".join(str(v) for v in value))
    return _plain(str(value))


def _plain(text: str) -> str:
    """Provider text for a page and a log line: printable, and short."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return cleaned[:_DESCRIPTION_MAX]
