"""The settings page shows what the console is told besides the headers: the assertion's settings, the JWKS URL,
a sample of the assertion's claims for the signed-in admin (never a signature), the roles and the tokens passed.
Also in ``/oauth2/status`` for operators, without any key or secret."""

from __future__ import annotations

import json
from html import unescape
from typing import Any

from support.adminsetup import page_html
from support.idp import login

ROLES = {"rules": [{"role": "admin", "groups": ["admins"]}], "default": ["viewer"]}


def page_sidecar(sidecar_factory: Any, tmp_path: Any) -> Any:
    return sidecar_factory(
        {
            "admin": {"enabled": True, "groups": ["admins"], "settings_file": str(tmp_path / "page.json")},
            "assertion": {"lifetime": "10m"},
            "roles": ROLES,
            "pass_tokens": {"id_token": "X-Forwarded-Id-Token"},
        }
    )


async def test_the_page_shows_the_assertion_and_a_sample_of_its_claims_for_the_admin(http, sidecar_factory, tmp_path):
    sidecar = page_sidecar(sidecar_factory, tmp_path)
    admin = http()
    assert (await login(admin, sidecar.url_for("/"), "admin.ann")).status == 200
    html = await page_html(admin, sidecar.url)
    assert "Identity for the console" in html
    assert f'<code id="jwks-url">{sidecar.url}/oauth2/jwks.json</code>' in html
    assert "<code>ES256</code>" in html and "derived from session.cookie_secret" in html
    assert "600 s, never past the session" in html and "<code>X-Forwarded-Id-Token</code>" in html
    sample = json.loads(unescape(html.split('<pre id="assertion-sample">', 1)[1].split("</pre>", 1)[0]))
    assert sample["preferred_username"] == "admin.ann" and sample["roles"] == ["admin"]
    assert sample["iss"] == sidecar.url and sample["exp"] - sample["iat"] == 600
    assert "eyJ" not in html  # the claims only: no signed token on the page
    assert "Your roles: <code>admin</code>" in html


async def test_the_status_names_the_assertion_without_keys(http, sidecar_factory, tmp_path):
    sidecar = page_sidecar(sidecar_factory, tmp_path)
    admin = http()
    await login(admin, sidecar.url_for("/"), "admin.ann")
    async with admin.get(sidecar.url_for("/oauth2/status"), headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200
        identity = (await resp.json())["config"]["console_identity"]
    assertion = identity["assertion"]
    assert assertion["jwks_url"] == sidecar.url + "/oauth2/jwks.json" and assertion["algorithm"] == "ES256"
    assert assertion["signing_kid"] in assertion["published_kids"]
    assert identity["roles"] == {"header": "X-Forwarded-Roles", "rules": 1, "default": ["viewer"]}
    assert identity["pass_tokens"] == {"access_token": None, "id_token": "X-Forwarded-Id-Token"}
    text = json.dumps(identity)
    assert sidecar.config["session"]["cookie_secret"] not in text and '"d"' not in text
