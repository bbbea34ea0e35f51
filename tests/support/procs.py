"""Subprocess helpers: free ports, start with a readiness wait, stop, and logs kept in a temp file.

``make test`` runs the suite in several pytest-xdist workers at once (one test file per worker at a time): each
worker draws its ports from a range of its own, and the few tests that need the demo's fixed ports take turns
(``machine_wide``).

Every started process is registered so that ``conftest.py`` can attach the part of its log written
during a failing test to the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from support.waiting import WaitTimeout, eventually, eventually_sync

LOOPBACK = "127.0.0.1"
LOG_TAIL = 6000

# Every Process started and not yet stopped, in start order.
REGISTRY: list[Process] = []


# Every port free_port() handed out in this test session.
_HANDED_OUT: set[int] = set()


def _outside_the_ephemeral_range() -> range:
    """Ports the kernel never picks by itself: below ``ip_local_port_range``, where it finds a port for
    a server bound to port 0 and for every outgoing connection."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(low, 12000))


def _this_workers_share(ports: range) -> range:
    """Under pytest-xdist, worker ``gw<i>`` of ``n`` gets the i-th of n equal slices of ``ports``: another worker
    can never pick a port this one checked free and has not bound yet."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return ports
    index, size = int(worker[2:]), len(ports) // int(count)
    return range(ports.start + index * size, ports.start + (index + 1) * size)


_PORTS = _this_workers_share(_outside_the_ephemeral_range())


@contextlib.contextmanager
def machine_wide(name: str) -> Iterator[None]:
    """Held by one test of this machine at a time, whichever worker (or other pytest run) runs it: for what
    every process shares, such as the demo's fixed ports."""
    with open(Path(tempfile.gettempdir()) / f"sso-sidecar-tests-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now, that this session never handed out before, and
    that the kernel will not hand out either.

    A port the kernel found (a probe bound to port 0) could be offered again as soon as the probe is
    closed: to a server the test starts on port 0 before the sidecar binds the one it was given (the
    sidecar then failed to start while the other server answered its health check), or to a client's
    outgoing connection. So ports come from below the kernel's ephemeral range, at random, and are
    checked free by binding them.
    """
    while True:
        port = random.choice(_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class ProcessError(RuntimeError):
    """A process did not start, or died; the message carries the tail of its log."""


class Process:
    """A child process whose stdout and stderr go to one temp file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=log_dir)
        os.close(fd)
        self.log_path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.mark = 0  # log offset at the start of the current test

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # a Ctrl-C in the terminal goes to pytest only
            )
        if self not in REGISTRY:
            REGISTRY.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal (SIGTERM by default), wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._unregister()
        return self.proc.returncode

    async def astop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """``stop`` without blocking the event loop, for tests whose own requests must keep flowing
        while the process drains."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                await self.await_exit(timeout)
            except ProcessError:
                self.proc.kill()
                self.proc.wait(5)
        self._unregister()
        return self.proc.returncode

    async def await_exit(self, timeout: float = 10.0) -> int:
        proc = self.proc
        assert proc is not None
        try:
            await eventually(lambda: proc.poll() is not None, what=f"{self.name} to exit", timeout=timeout)
        except WaitTimeout:
            raise ProcessError(f"{self.name} still running after {timeout}s\n{self.tail()}") from None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._unregister()

    def _unregister(self) -> None:
        with contextlib.suppress(ValueError):
            REGISTRY.remove(self)

    # -- readiness ---------------------------------------------------------------------------------

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        """Poll ``ready`` until true; fail early, with the log, if the process exits."""

        def check() -> bool:
            if ready():
                return True
            if not self.alive:
                raise ProcessError(f"{self.name} exited with {self.returncode} before {what}\n{self.tail()}")
            return False

        try:
            eventually_sync(check, what=what, timeout=timeout)
        except WaitTimeout:
            self.stop(timeout=2)
            raise ProcessError(f"{self.name}: no {what} within {timeout}s\n{self.tail()}") from None

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        found: list[re.Match[str]] = []

        def ready() -> bool:
            m = regex.search(self.logs())
            if m:
                found.append(m)
            return m is not None

        self.wait_for(ready, f"log line matching {pattern!r}", timeout)
        return found[0]

    def wait_for_http(self, url: str, timeout: float = 20.0, status: int = 200) -> None:
        self.wait_for(lambda: http_status(url) == status, f"HTTP {status} from {url}", timeout)

    def wait_for_port(self, port: int, timeout: float = 20.0) -> None:
        self.wait_for(lambda: port_open(port), f"listener on port {port}", timeout)

    # -- logs --------------------------------------------------------------------------------------

    def logs(self, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, limit: int = LOG_TAIL) -> str:
        text = self.logs()
        cut = text[-limit:]
        header = f"----- {self.name} log ({self.log_path}) -----"
        return f"{header}\n{'...' if len(text) > limit else ''}{cut}\n----- end {self.name} log -----"

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<Process {self.name} pid={self.proc.pid if self.proc else None} {state}>"


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status of a GET that does not follow redirects; None when nothing answers."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response: left open, its socket warns when collected
        return exc.code
    except (OSError, ValueError):
        return None


def start_process(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    ready_line: str | None = None,
    ready_url: str | None = None,
    ready_port: int | None = None,
    timeout: float = 20.0,
) -> Process:
    """Start ``args`` and wait until it prints ``ready_line``, answers 200 at ``ready_url`` or accepts
    connections on ``ready_port`` (each given condition in turn)."""
    proc = Process(name, args, env=env, cwd=cwd, log_dir=log_dir).start()
    if ready_line is not None:
        proc.wait_for_line(ready_line, timeout)
    if ready_url is not None:
        proc.wait_for_http(ready_url, timeout)
    if ready_port is not None:
        proc.wait_for_port(ready_port, timeout)
    return proc


def stop_all() -> None:
    for proc in reversed(list(REGISTRY)):
        proc.stop(timeout=5)
