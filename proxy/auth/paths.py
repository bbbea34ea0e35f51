"""Request paths as the gate sees them: one normalised form, which is both what rules match and what is
forwarded, so the console can never be handed a different path than the one the sidecar judged.

``normalise(target)`` takes the raw request target and returns a ``RequestPath``:

- percent-decoding, once, of everything except ``%2F`` (``/``), ``%5C`` (``\\``) and ``%25`` (``%``): those
  stay encoded (upper case), so an encoded slash never becomes a segment boundary, and a literal ``%2F``
  in the matched text can only ever mean an encoded slash. A raw ``\\`` is treated as ``%5C``.
- dot-segments removed (RFC 3986 5.2.4) after that decoding, so ``/static/%2e%2e/admin`` is ``/admin``;
  repeated slashes merged (as nginx does by default);
- the query is kept exactly as sent and is never part of matching; a ``#`` in the target is refused.

Some paths mean different things to different servers, and no single normal form can serve them all.
Those are refused with 400 rather than guessed at (the peers' choice: Traefik rejects encoded slashes
and friends, Envoy offers ``REJECT_REQUEST``):

- control characters, raw or encoded (``%00``, ``%0a``, the C1 ``%C2%85``...);
- a dot-segment hidden behind an encoded separator (``/static/..%2Fadmin``, ``/a%5C..%5Cb``) or a
  path parameter (``/static/..;/admin`` is ``/admin`` to Tomcat), or double-encoded (``%252e%252e``).

Encoded slashes are otherwise kept, because some consoles need them (RabbitMQ's ``/api/queues/%2F/q``).
A server behind the sidecar might still split on them or cut a path at a decoded ``?``/``#``/``;``, so
``readings`` lists those other readings, and a ``skip_auth`` rule only applies when it matches all of
them: ambiguity costs a login, never a bypass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote_from_bytes

from proxy.errors import BadRequest

_HEX = frozenset(b"0123456789abcdefABCDEF")
# Octets kept percent-encoded in the normal form: decoding them would change how the path splits.
_KEEP_ENCODED = {0x2F: b"%2F", 0x5C: b"%5C", 0x25: b"%25"}
# RFC 3986 pchar without pct-encoded, plus "%" itself: after decoding, the only "%" left start a kept triple.
_SAFE = "!$&'()*+,;=:@-._~%"
# No "%", no ";", no segment that is empty or starts with a dot: such a path is already normal.
_PLAIN = re.compile(r"^(?:/[A-Za-z0-9!$&'()*+,=:@\-_~][A-Za-z0-9!$&'()*+,=:@\-_~.]*)*/?$")
_DOUBLE_ENCODED = re.compile(r"%25(?:2e|2f|5c)", re.IGNORECASE)
_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_DOTS = frozenset({".", ".."})
_C1 = re.compile("[\x80-\x9f]")


@dataclass(frozen=True, slots=True)
class RequestPath:
    path: str  # normalised and percent-encoded: what is forwarded
    query: str  # the raw query string, without "?", exactly as sent
    match: str  # the decoded normal form that rules are matched against
    readings: tuple[str, ...]  # ``match`` and the other ways a server could read this path

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def absolute_authority(target: str) -> str | None:
    """The authority of an absolute-form target (``GET http://host:port/path``), None for origin form.

    RFC 9112 3.2.2: with an absolute-form target, its authority is the request's host, not the Host header.
    """
    absolute = _ABSOLUTE_FORM.match(target)
    if absolute is None:
        return None
    return target[target.index("//") + 2 : absolute.end()]


def normalise(target: str) -> RequestPath:
    """The ``RequestPath`` for a raw request target; ``BadRequest`` for one that cannot be read safely."""
    known = _NORMALISED.get(target)
    if known is not None:
        return known
    normal = _normalise(target)
    if len(target) <= _REMEMBERED_TARGET_MAX:
        if len(_NORMALISED) >= _REMEMBERED_MAX:
            _NORMALISED.clear()  # a client inventing targets costs a refill, never memory
        _NORMALISED[target] = normal
    return normal


# The targets normalised so far and their (immutable) results: a console's pages and assets come back again
# and again, and building a RequestPath costs more than the usual plain path's checks. Refused targets are
# not remembered: each raises anew.
_NORMALISED: dict[str, RequestPath] = {}
_REMEMBERED_MAX = 1024
_REMEMBERED_TARGET_MAX = 512  # longer ones (long queries) are normalised each time: memory stays small


def _normalise(target: str) -> RequestPath:
    if "#" in target:
        raise BadRequest("The request target contains '#'.")
    absolute = _ABSOLUTE_FORM.match(target)
    if absolute:
        target = target[absolute.end() :] or "/"  # RFC 9112 3.2.2: the absolute form's path and query
    raw_path, sep, query = target.partition("?")
    if not raw_path.startswith("/"):
        raise BadRequest("The request path must start with '/'.")
    if _PLAIN.match(raw_path):
        # Nearly every request.
        return RequestPath(raw_path, query, raw_path, (raw_path,))
    segments = [_decode_segment(s) for s in raw_path.split("/")[1:]]
    canonical = _resolve(segments)
    match = "/" + "/".join(canonical.segments) + canonical.trailing
    if _DOUBLE_ENCODED.search(match):
        raise BadRequest("The request path contains a double-encoded dot or separator.")
    split = _split_encoded_separators(match)
    cut = _cut_parameters(split)
    path = "/" + "/".join(_encode(s) for s in canonical.segments) + canonical.trailing
    readings = tuple(dict.fromkeys((match, split, cut)))
    return RequestPath(path, query if sep else "", match, readings)


@dataclass(frozen=True, slots=True)
class _Resolved:
    segments: list[str]
    trailing: str  # "/" when the path ends in a slash (and is not just "/")
    had_dots: bool


def _decode_segment(raw: str) -> str:
    data = raw.encode("utf-8", "surrogateescape")
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x25:  # "%"
            if i + 2 < n and data[i + 1] in _HEX and data[i + 2] in _HEX:
                value = int(data[i + 1 : i + 3], 16)
                out += _KEEP_ENCODED.get(value, bytes((value,)))
                i += 3
                continue
            out += b"%25"  # a lone "%" is a literal percent sign
        elif c == 0x5C:  # a raw "\": IIS and browsers read it as "/", so it is never a boundary here either
            out += b"%5C"
        else:
            out.append(c)
        i += 1
    if any(b < 0x20 or b == 0x7F for b in out):
        raise BadRequest("The request path contains a control character.")
    text = out.decode("utf-8", "surrogateescape")
    if _C1.search(text):  # U+0085 (NEL) is a line break to some parsers: refused like the C0 ones
        raise BadRequest("The request path contains a control character.")
    return text


def _resolve(segments: list[str]) -> _Resolved:
    """RFC 3986 5.2.4 remove_dot_segments over decoded segments, with empty segments merged."""
    stack: list[str] = []
    had_dots = False
    for segment in segments:
        if segment == "..":
            had_dots = True
            if stack:
                stack.pop()
        elif segment == ".":
            had_dots = True
        elif segment:
            stack.append(segment)
    last = segments[-1] if segments else ""
    trailing = "/" if stack and last in ("", ".", "..") else ""
    return _Resolved(stack, trailing, had_dots)


def _split_encoded_separators(match: str) -> str:
    """The path as a server that decodes %2F and %5C into separators would read it."""
    if "%2F" not in match and "%5C" not in match:
        return match
    parts = match.replace("%2F", "/").replace("%5C", "/").split("/")[1:]
    resolved = _resolve(parts)
    if resolved.had_dots:
        raise BadRequest("The request path hides a dot-segment behind an encoded slash or backslash.")
    return "/" + "/".join(resolved.segments) + resolved.trailing


def _cut_parameters(split: str) -> str:
    """The path as a server that cuts at a decoded '?' or '#', and drops ';parameters', would read it."""
    cut = re.split(r"[?#]", split, maxsplit=1)[0]
    if ";" not in cut and cut == split:
        return split
    parts = [segment.partition(";")[0] for segment in cut.split("/")[1:]]
    resolved = _resolve(parts)
    if resolved.had_dots:
        raise BadRequest("The request path hides a dot-segment behind a path parameter.")
    return "/" + "/".join(resolved.segments) + resolved.trailing


def _encode(segment: str) -> str:
    return quote_from_bytes(segment.encode("utf-8", "surrogateescape"), safe=_SAFE)
