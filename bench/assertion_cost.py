"""What ``assertion:`` and ``roles:`` cost a proxied request, in microseconds, on this machine.

    .venv/bin/python bench/assertion_cost.py [--repeat 200000]

Measures, in one process with ``timeit``:

- the identity headers of a cached session's claims, as every request computes them today (``IdentityHeaders``);
- the per-request path with ``assertion: {}`` and ``roles`` on: the remembered headers of the session
  (``ConsoleIdentity.cached``, including the ``time.time()`` it needs), what a request pays between two
  signatures;
- one signature per algorithm (ES256, EdDSA, RS256, HS256), what a session pays once per lifetime window
  (every ``lifetime - min(60 s, lifetime / 4)``: four minutes with the default five-minute lifetime).

It is not the end-to-end benchmark (``make bench-compare`` with ``--identity``, bench/README.md): no network, no
server, only the sidecar's own work per request.
"""

from __future__ import annotations

import argparse
import time
import timeit

import _paths  # noqa: F401  (puts the repository on sys.path)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from proxy.auth.console import ConsoleIdentity
from proxy.auth.identity import IdentityHeaders
from proxy.config.model import (
    AssertionSettings,
    RoleRule,
    RolesSettings,
    Secret,
    SessionSettings,
    Settings,
    SSOSettings,
    UpstreamSettings,
)
from proxy.sessions.model import CompactClaims

CLAIMS = CompactClaims.of(
    {
        "sub": "8d9f4c1e-2b7a-4f0e-9c3d-5a6b7c8d9e0f",
        "preferred_username": "alice.smith",
        "email": "alice.smith@example.com",
        "email_verified": True,
        "given_name": "Alice",
        "family_name": "Smith",
        "name": "Alice Smith",
        "groups": ["users", "admins"],
        "iss": "https://idp.example.com/realms/main",
        "aud": "console",
        "exp": 1_900_000_000,
        "iat": 1_800_000_000,
    }
)


def settings(assertion: AssertionSettings | None) -> Settings:
    return Settings(
        public_url=URL("https://console.example.com/"),
        upstream=UpstreamSettings(URL("http://127.0.0.1:8888")),
        sso=SSOSettings(),
        session=SessionSettings(cookie_secrets=(Secret("q3V9xKp7LmZ2wR8tY4nB6cJ1hF5gD0sA-uE_oIiT"),)),
        assertion=assertion,
        roles=RolesSettings(rules=(RoleRule("admin", groups=("admins",)),), default=("viewer",)),
    )


def per_call(statement: object, repeat: int) -> float:
    return min(timeit.repeat(statement, number=repeat, repeat=5)) / repeat * 1e6  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200_000)
    args = parser.parse_args()
    on = settings(AssertionSettings(audience="http://127.0.0.1:8888"))
    identity = IdentityHeaders(on.headers, on.header_list_separator)
    console = ConsoleIdentity(on, identity)
    now = time.time()
    console.for_session("session-id", 1.0, CLAIMS, not_after=now + 3600, tokens=None, now=now)
    assert console.cached("session-id", 1.0, time.time()) is not None
    rows = [
        (
            "identity headers of a cached session (today, feature off)",
            per_call(lambda: identity.values(CLAIMS), args.repeat),
        ),
        (
            "assertion + roles on: remembered headers, with time.time()",
            per_call(lambda: console.cached("session-id", 1.0, time.time()), args.repeat),
        ),
    ]
    rsa_pem = (
        rsa.generate_private_key(65537, 2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    for algorithm, extra in (
        ("ES256", {}),
        ("EdDSA", {}),
        ("RS256", {"keys": (Secret(rsa_pem),)}),
        ("HS256", {"secret": Secret("Zp4Wq9Lx2Nc7Vb3Mk8Hj5Gf1Dd6Ss0Aa-Tt_Yy")}),
    ):
        signer = ConsoleIdentity(settings(AssertionSettings(algorithm=algorithm, **extra)), identity)  # type: ignore[arg-type]

        def sign(signer: ConsoleIdentity = signer) -> None:
            signer.for_session("s", 1.0, CLAIMS, not_after=now + 3600, tokens=None, now=time.time())

        rows.append(
            (f"one {algorithm} signature (once per session and window)", per_call(sign, max(200, args.repeat // 1000)))
        )
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  µs per call")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:10.2f}")


if __name__ == "__main__":
    main()
