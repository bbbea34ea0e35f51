"""Log setup, and the one rule every line follows: one event is one line.

Values in log lines come from clients (paths, headers) and from the identity provider (claims, error
texts). A CR or LF in one of them would start a forged line, so every line is escaped on its way out:
control characters (C0, DEL, C1 and the Unicode line and paragraph separators) become ``\\xNN`` /
``\\uNNNN`` escapes. Tracebacks are escaped the same way and stay on their line.

Two formats (``log_format``): ``text``, for people, and ``json``, one JSON object per line for log
pipelines: every line the process writes to stderr then is one (the access log's too, and a traceback is
a field of its event's object).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import traceback
from types import TracebackType

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNSAFE_IN_FIELD = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029"\\\\]')


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character escaped: safe to write as (part of) one log line."""
    if text.isprintable():
        return text
    return _UNSAFE.sub(_escape_char, text)


def escape_field(text: str) -> str:
    """For a value written between double quotes: also escapes ``"`` and ``\\``."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return _UNSAFE_IN_FIELD.sub(_escape_char, text)


class OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


# Fields a log call may add with ``extra={...}``, copied into the JSON object.
_EXTRA_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "user", "route", "remote")


class JSONFormatter(logging.Formatter):
    """One JSON object per event: time (UTC, ISO 8601), level, logger, message, and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(event, ensure_ascii=False, default=str)


def iso_time(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Format:
    json = False  # read by the access log for every line


FORMAT = _Format()


class _QuietBadRequests(logging.Filter):
    """aiohttp logs a malformed request from a client with a traceback at ERROR. It is the client's
    mistake (or a probe), not ours: one INFO line with the reason, like nginx's "client sent invalid ..."."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or type(exc).__name__).strip().splitlines()
            record.msg = "malformed request from %s: %s"
            record.args = (record.args[0] if isinstance(record.args, tuple) and record.args else "?",
                           reason[0] if reason else type(exc).__name__)  # fmt: skip
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True


_QUIET = _QuietBadRequests()


def setup(level: str, log_format: str = "text") -> None:
    """Configure the root logger: ``level``, and one line per event on stderr in ``log_format``. Called
    again by a reload that changes either; Python warnings and uncaught exceptions go the same way."""
    handler = logging.StreamHandler(sys.stderr)
    FORMAT.json = log_format == "json"
    if FORMAT.json:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    server = logging.getLogger("aiohttp.server")
    if _QUIET not in server.filters:
        server.addFilter(_QUIET)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("sso_sidecar").critical("stopped by an unexpected error", exc_info=(kind, exc, tb))


def print_problems(lines: list[str], log_format: str) -> None:
    """Problems found before logging is set up (a config that does not load), in the chosen format."""
    if log_format != "json":
        for line in lines:
            print(line, file=sys.stderr)
        return
    import time

    for line in lines:
        event = {"time": iso_time(time.time()), "level": "ERROR", "logger": "sso_sidecar", "message": line}
        print(json.dumps(event, ensure_ascii=False), file=sys.stderr)


class RequestLog:
    """What a request's log lines carry: its id (set by the middleware), the route kind and the subject
    (set by the gate). One object under one request key, so the access log finds it all in one lookup."""

    __slots__ = ("id", "route", "user")

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.route: str | None = None  # proxy, public, passthrough, login, break_glass, unauthenticated...
        self.user: str | None = None  # the subject, where known


LOG: web.RequestKey[RequestLog] = web.RequestKey("log", RequestLog)


def request_id(request: web.BaseRequest, default: str = "-") -> str:
    """The request's id, or ``default`` for a request the middleware never saw."""
    entry = request.get(LOG)
    return entry.id if entry is not None else default
