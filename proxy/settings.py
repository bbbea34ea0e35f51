"""The config model: frozen dataclasses, YAML loading, ``${VAR}`` expansion, ``*_file`` secrets, validation.

This is the only module that reads the environment or secret files. ``load_settings`` either returns a
complete, immutable ``Settings`` or raises ``ConfigError`` listing every problem, each naming its key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

import yaml
from yarl import URL

from proxy.errors import ConfigError, ConfigProblem

CALLBACK_PATH = "/oauth2/callback"
SIGNED_OUT_PATH = "/oauth2/signed_out"
BACKCHANNEL_LOGOUT_PATH = "/oauth2/backchannel-logout"

DEFAULT_SCOPES = ("openid", "profile", "email")
DEFAULT_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Forwarded-User", "preferred_username"),
    ("X-Forwarded-Email", "email"),
    ("X-Forwarded-Given-Name", "given_name"),
    ("X-Forwarded-Family-Name", "family_name"),
    ("X-Forwarded-Name", "name"),
    ("X-Forwarded-Groups", "groups"),
)
MIN_COOKIE_SECRET_LENGTH = 32
MIN_BREAK_GLASS_TOKEN_LENGTH = 24
MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL = 0.1, 3600.0
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# Asymmetric algorithms only: an HMAC-signed ID token would be keyed with the client secret, and "none"
# is never acceptable for tokens we act on (OIDC Core 3.1.3.7).
SUPPORTED_ID_TOKEN_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_REDIRECT_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::\d{1,5})?")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


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
    cookie_secret_file: str | None = None
    cookie_name: str = "sso_sidecar"
    lifetime: float = 8 * 3600.0
    idle_timeout: float = 3600.0
    login_timeout: float = 600.0
    max_pending_logins: int = 5
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
    token_file: str | None = None
    ttl: float = 900.0
    user: str = "break-glass"

    @property
    def enabled(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class StatusSettings:
    admin_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkipRule:
    methods: frozenset[str] | None  # None: any method
    pattern: re.Pattern[str]
    source: str

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern.search(path) is not None


@dataclass(frozen=True)
class Settings:
    public_url: URL
    upstream: URL
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
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Hosts (host or host:port, lower case) an absolute return-to URL may name besides public_url's own.
    allowed_redirect_hosts: tuple[str, ...] = ()
    upstream_timeout: float = 300.0
    log_level: str = "info"
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    break_glass: BreakGlassSettings = field(default_factory=BreakGlassSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
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
        if self.session.redis_url != new.session.redis_url:
            keys.append("session.redis_url")
        elif self.session.redis != new.session.redis:
            keys.append("session.redis_*")
        return keys


# --------------------------------------------------------------------------------------------------
# Loading


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate the config at ``path``; raise ``ConfigError`` with every problem."""
    env = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", f"cannot read {path}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem("(file)", f"{path} is not UTF-8 text")]) from None
    return parse_settings(text, env, source=str(path))


def load_public_url(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> URL:
    """Only what ``redirect-uri`` needs: works before any secret exists."""
    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", f"cannot read {path}: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("(file)", f"not valid YAML: {_yaml_where(exc)}")]) from None
    reader = _Reader(env)
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("(file)", "must be a YAML mapping")])
    url = reader.url(raw, "public_url", "public_url", required=True)
    if reader.problems:
        raise ConfigError(reader.problems)
    assert url is not None
    return url


