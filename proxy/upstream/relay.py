"""The console's answer, relayed to the client: the head byte-exact, the body streamed.

HTTP field values are octets (RFC 9110 5.5); a console may send obs-text (bytes 0x80-0xFF) that is not
UTF-8, e.g. a latin-1 file name in Content-Disposition. The clients hand those bytes over decoded as
latin-1 (``proxy.upstream.answer``), one character per byte, but aiohttp's response writer encodes header strings
as UTF-8 (``http_writer._serialize_headers``; its C twin even drops lone surrogates), which would turn
each such byte into two. So the answers relayed here write their head themselves, as latin-1: the
client receives the very bytes the console sent. Everything aiohttp adds to the head (Date, Server,
Content-Length, chunked framing, Connection) is ASCII and comes out the same either way; the sidecar's
own responses (error pages, redirects) keep aiohttp's writer.

Also here: the console may not set the sidecar's own cookies, and a body cut off upstream is cut off for
the client too (never a complete-looking short one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import StreamWriter
from aiohttp.web_response import REASON_PHRASES
from multidict import CIMultiDict

from proxy.telemetry.logs import request_id
from proxy.upstream.answer import Answer, UpstreamFailure

__all__ = ["drop_own_set_cookies", "exact_response", "relay_streamed", "relay_whole"]

log = logging.getLogger(__name__)


class _ExactHead(web.StreamResponse):
    """A response whose status line and headers go out as latin-1: each character is one byte."""

    async def _start(self, request: web.BaseRequest) -> AbstractStreamWriter:
        # StreamResponse._start without the on_response_prepare signal, whose one receiver
        # (app._no_server_header) is done here in one line: aiohttp's own Server header goes, the console's
        # passes. Dispatching the signal (a coroutine per receiver) cost every relayed answer more than this.
        self._req = request
        writer = self._payload_writer = request._payload_writer
        await self._prepare_headers()
        if self._headers.get("Server") == SERVER_SOFTWARE:
            del self._headers["Server"]
        await self._write_headers()
        return writer

    async def _write_headers(self) -> None:
        headers = self._headers
        if self._reason.isascii() and "".join(headers.values()).isascii() and "".join(headers).isascii():
            # The usual answer: all ASCII, for which aiohttp's own (compiled) writer gives the same bytes.
            await super()._write_headers()
            return
        # What StreamResponse._write_headers and StreamWriter.write_headers do (aiohttp >= 3.12 keeps the
        # head to send it with the first body bytes), with latin-1 instead of UTF-8.
        request = self._req
        assert request is not None
        writer = cast(StreamWriter, self._payload_writer)
        version = request.version
        lines = "\r\n".join(map(": ".join, headers.items()))
        head = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}\r\n{lines}\r\n\r\n"
        # Each line ends in the one CRLF written here: the clients refuse line breaks in the console's
        # head, and this keeps it so whatever reaches this point (aiohttp's writer raises the same way).
        lines_expected = len(headers) + 2
        if head.count("\n") != lines_expected or head.count("\r") != lines_expected:
            raise ValueError("a response header contains a line break")
        writer._headers_buf = head.encode("latin-1")
        writer._headers_written = False
        if self._send_headers_immediately:
            writer.send_headers()


class _ExactResponse(web.Response, _ExactHead):
    """A whole answer (the body arrived with the head): head and body in one write. ``web.Response`` comes first:
    its ``_start`` (the Content-Length of a body that came without one) runs, then ``_ExactHead``'s."""


