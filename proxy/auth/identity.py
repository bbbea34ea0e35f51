"""Claims -> upstream identity headers, and stripping identity headers a client tries to send itself.

The console trusts these headers blindly, so two rules hold on every proxied request, signed in or not:
every incoming header that could be read as an identity header is removed (``strip``), and only then are
the sidecar's own values added (``values``). Pure functions, no I/O.

Identity values are never rewritten into a different identity. A claim that becomes a header, is judged
by the access policy or is written to the logs (``sub``, ``email``, ``preferred_username``, the groups
claim) is refused whole when it holds a control character (C0, DEL, C1): stripping them would make
``ad<TAB>min`` into ``admin``. A list item (a group) holding ``header_list_separator`` is refused too,
since the console would read it as two items. Other claims (``address.formatted``...) may hold line
breaks, as OpenID Connect Core allows; they are never forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from multidict import CIMultiDict, istr

from proxy.config.model import DEFAULT_HEADERS
from proxy.errors import UnusableIdentity

# Headers oauth2-proxy sends or consoles commonly read; stripped even when not mapped, so a console that
# was built against oauth2-proxy cannot be fooled by a client sending them through this sidecar. The default
# assertion and roles headers likewise: a console left reading them must not believe a client while they are off.
_ALWAYS_STRIPPED = (
    "x-forwarded-access-token",
    "x-forwarded-preferred-username",
    "x-sso-assertion",
    "x-forwarded-roles",
)
_STRIPPED_PREFIX = "x-auth-request-"

# C0 controls (CR, LF, NUL, TAB, ...), DEL and C1 controls (U+0085 NEL is a line break to some parsers).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Claims the sidecar itself reads or logs, checked whatever the header mapping says.
_ALWAYS_CHECKED = ("sub", "email", "preferred_username")


# Every punctuation character a header name (an RFC 9110 token) may contain compares equal to "-".
_PUNCTUATION_AS_DASH = str.maketrans(dict.fromkeys("!#$%&'*+.^_`|~", "-"))


def header_key(name: str) -> str:
    """The key two header names are compared by: case-insensitive, any punctuation equal to ``-``.

    CGI, WSGI, PHP and many frameworks map ``X_Forwarded_User``, ``X.Forwarded.User`` and
    ``X-Forwarded-User`` to the same variable, so a client could smuggle an identity header past a
    comparison that only ignores case.
    """
    key = _KEYS.get(name)
    if key is None:
        key = name.lower().translate(_PUNCTUATION_AS_DASH)
        if len(_KEYS) < _KEYS_MAX:  # a client inventing names cannot grow it without bound
            _KEYS[name] = key
    return key


# Header names seen so far and their keys: a few dozen in practice, looked up for every request.
_KEYS: dict[str, str] = {}
_KEYS_MAX = 1024

_REMEMBERED_MAX = 2048  # claim objects whose headers are remembered (the cache's live sessions)


def remove_headers(
    headers: CIMultiDict[str],
    keys: AbstractSet[str],
    *,
    prefix: str | None = None,
    first_chars: AbstractSet[str] | None = None,
) -> None:
    """Remove, in place, every header whose ``header_key`` is in ``keys`` or starts with ``prefix``.

    ``first_chars`` (both cases), when given, lets the common headers (Accept, Sec-*, Referer...) be
    passed over on their first character without building a key. For a drop set used on every request,
    ``HeaderFilter`` remembers the answer.
    """
    for name in _doomed(headers.keys(), keys, prefix, first_chars):
        headers.popall(name, None)


def _doomed(
    names: Iterable[str], keys: AbstractSet[str], prefix: str | None, first_chars: AbstractSet[str] | None
) -> tuple[str, ...]:
    """The names (duplicates included, in order) whose ``header_key`` is in ``keys`` or starts with ``prefix``."""
    doomed: list[str] = []
    for name in names:
        if first_chars is not None and name[:1] not in first_chars:
            continue
        key = header_key(name)
        if key in keys or (prefix is not None and key.startswith(prefix)):
            doomed.append(name)
    return tuple(doomed)


class HeaderFilter:
    """``remove_headers`` for one fixed drop set, with its verdict remembered per sequence of header names.

    A client sends the same names in the same order on every request (a browser's dozen, a script's three),
    so the names' tuple is looked up instead of building every name's key again; the verdict depends on the
    names alone, compared exactly (case and punctuation included). What a client sends otherwise costs the
    full pass and at most ``_FILTER_MAX`` remembered sequences of limited size, never unbounded memory.
    """

    __slots__ = ("_first_chars", "_keys", "_known", "_prefix")

    def __init__(
        self, keys: AbstractSet[str], *, prefix: str | None = None, first_chars: AbstractSet[str] | None = None
    ) -> None:
        self._keys = keys
        self._prefix = prefix
        self._first_chars = first_chars
        self._known: dict[tuple[str, ...], tuple[str, ...]] = {}

    def doomed(self, headers: CIMultiDict[str]) -> tuple[str, ...]:
        """The names ``remove`` takes out of ``headers``: duplicates included, in order; usually none."""
        names = tuple(headers.keys())  # every name, duplicates included
        known = self._known.get(names)
        if known is None:
            known = _doomed(names, self._keys, self._prefix, self._first_chars)
            if len(names) <= _FILTER_NAMES_MAX and sum(map(len, names)) <= _FILTER_CHARS_MAX:
                if len(self._known) >= _FILTER_MAX:
                    self._known.clear()
                self._known[names] = known
        return known

    def catches(self, name: str) -> bool:
        """Whether ``remove`` takes a header of this name (in any spelling) out."""
        return bool(_doomed((name,), self._keys, self._prefix, None))

    def remove(self, headers: CIMultiDict[str]) -> None:
        """``remove_headers(headers, keys, prefix=..., first_chars=...)`` for this filter's drop set."""
        for name in self.doomed(headers):
            headers.popall(name, None)


