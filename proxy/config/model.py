"""The config model: frozen dataclasses that a running process reads and a reload swaps whole.

``load.load_settings`` builds a ``Settings`` from the YAML file (``reader`` reads the values,
``validate`` checks each section, ``redis_url`` parses the Redis URL); nothing here reads a file or the
environment. ``Secret`` keeps secret values out of ``repr``, logs and tracebacks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from yarl import URL

CALLBACK_PATH = "/oauth2/callback"
SIGNED_OUT_PATH = "/oauth2/signed_out"
BACKCHANNEL_LOGOUT_PATH = "/oauth2/backchannel-logout"
JWKS_PATH = "/oauth2/jwks.json"  # the signed assertion's public keys

DEFAULT_SCOPES = ("openid", "profile", "email")
DEFAULT_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Forwarded-User", "preferred_username"),
    ("X-Forwarded-Email", "email"),
    ("X-Forwarded-Given-Name", "given_name"),
    ("X-Forwarded-Family-Name", "family_name"),
    ("X-Forwarded-Name", "name"),
    ("X-Forwarded-Groups", "groups"),
)
# Asymmetric algorithms only: an HMAC-signed ID token would be keyed with the client secret, and "none"
# is never acceptable for tokens we act on (OIDC Core 3.1.3.7).
SUPPORTED_ID_TOKEN_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class Secret:
    """A string that never shows itself in ``repr``/``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ExtraIssuer:
    """Another issuer whose JWT bearer tokens API clients may present (``sso.extra_issuers``)."""

    issuer_url: str
    audiences: tuple[str, ...]


@dataclass(frozen=True)
class SSOSettings:
    enabled: bool = True
    issuer_url: str = ""
    client_id: str = ""
    client_secret: Secret | None = None
    client_secret_file: str | None = None
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    # None: pick from the provider's token_endpoint_auth_methods_supported (basic preferred).
    token_endpoint_auth_method: str | None = None
    # None: accept what the provider advertises in id_token_signing_alg_values_supported.
    id_token_signing_algs: tuple[str, ...] | None = None
    clock_skew: float = 60.0
    http_timeout: float = 10.0
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    # Bearer tokens from API clients: None means [client_id]; an empty tuple accepts none from this issuer.
    api_audiences: tuple[str, ...] | None = None
    extra_issuers: tuple[ExtraIssuer, ...] = ()
    # The issuer's own ID tokens as bearer credentials: off, since sign-out shows them (``id_token_hint``).
    accept_id_tokens: bool = False
    # What sign-out tells the provider about the user: "auto", "id_token_hint", or the name of the ID-token
    # claim sent as ``logout_hint`` (with ``client_id``, never the ID token). See ``proxy.oidc.client.logout_hints``.
    logout_hint: str = "auto"

    @property
    def bearer_audiences(self) -> tuple[str, ...]:
        return (self.client_id,) if self.api_audiences is None else self.api_audiences

    @property
    def identity(self) -> tuple[str, str]:
        """What sessions are bound to: a session from another issuer or client is not trusted."""
        return (self.issuer_url, self.client_id)


@dataclass(frozen=True)
class RedisSettings:
    """How to reach the Redis session store: one server, the master a Sentinel group names, or a Cluster."""

    mode: str = "single"  # single | sentinel | cluster
    # single: the server; sentinel: the sentinels; cluster: seed nodes (the others are discovered).
    addresses: tuple[tuple[str, int], ...] = (("127.0.0.1", 6379),)
    unix_path: str | None = None
    db: int = 0
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: Secret | None = None  # the Redis servers' (for Sentinel: the master's and replicas')
    master_name: str = ""
    sentinel_password: Secret | None = None
    timeout: float = 2.0  # bounds every store call: a request waits at most this long for Redis

    @property
    def url(self) -> str:
        """The target as a ``redis_url``, with the password masked: for logs and ``check``."""
        scheme = {"single": "redis", "sentinel": "redis+sentinel", "cluster": "redis+cluster"}[self.mode]
        scheme = scheme.replace("redis", "rediss", 1) if self.tls else scheme
        user = (self.username or "") + (":****" if self.password else "")
        auth = f"{user}@" if user else ""
        if self.unix_path is not None:
            return f"unix://{auth}{self.unix_path}" + (f"?db={self.db}" if self.db else "")
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)
        path = {"single": f"/{self.db}", "sentinel": f"/{self.master_name}/{self.db}", "cluster": ""}[self.mode]
        return f"{scheme}://{auth}{hosts}{path}"


@dataclass(frozen=True)
class SessionSettings:
    store: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"  # the effective target (``redis.url``), password masked
    redis: RedisSettings = field(default_factory=RedisSettings)
    cookie_secrets: tuple[Secret, ...] = ()
    cookie_name: str = "sso_sidecar"
    lifetime: float = 8 * 3600.0
    idle_timeout: float = 3600.0
    login_timeout: float = 600.0
    max_pending_logins: int = 5
    # Sign-ins started and not yet finished from one client address (an IPv6 /64), kept in the store until
    # login_timeout (about half a KB each): anonymous traffic from one source cannot fill it, and a large office
    # behind one NAT address still signs in. Behind a proxy only with trusted_proxies set.
    max_pending_logins_per_address: int = 1000
    # How long a worker may reuse a session it read from Redis without asking again; sign-out and
    # back-channel logout reach every worker at once through Redis pub/sub. 0 turns the cache off.
    cache_ttl: float = 5.0


