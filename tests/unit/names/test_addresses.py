"""classify_address: boundary rows for every special-purpose range (first, last, just outside).

Ranges from the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and updates:
RFC 6598 CGNAT, RFC 8215 local-use NAT64, RFC 9637 3fff::/20 documentation). An address that
embeds an IPv4 address (IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96 per RFC 6052, 6to4
2002::/16 per RFC 3056) is judged by the embedded address. Nothing is sent anywhere: these are
values.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.names.addresses import AddressClass, classify_address, embedded_ipv4

PUBLIC = AddressClass.PUBLIC
LOOPBACK = AddressClass.LOOPBACK
PRIVATE = AddressClass.PRIVATE
CGNAT = AddressClass.CGNAT
LINK_LOCAL = AddressClass.LINK_LOCAL
UNIQUE_LOCAL = AddressClass.UNIQUE_LOCAL
MULTICAST = AddressClass.MULTICAST
UNSPECIFIED = AddressClass.UNSPECIFIED
RESERVED = AddressClass.RESERVED

IPV4_ROWS: list[tuple[str, AddressClass]] = [
    # 0.0.0.0/8 "this network" (RFC 791); 0.0.0.0 reaches the local host on Linux
    ("0.0.0.0", UNSPECIFIED),
    ("0.255.255.255", UNSPECIFIED),
    ("1.0.0.0", PUBLIC),
    # 10.0.0.0/8 (RFC 1918)
    ("9.255.255.255", PUBLIC),
    ("10.0.0.0", PRIVATE),
    ("10.255.255.255", PRIVATE),
    ("11.0.0.0", PUBLIC),
    # 100.64.0.0/10 shared address space (RFC 6598)
    ("100.63.255.255", PUBLIC),
    ("100.64.0.0", CGNAT),
    ("100.127.255.255", CGNAT),
    ("100.128.0.0", PUBLIC),
    # 127.0.0.0/8 loopback
    ("126.255.255.255", PUBLIC),
    ("127.0.0.0", LOOPBACK),
    ("127.0.0.1", LOOPBACK),
    ("127.255.255.255", LOOPBACK),
    ("128.0.0.0", PUBLIC),
    # 169.254.0.0/16 link-local (RFC 3927), including the cloud metadata address
    ("169.253.255.255", PUBLIC),
    ("169.254.0.0", LINK_LOCAL),
    ("169.254.169.254", LINK_LOCAL),
    ("169.254.255.255", LINK_LOCAL),
    ("169.255.0.0", PUBLIC),
    # 172.16.0.0/12 (RFC 1918)
    ("172.15.255.255", PUBLIC),
    ("172.16.0.0", PRIVATE),
    ("172.31.255.255", PRIVATE),
    ("172.32.0.0", PUBLIC),
    # 192.0.0.0/24 IETF protocol assignments
    ("191.255.255.255", PUBLIC),
    ("192.0.0.0", RESERVED),
    ("192.0.0.255", RESERVED),
    ("192.0.1.0", PUBLIC),
    # 192.0.2.0/24 TEST-NET-1 (RFC 5737)
    ("192.0.1.255", PUBLIC),
    ("192.0.2.0", RESERVED),
    ("192.0.2.255", RESERVED),
    ("192.0.3.0", PUBLIC),
    # 192.88.99.0/24 deprecated 6to4 relay anycast (RFC 7526)
    ("192.88.98.255", PUBLIC),
    ("192.88.99.0", RESERVED),
    ("192.88.99.255", RESERVED),
    ("192.88.100.0", PUBLIC),
    # 192.168.0.0/16 (RFC 1918)
    ("192.167.255.255", PUBLIC),
    ("192.168.0.0", PRIVATE),
    ("192.168.255.255", PRIVATE),
    ("192.169.0.0", PUBLIC),
    # 198.18.0.0/15 benchmarking (RFC 2544)
    ("198.17.255.255", PUBLIC),
    ("198.18.0.0", RESERVED),
    ("198.19.255.255", RESERVED),
    ("198.20.0.0", PUBLIC),
    # 198.51.100.0/24 TEST-NET-2
    ("198.51.99.255", PUBLIC),
    ("198.51.100.0", RESERVED),
    ("198.51.100.255", RESERVED),
    ("198.51.101.0", PUBLIC),
    # 203.0.113.0/24 TEST-NET-3
    ("203.0.112.255", PUBLIC),
    ("203.0.113.0", RESERVED),
    ("203.0.113.255", RESERVED),
    ("203.0.114.0", PUBLIC),
    # 224.0.0.0/4 multicast
    ("223.255.255.255", PUBLIC),
    ("224.0.0.0", MULTICAST),
    ("239.255.255.255", MULTICAST),
    # 240.0.0.0/4 future use, including the limited broadcast address
    ("240.0.0.0", RESERVED),
    ("255.255.255.254", RESERVED),
    ("255.255.255.255", RESERVED),
    # ordinary public addresses
    ("8.8.8.8", PUBLIC),
    ("1.1.1.1", PUBLIC),
]

IPV6_ROWS: list[tuple[str, AddressClass]] = [
    ("::", UNSPECIFIED),
    ("::1", LOOPBACK),
    # ::/96 deprecated IPv4-compatible (RFC 4291 §2.5.5.1)
    ("::2", RESERVED),
    ("::a00:1", RESERVED),
    ("::ffff:ffff", RESERVED),
    # ::ffff:0:0/96 IPv4-mapped: judged as the IPv4 address
    ("::ffff:0.0.0.0", UNSPECIFIED),
    ("::ffff:127.0.0.1", LOOPBACK),
    ("::ffff:10.0.0.1", PRIVATE),
    ("::ffff:169.254.169.254", LINK_LOCAL),
    ("::ffff:100.64.0.1", CGNAT),
    ("::ffff:8.8.8.8", PUBLIC),
    # ::ffff:0:0:0/96 IPv4-translated (RFC 2765 SIIT): judged as the IPv4 address
    ("::ffff:0:0:0", UNSPECIFIED),
    ("::ffff:0:7f00:1", LOOPBACK),
    ("::ffff:0:a00:1", PRIVATE),
    ("::ffff:0:a9fe:a9fe", LINK_LOCAL),  # cloud metadata, wrapped: was "public"
    ("::ffff:0:ac10:0", PRIVATE),
    ("::ffff:0:c0a8:101", PRIVATE),
    ("::ffff:0:6440:1", CGNAT),
    ("::ffff:0:808:808", PUBLIC),
    ("::ffff:0:ffff:ffff", RESERVED),
    ("::fffe:ffff:ffff:ffff", PUBLIC),  # just below the /96: no embedded address
    ("::ffff:1:0:0", PUBLIC),  # just past the /96: no embedded address
    # 64:ff9b::/96 NAT64 well-known prefix (RFC 6052): judged by the embedded IPv4 address
    ("64:ff9b::", UNSPECIFIED),
    ("64:ff9b::7f00:1", LOOPBACK),
    ("64:ff9b::a00:1", PRIVATE),
    ("64:ff9b::a9fe:a9fe", LINK_LOCAL),
    ("64:ff9b::ac10:0", PRIVATE),
    ("64:ff9b::808:808", PUBLIC),
    ("64:ff9b::ffff:ffff", RESERVED),
    ("64:ff9b::1:0:0", PUBLIC),  # just past the /96: no embedded address
    # 64:ff9b:1::/48 local-use NAT64 (RFC 8215): internal whatever it embeds
    ("64:ff9b:1::", PRIVATE),
    ("64:ff9b:1::808:808", PRIVATE),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", PRIVATE),
    ("64:ff9b:2::", PUBLIC),
    # 100::/64 discard-only (RFC 6666)
    ("100::", RESERVED),
    ("100::ffff:ffff:ffff:ffff", RESERVED),
    # 2001::/23 IETF protocol assignments, Teredo 2001::/32 included
    ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
    ("2001::", RESERVED),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", RESERVED),  # Teredo (RFC 4380)
    ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("2001:200::", PUBLIC),
    # 2001:db8::/32 documentation (RFC 3849)
    ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
    ("2001:db8::", RESERVED),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("2001:db9::", PUBLIC),
    # 2002::/16 6to4 (RFC 3056): judged by the IPv4 address in bits 16-47
    ("2002::", UNSPECIFIED),
    ("2002:7f00:1::", LOOPBACK),
    ("2002:a00:1::", PRIVATE),
    ("2002:a9fe:a9fe::1", LINK_LOCAL),
    ("2002:c0a8:101::", PRIVATE),
    ("2002:808:808::", PUBLIC),
    ("2003::", PUBLIC),
    # 3fff::/20 documentation (RFC 9637)
    ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUBLIC),
    ("3fff::", RESERVED),
    ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    ("3fff:1000::", PUBLIC),
    # 5f00::/16 SRv6 SIDs (RFC 9602)
    ("5f00::", RESERVED),
    ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED),
    # fc00::/7 unique local (RFC 4193), including AWS's IMDS IPv6 address
    ("fc00::", UNIQUE_LOCAL),
    ("fd00:ec2::254", UNIQUE_LOCAL),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", UNIQUE_LOCAL),
    # fe80::/10 link-local
    ("fe80::", LINK_LOCAL),
    ("fe80::1", LINK_LOCAL),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LINK_LOCAL),
    # fec0::/10 deprecated site-local (RFC 3879)
    ("fec0::", PRIVATE),
    ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PRIVATE),
    # ff00::/8 multicast
    ("ff00::", MULTICAST),
    ("ff02::1", MULTICAST),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", MULTICAST),
    # ordinary public addresses
    ("2606:4700:4700::1111", PUBLIC),
    ("2a00:1450:4001::1", PUBLIC),
]


@pytest.mark.parametrize(("text", "expected"), IPV4_ROWS, ids=[t for t, _ in IPV4_ROWS])
def test_ipv4_range_boundaries(text: str, expected: AddressClass) -> None:
    assert classify_address(ipaddress.IPv4Address(text)) is expected


@pytest.mark.parametrize(("text", "expected"), IPV6_ROWS, ids=[t for t, _ in IPV6_ROWS])
def test_ipv6_range_boundaries_and_embedded_ipv4(text: str, expected: AddressClass) -> None:
    assert classify_address(ipaddress.IPv6Address(text)) is expected


@pytest.mark.parametrize(
    ("text", "embedded"),
    [
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("2002:a00:1:1234::1", "10.0.0.1"),
        ("2001:db8::1", None),
        ("64:ff9b::1:0:0", None),
        ("10.0.0.1", None),  # an IPv4 address embeds nothing
    ],
)
def test_embedded_ipv4_of_mapped_nat64_and_6to4(text: str, embedded: str | None) -> None:
    expected = None if embedded is None else ipaddress.IPv4Address(embedded)
    assert embedded_ipv4(ipaddress.ip_address(text)) == expected


@given(st.integers(0, 2**32 - 1))
def test_wrapping_ipv4_in_mapped_nat64_or_6to4_never_changes_its_class(value: int) -> None:
    # An internal IPv4 target must not become reachable by writing it as IPv6.
    v4 = ipaddress.IPv4Address(value)
    expected = classify_address(v4)
    wrapped = [
        ipaddress.IPv6Address((0xFFFF << 32) | value),  # ::ffff:a.b.c.d
        ipaddress.IPv6Address((0x64FF9B << 96) | value),  # 64:ff9b::a.b.c.d
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),  # 2002:aabb:ccdd::
    ]
    assert [classify_address(a) for a in wrapped] == [expected] * 3


@given(st.integers(0, 2**128 - 1))
def test_every_ipv6_address_has_a_class(value: int) -> None:
    assert isinstance(classify_address(ipaddress.IPv6Address(value)), AddressClass)