async def relay_whole(
    answer: Answer, request: web.Request, own_cookie: Callable[[str], bool] | None, *, lean: bool = True
) -> web.StreamResponse:
    """The response for an answer whose whole body arrived with its head (most small ones): head and body
    in one write, and the pooled connection handed back before answering.

    ``lean`` (``relay_writer: lean``): the usual answer (HTTP/1.1, a body of its ``Content-Length``, no
    framing or Connection header left) is written here as aiohttp would write it; anything
    else, and everything with ``relay_writer: aiohttp``, goes through aiohttp's response (``_ExactResponse``)."""
    if own_cookie is not None and "Set-Cookie" in answer.headers:
        drop_own_set_cookies(answer.headers, own_cookie, request)
    body = answer.take_body()
    if lean:
        head = _whole_head(answer, request, body)
        if head is not None:
            answer.release()
            # Written here, as aiohttp's writer sends a small answer's head and body: in one write (the
            # ``_Sent`` response tells aiohttp it is out).
            keep_alive = request.keep_alive
            try:
                await request._payload_writer.write(head + body)
            except OSError:
                keep_alive = False  # the client left before the answer went out; nothing to tell it
            status = answer.status
            return _Sent(status, answer.reason or REASON_PHRASES.get(status, ""), keep_alive, request)
    whole = _ExactResponse(status=answer.status, reason=answer.reason or None, body=body)
    whole.headers.extend(answer.headers)
    answer.release()
    return whole


class _Sent(web.StreamResponse):
    """An answer written whole by ``relay_whole``: aiohttp's ``prepare`` and ``write_eof`` (``finish_response``)
    find it sent, the access log its status, the server whether the connection is kept."""

    def __init__(self, status: int, reason: str, keep_alive: bool, request: web.Request) -> None:
        # What StreamResponse.__init__ sets, and the state prepare/write_eof leave behind, in one call: its
        # keyword arguments and status check (the head is already out, checked) cost every answer more than this.
        # tests/component/test_aiohttp_internals.py holds these to the fields a finished StreamResponse has.
        self._state = {}
        self._headers = CIMultiDict()
        self._status = status
        self._reason = reason
        self._keep_alive = keep_alive
        self._must_be_empty_body = False  # _whole_head takes no HEAD or CONNECT, no 1xx, 204 or 304
        self._req = request
        writer = self._payload_writer = request._payload_writer
        self._body_length = writer.output_size  # head and body, as write_eof counts them
        self._eof_sent = True


def _whole_head(answer: Answer, request: web.Request, body: bytes) -> bytes | None:
    """The head aiohttp's response writer would send for this whole answer, as latin-1 (``_ExactHead``), or None
    where the answer is not the plain case this covers (then aiohttp's own response writes it).

    What ``web.Response`` and ``StreamResponse._prepare_headers`` do for it, in their order: the console's
    headers as they are (its ``Content-Length`` among them, equal to the body's length), then
    ``Content-Type: application/octet-stream`` where it sent none and the body is not empty, ``Date`` where it
    sent none, aiohttp's Server banner never (``_ExactHead._start``), and ``Connection: close`` when the client
    does not keep the connection. Not covered: HTTP/1.0 (keep-alive spelled out), HEAD and CONNECT, 1xx, 204
    and 304 (no body, Content-Length rules), an answer without a Content-Length of exactly its body, or with a
    framing or Connection header left."""
    status = answer.status
    headers = answer.headers
    # The header names as multidict's istr (aiohttp's hdrs): each lookup skips building the name's key.
    if (
        request.version != HttpVersion11
        or status < 200
        or status in (204, 304)
        or request.method in ("HEAD", "CONNECT")
        or hdrs.TRANSFER_ENCODING in headers
        or hdrs.CONNECTION in headers
        or headers.getall(hdrs.CONTENT_LENGTH, None) != [str(len(body))]
    ):
        return None
    if headers.get(hdrs.SERVER) == SERVER_SOFTWARE:  # as _ExactHead._start deletes it: every Server header goes
        lines = [f"{name}: {value}" for name, value in headers.items() if name.lower() != "server"]
    else:
        lines = list(map(": ".join, headers.items()))  # no comprehension's frame for the usual answer
    if body and hdrs.CONTENT_TYPE not in headers:
        lines.append("Content-Type: application/octet-stream")
    if hdrs.DATE not in headers:
        lines.append("Date: " + rfc822_formatted_time())
    if not request.keep_alive:
        lines.append("Connection: close")
    reason = answer.reason or REASON_PHRASES.get(status, "")
    head = (f"HTTP/1.1 {status} {reason}\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    # Each line ends in the one CRLF written here, and no other control character but HTAB is in it: aiohttp's
    # writer refuses the same (the clients refuse them in the console's head; this keeps it so). The CRLFs
    # written here are 2 * (lines + 2) control bytes; any control byte in a name, value or reason adds to them, so
    # deleting every control byte but HTAB must take out exactly that many (one C pass over the bytes: a regular
    # expression's search cost more than the rest of the head).
    if len(head) - len(head.translate(None, _CONTROLS)) != 2 * (len(lines) + 2):
        raise ValueError("Forbidden control character detected in headers. Potential header injection attack.")
    return head


_CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])  # C0 controls but HTAB, and DEL


