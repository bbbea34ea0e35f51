"""``sso-sidecar`` with a cProfile switch, for ``bench/cpu_profile.py``: the same ``proxy.cli.main``, plus SIGUSR1
(start profiling) and SIGUSR2 (stop, and write the stats to ``$SSO_PROFILE_OUT``). The clock is the
thread's CPU time (``$SSO_PROFILE_CLOCK=wall`` for cProfile's default).

    PYTHONPATH=TREE python bench/profiled_sidecar.py run --config FILE

Run with ``PYTHONPATH`` naming the source tree to profile (this directory has no ``proxy`` of its own, and
``PYTHONPATH`` comes before the venv's editable install on ``sys.path``); the first line of the log names the
``proxy`` it imported, which ``cpu_profile.py`` checks. Nothing else changes: with neither signal the process is
the sidecar as ``sso-sidecar run`` starts it.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
import time
from types import FrameType


def main() -> int:
    import proxy
    from proxy.cli import main as sidecar

    print(f"PROFILED_SIDECAR proxy={os.path.dirname(proxy.__file__)}", file=sys.stderr, flush=True)
    # CPU time of this thread, not wall time: on a shared machine, wall time charges to whichever function
    # was running the time the process spent descheduled (a socket write that wakes the peer, above all).
    clock = os.environ.get("SSO_PROFILE_CLOCK", "cpu")
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9) if clock == "cpu" else cProfile.Profile()

    def start(_sig: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        profiler.disable()
        out = os.environ["SSO_PROFILE_OUT"]
        profiler.dump_stats(out + ".tmp")
        os.replace(out + ".tmp", out)  # cpu_profile.py waits for the file: it appears whole
        profiler.clear()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return sidecar(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
