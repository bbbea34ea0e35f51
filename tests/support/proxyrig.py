"""The adversarial proxy suite's rig: a raw console behind a real sidecar, signed-in users, and the oracle.

``proxy_config`` is the one place the suite builds a sidecar config, so the whole suite runs once per
proxy path (``UPSTREAM_CLIENTS``: each upstream client, ``upstream_client``, and the lean one also with
``relay_writer: aiohttp``; the aiohttp client's path also with aiohttp's own request loop, ``server_loop:
aiohttp``, the others with the lean one). ``Rig`` bundles a
``RawConsole``, the sidecar in front of it (started through its CLI) and the session cookies of users
signed in through a real provider.

The oracle (``check_console``): the console sees only requests the client legitimately made, each body
exactly as sent, framed by a length that matches, with the client's Host and no identity header the
sidecar did not set itself; it never parses a request line an attacker embedded (``MARKER``).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.http import new_client
from support.idp import login
from support.procs import LOOPBACK, free_port
from support.rawclient import RawClient, RawResponse
from support.rawconsole import RawConsole, Request
from support.sidecar import Sidecar, merge
from support.waiting import eventually

SKIP_RULE = "^/api/health$"
SKIP_PATH = "/api/health"  # proxied without a session
AUTH_PATH = "/api/echo"  # needs a session
COOKIE = "sso_sidecar"
# The proxy paths the suite runs against: each upstream client (``upstream_client``: the lean one and aiohttp's)
# with the relay's own writer of whole answers, and the lean client with aiohttp's response writing them
# (``relay_writer: aiohttp``, the well-trodden fallback of that writer). The server's request loop: aiohttp's own
# (``server_loop: aiohttp``) on the aiohttp client's path, the path of every well-trodden fallback; the lean loop
# (the default) on the other two.
AIOHTTP_WRITER = "h1+aiohttp-writer"
UPSTREAM_CLIENTS: tuple[str, ...] = ("h1", "aiohttp", AIOHTTP_WRITER)


def proxy_path_config(variant: str) -> dict[str, str]:
    """The config keys of one of ``UPSTREAM_CLIENTS``."""
    if variant == AIOHTTP_WRITER:
        return {"upstream_client": "h1", "relay_writer": "aiohttp", "server_loop": "lean"}
    if variant == "aiohttp":
        return {"upstream_client": "aiohttp", "relay_writer": "lean", "server_loop": "aiohttp"}
    return {"upstream_client": variant, "relay_writer": "lean", "server_loop": "lean"}


# Embedded in every request line an attacker hides in a body, a header or a trailer: the console must
# never parse it as a request.
MARKER = "SMUGGLED"
# Header names the console could read as identity (compared with punctuation folded to "-", as CGI-style
# stacks do): the sidecar's defaults, oauth2-proxy's and the X-Auth-Request-* family.
_IDENTITY_KEYS = frozenset(
    {
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-given-name",
        "x-forwarded-family-name",
        "x-forwarded-name",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-forwarded-access-token",
    }
)
_PUNCTUATION = str.maketrans(dict.fromkeys("!#$%&'*+.^_`|~", "-"))
_SENTINELS = itertools.count()
_BARRIERS = itertools.count()


def identity_key(name: str) -> str | None:
    """The identity header ``name`` could pass for, or None."""
    key = name.lower().translate(_PUNCTUATION)
    return key if key in _IDENTITY_KEYS or key.startswith("x-auth-request-") else None


def proxy_config(
    *,
    upstream: str,
    issuer: str,
    client_id: str,
    client_secret: str,
    upstream_client: str,
    port: int | None = None,
    public_url: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar config of every rig in the suite: memory sessions, ``skip_auth`` for ``SKIP_PATH``."""
    port = port or free_port()
    config: dict[str, Any] = {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": public_url or f"http://{LOOPBACK}:{port}",
        "upstream": upstream,
        "sso": {"issuer_url": issuer, "client_id": client_id, "client_secret": client_secret},
        "session": {"store": "memory", "cookie_secret": secrets.token_urlsafe(32)},
        "skip_auth": [SKIP_RULE],
        **proxy_path_config(upstream_client),
    }
    assert upstream_client in UPSTREAM_CLIENTS
    return merge(config, overrides or {})


