"""The SSO settings page (``/oauth2/admin``): its handlers, who may do what, Test login, the record and where it
lives, and how every process applies it."""
