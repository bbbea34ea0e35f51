"""Per-path routes: which route a request hits, who it admits, and what it asks of a sign-in (pure).

Matching is skip_auth's, on the same normal form (``proxy.auth.paths``): a rule matches one reading of a
path when its regex is found in it and its methods (if it lists any) name the method (``matches``, which
``gate.decide.skips_auth`` uses too). A path can have several readings (an encoded slash that some server
decodes, a ``;parameter`` that some server drops), and so can a method (a POST that a framework reads as the
method an override header or a ``_method`` parameter names). For skip_auth "every reading" means a rule lets
a request through only when it matches every reading. Routes restrict rather than let through, so the same
rule reads: the request must be admitted under every reading. Each reading picks its own first matching route
(``hits``), and the request must pass every route so picked, and the top-level ``access`` when some reading
picks none. ``/admin%2Fx`` is judged as ``/admin%2Fx`` and as ``/admin/x``: ambiguity costs a refusal or a
sign-in, never a bypass.

A route may ask more of a sign-in than access (``Requirement``): a recent one (``max_age``, against the
``auth_time`` claim) and a strong one (``acr_values``, against the ``acr`` claim). A session keeps both claims
from its ID token (``proxy.sessions.model.Session``); a bearer token is judged by its own.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

from proxy.auth.paths import RequestPath
from proxy.auth.policy import denial_reason, display_name
from proxy.config.model import AccessSettings, Route

# Method overrides that web frameworks honour on a POST (Rails' Rack::MethodOverride, Express's
# method-override, Symfony, Laravel, Spring's HiddenHttpMethodFilter reads the form field only): the console
# may act on the method they name, so a route for DELETE must catch them too.
OVERRIDE_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
OVERRIDE_PARAMETER = "_method"
TOP_LEVEL = "access"  # how the top-level access block is named where a route's name would be
INSUFFICIENT = "insufficient_user_authentication"  # RFC 9470 3


class PathRule(Protocol):
    """A skip_auth rule or a route: what ``matches`` reads."""

    @property
    def methods(self) -> frozenset[str] | None: ...

    @property
    def pattern(self) -> Any: ...


def matches(rule: PathRule, method: str | None, reading: str) -> bool:
    """Whether ``rule`` matches one reading of a request: its methods (when it lists any) name ``method`` (None,
    an unknown method, is named by no list), and its regex is found in ``reading``."""
    return (rule.methods is None or method in rule.methods) and rule.pattern.search(reading) is not None


def method_readings(method: str, headers: Mapping[str, str], query: str) -> tuple[str, ...]:
    """The methods a console might act on for this request: its own (upper case), and on a POST the ones an
    override header or a ``_method`` query parameter names."""
    method = method.upper()
    if method != "POST":
        return (method,)
    named = [headers.get(name) for name in OVERRIDE_HEADERS]
    if OVERRIDE_PARAMETER in query:
        named += [v for k, v in parse_qsl(query, keep_blank_values=True) if k == OVERRIDE_PARAMETER]
    overrides = [value.strip().upper() for value in named if value]
    if not overrides:
        return (method,)
    return tuple(dict.fromkeys((method, *overrides)))


def first(routes: Iterable[Route], method: str | None, reading: str) -> Route | None:
    """The first route that matches this reading, or None (the top-level access)."""
    for route in routes:
        if matches(route, method, reading):
            return route
    return None


def hits(
    routes: Sequence[Route], methods: Sequence[str] | None, target: RequestPath | None
) -> tuple[Route | None, ...]:
    """Every route some reading of the request picks first (None: some reading picks none, so the top-level
    access applies too). The request must pass all of them.

    ``methods`` None: the method is not known (forward auth without ``X-Forwarded-Method``), so it may be any;
    ``target`` None: the path is not known, so every route (of those methods) may apply.

    What a table picked for a method and path is remembered (``_Picked``): a console's requests repeat their
    paths, and a table of twenty routes would otherwise search twenty regexes for each of them again."""
    if methods is None:
        # Any method: each method some route names, and one that none names.
        methods = (*dict.fromkeys(m for route in routes for m in route.methods or ()), "")
    if target is None:
        return (*(route for route in routes if any(_names(route, m) for m in methods)), None)
    readings = target.readings
    key = (tuple(methods), readings)
    picked = _PICKED.get(routes, key)
    if picked is not None:
        return picked
    if len(methods) == 1 and len(readings) == 1:  # nearly every request
        picked = (first(routes, methods[0], readings[0]),)
    else:
        picked = tuple(dict.fromkeys(first(routes, m, reading) for m in methods for reading in readings))
    _PICKED.put(routes, key, picked)
    return picked


class _Picked:
    """The routes picked per (methods, readings) for the table in use, up to a bound: the few paths a console
    serves are found again with one dictionary lookup, and any number of invented paths costs only the
    searches they would have cost anyway (the memory is cleared when full, and long paths are not kept)."""

    MAX_ENTRIES = 4096
    MAX_PATH = 512

    def __init__(self) -> None:
        self._table: object = None  # the routes tuple the entries belong to; a reload brings another
        self._entries: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Route | None, ...]] = {}

    def get(
        self, routes: Sequence[Route], key: tuple[tuple[str, ...], tuple[str, ...]]
    ) -> tuple[Route | None, ...] | None:
        if routes is not self._table:
            self._table = routes
            self._entries = {}
            return None
        return self._entries.get(key)

    def put(
        self, routes: Sequence[Route], key: tuple[tuple[str, ...], tuple[str, ...]], picked: tuple[Route | None, ...]
    ) -> None:
        if routes is not self._table or len(key[1][0]) > self.MAX_PATH:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {}
        self._entries[key] = picked


_PICKED = _Picked()


def _names(route: Route, method: str) -> bool:
    return route.methods is None or method in route.methods


def names(picked: Iterable[Route | None]) -> tuple[str, ...]:
    """The routes' names, ``access`` for the top-level access."""
    return tuple(dict.fromkeys(TOP_LEVEL if route is None else route.name for route in picked))