@dataclass
class Rig:
    """A raw console, the sidecar in front of it, and the session cookies of signed-in users."""

    console: RawConsole
    sidecar: Sidecar
    upstream_client: str
    cookies: dict[str, str] = field(default_factory=dict)  # username -> session cookie value

    @property
    def port(self) -> int:
        return self.sidecar.port

    @property
    def host(self) -> str:
        """The Host header a client of the sidecar sends."""
        return f"{LOOPBACK}:{self.sidecar.port}"

    @property
    def pid(self) -> int:
        assert self.sidecar.proc is not None
        return self.sidecar.proc.pid

    def cookie_header(self, user: str | None) -> list[str]:
        return [] if user is None else [f"Cookie: {COOKIE}={self.cookies[user]}"]

    def request(
        self,
        method: str,
        target: str,
        *headers: str,
        body: bytes = b"",
        user: str | None = None,
        close: bool = False,
    ) -> bytes:
        """A well-formed request to the sidecar: Host, the user's session cookie, ``headers``, ``body`` as is."""
        lines = [f"Host: {self.host}", *self.cookie_header(user), *headers]
        if close:
            lines.append("Connection: close")
        return raw_request(method, target, lines, body)

    async def sign_in(self, username: str) -> str:
        """Sign in through the provider's pages; the session cookie value."""
        async with new_client() as client:
            final = await login(client, self.sidecar.url_for(AUTH_PATH), username)
            assert final.status == 200, (final.status, await final.text())
            value = client.cookie(COOKIE)
        assert value, f"no {COOKIE} cookie after signing in as {username}"
        self.cookies[username] = value
        return value

    def log(self, since: int = 0) -> str:
        assert self.sidecar.proc is not None
        return self.sidecar.proc.logs(since)

    def log_size(self) -> int:
        assert self.sidecar.proc is not None
        return self.sidecar.proc.log_size()

    async def log_after(self, since: int, timeout: float = 5.0) -> str:
        """The log since offset ``since``, once everything logged before this call is written.

        Access lines go out in batches (every 100 ms), after other log lines of the same request: so send
        one more request and poll for its access line.
        """
        barrier = f"/barrier-{next(_BARRIERS)}"
        async with await RawClient.open(self.port) as client:
            await client.send(self.request("GET", barrier, "Accept: application/json", close=True))
            await client.response(timeout=timeout)
        needle = f'"GET {barrier}"'

        def logged() -> str:
            text = self.log(since)
            return text if needle in text else ""

        return await eventually(logged, what=f"{barrier} in the log", timeout=timeout)


async def start_rig(
    work_dir: Path,
    *,
    issuer: str,
    client_id: str,
    client_secret: str,
    upstream_client: str,
    console: RawConsole | None = None,
    upstream: str | None = None,
    port: int | None = None,
    public_url: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    name: str = "rig",
) -> Rig:
    console = console or await RawConsole().start()
    config = proxy_config(
        upstream=upstream or console.url,
        issuer=issuer,
        client_id=client_id,
        client_secret=client_secret,
        upstream_client=upstream_client,
        port=port,
        public_url=public_url,
        overrides=overrides,
    )
    sidecar = Sidecar(config, work_dir / name, name=name)
    await asyncio.to_thread(sidecar.start)  # the provider may answer on this loop: do not block it
    return Rig(console, sidecar, upstream_client)


