"""Real logins through the dev IdP, in parallel, for any relying party (the sidecar or Apache).

A login is split in two so the relying party's share of the work can be timed on its own:

1. ``walk_to_callback``: from a protected URL through the provider's sign-in and consent forms, until
   the provider redirects the browser to the relying party's redirect URI. The relying party only
   stores a pending login here; the provider does the work.
2. ``finish``: GET that redirect URI. The relying party redeems the code at the token endpoint,
   validates the ID token (and fetches userinfo), writes the session and sets its cookie.

Authorization codes of the dev IdP live 60 s, so logins run in chunks: walk a chunk, then finish it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import _paths  # noqa: F401  (tests/ on sys.path)
import aiohttp
from yarl import URL

from support.idp import parse_forms

MAX_HOPS = 25
REDIRECTS = (301, 302, 303, 307, 308)


class LoginFailed(RuntimeError):
    pass


def new_http(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    """A browser: its own cookie jar (IP hosts allowed), the shared connection pool."""
    return aiohttp.ClientSession(
        connector=connector,
        connector_owner=False,
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def walk_to_callback(http: aiohttp.ClientSession, start: URL, callback: URL, username: str) -> URL:
    """Follow redirects and fill the dev IdP's forms until the next hop is ``callback``; return that URL
    (with ``code`` and ``state``) without requesting it."""
    method, url, data = "GET", start, None
    trail: list[str] = []
    for _ in range(MAX_HOPS):
        trail.append(f"{method} {url}")
        async with http.request(method, url, data=data, allow_redirects=False) as resp:
            body = await resp.read()
            if resp.status in REDIRECTS:
                url = url.join(URL(resp.headers["Location"]))
                method, data = "GET", None
                if url.origin() == callback.origin() and url.path == callback.path:
                    return url
                continue
            if resp.status != 200 or "html" not in resp.headers.get("Content-Type", ""):
                raise LoginFailed(f"{resp.status} at {url}: {body[:2000]!r}\n" + "\n".join(trail))
        form = _next_form(body.decode("utf-8", "replace"), username)
        if form is None:
            raise LoginFailed(f"no form to fill at {url}: {body[:2000]!r}\n" + "\n".join(trail))
        action, fields = form
        method, url, data = "POST", url.join(URL(action)), fields
    raise LoginFailed("too many hops\n" + "\n".join(trail))


def _next_form(html: str, username: str) -> tuple[str, dict[str, str]] | None:
    for form in parse_forms(html):
        fields = dict(form.fields)
        if fields.get("prompt") == "login" and "login" in fields:
            fields.update(login=username, password="secret")
            return form.action, fields
        if fields.get("prompt") == "consent":
            return form.action, fields
    return None


async def finish(http: aiohttp.ClientSession, callback_url: URL, cookie_name: str) -> str:
    """Request the redirect URI; return the ``Cookie`` header value of the new session."""
    async with http.get(callback_url, allow_redirects=False) as resp:
        body = await resp.read()
        if resp.status not in REDIRECTS:
            # The error page's title and message say which check refused the sign-in (no token or secret in them).
            page = body.decode(errors="replace")
            found = re.search(r"<h1>(.*?)</h1><p[^>]*>(.*?)</p>", page)
            why = " ".join(html.unescape(x) for x in found.groups()) if found else page[:200]
            raise LoginFailed(f"callback answered {resp.status}: {why}")
    for morsel in http.cookie_jar:
        if morsel.key == cookie_name and morsel.value:
            return f"{cookie_name}={morsel.value}"
    raise LoginFailed(f"no {cookie_name} cookie after the callback")


@dataclass
class LoginBatch:
    """What ``login_many`` did: the session cookies, and time and CPU spent in each phase."""

    cookies: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    walk_seconds: float = 0.0
    finish_seconds: float = 0.0
    # The relying party's CPU while only callbacks ran. Read in clock ticks (10 ms): a smoke run's few
    # callbacks may well read 0, which is a measurement, not a missing one.
    finish_cpu_seconds: float = 0.0

    @property
    def cpu_ms_per_login(self) -> float | None:
        return 1000 * self.finish_cpu_seconds / len(self.cookies) if self.cookies else None

    def summary(self) -> dict[str, Any]:
        n = len(self.cookies)
        total = self.walk_seconds + self.finish_seconds
        return {
            "sessions": n,
            "failures": len(self.failures),
            "first_failure": self.failures[0] if self.failures else None,
            "seconds": round(total, 2),
            "logins_per_second": round(n / total, 1) if total else None,
            "callback_seconds": round(self.finish_seconds, 2),
            "rp_cpu_ms_per_callback": None if (cpu := self.cpu_ms_per_login) is None else round(cpu, 3),
        }


async def login_many(
    base: str,
    usernames: Sequence[str],
    *,
    cookie_name: str,
    callback_path: str = "/oauth2/callback",
    start_path: str = "/",
    concurrency: int = 24,
    chunk: int = 100,
    cpu_seconds: Callable[[], float] | None = None,
) -> LoginBatch:
    """Sign each of ``usernames`` in at the relying party at ``base``, ``concurrency`` at a time.

    ``cpu_seconds`` reads the relying party's CPU time; it is sampled around the callback phase of each
    chunk only, so the provider's work and our own walking are not counted. ``chunk`` stays small because
    the dev IdP keeps everything in an LRU of 1000 entries (oidc-provider's development adapter): the codes
    of a chunk must still be there when its callbacks run.
    """
    batch = LoginBatch()
    start, callback = URL(base + start_path), URL(base + callback_path)
    connector = aiohttp.TCPConnector(limit=concurrency * 2, force_close=False)
    gate = asyncio.Semaphore(concurrency)
    try:
        for offset in range(0, len(usernames), chunk):
            names = usernames[offset : offset + chunk]
            browsers = [new_http(connector) for _ in names]

            async def walk(http: aiohttp.ClientSession, name: str) -> URL | None:
                async with gate:
                    try:
                        return await walk_to_callback(http, start, callback, name)
                    except (TimeoutError, LoginFailed, aiohttp.ClientError, KeyError) as exc:
                        batch.failures.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
                        return None

            t0 = time.perf_counter()
            urls = await asyncio.gather(*(walk(h, n) for h, n in zip(browsers, names, strict=True)))
            t1 = time.perf_counter()

            async def done(http: aiohttp.ClientSession, url: URL | None, name: str) -> str | None:
                if url is None:
                    return None
                async with gate:
                    try:
                        return await finish(http, url, cookie_name)
                    except (TimeoutError, LoginFailed, aiohttp.ClientError) as exc:
                        batch.failures.append(f"{name}: callback: {exc}"[:500])
                        return None

            cpu0 = cpu_seconds() if cpu_seconds else 0.0
            t2 = time.perf_counter()
            cookies = await asyncio.gather(*(done(h, u, n) for h, u, n in zip(browsers, urls, names, strict=True)))
            t3 = time.perf_counter()
            cpu1 = cpu_seconds() if cpu_seconds else 0.0
            batch.walk_seconds += t1 - t0
            batch.finish_seconds += t3 - t2
            batch.finish_cpu_seconds += cpu1 - cpu0
            batch.cookies.extend(c for c in cookies if c)
            for http in browsers:
                await http.close()
    finally:
        await connector.close()
    return batch


async def login_repeatedly(base: str, usernames: Sequence[str], per_user: int, cookie_name: str) -> LoginBatch:
    """``per_user`` logins for each of ``usernames`` (one browser each, all in parallel): the first through
    the provider's forms, the later ones on the provider's single sign-on session (one redirect there and
    back), dropping the relying party's cookie in between so that every login makes a new session and the
    earlier ones stay live. Many sessions quickly: the provider does a fraction of a full login's work."""
    batch = LoginBatch()
    start, callback = URL(base + "/"), URL(base + "/oauth2/callback")

    async def user(name: str) -> None:
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            for _ in range(per_user):
                http.cookie_jar.clear(lambda m: m.key.startswith(cookie_name))
                try:
                    url = await walk_to_callback(http, start, callback, name)
                    batch.cookies.append(await finish(http, url, cookie_name))
                except (TimeoutError, LoginFailed, aiohttp.ClientError, KeyError) as exc:
                    batch.failures.append(f"{name}: {type(exc).__name__}: {exc}"[:500])

    t0 = time.perf_counter()
    await asyncio.gather(*(user(n) for n in usernames))
    batch.walk_seconds = time.perf_counter() - t0
    return batch


async def login_one(base: str, username: str, cookie_name: str) -> tuple[str, aiohttp.ClientSession]:
    """One login; returns the session cookie and the browser, which still holds the provider's session
    cookies (to sign out at the provider later). The caller closes the browser."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=60))
    try:
        url = await walk_to_callback(http, URL(base + "/"), URL(base + "/oauth2/callback"), username)
        return await finish(http, url, cookie_name), http
    except BaseException:
        await http.close()
        raise


# --------------------------------------------------------------------------------------------------
# The provider's own answer, for the raw size of what a session holds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def direct_tokens(issuer: str, username: str) -> dict[str, Any]:
    """A code flow of our own against the dev IdP (a client registered just for this): the token
    response and the userinfo claims the provider gives ``username``. Nothing here touches a relying
    party; it tells how large the tokens and claims of a session are before anyone stores them."""
    redirect_uri = "http://127.0.0.1:9/bench-callback"  # never requested: the code is read off the redirect
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{issuer}/.well-known/openid-configuration") as resp:
            meta = await resp.json()
        registration = {
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        async with http.post(meta["registration_endpoint"], json=registration) as resp:
            client = await resp.json()
        verifier = secrets.token_urlsafe(48)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        authorize = URL(meta["authorization_endpoint"]).with_query(
            response_type="code",
            client_id=client["client_id"],
            redirect_uri=redirect_uri,
            scope="openid profile email",
            state=secrets.token_urlsafe(16),
            nonce=secrets.token_urlsafe(16),
            code_challenge=challenge,
            code_challenge_method="S256",
        )
        back = await walk_to_callback(http, authorize, URL(redirect_uri), username)
        basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
        form = {"grant_type": "authorization_code", "code": back.query["code"], "redirect_uri": redirect_uri}
        form["code_verifier"] = verifier
        async with http.post(meta["token_endpoint"], data=form, headers={"Authorization": f"Basic {basic}"}) as resp:
            tokens = await resp.json()
        async with http.get(
            meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"}
        ) as resp:
            userinfo = await resp.json()
    id_payload = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))
    return {"tokens": tokens, "userinfo": userinfo, "id_token_claims": id_payload}
