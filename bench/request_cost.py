"""The sidecar's own CPU per proxied request, in one process with no sockets: steady enough on a busy machine.

    .venv/bin/python bench/request_cost.py                     # the working tree: µs per request
    .venv/bin/python bench/request_cost.py --baseline HEAD~1   # ... and the baseline's, alternating, with new/old
    .venv/bin/python bench/request_cost.py --full              # with 20 routes, assertion: {} and roles
    .venv/bin/python bench/request_cost.py --instructions --baseline HEAD~1   # instructions, under callgrind
    .venv/bin/python bench/request_cost.py --sign-ins --baseline HEAD~1  # a sign-in's session store work instead

``cpu_profile.py`` measures a real worker under wrk, and what it measures moves with the machine: on a shared
2-core VM its runs of one tree differ by ±10 %, more than a change of a few per cent. This measures the work of
a request itself: the real application (``create_app``, the Redis store with its session cache on, ``cache_ttl:
5s``, the access log on, written to /dev/null) and the real aiohttp server protocol and h1 client, on in-memory
transports: a request's bytes are handed to the server's ``data_received``, the request the h1 client writes
gets nginx's answer (200 bytes, the benchmark's) in its ``data_received`` on the next turn of the loop, and the
answer the client would read is collected. One request at a time, 100 sessions in turn, like ``rotate.lua``.
No kernel work (the sockets' reads and writes, epoll) is in it, and no batching: every request pays its full
share of loop turns.

Timed: ``--processes`` processes per tree, each ``--runs`` runs of ``--requests`` after ``--warmup``; the
process's CPU time (``time.process_time``) per request; the fastest run is the figure (as ``timeit`` does: the
others were disturbed), the median beside it. Even so, on a busy 2-core VM runs of one tree differ by ±15 %.

``--instructions``: one process per tree under valgrind's callgrind (``--collect-atstart=no``; the runs switch
collection on and off through ``valgrind/callgrind.h``, so start-up and warm-up are not counted), with
``PYTHONHASHSEED=0``: the instructions per request, the same from one run to the next whatever else the machine
does (within ~0.5 %). Under callgrind a request takes ~50 times as long, so what runs on a timer would run ~50
times as often per request, and by how much would depend on the machine's load: there the access log is flushed
every 256 lines (as under load), ``cache_ttl`` is 1h (no cached session expires during the runs), the idle timer
is restarted at most hourly and, with ``--full``, the assertion lives a day (none is touched or signed again
during the runs). About a
minute per tree. ``--trees PATH...`` measures those checkouts (e.g. ``git worktree add`` of each commit).
Instructions are not time (no cache misses, no kernel), but a change that removes work removes them.

With ``--baseline REF_OR_PATH`` (a git ref becomes a temporary worktree, as in ``run.py``) the processes
alternate between the two trees, each importing its tree's ``proxy``.

``--sign-ins``: the same, for what a sign-in asks of the session store (``SessionManager.create`` on the real
Redis store: the session, its back-channel logout indexes, its record for the settings page), one after another;
µs (or instructions) per sign-in. The provider's part of a sign-in (the token request, the ID token's checks) is
``run.py``'s login CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _paths

BODY = b"x" * 199 + b"\n"
UPSTREAM_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 05:30:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 200\r\nConnection: keep-alive\r\n\r\n" + BODY
)
CLAIMS = {
    "sub": "8d9f4c1e-2b7a-4f0e-9c3d-5a6b7c8d9e0f",
    "preferred_username": "bench.user",
    "email": "bench.user@example.com",
    "email_verified": True,
    "name": "Bench User",
    "given_name": "Bench",
    "family_name": "User",
    "groups": ["users", "admins"],
}
IDENTITY: dict[str, Any] = {
    "assertion": {},
    "roles": {"rules": [{"role": "admin", "groups": ["admins"]}], "default": ["viewer"]},
}
ISSUER = "http://127.0.0.1:9/realms/never-asked"  # sessions are made in-process: the provider is never asked


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--requests", type=int, default=1000, help="requests per run")
    p.add_argument("--runs", type=int, default=5, help="runs per process")
    p.add_argument("--processes", type=int, default=6, help="processes per tree, the trees alternating")
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--full", action="store_true", help="20 routes, assertion: {} and roles")
    p.add_argument(
        "--sign-ins",
        action="store_true",
        help="measure a sign-in's session store work instead (SessionManager.create: the session, its logout "
        "indexes, its facts for the settings page; Redis)",
    )
    p.add_argument("--extra", default="{}", help="JSON: more top-level config keys")
    p.add_argument("--warmup", type=int, default=2000, help="requests before the runs")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count the instructions of the runs under valgrind's callgrind instead of timing them",
    )
    p.add_argument("--baseline", metavar="REF_OR_PATH")
    p.add_argument("--trees", nargs="+", type=Path, metavar="PATH", help="measure these checkouts instead")
    p.add_argument("--json", action="store_true", help="print one JSON line (used between the two processes)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# In-memory transports


class ClientSide(asyncio.Transport):
    """The client's connection as the server sees it: what the server writes is counted, never sent."""

    def __init__(self) -> None:
        super().__init__()
        self.done: asyncio.Future[None] | None = None
        self.received = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.received += len(data)
        if bytes(data[-len(BODY) :]) == BODY and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 4180)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class ConsoleSide(asyncio.Transport):
    """A connection of the h1 client to the console: each complete request head gets nginx's answer."""

    def __init__(self, exchange: Any) -> None:
        super().__init__()
        self._exchange = exchange
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"\r\n\r\n"):
            self._loop.call_soon(self._exchange.data_received, UPSTREAM_ANSWER)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.call_soon(self._exchange.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# One tree, in this process


async def measure(a: argparse.Namespace) -> dict[str, Any]:
    import yaml
    from aiohttp import web
    from routes import table

    import proxy
    from proxy.app import create_app
    from proxy.config.load import parse_settings
    from proxy.runtime.state import RUNTIME
    from proxy.telemetry import logs
    from proxy.telemetry.accesslog import AccessLogger
    from proxy.upstream.h1.exchange import Exchange
    from support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="sso-request-cost-"))
    redis = RedisServer(work / "redis").start()
    runner: web.AppRunner | None = None
    try:
        extra = json.loads(a.extra)
        if a.full:
            extra = {**extra, **IDENTITY, "routes": table(20)}
        counting = os.environ.get("SSO_CALLGRIND") == "1"
        if counting:
            # Under callgrind a request takes ~50x as long: what runs on a timer (the access log's 100 ms flush,
            # the cached sessions' reload after cache_ttl) would run ~50x as often per request, and by how much
            # depends on the machine's load. Here they run as often as under load at full speed: the log is
            # flushed every 256 lines, no session falls out of the cache, restarts its idle timer in the store or
            # has its assertion signed again during the runs.
            from proxy.sessions import manager
            from proxy.telemetry import accesslog

            accesslog._FLUSH_AFTER = 3600.0  # type: ignore[misc]
            if hasattr(manager, "TOUCH_EVERY"):  # a tree from before it restarts idle timers every 60 s
                manager.TOUCH_EVERY = 3600.0
            if a.full:  # the assertion is signed again before its end: not within a run
                extra["assertion"] = {**extra["assertion"], "lifetime": "1d"}
        config = {
            "public_url": "http://127.0.0.1:4180",
            "upstream": "http://127.0.0.1:9",
            "sso": {"issuer_url": ISSUER, "client_id": "console", "client_secret": "unused"},
            "session": {
                "store": "redis",
                "redis_url": redis.url,
                "cookie_secret": secrets.token_urlsafe(32),
                "cache_ttl": "1h" if counting else "5s",
                "lifetime": "8h",
                "idle_timeout": "1h",
            },
            "log_level": "info",
            **extra,
        }
        settings = parse_settings(yaml.safe_dump(config), environ={})
        logs.setup("info")
        app = create_app(settings)
        runner = web.AppRunner(app, access_log_class=AccessLogger)
        await runner.setup()
        runtime = app[RUNTIME]
        deadline = time.monotonic() + 10
        while not runtime.sessions._cache_live:  # the cache serves once its invalidation channel is live
            if time.monotonic() > deadline:
                raise SystemExit("the session cache's invalidation channel never came up")
            await asyncio.sleep(0.01)
        cookies = []
        for i in range(a.sessions):
            session = await runtime.sessions.create(
                claims={**CLAIMS, "sub": f"{CLAIMS['sub']}-{i}"}, id_token="unused", access_token="unused",
                refresh_token=None, access_expires_at=None, issuer=ISSUER, client_id="console",
            )  # fmt: skip
            cookies.append(f"{settings.session.cookie_name}={runtime.active.cookies.encode_ticket(session.ticket)}")
        pool = runtime.active.upstream._client
        assert pool is not None

        async def connect() -> Exchange:
            exchange = Exchange(pool)
            exchange.connection_made(ConsoleSide(exchange))
            return exchange

        pool._connect = connect  # type: ignore[method-assign]
        server = runner.server
        assert server is not None
        client = ClientSide()
        protocol = server()
        protocol.connection_made(client)
        heads = [
            (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:4180\r\nAccept: text/html\r\nCookie: {cookie}\r\n\r\n").encode()
            for cookie in cookies
        ]
        loop = asyncio.get_running_loop()

        if a.sign_ins:
            made = itertools.count()

            async def run(count: int) -> float:  # a sign-in's store work, as the callback asks for it
                t0 = time.process_time()
                for _ in range(count):
                    n = next(made)
                    claims = {**CLAIMS, "sub": f"signed-in-{n}", "sid": f"op-session-{n}"}
                    await runtime.sessions.create(
                        claims=claims, id_token="unused", access_token="unused", refresh_token=None,
                        access_expires_at=None, issuer=ISSUER, client_id="console",
                    )  # fmt: skip
                return (time.process_time() - t0) * 1e6 / count

        else:

            async def run(count: int) -> float:
                t0 = time.process_time()
                for i in range(count):
                    client.done = loop.create_future()
                    protocol.data_received(heads[i % len(heads)])
                    await client.done
                return (time.process_time() - t0) * 1e6 / count

        await run(a.warmup)  # warm: every session cached, the pool's connection open
        switch = _callgrind()
        if switch is not None:
            switch.toggle()  # callgrind counts from here to the next toggle (--collect-atstart=no)
        per_run = [await run(a.requests) for _ in range(a.runs)]
        if switch is not None:
            switch.toggle()
        return {"proxy": os.path.dirname(proxy.__file__), "us": per_run, "requests": a.requests * a.runs}
    finally:
        if runner is not None:
            await runner.cleanup()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


_CALLGRIND_C = """
#include <valgrind/callgrind.h>
void toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
int on_valgrind(void) { return RUNNING_ON_VALGRIND; }
"""


def _callgrind() -> Any:
    """callgrind's collection switch (a tiny C library over ``valgrind/callgrind.h``), when running under it."""
    if "valgrind" not in os.environ.get("LD_PRELOAD", "") and not os.environ.get("SSO_CALLGRIND"):
        return None
    import ctypes

    lib = Path(tempfile.gettempdir()) / "sso-callgrind-toggle.so"
    if not lib.exists():
        source = lib.with_suffix(".c")
        source.write_text(_CALLGRIND_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(source)], check=True)
    handle = ctypes.CDLL(str(lib))
    return handle if handle.on_valgrind() else None


