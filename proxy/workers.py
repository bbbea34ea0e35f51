"""Several worker processes on one port (``workers: N``), each a complete sidecar.

The parent forks the workers before any event loop exists; each binds the listen address with
SO_REUSEPORT so the kernel spreads connections over them. The parent only supervises: it passes SIGHUP
on (each worker reloads the config itself), turns SIGTERM/SIGINT into a graceful stop of every worker,
and restarts a worker that died, with a growing delay if it keeps dying.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger("sso_sidecar.workers")

_MAX_RESTART_DELAY = 30.0


def run_workers(count: int, serve: Callable[[int], int]) -> int:
    """Run ``serve(index)`` (a worker's exit status) in ``count`` forked processes until SIGTERM/SIGINT;
    return an exit status."""
    children: dict[int, int] = {}
    delays = [0.0] * count
    stopping = False

    def spawn(index: int) -> None:
        # A SIGHUP for a worker that is still starting waits (blocked, pending) until its event loop
        # handles it (``watch.triggers`` unblocks it): neither lost nor fatal. Blocked before the fork, so
        # none can reach the child while it still has the parent's handler.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if pid == 0:  # the worker
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            status = 1
            try:
                status = serve(index)
            except BaseException:
                log.exception("worker %d failed", index)
                status = 1
            finally:
                os._exit(status)
        children[pid] = index

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            sig = signal.SIGTERM
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for index in range(count):
        spawn(index)
    # ``cli`` held SIGHUP back while the process started; one that came meanwhile is forwarded now (each
    # worker holds it back in turn until its event loop handles it).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    log.info("started %d workers", count)
    exit_status = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait for us
            continue
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            exit_status = exit_status or (code if code > 0 else 0)
            continue
        delays[index] = min(_MAX_RESTART_DELAY, max(0.5, delays[index] * 2))
        log.error("worker %d exited with %d; restarting in %.1fs", index, code, delays[index])
        time.sleep(delays[index])
        if not stopping:
            spawn(index)
    return exit_status