def parse_settings(text: str, environ: Mapping[str, str], source: str = "") -> Settings:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("(file)", f"not valid YAML: {_yaml_where(exc)}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("(file)", "must be a YAML mapping of keys to values")])
    reader = _Reader(environ)
    settings = reader.settings(raw)
    if reader.problems or settings is None:
        raise ConfigError(reader.problems)
    digest_input = json.dumps({"config": text, "secrets": sorted(reader.secret_digests)}, sort_keys=True).encode()
    return _replace(
        settings,
        source=source,
        digest=hashlib.sha256(digest_input).hexdigest()[:16],
        secret_files=tuple(reader.secret_files),
    )


def parse_duration(value: object) -> float:
    """``90s``, ``15m``, ``8h``, ``7d``, ``250ms`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 15m, 8h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("must be a duration like 90s, 15m, 8h or 7d")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


REDIS_PORT, SENTINEL_PORT = 6379, 26379
_REDIS_SCHEMES = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_REDIS_FORMS = "redis://, rediss://, unix://, redis[s]+sentinel:// or redis[s]+cluster://"
_REDIS_ADDRESS = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([A-Za-z0-9._-]+)(?::(\d+))?")


def parse_redis_url(text: str) -> RedisSettings:
    """The Redis session store's URL; ``ValueError`` (never showing the password) when it is not usable.

    - ``redis[s]://[[user]:password@]host[:port][/db]`` and ``unix://[[user]:password@]/path.sock[?db=N]``
    - ``redis[s]+sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER_NAME[/db]``: the
      sentinels (port 26379 by default); the password is the Redis servers', not the sentinels'
    - ``redis[s]+cluster://[[user]:password@]host[:port][,host[:port]...]``: seed nodes of a Cluster
    """
    shown = redact_redis_url(text)
    scheme, sep, rest = text.partition("://")
    form = _REDIS_SCHEMES.get(scheme.lower()) if sep else None
    if form is None:
        raise ValueError(f"{shown!r} must start with {_REDIS_FORMS}")
    mode, tls = form
    rest, _, query = rest.partition("?")
    # The last "@" ends the user info even when the password holds an unescaped "/" (base64 does).
    userinfo, at, rest = rest.rpartition("@")
    slash = rest.find("/")
    hosts, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    username: str | None = None
    password: Secret | None = None
    if at:
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = Secret(unquote(secret)) if secret else None
    params = parse_qs(query, keep_blank_values=True)
    if set(params) - ({"db"} if scheme == "unix" else set()):
        raise ValueError(f"{shown!r}: query parameters are not supported here; see the session.redis_* keys")
    if scheme == "unix":
        if hosts or path in ("", "/"):
            raise ValueError(f"{shown!r} must name a socket path, e.g. unix:///run/redis/redis.sock")
        db = _redis_db(params["db"][0]) if "db" in params else 0
        return RedisSettings(addresses=(), unix_path=unquote(path), db=db, username=username, password=password)
    if not hosts:
        raise ValueError(f"{shown!r} names no host")
    default_port = SENTINEL_PORT if mode == "sentinel" else REDIS_PORT
    addresses = tuple(_redis_address(h, default_port) for h in hosts.split(","))
    segments = [unquote(p) for p in path.split("/") if p]
    db, master = 0, ""
    if mode == "single":
        if len(addresses) > 1:
            raise ValueError(f"{shown!r} names several hosts: use redis+sentinel:// or redis+cluster://")
        if len(segments) > 1:
            raise ValueError(f"{shown!r}: the path is only the database number, e.g. redis://host:6379/0")
        db = _redis_db(segments[0]) if segments else 0
    elif mode == "sentinel":
        if not 1 <= len(segments) <= 2:
            raise ValueError(f"{shown!r} must name the master: redis+sentinel://host:26379,host:26379/MASTER_NAME[/DB]")
        master = segments[0]
        db = _redis_db(segments[1]) if len(segments) == 2 else 0
    elif segments not in ([], ["0"]):
        raise ValueError(f"{shown!r}: a Redis Cluster has only database 0 and takes no path")
    return RedisSettings(
        mode=mode, addresses=addresses, db=db, tls=tls, username=username, password=password, master_name=master
    )


def redact_redis_url(text: str) -> str:
    """The URL with its password masked, for logs, errors and ``check`` output."""
    scheme, sep, rest = text.partition("://")
    rest, question, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text
    return f"{scheme}://{userinfo.partition(':')[0]}:****@{rest}{question}{query}"


def _redis_address(text: str, default_port: int) -> tuple[str, int]:
    m = _REDIS_ADDRESS.fullmatch(text.strip())
    port = int(m.group(2) or m.group(4) or default_port) if m else 0
    if m is None or not 0 < port < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return (m.group(1) or m.group(3), port)


def _redis_db(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ValueError(f"database {value!r} must be a number like 0")
    return int(value)


def _replace_redis(target: RedisSettings, **changes: Any) -> RedisSettings:
    from dataclasses import replace

    return replace(target, **changes)


_T = TypeVar("_T")


def _replace(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


class _Reader:
    """Walks the raw YAML, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        self.secret_files: list[str] = []
        self.secret_digests: list[str] = []
        self.missing_keys: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        if key not in self.missing_keys:
            self.problems.append(ConfigProblem(key, message))

    # -- primitives --------------------------------------------------------------------------------

    def expand(self, value: object, key: str) -> object:
        if isinstance(value, str):
            return self._expand_str(value, key)
        if isinstance(value, list):
            return [self.expand(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.expand(v, f"{key}.{k}") for k, v in value.items()}
        return value

    def _expand_str(self, value: str, key: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if name not in self.environ:
                self.problem(key, f"environment variable {name} is not set")
                return ""
            return self.environ[name]

        return _VAR.sub(sub, value)

    def section(self, raw: Mapping[str, Any], key: str, allowed: set[str], prefix: str) -> dict[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(prefix, "must be a mapping")
            return {}
        self.unknown(value, allowed, prefix + ".")
        return value

    def unknown(self, raw: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
        for k in raw:
            if k not in allowed:
                hint = _closest(str(k), allowed)
                self.problem(f"{prefix}{k}", "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))

    def get(
        self,
        raw: Mapping[str, Any],
        name: str,
        key: str,
        convert: Callable[[Any], _T],
        default: _T,
    ) -> _T:
        if name not in raw or raw[name] is None:
            return default
        try:
            return convert(self.expand(raw[name], key))
        except (ValueError, TypeError) as exc:
            self.problem(key, str(exc))
            return default

    def string(self, raw: Mapping[str, Any], name: str, key: str, *, required: bool = False) -> str:
        value = raw.get(name)
        if value is None or value == "":
            if required:
                self.problem(key, "is required")
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.problem(key, "must be a string")
            return ""
        before = len(self.problems)
        expanded = str(self.expand(str(value), key))
        if len(self.problems) > before:
            # A missing ${VAR} was reported for this key; an empty result would only repeat it.
            self.missing_keys.add(key)
        return expanded

    def boolean(self, raw: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
        value = raw.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            value = self.expand(value, key)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return default
        return value

    def duration(self, raw: Mapping[str, Any], name: str, key: str, default: float) -> float:
        return self.get(raw, name, key, parse_duration, default)

    def string_list(self, raw: Mapping[str, Any], name: str, key: str) -> tuple[str, ...] | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "must be a list of strings")
            return None
        return tuple(str(self.expand(v, f"{key}[{i}]")) for i, v in enumerate(value))

    def url(self, raw: Mapping[str, Any], name: str, key: str, *, required: bool = False) -> URL | None:
        text = self.string(raw, name, key, required=required)
        if not text:
            return None
        try:
            url = URL(text)
        except ValueError:
            self.problem(key, f"{text!r} is not a valid URL")
            return None
        if url.scheme not in ("http", "https") or not url.host:
            self.problem(key, f"{text!r} must be an absolute http:// or https:// URL")
            return None
        if url.user or url.password:
            self.problem(key, "must not contain a user name or password")
            return None
        if url.query_string or url.fragment:
            self.problem(key, "must not have a query or fragment")
            return None
        return url

    def host_port(self, raw: Mapping[str, Any], name: str, key: str) -> tuple[str, int] | None:
        text = self.string(raw, name, key)
        if not text:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            self.problem(key, f"{text!r} must be host:port, e.g. 0.0.0.0:4180")
            return None
        return (host.strip("[]") or "0.0.0.0", int(port))  # noqa: S104

    def secret_file(self, path: str, key: str) -> str | None:
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            self.problem(key, f"cannot read {path}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            self.problem(key, f"{path} is not UTF-8 text")
            return None
        self.secret_files.append(path)
        self.secret_digests.append(hashlib.sha256(content.encode()).hexdigest())
        return content.removesuffix("\n").removesuffix("\r")

    # -- sections ----------------------------------------------------------------------------------

    def settings(self, raw: Mapping[str, Any]) -> Settings | None:
        self.unknown(
            raw,
            {
                "listen", "public_url", "upstream", "sso", "headers", "header_list_separator", "session",
                "access", "skip_auth", "trusted_proxies", "metrics_listen", "workers", "upstream_timeout",
                "log_level", "reload", "break_glass", "status", "allowed_redirect_hosts",
            },
        )  # fmt: skip
        listen = self.host_port(raw, "listen", "listen") or ("0.0.0.0", 4180)  # noqa: S104
        public_url = self.url(raw, "public_url", "public_url", required=True)
        if public_url is not None and public_url.path not in ("", "/"):
            self.problem("public_url", "must not have a path: the sidecar serves the whole host")
        upstream = self.url(raw, "upstream", "upstream", required=True)
        metrics_listen = self.host_port(raw, "metrics_listen", "metrics_listen")
        workers = self.get(raw, "workers", "workers", _positive_int, 1)
        upstream_timeout = self.duration(raw, "upstream_timeout", "upstream_timeout", 300.0)
        log_level = self.string(raw, "log_level", "log_level") or "info"
        if log_level.lower() not in ("debug", "info", "warning", "error"):
            self.problem("log_level", "must be one of debug, info, warning, error")
        sso = self.sso(raw)
        session = self.session(raw)
        if workers > 1 and session.store != "redis":
            self.problem(
                "workers", "more than one worker needs session.store: redis (memory sessions stay in one process)"
            )
        headers = self.headers(raw)
        separator = self.string(raw, "header_list_separator", "header_list_separator") or ","
        access = self.access(raw)
        skip_auth = self.skip_auth(raw)
        trusted = self.trusted_proxies(raw)
        redirect_hosts = self.redirect_hosts(raw)
        reload = self.reload(raw)
        break_glass = self.break_glass(raw)
        status = self.status(raw)
        if public_url is None or upstream is None:
            return None
        return Settings(
            listen_host=listen[0],
            listen_port=listen[1],
            public_url=public_url.with_path("/"),
            upstream=upstream,
            sso=sso,
            session=session,
            metrics_listen=metrics_listen,
            workers=workers,
            headers=headers,
            header_list_separator=separator,
            access=access,
            skip_auth=skip_auth,
            trusted_proxies=trusted,
            allowed_redirect_hosts=redirect_hosts,
            upstream_timeout=upstream_timeout,
            log_level=log_level.lower(),
            reload=reload,
            break_glass=break_glass,
            status=status,
        )

    def sso(self, raw: Mapping[str, Any]) -> SSOSettings:
        allowed = {
            "enabled", "issuer_url", "client_id", "client_secret", "client_secret_file", "scopes",
            "token_endpoint_auth_method", "id_token_signing_algs", "clock_skew", "http_timeout",
            "extra_authorize_params", "api_audiences", "extra_issuers",
        }  # fmt: skip
        if "sso" not in raw:
            self.problem("sso", "is required (at least sso.issuer_url, sso.client_id and a client secret)")
            return SSOSettings(enabled=False)
        s = self.section(raw, "sso", allowed, "sso")
        enabled = self.boolean(s, "enabled", "sso.enabled", True)
        issuer = self.string(s, "issuer_url", "sso.issuer_url", required=enabled)
        if issuer:
            self.check_issuer(issuer)
        client_id = self.string(s, "client_id", "sso.client_id", required=enabled)
        secret, secret_file = self.one_secret(s, "client_secret", "sso", required=enabled)
        scopes = self.string_list(s, "scopes", "sso.scopes") or DEFAULT_SCOPES
        if "openid" not in scopes:
            self.problem("sso.scopes", "must include 'openid'")
        method = self.string(s, "token_endpoint_auth_method", "sso.token_endpoint_auth_method") or None
        if method is not None and method not in TOKEN_AUTH_METHODS:
            self.problem("sso.token_endpoint_auth_method", f"must be one of {', '.join(TOKEN_AUTH_METHODS)}")
        algs = self.string_list(s, "id_token_signing_algs", "sso.id_token_signing_algs")
        for alg in algs or ():
            if alg not in SUPPORTED_ID_TOKEN_ALGS:
                self.problem(
                    "sso.id_token_signing_algs",
                    f"{alg!r} is not allowed; choose from {', '.join(SUPPORTED_ID_TOKEN_ALGS)}",
                )
        extra = s.get("extra_authorize_params") or {}
        if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
            self.problem("sso.extra_authorize_params", "must be a mapping of parameter names to strings")
            extra = {}
        reserved = {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                    "code_challenge", "code_challenge_method"}  # fmt: skip
        for name in extra:
            if name in reserved:
                self.problem(f"sso.extra_authorize_params.{name}", "is set by the sidecar and cannot be overridden")
        return SSOSettings(
            enabled=enabled,
            issuer_url=issuer,
            client_id=client_id,
            client_secret=secret,
            client_secret_file=secret_file,
            scopes=scopes,
            token_endpoint_auth_method=method,
            id_token_signing_algs=algs,
            clock_skew=self.duration(s, "clock_skew", "sso.clock_skew", 60.0),
            http_timeout=self.duration(s, "http_timeout", "sso.http_timeout", 10.0),
            extra_authorize_params={
                str(k): str(self.expand(v, f"sso.extra_authorize_params.{k}")) for k, v in extra.items()
            },
            api_audiences=self.string_list(s, "api_audiences", "sso.api_audiences"),
            extra_issuers=self.extra_issuers(s, issuer),
        )

    def extra_issuers(self, s: Mapping[str, Any], main_issuer: str) -> tuple[ExtraIssuer, ...]:
        value = s.get("extra_issuers")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem("sso.extra_issuers", "must be a list of {issuer_url, audiences}")
            return ()
        result: list[ExtraIssuer] = []
        seen = {main_issuer}
        for i, entry in enumerate(value):
            key = f"sso.extra_issuers[{i}]"
            if not isinstance(entry, dict):
                self.problem(key, "must be a mapping with issuer_url and audiences")
                continue
            self.unknown(entry, {"issuer_url", "audiences"}, key + ".")
            issuer = self.string(entry, "issuer_url", f"{key}.issuer_url", required=True)
            if issuer:
                self.check_issuer(issuer, f"{key}.issuer_url")
                if issuer in seen:
                    self.problem(f"{key}.issuer_url", "is already configured (sso.issuer_url or an earlier entry)")
                seen.add(issuer)
            audiences = self.string_list(entry, "audiences", f"{key}.audiences")
            if not audiences:
                # An issuer's tokens are for many APIs; accepting them all would accept tokens minted for others.
                self.problem(
                    f"{key}.audiences", "is required: the audiences (aud) its tokens must carry for this console"
                )
            if issuer and audiences:
                result.append(ExtraIssuer(issuer, audiences))
        return tuple(result)

    def redirect_hosts(self, raw: Mapping[str, Any]) -> tuple[str, ...]:
        hosts = self.string_list(raw, "allowed_redirect_hosts", "allowed_redirect_hosts") or ()
        for i, host in enumerate(hosts):
            if not _REDIRECT_HOST.fullmatch(host.lower()):
                self.problem(
                    f"allowed_redirect_hosts[{i}]", f"{host!r} must be a host name or host:port, e.g. app.example.com"
                )
        return tuple(h.lower() for h in hosts)

    def check_issuer(self, issuer: str, key: str = "sso.issuer_url") -> None:
        try:
            url = URL(issuer)
        except ValueError:
            self.problem(key, f"{issuer!r} is not a valid URL")
            return
        if url.scheme not in ("http", "https") or not url.host:
            self.problem(key, f"{issuer!r} must be an absolute https:// URL")
        elif url.scheme == "http" and not is_loopback_host(url.host):
            # OIDC Discovery 3 / Core 3.1.2.1: the issuer is an https URL; plain http is only for local tests.
            self.problem(key, f"{issuer!r} uses http://; only https:// is allowed (http only on loopback)")
        elif url.query_string or url.fragment:
            self.problem(key, "must not have a query or fragment")

    def one_secret(
        self, s: Mapping[str, Any], name: str, section: str, *, required: bool
    ) -> tuple[Secret | None, str | None]:
        key, file_key = f"{section}.{name}", f"{section}.{name}_file"
        value = self.string(s, name, key)
        path = self.string(s, f"{name}_file", file_key)
        if value and path:
            self.problem(key, f"set either {name} or {name}_file, not both")
            return None, None
        if path:
            content = self.secret_file(path, file_key)
            if content is not None and not content:
                self.problem(file_key, f"{path} is empty")
            return (Secret(content) if content else None), path
        if value:
            self.secret_digests.append(hashlib.sha256(value.encode()).hexdigest())
            return Secret(value), None
        if required:
            self.problem(key, f"is required (or {name}_file)")
        return None, None

    def session(self, raw: Mapping[str, Any]) -> SessionSettings:
        allowed = {
            "store", "redis_url", "cookie_secret", "cookie_secret_file", "cookie_name", "lifetime",
            "idle_timeout", "login_timeout", "max_pending_logins", "redis_password", "redis_password_file",
            "redis_sentinel", "redis_cluster", "redis_timeout", "redis_ca_file", "cache_ttl",
        }  # fmt: skip
        s = self.section(raw, "session", allowed, "session")
        store = self.string(s, "store", "session.store") or "memory"
        if store not in ("memory", "redis"):
            self.problem("session.store", f"{store!r} must be 'memory' or 'redis'")
        redis_url = self.string(s, "redis_url", "session.redis_url") or "redis://127.0.0.1:6379/0"
        # Redis keys are only read (secret files too) when Redis is in use.
        redis = self.redis(s, redis_url) if store == "redis" else RedisSettings()
        secrets = self.cookie_secrets(s)
        cookie_name = self.string(s, "cookie_name", "session.cookie_name") or "sso_sidecar"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", cookie_name) or cookie_name.startswith("__"):
            self.problem("session.cookie_name", "may contain only letters, digits, '_' and '-', not start with '__'")
        lifetime = self.duration(s, "lifetime", "session.lifetime", 8 * 3600.0)
        idle = self.duration(s, "idle_timeout", "session.idle_timeout", 3600.0)
        if lifetime <= 0:
            self.problem("session.lifetime", "must be positive")
        if idle <= 0:
            self.problem("session.idle_timeout", "must be positive")
        return SessionSettings(
            store=store,
            redis_url=redis.url if store == "redis" else redact_redis_url(redis_url),
            redis=redis,
            cookie_secrets=secrets,
            cookie_secret_file=self.string(s, "cookie_secret_file", "session.cookie_secret_file") or None,
            cookie_name=cookie_name,
            lifetime=lifetime,
            idle_timeout=idle,
            login_timeout=self.duration(s, "login_timeout", "session.login_timeout", 600.0),
            max_pending_logins=self.get(s, "max_pending_logins", "session.max_pending_logins", _positive_int, 5),
            cache_ttl=self.duration(s, "cache_ttl", "session.cache_ttl", 5.0),
        )

    def redis(self, s: Mapping[str, Any], url: str) -> RedisSettings:
        sentinel = s.get("redis_sentinel")
        if sentinel is not None:
            target = self.redis_sentinel(s)
            if s.get("redis_url") is not None:
                self.problem("session.redis_sentinel", "set either this or session.redis_url, not both")
        else:
            try:
                target = parse_redis_url(url)
            except ValueError as exc:
                self.problem("session.redis_url", str(exc))
                target = RedisSettings()
        if self.boolean(s, "redis_cluster", "session.redis_cluster", False):
            if target.mode == "sentinel":
                self.problem("session.redis_cluster", "cannot be combined with Sentinel (a Cluster fails over itself)")
            elif target.unix_path is not None:
                self.problem("session.redis_cluster", "a Redis Cluster is reached over TCP, not a unix:// socket")
            elif target.db != 0:
                self.problem("session.redis_url", "a Redis Cluster has only database 0")
            else:
                target = _replace_redis(target, mode="cluster")
        password, _ = self.one_secret(s, "redis_password", "session", required=False)
        if password is not None:
            if target.password is not None:
                self.problem("session.redis_password", "session.redis_url has a password too; set it in one place")
            target = _replace_redis(target, password=password)
        timeout = self.duration(s, "redis_timeout", "session.redis_timeout", 2.0)
        if not 0 < timeout <= 60:
            self.problem("session.redis_timeout", "must be positive and at most 60s")
            timeout = 2.0
        ca_file = self.string(s, "redis_ca_file", "session.redis_ca_file") or None
        if ca_file is not None:
            if not target.tls:
                self.problem("session.redis_ca_file", "needs TLS: a rediss:// URL or session.redis_sentinel.tls")
            elif not os.access(ca_file, os.R_OK):
                self.problem("session.redis_ca_file", f"cannot read {ca_file}")
        return _replace_redis(target, timeout=timeout, ca_file=ca_file)

    def redis_sentinel(self, s: Mapping[str, Any]) -> RedisSettings:
        prefix = "session.redis_sentinel"
        allowed = {"master_name", "addresses", "db", "tls", "sentinel_password", "sentinel_password_file"}
        sub = self.section(s, "redis_sentinel", allowed, prefix)
        master = self.string(sub, "master_name", f"{prefix}.master_name", required=True)
        addresses: list[tuple[str, int]] = []
        for i, text in enumerate(self.string_list(sub, "addresses", f"{prefix}.addresses") or ()):
            try:
                addresses.append(_redis_address(text, SENTINEL_PORT))
            except ValueError as exc:
                self.problem(f"{prefix}.addresses[{i}]", str(exc))
        if "addresses" not in sub:
            self.problem(f"{prefix}.addresses", "is required: the sentinels as host:port, e.g. [redis-0:26379]")
        sentinel_password, _ = self.one_secret(sub, "sentinel_password", prefix, required=False)
        return RedisSettings(
            mode="sentinel",
            addresses=tuple(addresses),
            db=self.get(sub, "db", f"{prefix}.db", _redis_db, 0),
            tls=self.boolean(sub, "tls", f"{prefix}.tls", False),
            master_name=master,
            sentinel_password=sentinel_password,
        )

    def cookie_secrets(self, s: Mapping[str, Any]) -> tuple[Secret, ...]:
        key, file_key = "session.cookie_secret", "session.cookie_secret_file"
        raw_value, path = s.get("cookie_secret"), self.string(s, "cookie_secret_file", file_key)
        values: list[str] = []
        if raw_value is not None and path:
            self.problem(key, "set either cookie_secret or cookie_secret_file, not both")
            return ()
        if path:
            content = self.secret_file(path, file_key)
            # One secret per line, newest first, so a rotation is "add a line on top".
            values = [line.strip() for line in (content or "").splitlines() if line.strip()]
            key = file_key
        elif isinstance(raw_value, str):
            values = [self._expand_str(raw_value, key)]
        elif isinstance(raw_value, list) and all(isinstance(v, str) for v in raw_value):
            values = [self._expand_str(v, f"{key}[{i}]") for i, v in enumerate(raw_value)]
        elif raw_value is not None:
            self.problem(key, "must be a string or a list of strings (newest first)")
            return ()
        if not values:
            self.problem(key, "is required (or cookie_secret_file); generate one with: openssl rand -base64 32")
            return ()
        for i, v in enumerate(values):
            if len(v) < MIN_COOKIE_SECRET_LENGTH:
                where = key if len(values) == 1 else f"{key}[{i}]"
                self.problem(where, f"must be at least {MIN_COOKIE_SECRET_LENGTH} characters (openssl rand -base64 32)")
        self.secret_digests.extend(hashlib.sha256(v.encode()).hexdigest() for v in values)
        return tuple(Secret(v) for v in values)

    def headers(self, raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        value = raw.get("headers")
        if value is None:
            return DEFAULT_HEADERS
        if not isinstance(value, dict):
            self.problem("headers", "must be a mapping of upstream header name to claim name")
            return DEFAULT_HEADERS
        result: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, claim in value.items():
            key = f"headers.{name}"
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                self.problem(key, "is not a valid HTTP header name")
                continue
            if not isinstance(claim, str) or not claim:
                self.problem(key, "must name a claim (a string)")
                continue
            normal = name.lower().replace("_", "-")
            if normal in seen:
                self.problem(key, "is mapped twice (header names are case-insensitive, '_' equals '-')")
                continue
            if normal in ("authorization", "cookie", "host", "connection", "content-length", "transfer-encoding"):
                self.problem(key, "cannot be used as an identity header")
                continue
            seen.add(normal)
            result.append((name, claim))
        return tuple(result)

    def reload(self, raw: Mapping[str, Any]) -> ReloadSettings:
        s = self.section(raw, "reload", {"watch", "watch_interval"}, "reload")
        interval = self.duration(s, "watch_interval", "reload.watch_interval", 1.0)
        if not MIN_WATCH_INTERVAL <= interval <= MAX_WATCH_INTERVAL:
            self.problem("reload.watch_interval", "must be between 100ms and 1h")
            interval = 1.0
        return ReloadSettings(watch=self.boolean(s, "watch", "reload.watch", True), watch_interval=interval)

    def break_glass(self, raw: Mapping[str, Any]) -> BreakGlassSettings:
        s = self.section(raw, "break_glass", {"token", "token_file", "ttl", "user"}, "break_glass")
        if not s:
            return BreakGlassSettings()
        token, token_file = self.one_secret(s, "token", "break_glass", required=True)
        if token is not None and len(token.reveal()) < MIN_BREAK_GLASS_TOKEN_LENGTH:
            key = "break_glass.token_file" if token_file else "break_glass.token"
            self.problem(key, f"must be at least {MIN_BREAK_GLASS_TOKEN_LENGTH} characters (openssl rand -base64 24)")
        ttl = self.duration(s, "ttl", "break_glass.ttl", 900.0)
        if not 0 < ttl <= 86400:
            self.problem("break_glass.ttl", "must be positive and at most 1d")
        user = self.string(s, "user", "break_glass.user") or "break-glass"
        return BreakGlassSettings(token=token, token_file=token_file, ttl=ttl, user=user)

    def status(self, raw: Mapping[str, Any]) -> StatusSettings:
        s = self.section(raw, "status", {"admin_groups"}, "status")
        return StatusSettings(admin_groups=self.string_list(s, "admin_groups", "status.admin_groups") or ())

    def access(self, raw: Mapping[str, Any]) -> AccessSettings:
        allowed = {"allowed_email_domains", "allowed_emails", "allowed_groups", "groups_claim"}
        s = self.section(raw, "access", allowed, "access")
        domains = self.string_list(s, "allowed_email_domains", "access.allowed_email_domains") or ()
        for i, d in enumerate(domains):
            if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+", d.lower()):
                self.problem(f"access.allowed_email_domains[{i}]", f"{d!r} is not a domain name like example.com")
        emails = self.string_list(s, "allowed_emails", "access.allowed_emails") or ()
        for i, e in enumerate(emails):
            if e.count("@") != 1:
                self.problem(f"access.allowed_emails[{i}]", f"{e!r} is not an email address")
        return AccessSettings(
            allowed_email_domains=tuple(d.lower() for d in domains),
            allowed_emails=tuple(e.lower() for e in emails),
            allowed_groups=self.string_list(s, "allowed_groups", "access.allowed_groups") or (),
            groups_claim=self.string(s, "groups_claim", "access.groups_claim") or "groups",
        )

    def skip_auth(self, raw: Mapping[str, Any]) -> tuple[SkipRule, ...]:
        if isinstance(raw.get("skip_auth"), str):
            self.problem("skip_auth", 'must be a list of rules like "GET ^/static/"')
            return ()
        rules = self.string_list(raw, "skip_auth", "skip_auth")
        result = []
        for i, text in enumerate(rules or ()):
            key = f"skip_auth[{i}]"
            methods: frozenset[str] | None = None
            pattern = text.strip()
            first, _, rest = pattern.partition(" ")
            if rest and all(m in _HTTP_METHODS for m in first.upper().split(",")) and first.isupper():
                methods = frozenset(first.split(","))
                if "GET" in methods:
                    methods |= {"HEAD"}
                pattern = rest.strip()
            if not pattern:
                self.problem(key, "has no path regex")
                continue
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                self.problem(key, f"invalid regex: {exc}")
                continue
            result.append(SkipRule(methods, compiled, text))
        return tuple(result)

    def trusted_proxies(self, raw: Mapping[str, Any]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        values = self.string_list(raw, "trusted_proxies", "trusted_proxies") or ()
        nets = []
        for i, v in enumerate(values):
            try:
                nets.append(ipaddress.ip_network(v, strict=False))
            except ValueError:
                self.problem(f"trusted_proxies[{i}]", f"{v!r} is not an IP address or CIDR range")
        return tuple(nets)


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a positive whole number")
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a positive whole number") from None
    if number < 1:
        raise ValueError("must be a positive whole number")
    return number


def _closest(word: str, candidates: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.75)
    return matches[0] if matches else None
