"""badop: a small OpenID Provider that signs real tokens and misbehaves on request.

One server answers every negative test: each test flips *behaviour knobs* and reads *counters*.

In-process (in the tests' event loop)::

    op = BadOP()
    await op.start()                      # 127.0.0.1, a free port
    op.set(alg="ES256", id_token_claims_override={"nonce": "wrong"})
    ... op.requests["jwks"], op.token_auth_methods_seen, op.userinfo_token_locations ...
    op.reset()                            # knobs and counters back to defaults
    await op.stop()

As a process (for end-to-end tests with a real sidecar)::

    python tests/support/badop.py --port 0 [--host 127.0.0.1] [--issuer-path /realms/test]
                                  [--client-id sidecar] [--client-secret SECRET]

prints ``READY <issuer>`` on stdout once it listens, and stops on SIGTERM/SIGINT. Control it over HTTP:

    POST /_control                 JSON object of knobs (see ``Behaviour``) -> {"ok": true}; unknown knob -> 400
    POST /_control/reset           knobs and counters back to defaults
    GET  /_control/state           counters, recorded requests and the current knobs
    POST /_control/logout_token    {"claims": {...}, "alg": ..., "sign_with": ..., "typ": ...} -> {"logout_token": ...}
    POST /_control/send_logout     {"uri": ..., same as above} -> POSTs a logout token there; {"status": N}

Provider endpoints live under the issuer: ``/.well-known/openid-configuration``, ``/jwks``, ``/authorize``,
``/token``, ``/userinfo``, ``/logout``. The authorize endpoint does not ask anyone anything: it redirects
straight back to ``redirect_uri`` with ``code``, ``state`` (and ``iss``), remembering the nonce and the
PKCE challenge for the token request.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory comes first on sys.path and its http.py would shadow the standard
# library's http module, which aiohttp imports.
if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import secrets
import signal
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, KeyParameters, OKPKey, RSAKey
from yarl import URL

DEFAULT_CLIENT_ID = "sidecar"
# ':' '+' '/' ' ' and a non-ASCII letter: client_secret_basic only works if both sides form-encode.
DEFAULT_CLIENT_SECRET = "s3cret:with+odd/chars é"
ALL_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# alg -> key family
_FAMILY = {
    **{a: "RSA" for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": "P-256",
    "ES384": "P-384",
    "ES512": "P-521",
    "EdDSA": "Ed25519",
}


@dataclass
class Behaviour:
    """Every knob, with the well-behaved default. In dict knobs a ``None`` value removes the member."""

    # discovery
    issuer_in_discovery: str | None = None  # None: the real issuer
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    discovery_status: int = 200
    token_auth_methods_supported: list[str] | None = field(
        default_factory=lambda: ["client_secret_basic", "client_secret_post"]
    )  # None: not advertised (the client must assume client_secret_basic)
    userinfo_enabled: bool = True  # False: no userinfo_endpoint in discovery
    # JWKS
    jwks_status: int = 200
    jwks_extra_keys: list[dict[str, Any]] = field(default_factory=list)
    jwks_include_unusable: bool = False  # add oct, use=enc, secp256k1, X25519, unknown kty, malformed keys
    publish_rotated: bool | None = None  # None: publish the rotated keys while sign_with == "rotated"
    # authorization response
    authorization_iss: str | bool = True  # True: the real issuer; False: omitted; a string: that value
    # ID token
    alg: str = "RS256"  # any of ALL_ALGS, "none", "HS256" (client secret), "HS256-public-key" (confusion)
    sign_with: str = "current"  # current | rotated (new kid) | rogue (unpublished key, current kid)
    include_kid: bool = True
    kid: str | None = None  # override the header kid
    typ: str | None = "JWT"  # the header typ; None omits it
    sub: str = "user-1"
    id_token_exp_in: float = 300.0  # exp = now + this
    id_token_iat_offset: float = 0.0  # iat = now + this
    include_at_hash: bool = True
    id_token_claims_override: dict[str, Any] = field(default_factory=dict)
    # token endpoint
    token_error: str | None = None  # answer every token request with this OAuth error
    token_response_override: dict[str, Any] = field(default_factory=dict)
    refresh_id_token: bool = True  # a refresh grant returns a new ID token
    jwt_access_tokens: bool = False  # True: access tokens are RFC 9068 JWTs signed like the ID token (else opaque)
    # userinfo
    userinfo_status: int = 200
    userinfo_format: str = "json"  # json | jwt | html
    userinfo_sub: str | None = None  # None: the ID token's sub
    userinfo_claims: dict[str, Any] = field(
        default_factory=lambda: {
            "email": "ada@example.com",
            "email_verified": True,
            "name": "Ada Lovelace",
            "preferred_username": "ada",
            "groups": ["admins", "staff"],
        }
    )


_KNOBS = {f.name for f in dataclasses.fields(Behaviour)}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _apply(target: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return target


def _half_hash(value: str, alg: str) -> str:
    if alg == "EdDSA":
        digest = hashlib.sha512(value.encode()).digest()
    elif alg[-3:] in ("256", "384", "512"):
        digest = hashlib.new("sha" + alg[-3:], value.encode()).digest()
    else:
        digest = hashlib.sha256(value.encode()).digest()
    return _b64(digest[: len(digest) // 2])


class BadOP:
    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        issuer_path: str = "",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.issuer_path = issuer_path.rstrip("/")
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.keys = {
            "current": self._keyset("1"),
            "rotated": self._keyset("2"),
            "rogue": self._keyset("rogue"),
        }
        self._unusable = self._unusable_keys()
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> BadOP:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    def url(self, path: str) -> str:
        return self.issuer + path

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.requests: Counter[str] = Counter()
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []  # form fields, client_secret removed
        self.token_auth_methods_seen: list[str] = []
        self.userinfo_token_locations: list[str] = []  # header | query | body | none
        self.userinfo_query_strings: list[str] = []
        self.end_session_requests: list[dict[str, str]] = []
        self._codes: dict[str, dict[str, str]] = {}
        self._access_tokens: dict[str, dict[str, str]] = {}
        self._refresh_tokens: dict[str, dict[str, str]] = {}
        # Every code and token handed out since the last reset, so a test can assert none of them leaks.
        self.issued: list[str] = []
        self.last_sid: str | None = None
        self.last_id_token: str | None = None  # what the sidecar holds for the last session (sign-out's hint)

    def set(self, **knobs: Any) -> None:
        unknown = set(knobs) - _KNOBS
        if unknown:
            raise TypeError(f"unknown badop knob(s): {', '.join(sorted(unknown))}")
        for name, value in knobs.items():
            setattr(self.behaviour, name, value)

    # -- keys and signing --------------------------------------------------------------------------

    @staticmethod
    def _keyset(suffix: str) -> dict[str, Any]:
        def sig(kid: str) -> KeyParameters:
            return {"use": "sig", "kid": f"{kid}-{suffix}"}

        return {
            "RSA": RSAKey.generate_key(2048, parameters=sig("rsa")),
            "P-256": ECKey.generate_key("P-256", parameters=sig("ec256")),
            "P-384": ECKey.generate_key("P-384", parameters=sig("ec384")),
            "P-521": ECKey.generate_key("P-521", parameters=sig("ec521")),
            "Ed25519": OKPKey.generate_key("Ed25519", parameters=sig("ed")),
        }

    def _unusable_keys(self) -> list[Any]:
        enc = dict(RSAKey.generate_key(2048).as_dict())
        ops = dict(RSAKey.generate_key(2048).as_dict())
        return [
            {"kty": "oct", "kid": "hmac-1", "k": _b64(secrets.token_bytes(32))},
            {**enc, "kid": "rsa-enc", "use": "enc"},
            {**ops, "kid": "rsa-encrypt-only", "key_ops": ["encrypt"]},
            {**ECKey.generate_key("secp256k1").as_dict(), "kid": "k1", "use": "sig"},
            {**OKPKey.generate_key("X25519").as_dict(), "kid": "x25519"},
            {"kty": "XYZ", "kid": "weird", "use": "sig"},
            {"kty": "RSA", "kid": "broken", "n": "!!not-base64!!", "e": "AQAB"},
            "not even an object",
        ]

    def public_jwk(self, which: str = "current", family: str = "RSA") -> dict[str, Any]:
        """A public JWK of one of badop's keys, e.g. to publish the rogue key via ``jwks_extra_keys``."""
        return dict(self.keys[which][family].as_dict())

    def jwks(self) -> dict[str, Any]:
        b = self.behaviour
        keys = [k.as_dict() for k in self.keys["current"].values()]
        publish_rotated = b.publish_rotated if b.publish_rotated is not None else b.sign_with == "rotated"
        if publish_rotated:
            keys += [k.as_dict() for k in self.keys["rotated"].values()]
        keys += b.jwks_extra_keys
        if b.jwks_include_unusable:
            keys += self._unusable
        return {"keys": keys}

    def sign(
        self,
        claims: dict[str, Any],
        *,
        alg: str | None = None,
        sign_with: str | None = None,
        typ: str | None = "",
        include_kid: bool | None = None,
        kid: str | None = None,
    ) -> str:
        """A compact JWS of ``claims`` as the knobs (or the arguments, which win) say."""
        b = self.behaviour
        alg = alg or b.alg
        sign_with = sign_with or b.sign_with
        typ = b.typ if typ == "" else typ
        include_kid = b.include_kid if include_kid is None else include_kid
        kid = kid if kid is not None else b.kid
        header: dict[str, Any] = {"alg": alg}
        if typ is not None:
            header["typ"] = typ
        if alg in ("none", "HS256", "HS256-public-key"):
            if alg == "none":
                secret = None
            elif alg == "HS256":
                secret = self.client_secret.encode()
            else:
                # The classic algorithm-confusion token: HMAC keyed with the PEM of the public RSA key.
                header["alg"] = "HS256"
                secret = self.keys["current"]["RSA"].as_pem(private=False)
                if include_kid:
                    header["kid"] = kid or self.keys["current"]["RSA"].kid
            signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
            if secret is None:
                return signing_input + "."
            mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{_b64(mac)}"
        family = _FAMILY[alg]
        key = self.keys[sign_with][family]
        if include_kid:
            # A rogue key claims to be the current one, so only the signature check can catch it.
            own_kid = self.keys["current" if sign_with == "rogue" else sign_with][family].kid
            header["kid"] = kid or own_kid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # EdDSA is "deprecated" in joserfc
            return jwt.encode(header, claims, key, algorithms=[alg], default_type=None)

    def mint_id_token(
        self, *, nonce: str | None, access_token: str | None = None, sid: str | None = None, sub: str | None = None
    ) -> str:
        b = self.behaviour
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub or b.sub,
            "aud": self.client_id,
            "exp": int(now + b.id_token_exp_in),
            "iat": int(now + b.id_token_iat_offset),
            "auth_time": now,
            "name": "Ada (from the ID token)",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if sid is not None:
            claims["sid"] = sid
        if access_token is not None and b.include_at_hash and b.alg in _FAMILY:
            claims["at_hash"] = _half_hash(access_token, b.alg)
        _apply(claims, b.id_token_claims_override)
        return self.sign(claims)

    def mint_logout_token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        alg: str | None = None,
        sign_with: str | None = None,
        typ: str | None = "logout+jwt",
    ) -> str:
        """A valid logout token for the last session, changed by ``claims`` (``None`` removes a claim)."""
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": int(time.time()),
            "exp": int(time.time()) + 120,
            "jti": secrets.token_urlsafe(12),
            "sub": self.behaviour.sub,
            "sid": self.last_sid or "sid-unknown",
            "events": {LOGOUT_EVENT: {}},
        }
        _apply(body, claims or {})
        return self.sign(body, alg=alg or "RS256", sign_with=sign_with or "current", typ=typ, include_kid=True)

    async def send_logout_token(self, uri: str, token: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(uri, data={"logout_token": token}, allow_redirects=False) as resp,
        ):
            return resp.status

    # -- the app -------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        p = self.issuer_path
        app.router.add_get(p + "/.well-known/openid-configuration", self.h_discovery)
        app.router.add_get(p + "/jwks", self.h_jwks)
        app.router.add_get(p + "/authorize", self.h_authorize)
        app.router.add_post(p + "/token", self.h_token)
        app.router.add_route("*", p + "/userinfo", self.h_userinfo)
        app.router.add_get(p + "/logout", self.h_logout)
        app.router.add_post("/_control", self.h_control)
        app.router.add_post("/_control/reset", self.h_control_reset)
        app.router.add_get("/_control/state", self.h_control_state)
        app.router.add_post("/_control/logout_token", self.h_control_logout_token)
        app.router.add_post("/_control/send_logout", self.h_control_send_logout)
        return app

    def discovery_document(self) -> dict[str, Any]:
        b = self.behaviour
        doc: dict[str, Any] = {
            "issuer": b.issuer_in_discovery or self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "jwks_uri": self.url("/jwks"),
            "end_session_endpoint": self.url("/logout"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "id_token_signing_alg_values_supported": ALL_ALGS,
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "authorization_response_iss_parameter_supported": True,
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
        }
        if b.userinfo_enabled:
            doc["userinfo_endpoint"] = self.url("/userinfo")
        if b.token_auth_methods_supported is not None:
            doc["token_endpoint_auth_methods_supported"] = b.token_auth_methods_supported
        return _apply(doc, b.discovery_overrides)

    async def h_discovery(self, request: web.Request) -> web.Response:
        self.requests["discovery"] += 1
        if self.behaviour.discovery_status != 200:
            return web.Response(status=self.behaviour.discovery_status, text="discovery is broken")
        return web.json_response(self.discovery_document())

    async def h_jwks(self, request: web.Request) -> web.Response:
        self.requests["jwks"] += 1
        if self.behaviour.jwks_status != 200:
            return web.Response(status=self.behaviour.jwks_status, text="jwks is broken")
        return web.json_response(self.jwks())

    async def h_authorize(self, request: web.Request) -> web.Response:
        self.requests["authorize"] += 1
        params = dict(request.query)
        self.authorize_requests.append(params)
        if params.get("client_id") != self.client_id or not params.get("redirect_uri"):
            return web.Response(status=400, text="unknown client or no redirect_uri")
        if params.get("response_type") != "code":
            return web.Response(status=400, text="only response_type=code")
        code = "code-" + secrets.token_urlsafe(16)
        self.issued.append(code)
        self._codes[code] = {
            "nonce": params.get("nonce", ""),
            "code_challenge": params.get("code_challenge", ""),
            "code_challenge_method": params.get("code_challenge_method", ""),
            "redirect_uri": params["redirect_uri"],
            "scope": params.get("scope", ""),
        }
        answer = {"code": code}
        if "state" in params:
            answer["state"] = params["state"]
        iss = self.behaviour.authorization_iss
        if iss is not False:
            answer["iss"] = self.issuer if iss is True else str(iss)
        location = URL(params["redirect_uri"]).update_query(answer)
        raise web.HTTPFound(location=str(location))

    def _client_auth(self, request: web.Request, form: dict[str, str]) -> tuple[str, str | None, str | None]:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
                raw_id, _, raw_secret = decoded.partition(":")
            except ValueError:
                return "client_secret_basic", None, None
            return "client_secret_basic", unquote_plus(raw_id), unquote_plus(raw_secret)
        if "client_secret" in form:
            return "client_secret_post", form.get("client_id"), form["client_secret"]
        return "none", form.get("client_id"), None

    @staticmethod
    def _oauth_error(error: str, status: int = 400) -> web.Response:
        headers = {"WWW-Authenticate": 'Basic realm="badop"'} if status == 401 else {}
        return web.json_response(
            {"error": error, "error_description": f"badop says {error}"}, status=status, headers=headers
        )

    async def h_token(self, request: web.Request) -> web.Response:
        self.requests["token"] += 1
        b = self.behaviour
        form = {k: str(v) for k, v in (await request.post()).items()}
        method, client_id, secret = self._client_auth(request, form)
        self.token_auth_methods_seen.append(method)
        self.token_requests.append({k: v for k, v in form.items() if k != "client_secret"})
        if b.token_error:
            return self._oauth_error(b.token_error, 401 if b.token_error == "invalid_client" else 400)
        allowed = b.token_auth_methods_supported or ["client_secret_basic"]
        if method not in allowed or client_id != self.client_id or secret != self.client_secret:
            return self._oauth_error("invalid_client", 401)
        grant = form.get("grant_type")
        if grant == "authorization_code":
            record = self._codes.pop(form.get("code", ""), None)
            if record is None or form.get("redirect_uri") != record["redirect_uri"]:
                return self._oauth_error("invalid_grant")
            if record["code_challenge"]:
                verifier = form.get("code_verifier", "")
                if _b64(hashlib.sha256(verifier.encode()).digest()) != record["code_challenge"]:
                    return self._oauth_error("invalid_grant")
            return self._issue(nonce=record["nonce"] or None, scope=record["scope"], id_token=True)
        if grant == "refresh_token":
            session = self._refresh_tokens.pop(form.get("refresh_token", ""), None)
            if session is None:
                return self._oauth_error("invalid_grant")
            return self._issue(nonce=None, scope=session["scope"], id_token=b.refresh_id_token, sid=session["sid"])
        return self._oauth_error("unsupported_grant_type")

    def _issue(self, *, nonce: str | None, scope: str, id_token: bool, sid: str | None = None) -> web.Response:
        b = self.behaviour
        sid = sid or "sid-" + secrets.token_urlsafe(8)
        self.last_sid = sid
        expires_in = b.token_response_override.get("expires_in", 300)
        access_token = "at-" + secrets.token_urlsafe(24)
        if b.jwt_access_tokens:
            now = int(time.time())
            access_token = self.sign(
                {
                    "iss": self.issuer, "sub": b.sub, "aud": self.client_id, "client_id": self.client_id,
                    "iat": now, "exp": now + int(expires_in or 300), "scope": scope, "jti": secrets.token_urlsafe(12),
                },
                typ="at+jwt",
            )  # fmt: skip
        refresh_token = "rt-" + secrets.token_urlsafe(24)
        self._access_tokens[access_token] = {"sub": b.sub}
        self._refresh_tokens[refresh_token] = {"sub": b.sub, "sid": sid, "scope": scope}
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": refresh_token,
            "scope": scope,
        }
        self.issued += [access_token, refresh_token]
        if id_token:
            body["id_token"] = self.mint_id_token(nonce=nonce, access_token=access_token, sid=sid)
            self.issued.append(body["id_token"])
            self.last_id_token = body["id_token"]
        return web.json_response(_apply(body, b.token_response_override))

    async def h_userinfo(self, request: web.Request) -> web.Response:
        self.requests["userinfo"] += 1
        b = self.behaviour
        token, location = None, "none"
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token, location = header[7:], "header"
        elif "access_token" in request.query:
            token, location = request.query["access_token"], "query"
        elif request.method == "POST":
            form = await request.post()
            if "access_token" in form:
                token, location = str(form["access_token"]), "body"
        self.userinfo_token_locations.append(location)
        self.userinfo_query_strings.append(request.query_string)
        record = self._access_tokens.get(token or "")
        if record is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if b.userinfo_status != 200:
            return web.Response(status=b.userinfo_status, text="userinfo is broken")
        claims = {"sub": b.userinfo_sub or record["sub"], **b.userinfo_claims}
        if b.userinfo_format == "jwt":
            signed = self.sign({**claims, "iss": self.issuer, "aud": self.client_id}, typ=None)
            return web.Response(body=signed.encode(), content_type="application/jwt")
        if b.userinfo_format == "html":
            return web.Response(text="<html>sign in first</html>", content_type="text/html")
        return web.json_response(claims)

    async def h_logout(self, request: web.Request) -> web.Response:
        self.requests["end_session"] += 1
        params = dict(request.query)
        self.end_session_requests.append(params)
        target = params.get("post_logout_redirect_uri")
        if target:
            answer = {"state": params["state"]} if "state" in params else {}
            raise web.HTTPFound(location=str(URL(target).update_query(answer)))
        return web.Response(text="<html>signed out</html>", content_type="text/html")

    # -- control API ---------------------------------------------------------------------------------

    async def h_control(self, request: web.Request) -> web.Response:
        knobs = await request.json()
        if not isinstance(knobs, dict):
            return web.json_response({"error": "send a JSON object of knobs"}, status=400)
        try:
            self.set(**knobs)
        except TypeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def h_control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def h_control_state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "client_id": self.client_id,
                "requests": dict(self.requests),
                "authorize_requests": self.authorize_requests,
                "token_requests": self.token_requests,
                "token_auth_methods_seen": self.token_auth_methods_seen,
                "userinfo_token_locations": self.userinfo_token_locations,
                "end_session_requests": self.end_session_requests,
                "last_sid": self.last_sid,
                "behaviour": dataclasses.asdict(self.behaviour),
            }
        )

    async def _logout_token_from(self, request: web.Request) -> tuple[dict[str, Any], str]:
        spec = await request.json() if request.can_read_body else {}
        token = self.mint_logout_token(
            spec.get("claims"),
            alg=spec.get("alg"),
            sign_with=spec.get("sign_with"),
            typ=spec.get("typ", "logout+jwt"),
        )
        return spec, token

    async def h_control_logout_token(self, request: web.Request) -> web.Response:
        _, token = await self._logout_token_from(request)
        return web.json_response({"logout_token": token})

    async def h_control_send_logout(self, request: web.Request) -> web.Response:
        spec, token = await self._logout_token_from(request)
        status = await self.send_logout_token(str(spec["uri"]), token)
        return web.json_response({"status": status})


# --------------------------------------------------------------------------------------------------
# As a process


@contextlib.asynccontextmanager
async def running_badop(issuer_path: str = "") -> AsyncIterator[BadOP]:
    """A BadOP on a free loopback port for the duration of the ``async with`` (a test fixture's body)."""
    op = BadOP(issuer_path=issuer_path)
    await op.start("127.0.0.1")
    try:
        yield op
    finally:
        await op.stop()


async def _serve(args: argparse.Namespace) -> None:
    op = BadOP(client_id=args.client_id, client_secret=args.client_secret, issuer_path=args.issuer_path)
    await op.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {op.issuer}", flush=True)
    try:
        await stop.wait()
    finally:
        await op.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A misbehaving OpenID Provider for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    parser.add_argument("--issuer-path", default="", help="e.g. /realms/test")
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
