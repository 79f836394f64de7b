"""The client's address behind reverse proxies (`TRUSTED_PROXIES`).

`X-Forwarded-For` and `Forwarded` are anyone's to send, so they are believed only when the TCP peer is a
trusted proxy, and then only as far as the chain of trusted proxies goes: the list is read from the right
(the hop the nearest proxy added) and the first address that is not a trusted proxy is the client. With no
trusted proxies (the default) the headers are ignored and the peer is the client.

`X-Forwarded-For` is used when present (nginx, HAProxy, Envoy, Traefik and Caddy all set it); `Forwarded`
(RFC 7239) only when it is absent, since a proxy that sets one header usually passes the other through from
the client untouched. A malformed entry stops the walk at the last good hop: never an error, and never an
address the trusted chain did not vouch for.

`ProxyHeadersMiddleware` writes the resolved address into the ASGI scope's `client` (the peer stays in
`scope["state"]["peer"]`), so the access log, the failed-authentication limiter and Litestar's
`request.client` all see the same address."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from litestar.types import ASGIApp, Receive, Scope, Send

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Only this many hops are read from the right of a forwarding header: a long list cannot cost more.
MAX_HOPS = 16
# Longer header values are not parsed at all (the peer is the client).
MAX_HEADER_LENGTH = 4096


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs or single addresses; raises ValueError naming the bad item."""
    networks: list[IPNetwork] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {text!r} is not an IP address or CIDR") from exc
    return tuple(networks)


def parse_address(text: str) -> IPAddress | None:
    """An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`,
    possibly quoted; IPv4-mapped IPv6 comes out as IPv4. None when it is none of those (e.g. `unknown`)."""
    value = text.strip().strip('"').strip()
    if not value or len(value) > 64:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # IPv4 with a port
        host, _, port = value.partition(":")
        if not port.isdigit():
            return None
        value = host
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(value: str) -> list[str]:
    """The `for=` values of a `Forwarded` header, in order (an element without one is an empty string)."""
    out: list[str] = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep and name.strip().lower() == "for":
                found = val.strip()
                break
        out.append(found)
    return out


class TrustedProxies:
    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self.is_trusted = lru_cache(maxsize=4096)(self._is_trusted)

    @classmethod
    def from_strings(cls, items: Iterable[str]) -> TrustedProxies:
        return cls(parse_networks(items))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def resolve(self, peer: str, forwarded_for: str | None, forwarded: str | None) -> str:
        """The client's address given the TCP peer and the joined `X-Forwarded-For` / `Forwarded` values."""
        peer_address = parse_address(peer)
        if peer_address is None or not self.is_trusted(peer_address):
            return peer
        if forwarded_for is not None:
            hops = forwarded_for.split(",") if len(forwarded_for) <= MAX_HEADER_LENGTH else []
        elif forwarded is not None:
            hops = _forwarded_for(forwarded) if len(forwarded) <= MAX_HEADER_LENGTH else []
        else:
            hops = []
        current = peer_address
        for raw in reversed(hops[-MAX_HOPS:]):
            address = parse_address(raw)
            if address is None:
                break
            current = address
            if not self.is_trusted(address):
                break
        return str(current)


_XFF = b"x-forwarded-for"
_FORWARDED = b"forwarded"


def _joined(values: list[bytes]) -> str | None:
    if not values:
        return None
    return ",".join(v.decode("latin-1") for v in values)


class ProxyHeadersMiddleware:
    """Outermost ASGI layer when TRUSTED_PROXIES is set: puts the resolved client address in `scope["client"]`."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if client:
                xff: list[bytes] = []
                fwd: list[bytes] = []
                for name, value in scope.get("headers", ()):
                    if name == _XFF:
                        xff.append(value)
                    elif name == _FORWARDED:
                        fwd.append(value)
                if xff or fwd:
                    host = self.proxies.resolve(client[0], _joined(xff), _joined(fwd))
                    if host != client[0]:
                        scope.setdefault("state", {})["peer"] = client[0]
                        scope["client"] = (host, 0)
        await self.app(scope, receive, send)


@lru_cache(maxsize=8192)  # parsing is most of a refused request's cost; an evicted entry is parsed again
def limit_subject(host: str | None) -> str:
    """What the failed-authentication limit counts against: an IPv4 address, or an IPv6 /64 (one host usually
    has a whole /64 to pick addresses from); anything else (no address) as `unknown`."""
    address = parse_address(host) if host else None
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
