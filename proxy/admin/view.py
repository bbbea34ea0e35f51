"""The settings page itself: its sections, from a ``View`` of what it shows (the frame: ``adminhtml``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from aiohttp import web

from proxy.admin import html, pending, registration, routes_view
from proxy.admin.identity_view import IdentityView, render_identity
from proxy.admin.presets import PRESETS, recognise
from proxy.admin.record import BRIEF_CLAIMS, PageRecord, Pinned
from proxy.config.model import Settings

_SILENT_AFTER = 5.0  # replicas report every second


@dataclass(frozen=True)
class View:
    settings: Settings
    sso_on: bool
    actor_name: str
    break_glass: bool
    csrf: str
    record: PageRecord | None
    problem: str | None
    closed: str | None
    store: str
    shared_store: bool
    replicas: Sequence[Mapping[str, Any]] = ()
    values: Mapping[str, str] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    notice: str | None = None
    required_claims: Sequence[str] = ()
    provider_origins: Sequence[str] = ()
    pinned: Pinned | None = None  # the provider last enabled: break-glass may enable only it
    page_redirect_uri: str | None = None  # the page's own origin's redirect URI (admin.public_url)
    warnings: Sequence[str] = ()  # files others could replace, a state file that cannot be written
    unusable: bool = False  # closed, or the stored page settings cannot be used: the way out is shown
    identity: IdentityView | None = None  # what the console is told besides the headers (assertion, roles, tokens)
    pending_secret: str = ""  # the secret of a refused Save, sealed (``pending``): kept in the form, never shown
    registration_offered: bool | None = None  # the shown issuer offers RFC 7591 registration; None: not known
    admins: str = ""  # who counts as an admin, in words

    @property
    def limited(self) -> bool:
        """Break-glass while SSO is on (and the page settings usable): it may only Disable, so that is all it sees."""
        return self.break_glass and self.sso_on and not self.unusable


# -- the page --------------------------------------------------------------------------------------------


def render(view: View, *, status: int = 200) -> web.Response:
    if view.limited:
        parts = [_state(view), _disable_only(view), _replicas(view), _export(view), _history(view)]
        return html.document("SSO settings", "".join(parts), status=status)
    parts = [
        _state(view),
        _register(view),
        _provider(view),
        _test_and_enable(view),
        render_identity(view.identity) if view.identity is not None else "",
        routes_view.section(view.settings),
        _sessions(view),
        _replicas(view),
        _export(view),
        _history(view),
        _forget(view),
    ]
    return html.document("SSO settings", "".join(parts), status=status, form_targets=view.provider_origins)


def _state(view: View) -> str:
    on = view.sso_on and view.closed is None
    badge = '<p class="badge on">SSO is enabled</p>' if view.sso_on else '<p class="badge off">SSO is disabled</p>'
    record = view.record
    if view.settings.sso_source == "page" and record is not None:
        source = f"The SSO settings come from this page (version {record.version}), stored in {escape(view.store)}."
    else:
        source = "The SSO settings come from the config file."
    sso = view.settings.sso
    running = (
        '<dl class="facts running"><dt>Issuer in force</dt><dd><code>'
        + escape(sso.issuer_url)
        + "</code></dd><dt>Client ID in force</dt><dd><code>"
        + escape(sso.client_id)
        + "</code></dd></dl>"
        if view.sso_on
        else ""
    )
    who = (
        f"You are using break-glass access ({escape(view.actor_name)})."
        if view.break_glass
        else f'Signed in as {escape(view.actor_name)}. <a href="/oauth2/sign_out">Sign out</a>'
    )
    limit = ""
    if view.limited:
        limit = (
            '<div class="warning" role="note" id="break-glass-limit"><strong>While SSO is enabled, break-glass '
            "access may only disable it.</strong> Break-glass is the way in when the identity provider fails; it is "
            "never a way to set up a provider an admin did not, so Save, Test login and Enable need an admin "
            "signed in at the provider in force (below). If the provider has failed, Disable SSO: the console's "
            "own login takes over, and you can then set up the provider an admin enabled last.</div>"
        )
    elif view.break_glass and view.sso_on:
        limit = (
            '<p class="hint">While SSO is enabled, break-glass access may only disable it (and, while the page '
            "settings cannot be used, forget them). Changing the provider needs a signed-in admin.</p>"
        )
    elif view.break_glass and view.pinned is not None:
        limit = (
            f'<p class="hint">Break-glass access may set up only the provider an admin enabled: '
            f"<code>{escape(view.pinned.issuer_url)}</code>, client <code>{escape(view.pinned.client_id)}</code> "
            "(or the config file's). Another provider needs a signed-in admin.</p>"
        )
    alerts = ""
    if view.closed:
        alerts += (
            '<div class="alert" role="alert"><strong>This replica is not proxying:</strong> '
            f"{escape(view.closed)}</div>"
        )
    if view.problem:
        way_out = " Forget page settings (below) or Disable SSO replaces them." if view.unusable else ""
        alerts += f'<div class="alert" role="alert">{escape(view.problem)}{way_out}</div>'
    for warning in view.warnings:
        alerts += f'<div class="warning" role="note">{escape(warning)}</div>'
    notice = f'<div class="notice" role="status">{escape(view.notice)}</div>' if view.notice else ""
    general = view.errors.get("general")
    if general:
        alerts += f'<div class="alert" role="alert">{escape(general)}</div>'
    status_class = "state on" if on else "state"
    return (
        f'<section class="card {status_class}" aria-labelledby="state-h"><h1 id="state-h">SSO with OpenID Connect</h1>'
        f'{badge}<p>{source}</p>{running}<p class="who">{who}</p>{limit}{notice}{alerts}</section>'
    )


def _disable_only(view: View) -> str:
    """What break-glass may do while SSO is on: Disable SSO (with its confirmation), nothing else."""
    return (
        '<section class="card" aria-labelledby="disable-h"><h2 id="disable-h">Disable SSO</h2>'
        "<p>Every replica stops asking for a sign-in within a few seconds; requests reach the console without "
        "identity headers. You confirm it on the next page.</p>"
        f'<div class="actions">{html.post_form("disable", view.csrf, "Disable SSO", css="danger")}</div></section>'
    )


def _register(view: View) -> str:
    s = view.settings
    mapping = {claim: header for header, claim in s.headers}
    rows = "".join(
        f"<tr><td><code>{escape(c)}</code></td><td>"
        + (f"<code>{escape(mapping[c])}</code>" if c in mapping else '<span class="muted">not forwarded</span>')
        + "</td></tr>"
        for c in BRIEF_CLAIMS
    )
    return (
        '<section class="card" aria-labelledby="register-h"><h2 id="register-h">1. Register the sidecar at your '
        "identity provider</h2>"
        "<p>Create a confidential web application (authorization code flow, authenticated with a client secret) "
        "and give it this redirect URI:</p>"
        '<div class="copy-row"><code id="redirect-uri" class="uri">' + escape(s.redirect_uri) + "</code>"
        '<button type="button" class="secondary" data-copy="redirect-uri">Copy</button>'
        '<span class="copied" role="status" aria-live="polite"></span></div>'
        '<dl class="uris"><dt>Post-logout redirect URI</dt><dd><code>'
        + escape(s.post_logout_redirect_uri)
        + "</code></dd><dt>Back-channel logout URI</dt><dd><code>"
        + escape(s.backchannel_logout_uri)
        + "</code></dd>"
        + (
            "<dt>Redirect URI of this page (register it too)</dt><dd><code>"
            + escape(view.page_redirect_uri)
            + "</code></dd>"
            if view.page_redirect_uri
            else ""
        )
        + "</dl>"
        "<h3>Claims to map</h3><p>Map these claims at the provider (most send them for the "
        "<code>profile</code> and <code>email</code> scopes). The console receives them as headers:</p>"
        '<table class="grid"><thead><tr><th scope="col">Claim</th><th scope="col">Header to the console</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></section>"
    )


def _field(view: View, name: str, label: str, *, kind: str = "text", value: str = "", hint: str = "") -> str:
    error = view.errors.get(name)
    described = " ".join(x for x in (f"{name}-hint" if hint else "", f"{name}-error" if error else "") if x)
    aria = (f' aria-describedby="{described}"' if described else "") + (' aria-invalid="true"' if error else "")
    autocomplete = "new-password" if kind == "password" else "off"
    return (
        f'<div class="field{" has-error" if error else ""}"><label for="{name}">{escape(label)}</label>'
        f'<input id="{name}" name="{name}" type="{kind}" value="{escape(value)}" autocomplete="{autocomplete}"'
        f' spellcheck="false"{aria}>'
        + (f'<p id="{name}-hint" class="hint">{hint}</p>' if hint else "")
        + (f'<p id="{name}-error" class="error">{escape(error)}</p>' if error else "")
        + "</div>"
    )


def _provider(view: View) -> str:
    draft = view.record.draft if view.record else None
    values = view.values
    issuer = values.get("issuer_url", draft.sso.issuer_url if draft else "")
    client_id = values.get("client_id", draft.sso.client_id if draft else "")
    scopes = values.get("scopes", " ".join(draft.sso.scopes) if draft else "openid profile email")
    if view.pending_secret:
        write_only = (
            "Write-only. The secret you typed is kept, sealed in this form, for the next Save: leave this empty to "
            "use it, or type another."
        )
    elif draft is not None:
        write_only = (
            "Write-only. A secret is stored: leave this empty to keep it (only while the issuer URL and client ID "
            "stay the same)."
        )
    else:
        write_only = "Write-only: it is never shown again."
    field_errors = [
        (n, view.errors[n])
        for n in ("issuer_url", "client_id", "client_secret", "scopes", "initial_access_token")
        if n in view.errors
    ]
    summary = ""
    if field_errors:
        items = "".join(f'<li><a href="#{n}">{escape(msg)}</a></li>' for n, msg in field_errors)
        summary = f'<div class="alert" role="alert"><p>The settings were not saved:</p><ul>{items}</ul></div>'
    return (
        '<section class="card" aria-labelledby="provider-h"><h2 id="provider-h">2. Provider settings</h2>'
        f"{_presets(view, issuer)}{summary}"
        '<form method="post" action="/oauth2/admin/save" novalidate class="settings">'
        + html.hidden("csrf", view.csrf)
        + (html.hidden(pending.FIELD, view.pending_secret) if view.pending_secret else "")
        + _field(view, "issuer_url", "Issuer URL", kind="url", value=issuer,
                 hint="Discovery is read from <code>{issuer}/.well-known/openid-configuration</code>.")
        + _field(view, "client_id", "Client ID", value=client_id)
        + _field(view, "client_secret", "Client secret", kind="password", hint=escape(write_only))
        + _field(view, "scopes", "Scopes", value=scopes, hint="Space-separated; must include <code>openid</code>.")
        + '<div class="actions"><button type="submit">Save</button></div>'
        '<p class="hint">Save checks the settings with the provider (discovery, issuer, signing keys, client '
        "credentials) and keeps them as a draft. The running config does not change.</p>"
        + _register_automatically(view, issuer)
        + "</form></section>"
    )  # fmt: skip


def _register_automatically(view: View, issuer: str) -> str:
    """RFC 7591, inside the settings form (it needs the Issuer URL and the Scopes), after Save: Enter in a field
    submits the form's first button, which must stay Save."""
    if view.registration_offered is False:
        return '<p class="hint" id="no-registration">' + escape(registration.no_endpoint(issuer)) + "</p>"
    known = (
        "This provider offers automatic registration (RFC 7591)."
        if view.registration_offered
        else "Where the provider offers dynamic client registration (Keycloak, Okta; not Entra ID or Google)."
    )
    return (
        '<fieldset class="register"><legend>Or register the client automatically</legend>'
        f'<p class="hint">{known} With an initial access token from the provider\'s admin, the sidecar registers a '
        "confidential client with the URIs of step 1 and saves its client ID and secret as the draft, exactly as "
        "Save would. The token is used once and kept nowhere.</p>"
        + _field(view, registration.FIELD, "Initial access token", kind="password",
                 hint="Write-only. Leave it empty for a provider that registers clients without one.")
        + '<div class="actions"><button type="submit" class="secondary" formaction="/oauth2/admin/register">'
        "Register automatically</button></div></fieldset>"
    )  # fmt: skip


