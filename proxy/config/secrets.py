"""Refusing weak and placeholder secrets: a cookie secret or break-glass token someone never filled in.

A shipped example's ``REPLACE-with-output-of-openssl-rand-base64-24`` is 45 characters long, so a length
rule alone takes it; applied as it stands it would be a publicly known key. A secret is refused when it
holds an obvious placeholder word, repeats a short pattern, or carries well under 128 bits of randomness.
Two readings must both pass: the length times the bits of its alphabet (hex, base64, ...) at least 96,
and the spread of its characters (Shannon, times the length) at least 48, which catches ``aaaa...``-like
values. Random values of the recommended kinds (``openssl rand -base64 32``, ``-base64 24``, ``-hex 16``)
pass with a wide margin (tests/unit/config/test_secrets.py draws 100,000 of them).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

# A placeholder is written by a person: its words are in one case ("replace", "REPLACE", "Replace"), which
# random base64 rarely produces (a mixed-case "tOdO" is 8 times likelier than "todo" and "TODO" together).
# Long words are found anywhere...
_PLACEHOLDER_WORDS = tuple(
    form for word in ("replace", "change", "placeholder", "example") for form in (word, word.upper(), word.title())
)
# ...short ones only as a word of their own ("YOUR-SECRET", "secret-xxxx", "TODO"). A random 43-character
# base64url token then holds one by chance about once in 20 million (mostly a "todo" or "xxxx" between
# '-', '_' or an end); case-insensitive, it was once in 4 million (tests/unit/config/test_secrets.py).
_SHORT = "|".join(form for word in ("todo", "xxxx+", "your[-_]") for form in (word, word.upper(), word.capitalize()))
_PLACEHOLDER_TOKENS = re.compile(rf"(?<![A-Za-z0-9])(?:{_SHORT})(?![A-Za-z0-9])|^(?:your|YOUR|Your)[-_]")
MIN_ALPHABET_BITS = 96  # "well under 128 bits": random hex of 24 characters is the floor
MIN_SPREAD_BITS = 48  # the characters' spread: catches "aaaa...", "abab..." and their kin
_HEX = frozenset(string.hexdigits)
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=-_")


def weakness(secret: str) -> str | None:
    """Why ``secret`` is not a secret worth the name, or None."""
    found = next((w for w in _PLACEHOLDER_WORDS if w in secret), None)
    match = _PLACEHOLDER_TOKENS.search(secret)
    if found is not None or match is not None:
        word = found or (match.group() if match else "")
        return f"looks like a placeholder (it contains {word!r}); generate a real one: openssl rand -base64 32"
    if _repeats(secret):
        return "repeats a short pattern; generate a real one: openssl rand -base64 32"
    alphabet, spread = _alphabet_bits(secret), _spread_bits(secret)
    if alphabet < MIN_ALPHABET_BITS or spread < MIN_SPREAD_BITS:
        return (
            f"has too little randomness (about {int(min(alphabet, spread))} bits, well under 128); "
            "generate a real one: openssl rand -base64 32"
        )
    return None


def _repeats(secret: str) -> bool:
    """True when the secret is a shorter unit repeated (``abcabcabc``, ``1234567890123...``)."""
    n = len(secret)
    return any(secret == (secret[:unit] * (n // unit + 1))[:n] for unit in range(1, min(16, n // 2) + 1))


def _alphabet_bits(secret: str) -> float:
    chars = set(secret)
    if chars <= _HEX:
        size = 16
    elif chars <= set(string.digits):
        size = 10
    elif chars <= _BASE64:
        size = 64
    else:
        size = 94
    return len(secret) * math.log2(size)


def _spread_bits(secret: str) -> float:
    if not secret:
        return 0.0
    counts = Counter(secret)
    n = len(secret)
    return -n * sum(c / n * math.log2(c / n) for c in counts.values())
