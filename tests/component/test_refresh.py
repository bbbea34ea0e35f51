"""Token refresh when the console is given the user's tokens (``pass_tokens``; ``proxy.sessions.refresh``).

Two refreshers over one store stand for two replicas; the provider is a stand-in whose refresh waits until the
test lets it finish, so the moment another replica holds the refresh lock is played exactly, not hoped for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from proxy.config.model import PassTokensSettings, Secret, SessionSettings, SSOSettings
from proxy.oidc.client import LoginResult, TokenSet
from proxy.sessions import MemoryStore, Session, SessionManager
from proxy.sessions.refresh import Refresher
from support.waiting import eventually

SETTINGS = SessionSettings(cookie_secrets=(Secret("n" * 40),), lifetime=3600, idle_timeout=3600)
PASSED = PassTokensSettings(access_token="X-Forwarded-Access-Token")


class Provider:
    """Answers a refresh with new tokens once ``release`` is set; counts the refreshes."""

    def __init__(self) -> None:
        self.settings = SSOSettings(http_timeout=5.0)
        self.release = asyncio.Event()
        self.refreshes = 0

    async def refresh_login(self, refresh_token: str, *, previous_claims: Any) -> LoginResult:
        self.refreshes += 1
        await self.release.wait()
        tokens = TokenSet(
            "", f"access-{self.refreshes}", f"refresh-{self.refreshes}", time.time() + 300, "Bearer", None
        )
        return LoginResult(tokens=tokens, claims=dict(previous_claims))


async def expired_session(manager: SessionManager, *, refresh_token: str | None = "refresh-0") -> Session:
    session = await manager.create(
        claims={"sub": "alice"}, id_token="id", access_token="access-0", refresh_token=refresh_token,
        access_expires_at=time.time() - 1, issuer="https://idp", client_id="c",
    )  # fmt: skip
    session.refreshed_at = session.created_at = time.time() - 301
    await manager.save(session)
    return session


@pytest.fixture
def replicas() -> tuple[SessionManager, Refresher, Refresher]:
    manager = SessionManager(MemoryStore(), SETTINGS)
    return manager, Refresher(manager), Refresher(SessionManager(manager.store, SETTINGS))


async def test_a_request_with_an_expired_passed_token_waits_for_the_replica_that_refreshes(replicas):
    manager, first, second = replicas
    provider = Provider()
    session = await expired_session(manager)
    one = asyncio.ensure_future(first.fresh(session, provider, PASSED))  # type: ignore[arg-type]
    while provider.refreshes == 0:
        await asyncio.sleep(0)  # the first replica holds the lock and waits for the provider
    reads = 0
    load = second._sessions.load

    async def counted(*args: Any, **kwargs: Any) -> Session | None:
        nonlocal reads
        reads += 1
        return await load(*args, **kwargs)

    second._sessions.load = counted  # type: ignore[method-assign]
    two = asyncio.ensure_future(second.fresh(session, provider, PASSED))  # type: ignore[arg-type]
    await eventually(lambda: reads >= 3, what="the second replica to look for the refreshed session twice")
    assert not two.done(), "the second replica must not go on with the expired token"
    provider.release.set()
    refreshed = await asyncio.gather(one, two)
    assert [s.access_token for s in refreshed if s is not None] == ["access-1", "access-1"]
    assert provider.refreshes == 1  # one refresh, whatever the number of replicas


async def test_without_passed_tokens_the_other_replica_goes_on_at_once(replicas):
    manager, first, second = replicas
    provider = Provider()
    session = await expired_session(manager)
    one = asyncio.ensure_future(first.fresh(session, provider))  # type: ignore[arg-type]
    while provider.refreshes == 0:
        await asyncio.sleep(0)
    current = await second.fresh(session, provider)  # type: ignore[arg-type]
    assert current is not None and current.access_token == "access-0"  # as before: never waits on another
    provider.release.set()
    await one


async def test_an_expired_passed_token_without_a_refresh_token_ends_the_session(replicas):
    manager, first, _ = replicas
    session = await expired_session(manager, refresh_token=None)
    assert await first.fresh(session, Provider(), PASSED) is None  # type: ignore[arg-type]
    assert await manager.load(session.ticket, issuer="https://idp", client_id="c") is None
    kept = await expired_session(manager, refresh_token=None)
    assert await first.fresh(kept, Provider()) is kept  # type: ignore[arg-type]  # not passed: the session goes on


async def test_a_session_counts_as_current_only_where_fresh_would_hand_it_back_unchanged(replicas):
    """``current`` (the gate's path, without a coroutine) is True only when ``fresh`` would neither refresh, wait
    nor end the session: every case where it would, the gate leaves to ``fresh``."""
    manager, refresher, _ = replicas
    due = await expired_session(manager)  # its access token expired, with a refresh token
    assert not refresher.current(due) and not refresher.current(due, PASSED)
    refresher._retry_at[due.id] = time.time() + 30  # the provider was down: no refresh for a while...
    assert refresher.current(due)  # ...and no token given to the console: fresh hands it back as it is
    assert await refresher.fresh(due, Provider()) is due  # type: ignore[arg-type]
    assert not refresher.current(due, PASSED)  # ...but the console would be given an expired token
    unrenewable = await expired_session(manager, refresh_token=None)
    assert refresher.current(unrenewable)  # nothing due without a refresh token, nothing passed
    assert not refresher.current(unrenewable, PASSED)
    assert await refresher.fresh(unrenewable, Provider(), PASSED) is None  # type: ignore[arg-type]
    live = await manager.create(
        claims={"sub": "bob"}, id_token="id", access_token="a", refresh_token="r",
        access_expires_at=time.time() + 300, issuer="https://idp", client_id="c",
    )  # fmt: skip
    assert refresher.current(live) and refresher.current(live, PASSED)
    assert await refresher.fresh(live, Provider(), PASSED) is live  # type: ignore[arg-type]
