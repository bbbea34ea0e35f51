"""The headers the console gets for a caller when ``assertion``, ``roles`` or ``pass_tokens`` is on, for the gate
and for forward auth alike.

``auth.console`` builds and remembers them; this module brings what that needs from the store: a session served
from the in-process cache carries no tokens (``Session.tokens_elided``), so the first request of a session that
passes tokens reads it whole once. Expired tokens never get here: ``sessions.refresh`` renews them first, or ends
the session.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.auth.bearer import bearer_token
from proxy.auth.console import ConsoleIdentity, Headers, PassedTokens
from proxy.runtime.state import Active, Runtime
from proxy.sessions import Session


async def console_values(
    request: web.BaseRequest,
    runtime: Runtime,
    active: Active,
    console: ConsoleIdentity,
    claims: Mapping[str, Any],
    session: Session | None,
) -> Headers | None:
    """Every header the console gets for this caller; None when the session is gone meanwhile (signed out on
    another replica between the cache and the store): the caller is then treated as signed out."""
    now = time.time()
    if session is None:
        return console.for_bearer(claims, bearer_token(request) or "", now)
    hit = console.cached(session.id, session.refreshed_at, now)
    if hit is not None:
        return hit
    tokens = None
    if console.passes_tokens:
        whole = session
        if session.tokens_elided:
            sso = active.settings.sso
            whole = await runtime.sessions.load(  # type: ignore[assignment]
                session.ticket, issuer=sso.issuer_url, client_id=sso.client_id, use_cache=False
            )
            if whole is None:
                return None
        passed = active.passed_tokens
        access, id_token = bool(passed and passed.access_token), bool(passed and passed.id_token)
        tokens = PassedTokens(
            whole.access_token, whole.id_token, whole.tokens_expire_at(access_token=access, id_token=id_token)
        )
        session = whole
    not_after = session.created_at + active.settings.session.lifetime
    return console.for_session(
        session.id, session.refreshed_at, session.claims, not_after=not_after, tokens=tokens, now=now
    )
