"""Who the client is: the connected address, or behind ``trusted_proxies`` the right-most address of the
``X-Forwarded-For`` chain that is not one of them (the left-most entries are whatever the client sent).

Used for what the console is told (``gate.forwarded_for``) and for per-client bounds (``client_address``,
``address_group``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from proxy.config.model import Settings


def is_trusted_proxy(address: str | None, settings: Settings) -> bool:
    """True when ``address`` is in ``trusted_proxies``: only then are its X-Forwarded-* believed."""
    if not address or not settings.trusted_proxies:
        return False
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in settings.trusted_proxies)


def client_address(request: web.BaseRequest, settings: Settings) -> str:
    remote = request.remote or ""
    return proxied_chain(request, settings, remote)[1] if is_trusted_proxy(remote, settings) else remote


def proxied_chain(request: web.BaseRequest, settings: Settings, remote: str) -> tuple[list[str], str]:
    """For a request from a trusted proxy at ``remote``: its X-Forwarded-For chain extended with ``remote``,
    and the client (the right-most address that is not a trusted proxy)."""
    chain = [*addresses(request.headers.getall("X-Forwarded-For", ())), remote]
    client = next((a for a in reversed(chain) if not is_trusted_proxy(a, settings)), chain[0])
    return chain, client


def addresses(values: Iterable[str]) -> list[str]:
    result = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            try:
                result.append(str(ipaddress.ip_address(item.strip("[]"))))
            except ValueError:
                continue  # "unknown", obfuscated identifiers (RFC 7239 6.3) or junk: not an address
    return result


def address_group(address: str) -> str:
    """What a per-client bound counts by: an IPv4 address, or an IPv6 /64 (one subscriber's network; an
    attacker holds all of its 2^64 addresses, so counting each one would bound nothing)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def names_host(request: web.BaseRequest, settings: Settings, host: str) -> bool:
    """Whether the browser asked for ``host`` (lower case): in ``Host``, or in ``X-Forwarded-Host`` from a
    trusted proxy (one that rewrites ``Host`` for the console still says what the browser asked for)."""
    if request.host.lower() == host:
        return True
    if not is_trusted_proxy(request.remote, settings):
        return False
    forwarded = request.headers.get("X-Forwarded-Host", "")
    return forwarded.split(",", 1)[0].strip().lower() == host