async def rig_at_dev_idp(work_dir: Path, idp: Any, upstream_client: str, users: Sequence[str] = ("alice",)) -> Rig:
    """A rig whose sidecar signs in at the dev IdP (a client registered for it), with ``users`` signed in."""
    port = free_port()
    client = idp.register_client(f"http://{LOOPBACK}:{port}")
    rig = await start_rig(
        work_dir,
        issuer=idp.issuer,
        client_id=client.client_id,
        client_secret=client.client_secret,
        upstream_client=upstream_client,
        port=port,
    )
    for user in users:
        await rig.sign_in(user)
    return rig


async def stop_rig(rig: Rig) -> None:
    await rig.sidecar.astop()
    await rig.console.stop()


# --------------------------------------------------------------------------------------------------
# Hand-written requests


def raw_request(method: str, target: str, headers: Iterable[str | bytes], body: bytes = b"") -> bytes:
    """Exactly these bytes: request line, header lines (CRLF), an empty line, ``body``. Nothing added."""
    head = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    head += [h if isinstance(h, bytes) else h.encode("utf-8") for h in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(*chunks: bytes, trailers: Sequence[str] = ()) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n" + b"".join(t.encode() + b"\r\n" for t in trailers) + b"\r\n"


def smuggled_request(host: str, *, user: str = "admin", path: str = "/" + MARKER) -> bytes:
    """The request an attacker wants the console to parse on its own: it carries an identity."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-User: {user}\r\n"
        f"X-Forwarded-Email: {user}@example.com\r\nX-Forwarded-Groups: admins\r\n\r\n"
    ).encode()


def is_console_echo(response: RawResponse) -> bool:
    if response.status != 200 or not response.body.startswith(b"{"):
        return False
    try:
        return "conn" in response.json()
    except ValueError:
        return False


# Answers of the sidecar's own after which aiohttp may read no further on the connection (a malformed
# request), so waiting for the sentinel's answer or the close would hang. The gate's own refusals (401,
# 403) leave the connection usable: the sentinel behind them is still answered.
_GATE_REFUSALS = frozenset({401, 403})


def new_sentinel() -> str:
    """A tag for a test's closing request, unique in the session: one that arrives late (after its test
    stopped reading) is told apart from the next test's."""
    return f"sentinel-{next(_SENTINELS):06d}"


async def read_answers(client: RawClient, sentinel: str = "sentinel", *, timeout: float = 10.0) -> list[RawResponse]:
    """Responses until the sentinel's echo, an answer of the sidecar's own >= 400 (not a 401/403), or the
    end of the connection."""
    answers: list[RawResponse] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                response = await client.response()
            except EOFError:
                return answers
            answers.append(response)
            if is_console_echo(response) and sentinel in response.json()["target"]:
                return answers
            if response.status >= 400 and response.status not in _GATE_REFUSALS and not is_console_echo(response):
                return answers


# --------------------------------------------------------------------------------------------------
# The oracle


@dataclass
class Legit:
    """A request the client legitimately made, as the console must see it."""

    method: str
    target: str
    body: bytes = b""
    content_encoding: str | None = None
    keep_length: bool = False  # the client's Content-Length must arrive (not re-framed as chunked)


