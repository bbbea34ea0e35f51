"""Every use of itsdangerous: the session ticket, pending-login cookies, the sign-out confirmation, signed
redirect state and the break-glass cookie.

One salt per purpose, so a signature made for one can never stand in for another. Secrets come newest
first from the config; the newest signs, all verify, so rotating is "add a new secret on top".
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from aiohttp import web
from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

from proxy.b64 import b64url_decode, b64url_encode
from proxy.config.model import SessionSettings
from proxy.sessions.model import Ticket

_TICKET_SALT = "sso-sidecar/session-ticket/v1"
_LOGIN_SALT = "sso-sidecar/pending-login/v1"
_SIGNOUT_SALT = "sso-sidecar/sign-out-form/v1"
_LOGOUT_STATE_SALT = "sso-sidecar/post-logout-state/v1"
_BREAK_GLASS_SALT = "sso-sidecar/break-glass/v1"
_ADMIN_FORM_SALT = "sso-sidecar/admin-form/v1"
_ADMIN_FORM_MAX_AGE = 12 * 3600  # a settings page left open over a working day still submits
_TICKET_VERSION = "1"
_VERIFIED_MAX = 20_000  # cookie values whose signature is known good (about 9 MB at most)
# Set-Cookie headers in one answer: about 1.5 KB with the rest of a redirect's head, well inside the 4 KB that
# nginx buffers for an upstream's head by default (proxy_buffer_size), and far from any client's header cap.
SET_COOKIE_CEILING = 8
# What the sidecar's cookie values are made of (base64url, itsdangerous's dots): such a value reads the same
# through ``cookie_value``'s direct path and aiohttp's parser.
_PLAIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
# Cookie headers whose reading is remembered (``cookie_value``): 2,048 of up to 512 characters, about 2 MB at
# most per cookie name; a session cookie's header alone is about 130.
_READS_MAX = 2_048
_READ_LONGEST = 512
_reads: dict[str, dict[str, str | None]] = {}


def cookie_value(request: web.BaseRequest, name: str) -> str | None:
    """The value of cookie ``name``, as ``request.cookies`` would give it, without parsing every cookie.

    A browser sends the same Cookie header on every request, so what was read from a header is remembered
    (per cookie name, for headers up to ``_READ_LONGEST`` characters, at most ``_READS_MAX`` of them, the
    oldest dropped first): the answer depends on the header alone. A header not seen before is read by
    ``_read``.
    """
    header = request.headers.get("Cookie")  # the first one only, as aiohttp's parser reads
    if not header or name not in header:
        return None
    reads = _reads.get(name)
    if reads is None:
        reads = _reads[name] = {}
    try:
        return reads[header]
    except KeyError:
        pass
    value = _read(request, header, name)
    if len(header) <= _READ_LONGEST:
        if len(reads) >= _READS_MAX:
            del reads[next(iter(reads))]
        reads[header] = value
    return value


def _read(request: web.BaseRequest, header: str, name: str) -> str | None:
    """The common case is read directly from the header: the name once in the whole header, no quote anywhere
    in it, and a value of the characters the sidecar's own cookies are made of. Anything else is left to
    aiohttp's full parser, so both always agree (``tests/adversarial/test_cookie_header_fuzz.py``): a second
    ``name =`` with a space, which aiohttp reads and a prefix test would miss, or a ``name=`` inside another
    cookie's quoted value, which aiohttp does not read and a split on ``;`` would."""
    prefix = name + "="
    found: str | None = None
    for pair in header.split(";"):
        pair = pair.strip()
        if pair.startswith(prefix):
            found = pair[len(prefix) :]
            break
    if found is None or found.strip(_PLAIN) or header.count(name) != 1 or '"' in header:
        return request.cookies.get(name)
    return found


def _holder_digest(holder: str) -> str:
    return hashlib.sha256(b"sso-sidecar/admin-form-holder|" + holder.encode()).hexdigest()[:32]


