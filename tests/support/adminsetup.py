"""Two sidecar replicas with the settings page on, behind one public URL, for the settings-page tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from support.idp import DevIdP, RegisteredClient
from support.procs import LOOPBACK, free_port
from support.redis_server import RedisServer
from support.sidecar import Sidecar

ADMIN = "admin.ada"  # in group "admins" at the dev IdP: an admin under admin.groups
NOT_ADMIN = "nomap.user"  # sent without given_name and family_name (see ACCOUNTS), and no admin
ACCOUNTS = {NOT_ADMIN: {"given_name": None, "family_name": None}}


@dataclass
class Replicas:
    a: Sidecar  # public_url is a's address: browsers use a
    b: Sidecar
    client: RegisteredClient  # registered at the IdP for a's public_url, not yet known to the sidecars
    break_glass: str
    redis: RedisServer


def start_replicas(
    sidecar_factory: Any, idp: DevIdP, redis: RedisServer, *, extra: dict[str, Any] | None = None
) -> Replicas:
    """Two replicas, SSO off in the file, page settings in Redis, admins: the IdP's group "admins"."""
    port_a = free_port()
    public = f"http://{LOOPBACK}:{port_a}"
    client = idp.register_client(public)
    token = secrets.token_urlsafe(32)
    config: dict[str, Any] = {
        "public_url": public,
        "sso": {"enabled": False},
        "session": {"store": "redis", "redis_url": redis.url, "cookie_secret": secrets.token_urlsafe(32)},
        "break_glass": {"token": token},
        "admin": {"enabled": True, "groups": ["admins"]},
        **(extra or {}),
    }
    a = sidecar_factory({**config, "listen": f"{LOOPBACK}:{port_a}"}, register=False, idp=idp, name="replica-a")
    b = sidecar_factory(config, register=False, idp=idp, name="replica-b")
    return Replicas(a, b, client, token, redis)
