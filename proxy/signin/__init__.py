"""Signing in and out: the login flow, back-channel logout, and which session a request belongs to (``current``)."""
