"""The dev identity provider (``deploy/dev-idp/server.mjs``, node ``oidc-provider``) and a scripted user.

``login`` plays a browser without JavaScript: it follows redirects by hand from a protected sidecar URL,
fills the provider's sign-in and consent forms, and comes back through the sidecar's callback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from yarl import URL

from support import REPO
from support.procs import Process

IDP_DIR = REPO / "deploy" / "dev-idp"
SERVER = IDP_DIR / "server.mjs"
READY_LINE = r"dev-idp listening on (\S+)"

# The sidecar's fixed paths (proxy/config/model.py); repeated here so the test helpers do not
# import the code under test.
CALLBACK_PATH = "/oauth2/callback"
SIGNED_OUT_PATH = "/oauth2/signed_out"
BACKCHANNEL_LOGOUT_PATH = "/oauth2/backchannel-logout"

DEFAULT_TTL = {
    "AccessToken": 600,
    "IdToken": 600,
    "RefreshToken": 3600,
    "Session": 3600,
    "Grant": 3600,
    "Interaction": 600,
}
MAX_HOPS = 25


def node_binary() -> str:
    path = shutil.which("node")
    if path is None:
        raise RuntimeError("node (>= 20) is not installed; the dev identity provider needs it")
    return path


def ensure_node_modules() -> None:
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=IDP_DIR, check=True, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)


class DevIdP:
    """A running ``server.mjs``: ``issuer``, ``discovery()``, ``register_client()``, ``stop()``."""

    def __init__(self, config: Mapping[str, Any], work_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.config_path = self.dir / "dev-idp.json"
        self.config_path.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        self.proc: Process | None = None
        self.issuer = ""

    def start(self, timeout: float = 30.0) -> DevIdP:
        ensure_node_modules()
        self.proc = Process(
            "dev-idp", [node_binary(), str(SERVER), str(self.config_path)], cwd=IDP_DIR, log_dir=self.dir
        ).start()
        self.issuer = self.proc.wait_for_line(READY_LINE, timeout).group(1)
        return self

    @property
    def url(self) -> URL:
        return URL(self.issuer)

    @property
    def port(self) -> int:
        port = self.url.port
        assert port is not None
        return port

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)

    def logs(self) -> str:
        return self.proc.logs() if self.proc is not None else ""

    def discovery(self) -> dict[str, Any]:
        return _get_json(f"{self.issuer}/.well-known/openid-configuration")

    def register_client(
        self,
        redirect_base: str,
        *,
        backchannel: bool = True,
        backchannel_session_required: bool = True,
        token_endpoint_auth_method: str = "client_secret_basic",
        **metadata: Any,
    ) -> RegisteredClient:
        """Dynamic registration (RFC 7591) of a client for a sidecar whose ``public_url`` is
        ``redirect_base``: its callback, signed-out page and (optionally) back-channel logout URI."""
        base = redirect_base.rstrip("/")
        body: dict[str, Any] = {
            "redirect_uris": [base + CALLBACK_PATH],
            "post_logout_redirect_uris": [base + SIGNED_OUT_PATH],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": token_endpoint_auth_method,
        }
        if backchannel:
            body["backchannel_logout_uri"] = base + BACKCHANNEL_LOGOUT_PATH
            body["backchannel_logout_session_required"] = backchannel_session_required
        body.update(metadata)
        endpoint = self.discovery().get("registration_endpoint")
        if not endpoint:
            raise RuntimeError("this dev IdP was started without allow_registration")
        registered = _post_json(endpoint, body, self.config.get("registration_initial_access_token"))
        return RegisteredClient(
            client_id=registered["client_id"],
            client_secret=registered.get("client_secret", ""),
            redirect_uris=tuple(registered["redirect_uris"]),
            metadata=registered,
        )


def idp_config(
    *,
    port: int = 0,
    clients: Sequence[Mapping[str, Any]] = (),
    ttl: Mapping[str, int] | None = None,
    allow_registration: bool = True,
    allow_loopback_backchannel: bool = True,
    refresh_tokens: bool = True,
    accounts: Mapping[str, Mapping[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON ``server.mjs`` reads; port 0 lets it pick (the issuer is then read from its ready line)."""
    return {
        "port": port,
        "clients": [dict(c) for c in clients],
        "ttl": {**DEFAULT_TTL, **(ttl or {})},
        "allow_registration": allow_registration,
        "allow_loopback_backchannel": allow_loopback_backchannel,
        "refresh_tokens": refresh_tokens,
        "accounts": {k: dict(v) for k, v in (accounts or {}).items()},
        **extra,
    }


def start_idp(work_dir: str | os.PathLike[str], **config: Any) -> DevIdP:
    return DevIdP(idp_config(**config), work_dir).start()


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.load(resp))


