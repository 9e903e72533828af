"""Chaos: DNS down, slow, SERVFAIL and truncated. Each answers in time with its reason, logs it,
counts it, and the proxy recovers when the fault ends.

tests/integration/test_dns_failures.py covers the whole resolver matrix (REFUSED, NXDOMAIN,
no address, 50 records, mixed public/internal answers, the CONNECT path, timing bounds); here
each fault of the issue's chaos list is one case with the three observations and the recovery.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.support import REQUESTS, no_tracebacks, record_of, wait_metric
from tests.integration.helpers_core import (
    assert_raw_refusal,
    free_port,
    http_request,
    send_raw,
    single_response,
    start_proxy,
)
from tests.support.dns import DnsServer
from tests.support.origin import Origin
from tests.support.proxy import ProxyFactory, ProxyProcess

DNS_TIMEOUT_S = 1.0
BOUND_S = DNS_TIMEOUT_S + 1.0


def get(proxy: ProxyProcess, host: str, port: int) -> tuple[float, object]:
    started = time.monotonic()
    result = send_raw(
        proxy, http_request(f"http://{host}:{port}/", close=True), read_timeout=BOUND_S + 3
    )
    return time.monotonic() - started, result


def refused_in_time(
    proxy: ProxyProcess, host: str, port: int, status: int, reason: str, detail_has: str = ""
) -> None:
    """Client: `status reason` within the bound; log: a record with that reason; metric."""
    elapsed, result = get(proxy, host, port)
    assert_raw_refusal(result, status, reason, host=host)  # type: ignore[arg-type]
    assert elapsed < BOUND_S, f"answered after {elapsed:.2f}s"
    record = record_of(proxy, host=host, reason=reason)
    assert (record["status"], record["decision"]) == (status, "error"), record
    assert detail_has in (record["detail"] or ""), record
    wait_metric(proxy, REQUESTS, 1, reason=reason, kind="http")


def served(proxy: ProxyProcess, host: str, origin: Origin) -> None:
    _, result = get(proxy, host, origin.port)
    assert single_response(result).body == f"hello from {origin.name}".encode()  # type: ignore[arg-type]


@pytest.fixture
def web(origin: Origin, dns_server: DnsServer) -> Origin:
    for name in ("down.test", "slow.test", "fail.test", "big.test"):
        dns_server.records[name] = [origin.host]
    return origin


def start(proxy_factory: ProxyFactory, web: Origin, **keys: object) -> ProxyProcess:
    return start_proxy(
        proxy_factory,
        allow=["down.test", "slow.test", "fail.test", "big.test"],
        ports=[web.port],
        limits={"dns_timeout_s": DNS_TIMEOUT_S},
        **keys,
    )


def test_dns_down_is_a_prompt_dns_failure_and_recovers_when_dns_is_back(
    proxy_factory: ProxyFactory, web: Origin, dns_server: DnsServer
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: ICMP port unreachable
    proxy = start(proxy_factory, web, nameservers=[dead])
    for _ in range(2):  # the second one asks again (no stuck in-flight lookup)
        refused_in_time(proxy, "down.test", web.port, 502, "dns-failure")
    proxy.reload({**proxy.config, "nameservers": [dns_server.address]}, wait_for="reloaded")
    served(proxy, "down.test", web)
    no_tracebacks(proxy)


def test_dns_slow_is_a_dns_timeout_within_the_bound_and_recovers(
    proxy_factory: ProxyFactory, web: Origin, dns_server: DnsServer
) -> None:
    proxy = start(proxy_factory, web)
    dns_server.set_delay("slow.test", DNS_TIMEOUT_S + 1.5)
    refused_in_time(proxy, "slow.test", web.port, 504, "dns-timeout")
    wait_metric(proxy, "egressgate_dns_lookup_seconds_count", 1, result="error")
    dns_server.set_delay("slow.test", 0)
    served(proxy, "slow.test", web)  # a timeout is not negative-cached
    no_tracebacks(proxy)


def test_dns_servfail_is_a_dns_failure_not_cached_and_recovers(
    proxy_factory: ProxyFactory, web: Origin, dns_server: DnsServer
) -> None:
    proxy = start(proxy_factory, web)
    dns_server.set_behaviour("fail.test", "servfail")
    refused_in_time(proxy, "fail.test", web.port, 502, "dns-failure")
    dns_server.set_behaviour("fail.test", "answer")
    served(proxy, "fail.test", web)
    no_tracebacks(proxy)


def test_dns_truncated_answer_is_retried_over_tcp_and_served(
    proxy_factory: ProxyFactory, web: Origin, dns_server: DnsServer
) -> None:
    proxy = start(proxy_factory, web)
    dns_server.set_behaviour("big.test", "truncate")
    served(proxy, "big.test", web)
    assert [q.transport for q in dns_server.queries("big.test")].count("tcp") >= 1
    record = record_of(proxy, host="big.test")
    assert (record["status"], record["reason"], record["address"]) == (200, "allowed", web.host)
    wait_metric(proxy, REQUESTS, 1, reason="allowed", kind="http")
    wait_metric(proxy, "egressgate_dns_lookup_seconds_count", 1, result="ok")
    no_tracebacks(proxy)
