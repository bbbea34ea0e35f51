"""The OpenID Connect relying party: the client flows, discovery, signing keys, token rules and bounded provider HTTP.

No ``aiohttp.web`` here: nothing in this package knows about requests to the sidecar.
"""
