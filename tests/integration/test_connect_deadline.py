"""Connecting to a name with several addresses: staggered attempts (Happy Eyeballs, RFC 8305),
the first to connect wins, and one total bound (`connect_total_timeout_s`) over all of them,
on the plain-HTTP path and the raw CONNECT path (CONNECT inside the TLS listener shares the
plain-HTTP path, proxy/context.py connect_step).

"Blackholed" addresses are loopback listeners whose accept queue is full: the kernel drops
further SYNs, so a connect to them stays pending until the proxy's own deadline (no packet
leaves loopback; no root needed).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.helpers_core import (
    assert_raw_refusal,
    assert_refusal,
    connect_refusal,
    http_request,
    send_raw,
    single_response,
    start_proxy,
    tunnel_request,
    wait_record,
)
from tests.support.dns import DnsServer
from tests.support.origin import OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

CONNECT_TIMEOUT_S = 2.0
TOTAL_TIMEOUT_S = 3.0


class Blackholes:
    """Listeners on `hosts`, all on `port`, whose accept queues are full (SYNs dropped)."""

    def __init__(self, hosts: list[str], port: int) -> None:
        self.sockets: list[socket.socket] = []
        try:
            for host in hosts:
                listener = socket.socket()
                self.sockets.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((host, port))
                listener.listen(0)
                for _ in range(3):  # more than the queue holds; never accepted
                    filler = socket.socket()
                    filler.setblocking(False)
                    filler.connect_ex((host, port))
                    self.sockets.append(filler)
            time.sleep(0.3)  # the fillers' handshakes settle: the queues are full
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def blackholes() -> Iterator[list[Blackholes]]:
    made: list[Blackholes] = []
    yield made
    for item in made:
        item.close()


def start(proxy_factory: ProxyFactory, port: int, allow: list[str]) -> ProxyProcess:
    limits = {
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "connect_total_timeout_s": TOTAL_TIMEOUT_S,
    }
    return start_proxy(proxy_factory, allow=allow, ports=[port], limits=limits)


def test_twenty_blackholed_addresses_end_in_504_within_the_total_bound(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    blackholes: list[Blackholes],
) -> None:
    """Today: one connect_timeout_s per address, 20 x 2 s = 40 s before the 504."""
    port = origin_factory("unused", host="127.0.3.1").port  # a port number free on 127.0.2.x
    hosts = [f"127.0.2.{i}" for i in range(1, 21)]
    blackholes.append(Blackholes(hosts, port))
    dns_server.records["dark.test"] = hosts
    proxy = start(proxy_factory, port, ["dark.test"])
    bound = TOTAL_TIMEOUT_S + 1.0  # + the sweeper's and the machine's slack
    started = time.monotonic()
    result = send_raw(
        proxy, http_request(f"http://dark.test:{port}/", close=True), read_timeout=bound + 5
    )
    elapsed = time.monotonic() - started
    assert_raw_refusal(result, 504, "upstream-timeout", host="dark.test")
    assert TOTAL_TIMEOUT_S - 0.2 <= elapsed < bound, f"504 after {elapsed:.2f}s"
    started = time.monotonic()
    response = connect_refusal(proxy, f"dark.test:{port}")
    elapsed = time.monotonic() - started
    assert_refusal(response, 504, "upstream-timeout", body=response.body, host="dark.test")
    assert TOTAL_TIMEOUT_S - 0.2 <= elapsed < bound, f"504 after {elapsed:.2f}s"
    record = wait_record(proxy, method="CONNECT")
    assert "no connection within 3s" in (record["detail"] or ""), record


def test_the_first_live_address_after_three_blackholed_ones_wins_quickly(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    blackholes: list[Blackholes],
) -> None:
    """Today: 3 x connect_timeout_s (6 s) before the fourth address is tried."""
    live = origin_factory("live", host="127.0.2.34")
    hosts = ["127.0.2.31", "127.0.2.32", "127.0.2.33"]
    blackholes.append(Blackholes(hosts, live.port))
    dns_server.records["mixed.test"] = [*hosts, live.host]
    proxy = start(proxy_factory, live.port, ["mixed.test"])
    started = time.monotonic()
    result = send_raw(proxy, http_request(f"http://mixed.test:{live.port}/", close=True))
    assert single_response(result).body == b"hello from live"
    assert time.monotonic() - started < CONNECT_TIMEOUT_S, "waited for a blackholed address"
    authority = f"mixed.test:{live.port}"
    started = time.monotonic()
    tunnel, through = tunnel_request(
        proxy, authority, http_request("/", host=authority, close=True)
    )
    assert tunnel.status == 200, tunnel.raw_head
    assert single_response(through).body == b"hello from live"
    assert time.monotonic() - started < CONNECT_TIMEOUT_S, "waited for a blackholed address"
    record = wait_record(proxy, method="CONNECT")
    assert record["address"] == live.host, record


def test_refused_addresses_fail_over_at_once_and_all_refused_is_502(
    proxy_factory: ProxyFactory, origin_factory: OriginFactory, dns_server: DnsServer
) -> None:
    live = origin_factory("live", host="127.0.2.44")
    dns_server.records["some.test"] = ["127.0.2.41", "127.0.2.42", live.host]  # nothing on .41/.42
    dns_server.records["none.test"] = ["127.0.2.41", "127.0.2.42"]
    proxy = start(proxy_factory, live.port, ["some.test", "none.test"])
    result = send_raw(proxy, http_request(f"http://some.test:{live.port}/", close=True))
    assert single_response(result).body == b"hello from live"
    response = connect_refusal(proxy, f"none.test:{live.port}")
    assert_refusal(response, 502, "upstream-refused", body=response.body, host="none.test")
