"""Rotating the client secret end to end: the provider changes it, then the Secret volume follows.

A dedicated dev IdP on a fixed port knows one static client. The sidecar reads the secret from a
Kubernetes-style Secret volume (``client_secret_file``) that only the watcher sees change. The rotation
is done the way it happens for real: the provider starts accepting only the new secret (here: the IdP
restarts on the same port, with the same signing keys, knowing the client with secret B), then the
volume's ``..data`` swap brings B to the sidecar, which proves B at the token endpoint and swaps it in.
A signed-in user's requests flow throughout and none may fail: sessions are checked by the sidecar
itself, so neither the provider's restart nor the reload touches them. A wrong secret afterwards is
refused and the running config (with B) keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.configmap import ConfigMapDir
from support.http import HttpClient
from support.idp import BACKCHANNEL_LOGOUT_PATH, CALLBACK_PATH, SIGNED_OUT_PATH, DevIdP, idp_config, login
from support.procs import LOOPBACK, free_port
from support.reloading import check_output, metric, metrics, status_of
from support.waiting import eventually

CLIENT_ID = "rotating-console"
TOKEN = "break-glass-" + secrets.token_urlsafe(24)
USER = "alice.smith"


# --------------------------------------------------------------------------------------------------
# Helpers


async def token_endpoint_answer(idp: DevIdP, secret: str) -> tuple[int, str]:
    """What the provider's token endpoint says to CLIENT_ID with ``secret`` and a made-up code:
    ``invalid_grant`` means the credentials were accepted, ``invalid_client`` that they were not."""
    form = {"grant_type": "authorization_code", "code": "made-up", "redirect_uri": "http://x/"}
    form["code_verifier"] = "v" * 43
    endpoint = (await asyncio.to_thread(idp.discovery))["token_endpoint"]
    basic = base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()
    async with (
        aiohttp.ClientSession() as s,
        s.post(endpoint, data=form, headers={"Authorization": f"Basic {basic}"}) as resp,
    ):
        return resp.status, (await resp.json()).get("error", "")


def static_client(public_url: str, secret: str) -> dict[str, Any]:
    return {
        "client_id": CLIENT_ID,
        "client_secret": secret,
        "redirect_uris": [public_url + CALLBACK_PATH],
        "post_logout_redirect_uris": [public_url + SIGNED_OUT_PATH],
        "backchannel_logout_uri": public_url + BACKCHANNEL_LOGOUT_PATH,
        "backchannel_logout_session_required": True,
    }


class SignedInTraffic:
    """A signed-in user's API calls in a few loops. Anything but a 200 carrying the user's identity is
    a failure: a 401 would mean the session was lost, which a secret rotation must never cause."""

    def __init__(self, client: HttpClient, sidecar: Any, loops: int = 3) -> None:
        self.client = client
        self.sidecar = sidecar
        self.loops = loops
        self.failures: list[str] = []
        self.statuses: Counter[int] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def start(self) -> SignedInTraffic:
        self._tasks = [asyncio.ensure_future(self._api()) for _ in range(self.loops)]
        return self

    async def _api(self) -> None:
        url = self.sidecar.url_for("/api/whoami")
        while not self._stop.is_set():
            try:
                async with self.client.get(url, headers={"Accept": "application/json"}) as resp:
                    self.statuses[resp.status] += 1
                    if resp.status != 200:
                        self.failures.append(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                    elif (await resp.json())["headers"].get("X-Forwarded-User") != USER:
                        self.failures.append("200 without the user's identity")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))
            await asyncio.sleep(0.01)  # pacing of the load, not a wait for anything

    async def flowing(self, what: str, more: int = 20) -> None:
        """Wait until ``more`` further requests succeeded (the traffic is not stalled)."""
        target = self.ok + more

        async def check() -> bool:
            return self.ok >= target

        await eventually(check, what=f"{more} successful requests {what}")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 10)


# --------------------------------------------------------------------------------------------------
# The provider, restartable on one port with the same signing keys


class RotatingIdP:
    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir
        self.port = free_port()
        self.jwks_file = work_dir / "jwks.json"
        self.current: DevIdP | None = None
        self.started: list[DevIdP] = []
        self.generation = 0

    def start(self, clients: list[dict[str, Any]]) -> DevIdP:
        """Start (or restart, after ``stop``) the provider knowing only ``clients``."""
        self.generation += 1
        config = idp_config(port=self.port, clients=clients, allow_registration=False, jwks_file=str(self.jwks_file))
        idp = DevIdP(config, self.dir / f"idp-{self.generation}")
        self.started.append(idp)
        self.current = idp.start()
        return idp

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None

    def stop_all(self) -> None:
        for idp in self.started:
            idp.stop()


@pytest.fixture
def rotating_idp(tmp_path: Path) -> Iterator[RotatingIdP]:
    provider = RotatingIdP(tmp_path)
    yield provider
    provider.stop_all()


# --------------------------------------------------------------------------------------------------
# The scenario


async def test_client_secret_rotation_through_a_secret_volume_keeps_sessions_and_logins(
    http, rotating_idp: RotatingIdP, sidecar_factory, tmp_path: Path
):
    secret_a, secret_b, secret_c = (f"secret-{n}-" + secrets.token_urlsafe(16) for n in "abc")
    port = free_port()
    public_url = f"http://{LOOPBACK}:{port}"
    idp = rotating_idp.start([static_client(public_url, secret_a)])
    issuer = idp.issuer

    volume = ConfigMapDir(tmp_path / "secret")
    volume.write({"client-secret": secret_a, "break-glass": TOKEN})
    sc = sidecar_factory(
        {
            "listen": f"{LOOPBACK}:{port}",
            "public_url": public_url,
            "metrics_listen": f"{LOOPBACK}:{free_port()}",
            "sso": {
                "issuer_url": issuer,
                "client_id": CLIENT_ID,
                "client_secret": None,
                "client_secret_file": str(volume.path("client-secret")),
            },
            "break_glass": {"token_file": str(volume.path("break-glass"))},
            "reload": {"watch_interval": "200ms"},
        },
        register=False,
        idp=idp,
        name="sidecar-rotation",
    )
    st = await status_of(sc, TOKEN)
    assert st["config"]["sso"]["client_secret_file"] == str(volume.path("client-secret"))
    assert st["config"]["watch"] == {"enabled": True, "interval_seconds": 0.2}

    user = http()
    resp = await login(user, sc.url_for("/api/whoami"), USER)
    assert resp.status == 200, await resp.text()
    traffic = SignedInTraffic(user, sc).start()
    try:
        await traffic.flowing("before the rotation")

        # 1. The provider rotates: it restarts on the same port and keys and from now on accepts only B.
        #    (Off the event loop, so the user's requests keep flowing while it is down.)
        await asyncio.to_thread(rotating_idp.stop)
        await traffic.flowing("while the provider is down")
        idp = await asyncio.to_thread(rotating_idp.start, [static_client(public_url, secret_b)])
        assert idp.issuer == issuer
        assert await token_endpoint_answer(idp, secret_a) == (401, "invalid_client")
        assert (await token_endpoint_answer(idp, secret_b))[1] == "invalid_grant"  # authenticated
        # The sidecar still holds A: nothing changed in its files, so no reload ran...
        assert (await status_of(sc, TOKEN))["reload"] == st["reload"]
        # ...and a login in this gap fails at the token endpoint (the rotation is real), while the
        # signed-in user carries on.
        gap = await login(http(), sc.url_for("/api/whoami"), "bob.jones")
        assert gap.status == 502 and "refused the request: invalid_client" in await gap.text(), await gap.text()
        await traffic.flowing("with the provider on B and the sidecar on A")

        # 2. The Secret volume follows: B arrives by a ..data swap, which only the watcher sees.
        volume.write({"client-secret": secret_b, "break-glass": TOKEN})

        async def rotated() -> dict[str, Any] | None:
            now = await status_of(sc, TOKEN)
            assert now["reload"]["failed"] == 0, now["reload"]["last_error"]
            return now if now["config"]["version"] != st["config"]["version"] else None

        st = await eventually(rotated, what="the rotated secret to apply")
        assert st["reload"]["succeeded"] == 1 and st["reload"]["last_error"] is None
        assert st["config"]["sso"]["client_id"] == CLIENT_ID and st["config"]["sso"]["client_secret"] == "********"
        assert st["discovery"]["status"] == "ok" and st["discovery"]["issuer"] == issuer
        logs = sc.logs()
        assert "config or secret file changed: reloading" in logs
        assert "config reloaded (watch)" in logs and "changed: sso" in logs  # the secret is part of sso
        text = await metrics(sc)
        assert metric(text, 'sso_sidecar_config_reloads_total{result="success",trigger="watch"}') == 1
        assert metric(text, "sso_sidecar_config_last_reload_successful") == 1.0
        await traffic.flowing("after the rotation")

        # A new login now works end to end: the code is redeemed with B.
        newcomer = http()
        resp = await login(newcomer, sc.url_for("/api/whoami"), "carol.white")
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["headers"]["X-Forwarded-User"] == "carol.white"
        code, output = await check_output(sc.config_path)
        assert code == 0, output
        assert "client credentials:        accepted by the token endpoint" in output

        # 3. A wrong secret C in the volume: proven wrong at the token endpoint, never swapped in.
        volume.write({"client-secret": secret_c, "break-glass": TOKEN})

        async def refused() -> dict[str, Any] | None:
            now = await status_of(sc, TOKEN)
            return now if now["reload"]["failed"] > 0 else None

        bad = await eventually(refused, what="the wrong secret to be refused")
        assert bad["config"]["version"] == st["config"]["version"]  # B keeps running
        error = bad["reload"]["last_error"]
        assert error.startswith("sso.client_secret_file: ") and "rejected the client credentials" in error, error
        assert "refused, keeping the running config" in sc.logs()
        text = await metrics(sc)
        assert metric(text, 'sso_sidecar_config_reloads_total{result="failure",trigger="watch"}') == 1
        assert metric(text, "sso_sidecar_config_last_reload_successful") == 0.0
        code, output = await check_output(sc.config_path)
        assert code == 1 and error in output, output  # the same words as the status
        # Logins still use B.
        resp = await login(http(), sc.url_for("/api/whoami"), "dave.brown")
        assert resp.status == 200, await resp.text()
        await traffic.flowing("after the refused secret")
    finally:
        await traffic.stop()

    assert traffic.failures == [], (traffic.failures[:10], traffic.statuses)
    assert set(traffic.statuses) == {200} and traffic.ok >= 100, traffic.statuses
    for secret in (secret_a, secret_b, secret_c):
        assert secret not in sc.logs() and secret not in json.dumps(await status_of(sc, TOKEN))
