"""DomainPattern.parse and HostMatcher: allowlist entries and matching, label by label.

Entry semantics (module docstring; the leading dot is Squid's `dstdomain`):
`api.stripe.com` exactly; `.example.com` the apex and every subdomain; `*.cdn.example.net`
subdomains only; `*` any hostname (never an IP literal); IPs and CIDRs for IP-literal targets.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.names.hostname import normalize_host
from egressgate.names.patterns import DomainPattern, HostMatcher, PatternKind, parse_cidr


def _matcher(*entries: str) -> HostMatcher:
    return HostMatcher([DomainPattern.parse(e) for e in entries])


def _allows(matcher: HostMatcher, raw_host: str) -> str | None:
    """The entry allowing `raw_host` (normalized first, as the policy engine does)."""
    host = normalize_host(raw_host)
    if host.address is not None:
        return matcher.match_address(host.address)
    assert host.name is not None
    return matcher.match_name(host.name)


# ---------------------------------------------------------------------------------------------
# DomainPattern.parse
# ---------------------------------------------------------------------------------------------

PARSED: list[tuple[str, PatternKind, str]] = [
    ("api.stripe.com", PatternKind.EXACT, "api.stripe.com"),
    ("API.Stripe.COM.", PatternKind.EXACT, "api.stripe.com"),
    (" api.stripe.com ", PatternKind.EXACT, "api.stripe.com"),
    ("localhost", PatternKind.EXACT, "localhost"),
    (".example.com", PatternKind.DOMAIN, "example.com"),
    (".Example.COM.", PatternKind.DOMAIN, "example.com"),
    (".com", PatternKind.DOMAIN, "com"),
    ("*.cdn.example.net", PatternKind.SUBDOMAINS, "cdn.example.net"),
    ("*.b\u00fccher.de", PatternKind.SUBDOMAINS, "xn--bcher-kva.de"),
    (".b\u00fccher.de", PatternKind.DOMAIN, "xn--bcher-kva.de"),
    ("b\u00fccher.de", PatternKind.EXACT, "xn--bcher-kva.de"),
    ("*", PatternKind.ANY, ""),
]


@pytest.mark.parametrize(("text", "kind", "name"), PARSED, ids=[t for t, _, _ in PARSED])
def test_name_entries_parse_to_kind_and_normalized_name(
    text: str, kind: PatternKind, name: str
) -> None:
    pattern = DomainPattern.parse(text)
    assert (pattern.kind, pattern.name, pattern.network) == (kind, name, None)
    assert pattern.text == text  # the operator's own spelling is kept for logs


NETWORKS: list[tuple[str, str]] = [
    ("203.0.113.7", "203.0.113.7/32"),
    ("2130706433", "127.0.0.1/32"),  # any IPv4 spelling normalize_host accepts
    ("127.1", "127.0.0.1/32"),
    ("203.0.113.0/24", "203.0.113.0/24"),
    ("203.0.113.9/24", "203.0.113.0/24"),  # host bits are tolerated (strict=False)
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("::1", "::1/128"),
    ("[::1]", "::1/128"),
    ("[2001:db8::1]", "2001:db8::1/128"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("[::ffff:127.0.0.1]", "127.0.0.1/32"),  # mapped IPv6 entry = the IPv4 host
]


@pytest.mark.parametrize(("text", "network"), NETWORKS, ids=[t for t, _ in NETWORKS])
def test_ip_and_cidr_entries_parse_to_a_network(text: str, network: str) -> None:
    pattern = DomainPattern.parse(text)
    assert pattern.kind is PatternKind.NETWORK
    assert pattern.network == ipaddress.ip_network(network)


INVALID: list[str] = [
    "",
    "   ",
    "foo*.bar",  # '*' only as a whole first label
    "*foo.bar",
    "foo.*",
    "f*o.bar",
    "**",
    "*.*.example.com",
    ".*.example.com",
    "*.",  # a prefix with nothing after it
    "*..x",
    ".",
    "..",
    "..x",
    "a..b",
    "*.a..b",
    ".a..b",
    "-a.com",
    "*.10.0.0.1",  # a subdomain wildcard over an IP address means nothing
    ".10.0.0.1",
    ".127.1",
    "x.09",  # ends in a number but is not an IPv4 address
    ".x.09",
    "1.2.3.4.5",
    "10.0.0.0/33",
    "10.0.0.0/-1",
    "x/8",
    "a.com/",
    "::1/129",
    "[::1]/128",
    "fe80::1%eth0",
    "example.com:443",  # ports belong in connect_ports/http_ports
]


@pytest.mark.parametrize("text", INVALID, ids=[repr(t) for t in INVALID])
def test_invalid_entries_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):  # the message is checked separately
        DomainPattern.parse(text)


def test_invalid_entry_message_quotes_the_entry() -> None:
    with pytest.raises(ValueError, match=r"'foo\*\.bar'"):
        DomainPattern.parse("foo*.bar")


@pytest.mark.parametrize(
    ("text", "network"),
    [("10.0.0.0/8", "10.0.0.0/8"), ("10.1.2.3", "10.1.2.3/32"), ("fd00::/8", "fd00::/8")],
)
def test_parse_cidr_accepts_networks_and_single_addresses(text: str, network: str) -> None:
    assert parse_cidr(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize("text", ["10.0.0.0/33", "example.com", "", "10.0.0.0/8/8"])
def test_parse_cidr_refuses_non_networks(text: str) -> None:
    with pytest.raises(ValueError, match="CIDR"):
        parse_cidr(text)


# ---------------------------------------------------------------------------------------------
# HostMatcher
# ---------------------------------------------------------------------------------------------

MATCHES: list[tuple[str, str, bool]] = [
    # exact
    ("api.stripe.com", "api.stripe.com", True),
    ("api.stripe.com", "API.STRIPE.COM.", True),
    ("api.stripe.com", "x.api.stripe.com", False),
    ("api.stripe.com", "stripe.com", False),
    ("api.stripe.com", "api.stripe.com.evil.net", False),
    # .domain: apex and subdomains, on label boundaries only
    (".example.com", "example.com", True),
    (".example.com", "www.example.com", True),
    (".example.com", "a.b.c.example.com", True),
    (".example.com", "WWW.Example.Com.", True),
    (".example.com", "badexample.com", False),
    (".example.com", "example.com.evil.net", False),
    (".example.com", "example.co", False),
    (".example.com", "xexample.com", False),
    (".example.com", "com", False),
    # *.sub: subdomains only
    ("*.cdn.example.net", "a.cdn.example.net", True),
    ("*.cdn.example.net", "a.b.cdn.example.net", True),
    ("*.cdn.example.net", "cdn.example.net", False),
    ("*.cdn.example.net", "xcdn.example.net", False),
    ("*.cdn.example.net", "example.net", False),
    # any hostname, never an IP literal
    ("*", "anything.example", True),
    ("*", "localhost", True),
    ("*", "127.0.0.1", False),
    ("*", "[::1]", False),
    ("*", "2130706433", False),
    # IDNA: the entry and the host meet in punycode
    (".b\u00fccher.de", "www.xn--bcher-kva.de", True),
    ("xn--bcher-kva.de", "B\u00dcCHER.de", True),
    # IP and CIDR entries match IP-literal targets in any spelling
    ("203.0.113.7", "203.0.113.7", True),
    ("203.0.113.7", "0xcb007107", True),
    ("203.0.113.7", "203.0.113.8", False),
    ("203.0.113.0/24", "203.0.113.255", True),
    ("203.0.113.0/24", "203.0.114.0", False),
    ("203.0.113.0/24", "203.0.112.255", False),
    ("127.0.0.1", "[::ffff:127.0.0.1]", True),
    ("2001:db8::/32", "[2001:db8:ffff::1]", True),
    ("2001:db8::/32", "[2001:db9::1]", False),
    ("0.0.0.0/0", "[::1]", False),  # an IPv4 network never matches an IPv6 address
    # a name entry never allows an IP literal, and an IP entry never a name
    ("203.0.113.7", "example.com", False),
]


@pytest.mark.parametrize(
    ("entry", "host", "allowed"), MATCHES, ids=[f"{e} {h}" for e, h, _ in MATCHES]
)
def test_matcher_allows_exactly_what_the_entry_says(entry: str, host: str, allowed: bool) -> None:
    found = _allows(_matcher(entry), host)
    assert found == (entry if allowed else None)


def test_matcher_reports_the_entry_text_as_written() -> None:
    assert _allows(_matcher(".Example.COM."), "www.example.com") == ".Example.COM."


def test_empty_matcher_allows_nothing() -> None:
    matcher = _matcher()
    assert matcher.match_name("example.com") is None
    assert matcher.match_address(ipaddress.ip_address("203.0.113.7")) is None


def test_domain_and_subdomain_entries_on_the_same_name_combine() -> None:
    matcher = _matcher("*.example.com", "example.com")
    assert _allows(matcher, "example.com") == "example.com"
    assert _allows(matcher, "a.example.com") == "*.example.com"
    assert _allows(matcher, "badexample.com") is None


# ---------------------------------------------------------------------------------------------
# Property: HostMatcher agrees with a naive reference implementation
# ---------------------------------------------------------------------------------------------

_LABELS = st.sampled_from(["a", "b", "c", "example", "com", "x-y", "_s", "cdn", "xn--zca"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=5)


def _reference(patterns: list[DomainPattern], labels: list[str]) -> set[str]:
    """Every entry allowing the host with these labels: a loop with explicit suffix logic."""
    allowing: set[str] = set()
    for pattern in patterns:
        own = pattern.name.split(".") if pattern.name else []
        is_suffix = len(labels) > len(own) and labels[len(labels) - len(own) :] == own
        if (
            (pattern.kind is PatternKind.EXACT and labels == own)
            or (pattern.kind is PatternKind.DOMAIN and (labels == own or is_suffix))
            or (pattern.kind is PatternKind.SUBDOMAINS and is_suffix)
            or pattern.kind is PatternKind.ANY
        ):
            allowing.add(pattern.text)
    return allowing


@st.composite
def _entries(draw: st.DrawFn) -> str:
    labels = draw(_NAMES)
    name = ".".join(label.upper() if draw(st.booleans()) else label for label in labels)
    if draw(st.booleans()):
        name += "."
    return draw(st.sampled_from(["", ".", "*."])) + name


@given(
    st.lists(st.one_of(_entries(), st.just("*")), max_size=8),
    _NAMES,
)
def test_host_matcher_agrees_with_naive_reference(entries: list[str], labels: list[str]) -> None:
    patterns = [DomainPattern.parse(e) for e in entries]
    expected = _reference(patterns, labels)
    found = HostMatcher(patterns).match_name(".".join(labels))
    if expected:
        assert found in expected
    else:
        assert found is None


@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_address_matching_agrees_with_naive_reference(
    networks: list[tuple[int, int]], value: int
) -> None:
    entries = [f"{ipaddress.IPv4Address(base)}/{prefix}" for base, prefix in networks]
    address = ipaddress.IPv4Address(value)
    expected = {e for e in entries if address in ipaddress.ip_network(e, strict=False)}
    found = HostMatcher([DomainPattern.parse(e) for e in entries]).match_address(address)
    if expected:
        assert found in expected
    else:
        assert found is None