def _presets(view: View, issuer: str) -> str:
    """The preset fields, saying what the Issuer URL holds: the preset asked for, else the one it matches."""
    values = view.values
    chosen = (values["preset"], values.get("preset-name", ""), values.get("preset-server", "")) if values.get(
        "preset") else recognise(issuer)  # fmt: skip
    preset, name, server = chosen or ("", "", "")
    # An issuer that matches no preset says so, rather than showing the first preset as if it were chosen.
    options = f'<option value=""{" selected" if not preset else ""}>Other provider</option>'
    options += "".join(
        f'<option value="{k}"{" selected" if k == preset else ""}>{escape(label)}</option>'
        for k, (label, _) in PRESETS.items()
    )
    preset_error = view.errors.get("preset")
    return (
        '<form class="presets" method="get" action="/oauth2/admin" aria-labelledby="presets-h">'
        '<h3 id="presets-h">Provider presets</h3><div class="preset-row">'
        '<div class="field"><label for="preset">Provider preset</label>'
        f'<select id="preset" name="preset">{options}</select></div>'
        '<div class="field"><label for="preset-name">Tenant, realm or organisation</label>'
        f'<input id="preset-name" name="name" type="text" value="{escape(name)}" autocomplete="off" '
        'spellcheck="false"></div>'
        '<div class="field" data-preset-only="keycloak"><label for="preset-server">Keycloak server URL</label>'
        f'<input id="preset-server" name="server" type="url" value="{escape(server)}" autocomplete="off" '
        'spellcheck="false" placeholder="https://sso.example.com"></div>'
        '<button type="submit" class="secondary">Fill in issuer</button></div>'
        + (f'<p class="error" role="alert">{escape(preset_error)}</p>' if preset_error else "")
        + '<p class="hint">Okta: <code>https://ORG.okta.com/oauth2/default</code>; Entra ID: '
        "<code>https://login.microsoftonline.com/TENANT/v2.0</code>; Keycloak: <code>SERVER/realms/REALM</code>; "
        "Google needs <code>access.allowed_email_domains</code>.</p></form>"
    )


