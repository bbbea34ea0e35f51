"""Return-to URLs: only same-host relative paths survive, against a generated open-redirect corpus.

The corpus is reported per payload family (one test each, looping over its share and naming every
payload that escapes), so the test count says how many behaviours are covered, not how many strings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import ada_url
import pytest
from conftest import SidecarFactory
from yarl import URL

from proxy.auth.redirects import safe_return_to
from support.idp import login, logout

HOSTS = ["evil.com", "evil.com:443", "127.0.0.1.evil.com", "good.com@evil.com", "good.com.evil.com"]
# Prefixes that browsers (or servers behind them) have been fooled by, by family.
PREFIXES = {
    "slashes and backslashes": ["//", "///", "////", "/\\", "\\/", "\\\\", "/\\/", "\\/\\/", "//\\", "/.//"],
    "percent-encoded": [
        "/%09/", "/%5c", "/%2f%2f", "%2f%2f", "/%2F/", "/%0a/", "/%0d/", "/%00/", "%252f%252f", "/%252f%252f",
        "/%5C%5C", "%5c%5c", "/%E3%80%80/", "//%09",
    ],
    "whitespace and control characters": [
        "/ /", " //", "\t//", "/\t/", "/\n/", "/\r/", "/\x0b/", "/\u00a0/", "/\u3000/",
    ],
    "unicode look-alikes": ["/\uff0f", "\uff0f\uff0f", "/\u2215"],
    "schemes": ["https:", "https://", "http://", "https:/", "http:\\\\", "javascript:", "data:"],
}  # fmt: skip
SUFFIXES = ["", "/", "/path?x=1", "#frag", "%2f..", "?next=/"]
HAND_PICKED = [
    "https://good.com@evil.com", "javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x",
    "evil.com", "@evil.com", "/\\evil.com", "/%09/evil.com", "/%5cevil.com", "https:evil.com",
    "/ /evil.com", "\\/\\/evil.com", "//evil%E3%80%82com", "/\\\\evil.com", "\x00//evil.com",
]  # fmt: skip


def corpus() -> dict[str, list[str]]:
    """Family -> payloads; each payload in exactly one family (the first that produces it)."""
    families: dict[str, set[str]] = {
        family: {p + h + s for p, h, s in itertools.product(prefixes, HOSTS, SUFFIXES)}
        for family, prefixes in PREFIXES.items()
    }
    generated = set().union(*families.values())
    families["fully percent-encoded"] = {quote(p, safe="") for p in sorted(generated)[:200]}
    families["hand-picked"] = set(HAND_PICKED)
    seen: set[str] = set()
    out = {}
    for family, payloads in families.items():
        out[family] = sorted(payloads - seen)
        seen |= payloads
    return out


CORPUS = corpus()
PAYLOADS = sorted(itertools.chain.from_iterable(CORPUS.values()))
ORIGIN = "https://console.example.com"


def leads_off(location: str, origin: str) -> str | None:
    """Where a browser goes for ``Location: location`` on a page of ``origin``, if that is anywhere else;
    None if it stays. Parsed as the WHATWG URL Standard says (ada, the parser in Node.js): tab, CR and LF
    are removed wherever they are, leading and trailing C0 controls and spaces stripped, a backslash is a
    slash in http(s) URLs, and ``///host`` is a host."""
    base = ada_url.URL(origin + "/")
    try:
        url = ada_url.URL(location, origin + "/")
    except ValueError:
        return None  # not a URL at all: a browser goes nowhere
    if (url.protocol, url.host) == (base.protocol, base.host):
        return None
    return url.href


@pytest.mark.parametrize(
    ("location", "off_site"),
    [
        ("/reports?id=7", False),
        ("/%2F%2Fevil.com", False),
        ("\uff0f\uff0fevil.com", False),
        ("https:evil.com", False),  # a path on this site, for a special scheme
        ("//evil.com", True),
        ("/\t/evil.com", True),
        ("/\r\n/evil.com", True),
        ("\t//evil.com", True),
        (" //evil.com", True),
        ("\x00//evil.com", True),
        ("///evil.com", True),
        ("https:///evil.com", True),
        ("/\\evil.com", True),
        ("//evil%E3%80%82com", True),
        ("javascript:alert(1)", True),
        ("http://console.example.com/x", True),
    ],
)
def test_the_oracle_reads_a_location_as_a_browser_does(location: str, off_site: bool):
    assert (leads_off(location, ORIGIN) is not None) == off_site