@dataclass(frozen=True)
class AccessSettings:
    allowed_email_domains: tuple[str, ...] = ()
    allowed_emails: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    groups_claim: str = "groups"

    @property
    def restricted(self) -> bool:
        return bool(self.allowed_email_domains or self.allowed_emails or self.allowed_groups)


@dataclass(frozen=True)
class ReloadSettings:
    """How the running process notices a changed config (SIGHUP always works)."""

    watch: bool = True
    watch_interval: float = 1.0


@dataclass(frozen=True)
class BreakGlassSettings:
    """Lock-out protection: a secret token that lets an operator past SSO. Off while ``token`` is None."""

    token: Secret | None = None
    ttl: float = 900.0
    user: str = "break-glass"

    @property
    def enabled(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class StatusSettings:
    admin_groups: tuple[str, ...] = ()  # deprecated: admin.groups (page admins may read the status too)


@dataclass(frozen=True)
class AdminSettings:
    """The SSO settings page (``/oauth2/admin``) and who may use it once SSO is on."""

    enabled: bool = False
    emails: tuple[str, ...] = ()  # lower case; a verified email claim must be one of them
    groups: tuple[str, ...] = ()  # in access.groups_claim
    settings_file: str = ""  # where page settings live without Redis
    # Where this replica remembers the newest page-settings version it accepted (``proxy.admin.anchor``): a store that
    # is emptied, or given an older record back, cannot roll a restarted replica back. Default: beside
    # ``settings_file``.
    state_file: str = ""
    # The page on an origin of its own, so that no script of the console's can reach it; None: the console's.
    public_url: URL | None = None

    @property
    def anchor_file(self) -> str:
        """The high-water mark's file: ``state_file``, else beside ``settings_file``, else none."""
        if self.state_file:
            return self.state_file
        return self.settings_file + ".state" if self.settings_file else ""

    @property
    def public_host(self) -> str | None:
        """The ``Host`` the page's own origin is reached by (lower case), or None without one."""
        return None if self.public_url is None else self.public_url.raw_authority.lower()


@dataclass(frozen=True)
class UpstreamSettings:
    """The console behind the sidecar and how it is reached: one field of ``Settings``, so a reload compares it
    whole (the connection pool is kept while it is the same) and a new option cannot be left out of that.

    The YAML keys stay top-level: ``upstream`` (the URL), ``upstream_timeout``, ``upstream_client``,
    ``upstream_max_connections``, ``relay_writer`` (``KEYS``)."""

    url: URL
    timeout: float = 300.0  # bounds each wait for the console's answer head and next bytes
    client: str = "h1"  # h1 | aiohttp: the client for plain HTTP to the console
    max_connections: int = 256  # plain-HTTP connections to the console per process, idle or in use
    relay_writer: str = "lean"  # lean | aiohttp: who writes a whole answer back to the client

    KEYS: ClassVar[Mapping[str, str]] = {
        "url": "upstream",
        "timeout": "upstream_timeout",
        "client": "upstream_client",
        "max_connections": "upstream_max_connections",
        "relay_writer": "relay_writer",
    }

    def changed_keys(self, new: UpstreamSettings) -> list[str]:
        """The YAML keys whose value differs in ``new``."""
        return [key for name, key in self.KEYS.items() if getattr(self, name) != getattr(new, name)]


# The methods a rule may name (``skip_auth``'s and ``routes``' ``methods``, read by ``validate`` and ``validate_routes``
# from this one list): RFC 9110 9.3 and RFC 5789, and the WebDAV methods consoles serve (RFC 4918, 3253, 4791, 5323).
# A request matches a rule's methods by name (``proxy.auth.routes.matches``): one of any other method matches only
# rules that name none.
HTTP_METHODS = (
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "MKCALENDAR",
)  # fmt: skip


@dataclass(frozen=True)
class SkipRule:
    methods: frozenset[str] | None  # None: any method
    pattern: re.Pattern[str]
    source: str


ASSERTION_ALGORITHMS = ("ES256", "RS256", "EdDSA", "HS256")
DEFAULT_ASSERTION_CLAIMS = ("sub", "preferred_username", "email", "name", "groups")


@dataclass(frozen=True)
class AssertionSettings:
    """``assertion:``, a signed JWT about the caller on every request that reaches the console (off while
    ``Settings.assertion`` is None). ``proxy.config.validate_identity`` reads it, ``proxy.auth.assertion`` signs."""

    header: str = "X-Sso-Assertion"  # "Authorization": the value is "Bearer <jwt>"
    algorithm: str = "ES256"
    key_files: tuple[str, ...] = ()  # newest first: the first signs, every one is published
    keys: tuple[Secret, ...] = ()  # the PEM text of each key file, in the same order
    secret: Secret | None = None  # HS256 only: the shared secret (never published)
    secret_file: str | None = None
    audience: str = ""  # "": the upstream URL
    lifetime: float = 300.0
    claims: tuple[str, ...] = DEFAULT_ASSERTION_CLAIMS


@dataclass(frozen=True)
class RoleRule:
    """One rule of ``roles.rules``: a user in one of ``groups`` or with one of ``emails`` has ``role``."""

    role: str
    groups: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()  # lower case; matched against a verified email only


@dataclass(frozen=True)
class RolesSettings:
    """``roles:``, console roles from the user's groups and emails (off while ``Settings.roles`` is None)."""

    header: str = "X-Forwarded-Roles"
    rules: tuple[RoleRule, ...] = ()
    default: tuple[str, ...] = ()  # the roles of a user no rule matched


@dataclass(frozen=True)
class PassTokensSettings:
    """``pass_tokens:``, the headers that carry the user's own tokens ("" sends none; "Authorization": Bearer)."""

    access_token: str = ""
    id_token: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.access_token or self.id_token)


