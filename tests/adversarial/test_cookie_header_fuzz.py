"""The hand-written Cookie reader (``proxy.auth.cookies.cookie_value``) against hostile Cookie headers.

It reads the session cookie straight from the header in the common case and leaves everything else to
aiohttp's parser; the attack is a header on which the two disagree, so that the gate reads one session cookie
while something else (aiohttp, the settings page) reads another, or a look-alike name's value is taken for the
real one. Seeded random headers built from the characters that matter (separators, quotes, backslashes,
spaces, tabs, look-alike names, the name twice, several Cookie lines) must read the same through both. The
seeds are fixed, so a failure can be replayed.
"""

from __future__ import annotations

import random

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.auth import cookies
from proxy.auth.cookies import cookie_value

NAME = "sso_sidecar"
NAMES = [
    NAME,
    "sso_sidecar_login_x",
    "xsso_sidecar",
    "SSO_SIDECAR",
    "sso_sidecar ",
    " sso_sidecar",
    "sso",
    "a",
    "__Host-sso_sidecar",
]
VALUE_PIECES = ["abc", "v1.eyJ0", "-_", "=", '"', "\\", " ", "\t", ";", ",", "%3B", "é", "", "sso_sidecar=", "x=y"]


def _pair(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    value = "".join(rng.choice(VALUE_PIECES) for _ in range(rng.randint(0, 4)))
    if rng.random() < 0.2:
        value = '"' + value + '"'
    separator = rng.choice(["=", "=", "=", " = ", "=="])
    return name + separator + value


def _header(rng: random.Random) -> str:
    pairs = [_pair(rng) for _ in range(rng.randint(1, 5))]
    return rng.choice(["; ", ";", " ; ", ";;", "; ;"]).join(pairs) + rng.choice(["", ";", " ", "; "])


class _Request:
    """What ``cookie_value`` reads of a request, with aiohttp's own ``cookies`` (a mocked request costs 1.6 ms)."""

    cookies = web.BaseRequest.cookies

    def __init__(self, lines: list[str]) -> None:
        self._cache: dict[str, object] = {}
        self.headers = CIMultiDictProxy(CIMultiDict([("Cookie", line) for line in lines]))


def test_the_stand_in_request_reads_cookies_as_aiohttps_request_does() -> None:
    request = _Request(['a=1; sso_sidecar="q v"; sso_sidecar =x', "sso_sidecar=second-line"])
    assert dict(request.cookies) == {"a": "1", "sso_sidecar": "x"}


@pytest.mark.parametrize("seed", range(8))
def test_the_fast_reader_and_aiohttps_parser_read_the_same_session_cookie(seed: int) -> None:
    rng = random.Random(20261207 + seed)
    disagreements = []
    for _ in range(5_000):
        lines = [_header(rng) for _ in range(rng.choice([1, 1, 1, 2]))]
        request = _Request(lines)
        full = request.cookies.get(NAME)
        fast = cookie_value(request, NAME)  # type: ignore[arg-type]
        again = cookie_value(_Request(lines), NAME)  # type: ignore[arg-type] # remembered (up to 512 characters)
        if not fast == again == full:
            disagreements.append((lines, fast, again, full))
    assert not disagreements, disagreements[:5]


def test_what_is_remembered_of_cookie_headers_is_bounded_and_never_stale() -> None:
    other = "bounded_test_cookie"
    for i in range(3 * cookies._READS_MAX):
        header = f"{other}=value-{i}"
        assert cookie_value(_Request([header]), other) == f"value-{i}"  # type: ignore[arg-type]
    assert len(cookies._reads[other]) == cookies._READS_MAX
    # The newest are the ones kept, and each still reads as itself.
    assert f"{other}=value-{3 * cookies._READS_MAX - 1}" in cookies._reads[other]
    assert f"{other}=value-0" not in cookies._reads[other]
    assert cookie_value(_Request([f"{other}=value-0"]), other) == "value-0"  # type: ignore[arg-type]
    long = f"{other}=" + "v" * cookies._READ_LONGEST
    assert cookie_value(_Request([long]), other) == "v" * cookies._READ_LONGEST  # type: ignore[arg-type]
    assert long not in cookies._reads[other]