class CookieCodec:
    """Builds and reads the sidecar's cookies for one config (secrets, names, attributes)."""

    def __init__(self, session: SessionSettings, *, secure: bool) -> None:
        # itsdangerous takes oldest first and signs with the last; our config lists newest first.
        keys = [s.reveal() for s in reversed(session.cookie_secrets)]
        self._ticket = TimestampSigner(keys, salt=_TICKET_SALT)
        self._login = TimestampSigner(keys, salt=_LOGIN_SALT)
        self._signout = TimestampSigner(keys, salt=_SIGNOUT_SALT)
        self._logout_state = URLSafeTimedSerializer(keys, salt=_LOGOUT_STATE_SALT)
        self._break_glass = TimestampSigner(keys, salt=_BREAK_GLASS_SALT)
        self._admin_form = TimestampSigner(keys, salt=_ADMIN_FORM_SALT)
        # A cookie value whose signature checked out -> when it was signed, and the ticket it carries.
        self._verified: dict[str, tuple[float, Ticket]] = {}
        self._ticket_max_age = int(session.lifetime) + 60
        self.secure = secure
        self.lifetime = session.lifetime
        self.login_timeout = session.login_timeout
        self.max_pending_logins = session.max_pending_logins
        # __Host- binds the cookie to this exact host, https and path "/" (RFC 6265bis 4.1.3.2).
        prefix = "__Host-" if secure else ""
        self.session_name = prefix + session.cookie_name
        self.login_prefix = prefix + session.cookie_name + "_login_"
        self.break_glass_name = prefix + session.cookie_name + "_break_glass"
        # The names as ``is_own_cookie`` compares them: lower case, without a __Host-/__Secure- prefix.
        base = session.cookie_name.lower()
        self._own_names = frozenset({base, base + "_break_glass"})
        self._own_prefix = base + "_login_"

    # -- session ticket ---------------------------------------------------------------------------

    def encode_ticket(self, ticket: Ticket) -> str:
        payload = f"{_TICKET_VERSION}.{ticket.session_id}.{b64url_encode(ticket.key)}"
        return self._ticket.sign(payload).decode("ascii")

    def decode_ticket(self, value: str | None) -> Ticket | None:
        """The ticket in a session cookie, or None when it is absent, forged, expired or malformed."""
        if not value:
            return None
        # A cookie value whose signature checked out once is the same value next time: remember it, with its
        # signing time and the ticket it decodes to, instead of paying HMAC key derivation, the split and the
        # base64 on every request. Keyed by the value itself: only values this sidecar signed get in (a forged
        # one never does), and a valid one is about 110 characters, so the bound caps the memory.
        known = self._verified.get(value)
        if known is not None:
            # The same test as on the first request: the signature's age, from the time it carries.
            if time.time() - known[0] > self._ticket_max_age:
                return None
            return known[1]
        try:
            payload, signed = self._ticket.unsign(value, max_age=self._ticket_max_age, return_timestamp=True)
            version, session_id, key = payload.decode("ascii").split(".")
            if version != _TICKET_VERSION:
                return None
            raw_key = b64url_decode(key)
        except (BadData, ValueError, UnicodeDecodeError):
            return None
        if len(raw_key) != 32 or not session_id:
            return None
        ticket = Ticket(session_id, raw_key)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[value] = (signed.timestamp(), ticket)
        return ticket

    def set_session(self, response: web.StreamResponse, ticket: Ticket) -> None:
        self._set(response, self.session_name, self.encode_ticket(ticket), max_age=None)

    def clear_session(self, response: web.StreamResponse) -> None:
        self._clear(response, self.session_name)

    # -- pending logins ---------------------------------------------------------------------------

    def login_cookie_name(self, state: str) -> str:
        # The state is in the URL anyway; a short tag of it lets several tabs log in at once.
        return self.login_prefix + state[:16]

    def set_login(self, response: web.StreamResponse, state: str, existing: Mapping[str, str]) -> None:
        """Bind a new pending login to this browser, expiring the oldest ones beyond the bound.

        Only cookies this sidecar signed are expired, at most ``SET_COOKIE_CEILING`` - 1 per answer (the
        rest on later ones): a browser carrying a flood of look-alike cookies (planted from a sibling host on
        http, or junk) would otherwise get an answer head no proxy or client accepts, and never sign in."""
        self._set(
            response,
            self.login_cookie_name(state),
            self._login.sign(state).decode("ascii"),
            max_age=int(self.login_timeout),
        )
        pending = self.pending_logins(existing)
        excess = min(len(pending) + 1 - self.max_pending_logins, SET_COOKIE_CEILING - 1)
        for name, _ in pending[: max(excess, 0)]:
            self._clear(response, name)

    def pending_logins(self, cookies: Mapping[str, str]) -> list[tuple[str, float]]:
        """(cookie name, signed-at time) of the browser's pending-login cookies that this sidecar signed (for
        the name they carry), oldest first. Others are not ours to expire, and not counted."""
        found = []
        for name, value in cookies.items():
            # The name carries the first 16 characters of the signed state: a cheap test before the HMAC.
            if not name.startswith(self.login_prefix) or value[:16] != name[len(self.login_prefix) :]:
                continue
            try:
                state, signed_at = self._login.unsign(value, return_timestamp=True)
            except (BadData, ValueError):
                continue
            if self.login_cookie_name(state.decode("ascii", "replace")) == name:
                found.append((name, signed_at.timestamp()))
        return sorted(found, key=lambda item: item[1])

    def login_belongs_to_browser(self, state: str, cookies: Mapping[str, str]) -> bool:
        value = cookies.get(self.login_cookie_name(state))
        if not value:
            return False
        try:
            signed = self._login.unsign(value, max_age=int(self.login_timeout)).decode("ascii")
        except (BadData, ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(signed, state)

    def clear_login(self, response: web.StreamResponse, state: str) -> None:
        self._clear(response, self.login_cookie_name(state))

    def is_own_cookie(self, name: str) -> bool:
        """The session, pending-login and break-glass cookies: never forwarded to the console, and never
        set by it.

        Compared without case and without a ``__Host-``/``__Secure-`` prefix: browsers match those
        prefixes case-insensitively (RFC 6265bis 4.1.3), so a console must not set a look-alike either.
        """
        key = name.lower()
        if key[:2] == "__":
            if key.startswith("__host-"):
                key = key[7:]
            elif key.startswith("__secure-"):
                key = key[9:]
        return key in self._own_names or key.startswith(self._own_prefix)

    # -- sign-out confirmation and post-logout state ----------------------------------------------

    def form_token(self, holder: str) -> str:
        """The settings page's CSRF token for ``holder`` (a session id, or a break-glass grant). It carries a
        digest of the holder, never the holder itself: a page must not show the session id."""
        return self._admin_form.sign(_holder_digest(holder)).decode("ascii")

    def check_form_token(self, token: str, holder: str) -> bool:
        try:
            value = self._admin_form.unsign(token, max_age=_ADMIN_FORM_MAX_AGE).decode("ascii")
        except (BadData, ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(value, _holder_digest(holder))

    def sign_out_token(self, session_id: str) -> str:
        return self._signout.sign(session_id).decode("ascii")

    def check_sign_out_token(self, token: str, session_id: str) -> bool:
        try:
            value = self._signout.unsign(token, max_age=3600).decode("ascii")
        except (BadData, ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(value, session_id)

    def encode_logout_state(self, return_to: str) -> str:
        return self._logout_state.dumps(return_to)

    def decode_logout_state(self, value: str | None) -> str | None:
        if not value:
            return None
        try:
            result = self._logout_state.loads(value, max_age=3600)
        except BadData:
            return None
        return result if isinstance(result, str) else None

    # -- break-glass cookie -------------------------------------------------------------------------

    def set_break_glass(self, response: web.StreamResponse, payload: str, *, max_age: int) -> None:
        """Let this browser past SSO for ``max_age`` seconds (not extended by use); ``payload`` is the grant."""
        value = self._break_glass.sign(payload).decode("ascii")
        # Strict: an operator override is never carried by a request another site started.
        self._set(response, self.break_glass_name, value, max_age=max_age, samesite="Strict")

    def decode_break_glass(self, value: str | None, *, max_age: int) -> str | None:
        """The payload of a break-glass cookie, or None when it is absent, forged or older than ``max_age``."""
        if not value:
            return None
        try:
            return self._break_glass.unsign(value, max_age=max_age).decode("ascii")
        except (BadData, ValueError, UnicodeDecodeError):
            return None

    # -- attributes ---------------------------------------------------------------------------------

    def _set(
        self,
        response: web.StreamResponse,
        name: str,
        value: str,
        *,
        max_age: int | None,
        samesite: str = "Lax",
    ) -> None:
        response.set_cookie(
            name,
            value,
            path="/",
            max_age=max_age,
            secure=self.secure,
            httponly=True,
            samesite=samesite,
        )

    def _clear(self, response: web.StreamResponse, name: str) -> None:
        response.set_cookie(
            name, "", path="/", max_age=0, expires="Thu, 01 Jan 1970 00:00:00 GMT",
            secure=self.secure, httponly=True, samesite="Lax",
        )  # fmt: skip