def _post_json(url: str, body: Mapping[str, Any], bearer: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"  # an initial access token (RFC 7591 3)
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return dict(json.load(resp))


# --------------------------------------------------------------------------------------------------
# A scripted user


class _Requester(Protocol):
    def request(self, method: str, url: Any, **kwargs: Any) -> Any: ...


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str]
    id: str = ""
    buttons: list[tuple[str, str]] = field(default_factory=list)  # (name, value) of submit buttons


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._by_id: dict[str, Form] = {}
        self._open: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            form = Form(a.get("action", ""), a.get("method", "get").upper(), {}, a.get("id", ""))
            self.forms.append(form)
            self._open = form
            if form.id:
                self._by_id[form.id] = form
            return
        owner = self._by_id.get(a["form"]) if "form" in a else self._open
        if owner is None or tag not in ("input", "button"):
            return
        kind = a.get("type", "submit" if tag == "button" else "text").lower()
        if kind == "submit":
            if "name" in a:
                owner.buttons.append((a["name"], a.get("value", "")))
        elif "name" in a:
            owner.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class LoginError(AssertionError):
    """The scripted login went somewhere unexpected; carries the trail of URLs visited."""


async def login(
    session: aiohttp.ClientSession | _Requester,
    start_url: str,
    username: str,
    *,
    password: str = "secret",
    max_hops: int = MAX_HOPS,
    stop_at: str | None = None,
    otp: str = "",
) -> aiohttp.ClientResponse:
    """From a protected sidecar URL to the page behind it, signing in at the dev IdP as ``username``.

    ``stop_at``: return the first redirect whose Location starts with it, unfollowed (e.g. the sidecar's
    callback, to tamper with the authorization response). ``otp``: what to type as the one-time code when
    the sign-in form has one (a dev IdP with ``acr``): a sign-in with the stronger acr.

    Follows every redirect by hand; on the provider's sign-in form posts ``login``/``password``, on its
    consent form posts ``prompt=consent``; a ``form_post`` response page is submitted as a browser would.
    Returns the first response that is neither a redirect nor one of those forms (its body is read, so
    ``await resp.text()`` still works). When the provider already has a session, no form appears.
    The session's cookie jar must accept IP hosts: ``aiohttp.CookieJar(unsafe=True)``.
    """
    return await _walk(
        session, "GET", start_url, None, username, password, max_hops, logout=False, stop_at=stop_at, otp=otp
    )


async def logout(
    session: aiohttp.ClientSession | _Requester, start_url: str, *, max_hops: int = MAX_HOPS
) -> aiohttp.ClientResponse:
    """From the sidecar's ``/oauth2/sign_out`` (or the provider's end-session URL) to the last page,
    confirming each "sign out?" form on the way (the sidecar's own, if any, and the provider's)."""
    return await _walk(session, "GET", start_url, None, "", "", max_hops, logout=True)


async def _walk(
    session: aiohttp.ClientSession | _Requester,
    method: str,
    url: str,
    data: dict[str, str] | None,
    username: str,
    password: str,
    max_hops: int,
    *,
    logout: bool,
    stop_at: str | None = None,
    otp: str = "",
) -> aiohttp.ClientResponse:
    trail: list[str] = []
    submitted: set[str] = set()
    current = URL(url)
    for _ in range(max_hops):
        trail.append(f"{method} {current}")
        resp: aiohttp.ClientResponse = await session.request(method, current, data=data, allow_redirects=False)
        body = await resp.read()
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.headers.get("Location")
            if not location:
                raise LoginError(f"redirect without Location at {current}; trail:\n" + "\n".join(trail))
            if stop_at is not None and str(current.join(URL(location))).startswith(stop_at):
                return resp
            current = current.join(URL(location))
            if resp.status in (301, 302, 303):
                method, data = "GET", None
            continue
        if resp.status != 200 or "html" not in resp.headers.get("Content-Type", ""):
            return resp
        step = _next_form(body.decode("utf-8", "replace"), username, password, logout, submitted, otp)
        if step is None:
            return resp
        form, fields = step
        submitted.add(form.action + "|" + fields.get("prompt", ""))
        current = current.join(URL(form.action)) if form.action else current
        method = form.method if form.method in ("GET", "POST") else "GET"
        data = fields
        if method == "GET":
            current = current.with_query(fields)
            data = None
    raise LoginError(f"no final page after {max_hops} hops; trail:\n" + "\n".join(trail))


def _next_form(
    html: str, username: str, password: str, logout: bool, submitted: set[str], otp: str = ""
) -> tuple[Form, dict[str, str]] | None:
    for form in parse_forms(html):
        fields = dict(form.fields)
        if not logout and fields.get("prompt") == "login" and "login" in fields:
            fields.update(login=username, password=password)
            if "otp" in fields:
                fields["otp"] = otp
            return form, fields
        if not logout and fields.get("prompt") == "consent":
            return form, fields
        if "code" in fields and "state" in fields:  # response_mode=form_post
            return form, fields
        if not logout and fields.get("logout") == "yes" and URL(form.action).path.endswith("/session/end/confirm"):
            # prompt=login as another user: the provider's page ends its session first, submitting itself
            # by script as a browser would.
            return form, fields
        if logout and form.method == "POST":
            action = URL(form.action).path
            if action.endswith("/session/end/confirm") or "xsrf" in fields:
                fields.setdefault("logout", "yes")
                return form, fields
            if "sign_out" in action and form.action + "|" not in submitted:
                fields.update(dict(form.buttons[:1]))
                return form, fields
    return None
