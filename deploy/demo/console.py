"""The sample console: what sits behind the sidecar in the demo, and the echo upstream of the tests.

Run: ``python deploy/demo/console.py [--host 127.0.0.1] [--port 8888] [--sidecar URL]`` (or CONSOLE_HOST,
CONSOLE_PORT, CONSOLE_SIDECAR_URL).

With ``--sidecar`` (the sidecar's ``public_url``), the console verifies the sidecar's signed assertion
(``X-Sso-Assertion``) the way any console should: the signature against the keys at ``URL/oauth2/jwks.json``
(fetched again for a key it does not know), ``iss`` = that URL, ``aud`` = this console's own URL (``--audience``,
default ``http://HOST:PORT``), ``exp``; and shows "verified" next to the identity. It is the example to copy: a
console that trusts the assertion, not the plain headers, cannot be fooled by a request that bypasses the sidecar.

- any GET page (``/``, ``/reports?id=7``, ...): "Data Platform Console" showing the identity headers
- ``/api/whoami``: JSON echo of method, path, query, headers and body length (any method)
- ``/download/{n}``: n bytes, streamed in chunks (``?delay=SECONDS`` between chunks, ``?chunked=1``
  to send no Content-Length)
- ``/upload`` (POST): counts and hashes the streamed body -> ``{"bytes": n, "sha256": hex}``
- ``/ws``: websocket echo; its first message is the identity headers seen on connect
- ``/api/status/{code}``: answers with that status; ``/api/sleep?seconds=S``: answers after S seconds
- ``/static/console.css``: a stylesheet (what ``skip_auth: ["GET ^/static/"]`` lets through)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import json
import os
import sys
import time
import warnings
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

IDENTITY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Given-Name",
    "X-Forwarded-Family-Name",
    "X-Forwarded-Name",
    "X-Forwarded-Groups",
    "X-Forwarded-Roles",
)
CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)  # known content, so a test can hash what it expects
MAX_DOWNLOAD = 8 * 1024**3

CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f6f9;color:#1f2933}
header{background:#1e3a5f;color:#fff;padding:14px 24px;display:flex;justify-content:space-between}
header a{color:#fff}main{padding:24px;max-width:760px}
table{border-collapse:collapse;background:#fff;width:100%}
td,th{border:1px solid #d9dee5;padding:6px 10px;text-align:left}
th{background:#eef1f5;width:40%}.none{color:#888}
.verified{background:#1f7a3a;color:#fff;border-radius:3px;padding:1px 6px;font-size:.8em}
.unverified{background:#b42318;color:#fff;border-radius:3px;padding:1px 6px;font-size:.8em}
"""


ASSERTION_HEADER = "X-Sso-Assertion"
ALGORITHMS = ["ES256", "RS256", "EdDSA"]
LEEWAY = 30  # seconds of clock difference between the sidecar and this console
REFETCH_AFTER = 10.0  # an unknown key id fetches the JWKS again at most this often


class AssertionCheck:
    """Verifies the sidecar's assertion: its keys from the sidecar's JWKS, its issuer, its audience, its expiry."""

    def __init__(self, sidecar: str, audience: str) -> None:
        self.issuer = sidecar.rstrip("/")
        self.jwks_url = self.issuer + "/oauth2/jwks.json"
        self.audience = audience
        self._keys: KeySet | None = None
        self._fetched: float | None = None  # time.monotonic() of the last fetch
        self.rules = jwt.JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
        )

    async def keys(self, kid: object, http: aiohttp.ClientSession) -> KeySet:
        known = self._keys is not None and any(k.kid == kid for k in self._keys.keys)
        if not known and (self._fetched is None or time.monotonic() - self._fetched > REFETCH_AFTER):
            async with http.get(self.jwks_url) as resp:
                resp.raise_for_status()
                self._keys = KeySet.import_key_set(await resp.json())
            self._fetched = time.monotonic()
        if self._keys is None:
            raise ValueError("the sidecar's JWKS could not be read")
        return self._keys

    async def verify(self, token: str, http: aiohttp.ClientSession) -> dict[str, Any]:
        """The verified claims; ``ValueError`` (or a joserfc error) saying why not."""
        kid = _kid_of(token)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # joserfc calls "EdDSA" superseded (RFC 9864)
            verified = jwt.decode(token, await self.keys(kid, http), algorithms=ALGORITHMS)
        self.rules.validate(verified.claims)
        return dict(verified.claims)


def _kid_of(token: str) -> object:
    """The key id the token names (read before verifying, only to pick the key)."""
    head = token.split(".", 1)[0]
    try:
        return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("kid")
    except ValueError:
        return None


CHECK = web.AppKey("assertion_check", AssertionCheck)
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)


async def assertion_status(request: web.Request) -> dict[str, Any]:
    """``{"verified": True, "claims": ...}``, or ``{"verified": False, "reason": ...}``."""
    token = request.headers.get(ASSERTION_HEADER)
    check = request.app.get(CHECK)
    if token is None:
        return {"verified": False, "reason": f"no {ASSERTION_HEADER} header"}
    if check is None:
        return {"verified": False, "reason": "not checked: the console was started without --sidecar"}
    try:
        return {"verified": True, "claims": await check.verify(token, request.app[HTTP])}
    except (JoseError, ValueError, aiohttp.ClientError) as exc:
        return {"verified": False, "reason": f"{type(exc).__name__}: {exc}"}


