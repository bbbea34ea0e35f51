"""The settings page's "Register automatically": step 1 of the setup (registering the client at the provider)
without leaving the page, where the provider offers dynamic client registration (RFC 7591: Keycloak, Okta,
node ``oidc-provider``; not Entra ID or Google).

It registers a confidential code-flow client (``client_secret_basic``) with the sidecar's redirect, post-logout
and back-channel logout URIs (the last where the provider supports back-channel logout) and a ``client_name``
naming the sidecar and its ``public_url``. The handler (``handlers.register``) then treats the client ID and
secret exactly as if they were typed and saved: Save's checks run on them, and they become the draft. The
registration access token and client configuration URI (RFC 7592) are kept sealed in the record
(``record.Registration``), for a later update of the URIs; the initial access token is used once and kept
nowhere.

Break-glass may register only where it may save any provider: the very first setup (nothing pinned, the
config file's SSO off). A new registration is a new client ID, so wherever a provider is pinned it could only
be "another client" (``access.break_glass_may_use``): refused before anything is sent to the provider.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.admin import trial
from proxy.admin.access import Actor
from proxy.admin.login import page_redirect_uri
from proxy.admin.record import PageSSO, Pinned
from proxy.config.model import Settings
from proxy.errors import ConfigError, Forbidden, SidecarError
from proxy.oidc import registration
from proxy.oidc.client import OIDCClient
from proxy.oidc.discovery import DocumentError, ProviderMetadata
from proxy.oidc.http import ProviderHTTP
from proxy.oidc.registration import Registered, RegistrationRefused
from proxy.runtime.state import Runtime

log = logging.getLogger("sso_sidecar.admin")

FIELD = "initial_access_token"
_KNOWN_MAX = 64
# Issuer URL -> whether its discovery document advertises a registration endpoint, as last read. The page shows
# the registration field from what it knows; it never fetches a document just to draw itself.
_offers: dict[str, bool] = {}


class Problem(Exception):
    """Why nothing was registered, by page field (``issuer_url``, ``scopes``, ``initial_access_token``)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def note(metadata: ProviderMetadata) -> None:
    """Remember whether this issuer offers registration (after any discovery the page has done)."""
    if len(_offers) >= _KNOWN_MAX:
        _offers.clear()
    _offers[metadata.issuer] = metadata.registration_endpoint is not None


def offered(issuer: str) -> bool | None:
    """True or False when the page has read this issuer's discovery document; None when it has not."""
    return _offers.get(issuer)


def no_endpoint(issuer: str) -> str:
    return (
        f"{issuer} does not offer automatic registration (its discovery document has no registration_endpoint): "
        "register the client by hand as step 1 says, then enter its client ID and secret."
    )


def break_glass_may_register(actor: Actor, allowed: list[Pinned]) -> None:
    """A registration makes a new client: break-glass may make one only at the very first setup."""
    if actor.break_glass and allowed:
        names = " or ".join(f"{p.issuer_url} (client {p.client_id})" for p in allowed)
        raise Forbidden(
            "Break-glass access may not register a new client: an admin enabled, or the config file names, "
            f"{names}, and a new client would be another one. A signed-in admin must do that.",
            code="break_glass_limited",
        )


def client_metadata(settings: Settings, metadata: ProviderMetadata, scopes: tuple[str, ...]) -> dict[str, Any]:
    """RFC 7591 2 (with OpenID Connect's registration parameters): a confidential web client of the code flow."""
    redirect_uris = [settings.redirect_uri]
    own = page_redirect_uri(settings)
    if own is not None:
        redirect_uris.append(own)  # the page's own origin signs in and tests through its own
    body: dict[str, Any] = {
        "client_name": f"sso-sidecar for {settings.public_url.origin()}",
        "application_type": "web",
        "redirect_uris": redirect_uris,
        "post_logout_redirect_uris": [settings.post_logout_redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": " ".join(scopes),
    }
    if metadata.backchannel_logout_supported:
        body["backchannel_logout_uri"] = settings.backchannel_logout_uri
        body["backchannel_logout_session_required"] = metadata.backchannel_logout_session_supported
    return body


async def register(runtime: Runtime, issuer: str, scopes: tuple[str, ...], token: str) -> Registered:
    """Register a client for the page's issuer; ``Problem`` (nothing registered) with the reason by field."""
    if not issuer:
        raise Problem({"issuer_url": "Enter the issuer URL first: the client is registered at that provider."})
    if token and not registration.usable_token(token):
        raise Problem({FIELD: "This is not a token: it has spaces or characters a token never has."})
    try:
        # The config the registration is for: the file, with this issuer (a placeholder client until it exists).
        settings = trial.draft_settings(runtime, PageSSO(issuer, "registering", "registering", scopes).as_config())
    except ConfigError as exc:
        errors: dict[str, str] = {}
        for problem in exc.problems:
            field = {"sso.issuer_url": "issuer_url", "sso.scopes": "scopes"}.get(problem.key, "general")
            errors[field] = problem.message if field != "general" else str(problem)
        raise Problem(errors) from None
    sso = settings.sso
    try:
        metadata = await OIDCClient(sso, settings.redirect_uri, runtime.http).metadata()
    except DocumentError as exc:
        raise Problem({"issuer_url": exc.message}) from None
    except SidecarError as exc:
        # Worded as Save words it: a URL typed here must not become a way to map which ports answer.
        log.warning("settings page: no discovery document at %s (registration): %s", issuer, exc.message)
        raise Problem({"issuer_url": "No OpenID Provider configuration could be read at this issuer URL: check it "
                                     "(the log says more)."}) from None  # fmt: skip
    note(metadata)
    endpoint = metadata.registration_endpoint
    if endpoint is None:
        raise Problem({"issuer_url": no_endpoint(issuer)})
    body = client_metadata(settings, metadata, scopes)
    try:
        return await registration.register(ProviderHTTP(runtime.http, sso.http_timeout), endpoint, token, body)
    except RegistrationRefused as exc:
        raise Problem({FIELD: f"The provider refused the registration: {exc.message}."}) from None
    except SidecarError as exc:
        log.warning("settings page: the registration endpoint of %s: %s", issuer, exc.message)
        raise Problem({FIELD: "The provider's registration endpoint did not answer with a registration (the log "
                              "says more)."}) from None  # fmt: skip


async def discard(runtime: Runtime, registered: Registered) -> bool:
    """Delete a registration the page could not use (RFC 7592 2.3), so a failed attempt leaves no client."""
    sso_timeout = runtime.active.settings.sso.http_timeout
    return await registration.delete(ProviderHTTP(runtime.http, sso_timeout), registered)
