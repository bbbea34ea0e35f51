"""The ``assertion:``, ``roles:`` and ``pass_tokens:`` sections: what the console is told besides the identity headers.

Each section is off unless present (``assertion: {}`` takes every default). Keys are read and checked here, every
problem naming its key; signing keys are parsed here too, so that a key file of the wrong kind is a config error
and never a failure at the first request. Every header these sections write, and every identity header, is
written by one setting only: two that would write the same header are an error naming both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from proxy.config.model import (
    ASSERTION_ALGORITHMS,
    DEFAULT_ASSERTION_CLAIMS,
    AssertionSettings,
    PassTokensSettings,
    RoleRule,
    RolesSettings,
    Secret,
)
from proxy.config.reader import ConfigReader
from proxy.config.secrets import weakness

MIN_HS256_SECRET_BYTES = 32  # RFC 7518 3.2: a key at least as long as the hash; Spark's JWSFilter insists
MIN_RSA_BITS = 2048
MIN_LIFETIME, MAX_LIFETIME = 5.0, 86400.0
# Claims the sidecar sets itself; a listed one would be ambiguous.
RESERVED_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "jti", "roles"})
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_CLAIM_NAME = re.compile(r"[!-~]{1,200}")
_PUNCTUATION_AS_DASH = str.maketrans(dict.fromkeys("!#$%&'*+.^_`|~", "-"))
# Headers the sidecar writes or must pass unchanged, which no setting may take over.
_OWN_HEADERS = frozenset(
    {
        "host", "cookie", "connection", "content-length", "transfer-encoding", "upgrade", "te", "trailer",
        "expect", "keep-alive", "proxy-authorization", "proxy-connection", "forwarded", "x-forwarded-for",
        "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "x-request-id", "x-break-glass",
    }
)  # fmt: skip
# Only the token and assertion settings may write Authorization (as "Bearer <token>").
_AUTHORIZATION = "authorization"


def header_key(name: str) -> str:
    """How two header names compare: any case, any punctuation equal to ``-`` (as ``auth.identity`` strips)."""
    return name.lower().translate(_PUNCTUATION_AS_DASH)


def parse_identity(
    r: ConfigReader,
    raw: Mapping[str, Any],
    *,
    headers: Sequence[tuple[str, str]],
    headers_given: bool,
    upstream: str,
    separator: str,
) -> tuple[AssertionSettings | None, RolesSettings | None, PassTokensSettings]:
    """The three sections, then one check that no two settings write the same header."""
    assertion = parse_assertion(r, raw, upstream)
    roles = parse_roles(r, raw, separator)
    tokens = parse_pass_tokens(r, raw)
    writers: list[tuple[str, str]] = [
        (f"headers.{h}" if headers_given else f"headers.{h} (the default mapping)", h) for h, _ in headers
    ]
    if roles is not None:
        writers.append(("roles.header", roles.header))
    if assertion is not None:
        writers.append(("assertion.header", assertion.header))
    for name in ("access_token", "id_token"):
        value = getattr(tokens, name)
        if value:
            writers.append((f"pass_tokens.{name}", value))
    check_writers(r, writers)
    return assertion, roles, tokens


def check_writers(r: ConfigReader, writers: Sequence[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for key, header in writers:
        normal = header_key(header)
        if normal in seen:
            r.problem(key, f"{header} is also written by {seen[normal]}: one header, one setting")
        else:
            seen[normal] = key


def _header(r: ConfigReader, s: Mapping[str, Any], name: str, key: str, default: str, *, bearer: bool) -> str:
    value = r.string(s, name, key) or default
    if not value:
        return ""
    if not _HEADER_NAME.match(value):
        r.problem(key, f"{value!r} is not a valid HTTP header name")
        return default
    normal = header_key(value)
    if normal in _OWN_HEADERS or (normal == _AUTHORIZATION and not bearer):
        r.problem(key, f"{value} cannot be used here: the sidecar sets it, or the request needs it unchanged")
        return default
    return "Authorization" if normal == _AUTHORIZATION else value


def _present(raw: Mapping[str, Any], name: str) -> bool:
    return raw.get(name) is not None


# -- assertion ----------------------------------------------------------------------------------------


def parse_assertion(r: ConfigReader, raw: Mapping[str, Any], upstream: str) -> AssertionSettings | None:
    if not _present(raw, "assertion"):
        return None
    allowed = {"header", "algorithm", "key_file", "secret", "secret_file", "audience", "lifetime", "claims"}
    s = r.section(raw, "assertion", allowed, "assertion")
    header = _header(r, s, "header", "assertion.header", AssertionSettings.header, bearer=True)
    algorithm = r.string(s, "algorithm", "assertion.algorithm") or "ES256"
    if algorithm not in ASSERTION_ALGORITHMS:
        r.problem("assertion.algorithm", f"{algorithm!r} must be one of {', '.join(ASSERTION_ALGORITHMS)}")
        algorithm = "ES256"
    files, keys = _key_files(r, s, algorithm)
    secret, secret_file = _secret(r, s, algorithm)
    lifetime = r.duration(s, "lifetime", "assertion.lifetime", AssertionSettings.lifetime)
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        r.problem("assertion.lifetime", "must be between 5s and 1d")
        lifetime = AssertionSettings.lifetime
    return AssertionSettings(
        header=header,
        algorithm=algorithm,
        key_files=files,
        keys=keys,
        secret=secret,
        secret_file=secret_file,
        audience=r.string(s, "audience", "assertion.audience") or upstream,
        lifetime=lifetime,
        claims=_claims(r, s),
    )


def _key_files(r: ConfigReader, s: Mapping[str, Any], algorithm: str) -> tuple[tuple[str, ...], tuple[Secret, ...]]:
    value = s.get("key_file")
    if value is None or value == "" or value == []:
        if algorithm == "RS256":
            r.problem("assertion.key_file", "is required with RS256: an RSA key is never derived (ES256 and EdDSA "
                      "derive theirs from session.cookie_secret)")  # fmt: skip
        return (), ()
    if algorithm == "HS256":
        r.problem("assertion.key_file", "is not used with HS256: assertion.secret (or secret_file) signs")
        return (), ()
    single = isinstance(value, str)
    paths = (
        r.string_list(s, "key_file", "assertion.key_file")
        if not single
        else (r.string(s, "key_file", "assertion.key_file"),)
    )
    if not paths:
        return (), ()
    files: list[str] = []
    keys: list[Secret] = []
    for i, path in enumerate(paths):
        key = "assertion.key_file" if single else f"assertion.key_file[{i}]"
        content = r.secret_file(path, key)
        if content is None:
            continue
        problem = key_problem(content, algorithm)
        if problem is not None:
            r.problem(key, f"{path}: {problem}")
            continue
        files.append(path)
        keys.append(Secret(content))
    return tuple(files), tuple(keys)


def key_problem(pem: str, algorithm: str) -> str | None:
    """Why this PEM text cannot sign ``algorithm`` assertions, or None."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted" if "password" in str(exc).lower() else "it is not a PEM private key"
        return f"{reason} (an unencrypted PKCS#8, SEC 1 or PKCS#1 private key is needed)"
    except Exception:  # cryptography raises UnsupportedAlgorithm and others for keys it cannot read
        return "it is not a private key this sidecar can read"
    if algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            return "ES256 needs an EC P-256 key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)"
    elif algorithm == "RS256":
        if not isinstance(key, rsa.RSAPrivateKey):
            return "RS256 needs an RSA key (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072)"
        if key.key_size < MIN_RSA_BITS:
            return f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed"
    elif algorithm == "EdDSA" and not isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA needs an Ed25519 key (openssl genpkey -algorithm ed25519)"
    return None


