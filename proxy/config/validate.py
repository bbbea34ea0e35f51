"""Validation of the config's top-level keys and small sections (``validate_sso`` and ``validate_session``
hold the two large ones).

``settings`` returns the ``Settings`` when the required keys could be read; every problem (each naming
its key, an unknown key with a did-you-mean) is recorded in the ``ConfigReader``, and ``load``
raises them all at once. Checks that span sections (more than one worker needs Redis) live here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from yarl import URL

from proxy.config import validate_identity, validate_routes, validate_session, validate_sso
from proxy.config.model import (
    DEFAULT_HEADERS,
    HTTP_METHODS,
    AccessSettings,
    AdminSettings,
    BreakGlassSettings,
    ReloadSettings,
    Settings,
    SkipRule,
    StatusSettings,
    UpstreamSettings,
    is_loopback_host,
)
from proxy.config.reader import ConfigReader, positive_int
from proxy.config.secrets import weakness
from proxy.config.validate_access import ACCESS_KEYS, access_rules

MIN_BREAK_GLASS_TOKEN_LENGTH = 24
MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL = 0.1, 3600.0
_REDIRECT_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::\d{1,5})?")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def settings(r: ConfigReader, raw: Mapping[str, Any]) -> Settings | None:
    """The whole config, or None when a required key is missing; the problems are in ``r``."""
    r.unknown(
        raw,
        {
            "listen", "public_url", "upstream", "sso", "headers", "header_list_separator", "session",
            "access", "skip_auth", "trusted_proxies", "metrics_listen", "workers", "upstream_timeout",
            "log_level", "log_format", "reload", "break_glass", "status", "allowed_redirect_hosts", "admin",
            "upstream_client", "upstream_max_connections", "assertion", "roles", "pass_tokens", "routes",
            "relay_writer", "server_loop",
        },
    )  # fmt: skip
    listen = r.host_port(raw, "listen", "listen") or ("0.0.0.0", 4180)  # noqa: S104
    public_url = parse_public_url(r, raw)
    upstream = r.url(raw, "upstream", "upstream", required=True)
    metrics_listen = r.host_port(raw, "metrics_listen", "metrics_listen")
    workers = r.get(raw, "workers", "workers", positive_int, 1)
    upstream_timeout = r.duration(raw, "upstream_timeout", "upstream_timeout", 300.0)
    upstream_client = r.string(raw, "upstream_client", "upstream_client") or "h1"
    if upstream_client not in ("h1", "aiohttp"):
        r.problem("upstream_client", "must be h1 or aiohttp")
        upstream_client = "h1"
    upstream_max_connections = r.get(raw, "upstream_max_connections", "upstream_max_connections", positive_int, 256)
    relay_writer = r.string(raw, "relay_writer", "relay_writer") or "lean"
    if relay_writer not in ("lean", "aiohttp"):
        r.problem("relay_writer", "must be lean or aiohttp")
        relay_writer = "lean"
    server_loop = r.string(raw, "server_loop", "server_loop") or "lean"
    if server_loop not in ("lean", "aiohttp"):
        r.problem("server_loop", "must be lean or aiohttp")
        server_loop = "lean"
    log_level = r.string(raw, "log_level", "log_level") or "info"
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        r.problem("log_level", "must be one of debug, info, warning, error")
    log_format = r.string(raw, "log_format", "log_format") or "text"
    if log_format not in ("text", "json"):
        r.problem("log_format", "must be text or json")
    sso = validate_sso.parse_sso(r, raw)
    session = validate_session.parse_session(r, raw)
    if workers > 1 and session.store != "redis":
        r.problem("workers", "more than one worker needs session.store: redis (memory sessions stay in one process)")
    headers = parse_headers(r, raw)
    separator = r.string(raw, "header_list_separator", "header_list_separator") or ","
    assertion, roles, pass_tokens = validate_identity.parse_identity(
        r, raw, headers=headers, headers_given="headers" in raw, upstream=str(upstream or ""), separator=separator
    )
    access = parse_access(r, raw)
    skip_auth = parse_skip_auth(r, raw)
    routes = validate_routes.parse_routes(r, raw, access)
    trusted = parse_trusted_proxies(r, raw)
    redirect_hosts = parse_redirect_hosts(r, raw)
    reload = parse_reload(r, raw)
    break_glass = parse_break_glass(r, raw)
    status = parse_status(r, raw)
    admin = parse_admin(r, raw)
    if admin.enabled:
        if not sso.enabled and not break_glass.enabled:
            r.problem("admin.enabled", "needs break_glass.token while sso is off: nobody could open the page otherwise")
        if session.store != "redis" and not admin.settings_file:
            r.problem("admin.settings_file", "is required with admin.enabled unless session.store is redis")
        elif not admin.anchor_file:
            r.problem(
                "admin.state_file",
                "is required with admin.enabled and session.store: redis: a writable file where this replica keeps "
                "the newest page-settings version it applied, so that a store emptied or given an older record "
                "cannot roll it back after a restart",
            )
        if not admin.emails and not admin.groups:
            r.problem("admin.enabled", "needs admin.emails or admin.groups: who may use the page once SSO is on")
    if (
        admin.public_url is not None
        and public_url is not None
        and admin.public_host == public_url.raw_authority.lower()
    ):
        r.problem("admin.public_url", "must be another origin than public_url (the console's): that is its purpose")
    if public_url is None or upstream is None:
        return None
    return Settings(
        listen_host=listen[0],
        listen_port=listen[1],
        public_url=public_url,
        upstream=UpstreamSettings(upstream, upstream_timeout, upstream_client, upstream_max_connections, relay_writer),
        sso=sso,
        session=session,
        metrics_listen=metrics_listen,
        workers=workers,
        headers=headers,
        header_list_separator=separator,
        access=access,
        skip_auth=skip_auth,
        routes=routes,
        trusted_proxies=trusted,
        allowed_redirect_hosts=redirect_hosts,
        log_level=log_level.lower(),
        log_format=log_format,
        server_loop=server_loop,
        reload=reload,
        break_glass=break_glass,
        status=status,
        admin=admin,
        assertion=assertion,
        roles=roles,
        pass_tokens=pass_tokens,
    )


def parse_public_url(r: ConfigReader, raw: Mapping[str, Any]) -> URL | None:
    """How browsers reach the sidecar: the root of a host, as the sidecar serves all of it."""
    url = r.url(raw, "public_url", "public_url", required=True)
    if url is not None and url.path not in ("", "/"):
        r.problem("public_url", "must not have a path: the sidecar serves the whole host")
    return None if url is None else url.with_path("/")


def parse_redirect_hosts(r: ConfigReader, raw: Mapping[str, Any]) -> tuple[str, ...]:
    hosts = r.string_list(raw, "allowed_redirect_hosts", "allowed_redirect_hosts") or ()
    for i, host in enumerate(hosts):
        if not _REDIRECT_HOST.fullmatch(host.lower()):
            r.problem(
                f"allowed_redirect_hosts[{i}]", f"{host!r} must be a host name or host:port, e.g. app.example.com"
            )
    return tuple(h.lower() for h in hosts)


def parse_headers(r: ConfigReader, raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    value = raw.get("headers")
    if value is None:
        return DEFAULT_HEADERS
    if not isinstance(value, dict):
        r.problem("headers", "must be a mapping of upstream header name to claim name")
        return DEFAULT_HEADERS
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, claim in value.items():
        key = f"headers.{name}"
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            r.problem(key, "is not a valid HTTP header name")
            continue
        if not isinstance(claim, str) or not claim:
            r.problem(key, "must name a claim (a string)")
            continue
        normal = name.lower().replace("_", "-")
        if normal in seen:
            r.problem(key, "is mapped twice (header names are case-insensitive, '_' equals '-')")
            continue
        if normal in ("authorization", "cookie", "host", "connection", "content-length", "transfer-encoding"):
            r.problem(key, "cannot be used as an identity header")
            continue
        seen.add(normal)
        result.append((name, claim))
    return tuple(result)


def parse_reload(r: ConfigReader, raw: Mapping[str, Any]) -> ReloadSettings:
    s = r.section(raw, "reload", {"watch", "watch_interval"}, "reload")
    interval = r.duration(s, "watch_interval", "reload.watch_interval", 1.0)
    if not MIN_WATCH_INTERVAL <= interval <= MAX_WATCH_INTERVAL:
        r.problem("reload.watch_interval", "must be between 100ms and 1h")
        interval = 1.0
    return ReloadSettings(watch=r.boolean(s, "watch", "reload.watch", True), watch_interval=interval)


def parse_break_glass(r: ConfigReader, raw: Mapping[str, Any]) -> BreakGlassSettings:
    s = r.section(raw, "break_glass", {"token", "token_file", "ttl", "user"}, "break_glass")
    if not s:
        return BreakGlassSettings()
    token, token_file = r.one_secret(s, "token", "break_glass", required=True)
    key = "break_glass.token_file" if token_file else "break_glass.token"
    if token is not None and len(token.reveal()) < MIN_BREAK_GLASS_TOKEN_LENGTH:
        r.problem(key, f"must be at least {MIN_BREAK_GLASS_TOKEN_LENGTH} characters (openssl rand -base64 24)")
    elif token is not None and (weak := weakness(token.reveal())) is not None:
        r.problem(key, weak.replace("-base64 32", "-base64 24"))
    ttl = r.duration(s, "ttl", "break_glass.ttl", 900.0)
    if not 0 < ttl <= 86400:
        r.problem("break_glass.ttl", "must be positive and at most 1d")
    user = r.string(s, "user", "break_glass.user") or "break-glass"
    return BreakGlassSettings(token=token, ttl=ttl, user=user)


def parse_status(r: ConfigReader, raw: Mapping[str, Any]) -> StatusSettings:
    s = r.section(raw, "status", {"admin_groups"}, "status")
    return StatusSettings(admin_groups=r.string_list(s, "admin_groups", "status.admin_groups") or ())


def parse_admin(r: ConfigReader, raw: Mapping[str, Any]) -> AdminSettings:
    s = r.section(raw, "admin", {"enabled", "emails", "groups", "settings_file", "state_file", "public_url"}, "admin")
    emails = r.string_list(s, "emails", "admin.emails") or ()
    for i, e in enumerate(emails):
        if e.count("@") != 1:
            r.problem(f"admin.emails[{i}]", f"{e!r} is not an email address")
    return AdminSettings(
        enabled=r.boolean(s, "enabled", "admin.enabled", False),
        emails=tuple(e.lower() for e in emails),
        groups=r.string_list(s, "groups", "admin.groups") or (),
        settings_file=r.string(s, "settings_file", "admin.settings_file") or "",
        state_file=r.string(s, "state_file", "admin.state_file") or "",
        public_url=parse_admin_public_url(r, s),
    )


def parse_admin_public_url(r: ConfigReader, s: Mapping[str, Any]) -> URL | None:
    """The settings page's own origin: the root of a host, https unless it is a loopback one."""
    url = r.url(s, "public_url", "admin.public_url")
    if url is None:
        return None
    if url.path not in ("", "/"):
        r.problem("admin.public_url", "must not have a path: the page's origin serves only the page")
        return None
    if url.scheme != "https" and not is_loopback_host(url.host):
        r.problem("admin.public_url", "must be an https:// URL (plain http only on a loopback host)")
        return None
    return url.with_path("/")


