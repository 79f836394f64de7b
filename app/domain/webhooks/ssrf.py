"""The SSRF guard: endpoint URLs must be http(s) and resolve only to public addresses, checked when an
endpoint is registered and again at every delivery (DNS can change). A delivery connects to the very address
it checked (the URL's host is pinned to it; `Host` and TLS SNI keep the name), so a DNS answer that changes
between the check and the connection cannot redirect it. `WEBHOOK_ALLOW_PRIVATE_NETWORKS=true` lifts the
address rule (tests, local development)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_SCHEMES = frozenset({"http", "https"})


class InvalidWebhookUrl(ValueError):
    """Not a usable absolute URL at all (malformed, no host)."""


class RefusedWebhookUrl(ValueError):
    """A well-formed URL the guard refuses: another scheme, or a host on a non-public address."""


def parse_url(raw: str) -> httpx.URL:
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in raw):
        raise InvalidWebhookUrl("a URL has no spaces or control characters (percent-encode them)")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidWebhookUrl(f"not a valid URL: {exc}") from exc
    if url.scheme not in ALLOWED_SCHEMES:
        raise RefusedWebhookUrl(f"only http and https URLs are allowed, not {url.scheme or 'a relative URL'!r}")
    if not url.host:
        raise InvalidWebhookUrl("the URL has no host")
    if url.port is not None and not 0 < url.port < 65536:
        raise InvalidWebhookUrl(f"invalid port {url.port}")
    return url


def is_forbidden(address: IPAddress) -> bool:
    """Loopback, private, link-local, multicast, unspecified, reserved or otherwise non-global addresses; an
    IPv4-mapped/compatible IPv6 address is judged by its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_forbidden(mapped)
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal address is itself)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedWebhookUrl(f"the host {host!r} does not resolve") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise RefusedWebhookUrl(f"the host {host!r} does not resolve")
    return addresses


def default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def check_addresses(url: httpx.URL, *, allow_private: bool) -> list[IPAddress]:
    """The addresses to connect to; refuses when any of them is not public (unless allowed)."""
    addresses = await resolve(url.host, default_port(url))
    if not allow_private:
        for address in addresses:
            if is_forbidden(address):
                raise RefusedWebhookUrl(
                    f"the host {url.host!r} resolves to {address}, a loopback, private, link-local, multicast or "
                    "otherwise non-public address"
                )
    return addresses


@dataclass(frozen=True)
class PinnedTarget:
    """The request's URL with its host replaced by the checked address, and what keeps the name."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def pin(url: httpx.URL, address: IPAddress) -> PinnedTarget:
    if _literal(url.host) is not None:
        return PinnedTarget(url=url)
    host_header = url.host if url.port is None else f"{url.host}:{url.port}"
    extensions: dict[str, Any] = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return PinnedTarget(url=url.copy_with(host=str(address)), headers={"Host": host_header}, extensions=extensions)


async def checked_target(raw: str, *, allow_private: bool) -> PinnedTarget:
    """For a delivery: parse, resolve, check, pin to the first address."""
    url = parse_url(raw)
    addresses = await check_addresses(url, allow_private=allow_private)
    return pin(url, addresses[0])
