"""The sidecar's exception hierarchy.

Handlers and library wrappers raise these; exactly one middleware (``app.error_middleware``) turns them
into responses: an HTML page for browsers, JSON for API clients. Messages here are shown to users, so
they never contain a token, a secret or a cookie value.
"""

from __future__ import annotations

from dataclasses import dataclass


class SidecarError(Exception):
    """Base class: an error with an HTTP status, a stable machine code and a user-facing message."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Something went wrong"
    # Where a "try again" link should lead (the page the user wanted), when known.
    return_to: str | None = None
    # Seconds for a Retry-After header (RFC 9110 10.2.3), when waiting is the remedy.
    retry_after: int | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class Unauthenticated(SidecarError):
    """No valid session on a request that needs one (API callers get 401 JSON with a login URL)."""

    status = 401
    code = "unauthenticated"
    title = "Sign-in required"

    def __init__(
        self, message: str = "Sign-in required.", *, login_url: str = "/oauth2/start", challenge: str | None = None
    ) -> None:
        super().__init__(message)
        self.login_url = login_url
        # The WWW-Authenticate value (RFC 6750 3), for callers that may present a bearer token.
        self.challenge = challenge


class UnusableIdentity(SidecarError):
    """A claim the sidecar forwards, judges or logs holds a value it refuses (``identity.problem``)."""

    status = 403
    code = "unusable_identity"
    title = "Account not usable here"


class InvalidToken(Unauthenticated):
    """A bearer token that failed validation (RFC 6750 3.1 ``invalid_token``)."""

    code = "invalid_token"
    title = "Invalid token"

    def __init__(self, message: str, *, login_url: str = "/oauth2/start") -> None:
        # RFC 6750 3: error_description is printable ASCII without '"' and '\\'.
        description = "".join(c for c in message if " " <= c <= "~" and c not in '"\\')
        super().__init__(
            message, login_url=login_url, challenge=f'Bearer error="invalid_token", error_description="{description}"'
        )


class StepUpRequired(Unauthenticated):
    """A session or bearer token whose sign-in is too old or too weak for the route (RFC 9470): 401 with
    ``WWW-Authenticate: Bearer error="insufficient_user_authentication"`` and ``details`` (the ``acr_values``
    and ``max_age`` a new sign-in must meet) in the JSON answer."""

    code = "insufficient_user_authentication"
    title = "A stronger or more recent sign-in is required"

    def __init__(self, message: str, *, login_url: str, challenge: str, details: dict[str, object]) -> None:
        super().__init__(message, login_url=login_url, challenge=challenge)
        self.details = details


class BadRequest(SidecarError):
    """A request the sidecar refuses to interpret, e.g. a path that means different things to different servers."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class Forbidden(SidecarError):
    status = 403
    code = "forbidden"
    title = "Access denied"


class StepUpFailed(Forbidden):
    """A route asks for a sign-in the identity provider did not deliver (an ``acr`` it never sends, or one that
    no sign-in can meet): one page that says what is required, never another round trip. The session stays
    as it was for every other path."""

    code = "step_up_failed"
    title = "A stronger sign-in is required"


class NotFound(SidecarError):
    status = 404
    code = "not_found"
    title = "Not found"


class LoginError(SidecarError):
    """The login could not complete: bad callback, provider error, token that failed validation.

    The page offers a "try again" link; no session is created.
    """

    status = 400
    code = "login_failed"
    title = "Sign-in failed"


class ProviderError(LoginError):
    """The identity provider misbehaved or could not be reached (discovery, JWKS, token endpoint)."""

    status = 502
    code = "provider_error"
    title = "Identity provider problem"


class TokenValidationError(LoginError):
    """A token from the provider failed validation (signature, iss, aud, exp, nonce, ...)."""

    code = "invalid_token"


class TooManySignIns(SidecarError):
    """The client's address has as many sign-ins open as it may (``session.max_pending_logins_per_address``)."""

    status = 429
    code = "too_many_sign_ins"
    title = "Too many sign-ins"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "Too many sign-ins were started from your network and not finished. "
            "Finish one that is open, or wait a few minutes, then try again."
        )
        self.retry_after = retry_after


class UpstreamError(SidecarError):
    status = 502
    code = "bad_gateway"
    title = "Console unavailable"


class StoreUnavailable(SidecarError):
    status = 503
    code = "session_store_unavailable"
    title = "Temporarily unavailable"


class Closed(SidecarError):
    """This process does not proxy: it cannot read or apply the settings page's record (``proxy.admin.sync``)."""

    status = 503
    code = "settings_unavailable"
    title = "Temporarily unavailable"

    def __init__(self) -> None:
        super().__init__("The sidecar cannot confirm its single sign-on settings right now. Please try again shortly.")


@dataclass(frozen=True)
class ConfigProblem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; carries every problem found, each naming its key."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))
