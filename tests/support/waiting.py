"""Waiting for a condition, never for a length of time.

A test that sleeps for "long enough" fails on a busy machine and idles on a quiet one. These helpers
poll a condition until it holds. The deadline is far beyond what an idle machine needs: it only
matters when something is broken, and then the failure names what was awaited, for how long, and
the last thing seen.

- ``eventually(check, what=...)``: until ``check()`` returns something truthy (returned to the caller).
- ``holds(check, during=..., what=...)``: ``check()`` stays truthy for a while. Only for negatives that
  have no event to wait for ("a file change is *not* picked up without SIGHUP"): a slow machine can
  make such a test pass when it should fail, never fail when it should pass.
- ``eventually_sync``: ``eventually`` for code that runs without an event loop (process helpers).

``check`` may be a plain function or return an awaitable. Exceptions from ``check`` propagate (an
assertion inside it is an invariant that must hold at every poll), except the types in ``ignoring``,
which count as "not yet" (e.g. ``ConnectionError`` while a server restarts).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 15.0
DEFAULT_INTERVAL = 0.02

Ignored = type[BaseException] | tuple[type[BaseException], ...]


class WaitTimeout(AssertionError):
    """A condition did not come true within its deadline. ``last`` is the last result or exception."""

    def __init__(self, what: str, timeout: float, polls: int, last: object) -> None:
        super().__init__(f"timed out after {timeout:g}s ({polls} polls) waiting for {what}; last seen: {last!r}")
        self.what, self.timeout, self.polls, self.last = what, timeout, polls, last


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    ignoring: Ignored = (),
) -> T:
    """Poll ``check`` until it returns something truthy and return that; ``WaitTimeout`` after ``timeout``
    seconds. ``what`` completes the sentence "timed out waiting for ...". The check runs at least once,
    and once more after the deadline has passed, so a slow check cannot time out untried."""
    deadline = time.monotonic() + timeout
    polls = 0
    last: object = None
    while True:
        expired = time.monotonic() >= deadline
        polls += 1
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except ignoring as exc:
            last = exc
        else:
            if result:
                return result  # type: ignore[return-value]
            last = result
        if expired:
            raise WaitTimeout(what, timeout, polls, last)
        await asyncio.sleep(interval)


async def holds(
    check: Callable[[], Any],
    *,
    during: float,
    what: str,
    interval: float = DEFAULT_INTERVAL,
) -> None:
    """Assert that ``check`` stays truthy for ``during`` seconds (polled every ``interval``)."""
    end = time.monotonic() + during
    polls = 0
    while True:
        polls += 1
        result = check()
        if inspect.isawaitable(result):
            result = await result
        assert result, f"{what}: no longer true after {polls} polls (saw {result!r})"
        if time.monotonic() >= end:
            return
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    *,
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    ignoring: Ignored = (),
) -> T:
    """``eventually`` without an event loop (blocks the calling thread)."""
    deadline = time.monotonic() + timeout
    polls = 0
    last: object = None
    while True:
        expired = time.monotonic() >= deadline
        polls += 1
        try:
            result = check()
        except ignoring as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if expired:
            raise WaitTimeout(what, timeout, polls, last)
        time.sleep(interval)
