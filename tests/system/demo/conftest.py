"""The demo's tests share the demo's fixed ports with every other pytest worker on this machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.procs import machine_wide


@pytest.fixture
def demo_ports() -> Iterator[None]:
    """The demo's fixed ports are the machine's: one test at a time, whichever worker runs it (support.procs).
    A module whose tests need them says ``pytestmark = pytest.mark.usefixtures("demo_ports")``."""
    with machine_wide("demo-ports"):
        yield
