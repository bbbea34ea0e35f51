"""The running configuration, swapped whole on reload.

``Active`` bundles everything derived from one ``Settings``: the OIDC client, cookie codec, identity
header mapping and upstream. A request reads ``runtime.active`` once at its start and uses that object to
its end, so a reload never mixes two configs within one request.

The runtime is changed through its methods only: ``swap`` (a reload), ``hold`` and ``resume`` (whether it
proxies at all), ``pin``/``unpin``. Where its config comes from is its ``source`` (``proxy.runtime.source``).

An ``Upstream`` (a connection pool) outlives the config that created it while requests still use it:
``pin()``/``unpin()`` count every request from its start to its last byte (a websocket until it closes), and a
pool that a reload replaced is closed when its count reaches zero, not after a guessed grace period,
so a download or websocket that spans any number of reloads is never cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from proxy.auth.console import ConsoleIdentity
from proxy.auth.cookies import CookieCodec
from proxy.auth.identity import IdentityHeaders
from proxy.auth.routes import RecentDenials
from proxy.config.model import PassTokensSettings, Settings
from proxy.oidc.client import OIDCClient
from proxy.runtime.source import ConfigSource
from proxy.sessions import SessionManager, SessionStore
from proxy.sessions.refresh import Refresher
from proxy.telemetry.metrics import Metrics
from proxy.upstream.forward import Upstream

log = logging.getLogger("sso_sidecar")


@dataclass(frozen=True)
class Active:
    settings: Settings
    cookies: CookieCodec
    identity: IdentityHeaders
    oidc: OIDCClient | None  # None while SSO is disabled
    upstream: Upstream
    loaded_at: float = field(default_factory=time.time)
    # The settings page's own host (``admin.public_url``): it serves the page, never the console.
    admin_host: str | None = None
    # What the console is told besides the identity headers (assertion, roles, tokens): None while all are off.
    console: ConsoleIdentity | None = None
    # The tokens the console is given (``pass_tokens``), which a session must keep valid; None while off.
    passed_tokens: PassTokensSettings | None = None


@dataclass
class ReloadStatus:
    last_attempt: float | None = None
    last_error: str | None = None  # every problem, "key: cause; key: cause"; None after a good reload
    last_error_at: float | None = None
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
        self.refresher = Refresher(self.sessions)
        self.reload_status = ReloadStatus()
        self.denials = RecentDenials()  # the last refusals and the routes they hit, for /oauth2/status
        self.metrics = Metrics()
        # What the process was started with: listen, store... changed since then need a restart, also
        # when an earlier reload already carried the change (and reported it).
        self.boot_settings = settings
        self.reload_lock = asyncio.Lock()
        # The config file and the layer over it (the settings page's): what every reload reads.
        self.source = ConfigSource()
        # Why this process does not proxy now (``hold``), or None. Read by every proxied request: never fail
        # open to the file's config. Written only by ``hold`` and ``resume``.
        self.closed: str | None = None
        self._users: dict[Upstream, int] = {}
        self._retiring: set[Upstream] = set()
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self, settings: Settings) -> None:
        self.active = await self.build(settings)
        self.metrics.config_loaded(settings.digest, settings.sso.enabled)

    def hold(self, reason: str) -> None:
        """Stop proxying: every proxied request gets 503 and ``/readyz`` says ``reason``, until ``resume``. For a
        config this process cannot confirm (the settings page's record cannot be read or applied)."""
        self.closed = reason
        self.metrics.page_settings_closed.set(1)

    def resume(self) -> None:
        """Proxy again."""
        self.closed = None
        self.metrics.page_settings_closed.set(0)

    def pin(self) -> Upstream:
        """Keep the active config's upstream pool open until ``unpin``: one request's worth."""
        upstream = self.active.upstream
        self._users[upstream] = self._users.get(upstream, 0) + 1
        return upstream

    def unpin(self, upstream: Upstream) -> None:
        left = self._users[upstream] - 1
        if left:
            self._users[upstream] = left
            return
        del self._users[upstream]
        if upstream in self._retiring:
            self._retiring.discard(upstream)
            log.info("upstream pool of a previous config closed: the last request using it ended")
            self._close(upstream)

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
        # A reload that changes none of what the upstream is built from keeps the pool.
        wanted = settings.upstream
        if old is not None and old.settings.upstream == wanted:
            upstream = old.upstream
        else:
            upstream = Upstream(
                wanted.url,
                timeout=wanted.timeout,
                client=wanted.client,
                max_connections=wanted.max_connections,
                relay_writer=wanted.relay_writer,
            )
            await upstream.start()
        identity = IdentityHeaders(
            settings.headers, settings.header_list_separator, settings.access.groups_claim, console_headers(settings)
        )
        return Active(
            settings=settings,
            cookies=CookieCodec(settings.session, secure=settings.secure_cookies),
            identity=identity,
            oidc=oidc,
            upstream=upstream,
            admin_host=settings.admin.public_host if settings.admin.enabled else None,
            console=_console(settings, identity, old),
            passed_tokens=settings.pass_tokens if settings.pass_tokens.enabled else None,
        )

    def swap(self, new: Active) -> None:
        old = self.active
        self.active = new
        self.sessions.configure(new.settings.session)
        if old.upstream is not new.upstream:
            # Requests under way keep the old pool; the last of them to finish closes it.
            if self._users.get(old.upstream):
                self._retiring.add(old.upstream)
                log.info("upstream pool of the previous config stays open for %d request(s) still using it",
                         self._users[old.upstream])  # fmt: skip
            else:
                self._close(old.upstream)

    def discard(self, candidate: Active) -> None:
        """Release what ``build`` opened for a config that was then refused."""
        if candidate.upstream is not self.active.upstream and not self._users.get(candidate.upstream):
            self._close(candidate.upstream)

    def _close(self, upstream: Upstream) -> None:
        task = asyncio.ensure_future(upstream.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """At shutdown, after the server has drained: close every pool, retired or not."""
        for upstream in (self.active.upstream, *self._retiring):
            await upstream.close()
        self._retiring.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.store.close()


def console_headers(settings: Settings) -> tuple[str, ...]:
    """The headers ``assertion``, ``roles`` and ``pass_tokens`` write: every request is stripped of them."""
    names = [settings.pass_tokens.access_token, settings.pass_tokens.id_token]
    if settings.assertion is not None:
        names.append(settings.assertion.header)
    if settings.roles is not None:
        names.append(settings.roles.header)
    return tuple(n for n in names if n)


def _identity_inputs(settings: Settings) -> tuple[object, ...]:
    """Everything a ``ConsoleIdentity`` is built from: while it is equal, a reload keeps the object (and the
    assertions it has signed)."""
    return (
        settings.assertion, settings.roles, settings.pass_tokens, settings.session.cookie_secrets, settings.public_url,
        settings.headers, settings.header_list_separator, settings.access.groups_claim,
    )  # fmt: skip


def _console(settings: Settings, identity: IdentityHeaders, old: Active | None) -> ConsoleIdentity | None:
    if settings.assertion is None and settings.roles is None and not settings.pass_tokens.enabled:
        return None
    if old is not None and old.console is not None and _identity_inputs(old.settings) == _identity_inputs(settings):
        return old.console
    return ConsoleIdentity(settings, identity)


RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
