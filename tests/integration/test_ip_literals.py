"""IP-literal destinations in every spelling: refused unless listed, and then each spelling works.

127.0.0.1 can be written 2130706433, 0x7f000001, 0177.0.0.1, 127.1, [::ffff:127.0.0.1], ...; a
proxy that compares text would let those past a rule or refuse the real address. Refused
spellings are asked for on the port of a canary origin bound to the address they spell, which
must see no connection. curl normalizes some spellings itself before sending them, so every
spelling is also sent byte for byte in raw requests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.helpers_core import (
    assert_raw_refusal,
    assert_refusal,
    connect_refusal,
    http_request,
    needs_ipv6,
    ports_of,
    send_raw,
    single_response,
    start_proxy,
    tunnel_request,
)
from tests.support.clients import curl
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess, base_proxy_config

SPELLINGS_OF_127_0_0_1 = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0177.0.0.1",
    "0177.0.0.01",
    "127.1",
    "127.0.1",
    "0x7f.1",
    "017700000001",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
]
SPELLINGS_OF_127_0_0_2 = [
    "127.0.0.2",
    "2130706434",
    "0x7f000002",
    "0177.0.0.2",
    "0177.0.0.02",
    "127.2",
    "127.0.2",
    "0x7f.0.0.0x2",
    "017700000002",
    "[::ffff:127.0.0.2]",
    "[::ffff:7f00:2]",
]
SPELLINGS_OF_IPV6_LOOPBACK = ["[::1]", "[0:0:0:0:0:0:0:1]", "[0000::0001]"]


def expect_forwarded(proxy: ProxyProcess, origin: Origin, spelling: str) -> None:
    """Plain HTTP and CONNECT to `spelling`:port reach `origin`."""
    authority = f"{spelling}:{origin.port}"
    response = single_response(send_raw(proxy, http_request(f"http://{authority}/", close=True)))
    assert response.status == 200, f"{spelling}: {response.raw[:400]!r}"
    assert response.body == f"hello from {origin.name}".encode()
    tunnel, result = tunnel_request(proxy, authority, http_request("/", host=authority, close=True))
    assert tunnel.status == 200, f"CONNECT {spelling}: {tunnel.raw_head!r}"
    assert single_response(result).body == f"hello from {origin.name}".encode()


def expect_refused(proxy: ProxyProcess, port: int, spelling: str, shown: str) -> None:
    """Plain HTTP and CONNECT to `spelling`:port are refused as the IP literal `shown`."""
    authority = f"{spelling}:{port}"
    result = send_raw(proxy, http_request(f"http://{authority}/", close=True))
    assert_raw_refusal(result, 403, "ip-literal-not-allowed", host=shown)
    response = connect_refusal(proxy, authority)
    assert_refusal(response, 403, "ip-literal-not-allowed", body=response.body, host=shown)


def test_every_spelling_of_an_unlisted_loopback_address_is_refused(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory
) -> None:
    canary = origin_factory("canary", host="127.0.0.1")
    proxy = start_proxy(proxy_factory, allow=["allowed.test", ".test"], ports=ports_of(canary))
    for spelling in SPELLINGS_OF_127_0_0_1:
        expect_refused(proxy, canary.port, spelling, "127.0.0.1")
    records = proxy.wait_for_records(2 * len(SPELLINGS_OF_127_0_0_1))
    assert {(r["host"], r["reason"], r["address"]) for r in records} == {
        ("127.0.0.1", "ip-literal-not-allowed", None)
    }
    canary.assert_untouched()


@needs_ipv6
def test_every_spelling_of_unlisted_ipv6_loopback_is_refused(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory
) -> None:
    canary = origin_factory("v6-canary", host="::1")
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(canary))
    for spelling in SPELLINGS_OF_IPV6_LOOPBACK:
        expect_refused(proxy, canary.port, spelling, "::1")
    canary.assert_untouched()


def test_curl_with_an_unlisted_literal_in_the_url_is_refused(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory
) -> None:
    canary = origin_factory("canary", host="127.0.0.1")
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(canary))
    for spelling in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]"):
        url = f"http://{spelling}:{canary.port}/"
        result = curl(["--path-as-is", url], proxy=proxy.proxy_address)
        assert_refusal(result, 403, "ip-literal-not-allowed", body=result.body, host="127.0.0.1")
        tunnelled = curl(["-p", url], proxy=proxy.proxy_url)
        assert tunnelled.connect_status == 403, (spelling, tunnelled.stderr)
    canary.assert_untouched()


@pytest.mark.parametrize("entry", ["127.0.0.2", "127.0.0.0/30", "::ffff:127.0.0.2"])
def test_every_spelling_of_a_listed_address_reaches_it(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, entry: str
) -> None:
    literal = origin_factory("literal", host="127.0.0.2")
    canary = origin_factory("canary", host="127.0.0.5")  # outside every entry
    proxy = start_proxy(
        proxy_factory,
        allow=[entry],
        ports=ports_of(literal, canary),
        allow_private=["127.0.0.2/32"],
    )
    for spelling in SPELLINGS_OF_127_0_0_2:
        expect_forwarded(proxy, literal, spelling)
    accepts = literal.accept_records()
    assert accepts
    assert {a.local[0] for a in accepts} == {"127.0.0.2"}
    # A neighbour outside the entry stays refused, whatever the spelling.
    expect_refused(proxy, canary.port, "2130706437", "127.0.0.5")
    expect_refused(proxy, canary.port, "[::ffff:127.0.0.5]", "127.0.0.5")
    canary.assert_untouched()


def test_curl_reaches_a_listed_address_in_any_spelling(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory
) -> None:
    literal = origin_factory("literal", host="127.0.0.2")
    proxy = start_proxy(
        proxy_factory,
        allow=["127.0.0.2"],
        ports=ports_of(literal),
        allow_private=["127.0.0.2/32"],
    )
    for spelling in ("2130706434", "0x7f000002", "0177.0.0.2", "127.2", "[::ffff:127.0.0.2]"):
        url = f"http://{spelling}:{literal.port}/"
        result = curl([url], proxy=proxy.proxy_address)
        assert (result.status, result.body) == (200, b"hello from literal"), result.stderr
        tunnelled = curl(["-p", url], proxy=proxy.proxy_url)
        assert (tunnelled.connect_status, tunnelled.status) == (200, 200), tunnelled.stderr


@needs_ipv6
def test_every_spelling_of_listed_ipv6_loopback_reaches_it(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory
) -> None:
    literal = origin_factory("v6", host="::1")
    proxy = start_proxy(
        proxy_factory, allow=["::1"], ports=ports_of(literal), allow_private=["::1/128"]
    )
    for spelling in SPELLINGS_OF_IPV6_LOOPBACK:
        expect_forwarded(proxy, literal, spelling)


def test_listed_literal_outside_allow_private_is_still_refused_as_private(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory
) -> None:
    # Listing an address allows the name-level check; the address check (SSRF protection)
    # still applies: loopback needs allow_private too.
    canary = origin_factory("canary", host="127.0.0.2")
    proxy = start_proxy(
        proxy_factory, allow=["127.0.0.2"], ports=ports_of(canary), allow_private=["127.0.0.9/32"]
    )
    for spelling in ("127.0.0.2", "0x7f000002", "[::ffff:127.0.0.2]"):
        result = send_raw(proxy, http_request(f"http://{spelling}:{canary.port}/", close=True))
        response = assert_raw_refusal(result, 403, "private-address", host="127.0.0.2")
        assert b"127.0.0.2" in response.body
        tunnel = connect_refusal(proxy, f"{spelling}:{canary.port}")
        assert_refusal(tunnel, 403, "private-address", body=tunnel.body, host="127.0.0.2")
    canary.assert_untouched()


@pytest.fixture(scope="module")
def star_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Origin]]:
    """A proxy allowing every name (`*`), and a canary on 127.0.0.1 that must not be reached."""
    with DnsServer() as dns, Origin("canary", host="127.0.0.1") as canary:
        workdir = tmp_path_factory.mktemp("star-proxy")
        config = base_proxy_config(dns.address, workdir) | {
            "allow": ["*"],
            "allow_private": ["127.0.0.0/8"],
            "http_ports": [canary.port],
            "connect_ports": [canary.port],
        }
        with ProxyProcess(config, workdir) as proxy:
            yield proxy, canary
        assert dns.queries() == [], "a numeric host was looked up in DNS"


@pytest.mark.parametrize(
    "spelling",
    ["256.0.0.1", "127.0.0.1.1", "0x1g.0.0.1", "1.2.3.4.5", "127..1", "[::ffff:127.0.0.1"],
)
def test_malformed_numeric_hosts_are_refused_and_reach_nothing(
    star_proxy: tuple[ProxyProcess, Origin], spelling: str
) -> None:
    proxy, canary = star_proxy
    result = send_raw(proxy, http_request(f"http://{spelling}:{canary.port}/", close=True))
    response = single_response(result)
    assert response.status in (400, 403), response.raw[:400]
    assert response.header("X-Egressgate-Reason") in ("bad-request", "host-not-allowed")
    assert result.closed
    canary.assert_untouched()
