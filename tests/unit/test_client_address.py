"""TRUSTED_PROXIES: which address is the client's (app.lib.client_address)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from app.lib.client_address import (
    MAX_HEADER_LENGTH,
    ProxyHeadersMiddleware,
    TrustedProxies,
    limit_subject,
    parse_address,
    parse_networks,
)

NGINX = TrustedProxies.from_strings(["10.0.0.0/8", "192.168.1.10"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.5", "203.0.113.5"),
        (" 203.0.113.5 ", "203.0.113.5"),
        ("203.0.113.5:4711", "203.0.113.5"),
        ('"203.0.113.5"', "203.0.113.5"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ('"[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_addresses_as_proxies_write_them(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "unknown", "_hidden", "999.1.1.1", "1.2.3.4:port", "[::1", "[::1]x", "[::1]:", "a" * 100, "1.2.3.4, 5.6.7.8"],
)
def test_malformed_addresses_are_none(text: str) -> None:
    assert parse_address(text) is None


def test_untrusted_peer_headers_are_ignored() -> None:
    assert NGINX.resolve("203.0.113.9", "1.1.1.1", None) == "203.0.113.9"
    assert NGINX.resolve("203.0.113.9", None, "for=1.1.1.1") == "203.0.113.9"
    assert TrustedProxies.from_strings([]).resolve("10.0.0.1", "1.1.1.1", None) == "10.0.0.1"
    assert not TrustedProxies.from_strings([])


def test_trusted_peer_rightmost_untrusted_hop_is_the_client() -> None:
    assert NGINX.resolve("10.0.0.1", "203.0.113.5", None) == "203.0.113.5"
    # The client wrote the left part itself: only what trusted proxies appended counts.
    assert NGINX.resolve("10.0.0.1", "6.6.6.6, 203.0.113.5", None) == "203.0.113.5"
    # Two trusted proxies in a row.
    assert NGINX.resolve("10.0.0.1", "6.6.6.6, 203.0.113.5, 192.168.1.10", None) == "203.0.113.5"
    # Everything trusted: the leftmost hop (a client inside the trusted range).
    assert NGINX.resolve("10.0.0.1", "10.1.1.1, 10.2.2.2", None) == "10.1.1.1"
    # IPv4-mapped peer.
    assert NGINX.resolve("::ffff:10.0.0.1", "203.0.113.5", None) == "203.0.113.5"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("garbage", "10.0.0.1"),
        ("", "10.0.0.1"),
        (",,,", "10.0.0.1"),
        ("garbage, 203.0.113.5", "203.0.113.5"),
        ("203.0.113.5, garbage", "10.0.0.1"),
        ("6.6.6.6, garbage, 10.3.3.3", "10.3.3.3"),
        ('\x00\xff;="[]', "10.0.0.1"),
        ("1.1.1.1, " * 2000 + "203.0.113.5", "10.0.0.1"),  # over MAX_HEADER_LENGTH: not parsed
    ],
)
def test_malformed_forwarded_for_stops_at_the_last_good_hop(xff: str, expected: str) -> None:
    assert NGINX.resolve("10.0.0.1", xff, None) == expected


def test_only_the_last_hops_are_read() -> None:
    assert len("10.9.9.9, " * 100) < MAX_HEADER_LENGTH
    # 100 trusted hops after the client: the walk stops after MAX_HOPS, at a trusted hop, not at 6.6.6.6.
    assert NGINX.resolve("10.0.0.1", "6.6.6.6, " + "10.9.9.9, " * 100 + "10.9.9.9", None) == "10.9.9.9"


def test_forwarded_header_when_there_is_no_x_forwarded_for() -> None:
    assert NGINX.resolve("10.0.0.1", None, "for=203.0.113.5;proto=https;by=10.0.0.1") == "203.0.113.5"
    assert NGINX.resolve("10.0.0.1", None, 'for=6.6.6.6, For="[2001:db8:cafe::17]:4711"') == "2001:db8:cafe::17"
    assert NGINX.resolve("10.0.0.1", None, "for=_hidden") == "10.0.0.1"
    assert NGINX.resolve("10.0.0.1", None, "proto=https") == "10.0.0.1"
    # X-Forwarded-For wins: a proxy that sets it passes a client's own Forwarded through untouched.
    assert NGINX.resolve("10.0.0.1", "203.0.113.5", "for=6.6.6.6") == "203.0.113.5"


def test_bad_trusted_proxies_setting_names_the_item() -> None:
    assert parse_networks(["10.0.0.0/8", " ", "::1"]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match="nginx"):
        parse_networks(["10.0.0.0/8", "nginx"])


def test_limit_subject_groups_ipv6_by_64() -> None:
    assert limit_subject("203.0.113.5") == "203.0.113.5"
    assert limit_subject("::ffff:203.0.113.5") == "203.0.113.5"
    assert limit_subject("2001:db8:1:2:aaaa::1") == limit_subject("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert limit_subject("2001:db8:1:3::1") != limit_subject("2001:db8:1:2::1")
    assert limit_subject(None) == limit_subject("testclient") == "unknown"


async def test_middleware_rewrites_the_scope_client() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = ProxyHeadersMiddleware(app, NGINX)
    headers = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"203.0.113.5")]
    await middleware({"type": "http", "client": ("10.0.0.1", 5555), "headers": headers}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "http", "client": ("198.51.100.1", 5555), "headers": headers}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "http", "client": None, "headers": headers}, None, None)  # type: ignore[arg-type]
    assert seen[0]["client"] == ("203.0.113.5", 0)
    assert seen[0]["state"]["peer"] == "10.0.0.1"
    assert seen[1]["client"] == ("198.51.100.1", 5555)
    assert "state" not in seen[1]
    assert seen[2]["client"] is None
