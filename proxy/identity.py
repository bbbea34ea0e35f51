"""Claims -> upstream identity headers, and stripping identity headers a client tries to send itself.

The console trusts these headers blindly, so two rules hold on every proxied request, signed in or not:
every incoming header that could be read as an identity header is removed (``strip``), and only then are
the sidecar's own values added (``values``). Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from multidict import CIMultiDict

from proxy.settings import DEFAULT_HEADERS

# Headers oauth2-proxy sends or consoles commonly read; stripped even when not mapped, so a console that
# was built against oauth2-proxy cannot be fooled by a client sending them through this sidecar.
_ALWAYS_STRIPPED = ("x-forwarded-access-token", "x-forwarded-preferred-username")
_STRIPPED_PREFIX = "x-auth-request-"

# C0 controls (CR, LF, NUL, TAB, ...), DEL and C1 controls (U+0085 NEL is a line break to some
# parsers). Removing them makes header injection / response splitting through a claim impossible.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


# Every punctuation character a header name (an RFC 9110 token) may contain compares equal to "-".
_PUNCTUATION_AS_DASH = str.maketrans(dict.fromkeys("!#$%&'*+.^_`|~", "-"))


def header_key(name: str) -> str:
    """The key two header names are compared by: case-insensitive, any punctuation equal to ``-``.

    CGI, WSGI, PHP and many frameworks map ``X_Forwarded_User``, ``X.Forwarded.User`` and
    ``X-Forwarded-User`` to the same variable, so a client could smuggle an identity header past a
    comparison that only ignores case.
    """
    return name.lower().translate(_PUNCTUATION_AS_DASH)


def remove_headers(
    headers: CIMultiDict[str],
    keys: AbstractSet[str],
    *,
    prefix: str | None = None,
    first_chars: AbstractSet[str] | None = None,
) -> None:
    """Remove, in place, every header whose ``header_key`` is in ``keys`` or starts with ``prefix``.

    ``first_chars`` (both cases), when given, lets the common headers (Accept, Sec-*, Referer...) be
    passed over on their first character without building a key.
    """
    doomed: list[str] | None = None
    for name in headers.keys():  # noqa: SIM118 - names, duplicates included
        if first_chars is not None and name[:1] not in first_chars:
            continue
        key = header_key(name)
        if key in keys or (prefix is not None and key.startswith(prefix)):
            if doomed is None:
                doomed = [name]
            else:
                doomed.append(name)
    if doomed is not None:
        for name in doomed:
            headers.popall(name, None)


class IdentityHeaders:
    """The configured header -> claim map, checked once at construction and applied per request."""

    __slots__ = ("_first_chars", "_mapping", "_separator", "_stripped")

    def __init__(self, mapping: Sequence[tuple[str, str]], separator: str = ",") -> None:
        self._mapping: tuple[tuple[str, str], ...] = tuple((str(h), str(c)) for h, c in mapping)
        self._separator = separator
        stripped = {header_key(h) for h, _ in self._mapping}
        stripped.update(header_key(h) for h, _ in DEFAULT_HEADERS)
        stripped.update(_ALWAYS_STRIPPED)
        self._stripped = frozenset(stripped)
        # Most request headers (Accept, Cookie, User-Agent, Sec-*) are rejected on their first
        # character without building a lower-cased copy.
        first = {k[0] for k in stripped} | {_STRIPPED_PREFIX[0]}
        self._first_chars = frozenset(first | {c.upper() for c in first})

    @property
    def mapping(self) -> tuple[tuple[str, str], ...]:
        return self._mapping

    def is_identity_header(self, name: str) -> bool:
        """True if ``name`` could be read by the console as an identity header."""
        key = header_key(name)
        return key in self._stripped or key.startswith(_STRIPPED_PREFIX)

    def strip(self, headers: CIMultiDict[str]) -> None:
        """Remove, in place, every header that could pass for an identity header (any case, ``_``/``-``)."""
        remove_headers(headers, self._stripped, prefix=_STRIPPED_PREFIX, first_chars=self._first_chars)

    def values(self, claims: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The identity headers to send upstream for these claims, in mapping order.

        Claim names are looked up literally: ``cognito:groups`` or ``https://example.com/roles`` are
        single keys, never paths. A claim that is absent, null, an empty list, an object, or empty after
        sanitising sends no header at all, so the console can tell "unknown" from a value.

        Non-ASCII is sent as raw UTF-8 bytes. RFC 9110 5.5 treats such octets as opaque and there is no
        encoding every console understands; raw UTF-8 is what oauth2-proxy (the common predecessor)
        sends, so consoles written against it keep working. Consoles on stacks that decode header bytes
        as Latin-1 (Node.js, WSGI) re-decode the value as UTF-8.
        """
        result: list[tuple[str, str]] = []
        for header, claim in self._mapping:
            raw = claims.get(claim)
            if raw is None:
                continue
            if raw.__class__ is str and raw.isascii() and raw.isprintable():  # the common case, inline
                if raw:
                    result.append((header, raw))
                continue
            value = _header_value(raw, self._separator)
            if value:
                result.append((header, value))
        return result


def _scalar(value: Any) -> str | None:
    if value is None or isinstance(value, dict):
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else str(value)


def _header_value(value: Any, separator: str) -> str | None:
    if isinstance(value, list | tuple):
        items = [s for s in map(_scalar, value) if s is not None]
        if not items:
            return None
        text: str | None = separator.join(items)
    else:
        text = _scalar(value)
    if not text:
        return None
    if text.isascii() and text.isprintable():
        return text
    return _CONTROL.sub("", text)
