"""The settings page's section on what the console is told besides the identity headers: the signed assertion
(its settings, the JWKS URL, and a sample of its claims for the signed-in admin, never a signature), the roles
and the tokens passed. Read only: these settings live in the config file."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from proxy.config.model import JWKS_PATH, Settings
from proxy.runtime.state import Active


@dataclass(frozen=True)
class IdentityView:
    settings: Settings
    kids: Sequence[str] = ()
    signing_kid: str = ""
    key_source: str = ""
    sample: Mapping[str, Any] | None = None  # the claims an assertion for the viewer would carry now
    roles: Sequence[str] = ()  # the viewer's roles


def identity_view(active: Active, claims: Mapping[str, Any] | None) -> IdentityView:
    """What the section shows, for a viewer with these claims (None: break-glass, no identity)."""
    console = active.console
    if console is None:
        return IdentityView(active.settings)
    keyring = console.keyring
    return IdentityView(
        active.settings,
        kids=[k.kid for k in keyring.keys] if keyring is not None else (),
        signing_kid=keyring.signing.kid if keyring is not None else "",
        key_source=keyring.source if keyring is not None else "",
        sample=console.sample(claims, time.time()) if claims is not None else None,
        roles=console.roles_of(claims) if claims is not None else (),
    )


def _row(name: str, value: str) -> str:
    return f"<dt>{escape(name)}</dt><dd>{value}</dd>"


def _code(text: str) -> str:
    return f"<code>{escape(text)}</code>"


def render_identity(view: IdentityView) -> str:
    s = view.settings
    a, roles, tokens = s.assertion, s.roles, s.pass_tokens
    if a is None and roles is None and not tokens.enabled:
        return ""
    parts = ['<section class="card" aria-labelledby="identity-h"><h2 id="identity-h">Identity for the console</h2>']
    parts.append(
        "<p>Set in the config file (<code>assertion</code>, <code>roles</code>, <code>pass_tokens</code>).</p>"
    )
    if a is not None:
        rows = [
            _row("Header", _code(a.header) + (" (as <code>Bearer</code>)" if a.header == "Authorization" else "")),
            _row("Algorithm", _code(a.algorithm)),
            _row("Keys", escape(view.key_source)),
            _row("Signing key", _code(view.signing_kid) if view.signing_kid else "(none)"),
            _row("JWKS URL", '<code id="jwks-url">' + escape(s.url_for(JWKS_PATH)) + "</code>"),
            _row(
                "Published keys", ", ".join(_code(k) for k in view.kids) if a.algorithm != "HS256" else "none (HS256)"
            ),
            _row("Issuer (iss)", _code(str(s.public_url).rstrip("/"))),
            _row("Audience (aud)", _code(a.audience)),
            _row("Lifetime", f"{int(a.lifetime)} s, never past the session's end"),
            _row("Claims", ", ".join(_code(c) for c in ("sub", *(c for c in a.claims if c != "sub"), "roles"))),
        ]
        parts.append('<h3>Signed assertion</h3><dl class="uris">' + "".join(rows) + "</dl>")
        if view.sample is not None:
            sample = json.dumps(view.sample, indent=2, ensure_ascii=False)
            parts.append(
                '<h3>A sample assertion for you</h3><p class="hint">Its claims as the console would get them now; '
                'the signature is left out.</p><pre id="assertion-sample">' + escape(sample) + "</pre>"
            )
        else:
            parts.append('<p class="hint">Sign in as an admin to see a sample of the assertion for you.</p>')
    if roles is not None:
        rules = "".join(
            f"<li>{_code(r.role)}: groups {', '.join(_code(g) for g in r.groups) or '(none)'}; "
            f"emails {', '.join(_code(e) for e in r.emails) or '(none)'}</li>"
            for r in roles.rules
        )
        default = ", ".join(_code(d) for d in roles.default) or "(none)"
        parts.append(
            f"<h3>Roles</h3><p>Header {_code(roles.header)}; every matching rule adds its role, "
            f"default {default}.</p><ul>{rules}</ul>"
        )
        if view.sample is not None or view.roles:
            parts.append(f"<p>Your roles: {', '.join(_code(r) for r in view.roles) or '(none)'}</p>")
    if tokens.enabled:
        passed = [
            f"{what} in {_code(header)}" + (" (as <code>Bearer</code>)" if header == "Authorization" else "")
            for what, header in (("the access token", tokens.access_token), ("the ID token", tokens.id_token))
            if header
        ]
        parts.append(f"<h3>Tokens passed</h3><p>{'; '.join(passed)}, renewed before they expire.</p>")
    parts.append("</section>")
    return "".join(parts)
