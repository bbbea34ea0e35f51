"""The server's per-connection request loop: aiohttp's own, or a leaner copy of it (``server_loop``).

aiohttp's ``RequestHandler.start`` reads a connection's requests one after another and, on Python below 3.12,
runs each in an asyncio Task of its own (created, scheduled, awaited and dropped per request), then
``finish_response`` prepares and ends the response, which the sidecar has nearly always written itself already
(``upstream.relay``). ``LeanRequestHandler`` (``server_loop: lean``, the default) is the same loop, statement
for statement, with two differences:

- the handler runs in the connection's own task: no Task per request, and no frame between the loop and the
  handler (about 3 % of a proxied request's instructions);
- a response already sent whole (``_eof_sent``) is not prepared and ended a second time: its request is
  finished and logged, as ``finish_response`` would do after finding nothing to do.

Everything else, framing above all, is aiohttp's: the same request parser (llhttp), the same queue of
pipelined requests, limits, keep-alive and lingering close, the same error answers. The per-request Task exists
in aiohttp to give each request a copy of the connection's context variables; the sidecar sets none.

``server_loop: aiohttp`` keeps aiohttp's own loop, the well-trodden one; the adversarial suites of the proxy path
run against both (``tests/support/proxyrig.py``: the aiohttp client's path with aiohttp's loop, the others with this
one). The copy follows aiohttp's ``start`` of the version pinned in requirements/: a digest of the code it copies, in
``tests/component/test_aiohttp_internals.py``, fails when an aiohttp upgrade changes it, so that the copy is re-read.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.helpers import ceil_timeout
from aiohttp.http_writer import StreamWriter
from aiohttp.web_protocol import _PAYLOAD_ACCESS_ERROR, ERROR, RequestHandler, _ErrInfo

SERVER_LOOPS = ("lean", "aiohttp")


class LeanRequestHandler(RequestHandler):
    """aiohttp's ``RequestHandler`` with the leaner request loop described in the module's docstring."""

    async def start(self) -> None:
        """``RequestHandler.start`` with aiohttp's ``_handle_request`` inlined: the handler awaited in this task,
        and a response already sent finished without ``prepare``/``write_eof``."""
        loop = self._loop
        manager = self._manager
        assert manager is not None
        keepalive_timeout = self._keepalive_timeout
        resp = None
        factory = self._request_factory
        usual = self._request_handler
        assert factory is not None
        assert usual is not None
        messages = self._messages

        while not self._force_close:
            if not messages:
                try:
                    # wait for next request
                    self._waiter = loop.create_future()
                    await self._waiter
                finally:
                    self._waiter = None

            message, payload = messages.popleft()

            # Free a parser slot; resume reading once drained to low water (as aiohttp's).
            if self._parser is not None:
                self._parser.message_consumed()
            if self._buffer_paused and len(messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()

            start = loop.time() if self._logging_enabled else None

            manager.requests_count += 1
            writer = StreamWriter(self, loop)
            if isinstance(message, _ErrInfo):
                request_handler = self._make_error_handler(message)
                message = ERROR
            else:
                request_handler = usual

            request = factory(message, payload, self, writer, self._task_handler or asyncio.current_task(loop))  # type: ignore[arg-type]
            try:
                try:
                    # aiohttp's _handle_request, inlined: the handler runs in this task.
                    self._request_in_progress = True
                    try:
                        try:
                            self._current_request = request
                            resp = await request_handler(request)
                        finally:
                            self._current_request = None
                    except web.HTTPException as exc:
                        resp, reset = await self.finish_response(request, exc, start)
                    except asyncio.CancelledError:
                        raise
                    except TimeoutError as exc:
                        self.log_debug("Request handler timed out.", exc_info=exc)
                        resp, reset = await self.finish_response(request, self.handle_error(request, 504), start)
                    except Exception as exc:
                        resp, reset = await self.finish_response(request, self.handle_error(request, 500, exc), start)
                    else:
                        if isinstance(resp, web.StreamResponse) and resp._eof_sent and not self._upgraded:
                            # finish_response's work for a response sent whole: its prepare and write_eof would
                            # find it sent, and no upgrade's buffered tail (``_upgraded``) is in question.
                            request._finish()
                            self.log_access(request, resp, start)
                            reset = False
                        else:
                            resp, reset = await self.finish_response(request, resp, start)
                    finally:
                        self._request_in_progress = False
                        if self._handler_waiter is not None:
                            self._handler_waiter.set_result(None)
                except ConnectionError:
                    self.log_debug("Ignored premature client disconnection")
                    break

                if reset:
                    self.log_debug("Ignored premature client disconnection 2")
                    break

                # notify server about keep-alive
                self._keepalive = bool(resp.keep_alive)

                # check payload
                if not payload.is_eof():
                    await self._linger(payload)

                payload.set_exception(_PAYLOAD_ACCESS_ERROR)

            except asyncio.CancelledError:
                self.log_debug("Ignored premature client disconnection")
                self.force_close()
                raise
            except Exception as exc:
                self.log_exception("Unhandled exception", exc_info=exc)
                self.force_close()
            except BaseException:
                self.force_close()
                raise
            finally:
                request._task = None  # type: ignore[assignment]  # break the reference cycle
                if self.transport is None and resp is not None:
                    self.log_debug("Ignored premature client disconnection.")

            if self._keepalive and not self._close and not self._force_close:
                # start keep-alive timer
                close_time = loop.time() + keepalive_timeout
                self._next_keepalive_close_time = close_time
                if self._keepalive_handle is None:
                    self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
            else:
                break

        # remove handler, close transport if no handlers left
        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self.transport.close()

    async def _linger(self, payload: Any) -> None:
        """aiohttp's lingering read of a request body the handler left unread, then the close if it remains."""
        lingering_time = self._lingering_time
        loop = self._loop
        if not self._force_close and lingering_time:
            self.log_debug("Start lingering close timer for %s sec.", lingering_time)
            now = loop.time()
            end_t = now + lingering_time
            try:
                while not payload.is_eof() and now < end_t:
                    async with ceil_timeout(end_t - now):
                        await payload.readany()  # read and ignore
                    now = loop.time()
            except (TimeoutError, asyncio.CancelledError):
                if sys.version_info >= (3, 11) and (t := asyncio.current_task()) and t.cancelling():
                    raise
        if not payload.is_eof() and not self._force_close:
            self.log_debug("Uncompleted request.")
            self.close()


class SidecarServer(web.Server):
    """aiohttp's ``Server``, whose every new connection gets the request loop that ``loop_for`` names at that
    moment (so a reload that changes ``server_loop`` applies to the connections that follow)."""

    loop_for: Callable[[], str]

    def __call__(self) -> RequestHandler:
        if self.loop_for() == "lean":
            return LeanRequestHandler(self, loop=self._loop, **self._kwargs)
        return super().__call__()


def serve_with(app: web.Application, loop_for: Callable[[], str]) -> None:
    """Make ``app``'s runner build a ``SidecarServer``: aiohttp's ``Application._make_handler`` makes the server,
    which then becomes a ``SidecarServer`` (the same object, with ``__call__`` overridden; no state of its own
    but ``loop_for``), so every argument aiohttp passes it stays aiohttp's business."""
    make = app._make_handler

    def make_handler(**kwargs: Any) -> web.Server:
        server = make(**kwargs)
        server.__class__ = SidecarServer
        assert isinstance(server, SidecarServer)
        server.loop_for = loop_for
        return server

    object.__setattr__(app, "_make_handler", make_handler)  # what AppRunner calls (aiohttp's frozen app)
