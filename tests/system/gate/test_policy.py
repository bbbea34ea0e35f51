"""The access policy through real sidecars: users inside it reach the console, users outside it get a 403 page
naming them; at the dev IdP (whose usernames become email addresses and whose ``unverified*`` users have
``email_verified: false``) and at badop (for namespaced group claims and Entra-style group overage, which the
dev IdP cannot send). The rules themselves: tests/unit/auth/test_policy.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import SidecarFactory

from support.badop import BadOP, running_badop
from support.idp import login
from support.procs import LOOPBACK, free_port
from support.sidecar import Sidecar

# --------------------------------------------------------------------------------------------------
# Through real sidecars: the dev IdP


ACCESS = {
    "allowed_email_domains": ["company.com"],
    "allowed_emails": ["boss@partner.org"],
    "allowed_groups": ["admins"],
}
API = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def policy_sidecar(idp: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    factory = SidecarFactory(idp, console, tmp_path_factory.mktemp("policy"))
    yield factory({"access": ACCESS}, name="policy")
    factory.stop_all()


async def sign_in(http: Any, sidecar: Sidecar, username: str) -> tuple[Any, Any, str]:
    client = http()
    resp = await login(client, sidecar.url_for("/api/whoami"), username)
    return client, resp, await resp.text()


@pytest.mark.parametrize("username", ["alice@company.com", "BOSS@partner.org", "admin.ann"])
async def test_users_inside_the_policy_reach_the_console(http, policy_sidecar, username):
    _, resp, body = await sign_in(http, policy_sidecar, username)
    assert resp.status == 200, body[:300]
    assert json.loads(body)["headers"]["X-Forwarded-User"] == username


@pytest.mark.parametrize(
    "username",
    [
        "attacker@evil.com@company.com",
        "x@evilcompany.com",
        "x@company.com.evil.io",
        "unverified@company.com",
        "bob",
    ],
)
async def test_users_outside_the_policy_get_a_403_page_naming_them_with_sign_out(http, policy_sidecar, username):
    client, resp, body = await sign_in(http, policy_sidecar, username)
    assert resp.status == 403
    assert "text/html" in resp.headers["Content-Type"]
    email = username if "@" in username else f"{username}@example.com"
    assert f"signed in as {email}" in body
    assert 'href="/oauth2/sign_out"' in body
    # Not a redirect loop: the next request is the same answer, and an API call gets JSON.
    async with client.get(policy_sidecar.url_for("/reports")) as again:
        assert again.status == 403
    async with client.get(policy_sidecar.url_for("/api/whoami"), headers=API) as api:
        assert api.status == 403
        assert (await api.json())["error"] == "access_denied"
    # And the sign-out the page offers works.
    async with client.get(policy_sidecar.url_for("/oauth2/sign_out"), headers={"Sec-Fetch-Site": "same-origin"}) as out:
        assert out.status == 302


async def test_the_403_page_says_an_unverified_email_is_why(http, policy_sidecar):
    _, resp, body = await sign_in(http, policy_sidecar, "unverified.user@company.com")
    assert resp.status == 403
    assert "has not verified your email address" in body


# --------------------------------------------------------------------------------------------------
# Through real sidecars: badop, for namespaced and missing group claims


@pytest.fixture(scope="module")
async def group_op() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/groups") as op:
        yield op


@pytest.fixture(scope="module")
async def cognito_sidecar(
    group_op: BadOP, console: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sidecar]:
    port = free_port()
    config = {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": f"http://{LOOPBACK}:{port}",
        "upstream": console.url,
        "sso": {
            "issuer_url": group_op.issuer,
            "client_id": group_op.client_id,
            "client_secret": group_op.client_secret,
        },
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
        "headers": {"X-Forwarded-User": "preferred_username", "X-Forwarded-Groups": "cognito:groups"},
        "header_list_separator": ";",
        "access": {"allowed_groups": ["console-admins"], "groups_claim": "cognito:groups"},
    }
    sidecar = Sidecar(config, tmp_path_factory.mktemp("cognito") / "cognito", name="cognito")
    # In a thread: badop answers on this event loop, which must not block while the sidecar starts.
    await asyncio.to_thread(sidecar.start)
    yield sidecar
    await sidecar.astop()


@pytest.fixture
def op(group_op: BadOP) -> BadOP:
    group_op.reset()
    return group_op


def profile(**claims: Any) -> dict[str, Any]:
    return {"email": "ada@example.com", "email_verified": True, "preferred_username": "ada", **claims}


async def test_a_namespaced_groups_claim_admits_and_is_joined_in_the_groups_header(http, op, cognito_sidecar):
    op.set(userinfo_claims=profile(**{"cognito:groups": ["console-admins", "eu-west", "a b"]}))
    _, resp, body = await sign_in(http, cognito_sidecar, "ada")
    assert resp.status == 200, body[:300]
    headers = json.loads(body)["headers"]
    assert headers["X-Forwarded-Groups"] == "console-admins;eu-west;a b"
    assert headers["X-Forwarded-User"] == "ada"


async def test_a_namespaced_groups_claim_without_the_group_is_refused(http, op, cognito_sidecar):
    op.set(userinfo_claims=profile(**{"cognito:groups": ["eu-west"], "groups": ["console-admins"]}))
    _, resp, body = await sign_in(http, cognito_sidecar, "ada")
    assert resp.status == 403
    assert "signed in as ada@example.com" in body


async def test_group_overage_is_refused_with_a_page_that_says_why(http, op, cognito_sidecar):
    op.set(
        userinfo_claims=profile(
            _claim_names={"cognito:groups": "src1"},
            _claim_sources={"src1": {"endpoint": "https://graph.example.com/v1.0/me/getMemberObjects"}},
        )
    )
    _, resp, body = await sign_in(http, cognito_sidecar, "ada")
    assert resp.status == 403
    assert "too many groups" in body


async def test_groups_not_sent_at_all_are_refused_with_a_reason(http, op, cognito_sidecar):
    op.set(userinfo_claims=profile())
    _, resp, body = await sign_in(http, cognito_sidecar, "ada")
    assert resp.status == 403
    assert "did not send your group memberships" in body
