"""What the sidecar tells operators: log lines (text or JSON), the access log, the Prometheus metrics."""
