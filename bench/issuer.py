"""The benchmark's own token issuer, for the API-client workload (``sidecar-bearer``).

API clients call the console with ``Authorization: Bearer <JWT>``, and the sidecar accepts only JWTs it
can verify. The dev IdP's access tokens are opaque, so this process plays the issuer of such clients, as
one of the sidecar's ``sso.extra_issuers``: a discovery document and a JWKS with one RS256 key (the
default of Keycloak, Entra ID, Okta and Auth0), and ``--tokens`` distinct RFC 9068 access tokens for
``--audience``, each for its own ``sub``, valid for ``--lifetime`` seconds (far past any run).

    python bench/issuer.py --tokens 500 --audience AUDIENCE --out TOKENS_FILE [--lifetime 43200]

It listens on a free loopback port (its issuer URL contains the port, and every token names it in
``iss``), writes one ``Bearer <JWT>`` line per token to TOKENS_FILE (the Authorization header value
``bench/rotate.lua`` rotates over), then prints ``READY <issuer>``; SIGTERM stops it. It has to keep
running: every sidecar worker fetches discovery and the JWKS when it first meets one of the tokens.

Why not ``tests/support/badop.py``, which signs real tokens too: badop's job is to misbehave for the
negative tests, and its defaults (ID-token shape, ``typ: JWT``, a key set of five algorithms made three
times over) move with them. The benchmark must measure one fixed, well-formed token shape whatever the
tests need next, so it mints its own; it shares only joserfc, the library the sidecar verifies with.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

ALG = "RS256"
SCOPE = "console.read console.write"
CLIENT_ID = "bench-api-client"


def access_token_claims(issuer: str, audience: str, index: int, now: int, lifetime: int) -> dict[str, Any]:
    """RFC 9068 2.2: iss, exp, aud, sub, client_id, iat, jti, plus scope; and the identity claims an
    enterprise provider puts in its access tokens (Keycloak, Okta), so the identity headers are sent as
    for a browser's session."""
    user = f"bench.api{index:05d}"
    return {
        "iss": issuer,
        "sub": f"api-{index:05d}",
        "aud": audience,
        "client_id": CLIENT_ID,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(12),
        "scope": SCOPE,
        "preferred_username": user,
        "email": f"{user}@example.com",
        "name": f"Bench API {index:05d}",
        "groups": ["users"],
    }


def mint(key: RSAKey, issuer: str, audience: str, count: int, lifetime: int) -> list[str]:
    """``count`` access tokens, ``typ: at+jwt`` (RFC 9068 2.1), signed with ``key``."""
    header = {"alg": ALG, "typ": "at+jwt", "kid": key.kid}
    now = int(time.time())
    return [
        jwt.encode(header, access_token_claims(issuer, audience, i, now, lifetime), key, algorithms=[ALG])
        for i in range(count)
    ]


def app(issuer: str, key: RSAKey) -> web.Application:
    discovery = {
        "issuer": issuer,
        "jwks_uri": issuer + "/jwks",
        # Never called: the sidecar signs no one in through an extra issuer, but its discovery parser
        # requires both endpoints of every issuer.
        "authorization_endpoint": issuer + "/authorize",
        "token_endpoint": issuer + "/token",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
    }
    jwks = {"keys": [key.as_dict(private=False)]}

    async def h_discovery(_request: web.Request) -> web.Response:
        return web.json_response(discovery)

    async def h_jwks(_request: web.Request) -> web.Response:
        return web.json_response(jwks)

    application = web.Application()
    application.router.add_get("/.well-known/openid-configuration", h_discovery)
    application.router.add_get("/jwks", h_jwks)
    return application


async def serve(args: argparse.Namespace) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "bench-1", "use": "sig"})
    # Bound first: the issuer URL, and with it every token's iss, carries the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((args.host, 0))
    host, port = sock.getsockname()[:2]
    issuer = f"http://{host}:{port}"
    runner = web.AppRunner(app(issuer, key), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    tokens = mint(key, issuer, args.audience, args.tokens, args.lifetime)
    args.out.write_text("".join(f"Bearer {t}\n" for t in tokens))
    print(f"READY {issuer}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, required=True, help="how many distinct access tokens")
    p.add_argument("--audience", required=True, help="their aud (one of the extra issuer's audiences)")
    p.add_argument("--out", type=Path, required=True, help="where to write them, one 'Bearer <JWT>' a line")
    p.add_argument("--lifetime", type=int, default=12 * 3600, help="seconds from now to exp (12 h)")
    p.add_argument("--host", default="127.0.0.1")
    asyncio.run(serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
