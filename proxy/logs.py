"""Log setup, and the one rule every line follows: one event is one line.

Values in log lines come from clients (paths, headers) and from the identity provider (claims, error
texts). A CR or LF in one of them would start a forged line, so every line is escaped on its way out:
control characters (C0, DEL, C1 and the Unicode line and paragraph separators) become ``\\xNN`` /
``\\uNNNN`` escapes. Tracebacks are escaped the same way and stay on their line.
"""

from __future__ import annotations

import logging
import re
import sys

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


def setup(level: str) -> None:
    """Configure the root logger: ``level`` and one escaped line per event on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())
