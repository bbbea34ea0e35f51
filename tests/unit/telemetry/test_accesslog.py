"""The access log's timestamp: the other log lines' format (``%Y-%m-%d %H:%M:%S,mmm``, local time), milliseconds
truncated as ``logging`` does, for every millisecond of a second."""

from __future__ import annotations

import time

import pytest

from proxy.telemetry import accesslog

SECOND = 1_765_000_000


@pytest.mark.parametrize("fraction", [0.0, 0.0004, 0.001, 0.0999, 0.5, 0.9994, 0.999999])
def test_the_timestamp_is_the_second_and_its_truncated_milliseconds(
    monkeypatch: pytest.MonkeyPatch, fraction: float
) -> None:
    batch = accesslog._Batch()
    now = SECOND + fraction
    monkeypatch.setattr(accesslog.time, "time", lambda: now)
    # logging's own truncation, of the same float: (now - second) * 1000, rounded down
    expected = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(SECOND)) + f",{int((now - SECOND) * 1000):03d}"
    assert batch.timestamp() == expected


def test_every_millisecond_of_a_second_and_the_next_second(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = accesslog._Batch()
    clock = [0.0]
    monkeypatch.setattr(accesslog.time, "time", lambda: clock[0])
    for ms in range(1000):
        clock[0] = SECOND + ms / 1000 + 0.0004  # a double near 1.7e9 is exact to about 2.4e-7 s
        assert batch.timestamp().endswith(f",{ms:03d}")
    clock[0] = SECOND + 1.0
    assert batch.timestamp() == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(SECOND + 1)) + ",000"