def _test_and_enable(view: View) -> str:
    record = view.record
    draft = record.draft if record else None
    test = record.test if record else None
    digest = draft.digest if draft else ""
    rows = []
    if draft is None:
        rows.append("<dt>Draft</dt><dd>No draft saved yet.</dd>")
    else:
        made = record.registration if record else None
        registered = (
            f", its client registered automatically {html.when(made.at)} by {escape(made.by)}"
            if made is not None and (made.issuer_url, made.client_id) == (draft.sso.issuer_url, draft.sso.client_id)
            else ""
        )
        rows.append(
            f"<dt>Draft</dt><dd>Saved {html.when(draft.saved_at)} by {escape(draft.saved_by)}{registered} "
            f'<span class="muted">(draft {escape(draft.digest)})</span></dd>'
        )
        if test is None or test.digest != draft.digest:
            rows.append('<dt>Test login</dt><dd id="test-state">Not tested yet.</dd>')
            rows.append('<dt>Result</dt><dd id="test-result">—</dd>')
        else:
            rows.append(f'<dt>Test login</dt><dd id="test-state">{html.test_state(test)}</dd>')
            rows.append(f'<dt>Result</dt><dd id="test-result">{html.verdict(test, view.required_claims, draft)}</dd>')
    applied = record.applied if record else None
    if applied is not None:
        what = f"enabled (draft {escape(applied.digest or '')})" if applied.enabled else "disabled"
        rows.append(f"<dt>Applied</dt><dd>SSO {what} {html.when(applied.at)} by {escape(applied.by)}</dd>")
    enable_error = view.errors.get("enable")
    digest_field = html.hidden("digest", digest)
    buttons = [
        html.post_form("test", view.csrf, "Test login", extra=digest_field, css="secondary", target="_blank"),
        html.post_form("enable", view.csrf, "Enable SSO", extra=digest_field),
    ]
    if view.sso_on or view.unusable:
        buttons.append(html.post_form("disable", view.csrf, "Disable SSO", css="danger"))
    return (
        '<section class="card" aria-labelledby="enable-h"><h2 id="enable-h">3. Test, then enable</h2>'
        f'<dl class="facts" id="test-facts" data-digest="{escape(digest)}">{"".join(rows)}</dl>'
        + (f'<div class="alert" role="alert" id="enable-error">{escape(enable_error)}</div>' if enable_error else "")
        + f'<div class="actions">{"".join(buttons)}</div>'
        '<p class="hint">Test login opens a new window and always asks for a fresh sign-in at the provider. '
        "It creates no session. Enable SSO needs a successful test of exactly this draft, by a user who is an "
        "admin under it, so that someone can still open this page afterwards.</p>"
        # Without scripts the page cannot hear the other window: it says to reload (static/admin.js rewrites it).
        '<p class="hint" id="test-live" role="status" aria-live="polite">After a Test login in the other window, '
        "reload this page to see its result here.</p></section>"
    )


