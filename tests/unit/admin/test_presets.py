"""Provider presets (``proxy.admin.presets``): an issuer from a name, and the preset an issuer came from, so
the preset fields say what the Issuer URL holds after any reload."""

from __future__ import annotations

import pytest

from proxy.admin.presets import issuer, recognise
from support.config_text import MINIMAL, parse


@pytest.mark.parametrize(
    ("preset", "query"),
    [
        ("okta", {"name": "acme"}),
        ("okta", {"name": "acme.oktapreview.com"}),
        ("entra", {"name": "contoso.onmicrosoft.com"}),
        ("keycloak", {"name": "main", "server": "https://sso.example.com"}),
    ],
)
def test_an_issuer_made_from_a_preset_is_recognised_as_that_preset(preset: str, query: dict[str, str]) -> None:
    made = issuer(preset, query, parse(MINIMAL))
    assert recognise(made) == (preset, query["name"], query.get("server", ""))


def test_other_issuers_match_no_preset() -> None:
    assert recognise("https://idp.example.com/realms/main") == ("keycloak", "main", "https://idp.example.com")
    assert recognise("https://accounts.google.com") == ("google", "", "")
    assert recognise("https://login.example.com") is None and recognise("") is None
