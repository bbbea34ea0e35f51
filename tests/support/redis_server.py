"""A real ``redis-server`` on a free loopback port, with no persistence, that tests may kill and restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

from support.procs import LOOPBACK, Process, free_port

READY_LINE = r"Ready to accept connections"


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    return path


def ping(port: int, timeout: float = 0.5) -> bool:
    """A raw RESP PING, so readiness does not depend on the client library under test."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``start()``; ``kill()`` (SIGKILL, a crash) or ``stop()``; ``restart()`` on the same port."""

    def __init__(
        self, work_dir: str | os.PathLike[str] | None = None, port: int | None = None, *, persistent: bool = False
    ) -> None:
        """``persistent``: an append-only file written at every command, so ``stop()``/``start()`` keeps the
        data (``kill()`` still loses what the kernel had not written)."""
        self.persistent = persistent
        self.dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    def start(self, timeout: float = 15.0) -> RedisServer:
        if self.alive:
            return self
        self.starts += 1
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--loglevel", "notice",
        ]  # fmt: skip
        self.proc = Process(f"redis-{self.port}", args, log_dir=self.dir).start()
        self.proc.wait_for(lambda: ping(self.port), f"PONG on port {self.port}", timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)

    def kill(self) -> None:
        """Die without a shutdown, as a crashed or partitioned Redis would: every key is lost."""
        if self.proc is not None:
            self.proc.kill()

    def restart(self, timeout: float = 15.0) -> RedisServer:
        self.kill()
        return self.start(timeout)

    def flushall(self) -> None:
        with socket.create_connection((LOOPBACK, self.port), timeout=2) as s:
            s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def logs(self) -> str:
        return self.proc.logs() if self.proc is not None else ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
