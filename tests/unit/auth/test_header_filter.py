"""The per-request memos of the gate's header and path work (``HeaderFilter``, ``normalise``): each answers
exactly what the full computation answers, for every sequence a client can send, and stays bounded."""

from __future__ import annotations

import itertools

import pytest
from multidict import CIMultiDict

from proxy.auth import identity as identity_module
from proxy.auth import paths as paths_module
from proxy.auth.identity import HeaderFilter, IdentityHeaders, remove_headers
from proxy.auth.paths import normalise
from proxy.config.model import DEFAULT_HEADERS
from proxy.errors import BadRequest

KEYS = frozenset({"x-forwarded-user", "x-forwarded-for", "connection"})
NAMES = ["Host", "Accept", "X-Forwarded-User", "x_forwarded_user", "X.Forwarded.For", "Connection", "Cookie",
         "X-Auth-Request-Email", "x-forwarded-user", "Accept"]  # fmt: skip


def _headers(names: tuple[str, ...]) -> CIMultiDict[str]:
    return CIMultiDict((name, f"value {i}") for i, name in enumerate(names))


@pytest.mark.parametrize("prefix", [None, "x-auth-request-"])
def test_a_filter_removes_what_remove_headers_removes_first_time_and_remembered(prefix: str | None) -> None:
    """Every ordering of names, duplicates and look-alikes included: the same headers, values and order
    remain as after ``remove_headers``, on the first request of a sequence and on every later one."""
    header_filter = HeaderFilter(KEYS, prefix=prefix, first_chars=frozenset("xXcC"))
    for names in itertools.islice(itertools.permutations(NAMES, 6), 0, None, 97):
        expected = _headers(names)
        remove_headers(expected, KEYS, prefix=prefix)
        for _ in range(2):  # the second time from the memo
            headers = _headers(names)
            header_filter.remove(headers)
            assert list(headers.items()) == list(expected.items()), names


def test_a_remembered_verdict_belongs_to_its_own_drop_set() -> None:
    """Two configurations (two identity mappings) meeting the same client: each strips its own headers."""
    names = ("Host", "X-Console-User", "X_Forwarded_User", "Accept")
    one = IdentityHeaders((("X-Console-User", "sub"),))
    other = IdentityHeaders(DEFAULT_HEADERS)
    for _ in range(2):
        first, second = _headers(names), _headers(names)
        one.strip(first)
        other.strip(second)
        assert list(first.keys()) == ["Host", "Accept"]  # X-Forwarded-User is a default header: always stripped
        assert list(second.keys()) == ["Host", "X-Console-User", "Accept"]


def test_the_filters_memory_is_bounded_whatever_clients_send() -> None:
    header_filter = HeaderFilter(KEYS)
    for i in range(3 * identity_module._FILTER_MAX):
        headers = _headers(("Host", f"X-Made-Up-{i}", "X_Forwarded_For"))
        header_filter.remove(headers)
        assert list(headers.keys()) == ["Host", f"X-Made-Up-{i}"]
    assert len(header_filter._known) <= identity_module._FILTER_MAX
    huge = (*(f"X-{i}-" + "a" * 100 for i in range(100)), "X-Forwarded-For")
    headers = _headers(huge)
    header_filter.remove(headers)
    assert "X-Forwarded-For" not in headers and len(headers) == 100
    assert huge not in header_filter._known  # too large to remember, still filtered


def test_normalise_remembers_its_answers_and_never_a_refusal() -> None:
    assert normalise("/static/%2e%2e/admin?x=1") is normalise("/static/%2e%2e/admin?x=1")
    assert normalise("/static/%2e%2e/admin?x=1").path_qs == "/admin?x=1"
    for _ in range(2):
        with pytest.raises(BadRequest):
            normalise("/static/..%2Fadmin")
    assert "/static/..%2Fadmin" not in paths_module._NORMALISED


def test_normalises_memory_is_bounded() -> None:
    for i in range(3 * paths_module._REMEMBERED_MAX):
        assert normalise(f"/a/./b{i}?q").path_qs == f"/a/b{i}?q"
    assert len(paths_module._NORMALISED) <= paths_module._REMEMBERED_MAX
    long = "/" + "a" * (paths_module._REMEMBERED_TARGET_MAX + 1)
    assert normalise(long).path == long
    assert long not in paths_module._NORMALISED