def download_bytes(n: int) -> bytes:
    """What ``/download/{n}`` sends, for tests to compare against."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def identity(request: web.Request) -> dict[str, str]:
    return {name: request.headers[name] for name in IDENTITY_HEADERS if name in request.headers}


def _assertion_html(status: dict[str, Any], present: bool) -> tuple[str, str]:
    """The badge next to the name, and the section about the assertion."""
    if status["verified"]:
        claims = status["claims"]
        rows = "".join(
            f"<tr><th>{html.escape(name)}</th><td>{html.escape(json.dumps(claims[name], ensure_ascii=False))}</td></tr>"
            for name in ("sub", "preferred_username", "email", "roles", "iss", "aud", "exp")
            if name in claims
        )
        left = int(claims["exp"] - time.time())
        return (
            ' <span id="assertion-status" class="verified" title="signed assertion verified">verified</span>',
            f"<h2>Signed assertion: verified</h2><p>Signature checked against the sidecar's JWKS; expires in "
            f'{left} s.</p><table id="assertion">{rows}</table>',
        )
    if not present:
        return "", ""
    reason = html.escape(status["reason"])
    return (
        ' <span id="assertion-status" class="unverified">not verified</span>',
        f'<h2>Signed assertion: not verified</h2><p id="assertion-reason">{reason}</p>',
    )


async def page(request: web.Request) -> web.Response:
    who = identity(request)
    display = who.get("X-Forwarded-Name") or who.get("X-Forwarded-User") or "anonymous"
    badge, section = _assertion_html(await assertion_status(request), ASSERTION_HEADER in request.headers)
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>"
        + (html.escape(who[name]) if name in who else '<span class="none">(not sent)</span>')
        + "</td></tr>"
        for name in IDENTITY_HEADERS
    )
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Data Platform Console</title>
<link rel="stylesheet" href="/static/console.css"></head>
<body><header><strong>Data Platform Console</strong>
<span>Signed in as <b id="display-name">{html.escape(display)}</b>{badge} ·
<a href="/oauth2/sign_out">Sign out</a></span>
</header><main>
<h1>Data Platform Console</h1>
<p>Page: <code id="path">{html.escape(str(request.rel_url))}</code></p>
<h2>Identity headers from the sidecar</h2>
<table id="identity">{rows}</table>
{section}
<p><a href="/api/whoami">/api/whoami</a> shows every request header.</p>
</main></body></html>"""
    return web.Response(text=body, content_type="text/html")


async def whoami(request: web.Request) -> web.Response:
    length = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        length += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "headers": {name: ", ".join(request.headers.getall(name)) for name in request.headers},
            "header_list": [[k, v] for k, v in request.headers.items()],
            "body_length": length,
            "remote": request.remote,
            **({"assertion": await assertion_status(request)} if ASSERTION_HEADER in request.headers else {}),
        }
    )


async def download(request: web.Request) -> web.StreamResponse:
    try:
        n = int(request.match_info["n"])
        delay = float(request.query.get("delay", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="n must be a whole number, delay a number of seconds") from None
    if not 0 <= n <= MAX_DOWNLOAD:
        raise web.HTTPBadRequest(text="n out of range")
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("chunked"):
        resp.enable_chunked_encoding()
    else:
        resp.content_length = n
    await resp.prepare(request)
    sent = 0
    while sent < n:
        piece = PATTERN[: min(CHUNK, n - sent)]
        await resp.write(piece)
        sent += len(piece)
        if delay:
            await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    count = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        digest.update(chunk)
        count += len(chunk)
    return web.json_response({"bytes": count, "sha256": digest.hexdigest()})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json({"identity": identity(request), "path": request.path_qs})
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.Response(status=code, text=f"status {code}\n")


async def sleep(request: web.Request) -> web.Response:
    seconds = min(float(request.query.get("seconds", "1")), 300.0)
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=CSS, content_type="text/css")


def make_app(check: AssertionCheck | None = None) -> web.Application:
    app = web.Application(client_max_size=1024**2)
    if check is not None:
        app[CHECK] = check

    async def client(app: web.Application) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            app[HTTP] = http
            yield

    app.cleanup_ctx.append(client)
    app.router.add_route("*", "/api/whoami", whoami)
    app.router.add_get("/api/status/{code:[1-5][0-9][0-9]}", status)
    app.router.add_get("/api/sleep", sleep)
    app.router.add_get("/download/{n}", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/static/console.css", stylesheet)
    app.router.add_get("/{tail:.*}", page)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The sample console behind the sidecar.")
    parser.add_argument("port", nargs="?", type=int, help="port (same as --port)")
    parser.add_argument("--host", default=os.environ.get("CONSOLE_HOST", "127.0.0.1"))
    parser.add_argument("--port", dest="port_opt", type=int, default=None)
    parser.add_argument(
        "--sidecar",
        default=os.environ.get("CONSOLE_SIDECAR_URL"),
        help="the sidecar's public_url: verify its signed assertion against URL/oauth2/jwks.json",
    )
    parser.add_argument("--audience", help="the assertion's expected aud (default: http://HOST:PORT, this console)")
    args = parser.parse_args(argv)
    port = args.port_opt or args.port or int(os.environ.get("CONSOLE_PORT", "8888"))
    check = AssertionCheck(args.sidecar, args.audience or f"http://{args.host}:{port}") if args.sidecar else None

    def ready(_: object) -> None:  # run_app calls this once the socket listens
        print(f"console listening on http://{args.host}:{port}", flush=True)

    web.run_app(make_app(check), host=args.host, port=port, print=ready, access_log=None)


if __name__ == "__main__":
    sys.exit(main())
