"""The sidecar's cookies (``proxy.auth.cookies``): one salt per purpose, secret rotation, attributes, reading the Cookie
header."""

from __future__ import annotations

import dataclasses

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from itsdangerous import TimestampSigner
from multidict import CIMultiDict

from proxy.auth.cookies import SET_COOKIE_CEILING, CookieCodec, cookie_value
from proxy.config.model import Secret, SessionSettings
from proxy.sessions.model import Ticket

SETTINGS = SessionSettings(cookie_secrets=(Secret("n" * 40), Secret("o" * 40)), lifetime=60, idle_timeout=30)


def test_ticket_round_trip_and_tampering():
    codec = CookieCodec(SETTINGS, secure=True)
    ticket = Ticket("abc", b"k" * 32)
    value = codec.encode_ticket(ticket)
    assert codec.decode_ticket(value) == ticket
    assert b"k" * 32 not in value.encode()
    # Change a character the signature covers fully (the last base64 character of the signature may
    # carry padding bits only, so changing it can decode to the same bytes).
    assert codec.decode_ticket(value.replace("1.abc.", "1.abd.", 1)) is None
    signature_start = value.rindex(".") + 1
    flipped = "B" if value[signature_start] != "B" else "C"
    assert codec.decode_ticket(value[:signature_start] + flipped + value[signature_start + 1 :]) is None
    assert codec.decode_ticket("garbage") is None
    assert codec.decode_ticket(value) == ticket  # from the cache of verified values this time
    assert codec.session_name == "__Host-sso_sidecar"


def test_tickets_signed_with_an_older_secret_keep_working():
    old = CookieCodec(dataclasses.replace(SETTINGS, cookie_secrets=(Secret("o" * 40),)), secure=False)
    value = old.encode_ticket(Ticket("abc", b"k" * 32))
    assert CookieCodec(SETTINGS, secure=False).decode_ticket(value) == Ticket("abc", b"k" * 32)
    retired = dataclasses.replace(SETTINGS, cookie_secrets=(Secret("n" * 40),))
    assert CookieCodec(retired, secure=False).decode_ticket(value) is None


def test_a_login_cookie_cannot_stand_in_for_a_session_ticket():
    codec = CookieCodec(SETTINGS, secure=False)
    response = web.Response()
    codec.set_login(response, "1.abc." + "a" * 43, {})
    value = next(iter(response.cookies.values())).value
    assert codec.decode_ticket(value) is None


def set_cookie(set_it) -> tuple[str, str, str]:
    """(name, value, Set-Cookie header) of the one cookie ``set_it(response)`` sets."""
    response = web.Response()
    set_it(response)
    (morsel,) = response.cookies.values()
    return morsel.key, morsel.value, morsel.OutputString()


def test_the_break_glass_cookie_is_host_bound_strict_and_round_trips():
    codec = CookieCodec(SETTINGS, secure=True)
    name, value, header = set_cookie(lambda r: codec.set_break_glass(r, "fingerprint.grant", max_age=900))
    assert name == codec.break_glass_name == "__Host-sso_sidecar_break_glass"
    assert {"HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=900"} <= set(header.split("; "))
    assert codec.decode_break_glass(value, max_age=900) == "fingerprint.grant"
    assert codec.decode_break_glass(value.replace("grant", "grunt"), max_age=900) is None
    assert codec.decode_break_glass("fingerprint.grant", max_age=900) is None
    assert codec.decode_break_glass("", max_age=900) is None and codec.decode_break_glass(None, max_age=900) is None


def test_break_glass_and_session_cookies_cannot_stand_in_for_each_other():
    codec = CookieCodec(SETTINGS, secure=False)
    ticket = codec.encode_ticket(Ticket("abc", b"k" * 32))
    _, login, _ = set_cookie(lambda r: codec.set_login(r, "state-" + "a" * 40, {}))
    _, break_glass, _ = set_cookie(lambda r: codec.set_break_glass(r, "1.abc." + "a" * 43, max_age=900))
    assert codec.decode_break_glass(ticket, max_age=900) is None
    assert codec.decode_break_glass(login, max_age=900) is None
    assert codec.decode_ticket(break_glass) is None


def test_a_break_glass_cookie_older_than_its_max_age_is_refused(monkeypatch):
    codec = CookieCodec(SETTINGS, secure=False)
    now = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: now(self) - 901)
    _, value, _ = set_cookie(lambda r: codec.set_break_glass(r, "fingerprint.grant", max_age=900))
    monkeypatch.undo()
    assert codec.decode_break_glass(value, max_age=900) is None
    assert codec.decode_break_glass(value, max_age=1000) == "fingerprint.grant"


def test_break_glass_cookies_follow_the_cookie_secret_rotation():
    old = CookieCodec(dataclasses.replace(SETTINGS, cookie_secrets=(Secret("o" * 40),)), secure=False)
    _, value, _ = set_cookie(lambda r: old.set_break_glass(r, "fingerprint.grant", max_age=900))
    assert CookieCodec(SETTINGS, secure=False).decode_break_glass(value, max_age=900) == "fingerprint.grant"
    retired = dataclasses.replace(SETTINGS, cookie_secrets=(Secret("n" * 40),))
    assert CookieCodec(retired, secure=False).decode_break_glass(value, max_age=900) is None


