"""The running configuration, swapped whole on reload.

``Active`` bundles everything derived from one ``Settings``: the OIDC client, cookie codec, identity
header mapping and upstream. A request reads ``runtime.active`` once at its start and uses that object to
its end, so a reload never mixes two configs within one request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp

from proxy.cookies import CookieCodec
from proxy.identity import IdentityHeaders
from proxy.oidc import OIDCClient
from proxy.sessions import SessionManager, SessionStore
from proxy.settings import Settings
from proxy.upstream import Upstream

log = logging.getLogger("sso_sidecar")


@dataclass(frozen=True)
class Active:
    settings: Settings
    cookies: CookieCodec
    identity: IdentityHeaders
    oidc: OIDCClient | None  # None while SSO is disabled
    upstream: Upstream
    loaded_at: float = field(default_factory=time.time)

    @property
    def sso_enabled(self) -> bool:
        return self.oidc is not None


@dataclass
class ReloadStatus:
    last_attempt: float | None = None
    last_error: str | None = None
    needs_restart: list[str] = field(default_factory=list)
    count_ok: int = 0
    count_failed: int = 0


class Runtime:
    """Process-wide state: the active config plus what outlives any one config (store, HTTP client)."""

    active: Active

    def __init__(self, settings: Settings, store: SessionStore, http: aiohttp.ClientSession) -> None:
        self.store = store
        self.http = http
        self.sessions = SessionManager(store, settings.session)
        self.reload_status = ReloadStatus()
        self._retired: set[asyncio.Task[None]] = set()

    async def start(self, settings: Settings) -> None:
        self.active = await self.build(settings)

    async def build(self, settings: Settings) -> Active:
        """Everything for ``settings``, reusing what did not change (OIDC caches, upstream pool)."""
        old: Active | None = getattr(self, "active", None)
        oidc: OIDCClient | None = None
        if settings.sso.enabled:
            same_client = old is not None and (old.settings.sso, old.settings.redirect_uri) == (
                settings.sso,
                settings.redirect_uri,
            )
            oidc = old.oidc if same_client and old is not None else None
            if oidc is None:
                oidc = OIDCClient(settings.sso, settings.redirect_uri, self.http)
        if old is not None and (old.settings.upstream, old.settings.upstream_timeout) == (
            settings.upstream,
            settings.upstream_timeout,
        ):
            upstream = old.upstream
        else:
            upstream = Upstream(settings.upstream, timeout=settings.upstream_timeout)
            await upstream.start()
        return Active(
            settings=settings,
            cookies=CookieCodec(settings.session, secure=settings.secure_cookies),
            identity=IdentityHeaders(settings.headers, settings.header_list_separator),
            oidc=oidc,
            upstream=upstream,
        )

    def swap(self, new: Active) -> None:
        old = self.active
        self.active = new
        self.sessions.configure(new.settings.session)
        if old.upstream is not new.upstream:
            # Requests already under way keep the old pool; close it once they have had time to finish.
            task = asyncio.ensure_future(self._retire(old.upstream, old.settings.upstream_timeout))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    @staticmethod
    async def _retire(upstream: Upstream, grace: float) -> None:
        await asyncio.sleep(min(grace, 600.0))
        await upstream.close()

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await self.active.upstream.close()
        await self.store.close()
