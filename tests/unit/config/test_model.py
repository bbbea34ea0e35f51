"""The config model: secrets kept out of repr, and which changes a running process cannot apply."""

from __future__ import annotations

from dataclasses import replace

from support.config_text import MINIMAL, SECRET, parse


def test_secrets_never_show_in_repr():
    s = parse(MINIMAL)
    assert "client-secret-value" not in repr(s)
    assert SECRET not in repr(s)


def test_restart_needed_lists_what_cannot_change_live():
    a = parse(MINIMAL)
    b = parse(
        MINIMAL.replace('upstream: "http://127.0.0.1:8888"', 'upstream: "http://127.0.0.1:9999"\nlisten: ":5000"')
    )
    assert a.restart_needed(b) == ["listen"]  # the upstream changes live
    c = replace(a, workers=2, metrics_listen=("127.0.0.1", 9100), session=replace(a.session, store="redis"))
    assert a.restart_needed(c) == ["metrics_listen", "workers", "session.store"]


def test_the_uris_to_register_and_cookie_security_follow_public_url():
    s = parse(MINIMAL.replace("https://console.example.com", "http://127.0.0.1:4180"))
    assert s.redirect_uri == "http://127.0.0.1:4180/oauth2/callback"
    assert s.backchannel_logout_uri == "http://127.0.0.1:4180/oauth2/backchannel-logout"
    assert s.secure_cookies is False
