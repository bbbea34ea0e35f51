"""The ``routes:`` list: per-path access rules and step-up requirements, first match wins.

Each entry is a mapping::

    - path: "^/admin/"            # required: a regex searched in the normalised path (as skip_auth rules are)
      methods: [POST, DELETE]     # optional: default every method; GET brings HEAD
      access: {allowed_groups: [console-admins]}   # optional: replaces the top-level access for these paths
      max_age: 15m                # optional: the sign-in may be at most this old
      acr_values: [urn:mfa]       # optional: the sign-in's acr must be one of these

Every problem names ``routes[N].key`` (an unknown key with a did-you-mean), and all are reported at once.
How a request is matched against the list, and what a route asks of a sign-in: ``proxy.auth.routes``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from proxy.config.model import HTTP_METHODS, AccessSettings, Route
from proxy.config.reader import ConfigReader
from proxy.config.validate_access import ACCESS_KEYS, access_rules

KEYS = {"path", "methods", "access", "max_age", "acr_values"}
# An acr value travels in a space-separated acr_values parameter and in a quoted WWW-Authenticate parameter
# (RFC 9470 3): printable ASCII without space, '"' or '\'.
_ACR = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def parse_routes(r: ConfigReader, raw: Mapping[str, Any], top: AccessSettings) -> tuple[Route, ...]:
    """The route table, in the file's order; ``top`` is the top-level access (its ``groups_claim`` is a route's
    default). Entries with a problem are left out; the problems are in ``r``."""
    value = raw.get("routes")
    if value is None:
        return ()
    if not isinstance(value, list):
        r.problem("routes", 'must be a list of routes like {path: "^/admin/", access: {allowed_groups: [admins]}}')
        return ()
    routes = []
    for index, item in enumerate(value):
        route = _route(r, item, index, top)
        if route is not None:
            routes.append(route)
    return tuple(routes)


def _route(r: ConfigReader, item: object, index: int, top: AccessSettings) -> Route | None:
    key = f"routes[{index}]"
    if not isinstance(item, dict):
        r.problem(key, 'must be a mapping with a path, e.g. {path: "^/admin/", access: {allowed_groups: [admins]}}')
        return None
    r.unknown(item, KEYS, key + ".")
    before = len(r.problems)
    pattern = _pattern(r, item, key)
    methods = _methods(r, item, key)
    access = None
    if "access" in item:
        block = r.section(item, "access", set(ACCESS_KEYS), f"{key}.access")
        access = access_rules(r, block, f"{key}.access", top.groups_claim)
    max_age = None
    if item.get("max_age") is not None:
        read = len(r.problems)
        max_age = r.duration(item, "max_age", f"{key}.max_age", 0.0)
        if max_age <= 0 and len(r.problems) == read:
            r.problem(f"{key}.max_age", "must be a positive duration like 15m (how old the sign-in may be)")
    acr_values = r.string_list(item, "acr_values", f"{key}.acr_values") or ()
    for i, acr in enumerate(acr_values):
        if not _ACR.fullmatch(acr):
            r.problem(f"{key}.acr_values[{i}]", f"{acr!r} must be printable ASCII without spaces, quotes or '\\'")
    if "acr_values" in item and not acr_values and len(r.problems) == before:
        r.problem(f"{key}.acr_values", "is empty: leave it out, or list the acr values a sign-in may have")
    if pattern is None or len(r.problems) > before:
        return None
    return Route(index, methods, pattern, access, max_age, acr_values)


def _pattern(r: ConfigReader, item: Mapping[str, Any], key: str) -> re.Pattern[str] | None:
    text = r.string(item, "path", f"{key}.path", required=True)
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        r.problem(f"{key}.path", f"invalid regex: {exc}")
        return None


def _methods(r: ConfigReader, item: Mapping[str, Any], key: str) -> frozenset[str] | None:
    names = r.string_list(item, "methods", f"{key}.methods")
    if names is None:
        return None
    if not names:
        r.problem(f"{key}.methods", "is empty: leave it out for every method, or list some, e.g. [POST, DELETE]")
        return None
    methods = set()
    for i, name in enumerate(names):
        method = name.upper()
        if method not in HTTP_METHODS:
            close = difflib.get_close_matches(method, HTTP_METHODS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            r.problem(f"{key}.methods[{i}]", f"{name!r} is not an HTTP method{hint}")
            continue
        methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")  # as for skip_auth: a HEAD is a GET without its body
    return frozenset(methods)
