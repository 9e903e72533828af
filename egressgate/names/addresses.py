"""classify_address(): is this IP address a public destination, and if not, what is it?

Pure. The table follows the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and
its updates). Addresses that embed an IPv4 address (IPv4-mapped ::ffff:0:0/96, IPv4-translated
::ffff:0:0:0/96 (RFC 2765), NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the embedded
address, so an internal IPv4 target cannot be reached by wrapping it in IPv6. The most specific
range wins.
"""

from __future__ import annotations

import functools
import ipaddress
from enum import StrEnum

from egressgate.names.hostname import IPAddress


class AddressClass(StrEnum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"  # RFC 1918, IPv6 site-local
    CGNAT = "cgnat"  # RFC 6598 shared address space
    LINK_LOCAL = "link-local"  # includes cloud metadata 169.254.169.254
    UNIQUE_LOCAL = "unique-local"  # fc00::/7, includes AWS fd00:ec2::254
    MULTICAST = "multicast"
    UNSPECIFIED = "unspecified"
    RESERVED = "reserved"  # documentation, benchmarking, protocol assignments, future use...


_A = AddressClass
_TABLE: list[tuple[str, AddressClass]] = [
    ("0.0.0.0/8", _A.UNSPECIFIED),  # "this network" (RFC 791); 0.0.0.0 reaches the local host
    ("10.0.0.0/8", _A.PRIVATE),
    ("100.64.0.0/10", _A.CGNAT),
    ("127.0.0.0/8", _A.LOOPBACK),
    ("169.254.0.0/16", _A.LINK_LOCAL),
    ("172.16.0.0/12", _A.PRIVATE),
    ("192.0.0.0/24", _A.RESERVED),  # IETF protocol assignments
    ("192.0.2.0/24", _A.RESERVED),  # TEST-NET-1
    ("192.88.99.0/24", _A.RESERVED),  # deprecated 6to4 relay anycast
    ("192.168.0.0/16", _A.PRIVATE),
    ("198.18.0.0/15", _A.RESERVED),  # benchmarking
    ("198.51.100.0/24", _A.RESERVED),  # TEST-NET-2
    ("203.0.113.0/24", _A.RESERVED),  # TEST-NET-3
    ("224.0.0.0/4", _A.MULTICAST),
    ("240.0.0.0/4", _A.RESERVED),  # future use, and 255.255.255.255 broadcast
    ("::/128", _A.UNSPECIFIED),
    ("::1/128", _A.LOOPBACK),
    ("::/96", _A.RESERVED),  # deprecated IPv4-compatible
    ("64:ff9b:1::/48", _A.PRIVATE),  # local-use NAT64 (RFC 8215)
    ("100::/64", _A.RESERVED),  # discard-only
    ("2001::/23", _A.RESERVED),  # IETF protocol assignments (Teredo 2001::/32 included)
    ("2001:db8::/32", _A.RESERVED),  # documentation
    ("3fff::/20", _A.RESERVED),  # documentation (RFC 9637)
    ("5f00::/16", _A.RESERVED),  # SRv6 SIDs
    ("fc00::/7", _A.UNIQUE_LOCAL),
    ("fe80::/10", _A.LINK_LOCAL),
    ("fec0::/10", _A.PRIVATE),  # deprecated site-local
    ("ff00::/8", _A.MULTICAST),
]
# Most specific first, so the first hit is the answer.
_NETWORKS = sorted(
    ((ipaddress.ip_network(net), cls) for net, cls in _TABLE),
    key=lambda item: -item[0].prefixlen,
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 SIIT IPv4-translated
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, translated, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


@functools.lru_cache(maxsize=8192)
def classify_address(address: IPAddress) -> AddressClass:
    """The special-purpose class of `address`, or PUBLIC.

    Cached: the table walk costs ~30 `in network` tests of pure-Python ipaddress code (tens of
    microseconds), and the same destination addresses come back request after request.
    """
    inner = embedded_ipv4(address)
    if inner is not None:
        return classify_address(inner)
    for network, cls in _NETWORKS:
        if address.version == network.version and address in network:
            return cls
    return AddressClass.PUBLIC
