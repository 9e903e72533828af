"""config.model value parsers and defaults: ListenAddress.parse, PortRange.parse, Config()."""

from __future__ import annotations

import pytest

from egressgate.config.model import (
    DEFAULT_POLICY_NAME,
    Config,
    ListenAddress,
    Mode,
    NoSniAction,
    PolicyConfig,
    PortRange,
)

LISTEN_OK: list[tuple[str, str, int, str]] = [
    # text, host, port, str() form
    ("0.0.0.0:3128", "0.0.0.0", 3128, "0.0.0.0:3128"),
    ("127.0.0.1:0", "127.0.0.1", 0, "127.0.0.1:0"),  # 0: the OS picks a port
    ("127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"),
    (":3128", "0.0.0.0", 3128, "0.0.0.0:3128"),  # no host: every interface
    ("  10.0.0.1:80 ", "10.0.0.1", 80, "10.0.0.1:80"),
    ("localhost:8080", "localhost", 8080, "localhost:8080"),  # a name is allowed
    ("[::]:3128", "::", 3128, "[::]:3128"),
    ("[::1]:9090", "::1", 9090, "[::1]:9090"),
    ("[2001:db8::1]:1", "2001:db8::1", 1, "[2001:db8::1]:1"),
]


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"), LISTEN_OK, ids=[row[0] for row in LISTEN_OK]
)
def test_listen_address_parses_host_port_and_formats_back(
    text: str, host: str, port: int, shown: str
) -> None:
    address = ListenAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == shown
    assert ListenAddress.parse(str(address)) == address  # the str() form parses back


LISTEN_BAD: list[tuple[str, str]] = [
    ("3128", "host:port"),  # a bare port
    ("0.0.0.0", "host:port"),
    ("", "host:port"),
    ("::1:3128", "brackets"),  # IPv6 without brackets: the port is ambiguous
    (":::3128", "brackets"),
    ("[::1]", r"\[::\]:3128"),  # brackets but no port
    ("[::1]3128", r"\[::\]:3128"),
    ("[::1]:", "port"),
    ("[nothex]:80", "nothex"),  # not an IPv6 address
    ("[10.0.0.1]:80", "10.0.0.1"),  # brackets are for IPv6
    ("0.0.0.0:65536", "port"),
    ("0.0.0.0:-1", "port"),
    ("0.0.0.0:http", "port"),
    ("0.0.0.0:", "port"),
    ("0.0.0.0:+80", "port"),
    ("0.0.0.0:\u0668\u0660", "port"),  # Arabic-Indic "80": not ASCII digits
    ("0.0.0.0:\u00b2", "port"),  # superscript two: isdigit() but not a number
]


@pytest.mark.parametrize(("text", "message"), LISTEN_BAD, ids=[repr(r[0]) for r in LISTEN_BAD])
def test_listen_address_refuses_bad_text_with_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ListenAddress.parse(text)


PORTS_OK: list[tuple[int | str, int, int, str]] = [
    (443, 443, 443, "443"),
    ("443", 443, 443, "443"),
    (" 80 ", 80, 80, "80"),
    (1, 1, 1, "1"),
    (65535, 65535, 65535, "65535"),
    ("1024-65535", 1024, 65535, "1024-65535"),
    ("1-65535", 1, 65535, "1-65535"),
    ("8080-8080", 8080, 8080, "8080"),
]


@pytest.mark.parametrize(
    ("value", "low", "high", "shown"), PORTS_OK, ids=[repr(r[0]) for r in PORTS_OK]
)
def test_port_range_parses_single_ports_and_ranges(
    value: int | str, low: int, high: int, shown: str
) -> None:
    ports = PortRange.parse(value)
    assert (ports.low, ports.high) == (low, high)
    assert str(ports) == shown


PORTS_BAD: list[int | str] = [
    0,
    "0",
    65536,
    "0-1",
    "1-65536",
    "9-3",  # the low end comes first
    "-443",
    "443-",
    "-",
    "",
    "+443",
    "1-2-3",
    "4 43",
    "1.5",
    "https",
    "\u0664\u0664\u0663",  # Arabic-Indic "443"
    "\u00b2",
]


@pytest.mark.parametrize("value", PORTS_BAD, ids=[repr(v) for v in PORTS_BAD])
def test_port_range_refuses_bad_ports_with_value_error(value: int | str) -> None:
    with pytest.raises(ValueError, match="port"):
        PortRange.parse(value)


@pytest.mark.parametrize(
    ("port", "inside"),
    [(1023, False), (1024, True), (2000, True), (2048, True), (2049, False), ("1024", False)],
)
def test_port_range_membership_is_inclusive_at_both_ends(port: int | str, inside: bool) -> None:
    assert (port in PortRange(1024, 2048)) is inside


def test_config_defaults() -> None:
    config = Config()
    assert config.listen == ListenAddress("0.0.0.0", 3128)
    assert config.admin_listen == ListenAddress("0.0.0.0", 9090)
    assert config.default_policy == DEFAULT_POLICY_NAME
    assert config.clients == ()
    assert config.auth is None
    assert config.tls_listen is None
    policy = config.policy(DEFAULT_POLICY_NAME)
    assert policy.allow == ()  # secure by default: nothing is allowed
    assert policy.connect_ports == (PortRange(443, 443),)
    assert policy.http_ports == (PortRange(80, 80),)
    assert policy.allow_private == ()
    assert policy.mode is Mode.ENFORCE
    assert policy.sni_check is True
    assert policy.tunnels_without_sni is NoSniAction.ALLOW


def test_config_policy_lookup_raises_key_error_for_unknown_names() -> None:
    config = Config(policies=(PolicyConfig("default"), PolicyConfig("ci")))
    assert config.policy("ci").name == "ci"
    with pytest.raises(KeyError):
        config.policy("nope")