# Name sequences remembered per filter, and the largest one remembered: a few kinds of client in practice.
_FILTER_MAX = 256
_FILTER_NAMES_MAX = 64
_FILTER_CHARS_MAX = 2048


class IdentityHeaders:
    """The configured header -> claim map, checked once at construction and applied per request."""

    __slots__ = ("_checked", "_filter", "_groups_claim", "_mapping", "_remembered", "_separator")

    def __init__(
        self,
        mapping: Sequence[tuple[str, str]],
        separator: str = ",",
        groups_claim: str = "groups",
        also_stripped: Iterable[str] = (),
    ) -> None:
        """``also_stripped``: the other headers the sidecar writes for the console (the assertion, roles and
        token headers), removed from every incoming request like the identity headers."""
        # Header names as ``istr``: the console's copy of the request headers (a CIMultiDict) takes an istr's
        # lower-cased form as it is, where it would lower-case a plain str for every header of every request.
        self._mapping: tuple[tuple[str, str], ...] = tuple((istr(h), str(c)) for h, c in mapping)
        self._separator = separator
        self._groups_claim = groups_claim
        self._checked = tuple(dict.fromkeys((*(c for _, c in self._mapping), *_ALWAYS_CHECKED, groups_claim)))
        _distinct(h for h, _ in self._mapping)
        stripped = {header_key(h) for h, _ in self._mapping}
        stripped.update(header_key(h) for h, _ in DEFAULT_HEADERS)
        stripped.update(_ALWAYS_STRIPPED)
        stripped.update(header_key(h) for h in also_stripped)
        # Most request headers (Accept, Cookie, User-Agent, Sec-*) are rejected on their first
        # character without building a lower-cased copy.
        first = {k[0] for k in stripped} | {_STRIPPED_PREFIX[0]}
        self._filter = HeaderFilter(
            frozenset(stripped), prefix=_STRIPPED_PREFIX, first_chars=frozenset(first | {c.upper() for c in first})
        )
        # The headers of long-lived claim objects (the session cache's), by object: a signed-in user's
        # every request would otherwise rebuild the same headers from the same claims.
        self._remembered: dict[int, tuple[Mapping[str, Any], tuple[tuple[str, str], ...]]] = {}

    def strip(self, headers: CIMultiDict[str]) -> None:
        """Remove, in place, every header that could pass for an identity header (any case, ``_``/``-``)."""
        self._filter.remove(headers)

    def check_also_written(self, names: Iterable[str]) -> None:
        """``ValueError`` unless every one of ``names`` (the other headers written for the console beside these)
        is stripped from every request and is a name of its own: none two the same header, none an identity
        header. Called where those headers are configured (``ConsoleIdentity``), never per request: a client's
        value can never survive beside the sidecar's, and the gate's headers go upstream with one ``update``
        (``upstream.forward``), which would send both of two equal names where setting each keeps the last."""
        names = tuple(names)
        for name in names:
            if not self._filter.catches(name):
                raise ValueError(f"the header {name} is written for the console but not stripped from requests")
        _distinct((*(h for h, _ in self._mapping), *names))

    def problem(self, claims: Mapping[str, Any]) -> str | None:
        """Why these claims cannot be used as an identity here, or None. Checked at sign-in and for every
        bearer token, so that a refused value never gets a session."""
        for claim in self._checked:
            value = claims.get(claim)
            if value is None:
                continue
            items = value if isinstance(value, list | tuple) else (value,)
            for item in items:
                text = _scalar(item)
                if text is None:
                    continue
                if _CONTROL.search(text):
                    return f"the {claim} claim contains a control character"
                if self._separator in text and (items is value or claim == self._groups_claim):
                    return f"a value of the {claim} claim contains the list separator {self._separator!r}"
        return None

    def values(self, claims: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """The identity headers to send upstream for these claims, in mapping order.

        Claim names are looked up literally: ``cognito:groups`` or ``https://example.com/roles`` are
        single keys, never paths. A claim that is absent, null, an empty list or an object sends no
        header at all, so the console can tell "unknown" from a value. A value ``problem`` would refuse
        raises ``UnusableIdentity`` (a session from before a header mapping changed, say).

        Non-ASCII is sent as raw UTF-8 bytes. RFC 9110 5.5 treats such octets as opaque and there is no
        encoding every console understands; raw UTF-8 is what oauth2-proxy (the common predecessor)
        sends, so consoles written against it keep working. Consoles on stacks that decode header bytes
        as Latin-1 (Node.js, WSGI) re-decode the value as UTF-8.

        Claims that are not a plain dict (the session cache's compact copies, never changed) are
        remembered by object, up to ``_REMEMBERED_MAX`` of them; plain dicts (a bearer token's, a session
        read from the store) are short-lived and computed each time.
        """
        if claims.__class__ is dict:
            return self._compute(claims)
        hit = self._remembered.get(id(claims))
        if hit is not None and hit[0] is claims:
            return hit[1]
        result = self._compute(claims)
        remembered = self._remembered
        if len(remembered) >= _REMEMBERED_MAX:
            remembered.clear()
        remembered[id(claims)] = (claims, result)  # holding ``claims`` keeps its id from being reused
        return result

    def _compute(self, claims: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        result: list[tuple[str, str]] = []
        groups_claim = self._groups_claim
        for header, claim in self._mapping:
            raw = claims.get(claim)
            if raw is None:
                continue
            if raw.__class__ is str and raw.isascii() and raw.isprintable() and claim != groups_claim:
                if raw:  # the common case, inline
                    result.append((header, raw))
                continue
            value = _header_value(raw, self._separator, claim, groups_claim)
            if value:
                result.append((header, value))
        return tuple(result)


def _distinct(names: Iterable[str]) -> None:
    """``ValueError`` if two of ``names`` are one header (``header_key``); the config refuses them before, naming
    the keys (``config.validate_identity.check_writers``)."""
    seen: set[str] = set()
    for name in names:
        key = header_key(name)
        if key in seen:
            raise ValueError(f"the header {name} is written for the console twice")
        seen.add(key)


def _scalar(value: Any) -> str | None:
    if value is None or isinstance(value, dict):
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else str(value)


def _header_value(value: Any, separator: str, claim: str, groups_claim: str) -> str | None:
    if isinstance(value, list | tuple):
        items = [s for s in map(_scalar, value) if s is not None]
        if not items:
            return None
        if any(separator in item for item in items):
            raise UnusableIdentity(f"A value of your account's {claim} claim contains {separator!r}, "
                                   "which would read as two values.")  # fmt: skip
        text: str | None = separator.join(items)
    else:
        text = _scalar(value)
        if text and claim == groups_claim and separator in text:
            raise UnusableIdentity(f"Your account's {claim} claim contains {separator!r}, "
                                   "which would read as two groups.")  # fmt: skip
    if not text:
        return None
    if text.isascii() and text.isprintable():
        return text
    if _CONTROL.search(text):
        raise UnusableIdentity(f"Your account's {claim} claim contains a control character.")
    return text
