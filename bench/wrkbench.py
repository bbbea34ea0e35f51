"""Running wrk with ``rotate.lua`` and reading its answer; Redis command counters around each run."""

from __future__ import annotations

import json
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _paths

SCRIPT = _paths.BENCH / "rotate.lua"


@dataclass(frozen=True)
class WrkSettings:
    connections: int = 64
    threads: int = 2
    duration: float = 10.0
    timeout: float = 5.0
    pin_cpu: str | None = None  # e.g. "1": run wrk under ``taskset -c 1``
    path: str = "/"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    redis_cmds_per_s: float | None = None
    sut_cpu_pct: float | None = None  # the benchmark's own processes (all systems, wrk, nginx, Redis, IdP)
    other_cpu_pct: float | None = None  # everything else on the machine: noise
    # The system under test's own processes (its workers, or Apache's children), CPU time per request
    # served: less disturbed by the machine's noise than req/s, which shares 2 cores with wrk and nginx.
    cpu_us_per_request: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "raw"}


def write_cookies(path: Path, cookies: Sequence[str]) -> Path:
    path.write_text("".join(c + "\n" for c in cookies))
    return path


def redis_commands(port: int | None) -> int | None:
    """``total_commands_processed`` from ``INFO stats`` (raw RESP: no client library involved)."""
    if port is None:
        return None
    data = redis_command(port, "INFO", "stats")
    m = re.search(rb"total_commands_processed:(\d+)", data)
    return int(m.group(1)) if m else None


def redis_command(port: int, *args: str) -> bytes:
    """One command over raw RESP; the reply's payload (bulk string or simple reply line) as bytes."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            return head
        size = int(head[1:])
        while len(rest) < size + 2 and size >= 0:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return rest[: max(size, 0)]


def run_wrk(
    url: str,
    cookie_file: Path | None,
    settings: WrkSettings,
    *,
    header: str = "Cookie",
    redis_port: int | None = None,
) -> WrkResult:
    """wrk with ``rotate.lua``: each request carries the next line of ``cookie_file`` as ``header``
    (``Cookie``, or ``Authorization`` for lines ``Bearer <JWT>``)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    args = [
        wrk,
        f"-c{settings.connections}",
        f"-t{settings.threads}",
        f"-d{max(1, round(settings.duration))}s",
        f"--timeout={settings.timeout:g}s",
        "--latency",
        "-s",
        str(SCRIPT),
        url.rstrip("/") + settings.path,
        "--",
        str(cookie_file or ""),
        str(settings.threads),
        header,
    ]
    if settings.pin_cpu is not None:
        args = ["taskset", "-c", settings.pin_cpu, *args]
    before = redis_commands(redis_port)
    t0 = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=settings.duration + 60)
    elapsed = time.monotonic() - t0
    after = redis_commands(redis_port)
    m = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    raw = json.loads(m.group(1))
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    errors = raw["errors"]
    redis_rate = None
    if before is not None and after is not None:
        # Both INFO calls are counted too; negligible against thousands per second.
        redis_rate = (after - before - 1) / elapsed
    return WrkResult(
        requests=raw["requests"],
        seconds=seconds,
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        non2xx=raw["non2xx"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        redis_cmds_per_s=redis_rate,
        raw=raw,
    )


def run_python_load(
    url: str, cookies: Sequence[str], settings: WrkSettings, *, header: str = "Cookie", redis_port: int | None = None
) -> WrkResult:
    """A small aiohttp load generator with wrk's semantics (same rotation of ``header`` values, the same
    Accept, non-2xx counted), for machines without wrk (the smoke test). Far slower than wrk: its numbers
    are not comparable."""
    import asyncio

    import aiohttp

    async def go() -> tuple[int, int, int, list[float], float]:
        latencies: list[float] = []
        counts = {"non2xx": 0, "errors": 0}
        deadline = time.monotonic() + settings.duration
        connector = aiohttp.TCPConnector(limit=settings.connections)
        jar = aiohttp.DummyCookieJar()
        target = url.rstrip("/") + settings.path

        async def worker(index: int) -> None:
            i = index
            while time.monotonic() < deadline:
                headers = {"Accept": "text/html" if header == "Cookie" else "*/*"}
                if cookies:
                    headers[header] = cookies[i % len(cookies)]
                i += 1
                t = time.perf_counter()
                try:
                    async with http.get(target, headers=headers, allow_redirects=False) as resp:
                        await resp.read()
                        if not 200 <= resp.status < 300:
                            counts["non2xx"] += 1
                except aiohttp.ClientError:
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t)

        start = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=settings.timeout)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar, timeout=timeout) as http:
            await asyncio.gather(*(worker(i) for i in range(settings.connections)))
        return len(latencies), counts["non2xx"], counts["errors"], latencies, time.monotonic() - start

    before = redis_commands(redis_port)
    n, non2xx, errors, latencies, seconds = asyncio.run(go())
    after = redis_commands(redis_port)
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    rate = (after - before - 1) / seconds if before is not None and after is not None else None
    return WrkResult(
        requests=n,
        seconds=seconds,
        rps=n / seconds if seconds else 0.0,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        max_ms=1000 * latencies[-1] if latencies else 0.0,
        non2xx=non2xx,
        socket_errors=errors,
        redis_cmds_per_s=rate,
        raw={"generator": "python"},
    )


def median_of(results: Sequence[WrkResult]) -> dict[str, Any]:
    """Per-metric medians over repetitions (each metric on its own), plus the spread of req/s."""

    def med(name: str) -> float | None:
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    rps = [r.rps for r in results]
    return {
        "runs": len(results),
        "rps": med("rps"),
        "rps_min": min(rps) if rps else None,
        "rps_max": max(rps) if rps else None,
        "p50_ms": med("p50_ms"),
        "p90_ms": med("p90_ms"),
        "p99_ms": med("p99_ms"),
        "max_ms": med("max_ms"),
        "non2xx": sum(r.non2xx for r in results),
        "socket_errors": sum(r.socket_errors for r in results),
        "requests": sum(r.requests for r in results),
        "redis_cmds_per_s": med("redis_cmds_per_s"),
        "other_cpu_pct": med("other_cpu_pct"),
        "cpu_us_per_request": med("cpu_us_per_request"),
        "each": [r.as_dict() for r in results],
    }