def test_the_corpus_has_every_family_and_over_a_thousand_payloads():
    assert all(CORPUS.values()) and len(PAYLOADS) == len(set(PAYLOADS)) > 1000


@pytest.mark.parametrize("family", list(CORPUS))
def test_open_redirect_payloads_never_leave_the_site(family: str):
    escaped = []
    for payload in CORPUS[family]:
        result = safe_return_to(payload)
        where = leads_off(result, ORIGIN)
        if where is not None:
            escaped.append(f"{payload!r} -> {result!r} -> {where}")
    assert not escaped, f"{len(escaped)} of {len(CORPUS[family])} payloads leave the site:\n" + "\n".join(escaped)


@pytest.mark.parametrize(
    "path",
    ["/", "/reports?id=7", "/a/b/c?x=1&y=%2F", "/search?q=%E2%9C%93", "/deep/path/", "/x#section", "/caf%C3%A9"],
)
def test_ordinary_paths_are_kept_exactly(path: str):
    assert safe_return_to(path) == path


@pytest.mark.parametrize("value", [None, "", "x" * 5000])
def test_empty_or_huge_values_fall_back(value):
    assert safe_return_to(value, default="/home") == "/home"


# --------------------------------------------------------------------------------------------------
# Absolute URLs: this site's own origin, and allowed_redirect_hosts

ALLOWED = ("app.example.org", "api.example.org:8443")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://console.example.com/reports?id=7#top", "/reports?id=7#top"),
        ("https://console.example.com:443/x", "/x"),
        ("https://CONSOLE.example.com/x", "/x"),
        ("https://console.example.com", "/"),
        ("https://app.example.org/home", "https://app.example.org/home"),
        ("https://app.example.org:443/home", "https://app.example.org:443/home"),
        ("http://app.example.org/home", "http://app.example.org/home"),
        ("https://api.example.org:8443/v1", "https://api.example.org:8443/v1"),
    ],
)
def test_absolute_urls_on_this_site_or_an_allowed_host_are_kept(value: str, expected: str):
    assert safe_return_to(value, allowed_hosts=ALLOWED, public_origin=ORIGIN) == expected


@pytest.mark.parametrize(
    "value",
    [
        "http://console.example.com/x",  # another scheme is another origin
        "https://console.example.com:8443/x",
        "https://console.example.com.evil.com/x",
        "https://evil.com@console.example.com/x",
        "https://console.example.com@evil.com/x",
        "https://app.example.org:8443/x",  # a bare host entry means its default port only
        "https://api.example.org/v1",
        "https://sub.app.example.org/x",
        "https://app.example.org./x",
        "https://app.example.org\\@evil.com/x",
        "https://app.example.org%2F@evil.com/x",
        "https://app.example.org//evil.com",
        "https://app.example.org/%2F%2Fevil.com",
        "https://app.example.org/\t/evil.com",
        "https://\uff41pp.example.org/x",
        "javascript://app.example.org/%0aalert(1)",
        "ftp://app.example.org/x",
        "//app.example.org/x",
    ],
)
def test_other_absolute_urls_fall_back(value: str):
    assert safe_return_to(value, allowed_hosts=ALLOWED, public_origin=ORIGIN) == "/"


def test_without_an_allow_list_only_relative_paths_pass():
    assert safe_return_to("https://app.example.org/home") == "/"
    assert safe_return_to("https://console.example.com/x") == "/"


# --------------------------------------------------------------------------------------------------
# End to end: the corpus against a real sidecar's /oauth2/start and /oauth2/sign_out


REDIRECT_ALLOWED = "allowed.example.org"


