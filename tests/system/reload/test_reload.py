"""Live reconfiguration end to end: real sidecar processes, the real dev IdP, the sample console.

Every scenario runs under constant traffic from a signed-in user (API calls, long streaming downloads,
one websocket opened before the first reload) and ends by asserting that not one request failed and
that the websocket still echoes. Configs change the Kubernetes way (a ConfigMap-style ``..data`` swap,
seen by the watcher) or by SIGHUP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from support.configmap import ConfigMapDir, ConfigMapSidecar
from support.http import HttpClient
from support.idp import login
from support.procs import LOOPBACK, free_port
from support.reloading import check_output, metric, metrics, status_of
from support.sidecar import merge
from support.waiting import eventually, holds

TOKEN = "break-glass-" + secrets.token_urlsafe(24)
DOWNLOAD = 512 * 1024  # 8 chunks of 64 KiB with a delay after each: a download spans several reloads
DOWNLOAD_SHA256 = hashlib.sha256(bytes(range(256)) * (DOWNLOAD // 256)).hexdigest()


# --------------------------------------------------------------------------------------------------
# Helpers


async def applied(sidecar: Any, before: dict[str, Any]) -> dict[str, Any]:
    """Wait for a reload that replaced the config ``before`` describes; return the new status."""

    async def check() -> dict[str, Any] | None:
        st = await status_of(sidecar, TOKEN)
        assert st["reload"]["failed"] == before["reload"]["failed"], st["reload"]["last_error"]
        return st if st["config"]["version"] != before["config"]["version"] else None

    return await eventually(check, what="the new config to apply")


async def refused(sidecar: Any, before: dict[str, Any]) -> dict[str, Any]:
    """Wait for a refused reload; the running config must be the one ``before`` describes."""

    async def check() -> dict[str, Any] | None:
        st = await status_of(sidecar, TOKEN)
        return st if st["reload"]["failed"] > before["reload"]["failed"] else None

    st = await eventually(check, what="the reload to be refused")
    assert st["config"]["version"] == before["config"]["version"]
    assert st["reload"]["last_error"]
    return st


async def whoami(client: HttpClient, sidecar: Any) -> tuple[int, dict[str, Any]]:
    async with client.get(sidecar.url_for("/api/whoami"), headers={"Accept": "application/json"}) as resp:
        return resp.status, (await resp.json() if resp.status == 200 else {})


async def signed_in(client: HttpClient, sidecar: Any, username: str = "alice.smith") -> None:
    resp = await login(client, sidecar.url_for("/api/whoami"), username)
    assert resp.status == 200, await resp.text()


async def login_redirect(client: HttpClient, sidecar: Any) -> URL:
    """Where a browser without a session is sent: the authorization request."""
    async with client.get(sidecar.url_for("/reports")) as resp:
        assert resp.status == 302, (resp.status, await resp.text())
        return URL(resp.headers["Location"])


class Traffic:
    """A signed-in user's requests flowing while the config changes: API calls in a loop, long
    streaming downloads in a loop, and one websocket opened at the start and used throughout.

    A request fails when it raises (connection reset, truncated body), answers 5xx, or a download's
    bytes are not exactly what the console sent. 401 is an answer, not a failure: after the client
    changes, the user's session is no longer accepted.
    """

    def __init__(self, client: HttpClient, sidecar: Any) -> None:
        self.client = client
        self.sidecar = sidecar
        self.failures: list[str] = []
        self.statuses: Counter[str] = Counter()
        self.downloads = 0
        self.echoes = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def start(self) -> Traffic:
        self.ws = await self.client.ws_connect(self.sidecar.url_for("/ws"))
        hello = await self.ws.receive_json(timeout=5)
        assert hello["identity"]["X-Forwarded-User"] == "alice.smith"
        for loop in (self._api, self._api, self._download, self._download, self._websocket):
            self._tasks.append(asyncio.ensure_future(loop()))
        return self

    async def _api(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.client.get(
                    self.sidecar.url_for("/api/whoami"), headers={"Accept": "application/json"}
                ) as resp:
                    await resp.read()
                    self.statuses[f"api {resp.status}"] += 1
                    if resp.status not in (200, 401):
                        self.failures.append(f"api: HTTP {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"api: {exc!r}")
            await asyncio.sleep(0.01)  # pacing of the load, not a wait for anything

    async def _download(self) -> None:
        url = self.sidecar.url_for(f"/download/{DOWNLOAD}?delay=0.1")
        while not self._stop.is_set():
            try:
                async with self.client.get(url, headers={"Accept": "application/octet-stream"}) as resp:
                    body = await resp.read()
                    self.statuses[f"download {resp.status}"] += 1
                    if resp.status == 200:
                        if hashlib.sha256(body).hexdigest() != DOWNLOAD_SHA256:
                            self.failures.append(f"download: {len(body)} bytes, not the console's {DOWNLOAD}")
                        else:
                            self.downloads += 1
                    elif resp.status != 401:
                        self.failures.append(f"download: HTTP {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"download: {exc!r}")
            await asyncio.sleep(0.01)  # pacing

    async def _websocket(self) -> None:
        assert self.ws is not None
        i = 0
        while not self._stop.is_set():
            i += 1
            await self.echo(f"message {i}")
            await asyncio.sleep(0.1)  # pacing

    async def echo(self, text: str) -> None:
        assert self.ws is not None
        try:
            await self.ws.send_str(text)
            msg = await self.ws.receive(timeout=5)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            self.failures.append(f"websocket: {exc!r}")
            return
        if msg.type != aiohttp.WSMsgType.TEXT or msg.data != text:
            self.failures.append(f"websocket: got {msg.type.name} {msg.data!r} instead of the echo")
        else:
            self.echoes += 1

    async def stop(self) -> None:
        """Stop the loops (letting running downloads finish), then prove the websocket still works."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 30)
        await self.echo("still there?")
        assert self.ws is not None
        await self.ws.close()

    def assert_nothing_failed(self) -> None:
        assert self.failures == [], (self.failures[:10], self.statuses)
        assert self.downloads >= 2 and self.echoes >= 5, (self.downloads, self.echoes, self.statuses)