def _sessions(view: View) -> str:
    """The way to the Sessions page, for signed-in admins (break-glass may not list or revoke sessions)."""
    if view.break_glass:
        return ""
    return (
        '<section class="card" aria-labelledby="sessions-h"><h2 id="sessions-h">Sessions</h2>'
        "<p>See a user's sessions (sign-in time, last use, client) and revoke one or all of them, without "
        "rotating the cookie secret, which would sign everyone out.</p>"
        '<form method="get" action="/oauth2/admin/sessions" class="search"><div class="field">'
        '<label for="sessions-user">User</label><input id="sessions-user" name="user" type="text" autocomplete="off" '
        'spellcheck="false" placeholder="username, email or sub"></div>'
        '<button type="submit" class="secondary">Show sessions</button></form></section>'
    )


def _replica_state(report: Mapping[str, Any], now: float) -> str:
    if now - float(report.get("at", 0)) > _SILENT_AFTER:
        return "not reporting (stopped, or cannot reach the store)"
    return str(report.get("closed") or report.get("error") or "ok")


def _replicas(view: View) -> str:
    if not view.replicas:
        return ""
    now = time.time()
    rows = "".join(
        f"<tr><td><code>{escape(str(r.get('replica')))}</code></td><td>{escape(str(r.get('version') or '—'))}</td>"
        f"<td>{escape(str(r.get('sso', '')))} ({escape(str(r.get('source', '')))})</td>"
        f"<td>{escape(_replica_state(r, now))}</td>"
        f"<td>{html.when(float(r.get('at', 0)))}</td></tr>"
        for r in view.replicas
    )
    return (
        '<section class="card" aria-labelledby="replicas-h"><h2 id="replicas-h">Replicas</h2>'
        "<p>The page settings version each replica (and worker) has applied:</p>"
        '<table class="grid"><thead><tr><th scope="col">Replica</th><th scope="col">Version</th>'
        '<th scope="col">SSO</th><th scope="col">State</th><th scope="col">Last report</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def export_yaml(record: PageRecord | None) -> str | None:
    """The effective ``sso:`` section the page applies, as YAML to paste into the config file (no secret).

    Page values are literal, the file expands ``${VAR}``: every ``${`` is written ``$${`` so that the file
    reads back exactly what the page applied (a client ID holding ``${OIDC_CLIENT_SECRET}`` must not become
    the secret, in every authorization URL)."""
    if record is None or record.applied is None:
        return None
    if not record.applied.enabled or record.applied.sso is None:
        return "sso:\n  enabled: false\n"
    sso = record.applied.sso
    return (
        "sso:\n  enabled: true\n"
        f"  issuer_url: {_yaml_literal(sso.issuer_url)}\n"
        f"  client_id: {_yaml_literal(sso.client_id)}\n"
        "  # The secret is not shown: set OIDC_CLIENT_SECRET, or use client_secret_file.\n"
        '  client_secret: "${OIDC_CLIENT_SECRET}"\n'
        f"  scopes: [{', '.join(_yaml_literal(s) for s in sso.scopes)}]\n"
    )


def _yaml_literal(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is one) that the config reader expands back to ``value``."""
    return json.dumps(value.replace("${", "$${"))


def _export(view: View) -> str:
    text = export_yaml(view.record)
    if text is None:
        return ""
    warning = (
        '<div class="warning" role="note">These settings exist only in '
        f"{escape(view.store)}. If it loses its data, replicas keep what they applied but new ones start from the "
        "config file. Paste this into the config file to make it permanent, then Forget page settings.</div>"
        if view.shared_store
        else ""
    )
    return (
        '<section class="card" aria-labelledby="export-h"><h2 id="export-h">The effective sso section</h2>'
        f'{warning}<pre class="yaml">{escape(text)}</pre></section>'
    )


def _history(view: View) -> str:
    entries = view.record.history if view.record else ()
    if not entries:
        return ""
    items = "".join(
        f"<li>{html.when(e.at)} <strong>{escape(e.by)}</strong>"
        + (f' <span class="muted">(sub {escape(e.sub)})</span>' if e.sub and e.sub != e.by else "")
        + f' <span class="action">{escape(e.action)}</span>: {escape(e.detail)}</li>'
        for e in entries
    )
    return (
        '<section class="card" aria-labelledby="history-h"><h2 id="history-h">History</h2>'
        f'<ol class="history" reversed>{items}</ol></section>'
    )


def _forget(view: View) -> str:
    record = view.record
    nothing = record is not None and record.draft is None and record.applied is None
    if nothing and view.problem is None and not view.unusable:
        return ""
    return (
        '<section class="card" aria-labelledby="forget-h"><h2 id="forget-h">Forget page settings</h2>'
        "<p>Drops the draft and what this page applied: the config file's <code>sso:</code> section is "
        "authoritative again on every replica. You confirm it on the next page, which says what will then be "
        "in force.</p>" + html.post_form("forget", view.csrf, "Forget page settings", css="secondary") + "</section>"
    )
