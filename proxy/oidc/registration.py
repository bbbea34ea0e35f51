"""Dynamic client registration (RFC 7591) and its management (RFC 7592): the settings page's "Register
automatically".

``register`` posts the client's metadata to the provider's ``registration_endpoint`` with an initial access token
(RFC 7591 3, ``Authorization: Bearer``) and returns the client ID and secret, and, where the provider hands them
out, the registration access token and client configuration URI (RFC 7592 3) with which the registration can
later be read, updated or deleted. A refusal is a ``RegistrationRefused`` carrying the provider's own words
(``error`` and ``error_description``, RFC 7591 3.2.2), made printable and short. Nothing here logs or shows a
token or a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from proxy.errors import ProviderError
from proxy.oidc.http import ProviderHTTP, ProviderUnreadable, printable

_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOKEN = re.compile(r"^[\x21-\x7e]{1,4096}$")  # RFC 6750 2.1 b64token, and then some: printable, no spaces


class RegistrationRefused(ProviderError):
    """The provider answered, and said no (RFC 7591 3.2.2): its words are in the message."""

    status = 400
    code = "registration_refused"

    def __init__(self, message: str, *, error: str | None, http_status: int) -> None:
        super().__init__(message)
        self.error = error
        self.http_status = http_status


@dataclass(frozen=True)
class Registered:
    client_id: str
    client_secret: str
    client_secret_expires_at: float  # 0: never (RFC 7591 3.2.1)
    registration_access_token: str  # "" when the provider hands out none
    registration_client_uri: str

    def __repr__(self) -> str:
        return f"Registered(client_id={self.client_id!r}, ...)"  # never the secret or the token


def usable_token(token: str) -> bool:
    """Whether ``token`` can be sent as a bearer token at all (printable ASCII without spaces)."""
    return bool(_TOKEN.match(token))


async def register(
    http: ProviderHTTP, endpoint: str, initial_access_token: str, metadata: Mapping[str, Any]
) -> Registered:
    """Register a client. ``RegistrationRefused`` for the provider's no, ``ProviderError`` for an answer that
    is not one (``ProviderUnreadable``: nothing that answers as a provider does)."""
    headers = {"Accept": "application/json"}
    if initial_access_token:
        headers["Authorization"] = f"Bearer {initial_access_token}"
    answer = await http.request("POST", endpoint, "registration endpoint", json_body=metadata, headers=headers)
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if answer.status in (200, 201) and isinstance(body, dict):
        return _registered(body, endpoint)
    if isinstance(body, dict) and isinstance(body.get("error"), str) and _ERROR_CODE.match(body["error"]):
        description = body.get("error_description")
        words = body["error"] + (f": {printable(description, 300)}" if isinstance(description, str) else "")
        raise RegistrationRefused(words, error=body["error"], http_status=answer.status)
    if answer.status in (401, 403):
        raise RegistrationRefused(
            f"HTTP {answer.status}: the initial access token was not accepted", error=None, http_status=answer.status
        )
    raise ProviderUnreadable(f"The registration endpoint answered HTTP {answer.status}, not a registration")


def _registered(body: Mapping[str, Any], endpoint: str) -> Registered:
    client_id, secret = body.get("client_id"), body.get("client_secret")
    if not isinstance(client_id, str) or not client_id:
        raise ProviderError("The provider's registration answer has no client_id")
    if not isinstance(secret, str) or not secret:
        raise ProviderError(
            "The provider registered a client without a secret: the sidecar needs a confidential client "
            "(client_secret_basic)"
        )
    expires = body.get("client_secret_expires_at", 0)
    token, uri = body.get("registration_access_token"), body.get("registration_client_uri")
    # The configuration URI receives the registration access token: only on the registration endpoint's own
    # origin, so a provider's answer cannot point the sidecar (and a token) at another host.
    same_origin = isinstance(uri, str) and _origin(uri) == _origin(endpoint)
    return Registered(
        client_id=client_id,
        client_secret=secret,
        client_secret_expires_at=float(expires) if isinstance(expires, int | float) else 0.0,
        registration_access_token=token if isinstance(token, str) and same_origin else "",
        registration_client_uri=uri if isinstance(uri, str) and same_origin else "",
    )


def _origin(url: str) -> str | None:
    try:
        parsed = URL(url)
    except ValueError:
        return None
    return str(parsed.origin()) if parsed.absolute else None


async def delete(http: ProviderHTTP, registered: Registered) -> bool:
    """RFC 7592 2.3: delete a registration this sidecar just made (and then could not use). Best effort: True
    when the provider confirmed it."""
    if not registered.registration_access_token or not registered.registration_client_uri:
        return False
    headers = {"Authorization": f"Bearer {registered.registration_access_token}"}
    try:
        answer = await http.request("DELETE", registered.registration_client_uri, "client configuration endpoint",
                                    headers=headers)  # fmt: skip
    except ProviderError:
        return False
    return answer.status == 204