async def relay_streamed(
    answer: Answer, request: web.Request, own_cookie: Callable[[str], bool] | None
) -> web.StreamResponse:
    """Stream the answer's body to the client as it arrives; the answer is released or closed in every case."""
    released = False
    try:
        if own_cookie is not None and "Set-Cookie" in answer.headers:
            drop_own_set_cookies(answer.headers, own_cookie, request)
        resp = _ExactHead(status=answer.status, reason=answer.reason or None)
        resp.headers.extend(answer.headers)
        try:
            await resp.prepare(request)
        except OSError:
            return resp  # the client left before the head went out; nothing to tell it
        if await _pump_body(answer, resp, request):
            answer.release()
            released = True
        return resp
    finally:
        if not released:
            answer.close()  # mid-body: the connection cannot be reused


def exact_response(status: int, headers: CIMultiDict[str]) -> web.Response:
    """A bodiless answer of the console's whose ``headers`` (latin-1, see ``answer``) go out byte-exact."""
    response = _ExactResponse(status=status)
    response.headers.extend(headers)
    return response


def drop_own_set_cookies(headers: CIMultiDict[str], own_cookie: Callable[[str], bool], request: web.Request) -> None:
    """Remove, in place, every Set-Cookie for one of the sidecar's cookie names.

    A console page that could set the session, pending-login or break-glass cookie could fix a session
    on the browser (session fixation) or sign the user out; those names belong to the sidecar.
    """
    values = headers.getall("Set-Cookie")
    kept = [v for v in values if not own_cookie(v.split("=", 1)[0].strip())]
    if len(kept) == len(values):
        return
    del headers["Set-Cookie"]
    for value in kept:
        headers.add("Set-Cookie", value)
    dropped = sorted({v.split("=", 1)[0].strip() for v in values} - {k.split("=", 1)[0].strip() for k in kept})
    log.warning("the console tried to set the sidecar's own cookie(s) %s on %s %s; dropped [%s]",
                ", ".join(dropped), request.method, request.raw_path.partition("?")[0],
                request_id(request))  # fmt: skip


async def _pump_body(answer: Answer, resp: web.StreamResponse, request: web.Request) -> bool:
    """Copy the upstream body to the client; True when it all arrived and the connection may be reused."""
    read = answer.read
    write = resp.write
    while True:
        try:
            chunk = await read()
        except UpstreamFailure as exc:
            # The head is out, so no error page is possible: cut the client connection so it sees a
            # truncated body instead of a complete-looking short one.
            log.warning("upstream response aborted mid-body for %s %s: %s", request.method, request.path, exc)
            _abort_client(resp, request)
            return False
        if not chunk:
            break
        try:
            await write(chunk)
        except OSError:
            return False  # the client went away; the upstream connection is closed by the caller
    try:
        await resp.write_eof()
    except OSError:
        return True  # the body was read in full; only the client is gone
    return True


def _abort_client(resp: web.StreamResponse, request: web.Request) -> None:
    resp.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()
