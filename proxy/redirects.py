"""Where a browser may be sent back to after login or sign-out: same-host relative paths only.

Browsers are lenient about URLs (they strip tabs and newlines, treat ``\\`` as ``/``, decode lookalike
characters), so a value is refused unless every reading of it is a plain path on this host.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote, urlsplit

MAX_LENGTH = 4096


def _plain_path(value: str) -> bool:
    if not value.startswith("/") or value.startswith("//"):
        return False
    if "\\" in value:
        return False
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs") for ch in value):
        return False
    parts = urlsplit(value)
    return not (parts.scheme or parts.netloc)


def safe_return_to(value: str | None, default: str = "/") -> str:
    """``value`` when it is a same-host relative path (with query), else ``default``."""
    if not value or len(value) > MAX_LENGTH:
        return default
    candidate = value
    # Check the value and each decoding of it (double-encoded forms), and the Unicode-folded form
    # (fullwidth solidus and friends become "/" in some URL parsers).
    for _ in range(4):
        if not _plain_path(candidate) or not _plain_path(unicodedata.normalize("NFKC", candidate)):
            return default
        decoded = unquote(candidate)
        if decoded == candidate:
            break
        candidate = decoded
    else:
        return default
    return value
