"""Transparent token refresh: at most one refresh per session at a time, across workers and replicas.

A request whose session is near its access token's expiry tries to take the session's refresh lock in
the store. The winner refreshes and saves; everyone else (other requests, other replicas) carries on
with the current session, which is still valid — so a user never waits on somebody else's refresh, and
a rotating refresh token is never spent twice.

When the console is given the user's tokens (``pass_tokens``), a token it gets must never have expired. The ID
token then counts too (a refresh is due near either expiry), a request whose token has already expired waits for
the replica that holds the lock (instead of carrying on with the expired token), and a session whose token has
expired and cannot be renewed (no refresh token, the provider refused or could not be reached) ends.
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.config.model import PassTokensSettings
from proxy.errors import LoginError, ProviderError
from proxy.oidc.client import OIDCClient, TokenEndpointError
from proxy.sessions import Session, SessionManager
from proxy.sessions.model import keep_sign_in

log = logging.getLogger("sso_sidecar.refresh")

LOCK_TTL = 30.0  # longer than any refresh takes (http_timeout), short enough to recover from a crash
RETRY_AFTER = 30.0  # after a provider outage, how long a session waits before trying again
WAIT_STEP = 0.1  # how often a request whose token expired looks whether another replica's refresh is done


class Refresher:
    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        self._running: dict[str, asyncio.Task[Session | None]] = {}
        self._retry_at: dict[str, float] = {}

    def current(self, session: Session, passed: PassTokensSettings | None = None) -> bool:
        """Whether ``fresh`` would give ``session`` back as it is, with no I/O: no refresh due (or one is
        waiting out a provider outage), and no token the console is given has expired. Most requests end here,
        on a coroutine less; for the others ``fresh`` decides, with the same tests."""
        now = time.time()
        id_token = passed is not None and bool(passed.id_token)
        if session.refresh_due(now, id_token=id_token) and self._retry_at.get(session.id, 0.0) <= now:
            return False
        return passed is None or not session.tokens_expired(
            now, access_token=bool(passed.access_token), id_token=id_token
        )

    async def fresh(
        self, session: Session, oidc: OIDCClient, passed: PassTokensSettings | None = None
    ) -> Session | None:
        """``session``, refreshed if due; None when the provider refused the refresh (session ended), or when a
        token the console is given (``passed``) has expired and could not be renewed (session ended)."""
        now = time.time()
        id_token = passed is not None and bool(passed.id_token)
        if session.refresh_due(now, id_token=id_token) and self._retry_at.get(session.id, 0.0) <= now:
            task = self._running.get(session.id)
            if task is None:
                # Requests of one session on this worker share one attempt.
                task = asyncio.ensure_future(self._refresh(session, oidc, passed))
                self._running[session.id] = task
                task.add_done_callback(lambda _: self._running.pop(session.id, None))
            refreshed = await asyncio.shield(task)
            if refreshed is None:
                return None
            session = refreshed
        if passed is not None and session.tokens_expired(
            time.time(), access_token=bool(passed.access_token), id_token=id_token
        ):
            log.info("a token the console is given has expired and cannot be renewed: ending the session")
            await self._sessions.end(session)
            return None
        return session

    async def _refresh(self, session: Session, oidc: OIDCClient, passed: PassTokensSettings | None) -> Session | None:
        lock = await self._sessions.lock_refresh(session.id, LOCK_TTL)
        if lock is None:
            # Another worker or replica is refreshing this session right now: carry on with the current session,
            # unless the console would get an expired token from it.
            return await self._other_refresh(session, oidc, passed)
        id_token = passed is not None and bool(passed.id_token)
        try:
            # Read it again under the lock: another replica may have refreshed it since we loaded it,
            # and its refresh token may already be spent.
            current = await self._sessions.load(
                session.ticket, issuer=session.issuer, client_id=session.client_id, use_cache=False
            )
            if current is None or not current.refresh_due(time.time(), id_token=id_token):
                return current
            return await self._renew(current, oidc)
        finally:
            # Only after the new tokens are saved, so the next lock holder sees them.
            await self._sessions.unlock_refresh(session.id, lock)

    async def _other_refresh(
        self, session: Session, oidc: OIDCClient, passed: PassTokensSettings | None
    ) -> Session | None:
        """The session as another replica's refresh leaves it, for a request whose passed token has expired:
        read it again until that refresh is saved (at most the provider's timeout and a second)."""
        if passed is None or not session.tokens_expired(
            time.time(), access_token=bool(passed.access_token), id_token=bool(passed.id_token)
        ):
            return session
        deadline = time.monotonic() + oidc.settings.http_timeout + 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(WAIT_STEP)
            current = await self._sessions.load(
                session.ticket, issuer=session.issuer, client_id=session.client_id, use_cache=False
            )
            if current is None or current.refreshed_at != session.refreshed_at:
                return current
        return session

    async def _renew(self, session: Session, oidc: OIDCClient) -> Session | None:
        assert session.refresh_token is not None
        try:
            result = await oidc.refresh_login(session.refresh_token, previous_claims=session.claims)
        except TokenEndpointError as exc:
            if exc.error in ("invalid_grant", "invalid_token", "unauthorized_client"):
                log.info("refresh refused (%s): ending the session", exc.error)
                await self._sessions.end(session)
                return None
            return self._later(session, exc.message)
        except ProviderError as exc:
            return self._later(session, exc.message)
        except LoginError as exc:
            # A refreshed token that fails validation (another sub, bad signature): do not trust the session.
            log.warning("refresh returned an invalid token, ending the session: %s", exc.message)
            await self._sessions.end(session)
            return None
        tokens = result.tokens
        session.claims = keep_sign_in(session.claims, result.claims)  # the sign-in's auth_time and acr stay
        session.access_token = tokens.access_token
        session.refresh_token = tokens.refresh_token or session.refresh_token
        session.id_token = tokens.id_token or session.id_token
        session.access_expires_at = tokens.expires_at
        session.refreshed_at = time.time()
        await self._sessions.update(session)
        self._retry_at.pop(session.id, None)
        return session

    def _later(self, session: Session, reason: str) -> Session:
        # The provider is down or confused: keep the session (it is within its lifetime) and retry later.
        log.warning("refresh failed, keeping the session and retrying in %ds: %s", RETRY_AFTER, reason)
        if len(self._retry_at) > 10_000:
            now = time.time()
            self._retry_at = {k: v for k, v in self._retry_at.items() if v > now}
        self._retry_at[session.id] = time.time() + RETRY_AFTER
        return session