def refusal(
    claims: Mapping[str, Any], picked: Iterable[Route | None], top: AccessSettings
) -> tuple[Route | None, str] | None:
    """The first picked route (None: the top-level access) whose access refuses ``claims``, and why; None when
    every one admits them."""
    for route in picked:
        access = top if route is None or route.access is None else route.access
        reason = denial_reason(claims, access)
        if reason is not None:
            return route, reason
    return None


# --------------------------------------------------------------------------------------------------
# What a route asks of a sign-in


@dataclass(frozen=True, slots=True)
class Requirement:
    """What the routes a request hits ask of its sign-in: an ``acr`` acceptable to each route that lists some
    (``acr_sets``), and an ``auth_time`` within the shortest ``max_age``."""

    routes: tuple[str, ...]
    acr_sets: tuple[tuple[str, ...], ...] = ()
    max_age: float | None = None

    @property
    def acr_values(self) -> tuple[str, ...]:
        """The acr values every route accepts, in the first route's order."""
        if not self.acr_sets:
            return ()
        return tuple(v for v in self.acr_sets[0] if all(v in s for s in self.acr_sets[1:]))

    @property
    def satisfiable(self) -> bool:
        """False when the routes accept no acr in common: no sign-in can meet them all."""
        return not self.acr_sets or bool(self.acr_values)

    def shortfall(self, claims: Mapping[str, Any], now: float, skew: float) -> str | None:
        """None when the sign-in ``claims`` describe meets the requirement, else what it lacks, in words.

        ``auth_time`` may be up to ``skew`` (``sso.clock_skew``) older than ``max_age``: the provider's clock
        is not ours."""
        if self.acr_sets:
            acr = claims.get("acr")
            if not isinstance(acr, str) or not all(acr in s for s in self.acr_sets):
                how = f"signed you in with {_shown(acr)}" if isinstance(acr, str) else "did not say how you signed in"
                return f"{self._acr_words()} (your identity provider {how})"
        if self.max_age is not None:
            auth_time = claims.get("auth_time")
            if isinstance(auth_time, bool) or not isinstance(auth_time, int | float):
                return f"{self._age_words()} (your identity provider did not say when you signed in)"
            if now - auth_time > self.max_age + skew:
                return self._age_words()
        return None

    def words(self) -> str:
        """All that is required, in words: for a page that says what a sign-in must be."""
        parts = ([self._acr_words()] if self.acr_sets else []) + ([self._age_words()] if self.max_age else [])
        return " and ".join(parts)

    def _acr_words(self) -> str:
        values = self.acr_values
        if not values:
            return "a sign-in that meets " + " and ".join(f"{n}'s acr_values" for n in self.routes) + " at once"
        return "a sign-in with " + " or ".join(values)

    def _age_words(self) -> str:
        assert self.max_age is not None
        return f"a sign-in within the last {duration(self.max_age)}"

    def authorize_params(self) -> dict[str, str]:
        """The authorization request's parameters that ask the provider for such a sign-in (OIDC Core 3.1.2.1):
        ``acr_values``; ``max_age`` (which also makes the provider send ``auth_time``) with ``prompt=login``,
        for the providers that do not honour ``max_age`` (Entra ID)."""
        params = {}
        if self.acr_values:
            params["acr_values"] = " ".join(self.acr_values)
        if self.max_age is not None:
            params["max_age"] = str(int(self.max_age))
            params["prompt"] = "login"
        return params

    def details(self) -> dict[str, Any]:
        """The RFC 9470 parameters, for a JSON answer."""
        out: dict[str, Any] = {}
        if self.acr_values:
            out["acr_values"] = list(self.acr_values)
        if self.max_age is not None:
            out["max_age"] = int(self.max_age)
        return out

    def challenge(self, description: str) -> str:
        """The ``WWW-Authenticate`` value of RFC 9470 3: ``Bearer error="insufficient_user_authentication"``
        with what a new token must show."""
        text = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')
        value = f'Bearer error="{INSUFFICIENT}", error_description="{text}"'
        if self.acr_values:
            value += f', acr_values="{" ".join(self.acr_values)}"'
        if self.max_age is not None:
            value += f', max_age="{int(self.max_age)}"'
        return value

    def to_text(self) -> str:
        """For a pending step-up sign-in (``PendingLogin.about``)."""
        return json.dumps({"r": list(self.routes), "a": [list(s) for s in self.acr_sets], "m": self.max_age})

    @classmethod
    def from_text(cls, text: str) -> Requirement:
        data = json.loads(text)
        return cls(tuple(data["r"]), tuple(tuple(s) for s in data["a"]), data["m"])