def check_request(request: Request, *, host: str | None, user: str | None) -> None:
    """What holds for every request the console parses: clean framing, no embedded request line, the
    client's Host, and identity headers only as the sidecar sets them (``user`` None: none at all)."""
    where = f"console request {request.method} {request.target[:80]} (conn {request.conn})"
    assert MARKER not in request.target, f"{where}: the console parsed an embedded request line"
    for name, value in request.raw_headers:
        assert MARKER.encode() not in name + value, f"{where}: an embedded request reached the head"
    assert not request.anomalies, f"{where}: {request.anomalies}"
    lengths = request.values("Content-Length")
    if lengths:
        assert not request.chunked and lengths == [str(len(request.body))], f"{where}: Content-Length {lengths}"
    hosts = request.values("Host")
    if host is not None:
        assert hosts == [host], f"{where}: Host {hosts}, the client sent {host!r}"
    for name, _ in request.trailers:
        assert identity_key(name.decode("latin-1")) is None, f"{where}: identity header in a trailer"
    seen = [
        (n.decode("latin-1"), v.decode("utf-8", "backslashreplace"))
        for n, v in request.raw_headers
        if identity_key(n.decode("latin-1"))
    ]
    if user is None:
        assert not seen, f"{where}: identity headers the sidecar did not set: {seen}"
        return
    keys = [identity_key(n) for n, _ in seen]
    assert len(keys) == len(set(keys)), f"{where}: an identity header twice: {seen}"
    assert all(n.startswith("X-Forwarded-") for n, _ in seen), f"{where}: a foreign spelling: {seen}"
    assert request.values("X-Forwarded-User") == [user], f"{where}: X-Forwarded-User {seen}"
    emails = request.values("X-Forwarded-Email")
    assert emails in ([], [f"{user}@example.com"]), f"{where}: X-Forwarded-Email {emails}"


def check_forwarded(request: Request, legit: Legit) -> None:
    where = f"console request {request.method} {request.target[:80]}"
    assert (request.method, request.target) == (legit.method, legit.target), where
    assert request.body == legit.body, (
        f"{where}: the body changed: {len(request.body)} bytes {request.body[:60]!r}..., "
        f"the client sent {len(legit.body)} bytes {legit.body[:60]!r}..."
    )
    assert request.values("Content-Encoding") == ([legit.content_encoding] if legit.content_encoding else []), where
    if legit.keep_length:
        assert request.values("Content-Length") == [str(len(legit.body))], f"{where}: the Content-Length was dropped"


def check_console(
    console: RawConsole,
    mark: Any,
    *,
    host: str | None,
    user: str | None,
    legit: Sequence[Legit] | None = None,
    refused: bool = False,
    sentinel: str = "sentinel",
) -> list[Request]:
    """The whole oracle for one exchange: every request the console parsed since ``mark`` is clean
    (``check_request``); with ``refused`` it saw none, with ``legit`` exactly those (None: not compared).

    The test's own closing request (target containing ``sentinel``) is checked, not counted; another test's
    sentinel that arrived late is left out.
    """
    assert not console.errors_since(mark), f"the console could not parse what it got: {console.errors_since(mark)}"
    seen = [r for r in console.requests_since(mark) if sentinel in r.target or "sentinel-" not in r.target]
    for request in seen:
        check_request(request, host=host, user=user)
    counted = [r for r in seen if sentinel not in r.target]
    if refused:
        assert not counted, f"refused, yet the console saw {[(r.method, r.target) for r in counted]}"
    elif legit is not None:
        assert [(r.method, r.target) for r in counted] == [(x.method, x.target) for x in legit]
        for request, expected in zip(counted, legit, strict=True):
            check_forwarded(request, expected)
    for conn in console.active_since(mark):
        if not conn.closed.is_set():
            assert not conn.pending.strip(b"\r\n"), f"conn {conn.id} holds a partial request: {conn.pending[:80]!r}"
    return counted


def identity_of(response: RawResponse) -> str | None:
    """The X-Forwarded-User the console echoed (None when it got none), checking it got at most one."""
    values = [v for n, v in response.json()["headers"] if identity_key(n) == "x-forwarded-user"]
    assert len(values) <= 1, values
    return values[0] if values else None


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_log_lines(text: str, marker: str) -> list[str]:
    """Every log line that mentions ``marker`` ("": every line) is a whole line of its own: it starts with
    a timestamp and holds no control character (a forged line would start with the attacker's text)."""
    lines = [line for line in text.split("\n") if marker in line and line]
    assert lines, f"{marker!r} is not in the log"
    for line in lines:
        assert _TIMESTAMP.match(line), f"a log line that the sidecar did not start: {line[:200]!r}"
        assert not _CONTROL.search(line), f"a control character in a log line: {line[:200]!r}"
    return lines


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
