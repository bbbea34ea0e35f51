"""Reading what a sidecar tells its console (``assertion``, ``roles``, ``pass_tokens``), as a console would:
the headers the echo console saw, the sidecar's published JWKS, and the assertion verified with joserfc against it
(never with the sidecar's own code)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet
from multidict import CIMultiDict

from support.procs import LOOPBACK

API = {"Accept": "application/json"}


async def fetch_json(url: str) -> tuple[int, Mapping[str, str], Any]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=API) as resp:
        body = await resp.read()
        return resp.status, CIMultiDict(resp.headers), json.loads(body) if body else None


async def jwks(sidecar_url: str) -> dict[str, Any]:
    status, _, body = await fetch_json(sidecar_url + "/oauth2/jwks.json")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def seen_by_console(client: Any, url: str, *headers: tuple[str, str]) -> tuple[int, dict[str, Any]]:
    """The status and, for a 200, the echo console's ``/api/whoami`` answer (its ``header_list`` keeps duplicates)."""
    async with client.get(url, headers=[*API.items(), *headers]) as resp:
        body = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, body


def headers_named(seen: Mapping[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` the console received (case-insensitive)."""
    return [v for k, v in seen["header_list"] if k.lower() == name.lower()]


def verify(token: str, key_set: Mapping[str, Any], algorithms: Sequence[str] = ("ES256",)) -> jwt.Token:
    """Signature only, at the published keys (``kid`` picks the key), with the named algorithms."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc flags "EdDSA" as superseded by RFC 9864
        return jwt.decode(token, KeySet.import_key_set(dict(key_set)), algorithms=list(algorithms))


def check_claims(claims: Mapping[str, Any], *, issuer: str, audience: str, now: int | None = None) -> None:
    """The registered claims as a console checks them (``ExpiredTokenError`` & co. when they do not hold)."""
    rules = jwt.JWTClaimsRegistry(
        now=now,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
    )
    rules.validate(dict(claims))


def loopback(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"
