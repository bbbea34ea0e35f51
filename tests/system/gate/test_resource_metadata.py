"""``/.well-known/oauth-protected-resource`` (RFC 9728) where the sidecar does not publish it: the path stays
the console's, and 401s say nothing of a document that is not there. ``test_bearer.py`` has the document
and the challenge where it is published, ``test_forward_auth.py`` both through nginx."""

from __future__ import annotations

from typing import Any

PATH = "/.well-known/oauth-protected-resource"


async def test_with_sso_off_the_path_is_the_consoles(http: Any, sidecar_factory: Any) -> None:
    sidecar = sidecar_factory({"sso": {"enabled": False}}, register=False)
    async with http().get(sidecar.url_for(PATH), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 200
        assert "resource" not in resp.headers.get("Content-Type", "") and "<html" in (await resp.text()).lower()


async def test_without_bearer_tokens_nothing_is_published_and_the_challenge_is_bare(
    http: Any, sidecar_factory: Any
) -> None:
    sidecar = sidecar_factory({"sso": {"api_audiences": []}})
    async with http().get(sidecar.url_for(PATH), headers={"Accept": "application/json"}) as resp:
        assert resp.status == 401  # the console's path, behind the sign-in like any other
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_only_get_and_head_are_answered_by_the_sidecar(http: Any, sidecar_factory: Any) -> None:
    sidecar = sidecar_factory()
    client = http()
    async with client.head(sidecar.url_for(PATH)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    async with client.post(sidecar.url_for(PATH), headers={"Accept": "application/json"}) as resp:
        assert resp.status == 401  # another method is the console's, so it needs a sign-in
