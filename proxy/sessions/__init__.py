"""Server-side sessions and pending logins, encrypted at rest.

A session is stored under its id, sealed with AES-256-GCM under a key that only the user's cookie ticket
holds (``model.Ticket``). The store, and anyone who dumps it, sees ciphertext only.
Pending logins (state -> nonce, PKCE verifier, return URL) are stored the same way and taken exactly once.

``model``: the records and their sealing; ``manager``: ``SessionManager``, which stores them;
``store``: the ``SessionStore`` protocol behind it, implemented by ``memory`` and ``redis``; ``refresh``:
renewing a session's tokens when due. Which session a request belongs to is ``proxy.signin.current``'s.
"""

from __future__ import annotations

from proxy.sessions.manager import SessionManager
from proxy.sessions.memory import MemoryStore
from proxy.sessions.model import CompactClaims, PendingLogin, Session
from proxy.sessions.store import SessionStore, open_store

__all__ = [
    "CompactClaims",
    "MemoryStore",
    "PendingLogin",
    "Session",
    "SessionManager",
    "SessionStore",
    "open_store",
]
