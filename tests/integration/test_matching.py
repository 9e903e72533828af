"""Allowlist matching through the real proxy, for plain HTTP (absolute-form) and CONNECT.

Every name in these tests resolves (through the test DNS server) to a loopback origin: allowed
names to the "origin", every other name to the "canary". A name the proxy must refuse is asked
for on the canary's port, so a wrong "allow" would reach the canary; the tests check that the
canary saw no connection at all and that the proxy never even looked the refused name up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from tests.integration.helpers_core import (
    assert_raw_refusal,
    assert_refusal,
    connect_refusal,
    http_request,
    ports_of,
    send_raw,
    single_response,
    start_proxy,
    tunnel_request,
)
from tests.support.clients import curl
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess


@dataclass
class Env:
    dns: DnsServer
    origin: Origin
    canary: Origin
    proxy_factory: ProxyFactory
    proxy: ProxyProcess | None = None

    def start(self, allow: Sequence[str]) -> ProxyProcess:
        self.proxy = start_proxy(
            self.proxy_factory, allow=allow, ports=ports_of(self.origin, self.canary)
        )
        return self.proxy

    def expect_allowed(self, host: str) -> None:
        """`host` is forwarded as plain HTTP and tunnelled by CONNECT, to the origin."""
        assert self.proxy is not None
        before = len(self.origin.request_records())
        url = f"http://{host}:{self.origin.port}/"
        response = single_response(send_raw(self.proxy, http_request(url, close=True)))
        assert response.status == 200, f"{host}: {response.raw[:500]!r}"
        assert response.body == b"hello from origin"
        tunnel, result = tunnel_request(
            self.proxy,
            f"{host}:{self.origin.port}",
            http_request("/", host=f"{host}:{self.origin.port}", close=True),
        )
        assert tunnel.status == 200, f"CONNECT {host}: {tunnel.raw_head!r}"
        assert single_response(result).body == b"hello from origin"
        assert len(self.origin.request_records()) == before + 2
        self.canary.assert_untouched()

    def expect_refused(self, host: str, shown: str | None = None) -> None:
        """`host` is refused (403 host-not-allowed) for plain HTTP and CONNECT, before DNS."""
        assert self.proxy is not None
        url = f"http://{host}:{self.canary.port}/"
        shown = shown if shown is not None else host.lower().rstrip(".")
        result = send_raw(self.proxy, http_request(url, close=True))
        assert_raw_refusal(result, 403, "host-not-allowed", host=shown)
        response = connect_refusal(self.proxy, f"{host}:{self.canary.port}")
        assert_refusal(response, 403, "host-not-allowed", body=response.body, host=shown)
        assert self.dns.query_count(host) == 0, f"the proxy looked up refused name {host}"
        self.canary.assert_untouched()


@pytest.fixture
def env(dns_server: DnsServer, origin_factory: OriginFactory, proxy_factory: ProxyFactory) -> Env:
    origin = origin_factory("origin", host="127.0.0.1")
    canary = origin_factory("canary", host="127.0.0.3")
    # Every name not listed below resolves to the canary.
    for wildcard in ("*.test", "*.com", "*.net", "*.evil"):
        dns_server.records[wildcard] = [canary.host]
    for name in (
        "exact.test",
        "domain.test",
        "*.domain.test",
        "*.sub.test",
        "example.com",
        "*.example.com",
        "xn--bcher-kva.test",
        "xn--caf-dma.test",
    ):
        dns_server.records[name] = [origin.host]
    return Env(dns_server, origin, canary, proxy_factory)


def test_exact_entry_allows_only_that_name(env: Env) -> None:
    env.start(["exact.test"])
    env.expect_allowed("exact.test")
    for host in ("www.exact.test", "notexact.test", "exact.test.evil", "exact.tes", "xact.test"):
        env.expect_refused(host)


def test_dot_domain_entry_allows_the_apex_and_every_subdomain(env: Env) -> None:
    env.start([".domain.test"])
    for host in ("domain.test", "a.domain.test", "deep.er.domain.test"):
        env.expect_allowed(host)
    for host in ("otherdomain.test", "domain.test.evil", "test"):
        env.expect_refused(host)


def test_star_entry_allows_subdomains_but_not_the_apex(env: Env) -> None:
    env.start(["*.sub.test"])
    for host in ("x.sub.test", "y.x.sub.test"):
        env.expect_allowed(host)
    for host in ("sub.test", "xsub.test", "sub.test.evil"):
        env.expect_refused(host)


def test_dot_domain_entry_refuses_lookalike_and_suffix_names(env: Env) -> None:
    env.start([".example.com"])
    env.expect_allowed("example.com")
    env.expect_allowed("www.example.com")
    for host in ("badexample.com", "example.com.evil.test", "example.comx", "example.co"):
        env.expect_refused(host)


def test_matching_ignores_case_in_requests_and_entries(env: Env) -> None:
    env.start(["Exact.TEST", ".DOMAIN.test"])
    for host in ("exact.test", "EXACT.Test", "domain.test", "Sub.DoMaIn.TeSt"):
        env.expect_allowed(host)
    env.expect_refused("EXACT.TEST.evil")


def test_trailing_dot_names_the_same_host(env: Env) -> None:
    env.start(["exact.test", ".domain.test."])
    for host in ("exact.test.", "domain.test.", "a.domain.test."):
        env.expect_allowed(host)
    env.expect_refused("other.test.")


def test_idn_entries_match_their_punycode_form(env: Env) -> None:
    # One entry written in Unicode, one already in punycode; clients send punycode.
    env.start(["bücher.test", "xn--caf-dma.test"])
    env.expect_allowed("xn--bcher-kva.test")
    env.expect_allowed("xn--caf-dma.test")
    assert env.dns.query_count("xn--bcher-kva.test") > 0  # looked up in its ASCII form
    for host in ("bucher.test", "xn--bcher-kva.test.evil", "cafe.test"):
        env.expect_refused(host)


def test_star_alone_allows_every_name_but_no_ip_literal(env: Env) -> None:
    proxy = env.start(["*"])
    env.expect_allowed("exact.test")
    env.expect_allowed("anything.domain.test")
    url = f"http://{env.canary.host}:{env.canary.port}/"
    result = send_raw(proxy, http_request(url, close=True))
    assert_raw_refusal(result, 403, "ip-literal-not-allowed", host=env.canary.host)
    env.canary.assert_untouched()


def test_curl_through_the_proxy_follows_the_same_rules(env: Env) -> None:
    proxy = env.start([".domain.test"])
    allowed = curl([f"http://www.domain.test:{env.origin.port}/"], proxy=proxy.proxy_address)
    assert (allowed.exit_code, allowed.status, allowed.body) == (0, 200, b"hello from origin")
    tunnelled = curl(["-p", f"http://www.domain.test:{env.origin.port}/"], proxy=proxy.proxy_url)
    assert (tunnelled.connect_status, tunnelled.status) == (200, 200)
    assert tunnelled.body == b"hello from origin"
    refused = curl([f"http://baddomain.test:{env.canary.port}/"], proxy=proxy.proxy_address)
    assert_refusal(refused, 403, "host-not-allowed", body=refused.body, host="baddomain.test")
    refused_tunnel = curl(
        ["-p", f"http://baddomain.test:{env.canary.port}/"], proxy=proxy.proxy_url
    )
    assert refused_tunnel.connect_status == 403
    assert refused_tunnel.exit_code != 0
    env.canary.assert_untouched()
    assert env.dns.query_count("baddomain.test") == 0
