"""Provider presets for the settings page: the issuer URL from a tenant, realm or organisation name.

They only fill in the Issuer URL field; Save then proves it like any other value. Google has one issuer
for every Google account in the world, so its preset is refused unless ``access.allowed_email_domains``
limits who may pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from yarl import URL

from proxy.config.model import Settings


class PresetError(ValueError):
    """The preset cannot fill in an issuer from what was given; the message says what is missing."""


# name -> (label, what the "name" field holds, or None when the preset needs no name)
PRESETS: dict[str, tuple[str, str | None]] = {
    "okta": ("Okta", "Okta organisation (acme, or acme.okta.com)"),
    "entra": ("Microsoft Entra ID", "Tenant ID or primary domain"),
    "keycloak": ("Keycloak", "Realm"),
    "google": ("Google", None),
}
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252}[A-Za-z0-9])?$")


def issuer(preset: str, query: Mapping[str, str], settings: Settings) -> str:
    name = query.get("name", "").strip()
    if preset not in PRESETS:
        raise PresetError("Choose one of the listed providers.")
    if preset == "google":
        if not settings.access.allowed_email_domains:
            raise PresetError(
                "Google signs in every Google account: set access.allowed_email_domains in the config file "
                "first, so that only your organisation's accounts pass."
            )
        return "https://accounts.google.com"
    if not name or not _NAME.match(name):
        raise PresetError(f"Enter the {PRESETS[preset][1]}: letters, digits, dots and dashes.")
    if preset == "okta":
        host = name if "." in name else f"{name}.okta.com"
        return f"https://{host}/oauth2/default"
    if preset == "entra":
        return f"https://login.microsoftonline.com/{name}/v2.0"
    server = query.get("server", "").strip().rstrip("/")
    try:
        url = URL(server) if server else None
    except ValueError:  # "http://[zz": not a URL at all
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise PresetError("Enter the Keycloak server URL, e.g. https://sso.example.com.")
    return f"{server}/realms/{name}"


_RECOGNISED = (
    ("okta", re.compile(r"^https://(?P<name>[A-Za-z0-9.-]+)/oauth2/default$")),
    ("entra", re.compile(r"^https://login\.microsoftonline\.com/(?P<name>[^/]+)/v2\.0$")),
    ("google", re.compile(r"^https://accounts\.google\.com$")),
    ("keycloak", re.compile(r"^(?P<server>https?://.+)/realms/(?P<name>[^/]+)$")),
)


def recognise(issuer: str) -> tuple[str, str, str] | None:
    """The preset, name and server an issuer URL was (or could have been) filled in from: so that the preset
    fields say what the Issuer URL field holds after any reload, not the first preset again."""
    for preset, pattern in _RECOGNISED:
        match = pattern.match(issuer)
        if match is None:
            continue
        groups = match.groupdict()
        name = groups.get("name") or ""
        if preset == "okta" and name.endswith(".okta.com"):
            name = name.removesuffix(".okta.com")
        return preset, name, groups.get("server") or ""
    return None