def run_here(a: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)  # the access log, and the log lines of start and stop
    try:
        return uvloop.run(measure(a))
    finally:
        os.dup2(saved, 2)


# --------------------------------------------------------------------------------------------------
# Two trees, alternating


def run_tree(tree: Path, argv: list[str], *, instructions: bool = False) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, *argv, "--json"]
    log = Path(tempfile.mkdtemp(prefix="sso-callgrind-")) / "log"
    if instructions:
        # Deterministic: the same hash seed, and callgrind counts only what runs between the two toggles.
        env |= {"PYTHONHASHSEED": "0", "SSO_CALLGRIND": "1"}
        command = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--callgrind-out-file=/dev/null",
                   f"--log-file={log}", *command]  # fmt: skip
    out = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if instructions:
        collected = re.search(r"Collected : (\d+)", log.read_text())
        if collected is None:
            raise SystemExit(f"{tree}: callgrind counted nothing: {log.read_text()[-2000:]}")
        result["instructions"] = int(collected.group(1)) / result["requests"]
    shutil.rmtree(log.parent, ignore_errors=True)
    if Path(result["proxy"]).resolve() != (tree / "proxy").resolve():
        raise SystemExit(f"{tree}: imported {result['proxy']}")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.json:
        print(json.dumps(run_here(a)))
        return 0
    import baseline as baselines

    trees = {"new": _paths.REPO} if not a.trees else {str(t): t.resolve() for t in a.trees}
    work = Path(tempfile.mkdtemp(prefix="sso-request-cost-"))
    old = None
    if a.baseline:
        old = baselines.resolve(a.baseline, work)
        trees["old"] = old.source.tree
    inner = [x for x in argv if not x.startswith(("--baseline=", "--trees="))]
    if "--baseline" in inner:  # "--baseline REF" as two words
        i = inner.index("--baseline")
        del inner[i : i + 2]
    if "--trees" in inner:
        i = inner.index("--trees")
        del inner[i : i + 1 + len(a.trees)]
    results: dict[str, list[float]] = {k: [] for k in trees}
    what = "sign-in" if a.sign_ins else "request"
    try:
        if a.instructions:
            return _instructions(trees, inner, what)
        for rep in range(a.processes):
            for label in trees if rep % 2 == 0 else reversed(list(trees)):
                results[label] += run_tree(trees[label], inner)["us"]
    finally:
        if old is not None:
            old.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(f"| tree | µs per {what} (fastest run) | median | runs |")
    print("|---|---:|---:|---:|")
    for label, us in results.items():
        print(f"| {label} ({trees[label]}) | {min(us):.1f} | {statistics.median(us):.1f} | {len(us)} |")
    if "old" in results:
        new, old_us = results["new"], results["old"]
        print(f"\nnew/old: {min(new) / min(old_us):.3f} (fastest runs), "
              f"{statistics.median(new) / statistics.median(old_us):.3f} (medians)")  # fmt: skip
    return 0


def _instructions(trees: dict[str, Path], argv: list[str], what: str) -> int:
    """One run per tree under callgrind: instructions per request or sign-in (user space only: no kernel work)."""
    counts = {label: run_tree(tree, argv, instructions=True)["instructions"] for label, tree in trees.items()}
    print(f"| tree | instructions per {what} (callgrind) |")
    print("|---|---:|")
    for label, count in counts.items():
        print(f"| {label} ({trees[label]}) | {count:,.0f} |")
    if "old" in counts:
        print(f"\nnew/old: {counts['new'] / counts['old']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
