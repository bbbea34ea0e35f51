"""This replica's high-water mark of the page record (``admin.state_file``), and who counts as freshly
signed in for Enable, Disable and Forget (pure)."""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.admin.access import FRESH_SIGN_IN, Actor, fresh
from proxy.admin.anchor import Anchor, AnchorError, AnchorFile, anchor_for
from proxy.admin.record import PageRecord, Pinned, TestResult
from proxy.config.load import parse_settings
from proxy.errors import ConfigError

PIN = Pinned("https://idp.example.com", "console")


async def test_the_mark_only_rises_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "replica.state"
    one, other = AnchorFile(str(path)), AnchorFile(str(path))  # two workers of one replica
    assert await one.read() == Anchor()
    assert (await one.raise_to(anchor_for(7, True, PIN))).version == 7
    kept = await other.raise_to(anchor_for(5, False, None))  # a worker that is behind cannot lower it
    assert (kept.version, kept.expected, kept.pinned) == (7, True, PIN)
    assert (await one.read()).version == 7
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("raw", [b"", b"{}", b'{"format": 1, "version": -1, "expected": true}', b"\xff"])
async def test_a_mark_that_does_not_parse_is_an_error_not_a_zero(tmp_path: Path, raw: bytes) -> None:
    """A damaged file must not read as "nothing seen yet": that would trust whatever the store holds."""
    path = tmp_path / "replica.state"
    path.write_bytes(raw)
    with pytest.raises(AnchorError):
        await AnchorFile(str(path)).read()


async def test_an_unwritable_mark_is_an_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = tmp_path / "missing-dir" / "replica.state"  # root writes anywhere: a directory that is not there
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "replica.state"
    with pytest.raises(AnchorError):
        await AnchorFile(str(target)).raise_to(anchor_for(1, False, None))


BASE = """
public_url: https://console.example.com
upstream: http://127.0.0.1:8888
sso: {enabled: false}
session: {store: redis, cookie_secret: "q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"}
break_glass: {token: "Zk3pQ9vLx2mW7rT4yB8nC5hJ"}
"""


def test_redis_page_settings_need_a_state_file_and_a_settings_file_gives_one() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings(BASE + "admin: {enabled: true, groups: [admins]}\n", {})
    assert "admin.state_file" in {p.key for p in exc.value.problems}
    settings = parse_settings(BASE + "admin: {enabled: true, groups: [admins], settings_file: /var/lib/p.json}\n", {})
    assert settings.admin.anchor_file == "/var/lib/p.json.state"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://sso-admin.example.com", "https://"),
        ("https://sso-admin.example.com/admin", "path"),
        ("https://console.example.com", "another origin"),
    ],
)
def test_the_pages_own_origin_is_checked(url: str, problem: str) -> None:
    text = BASE + f"admin: {{enabled: true, groups: [admins], state_file: /s, public_url: '{url}'}}\n"
    with pytest.raises(ConfigError) as exc:
        parse_settings(text, {})
    assert any(p.key == "admin.public_url" and problem in p.message for p in exc.value.problems), exc.value


def _active(public_url: str = "") -> Any:
    extra = f", public_url: '{public_url}'" if public_url else ""
    settings = parse_settings(BASE + f"admin: {{enabled: true, groups: [admins], state_file: /s{extra}}}\n", {})
    return SimpleNamespace(settings=settings)


ADA = Actor("ada@example.com", "session x", False, sub="u-ada", issuer=PIN.issuer_url)
NOW = 1_800_000_000.0


def _tested(by_sub: str, issuer: str, ago: float) -> PageRecord:
    test = TestResult(digest="d", at=NOW - ago, by="x", ok=True, sub=by_sub, issuer=issuer)
    return PageRecord(test=test)


@pytest.mark.parametrize(
    ("actor", "record", "public_url", "expected"),
    [
        (dataclasses.replace(ADA, signed_in_at=NOW - 60), None, "", True),
        (dataclasses.replace(ADA, signed_in_at=NOW - FRESH_SIGN_IN - 1), None, "", False),
        (dataclasses.replace(ADA, signed_in_at=None), None, "", False),
        # A Test login as oneself is a fresh sign-in; one as someone else, or at another issuer, is not.
        (ADA, _tested("u-ada", PIN.issuer_url, 30), "", True),
        (ADA, _tested("u-mallory", PIN.issuer_url, 30), "", False),
        (ADA, _tested("u-ada", "https://evil.example", 30), "", False),
        (ADA, _tested("u-ada", PIN.issuer_url, FRESH_SIGN_IN + 1), "", False),
        # On an origin of its own the page is out of the console's scripts' reach; break-glass has no sign-in.
        (ADA, None, "https://sso-admin.example.com", True),
        (Actor("break-glass from 10.0.0.1", "grant g", True), None, "", True),
    ],
)
def test_who_counts_as_freshly_signed_in(
    actor: Actor, record: PageRecord | None, public_url: str, expected: bool
) -> None:
    assert fresh(actor, record, _active(public_url), now=NOW) is expected


def test_the_clock_of_the_fresh_rule_is_the_real_one_by_default() -> None:
    assert fresh(dataclasses.replace(ADA, signed_in_at=time.time()), None, _active())
