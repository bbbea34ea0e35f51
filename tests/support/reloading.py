"""Helpers shared by the reload tests: the status page, metrics, ``check``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from support.sidecar import sidecar_command


async def status_of(sidecar: Any, break_glass_token: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(sidecar.url_for("/oauth2/status"), headers={"X-Break-Glass": break_glass_token}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def metrics(sidecar: Any) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://{sidecar.config['metrics_listen']}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def check_output(config: Path) -> tuple[int, str]:
    """``sso-sidecar check --config`` without blocking the event loop: (exit status, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *sidecar_command(),
        "check",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()