def _secret(r: ConfigReader, s: Mapping[str, Any], algorithm: str) -> tuple[Secret | None, str | None]:
    hs256 = algorithm == "HS256"
    if not hs256:
        for name in ("secret", "secret_file"):
            if s.get(name) not in (None, ""):
                r.problem(f"assertion.{name}", f"is for HS256 only; {algorithm} signs with a private key")
        return None, None
    secret, path = r.one_secret(s, "secret", "assertion", required=True)
    if secret is None:
        return None, path
    key = "assertion.secret_file" if path else "assertion.secret"
    size = len(secret.reveal().encode())
    if size < MIN_HS256_SECRET_BYTES:
        r.problem(key, f"is {size} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} (openssl rand -base64 32)")
        return None, path
    if (weak := weakness(secret.reveal())) is not None:
        r.problem(key, weak)
        return None, path
    return secret, path


def _claims(r: ConfigReader, s: Mapping[str, Any]) -> tuple[str, ...]:
    if "claims" not in s:
        return DEFAULT_ASSERTION_CLAIMS
    names = r.string_list(s, "claims", "assertion.claims")
    if names is None:
        return DEFAULT_ASSERTION_CLAIMS
    for i, name in enumerate(names):
        if not _CLAIM_NAME.fullmatch(name):
            r.problem(f"assertion.claims[{i}]", f"{name!r} is not a claim name")
        elif name in RESERVED_CLAIMS:
            r.problem(f"assertion.claims[{i}]", f"{name} is set by the sidecar itself")
    return tuple(dict.fromkeys(n for n in names if _CLAIM_NAME.fullmatch(n) and n not in RESERVED_CLAIMS))