def dead_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


# --------------------------------------------------------------------------------------------------
# A sidecar whose config and secrets are ConfigMap/Secret-style volumes


@pytest.fixture
def configmap_sidecar(idp, console, tmp_path: Path) -> Iterator[Callable[..., ConfigMapSidecar]]:
    started: list[ConfigMapSidecar] = []

    def start(**overrides: Any) -> ConfigMapSidecar:
        port = free_port()
        public_url = f"http://{LOOPBACK}:{port}"
        client = idp.register_client(public_url)
        volume = ConfigMapDir(tmp_path / "secret")
        volume.write({"client-secret": client.client_secret, "break-glass": TOKEN})
        config = {
            "listen": f"{LOOPBACK}:{port}",
            "public_url": public_url,
            "upstream": console.url,
            "metrics_listen": f"{LOOPBACK}:{free_port()}",
            "sso": {
                "issuer_url": idp.issuer,
                "client_id": client.client_id,
                "client_secret_file": str(volume.path("client-secret")),
            },
            "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
            "break_glass": {"token_file": str(volume.path("break-glass"))},
            "reload": {"watch_interval": "200ms"},
        }
        sidecar = ConfigMapSidecar(merge(config, overrides), tmp_path / "sidecar", name="sidecar-configmap")
        sidecar.client = client
        sidecar.secrets = volume  # type: ignore[attr-defined]
        started.append(sidecar)
        return sidecar.start()

    yield start
    for sidecar in started:
        sidecar.stop()


# --------------------------------------------------------------------------------------------------
# Scenarios


