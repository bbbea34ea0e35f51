"""The baseline: a bare aiohttp pass-through reverse proxy, no authentication.

What any aiohttp proxy pays before it does anything useful: uvloop, one pooled ``ClientSession`` per
process, request and response bodies streamed, hop-by-hop headers dropped, ``workers`` processes on one
port with SO_REUSEPORT (the sidecar's own multi-process model), no access log.

    python bench/bare_proxy.py --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8081 --workers 2

Prints ``READY`` once every worker listens; SIGTERM stops all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM: web.AppKey[URL] = web.AppKey("upstream", URL)


def _forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in HOP_BY_HOP:
            out.add(name, value)
    return out


async def proxy(request: web.Request) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    url = upstream.with_path(request.path).with_query(request.query_string)
    body = request.content if request.can_read_body else None
    async with request.app[SESSION].request(
        request.method,
        url,
        headers=_forward_headers(request.headers),
        data=body,
        allow_redirects=False,
        auto_decompress=False,
    ) as up:
        response = web.StreamResponse(status=up.status, reason=up.reason, headers=_forward_headers(up.headers))
        if up.content_length is not None:
            response.content_length = up.content_length
        await response.prepare(request)
        async for chunk in up.content.iter_chunked(65536):
            await response.write(chunk)
        await response.write_eof()
        return response


def make_app(upstream: URL) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream

    async def client(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(client)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def _socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(host: str, port: int, upstream: URL) -> None:
    import uvloop

    uvloop.install()
    web.run_app(make_app(upstream), sock=_socket(host, port), access_log=None, print=None, handle_signals=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    host, _, port_text = args.listen.rpartition(":")
    port, upstream = int(port_text), URL(args.upstream)
    # Like the sidecar's workers: fork first, then each binds its own SO_REUSEPORT socket, so the kernel
    # spreads connections over the workers the same way for both.
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            status = 0
            try:
                serve(host, port, upstream)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        children.append(pid)

    def stop(_sig: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    asyncio.run(_wait_listening(host, port))
    print("READY", flush=True)
    status = 0
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            _, code = os.waitpid(pid, 0)
            status = status or os.waitstatus_to_exitcode(code)
    return status


async def _wait_listening(host: str, port: int) -> None:
    for _ in range(400):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.025)
    raise RuntimeError(f"nothing listens on {host}:{port}")


if __name__ == "__main__":
    sys.exit(main())
