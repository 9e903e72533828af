"""Every refusal reason of the core proxy: status, X-Egressgate-Reason, body, and no leak.

A refusal decided before any connection is checked against a CANARY: every name in these tests
resolves (test DNS server) to the canary origin, which must see no TCP connection at all. For
refusals decided on the name, the DNS server must not even have been asked for it. Tests whose
destination is a non-loopback address (10.x, 169.254.169.254, fd00::) run the proxy inside an
isolated network namespace, where such an address is unreachable: nothing can leave the machine
even if the proxy were to connect.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.helpers_core import (
    LOOPBACK_NET,
    IsolatedNetns,
    assert_raw_refusal,
    assert_refusal,
    connect_refusal,
    free_port,
    http_request,
    isolated_netns,
    needs_ipv6,
    ports_of,
    read_until_close,
    send_raw,
    single_response,
    start_proxy,
    wait_record,
)
from tests.support.clients import (
    RawResult,
    curl,
    open_connect_tunnel,
    read_response,
)
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOriginFactory, pattern_sha256
from tests.support.proxy import ProxyFactory, ProxyProcess, base_proxy_config

CANARY_HOST = "127.0.0.3"


@pytest.fixture
def canary(origin_factory: OriginFactory, dns_server: DnsServer) -> Iterator[Origin]:
    """An origin that must never be reached; every *.test name resolves to it."""
    origin = origin_factory("canary", host=CANARY_HOST)
    dns_server.records["*.test"] = [CANARY_HOST]
    dns_server.records["allowed.test"] = [CANARY_HOST]
    yield origin
    origin.assert_untouched()


@dataclass
class Shared:
    """One proxy (and its DNS server and canary) shared by the tests of malformed requests,
    none of which may reach anything: limits max_request_line_bytes 1024, max_header_bytes
    4096, allow allowed.test (which resolves to the canary)."""

    dns: DnsServer
    canary: Origin
    proxy: ProxyProcess


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    with DnsServer() as dns, Origin("shared-canary", host=CANARY_HOST) as canary:
        dns.records["*.test"] = [CANARY_HOST]
        dns.records["allowed.test"] = [CANARY_HOST]
        workdir = tmp_path_factory.mktemp("shared-proxy")
        config = base_proxy_config(dns.address, workdir) | {
            "allow": ["allowed.test"],
            "allow_private": [LOOPBACK_NET],
            "http_ports": [canary.port],
            "connect_ports": [canary.port],
            "limits": {"max_request_line_bytes": 1024, "max_header_bytes": 4096},
        }
        with ProxyProcess(config, workdir) as proxy:
            yield Shared(dns, canary, proxy)


@pytest.fixture
def shared(shared_env: Shared) -> Iterator[Shared]:
    """`shared_env`, checking after each test that nothing reached the canary or DNS."""
    yield shared_env
    shared_env.canary.assert_untouched()
    assert shared_env.dns.queries() == [], "a malformed request caused a DNS lookup"


# ---------------------------------------------------------------------------------------------
# Policy refusals: 403
# ---------------------------------------------------------------------------------------------


def test_host_not_on_the_allowlist_is_refused_403_before_any_lookup(
    proxy_factory: ProxyFactory, dns_server: DnsServer, canary: Origin
) -> None:
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(canary))
    url = f"http://denied.test:{canary.port}/"
    result = send_raw(proxy, http_request(url, close=True))
    response = assert_raw_refusal(result, 403, "host-not-allowed", host="denied.test")
    assert b"not on the allowlist" in response.body
    tunnel = connect_refusal(proxy, f"denied.test:{canary.port}")
    assert_refusal(tunnel, 403, "host-not-allowed", body=tunnel.body, host="denied.test")
    via_curl = curl([url], proxy=proxy.proxy_address)
    assert_refusal(via_curl, 403, "host-not-allowed", body=via_curl.body, host="denied.test")
    assert dns_server.query_count("denied.test") == 0


def test_port_outside_http_ports_is_refused_for_plain_http(
    proxy_factory: ProxyFactory, dns_server: DnsServer, canary: Origin
) -> None:
    # The canary's port is a CONNECT port here, which must not make it a plain-HTTP port.
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=[],
        http_ports=[free_port()],
        connect_ports=[canary.port],
    )
    result = send_raw(proxy, http_request(f"http://allowed.test:{canary.port}/", close=True))
    response = assert_raw_refusal(result, 403, "port-not-allowed", host="allowed.test")
    assert f"port {canary.port}".encode() in response.body
    assert dns_server.query_count("allowed.test") == 0


def test_port_outside_connect_ports_is_refused_for_connect(
    proxy_factory: ProxyFactory, dns_server: DnsServer, canary: Origin
) -> None:
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=[],
        http_ports=[canary.port],
        connect_ports=[443],
    )
    response = connect_refusal(proxy, f"allowed.test:{canary.port}")
    assert_refusal(response, 403, "port-not-allowed", body=response.body, host="allowed.test")
    assert dns_server.query_count("allowed.test") == 0


def test_ip_literal_destination_is_refused_unless_listed(
    proxy_factory: ProxyFactory, canary: Origin
) -> None:
    proxy = start_proxy(proxy_factory, allow=["allowed.test", ".test"], ports=ports_of(canary))
    literal = f"{CANARY_HOST}:{canary.port}"
    result = send_raw(proxy, http_request(f"http://{literal}/", close=True))
    assert_raw_refusal(result, 403, "ip-literal-not-allowed", host=CANARY_HOST)
    response = connect_refusal(proxy, literal)
    assert_refusal(response, 403, "ip-literal-not-allowed", body=response.body, host=CANARY_HOST)


def test_allowed_name_resolving_to_loopback_outside_allow_private_is_refused(
    proxy_factory: ProxyFactory, dns_server: DnsServer, canary: Origin
) -> None:
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=ports_of(canary),
        allow_private=["127.0.0.2/32"],  # not the canary's 127.0.0.3
    )
    url = f"http://allowed.test:{canary.port}/"
    response = assert_raw_refusal(
        send_raw(proxy, http_request(url, close=True)), 403, "private-address", host="allowed.test"
    )
    assert CANARY_HOST.encode() in response.body  # the detail names the address
    tunnel = connect_refusal(proxy, f"allowed.test:{canary.port}")
    assert_refusal(tunnel, 403, "private-address", body=tunnel.body, host="allowed.test")
    assert CANARY_HOST.encode() in tunnel.body
    assert dns_server.query_count("allowed.test") > 0  # refused on the answer, not the name
    record = wait_record(proxy, method="GET", reason="private-address")
    assert record["decision"] == "deny"
    assert CANARY_HOST in record["detail"]


@needs_ipv6
def test_allowed_name_resolving_to_ipv6_loopback_is_refused_when_only_ipv4_is_private_ok(
    proxy_factory: ProxyFactory, dns_server: DnsServer, origin_factory: OriginFactory
) -> None:
    v6_canary = origin_factory("v6-canary", host="::1")
    dns_server.records["six.test"] = ["::1"]
    proxy = start_proxy(proxy_factory, allow=["six.test"], ports=ports_of(v6_canary))
    url = f"http://six.test:{v6_canary.port}/"
    response = assert_raw_refusal(
        send_raw(proxy, http_request(url, close=True)), 403, "private-address", host="six.test"
    )
    assert b"::1" in response.body
    tunnel = connect_refusal(proxy, f"six.test:{v6_canary.port}")
    assert_refusal(tunnel, 403, "private-address", body=tunnel.body, host="six.test")
    v6_canary.assert_untouched()


@dataclass
class Isolated:
    """A proxy, and a DNS server, in an isolated network namespace (see helpers_core)."""

    netns: IsolatedNetns
    dns: DnsServer
    proxy: ProxyProcess


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    with isolated_netns() as netns:
        dns = netns.dns_server()
        workdir = tmp_path_factory.mktemp("isolated-proxy")
        config = base_proxy_config(dns.address, workdir) | {
            "allow": [".internal.test"],
            "allow_private": [LOOPBACK_NET],
            "http_ports": [80],
            "connect_ports": [443],
        }
        with ProxyProcess(config, workdir, command=netns.command) as proxy:
            yield Isolated(netns, dns, proxy)


@pytest.mark.parametrize(
    "address",
    ["10.20.30.40", "169.254.169.254", "172.16.0.1", "100.64.0.1", "fd00:ec2::254"],
)
def test_allowed_name_resolving_to_an_internal_network_address_is_refused(
    isolated: Isolated, address: str
) -> None:
    # The proxy runs in an isolated network namespace: no route leaves it, so even a wrong
    # "allow" could not send a packet anywhere.
    name = address.replace(".", "-").replace(":", "-") + ".internal.test"
    isolated.dns.records[name] = [address]
    request = http_request(f"http://{name}/", close=True)
    result = isolated.netns.run(send_raw, isolated.proxy, request)
    response = assert_raw_refusal(result, 403, "private-address", host=name)
    assert address.encode() in response.body
    tunnel = isolated.netns.run(connect_refusal, isolated.proxy, f"{name}:443")
    assert_refusal(tunnel, 403, "private-address", body=tunnel.body, host=name)
    assert address.encode() in tunnel.body
    records = isolated.proxy.wait_for_records(2, predicate=lambda r: r["host"] == name)
    assert {r["reason"] for r in records} == {"private-address"}
    # No connection was attempted; the record names the refused address (issue 12).
    assert {r["address"] for r in records} == {address}


def test_isolated_namespace_turns_an_internal_address_into_502_upstream_unreachable(
    proxy_factory: ProxyFactory,
) -> None:
    # Self-check of the isolation the test above relies on: here allow_private DOES cover the
    # address, so the proxy tries to connect, and the namespace (no route but loopback) makes
    # that fail locally (ENETUNREACH) instead of sending anything.
    with isolated_netns() as netns:
        dns = netns.dns_server()
        dns.records["internal.test"] = ["10.20.30.40"]
        proxy = proxy_factory(
            command=netns.command,
            nameservers=[dns.address],
            allow=["internal.test"],
            allow_private=["10.0.0.0/8"],
            http_ports=[80],
        )
        request = http_request("http://internal.test/", close=True)
        result = netns.run(send_raw, proxy, request)
        response = assert_raw_refusal(result, 502, "upstream-unreachable", host="internal.test")
        assert b"10.20.30.40:80" in response.body


# ---------------------------------------------------------------------------------------------
# DNS and upstream failures: 502 / 504
# ---------------------------------------------------------------------------------------------


def test_name_that_does_not_exist_answers_502_dns_nxdomain(
    proxy_factory: ProxyFactory, dns_server: DnsServer, canary: Origin
) -> None:
    proxy = start_proxy(proxy_factory, allow=["missing.example"], ports=ports_of(canary))
    url = f"http://missing.example:{canary.port}/"
    assert_raw_refusal(
        send_raw(proxy, http_request(url, close=True)), 502, "dns-nxdomain", host="missing.example"
    )
    tunnel = connect_refusal(proxy, f"missing.example:{canary.port}")
    assert_refusal(tunnel, 502, "dns-nxdomain", body=tunnel.body, host="missing.example")
    assert dns_server.query_count("missing.example") > 0


def test_unanswered_lookup_answers_504_dns_timeout_within_the_configured_bound(
    proxy_factory: ProxyFactory, dns_server: DnsServer, canary: Origin
) -> None:
    dns_server.set_behaviour("hole.test", "blackhole")
    proxy = start_proxy(
        proxy_factory,
        allow=["hole.test"],
        ports=ports_of(canary),
        limits={"dns_timeout_s": 0.6},
    )
    started = time.monotonic()
    result = send_raw(proxy, http_request(f"http://hole.test:{canary.port}/", close=True))
    elapsed = time.monotonic() - started
    assert_raw_refusal(result, 504, "dns-timeout", host="hole.test")
    assert 0.3 <= elapsed < 3.0, f"dns-timeout after {elapsed:.2f}s with dns_timeout_s 0.6"
    tunnel = connect_refusal(proxy, f"hole.test:{canary.port}")
    assert_refusal(tunnel, 504, "dns-timeout", body=tunnel.body, host="hole.test")
    assert dns_server.query_count("hole.test") > 0


def test_closed_port_answers_502_upstream_refused(
    proxy_factory: ProxyFactory, dns_server: DnsServer
) -> None:
    port = free_port()
    dns_server.records["closed.test"] = ["127.0.0.1"]
    proxy = start_proxy(proxy_factory, allow=["closed.test"], ports=[port])
    result = send_raw(proxy, http_request(f"http://closed.test:{port}/", close=True))
    response = assert_raw_refusal(result, 502, "upstream-refused", host="closed.test")
    assert f"127.0.0.1:{port}".encode() in response.body
    tunnel = connect_refusal(proxy, f"closed.test:{port}")
    assert_refusal(tunnel, 502, "upstream-refused", body=tunnel.body, host="closed.test")
    record = wait_record(proxy, method="GET")
    assert (record["decision"], record["reason"], record["status"]) == (
        "error",
        "upstream-refused",
        502,
    )


def test_origin_that_does_not_answer_in_time_answers_504_upstream_timeout(
    proxy_factory: ProxyFactory, dns_server: DnsServer, origin: Origin
) -> None:
    dns_server.records["slow.test"] = [origin.host]
    proxy = start_proxy(
        proxy_factory,
        allow=["slow.test"],
        ports=ports_of(origin),
        limits={"response_timeout_s": 0.3},
    )
    started = time.monotonic()
    # The origin would answer 200 after 1.5 s: a 504 proves the proxy's own timeout fired
    # (the proxy checks deadlines about twice a second, so allow it some slack).
    url = f"http://slow.test:{origin.port}/slow?delay=1.5"
    result = send_raw(proxy, http_request(url, close=True))
    elapsed = time.monotonic() - started
    assert_raw_refusal(result, 504, "upstream-timeout", host="slow.test")
    assert elapsed >= 0.25, f"upstream-timeout after {elapsed:.2f}s, limit 0.3s"
    # The origin got the request; let its slow handler finish before teardown.
    origin.wait_for_requests(1, path="/slow")
    origin.accepts.wait_until(lambda items: all(a.closed for a in items), 5.0, "origin done")


# ---------------------------------------------------------------------------------------------
# Requests that are not acceptable: 400 / 414 / 431
# ---------------------------------------------------------------------------------------------


def test_origin_form_request_is_refused_400_not_a_proxy_request(shared: Shared) -> None:
    request = http_request("/", host=f"allowed.test:{shared.canary.port}", close=True)
    assert_raw_refusal(send_raw(shared.proxy, request), 400, "not-a-proxy-request", policy=None)


@pytest.mark.parametrize("scheme", ["https", "ftp", "ws", "file"])
def test_url_with_a_scheme_other_than_http_is_refused_400_unsupported_scheme(
    shared: Shared, scheme: str
) -> None:
    authority = f"allowed.test:{shared.canary.port}"
    request = http_request(f"{scheme}://{authority}/", host=authority, close=True)
    assert_raw_refusal(send_raw(shared.proxy, request), 400, "unsupported-scheme", policy=None)


def test_request_line_over_the_limit_is_refused_414(shared: Shared) -> None:
    url = f"http://allowed.test:{shared.canary.port}/" + "a" * 2000
    result = send_raw(shared.proxy, http_request(url, close=True))
    assert_raw_refusal(result, 414, "uri-too-long", policy=None)
    # Just under the limit, the request is judged on its host (a refused one, so that nothing
    # is reached): 403, not 414.
    short = f"http://denied.example:{shared.canary.port}/" + "a" * 900
    result = send_raw(shared.proxy, http_request(short, close=True))
    assert_raw_refusal(result, 403, "host-not-allowed")


@pytest.mark.parametrize("pieces", [1, 8], ids=["one-write", "trickled"])
def test_header_block_over_the_limit_is_refused_431(shared: Shared, pieces: int) -> None:
    headers = [(f"X-Filler-{i}", "f" * 200) for i in range(40)]  # ~9 KB of header lines
    url = f"http://allowed.test:{shared.canary.port}/"
    request = http_request(url, headers=headers, close=True)
    size = -(-len(request) // pieces)
    chunks = [request[i : i + size] for i in range(0, len(request), size)]
    result = send_raw(shared.proxy, chunks)
    assert_raw_refusal(result, 431, "headers-too-large", policy=None)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"HELLO\r\n\r\n", id="garbage"),
        pytest.param(b"GET http://allowed.test:1/ HTTP/1.1\nHost: x\n\n", id="bare-lf"),
        pytest.param(b"GET http://u:pw@allowed.test:1/ HTTP/1.1\r\n\r\n", id="userinfo"),
        pytest.param(b"CONNECT allowed.test HTTP/1.1\r\nHost: a\r\n\r\n", id="connect-no-port"),
        pytest.param(b"GET http://allowed.test:1/ HTTP/1.1\r\nX-A : b\r\n\r\n", id="space-colon"),
        pytest.param(b"GET http://allowed.test:99999/ HTTP/1.1\r\n\r\n", id="bad-port"),
        pytest.param(b"GET http://allowed.test:1/ HTTP/9.9\r\n\r\n", id="bad-version"),
    ],
)
def test_malformed_request_is_refused_400_bad_request(shared: Shared, request_bytes: bytes) -> None:
    assert_raw_refusal(send_raw(shared.proxy, request_bytes), 400, "bad-request", policy=None)


SMUGGLING = {
    "cl-and-te": (
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"
        "Host: allowed.test\r\n\r\n"
    ),
    "te-and-cl": "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "conflicting-cl": "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-list": "Content-Length: 5, 6\r\n\r\nhello!",
    "bad-chunk-size": "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "obs-fold": "X-Folded: one\r\n two\r\nContent-Length: 0\r\n\r\n",
    "te-not-chunked": "Transfer-Encoding: gzip\r\n\r\nhello",
    "te-chunked-not-last": "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_ambiguous_message_framing_is_refused_400_request_smuggling(
    shared: Shared, framing: str
) -> None:
    head = (
        f"POST http://allowed.test:{shared.canary.port}/upload HTTP/1.1\r\nHost: allowed.test\r\n"
    )
    result = send_raw(shared.proxy, (head + framing).encode("latin-1"))  # one write
    response = single_response(result)
    assert_refusal(response, 400, "request-smuggling", body=response.body, policy=None)
    assert result.closed or result.reset
    # The `shared` fixture checks that nothing, not even a connection, reached the canary.


def test_bytes_sent_after_a_refused_connect_reach_nothing(shared: Shared) -> None:
    # A CONNECT refused for its host, followed in the same write by bytes meant for the
    # tunnel: the bytes must not reach anything, and the connection must close.
    data = (
        f"CONNECT denied.test:{shared.canary.port} HTTP/1.1\r\nHost: denied.test\r\n\r\n"
        f"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n"
    ).encode()
    result = send_raw(shared.proxy, data)
    assert_raw_refusal(result, 403, "host-not-allowed", host="denied.test")


# ---------------------------------------------------------------------------------------------
# Slow and numerous clients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_incomplete_request_head_gets_408_after_header_timeout(
    proxy_factory: ProxyFactory, canary: Origin, method: str
) -> None:
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=ports_of(canary),
        limits={"header_timeout_s": 0.5},
    )
    target = f"allowed.test:{canary.port}"
    target = target if method == "CONNECT" else f"http://{target}/"
    half = f"{method} {target} HTTP/1.1\r\nHost: allowed.test\r\n".encode()
    started = time.monotonic()
    result = send_raw(proxy, half, read_timeout=5.0)
    elapsed = time.monotonic() - started
    assert result.closed or result.reset
    assert 0.4 <= elapsed < 3.0, f"closed after {elapsed:.2f}s with header_timeout_s 0.5"
    if result.data:
        assert_raw_refusal(result, 408, "header-timeout", policy=None)


def test_trickling_request_head_does_not_extend_the_header_timeout(
    proxy_factory: ProxyFactory, canary: Origin
) -> None:
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=ports_of(canary),
        limits={"header_timeout_s": 0.6},
    )
    head = f"GET http://allowed.test:{canary.port}/ HTTP/1.1\r\nX-Slow: " + "s" * 200
    started = time.monotonic()
    received = b""
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        for byte in head.encode():  # one byte every 50 ms: would take > 10 s in all
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.05)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            except ConnectionResetError:
                break
            if chunk is not None:
                received += chunk
                break
            if time.monotonic() - started > 5.0:
                pytest.fail("the proxy kept a trickling client for more than 5 s")
        received += read_until_close(sock, 5.0).data
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"the trickling client was cut after {elapsed:.2f}s"
    if received:
        assert_raw_refusal(
            RawResult(received, True, False, False), 408, "header-timeout", policy=None
        )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process `pid` (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
@pytest.mark.parametrize("prefix", [b"C", b"CONN", b"CONNECT"])
def test_client_stalled_inside_the_method_name_does_not_make_the_proxy_spin(
    proxy_factory: ProxyFactory, canary: Origin, prefix: bytes
) -> None:
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=ports_of(canary),
        limits={"header_timeout_s": 5},
    )
    with socket.create_connection(proxy.proxy_address, timeout=5) as sock:
        sock.sendall(prefix)
        time.sleep(0.2)
        before = process_cpu_seconds(proxy.pid)
        time.sleep(1.0)
        used = process_cpu_seconds(proxy.pid) - before
    # An idle proxy uses next to nothing; one busy-polling a socket uses a whole core.
    assert used < 0.3, f"the proxy used {used:.2f} CPU-seconds in 1 s waiting for {prefix!r}"


def test_connections_over_max_connections_are_refused_503(
    proxy_factory: ProxyFactory, canary: Origin
) -> None:
    proxy = start_proxy(
        proxy_factory,
        allow=["allowed.test"],
        ports=ports_of(canary),
        limits={"max_connections": 2},
    )
    held: list[socket.socket] = []
    try:
        for _ in range(2):
            sock = socket.create_connection(proxy.proxy_address, timeout=5)
            held.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: egressgate\r\n\r\n")
            assert read_response(sock).status == 200  # accepted and counted
        result = send_raw(proxy, http_request(f"http://allowed.test:{canary.port}/", close=True))
        assert_raw_refusal(result, 503, "too-many-connections", policy=None)
    finally:
        for sock in held:
            sock.close()
    # Once the held connections are gone, new clients are served again.
    deadline = time.monotonic() + 5.0
    while True:
        result = send_raw(
            proxy,
            b"GET /healthz HTTP/1.1\r\nHost: egressgate\r\nConnection: close\r\n\r\n",
            read_timeout=1,
        )
        if single_response(result).status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert single_response(result).status == 200


def test_open_tunnels_count_toward_max_connections(
    proxy_factory: ProxyFactory, dns_server: DnsServer, raw_origin_factory: RawOriginFactory
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["echo.test"] = [echo.host]
    proxy = start_proxy(
        proxy_factory, allow=["echo.test"], ports=ports_of(echo), limits={"max_connections": 2}
    )
    tunnels = [open_connect_tunnel(proxy.proxy_address, f"echo.test:{echo.port}") for _ in "ab"]
    try:
        for tunnel in tunnels:
            assert tunnel.status == 200
            tunnel.sock.sendall(b"ping")  # past the SNI check: a relayed tunnel
            assert tunnel.sock.recv(4) == b"ping"
        result = send_raw(proxy, b"GET /healthz HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        assert_raw_refusal(result, 503, "too-many-connections", policy=None)
    finally:
        for tunnel in tunnels:
            tunnel.close()


def test_malformed_request_from_one_client_does_not_disturb_another_clients_transfer(
    proxy_factory: ProxyFactory,
    dns_server: DnsServer,
    origin: Origin,
    raw_origin_factory: RawOriginFactory,
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["allowed.test"] = [origin.host]
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=ports_of(origin, echo))
    size = 8 * 1024 * 1024
    url = f"http://allowed.test:{origin.port}/stall/{size}?delay=1.0"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        download = pool.submit(curl, [url], proxy=proxy.proxy_address, timeout=30)
        origin.wait_for_requests(1, path=f"/stall/{size}")
        with open_connect_tunnel(proxy.proxy_address, f"allowed.test:{echo.port}") as tunnel:
            assert tunnel.status == 200
            tunnel.sock.sendall(b"ping-before")
            for bad in (
                b"HELLO\r\n\r\n",
                b"POST http://allowed.test:1/ HTTP/1.1\r\n"
                b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            ):
                refused = send_raw(proxy, bad)
                assert single_response(refused).status == 400
            tunnel.sock.sendall(b"|ping-after")
            tunnel.sock.shutdown(socket.SHUT_WR)
            echoed = read_until_close(tunnel.sock, 10.0)
        assert echoed.data == b"ping-before|ping-after"
        result = download.result(40)
    assert result.exit_code == 0, result.stderr
    assert result.status == 200
    assert (result.body_length, result.body_sha256) == (size, pattern_sha256(size))