# -- roles --------------------------------------------------------------------------------------------


def parse_roles(r: ConfigReader, raw: Mapping[str, Any], separator: str) -> RolesSettings | None:
    if not _present(raw, "roles"):
        return None
    s = r.section(raw, "roles", {"header", "rules", "default"}, "roles")
    header = _header(r, s, "header", "roles.header", RolesSettings.header, bearer=False)
    rules: list[RoleRule] = []
    value = s.get("rules")
    if value is not None and not isinstance(value, list):
        r.problem("roles.rules", "must be a list of {role, groups, emails}")
        value = []
    for i, entry in enumerate(value or ()):
        key = f"roles.rules[{i}]"
        if not isinstance(entry, dict):
            r.problem(key, "must be a mapping with role and groups or emails")
            continue
        r.unknown(entry, {"role", "groups", "emails"}, key + ".")
        role = _role(r, r.string(entry, "role", f"{key}.role", required=True), f"{key}.role", separator)
        groups = r.string_list(entry, "groups", f"{key}.groups") or ()
        emails = r.string_list(entry, "emails", f"{key}.emails") or ()
        for j, email in enumerate(emails):
            if email.count("@") != 1:
                r.problem(f"{key}.emails[{j}]", f"{email!r} is not an email address")
        if not groups and not emails:
            r.problem(key, "matches nobody: give groups or emails (roles.default is for users no rule matches)")
        if role:
            rules.append(RoleRule(role, tuple(groups), tuple(e.lower() for e in emails)))
    default = r.string_list(s, "default", "roles.default") or ()
    default = tuple(d for i, d in enumerate(default) if _role(r, d, f"roles.default[{i}]", separator))
    return RolesSettings(header=header, rules=tuple(rules), default=default)


def _role(r: ConfigReader, role: str, key: str, separator: str) -> str:
    """``role`` when it can travel in a header list, else "" (and the problem is recorded)."""
    if not role:
        return ""
    if len(role) > 200 or not role.isprintable() or role != role.strip():
        r.problem(key, f"{role!r} must be printable, at most 200 characters, without leading or trailing spaces")
        return ""
    if separator in role:
        r.problem(key, f"{role!r} contains the header_list_separator {separator!r}: it would read as two roles")
        return ""
    return role


# -- pass_tokens --------------------------------------------------------------------------------------


def parse_pass_tokens(r: ConfigReader, raw: Mapping[str, Any]) -> PassTokensSettings:
    s = r.section(raw, "pass_tokens", {"access_token", "id_token"}, "pass_tokens")
    return PassTokensSettings(
        access_token=_header(r, s, "access_token", "pass_tokens.access_token", "", bearer=True),
        id_token=_header(r, s, "id_token", "pass_tokens.id_token", "", bearer=True),
    )