async def test_configmap_updates_apply_live_under_traffic_without_a_failed_request(http, idp, configmap_sidecar):
    """Disable, enable, change scopes and the upstream pool, refuse a bad issuer, broken YAML and a
    wrong secret, then switch clients: all through ..data swaps that only the watcher sees."""
    sc = configmap_sidecar()
    assert sc.config_path.is_symlink()
    config = sc.config
    user = http()
    await signed_in(user, sc)
    traffic = await Traffic(user, sc).start()
    st = await status_of(sc, TOKEN)
    assert st["reload"]["last_error"] is None and st["config"]["sso"]["enabled"] is True

    # SSO off: a pass-through, with identity headers stripped; the console's own login takes over.
    config = merge(config, {"sso": {"enabled": False}})
    sc.write_config(config)
    st = await applied(sc, st)
    assert st["config"]["sso"]["enabled"] is False and st["discovery"] == {"status": "disabled"}
    status, seen = await whoami(user, sc)
    assert status == 200 and "X-Forwarded-User" not in seen["headers"]
    stranger = http()
    async with stranger.get(sc.url_for("/api/whoami"), headers={"X-Forwarded-User": "mallory"}) as resp:
        assert resp.status == 200
        assert "mallory" not in json.dumps((await resp.json())["header_list"])

    # SSO on again, same issuer and client: the session from before still counts; strangers log in.
    config = merge(config, {"sso": {"enabled": True}})
    sc.write_config(config)
    st = await applied(sc, st)
    status, seen = await whoami(user, sc)
    assert status == 200 and seen["headers"]["X-Forwarded-User"] == "alice.smith"
    assert str(await login_redirect(http(), sc)).startswith(idp.issuer)

    # New scopes show in the next authorization request; a new upstream timeout means a new pool,
    # while the websocket and downloads started on the old one carry on.
    config = merge(config, {"sso": {"scopes": ["openid", "email", "profile", "groups"]}, "upstream_timeout": "299s"})
    sc.write_config(config)
    st = await applied(sc, st)
    assert (await login_redirect(http(), sc)).query["scope"] == "openid email profile groups"
    assert (await whoami(user, sc))[0] == 200

    # An issuer that does not answer: refused, the running config keeps serving, status and
    # `sso-sidecar check` give the same reason.
    bad_issuer = f"http://{LOOPBACK}:{dead_port()}/realms/gone"
    sc.write_config(merge(config, {"sso": {"issuer_url": bad_issuer}}))
    st = await refused(sc, st)
    error = st["reload"]["last_error"]
    assert error.startswith("sso.issuer_url: ")
    assert str(await login_redirect(http(), sc)).startswith(idp.issuer)
    code, output = await check_output(sc.config_path)
    assert code != 0 and error in output

    # Broken YAML: refused, still serving.
    sc.write_text("sso: [issuer_url: oops\n")
    st = await refused(sc, st)
    assert st["reload"]["last_error"].startswith("(file): not valid YAML")
    assert (await whoami(user, sc))[0] == 200

    # Putting back what runs clears the error without a reload.
    sc.write_config(config)
    st = await eventually(
        lambda: _status_where(sc, lambda s: s["reload"]["last_error"] is None), what="the error to clear"
    )

    # A wrong client secret in the Secret volume (the config file unchanged): refused before the swap.
    volume: ConfigMapDir = sc.secrets  # type: ignore[attr-defined]
    volume.write({"client-secret": "not-the-secret", "break-glass": TOKEN})
    st = await refused(sc, st)
    assert st["reload"]["last_error"].startswith("sso.client_secret_file: ")
    assert "rejected" in st["reload"]["last_error"] and "not-the-secret" not in json.dumps(st)
    assert (await whoami(user, sc))[0] == 200

    # Rotate to a second client: its secret arrives first (refused: it does not fit the old id), then
    # the config with its id. Sessions of the old client end; signing in again works.
    second = idp.register_client(config["public_url"])
    volume.write({"client-secret": second.client_secret, "break-glass": TOKEN})
    st = await refused(sc, st)
    config = merge(config, {"sso": {"client_id": second.client_id}})
    sc.write_config(config)
    st = await applied(sc, st)
    assert st["config"]["sso"]["client_id"] == second.client_id
    assert (await whoami(user, sc))[0] == 401
    again = http()
    assert (await login_redirect(again, sc)).query["client_id"] == second.client_id
    await signed_in(again, sc)
    # The user's own traffic is refused as well, from its first request that starts after the switch
    # (requests already under way finish on the config they started with: on a busy machine, that may
    # be all of them until now).
    await eventually(lambda: traffic.statuses["api 401"] > 0, what="the user's traffic to be refused")

    # The websocket opened before the pool change still holds the old pool open; closing it closes that.
    closed = "upstream pool of a previous config closed"
    assert closed not in sc.logs()
    await traffic.stop()
    await eventually(lambda: _logged(sc, closed), what="the old upstream pool to close")
    traffic.assert_nothing_failed()
    text = await metrics(sc)
    assert metric(text, 'sso_sidecar_config_reloads_total{result="success",trigger="watch"}') >= 4
    assert metric(text, 'sso_sidecar_config_reloads_total{result="failure",trigger="watch"}') >= 4
    assert metric(text, "sso_sidecar_config_last_reload_successful") == 1.0
    assert f'version="{st["config"]["version"]}"' in text


async def _logged(sidecar: Any, text: str) -> bool:
    return text in sidecar.logs()


