"""Logs for operators: JSON lines, request ids, levels, startup truth, and what never appears in a log."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from support.idp import DevIdP, login
from support.procs import free_port
from support.sidecar import Sidecar
from support.waiting import eventually


def lines(sidecar: Sidecar) -> list[str]:
    """The process's own output: the harness's first line (the command) left out."""
    return [line for line in sidecar.proc.logs().splitlines() if line.strip() and not line.startswith("$ ")]


def events(sidecar: Sidecar) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(sidecar)]


async def test_json_logs_are_one_object_per_line_from_start_to_shutdown(
    sidecar_factory: Any, http: Any, idp: DevIdP
) -> None:
    sidecar = sidecar_factory({"log_format": "json"})
    client = http()
    await login(client.session, sidecar.url + "/reports?secret-query=1", "alice.smith")
    async with client.get(sidecar.url + "/api/whoami?token=abc", headers={"X-Request-Id": "trace-42.a"}) as resp:
        echoed = await resp.json()
    async with http().get(sidecar.url + "/api/whoami", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 401
    sidecar.reload({**sidecar.config, "log_level": "bogus"})  # a refused reload logs an error
    await eventually(lambda: any("refused" in e["message"] for e in events(sidecar)), what="the refused reload")
    assert sidecar.stop() == 0

    found = events(sidecar)  # every line parses: one JSON object each
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in found)
    assert any("listening on" in e["message"] for e in found)  # startup
    assert any("shutting down" in e["message"] for e in found) and found[-1]["message"] == "stopped"  # shutdown
    access = [e for e in found if e["logger"] == "aiohttp.access"]
    traced = next(e for e in access if e["request_id"] == "trace-42.a")
    assert traced["method"] == "GET" and traced["path"] == "/api/whoami" and traced["status"] == 200
    assert traced["route"] == "proxy" and traced["user"].startswith("u") and isinstance(traced["duration_ms"], float)
    sent = {name.lower(): value for name, value in echoed["header_list"]}
    assert sent["x-request-id"] == "trace-42.a"  # the console gets the same id
    anonymous = next(e for e in access if e["status"] == 401)
    assert anonymous["route"] == "unauthenticated" and "user" not in anonymous
    login_redirect = next(e for e in access if e["path"] == "/reports" and e["status"] == 302)
    assert login_redirect["route"] == "login"
    assert all("?" not in e["path"] for e in access)  # never a query string (codes, state, tokens)
    assert any(e["level"] == "ERROR" and "log_level" in e["message"] for e in found)


async def test_a_malformed_request_id_is_replaced(sidecar: Sidecar, http: Any) -> None:
    async with http().get(sidecar.url + "/healthz", headers={"X-Request-Id": "bad id\twith spaces"}) as resp:
        assert resp.status == 200

    def logged() -> list[str]:
        return [line for line in lines(sidecar) if '"GET /healthz"' in line]

    line = (await eventually(logged, what="the access log line"))[-1]
    assert not any("bad id" in line for line in lines(sidecar))
    assert re.search(r"\[[0-9a-f]{16}\] probe$", line), line  # one of the sidecar's own ids instead


async def test_levels_anonymous_is_info_refusals_are_warnings(sidecar_factory: Any, http: Any) -> None:
    sidecar = sidecar_factory()
    async with http().get(sidecar.url + "/api/x", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 401
    async with http().get(sidecar.url + "/a%00b") as resp:
        assert resp.status == 400
    await eventually(lambda: any("-> 400" in line for line in lines(sidecar)), what="the 400 logged")
    unauth = next(line for line in lines(sidecar) if "-> 401 unauthenticated" in line)
    refused = next(line for line in lines(sidecar) if "-> 400" in line)
    assert " INFO " in unauth and " WARNING " in refused


async def test_an_unreachable_issuer_at_startup_is_loud_but_the_sidecar_is_ready(
    sidecar_factory: Any, http: Any
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    token = secrets.token_urlsafe(24)
    sidecar = sidecar_factory(
        {"sso": {"issuer_url": dead, "client_id": "c", "client_secret": "s"}, "break_glass": {"token": token}},
        register=False,
    )
    await eventually(
        lambda: any("WARNING" in line and "cannot be used right now" in line for line in lines(sidecar)),
        what="the startup warning",
    )
    warning = next(line for line in lines(sidecar) if "cannot be used right now" in line)
    assert "connection refused" in warning and "Error" not in warning.split("WARNING", 1)[1]
    async with http().get(sidecar.url + "/readyz") as resp:
        assert resp.status == 200  # signed-in users keep working
    async with http().get(sidecar.url + "/oauth2/status", headers={"X-Break-Glass": token}) as resp:
        status = await resp.json()
    assert status["discovery"]["status"] == "error" and "connection refused" in status["discovery"]["error"]


async def test_no_server_header_names_the_stack(sidecar: Sidecar, http: Any) -> None:
    for path in ("/healthz", "/oauth2/nothing-here", "/oauth2/start?rd=//evil"):
        async with http().get(sidecar.url + path) as resp:
            assert "aiohttp" not in resp.headers.get("Server", "") and "Python" not in resp.headers.get("Server", "")


async def test_no_token_secret_cookie_or_callback_query_in_the_logs(
    sidecar_factory: Any, http: Any, idp: DevIdP
) -> None:
    sidecar = sidecar_factory({"log_level": "debug"})
    client = http()
    redirect = await login(client.session, sidecar.url + "/", "bob.jones", stop_at=sidecar.url + "/oauth2/callback")
    callback = redirect.headers["Location"]
    async with client.get(callback) as resp:
        assert resp.status == 302
    cookie = client.cookie("sso_sidecar")
    assert cookie
    async with client.get(sidecar.url + "/api/whoami") as resp:
        assert resp.status == 200
    sidecar.stop()
    text = sidecar.proc.logs()
    code = callback.split("code=", 1)[1].split("&", 1)[0]
    for secret in (cookie, code, sidecar.client.client_secret, sidecar.config["session"]["cookie_secret"]):
        assert secret not in text
