"""Coalescing of concurrent fetches: while one runs, every other caller awaits that same fetch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")


class SingleFlight(Generic[_T]):
    """At most one ``factory()`` coroutine at a time; callers that arrive meanwhile share its result."""

    def __init__(self) -> None:
        self._task: asyncio.Task[_T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def run(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        if self._task is None:
            task = asyncio.ensure_future(factory())
            self._task = task
            task.add_done_callback(self._done)
        # shield: one caller giving up (client disconnected) must not cancel the fetch for the others.
        return await asyncio.shield(self._task)

    def _done(self, task: asyncio.Task[_T]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # mark as retrieved even if every waiter went away
