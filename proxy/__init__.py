"""sso-sidecar: OpenID Connect single sign-on in front of a web console."""

__version__ = "0.1.0"
