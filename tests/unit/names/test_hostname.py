"""normalize_host / normalize_name / parse_ipv4_any: one canonical form for every destination.

The IPv4 rules follow the WHATWG URL Standard, "IPv4 parser" and "ends in a number checker"
(https://url.spec.whatwg.org/#concept-ipv4-parser), which match inet_aton(3): 1 to 4 parts, each
decimal, 0x-hex or 0-octal, the last part filling the remaining bytes; and a host whose last
label is numeric IS an IPv4 attempt, invalid if it does not parse.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from egressgate.names.hostname import (
    Host,
    InvalidHost,
    address_texts,
    normalize_host,
    normalize_name,
    parse_ipv4_any,
)


def _v4(text: str) -> Host:
    return Host(None, ipaddress.IPv4Address(text))


def _v6(text: str) -> Host:
    return Host(None, ipaddress.IPv6Address(text))


def _name(text: str) -> Host:
    return Host(text, None)


# ---------------------------------------------------------------------------------------------
# Hostnames
# ---------------------------------------------------------------------------------------------

NAMES: list[tuple[str, str]] = [
    ("example.com", "example.com"),
    ("Example.COM", "example.com"),
    ("EXAMPLE.COM.", "example.com"),  # one trailing dot: the absolute form of the same name
    ("  example.com\t", "example.com"),  # surrounding whitespace is not part of the host
    ("a", "a"),  # single-label names (cluster-local services) are names
    ("_dmarc.example.com", "_dmarc.example.com"),  # underscore labels are real (SRV, DMARC)
    ("a-b.example", "a-b.example"),
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),  # already punycode: unchanged
    ("b\u00fccher.de", "xn--bcher-kva.de"),  # IDNA → punycode (UTS #46)
    ("B\u00dcCHER.de", "xn--bcher-kva.de"),  # UTS #46 maps case before punycode
    ("\u00df.de", "xn--zca.de"),  # IDNA2008 nontransitional: ß stays ß (not "ss")
    ("b\u00fccher.de\u3002", "xn--bcher-kva.de"),  # an ideographic full stop is a dot
    ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "example.com"),  # fullwidth letters
    ("1e3", "1e3"),  # last label not numeric (not even as hex): a name
    ("foo.1a", "foo.1a"),
    ("foo.0xg", "foo.0xg"),  # "0xg" is not a hex number: the WHATWG check says "name"
    ("0x7f_000001", "0x7f_000001"),  # ditto: underscore makes it a (weird) name, not a number
    ("a" * 63 + ".com", "a" * 63 + ".com"),  # the longest label (RFC 1035 §2.3.4: 63 octets)
    (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253
]


@pytest.mark.parametrize(("raw", "expected"), NAMES, ids=[repr(r) for r, _ in NAMES])
def test_hostname_is_lowercase_punycode_without_trailing_dot(raw: str, expected: str) -> None:
    assert normalize_host(raw) == _name(expected)
    assert normalize_name(raw) == expected


# ---------------------------------------------------------------------------------------------
# IP literals in every spelling
# ---------------------------------------------------------------------------------------------

IPV4_SPELLINGS: list[tuple[str, str]] = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),  # one decimal part: all 32 bits
    ("0x7f000001", "127.0.0.1"),  # one hex part
    ("0X7F000001", "127.0.0.1"),  # hex prefix and digits are case-insensitive
    ("017700000001", "127.0.0.1"),  # one octal part
    ("0177.0.0.1", "127.0.0.1"),  # octal first part
    ("0177.0.0.01", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # short: the last part fills 3 bytes
    ("127.0.1", "127.0.0.1"),  # the last part fills 2 bytes
    ("10.1", "10.0.0.1"),
    ("0x7f.1", "127.0.0.1"),  # mixed bases
    ("0x7f.0.0x0.01", "127.0.0.1"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),  # cloud metadata, hex
    ("0251.0376.0251.0376", "169.254.169.254"),  # cloud metadata, octal
    ("2852039166", "169.254.169.254"),  # cloud metadata, decimal
    ("169.254.43518", "169.254.169.254"),
    ("127.0.0.1.", "127.0.0.1"),  # trailing dot
    ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"),  # WHATWG: "0x" alone is 0 (a validation error, not a failure)
    ("00000000000000000000001", "0.0.0.1"),  # leading zeros do not overflow octal
    ("4294967295", "255.255.255.255"),  # the largest single part
    ("255.255.255.255", "255.255.255.255"),
    ("1.2.65535", "1.2.255.255"),  # the largest 2-byte last part
    ("1.16777215", "1.255.255.255"),  # the largest 3-byte last part
    # Fullwidth digits and ideographic full stops map to ASCII under UTS #46, and the WHATWG
    # host parser maps BEFORE the ends-in-a-number check: these ARE 127.0.0.1.
    ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),
    ("127\u30020\u30020\u30021", "127.0.0.1"),
    ("127.0.0.\uff11", "127.0.0.1"),
]


@pytest.mark.parametrize(("raw", "expected"), IPV4_SPELLINGS, ids=[r for r, _ in IPV4_SPELLINGS])
def test_every_ipv4_spelling_normalizes_to_the_address(raw: str, expected: str) -> None:
    assert normalize_host(raw) == _v4(expected)


IPV6_SPELLINGS: list[tuple[str, Host]] = [
    ("[::1]", _v6("::1")),
    ("::1", _v6("::1")),  # unbracketed IPv6 (a CONNECT target after the port is split off)
    ("[0:0:0:0:0:0:0:1]", _v6("::1")),
    ("[2001:DB8::A]", _v6("2001:db8::a")),
    ("[fd00:ec2::254]", _v6("fd00:ec2::254")),
    # IPv4-mapped IPv6 reaches the IPv4 host: it is normalized to that host.
    ("[::ffff:127.0.0.1]", _v4("127.0.0.1")),
    ("[::ffff:7f00:1]", _v4("127.0.0.1")),
    ("::ffff:7f00:1", _v4("127.0.0.1")),
    ("[::FFFF:a9fe:a9fe]", _v4("169.254.169.254")),
    # NAT64 and 6to4 stay IPv6 here (classify_address looks inside them).
    ("[64:ff9b::7f00:1]", _v6("64:ff9b::7f00:1")),
]


@pytest.mark.parametrize(("raw", "expected"), IPV6_SPELLINGS, ids=[r for r, _ in IPV6_SPELLINGS])
def test_ipv6_literals_with_and_without_brackets_and_mapped_ipv4(raw: str, expected: Host) -> None:
    assert normalize_host(raw) == expected


def test_normalize_name_refuses_ip_literals() -> None:
    for raw in ("127.0.0.1", "2130706433", "[::1]", "::ffff:127.0.0.1"):
        with pytest.raises(InvalidHost, match="IP address"):
            normalize_name(raw)


# ---------------------------------------------------------------------------------------------
# Invalid hosts
# ---------------------------------------------------------------------------------------------

INVALID: list[str] = [
    "",
    " ",
    ".",
    "..",
    "a..b",  # empty label
    ".a.com",
    "example.com..",  # only ONE trailing dot is the absolute form
    "-a.com",  # RFC 952/1123: labels do not start or end with a hyphen
    "a-.com",
    "a" * 64 + ".com",  # label longer than 63
    ".".join(["a" * 63] * 4),  # 255 > 253
    "a b.com",
    "a\x00b.com",
    "a\n.com",  # a newline must not hide behind a regex `$`
    "a\r\nb.com",
    "user@example.com",  # userinfo is not a host
    "example.com/path",
    "*.example.com",
    "xn--.com",
    # WHATWG "ends in a number": the last label is numeric, so it is an IPv4 attempt...
    "1.2.3.4.5",  # ...with too many parts
    "x.09",  # ...with a non-name first part and an invalid octal last part
    "x.1",
    "example.0x",  # "0x" alone is a number (0): an IPv4 attempt that fails on "example"
    "09",  # 9 is not an octal digit
    "08.1",
    "256.0.0.1",  # a leading part over 255
    "1.256.0.1",
    "1.2.65536",  # the last part overflows its 2 bytes
    "1.16777216",
    "4294967296",  # 2**32
    "0x100000000",
    "1.2.3.4..",
    # int() accepts these, inet_aton(3) and WHATWG do not:
    "+1.0.0.1",
    "1_0.0.0.1",
    "0x1_0.1",
    "1. 2.3.4",
    "127\n.0.0.1",
    "\u0661\u0662\u0667.0.0.1",  # Arabic-Indic digits
    # IPv6
    "[]",
    "[::1",
    "[127.0.0.1]",  # brackets are for IPv6 only
    "[fe80::1%eth0]",  # zone identifiers are refused (RFC 6874 is not for URLs we forward)
    "fe80::1%25eth0",
    "[::1]:80",  # a port is not part of the host
    "a.b.c:80",
    "1:2:3:4:5:6:7:8:9",
    "[v1.fe80::a+en1]",  # IPvFuture
]


@pytest.mark.parametrize("raw", INVALID, ids=[repr(r) for r in INVALID])
def test_invalid_host_raises_invalid_host(raw: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(raw)


def test_zone_identifier_refusal_says_why() -> None:
    with pytest.raises(InvalidHost, match="zone"):
        normalize_host("[fe80::1%eth0]")


def test_invalid_host_is_a_value_error() -> None:
    # Config code catches ValueError from every model parser; InvalidHost must be one.
    assert issubclass(InvalidHost, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", "0.0.0.1"), ("1.2", "1.0.0.2"), ("1.2.3", "1.2.0.3"), ("1.2.3.4", "1.2.3.4")],
)
def test_parse_ipv4_any_last_part_fills_remaining_bytes(raw: str, expected: str) -> None:
    assert parse_ipv4_any(raw) == ipaddress.IPv4Address(expected)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def _part(value: int, base: str, pad: int) -> str:
    """`value` in `base`: "d" decimal, "x"/"X" hex (0x/0X), "o" octal; `pad` extra leading 0s."""
    if base == "d":
        return str(value)  # no padding: a leading 0 would make it octal
    if base in ("x", "X"):
        return ("0x" if base == "x" else "0X") + "0" * pad + format(value, base)
    return "0" * (pad + 1) + format(value, "o")  # the leading 0 marks octal


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> tuple[int, str]:
    """An IPv4 integer and one inet_aton spelling of it: 1-4 parts, each in a random base."""
    value = draw(st.integers(0, 2**32 - 1))
    count = draw(st.integers(1, 4))
    octets = value.to_bytes(4, "big")
    leading = list(octets[: count - 1])
    last = int.from_bytes(octets[count - 1 :], "big")
    parts = [
        _part(n, draw(st.sampled_from("dxXo")), draw(st.integers(0, 3))) for n in [*leading, last]
    ]
    text = ".".join(parts)
    if draw(st.booleans()):
        text += "."
    return value, text


@given(ipv4_spellings())
def test_every_spelling_of_an_ipv4_integer_normalizes_to_the_same_address(
    case: tuple[int, str],
) -> None:
    value, text = case
    assert normalize_host(text) == Host(None, ipaddress.IPv4Address(value))


@given(st.integers(0, 2**32 - 1))
def test_decimal_hex_octal_dotted_and_mapped_spellings_agree(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    spellings = [
        str(value),
        hex(value),
        "0" + format(value, "o"),
        str(address),
        f"[::ffff:{address}]",
        f"::ffff:{value >> 16:x}:{value & 0xFFFF:x}",
    ]
    assert {normalize_host(s) for s in spellings} == {Host(None, address)}


_HOSTISH = st.lists(
    st.sampled_from(
        [
            *"abcxyz0179.-_:[]%@ \t\n",
            "0x",
            "xn--",
            "\u3002",  # ideographic full stop
            "\uff0e",  # fullwidth full stop
            "\uff10",  # fullwidth 0
            "\uff11",
            "\u0661",  # Arabic-Indic 1
            "\u00fc",
            "\u00df",
            "\u0130",
            "\u200d",  # zero width joiner
            "\u2488",  # "1." as one character
            "\ud800",  # lone surrogate
        ]
    ),
    max_size=24,
).map("".join)


@given(st.one_of(st.text(), _HOSTISH))
def test_normalize_host_raises_only_invalid_host(raw: str) -> None:
    try:
        normalize_host(raw)
    except InvalidHost:
        pass


@given(st.one_of(st.text(), _HOSTISH, ipv4_spellings().map(lambda case: case[1])))
def test_normalizing_a_normalized_host_changes_nothing(raw: str) -> None:
    try:
        host = normalize_host(raw)
    except InvalidHost:
        assume(False)
        return
    assert normalize_host(host.text) == host
    if host.name is not None:
        assert host.name.isascii()
        assert host.name == host.name.lower()
        assert not host.name.endswith(".")
        assert host.address is None
    else:
        assert host.address is not None


def test_address_texts_follow_each_tuples_content_even_when_tuples_are_recycled() -> None:
    v4, v6 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")
    kept = (v4, v6)
    assert address_texts(kept) == ("192.0.2.1", "2001:db8::1")
    assert address_texts(kept) is address_texts(kept)  # memoized per tuple
    for index in range(200):  # fresh tuples, dropped at once: ids may be reused
        fresh = (v6,) if index % 2 else (v4,)
        assert address_texts(fresh) == (("2001:db8::1",) if index % 2 else ("192.0.2.1",))
        del fresh
