"""Who the client is (k2_core.access.clients): the socket peer, and proxy headers only through trusted hops."""

from __future__ import annotations

import ipaddress

import pytest

from k2_core.access.clients import Origin, Origins, parse_address

TRUSTED = Origins([ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("10.0.0.0/8")])


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in values.items()]


@pytest.mark.parametrize(
    ("peer", "sent", "expected"),
    [
        ("127.0.0.1", {}, Origin("127.0.0.1", local=True, proxied=False)),
        ("::1", {}, Origin("::1", local=True, proxied=False)),
        ("::ffff:127.0.0.1", {}, Origin("127.0.0.1", local=True, proxied=False)),
        ("192.0.2.9", {}, Origin("192.0.2.9", local=False, proxied=False)),
        ("testclient", {}, Origin("testclient", local=False, proxied=False)),  # not an address: not loopback
        (None, {}, Origin(None, local=False, proxied=False)),  # a Unix socket: a proxy may sit behind it
        # No trusted proxies: any proxy header from loopback means "forwarded from somewhere".
        ("127.0.0.1", {"X_Forwarded_For": "127.0.0.1"}, Origin("127.0.0.1", local=False, proxied=True)),
    ],
)
def test_without_trusted_proxies(peer: str | None, sent: dict[str, str], expected: Origin) -> None:
    assert Origins().of(peer, headers(**sent)) == expected


@pytest.mark.parametrize(
    ("peer", "sent", "address", "local"),
    [
        ("127.0.0.1", {"X_Forwarded_For": "127.0.0.1"}, "127.0.0.1", True),
        ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7"}, "203.0.113.7", False),
        ("127.0.0.1", {"X_Forwarded_For": "127.0.0.1, 203.0.113.7"}, "203.0.113.7", False),  # spoofed first hop
        ("127.0.0.1", {"X_Forwarded_For": "203.0.113.7, 10.1.2.3"}, "203.0.113.7", False),  # two trusted hops
        ("127.0.0.1", {"X_Forwarded_For": "127.0.0.1, 10.1.2.3"}, "127.0.0.1", True),
        ("192.0.2.9", {"X_Forwarded_For": "127.0.0.1"}, "192.0.2.9", False),  # an untrusted hop says nothing
        ("127.0.0.1", {"Forwarded": 'for="[::1]:4711";proto=https'}, "::1", True),
        ("127.0.0.1", {"Forwarded": "for=unknown"}, "unknown", False),
        ("127.0.0.1", {"Forwarded": "for=_hidden, for=127.0.0.1"}, "_hidden", False),
        ("127.0.0.1", {"X_Forwarded_For": "127.0.0.1", "X_Real_IP": "203.0.113.7"}, "203.0.113.7", False),
    ],
)
def test_through_trusted_proxies(peer: str, sent: dict[str, str], address: str, local: bool) -> None:
    origin = TRUSTED.of(peer, headers(**sent))
    assert (origin.address, origin.local, origin.proxied) == (address, local, True)


def test_clients_are_counted_by_address_and_ipv6_by_its_64() -> None:
    assert Origin("192.0.2.9", local=False, proxied=False).key == "192.0.2.9"
    assert Origin("2001:db8:1:2:aaaa::1", local=False, proxied=False).key == "2001:db8:1:2::/64"
    assert Origin("[2001:db8:1:2::9]:443", local=False, proxied=False).key == "2001:db8:1:2::/64"
    assert Origin(None, local=False, proxied=False).key == "unknown:"
    assert parse_address("192.0.2.9:8080") == ipaddress.ip_address("192.0.2.9")
    assert parse_address("localhost") is None
