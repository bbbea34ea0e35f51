"""Where a browser may be sent back to after login or sign-out: same-host relative paths, or an absolute
URL on this site or on a host the operator allowed (``allowed_redirect_hosts``).

Browsers are lenient about URLs (they strip tabs and newlines, treat ``\\`` as ``/``, decode lookalike
characters), so a value is refused unless every reading of it is a plain path on this host, or a plain
``http(s)://host[:port]/path`` URL whose host is exactly one that is allowed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from proxy.config.model import Settings

MAX_LENGTH = 4096
_ABSOLUTE_PREFIXES = ("http://", "https://")


def _clean(value: str) -> bool:
    """No whitespace, control, format or separator characters, and no backslash, anywhere."""
    if "\\" in value:
        return False
    return not any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs") for ch in value)


def _plain_path(value: str) -> bool:
    if not value.startswith("/") or value.startswith("//") or not _clean(value):
        return False
    parts = urlsplit(value)
    return not (parts.scheme or parts.netloc)


def _every_reading(value: str, check: Callable[[str], bool]) -> bool:
    """``check`` holds for the value, each decoding of it (double-encoded forms) and its NFKC form
    (fullwidth solidus and friends become "/" in some URL parsers)."""
    candidate = value
    for _ in range(4):
        if not check(candidate) or not check(unicodedata.normalize("NFKC", candidate)):
            return False
        decoded = unquote(candidate)
        if decoded == candidate:
            return True
        candidate = decoded
    return False


def _host_key(scheme: str, host: str, port: int | None) -> tuple[str, str]:
    """``(host, host:port)`` with the scheme's default port spelled out in the second form."""
    default = 443 if scheme == "https" else 80
    return host, f"{host}:{port or default}"


def _allowed_absolute(value: str, public_origin: str | None, allowed_hosts: Collection[str]) -> str | None:
    """The relative form of an absolute URL on this site, the URL itself for an allowed host, else None."""
    if not value.lower().startswith(_ABSOLUTE_PREFIXES) or not value.isascii() or not _clean(value):
        return None
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    # No user info ("https://good.com@evil.com"), nothing after the authority that is not a path.
    if not host or "@" in parts.netloc or "%" in parts.netloc or parts.scheme not in ("http", "https"):
        return None
    expected_netloc = host + (f":{port}" if port is not None else "")
    if parts.netloc.lower() != expected_netloc:
        return None
    path = parts.path or "/"
    if not _every_reading(path, _plain_path):
        return None
    relative = path + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    if public_origin is not None:
        origin = urlsplit(public_origin)
        same = (origin.scheme, *_host_key(origin.scheme, origin.hostname or "", origin.port))
        if (parts.scheme, *_host_key(parts.scheme, host, port)) == same:
            return relative
    bare, with_port = _host_key(parts.scheme, host, port)
    default_port = _host_key(parts.scheme, host, None)[1]
    if (with_port == default_port and bare in allowed_hosts) or with_port in allowed_hosts:
        return value
    return None


def safe_return_to(
    value: str | None,
    default: str = "/",
    *,
    allowed_hosts: Collection[str] = (),
    public_origin: str | None = None,
) -> str:
    """``value`` when it is a same-host relative path (with query), else ``default``.

    With ``public_origin`` (e.g. ``https://console.example.com``), an absolute URL on exactly that origin
    is accepted and made relative; an absolute ``http(s)`` URL whose host (``host`` entries: on the
    scheme's default port only) or ``host:port`` is in ``allowed_hosts`` (lower case) is kept as it is.
    """
    if not value or len(value) > MAX_LENGTH:
        return default
    if _every_reading(value, _plain_path):
        return value
    if public_origin is not None or allowed_hosts:
        absolute = _allowed_absolute(value, public_origin, allowed_hosts)
        if absolute is not None:
            return absolute
    return default


def return_to_for(value: str | None, settings: Settings, default: str = "/") -> str:
    """``safe_return_to`` with this config's origin and ``allowed_redirect_hosts``."""
    return safe_return_to(
        value,
        default,
        allowed_hosts=settings.allowed_redirect_hosts,
        public_origin=str(settings.public_url.origin()),
    )
