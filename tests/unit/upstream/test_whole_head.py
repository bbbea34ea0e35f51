"""``relay._whole_head``: the head the relay writes for a whole answer never carries a control character but HTAB
in a name, value or reason phrase (a CR or LF there would split a header, or start a second answer), whatever the
client that read the console's answer let through."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.upstream import relay

BODY = b"hello"
CONTROLS = [chr(c) for c in [*range(0x09), *range(0x0A, 0x20), 0x7F]]


@dataclass
class _Answer:
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    status: int = 200
    reason: str = "OK"


def _answer(extra: dict[str, str] | None = None, reason: str = "OK") -> _Answer:
    headers = CIMultiDict({"Content-Length": str(len(BODY)), "Date": "Mon, 07 Dec 2026 05:30:00 GMT"})
    headers.update(extra or {})
    return _Answer(headers, 200, reason)


def _request(keep_alive: bool = True) -> object:
    return make_mocked_request("GET", "/", headers={"Host": "x"}, closing=not keep_alive)


def test_a_plain_answer_is_the_head_aiohttp_would_write() -> None:
    head = relay._whole_head(_answer({"X-Tab": "a\tb"}), _request(), BODY)  # type: ignore[arg-type]
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Mon, 07 Dec 2026 05:30:00 GMT\r\nX-Tab: a\tb\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    closing = relay._whole_head(_answer(), _request(keep_alive=False), BODY)  # type: ignore[arg-type]
    assert closing is not None and closing.endswith(b"\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("char", CONTROLS, ids=[f"0x{ord(c):02x}" for c in CONTROLS])
@pytest.mark.parametrize("where", ["value", "name", "reason"])
def test_a_control_character_anywhere_is_refused(char: str, where: str) -> None:
    if where == "value":
        answer = _answer({"X-Evil": f"a{char}b"})
    elif where == "name":
        answer = _answer({f"X{char}Evil": "a"})
    else:
        answer = _answer(reason=f"O{char}K")
    with pytest.raises(ValueError, match="Forbidden control character"):
        relay._whole_head(answer, _request(), BODY)  # type: ignore[arg-type]


@pytest.mark.parametrize("smuggled", ["a\r\nX-Injected: 1", "a\rb", "a\nb", "\r\n\r\nHTTP/1.1 200 OK"])
def test_line_breaks_that_would_split_the_head_are_refused(smuggled: str) -> None:
    with pytest.raises(ValueError, match="Forbidden control character"):
        relay._whole_head(_answer({"X-Evil": smuggled}), _request(), BODY)  # type: ignore[arg-type]
