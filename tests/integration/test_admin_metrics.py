"""The admin listener (issue 4): /healthz, /readyz, /metrics after real traffic; probes unlogged.

One proxy per test, real origins on loopback, the test DNS server; /metrics is parsed with
prometheus_client's own parser and every counter is checked by its labels, and against the
access log (the metrics and the log come from the same record).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.integration.helpers_ops import (
    EchoTunnel,
    Scrape,
    admin_get,
    closed_port,
    file_sha256,
    loopback_policy,
    payload,
    proxied_get,
    readyz,
    scrape,
    wait_for_metric,
)
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

TUNNEL_BYTES = 5000


@pytest.fixture
def world(
    dns_server: DnsServer,
    origin_factory: OriginFactory,
    raw_origin_factory: RawOriginFactory,
    proxy_factory: ProxyFactory,
) -> tuple[ProxyProcess, Origin, RawOrigin, int]:
    """A proxy allowing allowed.test (HTTP origin), echo.test (echo server), down.test (a
    closed port) and missing.test (NXDOMAIN); denied.test resolves but is not allowed."""
    origin = origin_factory("web")
    echo = raw_origin_factory("echo", mode="echo")
    dead_port = closed_port()
    for name in ("allowed.test", "echo.test", "down.test", "denied.test"):
        dns_server.records[name] = ["127.0.0.1"]
    proxy = proxy_factory(
        loopback_policy(
            ["allowed.test", "echo.test", "down.test", "missing.test"],
            http_ports=[origin.port, dead_port],
            connect_ports=[echo.port],
        )
    )
    return proxy, origin, echo, dead_port


def test_healthz_is_200_and_readyz_reports_generation_and_config_sha256(
    world: tuple[ProxyProcess, Origin, RawOrigin, int],
) -> None:
    proxy, _, _, _ = world
    assert proxy.admin_address is not None
    health = admin_get(proxy.admin_address, "/healthz")
    assert (health.status, health.body) == (200, b"ok\n")

    status, body = readyz(proxy)
    assert status == 200
    expected_sha = file_sha256(proxy.config_path)
    assert body["ready"] is True
    assert body["draining"] is False
    assert body["generation"] == 1
    assert body["sha256"] == expected_sha
    assert proxy.listening is not None
    assert proxy.listening["sha256"] == expected_sha

    assert admin_get(proxy.admin_address, "/nope").status == 404


def _do_traffic(
    proxy: ProxyProcess, origin: Origin, echo: RawOrigin, dead_port: int
) -> dict[str, Any]:
    """Allowed HTTP, denied HTTP, an upstream connect error, an NXDOMAIN; returns responses."""
    allowed = proxied_get(proxy.proxy_address, origin.url("/bytes/1000", "allowed.test"))
    denied = proxied_get(proxy.proxy_address, origin.url("/", "denied.test"))
    refused = proxied_get(proxy.proxy_address, f"http://down.test:{dead_port}/")
    missing = proxied_get(proxy.proxy_address, origin.url("/", "missing.test"))
    return {"allowed": allowed, "denied": denied, "refused": refused, "missing": missing}


def test_metrics_count_requests_bytes_errors_and_dns_lookups_by_label(
    world: tuple[ProxyProcess, Origin, RawOrigin, int], dns_server: DnsServer
) -> None:
    proxy, origin, echo, dead_port = world
    before = scrape(proxy)
    assert before.value("egressgate_requests_total") == 0
    assert before.value("egressgate_active_tunnels") == 0

    got = _do_traffic(proxy, origin, echo, dead_port)
    assert got["allowed"].status == 200
    assert len(got["allowed"].body) == 1000
    assert (got["denied"].status, got["denied"].header("x-egressgate-reason")) == (
        403,
        "host-not-allowed",
    )
    assert (got["refused"].status, got["refused"].header("x-egressgate-reason")) == (
        502,
        "upstream-refused",
    )
    assert (got["missing"].status, got["missing"].header("x-egressgate-reason")) == (
        502,
        "dns-nxdomain",
    )

    data = payload(TUNNEL_BYTES, seed=1)
    with EchoTunnel(proxy.proxy_address, echo.authority("echo.test")) as tunnel:
        assert tunnel.status == 200
        assert tunnel.roundtrip(data) == data
        during = wait_for_metric(proxy, "egressgate_active_tunnels", 1)
        assert during.value("egressgate_active_tunnels") == 1
    wait_for_metric(proxy, "egressgate_active_tunnels", 0)
    after = wait_for_metric(proxy, "egressgate_requests_total", 1, kind="tunnel", decision="allow")

    requests = "egressgate_requests_total"
    expected = {
        ("http", "allow", "allowed", "default"): 1,
        ("http", "deny", "host-not-allowed", "default"): 1,
        ("http", "error", "upstream-refused", "default"): 1,
        ("http", "error", "dns-nxdomain", "default"): 1,
        ("tunnel", "allow", "allowed", "default"): 1,
    }
    seen = {
        (s.labels["kind"], s.labels["decision"], s.labels["reason"], s.labels["policy"]): s.value
        for s in after.matching(requests)
    }
    assert seen == expected

    # Bytes: the tunnel moved exactly what we sent each way; HTTP bytes agree with the log.
    assert after.value("egressgate_bytes_total", direction="up", kind="tunnel") == TUNNEL_BYTES
    assert after.value("egressgate_bytes_total", direction="down", kind="tunnel") == TUNNEL_BYTES
    records = proxy.wait_for_records(5)
    http_down = sum(r["bytes_down"] for r in records if r["kind"] == "http")
    assert http_down >= 1000
    assert after.value("egressgate_bytes_total", direction="down", kind="http") == http_down

    # The refused connect is an upstream error by reason; nothing else failed upstream.
    assert after.value("egressgate_upstream_errors_total", reason="upstream-refused") == 1
    assert after.value("egressgate_upstream_errors_total") == 1

    # DNS: allowed.test, echo.test, down.test resolved (ok), missing.test failed (error);
    # denied.test was refused before any lookup.
    assert dns_server.query_count("denied.test") == 0
    assert dns_server.query_count("allowed.test") >= 1
    ok_count = after.value("egressgate_dns_lookup_seconds_count", result="ok")
    assert ok_count == 3
    assert after.value("egressgate_dns_lookup_seconds_count", result="error") == 1
    _assert_histogram_consistent(after, "egressgate_dns_lookup_seconds", "ok")
    assert after.value("egressgate_dns_lookup_seconds_sum", result="ok") > 0

    assert after.value("egressgate_reloads_total", result="success") == 0
    assert after.value("egressgate_reloads_total", result="failure") == 0
    assert after.value("egressgate_config_generation") == 1
    (info,) = after.matching("egressgate_config_info")
    assert info.value == 1
    assert info.labels == {
        "sha256": file_sha256(proxy.config_path),
        "source": str(proxy.config_path),
    }


def _assert_histogram_consistent(snapshot: Scrape, name: str, result: str) -> None:
    buckets = snapshot.matching(f"{name}_bucket", result=result)
    assert len(buckets) >= 2
    counts = [b.value for b in buckets]
    assert counts == sorted(counts), "histogram buckets must be cumulative"
    (inf,) = [b for b in buckets if b.labels["le"] == "+Inf"]
    assert inf.value == snapshot.value(f"{name}_count", result=result)


def test_active_connections_gauge_follows_an_idle_keepalive_connection(
    world: tuple[ProxyProcess, Origin, RawOrigin, int],
) -> None:
    proxy, origin, _, _ = world
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        request = f"GET {origin.url('/', 'allowed.test')} HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request.encode())
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        wait_for_metric(proxy, "egressgate_active_connections", 1)
    wait_for_metric(proxy, "egressgate_active_connections", 0)


def test_reload_updates_generation_info_and_reload_counters(
    world: tuple[ProxyProcess, Origin, RawOrigin, int],
) -> None:
    proxy, _, _, _ = world
    first_sha = file_sha256(proxy.config_path)
    new_config = dict(proxy.config, allow=["allowed.test"])
    mark = proxy.reload(new_config, wait_for="reloaded")
    event = proxy.wait_for_event("reloaded", after=mark)
    new_sha = file_sha256(proxy.config_path)
    assert new_sha != first_sha
    assert event["sha256"] == new_sha

    snapshot = scrape(proxy)
    generation = snapshot.value("egressgate_config_generation")
    # A file watcher may notice the rewrite just before the SIGHUP arrives: then there are two
    # successful reloads of the same content. Either way the counters agree with each other.
    assert generation >= 2
    assert snapshot.value("egressgate_reloads_total", result="success") == generation - 1
    assert event["generation"] in (generation, generation - 1)
    (info,) = snapshot.matching("egressgate_config_info")
    assert info.labels["sha256"] == new_sha
    status, body = readyz(proxy)
    assert (status, body["generation"], body["sha256"]) == (200, generation, new_sha)


def test_probes_scrapes_and_proxy_port_healthz_never_reach_the_access_log(
    world: tuple[ProxyProcess, Origin, RawOrigin, int],
) -> None:
    proxy, origin, _, _ = world
    assert proxy.admin_address is not None
    for path in ("/healthz", "/readyz", "/metrics", "/healthz?verbose=1"):
        assert admin_get(proxy.admin_address, path).status == 200
    # The proxy port answers its own GET /healthz (origin-form) and does not log it.
    own = admin_get(proxy.proxy_address, "/healthz")
    assert (own.status, own.body) == (200, b"ok\n")

    # A marker request after the probes: once it is in the log, anything logged before it is.
    marker = proxied_get(proxy.proxy_address, origin.url("/?marker=1", "allowed.test"))
    assert marker.status == 200
    records = proxy.wait_for_records(1)
    assert len(records) == 1, json.dumps(records, indent=1)
    assert records[0]["host"] == "allowed.test"
    assert records[0]["decision"] == "allow"
