"""After DNS: every address of an answer is vetted, and the proxy connects only to a vetted one.

Origins listen on distinct loopback addresses (127.0.0.2, 127.0.0.3, ...), so which address
the proxy connected to is visible on the origin side; addresses outside `allow_private` host
canaries that must see no connection at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

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
    wait_record,
)
from tests.support.dns import Behaviour, DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess


def get(proxy: ProxyProcess, host: str, origin: Origin, path: str = "/") -> bytes:
    """Plain-HTTP GET of host:origin.port through the proxy; the raw response (one, closed)."""
    result = send_raw(proxy, http_request(f"http://{host}:{origin.port}{path}", close=True))
    return single_response(result).raw


def expect_reaches(proxy: ProxyProcess, host: str, origin: Origin) -> None:
    """Plain HTTP and CONNECT to host:origin.port both end at `origin`."""
    result = send_raw(proxy, http_request(f"http://{host}:{origin.port}/", close=True))
    response = single_response(result)
    assert response.status == 200, response.raw[:400]
    assert response.body == f"hello from {origin.name}".encode()
    authority = f"{host}:{origin.port}"
    tunnel, through = tunnel_request(
        proxy, authority, http_request("/", host=authority, close=True)
    )
    assert tunnel.status == 200, tunnel.raw_head
    assert single_response(through).body == f"hello from {origin.name}".encode()


def expect_private_refusal(proxy: ProxyProcess, host: str, port: int, address: str) -> None:
    """Plain HTTP and CONNECT to host:port are refused: private-address naming `address`."""
    result = send_raw(proxy, http_request(f"http://{host}:{port}/", close=True))
    response = assert_raw_refusal(result, 403, "private-address", host=host)
    assert f"resolves to {address} ".encode() in response.body, response.body
    tunnel = connect_refusal(proxy, f"{host}:{port}")
    assert_refusal(tunnel, 403, "private-address", body=tunnel.body, host=host)
    assert f"resolves to {address} ".encode() in tunnel.body


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.2", "127.0.0.3"], ["127.0.0.3", "127.0.0.2"]],
    ids=["internal-last", "internal-first"],
)
def test_answer_with_one_internal_address_among_permitted_ones_is_refused(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    answer: list[str],
) -> None:
    permitted = origin_factory("permitted", host="127.0.0.2")
    canary = origin_factory("canary", host="127.0.0.3")
    dns_server.records["multi.test"] = answer
    proxy = start_proxy(
        proxy_factory,
        allow=["multi.test"],
        ports=ports_of(permitted, canary),
        allow_private=["127.0.0.2/32"],
    )
    for port in (permitted.port, canary.port):
        expect_private_refusal(proxy, "multi.test", port, "127.0.0.3")
    permitted.assert_untouched()
    canary.assert_untouched()


@needs_ipv6
def test_answer_mixing_a_permitted_ipv4_and_an_internal_ipv6_address_is_refused(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    permitted = origin_factory("permitted", host="127.0.0.2")
    v6_canary = origin_factory("v6-canary", host="::1")
    dns_server.records["dual.test"] = ["127.0.0.2", "::1"]
    proxy = start_proxy(
        proxy_factory,
        allow=["dual.test"],
        ports=ports_of(permitted, v6_canary),
        allow_private=["127.0.0.2/32"],
    )
    expect_private_refusal(proxy, "dual.test", permitted.port, "::1")
    expect_private_refusal(proxy, "dual.test", v6_canary.port, "::1")
    permitted.assert_untouched()
    v6_canary.assert_untouched()


def test_proxy_connects_only_to_the_address_it_vetted(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    two = origin_factory("two", host="127.0.0.2")
    three = origin_factory("three", host="127.0.0.3")
    dns_server.records["two.test"] = ["127.0.0.2"]
    dns_server.records["three.test"] = ["127.0.0.3"]
    proxy = start_proxy(
        proxy_factory,
        allow=["two.test", "three.test"],
        ports=ports_of(two, three),
        allow_private=["127.0.0.2/32", "127.0.0.3/32"],
    )
    expect_reaches(proxy, "two.test", two)
    three.assert_untouched()
    expect_reaches(proxy, "three.test", three)
    for origin, address in ((two, "127.0.0.2"), (three, "127.0.0.3")):
        accepts = origin.accept_records()
        assert {a.local for a in accepts} == {(address, origin.port)}
        assert {a.peer[0] for a in accepts} == {"127.0.0.1"}
    assert {(r["host"], r["address"]) for r in proxy.wait_for_records(4)} == {
        ("two.test", "127.0.0.2"),
        ("three.test", "127.0.0.3"),
    }
    # two.test on three's port: nothing listens on 127.0.0.2 there, and the proxy must not
    # find another address that answers.
    before = len(three.accept_records())
    refused = send_raw(proxy, http_request(f"http://two.test:{three.port}/", close=True))
    assert_raw_refusal(refused, 502, "upstream-refused", host="two.test")
    assert len(three.accept_records()) == before


def test_a_name_is_resolved_once_per_request_and_not_again_to_connect(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin", host="127.0.0.2")
    dns_server.records["once.test"] = ["127.0.0.2"]
    proxy = start_proxy(
        proxy_factory, allow=["once.test"], ports=ports_of(origin), allow_private=["127.0.0.2/32"]
    )
    assert b"hello from origin" in get(proxy, "once.test", origin)
    assert dns_server.query_count("once.test", "A") == 1
    assert dns_server.query_count("once.test", "AAAA") <= 1


def test_hosts_file_overrides_dns(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    tmp_path: Path,
) -> None:
    origin = origin_factory("hosts", host="127.0.0.2")
    canary = origin_factory("canary", host="127.0.0.3")
    dns_server.records["pinned.test"] = [canary.host]  # what DNS would say
    dns_server.records["vetted.test"] = ["127.0.0.2"]
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# test hosts file\n127.0.0.2 pinned.test Alias.Test\n127.0.0.4 vetted.test\n",
        encoding="utf-8",
    )
    proxy = start_proxy(
        proxy_factory,
        allow=["pinned.test", "alias.test", "vetted.test"],
        ports=ports_of(origin, canary),
        allow_private=["127.0.0.2/32"],
        hosts_file=str(hosts),
    )
    expect_reaches(proxy, "pinned.test", origin)
    expect_reaches(proxy, "alias.test", origin)
    # A hosts-file address is vetted like a DNS answer.
    expect_private_refusal(proxy, "vetted.test", origin.port, "127.0.0.4")
    for name in ("pinned.test", "alias.test", "vetted.test"):
        assert dns_server.query_count(name) == 0, f"{name} was looked up in DNS"
    canary.assert_untouched()


def test_allow_private_cidr_permits_exactly_its_range(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    inside = [origin_factory(f"in{i}", host=f"127.0.0.{i}") for i in (2, 3)]
    outside = [origin_factory(f"out{i}", host=f"127.0.0.{i}") for i in (1, 4)]
    for server in inside + outside:
        dns_server.records[f"{server.name}.test"] = [server.host]
    proxy = start_proxy(
        proxy_factory,
        allow=[".test"],
        ports=ports_of(*inside, *outside),
        allow_private=["127.0.0.2/31"],
    )
    for server in inside:
        expect_reaches(proxy, f"{server.name}.test", server)
    for server in outside:
        expect_private_refusal(proxy, f"{server.name}.test", server.port, server.host)
        server.assert_untouched()


def test_cname_answers_are_vetted_on_their_final_addresses(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin", host="127.0.0.2")
    canary = origin_factory("canary", host="127.0.0.3")
    dns_server.records["good-target.test"] = ["127.0.0.2"]
    dns_server.records["bad-target.test"] = ["127.0.0.3"]
    dns_server.set_cname("good.test", "good-target.test")
    dns_server.set_cname("bad.test", "bad-target.test")
    proxy = start_proxy(
        proxy_factory,
        allow=["good.test", "bad.test"],
        ports=ports_of(origin, canary),
        allow_private=["127.0.0.2/32"],
    )
    expect_reaches(proxy, "good.test", origin)
    expect_private_refusal(proxy, "bad.test", canary.port, "127.0.0.3")
    canary.assert_untouched()


@needs_ipv6
def test_ipv6_only_name_is_reached_when_its_address_is_permitted(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("six", host="::1")
    dns_server.records["six.test"] = ["::1"]
    proxy = start_proxy(
        proxy_factory, allow=["six.test"], ports=ports_of(origin), allow_private=["::1/128"]
    )
    expect_reaches(proxy, "six.test", origin)
    assert wait_record(proxy, method="GET")["address"] == "::1"


def test_truncated_udp_answer_is_retried_over_tcp(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    origin = origin_factory("origin", host="127.0.0.2")
    dns_server.records["big.test"] = ["127.0.0.2"]
    dns_server.set_behaviour("big.test", "truncate")
    proxy = start_proxy(
        proxy_factory, allow=["big.test"], ports=ports_of(origin), allow_private=["127.0.0.2/32"]
    )
    assert b"hello from origin" in get(proxy, "big.test", origin)
    assert {q.transport for q in dns_server.queries("big.test")} == {"udp", "tcp"}


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("servfail", "dns-failure"), ("refused", "dns-failure"), ("nodata", "dns-no-address")],
)
def test_dns_server_errors_answer_502(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    behaviour: str,
    reason: str,
) -> None:
    canary = origin_factory("canary", host="127.0.0.3")
    if behaviour == "nodata":
        dns_server.records["err.test"] = []  # the name exists, with no address
    else:
        dns_server.records["err.test"] = [canary.host]
        dns_server.set_behaviour("err.test", cast(Behaviour, behaviour))
    proxy = start_proxy(
        proxy_factory, allow=["err.test"], ports=ports_of(canary), limits={"dns_timeout_s": 2}
    )
    result = send_raw(proxy, http_request(f"http://err.test:{canary.port}/", close=True))
    assert_raw_refusal(result, 502, reason, host="err.test")
    canary.assert_untouched()
