"""Weak and placeholder secrets are refused: the rule, and the config errors that name their key."""

from __future__ import annotations

import base64
import random
import secrets

import pytest

from proxy.config.secrets import weakness
from support.config_text import MINIMAL, problems

PLACEHOLDERS = [
    "REPLACE-with-output-of-openssl-rand-base64-24",  # the value an earlier example shipped: 45 characters
    "REPLACE-with-output-of-openssl-rand-base64-32",
    "changeme-changeme-0123456789abcdefghij",
    "YOUR-COOKIE-SECRET-8f3a9c2e7b1d4f6a0c5e",
    "PLACEHOLDER_placeholder_0123456789abcdef",
    "cookie-secret-TODO-0f3a9c2e7b1d4f6a0c5e1b",
    "secret-xxxx-0123456789abcdefghijklmnopqr",
    "secret-XXXX-0123456789abcdefghijklmnopqr",
    "ChangeMe-0123456789abcdefghijklmnopqrstuv",
    "Your-Cookie-Secret-0123456789abcdefghijkl",
    "an-example-secret-for-the-docs-0123456789",
]
PATTERNS = ["a" * 40, "ab" * 20, "abc" * 14, "1234567890" * 4, "Passw0rd!" * 5]
LOW = ["0123456789" * 3 + "01", "deadbeef" * 3, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"]


@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_placeholder_words_are_refused(value: str) -> None:
    assert "placeholder" in (weakness(value) or "")


@pytest.mark.parametrize("value", PATTERNS + LOW)
def test_repeated_patterns_and_low_randomness_are_refused(value: str) -> None:
    reason = weakness(value) or ""
    assert "repeats a short pattern" in reason or "too little randomness" in reason


def test_random_values_of_the_recommended_kinds_pass() -> None:
    """No false alarms: 20,000 values of each recommended kind. Drawn from a seeded generator, so a run
    cannot fail by the one-in-millions chance of a placeholder word in random text (secretcheck.py)."""
    rng = random.Random(20261201)
    makers = {
        "openssl rand -base64 32": lambda: base64.b64encode(rng.randbytes(32)).decode(),
        "openssl rand -base64 24": lambda: base64.b64encode(rng.randbytes(24)).decode(),
        "openssl rand -hex 16": lambda: rng.randbytes(16).hex(),
        "secrets.token_urlsafe(32)": lambda: base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode(),
        "secrets.token_urlsafe(18)": lambda: base64.urlsafe_b64encode(rng.randbytes(18)).rstrip(b"=").decode(),
    }
    for kind, make in makers.items():
        refused = [v for v in (make() for _ in range(20_000)) if weakness(v)]
        assert refused == [], f"{kind}: {refused[:3]}"


@pytest.mark.parametrize(
    "value",
    [
        "WFnqDGUXuXzpNzICo_gGViZZWmEeVFs_tOdO--fVzPQ",  # token_urlsafe(32) that an earlier rule refused ("tOdO")
        "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-xXxX-uE_oIiT",  # mixed case is no person's placeholder
        "cHaNgE0q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sAuE_oIiT",
    ],
)
def test_mixed_case_words_in_random_text_pass(value: str) -> None:
    assert weakness(value) is None


def test_a_placeholder_cookie_secret_is_a_config_error_naming_the_key() -> None:
    found = problems(MINIMAL, {"COOKIE_SECRET": PLACEHOLDERS[1], "OIDC_SECRET": "x"})
    assert "placeholder" in found["session.cookie_secret"]


def test_each_rotated_cookie_secret_is_checked() -> None:
    text = MINIMAL.replace('cookie_secret: "${COOKIE_SECRET}"', 'cookie_secret: ["${COOKIE_SECRET}", "${OLD}"]')
    found = problems(text, {"COOKIE_SECRET": secrets.token_urlsafe(32), "OLD": "c" * 40, "OIDC_SECRET": "x"})
    assert "repeats a short pattern" in found["session.cookie_secret[1]"]
    assert "session.cookie_secret[0]" not in found


@pytest.mark.parametrize("key", ["token", "token_file"])
def test_a_weak_break_glass_token_is_a_config_error_naming_the_key(key: str, tmp_path) -> None:
    value = PLACEHOLDERS[0]
    if key == "token_file":
        path = tmp_path / "bg"
        path.write_text(value + "\n")
        value = str(path)
    found = problems(MINIMAL + f'break_glass: {{{key}: "{value}"}}\n')
    assert "placeholder" in found[f"break_glass.{key}"]
    assert "openssl rand -base64 24" in found[f"break_glass.{key}"]
    assert PLACEHOLDERS[0] not in found[f"break_glass.{key}"]  # the problem never echoes the secret