def parse_access(r: ConfigReader, raw: Mapping[str, Any]) -> AccessSettings:
    s = r.section(raw, "access", set(ACCESS_KEYS), "access")
    return access_rules(r, s, "access")


def parse_skip_auth(r: ConfigReader, raw: Mapping[str, Any]) -> tuple[SkipRule, ...]:
    if isinstance(raw.get("skip_auth"), str):
        r.problem("skip_auth", 'must be a list of rules like "GET ^/static/"')
        return ()
    rules = r.string_list(raw, "skip_auth", "skip_auth")
    result = []
    for i, text in enumerate(rules or ()):
        key = f"skip_auth[{i}]"
        methods: frozenset[str] | None = None
        pattern = text.strip()
        first, _, rest = pattern.partition(" ")
        if rest and all(m in HTTP_METHODS for m in first.upper().split(",")) and first.isupper():
            methods = frozenset(first.split(","))
            if "GET" in methods:
                methods |= {"HEAD"}
            pattern = rest.strip()
        if not pattern:
            r.problem(key, "has no path regex")
            continue
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            r.problem(key, f"invalid regex: {exc}")
            continue
        result.append(SkipRule(methods, compiled, text))
    return tuple(result)


def parse_trusted_proxies(
    r: ConfigReader, raw: Mapping[str, Any]
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    values = r.string_list(raw, "trusted_proxies", "trusted_proxies") or ()
    nets = []
    for i, v in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            r.problem(f"trusted_proxies[{i}]", f"{v!r} is not an IP address or CIDR range")
    return tuple(nets)