@dataclass(frozen=True)
class Route:
    """One entry of ``routes`` (``validate_routes``): who may reach the paths it matches, and how recent or strong
    their sign-in must be. Matched like a ``SkipRule`` (``proxy.auth.routes``); the first match wins."""

    index: int
    methods: frozenset[str] | None  # None: any method; GET brings HEAD
    pattern: re.Pattern[str]
    access: AccessSettings | None = None  # None: the top-level ``access`` applies
    max_age: float | None = None  # seconds: the sign-in (``auth_time``) may be at most this old
    acr_values: tuple[str, ...] = ()  # the sign-in's ``acr`` must be one of these

    @property
    def name(self) -> str:
        return f"routes[{self.index}]"

    @property
    def steps_up(self) -> bool:
        """Whether the route asks more of a sign-in than that it exists."""
        return self.max_age is not None or bool(self.acr_values)


@dataclass(frozen=True)
class Settings:
    public_url: URL
    upstream: UpstreamSettings
    sso: SSOSettings
    session: SessionSettings
    listen_host: str = "0.0.0.0"  # noqa: S104 - a sidecar listens on the pod's interfaces
    listen_port: int = 4180
    metrics_listen: tuple[str, int] | None = None
    workers: int = 1
    headers: tuple[tuple[str, str], ...] = DEFAULT_HEADERS
    header_list_separator: str = ","
    access: AccessSettings = field(default_factory=AccessSettings)
    skip_auth: tuple[SkipRule, ...] = ()
    routes: tuple[Route, ...] = ()  # per-path rules, first match wins (``proxy.auth.routes``)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Hosts (host or host:port, lower case) an absolute return-to URL may name besides public_url's own.
    allowed_redirect_hosts: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "text"  # text | json
    server_loop: str = "lean"  # lean | aiohttp: each connection's request loop (``proxy.server``)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    break_glass: BreakGlassSettings = field(default_factory=BreakGlassSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    # Identity for the console beyond the headers (``proxy.config.validate_identity``): None while off.
    assertion: AssertionSettings | None = None
    roles: RolesSettings | None = None
    pass_tokens: PassTokensSettings = field(default_factory=PassTokensSettings)
    # Where the effective ``sso`` section came from: "file", or "page" (the settings page replaced it).
    sso_source: str = "file"
    source: str = ""
    digest: str = ""
    secret_files: tuple[str, ...] = ()

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.scheme == "https"

    def url_for(self, path: str) -> str:
        return str(self.public_url.with_path(path))

    @property
    def redirect_uri(self) -> str:
        return self.url_for(CALLBACK_PATH)

    @property
    def post_logout_redirect_uri(self) -> str:
        return self.url_for(SIGNED_OUT_PATH)

    @property
    def backchannel_logout_uri(self) -> str:
        return self.url_for(BACKCHANNEL_LOGOUT_PATH)

    def restart_needed(self, new: Settings) -> list[str]:
        """Keys whose change cannot apply to a running process."""
        keys = []
        if (self.listen_host, self.listen_port) != (new.listen_host, new.listen_port):
            keys.append("listen")
        if self.metrics_listen != new.metrics_listen:
            keys.append("metrics_listen")
        if self.workers != new.workers:
            keys.append("workers")
        if self.session.store != new.session.store:
            keys.append("session.store")
        if self.admin.settings_file != new.admin.settings_file:
            keys.append("admin.settings_file")
        if self.admin.anchor_file != new.admin.anchor_file:
            keys.append("admin.state_file")
        if self.session.redis_url != new.session.redis_url:
            keys.append("session.redis_url")
        elif self.session.redis != new.session.redis:
            keys.append("session.redis_*")
        return keys


def is_loopback_host(host: str | None) -> bool:
    """Where plain http is allowed: an issuer (``validate_sso``) and its discovered endpoints (``proxy.oidc``)."""
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
