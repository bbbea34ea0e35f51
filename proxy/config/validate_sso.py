"""The ``sso:`` section: the provider, the client, and the other issuers whose bearer tokens are accepted."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from yarl import URL

from proxy.config.model import DEFAULT_SCOPES, SUPPORTED_ID_TOKEN_ALGS, ExtraIssuer, SSOSettings, is_loopback_host
from proxy.config.reader import ConfigReader

TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# A claim name as it can appear in a JWT (also namespaced ones such as https://example.com/hint); no spaces
# or controls, which could never name a claim the provider sends.
_CLAIM_NAME = re.compile(r"[!-~]{1,200}")


def parse_sso(r: ConfigReader, raw: Mapping[str, Any]) -> SSOSettings:
    allowed = {
        "enabled", "issuer_url", "client_id", "client_secret", "client_secret_file", "scopes",
        "token_endpoint_auth_method", "id_token_signing_algs", "clock_skew", "http_timeout",
        "extra_authorize_params", "api_audiences", "extra_issuers", "accept_id_tokens", "logout_hint",
    }  # fmt: skip
    if "sso" not in raw:
        r.problem("sso", "is required (at least sso.issuer_url, sso.client_id and a client secret)")
        return SSOSettings(enabled=False)
    s = r.section(raw, "sso", allowed, "sso")
    enabled = r.boolean(s, "enabled", "sso.enabled", True)
    issuer = r.string(s, "issuer_url", "sso.issuer_url", required=enabled)
    if issuer:
        check_issuer(r, issuer)
    client_id = r.string(s, "client_id", "sso.client_id", required=enabled)
    secret, secret_file = r.one_secret(s, "client_secret", "sso", required=enabled)
    scopes = r.string_list(s, "scopes", "sso.scopes") or DEFAULT_SCOPES
    if "openid" not in scopes:
        r.problem("sso.scopes", "must include 'openid'")
    method = r.string(s, "token_endpoint_auth_method", "sso.token_endpoint_auth_method") or None
    if method is not None and method not in TOKEN_AUTH_METHODS:
        r.problem("sso.token_endpoint_auth_method", f"must be one of {', '.join(TOKEN_AUTH_METHODS)}")
    algs = r.string_list(s, "id_token_signing_algs", "sso.id_token_signing_algs")
    for alg in algs or ():
        if alg not in SUPPORTED_ID_TOKEN_ALGS:
            r.problem(
                "sso.id_token_signing_algs",
                f"{alg!r} is not allowed; choose from {', '.join(SUPPORTED_ID_TOKEN_ALGS)}",
            )
    extra = s.get("extra_authorize_params") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        r.problem("sso.extra_authorize_params", "must be a mapping of parameter names to strings")
        extra = {}
    reserved = {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                "code_challenge", "code_challenge_method"}  # fmt: skip
    for name in extra:
        if name in reserved:
            r.problem(f"sso.extra_authorize_params.{name}", "is set by the sidecar and cannot be overridden")
    logout_hint = r.string(s, "logout_hint", "sso.logout_hint") or "auto"
    if not _CLAIM_NAME.fullmatch(logout_hint):
        r.problem("sso.logout_hint", "must be 'auto', 'id_token_hint' or the name of an ID token claim (e.g. sid)")
    return SSOSettings(
        enabled=enabled,
        issuer_url=issuer,
        client_id=client_id,
        client_secret=secret,
        client_secret_file=secret_file,
        scopes=scopes,
        token_endpoint_auth_method=method,
        id_token_signing_algs=algs,
        clock_skew=r.duration(s, "clock_skew", "sso.clock_skew", 60.0),
        http_timeout=r.duration(s, "http_timeout", "sso.http_timeout", 10.0),
        extra_authorize_params={str(k): str(r.expand(v, f"sso.extra_authorize_params.{k}")) for k, v in extra.items()},
        api_audiences=r.string_list(s, "api_audiences", "sso.api_audiences"),
        extra_issuers=parse_extra_issuers(r, s, issuer),
        accept_id_tokens=r.boolean(s, "accept_id_tokens", "sso.accept_id_tokens", False),
        logout_hint=logout_hint,
    )


def parse_extra_issuers(r: ConfigReader, s: Mapping[str, Any], main_issuer: str) -> tuple[ExtraIssuer, ...]:
    value = s.get("extra_issuers")
    if value is None:
        return ()
    if not isinstance(value, list):
        r.problem("sso.extra_issuers", "must be a list of {issuer_url, audiences}")
        return ()
    result: list[ExtraIssuer] = []
    seen = {main_issuer}
    for i, entry in enumerate(value):
        key = f"sso.extra_issuers[{i}]"
        if not isinstance(entry, dict):
            r.problem(key, "must be a mapping with issuer_url and audiences")
            continue
        r.unknown(entry, {"issuer_url", "audiences"}, key + ".")
        issuer = r.string(entry, "issuer_url", f"{key}.issuer_url", required=True)
        if issuer:
            check_issuer(r, issuer, f"{key}.issuer_url")
            if issuer in seen:
                r.problem(f"{key}.issuer_url", "is already configured (sso.issuer_url or an earlier entry)")
            seen.add(issuer)
        audiences = r.string_list(entry, "audiences", f"{key}.audiences")
        if not audiences:
            # An issuer's tokens are for many APIs; accepting them all would accept tokens minted for others.
            r.problem(f"{key}.audiences", "is required: the audiences (aud) its tokens must carry for this console")
        if issuer and audiences:
            result.append(ExtraIssuer(issuer, audiences))
    return tuple(result)


def check_issuer(r: ConfigReader, issuer: str, key: str = "sso.issuer_url") -> None:
    try:
        url = URL(issuer)
    except ValueError:
        r.problem(key, f"{issuer!r} is not a valid URL")
        return
    if url.scheme not in ("http", "https") or not url.host:
        r.problem(key, f"{issuer!r} must be an absolute URL: https://host/... (http:// only on a loopback host)")
    elif url.scheme == "http" and not is_loopback_host(url.host):
        # OIDC Discovery 3 / Core 3.1.2.1: the issuer is an https URL; plain http is only for local tests.
        r.problem(key, f"{issuer!r} uses http://; only https:// is allowed (http only on loopback)")
    elif url.query_string or url.fragment:
        r.problem(key, "must not have a query or fragment")
