"""Identity values and logs: no claim is rewritten into another identity, no input forges a log line.

badop (``support/badop.py``) signs real tokens with whatever claims a test sets. A claim that becomes a
header, feeds the access policy or reaches a log is refused when it holds a control character (C0, DEL,
C1) or, for groups, the header list separator: the login ends on a clean error page and sets no session
cookie, a bearer token gets 401 ``invalid_token``. Stripping is not refusing: ``ad<TAB>min`` must never
reach the console as ``admin``. Legitimate non-ASCII (``José``) still passes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from support.badop import BadOP, running_badop
from support.http import new_client
from support.idp import login
from support.proxyrig import (
    AUTH_PATH,
    COOKIE,
    UPSTREAM_CLIENTS,
    Rig,
    check_log_lines,
    start_rig,
    stop_rig,
)
from support.rawclient import RawClient, RawResponse


@pytest.fixture(scope="module")
async def op() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/smuggling") as op:
        yield op


@pytest.fixture(scope="module", params=UPSTREAM_CLIENTS)
async def rig(
    request: pytest.FixtureRequest, op: BadOP, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    rig = await start_rig(
        tmp_path_factory.mktemp("smuggling-identity"),
        issuer=op.issuer,
        client_id=op.client_id,
        client_secret=op.client_secret,
        upstream_client=request.param,
    )
    yield rig
    await stop_rig(rig)


@pytest.fixture
def fresh_op(op: BadOP) -> Iterator[BadOP]:
    op.reset()
    yield op
    op.reset()


def with_claims(op: BadOP, claims: dict[str, Any]) -> None:
    """Every token and the userinfo answer carry ``claims`` (``sub`` through badop's own knob)."""
    claims = dict(claims)
    if "sub" in claims:
        op.set(sub=claims.pop("sub"))
    op.set(id_token_claims_override=claims, userinfo_claims={**op.behaviour.userinfo_claims, **claims})


def mint(op: BadOP, **claims: Any) -> str:
    """An access token (RFC 9068 shaped) for the sidecar's client id, with ``claims`` on top."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": op.issuer,
        "sub": "svc-ci",
        "aud": op.client_id,
        "iat": now,
        "exp": now + 300,
        "client_id": "ci",
        "preferred_username": "ci-bot",
        "email": "ci-bot@example.com",
        "groups": ["deployers"],
        **claims,
    }
    return op.sign(body, typ="at+jwt")


async def call(rig: Rig, target: str, *headers: str) -> RawResponse:
    async with await RawClient.open(rig.port) as client:
        await client.send(rig.request("GET", target, "Accept: application/json", *headers, close=True))
        return await client.response(timeout=5)


BAD_CLAIMS: dict[str, dict[str, Any]] = {
    "tab-in-preferred_username": {"preferred_username": "ad\tmin"},
    "NUL-in-preferred_username": {"preferred_username": "x\x00y"},
    "DEL-in-preferred_username": {"preferred_username": "ad\x7fmin"},
    "C1-NEL-in-preferred_username": {"preferred_username": "ad\u0085min"},
    "CRLF-in-sub": {"sub": "user-1\r\nX-Forwarded-User: admin"},
    "LF-in-email": {"email": "ada@example.com\nX-Forwarded-User: admin"},
    "separator-in-a-group": {"groups": ["staff,admins"]},
}


@pytest.mark.parametrize("case", BAD_CLAIMS)
async def test_a_login_with_a_control_character_in_an_identity_claim_fails_cleanly(
    rig: Rig, fresh_op: BadOP, case: str
) -> None:
    with_claims(fresh_op, BAD_CLAIMS[case])
    mark = rig.console.mark()
    async with new_client() as client:
        final = await login(client, rig.sidecar.url_for(AUTH_PATH), "")
        page = await final.text()
        assert 400 <= final.status < 500, (final.status, page[:500])
        assert "html" in final.headers.get("Content-Type", ""), final.headers
        assert "Traceback" not in page
        assert client.cookie(COOKIE) is None, "a session cookie was set"
        async with client.get(rig.sidecar.url_for(AUTH_PATH), headers={"Accept": "application/json"}) as after:
            assert after.status == 401
    assert rig.console.requests_since(mark) == [], "the console saw the refused identity"


@pytest.mark.parametrize("case", BAD_CLAIMS)
async def test_a_bearer_token_with_a_control_character_in_an_identity_claim_gets_401(
    rig: Rig, fresh_op: BadOP, case: str
) -> None:
    mark = rig.console.mark()
    got = await call(rig, AUTH_PATH, f"Authorization: Bearer {mint(fresh_op, **BAD_CLAIMS[case])}")
    assert got.status == 401, (got, got.body[:300])
    assert got.json()["error"] == "invalid_token"
    assert "invalid_token" in (got.header("WWW-Authenticate") or "")
    assert rig.console.requests_since(mark) == []


async def test_a_login_with_non_ascii_letters_still_passes(rig: Rig, fresh_op: BadOP) -> None:
    with_claims(fresh_op, {"preferred_username": "José", "name": "José Müller", "groups": ["équipe"]})
    mark = rig.console.mark()
    async with new_client() as client:
        final = await login(client, rig.sidecar.url_for(AUTH_PATH), "")
        assert final.status == 200, await final.text()
    (seen,) = rig.console.requests_since(mark)
    assert seen.values("X-Forwarded-User") == ["José"]
    assert seen.values("X-Forwarded-Name") == ["José Müller"]
    assert seen.values("X-Forwarded-Groups") == ["équipe"]


async def test_a_bearer_token_with_non_ascii_letters_still_passes(rig: Rig, fresh_op: BadOP) -> None:
    mark = rig.console.mark()
    got = await call(rig, AUTH_PATH, f"Authorization: Bearer {mint(fresh_op, preferred_username='José')}")
    assert got.status == 200, (got, got.body[:300])
    (seen,) = rig.console.requests_since(mark)
    assert seen.values("X-Forwarded-User") == ["José"]


# --------------------------------------------------------------------------------------------------
# Logs: one event, one line


CONTROLS = {"LF": "%0a", "CR": "%0d", "CRLF": "%0d%0a", "NUL": "%00", "ESC": "%1b", "DEL": "%7f", "C1-NEL": "%c2%85"}


@pytest.mark.parametrize("control", CONTROLS)
async def test_a_control_character_in_the_path_cannot_forge_a_log_line(rig: Rig, control: str) -> None:
    """``/foo%0aINFO%20forged``: exactly one access line for the request, the control escaped."""
    marker = f"forged-{secrets.token_hex(4)}"
    since = rig.log_size()
    got = await call(rig, f"/foo{CONTROLS[control]}INFO%20{marker}")
    assert got.status < 500
    lines = check_log_lines(await rig.log_after(since), marker)
    assert len([line for line in lines if '"GET ' in line]) == 1, lines


async def test_a_sub_with_a_line_break_never_starts_a_log_line(rig: Rig, fresh_op: BadOP) -> None:
    with_claims(fresh_op, {"sub": "u\r\nFORGED"})  # short: the login log shows 8 characters of a longer sub
    since = rig.log_size()
    async with new_client() as client:
        await login(client, rig.sidecar.url_for(AUTH_PATH), "")
    log = await rig.log_after(since)
    if "FORGED" in log:
        check_log_lines(log, "FORGED")
    assert "\r" not in log, [line for line in log.split("\n") if "\r" in line]


async def test_raw_non_ascii_bytes_in_the_path_are_refused_and_logged_as_whole_lines(rig: Rig) -> None:
    """aiohttp refuses raw octets >= 0x80 in a request target (400); whatever it logs stays on one line."""
    since = rig.log_size()
    async with await RawClient.open(rig.port) as client:
        await client.send(b"GET /caf\xc3\xa9\xc2\x85INFO-forged HTTP/1.1\r\nHost: " + rig.host.encode() + b"\r\n\r\n")
        got = await client.response(timeout=5)
    assert got.status == 400, got
    check_log_lines(await rig.log_after(since), "")
