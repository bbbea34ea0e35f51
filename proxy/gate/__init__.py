"""Every request that is not the sidecar's own: the decision and the proxying, forward auth for front
proxies, and break-glass access."""