@pytest.mark.parametrize(
    "headers",
    [
        [],
        ["other=1"],
        ["sso=abc.def-_1"],
        ["a=1; sso=abc.def; b=2"],
        ["a=1;sso=abc.def;b=2"],
        ["sso_login_x=1; sso=abc"],
        ["xsso=evil; sso=good"],
        ["sso=first; sso=second"],
        ['sso="quoted value"'],
        ["sso=with\\\\backslash"],
        ["sso="],
        ["a=1", "sso=in-the-second-header"],
        ["sso=one", "sso=two"],
        ["sso = spaced"],
        ["notsso=1"],
        ["sso=y; sso =x"],  # aiohttp reads the name with the space too, and the last one wins
        ['x="a; sso=evil"'],  # inside another cookie's quoted value: no sso cookie at all
        ['x="a; sso=ticket; b=c"'],
        ["sso=a b"],
        ["sso=a\tb"],
    ],
)
def test_cookie_value_agrees_with_aiohttps_parser(headers):
    request = make_mocked_request("GET", "/", headers=CIMultiDict([("Cookie", h) for h in headers]))
    assert cookie_value(request, "sso") == request.cookies.get("sso")


# --------------------------------------------------------------------------------------------------
# Pending-login cookies: expire only what was signed here, a few per answer


def started(codec: CookieCodec, count: int, existing: dict[str, str] | None = None) -> dict[str, str]:
    """The cookies a browser holds after ``count`` more sign-ins started (the codec's answers applied)."""
    jar = dict(existing or {})
    for i in range(count):
        response = web.Response()
        codec.set_login(response, f"{i:04d}-state-" + "s" * 34, jar)
        for morsel in response.cookies.values():
            if morsel["max-age"] == "0":
                jar.pop(morsel.key, None)
            else:
                jar[morsel.key] = morsel.value
    return jar


def test_a_flood_of_look_alike_pending_login_cookies_gets_no_set_cookie_of_its_own():
    codec = CookieCodec(SETTINGS, secure=True)
    junk = {f"{codec.login_prefix}{i:023d}": "x" for i in range(150)}
    # Look-alikes that pass the cheap test (the name matches the value) but were never signed here.
    junk |= {f"{codec.login_prefix}{'a' * 16}{i}": "a" * 16 + f"{i}.AAAAAA.forged" for i in range(20)}
    response = web.Response()
    codec.set_login(response, "new-state-" + "n" * 33, junk)
    (morsel,) = response.cookies.values()  # the new login's cookie, nothing else
    assert morsel.key == codec.login_cookie_name("new-state-" + "n" * 33) and morsel["max-age"] != "0"


def test_own_pending_login_cookies_beyond_the_bound_are_expired_oldest_first_a_few_per_answer():
    codec = CookieCodec(dataclasses.replace(SETTINGS, max_pending_logins=2), secure=False)
    jar = started(CookieCodec(dataclasses.replace(SETTINGS, max_pending_logins=100), secure=False), 20)
    assert len(jar) == 20
    response = web.Response()
    codec.set_login(response, "next-state-" + "n" * 32, jar)
    assert len(response.cookies) == SET_COOKIE_CEILING
    cleared = {m.key for m in response.cookies.values() if m["max-age"] == "0"}
    assert len(cleared) == SET_COOKIE_CEILING - 1
    oldest_first = [name for name, _ in codec.pending_logins(jar)]
    assert cleared == set(oldest_first[: SET_COOKIE_CEILING - 1])
    jar = started(codec, 3, jar)  # later answers clear the rest
    assert len(codec.pending_logins(jar)) == 2


def test_pending_login_cookies_signed_under_a_retired_secret_are_left_alone():
    old = CookieCodec(dataclasses.replace(SETTINGS, cookie_secrets=(Secret("o" * 40),)), secure=False)
    jar = started(old, 3)
    retired = CookieCodec(dataclasses.replace(SETTINGS, cookie_secrets=(Secret("n" * 40),)), secure=False)
    assert retired.pending_logins(jar) == []
    assert len(CookieCodec(SETTINGS, secure=False).pending_logins(jar)) == 3


def test_a_remembered_ticket_is_refused_once_its_signature_is_too_old(monkeypatch):
    """The values a codec remembers are served only while their signature is young enough: at the same age
    (the lifetime and a minute) as a value read for the first time, which itsdangerous judges."""
    codec = CookieCodec(SETTINGS, secure=False)
    ticket = Ticket("abc", b"k" * 32)
    value = codec.encode_ticket(ticket)
    assert codec.decode_ticket(value) == ticket  # verified, and remembered
    signed = TimestampSigner.get_timestamp(None)  # type: ignore[arg-type]
    limit = SETTINGS.lifetime + 60
    for age, expected in ((limit - 1, ticket), (limit + 1, None)):
        monkeypatch.setattr("proxy.auth.cookies.time.time", lambda age=age: signed + age + 0.5)
        monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self, age=age: signed + age)
        assert codec.decode_ticket(value) == expected, age  # remembered
        assert CookieCodec(SETTINGS, secure=False).decode_ticket(value) == expected, age  # read afresh
    monkeypatch.undo()
    assert codec.decode_ticket(value) == ticket


def test_only_a_value_that_was_verified_is_remembered():
    """A value one character away from a remembered one is verified, and refused."""
    codec = CookieCodec(SETTINGS, secure=False)
    value = codec.encode_ticket(Ticket("abc", b"k" * 32))
    assert codec.decode_ticket(value) is not None
    forged = value.replace("1.abc.", "1.abd.", 1)
    assert codec.decode_ticket(forged) is None
    assert codec.decode_ticket(forged) is None
    assert codec.decode_ticket(value + " ") is None
