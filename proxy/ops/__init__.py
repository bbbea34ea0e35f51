"""For operators: ``/oauth2/status``, ``/healthz`` and ``/readyz``."""