@pytest.fixture(scope="module")
def redirect_sidecar(idp: Any, console: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    factory = SidecarFactory(idp, console, tmp_path_factory.mktemp("redirects"))
    # The corpus starts about 1,500 sign-ins from one address, none of them finished: lift the per-address bound.
    config = {"allowed_redirect_hosts": [REDIRECT_ALLOWED], "session": {"max_pending_logins_per_address": 100_000}}
    yield factory(config, name="redirects")
    factory.stop_all()


def with_rd(sidecar: Any, path: str, payload: str) -> URL:
    return URL(sidecar.url_for(path)).with_query(rd=payload)


def report(failures: list[str], out_of: int) -> str:
    return f"{len(failures)} of {out_of} payloads:\n" + "\n".join(failures)


async def test_every_payload_on_start_goes_only_to_the_provider(http, redirect_sidecar, idp):
    authorize = idp.discovery()["authorization_endpoint"]
    client = http(cookies=False)
    failures = []
    for payload in PAYLOADS:
        async with client.get(with_rd(redirect_sidecar, "/oauth2/start", payload)) as resp:
            location = resp.headers.get("Location", "")
            if resp.status != 302 or not location.startswith(authorize + "?"):
                failures.append(f"{payload!r} -> {resp.status} {location!r}")
    assert not failures, report(failures, len(PAYLOADS))


async def test_every_payload_on_sign_out_stays_on_the_site(http, redirect_sidecar):
    client = http(cookies=False)
    failures = []
    for payload in PAYLOADS:
        async with client.get(with_rd(redirect_sidecar, "/oauth2/sign_out", payload)) as resp:
            location = resp.headers.get("Location", "")
            if resp.status != 302 or leads_off(location, redirect_sidecar.url) is not None:
                failures.append(f"{payload!r} -> {resp.status} {location!r}")
    assert not failures, report(failures, len(PAYLOADS))


async def test_an_allowed_redirect_host_is_honoured_on_sign_out(http, redirect_sidecar):
    target = f"https://{REDIRECT_ALLOWED}/bye?x=1"
    async with http(cookies=False).get(with_rd(redirect_sidecar, "/oauth2/sign_out", target)) as resp:
        assert resp.headers["Location"] == target
    own = redirect_sidecar.url_for("/reports?id=7")
    async with http(cookies=False).get(with_rd(redirect_sidecar, "/oauth2/sign_out", own)) as resp:
        assert resp.headers["Location"] == "/reports?id=7"


# A spread of the corpus (every kind of prefix), completed through a real login: the return-to the
# sidecar stored is where the callback sends the browser.
LOGIN_SAMPLE = sorted({p for i, p in enumerate(PAYLOADS) if i % 7 == 0} | {
    "//evil.com", "/\\evil.com", "/%2F%2Fevil.com", "/%252F%252Fevil.com", "\uff0f\uff0fevil.com",
    "https://good.com@evil.com", "/\t/evil.com", "javascript:alert(1)", f"https://{REDIRECT_ALLOWED}.evil.com/",
})  # fmt: skip


async def test_after_login_the_callback_never_sends_the_browser_off_site(http, redirect_sidecar):
    client = http()
    signed_in = await login(client, redirect_sidecar.url_for("/api/whoami"), "alice.smith")
    assert signed_in.status == 200
    failures = []
    for payload in LOGIN_SAMPLE:
        location = await _login_redirect(client, with_rd(redirect_sidecar, "/oauth2/start", payload))
        if leads_off(location, redirect_sidecar.url) is not None:
            failures.append(f"{payload!r} -> {location!r}")
    assert not failures, report(failures, len(LOGIN_SAMPLE))


async def test_after_sign_out_at_the_provider_the_browser_stays_on_the_site(http, redirect_sidecar):
    client = http()
    await login(client, redirect_sidecar.url_for("/api/whoami"), "alice.smith")
    url = with_rd(redirect_sidecar, "/oauth2/sign_out", "/%2F%2Fevil.com/\t/x")
    last = await logout(client, str(url))
    assert last.url.host == URL(redirect_sidecar.url).host and last.url.port == redirect_sidecar.port, last.url
    assert last.url.path in ("/", "/oauth2/signed_out")


async def _login_redirect(client: Any, start: URL) -> str:
    """Follow a login that the provider completes at once (signed in there already): the Location the
    sidecar's callback answers with."""
    url = start
    for _ in range(10):
        async with client.get(url) as resp:
            assert resp.status in (302, 303), (url, resp.status, await resp.text())
            location = resp.headers["Location"]
        if url.path == "/oauth2/callback":
            return location
        url = url.join(URL(location))
    raise AssertionError(f"no callback reached from {start}")