def requirement(picked: Sequence[Route | None]) -> Requirement | None:
    """What the picked routes ask of a sign-in together; None when they ask nothing."""
    if len(picked) == 1 and (picked[0] is None or not picked[0].steps_up):  # nearly every request
        return None
    routes = [route for route in picked if route is not None and route.steps_up]
    if not routes:
        return None
    ages = [route.max_age for route in routes if route.max_age is not None]
    return Requirement(
        tuple(route.name for route in routes),
        tuple(route.acr_values for route in routes if route.acr_values),
        min(ages) if ages else None,
    )


def duration(seconds: float) -> str:
    """``900`` -> ``15m``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _shown(value: str) -> str:
    """A provider's acr, for words: printable, and short."""
    return "".join(c if c.isprintable() else "?" for c in value)[:80] or "an empty acr"


# --------------------------------------------------------------------------------------------------
# The table, as check, the status page and the settings page show it


def describe(route: Route | None, top: AccessSettings) -> dict[str, Any]:
    """One row of the route table as it is applied: the access in force (the route's own, or the top-level's)
    and what it asks of a sign-in."""
    access = top if route is None or route.access is None else route.access
    inherited = route is not None and route.access is None
    return {
        "route": TOP_LEVEL if route is None else route.name,
        "path": None if route is None else route.pattern.pattern,
        "methods": None if route is None or route.methods is None else sorted(route.methods),
        "access": access_words(access) + (" (the top-level access)" if inherited else ""),
        "max_age": None if route is None or route.max_age is None else duration(route.max_age),
        "acr_values": None if route is None or not route.acr_values else list(route.acr_values),
    }


def sign_in_words(row: Mapping[str, Any]) -> str:
    """What a row of ``table`` asks of a sign-in, in words."""
    parts = []
    if row["acr_values"]:
        parts.append("acr " + " or ".join(row["acr_values"]))
    if row["max_age"]:
        parts.append(f"at most {row['max_age']} old")
    return "; ".join(parts) or "any"


def access_words(access: AccessSettings) -> str:
    if not access.restricted:
        return "anyone who signs in"
    parts = []
    if access.allowed_emails:
        parts.append("emails " + ", ".join(access.allowed_emails))
    if access.allowed_email_domains:
        parts.append("email domains " + ", ".join(access.allowed_email_domains))
    if access.allowed_groups:
        parts.append(f"{access.groups_claim} " + ", ".join(access.allowed_groups))
    return "; ".join(parts)


def table(routes: Sequence[Route], top: AccessSettings) -> list[dict[str, Any]]:
    """Every route in the order they are tried, then the top-level access for a path none matches."""
    return [describe(route, top) for route in routes] + [describe(None, top)]


# --------------------------------------------------------------------------------------------------
# Recent denials, for /oauth2/status


@dataclass(frozen=True, slots=True)
class Denial:
    at: float
    kind: str  # access_denied | insufficient_user_authentication | step_up_failed
    routes: tuple[str, ...]  # the routes whose rule said no ("access": the top-level access)
    method: str
    path: str  # the normalised path, never the query
    user: str


class RecentDenials:
    """The last few refusals of this process, with the route each hit: for operators asking "why was I
    refused?". Paths without their query, the user as a name; never a token."""

    def __init__(self, size: int = 20) -> None:
        self._items: deque[Denial] = deque(maxlen=size)

    def add(self, kind: str, routes: Iterable[str], method: str, path: str, claims: Mapping[str, Any]) -> None:
        """``routes``: the names of the routes that refused (``names``)."""
        denial = Denial(time.time(), kind, tuple(routes), method[:16], path[:256], display_name(claims)[:256])
        self._items.append(denial)

    def latest(self) -> list[Denial]:
        """Newest first."""
        return list(reversed(self._items))
