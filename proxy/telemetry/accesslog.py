"""The access log: one line per request, written in batches.

The query string is never logged (it can hold authorization codes and state). The path is logged as the
client sent it (still percent-encoded), escaped (``logs.escape_field``), so that no path can start a
line of its own. Going through the
``logging`` machinery for every request costs a busy sidecar several percent of its CPU, so lines are
formatted directly, in the same format as the other log lines, and written together by the event loop
every 100 ms (or sooner when many pile up).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import time as _time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from proxy.telemetry.logs import FORMAT, LOG, escape_field, iso_time

_PROBES = frozenset({"/healthz", "/readyz"})


def _route_of(path: str) -> str:
    """The kind of a request the gate did not classify: the sidecar's own endpoints and the probes."""
    if path in _PROBES:
        return "probe"
    return "sidecar" if path.startswith("/oauth2/") else "proxy"


# ",000" to ",999": a line's milliseconds looked up, not formatted (formatting was a third of the line's cost).
_MILLIS = tuple(f",{ms:03d}" for ms in range(1000))
_FLUSH_AFTER = 0.1
_MAX_PENDING = 256
_PIPE_BUF = 4096  # writes up to this size are atomic on a pipe: lines of several workers never mix


class _Batch:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._stamp + _MILLIS[int((now - second) * 1000)]

    def add(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) >= _MAX_PENDING:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(_FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lines, self.lines = self.lines, []
        chunk = ""
        for line in lines:
            if len(chunk) + len(line) > _PIPE_BUF and chunk:
                sys.stderr.write(chunk)
                chunk = ""
            chunk += line
        if chunk:
            sys.stderr.write(chunk)
        sys.stderr.flush()


BATCH = _Batch()


class AccessLogger(AbstractAccessLogger):
    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._level_and_name = f" INFO {logger.name}: "  # the same for every line

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.raw_path
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        # The request's own dict, read directly: Mapping.get's two Python calls on every request were a tenth of
        # this record's cost.
        entry = request._state.get(LOG)
        if entry is None:  # refused before the middleware (a malformed request)
            route, user, request_id = _route_of(path), None, "-"
        else:
            route, user, request_id = entry.route or _route_of(path), entry.user, entry.id
        if FORMAT.json:
            event = {
                "time": iso_time(_time.time()),
                "level": "INFO",
                "logger": self.logger.name,
                "message": f"{request.method} {path} {response.status}",
                "request_id": request_id,
                "method": request.method,
                "path": path,
                "status": response.status,
                "duration_ms": round(time * 1000, 1),
                "route": route,
                "remote": request.remote,
            }
            if user is not None:
                event["user"] = user
            BATCH.add(json.dumps(event, ensure_ascii=False) + "\n")
            return
        # escape_field alone says what needs escaping (its own fast test returns the usual value as it is).
        who = "" if user is None else " user=" + escape_field(user)
        BATCH.add(
            f'{BATCH.timestamp()}{self._level_and_name}{request.remote} "{request.method} {escape_field(path)}" '
            f"{response.status} {time * 1000:.1f}ms [{request_id}] {route}{who}\n"
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
