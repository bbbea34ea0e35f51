"""Proving a provider before anyone depends on it: discovery, signing keys and the client's credentials.

A reload runs it before it swaps in new SSO settings (``proxy.runtime.reload``), ``sso-sidecar check`` runs it
for the operator, and the settings page before a change it would apply: all three report the same problem
in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.errors import ConfigProblem, SidecarError
from proxy.oidc.client import OIDCClient
from proxy.oidc.discovery import ProviderMetadata


@dataclass
class ProviderCheck:
    """What the provider said about an SSO config: its metadata, if any, and every problem found."""

    metadata: ProviderMetadata | None = None
    signing_keys: int = 0
    credentials_ok: bool = False
    problems: list[ConfigProblem] = field(default_factory=list)


async def verify_provider(client: OIDCClient, *, strict: bool = False) -> ProviderCheck:
    """Discovery, JWKS and client credentials, as a reload must pass them before the swap.

    Shared with ``sso-sidecar check`` so that both report the same problem in the same words. ``strict``
    (the settings page): only an answer that proves the credentials counts (``prove_client_credentials``).
    """
    sso = client.settings
    secret_key = "sso.client_secret_file" if sso.client_secret_file else "sso.client_secret"
    result = ProviderCheck()
    try:
        result.metadata = await client.metadata()
    except SidecarError as exc:
        result.problems.append(ConfigProblem("sso.issuer_url", exc.message))
        return result
    try:
        # The client's own fetch (size limits, key filtering) also warms the cache the swap inherits.
        keys = await client.jwks.keys()
    except SidecarError as exc:
        result.problems.append(ConfigProblem("sso.issuer_url", exc.message))
    else:
        result.signing_keys = len(keys)
        if not keys:
            result.problems.append(ConfigProblem("sso.issuer_url", "The provider's JWKS has no usable signature key"))
    try:
        await client.prove_client_credentials(strict=strict)
    except SidecarError as exc:
        result.problems.append(ConfigProblem(secret_key, exc.message))
    else:
        result.credentials_ok = True
    return result