async def _status_where(sidecar: Any, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    st = await status_of(sidecar, TOKEN)
    return st if predicate(st) else None


async def test_sighup_reloads_under_traffic_and_reports_what_needs_a_restart(http, idp, sidecar_factory, tmp_path):
    token_file = tmp_path / "break-glass"
    token_file.write_text(TOKEN + "\n")
    # watch_interval applies only if a watcher (wrongly) ran: it would then see the change within 0.2s.
    reload = {"watch": False, "watch_interval": "100ms"}
    sc = sidecar_factory({"reload": reload, "break_glass": {"token_file": str(token_file)}})
    config = sc.config
    user = http()
    await signed_in(user, sc)
    traffic = await Traffic(user, sc).start()
    st = await status_of(sc, TOKEN)
    assert st["config"]["watch"]["enabled"] is False

    # With watching off, a changed file waits for SIGHUP: there is no event to wait for, so watch the
    # running version stay put for several times what a watcher would need.
    config = merge(config, {"sso": {"enabled": False}})
    sc.write_config(config)
    unchanged = st["config"]["version"]
    await holds(
        lambda: _status_where(sc, lambda s: s["config"]["version"] == unchanged),
        during=1.0,
        interval=0.1,
        what="the running config, with watching off and no SIGHUP",
    )
    sc.reload()
    st = await applied(sc, st)
    status, seen = await whoami(user, sc)
    assert status == 200 and "X-Forwarded-User" not in seen["headers"]

    config = merge(config, {"sso": {"enabled": True}})
    sc.reload(config)
    st = await applied(sc, st)
    assert (await whoami(user, sc))[1]["headers"]["X-Forwarded-User"] == "alice.smith"

    # listen cannot move in a running process: reported; the rest (scopes, a new header) applies, and
    # the session survives because issuer and client are unchanged.
    moved = f"{LOOPBACK}:{free_port()}"
    headers = {"X-Forwarded-User": "preferred_username", "X-Forwarded-Subject": "sub"}
    config = merge(config, {"listen": moved, "sso": {"scopes": ["openid", "profile"]}, "headers": headers})
    sc.reload(config)
    st = await applied(sc, st)
    assert st["reload"]["needs_restart"] == ["listen"]
    assert (await login_redirect(http(), sc)).query["scope"] == "openid profile"
    status, seen = await whoami(user, sc)
    assert status == 200 and seen["headers"]["X-Forwarded-Subject"] and "X-Forwarded-Email" not in seen["headers"]

    # A wrong secret is proven wrong at the token endpoint and never swapped in.
    sc.reload(merge(config, {"sso": {"client_secret": "wrong-secret"}}))
    st = await refused(sc, st)
    assert st["reload"]["last_error"].startswith("sso.client_secret: ") and "wrong-secret" not in json.dumps(st)
    await signed_in(http(), sc)  # logins still work with the running client

    # Another client: its sessions start over.
    second = idp.register_client(config["public_url"])
    config = merge(config, {"sso": {"client_id": second.client_id, "client_secret": second.client_secret}})
    sc.reload(config)
    st = await applied(sc, st)
    assert (await whoami(user, sc))[0] == 401
    await signed_in(http(), sc)

    await traffic.stop()
    traffic.assert_nothing_failed()
    assert "listen changed and needs a restart" in sc.logs()


async def test_the_status_endpoint_is_for_admin_groups_or_break_glass_only(http, sidecar_factory):
    sc = sidecar_factory({"status": {"admin_groups": ["admins"]}})
    async with http().get(sc.url_for("/oauth2/status"), headers={"Accept": "application/json"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthenticated"
    alice = http()
    await signed_in(alice, sc, "alice.smith")  # groups: users
    async with alice.get(sc.url_for("/oauth2/status")) as resp:
        assert resp.status == 403
    admin = http()
    await signed_in(admin, sc, "admin.ada")  # groups: users, admins
    async with admin.get(sc.url_for("/oauth2/status")) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["config"]["redirect_uri"] == sc.url_for("/oauth2/callback")
    assert body["config"]["sso"]["client_secret"] == "********"
    assert sc.client.client_secret not in json.dumps(body)
    assert body["discovery"]["status"] == "ok"
    assert body["reload"] == {
        "last_attempt": None,
        "last_error": None,
        "last_error_at": None,
        "needs_restart": [],
        "succeeded": 0,
        "failed": 0,
    }
    # Break-glass is off here, so its header is no way in.
    async with alice.get(sc.url_for("/oauth2/status"), headers={"X-Break-Glass": TOKEN}) as resp:
        assert resp.status == 403
