"""Return-to URLs: only same-host relative paths survive, against a generated open-redirect corpus."""

from __future__ import annotations

import itertools
from urllib.parse import quote, urljoin, urlsplit

import pytest

from proxy.redirects import safe_return_to

HOSTS = ["evil.com", "evil.com:443", "127.0.0.1.evil.com", "good.com@evil.com", "good.com.evil.com"]
PREFIXES = [
    "//", "///", "////", "/\\", "\\/", "\\\\", "/\\/", "\\/\\/", "/%09/", "/%5c", "/%2f%2f", "%2f%2f", "/%2F/",
    "https:", "https://", "http://", "https:/", "http:\\\\", "//\\", "/ /", " //", "\t//", "/\t/", "/\n/", "/\r/",
    "/%0a/", "/%0d/", "/%00/", "/.//", "/\u3000/", "/\uff0f", "\uff0f\uff0f", "/\u2215", "javascript:", "data:",
    "%252f%252f", "/%252f%252f", "/%5C%5C", "%5c%5c", "/%E3%80%80/", "/\u00a0/", "/\x0b/", "//%09",
]  # fmt: skip
SUFFIXES = ["", "/", "/path?x=1", "#frag", "%2f..", "?next=/"]


def corpus() -> list[str]:
    payloads = {p + h + s for p, h, s in itertools.product(PREFIXES, HOSTS, SUFFIXES)}
    payloads |= {quote(p, safe="") for p in list(payloads)[:200]}
    payloads |= {
        "https://good.com@evil.com", "javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x",
        "evil.com", "@evil.com", "/\\evil.com", "/%09/evil.com", "/%5cevil.com", "https:evil.com",
        "/ /evil.com", "\\/\\/evil.com", "//evil%E3%80%82com", "/\\\\evil.com", "\x00//evil.com",
    }  # fmt: skip
    return sorted(payloads)


PAYLOADS = corpus()


def test_corpus_is_several_hundred_payloads():
    assert len(PAYLOADS) > 500


@pytest.mark.parametrize("payload", PAYLOADS)
def test_open_redirect_payloads_never_leave_the_site(payload: str):
    result = safe_return_to(payload)
    # How a browser resolves the Location header against our origin: it must stay on our host.
    resolved = urlsplit(urljoin("https://console.example.com/", result.replace("\\", "/")))
    assert resolved.netloc == "console.example.com", (payload, result)
    assert resolved.scheme == "https"


@pytest.mark.parametrize(
    "path",
    ["/", "/reports?id=7", "/a/b/c?x=1&y=%2F", "/search?q=%E2%9C%93", "/deep/path/", "/x#section", "/caf%C3%A9"],
)
def test_ordinary_paths_are_kept_exactly(path: str):
    assert safe_return_to(path) == path


@pytest.mark.parametrize("value", [None, "", "x" * 5000])
def test_empty_or_huge_values_fall_back(value):
    assert safe_return_to(value, default="/home") == "/home"
