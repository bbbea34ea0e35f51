"""The secret of a refused Save, kept sealed in the form (``proxy.admin.pending``): only its holder opens it,
only for an hour, and under a rotated cookie secret too."""

from __future__ import annotations

from proxy.admin.pending import KEPT_FOR, open_sealed, seal
from proxy.config.model import Secret

NEW, OLD = Secret("n" * 40), Secret("o" * 40)
HOLDER = "session abc"


def test_the_holder_opens_what_it_sealed_and_the_secret_is_not_in_the_form() -> None:
    sealed = seal([NEW], HOLDER, "the-client-secret")
    assert "the-client-secret" not in sealed
    assert open_sealed([NEW], HOLDER, sealed) == "the-client-secret"


def test_another_holder_an_hour_later_or_junk_opens_nothing() -> None:
    sealed = seal([NEW], HOLDER, "the-client-secret", now=1000.0)
    assert open_sealed([NEW], "grant other", sealed, now=1001.0) == ""
    assert open_sealed([NEW], HOLDER, sealed, now=1000.0 + KEPT_FOR + 1) == ""
    assert open_sealed([NEW], HOLDER, sealed[:-2] + "AA", now=1001.0) == ""
    for junk in ("", "!!!", "A" * 9000, "AAAA"):
        assert open_sealed([NEW], HOLDER, junk) == ""


def test_a_rotated_cookie_secret_still_opens_it() -> None:
    sealed = seal([OLD], HOLDER, "s")
    assert open_sealed([NEW, OLD], HOLDER, sealed) == "s" and open_sealed([NEW], HOLDER, sealed) == ""
