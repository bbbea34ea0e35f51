"""Requests to an identity provider: no redirects, bounded answers, one timeout, one kind of error.

Discovery, the JWKS, the token endpoint and userinfo all go through ``ProviderHTTP`` on the app's one
aiohttp client session. Whatever goes wrong on the wire becomes a ``ProviderError`` whose message is
shown to users, so it names *what* was asked and never what was sent.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.errors import ProviderError

log = logging.getLogger("sso_sidecar.oidc")

# A discovery document, JWKS or token answer is a few KiB; a provider (or something posing as one)
# must not make the sidecar buffer more than this.
MAX_ANSWER_BYTES = 1 << 20


class ProviderUnreadable(ProviderError):
    """Nothing that answers as an identity provider does: unreachable, too slow, too large, not JSON.

    Its message names the network's reason (for logs, ``check`` and the status); the settings page shows
    its own words instead, since an admin-typed URL must not become a way to map which ports answer."""


def printable(text: str, limit: int = 200) -> str:
    """Provider-sent text made safe for a message or a log line: control characters replaced, length capped."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def json_object(self, what: str) -> dict[str, Any]:
        """The body as a JSON object; ``what`` starts the error message (e.g. "The provider's JWKS")."""
        try:
            value = json.loads(self.body)
        except ValueError:
            raise ProviderUnreadable(f"{what} is not valid JSON") from None
        if not isinstance(value, dict):
            raise ProviderUnreadable(f"{what} is not a JSON object")
        return value


class ProviderHTTP:
    """The sidecar's HTTP client towards one identity provider configuration."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self._session = session
        self._timeout_seconds = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> Answer:
        """``data``: a form; ``json_body``: a JSON object (dynamic client registration, RFC 7591)."""
        # No redirects: a 3xx could move a bearer token or the client secret to another host or to http.
        try:
            async with self._session.request(
                method, url, data=data, json=json_body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
                    raise ProviderUnreadable(f"The {what} answer is too large")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise ProviderUnreadable(f"The {what} answer is too large")
                    chunks.append(chunk)
                return Answer(resp.status, resp.content_type, b"".join(chunks))
        except TimeoutError:
            log.warning("%s at %s did not answer within %ss", what, url, self._timeout_seconds)
            raise ProviderUnreadable(f"The identity provider did not answer in time ({what})") from None
        except aiohttp.ClientError as exc:
            reason = _reason(exc)
            log.warning("%s at %s failed: %s", what, url, reason)
            raise ProviderUnreadable(f"Could not reach the identity provider ({what}: {reason})") from None


def _reason(exc: aiohttp.ClientError) -> str:
    """What went wrong, in words (no class names): for logs, status and ``check``."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno).lower()  # "connection refused", not the event loop's wording
        return "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "its answer was cut off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"it answered HTTP {exc.status}"
    return "the connection failed"
