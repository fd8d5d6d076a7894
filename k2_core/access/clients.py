"""Who is on the other end of a request: decided on the socket peer and the proxy headers, never on the address
the server was configured to bind.

A request is **local** when its socket peer is a loopback address and it carries no proxy header (`Forwarded`,
`X-Forwarded-For`, `X-Real-IP`): a proxy on the same host connects from loopback too, and says so only in those
headers. Through proxies listed in `auth.trusted_proxies` the client is read from the headers, right to left
(each trusted hop appends the address it saw), and is local only if that address is loopback too. A proxy header
from any other hop cannot be believed: such a request is never local, and is known by its socket peer.

`Origin.key` is what per-client limits count against: the address, or an IPv6 address's /64 (one host is
usually given a whole /64, so counting single IPv6 addresses would give it 2**64 budgets).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
MAX_ADDRESS_CHARS = 100  # as stored in the audit log's `client`


@dataclass(frozen=True)
class Origin:
    address: str | None  # the client as far as the trusted hops tell: the socket peer unless trusted proxies say more
    local: bool  # a loopback client, directly or through trusted proxies only
    proxied: bool  # a proxy header was present, trusted or not

    @property
    def key(self) -> str:
        parsed = parse_address(self.address)
        if isinstance(parsed, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((parsed, 64), strict=False))
        return str(parsed) if parsed is not None else f"unknown:{(self.address or '')[:MAX_ADDRESS_CHARS]}"


def parse_address(text: str | None) -> IPAddress | None:
    """An IP address from a peer or a forwarded value (`[v6]:port`, `v4:port`, quotes), IPv4-mapped IPv6 as IPv4;
    None for anything else (a host name, `unknown`, an obfuscated RFC 7239 identifier, a Unix socket)."""
    if not text:
        return None
    value = text.strip().strip('"')
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_address(text: str | None) -> bool:
    address = parse_address(text)
    return address is not None and address.is_loopback


def forwarded_for(value: str) -> list[str]:
    """The `for=` values of an RFC 7239 `Forwarded` header, in order (empty text for an element without one)."""
    found = []
    for element in value.split(","):
        pairs = (pair.partition("=") for pair in element.split(";"))
        found.append(next((v.strip() for k, _, v in pairs if k.strip().lower() == "for"), ""))
    return found


class Origins:
    """Tells a request's `Origin` from its socket peer and headers."""

    def __init__(self, trusted_proxies: Sequence[IPNetwork] = ()) -> None:
        self.trusted = tuple(trusted_proxies)

    def trusts(self, address: str | None) -> bool:
        parsed = parse_address(address)
        return parsed is not None and any(parsed in network for network in self.trusted)

    def of(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> Origin:
        chains: dict[bytes, list[str]] = {}
        for name, value in headers:
            name = name.lower()
            if name in PROXY_HEADERS:
                text = value.decode("latin-1")
                hops = forwarded_for(text) if name == b"forwarded" else [h.strip() for h in text.split(",")]
                chains.setdefault(name, []).extend(hops)
        if not chains:
            return Origin(_normal(peer), is_loopback_address(peer), proxied=False)
        if not self.trusts(peer):
            return Origin(_normal(peer), local=False, proxied=True)
        # Every kind of header present must lead to a local client for the request to be local.
        clients = [self._client(peer, chain) for chain in chains.values()]
        outside = [c for c in clients if not is_loopback_address(c)]
        return Origin(_normal(outside[0] if outside else clients[0]), local=not outside, proxied=True)

    def _client(self, peer: str | None, chain: list[str]) -> str | None:
        """Right to left through the hops, past every trusted one: the first address no trusted hop vouches for."""
        client = peer
        for hop in reversed(chain):
            if parse_address(hop) is None:  # `unknown`, an obfuscated identifier: no address to believe
                return hop or None
            client = hop
            if not self.trusts(hop):
                return hop
        return client


def _normal(text: str | None) -> str | None:
    """An address as the audit log and the limits know it: the bare IP when there is one, else the text (cut)."""
    parsed = parse_address(text)
    return str(parsed) if parsed is not None else text[:MAX_ADDRESS_CHARS] if text else None
