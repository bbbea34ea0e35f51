"""Fixtures for the relying-party tests; a test module loads them with ``pytest_plugins = ["support.rp_fixtures"]``.

One badop for the whole session (``badop_server``), reset for every test (``op``); a fresh ``OIDCClient``
(``rp``, or ``make_rp(**sso_changes)``), and so fresh discovery and JWKS caches, per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.config.model import Secret, SSOSettings
from proxy.oidc.client import OIDCClient
from support.badop import BadOP, running_badop
from support.rp import REDIRECT_URI, Flow, MakeRP


@pytest.fixture(scope="session")
async def badop_server() -> AsyncIterator[BadOP]:
    async with running_badop("/realms/test") as op:
        yield op


@pytest.fixture
def op(badop_server: BadOP) -> BadOP:
    badop_server.reset()
    return badop_server


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_rp(op: BadOP, http_session: aiohttp.ClientSession) -> MakeRP:
    def make(**sso_changes: Any) -> OIDCClient:
        fields: dict[str, Any] = {
            "issuer_url": op.issuer,
            "client_id": op.client_id,
            "client_secret": Secret(op.client_secret),
            "http_timeout": 5.0,
        }
        fields.update(sso_changes)
        return OIDCClient(SSOSettings(**fields), REDIRECT_URI, http_session)

    return make


@pytest.fixture
def rp(make_rp: MakeRP) -> OIDCClient:
    return make_rp()


@pytest.fixture
def flow(rp: OIDCClient, http_session: aiohttp.ClientSession) -> Flow:
    return Flow(rp, http_session)
